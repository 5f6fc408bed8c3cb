"""Text models: the built-in `TextDenoiser`, the `DenoiserSpec` contract the sampler reads,
adapters for transformers models, and the code tokenizer."""

from mdiff.text.model.denoiser import PRESETS, TextDenoiser, TextDenoiserConfig
from mdiff.text.model.spec import DenoiserSpec
from mdiff.text.model.tokenizer import CodeTokenizer

__all__ = ["PRESETS", "CodeTokenizer", "DenoiserSpec", "TextDenoiser", "TextDenoiserConfig"]
