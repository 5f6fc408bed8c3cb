"""The ``mdiff`` command: it only dispatches.

Each frontend owns its commands: a module in `FRONTENDS` has ``register(commands)``, which adds
its commands (`Commands.add`) and its parts of the shared groups ``train`` and ``eval``
(`Commands.group`), next to its handlers. A command's flags are added only when that command is
chosen, and the registering modules import no torch, so ``mdiff --help`` stays fast and the core
imports no frontend until a command runs. The global flags (`add_global_flags`) are taken
before or after the command's name.

Exit codes (`EXIT_CODES`, printed by ``mdiff --help``): any ``MdiffError`` and any usage error
become one line on stderr and exit code 4, for every command, so they never collide with
``mdiff verify``'s verdicts 1-3; Ctrl-C, even while torch or a model loads, exits 130 with one
line; a reader that leaves the pipe (`| head`) ends it quietly with 141.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from importlib import import_module

from mdiff.errors import MdiffError

EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PIPE = 4, 130, 141  # 141 = 128 + SIGPIPE, as a shell says
EXIT_CODES = """exit codes (every command):
  0    success (mdiff verify: provenance intact)
  1-3  mdiff verify's verdicts only: 1 warning, 2 invalid or tampered, 3 nothing found
  4    error: bad input or usage, a file that cannot be read or written, a full disk
  130  interrupted (Ctrl-C)
  141  the reader of the output left (mdiff verify x.mp4 | head)"""
FRONTENDS = ("mdiff.video.cli", "mdiff.text.cli", "mdiff.provenance.cli", "mdiff.demo",
             "mdiff.doctor", "mdiff.convert", "mdiff.serve.cli")  # fmt: skip
GROUPS = {  # commands that several frontends add to: help, metavar of the chosen member
    "eval": ("evaluate a model (fim: fill-in-the-middle exact match; video: prompt adherence)",
             "TASK"),
    "train": ("train a model (vae: the causal video VAE; dit: the video DiT; text: a code model)",
              "MODEL"),
}  # fmt: skip


def utf8_text(value: str) -> str:
    """An argparse ``type`` for free text (a prompt): refuses what is not valid UTF-8, which
    Python hands over with each undecodable byte as a lone surrogate (``"caf\\udcff"``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        shown = ascii(value if len(value) <= 60 else value[:57] + "...")
        raise argparse.ArgumentTypeError(
            f"not valid UTF-8 text (an undecodable byte at character {exc.start} of {shown})"
        ) from None
    return value


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


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks."""


def add_global_flags(parser: argparse.ArgumentParser, default=None) -> None:
    """``--threads``, ``-v`` and ``--home``: on ``mdiff`` itself (`default` None) and on every
    command (`default` SUPPRESS, so a flag given before the command is kept), except where the
    command has a flag of that name already."""
    flags = (
        (("--threads",), dict(type=int, help="torch threads (default: physical cores)")),
        (("-v", "--verbose"), dict(action="store_true", help="log at INFO level")),
        (("--home",), dict(help="keys and identity folder ($MDIFF_HOME)")),
    )
    for names, options in flags:
        with contextlib.suppress(argparse.ArgumentError):  # the command has its own
            parser.add_argument(*names, default=default, **options)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors exit with `EXIT_ERROR` (argparse's own 2 is a verdict of
    ``mdiff verify``) and whose command flags are added on first use (`arguments`, see
    `Commands.add`)."""

    usage_exit_code = EXIT_ERROR

    def __init__(self, *args, arguments: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.arguments = arguments

    def parse_known_args(self, args=None, namespace=None):
        if self.arguments is not None:
            add, self.arguments = self.arguments, None
            add(self)
            add_global_flags(self, argparse.SUPPRESS)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit_code, f"{self.prog}: error: {message}\n")


class Commands:
    """One level of ``mdiff`` subcommands, for the frontends' ``register(commands)``."""

    def __init__(self, subparsers):
        self.subparsers, self.groups = subparsers, {}

    def add(self, name: str, help: str, run: Callable[[argparse.Namespace], int],
            arguments: Callable[[argparse.ArgumentParser], None] | None = None,
            description: str | None = None) -> None:  # fmt: skip
        """Command `name`: ``run(args) -> exit code``; ``arguments(parser)`` adds its flags
        when the command is chosen (so it may import what it needs), then the global flags."""
        p = self.subparsers.add_parser(name, help=help, description=description or help,
                                       formatter_class=Formatter,
                                       arguments=arguments or (lambda _: None))  # fmt: skip
        p.set_defaults(run=run)

    def group(self, name: str) -> Commands:
        """The commands under ``mdiff NAME`` (one of `GROUPS`), made on first use."""
        if name not in self.groups:
            help_, metavar = GROUPS[name]
            p = self.subparsers.add_parser(name, help=help_, description=help_,
                                           formatter_class=Formatter)  # fmt: skip
            sub = p.add_subparsers(dest=f"{name}_target", metavar=metavar, required=True)
            self.groups[name] = Commands(sub)
        return self.groups[name]


def build_parser() -> argparse.ArgumentParser:
    import mdiff

    parser = Parser(prog="mdiff", description="Multimodal diffusion with provenance.",
                    epilog=EXIT_CODES, formatter_class=Formatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"mdiff {mdiff.__version__}")
    add_global_flags(parser)
    commands = Commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    for module in FRONTENDS:
        import_module(module).register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mdiff ARGV``; returns the exit code (see `EXIT_CODES`)."""
    try:
        return _run(argv)
    except MdiffError as exc:
        print(f"mdiff: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # also while the parser, torch or a model is loading
        print("mdiff: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of our output left (`mdiff verify x.mp4 | head`)
        # later writes, and the interpreter's flush at exit, go nowhere instead of failing;
        # a captured stdout has no file descriptor
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except OSError as exc:  # the system refused (disk, permissions, device) where no check
        # caught it first: still one line; -v logs where it happened
        logging.getLogger("mdiff").info("system error", exc_info=True)
        print(f"mdiff: error: {exc.strerror or exc}"
              f"{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)  # fmt: skip
        return EXIT_ERROR


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_ERROR
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.threads is not None and args.threads < 1:
        raise MdiffError(f"--threads must be at least 1, got {args.threads}")
    set_threads(args.threads)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
