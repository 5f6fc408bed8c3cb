"""Fill-in-the-middle tasks and their scoring: held-out code spans and HumanEval-infilling.

A task is ``FIMTask(task_id, prefix, middle, suffix)``; a completion replaces ``middle``.

- ``source_files(root, exts)`` reads every file of a folder of code (recursively, by
  extension; binary, non-UTF-8 and huge files skipped and counted) for ``make_tasks``.
- ``make_tasks(files, kind, n, seed)`` cuts tasks from source files deterministically:
  ``"single"`` removes one non-trivial line (its text after the indentation, so the model
  must produce the code, not the whitespace it can read off the neighbours), ``"multi"`` removes
  2–5 consecutive whole lines (the block keeps its leading indentation).
- ``exact_match(task, completion)``: single-line spans compare with surrounding whitespace
  stripped (the convention of SantaCoder-FIM); multi-line spans compare line by line with
  trailing whitespace stripped and blank edge lines ignored.
- ``load_humaneval_infilling(path)`` reads the ``openai/human-eval-infilling`` files
  (``.jsonl`` or ``.jsonl.gz``; fields task_id, prompt, suffix, canonical_solution, test,
  entry_point) and ``check_program`` runs ``prompt + completion + suffix + test`` in a separate
  interpreter with a timeout (execution-based pass@k; `pass_at_k` is the unbiased estimator).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mdiff.errors import InvalidInputError

__all__ = [
    "FIMTask",
    "check_program",
    "exact_match",
    "load_humaneval_infilling",
    "make_tasks",
    "pass_at_k",
    "source_files",
]

MAX_FILE_BYTES = 2**20  # larger files are skipped by source_files (generated code, data)
SKIP_DIRS = frozenset({"__pycache__", "node_modules"})  # and every folder whose name starts "."


@dataclass(frozen=True)
class FIMTask:
    task_id: str
    prefix: str
    middle: str
    suffix: str
    kind: str = "single"  # single | multi
    test: str | None = None  # HumanEval: the test code and the function it checks
    entry_point: str | None = None
    meta: dict = field(default_factory=dict)


def _good_line(line: str) -> bool:
    code = line.strip()
    return 8 <= len(code) <= 100 and not code.startswith(("#", '"""', "'''")) and code != "pass"


def _line_offsets(text: str) -> list[int]:
    offsets, pos = [], 0
    for line in text.splitlines(keepends=True):
        offsets.append(pos)
        pos += len(line)
    return offsets


def _cut(text: str, kind: str, rng: random.Random) -> tuple[str, str, str] | None:
    lines = text.splitlines(keepends=True)
    offsets = _line_offsets(text)
    if kind == "single":
        cands = [i for i, ln in enumerate(lines) if _good_line(ln) and ln.endswith("\n")]
        if not cands:
            return None
        i = rng.choice(cands)
        indent = len(lines[i]) - len(lines[i].lstrip())
        start = offsets[i] + indent
        end = offsets[i] + len(lines[i].rstrip("\r\n"))
        return text[:start], text[start:end], text[end:]
    span = rng.randint(2, 5)
    cands = [
        i
        for i in range(len(lines) - span)
        if _good_line(lines[i]) and sum(bool(ln.strip()) for ln in lines[i : i + span]) >= 2
    ]
    if not cands:
        return None
    i = rng.choice(cands)
    start, end = offsets[i], offsets[i + span]
    return text[:start], text[start:end], text[end:]


def make_tasks(files, kind: str = "single", n: int = 100, seed: int = 0) -> list[FIMTask]:
    """Up to `n` tasks of `kind` from `files` (paths or ``(name, text)`` pairs), in a
    deterministic order for a given `seed`: one per file in a shuffled file order, then further
    rounds over the files (other spans of the same files) until `n` are cut or none is left.
    Task ids are ``kind/name:line`` (the span's first line, 1-based)."""
    if kind not in ("single", "multi"):
        raise InvalidInputError(f"kind must be 'single' or 'multi', got {kind!r}")
    docs = []
    for f in files:
        name, text = (
            (str(f), Path(f).read_text(encoding="utf-8")) if not isinstance(f, tuple) else f
        )
        docs.append((name, text))
    docs.sort()
    random.Random(f"{kind}:{seed}").shuffle(docs)
    tasks, seen = [], set()
    for rnd in range(max(n, 1)):
        added = 0
        for name, text in docs:
            suffix = "" if rnd == 0 else f":{rnd}"  # round 0 cuts what one-per-file cut
            cut = _cut(text, kind, random.Random(f"{kind}:{seed}:{name}{suffix}"))
            if cut is None:
                continue
            line = cut[0].count("\n") + 1
            if (name, line) in seen:
                continue
            seen.add((name, line))
            tasks.append(FIMTask(f"{kind}/{name}:{line}", *cut, kind=kind))
            added += 1
            if len(tasks) == n:
                return tasks
        if not added and rnd > 0:
            break
    return tasks


def source_files(root, exts=(".py",), *, max_bytes: int = MAX_FILE_BYTES):
    """``(files, skipped)``: every file under `root` (recursively; not inside a folder named
    ``.*``, ``__pycache__`` or ``node_modules``) whose name ends in one of `exts`, as sorted
    ``(relative POSIX path, text)`` pairs, and the count of files skipped per reason
    (``"binary"``: a NUL byte; ``"not UTF-8"``; ``"too large"``: over `max_bytes`;
    ``"unreadable"``). `InvalidInputError` when `root` is not a folder, or holds no file with
    those extensions, or none of them is usable."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(
            f"{root} is not a folder" if root.exists() else f"no such folder: {root}"
        )
    exts = tuple(e.lower() for e in exts)
    found = sorted(
        p for p in root.rglob("*")
        if p.name.lower().endswith(exts) and p.is_file()
        and not any(d.startswith(".") or d in SKIP_DIRS for d in p.relative_to(root).parts[:-1])
    )  # fmt: skip
    if not found:
        raise InvalidInputError(f"no {'/'.join(exts)} files under {root}")
    files, skipped = [], {}
    for p in found:
        reason, text = _read_code(p, max_bytes)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            files.append((p.relative_to(root).as_posix(), text))
    if not files:
        why = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items()))
        raise InvalidInputError(f"none of the {len(found)} {'/'.join(exts)} files under {root} "
                                f"is usable ({why})")  # fmt: skip
    return files, skipped


def _read_code(path: Path, max_bytes: int) -> tuple[str | None, str]:
    """(why the file is skipped, or None; its text)."""
    try:
        if path.stat().st_size > max_bytes:
            return "too large", ""
        data = path.read_bytes()
    except OSError:
        return "unreadable", ""
    if b"\0" in data:
        return "binary", ""
    try:
        return None, data.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8", ""


def _lines(text: str) -> list[str]:
    rows = [ln.rstrip() for ln in text.splitlines()]
    while rows and not rows[0]:
        rows.pop(0)
    while rows and not rows[-1]:
        rows.pop()
    return rows


def exact_match(task: FIMTask, completion: str) -> bool:
    if task.kind == "single":
        return completion.strip() == task.middle.strip()
    return _lines(completion) == _lines(task.middle)


# ------------------------------------------------------------------------ HumanEval-infilling


def load_humaneval_infilling(path: str | os.PathLike) -> list[FIMTask]:
    """Tasks of a HumanEval-infilling file (SingleLine, MultiLine, RandomSpan, ...)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    tasks = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                tasks.append(
                    FIMTask(
                        row["task_id"], row["prompt"], row["canonical_solution"], row["suffix"],
                        kind="multi" if "\n" in row["canonical_solution"].strip("\n") else "single",
                        test=row["test"], entry_point=row["entry_point"],
                    )
                )  # fmt: skip
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise InvalidInputError(f"{path}:{n}: not a HumanEval-infilling row ({e})") from e
    return tasks


def check_program(task: FIMTask, completion: str, timeout: float = 10.0) -> bool:
    """Run the task's tests on ``prefix + completion + suffix`` in a fresh, isolated
    interpreter (``python -I`` in an empty temporary folder); False on failure or timeout."""
    if task.test is None or task.entry_point is None:
        raise InvalidInputError(f"task {task.task_id} has no test to run")
    program = "".join(
        [
            task.prefix,
            completion,
            task.suffix,
            "\n\n",
            task.test,
            f"\n\ncheck({task.entry_point})\n",
        ]
    )
    with tempfile.TemporaryDirectory(prefix="mdiff-check-") as tmp:
        script = Path(tmp, "program.py")
        script.write_text(program, encoding="utf-8")
        try:
            done = subprocess.run(
                [sys.executable, "-I", str(script)], cwd=tmp, capture_output=True,
                timeout=timeout, env={"PATH": os.environ.get("PATH", "")},
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 − C(n−c, k)/C(n, k)."""
    if not 0 <= c <= n or k < 1:
        raise InvalidInputError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
