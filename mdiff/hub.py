"""Checkpoints as directories: `config.json` + safetensors weights, and built-in names.

A model that mixes in `PretrainedMixin` and takes one dataclass config round-trips with::

    model.save_pretrained("runs/my-model")          # config.json + model.safetensors, atomically
    model = MyModel.from_pretrained("runs/my-model")  # strict keys and shapes, never unpickles
    model = MyModel.from_pretrained("shapes-tiny")    # a built-in name (frontend package data)
    model = MyModel.from_pretrained("pipe", subfolder="vae")  # a folder inside a folder

Reading takes diffusers' and transformers' layouts too (`diffusion_pytorch_model.safetensors`,
sharded `*.safetensors.index.json`, see `mdiff.weights`); a class that matches a diffusers
model writes its layout (`PretrainedMixin.diffusers_class`), so diffusers reads our folders.

Built-in checkpoints live in the frontends' package data, `<pkg>/checkpoints/<name>/` for
pkg in `BUILTIN_PACKAGES`. They are found through `importlib.util.find_spec`, so the core
never imports a frontend. Loading reads safetensors only: nothing is ever unpickled.
Reading and writing the configs themselves is `mdiff.configs` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file

import mdiff
from mdiff.atomic import atomic_dir, atomic_file
from mdiff.configs import (  # noqa: F401 (re-exported: checkpoint readers import them from here)
    CONFIG_NAME,
    TRAINING_LOG,
    preset_config,
    read_config,
    read_json_object,
    with_legacy_fields,
)
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.weights import (  # noqa: F401 (re-exported: the layouts are read through hub)
    CONVERT_COMMAND,
    DIFFUSERS_WEIGHTS_NAME,
    INDEX_SUFFIX,
    WEIGHTS_NAME,
    WEIGHTS_NAMES,
    find_weights,
    header_shapes,
    load_state_dict,
    shard_plan,
    weight_files,
)

DIFFUSERS_VERSION = "0.42.1"  # the diffusers whose folders we write (and test against)
BUILTIN_PACKAGES = ("mdiff.video", "mdiff.text")
_SHOW = 5  # how many key names an error message lists


# ---------------------------------------------------------------- tensors


def tied_aliases(module: torch.nn.Module) -> dict[str, str]:
    """Tied parameters: each extra name of a Parameter → its first name (e.g. an lm head tied
    to the embedding: ``{"head.weight": "embed.weight"}``). Checkpoints store the first only."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as a checkpoint holds it: tied aliases left out."""
    aliases = tied_aliases(module)
    return {k: v for k, v in module.state_dict().items() if k not in aliases}


def _unshare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors with no two sharing storage (safetensors refuses shared storage).

    Two names sharing storage that are not tied aliases (e.g. views) are saved as copies.
    """
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu()
        ptr = (t.device.type, t.untyped_storage().data_ptr()) if t.numel() else None
        if ptr in seen or not t.is_contiguous():
            t = t.contiguous().clone()
        elif ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


def save_state_dict(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write tensors to a safetensors file atomically (temp file beside it, then rename)."""
    path = Path(path)
    with atomic_file(path) as tmp:
        mode = tmp.stat().st_mode & 0o7777
        save_file(_unshare(tensors), tmp, metadata=dict(metadata) if metadata else None)
        tmp.chmod(mode)  # safetensors recreates the file as 0600; keep the umask's mode
    return path


def _names(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def check_state_dict(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source) -> None:
    """Raise `CheckpointError` unless `tensors` has exactly the module's keys and shapes (tied
    aliases may be absent: they load from the name they are tied to)."""
    expected = module_tensors(module)
    aliases = tied_aliases(module)  # a tied alias may be present too (older files, trainer state)
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected and k not in aliases]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
    shapes = [
        f"{k} {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {'; '.join(shapes[:_SHOW])}")
    if problems:
        kind = type(module).__name__
        raise CheckpointError(f"weights in {source} do not fit {kind}: " + "; ".join(problems))


def check_fits(cls: type, config, path: str | os.PathLike) -> None:
    """Raise `CheckpointError` unless ``cls(config)`` has exactly the keys and shapes of the
    weights at `path` (a safetensors file, a sharded index or a checkpoint folder), found
    without allocating: the module is built on the meta device and compared with the files'
    headers. A config.json whose sizes do not fit its weights (a dim of 1e6) fails here, not
    after allocating gigabytes."""
    with torch.device("meta"):
        shell = cls(config)
    check_state_dict(shell, header_shapes(path), path)


def load_weights(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a safetensors file, a sharded index or a folder's weights into `module` strictly
    (keys and shapes must match)."""
    tensors = load_state_dict(path)
    aliases = tied_aliases(module)
    tensors = {k: v for k, v in tensors.items() if k not in aliases}  # older files saved both
    check_state_dict(module, tensors, path)
    tensors.update({alias: tensors[name] for alias, name in aliases.items()})
    module.load_state_dict(tensors, strict=True)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def weights_sha256(source: str | os.PathLike | torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """A provenance hash of model weights, independent of file layout.

    Hashes name, dtype, shape and raw bytes of every tensor in sorted-name order. `source` is a
    module, a state dict, a safetensors file, a sharded index or a checkpoint directory of any
    layout (`mdiff.weights`); a directory and the module loaded from it (same dtype) hash the
    same, whatever the file names or shards.
    """
    if isinstance(source, torch.nn.Module):
        tensors = module_tensors(source)
    elif isinstance(source, Mapping):
        tensors = source
    else:
        tensors = load_state_dict(source)
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


# ---------------------------------------------------------------- built-in names


def _builtin_roots() -> Iterator[Path]:
    """The `checkpoints/` folders of the frontends, located without importing them."""
    for pkg in BUILTIN_PACKAGES:
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            continue
        for location in (spec and spec.submodule_search_locations) or []:
            yield Path(location) / "checkpoints"


def list_builtin() -> list[str]:
    """Names of the built-in checkpoints shipped as frontend package data (model folders with a
    ``config.json``, pipeline folders with a ``pipeline.json``)."""
    names = set()
    for root in _builtin_roots():
        if root.is_dir():
            names.update(
                p.name
                for p in root.iterdir()
                if (p / CONFIG_NAME).is_file() or (p / "pipeline.json").is_file()
            )
    return sorted(names)


def resolve(name_or_path: str | os.PathLike) -> Path:
    """Turn a path or a built-in name into a checkpoint directory.

    An existing path wins. A bare name is looked up among the built-in checkpoints.
    """
    path = Path(name_or_path)
    if path.exists():
        return path
    found = _find_builtin(str(name_or_path))
    if found is not None:
        return found
    available = ", ".join(list_builtin()) or "none installed"
    raise CheckpointError(
        f"no checkpoint directory {str(name_or_path)!r}: it is neither an existing path nor a "
        f"built-in name (built-in names: {available})"
    )


def _find_builtin(name: str) -> Path | None:
    if "/" in name or os.sep in name or name.startswith("."):
        return None
    return next((root / name for root in _builtin_roots() if (root / name).is_dir()), None)


def builtin(name: str) -> Path:
    """The folder of a built-in checkpoint, never a local path of the same name."""
    found = _find_builtin(name)
    if found is None:
        available = ", ".join(list_builtin()) or "none installed"
        raise CheckpointError(f"{name!r} is not a built-in checkpoint (installed: {available})")
    return found


# ---------------------------------------------------------------- the mixin


class PretrainedMixin:
    """Adds `save_pretrained` / `from_pretrained` to an `nn.Module` built from one config.

    The subclass sets `config_class` (a dataclass), takes that config as the only argument of
    `__init__`, and stores it as `self.config`. `legacy_log_fields` (see `with_legacy_fields`)
    names config fields that older exports of the class kept in their training log.

    The folder layout it writes is decided per class: `weights_name` is the weights file
    (``model.safetensors``, ours and transformers', by default); a class whose architecture,
    parameter names and config keys match a diffusers model sets `diffusers_class` (e.g.
    ``"AutoencoderKLWan"``) and ``weights_name = DIFFUSERS_WEIGHTS_NAME``, so that diffusers'
    own `from_pretrained` reads the folder (`_class_name` is then the diffusers class, and
    `_diffusers_version` is written). Reading takes every layout (`mdiff.weights`).
    """

    config_class: ClassVar[type]
    legacy_log_fields: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    weights_name: ClassVar[str] = WEIGHTS_NAME
    diffusers_class: ClassVar[str | None] = None
    config: Any

    def save_pretrained(
        self, directory: str | os.PathLike, *, max_shard_size: int | str | None = None
    ) -> Path:
        """Write `config.json` and the weights (`weights_name`) into `directory`, atomically.

        `max_shard_size` (bytes, or "10GB" / "200MiB"): split the weights into shards of at
        most that size plus ``<weights_name>.index.json``, as diffusers and transformers do.
        """
        init = {f.name for f in dataclasses.fields(self.config) if f.init}
        config = {k: v for k, v in dataclasses.asdict(self.config).items() if k in init}
        config["_class_name"] = self.diffusers_class or type(self).__name__
        if self.diffusers_class:
            config["_diffusers_version"] = DIFFUSERS_VERSION
        config["_mdiff_version"] = mdiff.__version__
        tensors = module_tensors(self)
        if max_shard_size is None:
            files, index = {self.weights_name: tensors}, None
        else:
            files, index = shard_plan(tensors, self.weights_name, max_shard_size)
        with atomic_dir(directory) as tmp:
            text = json.dumps(config, indent=2, sort_keys=True) + "\n"
            (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")
            for name, part in files.items():
                save_state_dict(part, tmp / name, {"format": "pt"})
            if index is not None:
                text = json.dumps(index, indent=2, sort_keys=True) + "\n"
                (tmp / (self.weights_name + INDEX_SUFFIX)).write_text(text, encoding="utf-8")
        return Path(directory)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        subfolder: str | None = None,
    ):
        """Build the model from a checkpoint directory or a built-in name, in eval mode.

        Any layout of `mdiff.weights` loads (ours, diffusers', sharded); `subfolder` (as in
        diffusers: ``"vae"`` of a pipeline folder) is the folder inside it to read.
        """
        directory = resolve(name_or_path)
        if not directory.is_dir():
            raise CheckpointError(f"{directory} is not a checkpoint directory")
        if subfolder is not None:
            directory = _subfolder(directory, subfolder)
        weights = find_weights(directory)
        names = tuple(n for n in (cls.__name__, cls.diffusers_class) if n)
        config = read_config(cls.config_class, directory, names)
        config = with_legacy_fields(config, directory, cls.legacy_log_fields)
        check_fits(cls, config, weights)  # before anything is allocated
        model = cls(config)
        load_weights(model, weights)
        return model.to(device=device, dtype=dtype).eval()


def _subfolder(directory: Path, subfolder: str | os.PathLike) -> Path:
    rel = Path(subfolder) if isinstance(subfolder, str | os.PathLike) else None
    if rel is None or not rel.parts or rel.is_absolute() or ".." in rel.parts:
        raise InvalidInputError(
            f"subfolder must be a relative folder name inside the checkpoint, got {subfolder!r}"
        )
    found = directory / rel
    if not found.is_dir():
        raise CheckpointError(f"no subfolder {str(subfolder)!r} in {directory}")
    return found
