"""Random DiffusionGemma and LLaDA 2 stand-ins built with transformers itself (shared by the
`dlm_*.py` benchmarks), and a forward counter.

- `gemma(...)`: a `DiffusionGemmaForBlockDiffusion` (MoE text model, sliding + full layers as the
  real one), wrapped as our `DiffusionGemmaLM`; ``scale`` multiplies the tied embedding / LM head
  so the random logits are confident (its adaptive stop can fire, as with trained weights).
- `llada2(...)`: LLaDA 2 is remote code (``LLaDA2MoeModelLM``); its stand-in is a transformers
  Qwen3-MoE (``qwen3_moe``, the same family of shapes: GQA, q/k norm, routed experts) or a Llama
  (``dense=True``), attending block-causally. `MaskFree` gives [MASK] the logit −inf (a trained
  model never proposes it), so the pipeline's softmax over the whole vocabulary and ours (which
  forbids [MASK]) see the same distribution. `PipelineModel` is what `LLaDA2Pipeline` calls:
  LLaDA 2's own block-causal 4-D mask built from its 2-D mask.
"""

from __future__ import annotations

import types
from pathlib import Path

import torch
from torch import nn

from mdiff.text.model.gemma import DiffusionGemmaLM
from mdiff.text.model.llada2 import LLaDA2Driver
from mdiff.text.model.spec import DenoiserSpec


def gemma(*, vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int,
          intermediate: int, canvas: int, experts: int = 0, top_k: int = 0, moe_size: int = 0,
          global_head_dim: int | None = None, sliding: int = 512, scale: float = 1.0,
          seed: int = 0, dtype=torch.float32, device="cpu") -> DiffusionGemmaLM:  # fmt: skip
    """A random DiffusionGemma (every 6th layer and the last full attention, the rest sliding;
    ``experts=0``: dense MLPs, as transformers' default config)."""
    from transformers import (
        DiffusionGemmaConfig,
        DiffusionGemmaForBlockDiffusion,
        DiffusionGemmaTextConfig,
    )

    torch.manual_seed(seed)
    types_ = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    types_[-1] = "full_attention"
    text = DiffusionGemmaTextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, global_head_dim=global_head_dim or head_dim, sliding_window=sliding,
        num_experts=experts or None, top_k_experts=top_k or None,
        moe_intermediate_size=moe_size or None,
        layer_types=types_, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    config = DiffusionGemmaConfig(text_config=text, vision_config=None, canvas_length=canvas,
                                  boi_token_id=vocab - 3, eoi_token_id=vocab - 2,
                                  image_token_id=vocab - 1)  # fmt: skip
    with torch.device(device):  # built in its dtype on its device (no float32 copy first)
        model = DiffusionGemmaForBlockDiffusion._from_config(config, dtype=dtype)
    model = model.eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return DiffusionGemmaLM(model)


def llada2_lm(*, vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int,
              intermediate: int, experts: int = 0, top_k: int = 0, moe_size: int = 0,
              dense_layers: tuple = (), scale: float = 1.0, seed: int = 0,
              dtype=torch.float32, device="cpu", **_):  # fmt: skip
    """A random transformers causal LM shaped like LLaDA 2 (Qwen3-MoE; Llama with experts=0)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                  num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, head_dim=head_dim,
                  max_position_embeddings=32768, tie_word_embeddings=False)  # fmt: skip
    if experts:
        cfg = tf.Qwen3MoeConfig(**common, num_experts=experts, num_experts_per_tok=top_k,
                                moe_intermediate_size=moe_size, decoder_sparse_step=1,
                                norm_topk_prob=True,
                                mlp_only_layers=list(dense_layers))  # fmt: skip
        cls = tf.Qwen3MoeForCausalLM
    else:
        cfg, cls = tf.LlamaConfig(**common), tf.LlamaForCausalLM
    with torch.device(device):
        lm = cls._from_config(cfg, dtype=dtype)
    lm = lm.eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(scale)
    return lm


class MaskFree(nn.Module):
    """``lm(**kw).logits`` with [MASK]'s logit −inf (what a trained LLaDA 2 does in practice)."""

    def __init__(self, lm: nn.Module, mask_id: int):
        super().__init__()
        self.lm, self.mask_id = lm, mask_id

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None,
                use_cache=None, logits_to_keep=0):  # fmt: skip
        """The wrapped model's forward: its transformers KV cache (``cache``, transformers 5's
        name for ``past_key_values``) and ``logits_to_keep`` (LM head on the last rows only)
        passed through, as the wrapped model takes them."""
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, cache=cache, use_cache=use_cache,
                         logits_to_keep=logits_to_keep).logits  # fmt: skip
        logits = logits.float()  # both samplers see the same float32 logits (bf16 models)
        logits[..., self.mask_id] = -torch.inf
        return types.SimpleNamespace(logits=logits)


class PipelineModel(nn.Module):
    """What `LLaDA2Pipeline` calls: ``model(x, attention_mask (B, L) 0/1, position_ids)``; builds
    LLaDA 2's block-causal 4-D mask (blocks of ``block_length``) over the 2-D key mask."""

    def __init__(self, free: MaskFree, block_length: int):
        super().__init__()
        self.free, self.bl = free, block_length

    @property
    def device(self):
        return next(self.free.parameters()).device

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        L = input_ids.shape[1]
        blk = torch.arange(L, device=input_ids.device) // self.bl
        see = blk[None, :] <= blk[:, None]
        mask = see[None, None] & attention_mask.bool()[:, None, None, :]
        return self.free(input_ids, attention_mask=mask, position_ids=position_ids)


def llada2_driver(free: MaskFree, vocab: int, mask_id: int, eos_id: int,
                  block: int) -> LLaDA2Driver:  # fmt: skip
    spec = DenoiserSpec(vocab_size=vocab, mask_id=mask_id, eos_ids=(eos_id,),
                        attention="block_causal", block_size=block)  # fmt: skip
    return LLaDA2Driver(free, spec)


def source_state() -> str:
    """``mdiff at <commit>`` and the library files changed since (what these numbers ran on)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "mdiff", "text", "video"],
            cwd=root,
            text=True,
            capture_output=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "mdiff source: unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"mdiff at {head}" + (f", uncommitted: {', '.join(changed)}" if changed else "")


class Counter:
    """Counts the forwards of ``module`` (a pre-hook): ``with Counter(m) as c: ...; c.n``."""

    def __init__(self, module: nn.Module):
        self.module, self.n, self.handle = module, 0, None

    def _hook(self, *_):
        self.n += 1

    def __enter__(self):
        self.n = 0
        self.handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
