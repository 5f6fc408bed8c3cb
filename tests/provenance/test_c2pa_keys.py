"""Signing identities, certificate profile, trust anchors and watermark keys."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import stat
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from mdiff.errors import InvalidInputError, ProvenanceError
from mdiff.provenance import keys
from mdiff.provenance.inspect import read_manifest
from mdiff.provenance.keys import Identity, TrustConfig, init_dev_identity
from mdiff.provenance.sign import sign_file, sign_sidecar


def _signed(tmp_path, media, record, identity, trust):
    return sign_file(media["png"], tmp_path / "out.png", record, identity, trust=trust)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_end_entity_certificate_profile(dev):
    home, identity, _ = dev
    chain = x509.load_pem_x509_certificates(identity.chain_pem)
    assert len(chain) == 2  # EE + intermediate, root excluded
    ee, mid = chain
    root = x509.load_pem_x509_certificate((home / "identity" / "root.pem").read_bytes())
    ku = ee.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    bc = ee.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    eku = ee.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    assert isinstance(ee.public_key(), ec.EllipticCurvePublicKey)
    assert ee.public_key().curve.name == "secp256r1"
    for cert, issuer in ((ee, mid), (mid, root), (root, root)):
        assert cert.issuer == issuer.subject
        cert.verify_directly_issued_by(issuer)
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
    assert mid.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_trusted_with_own_root_valid_without_or_with_unrelated_root(tmp_path, dev, media, record):
    home, identity, trust = dev
    out = _signed(tmp_path, media, record, identity, trust)
    assert read_manifest(out, trust=trust).state == "trusted"
    plain = read_manifest(out, trust=TrustConfig([]))
    assert plain.state == "valid"
    assert plain.failures == []
    assert "signingCredential.untrusted" in {c for c, _ in plain.warnings}
    other = init_dev_identity(tmp_path / "other-home")
    assert other.chain_pem != identity.chain_pem
    unrelated = TrustConfig.default(tmp_path / "other-home")
    assert len(unrelated.anchors) == 1
    assert read_manifest(out, trust=unrelated).state == "valid"
    # the intermediate alone works as an anchor too
    mid_pem = x509.load_pem_x509_certificates(identity.chain_pem)[1]
    mid = TrustConfig([mid_pem.public_bytes(serialization.Encoding.PEM)])
    assert read_manifest(out, trust=mid).state == "trusted"


def test_expired_certificate_without_tsa_reads_invalid(tmp_path, media, record):
    identity = init_dev_identity(tmp_path / "h", validity=2)
    trust = TrustConfig.default(tmp_path / "h")
    out = _signed(tmp_path, media, record, identity, trust)
    assert read_manifest(out, trust=trust).state == "trusted"
    ee = x509.load_pem_x509_certificates(identity.chain_pem)[0]
    wait = (ee.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).total_seconds() + 1.1
    time.sleep(max(wait, 0))
    report = read_manifest(out, trust=trust)
    assert report.state == "invalid"
    assert "signingCredential.expired" in report.failure_codes()
    with pytest.raises(ProvenanceError, match="signing"):  # and it can no longer sign
        _signed(tmp_path, media, record, identity, trust)


def test_files_modes_and_no_overwrite_without_force(tmp_path):
    home = tmp_path / "h"
    first = init_dev_identity(home)
    d = home / "identity"
    assert {p.name for p in d.iterdir()} == {"root.pem", "chain.pem", "signer.key", "identity.json"}
    assert _mode(d / "signer.key") == 0o600
    assert _mode(home / "watermark.secret") == 0o600
    assert len((home / "watermark.secret").read_bytes()) == 32
    secret = keys.master_secret(home)
    with pytest.raises(ProvenanceError, match="already exists"):
        init_dev_identity(home)
    assert (d / "chain.pem").read_bytes() == first.chain_pem
    second = init_dev_identity(home, force=True)
    assert second.chain_pem != first.chain_pem
    assert Identity.load(home).chain_pem == second.chain_pem
    assert keys.master_secret(home) == secret  # watermark secret survives a re-init
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temp files left


def test_mdiff_home_and_default_identity_warns_once(home, caplog, monkeypatch):
    assert keys.mdiff_home() == home
    with caplog.at_level(logging.WARNING, logger="mdiff.provenance.keys"):
        ident = keys.default_identity()
    assert (home / "identity" / "signer.key").exists()
    assert any("DEVELOPMENT" in r.message and str(home) in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mdiff.provenance.keys"):
        assert keys.default_identity().chain_pem == ident.chain_pem
    assert not caplog.records
    assert TrustConfig.default().anchors == [(home / "identity" / "root.pem").read_bytes()]
    monkeypatch.delenv("MDIFF_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(home.parent / "xdg"))
    assert keys.mdiff_home() == home.parent / "xdg" / "mdiff"


def test_production_identity_without_tsa_refuses(tmp_path, dev, media, record):
    home, identity, trust = dev
    d = home / "identity"
    prod = Identity.from_files(d / "chain.pem", d / "signer.key", production=True)
    with pytest.raises(ProvenanceError, match="tsa_url"):
        sign_file(media["png"], tmp_path / "out.png", record, prod, trust=trust)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temp file


def test_callback_identity_signs(tmp_path, dev, media, record):
    home, identity, trust = dev
    key = serialization.load_pem_private_key((home / "identity" / "signer.key").read_bytes(), None)
    calls = []

    def kms_sign(data: bytes) -> bytes:  # stands in for a KMS/HSM call; returns DER ECDSA
        calls.append(len(data))
        return key.sign(data, ec.ECDSA(hashes.SHA256()))

    remote = Identity.from_callback(identity.chain_pem, kms_sign)
    out = _signed(tmp_path, media, record, remote, trust)
    assert calls
    assert read_manifest(out, trust=trust).state == "trusted"


def test_mismatched_key_and_bad_identity_arguments(tmp_path, dev, media, record):
    _, identity, trust = dev
    stranger = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ProvenanceError):
        _signed(tmp_path, media, record, Identity(identity.chain_pem, stranger), trust)
    with pytest.raises(InvalidInputError):
        Identity(identity.chain_pem)  # neither key nor callback
    with pytest.raises(InvalidInputError):
        Identity(identity.chain_pem, identity.key_pem, alg="md5")
    with pytest.raises(ProvenanceError, match="no signing identity"):
        Identity.load(tmp_path / "nowhere")


def test_watermark_keys_are_hmac_of_a_separate_secret(tmp_path):
    home = tmp_path / "h"
    init_dev_identity(home)
    secret = keys.master_secret(home)
    assert secret not in (home / "identity" / "signer.key").read_bytes()
    k = keys.watermark_key("k1", "mdiff-pixel-v1", secret)
    assert len(k) == 32 and k == keys.watermark_key("k1", "mdiff-pixel-v1", secret)
    assert k != keys.watermark_key("k2", "mdiff-pixel-v1", secret)
    assert k != keys.watermark_key("k1", "mdiff-text-v1", secret)
    assert k != keys.watermark_key("k1", "mdiff-pixel-v1", bytes(32))
    kid = keys.default_key_id(home)
    assert kid == keys.default_key_id(home) and len(kid) <= 12
    shutil.rmtree(home)
    init_dev_identity(home)
    assert keys.default_key_id(home) != kid  # a new secret gets a new id


def test_a_local_key_is_checked_on_its_first_sidecar_and_outside_signers_on_every_one(
    tmp_path, media, record, monkeypatch
):
    identity = init_dev_identity(tmp_path / "h")  # a key no other test has signed with
    trust = TrustConfig.default(tmp_path / "h")
    stranger = init_dev_identity(tmp_path / "s")
    code = tmp_path / "code.py"
    code.write_text("x = 1\n")
    for _ in range(2):  # the wrong key for the chain fails every time: it never passes a check
        with pytest.raises(ProvenanceError, match="signature does not match"):
            sign_sidecar(code, record, Identity(identity.chain_pem, stranger.key_pem), trust=trust)
    checks, make = [], TrustConfig.context

    def context(self, **kw):
        checks.append(kw)
        return make(self, **kw)

    monkeypatch.setattr(TrustConfig, "context", context)
    for i in range(3):
        side = sign_sidecar(code, record, identity, trust=trust, sidecar=tmp_path / f"{i}.c2pa")
        assert read_manifest(code, sidecar=side, trust=trust).state == "trusted"
    key = serialization.load_pem_private_key(identity.key_pem, None)
    remote = Identity.from_callback(
        identity.chain_pem, lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))
    )
    sign_sidecar(code, record, remote, trust=trust, sidecar=tmp_path / "r1.c2pa")
    sign_sidecar(code, record, remote, trust=trust, sidecar=tmp_path / "r2.c2pa")
    _signed(tmp_path, media, record, identity, trust)  # an embedded manifest: always checked
    signing = [c["verify_after_sign"] for c in checks if "verify_after_sign" in c]
    assert signing == [True, False, False, True, True, True]
