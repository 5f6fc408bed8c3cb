"""Atomic writes: a file or directory is either absent, the old one, or the complete new one.

Every writer in mdiff (checkpoints, signed outputs, sidecars) goes through these: the content
is written to a temporary sibling, then renamed over the target, so an exception or a crash
never leaves a half-written file behind.

`check_target` checks an output path before any work (its folder exists and is writable, it is
not a folder, not an input, not an existing file unless replacing was asked for). A write that
fails for lack of space or permission raises `WriteError` naming the target, never the
temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from mdiff.errors import InvalidInputError, WriteError

__all__ = [
    "atomic_dir",
    "atomic_file",
    "check_target",
    "is_write_failure",
    "publish_dir",
    "write_error",
    "write_text_atomic",
]

# errors that only writing causes: raised inside a writer, they are about the target
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def write_error(path: str | os.PathLike, exc: OSError) -> WriteError:
    """`exc`, raised while writing `path`, as a `WriteError` that names `path`."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return WriteError(f"cannot write {path}: {reason}", path=str(path), errno=exc.errno)


def check_target(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    replace_hint: str = "pass overwrite=True",
) -> Path:
    """`path` if an output may be written there, checked before any work is done.

    Refused (`InvalidInputError`, or `WriteError` for a folder that is not writable): a folder,
    a path whose folder does not exist, a path that is one of `inputs` (whatever `overwrite`
    says: the output would destroy what it is made from), an existing file unless `overwrite`
    (`replace_hint` tells how to ask for it: the CLI says "use --force").
    """
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise InvalidInputError(f"{path} is a directory: name the file to write")
    if not folder.is_dir():
        raise InvalidInputError(f"{path}: the destination folder does not exist ({folder})")
    try:  # create (and remove) a temporary sibling: os.access says yes to root on /sys
        Path(_new_temp(path)).unlink()
    except OSError as e:
        raise WriteError(f"cannot write {path}: the folder {folder} is not writable",
                         path=str(path), errno=e.errno or errno.EACCES) from e  # fmt: skip
    if any(_same_file(path, Path(p)) for p in inputs):
        raise InvalidInputError(f"{path} is also an input: write the output to another file")
    if path.exists() and not overwrite:
        raise InvalidInputError(f"{path} already exists: {replace_hint} to replace it")
    return path


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    The temporary name keeps the target's suffix, so libraries that pick a format from the
    extension (PNG, MP4, safetensors) write the right one. A failure to create the temporary
    file or to rename it, and a full disk, a quota or a read-only file system inside the body,
    raise `WriteError` naming ``path``.
    """
    path = Path(path)
    try:
        tmp = _new_temp(path)
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        yield Path(tmp)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_write_failure(exc, tmp):
            raise write_error(path, exc) from exc
        raise
    try:
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, exc) from exc


def is_write_failure(exc: BaseException, written: str | os.PathLike) -> bool:
    """Whether `exc`, raised while writing the file or folder `written`, is a failure to write
    it: a `WriteError` of a writer that wrote (into) `written`, or a full disk, a quota, a
    read-only file system (which reading never causes)."""
    if isinstance(exc, WriteError):
        path = exc.path
        return path is not None and Path(written) in (Path(path), *Path(path).parents)
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


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
    """Yield a temporary directory beside ``final``; publish it on success, delete it on error
    (a failure to write it raises `WriteError` naming ``final``, as `atomic_file` does)."""
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    except OSError as exc:
        raise write_error(final, exc) from exc
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a published folder is like mkdir's
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_write_failure(exc, tmp):
            raise write_error(final, exc) from exc
        raise
    try:
        publish_dir(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(final, exc) from exc
