"""The code tokenizer: exact round trips, special tokens that text cannot forge, determinism."""

from __future__ import annotations

import json

import pytest

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.text.data import find_sources, stdlib_root
from mdiff.text.model.tokenizer import SPECIAL_TOKENS, CodeTokenizer, train_tokenizer

EDGE_CASES = [
    "",
    "\n",
    "\t\tif x:\n\t\t\treturn 1\n",
    "def f():\r\n    return 2\r\n",
    "lone\rcarriage\r",
    "trailing spaces   \n   \n\n\n",
    "   leading spaces",
    "s = 'héllo wörld ☃ 𝔘𝔫𝔦 日本語 🐍'\n",
    "zero\u200bwidth\ufeffbom and combining e\u0301\n",
    "\x00\x01\x7f control\x0c\x0b\n",
    "x = '[MASK] [PAD] [EOS] [PRE][SUF][MID] [BOS]'\n",
    "no newline at end",
    " " * 37 + "\t" * 5 + "\n" * 9,
]


def _stdlib_sample(n: int = 60) -> list[str]:
    root = stdlib_root()
    files = find_sources(root)
    picked = files[:: max(1, len(files) // n)][:n]
    return [(root / f).read_bytes().decode("utf-8") for f in picked]


@pytest.fixture(scope="module")
def stdlib_texts() -> list[str]:
    return _stdlib_sample()


@pytest.fixture(scope="module")
def tok(stdlib_texts) -> CodeTokenizer:
    return train_tokenizer(stdlib_texts[:20], vocab_size=1024)


def test_round_trip_on_real_stdlib_files(tok, stdlib_texts):
    assert len(stdlib_texts) >= 50
    encoded = tok.encode_batch(stdlib_texts)
    for text, ids in zip(stdlib_texts, encoded, strict=True):
        assert tok.decode(ids) == text
        assert min(ids) >= len(SPECIAL_TOKENS)  # plain text never yields a special id
    assert encoded[0] == tok.encode(stdlib_texts[0])
    # compresses: BPE merges are used, not only single bytes
    n_bytes = sum(len(t.encode()) for t in stdlib_texts)
    assert sum(map(len, encoded)) < 0.5 * n_bytes


@pytest.mark.parametrize("text", EDGE_CASES)
def test_round_trip_edge_cases(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(i >= len(SPECIAL_TOKENS) for i in ids)


def test_specials_have_fixed_single_ids(tok):
    assert [tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id] == [0, 1, 2, 3]
    assert [tok.pre_id, tok.suf_id, tok.mid_id] == [4, 5, 6]
    assert tok.special_ids == {name: i for i, name in enumerate(SPECIAL_TOKENS)}
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.decode([i]) == name
        assert tok.backend.token_to_id(name) == i
    ids = [tok.bos_id, *tok.encode("x = 1\n"), tok.mask_id, tok.eos_id]
    assert tok.decode(ids) == "[BOS]x = 1\n[MASK][EOS]"
    assert tok.decode(ids, skip_special_tokens=True) == "x = 1\n"
    forged = tok.encode("".join(SPECIAL_TOKENS))
    assert all(i >= len(SPECIAL_TOKENS) for i in forged) and len(forged) > len(SPECIAL_TOKENS)


def test_training_is_deterministic_and_files_equal_texts(tmp_path, stdlib_texts):
    texts = stdlib_texts[20:26]
    a = train_tokenizer(texts, vocab_size=600)
    b = train_tokenizer(texts, vocab_size=600)
    assert a.to_json() == b.to_json()
    paths = []
    for i, text in enumerate(texts):
        path = tmp_path / f"f{i}.py"
        path.write_bytes(text.encode("utf-8"))
        paths.append(path)
    assert train_tokenizer(paths, vocab_size=600).to_json() == a.to_json()
    assert train_tokenizer([str(p) for p in paths], vocab_size=600).to_json() == a.to_json()
    assert a.vocab_size <= 600 and a.vocab_size == len(a.backend.get_vocab())
    c = train_tokenizer(texts, vocab_size=400)
    assert c.vocab_size <= 400 < a.vocab_size


def test_save_load_round_trip(tmp_path, tok, stdlib_texts):
    path = tok.save(tmp_path / "run")
    assert path.name == "tokenizer.json" and json.loads(path.read_text())["model"]["type"] == "BPE"
    for where in (tmp_path / "run", path):
        loaded = CodeTokenizer.load(where)
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.encode(stdlib_texts[3]) == tok.encode(stdlib_texts[3])
        assert loaded.encode("[MASK]") == tok.encode("[MASK]") != [tok.mask_id]


def test_errors(tmp_path, tok):
    with pytest.raises(InvalidInputError):
        train_tokenizer(["x = 1"], vocab_size=100)
    with pytest.raises(InvalidInputError):
        tok.decode([tok.vocab_size])
    with pytest.raises(InvalidInputError):
        tok.encode(b"bytes")
    with pytest.raises(CheckpointError):
        CodeTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        CodeTokenizer.load(tmp_path)
