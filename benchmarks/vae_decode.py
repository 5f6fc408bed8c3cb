"""Causal VAE decode: time and peak tensor memory vs length, ours (streaming, whole) vs diffusers.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vae_decode.py

One tiny random Wan-2.1-shaped VAE (base 8, dim_mult 1,2,4,4, 2 res blocks, z 4), one set of
weights loaded into both mdiff's `CausalVAE` and diffusers' `AutoencoderKLWan` (the anchor),
latents for 17, 65 and 129 frames at 64×64 pixels, fp32 on CPU, one thread.

- (a) ours, streaming: `decode_stream()`, one latent per push, each chunk dropped (as a writer
  would consume it);
- (b) ours, whole clip: `decode(z)` in one push;
- (c) diffusers `AutoencoderKLWan.decode(z)`.

Time: best of `REPS` runs after one warm-up call, the three runs interleaved (fair under
load). Memory: peak bytes of tensors allocated during the call (torch profiler memory events,
CPU allocator), outputs included; the input latents are not counted.
Goals: (a) or (b) time ≤ 0.8× (c); (a) peak at 129 frames ≤ 1.1× its peak at 17 frames.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mdiff.video.vae.model import CausalVAE, CausalVAEConfig  # noqa: E402

CMD = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vae_decode.py"
CONFIG = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2)
FRAMES = (17, 65, 129)
SIZE = 64  # pixels
REPS = 3


def peak_bytes(fn) -> int:
    """Peak of tensor bytes allocated (net) while fn runs, from the profiler's memory events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    finally:
        os.unlink(path)
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0)


def best_times(fns: dict) -> dict:
    """Best of REPS wall times per function, the functions interleaved (fair under load)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(REPS):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    from diffusers import AutoencoderKLWan

    torch.set_num_threads(1)
    torch.manual_seed(0)
    stats = dict(latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    ref = AutoencoderKLWan(**CONFIG, **stats).eval()
    ours = CausalVAE(CausalVAEConfig(**CONFIG, **stats)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    s = ours.spatial_factor

    def streaming(z):
        session = ours.decode_stream(normalize=False)
        for i in range(z.shape[2]):
            session.push(z[:, :, i : i + 1])  # chunk handed on and dropped

    runs = {
        "a ours streaming": streaming,
        "b ours whole": lambda z: ours.decode(z, normalize=False),
        "c diffusers": lambda z: ref.decode(z).sample,
    }
    print(CMD)
    print(f"config {CONFIG}, {SIZE}x{SIZE} px, fp32, CPU, 1 thread, best of {REPS}")
    results = {}
    with torch.inference_mode():
        z = torch.randn(1, 4, 2, SIZE // s, SIZE // s)
        diff = (ours.decode(z, normalize=False) - ref.decode(z).sample).abs().max().item()
        print(f"max |ours - diffusers| on a 5-frame decode: {diff:.2e}")
        print(f"{'frames':>6} {'run':<18} {'time s':>8} {'peak MiB':>9}")
        for frames in FRAMES:
            z = torch.randn(1, 4, 1 + (frames - 1) // 4, SIZE // s, SIZE // s)
            for fn in runs.values():
                fn(z)  # warm-up: oneDNN builds its kernels for new shapes on the first call
            times = best_times({name: lambda fn=fn, z=z: fn(z) for name, fn in runs.items()})
            for name, fn in runs.items():
                t = times[name]
                mem = peak_bytes(lambda fn=fn, z=z: fn(z)) / 2**20
                results[frames, name] = (t, mem)
                print(f"{frames:>6} {name:<18} {t:>8.3f} {mem:>9.1f}")
    print("ratios (time vs diffusers; peak memory vs diffusers):")
    for frames in FRAMES:
        ct, cm = results[frames, "c diffusers"]
        for name in ("a ours streaming", "b ours whole"):
            t, m = results[frames, name]
            print(f"{frames:>6} {name:<18} time {t / ct:5.2f}x  memory {m / cm:5.2f}x")
    m17, m129 = results[17, "a ours streaming"][1], results[129, "a ours streaming"][1]
    print(f"streaming peak memory 129 vs 17 frames: {m129 / m17:.2f}x (goal <= 1.1x)")


if __name__ == "__main__":
    main()
