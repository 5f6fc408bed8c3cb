"""Attention with one entry point, `attend(q, k, v, mask, backend)`, and several kernels behind it.

    attend(q, k, v) = softmax(q kᵀ / √d + M) v,      M[i, j] = 0 if query i may see key j else -∞

Shapes: q (B, H, Lq, D); k, v (B, Hk, Lk, D) with Hk dividing H (grouped-query attention: each
key/value head serves H / Hk query heads). When Lq < Lk the queries are the *last* Lq positions of
the key sequence (a KV-cache prefix sits in front): query i has absolute position i + (Lk - Lq),
and `Causal` / `BlockCausal` compare absolute positions.

A query row with no allowed key (possible only with a `Dense` mask) returns zeros, on every
backend, instead of NaN; its gradient is zero.

Backends (pick one per model with `resolve_backend`; the env var MDIFF_ATTENTION overrides):
    sdpa      F.scaled_dot_product_attention (is_causal fast path when Lq == Lk)
    math      explicit (≥ float32) softmax(QKᵀ/√d + M)·V; supports forward-mode AD (torch.func.jvp)
    flex      flex_attention with a cached BlockMask; compiled on CUDA, eager forward-only on CPU
    xformers  xformers.ops.memory_efficient_attention; CUDA only, imported lazily
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mdiff.errors import BackendUnavailableError, InvalidInputError

logger = logging.getLogger(__name__)

BACKENDS = ("sdpa", "math", "flex", "xformers")
ENV_VAR = "MDIFF_ATTENTION"


class _PositionMask:
    """A mask defined by a rule on (absolute query position, key position)."""

    def allows(self, q_pos: Tensor, kv_pos: Tensor) -> Tensor:
        raise NotImplementedError

    def dense(self, lq: int, lk: int, device: torch.device | str | None = None) -> Tensor:
        """Bool (Lq, Lk), True = may attend; queries aligned to the end of the keys."""
        q_pos = torch.arange(lq, device=device)[:, None] + (lk - lq)  # (Lq, 1)
        kv_pos = torch.arange(lk, device=device)[None, :]  # (1, Lk)
        return self.allows(q_pos, kv_pos)

    def mask_mod(self, batch: int, heads: int, lq: int, lk: int):
        """flex_attention `mask_mod(b, h, q_idx, kv_idx) -> bool` for these lengths."""
        offset = lk - lq
        return lambda b, h, q_idx, kv_idx: self.allows(q_idx + offset, kv_idx)


@dataclass(frozen=True)
class Causal(_PositionMask):
    """Query at absolute position p sees keys at positions ≤ p."""

    def allows(self, q_pos: Tensor, kv_pos: Tensor) -> Tensor:
        return kv_pos <= q_pos


@dataclass(frozen=True)
class BlockCausal(_PositionMask):
    """Positions are grouped in blocks of `block_size`; a query in block i sees blocks ≤ i."""

    block_size: int

    def __post_init__(self):
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise InvalidInputError(
                f"BlockCausal.block_size must be a positive int, got {self.block_size!r}"
            )

    def allows(self, q_pos: Tensor, kv_pos: Tensor) -> Tensor:
        return kv_pos // self.block_size <= q_pos // self.block_size


@dataclass(frozen=True, eq=False)
class Dense:
    """An explicit bool mask broadcastable to (B, H, Lq, Lk); True = may attend.

    Compared and hashed by identity (a tensor has no value equality), so it is never cached.
    """

    mask: Tensor

    def __post_init__(self):
        if not isinstance(self.mask, Tensor) or self.mask.dtype != torch.bool:
            raise InvalidInputError("Dense mask must be a bool tensor (True = may attend)")
        if not 2 <= self.mask.dim() <= 4:
            raise InvalidInputError(f"Dense mask must have 2 to 4 dims, got {self.mask.dim()}")

    def dense(self, lq: int, lk: int, device: torch.device | str | None = None) -> Tensor:
        """The mask itself (broadcastable to (B, H, Lq, Lk)) on `device`."""
        if self.mask.shape[-2] not in (1, lq) or self.mask.shape[-1] not in (1, lk):
            raise InvalidInputError(
                f"Dense mask of shape {tuple(self.mask.shape)} does not fit Lq={lq}, Lk={lk}"
            )
        return self.mask.to(device)

    def mask_mod(self, batch: int, heads: int, lq: int, lk: int):
        full = self.dense(lq, lk).expand(batch, heads, lq, lk)  # (B, H, Lq, Lk), a view
        return lambda b, h, q_idx, kv_idx: full[b, h, q_idx, kv_idx]


AttnMask = Causal | BlockCausal | Dense | None


def _check_available(name: str, device: torch.device | str | None) -> None:
    """Raise BackendUnavailableError unless backend `name` can run on `device` here."""
    if name == "flex" and importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        raise BackendUnavailableError("the flex attention backend needs torch >= 2.5")
    if name == "xformers":
        _import_xformers()
        if device is not None and torch.device(device).type != "cuda":
            raise BackendUnavailableError("the xformers attention backend needs a CUDA device")


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """The backends that can run on `device` here (the environment override plays no part)."""
    out = []
    for name in BACKENDS:
        try:
            _check_available(name, device)
        except BackendUnavailableError:
            continue
        out.append(name)
    return out


def resolve_backend(name: str = "auto", device: torch.device | str | None = None) -> str:
    """Choose the attention backend once per model. `MDIFF_ATTENTION` overrides `name`.

    "auto" resolves to "sdpa". Availability is checked eagerly (xformers installed, `device`
    CUDA when given) so a model fails at build time, not in the middle of a forward pass.
    """
    source = f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "argument"
    chosen = (os.environ.get(ENV_VAR) or name).strip().lower()
    if chosen == "auto":
        chosen = "sdpa"
    if chosen not in BACKENDS:
        raise InvalidInputError(
            f"unknown attention backend {chosen!r} (from {source}); "
            f"choose from {BACKENDS} or 'auto'"
        )
    _check_available(chosen, device)
    logger.debug("attention backend: %s", chosen)
    return chosen


def attend(q: Tensor, k: Tensor, v: Tensor, mask: AttnMask = None, backend: str = "sdpa") -> Tensor:
    """Scaled dot-product attention. q (B, H, Lq, D), k/v (B, Hk, Lk, D) -> (B, H, Lq, D)."""
    _check_inputs(q, k, v, mask, backend)
    if k.shape[1] != q.shape[1]:  # grouped-query attention: share each kv head
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, H, Lk, D)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)  # (B, H, Lk, D)
    row_ok = None
    if isinstance(mask, Dense):  # rows with no key attend everywhere, then get zeroed
        m = mask.dense(q.shape[2], k.shape[2], q.device)  # (.., Lq, Lk)
        row_ok = m.any(dim=-1, keepdim=True)  # (.., Lq, 1)
        mask = Dense(m | ~row_ok)
    out = _KERNELS[backend](q, k, v, mask)  # (B, H, Lq, D)
    if row_ok is not None:
        out = out.masked_fill(~row_ok, 0.0)
    return out


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, mask: AttnMask, backend: str) -> None:
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
    if not all(isinstance(t, Tensor) and t.dim() == 4 for t in (q, k, v)):
        raise InvalidInputError("q, k, v must be 4-D tensors (B, H, L, D)")
    if k.shape != v.shape:
        raise InvalidInputError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have one shape")
    (b, h, lq, d), (bk, hk, lk, dk) = q.shape, k.shape
    if b != bk or d != dk or hk == 0 or h % hk != 0:
        raise InvalidInputError(
            f"q {tuple(q.shape)} and k/v {tuple(k.shape)} do not match: need "
            "equal batch and head dim, and kv heads dividing query heads"
        )
    if len({q.dtype, k.dtype, v.dtype}) != 1 or len({q.device, k.device, v.device}) != 1:
        raise InvalidInputError("q, k, v must share dtype and device")
    if mask is not None and not isinstance(mask, Causal | BlockCausal | Dense):
        raise InvalidInputError(
            f"unknown attention mask {mask!r}; use None, Causal(), "
            "BlockCausal(n) or Dense(bool_tensor)"
        )
    if isinstance(mask, Causal | BlockCausal) and lq > lk:
        raise InvalidInputError(f"{type(mask).__name__} needs Lq <= Lk, got Lq={lq}, Lk={lk}")
    if isinstance(mask, Dense) and not _broadcasts(mask.mask.shape, (b, h, lq, lk)):
        raise InvalidInputError(
            f"Dense mask {tuple(mask.mask.shape)} is not broadcastable "
            f"to (B, H, Lq, Lk) = {(b, h, lq, lk)}"
        )


def _broadcasts(shape, target) -> bool:
    """Whether `shape` broadcasts to `target` (torch.broadcast_shapes costs ~80 µs a call)."""
    return len(shape) <= len(target) and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False)
    )


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: AttnMask) -> Tensor:
    lq, lk = q.shape[2], k.shape[2]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    if isinstance(mask, Causal) and lq == lk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense(lq, lk, q.device))


def _math(q: Tensor, k: Tensor, v: Tensor, mask: AttnMask) -> Tensor:
    dt = torch.promote_types(q.dtype, torch.float32)  # at least float32; float64 stays
    scores = q.to(dt) @ k.to(dt).transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, H, Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask.dense(q.shape[2], k.shape[2], q.device), float("-inf"))
    return (scores.softmax(dim=-1) @ v.to(dt)).to(q.dtype)  # (B, H, Lq, D)


@functools.lru_cache(maxsize=64)
def _cached_block_mask(mask: Causal | BlockCausal, lq: int, lk: int, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask.mask_mod(1, 1, lq, lk), None, None, lq, lk, device=device)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q: Tensor, k: Tensor, v: Tensor, mask: AttnMask) -> Tensor:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as err:
        raise BackendUnavailableError("flex attention needs torch >= 2.5") from err
    (b, h, lq, _), lk = q.shape, k.shape[2]
    if isinstance(mask, Dense):
        block_mask = create_block_mask(mask.mask_mod(b, h, lq, lk), b, h, lq, lk, device=q.device)
    elif mask is not None:
        block_mask = _cached_block_mask(mask, lq, lk, q.device)
    else:
        block_mask = None
    if q.device.type == "cuda":
        return _compiled_flex()(q, k, v, block_mask=block_mask)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise BackendUnavailableError(
            "flex attention has no backward pass on CPU; use backend 'sdpa' or 'math' for "
            "training on CPU, or run under torch.no_grad()"
        )
    with warnings.catch_warnings():  # eager (unfused) flex is the intended CPU path
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block_mask)


def _import_xformers():
    try:
        import xformers.ops as xops
    except ImportError as err:
        raise BackendUnavailableError(
            "the xformers attention backend needs `pip install xformers` (mdiff[gpu])"
        ) from err
    return xops


def _xformers(q: Tensor, k: Tensor, v: Tensor, mask: AttnMask) -> Tensor:
    xops = _import_xformers()
    if q.device.type != "cuda":
        raise BackendUnavailableError("the xformers attention backend runs on CUDA only")
    (b, h, lq, _), lk = q.shape, k.shape[2]
    if mask is None:
        bias = None
    elif isinstance(mask, Causal):  # bottom-right aligned = queries at the end of the keys
        bias = xops.fmha.attn_bias.LowerTriangularFromBottomRightMask()
    else:  # additive bias; xformers wants the last dim's storage padded to a multiple of 8
        allowed = mask.dense(lq, lk, q.device).expand(b, h, lq, lk)  # (B, H, Lq, Lk)
        storage = q.new_zeros(b, h, lq, (lk + 7) // 8 * 8)
        bias = storage[..., :lk].masked_fill_(~allowed, float("-inf"))
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # (B, L, H, D)
    out = xops.memory_efficient_attention(qt, kt, vt, attn_bias=bias)  # (B, Lq, H, D)
    return out.transpose(1, 2)  # (B, H, Lq, D)


_KERNELS = {"sdpa": _sdpa, "math": _math, "flex": _flex, "xformers": _xformers}
