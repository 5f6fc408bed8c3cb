"""`mdiff serve`: run the HTTP server (`mdiff.serve.create_app`) under uvicorn."""

from __future__ import annotations

import argparse

__all__ = ["register", "run_serve"]


def register(commands) -> None:
    commands.add("serve", "HTTP server: OpenAI-compatible FIM completions, live video, verify, "
                 "a web page", run_serve, _arguments)  # fmt: skip


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--video-model", default="shapes-t2v", help="a built-in name or a folder")
    p.add_argument("--text-model", default="code-tiny-block", help="a built-in name or a folder")
    p.add_argument("--trust-remote-code", action="store_true", help="let a --text-model folder "
                   "whose model is code in the folder (LLaDA 2) run that code")  # fmt: skip
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    p.add_argument("--queue-size", type=int, default=32,
                   help="requests that may wait per model before 429 (default 32)")  # fmt: skip
    p.add_argument("--max-tokens", type=int, default=512, help="bound on a completion's tokens")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a browser origin (e.g. http://localhost:3000, or '*') that may call "
                   "the API from its own pages; repeatable (default: none: only the served "
                   "page)")  # fmt: skip
    p.add_argument("--no-preload", action="store_true", help="load each model at its first "
                   "request (default: load and warm both in the background at start)")  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mdiff import hub
    from mdiff.errors import CheckpointError, InvalidInputError
    from mdiff.serve.app import ServeConfig, create_app
    from mdiff.serve.limits import Limits

    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port must be in 1..65535, got {args.port}")
    if args.queue_size < 1 or args.max_tokens < 1:
        raise InvalidInputError("--queue-size and --max-tokens must be positive")
    limits = Limits(queue_size=args.queue_size, max_tokens=args.max_tokens)
    config = ServeConfig(host=args.host, port=args.port, video_model=args.video_model,
                         text_model=args.text_model, api_key=args.api_key,
                         trust_remote_code=args.trust_remote_code, preload=not args.no_preload,
                         limits=limits, home=getattr(args, "home", None),
                         cors_origins=tuple(args.cors_origin))  # fmt: skip
    for flag, name in (("--text-model", args.text_model), ("--video-model", args.video_model)):
        try:
            hub.resolve(name)  # a typo is told before the server starts
        except CheckpointError as e:
            raise CheckpointError(f"{flag}: {e}") from None
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level="info"))  # fmt: skip
    app.state.models.on_failure = lambda: setattr(server, "should_exit", True)
    server.run()
    if app.state.models.failure is not None:  # a model that cannot run: stop, as llama.cpp does
        raise CheckpointError(f"cannot serve: {app.state.models.failure}")
    return 0
