"""`mdiff serve` under load, on loopback (issue 30): FIM batching, mixed video + FIM, disconnect
cycles, overload. The server is a real `mdiff serve` subprocess; clients are threads here.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/serve_load.py [--parts fim mixed cycles
          overload] [--requests 32] [--max-tokens 16] [--gap 0.15] [--cycles 50]
          [--repeat 3]

fim: the same ``--requests`` FIM requests (distinct holes and seeds) served one by one, then all
at once, ``--repeat`` times; throughput ratio of the median times (goal ≥ 3×), p50/p99 latency
of the concurrent ones, every answer equal to its one-by-one answer, errors; then arriving
``--gap`` seconds apart on average (they join the running batch): latency, identity. mixed: 4
concurrent video streams (64², 33 frames) plus 16 FIM requests; all complete, every stored video
verifies (C2PA trusted, watermark detected), time to first fMP4 fragment per stream. cycles:
connect, read the first event, disconnect — ``--cycles`` times, alternating a text stream and a
video stream; the server's RSS and open file descriptors before, half-way and after (drift).
overload: 4× the queue's size at once against a server with ``--queue-size 4``: only 200 or
429, no 5xx, every 200 complete.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOLES = [("def add(a, b):\n    return ", "\n"), ("for i in range(", "):\n    print(i)\n"),
         ("import os\n\npath = os.path.", "\n"), ("x = [1, 2, 3]\ny = ", "\nprint(y)\n"),
         ("class Point:\n    def __init__(self, x, y):\n        self.x = ", "\n"),
         ("with open(name) as f:\n    data = ", "\n"), ("if __name__ == ", ":\n    main()\n"),
         ("def mean(xs):\n    return sum(xs) / ", "\n")]  # fmt: skip


class Server:
    """``mdiff serve`` in a subprocess on a free port, its home in a temp folder."""

    def __init__(self, *extra: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.home = tempfile.mkdtemp(prefix="mdiff-load-")
        env = {**os.environ, "MDIFF_HOME": self.home}
        mdiff = Path(sys.executable).with_name("mdiff")  # the console script of this venv
        cmd = [str(mdiff), "serve", "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("mdiff serve did not start")

    def rss_fds(self) -> tuple[float, int]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        return rss / 1024, len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


LENGTH = None  # --length: every FIM request asks for exactly this many tokens
# One keep-alive client for every request, as an editor plugin keeps its connection: a new
# httpx client per request costs ~28 ms of client CPU (its TLS context), on the server's cores.
CLIENT = httpx.Client(limits=httpx.Limits(max_connections=128, max_keepalive_connections=128))


def fim_body(i: int, max_tokens: int) -> dict:
    prefix, suffix = HOLES[i % len(HOLES)]
    body = {"prompt": prefix, "suffix": suffix, "max_tokens": max_tokens, "seed": i}
    return body if LENGTH is None else {**body, "length": min(LENGTH, max_tokens)}


def post(url: str, body: dict, timeout: float = 600) -> tuple[int, dict, float]:
    t = time.perf_counter()
    r = CLIENT.post(url + "/v1/completions", json=body, timeout=timeout)
    return r.status_code, r.json(), time.perf_counter() - t


def concurrently(fns) -> list:
    out = [None] * len(fns)

    def run(i):
        out[i] = fns[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def text(response) -> str | None:
    """The first choice's text of a ``post`` result."""
    return response[1].get("choices", [{}])[0].get("text")


def pct(values, q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


def part_fim(a) -> None:
    srv = Server()
    try:
        post(srv.url, fim_body(99, a.max_tokens))  # warm-up: the model loads
        bodies = [fim_body(i, a.max_tokens) for i in range(a.requests)]
        seqs, concs, rounds = [], [], []
        for _ in range(a.repeat):  # the two passes alternate: a stall of the machine hits one
            t = time.perf_counter()
            alone = [post(srv.url, b) for b in bodies]
            seqs.append(time.perf_counter() - t)
            t = time.perf_counter()
            together = concurrently([lambda b=b: post(srv.url, b) for b in bodies])
            concs.append(time.perf_counter() - t)
            rounds += [alone, together]
        t_seq, t_conc = statistics.median(seqs), statistics.median(concs)
        if a.gap:  # arrivals spread out: they join the running batch between its steps
            rng = random.Random(0)
            waits = [sum(rng.expovariate(1 / a.gap) for _ in range(i)) for i in range(len(bodies))]
            t = time.perf_counter()
            spread = concurrently([lambda b=b, w=w: (time.sleep(w), post(srv.url, b))[1]
                                   for b, w in zip(bodies, waits, strict=True)])  # fmt: skip
            t_spread = time.perf_counter() - t
    finally:
        srv.close()
    errors = sum(code != 200 for r in rounds for code, _, _ in r)
    same = sum(all(text(r[i]) == text(alone[i]) for r in rounds) for i in range(len(bodies)))
    lat = [s for r in rounds[1::2] for _, _, s in r]  # every concurrent pass
    mode = f"length {LENGTH}" if LENGTH else f"auto length, max_tokens {a.max_tokens}"
    print(f"fim: {a.requests} requests, {mode}: one by one {t_seq:.2f} s "
          f"({a.requests / t_seq:.2f} req/s), concurrent {t_conc:.2f} s "
          f"({a.requests / t_conc:.2f} req/s): throughput {t_seq / t_conc:.2f}x (goal >= 3x); "
          f"latency p50 {pct(lat, 0.5):.2f} s p99 {pct(lat, 0.99):.2f} s; identical "
          f"{same}/{a.requests}; errors {errors}")  # fmt: skip
    if a.repeat > 1:
        runs = zip(seqs, concs, strict=True)
        print(
            f"fim: medians of {a.repeat} passes each; one by one / concurrent: "
            + ", ".join(f"{x:.2f}/{y:.2f} s ({x / y:.2f}x)" for x, y in runs)
        )
    if a.gap:
        lat_s, solo = [x for _, _, x in spread], [x for _, _, x in alone]
        same = sum(text(x) == text(y) for x, y in zip(alone, spread, strict=True))
        print(f"arrivals every {a.gap:.2f} s on average: all done in {t_spread:.2f} s; latency "
              f"p50 {pct(lat_s, 0.5):.2f} s p99 {pct(lat_s, 0.99):.2f} s (alone: p50 "
              f"{pct(solo, 0.5):.2f} s); identical {same}/{a.requests}; "
              f"errors {sum(c != 200 for c, _, _ in spread)}")  # fmt: skip


def video_stream(url: str, body: dict) -> tuple[str, float, int]:
    t = time.perf_counter()
    first, size = None, 0
    with httpx.stream("POST", url + "/v1/videos", json=body, timeout=600) as r:
        vid = r.headers["x-mdiff-id"]
        for chunk in r.iter_raw():
            first = first or time.perf_counter() - t
            size += len(chunk)
    return vid, first, size


def stored(url: str, vid: str) -> bytes:
    while (r := httpx.get(f"{url}/v1/videos/{vid}", timeout=60)).status_code == 202:
        time.sleep(0.1)
    return r.content


def part_mixed(a) -> None:
    from mdiff.provenance import verify

    srv = Server()
    try:
        post(srv.url, fim_body(99, a.max_tokens))
        vb = [{"prompt": p, "frames": 33, "size": "64x64", "steps": 4, "seed": i}
              for i, p in enumerate(["a red circle moving right", "a blue square falling",
                                     "a green triangle", "two yellow circles"])]  # fmt: skip
        fns = [lambda b=b: video_stream(srv.url, b) for b in vb]
        fns += [lambda i=i: post(srv.url, fim_body(i, a.max_tokens)) for i in range(16)]
        t = time.perf_counter()
        out = concurrently(fns)
        wall = time.perf_counter() - t
        verified = 0
        for vid, _, _ in out[:4]:
            path = Path(srv.home) / f"{vid}.mp4"
            path.write_bytes(stored(srv.url, vid))
            rep = verify(path, home=srv.home)
            verified += rep.exit_code == 0 and bool(rep.watermark.get("detected"))
    finally:
        srv.close()
    firsts = ", ".join(f"{f:.2f}" for _, f, _ in out[:4])
    ok = sum(code == 200 for code, _, _ in out[4:])
    print(
        f"mixed: 4 video streams + 16 FIM in {wall:.1f} s: FIM 200s {ok}/16; videos verified "
        f"{verified}/4; time to first fragment per stream {firsts} s"
    )


def part_cycles(a) -> None:
    srv = Server()
    try:
        post(srv.url, fim_body(99, a.max_tokens))
        vbody = {"prompt": "a red circle", "frames": 65, "size": "64x64", "steps": 4}
        tbody = {**fim_body(1, 64), "length": 64, "stream": True}
        video_stream(srv.url, {**vbody, "frames": 5})  # both models loaded before the marks
        marks = [srv.rss_fds()]
        for k in range(a.cycles):
            path, body = ("/v1/videos", vbody) if k % 2 else ("/v1/completions", tbody)
            with httpx.stream("POST", srv.url + path, json=body, timeout=120) as r:
                next(r.iter_raw())
            if k + 1 in (a.cycles // 2, a.cycles):
                time.sleep(1.0)
                marks.append(srv.rss_fds())
        alive = post(srv.url, fim_body(2, 8))[0]
    finally:
        srv.close()
    rss = " -> ".join(f"{m[0]:.0f}" for m in marks)
    fds = " -> ".join(str(m[1]) for m in marks)
    print(f"cycles: {a.cycles} connect/disconnect (text and video alternating): RSS MiB {rss} "
          f"(drift {marks[-1][0] - marks[1][0]:+.0f} MiB over the second half); open fds {fds}; "
          f"server answers after: {alive}")  # fmt: skip


def part_overload(a) -> None:
    srv = Server("--queue-size", "4")
    try:
        post(srv.url, fim_body(99, a.max_tokens))
        out = concurrently([lambda i=i: post(srv.url, fim_body(i, a.max_tokens))
                            for i in range(16)])  # fmt: skip
    finally:
        srv.close()
    codes = [c for c, _, _ in out]
    complete = sum(c == 200 and bool(b["choices"][0]["text"] is not None) for c, b, _ in out)
    print(f"overload: 16 at once, queue 4: 200 x{codes.count(200)} (complete {complete}), 429 "
          f"x{codes.count(429)}, 5xx x{sum(c >= 500 for c in codes)}, other "
          f"x{sum(c not in (200, 429) and c < 500 for c in codes)}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["fim", "mixed", "cycles", "overload"])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="fim: passes of each (one by one, concurrent); the medians are compared",
    )
    ap.add_argument("--length", type=int, help="fixed hole length (default: the auto search)")
    ap.add_argument("--gap", type=float, default=0.15,
                    help="fim: then the requests again, arriving this many seconds apart on "
                         "average (exponential gaps; 0: skip)")  # fmt: skip
    a = ap.parse_args()
    global LENGTH
    LENGTH = a.length
    print(command_line())
    for part in a.parts:
        {"fim": part_fim, "mixed": part_mixed, "cycles": part_cycles,
         "overload": part_overload}[part](a)  # fmt: skip


if __name__ == "__main__":
    main()
