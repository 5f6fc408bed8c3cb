"""VAE training: the objective learns, the CLI resumes exactly, export loads, evaluate is sane."""

from __future__ import annotations

import json

import pytest
import torch

from mdiff.cli import EXIT_ERROR, main
from mdiff.errors import InvalidInputError
from mdiff.train.checkpoint import load_tree, prune_checkpoints
from mdiff.train.metrics import read_metrics
from mdiff.video.data import ShapesDataset
from mdiff.video.vae.model import CausalVAE
from mdiff.video.vae.train import (
    RandomCrops,
    VAEObjective,
    evaluate,
    param_count,
    shapes_vae_config,
)

TINY = ["--size", "16", "--frames", "5", "--base-dim", "4", "--z-dim", "4", "--batch-size", "2"]


class _Identity(CausalVAE):
    """Reconstructs its input exactly (for checking `evaluate`)."""

    def encode(self, x, **kw):
        return x

    def decode(self, z, **kw):
        return z


def test_preset_fits_the_package_budget():
    n = param_count(shapes_vae_config())
    assert 4 * n <= 30e6  # fp32 safetensors of the shipped preset


def test_objective_loss_decreases():
    torch.manual_seed(0)
    vae = CausalVAE(shapes_vae_config(base_dim=4, z_dim=4))
    data = ShapesDataset(4, num_frames=5, height=16, width=16)
    batch = {"pixels": torch.stack([data[i]["pixels"] for i in range(4)])}
    objective = VAEObjective()
    # lr 1e-2 overfits this batch unstably (the trajectory then depends on the thread count)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss, logs = objective(vae, batch, gen)
        assert loss.shape == (4,)
        assert set(logs) >= {"psnr", "kl", "recon", "sharp"}
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(float(loss.detach().mean()))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def _run(tmp_path, name, *extra):
    out = tmp_path / name
    argv = ["--threads", "1", "train", "vae", "--out", str(out), *TINY, "--no-progress"]
    assert main([*argv, "--save-every", "2", "--log-every", "1", *extra]) == 0
    return out


def _weights(out, step):
    directory = out / "checkpoints" / f"step_{step:08d}"
    return load_tree(directory, "model"), load_tree(directory, "ema")


def test_cli_resume_continues_exactly_and_export_loads(tmp_path):
    straight = _run(tmp_path, "straight", "--steps", "4", "--eval-every", "2")
    _run(tmp_path, "split", "--steps", "2", "--eval-every", "2")
    split = _run(tmp_path, "split", "--steps", "4", "--resume", "--eval-every", "2")
    for a, b in zip(_weights(straight, 4), _weights(split, 4), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    rows = read_metrics(split)
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2, 4]

    exported = tmp_path / "export"
    argv = ["--threads", "1", "train", "vae", "--out", str(split), "--export", str(exported)]
    assert main([*argv, "--export-only"]) == 0
    vae = CausalVAE.from_pretrained(exported)
    _, ema = _weights(split, 4)
    for name, p in vae.named_parameters():
        assert torch.equal(p, ema[name]), name
    assert vae.config.latents_mean != (0.0,) * 4  # measured statistics
    assert vae.config.trained_frames == 5  # the training clip length, which decoding reads
    log = json.loads((exported / "training_log.json").read_text())
    assert log["step"] == 4 and len(log["losses"]) == 4 and log["command"].startswith("mdiff")
    assert {"psnr_mean", "psnr_min", "ssim_mean", "flicker_recon"} <= set(log["heldout"])
    assert len(log["heldout"]["psnr_per_frame"]) == 17


def test_a_run_folder_of_the_earlier_layout_resumes_exactly(tmp_path):
    """run.json as `mdiff train vae` wrote it before the recipes (no train.warmup_steps; the
    warm-up was always 200) resumes bit-identically to a run that never stopped."""
    straight = _run(tmp_path, "straight", "--steps", "4", "--eval-every", "0")
    split = _run(tmp_path, "split", "--steps", "2", "--eval-every", "0")
    run = json.loads((split / "run.json").read_text())
    assert run["train"].pop("warmup_steps") == 200
    (split / "run.json").write_text(json.dumps(run, indent=2))
    _run(tmp_path, "split", "--steps", "4", "--eval-every", "0", "--resume")
    for a, b in zip(_weights(straight, 4), _weights(split, 4), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_new_run_refuses_to_overwrite(tmp_path):
    _run(tmp_path, "run", "--steps", "1", "--eval-every", "0")
    argv = ["--threads", "1", "train", "vae", "--out", str(tmp_path / "run"), *TINY]
    assert main([*argv, "--steps", "2"]) == EXIT_ERROR


def test_evaluate_identity_and_random():
    data = ShapesDataset(3, num_frames=5, height=16, width=16, seed=7)
    perfect = evaluate(_Identity(shapes_vae_config(base_dim=4, z_dim=4)), data, 3)
    assert perfect["psnr_mean"] == float("inf") and perfect["psnr_min"] == float("inf")
    assert perfect["ssim_mean"] == pytest.approx(1.0) and perfect["ssim_min"] == pytest.approx(1.0)
    assert perfect["flicker_excess"] == 0.0 and perfect["frames"] == 5
    torch.manual_seed(0)
    untrained = evaluate(CausalVAE(shapes_vae_config(base_dim=4, z_dim=4)), data, 3)
    assert 0 < untrained["psnr_min"] <= untrained["psnr_mean"] < 25
    assert -1 <= untrained["ssim_min"] <= untrained["ssim_mean"] < 0.9
    assert untrained["flicker_recon"] >= 0 and len(untrained["psnr_per_frame"]) == 5


def test_prune_keeps_latest_recent_and_milestones(tmp_path):
    for step in (1000, 5000, 5200, 5400, 5600, 5800):
        (tmp_path / f"step_{step:08d}").mkdir()
    (tmp_path / "latest").write_text("step_00001000\n")  # e.g. resumed from an older one
    prune_checkpoints(tmp_path, keep_last=2, keep_every=5000)
    left = sorted(p.name for p in tmp_path.glob("step_*"))
    assert left == ["step_00001000", "step_00005000", "step_00005600", "step_00005800"]


def test_focus_weights_the_objects_not_the_background():
    from mdiff.video.vae.train import _focus

    x = torch.full((2, 3, 1, 8, 8), -1.0)  # black background
    x[0, :, :, 2:4, 2:4] = 1.0  # a 2x2 white object in clip 0; clip 1 is background only
    w = _focus(x, 9.0)
    assert torch.allclose(w.flatten(1).mean(1), torch.ones(2))  # mean 1 per clip
    assert w[0, 0, 0, 2, 2] / w[0, 0, 0, 0, 0] == pytest.approx(10.0)
    assert torch.all(w[1] == 1.0)
    assert _focus(x, 0.0) == 1.0
    # the objective's recon term is the weighted mean: an error only on the object counts 10x
    y_err = torch.zeros_like(x)
    y_err[0, :, :, 2:4, 2:4] = 0.5
    plain = (y_err.abs()).flatten(1).mean(1)
    focused = (y_err.abs() * w).flatten(1).mean(1)
    assert focused[0] / plain[0] == pytest.approx(10 / (1 + 9 * 4 / 64))


def test_random_crops_are_deterministic_windows_of_the_clip():
    clips = ShapesDataset(8, num_frames=5, height=32, width=32, seed=3)
    crops = RandomCrops(clips, 16, seed=3)
    again = RandomCrops(clips, 16, seed=3)
    offsets = set()
    for i in range(len(clips)):
        full, window = clips[i]["pixels"], crops[i]["pixels"]
        assert window.shape == (3, 5, 16, 16)
        assert torch.equal(window, again[i]["pixels"])
        found = [
            (top, left)
            for top in range(17)
            for left in range(17)
            if torch.equal(full[..., top : top + 16, left : left + 16], window)
        ]
        assert found, i
        offsets.add(found[0])
    assert len(offsets) > 1  # the window moves between items
    for bad in (0, 12, 40):
        with pytest.raises(InvalidInputError):
            RandomCrops(clips, bad)[0]


def test_resume_may_switch_crops_lr_and_frames_and_records_them(tmp_path):
    run = _run(tmp_path, "run", "--steps", "2", "--eval-every", "0")
    _run(tmp_path, "run", "--steps", "4", "--resume", "--crop", "8", "--lr", "1e-3",
         "--frames", "9", "--eval-every", "0")  # fmt: skip
    settings = json.loads((run / "run.json").read_text())
    assert settings["train"]["crop"] == 8 and settings["train"]["lr"] == 1e-3
    assert settings["data"]["frames"] == 9
    lrs = {r["step"]: r["lr"] for r in read_metrics(run) if r["kind"] == "train"}
    assert list(lrs) == [1, 2, 3, 4]
    assert lrs[4] / lrs[2] == pytest.approx(1e-3 * 4 / (2e-4 * 2))  # linear warm-up, new peak


def test_decoder_finetune_keeps_the_encoder_and_its_latents(tmp_path):
    base = _run(tmp_path, "base", "--steps", "2", "--eval-every", "0")
    main(["--threads", "1", "train", "vae", "--out", str(base), "--export", str(tmp_path / "a"),
          "--export-only"])  # fmt: skip
    ft = _run(tmp_path, "ft", "--steps", "3", "--eval-every", "0", "--lr", "1e-2",
              "--init-from", str(tmp_path / "a"), "--freeze-encoder")  # fmt: skip
    ft = _run(tmp_path, "ft", "--steps", "4", "--eval-every", "0", "--resume", "--frames", "9")
    main(["--threads", "1", "train", "vae", "--out", str(ft), "--export", str(tmp_path / "b"),
          "--export-only"])  # fmt: skip
    a, b = CausalVAE.from_pretrained(tmp_path / "a"), CausalVAE.from_pretrained(tmp_path / "b")
    sa, sb = a.state_dict(), b.state_dict()
    frozen = [k for k in sa if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(sa[k], sb[k]) for k in frozen)
    assert not all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("decoder."))
    same = ("latents_mean", "latents_std")  # the same latent space, though other clip lengths
    assert all(getattr(a.config, k) == getattr(b.config, k) for k in same)  # give other stats
    log = json.loads((tmp_path / "b" / "training_log.json").read_text())
    assert log["init_log"]["step"] == 2  # the history of the VAE it started from
    settings = json.loads((ft / "run.json").read_text())
    assert settings["train"]["freeze_encoder"] and settings["train"]["init_from"].endswith("a")


def test_freeze_encoder_without_init_is_refused(tmp_path, capsys):
    argv = ["--threads", "1", "train", "vae", "--out", str(tmp_path / "x"), *TINY,
            "--freeze-encoder", "--steps", "1"]  # fmt: skip
    assert main(argv) != 0
    assert "init_from" in capsys.readouterr().err
