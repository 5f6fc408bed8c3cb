"""How the continuous batcher (`mdiff.serve.batching`) lays jobs out: each job's rows exactly
as `mdiff.text.fim.infilling.infill` lays out one input alone (token healing, context fitting,
its candidate rows), as a prepared sampler run; a job joining a running batch is left-padded by
whole blocks to end where the batch's rows step (`edge`, `place`), which changes nothing for a
block-causal model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

import mdiff.text.fim.infilling as F
from mdiff.errors import InvalidInputError
from mdiff.serve.text_sinks import DraftSink, Sink
from mdiff.text.sampling.heal import heal as heal_prefix
from mdiff.text.sampling.layout import pad_multiple
from mdiff.text.sampling.sampler import prepare
from mdiff.text.sampling.token_bytes import token_view

if TYPE_CHECKING:
    from mdiff.serve.batching import Job

__all__ = ["Member", "edge", "first_mask", "place", "prepare_jobs"]


@dataclass(eq=False)
class Member:
    """A job in the running batch: its rows' (job, length, prefix tokens), healed tail and
    solo canvas width; ``got`` holds its finished rows (they leave the batch at once), each
    cut to its solo canvas: part index → (ids, real, generated, steps per block, tokens per
    forward)."""

    job: Job
    parts: list
    carry: str
    width: int
    got: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """Its rows still in the batch (contiguous there, in part order)."""
        return len(self.parts) - len(self.got)


def prepare_jobs(cm, jobs: list[Job], window: int, max_width: int, run=None):
    """``jobs``' rows as a prepared sampler run (laid out as each is alone) and their
    members. With a running batch ``run``: ending at `edge` (whole blocks of left padding
    more: the same answers); None if it cannot join."""
    tok = cm.tokenizer
    heals = [heal_prefix(tok, F._lf(j.prefix), enabled=True) for j in jobs]
    inputs = [(h[0], j.suffix, F._lengths(j.length, j.candidates))
              for h, j in zip(heals, jobs, strict=True)]  # fmt: skip
    c = F.fim_canvas(cm.model.spec, token_view(tok), inputs, heals, window)
    x, real, restrict, origin = c.x, c.real, c.restrict, None
    if run is not None:
        placed = place(cm.model.spec, run, x, real, restrict, max_width)
        if placed is None:
            return None
        x, real, restrict, origin = placed
    device = next(cm.model.parameters()).device
    gens = [torch.Generator(device).manual_seed(jobs[k].seed) for k, _, _ in c.parts]
    kind = DraftSink if any(j.drafts and j.on_text is not None for j in jobs) else Sink
    sinks = [kind(jobs[k], tok, heals[k][1], start, n) for k, n, start in c.parts]
    try:
        run = prepare(cm.model, x.to(device), None if bool(real.all()) else real.to(device),
                      None, generators=gens, watermark=cm.watermark, streamer=sinks,
                      restrict=restrict, origin=origin, rows_apart=True,
                      **jobs[0].settings)  # fmt: skip
    except InvalidInputError:
        if origin is None:
            raise
        return None  # a mask before the running batch's first block
    m = pad_multiple(cm.model.spec)
    members = []
    for k, j in enumerate(jobs):
        idx = [r for r, p in enumerate(c.parts) if p[0] == k]
        width = -(-max(len(c.rows[r]) for r in idx) // m) * m  # its canvas alone
        members.append(Member(j, [c.parts[r] for r in idx], heals[k][1], width))
    return run, members


def place(spec, run, x, real, restrict, max_width: int):
    """A job's canvas placed for ``run``: left-padded by whole blocks to end at `edge`
    (the same answers), and the block origin it joins with (its own first block when
    that lies before the run's: `rows.rebase`); None if it cannot join."""
    extra = edge(spec, run, x, real, max_width) - x.shape[1]
    if extra < 0:
        return None
    pad = spec.pad_id if spec.pad_id is not None else spec.mask_id  # as fim_canvas
    x = torch.nn.functional.pad(x, (extra, 0), value=pad)
    real = torch.nn.functional.pad(real, (extra, 0), value=False)
    if restrict is not None:
        restrict = (torch.where(restrict[0] >= 0, restrict[0] + extra, -1), restrict[1])
    bs = int(spec.block_size or 1)
    return x, real, restrict, min(run.lay.origin, first_mask(x, real, spec) // bs * bs)


def edge(spec, run, x, real, max_width: int) -> int:
    """Where a job's canvas ``x`` (left-padded, its own width) ends in ``run`` (−1: it
    cannot join): for a block-causal model, whole blocks right so its first mask lies in
    the block the run steps next (never in its cache) — it steps with the rows there; for
    another model, the run's width."""
    L = run.x.shape[1]
    if spec.attention != "block_causal":
        return L if x.shape[1] <= L else -1
    if run.runner.ragged is not None:  # a cache length per row: it joins where it is
        return max(L, x.shape[1]) if x.shape[1] <= max(max_width, L) else -1
    cache, lay = run.runner.cache, run.lay
    active = ~run.done
    g = int(run.cur[active].min()) if bool(active.any()) else 0
    target = max(0 if cache is None else cache.length, lay.origin + max(g, 0) * lay.block_length)
    f = first_mask(x, real, spec)
    bs = int(spec.block_size)
    edge = -(-(x.shape[1] + max(target - f, 0)) // bs) * bs
    return edge if edge <= max(max_width, L) else -1


def first_mask(x, real, spec) -> int:
    """The first slot to fill in a canvas (its width when none)."""
    slots = torch.arange(x.shape[1], device=x.device)
    return int(torch.where(real & (x == spec.mask_id), slots, x.shape[1]).min())
