"""`mdiff video PROMPT -o out.mp4` and `mdiff image PROMPT -o out.png`.

    mdiff video "a red circle moving right" -o circle.mp4             # whole clip, then signed
    mdiff video "a red circle moving right" -o live.mp4 --stream      # live fMP4, chunk by chunk
    mdiff video "the circle rolls on" --image first.png -o i2v.mp4    # image-to-video
    mdiff video "the circle rolls on" --extend circle.mp4 -o more.mp4 # the next 16 frames
    mdiff image "a blue square on grey" -o square.png

Argument parsing lives in ``mdiff.cli_generate``; this module does the work.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mdiff import media
from mdiff.errors import InvalidInputError

__all__ = ["run_image", "run_video"]


def _output(path: str, kind: str) -> Path:
    """Check the output path before any work: its type and that its folder exists."""
    out = Path(path)
    if media.kind_of(out) != kind:
        want = ".mp4" if kind == "video" else ".png or .jpg"
        raise InvalidInputError(f"-o must name a {want} file, got {out.name}")
    if not out.parent.is_dir():
        raise InvalidInputError(f"{out}: the destination folder does not exist")
    return out


def _pipeline(args: argparse.Namespace):
    from mdiff.provenance.stamp import Stamper
    from mdiff.video.pipeline.video_pipeline import VideoPipeline

    return VideoPipeline.from_pretrained(args.model, stamper=Stamper(home=args.home))


class _Bar:
    """A tqdm bar over the solver steps of the whole clip, fed by the pipeline callback; it
    appears with the first step (not while the inputs are checked)."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def __call__(self, progress) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=progress.total, desc="denoising", unit="step",
                            file=sys.stderr, leave=False)  # fmt: skip
        self.bar.update(progress.done - self.bar.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _sampling(args: argparse.Namespace) -> dict:
    return dict(height=args.height, width=args.width, steps=args.steps, guidance=args.guidance,
                seed=args.seed, negative_prompt=args.negative_prompt)  # fmt: skip


def run_video(args: argparse.Namespace) -> int:
    out = _output(args.output, "video")
    pipe = _pipeline(args)
    if args.stream and not pipe.causal:
        raise InvalidInputError(
            f"--stream needs a block-causal model; {args.model} is bidirectional (drop --stream)"
        )
    kwargs = dict(_sampling(args), num_frames=args.frames, image=args.image, prefix=args.extend)
    start = time.perf_counter()
    with _Bar(not args.no_progress) as bar:
        if args.stream:
            try:
                s = pipe.stream_to(out, args.prompt, callback=bar, **kwargs)
            except KeyboardInterrupt:
                if out.is_file():
                    print(f"interrupted: {out} holds the finished chunks (signed)", file=sys.stderr)
                raise
            first, frames, fps = s.time_to_first_frame, s.frames, s.fps
        else:
            result = pipe(args.prompt, callback=bar, **kwargs)
            first = time.perf_counter() - start  # the whole clip arrives at once
            frames = result.frames.shape[0]
            fps = frames / first
            result.save(out)
    how = "streamed" if args.stream else "whole clip at once"
    print(f"wrote {out}: {frames} frames, signed ({how}); time to first frame {first:.2f} s, "
          f"{fps:.1f} frames/s")  # fmt: skip
    return 0


def run_image(args: argparse.Namespace) -> int:
    out = _output(args.output, "image")
    pipe = _pipeline(args)
    start = time.perf_counter()
    with _Bar(not args.no_progress) as bar:
        result = pipe(args.prompt, num_frames=1, callback=bar, **_sampling(args))
    result.save(out)
    h, w = result.frames.shape[1:3]
    print(f"wrote {out}: {w}×{h} image, signed, in {time.perf_counter() - start:.2f} s")
    return 0
