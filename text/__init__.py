"""mdiff.text: masked-diffusion language models for code (see README "Text").

from mdiff.text import CodeModel, GenerationConfig, generate, denoise, infill
"""

from importlib import import_module

_EXPORTS = {
    "CodeModel": "mdiff.text.pipeline",
    "Completion": "mdiff.text.pipeline",
    "GenerationConfig": "mdiff.text.sampler",
    "GenerationOutput": "mdiff.text.sampler",
    "generate": "mdiff.text.sampler",
    "denoise": "mdiff.text.sampler",
    "infill": "mdiff.text.infill",
    "fill": "mdiff.text.infill",
    "TextDenoiser": "mdiff.text.model",
    "TextDenoiserConfig": "mdiff.text.model",
    "CodeTokenizer": "mdiff.text.tokenizer",
    "DenoiserSpec": "mdiff.text.spec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:  # imported on first use, so `import mdiff.text` stays light
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mdiff.text' has no attribute {name!r}")
