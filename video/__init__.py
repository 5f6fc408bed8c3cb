"""mdiff.video: a causal 3D VAE, a space-time DiT and the pipelines over them (see README
"Video"). Subpackages: `vae`, `dit`, `pipeline`, `text_encoders`, `eval`; modules `io`, `data`,
`cli`. Names are imported on first use, so `import mdiff.video` (and the CLI) stays light.

    from mdiff.video import VideoPipeline, CausalVAE, SpaceTimeDiT
"""

from importlib import import_module

_EXPORTS = {
    "CausalVAE": "mdiff.video.vae",
    "CausalVAEConfig": "mdiff.video.vae",
    "DecodeSession": "mdiff.video.vae",
    "EncodeSession": "mdiff.video.vae",
    "Tiling": "mdiff.video.vae",
    "VAEStreamState": "mdiff.video.vae",
    "DiTCache": "mdiff.video.dit",
    "DiTConfig": "mdiff.video.dit",
    "SpaceTimeDiT": "mdiff.video.dit",
    "VideoOutput": "mdiff.video.pipeline",
    "VideoPipeline": "mdiff.video.pipeline",
    "VAEObjective": "mdiff.video.vae.train",
    "shapes_vae_config": "mdiff.video.vae.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mdiff.video' has no attribute {name!r}")
