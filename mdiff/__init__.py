"""mdiff: multimodal diffusion with provenance.

The core (this package) holds what the frontends share: time and schedules, probability paths,
losses, solvers, guidance, neural-network building blocks (``mdiff.nn``), the trainer
(``mdiff.train``) and checkpoints (``mdiff.hub``). Frontends: ``mdiff.video``, ``mdiff.text``,
``mdiff.provenance``. Importing mdiff changes no global torch setting, and imports no torch:
the names below load on first use (`mdiff.lazy`), so ``mdiff --help`` stays fast.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from mdiff.errors import (
    CheckpointError,
    InvalidInputError,
    MdiffError,
    ProvenanceError,
    VideoIOError,
)
from mdiff.lazy import lazy_package

try:
    __version__ = _version("mdiff")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

lazy_package(
    __name__,
    {
        **{name: f"mdiff.{name}" for name in
           ("guidance", "losses", "paths", "schedules", "solvers", "time", "unmasking",
            "unmask_rules")},
        "AffinePath": "mdiff.paths:AffinePath",
        "MaskPath": "mdiff.paths:MaskPath",
        "CondOT": "mdiff.schedules:CondOT",
        "Cosine": "mdiff.schedules:Cosine",
        "CosineSquaredKappa": "mdiff.schedules:CosineSquaredKappa",
        "PolynomialKappa": "mdiff.schedules:PolynomialKappa",
        "TimeSampler": "mdiff.time:TimeSampler",
    },
)  # fmt: skip

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
    "unmask_rules",
    "unmasking",
]
