"""One call of the video pipeline, checked and resolved: sampler settings, the latent plan, the
text condition and the `GenerationRecord` every chunk of the output is stamped with."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mdiff import media
from mdiff.errors import InvalidInputError
from mdiff.record import GenerationRecord
from mdiff.solvers import SOLVERS
from mdiff.video.io import frames_to_pixels
from mdiff.video.pipeline.inputs import (
    check_frames_count,
    check_guidance,
    check_guidance_method,
    check_latents,
    check_matches,
    check_size,
    check_steps,
    check_text,
    load_clip,
    load_image,
    one_prompt,
    resolve_seed,
)
from mdiff.video.pipeline.sampling import LatentPlan, TextCondition

if TYPE_CHECKING:
    from mdiff.video.pipeline.video_pipeline import VideoPipeline

__all__ = ["Call", "PipelineSettings", "Request", "prepare"]


SAMPLER = "mdiff.video/flow-matching"


@dataclass
class PipelineSettings:
    """Sampler settings and default sizes, saved in `pipeline.json`."""

    steps: int = 20
    shift: float | str = 3.0  # SD3/Wan shift α > 0 (larger: more steps near noise), or "auto"
    solver: str = "euler"  # euler | midpoint | heun | unipc | dpmpp_2m (mdiff.solvers.SOLVERS)
    guidance: float = 5.0  # guidance scale w (1 = none): CFG is u + w(c − u)
    guidance_method: str = "cfg"  # cfg | cfg_zero_star | apg (mdiff.guidance)
    context_noise: float = 0.0  # block-causal: finished chunks are read re-noised to t = 1 − this
    fps: float = 16.0
    num_frames: int = 17
    height: int = 64
    width: int = 64

    def __post_init__(self):
        check_steps(self.steps)
        if self.shift != "auto" and not (
            isinstance(self.shift, int | float) and math.isfinite(self.shift) and self.shift > 0
        ):
            raise InvalidInputError(f"shift must be a number > 0 or 'auto', got {self.shift!r}")
        if self.solver not in SOLVERS and self.solver != "renoise":  # renoise: causal_wan
            known = sorted([*SOLVERS, "renoise"])
            raise InvalidInputError(f"unknown solver {self.solver!r}; one of {known}")
        check_guidance(self.guidance)
        check_guidance_method(self.guidance_method)
        c = self.context_noise
        if isinstance(c, bool) or not isinstance(c, int | float) or not 0 <= c < 1:
            raise InvalidInputError(f"context_noise must be a number in [0, 1), got {c!r}")
        media.check_fps(self.fps)
        for name in ("num_frames", "height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Call:
    """The arguments of one pipeline call as given; None takes the settings' default."""

    prompt: object
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    guidance_method: str | None = None
    seed: int = 0
    generator: torch.Generator | None = None
    image: object = None  # a path or uint8 (H, W, 3): the first frame
    prefix: object = None  # a path or uint8 (T, H, W, 3): a clip to continue
    negative_prompt: str | None = None
    latents: object = None  # (1, C, T', h, w) initial noise (diffusers' latents=), else drawn

    @classmethod
    def of(cls, prompt, num_frames, height, width, options: dict) -> Call:
        """The call a pipeline method was given: its positional arguments and keyword
        `options` (the other fields); an unknown keyword is an `InvalidInputError`."""
        known = [f.name for f in dataclasses.fields(cls)][4:]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InvalidInputError(
                f"unknown argument(s) {', '.join(unknown)}; the pipeline takes {', '.join(known)}"
            )
        return cls(prompt, num_frames, height, width, **options)


@dataclass(frozen=True)
class Request:
    plan: LatentPlan
    text: TextCondition
    record: GenerationRecord
    fps: float
    skip_frames: int  # output frames of a prefix clip, not returned
    sources: tuple[str, ...] = ()  # the input files (image, prefix clip) as given


def prepare(pipe: VideoPipeline, call: Call) -> Request:
    """Check every argument (see `mdiff.video.pipeline.inputs`) and resolve the defaults."""
    s, vae, dit = pipe.settings, pipe.vae, pipe.dit
    prompt, num_frames, height, width = call.prompt, call.num_frames, call.height, call.width
    image, prefix, negative_prompt = call.image, call.prefix, call.negative_prompt
    prompt = one_prompt(prompt)
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InvalidInputError(f"negative_prompt must be a str, got {type(negative_prompt)}")
    if negative_prompt is not None:
        check_text(negative_prompt, "negative_prompt")
    steps = check_steps(s.steps if call.steps is None else call.steps)
    guidance = check_guidance(s.guidance if call.guidance is None else call.guidance)
    method = s.guidance_method if call.guidance_method is None else call.guidance_method
    method = check_guidance_method(method)
    seed = resolve_seed(call.seed, call.generator)
    if image is not None and prefix is not None:
        raise InvalidInputError("pass image= (first frame) or prefix= (a clip to extend), not both")
    f, extending = vae.temporal_factor, prefix is not None
    given, source, what = None, None, "image" if image is not None else "prefix video"
    if image is not None:
        given, source = load_image(image)
    elif extending:
        given, source = load_clip(prefix, f)
    if given is not None:
        height = given.shape[1] if height is None else height
        width = given.shape[2] if width is None else width
    height = s.height if height is None else height
    width = s.width if width is None else width
    h, w = check_size(height, width, vae, dit)
    if given is not None:
        check_matches(given, height, width, what if source is None else f"{what} {source}")
    if num_frames is None:
        num_frames = s.num_frames - 1 if extending else s.num_frames
    check_frames_count(num_frames, f, extending=extending)

    takes_image = getattr(dit, "takes_image", False)  # the image in the DiT's inputs (Wan I2V)
    if takes_image and image is None:
        raise InvalidInputError("this pipeline makes video from an image: pass image=")
    known = None if given is None or takes_image else _encode(pipe, given)  # (1, C, P, h, w)
    n_known = 0 if known is None else known.shape[2]
    total = n_known + num_frames // f if extending else vae.latent_frames(num_frames)
    _check_layout(pipe, total, n_known)
    noise = None
    if call.latents is not None:
        noise = check_latents(call.latents, (1, vae.config.z_dim, total, h, w))
    inputs = dit.image_inputs(vae, given, num_frames) if takes_image else None
    time_grid = getattr(dit, "time_grid", None)  # a DiT with its scheduler's grid (Wan folders)
    grid = None if time_grid is None else time_grid(steps)
    plan = LatentPlan(total, vae.config.z_dim, h, w, steps, s.shift, s.solver, guidance, seed,
                      known, float(s.context_noise), method, grid, noise, inputs)  # fmt: skip
    text = _encode_text(pipe, prompt, negative_prompt)

    modality = "image" if num_frames == 1 and not extending else "video"
    sizes = {"width": width, "height": height}
    if modality == "video":
        sizes.update(frames=num_frames, fps=s.fps)
    cfg = {"kind": method, "scale": guidance} if guidance != 1 else {"kind": "none", "scale": 1.0}
    if negative_prompt is not None:  # that one was given; its text is as private as the prompt's
        cfg["negative_prompt"] = True
    extra = {"solver": s.solver, "shift": s.shift, "attention": dit.config.attention,
             "latent_frames": total, "noise": "per chunk: sha256(seed, chunk index)"}  # fmt: skip
    if noise is not None:
        digest = hashlib.sha256(noise.numpy().tobytes()).hexdigest()
        extra["noise"] = {"kind": "given (latents)", "sha256": digest}
    if grid is not None:
        schedule = getattr(dit, "schedule", None)  # its grid and model timesteps
        extra["scheduler"] = schedule.class_name if schedule is not None else dit.schedule_name
    if pipe.causal:
        extra["chunk_frames"] = dit.config.chunk_frames
        extra["context_noise"] = plan.context_noise
    if given is not None:
        digest = hashlib.sha256(given.contiguous().numpy().tobytes()).hexdigest()
        extra["conditioning"] = {"kind": what, "frames": given.shape[0], "sha256": digest}
    record = GenerationRecord.create(
        modality, pipe.model_id, prompt=prompt, weights_sha256=pipe.weights_sha256,
        sampler=f"{SAMPLER}/{s.solver}", steps=steps, guidance=cfg, seed=seed, sizes=sizes,
        inputs=(source,) if source else (), edited=given is not None, extra=extra,
    )  # fmt: skip
    skip = vae.pixel_frames(n_known) if extending else 0
    return Request(plan, text, record, s.fps, skip, (source,) if source else ())


def _encode(pipe: VideoPipeline, frames: Tensor) -> Tensor:
    """uint8 (T, H, W, 3) → normalised float32 latents (1, C, T', h, w) on the DiT's device."""
    v, d = next(pipe.vae.parameters()), next(pipe.dit.parameters())
    with torch.no_grad():
        z = pipe.vae.encode(frames_to_pixels(frames)[None].to(v.device, v.dtype))
    return z.to(d.device, torch.float32)


def _encode_text(pipe: VideoPipeline, prompt: str, negative_prompt: str | None) -> TextCondition:
    """The prompt's states and the unconditional branch's: the negative prompt's, else null."""
    te, d = pipe.text_encoder, next(pipe.dit.parameters())
    with torch.no_grad():
        emb, mask = te.encode([prompt])
        null, null_mask = te.null(1) if negative_prompt is None else te.encode([negative_prompt])
    states = (t.detach().to(d.device, d.dtype) for t in (emb, null))
    emb, null = states
    return TextCondition(emb, mask.to(d.device), null, null_mask.to(d.device))


def _check_layout(pipe: VideoPipeline, total: int, n_known: int) -> None:
    """Latent frame counts fit the DiT's temporal patch and attention span."""
    c = pipe.dit.config
    p_t = c.patch[0]
    if total % p_t or n_known % p_t:
        raise InvalidInputError(
            f"the DiT's temporal patch p_t={p_t} needs latent frame counts in multiples of "
            f"{p_t}; got {total} latent frames, {n_known} of them given"
        )
    span = total if c.window is None else min(total, c.window + c.chunk_frames)
    if span > c.max_frames:
        raise InvalidInputError(
            f"{total} latent frames need an attention span of {span} frames, more than the "
            f"DiT's max_frames={c.max_frames}; ask for fewer frames"
        )
