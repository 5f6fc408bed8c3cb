"""Text decoding: speed and FIM exact match per decoding method, against LLaDA-style fixed steps.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/text_decoding.py code-tiny \
          --block code-tiny-block [--ar AR]
      (built-in names or folders as `mdiff train text --export` writes them; the AR baseline
      is not shipped: `mdiff train text --kind ar`; -n tasks, --length tokens)

Speed: one 256-token completion after a 128-token held-out prompt, batch 1, wall time and
tokens per forward. Quality: exact match on `-n` held-out single-line FIM tasks at the true
middle length, same tasks for every method. The anchor is (a), measured in the same run.

- (a) LLaDA-style fixed steps: one token per step, blocks of 32, no cache (the anchor);
- (b) confidence threshold (`--threshold`, default 0.9; Fast-dLLM), blocks of 32, no cache;
- (c) threshold + approximate prefix cache;  (d) threshold + dual cache;
- (e) the block-causal model (`--block`), fixed steps with its exact KV cache;
  (e') the same with the confidence threshold;
- (f) the autoregressive baseline (`--ar`), greedy with a KV cache.

Goals: ≥ 3 tokens per forward with ≤ 1 point EM loss; cached block decoding ≥ 5× faster
than uncached fixed steps; faster than the AR baseline at equal EM.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mdiff.text.data import Corpus  # noqa: E402
from mdiff.text.fim.eval import evaluate_ar_fim, evaluate_fim  # noqa: E402
from mdiff.text.fim.tasks import make_tasks  # noqa: E402
from mdiff.text.pipeline import CodeModel  # noqa: E402
from mdiff.text.sampling.ar import generate_ar  # noqa: E402
from mdiff.text.sampling.sampler import generate  # noqa: E402

CMD = "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/text_decoding.py"


def methods(t: float) -> dict:
    """name -> sampler settings on the bidirectional model, with confidence threshold `t`."""
    thr = dict(block_length=32, schedule="threshold", threshold=t)
    return {
        "(a) fixed steps, no cache": dict(block_length=32),
        f"(b) threshold {t}": thr,
        f"(c) threshold {t} + prefix cache": {**thr, "cache": "prefix"},
        f"(d) threshold {t} + dual cache": {**thr, "cache": "dual"},
    }


def block_methods(t: float) -> dict:
    """name -> sampler settings on the block-causal model (exact cache)."""
    return {
        "(e) block-causal, exact cache": {},
        f"(e') block-causal, exact cache, threshold {t}": dict(schedule="threshold", threshold=t),
    }


def speed(model, prompt: list[int], length: int, **settings) -> tuple[float, float]:
    start = time.perf_counter()
    out = generate(model, [prompt], gen_length=length, **settings)
    seconds = time.perf_counter() - start
    return length / seconds, float(out.tokens_per_forward[0])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mdm")
    p.add_argument("--block")
    p.add_argument("--ar")
    p.add_argument("-n", type=int, default=40)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--threshold", type=float, default=0.9, help="for (b)-(d) and (e')")
    args = p.parse_args()
    cm = CodeModel.from_pretrained(args.mdm)
    corpus = Corpus.from_folder()
    files = [(f, t) for f in corpus.heldout_files if (t := corpus.read(f)) is not None]
    tasks = make_tasks(files, "single", args.n, seed=0)
    prompt = cm.tokenizer.encode(files[0][1])[:128]
    generate(cm.model, [prompt], gen_length=8)  # warm-up: first-call allocations
    rows = []
    for name, settings in methods(args.threshold).items():
        tps, tpf = speed(cm.model, prompt, args.length, **settings)
        em = evaluate_fim(
            cm.model, cm.tokenizer, tasks, modes=("true",), context=cm.context, **settings
        )["true"]
        rows.append((name, tps, tpf, em["exact_match"]))
    if args.block:
        bm = CodeModel.from_pretrained(args.block)
        for name, settings in block_methods(args.threshold).items():
            tps, tpf = speed(bm.model, prompt, args.length, **settings)
            em = evaluate_fim(bm.model, bm.tokenizer, tasks, modes=("true",), context=bm.context,
                              **settings)["true"]  # fmt: skip
            rows.append((name, tps, tpf, em["exact_match"]))
    if args.ar:
        am = CodeModel.from_pretrained(args.ar)
        start = time.perf_counter()
        out = generate_ar(am.model, [prompt], args.length)  # may stop early at EOS
        seconds = time.perf_counter() - start
        n = max(len(out.tokens[0]), 1)
        em = evaluate_ar_fim(am.model, am.tokenizer, tasks, context=am.context,
                             order=am.fim_order)["exact_match"]  # fmt: skip
        rows.append(("(f) autoregressive, KV cache", n / seconds, n / out.nfe, em))
    anchor = rows[0][1]
    print(f"{CMD} {' '.join(sys.argv[1:])}")
    print(f"threads {torch.get_num_threads()}, {args.length}-token completion, {len(tasks)} tasks")
    print("| method | tokens/s | × (a) | tokens/forward | FIM EM (true length) |")
    print("|---|---|---|---|---|")
    for name, tps, tpf, em in rows:
        print(f"| {name} | {tps:.1f} | {tps / anchor:.2f} | {tpf:.2f} | {100 * em:.1f}% |")


if __name__ == "__main__":
    main()
