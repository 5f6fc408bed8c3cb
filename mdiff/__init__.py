"""mdiff: multimodal diffusion with provenance.

The core (this package) holds what the frontends share: time and schedules, probability paths,
losses, solvers, guidance, neural-network building blocks (``mdiff.nn``), the trainer
(``mdiff.train``) and checkpoints (``mdiff.hub``). Frontends: ``mdiff.video``, ``mdiff.text``,
``mdiff.provenance``. Importing mdiff changes no global torch setting.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from mdiff import errors, guidance, losses, paths, schedules, solvers, time
from mdiff.errors import (
    CheckpointError,
    InvalidInputError,
    MdiffError,
    ProvenanceError,
    VideoIOError,
)
from mdiff.paths import AffinePath, MaskPath
from mdiff.schedules import CondOT, Cosine, CosineSquaredKappa, PolynomialKappa
from mdiff.time import TimeSampler

try:
    __version__ = _version("mdiff")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = [
    "AffinePath",
    "CheckpointError",
    "CondOT",
    "Cosine",
    "CosineSquaredKappa",
    "InvalidInputError",
    "MaskPath",
    "MdiffError",
    "PolynomialKappa",
    "ProvenanceError",
    "TimeSampler",
    "VideoIOError",
    "__version__",
    "errors",
    "guidance",
    "losses",
    "paths",
    "schedules",
    "solvers",
    "time",
]
