"""Weight-free detectors for shapes clips: background, objects, colour, shape and motion.

    tracks, background = detect(frames)     # frames uint8 (T, H, W, 3)
    tracks[0].colour, tracks[0].shape, tracks[0].motion

The steps, all on pixels and all classical (no learned weights):

1. **Background** per frame: the most common (quantised) colour of the border pixels; its
   name is the nearest entry of `BACKGROUNDS`.
2. **Pixels to colours.** Every pixel is explained as a blend ``bg + a (c - bg)`` of the
   background and a palette colour ``c`` (`COLORS`): the colour whose segment passes closest
   wins, and ``a`` (clipped to [0, 1]) is its coverage. Anti-aliased edges therefore keep
   their object's colour instead of looking like a darker neighbour in the palette (an orange
   edge on black is closer to red than to orange). A pixel is foreground when ``a >= 0.5`` and
   it is clearly off the background.
3. **Objects**: 4-connected components of foreground pixels of one colour, of at least
   `MIN_AREA` of the frame (half the smallest object the dataset draws).
4. **Shape** of a component from its soft coverage ``a`` (the edge pixels included): fill
   of the bounding box (circle pi/4, square 1, triangle 1/2) and the share of coverage above
   the box's middle (1/2 for circle and square, 1/4 for the upward triangle).
5. **Tracks**: components linked frame to frame by colour and nearest predicted centroid
   (a blob of two touching objects of one colour is shared by both); a track must last half
   the clip (noise specks do not). Its shape is the vote of its frames whose area is typical
   (not occluded, not merged).
6. **Motion** from the smoothed centroid trajectory: "bouncing" when an axis reverses by a
   clear amount, "still" when the net displacement is small, else the direction of the net
   displacement (within 22.5 degrees of an axis: left/right/up/down, else diagonal).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import torch

from mdiff.errors import InvalidInputError
from mdiff.video.data import BACKGROUNDS, COLORS

__all__ = [
    "Detection",
    "Track",
    "classify_motion",
    "classify_shape",
    "detect",
    "detect_background",
    "detect_objects",
    "nearest_name",
    "track_objects",
]

MIN_AREA = 0.008  # of the frame: half the smallest dataset object (a small triangle)
_PALETTE_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[n] for n in _PALETTE_NAMES], dtype=np.float32)  # (K, 3)


@dataclass(frozen=True)
class Detection:
    """One object in one frame; positions in pixels (x = column, y = row)."""

    frame: int
    colour: str
    area: float  # soft coverage, in pixels
    centroid: tuple[float, float]
    fill: float  # coverage / soft bounding-box area
    top: float  # share of the coverage above the box's middle
    shape: str
    merged: bool = False  # also claimed by another track (touching objects of one colour)


@dataclass(frozen=True)
class Track:
    """One object followed through the clip; ``centroids`` is (T, 2), NaN where unseen."""

    colour: str
    shape: str
    motion: str
    centroids: np.ndarray
    frames_seen: int
    area: float  # median area over the frames seen

    def summary(self) -> dict:
        return {"colour": self.colour, "shape": self.shape, "motion": self.motion,
                "frames_seen": self.frames_seen, "area": round(self.area, 1)}  # fmt: skip


def nearest_name(rgb, table: dict[str, tuple[int, int, int]]) -> str:
    """The name in ``table`` whose RGB is nearest (Euclidean) to ``rgb``."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return min(table, key=lambda n: float(((np.asarray(table[n]) - rgb) ** 2).sum()))


def _as_frames(frames) -> np.ndarray:
    if torch.is_tensor(frames):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InvalidInputError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} "
                                f"{frames.shape}")  # fmt: skip
    if min(frames.shape[1:3]) < 8:
        raise InvalidInputError(f"frames of {frames.shape[1]}x{frames.shape[2]} are too small")
    return frames


def detect_background(frames) -> tuple[str, np.ndarray]:
    """The clip's background name and the per-frame background RGB ``(T, 3)``: the mode of the
    border pixels, quantised to 16 levels per channel, averaged within that bin."""
    f = _as_frames(frames)
    border = np.concatenate([f[:, 0], f[:, -1], f[:, 1:-1, 0], f[:, 1:-1, -1]], axis=1)
    q = border.astype(np.int64) >> 4
    keys = (q[..., 0] << 8) | (q[..., 1] << 4) | q[..., 2]  # (T, N) in [0, 4096)
    t_len = f.shape[0]
    counts = np.bincount((keys + 4096 * np.arange(t_len)[:, None]).ravel(), minlength=4096 * t_len)
    mode = counts.reshape(t_len, 4096).argmax(1)
    hit = (keys == mode[:, None])[..., None]
    rgb = ((border * hit).sum(1) / hit.sum(1)).astype(np.float32)
    return nearest_name(np.median(rgb, 0), BACKGROUNDS), rgb


def _coverage(f: np.ndarray, bg: np.ndarray, palette: np.ndarray, floor: float = 24.0):
    """Per pixel: the best palette index (-1 within ``floor`` of the background) and its
    coverage ``a`` in [0, 1] (see module doc); only off-background pixels are fitted."""
    d = f.astype(np.float32) - bg[:, None, None, :]  # (T, H, W, 3)
    dist2 = (d**2).sum(-1)
    t, y, x = np.nonzero(dist2 > floor**2)
    best = np.full(dist2.shape, -1, dtype=np.int64)
    cover = np.zeros(dist2.shape, dtype=np.float32)
    if len(t) == 0:
        return best, cover
    dirs = palette[None] - bg[:, None, :]  # (T, K, 3)
    norm2 = np.maximum((dirs**2).sum(-1), 1e-6)[t]  # (N, K)
    dot = np.einsum("nc,nkc->nk", d[t, y, x], dirs[t])
    a = np.clip(dot / norm2, 0.0, 1.0)
    resid = dist2[t, y, x][:, None] - 2 * a * dot + a * a * norm2  # |d - a (c - bg)|^2
    resid = np.where(norm2 < 40.0**2, np.inf, resid)  # a colour too close to the background
    k = resid.argmin(-1)
    best[t, y, x], cover[t, y, x] = k, a[np.arange(len(k)), k]
    return best, cover


def _components(cls: np.ndarray) -> np.ndarray:
    """4-connected components of equal class (``-1`` = none), labelled per pixel (0 = none):
    max-label propagation along the edges between same-class pixels, with pointer jumping."""
    flat = cls.reshape(-1)
    idx = np.flatnonzero(flat >= 0)
    out = np.zeros(flat.shape, dtype=np.int64)
    if len(idx) == 0:
        return out.reshape(cls.shape)
    pos = np.full(flat.shape, -1, dtype=np.int64)
    pos[idx] = np.arange(len(idx))
    width = cls.shape[-1]
    ea, eb = [], []
    for step, ok in (
        (1, idx % width != width - 1),
        (width, (idx // width) % cls.shape[-2] != cls.shape[-2] - 1),
    ):  # right, down
        a = idx[ok]
        b = a + step
        keep = flat[b] == flat[a]
        ea.append(pos[a[keep]])
        eb.append(pos[b[keep]])
    ea, eb = np.concatenate(ea), np.concatenate(eb)
    lab = np.arange(len(idx))
    while True:
        new = lab.copy()
        np.maximum.at(new, ea, lab[eb])
        np.maximum.at(new, eb, lab[ea])
        new = new[new]  # pointer jumping: labels name members of the same component
        new = new[new]
        if np.array_equal(new, lab):
            break
        lab = new
    out[idx] = idx[lab] + 1  # the label: 1 + the flat index of a member pixel
    return out.reshape(cls.shape)


def classify_shape(fill: float, top: float) -> str:
    """Circle, square or triangle from the box fill and the share of coverage in the upper half."""
    if top < 0.38 or fill < 0.62:
        return "triangle"
    return "square" if fill > 0.89 else "circle"


def detect_objects(frames, *, min_area: float | None = None) -> tuple[list[Detection], str]:
    """Every object in every frame (see module doc) and the background's name."""
    f = _as_frames(frames)
    t_len, h, w, _ = f.shape
    bg_name, bg = detect_background(f)
    best, cover = _coverage(f, bg, _PALETTE)
    fg = cover >= 0.5
    lab = _components(np.where(fg, best, -1))
    min_area = max(4.0, MIN_AREA * h * w) if min_area is None else min_area
    labels, counts = np.unique(lab[lab > 0], return_counts=True)
    out = []
    for label in labels[counts >= min_area / 2]:  # soft area >= min_area needs this many
        t = int(label - 1) // (h * w)  # a label is a pixel index of its own frame
        det = _measure(t, lab[t] == label, lab[t], best[t], cover[t], min_area)
        if det is not None:
            out.append(det)
    return sorted(out, key=lambda d: d.frame), bg_name


def _measure(t, mask, lab, best, cover, min_area) -> Detection | None:
    """Soft area, centroid, box fill and upper share of one component (1-pixel margin)."""
    k = int(best[mask][0])
    ys, xs = np.nonzero(mask)
    y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, mask.shape[0])
    x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, mask.shape[1])
    crop = (slice(y0, y1), slice(x0, x1))
    mine = mask[crop] | ((lab[crop] == 0) & (best[crop] == k))  # edges of this colour too
    wgt = np.where(mine, cover[crop], 0.0)
    area = float(wgt.sum())
    if area < min_area:
        return None
    rows, cols = wgt.max(1), wgt.max(0)
    height, width = float(rows.sum()), float(cols.sum())
    yy = np.arange(y0, y1, dtype=np.float64)[:, None]
    xx = np.arange(x0, x1, dtype=np.float64)[None, :]
    mid = float((rows * yy[:, 0]).sum() / rows.sum())  # the box's middle row
    top = float((wgt * np.clip(mid - yy + 0.5, 0.0, 1.0)).sum() / area)
    fill = area / max(height * width, 1e-6)
    centroid = (float((wgt * xx).sum() / area), float((wgt * yy).sum() / area))
    shape = classify_shape(fill, top)
    return Detection(t, _PALETTE_NAMES[k], area, centroid, fill, top, shape)


def classify_motion(centroids: np.ndarray, size: float) -> str:
    """A motion word from a (T, 2) centroid trajectory (NaN rows = unseen), ``size`` the
    frame's smaller side: bouncing / still / left / right / up / down / diagonal."""
    seen = centroids[~np.isnan(centroids).any(1)]
    if len(seen) < 2:
        return "still"
    if len(seen) >= 3:  # a 3-tap median: one bad frame (occlusion) does not bend the path
        pad = np.concatenate([seen[:1], seen, seen[-1:]])
        seen = np.median(np.stack([pad[:-2], pad[1:-1], pad[2:]]), 0)
    net = seen[-1] - seen[0]
    reversal = seen.max(0) - seen.min(0) - np.abs(net)  # how far an axis came back
    if reversal.max() > 0.08 * size:
        return "bouncing"
    if math.hypot(*net) < 0.1 * size:
        return "still"
    angle = math.degrees(math.atan2(abs(net[1]), abs(net[0])))  # 0 horizontal, 90 vertical
    if 22.5 <= angle <= 67.5:
        return "diagonal"
    if angle < 22.5:
        return "right" if net[0] > 0 else "left"
    return "down" if net[1] > 0 else "up"  # rows grow downwards


def track_objects(detections: list[Detection], num_frames: int, size: float,
                  *, min_frames: float = 0.5) -> list[Track]:  # fmt: skip
    """Link detections into tracks: same colour, nearest to the track's constant-velocity
    prediction (within 0.35 of the frame size), closest pairs first. Tracks seen in fewer
    than ``min_frames`` of the frames are dropped; the rest come largest first."""
    tracks: list[list[Detection]] = []
    for t in range(num_frames):
        now = [d for d in detections if d.frame == t]
        predicted = [_predict(tr, t) for tr in tracks]
        pairs = sorted(
            (math.dist(predicted[i], d.centroid), i, j)
            for i, tr in enumerate(tracks)
            for j, d in enumerate(now)
            if tr[-1].colour == d.colour
        )
        owner: dict[int, int] = {}  # detection -> track
        for dist, i, j in pairs:
            if dist < 0.35 * size and i not in owner.values() and j not in owner:
                tracks[i].append(now[j])
                owner[j] = i
        for dist, i, j in pairs:  # touching objects of one colour make one blob: share it
            if (dist < 0.35 * size and i not in owner.values() and j in owner
                    and now[j].area > 1.3 * _area(tracks[i])):  # fmt: skip
                tracks[i].append(replace(now[j], merged=True))
                tracks[owner[j]][-1] = replace(now[j], merged=True)
        tracks += [[d] for j, d in enumerate(now) if j not in owner]
    out = [_summarise(tr, num_frames, size) for tr in tracks if len(tr) >= min_frames * num_frames]
    return sorted(out, key=lambda tr: -tr.area * tr.frames_seen)


def _plain(track: list[Detection]) -> list[Detection]:
    """The detections that are this object alone (not a blob shared with another)."""
    return [d for d in track if not d.merged] or track


def _area(track: list[Detection]) -> float:
    return float(np.median([d.area for d in _plain(track)]))


def _predict(track: list[Detection], t: int) -> tuple[float, float]:
    """Where a track should be at frame t, from its last two detections of typical area."""
    area = _area(track)
    good = [d for d in _plain(track) if 0.75 * area <= d.area <= 1.33 * area][-2:] or track[-1:]
    if len(good) == 1:
        return good[0].centroid
    a, b = good
    v = (np.subtract(b.centroid, a.centroid)) / (b.frame - a.frame)
    return tuple(np.add(b.centroid, v * (t - b.frame)))


def _summarise(dets: list[Detection], num_frames: int, size: float) -> Track:
    """A track's colour, shape vote and motion. Frames whose area is atypical (occluded, or
    merged with a touching object of the same colour) vote on neither shape nor position."""
    plain = _plain(dets)
    area = _area(dets)
    typical = [d for d in plain if 0.75 * area <= d.area <= 1.33 * area]
    if len(typical) < max(2, len(plain) / 3):
        typical = plain
    centroids = np.full((num_frames, 2), np.nan)
    for d in typical:
        centroids[d.frame] = d.centroid
    shape = Counter(d.shape for d in typical).most_common(1)[0][0]
    motion = classify_motion(centroids, size)
    return Track(dets[0].colour, shape, motion, centroids, len(dets), area)


def detect(frames, *, min_area: float | None = None) -> tuple[list[Track], str]:
    """Tracks of the objects in a clip (largest first) and the background's name."""
    f = _as_frames(frames)
    detections, bg = detect_objects(f, min_area=min_area)
    return track_objects(detections, f.shape[0], float(min(f.shape[1:3]))), bg
