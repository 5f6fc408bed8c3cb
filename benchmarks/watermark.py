"""Pixel watermark (mdiff-pixel-v1): speed, PSNR, H.264 bitrate cost, robustness per attack.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/watermark.py

Content: procedural video (panning 1/f texture, std 8 levels, with moving shapes; 20 frames,
10-frame windows). Anchor for the bitrate cost: the same frames encoded unmarked, same run.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mdiff.provenance.watermark.pixel import PixelWatermark, payload_bits  # noqa: E402
from tests.provenance import media  # noqa: E402

CMD = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/watermark.py"
PAYLOAD = 0xA1B2C3D4


def timed(fn, reps: int = 3) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def speed(wm: PixelWatermark) -> None:
    print("\n## speed (CPU, 1 thread, median of 3; per frame, detect folds 10 frames)")
    print("| size | embed ms/frame | detect ms/f (scale 1) | detect ms/f (auto) | S | PSNR dB |")
    print("|---|---|---|---|---|---|")
    for h, w in ((64, 64), (256, 256), (720, 1280)):
        x = media.moving_shapes(10, (h, w), seed=3)
        y = wm.embed(x, PAYLOAD)
        e = timed(lambda x=x: wm.embed(x, PAYLOAD)) / 10
        d1 = timed(lambda y=y: wm.detect(y, scales=None)) / 10
        da = timed(lambda y=y: wm.detect(y), reps=1) / 10
        s = wm.detect(y).scales_searched
        psnr = media.psnr(x, y)
        print(f"| {h}×{w} | {e * 1e3:.1f} | {d1 * 1e3:.1f} | {da * 1e3:.1f} | {s} | {psnr:.1f} |")


def bitrate(wm: PixelWatermark) -> None:
    print("\n## H.264 bitrate cost at equal CRF (libx264 medium, 20 frames, marked vs unmarked)")
    print("| size | CRF | unmarked bytes | marked bytes | overhead |")
    print("|---|---|---|---|---|")
    for size in (128, 256):
        x = media.moving_shapes(20, size, seed=1, contrast=8.0)
        y = wm.embed(x, PAYLOAD)
        for crf in (23, 28):
            a, b = media.h264_roundtrip(x, crf)[1], media.h264_roundtrip(y, crf)[1]
            print(f"| {size}² | {crf} | {a} | {b} | {100 * (b / a - 1):+.1f} % |")


def robustness(wm: PixelWatermark) -> None:
    print("\n## robustness: 10-frame windows (2 per clip); min z, mean bit acc (40 bits), exact")
    truth = payload_bits(PAYLOAD)
    print("| size | camera | " + " | ".join(media.ATTACKS) + " |")
    print("|---|---|" + "---|" * len(media.ATTACKS))
    for size in (64, 128, 256, 384):
        for pan in (1.0, 0.0):
            x = media.moving_shapes(20, size, seed=1, pan=pan, contrast=8.0)
            y = wm.embed(x, PAYLOAD)
            cells = []
            for attack in media.ATTACKS.values():
                ds = wm.detect_windows(attack(y), 10)
                acc = statistics.mean(sum(map(int.__eq__, d.bits, truth)) / 40 for d in ds)
                ok = sum(d.detected and d.payload == PAYLOAD for d in ds)
                cells.append(f"{min(d.z for d in ds):.1f} / {acc:.2f} / {ok}/{len(ds)}")
            cam = "pan 1 px/f" if pan else "static"
            print(f"| {size}² | {cam} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    print(CMD)
    wm = PixelWatermark(b"benchmark key")
    speed(wm)
    bitrate(wm)
    robustness(wm)


if __name__ == "__main__":
    main()
