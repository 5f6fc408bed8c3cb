"""Training-state checkpoints without pickle: tensors in safetensors, everything else in JSON.

A state "tree" (an optimizer state dict, RNG states, counters) is split by `encode_tree` into
a JSON-able skeleton, where each tensor is replaced by `{"__tensor__": key}`, and a flat
`{key: tensor}` dict. Tuples and dicts with non-string keys (the optimizer's integer param
ids) are tagged so they decode to exactly what was saved. `save_tree` / `load_tree` write and
read the pair as `<name>.json` + `<name>.safetensors`.

A checkpoint directory `step_00000100/` holds one such pair per part (`model`, `optimizer`,
`ema`, `trainer`) and one per rank (`rng_rank0`, ...). It is written into `.step_00000100.partial`
and renamed when every rank has finished; `latest` beside it names the newest one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdiff.atomic import publish_dir, write_text_atomic
from mdiff.errors import CheckpointError
from mdiff.hub import load_state_dict, save_state_dict

LATEST = "latest"
_SCALARS = (bool, int, float, str, type(None))


def encode_tree(tree: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split `tree` into a JSON-able skeleton and the tensors it holds."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            if key in tensors:
                raise CheckpointError(f"two tensors map to the key {key!r}")
            tensors[key] = obj
            return {"__tensor__": key}
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj):
                return {k: enc(v, f"{key}.{k}") for k, v in obj.items()}
            if not all(isinstance(k, _SCALARS) for k in obj):
                raise CheckpointError(f"dict at {key!r} has keys that JSON cannot hold")
            return {"__items__": [[k, enc(v, f"{key}.{k}")] for k, v in obj.items()]}
        if isinstance(obj, tuple):
            return {"__tuple__": [enc(v, f"{key}.{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [enc(v, f"{key}.{i}") for i, v in enumerate(obj)]
        if isinstance(obj, _SCALARS):
            return obj
        raise CheckpointError(f"cannot store a {type(obj).__name__} at {key!r} without pickle")

    return enc(tree, prefix), tensors


def decode_tree(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `encode_tree`."""
    if isinstance(skeleton, list):
        return [decode_tree(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if set(skeleton) == {"__tensor__"}:
        key = skeleton["__tensor__"]
        if key not in tensors:
            raise CheckpointError(f"checkpoint lacks the tensor {key!r}")
        return tensors[key]
    if set(skeleton) == {"__tuple__"}:
        return tuple(decode_tree(v, tensors) for v in skeleton["__tuple__"])
    if set(skeleton) == {"__items__"}:
        return {k: decode_tree(v, tensors) for k, v in skeleton["__items__"]}
    return {k: decode_tree(v, tensors) for k, v in skeleton.items()}


def save_tree(directory: Path, name: str, tree: Any) -> None:
    """Write `tree` as `<name>.json` (+ `<name>.safetensors` when it holds tensors)."""
    skeleton, tensors = encode_tree(tree, name)
    if tensors:
        save_state_dict(tensors, directory / f"{name}.safetensors")
    write_text_atomic(directory / f"{name}.json", json.dumps(skeleton) + "\n")


def load_tree(directory: Path, name: str, device: str | torch.device = "cpu") -> Any:
    """Read a tree written by `save_tree`."""
    path = directory / f"{name}.json"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {path.name}")
    skeleton = json.loads(path.read_text(encoding="utf-8"))
    weights = directory / f"{name}.safetensors"
    tensors = load_state_dict(weights, device) if weights.exists() else {}
    return decode_tree(skeleton, tensors)


# ---------------------------------------------------------------- random number generators


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG this process draws from: the trainer's generator, torch (CPU, CUDA), Python,
    NumPy."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": random.getstate(),
        "numpy": np_state,
    }


def set_rng_state(generator: torch.Generator, state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"]:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    random.setstate(state["python"])
    np_state = state["numpy"]
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)


# ---------------------------------------------------------------- checkpoint directories


def write_checkpoint(
    accelerator, final: Path, parts: dict[str, Any], rank_parts: dict[str, Any]
) -> Path:
    """Collectively write a checkpoint: `parts` from the main process, `rank_parts` from every
    rank (file names get `_rank{r}`). All ranks must call this; the directory appears complete
    or not at all, and `latest` beside it is updated."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.partial")
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if main:
        for name, tree in parts.items():
            save_tree(tmp, name, tree)
    for name, tree in rank_parts.items():
        save_tree(tmp, f"{name}_rank{accelerator.process_index}", tree)
    accelerator.wait_for_everyone()
    if main:
        publish_dir(tmp, final)
        write_text_atomic(final.parent / LATEST, final.name + "\n")
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(checkpoints_dir: Path, keep_last: int, keep_every: int = 0) -> list[Path]:
    """Delete every ``step_*`` checkpoint but the newest ``keep_last``, those at multiples of
    ``keep_every`` (0: none) and the one ``latest`` names; returns the deleted paths."""
    directory = Path(checkpoints_dir)
    pointer = directory / LATEST
    latest = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    found = sorted(p for p in directory.glob("step_*") if p.is_dir() and p.name[5:].isdigit())
    deleted = []
    for path in found[: max(0, len(found) - keep_last)]:
        if path.name == latest or (keep_every and int(path.name[5:]) % keep_every == 0):
            continue
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(path)
    return deleted


def find_checkpoint(path: str | os.PathLike, checkpoints_dir: Path) -> Path:
    """`path` itself, a name in `checkpoints_dir` (``step_00005000``), or for `"latest"` the
    directory `checkpoints_dir/latest` names."""
    if str(path) == LATEST:
        pointer = checkpoints_dir / LATEST
        if not pointer.is_file():
            raise CheckpointError(f"no {LATEST} checkpoint: {pointer} does not exist")
        path = checkpoints_dir / pointer.read_text(encoding="utf-8").strip()
    path = Path(path)
    if not path.is_dir() and not path.is_absolute() and (checkpoints_dir / path).is_dir():
        path = checkpoints_dir / path
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint directory at {path}")
    return path


def load_ema_weights(model: torch.nn.Module, directory: Path) -> int:
    """Load a checkpoint's EMA weights (its raw weights when it has no EMA part) into `model`;
    returns the checkpoint's step. Raises `CheckpointError` when the names do not match."""
    try:
        state = load_tree(directory, "ema")
    except Exception:  # noqa: BLE001 - no EMA part: fall back to the model weights
        state = load_tree(directory, "model")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k in dict(model.named_parameters()) for k in missing):
        raise CheckpointError(f"{directory}: weights do not match the run's model config")
    return int(load_tree(directory, "trainer")["step"])
