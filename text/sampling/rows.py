"""Rows joining and leaving a running sampler batch: continuous batching at step boundaries.

A server keeps one `prepare` d run going and, between two of its steps (``run.tick()``):

    reason = joinable(run, new)   # None, or why `new` cannot join now
    join(run, new)                # append the rows of `new`, a prepared run not started yet
    out = take(run, rows).finish()  # the GenerationOutput of finished rows …
    run = take(run, others)       # … and the run without them
    widen(run, k) / compact(run)  # right padding for a row to join; drop all-padding blocks
    rebase(run, origin)           # block 0 earlier, for a row whose hole starts before

Why a row's tokens do not change. A row's steps, schedule and randomness are its own (its
generator, its block, its step in the block; `sampler`), and the exact cache and the uncached
mode are batch-invariant; joining only adds rows beside it. A joining row must be laid out as
it is alone: the same canvas width (whole blocks of extra left padding change nothing for a
block-causal model) and the running batch's block origin (`layout`'s ``origin``, whole blocks
before its own). With the exact cache the running rows hold keys for slots [0, c); a joining
row's slots there must be clean (its first mask at c or later), and one forward over them fills
its rows of the cache — the keys it would have committed on its way there alone. With a cache
length per row (`prepare(rows_apart=True)`, `sampling.ragged`) a joining row needs none of
that: it starts with nothing cached and rides its own prompt in at its first step.

Only the batch-invariant modes join: cache ``exact`` or ``none``, no guidance (the guided
halves share one cache).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F

from mdiff.errors import InvalidInputError

__all__ = ["compact", "join", "joinable", "rebase", "take", "widen"]

_PER_ROW = ("x", "spb", "cur", "step", "size", "done", "forwards", "auto", "posting", "post")
_LAYOUT = ("real", "gen", "blocks", "n_blocks", "first_block")


def joinable(run, new) -> str | None:
    """Why the rows of `new` cannot join `run` now, or None."""
    if run.runner.mode not in ("exact", "none") or run.runner.guided:
        return "only the exact cache and the uncached mode take rows as they run"
    if new.cfg != run.cfg or (new.feed is None) != (run.feed is None):
        return "other sampler settings"
    if new.x.shape[1] != run.x.shape[1] or new.lay.origin != run.lay.origin:
        return "another canvas width or block origin"
    if new.lay.block_length != run.lay.block_length:
        return "another block length"
    if (new.runner.ragged is None) != (run.runner.ragged is None):
        return "another cache layout"
    if run.runner.ragged is not None:
        return None  # every row has its own cache length: any row joins
    c = 0 if run.runner.cache is None else run.runner.cache.length
    if c and bool(new.lay.gen[:, :c].any()):
        return "a mask inside the slots the running rows have cached"
    if c and not callable(getattr(run.runner.cache, "cat", None)):
        return "the model's cache cannot take rows"
    return None


@torch.no_grad()
def join(run, new) -> None:
    """Append the rows of `new` (`joinable`) to `run` and start them."""
    reason = joinable(run, new)
    if reason is not None:
        raise InvalidInputError(f"cannot join: {reason}")
    B, n = run.x.shape[0], new.x.shape[0]
    if run.runner.ragged is not None:  # a length per row: the new rows start with none
        run.runner.ragged.extend(new.runner.ragged)
    c = 0 if run.runner.cache is None else run.runner.cache.length
    if c:  # the joining rows' clean slots [0, c): their keys, as alone on their way there
        cache = run.runner.model.new_cache()
        new.runner._call(new.x, 0, c, cache)
        cache.commit()
        run.runner.cache = run.runner.cache.cat(cache)
    for name in _PER_ROW:
        setattr(run, name, torch.cat([getattr(run, name), getattr(new, name)]))
    k = max(run.left.shape[1], new.left.shape[1])
    run.left = torch.cat([F.pad(t, (0, k - t.shape[1])) for t in (run.left, new.left)])
    run.per_block = run.per_block + new.per_block
    run.gens = None if run.gens is None else list(run.gens) + list(new.gens)
    cat = {f: torch.cat([getattr(run.lay, f), getattr(new.lay, f)]) for f in _LAYOUT}
    run.lay = replace(run.lay, positions=torch.cat([_positions(run), _positions(new)]), **cat)
    r, q = run.runner, new.runner
    r.real = None if r.real is None and q.real is None else run.lay.real
    r.positions, r.fixed = run.lay.positions, torch.cat([r.fixed, q.fixed])
    if run.feed is not None:
        run.feed.extend(new.feed)
    run.restrict = _cat_restrict(run.restrict, new.restrict, B, n, run.x.device)
    run.start(range(B, B + n))


def widen(run, k: int) -> None:
    """Give every row ``k`` more slots of padding on the right (whole blocks), so a row whose
    hole lies left of the running rows' cache can join further right. The running rows'
    blocks, positions and cache do not change: a block-causal row never sees later slots."""
    if k <= 0:
        return
    if run.spec.attention != "block_causal" or k % int(run.spec.block_size):
        raise InvalidInputError("widen needs a block-causal model and whole blocks")
    pad = run.spec.fill_id

    def right(t, value):
        return F.pad(t, (0, k), value=value)

    run.x, run.auto = right(run.x, pad), right(run.auto, False)
    lay, pos = run.lay, _positions(run)
    run.lay = replace(lay, real=right(lay.real, False), gen=right(lay.gen, False),
                      blocks=right(lay.blocks, -1), positions=right(pos, 0))  # fmt: skip
    r = run.runner
    r.real, r.positions, r.fixed = run.lay.real, run.lay.positions, right(r.fixed, False)
    if r.ragged is not None:
        r.ragged.pad_right(k)
    if run.feed is not None:
        run.feed.generated = right(run.feed.generated, False)


def compact(run) -> None:
    """Drop the leading whole blocks that are padding in every row (and cached, and before the
    block origin): after the oldest rows leave, the canvas and cache shrink again."""
    bs = int(run.spec.block_size or 0)
    if run.spec.attention != "block_causal" or not bs or run.x.shape[0] == 0:
        return
    cache, ragged = run.runner.cache, run.runner.ragged
    c = run.x.shape[1] if ragged is not None else 0 if cache is None else cache.length
    slots = torch.arange(run.x.shape[1], device=run.x.device)
    first = int(torch.where(run.lay.real, slots, run.x.shape[1]).min())
    k = min(first, run.lay.origin, c) // bs * bs
    if k == 0 or (ragged is None and not callable(getattr(cache, "evict", None))):
        return
    if ragged is not None:
        ragged.drop_front(k)  # padding in every row: never a key
    else:
        cache.evict(0, k)
    run.x, run.auto = run.x[:, k:], run.auto[:, k:]
    lay = run.lay
    cols = {f: getattr(lay, f)[:, k:] for f in ("real", "gen", "blocks")}
    run.lay = replace(lay, positions=_positions(run)[:, k:], origin=lay.origin - k, **cols)
    r = run.runner
    r.real, r.positions, r.fixed = run.lay.real, run.lay.positions, r.fixed[:, k:]
    if run.feed is not None:
        run.feed.generated = run.feed.generated[:, k:]
        run.feed.positions = [p - k for p in run.feed.positions]
    if run.restrict is not None:
        pos = run.restrict[0]
        run.restrict = (torch.where(pos >= 0, pos - k, -1), run.restrict[1])


def rebase(run, origin: int) -> None:
    """Move block 0 of `run` to slot ``origin`` (whole blocks before its own), so a row whose
    hole starts before every running row's can join; the rows' blocks are renumbered."""
    k, rem = divmod(run.lay.origin - origin, run.lay.block_length)
    if k < 0 or rem:
        raise InvalidInputError(f"origin {origin} is not whole blocks before {run.lay.origin}")
    if k == 0:
        return
    lay = run.lay
    blocks = torch.where(lay.blocks >= 0, lay.blocks + k, -1)
    run.lay = replace(lay, blocks=blocks, n_blocks=lay.n_blocks + k,
                      first_block=lay.first_block + k, origin=origin)  # fmt: skip
    run.cur = run.cur + k


def take(run, rows):
    """A run of ``rows`` (indices, in order) of `run` only, at a step boundary: the same state
    and progress; the runner's cache keeps their rows."""
    rows = torch.as_tensor(rows, dtype=torch.long, device=run.x.device)
    idx = rows.tolist()
    out = copy.copy(run)
    for name in (*_PER_ROW, "left"):
        setattr(out, name, getattr(run, name)[rows])
    out.per_block = [run.per_block[b] for b in idx]
    out.gens = None if run.gens is None else [run.gens[b] for b in idx]
    pos = None if run.lay.positions is None else run.lay.positions[rows]
    out.lay = replace(run.lay, positions=pos, **{f: getattr(run.lay, f)[rows] for f in _LAYOUT})
    r = out.runner = copy.copy(run.runner)
    r.real = None if r.real is None else r.real[rows]
    r.positions, r.fixed = pos, r.fixed[rows]
    r.cache = None if r.cache is None else r.cache.select(rows)
    r.ragged = None if r.ragged is None else r.ragged.take(rows)
    out.feed = None if run.feed is None else run.feed.take(idx)
    if run.restrict is not None:
        out.restrict = (run.restrict[0][rows], run.restrict[1][rows])
    return out


def _positions(run):
    lay = run.lay
    if lay.positions is not None:
        return lay.positions
    return torch.arange(run.x.shape[1], device=run.x.device).expand(run.x.shape[0], -1)


def _cat_restrict(a, b, na: int, nb: int, device):
    if a is None and b is None:
        return None
    a = a or (torch.full((na,), -1, dtype=torch.long, device=device),
              torch.ones(na, 1, dtype=torch.bool, device=device))  # fmt: skip
    b = b or (torch.full((nb,), -1, dtype=torch.long, device=device),
              torch.ones(nb, 1, dtype=torch.bool, device=device))  # fmt: skip
    v = max(a[1].shape[1], b[1].shape[1])
    allowed = torch.cat([F.pad(t, (0, v - t.shape[1])) for t in (a[1], b[1])])
    return torch.cat([a[0], b[0]]), allowed
