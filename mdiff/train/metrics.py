"""Training metrics as JSON lines: window-averaged training logs and periodic evaluations.

``<out_dir>/metrics.jsonl`` gets one row per ``log_every`` steps (``{"kind": "train", "step",
"loss", …, "steps_per_s"}``) and one per evaluation (``{"kind": "eval", "step", …}``). A resumed
run appends; :func:`read_metrics` keeps the last row per (kind, step).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Accumulates per-step logs and appends their window means to ``metrics.jsonl``."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / METRICS_FILE
        self.sums: dict[str, float] = {}
        self.count, self.t0 = 0, time.monotonic()

    def add(self, logs: dict[str, float]) -> None:
        self.count += 1
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def flush(self, step: int) -> dict[str, float]:
        """Write the window mean as a "train" row and start a new window; returns the row."""
        now = time.monotonic()
        row = {k: round(v / max(self.count, 1), 6) for k, v in self.sums.items()}
        row["steps_per_s"] = round(self.count / max(now - self.t0, 1e-9), 4)
        self.write({"kind": "train", "step": step, **row})
        self.sums, self.count, self.t0 = {}, 0, now
        return row

    def write(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({**row, "time": time.time()}) + "\n")


def read_metrics(out_dir: str | Path) -> list[dict]:
    """The rows of ``metrics.jsonl``, the last one per (kind, step) kept, in step order."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows: dict[tuple[str, int], dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[(row.get("kind", "train"), int(row["step"]))] = row
    return sorted(rows.values(), key=lambda r: (r["step"], r.get("kind", "train")))
