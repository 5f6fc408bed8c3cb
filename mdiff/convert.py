"""``mdiff convert IN OUT``: a pickled PyTorch state dict (``.pt``/``.pth``/``.bin``/``.ckpt``)
to safetensors, the only format mdiff loads.

The input is read with ``torch.load(IN, weights_only=True, map_location="cpu")`` (memory-mapped
when it is a zip file): PyTorch's restricted unpickler, which builds tensors and plain
containers and refuses every other global, so a file whose pickle would run code is refused
before any of it runs. Then:

1. the weights are found: a dict of tensors is used as is; otherwise one level of common
   nesting is unwrapped at a time (`NESTING`: ``state_dict``, ``model``, ``generator_ema`` …,
   as trainers and Self-Forcing checkpoints keep them). Two candidates (``generator`` and
   ``generator_ema``) are an error that names them: choose with ``--key`` (``a.b`` descends);
2. with ``--strip-prefix PREFIX`` the prefix is removed from every key that has it; bare
   ``--strip-prefix`` removes ``module.`` / ``model.`` / ``_orig_mod.`` while every key has one;
3. every value must be a dense tensor under a string key, else the conversion is refused;
4. OUT is a ``.safetensors`` file, or with ``--config CONFIG.json`` a folder holding that
   config and the weights (``diffusion_pytorch_model.safetensors`` when the config names a
   ``_diffusers_version``, else ``model.safetensors``). Written atomically; an existing OUT
   needs ``--force``. For a Wan transformer config (``_class_name`` WanTransformer3DModel
   or WanModel) the keys are renamed into that config's layout from any Wan layout mdiff
   knows (`fit_wan_layout`), and refused, naming odd keys, when they are in none;
5. with ``--self-forcing --base WAN_T2V_DIFFUSERS_DIR`` OUT is a whole runnable pipeline
   folder instead (`mdiff.video.pipeline.self_forcing`);
6. IN may be a sharded checkpoint's index (``pytorch_model.bin.index.json``, transformers'
   layout): OUT is then a folder (the model's own folder is fine) that gets one
   ``model-0000k-of-0000n.safetensors`` per shard, converted one shard at a time, and
   ``model.safetensors.index.json`` written last (`convert_sharded`).
"""

from __future__ import annotations

import argparse
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

from mdiff.errors import CheckpointError, InvalidInputError

__all__ = ["NESTING", "convert", "convert_sharded", "find_weights_in", "fit_wan_layout",
           "load_checkpoint", "read_plain_state_dict", "register"]  # fmt: skip

NESTING = ("state_dict", "model_state_dict", "model", "module", "generator_ema", "generator",
           "ema", "net")  # fmt: skip
AUTO_PREFIXES = ("module.", "model.", "_orig_mod.")
_MAX_DEPTH = 4


def register(commands) -> None:
    commands.add("convert", "convert a pickled .pt/.pth state dict to safetensors (no code runs)",
                 run, _arguments, description=__doc__.split("\n\n", 1)[1])  # fmt: skip


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN",
                   help="a .pt / .pth / .bin / .ckpt file, or a sharded checkpoint's "
                        "pytorch_model.bin.index.json")  # fmt: skip
    p.add_argument("output", metavar="OUT", help="a .safetensors file, or a folder with --config")
    p.add_argument("--key", help="where the weights sit in the file (a.b descends); default: auto")
    p.add_argument(
        "--strip-prefix", nargs="?", const="auto", default=None, metavar="PREFIX",
        help="remove PREFIX from the keys (bare: module./model. while every key has one)",
    )  # fmt: skip
    p.add_argument("--config", help="a config.json to put beside the weights (OUT is a folder)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT")
    sf = p.add_argument_group("a Self-Forcing / CausVid checkpoint to a runnable pipeline folder")
    sf.add_argument("--self-forcing", action="store_true",
                    help="OUT is a pipeline folder (VideoPipeline.from_pretrained, mdiff video "
                         "--model OUT --stream); needs --base")  # fmt: skip
    sf.add_argument("--base", metavar="DIR",
                    help="a diffusers Wan 2.1 T2V folder (Wan2.1-T2V-1.3B-Diffusers): its "
                         "transformer config, VAE, UMT5 text encoder and tokenizer")  # fmt: skip
    sf.add_argument(
        "--frames-per-block",
        type=int,
        default=3,
        metavar="N",
        help="latent frames per streamed block (default 3, Self-Forcing's)",
    )
    sf.add_argument(
        "--local-attn-size",
        type=int,
        default=-1,
        metavar="N",
        help="KV window in latent frames (default -1: unbounded, Self-Forcing's)",
    )
    sf.add_argument(
        "--sink-size",
        type=int,
        default=0,
        metavar="N",
        help="first latent frames always kept in the window (default 0)",
    )
    sf.add_argument(
        "--copy",
        action="store_true",
        help="copy the base's files (default: hard links where possible)",
    )


def run(args: argparse.Namespace) -> int:
    if args.self_forcing or args.base is not None:
        if not (args.self_forcing and args.base):
            raise InvalidInputError("--self-forcing and --base DIR go together")
        if args.config is not None or args.strip_prefix is not None:
            raise InvalidInputError("--self-forcing reads the config from --base and finds the "
                                    "key layout: drop --config / --strip-prefix")  # fmt: skip
        from mdiff.video.pipeline.self_forcing import write_self_forcing_folder

        out = write_self_forcing_folder(
            args.input, args.output, args.base, key=args.key,
            num_frame_per_block=args.frames_per_block, local_attn_size=args.local_attn_size,
            sink_size=args.sink_size, copy=args.copy, force=args.force,
        )  # fmt: skip
        print(f"wrote {out}: a Self-Forcing pipeline folder (mdiff video PROMPT --model {out} "
              "--stream)")  # fmt: skip
        return 0
    if str(args.input).endswith(".index.json"):
        if args.key is not None or args.strip_prefix is not None or args.config is not None:
            raise InvalidInputError("a sharded index converts as it is: drop --key / "
                                    "--strip-prefix / --config")  # fmt: skip
        out = convert_sharded(args.input, args.output, force=args.force)
        print(f"wrote {out / SHARDED_INDEX} and its shards")
        return 0
    out = convert(args.input, args.output, key=args.key, strip_prefix=args.strip_prefix,
                  config=args.config, force=args.force)  # fmt: skip
    print(f"wrote {out}")
    return 0


def read_plain_state_dict(path, key: str | None = None, strip_prefix: str | None = None) -> dict:
    """The tensors of a pickled state dict, read without running code (module docstring)."""
    path = Path(path)
    state = find_weights_in(load_checkpoint(path), key, path)
    return _strip(state, strip_prefix) if strip_prefix else state


def load_checkpoint(path):
    """The object in a pickled PyTorch file, read by the restricted unpickler (tensors and
    plain containers only): `CheckpointError` for anything else, before any code runs."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no file {path}")
    try:
        # a zip-format file (torch.save since 1.6) is memory-mapped: weight sets that are not
        # converted (a Self-Forcing file's critic) are never read into memory
        mmap = zipfile.is_zipfile(path)
        obj = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except pickle.UnpicklingError as e:
        reason = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln), "")
        raise CheckpointError(
            f"refused {path}: it holds objects other than tensors and plain containers, which "
            f"loading would have to run code for{f' ({reason})' if reason else ''}"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {path} as a PyTorch file: {first}") from None
    return obj


def _is_tensor_dict(obj) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def find_weights_in(obj, key: str | None = None, source="the file") -> dict:
    """The dict of tensors inside a loaded checkpoint object: at `key`, or found by `NESTING`."""
    import torch

    if key is not None:
        for part in [key] if isinstance(obj, Mapping) and key in obj else key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                have = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else "none"
                raise CheckpointError(f"no key {part!r} in {source} (keys there: {have})")
            obj = obj[part]
    for _ in range(_MAX_DEPTH):
        if not isinstance(obj, Mapping) or _is_tensor_dict(obj) or key is not None:
            break
        found = [k for k in NESTING if isinstance(obj.get(k), Mapping)]
        if not found:  # not nested: the checks below name what is not a tensor
            break
        if len(found) > 1:
            keys = ", ".join(map(repr, found))
            raise CheckpointError(f"{source} has several weight sets ({keys}); choose with --key")
        obj = obj[found[0]]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} holds no state dict (a {type(obj).__name__})")
    for k, v in obj.items():
        if not isinstance(k, str):
            raise CheckpointError(f"{source}: key {k!r} is not a string")
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"{source}: {k!r} is a {type(v).__name__}, not a tensor; only plain tensors "
                "convert (choose the weights with --key)"
            )
        if v.layout != torch.strided:
            raise CheckpointError(f"{source}: {k!r} is a {v.layout} tensor; only dense convert")
    return dict(obj)


WAN_CLASSES = {"WanTransformer3DModel": "diffusers", "WanModel": "original"}


def fit_wan_layout(state: dict, settings: dict, source) -> dict:
    """For a Wan transformer config (diffusers' ``WanTransformer3DModel`` or the original
    ``WanModel``): the weights in that config's key layout, whichever known layout and
    prefix they came in (`wan_keys.find_layout`; `CheckpointError` naming odd keys). Other
    configs: `state` unchanged."""
    want = WAN_CLASSES.get(settings.get("_class_name"))
    if want is None:
        return state
    from mdiff.video.dit.wan_keys import to_diffusers, to_original

    ours = to_diffusers(state, str(source))
    return ours if want == "diffusers" else to_original(ours)


def _strip(state: dict, prefix: str) -> dict:
    if prefix == "auto":
        while True:
            common = next((p for p in AUTO_PREFIXES if all(k.startswith(p) for k in state)), None)
            if common is None:
                return state
            state = {k[len(common) :]: v for k, v in state.items()}
    if not any(k.startswith(prefix) for k in state):
        raise InvalidInputError(f"no key starts with the prefix {prefix!r}")
    out = {}
    for k, v in state.items():
        name = k[len(prefix) :] if k.startswith(prefix) else k
        if name in out:
            raise CheckpointError(f"stripping {prefix!r} gives the key {name!r} twice")
        out[name] = v
    return out


def convert(src, dst, *, key=None, strip_prefix=None, config=None, force=False) -> Path:
    """Convert `src` to a safetensors file `dst`, or to a folder `dst` with `config`."""
    from mdiff.atomic import atomic_dir
    from mdiff.hub import CONFIG_NAME, DIFFUSERS_WEIGHTS_NAME, WEIGHTS_NAME, save_state_dict

    dst = Path(dst)
    if dst.exists() and not force:
        raise InvalidInputError(f"{dst} exists; pass --force to replace it")
    if config is None and dst.suffix != ".safetensors":
        raise InvalidInputError(f"OUT {dst} must end in .safetensors (or pass --config)")
    settings = None
    if config is not None:
        from mdiff.hub import read_json_object

        settings = read_json_object(config)
    state = read_plain_state_dict(src, key, strip_prefix)
    meta = {"format": "pt", "converted_from": Path(src).name}
    if settings is None:
        return save_state_dict(state, dst, meta)
    state = fit_wan_layout(state, settings, src)
    name = DIFFUSERS_WEIGHTS_NAME if "_diffusers_version" in settings else WEIGHTS_NAME
    with atomic_dir(dst) as tmp:
        text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
        (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")
        save_state_dict(state, tmp / name, meta)
    return dst


SHARDED_INDEX = "model.safetensors.index.json"


def convert_sharded(index, dst, *, force=False) -> Path:
    """Convert the shards named by a pickled checkpoint's index (``weight_map``: key → shard
    file beside the index) to safetensors shards in folder `dst`, one shard in memory at a time;
    the new index is written last, so an interrupted run leaves no index naming a missing shard."""
    from mdiff.atomic import write_text_atomic
    from mdiff.hub import read_json_object, save_state_dict

    index, dst = Path(index), Path(dst)
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no weight_map: not a sharded checkpoint's index")
    if dst.exists() and not dst.is_dir():
        raise InvalidInputError(f"OUT {dst} must be a folder for a sharded checkpoint")
    if (dst / SHARDED_INDEX).exists() and not force:
        raise InvalidInputError(f"{dst / SHARDED_INDEX} exists; pass --force to replace it")
    shards = sorted({str(v) for v in weight_map.values()})
    if any(Path(s).name != s for s in shards):
        raise CheckpointError(f"{index}: shard names must be files beside the index")
    names = {s: f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i, s in
             enumerate(shards, 1)}  # fmt: skip
    dst.mkdir(parents=True, exist_ok=True)
    new_map = {}
    for shard in shards:
        state = read_plain_state_dict(index.parent / shard)
        wanted = {k for k, v in weight_map.items() if v == shard}
        if missing := sorted(wanted - set(state)):
            raise CheckpointError(f"{shard} lacks {', '.join(missing[:4])}, which {index.name} "
                                  "places there")  # fmt: skip
        meta = {"format": "pt", "converted_from": shard}
        save_state_dict({k: state[k] for k in sorted(wanted)}, dst / names[shard], meta)
        new_map.update({k: names[shard] for k in wanted})
        del state  # freed before the next shard is read: one shard in memory
    text = json.dumps({"metadata": {}, "weight_map": dict(sorted(new_map.items()))}, indent=2)
    write_text_atomic(dst / SHARDED_INDEX, text + "\n")
    return dst
