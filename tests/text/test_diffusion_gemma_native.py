"""The native decoder forward (`mdiff.text.model.gemma_native`) against transformers' own
`DiffusionGemmaForBlockDiffusion` forward: the same logits (bit for bit on CPU fp32) for
left-padded batches, sliding windows shorter than the context, with and without
self-conditioning; and the same generated tokens as the transformers path."""

import pytest
import torch

from mdiff.text.model.gemma import DiffusionGemmaLM
from mdiff.text.model.gemma_native import NativeDecoder, NativePlan
from mdiff.text.sampling.gemma_runner import Context, generate_gemma

from .test_diffusion_gemma import BOS, PROMPT, V, build

pytest.importorskip("transformers")


def _ctx(lm, rows):
    """A flushed `Context` (exact cache) for left-padded ``rows``."""
    n = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (n - len(r)) + r for r in rows])
    real = torch.tensor([[False] * (n - len(r)) + [True] * len(r) for r in rows])
    ctx = Context(lm)
    ctx.append(ids, real)
    ctx.flush()
    return ctx


@pytest.mark.parametrize("window", [64, 4])
def test_native_logits_equal_the_transformers_forward(window):
    torch.set_num_threads(1)
    lm = DiffusionGemmaLM(build(window=window, scale=3.0,
                                layers=("sliding_attention", "full_attention") * 2))  # fmt: skip
    assert lm.native is not None, NativeDecoder.unsupported(lm.model)
    ctx = _ctx(lm, [PROMPT + [11, 12, 13, 14], [BOS, 3]])
    g = torch.Generator().manual_seed(0)
    B, C = 2, lm.canvas_length
    canvas = torch.randint(0, V, (B, C), generator=g)
    mask = torch.cat([ctx.mask, torch.ones(B, C, dtype=torch.bool)], 1)
    positions = ctx.pos[:, None] + torch.arange(C)
    plan = lm.decoder_mask(canvas, mask, ctx.cache, positions)
    masks = lm.decoder_mask(canvas, mask, ctx.cache)
    assert isinstance(plan, NativePlan) and isinstance(masks, dict)
    for sc in (None, 4 * torch.randn(B, C, V, generator=g)):
        for _ in range(2):  # the plan's key/value buffers are reused step after step
            ours = lm.denoise(canvas, sc, plan, positions, ctx.cache, check=False)
            ref = lm.model(decoder_input_ids=canvas, self_conditioning_logits=sc,
                           decoder_attention_mask=masks, cache=ctx.cache,
                           decoder_position_ids=positions).logits  # fmt: skip
            assert ours.dtype == ref.dtype == torch.float32
            diff = (ours - ref).abs().max().item()
            assert diff <= 1e-5, diff
            canvas = ours.argmax(-1)


def test_native_and_transformers_paths_generate_the_same_tokens():
    torch.set_num_threads(1)
    native = DiffusionGemmaLM(build(scale=30.0))
    plain = DiffusionGemmaLM(native.model, native=False)
    assert native.native is not None and plain.native is None
    kw = dict(max_new_tokens=20, max_denoising_steps=6, seed=4, entropy_bound=2.0)
    a = generate_gemma(native, [PROMPT, [BOS, 7]], **kw)
    b = generate_gemma(plain, [PROMPT, [BOS, 7]], **kw)
    assert torch.equal(a.sequences, b.sequences)


def test_entropy_is_categoricals_bit_for_bit():
    from mdiff.text.sampling.gemma_runner import _entropy

    g = torch.Generator().manual_seed(1)
    logits = 30 * torch.randn(2, 8, V, generator=g)
    logits[0, :, 3] = -torch.inf  # a forbidden token (the EOS policies' -inf)
    ref = torch.distributions.Categorical(logits=logits).entropy()
    assert torch.equal(_entropy(logits.clone()), ref)


def test_native_follows_weight_edits_and_lets_decoder_hooks_see_the_forward():
    torch.set_num_threads(1)
    lm = DiffusionGemmaLM(build(scale=3.0))
    kw = dict(max_new_tokens=8, max_denoising_steps=4, seed=1)
    with torch.no_grad():
        lm.model.model.decoder.layers[0].mlp.gate_proj.weight.mul_(-2.0)  # a fused weight
    ref = DiffusionGemmaLM(lm.model, native=False)
    assert torch.equal(generate_gemma(lm, [PROMPT], **kw).sequences,
                       generate_gemma(ref, [PROMPT], **kw).sequences)  # fmt: skip
    seen = []
    handle = lm.model.model.decoder.register_forward_pre_hook(lambda *_: seen.append(1))
    try:
        generate_gemma(lm, [PROMPT], **kw)
    finally:
        handle.remove()
    assert len(seen) == 4  # one canvas, four steps, each through the hooked module
