"""The transformer block shared by the video DiT and the text denoiser.

Pre-norm residual block, with AdaLN-Zero modulation when the config has a `cond_dim`:

    (s1, c1, g1, s2, c2, g2) = AdaLN(cond)                 each (B, D) or per token (B, N, D)
    x = x + g1 · SelfAttn(LN(x)·(1 + c1) + s1; rope, mask, cache)
    x = x + CrossAttn(LN'(x), context; context_mask)       optional; LN' has affine weights
    x = x + g2 · MLP(LN(x)·(1 + c2) + s2)

Without `cond_dim` the norms are affine LayerNorms and the gates are 1. The modulation and the
cross-attention output projection start at zero, so a fresh AdaLN block is the identity (DiT's
adaLN-Zero; zero cross-attention output as in PixArt-α). QK-norm is an RMSNorm over the head
dimension of q and k, applied before RoPE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from mdiff.errors import InvalidInputError
from mdiff.nn.attention import AttnMask, Dense, attend, resolve_backend
from mdiff.nn.cache import LayerCache
from mdiff.nn.embed import AdaLNZero, modulate, per_token
from mdiff.nn.rope import apply_rope


@dataclass
class BlockConfig:
    dim: int
    heads: int
    kv_heads: int | None = None  # None = heads; fewer = grouped-query attention
    mlp_ratio: float = 4.0
    mlp: str = "gelu"  # "gelu" (tanh approx.) or "swiglu"
    mlp_hidden: int | None = None  # default: dim·ratio (gelu), 2/3·dim·ratio rounded to 8 (swiglu)
    qk_norm: bool = True
    cross_attention: bool = False
    context_dim: int | None = None  # None = dim
    cond_dim: int | None = None  # None = no AdaLN (affine LayerNorm); else AdaLN-Zero
    bias: bool = True
    eps: float = 1e-6

    def __post_init__(self):
        kv_heads = self.kv_heads or self.heads
        if self.dim % self.heads or self.heads % kv_heads:
            raise InvalidInputError(
                f"need dim % heads == 0 and heads % kv_heads == 0, got "
                f"dim={self.dim}, heads={self.heads}, kv_heads={kv_heads}"
            )
        if self.mlp not in ("gelu", "swiglu"):
            raise InvalidInputError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "gelu":
            return int(self.dim * self.mlp_ratio)
        return -(-int(2 * self.dim * self.mlp_ratio / 3) // 8) * 8


class Attention(nn.Module):
    """Multi-head attention from x (B, N, D) to a source (B, Ls, Ds): self (source = x) or cross."""

    def __init__(self, cfg: BlockConfig, source_dim: int):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.kv_heads = cfg.kv_heads or cfg.heads
        self.q = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)
        self.kv = nn.Linear(source_dim, 2 * self.kv_heads * self.head_dim, bias=cfg.bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=cfg.eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=cfg.eps) if cfg.qk_norm else nn.Identity()
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)

    def source_kv(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """Keys (QK-normed, before RoPE) and values of a source (B, Ls, Ds): 2 × (B, Hk, Ls, hd).
        A fixed source (a prompt) can be projected once and passed to `forward` as `source_kv`."""
        b, ls = source.shape[:2]
        kv = self.kv(source).view(b, ls, 2, self.kv_heads, self.head_dim)  # (B, Ls, 2, Hk, hd)
        k, v = kv.unbind(2)  # 2 × (B, Ls, Hk, hd)
        return self.k_norm(k).transpose(1, 2), v.transpose(1, 2)  # (B, Hk, Ls, hd)

    def forward(
        self,
        x: Tensor,
        source: Tensor | None,
        *,
        rope=None,
        mask: AttnMask = None,
        cache: LayerCache | None = None,
        backend: str = "sdpa",
        source_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x (B, N, D) attends to `source`, or to its precomputed `source_kv` (then `source`
        may be None). Returns (B, N, D)."""
        b, n, _ = x.shape
        # QK-norm before the head transpose: the same per-vector op on a cheaper layout
        q = self.q_norm(self.q(x).view(b, n, self.heads, self.head_dim)).transpose(1, 2)
        k, v = self.source_kv(source) if source_kv is None else source_kv  # (B, Hk, Ls, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # rotated, same shapes
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, Hk, Lcache + Ls, hd); new k/v staged
        o = attend(q, k, v, mask, backend)  # (B, H, N, hd)
        return self.proj(o.transpose(1, 2).reshape(b, n, -1))  # (B, N, D)


class MLP(nn.Module):
    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.fc1 = nn.Linear(cfg.dim, cfg.hidden * (2 if self.swiglu else 1), bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.hidden, cfg.dim, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)  # (B, N, hidden) or (B, N, 2·hidden)
        if self.swiglu:
            a, g = h.chunk(2, dim=-1)  # 2 × (B, N, hidden)
            h = F.silu(a) * g  # (B, N, hidden)
        else:
            h = F.gelu(h, approximate="tanh")  # (B, N, hidden)
        return self.fc2(h)  # (B, N, D)


class TransformerBlock(nn.Module):
    """Self-attention (+ optional cross-attention) + MLP, with optional AdaLN-Zero."""

    def __init__(self, cfg: BlockConfig, backend: str = "sdpa"):
        super().__init__()
        self.cfg, self.backend = cfg, resolve_backend(backend)
        adaln = cfg.cond_dim is not None
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=not adaln)
        self.attn = Attention(cfg, cfg.dim)
        self.cross = Attention(cfg, cfg.context_dim or cfg.dim) if cfg.cross_attention else None
        self.norm_cross = nn.LayerNorm(cfg.dim, eps=cfg.eps) if cfg.cross_attention else None
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=not adaln)
        self.mlp = MLP(cfg)
        self.adaln = AdaLNZero(cfg.cond_dim, cfg.dim, 6) if adaln else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform linears with zero bias; zero AdaLN and cross-attention output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.adaln is not None:
            self.adaln.reset_parameters()
        if self.cross is not None:
            nn.init.zeros_(self.cross.proj.weight)
            if self.cross.proj.bias is not None:
                nn.init.zeros_(self.cross.proj.bias)

    def forward(
        self,
        x: Tensor,
        cond: Tensor | None = None,
        *,
        rope=None,
        mask: AttnMask = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        cache: LayerCache | None = None,
        context_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x (B, N, D); cond (B, C) or (B, N, C); rope (cos, sin) for the N new positions;
        context (B, Lc, Dc) with context_mask (B, Lc), True = real token, or instead of context
        its keys and values from `self.cross.source_kv(context)`. Returns (B, N, D)."""
        self._check(x, cond, context if context_kv is None else context_kv[0])
        mods = None if self.adaln is None else self.adaln(cond)  # 6 × (B, D) or (B, N, D)
        h = _modulate(self.norm1(x), mods, 0)  # (B, N, D)
        h = self.attn(h, h, rope=rope, mask=mask, cache=cache, backend=self.backend)  # (B, N, D)
        x = x + _gate(h, mods, 2)  # (B, N, D)
        if self.cross is not None:
            full = context_mask is None or bool(context_mask.all())
            ctx_mask = None if full else Dense(context_mask[:, None, None, :])  # (B, 1, 1, Lc)
            h = self.norm_cross(x)  # (B, N, D)
            h = self.cross(h, context, mask=ctx_mask, backend=self.backend, source_kv=context_kv)
            x = x + h  # (B, N, D)
        h = _modulate(self.norm2(x), mods, 3)  # (B, N, D)
        return x + _gate(self.mlp(h), mods, 5)  # (B, N, D)

    def _check(self, x: Tensor, cond: Tensor | None, context: Tensor | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.cfg.dim:
            raise InvalidInputError(f"x must be (B, N, {self.cfg.dim}), got {tuple(x.shape)}")
        if (cond is None) != (self.adaln is None):
            raise InvalidInputError("cond is required iff the block has cond_dim (AdaLN)")
        if cond is not None and cond.dim() == 3 and cond.shape[:2] != x.shape[:2]:
            raise InvalidInputError(
                f"per-token cond {tuple(cond.shape)} does not match x {tuple(x.shape)}"
            )
        if (context is None) != (self.cross is None):
            raise InvalidInputError("context is required iff the block has cross_attention")


def _modulate(h: Tensor, mods: tuple[Tensor, ...] | None, i: int) -> Tensor:
    """h·(1 + mods[i+1]) + mods[i] with AdaLN, h unchanged without."""
    return h if mods is None else modulate(h, mods[i], mods[i + 1])


def _gate(h: Tensor, mods: tuple[Tensor, ...] | None, i: int) -> Tensor:
    """mods[i]·h with AdaLN (gate per sample or per token), h unchanged without."""
    return h if mods is None else per_token(mods[i]) * h


class FinalLayer(nn.Module):
    """Norm, AdaLN shift/scale (when cond_dim is set), then a zero-initialised Linear."""

    def __init__(self, dim: int, out_dim: int, cond_dim: int | None = None, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=cond_dim is None)
        self.adaln = AdaLNZero(cond_dim, dim, 2) if cond_dim is not None else None
        self.linear = nn.Linear(dim, out_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.norm(x)  # (B, N, D)
        if self.adaln is not None:
            if cond is None:
                raise InvalidInputError("FinalLayer with cond_dim needs cond")
            shift, scale = self.adaln(cond)  # 2 × (B, D) or (B, N, D)
            h = modulate(h, shift, scale)  # (B, N, D)
        return self.linear(h)  # (B, N, out_dim)
