"""Guidance: combinators that take a model function and return a guided one.

Every variant has the solver's calling convention, ``guided(x, t, **cond) -> Tensor``, so every
guidance composes with every solver and grid. The unconditional branch is described by
``uncond``, a dict of keyword arguments that replace the conditional ones (``{"context":
null_context}``). By default cond and uncond go through the model in one batched forward.

    CFG        g = u + w·(c − u)                                  (w = 1 is the conditional model)
    CFG-Zero*  s = ⟨c, u⟩/‖u‖²;  g = s·u + w·(c − s·u);  g = 0 while t < zero_init_t
    APG        in data space: Δ = x1_c − x1_u, split into parts parallel and orthogonal to x1_c,
               g = x1_c + (w − 1)·(Δ⊥ + η·Δ∥), optional ‖Δ‖ clipping and (negative) momentum

This is the one CFG convention of mdiff: ``w = 1`` is off, for every method. The combinations
are also plain functions of (c, u) (``combine_cfg``, ``combine_cfg_zero_star``, ``combine_apg``,
``combine(method, …)`` by name) for callers that run the two branches themselves, such as the
text sampler on logits. LLaDA writes CFG as ``u + (w_llada + 1)·(c − u)`` (off at 0); its scale
is converted once, at the frontend's boundary: ``w = from_llada_scale(w_llada) = w_llada + 1``.

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

__all__ = [
    "APG",
    "METHODS",
    "apg",
    "cfg",
    "cfg_zero_star",
    "combine",
    "combine_apg",
    "combine_cfg",
    "combine_cfg_zero_star",
    "from_llada_scale",
    "guide",
    "to_llada_scale",
]

METHODS = ("cfg", "cfg_zero_star", "apg")

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


def from_llada_scale(w_llada: float) -> float:
    """LLaDA's CFG scale (``u + (w_llada + 1)(c − u)``, off at 0) → ours (off at 1)."""
    return float(w_llada) + 1.0


def to_llada_scale(w: float) -> float:
    """Our CFG scale (``u + w(c − u)``, off at 1) → LLaDA's (off at 0)."""
    return float(w) - 1.0


def combine_cfg(c: Tensor, u: Tensor, scale: float) -> Tensor:
    """``u + w·(c − u)``."""
    return u + scale * (c - u)


def combine_cfg_zero_star(c: Tensor, u: Tensor, scale: float) -> Tensor:
    """``s·u + w·(c − s·u)`` with ``s = ⟨c, u⟩/‖u‖²`` per sample (dim 0); no zero-init."""
    s = _per_sample_dot(c, u) / _per_sample_dot(u, u).clamp_min(1e-12)  # (B,)
    su = _rows(s, u).to(u.dtype) * u
    return su + scale * (c - su)


def combine_apg(c: Tensor, u: Tensor, scale: float, *, eta: float = 0.0,
                norm_threshold: float | None = None, momentum: float = 0.0,
                running: Tensor | None = None) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """APG on data-space predictions ``c``, ``u`` (per sample, dim 0): ``Δ = c − u`` (plus
    ``momentum·running`` when momentum ≠ 0), clipped to ‖Δ‖ ≤ ``norm_threshold``, then
    ``c + (w − 1)·(Δ⊥ + η·Δ∥)`` with Δ∥ the part of Δ along c. Returns the guided prediction and
    the new running Δ (None without momentum)."""
    delta = c - u
    if momentum != 0:
        running = delta if running is None else delta + momentum * running
        delta = running
    if norm_threshold is not None:
        norm = _hi(delta).flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * _rows((norm_threshold / norm).clamp(max=1), delta).to(delta.dtype)
    coef = _per_sample_dot(delta, c) / _per_sample_dot(c, c).clamp_min(1e-12)
    parallel = _rows(coef, c).to(c.dtype) * c
    return c + (scale - 1) * (delta - parallel + eta * parallel), running


def combine(method: str, c: Tensor, u: Tensor, scale: float) -> Tensor:
    """The guided output of ``method`` (one of ``METHODS``) from the two branches, each with its
    defaults; APG treats ``c`` and ``u`` as the data-space predictions themselves."""
    if method == "cfg":
        return combine_cfg(c, u, scale)
    if method == "cfg_zero_star":
        return combine_cfg_zero_star(c, u, scale)
    if method == "apg":
        return combine_apg(c, u, scale)[0]
    raise InvalidInputError(f"unknown guidance method {method!r}; one of {METHODS}")


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
        return combine_cfg(c, u, self.scale)


class _CFGZeroStar(_Guided):
    def __init__(self, *args, zero_init_t: float):
        super().__init__(*args)
        self.zero_init_t = zero_init_t

    def combine(self, c, u, x, t):
        g = combine_cfg_zero_star(c, u, self.scale)
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
        guided, self.running = combine_apg(
            c1, u1, self.scale, eta=self.eta, norm_threshold=self.norm_threshold,
            momentum=self.momentum, running=self.running,
        )  # fmt: skip
        out = self.path.convert(guided, "x1", self.prediction, x, rt)
        return torch.where(_rows(at_data, c), c, out)


def apg(model_fn: ModelFn, scale: float, uncond: dict, **kwargs) -> APG:
    """Adaptive projected guidance (see :class:`APG` for the options)."""
    return APG(model_fn, scale, uncond, **kwargs)


def guide(method: str, model_fn: ModelFn, scale: float, uncond: dict, **kwargs) -> ModelFn:
    """The guided model function of ``method`` by name: ``cfg``, ``cfg_zero_star`` or ``apg``
    (``kwargs`` go to that variant; APG holds momentum, so build one per sampling call)."""
    makers = {"cfg": cfg, "cfg_zero_star": cfg_zero_star, "apg": apg}
    if method not in makers:
        raise InvalidInputError(f"unknown guidance method {method!r}; one of {METHODS}")
    return makers[method](model_fn, scale, uncond, **kwargs)
