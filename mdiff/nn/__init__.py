"""Neural-network building blocks shared by the video DiT and the text denoiser."""

from mdiff.nn.attention import (
    BACKENDS,
    AttnMask,
    BlockCausal,
    Causal,
    Dense,
    attend,
    available_backends,
    resolve_backend,
)
from mdiff.nn.block import MLP, Attention, BlockConfig, FinalLayer, TransformerBlock
from mdiff.nn.cache import KVCache, LayerCache
from mdiff.nn.embed import AdaLNZero, TimestepEmbedder, modulate, timestep_embedding
from mdiff.nn.rope import (
    RotaryEmbedding,
    apply_rope,
    arange_positions,
    axial_dims,
    grid_positions,
)

__all__ = [
    "BACKENDS",
    "MLP",
    "AdaLNZero",
    "Attention",
    "AttnMask",
    "BlockCausal",
    "BlockConfig",
    "Causal",
    "Dense",
    "FinalLayer",
    "KVCache",
    "LayerCache",
    "RotaryEmbedding",
    "TimestepEmbedder",
    "TransformerBlock",
    "apply_rope",
    "arange_positions",
    "attend",
    "available_backends",
    "axial_dims",
    "grid_positions",
    "modulate",
    "resolve_backend",
    "timestep_embedding",
]
