"""FIM with tokenizers that put a space before every text they encode, as at a document's
start: Llama 2 style SentencePiece — transformers' `LlamaTokenizer` saved and loaded
(Metaspace, prepend "first"), its legacy form ("always"), the legacy conversion's
``Prepend("▁")`` normalizer — and byte-level BPE with ``add_prefix_space``. A suffix or a
middle continues the text before it, so it is encoded without that space
(`TokenView.encode_after`): the tokens the model sees spell the user's text, nothing added."""

import json
import random

import pytest
import torch
from torch import nn

from mdiff.text.fim.infilling import infill
from mdiff.text.model.spec import DenoiserSpec
from mdiff.text.sampling.heal import true_length
from mdiff.text.sampling.token_bytes import token_view
from tests.text.test_fim_real_tokenizers import _texts, gpt2_tokenizer
from tests.text.test_fim_word_tokenizers import sentence_piece

KINDS = ["llama", "llama-legacy", "prepend-normalizer", "byte-level-prefix-space"]


def _llama(sp, folder, legacy: bool):
    from transformers import AutoTokenizer, LlamaTokenizer

    merges = [tuple(m) for m in json.loads(sp.backend_tokenizer.to_str())["model"]["merges"]]
    t = LlamaTokenizer(vocab=sp.get_vocab(), merges=merges, legacy=legacy, unk_token="<unk>",
                       bos_token="<s>", eos_token="</s>", mask_token="<mask>")  # fmt: skip
    t.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _prepend_normalizer(llama):
    """Llama 2's tokenizer.json as the legacy conversion wrote it: the space comes from the
    normalizer (``Prepend("▁")``, ``Replace(" ", "▁")``), no pre-tokenizer."""
    from tokenizers import Tokenizer, normalizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(llama.backend_tokenizer.to_str())
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.pre_tokenizer = None
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                   eos_token="</s>", mask_token="<mask>")  # fmt: skip


@pytest.fixture(scope="module", params=KINDS)
def tok(request, tmp_path_factory):
    if request.param == "byte-level-prefix-space":
        from tokenizers import pre_tokenizers

        t = gpt2_tokenizer()
        t.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        return t
    folder = tmp_path_factory.mktemp(request.param)
    llama = _llama(sentence_piece(), folder, legacy=request.param == "llama-legacy")
    return _prepend_normalizer(llama) if request.param == "prepend-normalizer" else llama


def spelled(tok, ids) -> str | None:
    """The text `ids` spell, token by token (no decoder rule): bytes for a byte-level
    tokenizer, pieces with ``▁`` as a space otherwise; None when an unknown token is in."""
    view = token_view(tok)
    if view.table is not None:
        return view.token_bytes(ids).decode("utf-8")
    pieces = tok.convert_ids_to_tokens(list(ids))
    return None if tok.unk_token in pieces else "".join(pieces).replace("▁", " ")


def _pieces(n: int, seed: int = 0) -> list[str]:
    rng, texts = random.Random(seed), _texts()[:-1]  # ASCII code
    out = []
    while len(out) < n:
        text = rng.choice(texts)
        c = rng.randrange(0, len(text) - 40)
        out.append(text[c : c + rng.randrange(1, 40)])
    return out


def test_the_tokenizers_put_a_space_before_a_text(tok):
    """What the tests below are about: encoding any text adds a space in front."""
    assert spelled(tok, token_view(tok).encode("x = 1")) == " x = 1"


def test_text_after_other_text_is_encoded_without_the_added_space(tok):
    view, checked, stray = token_view(tok), 0, 0
    for piece in _pieces(60):
        old = spelled(tok, view.encode(piece))
        if old is None:  # a character the small vocabulary lacks
            continue
        assert spelled(tok, view.encode_after(piece)) == piece, piece
        checked += 1
        stray += old != piece  # plain encode: a space the text does not have
    assert checked >= 40 and stray >= checked // 2


class CanvasRecorder(nn.Module):
    """Uniform logits; keeps every canvas row it is given."""

    def __init__(self, tok):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.spec = DenoiserSpec(vocab_size=len(tok), mask_id=tok.mask_token_id)
        self.rows: list[list[int]] = []

    def forward(self, x, attention_mask=None, position_ids=None, **_):
        real = torch.ones_like(x, dtype=torch.bool) if attention_mask is None else attention_mask
        self.rows += [x[b][real[b]].tolist() for b in range(x.shape[0])]
        return torch.zeros(*x.shape, self.spec.vocab_size)


@pytest.mark.parametrize("suffix", ["\n    return total\n", "):\n    pass\n", " + 1\n"])
def test_the_model_sees_the_suffix_as_the_user_wrote_it(tok, suffix):
    model = CanvasRecorder(tok)
    r = infill(model, tok, "def f(x):\n    total = g(x", suffix, 4)
    assert r.text.endswith(suffix)
    row = model.rows[0]
    after = row[max(i for i, t in enumerate(row) if t == tok.mask_token_id) + 1 :]
    assert spelled(tok, after) == suffix


def test_a_middles_true_length_counts_no_added_space(tok):
    view = token_view(tok)
    middle = "\n        return None"
    ids = view.encode_after(middle)
    assert spelled(tok, ids) == middle
    assert true_length(tok, "if x is None:", middle) == len(ids) < len(view.encode(middle))
