"""`TrainConfig` and the learning-rate schedule (a pure function of the optimizer step)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mdiff.errors import InvalidInputError


@dataclass
class TrainConfig:
    """Everything the loop needs. `batch_size` is per process and per micro-batch."""

    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant | cosine | linear
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine / linear decay to lr * min_lr_ratio
    weight_decay: float = 0.0  # applied to parameters with ≥ 2 dims only
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad_norm: float | None = 1.0
    mixed_precision: str = "no"  # no | bf16 | fp16
    ema: bool = True
    ema_max_decay: float = 0.9999
    ema_warmup_gamma: float = 1.0
    ema_warmup_power: float = 2 / 3
    seed: int = 0
    save_every: int = 0  # 0: only at the end
    keep_last: int | None = None  # prune all but the newest N checkpoints (None: keep all)
    keep_every: int = 0  # ... but keep those at multiples of this step (0: none)
    log_every: int = 50  # also the window of the rows in out_dir/metrics.jsonl
    eval_every: int = 0  # call Trainer(evaluate=...) on the EMA weights every N steps
    out_dir: str = "runs/mdiff"
    num_workers: int = 0
    progress: bool = True  # tqdm bar on the main process
    expected_processes: int | None = None  # assert accelerate started this many processes

    def __post_init__(self):
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            raise InvalidInputError(f"unknown lr_schedule {self.lr_schedule!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise InvalidInputError(f"unknown mixed_precision {self.mixed_precision!r}")
        if min(self.steps, self.batch_size, self.grad_accum, self.log_every) < 1:
            raise InvalidInputError("steps, batch_size, grad_accum and log_every must be ≥ 1")


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then the schedule."""
    base, warmup = config.lr, config.warmup_steps
    if step < warmup:
        return base * (step + 1) / warmup
    if config.lr_schedule == "constant":
        return base
    floor = base * config.min_lr_ratio
    progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
    if config.lr_schedule == "linear":
        return base - (base - floor) * progress
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
