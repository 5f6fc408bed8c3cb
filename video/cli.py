"""`mdiff video PROMPT -o out.mp4` and `mdiff image PROMPT -o out.png`, and the video parts of
`mdiff train` (vae, dit) and `mdiff eval` (video): their flags (`register`) and handlers.

    mdiff video "a red circle moving right" -o circle.mp4             # whole clip, then signed
    mdiff video "a red circle moving right" -o live.mp4 --stream      # live fMP4, chunk by chunk
    mdiff video "the circle rolls on" --image first.png -o i2v.mp4    # image-to-video
    mdiff video "the circle rolls on" --extend circle.mp4 -o more.mp4 # the next 16 frames
    mdiff image "a blue square on grey" -o square.png

The handlers import the models when they run, so registering the commands stays light. The
output path and the numbers are checked before the model loads: -o must be a new file in an
existing, writable folder (an existing one is replaced only with --force, an input never), and
--steps, --guidance, --frames and --seed within the pipeline's documented bounds.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from mdiff.cli import utf8_text
from mdiff.errors import InvalidInputError
from mdiff.train.cli import RecipeCommand

__all__ = ["DEFAULT_MODEL", "register", "run_image", "run_video"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "shapes-t2v"
VAE = RecipeCommand("mdiff.video.vae.train:VAERecipe")
DIT = RecipeCommand("mdiff.video.dit.train:DiTRecipe")


def register(commands) -> None:
    commands.add("video", "generate a signed video from a prompt (--stream: live MP4)",
                 run_video, _video)  # fmt: skip
    commands.add("image", "generate a signed image from a prompt", run_image, _image)
    commands.group("eval").add(
        "video", "prompt adherence (colour, shape, motion, background) and temporal figures",
        _run_eval_video, _eval_video,
        description="Generate a clip per prompt and seed and score it with weight-free "
        "detectors: accuracy per attribute (colour, shape, motion and direction, background, "
        "object count) and the temporal figures flicker, drift and, for streamed output, the "
        "chunk-seam jump. Prompts default to captions of held-out shapes clips.",
    )  # fmt: skip
    train = commands.group("train")
    train.add(
        "vae", "train the causal video VAE on procedural shapes clips", VAE.run, VAE.arguments,
        description="Train the causal video VAE on procedural shapes clips (resumable).",
    )  # fmt: skip
    train.add(
        "dit", "train the video DiT and its text encoder on VAE latents of shapes clips",
        DIT.run, DIT.arguments,
        description="Train the space-time DiT jointly with the shapes text encoder by flow "
        "matching on latents of procedural shapes clips (encoded once by the frozen VAE into "
        "the run folder), resumable. Block-causal presets (shapes-tiny-stream) train with "
        "diffusion forcing (one noise level per chunk). --export writes a pipeline folder.",
    )  # fmt: skip


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", type=utf8_text, help="what to generate (quote it)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name or pipeline folder "
                   f"(default {DEFAULT_MODEL})")  # fmt: skip
    p.add_argument("--height", type=int, help="pixels, a multiple of 8·patch (default: model's)")
    p.add_argument("--width", type=int, help="pixels, a multiple of 8·patch (default: model's)")
    p.add_argument("--steps", type=int, help="solver steps, at most 1000 (default: the model's)")
    p.add_argument("--guidance", type=float, help="CFG scale in [0, 100], 1 = none (default: "
                   "the model's)")  # fmt: skip
    p.add_argument(
        "--guidance-method",
        choices=("cfg", "cfg_zero_star", "apg"),
        help="how the scale combines the two branches (default: the model's)",
    )
    p.add_argument("--negative-prompt", type=utf8_text,
                   help="what the unconditional branch describes")  # fmt: skip
    p.add_argument("--seed", type=int, default=0,
                   help="in [0, 2^63): same seed, same output (default 0)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing -o file")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def _video(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="the signed .mp4 to write")
    _sampling_flags(p)
    p.add_argument("--frames", type=int,
                   help="1 + 4k frames, at most 10000 (default: the model's)")  # fmt: skip
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


def _image(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, help="the signed .png or .jpg to write")
    _sampling_flags(p)


def _eval_video(p: argparse.ArgumentParser) -> None:
    from mdiff.video.eval import run

    run.add_arguments(p)


def _run_eval_video(args: argparse.Namespace) -> int:
    from mdiff.video.eval import run

    return run.run_eval_video(args)


def _output(args: argparse.Namespace, kind: str) -> Path:
    """Check -o and the numbers before any work: -o's type, folder and inputs
    (`mdiff.atomic.check_target`), the seed, steps, guidance and frame count's bounds."""
    from mdiff import media
    from mdiff.atomic import check_target
    from mdiff.record import check_seed
    from mdiff.video.pipeline import inputs

    out = Path(args.output)
    if media.kind_of(out) != kind:
        want = ".mp4" if kind == "video" else ".png or .jpg"
        raise InvalidInputError(f"-o must name a {want} file, got {out.name}")
    sources = [p for p in (getattr(args, "image", None), getattr(args, "extend", None)) if p]
    check_target(out, overwrite=args.force, inputs=sources, replace_hint="use --force")
    check_seed(args.seed, "--seed")
    if args.steps is not None:
        inputs.check_steps(args.steps)
    if args.guidance is not None:
        inputs.check_guidance(args.guidance)
    if getattr(args, "frames", None) is not None and args.frames > inputs.MAX_NUM_FRAMES:
        raise InvalidInputError(f"--frames must be at most {inputs.MAX_NUM_FRAMES}")
    return out


def _pipeline(args: argparse.Namespace):
    from mdiff.provenance.stamp import Stamper
    from mdiff.video.pipeline.video_pipeline import VideoPipeline

    pipe = VideoPipeline.from_pretrained(args.model, stamper=Stamper(home=args.home))
    prompts = [p for p in (getattr(args, "prompt", None), args.negative_prompt) if p]
    unknown = pipe.text_encoder.unknown_words(prompts)
    if unknown:  # once per command: the model reads them as [UNK]
        logger.warning("%s has never seen these words and passes over them: %s", args.model,
                       ", ".join(unknown[:20]))  # fmt: skip
    return pipe


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
                seed=args.seed, negative_prompt=args.negative_prompt,
                guidance_method=args.guidance_method)  # fmt: skip


def run_video(args: argparse.Namespace) -> int:
    if args.image and args.extend:
        raise InvalidInputError("use --image (a first frame) or --extend (a clip), not both")
    out = _output(args, "video")
    pipe = _pipeline(args)
    if args.stream and not pipe.causal:
        raise InvalidInputError(
            f"--stream needs a block-causal model; {args.model} is bidirectional (drop --stream)"
        )
    kwargs = dict(_sampling(args), num_frames=args.frames, image=args.image, prefix=args.extend)
    start, old = time.perf_counter(), _identity(out)
    with _Bar(not args.no_progress) as bar:
        if args.stream:
            try:
                s = pipe.stream_to(out, args.prompt, callback=bar, overwrite=args.force, **kwargs)
            except KeyboardInterrupt:
                if _identity(out) not in (None, old):  # a new file: the signed finished chunks
                    print(f"interrupted: {out} holds the finished chunks (signed)", file=sys.stderr)
                raise
            first, frames, fps = s.time_to_first_frame, s.frames, s.fps
        else:
            result = pipe(args.prompt, callback=bar, **kwargs)
            first = time.perf_counter() - start  # the whole clip arrives at once
            frames = result.frames.shape[0]
            fps = frames / first
            result.save(out, overwrite=args.force)
    how = "streamed" if args.stream else "whole clip at once"
    print(f"wrote {out}: {frames} frames, signed ({how}); time to first frame {first:.2f} s, "
          f"{fps:.1f} frames/s")  # fmt: skip
    return 0


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of a file, None if there is none: whether a file was replaced."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def run_image(args: argparse.Namespace) -> int:
    out = _output(args, "image")
    pipe = _pipeline(args)
    start = time.perf_counter()
    with _Bar(not args.no_progress) as bar:
        result = pipe(args.prompt, num_frames=1, callback=bar, **_sampling(args))
    result.save(out, overwrite=args.force)
    h, w = result.frames.shape[1:3]
    print(f"wrote {out}: {w}×{h} image, signed, in {time.perf_counter() - start:.2f} s")
    return 0
