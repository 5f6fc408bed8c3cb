"""LLaDA 2 (inclusionAI's block-diffusion LMs, diffusers' `LLaDA2Pipeline`) through our sampler.

LLaDA 2 attends *block-causally*: position i sees position j when ``j // B ≤ i // B`` (B the
block size its own ``generate`` builds the 4-D mask from), so a block sees itself and every
earlier block. `LLaDA2Driver` wraps such a model (the remote-code ``LLaDA2MoeModelLM``, or any
transformers model that takes a 4-D mask) in the sampler contract (`mdiff.text.model.spec`),
building that mask from the positions and the key padding:

    mask[b, 0, i, j] = real[b, j] and pos[b, j] // B <= pos[b, i] // B   (and always i == j)

`llada2_generate(model, input_ids, **pipeline_kwargs)` takes `LLaDA2Pipeline`'s arguments
(``gen_length``, ``block_length``, ``num_inference_steps``, ``threshold``, ``editing_threshold``,
``max_post_steps``, ``minimal_topk``, ``eos_early_stop``) and returns its ``sequences``: the
prompt starts at position 0 and blocks are absolute (the first generated block may hold the
prompt's tail) and the model attends in blocks of ``block_length``, as in LLaDA 2's own
``generate``; steps per block are ``min(num_inference_steps, gen_length // minimal_topk)``.
Greedy (temperature 0) only. Speed: uncached, a step runs [prompt … current block] as the
pipeline does; with the exact block KV cache (``cache="auto"``/``"exact"``, `LLaDA2Cache`: a
transformers `DynamicCache` plus each cached slot's position and key flag, the 4-D mask built
from positions) it feeds only the current block (its first step also the block just finished)
against the finished blocks' keys — the same tokens. The block-aligned tail past
``gen_length`` is generated but hidden as keys (the pipeline's 2-D mask; LLaDA 2's own
``generate`` shows it). Where it differs from the pipeline: [MASK] is never proposed (the
pipeline's softmax and argmax include it); positions after an early-stopping EOS are EOS (the
pipeline leaves [MASK]); a row whose prompt holds an EOS can still stop early; without editing
a block ends at its last mask (the pipeline runs one more forward, unused).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor, nn

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.text.model.adapters import text_vocab
from mdiff.text.model.llada2_cache import LLaDA2Cache
from mdiff.text.model.spec import DenoiserSpec
from mdiff.text.sampling.generation import GenerationConfig
from mdiff.text.sampling.policies import EOSPolicy

__all__ = ["LLADA2_IDS", "LLaDA2Cache", "LLaDA2Driver", "block_causal_mask", "llada2_config",
           "llada2_generate", "load_llada2"]  # fmt: skip

LLADA2_IDS = {"mask_id": 156895, "eos_id": 156892}  # LLaDA2.0 defaults (its generate's)


def block_causal_mask(positions: Tensor, real: Tensor | None, block_size: int,
                      key_positions: Tensor | None = None) -> Tensor:  # fmt: skip
    """(B, 1, Lq, Lk) bool: query i sees key j when j is real and in block ≤ i's (and itself).

    ``positions`` (B, Lq) of the queries; ``key_positions`` (B, Lk) of the keys (default the
    queries'), the queries being the last Lq keys; ``real`` (B, Lk) or None."""
    kpos = positions if key_positions is None else key_positions
    qblk = torch.div(positions, block_size, rounding_mode="floor")  # (B, Lq)
    see = torch.div(kpos, block_size, rounding_mode="floor")[:, None, :] <= qblk[:, :, None]
    if real is not None:
        see = see & real.bool()[:, None, :]
    lq, lk = positions.shape[1], kpos.shape[1]
    see[:, torch.arange(lq), torch.arange(lk - lq, lk)] = True  # a padding query reads itself
    return see[:, None]


class LLaDA2Driver(nn.Module):
    """``driver(input_ids (B, L), attention_mask (B, Lc + L) bool, position_ids (B, L),
    cache=None) -> (B, L, V)``.

    ``additive``: pass the mask as 0 / finfo.min floats in the model's dtype (LLaDA 2's remote
    code, whose own ``generate`` passes ``log`` of a 0/1 mask to its SDPA path); otherwise as
    bool (transformers models).
    ``key_limit``: positions ≥ it are no key (LLaDA2Pipeline's block-aligned tail).
    ``cache``: offer the exact block KV cache (`new_cache`, `LLaDA2Cache`) when the model's
    ``forward`` takes a transformers cache (``cache`` or ``past_key_values``); the sampler then
    runs only the current block's tokens against the finished blocks' keys.
    """

    takes_logits_from = True  # forward(..., logits_from=k): logits of input positions ≥ k only

    def __init__(self, model: nn.Module, spec: DenoiserSpec, additive: bool = False,
                 key_limit: int | None = None, cache: bool = True):  # fmt: skip
        super().__init__()
        if not isinstance(spec, DenoiserSpec) or spec.attention != "block_causal":
            raise InvalidInputError("LLaDA2Driver needs a block_causal DenoiserSpec")
        self.model, self.additive, self.key_limit = model, additive, key_limit
        self.cache_kwarg = _cache_kwarg(model) if cache else None
        self.keep_kwarg = "logits_to_keep" in _params(model)  # LM head on the kept rows only
        self._spec = dataclasses.replace(spec, supports_cache=self.cache_kwarg is not None)

    @property
    def spec(self) -> DenoiserSpec:
        return self._spec

    def with_block_size(self, block_size: int, key_limit: int | None = None) -> LLaDA2Driver:
        """The same model attending in blocks of ``block_size`` (LLaDA 2's ``generate`` builds
        its mask from the run's ``block_length``), hiding keys at positions ≥ ``key_limit``."""
        spec = dataclasses.replace(self._spec, block_size=block_size)
        return LLaDA2Driver(
            self.model, spec, self.additive, key_limit, self.cache_kwarg is not None
        )

    def new_cache(self) -> LLaDA2Cache:
        if self.cache_kwarg is None:
            raise InvalidInputError(f"{type(self.model).__name__}.forward takes no KV cache")
        return LLaDA2Cache()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, cache: LLaDA2Cache | None = None,
                cache_at: int | None = None, logits_from: int = 0) -> Tensor:  # fmt: skip
        """Logits (B, L − logits_from, V) of input positions ``logits_from …`` (the sampler
        asks only for its window's)."""
        if cache_at is not None:
            raise InvalidInputError("LLaDA2Driver has no dual cache (cache_at): use cache='exact'")
        if cache is not None and not (isinstance(cache, LLaDA2Cache) and self.cache_kwarg):
            raise InvalidInputError(f"cache must come from driver.new_cache(), got {cache!r}")
        if cache is not None and cache.has_staged:
            raise InvalidInputError("the cache has staged keys: call commit() or discard() first")
        if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.numel() == 0:
            raise InvalidInputError("input_ids must be a non-empty (B, L) tensor")
        b, n = input_ids.shape
        if not isinstance(logits_from, int) or not 0 <= logits_from < n:
            raise InvalidInputError(f"logits_from must be an int in [0, {n}), got {logits_from!r}")
        lc = 0 if cache is None else cache.length
        if lc and cache.pos.shape[0] != b:
            raise InvalidInputError(f"batch of {b} rows, the cache holds {cache.pos.shape[0]}")
        for name, t, want in (("attention_mask", attention_mask, (b, lc + n)),
                              ("position_ids", position_ids, (b, n))):  # fmt: skip
            if t is not None and tuple(t.shape) != want:
                raise InvalidInputError(f"{name} must be {want}, got {tuple(t.shape)}")
        dev = input_ids.device
        pos = position_ids
        pos = torch.arange(lc, lc + n, device=dev).expand(b, n) if pos is None else pos.long()
        ok = torch.ones(b, n, dtype=torch.bool, device=dev)
        if attention_mask is not None:
            ok = attention_mask[:, lc:].bool()
        if self.key_limit is not None:
            ok = ok & (pos < self.key_limit)
        kpos, kok = pos, ok
        if lc:
            kpos, kok = torch.cat([cache.pos, pos], 1), torch.cat([cache.ok, ok], 1)
        mask = block_causal_mask(pos, kok, self._spec.block_size, kpos)
        if self.additive:
            dtype = next(self.model.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min
            )
        kw = {} if cache is None else {self.cache_kwarg: cache.kv, "use_cache": True}
        if logits_from and self.keep_kwarg:
            kw["logits_to_keep"] = n - logits_from
        try:
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=pos, **kw)
        except BaseException:
            if cache is not None:
                cache.discard()
            raise
        if cache is not None:
            cache.stage(pos, ok)
        logits = getattr(out, "logits", None)
        if torch.is_tensor(logits) and logits_from and logits.shape[1] == n:
            logits = logits[:, logits_from:]  # a model without logits_to_keep
        if not torch.is_tensor(logits) or logits.shape[:2] != (b, n - logits_from):
            raise InvalidInputError("the wrapped model must return .logits of shape (B, L, V)")
        if logits.shape[-1] != self._spec.vocab_size:
            raise InvalidInputError(
                f"model returns {logits.shape[-1]} logits, spec says vocab {self._spec.vocab_size}"
            )
        return logits


def _params(model) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _cache_kwarg(model) -> str | None:
    """The name ``model.forward`` takes a transformers cache under, or None."""
    params = _params(model)
    return next((p for p in ("cache", "past_key_values") if p in params), None)


def _first_id(*values) -> int | None:
    for v in values:
        if isinstance(v, list | tuple):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    return None


def load_llada2(path, *, block_size: int = 32, dtype: torch.dtype | None = None,
                device=None, trust_remote_code: bool = False,
                cache: bool = True) -> LLaDA2Driver:  # fmt: skip
    """A LLaDA 2 folder (``config.json`` + safetensors weights, optional tokenizer) as a driver.

    The mask id is the tokenizer's ``mask_token_id``, else ``config.mask_token_id``, else LLaDA
    2's 156895 for ``model_type="llada2_moe"``; EOS likewise (``eos_token_id``, 156892). The
    real LLaDA 2 class is remote code in the folder: it runs only with ``trust_remote_code=True``.
    ``block_size`` is the attention block (LLaDA 2 is trained with 32); generation blocks must
    be multiples of it. Weights load from safetensors only (no pickles). ``cache=False``: no
    KV cache (it is tested on transformers' own models, not on the remote LLaDA 2 code).
    """
    import transformers as tf

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a model folder (no config.json)")
    if not isinstance(block_size, int) or block_size < 1:
        raise InvalidInputError(f"block_size must be a positive int, got {block_size!r}")
    try:
        config = tf.AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                               local_files_only=True)  # fmt: skip
        model = tf.AutoModelForCausalLM.from_pretrained(
            folder, config=config, dtype=dtype, use_safetensors=True, local_files_only=True,
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
    except (ValueError, OSError, KeyError, ImportError, TypeError, RuntimeError) as e:
        if not trust_remote_code and "trust_remote_code" in str(e):
            raise CheckpointError(
                f"{folder}: its model (LLaDA 2's LLaDA2MoeModelLM) is code in the folder, which "
                "runs only when you allow it: trust_remote_code=True, or --trust-remote-code "
                "on the command line"
            ) from None
        why = " ".join(str(e).split())[:300]
        raise CheckpointError(f"cannot load {folder}: {why}") from None
    from mdiff.text.model import loaders

    try:  # the folder's code is for the model; its tokenizer is read without it
        tok = loaders._tokenizer(Path(folder))
    except CheckpointError:
        tok = None
    llada2 = str(getattr(config, "model_type", "")).startswith("llada2")
    dflt = LLADA2_IDS if llada2 else {}
    mask = _first_id(getattr(tok, "mask_token_id", None), getattr(config, "mask_token_id", None),
                     dflt.get("mask_id"))  # fmt: skip
    eos = _first_id(getattr(tok, "eos_token_id", None), getattr(config, "eos_token_id", None),
                    dflt.get("eos_id"))  # fmt: skip
    if mask is None:
        raise CheckpointError(f"{folder}: no mask token (tokenizer or config.mask_token_id)")
    pad = _first_id(getattr(tok, "pad_token_id", None), getattr(config, "pad_token_id", None))
    spec = DenoiserSpec(
        vocab_size=int(config.vocab_size), mask_id=mask, eos_ids=() if eos is None else (eos,),
        pad_id=None if pad == mask else pad, attention="block_causal", block_size=block_size,
        text_vocab=None if tok is None else text_vocab(tok, int(config.vocab_size)),
    )  # fmt: skip
    model = model.eval() if device is None else model.to(device).eval()
    return LLaDA2Driver(model, spec, additive=llada2, cache=cache)


def llada2_config(prompt_length: int, *, gen_length: int = 2048, block_length: int = 32,
                  num_inference_steps: int = 32, threshold: float = 0.7,
                  editing_threshold: float | None = 0.5, max_post_steps: int = 16,
                  minimal_topk: int = 1, eos_early_stop: bool = True,
                  eos_token_id: int | None = None,
                  cache: str = "auto") -> GenerationConfig:  # fmt: skip
    """`LLaDA2Pipeline`'s settings (its defaults) as our `GenerationConfig` for a canvas of
    ``prompt_length`` tokens + masks up to the end of its last block. ``cache`` (ours): ``auto``
    (the exact block KV cache when the model has one), ``exact`` or ``none``."""
    for name, v in (("gen_length", gen_length), ("block_length", block_length),
                    ("num_inference_steps", num_inference_steps), ("minimal_topk", minimal_topk),
                    ("max_post_steps", max_post_steps + 1)):  # fmt: skip
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {v!r}")
    steps = min(num_inference_steps, gen_length // minimal_topk)
    if steps < 1:
        raise InvalidInputError(f"minimal_topk {minimal_topk} > gen_length {gen_length}")
    n_blocks = -(-(prompt_length + gen_length) // block_length) - prompt_length // block_length
    editing = editing_threshold is not None and editing_threshold > 0
    eos_ids = None if eos_token_id is None else (eos_token_id,)
    return GenerationConfig(
        gen_length=gen_length, steps=steps * n_blocks, block_length=block_length,
        schedule="llada2", threshold=threshold, score="confidence", temperature=0.0,
        editing_threshold=editing_threshold if editing else None,
        edit_steps=max_post_steps + 1 if editing else 0,
        eos=EOSPolicy(early_stop=eos_early_stop, eos_ids=eos_ids), cache=cache,
    )  # fmt: skip


def llada2_generate(model, input_ids, *, return_output: bool = False, **pipeline_kwargs):
    """`LLaDA2Pipeline(...)(input_ids=..., output_type="seq").sequences` with our sampler:
    ``input_ids`` (B, P) or (P,) unpadded prompts of one length; returns (B, gen_length), or
    with ``return_output`` our `GenerationOutput` (the whole canvas, ``nfe``, tokens per
    forward). ``cache="none"`` runs [prompt … current block] each step, as the pipeline does."""
    from mdiff.text.sampling.sampler import denoise

    ids = torch.as_tensor(input_ids, dtype=torch.long)
    ids = ids[None] if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise InvalidInputError("input_ids must be prompts (B, P) of one length, P ≥ 1")
    unknown = set(pipeline_kwargs) - set(llada2_config.__kwdefaults__)
    if unknown:
        raise InvalidInputError(f"unknown LLaDA2Pipeline settings: {', '.join(sorted(unknown))}")
    cfg = llada2_config(ids.shape[1], **pipeline_kwargs)
    P, B = ids.shape[1], cfg.block_length
    total = -(-(P + cfg.gen_length) // B) * B
    x = torch.full((ids.shape[0], total), model.spec.mask_id, dtype=torch.long)
    x[:, :P] = ids
    if isinstance(model, LLaDA2Driver):
        model = model.with_block_size(B, key_limit=P + cfg.gen_length)
    elif model.spec.attention != "block_causal" or model.spec.block_size != B:
        raise InvalidInputError(
            f"llada2_generate needs an LLaDA2Driver or a block_causal model with block_size = "
            f"block_length ({B}); its blocks start at multiples of block_length"
        )
    elif total != P + cfg.gen_length:
        raise InvalidInputError(
            f"with a model other than LLaDA2Driver, prompt length + gen_length ({P} + "
            f"{cfg.gen_length}) must be a multiple of block_length {B} (the tail's keys are hidden)"
        )
    dev = next(model.parameters()).device
    out = denoise(model, x.to(dev), None, cfg)
    return out if return_output else out.sequences[:, P : P + cfg.gen_length]
