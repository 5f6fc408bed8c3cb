"""The length search's score with the blocks before each middle cached vs recomputed at every
rate (the anchor), on holes with long contexts cut from a standard-library file; same answers.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/fim_score.py [--context 900] [--holes 4]
          [--reps 3] [--model code-tiny-block]

Each hole: the ``--context`` characters before a ``def``/``class`` line (the model keeps what
fits its window), the keyword typed, the name to fill, 200 characters after; ``infill(...,
"auto")`` with the candidates up to 16 tokens. Best of ``--reps`` interleaved runs after a
warm-up; wall and process CPU time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_wall_cpu, command_line  # noqa: E402

import mdiff.text.fim.infilling as F  # noqa: E402
from mdiff.text.pipeline import CodeModel  # noqa: E402

CANDIDATES = (2, 3, 4, 6, 8, 11, 16)


def holes(n: int, context: int) -> list[tuple[str, str]]:
    src = Path(json.__file__).with_name("decoder.py").read_text(encoding="utf-8")
    starts = [i for i, line in enumerate(src.splitlines(keepends=True))
              if line.startswith(("def ", "class "))]  # fmt: skip
    lines, out = src.splitlines(keepends=True), []
    for i in starts[-n:]:
        before, word = "".join(lines[:i]), lines[i].split()[0] + " "
        out.append((before[-context:] + word, "\n" + "".join(lines[i + 1 :])[:200]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=900)
    ap.add_argument("--holes", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", default="code-tiny-block")
    a = ap.parse_args()
    print(command_line())
    cm = CodeModel.from_pretrained(a.model)
    cases = holes(a.holes, a.context)
    cached, full = F._prefix_groups, lambda m, g, r: [(torch.arange(len(g)), 0)]
    answers = {}

    def run(groups, name):
        def go():
            F._prefix_groups = groups
            try:
                answers[name] = [cm.infill(p, s, "auto", candidates=CANDIDATES, seed=0).middles[0]
                                 for p, s in cases]  # fmt: skip
            finally:
                F._prefix_groups = cached

        return go

    fns = {"recomputed (anchor)": run(full, "full"), "cached": run(cached, "cached")}
    for fn in fns.values():
        fn()  # warm-up
    wall, cpu = best_wall_cpu(fns, a.reps)
    anchor = "recomputed (anchor)"
    for name in fns:
        w, c = wall[anchor] / wall[name], cpu[anchor] / cpu[name]
        print(f"  {name:20s} {wall[name]:.2f} s wall, {cpu[name]:.2f} s CPU: {w:.2f}x wall, "
              f"{c:.2f}x CPU")  # fmt: skip
    same = sum(x == y for x, y in zip(answers["full"], answers["cached"], strict=True))
    print(f"{len(cases)} holes, {a.context} characters before each, auto length: identical "
          f"{same}/{len(cases)}")  # fmt: skip


if __name__ == "__main__":
    main()
