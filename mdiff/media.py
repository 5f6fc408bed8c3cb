"""Minimal media IO shared by the frontends: images (PNG/JPEG) and H.264 MP4.

Frames at this boundary are ``uint8`` tensors ``(T, H, W, 3)`` (one frame for an image). It
lives in the core because two frontends need it: provenance writes stamped outputs and reads
files back for watermark detection; the video frontend builds its richer IO (live fragmented
MP4, random access with decord, datasets) on top. Every write is atomic. Reads stop at
``max_frames`` so a huge file cannot exhaust memory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from mdiff.atomic import atomic_file
from mdiff.errors import InvalidInputError, VideoIOError

IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov"}
# text: code, markup and configuration; a name without a suffix (Makefile, a script) is text too
# fmt: off
TEXT_SUFFIXES = {
    ".txt", ".md", ".rst", ".py", ".pyi", ".pyx", ".ipynb", ".c", ".h", ".cc", ".cpp", ".cxx",
    ".hpp", ".hh", ".cs", ".java", ".kt", ".kts", ".scala", ".go", ".rs", ".swift", ".m", ".mm",
    ".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".vue", ".svelte", ".html", ".htm", ".css",
    ".scss", ".sass", ".less", ".php", ".rb", ".pl", ".pm", ".lua", ".r", ".jl", ".dart", ".ex",
    ".exs", ".erl", ".hs", ".ml", ".mli", ".fs", ".clj", ".zig", ".nim", ".sh", ".bash", ".zsh",
    ".fish", ".ps1", ".bat", ".cmd", ".sql", ".proto", ".graphql", ".json", ".jsonc", ".yaml",
    ".yml", ".toml", ".ini", ".cfg", ".conf", ".xml", ".csv", ".tex", ".cmake", ".mk", ".gradle",
    ".tf", ".dockerfile", ".env", ".lock"
}
# fmt: on
MAX_FRAMES = 10_000
MAX_FRAME_PIXELS = 4096 * 4096  # a video frame: 4K and more
MAX_IMAGE_PIXELS = 8192 * 8192  # an image: 64 MP (PIL's own bomb guard starts at 89 MP)
MAX_FPS = 1000.0


def kind_of(path: str | os.PathLike) -> str:
    """ "image", "video" or "text" from the file name (content checks happen when reading)."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in TEXT_SUFFIXES or not suffix:
        return "text"
    raise InvalidInputError(
        f"unsupported file type {suffix!r} for {Path(path).name}: expected an image "
        f"({', '.join(IMAGE_SUFFIXES)}), a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or text "
        "(source code, markup or configuration: .py, .c, .sh, .yaml, …)"
    )


def check_frames(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate ``uint8 (T, H, W, 3)`` frames (a tensor or a NumPy array) and return them as a
    CPU tensor."""
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not torch.is_tensor(frames) or frames.dtype != torch.uint8:
        kind = getattr(frames, "dtype", type(frames).__name__)
        raise InvalidInputError(
            f"frames must be uint8 (T, H, W, 3), a tensor or NumPy array; got {kind}"
        )
    if frames.dim() != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise InvalidInputError(f"frames must have shape (T, H, W, 3), got {tuple(frames.shape)}")
    return frames.cpu()


def check_fps(fps) -> float:
    """A frame rate: a finite number in (0, `MAX_FPS`], else `InvalidInputError` (0 is not
    "the default")."""
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps <= MAX_FPS:
        raise InvalidInputError(f"fps must be a number in (0, {MAX_FPS:g}], got {fps!r}")
    return float(fps)


def check_even(frames: torch.Tensor, pad: bool) -> torch.Tensor:
    """Frames H.264 (yuv420p) can hold: even sizes as they are, odd ones edge-padded if `pad`
    (the saved size then differs), else `InvalidInputError` (never a silent change)."""
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        if not pad:
            raise InvalidInputError(
                f"H.264 video needs an even width and height, got {width}×{height} (W×H): crop "
                "or pad the frames (pad=True pads the last row and column)"
            )
        frames = pad_even(frames)
    return frames


def pad_even(frames: torch.Tensor) -> torch.Tensor:
    """Edge-pad ``(T, H, W, 3)`` frames to even H and W (yuv420p needs them): repeat the last
    row / column. Frames that are already even are returned unchanged."""
    if frames.shape[1] % 2:
        frames = torch.cat([frames, frames[:, -1:]], dim=1)
    if frames.shape[2] % 2:
        frames = torch.cat([frames, frames[:, :, -1:]], dim=2)
    return frames


def write_image(frame: torch.Tensor, path: str | os.PathLike, *, quality: int = 95) -> Path:
    """Write one ``uint8 (H, W, 3)`` frame as PNG or JPEG (by suffix), atomically."""
    from PIL import Image

    path = Path(path)
    fmt = IMAGE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInputError(f"an image must be saved as .png or .jpg, not {path.name}")
    array = check_frames(frame[None])[0].numpy()
    with atomic_file(path) as tmp:
        options = {"quality": quality} if fmt == "JPEG" else {}
        Image.fromarray(array).save(tmp, format=fmt, **options)
    return path


def write_mp4(
    frames: torch.Tensor,
    path: str | os.PathLike,
    *,
    fps: float = 16.0,
    crf: int = 18,
    pad: bool = False,
) -> Path:
    """Encode frames with H.264 (yuv420p) into an MP4, atomically. Odd sizes are refused, or
    edge-padded to even with ``pad=True`` (`check_even`); ``fps`` is checked by `check_fps`."""
    import av

    frames = check_even(check_frames(frames), pad)
    fps = check_fps(fps)
    with atomic_file(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for array in frames.numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> torch.Tensor:
    """Read an image as ``uint8 (1, H, W, 3)``; one larger than ``max_pixels`` (default
    `MAX_IMAGE_PIXELS`) is refused from its header, before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    _check_file(path)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        _check_image_size(path, header_size(path), limit)
        with Image.open(path) as image:
            _check_image_size(path, image.size, limit)  # formats `header_size` does not parse
            array = np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError as exc:  # past PIL's own limit, in another format
        raise VideoIOError(f"{path}: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise VideoIOError(f"cannot read image {path}: {exc}") from exc  # PIL raises all these
    return torch.from_numpy(array.copy())[None]


def _check_image_size(path, size: tuple[int, int] | None, limit: int) -> None:
    if size is not None and size[0] * size[1] > limit:
        raise VideoIOError(
            f"{path}: a {size[0]}×{size[1]} image ({size[0] * size[1]:,} pixels) is larger than "
            f"the limit of {limit:,} pixels"
        )


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) that a PNG or JPEG header declares, read without decoding; None for
    other content or a header that says nothing (the decoder then decides)."""
    with open(path, "rb") as f:
        head = f.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if head[:2] == b"\xff\xd8":
            f.seek(2)
            return _jpeg_size(f)
    return None


JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0-SOF15


def _jpeg_size(f) -> tuple[int, int] | None:
    """Walk a JPEG's marker segments to its frame header (SOFn): (width, height)."""
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        while marker[1] == 0xFF:  # fill bytes
            marker = marker[1:] + f.read(1)
            if len(marker) < 2:
                return None
        if marker[1] in (0xD8, 0x01) or 0xD0 <= marker[1] <= 0xD7:  # no length field
            continue
        length = int.from_bytes(f.read(2), "big")
        if marker[1] in JPEG_FRAME_MARKERS:
            data = f.read(5)  # precision, height, width
            if len(data) < 5:
                return None
            return int.from_bytes(data[3:5], "big"), int.from_bytes(data[1:3], "big")
        if marker[1] == 0xDA or length < 2:  # scan data before any frame header
            return None
        f.seek(length - 2, os.SEEK_CUR)


def read_video_head(
    path: str | os.PathLike, *, max_frames: int = MAX_FRAMES
) -> tuple[torch.Tensor, float]:
    """Decode the first ``max_frames`` frames (at most) as ``uint8 (T, H, W, 3)``, with the
    stream's fps; the rest of a longer video is not read, frames larger than `MAX_FRAME_PIXELS`
    are refused. (`mdiff.video.io.read_video` instead refuses a video past its limits.)"""
    frames = []
    for array in decode_frames(path, max_pixels=MAX_FRAME_PIXELS):
        frames.append(array)
        if len(frames) >= max_frames:
            break
    if not frames:
        raise VideoIOError(f"{Path(path).name} holds no decodable frame")
    return torch.from_numpy(np.stack(frames)), video_fps(path)


def video_fps(path: str | os.PathLike) -> float:
    """The frame rate a video's first stream declares (16 when it declares none)."""
    with _open_video(path) as (_, stream):
        return float(stream.average_rate or stream.guessed_rate or 0) or 16.0


def decode_frames(
    path: str | os.PathLike, *, max_pixels: int | None = None, partial: bool = False
) -> Iterator[np.ndarray]:
    """Yield the frames of a video's first stream as ``uint8 (H, W, 3)`` arrays, in order.

    ``max_pixels`` rejects frames larger than ``H * W`` before anything is decoded (a guard
    against decompression bombs). ``partial=True`` ends the iteration quietly where the data
    stops being decodable (a growing or cut fragmented MP4) instead of raising.
    """
    import av

    with _open_video(path) as (container, stream):
        size = (stream.codec_context.width or 0) * (stream.codec_context.height or 0)
        if max_pixels is not None and size > max_pixels:
            raise VideoIOError(
                f"{path}: {stream.codec_context.width}×{stream.codec_context.height} frames "
                f"exceed the limit of {max_pixels} pixels"
            )
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except (av.FFmpegError, ValueError) as exc:
            if not partial:
                raise VideoIOError(f"cannot decode video {Path(path).name}: {exc}") from exc


@contextlib.contextmanager
def _open_video(path: str | os.PathLike) -> Iterator[tuple]:
    """Open a video with PyAV as ``(container, first video stream)``; errors as VideoIOError."""
    import av

    _check_file(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise VideoIOError(f"cannot open video {Path(path).name}: {exc}") from exc
    with container:
        if not container.streams.video:
            raise VideoIOError(f"{Path(path).name} has no video stream")
        yield container, container.streams.video[0]


def _check_file(path: str | os.PathLike) -> None:
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{path} is a directory, not a file")
    if not path.is_file():
        raise InvalidInputError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise VideoIOError(f"{path} is empty")
