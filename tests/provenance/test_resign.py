"""`mdiff sign` on files that are already signed or marked (issue 27, point 2): the original
manifest stays as the ``parentOf`` ingredient, the action is ``c2pa.opened``, the first
watermark stays detectable (it is recorded, not covered by a second one), and the source type
is what the user declares."""

from __future__ import annotations

import shutil

import pytest

from mdiff import cli, media
from mdiff.provenance import keys
from mdiff.provenance.inspect import read_manifest
from mdiff.provenance.manifest import IPTC, TRAINED_AI
from mdiff.provenance.stamp import Stamper
from mdiff.provenance.verify import verify
from mdiff.provenance.watermark import pixel
from mdiff.record import GenerationRecord

from .media import moving_shapes


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    """Two users, A and B, each with an identity and a watermark secret."""
    a, b = tmp_path_factory.mktemp("home-a"), tmp_path_factory.mktemp("home-b")
    keys.init_dev_identity(a, name="signer A")
    keys.init_dev_identity(b, name="signer B")
    return a, b


def both_roots(a, b):
    return keys.TrustConfig.default(a, extra_pems=[(b / "identity" / "root.pem").read_bytes()])


def z_of(home, path) -> float:
    key = keys.watermark_key(keys.default_key_id(home), pixel.SCHEME, keys.master_secret(home))
    frames = media.read_image(path)
    return pixel.PixelWatermark(key).detect(frames, scales=None, velocities=None).z


@pytest.fixture(scope="module")
def by_a(homes, tmp_path_factory):
    """A 256² image generated and signed by A."""
    a, _ = homes
    st = Stamper(home=a)
    rec = GenerationRecord.create("image", "gen-model", prompt="a red disc", seed=3)
    path = tmp_path_factory.mktemp("a") / "a.png"
    return st.save(st.frames(moving_shapes(1, 256, seed=0, contrast=8.0), rec), path)


def test_resigning_keeps_the_original_manifest_and_watermark(homes, by_a, tmp_path):
    a, b = homes
    z_before = z_of(a, by_a)
    out = tmp_path / "b.png"
    assert cli.main(["--home", str(b), "sign", str(by_a), "-o", str(out), "--model", "ed"]) == 0
    # the pixels are not marked again: A's mark is as strong as before (it fell 19.6 -> 6.7)
    assert z_of(a, out) == pytest.approx(z_before) and z_before >= 8
    assert bool((media.read_image(out) == media.read_image(by_a)).all())
    m = read_manifest(out, trust=both_roots(a, b))
    assert m.state == "trusted" and m.action == "c2pa.opened"
    assert m.signer[0][0] == "signer B"
    (parent,) = m.ingredients
    assert parent.relationship == "parentOf" and parent.title == "a.png"
    assert parent.state in ("valid", "trusted")  # A's manifest, kept with its validation
    assert m.record.parent == "a.png" and m.record.model_id == "ed"
    original = read_manifest(by_a, trust=both_roots(a, b)).record.watermark
    wm = m.record.watermark
    assert (wm.key_id, wm.payload_hex) == (original.key_id, original.payload_hex)
    assert wm.params["inherited"] is True
    assert m.digital_source_type == TRAINED_AI  # declared by the parent, which validates
    # A's verifier finds A's mark with the payload the new manifest names
    report = verify(out, home=a, trust=both_roots(a, b))
    assert report.exit_code == 0 and report.watermark["detected"]
    assert report.payload_matches_manifest is True


def test_verify_tries_every_key_in_the_ring(homes, by_a, tmp_path):
    a, b = homes
    out = tmp_path / "b.png"
    assert cli.main(["--home", str(b), "sign", str(by_a), "-o", str(out)]) == 0
    ring_b = tmp_path / "home-b-ring"
    shutil.copytree(b, ring_b)
    missing = verify(out, home=ring_b, trust=both_roots(a, b))
    assert missing.watermark["checked"] is False and "key ring" in missing.watermark["reason"]
    (ring_b / "keyring").mkdir()
    shutil.copy(a / "watermark.secret", ring_b / "keyring" / "colleague-a.secret")
    assert list(keys.keyring(ring_b)) == [keys.default_key_id(b), keys.default_key_id(a)]
    found = verify(out, home=ring_b, trust=both_roots(a, b))
    assert found.watermark["detected"] and found.watermark["key_id"] == keys.default_key_id(a)
    # a stripped copy (no manifest): every key is tried, and the bound counts them
    stripped = media.write_image(media.read_image(out)[0], tmp_path / "stripped.png")
    blind = verify(stripped, home=ring_b)
    assert blind.exit_code == 1 and blind.watermark["key_id"] == keys.default_key_id(a)
    assert blind.watermark["keys_tried"] == 2


def test_a_stripped_file_marked_by_a_key_of_the_ring_is_not_marked_again(homes, by_a, tmp_path):
    a, _ = homes
    stripped = media.write_image(media.read_image(by_a)[0], tmp_path / "stripped.png")
    assert read_manifest(stripped).state == "absent"
    out = tmp_path / "again.png"
    assert cli.main(["--home", str(a), "sign", str(stripped), "-o", str(out)]) == 0
    assert bool((media.read_image(out) == media.read_image(stripped)).all())
    m = read_manifest(out, trust=keys.TrustConfig.default(a))
    assert m.record.watermark.params["inherited"] and m.record.watermark.key_id == (
        keys.default_key_id(a)
    )
    assert m.digital_source_type is None and not m.ai_generated  # origin not declared


SOURCES = [  # (--source-type or None, the IPTC term in the manifest or None)
    (None, None),
    ("human", "digitalCreation"),
    ("trained", "trainedAlgorithmicMedia"),
    ("capture", "digitalCapture"),
]


@pytest.mark.parametrize("choice, term", SOURCES, ids=[str(c) for c, _ in SOURCES])
def test_source_type_is_the_users_choice(homes, tmp_path, choice, term):
    a, _ = homes
    notes = tmp_path / "notes.txt"
    notes.write_text("my hand-written notes\n", encoding="utf-8")
    flags = ["--source-type", choice] if choice else []
    assert cli.main(["--home", str(a), "sign", str(notes), *flags]) == 0
    m = read_manifest(notes, trust=keys.TrustConfig.default(a))
    assert m.state == "trusted" and m.action == "c2pa.opened"
    assert m.digital_source_type == (IPTC + term if term else None)
    assert m.ai_generated is (choice == "trained")  # never claimed by default
    (parent,) = m.ingredients
    assert parent.relationship == "parentOf" and parent.state == "absent"


def test_an_unsigned_image_gets_a_new_watermark(homes, tmp_path):
    a, _ = homes
    theirs = media.write_image(moving_shapes(1, 256, seed=5, contrast=8.0)[0], tmp_path / "t.png")
    assert cli.main(["--home", str(a), "sign", str(theirs)]) == 0
    out = tmp_path / "t-signed.png"
    m = read_manifest(out, trust=keys.TrustConfig.default(a))
    assert "inherited" not in m.record.watermark.params and z_of(a, out) >= 8
    assert verify(out, home=a).exit_code == 0


def test_resigning_a_signed_text_file_in_place_keeps_its_sidecar_as_parent(homes, tmp_path):
    a, b = homes
    code = tmp_path / "tool.py"
    code.write_text("print('hi')\n", encoding="utf-8")
    assert cli.main(["--home", str(a), "sign", str(code), "--source-type", "human"]) == 0
    assert cli.main(["--home", str(b), "sign", str(code)]) == 0
    assert code.read_text(encoding="utf-8") == "print('hi')\n"
    m = read_manifest(code, trust=both_roots(a, b))
    assert m.state == "trusted" and m.signer[0][0] == "signer B"
    (parent,) = m.ingredients
    assert parent.relationship == "parentOf" and parent.state in ("valid", "trusted")
    assert m.digital_source_type == IPTC + "digitalCreation"  # inherited from A's manifest
