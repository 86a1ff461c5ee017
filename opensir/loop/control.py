"""How a step is observed and stopped: its phase timer, and SIGTERM as a request to stop after it."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM
"""143: what a process killed by SIGTERM reports; Kubernetes counts the pod as failed and restartable."""


class StopOnSigterm:
    """SIGTERM sets :attr:`requested`; the loop checks it between steps and stops at the next one.

    The handler does nothing else: a checkpoint written from inside it would run in the middle of
    whatever the main thread was doing (an optimizer step half applied, a file half written). Outside
    the main thread no handler can be installed, and SIGTERM keeps its default action.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


class PhaseTimer:
    """Wall time per phase of a step, for the step line and the phase-duration metrics."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.monotonic()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.monotonic() - started

    @property
    def total(self) -> float:
        return time.monotonic() - self._started
