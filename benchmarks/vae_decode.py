"""Causal VAE decode: time and peak tensor memory vs length, ours (streaming, whole) vs diffusers.

Run (both are in benchmarks/RESULTS.md):
  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vae_decode.py                  # tiny, 64², 1 thread
  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/vae_decode.py --config wan2.1 \
      --size 128 --frames 17 49 --threads 2                                    # real Wan 2.1 VAE

One random VAE — `tiny` (base 8, dim_mult 1,2,4,4, 2 res blocks, z 4) or `wan2.1` (diffusers'
`AutoencoderKLWan()` defaults: base 96, z 16, the real Wan 2.1 VAE, 127M parameters) — with one
set of weights loaded into both mdiff's `CausalVAE` and diffusers' `AutoencoderKLWan` (the
anchor), fp32 on CPU:

- (a) ours, streaming: `decode_stream()`, one latent per push, each chunk dropped (as a writer
  would consume it);
- (b) ours, whole clip: `decode(z)` in one push;
- (c) diffusers `AutoencoderKLWan.decode(z)`.

Time: best of `--reps` runs after one warm-up call, the three runs interleaved (fair under
load). Memory: peak bytes of tensors allocated during the call (torch profiler memory events,
CPU allocator), outputs included; the input latents are not counted.
Goals: (a) or (b) time ≤ 0.8× (c); (a) peak at the longest length ≤ 1.1× its peak at the
shortest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import best_times, command_line, peak_bytes  # noqa: E402
from mdiff.video.vae.model import CausalVAE, CausalVAEConfig  # noqa: E402

CONFIGS = {
    "tiny": dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
    "wan2.1": dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--size", type=int, default=64, help="pixels (square)")
    p.add_argument("--frames", type=int, nargs="+", default=[17, 65, 129])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    return p.parse_args(argv)


def main() -> None:
    from diffusers import AutoencoderKLWan

    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = CONFIGS[args.config]
    zc = config["z_dim"]
    stats = dict(latents_mean=[0.0] * zc, latents_std=[1.0] * zc)
    ref = AutoencoderKLWan(**config, **stats).eval()
    ours = CausalVAE(CausalVAEConfig(**config, **stats)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    s, size = ours.spatial_factor, args.size

    def streaming(z):
        session = ours.decode_stream(normalize=False)
        for i in range(z.shape[2]):
            session.push(z[:, :, i : i + 1])  # chunk handed on and dropped

    runs = {
        "a ours streaming": streaming,
        "b ours whole": lambda z: ours.decode(z, normalize=False),
        "c diffusers": lambda z: ref.decode(z).sample,
    }
    print(command_line())
    n = sum(p.numel() for p in ours.parameters())
    print(f"config {args.config} {config} ({n / 1e6:.1f}M parameters), {size}x{size} px, fp32, "
          f"CPU, {args.threads} thread(s), best of {args.reps}")  # fmt: skip
    results = {}
    with torch.inference_mode():
        z = torch.randn(1, zc, 2, size // s, size // s)
        diff = (ours.decode(z, normalize=False) - ref.decode(z).sample).abs().max().item()
        print(f"max |ours - diffusers| on a 5-frame decode: {diff:.2e}")
        print(f"{'frames':>6} {'run':<18} {'time s':>8} {'peak MiB':>9}")
        for frames in args.frames:
            z = torch.randn(1, zc, 1 + (frames - 1) // 4, size // s, size // s)
            for fn in runs.values():
                fn(z)  # warm-up: oneDNN builds its kernels for new shapes on the first call
            fns = {name: lambda fn=fn, z=z: fn(z) for name, fn in runs.items()}
            times = best_times(fns, args.reps)
            for name, fn in runs.items():
                t = times[name]
                mem = peak_bytes(lambda fn=fn, z=z: fn(z)) / 2**20
                results[frames, name] = (t, mem)
                print(f"{frames:>6} {name:<18} {t:>8.3f} {mem:>9.1f}", flush=True)
    print("ratios (time vs diffusers; peak memory vs diffusers):")
    for frames in args.frames:
        ct, cm = results[frames, "c diffusers"]
        for name in ("a ours streaming", "b ours whole"):
            t, m = results[frames, name]
            print(f"{frames:>6} {name:<18} time {t / ct:5.2f}x  memory {m / cm:5.2f}x")
    lo, hi = min(args.frames), max(args.frames)
    m_lo, m_hi = results[lo, "a ours streaming"][1], results[hi, "a ours streaming"][1]
    print(f"streaming peak memory {hi} vs {lo} frames: {m_hi / m_lo:.2f}x (goal <= 1.1x)")


if __name__ == "__main__":
    main()
