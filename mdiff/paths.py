"""Probability paths: ``AffinePath`` (continuous) and ``MaskPath`` (discrete, absorbing).

Continuous: ``x_t = α_t·x1 + σ_t·x0`` with conditional velocity ``u = α̇_t·x1 + σ̇_t·x0``. At a
fixed ``(x_t, t)`` the velocity, the data prediction ``x1`` and the source prediction ``x0``
(``ε`` for a Gaussian source) are affine in each other, so one table converts between them:

    x1 = (σ̇·x_t − σ·v) / (α·σ̇ − σ·α̇)        x0 = (α·v − α̇·x_t) / (α·σ̇ − σ·α̇)

Discrete: every token is independently revealed (``x_t^i = x1^i``) with probability ``κ_t``
and is ``[MASK]`` otherwise. The model predicts the data posterior ``p(x1^i | x_t)`` as logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.schedules import AffineSchedule, CondOT, ConvexSchedule, PolynomialKappa

__all__ = ["AffinePath", "MaskPath", "MaskSample", "PathSample", "Prediction", "expand_t"]

Prediction = Literal["velocity", "x1", "x0"]
_PREDICTIONS = ("velocity", "x1", "x0")


def expand_t(t: Tensor, x: Tensor) -> Tensor:
    """Reshape t of shape (B,) or (B, N...) so it broadcasts against x of shape (B, ...)."""
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape[0] != x.shape[0]:
        raise InvalidInputError(f"t has batch size {t.shape[0]} but x has {x.shape[0]}")
    return t.reshape(*t.shape, *([1] * (x.dim() - t.dim())))


@dataclass(frozen=True)
class PathSample:
    """One draw from an affine path: the noisy input, its time and the regression target."""

    x_t: Tensor
    t: Tensor
    x0: Tensor
    x1: Tensor
    target: Tensor


class AffinePath:
    """The continuous path of a schedule (CondOT by default)."""

    def __init__(self, schedule: AffineSchedule | None = None, prediction: Prediction = "velocity"):
        if prediction not in _PREDICTIONS:
            raise InvalidInputError(f"prediction must be one of {_PREDICTIONS}, got {prediction!r}")
        self.schedule = schedule or CondOT()
        self.prediction = prediction

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """``x_t`` for source ``x0``, data ``x1`` at time t (B,), and the target to learn."""
        if x0.shape != x1.shape:
            raise InvalidInputError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} differ")
        s = self.schedule(expand_t(t, x1).to(x1.dtype))
        x_t = s.alpha * x1 + s.sigma * x0
        target = {"velocity": s.d_alpha * x1 + s.d_sigma * x0, "x1": x1, "x0": x0}
        return PathSample(x_t, t, x0, x1, target[self.prediction])

    def convert(self, pred: Tensor, src: Prediction, dst: Prediction, x_t: Tensor, t: Tensor):
        """Re-express a prediction of kind ``src`` as kind ``dst`` at ``(x_t, t)``.

        Singular where the source kind carries no information: an ``x1`` prediction at t = 0
        says nothing about ``x0`` (σ = 1, α = 0 is fine, but x0 from x1 needs σ > 0), and so on.
        """
        for kind in (src, dst):
            if kind not in _PREDICTIONS:
                raise InvalidInputError(f"prediction kind must be one of {_PREDICTIONS}: {kind!r}")
        if src == dst:
            return pred
        s = self.schedule(expand_t(t, x_t).to(x_t.dtype))
        if src == "x1":
            x1, x0 = pred, (x_t - s.alpha * pred) / s.sigma
        elif src == "x0":
            x1, x0 = (x_t - s.sigma * pred) / s.alpha, pred
        else:
            det = s.alpha * s.d_sigma - s.sigma * s.d_alpha
            x1 = (s.d_sigma * x_t - s.sigma * pred) / det
            x0 = (s.alpha * pred - s.d_alpha * x_t) / det
        if dst == "x1":
            return x1
        if dst == "x0":
            return x0
        return s.d_alpha * x1 + s.d_sigma * x0

    def velocity(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The velocity implied by a model output of this path's prediction kind."""
        return self.convert(pred, self.prediction, "velocity", x_t, t)


@dataclass(frozen=True)
class MaskSample:
    """One draw from a mask path: tokens with ``[MASK]`` where ``masked`` is True."""

    x_t: Tensor
    t: Tensor
    x1: Tensor
    masked: Tensor


class MaskPath:
    """The absorbing path: source all ``[MASK]``, each token revealed with probability ``κ_t``.

    ``eps`` keeps the ELBO weight ``κ̇/(1 − κ)`` finite near t = 1 (where nothing is masked
    anyway); a training t of exactly 1 gives weight ``κ̇(1)/eps``.
    """

    def __init__(self, mask_id: int, schedule: ConvexSchedule | None = None, eps: float = 1e-3):
        if mask_id < 0:
            raise InvalidInputError(f"mask_id must be a non-negative token id, got {mask_id}")
        self.mask_id = int(mask_id)
        self.schedule = schedule or PolynomialKappa(1.0)
        self.eps = eps

    def sample(self, x1: Tensor, t: Tensor, *, generator=None, maskable: Tensor | None = None):
        """Mask each token of ``x1`` (B, L) with probability ``1 − κ_t``.

        ``t`` is (B,) or per token (B, L). ``maskable`` (bool, B×L) limits masking to some
        positions (a prompt or padding stays as is).
        """
        if x1.dim() != 2:
            raise InvalidInputError(f"x1 must be token ids of shape (B, L), got {tuple(x1.shape)}")
        kappa = self.schedule.kappa(expand_t(t, x1).to(torch.float64)).expand(x1.shape)
        u = torch.rand(x1.shape, generator=generator, device=x1.device, dtype=torch.float64)
        masked = u >= kappa
        if maskable is not None:
            masked &= maskable
        x_t = torch.where(masked, torch.full_like(x1, self.mask_id), x1)
        return MaskSample(x_t, t, x1, masked)

    def weight(self, t: Tensor) -> Tensor:
        """The ELBO weight of a masked token at time t: ``κ̇_t / (1 − κ_t)`` (1/(1−t) if linear)."""
        t = t.to(torch.float64)
        return self.schedule.d_kappa(t) / (1 - self.schedule.kappa(t)).clamp_min(self.eps)

    def posterior(self, logits: Tensor, x_t: Tensor) -> Tensor:
        """Log-probabilities of the data posterior with the absorbing structure imposed.

        ``[MASK]`` is never predicted, and revealed tokens are copied (their posterior is a point
        mass). Under this parameterisation the generalized KL equals the weighted cross-entropy.
        """
        logp = logits.float().clone()
        logp[..., self.mask_id] = -torch.inf
        logp = logp.log_softmax(-1)
        revealed = x_t != self.mask_id
        point = torch.full_like(logp, -torch.inf).scatter_(-1, x_t.unsqueeze(-1), 0.0)
        return torch.where(revealed.unsqueeze(-1), point, logp)
