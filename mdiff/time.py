"""Time in mdiff: samplers for training, the resolution shift, sampling grids, conversions.

Convention (decided once, see DESIGN.md): ``t ∈ [0, 1]``, ``t = 0`` is the source (Gaussian
noise or all-``[MASK]``), ``t = 1`` is data. The SD3 / Flux / diffusers / Wan convention calls
the noise level ``sigma = 1 − t`` (noise at 1), flips the sign of the velocity and multiplies
sigma by 1000 to get "timesteps". This module is the only place that converts between the two.

Shift. SD3 writes the resolution shift on sigma, ``σ' = aσ / (1 + (a − 1)σ)``. In t it reads
``t' = t / (t + a(1 − t))``: it divides the signal-to-noise ratio ``t / (1 − t)`` by exactly
``a``, so ``a > 1`` spends more of the trajectory at high noise, which larger images and longer
videos need. Flux's ``σ' = e^μ / (e^μ + 1/σ − 1)`` is the same map with ``a = e^μ``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

__all__ = [
    "TimeSampler",
    "cosmap",
    "diffusers_flow_grid",
    "edm_grid",
    "flux_alpha",
    "flux_shift",
    "from_diffusers_timesteps",
    "from_sigma",
    "logit_normal",
    "mode",
    "sd3_alpha",
    "shift",
    "shifted_grid",
    "to_diffusers_timesteps",
    "to_sigma",
    "uniform",
    "uniform_grid",
    "velocity_from_sigma",
    "velocity_to_sigma",
]


# ----------------------------------------------------------------------------------------------
# Training-time samplers: each returns t of shape (n,) in [0, 1], t = 1 is data.
# ----------------------------------------------------------------------------------------------


def _u(n: int, generator, device, stratified: bool) -> Tensor:
    """Uniform numbers in (0, 1); stratified puts exactly one in each of n equal bins."""
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if stratified:
        u = (torch.arange(n, device=device, dtype=torch.float64) + u) / n
    return u


def uniform(n: int, *, generator=None, device=None, stratified: bool = False) -> Tensor:
    """``t ~ U(0, 1)``."""
    return _u(n, generator, device, stratified).float()


def logit_normal(
    n: int, m: float = 0.0, s: float = 1.0, *, generator=None, device=None, stratified=False
) -> Tensor:
    """``t = sigmoid(z)``, ``z ~ N(m, s²)``; density ``φ((logit t − m)/s) / (s·t(1−t))``.

    SD3 writes the same law on the noise level sigma = 1 − t, so its ``m`` is our ``−m``; with the
    recommended ``m = 0, s = 1`` the two coincide. Stratified sampling goes through the inverse
    CDF of the normal, so it keeps the exact law.
    """
    if s <= 0:
        raise InvalidInputError(f"logit_normal needs s > 0, got {s}")
    u = _u(n, generator, device, stratified).clamp(1e-12, 1 - 1e-12)
    z = m + s * math.sqrt(2.0) * torch.erfinv(2 * u - 1)
    return torch.sigmoid(z).float()


def mode(
    n: int, s: float = 1.29, *, generator=None, device=None, stratified: bool = False
) -> Tensor:
    """SD3 "mode" sampling with heavy tails: ``σ = 1 − u − s(cos²(πu/2) − 1 + u)``, ``t = 1 − σ``.

    ``s`` must lie in ``[−1, 2/(π − 2)]`` for the map to stay monotone in [0, 1].
    """
    if not -1.0 <= s <= 2.0 / (math.pi - 2.0):
        raise InvalidInputError(f"mode sampling needs -1 <= s <= 2/(pi-2) ≈ 1.75, got {s}")
    u = _u(n, generator, device, stratified)
    sigma = 1 - u - s * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return (1 - sigma).clamp(0, 1).float()


def cosmap(n: int, *, generator=None, device=None, stratified: bool = False) -> Tensor:
    """CosMap: ``σ = 1 − 1/(tan(πu/2) + 1)``, ``t = 1 − σ``."""
    u = _u(n, generator, device, stratified)
    sigma = 1 - 1 / (torch.tan(math.pi * u / 2) + 1)
    return (1 - sigma).clamp(0, 1).float()


_SAMPLERS = {"uniform": uniform, "logit_normal": logit_normal, "mode": mode, "cosmap": cosmap}


@dataclass(frozen=True)
class TimeSampler:
    """A serialisable training-time distribution: ``TimeSampler("logit_normal", m=0, s=1)``.

    ``shift`` (the ``a`` of :func:`shift`, 1 = none) is applied after sampling, as SD3 does
    for high-resolution fine-tuning.
    """

    kind: str = "logit_normal"
    m: float = 0.0
    s: float = 1.0
    shift: float = 1.0
    stratified: bool = False

    def __post_init__(self):
        if self.kind not in _SAMPLERS:
            raise InvalidInputError(f"unknown time sampler {self.kind!r}; one of {list(_SAMPLERS)}")

    def __call__(self, n: int, *, generator=None, device=None) -> Tensor:
        kw = dict(generator=generator, device=device, stratified=self.stratified)
        if self.kind == "logit_normal":
            t = logit_normal(n, self.m, self.s, **kw)
        elif self.kind == "mode":
            t = mode(n, self.s, **kw)
        else:
            t = _SAMPLERS[self.kind](n, **kw)
        return shift(t, self.shift)


# ----------------------------------------------------------------------------------------------
# Shift and the token-count rule.
# ----------------------------------------------------------------------------------------------


def shift(t: Tensor, alpha: float) -> Tensor:
    """Resolution shift in t: ``t' = t / (t + α(1 − t))`` (SD3's ``σ' = ασ/(1+(α−1)σ)``)."""
    if alpha <= 0:
        raise InvalidInputError(f"shift needs alpha > 0, got {alpha}")
    return t / (t + alpha * (1 - t))


def flux_shift(sigma: Tensor, mu: float) -> Tensor:
    """Flux's form on the noise level: ``σ' = e^μ / (e^μ + 1/σ − 1)`` (equals SD3's, α = e^μ)."""
    return math.exp(mu) / (math.exp(mu) + 1 / sigma - 1)


def sd3_alpha(n_tokens: int, base_tokens: int = 256) -> float:
    """SD3's rule ``α = √(m/n)``: m tokens at the target size, n at the base size."""
    if n_tokens <= 0 or base_tokens <= 0:
        raise InvalidInputError("token counts must be positive")
    return math.sqrt(n_tokens / base_tokens)


def flux_alpha(
    n_tokens: int,
    base_tokens: int = 256,
    max_tokens: int = 4096,
    base_mu: float = 0.5,
    max_mu: float = 1.15,
) -> float:
    """Flux's rule: μ linear in the token count through (256, 0.5) and (4096, 1.15); α = e^μ."""
    if n_tokens <= 0:
        raise InvalidInputError("token count must be positive")
    slope = (max_mu - base_mu) / (max_tokens - base_tokens)
    return math.exp(base_mu + slope * (n_tokens - base_tokens))


# ----------------------------------------------------------------------------------------------
# Sampling grids: increasing tensors from the source (t = 0) to data (t = 1); steps = len - 1.
# ----------------------------------------------------------------------------------------------


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps must be a positive integer, got {steps!r}")


def uniform_grid(steps: int, *, dtype=torch.float32, device=None) -> Tensor:
    """``steps + 1`` equally spaced times from 0 to 1."""
    _check_steps(steps)
    return torch.linspace(0, 1, steps + 1, dtype=dtype, device=device)


def shifted_grid(steps: int, alpha: float, *, dtype=torch.float32, device=None) -> Tensor:
    """A uniform grid passed through :func:`shift` (α > 1 takes smaller steps near noise)."""
    return shift(uniform_grid(steps, dtype=torch.float64, device=device), alpha).to(dtype)


def edm_grid(
    steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    *,
    dtype=torch.float32,
    device=None,
) -> Tensor:
    """Karras/EDM spacing mapped to flow time, ``t = 1/(1 + σ_VE)``, ending at ``t = 1``.

    ``σ_i = (σ_max^{1/ρ} + i/(steps−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`` for ``i < steps``. The
    grid starts at ``1/(1 + σ_max)`` (≈ 0.012 for σ_max = 80), not at 0, as EDM does.
    """
    _check_steps(steps)
    if not 0 < sigma_min < sigma_max:
        raise InvalidInputError("edm_grid needs 0 < sigma_min < sigma_max")
    i = torch.arange(steps, dtype=torch.float64, device=device) / max(steps - 1, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigma_ve = (hi + i * (lo - hi)) ** rho
    t = torch.cat([1 / (1 + sigma_ve), torch.ones(1, dtype=torch.float64, device=device)])
    return t.to(dtype)


def diffusers_flow_grid(
    steps: int, alpha: float = 1.0, scheduler: str = "unipc", *, dtype=torch.float64, device=None
) -> Tensor:
    """The grid of diffusers' multistep flow schedulers (``use_flow_sigmas=True``,
    ``flow_shift=α``, 1000 training steps, ``final_sigmas_type="zero"``), read in t:

        "unipc"     t_i = shift(0.999·i/N, α), i < N, with t_0 = 10⁻⁶ (their σ_0 = 1 − 10⁻⁶)
        "dpmpp_2m"  t_i = shift(0.001 + 0.999·i/N, α), i < N      (DPMSolverMultistepScheduler)

    and ``t_N = 1``. They keep σ in float32; this grid is exact (within 6·10⁻⁸ of theirs).
    """
    _check_steps(steps)
    if scheduler not in ("unipc", "dpmpp_2m"):
        raise InvalidInputError(f"unknown scheduler {scheduler!r}; one of ['dpmpp_2m', 'unipc']")
    u = torch.arange(steps, dtype=torch.float64, device=device) * (0.999 / steps)
    t = shift(u if scheduler == "unipc" else 0.001 + u, alpha)
    if scheduler == "unipc":
        t[0] = 1e-6
    return torch.cat([t, torch.ones(1, dtype=torch.float64, device=device)]).to(dtype)


# ----------------------------------------------------------------------------------------------
# The one conversion to and from the sigma ("noise at 1") convention.
# ----------------------------------------------------------------------------------------------


def to_sigma(t: Tensor) -> Tensor:
    """Our time → noise level ``σ = 1 − t``."""
    return 1 - t


def from_sigma(sigma: Tensor) -> Tensor:
    """Noise level → our time ``t = 1 − σ``."""
    return 1 - sigma


def velocity_to_sigma(v: Tensor) -> Tensor:
    """Our velocity ``dx/dt`` → the sigma convention's ``dx/dσ = −dx/dt`` (e.g. ``ε − x``)."""
    return -v


def velocity_from_sigma(v_sigma: Tensor) -> Tensor:
    """A sigma-convention model output ``dx/dσ`` → our velocity ``dx/dt``."""
    return -v_sigma


def to_diffusers_timesteps(t: Tensor) -> Tensor:
    """Our time → diffusers' float "timesteps" ``1000·σ`` (only for calling foreign models)."""
    return 1000 * to_sigma(t)


def from_diffusers_timesteps(timesteps: Tensor) -> Tensor:
    """diffusers' ``1000·σ`` timesteps → our time."""
    return from_sigma(timesteps / 1000)
