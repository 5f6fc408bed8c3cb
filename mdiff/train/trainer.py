"""A flat training loop on HF accelerate, with EMA and bit-exact resume.

    trainer = Trainer(model, objective, dataset, TrainConfig(steps=1000, out_dir="runs/x"))
    trainer.resume("latest")        # optional: continue a killed run exactly where it stopped
    result = trainer.fit()

`objective(model, batch, generator) -> (loss, logs)` returns a per-sample loss `[B]` (or a
scalar) and a dict of floats; it draws its noise and times from `generator`, which the trainer
owns (one per process, seeded from `seed` and the rank) and checkpoints.

Design choices, each against a measured accelerate pitfall:
- The learning rate is a pure function of the optimizer step, written into the param groups
  each step; accelerate's wrapped scheduler would step `num_processes` times per step.
- The data order comes from our own `ShardedSampler` and the DataLoader is not passed to
  `accelerator.prepare`, whose wrapper does not restore the position on resume.
- Gradient accumulation is manual: `no_sync` on all but the last micro-batch.
- Checkpoints hold no pickle (see `checkpoint.py`) and restore every RNG, so on CPU a run
  killed at step k and resumed is bit-identical to one that never stopped.

Multiple processes (world size is logged; set `expected_processes` to assert it):
- GPUs: `accelerate launch --multi_gpu --num_processes 8 train.py` (or `torchrun`).
- CPU: `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train.py`.
  Beware: `accelerate launch --cpu --num_processes 2` silently starts ONE process, and
  `--multi_gpu` without `ACCELERATE_USE_CPU=1` on a CPU host starts two unconnected processes
  that each train alone. In tests, use `accelerate.debug_launcher(fn, num_processes=2)`.
Checkpoints of multi-process runs assume a file system shared by all ranks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.hub import check_state_dict
from mdiff.train.checkpoint import (
    find_checkpoint,
    load_tree,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from mdiff.train.data import ShardedSampler
from mdiff.train.ema import EMA

logger = logging.getLogger(__name__)


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
    log_every: int = 50
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


@dataclass
class FitResult:
    """What `fit` returns: the final step, the last loss, `(step, loss)` per step of this call,
    and the last step's logs (loss, lr, grad_norm and the objective's own logs)."""

    step: int
    loss: float
    history: list[tuple[int, float]]
    logs: dict[str, float]


_DATA_KEYS = ("seed", "batch_size", "grad_accum")  # what fixes the sample/noise order


def _derived_seed(seed: int, rank: int, stream: int) -> int:
    return (seed * 1_000_003 + rank * 1_009 + stream) % (2**63)


class Trainer:
    """Trains `model` on `dataset` with `objective`; see the module docstring."""

    def __init__(self, model, objective, dataset: Dataset, config: TrainConfig, *, collate_fn=None):
        self.config, self.objective = config, objective
        self.dataset, self.collate_fn = dataset, collate_fn
        self.accelerator = acc = Accelerator(mixed_precision=config.mixed_precision)
        if config.expected_processes not in (None, acc.num_processes):
            raise InvalidInputError(
                f"expected {config.expected_processes} processes, accelerate started "
                f"{acc.num_processes} (see mdiff.train.trainer for the launch commands)"
            )
        logger.info(
            "world size %d (%s), process %d, device %s, mixed precision %s",
            acc.num_processes,
            acc.distributed_type,
            acc.process_index,
            acc.device,
            config.mixed_precision,
        )
        rank = acc.process_index
        torch.manual_seed(_derived_seed(config.seed, rank, 1))  # dropout etc.
        self.generator = torch.Generator(acc.device).manual_seed(
            _derived_seed(config.seed, rank, 2)
        )
        self.sampler = ShardedSampler(
            len(dataset), rank=rank, world_size=acc.num_processes, seed=config.seed
        )
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        groups = [
            {"params": params, "weight_decay": wd}
            for params, wd in ((decay, config.weight_decay), (no_decay, 0.0))
            if params
        ]
        optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.ema = None
        if config.ema:
            self.ema = EMA(
                self.unwrapped_model,
                config.ema_max_decay,
                config.ema_warmup_gamma,
                config.ema_warmup_power,
            )
        self.step = 0
        self.checkpoints_dir = Path(config.out_dir) / "checkpoints"

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _loader(self) -> DataLoader:
        cfg = self.config
        return DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.num_workers,
            collate_fn=self.collate_fn,
            drop_last=True,
            pin_memory=self.accelerator.device.type == "cuda",
            # its own generator: creating the iterator must not consume the global torch RNG
            generator=torch.Generator().manual_seed(_derived_seed(cfg.seed, 0, 3)),
        )

    def fit(self) -> FitResult:
        """Train until `config.steps`, saving every `save_every` steps and at the end."""
        cfg, acc = self.config, self.accelerator
        batches = iter(self._loader())
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            disable=not (cfg.progress and acc.is_main_process),
        )
        history: list[tuple[int, float]] = []
        logs: dict[str, float] = {}
        loss_value = float("nan")
        while self.step < cfg.steps:
            lr = lr_at(self.step, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=acc.device)
            sums: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                batch = send_to_device(next(batches), acc.device)
                self.sampler.advance(cfg.batch_size)
                last = micro == cfg.grad_accum - 1
                with contextlib.nullcontext() if last else acc.no_sync(self.model):
                    with acc.autocast():
                        loss, micro_logs = self.objective(self.model, batch, self.generator)
                    loss = loss.float().mean()  # per-sample [B] or a scalar
                    acc.backward(loss / cfg.grad_accum)
                total += loss.detach() / cfg.grad_accum
                for k, v in micro_logs.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / cfg.grad_accum
            grad_norm = float("nan")
            if cfg.clip_grad_norm:
                grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm))
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.unwrapped_model, self.step)
            self.step += 1

            loss_value = acc.reduce(total, reduction="mean").item()
            history.append((self.step, loss_value))
            logs = {"loss": loss_value, "lr": lr, "grad_norm": grad_norm, **sums}
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
            log_now = self.step % cfg.log_every == 0 or self.step == cfg.steps
            if (
                log_now and acc.is_main_process
            ):  # loss is averaged over ranks; other logs are rank 0's
                text = " ".join(f"{k} {v:.4g}" for k, v in logs.items())
                logger.info("step %d/%d %s", self.step, cfg.steps, text)
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                self.save_state()
        bar.close()
        return FitResult(self.step, loss_value, history, logs)

    # ------------------------------------------------------------ checkpoints

    def save_state(self, directory: str | Path | None = None) -> Path:
        """Write model, optimizer, EMA, step, sampler and RNG states (all ranks must call)."""
        final = Path(directory) if directory else self.checkpoints_dir / f"step_{self.step:08d}"
        acc = self.accelerator
        trainer = {
            "step": self.step,
            "world_size": acc.num_processes,
            "sampler": self.sampler.state_dict(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "config": dataclasses.asdict(self.config),
        }
        parts = {
            "model": self.unwrapped_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": trainer,
        }
        if self.ema is not None:
            parts["ema"] = self.ema.state_dict()
        path = write_checkpoint(acc, final, parts, {"rng": rng_state(self.generator)})
        if acc.is_main_process:
            logger.info("saved step %d to %s", self.step, path)
        return path

    def resume(self, path: str | Path = "latest") -> int:
        """Restore a checkpoint directory (or `"latest"` under `out_dir`); returns the step."""
        directory = find_checkpoint(path, self.checkpoints_dir)
        acc = self.accelerator
        trainer = load_tree(directory, "trainer")
        if trainer["world_size"] != acc.num_processes:
            raise CheckpointError(
                f"{directory} was written by {trainer['world_size']} processes, this run has "
                f"{acc.num_processes}; resuming across world sizes is not supported"
            )
        saved, now = trainer["config"], dataclasses.asdict(self.config)
        changed = [k for k in _DATA_KEYS if saved.get(k) != now[k]]
        if changed:
            logger.warning("resuming with changed %s: not an identical continuation", changed)
        model = load_tree(directory, "model")  # all tensors load to CPU, then are copied over
        check_state_dict(self.unwrapped_model, model, directory)
        self.unwrapped_model.load_state_dict(model)
        self.optimizer.load_state_dict(load_tree(directory, "optimizer"))
        if self.ema is not None:
            self.ema.load_state_dict(load_tree(directory, "ema"))
        if trainer["scaler"] is not None and acc.scaler is not None:
            acc.scaler.load_state_dict(trainer["scaler"])
        self.sampler.load_state_dict(trainer["sampler"])
        set_rng_state(self.generator, load_tree(directory, f"rng_rank{acc.process_index}"))
        self.step = int(trainer["step"])
        logger.info("resumed from %s at step %d", directory, self.step)
        return self.step
