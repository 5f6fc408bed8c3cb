"""The verify route of `mdiff serve`: ``POST /v1/verify`` (an upload → ``mdiff verify``'s
report); the signed outputs it checks are downloaded from `files_api`.

``POST /v1/verify`` takes ``multipart/form-data``: the file in the field ``file`` (its file name
decides its kind, as for ``mdiff verify FILE``), and optionally the CLI's options: ``sidecar``
(a ``.c2pa`` manifest for text, ``--sidecar``), ``trust_anchor`` (a PEM root, repeatable,
``--trust-anchor``), ``no_watermark`` (``--no-watermark``), ``model`` (a built-in model whose
tokenizer reads a text mark, ``--model``), ``prompt`` and ``prompt_opening``. It answers 200
with exactly the report ``mdiff verify --json`` prints (schema ``mdiff-verify/1``; paths
are the upload's base name, as if run in its folder; ``exit_code``, ``verdict``) plus
``status`` (intact, warning, tampered, nothing) and ``meaning`` (what the exit code means).
A file ``mdiff verify`` cannot read (its exit code 4: unsupported, empty, corrupt) is a 400
OpenAI-style error that also carries ``exit_code`` 4, ``status`` "error" and ``meaning``.

The body is read as it arrives and stops past ``Limits.max_upload_bytes`` (the uploads' sum; a
little more for the form's framing and small fields) → 413; parts spool to disk beyond 1 MiB,
the uploads are copied into a private temp folder that is always deleted. Verifying runs on
the compute thread (`mdiff.serve.compute`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from mdiff.errors import InvalidInputError, MdiffError
from mdiff.serve import compute
from mdiff.serve.app import api_error

__all__ = ["MEANINGS", "router"]

router = APIRouter()
FRAMING = 256 * 1024  # body bytes beyond the uploads: boundaries, part headers, small fields
MAX_ANCHORS = 8
CHUNK = 1 << 20
FIELDS = {"file", "sidecar", "trust_anchor", "no_watermark", "model", "prompt", "prompt_opening"}
MEANINGS = {  # mdiff verify's exit codes (mdiff.provenance.cli.VERIFY_EPILOG)
    0: "intact: the manifest is trusted and matches the content",
    1: "warning: untrusted signer, provenance stripped but watermark found, a watermark "
    "payload that differs from the manifest, or a prompt that does not match",
    2: "invalid or tampered: the content or its manifest changed after signing",
    3: "nothing found: no manifest and no watermark",
    4: "error: the file cannot be read (missing, empty, corrupt or unsupported)",
}
STATUS = {0: "intact", 1: "warning", 2: "tampered", 3: "nothing", 4: "error"}


class _TooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return api_error(413, f"the upload is larger than {limit} bytes (Limits.max_upload_bytes)",
                     param="file", code="upload_too_large")  # fmt: skip


async def _limited(stream, limit: int):
    """The request's body chunks; `_TooLarge` once more than ``limit`` bytes came."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge()
        yield chunk


def _safe_name(name: str | None, default: str) -> str:
    """The base name of an uploaded file, in characters safe for a path (kind from suffix)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name or "").name).lstrip(".")[-120:]
    return base or default


def _flag(value, name: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise InvalidInputError(f"{name} must be true or false, got {value!r}")


def _options(form, app) -> dict:
    """verify()'s keyword options from the form's text fields (checked)."""
    unknown = sorted(set(form.keys()) - FIELDS)
    if unknown:
        raise InvalidInputError(f"unknown form field(s) {unknown}; known: {sorted(FIELDS)}")
    text = {}
    for key in ("no_watermark", "model", "prompt", "prompt_opening"):
        values = form.getlist(key)
        if len(values) > 1 or any(isinstance(v, UploadFile) for v in values):
            raise InvalidInputError(f"{key} must be one text field")
        text[key] = values[0] if values else None
    opts = {"check_watermark": not _flag(text["no_watermark"] or "", "no_watermark")}
    model = text["model"]
    if model:
        from mdiff import hub

        cfg = app.state.config
        known = set(hub.list_builtin()) | {cfg.text_name}
        if model not in known | {cfg.text_model}:  # no path on the server is read for a client
            raise InvalidInputError(f"model must be one of {sorted(known)}, got {model!r}")
        opts["model"] = cfg.text_model if cfg.names_text(model) else model
    prompt = text["prompt"]
    if prompt is not None and len(prompt) > app.state.config.limits.max_prompt_chars:
        raise InvalidInputError("prompt is longer than Limits.max_prompt_chars")
    opening = text["prompt_opening"] or None
    if opening is not None and (prompt is None or re.fullmatch(r"(?:[0-9a-fA-F]{2})+", opening)
                                is None):  # fmt: skip
        raise InvalidInputError("prompt_opening must be hex and needs the prompt to check")
    opts["prompt"], opts["prompt_opening"] = prompt, opening
    return opts


def _copy(src, dest: Path) -> int:
    src.seek(0)
    with open(dest, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)
    return dest.stat().st_size


async def _save_uploads(form, folder: Path, limit: int) -> tuple[Path, Path | None, list[bytes]]:
    """Copy the uploads into ``folder``: (file, sidecar or None, trust anchors' PEM bytes)."""
    files = form.getlist("file")
    if len(files) != 1 or not isinstance(files[0], UploadFile):
        raise InvalidInputError("send exactly one file upload in the form field 'file'")
    sides, anchors = form.getlist("sidecar"), form.getlist("trust_anchor")
    if len(sides) > 1 or any(not isinstance(s, UploadFile) for s in sides):
        raise InvalidInputError("sidecar must be one file upload (a .c2pa manifest)")
    if len(anchors) > MAX_ANCHORS:
        raise InvalidInputError(f"at most {MAX_ANCHORS} trust anchors")
    sizes = [u.size for u in (*files, *sides, *anchors) if isinstance(u, UploadFile)]
    if sum(s or 0 for s in sizes) > limit:
        raise _TooLarge()
    path = folder / _safe_name(files[0].filename, "upload")
    await asyncio.to_thread(_copy, files[0].file, path)
    side = None
    if sides:
        side = path.with_name(path.name + ".c2pa")  # where mdiff verify FILE looks for it
        await asyncio.to_thread(_copy, sides[0].file, side)
    pems = []
    for a in anchors:
        pems.append(await a.read() if isinstance(a, UploadFile) else a.encode())
    return path, side, pems


def _verify(path: Path, side: Path | None, pems: list[bytes], home, opts: dict,
            max_pixels: int) -> dict:  # fmt: skip
    """What ``mdiff verify --json`` prints for ``path`` (its `run_verify`, without printing).
    An image past ``max_pixels`` has its manifest checked and its watermark left unread (the
    detector holds ~100 bytes a pixel: an 8000² PNG of 187 KB took 6 GB and minutes)."""
    from mdiff.provenance import keys
    from mdiff.provenance.verify import verify

    big = _image_pixels(path)
    skip = big is not None and big > max_pixels
    if skip:
        opts = {**opts, "check_watermark": False}
    trust = keys.TrustConfig.default(home, extra_pems=pems)
    report = verify(path, sidecar=side, trust=trust, home=home, **opts).to_dict()
    if skip:
        report.setdefault("notes", []).append(
            f"the watermark was not checked: the image has {big:,} pixels, more than this "
            f"server reads ({max_pixels:,}, Limits.max_verify_pixels); `mdiff verify` reads it"
        )
    return report


def _image_pixels(path: Path) -> int | None:
    """Width × height from an image's header (None: not an image PIL reads)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.width * im.height
    except Exception:  # noqa: BLE001 — not an image (or a bomb): verify says what it is
        return None


def _named(obj, folder: str):
    """``obj`` with the temp folder cut from every path in it (the files as uploaded)."""
    if isinstance(obj, str):
        return obj.replace(folder + os.sep, "").replace(folder, "")
    if isinstance(obj, dict):
        return {k: _named(v, folder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_named(v, folder) for v in obj]
    return obj


def _unreadable(message: str) -> JSONResponse:
    body = json.loads(api_error(400, message, param="file", code="unreadable_file").body)
    body.update(exit_code=4, status=STATUS[4], meaning=MEANINGS[4])
    return JSONResponse(body, status_code=400)


@router.post("/v1/verify")
async def verify_upload(request: Request):
    """``mdiff verify --json`` on an uploaded file (see the module's docstring)."""
    config = request.app.state.config
    limit = config.limits.max_upload_bytes
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return api_error(400, "send multipart/form-data with the file in the field 'file'",
                         param="file", code="missing_file")  # fmt: skip
    try:
        declared = int(request.headers.get("content-length", "0"))
    except ValueError:
        return api_error(400, "bad Content-Length header")
    if declared > limit + FRAMING:
        return _too_large(limit)
    folder = Path(tempfile.mkdtemp(prefix="mdiff-verify-"))
    try:
        body = _limited(request.stream(), limit + FRAMING)
        parser = MultiPartParser(request.headers, body, max_files=2 + MAX_ANCHORS,
                                 max_fields=len(FIELDS), max_part_size=FRAMING)  # fmt: skip
        try:
            form = await parser.parse()
        except _TooLarge:
            return _too_large(limit)
        except MultiPartException as exc:
            return api_error(400, f"bad multipart form: {exc.message}", code="bad_form")
        except ClientDisconnect:
            return api_error(400, "the client left during the upload", code="client_disconnect")
        try:
            opts = _options(form, request.app)
            path, side, pems = await _save_uploads(form, folder, limit)
        except _TooLarge:
            return _too_large(limit)
        finally:
            await form.close()
        try:
            report = await asyncio.to_thread(compute.call, _verify, path, side, pems,
                                             config.home, opts,
                                             config.limits.max_verify_pixels)  # fmt: skip
        except (MdiffError, OSError, ValueError) as exc:  # the CLI's exit code 4
            return _unreadable(_named(str(exc), str(folder)))
        report = _named(report, str(folder))
        report.update(status=STATUS[report["exit_code"]], meaning=MEANINGS[report["exit_code"]])
        return report
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)


# ---------------------------------------------------------------- downloads by id
