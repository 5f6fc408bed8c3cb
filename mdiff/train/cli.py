"""``mdiff train NAME``: the parser generated from a recipe's fields, and the command.

    train = commands.group("train")                      # in a frontend's `register`
    vae = RecipeCommand("mdiff.video.vae.train:VAERecipe")
    train.add("vae", "train the causal video VAE", vae.run, vae.arguments)

Every visible field of the recipe (see `mdiff.train.recipe`) becomes ``--field-name`` with the
field's type, default, choices and help; the recipe's `export_options` fields follow. Beside
them every recipe takes ``--out`` (default: the recipe's `default_out`), ``--resume``,
``--threads``, ``--export DIR`` and ``--export-only``. The recipe module (torch and all) is
imported only when its command runs, so ``mdiff --help`` stays light.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import sys
import typing
from importlib import import_module

from mdiff.errors import MdiffError

__all__ = ["RecipeCommand", "add_fields", "from_args"]


class RecipeCommand:
    """``mdiff train NAME`` for the recipe class at `target` (``"module:Class"``)."""

    def __init__(self, target: str):
        self.target = target

    def recipe(self) -> type:
        module, _, name = self.target.partition(":")
        return getattr(import_module(module), name)

    def arguments(self, parser: argparse.ArgumentParser) -> None:
        """The recipe's flags (see the module docstring)."""
        recipe = self.recipe()
        shown = re.sub(r"\{(\w+)\}", lambda m: m[1].upper(), recipe.default_out)
        parser.add_argument("--out", default=None, help=f"run folder (default {shown})")
        add_fields(parser, recipe, recipe.hidden)
        parser.add_argument(
            "--resume", action="store_true", help="continue the run in --out exactly"
        )
        parser.add_argument(
            "--threads", type=int, default=argparse.SUPPRESS, help="torch threads (default: cores)"
        )
        parser.add_argument("--export", metavar="DIR", help=recipe.export_help)
        parser.add_argument(
            "--export-only", action="store_true", help="export --out to --export, no training"
        )
        add_fields(parser, recipe.export_options, recipe.hidden)

    def run(self, args: argparse.Namespace) -> int:
        """Train (unless --export-only), then export (with --export); prints one line each."""
        if args.export_only and not args.export:
            raise MdiffError("--export-only needs --export DIR")
        cls = self.recipe()
        recipe = from_args(cls, args, cls.hidden)
        out = args.out or recipe.out_dir()
        command = shlex.join(["mdiff", *sys.argv[1:]])
        if not args.export_only:
            result = recipe.train(out, resume=args.resume, command=command)
            print(f"trained to step {result.step}, loss {result.loss:.5f} ({out})")
        if args.export:
            options = from_args(cls.export_options, args, cls.hidden)
            log = cls.export(out, args.export, options, command=command)
            summary = cls.summary.format_map({**log, **log["heldout"]})
            print(f"exported step {log['step']} to {args.export}: {summary}")
        return 0


def _flag_type(hint) -> type:
    """``int | None`` -> int: the type a flag's value is parsed with."""
    kinds = [a for a in typing.get_args(hint) if a is not type(None)]
    return kinds[0] if kinds else hint


def _visible(cls: type, hidden: frozenset[str]) -> list[dataclasses.Field]:
    """The fields of dataclass `cls` that have a flag (made by `setting`, not hidden)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli") and f.name not in hidden]


def add_fields(parser: argparse.ArgumentParser, cls: type, hidden=frozenset()) -> None:
    """A flag per visible field of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    for f in _visible(cls, hidden):
        meta = f.metadata
        flag, kind = "--" + f.name.replace("_", "-"), _flag_type(hints[f.name])
        if kind is bool:
            name = flag.replace("--", "--no-") if f.default else flag
            action = "store_false" if f.default else "store_true"
            parser.add_argument(name, dest=f.name, action=action, help=meta["help"])
        else:
            parser.add_argument(flag, type=kind, default=f.default, choices=meta["choices"],
                                metavar=meta["metavar"], help=meta["help"])  # fmt: skip


def from_args(cls: type, args: argparse.Namespace, hidden=frozenset()):
    """An instance of dataclass `cls` from the parsed flags of its visible fields."""
    return cls(**{f.name: getattr(args, f.name) for f in _visible(cls, hidden)})
