"""The generation commands of `mdiff`: ``video`` and ``image``. Parsers only; the work lives in
`mdiff.video.cli`, imported when the command runs."""

from __future__ import annotations

import argparse

DEFAULT_MODEL = "shapes-t2v"


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what to generate (quote it)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name or pipeline folder "
                   f"(default {DEFAULT_MODEL})")  # fmt: skip
    p.add_argument("--height", type=int, help="pixels, a multiple of 8·patch (default: model's)")
    p.add_argument("--width", type=int, help="pixels, a multiple of 8·patch (default: model's)")
    p.add_argument("--steps", type=int, help="solver steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="CFG scale, 1 = none (default: the model's)")
    p.add_argument("--negative-prompt", help="what the unconditional branch describes")
    p.add_argument("--seed", type=int, default=0, help="same seed, same output (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def add_video(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="the signed .mp4 to write")
    _add_sampling(p)
    p.add_argument("--frames", type=int, help="1 + 4k frames (default: the model's)")
    p.add_argument("--image", help="first frame (image-to-video); sets the size")
    p.add_argument(
        "--extend", metavar="VIDEO",
        help="continue this clip (1 + 4k frames): the output holds the "
        "--frames new frames (a multiple of 4, default the model's length − 1)",
    )  # fmt: skip
    p.add_argument(
        "--stream", action="store_true",
        help="write a live fragmented MP4 chunk by chunk (block-causal models); Ctrl-C leaves a "
        "playable, signed file of the finished chunks",
    )  # fmt: skip


def add_image(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="the signed .png or .jpg to write")
    _add_sampling(p)


def run_video(args: argparse.Namespace) -> int:
    from mdiff.video import cli as video_cli

    return video_cli.run_video(args)


def run_image(args: argparse.Namespace) -> int:
    from mdiff.video import cli as video_cli

    return video_cli.run_image(args)
