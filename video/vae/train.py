"""Training the causal VAE on procedural shapes: objective, tiny preset, evaluation, and the
recipe of ``mdiff train vae``.

    VAERecipe(size=64, frames=17, steps=100_000).train("runs/shapes-vae")
    VAERecipe(steps=120_000, crop=0).train("runs/shapes-vae", resume=True)   # may change frames,
    VAERecipe.export("runs/shapes-vae", "video/checkpoints/shapes-vae")      # lr, crop, precision

The objective returns a per-sample loss ``[B]``, each term a mean per element:

- reconstruction: L1 (or L2) between the decoded posterior sample and the clip;
- sharpness: L1 between the spatial finite differences (image gradients) of both, a
  weight-free stand-in for LPIPS that penalises blur at edges;
- temporal: L1 between the frame-to-frame differences of both (reconstruction flicker);
- ``kl_weight`` times the KL to N(0, I), a mean per latent element (β small: the latents
  stay nearly deterministic; their scale is fixed afterwards by the per-channel statistics
  that the export writes into the config as ``latents_mean`` / ``latents_std``).

The run folder (see `mdiff.train.run`) holds ``run.json`` (``vae_config``, ``objective``,
``data``, ``train``, command), ``metrics.jsonl`` (held-out figures every ``eval_every`` steps)
and ``checkpoints/``. The export writes the EMA VAE (`save_pretrained`) with the measured latent
statistics and ``trained_frames`` (the training clip length, past which decoding re-anchors)
in its config, and ``training_log.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.train.recipe import Package, Recipe, RunData, setting
from mdiff.train.run import load_ema
from mdiff.video.data import ShapesDataset
from mdiff.video.vae.eval import evaluate, latent_stats
from mdiff.video.vae.model import CausalVAE, CausalVAEConfig

__all__ = [
    "HELDOUT_SEED",
    "RandomCrops",
    "VAEObjective",
    "VAERecipe",
    "evaluate",
    "latent_stats",
    "param_count",
    "shapes_vae_config",
]

HELDOUT_SEED = 1_000_003  # the shapes seed of held-out clips (training uses seed 0)
TRAIN_LENGTH = 10_000_000  # procedural: effectively never repeats
EXPORT_CLIPS = 32  # held-out clips an export evaluates
STATS_CLIPS = 64  # training clips an export measures the latent statistics on


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


# ------------------------------------------------------------------------------ the recipe


@dataclass
class VAERecipe(Recipe):
    """``mdiff train vae``: a `CausalVAE` (the `shapes_vae_config` preset, or `init_from`'s
    architecture) on shapes clips with `VAEObjective`.

    `crop` trains on random ``crop × crop`` windows of the clips (the VAE is convolutional:
    4× cheaper steps at half the size; 0 = full frames, to finish). `frames` (default 17)
    should be as long as the clips it will code: the causal caches' state keeps changing for
    several latent chunks, and a VAE trained on 1 + 4 frames degrades from frame 5 on, one
    trained on 9 frames from frame 9 on (held-out 25.7 dB → 29.1 dB within 1,000 steps of
    switching to 17, measured). On resume `frames`, `lr`, `crop` and `mixed_precision` may
    change. `init_from` (a new run only) starts from an exported VAE folder or built-in name;
    `freeze_encoder` then trains the decoder alone, so the latent space (and every latent cache
    or DiT trained on it) stays valid while reconstructions improve."""

    name = "vae"
    default_out = "runs/shapes-vae"
    summary = (
        "held-out PSNR {psnr_mean:.2f} dB (min {psnr_min:.2f}), SSIM {ssim_mean:.4f} (min "
        "{ssim_min:.4f}), flicker {flicker_recon:.5f} vs original {flicker_orig:.5f}"
    )
    export_help = "after training, export the EMA VAE to DIR"
    trainer = {"ema_max_decay": 0.999, "keep_every": 5000}
    hidden = frozenset({"cooldown", "checkpoint"})

    steps: int = setting(100_000, "target step count (default 1e5)")
    batch_size: int = setting(4, "clips per step (default 4)", key="train.batch_size")
    lr: float | None = setting(None, "learning rate (default 2e-4; may change on --resume)",
                               key="train.lr", resume=True, fresh=2e-4)  # fmt: skip
    mixed_precision: str | None = setting(
        None, "bf16 autocast (default no; may change on --resume)",
        key="train.mixed_precision", resume=True, fresh="no", choices=("no", "bf16"),
    )  # fmt: skip
    init_from: str | None = setting(
        None, "start a new run from an exported VAE folder or built-in name (its architecture)",
        key="train.init_from", metavar="VAE",
    )  # fmt: skip
    save_every: int = setting(200, "checkpoint period in steps")
    size: int = setting(64, "frame height and width (default 64)", key="data.size")
    frames: int | None = setting(
        None, "frames per training clip (default 17; may change on --resume); a causal decoder "
        "degrades past the length it was trained on", key="data.frames", resume=True, fresh=17,
        choices=(5, 9, 17, 33, 65, 129),
    )  # fmt: skip
    base_dim: int = setting(16, "VAE base channels (default 16)", key="vae_config.base_dim")
    z_dim: int = setting(16, "latent channels (default 16)", key="vae_config.z_dim")
    res_blocks: int = setting(1, "res blocks per level (default 1)",
                              key="vae_config.num_res_blocks")  # fmt: skip
    recon: str = setting("l1", "reconstruction loss", key="objective.recon", choices=("l1", "l2"))
    focus_weight: float = setting(
        0.0, "extra recon weight on pixels unlike the clip's dominant colour (default 0)",
        key="objective.focus_weight",
    )  # fmt: skip
    crop: int | None = setting(
        None, "random CROP x CROP training windows (0: full frames; may change on --resume)",
        key="train.crop", resume=True,
    )  # fmt: skip
    freeze_encoder: bool = setting(
        False, "with --init-from: train the decoder only (latents, and DiTs on them, stay valid)",
        key="train.freeze_encoder",
    )  # fmt: skip

    def start(self, out: Path) -> dict:
        init = CausalVAE.from_pretrained(self.init_from) if self.init_from is not None else None
        if self.freeze_encoder and init is None:
            raise InvalidInputError(
                "freezing the encoder needs init_from (--init-from): the trained VAE to keep"
            )
        config = init.config if init else shapes_vae_config(self.base_dim, self.z_dim,
                                                            self.res_blocks)  # fmt: skip
        objective = VAEObjective(recon=self.recon, focus_weight=self.focus_weight)
        run = self.record()
        run["data"].update(train_seed=self.seed, heldout_seed=HELDOUT_SEED)
        return {**run, "vae_config": asdict(config), "objective": asdict(objective),
                "parameters": param_count(config)}  # fmt: skip

    def data(self, out: Path, run: dict) -> RunData:
        seed, size = run["data"]["train_seed"], self.size
        dataset = ShapesDataset(TRAIN_LENGTH, num_frames=self.frames, height=size, width=size,
                                seed=seed)  # fmt: skip
        if self.crop:
            dataset = RandomCrops(dataset, self.crop, seed=seed)
        heldout = ShapesDataset(64, num_frames=17, height=size, width=size,
                                seed=run["data"]["heldout_seed"])  # fmt: skip
        return RunData(dataset, lambda vae: _heldout_figures(vae, heldout), _collate)

    def build(self, run: dict) -> CausalVAE:
        vae = CausalVAE(CausalVAEConfig(**run["vae_config"]))
        if self.freeze_encoder:
            for module in (vae.encoder, vae.quant_conv):
                module.requires_grad_(False)  # out of the optimizer; its EMA stays equal too
        return vae

    def objective(self, run: dict) -> VAEObjective:
        return VAEObjective(**run["objective"])

    def initialize(self, model: CausalVAE, run: dict, out: Path) -> None:
        model.load_state_dict(CausalVAE.from_pretrained(self.init_from).state_dict())

    def package(self, run: dict, run_dir: Path, checkpoint: Path, options) -> Package:
        """The EMA VAE with latent statistics measured on training clips (or the init's, for a
        frozen encoder: other clips must not rescale the latent space a DiT was trained on)
        and the training clip length, evaluated on held-out clips."""
        vae, step = load_ema(self, run, checkpoint)
        d, size = run["data"], self.size
        if not self.freeze_encoder:  # else the latent space, statistics included, is the init's
            clips = ShapesDataset(STATS_CLIPS, num_frames=self.frames, height=size, width=size,
                                  seed=d["train_seed"])  # fmt: skip
            mean, std = latent_stats(vae, clips, STATS_CLIPS)
            vae.config.latents_mean, vae.config.latents_std = tuple(mean), tuple(std)
        vae.trained_frames = self.frames  # decoding re-anchors past the training clip length
        heldout = ShapesDataset(EXPORT_CLIPS, num_frames=17, height=size, width=size,
                                seed=d["heldout_seed"])  # fmt: skip
        figures = evaluate(vae, heldout, EXPORT_CLIPS)
        return Package(vae.save_pretrained, step, {"seed": d["heldout_seed"], "size": size,
                       **figures}, {"vae_config": asdict(vae.config)})  # fmt: skip
