"""Building blocks of the causal 3D VAE (Wan 2.1 family), with explicit streaming state.

Every module takes `(x, cache)`, where `x` is `(B, C, T, H, W)` and `cache` is either `None`
(the whole clip in one call, starting at frame 0) or a plain `dict` owned by a stream session
(`mdiff.video.vae.stream`). A module that needs history keys its entry by itself:

- `CausalConv3d` with temporal kernel k stores the last `2·p_t` frames of its (left-padded)
  input; the next chunk is prepended with them instead of zeros. Exactly the context a single
  pass over the whole clip would see, so chunking changes nothing.
- `Resample("downsample3d")` codes the first frame on its own and then runs a stride-2 time conv
  over (last frame of the previous chunk, chunk); it stores that last frame.
- `Resample("upsample3d")` passes the very first frame through (1 latent -> 1 frame) and doubles
  every later frame with a time conv whose history starts at zeros (not at frame 0); it stores a
  "started" marker (its time conv stores its own tail).

Normalisation is an L2 norm over channels per position (no statistics over time or space) and
attention runs within a frame, so nothing else couples frames. Parameter names follow diffusers'
`AutoencoderKLWan`, so its state dicts load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mdiff.video.vae.layers import (
    Cache,
    CausalConv3d,
    FrameConv2d,
    RMSNorm,
    Upsample2x,
    empty_like_layout,
    per_frame,
)

__all__ = ["AttentionBlock", "Cache", "CausalConv3d", "Decoder3d", "Encoder3d", "MidBlock",
           "Resample", "ResidualBlock", "UpBlock"]  # fmt: skip


class Resample(nn.Module):
    """Spatial ×2 up/down sampling, with optional causal temporal ×2 (the '3d' modes). The
    upsamplers halve the channels unless `out_dim` is given (Wan 2.2 keeps them)."""

    def __init__(self, dim: int, mode: str, out_dim: int | None = None):
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            conv = FrameConv2d(dim, dim // 2 if out_dim is None else out_dim, 3, padding=1)
            self.resample = nn.Sequential(Upsample2x(), conv)
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), FrameConv2d(dim, dim, 3, 2))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def _double_time(self, x: Tensor, cache: Cache | None) -> Tensor:
        b, c, t, h, w = x.shape
        y = self.time_conv(x, cache)  # (B, 2C, T, H, W)
        out = empty_like_layout(y, b, c, 2 * t, h, w)  # (B, C, 2T, H, W), pairs interleaved
        out[:, :, 0::2], out[:, :, 1::2] = y[:, :c], y[:, c:]
        return out

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        if self.mode == "upsample3d":
            first = cache is None or self not in cache
            if cache is not None:
                cache[self] = True  # started: from now on every frame is doubled
            if not first:
                x = self._double_time(x, cache)  # (B, C, 2T, H, W)
            elif x.shape[2] > 1:
                x = torch.cat([x[:, :, :1], self._double_time(x[:, :, 1:], cache)], 2)
        x = self.resample(x)  # (B, C', T', H·2^±1, W·2^±1), frame by frame
        if self.mode == "downsample3d":
            past = None if cache is None else cache.get(self)
            if cache is not None:
                cache[self] = x[:, :, -1:].clone()  # (B, C, 1, H, W)
            if past is not None:
                x = self.time_conv(torch.cat([past.to(x.dtype), x], 2))  # (B, C, T/2, H, W)
            elif x.shape[2] > 1:
                x = torch.cat([x[:, :, :1], self.time_conv(x)], 2)  # (B, C, 1 + (T-1)/2, H, W)
        return x


class ResidualBlock(nn.Module):
    """norm → SiLU → causal conv, twice, plus a (1×1×1 conv) shortcut."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = (
            CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()
        )

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        h = self.conv_shortcut(x)  # (B, C', T, H, W)
        x = self.conv1(x, cache, pre=self.norm1.silu_into)  # (B, C', T, H, W)
        act2 = lambda x, out: self.norm2.silu_into(x, out, self.dropout)  # noqa: E731
        return self.conv2(x, cache, pre=act2) + h  # (B, C', T, H, W)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions of each frame separately."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def _attend(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(n, 1, 3 * c, h * w)  # (N, 1, 3C, HW)
        q, k, v = qkv.transpose(2, 3).chunk(3, dim=-1)  # each (N, 1, HW, C)
        y = F.scaled_dot_product_attention(q, k, v)  # (N, 1, HW, C)
        y = y.squeeze(1).transpose(1, 2).reshape(n, c, h, w)  # (N, C, H, W)
        return self.proj(y)

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        return x + per_frame(self._attend, x)  # (B, C, T, H, W)


class MidBlock(nn.Module):
    """resnet → attention → resnet at the lowest resolution."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.attentions = nn.ModuleList([AttentionBlock(dim)])
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim, dropout) for _ in range(2)])

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        x = self.resnets[0](x, cache)
        for i, attn in enumerate(self.attentions):  # (slicing a ModuleList builds a new one)
            x = self.resnets[i + 1](attn(x), cache)
        return x


class UpBlock(nn.Module):
    """num_res_blocks + 1 residual blocks, then an optional upsampler (halves the channels)."""

    def __init__(self, in_dim, out_dim, num_res_blocks, dropout=0.0, upsample_mode=None):
        super().__init__()
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nn.ModuleList(
            [ResidualBlock(a, b, dropout) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        self.upsamplers = None
        if upsample_mode is not None:
            self.upsamplers = nn.ModuleList([Resample(out_dim, upsample_mode)])

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, cache)
        return x


class Encoder3d(nn.Module):
    """Pixels (B, C_in, 1 + 4k, H, W) -> moments (B, z_dim, 1 + k, H/8, W/8) (Wan 2.1 sizes).
    `is_residual`: Wan 2.2 levels (`blocks22.ResidualDownBlock`; `attn_scales` unused)."""

    def __init__(
        self, in_channels, dim, z_dim, dim_mult, num_res_blocks, attn_scales, temperal_downsample,
        dropout=0.0, is_residual=False,
    ):  # fmt: skip
        super().__init__()
        dims = [dim * u for u in (1, *dim_mult)]
        self.conv_in = CausalConv3d(in_channels, dims[0], 3, padding=1)
        if is_residual:
            from mdiff.video.vae.blocks22 import residual_down_blocks  # (it imports this module)

            self.down_blocks = residual_down_blocks(dims, num_res_blocks, temperal_downsample,
                                                    dropout)  # fmt: skip
        else:
            self.down_blocks = self._plain_blocks(dims, num_res_blocks, attn_scales,
                                                  temperal_downsample, dropout)  # fmt: skip
        self.mid_block = MidBlock(dims[-1], dropout)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], z_dim, 3, padding=1)

    @staticmethod
    def _plain_blocks(dims, num_res_blocks, attn_scales, temperal_downsample, dropout):
        blocks, scale, levels = [], 1.0, len(dims) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != levels - 1:
                mode = "downsample3d" if temperal_downsample[i] else "downsample2d"
                blocks.append(Resample(out_dim, mode))
                scale /= 2.0
        return nn.ModuleList(blocks)

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        x = self.conv_in(x, cache)  # (B, dim, T, H, W)
        for block in self.down_blocks:
            x = block(x, cache)  # (B, dim·mult, T', H', W')
        x = self.mid_block(x, cache)
        return self.conv_out(x, cache, pre=self.norm_out.silu_into)  # (B, z_dim, T', H', W')


class Decoder3d(nn.Module):
    """Latents (B, z_dim, 1 + k, h, w) -> pixels (B, C_out, 1 + 4k, 8h, 8w) (Wan 2.1 sizes).
    `is_residual`: Wan 2.2 levels (`blocks22.ResidualUpBlock`)."""

    def __init__(
        self, dim, z_dim, dim_mult, num_res_blocks, temperal_upsample, dropout=0.0, out_channels=3,
        is_residual=False,
    ):  # fmt: skip
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1], *dim_mult[::-1])]
        self.conv_in = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0], dropout)
        if is_residual:
            from mdiff.video.vae.blocks22 import residual_up_blocks  # (it imports this module)

            self.up_blocks = residual_up_blocks(dims, num_res_blocks, temperal_upsample, dropout)
        else:
            self.up_blocks = self._plain_blocks(dims, num_res_blocks, temperal_upsample, dropout)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], out_channels, 3, padding=1)

    @staticmethod
    def _plain_blocks(dims, num_res_blocks, temperal_upsample, dropout):
        blocks, levels = [], len(dims) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            in_dim = in_dim // 2 if i > 0 else in_dim  # the previous upsampler halved the channels
            mode = None
            if i != levels - 1:
                mode = "upsample3d" if temperal_upsample[i] else "upsample2d"
            blocks.append(UpBlock(in_dim, out_dim, num_res_blocks, dropout, mode))
        return nn.ModuleList(blocks)

    def forward(self, z: Tensor, cache: Cache | None = None) -> Tensor:
        x = self.conv_in(z, cache)  # (B, dim·mult[-1], T, h, w)
        x = self.mid_block(x, cache)
        for block in self.up_blocks:
            x = block(x, cache)  # (B, dim·mult, T', h', w')
        return self.conv_out(x, cache, pre=self.norm_out.silu_into)  # (B, C_out, T', H, W)
