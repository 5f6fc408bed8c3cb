"""Solvers: fixed-grid ODE integrators for velocity models, and the discrete unmasking loop.

Every continuous solver has one signature, ``solver(model_fn, x_init, grid, *, callback, **cond)``
with ``model_fn(x, t, **cond) -> velocity`` and ``grid`` an increasing tensor of times from the
source towards the data. The grid is data; no solver keeps a step counter. For ``h = t' − t``:

    euler     x ← x + h·v(x, t)                                          (1 evaluation, order 1)
    midpoint  x ← x + h·v(x + ½h·v(x, t), t + ½h)                        (2 evaluations, order 2)
    heun      x̃ = x + h·v(x, t);  x ← x + ½h·(v(x, t) + v(x̃, t'))       (2 evaluations, order 2)

Discrete: ``unmask(model_fn, x_init, grid, mask_id, policy)`` runs an absorbing-state sampler:
at each step the model gives logits, a proposal token is drawn for every position, and a policy
decides which still-masked positions commit their proposal. Committed tokens never change here
(remasking belongs to the text frontend). The stochastic discrete Euler policy is the exact
ancestral step of the mask path; ``ranked`` builds "how many / which" policies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.schedules import ConvexSchedule, PolynomialKappa

__all__ = [
    "SOLVERS",
    "Step",
    "UnmaskState",
    "euler",
    "heun",
    "midpoint",
    "ranked",
    "sample_categorical",
    "schedule_count",
    "solve",
    "stochastic_euler",
    "uniform_like",
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


SOLVERS = {"euler": euler, "midpoint": midpoint, "heun": heun}


def solve(method: str, model_fn: ModelFn, x_init: Tensor, grid: Tensor, **kwargs) -> Tensor:
    """Dispatch by name: ``solve("heun", model_fn, x, grid, callback=…, **cond)``."""
    if method not in SOLVERS:
        raise InvalidInputError(f"unknown solver {method!r}; one of {sorted(SOLVERS)}")
    return SOLVERS[method](model_fn, x_init, grid, **kwargs)


# ----------------------------------------------------------------------------------------------
# Discrete: proposals, policies and the unmasking loop.
# ----------------------------------------------------------------------------------------------


Generators = torch.Generator | list[torch.Generator] | tuple[torch.Generator, ...] | None


def uniform_like(shape: tuple[int, ...], generator: Generators, device) -> Tensor:
    """float64 uniforms of ``shape`` (B, ...). A list of B generators draws row b from the b-th,
    so a row's randomness does not depend on which other rows share the batch."""
    if not isinstance(generator, list | tuple):
        return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    if len(generator) != shape[0]:
        raise InvalidInputError(f"{len(generator)} generators for a batch of {shape[0]} rows")
    rows = [
        torch.rand(shape[1:], generator=g, device=device, dtype=torch.float64) for g in generator
    ]
    return torch.stack(rows)


def sample_categorical(logits: Tensor, generator: Generators = None, temperature=1.0) -> Tensor:
    """Draw token ids from logits (B, ..., V) by the Gumbel-max trick in float64.

    float64 matters: float32/bf16 Gumbel noise truncates the tail and biases low-temperature
    sampling. ``temperature = 0`` is argmax. ``generator`` may be one per row (see
    :func:`uniform_like`).
    """
    if temperature == 0:
        return logits.argmax(-1)
    u = uniform_like(tuple(logits.shape), generator, logits.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logits.double() / temperature + gumbel).argmax(-1)


@dataclass
class UnmaskState:
    """What an unmasking policy sees at one step (all tensors batch-first)."""

    x: Tensor  # (B, L) current tokens
    masked: Tensor  # (B, L) bool, still [MASK]
    logits: Tensor  # (B, L, V) model output
    proposal: Tensor  # (B, L) the token each position would commit
    t: Tensor  # (B,) current time
    t_next: Tensor  # (B,) time after this step
    kappa: ConvexSchedule
    generator: Generators


Policy = Callable[[UnmaskState], Tensor]


def stochastic_euler(state: UnmaskState) -> Tensor:
    """Commit each masked position independently with probability ``(κ' − κ)/(1 − κ)``.

    This is the exact transition of the absorbing path from t to t' (the discrete Euler step
    with its jump probability taken in closed form), so at ``t' = 1`` every position commits.
    """
    k0 = state.kappa.kappa(state.t.double())[:, None]
    k1 = state.kappa.kappa(state.t_next.double())[:, None]
    p = ((k1 - k0) / (1 - k0).clamp_min(1e-12)).clamp(0, 1)
    u = uniform_like(tuple(state.masked.shape), state.generator, state.masked.device)
    return state.masked & (u < p)


def schedule_count(state: UnmaskState) -> Tensor:
    """How many to commit per row so the revealed fraction follows κ: ``round(n_masked·p)``."""
    k0 = state.kappa.kappa(state.t.double())
    k1 = state.kappa.kappa(state.t_next.double())
    p = ((k1 - k0) / (1 - k0).clamp_min(1e-12)).clamp(0, 1)
    return torch.round(state.masked.sum(1).double() * p).long()


def ranked(
    count: Callable[[UnmaskState], Tensor], score: Callable[[UnmaskState], Tensor]
) -> Policy:
    """A policy that commits, per row, the ``count(state)`` masked positions of highest score."""

    def policy(state: UnmaskState) -> Tensor:
        k = count(state).clamp(min=0)  # (B,)
        s = score(state).double().masked_fill(~state.masked, -torch.inf)  # (B, L)
        order = s.argsort(dim=-1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(s.shape[1]).expand_as(s))
        return state.masked & (rank < k[:, None])

    return policy


def unmask(
    model_fn: ModelFn,
    x_init: Tensor,
    grid: Tensor,
    mask_id: int,
    *,
    policy: Policy = stochastic_euler,
    kappa: ConvexSchedule | None = None,
    temperature: float = 1.0,
    generator: Generators = None,
    callback=None,
    **cond,
) -> Tensor:
    """Fill the ``[MASK]`` positions of ``x_init`` (B, L) by stepping along ``grid``.

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
    x = x_init.clone()
    ts = grid.tolist()
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        masked = x == mask_id
        if not bool(masked.any()):
            break
        tb = torch.full((x.shape[0],), t, device=x.device)
        logits = model_fn(x, tb, **cond)  # (B, L, V)
        proposal = sample_categorical(logits, generator, temperature)
        state = UnmaskState(
            x, masked, logits, proposal, tb, torch.full_like(tb, t_next), kappa, generator
        )
        commit = masked if i == len(ts) - 2 else policy(state) & masked
        x = torch.where(commit, proposal, x)
        if callback is not None:
            callback(Step(i, t, t_next, x, logits))
    return x
