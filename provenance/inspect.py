"""Read and validate the C2PA manifest of a file: what made it, who signed it, was it changed.

States (``ManifestReport.state``):

* ``trusted`` — signature, hashes and certificate chain check out, and the chain ends at one
  of the configured trust anchors;
* ``valid`` — everything checks out but the signer is not trusted here
  (``signingCredential.untrusted`` is reported as a *warning*, not a failure);
* ``invalid`` — something was changed after signing (hash mismatch), or the certificate
  expired / was refused; see ``failures``;
* ``absent`` — no manifest (never signed, or stripped by re-encoding).

Reading is offline (no remote manifests, no OCSP). A sidecar ``<file>.c2pa`` is used
automatically when present.
"""

from __future__ import annotations

import io
import json
import logging
import mmap
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import c2pa
from cryptography import x509
from cryptography.x509.oid import NameOID

from mdiff.errors import InvalidInputError, ProvenanceError
from mdiff.record import GenerationRecord

from .keys import TrustConfig
from .manifest import AI_SOURCE_TYPES, GENERATION_LABEL, SOFT_BINDING_PREFIX
from .sign import EMBEDDABLE, _check_file, _one_line, mime_of, sidecar_path

__all__ = ["IngredientReport", "ManifestReport", "read_manifest", "read_stream"]

log = logging.getLogger(__name__)

UNTRUSTED = "signingCredential.untrusted"
NO_TIMESTAMP = (
    "mdiff.timestamp.missing",
    "no trusted timestamp: the signature is valid only while the signing certificate is valid",
)
_STATES = {"Trusted": "trusted", "Valid": "valid", "Invalid": "invalid"}

Code = tuple[str, str]  # (c2pa status code, explanation)


@dataclass
class IngredientReport:
    """One ingredient (user input) with the validation c2pa stored when it was added."""

    title: str
    relationship: str
    mime: str | None
    state: str  # trusted | valid | invalid | absent (no manifest of its own)
    failures: list[Code] = field(default_factory=list)
    warnings: list[Code] = field(default_factory=list)


@dataclass
class ManifestReport:
    """What the manifest of one file says, and whether it holds. JSON-able via ``to_dict``."""

    state: str  # trusted | valid | invalid | absent
    mime: str | None = None
    path: str | None = None
    sidecar: str | None = None
    title: str | None = None  # the manifest's dc:title (file name at signing time)
    signer: list[tuple[str, str]] = field(default_factory=list)  # (subject CN, issuer CN), EE first
    alg: str | None = None
    timestamp: str | None = None
    claim_generator: str | None = None
    record: GenerationRecord | None = None
    ai_generated: bool = False
    action: str | None = None  # the first action: c2pa.created, or c2pa.opened (a re-signed file)
    digital_source_type: str | None = None
    soft_binding: dict[str, str] | None = None  # {"scheme", "alg", "payload"}
    ingredients: list[IngredientReport] = field(default_factory=list)
    failures: list[Code] = field(default_factory=list)
    warnings: list[Code] = field(default_factory=list)

    def failure_codes(self) -> set[str]:
        return {code for code, _ in self.failures}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["record"] = self.record.to_dict() if self.record is not None else None
        return json.loads(json.dumps(out))  # tuples -> lists, all plain JSON types


def _codes(results: dict | None, kind: str) -> list[Code]:
    return [(s.get("code", ""), s.get("explanation", "")) for s in (results or {}).get(kind, [])]


def _split(results: dict | None) -> tuple[list[Code], list[Code]]:
    """(failures, warnings): ``untrusted`` is moved from failure to warning."""
    fails = _codes(results, "failure")
    return [c for c in fails if c[0] != UNTRUSTED], [c for c in fails if c[0] == UNTRUSTED]


def _ingredient(ing: dict, deltas: dict[str, dict]) -> IngredientReport:
    stored = (ing.get("validation_results") or {}).get("activeManifest")
    fails, warns = _split(stored)
    delta_fails, delta_warns = _split(deltas.get(ing.get("label", "")))
    fails, warns = fails + delta_fails, warns + delta_warns
    if not ing.get("active_manifest"):
        state = "absent"
    elif fails:
        state = "invalid"
    elif any(c == "signingCredential.trusted" for c, _ in _codes(stored, "success")):
        state = "trusted"
    else:
        state = "valid"
    return IngredientReport(
        ing.get("title", ""), ing.get("relationship", ""), ing.get("format"), state, fails, warns
    )


def _actions(manifest: dict) -> list[dict]:
    for a in manifest.get("assertions", []):
        if a.get("label", "").startswith("c2pa.actions"):
            return list(a.get("data", {}).get("actions", []))
    return []


def _source_type(actions: list[dict]) -> str | None:
    """digitalSourceType of the first action that declares one."""
    return next((a["digitalSourceType"] for a in actions if a.get("digitalSourceType")), None)


def _record(data: dict | None, warnings: list[Code]) -> GenerationRecord | None:
    if data is None:
        return None
    try:
        return GenerationRecord.from_dict(data)
    except (InvalidInputError, TypeError) as e:
        warnings.append(("mdiff.record.unreadable", f"{GENERATION_LABEL} not understood: {e}"))
        return None


def _soft_binding(data: dict | None) -> dict[str, str] | None:
    if not data:
        return None
    alg = data.get("alg", "")
    blocks = data.get("blocks") or [{}]
    return {
        "alg": alg,
        "scheme": alg.removeprefix(SOFT_BINDING_PREFIX),
        "payload": str(blocks[0].get("value", "")),
    }


def _raw_view(stream: BinaryIO, manifest_data: bytes | None):
    """Bytes (or a read-only mmap) that hold the manifest, for :func:`signer_chain`."""
    if manifest_data is not None:
        return manifest_data
    if isinstance(stream, io.BytesIO):
        return stream.getvalue()
    try:
        return mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, io.UnsupportedOperation):
        stream.seek(0)
        return stream.read()


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def _certs_near(raw, serial: int, anchor: bytes = b"c2pa.signature", window: int = 32768):
    """DER certificates found in the ``window`` bytes after each ``anchor`` label (the COSE
    signature box holds the x5chain as CBOR byte strings). Returns the certificates of the
    first window that holds ``serial`` (the signer), so ingredient chains never mix in."""
    start = raw.find(anchor)
    while start != -1:
        found = {}
        chunk = bytes(raw[start : start + window])
        i = chunk.find(b"\x30\x82")
        while i != -1 and i + 4 <= len(chunk):
            n = int.from_bytes(chunk[i + 2 : i + 4], "big") + 4  # SEQUENCE, 2-byte length
            try:
                cert = x509.load_der_x509_certificate(chunk[i : i + n])
                found[cert.serial_number] = cert
                i = chunk.find(b"\x30\x82", i + n)
            except ValueError:
                i = chunk.find(b"\x30\x82", i + 1)
        if serial in found:
            return found
        start = raw.find(anchor, start + window)
    return {}


def signer_chain(raw, sig: dict) -> list[tuple[str, str]]:
    """[(subject CN, issuer CN)] from the signer up the chain; falls back to
    ``signature_info`` (signer CN, issuer organisation) when the chain cannot be located."""
    fallback = [(sig.get("common_name", ""), sig.get("issuer", ""))] if sig else []
    serial = sig.get("cert_serial_number")
    if raw is None or not serial:
        return fallback
    certs = _certs_near(raw, int(serial))
    cert = certs.get(int(serial))
    if cert is None:
        return fallback
    by_subject = {c.subject: c for c in certs.values()}
    chain: list[tuple[str, str]] = []
    while cert is not None and len(chain) < 8:
        chain.append((_cn(cert.subject), _cn(cert.issuer)))
        nxt = by_subject.get(cert.issuer)
        cert = nxt if nxt is not None and nxt is not cert else None
    return chain


def _report(store: dict, raw: bytes | None, mime: str) -> ManifestReport:
    """Build the report from ``Reader.json()`` (``raw``: bytes to find the cert chain in)."""
    label = store.get("active_manifest")
    m = store.get("manifests", {}).get(label, {})
    results = store.get("validation_results") or {}
    failures, warnings = _split(results.get("activeManifest"))
    state = _STATES.get(store.get("validation_state", ""), "invalid")
    sig = m.get("signature_info") or {}
    if not sig.get("time"):
        warnings.append(NO_TIMESTAMP)
    assertions = {a.get("label"): a.get("data") for a in m.get("assertions", [])}
    gen = (m.get("claim_generator_info") or [{}])[0]
    deltas = {
        d.get("ingredientAssertionURI", "").rsplit("/", 1)[-1]: d.get("validationDeltas")
        for d in results.get("ingredientDeltas", [])
    }
    actions = _actions(m)
    dst = _source_type(actions)
    return ManifestReport(
        state=state,
        mime=mime,
        title=m.get("title"),
        signer=signer_chain(raw, sig),
        alg=sig.get("alg"),
        timestamp=sig.get("time"),
        claim_generator=" ".join(str(gen[k]) for k in ("name", "version") if gen.get(k)) or None,
        record=_record(assertions.get(GENERATION_LABEL), warnings),
        ai_generated=dst in AI_SOURCE_TYPES,
        action=actions[0].get("action") if actions else None,
        digital_source_type=dst,
        soft_binding=_soft_binding(assertions.get("c2pa.soft-binding")),
        ingredients=[_ingredient(i, deltas) for i in m.get("ingredients", [])],
        failures=failures,
        warnings=warnings,
    )


def read_stream(
    stream: BinaryIO,
    mime: str,
    *,
    manifest_data: bytes | None = None,
    trust: TrustConfig | None = None,
) -> ManifestReport:
    """Validate an in-memory/open asset of type ``mime`` (``manifest_data``: sidecar bytes)."""
    trust = trust if trust is not None else TrustConfig.default()
    try:
        with (
            trust.context() as ctx,
            c2pa.Reader(mime, stream, manifest_data, context=ctx) as reader,
        ):
            store = json.loads(reader.json())
    except c2pa.C2paError.ManifestNotFound:
        return ManifestReport(state="absent", mime=mime)
    except c2pa.C2paError.NotSupported as e:
        raise InvalidInputError(f"unsupported format {mime}: {_one_line(e)}") from e
    except c2pa.C2paError as e:
        msg = _one_line(e)
        if "could not be parsed" in msg or "header" in msg:
            raise InvalidInputError(f"corrupt or truncated {mime} data: {msg}") from e
        raise ProvenanceError(f"cannot read the C2PA manifest: {msg}") from e
    raw = _raw_view(stream, manifest_data)
    try:
        return _report(store, raw, mime)
    finally:
        if isinstance(raw, mmap.mmap):
            raw.close()


def read_manifest(
    path: str | os.PathLike,
    *,
    sidecar: str | os.PathLike | None = None,
    trust: TrustConfig | None = None,
) -> ManifestReport:
    """Validate the manifest of ``path`` (embedded, or ``sidecar`` / ``<path>.c2pa``).

    Raises InvalidInputError for a missing, empty, corrupt or unsupported file, and
    ProvenanceError when c2pa fails for another reason; a file without a manifest is
    ``state == "absent"``, not an error.
    """
    path = Path(path)
    mime = mime_of(path)
    side = Path(sidecar) if sidecar is not None else sidecar_path(path)
    if sidecar is not None:
        _check_file(side)
    manifest = side.read_bytes() if side.is_file() else None
    if manifest is None and mime not in EMBEDDABLE:
        if mime == "text/plain":  # text carries manifests only in sidecars
            return ManifestReport(state="absent", mime=mime, path=str(path))
        raise InvalidInputError(f"{path.name}: unsupported format ({mime}) and no sidecar")
    if manifest is not None and mime not in EMBEDDABLE and mime != "text/plain":
        mime = "application/octet-stream"
    with open(path, "rb") as f:
        report = read_stream(f, mime, manifest_data=manifest, trust=trust)
    report.path = str(path)
    report.sidecar = str(side) if manifest is not None else None
    log.debug("read %s: %s", path, report.state)
    return report
