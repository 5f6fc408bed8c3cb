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
    lr_schedule: str = "constant"  # constant | cosine | linear | wsd
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine / linear / wsd decay to lr * min_lr_ratio
    decay_start: int | None = None  # wsd: constant until here, then linear decay ...
    decay_end: int | None = None  # ... reaching the floor here (None: `steps`)
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
        if self.lr_schedule not in ("constant", "cosine", "linear", "wsd"):
            raise InvalidInputError(f"unknown lr_schedule {self.lr_schedule!r}")
        if self.lr_schedule == "wsd" and self.decay_start is None:
            raise InvalidInputError("lr_schedule 'wsd' needs decay_start")
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
    if config.lr_schedule == "wsd":  # warmup-stable-decay: a cooldown at the end of a run
        start, end = config.decay_start, config.decay_end or config.steps
        return base - (base - floor) * min(1.0, max(0, step - start) / max(1, end - start))
    progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
    if config.lr_schedule == "linear":
        return base - (base - floor) * progress
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cooldown(train: dict, steps: int, length: int | None) -> dict:
    """A run's cooldown as `TrainConfig` fields. `length` (a new cooldown, given when
    resuming) makes the learning rate fall linearly to 0 over the last `length` steps before
    `steps`; it is recorded in the run's `train` settings, so later resumes keep it."""
    if length is not None:
        if not 0 < length <= steps:
            raise InvalidInputError(f"cooldown must be in 1..{steps} steps, got {length}")
        train["decay"] = [steps - length, steps]
    if train.get("decay") is None:
        return {}
    start, end = train["decay"]
    return {"lr_schedule": "wsd", "decay_start": start, "decay_end": end}
