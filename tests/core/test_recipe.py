"""Training recipes: fields are flags (generated parser) and run.json keys; resume takes the
recorded settings, and only the resumable ones change."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from mdiff.train.cli import add_fields, from_args
from mdiff.train.recipe import Recipe, setting


@dataclass
class ToyRecipe(Recipe):
    name = "toy"
    default_out = "runs/toy-{kind}"
    hidden = frozenset({"cooldown"})

    kind: str = setting("a", "which toy", key="kind", choices=("a", "b"))
    width: int = setting(8, "toy width", key="model.width")
    rate: float | None = setting(None, "rate (default 0.5)", key="train.rate", resume=True,
                                 fresh=0.5)  # fmt: skip
    shuffle: bool = setting(False, "shuffle", key="data.shuffle")
    secret: int = setting(3, key="data.secret", cli=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_fields(parser, ToyRecipe, ToyRecipe.hidden)
    return parser


def test_flags_come_from_the_fields():
    parser = _parser()
    args = parser.parse_args([])
    given = (args.kind, args.width, args.rate, args.shuffle, args.progress)
    assert given == ("a", 8, None, False, True)
    argv = ["--kind", "b", "--width", "3", "--rate", "0.25", "--shuffle", "--no-progress",
            "--init-from", "x", "--mixed-precision", "bf16"]  # fmt: skip
    args = parser.parse_args(argv)
    recipe = from_args(ToyRecipe, args, ToyRecipe.hidden)
    assert (recipe.kind, recipe.width, recipe.rate, recipe.shuffle) == ("b", 3, 0.25, True)
    assert (recipe.progress, recipe.init_from, recipe.mixed_precision) == (False, "x", "bf16")
    assert recipe.secret == 3 and recipe.cooldown is None  # Python only, and hidden here
    assert recipe.out_dir() == "runs/toy-b"
    for bad in (["--kind", "c"], ["--width", "x"], ["--secret", "1"], ["--cooldown", "5"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_record_resolve_and_resume():
    new = ToyRecipe(width=4, rate=None).resolved()
    assert new.rate == 0.5  # a new run takes the resumable field's fresh value
    run = new.record()
    assert run["kind"] == "a" and run["model"] == {"width": 4}
    assert run["train"]["rate"] == 0.5 and run["train"]["seed"] == 0
    assert run["data"] == {"shuffle": False, "secret": 3}
    # resuming: recorded settings win over the call's, but a given resumable one is recorded
    again = ToyRecipe(width=99, kind="b", steps=7).resumed(run)
    assert (again.width, again.kind, again.rate, again.steps) == (4, "a", 0.5, 7)
    changed = ToyRecipe(rate=0.1).resumed(run)
    assert changed.rate == 0.1 and run["train"]["rate"] == 0.1
    # a key missing from a run folder of an older layout keeps the given value
    del run["data"]["secret"]
    assert ToyRecipe(secret=5).resumed(run).secret == 5
    assert ToyRecipe.from_run(run).width == 4
