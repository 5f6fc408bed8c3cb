"""Ollama's generate route for editor plugins that speak it: ``POST /api/generate`` with
``prompt`` and ``suffix`` (fill-in-the-middle), ``options`` (``num_predict``, ``temperature``,
``top_p``, ``seed``, ``stop``) and ``stream`` (default true, as in Ollama: newline-delimited
JSON objects ``{"model", "created_at", "response": delta, "done": false}``, then one with
``"done": true``); ``GET /api/tags`` (and ``/api/ps``) lists the text model, ``POST
/api/show`` describes it (plugins such as Continue ask it for the capabilities), ``GET
/api/version`` answers mdiff's version. A generate request with neither prompt nor suffix
loads the model and answers ``{"response": "", "done": true, "done_reason": "load"}`` at once
(how Ollama clients preload); errors are Ollama's ``{"error": message}``, streamed or not. The
same batcher, bounds, seeds and provenance as ``/v1/completions`` (`mdiff.serve.text_api`): the
last object's ``mdiff`` field holds the record and the signed file's id.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from mdiff.errors import InvalidInputError
from mdiff.serve.app import client_shaped, read_json
from mdiff.serve.text_api import (
    _events,
    _fail,
    _prompt_tokens,
    _results,
    _save,
    _served_name,
    _submit,
    text_service,
)
from mdiff.serve.text_requests import parse_completion

__all__ = ["router"]

router = APIRouter()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_generate(body, limits):
    """Ollama's body → a `TextRequest` (through `parse_completion`'s checks)."""
    if not isinstance(body, dict):
        raise InvalidInputError("the body must be a JSON object")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidInputError("'options' must be an object")
    for key in ("prompt", "suffix"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise InvalidInputError(f"'{key}' must be a string, got {type(body[key]).__name__}")
    if body.get("format") not in (None, ""):
        raise InvalidInputError("'format' (structured output) is not supported for code infill")
    stream = body.get("stream")
    flat = {"prompt": body.get("prompt") or "", "suffix": body.get("suffix"),
            "stream": True if stream is None else stream,
            "max_tokens": options.get("num_predict"),
            **{k: options.get(k) for k in ("temperature", "top_p", "seed", "stop")}}  # fmt: skip
    n = flat["max_tokens"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n == 0):
        raise InvalidInputError(
            f"'options.num_predict' must be a positive integer or -1, got {n!r}"[:300]
        )
    if n is not None and n < 0:  # Ollama: -1 = no limit
        flat["max_tokens"] = None
    if n is not None and n > limits.max_tokens:
        raise InvalidInputError(
            f"'options.num_predict' must be at most {limits.max_tokens} (or -1), got {n}"
        )
    return parse_completion(flat, limits)


DETAILS = {"family": "mdiff", "format": "safetensors"}


@router.get("/api/tags")
@router.get("/api/ps")
async def tags(request: Request):
    name = request.app.state.config.text_name
    return {"models": [{"name": name, "model": name, "modified_at": _now(), "size": 0,
                        "details": DETAILS}]}  # fmt: skip


@router.get("/api/version")
async def version():
    from mdiff import __version__

    return {"version": __version__}


@router.post("/api/show")
async def show(request: Request):
    cfg = request.app.state.config
    body = await read_json(request)
    asked = body.get("model") or body.get("name") if isinstance(body, dict) else None
    if asked is None:
        return JSONResponse({"error": f"'model' is required; this server has "
                                      f"{cfg.text_name!r}"}, status_code=400)  # fmt: skip
    if not isinstance(asked, str) or not cfg.names_text(asked):
        why = f"model {asked!r} not found; this server has {cfg.text_name!r}"
        return JSONResponse({"error": why}, status_code=404)
    return {"modelfile": "", "parameters": "", "template": "", "details": DETAILS,
            "model_info": {"general.architecture": "mdiff"},
            "capabilities": ["completion", "insert"]}  # fmt: skip


def _loading(body) -> bool:
    """Ollama's "load the model" request: no prompt and no suffix (answered at once)."""
    return isinstance(body, dict) and all(body.get(k) in (None, "") for k in ("prompt", "suffix"))


async def _load_answer(request: Request, body: dict):
    """Ollama's answer to a load request, once the text model is loaded."""
    model = _served_name(request, body)
    if isinstance(model, JSONResponse):
        return client_shaped(request, model)
    await asyncio.to_thread(text_service, request.app)
    done = {"model": model, "created_at": _now(), "response": "", "done": True,
            "done_reason": "load"}  # fmt: skip
    if body.get("stream") is False:
        return done
    return StreamingResponse(iter([json.dumps(done) + "\n"]), media_type="application/x-ndjson")


@router.post("/api/generate")
async def generate(request: Request):
    start = time.perf_counter_ns()
    body = await read_json(request)
    if _loading(body):
        return await _load_answer(request, body)
    admitted = await _submit(request, parse_generate, body)
    if isinstance(admitted, JSONResponse):
        return client_shaped(request, admitted)
    model, req, batcher, jobs, queue = admitted

    def last(done, rest, extra) -> dict:
        took = time.perf_counter_ns() - start
        return {"model": model, "created_at": _now(), "response": rest, "done": True,
                "done_reason": done.finish_reason, "total_duration": took,
                "load_duration": 0, "prompt_eval_count": _prompt_tokens(batcher, req, [done]),
                "eval_count": batcher.cm.count_tokens(done.middles[0]), "eval_duration": took,
                "mdiff": {**extra, "seed": req.seed}}  # fmt: skip

    if queue is not None:

        def chunk(i, delta, draft):
            return {"model": model, "created_at": _now(), "response": delta, "done": False}

        def final(i, done, rest, extra):
            return last(done, rest, extra)

        def ndjson(payload) -> str:
            return json.dumps(payload, ensure_ascii=False) + "\n"

        def failed(error: dict) -> dict:  # Ollama's shape: {"error": message}
            return {"error": error.get("message", "generation failed")}

        return StreamingResponse(_events(request, req, jobs, queue, chunk, final, ndjson,
                                         failed), media_type="application/x-ndjson")  # fmt: skip
    try:
        (done,) = await _results(request, jobs)
    except Exception as e:  # noqa: BLE001 — the job's own error, in Ollama's shape
        return client_shaped(request, _fail(e))
    extra = await asyncio.to_thread(_save, request.app, done, model)
    return last(done, done.middles[0], extra)
