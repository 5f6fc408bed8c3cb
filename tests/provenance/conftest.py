"""Shared provenance fixtures: a temporary MDIFF_HOME, a dev identity, small media files.

Media are generated, never downloaded: a 64x64 noisy-gradient PNG and JPEG, a 12-frame H.264
MP4 (faststart off), the same clip as a fragmented MP4 (moof/mdat per keyframe), and a small
Python source file for sidecar signing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mdiff.record import GenerationRecord, WatermarkInfo


def procedural_frames(n: int, h: int, w: int, seed: int = 0):
    """``n`` uint8 frames ``(h, w, 3)``: moving gradients plus noise (incompressible enough)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    for t in range(n):
        rgb = np.stack([(xx + 3 * t) % 64 * 4, (yy + 2 * t) % 64 * 4, (xx + yy + t) % 32 * 8], -1)
        noise = rng.integers(-8, 9, rgb.shape)
        yield np.clip(rgb + noise, 0, 255).astype(np.uint8)


def write_mp4(path: Path, n: int = 12, h: int = 64, w: int = 64, *, fragmented: bool = False,
              fps: int = 12, crf: int = 23) -> Path:  # fmt: skip
    """Encode procedural frames with the library's writers (``fragmented``: one fragment per
    4-frame chunk, through the live fragmented-MP4 writer)."""
    from mdiff import media
    from mdiff.video.io import FragmentedMP4Writer

    frames = torch.from_numpy(np.stack(list(procedural_frames(n, h, w))))
    if not fragmented:
        return media.write_mp4(frames, path, fps=fps, crf=crf)
    with FragmentedMP4Writer(path, fps=fps, crf=crf) as writer:
        for chunk in frames.split(4):
            writer.write(chunk)
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty MDIFF_HOME for this test."""
    path = tmp_path / "mdiff-home"
    monkeypatch.setenv("MDIFF_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def dev(tmp_path_factory):
    """A session-wide development identity: (home, Identity, TrustConfig with its root)."""
    from mdiff.provenance.keys import TrustConfig, init_dev_identity

    home = tmp_path_factory.mktemp("dev-home")
    identity = init_dev_identity(home)
    return home, identity, TrustConfig.default(home)


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """Unsigned inputs by kind: png, jpeg, mp4, fmp4, text (read-only: copy before changing)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("media")
    image = next(procedural_frames(1, 64, 64, seed=1))
    Image.fromarray(image).save(d / "in.png")
    Image.fromarray(image).save(d / "in.jpg", quality=90)
    code = "".join(f"def add_{i}(a, b):\n    return a + b + {i}\n\n" for i in range(40))
    (d / "in.py").write_text(code, encoding="utf-8")
    return {
        "png": d / "in.png",
        "jpeg": d / "in.jpg",
        "mp4": write_mp4(d / "in.mp4"),
        "fmp4": write_mp4(d / "in_frag.mp4", fragmented=True),
        "text": d / "in.py",
    }


@pytest.fixture
def record() -> GenerationRecord:
    """A watermarked video record whose prompt is hashed, not kept."""
    wm = WatermarkInfo("mdiff-pixel-v1", "k0123abcd", "a1b2c3d4", {"alpha": 2.0})
    rec = GenerationRecord.create("video", "tamper-test-model", prompt="a private prompt",
                                  seed=7, steps=4, sampler="euler")  # fmt: skip
    return rec.with_watermark(wm)
