"""DiT training: the flow-matching objective is right, diffusion forcing draws one t per chunk,
caption dropout has its rate, a tiny model learns, resume is exact, export loads, the CLI runs."""

from __future__ import annotations

import json

import pytest
import torch

from mdiff.cli import EXIT_ERROR, main
from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.hub import weights_sha256
from mdiff.train.checkpoint import load_tree
from mdiff.train.metrics import read_metrics
from mdiff.video.data import ShapesDataset
from mdiff.video.dit.latent_cache import LatentCache
from mdiff.video.dit.model import DiTConfig, SpaceTimeDiT
from mdiff.video.dit.train import (
    DiTExport,
    DiTObjective,
    DiTRecipe,
    TextConditionedDiT,
    heldout_loss,
    token_shift,
)
from mdiff.video.pipeline.folder import PIPELINE_FORMAT
from mdiff.video.text_encoders import ShapesTextEncoder, ShapesTextEncoderConfig
from mdiff.video.vae.model import CausalVAE
from mdiff.video.vae.train import shapes_vae_config


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny random VAE of the shipped layout (4x8x8), z 4, saved as a folder."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    CausalVAE(shapes_vae_config(base_dim=4, z_dim=4)).save_pretrained(path)
    return path


def _tiny_model(seed: int = 0, **dit_overrides) -> TextConditionedDiT:
    torch.manual_seed(seed)
    dit = SpaceTimeDiT(DiTConfig.preset("test", **dit_overrides))
    return TextConditionedDiT(dit, ShapesTextEncoder(ShapesTextEncoderConfig(dim=16, heads=2)))


class _Recorder:
    """A model that records its inputs and returns `fn(x_t, t)` (zeros by default)."""

    def __init__(self, fn=None):
        self.fn, self.calls = fn, []

    def __call__(self, x_t, t, captions):
        self.calls.append((x_t, t, list(captions)))
        return torch.zeros_like(x_t) if self.fn is None else self.fn(x_t, t)


def _batch(x1, caption="a red circle moving left on a black background"):
    return {"latents": x1, "captions": [caption] * x1.shape[0]}


def _per_frame(t, x):
    """t (B,) or (B, T) shaped to broadcast against latents (B, C, T, h, w)."""
    return t[:, None, :, None, None] if t.dim() == 2 else t.view(-1, 1, 1, 1, 1)


@pytest.mark.parametrize("chunk_frames", [None, 2])
def test_exact_velocity_gives_zero_loss(chunk_frames):
    x1 = torch.randn(8, 4, 5, 4, 4, generator=torch.Generator().manual_seed(1))
    # given x_t = t·x1 + (1 − t)·x0 and x1, the exact CondOT velocity x1 − x0 is (x1 − x_t)/(1 − t)
    exact = _Recorder(lambda x_t, t: (x1 - x_t) / (1 - _per_frame(t, x_t)))
    objective = DiTObjective(chunk_frames=chunk_frames)
    loss, logs = objective(exact, _batch(x1), torch.Generator().manual_seed(0))
    assert loss.shape == (8,) and float(loss.max()) < 1e-8
    # the opposite sign (x0 − x1) or the sigma convention would be far from zero
    flipped = _Recorder(lambda x_t, t: -(x1 - x_t) / (1 - _per_frame(t, x_t)))
    assert float(objective(flipped, _batch(x1), torch.Generator().manual_seed(0))[0].min()) > 0.5


def test_clean_context_teacher_forces_and_drops_clean_frames_from_the_loss():
    x1 = torch.randn(256, 4, 5, 2, 2, generator=torch.Generator().manual_seed(1))
    rec = _Recorder()
    objective = DiTObjective(chunk_frames=1, clean_context=0.5)
    objective(rec, _batch(x1), torch.Generator().manual_seed(0))
    x_t, t, _ = rec.calls[0]
    clean = t == 1
    forced = clean.any(1)
    # a forced sample: a clean prefix of >= 1 chunk, never all chunks; the rest noisy
    assert bool(clean[:, 0][forced].all()) and not bool(clean.all(1).any())
    prefix = clean.long().cumprod(1).sum(1)
    assert torch.equal(prefix, clean.sum(1))  # the clean chunks come first
    assert abs(float(forced.float().mean()) - 0.5) < 0.1  # its probability
    assert set(prefix[forced].tolist()) == {1, 2, 3, 4}  # every split point occurs
    assert torch.equal(x_t[:, :, :1][forced], x1[:, :, :1][forced])  # clean = the data itself
    # the loss ignores clean frames (their target holds the noise) and counts noisy ones
    exact = lambda x_t, t: (x1 - x_t) / (1 - _per_frame(t, x_t)).clamp_min(1e-6)  # noqa: E731
    loss, _ = objective(_Recorder(exact), _batch(x1), torch.Generator().manual_seed(0))
    assert float(loss.max()) < 1e-8  # clean frames would add E|x1 − x0|² ≈ 2 per element
    wrong_on_clean = lambda x_t, t: exact(x_t, t) + 5.0 * (_per_frame(t, x_t) == 1)  # noqa: E731
    loss, _ = objective(_Recorder(wrong_on_clean), _batch(x1), torch.Generator().manual_seed(0))
    assert float(loss.max()) < 1e-8
    wrong_on_noisy = lambda x_t, t: exact(x_t, t) + 5.0 * (_per_frame(t, x_t) < 1)  # noqa: E731
    loss, _ = objective(_Recorder(wrong_on_noisy), _batch(x1), torch.Generator().manual_seed(0))
    assert torch.allclose(loss, torch.full_like(loss, 25.0))
    with pytest.raises(InvalidInputError):
        DiTObjective(chunk_frames=1, clean_context=1.5)


def test_first_chunk_weight_weights_the_first_chunk_of_the_per_sample_mean():
    x1 = torch.randn(64, 4, 5, 2, 2, generator=torch.Generator().manual_seed(2))
    exact = lambda x_t, t: (x1 - x_t) / (1 - _per_frame(t, x_t)).clamp_min(1e-6)  # noqa: E731
    first = torch.arange(5)[None, None, :, None, None] == 0  # frame 0 = chunk 0
    off_first = _Recorder(lambda x_t, t: exact(x_t, t) + 5.0 * first)  # error² 25 on frame 0
    off_last = _Recorder(lambda x_t, t: exact(x_t, t) + 5.0 * ~first)  # 25 on frames 1-4
    for w in (1.0, 3.0):
        objective = DiTObjective(chunk_frames=1, first_chunk_weight=w)
        loss, _ = objective(off_first, _batch(x1), torch.Generator().manual_seed(0))
        assert torch.allclose(loss, torch.full_like(loss, 25 * w / (w + 4)))
        loss, _ = objective(off_last, _batch(x1), torch.Generator().manual_seed(0))
        assert torch.allclose(loss, torch.full_like(loss, 25 * 4 / (w + 4)))
    # with teacher forcing the first chunk is clean context: weighted zero, whatever w is
    objective = DiTObjective(chunk_frames=1, clean_context=0.5, first_chunk_weight=3.0)
    rec = _Recorder(lambda x_t, t: exact(x_t, t) + 5.0 * first)
    loss, _ = objective(rec, _batch(x1), torch.Generator().manual_seed(0))
    forced = (rec.calls[0][1] == 1).any(1)
    assert 0 < int(forced.sum()) < 64 and float(loss[forced].max()) < 1e-8
    assert torch.allclose(loss[~forced], torch.full_like(loss[~forced], 25 * 3 / 7))
    for bad in (dict(chunk_frames=1, first_chunk_weight=0.0), dict(first_chunk_weight=2.0)):
        with pytest.raises(InvalidInputError):
            DiTObjective(**bad)


def test_zero_model_loss_and_interpolation():
    c = 3.0
    x1 = torch.full((16, 4, 5, 8, 8), c)
    zero = _Recorder()
    loss, _ = DiTObjective()(zero, _batch(x1), torch.Generator().manual_seed(0))
    # E|x1 − x0|² = c² + 1 per element; the mean over 1280 elements has std ≈ 0.17
    assert loss.shape == (16,) and torch.allclose(loss, torch.full((16,), c * c + 1), atol=0.8)
    x_t, t, _ = zero.calls[0]
    assert t.shape == (16,) and bool(((t > 0) & (t < 1)).all())
    # x_t = t·x1 + (1 − t)·x0 with E[x0] = 0: per-sample mean t·c, spread (1 − t)
    assert torch.allclose(x_t.flatten(1).mean(1), t * c, atol=0.15)
    assert torch.allclose(x_t.flatten(1).std(1), 1 - t, rtol=0.1, atol=0.02)
    loss0, _ = DiTObjective()(zero, _batch(torch.zeros(16, 4, 5, 8, 8)), torch.Generator())
    assert abs(float(loss0.mean()) - 1.0) < 0.05  # E|x0|² = 1


def test_diffusion_forcing_one_t_per_chunk():
    rec = _Recorder()
    x1 = torch.zeros(64, 4, 5, 2, 2)  # 5 latent frames: chunks {0, 1}, {2, 3}, {4}
    DiTObjective(chunk_frames=2)(rec, _batch(x1), torch.Generator().manual_seed(0))
    t = rec.calls[0][1]
    assert t.shape == (64, 5)
    assert torch.equal(t[:, 0], t[:, 1]) and torch.equal(t[:, 2], t[:, 3])
    assert bool((t[:, 0] != t[:, 2]).all()) and bool((t[:, 2] != t[:, 4]).all())
    # the noise levels are drawn independently per chunk: no correlation between chunks
    corr = torch.corrcoef(torch.stack([t[:, 0], t[:, 2]]))[0, 1]
    assert abs(float(corr)) < 0.35
    # a block-causal DiT takes the per-frame t and trains
    model = _tiny_model(attention="block_causal", chunk_frames=2)
    loss, _ = DiTObjective(chunk_frames=2)(model, _batch(torch.randn(2, 4, 5, 2, 2)),
                                           torch.Generator())  # fmt: skip
    loss.mean().backward()
    assert loss.shape == (2,) and all(p.grad is not None for p in model.dit.parameters())
    assert model.text_encoder.embed.weight.grad is not None  # trained jointly


def test_time_law_and_token_shift():
    rec = _Recorder()
    x1 = torch.zeros(4000, 1, 1, 1, 1)
    DiTObjective()(rec, _batch(x1), torch.Generator().manual_seed(0))
    assert abs(float(rec.calls[0][1].median()) - 0.5) < 0.03  # logit-normal(0, 1)
    DiTObjective(shift=3.0)(rec, _batch(x1), torch.Generator().manual_seed(0))
    assert abs(float(rec.calls[1][1].median()) - 0.25) < 0.03  # 0.5 / (0.5 + 3 · 0.5)
    DiTObjective(logit_mean=1.0)(rec, _batch(x1), torch.Generator().manual_seed(0))
    assert abs(float(rec.calls[2][1].median()) - torch.sigmoid(torch.tensor(1.0))) < 0.03
    assert token_shift(80) == 1.0 and token_shift(1024) == pytest.approx(2.0)


def test_caption_dropout_rate():
    x1 = torch.zeros(4000, 1, 1, 1, 1)
    for p in (0.0, 0.1, 1.0):
        rec = _Recorder()
        _, logs = DiTObjective(caption_dropout=p)(rec, _batch(x1, "a blue square"),
                                                  torch.Generator().manual_seed(0))  # fmt: skip
        captions = rec.calls[0][2]
        assert set(captions) <= {"", "a blue square"}
        rate = captions.count("") / len(captions)
        assert abs(rate - p) < 0.02 and logs["caption_dropped"] == pytest.approx(rate)
    with pytest.raises(ValueError):
        DiTObjective(caption_dropout=1.5)


def test_overfits_one_batch(vae_dir, tmp_path):
    vae = CausalVAE.from_pretrained(vae_dir)
    clips = ShapesDataset(4, num_frames=5, height=16, width=16, seed=3)
    data = LatentCache(tmp_path, "train", vae, clips).fill()
    assert data.latents.shape == (4, 4, 2, 2, 2) and len(set(data.captions)) > 1
    model = _tiny_model()
    before = heldout_loss(model, data)["heldout_fm"]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    objective, gen = DiTObjective(caption_dropout=0.0), torch.Generator().manual_seed(0)
    batch = {"latents": data.latents.float(), "captions": data.captions}
    for _ in range(50):
        loss, _ = objective(model, batch, gen)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    after = heldout_loss(model, data)
    assert after["heldout_fm"] < 0.7 * before
    assert set(after) >= {"heldout_fm_uncond", "heldout_fm_t0.1", "heldout_fm_t0.9"}


def test_latent_cache_reads_back_and_rejects_other_settings(vae_dir, tmp_path):
    vae = CausalVAE.from_pretrained(vae_dir)
    clips = ShapesDataset(5, num_frames=5, height=16, width=16)
    first = LatentCache(tmp_path, "c", vae, clips, shard_size=2).fill()
    assert len(list(tmp_path.glob("c_*.safetensors"))) == 3
    again = LatentCache(tmp_path, "c", vae, clips, shard_size=2)
    again._encode = None  # reading must not encode
    second = again.fill()
    assert torch.equal(first.latents, second.latents) and first.captions == second.captions
    with torch.no_grad():
        direct = vae.encode(clips[4]["pixels"][None])
    assert torch.allclose(second[4]["latents"], direct[0], atol=1e-2, rtol=1e-3)  # float16
    other = ShapesDataset(5, num_frames=5, height=16, width=16, seed=9)
    third = LatentCache(tmp_path, "c", vae, other, shard_size=2).fill()
    assert third.captions != first.captions  # re-encoded for the other clips


def _train(out, vae_dir, steps, resume=False, **kw):
    recipe = DiTRecipe(
        preset="test", vae=vae_dir, steps=steps, batch_size=2, size=16, frames=5, clips=6,
        heldout_clips=2, save_every=2, log_every=1, eval_every=2, progress=False, **kw,
    )  # fmt: skip
    return recipe.train(out, resume=resume)


def _weights(out, step):
    directory = out / "checkpoints" / f"step_{step:08d}"
    return load_tree(directory, "model"), load_tree(directory, "ema")


def test_resume_is_exact_and_export_loads(vae_dir, tmp_path):
    straight = _train(tmp_path / "straight", vae_dir, 4)
    _train(tmp_path / "split", vae_dir, 2)
    split = _train(tmp_path / "split", vae_dir, 4, resume=True)
    assert [s for s, _ in split.history] == [3, 4]
    assert split.history == straight.history[2:]  # the loss at steps 3, 4 after resuming
    for a, b in zip(_weights(tmp_path / "straight", 4), _weights(tmp_path / "split", 4),
                    strict=True):  # fmt: skip
        assert a.keys() == b.keys() and any(k.startswith("text_encoder.") for k in a)
        assert all(torch.equal(a[k], b[k]) for k in a)
    rows = read_metrics(tmp_path / "split")
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2, 4]

    out = tmp_path / "pipe"
    log = DiTRecipe.export(tmp_path / "split", out, DiTExport(guidance=3.0))
    pipe = json.loads((out / "pipeline.json").read_text())
    assert pipe["format"] == PIPELINE_FORMAT and pipe["text_encoder_class"] == "ShapesTextEncoder"
    assert (pipe["vae"], pipe["dit"], pipe["text_encoder"]) == ("vae", "dit", "text_encoder")
    s = pipe["settings"]
    assert {"steps", "shift", "solver", "guidance", "fps", "num_frames"} <= set(s)
    assert s["guidance"] == 3.0 and pipe["chunking"] is None and s["shift"] == 1.0
    model, step = DiTRecipe.load_ema(tmp_path / "split")
    dit = SpaceTimeDiT.from_pretrained(out / pipe["dit"])
    encoder = ShapesTextEncoder.from_pretrained(out / pipe["text_encoder"])
    captions = ["a red circle moving left", ""]
    emb, mask = encoder.encode(captions)
    ref_emb, ref_mask = model.text_encoder.encode(captions)
    assert torch.equal(emb, ref_emb) and torch.equal(mask, ref_mask)
    x, t = torch.randn(2, 4, 2, 2, 2), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        assert torch.equal(dit(x, t, emb, mask), model(x, t, captions))
    assert weights_sha256(out / "vae") == weights_sha256(vae_dir)
    CausalVAE.from_pretrained(out / pipe["vae"])
    from mdiff.video.pipeline.video_pipeline import VideoPipeline  # the folder's consumer

    loaded = VideoPipeline.from_pretrained(out)
    assert loaded.settings.guidance == 3.0 and loaded.settings.num_frames == 5
    assert weights_sha256(loaded.dit) == weights_sha256(dit)
    saved = json.loads((out / "training_log.json").read_text())
    assert saved["step"] == step == log["step"] == 4 and len(saved["losses"]) == 4
    assert {"heldout_fm", "heldout_fm_uncond"} <= set(saved["heldout"])


def test_export_ships_a_decoder_finetune_and_refuses_another_latent_space(vae_dir, tmp_path):
    run = tmp_path / "run"
    _train(run, vae_dir, 1)
    vae = CausalVAE.from_pretrained(vae_dir)
    with torch.no_grad():
        next(vae.decoder.parameters()).add_(0.1)  # a decoder fine-tune: same latent space
    vae.save_pretrained(tmp_path / "ft")
    log = DiTRecipe.export(run, tmp_path / "pipe", DiTExport(export_vae=tmp_path / "ft"))
    assert weights_sha256(tmp_path / "pipe" / "vae") == weights_sha256(tmp_path / "ft")
    assert weights_sha256(tmp_path / "ft") != weights_sha256(vae_dir)
    assert log["exported_vae"] == str(tmp_path / "ft")
    with torch.no_grad():
        next(vae.encoder.parameters()).add_(0.1)  # another encoder: other latents
    vae.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="another latent space"):
        DiTRecipe.export(run, tmp_path / "pipe2", DiTExport(export_vae=tmp_path / "other"))
    assert not (tmp_path / "pipe2").exists()


def test_export_references_a_builtin_vae_by_name_and_hash(vae_dir, tmp_path, monkeypatch):
    from mdiff import hub
    from mdiff.video.pipeline.video_pipeline import VideoPipeline

    run, builtins = tmp_path / "run", tmp_path / "checkpoints"
    _train(run, vae_dir, 1)
    CausalVAE.from_pretrained(vae_dir).save_pretrained(builtins / "tiny-builtin-vae")
    monkeypatch.setattr(hub, "_builtin_roots", lambda: [builtins])
    DiTRecipe.export(run, tmp_path / "pipe", DiTExport(export_vae="tiny-builtin-vae"))
    entry = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())["components"]["vae"]
    assert entry["builtin"] == "tiny-builtin-vae" and entry["sha256"] == weights_sha256(vae_dir)
    assert json.loads((tmp_path / "pipe" / "pipeline.json").read_text())["vae"] == entry["builtin"]
    assert not (tmp_path / "pipe" / "vae").exists()  # not copied
    pipe = VideoPipeline.from_pretrained(tmp_path / "pipe")
    assert weights_sha256(pipe.vae) == weights_sha256(vae_dir)

    other = CausalVAE.from_pretrained(vae_dir)
    with torch.no_grad():
        next(other.decoder.parameters()).add_(0.1)
    other.save_pretrained(builtins / "tiny-builtin-vae")  # the built-in changed since export
    with pytest.raises(CheckpointError, match="other weights"):
        VideoPipeline.from_pretrained(tmp_path / "pipe")
    monkeypatch.setattr(hub, "_builtin_roots", lambda: [])
    with pytest.raises(CheckpointError, match="not a built-in"):
        VideoPipeline.from_pretrained(tmp_path / "pipe")


def test_cli_trains_exports_and_refuses_overwrite(vae_dir, tmp_path, capsys):
    out, pipe = tmp_path / "run", tmp_path / "pipe"
    argv = ["--threads", "1", "train", "dit", "--out", str(out), "--vae", str(vae_dir),
            "--preset", "test", "--size", "16", "--frames", "17", "--clips", "4",
            "--batch-size", "2", "--no-progress", "--eval-every", "0"]  # fmt: skip
    export = ["--export", str(pipe), "--guidance", "6.5", "--sink-position", "adjacent"]
    assert main([*argv, "--steps", "2", *export]) == 0
    assert "held-out flow-matching loss" in capsys.readouterr().out
    pipe_json = json.loads((pipe / "pipeline.json").read_text())
    assert pipe_json["settings"]["num_frames"] == 17 and pipe_json["settings"]["height"] == 16
    assert pipe_json["settings"]["guidance"] == 6.5
    config = SpaceTimeDiT.from_pretrained(pipe / "dit").config
    assert config.in_channels == 4 and config.sink_position == "adjacent"
    assert json.loads((pipe / "training_log.json").read_text())["dit_config"]["sink_position"] == (
        "adjacent"
    )
    assert json.loads((out / "run.json").read_text())["dit_config"]["sink_position"] == "absolute"
    other = tmp_path / "pipe9"
    export = ["--export-only", "--export", str(other), "--export-frames"]
    assert main([*argv, *export, "10"]) == EXIT_ERROR
    assert not other.exists()  # 10 is not 1 + 4k
    assert main([*argv, "--export-only", "--export", str(other), "--export-frames", "9"]) == 0
    assert json.loads((other / "pipeline.json").read_text())["settings"]["num_frames"] == 9
    assert main([*argv, "--steps", "3"]) == EXIT_ERROR  # the run exists: --resume or another --out
    assert main([*argv, "--export-only"]) == EXIT_ERROR  # needs --export DIR
    for bad in (["--first-chunk-weight", "0"], ["--size", "12"], ["--caption-dropout", "2"]):
        other = tmp_path / "bad"
        assert main([*argv, "--out", str(other), "--steps", "1", *bad]) == EXIT_ERROR
        assert not other.exists()  # checked before anything is written


def test_cooldown_on_resume_is_recorded_and_decays_the_lr(vae_dir, tmp_path):
    out = tmp_path / "run"
    _train(out, vae_dir, 2, warmup_steps=0)
    _train(out, vae_dir, 4, resume=True, cooldown=2)
    assert json.loads((out / "run.json").read_text())["train"]["decay"] == [2, 4]
    lrs = [r["lr"] for r in read_metrics(out) if r["kind"] == "train"]
    assert lrs == pytest.approx([3e-4, 3e-4, 3e-4, 1.5e-4])  # the 4th step is half-way down


def test_init_from_starts_a_fine_tune_from_a_pipeline_and_checks_it_fits(
    vae_dir, tmp_path, monkeypatch
):
    from mdiff.video.dit import model as dit
    from mdiff.video.pipeline.video_pipeline import VideoPipeline

    _train(tmp_path / "parent", vae_dir, 2)
    # the sink position is not a weight: a fine-tune may keep its preset's
    DiTRecipe.export(tmp_path / "parent", tmp_path / "pipe", DiTExport(sink_position="adjacent"))
    child = tmp_path / "child"
    _train(child, vae_dir, 1, lr=0.0, init_from=tmp_path / "pipe")  # lr 0: weights unchanged

    pipe = VideoPipeline.from_pretrained(tmp_path / "pipe")
    start, _ = DiTRecipe.load_ema(child)
    assert weights_sha256(start.dit) == weights_sha256(pipe.dit)
    assert weights_sha256(start.text_encoder) == weights_sha256(pipe.text_encoder)
    _train(tmp_path / "fresh", vae_dir, 1, lr=0.0)  # the same run without --init-from
    assert weights_sha256(DiTRecipe.load_ema(tmp_path / "fresh")[0].dit) != weights_sha256(pipe.dit)
    _train(tmp_path / "parent", vae_dir, 3, resume=True)  # the name now holds other weights:
    DiTRecipe.export(tmp_path / "parent", tmp_path / "pipe")  # the child keeps its start's log
    log = DiTRecipe.export(child, tmp_path / "child-pipe")
    assert log["init_log"]["step"] == 2 and log["train"]["init_from"] == str(tmp_path / "pipe")

    monkeypatch.setitem(dit.PRESETS, "test-deeper", {**dit.PRESETS["test"], "depth": 3})
    with pytest.raises(CheckpointError, match=r"DiT differs from the run's .* \['depth'\]"):
        DiTRecipe(preset="test-deeper", vae=vae_dir, steps=1, batch_size=2, size=16, frames=5,
                  clips=6, heldout_clips=2, progress=False,
                  init_from=tmp_path / "pipe").train(tmp_path / "deeper")  # fmt: skip
    other = CausalVAE.from_pretrained(vae_dir)
    with torch.no_grad():
        next(other.encoder.parameters()).add_(0.1)
    other.save_pretrained(tmp_path / "other-vae")
    with pytest.raises(CheckpointError, match="another VAE encoder"):
        DiTRecipe(preset="test", vae=tmp_path / "other-vae", steps=1, batch_size=2, size=16,
                  frames=5, clips=6, heldout_clips=2, progress=False,
                  init_from=tmp_path / "pipe").train(tmp_path / "other")  # fmt: skip


def test_freeze_dit_trains_the_text_encoder_alone_and_needs_an_init(vae_dir, tmp_path):
    _train(tmp_path / "parent", vae_dir, 2)
    DiTRecipe.export(tmp_path / "parent", tmp_path / "pipe")
    pipe = tmp_path / "pipe"
    _train(tmp_path / "frozen", vae_dir, 3, init_from=pipe, freeze_dit=True, free_form=0.5)
    _train(tmp_path / "joint", vae_dir, 3, init_from=pipe)
    start, _ = DiTRecipe.load_ema(tmp_path / "parent")
    frozen, joint = (DiTRecipe.load_ema(tmp_path / n)[0] for n in ("frozen", "joint"))
    model, _ = _weights(tmp_path / "frozen", 2)  # the raw weights too, not only their EMA
    dit_keys = [k for k in model if k.startswith("dit.")]
    assert dit_keys and all(torch.equal(model[k], start.state_dict()[k]) for k in dit_keys)
    assert weights_sha256(frozen.dit) == weights_sha256(start.dit)
    assert weights_sha256(joint.dit) != weights_sha256(start.dit)  # the joint run moves it
    assert weights_sha256(frozen.text_encoder) != weights_sha256(start.text_encoder)
    assert json.loads((tmp_path / "frozen" / "run.json").read_text())["train"]["freeze_dit"]
    with pytest.raises(InvalidInputError, match="needs init_from"):
        _train(tmp_path / "no-init", vae_dir, 1, freeze_dit=True)


def test_distill_regresses_the_teachers_velocity_on_the_template_caption():
    model = _tiny_model()
    x1 = torch.randn(3, 4, 2, 4, 4)
    template = "a red circle moving left on a black background"
    batch = {"latents": x1, "captions": ["red ball heading left"] * 3, "templates": [template] * 3}
    objective = DiTObjective(caption_dropout=0.0, distill=True)
    with pytest.raises(InvalidInputError, match="teacher"):
        objective(model, batch, torch.Generator().manual_seed(0))
    objective.teacher = model.text_encoder  # a student equal to its teacher, on the template:
    same = {**batch, "captions": [template] * 3}
    loss, _ = objective(model, same, torch.Generator().manual_seed(0))
    assert torch.equal(loss, torch.zeros(3))  # its own velocity is the target: exactly 0
    loss, _ = objective(model, batch, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)  # the same draws, by hand
    torch.rand(3, generator=gen)  # caption dropout
    t = objective.sample_t(3, 2, gen)
    x0 = torch.randn(x1.shape, generator=gen)
    x_t = t.view(-1, 1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1, 1)) * x0
    with torch.no_grad():
        text, mask = model.text_encoder.encode([template] * 3)
        want = model.dit(x_t, t, text, mask)
        v = model(x_t, t, batch["captions"])
    assert torch.allclose(loss, (v - want).square().mean((1, 2, 3, 4)), atol=1e-6)
    plain, _ = DiTObjective(caption_dropout=0.0)(model, batch, torch.Generator().manual_seed(0))
    assert not torch.allclose(plain, loss)  # not the flow-matching target


def test_distill_needs_a_frozen_dit(vae_dir, tmp_path):
    with pytest.raises(InvalidInputError, match="needs freeze_dit"):
        _train(tmp_path / "r", vae_dir, 1, init_from="shapes-t2v", distill=True)
