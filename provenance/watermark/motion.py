"""Global motion for ``mdiff-pixel-v1``: the mark follows the camera, the detector follows the mark.

With a panning camera an encoder predicts each frame from the previous one shifted with the
content; a mark fixed in frame coordinates is then a residual that coarse quantisation removes
(measured: after crop + resize ×½ + CRF 28 of a 384² clip panning 1 px/frame, the mark is gone
after about 4 frames). A mark that moves with the content is carried by motion compensation
instead. The embedder therefore estimates one global translation per chunk of frames (the
velocity ``v``, px/frame, by phase correlation of consecutive frames) and draws frame ``t``'s
tile shifted by the accumulated displacement ``d_t``; the detector searches ``v`` on a grid.

Convention: content moving by ``v`` means ``frame_{t+1}(u) = frame_t(u − v)``; the mark of frame
``t`` is ``tile(u − d_t)``, i.e. the tile spectrum times ``exp(−2πi f·d_t)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

VELOCITY_STEP = 0.25  # the mark's velocity is a multiple of this (px/frame) ...
VELOCITY_MAX = 2.0  # ... at most this on each axis (the detector's range); faster content: 0
DEAD_ZONE = 0.2  # estimates below this on an axis are 0 (a static camera is marked as before)
STATIC_SHARE = 0.5  # the zero shift wins when it has this share of the correlation peak
MAX_SIDE = 256  # frames are box-averaged by an integer factor to about this short side ...
BLOCK = 64  # ... and cut into blocks of this size that vote on the motion
UPSAMPLE = 8  # sub-pixel refinement: the correlation at 1/8 px within ±1 px of the peak


@dataclass
class MotionTrack:
    """Carries the mark's motion from one :meth:`PixelWatermark.embed` call to the next.

    Pass the same track to the calls that mark consecutive pieces of one video (a stream's
    chunks); without it every call starts with the mark at displacement 0.
    """

    displacement: tuple[float, float] = (0.0, 0.0)  # of the last frame marked
    last: Tensor | None = None  # spectrum of that frame (see :func:`spectra`)


def spectra(y: Tensor) -> Tensor:
    """Block spectra of ``(N, H, W)`` luma for :func:`velocity`: ``(N, B, b, b)`` complex64.

    The frame is box-averaged by ``max(1, min(H, W) // MAX_SIDE)`` and cut into ``b×b``
    blocks (``BLOCK``, 32 px below 128 px), each with its mean removed and a Hann window. Each
    block then votes with the same weight, so the motion of most of the area wins over a few
    high-contrast moving objects.
    """
    k = _factor(y.shape[-2:])
    x = F.avg_pool2d(y[:, None].float(), k)[:, 0] if k > 1 else y.float()
    n, h, w = x.shape
    b = BLOCK if min(h, w) >= 2 * BLOCK else BLOCK // 2
    oy, ox = (h % b) // 2, (w % b) // 2
    x = x[:, oy : oy + h // b * b, ox : ox + w // b * b]
    x = x.reshape(n, h // b, b, w // b, b).transpose(2, 3).reshape(n, -1, b, b)
    x = x - x.mean((-2, -1), keepdim=True)
    hann = torch.hann_window(b, periodic=False, device=y.device)
    return torch.fft.fft2(x * hann[:, None] * hann[None, :])


def _factor(shape) -> int:
    return max(1, min(shape) // MAX_SIDE)


def velocity(spec: Tensor, frame_shape) -> tuple[float, float]:
    """The mark's velocity ``(vy, vx)`` px/frame for consecutive frames' :func:`spectra`.

    The phase correlations of all consecutive pairs and blocks are averaged (one translation
    for the chunk); its peak, refined to sub-pixel, is the content's motion unless the zero shift
    holds ``STATIC_SHARE`` of the peak (a static background with moving objects). The result
    is rounded to ``VELOCITY_STEP``, 0 within ``DEAD_ZONE``, and 0 beyond ``VELOCITY_MAX``.
    """
    if spec.shape[0] < 2:
        return 0.0, 0.0
    r_hat = torch.sgn(spec[1:] * spec[:-1].conj()).mean((0, 1)).to(torch.complex128)  # (b, b)
    r = torch.fft.ifft2(r_hat).real
    h, w = r.shape
    i = int(r.flatten().argmax())
    py, px = i // w, i % w
    py, px = (py - h if py > h // 2 else py), (px - w if px > w // 2 else px)
    if r[0, 0] >= STATIC_SHARE * r[py, px]:
        py = px = 0
    dy, dx = _refine(r_hat, py, px)
    k = _factor(frame_shape)
    v = []
    for d in (dy * k, dx * k):
        d = 0.0 if abs(d) < DEAD_ZONE else round(d / VELOCITY_STEP) * VELOCITY_STEP
        v.append(d)
    if max(abs(v[0]), abs(v[1])) > VELOCITY_MAX:
        return 0.0, 0.0
    return float(v[0]), float(v[1])


def _refine(r_hat: Tensor, py: int, px: int) -> tuple[float, float]:
    """Sub-pixel peak of ``IFFT(r_hat)`` near ``(py, px)``: a matrix DFT on a 1/8-px grid
    within ±1 px, then a parabola through the best point and its neighbours."""
    h, w = r_hat.shape
    off = torch.arange(-UPSAMPLE, UPSAMPLE + 1, dtype=torch.float64, device=r_hat.device)
    off = off / UPSAMPLE
    fy = torch.fft.fftfreq(h, dtype=torch.float64, device=r_hat.device)
    fx = torch.fft.fftfreq(w, dtype=torch.float64, device=r_hat.device)
    ey = torch.exp(2j * math.pi * (py + off)[:, None] * fy[None, :])
    ex = torch.exp(2j * math.pi * (px + off)[:, None] * fx[None, :])
    s = (ey @ r_hat @ ex.T).real  # (m, m)
    m = s.shape[0]
    j = int(s.flatten().argmax())
    jy, jx = j // m, j % m
    out = []
    for c, line in ((jy, s[:, jx]), (jx, s[jy, :])):
        frac = 0.0
        if 0 < c < m - 1:
            a, b, e = float(line[c - 1]), float(line[c]), float(line[c + 1])
            den = a - 2 * b + e
            frac = 0.5 * (a - e) / den if den < 0 else 0.0
        out.append(float(off[c]) + frac / UPSAMPLE)
    return py + out[0], px + out[1]


def follow(spec: Tensor, frame_shape, track: MotionTrack) -> Tensor:
    """``(N, 2)`` float64 displacements of one chunk's marks (one velocity for the chunk).

    The chunk continues ``track`` (its last frame joins the velocity estimate and the first
    frame moves one step on from its displacement); a new track starts at 0. Updates ``track``.
    """
    prev = track.last
    if prev is not None and prev.shape != spec.shape[1:]:
        prev = None  # the frame size changed: start over
    v = velocity(spec if prev is None else torch.cat([prev[None], spec]), frame_shape)
    start = torch.tensor(track.displacement if prev is not None else (0.0, 0.0))
    steps = torch.arange(spec.shape[0], dtype=torch.float64) + (prev is not None)
    out = start.double() + steps[:, None] * torch.tensor(v, dtype=torch.float64)
    track.displacement, track.last = (float(out[-1, 0]), float(out[-1, 1])), spec[-1]
    return out


def shift_phase(tile: int, d: Tensor) -> Tensor:
    """``(N, T, T)`` complex128 ``exp(−2πi f·d)``: multiplying a tile's spectrum by it moves
    the (periodic, band-limited) tile by ``d`` ``(N, 2)`` pixels, sub-pixel exactly."""
    f = torch.fft.fftfreq(tile, dtype=torch.float64, device=d.device)
    d = d.to(torch.float64)
    phase = f[None, :, None] * d[:, 0, None, None] + f[None, None, :] * d[:, 1, None, None]
    return torch.polar(torch.ones_like(phase), -2 * math.pi * phase)


def velocity_grid(step: float = VELOCITY_STEP, vmax: float = VELOCITY_MAX) -> list[float]:
    """The values ``−vmax … vmax`` in ``step`` (one axis of the detector's velocity grid)."""
    n = int(round(vmax / step))
    return [k * step for k in range(-n, n + 1)]


def drift_sum(values: Tensor, freqs: Tensor, velocities: Tensor) -> Tensor:
    """``G_v(f) = Σ_t F_t(f) · exp(+2πi f·v t)`` for each velocity ``v``: ``(N, B)`` spectra of
    the frames' folds on ``B`` bins of frequency ``(B, 2)`` cycles/px and ``(V, 2)`` px/frame →
    ``(V, B)``. A mark at ``d_0 + v t`` adds up coherently at ``d_0`` (its offset in frame 0)."""
    v = velocities.to(device=values.device, dtype=torch.float64)
    step = 2 * math.pi * (v @ freqs.to(values.device, torch.float64).T)  # (V, B) radians/frame
    out = values[0].expand_as(step).clone()
    for t in range(1, values.shape[0]):
        out += values[t] * torch.polar(torch.ones_like(step), t * step)
    return out
