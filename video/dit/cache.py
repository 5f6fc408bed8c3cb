"""`DiTCache`: the attention state of one streaming session of a `SpaceTimeDiT`.

A core `KVCache` (keys stored after RoPE) plus, for every cached key, the latent frame it
belongs to (−1 for a joint-mode text token) and whether it may be attended (text padding). The
model reads the cache and stages its new keys; the caller decides what to keep:

    cache = model.new_cache()
    for each chunk (frame_offset = j · chunk_frames):
        for each denoising step:
            v = model(x, t, text, text_mask, frame_offset=..., cache=cache)  # reads clean past
            cache.discard()                                                  # keeps nothing
            x = x + dt · v
        model(x, ones, text, text_mask, frame_offset=..., cache=cache)       # clean pass, t = 1
        cache.commit()                                                       # + rolling window

`commit` then evicts what no later chunk may see (see `mdiff.video.dit.blocks`): everything but
the text, the first `sink_frames` frames and the last `window − sink_frames` frames before the
next chunk. Keys carry their rotation, so eviction leaves no gap in the remaining scores. With
`sink_position="adjacent"` the model calls `place_sink` before each read: the sink's keys are
re-rotated (from the rotation they were committed with, so errors never accumulate) to sit just
before the oldest window frame, and every chunk sees the same relative positions as chunk
`window` of a training clip, however long the stream (StreamingLLM's positions-in-the-cache).
In joint mode the prompt's tokens enter the cache with the first commit; later passes read
them from the cache and do not re-encode the `text` argument. In cross mode the cache keeps
each layer's keys and values of the prompt (computed under `torch.no_grad` only), for text
states equal to those they came from: a stream projects its prompt once, not every step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.nn import KVCache, LayerCache, RotaryEmbedding, apply_rope


class DiTCache:
    """KVCache + per-key frame index and validity; made by `SpaceTimeDiT.new_cache()`."""

    def __init__(self, n_layers: int, chunk_frames: int, window: int | None, sink_frames: int):
        self.kv = KVCache(n_layers)
        self.chunk_frames, self.window, self.sink_frames = chunk_frames, window, sink_frames
        self.key_frames: Tensor | None = None  # (Lc,) long, −1 = text
        self.key_ok: Tensor | None = None  # (B, Lc) bool, False = padding
        self._staged: tuple[Tensor, Tensor] | None = None
        self._text_kv: tuple[Tensor, list] | None = None  # (text, per layer cross (k, v))
        self.sink_shift = 0  # latent frames the sink's keys sit past their own positions
        self._sink_keys: list[Tensor] | None = None  # per layer, as committed (shift 0)

    @property
    def n_layers(self) -> int:
        return self.kv.n_layers

    @property
    def length(self) -> int:
        """Committed keys (text and video tokens)."""
        return 0 if self.key_frames is None else self.key_frames.shape[0]

    @property
    def has_text(self) -> bool:
        """Whether joint-mode text keys are cached (they come first)."""
        return self.length > 0 and bool(self.key_frames[0] < 0)

    @property
    def frames(self) -> list[int]:
        """Absolute latent frames (first frame of each temporal patch) with cached keys, sorted."""
        if self.key_frames is None:
            return []
        return sorted(set(self.key_frames[self.key_frames >= 0].tolist()))

    def layer(self, i: int) -> LayerCache:
        return self.kv.layer(i)

    def text_kv(self, text: Tensor) -> list[tuple[Tensor, Tensor]] | None:
        """The cross-attention keys and values kept for text states equal to `text`, else None."""
        if self._text_kv is None:
            return None
        held, kvs = self._text_kv
        same = held.shape == text.shape and held.dtype == text.dtype and held.device == text.device
        return kvs if same and torch.equal(held, text) else None

    def keep_text_kv(self, text: Tensor, kvs: list[tuple[Tensor, Tensor]]) -> None:
        """Keep each layer's cross-attention (k, v) of `text` (a copy of it is the key)."""
        self._text_kv = (text.detach().clone(), kvs)

    def keys(self, frames: Tensor, ok: Tensor) -> tuple[Tensor, Tensor]:
        """Stage the new keys' frames (N,) and validity (B, N); return those of all keys:
        [cached ; new] frames (Lc + N,) and validity (B, Lc + N)."""
        if self._staged is not None or self.kv.has_staged:
            raise InvalidInputError(
                "the cache already holds staged keys; call commit() or discard() "
                "after every forward pass that reads it"
            )
        if self.key_ok is not None and self.key_ok.shape[0] != ok.shape[0]:
            raise InvalidInputError(
                f"batch size {ok.shape[0]} does not match the cache's {self.key_ok.shape[0]}"
            )
        self._staged = (frames, ok)
        if self.key_frames is None:
            return frames, ok
        return torch.cat([self.key_frames, frames]), torch.cat([self.key_ok, ok], dim=1)

    def commit(self) -> None:
        """Keep the keys of the last forward pass, then evict what the window no longer needs."""
        if self._staged is None:
            return
        self.kv.commit()
        frames, ok = self._staged
        self._staged = None
        if self.key_frames is None:
            self.key_frames, self.key_ok = frames, ok
        else:
            self.key_frames = torch.cat([self.key_frames, frames])  # (Lc,)
            self.key_ok = torch.cat([self.key_ok, ok], dim=1)  # (B, Lc)
        self._evict()

    def discard(self) -> None:
        """Drop the keys of the last forward pass: it only read the cache."""
        self.kv.discard()
        self._staged = None

    def _evict(self) -> None:
        if self.window is None:
            return
        kf, c = self.key_frames, self.chunk_frames
        video = kf >= 0
        next_start = (int(kf.max()) + 1) // c * c  # first frame of the chunk that runs next
        keep = ~video | (kf < self.sink_frames)
        keep |= kf >= next_start - (self.window - self.sink_frames)  # (Lc,)
        drop = (~keep).nonzero().flatten()
        if drop.numel() == 0:
            return
        start, end = int(drop[0]), int(drop[-1]) + 1
        if end - start != drop.numel():  # frames are committed in order, so this cannot happen
            raise InvalidInputError("cached frames are out of order; cannot evict a window")
        self.kv.evict(start, end)
        self.key_frames = torch.cat([kf[:start], kf[end:]])
        self.key_ok = torch.cat([self.key_ok[:, :start], self.key_ok[:, end:]], dim=1)

    def place_sink(self, shift: int, rope: RotaryEmbedding) -> None:
        """Rotate the cached sink frames' keys to sit `shift` latent frames past their own
        positions (time axis only); `rope` is the model's. A no-op when they already do."""
        if shift == self.sink_shift or self.key_frames is None:
            return
        sink = ((self.key_frames >= 0) & (self.key_frames < self.sink_frames)).nonzero().flatten()
        if sink.numel() == 0:
            return
        start, end = int(sink[0]), int(sink[-1]) + 1  # committed in order, after any text
        if self._sink_keys is None:  # still at shift 0: keep them as committed
            self._sink_keys = [self.kv.read(i)[0][:, :, start:end] for i in range(self.n_layers)]
        pos = torch.zeros(end - start, rope.n_axes, device=self.key_frames.device)
        pos[:, 0] = shift
        cos, sin = rope.freqs(pos)  # 2 × (n, hd/2); R(p + shift) = R(shift) R(p)
        self.kv.map_keys(start, end, lambda i, _: apply_rope(self._sink_keys[i], cos, sin))
        self.sink_shift = shift

    def clone(self) -> DiTCache:
        """An independent copy (tensors cloned), staged keys included."""
        other = DiTCache(self.n_layers, self.chunk_frames, self.window, self.sink_frames)
        other.kv = self.kv.clone()
        other.key_frames = None if self.key_frames is None else self.key_frames.clone()
        other.key_ok = None if self.key_ok is None else self.key_ok.clone()
        other._staged = None if self._staged is None else tuple(s.clone() for s in self._staged)
        other._text_kv = self._text_kv  # never modified in place, only replaced
        other.sink_shift, other._sink_keys = self.sink_shift, self._sink_keys  # likewise
        return other

    def __repr__(self) -> str:
        return (
            f"DiTCache(n_layers={self.n_layers}, keys={self.length}, frames={self.frames}, "
            f"window={self.window}, sink_frames={self.sink_frames})"
        )
