"""Privacy of records (issue 27, point 3): a keyed prompt commitment instead of a plain hash,
the proof of a prompt (by its owner, then by anyone given the opening), no local paths, old
manifests with ``prompt_sha256`` still readable, and record fields checked."""

from __future__ import annotations

import hashlib

import pytest

from mdiff import cli
from mdiff.errors import InvalidInputError
from mdiff.provenance import keys
from mdiff.provenance.inspect import read_manifest
from mdiff.provenance.sign import sign_file
from mdiff.provenance.stamp import Stamper
from mdiff.provenance.verify import verify
from mdiff.record import GenerationRecord, sha256_text

from .media import moving_shapes

PROMPT = "secret project falcon red circle"


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    """The owner's home and one 64² image generated from PROMPT by a local model folder."""
    home = tmp_path_factory.mktemp("owner")
    keys.init_dev_identity(home)
    st = Stamper(home=home)
    model = tmp_path_factory.mktemp("models") / "my-local-model"
    rec = GenerationRecord.create("image", str(model), prompt=PROMPT, seed=4, steps=2,
                                  sizes={"width": 64, "height": 64})  # fmt: skip
    path = tmp_path_factory.mktemp("out") / "falcon.png"
    return home, st.save(st.frames(moving_shapes(1, 64, seed=1), rec), path), model


def test_the_manifest_holds_no_prompt_hash_and_no_local_path(owner):
    home, path, model = owner
    data = path.read_bytes()
    assert hashlib.sha256(PROMPT.encode()).hexdigest().encode() not in data
    assert PROMPT.encode() not in data and str(model.parent).encode() not in data
    record = read_manifest(path, trust=keys.TrustConfig.default(home)).record
    assert record.prompt_sha256 is None and record.model_id == "my-local-model"
    assert set(record.prompt_commitment) == {"scheme", "nonce", "digest"}


def test_the_owner_proves_the_prompt_and_anyone_checks_it_with_the_opening(owner, tmp_path):
    home, path, _ = owner
    mine = verify(path, home=home, prompt=PROMPT)
    assert mine.prompt["matches"] is True and mine.exit_code == 0
    opening = mine.prompt["opening"]
    wrong = verify(path, home=home, prompt="secret project falcon blue circle")
    assert wrong.prompt["matches"] is False and wrong.exit_code == 1
    assert "prompt does not match" in wrong.verdict
    # someone else: no key of the owner's, only the opening the owner handed out
    other = tmp_path / "other-home"
    trust = keys.TrustConfig.default(home)
    theirs = verify(path, home=other, trust=trust, prompt=PROMPT, prompt_opening=opening)
    assert theirs.prompt["matches"] is True and "opening" not in theirs.prompt
    guess = verify(path, home=other, trust=trust, prompt="a red circle", prompt_opening=opening)
    assert guess.prompt["matches"] is False
    blind = verify(path, home=other, trust=trust, prompt=PROMPT)
    assert blind.prompt["matches"] is None and blind.exit_code == 1
    assert not other.exists()  # verifying wrote nothing


def test_the_cli_prints_the_proof(owner, capsys):
    home, path, _ = owner
    assert cli.main(["--home", str(home), "verify", str(path), "--prompt", PROMPT]) == 0
    out = capsys.readouterr().out
    assert "Prompt      MATCHES the manifest's prompt commitment; opening " in out
    code = cli.main(["--home", str(home), "verify", str(path), "--prompt", "other"])
    assert code == 1 and "DOES NOT MATCH" in capsys.readouterr().out


def test_commitments_are_deterministic_per_generation_and_unlinkable_across():
    key = b"k" * 32
    one = GenerationRecord.create("video", "m", prompt=PROMPT, seed=1).commit_prompt(key)
    again = GenerationRecord.create("video", "m", prompt=PROMPT, seed=1).commit_prompt(key)
    other = GenerationRecord.create("video", "m", prompt=PROMPT, seed=2).commit_prompt(key)
    assert one.prompt_commitment == again.prompt_commitment  # same seed, same output
    assert one.prompt_commitment["digest"] != other.prompt_commitment["digest"]
    assert one.pending_prompt is None and PROMPT not in str(one.to_dict())


def test_an_old_manifest_with_a_plain_hash_still_reads_and_checks(tmp_path, dev, media):
    home, identity, trust = dev
    old = GenerationRecord("image", "m", seed=1, prompt_sha256=sha256_text(PROMPT))
    out = sign_file(media["png"], tmp_path / "old.png", old, identity, trust=trust)
    report = verify(out, home=home, trust=trust, prompt=PROMPT, check_watermark=False)
    assert report.manifest.record.prompt_sha256 == sha256_text(PROMPT)
    assert report.prompt == {"how": "prompt SHA-256", "matches": True}


def test_published_record_reduces_local_paths(tmp_path):
    rec = GenerationRecord.create("video", str(tmp_path / "models" / "m1"), seed=1,
                                  inputs=[tmp_path / "in" / "first.png"])  # fmt: skip
    published = rec.to_dict()
    assert published["model_id"] == "m1" and published["inputs"] == ["first.png"]
    assert rec.inputs == (str(tmp_path / "in" / "first.png"),)  # kept for the ingredients
    hub = GenerationRecord.create("video", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert hub.to_dict()["model_id"] == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


@pytest.mark.parametrize("fields", [{"seed": "abc"}, {"steps": -3}, {"seed": 2**64 - 1},
                                    {"sizes": {"frames": 0}}])  # fmt: skip
def test_record_fields_are_checked(fields):
    with pytest.raises(InvalidInputError):
        GenerationRecord.create("video", "m", **fields)
    with pytest.raises(InvalidInputError):  # also when read back from a manifest
        GenerationRecord.from_dict({"modality": "video", "model_id": "m", **fields})


def test_a_stamper_without_a_home_commits_with_the_current_homes_secret(tmp_path, monkeypatch):
    """Its prompt key is read once per home, and a Stamper made without one follows
    ``$MDIFF_HOME`` as it did when the key was read at every commitment."""
    from mdiff.provenance.stamp import Stamper
    from mdiff.record import GenerationRecord

    record = GenerationRecord.create("code", "m", prompt="a private prompt", seed=1)
    monkeypatch.setenv("MDIFF_HOME", str(tmp_path / "a"))
    stamper = Stamper()
    first = stamper.commit(record)
    assert stamper.commit(record) == first  # the same generation, the same commitment
    monkeypatch.setenv("MDIFF_HOME", str(tmp_path / "b"))
    moved = stamper.commit(record)
    assert moved != first and moved == Stamper(home=tmp_path / "b").commit(record)
    assert first == Stamper(home=tmp_path / "a").commit(record)
