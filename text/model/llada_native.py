"""LLaDA's own folder layout (``model_type`` "llada", ``LLaDAModelLM``) read as a Llama, with no
remote code.

LLaDA-8B (Base / Instruct, LLaDA 1.5) ships an OLMo-style model class as remote code. Its
``"llama"`` block is exactly a Llama decoder layer without the causal mask: RMSNorm → q/k/v →
RoPE (rotate-half, ``rope_theta``, positions 0, 1, …) → attention → output projection, residual;
RMSNorm → ``act(ff_proj(x)) · up_proj(x)`` → ``ff_out``, residual; a final RMSNorm and the
output projection (``transformer.ff_out``, or the embedding when ``weight_tying``). So the
weights load into transformers' `LlamaForCausalLM` under these names:

    model.transformer.wte                 → model.embed_tokens
    model.transformer.blocks.i.attn_norm  → model.layers.i.input_layernorm
    …q_proj / k_proj / v_proj / attn_out  → …self_attn.q_proj / k_proj / v_proj / o_proj
    …ff_norm                              → …post_attention_layernorm
    …ff_proj / up_proj / ff_out           → …mlp.gate_proj / up_proj / down_proj
    model.transformer.ln_f / ff_out       → model.norm / lm_head

(``block_groups.g.j`` is layer ``g·block_group_size + j``), and `HFAdapter` runs it
bidirectionally (a 4-D mask). Options the Llama layer cannot express — another block type or
activation, biases, ALiBi, q/k norms, scaled logits or embeddings, LayerNorm instead of RMSNorm
— are a `CheckpointError` naming the option, and so is any weight the mapping does not place.
Weights are read from safetensors (sharded or not) only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from mdiff.errors import CheckpointError

__all__ = ["LLADA_MASK_ID", "llama_config", "llama_names", "load_llada_native"]

LLADA_MASK_ID, LLADA_VOCAB = 126336, 126464  # LLaDA-8B's [MASK] and embedding size
_REQUIRED = {"block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms",
             "rope": True}  # fmt: skip
_ABSENT = ("alibi", "include_bias", "include_qkv_bias", "attention_layer_norm",
           "input_emb_norm", "scale_logits", "bias_for_layer_norm")  # fmt: skip
_BLOCK = {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj",
          "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
          "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
          "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
          "ff_out": "mlp.down_proj"}  # fmt: skip
_TOP = {"wte": "model.embed_tokens", "ln_f": "model.norm", "ff_out": "lm_head"}


def llama_config(cfg: dict):
    """The `LlamaConfig` of a LLaDA ``config.json`` (dict); `CheckpointError` for an option a
    Llama layer does not have."""
    import transformers as T

    for key, want in _REQUIRED.items():
        if cfg.get(key, want) != want:
            raise CheckpointError(f"LLaDA {key}={cfg[key]!r} is not supported (only {want!r})")
    for key in _ABSENT:
        if cfg.get(key):
            raise CheckpointError(f"LLaDA option {key}=true is not supported")
    if cfg.get("layer_norm_with_affine") is False:
        raise CheckpointError("LLaDA layer_norm_with_affine=false is not supported")
    try:
        d, heads, layers = int(cfg["d_model"]), int(cfg["n_heads"]), int(cfg["n_layers"])
        kv = 1 if cfg.get("multi_query_attention") else int(cfg.get("n_kv_heads") or heads)
        hidden = cfg.get("mlp_hidden_size") or int(cfg.get("mlp_ratio", 4)) * d
        vocab = int(cfg.get("embedding_size") or cfg["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"LLaDA config.json lacks or garbles {e}") from None
    if d % heads or heads % kv:
        raise CheckpointError(f"LLaDA d_model {d} / n_heads {heads} / n_kv_heads {kv} mismatch")
    return T.LlamaConfig(
        vocab_size=vocab, hidden_size=d, intermediate_size=int(hidden), num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=d // heads,
        hidden_act="silu", max_position_embeddings=int(cfg.get("max_sequence_length", 4096)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)), attention_bias=False, mlp_bias=False,
        tie_word_embeddings=bool(cfg.get("weight_tying", False)),
        pad_token_id=cfg.get("pad_token_id"), bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
    )  # fmt: skip


def llama_names(names, group_size: int = 1) -> dict[str, str]:
    """LLaDA weight name → Llama weight name; `CheckpointError` naming the first it cannot
    place."""
    out = {}
    for name in names:
        # LLaDAModelLM's names ("model.transformer.…"), or LLaDAModel's ("transformer.…")
        rest = name.removeprefix("model.").removeprefix("transformer.")
        m = re.fullmatch(r"(?:blocks\.(\d+)|block_groups\.(\d+)\.(\d+))\.(\w+)\.weight", rest)
        if m and m[4] in _BLOCK:
            layer = int(m[1]) if m[1] is not None else int(m[2]) * group_size + int(m[3])
            out[name] = f"model.layers.{layer}.{_BLOCK[m[4]]}.weight"
        elif rest.endswith(".weight") and rest[: -len(".weight")] in _TOP:
            out[name] = f"{_TOP[rest[: -len('.weight')]]}.weight"
        else:
            raise CheckpointError(f"LLaDA weight {name!r} has no place in the Llama layout")
    return out


def load_llada_native(path: str | Path, cfg: dict, device=None):
    """A LLaDA folder as a `LlamaForCausalLM` (eval mode) holding its weights, in their dtype."""
    import transformers as T
    from safetensors import safe_open

    path, config = Path(path), llama_config(cfg)
    files = _weight_files(path)
    state = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            names = llama_names(f.keys(), int(cfg.get("block_group_size") or 1))
            state.update({new: f.get_tensor(old) for old, new in names.items()})
    with torch.device("meta"):
        expected = set(T.LlamaForCausalLM(config).state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise CheckpointError(f"{path}: LLaDA weights do not fit its config.json (missing "
                              f"{missing[:3]}, unexpected {extra[:3]})")  # fmt: skip
    dtype = next(iter(state.values())).dtype
    try:
        model = T.LlamaForCausalLM.from_pretrained(None, config=config, state_dict=state,
                                                   dtype=dtype)  # fmt: skip
    except (RuntimeError, ValueError) as e:  # a weight of the wrong shape
        raise CheckpointError(f"{path}: LLaDA weights do not fit its config.json ({e})") from None
    return model.to(device).eval() if device is not None else model.eval()


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{index}: unreadable index ({e})") from None
        files = [path / s for s in shards]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files or not all(f.is_file() for f in files):
        raise CheckpointError(f"{path}: no safetensors weights (LLaDA's .bin pickles are not read)")
    return files
