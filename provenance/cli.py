"""`mdiff keys`, `mdiff sign` and `mdiff verify`: their flags (`register`) and handlers.

The handlers import the provenance machinery (c2pa, torch) when they run, so registering the
commands stays light.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mdiff.errors import InvalidInputError, MdiffError

__all__ = ["register", "run_keys", "run_sign", "run_verify"]

VERIFY_EPILOG = (
    "exit codes: 0 intact (trusted), 1 warning (untrusted signer, or provenance stripped "
    "but watermark found), 2 invalid/tampered, 3 nothing found, 4 usage or unreadable file"
)


def register(commands) -> None:
    commands.add("keys", "create the signing identity and watermark secret", run_keys, _keys)
    commands.add("sign", "watermark and C2PA-sign an existing file", run_sign, _sign)
    commands.add("verify", "report a file's C2PA manifest, watermark and verdict", run_verify,
                 _verify)  # fmt: skip


def _keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["init"], help="init: create the development identity")
    p.add_argument("--force", action="store_true", help="replace an existing identity")


def _sign(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="an image (.png/.jpg), video (.mp4) or text file")
    p.add_argument("-o", "--output", help="output path (default: FILE-signed.EXT; text: in place)")
    p.add_argument("--model", default="external", help="generator to name in the manifest")


def _verify(p: argparse.ArgumentParser) -> None:
    p.usage_exit_code = 4  # verify's documented code for usage errors (2 means tampered there)
    p.add_argument("file", help="image, video or text file to check")
    p.add_argument("--sidecar", help="manifest file for text (default: FILE.c2pa)")
    p.add_argument(
        "--trust-anchor", action="append", default=[], metavar="PEM",
        help="an extra trusted root certificate (repeatable); our development root is trusted",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-watermark", action="store_true", help="skip watermark detection")
    p.epilog = VERIFY_EPILOG


def run_keys(args: argparse.Namespace) -> int:
    """`mdiff keys init [--force]`: create the development signing identity and watermark secret."""
    from mdiff.provenance import keys

    identity = keys.init_dev_identity(args.home, force=args.force)
    home = keys.mdiff_home() if args.home is None else Path(args.home)
    print(f"created development identity {identity.name!r} under {home}")
    print(f"  trust anchor to share with verifiers: {home / 'identity' / 'root.pem'}")
    print(f"  watermark key id: {keys.default_key_id(args.home)}")
    return 0


def _default_output(path: Path) -> Path:
    from mdiff import media

    if media.kind_of(path) == "text":
        return path  # text keeps its bytes; the manifest goes into the sidecar beside it
    return path.with_name(f"{path.stem}-signed{path.suffix}")


def run_sign(args: argparse.Namespace) -> int:
    """`mdiff sign FILE [-o OUT] [--model NAME]`: watermark where the format allows, then sign."""
    from mdiff import media
    from mdiff.provenance.stamp import Stamper
    from mdiff.record import GenerationRecord

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
            frames, fps = media.read_video_head(src)
        sizes = {"width": frames.shape[2], "height": frames.shape[1], "frames": frames.shape[0]}
        if fps:
            sizes["fps"] = fps
        record = GenerationRecord.create(kind, args.model, sizes=sizes, extra=extra)
        stamper.save(stamper.frames(frames, record, fps=fps), out)
    print(f"signed {out}" + (f" (manifest in {out.name}.c2pa)" if kind == "text" else ""))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """`mdiff verify FILE …`: print the report (or JSON) and exit with its documented code."""
    from mdiff.provenance import keys
    from mdiff.provenance.verify import EXIT_CODES, verify

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
