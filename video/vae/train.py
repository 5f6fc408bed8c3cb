"""Training the causal VAE on procedural shapes: objective, tiny preset, evaluation and export.

    objective = VAEObjective()                      # L1 + sharpness + temporal + beta·KL
    trainer = Trainer(CausalVAE(shapes_vae_config()), objective, ShapesDataset(...), cfg)
    trainer.fit()
    export("runs/shapes-vae", "video/checkpoints/shapes-vae")   # EMA weights + training_log.json

The objective returns a per-sample loss ``[B]``, each term a mean per element:

- reconstruction: L1 (or L2) between the decoded posterior sample and the clip;
- sharpness: L1 between the spatial finite differences (image gradients) of both, a
  weight-free stand-in for LPIPS that penalises blur at edges;
- temporal: L1 between the frame-to-frame differences of both (reconstruction flicker);
- ``kl_weight`` times the KL to N(0, I), a mean per latent element (β small: the latents
  stay nearly deterministic; their scale is fixed afterwards by the per-channel statistics
  that `export` writes into the config as ``latents_mean`` / ``latents_std``).

`mdiff train vae` (see `mdiff/cli.py`) drives `train`; a run folder holds ``run.json`` (the
configs and command), ``metrics.jsonl`` (mean logs every ``log_every`` steps and held-out
figures every ``eval_every`` steps) and the trainer's ``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.train.checkpoint import (
    RUN_FILE,
    TRAINING_LOG,
    keep_parent_log,
    parent_log,
    read_run_folder,
    write_run,
)
from mdiff.train.metrics import read_metrics
from mdiff.video.data import ShapesDataset
from mdiff.video.vae.eval import evaluate, latent_stats
from mdiff.video.vae.model import CausalVAE, CausalVAEConfig

__all__ = [
    "HELDOUT_SEED",
    "RandomCrops",
    "VAEObjective",
    "evaluate",
    "export",
    "latent_stats",
    "load_ema_vae",
    "param_count",
    "shapes_vae_config",
    "train",
]

HELDOUT_SEED = 1_000_003  # the shapes seed of held-out clips (training uses seed 0)
TRAIN_LENGTH = 10_000_000  # procedural: effectively never repeats


def shapes_vae_config(base_dim: int = 16, z_dim: int = 16, num_res_blocks: int = 1):
    """The tiny preset for 64x64 shapes on a 2-core CPU: Wan 2.1 layout (4x8x8, dim_mult
    (1, 2, 4, 4)), base 16, z 16, one res block: 2.55M parameters, 10.2 MB in fp32. The
    latent statistics start at mean 0 / std 1; `export` replaces them with measured ones."""
    return CausalVAEConfig(
        base_dim=base_dim,
        z_dim=z_dim,
        num_res_blocks=num_res_blocks,
        dim_mult=(1, 2, 4, 4),
        latents_mean=(0.0,) * z_dim,
        latents_std=(1.0,) * z_dim,
    )


def param_count(config: CausalVAEConfig) -> int:
    """Parameters of a `CausalVAE` with `config` (built on the meta device, no memory)."""
    with torch.device("meta"):
        model = CausalVAE(config)
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ objective


def _spatial_grads(x: Tensor) -> tuple[Tensor, Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def _per_sample(x: Tensor) -> Tensor:
    return x.flatten(1).mean(1)


def _focus(x: Tensor, weight: float) -> Tensor | float:
    """Per-pixel recon weights (B, 1, T, H, W), mean 1 per clip: ``1 + weight`` on pixels whose
    colour differs from the clip's median colour (the background), 1 elsewhere. Small objects
    on a plain background otherwise leave the model on the "background only" plateau (measured:
    16–17 dB for thousands of steps at any learning rate)."""
    if weight <= 0:
        return 1.0
    median = x.flatten(2).median(2).values[..., None, None, None]  # (B, C, 1, 1, 1)
    fg = ((x - median).abs().sum(1, keepdim=True) > 0.05).float()  # (B, 1, T, H, W)
    w = 1 + weight * fg
    return w / w.flatten(1).mean(1)[:, None, None, None, None]


@dataclass
class VAEObjective:
    """``objective(vae, batch, generator) -> (loss [B], logs)`` for the core `Trainer`."""

    recon: str = "l1"  # l1 | l2
    sharp_weight: float = 0.5  # L1 on spatial image gradients
    temporal_weight: float = 0.25  # L1 on frame differences
    kl_weight: float = 1e-5  # per latent element
    focus_weight: float = 0.0  # extra recon weight on pixels unlike the clip's dominant colour

    def __post_init__(self):
        if self.recon not in ("l1", "l2"):
            raise InvalidInputError(f"recon must be 'l1' or 'l2', got {self.recon!r}")

    def __call__(self, model, batch, generator: torch.Generator):
        x = batch["pixels"] if isinstance(batch, dict) else batch  # (B, C, T, H, W) in [-1, 1]
        vae = getattr(model, "module", model)  # DDP wrapper -> the CausalVAE
        mean, logvar = vae.encode_moments(x)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        z = mean + (0.5 * logvar).exp() * noise.to(mean.dtype)
        y = vae._decode_frames(z, None).float()
        x = x.float()
        diff = y - x
        err = diff.abs() if self.recon == "l1" else diff.square()
        recon = _per_sample(err * _focus(x, self.focus_weight))
        loss = recon
        (ydx, ydy), (xdx, xdy) = _spatial_grads(y), _spatial_grads(x)
        sharp = 0.5 * (_per_sample((ydx - xdx).abs()) + _per_sample((ydy - xdy).abs()))
        loss = loss + self.sharp_weight * sharp
        temporal = torch.zeros_like(recon)
        if x.shape[2] > 1:
            dy, dx = y[:, :, 1:] - y[:, :, :-1], x[:, :, 1:] - x[:, :, :-1]
            temporal = _per_sample((dy - dx).abs())
            loss = loss + self.temporal_weight * temporal
        mean, logvar = mean.float(), logvar.float()
        kl = _per_sample(0.5 * (mean.square() + logvar.exp() - 1.0 - logvar))
        loss = loss + self.kl_weight * kl
        with torch.no_grad():
            mse = _per_sample((y.clamp(-1, 1) - x).square())
            clip_psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-12))
            parts = {"recon": recon, "sharp": sharp, "temporal": temporal, "kl": kl}
            logs = {k: float(v.mean()) for k, v in parts.items()}
            logs["psnr"] = float(clip_psnr.mean())
        return loss, logs


# ------------------------------------------------------------------------------ run folder

LOG_FILE = TRAINING_LOG


def read_run(run_dir: str | Path) -> dict:
    return read_run_folder(run_dir, "train vae")


def _vae_config(d: dict) -> CausalVAEConfig:
    return CausalVAEConfig(**d)


def load_ema_vae(run_dir: str | Path, checkpoint: str = "latest") -> tuple[CausalVAE, int]:
    """The EMA weights (the raw weights if the run has no EMA) of a run's checkpoint."""
    from mdiff.train.checkpoint import find_checkpoint, load_ema_weights  # imports accelerate

    run = read_run(run_dir)
    directory = find_checkpoint(checkpoint, Path(run_dir) / "checkpoints")
    vae = CausalVAE(_vae_config(run["vae_config"]))
    step = load_ema_weights(vae, directory)
    return vae.eval(), step


# ------------------------------------------------------------------------------ train, export


def train(
    out: str | Path = "runs/shapes-vae",
    *,
    steps: int = 100_000,
    batch_size: int = 4,
    resume: bool = False,
    size: int = 64,
    frames: int | None = None,
    base_dim: int = 16,
    z_dim: int = 16,
    num_res_blocks: int = 1,
    lr: float | None = None,
    save_every: int = 200,
    log_every: int = 50,
    eval_every: int = 1000,
    seed: int = 0,
    progress: bool = True,
    command: str | None = None,
    objective: VAEObjective | None = None,
    crop: int | None = None,
    mixed_precision: str | None = None,
    init_from: str | Path | None = None,
    freeze_encoder: bool = False,
):
    """Train (or, with `resume`, continue) a VAE on shapes clips; returns the `FitResult`.

    `crop` trains on random ``crop × crop`` windows of the clips (the VAE is convolutional:
    4× cheaper steps at half the size; 0 = full frames, to finish). `frames` (default 17)
    should be as long as the clips it will code: the causal caches' state keeps changing
    for several latent chunks, and a VAE trained on 1 + 4 frames degrades from frame 5 on,
    one trained on 9 frames from frame 9 on (held-out 25.7 dB → 29.1 dB within 1,000 steps
    of switching to 17, measured). `lr`
    defaults to 2e-4. On resume the model, objective and data settings come from the run's
    ``run.json``; only `steps` (the target), `frames`, `lr`, `crop`, `mixed_precision` ("no" |
    "bf16"), `save_every`, `log_every`, `eval_every` and `progress` may change (a given
    `frames`, `lr`, `crop` or `mixed_precision` is recorded in ``run.json``).

    `init_from` (a new run only) starts from an exported VAE folder or built-in name, with its
    architecture; `freeze_encoder` then trains the decoder alone, so the latent space (and
    every latent cache or DiT trained on it) stays valid while reconstructions improve."""
    from mdiff.train.trainer import TrainConfig, Trainer

    out = Path(out)
    has_run = (out / RUN_FILE).is_file()
    init = None
    if resume and has_run:
        run = read_run(out)
        vae_config = _vae_config(run["vae_config"])
        objective = VAEObjective(**run["objective"])
        data = run["data"]
        t = run["train"]
        changes = {"lr": lr, "crop": crop, "mixed_precision": mixed_precision}
        t.update({k: v for k, v in changes.items() if v is not None})
        if frames is not None:
            data["frames"] = frames
        seed, batch_size, lr = t["seed"], t["batch_size"], t["lr"]
    else:
        if has_run and (out / "checkpoints" / "latest").is_file():
            raise InvalidInputError(f"{out} already holds a run; pass --resume or another --out")
        lr = 2e-4 if lr is None else lr
        frames = 17 if frames is None else frames
        init = CausalVAE.from_pretrained(init_from) if init_from is not None else None
        if freeze_encoder and init is None:
            raise InvalidInputError(
                "freezing the encoder needs init_from (--init-from): the trained VAE to keep"
            )
        vae_config = init.config if init else shapes_vae_config(base_dim, z_dim, num_res_blocks)
        objective = objective or VAEObjective()
        data = {"size": size, "frames": frames, "train_seed": seed, "heldout_seed": HELDOUT_SEED}
        run = {
            "vae_config": dataclasses.asdict(vae_config),
            "objective": dataclasses.asdict(objective),
            "data": data,
            "train": {
                "seed": seed,
                "batch_size": batch_size,
                "lr": lr,
                "crop": crop,
                "mixed_precision": mixed_precision or "no",
                "init_from": None if init_from is None else str(init_from),
                "freeze_encoder": freeze_encoder,
            },
            "parameters": param_count(vae_config),
            "command": command,
        }
    out.mkdir(parents=True, exist_ok=True)
    write_run(out, run)  # on resume: with the settings changed for this leg
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=200,
        clip_grad_norm=1.0,
        ema=True,
        ema_max_decay=0.999,
        ema_warmup_power=3 / 4,
        seed=seed,
        save_every=save_every,
        keep_last=3,
        keep_every=5000,
        log_every=log_every,
        eval_every=eval_every,
        out_dir=str(out),
        progress=progress,
        mixed_precision=run["train"].get("mixed_precision", "no"),
    )
    size, frames = data["size"], data["frames"]
    dataset = ShapesDataset(
        TRAIN_LENGTH, num_frames=frames, height=size, width=size, seed=data["train_seed"]
    )
    crop = run["train"].get("crop")
    if crop:
        dataset = RandomCrops(dataset, crop, seed=data["train_seed"])
    heldout = ShapesDataset(64, num_frames=17, height=size, width=size, seed=data["heldout_seed"])
    torch.manual_seed(seed)  # the initial weights
    vae = CausalVAE(vae_config)
    resuming = resume and (out / "checkpoints" / "latest").is_file()
    if not resuming and run["train"].get("init_from") is not None:
        init = init or CausalVAE.from_pretrained(run["train"]["init_from"])
        vae.load_state_dict(init.state_dict())
        keep_parent_log(out, run["train"]["init_from"])
    if run["train"].get("freeze_encoder"):
        for module in (vae.encoder, vae.quant_conv):
            module.requires_grad_(False)  # out of the optimizer; its EMA stays equal too
    trainer = Trainer(
        vae, objective, dataset, cfg, collate_fn=_collate,
        evaluate=lambda vae: _heldout_figures(vae, heldout),
    )  # fmt: skip
    if resuming:
        trainer.resume("latest")
    return trainer.fit()


class RandomCrops(torch.utils.data.Dataset):
    """``crop × crop`` windows of a clip dataset's "pixels"; item ``i``'s window is a pure
    function of ``(seed, i)`` (exact resume)."""

    def __init__(self, dataset, crop: int, seed: int = 0):
        if crop < 8 or crop % 8:
            raise InvalidInputError(f"crop must be a positive multiple of 8, got {crop}")
        self.dataset, self.crop, self.seed = dataset, crop, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        x = item["pixels"]  # (C, T, H, W)
        h, w = x.shape[-2:]
        if self.crop > min(h, w):
            raise InvalidInputError(f"crop {self.crop} exceeds the clip size {h}x{w}")
        rng = np.random.default_rng((self.seed, int(index), 0x0C))
        top, left = (int(rng.integers(0, n - self.crop + 1)) for n in (h, w))
        item["pixels"] = x[..., top : top + self.crop, left : left + self.crop]
        return item


def _heldout_figures(vae: CausalVAE, heldout) -> dict:
    r = evaluate(vae, heldout, 8)
    keys = ("psnr_mean", "psnr_min", "ssim_mean", "ssim_min", "flicker_excess")
    return {k: round(r[k], 5) for k in keys}


def _collate(items: list[dict]) -> dict:
    return {"pixels": torch.stack([it["pixels"] for it in items])}


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    checkpoint: str = "latest",
    eval_n: int = 32,
    stats_n: int = 64,
    command: str | None = None,
) -> dict:
    """Write a run's EMA weights with `save_pretrained` (latent statistics measured on
    training clips, or the init's for a frozen encoder: other clips must not rescale the
    latent space a DiT was trained on) plus ``training_log.json`` (steps, losses, held-out
    figures, configs, command) into `out_dir`; returns the log."""
    from mdiff.train.checkpoint import find_checkpoint  # imports accelerate

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    run = read_run(run_dir)
    vae, step = load_ema_vae(run_dir, checkpoint)
    size, frames = run["data"]["size"], run["data"]["frames"]
    train_set = ShapesDataset(
        stats_n, num_frames=frames, height=size, width=size, seed=run["data"]["train_seed"]
    )
    if not run["train"].get("freeze_encoder"):  # else the latent space, statistics included,
        mean, std = latent_stats(vae, train_set, stats_n)  # is the init's (run.json holds them)
        vae.config.latents_mean, vae.config.latents_std = tuple(mean), tuple(std)
    heldout = ShapesDataset(
        eval_n, num_frames=17, height=size, width=size, seed=run["data"]["heldout_seed"]
    )
    figures = evaluate(vae, heldout, eval_n)
    vae.save_pretrained(out_dir)
    metrics = read_metrics(run_dir)
    train_rows = [r for r in metrics if r.get("kind", "train") == "train"]
    log = {
        "step": step,
        "exported_from": str(find_checkpoint(checkpoint, run_dir / "checkpoints")),
        "parameters": param_count(vae.config),
        "heldout": {"seed": run["data"]["heldout_seed"], "size": size, **figures},
        "data": run["data"],
        "objective": run["objective"],
        "train": run["train"],
        "vae_config": dataclasses.asdict(vae.config),
        "command": run.get("command"),
        "export_command": command,
        "losses": [{k: v for k, v in r.items() if k not in ("kind", "time")} for r in train_rows],
        "evals": [r for r in metrics if r.get("kind") == "eval"],
    }
    if (parent := parent_log(run, run_dir)) is not None:  # a fine-tune: keep the VAE's history
        log["init_log"] = parent
    text = json.dumps(log, indent=1) + "\n"  # inf PSNR is written as Infinity
    (out_dir / LOG_FILE).write_text(text, encoding="utf-8")
    return log
