"""mdiff.text: masked-diffusion language models for code (see README "Text"). Subpackages:
`model`, `sampling`, `fim`, `training`; modules `pipeline` (`CodeModel`), `data`, `cli`.

from mdiff.text import CodeModel, GenerationConfig, generate, denoise, infill
"""

from importlib import import_module

_EXPORTS = {
    "CodeModel": "mdiff.text.pipeline",
    "Completion": "mdiff.text.pipeline",
    "GenerationConfig": "mdiff.text.sampling",
    "GenerationOutput": "mdiff.text.sampling",
    "generate": "mdiff.text.sampling",
    "denoise": "mdiff.text.sampling",
    "infill": "mdiff.text.fim",
    "fill": "mdiff.text.fim",
    "TextDenoiser": "mdiff.text.model",
    "TextDenoiserConfig": "mdiff.text.model",
    "CodeTokenizer": "mdiff.text.model",
    "DenoiserSpec": "mdiff.text.model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:  # imported on first use, so `import mdiff.text` stays light
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mdiff.text' has no attribute {name!r}")
