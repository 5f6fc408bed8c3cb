"""A video pipeline folder: ``pipeline.json`` and one checkpoint folder per component.

    pipeline.json   {"format": "mdiff-video-pipeline/1", "_class_name": "VideoPipeline",
                     "_mdiff_version": "0.1.0",
                     "components": {"vae": {"class": "CausalVAE", "path": "vae"}, ...},
                     "vae": "vae", "dit": "dit", "text_encoder": "text_encoder",
                     "text_encoder_class": "ShapesTextEncoder",
                     "chunking": null | {"chunk_frames": c},
                     "settings": {"steps", "shift", "solver", "guidance", ..., "width"}}
    vae/ dit/ text_encoder/   save_pretrained folders (a `WanT5Encoder`'s: UMT5 + tokenizer/)
    training_log.json         (an export of `mdiff train dit`) provenance only

`components` is what loading reads: each component's class and subfolder, or, for a component
shared with a built-in checkpoint (the shipped VAE, which would double the package size),
``{"class", "builtin": name, "sha256": weights hash}``; loading refuses a built-in whose weights
changed since. The flat names (``vae``, ``dit``, ``text_encoder``: a subfolder or built-in name,
and ``text_encoder_class``) repeat it for readers of the first files, and ``chunking`` says how
a block-causal DiT streams (its ``chunk_frames``, also in ``dit/config.json``; null for a
bidirectional DiT). ``settings`` are the sampler defaults (`PipelineSettings`). `spec` is the
one writer of this file (`VideoPipeline.save_pretrained`, which the DiT export calls); files
of either earlier writer (without the flat names and ``chunking``, or without some settings)
load the same.
"""

from __future__ import annotations

from pathlib import Path

import mdiff
from mdiff import hub
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.video.dit.model import SpaceTimeDiT
from mdiff.video.pipeline.causal_wan import CausalWanDenoiser
from mdiff.video.text_encoders import ShapesTextEncoder
from mdiff.video.text_encoders.hf import HFTextEncoder
from mdiff.video.text_encoders.wan_t5 import WanT5Encoder
from mdiff.video.vae.model import CausalVAE

__all__ = ["COMPONENTS", "PIPELINE_FILE", "PIPELINE_FORMAT", "load_component", "make_spec",
           "read_spec", "spec"]  # fmt: skip

PIPELINE_FILE = "pipeline.json"
PIPELINE_FORMAT = "mdiff-video-pipeline/1"
COMPONENTS = ("vae", "dit", "text_encoder")
CLASSES = {c.__name__: c for c in (CausalVAE, SpaceTimeDiT, ShapesTextEncoder, HFTextEncoder,
                                   WanT5Encoder, CausalWanDenoiser)}  # fmt: skip


def spec(pipe, shared_vae: str | None = None) -> dict:
    """The ``pipeline.json`` of `pipe` (a `VideoPipeline`); `shared_vae` names the built-in VAE
    that `pipe.vae` is, to reference instead of copying (`InvalidInputError` if it is not)."""
    components = {name: {"class": type(getattr(pipe, name)).__name__, "path": name}
                  for name in COMPONENTS}  # fmt: skip
    if shared_vae is not None:
        sha = hub.weights_sha256(pipe.vae)
        if sha != hub.weights_sha256(hub.builtin(shared_vae)):
            raise InvalidInputError(f"the pipeline's VAE is not the built-in {shared_vae!r}")
        components["vae"] = {"class": components["vae"]["class"], "builtin": shared_vae,
                             "sha256": sha}  # fmt: skip
    chunk = pipe.dit.config.chunk_frames if pipe.causal else None
    return make_spec(components, pipe.settings.to_dict(), chunk, type(pipe).__name__)


def make_spec(components: dict, settings: dict, chunk_frames: int | None,
              class_name: str = "VideoPipeline") -> dict:  # fmt: skip
    """``pipeline.json`` from its parts: `components` {name: {"class", "path" | "builtin"}},
    the sampler `settings`, a block-causal DiT's `chunk_frames` (None: bidirectional)."""
    if set(components) != set(COMPONENTS):
        raise InvalidInputError(f"a pipeline has the components {list(COMPONENTS)}")
    return {
        "format": PIPELINE_FORMAT,
        "_class_name": class_name,
        "_mdiff_version": mdiff.__version__,
        "components": components,
        **{name: entry.get("path", entry.get("builtin")) for name, entry in components.items()},
        "text_encoder_class": components["text_encoder"]["class"],
        "chunking": None if chunk_frames is None else {"chunk_frames": chunk_frames},
        "settings": dict(settings),
    }


def read_spec(directory: Path) -> dict:
    """A pipeline folder's ``pipeline.json``, checked: an object with ``components``, ours."""
    path = directory / PIPELINE_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {PIPELINE_FILE}: not a video pipeline folder")
    found = hub.read_json_object(path)
    if not isinstance(found.get("components"), dict):
        raise CheckpointError(f"{path} must be an object with a 'components' object")
    if found.get("format", PIPELINE_FORMAT) != PIPELINE_FORMAT:
        raise CheckpointError(f"{path} has format {found['format']!r}; this mdiff reads "
                              f"{PIPELINE_FORMAT!r}")  # fmt: skip
    settings = found.get("settings", {})
    if not isinstance(settings, dict):
        raise CheckpointError(f"settings in {path} must be an object")
    return found


def load_component(directory: Path, name: str, found: dict, device):
    """Component `name` of the pipeline folder `directory` (its spec `found`)."""
    entry = found["components"].get(name)
    if not isinstance(entry, dict) or entry.get("class") not in CLASSES:
        raise CheckpointError(
            f"{directory / PIPELINE_FILE} must name the {name} component's class, one of "
            f"{sorted(CLASSES)}; got {entry!r}"
        )
    if "builtin" in entry:  # shared with another built-in (the shipped VAE), not copied
        folder = hub.builtin(str(entry["builtin"]))
        if entry.get("sha256") not in (None, hub.weights_sha256(folder)):
            raise CheckpointError(
                f"{directory / PIPELINE_FILE} was trained with other weights of the built-in "
                f"{entry['builtin']!r} than the ones installed (sha256 differs)"
            )
        return CLASSES[entry["class"]].from_pretrained(folder, device=device)
    sub = Path(str(entry.get("path", name)))
    if sub.is_absolute() or ".." in sub.parts:
        raise CheckpointError(f"component path {sub} must be a subfolder of {directory}")
    return CLASSES[entry["class"]].from_pretrained(directory / sub, device=device)
