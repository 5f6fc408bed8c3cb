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
Greedy (temperature 0) only. The block-aligned tail past ``gen_length`` is generated but hidden
as keys (the pipeline's 2-D mask; LLaDA 2's own ``generate`` shows it). Where it differs from the
pipeline: [MASK] is never proposed (the pipeline's softmax and argmax include it); positions
after an early-stopping EOS are EOS (the pipeline leaves [MASK]); and a row whose prompt holds
an EOS can still stop early.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.text.model.spec import DenoiserSpec
from mdiff.text.sampling.generation import GenerationConfig
from mdiff.text.sampling.policies import EOSPolicy

__all__ = ["LLADA2_IDS", "LLaDA2Driver", "block_causal_mask", "llada2_config", "llada2_generate",
           "load_llada2"]  # fmt: skip

LLADA2_IDS = {"mask_id": 156895, "eos_id": 156892}  # LLaDA2.0 defaults (its generate's)


def block_causal_mask(positions: Tensor, real: Tensor | None, block_size: int) -> Tensor:
    """(B, 1, L, L) bool: query i sees key j when j is real and in block ≤ i's (and itself)."""
    blk = torch.div(positions, block_size, rounding_mode="floor")  # (B, L)
    see = blk[:, None, :] <= blk[:, :, None]  # (B, Lq, Lk)
    if real is not None:
        see = see & real.bool()[:, None, :]
    eye = torch.eye(positions.shape[1], dtype=torch.bool, device=positions.device)
    return (see | eye)[:, None]


class LLaDA2Driver(nn.Module):
    """``driver(input_ids (B, L), attention_mask (B, L) bool, position_ids (B, L)) -> (B, L, V)``.

    ``additive``: pass the mask as 0 / finfo.min floats in the model's dtype (LLaDA 2's remote
    code, whose own ``generate`` passes ``log`` of a 0/1 mask to its SDPA path); otherwise as
    bool (transformers models).
    ``key_limit``: positions ≥ it are no key (LLaDA2Pipeline's block-aligned tail).
    """

    def __init__(self, model: nn.Module, spec: DenoiserSpec, additive: bool = False,
                 key_limit: int | None = None):  # fmt: skip
        super().__init__()
        if not isinstance(spec, DenoiserSpec) or spec.attention != "block_causal":
            raise InvalidInputError("LLaDA2Driver needs a block_causal DenoiserSpec")
        self.model, self.additive, self.key_limit = model, additive, key_limit
        self._spec = dataclasses.replace(spec, supports_cache=False)

    @property
    def spec(self) -> DenoiserSpec:
        return self._spec

    def with_block_size(self, block_size: int, key_limit: int | None = None) -> LLaDA2Driver:
        """The same model attending in blocks of ``block_size`` (LLaDA 2's ``generate`` builds
        its mask from the run's ``block_length``), hiding keys at positions ≥ ``key_limit``."""
        spec = dataclasses.replace(self._spec, block_size=block_size)
        return LLaDA2Driver(self.model, spec, self.additive, key_limit)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, cache: Any = None,
                cache_at: int | None = None) -> Tensor:  # fmt: skip
        if cache is not None or cache_at is not None:
            raise InvalidInputError("LLaDA2Driver has no KV cache (supports_cache=False)")
        if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.numel() == 0:
            raise InvalidInputError("input_ids must be a non-empty (B, L) tensor")
        b, n = input_ids.shape
        for name, t in (("attention_mask", attention_mask), ("position_ids", position_ids)):
            if t is not None and tuple(t.shape) != (b, n):
                raise InvalidInputError(f"{name} must be (B, L) = {(b, n)}, got {tuple(t.shape)}")
        pos = position_ids
        if pos is None:
            pos = torch.arange(n, device=input_ids.device).expand(b, n)
        real = attention_mask
        if self.key_limit is not None:
            inside = pos < self.key_limit
            real = inside if real is None else real.bool() & inside
        mask = block_causal_mask(pos.long(), real, self._spec.block_size)
        if self.additive:
            dtype = next(self.model.parameters()).dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min
            )
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=pos.long())
        logits = getattr(out, "logits", None)
        if not torch.is_tensor(logits) or logits.shape[:2] != (b, n):
            raise InvalidInputError("the wrapped model must return .logits of shape (B, L, V)")
        if logits.shape[-1] != self._spec.vocab_size:
            raise InvalidInputError(
                f"model returns {logits.shape[-1]} logits, spec says vocab {self._spec.vocab_size}"
            )
        return logits


def _first_id(*values) -> int | None:
    for v in values:
        if isinstance(v, list | tuple):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    return None


def load_llada2(path, *, block_size: int = 32, dtype: torch.dtype | None = None,
                device=None, trust_remote_code: bool = False) -> LLaDA2Driver:  # fmt: skip
    """A LLaDA 2 folder (``config.json`` + safetensors weights, optional tokenizer) as a driver.

    The mask id is the tokenizer's ``mask_token_id``, else ``config.mask_token_id``, else LLaDA
    2's 156895 for ``model_type="llada2_moe"``; EOS likewise (``eos_token_id``, 156892). The
    real LLaDA 2 class is remote code in the folder: it runs only with ``trust_remote_code=True``.
    ``block_size`` is the attention block (LLaDA 2 is trained with 32); generation blocks must
    be multiples of it. Weights load from safetensors only (no pickles).
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
        hint = "" if trust_remote_code else (
            " (LLaDA 2's LLaDA2MoeModelLM is remote code in the folder: pass "
            "trust_remote_code=True to run it)"
        )  # fmt: skip
        raise CheckpointError(f"cannot load {folder}: {e}{hint}") from None
    try:
        tok = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (ValueError, OSError, KeyError, TypeError):
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
    )  # fmt: skip
    model = model.eval() if device is None else model.to(device).eval()
    return LLaDA2Driver(model, spec, additive=llada2)


def llada2_config(prompt_length: int, *, gen_length: int = 2048, block_length: int = 32,
                  num_inference_steps: int = 32, threshold: float = 0.7,
                  editing_threshold: float | None = 0.5, max_post_steps: int = 16,
                  minimal_topk: int = 1, eos_early_stop: bool = True,
                  eos_token_id: int | None = None) -> GenerationConfig:  # fmt: skip
    """`LLaDA2Pipeline`'s settings (its defaults) as our `GenerationConfig` for a canvas of
    ``prompt_length`` tokens + masks up to the end of its last block."""
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
        eos=EOSPolicy(early_stop=eos_early_stop, eos_ids=eos_ids), cache="none",
    )  # fmt: skip


def llada2_generate(model, input_ids, **pipeline_kwargs) -> Tensor:
    """`LLaDA2Pipeline(...)(input_ids=..., output_type="seq").sequences` with our sampler:
    ``input_ids`` (B, P) or (P,) unpadded prompts of one length; returns (B, gen_length)."""
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
    return out.sequences[:, P : P + cfg.gen_length]
