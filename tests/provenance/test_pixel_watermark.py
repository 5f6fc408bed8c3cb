"""mdiff-pixel-v1: robustness per attack, null calibration, imperceptibility, bad input.

Robustness is checked on procedural video (a 1/f texture, panning or static, with moving
shapes, see ``media.py``), the payload in every frame, each 10-frame window decoded on its own,
for 3 keys on 3 clips. Sizes are the smallest where the default strength (α = 2) passes
reliably; what fails below them (64²: H.264, crop; 256²: crop + resize ×½ + CRF 28) is
measured by ``benchmarks/watermark.py``. With a panning camera the mark moves with the content
(``motion.py``) and the detector searches the mark's velocity.
"""

from __future__ import annotations

import json

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.provenance.watermark import motion, pixel_detect
from mdiff.provenance.watermark import spectral as sp
from mdiff.provenance.watermark.pixel import BANDS, SCHEME, PixelWatermark, payload_bits

from . import media

KEY = b"test-key-1"
PAYLOAD = 0xA1B2C3D4


@pytest.fixture(scope="module")
def wm():
    return PixelWatermark(KEY)


def _clip(size, *, pan=1.0, frames=20, seed=1, contrast=8.0):
    return media.moving_shapes(frames, size, seed=seed, pan=pan, contrast=contrast)


def _assert_every_window(wm, frames, min_z=8.0):
    windows = wm.detect_windows(frames, 10)
    assert windows, "no windows"
    for d in windows:
        assert d.payload == PAYLOAD and d.detected and d.check_ok, d
        assert d.z >= min_z, d


# ----------------------------------------------------------------------------------------------
# Robustness
# ----------------------------------------------------------------------------------------------


KEYS = (b"robust-a", b"robust-b", b"robust-c")

# (size, camera pan px/frame, attack): each at the smallest size where it holds reliably.
CASES = (
    [(64, 1.0, a) for a in ("none", "resize0.5", "bright+20")]
    + [(128, 1.0, a) for a in ("crf23", "crop10")]
    + [(128, 0.0, "crf28"), (128, 1.0, "crf28")]
    + [(384, 0.0, "crop+resize+crf28"), (384, 1.0, "crop+resize+crf28")]
)


@pytest.fixture(scope="module")
def marked_clips():
    """(size, pan, key) → marked clip; 3 keys, each on its own clip (seed)."""
    out = {}
    for size, pan in sorted({(size, pan) for size, pan, _ in CASES}):
        for i, key in enumerate(KEYS):
            clip = _clip(size, pan=pan, seed=1 + i)
            out[size, pan, key] = PixelWatermark(key).embed(clip, PAYLOAD)
    return out


@pytest.mark.parametrize("size,pan,attack", CASES)
def test_survives_attack(marked_clips, size, pan, attack):
    """Every 10-frame window, 3 keys × 3 clips, z ≥ 8 and the exact payload."""
    for key in KEYS:
        _assert_every_window(
            PixelWatermark(key), media.ATTACKS[attack](marked_clips[size, pan, key])
        )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_still_chart_128_png(seed):
    """One 128×128 still (dots on a smooth background), saved as PNG: z ≥ 8, exact payload."""
    wm = PixelWatermark(KEYS[seed])
    x = media.scatter_plot(128, seed=seed)
    y = media.png_roundtrip(wm.embed(x, PAYLOAD))
    assert media.psnr(x, y) >= 39.0
    _assert_every_window(wm, y)
    assert not wm.detect(x).detected


@pytest.fixture(scope="module")
def marked_256(wm):
    return wm.embed(_clip(256), PAYLOAD)


def test_small_frames_whole_clip(wm):
    """64×64 (the built-in models' size): the unattacked clip decodes when folded as a whole."""
    x = _clip(64, frames=60, contrast=4.0)
    d = wm.detect(wm.embed(x, PAYLOAD))
    assert d.detected and d.payload == PAYLOAD and d.tile == 64, d
    assert not wm.detect(x).detected


def test_resize_half_is_found_by_scale_search(wm, marked_256):
    small = media.resize(marked_256[:10], 0.5)
    assert not wm.detect(small, scales=None).detected  # scale 1 only: nothing
    d = wm.detect(small)
    assert d.detected and abs(d.scale - 0.5) < 0.01 and d.scales_searched > 1


# ----------------------------------------------------------------------------------------------
# False positives
# ----------------------------------------------------------------------------------------------


def _null_folds(n_clips=25, size=64, tile=64):
    """Phase-only folded spectra of unmarked clips, ``(n, T, T)``, the detector's scale-1 path."""
    band = sp.band_mask(tile, BANDS[tile])
    out = []
    for seed in range(n_clips):
        x = media.moving_shapes(10, size, seed=100 + seed, contrast=4.0 + seed % 5 * 6)
        y = pixel_detect.mean_luma(x)
        out.append(sp.phase_only(sp.fold(y, tile), band))
    return torch.stack(out)


def test_null_calibration_2000_keys():
    """2 000 random keys × 25 unmarked clips: max z < 8 and P(z > 5) within 2× of T²·Q(5)."""
    g = _null_folds()  # (25, 64, 64)
    zs = []
    for k in range(2000):
        pat = PixelWatermark(k.to_bytes(4, "big") + b"null").patterns(64)
        c = sp.correlate(g, pat.pilot_hat)  # (25, 64, 64)
        zs += [sp.robust_z(ci)[0] for ci in c]
    zs = torch.tensor(zs)
    bound = 64**2 * sp.gaussian_tail(5.0)  # 1.17e-3
    p5 = (zs > 5).double().mean().item()
    assert zs.max() < 8, zs.max()
    assert bound / 2 <= p5 <= 2 * bound, (p5, bound)


def test_null_with_scale_search_and_reported_bound(wm):
    """Unmarked clips under the full search: not detected, and the bound is T²·S·Q(z)."""
    for seed in range(4):
        d = PixelWatermark(b"other-%d" % seed).detect(_clip(128, frames=10, seed=seed))
        assert d.z < 8 and not d.detected
        assert d.scales_searched > 1
        # Σ T² over the searched (tile, scale) pairs: 64² per scale, plus 128² where a scale
        # makes the unresized frame large enough for the 128 tile; times the velocities (the
        # 0.25 px/frame grid up to ±2: 17² = 289).
        assert d.velocities_searched == 289
        q = d.scales_searched * d.velocities_searched * sp.gaussian_tail(d.z)
        assert min(1.0, 64**2 * q) * (1 - 1e-9) <= d.fpr_bound <= min(1.0, 128**2 * q)


def test_wrong_key_not_detected(wm, marked_256):
    d = PixelWatermark(b"wrong key").detect(marked_256[:10])
    assert not d.detected and d.z < 8 and d.payload is None


def test_null_velocity_search_calibrated():
    """Drift-compensated folds of unmarked clips, 20 keys × 25 clips × 81 velocities: each
    velocity's z is calibrated like the static one (P(z > 5) within 2× of T²·Q(5)), max < 8."""
    tile, grid = 64, motion.velocity_grid(0.5)
    v = torch.tensor([(vy, vx) for vy in grid for vx in grid], dtype=torch.float64)
    folds = []
    for seed in range(25):
        x = media.moving_shapes(10, 64, seed=100 + seed, contrast=4.0 + seed % 5 * 6)
        folds.append(torch.fft.fft2(sp.fold(pixel_detect.frame_luma(x), tile).double()))
    zs = []
    for k in range(20):
        pat = PixelWatermark(k.to_bytes(4, "big") + b"null-v").patterns(tile)
        idx, freqs = pat.bins("band")
        for f in folds:
            g = torch.zeros(len(v), tile * tile, dtype=torch.complex128)
            g[:, idx] = motion.drift_sum(f.flatten(1)[:, idx], freqs, v)
            g = sp.phase_only_spectrum(g.view(-1, tile, tile), pat.band)
            c = sp.correlate(g, pat.pilot_hat).flatten(1)  # (81, T²)
            med = c.median(1, keepdim=True).values
            mad = (c - med).abs().median(1).values
            zs.append((c.amax(1) - med[:, 0]) / (1.4826 * mad))
    zs = torch.cat(zs)
    bound = tile**2 * sp.gaussian_tail(5.0)
    p5 = (zs > 5).double().mean().item()
    assert zs.max() < 8, zs.max()
    assert bound / 2 <= p5 <= 2 * bound, (p5, bound)


def _drifting(x, wm, v):
    """``x`` (static content) with ``wm``'s mark moved by ``t·v`` px in frame ``t``."""
    delta = wm.embed(x, PAYLOAD).float() - x.float()  # (T, H, W, 3), the static mark
    d = torch.tensor([[t * v[0], t * v[1]] for t in range(len(x))], dtype=torch.float64)
    fy = torch.fft.fftfreq(x.shape[1], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(x.shape[2], dtype=torch.float64)[None, :]
    phase = torch.exp(-2j * torch.pi * (fy * d[:, 0, None, None] + fx * d[:, 1, None, None]))
    moved = torch.fft.ifft2(torch.fft.fft2(delta.permute(3, 0, 1, 2).double()) * phase).real
    return (x.float() + moved.permute(1, 2, 3, 0)).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("v", [(1.0, -1.5), (-0.75, 1.25)])
def test_velocity_search_finds_drifting_mark(v):
    """A mark shifted by t·v in frame t (sub-pixel, static content): found at v, not at 0."""
    wm = PixelWatermark(KEYS[0])
    y = _drifting(_clip(128, pan=0.0, frames=10), wm, v)
    assert not wm.detect(y, velocities=None).detected  # a static mark only: smeared
    d = wm.detect(y, scales=None, velocities=[v])
    assert d.detected and d.payload == PAYLOAD and d.velocity == v, d
    d = wm.detect(y)  # the search: 0.5 px/frame grid, refined to 0.25 (±0.25 barely matters)
    assert d.detected and d.payload == PAYLOAD, d
    assert max(abs(a - b) for a, b in zip(d.velocity, v, strict=True)) <= 0.25, d
    assert d.velocities_searched == 289 and d.to_dict()["velocity"] == list(d.velocity)


def test_mark_follows_the_camera():
    """Panning 1 px/frame (the content moves by −1, −1): the mark moves with it; a static
    camera is marked as without motion; a track continues the motion across calls."""
    for seed in (1, 2, 3):
        still = _clip(128, pan=0.0, seed=seed)
        d = motion.follow(motion.spectra(sp.luma(still)), still.shape[1:3], motion.MotionTrack())
        assert torch.equal(d, torch.zeros(len(still), 2, dtype=torch.float64))
    x = _clip(128, pan=1.0, seed=1)
    wm = PixelWatermark(KEYS[0])
    y = wm.embed(x, PAYLOAD)
    d = wm.detect(y[:10], scales=None)
    assert d.detected and d.velocity == (-1.0, -1.0), d
    track = motion.MotionTrack()
    parts = torch.cat(
        [wm.embed(x[:10], PAYLOAD, track=track), wm.embed(x[10:], PAYLOAD, track=track)]
    )
    assert torch.equal(parts, y) and track.displacement == (-19.0, -19.0)


# ----------------------------------------------------------------------------------------------
# Imperceptibility, determinism, API
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 128, 256])
def test_psnr_at_default_strength(wm, size):
    x = _clip(size, frames=4, contrast=16.0)
    y = wm.embed(x, PAYLOAD)
    assert media.psnr(x, y) >= 38.0
    diff = y.int() - x.int()  # luma only: the same Δ on R, G, B except where a channel clips
    unclipped = ((y > 0) & (y < 255)).all(-1)
    assert (diff[..., 0] == diff[..., 1])[unclipped].all()
    assert (diff[..., 1] == diff[..., 2])[unclipped].all()


def test_deterministic_and_shape_preserving(wm):
    x = _clip(64, frames=3)
    a, b = wm.embed(x, 7), PixelWatermark(KEY).embed(x, 7)
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.dtype == torch.uint8 and a.device == x.device
    assert not torch.equal(a, PixelWatermark(b"another").embed(x, 7))
    assert not torch.equal(a, wm.embed(x, 8))
    assert wm.embed(a, 7).shape == a.shape  # embedding again keeps shape and dtype


def test_bits_and_json(wm, marked_256):
    d = wm.detect(marked_256[:10])
    assert d.bits == payload_bits(PAYLOAD) and len(d.bits) == 40
    back = json.loads(json.dumps(d.to_dict()))
    assert back["payload"] == PAYLOAD and back["shift"] == list(d.shift)
    assert SCHEME == "mdiff-pixel-v1"


def test_tile_for(wm):
    assert wm.tile_for(64, 64) == 64 and wm.tile_for(128, 96) == 64
    assert wm.tile_for(720, 1280) == 128
    assert PixelWatermark(KEY, tile=96).tile_for(64, 64) == 96


@pytest.mark.parametrize(
    "frames",
    [
        torch.zeros(2, 64, 64, 3),  # float
        torch.zeros(2, 64, 64, 4, dtype=torch.uint8),  # RGBA
        torch.zeros(64, 64, 3, dtype=torch.uint8),  # no time axis
        torch.zeros(2, 16, 64, 3, dtype=torch.uint8),  # too small to mark
        torch.zeros(0, 64, 64, 3, dtype=torch.uint8),  # no frames
        [[0]],
    ],
)
def test_bad_frames(wm, frames):
    with pytest.raises(InvalidInputError):
        wm.embed(frames, 1)


@pytest.mark.parametrize("payload", [-1, 2**32, 1.5, True])
def test_bad_payload(wm, payload):
    with pytest.raises(InvalidInputError):
        wm.embed(torch.zeros(1, 64, 64, 3, dtype=torch.uint8), payload)


def test_bad_detect_and_config(wm):
    with pytest.raises(InvalidInputError):
        wm.detect(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))
    with pytest.raises(InvalidInputError):
        wm.detect(torch.zeros(1, 64, 64, 3, dtype=torch.float32))
    with pytest.raises(InvalidInputError):
        PixelWatermark(b"")
    with pytest.raises(InvalidInputError):
        PixelWatermark(KEY, alpha=-1)
    with pytest.raises(InvalidInputError):
        PixelWatermark(KEY, band=(0.2, 0.1))
    with pytest.raises(InvalidInputError):
        PixelWatermark(KEY, tile=16)  # too few band bins for 40 bits
