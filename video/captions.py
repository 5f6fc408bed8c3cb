"""Free-form captions for shapes clips: the ways people describe them, for training.

    caption = free_form_caption(truth, rng)  # e.g. "Show me a crimson ball heading leftwards!"
    free_form_phrases()                      # every phrase these captions hold (the vocab)
    SYNONYM_OF["ball"]                       # "circle": where a new word's embedding starts

The dataset's own captions follow five templates ("a red circle moving left on a black
background"). People write "red ball going left", "A blue box, sliding to the left.",
"something green falling": attributes left out (background, colour, shape, size, even the
motion), synonyms, other word orders, a leading request ("please generate …") or trailing
style words ("in 4k"). `free_form_caption` draws such a caption from a clip's `ClipTruth`, so
the text encoder learns that these mean the same clip. Words no caption here contains
(`FILLERS`, typos) are mixed in too: the encoder's tokenizer maps them to ``[UNK]`` and the
model learns to pass over them. Capitals and punctuation need no augmentation: the word
tokenizer (`mdiff.video.text_encoders.shapes.words`) drops them.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import torch
from torch.utils.data import Dataset

from mdiff.errors import InvalidInputError
from mdiff.video.data import ClipTruth, ShapeObject, ShapesDataset

__all__ = ["FILLERS", "SYNONYM_OF", "FreeFormCaptions", "free_form_caption", "free_form_phrases"]

COLOUR_WORDS = {  # the dataset's colour first; "dark" is left out ("dark green" is a background)
    "red": ("red", "red", "red", "red", "bright red", "crimson", "scarlet"),
    "green": ("green", "green", "green", "green", "bright green", "lime", "emerald"),
    "blue": ("blue", "blue", "blue", "blue", "bright blue", "light blue", "azure"),
    "yellow": ("yellow", "yellow", "yellow", "yellow", "bright yellow", "golden", "gold", "lemon"),
    "white": ("white", "white", "white", "white", "pure white", "snow white"),
    "orange": ("orange", "orange", "orange", "orange", "bright orange", "tangerine", "amber"),
    "purple": ("purple", "purple", "purple", "purple", "violet", "lilac", "magenta"),
}
SHAPE_WORDS = {
    "circle": ("circle", "circle", "circle", "ball", "ball", "disc", "disk", "dot", "orb", "sphere",
               "round shape", "circular shape", "bubble"),
    "square": ("square", "square", "square", "box", "box", "block", "cube", "tile", "square shape",
               "rectangle"),
    "triangle": ("triangle", "triangle", "triangle", "pyramid", "wedge", "triangular shape",
                 "arrowhead"),
}  # fmt: skip
GENERIC = ("shape", "object", "thing", "blob", "item", "figure", "sprite", "one", "form")
SIZE_WORDS = {"small": ("small", "tiny", "little"), "medium": ("medium", "medium sized", "mid"),
              "large": ("large", "big", "huge")}  # fmt: skip
VERBS = {  # (-s, -ing) forms; which motions each verb can describe
    ("moves", "moving"): "left right up down diagonal",
    ("goes", "going"): "left right up down diagonal",
    ("heads", "heading"): "left right up down diagonal",
    ("travels", "travelling"): "left right up down diagonal",
    ("slides", "sliding"): "left right up down diagonal",
    ("drifts", "drifting"): "left right up down diagonal",
    ("glides", "gliding"): "left right up down diagonal",
    ("rolls", "rolling"): "left right down",
    ("flies", "flying"): "left right up diagonal",
    ("floats", "floating"): "left right up",
    ("shifts", "shifting"): "left right up down",
    ("runs", "running"): "left right",
    ("crosses", "crossing"): "left right diagonal",
    ("falls", "falling"): "down",
    ("drops", "dropping"): "down",
    ("sinks", "sinking"): "down",
    ("descends", "descending"): "down",
    ("rises", "rising"): "up",
    ("climbs", "climbing"): "up",
    ("ascends", "ascending"): "up",
    ("bounces", "bouncing"): "bouncing",
}
DIRECTIONS = {  # where a verb of motion goes ("" = the verb alone says it: "falling")
    "left": ("left", "left", "to the left", "leftwards", "leftward", "towards the left",
             "toward the left", "from right to left", "to the left side", "left across the screen"),
    "right": ("right", "right", "to the right", "rightwards", "rightward", "towards the right",
              "toward the right", "from left to right", "to the right side",
              "right across the screen"),
    "up": ("up", "up", "upwards", "upward", "to the top", "towards the top", "from bottom to top",
           "up the screen", "straight up"),
    "down": ("down", "down", "downwards", "downward", "to the bottom", "towards the bottom",
             "from top to bottom", "down the screen", "straight down"),
    "diagonal": ("diagonally", "on a diagonal", "across diagonally", "from corner to corner"),
    "bouncing": ("around", "off the walls", "back and forth", "", "all around"),
}  # fmt: skip
STILL = ("standing still", "staying still", "sitting still", "not moving", "static",
         "stationary", "motionless", "resting", "staying in place", "that does not move",
         "frozen in place", "holding still")  # fmt: skip
ADVERBS = ("slowly", "quickly", "steadily", "smoothly", "fast", "gently", "gradually")
BACKGROUND_WORDS = {"black": ("black", "black"), "gray": ("gray", "grey"),
                    "navy": ("navy", "navy blue"), "dark green": ("dark green",),
                    "white": ("white", "white")}  # fmt: skip
BACKGROUND_FORMS = (
    "on a {bg} background",
    "on {bg}",
    ", {bg} background",
    "against {bg}",
    "over a {bg} backdrop",
    "in front of a {bg} background",
    "with a {bg} background",
    "on a plain {bg} background",
    "{bg} background",
)
PREFIXES = ("", "", "", "", "a video of ", "an animation of ", "a clip of ", "footage of ",
            "show ", "show me ", "generate ", "make ", "render ", "create ", "please generate ",
            "i want ", "draw ", "animate ", "a simple animation of ", "a short video of ",
            "a scene with ", "there is ", "here is ", "give me ")  # fmt: skip
SUFFIXES = ("", "", "", "", "", " in 4k", ", smooth motion", ", high quality", ", simple",
            ", minimal", " please", " across the screen", " across the frame", " in the frame",
            " on screen", ", animated", ", 2d animation", ", flat colors")  # fmt: skip
JOINS = (" and ", ", and ", " while ", " plus ", ", ", " with ", ". ", " as well as ")
FILLERS = ("beautiful", "cinematic", "vibrant", "dreamy", "masterpiece", "lovely", "glowing",
           "shiny", "neon", "retro", "vintage", "detailed", "photorealistic", "awesome", "cute",
           "happy", "funny", "elegant", "realistic", "colorful", "amazing", "wonderful",
           "epic", "trending", "artstation", "octane", "hdr", "ultra", "sharp", "crisp",
           "lively", "playful", "mysterious", "abstract", "geometric", "tidy", "perfect",
           "nice", "cool", "really", "very", "super", "kinda", "like", "just")  # fmt: skip
_BOUND = ("dark", "navy", "bright", "light", "pure", "snow", "medium")  # first of two words
SYNONYM_OF = {  # where a new word's embedding starts: at its dataset word's
    **{w: c for c, ws in COLOUR_WORDS.items() for p in ws for w in p.split() if w != c},
    **{w: s for s, ws in SHAPE_WORDS.items() for p in ws for w in p.split() if w != s},
    "grey": "gray", "tiny": "small", "little": "small", "big": "large", "huge": "large",
    **{w: d for d in ("left", "right") for w in (f"{d}wards", f"{d}ward")},
    **{w: d for d in ("up", "down") for w in (f"{d}wards", f"{d}ward")},
    "diagonally": "diagonal", "falls": "falling", "drops": "falling", "dropping": "falling",
    "sinks": "sinking", "descends": "falling", "descending": "falling", "rises": "floating",
    "rising": "floating", "climbs": "floating", "climbing": "floating", "ascends": "floating",
    "ascending": "floating", "moves": "moving", "goes": "moving", "going": "moving",
    "heads": "moving", "heading": "moving", "bounces": "bouncing", "static": "still",
    "stationary": "still", "motionless": "still", "frozen": "still",
}  # fmt: skip
for _w in ("bright", "light", "pure", "snow", "shape", "circular", "round", "triangular", "mid"):
    SYNONYM_OF.pop(_w, None)  # modifiers start fresh


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _object_words(obj: ShapeObject, rng: np.random.Generator) -> str:
    """ "a big crimson ball", "the red one", "something green", "a circle" ..."""
    colour = _pick(rng, COLOUR_WORDS[obj.color]) if rng.random() < 0.92 else None
    shape = _pick(rng, SHAPE_WORDS[obj.shape]) if rng.random() < 0.8 else None
    if colour is not None and shape is None and rng.random() < 0.25:
        return f"something {colour}"
    words = [w for w in (colour, shape or _pick(rng, GENERIC)) if w]
    if rng.random() < 0.25:
        words.insert(0, _pick(rng, SIZE_WORDS[obj.size]))
    det = _pick(rng, ("a", "a", "a", "the", "one", ""))
    if det == "a" and words[0][0] in "aeiou":
        det = "an"
    return " ".join([det, *words]).strip()


def _motion_words(motion: str, rng: np.random.Generator, form: str) -> str:
    """The motion as an -ing phrase ("heading to the left"), a verb ("rolls leftwards") or a
    relative clause ("that drops")."""
    if motion == "still":
        return _pick(rng, STILL)
    verbs = [v for v, m in VERBS.items() if motion in m.split()]
    s_form, ing = _pick(rng, verbs)
    implied = motion in ("up", "down") and s_form in ("falls", "drops", "sinks", "descends",
                                                      "rises", "climbs", "ascends")  # fmt: skip
    way = "" if implied and rng.random() < 0.6 else _pick(rng, DIRECTIONS[motion])
    verb = {"ing": ing, "s": s_form, "that": f"that {s_form}", "is": f"is {ing}"}[form]
    if rng.random() < 0.15:
        verb = f"{verb} {_pick(rng, ADVERBS)}"
    return f"{verb} {way}".strip()


def _clause(obj: ShapeObject, rng: np.random.Generator) -> str:
    form = _pick(rng, ("ing", "ing", "ing", "s", "that", "is"))
    thing = _object_words(obj, rng)
    if rng.random() < 0.05:
        return thing  # no motion named
    motion = _motion_words(obj.motion, rng, form)
    if form == "ing" and rng.random() < 0.12:
        return f"{motion} {thing}"  # "rising yellow ball"
    return f"{thing} {motion}"


def free_form_caption(truth: ClipTruth, rng: np.random.Generator, max_words: int = 32) -> str:
    """One free-form description of the clip of ``truth`` (see the module docstring) of at
    most ``max_words`` words (the text encoder's length; else the dataset's own caption)."""
    for _ in range(8):
        text = _caption(truth, rng)
        if len(re.findall(r"[^\W_]+", text)) <= max_words:
            return text
    return truth.caption


def _caption(truth: ClipTruth, rng: np.random.Generator) -> str:
    clauses = [_clause(obj, rng) for obj in truth.objects]
    text = _pick(rng, JOINS).join(clauses)
    if rng.random() < 0.35:
        bg = _pick(rng, BACKGROUND_WORDS[truth.background])
        text = f"{text} {_pick(rng, BACKGROUND_FORMS).format(bg=bg)}".replace(" ,", ",")
    text = f"{_pick(rng, PREFIXES)}{text}{_pick(rng, SUFFIXES)}"
    words = text.split()
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):
        at = [i for i in range(len(words) + 1) if i == 0 or words[i - 1] not in _BOUND]
        words.insert(_pick(rng, at), _pick(rng, FILLERS))  # never inside "dark green"
    text = " ".join(words)
    case = rng.random()
    if case < 0.2:
        text = text[:1].upper() + text[1:]
    elif case < 0.25:
        text = text.upper()
    return text + _pick(rng, ("", "", "", ".", "!"))


def free_form_phrases() -> list[str]:
    """Every phrase `free_form_caption` puts together, `FILLERS` excepted (the text encoder's
    vocabulary holds their words)."""
    groups = [*COLOUR_WORDS.values(), *SHAPE_WORDS.values(), GENERIC, *SIZE_WORDS.values(),
              *DIRECTIONS.values(), STILL, ADVERBS, *BACKGROUND_WORDS.values(),
              BACKGROUND_FORMS, PREFIXES, SUFFIXES, JOINS, list(itertools.chain(*VERBS)),
              ("something that is",)]  # fmt: skip
    return [p.replace("{bg}", "") for p in itertools.chain(*groups)]


class FreeFormCaptions(Dataset):
    """Items of ``data`` (dicts with a "caption": e.g. a `LatentDataset`) whose caption is, with
    probability ``p``, redrawn by `free_form_caption` from ``clips.truth(i)`` (the
    `ShapesDataset` item i was made from). The draws come from torch's global generator, which
    the trainer seeds and checkpoints, so a resumed run draws what the original would have."""

    def __init__(self, data: Dataset, clips: ShapesDataset, p: float):
        if not 0.0 <= p <= 1.0:
            raise InvalidInputError(f"the free-form caption probability must be in [0, 1], got {p}")
        if len(data) != len(clips):
            raise InvalidInputError(f"{len(data)} items but {len(clips)} clips")
        self.data, self.clips, self.p = data, clips, p

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.data[index])
        item["template"] = item["caption"]  # the dataset's own caption, for a teacher
        draw = torch.rand(()).item()
        if draw < self.p:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            item["caption"] = free_form_caption(self.clips.truth(index), rng)
        return item
