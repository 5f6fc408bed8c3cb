"""A Self-Forcing (or CausVid) checkpoint + a diffusers Wan 2.1 T2V folder → one pipeline folder.

    mdiff convert self_forcing_dmd.pt sf-pipeline --self-forcing --base Wan2.1-T2V-1.3B-Diffusers

writes (`write_self_forcing_folder`)

    pipeline.json    components: vae CausalVAE, dit CausalWanDenoiser, text_encoder WanT5Encoder;
                     chunking {"chunk_frames": 3}; settings: SELF_FORCING_SETTINGS, 81 frames
                     of 480 × 832 at 16 fps (their inference: 21 latent frames)
    dit/             config.json (the base's transformer config), the converted weights
                     (diffusion_pytorch_model.safetensors, diffusers names), causal_config.json
    vae/             the base's vae/ files
    text_encoder/    the base's text_encoder/ files, tokenizer/ and text_encoder.json

so ``VideoPipeline.from_pretrained(OUT)`` and ``mdiff video PROMPT --model OUT --stream`` run
it with the Self-Forcing recipe. The weights come from ``generator_ema`` (their inference with
``--use_ema``) when the file has it, else ``generator``, else `key`; the key layout is found by
`wan_keys.find_layout` (``model.`` + original Wan names in their files). The base's VAE and text
encoder files are hard-linked (no second copy on disk; a file the base replaces later stays
as it was here) or copied when linking is impossible (another file system) or `copy` is set.

Self-Forcing's inference settings (configs/self_forcing_dmd.yaml, default_config.yaml,
utils/wan_wrapper.py of their repository): num_frame_per_block 3, denoising_step_list
[1000, 750, 500, 250] warped by timestep_shift 5, context_noise 0, local_attn_size -1 (the
whole clip) and sink_size 0, guidance baked in.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from mdiff import hub
from mdiff.atomic import atomic_dir
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.video.dit.wan import WanTransformer, WanTransformerConfig
from mdiff.video.dit.wan_causal import CausalWanConfig
from mdiff.video.dit.wan_keys import to_diffusers
from mdiff.video.pipeline import diffusers_folder, folder
from mdiff.video.pipeline.causal_wan import CAUSAL_CONFIG, SELF_FORCING_SETTINGS, SELF_FORCING_STEPS
from mdiff.video.pipeline.request import PipelineSettings
from mdiff.video.text_encoders.hf import HF_SETTINGS
from mdiff.video.text_encoders.wan_t5 import MAX_SEQUENCE_LENGTH, TOKENIZER_DIR

__all__ = ["SELF_FORCING_CAUSAL", "SELF_FORCING_PIPELINE", "write_self_forcing_folder"]

SELF_FORCING_CAUSAL = dict(num_frame_per_block=3, local_attn_size=-1, sink_size=0)
SELF_FORCING_PIPELINE = dict(SELF_FORCING_SETTINGS, num_frames=81, height=480, width=832)
WEIGHT_SETS = ("generator_ema", "generator")  # preferred first, as their --use_ema


def _weights(src: Path, key: str | None) -> tuple[dict, str]:
    from mdiff.convert import find_weights_in, load_checkpoint

    obj = load_checkpoint(src)
    if key is None and isinstance(obj, dict):
        key = next((k for k in WEIGHT_SETS if isinstance(obj.get(k), dict)), None)
    return find_weights_in(obj, key, src), key or "(top level)"


def _base_transformer_config(base: Path) -> tuple[dict, WanTransformerConfig]:
    index = diffusers_folder.read_index(base)
    diffusers_folder.check_components(base, index)
    kind = index["_class_name"] + (
        " with expand_timesteps" if index.get("expand_timesteps") else ""
    )
    if kind != "WanPipeline":
        raise CheckpointError(f"{base}: the base of a Self-Forcing model is a Wan 2.1 "
                              f"text-to-video folder (WanPipeline), not a {kind}")  # fmt: skip
    raw = hub.read_json_object(base / "transformer" / hub.CONFIG_NAME)
    config = hub.read_config(WanTransformerConfig, base / "transformer")
    if config.image_dim is not None:
        raise CheckpointError(f"{base}/transformer has an image branch: not a T2V base")
    return raw, config


def _place(src: Path, dst: Path, copy: bool) -> str:
    """Hard-link (or copy) the file `src` to `dst`; returns "linked" or "copied"."""
    real = src.resolve()
    if not copy:
        try:
            os.link(real, dst)
            return "linked"
        except OSError:
            pass
    shutil.copy2(real, dst)
    return "copied"


def _place_files(src_dir: Path, dst_dir: Path, copy: bool) -> set[str]:
    dst_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src_dir.iterdir() if p.is_file())
    if not files:
        raise CheckpointError(f"{src_dir} is empty")
    return {_place(p, dst_dir / p.name, copy) for p in files}


def write_self_forcing_folder(src, dst, base, *, key: str | None = None,
                              num_frame_per_block: int = 3, local_attn_size: int = -1,
                              sink_size: int = 0, copy: bool = False,
                              force: bool = False) -> Path:  # fmt: skip
    """Write the pipeline folder `dst` of the Self-Forcing checkpoint `src` (a pickled state
    dict, read without running code) on the diffusers Wan 2.1 T2V folder `base` (module
    docstring). Returns `dst`."""
    src, dst, base = Path(src), Path(dst), Path(base)
    if dst.exists() and not force:
        raise InvalidInputError(f"{dst} exists; pass --force to replace it")
    if not (base / diffusers_folder.MODEL_INDEX).is_file():
        raise CheckpointError(f"--base {base} is not a diffusers Wan folder (no model_index.json)")
    raw, config = _base_transformer_config(base)
    state, chosen = _weights(src, key)
    state = to_diffusers(state, f"{src} [{chosen}]")
    with torch.device("meta"):
        hub.check_state_dict(WanTransformer(config), state, f"{src} [{chosen}] (base {base})")
    causal = dict(num_frame_per_block=num_frame_per_block, local_attn_size=local_attn_size,
                  sink_size=sink_size, denoising_step_list=list(SELF_FORCING_STEPS),
                  timestep_shift=SELF_FORCING_SETTINGS["shift"],
                  warp_denoising_step=True)  # fmt: skip
    CausalWanConfig(num_frame_per_block, local_attn_size, sink_size)  # checked
    settings = PipelineSettings(**SELF_FORCING_PIPELINE).to_dict()  # checked
    components = {"vae": {"class": "CausalVAE", "path": "vae"},
                  "dit": {"class": "CausalWanDenoiser", "path": "dit"},
                  "text_encoder": {"class": "WanT5Encoder", "path": "text_encoder"}}  # fmt: skip
    spec = folder.make_spec(components, settings, num_frame_per_block)
    spec["converted_from"] = {"checkpoint": src.name, "key": chosen, "base": base.name}
    # the VAE / text encoder files: "linked" or "copied" (set below)
    with atomic_dir(dst) as tmp:
        (tmp / "dit").mkdir()
        (tmp / "dit" / hub.CONFIG_NAME).write_text(json.dumps(raw, indent=2) + "\n")
        (tmp / "dit" / CAUSAL_CONFIG).write_text(json.dumps(causal, indent=2) + "\n")
        meta = {"format": "pt", "converted_from": src.name, "key": chosen}
        hub.save_state_dict(state, tmp / "dit" / hub.DIFFUSERS_WEIGHTS_NAME, meta)
        how = _place_files(base / "vae", tmp / "vae", copy)
        how |= _place_files(base / "text_encoder", tmp / "text_encoder", copy)
        how |= _place_files(base / "tokenizer", tmp / "text_encoder" / TOKENIZER_DIR, copy)
        spec["converted_from"]["base_files"] = " and ".join(sorted(how))
        te = {"_class_name": "WanT5Encoder", "max_length": MAX_SEQUENCE_LENGTH}
        (tmp / "text_encoder" / HF_SETTINGS).write_text(json.dumps(te, indent=2) + "\n")
        text = json.dumps(spec, indent=2, sort_keys=True) + "\n"
        (tmp / folder.PIPELINE_FILE).write_text(text, encoding="utf-8")
    return dst
