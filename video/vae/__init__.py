"""The causal 3D VAE (Wan 2.1 and 2.2 layouts, as diffusers' AutoencoderKLWan): the model and
its blocks, streaming sessions with explicit state, held-out evaluation and the training recipe."""

from mdiff.video.vae.model import CausalVAE, CausalVAEConfig
from mdiff.video.vae.stream import DecodeSession, EncodeSession, Tiling, VAEStreamState

__all__ = ["CausalVAE", "CausalVAEConfig", "DecodeSession", "EncodeSession", "Tiling",
           "VAEStreamState"]  # fmt: skip
