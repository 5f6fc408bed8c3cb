"""The exact block KV cache of `mdiff.text.model.llada2.LLaDA2Driver` (LLaDA 2-style models).

A block-causal model's block j never sees blocks > j, so the keys and values of finished blocks
are final: the sampler's ``exact`` mode (`mdiff.text.sampling.runner`) keeps them here and feeds
each denoising step only the current block. The mask is built from every cached slot's
*position* (kept here with its key flag), never from its place in the cache.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.text.model.hf_cache import select_rows

__all__ = ["LLaDA2Cache"]


class LLaDA2Cache:
    """The driver's KV cache (the sampler's contract, `mdiff.text.model.spec`): committed slots.

    ``kv``: transformers' `DynamicCache` (per layer keys after RoPE and values, (B, H, Lc, D));
    ``pos`` (B, Lc) and ``ok`` (B, Lc) bool: each committed slot's position and whether it is a
    key at all (real and below the driver's ``key_limit``) — the mask is built from them. A
    forward's new slots are staged: `commit` keeps them, `discard` drops them.
    """

    def __init__(self):
        from transformers import DynamicCache

        self.kv = DynamicCache()
        self.pos: Tensor | None = None
        self.ok: Tensor | None = None
        self._staged: tuple[Tensor, Tensor] | None = None

    @property
    def length(self) -> int:
        return 0 if self.pos is None else self.pos.shape[1]

    @property
    def has_staged(self) -> bool:
        return self._staged is not None

    def stage(self, pos: Tensor, ok: Tensor) -> None:
        self._staged = (pos, ok)

    def commit(self) -> None:
        if self._staged is not None:
            pos, ok = self._staged
            first = self.pos is None
            self.pos = pos if first else torch.cat([self.pos, pos], 1)
            self.ok = ok if first else torch.cat([self.ok, ok], 1)
            self._staged = None

    def discard(self) -> None:
        self._staged = None
        self._trim()

    def crop(self, n: int) -> None:
        """Keep the first ``n`` committed slots."""
        if self._staged is not None:
            raise InvalidInputError("crop() with staged keys: call commit() or discard() first")
        if not 0 <= n <= self.length:
            raise InvalidInputError(f"cannot crop a cache of length {self.length} to {n}")
        self.pos, self.ok = (None, None) if n == 0 else (self.pos[:, :n], self.ok[:, :n])
        self._trim()

    def select(self, rows: Tensor) -> LLaDA2Cache:
        """A cache of batch rows ``rows`` (1-D indices) only, for a forward that reads it."""
        return select_rows(self, rows, ("pos", "ok"))

    def _trim(self) -> None:
        n = self.length
        for layer in self.kv.layers:
            if getattr(layer, "is_initialized", False) and layer.keys is not None:
                layer.keys, layer.values = layer.keys[:, :, :n], layer.values[:, :, :n]

    def __repr__(self) -> str:
        return f"LLaDA2Cache(length={self.length}, staged={self._staged is not None})"
