"""Drive `transformers` models through the sampler contract of `mdiff.text.model.spec`.

`HFAdapter(model, spec)` wraps any model whose output has `.logits` (B, L, V) over the input
sequence. What it passes and undoes:

- Attention. A transformers model whose own attention differs from ``spec.attention`` (a
  Llama / Qwen2-architecture causal LM holding LLaDA- or Dream-style weights, spec
  ``"bidirectional"``) gets a 4-D mask (B, 1, L, L; bool for SDPA, additive for eager) built
  from the padding mask and the spec's rule; transformers 5.x takes a 4-D mask as it is, and
  SDPA then runs without ``is_causal``, so the model's own causal mask is not combined in.
  Only the ``eager`` and ``sdpa`` attention implementations take such a mask (others are
  refused). Otherwise the 2-D key-padding ``attention_mask`` is passed.
- Positions. ``position_ids`` are passed when ``forward`` takes them, plus the RoBERTa-family
  offset ``padding_idx + 1`` (RoBERTa, XLM-R, CamemBERT number real tokens from there). A model
  that takes no ``position_ids`` (LLaDA's signature) numbers slots 0, 1, …; its rows are moved
  left so that every real token sits at the slot equal to its position (right padding), run,
  and moved back — exact for absolute and rotary positions alike.
- Logits shift. AR-initialised diffusion LMs (Dream, DiffuCoder) score the token at i from
  hidden state i − 1; per row ``aligned[i] = raw[i − 1]``, except at the row's first real
  token, which reuses its own ``raw[i]`` as Dream does at position 0 (never a pad slot's).

KV cache (`mdiff.text.model.hf_cache`): ``spec.supports_cache`` is True, and ``new_cache()``
gives an `HFCache` over transformers' `DynamicCache`, for Llama / Qwen2-architecture decoders
run bidirectional or block-causal through the 4-D mask (keys stored rotated at absolute
positions): the exact block cache for block-causal specs, Fast-dLLM's approximate prefix and
dual caches for bidirectional ones. Every other model keeps ``supports_cache=False``, the reason
in ``adapter.cache_unsupported``: absolute position embeddings (BERT, RoBERTa) or no
``position_ids`` (LLaDA's signature) tie a key to its slot; a causal spec is the AR baseline;
sliding-window layers evict keys by slot. Eval mode and `torch.no_grad()` are the
caller's choice. Special ids: LLaDA (mask 126336, EOS 126081, EoT 126348, no shift) and Dream
(mask 151666, shift 1) — see research/text-diffusion.md; a masked LM (BERT, ModernBERT) takes
its ids from its tokenizer. `mdiff.text.model.loaders` picks the spec of a saved folder.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError
from mdiff.text.model.hf_cache import HFCache, cache_kwarg, cache_unsupported, cached_forward
from mdiff.text.model.spec import DenoiserSpec

__all__ = ["HFAdapter", "dream_spec", "from_masked_lm", "llada_spec", "native_attention"]

MASKABLE = ("eager", "sdpa")  # attention implementations that take a 4-D float mask


class HFAdapter(nn.Module):
    """`adapter(input_ids, attention_mask, position_ids) -> aligned logits (B, L, V)`."""

    def __init__(self, model: nn.Module, spec: DenoiserSpec):
        super().__init__()
        if not isinstance(spec, DenoiserSpec):
            raise InvalidInputError(f"spec must be a DenoiserSpec, got {type(spec).__name__}")
        self.model = model
        params = inspect.signature(model.forward).parameters
        self._accepts = {p for p in ("attention_mask", "position_ids", "use_cache") if p in params}
        self.native = native_attention(model)
        self.mask_4d = self.native is not None and self.native != spec.attention
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
        if self.mask_4d and (impl not in MASKABLE or "attention_mask" not in self._accepts):
            raise InvalidInputError(
                f"{type(model).__name__} attends {self.native}ly; running it {spec.attention} "
                f"needs a 4-D attention mask, which attn_implementation={impl!r} does not take: "
                f"load it with attn_implementation='sdpa' or 'eager'"
            )
        self.position_offset = _position_offset(model)
        self._bool_mask = impl == "sdpa"  # SDPA reads a bool mask (4× smaller); eager adds it
        self.cache_unsupported = cache_unsupported(model, spec, self._accepts, self.mask_4d)
        self._cache_kwarg = cache_kwarg(model)
        self._spec = dataclasses.replace(spec, supports_cache=self.cache_unsupported is None)

    @property
    def spec(self) -> DenoiserSpec:
        return self._spec

    @property
    def config(self):
        """The wrapped model's config (e.g. ``max_position_embeddings``), or None."""
        return getattr(self.model, "config", None)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Any = None,
        cache_at: int | None = None,
    ) -> Tensor:
        """input_ids (B, L) -> logits (B, L, V), logits[:, i] scoring the token at i."""
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.numel() == 0:
            raise InvalidInputError("input_ids must be a non-empty (B, L) tensor")
        if cache is not None:
            if self.cache_unsupported is not None:
                raise InvalidInputError(f"no KV cache: {self.cache_unsupported}")
            return cached_forward(self, input_ids, attention_mask, position_ids, cache, cache_at)
        if cache_at is not None:
            raise InvalidInputError("cache_at needs a cache")
        b, n = input_ids.shape
        real = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (b, n):
                raise InvalidInputError(
                    f"attention_mask must be (B, L) = {(b, n)}, got {tuple(attention_mask.shape)}"
                )
            if "attention_mask" not in self._accepts:
                raise InvalidInputError(f"{type(self.model).__name__} takes no attention_mask")
            real = attention_mask.bool()
        shift = None
        if position_ids is not None:
            if position_ids.shape[-1] != n or position_ids.dim() != 2:
                raise InvalidInputError(f"position_ids must be (B, L) with L={n}")
            position_ids = position_ids.to(torch.long).expand(b, n)
            if "position_ids" not in self._accepts:
                shift = _realign_shift(position_ids, real, type(self.model).__name__)
                position_ids = None  # the model numbers slots 0, 1, … itself
        if shift is not None:  # right padding: real tokens at the slots of their positions
            idx = (torch.arange(n, device=input_ids.device) + shift[:, None]).clamp(max=n - 1)
            keep = idx == torch.arange(n, device=idx.device) + shift[:, None]
            ids, keys = input_ids.gather(1, idx), real.gather(1, idx) & keep
            logits = self._run(ids, keys, None)
            back = (torch.arange(n, device=idx.device) - shift[:, None]).clamp(min=0)
            logits = logits.gather(1, back[..., None].expand(b, n, logits.shape[-1]))
        else:
            logits = self._run(input_ids, real, position_ids)
        if self._spec.logits_shift == 1:
            prev = torch.zeros(b, n, dtype=torch.bool, device=logits.device)
            if real is None:
                prev[:, 1:] = True
            else:
                prev[:, 1:] = real[:, :-1]  # the slot before i holds a real token
            before = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            logits = torch.where(prev[..., None], before, logits)  # (B, L, V), aligned
        return logits

    def _run(self, ids: Tensor, real: Tensor | None, positions: Tensor | None) -> Tensor:
        """One forward of the wrapped model: raw logits (B, L, V)."""
        b, n = ids.shape
        kwargs: dict[str, Any] = {"use_cache": False} if "use_cache" in self._accepts else {}
        if self.mask_4d:
            kwargs["attention_mask"] = self._mask(real, positions, b, n, ids.device)
        elif real is not None:
            kwargs["attention_mask"] = real.to(torch.long)  # (B, L), 1 = real token
        if positions is not None:
            kwargs["position_ids"] = positions + self.position_offset  # (B, L)
        return self._check_logits(self.model(input_ids=ids, **kwargs), b, n)

    def _check_logits(self, out, b: int, n: int) -> Tensor:
        logits = getattr(out, "logits", None)
        if not isinstance(logits, Tensor) or logits.shape[:2] != (b, n):
            raise InvalidInputError("the wrapped model must return .logits of shape (B, L, V)")
        if logits.shape[-1] != self._spec.vocab_size:
            raise InvalidInputError(
                f"model returns {logits.shape[-1]} logits, spec says vocab {self._spec.vocab_size}"
            )
        return logits

    def _mask(self, real, positions, b: int, n: int, device) -> Tensor:
        """(B, 1, L, L) mask over the canvas itself (see `as_mask`)."""
        keys = torch.ones(b, n, dtype=torch.bool, device=device) if real is None else real
        pos = torch.arange(n, device=device).expand(b, n) if positions is None else positions
        allowed = self.allowed(pos, pos, keys)
        allowed = allowed | torch.eye(n, dtype=torch.bool, device=device)  # no empty row
        return self.as_mask(allowed)

    def allowed(self, q_pos: Tensor, k_pos: Tensor, k_ok: Tensor) -> Tensor:
        """(B, Lq, Lk) bool: query i (position q_pos (B, Lq)) may read key j (position k_pos,
        non-padding k_ok, both (B, Lk)) under the spec's attention rule."""
        b, lq, lk = q_pos.shape[0], q_pos.shape[1], k_pos.shape[1]
        allowed = k_ok[:, None, :].expand(b, lq, lk)
        if self._spec.attention == "causal":
            allowed = allowed & (k_pos[:, None, :] <= q_pos[:, :, None])
        elif self._spec.attention == "block_causal":
            size = int(self._spec.block_size)
            qb = torch.div(q_pos, size, rounding_mode="floor")
            kb = torch.div(k_pos, size, rounding_mode="floor")
            allowed = allowed & (kb[:, None, :] <= qb[:, :, None])
        return allowed

    def as_mask(self, allowed: Tensor) -> Tensor:
        """(B, Lq, Lk) bool -> (B, 1, Lq, Lk): True where a query may read a key (SDPA), else
        additive (0 / the dtype's min; eager)."""
        if self._bool_mask:
            return allowed[:, None]
        dtype = _float_dtype(self.model)
        zero = torch.zeros((), dtype=dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]

    # ---- KV cache (mdiff.text.model.hf_cache) -----------------------------------------------

    def new_cache(self) -> HFCache:
        """An empty cache for this model (only when ``spec.supports_cache``)."""
        if self.cache_unsupported is not None:
            raise InvalidInputError(f"no KV cache: {self.cache_unsupported}")
        return HFCache()

    def run_with_cache(self, ids: Tensor, allowed: Tensor, positions: Tensor, kv) -> Tensor:
        """One forward reading and extending the `DynamicCache` kv: raw logits (B, Lq, V);
        ``allowed`` (B, Lq, Lc + Lq) over [cached keys ; new keys]."""
        b, n = ids.shape
        kwargs = {self._cache_kwarg: kv, "use_cache": True}
        out = self.model(input_ids=ids, attention_mask=self.as_mask(allowed),
                         position_ids=positions + self.position_offset, **kwargs)  # fmt: skip
        return self._check_logits(out, b, n)


def native_attention(model: nn.Module) -> str | None:
    """How a transformers model attends by itself: "causal", "bidirectional" or None (unknown:
    not a transformers model, or an architecture we cannot tell)."""
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if not isinstance(model_type, str) or not hasattr(cfg, "_attn_implementation"):
        return None
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(cfg, "is_causal", True) is False:
        return "bidirectional"  # transformers' own non-causal switch
    if getattr(cfg, "is_decoder", False):
        return "causal"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "bidirectional"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal"
    return None


def _position_offset(model: nn.Module) -> int:
    """``padding_idx + 1`` for the RoBERTa family (position embeddings with a padding row)."""
    base = getattr(model, "base_model", model)
    pe = getattr(getattr(base, "embeddings", None), "position_embeddings", None)
    if isinstance(pe, nn.Embedding) and pe.padding_idx is not None:
        return int(pe.padding_idx) + 1
    return 0


def _realign_shift(positions: Tensor, real: Tensor | None, name: str) -> Tensor | None:
    """(B,) how far left each row moves so that its real tokens sit at their positions (None:
    they already do); `InvalidInputError` when the positions cannot be reached that way."""
    b, n = positions.shape
    slots = torch.arange(n, device=positions.device).expand(b, n)
    real = torch.ones_like(positions, dtype=torch.bool) if real is None else real
    if torch.equal(positions[real], slots[real]):
        return None
    first = torch.where(real, slots, n).min(1).values.clamp(max=n - 1)  # (B,)
    shift = first - positions.gather(1, first[:, None])[:, 0]
    ok = bool((shift >= 0).all()) and torch.equal(positions[real], (slots - shift[:, None])[real])
    if not ok:
        raise InvalidInputError(
            f"{name} takes no position_ids and these positions are not consecutive per row: "
            "they cannot be given by moving the row"
        )
    return shift


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


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
    if not isinstance(tokenizer_or_ids, Mapping):
        ids["text_vocab"] = text_vocab(tokenizer_or_ids, vocab)
    return HFAdapter(model, DenoiserSpec(vocab_size=vocab, attention="bidirectional", **ids))


def text_vocab(tokenizer, vocab: int) -> int | None:
    """``DenoiserSpec.text_vocab`` for a model of ``vocab`` logits and its tokenizer: the
    tokenizer's size when the embedding is padded past it, else None."""
    n = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    return n if n is not None and 0 < n < vocab else None


def _first(obj: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None
