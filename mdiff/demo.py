"""``mdiff demo``: what the library can do, end to end: the flow-matching core on two toy
problems, fill-in-the-middle with the built-in code model, a streamed video from the built-in
text-to-video model, every output stamped (watermark + C2PA) and verified. Like `mdiff.cli`,
it imports the frontends only when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["DEMO_PROMPT", "DEMO_SOURCE", "complete_file", "register", "run", "stream_video"]

DEMO_SOURCE = '''def mean(values):
    """The arithmetic mean of a non-empty list."""
    total = <FILL>
    return total / len(values)
'''
DEMO_PROMPT = "a red circle moving right on a black background"


def register(commands) -> None:
    commands.add("demo", "run what the library can do so far, end to end", run, _arguments)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=1500, help="training steps per toy (default 1500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="mdiff-demo", help="folder for the demo's outputs")


def run(args: argparse.Namespace) -> int:
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
    return _outputs(args, r, d)


def _outputs(args: argparse.Namespace, r2d, rdisc) -> int:
    """Save the toys' samples through the provenance stamper, then verify every file."""
    from mdiff import toys
    from mdiff.cli import EXIT_ERROR
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
    files += complete_file(out, stamper, args.seed)
    files += stream_video(out, stamper, args.seed)
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


def complete_file(out: Path, stamper, seed: int) -> list:
    """Complete a small file with the built-in code model (when installed) and sign it."""
    from mdiff import hub

    if "code-tiny" not in hub.list_builtin():
        print("FIM: the built-in code model (code-tiny) is not installed; skipping completion\n")
        return []
    from mdiff.text.pipeline import CodeModel

    done = CodeModel.from_pretrained("code-tiny", stamper=stamper).fill(DEMO_SOURCE, seed=seed)
    print("FIM: the built-in code model filled <FILL> in:\n")
    print(done.text)
    return [done.save(out / "completed.py", overwrite=True)]  # the demo's own folder


def stream_video(out: Path, stamper, seed: int) -> list:
    """Stream a clip from the built-in text-to-video model (when installed) into a live MP4."""
    from mdiff import hub

    if "shapes-t2v" not in hub.list_builtin():
        print("Video: the built-in model (shapes-t2v) is not installed; skipping video\n")
        return []
    from mdiff.video.pipeline.video_pipeline import VideoPipeline

    pipe = VideoPipeline.from_pretrained("shapes-t2v", stamper=stamper)
    path = out / "streamed.mp4"
    if pipe.causal:
        s = pipe.stream_to(path, DEMO_PROMPT, seed=seed, overwrite=True)
        print(f"Video: streamed {s.frames} frames of {DEMO_PROMPT!r} live into {path}")
        print(f"  first frame after {s.time_to_first_frame:.2f} s, {s.fps:.1f} frames/s\n")
        return [s.path]
    pipe(DEMO_PROMPT, seed=seed).save(path, overwrite=True)  # a bidirectional model: at once
    print(f"Video: generated {DEMO_PROMPT!r} into {path}\n")
    return [path]
