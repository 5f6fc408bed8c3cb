"""`mdiff eval video`: prompt adherence and temporal figures of a video pipeline.

    mdiff eval video --model shapes-t2v -n 50              # held-out shapes captions
    mdiff eval video --model runs/pipe --prompts p.txt --json
    mdiff eval video -n 100 --objects 2 --reference  # the clips themselves: the ceiling
    mdiff eval video -n 50 --image-to-video          # from their first frames: first-frame PSNR
    mdiff eval video --free-form                     # prompts people type (eval.free_form)

`add_arguments` gives the command its flags (registered by `mdiff.video.cli`) and
`run_eval_video` does the work (see `mdiff.video.eval.adherence`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from mdiff.errors import InvalidInputError

__all__ = [
    "add_arguments",
    "default_prompts",
    "heldout_first_frames",
    "read_prompts",
    "reference_adherence",
    "run_eval_video",
]


def _heldout(n: int, objects: int | None, skip: int, **clip_kw):
    """The held-out shapes dataset and the indices of its first ``n`` clips after ``skip``
    (of clips with ``objects`` objects when given)."""
    from mdiff.video.data import ShapesDataset
    from mdiff.video.dit.objective import HELDOUT_SEED

    if objects not in (None, 1, 2):
        raise InvalidInputError(f"objects must be 1 or 2, got {objects}")
    if n < 1 or skip < 0:
        raise InvalidInputError(f"need n >= 1 and skip >= 0, got n={n}, skip={skip}")
    data = ShapesDataset(1 << 20, seed=HELDOUT_SEED, **clip_kw)  # clips are drawn lazily
    wanted = (i for i in range(len(data)) if objects in (None, len(data.truth(i).objects)))
    return data, list(itertools.islice(wanted, skip, skip + n))


def default_prompts(n: int, objects: int | None = None, skip: int = 0) -> list[str]:
    """``n`` captions of held-out shapes clips (the seed training never sees), after the first
    ``skip``, of clips with ``objects`` objects when given (1 or 2; about half have each)."""
    data, indices = _heldout(n, objects, skip)
    return [data.truth(i).caption for i in indices]


def reference_adherence(vae, n: int, objects: int | None = None, skip: int = 0, *,
                        num_frames: int = 17, size: int = 64) -> dict:  # fmt: skip
    """The ceiling of `default_prompts`: the same held-out clips scored against their own
    captions, as rendered (``"rendered"``: the detectors' own misses) and after a round trip
    through ``vae`` (``"vae"``: what a model generating through that VAE can reach at best).
    Returns ``{"clips", "rendered": accuracy, "vae": accuracy}`` (see `summarise_hits`)."""
    from mdiff.video.eval.adherence import adherence, summarise_hits
    from mdiff.video.io import pixels_to_frames

    data, indices = _heldout(n, objects, skip, num_frames=num_frames, height=size, width=size)
    rendered, coded = [], []
    for i in indices:
        item = data[i]
        rendered.append(adherence(pixels_to_frames(item["pixels"]), item["caption"]))
        coded.append(adherence(_round_trip(vae, item["pixels"]), item["caption"]))
    return {"clips": len(indices), "rendered": summarise_hits(rendered),
            "vae": summarise_hits(coded)}  # fmt: skip


def heldout_first_frames(vae, n: int, objects: int | None = None, skip: int = 0, *,
                         num_frames: int = 17, size: int = 64) -> dict:  # fmt: skip
    """Image-to-video inputs from the held-out clips behind `default_prompts`: ``{"prompts":
    their captions, "images": their first frames, uint8 (H, W, 3), "round_trip_psnr": the PSNR
    (dB) of each first frame coded alone through ``vae``}``. An anchored first latent frame
    decodes to that round trip, so its PSNR is the most image-to-video can keep of the image."""
    from mdiff.video.eval.metrics import psnr
    from mdiff.video.io import pixels_to_frames

    data, indices = _heldout(n, objects, skip, num_frames=num_frames, height=size, width=size)
    out = {"prompts": [], "images": [], "round_trip_psnr": []}
    for i in indices:
        item = data[i]
        first = item["pixels"][:, :1]  # (3, 1, H, W)
        image = pixels_to_frames(first)  # (1, H, W, 3)
        out["prompts"].append(item["caption"])
        out["images"].append(image[0])
        out["round_trip_psnr"].append(float(psnr(_round_trip(vae, first), image)[0]))
    return out


def _round_trip(vae, pixels):
    """Pixels (3, T, H, W) in [-1, 1] encoded and decoded by ``vae`` -> uint8 (T, H, W, 3)."""
    import torch

    from mdiff.video.io import pixels_to_frames

    with torch.no_grad():
        coded = vae.decode(vae.encode(pixels[None].to(next(vae.parameters()).device)))[0]
    return pixels_to_frames(coded)


def read_prompts(path: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with ``#`` are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"cannot read prompts from {path}: {e}") from e
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise InvalidInputError(f"{path} holds no prompts (one per line)")
    return prompts


REFERENCE_HELP = (
    "generate nothing: score the held-out clips themselves, as rendered and through the "
    "model's VAE (the most a model can reach on these captions)"
)
FREE_FORM_HELP = (
    "score the free-form development prompts (mdiff.video.eval.free_form: one object each, "
    "labelled by hand with its colour and direction) instead of held-out captions"
)
IMAGE_TO_VIDEO_HELP = (
    "start each clip from its held-out clip's first frame (image-to-video) and report the "
    "first-frame PSNR against it, beside that frame's VAE round trip"
)


def add_arguments(v: argparse.ArgumentParser) -> None:
    """The flags of ``mdiff eval video``."""
    from mdiff.video.cli import DEFAULT_MODEL

    v.add_argument("--model", default=DEFAULT_MODEL, help="built-in name or pipeline folder")
    what = v.add_mutually_exclusive_group()
    what.add_argument("--prompts", metavar="FILE", help="one prompt per line (# comments)")
    what.add_argument("-n", type=int, default=None,
                      help="held-out shapes captions (default 20; --free-form: all)")  # fmt: skip
    v.add_argument(
        "--objects", type=int, choices=[1, 2], default=None,
        help="only held-out captions naming this many objects (default: any)",
    )  # fmt: skip
    v.add_argument("--skip", type=int, default=0,
                   help="start after this many held-out captions (default 0)")  # fmt: skip
    v.add_argument("--frames", type=int, default=17, help="frames per clip, 1 + 4k (default 17)")
    v.add_argument("--size", type=int, help="height and width (default: the model's)")
    v.add_argument("--steps", type=int, help="solver steps (default: the model's)")
    v.add_argument("--guidance", type=float, help="CFG scale (default: the model's)")
    v.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    v.add_argument("--seeds", type=int, default=1, help="seeds per prompt (default 1)")
    v.add_argument("--reference", action="store_true", help=REFERENCE_HELP)
    v.add_argument("--free-form", action="store_true", help=FREE_FORM_HELP)
    v.add_argument("--image-to-video", action="store_true", help=IMAGE_TO_VIDEO_HELP)
    v.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    v.add_argument("--json", action="store_true", help="print the report as JSON")


def run_eval_video(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mdiff.provenance.stamp import Stamper
    from mdiff.video.eval.adherence import evaluate_prompts
    from mdiff.video.pipeline.video_pipeline import VideoPipeline

    if args.n is None and not args.free_form:
        args.n = 20
    if (args.n is not None and args.n < 1) or args.seeds < 1:
        raise InvalidInputError("-n and --seeds must be at least 1")
    objects, skip, i2v = args.objects, args.skip, args.image_to_video
    if args.free_form and (args.prompts or args.reference or i2v):
        raise InvalidInputError("--free-form has its own prompts: without --prompts, "
                                "--reference or --image-to-video")  # fmt: skip
    if i2v and (args.prompts or args.reference):
        raise InvalidInputError(
            "--image-to-video starts from held-out clips: use -n, without --prompts or --reference"
        )
    if args.reference:
        return _run_reference(args, objects, skip)
    pipe = VideoPipeline.from_pretrained(args.model, stamper=Stamper(home=args.home))
    settings = {k: v for k, v in dict(num_frames=args.frames, height=args.size,
                width=args.size, steps=args.steps, guidance=args.guidance).items()
                if v is not None}  # fmt: skip
    images = specs = None
    if args.free_form:
        from mdiff.video.eval.free_form import FREE_FORM, free_form_spec

        chosen = FREE_FORM[skip : None if args.n is None else skip + args.n]
        prompts, specs = [p.prompt for p in chosen], [free_form_spec(p) for p in chosen]
    elif i2v:
        size = args.size or pipe.settings.height
        given = heldout_first_frames(pipe.vae, args.n, objects, skip, num_frames=args.frames,
                                     size=size)  # fmt: skip
        prompts, images = given["prompts"], given["images"]
    elif args.prompts:
        prompts = read_prompts(args.prompts)
    else:
        prompts = default_prompts(args.n, objects, skip)
    seeds = list(range(args.seed, args.seed + args.seeds))
    bar = tqdm(total=len(prompts) * len(seeds), desc="eval video", unit="clip", file=sys.stderr,
               leave=False, disable=args.no_progress)  # fmt: skip
    with bar:

        def progress(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        result = evaluate_prompts(pipe, prompts, seeds, images=images, specs=specs,
                                  progress=progress, **settings)  # fmt: skip
    if i2v:
        trips = given["round_trip_psnr"]
        result["first_frame_psnr"]["vae_round_trip"] = sum(trips) / len(trips)
    report = {"model": args.model, "prompts": len(prompts), "seeds": seeds,
              "settings": settings, **result}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(format_report(report))
    return 0


def _run_reference(args: argparse.Namespace, objects: int | None, skip: int) -> int:
    from mdiff.video.pipeline.video_pipeline import VideoPipeline

    if args.prompts:
        raise InvalidInputError("--reference scores held-out clips: use -n, not --prompts")
    pipe = VideoPipeline.from_pretrained(args.model)
    size = args.size or pipe.settings.height
    result = reference_adherence(pipe.vae, args.n, objects, skip, num_frames=args.frames,
                                 size=size)  # fmt: skip
    if args.json:
        print(json.dumps({"model": args.model, "reference": True, **result}, indent=2))
        return 0
    which = "any number of" if objects is None else str(objects)
    lines = [f"reference: {result['clips']} held-out clips naming {which} object(s), scored "
             "against their own captions", f"  {'':<11} {'rendered':<17} through the VAE of "
             f"{args.model}"]  # fmt: skip
    for attr, a in result["rendered"].items():
        b = result["vae"][attr]
        cells = ["   n/a" if x["accuracy"] is None else f"{x['accuracy']:6.3f} "
                 f"({x['hits']}/{x['total']})" for x in (a, b)]  # fmt: skip
        lines.append(f"  {attr:<11} {cells[0]:<17} {cells[1]}")
    print("\n".join(lines))
    return 0


def format_report(report: dict) -> str:
    """The human-readable summary: accuracy per attribute, then the temporal figures."""
    head = f"{report['model']}: {report['clips']} clips ({report['prompts']} prompts x "
    lines = [head + f"{len(report['seeds'])} seeds), prompt adherence by weight-free detectors"]
    for attr, a in report["accuracy"].items():
        value = "   n/a" if a["accuracy"] is None else f"{a['accuracy']:6.3f}"
        lines.append(f"  {attr:<11} {value}  ({a['hits']}/{a['total']})")
    t = report["temporal"]

    def fmt(x):
        return "n/a" if x is None else f"{x:.4f}"

    seam = "n/a (not streamed)" if t["seam_ratio"] is None else (
        f"{t['seam_ratio']:.3f} (boundary {fmt(t['seam_boundary'])}, interior "
        f"{fmt(t['seam_interior'])})")  # fmt: skip
    lines.append(f"temporal: flicker {fmt(t['flicker'])}, drift (last vs first frame) "
                 f"{fmt(t['drift'])}, seam jump ratio {seam}")  # fmt: skip
    if "first_frame_psnr" in report:
        f = report["first_frame_psnr"]
        lines.append(f"image-to-video: first-frame PSNR {f['mean']:.2f} dB (min {f['min']:.2f})"
                     f" against the given frames; their VAE round trip alone "
                     f"{f['vae_round_trip']:.2f} dB")  # fmt: skip
    return "\n".join(lines)
