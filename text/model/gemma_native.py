"""A native forward for DiffusionGemma's decoder (the denoiser every step runs).

`NativeDecoder` reads the weights of a `transformers.DiffusionGemmaForBlockDiffusion` (the same
tensors; only the fused QKV and gate/up matrices are new, concatenated once) and re-implements
``DiffusionGemmaForBlockDiffusion(decoder_input_ids=…, self_conditioning_logits=…)`` with the
same math, op for op where it matters for the bits (RMS norms as ``x · (mean(x²) + ε)^-½``, the
router's fp32 softmax and top-k, the experts as one grouped GEMM over tokens sorted by expert,
SDPA with scale 1, the soft-capped LM head). What it saves is the per-step overhead: the masks,
rotary tables and the key/value buffers ``[cache ; canvas]`` are built once per canvas
(`NativeDecoder.plan`), and each step is straight tensor code (no module dispatch, config
lookups or output dataclasses)::

    dec = NativeDecoder(model)                 # NativeDecoder.unsupported(model) -> reason | None
    plan = dec.plan(mask_mapping, positions, cache)      # once per canvas (B, C) positions
    logits = dec(canvas, sc_logits, plan)      # (B, C) ids, (B, C, V) or None -> (B, C, V) fp32

Not supported (`unsupported` names the reason; `DiffusionGemmaLM` then keeps the transformers
forward): clipped linears (``use_clipped_linears``), attention biases, an attention
implementation other than ``sdpa``/``eager``, experts with biases or transposed weights, an
activation other than ``gelu_pytorch_tanh``, and a torch without ``torch._grouped_mm``.
The encoder (a few calls per canvas) always runs through transformers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NativeDecoder", "NativePlan"]

# a decoder layer's norms, in the order `_layer_forward` reads them (ln[0] … ln[6])
_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
          "post_feedforward_layernorm", "post_feedforward_layernorm_1",
          "post_feedforward_layernorm_2", "pre_feedforward_layernorm_2")  # fmt: skip


def _norm(x: Tensor, w: Tensor | None, eps: float) -> Tensor:
    """Gemma's RMS norm, the same ops as transformers' (fp32 inside)."""
    h = x.float()
    h = h * torch.pow(h.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    if w is not None:
        h = h * w.float()
    return h.type_as(x)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on (B, C, heads, D) with cos/sin (B, C, 1, D)."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


class NativePlan:
    """Per canvas: rotary tables per layer type, per layer the attention mask and the key /
    value buffers (B, heads, T + C, D) whose first T slots hold the cache (heads repeated to the
    query heads when a mask is given, as transformers' SDPA path does); ``mapping``: the
    decoder's own mask mapping (for a fallback to the transformers forward)."""

    mapping: dict | None = None

    def __init__(self, rope: dict, masks: list, keys: list, values: list, start: int):
        self.rope, self.masks, self.keys, self.values, self.start = rope, masks, keys, values, start


class NativeDecoder:
    """The decoder of a `DiffusionGemmaForBlockDiffusion` as plain tensor code (module doc)."""

    def __init__(self, model):
        why = self.unsupported(model)
        if why is not None:
            raise ValueError(f"native DiffusionGemma decoder: {why}")
        dec = model.model.decoder
        cfg = dec.text_config
        self.rotary, self.types = dec.rotary_emb, list(cfg.layer_types)
        self.eps, self.heads = float(cfg.rms_norm_eps), int(cfg.num_attention_heads)
        self.embed, self.embed_scale = dec.embed_tokens.weight, dec.embed_tokens.embed_scale
        self.softcap = getattr(model, "final_logit_softcapping", None)
        if self.softcap is None:
            self.softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
        self.lm_head, self.final_norm = model.lm_head.weight, dec.norm.weight
        sc = dec.self_conditioning
        self.sc = (sc.pre_norm.weight, torch.cat([sc.gate_proj.weight, sc.up_proj.weight]),
                   sc.down_proj.weight)  # fmt: skip
        self.layers = [self._layer(layer) for layer in dec.layers[: cfg.num_hidden_layers]]

    @staticmethod
    def unsupported(model) -> str | None:
        """Why this model cannot run natively, or None."""
        if not hasattr(torch, "_grouped_mm"):
            return "this torch has no torch._grouped_mm"
        try:
            cfg = model.model.decoder.text_config
        except AttributeError:
            return "not a DiffusionGemmaForBlockDiffusion"
        if getattr(cfg, "use_clipped_linears", False):
            return "clipped linears (use_clipped_linears=True)"
        if getattr(cfg, "attention_bias", False):
            return "attention biases"
        if getattr(cfg, "hidden_activation", None) != "gelu_pytorch_tanh":
            return f"activation {getattr(cfg, 'hidden_activation', None)!r}"
        impl = getattr(cfg, "_attn_implementation", None) or "eager"
        if impl not in ("sdpa", "eager"):
            return f"attention implementation {impl!r}"
        for layer in model.model.decoder.layers:
            ex = layer.experts
            if getattr(ex, "has_bias", False) or getattr(ex, "is_transposed", False):
                return "experts with biases or transposed weights"
            if not getattr(ex, "has_gate", True):
                return "experts without a gate"
        return None

    def _layer(self, layer) -> dict:
        at = layer.self_attn
        proj = [at.q_proj.weight, at.k_proj.weight]
        if at.v_proj is not None:
            proj.append(at.v_proj.weight)
        r, ex = layer.router, layer.experts
        return dict(
            type=at.layer_type, d=at.head_dim, groups=at.num_key_value_groups,
            own_v=at.v_proj is not None, qkv=torch.cat(proj), o=at.o_proj.weight,
            q_norm=at.q_norm.weight, k_norm=at.k_norm.weight, ln=[
                getattr(layer, name).weight for name in _NORMS],
            gate_up=torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]),
            down=layer.mlp.down_proj.weight, scalar=layer.layer_scalar,
            r_scale=r.scale, r_root=r.scalar_root_size, r_proj=r.proj.weight,
            r_expert=r.per_expert_scale, top_k=int(r.config.top_k_experts),
            e_gate_up=ex.gate_up_proj.transpose(-2, -1), e_down=ex.down_proj.transpose(-2, -1),
            experts=int(ex.num_experts),
        )  # fmt: skip

    @torch.no_grad()
    def plan(self, masks: dict, positions: Tensor, cache) -> NativePlan:
        """The per-canvas state for canvas positions (B, C), the decoder's mask mapping
        (``create_diffusion_decoder_attention_mask``) and the encoder's cache (read only)."""
        b, c = positions.shape
        probe = self.embed[:1].expand(b, c, -1)
        rope = {t: self.rotary(probe, positions, t) for t in set(self.types)}
        rope = {t: (cos[:, :, None], sin[:, :, None]) for t, (cos, sin) in rope.items()}
        keys, values, layer_masks, start = [], [], [], 0
        for i, lay in enumerate(self.layers):
            mask = masks.get(lay["type"]) if masks else None
            k, v = cache.layers[i].keys, cache.layers[i].values
            rep = lay["groups"] if mask is not None and lay["groups"] > 1 else 1
            t = k.shape[2]
            kb = k.new_empty(b, k.shape[1] * rep, t + c, k.shape[3])
            vb = v.new_empty(b, v.shape[1] * rep, t + c, v.shape[3])
            kb[:, :, :t] = k.repeat_interleave(rep, 1) if rep > 1 else k
            vb[:, :, :t] = v.repeat_interleave(rep, 1) if rep > 1 else v
            keys.append(kb)
            values.append(vb)
            layer_masks.append((mask, rep, t))
        plan = NativePlan(rope, layer_masks, keys, values, start)
        plan.mapping = masks
        return plan

    def _attention(self, lay: dict, x: Tensor, plan: NativePlan, i: int) -> Tensor:
        b, c, _ = x.shape
        d, h = lay["d"], self.heads
        kvh = h // lay["groups"]
        qkv = F.linear(x, lay["qkv"])
        q = qkv[..., : h * d].view(b, c, h, d)
        k = qkv[..., h * d : (h + kvh) * d].view(b, c, kvh, d)
        v = qkv[..., (h + kvh) * d :].view(b, c, kvh, d) if lay["own_v"] else k
        cos, sin = plan.rope[lay["type"]]
        q = _rope(_norm(q, lay["q_norm"], self.eps), cos, sin).transpose(1, 2)
        k = _rope(_norm(k, lay["k_norm"], self.eps), cos, sin).transpose(1, 2)
        v = _norm(v, None, self.eps).transpose(1, 2)
        mask, rep, t = plan.masks[i]
        kb, vb = plan.keys[i], plan.values[i]
        kb[:, :, t:] = k.repeat_interleave(rep, 1) if rep > 1 else k
        vb[:, :, t:] = v.repeat_interleave(rep, 1) if rep > 1 else v
        gqa = lay["groups"] > 1 and rep == 1
        out = F.scaled_dot_product_attention(q, kb, vb, attn_mask=mask, scale=1.0, enable_gqa=gqa)
        return F.linear(out.transpose(1, 2).reshape(b, c, h * d), lay["o"])

    def _experts(self, lay: dict, x: Tensor, flat: Tensor) -> Tensor:
        """Router on ``flat`` (S, H) and the top-k experts on ``x`` (S, H): one grouped GEMM
        per projection over the tokens sorted by expert."""
        r = _norm(flat, None, self.eps) * lay["r_scale"] * lay["r_root"]
        probs = torch.softmax(F.linear(r, lay["r_proj"]), dim=-1, dtype=torch.float32)
        w, idx = torch.topk(probs, k=lay["top_k"], dim=-1)
        w = w / w.sum(dim=-1, keepdim=True)
        w = (w * lay["r_expert"][idx]).reshape(-1)
        ids, perm = torch.sort(idx.reshape(-1))
        counts = torch.histc(ids.float(), bins=lay["experts"], min=0, max=lay["experts"] - 1)
        offs = torch.cumsum(counts, dim=0, dtype=torch.int32)
        wt = lay["e_gate_up"]
        g = torch._grouped_mm(x[perm // lay["top_k"]].to(wt.dtype), wt, offs=offs)
        gate, up = g.chunk(2, dim=-1)
        g = F.gelu(gate, approximate="tanh") * up
        wd = lay["e_down"]
        out = torch._grouped_mm(g.to(wd.dtype), wd, offs=offs) * w[perm].unsqueeze(-1)
        back = torch.empty_like(out)
        back[perm] = out
        return back.view(x.shape[0], lay["top_k"], -1).sum(dim=1).to(x.dtype)

    def _mlp(self, gate_up: Tensor, down: Tensor, x: Tensor) -> Tensor:
        gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
        return F.linear(F.gelu(gate, approximate="tanh") * up, down)

    def _layer_forward(self, lay: dict, hs: Tensor, plan: NativePlan, i: int) -> Tensor:
        ln, eps = lay["ln"], self.eps
        a = self._attention(lay, _norm(hs, ln[0], eps), plan, i)
        hs = hs + _norm(a, ln[1], eps)
        h1 = _norm(self._mlp(lay["gate_up"], lay["down"], _norm(hs, ln[2], eps)), ln[4], eps)
        flat = hs.reshape(-1, hs.shape[-1])
        h2 = self._experts(lay, _norm(flat, ln[6], eps), flat).reshape(hs.shape)
        out = hs + _norm(h1 + _norm(h2, ln[5], eps), ln[3], eps)
        return out * lay["scalar"]

    @torch.no_grad()
    def __call__(self, canvas: Tensor, sc_logits: Tensor | None, plan: NativePlan) -> Tensor:
        """Logits (B, C, V) float32 for ``canvas`` (B, C) with self-conditioning logits
        ``sc_logits`` (B, C, V) (or None) under ``plan``."""
        w, scale = self.embed, self.embed_scale.to(self.embed.dtype)
        emb = F.embedding(canvas, w) * scale
        if sc_logits is None:
            soft = torch.zeros_like(emb)
        else:
            probs = sc_logits.softmax(dim=-1, dtype=torch.float32).to(w.dtype)
            soft = torch.matmul(probs, w) * scale.to(emb.dtype)
        pre, gate_up, down = self.sc
        sig = self._mlp(gate_up, down, _norm(soft, pre, self.eps))
        hs = _norm(emb + sig, None, self.eps)
        for i, lay in enumerate(self.layers):
            hs = self._layer_forward(lay, hs, plan, i)
        logits = F.linear(_norm(hs, self.final_norm, self.eps), self.lm_head).float()
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
