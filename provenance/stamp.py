"""The single path every output goes through: watermark, attach the record, sign on save.

    stamper = Stamper()                                   # the user's identity and keys
    out = stamper.frames(frames, record)                  # uint8 (T, H, W, 3) → watermarked
    stamper.save(out, "clip.mp4")                         # encode + embedded C2PA manifest
    policy = stamper.text_watermark(vocab_size)           # the text sampler biases with this
    stamper.save(stamper.text(code, record, policy), "completion.py")   # + completion.py.c2pa

Only a :class:`Stamped` value can be saved, and only :class:`Stamper` makes one, so an output
cannot reach a file without its watermark and record. There is no switch to turn this off.
Streams write their own fragmented MP4 and call :meth:`Stamper.sign` on the finished file.

The Stamper also commits the record's prompt with the user's prompt key
(`GenerationRecord.commit_prompt`, key `keys.prompt_key` of ``watermark.secret``), so only a
keyed commitment reaches the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mdiff import media
from mdiff.atomic import atomic_file
from mdiff.errors import InvalidInputError
from mdiff.provenance import keys, sign
from mdiff.provenance.watermark import pixel, text
from mdiff.record import GenerationRecord, WatermarkInfo

__all__ = ["Stamped", "Stamper", "payload_of"]


def payload_of(record: GenerationRecord) -> int:
    """A 32-bit payload identifying the output: the first 4 bytes of SHA-256 of its record.

    Stable across the chunks of one stream (they share the record), and it lets a stripped
    file's watermark be matched against a manifest store.
    """
    plain = dataclasses.replace(record, watermark=None).to_dict()
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Stamped:
    """Watermarked content with its record. Create through :class:`Stamper`, never by hand."""

    record: GenerationRecord
    frames: torch.Tensor | None = None  # uint8 (T, H, W, 3)
    text: str | None = None
    fps: float | None = None
    _token: object = dataclasses.field(default=None, repr=False, compare=False)


_TOKEN = object()  # proves a Stamped came from a Stamper


class Stamper:
    """Holds the signing identity and the watermark keys of one user (or deployment)."""

    def __init__(self, identity: keys.Identity | None = None, *, home=None, key_id=None,
                 alpha: float = 2.0):  # fmt: skip
        self.home = home
        self._identity = identity
        self.key_id = key_id or keys.default_key_id(home)
        self.alpha = alpha
        self._pixel: pixel.PixelWatermark | None = None
        self._prompt_keys: dict[Path, bytes] = {}  # by home: without one, $MDIFF_HOME's

    @property
    def identity(self) -> keys.Identity:
        if self._identity is None:
            self._identity = keys.default_identity(self.home)  # created on first use, logged
        return self._identity

    @property
    def trust(self) -> keys.TrustConfig:
        """The trust anchors of this home (they validate signed ingredients when added)."""
        return keys.TrustConfig.default(self.home)

    def _key(self, scheme: str) -> bytes:
        return keys.watermark_key(self.key_id, scheme, keys.master_secret(self.home))

    def commit(self, record: GenerationRecord) -> GenerationRecord:
        """``record`` with its pending prompt replaced by this user's keyed commitment."""
        if record.pending_prompt is None:
            return record
        home = Path(self.home or keys.mdiff_home())
        if home not in self._prompt_keys:  # read once per home, not at every completion
            self._prompt_keys[home] = keys.prompt_key(keys.master_secret(home))
        return record.commit_prompt(self._prompt_keys[home])

    @property
    def pixel_watermark(self) -> pixel.PixelWatermark:
        if self._pixel is None:
            self._pixel = pixel.PixelWatermark(self._key(pixel.SCHEME), alpha=self.alpha)
        return self._pixel

    def text_watermark(self, vocab_size: int, ignore_ids=()) -> text.TextWatermark:
        """The policy a masked-diffusion sampler applies to every committed token."""
        return text.TextWatermark(self._key(text.SCHEME), vocab_size, ignore_ids=ignore_ids)

    # ------------------------------------------------------------------------------- stamping

    def frames(
        self, frames: torch.Tensor | np.ndarray, record: GenerationRecord, *, fps=None, track=None
    ) -> Stamped:
        """Watermark ``uint8 (T, H, W, 3)`` frames (a tensor or a NumPy array; an image is
        T = 1) and attach the record.

        Pieces of one video (a stream's chunks) pass one ``pixel.MotionTrack`` (``track``), so
        the mark keeps following the camera across them instead of restarting."""
        if record.modality not in ("image", "video"):
            raise InvalidInputError(f"frames need an image or video record, not {record.modality}")
        device = frames.device if torch.is_tensor(frames) else None
        frames = media.check_frames(frames).to(device)  # NumPy arrays become tensors
        fps = None if fps is None else media.check_fps(fps)  # 0 is refused, not "16"
        record = self.commit(record)
        payload = payload_of(record)
        marked = self.pixel_watermark.embed(frames, payload, track=track)
        info = WatermarkInfo(pixel.SCHEME, self.key_id, f"{payload:08x}", {"alpha": self.alpha})
        return Stamped(record.with_watermark(info), frames=marked, fps=fps, _token=_TOKEN)

    def join(self, parts: Sequence[Stamped]) -> Stamped:
        """One output from consecutive stamped pieces of one generation (a stream's chunks).

        The pieces keep their watermark as stamped; they must share the record (hence the
        payload) and fps, so the result is what the stream wrote, frame for frame.
        """
        parts = list(parts)
        if not parts:
            raise InvalidInputError("join needs at least one stamped part")
        for part in parts:
            if not isinstance(part, Stamped) or part._token is not _TOKEN or part.frames is None:
                raise InvalidInputError("join takes frames returned by Stamper.frames only")
        first = parts[0]
        if any(p.record != first.record or p.fps != first.fps for p in parts[1:]):
            raise InvalidInputError("joined parts must share one record and fps")
        frames = torch.cat([p.frames for p in parts]) if len(parts) > 1 else first.frames
        return Stamped(first.record, frames=frames, fps=first.fps, _token=_TOKEN)

    def text(self, content: str, record: GenerationRecord, policy: text.TextWatermark | None):
        """Attach the record to text the sampler generated (and watermarked with ``policy``).

        ``policy=None`` states that the text carries no watermark (e.g. a user's own file);
        the record then says so and the manifest still binds the exact bytes.
        """
        if record.modality not in ("text", "code"):
            raise InvalidInputError(f"text needs a text or code record, not {record.modality}")
        record = self.commit(record)
        if policy is not None:
            params = {"gamma": policy.gamma, "delta": policy.delta}
            record = record.with_watermark(WatermarkInfo(text.SCHEME, self.key_id, "", params))
        return Stamped(record, text=content, _token=_TOKEN)

    # --------------------------------------------------------------------------------- saving

    def save(self, output: Stamped, path: str | os.PathLike) -> Path:
        """Write the output and sign it: embedded for PNG/JPEG/MP4, a ``.c2pa`` sidecar for text.

        Nothing is left behind when encoding or signing fails.
        """
        if not isinstance(output, Stamped) or output._token is not _TOKEN:
            raise InvalidInputError("only outputs returned by Stamper.frames/text can be saved")
        path = Path(path)
        kind = media.kind_of(path)
        if output.text is not None:
            if kind != "text":
                raise InvalidInputError(f"text output must be saved as text, not {path.name}")
            if not output.text:
                raise InvalidInputError(f"{path.name}: empty text cannot be signed")
            with atomic_file(path) as tmp:
                tmp.write_text(output.text, encoding="utf-8", newline="")  # bytes as given
                sign.sign_sidecar(tmp, output.record, self.identity, sidecar=_sidecar(path),
                                  trust=self.trust, title=path.name)  # fmt: skip
            return path
        frames = output.frames
        if kind == "image" and frames.shape[0] != 1:
            raise InvalidInputError(f"{frames.shape[0]} frames cannot be saved as an image")
        if kind not in ("image", "video"):
            raise InvalidInputError(f"frames must be saved as .png, .jpg or .mp4, not {path.name}")
        with atomic_file(path) as tmp:
            if kind == "image":
                media.write_image(frames[0], tmp)
            else:
                media.write_mp4(frames, tmp, fps=16.0 if output.fps is None else output.fps)
            sign.sign_file(tmp, tmp, output.record, self.identity, trust=self.trust,
                           title=path.name)  # fmt: skip
        return path

    def sign(self, path: str | os.PathLike, record: GenerationRecord, *, title=None) -> Path:
        """Sign a file written elsewhere (a finished fragmented MP4 of a stream, a file that
        already carries its watermark) in place; ``title`` defaults to the file's name."""
        return sign.sign_file(path, path, self.commit(record), self.identity, trust=self.trust,
                              title=title)  # fmt: skip


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".c2pa")
