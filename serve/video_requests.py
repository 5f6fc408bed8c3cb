"""The JSON body of a video request (``POST /v1/videos``, the WebSocket's ``start``) →
keyword arguments of `VideoPipeline.stream`, every field checked and bounded by the server's
`Limits` (a bad one: `InvalidInputError`, a 400 naming it)."""

from __future__ import annotations

import base64
import binascii
import io
import secrets

import numpy as np
import torch

from mdiff.errors import InvalidInputError
from mdiff.serve.text_requests import _utf8

__all__ = ["FIELDS", "decode_image", "parse_request"]

FIELDS = {"prompt", "frames", "size", "width", "height", "seed", "guidance", "steps", "image",
          "model", "type"}  # fmt: skip


def _int(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise InvalidInputError(f"{name} must be at most {high}, got {value}")
    return value


def _seed(body: dict) -> int:
    """``seed`` (default 0: a video is reproducible unless asked otherwise); ``-1``, as on the
    text routes, a random one (in the record, and in ``X-Mdiff-Seed``)."""
    if type(body.get("seed")) is int and body["seed"] == -1:
        return secrets.randbelow(2**31)
    return _int(body, "seed", 0) or 0


def parse_request(body: dict, limits, model: str, name: str | None = None) -> dict:
    """A request body → keyword arguments of `VideoPipeline.stream`, bounded by `limits`."""
    if not isinstance(body, dict):
        raise InvalidInputError("the request body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidInputError(f"unknown field(s) {', '.join(unknown)}; known: {sorted(FIELDS)}")
    if body.get("model") not in (None, model, name):
        shown = name or model
        raise InvalidInputError(f"this server makes video with {shown!r}, not {body['model']!r}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError("prompt must be a non-empty string")
    _utf8(prompt, "prompt")
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidInputError(f"prompt is longer than {limits.max_prompt_chars} characters")
    width, height = _int(body, "width", 1), _int(body, "height", 1)
    if body.get("size") is not None:
        size = body["size"]
        try:
            width, height = (int(v) for v in str(size).lower().split("x"))
        except ValueError:
            raise InvalidInputError(f"size must be 'WIDTHxHEIGHT', got {size!r}") from None
        if width < 1 or height < 1:
            raise InvalidInputError(f"size must be positive, got {size!r}")
    if width is not None and height is not None and width * height > limits.max_pixels:
        raise InvalidInputError(f"{width}x{height} exceeds {limits.max_pixels} pixels per frame")
    out = {"prompt": prompt, "num_frames": _int(body, "frames", 1, limits.max_frames),
           "width": width, "height": height, "seed": _seed(body),
           "steps": _int(body, "steps", 1, 1000)}  # fmt: skip
    guidance = body.get("guidance")
    if guidance is not None:
        if isinstance(guidance, bool) or not isinstance(guidance, int | float):
            raise InvalidInputError(f"guidance must be a number, got {guidance!r}")
        out["guidance"] = float(guidance)
    if body.get("image") is not None:
        out["image"] = decode_image(body["image"], limits)
    return {k: v for k, v in out.items() if v is not None or k == "prompt"}


def decode_image(text, limits) -> torch.Tensor:
    """Base64 (or a ``data:image/...;base64,`` URL) → uint8 (H, W, 3), bounded in size."""
    from PIL import Image

    if not isinstance(text, str):
        raise InvalidInputError("image must be a base64 string or a data URL")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > limits.max_upload_bytes * 4 // 3 + 4:
        raise InvalidInputError(f"image is larger than {limits.max_upload_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > limits.max_pixels:
                raise InvalidInputError(f"image exceeds {limits.max_pixels} pixels")
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError:  # PIL's own bound, checked in its header
        raise InvalidInputError(f"image exceeds {limits.max_pixels} pixels") from None
    except (binascii.Error, ValueError, OSError) as exc:
        raise InvalidInputError(f"image is not a base64-encoded PNG/JPEG: {exc}") from None
    return torch.from_numpy(array.copy())
