"""mdiff.text: masked-diffusion language models for code (see README "Text"). Subpackages:
`model`, `sampling`, `fim`, `training`; modules `pipeline` (`CodeModel`), `data`, `cli`.

from mdiff.text import CodeModel, GenerationConfig, generate, denoise, infill
"""

from mdiff.lazy import lazy_package

EXPORTS = {
    "CodeModel": "mdiff.text.pipeline:CodeModel",
    "Completion": "mdiff.text.pipeline:Completion",
    "GenerationConfig": "mdiff.text.sampling:GenerationConfig",
    "GenerationOutput": "mdiff.text.sampling:GenerationOutput",
    "generate": "mdiff.text.sampling:generate",
    "denoise": "mdiff.text.sampling:denoise",
    "infill": "mdiff.text.fim:infill",
    "fill": "mdiff.text.fim:fill",
    "TextDenoiser": "mdiff.text.model:TextDenoiser",
    "TextDenoiserConfig": "mdiff.text.model:TextDenoiserConfig",
    "CodeTokenizer": "mdiff.text.model:CodeTokenizer",
    "DenoiserSpec": "mdiff.text.model:DenoiserSpec",
}
lazy_package(__name__, EXPORTS)

__all__ = sorted(EXPORTS)
