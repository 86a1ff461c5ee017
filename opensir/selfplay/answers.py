"""Student answers: extraction of the first ``\\boxed{…}``, canonical form, and majority voting.

There is no label in self-play: the majority answer of the student's samples *is* the label
(DESIGN.md §1), so how answers are read and grouped decides every student reward and every solve
rate. The reference's rule is the default: answers vote together when their canonical strings are
identical, the first-seen answer wins ties, and the solve rate is the majority count over the
answers that parsed. ``mode="equivalence"`` lets answers that math-verify proves equal vote
together (``0.5`` and ``\\frac{1}{2}``, ``3`` and ``3.0``).

math-verify bounds its own work with ``signal.alarm``, which only works in the main thread (and
silently returns "no answer" elsewhere). Every math-verify call here runs with its own timeout
switched off, under :func:`_time_limited`: a float ``setitimer`` alarm in the main thread, and a
helper process elsewhere (runner threads, async servers) that is killed when it overruns.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from math_verify.errors import TimeoutException

logger = logging.getLogger(__name__)


class _DropTimeoutDisabledNotice(logging.Filter):
    """math-verify warns once that its own timeout is off; here that is deliberate (see above)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledNotice())

VotingMode = Literal["exact", "equivalence"]
SolveRateOver = Literal["parseable", "all"]

_BOXED = re.compile(r"\\boxed\s*\{")
# The student prompt shows "\boxed{ANSWER}" as the template; a copy of it is not an answer.
_TEMPLATE_ANSWERS = frozenset({"answer", "final answer", "your answer", "..."})


class AnswerTimeout(TimeoutException):
    """A math-verify call ran past its time limit.

    A ``BaseException`` like math-verify's own timeout, so that math-verify's blanket ``except
    Exception`` does not mistake it for a parse error, and it is caught where the limit was set.
    """


# --------------------------------------------------------------------------------- first \boxed{}
def first_boxed(text: str) -> str | None:
    """Content of the first ``\\boxed{…}`` with balanced braces, or None when there is none."""
    match = _BOXED.search(text)
    while match is not None:
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            char = text[i]
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
        # unbalanced: no later \boxed{} can close either, since this one swallowed the rest
        return None
    return None


# ----------------------------------------------------------------- the non-mathematical filter
_CURRENCY = r"[\$£€¥¢₹₽₪₨₩₦₡₵₴₸₺₼]"
_ACCEPT_WHOLE = tuple(
    re.compile(p)
    for p in (
        r"^-?\d+(\.\d+)?$",  # 42, -3.5
        r"^-?\.\d+$",  # .35
        r"^-?\d{1,3}(,\d{3})*(\.\d+)?$",  # 12,500.00
        r"^\d+(\.\d+)?(,\s*\d+(\.\d+)?)+$",  # 15, 21, 27
        r"^\d+(\.\d+)?(:\d+(\.\d+)?)+$",  # 3:2:1
        r"^\d+(\.\d+)?\\?%$",  # 25%, 25\%
        r"^\d+!$",  # 5!
        r"^\\\$\d+(\.\d+)?$",  # \$18.90
        rf"^({_CURRENCY}?\d+(\.\d+)?{_CURRENCY}?|\d+(\.\d+)?{_CURRENCY})$",  # £500, 142.86$
        r"^\d+/\d+$",  # 3/4
    )
)
_ACCEPT_ANYWHERE = tuple(
    re.compile(p)
    for p in (
        r"\\\w+",  # any LaTeX command (\pi, \frac, \sqrt, \infty, \; …)
        r"[\+\-\*/\^=<>(){}\[\]]",  # arithmetic, relations, brackets
        r"^\d+\^\d+$",
        r"^\d+[a-z]$",  # 2a
        r"^\d+\$$",
        r"^[a-zA-Z]{1,2}$",  # x, ab
        r"[_\^]",
        r"^\d+(\.\d+)?[eE][+-]?\d+$",  # 1.2e-4
    )
)
_MATH_CHARS = re.compile(r"[\d\+\-\*/\^=<>(){}\[\]\\%!$:£€¥¢₹₽₪₨₩₦₡₵₴₸₺₼]")


def is_mathematical(answer: str) -> bool:
    """The reference's filter for answers that are words rather than mathematics.

    Applied to the canonical (sympy) string of a parsed answer, as the reference does: numbers,
    LaTeX and anything with an operator pass; multi-word prose, all-caps labels and alphabetic
    words longer than three letters do not.
    """
    s = answer
    if not s or s.isspace() or re.match(r"\\text\{[^}]*\}", s):
        return False
    if any(p.match(s) for p in _ACCEPT_WHOLE) or any(p.search(s) for p in _ACCEPT_ANYWHERE):
        return True
    if len(s) > 10 and " " in s and not _MATH_CHARS.search(s):
        return False
    if (s.isupper() and len(s) > 3 and s.isalpha()) or (re.match(r"^[A-Za-z\s]+$", s) and len(s) > 3):
        return False
    if len(s) <= 3 and re.match(r"^[A-Za-z0-9]+$", s):
        return True
    return bool(re.search(r"\d", s) and re.search(r"[a-zA-Z]", s))


# ------------------------------------------------------------------------- math-verify, bounded
def _parse_boxed(content: str) -> str | None:
    """Canonical string of one boxed answer: LaTeX printed from math-verify's sympy parse.

    Canonical strings are printed as LaTeX (not ``str(expr)``) so that equivalence voting can parse
    them again; two answers get the same string exactly when their sympy trees print the same, as
    with the reference's ``str``. The non-mathematical filter sees ``str(expr)``, as in the reference.
    When sympy cannot parse the answer, math-verify's string fallback is the canonical form.
    """
    import sympy
    from math_verify import LatexExtractionConfig, parse

    parsed = parse(
        "\\boxed{" + content + "}",
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)],
        extraction_mode="first_match",
        fallback_mode="first_match",
        parsing_timeout=None,  # bounded by _time_limited instead
    )
    if not parsed:
        return None
    value = parsed[0]
    try:
        plain = str(value).strip()
        canonical = plain if isinstance(value, str) else sympy.latex(value).strip()
    except Exception as error:  # sympy printers can fail on degenerate trees: treat as unparseable
        logger.debug("cannot print parsed answer %r: %s", content, error)
        return None
    if not canonical or not is_mathematical(plain):
        return None
    return canonical


def _equivalent(a: str, b: str) -> bool:
    """math-verify's verdict on two canonical answers (both directions must hold)."""
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)]
    parsed = [
        parse(
            "\\boxed{" + s + "}",
            extraction_config=config,
            extraction_mode="first_match",
            parsing_timeout=None,
        )
        for s in (a, b)
    ]
    if not parsed[0] or not parsed[1]:
        return False
    return bool(
        verify(parsed[0], parsed[1], timeout_seconds=None)
        and verify(parsed[1], parsed[0], timeout_seconds=None)
    )


_FUNCTIONS: dict[str, Callable[..., Any]] = {"parse": _parse_boxed, "equivalent": _equivalent}


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")


def _with_alarm(fn: Callable[..., Any], args: tuple[Any, ...], seconds: float) -> Any:
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
    """A long-lived helper process that runs math-verify for threads that cannot use signals.

    Started with ``python -c`` from a neutral directory (no ``multiprocessing``: spawn would
    re-import the caller's ``__main__``), fed pickled requests over a pipe; killed and replaced
    when a request overruns its time limit.
    """

    _BOOT = (
        "import json, sys, operator\n"  # import stdlib first: the parent's sys.path may shadow it
        "sys.path[:0] = json.loads(sys.argv[1])\n"
        "from opensir.selfplay.answers import _serve\n"
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

    def call(self, name: str, args: tuple[Any, ...], seconds: float) -> Any:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            pickle.dump((name, args), proc.stdin)
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
            return value

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()
                self._proc = None


def _serve() -> None:
    """Entry point of the helper process: answer requests until stdin closes."""
    import os

    out = os.fdopen(sys.stdout.fileno(), "wb", closefd=False)
    sys.stdout = sys.stderr  # nothing else may write into the reply pipe
    pickle.dump("ready", out)
    out.flush()
    inp = os.fdopen(sys.stdin.fileno(), "rb", closefd=False)
    while True:
        try:
            name, args = pickle.load(inp)
        except EOFError:
            return
        try:
            reply: tuple[bool, Any] = (True, _FUNCTIONS[name](*args))
        except Exception as error:  # reported back to the caller, who raises it
            reply = (False, repr(error))
        pickle.dump(reply, out)
        out.flush()


_HELPER = _Helper()


def _time_limited(name: str, args: tuple[Any, ...], seconds: float) -> Any:
    if _in_main_thread():
        return _with_alarm(_FUNCTIONS[name], args, seconds)
    return _HELPER.call(name, args, seconds)


# ------------------------------------------------------------------------------------ public API
def extract_answer(text: str, *, timeout_seconds: float = 5.0) -> str | None:
    """Canonical string of the completion's FIRST ``\\boxed{…}`` answer, or None.

    None when there is no balanced ``\\boxed{}``, when it holds the prompt's placeholder
    (``ANSWER``), when math-verify finds nothing in it or runs out of time, and when the answer is
    not mathematical (:func:`is_mathematical`).
    """
    content = first_boxed(text)
    if content is None or not content.strip():
        return None
    if content.strip().strip("$").strip().lower() in _TEMPLATE_ANSWERS:
        return None
    try:
        return _time_limited("parse", (content,), timeout_seconds)
    except TimeoutException:
        logger.warning("answer parsing timed out after %s s: %.200r", timeout_seconds, content)
        return None


def answers_equivalent(a: str, b: str, *, timeout_seconds: float = 5.0) -> bool:
    """Whether math-verify proves two canonical answers equal within the time limit (False when not)."""
    if a == b:
        return True
    try:
        return bool(_time_limited("equivalent", (a, b), timeout_seconds))
    except TimeoutException:
        logger.warning("answer comparison timed out after %s s: %.100r vs %.100r", timeout_seconds, a, b)
        return False


@dataclass(frozen=True)
class Vote:
    """The majority vote over one problem's student answers.

    ``agrees[i]`` says whether answer ``i`` votes with the majority (in equivalence mode, whether it
    is in the majority's cluster); it is what the student's accuracy reward reads.
    """

    answer: str | None
    count: int
    parseable: int
    total: int
    solve_rate: float
    agrees: tuple[bool, ...] = ()


def majority_vote(
    answers: Sequence[str | None],
    *,
    mode: VotingMode = "exact",
    over: SolveRateOver = "parseable",
    timeout_seconds: float = 5.0,
) -> Vote:
    """The pseudo-label of one problem and its solve rate.

    ``exact`` (reference): identical canonical strings vote together; on a tie the answer seen first
    wins. ``equivalence``: each answer joins the first earlier cluster whose first answer math-verify
    proves equal to it; the largest cluster wins, the earliest on a tie, and is named by its first
    answer. The solve rate is the majority count over the parseable answers (reference) or over all
    samples; with no parseable answer there is no label and the solve rate is 0.
    """
    total = len(answers)
    clusters: list[tuple[str, list[int]]] = []
    index: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        if answer in index:
            clusters[index[answer]][1].append(i)
            continue
        joined = None
        if mode == "equivalence":
            for c, (representative, _) in enumerate(clusters):
                if answers_equivalent(representative, answer, timeout_seconds=timeout_seconds):
                    joined = c
                    break
        elif mode != "exact":
            raise ValueError(f"voting mode must be 'exact' or 'equivalence', not {mode!r}")
        if joined is None:
            clusters.append((answer, [i]))
            joined = len(clusters) - 1
        else:
            clusters[joined][1].append(i)
        index[answer] = joined

    parseable = sum(len(members) for _, members in clusters)
    if over not in ("parseable", "all"):
        raise ValueError(f"solve rate must be over 'parseable' or 'all', not {over!r}")
    if not clusters:
        return Vote(None, 0, 0, total, 0.0, (False,) * total)
    best = max(range(len(clusters)), key=lambda c: (len(clusters[c][1]), -c))
    label, members = clusters[best]
    denominator = parseable if over == "parseable" else total
    solve_rate = len(members) / denominator
    assert math.isfinite(solve_rate)
    member_set = set(members)
    agrees = tuple(i in member_set for i in range(total))
    return Vote(label, len(members), parseable, total, solve_rate, agrees)
