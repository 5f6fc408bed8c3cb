"""Sign outputs with a C2PA manifest: embedded (PNG, JPEG, MP4 incl. fragmented) or sidecar.

The format is detected from the content (magic bytes), never from the file name. Every write
is atomic: the signed file (or ``<file>.c2pa`` sidecar) appears complete or not at all, also
when signing in place. c2pa-rs verifies each manifest right after signing
(``verify_after_sign``), so a bad certificate profile fails here, not at the user's end. A
sidecar signed by a local key without a timestamp server is made the same way every time, so
that check runs on the key's first sidecar in a process (`_check_key`): a server signs every
completion. Embedded manifests (where the file's layout matters), callback signers (a KMS or
HSM) and timestamped ones, whose answers come from outside, are checked at every signature.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import c2pa

from mdiff.atomic import atomic_file
from mdiff.errors import InvalidInputError, ProvenanceError
from mdiff.record import GenerationRecord, published_name

from .keys import Identity, TrustConfig, default_identity
from .manifest import PARENT_LABEL, build_manifest, ingredient_label

__all__ = ["EMBEDDABLE", "mime_of", "sidecar_path", "sign_file", "sign_sidecar"]

log = logging.getLogger(__name__)

EMBEDDABLE = frozenset(
    {
        "image/png",
        "image/jpeg",
        "video/mp4",
        "video/quicktime",
        "image/webp",
        "image/gif",
        "audio/wav",
    }
)

_MP4_BRANDS_QT = {b"qt  "}
_CHECKED: set[bytes] = set()  # local identities (with their anchors) checked after a signature


def _check_key(identity: Identity, trust: TrustConfig, sidecar: bool) -> bytes | None:
    """What `_CHECKED` holds for this signer; None: check every signature."""
    if not sidecar or identity.callback is not None or identity.tsa_url:
        return None
    h = hashlib.sha256(identity.chain_pem + identity.key_pem)
    for pem in trust.anchors:
        h.update(hashlib.sha256(pem).digest())
    return h.digest()


def _sniff(head: bytes) -> str:
    """MIME type from the first bytes of a file (``application/octet-stream`` if unknown)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[4:8] == b"ftyp":  # ISO BMFF: [size:4]["ftyp"][major brand:4]
        return "video/quicktime" if head[8:12] in _MP4_BRANDS_QT else "video/mp4"
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"WAVE"):
        return "image/webp" if head[8:12] == b"WEBP" else "audio/wav"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # a multi-byte character cut at the end of the sniffed window is still text
        if e.start < len(head) - 3 or b"\x00" in head:
            return "application/octet-stream"
    return "application/octet-stream" if b"\x00" in head else "text/plain"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    if not path.is_file():
        raise InvalidInputError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: empty file")


def mime_of(path: str | os.PathLike) -> str:
    """The MIME type of ``path`` detected from its content (InvalidInputError if unreadable)."""
    path = Path(path)
    _check_file(path)
    with open(path, "rb") as f:
        return _sniff(f.read(4096))


def sidecar_path(path: str | os.PathLike) -> Path:
    """``<path>.c2pa`` — where a sidecar manifest for ``path`` lives by default."""
    path = Path(path)
    return path.with_name(path.name + ".c2pa")


def _add_ingredients(builder: c2pa.Builder, inputs: tuple[str, ...]) -> None:
    """Add each user input as an ``inputTo`` ingredient (its own manifest, if any, is kept)."""
    for i, name in enumerate(inputs):
        path = Path(name)
        mime = mime_of(path)
        if mime not in EMBEDDABLE:  # c2pa cannot parse text inputs; hash them as opaque bytes
            mime = "application/octet-stream"
        meta = {
            "title": published_name(path.name),
            "relationship": "inputTo",
            "label": ingredient_label(i),
        }
        with open(path, "rb") as f:
            builder.add_ingredient(meta, mime, f)


def _sidecar_parent(path: Path, trust: TrustConfig) -> tuple[dict, bytes] | None:
    """``(ingredient definition, manifest store)`` for a parent whose manifest is the sidecar
    ``<path>.c2pa`` (c2pa reads no sidecar when adding an ingredient: the store is handed over
    as a resource, with the validation results it reads with now); None without a sidecar."""
    side = sidecar_path(path)
    if mime_of(path) in EMBEDDABLE or not side.is_file():
        return None
    store = side.read_bytes()
    try:
        with trust.context() as ctx, open(path, "rb") as f, \
                c2pa.Reader("text/plain", f, store, context=ctx) as reader:  # fmt: skip
            found = json.loads(reader.json())
    except c2pa.C2paError as e:
        raise InvalidInputError(f"{side}: unreadable C2PA sidecar ({_one_line(e)})") from e
    entry = {
        "title": published_name(path.name),
        "relationship": "parentOf",
        "label": PARENT_LABEL,
        "format": "text/plain",
        "active_manifest": found["active_manifest"],
        "validation_results": found.get("validation_results") or {},
        "manifest_data": {"format": "application/c2pa", "identifier": _PARENT_STORE},
    }
    return entry, store


_PARENT_STORE = "mdiff-parent.c2pa"


def _add_parent(builder: c2pa.Builder, path: Path, store: bytes | None) -> None:
    """Add ``path`` as the ``parentOf`` ingredient (an embedded manifest is kept; a sidecar's
    ``store`` was put in the definition by `_sidecar_parent`)."""
    if store is not None:
        builder.add_resource(_PARENT_STORE, io.BytesIO(store))
        return
    mime = mime_of(path)
    if mime not in EMBEDDABLE:
        mime = "application/octet-stream"
    meta = {"title": published_name(path.name), "relationship": "parentOf", "label": PARENT_LABEL}
    with open(path, "rb") as f:
        builder.add_ingredient(meta, mime, f)


def _sign(
    src: Path,
    dst_stream,
    record: GenerationRecord,
    identity: Identity | None,
    trust: TrustConfig | None,
    *,
    mime: str,
    title: str,
    sidecar: bool,
) -> bytes:
    """Run one c2pa Builder over ``src`` into ``dst_stream``; returns the manifest bytes."""
    if not isinstance(record, GenerationRecord):
        raise InvalidInputError(f"record must be a GenerationRecord, got {type(record).__name__}")
    identity = identity or default_identity()
    trust = trust or TrustConfig.default()
    names = [Path(p).name for p in record.inputs]
    manifest = build_manifest(record, title=title, mime=mime, ingredient_titles=names)
    parent = Path(record.parent) if record.parent is not None else None
    found = _sidecar_parent(parent, trust) if parent is not None else None
    if found is not None:
        manifest["ingredients"] = [found[0]]
    key = _check_key(identity, trust, sidecar)
    check = key is None or key not in _CHECKED
    try:
        with (
            identity.signer() as signer,
            trust.context(verify_after_sign=check) as ctx,
            c2pa.Builder(manifest, ctx) as builder,
            open(src, "rb") as fin,
        ):
            if parent is not None:
                _add_parent(builder, parent, found[1] if found else None)
            _add_ingredients(builder, record.inputs)
            if sidecar:
                builder.set_no_embed()
            manifest_bytes = builder.sign(signer, mime, fin, dst_stream)
    except c2pa.C2paError as e:
        raise ProvenanceError(f"signing {title} ({mime}) failed: {_one_line(e)}") from e
    if key is not None:
        _CHECKED.add(key)
    return manifest_bytes


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def sign_file(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    record: GenerationRecord | None = None,
    identity: Identity | None = None,
    *,
    trust: TrustConfig | None = None,
    title: str | None = None,
) -> Path:
    """Embed a signed manifest for ``record`` into a PNG, JPEG or MP4 and write it to ``dst``.

    ``dst`` defaults to ``src`` (replaced atomically). ``trust`` also decides how signed
    ingredients are validated when they are added; ``title`` (default: ``dst``'s name) is the
    manifest's ``dc:title``. Formats c2pa cannot embed into (text, code) raise
    InvalidInputError: use :func:`sign_sidecar` for those.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else src
    if record is None:
        raise InvalidInputError("sign_file needs a GenerationRecord (record=...)")
    mime = mime_of(src)
    if not dst.parent.is_dir():
        raise InvalidInputError(f"{dst}: the destination folder does not exist")
    if mime not in EMBEDDABLE:
        raise InvalidInputError(
            f"{src.name}: cannot embed a C2PA manifest in {mime}; "
            "use sign_sidecar() to write a .c2pa sidecar"
        )
    # c2pa needs a readable, seekable destination
    with atomic_file(dst) as tmp, open(tmp, "w+b") as out:
        manifest = _sign(
            src, out, record, identity, trust, mime=mime, title=title or dst.name, sidecar=False
        )
    log.info("signed %s (%s, manifest %d bytes)", dst, mime, len(manifest))
    return dst


def sign_sidecar(
    path: str | os.PathLike,
    record: GenerationRecord | None = None,
    identity: Identity | None = None,
    *,
    sidecar: str | os.PathLike | None = None,
    trust: TrustConfig | None = None,
    title: str | None = None,
) -> Path:
    """Write a detached manifest for ``path`` to ``sidecar`` (default ``<path>.c2pa``).

    Works for any file (text, code, binary); the manifest's hard binding is a SHA-256 over the
    exact bytes of ``path``, so any edit to it reads as ``invalid``.
    """
    path = Path(path)
    if record is None:
        raise InvalidInputError("sign_sidecar needs a GenerationRecord (record=...)")
    mime = mime_of(path)
    if mime not in EMBEDDABLE and mime != "text/plain":
        mime = "application/octet-stream"
    out = Path(sidecar) if sidecar is not None else sidecar_path(path)
    manifest = _sign(
        path,
        io.BytesIO(),
        record,
        identity,
        trust,
        mime=mime,
        title=title or path.name,
        sidecar=True,
    )
    with atomic_file(out) as tmp:
        tmp.write_bytes(manifest)
    log.info("wrote sidecar manifest %s for %s (%s)", out, path, mime)
    return out
