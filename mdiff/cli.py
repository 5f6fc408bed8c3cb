"""The ``mdiff`` command.

Subcommands register themselves in ``COMMANDS`` as ``(help, add_arguments, run)``; frontends are
imported lazily inside ``run`` so ``mdiff --help`` and ``mdiff doctor`` stay fast and the core
imports no frontend. Any ``MdiffError`` becomes one line on stderr and exit code 2; Ctrl-C
exits 130, and a reader that leaves the pipe (`| head`) ends it quietly with 141.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import platform
import sys

from mdiff.cli_generate import add_image, add_video, run_image, run_video
from mdiff.cli_models import (
    _Formatter,
    add_complete,
    add_eval,
    add_train,
    run_complete,
    run_eval,
    run_train,
)
from mdiff.errors import MdiffError

EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PIPE = 2, 130, 141  # 141 = 128 + SIGPIPE, as a shell says
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

    print(
        "mdiff demo: the flow-matching core on toy problems, FIM with the code model, a "
        "streamed video, verify\n"
    )
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
    files += _demo_complete(out, stamper, args.seed)
    files += _demo_video(out, stamper, args.seed)
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


DEMO_SOURCE = '''def mean(values):
    """The arithmetic mean of a non-empty list."""
    total = <FILL>
    return total / len(values)
'''


def _demo_complete(out, stamper, seed: int) -> list:
    """Complete a small file with the built-in code model (when installed) and sign it."""
    from mdiff import hub

    if "code-tiny" not in hub.list_builtin():
        print("FIM: the built-in code model (code-tiny) is not installed; skipping completion\n")
        return []
    from mdiff.text.pipeline import CodeModel

    done = CodeModel.from_pretrained("code-tiny", stamper=stamper).fill(DEMO_SOURCE, seed=seed)
    print("FIM: the built-in code model filled <FILL> in:\n")
    print(done.text)
    return [done.save(out / "completed.py")]


DEMO_PROMPT = "a red circle moving right on a black background"


def _demo_video(out, stamper, seed: int) -> list:
    """Stream a clip from the built-in text-to-video model (when installed) into a live MP4."""
    from mdiff import hub

    if "shapes-t2v" not in hub.list_builtin():
        print("Video: the built-in model (shapes-t2v) is not installed; skipping video\n")
        return []
    from mdiff.video.pipeline.video_pipeline import VideoPipeline

    pipe = VideoPipeline.from_pretrained("shapes-t2v", stamper=stamper)
    path = out / "streamed.mp4"
    if pipe.causal:
        s = pipe.stream_to(path, DEMO_PROMPT, seed=seed)
        print(f"Video: streamed {s.frames} frames of {DEMO_PROMPT!r} live into {path}")
        print(f"  first frame after {s.time_to_first_frame:.2f} s, {s.fps:.1f} frames/s\n")
        return [s.path]
    pipe(DEMO_PROMPT, seed=seed).save(path)  # a bidirectional model makes the clip at once
    print(f"Video: generated {DEMO_PROMPT!r} into {path}\n")
    return [path]


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


COMMANDS = {
    "video": ("generate a signed video from a prompt (--stream: live MP4)", add_video, run_video),
    "image": ("generate a signed image from a prompt", add_image, run_image),
    "complete": (
        "fill <FILL> markers (or a line) of a source file with the code model",
        add_complete,
        run_complete,
    ),  # fmt: skip
    "eval": (
        "evaluate a model (fim: fill-in-the-middle exact match; video: prompt adherence)",
        add_eval,
        run_eval,
    ),
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
        "train a model (vae: the causal video VAE; dit: the video DiT; text: a code model)",
        add_train,
        run_train,
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse with a per-command exit code for usage errors (argparse's default is 2)."""

    usage_exit_code = EXIT_ERROR

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit_code, f"{self.prog}: error: {message}\n")


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
    except BrokenPipeError:  # the reader of our output left (`mdiff verify x.mp4 | head`)
        # later writes, and the interpreter's flush at exit, go nowhere instead of failing;
        # a captured stdout has no file descriptor
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
