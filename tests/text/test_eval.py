"""FIM evaluation per length mode, and the autoregressive baseline's scoring."""

import pytest

from mdiff.errors import InvalidInputError
from mdiff.text.fim.eval import evaluate_ar_fim, evaluate_fim, first_line
from mdiff.text.fim.tasks import FIMTask

from .fim_oracles import TOK, ARMiddleOracle, LengthOracle

CASES = [("x = ", "compute(a, b)", "\nprint(x)\n"), ("if ok:\n    ", "go()", "\nelse: pass\n")]
TASKS = [FIMTask(f"t{i}", p, m, s) for i, (p, m, s) in enumerate(CASES)]


def test_modes_are_scored_separately():
    model = LengthOracle(CASES)
    report = evaluate_fim(model, TOK, TASKS, fixed_length=4, candidates=range(1, 16))
    assert report["true"]["exact_match"] == 1.0
    assert report["auto"]["exact_match"] == 1.0
    assert report["fixed"]["exact_match"] == 0.5  # only "go()" has 4 tokens
    true = report["true"]
    assert true["tokens"] == sum(len(m) for _, m, _ in CASES)
    assert true["tokens_per_forward"] == pytest.approx(1.0)  # one token per step by default
    assert report["auto"]["seconds"] > 0


def test_ar_baseline_scoring_follows_its_own_eos():
    report = evaluate_ar_fim(ARMiddleOracle(CASES), TOK, TASKS, max_new_tokens=32)
    assert report["exact_match"] == 1.0
    assert report["tokens"] == sum(len(m) for _, m, _ in CASES)
    assert report["forwards"] == report["tokens"] + len(TASKS)  # each EOS costs one forward


def test_first_line_and_errors():
    assert first_line("\n  a = 1\nb = 2") == "  a = 1"
    with pytest.raises(InvalidInputError):
        evaluate_fim(LengthOracle(CASES), TOK, TASKS, modes=("oracle",))
    with pytest.raises(InvalidInputError):
        evaluate_ar_fim(ARMiddleOracle(CASES), TOK, [])
