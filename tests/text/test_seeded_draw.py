"""`multinomial_at`: torch.multinomial's draws at some positions, the same generator state after."""

import pytest
import torch

from mdiff.text.sampling import seeded_draw
from mdiff.text.sampling.seeded_draw import multinomial_at, skipping_works


def test_this_torch_skips_rows_exactly():
    assert skipping_works()


@pytest.mark.parametrize("total,v", [(32, 50), (7, 3), (1, 9)])
def test_draws_and_state_equal_multinomial_over_every_row(total, v):
    g = torch.Generator().manual_seed(total * v)
    for trial in range(25):
        probs = torch.rand(total, v, generator=g).pow(4).softmax(-1)
        take = torch.rand(total, generator=g) < (0.1 if trial % 2 else 0.6)
        ref_gen = torch.Generator().manual_seed(trial)
        ours_gen = torch.Generator().manual_seed(trial)
        ref = torch.multinomial(probs, 1, generator=ref_gen).squeeze(-1)[take]
        asked = []

        def probs_at(index, probs=probs, asked=asked):
            asked.append(index.tolist())
            return probs[index]

        got = multinomial_at(probs_at, take, ours_gen)
        assert torch.equal(got, ref)
        assert torch.equal(ours_gen.get_state(), ref_gen.get_state())
        # the next draw of either generator is the same too
        assert torch.equal(torch.rand(5, generator=ours_gen), torch.rand(5, generator=ref_gen))
        assert asked == [take.nonzero().squeeze(1).tolist()]  # only the kept rows' softmax


def test_falls_back_to_multinomial_where_skipping_does_not_hold(monkeypatch):
    monkeypatch.setattr(seeded_draw, "skipping_works", lambda: False)
    probs = torch.rand(6, 8, generator=torch.Generator().manual_seed(0)).softmax(-1)
    take = torch.tensor([True, False, False, True, False, True])
    ref_gen, ours_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ref = torch.multinomial(probs, 1, generator=ref_gen).squeeze(-1)[take]
    asked = []
    got = multinomial_at(lambda i: asked.append(len(i)) or probs[i], take, ours_gen)
    assert torch.equal(got, ref) and asked == [6]
    assert torch.equal(ours_gen.get_state(), ref_gen.get_state())
