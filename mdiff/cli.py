"""The ``mdiff`` command: it only dispatches.

Each frontend owns its commands: a module in `FRONTENDS` has ``register(commands)``, which adds
its commands (`Commands.add`) and its parts of the shared groups ``train`` and ``eval``
(`Commands.group`), next to its handlers. A command's flags are added only when that command is
chosen, and the registering modules import no torch, so ``mdiff --help`` stays fast and the core
imports no frontend until a command runs. Any ``MdiffError`` becomes one line on stderr and exit
code 2; Ctrl-C exits 130, and a reader that leaves the pipe (`| head`) ends it quietly with 141.
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

EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PIPE = 2, 130, 141  # 141 = 128 + SIGPIPE, as a shell says
FRONTENDS = ("mdiff.video.cli", "mdiff.text.cli", "mdiff.provenance.cli", "mdiff.demo",
             "mdiff.doctor")  # fmt: skip
GROUPS = {  # commands that several frontends add to: help, metavar of the chosen member
    "eval": ("evaluate a model (fim: fill-in-the-middle exact match; video: prompt adherence)",
             "TASK"),
    "train": ("train a model (vae: the causal video VAE; dit: the video DiT; text: a code model)",
              "MODEL"),
}  # fmt: skip


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


class Parser(argparse.ArgumentParser):
    """argparse with a per-command exit code for usage errors (`usage_exit_code`, argparse's
    default 2) and the command's flags added on first use (`arguments`, see `Commands.add`)."""

    usage_exit_code = EXIT_ERROR

    def __init__(self, *args, arguments: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.arguments = arguments

    def parse_known_args(self, args=None, namespace=None):
        if self.arguments is not None:
            add, self.arguments = self.arguments, None
            add(self)
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
        when the command is chosen (so it may import what it needs)."""
        p = self.subparsers.add_parser(name, help=help, description=description or help,
                                       formatter_class=Formatter, arguments=arguments)  # fmt: skip
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

    parser = Parser(prog="mdiff", description="Multimodal diffusion with provenance.")
    parser.add_argument("--version", action="version", version=f"mdiff {mdiff.__version__}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--home", default=None, help="keys and identity folder ($MDIFF_HOME)")
    commands = Commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    for module in FRONTENDS:
        import_module(module).register(commands)
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
        return args.run(args)
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
