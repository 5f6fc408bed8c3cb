"""``torch.multinomial(probs, 1, generator=g)`` over (C, V) probabilities, drawn at some of the
C positions only: the same tokens there and the same generator state after.

torch draws one sample per row as ``argmax(p / q)`` with ``q = exponential_(1)`` noise of the
full (C, V) shape, one 64-bit number of the generator's stream per entry in row-major order.
A caller that keeps the draw at k of the C positions (DiffusionGemma's sampler keeps its
lowest-entropy positions, ~2 of 32) needs the noise of those k rows only: `multinomial_at`
makes it there (``exponential_`` of V entries at the row's place in the stream) and steps the
generator over the other rows with ``random_`` on an int64 scratch (also one 64-bit number per
entry, ~6× cheaper than the exponential), so the stream stays where torch's draw leaves it.

That each op reads one 64-bit number per entry is how torch's CPU generator works, not a
promise: `skipping_works` checks it once per process against ``torch.multinomial`` (tokens and
generator state) and every other case (CUDA, a torch where it differs) draws all C rows with
``torch.multinomial`` itself.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["multinomial_at", "skipping_works"]


def multinomial_at(probs_at, take: Tensor, gen: torch.Generator) -> Tensor:
    """Draws (k,) at the positions where ``take`` (C,) is True, in order, equal to
    ``torch.multinomial(probs, 1, generator=gen)[take]`` for probabilities ``probs`` (C, V)
    whose rows ``probs_at(index)`` gives (float32, (n, V) for an index (n,)); ``gen`` ends
    where that call leaves it."""
    where = take.nonzero().squeeze(1)
    if gen.device.type != "cpu" or not skipping_works():
        full = probs_at(torch.arange(take.shape[0], device=take.device))
        return torch.multinomial(full, 1, generator=gen).squeeze(-1)[where]
    probs = probs_at(where)
    return _draw(probs, where.tolist(), take.shape[0], gen)


def _draw(probs: Tensor, rows: list[int], total: int, gen: torch.Generator) -> Tensor:
    k, v = probs.shape
    scratch = torch.empty(max(total - k, 0) * v, dtype=torch.int64)
    q = torch.empty_like(probs)
    at = 0  # the stream's row
    for i, r in enumerate(rows):
        if r > at:
            scratch[: (r - at) * v].random_(generator=gen)
        q[i].exponential_(generator=gen)
        at = r + 1
    if total > at:
        scratch[: (total - at) * v].random_(generator=gen)
    return torch.div(probs, q).argmax(-1)


@functools.cache
def skipping_works() -> bool:
    """Whether `_draw` gives ``torch.multinomial``'s tokens and generator state here (checked
    on a few small cases, once per process)."""
    g = torch.Generator().manual_seed(20261207)
    for total, v, rows in ((6, 11, [1, 2, 5]), (4, 3, [0]), (5, 17, []), (3, 9, [0, 1, 2])):
        probs = torch.rand(total, v, generator=g).softmax(-1)
        seed = int(torch.randint(0, 2**31, (1,), generator=g))
        ref_gen, our_gen = (torch.Generator().manual_seed(seed) for _ in range(2))
        ref = torch.multinomial(probs, 1, generator=ref_gen).squeeze(-1)[rows]
        ours = _draw(probs[rows], rows, total, our_gen)
        if not torch.equal(ref, ours) or not torch.equal(ref_gen.get_state(), our_gen.get_state()):
            return False
    return True
