"""Re-anchored decoding of long clips with the shipped VAE: quality and cost vs plain decoding.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/vae_reanchor.py [--frames 129] [--threads 2]

The shipped `shapes-vae` was trained on 17-frame clips. Four unseen shapes clips of `--frames`
frames (one object, then two) are encoded once; their latents are decoded streaming, one latent
per push, two ways:

- plain (the anchor): one decoder state over the whole clip (`reanchor=False`);
- re-anchored (the default): the decoder restarts on a re-encoded key frame every 3 latents
  past the first 17 frames (`DecodeSession`).

Quality: round-trip PSNR against the input frames, per block of 16 frames and for the frames
inside / past the training length, beside a reference that never leaves the training length:
every group of 4 frames past it cut out with the 13 frames before it and round-tripped as a
fresh 17-frame clip (`windowed`).

Cost: best of `--reps` interleaved wall times, of the decode alone (one clip), and of the
built-in pipeline streaming a `--frames` clip of one caption (the same run with the decoder
not re-anchored is the anchor).
Goals: past the training length, re-anchored PSNR ≥ the reference's − 1 dB; the stream ≤ 1.1×.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mdiff.video.data import ShapesDataset  # noqa: E402
from mdiff.video.pipeline.video_pipeline import VideoPipeline  # noqa: E402
from mdiff.video.vae.model import CausalVAE  # noqa: E402

UNSEEN_SEED = 2_000_003  # as tests/video/test_builtin_vae.py


def streamed(vae: CausalVAE, z: torch.Tensor, reanchor: bool) -> torch.Tensor:
    session = vae.decode_stream(reanchor=reanchor)
    return torch.cat([session.push(z[:, :, i : i + 1]) for i in range(z.shape[2])], dim=2)


def windowed(vae: CausalVAE, x: torch.Tensor) -> torch.Tensor:
    """Each group of f frames past the training length, round-tripped inside a fresh clip of the
    training length that ends with it; the first clip as it is."""
    n, f = vae.trained_frames, vae.temporal_factor
    out = [vae.decode(vae.encode(x[:, :, :n]))]
    for end in range(n + f, x.shape[2] + 1, f):
        out.append(vae.decode(vae.encode(x[:, :, end - n : end]))[:, :, -f:])
    return torch.cat(out, dim=2)


def best_times(run, modes: dict, reps: int) -> dict:
    """Best wall time of `run(reanchor)` per mode over `reps` rounds, the modes interleaved."""
    best = dict.fromkeys(modes, float("inf"))
    run(True)  # warm-up
    for _ in range(reps):
        for name, reanchor in modes.items():
            t = time.perf_counter()
            run(reanchor)
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def stream_pipeline(pipe: VideoPipeline, frames: int, reanchor: bool) -> None:
    trained = pipe.vae.trained_frames
    pipe.vae.trained_frames = trained if reanchor else None  # no training length: no anchors
    try:
        for _ in pipe.stream("a red circle moving right", num_frames=frames, seed=0):
            pass
    finally:
        pipe.vae.trained_frames = trained


def psnr_per_frame(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    mse = (y - x).square().mean(dim=(0, 1, 3, 4))  # pixels in [-1, 1]
    return 10 * torch.log10(4 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=129)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vae = CausalVAE.from_pretrained("shapes-vae").eval()
    trained = vae.trained_frames
    print(f"OMP_NUM_THREADS={args.threads} .venv/bin/python benchmarks/vae_reanchor.py "
          f"--frames {args.frames} --threads {args.threads}")  # fmt: skip
    print(f"shapes-vae, trained on {trained}-frame clips; {args.frames} frames at 64x64, fp32")
    modes = {"plain": False, "re-anchored": True}
    past_psnr = {}
    for objects in (1, 2):
        data = ShapesDataset(4, num_frames=args.frames, max_objects=objects, seed=UNSEEN_SEED)
        x = torch.stack([data[i]["pixels"] for i in range(4)])
        with torch.inference_mode():
            z = vae.encode(x)
            print(f"\n## {objects} object(s): 4 clips, PSNR dB per block of 16 frames")
            decoded = {name: streamed(vae, z, r) for name, r in modes.items()}
            for name, y in {**decoded, "reference": windowed(vae, x)}.items():
                p = psnr_per_frame(y, x)
                blocks = " ".join(f"{float(b.mean()):.1f}" for b in p[1:].split(16))
                inside, past = float(p[1:trained].mean()), float(p[trained:].mean())
                past_psnr[objects, name] = past
                print(f"{name:<12} inside {inside:.2f}  past {past:.2f}  [{blocks}]")
            if objects == 1:
                decode = best_times(lambda r, z=z[:1]: streamed(vae, z, r), modes, args.reps)
    pipe = VideoPipeline.from_pretrained("shapes-t2v")
    stream = best_times(lambda r: stream_pipeline(pipe, args.frames, r), modes, args.reps)
    print()
    for objects in (1, 2):
        gap = past_psnr[objects, "reference"] - past_psnr[objects, "re-anchored"]
        met = "met" if gap <= 1.0 else "NOT met"
        print(f"goal re-anchored within 1 dB of the reference past {trained} frames "
              f"({objects} object(s)): {met} ({gap:.2f} dB)")  # fmt: skip
    for what, best in (("decode alone", decode), ("shapes-t2v stream", stream)):
        ratio = best["re-anchored"] / best["plain"]
        print(f"{what}, one clip, best of {args.reps}: plain {best['plain']:.3f} s, "
              f"re-anchored {best['re-anchored']:.3f} s, ratio {ratio:.2f}x")  # fmt: skip
    ratio = stream["re-anchored"] / stream["plain"]
    print(f"goal stream time <= 1.1x: {'met' if ratio <= 1.1 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
