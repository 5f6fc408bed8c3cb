"""`mdiff keys`, `mdiff sign` and `mdiff verify`: their flags (`register`) and handlers.

The handlers import the provenance machinery (c2pa, torch) when they run, so registering the
commands stays light.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mdiff.errors import MdiffError

__all__ = ["register", "run_keys", "run_sign", "run_verify"]

VERIFY_EPILOG = (
    "exit codes: 0 intact (trusted), 1 warning (untrusted signer, provenance stripped but "
    "watermark found, or a --prompt that does not match), 2 invalid/tampered, 3 nothing found, "
    "4 usage error or unreadable file. Watermarks are looked for with every key in the key ring "
    "(MDIFF_HOME/watermark.secret and MDIFF_HOME/keyring/*.secret); verify never writes."
)
SIGN_EPILOG = (
    "The file becomes the parent ingredient of the new manifest (action c2pa.opened); a "
    "manifest it carries is kept inside the new one. A file that already carries a watermark "
    "(declared by its valid manifest, or found by a key in your key ring) keeps it and is signed "
    "byte for byte; other images and videos get your watermark. Source types (IPTC): "
    "trained = trainedAlgorithmicMedia, composite = compositeWithTrainedAlgorithmicMedia, "
    "algorithmic = algorithmicMedia, human = digitalCreation, capture = digitalCapture; "
    "default: the one a valid parent manifest declares, else none (no AI claim)."
)


def register(commands) -> None:
    commands.add("keys", "create the signing identity and watermark secret", run_keys, _keys)
    commands.add("sign", "watermark and C2PA-sign an existing file", run_sign, _sign)
    commands.add("verify", "report a file's C2PA manifest, watermark and verdict", run_verify,
                 _verify)  # fmt: skip


def _keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["init", "list"], help="init: create the development "
                   "identity; list: the watermark key ring (read only)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing identity")


def _sign(p: argparse.ArgumentParser) -> None:
    from mdiff.provenance.manifest import SOURCE_TYPES  # light: no c2pa, no torch

    p.add_argument("file", help="an image (.png/.jpg), video (.mp4) or UTF-8 text file")
    p.add_argument("-o", "--output", help="output path (default: FILE-signed.EXT; text: in place)")
    p.add_argument("--model", default="external", help="the tool that made the file")
    p.add_argument("--source-type", choices=list(SOURCE_TYPES), default=None,
                   help="how the content was made (see below); default: what a valid parent "
                   "manifest declares, else none")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.epilog = SIGN_EPILOG


def _verify(p: argparse.ArgumentParser) -> None:
    from mdiff.cli import utf8_text

    p.add_argument("file", help="image, video or text file to check")
    p.add_argument("--sidecar", help="manifest file for text (default: FILE.c2pa)")
    p.add_argument(
        "--trust-anchor", action="append", default=[], metavar="PEM",
        help="an extra trusted root certificate (repeatable); our development root is trusted",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-watermark", action="store_true", help="skip watermark detection")
    p.add_argument("--model", help="the generating model (name or folder) whose tokenizer reads "
                   "a text watermark (default: the one the manifest names)")  # fmt: skip
    p.add_argument("--prompt", type=utf8_text, help="check that the file was made from this "
                   "prompt (against the manifest's keyed commitment)")  # fmt: skip
    p.add_argument("--prompt-opening", metavar="HEX", help="the commitment's opening that the "
                   "file's owner gave (else your key ring opens it, and prints it)")  # fmt: skip
    p.epilog = VERIFY_EPILOG


def run_keys(args: argparse.Namespace) -> int:
    """`mdiff keys init [--force]`: create the development signing identity and watermark
    secret; `mdiff keys list`: the key ids of the key ring."""
    from mdiff.provenance import keys

    if args.action == "list":
        home = keys.mdiff_home() if args.home is None else Path(args.home)
        ring = keys.keyring(home)
        print(f"key ring of {home}: {len(ring)} key(s)" + (":" if ring else ""))
        for i, key_id in enumerate(ring):
            print(f"  {key_id}" + ("  (yours: watermark.secret)" if i == 0 and
                                   (home / "watermark.secret").is_file() else ""))  # fmt: skip
        return 0
    identity = keys.init_dev_identity(args.home, force=args.force)
    home = keys.mdiff_home() if args.home is None else Path(args.home)
    print(f"created development identity {identity.name!r} under {home}")
    print(f"  trust anchor to share with verifiers: {home / 'identity' / 'root.pem'}")
    print(f"  watermark key id: {keys.default_key_id(args.home)}")
    return 0


def run_sign(args: argparse.Namespace) -> int:
    """`mdiff sign FILE [-o OUT] [--model NAME] [--source-type T] [--force]`: see
    `mdiff.provenance.resign` (parent ingredient, source type, watermark kept or added)."""
    from mdiff import media
    from mdiff.provenance.resign import sign_existing
    from mdiff.provenance.stamp import Stamper

    out = sign_existing(args.file, args.output, Stamper(home=args.home), model=args.model,
                        source_type=args.source_type, overwrite=args.force)  # fmt: skip
    text = media.kind_of(out) == "text"
    print(f"signed {out}" + (f" (manifest in {out.name}.c2pa)" if text else ""))
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
            model=args.model,
            prompt=args.prompt,
            prompt_opening=args.prompt_opening,
        )
    except (MdiffError, OSError) as exc:
        print(f"mdiff: error: {exc}", file=sys.stderr)
        return EXIT_CODES["error"]
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return report.exit_code
