"""`mdiff serve` verify routes: ``POST /v1/verify`` answers what ``mdiff verify --json`` prints
for the same file (the CLI run in-process is the oracle), bounded uploads (413, a body that stops
being read), errors in OpenAI's shape, temp files removed, and downloads of stored artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time

import pytest
import torch
from fastapi.testclient import TestClient

from mdiff.cli import main
from mdiff.provenance import keys
from mdiff.provenance.sign import sidecar_path
from mdiff.provenance.verify import verify
from mdiff.serve.app import ServeConfig, create_app
from mdiff.serve.limits import Limits
from mdiff.serve.store import artifact_store
from mdiff.serve.verify_api import MEANINGS
from tests.serve.server import live_server

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
EXTRA = ("status", "meaning")  # what the route adds to the CLI's report


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A dev identity with a fixed watermark key (with a random one, whether this model's 128
    tokens show the mark varies with the key; the detection power is measured in
    tests/provenance)."""
    path = tmp_path_factory.mktemp("mdiff-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MDIFF_HOME", str(path))
        keys.init_dev_identity(path)
        (path / "watermark.secret").write_bytes(hashlib.sha256(b"mdiff serve verify").digest())
        yield path


@pytest.fixture(scope="module")
def model(home):
    from mdiff.provenance.stamp import Stamper
    from mdiff.text import CodeModel

    return CodeModel.from_pretrained("code-tiny-block", stamper=Stamper(home=home))


@pytest.fixture(scope="module")
def signed(model, tmp_path_factory):
    """A generated file long enough to show the text mark, with its sidecar."""
    done = model.generate("import os\n", gen_length=128, temperature=1.5, seed=1)
    return done.save(tmp_path_factory.mktemp("signed") / "gen.py")


@pytest.fixture(autouse=True)
def temp_dir(tmp_path, monkeypatch):
    """Every temp file goes to a folder of the test's own; none is left behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    assert not [p.name for p in folder.iterdir() if p.name.startswith("mdiff-verify-")]


@pytest.fixture
def make_client(home):
    def make(**kw):
        config = ServeConfig(home=str(home), limits=Limits(**kw.pop("limits", {})), **kw)
        return TestClient(create_app(config))

    return make


def cli(path, home, *flags, capsys, monkeypatch):
    """``mdiff verify --json FILE`` run where FILE lies: (exit code, the JSON or None)."""
    capsys.readouterr()
    monkeypatch.chdir(path.parent)
    code = main(["verify", "--json", path.name, "--home", str(home), "--threads", "1", *flags])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else None)


def post(client, path, sidecar=True, **data):
    files = [("file", (path.name, path.read_bytes(), "application/octet-stream"))]
    side = sidecar_path(path)
    if sidecar and side.is_file():
        files.append(("sidecar", (side.name, side.read_bytes(), "application/c2pa")))
    return client.post("/v1/verify", files=files, data=data)


def same_as_cli(resp, code, report):
    """The route's answer is the CLI's: its report (200) or, for exit code 4, a 400 error."""
    body = resp.json()
    if code == 4:
        assert resp.status_code == 400 and report is None, resp.text
        assert body["exit_code"] == 4 and body["status"] == "error"
        assert set(body["error"]) == {"message", "type", "param", "code"}
        return body
    assert resp.status_code == 200, resp.text
    assert {k: v for k, v in body.items() if k not in EXTRA} == report
    assert body["meaning"] == MEANINGS[code] and body["exit_code"] == code
    return body


def test_signed_completion_is_trusted_like_the_cli(make_client, signed, home, capsys,
                                                   monkeypatch, tmp_path):  # fmt: skip
    code, report = cli(signed, home, capsys=capsys, monkeypatch=monkeypatch)
    body = same_as_cli(post(make_client(), signed), code, report)
    with capsys.disabled():
        print(f"signed: exit {code}, {body['verdict']!r}, z={body['watermark']['z']:.2f}")
    assert code == 0 and body["status"] == "intact" and body["manifest"]["state"] == "trusted"
    assert body["watermark"]["detected"] and body["file"] == "gen.py"
    assert body["manifest"]["sidecar"] == "gen.py.c2pa" and str(tmp_path) not in json.dumps(body)
    # without its sidecar: the model named gives the vocabulary, and the text mark is found
    alone = tmp_path / "alone" / "gen.py"
    alone.parent.mkdir()
    shutil.copy(signed, alone)
    flags = ("--model", "code-tiny-block")
    code, report = cli(alone, home, *flags, capsys=capsys, monkeypatch=monkeypatch)
    body = same_as_cli(post(make_client(), alone, model="code-tiny-block"), code, report)
    print(f"without sidecar: exit {code}, {body['verdict']!r}")
    assert code == 1 and body["watermark"]["detected"] and body["status"] == "warning"
    assert "provenance stripped" in body["verdict"]


def test_tampered_file_gets_the_cli_verdict(make_client, signed, home, capsys, monkeypatch,
                                            tmp_path):  # fmt: skip
    text = signed.read_text(encoding="utf-8")
    i = len(text) // 2
    bad = tmp_path / "gen.py"
    bad.write_text(text[:i] + ("x" if text[i] != "x" else "y") + text[i + 1 :], encoding="utf-8")
    shutil.copy(sidecar_path(signed), sidecar_path(bad))
    code, report = cli(bad, home, capsys=capsys, monkeypatch=monkeypatch)
    body = same_as_cli(post(make_client(), bad), code, report)
    print(f"one character changed: exit {code}, {body['verdict']!r}")
    assert code == 2 and body["status"] == "tampered"


def test_signed_and_tampered_image_as_the_cli(make_client, home, capsys, monkeypatch, tmp_path):
    """An embedded manifest and a pixel mark (the Stamper's PNG), and the PNG with bytes flipped."""
    from mdiff.provenance.stamp import Stamper
    from mdiff.record import GenerationRecord

    st = Stamper(home=home)
    image = torch.randint(0, 256, (1, 256, 256, 3), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)  # fmt: skip
    rec = GenerationRecord.create("image", "test-model", prompt="a red disc", seed=1)
    png = st.save(st.frames(image, rec), tmp_path / "signed.png")
    data = bytearray(png.read_bytes())
    data[-200] ^= 0xFF  # inside the image data: the hash binding breaks
    (tmp_path / "bad").mkdir()
    bad = tmp_path / "bad" / "signed.png"
    bad.write_bytes(bytes(data))
    client, codes = make_client(), []
    for path in (png, bad):
        code, report = cli(path, home, capsys=capsys, monkeypatch=monkeypatch)
        same_as_cli(post(client, path), code, report)
        codes.append(code)
    assert codes == [0, 2]


BAD = [("junk.bin", b"\x00junk" * 50), ("junk.png", b"not a png"), ("empty.png", b""),
       ("plain.txt", b"no provenance\n")]  # fmt: skip


@pytest.mark.parametrize("name,data", BAD)
def test_unreadable_or_plain_files_as_the_cli(make_client, home, capsys, monkeypatch, tmp_path,
                                              name, data):  # fmt: skip
    path = tmp_path / name
    path.write_bytes(data)
    code, report = cli(path, home, capsys=capsys, monkeypatch=monkeypatch)
    body = same_as_cli(post(make_client(), path), code, report)
    print(f"{name}: exit {code}: {body.get('verdict') or body['error']['message']}")
    assert str(tmp_path) not in json.dumps(body)


def test_options_match_the_cli_flags(make_client, signed, home, capsys, monkeypatch):
    root = home / "identity" / "root.pem"
    cases = [({"no_watermark": "true"}, ["--no-watermark"]),
             ({"prompt": "not the prompt"}, ["--prompt", "not the prompt"]),
             ({"model": "code-tiny-block"}, ["--model", "code-tiny-block"])]  # fmt: skip
    client = make_client()
    for data, flags in cases:
        code, report = cli(signed, home, *flags, capsys=capsys, monkeypatch=monkeypatch)
        same_as_cli(post(client, signed, **data), code, report)
        print(f"{flags}: exit {code}")
    code, report = cli(signed, home, "--trust-anchor", str(root), capsys=capsys,
                       monkeypatch=monkeypatch)  # fmt: skip
    files = [("file", ("gen.py", signed.read_bytes())),
             ("sidecar", ("x.c2pa", sidecar_path(signed).read_bytes())),
             ("trust_anchor", ("root.pem", root.read_bytes()))]  # fmt: skip
    same_as_cli(client.post("/v1/verify", files=files), code, report)
    for data in ({"model": "/etc"}, {"no_watermark": "maybe"}, {"colour": "red"},
                 {"prompt_opening": "zz", "prompt": "p"}):  # fmt: skip
        r = post(client, signed, **data)
        assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type"}, r.text


def test_missing_file_field_is_a_400(make_client):
    client = make_client()
    for kw in ({"data": {"other": "x"}, "files": {"x": ("a.txt", b"a")}},
               {"data": {"file": "not an upload"}, "files": {"x": ("a.txt", b"a")}},
               {"json": {"file": "x"}}, {}):  # fmt: skip
        r = client.post("/v1/verify", **kw)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "file" or "file" in err["message"], err


def test_uploads_over_the_limit_are_413(make_client, signed):
    client = make_client(limits={"max_upload_bytes": 1000})
    for size in (1001, 5000, 400_000):  # just over; within the framing slack; past it
        r = client.post("/v1/verify", files={"file": ("big.txt", b"a" * size)})
        assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large", size
    r = post(client, signed)  # file + sidecar together are over 1000 bytes as well
    assert r.status_code == 413
    small = client.post("/v1/verify", files={"file": ("ok.txt", b"a" * 1000)})
    assert small.status_code == 200 and small.json()["size_bytes"] == 1000


def test_the_server_stops_reading_an_endless_upload(home):
    """A chunked body with no length: the 413 comes back while the client is still sending,
    after a bounded number of bytes (the limit + framing), not after the whole body."""
    app = create_app(ServeConfig(home=str(home), limits=Limits(max_upload_bytes=1000)))
    chunk, sent, total = b"a" * 65536, 0, 64 * 2**20
    with live_server(app) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")  # fmt: skip
            head = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"'
                    b"\r\n\r\n")  # fmt: skip
            s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            s.settimeout(0.2)
            answer, deadline = b"", time.monotonic() + 60
            while sent < total and not answer and time.monotonic() < deadline:
                try:
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                    answer = s.recv(65536, socket.MSG_DONTWAIT)
                except (BlockingIOError, TimeoutError):
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
            s.settimeout(10)
            while b"\r\n\r\n" not in answer:
                answer += s.recv(65536)
    print(f"413 after the client sent {sent / 2**20:.2f} MiB of an endless body")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 16 * 2**20


def test_downloads_by_id_and_they_verify(make_client, model, home, tmp_path):
    client = make_client()
    store = artifact_store(client.app)
    done = model.infill("def add(a, b):\n    return ", "\n", 4, seed=0)
    path = done.save(store.new_path(".txt"))
    saved, side = path.read_bytes(), sidecar_path(path).read_bytes()
    aid = store.put("text", path, sidecar=sidecar_path(path), meta={"model": "code-tiny-block"})
    r, c = client.get(f"/v1/files/{aid}"), client.get(f"/v1/files/{aid}/c2pa")
    assert r.status_code == 200 and r.content == saved == done.text.encode()
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert c.status_code == 200 and c.content == side
    assert c.headers["content-type"] == "application/c2pa"
    (tmp_path / "d.txt").write_bytes(r.content)
    (tmp_path / "d.txt.c2pa").write_bytes(c.content)
    report = verify(tmp_path / "d.txt", home=home)
    assert report.manifest.state == "trusted" and report.exit_code == 0, report.format()
    assert post(client, tmp_path / "d.txt").json()["exit_code"] == 0
    mp4 = store.put("video", b"\x00\x00\x00\x18ftypisom", suffix=".mp4")  # embedded manifest
    v = client.get(f"/v1/files/{mp4}")
    assert v.status_code == 200 and v.headers["content-type"] == "video/mp4"
    for url in (f"/v1/files/{mp4}/c2pa", "/v1/files/nope", "/v1/files/nope/c2pa"):
        r = client.get(url)
        assert r.status_code == 404 and r.json()["error"]["code"] in (
            "file_not_found",
            "no_sidecar",
        ), url


def test_api_key_is_required(make_client, signed):
    client = make_client(api_key="k-test")
    store = artifact_store(client.app)
    aid = store.put("text", "hello", suffix=".txt")
    for r in (post(client, signed), client.get(f"/v1/files/{aid}")):
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    client.headers["Authorization"] = "Bearer k-test"
    assert post(client, signed).json()["exit_code"] == 0
    assert client.get(f"/v1/files/{aid}").content == b"hello"


def test_an_image_past_the_servers_pixels_has_its_manifest_checked_and_its_mark_left_unread(
        make_client, home, tmp_path):  # fmt: skip
    """The detector holds ~100 bytes a pixel: past ``max_verify_pixels`` the route checks the
    manifest only and says so; at the bound it reads the mark as the CLI does."""
    from mdiff.provenance.stamp import Stamper
    from mdiff.record import GenerationRecord

    st = Stamper(home=home)
    image = torch.randint(0, 256, (1, 128, 128, 3), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)  # fmt: skip
    rec = GenerationRecord.create("image", "test-model", prompt="a red disc", seed=1)
    png = st.save(st.frames(image, rec), tmp_path / "signed.png")
    big = post(make_client(limits={"max_verify_pixels": 128 * 128 - 1}), png).json()
    fits = post(make_client(limits={"max_verify_pixels": 128 * 128}), png).json()
    assert big["manifest"]["state"] == fits["manifest"]["state"] == "trusted"
    assert any("16,384 pixels, more than this server reads (16,383" in n for n in big["notes"])
    assert not any("server reads" in n for n in fits["notes"])
    assert fits["watermark"] is not None and big["watermark"] is None
