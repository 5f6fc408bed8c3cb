"""`WanT5Encoder`: UMT5 text states exactly as diffusers' WanPipeline makes them.

    encoder = WanT5Encoder(umt5_encoder_model, tokenizer)      # max_length 512
    emb, mask = encoder.encode(["a cat"])    # (1, 512, D): the states of the real tokens, zeros
    emb, mask = encoder.null(1)              # the states of "" (WanPipeline's negative prompt)

WanPipeline (`_get_t5_prompt_embeds`) cleans each prompt (ftfy when installed, HTML entities
unescaped twice, whitespace runs to one space), tokenizes it padded to `max_sequence_length`
(512) with the tokenizer's special tokens (T5's EOS), runs the encoder with the attention mask,
and keeps the states of the real tokens followed by zeros up to 512. Its unconditional branch
is the negative prompt, "" by default, encoded the same way (for T5: the EOS token alone).
So here, unlike `TextEncoder`'s "no prompt" rule, "" is encoded by UMT5 and `null` is that
encoding; the base class's learned null embedding is unused (kept at zero, so the weights hash
is a function of the folder). The mask is True on the real tokens; the Wan transformer reads
no mask, and zero rows are what it sees in diffusers too.
"""

from __future__ import annotations

import html
import re

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError
from mdiff.video.text_encoders.base import check_prompts
from mdiff.video.text_encoders.hf import HFTextEncoder

__all__ = ["WanT5Encoder", "prompt_clean"]

MAX_SEQUENCE_LENGTH = 512  # WanPipeline.__call__'s default


def prompt_clean(text: str) -> str:
    """WanPipeline's `prompt_clean`: ftfy (if installed), HTML unescaped twice, whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class WanT5Encoder(HFTextEncoder):
    """A frozen UMT5 encoder + tokenizer with WanPipeline's padding and empty-prompt rules."""

    def __init__(self, model, tokenizer, max_length: int = MAX_SEQUENCE_LENGTH):
        super().__init__(model, tokenizer, max_length, padding="max_length")
        with torch.no_grad():
            self.null_embedding.zero_()

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """prompts (B,) -> states (B, max_length, D) zero past each prompt's tokens, mask."""
        prompts = [prompt_clean(p) for p in check_prompts(prompts)]
        self._check_lengths([len(ids) for ids in self.tokenizer(prompts)["input_ids"]])
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_length,
                               truncation=True, add_special_tokens=True,
                               return_attention_mask=True, return_tensors="pt")  # fmt: skip
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        with torch.no_grad():
            hidden = self.model(ids, mask).last_hidden_state  # (B, L, D)
        keep = torch.arange(ids.shape[1], device=self.device) < mask.gt(0).sum(1, keepdim=True)
        hidden = hidden.to(self.dtype).masked_fill(~keep[..., None], 0.0)
        return hidden, keep  # (B, L, D), (B, L) bool

    def null(self, batch: int) -> tuple[Tensor, Tensor]:
        """The unconditional branch: the encoding of "" (WanPipeline's default negative)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InvalidInputError(f"batch must be a positive int, got {batch!r}")
        return self.encode([""] * batch)
