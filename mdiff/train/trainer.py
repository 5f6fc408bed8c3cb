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
import copy
import dataclasses
import logging
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
    prune_checkpoints,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from mdiff.train.config import TrainConfig, lr_at
from mdiff.train.data import ShardedSampler
from mdiff.train.ema import EMA
from mdiff.train.metrics import MetricsLog

logger = logging.getLogger(__name__)


def native_cpu_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively (oneDNN sees AVX512-BF16 or AMX);
    True when torch cannot tell, so that only a known slow case is reported."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch without the probe
        return True


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

    def __init__(
        self, model, objective, dataset: Dataset, config: TrainConfig, *, collate_fn=None,
        evaluate=None,
    ):  # fmt: skip
        """`evaluate(model) -> dict[str, float]` (optional) runs every `eval_every` steps on a
        copy holding the EMA weights (the model itself without EMA); rows go to metrics.jsonl."""
        self.config, self.objective, self.evaluate = config, objective, evaluate
        self._eval_model = None
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
        if config.mixed_precision == "bf16" and acc.device.type == "cpu" and not native_cpu_bf16():
            logger.warning(
                "bf16 is emulated on this CPU (%s, no AVX512-BF16 or AMX): a DiT step measured "
                "19x slower than fp32; train with mixed_precision 'no' (--mixed-precision no)",
                torch.backends.cpu.get_cpu_capability(),
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
        metrics = MetricsLog(cfg.out_dir) if acc.is_main_process else None
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
            if metrics is not None:  # loss is averaged over ranks; other logs are rank 0's
                metrics.add(logs)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    row = metrics.flush(self.step)
                    text = " ".join(f"{k} {v:.4g}" for k, v in row.items())
                    logger.info("step %d/%d %s", self.step, cfg.steps, text)
            if self.evaluate and cfg.eval_every and self.step % cfg.eval_every == 0:
                self._run_evaluation(metrics)
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                self.save_state()
        bar.close()
        return FitResult(self.step, loss_value, history, logs)

    def _run_evaluation(self, metrics: MetricsLog | None) -> None:
        """Evaluate the EMA weights (on the main process) without touching any RNG."""
        if metrics is None:
            return
        model = self.unwrapped_model
        if self.ema is not None:
            if self._eval_model is None:
                self._eval_model = copy.deepcopy(model)
            self.ema.copy_to(self._eval_model)
            model = self._eval_model
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            was_training = model.training
            result = self.evaluate(model.eval())
            model.train(was_training)
        metrics.write({"kind": "eval", "step": self.step, **result})
        logger.info("eval at step %d: %s", self.step, result)

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
            if self.config.keep_last:
                prune_checkpoints(
                    self.checkpoints_dir, self.config.keep_last, self.config.keep_every
                )
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
