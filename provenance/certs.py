"""Development certificate chains with the profile C2PA accepts (research a1).

Root CA → intermediate CA → EC P-256 (ES256) end-entity. The end entity carries KeyUsage
digitalSignature (critical), EKU emailProtection (accepted by c2pa-rs without extra trust
configuration), BasicConstraints ca=false (critical), SubjectKeyIdentifier and
AuthorityKeyIdentifier; the CAs carry keyCertSign/cRLSign and BasicConstraints ca=true.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["dev_chain"]


def dev_chain(name: str, validity: dt.timedelta) -> tuple[bytes, bytes, bytes]:
    """A fresh chain: ``(chain_pem, signer_key_pem, root_pem)``; the chain is EE + intermediate.

    ``validity`` applies to the signer certificate; the CAs live ten times longer.
    """
    end = dt.datetime.now(dt.timezone.utc) + validity
    ca_end = dt.datetime.now(dt.timezone.utc) + 10 * max(validity, dt.timedelta(days=1))
    root_key, mid_key, ee_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("mdiff dev root CA", root_key, None, root_key, ca=True, not_after=ca_end)
    mid = _cert("mdiff dev intermediate CA", mid_key, root, root_key, ca=True, not_after=ca_end)
    ee = _cert(name, ee_key, mid, mid_key, ca=False, not_after=end)
    pem = serialization.Encoding.PEM
    key = ee_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ee.public_bytes(pem) + mid.public_bytes(pem), key, root.public_bytes(pem)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mdiff (development)"),
        ]
    )


def _cert(
    subject: str,
    key,
    issuer: x509.Certificate | None,
    issuer_key,
    *,
    ca: bool,
    not_after: dt.datetime,
) -> x509.Certificate:
    """One certificate; ``issuer=None`` makes it self-signed (the root)."""
    now = dt.datetime.now(dt.timezone.utc)
    pub, issuer_pub = key.public_key(), issuer_key.public_key()
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub), critical=False
        )
    )
    if ca:
        b = b.add_extension(
            x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0), critical=True
        )
        usage = {"key_cert_sign": True, "crl_sign": True, "digital_signature": False}
    else:
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        b = b.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        usage = {"key_cert_sign": False, "crl_sign": False, "digital_signature": True}
    ku = x509.KeyUsage(
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
        **usage,
    )
    return b.add_extension(ku, critical=True).sign(issuer_key, hashes.SHA256())
