"""Detection of ``mdiff-pixel-v1`` (the embedding is in :mod:`.pixel`).

The frames are high-passed and folded into one tile; the phase-only correlation
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

Known payload. When the payload to expect is known (the manifest declares it), a candidate
whose blind decoding fails is also scored against the whole expected mark (pilot and coded
payload bins, `mark_spectrum`): that correlation is ≈ N(0, 1) per shift under no watermark too,
so the same threshold and bound apply, and it uses twice the pilot's energy. One rule decides
``detected`` either way, and a payload is reported only with a detection.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mdiff.errors import InvalidInputError

from . import ecc, motion
from . import spectral as sp

if TYPE_CHECKING:
    from .pixel import PixelWatermark

__all__ = [
    "PixelDetection",
    "decode_bits",
    "detect",
    "frame_luma",
    "mark_spectrum",
    "mean_luma",
    "payload_bits",
]

PAYLOAD_BITS = 32
CHECK_BITS = 8
Z_THRESHOLD = 8.0
VELOCITY_WINDOW = 10  # a drifting mark is searched in windows of this many frames
MIN_DETECT_SIDE = 16
WHITEN = 2.0  # divide the high-passed luma by (local std + this); the embedder plans for it
SCALE_CENTERS = (1.0, 0.5, 0.75, 2 / 3)
SCALE_HALF_WIDTH = 0.006  # search ± this around each centre ...
SCALE_MIN_STEP = 0.0015  # ... in steps of max(this, 1 px of drift across the frame)


@dataclass
class PixelDetection:
    """The outcome of one detection; ``to_dict()`` is JSON-serialisable."""

    detected: bool  # z ≥ 8 and (the check code matches, or the expected payload's mark scored)
    z: float
    fpr_bound: float  # T²·S·V·Q(z), summed over the searched (tile, scale, velocity) candidates
    payload: int | None  # the 32-bit payload when detected, else None
    bits: list[int]  # the 40 decoded information bits: payload (MSB first), then the CRC-8
    check_ok: bool
    frames_used: int
    scale: float
    shift: tuple[int, int]
    tile: int = 0
    scales_searched: int = 1
    velocity: tuple[float, float] = (0.0, 0.0)  # the mark's drift, px/frame of the unresized frame
    velocities_searched: int = 1  # per (tile, scale); the bound counts T²·S·V candidates
    known_payload: bool = False  # detected by correlating with the expected payload's mark

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


def mark_spectrum(pat: sp.TilePatterns, payload: int) -> Tensor:
    """The spectrum of the whole mark for ``payload``: pilot + ±1 on each coded bit's bins."""
    coded = ecc.encode(payload_bits(payload))
    signs = 2 * torch.tensor(coded, dtype=torch.float64, device=pat.payload_hat.device) - 1
    return pat.pilot_hat + torch.tensordot(signs.to(pat.payload_hat.dtype), pat.payload_hat, 1)


def check_frames(frames, min_side: int) -> None:
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


def frame_luma(frames: Tensor) -> Tensor:
    """High-passed (and whitened) luma of every frame, ``(N, H, W)`` float32."""
    y = sp.highpass(sp.luma(frames))
    return y / (sp.local_std(y) + WHITEN) if WHITEN else y


def mean_luma(frames: Tensor, chunk: int = 16) -> Tensor:
    """High-passed mean luma of all frames, ``(H, W)`` float32."""
    total = 0
    for i in range(0, len(frames), chunk):
        y = sp.highpass(sp.luma(frames[i : i + chunk]))  # (n, H, W)
        if WHITEN:
            y = y / (sp.local_std(y) + WHITEN)
        total = total + y.sum(0)
    return total / len(frames)


def detect(
    wm: PixelWatermark, frames: Tensor, *, scales="auto", velocities="auto", expected=None
) -> PixelDetection:
    """Fold the frames and look for the mark of ``wm``: the work of
    :meth:`.PixelWatermark.detect`, whose docstring explains ``scales``, ``velocities`` and
    ``expected``."""
    check_frames(frames, MIN_DETECT_SIDE)
    if expected is not None and (
        isinstance(expected, bool) or not isinstance(expected, int) or not 0 <= expected < 2**32
    ):
        raise InvalidInputError(f"expected must be a payload in [0, 2³²), got {expected!r}")
    n = frames.shape[0]
    windows = [frames[i : i + VELOCITY_WINDOW] for i in range(0, n, VELOCITY_WINDOW)]
    hp = frame_luma(frames) if len(windows) == 1 else None
    y = hp.sum(0) / n if hp is not None else mean_luma(frames)  # (H, W), high-passed
    groups = _scale_groups(wm.tile, y, scales)
    scale_list = [s for _, group in groups for s in group]
    count = sum(t * t for s in scale_list for t in _tiles(wm.tile, y.shape, s))
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
        best = dataclasses.replace(_search_static(wm, y, scale_list, expected), frames_used=n)
    if auto and best.detected and hp is not None:
        # a drifting mark can decode smeared: look for its drift at the scale found
        found = _search_auto(wm, hp, [(best.scale, [best.scale])], expected)
        if found.detected and found.z > best.z:
            best = dataclasses.replace(found, frames_used=n)
    elif velocities is not None and (best is None or not best.detected):
        for w in windows:
            f = hp if hp is not None else frame_luma(w)
            if auto:
                found = _search_auto(wm, f, groups, expected)
            else:
                found = _search_velocities(wm, f, scale_list, velocities, expected)
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


def _search_static(wm: PixelWatermark, y: Tensor, scale_list: list[float], expected=None
                   ) -> PixelDetection:  # fmt: skip
    """The best static candidate of the frames' mean ``y`` (robust ``z``) over all scales."""
    best = None
    for scale in scale_list:
        r = sp.resample(y, scale)
        for tile in _tiles(wm.tile, y.shape, scale):
            pat = wm.patterns(tile, y.device)
            g = sp.phase_only(sp.fold(r, tile), pat.band)  # (T, T) complex
            z, shift = sp.robust_z(sp.correlate(g, pat.pilot_hat))
            if best is None or z > best[0]:
                best = (z, shift, scale, tile, g, pat)
    z, shift, scale, tile, g, pat = best
    return _decode((z, shift), scale, tile, g, pat, (0.0, 0.0), expected)


def _search_velocities(
    wm: PixelWatermark, f, scales, velocities, expected=None, tiles=None
) -> PixelDetection | None:
    """Best of ``velocities`` × ``scales`` × tiles for the frames' high-passed luma ``f``
    ``(N, H, W)``, ranked by the pilot peak over its exact RMS, then scored by robust ``z``."""
    best = None
    v = torch.tensor(velocities, dtype=torch.float64)
    for scale in scales:
        r = sp.resample(f, scale)
        for tile in tiles or _tiles(wm.tile, f.shape[-2:], scale):
            pat = wm.patterns(tile, f.device)
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
    peak = sp.robust_z(sp.correlate(g, pat.pilot_hat))
    return _decode(peak, scale, tile, g, pat, vel, expected)


def _search_auto(wm: PixelWatermark, f: Tensor, groups, expected=None) -> PixelDetection | None:
    """Velocity search: the 0.5 px/frame grid at each scale centre, then the best one's
    scale steps and its 0.25 px/frame neighbours."""
    coarse = motion.velocity_grid(2 * motion.VELOCITY_STEP)
    grid = [(vy, vx) for vy in coarse for vx in coarse]
    best = None
    for c, group in groups:
        if not group:
            continue
        s = min(group, key=lambda s, c=c: abs(s - c))
        det = _search_velocities(wm, f, [s], grid, expected)
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
    fine = _search_velocities(wm, f, group, near, expected, tiles=[det.tile])
    return fine if fine.z >= det.z else det


def _decode(peak, scale, tile, g, pat, vel, expected) -> PixelDetection:
    """Decode the bits at the pilot's ``peak`` ``(z, shift)``; the one rule for ``detected``:
    z ≥ `Z_THRESHOLD` and the check code holds, or, with an ``expected`` payload, that payload's
    whole mark (`mark_spectrum`) correlates with z ≥ `Z_THRESHOLD`."""
    z, shift = peak
    soft = sp.correlate(g[None], pat.payload_hat)[:, shift[0], shift[1]]  # (92,)
    bits = ecc.decode(soft.tolist(), PAYLOAD_BITS + CHECK_BITS)
    payload, check_ok = decode_bits(bits)
    detected, known = bool(z >= Z_THRESHOLD and check_ok), False
    if not detected and expected is not None:
        z_known, shift_known = sp.robust_z(sp.correlate(g, mark_spectrum(pat, expected)))
        if z_known >= Z_THRESHOLD:
            detected, known, z, shift = True, True, z_known, shift_known
            payload, bits, check_ok = expected, payload_bits(expected), True
    return PixelDetection(
        detected=detected,
        z=z,
        fpr_bound=1.0,
        payload=payload if detected else None,
        bits=bits,
        check_ok=check_ok,
        frames_used=0,
        scale=float(scale),
        shift=shift,
        tile=tile,
        velocity=(float(vel[0]), float(vel[1])),
        known_payload=known,
    )


def _tiles(fixed: int | None, shape, scale: float) -> list[int]:
    """Tiles the unresized frame could have used: ``tile_for`` allowing a ≤ 20 % crop."""
    if fixed is not None:
        return [fixed]
    side = min(shape) / scale  # short side of the original frame, up to the crop
    return [t for t, ok in ((64, side < 256 * 1.05), (128, side >= 256 * 0.8)) if ok]


def _scale_groups(fixed: int | None, y: Tensor, scales) -> list[tuple[float, list[float]]]:
    """``(centre, scales around it)`` per centre; the scales are distinct over all groups."""
    if scales is None:
        return [(1.0, [1.0])]
    if scales != "auto":
        return [(float(s), [float(s)]) for s in scales]
    tiles = [fixed] if fixed else [64, 128]
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
