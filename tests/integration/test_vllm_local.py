"""The in-process vLLM engine (VLLMGenerator, VLLMWeightSync) on SmolLM2-135M-Instruct.

vLLM lives in its own environment (.venv-vllm, scripts/install_vllm.sh), so the checks run there in a
subprocess (tests/integration/vllm_local_check.py) against transformers in that same process.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from opensir.engines.vllm_server import vllm_python
from opensir.models import resolve_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VLLM_LOGPROB_TOLERANCE = 1e-2
"""Max |vLLM - trainer| per sampled token, fp32 on CPU (as for the rollout server)."""


def test_in_process_vllm_matches_transformers_before_and_after_a_push() -> None:
    """Sampled log-probabilities, greedy output before and after a full-weight push and a LoRA push,
    greedy n > 1, and stop strings."""
    script = Path(__file__).with_name("vllm_local_check.py")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    run = subprocess.run(
        [str(vllm_python()), str(script), str(resolve_model("builtin:smollm2-135m-instruct"))],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["max_logprob_diff"] < VLLM_LOGPROB_TOLERANCE, result
    assert result["greedy_equal_before"], result
    assert result["update_changed_greedy"], result
    assert result["greedy_equal_after_push"], result
    assert result["version"] == 1
    assert result["greedy_n3_repeats"], result
    assert result["stop_string"] not in result["stopped_text"], result
    assert result["stopped_tokens_decode_to_text"], result
    assert result["adapter_changed_greedy"], result
    assert (result["lora_version"], result["lora_request"]) == (1, "policy-lora-v1")
    assert result["greedy_equal_after_lora_push"], result
