"""Verification: what a file is, who made it, and whether it was tampered with.

``verify(path)`` reads the C2PA manifest (embedded, or the ``.c2pa`` sidecar of a text file),
looks for our invisible watermark, and combines both into one verdict:

    exit  verdict
    0     manifest trusted (watermark, when detected, matches it): provenance intact
    1     warning: a valid manifest from an untrusted signer, a manifest whose watermark payload
          disagrees, no manifest but our watermark ("AI-generated, provenance stripped"), or a
          ``prompt`` that does not match the manifest's commitment
    2     the manifest is invalid: the file or its manifest was tampered with
    3     nothing found: no manifest and no watermark
    4     usage error, or a file that cannot be read (missing, empty, corrupt, unsupported)

The manifest decides first: its verdict never depends on decoding the pixels (a tampered file
whose pixels no longer decode is still "tampered"; its watermark is then "not checked"). An
untrusted signer is a warning, not a failure: the content still matches its manifest. A
trusted manifest whose declared watermark is not detected stays "intact" (its hash binding
proves the bytes are the signed ones; the mark was too weak), and the verdict says so.

Watermarks are looked for with the key ring (`keys.keyring`: your ``watermark.secret`` and
``keyring/*.secret``): the key the manifest names, else every key (the false-positive bound is
multiplied by the number tried). Verifying only reads: it creates no home, secret or identity.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mdiff import hub, media
from mdiff.errors import CheckpointError, InvalidInputError, MdiffError
from mdiff.provenance import inspect, keys
from mdiff.provenance.report import EXIT_CODES, ProvenanceReport
from mdiff.provenance.watermark import pixel, text
from mdiff.record import prompt_digest, prompt_opening, sha256_text

__all__ = ["EXIT_CODES", "ProvenanceReport", "verify"]


def _declared(manifest, scheme: str):
    """The manifest's watermark of ``scheme`` (WatermarkInfo), or None."""
    info = manifest.record.watermark if manifest.record is not None else None
    return info if info is not None and info.scheme == scheme else None


def _key_ids(info, ring: dict[str, bytes], home) -> list[str] | dict[str, Any]:
    """The key ids to try: the declared one, else the whole ring; a not-checked result if none."""
    where = keys.mdiff_home() if home is None else home
    if info is not None:
        if info.key_id in ring:
            return [info.key_id]
        return {"checked": False, "reason": f"key {info.key_id} is not in the key ring of {where}"}
    if not ring:
        return {"checked": False, "reason": f"no watermark key in {where}"}
    return list(ring)


def _check_pixels(frames, manifest, ring: dict[str, bytes], home) -> dict[str, Any]:
    """Detect the pixel mark with the declared key (expecting its payload), else every key."""
    info = _declared(manifest, pixel.SCHEME)
    ids = _key_ids(info, ring, home)
    if isinstance(ids, dict):
        return ids
    # the declared payload is expected only where the hash binding holds (the pixels are the
    # ones it was embedded in): the known-payload test tells "this mark" from "no mark of this
    # key", not one payload of the key from another
    bound = info is not None and manifest.state in ("trusted", "valid")
    expected = _payload(info.payload_hex) if bound else None
    best = None
    for key_id in ids:
        detector = pixel.PixelWatermark(keys.watermark_key(key_id, pixel.SCHEME, ring[key_id]))
        found = {"scheme": pixel.SCHEME, "key_id": key_id,
                 **detector.detect(frames, expected=expected).to_dict()}  # fmt: skip
        if best is None or (found["detected"], found["z"]) > (best["detected"], best["z"]):
            best = found
        if best["detected"]:
            break
    best["keys_tried"] = len(ids)
    best["fpr_bound"] = min(1.0, best["fpr_bound"] * len(ids))
    if best["detected"]:
        best["payload_hex"] = f"{best['payload']:08x}"
    return best


def _payload(hex_text: str) -> int | None:
    try:
        value = int(hex_text, 16)
    except (TypeError, ValueError):
        return None
    return value if 0 <= value < 2**32 else None


def _check_text(path: Path, manifest, ring: dict[str, bytes], home, tokenize,
                model_vocab: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Detect the text mark of the declared key (else every key) with the model's tokenizer;
    its vocabulary from the manifest, else (no manifest: a stripped file) ``model_vocab``,
    the named model's own."""
    record = manifest.record
    if tokenize is None:
        return {"checked": False, "reason": "text needs the generating model's tokenizer "
                "(a built-in model is found by name; give a local one with --model)"}  # fmt: skip
    extra = (record.extra or {}) if record is not None else {}
    vocab = int(extra.get("vocab_size", 0))
    if vocab < 2 and record is None and model_vocab:
        vocab = model_vocab
    if vocab < 2:
        return {"checked": False, "reason": "the manifest does not give the model's vocabulary"}
    ids = _key_ids(_declared(manifest, text.SCHEME), ring, home)
    if isinstance(ids, dict):
        return ids
    content = path.read_text(encoding="utf-8", errors="replace")
    spans = extra.get("generated_spans") if manifest.state in ("trusted", "valid") else None
    if spans:  # a signed completion names the characters the model wrote; score only those
        tokens = [i for a, b in spans for i in tokenize(content[int(a) : int(b)])]
    else:
        tokens = tokenize(content)
    scored = "generated spans" if spans else "whole file"
    best = None
    for key_id in ids:
        wm = text.TextWatermark(keys.watermark_key(key_id, text.SCHEME, ring[key_id]), vocab)
        found = {"key_id": key_id, **wm.detect(tokens).to_dict(), "scored": scored}
        if best is None or (found["detected"], found["z"]) > (best["detected"], best["z"]):
            best = found
    if not best["detected"] and best["n_scored"] < text.MIN_TOKENS:
        why = f"only {best['n_scored']} tokens to score; the text mark needs {text.MIN_TOKENS}"
        return {"checked": False, "reason": why, **best}
    return best


def _check_prompt(manifest, prompt: str, opening: str | None, ring: dict[str, bytes]) -> dict:
    """Does ``prompt`` open the manifest's commitment? With ``opening`` (hex, given by the
    file's owner) anyone can check; without it, every key in the ring is tried."""
    record = manifest.record
    if record is None or manifest.state == "absent":
        return {"matches": None, "reason": "no generation record to check against"}
    c = record.prompt_commitment
    if c is not None:
        out: dict[str, Any] = {"how": "prompt commitment"}
        if opening is not None:
            key = bytes.fromhex(opening)
            return {**out, "matches": prompt_digest(key, prompt) == c.get("digest")}
        if not ring:
            return {"matches": None, "reason": "no key in the key ring to open the commitment "
                    "(ask the file's owner for its opening)"}  # fmt: skip
        for secret in ring.values():
            key = prompt_opening(keys.prompt_key(secret), str(c.get("nonce", "")))
            if prompt_digest(key, prompt) == c.get("digest"):
                return {**out, "matches": True, "opening": key.hex()}
        return {**out, "matches": False}
    if record.prompt_sha256 is not None:  # a manifest from before the commitments
        return {"how": "prompt SHA-256", "matches": sha256_text(prompt) == record.prompt_sha256}
    if record.prompt is not None:
        return {"how": "kept prompt", "matches": record.prompt == prompt}
    return {"matches": None, "reason": "the manifest records no prompt"}


def _model_tokenizer(model_id: str, given: bool = False):
    """``(tokenize, vocab)``: the tokenizer shipped beside a model (``tokenizer.json`` in its
    checkpoint directory) and the model's vocabulary (its logits: ``vocab_size`` in
    ``config.json``, else the tokenizer's size), found by name without importing the text
    frontend; Nones when there is none — unless the user ``given`` the model: then a model
    that is not found, or has no readable tokenizer, is an error."""
    try:
        directory = hub.resolve(model_id)
    except MdiffError:
        if given:
            raise
        return None, None
    path = directory / "tokenizer.json"
    if not path.is_file():
        if given:
            raise CheckpointError(f"{directory} has no tokenizer.json to read the text mark with")
        return None, None
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
        raise CheckpointError(f"{path} cannot be read as a tokenizer: {e}") from None
    vocab = tok.get_vocab_size(with_added_tokens=True)
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        inner = config.get("text_config") or {}  # DiffusionGemma: the text model's
        vocab = int(config.get("vocab_size") or inner.get("vocab_size") or vocab)
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return (lambda s: tok.encode(s, add_special_tokens=False).ids), vocab


def _first_up(s: str) -> str:
    return s[:1].upper() + s[1:]


def _verdict(manifest, wm: dict | None, matches: bool | None) -> tuple[str, str]:
    detected = bool(wm and wm.get("checked", True) and wm.get("detected"))
    ai = "AI-generated, " if (manifest.ai_generated or detected) else ""
    if manifest.state == "invalid":
        return "tampered", "TAMPERED: the content or its manifest changed after signing"
    if manifest.state in ("trusted", "valid"):
        missing = ""
        if manifest.record is not None and manifest.record.watermark is not None and wm \
                and wm.get("checked", True) and not detected:  # fmt: skip
            missing = "; its declared watermark was not detected"
        if matches is False:
            return "warning", _first_up(f"{ai}manifest {manifest.state} but the watermark "
                                        "payload differs")  # fmt: skip
        if manifest.state == "valid":
            return "warning", _first_up(
                f"{ai}provenance intact, but the signer is not trusted{missing}"
            )
        return "intact", _first_up(f"{ai}provenance intact{missing}")
    if detected:
        return "warning", "AI-generated, provenance stripped (watermark found, manifest missing)"
    if wm is not None and wm.get("checked") is False:
        why = wm.get("reason", "unknown")
        return (
            "nothing",
            f"No provenance found: no manifest, and the watermark was not checked ({why})",
        )
    return "nothing", "No provenance found: no manifest and no watermark"


def _with_prompt(status: str, verdict: str, check: dict) -> tuple[str, str]:
    """A prompt that was asked about and does not match (or cannot be checked) is a warning."""
    if check["matches"] or status in ("tampered", "nothing"):
        return status, verdict
    why = "the prompt does not match" if check["matches"] is False else "prompt not checked"
    return "warning", f"{verdict}; {why}"


def verify(
    path: str | os.PathLike,
    *,
    sidecar: str | os.PathLike | None = None,
    trust: keys.TrustConfig | None = None,
    home=None,
    check_watermark: bool = True,
    tokenize: Callable[[str], list[int]] | None = None,
    model: str | os.PathLike | None = None,
    prompt: str | None = None,
    prompt_opening: str | None = None,
) -> ProvenanceReport:
    """Verify one file (reading only). A text watermark needs the generating model's tokenizer:
    ``tokenize``, else the ``tokenizer.json`` of ``model`` (a name or folder; default: the one
    the manifest names, which names a local model by its folder's name only). ``prompt`` (with
    ``prompt_opening``, the hex opening the file's owner gave, or else the key ring) checks the
    manifest's prompt commitment. Raises
    ``InvalidInputError``/``VideoIOError``/``ProvenanceError`` for files that cannot be read;
    the CLI maps those to exit code 4."""
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{path} is a folder: verify one file at a time")
    kind = media.kind_of(path)
    if not path.is_file():
        raise InvalidInputError(_not_a_file(path))
    _check_prompt_args(prompt, prompt_opening)
    trust = trust or keys.TrustConfig.default(home)
    manifest = inspect.read_manifest(path, sidecar=sidecar, trust=trust)  # the manifest first
    ring = keys.keyring(home)
    wm, vocab = None, None
    if check_watermark:
        if kind == "text" and tokenize is None:
            named = model if model is not None else getattr(manifest.record, "model_id", None)
            tokenize, vocab = (
                (None, None)
                if named is None
                else _model_tokenizer(str(named), given=model is not None)
            )
        wm = _watermark(path, kind, manifest, ring, home, tokenize, vocab)
    matches = None
    info = manifest.record.watermark if manifest.record is not None else None
    if wm and wm.get("detected") and info is not None and info.payload_hex:
        matches = wm.get("payload_hex") == info.payload_hex
    status, verdict = _verdict(manifest, wm, matches)
    notes = []
    if info is not None and wm and wm.get("checked", True) and not wm.get("detected"):
        notes.append("the manifest declares a watermark that was not detected")
    check = None
    if prompt is not None:
        check = _check_prompt(manifest, prompt, prompt_opening, ring)
        status, verdict = _with_prompt(status, verdict, check)
    return ProvenanceReport(str(path), kind, path.stat().st_size, manifest, wm, matches,
                            verdict, EXIT_CODES[status], notes, check)  # fmt: skip


def _not_a_file(path: Path) -> str:
    """Why ``path`` (not a regular file) cannot be verified."""
    if path.is_symlink():
        return f"{path} is a link to nothing (its target is missing, or links loop)"
    if path.exists():
        return f"{path} is not a regular file (a pipe, socket or device): verify a file"
    return f"no such file: {path}"


def _check_prompt_args(prompt, opening) -> None:
    if prompt is not None and not isinstance(prompt, str):
        raise InvalidInputError(f"prompt must be a str, got {type(prompt).__name__}")
    if opening is None:
        return
    if prompt is None:
        raise InvalidInputError("a prompt opening needs the prompt to check (--prompt)")
    try:
        bytes.fromhex(opening)
    except (TypeError, ValueError):
        raise InvalidInputError(f"the prompt opening must be hex, got {opening!r}") from None


def _watermark(path: Path, kind: str, manifest, ring, home, tokenize,
               vocab: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The watermark result; pixels that do not decode leave it unchecked where a manifest was
    read (its verdict stands), and are an error where there is nothing else to report."""
    if kind not in ("image", "video"):
        return _check_text(path, manifest, ring, home, tokenize, vocab)
    try:
        frames = media.read_image(path) if kind == "image" else media.read_video_head(path)[0]
    except MdiffError as exc:
        if manifest.state == "absent":
            raise
        return {"checked": False, "reason": f"the pixels cannot be decoded: {exc}"}
    try:
        return _check_pixels(frames, manifest, ring, home)
    except InvalidInputError as exc:  # e.g. frames too small to hold a tile
        return {"checked": False, "reason": str(exc)}
