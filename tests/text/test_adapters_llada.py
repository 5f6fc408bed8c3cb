"""Greedy parity with LLaDA's published `generate` (semi-AR blocks, low-confidence remasking):
our default forbids [MASK] as a proposal; ``allow_mask_token=True`` is LLaDA's literal loop.

The reference below is written from the paper's / research notes' description of the loop
(research/text-diffusion.md b.2), not from its code."""

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.text.model.adapters import HFAdapter, llada_spec
from mdiff.text.sampling.generation import GenerationConfig
from mdiff.text.sampling.sampler import generate
from tests.text.test_adapters_hf import causal_lm, tokens

torch.set_num_threads(1)
V, PAD, MASK, EOS = 64, 1, 3, 2
CONFIGS = [(8, 8, 8), (8, 4, 4), (12, 4, 6), (12, 6, 4), (10, 5, 10)]  # gen, block, steps


@torch.no_grad()
def llada_reference(model, prompt, gen_length, block_length, steps, mask_id):
    """LLaDA's greedy generate for one prompt (1, P): the canvas is prompt + gen_length masks;
    blocks of block_length slots in turn, steps / num_blocks steps each; a block's masks are
    split evenly over its steps (the first M mod s steps take one more); each step runs the
    whole canvas, proposes the argmax over the whole vocabulary at every masked slot, scores it
    by its softmax probability, sets slots after the block to −inf, and writes the top-n."""
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], 1)
    P, n_blocks = prompt.shape[1], gen_length // block_length
    per_block = steps // n_blocks
    for blk in range(n_blocks):
        end = P + (blk + 1) * block_length
        m = int((x[0, end - block_length : end] == mask_id).sum())
        counts = [m // per_block + (1 if i < m % per_block else 0) for i in range(per_block)]
        for n in counts:
            open_ = x[0] == mask_id
            logits = model(x)[0].double()
            best = logits.argmax(-1)
            conf = torch.softmax(logits, -1).gather(-1, best[:, None])[:, 0]
            conf[end:] = -torch.inf
            conf = torch.where(open_, conf, -torch.inf)
            pick = torch.topk(conf, n).indices
            x[0, pick] = torch.where(open_[pick], best[pick], x[0, pick])
    return x


@pytest.fixture(scope="module")
def model():
    """A bidirectional Llama whose [MASK] row of the head is scaled up, so [MASK] is often the
    argmax (where the literal and our default modes part)."""
    lm = causal_lm("llama")
    with torch.no_grad():
        lm.lm_head.weight[MASK] *= 2.5
    return HFAdapter(lm, llada_spec(V, MASK, (EOS,), PAD)).eval()


@torch.no_grad()
def test_literal_mode_equals_llada_generate_token_for_token(model):
    runs = differ = masked_left = 0
    for gen, block, steps in CONFIGS:
        for seed in range(3):
            prompt = tokens(3 + 2 * seed, seed=50 + seed)
            ref = llada_reference(model, prompt[None], gen, block, steps, MASK)
            kw = dict(gen_length=gen, block_length=block, steps=steps)
            ours = generate(model, [prompt.tolist()], allow_mask_token=True, **kw)
            assert torch.equal(ours.sequences, ref), (gen, block, steps, seed)
            default = generate(model, [prompt.tolist()], **kw)
            runs += 1
            differ += int(not torch.equal(default.sequences, ref))
            masked_left += int((ref[0, -gen:] == MASK).any())
    print(
        f"literal = LLaDA in {runs}/{runs} runs; default differs in {differ}; "
        f"[MASK] left in LLaDA's output in {masked_left}"
    )
    assert differ > 0 and masked_left > 0  # the setting exercises the difference


@torch.no_grad()
def test_literal_mode_batches_like_single_rows(model):
    prompts = [tokens(7, seed=60).tolist(), tokens(2, seed=61).tolist()]
    kw = dict(gen_length=8, block_length=4, steps=4, allow_mask_token=True)
    batch = generate(model, prompts, **kw)
    for b, p in enumerate(prompts):
        alone = llada_reference(model, torch.tensor([p]), 8, 4, 4, MASK)
        assert torch.equal(batch.sequences[b, -8:], alone[0, -8:])


def test_default_never_outputs_mask_and_the_flag_is_checked(model):
    out = generate(model, [tokens(4, seed=70).tolist()], gen_length=12, block_length=4, steps=6)
    assert not bool((out.sequences[0, -12:] == MASK).any())
    with pytest.raises(InvalidInputError, match="allow_mask_token"):
        GenerationConfig(allow_mask_token=1)
