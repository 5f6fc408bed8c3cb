"""Checkpoint configs: `config.json` to and from a config dataclass, presets, and the fields
that older exports kept only in their training log (`with_legacy_fields`). `mdiff.hub` builds
`save_pretrained` / `from_pretrained` on these."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mdiff.errors import CheckpointError, InvalidInputError

__all__ = [
    "CONFIG_NAME",
    "TRAINING_LOG",
    "preset_config",
    "read_config",
    "read_json_object",
    "with_legacy_fields",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
TRAINING_LOG = "training_log.json"  # provenance; configuration only in the old layout


def _from_json(hint: Any, value: Any) -> Any:
    """Undo JSON's flattening of a dataclass field: lists back to tuples, dicts to dataclasses."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X] / X | None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _from_json(options[0], value) if len(options) == 1 and value is not None else value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _config_from_dict(hint, value, hint.__name__)
    if (hint is tuple or origin is tuple) and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(args[0], v) for v in value)
        if len(args) == len(value):
            return tuple(_from_json(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    return value


def _config_from_dict(config_class: type, data: dict, source: Any) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config_class) if f.init}
    unknown = sorted(k for k in data if k not in fields)
    if unknown:
        raise CheckpointError(
            f"config in {source} has keys unknown to {config_class.__name__}: {', '.join(unknown)}"
        )
    try:
        hints = typing.get_type_hints(config_class)
    except (NameError, TypeError):  # unresolvable forward references: take values as they are
        hints = {}
    kwargs = {k: _from_json(hints.get(k, Any), v) for k, v in data.items()}
    try:
        return config_class(**kwargs)
    except (TypeError, ValueError) as e:
        name = config_class.__name__
        raise CheckpointError(f"config in {source} is not a valid {name}: {e}") from e


def read_json_object(path: str | os.PathLike) -> dict:
    """A checkpoint's JSON file that must hold an object; `CheckpointError` otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def preset_config(config_class: type, presets: dict[str, dict], name: str, **overrides) -> Any:
    """``config_class(**presets[name], **overrides)``; an unknown name lists the choices."""
    if name not in presets:
        raise InvalidInputError(f"unknown preset {name!r}; choose from {sorted(presets)}")
    return config_class(**{**presets[name], **overrides})


def read_config(
    config_class: type, directory: str | os.PathLike, class_name: str | tuple[str, ...] = ""
) -> Any:
    """Read `config.json` of a checkpoint directory into `config_class`.

    `class_name` (one name, or the names a class answers to: ours and the diffusers class it
    matches), if given, is compared with the `_class_name` the file records (a warning only).
    Keys starting with ``_`` (``_class_name``, ``_diffusers_version``, …) are metadata.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} in {directory}")
    data = read_json_object(path)
    saved_class = data.get("_class_name")
    names = (class_name,) if isinstance(class_name, str) else tuple(class_name)
    names = tuple(n for n in names if n)
    if names and saved_class and saved_class not in names:
        logger.warning("loading a %s checkpoint from %s as %s", saved_class, directory, names[0])
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    return _config_from_dict(config_class, data, path)


def with_legacy_fields(
    config: Any, directory: str | os.PathLike, fields: Mapping[str, tuple[str, ...]]
) -> Any:
    """`config` with the fields that older exports kept only in their training log.

    `fields` maps a config field to its path of keys in ``training_log.json`` (e.g.
    ``{"trained_frames": ("data", "frames")}``). A field is taken from the log only when
    ``config.json`` lacks its key (the old layout) and the log holds a value there; one WARNING
    names what was taken. A folder in the new layout, or without a readable log, keeps `config`.
    """
    directory = Path(directory)
    log_path = directory / TRAINING_LOG
    saved = read_json_object(directory / CONFIG_NAME) if fields else {}
    missing = {name: keys for name, keys in fields.items() if name not in saved}
    if not missing or not log_path.is_file():
        return config
    try:
        log = read_json_object(log_path)
    except CheckpointError as e:
        logger.warning("old-layout checkpoint %s: %s; keeping the config defaults", directory, e)
        return config
    found = {}
    for name, keys in missing.items():
        value = log
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            found[name] = value
    if not found:
        return config
    taken = ", ".join(f"{k}={v!r}" for k, v in found.items())
    logger.warning(
        "taking %s from %s (old layout); re-save with save_pretrained to move it into %s",
        taken, log_path, CONFIG_NAME,
    )  # fmt: skip
    try:
        return dataclasses.replace(config, **found)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{log_path} gives an invalid {taken}: {e}") from e
