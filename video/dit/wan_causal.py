"""`CausalWanTransformer`: the Wan transformer made block-causal, streamed with a KV cache
(the CausVid / Self-Forcing inference layout), with `WanTransformer`'s modules and parameter
names, so the same checkpoints load (diffusers folders, original Wan names, Self-Forcing's
`generator_ema` through `mdiff convert`).

    model = CausalWanTransformer(config, CausalWanConfig(num_frame_per_block=3))
    v = model(x_t, t, text)                        # whole clip, explicit block-causal mask
    cache = model.new_cache()                      # or chunk by chunk (`wan_cache`):
    v = model(x_chunk, t, text, frame_offset=a, cache=cache); cache.discard() / commit()
    cache = model.new_cache(fixed=True)            # fixed shapes (`wan_ring_cache`), and
    model.compile_stream()                         # the chunk step compiled once

Latent frames are grouped in blocks of `num_frame_per_block`; a frame's queries see every frame
of its own block and of earlier blocks, limited by the rolling window: `local_attn_size` L
frames in all (its own block included, None = unbounded) of which the first `sink_size`
frames of the video stay visible (`wan_cache.visible_frames`). RoPE time is the absolute frame
index (`frame_offset` + position in the chunk). Text cross-attention keys/values are computed
once per prompt and kept in the cache. Image-conditioned (I2V) transformers and temporal
patches > 1 are refused. Outputs are our velocity, as `WanTransformer.forward`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.nn import Dense, apply_rope, attend, timestep_embedding
from mdiff.time import to_sigma, velocity_from_sigma
from mdiff.video.dit.blocks import unpatchify
from mdiff.video.dit.checks import check_text, check_time
from mdiff.video.dit.wan import WanTransformer, WanTransformerConfig
from mdiff.video.dit.wan_blocks import WanAttention, WanBlock, gated_add, modulate
from mdiff.video.dit.wan_cache import WanCache, visible_frames
from mdiff.video.dit.wan_ring_cache import WanRingCache

__all__ = ["CausalWanConfig", "CausalWanTransformer", "block_causal_mask"]


@dataclass(frozen=True)
class CausalWanConfig:
    """Self-Forcing's causal settings (`num_frame_per_block`, `local_attn_size` with −1 or
    None = unbounded, `sink_size`), in latent frames."""

    num_frame_per_block: int = 3
    local_attn_size: int | None = None
    sink_size: int = 0

    def __post_init__(self):
        n, w, s = self.num_frame_per_block, self.local_attn_size, self.sink_size
        if w == -1:
            object.__setattr__(self, "local_attn_size", None)
            w = None
        for name, v, low in (("num_frame_per_block", n, 1), ("sink_size", s, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InvalidInputError(f"{name} must be an int >= {low}, got {v!r}")
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < n + s):
            raise InvalidInputError(
                f"local_attn_size must be -1/None or an int >= num_frame_per_block + sink_size "
                f"= {n + s}, got {w!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def block_causal_mask(frames: int, tokens_per_frame: int, causal: CausalWanConfig) -> Tensor:
    """Bool (N, N), N = frames · tokens_per_frame, True = may attend: what the chunk-by-chunk
    stream computes, as one mask over the whole clip (frames from 0)."""
    n = causal.num_frame_per_block
    f = torch.arange(frames)
    ends = torch.clamp((f // n + 1) * n, max=frames)  # (T,) end of each frame's block
    keys = f[None, :].expand(frames, frames)
    ok = torch.stack([visible_frames(keys[q], int(ends[q]), causal.local_attn_size,
                                     causal.sink_size) for q in range(frames)])  # fmt: skip
    return ok.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


class CausalWanTransformer(WanTransformer):
    """`WanTransformer` (same parameters) with block-causal attention and a `WanCache`."""

    def __init__(self, config: WanTransformerConfig, causal: CausalWanConfig | None = None,
                 backend: str = "auto"):  # fmt: skip
        super().__init__(config, backend)
        if config.patch_size[0] != 1:
            raise InvalidInputError("a causal Wan transformer needs temporal patch 1")
        if config.image_dim is not None:
            raise InvalidInputError("a causal Wan transformer takes no image branch (I2V) yet")
        self.causal = causal or CausalWanConfig()
        self._compiled = None  # `compile_stream`

    @classmethod
    def from_wan(cls, model: WanTransformer, causal: CausalWanConfig | None = None):
        """The causal model over `model`'s weights (tensors shared, not copied)."""
        out = cls(model.config, causal, backend=model.backend)
        out.load_state_dict(model.state_dict(), assign=True)
        return out.to(model.patch_embedding.weight.device).eval()

    @classmethod
    def from_pretrained(cls, name_or_path, device=None, dtype=None, *, subfolder=None,
                        causal: CausalWanConfig | None = None):  # fmt: skip
        """A folder `WanTransformer.from_pretrained` reads (diffusers or original names)."""
        wan = WanTransformer.from_pretrained(name_or_path, device, dtype, subfolder=subfolder)
        return cls.from_wan(wan, causal)

    def new_cache(self, fixed: bool = False) -> WanCache | WanRingCache:
        """A growing `WanCache`, or with `fixed` a `WanRingCache` whose tensors keep one shape
        (needs a finite `local_attn_size`); both give the same outputs."""
        c, cfg = self.causal, self.config
        if fixed:
            return WanRingCache(cfg.num_layers, c.local_attn_size, c.sink_size,
                                c.num_frame_per_block, cfg.num_attention_heads,
                                cfg.attention_head_dim)  # fmt: skip
        return WanCache(cfg.num_layers, c.local_attn_size, c.sink_size)

    def compile_stream(self, **kwargs) -> CausalWanTransformer:
        """`torch.compile(**kwargs)` the per-chunk network (what runs after the checks, RoPE
        table and text keys/values) for streamed chunks; with a `WanRingCache` it compiles once
        per chunk size. The whole-clip (masked) forward stays eager."""
        self._compiled = torch.compile(self._core, **kwargs)
        return self

    def forward(self, x_t: Tensor, t: Tensor, text: Tensor, text_mask: Tensor | None = None,
                frame_offset: int = 0, cache: WanCache | None = None) -> Tensor:  # fmt: skip
        """x_t (B, C, T, H, W) frames frame_offset …; t (B,) or (B, T) in [0, 1]; text
        (B, S, text_dim). Without a cache: the whole clip under `block_causal_mask` (then
        frame_offset must be 0). With one: a chunk (a block) that reads the cache and stages
        its keys. Returns the velocity x1 − x0."""
        grid = self._check_video(x_t)
        b, (tt, hh, ww) = x_t.shape[0], grid
        if isinstance(frame_offset, bool) or not isinstance(frame_offset, int) or frame_offset < 0:
            raise InvalidInputError(f"frame_offset must be an int >= 0, got {frame_offset!r}")
        if cache is None and frame_offset != 0:
            raise InvalidInputError("without a cache the whole clip runs, from frame 0")
        if cache is not None and tt > self.causal.num_frame_per_block:
            raise InvalidInputError(
                f"a streamed chunk has at most num_frame_per_block="
                f"{self.causal.num_frame_per_block} frames, got {tt}"
            )
        s = check_time(t, b, x_t.shape[2], 1)  # (B,) or (B, T)
        text_mask = check_text(text, text_mask, b, self.config.text_dim)
        if text_mask is not None:
            text = text * text_mask[..., None].to(text.dtype)  # Wan pads with zero states
        self._check_cond(text, None, b)
        sigma = to_sigma(s.reshape(b, -1))  # (B, G)
        mask = None
        if cache is None:
            mask = Dense(block_causal_mask(tt, hh * ww, self.causal).to(x_t.device))
        else:
            frames = torch.arange(frame_offset, frame_offset + tt, device=x_t.device)
            kv_dtype = self.patch_embedding.weight.dtype  # what the keys will be
            if torch.is_autocast_enabled(x_t.device.type):
                kv_dtype = torch.get_autocast_dtype(x_t.device.type)
            cache.begin(frames.repeat_interleave(hh * ww), batch=b, dtype=kv_dtype)
        try:
            out = self._causal_denoise(x_t, sigma, text, grid, frame_offset, mask, cache)
        except BaseException:
            if cache is not None:
                cache.discard()
            raise
        return velocity_from_sigma(out)

    def _causal_denoise(self, x, sigma, text, grid, frame_offset, mask, cache) -> Tensor:
        """As `WanTransformer._denoise` (σ convention, dx/dσ), block-causal: the RoPE table and
        the text keys/values (kept in the cache), then `_core` (compiled by `compile_stream`)."""
        rope = self.rope(grid, x.device, frame_offset)  # 2 × (N, hd/2)
        kvs = None if cache is None else cache.text_kv(text)
        if kvs is None:
            context = self.condition_embedder.text_embedder(text)  # (B, S, D)
            kvs = [_cross_kv(blk.attn2, context) for blk in self.blocks]
            if cache is not None and not torch.is_grad_enabled():
                cache.keep_text_kv(text, kvs)
        core = self._core if cache is None or self._compiled is None else self._compiled
        return core(x, sigma, text.dtype, grid, kvs, rope, mask, cache)

    def _core(self, x, sigma, dtype, grid, kvs, rope, mask, cache) -> Tensor:
        """Patches, time embedding, the blocks and the head: x (B, C, T, H, W) -> dx/dσ."""
        c, emb = self.config, self.condition_embedder
        h = self.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()  # (B, N, D)
        freq = timestep_embedding(sigma, emb.freq_dim)  # (B, G, F)
        temb = emb.time_embedder(freq.to(emb.time_embedder.linear_1.weight.dtype)).to(dtype)
        e6 = emb.time_proj(F.silu(temb)).unflatten(-1, (6, -1))  # (B, G, 6, D)
        for i, block in enumerate(self.blocks):
            h = self._block(block, i, h, kvs[i], e6, rope, mask, cache)  # (B, N, D)
        shift, scale = (self.scale_shift_table.float() + temb.float()[:, :, None]).unbind(2)
        shift, scale = shift[:, :, None], scale[:, :, None]  # 2 × (B, G, 1, D)
        out = self.norm_out(h.float()).unflatten(1, (sigma.shape[1], -1)) * (1 + scale) + shift
        out = self.proj_out(out.flatten(1, 2).to(h.dtype))  # (B, N, pt·ph·pw·C)
        return unpatchify(out, grid, c.patch_size, self.out_channels)  # (B, C, T, H, W)

    def _block(self, block: WanBlock, i, x, kv, e6, rope, mask, cache) -> Tensor:
        """`WanBlock.forward` with the self-attention block-causal or read from the cache."""
        mods = (block.scale_shift_table.float() + e6.float()).unsqueeze(3)  # (B, G, 6, 1, D)
        s1, c1, g1, s2, c2, g2 = mods.unbind(2)
        h = modulate(block.norm1(x.float()), s1, c1).to(x.dtype)  # (B, N, D)
        x = gated_add(x, self._self_attn(block.attn1, i, h, rope, mask, cache), g1)
        h = block.norm2(x.float()).to(x.dtype)  # (B, N, D)
        x = x + _cross_attn(block.attn2, h, kv, self.backend)
        h = modulate(block.norm3(x.float()), s2, c2).to(x.dtype)
        return gated_add(x, block.ffn(h), g2)  # (B, N, D)

    def _self_attn(self, attn: WanAttention, i, x, rope, mask, cache) -> Tensor:
        q = apply_rope(attn._heads(attn.norm_q(attn.to_q(x))), *rope)  # (B, H, N, hd)
        k = apply_rope(attn._heads(attn.norm_k(attn.to_k(x))), *rope)  # after RoPE: absolute
        v = attn._heads(attn.to_v(x))
        if cache is not None:
            k, v = cache.read(i, k, v)  # (B, H, Lv + N, hd): visible past, then this chunk
            mask = cache.attn_mask  # None (WanCache), or the ring's slots in use
        out = attend(q, k, v, mask=mask, backend=self.backend).to(q.dtype)  # (B, H, N, hd)
        return attn.to_out[0](out.transpose(1, 2).flatten(2))  # (B, N, D)


def _cross_kv(attn: WanAttention, context: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-attention keys and values of the embedded text (B, S, D): 2 × (B, H, S, hd)."""
    return attn._heads(attn.norm_k(attn.to_k(context))), attn._heads(attn.to_v(context))


def _cross_attn(attn: WanAttention, x: Tensor, kv, backend: str) -> Tensor:
    q = attn._heads(attn.norm_q(attn.to_q(x)))  # (B, H, N, hd)
    out = attend(q, *kv, backend=backend).to(q.dtype)
    return attn.to_out[0](out.transpose(1, 2).flatten(2))
