"""The bad-input corpus: run one CLI command or SDK call the way a new user would, and classify
what happened.

Every case ends in one of `OUTCOMES`:

- ``error``     a clean refusal: the CLI printed one ``mdiff…: error: …`` line (argparse adds its
                usage line) and exited with a documented non-zero code; the SDK raised an
                ``MdiffError``;
- ``accepted``  it worked, and the case's own check of the result passed;
- ``traceback`` an exception other than ``MdiffError`` escaped;
- ``hang``      it ran past the case's time limit (subprocess cases only);
- ``partial``   a half-written or temporary file was left, or a file that was there is gone
                or changed although the command failed;
- ``wrong``     it was accepted where it should have been refused, or its result is wrong.

Tests assert the outcome they expect (``error`` or ``accepted``), so the last four always fail
a test. ``tests/conftest.py`` prints the totals over every case that ran.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mdiff import cli
from mdiff.errors import MdiffError

__all__ = ["OUTCOMES", "TOTALS", "Outcome", "call", "mdiff", "mdiff_subprocess", "snapshot"]

OUTCOMES = ("error", "accepted", "traceback", "hang", "partial", "wrong")
TOTALS: collections.Counter = collections.Counter()  # outcome -> cases, for the summary
ERROR_CODES = frozenset({4})  # every command: usage error or could not do it (mdiff.cli)


@dataclass
class Outcome:
    kind: str  # one of OUTCOMES
    code: int | None = None  # exit code (CLI) or None
    stdout: str = ""
    stderr: str = ""
    error: BaseException | None = None  # the exception an SDK call raised
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.kind} (code {self.code}): {self.stderr.strip()[-400:] or self.error!r}"


def snapshot(*folders: Path) -> dict[Path, bytes]:
    """Every file under ``folders`` with its bytes (to check that nothing was lost or left)."""
    files = {}
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                files[path] = path.read_bytes()
    return files


def _leftovers(before: dict[Path, bytes], after: dict[Path, bytes], failed: bool) -> list[str]:
    notes = [f"temporary file left: {p.name}" for p in after if p not in before and
             p.name.startswith(".")]  # fmt: skip
    notes += [f"lost: {p.name}" for p in before if p not in after]
    if failed:
        notes += [f"changed by a failed command: {p.name}" for p in before
                  if p in after and after[p] != before[p]]  # fmt: skip
        notes += [f"written by a failed command: {p.name}" for p in after if p not in before]
    return notes


def _is_clean_error(code: int | None, stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code not in ERROR_CODES or not lines or "Traceback" in stderr:
        return False
    errors = [line for line in lines if line.startswith("mdiff") and ": error: " in line]
    usage = [line for line in lines if line.startswith("usage:") or line.startswith("  ")]
    return len(errors) == 1 and len(errors) + len(usage) >= len(lines) - 1


def mdiff(
    argv: list[str],
    *,
    watch: Iterable[Path] = (),
    check: Callable[[Outcome], bool] | None = None,
    codes: Iterable[int] = (0,),
) -> Outcome:
    """Run ``mdiff ARGV`` in this process; ``watch`` folders are checked for lost or left files.

    A run that exits with one of ``codes`` (``mdiff verify``'s verdicts 0-3 where a case expects
    them) is ``accepted`` if ``check(outcome)`` holds or there is no check, else ``wrong``.
    """
    watch = list(watch)
    before = snapshot(*watch)
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - anything else is what we classify
            code, escaped = None, exc
    result = Outcome("accepted", code, out.getvalue(), err.getvalue(), escaped)
    if escaped is not None:
        result.kind = "traceback"
    else:
        _classify(result, check, codes)
    return _finish(result, before, watch)


def _classify(result: Outcome, check, codes: Iterable[int]) -> None:
    if result.code in tuple(codes):
        result.kind = "accepted" if check is None or check(result) else "wrong"
    elif _is_clean_error(result.code, result.stderr):
        result.kind = "error"
    else:
        result.kind = "traceback" if "Traceback" in result.stderr else "wrong"


def mdiff_subprocess(
    argv: list[str],
    *,
    timeout: float = 120,
    watch: Iterable[Path] = (),
    env: dict | None = None,
    check: Callable[[Outcome], bool] | None = None,
    codes: Iterable[int] = (0,),
) -> Outcome:
    """Run ``python -m mdiff.cli ARGV`` in a child process (for hangs, signals, unbounded
    memory); the same classification as `mdiff`, plus ``hang`` after ``timeout`` seconds."""
    watch = list(watch)
    before = snapshot(*watch)
    cmd = [sys.executable, "-m", "mdiff.cli", *map(str, argv)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    except subprocess.TimeoutExpired as exc:
        result = Outcome("hang", None, str(exc.stdout or ""), str(exc.stderr or ""))
        result.notes.append(f"still running after {time.monotonic() - start:.0f} s")
        return _finish(result, before, watch)
    result = Outcome("accepted", proc.returncode, proc.stdout, proc.stderr)
    _classify(result, check, codes)
    return _finish(result, before, watch)


def call(fn: Callable[[], object], *, check: Callable[[object], bool] | None = None,
         watch: Iterable[Path] = ()) -> Outcome:  # fmt: skip
    """Run an SDK call: an ``MdiffError`` is ``error``; another exception ``traceback``; a
    result is ``accepted`` if ``check(result)`` holds (or there is no check), else ``wrong``."""
    watch = list(watch)
    before = snapshot(*watch)
    try:
        value = fn()
    except MdiffError as exc:
        result = Outcome("error", error=exc)
    except Exception as exc:  # noqa: BLE001
        result = Outcome("traceback", error=exc)
    else:
        result = Outcome("accepted" if check is None or check(value) else "wrong")
    return _finish(result, before, watch)


def _finish(result: Outcome, before: dict, watch: list[Path]) -> Outcome:
    if watch:
        notes = _leftovers(before, snapshot(*watch), failed=result.kind != "accepted")
        if notes and result.kind in ("error", "accepted"):
            result.kind = "partial"
        result.notes += notes
    TOTALS[result.kind] += 1
    return result
