"""Guidance: combinators that take a model function and return a guided one.

Every variant has the solver's calling convention, ``guided(x, t, **cond) -> Tensor``, so every
guidance composes with every solver and grid. The unconditional branch is described by
``uncond``, a dict of keyword arguments that replace the conditional ones (``{"context":
null_context}``). By default cond and uncond go through the model in one batched forward.

    CFG        g = u + w·(c − u)                                  (w = 1 is the conditional model)
    CFG-Zero*  s = ⟨c, u⟩/‖u‖²;  g = s·u + w·(c − s·u);  g = 0 while t < zero_init_t
    APG        in data space: Δ = x1_c − x1_u, split into parts parallel and orthogonal to x1_c,
               g = x1_c + (w − 1)·(Δ⊥ + η·Δ∥), optional ‖Δ‖ clipping and (negative) momentum

The guidance interval ``(t_lo, t_hi)`` is in t (not in step fractions, which mean different
noise levels under different grids): outside it the output is the conditional model's, and
when no sample of the batch is inside, the unconditional forward is skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.paths import AffinePath, Prediction

__all__ = ["APG", "apg", "cfg", "cfg_zero_star"]

ModelFn = Callable[..., Tensor]


def _row_t(t: Tensor) -> Tensor:
    """One time per sample: t itself, or the mean over tokens for per-token times (B, N)."""
    return t if t.dim() == 1 else _hi(t).flatten(1).mean(1)


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


def _both(model_fn, x, t, cond, uncond, batched) -> tuple[Tensor, Tensor]:
    """The conditional and unconditional outputs, in one forward when ``batched``."""
    missing = set(uncond) - set(cond)
    if missing:
        raise InvalidInputError(f"uncond names {sorted(missing)} that the call does not pass")
    if not batched:
        return model_fn(x, t, **cond), model_fn(x, t, **{**cond, **uncond})
    B = x.shape[0]
    joint = {}
    for key, value in cond.items():
        if key in uncond:
            joint[key] = torch.cat([value, uncond[key]])
        elif torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == B:
            joint[key] = torch.cat([value, value])
        else:
            joint[key] = value
    out = model_fn(torch.cat([x, x]), torch.cat([t, t]), **joint)
    return out[:B], out[B:]


def _inside(t: Tensor, interval) -> Tensor:
    rt = _row_t(t)
    if interval is None:
        return torch.ones_like(rt, dtype=torch.bool)
    lo, hi = interval
    if not 0 <= lo <= hi <= 1:
        raise InvalidInputError(f"guidance interval must satisfy 0 <= lo <= hi <= 1: {interval}")
    return (rt >= lo) & (rt <= hi)


def _hi(x: Tensor) -> Tensor:
    """At least float32 for reductions (bf16 sums lose too much), float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _per_sample_dot(a: Tensor, b: Tensor) -> Tensor:
    return (_hi(a) * _hi(b)).flatten(1).sum(1)


class _Guided:
    """Shared plumbing: interval, batching, and the per-variant combination ``combine``."""

    def __init__(self, model_fn: ModelFn, scale: float, uncond: dict, interval, batched: bool):
        if not isinstance(uncond, dict):
            raise InvalidInputError("uncond must be a dict of model keyword arguments")
        self.model_fn, self.scale, self.uncond = model_fn, float(scale), uncond
        self.interval, self.batched = interval, batched
        _inside(torch.zeros(1), interval)  # validate now, not at the first step

    def combine(self, c: Tensor, u: Tensor, x: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        inside = _inside(t, self.interval)
        if not bool(inside.any()):
            return self.model_fn(x, t, **cond)
        c, u = _both(self.model_fn, x, t, cond, self.uncond, self.batched)
        g = self.combine(c, u, x, t)
        return torch.where(_rows(inside, g), g, c)


class _CFG(_Guided):
    def combine(self, c, u, x, t):
        return u + self.scale * (c - u)


class _CFGZeroStar(_Guided):
    def __init__(self, *args, zero_init_t: float):
        super().__init__(*args)
        self.zero_init_t = zero_init_t

    def combine(self, c, u, x, t):
        s = _per_sample_dot(c, u) / _per_sample_dot(u, u).clamp_min(1e-12)  # (B,)
        su = _rows(s, u).to(u.dtype) * u
        g = su + self.scale * (c - su)
        early = _rows(_row_t(t) < self.zero_init_t, g)
        return torch.where(early, torch.zeros_like(g), g)


def cfg(
    model_fn: ModelFn, scale: float, uncond: dict, *, interval=None, batched: bool = True
) -> ModelFn:
    """Classifier-free guidance ``u + w·(c − u)``."""
    return _CFG(model_fn, scale, uncond, interval, batched)


def cfg_zero_star(
    model_fn: ModelFn,
    scale: float,
    uncond: dict,
    *,
    zero_init_t: float = 0.0,
    interval=None,
    batched: bool = True,
) -> ModelFn:
    """CFG-Zero*: the unconditional branch rescaled by the per-sample optimal ``s*``.

    ``zero_init_t`` zeroes the velocity for ``t < zero_init_t`` (the paper's zero-init of the
    first ~4% of steps, stated in time so it does not depend on the grid).
    """
    return _CFGZeroStar(model_fn, scale, uncond, interval, batched, zero_init_t=zero_init_t)


class APG(_Guided):
    """Adaptive projected guidance. Holds momentum, so create one per sampling call."""

    def __init__(
        self,
        model_fn: ModelFn,
        scale: float,
        uncond: dict,
        *,
        path: AffinePath | None = None,
        prediction: Prediction = "velocity",
        eta: float = 0.0,
        norm_threshold: float | None = None,
        momentum: float = 0.0,
        interval=None,
        batched: bool = True,
    ):
        super().__init__(model_fn, scale, uncond, interval, batched)
        if norm_threshold is not None and norm_threshold <= 0:
            raise InvalidInputError("norm_threshold must be positive (or None for no clipping)")
        self.path = path or AffinePath()
        self.prediction, self.eta = prediction, eta
        self.norm_threshold, self.momentum = norm_threshold, momentum
        self.running: Tensor | None = None

    def combine(self, c, u, x, t):
        # Data space is singular where σ_t = 0 (t = 1 for CondOT): those rows keep c. Per-token
        # times (B, N) use one time per sample here.
        rt = _row_t(t).to(x.dtype)
        at_data = self.path.schedule(rt).sigma.abs() < 1e-6  # (B,)
        rt = torch.where(at_data, torch.full_like(rt, 0.5), rt)
        c1, u1 = (self.path.convert(p, self.prediction, "x1", x, rt) for p in (c, u))
        delta = c1 - u1
        if self.momentum != 0:
            self.running = delta if self.running is None else delta + self.momentum * self.running
            delta = self.running
        if self.norm_threshold is not None:
            norm = _hi(delta).flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * _rows((self.norm_threshold / norm).clamp(max=1), delta).to(delta.dtype)
        coef = _per_sample_dot(delta, c1) / _per_sample_dot(c1, c1).clamp_min(1e-12)
        parallel = _rows(coef, c1).to(c1.dtype) * c1
        guided = c1 + (self.scale - 1) * (delta - parallel + self.eta * parallel)
        out = self.path.convert(guided, "x1", self.prediction, x, rt)
        return torch.where(_rows(at_data, c), c, out)


def apg(model_fn: ModelFn, scale: float, uncond: dict, **kwargs) -> APG:
    """Adaptive projected guidance (see :class:`APG` for the options)."""
    return APG(model_fn, scale, uncond, **kwargs)
