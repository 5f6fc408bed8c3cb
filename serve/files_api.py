"""Downloads of the server's stored, signed outputs by id: ``GET /v1/files/{id}`` (a
completion's signed text, …) and ``GET /v1/files/{id}/c2pa`` (its ``.c2pa`` sidecar). Both
answer ``HEAD`` and a single byte ``Range`` (206; 416 outside the file), so players and
download tools can seek and resume; a file is opened when asked, so one evicted from the store
meanwhile still sends whole.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from mdiff.serve.app import api_error
from mdiff.serve.store import artifact_store

__all__ = ["router"]

router = APIRouter()
CHUNK = 1 << 20
MEDIA_TYPES = {".mp4": "video/mp4", ".png": "image/png", ".jpg": "image/jpeg",
               ".jpeg": "image/jpeg", ".webp": "image/webp"}  # fmt: skip


def _byte_range(header: str | None, size: int):
    """``(start, end)`` (end exclusive) of a single ``bytes=`` range, None for the whole file
    (no header, several ranges or a form not understood: RFC 9110 lets a server ignore it), or
    False when it lies outside the file (416)."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if m is None or m.groups() == ("", ""):
        return None
    first, last = m.groups()
    if first == "":  # the last N bytes
        start, end = max(size - int(last), 0), size
    else:
        start, end = int(first), size if last == "" else min(int(last) + 1, size)
    return (start, end) if start < end else False


def _send(path: Path, media_type: str, name: str, range_header: str | None = None):
    """Stream ``path`` (opened now: an artifact evicted meanwhile still sends whole), or the
    byte range asked for (206; 416 outside the file)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 — closed by the generator
    except FileNotFoundError:
        return api_error(404, "the file is no longer stored", code="file_not_found")
    size = os.fstat(f.fileno()).st_size
    span = _byte_range(range_header, size)
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": f'inline; filename="{name}"'}
    if span is False:
        f.close()
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = span or (0, size)
    f.seek(start)

    def chunks():
        with f:
            left = end - start
            while left > 0 and (data := f.read(min(CHUNK, left))):
                left -= len(data)
                yield data

    headers["Content-Length"] = str(end - start)
    if span is None:
        return StreamingResponse(chunks(), media_type=media_type, headers=headers)
    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return StreamingResponse(chunks(), status_code=206, media_type=media_type, headers=headers)


def _artifact(request: Request, file_id: str):
    art = artifact_store(request.app).get(file_id)
    if art is None:
        return None, api_error(404, f"no stored file {file_id!r}", param="id",
                               code="file_not_found")  # fmt: skip
    return art, None


@router.api_route("/v1/files/{file_id}", methods=["GET", "HEAD"])
def download(request: Request, file_id: str):
    """The stored signed file (a completion's text, ...)."""
    art, missing = _artifact(request, file_id)
    if missing is not None:
        return missing
    suffix = art.path.suffix.lower()
    if art.kind == "text":
        media_type = "text/plain; charset=utf-8"
    else:
        media_type = MEDIA_TYPES.get(suffix, "application/octet-stream")
    return _send(art.path, media_type, f"{art.id}{suffix}", request.headers.get("range"))


@router.api_route("/v1/files/{file_id}/c2pa", methods=["GET", "HEAD"])
def download_sidecar(request: Request, file_id: str):
    """The stored file's ``.c2pa`` manifest (404 when its manifest is embedded instead)."""
    art, missing = _artifact(request, file_id)
    if missing is not None:
        return missing
    if art.sidecar is None:
        return api_error(404, f"file {file_id!r} has no sidecar (its manifest is embedded)",
                         param="id", code="no_sidecar")  # fmt: skip
    name = f"{art.id}{art.path.suffix.lower()}.c2pa"
    return _send(art.sidecar, "application/c2pa", name, request.headers.get("range"))
