"""mdiff.video frontend (see DESIGN.md)."""

from mdiff.video.vae import CausalVAE, CausalVAEConfig
from mdiff.video.vae_stream import DecodeSession, EncodeSession, Tiling, VAEStreamState

__all__ = [
    "CausalVAE",
    "CausalVAEConfig",
    "DecodeSession",
    "EncodeSession",
    "Tiling",
    "VAEStreamState",
]
