"""`mdiff complete FILE`, `mdiff eval fim` and `mdiff train text`: their flags (`register`) and
handlers.

    mdiff complete todo.py                  # print the completed file
    mdiff complete todo.py --line 12 -o done.py   # regenerate line 12, write + sign
    mdiff complete todo.py --in-place       # replace todo.py (and todo.py.c2pa) when done
    mdiff complete todo.py --stream         # committed text and the live draft on stderr

The handlers import the models when they run, so registering the commands stays light.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from mdiff.atomic import write_error
from mdiff.errors import InvalidInputError
from mdiff.train.cli import RecipeCommand

# mdiff.unmask_rules.SCHEDULES, spelled here so that building the parser imports no torch
# (tests/text/test_cli.py keeps the two equal)
SCHEDULE_HELP = "equal|dream|cosine|threshold|entropy|llada2"

__all__ = [
    "MAX_SOURCE_BYTES",
    "TerminalStreamer",
    "line_hole",
    "read_source",
    "register",
    "run_complete",
    "run_eval_fim",
]

TEXT = RecipeCommand("mdiff.text.training.train:TextRecipe")
MAX_SOURCE_BYTES = 4 * 2**20  # the largest FILE `mdiff complete` reads
COMPLETE = f"""Fill the <FILL> markers of FILE (or the code of one line, --line N) with the code
model and print the result, or write it with a signed .c2pa sidecar.

Where it goes: -o OUT writes OUT and OUT.c2pa; an existing OUT (or OUT.c2pa) is replaced only
with --force, and OUT is never FILE itself. --in-place replaces FILE (and FILE.c2pa). The output
path is checked before the model runs, and a failed write leaves what was there untouched.

The bytes of FILE outside the holes are kept exactly (CRLF, a BOM, no final newline); a
completion takes the file's line ending. FILE: UTF-8 text, at most {MAX_SOURCE_BYTES >> 20} MiB."""


def register(commands) -> None:
    commands.add("complete", "fill <FILL> markers (or a line) of a source file with the code model",
                 run_complete, _complete, description=COMPLETE)  # fmt: skip
    commands.group("eval").add(
        "fim", "fill-in-the-middle exact match on held-out code (fixed / true / auto length)",
        run_eval_fim, _eval_fim,
        description="Cut single- or multi-line holes from the model's held-out files (or "
        "--corpus), or from every file of your own code (--files DIR, by --ext), and report "
        "exact match per length mode, tokens per forward and tokens/s.",
    )  # fmt: skip
    commands.group("train").add(
        "text", "train a text model on code (masked / block diffusion or the AR FIM baseline)",
        TEXT.run, TEXT.arguments,
        description="Train a text model on a folder of source files (default: the Python "
        "standard library), resumable. --kind mdm: masked diffusion (LLaDA/MDLM); block: "
        "block diffusion (BD3-LM); ar: the causal fill-in-the-middle baseline.",
    )  # fmt: skip


def _complete(p: argparse.ArgumentParser) -> None:
    from mdiff.text.sampling.generation import MAX_STEPS

    p.add_argument("file", help="a source file with <FILL> markers (or use --line)")
    p.add_argument("--line", type=int, help="regenerate the code of this line (1-based)")
    p.add_argument("--marker",
                   help="the hole marker in FILE (default <FILL>; for a file whose code holds "
                        "that text)")  # fmt: skip
    where = p.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", help="write the result here, with a signed .c2pa sidecar")
    where.add_argument("--in-place", action="store_true",
                       help="replace FILE (and FILE.c2pa) with the result")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing -o file")
    p.add_argument("--stream", action="store_true", help="show committed text and drafts live")
    p.add_argument("--model", default="code-tiny", help="built-in name or model folder (ours, "
                   "or a transformers folder: spec picked from its config)")  # fmt: skip
    p.add_argument("--trust-remote-code", action="store_true", help="let a model folder whose "
                   "model is code in the folder (LLaDA 2) run that code")  # fmt: skip
    p.add_argument("--length", default="auto", help="tokens per hole (within the model's "
                   "window), or auto (default)")  # fmt: skip
    p.add_argument("--schedule", default="equal", help=SCHEDULE_HELP)
    p.add_argument("--steps", type=int, help=f"denoising steps per hole, 1..{MAX_STEPS} "
                   "(default: one per token; more steps than tokens are not taken)")  # fmt: skip
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0, help="in [0, 2^63) (default 0)")


def _eval_fim(f: argparse.ArgumentParser) -> None:
    f.add_argument("--model", default="code-tiny", help="built-in name or model folder")
    f.add_argument("--trust-remote-code", action="store_true", help="let a model folder whose "
                   "model is code in the folder (LLaDA 2) run that code")  # fmt: skip
    f.add_argument("--ar", metavar="MODEL", help="also score this autoregressive FIM baseline")
    src = f.add_mutually_exclusive_group()
    src.add_argument("--corpus", help="folder of sources whose held-out split is used "
                     "(default: the standard library's)")  # fmt: skip
    src.add_argument("--files", metavar="DIR", help="cut holes from every file of this folder "
                     "(recursively; binary, non-UTF-8 and files over 1 MiB skipped)")  # fmt: skip
    f.add_argument("--ext", default=".py", help="with --files: file extensions, comma list "
                   "(default .py; e.g. .py,.js,.rs)")  # fmt: skip
    f.add_argument("--kind", choices=["single", "multi"], default="single")
    f.add_argument("-n", type=int, default=50, help="number of tasks (default 50)")
    f.add_argument("--modes", default="fixed,true,auto", help="comma list of fixed,true,auto")
    f.add_argument("--fixed-length", type=int, default=16, help="tokens in fixed mode")
    f.add_argument("--schedule", default="equal", help=SCHEDULE_HELP)
    f.add_argument("--threshold", type=float, default=0.9, help="for --schedule threshold")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-heal", action="store_true",
                   help="no token healing at the hole's left edge (for comparison)")  # fmt: skip
    f.add_argument("--json", action="store_true", help="print the report as JSON")


def _unused_marker(text: str, base: str) -> str:
    """``base`` (``<FILL>``), or ``<FILL-n>`` when the text already holds it."""
    marker, n = base, 0
    while marker in text:
        n += 1
        marker = f"{base[:-1]}-{n}>" if base.endswith(">") else f"{base}-{n}"
    return marker


def line_hole(text: str, line: int, marker: str | None = None) -> str:
    """`text` with the code of 1-based `line` (after its indentation) replaced by `marker`
    (default: the FIM marker ``<FILL>``)."""
    from mdiff.text.fim.infilling import MARKER

    marker = MARKER if marker is None else marker
    # lines as an editor numbers them: \n, \r\n or \r end one (not str.splitlines' form
    # feeds or U+2028, which sit inside a line of code)
    lines = re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)
    if not 1 <= line <= len(lines):
        raise InvalidInputError(f"--line {line} is outside the file (1..{len(lines)})"
                                if lines else f"--line {line}: the file is empty")  # fmt: skip
    row = lines[line - 1]
    body = row.rstrip("\r\n")
    bom = "\ufeff" if line == 1 and body.startswith("\ufeff") else ""  # the file's BOM stays
    indent = len(bom) + len(body[len(bom) :]) - len(body[len(bom) :].lstrip())
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
    from mdiff.record import check_seed
    from mdiff.text.fim.infilling import MARKER
    from mdiff.text.pipeline import CodeModel
    from mdiff.text.sampling.generation import GenerationConfig

    length = _length(args.length)
    check_seed(args.seed, "--seed")
    config = GenerationConfig(schedule=args.schedule, temperature=args.temperature,
                              steps=args.steps)  # fmt: skip
    src = Path(args.file)
    text = read_source(src)
    marker = MARKER if args.marker is None else args.marker
    if not marker.strip():
        raise InvalidInputError("--marker must be some text, not blank")
    if args.line is not None:  # a marker the file does not hold: its own <FILL> text stays
        marker = _unused_marker(text, MARKER)
        text = line_hole(text, args.line, marker)
    elif marker not in text:
        raise InvalidInputError(f"{src} has no {marker} marker; add one or pass --line N")
    out = _output(args, src)
    cm = CodeModel.from_pretrained(args.model, stamper=Stamper(home=args.home),
                                   trust_remote_code=args.trust_remote_code)  # fmt: skip
    if cm.summary:  # a transformers folder: say which spec was chosen
        print(f"mdiff: model {cm.summary}", file=sys.stderr)
    start = time.perf_counter()
    factory = (lambda n: TerminalStreamer(cm.tokenizer, n)) if args.stream else None
    done = cm.fill(text, marker=marker, length=length, seed=args.seed, source=str(src),
                   streamer_factory=factory, config=config)  # fmt: skip
    seconds = time.perf_counter() - start
    tokens = done.record.sizes.get("tokens", 0)
    stats = (f"{tokens} tokens in {seconds:.2f} s ({_rate(tokens / max(seconds, 1e-9))} tok/s, "
             f"{done.tokens_per_forward:.2f} tokens/forward)")  # fmt: skip
    if out is not None:
        done.save(out, overwrite=args.force or args.in_place)
        print(f"wrote {out} (manifest in {out.name}.c2pa); {stats}", file=sys.stderr)
    else:
        _write_stdout(done.text)
        print(stats, file=sys.stderr)
    return 0


def read_source(src: Path) -> str:
    """The text of the user's file, exactly (no newline translation; a BOM stays a U+FEFF);
    `InvalidInputError` naming it when it is missing, a folder, not a regular file, larger than
    `MAX_SOURCE_BYTES`, unreadable or not UTF-8."""
    if not src.is_file():
        what = "a folder" if src.is_dir() else "not a regular file" if src.exists() else None
        raise InvalidInputError(f"{src} is {what}" if what else f"no such file: {src}")
    try:
        if (size := src.stat().st_size) > MAX_SOURCE_BYTES:
            limit = MAX_SOURCE_BYTES >> 20
            raise InvalidInputError(f"{src} has {size} bytes: at most {limit} MiB are completed")
        data = src.read_bytes()
    except OSError as e:
        raise InvalidInputError(f"cannot read {src}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"{src} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _length(value: str) -> int | str:
    """``--length``: ``auto`` or a positive integer."""
    if value == "auto":
        return value
    if value.isascii() and value.isdigit() and int(value) > 0:
        return int(value)
    raise InvalidInputError(f"--length must be a positive integer or auto, got {value!r}")


def _output(args: argparse.Namespace, src: Path) -> Path | None:
    """Where the result goes (None: standard output), checked before any work."""
    from mdiff.text.pipeline import check_output

    if args.in_place:  # a link is followed: its target is the file replaced
        return check_output(src.resolve() if src.is_symlink() else src, overwrite=True)
    if args.output is None:
        return None
    return check_output(args.output, overwrite=args.force, inputs=(src,),
                        replace_hint="use --force")  # fmt: skip


def _write_stdout(text: str) -> None:
    """``text`` on standard output as UTF-8 bytes, line breaks untouched."""
    buffer = getattr(sys.stdout, "buffer", None)  # none when captured (tests)
    try:
        if buffer is None:
            sys.stdout.write(text)
        else:
            buffer.write(text.encode("utf-8"))
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # `mdiff.cli.main` ends quietly
    except OSError as e:
        raise write_error("standard output", e) from None


def _fim_sources(args: argparse.Namespace):
    """``(files, root, skipped)`` for `mdiff eval fim`: ``--files DIR`` (every file, by
    ``--ext``) or the held-out split of ``--corpus`` (default: the standard library)."""
    from mdiff.text.data import Corpus
    from mdiff.text.fim.tasks import source_files

    if args.files is not None:
        if not str(args.files).strip():
            raise InvalidInputError("--files needs a folder, got an empty string")
        exts = [e.strip() for e in args.ext.split(",") if e.strip()]
        if not exts:
            raise InvalidInputError(f"--ext needs file extensions, got {args.ext!r}")
        exts = tuple(e if e.startswith(".") else "." + e for e in exts)
        files, skipped = source_files(args.files, exts)
        return files, Path(args.files), skipped
    corpus = Corpus.from_folder(args.corpus) if args.corpus else Corpus.from_folder()
    files = [(f, t) for f in corpus.heldout_files if (t := corpus.read(f)) is not None]
    return files, corpus.root, {}


FIM_TOKENS = ("[PRE]", "[SUF]", "[MID]")  # the autoregressive baseline's FIM prompt


def _eval_report(args, cm, ar, tasks, modes, files, root, skipped, settings, heal, bar) -> dict:
    """`mdiff eval fim`'s report: the diffusion model per length mode, then the baseline."""
    from mdiff.text.fim.eval import evaluate_ar_fim, evaluate_fim
    from mdiff.text.pipeline import CodeModel

    report = {"model": args.model, "kind": args.kind, "tasks": len(tasks),
              "settings": {**settings, "heal": heal},
              "source": {"root": str(root), "files": len(files), "skipped": skipped}}  # fmt: skip
    own = cm.infill if type(cm).infill is not CodeModel.infill else None  # DiffusionGemma's
    report["modes"] = evaluate_fim(
        cm.model, cm.tokenizer, tasks, modes=modes, fixed_length=args.fixed_length, fill=own,
        seed=args.seed, progress=lambda *_: bar.update(), context=cm.context, heal=heal,
        **settings,
    )  # fmt: skip
    if ar is not None:  # the baseline with its own tokenizer
        bar.reset(total=len(tasks))
        report["ar"] = evaluate_ar_fim(
            ar.model, ar.tokenizer, tasks, context=ar.context, progress=lambda *_: bar.update(),
            heal=heal, order=ar.fim_order,
        )  # fmt: skip
    return report


def run_eval_fim(args: argparse.Namespace) -> int:
    """`mdiff eval fim`: exact match per length mode on held-out code (`mdiff.text.fim.eval`)."""
    import json

    from tqdm import tqdm

    from mdiff.record import check_seed
    from mdiff.text.fim.eval import MODES
    from mdiff.text.fim.infilling import window as fim_window
    from mdiff.text.fim.tasks import make_tasks
    from mdiff.text.pipeline import CodeModel
    from mdiff.text.sampling.generation import GenerationConfig

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes):
        raise InvalidInputError(f"--modes must be a comma list of {', '.join(MODES)}")
    if args.n < 1:
        raise InvalidInputError("-n must be at least 1")
    if args.fixed_length < 1:
        raise InvalidInputError(f"--fixed-length must be at least 1, got {args.fixed_length}")
    check_seed(args.seed, "--seed")
    settings = {"schedule": args.schedule, "threshold": args.threshold}
    GenerationConfig(**settings)  # refuses bad settings before any work
    files, root, skipped = _fim_sources(args)
    tasks = make_tasks(files, args.kind, args.n, args.seed)
    if not tasks:
        raise InvalidInputError(f"no {args.kind}-line tasks could be cut from {root}")
    cm = CodeModel.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    ar = CodeModel.from_pretrained(args.ar) if args.ar else None  # checked before the long run
    missing = [] if ar is None else [t for t in FIM_TOKENS if t not in ar.tokenizer.special_ids]
    if missing:
        raise InvalidInputError(f"--ar {args.ar}: its tokenizer has no {', '.join(missing)}: "
                                "not an autoregressive FIM baseline (mdiff's code-ar)")  # fmt: skip
    spec = None if ar is None else ar.model.spec
    if spec is not None and (spec.attention != "causal" or not spec.supports_cache):
        raise InvalidInputError(f"--ar {args.ar}: a {spec.attention} denoiser, not an "
                                "autoregressive FIM baseline (train one: mdiff train text "
                                "--kind ar)")  # fmt: skip
    heal = not args.no_heal
    window = fim_window(cm.model, cm.context)
    if "fixed" in modes and args.fixed_length > window:  # before the run, as infill would
        raise InvalidInputError(f"--fixed-length {args.fixed_length}: a middle that long does "
                                f"not fit the model's {window} positions")  # fmt: skip
    bar = tqdm(total=len(tasks) * len(modes), desc="fim", file=sys.stderr, leave=False)
    try:
        report = _eval_report(args, cm, ar, tasks, modes, files, root, skipped, settings, heal,
                              bar)  # fmt: skip
    finally:
        bar.close()  # an error then reads on a line of its own
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    what = "" if args.files else " held-out"
    skips = "".join(f", {n} {r}" for r, n in sorted(skipped.items()))
    print(f"{args.model}: {len(tasks)}{what} {args.kind}-line tasks from {root} "
          f"({len(files)} file{'' if len(files) == 1 else 's'}"
          f"{skips and ' used; skipped' + skips[1:]})")  # fmt: skip
    rows = [(f"diffusion, {m} length", r) for m, r in report["modes"].items()]
    rows += [("autoregressive baseline", report["ar"])] if "ar" in report else []
    for name, r in rows:
        em, tpf, tps = 100 * r["exact_match"], r["tokens_per_forward"], r["tokens_per_second"]
        print(f"  {name:<26} EM {em:5.1f}%   {tpf:.2f} tokens/forward   {_rate(tps)} tok/s")
    return 0


def _rate(per_second: float) -> str:
    """A rate as people read it: whole numbers from 10 up, two significant digits below."""
    return f"{per_second:.0f}" if per_second >= 10 else f"{per_second:.2g}"
