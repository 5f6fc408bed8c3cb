"""End to end: Stamper → file → verify, the verdicts and exit codes, and the CLI commands."""

import dataclasses
import json
import os

import pytest
import torch

from mdiff import cli, media
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.provenance import keys
from mdiff.provenance.stamp import Stamped, Stamper, payload_of
from mdiff.provenance.verify import verify
from mdiff.provenance.watermark.pixel import MotionTrack
from mdiff.record import GenerationRecord

from .media import moving_shapes


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("mdiff-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MDIFF_HOME", str(path))
        keys.init_dev_identity(path)
        yield path


def clip(frames=12, size=256, seed=0):
    """Moving shapes over a panning texture (the watermark is robust from 256 px up)."""
    return moving_shapes(frames, size, seed=seed, contrast=8.0)


def record(modality, **kw):
    return GenerationRecord.create(modality, "test-model", prompt="a red disc", seed=1, **kw)


@pytest.fixture(scope="module")
def signed(home, tmp_path_factory):
    """One signed PNG, MP4 and text file made through the Stamper."""
    d = tmp_path_factory.mktemp("signed")
    st = Stamper(home=home)
    files = {
        "png": st.save(st.frames(clip(1), record("image")), d / "image.png"),
        "mp4": st.save(st.frames(clip(12), record("video"), fps=8), d / "clip.mp4"),
        "txt": st.save(st.text("def f():\n    return 1\n", record("code"), None), d / "f.py"),
    }
    return files


@pytest.mark.parametrize("kind", ["png", "mp4"])
def test_stamped_media_verifies_intact_with_matching_watermark(signed, home, kind):
    report = verify(signed[kind], home=home)
    assert report.manifest.state == "trusted"
    assert report.watermark["detected"] and report.watermark["z"] >= 8
    assert report.payload_matches_manifest is True
    assert report.exit_code == 0 and report.verdict == "AI-generated, provenance intact"
    assert report.manifest.record.prompt is None  # the raw prompt never reaches the file


def test_text_sidecar_verifies_and_says_why_the_watermark_was_not_checked(signed, home):
    assert signed["txt"].with_name("f.py.c2pa").is_file()
    report = verify(signed["txt"], home=home)
    assert report.manifest.state == "trusted" and report.exit_code == 0
    assert report.watermark["checked"] is False


def _word_tokenizer(directory):
    """A small byte-level BPE saved as ``directory/tokenizer.json`` (a model's tokenizer), and
    its ids that are whole space-prefixed words: any sequence of them re-tokenizes to itself."""
    import sysconfig
    from pathlib import Path

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:30]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=1024, show_progress=False, initial_alphabet=alphabet)
    tok.train_from_iterator([p.read_text(encoding="utf-8") for p in stdlib], trainer)
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))
    words = []
    for i in range(tok.get_vocab_size()):
        text = tok.decode([i])
        if text[:1] == " " and text[1:].isalpha() and tok.encode(text).ids == [i]:
            words.append(i)
    return tok, words


def test_text_watermark_checked_with_the_models_tokenizer_on_generated_spans(home, tmp_path):
    tok, words = _word_tokenizer(tmp_path / "code-model")
    vocab = tok.get_vocab_size()
    st = Stamper(home=home)
    wm = st.text_watermark(vocab)
    gen = torch.Generator().manual_seed(0)
    ids = [words[0]]
    for _ in range(250):  # a "sampler" whose every choice is green for its left neighbour
        cand = torch.tensor(words)[torch.randperm(len(words), generator=gen)]
        green = wm.green(torch.full_like(cand, ids[-1]), cand)
        ids.append(int(cand[green.nonzero()[0, 0]]))
    middle = tok.decode(ids)
    prefix, suffix = "# written by a person\nx = 1\n", "\nprint(x)\n" * 40
    content = prefix + middle + suffix
    spans = [[len(prefix), len(prefix) + len(middle)]]
    extra = {"vocab_size": vocab, "generated_spans": spans}
    rec = GenerationRecord.create("code", str(tmp_path / "code-model"), seed=1, extra=extra)
    path = st.save(st.text(content, rec, wm), tmp_path / "done.py")
    # the manifest names a local model by its folder's name only: give the folder to verify
    unnamed = verify(path, home=home)
    assert unnamed.manifest.record.model_id == "code-model"
    assert str(tmp_path).encode() not in path.with_name("done.py.c2pa").read_bytes()
    assert unnamed.watermark["checked"] is False and "--model" in unnamed.watermark["reason"]
    report = verify(path, home=home, model=tmp_path / "code-model")
    assert report.manifest.state == "trusted" and report.exit_code == 0
    assert report.watermark["detected"] and report.watermark["scored"] == "generated spans"
    assert report.watermark["z"] >= 8
    # the person's lines dilute the score when the whole file is read with the tokenizer
    whole = verify(path, home=home, tokenize=lambda s: tok.encode(s).ids)
    assert whole.watermark["scored"] == "generated spans"  # a given tokenizer changes nothing
    path.with_name("done.py.c2pa").unlink()  # the manifest stripped: the mark still tells
    stripped = verify(path, home=home, model=tmp_path / "code-model")  # (its vocabulary: the
    assert stripped.watermark["detected"] and stripped.watermark["scored"] == "whole file"
    assert stripped.exit_code == 1 and "provenance stripped" in stripped.verdict  # model's)
    unnamed = verify(path, home=home)  # no manifest, no model: say so, not "no watermark"
    assert unnamed.exit_code == 3 and "the watermark was not checked" in unnamed.verdict
    unknown = dataclasses.replace(rec, model_id="no-such-model")
    path2 = st.save(st.text(content, unknown, wm), tmp_path / "other.py")
    assert verify(path2, home=home).watermark["reason"].startswith("text needs")


def test_a_completion_too_short_for_the_text_mark_is_not_checked(home, tmp_path):
    tok, words = _word_tokenizer(tmp_path / "code-model")
    st = Stamper(home=home)
    wm = st.text_watermark(tok.get_vocab_size())
    prefix, middle = "x = 1\n", tok.decode(words[:12])
    extra = {"vocab_size": tok.get_vocab_size(),
             "generated_spans": [[len(prefix), len(prefix) + len(middle)]]}  # fmt: skip
    rec = GenerationRecord.create("code", str(tmp_path / "code-model"), seed=1, extra=extra)
    path = st.save(st.text(prefix + middle + "\n", rec, wm), tmp_path / "short.py")
    report = verify(path, home=home, model=tmp_path / "code-model")
    assert report.exit_code == 0 and report.watermark["checked"] is False
    assert report.watermark["reason"].startswith(f"only {report.watermark['n_scored']} tokens")
    assert report.watermark["n_scored"] < 50 and not report.notes


def test_tampered_pixels_read_invalid(signed, home, tmp_path):
    data = bytearray(signed["mp4"].read_bytes())
    mdat = data.find(b"mdat")
    data[mdat + 200] ^= 0x10
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    report = verify(bad, home=home)
    assert report.manifest.state == "invalid" and report.exit_code == 2
    assert report.verdict.startswith("TAMPERED")


def test_stripped_manifest_with_watermark_is_flagged(signed, home, tmp_path):
    frames, fps = media.read_video_head(signed["mp4"])
    stripped = media.write_mp4(frames, tmp_path / "reencoded.mp4", fps=fps, crf=23)
    report = verify(stripped, home=home)
    assert report.manifest.state == "absent" and report.watermark["detected"]
    assert report.exit_code == 1 and "provenance stripped" in report.verdict


def test_image_reencoded_as_jpeg_keeps_the_watermark(signed, home, tmp_path):
    frame = media.read_image(signed["png"])[0]
    jpeg = media.write_image(frame, tmp_path / "copy.jpg", quality=90)
    report = verify(jpeg, home=home)
    assert report.manifest.state == "absent" and report.watermark["detected"]
    assert report.watermark["payload_hex"] == report_payload(signed["png"], home)
    assert report.exit_code == 1


def report_payload(path, home):
    return verify(path, home=home).manifest.record.watermark.payload_hex


def test_unmarked_unsigned_file_is_nothing_found(home, tmp_path):
    path = media.write_image(clip(1)[0], tmp_path / "plain.png")
    report = verify(path, home=home)
    assert report.manifest.state == "absent" and not report.watermark["detected"]
    assert report.exit_code == 3


def test_untrusted_signer_is_a_warning(signed, home):
    report = verify(signed["png"], home=home, trust=keys.TrustConfig([]))
    assert report.manifest.state == "valid" and report.exit_code == 1
    assert "not trusted" in report.verdict


def test_payload_is_stable_per_record_and_differs_between_records():
    assert payload_of(record("video")) == payload_of(record("video"))
    assert payload_of(record("video")) != payload_of(record("video", steps=3))


def test_only_stamped_outputs_can_be_saved(home, tmp_path):
    st = Stamper(home=home)
    forged = Stamped(record("image"), frames=clip(1))
    with pytest.raises(InvalidInputError, match="only outputs returned by Stamper"):
        st.save(forged, tmp_path / "x.png")
    with pytest.raises(InvalidInputError):
        st.save(st.frames(clip(3), record("video")), tmp_path / "x.png")  # 3 frames as an image
    with pytest.raises(InvalidInputError):
        st.save(st.frames(clip(1), record("image")), tmp_path / "x.txt")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_signing_failure_leaves_no_file(home, tmp_path):
    ident = keys.Identity.load(home)
    production = dataclasses.replace(ident, production=True, tsa_url=None)
    st = Stamper(production, home=home)
    with pytest.raises(Exception, match="(?i)TSA|timestamp"):
        st.save(st.frames(clip(1), record("image")), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- CLI


def test_cli_verify_json_schema_and_exit_code(signed, home, capsys):
    code = cli.main(["--home", str(home), "verify", "--json", str(signed["png"])])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["exit_code"] == 0 and out["schema"] == "mdiff-verify/1"
    assert set(out) >= {"file", "kind", "manifest", "watermark", "verdict", "notes"}
    assert out["manifest"]["state"] == "trusted" and out["watermark"]["detected"] is True


def test_cli_verify_human_report(signed, home, capsys):
    assert cli.main(["--home", str(home), "verify", str(signed["mp4"])]) == 0
    text = capsys.readouterr().out
    assert "C2PA        TRUSTED" in text and "Watermark   DETECTED" in text
    assert text.strip().endswith("Verdict     AI-generated, provenance intact")


@pytest.mark.parametrize("name, content", [
    ("missing.png", None), ("empty.png", b""), ("corrupt.png", b"\x89PNG\r\n\x1a\nnot really"),
    ("table.xlsx", b"PK\x03\x04"), ("broken.mp4", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 40),
])  # fmt: skip
def test_cli_verify_unreadable_files_give_one_line_and_code_4(
    home, tmp_path, capsys, name, content
):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["--home", str(home), "verify", str(path)]) == 4
    err = capsys.readouterr().err
    assert err.startswith("mdiff: error:") and err.count("\n") == 1


def test_cli_verify_usage_error_is_code_4():
    with pytest.raises(SystemExit) as exc:
        cli.main(["verify", "--bogus"])
    assert exc.value.code == 4


def test_cli_sign_existing_files(home, tmp_path, capsys):
    image = media.write_image(clip(1)[0], tmp_path / "theirs.png")
    assert cli.main(["--home", str(home), "sign", str(image)]) == 0
    signed = tmp_path / "theirs-signed.png"
    report = verify(signed, home=home)
    assert report.exit_code == 0 and report.watermark["detected"]
    video = media.write_mp4(clip(10), tmp_path / "theirs.mp4", fps=10)
    assert cli.main(["--home", str(home), "sign", str(video), "-o", str(tmp_path / "v.mp4")]) == 0
    report = verify(tmp_path / "v.mp4", home=home)
    assert report.exit_code == 0 and report.watermark["detected"]
    assert report.manifest.record.sizes["frames"] == 10
    code = tmp_path / "tool.py"
    code.write_text("print('hi')\n")
    assert cli.main(["--home", str(home), "sign", str(code)]) == 0
    assert code.read_text() == "print('hi')\n" and verify(code, home=home).exit_code == 0


def test_cli_keys_init_refuses_to_overwrite(tmp_path, capsys):
    assert cli.main(["--home", str(tmp_path), "keys", "init"]) == 0
    key = tmp_path / "identity" / "signer.key"
    assert key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    assert cli.main(["--home", str(tmp_path), "keys", "init"]) == cli.EXIT_ERROR
    assert "force" in capsys.readouterr().err and key.read_bytes() == before
    assert cli.main(["--home", str(tmp_path), "keys", "init", "--force"]) == 0
    assert key.read_bytes() != before


def test_stamped_pieces_with_one_track_equal_the_whole_clip(home):
    """A stream stamps chunk by chunk; with one MotionTrack the mark keeps following a panning
    camera, so the pieces equal the clip stamped at once (and differ without the track)."""
    st, rec = Stamper(home=home), record("video")
    x = moving_shapes(20, 256, seed=2, pan=1.0, contrast=8.0)
    whole = st.frames(x, rec).frames
    track = MotionTrack()
    parts = st.join([st.frames(x[:10], rec, track=track), st.frames(x[10:], rec, track=track)])
    assert torch.equal(parts.frames, whole)
    restarted = st.join([st.frames(x[:10], rec), st.frames(x[10:], rec)])
    assert not torch.equal(restarted.frames, whole)


# ------------------------------------------------------------ one rule, read-only, permissions


@pytest.mark.parametrize("seed", range(4))
def test_a_payload_is_reported_only_with_a_detection(seed):
    """Weak marks (α 0.6) that do not decode blindly: without the expected payload nothing is
    detected and no payload is shown; with it, the whole mark decides detection and payload
    together; an unmarked frame stays undetected either way."""
    from mdiff.provenance.watermark.pixel import PixelWatermark

    wm, payload = PixelWatermark(b"k" * 32, alpha=0.6), 0x1234ABCD
    x = moving_shapes(1, 128, seed=seed, contrast=8.0)
    marked = wm.embed(x, payload)
    fast = {"scales": None, "velocities": None}
    for found in (wm.detect(marked, **fast), wm.detect(x, expected=payload, **fast)):
        assert (found.payload is not None) == found.detected
    known = wm.detect(marked, expected=payload, **fast)
    assert known.detected and known.payload == payload and known.z >= 8
    assert not wm.detect(x, expected=payload, **fast).detected


def test_streamed_mp4_verdict_table_json_and_exit_code_agree(tmp_path, capsys):
    """The README's `stream_to` example (built-in shapes model, 64², few steps): whatever the
    detector finds, the table, the JSON, the verdict and the exit code say the same."""
    from mdiff.video import VideoPipeline

    home = tmp_path / "home"
    keys.init_dev_identity(home)
    pipe = VideoPipeline.from_pretrained("shapes-t2v", stamper=Stamper(home=home))
    path = tmp_path / "live.mp4"
    pipe.stream_to(path, "a yellow triangle moving up", seed=0, steps=4)
    code = cli.main(["--home", str(home), "verify", str(path)])
    table = capsys.readouterr().out
    assert cli.main(["--home", str(home), "verify", "--json", str(path)]) == code
    out = json.loads(capsys.readouterr().out)
    wm, declared = out["watermark"], out["manifest"]["record"]["watermark"]["payload_hex"]
    assert code == out["exit_code"] == 0 and out["manifest"]["state"] == "trusted"
    if wm["detected"]:
        assert "Watermark   DETECTED" in table and wm["payload_hex"] == declared
        assert out["payload_matches_manifest"] is True
        assert out["verdict"] == "AI-generated, provenance intact"
    else:
        assert "Watermark   NOT DETECTED" in table and wm["payload"] is None
        assert "payload_hex" not in wm and "not detected" in out["verdict"]
    assert table.strip().endswith(out["verdict"])


def test_verify_is_read_only(signed, tmp_path):
    missing = tmp_path / "no-home"
    report = verify(signed["png"], home=missing)
    assert report.manifest.state == "valid"  # our root is not known there: untrusted
    assert report.watermark["checked"] is False and not missing.exists()


def test_home_and_identity_are_private_under_umask_000(tmp_path):
    import os

    old = os.umask(0)
    try:
        home = tmp_path / "new" / "mdiff"
        keys.init_dev_identity(home)
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(home) == mode(home.parent) == mode(home / "identity") == 0o700
    assert mode(home / "identity" / "signer.key") == mode(home / "watermark.secret") == 0o600


def test_a_model_named_for_the_text_mark_must_be_found_and_readable(home, tmp_path):
    path = tmp_path / "plain.py"
    path.write_text("x = 1\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="no-such-model"):
        verify(path, home=home, model="no-such-model")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        verify(path, home=home, model=bare)
    (bare / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match="cannot be read as a tokenizer"):
        verify(path, home=home, model=bare)
    with pytest.raises(InvalidInputError, match="is a folder"):
        verify(tmp_path, home=home)
    assert verify(path, home=home).exit_code == 3  # no model named: nothing to find, no error


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_pipe_or_a_dangling_link_is_named_for_what_it_is(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")  # a loop
    for name, words in [("pipe", "is not a regular file"), ("a", "is a link to nothing"),
                        ("gone", "no such file")]:  # fmt: skip
        with pytest.raises(InvalidInputError, match=words):
            verify(tmp_path / name)
