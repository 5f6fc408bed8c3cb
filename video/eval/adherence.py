"""Prompt adherence for shapes videos: does the clip show what its caption says?

    spec = parse_prompt("a red circle moving left on a black background")
    report = adherence(frames, "a red circle moving left on a black background")
    report["hits"]            # {"colour": [True], "shape": [True], "motion": [True],
                              #  "background": [True], "count": [True]}
    evaluate_prompts(pipe, prompts, seeds=[0])   # accuracy per attribute + temporal figures

The caption vocabulary is that of the shapes dataset (`mdiff.video.data`): colours, shapes,
sizes, motion phrases and backgrounds. The detectors (`mdiff.video.eval.detect`) are
classical image processing, so the scores need no downloaded weights; on clips rendered by
the dataset itself they recover colour, shape and motion nearly always (see the tests for the
measured figures), which makes them a fair judge of a model trained on that data. They say
nothing about realism: pair them with the temporal figures (flicker, seam jump, drift).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from mdiff.errors import InvalidInputError
from mdiff.video.data import BACKGROUNDS, COLORS, PHRASES, SHAPES, SIZES
from mdiff.video.eval import metrics as video_eval
from mdiff.video.eval.detect import Track, detect

__all__ = ["ATTRIBUTES", "DIRECTIONS", "ObjectSpec", "PromptSpec", "adherence",
           "evaluate_prompts", "parse_prompt"]  # fmt: skip

ATTRIBUTES = ("colour", "shape", "motion", "direction", "background", "count")
DIRECTIONS = ("left", "right", "up", "down", "diagonal")  # motions with a heading
_OBJECT_ATTRIBUTES = ("colour", "shape", "motion")
_SYNONYMS = {"grey": "gray", "colour": "color"}
_EXTRA_MOTION = {  # words a person might write besides the dataset's phrases (matched last)
    "bouncing": (r"bounc\w*",),
    "still": (r"static", r"stationary", r"motionless", r"not moving"),
    "diagonal": (r"diagonal\w*",),
    "left": (r"left(?:wards?)?",),
    "right": (r"right(?:wards?)?",),
    "up": (r"rising", r"up(?:wards?)?"),
    "down": (r"falling", r"sinking", r"down(?:wards?)?"),
}


def _alternatives(words) -> str:
    return "|".join(sorted(words, key=len, reverse=True))  # longest first: "dark green"


_MOTION_RE = {
    m: re.compile(rf"\b(?:{_alternatives([*map(re.escape, PHRASES[m]), *_EXTRA_MOTION[m]])})\b")
    for m in PHRASES
}
_BG_WORDS = _alternatives(BACKGROUNDS)
_BG_RE = re.compile(rf"\b({_BG_WORDS})\s+(?:background|backdrop)s?\b")
_BG_ON_RE = re.compile(rf"\b(?:on|over|against)\s+(?:an?\s+)?({_BG_WORDS})\b(?!\s+\w*(?:"
                       rf"{_alternatives(SHAPES)}))")  # fmt: skip
_SHAPE_RE = re.compile(rf"\b({_alternatives(SHAPES)})s?\b")
_COLOUR_RE = re.compile(rf"\b({_alternatives(COLORS)})\b")
_SIZE_RE = re.compile(rf"\b({_alternatives(SIZES)})\b")
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "1": 1, "2": 2, "3": 3, "4": 4}
_NUMBER_RE = re.compile(rf"\b({_alternatives(_NUMBERS)})\b")


@dataclass(frozen=True)
class ObjectSpec:
    """One object a prompt names; None where the prompt does not say."""

    colour: str | None = None
    shape: str | None = None
    motion: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for: the first object's colour, shape and motion (``objects`` holds
    every object), the background, and the number of objects named (None: none named)."""

    colour: str | None
    shape: str | None
    motion: str | None
    background: str | None
    count: int | None
    objects: tuple[ObjectSpec, ...] = ()


def _first_motion(text: str) -> str | None:
    found = [(m.start(), name) for name, rx in _MOTION_RE.items() if (m := rx.search(text))]
    return min(found)[1] if found else None


def _last(rx: re.Pattern, text: str) -> str | None:
    found = rx.findall(text)
    return found[-1] if found else None


def parse_prompt(prompt: str) -> PromptSpec:
    """Read colour, shape, motion, size (per object), background and object count from a
    caption in the shapes vocabulary; anything the prompt does not name is None.

    Objects are anchored on shape words (on colour words when there is none): a colour or
    size belongs to the next shape, a motion phrase to the shape before it.
    """
    if not isinstance(prompt, str):
        raise InvalidInputError(f"a prompt must be a string, got {type(prompt).__name__}")
    text = " ".join(_SYNONYMS.get(w, w) for w in prompt.lower().replace(",", " , ").split())
    background = None
    if (m := _BG_RE.search(text) or _BG_ON_RE.search(text)) is not None:
        background = m.group(1)
        text = text[: m.start()] + " , " + text[m.end() :]
    anchors = list(_SHAPE_RE.finditer(text)) or list(_COLOUR_RE.finditer(text))
    objects = []
    for i, a in enumerate(anchors):
        before = text[anchors[i - 1].end() if i else 0 : a.start()]
        after = text[a.end() : anchors[i + 1].start() if i + 1 < len(anchors) else len(text)]
        is_shape = a.re is _SHAPE_RE
        colour = _last(_COLOUR_RE, before) if is_shape else a.group(1)
        obj = ObjectSpec(colour=colour, shape=a.group(1) if is_shape else None,
                         motion=_first_motion(after), size=_last(_SIZE_RE, before))  # fmt: skip
        objects += [obj] * _NUMBERS.get(_last(_NUMBER_RE, before), 1)  # "two red circles"
    if not objects and (motion := _first_motion(text)) is not None:
        objects.append(ObjectSpec(motion=motion))  # "something moving left"
    first = objects[0] if objects else ObjectSpec()
    count = sum(o.shape is not None or o.colour is not None for o in objects) or None
    return PromptSpec(first.colour, first.shape, first.motion, background, count, tuple(objects))


def _match(objects: Sequence[ObjectSpec], tracks: Sequence[Track]) -> list[Track | None]:
    """The assignment of named objects to distinct tracks that matches most colours, then most
    shapes and motions (a clip adheres when some object is what the prompt names)."""

    def score(pairs):
        colour = sum(o.colour is not None and o.colour == t.colour for o, t in pairs)
        rest = sum(getattr(o, a) is not None and getattr(o, a) == getattr(t, a)
                   for o, t in pairs for a in ("shape", "motion"))  # fmt: skip
        return colour, rest

    n = min(len(objects), len(tracks))
    best, best_score = [None] * len(objects), (-1, -1)
    for chosen in itertools.permutations(range(len(tracks)), n):
        s = score([(objects[i], tracks[j]) for i, j in enumerate(chosen)])
        if s > best_score:  # ties keep the earlier (larger) tracks
            best, best_score = [tracks[j] for j in chosen] + [None] * (len(objects) - n), s
    return best


def adherence(frames, prompt: str | PromptSpec) -> dict:
    """Score uint8 frames ``(T, H, W, 3)`` against a prompt.

    Returns ``{"prompt", "spec", "detected", "hits"}``: ``hits[attr]`` is a list of bools,
    one per named object for colour / shape / motion (an object with no track misses all
    three), one for background and count; attributes the prompt does not name give ``[]``.
    ``direction`` is the motion hit of the objects whose motion has a heading (`DIRECTIONS`:
    not "still" or "bouncing").
    """
    spec = prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)
    tracks, background = detect(frames)
    tracks = tracks[:8]  # the assignment tries every permutation
    matched = _match(spec.objects, tracks)
    hits: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    for obj, track in zip(spec.objects, matched, strict=True):
        for attr in _OBJECT_ATTRIBUTES:
            if getattr(obj, attr) is not None:
                hits[attr].append(track is not None and getattr(track, attr) == getattr(obj, attr))
        if obj.motion in DIRECTIONS:
            hits["direction"].append(hits["motion"][-1])
    if spec.background is not None:
        hits["background"].append(background == spec.background)
    if spec.count is not None:
        hits["count"].append(len(tracks) == spec.count)
    detected = {"background": background, "objects": [t.summary() for t in tracks]}
    return {"prompt": prompt if isinstance(prompt, str) else None, "spec": asdict(spec),
            "detected": detected, "hits": hits}  # fmt: skip


def _generate(pipe, prompt: str, seed: int, chunks, settings: dict):
    """Frames and chunk lengths: a block-causal pipeline streams (its chunks are the seams)."""
    if chunks is None and getattr(pipe, "causal", False):
        parts = [c.frames for c in pipe.stream(prompt, seed=seed, **settings)]
        return torch.cat(parts), [len(p) for p in parts]
    return pipe(prompt, seed=seed, **settings).frames, chunks


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def evaluate_prompts(pipe, prompts: Sequence[str], seeds: Sequence[int] = (0,), *,
                     chunks: Sequence[int] | None = None, images: Sequence | None = None,
                     specs: Sequence[PromptSpec] | None = None,
                     progress: Callable[[int, int], object] | None = None,
                     **settings) -> dict:  # fmt: skip
    """Generate every prompt with every seed and score the clips (against ``specs[k]``, the
    hand-written labels of prompt k, when given; else against what `parse_prompt` reads).

    ``settings`` go to the pipeline (num_frames, height, width, steps, guidance, ...). Seams:
    ``chunks`` (frame counts per chunk) when given, else the chunks a block-causal pipeline
    streams; a bidirectional one without ``chunks`` reports no seam figure. Returns
    ``{"clips", "accuracy": {attr: {"hits", "total", "accuracy"}}, "temporal": {"flicker",
    "seam_ratio", "seam_boundary", "seam_interior", "drift"}, "per_clip": [...]}``; drift is
    the colour-histogram distance of the last frame from the first (`video.eval.drift`).
    Image-to-video: ``images`` holds one uint8 (H, W, 3) first frame per prompt; each row then
    has ``first_frame_psnr`` (dB, the clip's first frame against its image) and the result
    ``"first_frame_psnr": {"mean", "min"}``.
    """
    if not prompts or not seeds:
        raise InvalidInputError("need at least one prompt and one seed")
    for name, given in (("image", images), ("spec", specs)):
        if given is not None and len(given) != len(prompts):
            raise InvalidInputError(f"need one {name} per prompt, got {len(given)} for "
                                    f"{len(prompts)} prompts")  # fmt: skip
    total, per_clip = len(prompts) * len(seeds), []
    runs = itertools.product(enumerate(prompts), seeds)
    for done, ((k, prompt), seed) in enumerate(runs, start=1):
        image = None if images is None else torch.as_tensor(images[k])
        kw = settings if image is None else {**settings, "image": image}
        frames, lengths = _generate(pipe, prompt, int(seed), chunks, kw)
        row = adherence(frames, prompt if specs is None else specs[k])
        row["prompt"], row["seed"] = prompt, int(seed)
        if image is not None:
            row["first_frame_psnr"] = float(video_eval.psnr(frames[:1], image[None])[0])
        row["flicker"] = video_eval.flicker(frames) if len(frames) > 1 else None
        row["drift"] = float(video_eval.drift(frames)[-1])
        if lengths is not None and len(lengths) > 1:
            seam = video_eval.seam_jump(frames, lengths)
            row["seam"] = {"boundary": seam.boundary, "interior": seam.interior,
                           "ratio": seam.ratio}  # fmt: skip
        per_clip.append(row)
        if progress is not None:
            progress(done, total)
    result = {"clips": len(per_clip), "accuracy": summarise_hits(per_clip),
              "temporal": _temporal(per_clip), "per_clip": per_clip}  # fmt: skip
    if images is not None:
        values = [r["first_frame_psnr"] for r in per_clip]
        result["first_frame_psnr"] = {"mean": _mean(values), "min": min(values)}
    return result


def summarise_hits(rows: Sequence[dict]) -> dict:
    """Accuracy per attribute over `adherence` results (None where no prompt named it)."""
    out = {}
    for attr in ATTRIBUTES:
        values = [h for row in rows for h in row["hits"][attr]]
        acc = sum(values) / len(values) if values else None
        out[attr] = {"hits": int(sum(values)), "total": len(values), "accuracy": acc}
    return out


def _temporal(rows: Sequence[dict]) -> dict:
    seams = [r["seam"] for r in rows if "seam" in r]
    return {
        "flicker": _mean(r["flicker"] for r in rows),
        "drift": _mean(r["drift"] for r in rows),
        "seam_ratio": _mean(s["ratio"] for s in seams),
        "seam_boundary": _mean(s["boundary"] for s in seams),
        "seam_interior": _mean(s["interior"] for s in seams),
    }
