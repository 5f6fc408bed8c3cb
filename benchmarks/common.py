"""What the benchmarks share: the command line echo, peak tensor memory, interleaved timing."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile


def command_line() -> str:
    """The exact command that is running, with its thread setting (for RESULTS.md)."""
    script = Path(sys.argv[0]).resolve().relative_to(Path(__file__).resolve().parents[1])
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    return " ".join([f"OMP_NUM_THREADS={threads}", ".venv/bin/python", str(script), *sys.argv[1:]])


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


def best_wall_cpu(fns: dict, reps: int) -> tuple[dict, dict]:
    """Best wall and best process CPU time of ``reps`` runs per function, the functions
    interleaved (fair under load; CPU time is steadier on a shared machine)."""
    wall, cpu = dict.fromkeys(fns, float("inf")), dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            cpu[name] = min(cpu[name], time.process_time() - c)
            wall[name] = min(wall[name], time.perf_counter() - w)
    return wall, cpu


def best_times(fns: dict, reps: int) -> dict:
    """Best of `reps` wall times per function, the functions interleaved (fair under load)."""
    return best_wall_cpu(fns, reps)[0]
