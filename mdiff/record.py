"""`GenerationRecord`: what produced an output; every output carries one, signed into its manifest.

Privacy. The record publishes (``to_dict``, hence the manifest) only what the user chose:

* the prompt as a **keyed commitment**, never the prompt or its plain hash (a plain SHA-256 of a
  short prompt is enumerable): ``create(prompt=...)`` holds the prompt only in memory, and
  ``commit_prompt(key)`` (called by ``mdiff.provenance.Stamper`` with the user's local secret)
  replaces it by ``prompt_commitment`` (see `commit_prompt`); the raw prompt is kept only with
  ``keep_prompt=True``. Old manifests that carry ``prompt_sha256`` still read back;
* a local model folder or input file by its base name only, never a local path (the weights
  hash identifies the weights).

Every field is checked when a record is built, so a bad seed or step count fails before any work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from mdiff.errors import InvalidInputError

__all__ = [
    "PROMPT_SCHEME",
    "SEED_LIMIT",
    "GenerationRecord",
    "WatermarkInfo",
    "check_seed",
    "prompt_digest",
    "prompt_opening",
    "published_name",
    "sha256_text",
]

MODALITIES = ("image", "video", "text", "code")
SEED_LIMIT = 2**63  # seeds are ints in [0, 2^63): they fit torch's generators and C2PA's CBOR
PROMPT_SCHEME = "mdiff-prompt-hmac-v1"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_POSITIVE_SIZES = ("width", "height", "frames")


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` if it is an int in [0, `SEED_LIMIT`), else `InvalidInputError` (bools refused);
    every frontend checks seeds with this before any work, so no run fails at signing."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise InvalidInputError(f"{name} must be an integer in [0, 2^63), got {seed!r}")
    return seed


def sha256_text(text: str) -> str:
    """Hex SHA-256 of the UTF-8 bytes of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_digest(opening: bytes, prompt: str) -> str:
    """The commitment digest: hex HMAC-SHA256(opening, UTF-8 prompt). Anyone given the opening
    (32 bytes, one per output) and the prompt can recompute it; without the opening the digest
    says nothing about the prompt."""
    return hmac.new(opening, prompt.encode("utf-8"), hashlib.sha256).hexdigest()


def published_name(path: str) -> str:
    """A local path reduced to its last component; names and hub ids (``org/model``) kept.
    Bytes of a file name that are not UTF-8 (surrogates, as Python passes them) become U+FFFD,
    so the name always fits a manifest's JSON."""
    p = os.path.expanduser(path)
    # a relative path ("models/llama") is told from a hub id ("org/model") by being there
    if os.path.isabs(p) or path.startswith((".", "~")) or "\\" in path or os.path.exists(p):
        path = PurePath(p.replace("\\", "/")).name or path
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(frozen=True)
class WatermarkInfo:
    """Which watermark an output carries: scheme, key id (never the key) and payload.

    ``params["inherited"] = True`` marks a watermark the output already carried when it was
    signed (`mdiff sign` on a marked file): recorded, not applied again."""

    scheme: str  # e.g. "mdiff-pixel-v1", "mdiff-text-v1"
    key_id: str
    payload_hex: str  # the embedded payload, hex ("" for schemes without a payload)
    params: dict[str, Any] = field(default_factory=dict)  # strength, tile, gamma, ...


@dataclass(frozen=True)
class GenerationRecord:
    """One output's generation facts. Build with :meth:`create`; ``to_dict`` is what is published.

    ``sizes`` holds what fits the modality: ``{"width", "height", "frames", "fps"}`` for video,
    ``{"width", "height"}`` for images, ``{"tokens"}`` for text. ``inputs`` lists user-supplied
    files (local paths, published as base names) that become C2PA ``inputTo`` ingredients;
    ``parent`` is the file this output was opened from (`mdiff sign`: a ``parentOf``
    ingredient, action ``c2pa.opened``). ``edited`` marks outputs that keep visible user content
    (image-to-video, editing). ``source_type`` is an IPTC digital source type term (e.g.
    ``"digitalCreation"``); None lets the manifest derive it (generated: trained or composite).
    """

    modality: str
    model_id: str
    weights_sha256: str | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    sizes: dict[str, Any] = field(default_factory=dict)
    prompt_sha256: str | None = None  # legacy manifests only; new records never set it
    prompt_commitment: dict[str, str] | None = None  # {"scheme", "nonce", "digest"}
    prompt: str | None = None
    inputs: tuple[str, ...] = ()
    parent: str | None = None
    edited: bool = False
    source_type: str | None = None
    watermark: WatermarkInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # the prompt waiting for `commit_prompt`: in memory only, never published or compared
    pending_prompt: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise InvalidInputError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if not isinstance(self.model_id, str) or not self.model_id:
            raise InvalidInputError("a GenerationRecord needs a model_id (a non-empty str)")
        if self.seed is not None:
            check_seed(self.seed)
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0
        ):
            raise InvalidInputError(f"steps must be an integer ≥ 0, got {self.steps!r}")
        for name in ("weights_sha256", "prompt_sha256"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and _HEX64.fullmatch(value)):
                raise InvalidInputError(f"{name} must be 64 lowercase hex digits, got {value!r}")
        for name in ("guidance", "sizes", "extra"):
            if not isinstance(getattr(self, name), dict):
                raise InvalidInputError(f"{name} must be a dict, got {getattr(self, name)!r}")
        _check_sizes(self.sizes)
        for name in ("sampler", "prompt", "parent", "source_type", "pending_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidInputError(f"{name} must be a str, got {type(value).__name__}")
        _check_utf8(self.pending_prompt or self.prompt)
        if not all(isinstance(p, str) for p in self.inputs):
            raise InvalidInputError(f"inputs must be file paths (str), got {self.inputs!r}")
        if not isinstance(self.edited, bool):
            raise InvalidInputError(f"edited must be a bool, got {self.edited!r}")
        if self.watermark is not None and not isinstance(self.watermark, WatermarkInfo):
            raise InvalidInputError("watermark must be a WatermarkInfo")

    @classmethod
    def create(cls, modality: str, model_id: str, *, prompt: str | None = None,
               keep_prompt: bool = False, **fields) -> GenerationRecord:  # fmt: skip
        """A record holding ``prompt`` for `commit_prompt` (and publishing it only if
        ``keep_prompt``); ``inputs`` may be paths (``os.PathLike``)."""
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidInputError(f"prompt must be a str, got {type(prompt).__name__}")
        kept = prompt if keep_prompt else None
        inputs = tuple(os.fspath(p) for p in fields.pop("inputs", ()))
        if fields.get("parent") is not None:
            fields["parent"] = os.fspath(fields["parent"])
        return cls(modality, model_id, prompt=kept, inputs=inputs, pending_prompt=prompt, **fields)

    def commit_prompt(self, key: bytes) -> GenerationRecord:
        """Replace the pending prompt by a keyed commitment (a record without one is returned).

        ``nonce`` = HMAC(key, "nonce|" + the rest of the record)[:16 bytes], so the same
        generation always gets the same commitment and different ones unlinkable ones;
        ``opening`` = HMAC(key, "opening|" + nonce) and ``digest`` = `prompt_digest` (opening,
        prompt). The owner of ``key`` re-derives the opening to prove a prompt later and can
        hand out that one output's opening; nobody can test prompts without it.
        """
        if self.pending_prompt is None:
            return self
        rest = dataclasses.replace(self, watermark=None, pending_prompt=None).to_dict()
        body = json.dumps(rest, sort_keys=True).encode()
        nonce = hmac.new(key, b"nonce|" + body, hashlib.sha256).hexdigest()[:32]
        digest = prompt_digest(prompt_opening(key, nonce), self.pending_prompt)
        commitment = {"scheme": PROMPT_SCHEME, "nonce": nonce, "digest": digest}
        return dataclasses.replace(self, prompt_commitment=commitment, pending_prompt=None)

    def with_watermark(self, info: WatermarkInfo) -> GenerationRecord:
        return dataclasses.replace(self, watermark=info)

    def to_dict(self) -> dict[str, Any]:
        """The published, JSON-able form: ``None`` fields left out, local paths (model folder,
        inputs, parent) reduced to base names, no pending prompt."""
        out = dataclasses.asdict(self)
        out.pop("pending_prompt")
        out["model_id"] = published_name(self.model_id)
        out["inputs"] = [published_name(p) for p in self.inputs]
        if self.parent is not None:
            out["parent"] = published_name(self.parent)
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRecord:
        """Inverse of :meth:`to_dict` (unknown keys are an error, not silently dropped)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"pending_prompt"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidInputError(f"unknown GenerationRecord fields: {', '.join(unknown)}")
        data = dict(data)
        if data.get("watermark") is not None:
            data["watermark"] = WatermarkInfo(**data["watermark"])
        data["inputs"] = tuple(data.get("inputs", ()))
        return cls(**data)


def prompt_opening(key: bytes, nonce: str) -> bytes:
    """The 32-byte opening of the commitment with ``nonce`` under ``key`` (see `commit_prompt`)."""
    return hmac.new(key, b"opening|" + nonce.encode(), hashlib.sha256).digest()


def _check_utf8(prompt: str | None) -> None:
    try:
        (prompt or "").encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(
            f"the prompt is not valid UTF-8 text (an undecodable byte at character {e.start})"
        ) from None


def _check_sizes(sizes: dict[str, Any]) -> None:
    for name in _POSITIVE_SIZES:
        value = sizes.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):  # fmt: skip
            raise InvalidInputError(f"sizes[{name!r}] must be an integer ≥ 1, got {value!r}")
    fps = sizes.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float)
                            or not math.isfinite(fps) or fps <= 0):  # fmt: skip
        raise InvalidInputError(f"sizes['fps'] must be a positive number, got {fps!r}")
    tokens = sizes.get("tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                               or tokens < 0):  # fmt: skip
        raise InvalidInputError(f"sizes['tokens'] must be an integer ≥ 0, got {tokens!r}")
