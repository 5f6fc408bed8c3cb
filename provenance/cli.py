"""`mdiff keys`, `mdiff sign` and `mdiff verify` (argument parsing lives in ``mdiff.cli``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mdiff import media
from mdiff.errors import InvalidInputError, MdiffError
from mdiff.provenance import keys
from mdiff.provenance.stamp import Stamper
from mdiff.provenance.verify import EXIT_CODES, verify
from mdiff.record import GenerationRecord

log = logging.getLogger(__name__)


def run_keys(args: argparse.Namespace) -> int:
    """`mdiff keys init [--force]`: create the development signing identity and watermark secret."""
    identity = keys.init_dev_identity(args.home, force=args.force)
    home = keys.mdiff_home() if args.home is None else Path(args.home)
    print(f"created development identity {identity.name!r} under {home}")
    print(f"  trust anchor to share with verifiers: {home / 'identity' / 'root.pem'}")
    print(f"  watermark key id: {keys.default_key_id(args.home)}")
    return 0


def _default_output(path: Path) -> Path:
    if media.kind_of(path) == "text":
        return path  # text keeps its bytes; the manifest goes into the sidecar beside it
    return path.with_name(f"{path.stem}-signed{path.suffix}")


def run_sign(args: argparse.Namespace) -> int:
    """`mdiff sign FILE [-o OUT] [--model NAME]`: watermark where the format allows, then sign."""
    src = Path(args.file)
    kind = media.kind_of(src)
    out = Path(args.output) if args.output else _default_output(src)
    if media.kind_of(out) != kind:
        raise InvalidInputError(f"{out.name} is not a {kind} file name like {src.name}")
    stamper = Stamper(home=args.home)
    extra = {"signed_by": "mdiff sign", "source_file": src.name}
    if kind == "text":
        content = src.read_text(encoding="utf-8")
        record = GenerationRecord.create("text", args.model, extra=extra)
        stamper.save(stamper.text(content, record, policy=None), out)
    else:
        if kind == "image":
            frames, fps = media.read_image(src), None
        else:
            frames, fps = media.read_video(src)
        sizes = {"width": frames.shape[2], "height": frames.shape[1], "frames": frames.shape[0]}
        if fps:
            sizes["fps"] = fps
        record = GenerationRecord.create(kind, args.model, sizes=sizes, extra=extra)
        stamper.save(stamper.frames(frames, record, fps=fps), out)
    print(f"signed {out}" + (f" (manifest in {out.name}.c2pa)" if kind == "text" else ""))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """`mdiff verify FILE …`: print the report (or JSON) and exit with its documented code."""
    try:
        anchors = [Path(p).read_bytes() for p in args.trust_anchor]
        trust = keys.TrustConfig.default(args.home, extra_pems=anchors)
        report = verify(
            args.file,
            sidecar=args.sidecar,
            trust=trust,
            home=args.home,
            check_watermark=not args.no_watermark,
        )
    except (MdiffError, OSError) as exc:
        print(f"mdiff: error: {exc}", file=sys.stderr)
        return EXIT_CODES["error"]
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return report.exit_code
