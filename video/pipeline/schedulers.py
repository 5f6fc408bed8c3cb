"""diffusers' flow-matching schedulers read as data: a solver name, a time grid, and the
timesteps their pipelines feed the transformer (an interop boundary: diffusers' σ = 1 − t).

    schedule = DiffusersSchedule.from_config(json.load(open("scheduler/scheduler_config.json")))
    schedule.solver                  # "unipc" | "dpmpp_2m" | "euler"
    grid = schedule.grid(steps)      # (steps + 1,) float64 t from ~0 (noise) to 1 (data)
    schedule.timesteps(steps)        # (steps,) what the transformer sees at grid[:-1]

Three schedulers (the ones Wan's folders ship), each in its flow configuration only:

    UniPCMultistepScheduler        "unipc"     flow_shift α; σ_i = shift_α(1 − 0.999·i/N),
                                               σ_0 = 1 − 10⁻⁶ when it would be 1
    DPMSolverMultistepScheduler    "dpmpp_2m"  flow_shift α; σ_i = shift_α(1 − 0.001 − 0.999·i/N)
    FlowMatchEulerDiscreteScheduler "euler"    shift α, applied twice (as diffusers does: once
                                               to the training sigmas, whose ends bound the
                                               linspace, and once to the linspace)

with ``shift_α(σ) = α·σ / (1 + (α − 1)·σ)`` and σ_N = 0. The sigmas are computed with their
arithmetic (numpy float64, then float32, which their solvers step with), so ``grid = 1 − σ``
is theirs exactly. **Timesteps.** The multistep schedulers store ``int64(1000·σ_i)`` (the
float64 σ, truncated) and WanPipeline feeds the transformer those integers while the step
itself uses the exact σ_i; FlowMatchEuler stores ``1000·σ_i`` in float32. `timesteps` returns
those values, and the Wan adapter (`wan_adapter.WanDenoiser`) gives them to the transformer at
the grid's points. A config outside these (Karras/exponential/beta sigmas, dynamic shifting,
another order or solver type, thresholding, ...) is a `CheckpointError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mdiff.errors import CheckpointError
from mdiff.time import from_sigma

__all__ = ["SCHEDULERS", "DiffusersSchedule"]

SCHEDULERS = {
    "UniPCMultistepScheduler": "unipc",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
    "FlowMatchEulerDiscreteScheduler": "euler",
}
_SHIFT_KEY = {"unipc": "flow_shift", "dpmpp_2m": "flow_shift", "euler": "shift"}
# config keys whose value must be this one (a missing key takes diffusers' default, the same)
_REQUIRED = {
    "unipc": dict(prediction_type="flow_prediction", use_flow_sigmas=True, solver_order=2,
                  solver_type="bh2", predict_x0=True, lower_order_final=True,
                  final_sigmas_type="zero", disable_corrector=[], solver_p=None),
    "dpmpp_2m": dict(prediction_type="flow_prediction", use_flow_sigmas=True, solver_order=2,
                     algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
                     final_sigmas_type="zero", euler_at_final=False, variance_type=None),
    "euler": dict(invert_sigmas=False, stochastic_sampling=False),
}  # fmt: skip
_OFF = ("use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas",
        "use_beta_sigmas", "use_lu_lambdas", "thresholding", "shift_terminal")  # fmt: skip


@dataclass(frozen=True)
class DiffusersSchedule:
    """One diffusers flow scheduler: its class, our solver, the shift α, 1000 train steps."""

    class_name: str
    solver: str
    shift: float
    num_train_timesteps: int = 1000

    @classmethod
    def from_config(cls, config: dict, where: str = "scheduler_config.json") -> DiffusersSchedule:
        """Read a ``scheduler_config.json``; an unsupported class or setting raises
        `CheckpointError` naming it."""
        name = config.get("_class_name")
        if name not in SCHEDULERS:
            raise CheckpointError(
                f"{where}: scheduler {name!r} is not supported; mdiff reads {sorted(SCHEDULERS)}"
            )
        solver = SCHEDULERS[name]
        for key, want in _REQUIRED[solver].items():
            if key in config and config[key] != want:
                raise CheckpointError(
                    f"{where}: {name} with {key}={config[key]!r} is not supported (only {want!r})"
                )
        for key in _OFF:
            if config.get(key):
                raise CheckpointError(f"{where}: {name} with {key}={config[key]!r} is not "
                                      "supported")  # fmt: skip
        shift = config.get(_SHIFT_KEY[solver], 1.0)
        steps = config.get("num_train_timesteps", 1000)
        ok = isinstance(shift, int | float) and not isinstance(shift, bool) and shift > 0
        if not ok or not isinstance(steps, int) or steps < 2:
            raise CheckpointError(
                f"{where}: {_SHIFT_KEY[solver]}={shift!r} and num_train_timesteps={steps!r} must "
                "be > 0 and an int > 1"
            )
        return cls(name, solver, float(shift), steps)

    def _sigmas64(self, steps: int) -> np.ndarray:
        """σ_0 … σ_{N−1} as diffusers' `set_timesteps` computes them (numpy float64)."""
        a, n_train = self.shift, self.num_train_timesteps
        if self.solver == "unipc":
            s = np.linspace(1, 1 / n_train, steps + 1)[:-1]
            s = a * s / (1 + (a - 1) * s)
            if np.fabs(s[0] - 1) < 1e-6:
                s[0] -= 1e-6  # theirs: keeps log(α_σ) finite
            return s
        if self.solver == "dpmpp_2m":
            s = 1.0 - np.linspace(1, 1 / n_train, steps + 1)
            return np.flip(a * s / (1 + (a - 1) * s))[:-1].copy()
        # FlowMatchEuler: the training sigmas (float32, shifted) bound the linspace
        train = torch.linspace(1, n_train, n_train, dtype=torch.float32).flip(0) / n_train
        train = a * train / (1 + (a - 1) * train)
        hi, lo = train[0].item() * n_train, train[-1].item() * n_train
        s = np.linspace(hi, lo, steps) / n_train
        return a * s / (1 + (a - 1) * s)

    def sigmas(self, steps: int) -> Tensor:
        """Their float32 sigmas σ_0 … σ_N (σ_N = 0), as float64."""
        s = np.concatenate([self._sigmas64(steps), [0.0]]).astype(np.float32)
        return torch.from_numpy(s).double()

    def grid(self, steps: int) -> Tensor:
        """Our time grid ``t = 1 − σ`` (steps + 1,) float64, increasing to t = 1."""
        return from_sigma(self.sigmas(steps))

    def timesteps(self, steps: int) -> Tensor:
        """(steps,) float64: what their pipeline gives the transformer at σ_0 … σ_{N−1}:
        ``int64(1000·σ)`` for the multistep schedulers, float32 ``1000·σ`` for Euler."""
        if self.solver == "euler":
            s32 = torch.from_numpy(self._sigmas64(steps)).float()
            return (s32 * self.num_train_timesteps).double()
        ts = self._sigmas64(steps) * self.num_train_timesteps
        return torch.from_numpy(ts.copy()).to(torch.int64).double()
