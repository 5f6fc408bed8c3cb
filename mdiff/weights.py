"""Where a checkpoint folder keeps its weights, and reading them without unpickling.

A folder holds exactly one of these layouts (the names diffusers and transformers use)::

    model.safetensors                                   ours (and transformers')
    diffusion_pytorch_model.safetensors                 diffusers'
    model.safetensors.index.json + shards               sharded, either name: the index's
    diffusion_pytorch_model.safetensors.index.json      "weight_map" names each tensor's shard

`find_weights` picks the layout; `load_state_dict` and `header_shapes` read a file, an index or
a folder alike, so `hub.check_fits` (configs against the weights' shapes, before allocating)
and `hub.weights_sha256` work for all of them. Shards are checked against their index: every
tensor in the shard the index names, and nothing else. Pickled weights (`.bin`, `.pt`, `.pth`,
`.ckpt`) are never read: the error names the conversion command instead. `shard_plan` splits
tensors into shards and an index the way diffusers names them (`hub.save_pretrained` writes
them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from mdiff.errors import CheckpointError

__all__ = [
    "CONVERT_COMMAND",
    "DIFFUSERS_WEIGHTS_NAME",
    "INDEX_SUFFIX",
    "WEIGHTS_NAME",
    "WEIGHTS_NAMES",
    "find_weights",
    "header_shapes",
    "load_state_dict",
    "parse_size",
    "shard_plan",
    "weight_files",
]

WEIGHTS_NAME = "model.safetensors"  # ours and transformers'
DIFFUSERS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_NAMES = (WEIGHTS_NAME, DIFFUSERS_WEIGHTS_NAME)
INDEX_SUFFIX = ".index.json"
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONVERT_COMMAND = "mdiff convert IN OUT"
_SHOW = 5


def _layouts(directory: Path) -> list[Path]:
    candidates = [directory / n for n in WEIGHTS_NAMES]
    candidates += [directory / (n + INDEX_SUFFIX) for n in WEIGHTS_NAMES]
    return [p for p in candidates if p.is_file()]


def find_weights(directory: str | os.PathLike) -> Path:
    """The weights of a checkpoint folder: its safetensors file or its sharded index.

    `CheckpointError` if it has none (naming any pickled files found, which are never read,
    and the command that converts them) or more than one layout (which one is loaded, and
    hashed, would be a guess).
    """
    directory = Path(directory)
    found = _layouts(directory)
    if len(found) > 1:
        raise CheckpointError(
            f"{directory} holds more than one set of weights ({', '.join(p.name for p in found)}):"
            " keep one"
        )
    if found:
        return found[0]
    entries = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    pickled = [n for n in entries if n.endswith(PICKLED_SUFFIXES)]
    other = [n for n in entries if n.endswith(".safetensors")]
    message = (
        f"no {WEIGHTS_NAME} or {DIFFUSERS_WEIGHTS_NAME} (nor a sharded "
        f"*.safetensors{INDEX_SUFFIX}) in {directory}"
    )
    if pickled:
        message += (
            f"; found {_names(pickled)}: pickled weights, which mdiff never unpickles; convert "
            f"them to safetensors with `{CONVERT_COMMAND}`"
        )
    elif other:
        message += f"; found {_names(other)}, under names that are not read"
    raise CheckpointError(message)


def _names(names: list[str]) -> str:
    more = f" (+{len(names) - _SHOW} more)" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def _is_index(path: Path) -> bool:
    return path.name.endswith(INDEX_SUFFIX)


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    return find_weights(path) if path.is_dir() else path


def _read_index(index: Path) -> dict[Path, list[str]]:
    """Shard file -> the tensor names the index puts there, in the index's order."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read the weights index {index}: {e}") from e
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f'{index} has no "weight_map" object naming the shards')
    shards: dict[Path, list[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(
                f"{index} puts {name!r} in {shard!r}: a shard must be a file name in the same "
                "folder"
            )
        if not shard.endswith(".safetensors"):
            raise CheckpointError(
                f"{index} names the shard {shard!r}, not a safetensors file (pickled weights are "
                f"never unpickled; convert them with `{CONVERT_COMMAND}`)"
            )
        shards.setdefault(index.parent / shard, []).append(name)
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise CheckpointError(f"{index} names shards that are missing: {_names(sorted(missing))}")
    return shards


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files holding the weights of a file, an index or a folder."""
    path = _resolve(path)
    return list(_read_index(path)) if _is_index(path) else [path]


def _check_shard(index: Path, shard: Path, listed: list[str], keys: list[str]) -> None:
    absent = sorted(set(listed) - set(keys))
    extra = sorted(set(keys) - set(listed))
    if absent:
        raise CheckpointError(
            f"{index} puts {_names(absent)} in {shard.name}, which does not hold them"
        )
    if extra:
        raise CheckpointError(
            f"{shard.name} holds {_names(extra)}, which its index {index.name} does not list"
        )


def _read(path: Path, read, device="cpu") -> dict[str, torch.Tensor]:
    """`read(safe_open handle, name)` for every tensor of a file, an index or a folder."""
    path = _resolve(path)
    if not _is_index(path):
        return _read_file(path, read, device)
    out: dict[str, torch.Tensor] = {}
    for shard, listed in _read_index(path).items():
        tensors = _read_file(shard, read, device)
        _check_shard(path, shard, listed, list(tensors))
        out.update(tensors)
    return out


def _read_file(path: Path, read, device) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: read(f, k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e


def load_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """Every tensor of a safetensors file, a sharded index or a checkpoint folder (no pickle
    involved); shards are checked against their index."""
    return _read(Path(path), lambda f, k: f.get_tensor(k), device)


def header_shapes(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, a sharded index or a checkpoint folder as meta
    tensors: names and shapes from the headers, nothing read or allocated."""
    return _read(Path(path), lambda f, k: torch.empty(f.get_slice(k).get_shape(), device="meta"))


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}  # fmt: skip


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "5GB" / "200MiB" / "10KB" (as diffusers takes)."""
    if isinstance(size, bool):
        raise CheckpointError(f"a shard size must be a positive size, got {size!r}")
    if isinstance(size, str):
        text = size.strip().upper()
        unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if text.endswith(u)), "")
        try:
            size = int(float(text[: len(text) - len(unit)]) * _UNITS.get(unit, 1))
        except ValueError:
            raise CheckpointError(f"cannot read the shard size {size!r}") from None
    if not isinstance(size, int) or size <= 0:
        raise CheckpointError(f"a shard size must be a positive size, got {size!r}")
    return size


def shard_plan(
    tensors: Mapping[str, torch.Tensor], weights_name: str, max_shard_size: int | str
) -> tuple[dict[str, dict[str, torch.Tensor]], dict | None]:
    """Split `tensors` (in their order) into shards of at most `max_shard_size` bytes (a tensor
    larger than that gets a shard of its own): ``({file name: tensors}, index)``, the index None
    when everything fits in one file `weights_name`. Shards are named as diffusers and
    transformers name them, ``<stem>-00001-of-00003.safetensors``."""
    limit = parse_size(max_shard_size)
    groups: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        if groups[-1] and used + size > limit:
            groups.append({})
            used = 0
        groups[-1][name] = t
        used += size
    if len(groups) == 1:
        return {weights_name: groups[0]}, None
    stem = weights_name.removesuffix(".safetensors")
    n = len(groups)
    files = {f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors": g for i, g in enumerate(groups)}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    weight_map = {name: file for file, g in files.items() for name in g}
    return files, {"metadata": {"total_size": total}, "weight_map": weight_map}
