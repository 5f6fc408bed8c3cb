"""A diffusers Wan pipeline folder as a `VideoPipeline` (read only, weights unchanged).

    model_index.json   {"_class_name": "WanPipeline", "transformer": ["diffusers",
                        "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"],
                        "text_encoder": ["transformers", "UMT5EncoderModel"],
                        "tokenizer": ["transformers", ...], "scheduler": ["diffusers", ...],
                        "transformer_2": [null, null], "boundary_ratio": null, ...}
    transformer/ vae/ text_encoder/ tokenizer/ scheduler/

Components: `WanTransformer` (its diffusers folder, `dtype` applied as diffusers keeps fp32
parts) behind `WanDenoiser` (the sampling loop's DiT face and the scheduler's timesteps),
`CausalVAE` (AutoencoderKLWan, Wan 2.1 or 2.2), `WanT5Encoder` (transformers' UMT5 encoder and
tokenizer, WanPipeline's 512-token zero padding and "" negative prompt) and the scheduler read
by `schedulers.DiffusersSchedule` (UniPC → "unipc", DPM-Solver++ → "dpmpp_2m", FlowMatchEuler
→ "euler", with its shift). The settings are WanPipeline's defaults: 50 steps, guidance 5
(diffusers' ``guidance_scale`` is our w: ``u + w(c − u)``; they skip the unconditional branch
for w ≤ 1, we for w = 1 only), 81 frames of 480 × 832 at 16 fps.

Image to video, both as diffusers does it: a Wan 2.2 TI2V folder (``expand_timesteps`` true)
takes ``image=`` as the known first latent frame (see `wan_adapter`); a Wan 2.1
`WanImageToVideoPipeline` folder adds ``image_encoder`` (transformers' CLIPVisionModel) and
``image_processor`` (CLIPImageProcessor) and needs ``image=``: its CLIP states and the frame
mask + image latents enter the transformer (`WanDenoiser.image_inputs`).

Refused with `CheckpointError` naming what: another pipeline class (WanVACEPipeline, ...),
first/last-frame (FLF2V) transformers, Wan 2.2's two-expert folders (``transformer_2`` /
``boundary_ratio``): not supported yet; a component of another class, an unsupported
scheduler setting.
"""

from __future__ import annotations

from pathlib import Path

from mdiff import hub
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.video.dit.wan import WanTransformer
from mdiff.video.dit.wan_keys import LAYOUTS, find_layout
from mdiff.video.pipeline.schedulers import DiffusersSchedule
from mdiff.video.pipeline.wan_adapter import WanDenoiser
from mdiff.video.text_encoders.wan_t5 import WanT5Encoder, load_umt5
from mdiff.video.vae.model import CausalVAE

__all__ = ["MODEL_INDEX", "check_components", "is_diffusers_folder", "load_wan", "read_index"]

MODEL_INDEX = "model_index.json"
PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")
I2V = {  # Wan 2.1 image-to-video: CLIP image states (a TI2V folder has neither: null)
    "image_encoder": ("transformers", ("CLIPVisionModel",)),
    "image_processor": (
        "transformers",
        ("CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPImageProcessorPil"),
    ),
}
EXPECTED = {  # component -> (library, accepted classes)
    "transformer": ("diffusers", ("WanTransformer3DModel",)),
    "vae": ("diffusers", ("AutoencoderKLWan",)),
    "text_encoder": ("transformers", ("UMT5EncoderModel",)),
    "scheduler": ("diffusers", None),  # checked by DiffusersSchedule
    "tokenizer": ("transformers", None),  # any tokenizer AutoTokenizer reads
}
INDEX_KEYS = {*EXPECTED, *I2V, "transformer_2", "boundary_ratio", "expand_timesteps"}
WAN_DEFAULTS = dict(steps=50, guidance=5.0, fps=16.0, num_frames=81, height=480, width=832)


def is_diffusers_folder(directory: Path) -> bool:
    """A folder with diffusers' ``model_index.json`` (and none of our ``pipeline.json``)."""
    return (directory / MODEL_INDEX).is_file()


def read_index(directory: Path) -> dict:
    """``model_index.json``, checked: a supported pipeline class and component classes."""
    path = directory / MODEL_INDEX
    index = hub.read_json_object(path)
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise CheckpointError(
            f"{path}: pipeline class {name!r} is not supported; mdiff reads {list(PIPELINES)} "
            "folders (Wan text- and image-to-video)"
        )
    unknown = sorted(k for k in index if not k.startswith("_") and k not in INDEX_KEYS)
    if unknown:
        raise CheckpointError(f"{path} has keys unknown to mdiff's Wan pipelines: "
                              f"{', '.join(unknown)} (known: {sorted(INDEX_KEYS)})")  # fmt: skip
    second = index.get("transformer_2")  # absent or [null, null] in single-expert folders
    if second not in (None, [None, None]) or index.get("boundary_ratio") is not None:
        raise CheckpointError(f"{path}: Wan 2.2 two-expert folders (transformer_2, boundary_ratio;"
                              " the A14B models) are not supported")  # fmt: skip
    expected = dict(EXPECTED)
    if name == "WanImageToVideoPipeline" and _listed(index, "image_encoder"):
        expected.update(I2V)
    for component, (library, classes) in expected.items():
        entry = index.get(component)
        ok = isinstance(entry, list) and len(entry) == 2 and entry[0] == library
        if not ok or (classes is not None and entry[1] not in classes):
            want = f"{library} {' / '.join(classes)}" if classes else f"a {library} class"
            raise CheckpointError(f"{path}: component {component} is {entry!r}; mdiff reads "
                                  f"{want}")  # fmt: skip
        if not (directory / component).is_dir():
            raise CheckpointError(f"{directory} has no {component}/ folder")
    return index


def _text_encoder(directory: Path, device) -> WanT5Encoder:
    model, tokenizer = load_umt5(directory / "text_encoder", directory / "tokenizer")
    return WanT5Encoder(model, tokenizer).to(device=device).eval()


def check_components(directory: Path, index: dict) -> None:
    """Each diffusers component's own ``config.json`` names the class the index does (an
    unsupported `_class_name` is refused by name), and the transformer's weights are in a Wan
    key layout (`wan_keys.find_layout`)."""
    for component in ("transformer", "vae"):
        path = directory / component / hub.CONFIG_NAME
        saved = hub.read_json_object(path).get("_class_name") if path.is_file() else None
        supported = EXPECTED[component][1]
        if saved not in supported:
            raise CheckpointError(f"{path}: class {saved!r} is not supported; mdiff reads "
                                  f"{component} folders of {list(supported)}")  # fmt: skip
    config = hub.read_json_object(directory / "transformer" / hub.CONFIG_NAME)
    if config.get("pos_embed_seq_len") is not None:  # refused before any weight is read
        raise CheckpointError(f"{directory}/transformer is a first/last-frame (FLF2V) Wan "
                              "transformer (pos_embed_seq_len): not supported yet")  # fmt: skip
    weights = hub.find_weights(directory / "transformer")
    layout, prefix = find_layout(hub.header_shapes(weights), str(weights))
    if (layout, prefix) != ("diffusers", ""):
        raise CheckpointError(
            f"{weights} holds {LAYOUTS[layout]}"
            f"{f' under the prefix {prefix!r}' if prefix else ''}, not the diffusers names a "
            "diffusers folder has: convert it with `mdiff convert IN OUT --config CONFIG`"
        )


def _listed(index: dict, component: str) -> bool:
    """Whether ``model_index.json`` names a class for `component` (not absent, not null)."""
    entry = index.get(component)
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None


def _image_encoder(directory: Path, processor_class: str, device):
    """Wan 2.1 I2V's CLIP vision tower and image processor (transformers' folders; the
    processor of the class the index names, as diffusers loads it)."""
    import transformers

    try:
        encoder = transformers.CLIPVisionModel.from_pretrained(
            directory / "image_encoder", local_files_only=True, use_safetensors=True
        )
        processor = getattr(transformers, processor_class).from_pretrained(
            directory / "image_processor", local_files_only=True
        )
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot load the image encoder of {directory}: {e}") from e
    return encoder.to(device=device).eval().requires_grad_(False), processor


def load_wan(directory: Path, *, device=None, dtype=None, stamper=None, model_id=None):
    """The `VideoPipeline` of a diffusers WanPipeline folder; `dtype` applies to the
    transformer (its fp32 parts kept)."""
    from mdiff.video.pipeline.video_pipeline import VideoPipeline

    index = read_index(directory)
    check_components(directory, index)
    config = hub.read_json_object(directory / "scheduler" / "scheduler_config.json")
    schedule = DiffusersSchedule.from_config(config, str(directory / "scheduler"))
    transformer = WanTransformer.from_pretrained(directory / "transformer", device, dtype)
    encoder = processor = None
    if _listed(index, "image_encoder"):
        encoder, processor = _image_encoder(directory, index["image_processor"][1], device)
    if transformer.config.pos_embed_seq_len is not None:
        raise CheckpointError(f"{directory}/transformer is a first/last-frame (FLF2V) Wan "
                              "transformer (pos_embed_seq_len): not supported yet")  # fmt: skip
    if (transformer.config.image_dim is None) != (encoder is None):
        raise CheckpointError(f"{directory}: an image branch in the transformer (image_dim) needs "
                              "an image_encoder, and the other way round")  # fmt: skip
    expand = bool(index.get("expand_timesteps"))
    dit = WanDenoiser(transformer, schedule, expand_timesteps=expand, image_encoder=encoder,
                      image_processor=processor)  # fmt: skip
    vae = CausalVAE.from_pretrained(directory / "vae", device=device)
    text_encoder = _text_encoder(directory, device)
    settings = dict(WAN_DEFAULTS, solver=schedule.solver, shift=schedule.shift)
    try:
        return VideoPipeline(vae, dit, text_encoder, model_id=model_id or str(directory),
                             stamper=stamper, **settings)  # fmt: skip
    except InvalidInputError as e:
        raise CheckpointError(f"{directory} is not a valid Wan pipeline: {e}") from e
