"""A batch of 16 prompts of mixed lengths vs 16 single calls, our sampler (issue 29).

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dlm_batch.py [--threads 1] [--reps 2]
          [--only gemma|block] [--tokens 64]

- ``gemma``: a random DiffusionGemma (`dlm_models.gemma`, the shape of `dlm_reference.py`)
  through `generate_gemma`, exact KV cache; row b of the left-padded batch draws from
  ``seed + b``, so its single run is ``generate_gemma([prompt_b], seed=seed + b)``.
- ``block``: our built-in block-causal ``code-tiny-block`` through `mdiff.text`'s ``generate``
  (exact KV cache, confidence threshold 0.9, blocks of 16); prompts are slices of Python's own
  standard library source, tokenised by the model's tokenizer.

Prints the prompt lengths, tokens/s of the batch and of the 16 single calls (best of ``--reps``
interleaved after a warm-up), their ratio, NFE, and how many rows equal their single run token
for token (every row must; a row that differs is named).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import textwrap
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_times, command_line  # noqa: E402
from dlm_models import gemma, source_state  # noqa: E402
from dlm_reference import SIZE  # noqa: E402

from mdiff.text.pipeline import CodeModel  # noqa: E402
from mdiff.text.sampling.gemma_runner import generate_gemma  # noqa: E402
from mdiff.text.sampling.sampler import generate  # noqa: E402

N = 16
SEED = 5


def lengths(lo: int, hi: int) -> list[int]:
    """16 mixed prompt lengths in [lo, hi], shuffled deterministically."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(lo, hi + 1, (N,), generator=g).tolist()


def report(name: str, rows, batch_fn, single_fns, check, nfe: tuple[int, int], tokens: int,
           reps: int) -> None:  # fmt: skip
    """Time the batch and the singles (interleaved), then print throughput and the check."""
    singles = lambda: [f() for f in single_fns]  # noqa: E731
    best = best_times({"batch": batch_fn, "singles": singles}, reps)
    same = check()
    bad = [b for b, ok in enumerate(same) if not ok]
    print(f"  prompt lengths: {[len(r) for r in rows]}; {tokens} new tokens per row")
    print(f"  batch of {N}:       {N * tokens / best['batch']:8.1f} tokens/s  "
          f"({best['batch']:.2f} s, NFE {nfe[0]})")  # fmt: skip
    print(f"  {N} single calls:  {N * tokens / best['singles']:8.1f} tokens/s  "
          f"({best['singles']:.2f} s, NFE {nfe[1]} in all)")  # fmt: skip
    print(f"  throughput ratio batch / singles: {best['singles'] / best['batch']:.2f}x")
    verdict = "yes" if not bad else f"NO: rows {bad} differ (speed not comparable)"
    print(f"  rows identical to their single run: {len(same) - len(bad)}/{len(same)}: {verdict}")


def run_gemma(args) -> None:
    lm = gemma(**SIZE, canvas=32, scale=30.0)
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(3, SIZE["vocab"] - 3, (n,), generator=g).tolist()
            for n in lengths(2, 60)]  # fmt: skip
    kw = dict(max_new_tokens=args.tokens, max_denoising_steps=48, entropy_bound=5.0,
              confidence_threshold=1.0, stability_threshold=1)  # fmt: skip
    print(f"(a) DiffusionGemma, random (dlm_reference's shape, canvas 32), exact cache; {kw}")
    width = max(map(len, rows))
    out = {}

    def batch():
        out["batch"] = generate_gemma(lm, rows, seed=SEED, **kw)

    def single(b):
        def fn():
            out[b] = generate_gemma(lm, [rows[b]], seed=SEED + b, **kw)

        return fn

    fns = [single(b) for b in range(N)]
    batch()
    for f in fns:
        f()

    def check():
        return [out[b].sequences[0, len(r) :].tolist() == out["batch"].sequences[b, width:].tolist()
                for b, r in enumerate(rows)]  # fmt: skip

    nfe = (out["batch"].nfe, sum(out[b].nfe for b in range(N)))
    report("gemma", rows, batch, fns, check, nfe, args.tokens, args.reps)


def stdlib_prompts(tok) -> list[list[int]]:
    """16 token prompts of mixed lengths cut from `textwrap`'s and `inspect`'s own source."""
    text = inspect.getsource(textwrap) + inspect.getsource(inspect)
    ids = tok.encode(text)
    starts = torch.randint(0, len(ids) - 200, (N,), generator=torch.Generator().manual_seed(3))
    return [ids[s : s + n] for s, n in zip(starts.tolist(), lengths(4, 120), strict=True)]


def run_block(args) -> None:
    cm = CodeModel.from_pretrained("code-tiny-block")
    model = cm.model.eval()
    rows = stdlib_prompts(cm.tokenizer)
    kw = dict(gen_length=args.tokens, block_length=16, schedule="threshold", threshold=0.9,
              cache="exact")  # fmt: skip
    print(f"(b) code-tiny-block (ours, block-causal, {model.spec.block_size}-token blocks), "
          f"mdiff.text generate; {kw}")  # fmt: skip
    out = {}
    T = args.tokens

    def batch():
        out["batch"] = generate(model, rows, seed=SEED, **kw)

    def single(b):
        def fn():
            out[b] = generate(model, [rows[b]], seed=SEED + b, **kw)

        return fn

    fns = [single(b) for b in range(N)]
    batch()
    for f in fns:
        f()

    def check():
        return [out[b].sequences[0, -T:].tolist() == out["batch"].sequences[b, -T:].tolist()
                for b in range(N)]  # fmt: skip

    nfe = (out["batch"].nfe, sum(out[b].nfe for b in range(N)))
    report("block", rows, batch, fns, check, nfe, T, args.reps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=2, help="timed runs per side (best of)")
    p.add_argument("--only", choices=("gemma", "block"))
    p.add_argument("--tokens", type=int, default=64, help="new tokens per row")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("$", command_line())
    print(source_state())
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.reps} "
          "interleaved runs after a warm-up; new tokens of all 16 rows / wall time")  # fmt: skip
    with torch.no_grad():
        if args.only in (None, "gemma"):
            run_gemma(args)
        if args.only in (None, "block"):
            run_block(args)


if __name__ == "__main__":
    main()
