"""LLaDA 2 speed: diffusers' `LLaDA2Pipeline` vs `llada2_generate` uncached and with the exact
block KV cache, at identical greedy outputs (issue 29.4).

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llada2_speed.py [--gen 200] [--block 32]
          [--prompt 24] [--hidden 256] [--layers 4] [--vocab 16384] [--scale 12] [--reps 3]

The model: a random transformers Llama (hidden 256, 4 layers, 4 heads of 64, GQA 2 KV heads,
float32) attending block-causally as LLaDA 2 does. The pipeline gets LLaDA 2's 4-D block mask
built from its 2-D mask, and [MASK]'s logit −inf (a trained model never proposes it; ours
forbids it), so both decide from the same distribution. ``--scale`` multiplies the LM head so
that confidences reach the threshold, as a trained model's do. Pipeline settings: its defaults
(threshold 0.7, editing 0.5, 16 post steps, EOS early stop) with ``--block`` and 32 steps.

Per run: tokens/s (``gen_length`` / best time; runs interleaved, best of ``--reps`` after a
warm-up) by process CPU time (steadier on a shared machine; one thread) and the ratio to the
pipeline by CPU and by wall time (goals: ≥ 1.0× uncached, ≥ 2× cached), NFE (model forwards,
counted by a hook), tokens fed to the model per run, new tokens per forward, and whether the
tokens equal the pipeline's.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_wall_cpu, command_line  # noqa: E402

from mdiff.text.model.llada2 import LLaDA2Driver, llada2_generate  # noqa: E402
from mdiff.text.model.spec import DenoiserSpec  # noqa: E402


class _PipelineModel(nn.Module):
    """``model(x, attention_mask (B, L) 0/1, position_ids).logits`` as LLaDA2Pipeline calls it."""

    def __init__(self, lm, block: int, mask_id: int):
        super().__init__()
        self.lm, self.block, self.mask_id = lm, block, mask_id

    @property
    def device(self):
        return self.lm.device

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        blk = torch.arange(input_ids.shape[1]) // self.block
        mask = (blk[None, :] <= blk[:, None])[None, None] & attention_mask.bool()[:, None, None]
        logits = self.lm(input_ids, attention_mask=mask, position_ids=position_ids).logits
        logits[..., self.mask_id] = -torch.inf
        return types.SimpleNamespace(logits=logits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("gen", 200), ("block", 32), ("prompt", 24), ("hidden", 256),
                          ("layers", 4), ("vocab", 16384), ("reps", 3), ("threads", 1),
                          ("seed", 0)):  # fmt: skip
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--scale", type=float, default=12.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import diffusers
    import transformers as tf

    print(command_line())
    torch.manual_seed(a.seed)
    cfg = tf.LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=4 * a.hidden,
                         num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64,
                         num_key_value_heads=max(a.hidden // 128, 1), head_dim=64,
                         max_position_embeddings=4096)  # fmt: skip
    lm = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(a.scale)
    mask_id, eos_id = a.vocab - 1, a.vocab - 2
    spec = DenoiserSpec(vocab_size=a.vocab, mask_id=mask_id, eos_ids=(eos_id,),
                        attention="block_causal", block_size=a.block)  # fmt: skip
    driver = LLaDA2Driver(lm, spec)
    ids = torch.randint(0, a.vocab - 2, (1, a.prompt), generator=torch.Generator().manual_seed(1))
    kw = dict(gen_length=a.gen, block_length=a.block, num_inference_steps=32)
    pipe = diffusers.LLaDA2Pipeline(model=_PipelineModel(lm, a.block, mask_id),
                                    scheduler=diffusers.BlockRefinementScheduler())  # fmt: skip
    pipe.set_progress_bar_config(disable=True)

    fed = []  # tokens fed to the model, per forward

    def count(_module, args, kwargs):
        fed.append((kwargs["input_ids"] if "input_ids" in kwargs else args[0]).shape[1])

    lm.register_forward_pre_hook(count, with_kwargs=True)
    runs = {
        "LLaDA2Pipeline": lambda: pipe(input_ids=ids, eos_token_id=eos_id, mask_token_id=mask_id,
                                       output_type="seq", temperature=0.0, **kw).sequences,
        "ours, no cache": lambda: llada2_generate(driver, ids, cache="none", **kw),
        "ours, exact cache": lambda: llada2_generate(driver, ids, cache="exact", **kw),
    }  # fmt: skip
    outs, nfe, tokens = {}, {}, {}
    with torch.no_grad():
        for name, fn in runs.items():  # warm-up, outputs and counts
            fed.clear()
            outs[name] = fn()
            nfe[name], tokens[name] = len(fed), sum(fed)
        wall, cpu = best_wall_cpu(runs, a.reps)
    ref = outs["LLaDA2Pipeline"]
    ref_cmp = torch.where(ref == mask_id, eos_id, ref)  # ours: EOS after an early stop
    print(f"Llama hidden {a.hidden}, {a.layers} layers, vocab {a.vocab}, float32, "
          f"{a.threads} thread(s); prompt {a.prompt}, gen_length {a.gen}, block {a.block}, "
          f"{kw['num_inference_steps']} steps, threshold 0.7, editing 0.5, EOS early stop; "
          f"pipeline output: {int((ref == eos_id).sum())} EOS, {int((ref == mask_id).sum())} "
          f"[MASK] left")  # fmt: skip
    print(f"{'run':<20}{'tokens/s':>9}{'× (cpu)':>9}{'× (wall)':>9}{'NFE':>6}{'fed':>7}"
          f"{'tok/fwd':>8}{'same':>6}")  # fmt: skip
    for name in runs:
        same = name == "LLaDA2Pipeline" or torch.equal(outs[name], ref_cmp)
        r_cpu, r_wall = cpu["LLaDA2Pipeline"] / cpu[name], wall["LLaDA2Pipeline"] / wall[name]
        print(f"{name:<20}{a.gen / cpu[name]:>9.1f}{r_cpu:>8.2f}×{r_wall:>8.2f}×{nfe[name]:>6}"
              f"{tokens[name]:>7}{a.gen / nfe[name]:>8.2f}{str(same):>6}")  # fmt: skip


if __name__ == "__main__":
    main()
