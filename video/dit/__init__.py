"""The space-time DiT: the model, its blocks and input checks, the streaming KV cache, the
flow-matching objective, the latent cache and the training recipe."""

from mdiff.video.dit.cache import DiTCache
from mdiff.video.dit.model import PRESETS, DiTConfig, SpaceTimeDiT
from mdiff.video.dit.wan import WanTransformer, WanTransformerConfig
from mdiff.video.dit.wan_cache import WanCache
from mdiff.video.dit.wan_causal import CausalWanConfig, CausalWanTransformer

__all__ = ["PRESETS", "CausalWanConfig", "CausalWanTransformer", "DiTCache", "DiTConfig",
           "SpaceTimeDiT", "WanCache", "WanTransformer", "WanTransformerConfig"]  # fmt: skip
