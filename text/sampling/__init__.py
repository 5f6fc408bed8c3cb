"""Sampling text: the denoising loop (`sampler`, over the core's `mdiff.unmasking` step) with its
EOS policy, canvas layout, model runner (guidance, caches), streaming, token healing, and the
autoregressive baseline (`ar`)."""

from mdiff.text.sampling.generation import GenerationConfig, GenerationOutput
from mdiff.text.sampling.sampler import denoise, generate

__all__ = ["GenerationConfig", "GenerationOutput", "denoise", "generate"]
