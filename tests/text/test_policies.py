"""The text sampler's EOS policy in isolation (the generic rules: tests/core/test_unmask_rules)."""

import math

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.text.sampling import policies as P

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
