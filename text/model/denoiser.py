"""`TextDenoiser`: a masked-diffusion language model on the core transformer block.

No time input (masked diffusion LMs such as LLaDA and MDLM predict x_0 from the masked
sequence alone): token embedding → `depth` × TransformerBlock (affine LayerNorm, 1-D RoPE over
absolute positions) → final LayerNorm → lm head. The call follows `mdiff.text.model.spec`.

What a query at absolute position p sees, for a key at absolute position p' that is not padding:

    bidirectional   every key
    block_causal    p' // block_size <= p // block_size         (BD3-LM; exact block KV cache)
    causal          p' <= p                                      (the autoregressive baseline)

Cached keys are laid out in slots; a key's absolute position is taken slot-contiguous from the
first new token (left padding keeps real tokens contiguous), so the rule above holds through a
cache. With block_causal, commit whole blocks (in position space) for the cache to be exact.

`block_forward(x_t, x_0)` is BD3-LM's vectorised training pass over concat(x_t, x_0) (2L):

    x_t block b  sees  x_t block b (both ways)  and  x_0 blocks < b
    x_0 block b  sees  x_0 blocks <= b
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mdiff.errors import InvalidInputError
from mdiff.hub import PretrainedMixin, preset_config
from mdiff.nn import (
    BlockCausal,
    BlockConfig,
    Causal,
    Dense,
    KVCache,
    RotaryEmbedding,
    TransformerBlock,
)
from mdiff.nn.attention import AttnMask
from mdiff.text.model.spec import ATTENTION_KINDS, DenoiserSpec

__all__ = ["PRESETS", "TextDenoiser", "TextDenoiserConfig"]


@dataclass
class TextDenoiserConfig:
    """Architecture, special ids, and how the model is used at inference: `context`, the tokens
    it sees when infilling (its training window; None = up to `max_len`), and `fim_order`, the
    FIM prompt order of an autoregressive baseline ("psm" | "spm", see `mdiff.text.data`)."""

    vocab_size: int
    dim: int = 256
    depth: int = 6
    heads: int = 4
    kv_heads: int | None = None  # None = heads; fewer = grouped-query attention
    mlp: str = "swiglu"  # "swiglu" or "gelu"
    mlp_ratio: float = 4.0
    max_len: int = 1024  # longest key sequence (cache + new tokens)
    attention: str = "bidirectional"  # one of mdiff.text.model.spec.ATTENTION_KINDS
    block_size: int | None = None  # tokens per block, required for "block_causal"
    mask_id: int = 3
    pad_id: int | None = 0
    bos_id: int | None = 1
    eos_id: int | None = 2
    tie_embeddings: bool = True
    dropout: float = 0.0  # on the token embeddings
    rope_theta: float = 10000.0
    backend: str = "auto"  # attention kernel, see mdiff.nn.attention
    context: int | None = None  # tokens seen when infilling; None = max_len
    fim_order: str = "psm"  # FIM prompt order of an autoregressive baseline

    def __post_init__(self):
        from mdiff.text.data import FIM_ORDERS  # here: mdiff.text.data imports this package

        if self.attention not in ATTENTION_KINDS:
            raise InvalidInputError(
                f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}"
            )
        if self.attention == "block_causal" and not (self.block_size and self.block_size > 0):
            raise InvalidInputError("attention='block_causal' needs a positive block_size")
        for name in ("vocab_size", "dim", "depth", "heads", "max_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {getattr(self, name)}")
        for name in ("mask_id", "pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise InvalidInputError(f"{name}={value} outside vocab of {self.vocab_size}")
        if self.mask_id in (self.pad_id, self.bos_id, self.eos_id):
            raise InvalidInputError("mask_id must differ from pad_id, bos_id and eos_id")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInputError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.context is not None and not (type(self.context) is int and self.context >= 1):
            raise InvalidInputError(f"context must be a positive int or None, got {self.context!r}")
        if self.fim_order not in FIM_ORDERS:
            raise InvalidInputError(
                f"fim_order must be one of {FIM_ORDERS}, got {self.fim_order!r}"
            )
        if (self.dim // self.heads) % 2:
            raise InvalidInputError(f"head dim {self.dim}/{self.heads} must be even for RoPE")
        self.block_config()  # validates dim / heads / kv_heads / mlp

    def block_config(self) -> BlockConfig:
        return BlockConfig(
            dim=self.dim, heads=self.heads, kv_heads=self.kv_heads, mlp=self.mlp,
            mlp_ratio=self.mlp_ratio, cond_dim=None,
        )  # fmt: skip

    @classmethod
    def preset(cls, name: str, **overrides) -> TextDenoiserConfig:
        """A config from `PRESETS[name]`, with any field overridden (e.g. vocab_size)."""
        return preset_config(cls, PRESETS, name, **overrides)


PRESETS: dict[str, dict] = {
    # name: config fields (vocab_size is usually overridden to fit the tokenizer)
    "test": dict(vocab_size=64, dim=32, depth=2, heads=4, kv_heads=2, max_len=128),
    "code-tiny": dict(vocab_size=4096, dim=256, depth=6, heads=4, max_len=1024),  # ≈ 5.8M
    "code-tiny-bd3": dict(
        vocab_size=4096,
        dim=256,
        depth=6,
        heads=4,
        max_len=1024,
        attention="block_causal",
        block_size=16,
    ),  # fmt: skip
    "code-small": dict(vocab_size=4096, dim=512, depth=8, heads=8, kv_heads=4, max_len=2048),
}


class TextDenoiser(nn.Module, PretrainedMixin):
    """Masked-diffusion LM: `model(input_ids, attention_mask, position_ids, cache, cache_at)`.

    Folders of the old layout, whose config.json lacks `context` / `fim_order`, take them from
    their training log (`hub.with_legacy_fields`)."""

    config_class = TextDenoiserConfig
    takes_logits_from = True  # forward(..., logits_from=k): the sampler's narrow windows
    legacy_log_fields = {"context": ("data", "seq_len"), "fim_order": ("data", "fim_order")}

    def __init__(self, config: TextDenoiserConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.drop = nn.Dropout(c.dropout)
        self.rope = RotaryEmbedding(c.dim // c.heads, theta=c.rope_theta)
        self.blocks = nn.ModuleList(
            TransformerBlock(c.block_config(), c.backend) for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02 / math.sqrt(2 * c.depth))
        if c.tie_embeddings:
            self.head.weight = self.embed.weight

    @property
    def spec(self) -> DenoiserSpec:
        c = self.config
        return DenoiserSpec(
            vocab_size=c.vocab_size, mask_id=c.mask_id, pad_id=c.pad_id, bos_id=c.bos_id,
            eos_ids=() if c.eos_id is None else (c.eos_id,), attention=c.attention,
            block_size=c.block_size if c.attention == "block_causal" else None,
            supports_cache=True,
        )  # fmt: skip

    def new_cache(self) -> KVCache:
        """An empty KV cache with one layer per block."""
        return KVCache(self.config.depth)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
        cache_at: int | None = None,
        logits_from: int = 0,
    ) -> Tensor:
        """input_ids (B, L) -> logits (B, L, V). attention_mask (B, Lk), True = real token, over
        the keys: Lcache + L, or Lcache with `cache_at`. position_ids (B, L), default the slots.
        cache_at=None stages the new keys (caller commits or discards); cache_at=s replaces
        cached slots [s, s + L) for this call only. ``logits_from=k``: the logits of positions
        k… only (B, L − k, V) — no head on the rest (e.g. clean blocks riding into the cache)."""
        b, n = self._check_ids(input_ids)
        if isinstance(logits_from, bool) or not isinstance(logits_from, int) or not (
                0 <= logits_from < n):  # fmt: skip
            raise InvalidInputError(f"logits_from must be an int in [0, {n}), got {logits_from!r}")
        lc = 0 if cache is None else cache.length
        if cache_at is not None and (cache is None or not 0 <= cache_at <= lc - n):
            raise InvalidInputError(
                f"cache_at={cache_at} needs a cache holding slots [{cache_at}, {cache_at + n}), "
                f"got a cache of length {lc if cache is not None else None}"
            )
        if cache is not None and cache.n_layers != self.config.depth:
            raise InvalidInputError(f"cache has {cache.n_layers} layers, model {len(self.blocks)}")
        start = lc if cache_at is None else cache_at  # slot of the first new token
        lk = lc + n if cache_at is None else lc  # key length
        if lk > self.config.max_len:
            raise InvalidInputError(f"{lk} keys exceed max_len={self.config.max_len}")
        key_ok = self._check_mask(attention_mask, b, lk)
        if position_ids is None:
            pos = torch.arange(start, start + n, device=input_ids.device).expand(b, n)  # (B, L)
        else:
            pos = self._check_positions(position_ids, b, n)  # (B, L)
        if position_ids is None and key_ok is None and cache_at is None:  # slots == positions
            mask = self._structured_mask()
        else:
            kpos = pos[:, :1] - start + torch.arange(lk, device=pos.device)  # (B, Lk)
            kpos = torch.cat([kpos[:, :start], pos, kpos[:, start + n :]], dim=1)  # (B, Lk)
            mask = self._dense_mask(pos, kpos, key_ok)  # (B, 1, L, Lk) or None
        x = self.drop(self.embed(input_ids))  # (B, L, D)
        rope = self.rope.freqs(pos[..., None])  # 2 × (B, L, hd/2)
        for i, block in enumerate(self.blocks):
            layer = None if cache is None else cache.layer(i, at=cache_at)
            x = block(x, rope=rope, mask=mask, cache=layer)  # (B, L, D)
        return self.head(self.norm(x[:, logits_from:]))  # (B, L − logits_from, V)

    def block_forward(
        self,
        x_t: Tensor,
        x_0: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """BD3-LM vectorised pass: x_t, x_0 (B, L) -> logits for x_t (B, L, V).
        attention_mask / position_ids (B, L) apply to both halves."""
        if self.config.attention != "block_causal":
            raise InvalidInputError("block_forward needs a model with attention='block_causal'")
        b, n = self._check_ids(x_t)
        if x_0.shape != x_t.shape:
            raise InvalidInputError(f"x_0 {tuple(x_0.shape)} must match x_t {tuple(x_t.shape)}")
        self._check_ids(x_0)
        if 2 * n > self.config.max_len:
            raise InvalidInputError(f"2·{n} tokens exceed max_len={self.config.max_len}")
        key_ok = self._check_mask(attention_mask, b, n)
        if position_ids is None:
            pos = torch.arange(n, device=x_t.device).expand(b, n)  # (B, L)
        else:
            pos = self._check_positions(position_ids, b, n)  # (B, L)
        blk = pos // self.config.block_size  # (B, L)
        q, k = blk[:, :, None], blk[:, None, :]  # (B, L, 1), (B, 1, L)
        top = torch.cat([q == k, k < q], dim=2)  # x_t queries: (B, L, 2L)
        bottom = torch.cat([torch.zeros_like(top[..., :n]), k <= q], dim=2)  # x_0 queries
        allowed = torch.cat([top, bottom], dim=1)  # (B, 2L, 2L)
        if key_ok is not None:
            allowed = allowed & key_ok.repeat(1, 2)[:, None, :]  # (B, 2L, 2L)
        pos2 = pos.repeat(1, 2)  # (B, 2L)
        x = self.drop(self.embed(torch.cat([x_t, x_0], dim=1)))  # (B, 2L, D)
        rope = self.rope.freqs(pos2[..., None])  # 2 × (B, 2L, hd/2)
        for block in self.blocks:
            x = block(x, rope=rope, mask=Dense(allowed[:, None]))  # (B, 2L, D)
        return self.head(self.norm(x[:, :n]))  # (B, L, V)

    # ---------------------------------------------------------------- helpers

    def _structured_mask(self) -> AttnMask:
        """The mask when every position equals its slot (`attend` aligns queries at the end)."""
        kind = self.config.attention
        if kind == "causal":
            return Causal()
        return BlockCausal(self.config.block_size) if kind == "block_causal" else None

    def _dense_mask(self, pos: Tensor, kpos: Tensor, key_ok: Tensor | None) -> AttnMask:
        """(B, 1, L, Lk) mask from query positions (B, L), key positions (B, Lk), padding."""
        q, k = pos[:, :, None], kpos[:, None, :]  # (B, L, 1), (B, 1, Lk)
        kind, size = self.config.attention, self.config.block_size
        allowed = None
        if kind == "causal":
            allowed = k <= q  # (B, L, Lk)
        elif kind == "block_causal":
            allowed = k // size <= q // size  # (B, L, Lk), floor division (pads may be -1)
        if key_ok is not None:
            allowed = key_ok[:, None, :] if allowed is None else allowed & key_ok[:, None, :]
        return None if allowed is None else Dense(allowed[:, None])

    def _check_ids(self, ids: Tensor) -> tuple[int, int]:
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            raise InvalidInputError("input ids must be a (B, L) LongTensor")
        if ids.numel() == 0:
            raise InvalidInputError(f"input ids must be non-empty, got shape {tuple(ids.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise InvalidInputError(f"token ids must lie in [0, {self.config.vocab_size})")
        return ids.shape[0], ids.shape[1]

    @staticmethod
    def _check_mask(mask: Tensor | None, b: int, lk: int) -> Tensor | None:
        if mask is None:
            return None
        if not isinstance(mask, Tensor) or tuple(mask.shape) != (b, lk):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise InvalidInputError(f"attention_mask must be (B, Lk) = {(b, lk)}, got {got}")
        return mask.bool()

    @staticmethod
    def _check_positions(position_ids: Tensor, b: int, n: int) -> Tensor:
        if not isinstance(position_ids, Tensor) or position_ids.is_floating_point():
            raise InvalidInputError("position_ids must be an integer tensor (B, L)")
        pos = position_ids.long()
        pos = pos[None] if pos.dim() == 1 else pos  # (1 or B, L)
        if pos.dim() != 2 or pos.shape[1] != n or pos.shape[0] not in (1, b):
            raise InvalidInputError(
                f"position_ids must be (B, L) = {(b, n)}, got {tuple(pos.shape)}"
            )
        return pos.expand(b, n)  # (B, L)
