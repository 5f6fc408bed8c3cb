"""`GenerationRecord`: what produced an output; every output carries one, signed into its manifest.

The record never holds the raw prompt unless the caller opts in (``keep_prompt=True``): by
default only its SHA-256 is kept, so a signed file does not leak what the user typed. The
watermark fields are filled by ``mdiff.provenance`` when it marks the output.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from mdiff.errors import InvalidInputError

__all__ = ["SEED_LIMIT", "GenerationRecord", "WatermarkInfo", "check_seed", "sha256_text"]

MODALITIES = ("image", "video", "text", "code")
SEED_LIMIT = 2**63  # seeds are ints in [0, 2^63): they fit torch's generators and C2PA's CBOR


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` if it is an int in [0, `SEED_LIMIT`), else `InvalidInputError` (bools refused);
    every frontend checks seeds with this before any work, so no run fails at signing."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise InvalidInputError(f"{name} must be an integer in [0, 2^63), got {seed!r}")
    return seed


def sha256_text(text: str) -> str:
    """Hex SHA-256 of the UTF-8 bytes of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class WatermarkInfo:
    """Which watermark an output carries: scheme, key id (never the key) and payload."""

    scheme: str  # e.g. "mdiff-pixel-v1", "mdiff-text-v1"
    key_id: str
    payload_hex: str  # the embedded payload, hex ("" for schemes without a payload)
    params: dict[str, Any] = field(default_factory=dict)  # strength, tile, gamma, ...


@dataclass(frozen=True)
class GenerationRecord:
    """One output's generation facts. Build with :meth:`create`; everything is JSON-serialisable.

    ``sizes`` holds what fits the modality: ``{"width", "height", "frames", "fps"}`` for video,
    ``{"width", "height"}`` for images, ``{"tokens"}`` for text. ``inputs`` lists user-supplied
    files (paths) that become C2PA ingredients; ``edited`` marks outputs that keep visible user
    content (image-to-video, editing), which changes the C2PA action and source type.
    """

    modality: str
    model_id: str
    weights_sha256: str | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    sizes: dict[str, Any] = field(default_factory=dict)
    prompt_sha256: str | None = None
    prompt: str | None = None
    inputs: tuple[str, ...] = ()
    edited: bool = False
    watermark: WatermarkInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise InvalidInputError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if not self.model_id:
            raise InvalidInputError("a GenerationRecord needs a model_id")

    @classmethod
    def create(cls, modality: str, model_id: str, *, prompt: str | None = None,
               keep_prompt: bool = False, **fields) -> GenerationRecord:  # fmt: skip
        """A record that stores ``sha256(prompt)`` and, only if ``keep_prompt``, the prompt."""
        digest = sha256_text(prompt) if prompt is not None else None
        kept = prompt if keep_prompt else None
        inputs = tuple(str(p) for p in fields.pop("inputs", ()))
        return cls(modality, model_id, prompt_sha256=digest, prompt=kept, inputs=inputs, **fields)

    def with_watermark(self, info: WatermarkInfo) -> GenerationRecord:
        return dataclasses.replace(self, watermark=info)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; ``None`` fields are left out."""
        out = dataclasses.asdict(self)
        out["inputs"] = list(self.inputs)
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRecord:
        """Inverse of :meth:`to_dict` (unknown keys are an error, not silently dropped)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidInputError(f"unknown GenerationRecord fields: {', '.join(unknown)}")
        data = dict(data)
        if data.get("watermark") is not None:
            data["watermark"] = WatermarkInfo(**data["watermark"])
        data["inputs"] = tuple(data.get("inputs", ()))
        return cls(**data)
