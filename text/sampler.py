"""Alias of `mdiff.text.sampling` (the sampler's name before the subpackages)."""

from mdiff.text.sampling import GenerationConfig, GenerationOutput, denoise, generate

__all__ = ["GenerationConfig", "GenerationOutput", "denoise", "generate"]
