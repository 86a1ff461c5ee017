"""The retry policy and its helpers (opensir.retry): backoff shape, the attempt and elapsed-time bounds,
which errors are retried, what is logged and raised. Time is a fake clock moved by a fake sleep."""

from __future__ import annotations

import asyncio
import logging
import pickle
import time

import pytest
from scripted import FakeTime

from opensir.errors import OpensirError
from opensir.retry import (
    POLL,
    RetriesExhaustedError,
    RetryPolicy,
    WaitTimeoutError,
    call_with_retries,
    call_with_retries_async,
    describe_error,
    wait_until,
)


class Flaky:
    """Raises ``errors`` one per call (each call taking ``takes`` seconds of fake time), then
    returns ``result``."""

    def __init__(
        self, errors: list[Exception], result: str = "done", *, time: FakeTime | None = None
    ) -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0
        self.time = time

    def __call__(self) -> str:
        self.calls += 1
        if self.time is not None:
            self.time.now += 1.0
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def is_connection_error(error: Exception) -> bool:
    return isinstance(error, ConnectionError)


# ------------------------------------------------------------------------------------------ policy
def test_backoff_is_exponential_capped_and_fully_jittered_by_default():
    policy = RetryPolicy(attempts=6, base_delay=0.5, max_delay=3.0, random=lambda: 1.0)
    assert [policy.delay(i) for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert RetryPolicy(base_delay=0.5, random=lambda: 0.25).delay(2) == 0.5
    assert RetryPolicy(base_delay=0.5, random=lambda: 0.0).delay(2) == 0.0, "full jitter starts at 0"


def test_partial_jitter_keeps_a_floor_and_no_jitter_is_exact():
    assert RetryPolicy(base_delay=1.0, jitter=0.5, random=lambda: 0.0).delay(1) == 1.0
    assert RetryPolicy(base_delay=1.0, jitter=0.5, random=lambda: 1.0).delay(1) == 2.0

    def never() -> float:
        raise AssertionError("an unjittered policy draws no random numbers")

    policy = RetryPolicy(base_delay=0.5, max_delay=5.0, multiplier=1.5, jitter=0.0, random=never)
    assert [policy.delay(i) for i in range(3)] == [0.5, 0.75, 1.125]
    assert policy.delay(50) == 5.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attempts": 0}, "attempts must be at least 1"),
        ({"max_elapsed": -1.0}, "max_elapsed must not be negative"),
        ({"base_delay": -0.1}, "delays must not be negative"),
        ({"multiplier": 0.5}, "multiplier must be at least 1"),
        ({"jitter": 1.5}, "jitter must be between 0 and 1"),
    ],
)
def test_nonsense_policies_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**options)


def test_the_default_seams_are_the_real_clock_and_sleep():
    policy = RetryPolicy()
    assert (
        policy.sleep is time.sleep and policy.clock is time.monotonic and policy.async_sleep is asyncio.sleep
    )
    assert policy.attempts == 5 and policy.max_elapsed is None, "bounded by attempts only, as S3 has been"


def test_next_delay_stops_at_the_attempt_bound_and_cuts_waits_at_the_deadline():
    by_count = RetryPolicy(attempts=3, base_delay=1.0, random=lambda: 1.0)
    assert [by_count.next_delay(n, elapsed=1000.0) for n in (1, 2, 3)] == [1.0, 2.0, None]
    by_time = RetryPolicy(attempts=None, base_delay=1.0, jitter=0.0, max_elapsed=10.0)
    assert by_time.next_delay(3, elapsed=2.0) == 4.0
    assert by_time.next_delay(3, elapsed=8.5) == 1.5, "the last attempt starts at the deadline"
    assert by_time.next_delay(3, elapsed=10.0) is None


# ---------------------------------------------------------------------------------------- retries
def test_transient_failures_are_retried_with_logged_waits(caplog):
    fake = FakeTime()
    call = Flaky([ConnectionError("refused"), ConnectionError("reset")])
    with caplog.at_level(logging.WARNING, logger="opensir.retry"):
        result = call_with_retries(
            call, policy=fake.policy(attempts=4), transient=is_connection_error, what="GET http://h/x"
        )
    assert result == "done" and call.calls == 3
    assert fake.waits == [0.5, 1.0]
    assert [r.getMessage() for r in caplog.records] == [
        "GET http://h/x: ConnectionError: refused; retrying in 0.50s (attempt 2 of 4)",
        "GET http://h/x: ConnectionError: reset; retrying in 1.00s (attempt 3 of 4)",
    ]


def test_a_permanent_error_propagates_at_once_and_unchanged():
    fake = FakeTime()
    permanent = PermissionError("denied")
    call = Flaky([ConnectionError("refused"), permanent])
    with pytest.raises(PermissionError) as raised:
        call_with_retries(call, policy=fake.policy(), transient=is_connection_error, what="x")
    assert raised.value is permanent
    assert call.calls == 2 and fake.waits == [0.5]


def test_retries_end_after_the_last_attempt_with_the_last_cause():
    fake = FakeTime()
    last = ConnectionError("still refused")
    call = Flaky([ConnectionError("refused")] * 2 + [last])
    with pytest.raises(RetriesExhaustedError) as raised:
        call_with_retries(
            call,
            policy=fake.policy(attempts=3),
            transient=is_connection_error,
            what="upload s3://b/k",
            explain=lambda error: f"<{error}>",
        )
    failure = raised.value
    assert isinstance(failure, OpensirError)
    assert (failure.attempts, failure.last_error, failure.cause) == (3, last, "<still refused>")
    assert failure.__cause__ is last
    assert str(failure) == "upload s3://b/k failed after 3 attempt(s) over 2 s; last error: <still refused>"
    assert fake.waits == [0.5, 1.0], "no wait after the last attempt"


def test_max_elapsed_bounds_retries_by_time_counting_the_calls_too():
    fake = FakeTime()
    call = Flaky([ConnectionError("down")] * 100, time=fake)  # each call takes 1 s
    policy = fake.policy(attempts=None, base_delay=0.5, jitter=0.0, max_elapsed=6.0)
    with pytest.raises(RetriesExhaustedError) as raised:
        call_with_retries(call, policy=policy, transient=is_connection_error, what="x")
    # Calls end at 1, 2.5 and 4.5 s (after waits of 0.5 and 1 s); the next wait (2 s) is cut to the
    # 1.5 s left, so the last call starts at the 6 s deadline, and ends past it.
    assert fake.waits == [0.5, 1.0, 1.5]
    assert raised.value.attempts == 4 and raised.value.elapsed == 7.0


def test_both_bounds_give_up_at_the_first_reached():
    fake = FakeTime()
    call = Flaky([ConnectionError("down")] * 100)
    policy = fake.policy(attempts=3, jitter=0.0, max_elapsed=600.0)
    with pytest.raises(RetriesExhaustedError, match="after 3 attempt"):
        call_with_retries(call, policy=policy, transient=is_connection_error, what="x")
    assert call.calls == 3


def test_a_policy_that_never_gives_up_is_refused():
    with pytest.raises(ValueError, match="never gives up"):
        call_with_retries(
            lambda: 1, policy=RetryPolicy(attempts=None), transient=is_connection_error, what="x"
        )


def test_the_async_helper_retries_with_the_async_sleep():
    fake = FakeTime()
    call = Flaky([ConnectionError("refused")])

    async def attempt() -> str:
        return call()

    result = asyncio.run(
        call_with_retries_async(attempt, policy=fake.policy(), transient=is_connection_error, what="x")
    )
    assert result == "done" and fake.waits == [0.5]

    fake = FakeTime()
    call = Flaky([ConnectionError("refused")] * 5)
    with pytest.raises(RetriesExhaustedError, match="x failed after 2 attempt"):
        asyncio.run(
            call_with_retries_async(
                attempt, policy=fake.policy(attempts=2), transient=is_connection_error, what="x"
            )
        )


def test_the_exhausted_error_survives_pickling():
    failure = RetriesExhaustedError("x", 3, 2.0, ConnectionError("refused"), "refused")
    again = pickle.loads(pickle.dumps(failure))
    assert str(again) == str(failure) and again.attempts == 3


def test_an_error_is_described_by_type_and_message():
    assert describe_error(ConnectionError("refused")) == "ConnectionError: refused"
    assert describe_error(TimeoutError()) == "TimeoutError"


# ------------------------------------------------------------------------------------------- waits
def test_wait_until_returns_the_first_truthy_value_paced_by_the_policy():
    fake = FakeTime()
    answers = iter([[], [], [], ["http://a"]])
    policy = RetryPolicy(
        attempts=None, base_delay=0.5, max_delay=5.0, multiplier=1.5, jitter=0.0, sleep=fake.sleep
    )
    found = wait_until(lambda: next(answers), what="a replica", timeout=60, policy=policy)
    assert found == ["http://a"] and fake.waits == [0.5, 0.75, 1.125]


def test_wait_until_times_out_naming_what_it_waited_for():
    fake = FakeTime()
    policy = fake.policy(attempts=None, base_delay=1.0, jitter=0.0, multiplier=1.0)
    with pytest.raises(WaitTimeoutError) as raised:
        wait_until(lambda: False, what="the server at http://h to answer /health", timeout=3.5, policy=policy)
    timeout = raised.value
    assert (timeout.checks, timeout.elapsed, timeout.last_error) == (5, 3.5, None)
    assert fake.waits == [1.0, 1.0, 1.0, 0.5]
    assert str(timeout) == (
        "gave up waiting for the server at http://h to answer /health after 4 s (5 check(s), timeout 4 s)"
    )


def test_transient_errors_of_a_check_mean_not_yet_and_are_reported():
    fake = FakeTime()
    policy = fake.policy(attempts=None, jitter=0.0)
    checks = Flaky([ConnectionRefusedError("refused")] * 2, result="up")
    assert wait_until(checks, what="x", timeout=60, policy=policy, transient=is_connection_error) == "up"

    refused = ConnectionRefusedError("refused")
    with pytest.raises(WaitTimeoutError, match="last error: ConnectionRefusedError: refused") as raised:
        wait_until(Flaky([refused] * 100), what="x", timeout=2, policy=policy, transient=is_connection_error)
    assert raised.value.last_error is refused and raised.value.__cause__ is refused

    with pytest.raises(ConnectionRefusedError):
        wait_until(Flaky([refused]), what="x", timeout=60, policy=policy)


def test_the_poll_pacing_and_an_attempt_bound_on_a_wait():
    assert (POLL.base_delay, POLL.multiplier, POLL.max_delay, POLL.jitter) == (0.5, 1.5, 5.0, 0.0)
    fake = FakeTime()
    with pytest.raises(WaitTimeoutError) as raised:
        wait_until(lambda: None, what="x", timeout=600, policy=fake.policy(attempts=2, jitter=0.0))
    assert raised.value.checks == 2
