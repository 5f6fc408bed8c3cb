"""Multistep solvers for velocity models: DPM-Solver++(2M) and UniPC, in mdiff's time.

Both have the signature of `mdiff.solvers.euler` and make one model call per grid step; they
reuse the data predictions of earlier steps instead of calling the model again. They are the
flow-model cases of diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True)`` and
``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)`` with its
defaults (``solver_type="bh2"``, ``predict_x0=True``, ``solver_order=2``, the corrector on),
rewritten in our convention from DPM-Solver++ (arXiv 2211.01095) and UniPC (arXiv 2302.04867).

Exponential integrator. On the CondOT path ``x_t = t·x1 + (1 − t)·x0`` write ``α_t = t``,
``σ_t = 1 − t`` and the log signal-to-noise ratio ``λ_t = log(α_t/σ_t) = log(t/(1 − t))``
(−∞ at the source, +∞ at the data). A velocity ``v`` gives the data prediction

    D(x, t) = x + (1 − t)·v(x, t)          (= E[x1 | x_t] for the exact field)

and the ODE ``dx/dt = v`` solves exactly as ``x_t' = (σ_t'/σ_t)·x_t + σ_t' ∫ e^λ D dλ``
(λ from ``λ_t`` to ``λ_t'``). With ``h = λ_t' − λ_t``, ``φ = 1 − e^{−h}`` and the identity
``σ'/σ + α'·φ = 1`` (so ``(σ'/σ)·x + α'·φ·D = x + α'·φ·(D − x)``, exact for a zero velocity):

    order 1    x' = x + α'·φ·(D_i − x)                           (D constant over the step)
    2M         x' = x + α'·φ·(D_i − x + ½·(h/h_{i−1})·(D_i − D_{i−1})),  h_{i−1} = λ_i − λ_{i−1}

The order-1 step *is* Euler for CondOT (``α'·φ·(1 − t) = t' − t``), so both solvers start with
an Euler step. UniPC's bh2 predictor with ``solver_order=2`` (ρ = ½) is the 2M step above; UniPC
adds the corrector UniC: when the model has given ``D_i`` at the predicted ``x_i``, the step
``t_{i−1} → t_i`` is redone from ``x_{i−1}`` with ``D_i`` included (no extra model call):

    x_i ← x_{i−1} + α_i·φ·(D_{i−1} − x_{i−1} + ρ_0·(D_{i−2} − D_{i−1})/r + ρ_1·(D_i − D_{i−1}))

with ``h = λ_i − λ_{i−1}``, ``r = (λ_{i−2} − λ_{i−1})/h``. After a first-order predictor step
(the first step) ``ρ_0 = 0, ρ_1 = ½`` (diffusers' fixed value); after a 2M step ``ρ`` solves
``[[1, 1], [r, 1]]·ρ = (b_1, b_2)`` with ``b_k = k!·φ_{k+1}(−h)/φ_1(−h)`` and ``φ_1(z) =
(e^z − 1)/z``, ``φ_{k+1}(z) = (φ_k(z) − 1/k!)/z``. ``D_i`` is always taken at the *predicted*
``x_i`` (where the model was called); the callback's ``Step.x`` is the predicted state, as
diffusers' ``prev_sample`` is, and it is corrected at the start of the next step.

Order schedule (diffusers' warm-up and ``lower_order_final``): the first step is first order
(no earlier ``D``), and the **last step is first order** in both schedulers, whatever ``t`` it
ends at (UniPC: ``min(order, len(timesteps) − step_index)``; DPM-Solver++: ``step_index ==
len(timesteps) − 1`` and ``final_sigmas_type="zero"``, the flow grids' σ = 0 end; only its
``"sigma_min"`` end with ≥ 15 steps would keep 2M there). When the grid ends at ``t = 1``
(σ = 0, λ = +∞) that last step returns the data prediction at the point the model saw,
``x_N = D_{N−1} = x̃_{N−1} + (1 − t_{N−1})·v`` with ``x̃`` the predicted state, so UniPC's last
correction does not reach the output (as in diffusers). Every step in between is second order,
so both converge at order 2 (DPM-Solver++ with an ``h²·log(1/h)`` term on t-uniform grids,
whose λ-steps near t = 0 and t = 1 do not shrink). A grid may start at ``t = 0`` (λ = −∞): the
first multistep differences then vanish in the limit (``h/h_{i−1} → 0``, ``ρ_0 → 0``), which is
where diffusers' own grids, starting at ``t = 10⁻⁶``, tend. Where the velocity is exactly zero
(known frames) the state stays bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from mdiff.errors import InvalidInputError

__all__ = ["dpmpp_2m", "unipc"]

ModelFn = Callable[..., Tensor]


def _log_snr(t: float) -> float:
    """``λ = log(t/(1 − t))``, with the limits −∞ at t = 0 and +∞ at t = 1."""
    if t <= 0.0:
        return -math.inf
    if t >= 1.0:
        return math.inf
    return math.log(t) - math.log1p(-t)


def _predict(x, d, d_prev, lam_prev, lam, lam_next, t_next) -> Tensor:
    """DPM-Solver++ step to ``t_next``: order 1 when ``d_prev`` is None, else 2M. (B, ...)"""
    h = lam_next - lam
    step = d - x  # (1 − t)·v
    if d_prev is not None:
        step = step + (0.5 * h / (lam - lam_prev)) * (d - d_prev)  # ½·D_1 = ½·(D_i − D_{i−1})/r_0
    return x + (t_next * -math.expm1(-h)) * step  # α'·φ, φ = 1 − e^{−h}


def _corrector_weights(h: float, r: float) -> tuple[float, float]:
    """UniC-2 (bh2) weights ``(ρ_0, ρ_1)`` solving ``[[1, 1], [r, 1]]·ρ = (b_1, b_2)``."""
    z = -h
    phi1 = math.expm1(z) / z  # φ_1(−h)
    phi2 = (phi1 - 1.0) / z
    phi3 = (phi2 - 0.5) / z
    b1, b2 = phi2 / phi1, 2.0 * phi3 / phi1
    rho0 = (b1 - b2) / (1.0 - r)  # → 0 when r → −∞ (a source at t = 0)
    return rho0, b1 - rho0


def _correct(x_prev, ds, d, lams, t, order) -> Tensor:
    """UniC: redo the step to ``t`` from ``x_prev`` with the new ``d`` at t. ``ds`` = (D_{i−2},
    D_{i−1}); ``lams`` = (λ_{i−2}, λ_{i−1}, λ_i); ``order`` that of the predictor step. (B, ...)"""
    lam_old, lam_prev, lam = lams
    d_old, d_prev = ds
    h = lam - lam_prev
    if order == 1:
        step = (d_prev - x_prev) + 0.5 * (d - d_prev)
    else:
        r = (lam_old - lam_prev) / h
        rho0, rho1 = _corrector_weights(h, r)
        step = (d_prev - x_prev) + (rho0 / r) * (d_old - d_prev) + rho1 * (d - d_prev)
    return x_prev + (t * -math.expm1(-h)) * step


def _multistep(model_fn, x_init, grid, callback, cond, corrector: bool) -> Tensor:
    # imported here: mdiff.solvers imports this module to register the solvers
    from mdiff.solvers import Step, _check_grid, _t

    _check_grid(grid)
    ts = grid.tolist()
    if ts[0] < 0.0 or ts[-1] > 1.0:
        raise InvalidInputError("multistep solvers need a grid inside [0, 1] (λ = log(t/(1−t)))")
    lam = [_log_snr(t) for t in ts]
    n = len(ts) - 1
    x, x_prev, ds = x_init, None, [None, None]  # ds: the last two data predictions (B, ...)
    for i in range(n):
        t = ts[i]
        v = model_fn(x, _t(x, t), **cond)  # (B, ...) velocity at the predicted state
        d = x + (1.0 - t) * v  # (B, ...) data prediction x̂1
        if corrector and i > 0:
            lams = (lam[i - 2] if i > 1 else None, lam[i - 1], lam[i])
            x = _correct(x_prev, ds, d, lams, t, order=1 if i == 1 else 2)
        d_prev = None if i in (0, n - 1) else ds[1]  # first order: warm-up, lower_order_final
        x_prev = x
        x = _predict(x, d, d_prev, lam[i - 1] if i else None, lam[i], lam[i + 1], ts[i + 1])
        ds = [ds[1], d]
        if callback is not None:
            callback(Step(i, t, ts[i + 1], x, v))
    return x


def dpmpp_2m(model_fn: ModelFn, x_init: Tensor, grid: Tensor, *, callback=None, **cond) -> Tensor:
    """DPM-Solver++(2M) on the grid: first and last steps first order (Euler), 2M in between."""
    return _multistep(model_fn, x_init, grid, callback, cond, corrector=False)


def unipc(model_fn: ModelFn, x_init: Tensor, grid: Tensor, *, callback=None, **cond) -> Tensor:
    """UniPC (bh2, data prediction, order 2) on the grid: the 2M predictor plus the UniC
    corrector at every grid point the model is called at (all but the last)."""
    return _multistep(model_fn, x_init, grid, callback, cond, corrector=True)
