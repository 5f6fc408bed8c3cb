"""The core's unmasking rules in isolation: schedules, selection rules, scores, ReMDM σ."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdiff import unmask_rules as R
from mdiff.errors import InvalidInputError

# ---- schedules ----------------------------------------------------------------------------------


def test_equal_split_matches_llada_example():
    assert R.equal_split(torch.tensor([10]), 4).tolist() == [[3, 3, 2, 2]]
    assert R.equal_split(torch.tensor([3, 0]), 5).tolist() == [[1, 1, 1, 0, 0], [0] * 5]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=6), st.integers(1, 64))
def test_equal_split_sums_and_is_balanced(ns, steps):
    counts = R.equal_split(torch.tensor(ns), steps)
    assert counts.shape == (len(ns), steps)
    assert counts.sum(1).tolist() == ns
    assert bool((counts[:, 1:] <= counts[:, :-1]).all())  # non-increasing
    assert bool((counts.max(1).values - counts.min(1).values <= 1).all())  # ±1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=6), st.integers(1, 64))
def test_dream_and_cosine_sum_to_mask_count(ns, steps):
    for kind in ("dream", "cosine"):
        counts = R.transfer_counts(kind, torch.tensor(ns), steps)
        assert counts.sum(1).tolist() == ns
        assert bool((counts >= 0).all())


@pytest.mark.parametrize("n", [4, 8, 32, 128])
def test_dream_schedule_quirk_when_steps_equal_masks(n):
    """ts = linspace(1, eps, n+1): step 0 commits ⌊n·(1−eps)/n⌋ = 0 and the last step 2."""
    counts = R.dream_split(torch.tensor([n]), n)[0].tolist()
    assert counts[0] == 0 and counts[-1] == 2 and sum(counts) == n
    assert counts[1:-1] == [1] * (n - 2)


def test_cosine_commits_few_early_many_late():
    counts = R.cosine_split(torch.tensor([64]), 8)[0]
    assert counts[0] < counts[-1] and int(counts.sum()) == 64


def test_schedule_rejects_bad_input():
    with pytest.raises(InvalidInputError):
        R.equal_split(torch.tensor([3]), 0)
    with pytest.raises(InvalidInputError):
        R.transfer_counts("threshold", torch.tensor([3]), 2)


# ---- selection ----------------------------------------------------------------------------------


def test_top_n_breaks_ties_leftmost_and_respects_eligibility():
    score = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1]])
    eligible = torch.tensor([[True, True, True, False, True]])
    picked = R.top_n(score, eligible, torch.tensor([2]))
    assert picked.tolist() == [[True, True, False, False, False]]
    assert R.top_n(score, eligible, torch.tensor([9])).sum() == 4  # capped by eligibility


def test_threshold_keeps_best_plus_confident():
    score = torch.tensor([[0.2, 0.95, 0.91, 0.3], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    eligible = torch.ones(2, 4, dtype=torch.bool)
    acc = R.threshold_accept(score, eligible, 0.9)
    assert acc.tolist() == [[False, True, True, False], [False, False, False, True]]
    eligible[1, 3] = False  # the best is not eligible: the next best is still committed
    assert R.threshold_accept(score, eligible, 0.9)[1].tolist() == [False, False, True, False]


def test_entropy_bound_on_hand_made_entropies():
    h = torch.tensor([[0.05, 0.3, 0.02, 0.5, 0.01]], dtype=torch.float64)
    eligible = torch.tensor([[True, True, True, True, False]])
    # ascending eligible: 0.02, 0.05, 0.3, 0.5; entropy of the others accepted with each:
    # 0, 0.02, 0.07, 0.37  ->  bound 0.1 accepts the first three
    assert R.entropy_bound_accept(h, eligible, 0.1).tolist() == [[True, True, True, False, False]]
    assert R.entropy_bound_accept(h, eligible, 0.0).tolist() == [[False, False, True, False, False]]
    assert R.entropy_bound_accept(h, eligible, 0.02).tolist() == [[True, False, True, False, False]]
    assert int(R.entropy_bound_accept(h, eligible, 10.0).sum()) == 4
    high = torch.tensor([[5.0, 4.0, 6.0]], dtype=torch.float64)  # always at least one
    assert R.entropy_bound_accept(high, torch.ones(1, 3, dtype=torch.bool), 0.1).tolist() == [
        [False, True, False]
    ]


# ---- logits and scores --------------------------------------------------------------------------


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert R.filter_logits(logits, top_k=2).isfinite().tolist() == [[True, True, False, False]]
    assert R.filter_logits(logits, top_p=0.7).isfinite().tolist() == [[True, True, False, False]]
    assert R.filter_logits(logits, top_p=0.5).isfinite().tolist() == [[True, False, False, False]]
    assert R.filter_logits(logits, top_p=0.1).isfinite().sum() == 1  # argmax always survives


def test_scores():
    p = torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64)
    logits, prop = p.log(), torch.tensor([1])
    assert R.score("confidence", logits, prop).item() == pytest.approx(0.3)
    assert R.score("margin", logits, prop).item() == pytest.approx(0.3)
    h = -(p * p.log()).sum().item()
    assert R.score("neg_entropy", logits, prop).item() == pytest.approx(-h)
    assert R.entropy(torch.tensor([[0.0, -torch.inf]])).item() == 0.0
    noise = torch.tensor([0.25], dtype=torch.float64)
    assert R.score("random", logits, prop, noise).item() == 0.25
    with pytest.raises(InvalidInputError):
        R.score("random", logits, prop)


# ---- ReMDM --------------------------------------------------------------------------------------


def test_remask_sigma():
    at, as_ = torch.tensor([0.5, 0.0, 0.75]), torch.tensor([0.75, 0.25, 1.0])
    cap = R.remask_sigma("cap", 0.3, at, as_)
    assert cap.tolist() == pytest.approx([0.3, 0.0, 0.0])  # min(η, 0.5); nothing decoded; last
    res = R.remask_sigma("rescale", 0.5, at, as_)
    assert res.tolist() == pytest.approx([0.25, 0.0, 0.0])  # η·min(1, 0.25/0.5)
    assert R.remask_sigma("cap", 0.0, at, as_).eq(0).all()
    assert R.remask_sigma("none", 0.9, at, as_).eq(0).all()
    with pytest.raises(InvalidInputError):
        R.remask_sigma("loop", 0.1, at, as_)
