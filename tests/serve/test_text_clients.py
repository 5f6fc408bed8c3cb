"""What editor plugins and other clients send: Continue's ``/v1/fim/completions`` (Mistral's
FIM shape) and its many stop words, llama.vim's ``n_predict: 0`` warm-up and ``seed: -1``,
OpenAI's ``stream_options.include_usage``, CRLF files with ``"\\n"`` stops, bodies that are no
text or too big, a client that gives up (no error in the server's log), byte ranges, the
health check and CORS for another origin."""

from __future__ import annotations

import gc
import json
import logging
import os
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from mdiff.errors import CheckpointError
from mdiff.serve.app import Models, ServeConfig, create_app
from mdiff.serve.text_api import text_service
from mdiff.serve.text_sinks import visible
from tests.serve.server import live_server

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
HOLE = ("def add(a, b):\n    return ", "\n")
CONTINUE_STOPS = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>", "<|endoftext|>",
                  "</fim_middle>", "</code>", "\n\n", "\r\n\r\n", "/src/", "#- coding: utf-8",
                  "```"]  # fmt: skip


def _events(lines) -> list:
    out = []
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


def test_continue_fim_route_streams_delta_content_like_completions(make_app):
    body = {"model": "code-tiny-block", "prompt": HOLE[0], "suffix": HOLE[1], "max_tokens": 8,
            "temperature": 0, "stop": CONTINUE_STOPS, "random_seed": 7}  # fmt: skip
    with TestClient(make_app()) as c:
        plain = c.post("/v1/completions", json={**body, "seed": 7}).json()
        whole = c.post("/v1/fim/completions", json=body)
        streamed = c.post("/v1/fim/completions", json={**body, "stream": True})
    assert whole.status_code == 200, whole.text
    answer = whole.json()
    assert answer["object"] == "chat.completion" and answer["mdiff"]["seed"] == 7
    content = answer["choices"][0]["message"]["content"]
    assert content == plain["choices"][0]["text"]  # the same request as /v1/completions
    assert answer["choices"][0]["mdiff"]["file_id"]  # signed like every answer
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    chunks = _events(streamed.text.splitlines())
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert "".join(ch["choices"][0]["delta"]["content"] for ch in chunks) == content


def test_llama_vim_warm_up_and_random_seed(make_app):
    warm = {"input_prefix": "", "input_suffix": "", "n_predict": 0,
            "input_extra": [{"filename": "a.py", "text": "import os\n"}]}  # fmt: skip
    with TestClient(make_app()) as c:
        r = c.post("/infill", json=warm)
        s = c.post("/infill", json={**warm, "stream": True})
        seeded = c.post("/infill", json={"input_prefix": HOLE[0], "input_suffix": HOLE[1],
                                         "n_predict": 4, "seed": -1})  # fmt: skip
    assert r.status_code == 200 and r.json()["content"] == "" and r.json()["stop"] is True
    assert r.json()["tokens_predicted"] == 0 and r.json()["mdiff"] is None  # nothing signed
    assert s.status_code == 200 and _events(s.text.splitlines())[0]["content"] == ""
    assert seeded.status_code == 200, seeded.text
    assert 0 <= seeded.json()["generation_settings"]["seed"] < 2**31  # -1: a random one


def test_include_usage_ends_the_stream_with_the_usage_and_echo_counts_no_prompt(make_app):
    body = {"prompt": HOLE[0], "suffix": HOLE[1], "max_tokens": 8, "seed": 3, "n": 2,
            "temperature": 0.7}  # fmt: skip
    with TestClient(make_app()) as c:
        whole = c.post("/v1/completions", json=body).json()
        echo = c.post("/v1/completions", json={**body, "echo": True}).json()
        s = c.post("/v1/completions", json={**body, "stream": True,
                                            "stream_options": {"include_usage": True}})  # fmt: skip
    chunks = _events(s.text.splitlines())
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert all(ch["usage"] is None for ch in chunks[:-1])
    assert echo["usage"] == whole["usage"]  # the echoed prompt is no completion
    assert echo["choices"][0]["text"] == HOLE[0] + whole["choices"][0]["text"]


@pytest.mark.parametrize(
    ("text", "stops", "cut", "eol"),
    [("a)\r\nb\r\n\r\nc", ["\n"], "a)", "\r\n"), ("a)\r\nb\r\n\r\nc", ["\n\n"], "a)\r\nb", "\r\n"),
     ("a)\r\nb", ["\r\n"], "a)", "\r\n"), ("x\r\ny", ["y"], "x\r\n", "\r\n"),
     ("os\r\nimport", ["\r"], "os", "\r\n"), ("subprocess\r\nimport", ["ss\r"], "subproce", "\r\n"),
     ("time\rimport time\r", ["\r"], "time", "\r"), ("a\rb\r\rc", ["\n\n"], "a\rb", "\r"),
     ("a\rb\r\rc", ["\r\r"], "a\rb", "\r")],
)  # fmt: skip
def test_stops_in_a_crlf_or_cr_file_match_its_line_breaks(text, stops, cut, eol):
    """A stop's line breaks, as LF, CR or CRLF, are the file's: "\r" in a CR file is its line
    break, and in a CRLF file the start of one."""
    assert visible(text, stops, final=True, eol=eol) == cut
    streamed = visible(text[:-1], stops, final=False, eol=eol)
    assert cut.startswith(streamed) or streamed.startswith(cut)


def test_a_stop_at_a_line_break_of_a_crlf_file_leaves_no_carriage_return(make_app):
    prefix = "def f(a):\r\n    x = a + 1\r\n    "
    body = {"prompt": prefix, "suffix": "\r\n", "length": 24, "temperature": 0.8}
    with TestClient(make_app()) as c:
        for seed in range(6):
            free = c.post("/v1/completions", json={**body, "seed": seed}).json()
            text = free["choices"][0]["text"]
            if "\r\n" in text:
                break
        cut = c.post("/v1/completions", json={**body, "seed": seed, "stop": "\n"}).json()
    assert "\r\n" in text, "no middle with a line break in 6 seeds"
    assert cut["choices"][0]["text"] == text.split("\r\n")[0]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_bodies_too_big_or_too_deep_get_4xx(make_app):
    with TestClient(make_app(limits={"max_body_bytes": 300_000})) as c:
        big = c.post("/v1/completions", content=json.dumps({"prompt": "x" * 400_000}))
        deep = c.post("/v1/completions", content="[" * 100_000 + "]" * 100_000)
        ollama = c.post("/api/generate", json={"prompt": "x", "options": {"num_predict": "ten"}})
        tagged = {"model": "code-tiny-block:latest", "prompt": "x = ", "stream": False,
                  "options": {"num_predict": 2}}  # fmt: skip
        tag = c.post("/api/generate", json=tagged)
        chat = c.post("/api/chat", json={"model": "code-tiny-block", "messages": []})
        wrong = c.post("/api/generate", json={"model": "llama3", "prompt": "x"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    assert deep.status_code == 400 and "nested" in deep.json()["error"]["message"]
    assert ollama.status_code == 400 and "num_predict" in ollama.json()["error"]  # its shape
    assert tag.status_code == 200, tag.text
    assert chat.status_code == 404 and "/api/generate" in chat.json()["error"]
    assert wrong.status_code == 404 and "llama3" in wrong.json()["error"]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = []

    def emit(self, record):
        self.seen.append(f"{record.name}: {record.getMessage()}")


def test_a_client_that_gives_up_leaves_no_error_in_the_log(make_app):
    app, records = make_app(), _Records()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "asyncio")]
    for lg in loggers:
        lg.addHandler(records)
    body = {"prompt": HOLE[0], "suffix": HOLE[1], "length": 64}
    try:
        with live_server(app) as base:
            with pytest.raises(httpx.TimeoutException):
                httpx.post(base + "/v1/completions", json=body, timeout=0.3)
            with httpx.stream("POST", base + "/infill", timeout=60,
                              json={"input_prefix": HOLE[0], "input_suffix": HOLE[1],
                                    "length": 64, "stream": True}) as s:  # fmt: skip
                next(s.iter_lines())
            deadline = time.monotonic() + 30
            while text_service(app).stats["cancelled"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            ok = httpx.post(base + "/v1/completions", json={"prompt": "x = ", "max_tokens": 2})
            gc.collect()  # an unretrieved future's error is logged when it is collected
            time.sleep(0.2)
    finally:
        for lg in loggers:
            lg.removeHandler(records)
    assert text_service(app).stats["cancelled"] >= 2 and ok.status_code == 200
    assert records.seen == []


def test_downloads_answer_byte_ranges(make_app):
    with TestClient(make_app()) as c:
        done = c.post("/v1/completions", json={"prompt": HOLE[0], "max_tokens": 4}).json()
        url = done["choices"][0]["mdiff"]["file_url"]
        whole = c.get(url)
        part = c.get(url, headers={"Range": "bytes=2-5"})
        tail = c.get(url, headers={"Range": "bytes=-3"})
        past = c.get(url, headers={"Range": f"bytes={len(whole.content) + 10}-"})
        odd = c.get(url, headers={"Range": "lines=1-2"})
    assert whole.headers["accept-ranges"] == "bytes"
    assert part.status_code == 206 and part.content == whole.content[2:6]
    assert part.headers["content-range"] == f"bytes 2-5/{len(whole.content)}"
    assert tail.status_code == 206 and tail.content == whole.content[-3:]
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{len(whole.content)}"
    assert odd.status_code == 200 and odd.content == whole.content


def test_health_and_cors_for_an_origin_that_was_allowed(make_app):
    origin = "http://localhost:3000"
    with TestClient(make_app(api_key="k", cors_origins=(origin,))) as c:
        health = c.get("/health")  # open, as llama.cpp's
        ask = {"Origin": origin, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
        pre = c.options("/v1/completions", headers=ask)
        other = c.options("/v1/completions", headers={"Origin": "http://evil.example",
                          "Access-Control-Request-Method": "POST"})  # fmt: skip
        no_key = c.post("/v1/completions", json={"prompt": "x"}, headers={"Origin": origin})
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
    assert "access-control-allow-origin" not in other.headers
    assert no_key.status_code == 401  # CORS opens no door the key keeps shut
    with TestClient(make_app()) as c:  # by default no other origin is let in
        pre = c.options("/v1/completions", headers={"Origin": origin,
                        "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert "access-control-allow-origin" not in pre.headers


def test_the_servers_home_holds_the_keys_it_signs_with(tmp_path, home, monkeypatch):
    import argparse

    import uvicorn

    from mdiff.provenance import keys
    from mdiff.serve.app import Models, ServeConfig
    from mdiff.serve.cli import _arguments, run_serve

    other = tmp_path / "home2"
    keys.init_dev_identity(other)
    assert keys.default_key_id(other) != keys.default_key_id(home)  # $MDIFF_HOME is `home`
    done = Models(ServeConfig(home=str(other))).text().infill("x = ", "\n", 2, seed=0)
    assert done.stamped.record.watermark.key_id == keys.default_key_id(other)
    parser = argparse.ArgumentParser()
    _arguments(parser)
    parser.add_argument("--home")  # mdiff's global flag
    served = {}
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self: served.update(config=self.config.app.state.config)
    )
    run_serve(parser.parse_args(["--home", str(other), "--cors-origin", "http://a.test"]))
    assert served["config"].home == str(other)  # `mdiff serve --home DIR` reaches the models
    assert served["config"].cors_origins == ("http://a.test",)


def _serve_args(*argv):
    import argparse

    from mdiff.serve.cli import _arguments

    parser = argparse.ArgumentParser()
    _arguments(parser)
    parser.add_argument("--home")  # mdiff's global flag
    return parser.parse_args(list(argv))


def test_a_model_that_cannot_load_stops_the_server_in_one_line(tmp_path, home, monkeypatch):
    import uvicorn

    from mdiff.serve.cli import run_serve

    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: started.append(self))
    with pytest.raises(CheckpointError, match="--text-model: no checkpoint directory"):
        run_serve(_serve_args("--text-model", str(tmp_path / "typo")))
    assert not started  # told before the server starts
    empty = tmp_path / "empty"  # there, but no model: found out while preloading
    empty.mkdir()

    def preload(server):  # what the lifespan's preload thread does
        server.config.app.state.models.warm()
        started.append(server.should_exit)

    monkeypatch.setattr(uvicorn.Server, "run", preload)
    with pytest.raises(CheckpointError, match="cannot serve: .*empty"):
        run_serve(_serve_args("--text-model", str(empty), "--home", str(home)))
    assert started == [True]  # the failed preload asked the server to stop
    models = Models(ServeConfig(text_model=str(empty), preload=True))
    models.warm()
    with TestClient(create_app(models.config, models=models)) as c:
        health = c.get("/health")
    assert health.status_code == 500 and health.json()["error"]["code"] == "load_failed"


def test_a_model_folder_is_served_by_its_name_not_its_path(make_app, monkeypatch):
    from mdiff import hub

    folder = hub.builtin("code-tiny-block")
    monkeypatch.chdir(folder.parent.parent)
    relative = f"{folder.parent.name}/{folder.name}"  # as `--text-model checkpoints/code-…`
    with TestClient(make_app(text_model=relative)) as c:
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        body = {"prompt": "x = ", "suffix": "\n", "max_tokens": 2, "seed": 0}
        by_name = c.post("/v1/completions", json={**body, "model": "code-tiny-block"})
        by_path = c.post("/v1/completions", json={**body, "model": relative})
    assert ids[0] == "code-tiny-block"
    assert by_name.status_code == by_path.status_code == 200
    for r in (by_name, by_path):
        answer = r.json()
        assert answer["model"] == "code-tiny-block"
        assert answer["choices"][0]["mdiff"]["record"]["model_id"] == "code-tiny-block"


def test_ollama_plugins_can_ask_what_the_model_is(make_app):
    from mdiff import __version__

    with TestClient(make_app()) as c:
        shown = c.post("/api/show", json={"model": "code-tiny-block:latest"})
        other = c.post("/api/show", json={"name": "llama3"})
        version = c.get("/api/version").json()
        running = c.get("/api/ps").json()
    assert shown.status_code == 200 and "insert" in shown.json()["capabilities"]  # FIM
    assert other.status_code == 404 and "code-tiny-block" in other.json()["error"]
    assert version == {"version": __version__}
    assert [m["name"] for m in running["models"]] == ["code-tiny-block"]


def test_ollama_loads_on_an_empty_request_and_refuses_what_it_would_not_take(make_app):
    with TestClient(make_app()) as c:
        t = time.perf_counter()
        load = c.post("/api/generate", json={"model": "code-tiny-block", "keep_alive": "5m"})
        quick = time.perf_counter() - t
        plain = c.post("/api/generate", json={"model": "code-tiny-block", "prompt": "",
                                              "stream": False})  # fmt: skip
        listed = c.post("/api/generate", json={"prompt": ["a = ", "b = "], "stream": False})
        zero = c.post("/api/generate", json={"prompt": "x", "options": {"num_predict": 0}})
        null = c.post("/api/generate", json={"prompt": "x = ", "stream": None,
                                             "options": {"num_predict": 2}})  # fmt: skip
    lines = [json.loads(x) for x in load.text.splitlines() if x]
    assert load.status_code == 200 and load.headers["content-type"].startswith("application/x")
    assert [(x["response"], x["done"], x["done_reason"]) for x in lines] == [("", True, "load")]
    assert quick < 5 and plain.json()["done_reason"] == "load"
    assert listed.status_code == 400 and "'prompt' must be a string" in listed.json()["error"]
    assert zero.status_code == 400 and "num_predict" in zero.json()["error"]
    assert null.headers["content-type"].startswith("application/x-ndjson")  # Ollama streams


def test_a_choice_that_fails_mid_stream_says_so_in_the_clients_own_shape(make_app, monkeypatch):
    from mdiff.errors import MdiffError
    from mdiff.serve import batch_answers

    def broken(*a, **k):
        raise MdiffError("the answer could not be made")

    monkeypatch.setattr(batch_answers, "answer", broken)
    with TestClient(make_app()) as c:
        ollama = c.post("/api/generate", json={"prompt": HOLE[0], "suffix": HOLE[1],
                                               "options": {"num_predict": 4}})  # fmt: skip
        openai = c.post("/v1/completions", json={"prompt": HOLE[0], "suffix": HOLE[1],
                                                 "max_tokens": 4, "stream": True})  # fmt: skip
    last = json.loads(ollama.text.splitlines()[-1])
    assert list(last) == ["error"] and "could not be made" in last["error"]  # Ollama's shape
    event = _events(openai.text.splitlines())[-1]
    assert "could not be made" in event["error"]["message"] and event["error"]["type"]


@pytest.mark.parametrize("body", [
    {"prompt": "x = ", "max_tokens": 4, "model": ["code-tiny-block"]},
    {"prompt": "x = ", "max_tokens": 4, "model": {"a": 1}},
])  # fmt: skip
def test_a_model_that_is_not_a_string_is_a_400(make_app, body):
    with TestClient(make_app()) as c:
        for path in ("/v1/completions", "/infill"):
            r = c.post(path, json=body)
            assert r.status_code == 400 and "model must be a string" in r.json()["error"]["message"]


def test_a_number_json_cannot_hold_is_not_valid_json(make_app):
    with TestClient(make_app()) as c:
        r = c.post("/v1/completions", content='{"prompt": "x", "max_tokens": ' + "1" * 5000 + "}")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_finish_reasons_and_llama_cpps_stopping_word(make_app):
    hole = {"prompt": HOLE[0], "suffix": HOLE[1], "seed": 3, "temperature": 0}
    with TestClient(make_app()) as c:
        bound = c.post("/v1/completions", json={**hole, "max_tokens": 1}).json()
        free = c.post("/v1/completions", json=hole).json()
        infill = {"input_prefix": HOLE[0], "input_suffix": HOLE[1], "n_predict": 16, "seed": 3}
        whole = c.post("/infill", json=infill).json()
        word = whole["content"][1:3]
        assert len(word) == 2, whole
        cut = c.post("/infill", json={**infill, "stop": [word, "zzz-never"]}).json()
    # the bound decided: only one length was allowed; without a bound the search chose
    assert bound["choices"][0]["finish_reason"] == "length"
    assert free["choices"][0]["finish_reason"] == "stop"
    assert whole["stop_type"] in ("eos", "limit") and whole["stopping_word"] == ""
    assert cut["content"] == whole["content"][: whole["content"].index(word)]
    assert cut["stop_type"] == "word" and cut["stopping_word"] == word


def test_the_fim_route_ends_its_stream_with_the_usage_when_asked_and_refuses_echo(make_app):
    body = {"prompt": HOLE[0], "suffix": HOLE[1], "max_tokens": 8, "seed": 2, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    with TestClient(make_app()) as c:
        streamed = c.post("/v1/fim/completions", json=body)
        whole = c.post("/v1/fim/completions", json={**body, "stream": False}).json()
        echo = c.post("/v1/fim/completions", json={**body, "echo": True})
    chunks = _events(streamed.text.splitlines())
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert all(ch["choices"] for ch in chunks[:-1])
    assert echo.status_code == 400 and "echo" in echo.json()["error"]["message"]


def test_a_compressed_body_is_a_415_and_ollamas_answer_has_its_counts(make_app):
    import gzip

    packed = gzip.compress(json.dumps({"prompt": "x = ", "max_tokens": 2}).encode())
    body = {"prompt": HOLE[0], "suffix": HOLE[1], "stream": False, "options": {"num_predict": 4}}
    with TestClient(make_app()) as c:
        gz = c.post(
            "/v1/completions",
            content=packed,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        done = c.post("/api/generate", json=body).json()
        shaped = c.post("/api/generate", json={**body, "format": "json"})
    assert gz.status_code == 415 and "Content-Encoding gzip" in gz.json()["error"]["message"]
    assert done["prompt_eval_count"] > 0 and done["eval_count"] > 0
    assert done["eval_duration"] > 0 and done["load_duration"] == 0
    assert shaped.status_code == 400 and "'format'" in shaped.json()["error"]


def test_usage_counts_the_prompt_tokens_the_model_reads(make_app, models):
    """A prompt longer than the window is read as far as the middle leaves room for
    (`infilling.fit_context`): window − 16 for a 16-token hole, on every route."""
    window, prompt = models.text().context, "x = 1\n" * 2000
    with TestClient(make_app()) as c:
        long = c.post("/v1/completions", json={"prompt": prompt, "length": 16, "n": 2})
        streamed = c.post(
            "/v1/completions",
            json={
                "prompt": prompt,
                "length": 16,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        infill = c.post("/infill", json={"input_prefix": prompt, "input_suffix": "", "length": 16})
        short = c.post("/v1/completions", json={"prompt": "x = ", "max_tokens": 2})
    assert long.json()["usage"]["prompt_tokens"] == window - 16  # cut to the room it leaves
    last = json.loads([ln for ln in streamed.text.splitlines() if ln.startswith("data: {")][-1][6:])
    assert last["usage"]["prompt_tokens"] == window - 16
    assert infill.json()["tokens_evaluated"] == window - 16
    assert 0 < short.json()["usage"]["prompt_tokens"] < window


def test_errors_name_the_field_the_client_sent(make_app):
    """/infill checks each of its fields before they are put together; Ollama's bound names
    its option; /api/show without a model asks for one."""
    bad = "x \ud83d"
    with TestClient(make_app()) as c:
        got = {
            field: c.post("/infill", content=json.dumps(body),
                          headers={"Content-Type": "application/json"}).json()["error"]["message"]
            for field, body in [("'input_suffix'", {"input_prefix": "a", "input_suffix": bad}),
                                ("'input_extra[1].text'", {"input_prefix": "a", "input_extra": [
                                    {"filename": "a.py", "text": "ok"}, {"text": bad}]}),
                                ("'prompt'", {"input_prefix": "a", "prompt": bad})]
        }  # fmt: skip
        big = c.post("/api/generate", json={"model": "code-tiny-block", "prompt": "x = ",
                                            "options": {"num_predict": 10**6}})  # fmt: skip
        show = c.post("/api/show", json={})
    for field, message in got.items():
        assert message.startswith(f"{field} holds an unpaired surrogate"), (field, message)
    assert big.status_code == 400 and "'options.num_predict' must be at most" in big.json()["error"]
    assert show.status_code == 400 and "'model' is required" in show.json()["error"]
