"""The unmasking step and its policies: remasking, per-row last steps, rules by score, per-row
proposals (the loop itself: tests/core/test_solvers.py)."""

import pytest
import torch

from mdiff import solvers, time
from mdiff import unmasking as U
from mdiff.errors import InvalidInputError

V, MASK = 11, 10


def onehot_model(target):
    def f(x, t):
        return torch.nn.functional.one_hot(target, V).float().mul(50.0).expand(x.shape[0], -1, -1)

    return f


def test_remdm_reopens_decoded_tokens_and_ranked_keeps_the_schedule():
    target = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(5))
    x = torch.full((2, 64), MASK)
    x[:, :8] = 9  # a prompt: never reopened
    history = []
    policy = U.ranked(solvers.schedule_count, U.score_by("confidence"))
    out = solvers.unmask(onehot_model(target), x, time.uniform_grid(4), MASK, policy=policy,
                         remask=U.remdm("cap", 0.3), callback=history.append,
                         generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.equal(out[:, 8:], target[8:].expand(2, -1)) and bool((out[:, :8] == 9).all())
    # the ranked policy commits as many more as were reopened: the masked count follows κ
    # (while the reopened fit among the masks, as they do here with σ ≤ 0.3)
    assert [int((h.x[0, 8:] != MASK).sum()) for h in history] == [14, 28, 42, 56]
    pairs = zip(history, history[1:], strict=False)
    reopened = [int(((a.x != MASK) & (b.x == MASK)).sum()) for a, b in pairs]
    assert sum(reopened) > 0, reopened
    assert all(bool((h.x[:, :8] == 9).all()) for h in history)
    plain = solvers.unmask(onehot_model(target), x, time.uniform_grid(4), MASK, policy=policy,
                           generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.equal(plain, out)  # this oracle proposes the target wherever it is reopened


def _state(masked, scores, decoded=None):
    x = torch.where(masked, MASK, 1)
    proposal = torch.full_like(x, 7)
    logits = torch.zeros(*x.shape, V)
    return U.UnmaskState(x, masked, logits, proposal, None, scores=scores, decoded=decoded)


def test_step_commits_every_mask_on_a_rows_last_step_and_reopens_none_there():
    masked = torch.tensor([[True, True, True, False], [True, True, True, False]])
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.0]] * 2, dtype=torch.float64)
    decoded = ~masked
    reopen_all = lambda state: state.decoded  # noqa: E731
    one = U.ranked(lambda state: torch.zeros(2, dtype=torch.long), U.precomputed)
    new = U.unmask_step(_state(masked, scores, decoded), MASK, one, reopen_all,
                        last=torch.tensor([True, False]))  # fmt: skip
    # row 0: last → all three commit, nothing reopened; row 1: reopens its decoded position,
    # so the ranked policy commits one more (the best score)
    assert new.tolist() == [[7, 7, 7, 1], [MASK, 7, MASK, MASK]]
    assert torch.equal(U.unmask_step(_state(masked, scores), MASK, one, last=True),
                       torch.where(masked, 7, 1))  # fmt: skip


def test_threshold_and_entropy_bound_policies():
    masked = torch.tensor([[True, True, True, True]])
    scores = torch.tensor([[0.2, 0.95, 0.91, 0.3]], dtype=torch.float64)
    got = U.threshold(0.9, U.precomputed)(_state(masked, scores))
    assert got.tolist() == [[False, True, True, False]]
    neg_h = -torch.tensor([[0.05, 0.3, 0.02, 0.5]], dtype=torch.float64)  # scores are −entropy
    got = U.entropy_bound(0.1, U.precomputed)(_state(masked, neg_h))
    assert got.tolist() == [[True, True, True, False]]  # 0.02, 0.05, 0.3: others 0, .02, .07
    target = torch.randint(0, 10, (24,), generator=torch.Generator().manual_seed(1))
    history = []
    out = solvers.unmask(onehot_model(target), torch.full((2, 24), MASK), time.uniform_grid(8),
                         MASK, policy=U.threshold(0.99, U.score_by("confidence")),
                         callback=history.append)  # fmt: skip
    assert torch.equal(out, target.expand(2, -1)) and len(history) == 1  # all confident at once
    with pytest.raises(InvalidInputError, match="state.scores"):
        U.threshold(0.5, U.precomputed)(_state(masked, None))
    with pytest.raises(InvalidInputError, match="unknown score"):
        U.score_by("loudness")
    with pytest.raises(InvalidInputError, match="unknown remask"):
        U.remdm("loop", 0.1)


def test_propose_rows_draws_each_row_from_its_own_generator():
    logits = torch.randn(7, V, generator=torch.Generator().manual_seed(0))
    counts = [3, 0, 4]

    def gens():
        return [torch.Generator().manual_seed(s) for s in (5, 6, 7)]

    tokens, noise = U.propose_rows(logits, counts, gens(), 1.0, noise=True)
    assert tokens.shape == noise.shape == (7,)
    g = gens()[2]  # row 2 alone, from its own generator: the same draws
    alone = U.sample_categorical(logits[3:], g, 1.0)
    assert torch.equal(tokens[3:], alone)
    assert torch.equal(noise[3:], torch.rand(4, generator=g, dtype=torch.float64))
    greedy, none = U.propose_rows(logits, counts, None, 0.0)
    assert torch.equal(greedy, logits.argmax(-1)) and none is None
