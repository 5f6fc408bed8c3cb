"""mdiff.video: a causal 3D VAE, a space-time DiT and the pipelines over them (see README
"Video"). Subpackages: `vae`, `dit`, `pipeline`, `text_encoders`, `eval`; modules `io`, `data`,
`cli`. Names load on first use (`mdiff.lazy`), so `import mdiff.video` (and the CLI) stays light.

    from mdiff.video import VideoPipeline, CausalVAE, SpaceTimeDiT
"""

from mdiff.lazy import lazy_package

EXPORTS = {
    "CausalVAE": "mdiff.video.vae:CausalVAE",
    "CausalVAEConfig": "mdiff.video.vae:CausalVAEConfig",
    "DecodeSession": "mdiff.video.vae:DecodeSession",
    "EncodeSession": "mdiff.video.vae:EncodeSession",
    "Tiling": "mdiff.video.vae:Tiling",
    "VAEStreamState": "mdiff.video.vae:VAEStreamState",
    "DiTCache": "mdiff.video.dit:DiTCache",
    "DiTConfig": "mdiff.video.dit:DiTConfig",
    "SpaceTimeDiT": "mdiff.video.dit:SpaceTimeDiT",
    "VideoOutput": "mdiff.video.pipeline:VideoOutput",
    "VideoPipeline": "mdiff.video.pipeline:VideoPipeline",
    "VAEObjective": "mdiff.video.vae.train:VAEObjective",
    "shapes_vae_config": "mdiff.video.vae.train:shapes_vae_config",
}
lazy_package(__name__, EXPORTS)

__all__ = sorted(EXPORTS)
