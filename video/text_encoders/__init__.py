"""Text encoders for the video DiT: the encoder contract (`base`), the built-in
`ShapesTextEncoder` (`shapes`) and any frozen transformers encoder (`hf`)."""

from mdiff.video.text_encoders.base import TextEncoder, check_prompts, drop_captions
from mdiff.video.text_encoders.hf import HFTextEncoder
from mdiff.video.text_encoders.shapes import (
    ShapesTextEncoder,
    ShapesTextEncoderConfig,
    shapes_vocabulary,
    words,
)

__all__ = ["HFTextEncoder", "ShapesTextEncoder", "ShapesTextEncoderConfig", "TextEncoder",
           "check_prompts", "drop_captions", "shapes_vocabulary", "words"]  # fmt: skip
