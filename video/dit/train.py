"""Training the space-time DiT (with its text encoder) on VAE latents of shapes clips: the
recipe of ``mdiff train dit``.

    DiTRecipe(preset="shapes-tiny", vae="shapes-vae", steps=100_000).train("runs/dit-shapes-tiny")
    DiTRecipe(steps=120_000, cooldown=3000).train("runs/dit-shapes-tiny", resume=True)
    DiTRecipe.export("runs/dit-shapes-tiny", "video/checkpoints/shapes-t2v",
                     DiTExport(export_vae="shapes-vae", guidance=7.0))   # a pipeline folder

**Objective and model** (`mdiff.video.dit.objective`): flow matching with CondOT on the
latents, logit-normal t with the token-count shift, caption dropout to the null embedding,
one t per chunk for block-causal DiTs (diffusion forcing). `TextConditionedDiT` holds the
`SpaceTimeDiT` and the `ShapesTextEncoder` (width = the DiT's ``text_dim``): both train
jointly under one optimizer and one EMA, and both are exported.

**Run folder** (see `mdiff.train.run`): ``run.json`` (configs, objective, data, training
settings, the VAE's source and hash, command), ``vae/`` (a copy of the VAE used, so the run
stays self-consistent), ``latents/`` (the latent cache, see `mdiff.video.dit.latent_cache`:
the VAE runs once per clip, never per step), ``metrics.jsonl`` (training logs; every
``eval_every`` steps the held-out flow-matching loss of the EMA weights on fixed clips, noise
and t values, conditional and unconditional) and ``checkpoints/``.

**Export** builds a `VideoPipeline` from the EMA DiT and text encoder and the run's VAE (or
`DiTExport.export_vae`) and saves it (`VideoPipeline.save_pretrained`, the one writer of
``pipeline.json``, see `mdiff.video.pipeline.folder`), with ``training_log.json``. Its sampler
settings: ``steps`` 24, ``shift`` = the training shift, ``solver`` "euler", ``guidance`` 4
(`DiTExport.guidance`), ``context_noise`` (block-causal: finished chunks are read re-noised to
t = 1 − this, the history noise of diffusion forcing; 0 = clean), ``fps`` and the trained pixel
size ``num_frames`` (`DiTExport.export_frames`) / ``height`` / ``width``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from mdiff.atomic import atomic_dir
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.hub import find_weights, resolve, weight_files, weights_sha256
from mdiff.train.recipe import ExportOptions, Package, Recipe, RunData, setting
from mdiff.train.run import load_ema
from mdiff.video.captions import FreeFormCaptions
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
from mdiff.video.pipeline.video_pipeline import VideoPipeline
from mdiff.video.text_encoders import ShapesTextEncoder, ShapesTextEncoderConfig
from mdiff.video.vae.model import CausalVAE

__all__ = [
    "EVAL_TIMES",
    "DiTExport",
    "DiTObjective",
    "DiTRecipe",
    "TextConditionedDiT",
    "heldout_loss",
    "token_shift",
]


def _caches(run_dir: Path, run: dict) -> tuple[LatentCache, LatentCache]:
    d, vae = run["data"], CausalVAE.from_pretrained(run_dir / "vae")
    root = run_dir / "latents"
    return (LatentCache(root, "train", vae, _clips(d, "train")),
            LatentCache(root, "heldout", vae, _clips(d, "heldout")))  # fmt: skip


def _clips(d: dict, which: str) -> ShapesDataset:
    """The run's training or held-out shapes clips (``d`` is run.json's "data")."""
    kw = dict(num_frames=d["frames"], height=d["size"], width=d["size"], fps=d["fps"])
    if which == "train":
        return ShapesDataset(d["clips"], seed=d["train_seed"], **kw)
    return ShapesDataset(d["heldout_clips"], seed=d["heldout_seed"], **kw)


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


def _collate(items: list[dict]) -> dict:
    return {
        "latents": torch.stack([it["latents"] for it in items]),
        "captions": [it["caption"] for it in items],
        "templates": [it.get("template", it["caption"]) for it in items],
    }


@dataclass
class DiTExport(ExportOptions):
    """What a DiT export may change: the VAE shipped, and the pipeline's sampler defaults."""

    export_vae: str | None = setting(
        None, "ship this VAE instead of the run's: a decoder fine-tune of it (same encoder)",
        metavar="VAE",
    )  # fmt: skip
    guidance: float | None = setting(
        None, "with --export: the pipeline's default CFG scale (default 4)"
    )
    export_frames: int | None = setting(
        None, "with --export: the pipeline's default clip length (default: the training clips')",
        metavar="N",
    )  # fmt: skip
    sink_position: str | None = setting(
        None, "with --export: the attention sink's RoPE time past the rolling window: its own, "
        "or just before the window (every chunk then sees the positions of training)",
        choices=("absolute", "adjacent"),
    )  # fmt: skip
    context_noise: float | None = setting(
        None, "with --export: re-noise finished chunks to t = 1 - this before the next reads them"
    )


@dataclass
class DiTRecipe(Recipe):
    """``mdiff train dit``: a DiT preset and its text encoder on the latents of `vae` (a
    built-in name or a folder). `shift` None = `token_shift`; `clean_context` is the
    teacher-forcing probability of a block-causal DiT and `first_chunk_weight` the loss weight
    of its first chunk (see `DiTObjective`). `init_from` (a new run only) starts from the DiT
    and text encoder of a pipeline folder or built-in name (same preset; `vae` must code the
    same latent space). On resume only the call's settings (`steps`, periods, `cooldown`)
    apply; the rest comes from ``run.json`` and ``vae/``."""

    name = "dit"
    default_out = "runs/dit-{preset}"
    summary = (
        "held-out flow-matching loss {heldout_fm:.5f} (without captions "
        "{heldout_fm_uncond:.5f}, {clips} clips)"
    )
    export_help = "after training, export a pipeline to DIR"
    export_options = DiTExport
    logged = ("preset", "data", "objective", "train", "vae", "dit_config")
    trainer = {"ema_max_decay": 0.9999, "keep_every": 10_000}
    hidden = frozenset({"checkpoint"})

    steps: int = setting(100_000, "target step count (default 1e5)")
    batch_size: int = setting(16, "clips per step (default 16)", key="train.batch_size")
    warmup_steps: int = setting(500, key="train.warmup_steps", cli=False)
    init_from: str | None = setting(
        None, "start a new run from a pipeline's DiT and text encoder (built-in name or folder; "
        "same --preset, and a --vae with the same encoder)", key="train.init_from",
        metavar="PIPELINE",
    )  # fmt: skip
    preset: str = setting("shapes-tiny", "DiT preset (default shapes-tiny)", key="preset")
    vae: str = setting("shapes-vae", "VAE: built-in name or folder", key="vae.source")
    size: int = setting(64, "frame height and width (default 64)", key="data.size")
    frames: int = setting(17, "frames per clip", key="data.frames", choices=(17, 21, 25, 29, 33))
    fps: float = setting(8.0, key="data.fps", cli=False)
    clips: int = setting(16384, "training clips to encode (16384)", key="data.clips")
    heldout_clips: int = setting(32, key="data.heldout_clips", cli=False)
    caption_dropout: float = setting(0.1, "P(caption -> null) (default 0.1)",
                                     key="objective.caption_dropout")  # fmt: skip
    free_form: float = setting(
        0.0, "P(a training caption is redrawn free-form: synonyms, other orders, attributes "
        "left out, unknown words; mdiff.video.captions) (default 0)", key="data.free_form",
    )  # fmt: skip
    clean_context: float = setting(
        0.5, "block-causal DiTs: P(teacher forcing with clean earlier chunks) (default 0.5)",
        key="objective.clean_context",
    )  # fmt: skip
    first_chunk_weight: float = setting(
        1.0, "block-causal DiTs: loss weight of the context-free first chunk (default 1)",
        key="objective.first_chunk_weight",
    )  # fmt: skip
    logit_mean: float = setting(0.0, key="objective.logit_mean", cli=False)
    logit_std: float = setting(1.0, key="objective.logit_std", cli=False)
    shift: float | None = setting(None, "time shift (default: by tokens)", key="objective.shift")
    freeze_dit: bool = setting(
        False, "with --init-from: train the text encoder alone (the DiT, and the motion it "
        "learned, keep the init's weights)", key="train.freeze_dit",
    )  # fmt: skip
    distill: bool = setting(
        False, "with --freeze-dit: regress the init pipeline's own velocity for each clip's "
        "template caption instead of the flow-matching target (free-form captions learn to mean "
        "what their template meant)", key="objective.distill",
    )  # fmt: skip

    def start(self, out: Path) -> dict:
        """Fit the configs to the VAE, then copy it into the run."""
        if self.freeze_dit and self.init_from is None:
            raise InvalidInputError(
                "freezing the DiT needs init_from (--init-from): the DiT to keep"
            )
        if self.distill and not self.freeze_dit:
            raise InvalidInputError("distill needs freeze_dit (--freeze-dit): the teacher's DiT")
        source = resolve(self.vae)
        if not (source / "config.json").is_file():
            raise CheckpointError(f"{source} is not a VAE folder (config.json + weights)")
        weights = find_weights(source)  # any layout (ours, diffusers', sharded), or an error
        shards = [p for p in weight_files(weights) if p != weights]
        files = [source / "config.json", weights, *shards]
        vae = CausalVAE.from_pretrained(source)
        t_lat, s = vae.latent_frames(self.frames), vae.spatial_factor
        if self.size % s:
            raise InvalidInputError(f"size {self.size} must be a multiple of the VAE's factor {s}")
        dit_config = DiTConfig.preset(self.preset, in_channels=vae.config.z_dim)
        (pt, ph, pw), side = dit_config.patch, self.size // s
        fits = t_lat % pt == 0 and side % ph == 0 and side % pw == 0
        if not fits or side > min(dit_config.max_size) or t_lat > dit_config.max_frames:
            raise InvalidInputError(
                f"latents ({t_lat}, {side}, {side}) do not fit the {self.preset} DiT"
            )
        tokens = t_lat // pt * (side // ph) * (side // pw)
        causal = dit_config.attention == "block_causal"
        objective = DiTObjective(
            logit_mean=self.logit_mean, logit_std=self.logit_std,
            caption_dropout=self.caption_dropout, first_chunk_weight=self.first_chunk_weight,
            shift=self.shift or token_shift(tokens),
            chunk_frames=dit_config.chunk_frames if causal else None,
            clean_context=self.clean_context if causal else 0.0, distill=self.distill,
        )  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        with atomic_dir(out / "vae") as tmp:
            for f in files:
                shutil.copy2(f, tmp / f.name)
        run = self.record()
        run["data"].update(train_seed=0, heldout_seed=HELDOUT_SEED, tokens=tokens)
        run["vae"].update(path=str(source.resolve()), sha256=weights_sha256(vae))
        run.update(
            dit_config=asdict(dit_config), objective=asdict(objective),
            text_config=asdict(ShapesTextEncoderConfig(dim=dit_config.text_dim)),
        )  # fmt: skip
        model = self.build(run)
        run["parameters"] = {
            "dit": sum(p.numel() for p in model.dit.parameters()),
            "text_encoder": sum(p.numel() for p in model.text_encoder.parameters()),
        }
        return run

    def data(self, out: Path, run: dict) -> RunData:
        train, held = (cache.fill(self.progress) for cache in _caches(out, run))
        if run["data"].get("free_form", 0.0) > 0:
            train = FreeFormCaptions(train, _clips(run["data"], "train"), run["data"]["free_form"])
        return RunData(train, lambda model: heldout_loss(model, held), _collate)

    def build(self, run: dict) -> TextConditionedDiT:
        dit = SpaceTimeDiT(DiTConfig(**run["dit_config"]))
        encoder = ShapesTextEncoder(ShapesTextEncoderConfig(**run["text_config"]))
        if self.freeze_dit:
            dit.requires_grad_(False)  # out of the optimizer; its EMA stays equal too
        return TextConditionedDiT(dit, encoder)

    def objective(self, run: dict) -> DiTObjective:
        """The run's objective; when distilling, its teacher is the init pipeline's encoder."""
        objective = DiTObjective(**run["objective"])
        if objective.distill:
            teacher = VideoPipeline.from_pretrained(run["train"]["init_from"]).text_encoder
            objective.teacher = teacher.eval().requires_grad_(False)
        return objective

    def initialize(self, model: TextConditionedDiT, run: dict, out: Path) -> None:
        """Copy the DiT and text encoder of pipeline `init_from` into `model`; `CheckpointError`
        when their configs differ from the run's (another preset) or the pipeline's VAE codes
        other latents than the run's ``vae/``. The text encoder's vocabulary may differ: its
        rows move by word (`ShapesTextEncoder.load_with_vocabulary`)."""
        pipe = VideoPipeline.from_pretrained(self.init_from)
        ours = (run["dit_config"], run["text_config"])
        theirs = (asdict(pipe.dit.config), asdict(pipe.text_encoder.config))
        for what, a, b in zip(("DiT", "text encoder"), ours, theirs, strict=True):
            a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))  # tuples as lists
            for config in (a, b):  # the sink position is not in the weights: the run's applies
                config.pop("sink_position", None)
                config.pop("vocab", None)  # the encoder's rows move by word
            if a != b:
                diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
                raise CheckpointError(
                    f"{self.init_from}'s {what} differs from the run's --preset in {diff}"
                )
        if not _same_encoder(pipe.vae, CausalVAE.from_pretrained(out / "vae")):
            raise CheckpointError(
                f"{self.init_from} was trained on the latents of another VAE encoder than --vae "
                f"{run['vae']['source']}; pass the VAE it was trained with"
            )
        model.dit.load_state_dict(pipe.dit.state_dict())
        model.text_encoder.load_with_vocabulary(pipe.text_encoder)

    def package(self, run: dict, run_dir: Path, checkpoint: Path, options: DiTExport) -> Package:
        """A `VideoPipeline` of the EMA weights (see the module docstring). `export_vae` must
        code the run's latent space (a decoder fine-tune); a built-in name is referenced, not
        copied. `sink_position` replaces the DiT's (it changes only streams past the rolling
        window, never the weights). Every check comes before anything is written."""
        if options.sink_position is not None:
            run["dit_config"] = {**run["dit_config"], "sink_position": options.sink_position}
            DiTConfig(**run["dit_config"])  # a bad value fails here
        if options.export_frames is not None:
            factor = CausalVAE.from_pretrained(run_dir / "vae").config.scale_factor_temporal
            check_frames_count(options.export_frames, factor, extending=False)
        model, step = load_ema(self, run, checkpoint)
        vae = options.export_vae
        source = run_dir / "vae" if vae is None else _same_latent_space(run_dir / "vae", vae)
        heldout = _caches(run_dir, run)[1].fill()
        figures = heldout_loss(model, heldout)
        d = run["data"]
        given = {"guidance": options.guidance, "context_noise": options.context_noise,
                 "num_frames": options.export_frames}  # fmt: skip
        settings = {
            "steps": 24, "shift": run["objective"]["shift"], "solver": "euler", "guidance": 4.0,
            "fps": d["fps"], "num_frames": d["frames"], "height": d["size"], "width": d["size"],
            **{k: v for k, v in given.items() if v is not None},
        }  # fmt: skip
        pipe = VideoPipeline(CausalVAE.from_pretrained(source), model.dit, model.text_encoder,
                             **settings)  # fmt: skip
        shared = vae is not None and not Path(vae).exists()  # a built-in name
        save = partial(pipe.save_pretrained, shared_vae=str(vae) if shared else None)
        heldout = {"clips": len(heldout), "seed": d["heldout_seed"], **figures}
        return Package(save, step, heldout, {"exported_vae": None if vae is None else str(vae)})
