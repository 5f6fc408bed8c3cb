"""Sampler policies in isolation: schedules, selection rules, scores, EOS, ReMDM σ."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdiff.errors import InvalidInputError
from mdiff.text.sampling import policies as P

# ---- schedules ----------------------------------------------------------------------------------


def test_equal_split_matches_llada_example():
    assert P.equal_split(torch.tensor([10]), 4).tolist() == [[3, 3, 2, 2]]
    assert P.equal_split(torch.tensor([3, 0]), 5).tolist() == [[1, 1, 1, 0, 0], [0] * 5]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=6), st.integers(1, 64))
def test_equal_split_sums_and_is_balanced(ns, steps):
    counts = P.equal_split(torch.tensor(ns), steps)
    assert counts.shape == (len(ns), steps)
    assert counts.sum(1).tolist() == ns
    assert bool((counts[:, 1:] <= counts[:, :-1]).all())  # non-increasing
    assert bool((counts.max(1).values - counts.min(1).values <= 1).all())  # ±1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=6), st.integers(1, 64))
def test_dream_and_cosine_sum_to_mask_count(ns, steps):
    for kind in ("dream", "cosine"):
        counts = P.transfer_counts(kind, torch.tensor(ns), steps)
        assert counts.sum(1).tolist() == ns
        assert bool((counts >= 0).all())


@pytest.mark.parametrize("n", [4, 8, 32, 128])
def test_dream_schedule_quirk_when_steps_equal_masks(n):
    """ts = linspace(1, eps, n+1): step 0 commits ⌊n·(1−eps)/n⌋ = 0 and the last step 2."""
    counts = P.dream_split(torch.tensor([n]), n)[0].tolist()
    assert counts[0] == 0 and counts[-1] == 2 and sum(counts) == n
    assert counts[1:-1] == [1] * (n - 2)


def test_cosine_commits_few_early_many_late():
    counts = P.cosine_split(torch.tensor([64]), 8)[0]
    assert counts[0] < counts[-1] and int(counts.sum()) == 64


def test_schedule_rejects_bad_input():
    with pytest.raises(InvalidInputError):
        P.equal_split(torch.tensor([3]), 0)
    with pytest.raises(InvalidInputError):
        P.transfer_counts("threshold", torch.tensor([3]), 2)


# ---- selection ----------------------------------------------------------------------------------


def test_top_n_breaks_ties_leftmost_and_respects_eligibility():
    score = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1]])
    eligible = torch.tensor([[True, True, True, False, True]])
    picked = P.top_n(score, eligible, torch.tensor([2]))
    assert picked.tolist() == [[True, True, False, False, False]]
    assert P.top_n(score, eligible, torch.tensor([9])).sum() == 4  # capped by eligibility


def test_threshold_keeps_best_plus_confident():
    score = torch.tensor([[0.2, 0.95, 0.91, 0.3], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    eligible = torch.ones(2, 4, dtype=torch.bool)
    acc = P.threshold_accept(score, eligible, 0.9)
    assert acc.tolist() == [[False, True, True, False], [False, False, False, True]]
    eligible[1, 3] = False  # the best is not eligible: the next best is still committed
    assert P.threshold_accept(score, eligible, 0.9)[1].tolist() == [False, False, True, False]


def test_entropy_bound_on_hand_made_entropies():
    h = torch.tensor([[0.05, 0.3, 0.02, 0.5, 0.01]], dtype=torch.float64)
    eligible = torch.tensor([[True, True, True, True, False]])
    # ascending eligible: 0.02, 0.05, 0.3, 0.5; entropy of the others accepted with each:
    # 0, 0.02, 0.07, 0.37  ->  bound 0.1 accepts the first three
    assert P.entropy_bound_accept(h, eligible, 0.1).tolist() == [[True, True, True, False, False]]
    assert P.entropy_bound_accept(h, eligible, 0.0).tolist() == [[False, False, True, False, False]]
    assert P.entropy_bound_accept(h, eligible, 0.02).tolist() == [[True, False, True, False, False]]
    assert int(P.entropy_bound_accept(h, eligible, 10.0).sum()) == 4
    high = torch.tensor([[5.0, 4.0, 6.0]], dtype=torch.float64)  # always at least one
    assert P.entropy_bound_accept(high, torch.ones(1, 3, dtype=torch.bool), 0.1).tolist() == [
        [False, True, False]
    ]


# ---- logits and scores --------------------------------------------------------------------------


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert P.filter_logits(logits, top_k=2).isfinite().tolist() == [[True, True, False, False]]
    assert P.filter_logits(logits, top_p=0.7).isfinite().tolist() == [[True, True, False, False]]
    assert P.filter_logits(logits, top_p=0.5).isfinite().tolist() == [[True, False, False, False]]
    assert P.filter_logits(logits, top_p=0.1).isfinite().sum() == 1  # argmax always survives


def test_scores():
    p = torch.tensor([[0.6, 0.3, 0.1]], dtype=torch.float64)
    logits, prop = p.log(), torch.tensor([1])
    assert P.score("confidence", logits, prop).item() == pytest.approx(0.3)
    assert P.score("margin", logits, prop).item() == pytest.approx(0.3)
    h = -(p * p.log()).sum().item()
    assert P.score("neg_entropy", logits, prop).item() == pytest.approx(-h)
    assert P.entropy(torch.tensor([[0.0, -torch.inf]])).item() == 0.0
    noise = torch.tensor([0.25], dtype=torch.float64)
    assert P.score("random", logits, prop, noise).item() == 0.25
    with pytest.raises(InvalidInputError):
        P.score("random", logits, prop)


# ---- EOS ----------------------------------------------------------------------------------------


def test_eos_policy_logits_and_deferral():
    logits = torch.zeros(1, 2, 5)
    ids = (2, 4)
    assert P.EOSPolicy(forbid=True).process(logits, ids)[..., [2, 4]].isinf().all()
    pen = P.EOSPolicy(penalty=1.5).process(logits, ids)
    assert pen[0, 0].tolist() == [0, 0, -1.5, 0, -1.5]
    defer = P.EOSPolicy(defer=True)
    sl = defer.score_logits(logits, ids)
    assert sl[..., 2].isinf().all() and sl[..., 4].isinf().all()  # both ids, unlike LLaDA's bug
    score = torch.tensor([[0.9, 0.2, 0.8]], dtype=torch.float64)
    prop = torch.tensor([[4, 1, 2]])
    deferred = defer.defer_scores(score, prop, ids)
    assert deferred[0, 1] > deferred[0, 0] > deferred[0, 2] > -math.inf  # EOS last, order kept
    assert torch.equal(P.EOSPolicy().defer_scores(score, prop, ids), score)
    assert P.EOSPolicy(eos_ids=[7]).ids((2,)) == (7,)
    with pytest.raises(InvalidInputError):
        P.EOSPolicy(penalty=math.inf)


# ---- ReMDM --------------------------------------------------------------------------------------


def test_remask_sigma():
    at, as_ = torch.tensor([0.5, 0.0, 0.75]), torch.tensor([0.75, 0.25, 1.0])
    cap = P.remask_sigma("cap", 0.3, at, as_)
    assert cap.tolist() == pytest.approx([0.3, 0.0, 0.0])  # min(η, 0.5); nothing decoded; last
    res = P.remask_sigma("rescale", 0.5, at, as_)
    assert res.tolist() == pytest.approx([0.25, 0.0, 0.0])  # η·min(1, 0.25/0.5)
    assert P.remask_sigma("cap", 0.0, at, as_).eq(0).all()
    assert P.remask_sigma("none", 0.9, at, as_).eq(0).all()
    with pytest.raises(InvalidInputError):
        P.remask_sigma("loop", 0.1, at, as_)
