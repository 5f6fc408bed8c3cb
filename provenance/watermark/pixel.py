"""``mdiff-pixel-v1``: a keyed, tiled, band-limited spread-spectrum watermark on luma.

Embedding. A keyed ``T×T`` tile (see :mod:`.spectral`) carries a pilot and 92 coded bits: the
32-bit payload + CRC-8, encoded by a rate-½ convolutional code (:mod:`.ecc`). It is repeated
over the frame, weighted by a local-activity mask ``m`` and the strength ``α`` (8-bit levels),
and the same ``Δ = α·m·tile`` is added to R, G and B, so only luma changes:

    x' = clip(round(x + Δ), 0, 255),  Δ(u) = α · m(u) · tile(u mod T).

Detection. All frames are averaged, high-passed and folded into one tile; the phase-only
correlation with the pilot over all ``T²`` cyclic shifts gives the peak (the shift, i.e. the
crop offset) and

    z = (max C − median C) / (1.4826 · MAD C).

Under no watermark each ``C(d)`` is ≈ N(0, 1) after this normalisation, so for ``S`` searched
scales the chance that any of the ``T²·S`` values exceeds ``z`` is at most ``T²·S·Q(z)``
(Bonferroni; measured to be tight). The soft coded bits are the payload correlations at the
peak, decoded by soft-decision Viterbi (the CRC-8 then checks them). A resize is undone by
resampling before the fold; the scale is searched around 1, ½, ¾, ⅔ and around period
estimates from the spectrally flattened autocorrelation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

from . import ecc
from . import spectral as sp

__all__ = ["SCHEME", "PixelDetection", "PixelWatermark"]

SCHEME = "mdiff-pixel-v1"
PAYLOAD_BITS = 32
CHECK_BITS = 8
CODED_BITS = ecc.coded_length(PAYLOAD_BITS + CHECK_BITS)  # 92 patterns
Z_THRESHOLD = 8.0
# Radial bands (cycles/px) by tile: the 64-px tile reaches higher to get enough bins (≈ 360
# conjugate pairs instead of ≈ 180); ×0.5 resizing keeps the part below 0.25 c/px.
BANDS = {64: (0.035, 0.24), 128: (0.035, 0.17)}
PILOT_SHARE = 0.5  # share of the band bins given to the pilot
MIN_EMBED_SIDE = 32
MIN_DETECT_SIDE = 16
WHITEN = 2.0  # detection: divide the high-passed luma by (local std + this)
RMS_PER_ALPHA = 1.3  # Δ is scaled toward RMS α·1.3 levels (PSNR ≈ 39.7 dB at α = 2) ...
BOOST = (1.0, 1.2)  # ... by a factor in this range (never weaker than α·m·tile)
INFORMED = (1.0, 0.6, 0.5, 1.0)  # embedding: cone ρ, t; budget β for video, for one still
SCALE_CENTERS = (1.0, 0.5, 0.75, 2 / 3)
SCALE_HALF_WIDTH = 0.006  # search ± this around each centre ...
SCALE_MIN_STEP = 0.0015  # ... in steps of max(this, 1 px of drift across the frame)


@dataclass
class PixelDetection:
    """The outcome of one detection; ``to_dict()`` is JSON-serialisable."""

    detected: bool  # z ≥ 8 and the check code matches
    z: float
    fpr_bound: float  # T²·S·Q(z), summed over the searched (tile, scale) candidates
    payload: int | None  # the 32-bit payload when the check code matches, else None
    bits: list[int]  # the 40 decoded information bits: payload (MSB first), then the CRC-8
    check_ok: bool
    frames_used: int
    scale: float
    shift: tuple[int, int]
    tile: int = 0
    scales_searched: int = 1

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shift"] = list(self.shift)
        return d


def payload_bits(payload: int) -> list[int]:
    """32 payload bits (MSB first) followed by CRC-8 of the 4 big-endian bytes."""
    crc = sp.crc8(payload.to_bytes(4, "big"))
    return [(payload >> (31 - i)) & 1 for i in range(32)] + [(crc >> (7 - i)) & 1 for i in range(8)]


def decode_bits(bits: Sequence[int]) -> tuple[int, bool]:
    """Inverse of :func:`payload_bits`: ``(payload, check code matches)``."""
    payload = int("".join(map(str, bits[:PAYLOAD_BITS])), 2)
    crc = int("".join(map(str, bits[PAYLOAD_BITS:])), 2)
    return payload, crc == sp.crc8(payload.to_bytes(4, "big"))


def _check_frames(frames, min_side: int) -> None:
    if not isinstance(frames, Tensor):
        raise InvalidInputError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise InvalidInputError(
            f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}"
        )
    if frames.shape[0] == 0 or min(frames.shape[1:3]) < min_side:
        raise InvalidInputError(
            f"frames {tuple(frames.shape)}: need at least one frame of ≥ {min_side}×{min_side} px"
        )


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
    def embed(self, frames: Tensor, payload: int, *, chunk: int = 10) -> Tensor:
        """Mark every frame with ``payload`` (0 ≤ payload < 2³²); same shape, dtype and device."""
        _check_frames(frames, MIN_EMBED_SIDE)
        if isinstance(payload, bool) or not isinstance(payload, int) or not 0 <= payload < 2**32:
            raise InvalidInputError(f"payload must be an int in [0, 2³²), got {payload!r}")
        _, h, w, _ = frames.shape
        pat = self.patterns(self.tile_for(h, w), frames.device)
        coded = ecc.encode(payload_bits(payload))
        signs = torch.tensor(coded, dtype=torch.float64, device=frames.device)
        spec = pat.pilot_hat + torch.tensordot(
            (2 * signs - 1).to(pat.payload_hat.dtype), pat.payload_hat, 1
        )
        out = torch.empty_like(frames)
        for i in range(0, frames.shape[0], chunk):
            x = frames[i : i + chunk]
            delta = self._delta(x, pat, spec).round_()  # (n, H, W)
            y = x.float() + delta[..., None]  # integer Δ: exactly the same on R, G and B
            out[i : i + chunk] = y.clamp_(0, 255).to(torch.uint8)
        return out

    def _delta(self, x: Tensor, pat: sp.TilePatterns, spec: Tensor) -> Tensor:
        """``Δ = α·m·tile`` with one tile per chunk of frames, informed by the chunk's content.

        In the detector's domain (high-passed, contrast-normalised luma, averaged over the chunk
        and folded into the tile) the host has a spectrum ``H(b)`` and the nominal mark
        ``G(b)·U(b)``. Band bins are moved to the nearest point whose in-phase part is ≥ ``ρ·G``
        and quadrature ≤ ``t`` × in-phase, cheapest first within an energy budget ``β``; the
        tile is then rescaled to the nominal energy (informed embedding: the host's interference
        is cancelled where it is cheap to do so).
        """
        n, h, w = x.shape[:3]
        t = pat.tile
        y = sp.luma(x)
        mask = sp.activity_mask(y)
        hp = sp.highpass_fast(y)
        gain = sp.highpass_gain(t).to(x.device)
        # the nominal mark as the detector's high-pass sees it (≈ α·m·high-passed tile)
        nominal = torch.fft.ifft2(spec * gain).real.float() / pat.std
        nominal = self.alpha * mask * nominal.repeat(-(-h // t), -(-w // t))[:h, :w]
        inv = 1 / (sp.local_std(hp + nominal) + WHITEN)  # as the detector will see
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
        tile = torch.fft.ifft2(total).real / pat.std  # (T, T)
        field = self.alpha * mask * tile.float().repeat(-(-h // t), -(-w // t))[:h, :w]
        lo, hi = BOOST  # strength per frame size: toward a fixed RMS, i.e. a fixed PSNR
        rms = float(field.square().mean().sqrt())
        return field * min(max(RMS_PER_ALPHA * self.alpha / max(rms, 1e-9), lo), hi)

    # ------------------------------------------------------------------------------------------
    def detect(self, frames: Tensor, *, scales="auto") -> PixelDetection:
        """Fold all frames together and look for the mark.

        ``scales``: ``"auto"`` (search around 1, ½, ¾, ⅔ and estimated periods), a sequence of
        scales to try exactly, or ``None`` for scale 1 only.
        """
        _check_frames(frames, MIN_DETECT_SIDE)
        y = self._mean_luma(frames)  # (H, W), high-passed
        scale_list = self._scales(y, scales)
        best, count = None, 0
        for scale in scale_list:
            r = sp.resample(y, scale)
            for tile in self._tiles(y.shape, scale):
                pat = self.patterns(tile, y.device)
                g = sp.phase_only(sp.fold(r, tile), pat.band)  # (T, T) complex
                z, shift = sp.robust_z(sp.correlate(g, pat.pilot_hat))
                count += tile * tile
                if best is None or z > best[0]:
                    best = (z, shift, scale, tile, g, pat)
        if best is None:
            raise InvalidInputError(f"no scale candidate fits frames of shape {tuple(y.shape)}")
        z, shift, scale, tile, g, pat = best
        soft = sp.correlate(g[None], pat.payload_hat)[:, shift[0], shift[1]]  # (92,)
        bits = ecc.decode(soft.tolist(), PAYLOAD_BITS + CHECK_BITS)
        payload, check_ok = decode_bits(bits)
        return PixelDetection(
            detected=bool(z >= Z_THRESHOLD and check_ok),
            z=z,
            fpr_bound=min(1.0, count * sp.gaussian_tail(z)),
            payload=payload if check_ok else None,
            bits=bits,
            check_ok=check_ok,
            frames_used=int(frames.shape[0]),
            scale=float(scale),
            shift=shift,
            tile=tile,
            scales_searched=len(scale_list),
        )

    def detect_windows(self, frames: Tensor, window: int = 10, **kw) -> list[PixelDetection]:
        """:meth:`detect` on consecutive windows of ``window`` frames (the last may be shorter)."""
        _check_frames(frames, MIN_DETECT_SIDE)
        if window < 1:
            raise InvalidInputError(f"window must be ≥ 1, got {window}")
        return [self.detect(frames[i : i + window], **kw) for i in range(0, len(frames), window)]

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _mean_luma(frames: Tensor, chunk: int = 16) -> Tensor:
        """High-passed mean luma of all frames, ``(H, W)`` float32."""
        total = 0
        for i in range(0, len(frames), chunk):
            y = sp.highpass(sp.luma(frames[i : i + chunk]))  # (n, H, W)
            if WHITEN:
                y = y / (sp.local_std(y) + WHITEN)
            total = total + y.sum(0)
        return total / len(frames)

    def _tiles(self, shape, scale: float) -> list[int]:
        """Tiles the unresized frame could have used: ``tile_for`` allowing a ≤ 20 % crop."""
        if self.tile is not None:
            return [self.tile]
        side = min(shape) / scale  # short side of the original frame, up to the crop
        return [t for t, ok in ((64, side < 256 * 1.05), (128, side >= 256 * 0.8)) if ok]

    def _scales(self, y: Tensor, scales) -> list[float]:
        if scales is None:
            return [1.0]
        if scales != "auto":
            return [float(s) for s in scales]
        tiles = [self.tile] if self.tile else [64, 128]
        centers = list(SCALE_CENTERS)
        for p in sp.estimate_periods(y):
            centers += [p * m / t for t in tiles for m in (1.0, 0.5, 2 / 3)]
        out: list[float] = []
        for c in centers:
            if not 0.2 <= c <= 4.0:
                continue
            step = max(SCALE_MIN_STEP, c / max(y.shape))  # ≤ 1 px of drift over the frame
            n = int(SCALE_HALF_WIDTH / step + 1e-9)
            for k in range(-n, n + 1):
                s = round(c + k * step, 6)
                if all(abs(s - o) > 0.5 * SCALE_MIN_STEP for o in out):
                    out.append(s)
        return out
