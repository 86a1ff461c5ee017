"""Sampling from an OpenAI-compatible vLLM server (the rollout server, or any vLLM ``serve``).

:class:`HTTPGenerator` sends each prompt as token ids to ``POST /v1/completions`` (one request per
prompt, asking for all ``n`` samples; for one, repeated, when greedy) and reads back vLLM's
``token_ids`` (``return_token_ids``) and the log-probability of each sampled token (``logprobs:
0``). No text is re-tokenised anywhere, so the trainer scores exactly the tokens the server sampled.
Requests run concurrently on one asyncio loop, at most ``max_concurrency`` at a time.

Replicas: ``base_url`` may name several servers (a headless Service on a cluster, see
:mod:`opensir.engines.replicas`); each call spreads its requests over the replicas it resolves to,
keeping only those the weight sync's guard reports as serving the current weights.

Failures: connection errors, timeouts and 5xx/429 answers are retried with exponential backoff
(jittered, capped at ``max_backoff_s``; :attr:`HTTPGenerator.retry`) for up to ``retry_for_s``
seconds per request, which rides out a server restart between rounds; after that
:class:`RolloutServerUnavailableError` names the URL and the last cause. A 4xx answer (bad
request, unknown model) fails at once with :class:`RolloutRequestError` carrying the server's
message.

Log-probabilities: the rollout server runs with ``--logprobs-mode processed_logprobs`` (see
:mod:`opensir.engines.vllm_server`), i.e. under the distribution the token was sampled from, as
:class:`~opensir.seams.Completion` documents and HFGenerator reports by default. A server
started with vLLM's default reports raw model log-probabilities; both agree at temperature 1 without
top-k/top-p.

Stop strings: vLLM cuts the text before the stop string but returns the token ids that produced it;
the generator trims those tokens (as HFGenerator does) so that token ids always decode to the text.
That needs the policy's ``tokenizer``; requests with stop strings fail without one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from opensir.engines.replicas import Endpoints, resolve_endpoints, server_root
from opensir.engines.requests import check_request, trim_to_text
from opensir.errors import OpensirError
from opensir.retry import (
    RetriesExhaustedError,
    RetryPolicy,
    WaitTimeoutError,
    call_with_retries_async,
    describe_error,
    wait_until,
)
from opensir.seams import Completion, SamplingParams

if TYPE_CHECKING:
    import aiohttp
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class RolloutServerUnavailableError(OpensirError, ConnectionError):
    """The server did not answer (or answered 5xx) for longer than the retry budget."""


class RolloutRequestError(OpensirError, RuntimeError):
    """The server rejected a request (4xx) or answered something that is not a completion."""


class _BusyAnswer(Exception):
    """An answer worth asking again for (``_RETRY_STATUS``): the server is loading, overloaded or
    restarting. Raised only for the retries to see; the message is the cause they report."""


class HTTPGenerator:
    """:class:`~opensir.seams.Generator` over vLLM's OpenAI completions API.

    ``base_url`` is the server's root (``http://host:8000``; a trailing ``/v1`` is accepted) and
    ``model`` the served model name sent with every request (the LoRA weight sync points it at the
    newest adapter). ``tokenizer`` is only needed for stop strings (see the module docstring).

    Typical use::

        generator = HTTPGenerator("http://127.0.0.1:8000", "policy")
        completions = generator.generate([[1, 2, 3]], n=8, sampling=SamplingParams(max_tokens=64))
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_concurrency: int = 32,
        request_timeout_s: float = 900.0,
        connect_timeout_s: float = 10.0,
        retry_for_s: float = 300.0,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        api_key: str | None = None,
        endpoints: Endpoints | None = None,
        guard: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1 (got {max_concurrency})")
        if request_timeout_s <= 0 or connect_timeout_s <= 0 or retry_for_s < 0:
            raise ValueError("timeouts must be positive and retry_for_s must not be negative")
        self.base_url = server_root(base_url)
        self.endpoints: Endpoints = endpoints or (lambda: resolve_endpoints(self.base_url))
        """The replicas behind ``base_url`` (see :mod:`opensir.engines.replicas`), resolved per call."""
        self.guard = guard
        """Keeps only the replicas that serve the trainer's current weights (the weight sync's
        :meth:`~opensir.engines.server_sync.ServerWeightSync.current`); None takes them all."""
        self.model = model
        self.tokenizer = tokenizer
        self.max_concurrency = max_concurrency
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_for_s = retry_for_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.retry = RetryPolicy(
            attempts=None,
            base_delay=initial_backoff_s,
            max_delay=max_backoff_s,
            # At least half of each backoff, so that the requests waiting on a restarted server
            # spread out without coming back much sooner than the backoff says.
            jitter=0.5,
            max_elapsed=retry_for_s,
        )
        """Paces the retries of a request and the wait for a ready replica (tests swap its clock and
        sleep seams)."""
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    # --------------------------------------------------------------------------------------- public
    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """Return, for each prompt in order, its ``n`` completions (see the module docstring)."""
        return _run(self.agenerate(prompts, n, sampling))

    async def agenerate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """:meth:`generate` for callers that already run an event loop."""
        check_request(prompts, n, sampling)
        if sampling.stop and self.tokenizer is None:
            raise ValueError("stop strings need the policy's tokenizer: pass tokenizer= to HTTPGenerator")
        if not prompts:
            return []
        import aiohttp

        replicas = await self._round_endpoints()
        limit = asyncio.Semaphore(self.max_concurrency)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s, sock_connect=self.connect_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as session:
            distinct = 1 if sampling.greedy else n

            async def one(index: int, prompt: Sequence[int]) -> list[Completion]:
                body = self._request_body(prompt, distinct, sampling, index)
                async with limit:
                    answer = await self._send(session, "POST", "/v1/completions", body, replicas, index)
                return self._completions(answer, distinct, sampling) * (n // distinct)

            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))

    # ------------------------------------------------------------------------------------- requests
    def _request_body(
        self, prompt: Sequence[int], n: int, sampling: SamplingParams, index: int
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": [int(t) for t in prompt],
            "n": n,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "logprobs": 0,
            "return_token_ids": True,
            "skip_special_tokens": True,
            "include_stop_str_in_output": False,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            # Distinct prompts of one call get distinct streams, as they do in one HF batch.
            body["seed"] = (sampling.seed + 7919 * index) % (2**63)
        return body

    async def _round_endpoints(self) -> list[str]:
        """The replicas this call spreads its requests over; while none is ready (resolved and, with a
        guard, serving the current weights), wait for one for up to ``retry_for_s`` seconds."""

        def ready() -> list[str]:
            found = self.endpoints()
            if found and self.guard is not None:
                found = self.guard(found)
            return found

        try:
            # On a thread: resolving names and the guard's version checks block, and the wait is the
            # only thing this call does until a replica is there.
            return await asyncio.to_thread(
                wait_until,
                ready,
                what=f"a rollout server at {self.base_url} to sample from",
                timeout=self.retry_for_s,
                policy=self.retry,
                logger=log,
            )
        except WaitTimeoutError as error:
            raise RolloutServerUnavailableError(
                f"no rollout server at {self.base_url} was ready to sample from after {error.checks} "
                f"attempt(s) over {error.elapsed:.0f} s (no address, or none serving the current weights)"
            ) from error

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        replicas: Sequence[str],
        index: int,
    ) -> dict[str, Any]:
        """One request to replica ``index`` (mod their number), retried on transient failures for up to
        ``retry_for_s`` seconds, each retry on the next replica."""
        import aiohttp

        tried: list[str] = []

        async def attempt() -> dict[str, Any]:
            url = replicas[(index + len(tried)) % len(replicas)] + path
            tried.append(url)
            async with session.request(method, url, json=body) as response:
                text = await response.text()
                if response.status < 400:
                    return _json(text, url)
                if response.status not in _RETRY_STATUS:
                    raise RolloutRequestError(
                        f"{method} {url} was rejected with HTTP {response.status}: {_error_message(text)}"
                    )
                raise _BusyAnswer(f"HTTP {response.status}: {_error_message(text)}")

        def transient(error: Exception) -> bool:
            return isinstance(
                error, _BusyAnswer | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | TimeoutError
            )

        try:
            return await call_with_retries_async(
                attempt,
                policy=self.retry,
                transient=transient,
                what=f"{method} {path} on rollout server {self.base_url}",
                explain=_cause,
                logger=log,
                # One line per waiting request would flood the log while a server restarts (a round
                # has hundreds in flight); the error after the last attempt carries the cause.
                log_level=logging.DEBUG,
            )
        except RetriesExhaustedError as failure:
            raise RolloutServerUnavailableError(
                f"rollout server {self.base_url} did not answer {method} {path} after {failure.attempts} "
                f"attempt(s) over {failure.elapsed:.0f} s; last error, from {tried[-1]}: {failure.cause}"
            ) from failure.last_error

    # ------------------------------------------------------------------------------------- answers
    def _completions(self, answer: dict[str, Any], n: int, sampling: SamplingParams) -> list[Completion]:
        choices = answer.get("choices")
        if not isinstance(choices, list) or len(choices) != n:
            raise RolloutRequestError(
                f"{self.base_url} answered {len(choices) if isinstance(choices, list) else 'no'} choices "
                f"for n={n}"
            )
        out: list[Completion | None] = [None] * n
        for choice in choices:
            out[int(choice["index"])] = self._completion(choice, sampling)
        if any(c is None for c in out):
            raise RolloutRequestError(f"{self.base_url} answered duplicate choice indices")
        return [c for c in out if c is not None]

    def _completion(self, choice: dict[str, Any], sampling: SamplingParams) -> Completion:
        token_ids = choice.get("token_ids")
        if token_ids is None:
            raise RolloutRequestError(
                f"{self.base_url} returned no token_ids; the server must be vLLM >= 0.10.2 "
                "(the completions API's return_token_ids)"
            )
        tokens = [int(t) for t in token_ids]
        logprobs_block = choice.get("logprobs") or {}
        raw = logprobs_block.get("token_logprobs")
        logprobs = [float(x) if x is not None else float("nan") for x in raw] if raw is not None else None
        if logprobs is not None and len(logprobs) != len(tokens):
            raise RolloutRequestError(
                f"{self.base_url} returned {len(tokens)} tokens but {len(logprobs)} log-probabilities"
            )
        text = str(choice.get("text", ""))
        stop_reason = choice.get("stop_reason")
        if isinstance(stop_reason, str) and self.tokenizer is not None:
            tokens, text = trim_to_text(self.tokenizer, tokens, text)
            if logprobs is not None:
                logprobs = logprobs[: len(tokens)]
        finish = choice.get("finish_reason") or "length"
        return Completion(
            text=text,
            token_ids=tuple(tokens),
            logprobs=tuple(logprobs) if logprobs is not None else None,
            finish_reason="stop" if finish == "stop" else str(finish),
        )


def _cause(error: Exception) -> str:
    """What went wrong with one attempt: the busy answer's status and message, else the error."""
    return str(error) if isinstance(error, _BusyAnswer) else describe_error(error)


def _json(text: str, url: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise RolloutRequestError(f"{url} answered something that is not JSON: {text[:200]!r}") from error
    if not isinstance(value, dict):
        raise RolloutRequestError(f"{url} answered JSON that is not an object: {text[:200]!r}")
    return value


def _error_message(text: str) -> str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text[:500]
    if isinstance(value, dict):
        error = value.get("error", value.get("detail", value))
        if isinstance(error, dict):
            return str(error.get("message", error))
        return str(error)
    return text[:500]


def _run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` to completion from synchronous code, also when a loop already runs here
    (then on a helper thread, since a running loop cannot be re-entered)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    result: list[_T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coroutine))
        except BaseException as error:  # re-raised in the caller's thread below
            failure.append(error)

    thread = threading.Thread(target=target, name="opensir-http-generator")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
