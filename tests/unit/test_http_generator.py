"""HTTPGenerator against a scripted OpenAI-style server (aiohttp on 127.0.0.1): request shape,
answer parsing, retries with backoff, fail-fast on 4xx, and the error that names the URL.

The real vLLM server is exercised in tests/integration/test_vllm_server.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web
from scripted import FakeTime

from opensir.engines.http import HTTPGenerator, RolloutRequestError, RolloutServerUnavailableError
from opensir.engines.vllm_server import free_port
from opensir.seams import Generator, SamplingParams


class CharTokenizer:
    """Token id = code point; enough to check stop-string trimming."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def choice(
    index: int, text: str, *, finish: str = "length", stop_reason: str | None = None
) -> dict[str, Any]:
    ids = [ord(c) for c in text]
    return {
        "index": index,
        "text": text,
        "token_ids": ids,
        "logprobs": {"token_logprobs": [-0.5] * len(ids)},
        "finish_reason": finish,
        "stop_reason": stop_reason,
    }


@dataclass
class FakeServer:
    """Answers POST /v1/completions with ``respond(body, attempt)`` -> (status, json)."""

    respond: Callable[[dict[str, Any], int], tuple[int, dict[str, Any]]]
    port: int = field(default_factory=free_port)
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        status, answer = self.respond(body, len(self.requests))
        return web.json_response(answer, status=status)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[dict[str, Any], int], tuple[int, dict[str, Any]]]], FakeServer]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runners: list[web.AppRunner] = []

    def start(respond: Callable[[dict[str, Any], int], tuple[int, dict[str, Any]]]) -> FakeServer:
        server = FakeServer(respond)

        async def up() -> None:
            app = web.Application()
            app.router.add_post("/v1/completions", server.handle)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", server.port).start()
            runners.append(runner)

        asyncio.run_coroutine_threadsafe(up(), loop).result(10)
        return server

    yield start
    for runner in runners:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def echo_n(body: dict[str, Any], attempt: int) -> tuple[int, dict[str, Any]]:
    prompt = "".join(chr(t) for t in body["prompt"])
    return 200, {"choices": [choice(i, f"{prompt}-{i}") for i in reversed(range(body["n"]))]}


def test_sends_token_ids_and_parses_n_completions_in_order(serve) -> None:
    server = serve(echo_n)
    generator = HTTPGenerator(server.url + "/v1", "policy", max_concurrency=2)
    assert isinstance(generator, Generator)
    sampling = SamplingParams(temperature=0.7, top_p=0.9, top_k=20, max_tokens=5, seed=3)
    out = generator.generate([[ord("a")], [ord("b"), ord("c")], [ord("d")]], 3, sampling)
    assert [[c.text for c in group] for group in out] == [
        ["a-0", "a-1", "a-2"],
        ["bc-0", "bc-1", "bc-2"],
        ["d-0", "d-1", "d-2"],
    ]
    assert out[1][2].token_ids == tuple(ord(c) for c in "bc-2")
    assert out[1][2].logprobs == (-0.5,) * 4
    bodies = sorted(server.requests, key=lambda b: b["prompt"])
    assert bodies[1]["prompt"] == [ord("b"), ord("c")]
    assert {
        k: bodies[1][k] for k in ("model", "n", "temperature", "top_p", "top_k", "max_tokens", "logprobs")
    } == {
        "model": "policy",
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
        "max_tokens": 5,
        "logprobs": 0,
    }
    assert bodies[1]["return_token_ids"] is True
    assert len({b["seed"] for b in bodies}) == 3, "each prompt gets its own seed stream"


def test_retries_transient_failures_with_backoff(serve) -> None:
    def flaky(body: dict[str, Any], attempt: int) -> tuple[int, dict[str, Any]]:
        if attempt <= 2:
            return 503, {"error": {"message": "loading"}}
        return echo_n(body, attempt)

    server = serve(flaky)
    generator = HTTPGenerator(server.url, "policy", retry_for_s=30, initial_backoff_s=0.05)
    out = generator.generate([[ord("x")]], 1, SamplingParams(max_tokens=3))
    assert out[0][0].text == "x-0"
    assert len(server.requests) == 3


def test_a_rejected_request_fails_at_once_with_the_servers_message(serve) -> None:
    server = serve(lambda body, attempt: (404, {"error": {"message": "The model `nope` does not exist."}}))
    generator = HTTPGenerator(server.url, "nope", retry_for_s=30)
    with pytest.raises(RolloutRequestError, match=r"HTTP 404.*model `nope` does not exist"):
        generator.generate([[1]], 1, SamplingParams(max_tokens=3))
    assert len(server.requests) == 1


def test_a_server_that_stays_down_is_named_in_the_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    generator = HTTPGenerator(url, "policy", retry_for_s=1.0, initial_backoff_s=0.05)
    with pytest.raises(RolloutServerUnavailableError, match=rf"rollout server {url}.*attempt"):
        generator.generate([[1]], 1, SamplingParams(max_tokens=3))


def test_a_server_that_keeps_failing_is_named_with_the_last_cause(serve) -> None:
    server = serve(lambda body, attempt: (500, {"error": {"message": "engine dead"}}))
    generator = HTTPGenerator(server.url, "policy", retry_for_s=0.5, initial_backoff_s=0.05)
    with pytest.raises(RolloutServerUnavailableError, match=r"HTTP 500: engine dead"):
        generator.generate([[1]], 1, SamplingParams(max_tokens=3))
    assert len(server.requests) >= 2


def test_stop_strings_trim_the_tokens_to_the_text(serve) -> None:
    def stopped(body: dict[str, Any], attempt: int) -> tuple[int, dict[str, Any]]:
        # vLLM cuts the text before the stop string but returns the tokens that produced it.
        c = choice(0, "12 apples", finish="stop", stop_reason="ap")
        c["text"] = "12 "
        return 200, {"choices": [c]}

    server = serve(stopped)
    generator = HTTPGenerator(server.url, "policy", tokenizer=CharTokenizer())
    (completion,) = generator.generate([[1]], 1, SamplingParams(max_tokens=9, stop=("ap",)))[0]
    assert completion.text == "12 "
    assert completion.token_ids == tuple(ord(c) for c in "12 ")
    assert completion.logprobs == (-0.5,) * 3
    assert completion.finish_reason == "stop"
    assert json.loads(json.dumps(server.requests[0]))["stop"] == ["ap"]


def test_stop_strings_without_a_tokenizer_are_refused() -> None:
    generator = HTTPGenerator("http://127.0.0.1:1", "policy")
    with pytest.raises(ValueError, match="tokenizer"):
        generator.generate([[1]], 1, SamplingParams(stop=("x",)))


def test_wrong_number_of_choices_is_an_error(serve) -> None:
    server = serve(lambda body, attempt: (200, {"choices": [choice(0, "a")]}))
    generator = HTTPGenerator(server.url, "policy")
    with pytest.raises(RolloutRequestError, match="1 choices for n=2"):
        generator.generate([[1]], 2, SamplingParams(max_tokens=3))


def test_bad_sampling_is_refused_before_any_request() -> None:
    generator = HTTPGenerator("http://127.0.0.1:1", "policy")
    with pytest.raises(ValueError, match="top_k"):
        generator.generate([[1]], 1, SamplingParams(top_k=0))
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        generator.generate([[]], 1, SamplingParams())


def test_greedy_requests_ask_for_one_sample_and_repeat_it(serve) -> None:
    # vLLM refuses n > 1 at temperature 0; greedy samples are all the argmax continuation anyway.
    server = serve(echo_n)
    generator = HTTPGenerator(server.url, "policy")
    (group,) = generator.generate([[ord("g")]], 4, SamplingParams(temperature=0.0, max_tokens=3))
    assert [c.text for c in group] == ["g-0"] * 4
    assert [b["n"] for b in server.requests] == [1]


def test_requests_are_spread_over_the_replicas(serve) -> None:
    first, second = serve(echo_n), serve(echo_n)
    generator = HTTPGenerator(first.url, "policy", endpoints=lambda: [first.url, second.url])
    out = generator.generate([[ord(c)] for c in "abcd"], 2, SamplingParams(max_tokens=3))
    assert [g[0].text for g in out] == ["a-0", "b-0", "c-0", "d-0"]
    assert sorted(chr(b["prompt"][0]) for b in first.requests) == ["a", "c"]
    assert sorted(chr(b["prompt"][0]) for b in second.requests) == ["b", "d"]


def test_a_request_to_a_dead_replica_is_retried_on_the_next(serve) -> None:
    live = serve(echo_n)
    dead = f"http://127.0.0.1:{free_port()}"
    generator = HTTPGenerator(live.url, "policy", endpoints=lambda: [dead, live.url], initial_backoff_s=0.01)
    out = generator.generate([[ord("a")], [ord("b")]], 1, SamplingParams(max_tokens=3))
    assert [g[0].text for g in out] == ["a-0", "b-0"]
    assert len(live.requests) == 2


def test_only_the_replicas_the_guard_keeps_are_used(serve) -> None:
    stale, current = serve(echo_n), serve(echo_n)
    seen: list[list[str]] = []

    def guard(endpoints: list[str]) -> list[str]:
        seen.append(endpoints)
        return [e for e in endpoints if e == current.url]

    generator = HTTPGenerator(stale.url, "policy", endpoints=lambda: [stale.url, current.url], guard=guard)
    generator.generate([[ord("a")], [ord("b")], [ord("c")]], 1, SamplingParams(max_tokens=3))
    assert seen == [[stale.url, current.url]]
    assert stale.requests == [] and len(current.requests) == 3


def test_no_ready_replica_is_an_error_naming_the_url() -> None:
    url = "http://run-rollout.team.svc:8000"
    generator = HTTPGenerator(url, "policy", endpoints=lambda: [], retry_for_s=0.3, initial_backoff_s=0.05)
    with pytest.raises(RolloutServerUnavailableError, match=rf"no rollout server at {re.escape(url)}"):
        generator.generate([[1]], 1, SamplingParams(max_tokens=3))


def on_fake_time(fake: FakeTime, generator: HTTPGenerator) -> None:
    """The generator's retries and waits on ``fake``'s clock, with the largest jitter factor."""
    generator.retry = replace(
        generator.retry, sleep=fake.sleep, async_sleep=fake.async_sleep, clock=fake.clock, random=lambda: 1.0
    )


def test_a_failing_request_is_retried_for_retry_for_s_with_capped_backoff(serve) -> None:
    server = serve(lambda body, attempt: (503, {"error": {"message": "overloaded"}}))
    generator = HTTPGenerator(server.url, "policy", retry_for_s=30, initial_backoff_s=0.5, max_backoff_s=10)
    fake = FakeTime()
    on_fake_time(fake, generator)
    with pytest.raises(RolloutServerUnavailableError) as raised:
        generator.generate([[1]], 1, SamplingParams(max_tokens=3))
    # Doubling from 0.5 s, capped at 10 s; the last wait is cut so the last attempt starts at 30 s.
    assert fake.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 4.5]
    assert len(server.requests) == 8
    assert str(raised.value) == (
        f"rollout server {server.url} did not answer POST /v1/completions after 8 attempt(s) over 30 s; "
        f"last error, from {server.url}/v1/completions: HTTP 503: overloaded"
    )


def test_waiting_for_a_ready_replica_is_bounded_by_retry_for_s() -> None:
    url = "http://run-rollout.team.svc:8000"
    answers = [[], [], [url]]
    generator = HTTPGenerator(url, "policy", endpoints=lambda: answers.pop(0), retry_for_s=5)
    fake = FakeTime()
    on_fake_time(fake, generator)
    assert asyncio.run(generator._round_endpoints()) == [url]
    assert fake.waits == [0.5, 1.0]

    generator = HTTPGenerator(url, "policy", endpoints=lambda: [], retry_for_s=5)
    fake = FakeTime()
    on_fake_time(fake, generator)
    with pytest.raises(RolloutServerUnavailableError, match=r"after 5 attempt\(s\) over 5 s"):
        generator.generate([[1]], 1, SamplingParams(max_tokens=3))
    assert fake.waits == [0.5, 1.0, 2.0, 1.5]
