"""The FIM route editor plugins call as ``fim/completions`` (Mistral's FIM API; Continue's
OpenAI-compatible provider posts there for fill-in-the-middle): ``POST /v1/fim/completions``.

The body is `mdiff.serve.text_requests.parse_completion`'s (``prompt`` = the text before the
hole, ``suffix``, ``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``stream``, ``n``;
Mistral's ``random_seed`` is ``seed``; ``min_tokens`` is accepted and ignored). The answer has
the chat shape those clients read: ``choices[i].message.content`` (``object``
``"chat.completion"``), or, streamed, server-sent ``chat.completion.chunk`` s whose
``choices[0].delta.content`` is committed text (with ``stream_options.include_usage``, a last
chunk with the usage), then ``data: [DONE]``; ``echo`` is refused (not a FIM field). The same
batcher, seeds, provenance (``mdiff`` field of each choice) and errors as ``/v1/completions``.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from mdiff.errors import InvalidInputError
from mdiff.serve.text_api import _answered, _events, _sse, _submit, _usage
from mdiff.serve.text_requests import parse_completion

__all__ = ["router"]

router = APIRouter()


def parse_fim(body, limits):
    """Mistral's body → a `TextRequest` (through `parse_completion`'s checks)."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "min_tokens"}
        if "random_seed" in body:
            body.setdefault("seed", body.pop("random_seed"))
        if body.get("echo"):
            raise InvalidInputError("'echo' is not part of the FIM API (use /v1/completions)")
    return parse_completion(body, limits)


@router.post("/v1/fim/completions")
async def fim_completions(request: Request):
    admitted = await _submit(request, parse_fim)
    if isinstance(admitted, JSONResponse):
        return admitted
    model, req, batcher, jobs, queue = admitted
    head = {"id": f"fim-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}
    if queue is not None:
        part = {**head, "object": "chat.completion.chunk"}
        dones = [None] * len(jobs)

        def chunk(i, delta, draft):
            c = {"index": i, "delta": {"content": delta}, "finish_reason": None}
            return {**part, "choices": [c if draft is None else {**c, "mdiff_draft": draft}]}

        def final(i, done, rest, extra):
            dones[i] = done
            c = {"index": i, "delta": {"content": rest}, "finish_reason": done.finish_reason,
                 "mdiff": extra}  # fmt: skip
            return {**part, "choices": [c]}

        async def events():
            async for line in _events(request, req, jobs, queue, chunk, final):
                yield line
            if req.usage_chunk:  # the last chunk: no choices, the usage
                yield _sse({**part, "choices": [], "usage": _usage(batcher, req, dones)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip
    answered = await _answered(request, jobs, model)
    if isinstance(answered, Response):
        return answered
    choices = [{"index": i, "message": {"role": "assistant", "content": done.middles[0]},
                "finish_reason": done.finish_reason, "mdiff": extra}
               for i, (done, extra) in enumerate(answered)]  # fmt: skip
    usage = _usage(batcher, req, [done for done, _ in answered])
    return {**head, "object": "chat.completion", "choices": choices, "usage": usage,
            "mdiff": {"seed": req.seed}}  # fmt: skip
