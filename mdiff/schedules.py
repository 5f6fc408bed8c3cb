"""Schedules: affine ``(α_t, σ_t)`` for continuous paths and convex ``κ_t`` for mask paths.

Affine schedule: ``x_t = α_t·x1 + σ_t·x0`` with ``α_0 = 0, σ_0 = 1`` (source) and
``α_1 = 1, σ_1 = 0`` (data). Each schedule returns the values and their time derivatives, and
inverts the signal-to-noise ratio ``ρ = α/σ`` (used to move a model between schedules).

Convex (mask) schedule: ``κ_t`` is the probability that a token is revealed at time t,
increasing from ``κ_0 = 0`` (all ``[MASK]``) to ``κ_1 = 1`` (data). Each returns ``κ``, ``dκ/dt``
and the inverse map ``t(κ)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

__all__ = [
    "AffineSchedule",
    "CondOT",
    "ConvexSchedule",
    "Cosine",
    "CosineSquaredKappa",
    "PolynomialKappa",
    "ScheduleOut",
]


@dataclass(frozen=True)
class ScheduleOut:
    """``α_t, σ_t`` and their derivatives ``dα/dt, dσ/dt``, each shaped like t."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


class AffineSchedule:
    """Base class: subclasses define ``__call__(t) -> ScheduleOut`` and ``snr_inverse``."""

    def __call__(self, t: Tensor) -> ScheduleOut:
        raise NotImplementedError

    def snr_inverse(self, snr: Tensor) -> Tensor:
        """The t at which ``α_t/σ_t = snr``."""
        raise NotImplementedError


class CondOT(AffineSchedule):
    """Conditional optimal transport (rectified flow): ``α = t, σ = 1 − t``; target ``x1 − x0``."""

    def __call__(self, t: Tensor) -> ScheduleOut:
        return ScheduleOut(t, 1 - t, torch.ones_like(t), -torch.ones_like(t))

    def snr_inverse(self, snr: Tensor) -> Tensor:
        return snr / (1 + snr)

    def __repr__(self) -> str:
        return "CondOT()"


class Cosine(AffineSchedule):
    """Variance preserving cosine: ``α = sin(πt/2), σ = cos(πt/2)``."""

    def __call__(self, t: Tensor) -> ScheduleOut:
        a = math.pi / 2
        return ScheduleOut(
            torch.sin(a * t), torch.cos(a * t), a * torch.cos(a * t), -a * torch.sin(a * t)
        )

    def snr_inverse(self, snr: Tensor) -> Tensor:
        return torch.atan(snr) * (2 / math.pi)

    def __repr__(self) -> str:
        return "Cosine()"


# ----------------------------------------------------------------------------------------------
# Convex schedules for mask (absorbing) paths.
# ----------------------------------------------------------------------------------------------


class ConvexSchedule:
    """Base class: ``kappa(t)``, ``d_kappa(t)`` and ``inverse(kappa)``."""

    def kappa(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_kappa(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def inverse(self, kappa: Tensor) -> Tensor:
        raise NotImplementedError


class PolynomialKappa(ConvexSchedule):
    """``κ = tⁿ`` (n = 1 is the linear schedule of MDLM and LLaDA)."""

    def __init__(self, n: float = 1.0):
        if n <= 0:
            raise InvalidInputError(f"PolynomialKappa needs n > 0, got {n}")
        self.n = float(n)

    def kappa(self, t: Tensor) -> Tensor:
        return t**self.n

    def d_kappa(self, t: Tensor) -> Tensor:
        return self.n * t ** (self.n - 1)

    def inverse(self, kappa: Tensor) -> Tensor:
        return kappa ** (1 / self.n)

    def __repr__(self) -> str:
        return f"PolynomialKappa(n={self.n:g})"


class CosineSquaredKappa(ConvexSchedule):
    """``κ = 1 − cos²(πt/2) = sin²(πt/2)``: slow at both ends, fast in the middle."""

    def kappa(self, t: Tensor) -> Tensor:
        return torch.sin(math.pi * t / 2) ** 2

    def d_kappa(self, t: Tensor) -> Tensor:
        return (math.pi / 2) * torch.sin(math.pi * t)

    def inverse(self, kappa: Tensor) -> Tensor:
        return torch.asin(kappa.clamp(0, 1).sqrt()) * (2 / math.pi)

    def __repr__(self) -> str:
        return "CosineSquaredKappa()"
