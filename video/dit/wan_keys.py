"""The original Wan checkpoint layout (Wan-Video/Wan2.1 `wan/modules/model.py`) and ours.

Ours is diffusers' `WanTransformer3DModel` naming. The map is one table of (ours, original)
name rules, used both ways (the renames diffusers' own single-file converter applies):

    condition_embedder.time_embedder.linear_1/2    time_embedding.0/2
    condition_embedder.time_proj                   time_projection.1
    condition_embedder.text_embedder.linear_1/2    text_embedding.0/2
    condition_embedder.image_embedder.norm1, ff.net.0.proj, ff.net.2, norm2, pos_embed
                                                   img_emb.proj.0, .1, .3, .4, img_emb.emb_pos
    blocks.N.attn1.to_q/to_k/to_v/to_out.0         blocks.N.self_attn.q/k/v/o   (norm_q, norm_k)
    blocks.N.attn2.…, add_k_proj, add_v_proj, norm_added_k
                                                   blocks.N.cross_attn.…, k_img, v_img, norm_k_img
    blocks.N.norm2 (the affine cross-attn norm)    blocks.N.norm3
    blocks.N.ffn.net.0.proj / ffn.net.2            blocks.N.ffn.0 / ffn.2
    blocks.N.scale_shift_table                     blocks.N.modulation
    scale_shift_table, proj_out                    head.modulation, head.head
    patch_embedding                                patch_embedding

Original checkpoints often carry a wrapper prefix (`model.diffusion_model.`, or `model.` in
Self-Forcing's generator); `from_original(..., prefix=...)` strips it. A name no rule covers
raises `CheckpointError` naming it, so nothing is silently dropped.

`find_layout(names)` tells which of the layouts we know a set of names is in (`LAYOUTS`:
diffusers or original names, under any chain of `PREFIXES`, FSDP's `_fsdp_wrapped_module.`
dropped) and `to_diffusers(state)` renames a state dict in any of them to ours; anything else
is a `CheckpointError` that names a few keys no layout explains and lists the layouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from mdiff.errors import CheckpointError

__all__ = ["LAYOUTS", "PREFIXES", "config_from_original", "find_layout", "from_original",
           "original_name", "our_name", "to_diffusers", "to_original"]  # fmt: skip

_ATTN = [("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o"), ("norm_q", "norm_q"),
         ("norm_k", "norm_k"), ("add_k_proj", "k_img"), ("add_v_proj", "v_img"),
         ("norm_added_k", "norm_k_img")]  # fmt: skip
_BLOCK = [(f"attn1.{a}", f"self_attn.{b}") for a, b in _ATTN[:6]]
_BLOCK += [(f"attn2.{a}", f"cross_attn.{b}") for a, b in _ATTN]
_BLOCK += [("norm2", "norm3"), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2")]
_IMG = [("norm1", "proj.0"), ("ff.net.0.proj", "proj.1"), ("ff.net.2", "proj.3"),
        ("norm2", "proj.4")]  # fmt: skip
_MODULES = [
    ("patch_embedding", "patch_embedding"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("proj_out", "head.head"),
] + [(f"condition_embedder.image_embedder.{a}", f"img_emb.{b}") for a, b in _IMG]
_PARAMS = [  # whole parameter names (no .weight / .bias)
    ("scale_shift_table", "head.modulation"),
    ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
]


Rule = tuple[re.Pattern, str]


def _pattern(name: str) -> re.Pattern:
    """A name with `{i}` (block index) and `{p}` (weight or bias) as a full-match regex."""
    rx = re.escape(name).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(rx)


def _pairs() -> list[tuple[str, str]]:
    pairs = [(f"{a}.{{p}}", f"{b}.{{p}}") for a, b in _MODULES] + list(_PARAMS)
    pairs += [(f"blocks.{{i}}.{a}.{{p}}", f"blocks.{{i}}.{b}.{{p}}") for a, b in _BLOCK]
    pairs.append(("blocks.{i}.scale_shift_table", "blocks.{i}.modulation"))
    return pairs


_TO_ORIGINAL: list[Rule] = [(_pattern(a), b) for a, b in _pairs()]
_TO_OURS: list[Rule] = [(_pattern(b), a) for a, b in _pairs()]


def _rename(name: str, rules, side: str) -> str:
    for pattern, template in rules:
        m = pattern.fullmatch(name)
        if m:
            return template.format(**m.groupdict())
    raise CheckpointError(f"no Wan key rule for {side} name {name!r}")


def original_name(name: str) -> str:
    """Our (diffusers) parameter name -> the original Wan name."""
    return _rename(name, _TO_ORIGINAL, "diffusers")


def our_name(name: str) -> str:
    """An original Wan parameter name -> ours (diffusers')."""
    return _rename(name, _TO_OURS, "original Wan")


def to_original(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict -> the original Wan layout (same tensors)."""
    return {original_name(k): v for k, v in state.items()}


def from_original(state: Mapping[str, Tensor], prefix: str | None = None) -> dict[str, Tensor]:
    """An original Wan state dict -> ours. `prefix` (e.g. "model.diffusion_model.") is stripped
    from every key; None strips "model.diffusion_model." when all keys carry it."""
    if prefix is None:
        auto = "model.diffusion_model."
        prefix = auto if state and all(k.startswith(auto) for k in state) else ""
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            raise CheckpointError(f"key {k!r} lacks the prefix {prefix!r}")
        name = our_name(k[len(prefix) :])
        if name in out:
            raise CheckpointError(f"two original keys map to {name!r}")
        out[name] = v
    return out


def config_from_original(config: Mapping, state: Mapping[str, Tensor] | None = None) -> dict:
    """The original Wan `config.json` (`_class_name` "WanModel": dim, ffn_dim, num_heads,
    in_dim, model_type, …) -> `WanTransformerConfig` keyword arguments (diffusers' keys).

    The CLIP image branch is read off the weights when `state` (original names) is given:
    Wan 2.1 I2V/FLF2V have `img_emb.*`, Wan 2.2 I2V has none. Without weights, model_type
    "i2v"/"flf2v" means Wan 2.1's branch (CLIP width 1280)."""
    try:
        dim, heads = int(config["dim"]), int(config["num_heads"])
        kwargs = dict(
            patch_size=tuple(config.get("patch_size", (1, 2, 2))),
            num_attention_heads=heads,
            attention_head_dim=dim // heads,
            in_channels=int(config["in_dim"]),
            out_channels=int(config["out_dim"]),
            text_dim=int(config.get("text_dim", 4096)),
            freq_dim=int(config.get("freq_dim", 256)),
            ffn_dim=int(config["ffn_dim"]),
            num_layers=int(config["num_layers"]),
            cross_attn_norm=bool(config.get("cross_attn_norm", True)),
            eps=float(config.get("eps", 1e-6)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"not an original Wan config: missing or bad {e!r}") from e
    if tuple(config.get("window_size", (-1, -1))) != (-1, -1):
        window = config["window_size"]
        raise CheckpointError(f"window_size={window} (local attention) is not supported")
    if not config.get("qk_norm", True):
        raise CheckpointError("qk_norm=false is unsupported: Wan checkpoints normalise q and k")
    if state is not None:
        if "img_emb.proj.0.weight" in state:
            kwargs.update(image_dim=state["img_emb.proj.0.weight"].shape[0], added_kv_proj_dim=dim)
        if "img_emb.emb_pos" in state:
            kwargs.update(pos_embed_seq_len=state["img_emb.emb_pos"].shape[1])
        return kwargs
    kind = config.get("model_type", "t2v")
    if kind in ("i2v", "flf2v"):
        kwargs.update(image_dim=1280, added_kv_proj_dim=dim)
    if kind == "flf2v":
        kwargs.update(pos_embed_seq_len=2 * 257)
    return kwargs


PREFIXES = {  # wrapper prefixes seen on Wan transformer weights -> who writes them
    "model.diffusion_model.": "ComfyUI / single-file checkpoints",
    "diffusion_model.": "single-file checkpoints",
    "generator.": "a whole Self-Forcing / CausVid DMD model (generator.model.…)",
    "model.": "the Self-Forcing / CausVid generator (WanDiffusionWrapper.model)",
    "module.": "DistributedDataParallel",
    "_orig_mod.": "torch.compile",
}
LAYOUTS = {
    "diffusers": "diffusers' WanTransformer3DModel names (blocks.0.attn1.to_q.weight)",
    "original": "the original Wan release names (blocks.0.self_attn.q.weight)",
}
_FSDP = "_fsdp_wrapped_module."
_SHOW = 4


def _matches(name: str, rules) -> bool:
    return any(pattern.fullmatch(name) for pattern, _ in rules)


def _layouts_text() -> str:
    prefixes = ", ".join(f"{p} ({who})" for p, who in PREFIXES.items())
    return (f"the layouts mdiff reads are {LAYOUTS['diffusers']} and {LAYOUTS['original']}, "
            f"each bare or under any chain of the prefixes {prefixes}")  # fmt: skip


def find_layout(names, source="the weights") -> tuple[str, str]:
    """(layout, prefix) of parameter `names` (FSDP segments already dropped or not): layout
    "diffusers" or "original" (`LAYOUTS`), prefix a chain of `PREFIXES` ("" for none) that
    every name carries. `CheckpointError` naming unexplained keys otherwise."""
    names = [n.replace(_FSDP, "") for n in names]
    if not names:
        raise CheckpointError(f"{source} holds no weights")
    prefix, best = "", (-1, [])
    while True:
        rest = [n[len(prefix) :] for n in names]
        for layout, rules in (("diffusers", _TO_ORIGINAL), ("original", _TO_OURS)):
            odd = [n for n, r in zip(names, rest, strict=True) if not _matches(r, rules)]
            if not odd:
                return layout, prefix
            if len(names) - len(odd) > best[0]:
                best = (len(names) - len(odd), odd)
        nxt = next((p for p in PREFIXES if all(r.startswith(p) for r in rest)), None)
        if nxt is None:
            break
        prefix += nxt
    odd = best[1]
    shown = ", ".join(repr(k) for k in odd[:_SHOW]) + (", …" if len(odd) > _SHOW else "")
    raise CheckpointError(
        f"{source}: {len(odd)} of {len(names)} keys fit no Wan transformer layout mdiff "
        f"knows, e.g. {shown}; {_layouts_text()}"
    )


def to_diffusers(state: Mapping[str, Tensor], source="the weights") -> dict[str, Tensor]:
    """A Wan transformer state dict in any layout `find_layout` knows -> ours (same tensors)."""
    layout, prefix = find_layout(state, source)
    plain = {k.replace(_FSDP, "")[len(prefix) :]: v for k, v in state.items()}
    if len(plain) != len(state):
        raise CheckpointError(f"{source}: dropping {_FSDP!r} gives a key twice")
    return plain if layout == "diffusers" else from_original(plain, prefix="")
