"""FIM with real byte-level BPE tokenizers (GPT-2 and Qwen2 style, transformers'
`PreTrainedTokenizerFast`, trained here offline): ids from the tokenizer, healing on bytes,
byte-exact splicing, with an oracle model and tiny random transformers models."""

import random
import sysconfig
from pathlib import Path

import pytest
import torch
from torch import nn

from mdiff.errors import InvalidInputError
from mdiff.text.fim.infilling import fill, infill
from mdiff.text.model.spec import DenoiserSpec
from mdiff.text.sampling.heal import heal, middle_text, true_length
from mdiff.text.sampling.token_bytes import token_view

SPECIALS = ["<|endoftext|>", "<|mask|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
              r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip
EXTRA = "def café(x):\n\treturn 'naïve 😀 über'  \n# 日本語のコメント\nimport os\n"
STDLIB = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def _corpus():
    return [f.read_text(encoding="utf-8") for f in STDLIB[:12]] + [EXTRA] * 5


def _wrap(backend):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=SPECIALS[0],
                                   mask_token=SPECIALS[1],
                                   additional_special_tokens=SPECIALS[2:])  # fmt: skip


def gpt2_tokenizer(vocab=1200):
    """GPT-2 style: `ByteLevelBPETokenizer` (byte-level split regex)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_corpus(), vocab_size=vocab, min_frequency=2,
                            special_tokens=SPECIALS, show_progress=False)  # fmt: skip
    return _wrap(bpe._tokenizer)


def qwen_tokenizer(vocab=1200):
    """Qwen2 style: NFC, Qwen2's split regex, then byte-level without its own regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.NFC()
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    t.train_from_iterator(_corpus(), trainer=trainer)
    return _wrap(t)


@pytest.fixture(scope="module", params=["gpt2", "qwen"])
def tok(request):
    return gpt2_tokenizer() if request.param == "gpt2" else qwen_tokenizer()


def _texts():
    return [f.read_text(encoding="utf-8") for f in STDLIB[12:18]] + [EXTRA * 3]


class WholeTextOracle(nn.Module):
    """Knows each case's whole text as the tokenizer writes it, ``encode(prefix + middle) +
    encode(suffix)``: a row as long whose unmasked tokens are those gets them with certainty;
    any other row gets uniform logits. Mask id from the tokenizer."""

    def __init__(self, tok, cases):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        view = token_view(tok)
        self.cases = [view.encode(p + m) + view.encode(s) for p, m, s in cases]
        self.spec = DenoiserSpec(vocab_size=len(tok), mask_id=tok.mask_token_id)

    def forward(self, x, attention_mask=None, position_ids=None, **_):
        real = torch.ones_like(x, dtype=torch.bool) if attention_mask is None else attention_mask
        out = torch.zeros(*x.shape, self.spec.vocab_size)
        for b in range(x.shape[0]):
            row = x[b][real[b]].tolist()
            for full in self.cases:
                if len(row) == len(full) and all(
                    t == f for t, f in zip(row, full, strict=True) if t != self.spec.mask_id
                ):
                    out[b, -len(row) :] = 20.0 * nn.functional.one_hot(
                        torch.tensor(full), self.spec.vocab_size
                    )
        return out


def test_view_ids_and_bytes_come_from_the_tokenizer(tok):
    view = token_view(tok)
    assert view.mask_id == tok.mask_token_id == 1
    assert set(view.special) == {tok.convert_tokens_to_ids(t) for t in SPECIALS}
    text = "x = '😀 naïve'\r\n\tpass  \n"
    ids = view.encode(text)
    assert view.token_bytes(ids) == text.encode("utf-8") and view.decode(ids) == text
    assert view.decode(ids) == tok.decode(ids, clean_up_tokenization_spaces=False)
    assert tok.mask_token_id not in view.encode("a <|mask|> b")  # text, not the special
    partial = [i for i, b in enumerate(view.table) if b and b[-1] >= 0x80 and b[0] >= 0xC0
               and len(b) < 2 + (b[0] >= 0xE0) + (b[0] >= 0xF0)]  # fmt: skip
    assert partial  # a token that ends inside a UTF-8 character keeps its exact bytes
    assert tok.decode(partial[:1]).endswith("\ufffd")
    from mdiff.text.model.loaders import HFTokenizer

    wrapped = token_view(HFTokenizer(tok, len(tok)))  # what CodeModel.from_pretrained gives
    assert wrapped.table == view.table and wrapped.mask_id == view.mask_id
    assert wrapped.encode("a <|mask|> b") == view.encode("a <|mask|> b")


def test_healing_gives_the_whole_texts_tokens_at_the_seam(tok):
    view, rng, texts = token_view(tok), random.Random(0), _texts()
    healed = plain_wrong = spaced = 0
    for _ in range(300):
        text = rng.choice(texts)
        c = rng.randrange(1, len(text))
        prefix, middle = text[:c], text[c : c + rng.randrange(1, 30)]
        kept, carry, allowed = heal(tok, prefix)
        whole = view.encode(prefix + middle)
        plain_wrong += view.encode(prefix) + view.encode(middle) != whole
        if allowed is None:
            continue
        healed += 1
        assert kept + carry == prefix and carry
        if middle[0].isspace():  # no carry is stable for code and for more whitespace alike:
            spaced += 1  # the probes are code (see heal.PROBES); the splice stays exact
        else:
            assert view.encode(kept) + view.encode(carry + middle) == whole, (prefix[-20:], carry)
        head = carry.encode("utf-8")
        ok = {i for i, b in enumerate(view.table) if b is not None and b.startswith(head)}
        assert set(allowed.nonzero()[:, 0].tolist()) == ok
    print(f"seam: {healed}/300 cuts healed, whole-text tokens but {spaced} whitespace-led "
          f"middles; unhealed wrong {plain_wrong}")  # fmt: skip
    assert healed - spaced >= 100 and plain_wrong >= 100  # without healing the seam is often wrong


def test_oracle_infill_is_byte_exact_for_random_cuts(tok):
    rng, texts, cases = random.Random(1), _texts(), []
    while len(cases) < 12:
        text = rng.choice(texts)
        c = rng.randrange(1, len(text) - 40)
        m = rng.randrange(1, 20)
        cases.append((text[max(0, c - 60) : c], text[c : c + m], text[c + m : c + m + 40]))
    cases += [("s = '", "naïve 😀", "'\n"), ("", "import os", "\n"), ("x = 1\n", "y\t= 2 ", "")]
    model = WholeTextOracle(tok, cases)
    hits = spaced = 0
    for p, m, s in cases:
        n = true_length(tok, p, m)
        r = infill(model, tok, p, s, n)
        assert r.text == p + r.middle + s and r.text[r.span[0] : r.span[1]] == r.middle
        hits += r.middle == m
        if heal(tok, p)[2] is not None and m[0].isspace():  # (heal.PROBES: code)
            spaced += 1  # whitespace after a healed seam: the oracle's tokens may differ
        elif heal(tok, p)[2] is not None:
            assert r.middle == m, (p[-10:], m)  # the healed hole holds the whole text's tokens
    print(f"oracle: {hits}/{len(cases)} middles exact ({spaced} whitespace-led after a seam)")
    assert hits >= len(cases) - 3 - spaced and len(cases) - spaced >= 9


def test_user_text_with_a_special_tokens_spelling_stays_text(tok):
    cases = [("a = '<|mask|>'\nb = ", "len(a)", "\n")]
    model = WholeTextOracle(tok, cases)
    r = infill(model, tok, cases[0][0], cases[0][2], true_length(tok, cases[0][0], "len(a)"))
    assert r.middle == "len(a)"


def test_mask_id_must_be_the_tokenizers(tok):
    model = WholeTextOracle(tok, [("a", "b", "c")])
    model.spec = DenoiserSpec(vocab_size=len(tok), mask_id=3)
    with pytest.raises(InvalidInputError, match="mask token 1"):
        infill(model, tok, "a", "c", 2)


def _tiny_models(tok):
    from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    from mdiff.text.model.adapters import HFAdapter, dream_spec, from_masked_lm

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64)  # fmt: skip
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tok), max_position_embeddings=256, **small))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), max_position_embeddings=256,
                                         num_key_value_heads=2, **small))  # fmt: skip
    spec = dream_spec(vocab_size=len(tok), mask_id=tok.mask_token_id, eos_ids=(tok.eos_token_id,))
    return [from_masked_lm(bert.eval(), tok), HFAdapter(llama.eval(), spec)]


EDGES = [("def café(x):\n\treturn ", "  # über 😀\n"), ("x = 1\r\ny = ", "\r\nz = 3\r\n"),
         ("", "\nprint(1)\n"), ("import o", ""), ("s = '😀", "'   \n"),
         ("a = \t", "\t\n")]  # fmt: skip


@pytest.mark.parametrize("length", [5, "auto"])
def test_random_models_splice_byte_exactly(tok, length):
    for model in _tiny_models(tok):
        for p, s in EDGES:
            r = infill(model, tok, p, s, length, candidates=(2, 4), temperature=1.0, seed=3)
            data = r.text.encode("utf-8")
            assert data.startswith(p.encode("utf-8")) and data.endswith(s.encode("utf-8"))
            assert r.text == p + r.middle + s and r.text[r.span[0] : r.span[1]] == r.middle
            if "\r\n" in p + s and "\n" in r.middle:
                assert r.middle.count("\n") == r.middle.count("\r\n")  # the file's line ending
    out, results = fill(model, tok, "x = <FILL>\ny = 'ü<FILL>'\n", length=3)
    assert out.startswith("x = ") and out.endswith("'\n") and len(results) == 2
    for r in results:
        assert out[r.span[0] : r.span[1]] == r.middle


def test_auto_length_finds_the_true_length_with_healing(tok):
    cases = [("import o", "s\n", "print(1)\n"), ("def café(x):\n    retu", "rn x", "\n"),
             ("s = 'naïve ", "😀'", "\n")]  # fmt: skip
    model = WholeTextOracle(tok, cases)
    assert [heal(tok, p)[1] for p, _, _ in cases[:2]] == [" o", " retu"]
    for p, m, s in cases:
        r = infill(model, tok, p, s, "auto", candidates=range(1, 12))
        assert (r.middle, r.length) == (m, true_length(tok, p, m))
        assert max(r.scores, key=r.scores.get) == r.length


def test_a_hole_after_an_indentation_is_filled_with_the_codes_own_tokens(tok):
    # the cursor on an indented line: "\n    return" is "\n   " + " return", so the carry is
    # the indentation's last space (a carry "\n    " made the first token repeat the indent)
    cases = [("def f():\n    ", "return x", "\n"), ("if x:\n        ", "y = 1", "\n"),
             ("x = [\n    1,\n    ", "2,", "\n]\n")]  # fmt: skip
    model = WholeTextOracle(tok, cases)
    for p, m, s in cases:
        kept, carry, allowed = heal(tok, p)
        assert carry == " " and allowed is not None
        r = infill(model, tok, p, s, true_length(tok, p, m))
        assert r.middle == m and r.text == p + m + s


def test_a_hole_that_ends_inside_a_character_leaves_it_out(tok):
    view = token_view(tok)
    ids = view.encode('s = "🎉 ok"')
    cut = next(k for k in range(1, len(ids)) if view.token_bytes(ids[:k]).endswith(b"\xf0\x9f"))
    assert middle_text(tok, ids[:cut]) == 's = "'  # not 's = "\ufffd'
    assert middle_text(tok, ids) == 's = "🎉 ok"'
    # bytes that are no character inside the hole still show where they were
    ff = [i for i, b in enumerate(view.table) if b == b"\xff"]
    bad = view.encode("a") + ff + view.encode("b")
    assert middle_text(tok, bad) == "a\ufffdb"
