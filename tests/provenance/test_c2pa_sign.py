"""Signing, reading back, the tamper matrix, ingredients and bad-input errors."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import pytest

from mdiff.errors import InvalidInputError
from mdiff.provenance.inspect import read_manifest, read_stream
from mdiff.provenance.keys import TrustConfig
from mdiff.provenance.manifest import COMPOSITE_AI, TRAINED_AI, build_manifest
from mdiff.provenance.sign import mime_of, sign_file, sign_sidecar
from mdiff.record import GenerationRecord

FLIPS = 100
HASH_CODE = {"png": "assertion.dataHash.mismatch", "jpeg": "assertion.dataHash.mismatch",
             "mp4": "assertion.bmffHash.mismatch", "fmp4": "assertion.bmffHash.mismatch",
             "text": "assertion.dataHash.mismatch"}  # fmt: skip
MIME = {"png": "image/png", "jpeg": "image/jpeg", "mp4": "video/mp4", "fmp4": "video/mp4",
        "text": "text/plain"}  # fmt: skip


# ---- where the media payload lives (byte ranges [start, end) that hold pixels / samples) ----
def _png_idat(data: bytes) -> list[tuple[int, int]]:
    spans, off = [], 8  # after the 8-byte signature: [len:4][type:4][data][crc:4] chunks
    while off < len(data):
        n, kind = struct.unpack(">I4s", data[off : off + 8])
        if kind == b"IDAT":
            spans.append((off + 8, off + 8 + n))
        off += 12 + n
    return spans


def _jpeg_scan(data: bytes) -> list[tuple[int, int]]:
    off = 2  # after SOI: [FF xx][len:2] segments until SOS, then entropy-coded data to EOI
    while data[off] == 0xFF:
        marker, n = data[off + 1], struct.unpack(">H", data[off + 2 : off + 4])[0]
        if marker == 0xDA:
            return [(off + 2 + n, len(data) - 2)]
        off += 2 + n
    raise AssertionError("no SOS marker")


def _mp4_mdat(data: bytes) -> list[tuple[int, int]]:
    spans, off = [], 0  # top-level ISO BMFF boxes: [size:4][type:4][payload]
    while off < len(data):
        n, kind = struct.unpack(">I4s", data[off : off + 8])
        if kind == b"mdat":
            spans.append((off + 8, off + n))
        off += n
    return spans


PAYLOAD = {"png": _png_idat, "jpeg": _jpeg_scan, "mp4": _mp4_mdat, "fmp4": _mp4_mdat,
           "text": lambda d: [(0, len(d))]}  # fmt: skip


@pytest.fixture(scope="module")
def signed(dev, media, tmp_path_factory):
    """kind -> (asset bytes, sidecar bytes or None), each signed once for the module."""
    _, identity, trust = dev
    rec = GenerationRecord.create("video", "tamper-test-model", prompt="p", seed=1)
    d, out = tmp_path_factory.mktemp("signed"), {}
    for kind, src in media.items():
        dst = d / src.name
        dst.write_bytes(src.read_bytes())
        if kind == "text":
            side = sign_sidecar(dst, rec, identity, trust=trust)
            out[kind] = (dst.read_bytes(), side.read_bytes())
        else:
            out[kind] = (sign_file(dst, None, rec, identity, trust=trust).read_bytes(), None)
    return out


def _read(kind, data, manifest, trust):
    return read_stream(io.BytesIO(data), MIME[kind], manifest_data=manifest, trust=trust)


@pytest.mark.parametrize("kind", list(MIME))
def test_tamper_matrix(kind, signed, dev, tmp_path):
    trust = dev[2]
    data, side = signed[kind]
    assert _read(kind, data, side, trust).state == "trusted"
    rng = random.Random(1234)
    spans = PAYLOAD[kind](data)
    assert sum(e - s for s, e in spans) > 500
    for _ in range(FLIPS):  # one random bit inside pixel / sample data
        start, end = rng.choice(spans)
        pos, bit = rng.randrange(start, end), rng.randrange(8)
        bad = bytearray(data)
        bad[pos] ^= 1 << bit
        report = _read(kind, bytes(bad), side, trust)
        assert report.state == "invalid", (pos, bit)
        assert HASH_CODE[kind] in report.failure_codes(), (pos, bit, report.failures)
    # one byte inside the org.mdiff.generation assertion (in the sidecar for text)
    holder = bytearray(side if side is not None else data)
    pos = bytes(holder).index(b"tamper-test-model") + 3
    holder[pos] ^= 0x20
    if side is None:
        report = _read(kind, bytes(holder), None, trust)
    else:
        report = _read(kind, data, bytes(holder), trust)
    assert report.state == "invalid"
    assert "assertion.hashedURI.mismatch" in report.failure_codes()
    appended = _read(kind, data + b"\x00tail", side, trust)
    assert appended.state == "invalid" and HASH_CODE[kind] in appended.failure_codes()
    stripped = _strip(kind, data, tmp_path)
    if kind == "text":
        assert read_manifest(stripped, trust=trust).state == "absent"  # sidecar not copied
    else:
        assert _read(kind, stripped, None, trust).state == "absent"


def _strip(kind: str, data: bytes, tmp_path: Path):
    """Decode + re-encode (images), stream-copy remux (video) or copy without sidecar (text)."""
    if kind in ("png", "jpeg"):
        from PIL import Image

        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buf, format="PNG" if kind == "png" else "JPEG")
        return buf.getvalue()
    if kind == "text":
        path = tmp_path / "copy.py"
        path.write_bytes(data)
        return path
    import av

    buf = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(buf, "w", format="mp4") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    return buf.getvalue()


def test_report_contents_roundtrip(tmp_path, dev, media, record):
    _, identity, trust = dev
    out = sign_file(media["mp4"], tmp_path / "gen.mp4", record, identity, trust=trust)
    assert mime_of(out) == "video/mp4" and out.stat().st_mode & 0o777 == (
        media["mp4"].stat().st_mode & 0o777
    )
    r = read_manifest(out, trust=trust)
    assert r.state == "trusted" and r.failures == [] and r.title == "gen.mp4"
    assert r.record == record
    assert r.ai_generated and r.digital_source_type == TRAINED_AI
    assert r.claim_generator.startswith("mdiff ")
    assert r.soft_binding["scheme"] == "mdiff-pixel-v1" and r.soft_binding["payload"] == "a1b2c3d4"
    assert r.signer == [("mdiff development signer", "mdiff dev intermediate CA"),
                        ("mdiff dev intermediate CA", "mdiff dev root CA")]  # fmt: skip
    assert r.alg and r.timestamp is None
    assert "mdiff.timestamp.missing" in {c for c, _ in r.warnings}
    d = r.to_dict()
    assert d["record"]["watermark"]["payload_hex"] == "a1b2c3d4" and d["state"] == "trusted"


def test_manifest_definition(record):
    m = build_manifest(record, title="x.png", mime="image/png", ingredient_titles=["in.png"])
    by_label = {a["label"]: a["data"] for a in m["assertions"]}
    actions = by_label["c2pa.actions.v2"]["actions"]
    assert [a["action"] for a in actions] == ["c2pa.created", "c2pa.watermarked"]
    assert actions[0]["digitalSourceType"] == TRAINED_AI
    assert actions[0]["parameters"]["ingredientIds"] == ["mdiff-input-0"]
    entries = by_label["cawg.training-mining"]["entries"]
    assert entries["cawg.ai_generative_training"]["use"] == "notAllowed"
    assert by_label["c2pa.soft-binding"]["blocks"][0]["value"] == "a1b2c3d4"
    edited = GenerationRecord.create("image", "m", edited=True)
    m2 = build_manifest(edited, title="y.png", mime="image/png")
    labels = [a["label"] for a in m2["assertions"]]
    assert "c2pa.soft-binding" not in labels
    act = m2["assertions"][0]["data"]["actions"]
    assert [a["action"] for a in act] == ["c2pa.created", "c2pa.edited"]
    assert {a["digitalSourceType"] for a in act} == {COMPOSITE_AI}


@pytest.mark.parametrize("keep", [False, True])
def test_prompt_is_committed_unless_kept(keep, tmp_path, dev, media):
    import hashlib

    _, identity, trust = dev
    prompt = "my very private prompt 8812"
    rec = GenerationRecord.create("image", "m", prompt=prompt, keep_prompt=keep)
    committed = rec.commit_prompt(b"k" * 32)
    out = sign_file(media["png"], tmp_path / "o.png", committed, identity, trust=trust)
    data = out.read_bytes()
    assert (prompt.encode() in data) is keep
    assert hashlib.sha256(prompt.encode()).hexdigest().encode() not in data
    r = read_manifest(out, trust=trust)
    assert r.record.prompt_commitment == committed.prompt_commitment
    assert r.record.prompt_sha256 is None
    assert (r.record.prompt == prompt) is keep
    # a record signed without a commitment (no Stamper, no key) publishes nothing of the prompt
    bare = sign_file(media["png"], tmp_path / "bare.png", rec, identity, trust=trust)
    assert read_manifest(bare, trust=trust).record.prompt_commitment is None


def test_tampered_ingredient_is_flagged_but_output_trusted(tmp_path, dev, media, record):
    _, identity, trust = dev
    good = sign_file(media["png"], tmp_path / "good.png", record, identity, trust=trust)
    data = bytearray(good.read_bytes())
    start, end = _png_idat(bytes(data))[0]
    data[(start + end) // 2] ^= 0x04
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    rec = GenerationRecord.create("video", "m", inputs=[good, bad, media["text"]], edited=True)
    out = sign_file(media["mp4"], tmp_path / "v.mp4", rec, identity, trust=trust)
    r = read_manifest(out, trust=trust)
    assert r.state == "trusted" and r.digital_source_type == COMPOSITE_AI
    states = {i.title: i for i in r.ingredients}
    assert states["good.png"].state == "trusted" and states["good.png"].relationship == "inputTo"
    assert states["bad.png"].state == "invalid"
    assert "assertion.dataHash.mismatch" in {c for c, _ in states["bad.png"].failures}
    assert states["in.py"].state == "absent"
    assert r.record.inputs == ("good.png", "bad.png", "in.py")  # names only, no directories


def test_in_place_and_sidecar_lookup(tmp_path, dev, media, record):
    _, identity, trust = dev
    path = tmp_path / "clip.mp4"
    path.write_bytes(media["fmp4"].read_bytes())
    assert read_manifest(path, trust=trust).state == "absent"
    assert sign_file(path, record=record, identity=identity, trust=trust) == path
    assert read_manifest(path, trust=trust).state == "trusted"
    import av

    with av.open(str(path)) as c:  # the signed fragmented MP4 still decodes completely
        assert sum(1 for _ in c.decode(video=0)) == 12
    code = tmp_path / "code.py"
    code.write_text("x = 1\n")
    side = sign_sidecar(code, record, identity, trust=trust, title="final.py")
    assert side == tmp_path / "code.py.c2pa"
    report = read_manifest(code, trust=trust)
    assert report.sidecar == str(side) and report.title == "final.py"
    moved = side.rename(tmp_path / "elsewhere.c2pa")
    assert read_manifest(code, sidecar=moved, trust=trust).state == "trusted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "code.py", "elsewhere.c2pa"]


def test_bad_inputs_give_documented_errors(tmp_path, dev, media, record):
    _, identity, trust = dev
    with pytest.raises(InvalidInputError, match="no such file"):
        read_manifest(tmp_path / "missing.png", trust=trust)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty"):
        read_manifest(tmp_path / "empty.png", trust=trust)
    signed = sign_file(media["png"], tmp_path / "s.png", record, identity, trust=trust)
    (tmp_path / "trunc.png").write_bytes(signed.read_bytes()[:200])
    with pytest.raises(InvalidInputError, match="corrupt"):
        read_manifest(tmp_path / "trunc.png", trust=trust)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(InvalidInputError, match="corrupt"):
        read_manifest(tmp_path / "junk.png", trust=trust)
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InvalidInputError, match="unsupported"):
        read_manifest(tmp_path / "blob.bin", trust=trust)
    with pytest.raises(InvalidInputError, match="no such file"):
        read_manifest(signed, sidecar=tmp_path / "nope.c2pa", trust=trust)
    with pytest.raises(InvalidInputError, match="sign_sidecar"):
        sign_file(media["text"], tmp_path / "t.py", record, identity, trust=trust)
    with pytest.raises(InvalidInputError, match="GenerationRecord"):
        sign_file(media["png"], tmp_path / "x.png", None, identity, trust=trust)
    with pytest.raises(InvalidInputError, match="folder"):
        sign_file(media["png"], tmp_path / "no" / "x.png", record, identity, trust=trust)
    with pytest.raises(InvalidInputError, match="PEM"):
        TrustConfig([b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
    assert not (tmp_path / "t.py").exists() and not (tmp_path / "x.png").exists()


def test_mime_detection_is_by_content(tmp_path, media):
    disguised = tmp_path / "photo.mp4"
    disguised.write_bytes(media["png"].read_bytes())
    assert mime_of(disguised) == "image/png"
    assert mime_of(media["jpeg"]) == "image/jpeg"
    assert mime_of(media["fmp4"]) == "video/mp4"
    assert mime_of(media["text"]) == "text/plain"


# ---- the tamper matrix through `verify`: the verdict and its exit code -----------------------
# (kind, where the bit is flipped, expected exit code): the manifest decides, whether or not the
# pixels still decode (a first media byte of a fragmented MP4 or a PNG's first IDAT bytes break
# decoding; the verdict must stay "tampered", exit 2, never "unreadable", exit 4)
VERDICTS = [
    ("png", "first IDAT byte", 2),
    ("png", "middle of IDAT", 2),
    ("jpeg", "middle of the scan", 2),
    ("mp4", "middle of mdat", 2),
    ("fmp4", "first byte of the first media block", 2),
    ("fmp4", "second byte of the first media block", 2),
    ("text", "one character", 2),
    ("png", "bytes appended", 2),
]


@pytest.mark.parametrize("kind, where, code", VERDICTS, ids=[f"{k}: {w}" for k, w, _ in VERDICTS])
def test_tamper_matrix_verdicts(kind, where, code, signed, dev, tmp_path):
    from mdiff.provenance.verify import verify

    home, _, trust = dev
    data, side = signed[kind]
    start, end = PAYLOAD[kind](data)[0]
    pos = {"first": start, "second": start + 1, "middle": (start + end) // 2,
           "one": start + 3, "bytes": None}[where.split()[0]]  # fmt: skip
    bad = bytearray(data) + (b"\x00tail" if pos is None else b"")
    if pos is not None:
        bad[pos] ^= 0x01
    path = tmp_path / ("bad" + {"png": ".png", "jpeg": ".jpg", "text": ".py"}.get(kind, ".mp4"))
    path.write_bytes(bytes(bad))
    if side is not None:
        path.with_name(path.name + ".c2pa").write_bytes(side)
    report = verify(path, home=home, trust=trust)
    assert report.exit_code == code and report.verdict.startswith("TAMPERED"), report.format()
    assert HASH_CODE[kind] in report.manifest.failure_codes()
