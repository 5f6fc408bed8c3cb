"""Code corpora: the held-out split, token caches and deterministic windows (crops, FIM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mdiff.text.data as data_mod
from mdiff.errors import InvalidInputError
from mdiff.text.data import (
    Corpus,
    TokenWindows,
    cached_tokens,
    eval_windows,
    fim_transform,
    find_sources,
    split_files,
    stdlib_root,
    tokenize_files,
)
from mdiff.text.model.tokenizer import train_tokenizer

PAD, EOS, PRE, SUF, MID = 0, 2, 4, 5, 6


@pytest.fixture(scope="module")
def stdlib_files() -> list[str]:
    return find_sources(stdlib_root())


def _tree(root, files: dict[str, str]):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))


def test_stdlib_corpus_skips_tests_and_packages(stdlib_files):
    assert len(stdlib_files) > 300
    assert "os.py" in stdlib_files and "json/decoder.py" in stdlib_files
    for f in stdlib_files:
        parts = f.split("/")[:-1]
        assert not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(parts), f
        assert f.endswith(".py")


def test_heldout_split_is_deterministic_disjoint_and_stable(stdlib_files):
    train, held = split_files(stdlib_files, 0.02)
    assert (train, held) == split_files(list(stdlib_files), 0.02)
    assert not set(train) & set(held) and sorted(train + held) == sorted(stdlib_files)
    assert 0.005 * len(stdlib_files) < len(held) < 0.05 * len(stdlib_files)
    # by file name, not position: shuffling or adding files moves nothing between the splits
    rng = np.random.default_rng(0)
    shuffled = [stdlib_files[i] for i in rng.permutation(len(stdlib_files))]
    assert set(split_files(shuffled + ["new_module.py"], 0.02)[1]) - {"new_module.py"} == set(held)
    # a tiny corpus still holds one file out; one file holds none; fraction 0 holds none
    assert len(split_files(["a.py", "b.py", "c.py"], 0.02)[1]) == 1
    assert split_files(["a.py"], 0.02) == (["a.py"], [])
    assert split_files(["a.py", "b.py"], 0.0) == (["a.py", "b.py"], [])
    with pytest.raises(InvalidInputError):
        split_files(["a.py"], 1.0)


def test_corpus_from_folder(tmp_path):
    _tree(
        tmp_path,
        {
            "a.py": "a = 1\n",
            "pkg/b.py": "b = 2\r\n",
            "pkg/tests/test_b.py": "x\n",
            "__pycache__/c.py": "y\n",
            "notes.txt": "z\n",
        },
    )
    (tmp_path / "bad.py").write_bytes(b"\xff\xfe latin junk\n")
    corpus = Corpus.from_folder(tmp_path, heldout_fraction=0.3)
    assert sorted(corpus.train_files + corpus.heldout_files) == ["a.py", "bad.py", "pkg/b.py"]
    assert corpus.read("pkg/b.py") == "b = 2\r\n"  # newlines untouched
    assert corpus.read("bad.py") is None and corpus.texts(["bad.py", "a.py"]) == ["a = 1\n"]
    assert find_sources(tmp_path, "*.txt") == ["notes.txt"]
    with pytest.raises(InvalidInputError):
        Corpus.from_folder(tmp_path / "missing")
    with pytest.raises(InvalidInputError):
        Corpus.from_folder(tmp_path, "*.rs")


@pytest.fixture()
def small_corpus(tmp_path):
    root = tmp_path / "src"
    texts = {f"m{i}.py": f"def f{i}(x):\n    return x * {i} + 'ü'\n" * (i + 1) for i in range(6)}
    _tree(root, texts)
    corpus = Corpus.from_folder(root)
    tok = train_tokenizer(corpus.texts(corpus.train_files + corpus.heldout_files), 300)
    return corpus, tok


def test_tokens_are_documents_joined_by_eos_and_cached(small_corpus, tmp_path, monkeypatch):
    corpus, tok = small_corpus
    files = corpus.train_files
    tokens = tokenize_files(tok, corpus, files)
    assert tokens.dtype == np.int32 and tokens[-1] == EOS
    docs = np.split(tokens, np.flatnonzero(tokens == EOS) + 1)[:-1]
    assert [tok.decode(d[:-1].tolist()) for d in docs] == corpus.texts(files)

    cache = tmp_path / "run" / "tokens.safetensors"
    first = cached_tokens(cache, tok, corpus, files)
    assert np.array_equal(first, tokens)

    def fail(*args):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(data_mod, "tokenize_files", fail)
    assert np.array_equal(cached_tokens(cache, tok, corpus, files), tokens)
    monkeypatch.undo()
    (corpus.root / files[0]).write_text("changed = True\n")  # a changed file rebuilds the cache
    rebuilt = cached_tokens(cache, tok, corpus, files)
    assert not np.array_equal(rebuilt, tokens)
    assert np.array_equal(rebuilt, tokenize_files(tok, corpus, files))


def test_windows_are_deterministic_by_index():
    tokens = np.arange(10, 1010, dtype=np.int32)
    a = TokenWindows(tokens, 16, crop_fraction=0.3, seed=1)
    b = TokenWindows(tokens, 16, crop_fraction=0.3, seed=1)
    assert len(a) == (1000 - 16) // 16 + 1
    for i in (0, 5, len(a) - 1, 17):
        x, y = a[i], b[i]
        assert torch.equal(x["input_ids"], y["input_ids"])
        assert torch.equal(x["attention_mask"], y["attention_mask"])
        assert x["input_ids"].dtype == torch.long and x["attention_mask"].dtype == torch.bool
    order = [a[i]["input_ids"][0].item() for i in (3, 1, 2)]  # any access order
    assert order == [10 + 48, 10 + 16, 10 + 32]
    c = TokenWindows(tokens, 16, crop_fraction=0.3, seed=2)
    crops = lambda d: [bool((~d[i]["attention_mask"]).any()) for i in range(len(d))]  # noqa: E731
    assert crops(a) != crops(c)
    with pytest.raises(IndexError):
        a[len(a)]


def test_random_length_crops():
    tokens = np.arange(10, 30010, dtype=np.int32)
    data = TokenWindows(tokens, 32, crop_fraction=0.05, seed=0)
    lengths = []
    for i in range(len(data)):
        item = data[i]
        n = int(item["attention_mask"].sum())
        assert item["attention_mask"][:n].all() and not item["attention_mask"][n:].any()
        assert (item["input_ids"][n:] == PAD).all() and (item["input_ids"][:n] >= 10).all()
        if n < 32:
            lengths.append(n)
    # 5% of the windows are cropped to U{1..32}; a crop to 32 cannot be seen
    p = 0.05 * 31 / 32
    mean, sd = len(data) * p, (len(data) * p * (1 - p)) ** 0.5
    assert abs(len(lengths) - mean) < 4 * sd
    assert min(lengths) < 10 and max(lengths) > 20
    plain = TokenWindows(tokens, 32)
    assert all(plain[i]["attention_mask"].all() for i in range(0, len(plain), 50))


def test_fim_transform_is_a_permutation_of_the_window():
    rng = np.random.default_rng(0)
    content = np.arange(100, 120)
    for _ in range(50):
        out = fim_transform(content, rng)
        assert len(out) == len(content) + 4 and out[0] == PRE and out[-1] == EOS
        s, m = int(np.flatnonzero(out == SUF)[0]), int(np.flatnonzero(out == MID)[0])
        prefix, suffix, middle = out[1:s], out[s + 1 : m], out[m + 1 : -1]
        assert np.array_equal(np.concatenate([prefix, middle, suffix]), content)


def test_spm_order_has_the_same_cuts_with_the_prefix_before_the_middle():
    content = np.arange(100, 140)
    for seed in range(30):
        psm = fim_transform(content, np.random.default_rng(seed))
        spm = fim_transform(content, np.random.default_rng(seed), order="spm")
        s, m = int(np.flatnonzero(psm == SUF)[0]), int(np.flatnonzero(psm == MID)[0])
        prefix, suffix, middle = psm[1:s], psm[s + 1 : m], psm[m + 1 : -1]
        want = [PRE, SUF, *suffix, MID, *prefix, *middle, EOS]
        assert spm.tolist() == want  # the middle continues the prefix directly
    with pytest.raises(InvalidInputError, match="order"):
        fim_transform(content, np.random.default_rng(0), order="pms")
    with pytest.raises(InvalidInputError, match="fim_order"):
        TokenWindows(content, 8, fim_rate=0.5, fim_order="x")


def test_fim_windows():
    tokens = np.arange(10, 10010, dtype=np.int32)
    data = TokenWindows(tokens, 32, fim_rate=0.5, seed=0)
    fim = [data[i]["input_ids"] for i in range(len(data)) if data[i]["input_ids"][0] == PRE]
    assert 0.4 * len(data) < len(fim) < 0.6 * len(data)  # 312 windows, sd 8.8
    for ids in fim[:20]:
        assert len(ids) == 32 and (ids == SUF).sum() == 1 and (ids == MID).sum() == 1
    custom = TokenWindows(tokens, 32, fim_rate=1.0, fim_ids={"pre_id": 7, "suf_id": 8,
                                                            "mid_id": 9, "eos_id": 1})  # fmt: skip
    assert custom[0]["input_ids"][0] == 7 and custom[0]["input_ids"][-1] == 1


def test_eval_windows():
    tokens = np.arange(10, 1010, dtype=np.int32)
    batch = eval_windows(tokens, 100, 4)
    assert batch["input_ids"].shape == (4, 100) and batch["attention_mask"].all()
    assert batch["input_ids"][:, 0].tolist() == [10, 210, 410, 610]
    short = eval_windows(tokens[:30], 100)
    assert short["input_ids"].shape == (1, 100) and int(short["attention_mask"].sum()) == 30
    assert (short["input_ids"][0, 30:] == PAD).all()
    with pytest.raises(InvalidInputError):
        eval_windows(tokens[:0], 100)
    with pytest.raises(InvalidInputError):
        TokenWindows(tokens[:10], 16)
