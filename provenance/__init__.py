"""mdiff.provenance: C2PA manifests, invisible watermarks and verification for every output.

from mdiff.provenance import Stamper, verify
stamper = Stamper()                                   # identity + watermark keys ($MDIFF_HOME)
stamper.save(stamper.frames(frames, record), "out.mp4")   # watermark, then sign on save
print(verify("out.mp4").format())                     # manifest state, watermark, verdict

The names load on first use (`mdiff.lazy`), so the `mdiff` command's parser (`cli.register`)
imports neither torch nor c2pa.
"""

from mdiff.lazy import lazy_package

lazy_package(
    __name__,
    {
        "EXIT_CODES": "mdiff.provenance.verify:EXIT_CODES",
        "Identity": "mdiff.provenance.keys:Identity",
        "PixelWatermark": "mdiff.provenance.watermark.pixel:PixelWatermark",
        "ProvenanceReport": "mdiff.provenance.verify:ProvenanceReport",
        "Stamped": "mdiff.provenance.stamp:Stamped",
        "Stamper": "mdiff.provenance.stamp:Stamper",
        "TextWatermark": "mdiff.provenance.watermark.text:TextWatermark",
        "TrustConfig": "mdiff.provenance.keys:TrustConfig",
        "default_identity": "mdiff.provenance.keys:default_identity",
        "init_dev_identity": "mdiff.provenance.keys:init_dev_identity",
        "sign_existing": "mdiff.provenance.resign:sign_existing",
        "verify": "mdiff.provenance.verify:verify",
    },
)

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
    "sign_existing",
    "verify",
]
