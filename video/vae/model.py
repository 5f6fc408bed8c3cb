"""The causal 3D VAE of the Wan 2.1 and 2.2 families (config keys and weights as diffusers'
AutoencoderKLWan, whose folders it reads and writes: `save_pretrained` writes
`diffusion_pytorch_model.safetensors` and a config.json that diffusers loads).

Pixels `(B, 3, 1 + 4k, H, W)` in [-1, 1] <-> latents `(B, z_dim, 1 + k, H/8, W/8)` (Wan 2.1
sizes; the factors follow `dim_mult`, `temperal_downsample` and `patch_size`: Wan 2.2, with
``z_dim=48, patch_size=2, is_residual=True``, gives H/16, W/16, see `blocks22`). The first
frame is coded on its own, so an image is a one-frame video. Everything is strictly causal in
time: latent j depends only on frames < 1 + 4j, and decoded frames < 1 + 4j only on latents ≤ j.

Every encode and decode runs through a stream session (`stream`); the whole clip is one
push. The latent normalisation `(z - mean) / std` with the config's per-channel statistics is
applied in exactly one place, `normalize_latents` / `denormalize_latents`, called by the
sessions when `normalize=True` (the default: the latents a DiT sees). diffusers'
`AutoencoderKLWan` itself returns raw latents; pass `normalize=False` to match it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError
from mdiff.hub import DIFFUSERS_WEIGHTS_NAME, PretrainedMixin
from mdiff.video.vae.blocks import CausalConv3d, Decoder3d, Encoder3d
from mdiff.video.vae.blocks22 import patchify, unpatchify
from mdiff.video.vae.stream import DecodeSession, EncodeSession, Tiling

# fmt: off
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
# fmt: on


@dataclass
class CausalVAEConfig:
    """The keys (and defaults) of diffusers' `AutoencoderKLWan` config: Wan 2.1 is the default,
    plus `trained_frames`, ours: the clip length the VAE was trained on (None = unknown), which
    decides re-anchored decoding (`CausalVAE.decode_segment`). diffusers ignores the extra key.

    Wan 2.2: ``is_residual=True`` (residual levels with parameter-free shortcuts) and
    ``patch_size=2`` (`in_channels` / `out_channels` then count patchified channels: 12 for RGB,
    as in diffusers' config).
    """

    base_dim: int = 96
    decoder_base_dim: int | None = None  # None = base_dim
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # (sic), as in diffusers
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = field(default=WAN21_LATENTS_MEAN)
    latents_std: tuple[float, ...] = field(default=WAN21_LATENTS_STD)
    is_residual: bool = False  # True = Wan 2.2 residual levels (blocks22)
    in_channels: int = 3  # after patchify (C·p²)
    out_channels: int = 3  # before unpatchify (C·p²)
    patch_size: int | None = None  # Wan 2.2: 2 (p×p space-to-channel around the VAE)
    scale_factor_temporal: int | None = 4  # informational (derived from temperal_downsample)
    scale_factor_spatial: int | None = 8  # informational (derived from dim_mult, patch_size)
    trained_frames: int | None = None  # training clip length; None = no re-anchoring

    def __post_init__(self):
        self.dim_mult = tuple(self.dim_mult)
        self.attn_scales = tuple(self.attn_scales)
        self.temperal_downsample = tuple(bool(b) for b in self.temperal_downsample)
        self.latents_mean = tuple(self.latents_mean)
        self.latents_std = tuple(self.latents_std)
        self._check_wan22()
        blocks = self.num_res_blocks
        if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= 64:
            raise InvalidInputError(f"num_res_blocks must be an int in [1, 64], got {blocks!r}")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise InvalidInputError(
                f"temperal_downsample needs len(dim_mult) - 1 = {len(self.dim_mult) - 1} "
                f"entries, got {len(self.temperal_downsample)}"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise InvalidInputError(
                f"latents_mean and latents_std need z_dim = {self.z_dim} values each, got "
                f"{len(self.latents_mean)} and {len(self.latents_std)}"
            )
        frames = self.trained_frames
        if frames is not None and not (type(frames) is int and frames >= 1):
            raise InvalidInputError(
                f"trained_frames must be a positive int or None, got {frames!r}"
            )
        if self.is_residual:
            self._check_shortcuts()

    @property
    def patch(self) -> int:
        """The patchify factor p (1 = none)."""
        return self.patch_size or 1

    def _check_wan22(self) -> None:
        p = self.patch_size
        if not isinstance(self.is_residual, bool):
            raise InvalidInputError(f"is_residual must be a bool, got {self.is_residual!r}")
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 16):
            raise InvalidInputError(f"patch_size must be None or an int in [1, 16], got {p!r}")
        for key in ("in_channels", "out_channels"):
            c = getattr(self, key)
            if isinstance(c, bool) or not isinstance(c, int) or c < 1 or c % self.patch**2:
                raise InvalidInputError(
                    f"{key} counts patchified channels: a positive multiple of patch_size² = "
                    f"{self.patch**2}, got {c!r}"
                )

    def _check_shortcuts(self) -> None:
        """The Wan 2.2 shortcuts regroup channels: each level's sizes must divide evenly."""
        last = len(self.dim_mult) - 1
        enc = [self.base_dim * u for u in (1, *self.dim_mult)]
        dec_dim = self.decoder_base_dim or self.base_dim
        dec = [dec_dim * u for u in (self.dim_mult[-1], *self.dim_mult[::-1])]
        ups = self.temperal_downsample[::-1]
        for i in range(last + 1):
            down = 1 if i == last else 4 * (2 if self.temperal_downsample[i] else 1)
            if enc[i] * down % enc[i + 1]:
                raise InvalidInputError(
                    f"encoder level {i}: {enc[i]} channels × {down} do not average into "
                    f"{enc[i + 1]} (dim_mult {self.dim_mult} does not fit the residual shortcut)"
                )
            up = 0 if i == last else 4 * (2 if ups[i] else 1)
            if up and dec[i + 1] * up % dec[i]:
                raise InvalidInputError(
                    f"decoder level {i}: {dec[i]} channels do not repeat into {dec[i + 1]} × "
                    f"{up} (dim_mult {self.dim_mult} does not fit the residual shortcut)"
                )


class CausalVAE(nn.Module, PretrainedMixin):
    """Causal 3D VAE: `encode` / `decode` whole clips, `encode_stream` / `decode_stream` chunks.

    `config.trained_frames`: the clip length it was trained on (None = unknown). A causal
    decoder degrades past that length (benchmarks/RESULTS.md, "Long streams"), so decoding
    re-anchors the decoder every training clip (`decode_stream`). Folders of the old layout,
    whose config.json lacks it, take it from their training log (`hub.with_legacy_fields`)."""

    config_class = CausalVAEConfig
    legacy_log_fields = {"trained_frames": ("data", "frames")}
    diffusers_class = "AutoencoderKLWan"  # same architecture, parameter names and config keys
    weights_name = DIFFUSERS_WEIGHTS_NAME  # so diffusers' from_pretrained reads our folders

    def __init__(self, config: CausalVAEConfig):
        super().__init__()
        self.config = c = config
        self.encoder = Encoder3d(
            c.in_channels, c.base_dim, 2 * c.z_dim, c.dim_mult, c.num_res_blocks,
            c.attn_scales, c.temperal_downsample, c.dropout, c.is_residual,
        )  # fmt: skip
        self.quant_conv = CausalConv3d(2 * c.z_dim, 2 * c.z_dim, 1)
        self.post_quant_conv = CausalConv3d(c.z_dim, c.z_dim, 1)
        self.decoder = Decoder3d(
            c.decoder_base_dim or c.base_dim, c.z_dim, c.dim_mult, c.num_res_blocks,
            c.temperal_downsample[::-1], c.dropout, c.out_channels, c.is_residual,
        )  # fmt: skip
        # default PyTorch init for every conv (as diffusers); RMSNorm gammas start at 1

    # ---------------------------------------------------------------- sizes

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.config.temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        return self.config.patch * 2 ** (len(self.config.dim_mult) - 1)

    @property
    def pixel_channels(self) -> int:
        """Channels of the frames it encodes (`in_channels` before patchify: 3 for RGB)."""
        return self.config.in_channels // self.config.patch**2

    @property
    def output_channels(self) -> int:
        """Channels of the frames it decodes (`out_channels` after unpatchify)."""
        return self.config.out_channels // self.config.patch**2

    def latent_frames(self, num_frames: int) -> int:
        """Pixel frames 1 + f·k -> latent frames 1 + k."""
        f = self.temporal_factor
        if num_frames < 1 or (num_frames - 1) % f:
            raise InvalidInputError(f"a video must have 1 + {f}k frames, got {num_frames}")
        return 1 + (num_frames - 1) // f

    @property
    def trained_frames(self) -> int | None:
        """The config's training clip length; setting it replaces the config (not shared)."""
        return self.config.trained_frames

    @trained_frames.setter
    def trained_frames(self, frames: int | None) -> None:
        self.config = replace(self.config, trained_frames=frames)

    @property
    def decode_segment(self) -> int | None:
        """Latent frames of the training clips (`trained_frames`), the longest run the decoder
        is trusted with before it re-anchors; None when unknown or under 3 latents."""
        f, t = self.temporal_factor, self.trained_frames
        if t is None or t < 1 + 2 * f or (t - 1) % f:
            return None
        return self.latent_frames(t)

    def pixel_frames(self, num_latents: int) -> int:
        """Latent frames T' -> pixel frames 1 + f·(T' - 1)."""
        if num_latents < 1:
            raise InvalidInputError(f"need at least one latent frame, got {num_latents}")
        return 1 + self.temporal_factor * (num_latents - 1)

    # ---------------------------------------------------------------- latent normalisation

    def _stats(self, z: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(self.config.latents_mean, device=z.device, dtype=z.dtype)
        std = torch.tensor(self.config.latents_std, device=z.device, dtype=z.dtype)
        return mean.view(shape), std.view(shape)

    def normalize_latents(self, z: Tensor) -> Tensor:
        """Raw latents -> unit-scale latents: (z - mean) / std per channel."""
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize_latents(self, z: Tensor) -> Tensor:
        """Unit-scale latents -> raw latents: z · std + mean per channel."""
        mean, std = self._stats(z)
        return z * std + mean

    # ---------------------------------------------------------------- one chunk, one tile

    def _moments(self, x: Tensor, cache: dict | None) -> tuple[Tensor, Tensor]:
        x = patchify(x, self.config.patch)  # (B, C·p², T, H/p, W/p)
        h = self.quant_conv(self.encoder(x, cache))  # (B, 2z, T', h, w)
        mean, logvar = h.contiguous().chunk(2, dim=1)  # each (B, z, T', h, w)
        return mean, logvar.clamp(-30.0, 20.0)

    def _encode_mean(self, x: Tensor, cache: dict | None) -> Tensor:
        return self._moments(x, cache)[0]  # (B, z, T', h, w)

    def _decode_frames(self, z: Tensor, cache: dict | None) -> Tensor:
        x = self.decoder(self.post_quant_conv(z), cache)  # (B, C·p², T, H/p, W/p)
        return unpatchify(x, self.config.patch).contiguous()  # (B, C, T, H, W), not clamped

    # ---------------------------------------------------------------- public API

    def encode_stream(
        self, *, normalize: bool = True, tiling: Tiling | None = None, dtype=None
    ) -> EncodeSession:
        """A session: `push(frames)` -> latents (posterior mean); see `stream` for the rules.

        `dtype` (e.g. torch.bfloat16) runs the encoder under autocast; None = the weights' dtype.
        """
        return EncodeSession(self, normalize, tiling, dtype)

    def decode_stream(
        self,
        *,
        normalize: bool = True,
        tiling: Tiling | None = None,
        dtype=None,
        reanchor: bool = True,
    ) -> DecodeSession:
        """A session: `push(latents)` -> frames in [-1, 1]; any chunks of ≥ 1 latent.

        `reanchor` (default): past `decode_segment` latents, restart the decoder on key frames
        so it never runs longer than its training clips (`DecodeSession`); off, or when the
        training length is unknown, the decoder runs the whole stream in one state.
        """
        segment = self.decode_segment if reanchor else None
        return DecodeSession(self, normalize, tiling, dtype, segment)

    def encode(
        self, x: Tensor, *, normalize: bool = True, tiling: Tiling | None = None, dtype=None
    ) -> Tensor:
        """Frames (B, C, 1 + f·k, H, W) -> posterior mean (B, z, 1 + k, H/s, W/s)."""
        return self.encode_stream(normalize=normalize, tiling=tiling, dtype=dtype).push(x)

    def decode(
        self,
        z: Tensor,
        *,
        normalize: bool = True,
        tiling: Tiling | None = None,
        dtype=None,
        reanchor: bool = True,
    ) -> Tensor:
        """Latents (B, z, T', h, w) -> frames (B, C, 1 + f·(T' - 1), h·s, w·s) in [-1, 1]."""
        session = self.decode_stream(normalize=normalize, tiling=tiling, dtype=dtype,
                                     reanchor=reanchor)  # fmt: skip
        return session.push(z)

    def encode_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw (un-normalised) posterior mean and log-variance of a whole clip, for training."""
        EncodeSession(self, False, None, None)._check_shape(x, self.pixel_channels, "frames")
        self.latent_frames(x.shape[2])
        return self._moments(x, None)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Reconstruct a clip through a posterior sample (the mean when `generator` is None)."""
        mean, logvar = self.encode_moments(x)
        if generator is not None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device)
            mean = mean + (0.5 * logvar).exp() * noise.to(mean.dtype)
        return self._decode_frames(mean, None)  # (B, C, T, H, W), not clamped
