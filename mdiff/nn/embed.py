"""Timestep embeddings and adaptive LayerNorm (AdaLN-Zero) modulation.

Time follows the library convention t ∈ [0, 1] (0 = noise, 1 = data), never integer steps. For
frequency resolution the sinusoid sees 1000·t:

    emb(t)[i]         = cos(1000·t · ω_i),   emb(t)[half + i] = sin(1000·t · ω_i),
    ω_i = max_period^(−i / half),  half = dim // 2   (a zero is appended when dim is odd)

t may be per sample (B,) or per token (B, N) (diffusion forcing); embeddings are (…, dim).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of float times t (…) -> (…, dim), float32."""
    if not torch.is_floating_point(t):
        raise InvalidInputError(f"t must be a float tensor in [0, 1], got dtype {t.dtype}")
    half = dim // 2
    omega = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = 1000.0 * t.float()[..., None] * omega  # (…, half)
    emb = torch.cat([args.cos(), args.sin()], dim=-1)  # (…, 2·half)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))  # (…, dim)
    return emb


class TimestepEmbedder(nn.Module):
    """t (B,) or (B, N) -> (B, dim) or (B, N, dim): sinusoid -> Linear -> SiLU -> Linear."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, t: Tensor) -> Tensor:
        freq = timestep_embedding(t, self.freq_dim)  # (…, F)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))  # (…, dim)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x·(1 + scale) + shift for x (B, N, D); shift/scale (B, D) broadcast over tokens, or
    (B, N, D) per token."""
    if shift.dim() == 2:
        shift, scale = shift[:, None], scale[:, None]  # (B, 1, D)
    return x * (1 + scale) + shift  # (B, N, D)


def per_token(g: Tensor) -> Tensor:
    """A (B, D) gate/shift made broadcastable against (B, N, D); (B, N, D) passes through."""
    return g[:, None] if g.dim() == 2 else g


class AdaLNZero(nn.Module):
    """c (B, C) or (B, N, C) -> n_chunks tensors of shape (B, dim) or (B, N, dim).

    SiLU -> Linear with weight and bias set to zero, so every shift, scale and gate starts at 0:
    modulation starts as the identity and a gated residual branch starts switched off.
    """

    def __init__(self, cond_dim: int, dim: int, n_chunks: int):
        super().__init__()
        self.n_chunks = n_chunks
        self.linear = nn.Linear(cond_dim, n_chunks * dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: Tensor) -> tuple[Tensor, ...]:
        if c.dim() not in (2, 3) or c.shape[-1] != self.linear.in_features:
            raise InvalidInputError(
                f"conditioning must be (B, {self.linear.in_features}) or "
                f"(B, N, {self.linear.in_features}), got {tuple(c.shape)}"
            )
        out = self.linear(nn.functional.silu(c))  # (…, n_chunks · dim)
        return out.chunk(self.n_chunks, dim=-1)  # n_chunks × (…, dim)
