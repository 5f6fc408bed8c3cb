"""Rotary position embeddings (RoPE), 1-D and axial n-D.

The head dimension D is cut into consecutive pairs (x[2j], x[2j+1]), j < D/2, and pair j is
rotated by the angle θ_j = p_a(j) · ω_j, where a(j) is the axis that owns pair j and p_a its
position:

    (x[2j], x[2j+1]) ↦ (x[2j] cos θ_j − x[2j+1] sin θ_j,  x[2j] sin θ_j + x[2j+1] cos θ_j)

Axial RoPE gives axis a a contiguous slice of `axes_dims[a]` channels, with frequencies
ω = theta^(−2i/d_a), i < d_a/2 (the interleaved-pair layout of Wan / complex-number RoPE).
Because each pair is a rotation, norms are preserved and ⟨R(p) q, R(p') k⟩ depends only on p − p'
(per axis): shifting every position by the same offset leaves attention scores unchanged.

Models loading rotate-half (GPT-NeoX / HF Llama) weights convert by permuting q/k projection
rows; this module has one layout.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError


def axial_dims(head_dim: int, n_axes: int = 3) -> tuple[int, ...]:
    """Default axial split: axes 1.. get 2·(head_dim // (2·n_axes)) channels each, axis 0
    (time) gets the rest. For n_axes=3 this is Wan's split, e.g. 128 -> (44, 42, 42)."""
    if head_dim % 2 or head_dim < 2 * n_axes:
        raise InvalidInputError(f"head_dim must be even and >= {2 * n_axes}, got {head_dim}")
    other = 2 * (head_dim // (2 * n_axes))
    return (head_dim - other * (n_axes - 1),) + (other,) * (n_axes - 1)


def arange_positions(length: int, offset: int = 0, device=None) -> Tensor:
    """Positions offset, …, offset + length − 1 as a float tensor of shape (length, 1)."""
    return torch.arange(offset, offset + length, device=device, dtype=torch.float32)[:, None]


def grid_positions(sizes, offsets=None, device=None) -> Tensor:
    """Positions of a grid (e.g. sizes=(T, H, W)) flattened row-major: (prod(sizes), n_axes).

    `offsets` shifts each axis, e.g. (t0, 0, 0) for the latent frames of a later video chunk.
    """
    offsets = (0,) * len(sizes) if offsets is None else tuple(offsets)
    if len(offsets) != len(sizes):
        raise InvalidInputError(f"offsets {offsets} and sizes {tuple(sizes)} differ in length")
    axes = [
        torch.arange(o, o + n, device=device, dtype=torch.float32)
        for n, o in zip(sizes, offsets, strict=True)
    ]
    grid = torch.meshgrid(*axes, indexing="ij")  # n_axes × (*sizes)
    return torch.stack(grid, dim=-1).reshape(math.prod(sizes), len(sizes))  # (L, n_axes)


class RotaryEmbedding(nn.Module):
    """Holds the per-channel frequencies; `freqs(positions)` turns positions into (cos, sin).

    head_dim: D (even). axes_dims: channels per axis (each even, summing to D); None = 1-D.
    """

    def __init__(self, head_dim: int, axes_dims=None, theta: float = 10000.0):
        super().__init__()
        axes_dims = (head_dim,) if axes_dims is None else tuple(int(d) for d in axes_dims)
        if any(d <= 0 or d % 2 for d in axes_dims) or sum(axes_dims) != head_dim:
            raise InvalidInputError(
                f"axes_dims {axes_dims} must be positive even numbers "
                f"summing to head_dim={head_dim}"
            )
        self.head_dim, self.axes_dims, self.theta = head_dim, axes_dims, float(theta)
        inv_freq = [theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d) for d in axes_dims]
        axis_of = [torch.full((d // 2,), a) for a, d in enumerate(axes_dims)]
        self.register_buffer("inv_freq", torch.cat(inv_freq).float(), persistent=False)  # (D/2,)
        self.register_buffer("axis_of", torch.cat(axis_of), persistent=False)  # (D/2,)

    @property
    def n_axes(self) -> int:
        return len(self.axes_dims)

    def freqs(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions (L, n_axes) or (B, L, n_axes) [or (L,) for 1-D] -> cos, sin (…, L, D/2)."""
        if positions.dim() == 1 and self.n_axes == 1:
            positions = positions[:, None]  # (L, 1)
        if positions.dim() not in (2, 3) or positions.shape[-1] != self.n_axes:
            raise InvalidInputError(
                f"positions must be (L, {self.n_axes}) or (B, L, "
                f"{self.n_axes}), got {tuple(positions.shape)}"
            )
        pos = positions.to(self.inv_freq.device, torch.float32)  # (…, L, n_axes)
        angles = pos[..., self.axis_of] * self.inv_freq  # (…, L, D/2)
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, axes_dims={self.axes_dims}, theta={self.theta}"


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, H, L, D) by cos/sin of shape (L, D/2) or (B, L, D/2); float32 inside."""
    if x.shape[-1] != 2 * cos.shape[-1] or x.shape[-2] != cos.shape[-2] or cos.shape != sin.shape:
        raise InvalidInputError(
            f"rope cos/sin {tuple(cos.shape)} do not fit x {tuple(x.shape)} "
            "(need (L, D/2) or (B, L, D/2))"
        )
    if cos.dim() == 3:  # per-sample positions: broadcast over heads
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, L, D/2)
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # 2 × (B, H, L, D/2)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, H, L, D/2, 2)
    return out.flatten(-2).to(x.dtype)  # (B, H, L, D)
