"""DiffusionGemma through `mdiff.text`: loader, token-for-token parity with the model's own
``generate`` (tiny random configs built, saved and loaded with transformers itself), the exact
KV cache against re-encoding, and batch invariance of padded mixed-length batches."""

import json

import pytest
import torch

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.text.model.gemma import (
    DiffusionGemmaLM,
    is_diffusion_gemma,
    load_diffusion_gemma_model,
)
from mdiff.text.sampling.gemma_runner import Context, generate_gemma
from mdiff.text.sampling.policies import EOSPolicy

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
    DiffusionGemmaTextConfig,
)
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (  # noqa: E402
    DiffusionGemmaGenerationConfig,
    EntropyBoundSamplerConfig,
)

V, PAD, EOS, BOS = 96, 0, 1, 2
PROMPT = [BOS, 5, 6, 7, 9]


def build(
    canvas: int = 8,
    seed: int = 0,
    scale: float = 1.0,
    window: int = 64,
    layers=("sliding_attention", "full_attention"),
) -> DiffusionGemmaForBlockDiffusion:
    """A 2-layer MoE DiffusionGemma (one sliding, one full layer); ``scale`` multiplies the tied
    embedding / LM head so its logits are confident (low entropy: the adaptive stop fires)."""
    torch.manual_seed(seed)
    text = DiffusionGemmaTextConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=len(layers),
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=16,
        sliding_window=window, num_experts=4, top_k_experts=2, moe_intermediate_size=16,
        layer_types=list(layers), pad_token_id=PAD,
        eos_token_id=EOS, bos_token_id=BOS,
    )  # fmt: skip
    config = DiffusionGemmaConfig(text_config=text, vision_config=None, canvas_length=canvas,
                                  boi_token_id=93, eoi_token_id=94, image_token_id=95)  # fmt: skip
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


def saved(tmp_path_factory, name, **kw) -> DiffusionGemmaLM:
    """Build, save with transformers' save_pretrained, load with our loader."""
    folder = tmp_path_factory.mktemp(name)
    build(**kw).save_pretrained(folder)
    return load_diffusion_gemma_model(folder)


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    torch.set_num_threads(1)
    return saved(tmp_path_factory, "dg-flat")


@pytest.fixture(scope="module")
def small_canvas(tmp_path_factory):
    return saved(tmp_path_factory, "dg-c4", canvas=4, seed=1)


@pytest.fixture(scope="module")
def confident(tmp_path_factory):
    return saved(tmp_path_factory, "dg-conf", scale=30.0)


def reference(lm, prompt, seed, **kw):
    """The model's own generate, seeded like our row 0 (``seed + 0``)."""
    eb = kw.pop("entropy_bound", None)
    if eb is not None:
        kw["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=eb)
    torch.manual_seed(seed)
    return lm.model.generate(torch.tensor([prompt], device=lm.device), **kw)


# ---- loader -------------------------------------------------------------------------------------


def test_loader_recognises_and_refuses(tmp_path):
    folder = tmp_path / "dg"
    model = build()
    model.generation_config = DiffusionGemmaGenerationConfig(max_denoising_steps=5, t_min=0.3,
                                                             t_max=0.9)  # fmt: skip
    model.save_pretrained(folder)
    assert is_diffusion_gemma(folder) and not is_diffusion_gemma(tmp_path)
    lm = load_diffusion_gemma_model(folder)
    assert (lm.vocab_size, lm.canvas_length, lm.pad_id, lm.eos_ids) == (V, 8, PAD, (EOS,))
    out = generate_gemma(lm, [PROMPT], seed=0, max_new_tokens=8)
    assert out.settings["max_denoising_steps"] == 5 and out.settings["t_min"] == 0.3
    assert out.nfe == 5  # the folder's generation_config.json was read
    for param, loaded in zip(model.parameters(), lm.model.parameters(), strict=True):
        assert torch.equal(param, loaded)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="llama"):
        load_diffusion_gemma_model(other)
    with pytest.raises(CheckpointError, match="not a folder"):
        load_diffusion_gemma_model(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="config.json"):
        load_diffusion_gemma_model(tmp_path)
    with pytest.raises(InvalidInputError, match="wraps a DiffusionGemma"):
        DiffusionGemmaLM(torch.nn.Linear(2, 2))


# ---- parity with the model's own generate -------------------------------------------------------

CONFIGS = {
    "canvas8-defaults": ("flat", dict(max_new_tokens=16, max_denoising_steps=6)),
    "canvas4-schedule": ("small_canvas", dict(max_new_tokens=10, max_denoising_steps=12,
                                              t_min=0.2, t_max=1.0, entropy_bound=0.5)),
    "adaptive-stop": ("confident", dict(max_new_tokens=24, max_denoising_steps=10,
                                        entropy_bound=5.0, confidence_threshold=1.0,
                                        stability_threshold=1)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [1, 7])
def test_parity_with_generate(name, seed, request):
    fixture, kw = CONFIGS[name]
    lm = request.getfixturevalue(fixture)
    ref = reference(lm, PROMPT, seed, **kw)
    ours = generate_gemma(lm, [PROMPT], seed=seed, **kw)
    assert ours.sequences.tolist() == ref.sequences.tolist()
    assert ours.tokens_per_forward.tolist() == pytest.approx(ref.tokens_per_forward.tolist())
    n = kw["max_denoising_steps"]
    canvases = -(-kw["max_new_tokens"] // lm.canvas_length)
    assert len(ours.steps_per_canvas[0]) == canvases
    if name == "adaptive-stop":  # the stop rule really ran
        assert min(ours.steps_per_canvas[0]) < n
    else:
        assert ours.steps_per_canvas[0] == [n] * canvases


def test_parity_with_eos_stop_and_padding(flat):
    kw = dict(max_new_tokens=32, max_denoising_steps=6)
    free = generate_gemma(flat, [PROMPT], seed=3, **kw).sequences[0, len(PROMPT) :].tolist()
    eos = next(t for t in free[8:16] if t not in free[:8])  # first seen in canvas 2
    ref = reference(flat, PROMPT, 3, eos_token_id=eos, pad_token_id=PAD, **kw)
    ours = generate_gemma(flat, [PROMPT], seed=3, eos=EOSPolicy(stop=True, truncate=True,
                                                                 eos_ids=(eos,)), **kw)  # fmt: skip
    assert ours.sequences.tolist() == ref.sequences.tolist()
    new = ours.sequences[0, len(PROMPT) :].tolist()
    assert (
        len(new) == 16 and eos in new and new[new.index(eos) + 1 :] == [PAD] * (15 - new.index(eos))
    )
    assert ours.tokens_per_forward.tolist() == pytest.approx(ref.tokens_per_forward.tolist())


# ---- the exact KV cache ------------------------------------------------------------------------


def test_exact_cache_equals_reencoding(flat, confident):
    rows = [PROMPT, [BOS, 11], [BOS, 3, 4, 8, 8, 8, 9]]
    for lm in (flat, confident):
        kw = dict(max_new_tokens=24, max_denoising_steps=5, confidence_threshold=1.0)
        cached = generate_gemma(lm, rows, seed=4, **kw)
        plain = generate_gemma(lm, rows, seed=4, cache=False, **kw)
        assert torch.equal(cached.sequences, plain.sequences)
    # the logits of a step after two committed canvases: incremental cache vs one fresh encode
    ids = torch.tensor([[PAD, PAD] + PROMPT, [BOS, 3, 4, 8, 8, 8, 9]])
    real = ids != PAD
    canvases = [torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(i))
                for i in range(2)]  # fmt: skip
    ctx, fresh = Context(flat, exact=True), Context(flat, exact=False)
    for c in (ctx, fresh):
        c.append(ids, real)
        c.flush()
        for cv in canvases:
            c.append(cv, torch.ones_like(cv, dtype=torch.bool))
            c.flush()
    assert ctx.cache.get_seq_length() == fresh.cache.get_seq_length() == 7 + 16
    assert torch.equal(ctx.pos, fresh.pos) and ctx.pos.tolist() == [21, 23]
    probe = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(9))
    mask = torch.cat([ctx.mask, torch.ones(2, 8, dtype=torch.bool)], 1)
    pos = ctx.pos[:, None] + torch.arange(8)
    a = flat.denoise(probe, None, mask, pos, ctx.cache)
    b = flat.denoise(probe, None, mask, pos, fresh.cache)
    gap = float((a - b).abs().max())
    print(f"exact cache vs re-encoding: max |Δlogits| = {gap:.3g}")
    assert gap < 1e-5


# ---- batch invariance ----------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["flat", "confident"])
def test_padded_batch_rows_equal_solo_runs(fixture, request):
    lm = request.getfixturevalue(fixture)
    rows = [PROMPT, [BOS, 11], [BOS, 3, 4, 8, 8, 8, 9], [BOS]]
    kw = dict(max_new_tokens=16, max_denoising_steps=8, confidence_threshold=1.0,
              entropy_bound=2.0)  # fmt: skip
    batch = generate_gemma(lm, rows, seed=10, **kw)
    width = max(map(len, rows))
    assert batch.sequences.shape == (4, width + 16)
    for b, r in enumerate(rows):
        solo = generate_gemma(lm, [r], seed=10 + b, **kw)
        assert solo.sequences[0, len(r) :].tolist() == batch.sequences[b, width:].tolist()
        assert solo.steps_per_canvas[0] == batch.steps_per_canvas[b]
        assert batch.sequences[b, : width - len(r)].eq(PAD).all()
    # a tensor batch with its mask is the same as the lists
    ids = batch.sequences[:, :width]
    again = generate_gemma(lm, ids, attention_mask=batch.attention_mask[:, :width], seed=10, **kw)
    assert torch.equal(again.sequences, batch.sequences)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_parity_bf16(device):
    """bf16 weights (self-conditioning logits kept in the embeddings' dtype, as generate does);
    on CUDA too (per-row CUDA generators vs the seeded default one) when a GPU is present."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA")
    for scale in (1.0, 30.0):
        lm = DiffusionGemmaLM(build(scale=scale).to(device=device, dtype=torch.bfloat16))
        kw = dict(max_new_tokens=16, max_denoising_steps=6, confidence_threshold=1.0)
        ref = reference(lm, PROMPT, 2, **kw)
        ours = generate_gemma(lm, [PROMPT], seed=2, **kw)
        assert ours.sequences.tolist() == ref.sequences.tolist()


def test_sliding_window_shorter_than_the_context():
    """Sliding layers keep only the last ``sliding_window`` keys: parity, the exact cache and
    batch invariance hold when the context outgrows the window."""
    lm = DiffusionGemmaLM(build(window=6, layers=("sliding_attention",) * 2 + ("full_attention",)))
    prompt = [BOS, *range(10, 22)]
    kw = dict(max_new_tokens=24, max_denoising_steps=4)
    ours = generate_gemma(lm, [prompt], seed=3, **kw)
    assert ours.sequences.tolist() == reference(lm, prompt, 3, **kw).sequences.tolist()
    assert torch.equal(generate_gemma(lm, [prompt], seed=3, cache=False, **kw).sequences,
                       ours.sequences)  # fmt: skip
    rows = [prompt, [BOS, 5], prompt[:9]]
    batch = generate_gemma(lm, rows, seed=3, **kw)
    for b, r in enumerate(rows):
        solo = generate_gemma(lm, [r], seed=3 + b, **kw)
        assert solo.sequences[0, len(r) :].tolist() == batch.sequences[b, len(prompt) :].tolist()


def test_generation_config_eos_is_the_default_policy(tmp_path):
    """A folder whose generation_config.json names EOS and pad: our defaults stop and pad
    exactly where the model's own generate (called with no settings) does."""
    free = generate_gemma(DiffusionGemmaLM(build()), [PROMPT], seed=5, max_new_tokens=32,
                          max_denoising_steps=6).sequences[0, len(PROMPT) :].tolist()  # fmt: skip
    eos = next(t for t in free[8:16] if t not in free[:8])
    model = build()
    model.generation_config = DiffusionGemmaGenerationConfig(
        max_new_tokens=32, max_denoising_steps=6, eos_token_id=eos, pad_token_id=PAD
    )
    model.save_pretrained(tmp_path)
    lm = load_diffusion_gemma_model(tmp_path)
    assert lm.eos_ids == (eos,)
    ref = reference(lm, PROMPT, 5)
    ours = generate_gemma(lm, [PROMPT], seed=5)
    assert ours.sequences.tolist() == ref.sequences.tolist()
    assert ours.sequences.shape[1] == len(PROMPT) + 16  # stopped after the EOS canvas
