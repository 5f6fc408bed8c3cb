"""Video datasets: procedural "shapes" clips with known ground truth, and a folder of videos.

:class:`ShapesDataset` item ``i`` is a pure function of ``(seed, i)``: one or two shapes
(circle, square, triangle) of a named colour and size move left/right/up/down/diagonally,
bounce off the walls or stand still on a plain background. Frames are rendered with soft
(anti-aliased) edges from signed distances, vectorised over time in torch. The
:class:`ClipTruth` behind each clip (per-frame centres, motion word, ...) is exposed for
evaluation. Items are ``{"pixels": float (C, T, H, W) in [-1, 1], "caption": str}``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mdiff.errors import InvalidInputError, VideoIOError

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "MOTIONS",
    "SHAPES",
    "ClipTruth",
    "ShapeObject",
    "ShapesDataset",
    "VideoFolderDataset",
    "render_clip",
]

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "orange": (245, 140, 30),
    "purple": (150, 60, 200),
}
BACKGROUNDS = {
    "black": (12, 12, 12),
    "gray": (110, 110, 110),
    "navy": (20, 25, 70),
    "dark green": (20, 60, 30),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.09, "medium": 0.13, "large": 0.18}  # radius as a fraction of min(H, W)
MOTIONS = ("left", "right", "up", "down", "diagonal", "bouncing", "still")
PHRASES = {
    "left": ("moving left", "drifting left", "sliding to the left"),
    "right": ("moving right", "drifting right", "sliding to the right"),
    "up": ("moving up", "floating up", "drifting up"),
    "down": ("moving down", "sinking down", "falling down"),
    "diagonal": ("moving diagonally", "gliding diagonally", "crossing on a diagonal"),
    "bouncing": ("bouncing around", "bouncing off the walls", "bouncing back and forth"),
    "still": ("standing still", "staying still", "sitting still"),
}
TEMPLATES = (
    "{objects} on a {bg} background",
    "{objects}, {bg} background",
    "a video of {objects} over a {bg} background",
    "{bg} background with {objects}",
    "a clip showing {objects} against a {bg} backdrop",
)


@dataclass(frozen=True)
class ShapeObject:
    """One rendered object. ``trajectory[t] = (x, y)`` is its centre at frame t in pixel
    index coordinates (x = column, y = row); ``radius`` is in pixels."""

    shape: str
    color: str
    rgb: tuple[int, int, int]
    size: str
    radius: float
    motion: str
    trajectory: torch.Tensor  # (T, 2) float

    def phrase(self, rng: np.random.Generator) -> str:
        words = (
            [self.color, self.shape] if rng.random() < 0.5 else [self.size, self.color, self.shape]
        )
        article = "an" if words[0][0] in "aeiou" else "a"
        return f"{article} {' '.join(words)} {rng.choice(PHRASES[self.motion])}"


@dataclass(frozen=True)
class ClipTruth:
    """Everything a shapes clip was rendered from (objects are drawn in order)."""

    objects: tuple[ShapeObject, ...]
    background: str
    caption: str
    height: int
    width: int
    num_frames: int
    fps: float


def _fold(pos: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Reflect free motion into [lo, hi] (elastic bounces off both walls)."""
    span = hi - lo
    u = torch.remainder(pos - lo, 2 * span)
    return lo + torch.where(u <= span, u, 2 * span - u)


def _extent(shape: str, radius: float) -> float:
    """Half-size of the box that keeps the object inside the frame."""
    return radius * 1.25 if shape == "triangle" else radius


def _axis(rng, sign: int, n: int, lo: float, hi: float, travel: float):
    """Start and velocity on one axis: cover ``travel`` of [lo, hi] in n frames, no bounce."""
    v = sign * travel * (hi - lo) / max(n - 1, 1)
    start = rng.uniform(lo + max(0.0, -v * (n - 1)), hi - max(0.0, v * (n - 1)))
    return start, v


def _make_object(rng, t: torch.Tensor, height: int, width: int, bg: str) -> ShapeObject:
    n = len(t)
    shape = str(rng.choice(SHAPES))
    color = str(rng.choice([c for c in COLORS if c != bg]))
    size = str(rng.choice(list(SIZES)))
    radius = SIZES[size] * min(height, width)
    motion = str(rng.choice(MOTIONS)) if n > 1 else "still"
    ext = _extent(shape, radius)
    (xlo, xhi), (ylo, yhi) = (ext, width - 1 - ext), (ext, height - 1 - ext)
    travel = rng.uniform(0.35, 0.8)  # the part of the free span crossed in the clip
    sx, sy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}.get(motion, (0, 0))
    if motion == "diagonal":
        sx, sy = rng.choice([-1, 1]), rng.choice([-1, 1])
    x0, vx = _axis(rng, sx, n, xlo, xhi, travel)
    y0, vy = _axis(rng, sy, n, ylo, yhi, travel)
    if motion == "bouncing":  # fast enough to hit at least one wall within the clip
        x0, y0 = rng.uniform(xlo, xhi), rng.uniform(ylo, yhi)
        vx = rng.choice([-1, 1]) * rng.uniform(1.2, 2.0) * (xhi - xlo) / max(n - 1, 1)
        vy = rng.choice([-1, 1]) * rng.uniform(0.3, 1.0) * (yhi - ylo) / max(n - 1, 1)
    xs, ys = _fold(x0 + vx * t, xlo, xhi), _fold(y0 + vy * t, ylo, yhi)
    rgb = COLORS[color]
    return ShapeObject(shape, color, rgb, size, radius, motion, torch.stack([xs, ys], -1))


def sample_truth(
    seed: int,
    index: int,
    *,
    num_frames: int,
    height: int,
    width: int,
    fps: float,
    max_objects: int = 2,
) -> ClipTruth:
    """The ground truth of clip ``index`` (a pure function of its arguments)."""
    rng = np.random.default_rng([seed, index])
    bg = str(rng.choice(list(BACKGROUNDS)))
    t = torch.arange(num_frames, dtype=torch.float64)
    count = int(rng.integers(1, max_objects + 1))
    objects = tuple(_make_object(rng, t, height, width, bg) for _ in range(count))
    phrases = " and ".join(o.phrase(rng) for o in objects)
    caption = str(rng.choice(TEMPLATES)).format(objects=phrases, bg=bg)
    return ClipTruth(objects, bg, caption, height, width, num_frames, fps)


def _distance(shape: str, dx: torch.Tensor, dy: torch.Tensor, radius: float) -> torch.Tensor:
    """Signed distance (pixels, negative inside) of an axis-aligned shape centred at 0."""
    if shape == "circle":
        return torch.sqrt(dx * dx + dy * dy) - radius
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) - radius
    big = radius * 1.25  # upward triangle with circumradius `big`, centroid at 0
    c = math.sqrt(3) / 2
    dx, dy = torch.broadcast_tensors(dx, dy)
    edges = torch.stack([dy, -c * dx - 0.5 * dy, c * dx - 0.5 * dy])
    return edges.max(0).values - big / 2


def render_clip(truth: ClipTruth) -> torch.Tensor:
    """Render a clip as float ``(3, T, H, W)`` in [-1, 1] with 1-pixel soft edges."""
    ys = torch.arange(truth.height, dtype=torch.float64)[None, :, None]
    xs = torch.arange(truth.width, dtype=torch.float64)[None, None, :]
    bg = torch.tensor(BACKGROUNDS[truth.background], dtype=torch.float64) / 127.5 - 1
    out = bg[:, None, None, None].expand(3, truth.num_frames, truth.height, truth.width).clone()
    for obj in truth.objects:
        dx = xs - obj.trajectory[:, 0, None, None]
        dy = ys - obj.trajectory[:, 1, None, None]
        alpha = (0.5 - _distance(obj.shape, dx, dy, obj.radius)).clamp(0, 1)  # (T, H, W)
        color = torch.tensor(obj.rgb, dtype=torch.float64)[:, None, None, None] / 127.5 - 1
        out = out + alpha[None] * (color - out)
    return out.float()


class ShapesDataset(Dataset):
    """Map-style procedural dataset; item ``i`` is deterministic from ``(seed, i)``.

    ``num_frames`` must be 1 + 4k (the causal VAE's schedule). ``return_truth=True`` adds the
    :class:`ClipTruth` under "truth" (it does not collate; use :meth:`truth` in loaders).
    """

    def __init__(
        self,
        length: int = 100_000,
        *,
        num_frames: int = 17,
        height: int = 64,
        width: int = 64,
        fps: float = 8.0,
        seed: int = 0,
        max_objects: int = 2,
        return_truth: bool = False,
    ) -> None:
        if num_frames < 1 or (num_frames - 1) % 4:
            raise InvalidInputError(f"num_frames must be 1 + 4k, got {num_frames}")
        if min(height, width) < 16 or length < 1 or max_objects not in (1, 2):
            raise InvalidInputError("need height, width >= 16, length >= 1, max_objects 1 or 2")
        self.length, self.num_frames, self.height, self.width = length, num_frames, height, width
        self.fps, self.seed, self.max_objects = fps, seed, max_objects
        self.return_truth = return_truth

    def __len__(self) -> int:
        return self.length

    def truth(self, index: int) -> ClipTruth:
        """The ground truth of item ``index``."""
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        return sample_truth(
            self.seed,
            index % self.length,
            num_frames=self.num_frames,
            height=self.height,
            width=self.width,
            fps=self.fps,
            max_objects=self.max_objects,
        )

    def __getitem__(self, index: int) -> dict:
        truth = self.truth(int(index))
        item = {"pixels": render_clip(truth), "caption": truth.caption}
        if self.return_truth:
            item["truth"] = truth
        return item


class VideoFolderDataset(Dataset):
    """Clips of ``num_frames`` frames from the videos in a folder (recursively).

    Item ``i`` is video ``i % len(videos)`` with a clip start drawn from ``(seed, i)``;
    frames are read with decord (PyAV where decord is missing or fails), resized to ``size``
    (H, W) if given, and returned as float ``(3, T, H, W)`` in [-1, 1]. The caption is the
    text of a sibling ``<name>.txt`` file, else "".
    """

    EXTENSIONS = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi")

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        num_frames: int = 17,
        stride: int = 1,
        size: tuple[int, int] | None = None,
        seed: int = 0,
        backend: str = "auto",
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InvalidInputError(f"no such folder: {self.root}")
        self.videos = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in self.EXTENSIONS)
        if not self.videos:
            raise InvalidInputError(f"no videos ({', '.join(self.EXTENSIONS)}) in {self.root}")
        if num_frames < 1 or stride < 1:
            raise InvalidInputError("num_frames and stride must be >= 1")
        self.num_frames, self.stride, self.size = num_frames, stride, size
        self.seed, self.backend = seed, backend
        self._lengths: dict[Path, int] = {}

    def __len__(self) -> int:
        return len(self.videos)

    def _length(self, path: Path) -> int:
        if path not in self._lengths:
            from mdiff.video import io

            self._lengths[path] = _decord_length(path) or io.count_frames(path)
        return self._lengths[path]

    def __getitem__(self, index: int) -> dict:
        from mdiff.video import io

        path = self.videos[index % len(self.videos)]
        span = (self.num_frames - 1) * self.stride + 1
        total = self._length(path)
        if total < span:
            raise VideoIOError(f"{path.name} has {total} frames; a clip needs {span}")
        rng = np.random.default_rng([self.seed, 0, index])  # the 0 keeps earlier clip starts
        start = int(rng.integers(0, total - span + 1))
        frames = io.read_frames(path, range(start, start + span, self.stride), backend=self.backend)
        pixels = io.frames_to_pixels(frames)
        if self.size is not None and tuple(pixels.shape[-2:]) != tuple(self.size):
            pixels = F.interpolate(pixels, size=self.size, mode="bilinear", antialias=True)
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        return {"pixels": pixels.clamp(-1, 1), "caption": caption, "start": start}


def _decord_length(path: Path) -> int | None:
    """Frame count from decord's index (cheap), or None where decord is missing or fails."""
    try:
        import decord

        return len(decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)) or None
    except Exception:
        return None
