"""`mdiff serve` video routes: live fMP4 over HTTP and WebSocket, signed files, bounds, shutdown.

Streaming is checked against a real uvicorn server (TestClient buffers whole responses)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import threading
import time

import av
import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from mdiff.provenance import verify
from mdiff.serve.app import Models, ServeConfig, create_app
from mdiff.serve.limits import Limits
from mdiff.serve.video_api import BoxSplitter, service
from tests.serve.server import live_server

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def models(home):
    m = Models(ServeConfig(home=str(home)))
    m.video()  # load once for the module
    return m


@pytest.fixture
def make_app(models, home):
    def make(**limits):
        config = ServeConfig(home=str(home), limits=Limits(**limits))
        models.config = config
        return create_app(config, models=models)

    return make


def decode(data: bytes) -> np.ndarray:
    """uint8 (T, H, W, 3) of an MP4 held in memory."""
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def wait_file(base: str, vid: str, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{base}/v1/videos/{vid}")
        if r.status_code != 202:
            return r
        time.sleep(0.05)
    raise AssertionError("the video did not finish")


def test_live_stream_arrives_early_plays_is_watermarked_and_the_stored_file_verifies(
    make_app, home, tmp_path
):
    body = {"prompt": PROMPT, "frames": 65, "size": "64x64", "steps": 4, "seed": 5}
    with live_server(make_app()) as base, httpx.Client(base_url=base, timeout=60) as c:
        start = time.monotonic()
        with c.stream("POST", "/v1/videos", json=body) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
            vid, parts, first = r.headers["x-mdiff-id"], [], None
            for part in r.iter_raw():
                if first is None:
                    first = time.monotonic() - start
                    assert c.get(f"/v1/videos/{vid}").status_code == 202  # still generating
                parts.append(part)
        total = time.monotonic() - start
        stored = wait_file(base, vid)
        head = c.head(f"/v1/videos/{vid}")  # players probe, then seek with ranges
        part = c.get(f"/v1/videos/{vid}", headers={"Range": "bytes=100-199"})
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(stored.content)
    assert part.status_code == 206 and part.content == stored.content[100:200]
    assert first < total
    live = b"".join(parts)
    assert live[4:8] == b"ftyp" and len(parts) > 3
    frames = decode(live)
    assert frames.shape == (65, 64, 64, 3)
    assert stored.status_code == 200 and stored.headers["x-mdiff-status"] == "completed"
    (tmp_path / "signed.mp4").write_bytes(stored.content)
    signed = verify(tmp_path / "signed.mp4", home=home)
    assert signed.manifest.state == "trusted" and signed.exit_code == 0, signed.format()
    assert signed.watermark["detected"] and signed.payload_matches_manifest, signed.watermark
    # the live bytes hold exactly the frames of the signed file: they carry its watermark
    assert np.array_equal(decode(stored.content), frames)


def test_a_disconnected_client_stops_its_generation_and_the_partial_file_is_signed(
    make_app, home, tmp_path
):
    body = {"prompt": PROMPT, "frames": 97, "size": "64x64", "steps": 4}
    app = make_app()
    with live_server(app) as base, httpx.Client(base_url=base, timeout=60) as c:
        with c.stream("POST", "/v1/videos", json=body) as r:
            vid = r.headers["x-mdiff-id"]
            next(r.iter_raw())  # the init segment, then hang up
        stored = wait_file(base, vid)
    job = service(app).jobs[vid]
    assert stored.status_code == 200 and stored.headers["x-mdiff-status"] == "interrupted"
    n = int(stored.headers["x-mdiff-frames"])
    assert 0 < n < 97 and decode(stored.content).shape[0] == n == job.frames
    (tmp_path / "cut.mp4").write_bytes(stored.content)
    report = verify(tmp_path / "cut.mp4", home=home)
    assert report.manifest.state == "trusted" and report.exit_code == 0, report.format()
    extra = report.manifest.record.extra
    assert extra["interrupted"] is True and extra["frames_written"] == n


def test_websocket_session_sends_init_then_segments_and_stop_finalizes(make_app, home, tmp_path):
    app = make_app()
    with TestClient(app) as c, c.websocket_connect("/v1/realtime/video") as ws:
        ws.send_json({"type": "start", "prompt": PROMPT, "frames": 9, "size": "64x64",
                      "steps": 2})  # fmt: skip
        started = ws.receive_json()
        assert started["type"] == "started"
        segments = []
        while True:
            message = ws.receive()
            if message.get("bytes") is None:
                break
            segments.append(message["bytes"])
        done = __import__("json").loads(message["text"])
        assert done == {"type": "done", "id": started["id"], "status": "completed",
                        "frames": 9, "interrupted": False}  # fmt: skip
        init = segments[0]
        assert init[4:8] == b"ftyp" and b"moov" in init and b"moof" not in init
        tail = segments[-1][4:8] == b"mfra"  # the muxer's closing index, its own message
        assert all(s[4:8] == b"moof" and b"mdat" in s for s in segments[1 : len(segments) - tail])
        assert decode(b"".join(segments)).shape == (9, 64, 64, 3)

        ws.send_json({"type": "start", "prompt": PROMPT, "frames": 97, "size": "64x64",
                      "steps": 4})  # fmt: skip
        second = ws.receive_json()["id"]
        assert ws.receive_bytes()[4:8] == b"ftyp"
        ws.send_json({"type": "stop"})
        while (message := ws.receive()).get("bytes") is not None:
            pass
        done = __import__("json").loads(message["text"])
        assert done["id"] == second and done["interrupted"] and 0 < done["frames"] < 97
        r = c.get(f"/v1/videos/{second}")
    (tmp_path / "ws.mp4").write_bytes(r.content)
    report = verify(tmp_path / "ws.mp4", home=home)
    assert report.manifest.state == "trusted" and report.manifest.record.extra["interrupted"]


def _png(h: int, w: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


BAD = [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x" * 101}, "longer than 100"),
    ({"prompt": PROMPT, "frames": 41}, "at most 33"),
    ({"prompt": PROMPT, "frames": 8}, "frames"),  # not 1 + 4k: the pipeline says so
    ({"prompt": PROMPT, "frames": "9"}, "frames must be an integer"),
    ({"prompt": PROMPT, "size": "big"}, "WIDTHxHEIGHT"),
    ({"prompt": PROMPT, "size": "128x128"}, "exceeds 4096 pixels"),
    ({"prompt": PROMPT, "width": 60, "height": 60}, "multiple"),  # the pipeline's check
    ({"prompt": PROMPT, "guidance": "high"}, "guidance must be a number"),
    ({"prompt": PROMPT, "colour": "red"}, "unknown field"),
    ({"prompt": "a cat \ud83d"}, "surrogate"),
    ({"prompt": PROMPT, "model": "sora"}, "not 'sora'"),
    ({"prompt": PROMPT, "image": "not base64!"}, "base64"),
    ({"prompt": PROMPT, "image": _png(128, 128)}, "exceeds 4096 pixels"),
    (
        {"prompt": PROMPT, "image": "data:image/png;base64," + _png(32, 32), "size": "64x64"},
        "image",
    ),  # fmt: skip
]


@pytest.mark.parametrize("body,needle", BAD)
def test_bad_video_requests_are_400_with_a_clear_message(make_app, body, needle):
    app = make_app(max_prompt_chars=100, max_frames=33, max_pixels=64 * 64)
    r = TestClient(app).post("/v1/videos", content=json.dumps(body),  # ASCII: a lone surrogate
                             headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert needle.lower() in error["message"].lower() and error["type"] == "invalid_request_error"
    assert service(app).live() == 0  # nothing started


def test_with_an_api_key_the_websocket_needs_it_too(models, home):
    from starlette.websockets import WebSocketDisconnect

    app = create_app(ServeConfig(home=str(home), api_key="k-ws"), models=models)
    with TestClient(app) as c:
        for url in ("/v1/realtime/video", "/v1/realtime/video?api_key=wrong"):
            with pytest.raises(WebSocketDisconnect) as refused, c.websocket_connect(url):
                pass
            assert refused.value.code == 1008
        with c.websocket_connect("/v1/realtime/video?api_key=k-ws") as ws:  # as the page does
            ws.send_json({"type": "hello"})
            assert "start" in ws.receive_json()["error"]["message"]


def test_unknown_video_is_404(make_app):
    r = TestClient(make_app()).get("/v1/videos/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]


def test_overload_is_429_with_retry_after_and_image_to_video_runs(make_app, home):
    app = make_app(queue_size=0, max_running_videos=1)
    svc = service(app)
    image = "data:image/png;base64," + _png(64, 64)
    job = svc.start({"prompt": PROMPT, "frames": 97, "size": "64x64", "steps": 4, "image": image})
    r = TestClient(app).post("/v1/videos", json={"prompt": PROMPT, "frames": 9})
    assert r.status_code == 429 and r.headers["retry-after"] == "5", r.text
    assert r.json()["error"]["type"] == "rate_limit_error"
    svc.finalize()
    assert job.done.is_set() and job.status == "interrupted"
    report = verify(job.path, home=home)
    assert report.manifest.state == "trusted" and report.manifest.record.edited  # from the image


def test_shutdown_finalizes_and_signs_every_started_stream(make_app, home):
    app = make_app()
    body = {"prompt": PROMPT, "frames": 97, "size": "64x64", "steps": 4}
    got: list[str] = []

    def client(base):
        with httpx.Client(base_url=base, timeout=60) as c, c.stream("POST", "/v1/videos",
                                                                    json=body) as r:  # fmt: skip
            got.append(r.headers["x-mdiff-id"])
            with contextlib.suppress(httpx.HTTPError):
                for _ in r.iter_raw():
                    pass

    with live_server(app) as base:
        threads = [threading.Thread(target=client, args=(base,)) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while not any(j.path.exists() for j in service(app).snapshot()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    for t in threads:
        t.join(30)
    jobs = service(app).snapshot()
    assert len(jobs) == 2 and all(j.done.is_set() for j in jobs)
    started = [j for j in jobs if j.path.exists()]
    assert started and all(j.status == "interrupted" for j in started)
    assert all(j.status == "failed" for j in jobs if j not in started)  # queued, no frame
    for j in started:
        report = verify(j.path, home=home)
        assert report.manifest.state == "trusted" and report.manifest.record.extra["interrupted"]


def test_box_splitter_keeps_whole_boxes_across_any_cut():
    box = lambda kind, n: (8 + n).to_bytes(4, "big") + kind + bytes(n)  # noqa: E731
    data = box(b"ftyp", 4) + box(b"moov", 20) + box(b"moof", 8) + box(b"mdat", 30)
    for cut in range(1, len(data)):
        s = BoxSplitter()
        out = s.feed(data[:cut]) + s.feed(data[cut:])
        assert out == [data[:40], data[40:]] and s.rest() == b""


def test_finished_videos_are_bounded(make_app, monkeypatch):
    import mdiff.serve.video_api as V

    monkeypatch.setattr(V, "MAX_FINISHED", 2)
    svc = service(make_app())
    jobs = [svc.start({"prompt": PROMPT, "frames": 1, "size": "64x64", "steps": 1})
            for _ in range(4)]  # fmt: skip
    for job in jobs:
        job.done.wait(60)
    svc.start({"prompt": PROMPT, "frames": 1, "size": "64x64", "steps": 1}).done.wait(60)
    kept = [j for j in jobs if j.id in svc.jobs]
    assert kept == jobs[2:] and all(j.path.exists() for j in kept)
    assert not any(j.path.exists() for j in jobs[:2])  # their files are gone too


def test_preload_readies_both_models_without_a_request(home):
    config = ServeConfig(home=str(home), preload=True)
    models = Models(config)
    with TestClient(create_app(config, models=models)):
        deadline = time.monotonic() + 120
        while (models._text is None or models._video is None) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert models._text is not None and models._video is not None
    broken = Models(ServeConfig(home=str(home), text_model="no-such-model"))
    broken.warm()  # logged, not raised: the first request reports it
    assert broken._text is None


def test_video_bodies_are_read_bounded_and_bad_ones_get_openais_shape(make_app):
    """/v1/videos reads its body as the text routes do: 413 past the bound (read no further),
    415 compressed, 400 for JSON that is not an object; a decompression bomb is a 400; seed -1
    is a random seed, sent back in X-Mdiff-Seed."""
    import base64

    from PIL import Image

    app = make_app(max_body_bytes=10_000)
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # 20000² pixels in a few kB
    with TestClient(app) as c:
        big = c.post("/v1/videos", json={"prompt": "x", "pad": "a" * 20_000})
        bad = c.post("/v1/videos", content=b"{bad", headers={"Content-Type": "application/json"})
        listed = c.post("/v1/videos", json=[1, 2])
        gz = c.post("/v1/videos", content=b"x", headers={"Content-Encoding": "gzip"})
        image = base64.b64encode(bomb.getvalue()).decode()
        boom = TestClient(make_app()).post("/v1/videos", json={"prompt": "x", "image": image})
    assert big.status_code == 413 and big.json()["error"]["message"].startswith("the body is")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    assert listed.status_code == 400 and "JSON object" in listed.json()["error"]["message"]
    assert gz.status_code == 415
    assert boom.status_code == 400 and "pixels" in boom.json()["error"]["message"]
    seeds = set()
    with live_server(make_app()) as base, httpx.Client(base_url=base, timeout=60) as c:
        for _ in range(2):
            body = {"prompt": PROMPT, "frames": 1, "size": "64x64", "steps": 1, "seed": -1}
            with c.stream("POST", "/v1/videos", json=body) as r:
                assert r.status_code == 200
                seeds.add(int(r.headers["x-mdiff-seed"]))
                r.read()
    assert len(seeds) == 2 and all(0 <= s < 2**31 for s in seeds)


def test_websocket_bad_frames_get_an_error_and_the_session_goes_on(make_app):
    """Binary frames, text that is not JSON and a second start while streaming each get an
    error message; the socket stays open and a stop still stops."""
    with TestClient(make_app()) as c, c.websocket_connect("/v1/realtime/video") as ws:
        ws.send_bytes(b"\x00\x01")
        first = ws.receive_json()
        ws.send_text("{nope")
        second = ws.receive_json()
        ws.send_json({"type": "start", "prompt": PROMPT, "frames": 33, "size": "64x64",
                      "steps": 2})  # fmt: skip
        assert ws.receive_json()["type"] == "started"
        ws.send_text("{nope")
        ws.send_json({"type": "start", "prompt": PROMPT})
        ws.send_json({"type": "stop"})
        errors, done = [], None
        while done is None:
            m = ws.receive()
            if m.get("text") is not None:
                msg = json.loads(m["text"])
                errors += [msg["error"]["message"]] if msg["type"] == "error" else []
                done = msg if msg["type"] == "done" else None
    assert "not binary" in first["error"]["message"]
    assert "not valid JSON" in second["error"]["message"]
    assert any("not valid JSON" in e for e in errors)
    assert any("send stop first" in e for e in errors)
    assert done["interrupted"] is True and done["frames"] < 33
