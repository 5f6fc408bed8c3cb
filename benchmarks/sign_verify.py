"""C2PA cost on a ~5 MB MP4: sign (file -> file) and verify, against H.264-encoding the clip.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sign_verify.py [--reps 7]

The anchor is the time libx264 takes to encode the same clip in the same run; the printed
ratio (sign + verify) / encode says how much provenance adds to writing a video.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from mdiff.provenance.inspect import read_manifest
from mdiff.provenance.keys import TrustConfig, init_dev_identity
from mdiff.provenance.sign import sign_file
from mdiff.record import GenerationRecord


def frames(n: int, h: int, w: int) -> list[np.ndarray]:
    """Procedural uint8 (h, w, 3) frames: moving gradients plus noise (keeps bitrate up)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for t in range(n):
        rgb = np.stack([(xx + 4 * t) % 256, (yy + 3 * t) % 256, (xx + yy + 2 * t) % 256], -1)
        out.append(np.clip(rgb + rng.integers(-48, 49, rgb.shape), 0, 255).astype(np.uint8))
    return out


def encode(path: Path, clip: list[np.ndarray], fps: int = 24, crf: int = 23) -> float:
    """Encode ``clip`` with libx264 (preset medium); returns seconds."""
    t0 = time.perf_counter()
    with av.open(str(path), "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=fps)
        s.height, s.width, s.pix_fmt = clip[0].shape[0], clip[0].shape[1], "yuv420p"
        s.options = {"crf": str(crf), "preset": "medium"}
        for f in clip:
            out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(s.encode())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--frames", type=int, default=88)
    ap.add_argument("--size", type=int, nargs=2, default=(360, 640), metavar=("H", "W"))
    args = ap.parse_args()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        identity = init_dev_identity(d / "home")
        trust = TrustConfig.default(d / "home")
        clip = frames(args.frames, *args.size)
        src = d / "clip.mp4"
        t_enc = [encode(src, clip) for _ in range(max(1, args.reps // 2))]
        rec = GenerationRecord.create("video", "bench", prompt="bench", seed=0)
        t_sign, t_read = [], []
        for i in range(args.reps):
            t0 = time.perf_counter()
            out = sign_file(src, d / f"signed{i}.mp4", rec, identity, trust=trust)
            t_sign.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            report = read_manifest(out, trust=trust)
            t_read.append(time.perf_counter() - t0)
            assert report.state == "trusted", report.failures
        med = {k: statistics.median(v) for k, v in
               {"encode": t_enc, "sign": t_sign, "verify": t_read}.items()}  # fmt: skip
        size = src.stat().st_size / 1e6
        print(f"clip: {args.frames} frames {args.size[1]}x{args.size[0]}, H.264 {size:.2f} MB")
        print(f"encode (libx264 medium, crf 23): {med['encode'] * 1e3:9.1f} ms  (n={len(t_enc)})")
        print(f"sign file->file:                 {med['sign'] * 1e3:9.1f} ms  (n={args.reps})")
        print(f"verify (read_manifest):          {med['verify'] * 1e3:9.1f} ms  (n={args.reps})")
        ratio = (med["sign"] + med["verify"]) / med["encode"]
        print(f"(sign + verify) / encode:        {ratio:9.4f}")


if __name__ == "__main__":
    main()
