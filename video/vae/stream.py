"""Chunk-by-chunk (streaming) encode and decode with explicit state.

A session owns a `VAEStreamState`: the cached tails of every causal module (one dict per spatial
tile) plus frame counters. Nothing is stored on the model, so any number of sessions can run on
one model at once, interleaved. Chunk rules (f = the temporal factor, 4 for Wan 2.1):

    encode: first chunk 1 + f·k frames (k ≥ 0), every later chunk f·k frames (k ≥ 1)
            -> 1 + k latents, then k latents
    decode: any chunks of ≥ 1 latent; the first latent gives 1 frame, every later one f frames

Because each module sees exactly the context a whole-clip pass would, any valid chunk plan gives
the whole-clip result (up to float reassociation), and latents/frames never depend on the future.
A session's memory is the chunk plus the tails: flat in the length of the video.

A decode session can re-anchor (`DecodeSession`, on by default for a VAE that knows its
training length): past that length it restarts the decoder every few latents on a re-encoded
key frame, so a decoder trained on short clips decodes streams of any length at its trained
quality. Chunk plans still give the same frames: restarts happen at fixed latent indices.

Optional spatial tiling splits each chunk into overlapping tiles (each with its own state) and
blends them with linear ramps; a tile at least the input size runs the untiled path exactly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

if TYPE_CHECKING:
    from mdiff.video.vae.model import CausalVAE


@dataclass(frozen=True)
class Tiling:
    """Spatial tiles in pixels: `tile` × `tile` squares whose starts are `stride` apart."""

    tile: int = 256
    stride: int = 192

    def __post_init__(self):
        if not 0 < self.stride <= self.tile:
            raise InvalidInputError(f"tiling needs 0 < stride <= tile, got {self}")


@dataclass
class VAEStreamState:
    """Everything a stream session carries from one chunk to the next."""

    frames_in: int = 0  # frames (encode) or latents (decode) pushed so far
    frames_out: int = 0  # latents (encode) or frames (decode) returned so far
    shape: tuple[int, ...] | None = None  # (B, C, H, W) fixed by the first chunk
    caches: dict[tuple[int, int], dict] = field(default_factory=dict)  # tile origin -> tails


def _starts(extent: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis: every `stride`, the last one flush with the end."""
    if extent <= tile:
        return [0]
    return list(range(0, extent - tile, stride)) + [extent - tile]


def _ramp(n: int, overlap: int, device) -> Tensor:
    """Blend weights (n,): rising over `overlap` cells at both ends, 1 inside, always > 0."""
    i = torch.arange(n, device=device, dtype=torch.float32)
    return torch.minimum(torch.minimum(i + 1, n - i), torch.tensor(overlap + 1.0)) / (overlap + 1)


def run_tiled(x: Tensor, fn, caches: dict, tile: int, stride: int, up: int, down: int) -> Tensor:
    """fn(tile of x, its cache) over overlapping spatial tiles of x, blended; scale out = up/down.

    `tile` and `stride` are in x's pixel units; outputs land at origin·up/down.
    """
    h, w = x.shape[-2:]
    rows, cols = _starts(h, tile, stride), _starts(w, tile, stride)
    if len(rows) == 1 and len(cols) == 1:
        return fn(x, caches.setdefault((0, 0), {}))  # the untiled path, exactly
    out = weight = None
    for i in rows:
        for j in cols:
            y = fn(x[..., i : i + tile, j : j + tile], caches.setdefault((i, j), {}))
            th, tw = y.shape[-2:]
            overlap = (tile - stride) * up // down
            wgt = _ramp(th, overlap, y.device)[:, None] * _ramp(tw, overlap, y.device)  # (th, tw)
            if out is None:
                out = y.new_zeros(
                    *y.shape[:-2], h * up // down, w * up // down, dtype=torch.float32
                )
                weight = torch.zeros(out.shape[-2:], device=y.device)
            oi, oj = i * up // down, j * up // down
            out[..., oi : oi + th, oj : oj + tw] += y.float() * wgt
            weight[oi : oi + th, oj : oj + tw] += wgt
    return (out / weight).to(y.dtype)


class _Session:
    """Shared bookkeeping of encode and decode sessions."""

    def __init__(self, vae: CausalVAE, normalize: bool, tiling: Tiling | None, dtype):
        self.vae, self.normalize, self.tiling, self.dtype = vae, normalize, tiling, dtype
        self.state = VAEStreamState()

    def _check_shape(self, x: Tensor, channels: int, what: str) -> None:
        if not isinstance(x, Tensor) or x.dim() != 5 or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InvalidInputError(f"{what} must be a float tensor (B, C, T, H, W), got {got}")
        b, c, t, h, w = x.shape
        if c != channels:
            raise InvalidInputError(f"{what} must have {channels} channels, got {c}")
        if t == 0:
            raise InvalidInputError(f"{what} chunk is empty (0 frames)")
        if self.state.shape is None:
            self.state.shape = (b, c, h, w)
        elif self.state.shape != (b, c, h, w):
            raise InvalidInputError(
                f"every {what} chunk of a stream must keep (B, C, H, W) = {self.state.shape}, "
                f"got {(b, c, h, w)}"
            )

    def _autocast(self, x: Tensor):
        param_dtype = next(self.vae.parameters()).dtype
        if self.dtype is None or self.dtype == param_dtype:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.dtype)

    def _tile(self, scale: int) -> tuple[int, int]:
        if self.tiling is None:
            return 1 << 30, 1 << 30
        if (
            self.tiling.tile % self.vae.spatial_factor
            or self.tiling.stride % self.vae.spatial_factor
        ):
            raise InvalidInputError(
                f"tile and stride must be multiples of the spatial factor "
                f"{self.vae.spatial_factor}, got {self.tiling}"
            )
        return self.tiling.tile // scale, self.tiling.stride // scale


class EncodeSession(_Session):
    """`push(frames (B, C, T, H, W)) -> latents (B, z, T', H/s, W/s)`, chunk by chunk."""

    def push(self, x: Tensor) -> Tensor:
        vae, f, s = self.vae, self.vae.temporal_factor, self.vae.spatial_factor
        self._check_shape(x, vae.pixel_channels, "frames to encode")
        t, (h, w) = x.shape[2], x.shape[-2:]
        if h % s or w % s:
            raise InvalidInputError(f"frame height and width must be multiples of {s}, got {h}×{w}")
        first = self.state.frames_in == 0
        if (first and t % f != 1 % f) or (not first and t % f):
            raise InvalidInputError(
                f"encode chunks must follow the rule: the first chunk has 1 + {f}k frames "
                f"(1, {1 + f}, {1 + 2 * f}, …), every later chunk {f}k frames (k ≥ 1); got "
                f"{'a first' if first else 'a later'} chunk of {t} frames"
            )
        tile, stride = self._tile(1)
        with self._autocast(x):
            mean = run_tiled(x, vae._encode_mean, self.state.caches, tile, stride, 1, s)
        self.state.frames_in += t
        self.state.frames_out += mean.shape[2]
        mean = mean.to(x.dtype)
        return vae.normalize_latents(mean) if self.normalize else mean


class DecodeSession(_Session):
    """`push(latents (B, z, T', h, w)) -> frames (B, C, T, h·s, w·s)` in [-1, 1], chunk by chunk.

    `segment` (latent frames, ≥ 3, or None): re-anchor the decoder so that it never runs longer
    than the clips it was trained on. The first `segment` latents decode as one clip. At every
    later boundary b (b = segment, then every segment - 2 latents) the decoder restarts from an
    empty state on a new first latent — the single-frame encoding of the frame it decoded last
    for latent b - 2 — and latent b - 1 again; their frames are dropped, and latents from b on
    come out of a decoder that has seen at most `segment` latents, like a training clip. Like a
    codec's key frames, this keeps a causal decoder trained on short clips at its trained
    quality on streams of any length (benchmarks/RESULTS.md, "Re-anchored decoding").
    """

    def __init__(self, vae: CausalVAE, normalize, tiling, dtype, segment: int | None = None):
        super().__init__(vae, normalize, tiling, dtype)
        if segment is not None and (isinstance(segment, bool) or not isinstance(segment, int)
                                    or segment < 3):  # fmt: skip
            raise InvalidInputError(
                f"a re-anchoring segment needs at least 3 latent frames (a new first latent, "
                f"one to warm up, one to keep), got {segment!r}"
            )
        self.segment, self.next_anchor = segment, segment
        self.ends: list[Tensor] = []  # the last frame of each of the last two latents decoded
        self.last_latent: Tensor | None = None  # the last raw latent decoded

    def _decode(self, z: Tensor) -> Tensor:
        tile, stride = self._tile(self.vae.spatial_factor)
        with self._autocast(z):
            x = run_tiled(z, self.vae._decode_frames, self.state.caches, tile, stride,
                          self.vae.spatial_factor, 1)  # fmt: skip
        return x.to(z.dtype).clamp(-1.0, 1.0)

    def _reanchor(self) -> None:
        frame = self.ends[0]  # the last frame of latent b - 2
        anchor = EncodeSession(self.vae, False, self.tiling, self.dtype).push(frame)
        self.state.caches = {}
        self._decode(anchor.to(self.last_latent.dtype))  # one latent a call: the memory of
        self._decode(self.last_latent)  # any other push of one latent
        self.next_anchor += self.segment - 2

    def push(self, z: Tensor) -> Tensor:
        vae, f = self.vae, self.vae.temporal_factor
        self._check_shape(z, vae.config.z_dim, "latents to decode")
        if self.normalize:
            z = vae.denormalize_latents(z)
        outs, start = [], 0
        while start < z.shape[2]:
            end = z.shape[2]
            if self.segment is not None:
                if self.state.frames_in == self.next_anchor:
                    self._reanchor()
                end = min(end, start + self.next_anchor - self.state.frames_in)
            piece = z[:, :, start:end]
            outs.append(x := self._decode(piece))
            if self.segment is not None:  # copies, so that no output is held
                if piece.shape[2] > 1:
                    self.ends = [x[:, :, -1 - f : x.shape[2] - f].clone()]
                self.ends = [*self.ends, x[:, :, -1:].clone()][-2:]
                self.last_latent = piece[:, :, -1:].clone()
            self.state.frames_in += piece.shape[2]
            self.state.frames_out += x.shape[2]
            start = end
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
