"""Closed-form and reference checks of the weight-free video metrics."""

import math

import numpy as np
import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.video.eval import metrics as ev


def _video(seed=0, t=4, h=24, w=20):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 3), generator=g, dtype=torch.uint8)


def test_psnr_identical_is_inf_and_known_noise_level():
    a = _video()
    assert torch.isinf(ev.psnr(a, a)).all()
    x = torch.full((3, 16, 16, 3), 0.5, dtype=torch.float64)
    sign = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -1, 1)
    noisy = x + 0.01 * sign  # |error| = 0.01 exactly -> MSE = 1e-4
    expected = 10 * math.log10(1.0 / 1e-4)  # range 1 -> 40 dB
    assert torch.allclose(
        ev.psnr(x, noisy, data_range=1.0), torch.full((3,), expected, dtype=torch.float64)
    )
    # uint8: an error of 1 level everywhere -> 20 log10(255) dB
    b = a.clone().to(torch.int16).add(1).clamp(max=255)
    b = torch.where(a == 255, a.to(torch.int16) - 1, b).to(torch.uint8)
    assert torch.allclose(
        ev.psnr(a, b), torch.full((4,), 20 * math.log10(255), dtype=torch.float64)
    )


def _ssim_direct(x, y, rng, win=11, sigma=1.5):
    """A loop-per-window SSIM on one single-channel image (numpy), the definition itself."""
    g = np.exp(-((np.arange(win) - (win - 1) / 2) ** 2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    vals = []
    for i in range(x.shape[0] - win + 1):
        for j in range(x.shape[1] - win + 1):
            px, py = x[i : i + win, j : j + win], y[i : i + win, j : j + win]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            vals.append(
                (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            )
    return float(np.mean(vals))


def test_ssim_matches_direct_definition_and_closed_forms():
    a = _video(0, t=2, h=16, w=14)
    noise = torch.randint(-30, 31, a.shape, generator=torch.Generator().manual_seed(3))
    b = (a.to(torch.int16) + noise).clamp(0, 255).to(torch.uint8)
    got = ev.ssim(a, b)
    for t in range(2):
        ref = np.mean(
            [
                _ssim_direct(a[t, :, :, c].double().numpy(), b[t, :, :, c].double().numpy(), 255.0)
                for c in range(3)
            ]
        )
        assert abs(float(got[t]) - ref) < 1e-10
    assert torch.allclose(ev.ssim(a, a), torch.ones(2, dtype=torch.float64))
    # constant images: no variance, SSIM = luminance term exactly
    u, v = (
        torch.full((1, 12, 12, 3), 100, dtype=torch.uint8),
        torch.full((1, 12, 12, 3), 150, dtype=torch.uint8),
    )
    c1 = (0.01 * 255) ** 2
    assert abs(float(ev.ssim(u, v)[0]) - (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)) < 1e-12
    heavy = (a.to(torch.int16) + 4 * noise).clamp(0, 255).to(torch.uint8)
    assert (ev.ssim(a, heavy) < got).all() and (got < 1).all()


def test_flicker_zero_for_static_and_positive_for_changes():
    static = _video(2, t=1).expand(6, -1, -1, -1)
    assert ev.flicker(static) == 0.0
    assert ev.flicker(_video(3, t=6)) > 0.2
    with pytest.raises(InvalidInputError):
        ev.flicker(_video(4, t=1))


def _moving_clip(t=17):
    """A smooth clip: a bright bar sliding one pixel per frame."""
    video = torch.zeros(t, 16, 32, 3)  # mid-grey background
    for k in range(t):
        video[k, :, k : k + 6] = 0.6
    return video


def test_seam_jump_detects_a_discontinuity_at_chunk_boundaries():
    video = _moving_clip()
    chunks = [1, 4, 4, 4, 4]
    clean = ev.seam_jump(video, chunks)
    assert clean.boundaries == (1, 5, 9, 13)
    assert 0.8 < clean.ratio < 1.25
    broken = video.clone()
    for n, start in enumerate(clean.boundaries):  # a cache bug: chunks alternate in brightness
        broken[start : start + 4] += 0.1 if n % 2 else -0.1
    report = ev.seam_jump(broken, chunks)
    assert report.ratio > 3 and report.boundary > clean.boundary
    with pytest.raises(InvalidInputError):
        ev.seam_jump(video, [4, 4])


def test_drift_zero_for_motion_and_grows_with_fading():
    video = _moving_clip()
    d = ev.drift(video)
    assert d.shape == (17,) and float(d.max()) < 1e-12  # pure translation: same histogram
    fade = video - torch.linspace(0.0, 0.8, 17)[:, None, None, None]  # darkening over time
    f = ev.drift(fade)
    assert f[0] == 0 and f[-1] > 1.5  # at the end no pixel shares a bin with the start
    assert float(f[1:].min()) > 1.0  # every later frame has moved off the start's colours
    assert ev.drift(fade, ref_frames=17)[0] > 0  # the reference is the mean of 17 frames


def test_shape_mismatch_and_bad_input_raise():
    with pytest.raises(InvalidInputError):
        ev.psnr(_video(0), _video(0, h=10))
    with pytest.raises(InvalidInputError):
        ev.ssim(_video(0, h=8, w=8), _video(1, h=8, w=8))
