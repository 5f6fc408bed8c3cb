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


__all__ = [
    "BackendUnavailableError",
    "CheckpointError",
    "InvalidInputError",
    "MdiffError",
    "ProvenanceError",
    "VideoIOError",
]
