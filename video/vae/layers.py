"""The layers under the causal VAE's blocks (`mdiff.video.vae.blocks`): the causal conv with
its streamed time padding, the channel RMS norm, per-frame 2D ops, and the CPU fast path.

On CPU in fp32 the whole network runs channels-last (`CL`): `conv3d` hands oneDNN channels-last
tensors (no layout reorders per call) and returns channels-last ones, new buffers follow their
input's layout (`empty_like_layout`), and `RMSNorm.silu_into` writes norm → SiLU straight into
the next causal conv's padded input buffer, so the time padding costs no `cat`. Real Wan 2.1
decode, 17 frames at 128², 2 threads: see benchmarks/RESULTS.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CL", "Cache", "CausalConv3d", "FrameConv2d", "RMSNorm", "Upsample2x", "channels_last",
           "conv3d", "empty_like_layout", "per_frame"]  # fmt: skip

Cache = dict  # module -> cached tail (Tensor) or marker, owned by one stream session


CL = torch.channels_last_3d  # (B, T, H, W, C) in memory: what oneDNN's conv kernels run on


def conv3d(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding) -> Tensor:
    """F.conv3d, but straight to oneDNN, channels-last, for fp32 CPU tensors with a k×k (k > 1)
    kernel; the output is channels-last then.

    For batch-1 inputs with C·T·H < 20480 (every conv of a 1-5 latent decode at 64×64) PyTorch
    picks its im2col kernel `slow_conv3d`, whose unfold buffer grows as 27·C·T·H·W: up to 25×
    slower than oneDNN at one thread. Channels-last in and out spares oneDNN its two layout
    reorders per call (a 3×3×3 conv at 96 channels, 128², 2 threads: 0.46 s vs 0.59 s), and the
    channel reductions of `RMSNorm` become contiguous. 1×1 kernels stay on PyTorch's own path
    (a plain GEMM, faster than oneDNN there).
    """
    if (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and weight.shape[-2:] != (1, 1)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    ):
        x, weight = x.contiguous(memory_format=CL), weight.contiguous(memory_format=CL)
        return torch.mkldnn_convolution(x, weight, bias, padding, stride, (1, 1, 1), 1)
    return F.conv3d(x, weight, bias, stride, padding)


def channels_last(x: Tensor) -> bool:
    """Whether (B, C, T, H, W) `x` is laid out channels-last (so keep new tensors that way)."""
    return x.dim() == 5 and x.is_contiguous(memory_format=CL) and not x.is_contiguous()


def empty_like_layout(x: Tensor, *shape: int) -> Tensor:
    """An uninitialised (B, C, T, H, W) tensor of `shape` in `x`'s dtype, device and layout."""
    fmt = CL if channels_last(x) else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only on the left in time (by 2·p_t frames); spatial padding symmetric."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size, stride=1, padding=0):
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=padding)
        self.time_pad = 2 * self.padding[0]
        self.padding = (0, *self.padding[1:])  # time padded in forward, space inside the conv

    def forward(self, x: Tensor, cache: Cache | None = None, pre=None) -> Tensor:
        """Conv of `pre(x)` (or x): `pre(x, out)` writes its result into `out`, which here is
        the padded input buffer's body, so the time padding costs no extra copy."""
        tp = self.time_pad
        if tp:
            past = None if cache is None else cache.get(self)  # (B, C, 2p, H, W) or None
            b, c, t, h, w = x.shape
            buf = empty_like_layout(x, b, c, tp + t, h, w)  # (B, C, 2p + T, H, W)
            if past is None:
                buf[:, :, :tp].zero_()  # the clip starts here
            else:
                buf[:, :, :tp].copy_(past)
            if pre is None:
                buf[:, :, tp:].copy_(x)
            else:
                pre(x, buf[:, :, tp:])
            x = buf
            if cache is not None:
                cache[self] = x[:, :, -tp:].clone()  # (B, C, 2p, H, W)
        elif pre is not None:
            x = pre(x, empty_like_layout(x, *x.shape))
        return conv3d(x, self.weight, self.bias, self.stride, self.padding)  # (B, C', T', H, W)


class RMSNorm(nn.Module):
    """x / ||x||_channels · √C · γ (computed in fp32 for half-precision inputs)."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: Tensor) -> Tensor:
        # F.normalize(x, dim=1) by hand: its vector norm over a strided dim is ~20x slower on CPU
        xf = x.float()
        norm = xf.square().sum(1, keepdim=True).sqrt().clamp_min(1e-12)  # (B, 1, ...)
        return (xf / norm).to(x.dtype) * (self.gamma * self.scale)  # (B, C, ...)

    def silu_into(self, x: Tensor, out: Tensor, dropout: nn.Module | None = None) -> Tensor:
        """out ← dropout(SiLU(norm(x))), in place for fp32 channels-last inference (one
        reduction and three passes over `out`, about 4× faster than composing the ops)."""
        fast = x.dtype == torch.float32 and channels_last(x) and not torch.is_grad_enabled()
        if not fast or (dropout is not None and dropout.training and dropout.p > 0):
            y = F.silu(self(x))
            return out.copy_(y if dropout is None else dropout(y))
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12)  # (B, 1, ...)
        torch.div(x, norm, out=out)
        return F.silu(out.mul_(self.gamma * self.scale), inplace=True)  # (B, C, ...)


class Upsample2x(nn.Module):
    """Nearest ×2 in H and W of (B, C, T, H, W), computed in fp32, returned in the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        y = F.interpolate(x.float(), scale_factor=(1.0, 2.0, 2.0), mode="nearest-exact")
        return y.type_as(x)  # (B, C, T, 2H, 2W)


class FrameConv2d(nn.Conv2d):
    """A Conv2d run on every frame of (B, C, T, H, W) as a (1, k, k) Conv3d: no layout copies."""

    def forward(self, x: Tensor) -> Tensor:
        stride, padding = (1, *self.stride), (0, *self.padding)
        return conv3d(x, self.weight.unsqueeze(2), self.bias, stride, padding)  # (B, C', T, H', W')


def per_frame(fn, x: Tensor) -> Tensor:
    """Apply a 2D module to every frame: (B, C, T, H, W) -> (B, C', T, H', W')."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B·T, C', H', W')
    return y.view(b, t, *y.shape[1:]).transpose(1, 2)  # (B, C', T, H', W')
