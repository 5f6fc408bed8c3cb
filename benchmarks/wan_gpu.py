"""Wan 2.1-T2V-1.3B on a GPU (issue 28, point 6): our `WanTransformer` vs diffusers'
`WanTransformer3DModel` in the same run, and causal streaming (Self-Forcing settings).

Run (GPU):   python benchmarks/wan_gpu.py                       # 480×832, 81 frames, bf16
Smoke (CPU): OMP_NUM_THREADS=1 python benchmarks/wan_gpu.py --device cpu --dtype fp32 \\
                 --frames 9 --height 64 --width 64 --layers 2 --threads 1

Random weights at the real config (dim 1536 = 12 heads × 128, 30 layers, ffn 8960, text_dim
4096, 16 latent channels, patch (1, 2, 2)): diffusers' model is built and initialised, cast to
`--dtype` with its `_keep_in_fp32_modules` kept in float32 (as its `from_pretrained(...,
torch_dtype=)` does), and ours loads the same state dict (`WanTransformer.cast` keeps the same
parameters in float32). 81 frames at 480×832 are 21 latent frames of 60×104 (32 760 tokens).

1. **Denoising step**: seconds per transformer forward (batch 1, text (1, 512, 4096), as one
   branch of a guided step: classifier-free guidance runs it twice), median of `--reps` after
   `--warmup`; peak CUDA memory (`max_memory_allocated`) during the forwards, and the weights'
   share. Also the max |ours − diffusers| of the outputs (same weights, same inputs).
2. **Causal streaming** (`CausalWanTransformer` over the same weights): chunks of 3 latent
   frames, the 4-step Self-Forcing list warped by shift 5 (`renoise`), each chunk re-run clean
   and committed to the KV cache (window `--window` latent frames, default the whole clip, as
   Self-Forcing's unbounded `local_attn_size`). Time to first frame = time until the first
   chunk's latents are final; fps = pixel frames (1 + 4·(T' − 1)) / stream time. The VAE decode
   is not included. `--ring` uses the fixed-shape `WanRingCache`; `--compile` also
   `torch.compile`s the chunk step (`compile_stream`, compile time in the first chunk).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke runs)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--frames", type=int, default=81, help="pixel frames, 1 + 4k (default 81)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--heads", type=int, default=12, help="attention heads of 128 (dim 1536)")
    p.add_argument("--ffn", type=int, default=8960)
    p.add_argument("--reps", type=int, default=3, help="timed forwards per model")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--window", type=int, default=None,
                   help="causal KV window in latent frames (default: the whole clip)")  # fmt: skip
    p.add_argument("--ring", action="store_true", help="fixed-shape ring KV cache")
    p.add_argument("--compile", action="store_true", help="torch.compile the chunk step")
    p.add_argument("--sdpa", choices=["auto", "flash", "efficient", "math", "cudnn"],
                   default="auto", help="restrict SDPA to one kernel (sdpa_kernel)")  # fmt: skip
    p.add_argument("--no-diffusers", action="store_true", help="skip diffusers' model")
    p.add_argument("--no-causal", action="store_true", help="skip causal streaming")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    args = p.parse_args(argv)
    if args.frames < 1 or (args.frames - 1) % 4:
        p.error(f"--frames must be 1 + 4k, got {args.frames}")
    if args.height % 16 or args.width % 16 or args.height < 16 or args.width < 16:
        p.error("--height and --width must be positive multiples of 16 (VAE 8 × patch 2)")
    return args


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _kernel(name: str):
    import contextlib

    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
             "math": "MATH", "cudnn": "CUDNN_ATTENTION"}  # fmt: skip
    return sdpa_kernel([getattr(SDPBackend, names[name])])


def _time(fn, device, reps: int, warmup: int) -> tuple[float, int | None, object]:
    """Median seconds of `fn()`, peak CUDA bytes during the calls (None on CPU), last output."""
    import torch

    for _ in range(warmup):
        out = fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return statistics.median(times), peak, out


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def build(args, device, dtype):
    """diffusers' model (or None) and ours, with the same weights."""
    import torch

    from mdiff.video.dit.wan import KEEP_IN_FP32, WanTransformer, WanTransformerConfig

    sizes = dict(ffn_dim=args.ffn, num_layers=args.layers, text_dim=4096, in_channels=16)
    config = WanTransformerConfig(num_attention_heads=args.heads, attention_head_dim=128,
                                  out_channels=16, patch_size=(1, 2, 2), **sizes)  # fmt: skip
    torch.manual_seed(0)
    ours = WanTransformer(config).eval()
    theirs = None
    if not args.no_diffusers:
        import diffusers

        fields = {k: getattr(config, k) for k in ("num_attention_heads", "attention_head_dim",
                  "in_channels", "out_channels", "text_dim", "freq_dim", "ffn_dim", "num_layers",
                  "cross_attn_norm", "qk_norm", "eps", "rope_max_seq_len")}  # fmt: skip
        theirs = diffusers.WanTransformer3DModel(patch_size=config.patch_size, **fields).eval()
        ours.load_state_dict(theirs.state_dict())
        theirs.to(device=device)
        keep = theirs._keep_in_fp32_modules or KEEP_IN_FP32  # what its from_pretrained keeps
        for name, p in theirs.named_parameters():
            fp32 = any(part in keep for part in name.split("."))
            p.data = p.data.to(torch.float32 if fp32 else dtype)
    ours.cast(dtype).to(device)
    return theirs, ours


def bench_step(args, device, dtype, theirs, ours) -> None:
    import torch

    latent = (1 + (args.frames - 1) // 4, args.height // 8, args.width // 8)
    tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, *latent, generator=g).to(device, dtype)
    text = torch.randn(1, 512, 4096, generator=g).to(device, dtype)
    t = torch.full((1,), 0.4, device=device)
    weights = sum(p.numel() * p.element_size() for p in ours.parameters())
    print(f"latents {tuple(x.shape)}, {tokens} tokens, weights {_gib(weights)} per model")
    print("| model | s / forward | peak memory | peak − weights |")
    print("|---|---|---|---|")
    outs = {}
    with torch.no_grad(), _kernel(args.sdpa):
        runs = [("mdiff WanTransformer", lambda: ours.forward_diffusers(x, 1000 * (1 - t), text))]
        if theirs is not None:
            ref = lambda: theirs(x, 1000 * (1 - t), text, return_dict=False)[0]  # noqa: E731
            runs.append(("diffusers WanTransformer3DModel", ref))
        for name, fn in runs:
            sec, peak, out = _time(fn, device, args.reps, args.warmup)
            outs[name] = out.float()
            base = None if peak is None else peak - weights * (2 if theirs is not None else 1)
            print(f"| {name} | {sec:.3f} | {_gib(peak)} | {_gib(base)} |")
    if len(outs) == 2:
        a, b = outs.values()
        print(f"max |ours − diffusers| = {(a - b).abs().max().item():.3g} "
              f"(output max |·| {b.abs().max().item():.3g}, {args.dtype})")  # fmt: skip


def bench_stream(args, device, dtype, ours) -> None:
    import torch

    from mdiff.video.dit.wan_causal import CausalWanConfig, CausalWanTransformer
    from mdiff.video.pipeline.causal_wan import renoise, self_forcing_grid

    n_lat = 1 + (args.frames - 1) // 4
    causal = CausalWanConfig(3, args.window or max(n_lat, 3), 0)
    model = CausalWanTransformer.from_wan(ours, causal)
    if args.compile:
        model.compile_stream()
    grid = self_forcing_grid()
    g = torch.Generator().manual_seed(2)
    text = torch.randn(1, 512, 4096, generator=g).to(device, dtype)
    h, w = args.height // 8, args.width // 8
    cache = model.new_cache(fixed=args.ring)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, first, chunks = time.perf_counter(), None, []
    with torch.no_grad(), _kernel(args.sdpa):
        for a in range(0, n_lat, 3):
            n = min(3, n_lat - a)
            t0 = time.perf_counter()

            def fn(x, t, a=a):
                v = model(x.to(dtype), t, text, frame_offset=a, cache=cache)
                cache.discard()
                return v.float()

            x0 = torch.randn(1, 16, n, h, w, generator=g).to(device)
            x = renoise(fn, x0, grid, generator=g)
            model(x.to(dtype), torch.ones(1, device=device), text, frame_offset=a, cache=cache)
            cache.commit()
            _sync(device)
            chunks.append(time.perf_counter() - t0)
            first = first or time.perf_counter() - start
    total = time.perf_counter() - start
    pixels = 1 + 4 * (n_lat - 1)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    kind = ("ring" if args.ring else "growing") + " cache" + (", compiled" if args.compile else "")
    print(
        f"causal stream: {n_lat} latent frames in chunks of 3, window {causal.local_attn_size}, "
        f"{kind} cache, 4 steps + 1 commit per chunk"
    )
    print("| time to first frame | s / chunk (each) | stream s | fps (pixel frames) | peak |")
    print("|---|---|---|---|---|")
    each = ", ".join(f"{c:.2f}" for c in chunks)
    print(f"| {first:.2f} s | {each} | {total:.2f} | {pixels / total:.2f} | {_gib(peak)} |")


def main(argv=None) -> int:
    args = parse(argv)
    print("$ " + shlex.join(["python", "benchmarks/wan_gpu.py", *(argv or sys.argv[1:])]))
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("wan_gpu.py: no CUDA device here (torch.cuda.is_available() is False); run it on "
              "a GPU, or smoke-test with --device cpu at a small size (see --help)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, DTYPES[args.dtype])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {args.dtype}, threads "
          f"{torch.get_num_threads()}, {args.frames} frames at {args.height}×{args.width}, "
          f"{args.layers} layers, {args.heads} heads, sdpa {args.sdpa}")  # fmt: skip
    theirs, ours = build(args, device, dtype)
    bench_step(args, device, dtype, theirs, ours)
    del theirs
    if not args.no_causal:
        bench_stream(args, device, dtype, ours)
    return 0


if __name__ == "__main__":
    sys.exit(main())
