"""The contract between text denoisers and the sampler.

Every model the sampler drives — our own `TextDenoiser` or a transformers model behind an
adapter — is a callable with a `spec`::

    logits = model(input_ids,                 # (B, Lnew) LongTensor
                   attention_mask=None,       # (B, Lcache + Lnew) bool, True = real token
                   position_ids=None,         # (B, Lnew) absolute positions (left padding!)
                   cache=None,                # mdiff.nn.KVCache or None
                   cache_at=None)             # see below
    # -> (B, Lnew, V) float logits, ALIGNED: logits[:, i] scores the token at input position i

Adapters undo any logits shift (Dream-style models score position i from hidden state i−1),
so the sampler never sees one. With a cache (only when ``spec.supports_cache``):

- ``cache_at=None``: the new tokens follow the cached ones; they read ``[cache ; new]`` and
  their keys are *staged* — the caller calls ``cache.commit()`` (keep them, e.g. a finished
  block) or ``cache.discard()`` (a denoising step that only reads).
- ``cache_at=s``: the new tokens *replace* cached positions ``[s, s + Lnew)`` for this call
  only (Fast-dLLM's dual cache); nothing is staged.

``attention`` says what a position may see: ``"bidirectional"`` (everything not padding),
``"block_causal"`` (blocks of ``block_size`` tokens; block j sees blocks ≤ j — BD3-LM, which
makes the block KV cache exact) or ``"causal"`` (the autoregressive baseline: its logits at
position i score the *next* token, i + 1; only `mdiff.text.sampling.ar` drives such a model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdiff.errors import InvalidInputError

__all__ = ["ATTENTION_KINDS", "DenoiserSpec"]

ATTENTION_KINDS = ("bidirectional", "block_causal", "causal")


@dataclass(frozen=True)
class DenoiserSpec:
    """What the sampler must know about a model: its special ids and how it attends."""

    vocab_size: int
    mask_id: int
    pad_id: int | None = None
    bos_id: int | None = None
    eos_ids: tuple[int, ...] = field(default_factory=tuple)
    logits_shift: int = 0  # 1 = the raw model scores token i at position i − 1 (Dream)
    attention: str = "bidirectional"
    block_size: int | None = None  # tokens per block for "block_causal"
    supports_cache: bool = False
    # ids ≥ text_vocab are rows past the tokenizer's vocabulary (an embedding padded to a round
    # size): they have no text and are never proposed (except in the literal mode); None: all
    text_vocab: int | None = None

    @property
    def fill_id(self) -> int:
        """The id padding slots of a canvas hold: ``pad_id``, else ``mask_id``."""
        return self.pad_id if self.pad_id is not None else self.mask_id

    def __post_init__(self):
        if self.attention not in ATTENTION_KINDS:
            raise InvalidInputError(
                f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}"
            )
        if not 0 <= self.mask_id < self.vocab_size:
            raise InvalidInputError(f"mask_id {self.mask_id} outside vocab {self.vocab_size}")
        if self.pad_id is not None and self.pad_id == self.mask_id:
            raise InvalidInputError("pad_id must differ from mask_id")
        if self.logits_shift not in (0, 1):
            raise InvalidInputError(f"logits_shift must be 0 or 1, got {self.logits_shift}")
        if self.text_vocab is not None and not 0 < self.text_vocab <= self.vocab_size:
            raise InvalidInputError(
                f"text_vocab must lie in (0, {self.vocab_size}], got {self.text_vocab}"
            )
        if self.attention == "block_causal" and not (self.block_size and self.block_size > 0):
            raise InvalidInputError("a block_causal spec needs a positive block_size")
        object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))
