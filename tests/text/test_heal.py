"""Token healing: the hole takes the prefix's unfinished tail, its first token is restricted."""

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.text.fim.eval import evaluate_fim
from mdiff.text.fim.infilling import infill
from mdiff.text.fim.tasks import FIMTask
from mdiff.text.model.denoiser import TextDenoiser, TextDenoiserConfig
from mdiff.text.sampling.ar import generate_ar
from mdiff.text.sampling.heal import first_token_mask, heal, split_prefix, true_length
from mdiff.text.sampling.sampler import denoise

from .conftest import TinyDenoiser
from .fim_oracles import TOK, LengthOracle, WordTokenizer

WORDS = WordTokenizer()


@pytest.mark.parametrize(
    ("prefix", "kept", "carry"),
    [("x = ", "x =", " "), ("import o", "import", " o"), ("os.pa", "os.", "pa"),
     ("f(", "f(", ""), ("", "", ""), ("if x:\n    ", "if x:\n   ", " ")],
)  # fmt: skip
def test_split_prefix(prefix, kept, carry):
    assert split_prefix(prefix) == (kept, carry)


def test_first_token_mask_only_where_a_token_crosses_the_boundary():
    assert first_token_mask(TOK, " ") is None  # characters only: nothing to heal
    allowed = first_token_mask(WORDS, " ")
    starts = {WORDS.decode([i]) for i in allowed.nonzero()[:, 0].tolist()}
    assert starts == {" ", " os", " sys", " return"}
    assert heal(WORDS, "x(") == ("x(", "", None)
    assert true_length(WORDS, "import ", "os") == 1  # the hole holds " os"
    assert true_length(WORDS, "import ", "os", healed=False) == 2


def test_restrict_draws_only_allowed_tokens_and_changes_nothing_else():
    model = TinyDenoiser(vocab=24)
    x = torch.tensor([[5, 6, 3, 3, 3, 3, 7]] * 3)
    allowed = torch.zeros(3, 24, dtype=torch.bool)
    allowed[:, [11, 12]] = True
    pos = torch.tensor([2, 4, -1])
    for seed in range(4):
        free = denoise(model, x, temperature=1.0, seed=seed).sequences
        out = denoise(model, x, temperature=1.0, seed=seed, restrict=(pos, allowed)).sequences
        assert int(out[0, 2]) in (11, 12) and int(out[1, 4]) in (11, 12)
        assert torch.equal(out[2], free[2])  # an unrestricted row is untouched
        everything = torch.ones(3, 24, dtype=torch.bool)
        same = denoise(model, x, temperature=1.0, seed=seed, restrict=(pos, everything))
        assert torch.equal(same.sequences, free)
    with pytest.raises(InvalidInputError, match="no token"):
        denoise(model, x, restrict=(pos, torch.zeros(3, 24, dtype=torch.bool)))
    with pytest.raises(InvalidInputError, match="columns"):
        denoise(model, x, restrict=(torch.tensor([9, -1, -1]), allowed))


def test_healed_hole_holds_the_natural_token_and_splices_exactly():
    # the model knows "import" + " os" + "\n" (the natural tokens); "import " + a hole of one
    # token only matches it once the space moves into the hole
    model = LengthOracle([("import", " os", "\n")], tok=WORDS, vocab=WORDS.vocab_size)
    r = infill(model, WORDS, "import ", "\n", 1)
    assert (r.middle, r.text) == ("os", "import os\n")
    assert r.text[r.span[0] : r.span[1]] == r.middle
    unhealed = infill(model, WORDS, "import ", "\n", 1, heal=False)
    assert unhealed.middle != "os"
    task = FIMTask("t", "import ", "os", "\n", kind="single")
    assert evaluate_fim(model, WORDS, [task], modes=("true",))["true"]["exact_match"] == 1.0
    assert evaluate_fim(model, WORDS, [task], modes=("true",), heal=False)["true"][
        "exact_match"] == 0.0  # fmt: skip


def test_ar_first_token_restriction():
    torch.manual_seed(0)
    cfg = TextDenoiserConfig.preset("test", attention="causal", vocab_size=40)
    model = TextDenoiser(cfg).eval()
    prompts = [[5, 9, 11, 7], [12, 4]]
    free = generate_ar(model, prompts, 6).tokens
    allowed = torch.zeros(2, 40, dtype=torch.bool)
    allowed[:, 17] = True
    forced = generate_ar(model, prompts, 6, first_allowed=allowed).tokens
    assert [row[0] for row in forced] == [17, 17]
    assert generate_ar(model, prompts, 6, first_allowed=torch.ones(2, 40, dtype=torch.bool)) \
        .tokens == free  # fmt: skip
