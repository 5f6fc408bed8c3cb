"""Video pipeline (issue "Video II"): streaming vs offline speed, memory vs length, adherence.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/video_generation.py [--model shapes-t2v]
      (timing only, before the built-in model is trained: add --random shapes-tiny-stream)

One prompt, one seed, the same clip both ways, CPU, fp32, `--threads` threads:

- offline (the anchor): wall time of `pipe(prompt, ...)`, which is also when its first frame
  exists; streaming: `pipe.stream(...)` timed from the call to its first chunk and to its last
  (block-causal DiTs only). Frames/s = frames ÷ wall time; real-time factor = frames/s ÷ the
  pipeline's playback fps. Best and median of `--reps` runs after a one-step warm-up call.
- peak memory: tensor bytes allocated during a stream whose chunks are dropped as they come (as
  a writer consumes them), torch profiler memory events (`vae_decode.peak_bytes`), at
  `--lengths` multiples of the clip's new frames (1 + m·(frames − 1)), with 2 solver steps
  (the peak is that of one step: 2 and 4 steps measured the same; the profiler is slow).
- watermark and signing: every figure above includes the watermark (there is no switch to turn
  it off); its cost is the stream's own per-chunk stamp time and, offline, `Stamper.frames` run
  again on the finished clip; signing = `Stamper.sign` of an MP4 of the clip (not encoding).
- adherence: `evaluate_prompts` on `--prompts` held-out captions (`default_prompts`, after the
  first `--skip`) naming one object, then two; "direction" counts the objects whose prompt
  names one (left, right, up, down, diagonal), "motion" also 'still' and 'bouncing'; each with
  its Wilson 95 % interval (over clips, which share prompts across seeds: a little narrow);
  then the ceiling: the held-out clips of those captions themselves, through the pipeline's VAE
  and scored by the same detectors (`reference_adherence`).
- long streams: the first `--long` one-object captions, seed 0, at the clip's length and at
  4x its new frames (1 + 4·(frames − 1)): colour, direction and drift (the last frame's colour
  histogram against the first's, `video.eval.drift`). No goal: it shows where quality ends.

Goals: time to first frame ≤ 1/4 of the offline clip time; real-time factor ≥ 1 at 64×64 on
2 cores; stream peak at 16× ≤ 1.1× that at 1×; colour and direction accuracy ≥ 90 %.
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from vae_decode import peak_bytes  # noqa: E402

from mdiff import media  # noqa: E402
from mdiff.errors import CheckpointError  # noqa: E402
from mdiff.provenance import Stamper, keys  # noqa: E402
from mdiff.video.dit.model import DiTConfig, SpaceTimeDiT  # noqa: E402
from mdiff.video.eval.adherence import evaluate_prompts  # noqa: E402
from mdiff.video.eval.run import default_prompts, reference_adherence  # noqa: E402
from mdiff.video.pipeline.video_pipeline import VideoPipeline  # noqa: E402
from mdiff.video.text_encoders import ShapesTextEncoder, ShapesTextEncoderConfig  # noqa: E402
from mdiff.video.vae.model import CausalVAE  # noqa: E402
from mdiff.video.vae.train import shapes_vae_config  # noqa: E402
from tests.video.pipeline_fixtures import randomize  # noqa: E402

CMD = "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/video_generation.py"
PROMPT = "a red circle moving right on a black background"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes-t2v", help="built-in name or pipeline folder")
    ap.add_argument("--random", metavar="PRESET", help="random weights, this DiT preset")
    ap.add_argument("--frames", type=int, help="clip length (default: the training length)")
    ap.add_argument("--steps", type=int, help="solver steps (default: the pipeline's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=100, help="captions per object count")
    ap.add_argument("--skip", type=int, default=0, help="start after this many captions")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds for adherence")
    ap.add_argument("--skip-adherence", action="store_true")
    ap.add_argument("--lengths", default="1,4,16", help="multiples of the clip for memory")
    ap.add_argument("--long", type=int, default=20,
                    help="one-object captions for the long-stream figures (0: skip)")  # fmt: skip
    return ap.parse_args()


def build(args, stamper: Stamper) -> VideoPipeline:
    """The pipeline to measure: loaded, or random weights in the shapes layout (64×64)."""
    if args.random is None:
        return VideoPipeline.from_pretrained(args.model, stamper=stamper)
    torch.manual_seed(0)
    vae = CausalVAE(shapes_vae_config())
    dit = randomize(SpaceTimeDiT(DiTConfig.preset(args.random, in_channels=vae.config.z_dim)), 1)
    text = ShapesTextEncoder(ShapesTextEncoderConfig(dim=dit.config.text_dim))
    # steps and guidance: the defaults `DiTRecipe.export` writes for the built-in model
    return VideoPipeline(vae, dit, text, model_id=f"random {args.random}", stamper=stamper,
                         steps=24, guidance=4.0)  # fmt: skip


def timed(fn, reps: int) -> tuple[list[float], object]:
    """Wall times of `reps` calls and the last result."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times, result


def stream_once(pipe: VideoPipeline, kw: dict) -> dict:
    """Consume one stream, dropping chunks: first-chunk time, total time, frames, stamp time."""
    start, first, frames, stamp = time.perf_counter(), None, 0, 0.0
    for chunk in pipe.stream(PROMPT, **kw):
        first = time.perf_counter() - start if first is None else first
        frames, stamp = frames + len(chunk.frames), stamp + chunk.timings["watermark"]
    return {"first": first, "total": time.perf_counter() - start, "frames": frames,
            "stamp": stamp}  # fmt: skip


def fmt(times: list[float]) -> str:
    return f"best {min(times):7.3f} s  median {statistics.median(times):7.3f} s"


def goal(name: str, ok: bool, note: str = "") -> None:
    print(f"goal {name}: {'met' if ok else 'NOT met'}{note}")


def speed(pipe: VideoPipeline, kw: dict, reps: int) -> dict:
    n, fps = kw["num_frames"], pipe.settings.fps
    print(f"\n## speed: {n} frames, {pipe.settings.height}x{pipe.settings.width}, "
          f"playback {fps:g} fps")  # fmt: skip
    offline, out = timed(lambda: pipe(PROMPT, **kw), reps)
    best = min(offline)
    print(f"offline clip        {fmt(offline)}  {n / best:6.2f} frames/s  "
          f"real-time factor {n / best / fps:5.2f}")  # fmt: skip
    res = {"offline": best, "first": best, "rtf": n / best / fps, "out": out}
    if pipe.causal:
        runs = [stream_once(pipe, kw) for _ in range(reps)]
        first, total = [r["first"] for r in runs], [r["total"] for r in runs]
        print(f"stream first chunk  {fmt(first)}  ({min(first) / best:.2f}x the offline clip)")
        print(f"stream whole clip   {fmt(total)}  {n / min(total):6.2f} frames/s  "
              f"real-time factor {n / min(total) / fps:5.2f}")  # fmt: skip
        res.update(first=min(first), rtf=n / min(total) / fps, stream=runs)
    else:
        print("stream: skipped (bidirectional DiT: the first frame comes with the whole clip)")
    return res


def provenance_cost(pipe: VideoPipeline, res: dict, reps: int) -> None:
    out, clip = res["out"], res["offline"]
    print("\n## watermark and signing cost (every figure above includes the watermark)")
    stamp, _ = timed(lambda: pipe.stamper.frames(out.frames, out.record, fps=out.fps), reps)
    s = min(stamp)
    print(f"watermark offline clip  {s * 1e3:8.1f} ms = {100 * s / clip:5.2f} % of the clip; "
          f"without it {clip - s:.3f} s")  # fmt: skip
    if "stream" in res:
        run = min(res["stream"], key=lambda r: r["total"])
        print(f"watermark stream chunks {run['stamp'] * 1e3:8.1f} ms = "
              f"{100 * run['stamp'] / run['total']:5.2f} % of the stream")  # fmt: skip
    signs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(reps):
            path = media.write_mp4(out.frames, Path(tmp) / f"clip{i}.mp4", fps=out.fps)
            signs.append(timed(lambda p=path: pipe.stamper.sign(p, out.record), 1)[0][0])
    g = min(signs)
    print(f"sign (C2PA, MP4)        {g * 1e3:8.1f} ms = {100 * g / clip:5.2f} % of the clip")
    goal("watermark + signing <= 5 % of the clip", s + g <= 0.05 * clip,
         f" ({100 * (s + g) / clip:.2f} %)")  # fmt: skip


def memory(pipe: VideoPipeline, kw: dict, lengths: list[int]) -> None:
    n, d = kw["num_frames"], pipe.dit.config
    print(f"\n## stream peak memory (tensor allocations) vs length, 1x = {n} frames")
    if not pipe.causal:
        print("skipped: a bidirectional DiT makes the whole clip at once (no rolling window)")
        return
    steps = min(kw.get("steps", pipe.settings.steps), 2)  # the peak is that of one step
    if d.window is None:
        print(f"{steps} solver steps; no window: the KV cache grows with the stream")
    else:
        full = 1 + 4 * (d.sink_frames + d.window - 1)  # frames until the KV cache is full
        print(f"{steps} solver steps; the KV cache holds at most {d.sink_frames} sink + "
              f"{d.window} window latent frames, reached after {full} frames")  # fmt: skip
    peaks = {}
    for m in lengths:
        frames = 1 + m * (n - 1)
        run = {**kw, "num_frames": frames, "steps": steps}
        gc.collect()  # garbage of earlier runs must not be freed inside the measurement
        t = time.perf_counter()
        peaks[m] = peak_bytes(lambda run=run: stream_once(pipe, run))
        print(f"{m:>3}x {frames:>5} frames  peak {peaks[m] / 2**20:8.1f} MiB  "
              f"{peaks[m] / peaks[lengths[0]]:5.2f}x  ({time.perf_counter() - t:.1f} s profiled)",
              flush=True)  # fmt: skip
    lo, hi = lengths[0], lengths[-1]
    ratio = peaks[hi] / peaks[lo]
    goal(f"peak at {hi}x <= 1.1x the peak at {lo}x", ratio <= 1.1, f" ({ratio:.2f}x)")


def wilson(hits: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % for z = 1.96)."""
    if total == 0:
        return 0.0, 1.0
    p, n = hits / total, total
    mid, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (mid - half) / (1 + z * z / n)), min(1.0, (mid + half) / (1 + z * z / n))


def adherence(pipe: VideoPipeline, args, kw: dict) -> None:
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = {k: v for k, v in kw.items() if k != "seed"}
    for objects in (1, 2):
        print(f"\n## prompt adherence: held-out captions {args.skip + 1}-{args.skip + args.prompts}"
              f" naming {objects} object(s) x seeds {seeds}")  # fmt: skip
        if args.random:
            print("(random weights: these numbers are meaningless, printed to exercise the path)")
        prompts = default_prompts(args.prompts, objects=objects, skip=args.skip)
        report = evaluate_prompts(pipe, prompts, seeds, **settings)
        rows = [(a, report["accuracy"][a]["hits"], report["accuracy"][a]["total"])
                for a in ("colour", "shape", "motion", "direction", "count")]  # fmt: skip
        for label, hits, total in rows:
            lo, hi = wilson(hits, total)
            print(f"{label:<10} {100 * hits / max(total, 1):5.1f} %  ({hits}/{total}, "
                  f"95 % interval {100 * lo:.0f}-{100 * hi:.0f} %)")  # fmt: skip
        t = report["temporal"]
        print(f"flicker {t['flicker']:.4f}, seam jump ratio {t['seam_ratio'] or float('nan'):.3f}")
        size = pipe.settings.height
        ref = reference_adherence(pipe.vae, args.prompts, objects, args.skip,
                                  num_frames=kw["num_frames"], size=size)  # fmt: skip
        best = ", ".join(f"{a} {100 * ref['vae'][a]['accuracy']:.1f} %"
                         for a in ("colour", "direction", "count"))  # fmt: skip
        print(f"ceiling (these captions' own clips through the VAE): {best}")
        acc = {label: hits / max(total, 1) for label, hits, total in rows}
        goal(f"colour and direction accuracy >= 90 % ({objects} object(s))",
             acc["colour"] >= 0.9 and acc["direction"] >= 0.9)  # fmt: skip


def long_streams(pipe: VideoPipeline, n: int, kw: dict) -> None:
    """Quality over 4x the clip: adherence and drift of the same captions at both lengths."""
    frames = kw["num_frames"]
    print(f"\n## long streams: held-out captions 1-{n} naming 1 object, seed 0")
    prompts = default_prompts(n, objects=1)
    settings = {k: v for k, v in kw.items() if k not in ("seed", "num_frames")}
    for length in (frames, 1 + 4 * (frames - 1)):
        r = evaluate_prompts(pipe, prompts, [0], num_frames=length, **settings)
        a, t = r["accuracy"], r["temporal"]
        hits = ", ".join(f"{k} {a[k]['hits']}/{a[k]['total']}" for k in ("colour", "direction"))
        print(f"{length:>4} frames  {hits}, drift (last vs first frame) {t['drift']:.3f}, "
              f"flicker {t['flicker']:.4f}")  # fmt: skip


def _cpu() -> str:
    """The CPU model and its widest vector unit: speed figures differ ~2x between machines."""
    name = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"{CMD} {' '.join(sys.argv[1:])}")
    with tempfile.TemporaryDirectory() as home:
        keys.init_dev_identity(home)  # a throwaway signing identity and watermark secret
        try:
            pipe = build(args, Stamper(home=home))
        except CheckpointError as e:
            sys.exit(f"{e}\n(to time random weights now: --random shapes-tiny-stream)")
        frames = args.frames or pipe.settings.num_frames
        kw = {"num_frames": frames, "seed": 0}
        if args.steps:
            kw["steps"] = args.steps
        d = pipe.dit.config
        print(f"model {pipe.model_id}: {d.attention} DiT dim {d.dim} depth {d.depth}, "
              f"{sum(p.numel() for p in pipe.dit.parameters()) / 1e6:.2f}M params; "
              f"training length {pipe.settings.num_frames} frames")  # fmt: skip
        print(f"steps {kw.get('steps', pipe.settings.steps)}, guidance {pipe.settings.guidance}, "
              f"solver {pipe.settings.solver}; torch {torch.__version__}, {_cpu()}, "
              f"threads {torch.get_num_threads()}, fp32, best/median of {args.reps}")  # fmt: skip
        pipe(PROMPT, **{**kw, "steps": 1})  # warm-up: lazy set-up, every chunk shape
        res = speed(pipe, kw, args.reps)
        goal("time to first frame <= 1/4 of the offline clip", res["first"] <= res["offline"] / 4,
             f" ({res['first'] / res['offline']:.2f})")  # fmt: skip
        goal("real-time factor >= 1", res["rtf"] >= 1, f" ({res['rtf']:.2f}, "
             f"threads {torch.get_num_threads()})")  # fmt: skip
        provenance_cost(pipe, res, args.reps)
        memory(pipe, kw, [int(m) for m in args.lengths.split(",")])
        if not args.skip_adherence:
            adherence(pipe, args, kw)
        if args.long:
            long_streams(pipe, args.long, kw)


if __name__ == "__main__":
    main()
