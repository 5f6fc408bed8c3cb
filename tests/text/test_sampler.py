"""The text sampler against an independent LLaDA reference, and its batching, caches, EOS
policy, ReMDM, streaming and watermark hook."""

import pytest
import torch
from transformers.generation.streamers import TextDiffusionStreamer

from mdiff.errors import InvalidInputError
from mdiff.nn.cache import KVCache
from mdiff.provenance.watermark.text import TextWatermark
from mdiff.record import GenerationRecord
from mdiff.text.sampling.policies import EOSPolicy
from mdiff.text.sampling.sampler import GenerationConfig, denoise, generate
from mdiff.text.sampling.stream import TokenCollector

from .conftest import TinyDenoiser

MASK, PAD, EOS = 3, 0, 2


def prompts(lengths, seed=0, vocab=24):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=g).tolist() for n in lengths]


def left_pad(rows):
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), PAD)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, n - len(r) :], mask[i, n - len(r) :] = torch.tensor(r), True
    return ids, mask


# ---- LLaDA reference (research b.2), written independently of the sampler -------------------


def llada_reference(model, prompt, attention_mask, steps, gen_length, block_length, cfg_scale,
                    combine=None):  # fmt: skip
    """Greedy low-confidence LLaDA generate: equal split per block, full forward every step,
    confidence −inf after the current block, CFG with the prompt (pads included) masked
    (``combine(c, u)`` replaces LLaDA's ``u + (cfg_scale + 1)(c − u)`` when given)."""
    B, P = prompt.shape
    x = torch.cat([prompt, torch.full((B, gen_length), MASK)], 1)
    am = pos = None
    if attention_mask is not None:
        am = torch.cat([attention_mask, torch.ones(B, gen_length, dtype=torch.bool)], 1)
        pos = (am.long().cumsum(1) - 1).clamp(min=0)
    prompt_index = x != MASK
    n_blocks = gen_length // block_length
    per_block = steps // n_blocks
    for nb in range(n_blocks):
        end = P + (nb + 1) * block_length
        m = (x[:, P + nb * block_length : end] == MASK).sum(1)
        plan = [[int(m[b]) // per_block + (i < int(m[b]) % per_block) for i in range(per_block)]
                for b in range(B)]  # fmt: skip
        for i in range(per_block):
            mask_index = x == MASK
            if cfg_scale > 0:
                un = x.clone()
                un[prompt_index] = MASK
                both = torch.cat([x, un])
                a2 = None if am is None else torch.cat([am, am])
                p2 = None if pos is None else torch.cat([pos, pos])
                c, u = model(both, attention_mask=a2, position_ids=p2).chunk(2)
                logits = u + (cfg_scale + 1) * (c - u) if combine is None else combine(c, u)
            else:
                logits = model(x, attention_mask=am, position_ids=pos)
            x0 = logits.argmax(-1)
            conf = torch.softmax(logits.double(), -1).gather(-1, x0[..., None])[..., 0]
            conf[:, end:] = -torch.inf
            x0 = torch.where(mask_index, x0, x)
            conf = torch.where(mask_index, conf, torch.tensor(-torch.inf, dtype=conf.dtype))
            for b in range(B):
                k = plan[b][i]
                if k:
                    sel = torch.topk(conf[b], k).indices
                    x[b, sel] = x0[b, sel]
    return x


SETTINGS = [(8, 8, 8), (8, 8, 4), (4, 8, 4), (6, 12, 4), (3, 12, 12), (16, 8, 8), (4, 12, 6)]


@pytest.mark.parametrize("steps,gen_length,block_length", SETTINGS)
@pytest.mark.parametrize("padded", [False, True])
def test_llada_parity_greedy(steps, gen_length, block_length, padded):
    model = TinyDenoiser(seed=1)
    rows = prompts([5, 3, 5] if padded else [4, 4, 4], seed=steps + gen_length)
    ids, am = left_pad(rows)
    ref = llada_reference(model, ids, am if padded else None, steps, gen_length, block_length, 0)
    out = generate(model, ids, am if padded else None, steps=steps, gen_length=gen_length,
                   block_length=block_length)  # fmt: skip
    assert torch.equal(out.sequences, ref)
    n_blocks = gen_length // block_length
    per_block = min(steps // n_blocks, block_length)  # a finished block takes no idle steps
    assert out.nfe == n_blocks * per_block
    assert out.steps_per_block == [[per_block] * n_blocks] * 3


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("w", [0.5, 2.0])
def test_llada_parity_with_cfg(padded, w):
    """LLaDA raises UnboundLocalError for CFG without an attention mask; ours needs none."""
    model = TinyDenoiser(seed=2)
    ids, am = left_pad(prompts([6, 4] if padded else [5, 5], seed=7))
    am = am if padded else None
    ref = llada_reference(model, ids, am, 8, 8, 4, w)
    out = generate(model, ids, am, steps=8, gen_length=8, block_length=4, cfg_scale=w)
    assert torch.equal(out.sequences, ref)
    plain = generate(model, ids, am, steps=8, gen_length=8, block_length=4)
    assert not torch.equal(out.sequences, plain.sequences)  # guidance changed something


def guidance_rules(w):
    """The core's guidance rules written out, per position (the last axis is the vocabulary):
    CFG ``u + w(c − u)``; CFG-Zero* ``s·u + w(c − s·u)``, ``s = ⟨c, u⟩/‖u‖²``; APG on the
    logits themselves (η = 0): ``c + (w − 1)·(Δ − ⟨Δ, c⟩/‖c‖²·c)``, ``Δ = c − u``."""

    def dot(a, b):
        return (a * b).sum(-1, keepdim=True)

    def zero_star(c, u):
        su = dot(c, u) / dot(u, u) * u
        return su + w * (c - su)

    def apg(c, u):
        delta = c - u
        return c + (w - 1) * (delta - dot(delta, c) / dot(c, c) * c)

    return {"cfg": lambda c, u: u + w * (c - u), "cfg_zero_star": zero_star, "apg": apg}


@pytest.mark.parametrize("method", ["cfg", "cfg_zero_star", "apg"])
def test_guidance_methods_by_name_follow_the_core_rule(method):
    """The runner's guided logits are the named rule's and no other's; greedy generation with
    it equals the LLaDA reference with that rule."""
    from mdiff.text.sampling.runner import ModelRunner

    model, w = TinyDenoiser(seed=2), 2.5
    ids, am = left_pad(prompts([6, 4], seed=7))
    x = torch.cat([ids, torch.full((2, 8), MASK)], 1)
    real = torch.cat([am, torch.ones(2, 8, dtype=torch.bool)], 1)
    pos = (real.long().cumsum(1) - 1).clamp(min=0)
    fixed = real & (x != MASK)
    runner = ModelRunner(model, model.spec, "none", real, pos, fixed, w, method)
    got = runner.logits(x, 6, 14, fresh=True)
    c = model(x, attention_mask=real, position_ids=pos)
    u = model(torch.where(fixed, MASK, x), attention_mask=real, position_ids=pos)
    rules = guidance_rules(w)
    for name, rule in rules.items():
        same = torch.allclose(got, rule(c, u)[:, 6:14], atol=1e-9, rtol=1e-9)
        assert same == (name == method), name
    ref = llada_reference(model, ids, am, 8, 8, 4, 1.0, combine=rules[method])
    out = generate(model, ids, am, steps=8, gen_length=8, block_length=4, guidance=w,
                   guidance_method=method)  # fmt: skip
    assert torch.equal(out.sequences, ref)
    assert out.record_fields()["guidance"] == {"kind": method, "scale": w}


def test_cfg_scale_is_llada_form_of_guidance():
    """``cfg_scale = w`` (LLaDA, off at 0) is ``guidance = w + 1`` (the core's, off at 1)."""
    model = TinyDenoiser(seed=6)
    rows = prompts([5, 3], seed=2)
    for w in (0.5, 2.0):
        kw = dict(gen_length=8, steps=8, block_length=4, temperature=0.8, seed=3)
        llada = generate(model, rows, cfg_scale=w, **kw)
        core = generate(model, rows, guidance=w + 1, **kw)
        assert torch.equal(llada.sequences, core.sequences)
        assert llada.settings["guidance"] == core.settings["guidance"] == w + 1
    assert GenerationConfig(cfg_scale=0.0).guidance == GenerationConfig().guidance == 1.0
    assert GenerationConfig(cfg_scale=1.5, guidance=2.5).guidance == 2.5  # both, agreeing
    with pytest.raises(InvalidInputError, match="disagree"):
        GenerationConfig(cfg_scale=1.0, guidance=3.0)
    # an override of one form replaces the other form given in a config
    base = GenerationConfig(gen_length=8, steps=8, cfg_scale=1.0)
    over = generate(model, rows, config=base, guidance=1.0)
    assert torch.equal(over.sequences, generate(model, rows, gen_length=8, steps=8).sequences)
    for bad in (dict(guidance=-1.0), dict(cfg_scale=float("nan")), dict(guidance_method="pag")):
        with pytest.raises(InvalidInputError):
            GenerationConfig(**bad)


# ---- batch invariance ---------------------------------------------------------------------------

SAMPLING = [
    dict(),
    dict(temperature=1.0),
    dict(temperature=0.7, score="random", top_k=8),
    dict(temperature=1.0, top_p=0.9, schedule="threshold", threshold=0.3),
    dict(temperature=1.0, remask="cap", remask_eta=0.5, steps=12),
    dict(temperature=1.0, schedule="entropy", entropy_bound=1.0, score="margin"),
]


@pytest.mark.parametrize("kwargs", SAMPLING)
@pytest.mark.parametrize("attention", ["bidirectional", "block_causal"])
def test_row_alone_equals_row_in_padded_batch(kwargs, attention):
    model = TinyDenoiser(seed=3, attention=attention, block_size=4)
    rows = prompts([2, 7, 4], seed=11)
    cfg = GenerationConfig(gen_length=8, block_length=4, seed=100, **kwargs)
    batch = generate(model, rows, config=cfg)
    for b, row in enumerate(rows):
        alone = generate(
            model, [row], config=cfg, generators=[torch.Generator().manual_seed(100 + b)]
        )
        assert batch.sequences[b, -8:].tolist() == alone.sequences[0, -8:].tolist(), (b, kwargs)
        assert batch.steps_per_block[b] == alone.steps_per_block[0]
    again = generate(model, rows, config=cfg)
    assert torch.equal(again.sequences, batch.sequences)  # same seed, same output


def test_exact_cache_matches_recompute_and_is_batch_invariant():
    model = TinyDenoiser(seed=4, attention="block_causal", block_size=4)
    rows = prompts([3, 6], seed=5)
    cfg = GenerationConfig(gen_length=12, steps=12, temperature=1.0, seed=9, measure_drift=True)
    cached, plain = (
        generate(model, rows, config=cfg),
        generate(model, rows, config=cfg, cache="none"),
    )
    assert cached.settings["cache"] == "exact" and plain.settings["cache"] == "none"
    assert torch.equal(cached.sequences, plain.sequences)
    assert cached.nfe == plain.nfe == 12  # finished blocks ride along with the next step
    assert len(cached.drift) == 12 and max(cached.drift) < 1e-10
    model.calls = 0
    generate(model, rows, config=cfg, measure_drift=False)
    assert model.calls == 12
    x = torch.tensor([[PAD, 5, 6, 7, MASK, MASK, 8, MASK, 9, 10, MASK, MASK, 11, 12]] * 2)
    x[1, :3] = torch.tensor([13, 14, 15])  # infill: masks between context, in several blocks
    am = x != PAD
    fill = [denoise(model, x, am, cfg, cache=c, steps=6) for c in ("exact", "none")]
    assert torch.equal(fill[0].sequences, fill[1].sequences) and max(fill[0].drift) < 1e-10
    assert fill[0].steps_per_block == [[3, 2]] * 2  # slot blocks 4..7 and 8..11
    assert fill[0].sequences.ne(MASK).all()


def test_exact_cache_runs_only_stepping_rows_with_the_same_output(monkeypatch):
    """Rows whose holes sit in different blocks and end at different steps: a step that
    commits nothing runs only the rows still stepping, against their rows of the cache
    (`KVCache.select`); the tokens equal the all-rows run and each row alone."""
    model = TinyDenoiser(seed=6, attention="block_causal", block_size=4)
    x = torch.tensor([[PAD, PAD, PAD, PAD, 5, 6, MASK, MASK, 8, 9, 10, 11],
                      [PAD, 5, 6, 7, MASK, MASK, MASK, MASK, MASK, MASK, 12, 13],
                      [4, 5, 6, 7, 8, 9, 10, 11, 12, MASK, 13, 14]])  # fmt: skip
    am = x != PAD
    cfg = GenerationConfig(temperature=1.0, seed=3, measure_drift=True)
    fed = []
    forward = model.forward

    def counting(input_ids, *a, **k):
        fed.append(input_ids.shape[0])
        return forward(input_ids, *a, **k)

    monkeypatch.setattr(model, "forward", counting)
    some = denoise(model, x, am, cfg, cache="exact")
    some_rows = sum(fed[::2])  # every other call is the drift's reference forward
    assert max(some.drift) < 1e-10
    fed.clear()
    with monkeypatch.context() as m:
        m.setattr(KVCache, "select", None)  # a cache that cannot hand out rows: all rows run
        every = denoise(model, x, am, cfg, cache="exact")
    assert torch.equal(some.sequences, every.sequences)
    assert some_rows < sum(fed[::2]) == 3 * every.nfe
    for b in range(3):
        alone = denoise(model, x[b : b + 1], am[b : b + 1], cfg, cache="exact",
                        generators=[torch.Generator().manual_seed(3 + b)])  # fmt: skip
        assert torch.equal(alone.sequences[0], some.sequences[b])


def test_approximate_caches_refresh_per_block_and_report_drift():
    model = TinyDenoiser(seed=5)
    rows = prompts([4, 4], seed=6)
    base = generate(model, rows, gen_length=8, steps=2, block_length=4)  # one step per block
    for mode in ("prefix", "dual"):
        one = generate(model, rows, gen_length=8, steps=2, block_length=4, cache=mode,
                       measure_drift=True)  # fmt: skip
        assert torch.equal(one.sequences, base.sequences)  # only refresh steps: exact
        assert one.drift == []
        many = generate(model, rows, gen_length=8, steps=8, block_length=4, cache=mode,
                        measure_drift=True)  # fmt: skip
        assert many.nfe == 8 and len(many.drift) == 6  # 2 refreshes are full forwards
        assert max(many.drift) > 1e-6  # a bidirectional model's stale cache drifts
    with pytest.raises(InvalidInputError, match="block_causal"):
        generate(model, rows, gen_length=8, cache="exact")


def test_text_denoiser_cached_paths():
    from mdiff.text.model.denoiser import TextDenoiser, TextDenoiserConfig

    torch.manual_seed(0)
    cfg = TextDenoiserConfig.preset("test", attention="block_causal", block_size=4)
    model = TextDenoiser(cfg).double().eval()
    with torch.no_grad():
        model.embed.weight.normal_()
    rows = prompts([3, 6, 5], seed=8, vocab=64)
    gc = GenerationConfig(gen_length=8, steps=8, temperature=1.0, seed=1, measure_drift=True,
                          cfg_scale=0.5)  # fmt: skip
    cached, plain = generate(model, rows, config=gc), generate(model, rows, config=gc, cache="none")
    assert torch.equal(cached.sequences, plain.sequences) and max(cached.drift) < 1e-9
    alone = generate(model, [rows[1]], config=gc, generators=[torch.Generator().manual_seed(2)])
    assert cached.sequences[1, -8:].tolist() == alone.sequences[0, -8:].tolist()
    bi = TextDenoiser(TextDenoiserConfig.preset("test")).double().eval()
    dual = generate(
        bi, rows, gen_length=8, steps=8, block_length=4, cache="dual", measure_drift=True
    )
    assert len(dual.drift) == 6 and dual.sequences.ne(bi.spec.mask_id).all()


# ---- masks anywhere -----------------------------------------------------------------------------


def test_denoise_fills_any_mask_and_keeps_context():
    model = TinyDenoiser(seed=6)
    x = torch.tensor([[5, 6, MASK, MASK, 7, MASK, 8], [PAD, 9, MASK, 10, MASK, MASK, 11]])
    am = x != PAD
    out = denoise(model, x, am, steps=4, block_length=2)
    assert out.sequences.ne(MASK).all()
    assert torch.equal(out.sequences[~out.generated], x[~out.generated])
    assert out.generated.sum(1).tolist() == [3, 3] and out.steps_per_block == [[2, 1], [2, 1]]
    canvas = torch.cat([torch.tensor([[5, 6, 7]]), torch.full((1, 6), MASK)], 1)
    assert torch.equal(denoise(model, canvas, steps=6, block_length=3).sequences,
                       generate(model, [[5, 6, 7]], gen_length=6, steps=6, block_length=3).sequences)  # fmt: skip  # noqa: E501


def test_blocks_follow_mask_rank_per_row():
    """Block 0 of a row = its first block_length masks: they are all committed first."""
    model = TinyDenoiser(seed=7)
    seen = []
    wrapped = _Recorder(model, seen)
    x = torch.tensor([[5, MASK, 6, MASK, MASK, 7, MASK]])
    denoise(wrapped, x, steps=4, block_length=2)
    second_block = seen[2][0, [4, 6]]  # input of step 3: block 0 done, block 1 untouched
    assert seen[2][0, [1, 3]].ne(MASK).all() and second_block.eq(MASK).all()


class _Recorder(torch.nn.Module):
    def __init__(self, model, seen):
        super().__init__()
        self.model, self.seen = model, seen

    @property
    def spec(self):
        return self.model.spec

    def forward(self, input_ids, **kw):
        self.seen.append(input_ids.clone())
        return self.model(input_ids, **kw)


# ---- EOS policy ---------------------------------------------------------------------------------


class _EOSBiased(torch.nn.Module):
    """Adds `bias` to the EOS logit at even slots (EOS then wins with high confidence there)."""

    def __init__(self, model, bias=6.0, everywhere=False, eos_ids=(EOS,)):
        super().__init__()
        self.model, self.bias, self.everywhere, self.eos_ids = model, bias, everywhere, eos_ids
        import dataclasses

        self._spec = dataclasses.replace(model.spec, eos_ids=eos_ids)

    @property
    def spec(self):
        return self._spec

    def forward(self, input_ids, **kw):
        out = self.model(input_ids, **kw).clone()
        sl = slice(None) if self.everywhere else slice(0, None, 2)
        for i in self.eos_ids:
            out[:, sl, i] += self.bias
        return out


def test_eos_forbid_penalty_defer():
    base = TinyDenoiser(seed=8)
    model = _EOSBiased(base, eos_ids=(EOS, 5))
    rows = prompts([4], seed=1)
    plain = generate(model, rows, gen_length=8, steps=8)
    assert plain.sequences[0, -8:].eq(EOS).any() or plain.sequences[0, -8:].eq(5).any()
    for eos in (EOSPolicy(forbid=True), EOSPolicy(penalty=50.0)):
        out = generate(model, rows, gen_length=8, steps=8, eos=eos)
        assert not torch.isin(out.sequences[0, -8:], torch.tensor([EOS, 5])).any()
    seen = []
    generate(_Recorder(model, seen), rows, gen_length=8, steps=8)
    first = seen[1][0, -8:][seen[0][0, -8:] == MASK]
    assert torch.isin(first[first != MASK], torch.tensor([EOS, 5])).all()  # EOS first by default
    seen.clear()
    out = generate(_Recorder(model, seen), rows, gen_length=8, steps=8, eos=EOSPolicy(defer=True))
    n_eos = int(torch.isin(out.sequences[0, -8:], torch.tensor([EOS, 5])).sum())
    assert n_eos > 0
    for step in range(8 - n_eos):  # every non-EOS token is committed before any EOS
        committed = seen[step + 1][0, -8:] if step + 1 < len(seen) else out.sequences[0, -8:]
        assert not torch.isin(committed, torch.tensor([EOS, 5])).any()


def test_eos_stop_and_truncate():
    model = _EOSBiased(TinyDenoiser(seed=9), bias=50.0, everywhere=True)
    out = generate(model, prompts([3, 5], seed=2), gen_length=12, steps=12, block_length=4,
                   eos=EOSPolicy(stop=True))  # fmt: skip
    assert out.nfe == 4 and out.sequences[:, -12:].eq(EOS).all()
    assert out.steps_per_block == [[4], [4]]
    assert out.tokens_per_forward.tolist() == [1.0, 1.0]  # the filled EOS are not counted
    model = _EOSBiased(TinyDenoiser(seed=9), bias=3.0)
    rows = prompts([3], seed=3)
    raw = generate(model, rows, gen_length=10, steps=10).sequences[0, -10:]
    first = int(raw.eq(EOS).nonzero()[0, 0])
    trunc = generate(model, rows, gen_length=10, steps=10, eos=EOSPolicy(truncate=True))
    assert trunc.sequences[0, -10:].tolist() == raw[: first + 1].tolist() + [PAD] * (9 - first)


# ---- ReMDM --------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["cap", "rescale"])
def test_remdm_sigma_zero_is_the_plain_step(strategy):
    model = TinyDenoiser(seed=10)
    rows = prompts([4, 6], seed=4)
    cfg = GenerationConfig(gen_length=8, steps=8, block_length=4, temperature=1.0, score="random",
                           seed=5)  # fmt: skip
    plain = generate(model, rows, config=cfg)
    zero = generate(model, rows, config=cfg, remask=strategy, remask_eta=0.0)
    assert torch.equal(plain.sequences, zero.sequences)
    seen = []
    on = generate(_Recorder(model, seen), rows, config=cfg, remask=strategy, remask_eta=1.0)
    assert on.sequences.ne(MASK).all() and on.nfe == 8
    remasked = [
        ((a != MASK) & (b == MASK)).sum().item() for a, b in zip(seen, seen[1:], strict=False)
    ]
    assert sum(remasked) > 0  # decoded tokens went back to [MASK] (then were re-decoded)


# ---- streaming ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [dict(), dict(remask="cap", remask_eta=0.8, temperature=1.0),
                                    dict(eos=EOSPolicy(truncate=True))])  # fmt: skip
def test_streaming_two_channels(kwargs):
    model = _EOSBiased(TinyDenoiser(seed=11), bias=2.0)
    rows = prompts([3, 6], seed=5)
    sinks = TokenCollector.for_batch(2)
    out = generate(model, rows, gen_length=12, steps=12, block_length=4, streamer=sinks, seed=0,
                   **kwargs)  # fmt: skip
    cut = False
    for b, sink in enumerate(sinks):
        assert sink.ended == 1
        assert sink.chunks[0] == rows[b]  # the prompt comes first
        final = out.sequences[b][out.sequences[b] != PAD].tolist()
        if kwargs.get("eos"):
            final = final[: final.index(EOS) + 1] if EOS in final else final
        assert sink.tokens == final  # monotone chunks that add up to the output
        cut |= len(final) < len(rows[b]) + 12
        if not kwargs.get("eos"):
            assert len(sink.chunks) >= 4  # committed progressively, not only at the end
        assert [s for s, _ in sink.drafts] == list(range(out.nfe))  # one draft per step
        assert all(len(d) == len(rows[b]) + 12 for _, d in sink.drafts)
    assert cut == bool(kwargs.get("eos"))  # truncation was exercised


def test_streaming_with_transformers_streamer(capsys):
    class Tok:
        def decode(self, ids, **kw):
            return "".join(f"<{i}> " for i in (ids.tolist() if torch.is_tensor(ids) else ids))

    texts = []

    class Streamer(TextDiffusionStreamer):
        def on_finalized_text(self, text, stream_end=False):
            texts.append(text)

    model = TinyDenoiser(seed=12)
    out = generate(model, [[5, 6, 7]], gen_length=8, steps=8, block_length=4,
                   streamer=Streamer(Tok(), skip_prompt=True))  # fmt: skip
    assert "".join(texts) == Tok().decode(out.sequences[0, -8:])
    with pytest.raises(InvalidInputError, match="one streamer per row"):
        generate(model, [[5], [6]], gen_length=4, streamer=TokenCollector())


# ---- watermark hook -----------------------------------------------------------------------------


def test_watermark_hook_marks_every_step():
    model = TinyDenoiser(vocab=64, seed=13, scale=0.1)  # flat-ish logits
    wm = TextWatermark(b"sampler-test-key", 64, ignore_ids=[MASK])
    rows = prompts([4, 4, 4], seed=6, vocab=64)
    cfg = GenerationConfig(gen_length=64, steps=64, block_length=16, temperature=1.0, seed=3)
    marked = generate(model, rows, config=cfg, watermark=wm)
    plain = generate(model, rows, config=cfg)
    z_on = [wm.detect(s, min_tokens=30).z for s in marked.sequences[:, -64:]]
    z_off = [wm.detect(s, min_tokens=30).z for s in plain.sequences[:, -64:]]
    assert min(z_on) > 4 and max(z_off) < 3, (z_on, z_off)
    assert marked.settings["watermarked"] and not plain.settings["watermarked"]


class _BiasedModel(TinyDenoiser):
    """The watermark applied by the model to its whole canvas (a copy per call): the oracle
    of the sampler's in-place bias over one window and its two neighbours."""

    def __init__(self, wm, **kw):
        super().__init__(**kw)
        self.wm = wm

    def forward(self, input_ids, **kw):
        return self.wm.bias(super().forward(input_ids, **kw), input_ids, self.spec.mask_id)


@pytest.mark.parametrize("eos", [EOSPolicy(), EOSPolicy(forbid=True)])
def test_the_watermark_bias_in_the_step_equals_it_on_the_whole_canvas(eos):
    kw = dict(vocab=64, seed=13, scale=0.1, supports_cache=False)
    wm = TextWatermark(b"sampler-test-key", 64, ignore_ids=[MASK])
    rows = prompts([4, 6, 5], seed=6, vocab=64)
    cfg = GenerationConfig(gen_length=24, steps=12, block_length=8, temperature=1.0, seed=3,
                           eos=eos)  # fmt: skip
    marked = generate(TinyDenoiser(**kw), rows, config=cfg, watermark=wm)
    oracle = generate(_BiasedModel(wm, **kw), rows, config=cfg)
    assert torch.equal(marked.sequences, oracle.sequences)
    plain = generate(TinyDenoiser(**kw), rows, config=cfg)
    assert not torch.equal(marked.sequences, plain.sequences)  # the bias changes the draw


# ---- outputs, record and validation -------------------------------------------------------------


def test_output_metrics_and_record():
    model = TinyDenoiser(seed=14)
    out = generate(model, prompts([3, 5]), gen_length=8, steps=4, cfg_scale=1.0, seed=7,
                   temperature=0.5)  # fmt: skip
    assert out.tokens_per_forward.tolist() == [2.0, 2.0] and out.nfe == 4
    assert out.settings["steps"] == 4 and out.settings["seed"] == 7
    assert out.settings["eos"] == EOSPolicy().to_dict()
    rec = GenerationRecord.create("text", "tiny", prompt="hi", **out.record_fields())
    assert rec.guidance == {"kind": "cfg", "scale": 2.0, "cfg_scale": 1.0}
    assert rec.sizes == {"tokens": 16} and rec.seed == 7
    fast = generate(model, prompts([3, 5]), max_new_tokens=8, schedule="threshold", threshold=0)
    assert fast.nfe == 1 and fast.tokens_per_forward.tolist() == [8.0, 8.0]
    slow = generate(model, prompts([3, 5]), gen_length=8, schedule="threshold", threshold=1.1)
    assert slow.nfe == 8 and slow.sequences.ne(MASK).all()  # ≥ 1 per step, and it terminates


BAD = [dict(steps=0), dict(schedule="fast"), dict(score="p"), dict(temperature=-1.0),
       dict(top_p=0.0), dict(cache="full"), dict(remask="cap", schedule="threshold"),
       dict(bogus=1)]  # fmt: skip


@pytest.mark.parametrize("bad", BAD)
def test_invalid_settings_raise(bad):
    with pytest.raises(InvalidInputError):
        generate(TinyDenoiser(), [[5, 6]], gen_length=4, **bad)


def test_invalid_inputs_raise():
    model = TinyDenoiser()
    with pytest.raises(InvalidInputError, match="left padding"):
        denoise(model, torch.tensor([[5, MASK, PAD]]), torch.tensor([[1, 1, 0]]))
    with pytest.raises(InvalidInputError):
        generate(model, [[5, 99]], gen_length=4)
    with pytest.raises(InvalidInputError, match="one torch.Generator per row"):
        generate(model, [[5], [6]], gen_length=4, generators=[torch.Generator()])
    with pytest.raises(InvalidInputError, match="spec"):
        generate(torch.nn.Linear(2, 2), [[5]], gen_length=4)
    with pytest.raises(InvalidInputError, match="supports_cache"):
        generate(TinyDenoiser(supports_cache=False), [[5]], gen_length=4, cache="dual")


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_runner_runs_only_the_rows_still_stepping(guidance):
    from mdiff.text.sampling.runner import ModelRunner

    model = TinyDenoiser(seed=5)
    ids, real = left_pad(prompts([3, 6, 5], seed=4))
    x = torch.cat([ids, torch.full((3, 4), MASK)], 1)
    real = torch.cat([real, torch.ones(3, 4, dtype=torch.bool)], 1)
    positions = (real.long().cumsum(1) - 1).clamp(min=0)
    seen = []
    model.register_forward_hook(lambda m, args, kw_out=None: seen.append(args[0].shape[0]))

    def runner():
        return ModelRunner(model, model.spec, "none", real, positions, real & (x != MASK),
                           guidance)  # fmt: skip

    full = runner().logits(x, 6, 10, fresh=True)
    part = runner().logits(x, 6, 10, fresh=True, rows=torch.tensor([0, 2]))
    halves = 2 if guidance != 1 else 1
    assert seen == [3 * halves, 2 * halves]  # the finished row 1 was not run
    assert part.shape[0] == 2 and torch.allclose(part, full[[0, 2]], atol=1e-12)  # theirs only
