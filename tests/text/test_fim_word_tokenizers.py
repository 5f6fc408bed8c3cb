"""FIM with tokenizers that are not byte-level, whose decoder spells the space between tokens:
WordPiece (BERT: ``##ar`` joins the word before it, any other piece starts a new word) and
SentencePiece BPE (``▁y`` is " y"; Gemma's keeps that space wherever the token is, a Llama 2
style decoder drops it from a text's first token). A middle is the text its tokens add after
the prefix, not its tokens decoded alone."""

import random

import pytest

from mdiff.text.fim.infilling import infill
from mdiff.text.sampling.heal import heal, text_after, true_length
from mdiff.text.sampling.token_bytes import token_view
from tests.text.test_fim_real_tokenizers import WholeTextOracle, _corpus, _texts

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def word_piece():
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    wp.train_from_iterator(_corpus(), vocab_size=1500, min_frequency=2,
                           special_tokens=SPECIALS, show_progress=False)  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=wp._tokenizer, pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token="[MASK]")  # fmt: skip


def sentence_piece():
    """Gemma style: no space prepended to a text (a suffix is encoded as it is written)."""
    from tokenizers import SentencePieceBPETokenizer, decoders, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    sp = SentencePieceBPETokenizer()
    sp.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    sp.decoder = decoders.Metaspace(prepend_scheme="never")
    sp.train_from_iterator(_corpus(), vocab_size=1500, min_frequency=2,
                           special_tokens=["<unk>", "<s>", "</s>", "<mask>"],
                           show_progress=False)  # fmt: skip
    return PreTrainedTokenizerFast(tokenizer_object=sp._tokenizer, unk_token="<unk>",
                                   eos_token="</s>", mask_token="<mask>")  # fmt: skip


@pytest.fixture(scope="module")
def wp():
    return word_piece()


@pytest.fixture(scope="module")
def sp():
    return sentence_piece()


def _id(tok, piece):
    i = tok.convert_tokens_to_ids(piece)
    assert i != tok.unk_token_id, piece
    return i


def test_a_piece_is_read_in_the_words_around_it(wp, sp):
    w, s = token_view(wp), token_view(sp)
    cont = next(t for t in wp.get_vocab() if t.startswith("##") and t[2:].isalpha())
    assert wp.decode([_id(wp, cont)]) == cont  # alone, the piece keeps its "##"
    assert text_after(w, "x = fo", [_id(wp, cont)]) == cont[2:]  # it continues the word
    assert text_after(w, "x = fo", [_id(wp, "return")]) == " return"  # a new word
    assert text_after(w, "x = ", [_id(wp, "return")]) == "return"  # the space is the prefix's
    assert text_after(s, "x =", [_id(sp, "▁return")]) == " return"
    assert text_after(s, "x = ", [_id(sp, "self")]) == "self"
    from tokenizers import decoders

    llama2 = sentence_piece()
    llama2.backend_tokenizer.decoder = decoders.Metaspace(prepend_scheme="first")
    assert llama2.decode([_id(sp, "▁return")]) == "return"  # first in a text: its space is lost
    assert text_after(token_view(llama2), "x =", [_id(sp, "▁return")]) == " return"


def _cases(seed, n):
    rng, texts, cases = random.Random(seed), _texts(), []
    while len(cases) < n:
        text = rng.choice(texts[:-1])  # ASCII code (the last text is for byte-level tokenizers)
        c = rng.randrange(1, len(text) - 40)
        m = rng.randrange(1, 20)
        cases.append((text[max(0, c - 60) : c], text[c : c + m], text[c + m : c + m + 40]))
    return cases


def _filled(tok, cases):
    """Each case's hole filled by the oracle at its true length: ``(case, result)``, the
    user's text spliced around the middle exactly."""
    model = WholeTextOracle(tok, cases)
    for p, m, s in cases:
        r = infill(model, tok, p, s, true_length(tok, p, m))
        assert r.text == p + r.middle + s
        yield (p, m, s), r


def test_word_piece_middles_join_the_words_around_them(wp):
    cases = _cases(2, 14) + [("value = compu", "te(x)", "\n"), ("x = ", "len(a)", "\n")]
    done = dict(_filled(wp, cases))
    # WordPiece keeps no whitespace: the text is right when it reads as the same tokens
    same = sum(wp.encode(r.text) == wp.encode("".join(case)) for case, r in done.items())
    # the misses are seams inside a word that no one token heals ("wrloca" + "l()")
    print(f"word piece: {same}/{len(cases)} texts read as the whole text's tokens")
    assert same >= len(cases) - 3
    r = done["value = compu", "te(x)", "\n"]
    # the piece joins the word; inside the middle the spaces are the decoder's ("( x )")
    assert "##" not in r.middle and r.text.startswith("value = compute")


def test_sentence_piece_middles_keep_their_leading_space(sp):
    cases = _cases(3, 14) + [("y =", " len(a)", "\n"), ("def f(x):\n    return", " x", "\n")]
    exact = 0
    for (p, m, _), r in _filled(sp, cases):
        exact += r.middle == m
        if heal(sp, p)[2] is None and not m[0].isspace():
            assert r.middle == m, (p[-12:], m)
    print(f"sentence piece: {exact}/{len(cases)} middles exact")
    assert exact >= len(cases) - 3
