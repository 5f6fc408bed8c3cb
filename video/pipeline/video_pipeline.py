"""`VideoPipeline`: text (and image) to video with a causal VAE, a space-time DiT and a text
encoder, offline or streamed, every output watermarked and signed.

    pipe = VideoPipeline.from_pretrained("shapes-t2v")       # built-in name or a folder
    out = pipe("a red circle moving right", num_frames=17, seed=0)
    out.save("circle.mp4")                                   # C2PA-signed MP4
    pipe("a blue square", num_frames=1).save("square.png")   # an image is one frame
    for chunk in pipe.stream("a red circle moving right"):   # block-causal DiTs
        show(chunk.frames)                                   # uint8 (n, H, W, 3), watermarked
    pipe.stream_to("live.mp4", "a red circle moving right")  # live fMP4, signed when done
    pipe("a red circle", image="first.png")                  # image-to-video
    pipe.extend(clip, "the circle keeps moving", num_frames=16)   # continue a clip

Sampling (`sampling`): flow matching from noise (t = 0) to data (t = 1) with
a core solver on a shifted grid, guidance (`guidance_method`: "cfg", "cfg_zero_star" or "apg",
the core's scale convention, 1 = off) against the text encoder's null embedding (or a
negative prompt), the whole clip at once for a bidirectional DiT, chunk by chunk
with a KV cache for a block-causal one. For a block-causal DiT `pipe(...)` is literally the
stream joined, so the stream concatenated equals the offline output exactly. Image-to-video and
extension give the first latent frames (the encoded image, the prefix clip) and keep them clean.

A pipeline folder holds `pipeline.json` (component classes and subfolders, sampler settings)
and one checkpoint folder per component: `vae/`, `dit/`, `text_encoder/` (see `folder`).
`from_pretrained` also reads diffusers' Wan folders, text- and image-to-video
(`diffusers_folder`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from mdiff import hub
from mdiff.atomic import atomic_dir, check_target
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.provenance.stamp import Stamped, Stamper
from mdiff.provenance.watermark.pixel import MotionTrack
from mdiff.record import GenerationRecord
from mdiff.video.dit.model import SpaceTimeDiT
from mdiff.video.pipeline import diffusers_folder, folder
from mdiff.video.pipeline.causal_wan import CausalWanDenoiser
from mdiff.video.pipeline.folder import COMPONENTS, PIPELINE_FILE
from mdiff.video.pipeline.request import Call, PipelineSettings, Request, prepare
from mdiff.video.pipeline.sampling import LatentChunk, Progress, sample_latents
from mdiff.video.pipeline.stream import (
    StreamSummary,
    VideoChunk,
    check_mp4_target,
    decode_chunks,
    write_live,
)
from mdiff.video.text_encoders import TextEncoder
from mdiff.video.vae.model import CausalVAE

__all__ = ["PIPELINE_FILE", "VideoOutput", "VideoPipeline"]


@dataclass(frozen=True)
class VideoOutput:
    """A finished generation: frames uint8 (T, H, W, 3), watermarked; one frame is an image."""

    frames: Tensor
    record: GenerationRecord
    fps: float
    latents: Tensor | None = None  # (1, C, T', h, w), known frames included (return_latents)
    stamped: Stamped | None = field(default=None, repr=False)
    stamper: Stamper | None = field(default=None, repr=False)
    sources: tuple[str, ...] = ()  # the input files it was made from (image, prefix clip)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write a signed file: .mp4 for a video, .png/.jpg for an image (atomically: a failed
        write leaves what was there). An existing file is replaced only with
        ``overwrite=True``, an input of the call never (`mdiff.atomic.check_target`)."""
        check_target(path, overwrite=overwrite, inputs=self.sources)
        return self.stamper.save(self.stamped, path)


class VideoPipeline:
    """A causal VAE, a `SpaceTimeDiT` and a text encoder, with sampler settings and a stamper."""

    def __init__(self, vae: CausalVAE, dit: SpaceTimeDiT, text_encoder: TextEncoder, *,
                 model_id: str = "mdiff-video", stamper: Stamper | None = None,
                 **settings) -> None:  # fmt: skip
        """`settings`: steps, shift, solver, guidance, guidance_method, fps and the default
        num_frames, height, width (see `PipelineSettings`)."""
        if dit.config.in_channels != vae.config.z_dim:
            raise InvalidInputError(
                f"the DiT takes {dit.config.in_channels} latent channels, the VAE makes "
                f"{vae.config.z_dim}"
            )
        if dit.config.text_dim != text_encoder.dim:
            raise InvalidInputError(
                f"the DiT takes text states of width {dit.config.text_dim}, the text encoder "
                f"gives {text_encoder.dim}"
            )
        self.vae, self.dit, self.text_encoder = vae.eval(), dit.eval(), text_encoder.eval()
        self.settings = PipelineSettings(**settings)
        self.model_id, self._stamper = model_id, stamper
        self.offload = None  # `enable_model_cpu_offload`

    # ---------------------------------------------------------------- properties

    @property
    def causal(self) -> bool:
        """Whether the DiT is block-causal (streams chunk by chunk with a KV cache)."""
        return self.dit.config.attention == "block_causal"

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @property
    def stamper(self) -> Stamper:
        if self._stamper is None:
            self._stamper = Stamper()
        return self._stamper

    @cached_property
    def weights_sha256(self) -> str:
        """One provenance hash over every component's tensors (names prefixed by component)."""
        tensors = {
            f"{name}.{key}": value
            for name in COMPONENTS
            for key, value in hub.module_tensors(getattr(self, name)).items()
        }
        return hub.weights_sha256(tensors)

    def to(self, device=None, dtype=None) -> VideoPipeline:
        """Move every component to `device`; `dtype` applies to the DiT only (the VAE and the
        text encoder keep their precision)."""
        self.vae.to(device=device)
        self.text_encoder.to(device=device)
        self.dit.to(device=device, dtype=dtype)
        if dtype is not None:
            self.__dict__.pop("weights_sha256", None)  # the record names the weights in use
        return self

    def enable_model_cpu_offload(self, device="cuda", offload_device="cpu") -> VideoPipeline:
        """Keep the components on `offload_device`; each moves to `device` only while it runs
        (`offload.ModelOffload`; same outputs, less GPU memory, transfers every chunk)."""
        from mdiff.video.pipeline.offload import ModelOffload

        self.disable_model_cpu_offload()
        parts = {name: getattr(self, name) for name in COMPONENTS}
        self.offload = ModelOffload(parts, device, offload_device)
        return self

    def disable_model_cpu_offload(self) -> VideoPipeline:
        if self.offload is not None:
            self.offload.remove()
        self.offload = None
        return self

    # ---------------------------------------------------------------- generation

    def __call__(self, prompt, num_frames: int | None = None, height: int | None = None,
                 width: int | None = None, *, callback: Callable[[Progress], object] | None = None,
                 return_latents: bool = False, **options) -> VideoOutput:  # fmt: skip
        """Generate one clip (or image, `num_frames=1`) for `prompt`.

        `num_frames` must be 1 + 4k (the new frames, a multiple of 4, with `prefix`); height
        and width multiples of 8·patch. `options` (the fields of `request.Call`): ``steps``,
        ``guidance``, ``guidance_method`` ("cfg", "cfg_zero_star", "apg"), ``seed`` (default 0;
        or a ``generator`` to draw it from), ``image``, ``prefix``, ``negative_prompt``,
        ``latents`` (the initial noise (1, C, T', h, w), diffusers' ``latents=``). Unset
        sizes, steps and guidance come from the settings (sizes from `image` / `prefix` when
        given). `image` (a path or uint8 (H, W, 3)) becomes the first frame; `prefix` (a path or
        uint8 (T, H, W, 3)) is a clip to continue, and only the new frames are returned.
        `callback(Progress)` runs after every solver step.
        """
        req = self._prepare(Call.of(prompt, num_frames, height, width, options))
        latents: list[LatentChunk] = []
        chunks = list(self._chunks(req, callback, latents.append))
        stamped = self.stamper.join([c.stamped for c in chunks])
        all_latents = torch.cat([c.latents for c in latents], dim=2) if return_latents else None
        return VideoOutput(stamped.frames, stamped.record, req.fps, all_latents, stamped,
                           self.stamper, req.sources)  # fmt: skip

    def stream(self, prompt, num_frames: int | None = None, height: int | None = None,
               width: int | None = None, *, callback: Callable[[Progress], object] | None = None,
               **options) -> Iterator[VideoChunk]:  # fmt: skip
        """Chunks of the clip `pipe(...)` makes with the same arguments, each yielded (decoded,
        watermarked) as soon as its latents are final. Needs a block-causal DiT. The inputs
        are checked here, before the first chunk is asked for."""
        if not self.causal:
            raise InvalidInputError(
                "stream() needs a block-causal DiT (attention='block_causal'); this pipeline's "
                "DiT is bidirectional and makes the whole clip at once: call the pipeline instead"
            )
        req = self._prepare(Call.of(prompt, num_frames, height, width, options))
        return self._chunks(req, callback)

    def stream_to(self, path: str | os.PathLike, prompt, num_frames: int | None = None, *,
                  overwrite: bool = False, **kwargs) -> StreamSummary:  # fmt: skip
        """Stream into a live fragmented MP4 at `path` (readable while it grows) and sign it
        when finished; an interruption leaves a playable, signed file of the finished chunks
        (see `stream.write_live`). An existing file is replaced only with ``overwrite=True``
        (and survives until the new one is signed), an input of the call never. Takes the
        arguments of `stream`; returns frames, time to first frame and fps."""
        check_mp4_target(path)  # before any work
        inputs = [kwargs.get(k) for k in ("image", "prefix")]
        inputs = [p for p in inputs if isinstance(p, str | os.PathLike)]
        check_target(path, overwrite=overwrite, inputs=inputs)
        chunks = self.stream(prompt, num_frames, **kwargs)
        return write_live(path, chunks, self.stamper, fps=self.settings.fps)

    def extend(self, video, prompt, num_frames: int | None = None, **kwargs) -> VideoOutput:
        """Continue `video` (a path or uint8 (T, H, W, 3) with 1 + 4k frames) by `num_frames`
        new frames (a multiple of 4): its latents are given (prefilled into the KV cache of a
        block-causal DiT at t = 1) and only the new frames are returned."""
        return self(prompt, num_frames, prefix=video, **kwargs)

    def _prepare(self, call: Call) -> Request:
        return prepare(self, call)

    def _chunks(self, req: Request, callback, on_latents=None) -> Iterator[VideoChunk]:
        latents = sample_latents(self.dit, req.plan, req.text, callback=callback)
        if on_latents is not None:
            latents = _tee(latents, on_latents)

        track = MotionTrack()  # the mark follows the camera across the chunks

        def stamp(frames: Tensor) -> Stamped:
            return self.stamper.frames(frames, req.record, fps=req.fps, track=track)

        return decode_chunks(self.vae, latents, stamp, skip_frames=req.skip_frames)

    # ---------------------------------------------------------------- checkpoints

    def save_pretrained(self, directory: str | os.PathLike, *,
                        shared_vae: str | None = None) -> Path:  # fmt: skip
        """Write `pipeline.json` and `vae/`, `dit/`, `text_encoder/` into `directory`,
        atomically (see `mdiff.video.pipeline.folder`). `shared_vae`: the name of the built-in
        VAE this pipeline's VAE is, referenced by name and weights hash instead of copied."""
        if not isinstance(self.dit, SpaceTimeDiT | CausalWanDenoiser):
            raise InvalidInputError(
                f"save_pretrained writes pipelines of a SpaceTimeDiT or a CausalWanDenoiser; this "
                f"one's DiT is a {type(self.dit).__name__} (a diffusers Wan folder: use that "
                "folder as it is)"
            )
        spec = folder.spec(self, shared_vae)
        with atomic_dir(directory) as tmp:
            for name in COMPONENTS:
                if not (name == "vae" and shared_vae is not None):
                    getattr(self, name).save_pretrained(tmp / name)
            text = json.dumps(spec, indent=2, sort_keys=True) + "\n"
            (tmp / PIPELINE_FILE).write_text(text, encoding="utf-8")
        return Path(directory)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device=None, dtype=None,
                        stamper: Stamper | None = None) -> VideoPipeline:  # fmt: skip
        """Load a pipeline folder (or a built-in name), or a diffusers Wan pipeline folder
        (``model_index.json``, see `diffusers_folder`); `dtype` applies to the DiT."""
        directory = hub.resolve(name_or_path)
        if diffusers_folder.is_diffusers_folder(directory):  # a diffusers WanPipeline folder
            return diffusers_folder.load_wan(directory, device=device, dtype=dtype,
                                             stamper=stamper)  # fmt: skip
        spec = folder.read_spec(directory)
        parts = {name: folder.load_component(directory, name, spec, device)
                 for name in COMPONENTS}  # fmt: skip
        parts["dit"].to(dtype=dtype)
        model_id = str(directory) if Path(name_or_path).exists() else str(name_or_path)
        try:
            return cls(**parts, model_id=model_id, stamper=stamper, **spec.get("settings", {}))
        except (InvalidInputError, TypeError) as e:
            raise CheckpointError(f"{directory} is not a valid video pipeline: {e}") from e


def _tee(chunks: Iterator[LatentChunk], sink) -> Iterator[LatentChunk]:
    for chunk in chunks:
        sink(chunk)
        yield chunk
