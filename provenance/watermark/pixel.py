"""``mdiff-pixel-v1``: a keyed, tiled, band-limited spread-spectrum watermark on luma.

Embedding. A keyed ``T×T`` tile (see :mod:`.spectral`) carries a pilot and 92 coded bits: the
32-bit payload + CRC-8, encoded by a rate-½ convolutional code (:mod:`.ecc`). It is repeated
over the frame, weighted by a local-activity mask ``m`` and the strength ``α`` (8-bit levels),
and the same ``Δ = α·m·tile`` is added to R, G and B, so only luma changes:

    x' = clip(round(x + Δ), 0, 255),  Δ_t(u) = α · m_t(u) · tile((u − d_t) mod T).

The displacement ``d_t`` follows the camera (:mod:`.motion`: one global velocity per chunk of
10 frames, by phase correlation; 0 for a static camera), so that a codec's motion compensation
carries the mark instead of quantising it away.

Detection (folding, the drift and scale search, decoding and the false-positive bound) is in
:mod:`.pixel_detect`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

from . import ecc, motion, pixel_detect
from . import spectral as sp
from .motion import MotionTrack
from .pixel_detect import (
    CHECK_BITS,
    MIN_DETECT_SIDE,
    PAYLOAD_BITS,
    WHITEN,
    PixelDetection,
    check_frames,
    decode_bits,
    mark_spectrum,
    payload_bits,
)

__all__ = [
    "SCHEME",
    "MotionTrack",
    "PixelDetection",
    "PixelWatermark",
    "decode_bits",
    "payload_bits",
]

SCHEME = "mdiff-pixel-v1"
CODED_BITS = ecc.coded_length(PAYLOAD_BITS + CHECK_BITS)  # 92 patterns
# The mark follows the camera only where the frame holds this many tiles per side: with fewer,
# the fold averages no tiles and the host, which then moves with the mark, is not averaged out
# either (64², panning: z 16 → 12), while H.264 removes the mark at that size anyway.
FOLLOW_TILES = 2
# Radial bands (cycles/px) by tile: the 64-px tile reaches higher to get enough bins (≈ 360
# conjugate pairs instead of ≈ 180); ×0.5 resizing keeps the part below 0.25 c/px.
BANDS = {64: (0.035, 0.24), 128: (0.035, 0.17)}
PILOT_SHARE = 0.5  # share of the band bins given to the pilot
MIN_EMBED_SIDE = 32
RMS_PER_ALPHA = 1.3  # Δ is scaled toward RMS α·1.3 levels (PSNR ≈ 39.7 dB at α = 2) ...
BOOST = (1.0, 1.2)  # ... by a factor in this range (never weaker than α·m·tile)
INFORMED = (1.0, 0.6, 0.5, 1.0)  # embedding: cone ρ, t; budget β for video, for one still


def _tiled(tile: Tensor, h: int, w: int) -> Tensor:
    """``(…, T, T)`` repeated over an ``H×W`` frame: ``(…, H, W)``."""
    t = tile.shape[-1]
    return tile.repeat(*([1] * (tile.ndim - 2)), -(-h // t), -(-w // t))[..., :h, :w]


class PixelWatermark:
    """Keyed invisible watermark for uint8 ``(T, H, W, 3)`` frames (CPU or CUDA).

    ``alpha`` is the strength in 8-bit levels (2.0 ≈ 40 dB PSNR), ``tile`` fixes the tile size
    (default: :meth:`tile_for` the frame size), ``band`` is the radial band in cycles/pixel
    (default: :data:`BANDS` by tile size).
    """

    def __init__(
        self,
        key: bytes,
        *,
        alpha: float = 2.0,
        tile: int | None = None,
        band: tuple[float, float] | None = None,
    ):
        if not isinstance(key, bytes) or not key:
            raise InvalidInputError("the watermark key must be non-empty bytes")
        if not (math.isfinite(alpha) and alpha > 0):
            raise InvalidInputError(f"alpha must be a positive number, got {alpha}")
        lo, hi = band if band is not None else BANDS[128]
        if not 0 < lo < hi < 0.5:
            raise InvalidInputError(f"band must satisfy 0 < lo < hi < 0.5 cycles/px, got {band}")
        if tile is not None and (not isinstance(tile, int) or tile < 16):
            raise InvalidInputError(f"tile must be an int ≥ 16, got {tile!r}")
        self.key, self.alpha, self.tile, self.band = key, float(alpha), tile, band
        self._cache: dict[tuple[int, str], sp.TilePatterns] = {}
        if tile is not None:
            self.patterns(tile)  # fail now if the tile cannot hold the payload

    # ------------------------------------------------------------------------------------------
    def tile_for(self, height: int, width: int) -> int:
        """Tile size for a frame: 64 below 256 px on the short side, else 128 (or the fixed one)."""
        if min(height, width) < MIN_EMBED_SIDE:
            raise InvalidInputError(
                f"frames of {height}×{width} are too small to watermark (min {MIN_EMBED_SIDE} px)"
            )
        if self.tile is not None:
            return self.tile
        return 64 if min(height, width) < 256 else 128

    def band_for(self, tile: int) -> tuple[float, float]:
        """The radial band of ``tile``: the configured one, else :data:`BANDS` by tile size."""
        return self.band or (BANDS[64] if tile < 128 else BANDS[128])

    def patterns(self, tile: int, device="cpu") -> sp.TilePatterns:
        """Keyed patterns and their FFTs for ``tile``, computed once per (tile, device)."""
        device = torch.device(device)
        slot = (tile, str(device))
        if slot not in self._cache:
            cpu = (tile, "cpu")
            if cpu not in self._cache:
                try:
                    self._cache[cpu] = sp.make_patterns(
                        self.key, tile, self.band_for(tile), CODED_BITS, PILOT_SHARE
                    )
                except ValueError as e:
                    raise InvalidInputError(str(e)) from None
            self._cache[slot] = self._cache[cpu].to(device)
        return self._cache[slot]

    # ------------------------------------------------------------------------------------------
    def embed(
        self, frames: Tensor, payload: int, *, chunk: int = 10, track: MotionTrack | None = None
    ) -> Tensor:
        """Mark every frame with ``payload`` (0 ≤ payload < 2³²); same shape, dtype and device.

        The mark moves with the camera (one velocity per ``chunk`` of frames, see
        :mod:`.motion`); ``track`` continues the motion of a previous call (a stream's chunks).
        """
        check_frames(frames, MIN_EMBED_SIDE)
        if isinstance(payload, bool) or not isinstance(payload, int) or not 0 <= payload < 2**32:
            raise InvalidInputError(f"payload must be an int in [0, 2³²), got {payload!r}")
        _, h, w, _ = frames.shape
        pat = self.patterns(self.tile_for(h, w), frames.device)
        spec = mark_spectrum(pat, payload)
        track = track if track is not None else motion.MotionTrack()
        out = torch.empty_like(frames)
        for i in range(0, frames.shape[0], chunk):
            x = frames[i : i + chunk]
            y = sp.luma(x)
            if min(h, w) >= FOLLOW_TILES * pat.tile:
                d = motion.follow(motion.spectra(y), (h, w), track)
            else:
                d = torch.zeros(len(x), 2, dtype=torch.float64)
            delta = self._delta(x, y, pat, spec, d).round_()  # (n, H, W)
            y = x.float() + delta[..., None]  # integer Δ: exactly the same on R, G and B
            out[i : i + chunk] = y.clamp_(0, 255).to(torch.uint8)
        return out

    def _delta(self, x: Tensor, y: Tensor, pat: sp.TilePatterns, spec: Tensor, d: Tensor) -> Tensor:
        """``Δ = α·m·tile`` with one tile per chunk of frames, informed by the chunk's content.

        In the detector's domain (high-passed, contrast-normalised luma, averaged over the chunk
        and folded into the tile) the host has a spectrum ``H(b)`` and the nominal mark
        ``G(b)·U(b)``. Band bins are moved to the nearest point whose in-phase part is ≥ ``ρ·G``
        and quadrature ≤ ``t`` × in-phase, cheapest first within an energy budget ``β``; the
        tile is then rescaled to the nominal energy (informed embedding: the host's interference
        is cancelled where it is cheap to do so). Frame ``i``'s tile is moved by ``d[i]`` (its
        spectrum times ``exp(−2πi f·d)``), and the host is aligned the same way.
        """
        n, h, w = x.shape[:3]
        t = pat.tile
        moving = bool(d.abs().max() > 0)
        shift = motion.shift_phase(t, d.to(x.device)) if moving else 1  # (n, T, T)
        mask = sp.activity_mask(y)
        hp = sp.highpass_fast(y)
        gain = sp.highpass_gain(t).to(x.device)
        # the nominal mark as the detector's high-pass sees it (≈ α·m·high-passed tile)
        nominal = torch.fft.ifft2(spec * gain * shift).real.float() / pat.std
        nominal = self.alpha * mask * _tiled(nominal, h, w)
        inv = 1 / (sp.local_std(hp + nominal) + WHITEN)  # as the detector will see
        if moving:  # each frame's fold moved back by d, as the detector's drift_sum does
            host = (torch.fft.fft2(sp.fold(hp * inv, t).double()) * shift.conj()).mean(0)
        else:
            host = torch.fft.fft2(sp.fold((hp * inv).mean(0), t).double())  # (T, T)
        g = float((self.alpha * mask * inv).double().mean()) / pat.std
        gain = g * gain  # detector units per unit of U
        u = spec / spec.abs().clamp_min(1e-12)
        r = (host + gain * spec) * u.conj()
        p, q = sp.project_cone(r.real, r.imag, INFORMED[0] * gain, INFORMED[1])
        fix = torch.where(pat.band, torch.complex(p - r.real, q - r.imag) * u / gain, 0)
        cost = torch.where(pat.band, (spec + fix).abs() ** 2 - 1, 0).flatten()
        order = cost.argsort()
        keep = torch.zeros_like(cost, dtype=torch.bool)
        beta = INFORMED[3] if n == 1 else INFORMED[2]  # a still's host is known exactly
        keep[order] = cost[order].cumsum(0) <= beta * int(pat.band.sum())
        total = spec + fix * keep.view(t, t)
        total = total * math.sqrt(int(pat.band.sum()) / float((total.abs() ** 2).sum()))
        tile = torch.fft.ifft2(total * shift).real / pat.std  # (T, T), or (n, T, T) if moving
        field = self.alpha * mask * _tiled(tile.float(), h, w)
        lo, hi = BOOST  # strength per frame size: toward a fixed RMS, i.e. a fixed PSNR
        rms = float(field.square().mean().sqrt())
        return field * min(max(RMS_PER_ALPHA * self.alpha / max(rms, 1e-9), lo), hi)

    # ------------------------------------------------------------------------------------------
    def detect(
        self, frames: Tensor, *, scales="auto", velocities="auto", expected: int | None = None
    ) -> PixelDetection:
        """Fold the frames and look for the mark.

        ``expected``: the payload the mark should carry, if known (a manifest whose hash binding
        holds declares it); a candidate that does not decode blindly is then also scored against
        that payload's whole mark (see :mod:`.pixel_detect`). This tells "this mark" from "no
        mark of this key", not one payload of the key from another (their marks share the
        pilot): use it only where no other payload of the key can be there.

        ``scales``: ``"auto"`` (search around 1, ½, ¾, ⅔ and estimated periods), a sequence of
        scales to try exactly, or ``None`` for scale 1 only.

        ``velocities`` (px/frame of the unresized frame, ``(vy, vx)``): the mark's drift. With
        ``"auto"`` a static mark is looked for first (all frames averaged); if that does not
        decode, every window of 10 frames (``VELOCITY_WINDOW``) is searched on a 0.5 px/frame grid
        up to ±2 at the scale centres and refined to 0.25 px/frame and the scale steps (if it
        does, and the clip is one window, the drift is searched at the scale found). A
        sequence: those velocities exactly, at every scale. ``None``: a static mark only.
        """
        return pixel_detect.detect(
            self, frames, scales=scales, velocities=velocities, expected=expected
        )

    def detect_windows(self, frames: Tensor, window: int = 10, **kw) -> list[PixelDetection]:
        """:meth:`detect` on consecutive windows of ``window`` frames (the last may be shorter)."""
        check_frames(frames, MIN_DETECT_SIDE)
        if window < 1:
            raise InvalidInputError(f"window must be ≥ 1, got {window}")
        return [self.detect(frames[i : i + window], **kw) for i in range(0, len(frames), window)]
