"""Two real vLLM rollout servers behind one generator, as ``rollout.replicas: 2`` on a cluster: a push
reaches both, generation is spread over both, and a replica that restarts with the initial weights is
brought up to date before it samples again."""

from __future__ import annotations

import re
import urllib.request

import pytest
import torch
from test_vllm_server import GREEDY_TOKENS, POLICY, QUESTIONS, _Trainer, local_greedy, perturb

from opensir.engines.http import HTTPGenerator
from opensir.engines.server_sync import BroadcastWeightSync, ServerControl
from opensir.engines.vllm_server import LocalServer, start_local_server
from opensir.models import load_causal_lm, load_tokenizer, resolve_model
from opensir.seams import SamplingParams
from opensir.selfplay.prompts import render_prompt, student_messages
from opensir.spec import ModelSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("vllm-replica-logs")
    servers = [
        start_local_server(resolve_model(POLICY), log_dir=logs, max_model_len=1024, wait=False)
        for _ in range(2)
    ]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def finished_requests(server: LocalServer) -> float:
    """The server's count of finished requests (its Prometheus metrics)."""
    with urllib.request.urlopen(f"{server.base_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(m) for m in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)$", text, re.M))


def greedy_of(server: LocalServer, prompts: list[list[int]]) -> list[tuple[int, ...]]:
    alone = HTTPGenerator(server.base_url, "policy", retry_for_s=60)
    out = alone.generate(prompts, 1, SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS))
    return [group[0].token_ids for group in out]


def test_push_reaches_every_replica_and_a_restarted_one_is_resynced(replicas) -> None:
    first, second = replicas
    tokenizer = load_tokenizer(ModelSpec(name=POLICY))
    policy = load_causal_lm(ModelSpec(name=POLICY), "cpu", torch.float32)
    prompts = [render_prompt(tokenizer, student_messages(q)) for q in QUESTIONS]
    endpoints = lambda: [first.base_url, second.base_url]  # noqa: E731 - what a headless Service resolves to

    sync = BroadcastWeightSync(first.base_url, endpoints=endpoints, timeout_s=300)
    generator = HTTPGenerator(
        first.base_url, "policy", endpoints=endpoints, guard=sync.current, retry_for_s=300
    )
    try:
        perturb(policy, seed=11)
        expected = local_greedy(policy, tokenizer, prompts)
        assert sync.push(_Trainer(policy)) == 1
        assert greedy_of(first, prompts) == expected
        assert greedy_of(second, prompts) == expected

        # One call's requests are spread over both replicas.
        before = [finished_requests(s) for s in replicas]
        generator.generate(prompts * 2, 2, SamplingParams(temperature=1.0, max_tokens=8, seed=3))
        after = [finished_requests(s) for s in replicas]
        served = [a - b for a, b in zip(after, before, strict=True)]
        assert served[0] == served[1] > 0, served

        # The second replica restarts with the initial weights (and no broadcast group).
        second.stop()
        second.start()
        second.wait_ready()
        assert greedy_of(second, prompts) != expected
        out = generator.generate(prompts, 1, SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS))
        assert [g[0].token_ids for g in out] == expected
        assert greedy_of(second, prompts) == expected  # the guard synced it before the round
        assert ServerControl(second.base_url).version() == "1"

        # The next push forms the groups it needs and reaches both again.
        perturb(policy, seed=12)
        expected = local_greedy(policy, tokenizer, prompts)
        assert sync.push(_Trainer(policy)) == 2
        assert greedy_of(first, prompts) == expected and greedy_of(second, prompts) == expected
    finally:
        sync.close()
