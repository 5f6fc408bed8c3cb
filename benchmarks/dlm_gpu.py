"""`dlm_reference.py` at real model sizes on a GPU (random weights, bf16): ours vs DiffusionGemma's
own ``generate`` and vs diffusers' `LLaDA2Pipeline`, at identical outputs (issue 29).

Run:  .venv/bin/python benchmarks/dlm_gpu.py [--only gemma|llada2] [--reps 2]
          [--gemma-layers 30] [--llada2-layers 20] [--tokens 512] [--llada2-tokens 256]
      .venv/bin/python benchmarks/dlm_gpu.py --device cpu     (tiny sizes: a smoke check)

Sizes (CUDA):
- DiffusionGemma: installed transformers' `DiffusionGemmaTextConfig` defaults (the config class
  documented for google/diffusiongemma-26B-A4B-it: vocab 262144, hidden 2304, 30 layers,
  8 heads / 4 KV heads of 256, full layers' heads 512, sliding window 512) and its
  `DiffusionGemmaConfig` canvas of 256. The class leaves the experts unset but the model needs
  them: 128 experts top 8 (the 26B-A4B's counts) of width 704 (assumed), about 22B parameters,
  ~44 GB in bf16. ``--gemma-layers`` fewer layers for a quicker run.
- LLaDA 2: LLaDA2.0-mini's shapes (16B MoE, ~1.4B active: vocab 157184, hidden 2048,
  20 layers, 16 heads / 4 KV heads of 128, 256 experts top 8 of width 512, layer 0 dense of
  width 5120) as a transformers Qwen3-MoE (LLaDA 2's own class is remote code), block-causal
  blocks of 32; ~32 GB in bf16. ``--llada2-layers`` fewer layers for a quicker run.

The model's logits are cast to float32 before either sampler sees them (`dlm_models.MaskFree`),
so both decide on the same numbers; the check line says whether the tokens are identical.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line  # noqa: E402
from dlm_models import source_state  # noqa: E402
from dlm_reference import SIZE, run_gemma, run_llada2  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

GEMMA_MOE = dict(experts=128, top_k=8, moe_size=704)  # used where the config class has none
LLADA2_MINI = dict(
    vocab=157184,
    hidden=2048,
    layers=20,
    heads=16,
    kv_heads=4,
    head_dim=128,
    intermediate=5120,
    experts=256,
    top_k=8,
    moe_size=512,
    dense_layers=(0,),
)


def gemma_real() -> tuple[dict, int]:
    """The installed transformers' DiffusionGemma defaults (text config, canvas length)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaTextConfig

    t = DiffusionGemmaTextConfig()
    d = t.to_dict()
    per = d.get("per_layer_config") or {}  # {"05": {"head_dim": 512}, ...}: the full layers
    wide = next((v["head_dim"] for v in per.values() if "head_dim" in v), d["head_dim"])
    size = dict(vocab=t.vocab_size, hidden=t.hidden_size, layers=t.num_hidden_layers,
                heads=t.num_attention_heads, kv_heads=t.num_key_value_heads,
                head_dim=d["head_dim"], global_head_dim=wide,
                intermediate=t.intermediate_size, experts=t.num_experts or 0,
                top_k=t.top_k_experts or 0, moe_size=t.moe_intermediate_size or 0,
                sliding=t.sliding_window)  # fmt: skip
    if not size["experts"]:
        size.update(GEMMA_MOE)
    return size, int(DiffusionGemmaConfig.__dataclass_fields__["canvas_length"].default or 256)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (tiny smoke run)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default bf16 on CUDA, fp32 on CPU")  # fmt: skip
    p.add_argument("--only", choices=("gemma", "llada2"))
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--tokens", type=int, default=None, help="DiffusionGemma new tokens")
    p.add_argument("--llada2-tokens", type=int, default=None, help="LLaDA 2 new tokens")
    p.add_argument("--gemma-layers", type=int, default=None)
    p.add_argument("--llada2-layers", type=int, default=None)
    p.add_argument("--steps", type=int, default=48, help="DiffusionGemma max_denoising_steps")
    p.add_argument("--bound", type=float, default=5.0, help="DiffusionGemma entropy_bound")
    p.add_argument("--confidence", type=float, default=1.0,
                   help="DiffusionGemma confidence_threshold")  # fmt: skip
    p.add_argument("--scale", type=float, default=30.0, help="lm_head scale (confidence)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("dlm_gpu.py: no CUDA device here (torch.cuda.is_available() is False); run it on a "
              "GPU, or smoke-test with --device cpu (tiny sizes)", file=sys.stderr)  # fmt: skip
        return 2
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    print("$", command_line())
    print(source_state())
    where = torch.cuda.get_device_name(args.device) if cuda else "CPU"
    print(f"torch {torch.__version__}, {where}, {dtype}, best of {args.reps} interleaved runs "
          "after a warm-up; new tokens / wall time (CUDA synchronised)")  # fmt: skip
    if cuda:
        g_size, canvas = gemma_real()
        l_size = dict(LLADA2_MINI)
        tokens, l_tokens = args.tokens or 2 * canvas, args.llada2_tokens or 256
    else:  # the tiny shapes of dlm_reference.py, short runs
        g_size, canvas, l_size = dict(SIZE), 32, dict(SIZE)
        tokens, l_tokens = args.tokens or 64, args.llada2_tokens or 64
    if args.gemma_layers:
        g_size["layers"] = args.gemma_layers
    if args.llada2_layers:
        l_size["layers"] = args.llada2_layers
    common = dict(scale=args.scale, reps=args.reps, device=args.device, dtype=dtype)
    if args.only in (None, "gemma"):
        run_gemma(g_size, canvas=canvas, tokens=tokens, steps=args.steps, bound=args.bound,
                  confidence=args.confidence, **common)  # fmt: skip
        torch.cuda.empty_cache() if cuda else None
    if args.only in (None, "llada2"):
        run_llada2(l_size, tokens=l_tokens, **common)
    if cuda:
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated(args.device) / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
