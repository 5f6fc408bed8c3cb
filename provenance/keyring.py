"""The mdiff home's files: private folders and secrets, and the watermark **key ring**.

``watermark.secret`` (32 random bytes, mode 0600) is the user's own secret: their watermark
keys (`watermark_key`) and prompt-commitment key (`prompt_key`) derive from it. The key ring is
that secret plus every ``keyring/*.secret`` (secrets of others, or old ones, copied there to be
detected with; never used to mark). A secret's key id is a hash of it (`key_id_of`), so file
names do not matter. `keyring` only reads; `master_secret` creates the secret on first use.
Folders created here are 0700 and secrets 0600 whatever the umask.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from mdiff.atomic import atomic_file
from mdiff.errors import MdiffError, ProvenanceError

__all__ = [
    "default_key_id",
    "key_id_of",
    "keyring",
    "master_secret",
    "mdiff_home",
    "private_dir",
    "prompt_key",
    "watermark_key",
    "write_private",
]

log = logging.getLogger(__name__)


def mdiff_home() -> Path:
    """``$MDIFF_HOME``, else ``$XDG_DATA_HOME/mdiff``, else ``~/.local/share/mdiff``."""
    if os.environ.get("MDIFF_HOME"):
        return Path(os.environ["MDIFF_HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "mdiff"


def write_private(path: Path, data: bytes, mode: int) -> None:
    """Atomically write ``data`` with permission bits ``mode`` (set before any byte is written)."""
    try:
        with atomic_file(path) as tmp:
            tmp.chmod(mode)
            tmp.write_bytes(data)
    except MdiffError:  # WriteError: already names `path`
        raise
    except OSError as e:
        raise _cannot("write", path, e) from e


def _cannot(action: str, path: Path, e: OSError) -> ProvenanceError:
    """A one-line error naming the user's ``path`` (never a temporary file)."""
    if isinstance(e, FileExistsError | NotADirectoryError):
        why = f"{_first_file(path)} is a file, not a folder"
    else:
        why = e.strerror or str(e)
    return ProvenanceError(f"cannot {action} {path}: {why}")


def _first_file(path: Path) -> Path:
    """The first existing non-folder on the way to ``path`` (what blocks creating it)."""
    for p in [*reversed(path.parents), path]:
        if p.exists() and not p.is_dir():
            return p
    return path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as folders; the ones created here are 0700."""
    missing = [p for p in [*reversed(path.parents), path] if not p.is_dir()]
    for p in missing:
        try:
            p.mkdir(mode=0o700)
            p.chmod(0o700)  # mkdir's mode passes through the umask
        except FileExistsError as e:
            if not p.is_dir():
                raise _cannot("create", path, e) from e
        except OSError as e:
            raise _cannot("create", path, e) from e
    return path


def master_secret(home: str | os.PathLike | None = None) -> bytes:
    """The 32-byte watermark master secret, created (mode 0600, home 0700) on first use."""
    path = Path(home or mdiff_home()) / "watermark.secret"
    if not path.exists():
        private_dir(path.parent)
        write_private(path, secrets.token_bytes(32), 0o600)
        log.info("created a watermark master secret in %s", path)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _cannot("read", path, e) from e
    if len(data) < 16:
        raise ProvenanceError(f"watermark secret {path} is too short ({len(data)} bytes)")
    return data


def keyring(home: str | os.PathLike | None = None) -> dict[str, bytes]:
    """``{key id: secret}`` of every watermark secret under ``home`` (your ``watermark.secret``
    first, then ``keyring/*.secret`` by name); empty if there is none. Creates nothing."""
    home = Path(home or mdiff_home())
    paths = [home / "watermark.secret"]
    if (home / "keyring").is_dir():
        paths += sorted((home / "keyring").glob("*.secret"))
    ring = {}
    for path in paths:
        if path.is_file():
            secret = _read_secret(path)
            ring.setdefault(key_id_of(secret), secret)
    return ring


def key_id_of(secret: bytes) -> str:
    """A short stable id of a master secret (safe to publish: a hash, not the secret)."""
    return f"k{hashlib.sha256(b'mdiff-key-id|' + secret).hexdigest()[:8]}"


def prompt_key(secret: bytes) -> bytes:
    """The key of the prompt commitments (`GenerationRecord.commit_prompt`) of a master secret."""
    return hmac.new(secret, b"mdiff-prompt-commitment", hashlib.sha256).digest()


def watermark_key(key_id: str, scheme: str, secret: bytes | None = None) -> bytes:
    """The 32-byte key of one watermark scheme: HMAC-SHA256(secret, f"{scheme}|{key_id}")."""
    secret = master_secret() if secret is None else secret
    return hmac.new(secret, f"{scheme}|{key_id}".encode(), hashlib.sha256).digest()


def default_key_id(home: str | os.PathLike | None = None) -> str:
    """The key id of this home's master secret (created on first use)."""
    return key_id_of(master_secret(home))
