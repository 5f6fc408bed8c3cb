"""The exact block cache with a length per row: rows at different blocks step together.

The shared exact cache (`runner`, mode ``exact``) holds one length for every row, so rows step
in lock-step, block by block: a row whose hole lies in a later block waits for the others.
A server whose batch takes new rows as it runs (`sampling.rows`) has rows at every block at
once; here each row keeps its own committed length ``c[b]`` (its finished blocks, slots
[0, c[b])) and every active row steps in its own current block at each tick:

    row b feeds slots [c[b], s[b] + width)   s[b]: its block's first slot
        — the clean blocks since its last step ride along (committed: c[b] = s[b]) and its
          block is denoised against its own keys, the stale columns ≥ c[b] masked out.

A tick is at most three forwards (nothing, up to a block, more to ride along); a row with less
to ride along than another of its forward is fed dummy tokens first, masked as keys. Exact for a
block-causal model: a block never sees later blocks, and each row's keys are its own. Storage
is per layer (B, H, L, D) over the canvas slots; a row's columns ≥ c[b] are never read.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mdiff.nn.cache import KVCache

__all__ = ["RaggedCache"]


class RaggedCache:
    """Per-row committed keys of a block-causal model whose cache is a `KVCache`."""

    def __init__(self, model, real: Tensor, block: int):
        self.model, self.n_layers = model, model.new_cache().n_layers
        self.kv: list[tuple[Tensor, Tensor]] | None = None  # per layer (B, H, L, D)
        self.c = self.start(real, block)

    @staticmethod
    def start(real: Tensor, block: int) -> Tensor:
        """Each row's first committed length: its whole blocks of left padding (never keys),
        so a row's first step rides along its own tokens only."""
        L = real.shape[1]
        first = torch.where(real, torch.arange(L, device=real.device), L).min(1).values
        return first // block * block

    @staticmethod
    def supports(model) -> bool:
        new = getattr(model, "new_cache", None)
        return callable(new) and isinstance(new(), KVCache)

    def logits(self, x: Tensor, real: Tensor | None, positions: Tensor | None, starts: Tensor,
               width: int, rows: Tensor, narrow: bool) -> Tensor:  # fmt: skip
        """Logits (R, width, V) of each of ``rows`` at its window [starts, starts + width).

        At most three forwards: the rows with nothing to ride along, those with up to one
        block and those with more (rows that just joined). Within a forward, a row with less
        to ride along than the longest is fed dummy tokens first, masked out as keys."""
        ride = starts - self.c[rows]
        out: Tensor | None = None
        for sel in (ride == 0, (ride > 0) & (ride <= width), ride > width):
            sel = sel.nonzero().squeeze(1)
            if sel.numel():
                lg = self._forward(x, real, positions, rows[sel], starts[sel], width, narrow)
                if out is None:
                    out = lg.new_empty((rows.numel(), *lg.shape[1:]))
                out[sel] = lg
        return out

    def _forward(self, x, real, positions, g: Tensor, starts: Tensor, width: int,
                 narrow: bool) -> Tensor:  # fmt: skip
        """One forward of rows ``g``: each feeds its clean slots [c, start) and its window;
        ``rmax`` − (start − c) dummies first, so that every row feeds the same length."""
        L, dev = x.shape[1], x.device
        cg = self.c[g]
        r = starts - cg
        rmax = int(r.max())
        n = rmax + width
        j = torch.arange(n, device=dev)
        cols = (starts - rmax)[:, None] + j  # the slot each fed token stands for
        fed = j[None] >= (rmax - r)[:, None]  # not a dummy
        at = cols.clamp(0, L - 1)
        ok = torch.ones_like(x, dtype=torch.bool) if real is None else real
        pos0 = cg if positions is None else positions[g, cg.clamp(max=L - 1)]
        pos = (pos0 - rmax + r)[:, None] + j  # contiguous: the dummies' positions lead in
        ids = torch.where(fed, x[g].gather(1, at), x[g, :1])
        C = int(cg.max()) if self.kv is not None else 0  # none yet: only padding before
        cached = torch.arange(C, device=dev)[None] < cg[:, None]
        keys = torch.cat([cached & ok[g, :C], fed & ok[g].gather(1, at)], 1)
        n_all = self.c.numel()
        every = g.numel() == n_all and bool((g == torch.arange(n_all, device=dev)).all())
        pick = slice(None) if every else g  # every row in order: views, no copy of the keys
        kv = [(k[pick, :, :C], v[pick, :, :C]) for k, v in self.kv] if C else None
        tmp = KVCache.of(kv) if kv else KVCache(self.n_layers)
        kw = {"logits_from": rmax} if rmax and narrow else {}
        lg = self.model(ids, attention_mask=keys, position_ids=pos, cache=tmp, **kw)
        lg = lg if kw else lg[:, rmax:]
        if rmax:
            self._commit(tmp, g, cols[:, :rmax], fed[:, :rmax], L)
            self.c[g] = starts
        return lg

    def _commit(self, tmp: KVCache, g: Tensor, cols: Tensor, fed: Tensor, L: int) -> None:
        """Write the ride-along keys of rows ``g`` (new keys ``fed`` (G, r)) at ``cols``."""
        staged = [tmp.staged(i) for i in range(tmp.n_layers)]
        if self.kv is None:
            self.kv = [tuple(t.new_zeros((self.c.numel(), t.shape[1], L, t.shape[3]))
                             for t in kv) for kv in staged]  # fmt: skip
        rows = g[:, None].expand_as(cols)[fed]
        at = cols[fed]
        for (k, v), (nk, nv) in zip(self.kv, staged, strict=True):
            for full, new in ((k, nk), (v, nv)):
                view = full.permute(0, 2, 1, 3)  # (B, L, H, D) view: rows, columns first
                view[rows, at] = new[:, :, : cols.shape[1]].permute(0, 2, 1, 3)[fed]

    # ---- rows joining and leaving (`sampling.rows`) -------------------------------------------

    def take(self, rows: Tensor) -> RaggedCache:
        out = RaggedCache.__new__(RaggedCache)
        out.model, out.n_layers, out.c = self.model, self.n_layers, self.c[rows]
        out.kv = None if self.kv is None else [(k[rows], v[rows]) for k, v in self.kv]
        return out

    def extend(self, other: RaggedCache) -> None:
        """Append the rows of ``other`` (a cache of rows that have not stepped yet)."""
        n = other.c.numel()
        self.c = torch.cat([self.c, other.c])
        if self.kv is not None:
            self.kv = [tuple(torch.cat([t, t.new_zeros((n, *t.shape[1:]))]) for t in kv)
                       for kv in self.kv]  # fmt: skip

    def pad_right(self, k: int) -> None:
        if self.kv is not None:
            self.kv = [tuple(torch.nn.functional.pad(t, (0, 0, 0, k)) for t in kv)
                       for kv in self.kv]  # fmt: skip

    def drop_front(self, k: int) -> None:
        self.c = (self.c - k).clamp_min(0)
        if self.kv is not None:
            self.kv = [(kk[:, :, k:], vv[:, :, k:]) for kk, vv in self.kv]
