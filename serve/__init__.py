"""mdiff.serve: the HTTP server (`mdiff serve`) over the video, text and provenance frontends.

    from mdiff.serve import ServeConfig, create_app
    app = create_app(ServeConfig(api_key="secret"))     # an ASGI app (FastAPI)
    # uvicorn.run(app, host="127.0.0.1", port=8000)      # what `mdiff serve` does

Routes: OpenAI-compatible text (`/v1/models`, `/v1/completions` with `suffix`, llama.cpp's
`/infill`) in `text_api`; Mistral's `/v1/fim/completions` in `fim_api`; Ollama's in
`ollama_api`; live fragmented-MP4 video (`/v1/videos`, `WS /v1/realtime/video`) in
`video_api` (request bodies checked in `video_requests`); verification (`/v1/verify`) in
`verify_api`; signed outputs and sidecars by id (`/v1/files/{id}`) in `files_api`; the web
page at `/` from `static/`. Shared pieces: `app` (config, models, auth, errors), `limits`
(bounds, the bounded queue).
"""

from mdiff.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
