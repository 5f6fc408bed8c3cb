"""The web page in a real browser: headless Chromium (Debian's package) over the DevTools
protocol, against a real uvicorn server with the built-in models.

Live video: the page opens ``WS /v1/realtime/video`` and plays the fMP4 through Media Source
Extensions; frames must really be painted (``requestVideoFrameCallback`` count, ``currentTime``
advancing, non-blank pixels drawn from the ``<video>``), and the time to the first painted frame
is printed. The code hole is filled through the page and must equal the same request made
directly; a dropped file's badge must match `mdiff.provenance.verify`. Skips (with the reason)
where Chromium is missing; CI installs it (``.ci/run``).
"""

from __future__ import annotations

import json
import struct
import zlib

import httpx
import pytest
import torch

from tests.serve.chromium import Browser, find_chromium
from tests.serve.server import live_server

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium)")
FRAMES = 5  # a short clip: the test stays fast on 2 CPU cores
BADGES = {0: ("trusted", "ok"), 1: ("warning", "warn"), 2: ("tampered", "bad"),
          3: ("nothing found", "none"), 4: ("unreadable", "bad")}  # fmt: skip


@pytest.fixture(scope="module")
def base_url(home):
    from mdiff.serve.app import ServeConfig, create_app

    torch.set_num_threads(1)
    with live_server(create_app(ServeConfig(home=str(home), api_key="k-test"))) as url:
        yield url


@pytest.fixture(scope="module")
def page(base_url):
    with Browser(CHROMIUM) as browser:
        page = browser.page(base_url + "/")
        page.js("document.getElementById('api-key').value = 'k-test'")
        yield page


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw scanlines) of a PNG (asserts the signature)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    chunks, at = [], 8
    while at < len(data):
        (size,), kind = struct.unpack(">I", data[at : at + 4]), data[at + 4 : at + 8]
        if kind == b"IDAT":
            chunks.append(data[at + 8 : at + 8 + size])
        at += 12 + size
    return width, height, zlib.decompress(b"".join(chunks))


def test_page_plays_the_live_stream(page, tmp_path):
    codecs = page.js("""["avc1.42E01E", "avc1.64000a", "avc1.64001f"].map(
        c => MediaSource.isTypeSupported(`video/mp4; codecs="${c}"`))""")
    print(f"MSE H.264 (baseline, high L1.0, high L3.1) supported: {codecs}")
    assert all(codecs), "this Chromium cannot play H.264 through MSE"
    page.js(f"""document.getElementById('video-prompt').value = 'a red circle moving right';
        document.getElementById('video-frames').value = {FRAMES};
        document.getElementById('video-start').click()""")
    page.wait("mdiffStats.done || mdiffStats.error || mdiffStats.framesPainted >= 2", timeout=120)
    stats = page.wait("(mdiffStats.error || (mdiffStats.done && document.getElementById('video')"
                      ".ended)) && mdiffStats", timeout=120)  # fmt: skip
    assert stats["error"] is None, stats["error"]
    assert stats["codecSupported"] and stats["codec"].startswith("avc1.")
    video = page.js("""(() => { const v = document.getElementById('video');
        const c = document.createElement('canvas');
        c.width = v.videoWidth; c.height = v.videoHeight;
        const g = c.getContext('2d'); g.drawImage(v, 0, 0);
        const px = g.getImageData(0, 0, c.width, c.height).data;
        let sum = 0, sq = 0;
        for (let i = 0; i < px.length; i += 4) { sum += px[i]; sq += px[i] * px[i]; }
        const n = px.length / 4;
        return {time: v.currentTime, width: v.videoWidth, height: v.videoHeight,
                std: Math.sqrt(sq / n - (sum / n) ** 2),
                buffered: v.buffered.length ? v.buffered.end(0) : 0}; })()""")
    print(
        f"codec {stats['codec']}: {stats['framesPainted']} frames painted, first painted frame "
        f"{stats['firstFrameMs']:.0f} ms after Start, {stats['segments']} segments "
        f"({stats['bytes']} bytes), currentTime {video['time']:.3f} s, "
        f"red std {video['std']:.1f}"
    )
    assert stats["framesPainted"] >= 2  # more than a poster: playback advanced frame by frame
    assert video["time"] > 0 and video["width"] > 0
    assert video["std"] > 1.0, "the last painted frame is blank"
    assert stats["firstFrameMs"] is not None and stats["firstFrameMs"] > 0
    assert page.js("!document.getElementById('video-start').disabled"), "Start stays disabled"

    shot = page.screenshot()
    (tmp_path / "page.png").write_bytes(shot)
    width, height, raw = png_pixels(shot)
    assert width > 300 and height > 300
    assert len(set(raw[: 1 << 20])) > 16, "the screenshot is blank"


def test_page_fills_the_code_hole(page, base_url):
    before, after = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    page.js(f"""document.getElementById('code').value = {json.dumps(before + "<HOLE>" + after)};
        document.getElementById('code-tokens').value = 8;
        document.getElementById('code-seed').value = 3;
        document.getElementById('code-out').dataset.done = '';
        document.getElementById('code-fill').click()""")
    done = "document.getElementById('code-out').dataset.done"
    page.wait(f"{done} || document.getElementById('code-status').textContent.startsWith('Error')",
              timeout=90)  # fmt: skip
    status = page.js("document.getElementById('code-status').textContent")
    assert page.js(done), status
    filled = page.js("document.querySelector('#code-out mark').textContent")
    shown = page.js("document.getElementById('code-out').textContent")
    body = {"prompt": before, "suffix": after, "max_tokens": 8, "seed": 3}
    direct = httpx.post(base_url + "/v1/completions", timeout=90, json=body,
                        headers={"Authorization": "Bearer k-test"})  # fmt: skip
    assert direct.status_code == 200, direct.text
    print(f"page filled {filled!r}; direct request {direct.json()['choices'][0]['text']!r}")
    assert filled == direct.json()["choices"][0]["text"]
    assert shown == before + filled + after


@pytest.fixture(scope="module")
def files(home, tmp_path_factory):
    """A signed PNG (the Stamper), the same PNG with its pixels changed, and a plain file."""
    from mdiff.provenance.stamp import Stamper
    from mdiff.record import GenerationRecord

    d = tmp_path_factory.mktemp("upload")
    st = Stamper(home=home)
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 256, 256, 3), generator=g, dtype=torch.uint8)
    rec = GenerationRecord.create("image", "test-model", prompt="a red disc", seed=1)
    signed = st.save(st.frames(image, rec), d / "signed.png")
    data = bytearray(signed.read_bytes())
    data[-200] ^= 0xFF  # inside the image data: the manifest's hash binding breaks
    tampered = d / "tampered.png"
    tampered.write_bytes(bytes(data))
    plain = d / "notes.txt"
    plain.write_text("nothing signed here\n")
    junk = d / "junk.png"
    junk.write_bytes(b"not a png at all")
    return {"signed": signed, "tampered": tampered, "plain": plain, "junk": junk}


@pytest.mark.parametrize("name", ["signed", "tampered", "plain", "junk"])
def test_page_shows_the_verify_badge(page, files, home, name):
    from mdiff.errors import MdiffError
    from mdiff.provenance.verify import verify

    try:
        expected = verify(files[name], home=home).exit_code
    except MdiffError:  # the CLI's exit 4: the file cannot be read
        expected = 4
    page.js("document.getElementById('badge').dataset.exitCode = ''")
    page.set_files("#verify-file", [files[name]])
    code = page.wait("document.getElementById('badge').dataset.exitCode", timeout=60)
    badge = page.js("[document.getElementById('badge').textContent,"
                    " document.getElementById('badge').className]")  # fmt: skip
    print(f"{name}: badge {badge[0]!r} (exit {code}; verify() says {expected})")
    assert code == str(expected)
    word, tone = BADGES[expected]
    assert badge == [word, f"badge {tone}"]


def test_page_is_labelled_and_fits_a_narrow_screen(page):
    unlabelled = page.js("""[...document.querySelectorAll('input, textarea, select')]
        .filter(e => !e.labels || !e.labels.length).map(e => e.id)""")
    assert unlabelled == []
    page.send("Emulation.setDeviceMetricsOverride",
              {"width": 360, "height": 800, "deviceScaleFactor": 1, "mobile": True})  # fmt: skip
    try:
        overflow = page.js("document.documentElement.scrollWidth")
        assert overflow <= 360, f"the page is {overflow} px wide at a 360 px screen"
    finally:
        page.send("Emulation.clearDeviceMetricsOverride")
