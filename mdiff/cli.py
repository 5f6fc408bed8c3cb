"""The ``mdiff`` command.

Subcommands register themselves in ``COMMANDS`` as ``(help, add_arguments, run)``; frontends are
imported lazily inside ``run`` so ``mdiff --help`` and ``mdiff doctor`` stay fast and the core
imports no frontend. Any ``MdiffError`` becomes one line on stderr and exit code 2; Ctrl-C
exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import sys

from mdiff.errors import MdiffError

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130
log = logging.getLogger("mdiff")


def physical_cores() -> int:
    """Physical cores (hyper-threads oversubscribe torch's intra-op pool)."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def set_threads(n: int | None) -> int:
    """Set torch's intra-op thread count once, for the CLI only (the library never does)."""
    import torch

    n = n or physical_cores()
    torch.set_num_threads(n)
    return n


# ---------------------------------------------------------------------------------------- doctor


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - report any import failure, never crash doctor
        return f"not available ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
    return str(getattr(mod, "__version__", "installed"))


def doctor_report() -> list[tuple[str, str]]:
    """What the environment has, as (name, value) rows."""
    import torch

    import mdiff

    rows = [
        ("mdiff", mdiff.__version__),
        ("python", platform.python_version()),
        ("platform", f"{platform.system()} {platform.machine()}"),
        ("torch", torch.__version__),
    ]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rows.append(("cuda", f"{torch.version.cuda} ({names})"))
    else:
        rows.append(("cuda", "not available (CPU only)"))
    for name, module in [
        ("xformers", "xformers"),
        ("c2pa", "c2pa"),
        ("av", "av"),
        ("decord", "decord"),
        ("transformers", "transformers"),
        ("tokenizers", "tokenizers"),
        ("accelerate", "accelerate"),
        ("safetensors", "safetensors"),
        ("numpy", "numpy"),
    ]:
        rows.append((name, _version(module)))
    rows.append(("attention", _attention_backends()))
    rows.append(("threads", f"torch {torch.get_num_threads()}, physical cores {physical_cores()}"))
    return rows


def _attention_backends() -> str:
    """Which attention backends run here (see mdiff.nn.attention), and any override."""
    import torch

    from mdiff.nn.attention import ENV_VAR, available_backends

    device = "cuda" if torch.cuda.is_available() else "cpu"
    names = [
        "flex (forward-only)" if n == "flex" and device == "cpu" else n
        for n in available_backends(device)
    ]
    override = f"; ${ENV_VAR}={os.environ[ENV_VAR]}" if os.environ.get(ENV_VAR) else ""
    return ", ".join(names) + f" on {device}{override}"


def _doctor(args: argparse.Namespace) -> int:
    for name, value in doctor_report():
        print(f"{name:>13}  {value}")
    return 0


# ------------------------------------------------------------------------------------------ demo


def _demo(args: argparse.Namespace) -> int:
    from mdiff import toys

    print("mdiff demo: the flow-matching core on toy problems (later: video, FIM, verify)\n")
    r = toys.run_toy_2d(steps=args.steps, seed=args.seed, progress=True)
    print(toys.format_toy_2d(r))
    print()
    d = toys.run_toy_discrete(steps=args.steps, seed=args.seed, progress=True)
    print(toys.format_toy_discrete(d))
    print()
    return _demo_outputs(args, r, d)


def _demo_outputs(args: argparse.Namespace, r2d, rdisc) -> int:
    """Save the toys' samples through the provenance stamper, then verify every file."""
    from pathlib import Path

    from mdiff import toys
    from mdiff.provenance.stamp import Stamper
    from mdiff.provenance.verify import verify
    from mdiff.record import GenerationRecord

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamper = Stamper(home=args.home)
    image = toys.render_scatter(r2d.samples, r2d.labels, size=256)
    record = GenerationRecord.create(
        "image", "mdiff-toy-2d", sampler="heun", steps=16, seed=args.seed,
        sizes={"width": image.shape[2], "height": image.shape[1]},
    )  # fmt: skip
    files = [stamper.save(stamper.frames(image, record), out / "toy_2d.png")]
    lines = ["".join("abcd"[i] for i in row) for row in rdisc.samples.tolist()]
    record = GenerationRecord.create(
        "text", "mdiff-toy-discrete", sampler="stochastic_euler", steps=20, seed=args.seed,
        sizes={"tokens": rdisc.samples.numel()},
    )  # fmt: skip
    text_out = stamper.text("\n".join(lines) + "\n", record, policy=None)
    files.append(stamper.save(text_out, out / "toy_sequences.txt"))
    print("Outputs (watermarked where the format allows, C2PA-signed), verified:")
    worst = 0
    for path in files:
        report = verify(path, home=args.home)
        wm = report.watermark or {}
        if wm.get("detected"):
            mark = f"watermark z={wm['z']:.1f}"
        elif wm.get("checked") is False:
            mark = f"watermark not checked: {wm['reason']}"
        else:
            mark = "watermark NOT detected"
        print(f"  {path}: {report.verdict} (exit {report.exit_code}; {mark})")
        worst = max(worst, report.exit_code)
    return 0 if worst == 0 else EXIT_ERROR


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=1500, help="training steps per toy (default 1500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="mdiff-demo", help="folder for the demo's outputs")


# ------------------------------------------------------------------------------- provenance


def _add_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["init"], help="init: create the development identity")
    p.add_argument("--force", action="store_true", help="replace an existing identity")


def _add_sign(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="an image (.png/.jpg), video (.mp4) or text file")
    p.add_argument("-o", "--output", help="output path (default: FILE-signed.EXT; text: in place)")
    p.add_argument("--model", default="external", help="generator to name in the manifest")


def _add_verify(p: argparse.ArgumentParser) -> None:
    p.usage_exit_code = 4  # verify's documented code for usage errors (2 means tampered there)
    p.add_argument("file", help="image, video or text file to check")
    p.add_argument("--sidecar", help="manifest file for text (default: FILE.c2pa)")
    p.add_argument(
        "--trust-anchor", action="append", default=[], metavar="PEM",
        help="an extra trusted root certificate (repeatable); our development root is trusted",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-watermark", action="store_true", help="skip watermark detection")
    p.epilog = (
        "exit codes: 0 intact (trusted), 1 warning (untrusted signer, or provenance stripped "
        "but watermark found), 2 invalid/tampered, 3 nothing found, 4 usage or unreadable file"
    )


def _provenance(name: str):
    def run(args: argparse.Namespace) -> int:
        from mdiff.provenance import cli as provenance_cli

        return getattr(provenance_cli, f"run_{name}")(args)

    return run


# ------------------------------------------------------------------------------------- train


def _add_train(p: argparse.ArgumentParser) -> None:
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
    v.add_argument("--frames", type=int, default=9, choices=[5, 9, 17], help="frames per clip")
    v.add_argument("--base-dim", type=int, default=16, help="VAE base channels (default 16)")
    v.add_argument("--z-dim", type=int, default=16, help="latent channels (default 16)")
    v.add_argument("--res-blocks", type=int, default=1, help="res blocks per level (default 1)")
    v.add_argument("--lr", type=float, default=2e-4)
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
    _add_train_text(sub)


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
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument("--corpus", default=None, help="folder of sources (default: the stdlib)")
    t.add_argument("--pattern", default="*.py", help="file glob in --corpus (default *.py)")
    t.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary (default 4096)")
    t.add_argument("--block-size", type=int, default=16, help="tokens per block (--kind block)")
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


def _train(args: argparse.Namespace) -> int:
    if args.export_only and not args.export:
        raise MdiffError("--export-only needs --export DIR")
    if args.train_target == "text":
        return _train_text(args)
    return _train_vae(args)


def _train_text(args: argparse.Namespace) -> int:
    import shlex

    from mdiff.text import train as train_text

    command = shlex.join(["mdiff", *sys.argv[1:]])
    out = args.out or f"runs/code-{args.kind}"
    if not args.export_only:
        result = train_text.train(
            out, kind=args.kind, preset=args.preset, steps=args.steps,
            batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, resume=args.resume,
            corpus=args.corpus, pattern=args.pattern, vocab_size=args.vocab_size,
            block_size=args.block_size, save_every=args.save_every, log_every=args.log_every,
            eval_every=args.eval_every, seed=args.seed, progress=not args.no_progress,
            command=command,
        )  # fmt: skip
        print(f"trained to step {result.step}, loss {result.loss:.5f} ({out})")
    if args.export:
        log = train_text.export(out, args.export, command=command)
        h = log["heldout"]
        print(
            f"exported step {log['step']} to {args.export}: held-out "
            f"{h['heldout_bits_per_token']:.4f} bits/token, "
            f"{h['heldout_bits_per_byte']:.4f} bits/byte ({log['kind']}, {h['windows']} windows)"
        )
    return 0


def _train_vae(args: argparse.Namespace) -> int:
    import shlex

    from mdiff.video import train_vae

    command = shlex.join(["mdiff", *sys.argv[1:]])
    if not args.export_only:
        result = train_vae.train(
            args.out, steps=args.steps, batch_size=args.batch_size, resume=args.resume,
            size=args.size, frames=args.frames, base_dim=args.base_dim, z_dim=args.z_dim,
            num_res_blocks=args.res_blocks, lr=args.lr, save_every=args.save_every,
            log_every=args.log_every, eval_every=args.eval_every, seed=args.seed,
            progress=not args.no_progress, command=command,
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


COMMANDS = {
    "doctor": ("print versions of torch, CUDA, xformers, c2pa, av, decord, threads", None, _doctor),
    "demo": ("run what the library can do so far, end to end", _add_demo, _demo),
    "keys": ("create the signing identity and watermark secret", _add_keys, _provenance("keys")),
    "sign": ("watermark and C2PA-sign an existing file", _add_sign, _provenance("sign")),
    "verify": (
        "report a file's C2PA manifest, watermark and verdict",
        _add_verify,
        _provenance("verify"),
    ),  # fmt: skip
    "train": (
        "train a model (vae: the causal video VAE on shapes; text: a code model)",
        _add_train,
        _train,
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse with a per-command exit code for usage errors (argparse's default is 2)."""

    usage_exit_code = EXIT_ERROR

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit_code, f"{self.prog}: error: {message}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    import mdiff

    parser = _Parser(prog="mdiff", description="Multimodal diffusion with provenance.")
    parser.add_argument("--version", action="version", version=f"mdiff {mdiff.__version__}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--home", default=None, help="keys and identity folder ($MDIFF_HOME)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add, _run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)
        if add is not None:
            add(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_ERROR
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.threads is not None and args.threads < 1:
            raise MdiffError("--threads must be at least 1")
        set_threads(args.threads)
        return COMMANDS[args.command][2](args)
    except MdiffError as exc:
        print(f"mdiff: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("mdiff: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
