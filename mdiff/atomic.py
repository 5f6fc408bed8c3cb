"""Atomic writes: a file or directory is either absent, the old one, or the complete new one.

Every writer in mdiff (checkpoints, signed outputs, sidecars) goes through these: the content
is written to a temporary sibling, then renamed over the target, so an exception or a crash
never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_file", "publish_dir", "write_text_atomic"]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    The temporary name keeps the target's suffix, so libraries that pick a format from the
    extension (PNG, MP4, safetensors) write the right one.
    """
    path = Path(path)
    tmp = _new_temp(path)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_temp(path: Path) -> str:
    """Create an empty sibling of ``path`` with the permissions a plain ``open`` would give.

    ``mkstemp`` makes files 0600, which would leave every output private; here the umask
    applies, or the mode of the file being replaced is kept.
    """
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666
    for _ in range(100):
        name = path.parent / f".{path.stem}.{os.urandom(4).hex()}{path.suffix}"
        try:
            fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
        except FileExistsError:
            continue
        os.close(fd)
        if path.exists():
            os.chmod(name, mode)  # keep the old file's mode exactly (umask does not apply)
        return str(name)
    raise FileExistsError(f"could not create a temporary file beside {path}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the finished directory ``tmp`` to ``final``, replacing an old ``final`` if present."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; publish it on success, delete it on error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a published folder is like mkdir's
    try:
        yield tmp
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
