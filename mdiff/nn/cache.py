"""An explicit key/value cache for a stack of attention layers.

The cache is an object the caller owns and passes in; modules keep no hidden state, so several
caches can live side by side (e.g. one per prompt, or a clone for speculative steps);
`select(rows)` is a cache of some batch rows only (a step that runs only the rows still
decoding).

Per layer it holds committed keys and values of shape (B, Hk, L, D). Keys are stored *after*
RoPE, so they stay valid whatever comes later. Reading and writing are separate:

    k_all, v_all = cache.layer(i).extend(k_new, v_new)   # [cached prefix ; new], stages new
    ...  all layers run  ...
    cache.commit()    # append every layer's staged k/v      (e.g. the clean pass of a chunk)
    cache.discard()   # or drop them: the step only read     (e.g. a text denoising step)

    k_all, v_all = cache.layer(i, at=s).extend(k_new, v_new)  # cached keys with positions
    # [s, s + Lnew) replaced by the new ones, for this read only; nothing staged (dual cache)

A query block that reads the cache sits at the end of the key sequence, which is exactly how
`attend` aligns Lq < Lk. Rolling windows drop positions with `evict` / `keep_window`; since
keys carry their RoPE rotation, dropped positions leave no gap in the remaining scores;
`map_keys` rewrites kept keys in place (a sink re-rotated to sit just before the window).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError


class KVCache:
    """Committed and staged (k, v) for `n_layers` layers; all layers share one length."""

    def __init__(self, n_layers: int):
        if n_layers < 1:
            raise InvalidInputError(f"n_layers must be >= 1, got {n_layers}")
        self.n_layers = n_layers
        self._kv: list[tuple[Tensor, Tensor] | None] = [None] * n_layers
        self._staged: list[tuple[Tensor, Tensor] | None] = [None] * n_layers

    @property
    def length(self) -> int:
        """Number of committed positions (0 when empty)."""
        return 0 if self._kv[0] is None else self._kv[0][0].shape[2]

    @property
    def has_staged(self) -> bool:
        return any(s is not None for s in self._staged)

    def layer(self, i: int, at: int | None = None) -> LayerCache:
        """A view of layer i for a module's forward pass; `at` = splice instead of extend."""
        self._check_index(i)
        return LayerCache(self, i, at)

    def read(self, i: int) -> tuple[Tensor, Tensor] | None:
        """Committed (k, v) of layer i, each (B, Hk, L, D), or None when empty."""
        self._check_index(i)
        return self._kv[i]

    def stage(self, i: int, k: Tensor, v: Tensor) -> None:
        """Hold layer i's new (k, v), each (B, Hk, Lnew, D), until `commit` or `discard`."""
        self._check_index(i)
        if self._staged[i] is not None:
            raise InvalidInputError(
                f"layer {i} already has staged keys; call commit() or "
                "discard() before the next forward pass"
            )
        if k.dim() != 4 or k.shape != v.shape:
            raise InvalidInputError(
                f"k {tuple(k.shape)} and v {tuple(v.shape)} must both be (B, H, L, D)"
            )
        old = self._kv[i]
        if old is not None and (old[0].shape[:2] != k.shape[:2] or old[0].shape[3] != k.shape[3]):
            raise InvalidInputError(
                f"new keys {tuple(k.shape)} do not match cached keys "
                f"{tuple(old[0].shape)} in batch, heads or head dim"
            )
        self._staged[i] = (k, v)

    def extend(self, i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Stage (k, v) for layer i and return [cached ; new] keys and values (B, Hk, L+Lnew, D)."""
        self.stage(i, k, v)
        old = self._kv[i]
        if old is None:
            return k, v
        return torch.cat([old[0], k], dim=2), torch.cat([old[1], v], dim=2)

    def splice(self, i: int, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Layer i's committed (k, v) with positions [start, start + Lnew) replaced by the new
        (k, v) (B, Hk, Lnew, D), returned for one read; nothing is staged or stored."""
        self._check_index(i)
        old = self._kv[i]
        if old is None:
            raise InvalidInputError("cannot splice into an empty cache")
        if k.dim() != 4 or k.shape != v.shape:
            raise InvalidInputError(
                f"k {tuple(k.shape)} and v {tuple(v.shape)} must both be (B, H, L, D)"
            )
        if old[0].shape[:2] != k.shape[:2] or old[0].shape[3] != k.shape[3]:
            raise InvalidInputError(
                f"new keys {tuple(k.shape)} do not match cached keys "
                f"{tuple(old[0].shape)} in batch, heads or head dim"
            )
        end = start + k.shape[2]
        if not 0 <= start <= end <= old[0].shape[2]:
            raise InvalidInputError(
                f"cannot splice positions [{start}, {end}) into a cache of length {old[0].shape[2]}"
            )
        return tuple(  # 2 × (B, Hk, L, D)
            torch.cat([t[:, :, :start], new, t[:, :, end:]], dim=2)
            for t, new in zip(old, (k, v), strict=True)
        )

    def commit(self) -> None:
        """Append the staged k/v of every layer; every layer must have staged the same length."""
        if not self.has_staged:
            return
        lengths = {s[0].shape[2] if s is not None else None for s in self._staged}
        if None in lengths or len(lengths) != 1:
            raise InvalidInputError(
                "commit() needs every layer staged with the same length; "
                f"got lengths {[s and s[0].shape[2] for s in self._staged]}"
            )
        for i, (k, v) in enumerate(self._staged):
            old = self._kv[i]
            self._kv[i] = (
                (k, v)
                if old is None
                else (torch.cat([old[0], k], dim=2), torch.cat([old[1], v], dim=2))
            )
        self.discard()

    def discard(self) -> None:
        """Drop staged k/v: the last forward pass read the cache without writing it."""
        self._staged = [None] * self.n_layers

    def crop(self, n: int) -> None:
        """Keep the first n committed positions."""
        if not 0 <= n <= self.length:
            raise InvalidInputError(f"cannot crop a cache of length {self.length} to {n}")
        self.evict(n, self.length)

    def evict(self, start: int, end: int) -> None:
        """Remove committed positions [start, end)."""
        if not 0 <= start <= end <= self.length:
            raise InvalidInputError(
                f"cannot evict [{start}, {end}) from a cache of length {self.length}"
            )
        if start == end:
            return
        for i, kv in enumerate(self._kv):
            k, v = (torch.cat([t[:, :, :start], t[:, :, end:]], dim=2) for t in kv)
            self._kv[i] = None if k.shape[2] == 0 else (k, v)

    def map_keys(self, start: int, end: int, fn: Callable[[int, Tensor], Tensor]) -> None:
        """Replace every layer i's committed keys [start, end) (B, Hk, end − start, D) by
        fn(i, keys), e.g. to re-rotate them to other positions; values stay."""
        if not 0 <= start < end <= self.length:
            raise InvalidInputError(
                f"cannot map keys [{start}, {end}) of a cache of length {self.length}"
            )
        for i, (k, v) in enumerate(self._kv):
            new = fn(i, k[:, :, start:end])
            if new.shape != (*k.shape[:2], end - start, k.shape[3]):
                raise InvalidInputError(
                    f"mapped keys {tuple(new.shape)} do not keep the shape of "
                    f"{tuple(k[:, :, start:end].shape)}"
                )
            self._kv[i] = (torch.cat([k[:, :, :start], new.to(k.dtype), k[:, :, end:]], dim=2), v)

    def keep_window(self, sink: int, window: int) -> None:
        """Keep the first `sink` positions (attention sinks) and the last `window` positions."""
        if sink < 0 or window < 0:
            raise InvalidInputError(f"sink and window must be >= 0, got {sink}, {window}")
        if self.length > sink + window:
            self.evict(sink, self.length - window)

    def clone(self) -> KVCache:
        """An independent copy (tensors cloned), staged entries included."""
        other = KVCache(self.n_layers)
        other._kv = [None if kv is None else (kv[0].clone(), kv[1].clone()) for kv in self._kv]
        other._staged = [None if s is None else (s[0].clone(), s[1].clone()) for s in self._staged]
        return other

    def select(self, rows: Tensor) -> KVCache:
        """A cache of the committed (k, v) of batch rows ``rows`` (1-D indices) only, for a
        forward over those rows that reads the cache (its staged keys are then discarded)."""
        if self.has_staged:
            raise InvalidInputError("select() with staged keys: call commit() or discard() first")
        other = KVCache(self.n_layers)
        other._kv = [None if kv is None else (kv[0].index_select(0, rows),
                                              kv[1].index_select(0, rows))
                     for kv in self._kv]  # fmt: skip
        return other

    @classmethod
    def of(cls, kv: list[tuple[Tensor, Tensor]]) -> KVCache:
        """A cache holding the committed (k, v) of each layer, each (B, Hk, L, D)."""
        out = cls(len(kv))
        out._kv = [(k, v) for k, v in kv]
        return out

    def staged(self, i: int) -> tuple[Tensor, Tensor] | None:
        """Layer i's staged (k, v) (the last forward's new keys), or None."""
        self._check_index(i)
        return self._staged[i]

    def cat(self, other: KVCache) -> KVCache:
        """A cache whose batch rows are this cache's, then ``other``'s (same length)."""
        if self.has_staged or other.has_staged or other.n_layers != self.n_layers:
            raise InvalidInputError("cat() needs two caches of the same layers, nothing staged")
        if other.length != self.length:
            raise InvalidInputError(f"cat() of caches of {self.length} and {other.length} slots")
        out = KVCache(self.n_layers)
        out._kv = [None if a is None else (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
                   for a, b in zip(self._kv, other._kv, strict=True)]  # fmt: skip
        return out

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.n_layers:
            raise InvalidInputError(f"layer index {i} out of range for {self.n_layers} layers")

    def __repr__(self) -> str:
        return f"KVCache(n_layers={self.n_layers}, length={self.length}, staged={self.has_staged})"


@dataclass(frozen=True)
class LayerCache:
    """One layer's view of a KVCache, handed to that layer's attention module.

    With `at` set, `extend` splices the new keys over cached positions [at, at + Lnew) for this
    read only (`KVCache.splice`) instead of staging them.
    """

    cache: KVCache
    index: int
    at: int | None = None

    def read(self) -> tuple[Tensor, Tensor] | None:
        return self.cache.read(self.index)

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.at is not None:
            return self.cache.splice(self.index, k, v, self.at)
        return self.cache.extend(self.index, k, v)
