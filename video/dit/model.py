"""`SpaceTimeDiT`: the space-time diffusion transformer on video latents (flow matching).

    x_t (B, C, T, H, W), t (B,) or per latent frame (B, T), text (B, S, text_dim)
      -> 3D patch embed (kernel = stride = patch)                     tokens (B, N, D)
      -> depth × TransformerBlock: AdaLN-Zero from the timestep of each token's frame,
         QK-norm, 3D axial RoPE (time position = absolute latent frame // p_t), text by
         cross-attention ("cross", Wan/PixArt) or inside self-attention ("joint", MMDiT)
      -> FinalLayer (zero-init) -> unpatchify                          velocity (B, C, T, H, W)

t = 0 is noise and t = 1 is data; the target velocity is x1 − x0. A per-frame t (diffusion
forcing) gives every token the modulation of its own frame. In joint mode text tokens sit in
front of the video tokens with RoPE position 0 and a learned conditioning vector instead of t.

Attention follows `config.attention` with the rule written out in `mdiff.video.dit.blocks`:
"block_causal" groups latent frames in chunks of `chunk_frames`; a chunk sees itself, earlier
chunks (only the sink and the last window frames when `window` is set) and the text. Streaming
reads and writes a `DiTCache` (see `mdiff.video.dit.cache`); positions are absolute, so a chunk
run at `frame_offset = k` with the cache of frames < k equals frames k… of one full forward.
With `sink_position="adjacent"` the sink's time position instead follows the window (see
`DiTConfig.sink_shift`): past the window a chunk equals the last chunk of a full forward over
just the frames it sees, and one forward may only hold chunks that share one sink shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError
from mdiff.hub import PretrainedMixin, preset_config
from mdiff.nn import (
    BlockCausal,
    BlockConfig,
    Dense,
    FinalLayer,
    RotaryEmbedding,
    TimestepEmbedder,
    TransformerBlock,
    axial_dims,
)
from mdiff.nn.attention import AttnMask
from mdiff.video.dit.blocks import (
    PatchEmbed3d,
    TextProjection,
    token_frames,
    unpatchify,
    video_positions,
    visibility,
)
from mdiff.video.dit.cache import DiTCache
from mdiff.video.dit.checks import check_cache, check_text, check_time, check_video

__all__ = ["PRESETS", "DiTConfig", "SpaceTimeDiT"]

TEXT_MODES = ("cross", "joint")
ATTENTION_KINDS = ("bidirectional", "block_causal")
SINK_POSITIONS = ("absolute", "adjacent")
MAX_DEPTH = 1000  # blocks: a config.json past it is refused before anything is built


@dataclass
class DiTConfig:
    in_channels: int = 16  # latent channels
    out_channels: int | None = None  # None = in_channels
    patch: tuple[int, int, int] = (1, 2, 2)  # (p_t, p_h, p_w)
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    text_dim: int = 256  # width of the text encoder's states
    text: str = "cross"  # "cross" (cross-attention) or "joint" (text tokens in self-attention)
    qk_norm: bool = True
    rope_axes: tuple[int, int, int] | None = None  # head-dim channels per (t, h, w); None = Wan's
    rope_theta: float = 10000.0
    max_frames: int = 64  # latent frames one attention span may hold (cache + new)
    max_size: tuple[int, int] = (64, 64)  # largest latent (H, W)
    attention: str = "bidirectional"  # or "block_causal"
    chunk_frames: int = 1  # latent frames per chunk of the block-causal layout (multiple of p_t)
    window: int | None = None  # latent frames kept in the KV cache (block_causal); None = all
    sink_frames: int = 0  # first latent frames always kept (needs a window)
    sink_position: str = "absolute"  # RoPE time of the sink: its own, or "adjacent" to the window
    backend: str = "auto"  # attention kernel, see mdiff.nn.attention

    def __post_init__(self):
        self.patch, self.max_size = tuple(self.patch), tuple(self.max_size)
        if self.rope_axes is not None:
            self.rope_axes = tuple(self.rope_axes)
        ints = ["in_channels", "dim", "depth", "heads", "text_dim", "max_frames", "chunk_frames"]
        for name in ints + ["out_channels"] * (self.out_channels is not None):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {getattr(self, name)}")
        if self.depth > MAX_DEPTH:
            raise InvalidInputError(f"depth must be at most {MAX_DEPTH}, got {self.depth}")
        for name, value, n in (("patch", self.patch, 3), ("max_size", self.max_size, 2)):
            if len(value) != n or not all(isinstance(v, int) and v >= 1 for v in value):
                raise InvalidInputError(f"{name} must be {n} positive ints, got {value}")
        if self.text not in TEXT_MODES:
            raise InvalidInputError(f"text must be one of {TEXT_MODES}, got {self.text!r}")
        if self.sink_position not in SINK_POSITIONS:
            raise InvalidInputError(
                f"sink_position must be one of {SINK_POSITIONS}, got {self.sink_position!r}"
            )
        if self.attention not in ATTENTION_KINDS:
            raise InvalidInputError(
                f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}"
            )
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise InvalidInputError(
                f"dim / heads must be an even integer (RoPE pairs), got {self.dim} / {self.heads}"
            )
        dims = self.rope_dims
        if len(dims) != 3 or any(d < 2 or d % 2 for d in dims) or sum(dims) != self.head_dim:
            raise InvalidInputError(
                f"rope_axes {dims} must be 3 positive even numbers summing to the head dim "
                f"{self.head_dim}"
            )
        self._check_streaming()

    def _check_streaming(self) -> None:
        p_t = self.patch[0]
        chunk = self.chunk_frames if self.attention == "block_causal" else 0
        if chunk % p_t or self.sink_frames % p_t or (self.window or 0) % p_t:
            raise InvalidInputError(
                f"chunk_frames, window and sink_frames must be multiples of the temporal patch "
                f"p_t={p_t}, got {self.chunk_frames}, {self.window}, {self.sink_frames}"
            )
        if self.window is None:
            if self.sink_frames:
                raise InvalidInputError("sink_frames needs a window (sink frames are kept from it)")
            return
        if self.attention != "block_causal":
            raise InvalidInputError("a rolling window needs attention='block_causal'")
        if not isinstance(self.window, int) or not 0 <= self.sink_frames <= self.window:
            raise InvalidInputError(
                f"need 0 <= sink_frames <= window, got sink_frames={self.sink_frames}, "
                f"window={self.window}"
            )

    def sink_shift(self, frame_offset: int) -> int:
        """Latent frames the sink's RoPE time is moved past its own for the chunk holding
        `frame_offset`: with "adjacent", sink frame j sits at j + max(0, s − window) (s = the
        chunk's first frame), right before the oldest window frame; else 0."""
        if self.sink_position != "adjacent" or self.window is None:
            return 0
        return max(0, frame_offset // self.chunk_frames * self.chunk_frames - self.window)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def rope_dims(self) -> tuple[int, ...]:
        """Head-dim channels given to RoPE on (t, h, w), e.g. 128 -> (44, 42, 42)."""
        return self.rope_axes or axial_dims(self.head_dim, 3)

    def block_config(self) -> BlockConfig:
        return BlockConfig(
            dim=self.dim, heads=self.heads, mlp_ratio=self.mlp_ratio, qk_norm=self.qk_norm,
            cross_attention=self.text == "cross", context_dim=self.dim, cond_dim=self.dim,
        )  # fmt: skip

    @classmethod
    def preset(cls, name: str, **overrides) -> DiTConfig:
        """A config from `PRESETS[name]`, with any field overridden."""
        return preset_config(cls, PRESETS, name, **overrides)


PRESETS: dict[str, dict] = {
    # a few thousand parameters, for tests
    "test": dict(in_channels=4, dim=32, depth=2, heads=2, text_dim=16, max_size=(16, 16)),
    # 64x64 shapes on a 2-core CPU: latents 16 x 8 x 8 (Wan VAE layout), ≈ 5.2M parameters
    "shapes-tiny": dict(dim=192, depth=6, heads=3, text_dim=256, max_frames=32),
    "shapes-tiny-stream": dict(
        dim=192,
        depth=6,
        heads=3,
        text_dim=256,
        max_frames=32,
        attention="block_causal",
        chunk_frames=1,  # the first chunk is the first frame: time to first frame ~1/T'
        window=8,
        sink_frames=1,
    ),
    "small": dict(dim=384, depth=12, heads=6, text_dim=512),  # ≈ 40M
    "base": dict(dim=768, depth=12, heads=12, text_dim=768, max_size=(128, 128)),  # ≈ 160M
}


class SpaceTimeDiT(nn.Module, PretrainedMixin):
    """`model(x_t, t, text, text_mask, frame_offset, cache) -> velocity`, shapes as x_t."""

    config_class = DiTConfig

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = c = config
        self.out_channels = c.out_channels or c.in_channels
        self.patch_embed = PatchEmbed3d(c.in_channels, c.dim, c.patch)
        self.time_embed = TimestepEmbedder(c.dim)
        self.text_embed = TextProjection(c.text_dim, c.dim)
        self.text_cond = nn.Parameter(torch.randn(c.dim) * 0.02) if c.text == "joint" else None
        self.rope = RotaryEmbedding(c.head_dim, c.rope_dims, theta=c.rope_theta)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.block_config(), c.backend) for _ in range(c.depth)
        )
        self.final = FinalLayer(c.dim, math.prod(c.patch) * self.out_channels, cond_dim=c.dim)

    def new_cache(self) -> DiTCache:
        """An empty streaming cache with this model's depth, chunking and rolling window."""
        c = self.config
        return DiTCache(c.depth, c.chunk_frames, c.window, c.sink_frames)

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        text: Tensor,
        text_mask: Tensor | None = None,
        frame_offset: int = 0,
        cache: DiTCache | None = None,
    ) -> Tensor:
        """x_t (B, C, T, H, W) latents of frames frame_offset … frame_offset + T − 1; t (B,) or
        (B, T) in [0, 1]; text (B, S, text_dim), text_mask (B, S) True = real token. With a
        cache, keys of the cached (earlier) frames are read and the new keys staged: the caller
        then calls `cache.commit()` or `cache.discard()`. Returns the velocity (B, C', T, H, W)."""
        c = self.config
        grid = check_video(x_t, c)  # (T', H', W') token grid
        b, p_t = x_t.shape[0], c.patch[0]
        t = check_time(t, b, x_t.shape[2], p_t)  # (B,) or (B, T')
        text_mask = check_text(text, text_mask, b, c.text_dim)  # (B, S) bool or None
        check_cache(cache, c, grid, frame_offset, b)
        if cache is not None:
            cache.place_sink(c.sink_shift(frame_offset), self.rope)
        joint = c.text == "joint" and (cache is None or not cache.has_text)
        dev, n_text = x_t.device, text.shape[1] if joint else 0

        x = self.patch_embed(x_t)  # (B, N, D)
        cond = self.time_embed(t)  # (B, D) or (B, T', D)
        if cond.dim() == 3:
            cond = cond.repeat_interleave(grid[1] * grid[2], dim=1)  # (B, N, D)
        frames = token_frames(grid, p_t, frame_offset, dev)  # (N,)
        pos = video_positions(grid, frame_offset // p_t, dev)  # (N, 3)
        ok = torch.ones(b, x.shape[1], dtype=torch.bool, device=dev)  # (B, N)
        cross = c.text == "cross"
        ctx = self.text_embed(text) if joint else None  # (B, S, D)
        text_kv = self._text_kv(text, cache) if cross else [None] * c.depth  # per block (k, v)
        if joint:  # [text ; video] in one sequence
            if cond.dim() == 2:
                cond = cond[:, None].expand(-1, x.shape[1], -1)  # (B, N, D)
            x = torch.cat([ctx, x], dim=1)  # (B, S + N, D)
            cond = torch.cat([self.text_cond.expand(b, n_text, -1), cond], dim=1)  # (B, S + N, D)
            frames = torch.cat([frames.new_full((n_text,), -1), frames])  # (S + N,)
            pos = torch.cat([pos.new_zeros(n_text, 3), pos])  # (S + N, 3)
            text_ok = torch.ones_like(ok[:, :n_text]) if text_mask is None else text_mask
            ok = torch.cat([text_ok, ok], dim=1)  # (B, S + N)
        padded = joint and text_mask is not None  # self-attention keys include padding
        mask = self._mask(frames, ok, cache, frame_offset, grid, n_text, padded)

        rope = self.rope.freqs(pos)  # 2 × (S + N, hd/2)
        for i, block in enumerate(self.blocks):
            x = block(
                x, cond, rope=rope, mask=mask,
                context_kv=text_kv[i], context_mask=text_mask if cross else None,
                cache=None if cache is None else cache.layer(i),
            )  # (B, S + N, D)  # fmt: skip
        cond = cond[:, n_text:] if cond.dim() == 3 else cond  # (B, N, D) or (B, D)
        out = self.final(x[:, n_text:], cond)  # (B, N, pt·ph·pw·C')
        return unpatchify(out, grid, c.patch, self.out_channels)  # (B, C', T, H, W)

    def _text_kv(self, text: Tensor, cache: DiTCache | None) -> list[tuple[Tensor, Tensor]]:
        """Each block's cross-attention keys and values of `text` (B, S, text_dim). A stream
        projects its prompt once: the cache keeps them for the text they were made from."""
        kvs = None if cache is None else cache.text_kv(text)
        if kvs is None:
            ctx = self.text_embed(text)  # (B, S, D)
            kvs = [block.cross.source_kv(ctx) for block in self.blocks]  # 2 × (B, H, S, hd)
            if cache is not None and not torch.is_grad_enabled():  # no graph kept across calls
                cache.keep_text_kv(text, kvs)
        return kvs

    def _mask(
        self,
        frames: Tensor,
        ok: Tensor,
        cache: DiTCache | None,
        frame_offset: int,
        grid: tuple[int, int, int],
        n_text: int,
        padded: bool,
    ) -> AttnMask:
        """Self-attention mask for the queries' frames (L,) over [cached ; new] keys, None when
        every key may be attended (a streamed chunk after eviction); stages the new keys'
        frames in the cache."""
        c = self.config
        causal = c.attention == "block_causal"
        if cache is None and not causal and not padded:
            return None
        aligned = frame_offset % c.chunk_frames == 0 and c.window is None
        if cache is None and causal and n_text == 0 and aligned:  # chunks of tokens
            return BlockCausal(c.chunk_frames // c.patch[0] * grid[1] * grid[2])
        k_frames, k_ok = (frames, ok) if cache is None else cache.keys(frames, ok)
        allowed = visibility(
            frames, k_frames, block_causal=causal, chunk_frames=c.chunk_frames,
            window=c.window, sink=c.sink_frames,
        )  # (L, Lk)  # fmt: skip
        allowed = allowed[None] & k_ok[:, None, :]  # (B, L, Lk)
        return None if bool(allowed.all()) else Dense(allowed[:, None])  # (B, 1, L, Lk)
