"""The Wan 2.2 VAE's own blocks (diffusers' `AutoencoderKLWan` with ``is_residual=True``).

Wan 2.2 adds three things to the Wan 2.1 layout of `blocks`:

- `patchify` / `unpatchify`: a p×p space-to-channel step before the encoder and its inverse
  after the decoder (``patch_size=2``: RGB becomes 12 channels, and the VAE compresses 16×).
- `ResidualDownBlock`: the encoder's residual blocks and resampler of one level, plus a
  parameter-free shortcut (`AvgDown3D`: space/time-to-channel, then a mean over channel groups).
- `ResidualUpBlock`: the decoder's residual blocks and resampler of one level (its upsampler
  keeps the channel count), plus a parameter-free shortcut (`DupUp3D`: channel repeat, then
  channel-to-space/time).

Streaming: the shortcuts need no history. `AvgDown3D` pads time on the left to a multiple of its
factor, so a first chunk of 1 + 2k frames pairs (zero, frame 0) and later chunks of 2k frames
pair their own frames: any chunk plan of the encode rule (`stream`) groups frames as the whole
clip does. `DupUp3D` makes 2 frames of every frame but drops the first of the very first chunk
(1 latent -> 1 frame, as the upsampler's first frame), which it knows from its entry in the
session's cache (like `Resample`). Parameter and module names follow diffusers, so its state
dicts load unchanged.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mdiff.errors import InvalidInputError
from mdiff.video.vae.blocks import Cache, Resample, ResidualBlock


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, T, H, W) -> (B, C·p², T, H/p, W/p); channel c·p² + j·p + i holds the pixel at row
    offset i, column offset j of each p×p patch (diffusers' order)."""
    if p == 1:
        return x
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // p, p, w // p, p)  # (B, C, T, H/p, i, W/p, j)
    x = x.permute(0, 1, 6, 4, 2, 3, 5)  # (B, C, j, i, T, H/p, W/p)
    return x.reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: Tensor, p: int) -> Tensor:
    """The inverse of `patchify`: (B, C·p², T, h, w) -> (B, C, T, h·p, w·p)."""
    if p == 1:
        return x
    b, cp, t, h, w = x.shape
    c = cp // (p * p)
    x = x.reshape(b, c, p, p, t, h, w)  # (B, C, j, i, T, h, w)
    x = x.permute(0, 1, 4, 5, 3, 6, 2)  # (B, C, T, h, i, w, j)
    return x.reshape(b, c, t, h * p, w * p)


class AvgDown3D(nn.Module):
    """(B, C_in, T, H, W) -> (B, C_out, T/ft, H/fs, W/fs): each ft×fs×fs block of a channel
    becomes ft·fs² channels, and each run of C_in·ft·fs²/C_out of those is averaged. Time is
    first zero-padded on the left to a multiple of ft."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1):
        super().__init__()
        self.factor_t, self.factor_s = factor_t, factor_s
        self.out_channels = out_channels
        factor = factor_t * factor_s * factor_s
        if in_channels * factor % out_channels:
            raise InvalidInputError(
                f"AvgDown3D: {in_channels} channels × {factor} do not split into {out_channels}"
            )
        self.group_size = in_channels * factor // out_channels

    def forward(self, x: Tensor) -> Tensor:
        ft, fs = self.factor_t, self.factor_s
        pad = -x.shape[2] % ft
        if pad:
            x = F.pad(x, (0, 0, 0, 0, pad, 0))  # zeros before the first frame
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # (B, C, ft, fs, fs, T', H', W')
        x = x.reshape(b, self.out_channels, self.group_size, t // ft, h // fs, w // fs)
        return x.mean(dim=2)  # (B, C_out, T', H', W')


class DupUp3D(nn.Module):
    """(B, C_in, T, H, W) -> (B, C_out, ft·T, fs·H, fs·W): every channel repeated
    C_out·ft·fs²/C_in times, then spread over an ft×fs×fs block; the first chunk of a stream
    drops its first ft - 1 frames."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1):
        super().__init__()
        self.factor_t, self.factor_s = factor_t, factor_s
        self.out_channels = out_channels
        factor = factor_t * factor_s * factor_s
        if out_channels * factor % in_channels:
            raise InvalidInputError(
                f"DupUp3D: {out_channels} channels × {factor} are no multiple of {in_channels}"
            )
        self.repeats = out_channels * factor // in_channels

    def forward(self, x: Tensor, first_chunk: bool = False) -> Tensor:
        ft, fs, c = self.factor_t, self.factor_s, self.out_channels
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1)  # (B, C_out·ft·fs², T, H, W)
        x = x.reshape(b, c, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, C_out, T, ft, H, fs, W, fs)
        x = x.reshape(b, c, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1 :] if first_chunk else x


class ResidualDownBlock(nn.Module):
    """One encoder level of Wan 2.2: residual blocks, an optional resampler, and the `AvgDown3D`
    shortcut from the level's input to its output."""

    def __init__(self, in_dim, out_dim, dropout, num_res_blocks, temporal=False, down=False):
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if down else 1)
        dims = [in_dim] + [out_dim] * num_res_blocks
        self.resnets = nn.ModuleList(
            [ResidualBlock(a, b, dropout) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        self.downsampler = None
        if down:
            self.downsampler = Resample(out_dim, "downsample3d" if temporal else "downsample2d")

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        shortcut = self.avg_shortcut(x)  # (B, C_out, T', H', W')
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.downsampler is not None:
            x = self.downsampler(x, cache)
        return x + shortcut


class ResidualUpBlock(nn.Module):
    """One decoder level of Wan 2.2: num_res_blocks + 1 residual blocks, an optional upsampler
    that keeps the channels, and (with it) the `DupUp3D` shortcut from the level's input."""

    def __init__(self, in_dim, out_dim, num_res_blocks, dropout=0.0, temporal=False, up=False):
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if up else None
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nn.ModuleList(
            [ResidualBlock(a, b, dropout) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        self.upsampler = None
        if up:
            mode = "upsample3d" if temporal else "upsample2d"
            self.upsampler = Resample(out_dim, mode, out_dim=out_dim)

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        first = cache is None or self not in cache
        if cache is not None:
            cache[self] = True  # started: later chunks keep every duplicated frame
        shortcut = None if self.avg_shortcut is None else self.avg_shortcut(x, first)
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.upsampler is not None:
            x = self.upsampler(x, cache)
        return x if shortcut is None else x + shortcut


def residual_down_blocks(dims, num_res_blocks, temperal_downsample, dropout) -> nn.ModuleList:
    """The encoder levels of Wan 2.2: one `ResidualDownBlock` per level, the last one without
    resampling."""
    last = len(dims) - 2
    return nn.ModuleList(
        [
            ResidualDownBlock(a, b, dropout, num_res_blocks, temporal, down=i != last)
            for i, (a, b, temporal) in enumerate(_levels(dims, temperal_downsample))
        ]
    )


def _levels(dims, temporal_flags):
    """(in_dim, out_dim, temporal) of each level; the last level never resamples."""
    flags = [*temporal_flags[: len(dims) - 2], False]
    return zip(dims[:-1], dims[1:], flags, strict=True)


def residual_up_blocks(dims, num_res_blocks, temperal_upsample, dropout) -> nn.ModuleList:
    """The decoder levels of Wan 2.2: one `ResidualUpBlock` per level (no channel halving
    between levels), the last one without resampling."""
    last = len(dims) - 2
    return nn.ModuleList(
        [
            ResidualUpBlock(a, b, num_res_blocks, dropout, temporal, up=i != last)
            for i, (a, b, temporal) in enumerate(_levels(dims, temperal_upsample))
        ]
    )
