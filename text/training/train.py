"""Training the text models on code: run folder, resume, held-out likelihood and export.

    train("runs/code-mdm", kind="mdm", steps=20_000)      # masked diffusion (LLaDA / MDLM)
    train("runs/code-bd3", kind="block")                  # block diffusion (BD3-LM)
    train("runs/code-ar", kind="ar")                      # causal FIM baseline
    export("runs/code-mdm", "text/checkpoints/code-tiny") # EMA weights + tokenizer + log

The corpus defaults to the running interpreter's standard library (see `mdiff.text.data`). A
run folder holds ``run.json`` (model config, objective, data and training settings, command),
``tokenizer.json`` (trained on the training files at the start of the run), the token caches,
``metrics.jsonl`` (training logs every ``log_every`` steps and held-out likelihood every
``eval_every`` steps) and the trainer's ``checkpoints/``. Held-out figures are nats and bits
per token — the diffusion ones are a fixed-grid ELBO estimate (an upper bound on the NLL), the
AR one the exact next-token NLL — and bits per byte of source (token-independent).

`mdiff train text` (see `mdiff/cli.py`) drives `train` and `export`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from mdiff.atomic import atomic_dir
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.text.data import Corpus, TokenWindows, cached_tokens, eval_windows
from mdiff.text.model.denoiser import TextDenoiser, TextDenoiserConfig
from mdiff.text.model.tokenizer import TOKENIZER_FILE, CodeTokenizer, train_tokenizer
from mdiff.text.training.objectives import (
    LN2,
    ARObjective,
    BlockDiffusionObjective,
    MaskedDiffusionObjective,
    ar_nll,
    masked_nelbo,
)
from mdiff.train.checkpoint import (
    RUN_FILE,
    TRAINING_LOG,
    keep_parent_log,
    parent_log,
    read_run_folder,
    write_run,
)
from mdiff.train.config import cooldown as lr_cooldown
from mdiff.train.metrics import read_metrics

__all__ = [
    "ARObjective",
    "BlockDiffusionObjective",
    "KINDS",
    "MaskedDiffusionObjective",
    "evaluate_heldout",
    "export",
    "load_ema_model",
    "model_config",
    "train",
]

logger = logging.getLogger(__name__)

LOG_FILE = TRAINING_LOG
KINDS = {"mdm": "bidirectional", "block": "block_causal", "ar": "causal"}  # kind -> attention
_OBJECTIVES = {
    "mdm": MaskedDiffusionObjective,
    "block": BlockDiffusionObjective,
    "ar": ARObjective,
}


def model_config(
    preset: str | TextDenoiserConfig, kind: str, tokenizer: CodeTokenizer, seq_len: int,
    block_size: int = 16,
) -> TextDenoiserConfig:  # fmt: skip
    """`preset` (a name, or the config of a model to fine-tune) fitted to the tokenizer, with
    the attention of `kind` and room for `seq_len`."""
    if kind not in KINDS:
        raise InvalidInputError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if isinstance(preset, TextDenoiserConfig):
        base = dataclasses.replace(preset, block_size=None)
    else:
        base = TextDenoiserConfig.preset(preset, vocab_size=tokenizer.vocab_size)
    size = (base.block_size or block_size) if kind == "block" else None
    if size and seq_len % size:
        raise InvalidInputError(f"seq_len {seq_len} must be a multiple of block_size {size}")
    return dataclasses.replace(
        base,
        attention=KINDS[kind],
        block_size=size,
        max_len=max(base.max_len, 2 * seq_len if kind == "block" else seq_len),
        mask_id=tokenizer.mask_id,
        pad_id=tokenizer.pad_id,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
    )


def param_count(config: TextDenoiserConfig) -> int:
    with torch.device("meta"):
        model = TextDenoiser(config)
    return sum(p.numel() for p in model.parameters())  # tied weights count once


# ------------------------------------------------------------------------------ held-out


def _token_bytes(tokenizer: CodeTokenizer) -> torch.Tensor:
    """Source bytes per token id: one per byte-level character, none for the specials."""
    table = torch.zeros(tokenizer.vocab_size, dtype=torch.long)
    specials = set(tokenizer.special_ids.values())
    for token, i in tokenizer.backend.get_vocab().items():
        table[i] = 0 if i in specials else len(token)
    return table


def evaluate_heldout(
    model, batch: dict, kind: str, tokenizer: CodeTokenizer, *, chunk: int = 8, grid: int = 16
) -> dict[str, float]:
    """Held-out nats/bits per token and bits per source byte of `batch` (see the module doc)."""
    ids, valid = batch["input_ids"], batch["attention_mask"]
    nats, tokens = 0.0, 0
    for s in range(0, ids.shape[0], chunk):
        part = {"input_ids": ids[s : s + chunk], "attention_mask": valid[s : s + chunk]}
        if kind == "ar":
            r, n = ar_nll(model, part), int((part["attention_mask"][:, 1:]).sum())
        else:
            r = masked_nelbo(
                model, part, mask_id=tokenizer.mask_id, grid=grid, seed=s, block=kind == "block"
            )
            n = int(part["attention_mask"].sum())
        nats, tokens = nats + r["nats_per_token"] * n, tokens + n
    n_bytes = int(_token_bytes(tokenizer)[ids[valid]].sum())
    per_token = nats / max(tokens, 1)
    return {
        "heldout_nats_per_token": round(per_token, 5),
        "heldout_bits_per_token": round(per_token / LN2, 5),
        "heldout_bits_per_byte": round(nats / LN2 / max(n_bytes, 1), 5),
    }


# ------------------------------------------------------------------------------ run folder


def read_run(run_dir: str | Path) -> dict:
    return read_run_folder(run_dir, "train text")


def _data(run_dir: Path, run: dict, tokenizer: CodeTokenizer):
    """(training windows, held-out evaluation batch) of a run."""
    d = run["data"]
    corpus = Corpus.from_folder(d["corpus"], d["pattern"], d["heldout_fraction"])
    train_ids = cached_tokens(run_dir / "tokens_train.safetensors", tokenizer, corpus,
                              corpus.train_files)  # fmt: skip
    held_ids = cached_tokens(run_dir / "tokens_heldout.safetensors", tokenizer, corpus,
                             corpus.heldout_files)  # fmt: skip
    fim = {"pre_id": tokenizer.pre_id, "suf_id": tokenizer.suf_id, "mid_id": tokenizer.mid_id,
           "eos_id": tokenizer.eos_id}  # fmt: skip
    dataset = TokenWindows(
        train_ids, d["seq_len"], stride=d["stride"], crop_fraction=d["crop_fraction"],
        fim_rate=d["fim_rate"], seed=run["train"]["seed"], pad_id=tokenizer.pad_id, fim_ids=fim,
        fim_order=d.get("fim_order", "psm"),
    )  # fmt: skip
    heldout = eval_windows(held_ids, d["seq_len"], d["eval_windows"], pad_id=tokenizer.pad_id)
    return dataset, heldout


def load_ema_model(run_dir: str | Path, checkpoint: str = "latest") -> tuple[TextDenoiser, int]:
    """The EMA weights (the raw weights if the run has no EMA) of a run's checkpoint."""
    from mdiff.train.checkpoint import find_checkpoint, load_ema_weights  # imports accelerate

    run = read_run(run_dir)
    directory = find_checkpoint(checkpoint, Path(run_dir) / "checkpoints")
    model = TextDenoiser(TextDenoiserConfig(**run["model_config"]))
    step = load_ema_weights(model, directory)
    return model.eval(), step


# ------------------------------------------------------------------------------ train, export


def _new_run(
    out: Path, *, kind, preset, corpus, pattern, vocab_size, heldout_fraction, seq_len, stride,
    crop_fraction, fim_rate, block_size, eval_windows, train, command, init_from=None,
    fim_order="psm",
) -> tuple[dict, CodeTokenizer]:  # fmt: skip
    """Train the tokenizer (or take `init_from`'s), write ``tokenizer.json`` and ``run.json``;
    returns both."""
    if kind not in KINDS:
        raise InvalidInputError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    found = Corpus.from_folder(corpus, pattern, heldout_fraction)
    if init_from is not None:  # the model's own tokenizer and architecture, any attention
        init, tokenizer = _init_model(init_from)
        config = model_config(init.config, kind, tokenizer, seq_len, block_size)
        preset = None
    else:
        logger.info("training the tokenizer on %d files", len(found.train_files))
        tokenizer = train_tokenizer(found.texts(found.train_files), vocab_size)
        config = model_config(preset, kind, tokenizer, seq_len, block_size)
    objective = _OBJECTIVES[kind]()
    if kind == "block":
        objective.block_size = config.block_size
    run = {
        "kind": kind,
        "preset": preset,
        "model_config": dataclasses.asdict(config),
        "objective": dataclasses.asdict(objective),
        "data": {
            "corpus": str(found.root.resolve()), "pattern": pattern,
            "heldout_fraction": heldout_fraction, "train_files": len(found.train_files),
            "heldout_files": len(found.heldout_files), "seq_len": seq_len,
            "stride": stride or seq_len, "crop_fraction": crop_fraction if kind != "ar" else 0,
            "fim_rate": fim_rate if kind == "ar" else 0, "fim_order": fim_order,
            "eval_windows": eval_windows,
        },
        "train": train,
        "parameters": param_count(config),
        "command": command,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    write_run(out, run)
    return run, tokenizer


def _init_model(init_from: str | Path) -> tuple[TextDenoiser, CodeTokenizer]:
    """An exported text model (folder or built-in name) and its tokenizer, to fine-tune."""
    from mdiff.hub import resolve

    folder = resolve(init_from)
    if not (folder / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{folder} has no {TOKENIZER_FILE}: not an exported text model")
    return TextDenoiser.from_pretrained(folder), CodeTokenizer.load(folder)


def train(
    out: str | Path = "runs/code-mdm",
    *,
    kind: str = "mdm",
    preset: str = "code-tiny",
    steps: int = 20_000,
    batch_size: int = 16,
    seq_len: int = 256,
    lr: float = 3e-4,
    resume: bool = False,
    corpus: str | Path | None = None,
    pattern: str = "*.py",
    vocab_size: int = 4096,
    heldout_fraction: float = 0.02,
    crop_fraction: float = 0.01,
    fim_rate: float = 0.5,
    fim_order: str = "psm",
    block_size: int = 16,
    stride: int | None = None,
    warmup_steps: int = 200,
    mixed_precision: str = "no",
    eval_windows: int = 32,
    save_every: int = 500,
    log_every: int = 50,
    eval_every: int = 1000,
    seed: int = 0,
    progress: bool = True,
    command: str | None = None,
    init_from: str | Path | None = None,
    cooldown: int | None = None,
):
    """Train (or, with `resume`, continue) a text model of `kind` ("mdm", "block", "ar") on a
    code corpus (a folder; default the standard library); returns the `FitResult`.

    On resume everything but `steps` (the target), `save_every`, `log_every`, `eval_every` and
    `progress` comes from the run's ``run.json`` and ``tokenizer.json``.

    `fim_order` ("psm" | "spm", see `mdiff.text.data`) is the AR baseline's FIM layout.
    `init_from` (a new run only) starts from an exported text model (folder or built-in name)
    with its tokenizer and architecture but the attention of `kind`: BD3-LM's recipe of
    fine-tuning a bidirectional masked-diffusion model into a block-causal one (``kind="block"``)
    costs a fraction of training one from scratch. `cooldown` N makes the learning rate fall
    linearly to 0 over the N steps before `steps` (recorded in ``run.json``)."""
    from mdiff.train.trainer import TrainConfig, Trainer

    out = Path(out)
    has_run = (out / RUN_FILE).is_file()
    if resume and has_run:
        run = read_run(out)
        tokenizer = CodeTokenizer.load(out)
    else:
        if has_run and (out / "checkpoints" / "latest").is_file():
            raise InvalidInputError(f"{out} already holds a run; pass --resume or another --out")
        run, tokenizer = _new_run(
            out, kind=kind, preset=preset, corpus=corpus, pattern=pattern, vocab_size=vocab_size,
            heldout_fraction=heldout_fraction, seq_len=seq_len, stride=stride,
            crop_fraction=crop_fraction, fim_rate=fim_rate, block_size=block_size,
            eval_windows=eval_windows, command=command, init_from=init_from, fim_order=fim_order,
            train={"seed": seed, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps,
                   "mixed_precision": mixed_precision,
                   "init_from": None if init_from is None else str(init_from)},
        )  # fmt: skip
    kind, t = run["kind"], run["train"]
    schedule = lr_cooldown(t, steps, cooldown)
    write_run(out, run)  # with a new cooldown recorded
    objective = _OBJECTIVES[kind](**run["objective"])
    dataset, heldout = _data(out, run, tokenizer)
    logger.info("%d training windows of %d tokens", len(dataset), run["data"]["seq_len"])
    cfg = TrainConfig(
        steps=steps, batch_size=t["batch_size"], lr=t["lr"], warmup_steps=t["warmup_steps"],
        betas=(0.9, 0.95), weight_decay=0.01, clip_grad_norm=1.0, ema=True,
        ema_max_decay=0.999, ema_warmup_power=3 / 4, seed=t["seed"], save_every=save_every,
        keep_last=3, keep_every=5000, log_every=log_every, eval_every=eval_every,
        out_dir=str(out), progress=progress, mixed_precision=t.get("mixed_precision", "no"),
        **schedule,
    )  # fmt: skip
    torch.manual_seed(t["seed"])  # the initial weights
    model = TextDenoiser(TextDenoiserConfig(**run["model_config"]))
    resuming = resume and (out / "checkpoints" / "latest").is_file()
    if not resuming and t.get("init_from") is not None:
        model.load_state_dict(_init_model(t["init_from"])[0].state_dict())
        keep_parent_log(out, t["init_from"])
    trainer = Trainer(
        model, objective, dataset, cfg,
        evaluate=lambda m: evaluate_heldout(m, heldout, kind, tokenizer),
    )  # fmt: skip
    if resuming:
        trainer.resume("latest")
    return trainer.fit()


def export(
    run_dir: str | Path, out_dir: str | Path, *, checkpoint: str = "latest", command=None
) -> dict:
    """Write a run's EMA weights (`save_pretrained`), ``tokenizer.json`` and
    ``training_log.json`` (steps, losses, held-out figures, configs, commands) into `out_dir`,
    atomically; returns the log."""
    from mdiff.train.checkpoint import find_checkpoint  # imports accelerate

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    if not (run_dir / TOKENIZER_FILE).is_file():
        raise CheckpointError(f"{run_dir} has no {TOKENIZER_FILE}")
    tokenizer = CodeTokenizer.load(run_dir)
    model, step = load_ema_model(run_dir, checkpoint)
    _, heldout = _data(run_dir, run, tokenizer)
    figures = evaluate_heldout(model, heldout, run["kind"], tokenizer)
    metrics = read_metrics(run_dir)
    train_rows = [r for r in metrics if r.get("kind", "train") == "train"]
    log = {
        "step": step,
        "kind": run["kind"],
        "exported_from": str(find_checkpoint(checkpoint, run_dir / "checkpoints")),
        "parameters": run["parameters"],
        "heldout": {"windows": int(heldout["input_ids"].shape[0]), **figures},
        "data": run["data"],
        "objective": run["objective"],
        "train": run["train"],
        "model_config": run["model_config"],
        "command": run.get("command"),
        "export_command": command,
        "losses": [{k: v for k, v in r.items() if k not in ("kind", "time")} for r in train_rows],
        "evals": [r for r in metrics if r.get("kind") == "eval"],
    }
    if (parent := parent_log(run, run_dir)) is not None:  # a fine-tune: keep the parent's history
        log["init_log"] = parent
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save(tmp)
        (tmp / LOG_FILE).write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
    return log
