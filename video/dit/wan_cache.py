"""`WanCache`: the attention state of one streaming session of a `CausalWanTransformer`.

Self-attention keys (after RoPE, at their absolute frame) and values of every committed chunk,
per layer, with the latent frame of each key; and the text cross-attention keys/values of one
prompt per layer. The protocol is that of `mdiff.video.dit.cache.DiTCache`:

    cache = model.new_cache()
    for each chunk [a, b):
        for each denoising step:
            model(x, t, text, frame_offset=a, cache=cache); cache.discard()   # reads only
        model(x0, t_context, text, frame_offset=a, cache=cache); cache.commit()

Visibility (Self-Forcing's rolling KV cache, `local_attn_size` L frames with `sink_size` S):
a query of the chunk ending at frame b sees the keys of frames f < b with f ≥ b − (L − S) or
f < S, so at most L frames, its own chunk included; L = None sees every earlier frame.
`commit` evicts what no later chunk can see (the next one starts at the committed end), so
once the window is full the cache holds a fixed number of keys.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

__all__ = ["TextKV", "WanCache", "visible_frames"]


def visible_frames(key_frames: Tensor, end: int, window: int | None, sink: int) -> Tensor:
    """Bool (L,): which keys (their frames `key_frames`) a chunk ending at frame `end` sees."""
    ok = key_frames < end
    if window is not None:
        ok &= (key_frames >= end - (window - sink)) | (key_frames < sink)
    return ok


class TextKV:
    """The text cross-attention (k, v) of one prompt per layer, kept across a stream."""

    _text: tuple[Tensor, list] | None = None  # (text states, per layer (k, v))
    attn_mask = None  # a self-attention mask over what `read` returns (fixed-shape caches)

    def text_kv(self, text: Tensor) -> list | None:
        """The per-layer cross-attention (k, v) kept for text states equal to `text`."""
        if self._text is None:
            return None
        held, kvs = self._text
        same = held.shape == text.shape and held.dtype == text.dtype and held.device == text.device
        return kvs if same and torch.equal(held, text) else None

    def keep_text_kv(self, text: Tensor, kvs: list) -> None:
        self._text = (text.detach().clone(), kvs)


class WanCache(TextKV):
    """Per layer committed (k, v) (B, H, Lc, hd) and `key_frames` (Lc,); made by
    `CausalWanTransformer.new_cache()`. Shapes grow (torch.cat) and shrink (eviction) chunk by
    chunk; `WanRingCache` (`wan_ring_cache`) keeps them fixed."""

    def __init__(self, n_layers: int, window: int | None, sink_size: int):
        self.n_layers, self.window, self.sink_size = n_layers, window, sink_size
        self.k: list[Tensor | None] = [None] * n_layers
        self.v: list[Tensor | None] = [None] * n_layers
        self.key_frames: Tensor | None = None  # (Lc,) long
        self._staged: dict[int, tuple[Tensor, Tensor]] = {}
        self._staged_frames: Tensor | None = None
        self._last = -1  # the last committed frame (the window may have evicted every key)

    @property
    def length(self) -> int:
        """Committed keys per layer."""
        return 0 if self.key_frames is None else self.key_frames.shape[0]

    @property
    def frames(self) -> list[int]:
        return [] if self.key_frames is None else sorted(set(self.key_frames.tolist()))

    def begin(self, frames: Tensor, batch: int | None = None, dtype=None) -> None:
        """Start a forward pass whose new keys belong to latent frames `frames` (N,). `batch`
        and `dtype` (of the keys to come) serve fixed-shape caches; this one ignores them."""
        if self._staged or self._staged_frames is not None:
            raise InvalidInputError(
                "the cache holds staged keys; call commit() or discard() after every forward"
            )
        if int(frames.min()) <= self._last:
            raise InvalidInputError(
                f"chunk frames start at {int(frames.min())}, but frames up to {self._last} are "
                "committed: chunks go in order"
            )
        self._staged_frames = frames

    def read(self, i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Stage layer i's new (k, v) (B, H, N, hd); return the visible cached keys and
        values followed by the new ones (B, H, Lv + N, hd)."""
        if self._staged_frames is None:
            raise InvalidInputError("WanCache.read before begin()")
        self._staged[i] = (k, v)
        if self.k[i] is None:
            return k, v
        if self.k[i].shape[0] != k.shape[0]:
            raise InvalidInputError(f"batch {k.shape[0]} does not match the cache's")
        end = int(self._staged_frames.max()) + 1
        ok = visible_frames(self.key_frames, end, self.window, self.sink_size)
        kc, vc = self.k[i], self.v[i]
        if not bool(ok.all()):
            idx = ok.nonzero().flatten()
            kc, vc = kc.index_select(2, idx), vc.index_select(2, idx)
        return torch.cat([kc, k], dim=2), torch.cat([vc, v], dim=2)

    def commit(self) -> None:
        """Keep the keys of the last forward pass, then evict what later chunks cannot see."""
        if self._staged_frames is None:
            return
        frames, self._staged_frames = self._staged_frames, None
        for i, (k, v) in self._staged.items():
            self.k[i] = k if self.k[i] is None else torch.cat([self.k[i], k], dim=2)
            self.v[i] = v if self.v[i] is None else torch.cat([self.v[i], v], dim=2)
        self._staged = {}
        kf = self.key_frames
        self.key_frames = frames if kf is None else torch.cat([kf, frames])
        self._last = int(frames.max())
        if self.window is None:
            return
        nxt = self._last + 1  # the next chunk's first frame; it ends after it
        keep = visible_frames(self.key_frames, nxt + 1, self.window, self.sink_size)
        if bool(keep.all()):
            return
        idx = keep.nonzero().flatten()
        self.key_frames = self.key_frames[idx]
        for i in range(self.n_layers):
            if self.k[i] is not None:
                self.k[i], self.v[i] = self.k[i][:, :, idx], self.v[i][:, :, idx]

    def discard(self) -> None:
        """Drop the keys of the last forward pass: it only read the cache."""
        self._staged, self._staged_frames = {}, None

    def __repr__(self) -> str:
        return (f"WanCache(n_layers={self.n_layers}, keys={self.length}, frames={self.frames}, "
                f"window={self.window}, sink_size={self.sink_size})")  # fmt: skip
