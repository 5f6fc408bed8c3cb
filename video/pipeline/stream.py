"""Streaming output of the video pipeline: latent chunks → decoded, watermarked frame chunks,
and the live fragmented MP4 they can be written to.

    for chunk in decode_chunks(vae, latent_chunks, stamp):   # VideoChunk, as soon as final
        show(chunk.frames)                                    # uint8 (n, H, W, 3), watermarked

Every latent chunk goes through one VAE decode session (`CausalVAE.decode_stream`), which
carries the causal state explicitly, so the chunks' frames concatenated are exactly the frames
of the whole clip decoded at once (the first latent gives 1 frame, every later one 4). Each
chunk is watermarked by its own `Stamper.frames` call with the record of the whole generation,
so every chunk carries the same payload and a stream concatenated equals the offline output
bit for bit (the offline path joins the same chunks).

`write_live` writes the chunks to a fragmented MP4 that a player can open while it grows and
signs the finished file in the writer's `on_finish` hook, which also runs when the generation
is interrupted (Ctrl-C, an exception in a callback): the file then holds every finished chunk,
is playable and carries a manifest that says it was cut short. A file that could not be signed
(a full disk) is removed, and a file that was at the path survives unless the new one is
complete and signed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mdiff.atomic import atomic_file, is_write_failure, write_error
from mdiff.errors import InvalidInputError
from mdiff.provenance.stamp import Stamped
from mdiff.record import GenerationRecord
from mdiff.video.io import FragmentedMP4Writer, pixels_to_frames
from mdiff.video.pipeline.sampling import LatentChunk
from mdiff.video.vae.model import CausalVAE

__all__ = ["StreamSummary", "VideoChunk", "decode_chunks", "write_live"]


@dataclass(frozen=True)
class VideoChunk:
    """One finished piece of a stream: frames [start_frame, end_frame) of the output video."""

    index: int
    frames: Tensor  # uint8 (n, H, W, 3), watermarked
    start_frame: int
    end_frame: int
    latents: Tensor  # (1, C, n', h, w) the latent frames this chunk decodes
    timings: dict[str, float]  # seconds: denoise, decode, watermark, since_start
    stamped: Stamped = field(repr=False)

    @property
    def record(self) -> GenerationRecord:
        return self.stamped.record


@dataclass(frozen=True)
class StreamSummary:
    """What `stream_to` wrote."""

    path: Path
    frames: int
    chunks: int
    seconds: float  # wall time from the call to the signed file
    time_to_first_frame: float  # seconds until the file could show its first frame (below)
    fps: float  # frames generated per second of wall time
    record: GenerationRecord


def decode_chunks(
    vae: CausalVAE,
    latents: Iterable[LatentChunk],
    stamp: Callable[[Tensor], Stamped],
    *,
    skip_frames: int = 0,
) -> Iterator[VideoChunk]:
    """Decode each latent chunk through one VAE stream session, drop the first `skip_frames`
    output frames (those of a prefix clip), watermark with `stamp(frames)` and yield."""
    session = vae.decode_stream()
    p = next(vae.parameters())
    start, produced, emitted = time.perf_counter(), 0, 0
    chunks = iter(latents)
    while True:
        t0 = time.perf_counter()
        chunk = next(chunks, None)
        if chunk is None:
            return
        t1 = time.perf_counter()
        with torch.no_grad():
            pixels = session.push(chunk.latents.to(p.device, p.dtype))  # (1, 3, n, H, W)
        frames = pixels_to_frames(pixels[0])  # uint8 (n, H, W, 3)
        cut = min(max(skip_frames - produced, 0), frames.shape[0])
        produced += frames.shape[0]
        frames = frames[cut:]
        t2 = time.perf_counter()
        if frames.shape[0] == 0:  # a chunk of the prefix: it only warmed the decoder
            continue
        stamped = stamp(frames)
        t3 = time.perf_counter()
        timings = {"denoise": t1 - t0, "decode": t2 - t1, "watermark": t3 - t2,
                   "since_start": t3 - start}  # fmt: skip
        n = stamped.frames.shape[0]
        yield VideoChunk(chunk.index, stamped.frames, emitted, emitted + n, chunk.latents,
                         timings, stamped)  # fmt: skip
        emitted += n


def check_mp4_target(path: str | os.PathLike) -> Path:
    """A live stream goes to an .mp4 path whose folder exists (checked before any work)."""
    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        raise InvalidInputError(f"a live stream is written as .mp4, not {path.name}")
    if not path.parent.is_dir():
        raise InvalidInputError(f"{path}: the destination folder does not exist")
    return path


def write_live(
    path: str | os.PathLike, chunks: Iterable[VideoChunk], stamper, *, fps: float
) -> StreamSummary:
    """Write chunks to a live fragmented MP4 at `path` and sign it when it is finished.

    A new file is written in place, so a player can open it while it grows; an existing file
    is replaced by one written beside it and renamed over it once complete and signed, so the
    old file survives any failure or interruption. If the chunks of a new file stop with an
    exception (or Ctrl-C), the writer still finalizes it and signs it with the generation's
    record marked ``extra["interrupted"] = True`` and the number of frames it holds; the
    exception then propagates. A file that could not be finished and signed (a full disk, a
    failed write, no chunk yet) is removed: no unsigned MP4 is ever left at `path`. A failure
    to write raises `WriteError` naming `path`.
    """
    path = check_mp4_target(path)
    start = time.perf_counter()
    if path.exists():
        with atomic_file(path) as tmp:
            live = _write_signed(tmp, chunks, stamper, fps)
            if live.stopped is not None:  # interrupted: the old file stays as it was
                raise live.stopped
    else:
        try:
            live = _write_signed(path, chunks, stamper, fps)
        except BaseException as exc:
            path.unlink(missing_ok=True)
            if is_write_failure(exc, path):
                raise write_error(path, exc) from exc
            raise
    if live.stopped is not None:
        raise live.stopped
    seconds = time.perf_counter() - start
    frames = live.writer.frames_written
    return StreamSummary(path, frames, live.writer.chunks_written, seconds, live.first,
                         frames / seconds, live.record)  # fmt: skip


@dataclass
class _Live:
    """What `_write_signed` wrote: the writer, the record signed, when the first frame became
    decodable in the file and the exception that stopped the chunks (None when they all came).

    The muxer closes a frame's fragment when the next frame is muxed (it needs its duration),
    so frame 0 can be shown once frame 1 is written: with a one-frame first chunk (the causal
    models' first latent frame), that is the second chunk. That moment is the time to first
    frame a viewer of the file, or of its live bytes, sees."""

    writer: FragmentedMP4Writer
    record: GenerationRecord
    first: float
    stopped: BaseException | None


def _write_signed(target: Path, chunks: Iterable[VideoChunk], stamper, fps: float) -> _Live:
    """Write and sign the fMP4 at `target`. Returns only for a signed file, also one whose
    chunks were interrupted (their exception in `_Live.stopped`); raises when the file could
    not be signed or the writing itself failed (an `OSError`)."""
    start = time.perf_counter()
    state: dict = {"record": None, "complete": False, "first": None, "signed": False}

    def finish(written) -> Path:
        record = state["record"]
        if not state["complete"]:
            extra = {**record.extra, "interrupted": True, "frames_written": writer.frames_written}
            record = dataclasses.replace(record, extra=extra)
        signed = stamper.sign(written, record)
        state["signed"] = True
        return signed

    stopped = None
    try:
        with FragmentedMP4Writer(target, fps=fps, on_finish=finish) as writer:
            for chunk in chunks:
                state["record"] = chunk.record
                writer.write(chunk.frames)
                if state["first"] is None and writer.frames_written >= 2:
                    state["first"] = time.perf_counter() - start  # frame 0's fragment is out
            state["complete"] = True
        if state["first"] is None:  # a one-frame file: its fragment closed with the file
            state["first"] = time.perf_counter() - start
    except BaseException as exc:
        if not state["signed"] or isinstance(exc, OSError):
            raise
        stopped = exc
    if state["record"] is None:
        raise InvalidInputError("the stream produced no frames")
    return _Live(writer, state["record"], state["first"], stopped)
