"""FIM task cutting, exact match and the HumanEval-infilling runner."""

import gzip
import itertools
import json
import sysconfig
from pathlib import Path

import pytest

from mdiff.errors import InvalidInputError
from mdiff.text.fim.tasks import (
    FIMTask,
    check_program,
    exact_match,
    load_humaneval_infilling,
    make_tasks,
    pass_at_k,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = sorted(STDLIB.glob("*.py"))[:40]


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_tasks_splice_back_and_are_deterministic(kind):
    tasks = make_tasks(FILES, kind, n=25, seed=3)
    assert len(tasks) == 25
    assert tasks == make_tasks(FILES, kind, n=25, seed=3)
    assert tasks != make_tasks(FILES, kind, n=25, seed=4)
    texts = {f"{kind}/{f}": f.read_text(encoding="utf-8") for f in FILES}
    for t in tasks:
        name, line = t.task_id.rsplit(":", 1)
        assert t.prefix + t.middle + t.suffix == texts[name]
        assert t.prefix.count("\n") + 1 == int(line)
        if kind == "single":
            assert "\n" not in t.middle and t.middle == t.middle.lstrip()
            assert t.suffix.startswith(("\n", "\r\n"))
        else:
            assert 2 <= t.middle.count("\n") <= 5 and t.middle.endswith("\n")


def test_several_tasks_per_file_when_files_are_few():
    tasks = make_tasks(FILES[:3], "single", n=20, seed=0)
    assert len(tasks) == 20 and len({t.task_id for t in tasks}) == 20
    first_round = make_tasks(FILES[:3], "single", n=3, seed=0)
    assert tasks[:3] == first_round  # one per file first, in the same order
    assert {t.task_id.rsplit(":", 1)[0] for t in first_round} == {f"single/{f}" for f in FILES[:3]}


def test_exact_match_rules():
    single = FIMTask("a", "x = 1\n    ", "y = f(x)", "\n", kind="single")
    assert exact_match(single, "  y = f(x)  \n")
    assert not exact_match(single, "y = f(x) + 1")
    multi = FIMTask("b", "", "    a = 1\n    b = 2\n", "", kind="multi")
    assert exact_match(multi, "\n    a = 1   \n    b = 2")
    assert not exact_match(multi, "a = 1\nb = 2\n")  # indentation is part of the code


TASK = {
    "task_id": "Toy/0",
    "prompt": "def add(a, b):\n    ",
    "canonical_solution": "return a + b",
    "suffix": "\n",
    "test": "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n",
    "entry_point": "add",
}


def test_humaneval_loader_and_sandboxed_check(tmp_path):
    path = tmp_path / "toy.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps(TASK) + "\n\n")
    (task,) = load_humaneval_infilling(path)
    assert task.kind == "single" and task.entry_point == "add"
    assert check_program(task, task.middle)
    assert not check_program(task, "return a - b")
    assert not check_program(task, "")
    assert not check_program(task, "while True: pass", timeout=1.0)  # killed, not hung
    (tmp_path / "bad.jsonl").write_text('{"task_id": 1}\n')
    with pytest.raises(InvalidInputError, match="bad.jsonl:1"):
        load_humaneval_infilling(tmp_path / "bad.jsonl")


def test_pass_at_k_equals_enumeration():
    for n, c, k in [(5, 2, 1), (6, 3, 2), (7, 0, 3), (4, 4, 2), (8, 5, 4)]:
        subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    with pytest.raises(InvalidInputError):
        pass_at_k(3, 4, 1)
