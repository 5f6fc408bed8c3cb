"""Fill-in-the-middle: exact splicing, fixed and automatic lengths, several holes."""

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.text.fim.infilling import fill, infill
from mdiff.text.model.denoiser import TextDenoiser, TextDenoiserConfig

from .fim_oracles import TOK, LengthOracle, V


def random_model(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = TextDenoiserConfig.preset("test", vocab_size=V, max_len=128, **overrides)
    return TextDenoiser(cfg).eval()


def test_fixed_length_splices_exactly():
    model = random_model()
    prefix, suffix = "def f(x):\n\treturn ", "  # tail\n\n"
    r = infill(model, TOK, prefix, suffix, 7)
    assert r.length == 7 and len(TOK.encode(r.middle)) == 7
    assert r.text == prefix + r.middle + suffix
    assert r.text[r.span[0] : r.span[1]] == r.middle
    assert r.nfe == 7  # one token per step by default


def test_auto_length_finds_the_true_length_per_row():
    cases = [("x = ", "compute(a, b)", "\nprint(x)\n"), ("if ok:\n    ", "go()", "\nelse: pass\n")]
    model = LengthOracle(cases)
    results = infill(model, TOK, [c[0] for c in cases], [c[2] for c in cases], "auto",
                     candidates=range(1, 20))  # fmt: skip
    for (_, middle, _), r in zip(cases, results, strict=True):
        assert r.middle == middle and r.length == len(middle)
        assert max(r.scores, key=r.scores.get) == len(middle)


def test_auto_choice_is_reproduced_alone():
    model = random_model(1)
    kw = dict(temperature=1.0, seed=5, candidates=(3, 5, 8))
    auto = infill(model, TOK, "a = [", "]\n", "auto", **kw)
    alone = infill(model, TOK, "a = [", "]\n", auto.length, **kw)
    assert alone.middle == auto.middle


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("extra", range(9))
def test_block_causal_rows_do_not_depend_on_their_batch(extra, temperature):
    # a row's left padding in a batch is never a whole number of blocks in general; its middle
    # must still equal its solo run (this failed for 9 of 24 such rows before pad_multiple)
    model = random_model(2, attention="block_causal", block_size=4)
    prefix, suffix = "def add(a, b):\n    return ", "\n"
    other = "import os, sys\n" * 3 + "x" * extra  # longer: the first row gets padded
    for n in (3, 6, 9):
        kw = dict(temperature=temperature, seed=4)
        solo = infill(model, TOK, prefix, suffix, n, **kw)
        both = infill(model, TOK, [prefix, other], [suffix, "y\n"], n, **kw)
        assert both[0].middle == solo.middle


def test_block_causal_auto_choice_is_reproduced_alone():
    model = random_model(3, attention="block_causal", block_size=4)
    kw = dict(temperature=1.0, seed=5, candidates=(3, 5, 8))
    auto = infill(model, TOK, "a = [", "]\n", "auto", **kw)
    alone = infill(model, TOK, "a = [", "]\n", auto.length, **kw)
    assert alone.middle == auto.middle


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal"])
def test_auto_length_of_a_batch_equals_each_input_alone(attention):
    # the search's scores of an input do not depend on the other inputs (padding, row index)
    model = random_model(4, attention=attention, block_size=4)
    pres, sufs = ["a = [", "def g(x):\n    return x", "q"], ["]\n", "\n\n", " = 1\n"]
    kw = dict(temperature=1.0, seed=2, candidates=(2, 4, 7))
    batch = infill(model, TOK, pres, sufs, "auto", **kw)
    for i, (p, s) in enumerate(zip(pres, sufs, strict=True)):
        alone = infill(model, TOK, p, s, "auto", **{**kw, "seed": 2 + i})
        assert (alone.middle, alone.scores) == (batch[i].middle, pytest.approx(batch[i].scores))


def test_several_holes_keep_the_text_between_them():
    model = random_model(2)
    text = "x = <FILL>\ny = x + <FILL>\nprint(y)\n"
    out, results = fill(model, TOK, text, length=4)
    assert len(results) == 2
    rest = out
    for piece, r in zip(["x = ", "\ny = x + ", "\nprint(y)\n"], results + [None], strict=True):
        assert rest.startswith(piece)
        rest = rest[len(piece) :]
        if r is not None:
            assert out[r.span[0] : r.span[1]] == r.middle and rest.startswith(r.middle)
            rest = rest[len(r.middle) :]
    assert rest == ""


def test_context_is_trimmed_to_the_model_window():
    model = random_model(3)
    r = infill(model, TOK, "p" * 300, "s" * 300, 8)  # max_len 128: both sides trimmed
    assert r.text.startswith("p" * 300) and r.text.endswith("s" * 300)


def test_bad_inputs():
    model = random_model()
    with pytest.raises(InvalidInputError):
        infill(model, TOK, "a", "b", 0)
    with pytest.raises(InvalidInputError):
        infill(model, TOK, ["a"], ["b", "c"], 3)
    with pytest.raises(InvalidInputError, match="FILL"):
        fill(model, TOK, "no marker here")
    with pytest.raises(InvalidInputError, match="does not fit"):
        infill(model, TOK, "a", "b", 500)


@torch.no_grad()
@pytest.mark.parametrize("seed", range(3))
def test_the_length_score_reads_the_blocks_before_every_middle_from_a_cache(seed, monkeypatch):
    """Every rate's forward sees the same blocks before a row's middle (block-causal): they are
    computed once; the scores equal those of full-canvas forwards, and a row's cached prefix
    is its own (the same alone or in a batch)."""
    import mdiff.text.fim.infilling as F

    model = random_model(5 + seed, attention="block_causal", block_size=4)
    prefix = "import os\nimport sys\n\ndef main(argv):\n    path = os.path.join(argv[1], "
    canvas = F.fim_canvas(model.spec, F.token_view(TOK), [(prefix, ")\n", [2, 5, 9])],
                          [(prefix, "", None)], 128)  # fmt: skip
    x, real = canvas.x, canvas.real
    gen = x == model.spec.mask_id
    fill = torch.randint(8, V, x.shape, generator=torch.Generator().manual_seed(seed))
    x = torch.where(gen, fill, x)
    groups = F._prefix_groups(model, gen, real)
    assert all(k0 > 0 for _, k0 in groups) and sum(len(r) for r, _ in groups) == 3
    cached = F._score(model, x, real, gen, model.spec.mask_id)
    for rows, _ in groups:  # each group alone: the same scores
        alone = F._score(model, x[rows], real[rows], gen[rows], model.spec.mask_id)
        assert torch.equal(alone, cached[rows])
    monkeypatch.setattr(F, "_prefix_groups", lambda m, g, r: [(torch.arange(len(g)), 0)])
    plain = F._score(model, x, real, gen, model.spec.mask_id)
    torch.testing.assert_close(cached, plain, rtol=1e-9, atol=1e-6)
    monkeypatch.undo()
    bidir = random_model(5)  # no blocks: nothing to cache
    assert [k0 for _, k0 in F._prefix_groups(bidir, gen, real)] == [0]
