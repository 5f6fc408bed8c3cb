"""Behaviour fingerprint of the built-in models, the toys and the trainers, for refactors.

    python benchmarks/fingerprint.py --out before.json     # on the old tree
    python benchmarks/fingerprint.py --out after.json --compare before.json

Every entry is a SHA-256 of exact outputs (frames, tokens, weights) or an exact figure, for
fixed seeds: a behaviour-preserving change prints "identical" for each. It uses only the
documented API and the `mdiff` command, so the same script runs before and after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import torch

PROMPT = "a red circle moving right on a black background"
SOURCE = '''def mean(values):
    """The arithmetic mean of a non-empty list."""
    total = <FILL>
    return total / len(values)


def is_even(n):
    return n % 2 <FILL>
'''


def sha(data) -> str:
    if torch.is_tensor(data):
        data = data.detach().contiguous().cpu().numpy()
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).tobytes()
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()[:16]


def mdiff_cmd(*args: str, cwd: Path) -> str:
    exe = Path(sys.executable).with_name("mdiff")
    home = ["--home", str(cwd / "home")]
    done = subprocess.run([str(exe), "--threads", "2", *home, *args], cwd=cwd, capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"mdiff {' '.join(args)} failed: {done.stderr.strip()[-400:]}")
    return done.stdout


def toys(out: dict) -> None:
    from mdiff import toys

    r = toys.run_toy_2d(steps=150, seed=0, n_eval=300)
    out["toy_2d"] = [round(x, 10) for x in (r.untrained, r.conditional, r.guided, r.floor)]
    out["toy_2d_samples"] = sha(r.samples)
    d = toys.run_toy_discrete(steps=150, seed=0, n_samples=4000)
    out["toy_discrete_tv"] = [round(x, 10) for x in d.tv.values()] if hasattr(d, "tv") else None
    out["toy_discrete_samples"] = sha(d.samples)
    out["toy_discrete_nelbo"] = round(d.nelbo, 10)


def video(out: dict, home: Path) -> None:
    from mdiff.provenance.stamp import Stamper
    from mdiff.video import CausalVAE, VideoPipeline

    pipe = VideoPipeline.from_pretrained("shapes-t2v", stamper=Stamper(home=home))
    out["video_17"] = sha(pipe(PROMPT, seed=0).frames)
    out["video_33"] = sha(pipe(PROMPT, seed=1, num_frames=33).frames)  # re-anchored decoding
    out["video_guidance_2.5"] = sha(pipe(PROMPT, seed=2, guidance=2.5).frames)
    out["video_image"] = sha(pipe("a green square on a gray background", seed=3,
                                  num_frames=1).frames)  # fmt: skip
    chunks = [c.frames for c in pipe.stream("a blue square moving left", seed=4)]
    out["video_stream"] = sha(np.concatenate(chunks))
    vae = CausalVAE.from_pretrained("shapes-vae")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, vae.config.z_dim, 17, 8, 8, generator=g)
    with torch.no_grad():
        out["vae_decode_65"] = sha(vae.decode(z))


def cli(out: dict, work: Path) -> None:
    from mdiff import media

    mdiff_cmd("video", PROMPT, "-o", "v.mp4", "--seed", "5", "--no-progress", cwd=work)
    read = getattr(media, "read_video_head", None) or media.read_video  # renamed by the redesign
    out["cli_video"] = sha(read(work / "v.mp4")[0])
    mdiff_cmd("image", "a blue triangle on a white background", "-o", "i.png", "--seed", "6",
              "--no-progress", cwd=work)  # fmt: skip
    out["cli_image"] = sha(media.read_image(work / "i.png"))
    (work / "todo.py").write_text(SOURCE, encoding="utf-8")
    out["cli_complete"] = sha(mdiff_cmd("complete", "todo.py", cwd=work))
    out["cli_complete_block"] = sha(
        mdiff_cmd(
            "complete",
            "todo.py",
            "--model",
            "code-tiny-block",
            "--temperature",
            "0.7",
            "--seed",
            "3",
            cwd=work,
        )  # fmt: skip
    )


def text(out: dict, home: Path) -> None:
    from mdiff.provenance.stamp import Stamper
    from mdiff.text import CodeModel, generate

    stamper = Stamper(home=home)
    for name in ("code-tiny", "code-tiny-block"):
        cm = CodeModel.from_pretrained(name, stamper=stamper)
        out[f"{name}_fill"] = sha(cm.fill(SOURCE, seed=0).text)
        out[f"{name}_fill_threshold"] = sha(cm.fill(SOURCE, seed=0, schedule="threshold").text)
        out[f"{name}_fill_fixed_t"] = sha(cm.fill(SOURCE, length=6, seed=2, temperature=0.8).text)
        ids = [cm.tokenizer.encode("def add(a, b):\n    return")]
        for label, kw in {
            "greedy": {},
            "cfg": {"cfg_scale": 1.0},
            "remask": {"remask": "rescale", "remask_eta": 0.3, "temperature": 0.5, "seed": 1},
            "margin_dream": {"score": "margin", "schedule": "dream", "steps": 8},
            "cosine_random": {"schedule": "cosine", "score": "random", "seed": 4, "steps": 6},
            "entropy": {"schedule": "entropy", "entropy_bound": 0.5},
            "top_p": {"temperature": 1.0, "top_p": 0.9, "top_k": 20, "seed": 7},
        }.items():
            g = generate(cm.model, ids, gen_length=16, block_length=16, **kw)
            out[f"{name}_generate_{label}"] = sha(g.sequences)


def training(out: dict, work: Path) -> None:
    from safetensors.torch import load_file

    def weights(folder: Path) -> str:
        files = sorted(folder.rglob("*.safetensors"))
        return sha("".join(sha(t) for f in files for t in load_file(f).values()))

    mdiff_cmd("train", "vae", "--out", "vae-run", "--steps", "3", "--batch-size", "1",
              "--size", "32", "--frames", "5", "--base-dim", "8", "--z-dim", "4",
              "--save-every", "2", "--eval-every", "0", "--no-progress", "--export", "vae-x",
              cwd=work)  # fmt: skip
    out["train_vae"] = weights(work / "vae-x")
    mdiff_cmd("train", "dit", "--out", "dit-run", "--preset", "test", "--vae", "vae-x",
              "--steps", "3", "--batch-size", "2", "--size", "32", "--clips", "4",
              "--save-every", "2", "--eval-every", "0", "--no-progress", "--export", "dit-x",
              cwd=work)  # fmt: skip
    out["train_dit"] = weights(work / "dit-x")
    corpus = Path(sysconfig.get_paths()["stdlib"]) / "json"
    mdiff_cmd("train", "text", "--out", "txt-run", "--preset", "test", "--steps", "3",
              "--batch-size", "2", "--seq-len", "32", "--vocab-size", "300", "--corpus",
              str(corpus), "--save-every", "2", "--eval-every", "0", "--no-progress",
              "--export", "txt-x", cwd=work)  # fmt: skip
    out["train_text"] = weights(work / "txt-x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", help="an earlier fingerprint to compare with")
    ap.add_argument("--skip", default="", help="comma list of parts to skip")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work, home = Path(tmp), Path(tmp) / "home"
        home.mkdir()  # a fixed watermark secret: watermarked outputs are then reproducible
        (home / "watermark.secret").write_bytes(hashlib.sha256(b"fingerprint").digest())
        parts = {"toys": lambda: toys(out), "video": lambda: video(out, home),
                 "text": lambda: text(out, home), "cli": lambda: cli(out, work),
                 "training": lambda: training(out, work)}  # fmt: skip
        for name, part in parts.items():
            if name not in args.skip.split(","):
                part()
                print(f"{name}: done", file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    if args.compare:
        old = json.loads(Path(args.compare).read_text(encoding="utf-8"))
        same = 0
        for key in sorted(old.keys() | out.keys()):
            a, b = old.get(key), out.get(key)
            same += a == b
            print(f"{key:<36} {'identical' if a == b else f'DIFFERS: {a} -> {b}'}")
        print(f"{same} of {len(old.keys() | out.keys())} identical")


if __name__ == "__main__":
    main()
