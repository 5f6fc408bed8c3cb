"""mdiff.provenance: C2PA manifests, invisible watermarks and verification for every output.

from mdiff.provenance import Stamper, verify
stamper = Stamper()                                   # identity + watermark keys ($MDIFF_HOME)
stamper.save(stamper.frames(frames, record), "out.mp4")   # watermark, then sign on save
print(verify("out.mp4").format())                     # manifest state, watermark, verdict
"""

from mdiff.provenance.keys import Identity, TrustConfig, default_identity, init_dev_identity
from mdiff.provenance.stamp import Stamped, Stamper
from mdiff.provenance.verify import EXIT_CODES, ProvenanceReport, verify
from mdiff.provenance.watermark.pixel import PixelWatermark
from mdiff.provenance.watermark.text import TextWatermark

__all__ = [
    "EXIT_CODES",
    "Identity",
    "PixelWatermark",
    "ProvenanceReport",
    "Stamped",
    "Stamper",
    "TextWatermark",
    "TrustConfig",
    "default_identity",
    "init_dev_identity",
    "verify",
]
