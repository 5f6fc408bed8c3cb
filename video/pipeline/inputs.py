"""Input rules of the video pipeline: each broken rule raises `InvalidInputError` naming it.

    num_frames     1 + 4k (1, 5, 9, 17, …) for a new clip; a positive multiple of 4 (the new
                   frames) when extending a prefix clip, which itself has 1 + 4k frames; at
                   most `MAX_NUM_FRAMES` (10 000, what the readers read back)
    height, width  positive multiples of 8 · patch (the VAE's spatial factor times the DiT's
                   patch), at least 32 px (the watermark's smallest frame), latent size within
                   the DiT's max_size
    prompt         one str (a list of exactly one str) of valid UTF-8 text, not blank
    steps          an int in [1, `MAX_STEPS`] (1000)
    guidance       a number in [0, `MAX_GUIDANCE`] (100; 1 = no guidance): past that the
                   combination only overflows (1e308 gave an all-black clip)
    guidance_method  "cfg", "cfg_zero_star" or "apg" (`mdiff.guidance.METHODS`)
    seed           an int in [0, 2⁶³), or drawn from a torch.Generator
    image          a path to an existing image file, or uint8 (H, W, 3); sets the size if none
                   is given, else must match it
    latents        the initial noise, a finite float tensor (1, C, T', h, w) in diffusers'
                   layout, exactly the clip's latent shape

The checks run before any model work, so a bad call fails at once and writes nothing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mdiff import media
from mdiff.errors import InvalidInputError
from mdiff.guidance import METHODS
from mdiff.provenance.watermark.pixel import MIN_EMBED_SIDE
from mdiff.record import check_seed
from mdiff.video.io import read_video
from mdiff.video.text_encoders import check_prompts

__all__ = [
    "MAX_GUIDANCE",
    "MAX_NUM_FRAMES",
    "MAX_STEPS",
    "check_frames_count",
    "check_matches",
    "check_guidance",
    "check_guidance_method",
    "check_latents",
    "check_size",
    "check_steps",
    "check_text",
    "load_clip",
    "load_image",
    "one_prompt",
    "resolve_seed",
]


MAX_STEPS = 1000
MAX_GUIDANCE = 100.0
MAX_NUM_FRAMES = media.MAX_FRAMES


def one_prompt(prompt) -> str:
    """The single prompt of a call (batches of several prompts are not supported)."""
    prompts = check_prompts(prompt)
    if len(prompts) != 1:
        raise InvalidInputError(
            f"one prompt per call, got a list of {len(prompts)}; call the pipeline per prompt"
        )
    if not prompts[0].strip():
        raise InvalidInputError("the prompt is empty: it must describe the video to generate")
    return check_text(prompts[0], "prompt")


def check_text(text: str, name: str) -> str:
    """`text` if it is valid UTF-8 (a str read with undecodable bytes holds lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{name} is not valid UTF-8 text (an undecodable byte at character {exc.start})"
        ) from None
    return text


def check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InvalidInputError(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
    return steps


def resolve_seed(seed, generator: torch.Generator | None) -> int:
    """The seed of a call: `seed`, or one drawn from `generator` when it is given."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise InvalidInputError(f"generator must be a torch.Generator, got {generator!r}")
        return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return check_seed(seed)


def check_guidance(guidance) -> float:
    ok = not isinstance(guidance, bool) and isinstance(guidance, int | float)
    if not ok or not (math.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE):
        raise InvalidInputError(
            f"guidance must be a number in [0, {MAX_GUIDANCE:g}] (1 = none), got {guidance!r}"
        )
    return float(guidance)


def check_guidance_method(method) -> str:
    if method not in METHODS:
        raise InvalidInputError(f"guidance_method must be one of {METHODS}, got {method!r}")
    return method


def check_size(height, width, vae, dit) -> tuple[int, int]:
    """Latent (h, w) of a (height, width) frame, or `InvalidInputError` naming the rule."""
    s, (_, p_h, p_w) = vae.spatial_factor, dit.config.patch
    for name, n, p in (("height", height, p_h), ("width", width, p_w)):
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0 or n % (s * p):
            raise InvalidInputError(
                f"{name} must be a positive multiple of {s * p} (the VAE's factor {s} × the "
                f"DiT's patch {p}), got {n!r}"
            )
        if n < MIN_EMBED_SIDE:
            raise InvalidInputError(
                f"{name} must be at least {MIN_EMBED_SIDE} px (the watermark's smallest "
                f"frame), got {n}"
            )
    h, w = height // s, width // s
    if h > dit.config.max_size[0] or w > dit.config.max_size[1]:
        big = (dit.config.max_size[0] * s, dit.config.max_size[1] * s)
        raise InvalidInputError(f"{height}×{width} exceeds the DiT's largest frame {big} px")
    return h, w


def check_frames_count(num_frames, factor: int, *, extending: bool) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int):
        raise InvalidInputError(f"num_frames must be an int, got {num_frames!r}")
    if num_frames > MAX_NUM_FRAMES:
        raise InvalidInputError(f"num_frames must be at most {MAX_NUM_FRAMES}, got {num_frames}")
    if extending and (num_frames < factor or num_frames % factor):
        raise InvalidInputError(
            f"when extending a clip, num_frames (the new frames) must be a positive multiple "
            f"of {factor} ({factor}, {2 * factor}, …), got {num_frames}"
        )
    if not extending and (num_frames < 1 or (num_frames - 1) % factor):
        raise InvalidInputError(
            f"num_frames must be 1 + {factor}k (1, {1 + factor}, {1 + 2 * factor}, "
            f"{1 + 4 * factor}, …), got {num_frames}"
        )


def _frames_tensor(value, what: str) -> Tensor:
    """uint8 frames (T, H, W, 3) from a tensor or array; one frame (H, W, 3) is T = 1."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor) or value.dtype != torch.uint8:
        got = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise InvalidInputError(f"{what} must be a file path or a uint8 array, got {got}")
    if value.dim() == 3:
        value = value[None]
    if value.dim() != 4 or value.shape[-1] != 3 or 0 in value.shape:
        shape = "(H, W, 3)" if what == "image" else "(T, H, W, 3)"
        raise InvalidInputError(f"{what} must be uint8 {shape}, got {tuple(value.shape)}")
    return value.cpu()


def _existing(path, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"the {what} {path} is a directory, not a file")
    if not path.is_file():
        raise InvalidInputError(f"{what} file not found: {path}")
    return path


def load_image(image) -> tuple[Tensor, str | None]:
    """An image argument → (uint8 (1, H, W, 3), its path or None)."""
    if isinstance(image, str | os.PathLike):
        path = _existing(image, "image")
        return media.read_image(path), str(path)
    frames = _frames_tensor(image, "image")
    if frames.shape[0] != 1:
        raise InvalidInputError(f"image must be one frame (H, W, 3), got {tuple(frames.shape)}")
    return frames, None


def load_clip(video, factor: int) -> tuple[Tensor, str | None]:
    """A prefix clip argument → (uint8 (T, H, W, 3) with T = 1 + factor·k, its path or None)."""
    if isinstance(video, str | os.PathLike):
        path = _existing(video, "prefix video")
        frames, source = read_video(path)[0], str(path)
    else:
        frames, source = _frames_tensor(video, "prefix video"), None
    t = frames.shape[0]
    if (t - 1) % factor:
        raise InvalidInputError(
            f"a prefix clip must have 1 + {factor}k frames (1, {1 + factor}, {1 + 2 * factor}, "
            f"…), got {t}; trim it first"
        )
    return frames, source


def check_matches(frames: Tensor, height: int, width: int, what: str) -> None:
    if tuple(frames.shape[1:3]) != (height, width):
        got = f"{frames.shape[1]}×{frames.shape[2]}"
        raise InvalidInputError(
            f"the {what} is {got} (H×W) but the video is {height}×{width}; resize it or leave "
            "height and width unset to use its size"
        )


def check_latents(latents, shape: tuple[int, ...]) -> Tensor:
    """Given initial noise: a finite float tensor of exactly `shape` -> float32 on the CPU."""
    if not isinstance(latents, Tensor) or not latents.is_floating_point():
        got = latents.dtype if isinstance(latents, Tensor) else type(latents).__name__
        raise InvalidInputError(f"latents must be a float tensor {shape}, got {got}")
    if tuple(latents.shape) != tuple(shape):
        raise InvalidInputError(
            f"latents must have the clip's latent shape (B, C, T', h, w) = {tuple(shape)}, got "
            f"{tuple(latents.shape)}"
        )
    latents = latents.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(latents).all()):
        raise InvalidInputError("latents must be finite (no NaN or inf)")
    return latents.contiguous()
