"""Free-form captions (mdiff.video.captions): they describe their clip truthfully in words the
encoder knows, the training wrapper redraws them reproducibly, and an encoder with a grown
vocabulary starts exactly where the old one was."""

import numpy as np
import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.video.captions import (
    BACKGROUND_WORDS,
    COLOUR_WORDS,
    DIRECTIONS,
    FILLERS,
    SHAPE_WORDS,
    SYNONYM_OF,
    FreeFormCaptions,
    free_form_caption,
)
from mdiff.video.data import COLORS, ShapesDataset
from mdiff.video.text_encoders import ShapesTextEncoder, ShapesTextEncoderConfig
from mdiff.video.text_encoders.shapes import shapes_vocabulary, words

CLIPS = ShapesDataset(400, seed=7, max_objects=1)


def _colour_words() -> dict[str, str]:
    """Each single word that names one object colour -> that colour."""
    out = {}
    for colour, phrases in COLOUR_WORDS.items():
        for phrase in phrases:
            out.update(
                {w: colour for w in phrase.split() if w not in ("bright", "light", "pure", "snow")}
            )
    return out


def test_every_word_is_known_or_a_filler_and_captions_fit_the_encoder():
    vocab, rng = set(shapes_vocabulary()), np.random.default_rng(0)
    for i in range(400):
        text = free_form_caption(ShapesDataset(400, seed=3).truth(i), rng)
        ws = words(text)
        assert len(ws) <= ShapesTextEncoderConfig().max_length
        assert set(ws) <= vocab | set(FILLERS), (text, set(ws) - vocab - set(FILLERS))
    assert not set(FILLERS) & vocab  # fillers stay [UNK]


def test_one_object_captions_name_only_its_colour_and_never_another_direction():
    """The oracle is the clip's truth: once the background phrase is taken out, a named colour
    is the object's (no other colour word) and no word of another heading appears."""
    colours, rng = _colour_words(), np.random.default_rng(1)
    named = 0
    for i in range(len(CLIPS)):
        truth = CLIPS.truth(i)
        obj, text = truth.objects[0], free_form_caption(truth, rng).lower()
        for phrase in sorted((*BACKGROUND_WORDS[truth.background], "from left to right",
                              "from right to left"), key=len, reverse=True):  # fmt: skip
            text = text.replace(f"{phrase} background", "").replace(f"{phrase} backdrop", "")
            text = text.replace(f"on {phrase}", "").replace(f"against {phrase}", "")
            text = text.replace(phrase, "") if phrase.startswith("from") else text
        said = {colours[w] for w in words(text) if w in colours}
        assert said <= {obj.color}, (text, obj.color)
        named += obj.color in said
        others = {"left", "right", "up", "down"} - {obj.motion}
        assert not others & set(words(text)), (text, obj.motion)
    assert named >= 0.8 * len(CLIPS)  # the colour is left out only now and then


def test_captions_vary_and_are_reproducible():
    truth = CLIPS.truth(0)
    a = [free_form_caption(truth, np.random.default_rng(s)) for s in range(50)]
    b = [free_form_caption(truth, np.random.default_rng(s)) for s in range(50)]
    assert a == b and len(set(a)) >= 40


def test_synonyms_point_at_words_of_the_old_vocabulary():
    old = set(shapes_vocabulary(free_form=False))
    assert all(target in old for target in SYNONYM_OF.values())
    assert SYNONYM_OF["ball"] == "circle" and SYNONYM_OF["box"] == "square"
    assert {SYNONYM_OF[w] for w in DIRECTIONS["left"] if w in SYNONYM_OF} <= {"left"}
    assert all(s in SHAPE_WORDS for s in ("circle", "square", "triangle"))
    assert set(COLOUR_WORDS) == set(COLORS)


def test_free_form_wrapper_redraws_with_probability_p_reproducibly():
    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(CLIPS)

        def __getitem__(self, i):
            return {"caption": CLIPS.truth(i).caption, "latents": torch.zeros(1)}

    never, always = FreeFormCaptions(Items(), CLIPS, 0.0), FreeFormCaptions(Items(), CLIPS, 1.0)
    assert [never[i]["caption"] for i in range(20)] == [CLIPS.truth(i).caption for i in range(20)]
    torch.manual_seed(0)
    first = [always[i]["caption"] for i in range(20)]
    torch.manual_seed(0)
    assert [always[i]["caption"] for i in range(20)] == first  # the trainer's RNG decides
    assert sum(c != CLIPS.truth(i).caption for i, c in enumerate(first)) >= 18
    half = FreeFormCaptions(Items(), CLIPS, 0.5)
    changed = sum(half[i]["caption"] != CLIPS.truth(i).caption for i in range(len(CLIPS)))
    assert 0.35 * len(CLIPS) < changed < 0.65 * len(CLIPS)
    with pytest.raises(InvalidInputError):
        FreeFormCaptions(Items(), CLIPS, 1.5)


def test_grown_vocabulary_starts_where_the_old_encoder_was():
    """Rows move by word, so the new encoder encodes every old caption exactly as the old one
    did; a synonym starts at its word's embedding; unknown words are reported."""
    torch.manual_seed(0)
    old = ShapesTextEncoder(ShapesTextEncoderConfig(vocab=shapes_vocabulary(free_form=False)))
    new = ShapesTextEncoder(ShapesTextEncoderConfig())
    fresh = new.load_with_vocabulary(old)
    assert 0 < fresh < len(new.config.vocab) - len(old.config.vocab)
    captions = [CLIPS.truth(i).caption for i in range(8)]
    with torch.no_grad():
        a, b = old.encode(captions), new.encode(captions)
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        ball, circle = new.encode(["a red ball"])[0], old.encode(["a red circle"])[0]
    torch.testing.assert_close(ball, circle, rtol=0, atol=0)
    assert new.unknown_words(["A shiny red ball, zorbly!"]) == ["shiny", "zorbly"]
    assert old.unknown_words(["a red ball"]) == ["ball"]
    other = ShapesTextEncoder(ShapesTextEncoderConfig(dim=64))
    with pytest.raises(InvalidInputError, match="differ"):
        other.load_with_vocabulary(old)
