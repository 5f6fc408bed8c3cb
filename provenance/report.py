"""`ProvenanceReport`: what `mdiff verify` found about one file, as text (`format`) and JSON
(`to_dict`, the ``--json`` output, schema ``mdiff-verify/1``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdiff.provenance import inspect

__all__ = ["EXIT_CODES", "SCHEMA", "ProvenanceReport"]

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
    prompt: dict[str, Any] | None = None  # the --prompt check, when one was asked for

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
            "prompt": self.prompt,
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
                source = (m.digital_source_type or "").rsplit("/", 1)[-1]
                how = f"{source or 'created'} by {m.claim_generator}"
                if m.action == "c2pa.opened":
                    how = f"opened by {m.claim_generator} ({source or 'source type not declared'})"
                facts = [f"{name} {value}" for name, value in (("model", r.model_id),
                         ("seed", r.seed), ("sampler", r.sampler), ("steps", r.steps))
                         if value is not None]  # fmt: skip
                lines.append(f"            {how}; " + " ".join(facts))
            lines += [f"            ingredient {i.title} ({i.relationship}) {i.state.upper()}"
                      for i in m.ingredients]  # fmt: skip
            lines += [f"            failure {code}: {why}" for code, why in m.failures]
            lines += [f"            warning {code}: {why}" for code, why in m.warnings
                      if code != inspect.NO_TIMESTAMP[0]]  # said on the timestamp line  # fmt: skip
        lines.append(
            "Watermark   " + _watermark_line(self.watermark, self.payload_matches_manifest)
        )
        lines += [f"            note: {n}" for n in self.notes]
        if self.prompt is not None:
            lines.append("Prompt      " + _prompt_line(self.prompt))
        lines.append(f"Verdict     {self.verdict}")
        return "\n".join(lines)


_NO_TSA = "no trusted timestamp (valid only while the signing certificate is)"


def _signer_line(m) -> str:
    if not m.signer:
        return ""
    names = [subject for subject, _issuer in m.signer] + [m.signer[-1][1]]
    anchor = "  [trusted root]" if m.state == "trusted" else ""
    return "   signer " + " ← ".join(names) + anchor


def _prompt_line(p: dict) -> str:
    if p["matches"] is None:
        return f"NOT CHECKED ({p['reason']})"
    if not p["matches"]:
        return f"DOES NOT MATCH the manifest's {p['how']}"
    line = f"MATCHES the manifest's {p['how']}"
    if "opening" in p:
        line += (f"; opening {p['opening']} (give it with the prompt to let anyone check: "
                 "--prompt-opening)")  # fmt: skip
    return line


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
