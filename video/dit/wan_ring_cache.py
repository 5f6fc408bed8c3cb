"""`WanRingCache`: a fixed-shape KV cache for streaming a `CausalWanTransformer`.

The same protocol and the same attention as `WanCache` (begin / read / commit / discard, the
text keys/values of one prompt), but every tensor keeps one shape and one storage for the whole
stream, so a `torch.compile`d chunk step compiles once (`CausalWanTransformer.compile_stream`).

Per layer one buffer each for k and v, (B, H, (F + n)·P, hd), allocated at the first chunk:

    slots [0, S·P)           the S sink frames (frame f < S in slot f), kept for ever
    slots [S·P, F·P)         R = L − S − 1 rolling frames, frame f in slot S + (f − S) mod R
    slots [F·P, (F + n)·P)   staging: the current chunk's n ≤ num_frame_per_block frames

F = S + R = L − 1 frames is what `WanCache` keeps after a commit (what the next chunk can
see besides itself); P is the number of tokens per latent frame. `read` writes the chunk's
keys into the staging slots in place and returns the whole buffer; `attn_mask` (a `Dense`
mask (1, (F + n)·P) over one preallocated bool buffer, rewritten in place by `begin`) marks the
slots the chunk sees: committed frames visible under the window (`visible_frames`) and its own
staged frames. `commit` copies the staged frames that stay visible into their ring slots.
Attention does not depend on the order of keys (RoPE is applied before caching), so the
outputs equal `WanCache`'s. Needs a finite window (`local_attn_size`); inference only (no
gradients through the in-place buffers).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.nn import Dense
from mdiff.video.dit.wan_cache import TextKV, visible_frames

__all__ = ["WanRingCache"]


class WanRingCache(TextKV):
    """Fixed-shape ring buffers; made by `CausalWanTransformer.new_cache(fixed=True)`."""

    def __init__(self, n_layers: int, window: int | None, sink_size: int, chunk_frames: int,
                 heads: int, head_dim: int):  # fmt: skip
        if window is None:
            raise InvalidInputError(
                "a fixed-shape (ring) KV cache needs a finite window: set local_attn_size "
                "(CausalWanConfig), or use the growing WanCache (fixed=False)"
            )
        if window < chunk_frames + sink_size:
            raise InvalidInputError(
                f"window {window} must hold a chunk ({chunk_frames}) and the sink ({sink_size})"
            )
        self.n_layers, self.window, self.sink_size = n_layers, window, sink_size
        self.chunk_frames, self.heads, self.head_dim = chunk_frames, heads, head_dim
        self.rolling = window - sink_size - 1  # R
        self.slots = sink_size + self.rolling  # F committed frames
        self.k: list[Tensor | None] = [None] * n_layers  # (B, H, (F + n)·P, hd) each
        self.v: list[Tensor | None] = [None] * n_layers
        self.tokens_per_frame: int | None = None  # P, fixed by the first chunk
        self.slot_frames: Tensor | None = None  # (F,) long, the frame in each slot, −1 = empty
        self.attn_mask: Dense | None = None  # over a (1, (F + n)·P) bool buffer
        self._last = -1  # the last committed frame
        self._staged: list[int] | None = None  # the frames of the current forward pass
        self._open = self._committed = False

    @property
    def length(self) -> int:
        """Committed keys per layer (valid slots · P)."""
        if self.slot_frames is None:
            return 0
        return int((self.slot_frames >= 0).sum()) * self.tokens_per_frame

    @property
    def frames(self) -> list[int]:
        if self.slot_frames is None:
            return []
        return sorted(f for f in self.slot_frames.tolist() if f >= 0)

    def begin(self, frames: Tensor, batch: int | None = None, dtype=None) -> None:
        """Start a forward pass whose new keys belong to latent frames `frames` (N,), each
        frame's P tokens contiguous. With `batch` and `dtype` (those of the keys to come) the
        buffers are allocated here, else at the first `read`. Rewrites `attn_mask` in place."""
        if self._staged is not None:
            raise InvalidInputError(
                "the cache holds staged keys; call commit() or discard() after every forward"
            )
        uniq, counts = torch.unique_consecutive(frames, return_counts=True)
        p, m = int(counts[0]), uniq.numel()
        if not bool((counts == p).all()) or not bool((uniq[1:] == uniq[:-1] + 1).all()):
            raise InvalidInputError("a chunk's tokens must be consecutive frames, P tokens each")
        first = int(uniq[0])
        if first <= self._last:
            raise InvalidInputError(
                f"chunk frames start at {first}, but frames up to {self._last} are committed: "
                "chunks go in order"
            )
        if m > self.chunk_frames:
            raise InvalidInputError(f"a chunk has at most {self.chunk_frames} frames, got {m}")
        if self.tokens_per_frame is None:
            self.tokens_per_frame = p
            self.slot_frames = torch.full((self.slots,), -1, dtype=torch.long)
            size = (self.slots + self.chunk_frames) * p
            self.attn_mask = Dense(torch.zeros(1, size, dtype=torch.bool, device=frames.device))
        elif p != self.tokens_per_frame:
            raise InvalidInputError(
                f"tokens per frame changed from {self.tokens_per_frame} to {p}: one frame size "
                "per stream"
            )
        self._staged, self._open = uniq.tolist(), True
        seen = visible_frames(self.slot_frames, first + m, self.window, self.sink_size)
        staged = torch.arange(self.chunk_frames) < m  # (n,)
        ok = torch.cat([seen & (self.slot_frames >= 0), staged]).repeat_interleave(p)
        self.attn_mask.mask[0].copy_(ok)  # same storage every chunk
        if batch is not None and dtype is not None and self.k[0] is None:
            for i in range(self.n_layers):
                self._allocate(i, batch, dtype, frames.device)

    def _allocate(self, i: int, batch: int, dtype, device) -> None:
        size = (batch, self.heads, self.attn_mask.mask.shape[1], self.head_dim)
        # zeros, not empty: a masked slot must hold finite numbers (0 · NaN is NaN)
        self.k[i] = torch.zeros(size, dtype=dtype, device=device)
        self.v[i] = torch.zeros(size, dtype=dtype, device=device)

    def read(self, i: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write layer i's new (k, v) (B, H, N, hd) into the staging slots; return the whole
        buffers (B, H, (F + n)·P, hd), to be attended under `attn_mask`."""
        if not self._open:
            raise InvalidInputError("WanRingCache.read before begin()")
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            raise InvalidInputError(
                "WanRingCache writes in place and is for inference (torch.no_grad()); use "
                "WanCache (fixed=False) to backpropagate through a stream"
            )
        # (only constant state is read here, so a compiled chunk step is not re-specialised)
        if self.k[i] is None or (self.k[i].dtype != k.dtype and not self._committed):
            self._allocate(i, k.shape[0], k.dtype, k.device)  # dtype guessed wrong in begin
        buf_k, buf_v = self.k[i], self.v[i]
        want = (buf_k.shape[0], self.heads, self.head_dim, buf_k.dtype, buf_k.device)
        if (k.shape[0], k.shape[1], k.shape[3], k.dtype, k.device) != want:
            raise InvalidInputError(
                f"keys (B, H, ·, hd) = {tuple(k.shape)} {k.dtype} do not fit the cache's "
                f"{want[:3]} {want[3]} on {want[4]}"
            )
        start = self.slots * self.tokens_per_frame
        buf_k[:, :, start : start + k.shape[2]].copy_(k)
        buf_v[:, :, start : start + v.shape[2]].copy_(v)
        return buf_k, buf_v

    def commit(self) -> None:
        """Keep the staged frames that later chunks can see in their ring slots."""
        if self._staged is None:
            return
        frames, read = self._staged, [i for i in range(self.n_layers) if self.k[i] is not None]
        self.discard()
        self._committed = True
        nxt = frames[-1] + 1  # the next chunk's first frame; it ends after it
        p, s, r = self.tokens_per_frame, self.sink_size, self.rolling
        src, dst = [], []
        for j, f in enumerate(frames):
            if f < s or (r > 0 and f >= nxt - r):
                slot = f if f < s else s + (f - s) % r
                src.append(self.slots + j)
                dst.append(slot)
                self.slot_frames[slot] = f
        gone = ~visible_frames(self.slot_frames, nxt + 1, self.window, s)
        self.slot_frames[gone] = -1  # evicted (their slots are masked from now on)
        self._last = frames[-1]
        if src:
            device = self.k[read[0]].device if read else "cpu"
            tok = torch.arange(p, device=device)
            src_t = (torch.tensor(src, device=device)[:, None] * p + tok).flatten()
            dst_t = (torch.tensor(dst, device=device)[:, None] * p + tok).flatten()
            for i in read:
                for buf in (self.k[i], self.v[i]):
                    buf.index_copy_(2, dst_t, buf.index_select(2, src_t))

    def discard(self) -> None:
        """Drop the keys of the last forward pass: it only read the cache."""
        self._staged, self._open = None, False

    def __repr__(self) -> str:
        return (f"WanRingCache(n_layers={self.n_layers}, frames={self.frames}, "
                f"window={self.window}, sink_size={self.sink_size}, slots={self.slots}+"
                f"{self.chunk_frames})")  # fmt: skip
