"""Free-form prompts: what people type, written independently of the shapes caption grammar.

    mdiff eval video --free-form                 # the 60 development prompts below
    specs = [free_form_spec(p) for p in FREE_FORM]

Each prompt names one object, with the colour and motion a person meant (the labels are
written by hand, not parsed, so a phrasing the caption parser does not know is still scored
fairly). The shape is labelled where the prompt names one. The set mixes plain prompts ("a
green square moving left"), synonyms ("ball", "box", "heading left", "upwards"), other word
orders, capitals and punctuation, filler words and words no shapes caption contains, and no
background. The maintainers check on a separate set; this one is for development.
"""

from __future__ import annotations

from typing import NamedTuple

from mdiff.video.eval.adherence import ObjectSpec, PromptSpec

__all__ = ["FREE_FORM", "FreeFormPrompt", "free_form_spec"]


class FreeFormPrompt(NamedTuple):
    prompt: str
    colour: str
    motion: str
    shape: str | None = None


_P = FreeFormPrompt
FREE_FORM: tuple[FreeFormPrompt, ...] = (
    _P("a green square moving left", "green", "left", "square"),
    _P("a yellow triangle moving up", "yellow", "up", "triangle"),
    _P("red ball rolling to the right", "red", "right", "circle"),
    _P("A blue box sliding left.", "blue", "left", "square"),
    _P("white circle going down", "white", "down", "circle"),
    _P("an orange triangle heading right", "orange", "right", "triangle"),
    _P("purple square, moving upwards", "purple", "up", "square"),
    _P("a small red dot drifting down the screen", "red", "down", "circle"),
    _P("Green ball moves to the left", "green", "left", "circle"),
    _P("the yellow square falls", "yellow", "down", "square"),
    _P("a blue triangle that rises slowly", "blue", "up", "triangle"),
    _P("show a white box travelling right", "white", "right", "square"),
    _P("orange circle floating upward", "orange", "up", "circle"),
    _P("purple ball, going right", "purple", "right", "circle"),
    _P("A RED SQUARE MOVING DOWN", "red", "down", "square"),
    _P("big green triangle sinking", "green", "down", "triangle"),
    _P("a tiny yellow ball heading left", "yellow", "left", "circle"),
    _P("blue circle goes up", "blue", "up", "circle"),
    _P("white triangle moving leftwards", "white", "left", "triangle"),
    _P("an orange box drops down", "orange", "down", "square"),
    _P("please generate a purple triangle moving left", "purple", "left", "triangle"),
    _P("red triangle flying upwards!", "red", "up", "triangle"),
    _P("green square slides right", "green", "right", "square"),
    _P("video of a yellow circle moving to the right", "yellow", "right", "circle"),
    _P("a blue square falling down", "blue", "down", "square"),
    _P("simple animation: white ball rising", "white", "up", "circle"),
    _P("orange triangle to the left", "orange", "left", "triangle"),
    _P("a purple circle moving down slowly", "purple", "down", "circle"),
    _P("Red box going left", "red", "left", "square"),
    _P("a green circle going up", "green", "up", "circle"),
    _P("yellow square moving right", "yellow", "right", "square"),
    _P("a blue ball drifting to the left", "blue", "left", "circle"),
    _P("white square moves downwards", "white", "down", "square"),
    _P("the orange ball travels upward", "orange", "up", "circle"),
    _P("purple triangle heading down", "purple", "down", "triangle"),
    _P("red circle, left", "red", "left", "circle"),
    _P("a green triangle moving down", "green", "down", "triangle"),
    _P("yellow triangle goes to the right", "yellow", "right", "triangle"),
    _P("Blue square rising up", "blue", "up", "square"),
    _P("a white dot moving to the left", "white", "left", "circle"),
    _P("an orange square floating up", "orange", "up", "square"),
    _P("a purple box sliding to the right", "purple", "right", "square"),
    _P("red shape moving right", "red", "right"),
    _P("something green falling down", "green", "down"),
    _P("a yellow object going left", "yellow", "left"),
    _P("a blue thing moving right", "blue", "right"),
    _P("white blob rising", "white", "up"),
    _P("a moving orange circle heading left", "orange", "left", "circle"),
    _P("make a purple ball go up", "purple", "up", "circle"),
    _P("a red triangle descending", "red", "down", "triangle"),
    _P("green box moving upward", "green", "up", "square"),
    _P("cute yellow ball bouncing to the right", "yellow", "right", "circle"),
    _P("a blue triangle moves right across the frame", "blue", "right", "triangle"),
    _P("white square going up", "white", "up", "square"),
    _P("orange dot dropping", "orange", "down", "circle"),
    _P("a purple square moving left, smooth motion", "purple", "left", "square"),
    _P("a red circle moving up in 4k", "red", "up", "circle"),
    _P("a green ball drifting right", "green", "right", "circle"),
    _P("yellow box falls to the bottom", "yellow", "down", "square"),
    _P("the blue circle moves on to the left", "blue", "left", "circle"),
)


def free_form_spec(item: FreeFormPrompt) -> PromptSpec:
    """The hand-written labels of one prompt as the `PromptSpec` `adherence` scores."""
    obj = ObjectSpec(colour=item.colour, shape=item.shape, motion=item.motion)
    return PromptSpec(item.colour, item.shape, item.motion, None, None, (obj,))
