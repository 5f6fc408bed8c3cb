"""The autoregressive baseline decoder: cached decoding equals naive recomputation."""

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.text.model.denoiser import TextDenoiser, TextDenoiserConfig
from mdiff.text.sampling.ar import fim_prompt, generate_ar


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = TextDenoiserConfig.preset("test", attention="causal", vocab_size=40)
    return TextDenoiser(cfg).eval()


def naive(model, prompt, n):
    """Greedy decoding by a full forward over the whole sequence per token."""
    x = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            tok = int(model(torch.tensor([x]))[0, -1].argmax())
            if tok in model.spec.eos_ids:
                break
            out.append(tok)
            x.append(tok)
    return out


def test_cached_greedy_equals_recompute_and_is_batch_invariant(model):
    prompts = [[5, 9, 11, 7], [12, 4], [6, 6, 8, 20, 21, 30, 9]]
    batch = generate_ar(model, prompts, 12)
    for p, got in zip(prompts, batch.tokens, strict=True):
        assert got == naive(model, p, 12)
        assert generate_ar(model, [p], 12).tokens == [got]
    assert batch.nfe <= 12


def test_sampling_is_seeded_per_row(model):
    prompts = [[5, 9, 11], [7, 8]]
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    a = generate_ar(model, prompts, 10, temperature=1.0, generator=gens).tokens
    alone = generate_ar(model, prompts[1:], 10, temperature=1.0,
                        generator=[torch.Generator().manual_seed(2)]).tokens  # fmt: skip
    assert a[1] == alone[0]


def test_fim_prompt_and_errors(model):
    special = {"[PRE]": 4, "[SUF]": 5, "[MID]": 6}
    assert fim_prompt([10, 11], [12], special) == [4, 10, 11, 5, 12, 6]
    assert fim_prompt([10, 11], [12], special, "spm") == [4, 5, 12, 6, 10, 11]
    with pytest.raises(InvalidInputError, match="order"):
        fim_prompt([10], [12], special, "mps")
    with pytest.raises(InvalidInputError):
        generate_ar(model, [[]], 4)
    bidir = TextDenoiser(TextDenoiserConfig.preset("test", vocab_size=40))
    with pytest.raises(InvalidInputError, match="causal"):
        generate_ar(bidir, [[5]], 4)
