"""mdiff.video frontend (see DESIGN.md)."""

from mdiff.video.dit import DiTConfig, SpaceTimeDiT
from mdiff.video.dit_cache import DiTCache
from mdiff.video.pipeline import VideoOutput, VideoPipeline
from mdiff.video.train_vae import VAEObjective, evaluate, export, shapes_vae_config
from mdiff.video.vae import CausalVAE, CausalVAEConfig
from mdiff.video.vae_stream import DecodeSession, EncodeSession, Tiling, VAEStreamState

__all__ = [
    "CausalVAE",
    "DiTCache",
    "DiTConfig",
    "SpaceTimeDiT",
    "CausalVAEConfig",
    "DecodeSession",
    "EncodeSession",
    "Tiling",
    "VAEObjective",
    "VAEStreamState",
    "VideoOutput",
    "VideoPipeline",
    "evaluate",
    "export",
    "shapes_vae_config",
]
