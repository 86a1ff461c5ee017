"""Waiting out transient failures: the one retry policy of every network wait in opensir.

:class:`RetryPolicy` says how long to wait between attempts (exponential backoff with jitter) and
when to give up: after ``attempts`` attempts, once ``max_elapsed`` seconds have passed, or at the
first of the two. Two helpers apply it, and every retry or poll loop goes through them:

- :func:`call_with_retries` (:func:`call_with_retries_async` in asyncio code) calls a function until
  it succeeds. The caller says which errors are transient; any other error propagates at once,
  unchanged, and a transient one that outlives the policy becomes :class:`RetriesExhaustedError`,
  whose ``__cause__`` is the last error. Each wait is logged with what was tried and why it failed.
- :func:`wait_until` checks a condition (a server becoming ready, a replica reporting a weight
  version) until it holds, or raises :class:`WaitTimeoutError` saying what it waited for.

Callers with error types of their own (:class:`~opensir.storage.StorageError`, ...) catch these two
and re-raise with their message; the attempt count and elapsed time are attributes for that.

This is a bottom layer: it imports only the standard library and :mod:`opensir.errors`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from opensir.errors import OpensirError

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def describe_error(error: BaseException) -> str:
    """``Type: message`` (only the type when the message is empty, as for a bare timeout)."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter.

    After failed attempt ``i`` (from 0) the wait is ``min(max_delay, base_delay * multiplier**i)``
    times a random factor in ``[1 - jitter, 1]``. ``jitter=1`` is full jitter (uniform from 0): it
    keeps the pods that lost the same endpoint from coming back in lockstep. ``jitter=0`` waits the
    exact backoff, for a single poller.

    Bounds: at most ``attempts`` attempts (None: no count limit) and no new attempt once
    ``max_elapsed`` seconds (None: no time limit) have passed since the first one began; a wait is
    cut short so that the last attempt starts at that deadline. A policy with neither bound only
    paces polls: :func:`wait_until` gives it its timeout, and :func:`call_with_retries` refuses it.

    ``sleep``, ``async_sleep``, ``random`` and ``clock`` (monotonic seconds) are seams for tests,
    which record the waits and move a fake clock instead of taking the time.
    """

    attempts: int | None = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 1.0
    max_elapsed: float | None = None
    sleep: Callable[[float], None] = time.sleep
    async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    random: Callable[[], float] = random.random
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be at least 1 (or None), got {self.attempts}")
        if self.max_elapsed is not None and self.max_elapsed < 0:
            raise ValueError(f"max_elapsed must not be negative (or None), got {self.max_elapsed}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(f"delays must not be negative, got {self.base_delay} and {self.max_delay}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    @property
    def bounded(self) -> bool:
        """Whether the policy ever gives up (it has ``attempts`` or ``max_elapsed``)."""
        return self.attempts is not None or self.max_elapsed is not None

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based), before any deadline cuts it."""
        backoff = min(self.max_delay, self.base_delay * self.multiplier**attempt)
        if not self.jitter:
            return backoff
        return backoff * ((1 - self.jitter) + self.jitter * self.random())

    def next_delay(self, failed: int, elapsed: float) -> float | None:
        """The wait before the next attempt, after ``failed`` failed attempts and ``elapsed`` seconds
        since the first one began; None when the policy gives up."""
        if self.attempts is not None and failed >= self.attempts:
            return None
        if self.max_elapsed is not None and elapsed >= self.max_elapsed:
            return None
        delay = self.delay(failed - 1)
        if self.max_elapsed is not None:
            delay = min(delay, self.max_elapsed - elapsed)
        return delay

    def _limits(self) -> str:
        """The bounds, for the log line of a wait."""
        parts = []
        if self.attempts is not None:
            parts.append(f"of {self.attempts}")
        if self.max_elapsed is not None:
            parts.append(f"for up to {self.max_elapsed:.0f} s")
        return " ".join(parts)


POLL = RetryPolicy(attempts=None, base_delay=0.5, max_delay=5.0, multiplier=1.5, jitter=0.0)
"""Pacing of polling waits (:func:`wait_until`): 0.5 s, growing 1.5-fold up to 5 s, without jitter
(one poller per server has no crowd to spread out)."""


class RetriesExhaustedError(OpensirError):
    """A transient failure outlived its retry policy; ``__cause__`` is the last error.

    ``what`` names what was tried (``upload s3://bucket/key``), ``attempts`` and ``elapsed`` (seconds)
    how long, ``last_error`` the last failure and ``cause`` its description.
    """

    def __init__(self, what: str, attempts: int, elapsed: float, last_error: Exception, cause: str) -> None:
        # The constructor's arguments are the args, so that the error survives pickling.
        super().__init__(what, attempts, elapsed, last_error, cause)
        self.what = what
        self.attempts = attempts
        self.elapsed = elapsed
        self.last_error = last_error
        self.cause = cause

    def __str__(self) -> str:
        return (
            f"{self.what} failed after {self.attempts} attempt(s) over {self.elapsed:.0f} s; "
            f"last error: {self.cause}"
        )


class WaitTimeoutError(OpensirError):
    """A condition did not hold within its timeout.

    ``what`` names what was waited for, ``checks`` and ``elapsed`` (seconds) how long; ``last_error``
    is the last transient error of a check, if any (also the ``__cause__``).
    """

    def __init__(
        self, what: str, checks: int, elapsed: float, timeout: float, last_error: Exception | None = None
    ) -> None:
        super().__init__(what, checks, elapsed, timeout, last_error)
        self.what = what
        self.checks = checks
        self.elapsed = elapsed
        self.timeout = timeout
        self.last_error = last_error

    def __str__(self) -> str:
        message = (
            f"gave up waiting for {self.what} after {self.elapsed:.0f} s ({self.checks} check(s), "
            f"timeout {self.timeout:.0f} s)"
        )
        if self.last_error is not None:
            message += f"; last error: {describe_error(self.last_error)}"
        return message


def call_with_retries(
    call: Callable[[], _T],
    *,
    policy: RetryPolicy,
    transient: Callable[[Exception], bool],
    what: str,
    explain: Callable[[Exception], str] = describe_error,
    logger: logging.Logger = log,
    log_level: int = logging.WARNING,
) -> _T:
    """``call()``, repeated while it raises an error that ``transient`` accepts, as ``policy`` allows.

    Returns the first result. A non-transient error propagates at once, unchanged; a transient one
    on the policy's last attempt raises :class:`RetriesExhaustedError` (``what`` names the request
    in it, ``explain`` describes the error). Each wait is logged to ``logger`` at ``log_level``.
    """
    _require_bounded(policy, what)
    started = policy.clock()
    failed = 0
    while True:
        try:
            return call()
        except Exception as error:  # sorted right here: transient ones are retried, others propagate
            if not transient(error):
                raise
            failed += 1
            delay = _delay_or_give_up(policy, error, failed, started, what, explain, logger, log_level)
        policy.sleep(delay)


async def call_with_retries_async(
    call: Callable[[], Awaitable[_T]],
    *,
    policy: RetryPolicy,
    transient: Callable[[Exception], bool],
    what: str,
    explain: Callable[[Exception], str] = describe_error,
    logger: logging.Logger = log,
    log_level: int = logging.WARNING,
) -> _T:
    """:func:`call_with_retries` for a coroutine function; waits with ``policy.async_sleep``, so other
    tasks of the event loop run meanwhile."""
    _require_bounded(policy, what)
    started = policy.clock()
    failed = 0
    while True:
        try:
            return await call()
        except Exception as error:  # sorted right here: transient ones are retried, others propagate
            if not transient(error):
                raise
            failed += 1
            delay = _delay_or_give_up(policy, error, failed, started, what, explain, logger, log_level)
        await policy.async_sleep(delay)


def wait_until(
    condition: Callable[[], _T | None],
    *,
    what: str,
    timeout: float,
    policy: RetryPolicy = POLL,
    transient: Callable[[Exception], bool] | None = None,
    logger: logging.Logger = log,
) -> _T:
    """Check ``condition()`` until it returns a truthy value, and return that value.

    ``timeout`` bounds the wait (seconds since the first check began; it replaces the policy's
    ``max_elapsed``, and the policy's ``attempts``, if set, bound the checks too); the policy's
    backoff paces the checks. Then :class:`WaitTimeoutError` names ``what`` was waited for
    (``"the server at http://h:8000 to answer /health"``). An error of a check propagates at once,
    unless ``transient`` accepts it: then it counts as "not yet", and the last one is reported with
    the timeout. Waits are logged at DEBUG: polling is the expected path, not trouble.
    """
    policy = replace(policy, max_elapsed=timeout)
    started = policy.clock()
    checks = 0
    last_error: Exception | None = None
    while True:
        checks += 1
        value: _T | None
        try:
            value = condition()
        except Exception as error:  # sorted right here: transient ones mean "not yet", others propagate
            if transient is None or not transient(error):
                raise
            value, last_error = None, error
        if value:
            return value
        elapsed = policy.clock() - started
        delay = policy.next_delay(checks, elapsed)
        if delay is None:
            raise WaitTimeoutError(what, checks, elapsed, timeout, last_error) from last_error
        logger.debug("waiting for %s: not yet after %d check(s); next check in %.2fs", what, checks, delay)
        policy.sleep(delay)


def _require_bounded(policy: RetryPolicy, what: str) -> None:
    if not policy.bounded:
        raise ValueError(f"the retry policy for {what} never gives up: set attempts or max_elapsed")


def _delay_or_give_up(
    policy: RetryPolicy,
    error: Exception,
    failed: int,
    started: float,
    what: str,
    explain: Callable[[Exception], str],
    logger: logging.Logger,
    log_level: int,
) -> float:
    """The wait before retrying after ``error``, the ``failed``-th failure, logged; raises
    :class:`RetriesExhaustedError` when the policy gives up."""
    elapsed = policy.clock() - started
    delay = policy.next_delay(failed, elapsed)
    if delay is None:
        raise RetriesExhaustedError(what, failed, elapsed, error, explain(error)) from error
    logger.log(
        log_level,
        "%s: %s; retrying in %.2fs (attempt %d %s)",
        what,
        explain(error),
        delay,
        failed + 1,
        policy._limits(),
    )
    return delay
