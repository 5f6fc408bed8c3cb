"""The exception hierarchy. Every error the library raises on purpose is an `MdiffError`.

`InvalidInputError` also subclasses `ValueError`, so callers that already catch `ValueError`
keep working. The CLI turns any `MdiffError` into one line on stderr and a non-zero exit.
"""


class MdiffError(Exception):
    """Base class of every error mdiff raises on purpose."""


class InvalidInputError(MdiffError, ValueError):
    """An argument, shape, file content or option combination is not valid."""


class CheckpointError(MdiffError):
    """A checkpoint is missing, incomplete, mismatched or not loadable without unpickling."""


class BackendUnavailableError(MdiffError):
    """A requested compute backend (attention kernel, device, extra) is not available here."""


class VideoIOError(MdiffError):
    """A video or image file could not be read or written."""


class ProvenanceError(MdiffError):
    """Signing, watermarking or verification failed."""


class WriteError(MdiffError, OSError):
    """An output could not be written: no space left, no permission, a read-only file system.
    The message names the path the caller asked for (never a temporary file); ``errno`` is the
    operating system's, ``path`` the path that could not be written. Also an `OSError`, so
    callers that catch those keep working."""

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None):
        super().__init__(message)
        self.path, self.errno = path, errno


__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "InvalidInputError",
    "MdiffError",
    "ProvenanceError",
    "VideoIOError",
    "WriteError",
]
