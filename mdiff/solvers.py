"""Solvers: fixed-grid ODE integrators for velocity models, and the discrete unmasking loop.

Every continuous solver has one signature, ``solver(model_fn, x_init, grid, *, callback, **cond)``
with ``model_fn(x, t, **cond) -> velocity`` and ``grid`` an increasing tensor of times from the
source towards the data. The grid is data; no solver keeps a step counter. For ``h = t' − t``:

    euler     x ← x + h·v(x, t)                                          (1 evaluation, order 1)
    midpoint  x ← x + h·v(x + ½h·v(x, t), t + ½h)                        (2 evaluations, order 2)
    heun      x̃ = x + h·v(x, t);  x ← x + ½h·(v(x, t) + v(x̃, t'))       (2 evaluations, order 2)
    dpmpp_2m  DPM-Solver++(2M) in λ = log(t/(1−t)), reusing the last step  (1 evaluation, order 2)
    unipc     UniPC bh2: the 2M predictor + the UniC corrector (Wan's)   (1 evaluation, order 2)

The two multistep solvers (`mdiff.multistep`) match diffusers' flow schedulers step for step,
including their first-order first and last steps.

Discrete: ``unmask(model_fn, x_init, grid, mask_id, policy=…, remask=…)`` runs an absorbing-state
sampler: at each step the model gives logits, a proposal token is drawn for every position, and
`mdiff.unmasking.unmask_step` lets a policy decide which still-masked positions commit (and an
optional remask policy reopen decoded ones). The stochastic discrete Euler policy is the exact
ancestral step of the mask path; ``ranked(count, score)`` builds "how many / which" policies.
The step, the policies and the proposals live in `mdiff.unmasking` (the text sampler runs the
same step over its blocks); their names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.multistep import dpmpp_2m, unipc
from mdiff.schedules import ConvexSchedule, PolynomialKappa
from mdiff.unmasking import (
    Edit,
    Generators,
    Policy,
    Remask,
    UnmaskState,
    ranked,
    sample_categorical,
    schedule_count,
    stochastic_euler,
    uniform_like,
    unmask_step,
)

__all__ = [
    "SOLVERS",
    "Step",
    "UnmaskState",
    "dpmpp_2m",
    "euler",
    "heun",
    "midpoint",
    "ranked",
    "sample_categorical",
    "schedule_count",
    "solve",
    "stochastic_euler",
    "uniform_like",
    "unipc",
    "unmask",
]

ModelFn = Callable[..., Tensor]


@dataclass(frozen=True)
class Step:
    """What a step callback sees: step index, the interval, the new state, and the model output
    the step used (the velocity for ODE solvers, the logits for ``unmask``)."""

    i: int
    t: float
    t_next: float
    x: Tensor
    out: Tensor


def _check_grid(grid: Tensor) -> None:
    if not torch.is_tensor(grid) or grid.dim() != 1 or grid.numel() < 2:
        raise InvalidInputError("grid must be a 1-D tensor of at least two times")
    if not bool((grid[1:] > grid[:-1]).all()):
        raise InvalidInputError("grid must be strictly increasing (source at t=0, data at t=1)")


def _t(x: Tensor, t) -> Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _integrate(step_fn, model_fn, x_init, grid, callback, cond) -> Tensor:
    _check_grid(grid)
    x = x_init
    ts = grid.tolist()
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        x, v = step_fn(model_fn, x, t, t_next - t, cond)
        if callback is not None:
            callback(Step(i, t, t_next, x, v))
    return x


def _euler_step(f, x, t, h, cond):
    v = f(x, _t(x, t), **cond)
    return x + h * v, v


def _midpoint_step(f, x, t, h, cond):
    v0 = f(x, _t(x, t), **cond)
    v = f(x + (h / 2) * v0, _t(x, t + h / 2), **cond)
    return x + h * v, v


def _heun_step(f, x, t, h, cond):
    v0 = f(x, _t(x, t), **cond)
    v1 = f(x + h * v0, _t(x, t + h), **cond)
    v = (v0 + v1) / 2
    return x + h * v, v


def euler(model_fn: ModelFn, x_init: Tensor, grid: Tensor, *, callback=None, **cond) -> Tensor:
    """First-order Euler on the grid."""
    return _integrate(_euler_step, model_fn, x_init, grid, callback, cond)


def midpoint(model_fn: ModelFn, x_init: Tensor, grid: Tensor, *, callback=None, **cond) -> Tensor:
    """Second-order explicit midpoint on the grid."""
    return _integrate(_midpoint_step, model_fn, x_init, grid, callback, cond)


def heun(model_fn: ModelFn, x_init: Tensor, grid: Tensor, *, callback=None, **cond) -> Tensor:
    """Second-order Heun (trapezoidal predictor-corrector) on the grid."""
    return _integrate(_heun_step, model_fn, x_init, grid, callback, cond)


SOLVERS = {"euler": euler, "midpoint": midpoint, "heun": heun, "unipc": unipc, "dpmpp_2m": dpmpp_2m}


def solve(method: str, model_fn: ModelFn, x_init: Tensor, grid: Tensor, **kwargs) -> Tensor:
    """Dispatch by name: ``solve("heun", model_fn, x, grid, callback=…, **cond)``."""
    if method not in SOLVERS:
        raise InvalidInputError(f"unknown solver {method!r}; one of {sorted(SOLVERS)}")
    return SOLVERS[method](model_fn, x_init, grid, **kwargs)


# ----------------------------------------------------------------------------------------------
# Discrete: the unmasking loop (its step and policies are in `mdiff.unmasking`).
# ----------------------------------------------------------------------------------------------


def unmask(
    model_fn: ModelFn,
    x_init: Tensor,
    grid: Tensor,
    mask_id: int,
    *,
    policy: Policy = stochastic_euler,
    remask: Remask | None = None,
    kappa: ConvexSchedule | None = None,
    temperature: float = 1.0,
    generator: Generators = None,
    callback=None,
    edit: Edit | None = None,
    **cond,
) -> Tensor:
    """Fill the ``[MASK]`` positions of ``x_init`` (B, L) by stepping along ``grid``.

    Each step: logits ``model_fn(x, t, **cond)`` (B, L, V), a proposal for every position
    (float64 Gumbel-max at ``temperature``), then `mdiff.unmasking.unmask_step` with ``policy``
    (which masked positions commit) and the optional ``remask`` policy (which positions decoded
    during this call reopen, e.g. ``unmasking.remdm("cap", 0.5)``), and the optional ``edit``
    policy (token editing: which of those re-take their proposal, ``unmasking.token_editing``;
    the loop still ends when nothing is masked). Top-k / top-p: wrap
    ``model_fn`` with `mdiff.unmask_rules.filter_logits`.

    ``generator`` is one ``torch.Generator`` or a list with one per row; with one per row, a
    row's result is the same whatever else is in the batch (for a model that treats rows
    independently).

    At the last step every position still masked commits its proposal, whatever the policy,
    so the result never contains ``mask_id`` where the model can avoid predicting it.
    """
    _check_grid(grid)
    if x_init.dim() != 2 or x_init.dtype != torch.long:
        raise InvalidInputError("x_init must be a LongTensor of token ids (B, L)")
    kappa = kappa or PolynomialKappa(1.0)
    x, generated = x_init.clone(), x_init == mask_id
    ts = grid.tolist()
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        masked = x == mask_id
        if not bool(masked.any()):
            break
        tb = torch.full((x.shape[0],), t, device=x.device)
        logits = model_fn(x, tb, **cond)  # (B, L, V)
        proposal = sample_categorical(logits, generator, temperature)
        state = UnmaskState(x, masked, logits, proposal, generator, tb, torch.full_like(tb, t_next),
                            kappa, decoded=generated & ~masked,
                            editable=None if edit is None else generated & ~masked)  # fmt: skip
        x = unmask_step(state, mask_id, policy, remask, last=i == len(ts) - 2, edit=edit)
        if callback is not None:
            callback(Step(i, t, t_next, x, logits))
    return x
