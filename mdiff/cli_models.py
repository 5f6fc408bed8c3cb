"""The model-development commands of `mdiff`: ``train`` (vae, dit, text), ``eval fim``,
``eval video`` and ``complete``. Parsers only; the work is imported lazily from the frontends."""

from __future__ import annotations

import argparse
import sys

from mdiff.errors import MdiffError


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


# ------------------------------------------------------------------------------------- train


def add_train(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="train_target", metavar="MODEL", required=True)
    v = sub.add_parser(
        "vae",
        help="train the causal video VAE on procedural shapes clips",
        description="Train the causal video VAE on procedural shapes clips (resumable).",
        formatter_class=_Formatter,
    )
    v.add_argument("--out", default="runs/shapes-vae", help="run folder (default runs/shapes-vae)")
    v.add_argument("--steps", type=int, default=100_000, help="target step count (default 1e5)")
    v.add_argument("--batch-size", type=int, default=4, help="clips per step (default 4)")
    v.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    v.add_argument("--size", type=int, default=64, help="frame height and width (default 64)")
    v.add_argument(
        "--frames", type=int, default=None, choices=[5, 9, 17, 33, 65, 129],
        help="frames per training clip (default 17; may change on --resume); a causal decoder "
        "degrades past the length it was trained on",
    )  # fmt: skip
    v.add_argument("--base-dim", type=int, default=16, help="VAE base channels (default 16)")
    v.add_argument("--z-dim", type=int, default=16, help="latent channels (default 16)")
    v.add_argument("--res-blocks", type=int, default=1, help="res blocks per level (default 1)")
    v.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default 2e-4; may change on --resume)",
    )
    v.add_argument("--recon", choices=["l1", "l2"], default="l1", help="reconstruction loss")
    v.add_argument(
        "--focus-weight", type=float, default=0.0,
        help="extra recon weight on pixels unlike the clip's dominant colour (default 0)",
    )  # fmt: skip
    v.add_argument(
        "--crop", type=int, default=None,
        help="random CROP x CROP training windows (0: full frames; may change on --resume)",
    )  # fmt: skip
    v.add_argument(
        "--mixed-precision", choices=["no", "bf16"], default=None,
        help="bf16 autocast (default no; may change on --resume)",
    )  # fmt: skip
    v.add_argument(
        "--init-from", metavar="VAE", default=None,
        help="start a new run from an exported VAE folder or built-in name (its architecture)",
    )  # fmt: skip
    v.add_argument(
        "--freeze-encoder", action="store_true",
        help="with --init-from: train the decoder only (latents, and DiTs on them, stay valid)",
    )  # fmt: skip
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--save-every", type=int, default=200, help="checkpoint period in steps")
    v.add_argument("--log-every", type=int, default=50, help="metrics.jsonl period in steps")
    v.add_argument("--eval-every", type=int, default=1000, help="held-out eval period (0: never)")
    v.add_argument(
        "--threads", type=int, default=argparse.SUPPRESS, help="torch threads (default: cores)"
    )
    v.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    v.add_argument("--export", metavar="DIR", help="after training, export the EMA VAE to DIR")
    v.add_argument(
        "--export-only", action="store_true", help="export --out to --export, no training"
    )
    _add_train_dit(sub)
    _add_train_text(sub)


def _add_train_dit(sub) -> None:
    d = sub.add_parser(
        "dit",
        help="train the video DiT and its text encoder on VAE latents of shapes clips",
        description="Train the space-time DiT jointly with the shapes text encoder by flow "
        "matching on latents of procedural shapes clips (encoded once by the frozen VAE into "
        "the run folder), resumable. Block-causal presets (shapes-tiny-stream) train with "
        "diffusion forcing (one noise level per chunk). --export writes a pipeline folder.",
        formatter_class=_Formatter,
    )
    d.add_argument("--out", default=None, help="run folder (default runs/dit-PRESET)")
    d.add_argument("--preset", default="shapes-tiny", help="DiT preset (default shapes-tiny)")
    d.add_argument("--vae", default="shapes-vae", help="VAE: built-in name or folder")
    d.add_argument("--steps", type=int, default=100_000, help="target step count (default 1e5)")
    d.add_argument("--batch-size", type=int, default=16, help="clips per step (default 16)")
    d.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    _add_cooldown(d)
    d.add_argument("--size", type=int, default=64, help="frame height and width (default 64)")
    d.add_argument(
        "--frames", type=int, default=17, choices=[17, 21, 25, 29, 33], help="frames per clip"
    )
    d.add_argument("--clips", type=int, default=16384, help="training clips to encode (16384)")
    d.add_argument("--lr", type=float, default=3e-4)
    d.add_argument(
        "--caption-dropout", type=float, default=0.1, help="P(caption -> null) (default 0.1)"
    )
    d.add_argument(
        "--clean-context", type=float, default=0.5,
        help="block-causal DiTs: P(teacher forcing with clean earlier chunks) (default 0.5)",
    )  # fmt: skip
    d.add_argument(
        "--first-chunk-weight", type=float, default=1.0,
        help="block-causal DiTs: loss weight of the context-free first chunk (default 1)",
    )  # fmt: skip
    d.add_argument("--shift", type=float, default=None, help="time shift (default: by tokens)")
    d.add_argument(
        "--mixed-precision", choices=["no", "bf16"], default="no",
        help="bf16 autocast (faster on CPUs with AVX512-BF16, far slower without; default no)",
    )  # fmt: skip
    d.add_argument(
        "--init-from", metavar="PIPELINE", default=None,
        help="start a new run from a pipeline's DiT and text encoder (built-in name or folder; "
        "same --preset, and a --vae with the same encoder)",
    )  # fmt: skip
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--save-every", type=int, default=500, help="checkpoint period in steps")
    d.add_argument("--log-every", type=int, default=50, help="metrics.jsonl period in steps")
    d.add_argument("--eval-every", type=int, default=1000, help="held-out eval period (0: never)")
    d.add_argument(
        "--threads", type=int, default=argparse.SUPPRESS, help="torch threads (default: cores)"
    )
    d.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    d.add_argument("--export", metavar="DIR", help="after training, export a pipeline to DIR")
    d.add_argument(
        "--export-only", action="store_true", help="export --out to --export, no training"
    )
    d.add_argument(
        "--export-vae", metavar="VAE", default=None,
        help="ship this VAE instead of the run's: a decoder fine-tune of it (same encoder)",
    )  # fmt: skip
    d.add_argument(
        "--guidance", type=float, default=None,
        help="with --export: the pipeline's default CFG scale (default 4)",
    )  # fmt: skip
    d.add_argument(
        "--export-frames", type=int, default=None, metavar="N",
        help="with --export: the pipeline's default clip length (default: the training clips')",
    )  # fmt: skip
    d.add_argument(
        "--sink-position", choices=("absolute", "adjacent"), default=None,
        help="with --export: the attention sink's RoPE time past the rolling window: its own, "
        "or just before the window (every chunk then sees the positions of training)",
    )  # fmt: skip
    d.add_argument(
        "--context-noise", type=float, default=None,
        help="with --export: re-noise finished chunks to t = 1 - this before the next reads them",
    )  # fmt: skip


def _add_cooldown(parser) -> None:
    parser.add_argument(
        "--cooldown", type=int, metavar="N", default=None,
        help="decay the learning rate linearly to 0 over the last N steps before --steps "
        "(recorded in the run: later resumes keep it)",
    )  # fmt: skip


def _add_train_text(sub) -> None:
    t = sub.add_parser(
        "text",
        help="train a text model on code (masked / block diffusion or the AR FIM baseline)",
        description="Train a text model on a folder of source files (default: the Python "
        "standard library), resumable. --kind mdm: masked diffusion (LLaDA/MDLM); block: "
        "block diffusion (BD3-LM); ar: the causal fill-in-the-middle baseline.",
        formatter_class=_Formatter,
    )
    t.add_argument("--out", default=None, help="run folder (default runs/code-KIND)")
    t.add_argument("--kind", default="mdm", choices=["mdm", "block", "ar"], help="objective")
    t.add_argument("--preset", default="code-tiny", help="model size preset (default code-tiny)")
    t.add_argument("--steps", type=int, default=20_000, help="target step count (default 2e4)")
    t.add_argument("--batch-size", type=int, default=16, help="sequences per step (default 16)")
    t.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument(
        "--mixed-precision", choices=["no", "bf16"], default="no",
        help="bf16 autocast (2.5x faster with AVX512-BF16, far slower without; default no)",
    )  # fmt: skip
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    _add_cooldown(t)
    t.add_argument("--corpus", default=None, help="folder of sources (default: the stdlib)")
    t.add_argument("--pattern", default="*.py", help="file glob in --corpus (default *.py)")
    t.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary (default 4096)")
    t.add_argument("--block-size", type=int, default=16, help="tokens per block (--kind block)")
    t.add_argument(
        "--fim-order", choices=["psm", "spm"], default="psm",
        help="--kind ar: FIM layout, prefix-suffix-middle or Code Llama's suffix-prefix-middle",
    )  # fmt: skip
    t.add_argument(
        "--init-from", metavar="MODEL", default=None,
        help="start a new run from an exported text model (its tokenizer and weights), e.g. "
        "a bidirectional one fine-tuned into --kind block",
    )  # fmt: skip
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save-every", type=int, default=500, help="checkpoint period in steps")
    t.add_argument("--log-every", type=int, default=50, help="metrics.jsonl period in steps")
    t.add_argument("--eval-every", type=int, default=1000, help="held-out eval period (0: never)")
    t.add_argument(
        "--threads", type=int, default=argparse.SUPPRESS, help="torch threads (default: cores)"
    )
    t.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    t.add_argument("--export", metavar="DIR", help="after training, export the EMA model to DIR")
    t.add_argument(
        "--export-only", action="store_true", help="export --out to --export, no training"
    )
    t.add_argument(
        "--checkpoint", default="latest", metavar="NAME",
        help="with --export: the checkpoint to export, e.g. step_00005000 (early stopping on "
        "the held-out loss in metrics.jsonl)",
    )  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    if args.export_only and not args.export:
        raise MdiffError("--export-only needs --export DIR")
    if args.train_target == "text":
        return _train_text(args)
    if args.train_target == "dit":
        return _train_dit(args)
    return _train_vae(args)


def _train_text(args: argparse.Namespace) -> int:
    import shlex

    from mdiff.text.training import train as train_text

    command = shlex.join(["mdiff", *sys.argv[1:]])
    out = args.out or f"runs/code-{args.kind}"
    if not args.export_only:
        result = train_text.train(
            out, kind=args.kind, preset=args.preset, steps=args.steps,
            batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, resume=args.resume,
            mixed_precision=args.mixed_precision,
            corpus=args.corpus, pattern=args.pattern, vocab_size=args.vocab_size,
            block_size=args.block_size, save_every=args.save_every, log_every=args.log_every,
            eval_every=args.eval_every, seed=args.seed, progress=not args.no_progress,
            command=command, init_from=args.init_from, cooldown=args.cooldown,
            fim_order=args.fim_order,
        )  # fmt: skip
        print(f"trained to step {result.step}, loss {result.loss:.5f} ({out})")
    if args.export:
        log = train_text.export(out, args.export, checkpoint=args.checkpoint, command=command)
        h = log["heldout"]
        print(
            f"exported step {log['step']} to {args.export}: held-out "
            f"{h['heldout_bits_per_token']:.4f} bits/token, "
            f"{h['heldout_bits_per_byte']:.4f} bits/byte ({log['kind']}, {h['windows']} windows)"
        )
    return 0


def _train_dit(args: argparse.Namespace) -> int:
    import shlex

    from mdiff.video.dit import train as train_dit

    command = shlex.join(["mdiff", *sys.argv[1:]])
    out = args.out or f"runs/dit-{args.preset}"
    if not args.export_only:
        result = train_dit.train(
            out, preset=args.preset, vae=args.vae, steps=args.steps, batch_size=args.batch_size,
            resume=args.resume, size=args.size, frames=args.frames, clips=args.clips, lr=args.lr,
            caption_dropout=args.caption_dropout, clean_context=args.clean_context,
            first_chunk_weight=args.first_chunk_weight,
            shift=args.shift, mixed_precision=args.mixed_precision, save_every=args.save_every,
            log_every=args.log_every, eval_every=args.eval_every, seed=args.seed,
            progress=not args.no_progress, command=command, cooldown=args.cooldown,
            init_from=args.init_from,
        )  # fmt: skip
        print(f"trained to step {result.step}, loss {result.loss:.5f} ({out})")
    if args.export:
        given = {"guidance": args.guidance, "context_noise": args.context_noise,
                 "num_frames": args.export_frames}  # fmt: skip
        settings = {k: v for k, v in given.items() if v is not None} or None
        log = train_dit.export(out, args.export, vae=args.export_vae, settings=settings,
                               sink_position=args.sink_position, command=command)  # fmt: skip
        h = log["heldout"]
        print(
            f"exported step {log['step']} to {args.export}: held-out flow-matching loss "
            f"{h['heldout_fm']:.5f} (without captions {h['heldout_fm_uncond']:.5f}, "
            f"{h['clips']} clips)"
        )
    return 0


def _train_vae(args: argparse.Namespace) -> int:
    import shlex

    from mdiff.video.vae import train as train_vae

    command = shlex.join(["mdiff", *sys.argv[1:]])
    if not args.export_only:
        result = train_vae.train(
            args.out, steps=args.steps, batch_size=args.batch_size, resume=args.resume,
            size=args.size, frames=args.frames, base_dim=args.base_dim, z_dim=args.z_dim,
            num_res_blocks=args.res_blocks, lr=args.lr, save_every=args.save_every,
            objective=train_vae.VAEObjective(recon=args.recon, focus_weight=args.focus_weight),
            log_every=args.log_every, eval_every=args.eval_every, seed=args.seed,
            crop=args.crop, mixed_precision=args.mixed_precision, init_from=args.init_from,
            freeze_encoder=args.freeze_encoder, progress=not args.no_progress, command=command,
        )  # fmt: skip
        print(f"trained to step {result.step}, loss {result.loss:.5f} ({args.out})")
    if args.export:
        log = train_vae.export(args.out, args.export, command=command)
        h = log["heldout"]
        print(
            f"exported step {log['step']} to {args.export}: held-out PSNR {h['psnr_mean']:.2f} dB "
            f"(min {h['psnr_min']:.2f}), SSIM {h['ssim_mean']:.4f} (min {h['ssim_min']:.4f}), "
            f"flicker {h['flicker_recon']:.5f} vs original {h['flicker_orig']:.5f}"
        )
    return 0


# ------------------------------------------------------------------------------------- eval


def add_eval(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval_target", metavar="TASK", required=True)
    f = sub.add_parser(
        "fim", formatter_class=_Formatter,
        help="fill-in-the-middle exact match on held-out code (fixed / true / auto length)",
        description="Cut single- or multi-line holes from the model's held-out files (or "
        "--corpus) and report exact match per length mode, tokens per forward and tokens/s.",
    )  # fmt: skip
    f.add_argument("--model", default="code-tiny", help="built-in name or model folder")
    f.add_argument("--ar", metavar="MODEL", help="also score this autoregressive FIM baseline")
    f.add_argument("--corpus", help="folder of sources (default: the model's held-out files)")
    f.add_argument("--kind", choices=["single", "multi"], default="single")
    f.add_argument("-n", type=int, default=50, help="number of tasks (default 50)")
    f.add_argument("--modes", default="fixed,true,auto", help="comma list of fixed,true,auto")
    f.add_argument("--fixed-length", type=int, default=16, help="tokens in fixed mode")
    f.add_argument("--schedule", default="equal", help="equal|dream|cosine|threshold|entropy")
    f.add_argument("--threshold", type=float, default=0.9, help="for --schedule threshold")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-heal", action="store_true",
                   help="no token healing at the hole's left edge (for comparison)")  # fmt: skip
    f.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_eval_video(sub)


def _add_eval_video(sub) -> None:
    from mdiff.cli_generate import DEFAULT_MODEL

    v = sub.add_parser(
        "video", formatter_class=_Formatter,
        help="prompt adherence (colour, shape, motion, background) and temporal figures",
        description="Generate a clip per prompt and seed and score it with weight-free "
        "detectors: accuracy per attribute (colour, shape, motion and direction, background, "
        "object count) and the temporal figures flicker, drift and, for streamed output, the "
        "chunk-seam jump. Prompts default to captions of held-out shapes clips.",
    )  # fmt: skip
    v.add_argument("--model", default=DEFAULT_MODEL, help="built-in name or pipeline folder")
    what = v.add_mutually_exclusive_group()
    what.add_argument("--prompts", metavar="FILE", help="one prompt per line (# comments)")
    what.add_argument("-n", type=int, default=20, help="held-out shapes captions (default 20)")
    v.add_argument(
        "--objects", type=int, choices=[1, 2], default=None,
        help="only held-out captions naming this many objects (default: any)",
    )  # fmt: skip
    v.add_argument("--skip", type=int, default=0,
                   help="start after this many held-out captions (default 0)")  # fmt: skip
    v.add_argument("--frames", type=int, default=17, help="frames per clip, 1 + 4k (default 17)")
    v.add_argument("--size", type=int, help="height and width (default: the model's)")
    v.add_argument("--steps", type=int, help="solver steps (default: the model's)")
    v.add_argument("--guidance", type=float, help="CFG scale (default: the model's)")
    v.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    v.add_argument("--seeds", type=int, default=1, help="seeds per prompt (default 1)")
    v.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument(
        "--reference", action="store_true",
        help="generate nothing: score the held-out clips themselves, as rendered and through "
        "the model's VAE (the most a model can reach on these captions)",
    )  # fmt: skip
    v.add_argument(
        "--image-to-video", action="store_true",
        help="start each clip from its held-out clip's first frame (image-to-video) and "
        "report the first-frame PSNR against it, beside that frame's VAE round trip",
    )  # fmt: skip


def run_eval(args: argparse.Namespace) -> int:
    if args.eval_target == "video":
        from mdiff.video.eval import run as eval_cli

        return eval_cli.run_eval_video(args)
    from mdiff.text import cli as text_cli

    return text_cli.run_eval_fim(args)


# ---------------------------------------------------------------------------------- complete


def add_complete(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a source file with <FILL> markers (or use --line)")
    p.add_argument("--line", type=int, help="regenerate the code of this line (1-based)")
    p.add_argument("-o", "--output", help="write the result here, with a signed .c2pa sidecar")
    p.add_argument("--stream", action="store_true", help="show committed text and drafts live")
    p.add_argument("--model", default="code-tiny", help="built-in name or model folder")
    p.add_argument("--length", default="auto", help="tokens per hole, or auto (default)")
    p.add_argument("--schedule", default="equal", help="equal|dream|cosine|threshold|entropy")
    p.add_argument("--steps", type=int, help="denoising steps per hole (default: one per token)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0)


def run_complete(args: argparse.Namespace) -> int:
    from mdiff.text import cli as text_cli

    if args.length != "auto" and not (args.length.isdigit() and int(args.length) > 0):
        raise MdiffError(f"--length must be a positive integer or auto, got {args.length!r}")
    return text_cli.run_complete(args)
