"""`WanTransformer`: the Wan 2.1 / 2.2 video transformer, loadable from diffusers' folders.

Config keys (`WanTransformerConfig`) and parameter names are exactly those of diffusers'
`WanTransformer3DModel` (0.42): a folder its `save_pretrained` wrote loads unchanged, and
`save_pretrained` here writes one it reads. The original Wan layout (`wan/modules/model.py`
names, Wan-AI's release folders with `_class_name` "WanModel") loads too, converted by
`mdiff.video.dit.wan_keys`.

    x_t (B, C, T, H, W) -> Conv3d patches (kernel = stride = patch_size)      (B, N, D)
    t -> σ = 1 − t -> sinusoid(1000·σ) -> time_embedder -> temb, time_proj -> e6 (6·D)
    num_layers × WanBlock (AdaLN-single: e6 + each block's table; 3D RoPE; text by
        cross-attention, CLIP image tokens by a second key/value set when I2V)
    head: LN·(1 + scale) + shift from temb + table -> Linear -> unpatchify

Calling convention (ours): `model(x_t, t, text, text_mask=None, image=None)` with t ∈ [0, 1],
t = 1 data, returns the velocity x1 − x0. t is (B,), per latent frame (B, T) or per token
(B, N) (Wan 2.2 TI2V: the conditioning frame's tokens at t = 1). diffusers' convention is
`forward_diffusers`: timestep = 1000·(1 − t), output = −(our velocity).

Wan has no attention mask for text: its pipeline pads the T5 states with zeros to 512 tokens.
`text_mask` (True = real token) does the same, zeroing the padded rows. Modulation, the
LayerNorms and the time embedder run in float32; `cast(dtype)` (and `from_pretrained(...,
dtype=)`) keeps the parameters diffusers keeps in float32 (`KEEP_IN_FP32`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.hub import (
    CONFIG_NAME,
    DIFFUSERS_WEIGHTS_NAME,
    PretrainedMixin,
    check_state_dict,
    find_weights,
    header_shapes,
    load_state_dict,
    read_json_object,
    resolve,
)
from mdiff.nn import resolve_backend
from mdiff.time import from_diffusers_timesteps, to_sigma, velocity_from_sigma
from mdiff.video.dit.blocks import unpatchify
from mdiff.video.dit.checks import check_text, check_time
from mdiff.video.dit.wan_blocks import (
    ConditionEmbedder,
    FP32LayerNorm,
    WanBlock,
    WanRope,
    collapse_padding,
)
from mdiff.video.dit.wan_keys import config_from_original, from_original

__all__ = ["CLASS_NAME", "KEEP_IN_FP32", "WanTransformer", "WanTransformerConfig"]

CLASS_NAME = "WanTransformer3DModel"  # the diffusers class whose folders we read and write
ORIGINAL_CLASS_NAME = "WanModel"  # Wan-AI's own release folders (original parameter names)
KEEP_IN_FP32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")
QK_NORM = "rms_norm_across_heads"
MAX_LAYERS = 1000


@dataclass
class WanTransformerConfig:
    """diffusers' `WanTransformer3DModel` config, key for key (defaults: Wan 2.1 14B T2V)."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int | None = 16  # None = in_channels
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = QK_NORM
    eps: float = 1e-6
    image_dim: int | None = None  # CLIP width (1280) for I2V
    added_kv_proj_dim: int | None = None  # = inner dim for I2V (image keys/values)
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None  # 2·257 for first/last-frame (FLF2V)

    def __post_init__(self):
        self.patch_size = tuple(self.patch_size)
        if len(self.patch_size) != 3 or not all(_pos_int(p) for p in self.patch_size):
            raise InvalidInputError(f"patch_size must be 3 positive ints, got {self.patch_size}")
        ints = ["num_attention_heads", "attention_head_dim", "in_channels", "text_dim",
                "freq_dim", "ffn_dim", "num_layers", "rope_max_seq_len"]  # fmt: skip
        optional = ["out_channels", "image_dim", "added_kv_proj_dim", "pos_embed_seq_len"]
        ints += [k for k in optional if getattr(self, k) is not None]
        for name in ints:
            if not _pos_int(getattr(self, name)):
                raise InvalidInputError(f"{name} must be a positive int, got {getattr(self, name)}")
        if self.num_layers > MAX_LAYERS:
            raise InvalidInputError(f"num_layers must be at most {MAX_LAYERS}")
        d = self.attention_head_dim
        if d % 2 or d < 6:
            raise InvalidInputError(f"attention_head_dim must be even and >= 6 (RoPE), got {d}")
        if self.qk_norm != QK_NORM:
            raise InvalidInputError(
                f"qk_norm={self.qk_norm!r} is not supported: Wan normalises q and k with "
                f"{QK_NORM!r} (diffusers applies it whatever this key says)"
            )
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            raise InvalidInputError("image_dim and added_kv_proj_dim go together (I2V), or neither")
        if self.added_kv_proj_dim not in (None, self.inner_dim):
            raise InvalidInputError(
                f"added_kv_proj_dim must equal the inner dim {self.inner_dim} (the image "
                f"embedder's output), got {self.added_kv_proj_dim}"
            )
        if self.pos_embed_seq_len is not None and self.image_dim is None:
            raise InvalidInputError("pos_embed_seq_len needs image_dim (an image embedder)")
        if not isinstance(self.eps, int | float) or not 0 < self.eps < 1:
            raise InvalidInputError(f"eps must be a float in (0, 1), got {self.eps!r}")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


def _pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


class WanTransformer(nn.Module, PretrainedMixin):
    """`model(x_t, t, text, text_mask=None, image=None) -> velocity`, shaped as x_t (with
    out_channels). Attribute `backend` picks the attention kernel (see `mdiff.nn.attention`)."""

    config_class = WanTransformerConfig
    diffusers_class = CLASS_NAME  # save_pretrained writes diffusers' folder layout
    weights_name = DIFFUSERS_WEIGHTS_NAME

    def __init__(self, config: WanTransformerConfig, backend: str = "auto"):
        super().__init__()
        self.config = c = config
        self.backend = resolve_backend(backend)
        self.out_channels = c.out_channels or c.in_channels
        dim = c.inner_dim
        self.rope = WanRope(c.attention_head_dim, c.rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(c.in_channels, dim, c.patch_size, stride=c.patch_size)
        self.condition_embedder = ConditionEmbedder(
            dim, c.freq_dim, c.text_dim, c.image_dim, c.pos_embed_seq_len
        )
        self.blocks = nn.ModuleList(
            WanBlock(dim, c.ffn_dim, c.num_attention_heads, c.cross_attn_norm, c.eps,
                     c.added_kv_proj_dim)
            for _ in range(c.num_layers)
        )  # fmt: skip
        self.norm_out = FP32LayerNorm(dim, c.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, self.out_channels * math.prod(c.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        text: Tensor,
        text_mask: Tensor | None = None,
        image: Tensor | None = None,
        frame_offset: int = 0,
    ) -> Tensor:
        """x_t (B, C, T, H, W); t in [0, 1] of shape (B,), (B, T) per latent frame or (B, N)
        per token (per frame wins when T == N); text (B, S, text_dim) with text_mask (B, S);
        image (B, L, image_dim) CLIP states (I2V; L = pos_embed_seq_len when set).
        frame_offset shifts RoPE time (in token frames) for streamed chunks. Returns the
        velocity x1 − x0 (B, C_out, T, H, W)."""
        grid = self._check_video(x_t)
        b, n = x_t.shape[0], math.prod(grid)
        if isinstance(t, Tensor) and t.dim() == 2 and t.shape[1] == n != x_t.shape[2]:
            if not t.is_floating_point():
                raise InvalidInputError("t must be a float tensor in [0, 1]")
            s = t  # (B, N) per token
        else:
            s = check_time(t, b, x_t.shape[2], self.config.patch_size[0])  # (B,) or (B, T')
        text_mask = check_text(text, text_mask, b, self.config.text_dim)
        if text_mask is not None:
            text = text * text_mask[..., None].to(text.dtype)  # Wan pads with zero states
        sigma = to_sigma(s.reshape(b, -1))  # (B, G), G in {1, T', N}
        return velocity_from_sigma(self._denoise(x_t, sigma, text, image, grid, frame_offset))

    def forward_diffusers(
        self,
        hidden_states: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        encoder_hidden_states_image: Tensor | None = None,
    ) -> Tensor:
        """diffusers' `WanTransformer3DModel.forward(...).sample`: timestep 1000·σ of shape (B,)
        or (B, N); output in their sign (noise − data). First/last-frame image states come as
        (2B, L/2, image_dim), as their pipeline passes them."""
        grid = self._check_video(hidden_states)
        b = hidden_states.shape[0]
        ts = timestep.float().reshape(b, -1) if timestep.dim() else timestep.float().expand(b, 1)
        if ts.shape[1] not in (1, math.prod(grid)):
            raise InvalidInputError(f"timestep must be (B,) or (B, N), got {tuple(timestep.shape)}")
        image = encoder_hidden_states_image
        if image is not None and self.config.pos_embed_seq_len is not None:
            image = image.reshape(-1, 2 * image.shape[1], image.shape[2])  # (B, 2L, E)
        sigma = to_sigma(from_diffusers_timesteps(ts))  # (B, G)
        return self._denoise(hidden_states, sigma, encoder_hidden_states, image, grid, 0)

    def _denoise(self, x, sigma, text, image, grid, frame_offset) -> Tensor:
        """The network in the sigma convention: x (B, C, T, H, W), σ (B, G) -> dx/dσ."""
        c, b = self.config, x.shape[0]
        self._check_cond(text, image, b)
        rope = self.rope(grid, x.device, frame_offset)  # 2 × (N, hd/2)
        h = self.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()  # (B, N, D)
        text, bias = collapse_padding(text)  # Wan's zero rows -> one weighted key
        temb, e6, context, image = self.condition_embedder(sigma, text, image)
        for block in self.blocks:
            h = block(h, context, e6, rope, image, self.backend, bias)  # (B, N, D)
        shift, scale = (self.scale_shift_table.float() + temb.float()[:, :, None]).unbind(2)
        shift, scale = shift[:, :, None], scale[:, :, None]  # 2 × (B, G, 1, D)
        out = self.norm_out(h.float()).unflatten(1, (sigma.shape[1], -1)) * (1 + scale) + shift
        out = self.proj_out(out.flatten(1, 2).to(h.dtype))  # (B, N, pt·ph·pw·C)
        return unpatchify(out, grid, c.patch_size, self.out_channels)  # (B, C, T, H, W)

    def _check_video(self, x: Tensor) -> tuple[int, int, int]:
        c = self.config
        if not isinstance(x, Tensor) or x.dim() != 5 or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InvalidInputError(f"x_t must be a float tensor (B, C, T, H, W), got {got}")
        if x.shape[1] != c.in_channels:
            raise InvalidInputError(f"x_t has {x.shape[1]} channels, the model {c.in_channels}")
        sizes = x.shape[2:]
        if any(n == 0 or n % p for n, p in zip(sizes, c.patch_size, strict=True)):
            raise InvalidInputError(
                f"x_t (T, H, W) = {tuple(sizes)} must be positive multiples of patch_size "
                f"{c.patch_size}"
            )
        return tuple(n // p for n, p in zip(sizes, c.patch_size, strict=True))

    def _check_cond(self, text: Tensor, image: Tensor | None, b: int) -> None:
        c = self.config
        check_text(text, None, b, c.text_dim)
        if (image is None) != (c.image_dim is None):
            need = "needs image states (I2V)" if image is None else "has no image branch"
            raise InvalidInputError(f"this WanTransformer {need}")
        if image is not None:
            length = c.pos_embed_seq_len or image.shape[1]
            if image.dim() != 3 or tuple(image.shape) != (b, length, c.image_dim):
                raise InvalidInputError(
                    f"image must be (B, L, image_dim) = ({b}, {length}, {c.image_dim}), "
                    f"got {tuple(image.shape)}"
                )

    # ------------------------------------------------------------------ dtype and checkpoints

    def cast(self, dtype: torch.dtype | None) -> WanTransformer:
        """Cast to `dtype`, keeping the `KEEP_IN_FP32` parameters in float32 (as diffusers)."""
        if dtype is None:
            return self
        for name, p in self.named_parameters():
            keep = any(part in KEEP_IN_FP32 for part in name.split("."))
            p.data = p.data.to(torch.float32 if keep else dtype)
        return self

    @classmethod
    def from_pretrained(cls, name_or_path, device=None, dtype=None, *, subfolder=None):
        """Load a folder written by diffusers (`diffusion_pytorch_model.safetensors`, single or
        sharded) or by `save_pretrained` (which writes diffusers' layout). Config keys unknown
        to diffusers' Wan class, or a `_class_name` other than Wan's, raise `CheckpointError`.
        Never unpickles. `dtype` keeps `KEEP_IN_FP32` in float32. Eval mode."""
        directory = resolve(name_or_path)
        if subfolder is not None:
            directory = directory / subfolder  # checked by the mixin below
        path = directory / CONFIG_NAME
        saved = read_json_object(path).get("_class_name") if path.is_file() else None
        if saved == ORIGINAL_CLASS_NAME:
            model = cls._from_original_folder(directory)
        elif saved not in (None, CLASS_NAME, cls.__name__):
            raise CheckpointError(f"{path} is a {saved!r}, not a {CLASS_NAME} (Wan transformer)")
        else:
            model = super().from_pretrained(name_or_path, subfolder=subfolder)
        return model.cast(dtype).to(device=device).eval()

    @classmethod
    def _from_original_folder(cls, directory) -> WanTransformer:
        """A Wan-AI release folder (`_class_name` "WanModel"): original names and config keys,
        converted by `mdiff.video.dit.wan_keys`."""
        header = header_shapes(find_weights(directory))
        raw = read_json_object(directory / CONFIG_NAME)
        try:
            config = WanTransformerConfig(**config_from_original(raw, header))
        except InvalidInputError as e:
            raise CheckpointError(f"{directory / CONFIG_NAME}: {e}") from e
        with torch.device("meta"):
            check_state_dict(cls(config), from_original(header), directory)
        model = cls(config)
        model.load_state_dict(from_original(load_state_dict(find_weights(directory))))
        return model
