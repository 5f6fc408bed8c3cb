"""Verification: what a file is, who made it, and whether it was tampered with.

``verify(path)`` reads the C2PA manifest (embedded, or the ``.c2pa`` sidecar of a text file),
looks for our invisible watermark, and combines both into one verdict:

    exit  verdict
    0     manifest trusted (watermark, when checkable, matches it): provenance intact
    1     warning: a valid manifest from an untrusted signer, a manifest whose watermark payload
          disagrees, or no manifest but our watermark ("AI-generated, provenance stripped")
    2     the manifest is invalid: the file or its manifest was tampered with
    3     nothing found: no manifest and no watermark
    4     usage error, or a file that cannot be read (missing, empty, corrupt, unsupported)

An untrusted signer is a warning, not a failure: the content still matches its manifest.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdiff import hub, media
from mdiff.errors import InvalidInputError, MdiffError
from mdiff.provenance import inspect, keys
from mdiff.provenance.watermark import pixel, text

__all__ = ["EXIT_CODES", "ProvenanceReport", "verify"]

EXIT_CODES = {"intact": 0, "warning": 1, "tampered": 2, "nothing": 3, "error": 4}
SCHEMA = "mdiff-verify/1"


@dataclass
class ProvenanceReport:
    """Everything ``mdiff verify`` prints; ``to_dict()`` is the ``--json`` output."""

    path: str
    kind: str
    size_bytes: int
    manifest: Any  # inspect.ManifestReport
    watermark: dict[str, Any] | None  # detection result, or {"checked": False, "reason": ...}
    payload_matches_manifest: bool | None
    verdict: str
    exit_code: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "file": self.path,
            "kind": self.kind,
            "size_bytes": self.size_bytes,
            "manifest": self.manifest.to_dict(),
            "watermark": self.watermark,
            "payload_matches_manifest": self.payload_matches_manifest,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "notes": self.notes,
        }

    def format(self) -> str:
        """The human-readable report (a few aligned lines and the verdict)."""
        m = self.manifest
        lines = [f"File        {Path(self.path).name}  ({self.kind}, {self.size_bytes:,} bytes)"]
        lines.append(f"C2PA        {m.state.upper()}" + _signer_line(m))
        if m.state != "absent":
            stamp = f"timestamp {m.timestamp}" if m.timestamp else _NO_TSA
            lines.append("            " + stamp)
            if m.record is not None:
                r = m.record
                source = (m.digital_source_type or "created").rsplit("/", 1)[-1]
                lines.append(
                    f"            {source} by {m.claim_generator}; "
                    f"model {r.model_id} seed {r.seed} sampler {r.sampler} steps {r.steps}"
                )
            lines += [f"            ingredient {i.title} ({i.relationship}) {i.state.upper()}"
                      for i in m.ingredients]  # fmt: skip
            lines += [f"            failure {code}: {why}" for code, why in m.failures]
            lines += [f"            warning {code}: {why}" for code, why in m.warnings
                      if code != inspect.NO_TIMESTAMP[0]]  # said on the timestamp line  # fmt: skip
        lines.append(
            "Watermark   " + _watermark_line(self.watermark, self.payload_matches_manifest)
        )
        lines += [f"            note: {n}" for n in self.notes]
        lines.append(f"Verdict     {self.verdict}")
        return "\n".join(lines)


_NO_TSA = "no trusted timestamp (valid only while the signing certificate is)"


def _signer_line(m) -> str:
    if not m.signer:
        return ""
    names = [subject for subject, _issuer in m.signer] + [m.signer[-1][1]]
    anchor = "  [trusted root]" if m.state == "trusted" else ""
    return "   signer " + " ← ".join(names) + anchor


def _watermark_line(wm: dict | None, matches: bool | None) -> str:
    if wm is None or not wm.get("checked", True):
        return "NOT CHECKED" + (f" ({wm['reason']})" if wm else "")
    if not wm["detected"]:
        return f"NOT DETECTED  {wm['scheme']}  z={wm['z']:.1f}"
    payload = wm.get("payload_hex")
    match = {True: " = manifest", False: " ≠ manifest", None: ""}[matches]
    extra = f"  [{wm['frames_used']} frames]" if "frames_used" in wm else ""
    bound = wm.get("fpr_bound", wm.get("p_value"))
    return (f"DETECTED  {wm['scheme']} key {wm['key_id']}  z={wm['z']:.1f} (FPR ≤ {bound:.1e})"
            + (f"  payload {payload}{match}" if payload else "") + extra)  # fmt: skip


def _check_watermark(path: Path, kind: str, manifest, home, tokenize) -> dict[str, Any]:
    """Detect our watermark with the key named by the manifest (or our default key)."""
    info = manifest.record.watermark if manifest.record is not None else None
    key_id = info.key_id if info is not None else keys.default_key_id(home)
    if info is not None and key_id != keys.default_key_id(home):
        return {"checked": False, "reason": f"key {key_id} is not in this key ring"}
    secret = keys.master_secret(home)
    if kind in ("image", "video"):
        frames = media.read_image(path) if kind == "image" else media.read_video_head(path)[0]
        detector = pixel.PixelWatermark(keys.watermark_key(key_id, pixel.SCHEME, secret))
        result = detector.detect(frames).to_dict()
        if result.get("payload") is not None:
            result["payload_hex"] = f"{result['payload']:08x}"
        return {"scheme": pixel.SCHEME, "key_id": key_id, **result}
    record = manifest.record
    if tokenize is None and record is not None:
        tokenize = _model_tokenizer(record.model_id)
    if tokenize is None:
        return {"checked": False, "reason": "text needs the generating model's tokenizer"}
    extra = (record.extra or {}) if record is not None else {}
    vocab = int(extra.get("vocab_size", 0))
    if vocab < 2:
        return {"checked": False, "reason": "the manifest does not give the model's vocabulary"}
    wm = text.TextWatermark(keys.watermark_key(key_id, text.SCHEME, secret), vocab)
    content = path.read_text(encoding="utf-8", errors="replace")
    spans = extra.get("generated_spans") if manifest.state in ("trusted", "valid") else None
    if spans:  # a signed completion names the characters the model wrote; score only those
        ids = [i for a, b in spans for i in tokenize(content[int(a) : int(b)])]
    else:
        ids = tokenize(content)
    result = wm.detect(ids).to_dict()
    scored = "generated spans" if spans else "whole file"
    if not result["detected"] and result["n_scored"] < text.MIN_TOKENS:
        reason = f"only {result['n_scored']} tokens to score; the text mark needs {text.MIN_TOKENS}"
        return {"checked": False, "reason": reason, "key_id": key_id, **result, "scored": scored}
    return {"key_id": key_id, **result, "scored": scored}


def _model_tokenizer(model_id: str) -> Callable[[str], list[int]] | None:
    """The tokenizer shipped beside a model (``tokenizer.json`` in its checkpoint directory),
    found by name without importing the text frontend; None when there is none."""
    try:
        directory = hub.resolve(model_id)
    except MdiffError:
        return None
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    return lambda s: tok.encode(s, add_special_tokens=False).ids


def _first_up(s: str) -> str:
    return s[:1].upper() + s[1:]


def _verdict(manifest, wm: dict | None, matches: bool | None) -> tuple[str, str]:
    detected = bool(wm and wm.get("checked", True) and wm.get("detected"))
    ai = "AI-generated, " if (manifest.ai_generated or detected) else ""
    if manifest.state == "invalid":
        return "tampered", "TAMPERED: the content or its manifest changed after signing"
    if manifest.state == "trusted":
        if matches is False:
            return "warning", _first_up(f"{ai}manifest trusted but the watermark payload differs")
        return "intact", _first_up(f"{ai}provenance intact")
    if manifest.state == "valid":
        return "warning", _first_up(f"{ai}provenance intact, but the signer is not trusted")
    if detected:
        return "warning", "AI-generated, provenance stripped (watermark found, manifest missing)"
    return "nothing", "No provenance found: no manifest and no watermark"


def verify(
    path: str | os.PathLike,
    *,
    sidecar: str | os.PathLike | None = None,
    trust: keys.TrustConfig | None = None,
    home=None,
    check_watermark: bool = True,
    tokenize: Callable[[str], list[int]] | None = None,
) -> ProvenanceReport:
    """Verify one file. Raises ``InvalidInputError``/``VideoIOError``/``ProvenanceError`` for files
    that cannot be read; the CLI maps those to exit code 4."""
    path = Path(path)
    kind = media.kind_of(path)
    if not path.is_file():
        raise InvalidInputError(f"no such file: {path}")
    trust = trust or keys.TrustConfig.default(home)
    manifest = inspect.read_manifest(path, sidecar=sidecar, trust=trust)
    wm = None
    if check_watermark:
        try:
            wm = _check_watermark(path, kind, manifest, home, tokenize)
        except InvalidInputError as exc:  # e.g. frames too small to hold a tile
            wm = {"checked": False, "reason": str(exc)}
    matches = None
    info = manifest.record.watermark if manifest.record is not None else None
    if wm and wm.get("detected") and info is not None and info.payload_hex:
        matches = wm.get("payload_hex") == info.payload_hex
    status, verdict = _verdict(manifest, wm, matches)
    notes = []
    if info is not None and wm and wm.get("checked", True) and not wm.get("detected"):
        notes.append("the manifest declares a watermark that was not detected")
    return ProvenanceReport(str(path), kind, path.stat().st_size, manifest, wm, matches,
                            verdict, EXIT_CODES[status], notes)  # fmt: skip
