"""DiffusionGemma: our runner vs the model's own ``generate`` at identical outputs (issue 29).

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gemma_speed.py [--threads 1] [--reps 3]
          [--tokens 256] [--steps 48] [--bound 5.0]

A random `DiffusionGemmaForBlockDiffusion` (`dlm_models.gemma`, the size of
`dlm_reference.py` (a)); its ``generate`` (transformers 5.x; it keeps its own exact cache: each
finished canvas encoded once) vs `generate_gemma` with the same seed (same seed, same tokens):
without our cache (``cache=False``: the context re-encoded at every canvas), with the exact KV
cache, and with the exact cache but transformers' decoder forward (``native=False``: what the
native forward in `mdiff.text.model.gemma_native` saves). Runs interleaved, best of
``--reps`` after a warm-up; ratios by wall time and by process CPU time (steadier on a shared
machine); NFE = decoder forwards (encoder forwards apart); tokens per forward; whether the
tokens equal the reference's. Then where one denoising step's time goes (best of 30, ms):
the decoder forward (transformers' and native), the seeded draw (``torch.multinomial`` over
(C, V); both runners make the same draws) and the rest of the step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_wall_cpu, command_line  # noqa: E402
from dlm_models import Counter, gemma, source_state  # noqa: E402

from mdiff.text.model.gemma import DiffusionGemmaLM  # noqa: E402
from mdiff.text.sampling.gemma_runner import Context, generate_gemma  # noqa: E402

SIZE = dict(vocab=8192, hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64,
            intermediate=1024, experts=8, top_k=2, moe_size=256)  # fmt: skip
SEED, CANVAS, PROMPT = 3, 32, 32


class Calls:
    """Counts ``lm.denoise`` calls (our decoder forwards; the native one is no module)."""

    def __init__(self, lm):
        self.lm, self.n, self.inner = lm, 0, lm.denoise

    def __enter__(self):
        def counted(*a, **k):
            self.n += 1
            return self.inner(*a, **k)

        self.lm.denoise = counted
        return self

    def __exit__(self, *exc):
        del self.lm.denoise


def step_split(lm: DiffusionGemmaLM, prompt: torch.Tensor, reps: int = 30) -> None:
    """Per-step cost at the benchmark size, ms (best of ``reps``)."""
    ctx = Context(lm)
    ctx.append(prompt[None], torch.ones(1, prompt.numel(), dtype=torch.bool))
    ctx.flush()
    g = torch.Generator().manual_seed(0)
    canvas = torch.randint(0, lm.vocab_size, (1, CANVAS), generator=g)
    mask = torch.cat([ctx.mask, torch.ones(1, CANVAS, dtype=torch.bool)], 1)
    pos = ctx.pos[:, None] + torch.arange(CANVAS)
    plan, masks = (
        lm.decoder_mask(canvas, mask, ctx.cache, pos),
        lm.decoder_mask(canvas, mask, ctx.cache),
    )
    sc = torch.randn(1, CANVAS, lm.vocab_size, generator=g)
    probs = sc.softmax(-1)[0]

    def fwd(m):
        return lambda: lm.denoise(canvas, sc, m, pos, ctx.cache, check=False)

    fns = {
        "decoder forward, transformers": fwd(masks),
        "decoder forward, native": fwd(plan),
        "seeded draw torch.multinomial (C, V)": lambda: torch.multinomial(probs, 1, generator=g),
    }
    for name, fn in fns.items():
        fn()
        best = float("inf")
        for _ in range(reps):
            t = time.process_time()
            fn()
            best = min(best, time.process_time() - t)
        print(f"  {name:<38} {best * 1e3:7.2f} ms CPU")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3, help="timed runs per method (best of)")
    p.add_argument("--tokens", type=int, default=256, help="new tokens")
    p.add_argument("--steps", type=int, default=48, help="max_denoising_steps")
    p.add_argument("--bound", type=float, default=5.0, help="entropy_bound")
    p.add_argument("--scale", type=float, default=30.0, help="lm_head scale (confidence)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        EntropyBoundSamplerConfig,
    )

    print("$", command_line())
    print(source_state())
    lm = gemma(**SIZE, canvas=CANVAS, scale=args.scale)
    plain_fwd = DiffusionGemmaLM(lm.model, native=False)
    prompt = torch.randint(
        3, SIZE["vocab"] - 3, (PROMPT,), generator=torch.Generator().manual_seed(1)
    )
    kw = dict(max_new_tokens=args.tokens, max_denoising_steps=args.steps,
              confidence_threshold=1.0, stability_threshold=1)  # fmt: skip
    theirs_kw = dict(kw, sampler_config=EntropyBoundSamplerConfig(entropy_bound=args.bound))
    kw["entropy_bound"] = args.bound
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), native forward: "
        f"{lm.native is not None}; best of {args.reps} interleaved runs after a warm-up"
    )
    print(f"random DiffusionGemma {SIZE}, lm_head x{args.scale}, fp32 cpu, canvas {CANVAS}, "
          f"prompt {PROMPT} tokens, seed {SEED}, settings {kw}")  # fmt: skip

    def ref():
        torch.manual_seed(SEED)  # the reference draws from the global stream
        return lm.model.generate(prompt[None], **theirs_kw).sequences[0, PROMPT:]

    def ours(model, cache):
        return generate_gemma(model, [prompt.tolist()], seed=SEED, cache=cache,
                              **kw).sequences[0, PROMPT:]  # fmt: skip

    fns = {"reference DiffusionGemma.generate": ref,
           "ours, no cache (re-encode)": lambda: ours(lm, False),
           "ours, exact KV cache": lambda: ours(lm, True),
           "ours, exact cache, transformers fwd": lambda: ours(plain_fwd, True)}  # fmt: skip
    seen, dec, enc = {}, lm.model.model.decoder, lm.model.model.encoder
    for i, (name, fn) in enumerate(fns.items()):  # warm-up: outputs and forward counts
        # the reference's decoder forwards by a hook; ours by counting denoise calls (a hook
        # on the decoder would send ours back to the transformers forward)
        with Counter(enc) as e, Calls(lm) as c, Calls(plain_fwd) as c2:
            if i == 0:
                with Counter(dec) as d:
                    toks = fn().cpu()
            else:
                toks = fn().cpu()
        seen[name] = (toks, d.n if i == 0 else c.n + c2.n, e.n)
    wall, cpu = best_wall_cpu(fns, args.reps)
    ref_name = next(iter(fns))
    print(
        f"  {'run':<36} {'tokens/s':>8} {'x wall':>7} {'x CPU':>6} {'NFE':>4} {'tok/fwd':>7}  same"
    )
    for name in fns:
        toks, nfe, e = seen[name]
        same = (
            "(ref)"
            if name == ref_name
            else ("yes" if torch.equal(toks, seen[ref_name][0]) else "NO")
        )
        print(f"  {name:<36} {toks.numel() / wall[name]:8.1f} {wall[ref_name] / wall[name]:6.2f}x "
              f"{cpu[ref_name] / cpu[name]:5.2f}x {nfe:4d} {toks.numel() / nfe:7.2f}  {same}"
              f"  (+{e} encoder fwd)")  # fmt: skip
    for name, goal in (("ours, no cache (re-encode)", 1.0), ("ours, exact KV cache", 2.0)):
        r = cpu[ref_name] / cpu[name]
        print(
            f"  goal >= {goal:.1f}x ({name}): {wall[ref_name] / wall[name]:.2f}x wall, "
            f"{r:.2f}x CPU: {'met' if r >= goal else 'NOT met'}"
        )
    print("where one denoising step goes (batch 1, canvas 32):")
    step_split(lm, prompt)
    total = min(wall[n] for n in fns if n.startswith("ours, exact KV")) / max(
        seen["ours, exact KV cache"][1], 1
    )
    print(f"  whole step (ours, exact cache: wall / NFE)       {total * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
