"""Training the space-time DiT (with its text encoder) on VAE latents of shapes clips.

    train("runs/dit-shapes-tiny", preset="shapes-tiny", vae="shapes-vae", steps=100_000)
    export("runs/dit-shapes-tiny", "video/checkpoints/shapes-t2v")   # a pipeline folder

**Objective and model** (`mdiff.video.dit.objective`): flow matching with CondOT on the
latents, logit-normal t with the token-count shift, caption dropout to the null embedding,
one t per chunk for block-causal DiTs (diffusion forcing). `TextConditionedDiT` holds the
`SpaceTimeDiT` and the `ShapesTextEncoder` (width = the DiT's ``text_dim``): both train
jointly under one optimizer and one EMA, and both are exported.

**Run folder**: ``run.json`` (configs, objective, data, training settings, command), ``vae/``
(a copy of the VAE used, so the run stays self-consistent), ``latents/`` (the latent cache,
see `mdiff.video.dit.latent_cache`: the VAE runs once per clip, never per step), ``metrics.jsonl``
(training logs; every ``eval_every`` steps the held-out flow-matching loss of the EMA
weights on fixed clips, noise and t values, conditional and unconditional) and
``checkpoints/``. Resume is exact: on CPU a resumed run is bit-identical to an unbroken one.

**Export** writes a pipeline folder that `VideoPipeline.from_pretrained`
loads (the keys its ``save_pretrained`` writes, plus the flat names of format 1)::

    pipeline.json   {"format": "mdiff-video-pipeline/1", "_class_name": "VideoPipeline",
                     "vae": "vae", "dit": "dit", "text_encoder": "text_encoder",
                     "text_encoder_class": "ShapesTextEncoder",
                     "components": {"vae": {"class": "CausalVAE", "path": "vae"}, ...},
                     "chunking": null | {"chunk_frames": c},
                     "settings": {"steps", "shift", "solver", "guidance", "context_noise",
                                  "fps", "num_frames", "height", "width"}}
    vae/ dit/ text_encoder/   save_pretrained folders (vae/ is the run's VAE, copied)
    training_log.json         steps, losses, held-out figures, configs, commands

``settings`` are `VideoPipeline`'s sampler defaults: ``steps``, ``shift`` (α of the sampling
grid, = the training shift), ``solver`` ("euler" | "midpoint" | "heun"), ``guidance`` (CFG
scale, 1 = none), ``context_noise`` (block-causal: finished chunks are read re-noised to
t = 1 − this, the history noise of diffusion forcing; 0 = clean), ``fps`` and the trained
pixel size ``num_frames`` / ``height`` / ``width``. ``chunking`` is null for a bidirectional
DiT, else the latent frames denoised together per streaming step (the DiT's
``chunk_frames``; also in ``dit/config.json``). Paths are relative.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

import mdiff
from mdiff.atomic import atomic_dir
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.hub import resolve, weights_sha256
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
from mdiff.video.data import ShapesDataset
from mdiff.video.dit.latent_cache import LatentCache
from mdiff.video.dit.model import DiTConfig, SpaceTimeDiT
from mdiff.video.dit.objective import (
    EVAL_TIMES,
    HELDOUT_SEED,
    DiTObjective,
    TextConditionedDiT,
    heldout_loss,
    token_shift,
)
from mdiff.video.pipeline.inputs import check_frames_count
from mdiff.video.text_encoders import ShapesTextEncoder, ShapesTextEncoderConfig
from mdiff.video.vae.model import CausalVAE

__all__ = [
    "EVAL_TIMES",
    "PIPELINE_FILE",
    "PIPELINE_FORMAT",
    "DiTObjective",
    "TextConditionedDiT",
    "export",
    "heldout_loss",
    "load_ema_model",
    "token_shift",
    "train",
]

LOG_FILE, PIPELINE_FILE = TRAINING_LOG, "pipeline.json"
PIPELINE_FORMAT = "mdiff-video-pipeline/1"


# ------------------------------------------------------------------------------ run folder


def read_run(run_dir: str | Path) -> dict:
    return read_run_folder(run_dir, "train dit")


def _build(run: dict) -> TextConditionedDiT:
    dit = SpaceTimeDiT(DiTConfig(**run["dit_config"]))
    return TextConditionedDiT(dit, ShapesTextEncoder(ShapesTextEncoderConfig(**run["text_config"])))


def _caches(run_dir: Path, run: dict) -> tuple[LatentCache, LatentCache]:
    d, vae = run["data"], CausalVAE.from_pretrained(run_dir / "vae")
    kw = dict(num_frames=d["frames"], height=d["size"], width=d["size"], fps=d["fps"])
    train = ShapesDataset(d["clips"], seed=d["train_seed"], **kw)
    held = ShapesDataset(d["heldout_clips"], seed=d["heldout_seed"], **kw)
    root = run_dir / "latents"
    return LatentCache(root, "train", vae, train), LatentCache(root, "heldout", vae, held)


def _same_encoder(a: CausalVAE, b: CausalVAE) -> bool:
    """Whether two VAEs code the same latent space: equal encoder, quant conv and statistics."""
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if k.startswith(("encoder.", "quant_conv."))]
    same = all(k in sb and sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in keys)
    stats = ("z_dim", "latents_mean", "latents_std")
    return same and all(getattr(a.config, k) == getattr(b.config, k) for k in stats)


def _same_latent_space(trained: Path, other: str | Path) -> Path:
    """The folder of VAE `other` when it codes the latent space of the VAE in `trained` (a
    decoder-only fine-tune); else `CheckpointError`."""
    source = resolve(other)
    if not _same_encoder(CausalVAE.from_pretrained(trained), CausalVAE.from_pretrained(source)):
        raise CheckpointError(
            f"VAE {other} codes another latent space than the one this DiT was trained on "
            "(its encoder or latent statistics differ); fine-tune the decoder only "
            "(mdiff train vae --init-from ... --freeze-encoder)"
        )
    return source


def load_ema_model(run_dir: str | Path, checkpoint: str = "latest", run: dict | None = None):
    """(`TextConditionedDiT` with the EMA weights of a run's checkpoint, its step); `run`
    replaces the folder's ``run.json`` settings (e.g. an export's overrides)."""
    from mdiff.train.checkpoint import find_checkpoint, load_ema_weights  # imports accelerate

    model = _build(read_run(run_dir) if run is None else run)
    step = load_ema_weights(model, find_checkpoint(checkpoint, Path(run_dir) / "checkpoints"))
    return model.eval(), step


def _new_run(out: Path, *, preset, vae, size, frames, fps, clips, heldout_clips, objective_kw,
             shift, clean_context, train, command) -> dict:  # fmt: skip
    """Fit the configs to the VAE, then copy it into the run and write ``run.json``; returns
    the run. Every check comes first: a bad setting leaves nothing behind."""
    source = resolve(vae)
    files = [source / "config.json", source / "model.safetensors"]
    if not all(f.is_file() for f in files):
        raise CheckpointError(f"{source} is not a VAE folder (config.json + model.safetensors)")
    vae_model = CausalVAE.from_pretrained(source)
    t_lat, s = vae_model.latent_frames(frames), vae_model.spatial_factor
    if size % s:
        raise InvalidInputError(f"size {size} must be a multiple of the VAE's factor {s}")
    dit_config = DiTConfig.preset(preset, in_channels=vae_model.config.z_dim)
    (pt, ph, pw), side = dit_config.patch, size // s
    fits = t_lat % pt == 0 and side % ph == 0 and side % pw == 0
    if not fits or side > min(dit_config.max_size) or t_lat > dit_config.max_frames:
        raise InvalidInputError(f"latents ({t_lat}, {side}, {side}) do not fit the {preset} DiT")
    tokens = t_lat // pt * (side // ph) * (side // pw)
    causal = dit_config.attention == "block_causal"
    objective = DiTObjective(
        **objective_kw, shift=shift or token_shift(tokens),
        chunk_frames=dit_config.chunk_frames if causal else None,
        clean_context=clean_context if causal else 0.0,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "vae") as tmp:
        for f in files:
            shutil.copy2(f, tmp / f.name)
    run = {
        "preset": preset,
        "dit_config": dataclasses.asdict(dit_config),
        "text_config": dataclasses.asdict(ShapesTextEncoderConfig(dim=dit_config.text_dim)),
        "objective": dataclasses.asdict(objective),
        "data": {"size": size, "frames": frames, "fps": fps, "clips": clips, "train_seed": 0,
                 "heldout_clips": heldout_clips, "heldout_seed": HELDOUT_SEED, "tokens": tokens},
        "vae": {"source": str(vae), "path": str(source.resolve()),
                "sha256": weights_sha256(vae_model)},
        "train": train,
        "command": command,
    }  # fmt: skip
    model = _build(run)
    run["parameters"] = {
        "dit": sum(p.numel() for p in model.dit.parameters()),
        "text_encoder": sum(p.numel() for p in model.text_encoder.parameters()),
    }
    write_run(out, run)
    return run


def _collate(items: list[dict]) -> dict:
    return {
        "latents": torch.stack([it["latents"] for it in items]),
        "captions": [it["caption"] for it in items],
    }


def train(
    out: str | Path = "runs/dit-shapes-tiny",
    *,
    preset: str = "shapes-tiny",
    vae: str | Path = "shapes-vae",
    steps: int = 100_000,
    batch_size: int = 16,
    resume: bool = False,
    size: int = 64,
    frames: int = 17,
    fps: float = 8.0,
    clips: int = 16384,
    heldout_clips: int = 32,
    lr: float = 3e-4,
    warmup_steps: int = 500,
    caption_dropout: float = 0.1,
    clean_context: float = 0.5,
    first_chunk_weight: float = 1.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float | None = None,
    mixed_precision: str = "no",
    save_every: int = 500,
    log_every: int = 50,
    eval_every: int = 1000,
    seed: int = 0,
    progress: bool = True,
    command: str | None = None,
    cooldown: int | None = None,
    init_from: str | Path | None = None,
):
    """Train (or, with `resume`, continue) a DiT + text encoder on the latents of `vae` (a
    built-in name or a folder); returns the `FitResult`. `shift` None = `token_shift`;
    `clean_context` is the teacher-forcing probability of a block-causal DiT and
    `first_chunk_weight` the loss weight of its first chunk (see `DiTObjective`). `init_from`
    (a new run only) starts from the DiT and text encoder of a pipeline folder or built-in
    name (same preset; `vae` must code the same latent space).

    On resume everything but `steps` (the target), `save_every`, `log_every`, `eval_every` and
    `progress` comes from the run's ``run.json`` and ``vae/``. `cooldown` N makes the learning
    rate fall linearly to 0 over the N steps before `steps` (recorded in ``run.json``)."""
    from mdiff.train.trainer import TrainConfig, Trainer

    out = Path(out)
    has_run = (out / RUN_FILE).is_file()
    if resume and has_run:
        run = read_run(out)
    else:
        if has_run and (out / "checkpoints" / "latest").is_file():
            raise InvalidInputError(f"{out} already holds a run; pass --resume or another --out")
        objective_kw = dict(logit_mean=logit_mean, logit_std=logit_std,
                            caption_dropout=caption_dropout,
                            first_chunk_weight=first_chunk_weight)  # fmt: skip
        run = _new_run(
            out, preset=preset, vae=vae, size=size, frames=frames, fps=fps, clips=clips,
            heldout_clips=heldout_clips, objective_kw=objective_kw, shift=shift,
            clean_context=clean_context, command=command,
            train={"seed": seed, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps,
                   "mixed_precision": mixed_precision,
                   "init_from": None if init_from is None else str(init_from)},
        )  # fmt: skip
    t = run["train"]
    schedule = lr_cooldown(t, steps, cooldown)
    write_run(out, run)  # with a new cooldown recorded
    train_cache, held_cache = _caches(out, run)
    dataset, heldout = train_cache.fill(progress), held_cache.fill(progress)
    cfg = TrainConfig(
        steps=steps, batch_size=t["batch_size"], lr=t["lr"], warmup_steps=t["warmup_steps"],
        clip_grad_norm=1.0, ema=True, ema_max_decay=0.9999, ema_warmup_power=3 / 4,
        seed=t["seed"], save_every=save_every, keep_last=3, keep_every=10_000,
        log_every=log_every, eval_every=eval_every, out_dir=str(out), progress=progress,
        mixed_precision=t["mixed_precision"], **schedule,
    )  # fmt: skip
    torch.manual_seed(t["seed"])  # the initial weights
    model = _build(run)
    resuming = resume and (out / "checkpoints" / "latest").is_file()
    if not resuming and t.get("init_from") is not None:
        _load_init(model, run, out / "vae", t["init_from"])
        keep_parent_log(out, t["init_from"])
    trainer = Trainer(
        model, DiTObjective(**run["objective"]), dataset, cfg, collate_fn=_collate,
        evaluate=lambda m: heldout_loss(m, heldout),
    )  # fmt: skip
    if resuming:
        trainer.resume("latest")
    return trainer.fit()


def _load_init(model: TextConditionedDiT, run: dict, vae: Path, init_from: str | Path) -> None:
    """Copy the DiT and text encoder of pipeline `init_from` into `model` (a fine-tune's start);
    `CheckpointError` when their configs differ from the run's (another --preset) or the
    pipeline's VAE codes other latents than the run's `vae` folder."""
    from mdiff.video.pipeline.video_pipeline import VideoPipeline

    pipe = VideoPipeline.from_pretrained(init_from)
    ours = (run["dit_config"], run["text_config"])
    theirs = (dataclasses.asdict(pipe.dit.config), dataclasses.asdict(pipe.text_encoder.config))
    for what, a, b in zip(("DiT", "text encoder"), ours, theirs, strict=True):
        a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))  # tuples as lists
        for config in (a, b):  # the sink position is not in the weights: the run's applies
            config.pop("sink_position", None)
        if a != b:
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            raise CheckpointError(f"{init_from}'s {what} differs from the run's --preset in {diff}")
    if not _same_encoder(pipe.vae, CausalVAE.from_pretrained(vae)):
        raise CheckpointError(
            f"{init_from} was trained on the latents of another VAE encoder than --vae "
            f"{run['vae']['source']}; pass the VAE it was trained with"
        )
    model.dit.load_state_dict(pipe.dit.state_dict())
    model.text_encoder.load_state_dict(pipe.text_encoder.state_dict())


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str = "latest",
    settings: dict | None = None,
    vae: str | Path | None = None,
    sink_position: str | None = None,
    command: str | None = None,
) -> dict:
    """Write a run's EMA weights as a pipeline folder (see the module docstring), atomically;
    `settings` override the defaults of ``pipeline.json``. `vae` ships another VAE than the
    run's (a built-in name or folder: one fine-tuned with a frozen encoder, whose encoder and
    latent statistics must equal the run's). `sink_position` overrides the DiT's (it only
    changes streams past the rolling window, never the weights). Returns the training log."""
    from mdiff.train.checkpoint import find_checkpoint  # imports accelerate

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    if sink_position is not None:
        run["dit_config"] = {**run["dit_config"], "sink_position": sink_position}
        DiTConfig(**run["dit_config"])  # a bad value fails here, before anything is written
    if settings and "num_frames" in settings:
        factor = CausalVAE.from_pretrained(run_dir / "vae").config.scale_factor_temporal
        check_frames_count(settings["num_frames"], factor, extending=False)
    model, step = load_ema_model(run_dir, checkpoint, run)
    vae_source = run_dir / "vae" if vae is None else _same_latent_space(run_dir / "vae", vae)
    heldout = _caches(run_dir, run)[1].fill()
    figures = heldout_loss(model, heldout)
    d, chunk = run["data"], run["objective"]["chunk_frames"]
    classes = {"vae": "CausalVAE", "dit": "SpaceTimeDiT", "text_encoder": "ShapesTextEncoder"}
    pipeline = {
        "format": PIPELINE_FORMAT, "_class_name": "VideoPipeline",
        "_mdiff_version": mdiff.__version__, **{name: name for name in classes},
        "text_encoder_class": classes["text_encoder"],
        "components": {name: {"class": c, "path": name} for name, c in classes.items()},
        # a built-in VAE is referenced (with its weights' hash), not copied: package size
        "chunking": None if chunk is None else {"chunk_frames": chunk},
        "settings": {
            "steps": 24, "shift": run["objective"]["shift"], "solver": "euler", "guidance": 4.0,
            "fps": d["fps"], "num_frames": d["frames"], "height": d["size"], "width": d["size"],
            **(settings or {}),
        },
    }  # fmt: skip
    shared = vae is not None and not Path(vae).exists()  # a built-in name
    if shared:
        pipeline["vae"] = str(vae)
        pipeline["components"]["vae"] = {"class": classes["vae"], "builtin": str(vae),
                                         "sha256": weights_sha256(vae_source)}  # fmt: skip
    metrics = read_metrics(run_dir)
    train_rows = [r for r in metrics if r.get("kind", "train") == "train"]
    log = {
        "step": step,
        "exported_from": str(find_checkpoint(checkpoint, run_dir / "checkpoints")),
        "parameters": run["parameters"],
        "heldout": {"clips": len(heldout), "seed": d["heldout_seed"], **figures},
        **{k: run[k] for k in ("preset", "data", "objective", "train", "vae", "dit_config")},
        "command": run.get("command"),
        "export_command": command,
        "exported_vae": None if vae is None else str(vae),
        "losses": [{k: v for k, v in r.items() if k not in ("kind", "time")} for r in train_rows],
        "evals": [r for r in metrics if r.get("kind") == "eval"],
    }
    if (parent := parent_log(run, run_dir)) is not None:  # a fine-tune: keep the parent's history
        log["init_log"] = parent
    with atomic_dir(out_dir) as tmp:
        model.dit.save_pretrained(tmp / "dit")
        model.text_encoder.save_pretrained(tmp / "text_encoder")
        if not shared:
            (tmp / "vae").mkdir()
            for name in ("config.json", "model.safetensors"):
                shutil.copy2(vae_source / name, tmp / "vae" / name)
        (tmp / PIPELINE_FILE).write_text(json.dumps(pipeline, indent=2) + "\n", encoding="utf-8")
        (tmp / LOG_FILE).write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
    return log
