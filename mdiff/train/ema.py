"""Exponential moving average of model parameters with a power warm-up (k-diffusion style).

The decay used at optimizer step `step` (0-based, the step just taken) is

    decay(step) = min(max_decay, 1 − (1 + step / γ)^(−p))

so the average starts as a plain copy (decay 0 at step 0) and forgets early, noisy weights
quickly; γ = 1, p = 2/3 reaches 0.999 at about 31k steps, p = 3/4 at about 10k steps.
Shadow parameters are float32 whatever the model's dtype, and the EMA is a plain object: it
is never wrapped in DDP and never receives gradients.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mdiff.errors import CheckpointError, InvalidInputError


def ema_decay(step: int, max_decay: float, gamma: float = 1.0, power: float = 2 / 3) -> float:
    """The warm-up decay `min(max_decay, 1 − (1 + step/γ)^−p)`; 0 for negative steps."""
    if step < 0:
        return 0.0
    return min(max_decay, 1.0 - (1.0 + step / gamma) ** -power)


class EMA:
    """Float32 shadow copies of a module's parameters, updated with `lerp`.

    Pass the unwrapped module (not the DDP wrapper), so that parameter names carry no
    `module.` prefix.
    """

    def __init__(
        self,
        model: nn.Module,
        max_decay: float = 0.9999,
        warmup_gamma: float = 1.0,
        warmup_power: float = 2 / 3,
    ):
        if not 0.0 <= max_decay <= 1.0:
            raise InvalidInputError(f"max_decay must be in [0, 1], got {max_decay}")
        self.max_decay = max_decay
        self.warmup_gamma = warmup_gamma
        self.warmup_power = warmup_power
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32, copy=True) for name, p in model.named_parameters()
        }

    def decay(self, step: int) -> float:
        """The decay applied by `update(model, step)`."""
        return ema_decay(step, self.max_decay, self.warmup_gamma, self.warmup_power)

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params = dict(model.named_parameters())
        if params.keys() != self.shadow.keys():
            raise InvalidInputError(
                "the module's parameter names differ from the ones the EMA tracks"
            )
        names = list(self.shadow)
        return [self.shadow[n] for n in names], [params[n].detach() for n in names]

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """shadow ← shadow + (1 − decay(step)) · (param − shadow); returns the decay used."""
        decay = self.decay(step)
        shadow, params = self._pairs(model)
        params = [p.to(torch.float32) for p in params]  # no copy when already float32
        torch._foreach_lerp_(shadow, params, 1.0 - decay)
        return decay

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into `model` (cast to each parameter's dtype)."""
        shadow, params = self._pairs(model)
        for s, p in zip(shadow, params, strict=True):
            p.copy_(s)

    def to(self, device: torch.device | str) -> EMA:
        """Move the shadow parameters (they stay float32)."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow parameters by name (the hyper-parameters live in the config)."""
        return dict(self.shadow)

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy saved shadow parameters in; names and shapes must match exactly."""
        if state.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - state.keys())
            extra = sorted(state.keys() - self.shadow.keys())
            raise CheckpointError(
                f"EMA state mismatch: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        for name, value in state.items():
            if value.shape != self.shadow[name].shape:
                raise CheckpointError(f"EMA state {name}: shape {tuple(value.shape)} differs")
            self.shadow[name].copy_(value)
