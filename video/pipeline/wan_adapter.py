"""`WanDenoiser`: a `WanTransformer` in the shape the pipeline's sampling loop calls a DiT.

    dit = WanDenoiser(transformer, schedule)      # schedule: a `DiffusersSchedule`
    grid = dit.time_grid(steps)                  # the scheduler's grid, in t
    v = dit(x_t, t, text, text_mask)             # our velocity, as `SpaceTimeDiT` returns it

`sample_latents` reads a DiT's ``config`` (attention, patch, chunk_frames, in/text widths,
size limits) and calls ``dit(x, t, text, text_mask, frame_offset=, cache=)``; this adapter
gives a bidirectional Wan transformer that face, so the whole clip is denoised as one chunk by
the unchanged loop (one batched forward for both guidance branches).

**Timesteps at the grid's points.** WanPipeline steps its scheduler with the exact σ_i but
feeds the transformer the scheduler's stored timesteps: ``int64(1000·σ_i)`` for UniPC and
DPM-Solver++ (truncated), float32 ``1000·σ_i`` for FlowMatchEuler. To match it exactly,
`time_grid(steps)` records, for each grid point, the float32 t the solvers pass the model
(`mdiff.solvers` calls it at the grid's points, in the state's float32) and the timestep
diffusers feeds there; `forward` looks t up and calls the transformer with that timestep
(`WanTransformer.forward_diffusers`; the result turned into our velocity). A t the grid does
not hold (another solver's midpoints, t = 1 for the known frames of image-to-video) gets the
continuous ``1000·(1 − t)``. The table only grows by step counts asked for; it is not state
of a run.

**Image-to-video (Wan 2.2 TI2V).** A folder with ``expand_timesteps`` true takes known first
frames (the pipeline's ``image=`` / ``prefix=``): the loop gives them t = 1, i.e. timestep 0
on their tokens and the step's timestep elsewhere, and velocity 0, which is exactly what
diffusers' `WanImageToVideoPipeline` does with ``expand_timesteps`` (the encoded image in the
first latent frame of every model input, per-token timesteps ``mask·t``, the frame put back at
the end). Other folders (Wan 2.1) refuse known frames.

Text: Wan reads no attention mask; padded rows are zeroed, as its pipeline pads the T5 states
with zeros. Inputs are cast to the transformer's compute dtype (that of its patch embedding;
`to(dtype=)` keeps diffusers' fp32 parts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError
from mdiff.time import to_diffusers_timesteps, velocity_from_sigma
from mdiff.video.dit.wan import WanTransformer
from mdiff.video.io import frames_to_pixels
from mdiff.video.pipeline.schedulers import DiffusersSchedule

__all__ = ["WanDenoiser", "WanDenoiserConfig"]


@dataclass(frozen=True)
class WanDenoiserConfig:
    """The DiT config fields the pipeline reads, for a bidirectional Wan transformer."""

    in_channels: int
    text_dim: int
    patch: tuple[int, int, int]
    max_size: tuple[int, int]  # largest latent (H, W): RoPE's positions × patch
    max_frames: int
    attention: str = "bidirectional"
    chunk_frames: int | None = None
    window: int | None = None


class WanDenoiser(nn.Module):
    """`WanTransformer` + the folder's scheduler, called as the pipeline calls a DiT."""

    def __init__(self, transformer: WanTransformer, schedule: DiffusersSchedule, *,
                 expand_timesteps: bool = False, image_encoder=None,
                 image_processor=None):  # fmt: skip
        """`expand_timesteps`: the folder's flag (Wan 2.2 TI2V): known frames may be given.
        `image_encoder` (transformers' CLIPVisionModel) and `image_processor` (its
        CLIPImageProcessor): Wan 2.1 I2V, whose transformer has an image branch."""
        super().__init__()
        self.expand_timesteps = expand_timesteps
        c = transformer.config
        if (c.image_dim is None) != (image_encoder is None) or (
            (image_encoder is None) != (image_processor is None)
        ):
            raise InvalidInputError("an image-to-video Wan transformer (image_dim) goes with an "
                                    "image encoder and its processor, and only then")  # fmt: skip
        self.transformer, self.schedule = transformer, schedule
        self.image_encoder, self.image_processor = image_encoder, image_processor
        p, n = tuple(c.patch_size), c.rope_max_seq_len
        latent = c.out_channels or c.in_channels  # I2V inputs add the mask and image latents
        self.config = WanDenoiserConfig(latent, c.text_dim, p, (n * p[1], n * p[2]), n * p[0])
        self._timesteps: dict[float, float] = {}  # float32 t of a grid point -> their timestep

    @property
    def takes_image(self) -> bool:
        """Wan 2.1 I2V: the image enters through `image_inputs`, not as known frames."""
        return self.image_encoder is not None

    @torch.no_grad()
    def image_inputs(self, vae, image: Tensor, num_frames: int) -> dict[str, Tensor]:
        """WanImageToVideoPipeline's conditioning of uint8 (1, H, W, 3) `image`: CLIP states
        (1, L, image_dim) (the encoder's second-to-last hidden states) and ``condition`` (1,
        4 + C, T', h, w): the frame mask (1 on the image's 4 pixel frames of latent frame 0)
        and the VAE latents of [image, then gray frames] (num_frames in all)."""
        import PIL.Image

        device = next(self.transformer.parameters()).device
        pixels = self.image_processor(images=PIL.Image.fromarray(image[0].numpy()),
                                      return_tensors="pt")["pixel_values"]  # fmt: skip
        enc = next(self.image_encoder.parameters())
        out = self.image_encoder(pixel_values=pixels.to(enc.device, enc.dtype),
                                 output_hidden_states=True)  # fmt: skip
        states = out.hidden_states[-2].to(device)  # (1, L, image_dim)
        video = frames_to_pixels(image)[None]  # (1, 3, 1, H, W) in [-1, 1]
        video = torch.cat([video, video.new_zeros(*video.shape[:2], num_frames - 1,
                                                  *video.shape[3:])], dim=2)  # fmt: skip
        v = next(vae.parameters())
        latents = vae.encode(video.to(v.device, v.dtype)).to(device, torch.float32)
        f, (_, _, n, h, w) = vae.temporal_factor, latents.shape
        mask = torch.zeros(1, n * f, h, w, device=device)
        mask[:, :f] = 1.0  # pixel frame 0, repeated over the first latent frame's f slots
        mask = mask.view(1, n, f, h, w).transpose(1, 2)  # (1, f, T', h, w)
        return {"condition": torch.cat([mask, latents], dim=1), "image": states}
        self._timesteps: dict[float, float] = {}  # float32 t of a grid point -> their timestep

    def to(self, *args, **kwargs) -> WanDenoiser:
        """As `nn.Module.to`; a dtype keeps the transformer's fp32 parts (`WanTransformer.cast`,
        as diffusers does)."""
        device, dtype, *_ = torch._C._nn._parse_to(*args, **kwargs)
        self.transformer.cast(dtype)
        return super().to(device=device)

    def time_grid(self, steps: int) -> Tensor:
        """The scheduler's grid (steps + 1,) float64; remembers the timesteps of its points."""
        grid = self.schedule.grid(steps)
        points = grid[:-1].float().tolist()  # the t the solver's float32 state passes
        for t, ts in zip(points, self.schedule.timesteps(steps).tolist(), strict=True):
            self._timesteps[t] = ts
        return grid

    def timestep(self, t: Tensor) -> Tensor:
        """Diffusers' timestep (float32) for each of our times t (any shape)."""
        flat = t.float().flatten().tolist()
        table = self._timesteps
        if all(v in table for v in flat):
            ts = torch.tensor([table[v] for v in flat], dtype=torch.float32, device=t.device)
            return ts.reshape(t.shape)
        fallback = to_diffusers_timesteps(t.double()).float()
        known = torch.tensor([table.get(v, float("nan")) for v in flat], device=t.device)
        known = known.reshape(t.shape).float()
        return torch.where(known.isnan(), fallback, known)

    def forward(self, x_t: Tensor, t: Tensor, text: Tensor, text_mask: Tensor | None = None,
                frame_offset: int = 0, cache=None, condition: Tensor | None = None,
                image: Tensor | None = None) -> Tensor:  # fmt: skip
        """x_t (B, C, T', H', W'); t (B,) or per latent frame (B, T'); text (B, S, D) with
        text_mask (B, S); I2V: `condition` (B, 4 + C, T', H', W') and CLIP states `image`
        (`image_inputs`). Returns our velocity x1 − x0 (B, C, T', H', W')."""
        if cache is not None or frame_offset != 0:
            raise InvalidInputError("a Wan transformer is bidirectional: no cache, no offset")
        dtype = self.transformer.patch_embedding.weight.dtype  # the compute dtype (bf16, ...)
        x_t, text = x_t.to(dtype), text.to(dtype)
        if text_mask is not None:
            text = text * text_mask[..., None].to(text.dtype)  # Wan pads with zero states
        ts = self.timestep(t)
        if ts.dim() == 2:  # per latent frame -> per token (Wan 2.2's expand_timesteps)
            if not self.expand_timesteps:
                raise InvalidInputError(
                    "this Wan folder has expand_timesteps false (Wan 2.1 text-to-video): its "
                    "transformer takes no given first frame; image= / prefix= need a Wan 2.2 "
                    "TI2V folder (expand_timesteps true)"
                )
            p = self.config.patch
            if p[0] != 1 or ts.shape[1] != x_t.shape[2]:
                raise InvalidInputError(f"per-frame t must be (B, T'), got {tuple(t.shape)}")
            per_frame = (x_t.shape[3] // p[1]) * (x_t.shape[4] // p[2])
            ts = ts.repeat_interleave(per_frame, dim=1)  # (B, N)
        if condition is not None:  # WanImageToVideoPipeline: cat([latents, condition], dim=1)
            x_t = torch.cat([x_t, condition.to(dtype)], dim=1)
        image = None if image is None else image.to(dtype)
        out = self.transformer.forward_diffusers(x_t, ts, text, image)  # dx/dσ
        return velocity_from_sigma(out)
