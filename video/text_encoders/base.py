"""Text encoders for the video DiT: prompts -> (embeddings (B, S, D), mask (B, S) bool).

    emb, mask = encoder.encode(["a red circle moving left", ""])  # (B, S, D) float, (B, S) bool
    emb, mask = encoder.null(batch)                               # "no prompt", (B, S_null, ·)

`mask` is True on real tokens; embeddings are zero where it is False. They come out on the
encoder's device in its dtype (those of the null embedding).

**No prompt.** A prompt that yields no tokens ("" or whitespace; punctuation only, for the word
tokenizer) means "no prompt": its row is the learned null embedding, a trainable
(null_length, D) parameter with an all-True mask, which is also the unconditional branch of
classifier-free guidance. Caption dropout is therefore replacing captions by "" (see
`drop_captions`), and uncaptioned videos train the unconditional branch. An empty *list* of
prompts is an `InvalidInputError`. Rows are padded to S = the longest row of the batch.

**Frozen.** `HFTextEncoder` (in `hf`) is always frozen; `ShapesTextEncoder` (in
`shapes`) trains (jointly with the DiT) until `freeze()`.
A frozen body has requires_grad False, stays in
eval mode through `.train()` and runs under no_grad; the null embedding stays trainable.

Prompts longer than `max_length` tokens are truncated with a warning, or raise
`InvalidInputError` when `truncation` is off.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError

__all__ = ["TextEncoder", "check_prompts", "drop_captions"]

logger = logging.getLogger(__name__)


def check_prompts(prompts) -> list[str]:
    """A non-empty list of str (a bare str is a batch of one), else `InvalidInputError`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise InvalidInputError(f"prompts must be a list of str, got {type(prompts).__name__}")
    if not prompts:
        raise InvalidInputError("prompts is an empty list; pass '' for 'no prompt'")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidInputError(f"prompts[{i}] must be a str, got {type(p).__name__}")
    return list(prompts)


def drop_captions(prompts: list[str], p: float, generator: torch.Generator | None = None):
    """Caption dropout: each prompt becomes "" (→ null embedding) with probability p."""
    prompts = check_prompts(prompts)
    if not 0.0 <= p <= 1.0:
        raise InvalidInputError(f"caption dropout probability must be in [0, 1], got {p}")
    drop = torch.rand(len(prompts), generator=generator) < p
    return ["" if d else s for s, d in zip(prompts, drop.tolist(), strict=True)]


class TextEncoder(nn.Module):
    """Base class: subclasses implement `_encode_text(prompts) -> (hidden (B, L, D), mask)`."""

    def __init__(self, dim: int, null_length: int, max_length: int, truncation: bool, **kw):
        super().__init__()
        for name, value in (("dim", dim), ("null_length", null_length), ("max_length", max_length)):
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
        self.dim, self.max_length, self.truncation, self.frozen = dim, max_length, truncation, False
        self.null_embedding = nn.Parameter(torch.empty(null_length, dim, **kw))
        nn.init.normal_(self.null_embedding, std=0.02)

    @property
    def null_length(self) -> int:
        return self.null_embedding.shape[0]

    @property
    def device(self) -> torch.device:
        return self.null_embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return self.null_embedding.dtype

    def null(self, batch: int) -> tuple[Tensor, Tensor]:
        """The null embedding repeated: (batch, null_length, D), mask all True."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InvalidInputError(f"batch must be a positive int, got {batch!r}")
        emb = self.null_embedding[None].expand(batch, -1, -1)  # (B, S_null, D)
        return emb, torch.ones(batch, self.null_length, dtype=torch.bool, device=self.device)

    def unknown_words(self, prompts: list[str]) -> list[str]:
        """Words of ``prompts`` the encoder has no token for (a word-level vocabulary maps them
        to ``[UNK]``); subword tokenizers know every word, so the default is none."""
        check_prompts(prompts)
        return []

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """prompts (B,) -> embeddings (B, S, D), mask (B, S) bool; see the module docstring."""
        prompts = check_prompts(prompts)
        text = [i for i, p in enumerate(prompts) if p.strip()]
        if text:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
                hidden, tmask = self._encode_text([prompts[i] for i in text])  # (n, L, D), (n, L)
            hidden = hidden.to(self.dtype).masked_fill(~tmask[..., None], 0.0)
            text = [i for i, ok in zip(text, tmask.any(1).tolist(), strict=True) if ok]
            hidden, tmask = hidden[tmask.any(1)], tmask[tmask.any(1)]  # rows with tokens
        empty = sorted(set(range(len(prompts))) - set(text))
        s = max(tmask.shape[1] if text else 0, self.null_length if empty else 0)
        emb = torch.zeros(len(prompts), s, self.dim, dtype=self.dtype, device=self.device)
        mask = torch.zeros(len(prompts), s, dtype=torch.bool, device=self.device)
        if text:
            emb[text, : hidden.shape[1]], mask[text, : hidden.shape[1]] = hidden, tmask
        if empty:
            emb[empty, : self.null_length] = self.null_embedding  # (n_empty, S_null, D)
            mask[empty, : self.null_length] = True
        return emb, mask

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        return self.encode(prompts)

    def _encode_text(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _check_lengths(self, lengths: list[int]) -> None:
        long = [(i, n) for i, n in enumerate(lengths) if n > self.max_length]
        if long and not self.truncation:
            i, n = long[0]
            raise InvalidInputError(
                f"prompt {i} has {n} tokens, more than max_length={self.max_length} "
                "(truncation is off)"
            )
        if long:
            logger.warning("%d prompt(s) truncated to %d tokens", len(long), self.max_length)

    def freeze(self) -> TextEncoder:
        """Freeze the encoder body (not the null embedding): no grad, eval mode."""
        self.frozen = True
        for p in self.parameters():
            if p is not self.null_embedding:
                p.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if getattr(self, "frozen", False):
            for child in self.children():
                child.eval()
        return self
