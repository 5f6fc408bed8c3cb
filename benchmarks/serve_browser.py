"""Time to the first painted frame in a real browser vs the CLI's time to first frame (issue 30).

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/serve_browser.py [--frames 17] [--reps 3]

The browser: headless Chromium (Debian's package) opens the served page, types the prompt and
clicks Start; the page plays ``WS /v1/realtime/video`` through Media Source Extensions and
records the time from the click to the first frame the compositor presents
(``requestVideoFrameCallback``). The anchor: ``mdiff video PROMPT --stream`` with the same
model defaults, frames and seed, whose printed "time to first frame" runs from the start of
generation to the first chunk written. Both warm (the server's model loaded by one request
first; the CLI's time excludes its load). Median of ``--reps``; goal: ratio ≤ 1.5×.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line  # noqa: E402
from serve_load import Server  # noqa: E402

from tests.serve.chromium import Browser  # noqa: E402

PROMPT = "a red circle moving right"


def browser_first_frames(url: str, frames: int, reps: int) -> list[float]:
    with Browser() as browser:
        page = browser.page(url + "/")
        out = []
        for k in range(reps):
            page.wait("!document.getElementById('video-start').disabled", timeout=60)
            page.js(f"""document.getElementById('video-prompt').value = {PROMPT!r};
                document.getElementById('video-frames').value = {frames};
                document.getElementById('video-seed').value = {k};
                document.getElementById('video-start').click()""")
            stats = page.wait("(mdiffStats.error || mdiffStats.done) && mdiffStats", timeout=300)
            if stats["error"]:
                raise RuntimeError(stats["error"])
            out.append(stats["firstFrameMs"] / 1000)
            print(
                f"  page run {k}: first painted frame {stats['firstFrameMs']:.0f} ms; fMP4 "
                f"segments arrived at {stats['segmentMs'][:3]} ms (init, then fragments)"
            )
        return out


def cli_first_frames(frames: int, reps: int) -> list[float]:
    mdiff = Path(sys.executable).with_name("mdiff")
    out = []
    with tempfile.TemporaryDirectory() as d:
        for k in range(reps):
            cmd = [str(mdiff), "video", PROMPT, "--frames", str(frames), "--seed", str(k),
                   "--stream", "--no-progress", "-o", f"{d}/{k}.mp4"]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out.append(float(re.search(r"time to first frame ([\d.]+) s", done.stdout)[1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    print(command_line())
    srv = Server()
    try:
        warm = {"prompt": PROMPT, "frames": 5}
        with httpx.stream("POST", srv.url + "/v1/videos", json=warm, timeout=300) as r:
            for _ in r.iter_raw():
                pass
        page = browser_first_frames(srv.url, a.frames, a.reps)
    finally:
        srv.close()
    cli = cli_first_frames(a.frames, a.reps)
    b, c = statistics.median(page), statistics.median(cli)
    print(f"browser first painted frame (s): {', '.join(f'{v:.2f}' for v in page)}; CLI time to "
          f"first frame (s): {', '.join(f'{v:.2f}' for v in cli)}; median ratio {b / c:.2f}x "
          f"(goal <= 1.5x), {a.frames} frames")  # fmt: skip


if __name__ == "__main__":
    main()
