"""Continuous batching in the sampler (`mdiff.text.sampling.rows`): rows that join a running
batch between two steps, and rows taken out when done, give exactly their solo tokens."""

from __future__ import annotations

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.text.sampling.rows import compact, join, joinable, take, widen
from mdiff.text.sampling.sampler import GenerationConfig, denoise, prepare
from mdiff.text.sampling.stream import TokenCollector

from .conftest import TinyDenoiser

MASK, PAD = 3, 0
M = MASK


def canvas(*rows):
    x = torch.tensor(rows)
    return x, x != PAD


A = canvas([PAD, PAD, PAD, PAD, 5, 6, M, M, M, M, 8, 9, 10, 11, M, M],
           [PAD, 5, 6, 7, 8, 9, M, M, M, M, M, M, M, M, 12, 13])  # fmt: skip
B = canvas([PAD, PAD, PAD, PAD, 4, 5, 6, 7, 8, 9, 10, M, M, M, M, 14],
           [7, 6, 5, 4, 3 + 1, 9, 10, 11, 12, 13, 14, 15, 16, M, M, 17])  # fmt: skip


def alone(model, x, real, cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    return denoise(model, x[None], real[None], cfg, generators=[gen])


MODES = [("exact", False), ("none", False), ("exact", True)]  # (cache, rows_apart)


@pytest.mark.parametrize(("cache", "apart"), MODES)
@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(temperature=1.0), dict(temperature=1.0, schedule="threshold", threshold=0.4)],
)
def test_rows_joining_and_leaving_keep_their_solo_tokens(cache, apart, kwargs):
    model = TinyDenoiser(seed=7, attention="block_causal", block_size=4)
    cfg = GenerationConfig(cache=cache, **kwargs)
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    feeds = TokenCollector.for_batch(4)
    run = prepare(model, *A, cfg, generators=gens(10, 11), streamer=feeds[:2], rows_apart=apart)
    assert (run.runner.ragged is not None) == apart
    run.start(range(2))
    for _ in range(3):
        assert run.tick()
    new = prepare(model, *B, cfg, generators=gens(12, 13), streamer=feeds[2:],
                  origin=run.lay.origin, rows_apart=apart)  # fmt: skip
    assert joinable(run, new) is None
    join(run, new)
    outs = {}
    order = [0, 1, 2, 3]
    while run.x.shape[0]:
        run.tick()
        done = [i for i, d in enumerate(run.done.tolist()) if d]
        if done:
            out = take(run, done).finish()
            for i, b in enumerate(done):
                outs[order[b]] = (out.sequences[i], feeds[order[b]].tokens)
            rest = [i for i in range(len(order)) if i not in done]
            order = [order[i] for i in rest]
            run = take(run, rest)
    assert sorted(outs) == [0, 1, 2, 3]
    for k, (x, real) in enumerate([(A[0][0], A[1][0]), (A[0][1], A[1][1]),
                                   (B[0][0], B[1][0]), (B[0][1], B[1][1])]):  # fmt: skip
        want = alone(model, x, real, cfg, 10 + k).sequences[0]
        assert torch.equal(outs[k][0], want), k
        assert outs[k][1] == want[real].tolist()  # its stream: prompt and middle, in order


def test_a_row_with_a_mask_in_the_cached_slots_cannot_join():
    model = TinyDenoiser(seed=7, attention="block_causal", block_size=4)
    cfg = GenerationConfig(cache="exact")
    run = prepare(model, *A, cfg)
    run.start(range(2))
    for _ in range(5):
        run.tick()
    assert run.runner.cache.length >= 8
    early = canvas([PAD, PAD, PAD, PAD, 5, M, M, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    new = prepare(model, *early, cfg, origin=run.lay.origin)
    assert "cached" in joinable(run, new)
    with pytest.raises(InvalidInputError, match="cached"):
        join(run, new)
    wide = prepare(model, torch.full((1, 20), 5), None, cfg)
    assert "width" in joinable(run, wide)


@pytest.mark.parametrize(("cache", "apart"), MODES)
def test_a_widened_batch_takes_the_row_further_right_and_compacts_after(cache, apart):
    """The row whose hole lies in the cached slots joins 2 blocks further right (`widen`);
    once the first rows leave, the all-padding blocks go (`compact`); tokens stay solo."""
    model = TinyDenoiser(seed=8, attention="block_causal", block_size=4)
    cfg = GenerationConfig(cache=cache, temperature=1.0)
    run = prepare(model, *A, cfg, generators=[torch.Generator().manual_seed(s) for s in (1, 2)],
                  rows_apart=apart)  # fmt: skip
    run.start(range(2))
    for _ in range(5):
        run.tick()
    early = torch.tensor([[PAD, PAD, PAD, PAD, 5, M, M, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    wide = torch.cat([torch.full((1, 8), PAD), early], 1)  # the same row, 2 blocks of pad more
    new = prepare(model, wide, wide != PAD, cfg, generators=[torch.Generator().manual_seed(3)],
                  origin=run.lay.origin, rows_apart=apart)  # fmt: skip
    assert "width" in joinable(run, new)
    widen(run, 8)
    assert joinable(run, new) is None
    join(run, new)
    while not bool(run.done[:2].all()):
        run.tick()
    first = take(run, [0, 1]).finish()
    run = take(run, [2])
    width = run.x.shape[1]
    compact(run)
    assert run.x.shape[1] < width or cache == "none"
    while run.tick():
        pass
    last = run.finish()
    for k, (x, real) in enumerate([(A[0][0], A[1][0]), (A[0][1], A[1][1])]):
        assert torch.equal(first.sequences[k, :16], alone(model, x, real, cfg, 1 + k).sequences[0])
    solo = alone(model, early[0], early[0] != PAD, cfg, 3).sequences[0]
    assert torch.equal(last.sequences[0, -16:], solo)
