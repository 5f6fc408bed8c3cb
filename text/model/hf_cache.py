"""KV caches for transformers RoPE decoders behind `HFAdapter` (the sampler's cache protocol).

A Llama / Qwen2-architecture model holding LLaDA-, Dream- or BD3-style weights runs through
`HFAdapter` with a 4-D mask built from positions (`mdiff.text.model.spec`). Its keys are rotated
at their *absolute* positions before transformers' `DynamicCache` stores them, and the mask is
built from each key's position, never from its slot in the cache, so the order of the keys
inside the cache does not matter:

- ``cache_at=None`` (prefix cache, exact block cache): the new tokens' keys are appended to the
  `DynamicCache` and *staged*; `HFCache.commit` keeps them, `HFCache.discard` crops them off.
- ``cache_at=s`` (Fast-dLLM's dual cache): the new tokens' keys are appended for one call, the
  stale cached slots ``[s, s + Lnew)`` are hidden by the mask, and the appended keys are cropped
  off after the call.

Dream's logits shift at the seam: the first new slot ``s`` is scored from the hidden state of
slot ``s − 1``, which lives in the cache only as keys and values. The adapter therefore runs one
extra query for slot ``s − 1`` (its token and position are kept per slot here), reading the
cache like every other query; its own freshly appended key is hidden (the cached copy of slot
``s − 1`` is the one read) and is dropped on commit. With a block-causal spec this is exact:
slot ``s − 1`` belongs to an earlier block, which sees only cached blocks.

Which models: `cache_unsupported` says why a model cannot take the cache (None when it can).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

__all__ = ["CACHEABLE_TYPES", "HFCache", "cache_kwarg", "cache_unsupported", "cached_forward"]

# RoPE decoders whose keys are stored after rotation (each checked in tests/text/test_hf_cache.py)
CACHEABLE_TYPES = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma")


def cache_unsupported(model, spec, accepts: set[str], mask_4d: bool) -> str | None:
    """Why `HFAdapter(model, spec)` cannot use a KV cache, or None when it can."""
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", None)
    if spec.attention == "causal":
        return "a causal spec is the autoregressive baseline (`mdiff.text.sampling.ar`)"
    if model_type not in CACHEABLE_TYPES:
        return (
            f"model_type {model_type!r}: only RoPE decoders {CACHEABLE_TYPES} store keys rotated "
            "at absolute positions (absolute position embeddings, or no position_ids, would tie "
            "a cached key to its slot)"
        )
    if not mask_4d:
        return "the model attends as the spec says by itself, so no position-built mask is used"
    if "position_ids" not in accepts or cache_kwarg(model) is None:
        return f"{type(model).__name__}.forward takes no position_ids or no cache"
    layer_types = getattr(cfg, "layer_types", None) or ()
    sliding = getattr(cfg, "use_sliding_window", False) or "sliding_attention" in layer_types
    if sliding or (model_type == "mistral" and getattr(cfg, "sliding_window", None)):
        return "sliding-window layers drop cached keys by slot"
    return None


def cache_kwarg(model) -> str | None:
    """The name `forward` takes a transformers `Cache` under (``cache`` in 5.x)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return next((p for p in ("cache", "past_key_values") if p in params), None)


class HFCache:
    """Committed slots of a canvas for a transformers decoder.

    ``kv``: the model's `DynamicCache` (per layer keys after RoPE and values, (B, Hk, Lc, D));
    ``ids``, ``pos``, ``real``: per committed slot its token id, absolute position (no model
    offset) and non-padding flag, each (B, Lc) — for the masks and for Dream's seam query.
    """

    def __init__(self):
        from transformers import DynamicCache

        self.kv = DynamicCache()  # no config: plain full-attention layers, created lazily
        self.ids: Tensor | None = None
        self.pos: Tensor | None = None
        self.real: Tensor | None = None
        self._staged: tuple[Tensor, Tensor, Tensor, int] | None = None  # ids, pos, real, dup

    @property
    def length(self) -> int:
        """Number of committed slots."""
        return 0 if self.ids is None else self.ids.shape[1]

    @property
    def has_staged(self) -> bool:
        return self._staged is not None

    def stage(self, ids: Tensor, pos: Tensor, real: Tensor, dup: int) -> None:
        """Record the slots (B, Lnew) whose keys the last forward appended after the ``dup``
        (0 or 1) duplicate seam key."""
        self._staged = (ids, pos, real, dup)

    def commit(self) -> None:
        """Keep the staged slots (the seam duplicate, if any, is dropped)."""
        if self._staged is None:
            return
        ids, pos, real, dup = self._staged
        lc = self.length
        if dup:
            self._map(lambda t: torch.cat([t[:, :, :lc], t[:, :, lc + dup :]], dim=2))
        if self.ids is None:
            self.ids, self.pos, self.real = ids, pos, real
        else:
            self.ids = torch.cat([self.ids, ids], 1)
            self.pos = torch.cat([self.pos, pos], 1)
            self.real = torch.cat([self.real, real], 1)
        self._staged = None

    def discard(self) -> None:
        """Drop the keys the last forward appended: it only read the cache."""
        self._staged = None
        self.trim()

    def trim(self) -> None:
        """Cut the `DynamicCache` back to the committed slots."""
        n = self.length
        self._map(lambda t: t[:, :, :n])

    def crop(self, n: int) -> None:
        """Keep the first n committed slots."""
        if self._staged is not None:
            raise InvalidInputError("crop() with staged keys: call commit() or discard() first")
        if not 0 <= n <= self.length:
            raise InvalidInputError(f"cannot crop a cache of length {self.length} to {n}")
        if n == 0:
            self.ids = self.pos = self.real = None
        else:
            self.ids, self.pos, self.real = self.ids[:, :n], self.pos[:, :n], self.real[:, :n]
        self.trim()

    def select(self, rows: Tensor) -> HFCache:
        """A cache of batch rows ``rows`` (1-D indices) only, for a forward that reads it."""
        return select_rows(self, rows, ("ids", "pos", "real"))

    def _map(self, fn) -> None:
        for layer in self.kv.layers:
            if getattr(layer, "is_initialized", False) and layer.keys is not None:
                layer.keys, layer.values = fn(layer.keys), fn(layer.values)

    def __repr__(self) -> str:
        return f"HFCache(length={self.length}, staged={self.has_staged})"


def select_rows(cache, rows: Tensor, fields: tuple[str, ...]):
    """A new cache of ``cache``'s type holding batch rows ``rows`` (1-D indices): its keys and
    values (a `DynamicCache` in ``.kv``) and its per-row tensors ``fields`` (None stays None)."""
    from transformers import DynamicCache

    if cache._staged is not None:
        raise InvalidInputError("select() with staged keys: call commit() or discard() first")
    other = type(cache)()
    other.kv = DynamicCache()
    for i, layer in enumerate(cache.kv.layers):
        if getattr(layer, "is_initialized", False) and layer.keys is not None:
            k, v = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)
            other.kv.update(k, v, i)
    for name in fields:
        t = getattr(cache, name)
        setattr(other, name, None if t is None else t.index_select(0, rows))
    return other


def cached_forward(adapter, input_ids: Tensor, attention_mask: Tensor | None,
                   position_ids: Tensor | None, cache: HFCache,
                   cache_at: int | None) -> Tensor:  # fmt: skip
    """`HFAdapter.forward` with a cache: input_ids (B, Lnew) -> aligned logits (B, Lnew, V).

    attention_mask (B, Lk) over slots: Lk = Lc + Lnew, or Lc with ``cache_at``; position_ids
    (B, Lnew), default the slots."""
    if not isinstance(cache, HFCache):
        raise InvalidInputError(f"cache must come from adapter.new_cache(), got {cache!r}")
    if cache.has_staged:
        raise InvalidInputError("the cache has staged keys; call commit() or discard() first")
    b, n = input_ids.shape
    lc = cache.length
    if cache_at is not None and not 0 <= cache_at <= lc - n:
        raise InvalidInputError(
            f"cache_at={cache_at} needs a cache holding slots [{cache_at}, {cache_at + n}), "
            f"got a cache of length {lc}"
        )
    if lc and cache.ids.shape[0] != b:
        raise InvalidInputError(f"batch of {b} rows, the cache holds {cache.ids.shape[0]}")
    start = lc if cache_at is None else cache_at  # slot of the first new token
    lk = lc + n if cache_at is None else lc
    dev = input_ids.device
    if attention_mask is None:
        slots_ok = torch.ones(b, lk, dtype=torch.bool, device=dev)
    elif tuple(attention_mask.shape) != (b, lk):
        raise InvalidInputError(
            f"attention_mask must be (B, Lk) = {(b, lk)}, got {tuple(attention_mask.shape)}"
        )
    else:
        slots_ok = attention_mask.bool()
    if position_ids is None:
        pos = torch.arange(start, start + n, device=dev).expand(b, n)
    else:
        if position_ids.dim() != 2 or position_ids.shape[-1] != n:
            raise InvalidInputError(f"position_ids must be (B, L) with L={n}")
        pos = position_ids.to(torch.long).expand(b, n)
    new_ok = slots_ok[:, start : start + n]
    dup = int(adapter.spec.logits_shift == 1 and start > 0)  # Dream: score slot s from s − 1
    q_ids, q_pos, q_ok = input_ids, pos, new_ok
    if dup:
        q_ids = torch.cat([cache.ids[:, start - 1 : start], input_ids], 1)
        q_pos = torch.cat([cache.pos[:, start - 1 : start], pos], 1)
        q_ok = torch.cat([torch.zeros_like(new_ok[:, :1]), new_ok], 1)  # the copy is hidden
    cached_ok = slots_ok[:, :lc].clone()
    if cache_at is not None:
        cached_ok[:, start : start + n] = False  # stale keys of the replaced slots
    k_pos = q_pos if lc == 0 else torch.cat([cache.pos, q_pos], 1)  # (B, Lc + Lq)
    allowed = adapter.allowed(q_pos, k_pos, torch.cat([cached_ok, q_ok], 1))  # (B, Lq, Lk)
    own = torch.zeros_like(allowed)
    own[:, :, lc:] = torch.eye(q_ids.shape[1], dtype=torch.bool, device=dev)
    allowed = allowed | (own & ~allowed.any(-1, keepdim=True))  # a padding query reads itself
    try:
        raw = adapter.run_with_cache(q_ids, allowed, q_pos, cache.kv)  # (B, Lq, V)
    except BaseException:
        cache.trim()
        raise
    if cache_at is None:
        cache.stage(input_ids, pos, new_ok, dup)
    else:
        cache.trim()
    logits = raw[:, dup:]
    if adapter.spec.logits_shift == 1:
        prev = torch.zeros(b, n, dtype=torch.bool, device=dev)
        prev[:, 1:] = new_ok[:, :-1]
        if start > 0:
            prev[:, 0] = slots_ok[:, start - 1]
        before = raw[:, :n] if dup else torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
        logits = torch.where(prev[..., None], before, logits)
    return logits
