"""The server's text batcher in-process (issue 30): 32 FIM requests one by one vs all at once,
and arriving spread out with continuous batching (joins into a running batch of up to
``join_rows`` rows: the server's 64, and 16) vs batching at batch boundaries only
(``join_rows=0``, the anchor); every answer equal to its one-by-one answer.

No HTTP and no client threads on the cores: the figure of the batching itself (`serve_load.py`
measures the whole server, whose clients share the same 2 cores).

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/batcher_speed.py [--length auto|N]
          [--requests 32] [--gap 0.15] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line  # noqa: E402
from serve_load import HOLES, pct  # noqa: E402

import mdiff.text.fim.infilling as F  # noqa: E402
from mdiff.serve import compute  # noqa: E402
from mdiff.serve.batching import Batcher, Job  # noqa: E402
from mdiff.text.pipeline import CodeModel  # noqa: E402


def jobs(a) -> list[Job]:
    cands = tuple(c for c in F.DEFAULT_CANDIDATES if c <= a.max_tokens)
    length = a.length if a.length == "auto" else int(a.length)
    return [Job(*HOLES[i % len(HOLES)], length, candidates=cands, seed=i)
            for i in range(a.requests)]  # fmt: skip


def spread(batcher: Batcher, a) -> tuple[float, list[float], list[str]]:
    """Submit the jobs at exponential gaps; total time, latencies, answers."""
    rng, lat, futures = random.Random(0), [0.0] * a.requests, []
    t0 = time.perf_counter()
    for i, j in enumerate(jobs(a)):
        t = time.perf_counter()
        f = batcher.submit([j])[0]
        f.add_done_callback(lambda _, i=i, t=t: lat.__setitem__(i, time.perf_counter() - t))
        futures.append(f)
        time.sleep(rng.expovariate(1 / a.gap))
    answers = [f.result().middles[0] for f in futures]
    return time.perf_counter() - t0, lat, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", default="auto")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--gap", type=float, default=0.15)
    ap.add_argument("--max-tokens", type=int, default=16)
    a = ap.parse_args()
    print(command_line())
    cm = compute.call(CodeModel.from_pretrained, "code-tiny-block")  # torch on one thread
    batchers = {n: Batcher(cm, queue_size=10_000, join_rows=n) for n in (64, 16, 0)}
    for b in batchers.values():
        b.submit([Job(*HOLES[0], 4)])[0].result()  # warm-up
    b = batchers[64]
    t = time.perf_counter()
    alone = [b.submit([j])[0].result().middles[0] for j in jobs(a)]
    t_seq = time.perf_counter() - t
    t = time.perf_counter()
    together = [f.result().middles[0] for f in [b.submit([j])[0] for j in jobs(a)]]
    t_all = time.perf_counter() - t
    same = sum(x == y for x, y in zip(alone, together, strict=True))
    print(f"{a.requests} requests, length {a.length}: one by one {t_seq:.2f} s, all at once "
          f"{t_all:.2f} s: throughput {t_seq / t_all:.2f}x (goal >= 3x); identical "
          f"{same}/{a.requests}")  # fmt: skip
    for n, b in batchers.items():
        before = dict(b.stats)
        total, lat, answers = spread(b, a)
        same = sum(x == y for x, y in zip(alone, answers, strict=True))
        joined = b.stats["joined"] - before["joined"]
        print(f"arrivals every {a.gap:.2f} s on average, join_rows={n}: done in {total:.2f} s; "
              f"latency p50 {pct(lat, 0.5):.2f} s p90 {pct(lat, 0.9):.2f} s max {max(lat):.2f} s; "
              f"{joined} joined a running batch; identical {same}/{a.requests}")  # fmt: skip


if __name__ == "__main__":
    main()
