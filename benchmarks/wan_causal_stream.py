"""Causal streaming of a Wan-architecture model: time per chunk and memory vs stream length.

Run (in benchmarks/RESULTS.md):
  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/wan_causal_stream.py --threads 2

A tiny random `CausalWanTransformer` (4 layers, 4 heads × 32, 16 latent channels) streamed by
the full pipeline (`VideoPipeline.stream`, Self-Forcing settings: 4 steps per block of 3
latent frames, the finished block re-run clean into the KV cache, VAE decode and watermark of
every chunk) at 64×64 pixels, for a short and a long stream (`--chunks`). Three caches:

- window: a rolling KV window of `--window` latent frames with `--sink` sink frames (`WanCache`);
- ring: the same window in the fixed-shape `WanRingCache` (torch.compile-friendly);
- unbounded: every earlier frame kept (the anchor; its cost grows with the stream).

Time per chunk: the wall time between consecutive chunks handed out by `stream()` (each chunk
dropped, as a writer would), averaged over the stream's last quarter. Memory: peak bytes of
tensors allocated while the whole stream runs (torch profiler, CPU allocator).
Goals: with a window, per-chunk time and peak memory of the long stream ≤ 1.1× the short one's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import command_line, peak_bytes  # noqa: E402

WAN = dict(num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16,
           text_dim=32, freq_dim=64, ffn_dim=512, num_layers=4, rope_max_seq_len=1024)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chunks", type=int, nargs=2, default=[6, 24], help="short and long stream")
    p.add_argument("--window", type=int, default=9, help="latent frames a chunk sees")
    p.add_argument("--sink", type=int, default=3)
    p.add_argument("--size", type=int, default=64, help="pixels (square)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def build(window: int | None, sink: int, fixed: bool, size: int):
    from mdiff.provenance import Stamper
    from mdiff.video.dit.wan import WanTransformer, WanTransformerConfig
    from mdiff.video.dit.wan_causal import CausalWanConfig, CausalWanTransformer
    from mdiff.video.pipeline.causal_wan import SELF_FORCING_SETTINGS, CausalWanDenoiser
    from mdiff.video.pipeline.video_pipeline import VideoPipeline
    from mdiff.video.text_encoders import ShapesTextEncoder, ShapesTextEncoderConfig
    from mdiff.video.vae.model import CausalVAE, CausalVAEConfig

    torch.manual_seed(0)
    vae = CausalVAE(CausalVAEConfig(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                    latents_mean=[0.0] * 16, latents_std=[1.0] * 16))  # fmt: skip
    text = ShapesTextEncoder(ShapesTextEncoderConfig(dim=32, heads=2, depth=1))
    causal = CausalWanConfig(3, window, sink if window else 0)
    model = CausalWanTransformer.from_wan(WanTransformer(WanTransformerConfig(**WAN)), causal)
    settings = {**SELF_FORCING_SETTINGS, "height": size, "width": size}
    home = Path(os.environ.get("TMPDIR", "/tmp")) / "mdiff-bench-home"
    return VideoPipeline(vae.eval(), CausalWanDenoiser(model, fixed_cache=fixed), text.eval(),
                         model_id="bench-causal-wan", stamper=Stamper(home=home),
                         **settings)  # fmt: skip


def chunk_times(pipe, frames: int) -> list[float]:
    """Seconds between consecutive chunks of one stream (the first from the call)."""
    times, last = [], time.perf_counter()
    for _chunk in pipe.stream("a red circle moves right", num_frames=frames, seed=0):
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(command_line())
    print(f"tiny causal Wan {WAN}, {args.size}x{args.size} px, 3 latent frames per chunk, "
          f"Self-Forcing 4 steps, fp32, CPU, {args.threads} thread(s)")  # fmt: skip
    variants = {
        f"window {args.window}+sink {args.sink}": (args.window, False),
        "ring (fixed shape)": (args.window, True),
        "unbounded (anchor)": (None, False),
    }
    print(f"{'cache':<20} {'chunks':>6} {'s/chunk (last 1/4)':>19} {'peak MiB':>9}")
    rows = {}
    with torch.inference_mode():
        for name, (window, fixed) in variants.items():
            pipe = build(window, args.sink, fixed, args.size)
            chunk_times(pipe, 1 + 4 * (3 * 2 - 1))  # warm-up: two chunks
            for k in args.chunks:
                frames = 1 + 4 * (3 * k - 1)  # k chunks of 3 latent frames
                times = chunk_times(pipe, frames)
                tail = times[-max(1, k // 4) :]
                per = sum(tail) / len(tail)
                mem = peak_bytes(lambda pipe=pipe, f=frames: chunk_times(pipe, f)) / 2**20
                rows[name, k] = (per, mem)
                print(f"{name:<20} {k:>6} {per:>19.3f} {mem:>9.1f}", flush=True)
    short, long = args.chunks
    print(f"long ({long} chunks) vs short ({short} chunks):")
    for name in variants:
        (ts, ms), (tl, ml) = rows[name, short], rows[name, long]
        print(f"  {name:<20} time per chunk {tl / ts:5.2f}x  peak memory {ml / ms:5.2f}x")


if __name__ == "__main__":
    main()
