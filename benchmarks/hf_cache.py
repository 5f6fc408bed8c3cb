"""KV caches for a transformers model behind `HFAdapter`: uncached vs Fast-dLLM's prefix and dual
caches (bidirectional spec), and the exact block cache (block-causal spec on the same weights).

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hf_cache.py [--prompt 64] [--length 128]
          [--block 32] [--steps N] [--reps 1] [--drift]

The model: a random `LlamaForCausalLM` of a real shape at a tiny size (4 layers, hidden 256,
4 heads of 64, 2 KV heads, MLP 1024, vocab 4096, transformers' own init), SDPA, float32, one
prompt of `--prompt` random tokens, `--length` new tokens in blocks of `--block`, greedy,
`--steps` total (default one token per step, LLaDA-style). Per method: tokens/s (best of
`--reps`), NFE, tokens per forward, and the fraction of generated tokens equal to the uncached
run of the same spec; `--drift` adds the max / mean drift (max |logits_cached − logits_full|
per cached step, `measure_drift=True`, an untimed extra run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import command_line  # noqa: E402
from mdiff.text.model.adapters import HFAdapter  # noqa: E402
from mdiff.text.model.spec import DenoiserSpec  # noqa: E402
from mdiff.text.sampling.sampler import generate  # noqa: E402

V, MASK, PAD, EOS = 4096, 3, 0, 2


def build_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=1024, max_position_embeddings=1024,
                      attn_implementation="sdpa")  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def run(model, prompt, args, cache, drift=False):
    t = time.perf_counter()
    out = generate(model, [prompt], gen_length=args.length, block_length=args.block,
                   steps=args.steps, cache=cache, measure_drift=drift)  # fmt: skip
    return time.perf_counter() - t, out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--drift", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    lm = build_model()
    specs = {
        "bidirectional": DenoiserSpec(V, MASK, pad_id=PAD, eos_ids=(EOS,)),
        "block_causal": DenoiserSpec(V, MASK, pad_id=PAD, eos_ids=(EOS,),
                                     attention="block_causal", block_size=args.block),
    }  # fmt: skip
    methods = [("bidirectional", "none"), ("bidirectional", "prefix"), ("bidirectional", "dual"),
               ("block_causal", "none"), ("block_causal", "exact")]  # fmt: skip
    prompt = torch.randint(4, V, (args.prompt,), generator=torch.Generator().manual_seed(1))
    prompt = prompt.tolist()
    models = {k: HFAdapter(lm, s) for k, s in specs.items()}
    with torch.no_grad():
        generate(models["bidirectional"], [prompt], gen_length=8)  # warm-up
        best, outs = {}, {}
        for _ in range(args.reps):  # methods interleaved (fair under load)
            for kind, cache in methods:
                sec, out = run(models[kind], prompt, args, cache)
                key = (kind, cache)
                best[key], outs[key] = min(best.get(key, float("inf")), sec), out
        drifts = {}
        if args.drift:
            for kind, cache in methods:
                if cache != "none":
                    d = run(models[kind], prompt, args, cache, drift=True)[1].drift
                    drifts[(kind, cache)] = (max(d), sum(d) / len(d))
    print(command_line())
    steps = args.steps or args.length
    print(f"threads {torch.get_num_threads()}, Llama 4×256 random, prompt {args.prompt}, "
          f"{args.length} tokens in blocks of {args.block}, steps {steps}")  # fmt: skip
    head = "| spec | cache | tokens/s | × uncached | NFE | tokens/forward | = uncached |"
    print(head + (" drift max / mean |" if drifts else ""))
    print("|---" * (7 + bool(drifts)) + "|")
    for kind, cache in methods:
        out, ref = outs[(kind, cache)], outs[(kind, "none")]
        gen = out.generated[0]
        agree = float((out.sequences[0, gen] == ref.sequences[0, gen]).double().mean())
        tps = args.length / best[(kind, cache)]
        base = args.length / best[(kind, "none")]
        row = (f"| {kind} | {cache} | {tps:.1f} | {tps / base:.2f} | {out.nfe} | "
               f"{float(out.tokens_per_forward[0]):.2f} | {100 * agree:.1f}% |")  # fmt: skip
        if drifts:
            d = drifts.get((kind, cache))
            row += " – |" if d is None else f" {d[0]:.2e} / {d[1]:.2e} |"
        print(row)


if __name__ == "__main__":
    main()
