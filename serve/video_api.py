"""Video routes of `mdiff serve`: live fragmented MP4 over HTTP and WebSocket, signed files.

``POST /v1/videos`` (JSON: ``prompt``; optional ``frames``, ``size`` "WxH" or ``width`` /
``height``, ``seed``, ``guidance``, ``steps``, ``image`` (base64 or a data URL: image-to-video),
``model``) answers ``video/mp4`` with the live fMP4 as it is generated, one HTTP chunk per
finished box group (init segment, then a moof+mdat per fragment), every frame watermarked. The
generation's id is in the ``X-Mdiff-Id`` header. ``GET /v1/videos/{id}`` answers 202 (JSON
status) while it runs, then the finished C2PA-signed MP4 (``X-Mdiff-Status: completed`` or
``interrupted``): a client that disconnects stops its generation within one solver step, and
the file then holds the finished chunks, signed with ``extra["interrupted"] = True``.

``WS /v1/realtime/video`` for MSE players: the client sends ``{"type": "start", ...}`` (the
fields above), the server answers ``{"type": "started", "id"}``, binary fMP4 segments (the init
segment first), then ``{"type": "done", "id", "frames", "interrupted"}``; ``{"type": "stop"}``
ends the generation early (finalized and signed). A bad request gets ``{"type": "error",
"error": {...}}``. Up to ``Limits.max_running_videos`` generations run at once, their chunks
interleaved on the compute thread (`mdiff.serve.compute`; each stream's frames are bitwise
those it makes alone); ``Limits.queue_size`` more may wait, beyond that 429 + ``Retry-After``.
Each stream's writer (encoding, signing) runs in its own thread. `finalize_all()` stops
every live generation and waits until its file is signed (the app's shutdown calls it).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from mdiff.errors import InvalidInputError, MdiffError
from mdiff.serve import compute
from mdiff.serve.app import api_error, read_json
from mdiff.serve.video_requests import parse_request

__all__ = ["VideoJob", "VideoService", "finalize_all", "router", "service"]

router = APIRouter()
RETRY_AFTER = "5"  # seconds, for 429
MAX_FINISHED = 256  # finished videos kept for GET /v1/videos/{id}; older ones are deleted
_SERVICES: weakref.WeakSet = weakref.WeakSet()


class _Stopped(Exception):
    """Raised in the solver callback when the generation's client went away or said stop."""


@dataclass
class VideoJob:
    """One generation: its file, the stop flag and what became of it."""

    id: str
    path: Path
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    status: str = "queued"  # queued | in_progress | completed | interrupted | failed
    error: str | None = None
    frames: int = 0
    seed: int = 0

    def check(self, _progress) -> None:
        """The solver callback: stop at the next step once asked to."""
        if self.stop.is_set():
            raise _Stopped(self.id)


class VideoService:
    """The generations of one app: admission (``max_running_videos`` running + `queue_size`
    waiting), the worker threads and the folder of their files (``<home>/serve-videos`` or a
    temp folder)."""

    def __init__(self, models, limits, home: str | None = None):
        self.models, self.limits = models, limits
        root = Path(home) / "serve-videos" if home else Path(tempfile.mkdtemp(prefix="mdiff-"))
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.jobs: dict[str, VideoJob] = {}
        self._lock = threading.Lock()
        # streams run at once up to max_running_videos, interleaved chunk by chunk on the
        # compute thread (bitwise the frames each gives alone); the rest wait their turn
        self._running = threading.BoundedSemaphore(limits.max_running_videos)
        self._threads: dict[str, threading.Thread] = {}
        _SERVICES.add(self)

    def _prune(self) -> None:
        """Forget the oldest finished jobs (and delete their files) beyond `MAX_FINISHED`,
        so a long-running server's memory and disk stay bounded. Caller holds the lock."""
        done = [j for j in self.jobs.values() if j.done.is_set()]  # insertion order: oldest first
        for job in done[: max(len(done) - MAX_FINISHED, 0)]:
            del self.jobs[job.id]
            self._threads.pop(job.id, None)
            job.path.unlink(missing_ok=True)

    def live(self) -> int:
        return sum(not j.done.is_set() for j in self.jobs.values())

    def snapshot(self) -> list[VideoJob]:
        """The jobs now known, safe to read while requests add and prune them."""
        with self._lock:
            return list(self.jobs.values())

    def start(self, body: dict) -> VideoJob:
        """Check `body`, admit it (or 429) and start its generation in a worker thread."""
        cfg = self.models.config
        kwargs = parse_request(body, self.limits, cfg.video_model, cfg.video_name)
        with self._lock:
            if self.live() >= self.limits.max_running_videos + self.limits.queue_size:
                raise _Busy()
            job_id = uuid.uuid4().hex
            job = VideoJob(job_id, self.root / f"{job_id}.mp4", seed=kwargs["seed"])
            self._prune()
            self.jobs[job.id] = job
        try:
            pipe = self.models.video()
            chunks = compute.call(pipe.stream, callback=job.check, **kwargs)  # checks inputs: 400
        except BaseException:
            with self._lock:
                del self.jobs[job.id]
            raise
        thread = threading.Thread(target=self._run, args=(job, pipe, chunks), daemon=True,
                                  name=f"mdiff-video-{job.id[:8]}")  # fmt: skip
        self._threads[job.id] = thread
        thread.start()
        return job

    def _run(self, job: VideoJob, pipe, chunks) -> None:
        from mdiff.video.pipeline.stream import write_live

        try:
            with self._running:
                job.status = "in_progress"
                if job.stop.is_set():
                    raise _Stopped(job.id)
                summary = write_live(job.path, compute.iterate(chunks), pipe.stamper,
                                     fps=pipe.settings.fps)  # fmt: skip
            job.frames, job.status = summary.frames, "completed"
        except _Stopped:
            job.status = "interrupted" if job.path.exists() else "failed"
            job.error = None if job.path.exists() else "stopped before any frame was made"
        except (MdiffError, OSError) as exc:
            job.status, job.error = "failed", str(exc)
        finally:
            if job.status == "interrupted":
                from mdiff.video.io import count_frames

                job.frames = count_frames(job.path, partial=True)
            job.done.set()

    def finalize(self, timeout: float = 60.0) -> list[VideoJob]:
        """Stop every live generation and wait until its file is finalized and signed."""
        for job in self.snapshot():
            job.stop.set()
        for thread in list(self._threads.values()):
            thread.join(timeout)
        return self.snapshot()


class _Busy(Exception):
    pass


def finalize_all(timeout: float = 60.0) -> list[VideoJob]:
    """Finalize and sign every live stream of every app (SIGTERM / shutdown)."""
    return [job for s in list(_SERVICES) for job in s.finalize(timeout)]


def service(app) -> VideoService:
    """The app's `VideoService`, made on first use."""
    state = app.state
    with _APP_LOCK:
        if getattr(state, "videos", None) is None:
            cfg = state.config
            state.videos = VideoService(state.models, cfg.limits, cfg.home)
        return state.videos


_APP_LOCK = threading.Lock()


# ---------------------------------------------------------------- fMP4 tailing


class BoxSplitter:
    """Bytes of a growing MP4 → whole top-level box groups: the init segment (everything
    up to and with ``moov``), then one ``moof`` + ``mdat`` (with any boxes before it) each, and
    the closing ``mfra`` index alone."""

    def __init__(self):
        self.buffer, self.pending, self.init_sent = bytearray(), bytearray(), False

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out = []
        while len(self.buffer) >= 8:
            size = int.from_bytes(self.buffer[:4], "big")
            kind = bytes(self.buffer[4:8])
            if size == 1 and len(self.buffer) >= 16:
                size = int.from_bytes(self.buffer[8:16], "big")
            if size < 8 or len(self.buffer) < size:
                break
            self.pending += self.buffer[:size]
            del self.buffer[:size]
            if kind in (b"moov", b"mdat", b"mfra"):
                out.append(bytes(self.pending))
                self.pending.clear()
        return out

    def rest(self) -> bytes:
        return bytes(self.pending + self.buffer)


async def tail(job: VideoJob, poll: float = 0.02):
    """Yield the box groups of `job`'s file as they are written, until it is finished."""
    splitter, f = BoxSplitter(), None
    try:
        while True:
            if f is None and job.path.exists():
                f = open(job.path, "rb")  # noqa: SIM115 (kept open: signing replaces the path)
            data = f.read(1 << 16) if f is not None else b""
            if data:
                for group in splitter.feed(data):
                    yield group
                continue
            if job.done.is_set() and (f is not None or not job.path.exists()):
                break
            await asyncio.sleep(poll)
        if splitter.rest():
            yield splitter.rest()
    finally:
        if f is not None:
            f.close()


# ---------------------------------------------------------------- routes


def _start(app, body) -> VideoJob | JSONResponse:
    try:
        return service(app).start(body)
    except _Busy:
        return api_error(429, "too many video generations waiting; retry later",
                         "rate_limit_error", code="queue_full",
                         headers={"Retry-After": RETRY_AFTER})  # fmt: skip


@router.post("/v1/videos")
async def create_video(request: Request):
    """Start a generation and answer with its live fMP4 (id in ``X-Mdiff-Id``). The body is
    read as the text routes read theirs: bounded (413), uncompressed (415), JSON (400)."""
    body = await read_json(request)
    job = await asyncio.to_thread(_start, request.app, body)
    if isinstance(job, JSONResponse):
        return job

    async def stream():
        try:
            async for group in tail(job):
                yield group
        finally:  # the client went away (or the stream ended): stop at the next step
            job.stop.set()

    headers = {"X-Mdiff-Id": job.id, "X-Mdiff-Seed": str(job.seed), "Cache-Control": "no-store"}
    return StreamingResponse(stream(), media_type="video/mp4", headers=headers)


@router.api_route("/v1/videos/{video_id}", methods=["GET", "HEAD"])  # Range: 206
def get_video(request: Request, video_id: str):
    """The signed MP4 once finished (completed or interrupted); 202 + status before."""
    job = service(request.app).jobs.get(video_id)
    if job is None:
        return api_error(404, f"no video {video_id!r}", code="not_found")
    status = {"id": job.id, "object": "video", "status": job.status, "error": job.error}
    if not job.done.is_set():
        return JSONResponse(status, status_code=202, headers={"Retry-After": "1"})
    if job.status == "failed":
        return api_error(410, job.error or "the generation failed", "server_error",
                         code="generation_failed")  # fmt: skip
    headers = {"X-Mdiff-Id": job.id, "X-Mdiff-Status": job.status,
               "X-Mdiff-Frames": str(job.frames)}  # fmt: skip
    return FileResponse(job.path, media_type="video/mp4", headers=headers,
                        filename=f"{job.id}.mp4")  # fmt: skip


def _error_message(exc: BaseException) -> dict:
    return {"type": "error", "error": {"message": str(exc), "type": "invalid_request_error"}}


async def _message(ws: WebSocket):
    """The next JSON message; `InvalidInputError` for a frame that is none (binary, not JSON),
    which the session answers with an error message and outlives."""
    got = await ws.receive()
    if got["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(got.get("code", 1000))
    if got.get("text") is None:
        raise InvalidInputError("send JSON text messages ({'type': 'start', ...}), not binary")
    try:
        return json.loads(got["text"])
    except ValueError:
        raise InvalidInputError("the message is not valid JSON") from None


@router.websocket("/v1/realtime/video")
async def realtime_video(ws: WebSocket):
    """start → started, init segment, segments, done; stop ends early (signed)."""
    await ws.accept()
    try:
        while True:
            try:
                message = await _message(ws)
            except InvalidInputError as exc:
                await ws.send_json(_error_message(exc))
                continue
            if not isinstance(message, dict) or message.get("type") != "start":
                await ws.send_json(_error_message(InvalidInputError("send {'type': 'start'}")))
                continue
            try:
                job = await asyncio.to_thread(_start, ws.app, message)
            except MdiffError as exc:
                await ws.send_json(_error_message(exc))
                continue
            if isinstance(job, JSONResponse):
                busy = {"message": "queue full", "type": "rate_limit_error",
                        "retry_after": RETRY_AFTER}  # fmt: skip
                await ws.send_json({"type": "error", "error": busy})
                continue
            await _session(ws, job)
    except (WebSocketDisconnect, RuntimeError):  # closed by the client
        return


async def _session(ws: WebSocket, job: VideoJob) -> None:
    await ws.send_json({"type": "started", "id": job.id, "seed": job.seed})

    async def listen():
        try:
            while True:
                try:
                    message = await _message(ws)
                except InvalidInputError as exc:  # a bad frame: said, and the session goes on
                    await ws.send_json(_error_message(exc))
                    continue
                kind = message.get("type") if isinstance(message, dict) else None
                if kind == "stop":
                    job.stop.set()
                elif kind == "start":
                    busy = f"video {job.id} is streaming on this socket: send stop first"
                    await ws.send_json(_error_message(InvalidInputError(busy)))
        except (WebSocketDisconnect, RuntimeError):
            job.stop.set()

    listener = asyncio.create_task(listen())
    try:
        async for group in tail(job):
            await ws.send_bytes(group)
        await asyncio.to_thread(job.done.wait)
        done = {"type": "done", "id": job.id, "status": job.status, "frames": job.frames,
                "interrupted": job.status != "completed"}  # fmt: skip
        await ws.send_json(done)
    finally:
        job.stop.set()
        listener.cancel()
