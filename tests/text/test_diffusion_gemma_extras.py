"""The text frontend's extras on DiffusionGemma: FIM (fixed and auto length), the text
watermark, two-channel streaming, EOS policies and bad input."""

import pytest
import torch

from mdiff.errors import InvalidInputError
from mdiff.provenance.watermark.text import TextWatermark
from mdiff.text.model.gemma import DiffusionGemmaLM
from mdiff.text.sampling.gemma_fim import DEFAULT_CANDIDATES, SCORE_RATES, infill_gemma
from mdiff.text.sampling.gemma_runner import Context, Pinned, denoise_canvas, generate_gemma
from mdiff.text.sampling.gemma_settings import GemmaSettings
from mdiff.text.sampling.policies import EOSPolicy
from mdiff.text.sampling.stream import TokenCollector

from .test_diffusion_gemma import BOS, PAD, PROMPT, V, build

pytest.importorskip("transformers")

ROWS = [PROMPT, [BOS, 11], [BOS, 3, 4, 8, 8, 8, 9]]


@pytest.fixture(scope="module")
def flat():
    torch.set_num_threads(1)
    return DiffusionGemmaLM(build())


@pytest.fixture(scope="module")
def confident():
    return DiffusionGemmaLM(build(scale=30.0))


# ---- FIM -----------------------------------------------------------------------------------------


def test_fim_fixed_length_sees_the_suffix_and_matches_generate(flat):
    kw = dict(max_denoising_steps=6, seed=2)
    a = infill_gemma(flat, PROMPT, [40, 41, 42], 5, **kw)
    b = infill_gemma(flat, PROMPT, [50, 51, 52], 5, **kw)
    assert len(a.middle) == len(b.middle) == 5 and a.length == 5 and a.scores is None
    assert a.middle != b.middle  # the slots attend to the pinned suffix
    assert a.nfe == 6
    # no suffix, one canvas's worth of slots: exactly generate (itself the model's generate)
    whole = infill_gemma(flat, PROMPT, [], flat.canvas_length, **kw)
    gen = generate_gemma(flat, [PROMPT], max_new_tokens=flat.canvas_length, **kw)
    assert whole.middle == gen.sequences[0, len(PROMPT) :].tolist()


def test_fim_pinned_suffix_never_changes(confident):
    st = GemmaSettings(max_denoising_steps=8, entropy_bound=5.0, confidence_threshold=None)
    ctx = Context(confident)
    ctx.append(torch.tensor([PROMPT]), torch.ones(1, len(PROMPT), dtype=torch.bool))
    mask = torch.tensor([[False] * 4 + [True] * 3])
    ids = torch.tensor([[0] * 4 + [40, 41, 42]])
    drafts = []
    gens = [torch.Generator().manual_seed(0)]
    out, steps, _ = denoise_canvas(confident, ctx, st, gens, torch.ones(1, dtype=torch.bool),
                                   pinned=Pinned(mask, ids),
                                   on_draft=lambda a, i: drafts.append(a.clone()))  # fmt: skip
    assert len(drafts) == int(steps[0]) == 8
    assert all(d[0, 4:].tolist() == [40, 41, 42] for d in drafts)
    assert out[0, 4:].tolist() == [40, 41, 42]


def test_fim_auto_length_picks_the_best_score_and_reproduces(flat):
    kw = dict(max_denoising_steps=4, seed=5)
    auto = infill_gemma(flat, PROMPT, [40, 41, 42], "auto", **kw)
    assert set(auto.scores) == set(DEFAULT_CANDIDATES)
    assert all(s == s and s < 0 for s in auto.scores.values())  # finite log-likelihoods
    assert auto.scores[auto.length] == max(auto.scores.values())
    assert auto.nfe == len(DEFAULT_CANDIDATES) * (4 + len(SCORE_RATES))
    alone = infill_gemma(flat, PROMPT, [40, 41, 42], auto.length, **kw)
    assert alone.middle == auto.middle
    few = infill_gemma(flat, PROMPT, [40, 41, 42], "auto", candidates=(3, 6), **kw)
    assert set(few.scores) == {3, 6} and few.length in (3, 6)


def test_fim_middle_cut_at_eos(flat):
    kw = dict(max_denoising_steps=6, seed=2)
    free = infill_gemma(flat, PROMPT, [40], 6, **kw).middle
    eos = free[3]
    cut = infill_gemma(flat, PROMPT, [40], 6, eos=EOSPolicy(truncate=True, eos_ids=(eos,)), **kw)
    assert cut.middle == free[: free.index(eos)]


# ---- watermark -----------------------------------------------------------------------------------


def test_watermark_marks_generated_tokens(flat):
    wm = TextWatermark(b"gemma-test-key", V, ignore_ids=[PAD])
    kw = dict(max_new_tokens=64, max_denoising_steps=4, seed=3)
    marked = generate_gemma(flat, ROWS, watermark=wm, **kw)
    plain = generate_gemma(flat, ROWS, **kw)
    w = marked.sequences.shape[1] - 64
    z_on = [wm.detect(s[w - 1 :], min_tokens=30).z for s in marked.sequences]
    z_off = [wm.detect(s[w - 1 :], min_tokens=30).z for s in plain.sequences]
    print("watermark z on / off:", [round(z, 1) for z in z_on], [round(z, 1) for z in z_off])
    assert min(z_on) > 4 and max(z_off) < 3, (z_on, z_off)
    assert marked.settings["watermarked"] and not plain.settings["watermarked"]
    with pytest.raises(InvalidInputError, match="classes"):
        generate_gemma(flat, ROWS, watermark=TextWatermark(b"k", V + 1), **kw)


# ---- streaming -----------------------------------------------------------------------------------


def test_two_channel_streaming(flat):
    kw = dict(max_new_tokens=24, max_denoising_steps=5, seed=6)
    free = generate_gemma(flat, ROWS, **kw)
    new = free.sequences[0, -24:].tolist()
    eos = next(t for t in new[8:16] if t not in new[:8])  # first seen in row 0's second canvas
    policy = EOSPolicy(stop=True, truncate=True, eos_ids=(eos,))
    sinks = TokenCollector.for_batch(len(ROWS))
    out = generate_gemma(flat, ROWS, streamer=sinks, eos=policy, **kw)
    w = max(map(len, ROWS))
    for b, sink in enumerate(sinks):
        assert sink.ended == 1 and sink.chunks[0] == ROWS[b]
        kept = out.sequences[b, w:][out.sequences[b, w:] != PAD].tolist()  # PAD: after EOS/stop
        assert sink.tokens == ROWS[b] + kept
        assert len(sink.drafts) == sum(out.steps_per_canvas[b])
        # the last draft of each canvas is that canvas, seen after the committed text
        ends = torch.tensor(out.steps_per_canvas[b]).cumsum(0) - 1
        for k, i in enumerate(ends.tolist()):
            step, draft = sink.drafts[i]
            assert step == out.steps_per_canvas[b][k] - 1
            canvas = draft[-8:]
            row = out.sequences[b, w + 8 * k : w + 8 * (k + 1)].tolist()
            assert [t for t, r in zip(canvas, row, strict=True) if r != PAD] == [
                r for r in row if r != PAD
            ]
    assert len(out.steps_per_canvas[0]) == 2  # row 0 stopped at its EOS
    with pytest.raises(InvalidInputError, match="one streamer per row"):
        generate_gemma(flat, ROWS, streamer=TokenCollector(), **kw)


# ---- EOS policies --------------------------------------------------------------------------------


def _frequent(flat, kw) -> int:
    seq = generate_gemma(flat, ROWS, **kw).sequences[:, -kw["max_new_tokens"] :]
    values, counts = seq.unique(return_counts=True)
    return int(values[counts.argmax()])


def test_eos_forbid_and_penalty(flat):
    kw = dict(max_new_tokens=32, max_denoising_steps=4, seed=8)
    eos = _frequent(flat, kw)
    for policy in (EOSPolicy(forbid=True, eos_ids=(eos,)), EOSPolicy(penalty=1e4, eos_ids=(eos,))):
        out = generate_gemma(flat, ROWS, eos=policy, **kw)
        assert not (out.sequences[:, -32:] == eos).any()


def test_eos_stop_and_truncate(flat):
    kw = dict(max_new_tokens=32, max_denoising_steps=4, seed=8)
    eos = _frequent(flat, kw)
    free = generate_gemma(flat, ROWS, **kw)
    stop = generate_gemma(flat, ROWS, eos=EOSPolicy(stop=True, eos_ids=(eos,)), **kw)
    trunc = generate_gemma(flat, ROWS, eos=EOSPolicy(truncate=True, eos_ids=(eos,)), **kw)
    w = free.sequences.shape[1] - 32
    for b in range(len(ROWS)):
        new = free.sequences[b, w:].tolist()
        if eos not in new:
            continue
        first = new.index(eos)
        last_canvas = first // 8
        s = stop.sequences[b, w:].tolist()
        assert s[: 8 * (last_canvas + 1)] == new[: 8 * (last_canvas + 1)]  # EOS canvas kept whole
        assert s[8 * (last_canvas + 1) :] == [PAD] * (len(s) - 8 * (last_canvas + 1))
        assert int(stop.generated[b].sum()) == 8 * (last_canvas + 1)
        t = trunc.sequences[b, w:].tolist()
        assert t[: first + 1] == new[: first + 1] and set(t[first + 1 :]) <= {PAD}
        assert int(trunc.generated[b].sum()) == 32  # truncate alone keeps running
        assert trunc.tokens_per_forward[b] == pytest.approx((first + 1) / 16)


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(eos=EOSPolicy(defer=True)), "defer"),
        (dict(max_denoising_steps=0), "max_denoising_steps"),
        (dict(steps=-1), "max_denoising_steps"),
        (dict(t_min=0.9, t_max=0.5), "t_max"),
        (dict(entropy_bound=0.0), "entropy_bound"),
        (dict(temperature=1.0), "unknown"),
        (dict(seed=-1), "seed"),
        (dict(eos={"nope": 1}), "eos"),
    ],
)
def test_bad_settings(flat, kw, match):
    with pytest.raises(InvalidInputError, match=match):
        generate_gemma(flat, ROWS, **kw)


def test_bad_inputs(flat):
    with pytest.raises(InvalidInputError, match="lie in"):
        generate_gemma(flat, [[BOS, V]])
    with pytest.raises(InvalidInputError, match="left-padded"):
        generate_gemma(flat, torch.tensor([[BOS, 4, 0]]), torch.tensor([[1, 1, 0]]))
    with pytest.raises(InvalidInputError, match="at least one token"):
        generate_gemma(flat, [[BOS], []])
    with pytest.raises(InvalidInputError, match="Generator"):
        generate_gemma(flat, ROWS, generators=[torch.Generator()])
    with pytest.raises(InvalidInputError, match="length"):
        infill_gemma(flat, PROMPT, [4], 0)
    with pytest.raises(InvalidInputError, match="length"):
        infill_gemma(flat, PROMPT, [4], "long")
    with pytest.raises(InvalidInputError, match="prefix"):
        infill_gemma(flat, [], [4], 4)
    with pytest.raises(InvalidInputError, match="suffix"):
        infill_gemma(flat, PROMPT, [V + 3], 4)


def test_fim_streams_prefix_drafts_and_middle(flat):
    kw = dict(max_denoising_steps=5, seed=4)
    plain = infill_gemma(flat, PROMPT, [40, 41], "auto", candidates=(3, 5), **kw)
    sink = TokenCollector()
    streamed = infill_gemma(flat, PROMPT, [40, 41], "auto", candidates=(3, 5), streamer=sink,
                            **kw)  # fmt: skip
    assert streamed.middle == plain.middle and streamed.nfe == plain.nfe + 5
    assert sink.chunks == [PROMPT, plain.middle] and sink.ended == 1
    assert [s for s, _ in sink.drafts] == list(range(5))
    assert all(d[: len(PROMPT)] == PROMPT and len(d) == len(PROMPT) + plain.length
               for _, d in sink.drafts)  # fmt: skip
    assert sink.drafts[-1][1][len(PROMPT) :] == plain.middle


def test_the_masked_sampler_refuses_it_clearly(flat):
    from mdiff.text.sampling.sampler import generate

    with pytest.raises(InvalidInputError, match="generate_gemma"):
        generate(flat, [PROMPT], gen_length=8)
