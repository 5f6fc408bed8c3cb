"""`mdiff complete FILE`, `mdiff eval fim` and `mdiff train text`: their flags (`register`) and
handlers.

    mdiff complete todo.py                  # print the completed file
    mdiff complete todo.py --line 12 -o done.py   # regenerate line 12, write + sign
    mdiff complete todo.py --stream         # committed text and the live draft on stderr

The handlers import the models when they run, so registering the commands stays light.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mdiff.errors import InvalidInputError
from mdiff.train.cli import RecipeCommand

__all__ = ["TerminalStreamer", "line_hole", "register", "run_complete", "run_eval_fim"]

TEXT = RecipeCommand("mdiff.text.training.train:TextRecipe")


def register(commands) -> None:
    commands.add("complete", "fill <FILL> markers (or a line) of a source file with the code model",
                 run_complete, _complete)  # fmt: skip
    commands.group("eval").add(
        "fim", "fill-in-the-middle exact match on held-out code (fixed / true / auto length)",
        run_eval_fim, _eval_fim,
        description="Cut single- or multi-line holes from the model's held-out files (or "
        "--corpus) and report exact match per length mode, tokens per forward and tokens/s.",
    )  # fmt: skip
    commands.group("train").add(
        "text", "train a text model on code (masked / block diffusion or the AR FIM baseline)",
        TEXT.run, TEXT.arguments,
        description="Train a text model on a folder of source files (default: the Python "
        "standard library), resumable. --kind mdm: masked diffusion (LLaDA/MDLM); block: "
        "block diffusion (BD3-LM); ar: the causal fill-in-the-middle baseline.",
    )  # fmt: skip


def _complete(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a source file with <FILL> markers (or use --line)")
    p.add_argument("--line", type=int, help="regenerate the code of this line (1-based)")
    p.add_argument("-o", "--output", help="write the result here, with a signed .c2pa sidecar")
    p.add_argument("--stream", action="store_true", help="show committed text and drafts live")
    p.add_argument("--model", default="code-tiny", help="built-in name or model folder")
    p.add_argument("--length", default="auto", help="tokens per hole, or auto (default)")
    p.add_argument("--schedule", default="equal", help="equal|dream|cosine|threshold|entropy")
    p.add_argument("--steps", type=int, help="denoising steps per hole (default: one per token)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0)


def _eval_fim(f: argparse.ArgumentParser) -> None:
    f.add_argument("--model", default="code-tiny", help="built-in name or model folder")
    f.add_argument("--ar", metavar="MODEL", help="also score this autoregressive FIM baseline")
    f.add_argument("--corpus", help="folder of sources (default: the model's held-out files)")
    f.add_argument("--kind", choices=["single", "multi"], default="single")
    f.add_argument("-n", type=int, default=50, help="number of tasks (default 50)")
    f.add_argument("--modes", default="fixed,true,auto", help="comma list of fixed,true,auto")
    f.add_argument("--fixed-length", type=int, default=16, help="tokens in fixed mode")
    f.add_argument("--schedule", default="equal", help="equal|dream|cosine|threshold|entropy")
    f.add_argument("--threshold", type=float, default=0.9, help="for --schedule threshold")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-heal", action="store_true",
                   help="no token healing at the hole's left edge (for comparison)")  # fmt: skip
    f.add_argument("--json", action="store_true", help="print the report as JSON")


def line_hole(text: str, line: int, marker: str | None = None) -> str:
    """`text` with the code of 1-based `line` (after its indentation) replaced by `marker`
    (default: the FIM marker ``<FILL>``)."""
    from mdiff.text.fim.infilling import MARKER

    marker = MARKER if marker is None else marker
    lines = text.splitlines(keepends=True)
    if not 1 <= line <= len(lines):
        raise InvalidInputError(f"--line {line} is outside the file (1..{len(lines)})")
    row = lines[line - 1]
    body = row.rstrip("\r\n")
    indent = len(body) - len(body.lstrip())
    lines[line - 1] = body[:indent] + marker + row[len(body) :]
    return "".join(lines)


class TerminalStreamer:
    """Shows a fill live: committed middle text as it becomes final, and the current draft of
    the whole middle on one overwritten status line (both on `file`, normally stderr)."""

    def __init__(self, tokenizer, length: int, file=None):
        self.tok, self.length = tokenizer, length
        self.file = file if file is not None else sys.stderr
        self.prompt_len: int | None = None
        self.committed: list[int] = []
        self.shown = 0

    def put(self, value) -> None:
        ids = value.reshape(-1).tolist()
        if self.prompt_len is None:  # the first call carries the context before the hole
            self.prompt_len = len(ids)
            return
        self.committed += ids
        text = self.tok.decode(self.committed[: self.length], skip_special_tokens=True)
        self._status(f"committed: {text!r}")

    def put_draft(self, value, step=None) -> None:
        if self.prompt_len is None:
            return
        ids = value.reshape(-1).tolist()[self.prompt_len : self.prompt_len + self.length]
        self._status(f"step {step}: {self.tok.decode(ids, skip_special_tokens=True)!r}")

    def _status(self, line: str) -> None:
        width = 110
        print("\r\033[K" + line[:width], end="", file=self.file, flush=True)

    def end(self) -> None:
        print(file=self.file, flush=True)


def run_complete(args: argparse.Namespace) -> int:
    from mdiff.provenance.stamp import Stamper
    from mdiff.text.fim.infilling import MARKER
    from mdiff.text.pipeline import CodeModel

    if args.length != "auto" and not (args.length.isdigit() and int(args.length) > 0):
        raise InvalidInputError(f"--length must be a positive integer or auto, got {args.length!r}")
    src = Path(args.file)
    if not src.is_file():
        raise InvalidInputError(f"no such file: {src}")
    try:
        text = src.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"{src} is not UTF-8 text ({e.reason})") from None
    if args.line is not None:
        if MARKER in text:
            raise InvalidInputError(f"{src} already has {MARKER} markers; drop --line")
        text = line_hole(text, args.line)
    elif MARKER not in text:
        raise InvalidInputError(f"{src} has no {MARKER} marker; add one or pass --line N")
    length: int | str = "auto" if args.length == "auto" else int(args.length)
    settings = {"schedule": args.schedule, "temperature": args.temperature}
    if args.steps:
        settings["steps"] = args.steps
    cm = CodeModel.from_pretrained(args.model, stamper=Stamper(home=args.home))
    start = time.perf_counter()
    factory = (lambda n: TerminalStreamer(cm.tokenizer, n)) if args.stream else None
    done = cm.fill(text, length=length, seed=args.seed, source=str(src),
                   streamer_factory=factory, **settings)  # fmt: skip
    seconds = time.perf_counter() - start
    tokens = done.record.sizes.get("tokens", 0)
    stats = (f"{tokens} tokens in {seconds:.2f} s ({tokens / max(seconds, 1e-9):.0f} tok/s, "
             f"{done.tokens_per_forward:.2f} tokens/forward)")  # fmt: skip
    if args.output:
        out = done.save(args.output)
        print(f"wrote {out} (manifest in {out.name}.c2pa); {stats}", file=sys.stderr)
    else:
        sys.stdout.write(done.text)
        print(stats, file=sys.stderr)
    return 0


def run_eval_fim(args: argparse.Namespace) -> int:
    """`mdiff eval fim`: exact match per length mode on held-out code (`mdiff.text.fim.eval`)."""
    import json

    from tqdm import tqdm

    from mdiff.text.data import Corpus
    from mdiff.text.fim.eval import MODES, evaluate_ar_fim, evaluate_fim
    from mdiff.text.fim.tasks import make_tasks
    from mdiff.text.pipeline import CodeModel

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes):
        raise InvalidInputError(f"--modes must be a comma list of {', '.join(MODES)}")
    if args.n < 1:
        raise InvalidInputError("-n must be at least 1")
    corpus = Corpus.from_folder(args.corpus) if args.corpus else Corpus.from_folder()
    files = [(f, t) for f in corpus.heldout_files if (t := corpus.read(f)) is not None]
    tasks = make_tasks(files, args.kind, args.n, args.seed)
    if not tasks:
        raise InvalidInputError(f"no {args.kind}-line tasks could be cut from {corpus.root}")
    cm = CodeModel.from_pretrained(args.model)
    settings = {"schedule": args.schedule, "threshold": args.threshold}
    heal = not args.no_heal
    bar = tqdm(total=len(tasks) * len(modes), desc="fim", file=sys.stderr, leave=False)
    report = {"model": args.model, "kind": args.kind, "tasks": len(tasks),
              "settings": {**settings, "heal": heal}}  # fmt: skip
    report["modes"] = evaluate_fim(
        cm.model, cm.tokenizer, tasks, modes=modes, fixed_length=args.fixed_length,
        seed=args.seed, progress=lambda *_: bar.update(), context=cm.context, heal=heal,
        **settings,
    )  # fmt: skip
    if args.ar:
        ar = CodeModel.from_pretrained(args.ar)  # the baseline with its own tokenizer
        bar.reset(total=len(tasks))
        report["ar"] = evaluate_ar_fim(
            ar.model, ar.tokenizer, tasks, context=ar.context, progress=lambda *_: bar.update(),
            heal=heal, order=ar.fim_order,
        )  # fmt: skip
    bar.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.model}: {len(tasks)} held-out {args.kind}-line tasks from {corpus.root}")
    rows = [(f"diffusion, {m} length", r) for m, r in report["modes"].items()]
    rows += [("autoregressive baseline", report["ar"])] if "ar" in report else []
    for name, r in rows:
        em, tpf, tps = 100 * r["exact_match"], r["tokens_per_forward"], r["tokens_per_second"]
        print(f"  {name:<26} EM {em:5.1f}%   {tpf:.2f} tokens/forward   {tps:.0f} tok/s")
    return 0
