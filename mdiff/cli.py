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
    return 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=1500, help="training steps per toy (default 1500)")
    p.add_argument("--seed", type=int, default=0)


COMMANDS = {
    "doctor": ("print versions of torch, CUDA, xformers, c2pa, av, decord, threads", None, _doctor),
    "demo": ("run what the library can do so far, end to end", _add_demo, _demo),
}


def build_parser() -> argparse.ArgumentParser:
    import mdiff

    parser = argparse.ArgumentParser(
        prog="mdiff", description="Multimodal diffusion with provenance."
    )
    parser.add_argument("--version", action="version", version=f"mdiff {mdiff.__version__}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add, _run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
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
