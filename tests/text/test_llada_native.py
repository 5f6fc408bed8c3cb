"""LLaDA's own folder layout (``model_type`` "llada", `LLaDAModelLM` remote code) loads with no
remote code (`mdiff.text.model.llada_native`): the oracle is LLaDA's block written out here in
plain torch from its own weight names (bidirectional attention, rotate-half RoPE, SiLU-gated
MLP), so a wrong name mapping, a swapped gate/up or a causal mask fails it."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mdiff.errors import CheckpointError
from mdiff.text.model import loaders
from mdiff.text.model.llada_native import llama_names
from mdiff.text.pipeline import CodeModel

from .test_hf_loaders import EOS, MASK, PAD, tokenizer

torch.set_num_threads(1)
CFG = dict(model_type="llada", architectures=["LLaDAModelLM"], block_type="llama",
           activation_type="silu", layer_norm_type="rms", rope=True, alibi=False,
           include_bias=False, include_qkv_bias=False, weight_tying=False, d_model=32,
           n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=48, vocab_size=40,
           embedding_size=40, rms_norm_eps=1e-5, rope_theta=500000.0, max_sequence_length=64,
           mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD,
           auto_map={"AutoModel": "modeling_llada.LLaDAModelLM"})  # fmt: skip


def weights(cfg, seed=0) -> dict[str, torch.Tensor]:
    """Random weights under LLaDA's names and shapes."""
    g = torch.Generator().manual_seed(seed)
    d, hd = cfg["d_model"], cfg["d_model"] // cfg["n_heads"]
    kv, h, v = cfg["n_kv_heads"] * hd, cfg["mlp_hidden_size"], cfg["embedding_size"]
    shapes = {"model.transformer.wte.weight": (v, d), "model.transformer.ln_f.weight": (d,)}
    if not cfg["weight_tying"]:
        shapes["model.transformer.ff_out.weight"] = (v, d)
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        shapes |= {p + "attn_norm.weight": (d,), p + "ff_norm.weight": (d,),
                   p + "q_proj.weight": (d, d), p + "k_proj.weight": (kv, d),
                   p + "v_proj.weight": (kv, d), p + "attn_out.weight": (d, d),
                   p + "ff_proj.weight": (h, d), p + "up_proj.weight": (h, d),
                   p + "ff_out.weight": (d, h)}  # fmt: skip
    return {k: (torch.randn(s, generator=g) * 0.3 + (1 if len(s) == 1 else 0)).contiguous()
            for k, s in shapes.items()}  # fmt: skip


def folder(tmp_path, cfg=CFG, w=None, shards=1, name="llada"):
    out = tmp_path / name
    out.mkdir()
    w = weights(cfg) if w is None else w
    (out / "config.json").write_text(json.dumps(cfg))
    tokenizer(mask=False).save_pretrained(out)  # LLaDA's tokenizer names no mask token
    keys = sorted(w)
    parts = [keys[i::shards] for i in range(shards)]
    if shards == 1:
        save_file(w, str(out / "model.safetensors"))
    else:
        index = {}
        for n, part in enumerate(parts):
            file = f"model-{n + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: w[k] for k in part}, str(out / file))
            index |= dict.fromkeys(part, file)
        (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    return out


def reference(w, cfg, ids):
    """LLaDA's forward from its own weight names: positions 0.., no mask, SiLU(ff_proj)·up."""
    B, L = ids.shape
    H, KV, d = cfg["n_heads"], cfg["n_kv_heads"], cfg["d_model"]
    hd = d // H
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(L).float(), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rms(x, wt):
        return wt * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg["rms_norm_eps"]))

    def rope(t):
        a, b = t.chunk(2, -1)
        return t * cos + torch.cat([-b, a], -1) * sin

    x = w["model.transformer.wte.weight"][ids]
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "q_proj.weight"].T).view(B, L, H, hd).transpose(1, 2)
        k = (h @ w[p + "k_proj.weight"].T).view(B, L, KV, hd).transpose(1, 2)
        v = (h @ w[p + "v_proj.weight"].T).view(B, L, KV, hd).transpose(1, 2)
        k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        a = F.scaled_dot_product_attention(rope(q), rope(k), v)  # no causal mask
        x = x + a.transpose(1, 2).reshape(B, L, d) @ w[p + "attn_out.weight"].T
        h = rms(x, w[p + "ff_norm.weight"])
        gate, up = h @ w[p + "ff_proj.weight"].T, h @ w[p + "up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ w[p + "ff_out.weight"].T
    head = w.get("model.transformer.ff_out.weight", w["model.transformer.wte.weight"])
    return rms(x, w["model.transformer.ln_f.weight"]) @ head.T


IDS = torch.tensor([[1, 5, 7, MASK, MASK, 8, 9, 11], [1, 12, 13, 14, MASK, 16, 5, 6]])


@torch.no_grad()
@pytest.mark.parametrize("tied, shards", [(False, 1), (True, 3)])
def test_llada_layout_equals_its_own_forward(tmp_path, tied, shards):
    cfg = {**CFG, "weight_tying": tied}
    w = weights(cfg)
    path = folder(tmp_path, cfg, w, shards)
    loaded = loaders.load_transformers(path)
    assert loaded.summary == (f"{path}: llada architecture (LLaDA's own layout, read as Llama), "
                              f"spec llada (mask {MASK}, bidirectional)")  # fmt: skip
    got = loaded.model(IDS)
    assert got.shape == (2, IDS.shape[1], cfg["embedding_size"])
    torch.testing.assert_close(got, reference(w, cfg, IDS), rtol=1e-5, atol=1e-5)
    moved = IDS.clone()
    moved[:, -1] = 20  # bidirectional: the last token moves the first position's logits
    assert (loaded.model(moved)[:, 0] - got[:, 0]).abs().max() > 1e-4


@torch.no_grad()
def test_bf16_weights_stay_bf16_and_code_model_fills(tmp_path):
    w = {k: t.to(torch.bfloat16) for k, t in weights(CFG).items()}
    path = folder(tmp_path, CFG, w)
    cm = CodeModel.from_pretrained(path)
    assert next(cm.model.parameters()).dtype == torch.bfloat16
    assert cm.model.spec.mask_id == MASK and "LLaDA's own layout" in cm.summary
    done = cm.fill("x = <FILL> + 1", length=2)
    assert done.text.startswith("x = ") and done.text.endswith(" + 1")


@pytest.mark.parametrize(
    "edit, needle",
    [({"block_type": "sequential"}, "block_type='sequential'"),
     ({"activation_type": "swiglu"}, "activation_type"), ({"alibi": True}, "alibi"),
     ({"include_qkv_bias": True}, "include_qkv_bias"), ({"scale_logits": True}, "scale_logits"),
     ({"n_heads": 5}, "n_heads"), ({"n_layers": 3}, "missing")],
)  # fmt: skip
def test_what_a_llama_layer_cannot_express_is_refused_by_name(tmp_path, edit, needle):
    path = folder(tmp_path, CFG, weights(CFG))
    (path / "config.json").write_text(json.dumps({**CFG, **edit}))
    with pytest.raises(CheckpointError, match=needle):
        loaders.load_transformers(path)


def test_weights_out_of_place_or_pickled_are_refused(tmp_path):
    w = weights(CFG) | {"model.transformer.blocks.0.q_norm.weight": torch.ones(32)}
    with pytest.raises(CheckpointError, match="q_norm"):
        loaders.load_transformers(folder(tmp_path, CFG, w, name="extra"))
    w = weights(CFG)
    w["model.transformer.blocks.1.up_proj.weight"] = torch.zeros(47, 32)  # wrong shape
    with pytest.raises(CheckpointError, match="do not fit"):
        loaders.load_transformers(folder(tmp_path, CFG, w, name="shape"))
    bare = folder(tmp_path, CFG, name="bin")
    (bare / "model.safetensors").rename(bare / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled only"):
        loaders.load_transformers(bare)


def test_block_groups_are_numbered_as_layers():
    names = ["model.transformer.block_groups.1.0.q_proj.weight",
             "model.transformer.block_groups.1.1.ff_out.weight"]  # fmt: skip
    got = list(llama_names(names, group_size=2).values())
    assert got == ["model.layers.2.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight"]
    bare = llama_names(["transformer.wte.weight", "transformer.blocks.0.attn_out.weight"])
    want = ["model.embed_tokens.weight", "model.layers.0.self_attn.o_proj.weight"]
    assert list(bare.values()) == want  # LLaDAModel's own state dict (no "model." prefix)
