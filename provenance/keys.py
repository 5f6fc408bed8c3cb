"""Signing identities, trust anchors and watermark keys.

Layout of the mdiff home (``$MDIFF_HOME``, else ``$XDG_DATA_HOME/mdiff``, else
``~/.local/share/mdiff``); folders mdiff creates are mode 0700, secrets 0600, whatever the umask::

    identity/root.pem       trust anchor (public; give it to verifiers)
    identity/chain.pem      end-entity certificate + intermediate (root excluded)
    identity/signer.key     EC P-256 private key, PKCS#8 PEM, mode 0600
    identity/identity.json  {"name", "alg", "tsa_url", "production"}
    watermark.secret        32 random bytes, mode 0600 (independent of the signing key): your
                            watermark keys and your prompt-commitment key derive from it
    keyring/*.secret        other watermark secrets you may detect with (a colleague's, your
                            previous ones): copy them here, mode 0600; never used to mark

The **key ring** is ``watermark.secret`` plus ``keyring/*.secret``; each secret's key id is a
hash of it (`key_id_of`), so a file's name does not matter. `keyring` only reads: verifying
never creates the home, a secret or an identity. (Secrets and folders: `mdiff.provenance.keyring`,
re-exported here.)

The development chain follows the certificate profile c2pa-rs checks (research a1): the
end-entity certificate has KeyUsage digitalSignature (critical), EKU emailProtection,
BasicConstraints ca=false (critical), SubjectKeyIdentifier and AuthorityKeyIdentifier.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import c2pa
from cryptography import x509

from mdiff.errors import InvalidInputError, ProvenanceError
from mdiff.provenance.certs import dev_chain
from mdiff.provenance.keyring import (
    default_key_id,
    key_id_of,
    keyring,
    master_secret,
    mdiff_home,
    private_dir,
    prompt_key,
    watermark_key,
    write_private,
)

__all__ = [
    "Identity",
    "TrustConfig",
    "default_identity",
    "default_key_id",
    "init_dev_identity",
    "key_id_of",
    "keyring",
    "master_secret",
    "mdiff_home",
    "prompt_key",
    "watermark_key",
]

log = logging.getLogger(__name__)

_ALGS = {
    "es256": c2pa.C2paSigningAlg.ES256,
    "es384": c2pa.C2paSigningAlg.ES384,
    "es512": c2pa.C2paSigningAlg.ES512,
    "ps256": c2pa.C2paSigningAlg.PS256,
    "ps384": c2pa.C2paSigningAlg.PS384,
    "ps512": c2pa.C2paSigningAlg.PS512,
    "ed25519": c2pa.C2paSigningAlg.ED25519,
}
_DEV_NAME = "mdiff development signer"


@dataclass(frozen=True)
class Identity:
    """Who signs: a certificate chain plus either a private key or a signing callback.

    ``callback(data) -> signature`` is the KMS/HSM hook (DER or raw r||s ECDSA both work).
    A ``production`` identity refuses to sign without ``tsa_url``: without an RFC 3161
    timestamp every signed output turns invalid once the certificate expires.
    """

    chain_pem: bytes  # end-entity first, then intermediates; root excluded
    key_pem: bytes | None = field(default=None, repr=False)
    callback: Callable[[bytes], bytes] | None = field(default=None, repr=False)
    alg: str = "es256"
    tsa_url: str | None = None
    production: bool = False
    name: str = _DEV_NAME

    def __post_init__(self):
        if (self.key_pem is None) == (self.callback is None):
            raise InvalidInputError("an Identity needs exactly one of key_pem or callback")
        if self.alg.lower() not in _ALGS:
            raise InvalidInputError(f"unknown signing alg {self.alg!r}; one of {sorted(_ALGS)}")

    @classmethod
    def load(cls, home: str | os.PathLike | None = None) -> Identity:
        """The identity stored under ``home/identity`` (ProvenanceError if there is none)."""
        d = Path(home or mdiff_home()) / "identity"
        meta_path = d / "identity.json"
        if not meta_path.exists():
            raise ProvenanceError(f"no signing identity in {d}; create one with init_dev_identity")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return cls.from_files(
            d / "chain.pem",
            d / "signer.key",
            tsa_url=meta.get("tsa_url"),
            production=bool(meta.get("production", False)),
            alg=meta.get("alg", "es256"),
            name=meta.get("name", _DEV_NAME),
        )

    @classmethod
    def from_files(
        cls,
        chain_path,
        key_path,
        *,
        tsa_url: str | None = None,
        production: bool = False,
        alg: str = "es256",
        name: str = "",
    ) -> Identity:
        """An identity from a PEM chain file and a PEM private-key file."""
        try:
            chain, key = Path(chain_path).read_bytes(), Path(key_path).read_bytes()
        except OSError as e:
            raise ProvenanceError(f"cannot read signing identity: {e}") from e
        return cls(
            chain,
            key,
            alg=alg,
            tsa_url=tsa_url,
            production=production,
            name=name or Path(chain_path).stem,
        )

    @classmethod
    def from_callback(
        cls,
        chain_pem: bytes,
        callback: Callable[[bytes], bytes],
        *,
        alg: str = "es256",
        tsa_url: str | None = None,
        production: bool = False,
        name: str = "callback signer",
    ) -> Identity:
        """An identity whose private key lives elsewhere (KMS/HSM): ``callback`` signs bytes."""
        return cls(
            chain_pem, callback=callback, alg=alg, tsa_url=tsa_url, production=production, name=name
        )

    def signer(self) -> c2pa.Signer:
        """A fresh ``c2pa.Signer`` (close it after use, e.g. ``with identity.signer() as s``)."""
        if self.production and not self.tsa_url:
            raise ProvenanceError(
                "a production identity needs a tsa_url: without a trusted timestamp every signed "
                "output turns invalid when the signing certificate expires"
            )
        alg = _ALGS[self.alg.lower()]
        try:
            if self.callback is not None:
                return c2pa.Signer.from_callback(
                    self.callback, alg, self.chain_pem.decode(), self.tsa_url
                )
            info = c2pa.C2paSignerInfo(
                alg, self.chain_pem, self.key_pem, self.tsa_url.encode() if self.tsa_url else None
            )
            return c2pa.Signer.from_info(info)
        except c2pa.C2paError as e:
            raise ProvenanceError(f"cannot create a signer for {self.name!r}: {e}") from e


def init_dev_identity(
    home: str | os.PathLike | None = None,
    *,
    force: bool = False,
    validity: dt.timedelta | float = dt.timedelta(days=365),
    name: str = _DEV_NAME,
) -> Identity:
    """Generate a development root CA -> intermediate CA -> ES256 signer and store it.

    ``validity`` (a timedelta, or seconds) applies to the signer certificate; the CAs live
    ten times longer. Refuses to replace an existing identity unless ``force``. Also creates
    the watermark master secret if absent (never overwritten: old watermarks stay readable).
    """
    home = Path(home or mdiff_home())
    d = home / "identity"
    if (d / "identity.json").exists() and not force:
        raise ProvenanceError(
            f"a signing identity already exists in {d}; pass force=True to "
            "replace it (outputs signed with it stay verifiable only with "
            "its old root.pem)"
        )
    if not isinstance(validity, dt.timedelta):
        validity = dt.timedelta(seconds=float(validity))
    private_dir(d)
    chain, key, root = dev_chain(name, validity)
    write_private(d / "signer.key", key, 0o600)
    write_private(d / "chain.pem", chain, 0o644)
    write_private(d / "root.pem", root, 0o644)
    meta = {"name": name, "alg": "es256", "tsa_url": None, "production": False}
    write_private(d / "identity.json", json.dumps(meta, indent=2).encode(), 0o644)
    master_secret(home)
    log.info("created a development signing identity in %s", d)
    return Identity(chain, key, name=name)


def default_identity(home: str | os.PathLike | None = None) -> Identity:
    """The stored identity; on first use a development one is created (with a WARNING)."""
    home = Path(home or mdiff_home())
    if not (home / "identity" / "identity.json").exists():
        init_dev_identity(home)
        log.warning(
            "no signing identity found: created a DEVELOPMENT identity in %s; outputs "
            "verify as trusted only against its root.pem",
            home / "identity",
        )
    return Identity.load(home)


@dataclass(frozen=True)
class TrustConfig:
    """Trust anchors (PEM root certificates) for verification; reading stays offline."""

    anchors: list[bytes] = field(default_factory=list)

    def __post_init__(self):
        for pem in self.anchors:
            try:
                x509.load_pem_x509_certificates(bytes(pem))
            except ValueError as e:
                raise InvalidInputError(f"trust anchor is not a PEM certificate: {e}") from e

    @classmethod
    def default(cls, home=None, extra_pems: Sequence[bytes] = ()) -> TrustConfig:
        """Our dev root (if one exists under ``home``) plus the user-given roots."""
        root = Path(home or mdiff_home()) / "identity" / "root.pem"
        mine = [root.read_bytes()] if root.exists() else []
        return cls(mine + [bytes(p) for p in extra_pems])

    def settings(self, *, verify_after_sign: bool = True) -> dict:
        """c2pa settings: anchors as ``user_anchors``, no network, no thumbnails."""
        conf: dict = {
            "verify": {
                "remote_manifest_fetch": False,
                "ocsp_fetch": False,
                "verify_after_sign": verify_after_sign,
            },
            "builder": {"thumbnail": {"enabled": False}},
        }
        if self.anchors:
            pems = b"\n".join(p.strip() for p in self.anchors).decode("ascii")
            conf["trust"] = {"user_anchors": pems + "\n"}
        return conf

    def context(self, *, verify_after_sign: bool = True) -> c2pa.Context:
        """A ``c2pa.Context`` for these settings (usable for both Reader and Builder)."""
        try:
            return c2pa.Context.from_dict(self.settings(verify_after_sign=verify_after_sign))
        except c2pa.C2paError as e:
            raise ProvenanceError(f"invalid trust configuration: {e}") from e
