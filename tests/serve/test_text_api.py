"""`mdiff serve` text routes: the official `openai` client against a real server, llama.cpp's
``/infill``, SSE streaming, answers equal to the SDK run alone (batched or not), bounds, 429,
disconnects and provenance of every choice."""

from __future__ import annotations

import json
import os
import random
import threading
import time

import httpx
import pytest
import torch

from mdiff.provenance import verify
from mdiff.serve.app import Models, ServeConfig, create_app
from mdiff.serve.batching import Batcher, Job
from mdiff.serve.text_api import text_service
from mdiff.text.fim.infilling import infill
from tests.serve.server import live_server

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
HOLES = [("def add(a, b):\n    return ", "\n"), ("for i in range(", "):\n    print(i)\n"),
         ("import os\n\npath = os.path.", "\n"), ("x = [1, 2, 3]\ny = ", "\nprint(y)\n"),
         ("class Point:\n    def __init__(self, x, y):\n        self.x = ", "\n")]  # fmt: skip


def solo(models, prefix, suffix, max_tokens=16, seed=0, **settings):
    """What the SDK gives for this hole alone: the server's answer must equal it."""
    cands = tuple(c for c in (2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64) if c <= max_tokens)
    return models.text().infill(prefix, suffix, "auto", seed=seed, candidates=cands, **settings)


def test_openai_client_completes_streams_and_lists_models(make_app, models, home, tmp_path):
    import openai

    with live_server(make_app()) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        assert "code-tiny-block" in [m.id for m in client.models.list()]
        assert client.models.retrieve("code-tiny-block").owned_by == "mdiff"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-4")
        prefix, suffix = HOLES[0]
        r = client.completions.create(model="code-tiny-block", prompt=prefix, suffix=suffix,
                                      max_tokens=16, seed=3, n=2)  # fmt: skip
        for j, choice in enumerate(r.choices):
            assert choice.index == j
            assert choice.text == solo(models, prefix, suffix, seed=3 + j).middles[0]
        assert r.usage.completion_tokens > 0 and r.object == "text_completion"
        pieces, finish = [], None
        for chunk in client.completions.create(model="code-tiny-block", prompt=prefix,
                                               suffix=suffix, max_tokens=16, seed=3,
                                               stream=True):  # fmt: skip
            pieces.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        assert "".join(pieces) == r.choices[0].text and finish == r.choices[0].finish_reason
        # the choice's signed file verifies, watermark and all
        extra = r.choices[0].model_extra["mdiff"]
        signed = httpx.get(base + extra["file_url"])
        side = httpx.get(base + extra["c2pa_url"])
        head = httpx.head(base + extra["c2pa_url"])
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(side.content)
    if signed.status_code == 404:  # the download routes live in verify_api
        pytest.skip("GET /v1/files/{id} is not served")
    (tmp_path / "c.txt").write_bytes(signed.content)
    (tmp_path / "c.txt.c2pa").write_bytes(side.content)
    assert signed.content.decode() == prefix + r.choices[0].text + suffix
    report = verify(tmp_path / "c.txt", home=home)
    assert report.manifest.state == "trusted" and report.exit_code == 0, report.format()


def test_llama_cpp_infill_and_its_stream(make_app, models):
    prefix, suffix = HOLES[1]
    body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 8, "seed": 7}
    want = solo(models, prefix, suffix, max_tokens=8, seed=7).middles[0]
    with live_server(make_app()) as base, httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/infill", json=body).json()
        assert r["content"] == want and r["stop"] is True and r["tokens_predicted"] >= 0
        events = []
        with c.stream("POST", "/infill", json={**body, "stream": True}) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == want
    assert events[-1]["stop"] is True and all(not e["stop"] for e in events[:-1])


def test_concurrent_interleaved_requests_equal_their_solo_runs(make_app, models):
    rng = random.Random(0)
    asks = [dict(prompt=p, suffix=s, max_tokens=rng.choice([4, 8, 16]), seed=rng.randrange(99),
                 temperature=rng.choice([0.0, 0.0, 0.8]))
            for p, s in HOLES * 2]  # fmt: skip
    got = [None] * len(asks)
    app = make_app()

    def ask(i, base):
        time.sleep(rng.random() * 0.3)  # arrivals interleave with running batches
        got[i] = httpx.post(base + "/v1/completions", json=asks[i], timeout=120).json()

    with live_server(app) as base:
        threads = [threading.Thread(target=ask, args=(i, base)) for i in range(len(asks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    stats = text_service(app).stats
    assert stats["batches"] < len(asks), stats  # merged (joining: the mid-batch test below)
    for a, r in zip(asks, got, strict=True):
        s = dict(temperature=a["temperature"]) if a["temperature"] else {"temperature": 0.0}
        want = solo(models, a["prompt"], a["suffix"], a["max_tokens"], a["seed"], **s)
        assert r["choices"][0]["text"] == want.middles[0], (a, r)


def test_one_batch_of_many_widths_scores_every_length_as_alone(models):
    """Jobs of several canvas widths in one batch (long and short contexts, auto length): each
    job's length-search scores, not only its answer, equal `infill` run alone."""
    cm = models.text()
    holes = [HOLES[0], (HOLES[4][0] * 3, HOLES[4][1]), HOLES[1], (HOLES[2][0] * 5, "\n")]
    cands = (2, 4, 8, 16)
    jobs = [Job(p, s, "auto", candidates=cands, seed=i, settings={"temperature": 0.0})
            for i, (p, s) in enumerate(holes)]  # fmt: skip
    batcher = Batcher(cm)
    try:
        batcher._serve(jobs)  # one batch, on this thread
    finally:
        batcher.close()
    assert batcher.stats["batches"] == 1
    for i, ((p, s), j) in enumerate(zip(holes, jobs, strict=True)):
        alone = infill(cm.model, cm.tokenizer, p, s, "auto", candidates=cands, seed=i,
                       watermark=cm.watermark, temperature=0.0)  # fmt: skip
        assert j.scores == alone.scores and len(alone.scores) == len(cands)
        assert j.future.result().middles[0] == alone.middle


@pytest.mark.parametrize("k", [11, 13, 15])
def test_rows_that_outlive_the_blocks_compacted_away_are_scored_on_their_solo_canvas(models, k):
    """Auto length over candidates up to 16: the long rows finish first and the canvas drops
    the leading blocks only they needed, so a short row's solo canvas starts before the
    batch's first slot — put back as the padding it was (these prompts gave a 500)."""
    cm = models.text()
    prefix, cands = "# " + "ab " * k + "\nx = ", (2, 3, 4, 6, 8, 11, 16)
    job = Job(prefix, "\n", "auto", candidates=cands, seed=0, settings={"temperature": 0.0})
    batcher = Batcher(cm)
    try:
        batcher._serve([job])
    finally:
        batcher.close()
    alone = infill(cm.model, cm.tokenizer, prefix, "\n", "auto", candidates=cands, seed=0,
                   watermark=cm.watermark, temperature=0.0)  # fmt: skip
    assert job.scores == alone.scores and job.future.result().middles[0] == alone.middle


def test_a_request_arriving_mid_batch_joins_it_with_its_solo_answer(models):
    """Continuous batching: a job submitted while a batch runs (from the first job's stream,
    i.e. between two of its steps) joins that batch; both answers equal their solo runs."""
    cm = models.text()
    late = Job(*HOLES[3], 8, seed=5, settings={"temperature": 0.8})
    batcher = Batcher(cm)
    futures = []

    def on_text(delta, draft):
        if not futures:
            futures.extend(batcher.submit([late]))

    first = Job(
        *HOLES[1], 12, seed=2, settings={"temperature": 0.8}, on_text=on_text, drafts=True
    )  # on_text at its first step: the batch is surely running
    try:
        got = batcher.submit([first])[0].result(timeout=120).middles[0]
        got_late = futures[0].result(timeout=120).middles[0]
    finally:
        batcher.close()
    assert batcher.stats["joined"] == 1 and batcher.stats["batches"] == 1, batcher.stats
    for job, text in ((first, got), (late, got_late)):
        alone = cm.infill(job.prefix, job.suffix, job.length, seed=job.seed, temperature=0.8)
        assert text == alone.middles[0]


def test_requests_waiting_together_join_a_running_batch_laid_out_together(models):
    """Three requests queued during one step join at the next, in one layout (`_join` of the
    queue's heads), with their solo answers (fixed and automatic lengths)."""
    cm = models.text()
    s = {"temperature": 0.8}
    late = [Job(*HOLES[3], 8, seed=5, settings=s), Job(*HOLES[0], "auto", seed=6, settings=s,
            candidates=(2, 4, 8)), Job(*HOLES[2] , 4, seed=7, settings=s)]  # fmt: skip
    batcher, futures, layouts = Batcher(cm), [], []
    prepare = batcher._prepare

    def spy(jobs, run=None):
        layouts.append(len(jobs) if run is not None else None)
        return prepare(jobs, run)

    def on_text(delta, draft):
        if not futures:
            for j in late:  # three requests while the batch steps
                futures.extend(batcher.submit([j]))

    batcher._prepare = spy
    first = Job(*HOLES[1], 12, seed=2, settings=s, on_text=on_text, drafts=True)
    try:
        got = [batcher.submit([first])[0].result(timeout=120).middles[0]]
        got += [f.result(timeout=120).middles[0] for f in futures]
    finally:
        batcher.close()
    assert batcher.stats["joined"] == 3 and batcher.stats["batches"] == 1, batcher.stats
    assert layouts == [None, 3], layouts  # the batch's own, then the three joiners at once
    for job, text in zip([first, *late], got, strict=True):
        alone = cm.infill(
            job.prefix,
            job.suffix,
            job.length,
            seed=job.seed,
            temperature=0.8,
            **({"candidates": job.candidates} if job.length == "auto" else {}),
        )
        assert text == alone.middles[0], job


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
     ({"prompt": "x", "max_tokens": 10_000}, 400, "max_tokens"),
     ({"prompt": "x", "n": 99}, 400, "'n'"),
     ({"prompt": [1, 2, 3]}, 400, "token-id"),
     ({"prompt": "x", "temperature": -1}, 400, "temperature"),
     ({"prompt": "x", "stop": ["a"] * 65}, 400, "stop"),
     ({"prompt": 's = "\ud83d'}, 400, "surrogate"),
     ({"prompt": "x", "stop": ["\udc00"]}, 400, "surrogate"),
     ({"prompt": "x", "stream_options": 3}, 400, "stream_options"),
     ({"prompt": "x", "seed": -2}, 400, "seed"),
     ({"prompt": "x", "logprobs": 3}, 400, "logprobs"),
     ({"prompt": "x", "logit_bias": {"50256": -100}}, 400, "logit_bias"),
     ({"prompt": "x", "presence_penalty": 99}, 400, "presence_penalty"),
     ({"prompt": "x" * 200_001}, 400, "characters"),
     ({"prompt": "x", "model": "gpt-4"}, 404, "not served"),
     ({"prompt": "x", "model": "shapes-t2v"}, 404, "makes video")],
)  # fmt: skip
def test_bad_requests_get_openai_errors(make_app, body, status, needle):
    from fastapi.testclient import TestClient

    with TestClient(make_app()) as c:  # json.dumps: ASCII, so a lone surrogate goes as \ud83d
        r = c.post("/v1/completions", content=json.dumps(body),
                   headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text


def test_unknown_endpoints_say_what_is_served_and_wrong_methods_get_405(make_app):
    from fastapi.testclient import TestClient

    with TestClient(make_app()) as c:
        for method, path in (("POST", "/v1/chat/completions"), ("POST", "/"),
                             ("GET", "/v1/nothing")):  # fmt: skip
            r = c.request(method, path, json={"messages": []})
            err = r.json()["error"]
            assert r.status_code == 404 and err["code"] == "unknown_url", (path, r.text)
            assert f"{method} {path}" in err["message"] and "POST /v1/completions" in err["message"]
        r = c.get("/v1/completions")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert c.get("/").status_code == 200 and c.get("/app.js").status_code == 200
        assert c.get("/v1/files/nope").json()["error"]["code"] == "file_not_found"


def test_not_json_and_api_key(make_app):
    from fastapi.testclient import TestClient

    with TestClient(make_app(api_key="k")) as c:
        assert c.post("/v1/completions", json={"prompt": "x"}).status_code == 401
        ollama = c.post("/api/generate", json={"model": "code-tiny-block", "prompt": "x"})
        assert ollama.status_code == 401 and isinstance(ollama.json()["error"], str)  # its shape
        assert ollama.headers["www-authenticate"] == "Bearer"
        r = c.post("/v1/completions", content=b"{nope", headers={"Authorization": "Bearer k"})
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_overload_gives_429_and_every_accepted_request_completes(make_app):
    body = {"prompt": HOLES[2][0], "suffix": HOLES[2][1], "max_tokens": 16}
    codes, lock = [], threading.Lock()

    def ask(base):
        r = httpx.post(base + "/v1/completions", json=body, timeout=120)
        with lock:
            codes.append((r.status_code, r.headers.get("retry-after"), r.json()))

    with live_server(make_app(limits={"queue_size": 1})) as base:
        threads = [threading.Thread(target=ask, args=(base,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert {c for c, _, _ in codes} <= {200, 429} and (429, "1") in {(c, h) for c, h, _ in codes}
    assert all(b["choices"][0]["text"] is not None for c, _, b in codes if c == 200)


def test_a_closed_stream_cancels_its_generation(make_app):
    app = make_app()
    body = {"prompt": HOLES[4][0], "suffix": HOLES[4][1], "length": 64, "stream": True,
            "drafts": True}  # fmt: skip
    with live_server(app) as base, httpx.Client(base_url=base, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=body) as s:
            next(s.iter_lines())  # the first event, then hang up
        deadline = time.monotonic() + 30
        while text_service(app).stats["cancelled"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert text_service(app).stats["cancelled"] >= 1
        r = c.post("/v1/completions", json={"prompt": "x = ", "max_tokens": 4})
        assert r.status_code == 200  # the server goes on


def test_ollama_generate_with_suffix_streams_ndjson(make_app, models):
    prefix, suffix = HOLES[3]
    body = {"model": "code-tiny-block", "prompt": prefix, "suffix": suffix,
            "options": {"num_predict": 8, "seed": 5, "temperature": 0}}  # fmt: skip
    want = solo(models, prefix, suffix, max_tokens=8, seed=5).middles[0]
    with live_server(make_app()) as base, httpx.Client(base_url=base, timeout=60) as c:
        assert "code-tiny-block" in [m["name"] for m in c.get("/api/tags").json()["models"]]
        r = c.post("/api/generate", json={**body, "stream": False}).json()
        assert r["response"] == want and r["done"] is True and r["mdiff"]["seed"] == 5
        with c.stream("POST", "/api/generate", json=body) as s:  # Ollama streams by default
            assert s.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in s.iter_lines() if line]
    assert "".join(x["response"] for x in lines) == want
    assert lines[-1]["done"] and not any(x["done"] for x in lines[:-1])


def test_a_diffusion_gemma_folder_is_served_with_its_own_sampler(home, tmp_path):
    # a model that brings its own infill (DiffusionGemma) runs each choice alone, as the SDK
    from mdiff.text import CodeModel
    from tests.text.test_diffusion_gemma_pipeline import build, char_tokenizer

    build().save_pretrained(tmp_path / "dg")
    char_tokenizer().save_pretrained(tmp_path / "dg")
    cm = CodeModel.from_pretrained(tmp_path / "dg")
    config = ServeConfig(home=str(home), text_model=str(tmp_path / "dg"))
    models = Models(config)
    models._text = cm
    body = {"prompt": "def add(a, b):\n    return ", "suffix": "\n", "max_tokens": 8, "seed": 2,
            "length": 8, "stop": ["\n\n"]}  # fmt: skip
    want = cm.infill(body["prompt"], body["suffix"], 8, seed=2).middles[0]
    with live_server(create_app(config, models=models)) as base:
        r = httpx.post(base + "/v1/completions", json=body, timeout=120).json()
    text = r["choices"][0]["text"]
    assert text == want.split("\n\n")[0] and r["choices"][0]["mdiff"]["file_id"]


def test_a_llada_folder_is_served_batched_with_the_sdks_answers(home, tmp_path):
    # LLaDA's own layout read as a Llama (bidirectional, a transformers cache): concurrent
    # requests batched, fixed and automatic lengths, each the SDK's answer alone
    from mdiff.text import CodeModel
    from tests.text.test_llada_native import folder

    path = folder(tmp_path)
    cm = CodeModel.from_pretrained(path)
    config = ServeConfig(home=str(home), text_model=str(path))
    models = Models(config)
    models._text = cm
    asks = [{"prompt": "x = ", "suffix": " + 1", "max_tokens": 6, "seed": i, **extra}
            for i, extra in enumerate([{"length": 3}, {}, {"length": 5}, {}])]  # fmt: skip
    want = [cm.infill(a["prompt"], a["suffix"], a.get("length", "auto"), seed=a["seed"],
                      **({} if "length" in a else {"candidates": (2, 3, 4, 6)})).middles[0]
            for a in asks]  # fmt: skip
    got = [None] * len(asks)
    with live_server(create_app(config, models=models)) as base:

        def ask(i):
            got[i] = httpx.post(base + "/v1/completions", json=asks[i], timeout=120).json()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [g["choices"][0]["text"] for g in got] == want


def test_a_program_that_leaves_a_batcher_running_exits_cleanly(tmp_path):
    """Its worker thread still waiting at exit aborted the process (exit 134) before."""
    import subprocess
    import sys

    script = ("from mdiff.serve.batching import Batcher, Job\n"
              "from mdiff.text.pipeline import CodeModel\n"
              "b = Batcher(CodeModel.from_pretrained('code-tiny-block'))\n"
              "done = b.submit([Job('x = ', '\\n', 2)])[0].result()\n"
              "print(done.middles[0] is not None)\n")  # fmt: skip
    env = {**os.environ, "MDIFF_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-500:]
