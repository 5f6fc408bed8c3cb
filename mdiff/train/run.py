"""One run-folder skeleton for every training recipe (`mdiff.train.recipe`): a new run, resume,
a fine-tune from a parent model, and export.

A run folder holds ``run.json`` (the recipe's recorded fields, the configs it derives, the
command), ``metrics.jsonl``, the trainer's ``checkpoints/`` and the recipe's own files.

- **New run** (``recipe.train(out)``): a folder that already holds a run is refused (resume it,
  or pick another folder); the recipe's `start` checks everything before anything is written.
- **Resume** (``recipe.train(out, resume=True)``): the settings come from ``run.json``
  (`Recipe.resumed`): only the fields marked ``resume`` may change, and a given one is recorded.
  A ``cooldown`` N makes the learning rate fall linearly to 0 over the N steps before ``steps``;
  it is recorded (``train.decay``), so later resumes keep it. On CPU a resumed run is
  bit-identical to one that never stopped (`Trainer.resume`).
- **Fine-tune** (``init_from``): a new run starts from an exported model's weights
  (`Recipe.initialize`) and keeps a copy of its training log (``parent_log.json``), so an export
  carries the whole history even if the name later points at other weights.
- **Export** (``Recipe.export``): a checkpoint's EMA weights, evaluated on held-out data
  (`Recipe.package`), written atomically with ``training_log.json``, whose one writer is
  `training_log` here: steps, losses, held-out figures, settings, commands, the parent's log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mdiff.atomic import atomic_dir, write_text_atomic
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.hub import TRAINING_LOG, resolve
from mdiff.train.checkpoint import LATEST, find_checkpoint, load_ema_weights
from mdiff.train.config import cooldown as lr_cooldown
from mdiff.train.metrics import read_metrics

__all__ = [
    "PARENT_LOG",
    "RUN_FILE",
    "export_run",
    "keep_parent_log",
    "load_ema",
    "load_run_ema",
    "parent_log",
    "read_run_folder",
    "train_run",
    "training_log",
    "write_run",
]

RUN_FILE = "run.json"  # a run folder's settings: recorded fields, configs, command
PARENT_LOG = "parent_log.json"  # a fine-tune run's copy of its starting model's training log
# TrainConfig fields every recipe shares (a recipe's `trainer` adds or overrides)
TRAINER = {"clip_grad_norm": 1.0, "ema": True, "ema_warmup_power": 3 / 4, "keep_last": 3}


def read_run_folder(run_dir: str | os.PathLike, command: str = "train") -> dict:
    """The settings of a run folder (``run.json``); `CheckpointError` if there is none."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: not a `mdiff {command}` run folder")
    return json.loads(path.read_text(encoding="utf-8"))


def write_run(run_dir: str | os.PathLike, run: dict) -> None:
    """Write a run folder's ``run.json`` atomically."""
    write_text_atomic(Path(run_dir) / RUN_FILE, json.dumps(run, indent=2) + "\n")


def keep_parent_log(run_dir: str | os.PathLike, init_from: str | os.PathLike) -> None:
    """Copy the training log of the model a fine-tune starts from (a folder or built-in name)
    into its run folder, when it has one: the name may point at other weights by export time
    (a built-in model re-shipped from this very run)."""
    path = resolve(init_from) / TRAINING_LOG
    if path.is_file():
        write_text_atomic(Path(run_dir) / PARENT_LOG, path.read_text(encoding="utf-8"))


def parent_log(run: dict, run_dir: str | os.PathLike) -> dict | None:
    """The training log of the model a run was fine-tuned from, so an export keeps its whole
    history: the copy in ``run_dir`` (see `keep_parent_log`), else, for runs made before that
    copy existed, ``run["train"]["init_from"]`` resolved now; None if there is none."""
    init = run.get("train", {}).get("init_from")
    if init is None:
        return None
    kept = Path(run_dir) / PARENT_LOG
    path = kept if kept.is_file() else resolve(init) / TRAINING_LOG
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def train_run(recipe, out: Path, *, resume: bool, command: str | None):
    """Train `recipe` in run folder `out` (see the module docstring); returns the `FitResult`."""
    from mdiff.train.trainer import TrainConfig, Trainer  # imports accelerate

    has_run, has_checkpoint = (out / RUN_FILE).is_file(), (out / "checkpoints" / LATEST).is_file()
    if resume and has_run:
        run = read_run_folder(out, f"train {recipe.name}")
        recipe = recipe.resumed(run)
    else:
        if has_run and has_checkpoint:
            raise InvalidInputError(f"{out} already holds a run; pass --resume or another --out")
        recipe = recipe.resolved()
        run = {**recipe.start(out), "command": command}
    schedule = lr_cooldown(run["train"], recipe.steps, recipe.cooldown)
    out.mkdir(parents=True, exist_ok=True)
    write_run(out, run)  # on resume: with the settings changed for this leg
    data = recipe.data(out, run)
    config = TrainConfig(
        steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr,
        warmup_steps=recipe.warmup_steps, seed=recipe.seed, save_every=recipe.save_every,
        log_every=recipe.log_every, eval_every=recipe.eval_every, out_dir=str(out),
        progress=recipe.progress, mixed_precision=recipe.mixed_precision,
        **{**TRAINER, **recipe.trainer, **schedule},
    )  # fmt: skip
    torch.manual_seed(recipe.seed)  # the initial weights
    model = recipe.build(run)
    resuming = resume and has_checkpoint
    if not resuming and recipe.init_from is not None:
        recipe.initialize(model, run, out)
        keep_parent_log(out, recipe.init_from)
    trainer = Trainer(model, recipe.objective(run), data.train, config, collate_fn=data.collate,
                      evaluate=data.evaluate)  # fmt: skip
    if resuming:
        trainer.resume(LATEST)
    return trainer.fit()


def load_ema(recipe, run: dict, checkpoint: Path):
    """(the model of `run` with the EMA weights of `checkpoint`, in eval mode; its step)."""
    model = recipe.build(run)
    step = load_ema_weights(model, checkpoint)
    return model.eval(), step


def load_run_ema(recipe_class, run_dir: Path, checkpoint: str = LATEST):
    """`load_ema` for a run folder and a checkpoint name (see `find_checkpoint`)."""
    run = read_run_folder(run_dir, f"train {recipe_class.name}")
    found = find_checkpoint(checkpoint, run_dir / "checkpoints")
    return load_ema(recipe_class.from_run(run), run, found)


def export_run(recipe_class, run_dir: Path, out_dir: Path, options, command: str | None) -> dict:
    """Export checkpoint ``options.checkpoint`` of a run (see the module docstring); returns
    the training log."""
    run = read_run_folder(run_dir, f"train {recipe_class.name}")
    checkpoint = find_checkpoint(options.checkpoint, run_dir / "checkpoints")
    package = recipe_class.from_run(run).package(run, run_dir, checkpoint, options)
    log = training_log(recipe_class, run, run_dir, package, checkpoint, command)
    with atomic_dir(out_dir) as tmp:
        package.save(tmp)
        text = json.dumps(log, indent=1) + "\n"  # an infinite PSNR is written as Infinity
        (tmp / TRAINING_LOG).write_text(text, encoding="utf-8")
    return log


def training_log(recipe_class, run: dict, run_dir: Path, package, checkpoint: Path,
                 command: str | None) -> dict:  # fmt: skip
    """What an exported model carries about its training: the step and its checkpoint, held-out
    figures, the ``run.json`` entries the recipe logs, both commands, the losses and
    evaluations of ``metrics.jsonl`` and, for a fine-tune, its parent's log (``init_log``)."""
    metrics = read_metrics(run_dir)
    train_rows = [r for r in metrics if r.get("kind", "train") == "train"]
    log = {
        "step": package.step,
        "exported_from": str(checkpoint),
        "parameters": run.get("parameters"),
        "heldout": package.heldout,
        **{key: run[key] for key in recipe_class.logged if key in run},
        **package.log,
        "command": run.get("command"),
        "export_command": command,
        "losses": [{k: v for k, v in r.items() if k not in ("kind", "time")} for r in train_rows],
        "evals": [r for r in metrics if r.get("kind") == "eval"],
    }
    if (parent := parent_log(run, run_dir)) is not None:  # a fine-tune: keep the parent's history
        log["init_log"] = parent
    return log
