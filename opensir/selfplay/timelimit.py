"""math-verify calls with a time limit, from any thread.

math-verify bounds its own work with ``signal.alarm``, which only works in the main thread (and
refuses, or silently returns "no answer", elsewhere). Every math-verify call of opensir therefore runs
with math-verify's own timeout switched off, under :func:`call_with_time_limit`: a float
``setitimer`` alarm in the main thread, and a long-lived helper process elsewhere (runner threads,
async servers), which is killed and replaced when a call overruns.
"""

from __future__ import annotations

import json
import logging
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from math_verify.errors import TimeoutException

T = TypeVar("T")


class _DropTimeoutDisabledNotice(logging.Filter):
    """math-verify warns once that its own timeout is off; here that is deliberate (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledNotice())


class AnswerTimeout(TimeoutException):
    """A math-verify call ran past its time limit.

    A ``BaseException`` like math-verify's own timeout, so that math-verify's blanket ``except
    Exception`` does not mistake it for a parse error, and it is caught where the limit was set.
    """


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")


def _with_alarm(fn: Callable[..., T], args: tuple[Any, ...], seconds: float) -> T:
    def on_alarm(signum: int, frame: Any) -> None:
        raise AnswerTimeout(f"math-verify ran longer than {seconds} s")

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay:  # someone else's alarm was pending: give it back (it may fire at once)
            signal.setitimer(signal.ITIMER_REAL, max(previous_delay - seconds, 1e-3))


class _Helper:
    """A long-lived helper process that runs functions for threads that cannot use signals.

    Started with ``python -c`` from a neutral directory (no ``multiprocessing``: spawn would
    re-import the caller's ``__main__``), fed pickled ``(function, args)`` over a pipe (a module-level
    function pickles as its import path); killed and replaced when a call overruns its time limit.
    """

    _BOOT = (
        "import json, sys, operator\n"  # import stdlib first: the parent's sys.path may shadow it
        "sys.path[:0] = json.loads(sys.argv[1])\n"
        "from opensir.selfplay.timelimit import _serve\n"
        "_serve()\n"
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        paths = [p for p in sys.path if p]
        proc = subprocess.Popen(
            [sys.executable, "-c", self._BOOT, json.dumps(paths)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=tempfile.gettempdir(),
        )
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120.0)
        if not ready or pickle.load(proc.stdout) != "ready":
            proc.kill()
            raise RuntimeError("the math-verify helper process did not start")
        return proc

    def call(self, fn: Callable[..., T], args: tuple[Any, ...], seconds: float) -> T:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            pickle.dump((fn, args), proc.stdin)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], seconds)
            if not ready:
                proc.kill()
                proc.wait()
                self._proc = None
                raise AnswerTimeout(f"math-verify ran longer than {seconds} s")
            ok, value = pickle.load(proc.stdout)
            if not ok:
                raise RuntimeError(f"math-verify helper failed: {value}")
            return value  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()
                self._proc = None


def _serve() -> None:
    """Entry point of the helper process: answer calls until stdin closes."""
    import os

    out = os.fdopen(sys.stdout.fileno(), "wb", closefd=False)
    sys.stdout = sys.stderr  # nothing else may write into the reply pipe
    pickle.dump("ready", out)
    out.flush()
    inp = os.fdopen(sys.stdin.fileno(), "rb", closefd=False)
    while True:
        try:
            fn, args = pickle.load(inp)
        except EOFError:
            return
        try:
            reply: tuple[bool, Any] = (True, fn(*args))
        except Exception as error:  # reported back to the caller, who raises it
            reply = (False, repr(error))
        pickle.dump(reply, out)
        out.flush()


_HELPER = _Helper()


def call_with_time_limit(fn: Callable[..., T], args: tuple[Any, ...], seconds: float) -> T:
    """``fn(*args)``, or :class:`AnswerTimeout` after ``seconds``.

    ``fn`` must be a module-level function whose arguments and result pickle: outside the main
    thread it runs in the helper process.
    """
    if _in_main_thread():
        return _with_alarm(fn, args, seconds)
    return _HELPER.call(fn, args, seconds)
