"""Pieces of the space-time DiT: 3D patches in and out, the text projection, token positions and
the one attention rule shared by full (training) forwards and cached streaming.

Frames are *latent* frames, indexed absolutely from the start of the stream. Text tokens of the
joint (MMDiT-style) layout carry frame −1 and RoPE position (0, 0, 0), i.e. no rotation. With
chunk c(f) = f // chunk_frames and chunk start s(c) = c · chunk_frames, a query may see a key when

    bidirectional   always
    block_causal    video query, text key:   always
                    video query, video key:  c(k) == c(q), or c(k) < c(q) and
                                             (k < sink  or  k ≥ s(c(q)) − (window − sink))
                                             (every earlier chunk when window is None)
                    text query, video key:   never (the prompt never depends on the video)

(and the key is not padding). The window clause is exactly what a rolling KV cache holds while
chunk c runs: the first `sink` frames and the last `window − sink` frames before s(c); `DiTCache`
evicts by the same rule, so cached streaming equals one masked forward over the whole clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdiff.nn import grid_positions


class PatchEmbed3d(nn.Module):
    """(B, C, T, H, W) -> tokens (B, T'·H'·W', D), row-major over (t, h, w); kernel = patch."""

    def __init__(self, channels: int, dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.proj = nn.Conv3d(channels, dim, kernel_size=patch, stride=patch)
        nn.init.xavier_uniform_(self.proj.weight.view(dim, -1))  # as a Linear over one patch
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # (B, D, T', H', W')
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


def unpatchify(x: Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], channels: int):
    """Tokens (B, N, pt·ph·pw·C), features ordered (pt, ph, pw, C) -> (B, C, T, H, W)."""
    (tt, hh, ww), (pt, ph, pw) = grid, patch
    b = x.shape[0]
    x = x.reshape(b, tt, hh, ww, pt, ph, pw, channels)  # (B, T', H', W', pt, ph, pw, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T', pt, H', ph, W', pw)
    return x.reshape(b, channels, tt * pt, hh * ph, ww * pw)  # (B, C, T, H, W)


class TextProjection(nn.Module):
    """Text-encoder states (B, S, text_dim) -> (B, S, D): Linear -> GELU(tanh) -> Linear."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(text_dim, dim), nn.Linear(dim, dim)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, text: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(text), approximate="tanh"))  # (B, S, D)


def token_frames(grid: tuple[int, int, int], p_t: int, frame_offset: int, device=None) -> Tensor:
    """Absolute latent frame of every video token (its patch's first frame): (T'·H'·W',) long."""
    tt, hh, ww = grid
    first = frame_offset + p_t * torch.arange(tt, device=device)  # (T',)
    return first.repeat_interleave(hh * ww)  # (N,)


def video_positions(grid: tuple[int, int, int], time_offset: int, device=None) -> Tensor:
    """RoPE positions (N, 3) of a token grid whose first token-frame sits at `time_offset`;
    only the time axis is offset, height and width always start at 0."""
    return grid_positions(grid, (time_offset, 0, 0), device=device)


def visibility(
    q_frames: Tensor,
    k_frames: Tensor,
    *,
    block_causal: bool,
    chunk_frames: int,
    window: int | None = None,
    sink: int = 0,
) -> Tensor:
    """The rule of the module docstring: bool (Nq, Lk), True = query may see key (padding aside).
    q_frames (Nq,), k_frames (Lk,): absolute latent frames, −1 for text tokens."""
    q, k = q_frames[:, None], k_frames[None, :]  # (Nq, 1), (1, Lk)
    k_text = k < 0  # (1, Lk)
    if not block_causal:
        return (k_text | ~k_text).expand(q.shape[0], k.shape[1])  # (Nq, Lk), all True
    qc, kc = q.div(chunk_frames, rounding_mode="floor"), k.div(chunk_frames, rounding_mode="floor")
    video_ok = kc <= qc  # (Nq, Lk)
    if window is not None:
        start = qc * chunk_frames  # (Nq, 1) first frame of the query's chunk
        video_ok = video_ok & ((kc == qc) | (k < sink) | (k >= start - (window - sink)))
    video_ok = video_ok & (q >= 0)  # text queries see no video
    return torch.where(k_text, True, video_ok)  # (Nq, Lk)
