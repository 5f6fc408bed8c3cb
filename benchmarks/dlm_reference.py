"""Ours vs the reference implementations of two diffusion LMs, at identical outputs (issue 29).

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dlm_reference.py [--threads 1] [--reps 3]
          [--only gemma|llada2] [--tokens 256]

(a) DiffusionGemma: a random `DiffusionGemmaForBlockDiffusion` (MoE, sliding + full layers;
    `dlm_models.gemma`) — its own ``generate`` vs our runner (`generate_gemma`) with the same
    seed (seeded sampling: same seed, same tokens), without our cache (``cache=False``: the
    context re-encoded at every canvas) and with the exact KV cache. The reference keeps its
    own cache too (each finished canvas encoded once).
(b) LLaDA 2: a random Qwen3-MoE attending block-causally as LLaDA 2 does (`dlm_models`) —
    diffusers' `LLaDA2Pipeline` + `BlockRefinementScheduler` (its defaults: threshold 0.7,
    editing 0.5, blocks of 32, 32 steps, EOS early stop) vs `llada2_generate`; greedy.

Per run: tokens/s (new tokens / best wall time, runs interleaved, best of ``--reps`` after a
warm-up), the ratio to the reference (goals: ≥ 1.0× without our cache, ≥ 2× with it), NFE
(model forwards, counted by a hook on the model; DiffusionGemma: decoder forwards, encoder
forwards apart) and new tokens per forward, and whether the tokens equal the reference's.
(b) also prints the tokens fed to the model (the exact cache feeds only the current block) and
the ratio by process CPU time (steadier than wall time on a shared machine).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_times, best_wall_cpu, command_line  # noqa: E402
from dlm_models import (  # noqa: E402
    Counter,
    MaskFree,
    PipelineModel,
    gemma,
    llada2_driver,
    llada2_lm,
    source_state,
)

from mdiff.text.model.llada2 import llada2_config, llada2_generate  # noqa: E402
from mdiff.text.sampling.gemma_runner import generate_gemma  # noqa: E402

try:
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        EntropyBoundSamplerConfig,
    )
except ImportError:  # transformers without DiffusionGemma: (a) fails with a clear message
    EntropyBoundSamplerConfig = None

SIZE = dict(vocab=8192, hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64,
            intermediate=1024, experts=8, top_k=2, moe_size=256)  # fmt: skip
SEED = 3


def table(rows: list[dict]) -> None:
    """rows: name, seconds, tokens, nfe, note, same (None = the reference)."""
    ref = rows[0]
    print(f"  {'run':<34} {'tokens/s':>9} {'x ref':>6} {'NFE':>5} {'tok/fwd':>8}  identical")
    for r in rows:
        if r.get("missing"):
            print(f"  {r['name']:<34} {'—':>9} {'—':>6} {'—':>5} {'—':>8}  {r['missing']}")
            continue
        tps = r["tokens"] / r["seconds"]
        ratio = (ref["seconds"] / r["seconds"]) if r is not ref else 1.0
        same = "(reference)" if r is ref else ("yes" if r["same"] else "NO: speed not comparable")
        print(f"  {r['name']:<34} {tps:9.1f} {ratio:5.2f}x {r['nfe']:5d} "
              f"{r['tokens'] / r['nfe']:8.2f}  {same}{r.get('note', '')}")  # fmt: skip
    for r, goal in zip(rows[1:], (1.0, 2.0), strict=False):
        if r.get("missing"):
            print(f"  goal {goal:.1f}x ({r['name']}): not measured, {r['missing']}")
            continue
        ratio = ref["seconds"] / r["seconds"]
        ok = "met" if ratio >= goal else "NOT met"
        ok = ok if r["same"] else "NOT met (outputs differ)"
        cpu = f" (by CPU time {ref['cpu'] / r['cpu']:.2f}x)" if "cpu" in r else ""
        print(f"  goal >= {goal:.1f}x ({r['name'].strip()}): {ratio:.2f}x wall{cpu}, {ok}")


def timed(fn, device: str):
    """``fn`` that waits for the device before returning (honest wall times on CUDA)."""
    if not str(device).startswith("cuda"):
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def run_gemma(size: dict, *, canvas: int, tokens: int, steps: int, bound: float,
              confidence: float, scale: float, reps: int, device="cpu",
              dtype=torch.float32, prompt_length: int = 32) -> None:  # fmt: skip
    """(a): DiffusionGemma's own ``generate`` vs ours, uncached and with the exact cache."""
    lm = gemma(**size, canvas=canvas, scale=scale, device=device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, size["vocab"] - 3, (prompt_length,), generator=g).to(device)
    kw = dict(max_new_tokens=tokens, max_denoising_steps=steps,
              confidence_threshold=confidence, stability_threshold=1)  # fmt: skip
    theirs_kw = dict(kw, sampler_config=EntropyBoundSamplerConfig(entropy_bound=bound))
    kw["entropy_bound"] = bound
    params = sum(p.numel() for n, p in lm.model.named_parameters() if "vision" not in n)
    moe = f"{size['experts']} experts top {size['top_k']}" if size.get("experts") else "dense"
    print(f"(a) DiffusionGemma, random ({params / 1e6:.1f}M text parameters: vocab "
          f"{size['vocab']}, hidden {size['hidden']}, {size['layers']} layers, {moe}, "
          f"lm_head x{scale}, {dtype}, {device}), canvas {canvas}; prompt {prompt_length} "
          f"tokens, {tokens} new, seed {SEED}; settings {kw}")  # fmt: skip
    dec, enc = lm.model.model.decoder, lm.model.model.encoder

    def ref():
        torch.manual_seed(SEED)  # the reference draws from the global stream
        return lm.model.generate(prompt[None], **theirs_kw).sequences[0, prompt_length:]

    def ours(cache: bool):
        out = generate_gemma(lm, [prompt.tolist()], seed=SEED, cache=cache, **kw)
        return out.sequences[0, prompt_length:]

    fns = {"ref": ref, "plain": lambda: ours(False), "cached": lambda: ours(True)}
    fns = {k: timed(f, device) for k, f in fns.items()}
    seen = {}
    for name, fn in fns.items():  # warm-up: outputs and forward counts
        with Counter(dec) as d, Counter(enc) as e:
            seen[name] = (fn().cpu(), d.n, e.n)
    best = best_times(fns, reps)
    labels = {"ref": "reference DiffusionGemma.generate", "plain": "ours, no cache (re-encode)",
              "cached": "ours, exact KV cache"}  # fmt: skip
    rows = []
    for name in fns:
        toks, d, e = seen[name]
        rows.append(dict(name=labels[name], seconds=best[name], tokens=toks.numel(), nfe=d,
                         same=torch.equal(toks, seen["ref"][0]),
                         note=f"  (+{e} encoder forwards)"))  # fmt: skip
    table(rows)
    print("  note: the reference keeps its own exact cache (each finished canvas encoded once)")


def run_llada2(size: dict, *, tokens: int, scale: float, reps: int, device="cpu",
               dtype=torch.float32, block: int = 32, prompt_length: int = 32) -> None:  # fmt: skip
    """(b): LLaDA2Pipeline (its defaults) vs ``llada2_generate``, greedy."""
    V = size["vocab"]
    MASK, EOS = V - 1, V - 2
    lm = llada2_lm(**size, scale=scale, device=device, dtype=dtype)
    free = MaskFree(lm, MASK)
    drv = llada2_driver(free, V, MASK, EOS, block)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, V - 2, (1, prompt_length), generator=g)
    kw = dict(
        gen_length=tokens,
        block_length=block,
        num_inference_steps=32,
        threshold=0.7,
        editing_threshold=0.5,
        max_post_steps=16,
        minimal_topk=1,
        eos_early_stop=True,
    )
    params = sum(p.numel() for p in lm.parameters())
    kind = "Qwen3-MoE" if size.get("experts") else "Llama"
    moe = f"{size['experts']} experts top {size['top_k']}" if size.get("experts") else "dense"
    print(f"(b) LLaDA 2 stand-in, random {kind} ({params / 1e6:.1f}M parameters: vocab {V}, "
          f"hidden {size['hidden']}, {size['layers']} layers, {moe}, lm_head x{scale}, "
          f"{dtype}, {device}), block-causal blocks of {block}; prompt {prompt_length} tokens, "
          f"{tokens} new; LLaDA2Pipeline defaults {kw}")  # fmt: skip
    import diffusers

    pipe = diffusers.LLaDA2Pipeline(
        model=PipelineModel(free, block), scheduler=diffusers.BlockRefinementScheduler()
    )
    pipe.set_progress_bar_config(disable=True)

    def ref():
        out = pipe(input_ids=prompt, eos_token_id=EOS, mask_token_id=MASK, output_type="seq",
                   temperature=0.0, **kw)  # fmt: skip
        return out.sequences[0]

    # our cache modes, where llada2_generate has them (``cache``: none | exact | auto)
    has_cache = "cache" in inspect.signature(llada2_config).parameters
    plain = dict(kw, cache="none") if has_cache else kw
    fns = {"ref": ref, "plain": lambda: llada2_generate(drv, prompt, **plain)[0]}
    if has_cache and getattr(drv.spec, "supports_cache", False):
        fns["cached"] = lambda: llada2_generate(drv, prompt, cache="exact", **kw)[0]
    fns = {k: timed(f, device) for k, f in fns.items()}
    seen, fed = {}, []  # fed: tokens the model ran per forward (the cache feeds one block)

    def feed(_module, args, kw):
        fed.append((kw["input_ids"] if "input_ids" in kw else args[0]).shape[1])

    hook = lm.register_forward_pre_hook(feed, with_kwargs=True)
    for name, fn in fns.items():
        fed.clear()
        with Counter(lm) as c:
            seen[name] = (fn().cpu(), c.n, sum(fed))
    hook.remove()
    best, cpu = best_wall_cpu(fns, reps)
    theirs = seen["ref"][0]
    leftover = int((theirs == MASK).sum())  # the pipeline leaves [MASK] after an EOS stop
    expected = torch.where(theirs == MASK, EOS, theirs)
    rows = [dict(name="reference LLaDA2Pipeline", seconds=best["ref"], tokens=theirs.numel(),
                 nfe=seen["ref"][1], same=True, cpu=cpu["ref"],
                 note=f"  ({seen['ref'][2]} tokens fed)")]  # fmt: skip
    labels = {"plain": "ours, no cache (llada2_generate)", "cached": "ours, exact block cache"}
    for name in ("plain", "cached"):
        if name not in fns:
            why = ("the driver offers no cache for this model (supports_cache=False)" if has_cache
                   else "no exact block cache exists for LLaDA 2 yet (llada2_generate has no "
                   "cache setting; LLaDA2Driver supports_cache=False)")  # fmt: skip
            rows.append(dict(name=labels[name], missing=why))
            continue
        toks, n, n_fed = seen[name]
        note = f"  ({n_fed} tokens fed"
        note += f"; {leftover} [MASK] after EOS in theirs = EOS in ours)" if leftover else ")"
        rows.append(dict(name=labels[name], seconds=best[name], tokens=toks.numel(), nfe=n,
                         same=torch.equal(toks, expected), note=note, cpu=cpu[name]))  # fmt: skip
    table(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3, help="timed runs per method (best of)")
    p.add_argument("--only", choices=("gemma", "llada2"))
    p.add_argument("--tokens", type=int, default=256, help="new tokens")
    p.add_argument("--steps", type=int, default=48, help="DiffusionGemma max_denoising_steps")
    p.add_argument("--bound", type=float, default=5.0, help="DiffusionGemma entropy_bound")
    p.add_argument(
        "--confidence",
        type=float,
        default=1.0,
        help="DiffusionGemma confidence_threshold (adaptive stop)",
    )
    p.add_argument("--scale", type=float, default=30.0, help="lm_head scale (confidence)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("$", command_line())
    print(source_state())
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.reps} "
          "interleaved runs after a warm-up; new tokens / wall time")  # fmt: skip
    if args.only in (None, "gemma"):
        run_gemma(SIZE, canvas=32, tokens=args.tokens, steps=args.steps, bound=args.bound,
                  confidence=args.confidence, scale=args.scale, reps=args.reps)  # fmt: skip
    if args.only in (None, "llada2"):
        run_llada2(SIZE, tokens=args.tokens, scale=args.scale, reps=args.reps)


if __name__ == "__main__":
    main()
