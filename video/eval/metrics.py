"""Weight-free video metrics: PSNR/SSIM per frame, flicker, chunk-seam jump and drift.

Every function takes videos in IO layout ``(T, H, W, C)``: ``uint8`` (range 255) or float
with an explicit ``data_range`` (2.0 for model pixels in [-1, 1]; convert ``(C, T, H, W)``
with ``x.permute(1, 2, 3, 0)``). Per-frame results are float64 tensors of shape ``(T,)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mdiff.errors import InvalidInputError

__all__ = ["SeamReport", "drift", "flicker", "frame_diffs", "psnr", "seam_jump", "ssim"]


def _prepare(video: torch.Tensor, data_range: float | None) -> tuple[torch.Tensor, float]:
    """float64 ``(T, H, W, C)`` and its data range."""
    if not torch.is_tensor(video) or video.dim() != 4:
        raise InvalidInputError(
            f"expected a (T, H, W, C) tensor, got {getattr(video, 'shape', video)}"
        )
    if video.dtype == torch.uint8:
        return video.double(), 255.0 if data_range is None else data_range
    if not video.is_floating_point():
        raise InvalidInputError(f"expected uint8 or float frames, got {video.dtype}")
    return video.double(), 2.0 if data_range is None else data_range


def _pair(a, b, data_range):
    if a.shape != b.shape:
        raise InvalidInputError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, rng = _prepare(a, data_range)
    return a, _prepare(b, data_range)[0], rng


def psnr(a: torch.Tensor, b: torch.Tensor, *, data_range: float | None = None) -> torch.Tensor:
    """PSNR per frame in dB, ``10 log10(R^2 / MSE)``; ``inf`` for identical frames."""
    a, b, rng = _pair(a, b, data_range)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(rng**2 / mse)  # mse == 0 -> inf


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    data_range: float | None = None,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """SSIM per frame (Wang et al. 2004): an 11x11 Gaussian window (sigma 1.5), statistics
    over valid windows only, ``C1 = (k1 R)^2``, ``C2 = (k2 R)^2``, averaged over the map and
    the channels."""
    a, b, rng = _pair(a, b, data_range)
    t, h, w, c = a.shape
    if min(h, w) < window:
        raise InvalidInputError(f"frames of {h}x{w} are smaller than the {window}px SSIM window")
    g = _gaussian(window, sigma)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def blur(x):  # (T, C, H, W) -> valid Gaussian mean per channel
        return F.conv2d(x, kernel, groups=c)

    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (k1 * rng) ** 2, (k2 * rng) ** 2
    smap = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return smap.flatten(1).mean(1)


def frame_diffs(video: torch.Tensor, *, data_range: float | None = None) -> torch.Tensor:
    """Mean ``|f[t+1] - f[t]|`` per transition, ``(T-1,)``, as a fraction of the data range."""
    v, rng = _prepare(video, data_range)
    if v.shape[0] < 2:
        raise InvalidInputError("need at least two frames")
    return (v[1:] - v[:-1]).abs().flatten(1).mean(1) / rng


def flicker(video: torch.Tensor, *, data_range: float | None = None) -> float:
    """Temporal flicker: the mean of :func:`frame_diffs` (0 for a static clip). VBench's
    "temporal flickering" score is ``1 - flicker`` on static scenes."""
    return float(frame_diffs(video, data_range=data_range).mean())


@dataclass(frozen=True)
class SeamReport:
    """Mean |Δframe| across chunk boundaries vs inside chunks; ``ratio`` near 1 is seamless."""

    boundary: float
    interior: float
    ratio: float
    boundaries: tuple[int, ...]


def seam_jump(
    video: torch.Tensor,
    chunks: Sequence[int],
    *,
    data_range: float | None = None,
    eps: float = 1e-8,
) -> SeamReport:
    """Compare frame differences at chunk seams with those inside chunks.

    ``chunks`` are the chunk lengths in frames (e.g. ``[1, 4, 4, 4]`` for a causal VAE
    decode, or ``[8, 8, 8]``); they must sum to T. The transition into the first frame of
    each chunk after the first is a boundary; all other transitions are interior.
    """
    d = frame_diffs(video, data_range=data_range)
    if sum(chunks) != len(d) + 1 or min(chunks) < 1 or len(chunks) < 2:
        raise InvalidInputError(f"chunk lengths {list(chunks)} must be >= 2 positive, sum to T")
    starts = torch.tensor(chunks[:-1]).cumsum(0)  # first frame of chunks 1..n-1
    is_seam = torch.zeros(len(d), dtype=torch.bool)
    is_seam[starts - 1] = True  # transition (s-1 -> s)
    boundary = float(d[is_seam].mean())
    interior = float(d[~is_seam].mean()) if (~is_seam).any() else float("nan")
    return SeamReport(boundary, interior, boundary / (interior + eps), tuple(starts.tolist()))


def drift(
    video: torch.Tensor, *, ref_frames: int = 1, bins: int = 16, data_range: float | None = None
) -> torch.Tensor:
    """Per-frame drift ``(T,)``: L1 distance between each frame's per-channel colour histogram
    and that of the first ``ref_frames`` frames (0 = same colours; at most 2 per channel,
    averaged over channels). Motion barely moves it; fading, colour shift and collapse do."""
    v, rng = _prepare(video, data_range)
    if not 1 <= ref_frames <= v.shape[0]:
        raise InvalidInputError(f"ref_frames must be in [1, {v.shape[0]}], got {ref_frames}")
    lo = 0.0 if video.dtype == torch.uint8 else -rng / 2  # float: centred, like [-1, 1]
    idx = ((v - lo) / rng * bins).long().clamp(0, bins - 1)  # (T, H, W, C)
    t, c = v.shape[0], v.shape[-1]
    flat = idx.reshape(t, -1, c).permute(0, 2, 1)  # (T, C, HW)
    hist = torch.zeros(t, c, bins, dtype=torch.float64).scatter_add_(
        2, flat, torch.ones_like(flat, dtype=torch.float64)
    )
    hist = hist / flat.shape[-1]
    ref = hist[:ref_frames].mean(0, keepdim=True)
    return (hist - ref).abs().sum(-1).mean(-1)
