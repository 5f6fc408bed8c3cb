"""Text routes of `mdiff serve`: OpenAI-compatible completions with ``suffix`` (FIM), llama.cpp's
``/infill``, and the model list.

``GET /v1/models`` lists the served models (OpenAI's list shape). ``POST /v1/completions``
answers OpenAI's ``text_completion`` object; with ``"stream": true`` it sends server-sent
events in OpenAI's chunk format (``data: {...}`` per chunk, then ``data: [DONE]``): each chunk's
``text`` is committed text only (tokens the sampler finalised, never retracted); with the
extension ``"drafts": true`` a chunk may also carry ``mdiff_draft``, the hole's current draft.
``POST /infill`` takes llama.cpp's fields and answers its shape (``content``, ``stop``, …;
streamed as ``data: {"content": delta, "stop": false}`` events).

Provenance: every choice is saved signed in the artifact store (`mdiff.serve.store`); its
``mdiff`` field gives the record, the ``file_id`` and the URLs of the signed text and its
``.c2pa`` sidecar (``GET /v1/files/{id}``, ``/v1/files/{id}/c2pa``). The text is the whole file
the model completed (prefix + middle + suffix), so ``mdiff verify`` checks the middle's span.

Requests go through one `mdiff.serve.batching.Batcher` per app: concurrent requests are merged
into sampler batches without changing any answer; a full queue gives 429 + ``Retry-After``; a
client that disconnects cancels its choices (the batch stops at its next step).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from mdiff.errors import InvalidInputError
from mdiff.serve.app import api_error, read_json
from mdiff.serve.batching import Batcher, QueueFull
from mdiff.serve.store import artifact_store
from mdiff.serve.text_requests import TextRequest, parse_completion, parse_infill
from mdiff.text.fim.infilling import window as fim_window

__all__ = ["router", "text_service"]

router = APIRouter()
_LOCK = threading.Lock()


def text_service(app) -> Batcher:
    """The app's batcher over its text model (loads the model on first use)."""
    with _LOCK:
        if getattr(app.state, "batcher", None) is None:
            limits = app.state.config.limits
            app.state.batcher = Batcher(app.state.models.text(), queue_size=limits.queue_size)
        return app.state.batcher


def _model_id(request: Request, body) -> str:
    cfg = request.app.state.config
    asked = body.get("model") if isinstance(body, dict) else None
    if asked is not None and not isinstance(asked, str):
        raise InvalidInputError(f"model must be a string, got {type(asked).__name__}")
    if asked not in (None, "") and not cfg.names_text(asked):
        raise LookupError(asked)
    return cfg.text_name


def _models(cfg) -> list[dict]:
    return [{"id": name, "object": "model", "created": 0, "owned_by": "mdiff", "kind": kind}
            for name, kind in ((cfg.text_name, "text"), (cfg.video_name, "video"))]  # fmt: skip


@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": _models(request.app.state.config)}


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, model_id: str):
    for m in _models(request.app.state.config):
        if m["id"] == model_id:
            return m
    return api_error(404, f"the model '{model_id}' is not served here", param="model",
                     code="model_not_found")  # fmt: skip


def _save(app, done, model: str) -> dict:
    """Sign ``done`` into the store; the ``mdiff`` field of its choice."""
    store = artifact_store(app)
    path = done.save(store.new_path(".txt"))
    from mdiff.provenance.sign import sidecar_path

    aid = store.put("text", path, sidecar=sidecar_path(path), meta={"model": model})
    return {"file_id": aid, "file_url": f"/v1/files/{aid}", "c2pa_url": f"/v1/files/{aid}/c2pa",
            "record": done.stamped.record.to_dict()}  # fmt: skip


def _prompt_tokens(batcher: Batcher, req: TextRequest, dones) -> int:
    """The prompt tokens the model reads: prefix and suffix, cut to the room a middle of the
    prompt's leaves in its window (`infilling.fit_context`, the longest of its choices' room).
    ``dones``: each choice's `Completion` in answer order (None: none was made)."""
    cm = batcher.cm
    window = fim_window(cm.model, cm.context)
    total = 0
    for i, (p, s) in enumerate(req.prompts):
        mine = [d for d in dones[i * req.n : (i + 1) * req.n] if d is not None]
        n = min((d.length for d in mine), default=0)
        total += min(len(cm.tokenizer.encode(p)) + cm.count_tokens(s), window - n)
    return total


_READ = object()  # `_submit`: read the body from the request


def _served_name(request: Request, body) -> JSONResponse | str:
    """The text model's served name, or the 404 for a ``model`` this server does not have."""
    try:
        return _model_id(request, body)
    except LookupError as e:
        cfg, asked = request.app.state.config, e.args[0]
        why = f"the model '{asked}' is not served here"
        if asked in (cfg.video_model, cfg.video_name):
            why = f"'{asked}' makes video (POST /v1/videos); text is '{cfg.text_name}'"
        return api_error(404, f"{why} (GET /v1/models)", param="model", code="model_not_found")


async def _submit(request: Request, parse, body=_READ):
    """Parse, admit (or an error response) and queue one request (``body``: already read)."""
    body = await read_json(request) if body is _READ else body
    model = _served_name(request, body)
    if isinstance(model, JSONResponse):
        return model
    req = parse(body, request.app.state.config.limits)
    req.model_id = model
    batcher = getattr(request.app.state, "batcher", None)  # loaded: no hop to a thread
    batcher = batcher or await asyncio.to_thread(text_service, request.app)
    jobs = req.jobs()
    if req.stream:
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        for i, j in enumerate(jobs):
            j.on_text = _pusher(loop, queue, i, req.drafts)
    try:
        if jobs:
            batcher.submit(jobs)
    except QueueFull as e:
        return api_error(429, "too many text requests waiting; retry later", "rate_limit_error",
                         code="rate_limit_exceeded",
                         headers={"Retry-After": str(e.retry_after)})  # fmt: skip
    return model, req, batcher, jobs, (queue if req.stream else None)


def _pusher(loop, queue, index: int, drafts: bool):
    def push(delta: str, draft: str | None) -> None:
        if delta or (drafts and draft is not None):
            loop.call_soon_threadsafe(queue.put_nowait, (index, delta, draft if drafts else None))

    return push


def _cancel(jobs) -> None:
    for j in jobs:
        j.cancel.set()


class ClientGone(Exception):
    """The client closed the connection before its answer (its jobs are cancelled)."""


def _seen(fut) -> None:
    if not fut.cancelled():
        fut.exception()  # a cancelled job's error is expected: not "never retrieved"


def _waiting(jobs) -> list:
    """The jobs' futures as asyncio futures."""
    out = [asyncio.wrap_future(j.future) for j in jobs]
    for w in out:
        w.add_done_callback(_seen)
    return out


async def _results(request: Request, jobs) -> list:
    """Every job's `Completion`; `ClientGone` (its jobs cancelled) if the client goes away.
    Nothing polls: the wait ends at the last answer or at the server's disconnect message."""
    waiting = _waiting(jobs)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        pending = set(waiting)
        while pending:
            done, pending = await asyncio.wait({*pending, gone},
                                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if gone in done:
                raise ClientGone()
            pending.discard(gone)
        return [w.result() for w in waiting]
    except BaseException:
        _cancel(jobs)
        raise
    finally:
        gone.cancel()


async def _disconnect(request: Request) -> None:
    """Returns when the client has gone: the body is read, so the next ASGI message is the
    disconnect (the server sends it when the connection closes); a receive channel that
    fails counts as gone."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # noqa: BLE001 — nothing more can come from this client
        return


def _fail(exc: BaseException):
    if isinstance(exc, ClientGone):  # nobody reads it (nginx's code for a client gone)
        return Response(status_code=499)
    if isinstance(exc, InvalidInputError):
        return api_error(400, str(exc))
    return api_error(500, f"generation failed: {exc}", "server_error")


def _choice_text(req: TextRequest, prompt: str, middle: str) -> str:
    return prompt + middle if req.echo else middle


@router.post("/v1/completions")
async def completions(request: Request):
    admitted = await _submit(request, parse_completion)
    if isinstance(admitted, JSONResponse):
        return admitted
    model, req, batcher, jobs, queue = admitted
    cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    head = {"id": cid, "object": "text_completion", "created": created, "model": model}
    if queue is not None:
        return StreamingResponse(_openai_events(request, head, req, batcher, jobs, queue),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip
    answered = await _answered(request, jobs, model)
    if isinstance(answered, Response):
        return answered
    pairs = enumerate(zip(jobs, answered, strict=True))
    choices = [{"text": _choice_text(req, job.prefix, done.middles[0]), "index": i,
                "logprobs": None, "finish_reason": done.finish_reason, "mdiff": extra}
               for i, (job, (done, extra)) in pairs]  # fmt: skip
    usage = _usage(batcher, req, [done for done, _ in answered])
    body = {**head, "choices": choices, "usage": usage, "mdiff": {"seed": req.seed}}
    return JSONResponse(body)  # JSON types already: no walk through FastAPI's encoder


async def _answered(request: Request, jobs, model: str):
    """``[(Completion, its mdiff field)]`` of every job, each signed into the store; or the
    error response (the job's own error, or the client gone)."""
    try:
        results = await _results(request, jobs)
    except Exception as e:  # noqa: BLE001 — the job's own error, in OpenAI's shape
        return _fail(e)
    return [(done, await asyncio.to_thread(_save, request.app, done, model)) for done in results]


def _usage(batcher: Batcher, req: TextRequest, dones) -> dict:
    """OpenAI's ``usage``: prompt (prompt and suffix, as read) and generated tokens (an echo
    is none); ``dones``: each choice's `Completion` (None: none was made)."""
    completion = sum(batcher.cm.count_tokens(d.middles[0]) for d in dones if d is not None)
    prompt = _prompt_tokens(batcher, req, dones)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def _sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error_event(error: dict) -> dict:
    """A failed choice's event: OpenAI's ``{"error": {"message", "type", ...}}``."""
    return {"error": error}


async def _events(request: Request, req, jobs, queue, chunk, final, frame=_sse,
                  failed=_error_event):  # fmt: skip
    """Stream lines (``frame(payload)``, default SSE): ``chunk(index, delta, draft)`` per
    streamed piece, ``final(index, done, rest, extra)`` per finished choice (``rest``:
    committed text not streamed yet; ``extra``: its ``mdiff`` provenance field);
    ``failed(error)`` the event of a choice that failed (``error``: OpenAI's error object)."""
    sent = [""] * len(jobs)
    pending = {w: i for i, w in enumerate(_waiting(jobs))}
    getter = None
    try:
        if req.echo:
            for i, j in enumerate(jobs):
                yield frame(chunk(i, j.prefix, None))
        while pending or not queue.empty():
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait([getter, *pending], return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                i, delta, draft = getter.result()
                sent[i] += delta
                yield frame(chunk(i, delta, draft))
            else:
                getter.cancel()
            for fut in [f for f in done if f in pending]:
                i = pending.pop(fut)
                while not queue.empty():  # this choice's last pieces first
                    k, delta, draft = queue.get_nowait()
                    sent[k] += delta
                    yield frame(chunk(k, delta, draft))
                if fut.exception() is not None:
                    yield frame(failed(json.loads(_fail(fut.exception()).body)["error"]))
                    continue
                done_ = fut.result()
                middle = done_.middles[0]
                rest = middle[len(sent[i]) :] if middle.startswith(sent[i]) else ""
                extra = await asyncio.to_thread(_save, request.app, done_, req.model_id)
                yield frame(final(i, done_, rest, extra))
    finally:
        _cancel(jobs)  # a closed stream stops its generation (no-op once finished)
        if getter is not None:
            getter.cancel()


async def _openai_events(request, head, req, batcher, jobs, queue):
    dones = [None] * len(jobs)
    if req.usage_chunk:  # OpenAI: every chunk has "usage": null, the last one the usage
        head = {**head, "usage": None}

    def chunk(i, delta, draft):
        c = {"text": delta, "index": i, "logprobs": None, "finish_reason": None}
        if draft is not None:
            c["mdiff_draft"] = draft
        return {**head, "choices": [c]}

    def final(i, done, rest, extra):
        dones[i] = done
        c = {"text": rest, "index": i, "logprobs": None, "finish_reason": done.finish_reason,
             "mdiff": extra}  # fmt: skip
        return {**head, "choices": [c]}

    async for line in _events(request, req, jobs, queue, chunk, final):
        yield line
    if req.usage_chunk:
        yield _sse({**head, "choices": [], "usage": _usage(batcher, req, dones)})
    yield "data: [DONE]\n\n"


@router.post("/infill")
async def infill(request: Request):
    admitted = await _submit(request, parse_infill)
    if isinstance(admitted, JSONResponse):
        return admitted
    model, req, batcher, jobs, queue = admitted
    if not jobs:  # n_predict 0 (llama.vim's context warm-up): nothing generated, nothing signed
        body = _infill_body(None, model, batcher, req, None)
        if queue is None:
            return body
        return StreamingResponse(iter([_sse(body)]), media_type="text/event-stream")
    if queue is not None:

        def chunk(i, delta, draft):
            c = {"content": delta, "index": i, "stop": False}
            return {**c, "mdiff_draft": draft} if draft is not None else c

        def final(i, done, rest, extra):
            return {**_infill_body(done, model, batcher, req, extra), "content": rest}

        return StreamingResponse(_events(request, req, jobs, queue, chunk, final),
                                 media_type="text/event-stream")  # fmt: skip
    try:
        (done,) = await _results(request, jobs)
    except Exception as e:  # noqa: BLE001
        return _fail(e)
    extra = await asyncio.to_thread(_save, request.app, done, model)
    return JSONResponse(_infill_body(done, model, batcher, req, extra))


def _infill_body(done, model, batcher, req, extra) -> dict:
    """llama.cpp's answer; ``done`` None: nothing was asked for (n_predict 0)."""
    middle = "" if done is None else done.middles[0]
    word = getattr(done, "stop_word", None)
    stop_type = "limit" if done is None or done.finish_reason == "length" else "eos"
    stop_type = "word" if word is not None else stop_type
    return {"content": middle, "index": 0, "stop": True, "model": model,
            "tokens_predicted": batcher.cm.count_tokens(middle),
            "tokens_evaluated": _prompt_tokens(batcher, req, [done]), "stop_type": stop_type,
            "stopping_word": word or "",
            "generation_settings": {"seed": req.seed, **req.settings}, "mdiff": extra}  # fmt: skip
