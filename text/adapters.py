"""Alias of `mdiff.text.model.adapters` (its name before the subpackages)."""

from mdiff.text.model.adapters import HFAdapter, dream_spec, from_masked_lm, llada_spec

__all__ = ["HFAdapter", "dream_spec", "from_masked_lm", "llada_spec"]
