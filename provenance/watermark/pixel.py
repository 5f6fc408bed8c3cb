"""``mdiff-pixel-v1``: a keyed, tiled, band-limited spread-spectrum watermark on luma.

Embedding. A keyed ``T×T`` tile (see :mod:`.spectral`) carries a pilot and 92 coded bits: the
32-bit payload + CRC-8, encoded by a rate-½ convolutional code (:mod:`.ecc`). It is repeated
over the frame, weighted by a local-activity mask ``m`` and the strength ``α`` (8-bit levels),
and the same ``Δ = α·m·tile`` is added to R, G and B, so only luma changes:

    x' = clip(round(x + Δ), 0, 255),  Δ_t(u) = α · m_t(u) · tile((u − d_t) mod T).

The displacement ``d_t`` follows the camera (:mod:`.motion`: one global velocity per chunk of
10 frames, by phase correlation; 0 for a static camera), so that a codec's motion compensation
carries the mark instead of quantising it away.

Detection. The frames are high-passed and folded into one tile; the phase-only correlation
with the pilot over all ``T²`` cyclic shifts gives the peak (the shift, i.e. the crop offset)
and

    z = (max C − median C) / (1.4826 · MAD C).

A static mark is looked for in the average of all frames first; if it does not decode, the
folds of each frame are summed with a drift ``v`` compensated, ``Σ_t F_t·exp(2πi f·v t)``, for
``v`` on a grid (up to ±2 px/frame). Under no watermark each ``C(d)`` is ≈ N(0, 1) after this
normalisation, so for ``S`` searched scales and ``V`` velocities the chance that any of the
``T²·S·V`` values exceeds ``z`` is at most ``T²·S·V·Q(z)`` (Bonferroni; measured to be tight
per candidate). The soft coded bits are the payload correlations at the peak, decoded by
soft-decision Viterbi (the CRC-8 then checks them). A resize is undone by resampling before
the fold; the scale is searched around 1, ½, ¾, ⅔ and around period estimates from the
spectrally flattened autocorrelation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

from . import ecc, motion
from . import spectral as sp
from .motion import MotionTrack

__all__ = ["SCHEME", "MotionTrack", "PixelDetection", "PixelWatermark"]

SCHEME = "mdiff-pixel-v1"
PAYLOAD_BITS = 32
CHECK_BITS = 8
CODED_BITS = ecc.coded_length(PAYLOAD_BITS + CHECK_BITS)  # 92 patterns
Z_THRESHOLD = 8.0
VELOCITY_WINDOW = 10  # a drifting mark is searched in windows of this many frames
# The mark follows the camera only where the frame holds this many tiles per side: with fewer,
# the fold averages no tiles and the host, which then moves with the mark, is not averaged out
# either (64², panning: z 16 → 12), while H.264 removes the mark at that size anyway.
FOLLOW_TILES = 2
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
    fpr_bound: float  # T²·S·V·Q(z), summed over the searched (tile, scale, velocity) candidates
    payload: int | None  # the 32-bit payload when the check code matches, else None
    bits: list[int]  # the 40 decoded information bits: payload (MSB first), then the CRC-8
    check_ok: bool
    frames_used: int
    scale: float
    shift: tuple[int, int]
    tile: int = 0
    scales_searched: int = 1
    velocity: tuple[float, float] = (0.0, 0.0)  # the mark's drift, px/frame of the unresized frame
    velocities_searched: int = 1  # per (tile, scale); the bound counts T²·S·V candidates

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shift"], d["velocity"] = list(self.shift), list(self.velocity)
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
    def detect(self, frames: Tensor, *, scales="auto", velocities="auto") -> PixelDetection:
        """Fold the frames and look for the mark.

        ``scales``: ``"auto"`` (search around 1, ½, ¾, ⅔ and estimated periods), a sequence of
        scales to try exactly, or ``None`` for scale 1 only.

        ``velocities`` (px/frame of the unresized frame, ``(vy, vx)``): the mark's drift. With
        ``"auto"`` a static mark is looked for first (all frames averaged); if that does not
        decode, every window of ``VELOCITY_WINDOW`` frames is searched on a 0.5 px/frame grid
        up to ±2 at the scale centres and refined to 0.25 px/frame and the scale steps (if it
        does, and the clip is one window, the drift is searched at the scale found). A
        sequence: those velocities exactly, at every scale. ``None``: a static mark only.
        """
        _check_frames(frames, MIN_DETECT_SIDE)
        n = frames.shape[0]
        windows = [frames[i : i + VELOCITY_WINDOW] for i in range(0, n, VELOCITY_WINDOW)]
        hp = self._frame_luma(frames) if len(windows) == 1 else None
        y = hp.sum(0) / n if hp is not None else self._mean_luma(frames)  # (H, W), high-passed
        groups = self._scale_groups(y, scales)
        scale_list = [s for _, group in groups for s in group]
        count = sum(t * t for s in scale_list for t in self._tiles(y.shape, s))
        if not count:
            raise InvalidInputError(f"no scale candidate fits frames of shape {tuple(y.shape)}")
        auto = isinstance(velocities, str)
        if auto and velocities != "auto":
            raise InvalidInputError(f'velocities must be "auto", None or pairs, got {velocities!r}')
        if velocities is None:
            n_vel = 1
        elif auto:  # the static search, then per window the 0.25 px/frame grid (0 counted once)
            n_vel = 1 + len(windows) * (len(motion.velocity_grid()) ** 2 - 1)
        else:
            velocities = [(float(vy), float(vx)) for vy, vx in velocities]
            if not velocities:
                raise InvalidInputError("velocities must not be empty")
            n_vel = len(windows) * len(velocities)
        best = None
        if velocities is None or auto:
            best = dataclasses.replace(self._search_static(y, scale_list), frames_used=n)
        if auto and best.detected and hp is not None:
            # a drifting mark can decode smeared: look for its drift at the scale found
            found = self._search_auto(hp, [(best.scale, [best.scale])])
            if found.detected and found.z > best.z:
                best = dataclasses.replace(found, frames_used=n)
        elif velocities is not None and (best is None or not best.detected):
            for w in windows:
                f = hp if hp is not None else self._frame_luma(w)
                if auto:
                    found = self._search_auto(f, groups)
                else:
                    found = self._search_velocities(f, scale_list, velocities)
                if found is not None and (
                    best is None or (found.detected, found.z) > (best.detected, best.z)
                ):
                    best = dataclasses.replace(found, frames_used=len(w))
                if best is not None and best.detected:
                    break
        return dataclasses.replace(
            best,
            fpr_bound=min(1.0, count * n_vel * sp.gaussian_tail(best.z)),
            scales_searched=len(scale_list),
            velocities_searched=n_vel,
        )

    def _search_static(self, y: Tensor, scale_list: list[float]) -> PixelDetection:
        """The best static candidate of the frames' mean ``y`` (robust ``z``) over all scales."""
        best = None
        for scale in scale_list:
            r = sp.resample(y, scale)
            for tile in self._tiles(y.shape, scale):
                pat = self.patterns(tile, y.device)
                g = sp.phase_only(sp.fold(r, tile), pat.band)  # (T, T) complex
                z, shift = sp.robust_z(sp.correlate(g, pat.pilot_hat))
                if best is None or z > best[0]:
                    best = (z, shift, scale, tile, g, pat)
        z, shift, scale, tile, g, pat = best
        return self._decode(z, shift, scale, tile, g, pat, (0.0, 0.0))

    def _search_velocities(self, f, scales, velocities, tiles=None) -> PixelDetection | None:
        """Best of ``velocities`` × ``scales`` × tiles for the frames' high-passed luma ``f``
        ``(N, H, W)``, ranked by the pilot peak over its exact RMS, then scored by robust ``z``."""
        best = None
        v = torch.tensor(velocities, dtype=torch.float64)
        for scale in scales:
            r = sp.resample(f, scale)
            for tile in tiles or self._tiles(f.shape[-2:], scale):
                pat = self.patterns(tile, f.device)
                folds = torch.fft.fft2(sp.fold(r, tile).double()).flatten(1)  # (N, T²)
                idx, freqs = pat.bins("pilot")
                g = motion.drift_sum(folds[:, idx], freqs, v)  # (V, B)
                full = torch.zeros(len(v), tile * tile, dtype=g.dtype, device=g.device)
                full[:, idx] = g / (g.abs() + 1e-12) * pat.pilot_hat.flatten()[idx].conj()
                c = torch.fft.ifft2(full.view(-1, tile, tile)).real.flatten(1).amax(1)
                k = int(c.argmax())
                score = float(c[k]) * tile**2 / math.sqrt(len(idx))
                if best is None or score > best[0]:
                    best = (score, scale, tile, folds, pat, velocities[k])
        if best is None:
            return None
        _, scale, tile, folds, pat, vel = best
        idx, freqs = pat.bins("band")
        spec = torch.zeros(tile * tile, dtype=folds.dtype, device=folds.device)
        spec[idx] = motion.drift_sum(folds[:, idx], freqs, torch.tensor([vel]))[0]
        g = sp.phase_only_spectrum(spec.view(tile, tile), pat.band)
        z, shift = sp.robust_z(sp.correlate(g, pat.pilot_hat))
        return self._decode(z, shift, scale, tile, g, pat, vel)

    def _search_auto(self, f: Tensor, groups) -> PixelDetection | None:
        """Velocity search: the 0.5 px/frame grid at each scale centre, then the best one's
        scale steps and its 0.25 px/frame neighbours."""
        coarse = motion.velocity_grid(2 * motion.VELOCITY_STEP)
        grid = [(vy, vx) for vy in coarse for vx in coarse]
        best = None
        for c, group in groups:
            if not group:
                continue
            s = min(group, key=lambda s, c=c: abs(s - c))
            det = self._search_velocities(f, [s], grid)
            if det is None:
                continue
            if best is None or det.z > best[1].z:
                best = (group, det)
        if best is None:
            return None
        group, det = best
        step, vmax = motion.VELOCITY_STEP, motion.VELOCITY_MAX
        near = [
            (det.velocity[0] + i * step, det.velocity[1] + j * step)
            for i in (-1, 0, 1)
            for j in (-1, 0, 1)
        ]
        near = [v for v in near if max(abs(v[0]), abs(v[1])) <= vmax]
        fine = self._search_velocities(f, group, near, tiles=[det.tile])
        return fine if fine.z >= det.z else det

    def _decode(self, z, shift, scale, tile, g, pat, vel) -> PixelDetection:
        soft = sp.correlate(g[None], pat.payload_hat)[:, shift[0], shift[1]]  # (92,)
        bits = ecc.decode(soft.tolist(), PAYLOAD_BITS + CHECK_BITS)
        payload, check_ok = decode_bits(bits)
        return PixelDetection(
            detected=bool(z >= Z_THRESHOLD and check_ok),
            z=z,
            fpr_bound=1.0,
            payload=payload if check_ok else None,
            bits=bits,
            check_ok=check_ok,
            frames_used=0,
            scale=float(scale),
            shift=shift,
            tile=tile,
            velocity=(float(vel[0]), float(vel[1])),
        )

    def detect_windows(self, frames: Tensor, window: int = 10, **kw) -> list[PixelDetection]:
        """:meth:`detect` on consecutive windows of ``window`` frames (the last may be shorter)."""
        _check_frames(frames, MIN_DETECT_SIDE)
        if window < 1:
            raise InvalidInputError(f"window must be ≥ 1, got {window}")
        return [self.detect(frames[i : i + window], **kw) for i in range(0, len(frames), window)]

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _frame_luma(frames: Tensor) -> Tensor:
        """High-passed (and whitened) luma of every frame, ``(N, H, W)`` float32."""
        y = sp.highpass(sp.luma(frames))
        return y / (sp.local_std(y) + WHITEN) if WHITEN else y

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

    def _scale_groups(self, y: Tensor, scales) -> list[tuple[float, list[float]]]:
        """``(centre, scales around it)`` per centre; the scales are distinct over all groups."""
        if scales is None:
            return [(1.0, [1.0])]
        if scales != "auto":
            return [(float(s), [float(s)]) for s in scales]
        tiles = [self.tile] if self.tile else [64, 128]
        centers = list(SCALE_CENTERS)
        for p in sp.estimate_periods(y):
            centers += [p * m / t for t in tiles for m in (1.0, 0.5, 2 / 3)]
        out: list[tuple[float, list[float]]] = []
        seen: list[float] = []
        for c in centers:
            if not 0.2 <= c <= 4.0:
                continue
            step = max(SCALE_MIN_STEP, c / max(y.shape))  # ≤ 1 px of drift over the frame
            n = int(SCALE_HALF_WIDTH / step + 1e-9)
            group = []
            for k in range(-n, n + 1):
                s = round(c + k * step, 6)
                if all(abs(s - o) > 0.5 * SCALE_MIN_STEP for o in seen):
                    seen.append(s)
                    group.append(s)
            out.append((c, group))
        return out
