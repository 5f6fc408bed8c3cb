"""Drive `transformers` models through the sampler contract of `mdiff.text.model.spec`.

`HFAdapter(model, spec)` wraps any model whose output has `.logits` (B, L, V) over the input
sequence. It passes a 2-D key-padding `attention_mask` and `position_ids` when the model's
`forward` accepts them, and undoes the logits shift of AR-initialised diffusion LMs (Dream,
DiffuCoder), whose raw logits at i − 1 score the token at i:

    aligned = cat(raw[:, :1], raw[:, :-1])       # position 0 reuses raw[:, 0], as Dream does

Adapters have no KV cache (`supports_cache=False`). Eval mode and `torch.no_grad()` are the
caller's choice. Special ids: LLaDA (mask 126336, EOS 126081, EoT 126348, no shift) and Dream
(mask 151666, shift 1) — see research/text-diffusion.md; a masked LM (BERT, ModernBERT) takes
its ids from its tokenizer.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError
from mdiff.text.model.spec import DenoiserSpec

__all__ = ["HFAdapter", "dream_spec", "from_masked_lm", "llada_spec"]


class HFAdapter(nn.Module):
    """`adapter(input_ids, attention_mask, position_ids) -> aligned logits (B, L, V)`."""

    def __init__(self, model: nn.Module, spec: DenoiserSpec):
        super().__init__()
        if not isinstance(spec, DenoiserSpec):
            raise InvalidInputError(f"spec must be a DenoiserSpec, got {type(spec).__name__}")
        self.model = model
        self._spec = dataclasses.replace(spec, supports_cache=False)
        params = inspect.signature(model.forward).parameters
        self._accepts = {p for p in ("attention_mask", "position_ids", "use_cache") if p in params}

    @property
    def spec(self) -> DenoiserSpec:
        return self._spec

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Any = None,
        cache_at: int | None = None,
    ) -> Tensor:
        """input_ids (B, L) -> logits (B, L, V), logits[:, i] scoring the token at i."""
        if cache is not None or cache_at is not None:
            raise InvalidInputError("transformers adapters have no KV cache (supports_cache=False)")
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.numel() == 0:
            raise InvalidInputError("input_ids must be a non-empty (B, L) tensor")
        b, n = input_ids.shape
        kwargs: dict[str, Any] = {"use_cache": False} if "use_cache" in self._accepts else {}
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (b, n):
                raise InvalidInputError(
                    f"attention_mask must be (B, L) = {(b, n)}, got {tuple(attention_mask.shape)}"
                )
            if "attention_mask" not in self._accepts:
                raise InvalidInputError(f"{type(self.model).__name__} takes no attention_mask")
            kwargs["attention_mask"] = attention_mask.to(torch.long)  # (B, L), 1 = real token
        if position_ids is not None:
            if position_ids.shape[-1] != n or position_ids.dim() != 2:
                raise InvalidInputError(f"position_ids must be (B, L) with L={n}")
            if "position_ids" in self._accepts:
                kwargs["position_ids"] = position_ids.to(torch.long).expand(b, n)  # (B, L)
            elif not torch.equal(position_ids.cpu(), torch.arange(n).expand_as(position_ids)):
                raise InvalidInputError(f"{type(self.model).__name__} takes no position_ids")
        out = self.model(input_ids=input_ids, **kwargs)
        logits = getattr(out, "logits", None)
        if not isinstance(logits, Tensor) or logits.shape[:2] != (b, n):
            raise InvalidInputError("the wrapped model must return .logits of shape (B, L, V)")
        if logits.shape[-1] != self._spec.vocab_size:
            raise InvalidInputError(
                f"model returns {logits.shape[-1]} logits, spec says vocab {self._spec.vocab_size}"
            )
        if self._spec.logits_shift == 1:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # (B, L, V), aligned
        return logits


def llada_spec(
    vocab_size: int = 126464,
    mask_id: int = 126336,
    eos_ids: tuple[int, ...] = (126081, 126348),  # EOS <|endoftext|>, EoT <|eot_id|>
    pad_id: int | None = None,
    bos_id: int | None = None,
) -> DenoiserSpec:
    """LLaDA: bidirectional, absorbing [MASK] 126336, no logits shift (vocab of LLaDA-8B)."""
    return DenoiserSpec(
        vocab_size=vocab_size, mask_id=mask_id, pad_id=pad_id, bos_id=bos_id,
        eos_ids=eos_ids, logits_shift=0, attention="bidirectional",
    )  # fmt: skip


def dream_spec(
    vocab_size: int = 152064,
    mask_id: int = 151666,
    eos_ids: tuple[int, ...] = (151643,),  # Qwen2.5 <|endoftext|>
    pad_id: int | None = None,
    bos_id: int | None = None,
) -> DenoiserSpec:
    """Dream / DiffuCoder: bidirectional, [MASK] 151666, logits shifted by one (vocab of
    Dream-v0-7B)."""
    return DenoiserSpec(
        vocab_size=vocab_size, mask_id=mask_id, pad_id=pad_id, bos_id=bos_id,
        eos_ids=eos_ids, logits_shift=1, attention="bidirectional",
    )  # fmt: skip


def from_masked_lm(model: nn.Module, tokenizer_or_ids: Any) -> HFAdapter:
    """Wrap a masked LM (BERT, ModernBERT, …) as a bidirectional denoiser.

    `tokenizer_or_ids` is a tokenizer (its mask / pad / cls-or-bos / sep-or-eos ids) or a mapping
    with keys `mask_id` and optionally `pad_id`, `bos_id`, `eos_ids`.
    """
    if isinstance(tokenizer_or_ids, Mapping):
        ids = dict(tokenizer_or_ids)
        unknown = set(ids) - {"mask_id", "pad_id", "bos_id", "eos_ids"}
        if unknown or "mask_id" not in ids:
            raise InvalidInputError(
                f"ids need 'mask_id' (and optionally pad_id, bos_id, eos_ids), got {sorted(ids)}"
            )
    else:
        tok = tokenizer_or_ids
        if getattr(tok, "mask_token_id", None) is None:
            raise InvalidInputError(f"{type(tok).__name__} has no mask token")
        bos = _first(tok, "bos_token_id", "cls_token_id")
        eos = _first(tok, "eos_token_id", "sep_token_id")
        ids = {
            "mask_id": tok.mask_token_id,
            "pad_id": getattr(tok, "pad_token_id", None),
            "bos_id": bos,
            "eos_ids": () if eos is None else (eos,),
        }
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is None:
        raise InvalidInputError("the model needs a .config.vocab_size")
    return HFAdapter(model, DenoiserSpec(vocab_size=vocab, attention="bidirectional", **ids))


def _first(obj: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None
