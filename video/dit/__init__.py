"""The space-time DiT: the model, its blocks and input checks, the streaming KV cache, the
flow-matching objective, the latent cache and the training recipe."""

from mdiff.video.dit.cache import DiTCache
from mdiff.video.dit.model import PRESETS, DiTConfig, SpaceTimeDiT
from mdiff.video.dit.wan import WanTransformer, WanTransformerConfig

__all__ = ["PRESETS", "DiTCache", "DiTConfig", "SpaceTimeDiT", "WanTransformer",
           "WanTransformerConfig"]  # fmt: skip
