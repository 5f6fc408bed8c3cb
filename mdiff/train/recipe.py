"""Training recipes: dataclasses whose fields are at once the flags of ``mdiff train NAME`` and
the keys of a run's ``run.json`` (nanoGPT-style configuration; the parser is generated from the
fields by `mdiff.train.cli`).

    @dataclass
    class VAERecipe(Recipe):
        name = "vae"
        size: int = setting(64, "frame height and width (default 64)", key="data.size")

    VAERecipe(size=32, steps=1000).train("runs/vae")                # a new run
    VAERecipe(steps=2000, lr=1e-4).train("runs/vae", resume=True)   # continue it
    VAERecipe.export("runs/vae", "exported-vae")                    # EMA weights + training log

A field's metadata (set by `setting`):

- ``help``, ``choices``, ``metavar``: its flag ``--field-name`` (``cli=False``, or named in the
  recipe's `hidden`: Python only). A bool that defaults to False is the switch ``--name``; one
  that defaults to True, ``--no-name``.
- ``key``: the dotted path in ``run.json`` where a run records it (``"train.lr"``); None for a
  setting of one call (steps, periods, progress) or an input of a config the run records whole.
- ``resume``: it may change when a run resumes. It defaults to None, "keep the recorded value";
  a given value is recorded, and a new run takes ``fresh`` for None.

On resume every recorded field comes from ``run.json`` (`Recipe.resumed`; a key missing from a
run folder of an older layout keeps the given value): the run folder, not the call, defines the
run. The skeleton that uses a recipe (new run, resume, fine-tune, export) is `mdiff.train.run`;
a recipe supplies the pieces: `start`, `data`, `build`, `objective`, `initialize`, `package`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["ExportOptions", "Package", "Recipe", "RunData", "setting"]

_MISSING = object()


def setting(default: Any, help: str | None = None, *, key: str | None = None,
            resume: bool = False, fresh: Any = None, choices=None, metavar: str | None = None,
            cli: bool = True):  # fmt: skip
    """A recipe field with its flag's `help`, `choices`, `metavar`, its ``run.json`` `key` and
    whether it may change on `resume` (with its value for a new run, `fresh`); see the module
    docstring."""
    meta = {"help": help, "key": key, "resume": resume, "fresh": fresh, "choices": choices,
            "metavar": metavar, "cli": cli}  # fmt: skip
    return field(default=default, metadata=meta)


def lookup(tree: dict, key: str) -> Any:
    """The value at dotted `key` of a JSON tree, or `_MISSING`."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def place(tree: dict, key: str, value: Any) -> None:
    """Set dotted `key` of a JSON tree to `value` (a path as a string), making parents."""
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = os.fspath(value) if isinstance(value, os.PathLike) else value


@dataclass
class ExportOptions:
    """What an export takes beside the run folder; fields are flags, as a recipe's are."""

    checkpoint: str = setting(
        "latest", "with --export: the checkpoint to export, e.g. step_00005000 (early stopping "
        "on the held-out loss in metrics.jsonl)", metavar="NAME",
    )  # fmt: skip


@dataclass
class RunData:
    """A run's data: the training set, ``evaluate(model) -> dict`` on held-out data (the
    trainer's periodic evaluation), and the batch collation (None: torch's default)."""

    train: Any
    evaluate: Callable[[Any], dict]
    collate: Callable | None = None


@dataclass
class Package:
    """An export before it is written: ``save(folder)`` writes the model files, ``heldout`` its
    held-out figures, ``log`` what the training log adds; ``step`` is the checkpoint's."""

    save: Callable[[Path], object]
    step: int
    heldout: dict
    log: dict = field(default_factory=dict)


@dataclass
class Recipe:
    """The settings every recipe has; a subclass redeclares a field to change its default or
    help, and adds its own. Class attributes: `name` (``mdiff train NAME``), `default_out` (the
    run folder, formatted with the fields), `logged` (``run.json`` entries an export's training
    log repeats), `trainer` (`TrainConfig` fields of the recipe), `export_options`, `hidden`
    (fields, of the recipe or its export options, without a flag for this recipe), `summary`
    (the line ``mdiff train`` prints after an export: a format of the training log's keys and
    its held-out figures)."""

    name: ClassVar[str] = "model"
    default_out: ClassVar[str] = "runs/model"
    export_help: ClassVar[str] = "after training, export the EMA model to DIR"
    export_options: ClassVar[type] = ExportOptions
    logged: ClassVar[tuple[str, ...]] = ("data", "objective", "train")
    trainer: ClassVar[dict] = {}
    hidden: ClassVar[frozenset[str]] = frozenset()
    summary: ClassVar[str] = "held-out {heldout}"

    steps: int = setting(20_000, "target step count (default 2e4)")
    batch_size: int = setting(16, "samples per step (default 16)", key="train.batch_size")
    lr: float = setting(3e-4, None, key="train.lr")
    warmup_steps: int = setting(200, key="train.warmup_steps", cli=False)
    mixed_precision: str = setting(
        "no", "bf16 autocast (faster on CPUs with AVX512-BF16, far slower without; default no)",
        key="train.mixed_precision", choices=("no", "bf16"),
    )  # fmt: skip
    init_from: str | None = setting(
        None, "start a new run from an exported model", key="train.init_from", metavar="MODEL"
    )
    cooldown: int | None = setting(
        None, "decay the learning rate linearly to 0 over the last N steps before --steps "
        "(recorded in the run: later resumes keep it)", metavar="N",
    )  # fmt: skip
    seed: int = setting(0, None, key="train.seed")
    save_every: int = setting(500, "checkpoint period in steps")
    log_every: int = setting(50, "metrics.jsonl period in steps")
    eval_every: int = setting(1000, "held-out eval period (0: never)")
    progress: bool = setting(True, "no tqdm bar")

    # ------------------------------------------------------------ settings and run.json

    def record(self) -> dict:
        """The fields that have a key, as a ``run.json`` tree."""
        run: dict = {}
        for f in fields(self):
            if f.metadata.get("key"):
                place(run, f.metadata["key"], getattr(self, f.name))
        return run

    def resolved(self) -> Recipe:
        """The recipe of a new run: a resumable field left None takes its `fresh` value."""
        fresh = {f.name: f.metadata["fresh"] for f in fields(self)
                 if f.metadata.get("resume") and getattr(self, f.name) is None}  # fmt: skip
        return dataclasses.replace(self, **fresh)

    def resumed(self, run: dict) -> Recipe:
        """The recipe of an existing run (its ``run.json`` tree `run`): recorded fields come from
        `run`, but a resumable one given here replaces its record (written into `run`)."""
        recorded = {}
        for f in fields(self):
            key, given = f.metadata.get("key"), getattr(self, f.name)
            if key is None:
                continue
            if f.metadata.get("resume") and given is not None:
                place(run, key, given)
            elif (value := lookup(run, key)) is not _MISSING:
                recorded[f.name] = value
        return dataclasses.replace(self, **recorded).resolved()

    @classmethod
    def from_run(cls, run: dict) -> Recipe:
        """The recipe a ``run.json`` tree records (defaults where it records nothing)."""
        return cls().resumed(run)

    def out_dir(self) -> str:
        """The run folder when none is given: `default_out` with the fields filled in."""
        return self.default_out.format(**dataclasses.asdict(self))

    # ------------------------------------------------------------ entry points

    def train(self, out: str | os.PathLike, *, resume: bool = False, command: str | None = None):
        """Train a new run in `out` (or, with `resume`, continue the run there); returns the
        `FitResult`. `command` (the CLI's) is recorded in ``run.json``. See `mdiff.train.run`."""
        from mdiff.train.run import train_run

        return train_run(self, Path(out), resume=resume, command=command)

    @classmethod
    def export(
        cls,
        run_dir: str | os.PathLike,
        out_dir: str | os.PathLike,
        options: ExportOptions | None = None,
        *,
        command: str | None = None,
    ) -> dict:
        """Export a run's EMA weights to `out_dir`, atomically, with ``training_log.json``;
        returns the log. `options`: the recipe's `export_options` (default: its defaults)."""
        from mdiff.train.run import export_run

        options = cls.export_options() if options is None else options
        return export_run(cls, Path(run_dir), Path(out_dir), options, command)

    @classmethod
    def load_ema(cls, run_dir: str | os.PathLike, checkpoint: str = "latest"):
        """(the model with the EMA weights of a run's checkpoint, in eval mode; its step)."""
        from mdiff.train.run import load_run_ema

        return load_run_ema(cls, Path(run_dir), checkpoint)

    # ------------------------------------------------------------ the pieces a recipe supplies

    def start(self, out: Path) -> dict:
        """A new run's ``run.json`` tree: `record` plus what the recipe derives (configs,
        objective, ``parameters``). Every check comes first; it may then write the recipe's own
        files into `out` (a tokenizer, a copy of a VAE)."""
        raise NotImplementedError

    def data(self, out: Path, run: dict) -> RunData:
        raise NotImplementedError

    def build(self, run: dict):
        """The model a run trains, freshly initialised (the caller seeds torch)."""
        raise NotImplementedError

    def objective(self, run: dict):
        """``objective(model, batch, generator) -> (loss, logs)`` for the `Trainer`."""
        raise NotImplementedError

    def initialize(self, model, run: dict, out: Path) -> None:
        """Load the weights of `init_from` into `model` (a fine-tune's start)."""
        raise NotImplementedError

    def package(self, run: dict, run_dir: Path, checkpoint: Path, options) -> Package:
        """A checkpoint's EMA model, evaluated and ready to write (may update `run`, which the
        training log repeats)."""
        raise NotImplementedError
