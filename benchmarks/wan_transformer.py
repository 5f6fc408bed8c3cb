"""Wan transformer forward on CPU: time and peak tensor memory, ours vs diffusers.

Run (in benchmarks/RESULTS.md):
  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/wan_transformer.py --threads 2

The real Wan 2.1 T2V 1.3B config (dim 1536 = 12 heads × 128, 30 layers, ffn 8960, text 4096,
patch 1×2×2; random weights), fp32, one clip of `--frames` latent frames at `--size` pixels
(5 frames at 128² = 320 tokens by default) and 512 text states: `--text-tokens` real ones
(random) followed by zero rows, as Wan's pipeline pads a prompt's T5 states (512 = no padding).
One set of weights serves both models (ours is loaded from diffusers' state dict with
`assign=True`, so no second copy), the anchor is diffusers' `WanTransformer3DModel` forward in
the same run, the two interleaved, best of `--reps` after one warm-up. Memory: peak bytes of
tensors allocated during the call (torch profiler, CPU allocator; weights are not counted).
Goals: time ≤ 1.0× diffusers', peak memory ≤ 1.0×.
`--layers N` runs a shallower model (same widths) for a quick check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import best_times, command_line, peak_bytes  # noqa: E402
from mdiff.video.dit.wan import WanTransformer, WanTransformerConfig  # noqa: E402

WAN21_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=5, help="latent frames")
    p.add_argument("--size", type=int, default=128, help="pixels (square; latents are /8)")
    p.add_argument("--layers", type=int, default=WAN21_1_3B["num_layers"])
    p.add_argument("--text-tokens", type=int, default=64, help="real prompt tokens of 512")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    return p.parse_args(argv)


def main() -> None:
    from diffusers import WanTransformer3DModel

    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = dict(WAN21_1_3B, num_layers=args.layers)
    print(command_line())
    ref = WanTransformer3DModel(**config).eval()
    ours = WanTransformer(WanTransformerConfig(**config))
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)  # the same tensors
    ours.eval()
    n = sum(p.numel() for p in ref.parameters())
    lat = args.size // 8
    x = torch.randn(1, 16, args.frames, lat, lat)
    timestep = torch.tensor([500.0])
    text = torch.randn(1, 512, 4096)
    text[:, args.text_tokens :] = 0  # WanPipeline's zero padding to 512
    tokens = args.frames * (lat // 2) ** 2
    print(f"Wan 2.1 1.3B config, {args.layers} layers ({n / 1e9:.2f}B parameters), fp32, CPU, "
          f"{args.threads} thread(s); latents {tuple(x.shape)} = {tokens} tokens, text "
          f"{args.text_tokens} real + {512 - args.text_tokens} zero rows, "
          f"best of {args.reps}")  # fmt: skip
    runs = {
        "ours": lambda: ours.forward_diffusers(x, timestep, text),
        "diffusers": lambda: ref(x, timestep, text, return_dict=False)[0],
    }
    with torch.inference_mode():
        diff = (runs["ours"]() - runs["diffusers"]()).abs().max().item()  # also the warm-up
        print(f"max |ours - diffusers| = {diff:.2e}")
        times = best_times(runs, args.reps)
        mems = {name: peak_bytes(fn) / 2**20 for name, fn in runs.items()}
    print(f"{'run':<10} {'time s':>8} {'peak MiB':>9}")
    for name in runs:
        print(f"{name:<10} {times[name]:>8.3f} {mems[name]:>9.1f}")
    print(f"ours vs diffusers: time {times['ours'] / times['diffusers']:.2f}x (goal <= 1.0x), "
          f"peak memory {mems['ours'] / mems['diffusers']:.2f}x (goal <= 1.0x)")  # fmt: skip


if __name__ == "__main__":
    main()
