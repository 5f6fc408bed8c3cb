"""Few-step streaming of causal Wan weights (Self-Forcing / CausVid inference) in the pipeline.

    dit = CausalWanDenoiser(CausalWanTransformer.from_pretrained(folder, causal=...))
    pipe = VideoPipeline(vae, dit, text_encoder, **SELF_FORCING_SETTINGS)
    for chunk in pipe.stream(prompt): ...      # blocks of num_frame_per_block latent frames

**The step list** (`self_forcing_grid`). Self-Forcing denoises each block at the Wan
timesteps `denoising_step_list` (default [1000, 750, 500, 250]) warped by the shift s
(`warp_denoising_step`, s = 5): its training scheduler's table σ_k = shift(k / 1000), k = 1000
… 1 (FlowMatchScheduler, sigma_min 0, extra_one_step), indexed at 1000 − step, i.e. the step
τ ↦ σ = s·u / (1 + (s − 1)·u) with u = τ / 1000. In our time t = 1 − σ:
[1000, 750, 500, 250] → t = [0, 0.0625, 0.1667, 0.375], then t = 1 (data) closes the grid.

**The step** (`renoise`, solver name "renoise"). At grid point t_i the model's velocity gives
the data estimate x̂1 = x + (1 − t_i)·v (their x0 = x_σ − σ·flow); the next state is that
estimate re-noised to t_{i+1} with fresh Gaussian noise, x = t_{i+1}·x̂1 + (1 − t_{i+1})·ε
(their `scheduler.add_noise`); the last step returns x̂1. The noise comes from the chunk's own
generator (`sampling.chunk_generator(seed, j, "renoise")`), so a stream is reproducible.
Known frames (image / prefix) are never re-noised.

The finished block is then run once more at the context noise (Self-Forcing `context_noise`,
0 = clean, our t = 1 − it) and committed to the KV cache: `sampling.sample_latents` does it with
`LatentPlan.context_noise` (Self-Forcing also commits the last block; nothing reads it).
No guidance: the distilled model has it baked in (`guidance=1`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mdiff import hub
from mdiff.atomic import write_text_atomic
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.solvers import Step
from mdiff.video.dit.wan_causal import CausalWanConfig, CausalWanTransformer
from mdiff.video.pipeline.wan_adapter import WanDenoiserConfig

__all__ = ["RENOISE", "SELF_FORCING_SETTINGS", "SELF_FORCING_STEPS", "CausalWanDenoiser",
           "CAUSAL_CONFIG", "renoise", "self_forcing_grid"]  # fmt: skip

RENOISE = "renoise"
CAUSAL_CONFIG = "causal_config.json"  # beside the transformer's config.json (Self-Forcing names)
SELF_FORCING_STEPS = (1000, 750, 500, 250)
SELF_FORCING_SHIFT = 5.0
SELF_FORCING_SETTINGS = dict(steps=4, solver=RENOISE, guidance=1.0, shift=SELF_FORCING_SHIFT,
                             context_noise=0.0, fps=16.0)  # fmt: skip


def self_forcing_grid(
    steps: Sequence[float] = SELF_FORCING_STEPS,
    shift: float = SELF_FORCING_SHIFT,
    warp: bool = True,
) -> Tensor:
    """Our time grid (len(steps) + 1,) float64 for Wan timesteps `steps` (decreasing, in
    (0, 1000]), warped by `shift` when `warp` (module docstring), closed by t = 1."""
    u = torch.tensor([float(s) for s in steps], dtype=torch.float64) / 1000.0
    if u.numel() == 0 or not bool((u > 0).all() and (u <= 1).all()):
        raise InvalidInputError(f"denoising steps must be in (0, 1000], got {list(steps)}")
    if u.numel() > 1 and not bool((u[1:] < u[:-1]).all()):
        raise InvalidInputError(f"denoising steps must decrease, got {list(steps)}")
    sigma = shift * u / (1 + (shift - 1) * u) if warp else u
    return torch.cat([1.0 - sigma, torch.ones(1, dtype=torch.float64)])


def renoise(model_fn, x_init: Tensor, grid: Tensor, *, generator: torch.Generator,
            keep: Tensor | None = None, callback=None, **cond) -> Tensor:  # fmt: skip
    """Few-step sampling by x̂1 prediction and fresh re-noising (module docstring). `keep`
    (T,) bool: latent frames left as they are (known frames; their velocity is 0)."""
    ts, x = grid.tolist(), x_init
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:], strict=True)):
        v = model_fn(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device), **cond)
        x1 = x + (1.0 - t) * v  # the data estimate
        if t_next < 1.0:
            eps = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
            noisy = t_next * x1 + (1.0 - t_next) * eps
            x = noisy if keep is None else torch.where(keep[None, None, :, None, None], x1, noisy)
        else:
            x = x1
        if callback is not None:
            callback(Step(i, t, t_next, x, v))
    return x


class CausalWanDenoiser(nn.Module):
    """A `CausalWanTransformer` as the pipeline's block-causal DiT: chunks of
    `num_frame_per_block`, its `WanCache`, and the Self-Forcing step list as its time grid."""

    def __init__(self, transformer: CausalWanTransformer,
                 denoising_steps: Sequence[float] = SELF_FORCING_STEPS,
                 shift: float = SELF_FORCING_SHIFT, warp: bool = True, *,
                 fixed_cache: bool = False):  # fmt: skip
        """`fixed_cache`: stream with the fixed-shape `WanRingCache` (same outputs; for
        `transformer.compile_stream()`), which needs a finite `local_attn_size`."""
        super().__init__()
        if not isinstance(transformer, CausalWanTransformer):
            raise InvalidInputError("CausalWanDenoiser wraps a CausalWanTransformer")
        self.transformer = transformer
        self.denoising_steps, self.shift, self.warp = tuple(denoising_steps), shift, warp
        self.fixed_cache = bool(fixed_cache)
        if self.fixed_cache:
            transformer.new_cache(fixed=True)  # checked now (a finite window)
        self_forcing_grid(self.denoising_steps, shift, warp)  # checked now
        c, n = transformer.config, transformer.config.rope_max_seq_len
        p = tuple(c.patch_size)
        self.config = WanDenoiserConfig(
            c.in_channels,
            c.text_dim,
            p,
            (n * p[1], n * p[2]),
            n * p[0],
            attention="block_causal",
            chunk_frames=transformer.causal.num_frame_per_block,
        )  # window None: RoPE time is absolute, so the limit is the clip's length

    @property
    def schedule_name(self) -> str:
        return f"self-forcing(denoising_step_list={list(self.denoising_steps)}, shift={self.shift})"

    def to(self, *args, **kwargs) -> CausalWanDenoiser:
        """As `nn.Module.to`; a dtype keeps the transformer's fp32 parts (`WanTransformer.cast`)."""
        device, dtype, *_ = torch._C._nn._parse_to(*args, **kwargs)
        self.transformer.cast(dtype)
        return super().to(device=device)

    def new_cache(self):
        return self.transformer.new_cache(fixed=self.fixed_cache)

    def time_grid(self, steps: int) -> Tensor:
        """The step list's grid; `steps` must be its length (a distilled model's steps)."""
        if steps != len(self.denoising_steps):
            raise InvalidInputError(
                f"this causal Wan model denoises in {len(self.denoising_steps)} steps "
                f"{list(self.denoising_steps)}; got steps={steps}"
            )
        return self_forcing_grid(self.denoising_steps, self.shift, self.warp)

    def forward(self, x_t: Tensor, t: Tensor, text: Tensor, text_mask: Tensor | None = None,
                frame_offset: int = 0, cache=None) -> Tensor:  # fmt: skip
        dtype = self.transformer.patch_embedding.weight.dtype
        return self.transformer(x_t.to(dtype), t, text.to(dtype), text_mask,
                                frame_offset=frame_offset, cache=cache)  # fmt: skip

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """The transformer's folder (diffusers' layout: diffusers reads it as a
        WanTransformer3DModel) plus `causal_config.json`: num_frame_per_block, local_attn_size
        (-1 = unbounded), sink_size, denoising_step_list, timestep_shift, warp_denoising_step."""
        directory = self.transformer.save_pretrained(directory)
        c = self.transformer.causal
        config = {"num_frame_per_block": c.num_frame_per_block, "sink_size": c.sink_size,
                  "local_attn_size": -1 if c.local_attn_size is None else c.local_attn_size,
                  "denoising_step_list": list(self.denoising_steps),
                  "timestep_shift": self.shift, "warp_denoising_step": self.warp}  # fmt: skip
        write_text_atomic(directory / CAUSAL_CONFIG, json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, name_or_path, device=None, dtype=None) -> CausalWanDenoiser:
        """A folder `save_pretrained` wrote, or any Wan transformer folder (diffusers' or
        original names, e.g. `mdiff convert` of a Self-Forcing checkpoint) with a
        `causal_config.json` added."""
        directory = hub.resolve(name_or_path)
        path = directory / CAUSAL_CONFIG
        if not path.is_file():
            raise CheckpointError(f"{directory} has no {CAUSAL_CONFIG}: not a causal Wan model")
        raw = hub.read_json_object(path)
        known = {"num_frame_per_block", "local_attn_size", "sink_size", "denoising_step_list",
                 "timestep_shift", "warp_denoising_step"}  # fmt: skip
        if set(raw) - known:
            raise CheckpointError(f"{path}: unknown keys {sorted(set(raw) - known)}")
        try:
            causal = CausalWanConfig(
                int(raw.get("num_frame_per_block", 3)),
                raw.get("local_attn_size", -1),
                int(raw.get("sink_size", 0)),
            )
            model = CausalWanTransformer.from_pretrained(directory, device, dtype, causal=causal)
            return cls(model, raw.get("denoising_step_list", SELF_FORCING_STEPS),
                       float(raw.get("timestep_shift", SELF_FORCING_SHIFT)),
                       bool(raw.get("warp_denoising_step", True))).eval()  # fmt: skip
        except (InvalidInputError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: {e}") from e
