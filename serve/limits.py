"""Per-request bounds of the server (`Limits`); the bounded work queue lives here too."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask; beyond them a 4xx with an OpenAI-style error."""

    max_tokens: int = 512  # completion tokens per choice
    max_n: int = 8  # choices per completion request
    max_prompt_chars: int = 100_000  # prompt + suffix
    max_frames: int = 257  # video frames per request
    max_pixels: int = 512 * 512  # height × width
    max_upload_bytes: int = 64 * 2**20  # /v1/verify
    max_verify_pixels: int = 2048 * 2048  # /v1/verify: a larger image's watermark goes unread
    max_body_bytes: int = 4 * 2**20  # a JSON body (413 beyond; read no further)
    queue_size: int = 32  # waiting requests before 429 + Retry-After
    max_running_videos: int = 4  # video streams generated at once (interleaved by chunk)
