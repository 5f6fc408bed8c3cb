"""Text objectives are unbiased ELBO estimates and learn; `mdiff train text` resumes exactly."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mdiff import cli
from mdiff.cli import main
from mdiff.errors import InvalidInputError
from mdiff.losses import discrete_nelbo
from mdiff.paths import MaskPath
from mdiff.text.data import stdlib_root
from mdiff.text.model.denoiser import TextDenoiser, TextDenoiserConfig
from mdiff.text.model.tokenizer import CodeTokenizer
from mdiff.text.training.objectives import (
    ARObjective,
    BlockDiffusionObjective,
    MaskedDiffusionObjective,
    ar_nll,
    masked_nelbo,
    stratified_uniform,
)
from mdiff.text.training.train import TextRecipe
from mdiff.train.checkpoint import load_tree
from mdiff.train.metrics import read_metrics

MASK = 3


class Uniform(nn.Module):
    """Equal logits everywhere: every masked token costs log V."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, ids, attention_mask=None):
        return torch.zeros(*ids.shape, self.vocab)


class Oracle(nn.Module):
    """A fixed, context-dependent denoiser: logits = own token + position + mean of the context."""

    def __init__(self, vocab: int, length: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.own = torch.randn(vocab, vocab, generator=g, dtype=torch.float64) * 2
        self.pos = torch.randn(length, vocab, generator=g, dtype=torch.float64)
        self.ctx = torch.randn(vocab, vocab, generator=g, dtype=torch.float64) * 3

    def forward(self, ids, attention_mask=None):
        return self.own[ids] + self.pos[: ids.shape[1]] + self.ctx[ids].mean(1, keepdim=True)


def _tiny(attention="bidirectional", vocab=8, seed=0, std=None, **kw) -> TextDenoiser:
    torch.manual_seed(seed)
    config = TextDenoiserConfig.preset("test", vocab_size=vocab, attention=attention, **kw)
    model = TextDenoiser(config)
    if std is not None:  # larger weights: a context-dependent, far-from-uniform model
        nn.init.normal_(model.embed.weight, std=std)
    return model


def _mean_and_se(values: list[float]) -> tuple[float, float]:
    x = torch.tensor(values, dtype=torch.float64)
    return float(x.mean()), float(x.std() / math.sqrt(len(values)))


# ---------------------------------------------------------------------------- masked diffusion


def test_stratified_uniform_covers_every_stratum():
    s = stratified_uniform(64, torch.Generator().manual_seed(0))
    assert sorted((s * 64).floor().long().tolist()) == list(range(64))
    assert (s * 64).floor().long().tolist() != list(range(64))  # shuffled


def test_uniform_model_loss_is_log_v_per_slot():
    """E over masking of Σ_masked log V / p, per slot, is log V (each batch independent)."""
    V, L = 50, 64
    objective = MaskedDiffusionObjective(mask_id=MASK)
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randint(7, V, (32, L), generator=gen)
    means = []
    for _ in range(200):
        loss, logs = objective(Uniform(V), {"input_ids": x1}, gen)
        assert loss.shape == (32,) and 0 < logs["mask_rate"] < 1
        means.append(float(loss.mean()))
    mean, se = _mean_and_se(means)
    assert se < 0.01 * math.log(V)  # sharp enough: a missing 1/p weight halves the mean
    assert abs(mean - math.log(V)) < 4 * se


def test_masked_objective_is_unbiased_for_the_exact_elbo():
    """MC mean of the training loss = exact discrete NELBO / L (enumerating all subsets)."""
    V, L = 6, 5
    mask_id = V - 1
    model = Oracle(V, L)
    x1 = torch.tensor([[0, 3, 1, 4, 2]])
    path = MaskPath(mask_id)
    exact = float(discrete_nelbo(lambda x, t: model(x), x1, path, exact=True)) / L
    objective = MaskedDiffusionObjective(mask_id=mask_id)
    gen = torch.Generator().manual_seed(1)
    means = [float(objective(model, x1.repeat(4096, 1), gen)[0].mean()) for _ in range(25)]
    mean, se = _mean_and_se(means)
    assert se < 0.01 * exact
    assert abs(mean - exact) < 4 * se + 2e-3 * exact  # + the O(ε) shift of p = (1 − ε)s + ε
    # the held-out estimate agrees too (grid a multiple of L: exact over the mask count)
    est = [
        masked_nelbo(model, x1.repeat(256, 1), mask_id=mask_id, grid=10, seed=s)["nats_per_token"]
        for s in range(10)
    ]
    mean, se = _mean_and_se(est)
    assert abs(mean - exact) < 4 * se + 1e-9 and se < 0.01 * exact


def test_padding_is_never_masked_nor_counted():
    V = 20
    objective = MaskedDiffusionObjective(mask_id=MASK)
    seen = {}

    def spy(ids, attention_mask=None):
        seen["ids"], seen["mask"] = ids, attention_mask
        return torch.zeros(*ids.shape, V)

    ids = torch.randint(7, V, (64, 16), generator=torch.Generator().manual_seed(0))
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[:, 10:] = False
    ids[:, 10:] = 0
    loss, _ = objective(spy, {"input_ids": ids, "attention_mask": valid}, torch.Generator())
    assert (seen["ids"][:, 10:] == 0).all() and torch.equal(seen["mask"], valid)
    assert (seen["ids"][:, :10] == MASK).any()
    # uniform model: per-sample loss = (#masked · log V / p) / 10 real slots, not / 16
    masked = (seen["ids"] == MASK).sum(1)
    assert torch.all((loss > 0) == (masked > 0))
    full, _ = objective(spy, {"input_ids": ids}, torch.Generator())  # no mask: all 16 count
    assert (seen["ids"][:, 10:] == MASK).any() and seen["mask"] is None
    assert full.shape == (64,)


def test_uniform_model_heldout_estimate_is_exact():
    V = 50
    batch = {"input_ids": torch.randint(7, V, (4, 40)), "attention_mask": torch.ones(4, 40).bool()}
    batch["attention_mask"][1, 25:] = False
    r = masked_nelbo(Uniform(V), batch, mask_id=MASK, grid=8)
    assert r["nats_per_token"] == pytest.approx(math.log(V), rel=1e-6)  # float32 CE
    assert r["bits_per_token"] == pytest.approx(math.log2(V), rel=1e-6)


def test_suppress_mask_removes_the_mask_logit():
    V = 10

    def likes_mask(ids, attention_mask=None):
        logits = torch.zeros(*ids.shape, V)
        logits[..., MASK] = 50.0
        return logits

    ids = torch.randint(7, V, (16, 32))
    plain, _ = MaskedDiffusionObjective(mask_id=MASK)(likes_mask, ids, torch.Generator())
    subs, _ = MaskedDiffusionObjective(mask_id=MASK, suppress_mask=True)(
        likes_mask, ids, torch.Generator()
    )
    assert plain.mean() > 20 and subs.mean() < 5  # log(V − 1) per slot in expectation


def test_masked_objective_overfits_one_batch():
    torch.manual_seed(0)
    model = _tiny(vocab=64, seed=0)
    motifs = torch.randint(7, 64, (4, 4), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": motifs.repeat(1, 8)}  # each row repeats its own 4 tokens
    objective = MaskedDiffusionObjective()  # mask id from model.spec
    before = masked_nelbo(model, batch, mask_id=model.spec.mask_id)["nats_per_token"]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        loss, logs = objective(model, batch, gen)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    after = masked_nelbo(model, batch, mask_id=model.spec.mask_id)["nats_per_token"]
    assert before > 0.9 * math.log(64) and after < 0.6 * before
    assert set(logs) == {"masked_acc", "masked_ce", "mask_rate"}


# ---------------------------------------------------------------------------- block diffusion


def _exact_block_nelbo(model, x1, block_size):
    """Σ_blocks Σ_{T ⊆ block} (1/|T|) / C(b, |T|) Σ_{i∈T} CE_i, per token."""
    L = x1.shape[1]
    total = 0.0
    for start in range(0, L, block_size):
        block = range(start, start + block_size)
        for m in range(1, block_size + 1):
            for subset in itertools.combinations(block, m):
                x_t = x1.clone()
                x_t[0, list(subset)] = model.spec.mask_id
                logits = model.block_forward(x_t, x1)
                ce = F.cross_entropy(logits[0].double(), x1[0], reduction="none")
                total += float(ce[list(subset)].sum()) / m / math.comb(block_size, m)
    return total / L


def test_block_objective_is_unbiased_for_the_block_elbo():
    model = _tiny("block_causal", block_size=2, std=0.3).double().eval()
    x1 = torch.tensor([[4, 7, 5, 6]])
    with torch.no_grad():
        exact = _exact_block_nelbo(model, x1, 2)
        objective = BlockDiffusionObjective()
        gen = torch.Generator().manual_seed(0)
        means = [float(objective(model, x1.repeat(2048, 1), gen)[0].mean()) for _ in range(16)]
        est = [
            masked_nelbo(model, x1.repeat(512, 1), mask_id=MASK, grid=4, seed=s, block=True)
            for s in range(6)
        ]
    mean, se = _mean_and_se(means)
    assert se < 0.02 * exact and abs(mean - exact) < 4 * se + 2e-3 * exact
    mean, se = _mean_and_se([r["nats_per_token"] for r in est])
    assert abs(mean - exact) < 4 * se + 1e-9 and se < 0.01 * exact


def test_block_objective_draws_a_level_per_block():
    model = _tiny("block_causal", vocab=32, block_size=16)
    seen = {}
    forward = model.block_forward

    def spy(x_t, x_0, attention_mask=None):
        seen["x_t"] = x_t
        return forward(x_t, x_0, attention_mask=attention_mask)

    model.block_forward = spy
    ids = torch.randint(7, 32, (8, 64))
    loss, logs = BlockDiffusionObjective()(model, ids, torch.Generator().manual_seed(0))
    loss.mean().backward()
    assert loss.shape == (8,) and model.embed.weight.grad is not None
    rates = (seen["x_t"] == MASK).float().view(8, 4, 16).mean(2)  # (rows, blocks)
    assert (rates.max(1).values - rates.min(1).values).max() > 0.5
    with pytest.raises(InvalidInputError):
        BlockDiffusionObjective()(model, ids[:, :40], torch.Generator())
    with pytest.raises(InvalidInputError):
        BlockDiffusionObjective()(_tiny(), ids[:, :32] % 8, torch.Generator())


# ---------------------------------------------------------------------------- autoregressive


def test_ar_objective_is_next_token_ce():
    model = _tiny("causal", vocab=16, std=0.3)
    ids = torch.randint(7, 16, (3, 12))
    loss, logs = ARObjective()(model, {"input_ids": ids}, torch.Generator())
    logits = model(ids)
    manual = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    torch.testing.assert_close(loss, manual.mean(1))
    assert 0 <= logs["acc"] <= 1
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, 7:] = False
    padded = ids.clone()
    padded[0, 7:] = 0
    loss_p, _ = ARObjective()(model, {"input_ids": padded, "attention_mask": valid}, None)
    torch.testing.assert_close(loss_p[0], manual[0, :6].mean())  # 6 targets in 7 real tokens
    assert ar_nll(model, {"input_ids": ids})["nats_per_token"] == pytest.approx(
        float(manual.detach().mean()), rel=1e-5
    )
    with pytest.raises(InvalidInputError, match="causal"):
        ARObjective()(_tiny(vocab=16), ids, None)


# ---------------------------------------------------------------------------- runs and the CLI


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for name in ("abc", "bisect", "colorsys", "copy", "heapq", "keyword", "shlex", "textwrap"):
        shutil.copy(stdlib_root() / f"{name}.py", root / f"{name}.py")
    return root


def _cli(out, corpus, *extra):
    argv = ["--threads", "1", "train", "text", "--out", str(out), "--corpus", str(corpus)]
    tiny = ["--preset", "test", "--batch-size", "2", "--seq-len", "32", "--vocab-size", "300"]
    return main([*argv, *tiny, "--no-progress", "--save-every", "2", *extra])


def _weights(out, step):
    directory = out / "checkpoints" / f"step_{step:08d}"
    return load_tree(directory, "model"), load_tree(directory, "ema")


def test_cli_resume_continues_exactly_and_export_loads(tmp_path, corpus):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _cli(straight, corpus, "--steps", "4", "--eval-every", "2", "--log-every", "1") == 0
    assert _cli(split, corpus, "--steps", "2", "--eval-every", "2", "--log-every", "1") == 0
    assert _cli(split, corpus, "--steps", "4", "--eval-every", "2", "--log-every", "1",
                "--resume") == 0  # fmt: skip
    for a, b in zip(_weights(straight, 4), _weights(split, 4), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    rows_a, rows_b = read_metrics(straight), read_metrics(split)
    assert [r["loss"] for r in rows_a if r["kind"] == "train"] == [
        r["loss"] for r in rows_b if r["kind"] == "train"
    ]
    evals = [r for r in rows_b if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    assert 0 < evals[-1]["heldout_nats_per_token"] < 1.2 * math.log(300)
    run = json.loads((split / "run.json").read_text())
    assert run["kind"] == "mdm" and run["model_config"]["attention"] == "bidirectional"

    exported = tmp_path / "export"
    assert _cli(split, corpus, "--export", str(exported), "--export-only") == 0
    model = TextDenoiser.from_pretrained(exported)
    _, ema = _weights(split, 4)
    for name, p in model.named_parameters():
        assert torch.equal(p, ema[name]), name
    tok = CodeTokenizer.load(exported)
    assert model.spec.vocab_size == tok.vocab_size and model.spec.mask_id == tok.mask_id
    ids = torch.tensor([tok.encode("def f(x):\n    return x\n")])
    assert model(ids).shape == (1, ids.shape[1], tok.vocab_size)
    log = json.loads((exported / "training_log.json").read_text())
    assert log["step"] == 4 and len(log["losses"]) == 4 and log["command"].startswith("mdiff")
    assert log["heldout"]["heldout_bits_per_byte"] > 0

    assert _cli(split, corpus, "--steps", "6") == cli.EXIT_ERROR  # never overwrites a run
    assert _cli(tmp_path / "x", corpus, "--export-only") == cli.EXIT_ERROR


@pytest.mark.parametrize("kind", ["block", "ar"])
def test_other_kinds_train(tmp_path, corpus, kind):
    out = tmp_path / kind
    recipe = TextRecipe(kind=kind, preset="test", steps=2, batch_size=2, seq_len=32,
                        corpus=str(corpus), vocab_size=300, block_size=8, eval_every=2,
                        progress=False)  # fmt: skip
    result = recipe.train(out)
    assert result.step == 2 and math.isfinite(result.loss)
    run = json.loads((out / "run.json").read_text())
    attention = {"block": "block_causal", "ar": "causal"}[kind]
    assert run["model_config"]["attention"] == attention
    assert run["data"]["fim_rate"] == (0.5 if kind == "ar" else 0)
    assert sorted(r["kind"] for r in read_metrics(out)) == ["eval", "train"]


def test_init_from_fine_tunes_an_exported_model_into_another_attention(tmp_path, corpus):
    parent = tmp_path / "parent"
    assert _cli(tmp_path / "mdm", corpus, "--steps", "2", "--export", str(parent)) == 0
    out = tmp_path / "block"
    # lr 0: the weights stay those of the parent, so the run must have started from them
    assert _cli(out, corpus, "--steps", "2", "--kind", "block", "--block-size", "8",
                "--lr", "0", "--init-from", str(parent), "--eval-every", "0") == 0  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert run["model_config"]["attention"] == "block_causal"
    assert run["model_config"]["block_size"] == 8
    assert run["train"]["init_from"] == str(parent)
    assert (out / "tokenizer.json").read_bytes() == (parent / "tokenizer.json").read_bytes()
    model, ema = _weights(out, 2)
    start = TextDenoiser.from_pretrained(parent).state_dict()
    for name, p in model.items():
        assert torch.equal(p, start[name]), name

    child = tmp_path / "child"
    assert _cli(out, corpus, "--export", str(child), "--export-only") == 0
    log = json.loads((child / "training_log.json").read_text())
    assert log["init_log"] == json.loads((parent / "training_log.json").read_text())
    assert TextDenoiser.from_pretrained(child).config.attention == "block_causal"

    bad = tmp_path / "bad"
    missing = str(tmp_path / "none")
    assert _cli(bad, corpus, "--steps", "2", "--init-from", missing) == cli.EXIT_ERROR


def test_fim_order_is_recorded_and_read_back_with_the_model(tmp_path, corpus):
    from mdiff.text.pipeline import CodeModel

    out, model = tmp_path / "spm", tmp_path / "spm-model"
    assert _cli(out, corpus, "--kind", "ar", "--fim-order", "spm", "--steps", "1",
                "--eval-every", "0", "--export", str(model)) == 0  # fmt: skip
    assert json.loads((out / "run.json").read_text())["data"]["fim_order"] == "spm"
    assert CodeModel.from_pretrained(model).fim_order == "spm"
    config = json.loads((model / "config.json").read_text())
    assert (config["fim_order"], config["context"]) == ("spm", 32)  # inference reads the config
    (model / "training_log.json").unlink()  # without the log, the config alone says it
    assert CodeModel.from_pretrained(model).fim_order == "spm"
    del config["fim_order"], config["context"]  # an older export without a log: PSM, as
    (model / "config.json").write_text(json.dumps(config))  # models were trained then
    assert CodeModel.from_pretrained(model).fim_order == "psm"


def test_export_of_a_named_checkpoint(tmp_path, corpus):
    out, model = tmp_path / "run", tmp_path / "early"
    assert _cli(out, corpus, "--steps", "4", "--eval-every", "0") == 0
    assert _cli(out, corpus, "--export", str(model), "--export-only",
                "--checkpoint", "step_00000002") == 0  # fmt: skip
    assert json.loads((model / "training_log.json").read_text())["step"] == 2
    assert _cli(out, corpus, "--export", str(model), "--export-only",
                "--checkpoint", "step_00000003") == cli.EXIT_ERROR  # not saved  # fmt: skip
