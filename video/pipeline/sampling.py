"""Flow-matching sampling of video latents, chunk by chunk, for the video pipeline.

    for chunk in sample_latents(dit, plan, text):    # LatentChunk(index, start, latents)
        ...                                          # latents (1, C, n, h, w), final

One loop serves both DiT layouts. A bidirectional DiT denoises the whole clip as one chunk; a
block-causal DiT denoises chunks of `chunk_frames` latent frames in order, reading a KV cache
of the clean earlier chunks (every model call discards what it staged) and, once a chunk is
final, runs it once more at t = 1 (or re-noised, `LatentPlan.context_noise`) and commits it
(the recipe of `mdiff.video.dit.cache`).

Each chunk is the ODE `dx/dt = v(x, t)` integrated with a core solver (`mdiff.solvers`) on a
shifted grid (`mdiff.time.shifted_grid`) from Gaussian noise at t = 0 to data at t = 1, under
guidance when the scale is not 1 (the core's convention, `u + w(c − u)` for CFG). The method
is named by `LatentPlan.guidance_method` and built by `mdiff.guidance.guide`: "cfg",
"cfg_zero_star", or "apg" (in data space on the CondOT path; one APG, with its momentum, per
chunk). The two branches always run as one batched forward, rows [prompt ; unconditional] with
the text padded to one length; with a block-causal DiT they share one cache of batch 2 (the
joint-text layout caches each row's prompt, padding masked), so a guided step costs one model
call, not two.

Known latents (the encoded image of image-to-video, the prefix clip of an extension) sit at the
start of the sequence. A known frame gets t = 1 (clean, in our convention) in every call and a
velocity of exactly 0, so the solver leaves it bit-for-bit as given; a chunk made only of
known frames is not sampled at all, only committed (KV prefill). The guided velocity is zeroed
there again, so every guidance variant leaves known frames alone.

Noise. Chunk j draws its noise (all its frames, known or not) from a CPU generator seeded with
SHA-256 of (seed, j), so a chunk's noise never depends on how the clip is cut into calls:
`pipe.stream(...)` and `pipe(...)` see the same numbers, on any device. Noise given for the
whole clip (`LatentPlan.noise`, the pipeline's ``latents=``) is sliced per chunk instead.

Grid. `LatentPlan.grid`, when set (a diffusers scheduler's grid, see `schedulers`), replaces
the shifted uniform grid. The solver "renoise" is the few-step sampler of causal Wan models
(Self-Forcing: predict the data, re-noise it to the next grid point with fresh noise from the
chunk's "renoise" generator; see `causal_wan`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from mdiff.guidance import guide
from mdiff.solvers import solve
from mdiff.time import sd3_alpha, shifted_grid
from mdiff.video.dit.cache import DiTCache
from mdiff.video.dit.model import SpaceTimeDiT

__all__ = [
    "LatentChunk",
    "LatentPlan",
    "Progress",
    "TextCondition",
    "chunk_generator",
    "chunk_spans",
    "sample_latents",
]

AUTO_SHIFT_BASE_TOKENS = 256  # SD3's base size for the token-count shift (`shift="auto"`)


@dataclass(frozen=True)
class LatentPlan:
    """What to sample: `frames` latent frames of `channels` × `height` × `width` (latent units),
    the first `known.shape[2]` of them given, plus the sampler settings."""

    frames: int
    channels: int
    height: int
    width: int
    steps: int
    shift: float | str  # a float > 0, or "auto" (SD3's token-count rule, at least 1)
    solver: str
    guidance: float
    seed: int
    known: Tensor | None = None  # (1, C, P, h, w) float32 clean latents of the first P frames
    context_noise: float = 0.0  # finished chunks are committed re-noised to t = 1 − this
    guidance_method: str = "cfg"  # cfg | cfg_zero_star | apg (mdiff.guidance.METHODS)
    grid: Tensor | None = None  # an explicit time grid (steps + 1,) (a diffusers scheduler's)
    noise: Tensor | None = None  # (1, C, frames, h, w) the initial noise, given (latents=)
    model_inputs: dict | None = None  # more DiT inputs, batch 1, both branches (Wan I2V's)

    @property
    def n_known(self) -> int:
        return 0 if self.known is None else self.known.shape[2]


@dataclass(frozen=True)
class TextCondition:
    """The prompt's text states and the unconditional branch (null embedding or negative
    prompt), each (1, S, D) with a bool mask (1, S)."""

    text: Tensor
    mask: Tensor
    null_text: Tensor
    null_mask: Tensor


@dataclass(frozen=True)
class Progress:
    """What a callback sees after every solver step."""

    chunk: int  # index of the chunk being denoised
    chunks: int  # chunks in the clip
    step: int  # step within the chunk (0-based)
    steps: int
    t: float  # time reached (1 = data)
    done: int  # solver steps finished so far, all chunks
    total: int  # solver steps of the whole clip
    latents: Tensor  # (1, C, n, h, w) the chunk's current state


@dataclass(frozen=True)
class LatentChunk:
    index: int
    start: int  # first latent frame
    latents: Tensor  # (1, C, n, h, w) float32, final latents of frames start … start + n − 1


@dataclass
class _Tally:
    chunks: int
    total: int  # solver steps of the whole clip
    done: int = 0


def chunk_spans(frames: int, dit: SpaceTimeDiT) -> list[tuple[int, int]]:
    """Latent frame ranges [a, b) denoised together: the whole clip for a bidirectional DiT,
    chunks of `chunk_frames` (the last may be shorter) for a block-causal one."""
    if dit.config.attention != "block_causal":
        return [(0, frames)]
    n = dit.config.chunk_frames
    return [(a, min(a + n, frames)) for a in range(0, frames, n)]


def chunk_generator(seed: int, index: int, stream: str = "noise") -> torch.Generator:
    """The CPU generator of chunk `index`'s noise: seeded with SHA-256 of (seed, index); the
    `"context"` stream is the noise of its commit (`LatentPlan.context_noise`)."""
    digest = hashlib.sha256(f"mdiff.video.{stream}/{seed}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def grid_for(plan: LatentPlan, tokens: int) -> Tensor:
    """The time grid: the plan's own, else `steps` uniform steps through the shift (float64
    for the solver)."""
    if plan.grid is not None:
        return plan.grid
    alpha = plan.shift
    if alpha == "auto":
        alpha = max(1.0, sd3_alpha(tokens, AUTO_SHIFT_BASE_TOKENS))
    return shifted_grid(plan.steps, float(alpha), dtype=torch.float64)


def _velocity(dit: SpaceTimeDiT, frame_offset: int, clean: Tensor | None, inputs=None):
    """The model function of one chunk: the DiT at `frame_offset`; frames where `clean` (n,)
    is True run at t = 1 and get velocity 0. A cache is only read: staged keys are dropped.
    The ODE state and t stay float32; only the DiT runs in its own dtype (e.g. bf16).
    `inputs` (`LatentPlan.model_inputs`, batch 1) are repeated to the call's batch."""
    dtype = next(dit.parameters()).dtype
    inputs = inputs or {}

    def fn(x: Tensor, t: Tensor, text: Tensor, text_mask: Tensor, cache: DiTCache | None = None):
        if clean is not None:  # per-frame time (B, n): known frames are data
            t = torch.where(clean, torch.ones_like(t)[:, None], t[:, None])
        extra = {k: v.expand(x.shape[0], *v.shape[1:]) for k, v in inputs.items()}
        v = dit(x.to(dtype), t, text, text_mask, frame_offset=frame_offset, cache=cache, **extra)
        v = v.float()
        if cache is not None:
            cache.discard()
        return _zero_clean(v, clean)

    return fn


def _zero_clean(v: Tensor, clean: Tensor | None) -> Tensor:
    return v if clean is None else v.masked_fill(clean[None, None, :, None, None], 0.0)


def _keep_clean(fn, clean: Tensor | None):
    """A guided `fn` with velocity 0 again on the `clean` frames: each branch has 0 there, but
    APG's projection moves every frame of the sample."""
    if clean is None:
        return fn
    return lambda *args, **kwargs: _zero_clean(fn(*args, **kwargs), clean)


def _pad_text(emb: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Right-pad text states (1, S, D) and mask (1, S) to `length` tokens (padding masked)."""
    extra = length - emb.shape[1]
    if extra == 0:
        return emb, mask
    emb = torch.cat([emb, emb.new_zeros(emb.shape[0], extra, emb.shape[2])], dim=1)
    return emb, torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)


def _model_fn(dit, plan: LatentPlan, text: TextCondition, offset: int, clean, cache):
    """The (guided) model function of one chunk and its keyword arguments."""
    fn = _velocity(dit, offset, clean, plan.model_inputs)
    if plan.guidance == 1.0:
        return fn, {"text": text.text, "text_mask": text.mask, "cache": cache}
    (emb, mask), (null, null_mask) = _branches(text)
    cond = {"text": emb, "text_mask": mask, "cache": cache}  # the cache holds both rows
    uncond = {"text": null, "text_mask": null_mask}
    guided = guide(plan.guidance_method, fn, plan.guidance, uncond, batched=True)
    return _keep_clean(guided, clean), cond


def _branches(text: TextCondition) -> list[tuple[Tensor, Tensor]]:
    """(states, mask) of the prompt and the unconditional branch, padded to one length."""
    s = max(text.text.shape[1], text.null_text.shape[1])
    return [_pad_text(text.text, text.mask, s), _pad_text(text.null_text, text.null_mask, s)]


@torch.no_grad()
def _denoise(dit, plan, text, j, span, cache, tally, callback) -> Tensor:
    """Final latents (1, C, b − a, h, w) of chunk j = frames [a, b)."""
    (a, b), device = span, next(dit.parameters()).device
    n_known = min(max(plan.n_known - a, 0), b - a)
    if n_known == b - a:  # every frame given: nothing to sample
        return plan.known[:, :, a:b].to(device, torch.float32)
    shape = (1, plan.channels, b - a, plan.height, plan.width)
    if plan.noise is not None:  # given noise (diffusers' `latents=`), sliced to the chunk
        x = plan.noise[:, :, a:b].to(device, torch.float32, copy=True)
    else:
        x = torch.randn(shape, generator=chunk_generator(plan.seed, j)).to(device)  # float32
    clean = None
    if n_known:
        x[:, :, :n_known] = plan.known[:, :, a : a + n_known].to(device, torch.float32)
        clean = torch.arange(b - a, device=device) < n_known  # (n,)
    fn, cond = _model_fn(dit, plan, text, a, clean, cache)
    patch = dit.config.patch
    tokens = (b - a) * plan.height * plan.width // (patch[0] * patch[1] * patch[2])

    def step(s) -> None:
        tally.done += 1
        if callback is not None:
            callback(Progress(j, tally.chunks, s.i, plan.steps, s.t_next, tally.done, tally.total,
                              s.x))  # fmt: skip

    grid = grid_for(plan, tokens)
    if plan.solver == "renoise":  # few-step x̂1 + fresh noise (causal Wan, `causal_wan`)
        from mdiff.video.pipeline.causal_wan import renoise

        gen = chunk_generator(plan.seed, j, "renoise")
        return renoise(fn, x, grid, generator=gen, keep=clean, callback=step, **cond)
    return solve(plan.solver, fn, x, grid, callback=step, **cond)


@torch.no_grad()
def _commit(dit, x: Tensor, plan: LatentPlan, j: int, offset: int, text, cache) -> None:
    """Run finished chunk j once more (both branches in one batch when guided) and keep its
    keys: clean at t = 1, or re-noised to t = 1 − σ with σ = `plan.context_noise` (history
    noise, diffusion forcing)."""
    sigma = plan.context_noise
    if sigma > 0:
        eps = torch.randn(x.shape, generator=chunk_generator(plan.seed, j, "context"))
        x = (1.0 - sigma) * x + sigma * eps.to(x.device)  # the path x_t = t·x1 + (1 − t)·x0
    if plan.guidance == 1.0:
        emb, mask = text.text, text.mask
    else:
        (emb, mask), (null, null_mask) = _branches(text)
        emb, mask, x = torch.cat([emb, null]), torch.cat([mask, null_mask]), torch.cat([x, x])
    t = torch.full((x.shape[0],), 1.0 - sigma, device=x.device)
    dit(x.to(next(dit.parameters()).dtype), t, emb, mask, frame_offset=offset, cache=cache)
    cache.commit()


def sample_latents(
    dit: SpaceTimeDiT,
    plan: LatentPlan,
    text: TextCondition,
    *,
    callback: Callable[[Progress], object] | None = None,
) -> Iterator[LatentChunk]:
    """Yield each chunk's final latents as soon as they are final (see the module docstring)."""
    spans = chunk_spans(plan.frames, dit)
    causal = dit.config.attention == "block_causal"
    cache = dit.new_cache() if causal else None  # batch 2 when guided: [prompt ; uncond]
    sampled = sum(1 for _, b in spans if b > plan.n_known)  # chunks not entirely known
    tally = _Tally(len(spans), sampled * plan.steps)
    for j, (a, b) in enumerate(spans):
        x = _denoise(dit, plan, text, j, (a, b), cache, tally, callback)
        yield LatentChunk(j, a, x)  # out first; the commit runs when the next chunk is asked for
        if causal and j < len(spans) - 1:  # the last chunk is never read again
            _commit(dit, x, plan, j, a, text, cache)
