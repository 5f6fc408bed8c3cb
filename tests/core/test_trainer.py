"""The accelerate trainer: exact resume, EMA, LR schedule, clipping, DDP, bf16."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import debug_launcher
from accelerate.state import AcceleratorState
from torch import nn
from torch.utils.data import Dataset

from mdiff.errors import CheckpointError, InvalidInputError
from mdiff.train import EMA, ShardedSampler, TrainConfig, Trainer, ema_decay, lr_at
from mdiff.train.checkpoint import decode_tree, encode_tree
from mdiff.train.config import cooldown

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps a process-wide singleton; each test builds its own Accelerator."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


class Points(Dataset):
    """Procedural 2-D data: sample i is a deterministic function of i."""

    def __init__(self, n: int = 40):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(i)
        return torch.randn(2, generator=g) * 0.3 + torch.tensor([2.0, -1.0])


class Velocity(nn.Module):
    def __init__(self, width: int = 32, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, 2)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], dim=1))


def flow_matching(model, x1, generator):
    """CondOT flow matching; noise and t come from the trainer's generator."""
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
    t = torch.rand(x1.shape[0], generator=generator, device=x1.device)
    x_t = t[:, None] * x1 + (1 - t[:, None]) * x0
    loss = (model(x_t, t) - (x1 - x0)).pow(2).mean(dim=1)  # per sample [B]
    return loss, {"t_mean": t.mean().item()}


def _config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        steps=7,
        batch_size=4,
        grad_accum=2,
        lr=3e-2,
        lr_schedule="cosine",
        warmup_steps=2,
        weight_decay=0.1,
        clip_grad_norm=0.5,
        ema_max_decay=0.9,
        save_every=3,
        log_every=2,
        out_dir=str(tmp_path),
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def _trainer(config: TrainConfig, objective=flow_matching, init_seed: int = 0) -> Trainer:
    torch.manual_seed(init_seed)
    return Trainer(Velocity(), objective, Points(), config)


class Killed(Exception):
    pass


def _killed_after(calls: int):
    count = 0

    def objective(model, batch, generator):
        nonlocal count
        count += 1
        if count > calls:
            raise Killed
        return flow_matching(model, batch, generator)

    return objective


def _assert_same_state(a: Trainer, b: Trainer) -> None:
    assert a.step == b.step
    for (name, p), q in zip(
        a.unwrapped_model.named_parameters(), b.unwrapped_model.parameters(), strict=True
    ):
        assert torch.equal(p, q), name
    for name, s in a.ema.shadow.items():
        assert torch.equal(s, b.ema.shadow[name]), f"ema {name}"
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for pid, state in sa["state"].items():
        for key, value in state.items():
            assert torch.equal(value, sb["state"][pid][key]), f"optimizer {pid}.{key}"
    assert a.sampler.state_dict() == b.sampler.state_dict()
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_kill_and_resume_is_bit_identical(tmp_path, monkeypatch):
    full = _trainer(_config(tmp_path / "full"))
    full_result = full.fit()
    full_rng = torch.get_rng_state()

    # the same run, killed in the middle of step 5 (2 micro-batches per step) ...
    killed = _trainer(_config(tmp_path / "run"), _killed_after(4 * 2 + 1))
    with pytest.raises(Killed):
        killed.fit()
    ckpt = tmp_path / "run" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000003"
    files = {p.suffix for p in (ckpt / "step_00000003").iterdir()}
    assert files == {".json", ".safetensors"}  # no pickle anywhere

    # ... and resumed by a fresh process: new model (other init), optimizer and trainer
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, lambda *a, **k: pytest.fail("unpickling"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load"))
    torch.manual_seed(1234)  # a restarted process has some other global RNG state
    resumed = _trainer(_config(tmp_path / "run"), init_seed=99)
    assert resumed.resume("latest") == 3
    result = resumed.fit()

    _assert_same_state(full, resumed)
    assert torch.equal(torch.get_rng_state(), full_rng)  # dropout draws lined up too
    assert result.history == full_result.history[3:]
    assert result.step == 7 and result.loss == full_result.loss
    assert (ckpt / "latest").read_text().strip() == "step_00000007"


def test_metrics_pruning_and_ema_evaluation_leave_the_run_unchanged(tmp_path):
    from mdiff.train.metrics import read_metrics

    plain = _trainer(_config(tmp_path / "plain"))
    plain.fit()
    holder, checks = {}, []

    def evaluate(model):
        trainer = holder["trainer"]
        given = [p.detach() for p in model.parameters()]
        ema = [trainer.ema.shadow[n] for n, _ in trainer.unwrapped_model.named_parameters()]
        raw = [p.detach() for p in trainer.unwrapped_model.parameters()]
        checks.append(
            all(torch.equal(g, e.to(g.dtype)) for g, e in zip(given, ema, strict=True))
            and not all(torch.equal(g, r) for g, r in zip(given, raw, strict=True))
        )
        torch.rand(3)  # an evaluation that draws random numbers must not shift training
        return {"param_sum": float(sum(g.sum() for g in given))}

    cfg = _config(tmp_path / "run", eval_every=3, save_every=2, keep_last=1, keep_every=4)
    torch.manual_seed(0)
    holder["trainer"] = run = Trainer(Velocity(), flow_matching, Points(), cfg, evaluate=evaluate)
    run.fit()
    assert checks == [True, True]  # evaluated the EMA weights, at steps 3 and 6
    _assert_same_state(plain, run)  # evaluation and pruning change nothing in the run
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2, 4, 6, 7]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [3, 6]
    assert {"loss", "lr", "grad_norm", "t_mean", "steps_per_s"} <= set(rows[0])
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert kept == ["step_00000004", "step_00000007"]  # the newest, and a multiple of 4


def test_resume_rejects_missing_checkpoint(tmp_path):
    trainer = _trainer(_config(tmp_path))
    with pytest.raises(CheckpointError, match="no latest checkpoint"):
        trainer.resume("latest")
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        trainer.resume(tmp_path / "nowhere")


def test_tree_codec_round_trip():
    tree = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 2)}, 1: {}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.95), "params": [0, 1], "foreach": None}],
    }
    skeleton, tensors = encode_tree(tree, "opt")
    assert set(tensors) == {"opt.state.0.step", "opt.state.0.exp_avg"}
    back = decode_tree(skeleton, tensors)
    assert back["param_groups"] == tree["param_groups"]  # the tuple stays a tuple
    assert list(back["state"]) == [0, 1]  # int keys stay ints
    with pytest.raises(CheckpointError, match="without pickle"):
        encode_tree({"x": object()})


def test_sampler_shards_and_resumes():
    ranks = [ShardedSampler(10, rank=r, world_size=3, seed=7) for r in range(3)]
    epoch0 = [s.indices(0) for s in ranks]
    assert sorted(sum(epoch0, [])) == sorted(set(sum(epoch0, [])))  # disjoint
    assert all(len(e) == 3 for e in epoch0)
    assert ranks[0].indices(0) != ranks[0].indices(1)  # reshuffled per epoch
    stream = iter(ranks[1])
    first = [next(stream) for _ in range(8)]
    other = ShardedSampler(10, rank=1, world_size=3, seed=7)
    other.advance(5)
    assert other.state_dict() == {"epoch": 1, "position": 2}
    resumed = iter(other)
    assert [next(resumed) for _ in range(3)] == first[5:8]


def test_ema_warmup_decay_and_update():
    for step in (0, 1, 10, 1000, 10**6):
        expected = min(0.999, 1 - (1 + step / 2.0) ** -0.75)
        assert ema_decay(step, 0.999, 2.0, 0.75) == pytest.approx(expected, rel=1e-12)
    assert ema_decay(0, 0.999) == 0.0 and ema_decay(10**9, 0.999) == 0.999

    model = nn.Linear(3, 2).to(torch.bfloat16)
    ema = EMA(model, max_decay=0.999, warmup_gamma=2.0, warmup_power=0.75)
    assert all(s.dtype == torch.float32 for s in ema.shadow.values())
    with torch.no_grad():
        model.weight.add_(1.0)
    assert ema.update(model, 0) == 0.0
    assert torch.equal(ema.shadow["weight"], model.weight.float())  # decay 0: a copy
    old = ema.shadow["weight"].clone()
    with torch.no_grad():
        model.weight.mul_(-2.0)
    d = ema.update(model, 10)
    assert d == ema_decay(10, 0.999, 2.0, 0.75)
    want = old + (1 - d) * (model.weight.float() - old)
    torch.testing.assert_close(ema.shadow["weight"], want, rtol=1e-6, atol=1e-6)
    target = nn.Linear(3, 2)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.shadow["weight"])


def test_lr_schedules():
    def cfg(kind, **kw):
        return TrainConfig(steps=110, lr=1.0, lr_schedule=kind, warmup_steps=10, **kw)

    warm = [lr_at(s, cfg("constant")) for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_at(50, cfg("constant")) == 1.0
    assert lr_at(10, cfg("cosine")) == 1.0
    assert lr_at(60, cfg("cosine")) == pytest.approx(0.5)
    assert lr_at(110, cfg("cosine", min_lr_ratio=0.1)) == pytest.approx(0.1)
    assert lr_at(35, cfg("linear")) == pytest.approx(0.75)
    assert lr_at(110, cfg("linear")) == pytest.approx(0.0)
    wsd = cfg("wsd", decay_start=70, decay_end=90)
    assert [lr_at(s, wsd) for s in (69, 70, 80, 90, 100)] == pytest.approx([1, 1, 0.5, 0, 0])
    with pytest.raises(InvalidInputError):
        TrainConfig(lr_schedule="step")
    with pytest.raises(InvalidInputError, match="decay_start"):
        TrainConfig(lr_schedule="wsd")


def test_cooldown_is_recorded_and_kept_by_later_resumes():
    train = {"lr": 1e-3}
    assert cooldown(train, 1000, None) == {}
    fields = cooldown(train, 1000, 200)
    assert train["decay"] == [800, 1000]
    config = TrainConfig(steps=1000, lr=1.0, **fields)
    assert lr_at(799, config) == 1.0 and lr_at(900, config) == pytest.approx(0.5)
    later = TrainConfig(steps=5000, lr=1.0, **cooldown(train, 5000, None))  # a later leg
    assert lr_at(1000, later) == 0.0 and lr_at(4000, later) == 0.0
    with pytest.raises(InvalidInputError, match="cooldown"):
        cooldown(train, 100, 200)


def test_lr_is_set_per_optimizer_step(tmp_path):
    trainer = _trainer(_config(tmp_path, steps=3, save_every=0, lr_schedule="linear"))
    trainer.fit()
    # the last step (index 2) ran with lr_at(2) and nothing stepped it further
    assert trainer.optimizer.param_groups[0]["lr"] == lr_at(2, trainer.config)


def test_clipping_bounds_the_gradient_norm(tmp_path):
    trainer = _trainer(_config(tmp_path, steps=2, clip_grad_norm=1e-3, save_every=0))
    result = trainer.fit()
    grads = [p.grad for p in trainer.unwrapped_model.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert result.logs["grad_norm"] > 0.1  # the raw norm was far above the bound ...
    assert norm <= 1e-3 * (1 + 1e-4)  # ... and what the optimizer saw was clipped


def test_expected_processes_is_checked(tmp_path):
    with pytest.raises(InvalidInputError, match="expected 2 processes"):
        _trainer(_config(tmp_path, expected_processes=2))


def test_bf16_mixed_precision_learns(tmp_path):
    seen = []

    def regression(model, x1, generator):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        t = torch.zeros(x1.shape[0])
        return (model(x1, t) - (2 * x1 + 1)).pow(2).mean(dim=1), {}

    config = _config(
        tmp_path, steps=40, grad_accum=1, batch_size=8, lr=2e-2, lr_schedule="constant",
        warmup_steps=0, clip_grad_norm=None, mixed_precision="bf16", save_every=0, log_every=10,
    )  # fmt: skip
    torch.manual_seed(0)
    trainer = Trainer(Velocity(dropout=0.0), regression, Points(), config)
    losses = [loss for _, loss in trainer.fit().history]
    assert seen[0] == (True, torch.bfloat16)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.2 * sum(losses[:5]) / 5


@pytest.mark.parametrize("precision,native,warned", [("bf16", False, True), ("bf16", True, False),
                                                     ("no", False, False)])  # fmt: skip
def test_emulated_cpu_bf16_is_reported(tmp_path, monkeypatch, caplog, precision, native, warned):
    from mdiff.train import trainer as trainer_module

    assert isinstance(trainer_module.native_cpu_bf16(), bool)  # the real probe answers
    monkeypatch.setattr(trainer_module, "native_cpu_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="mdiff.train.trainer"):
        _trainer(_config(tmp_path, mixed_precision=precision))
    hits = [r for r in caplog.records if "bf16 is emulated on this CPU" in r.getMessage()]
    assert len(hits) == int(warned)
    if warned:
        assert "--mixed-precision no" in hits[0].getMessage()


def _ddp_worker(out_dir: str) -> None:
    AcceleratorState._reset_state(reset_partial_state=True)  # forked from a non-DDP parent
    trainer = _trainer(_config(Path(out_dir), steps=3, expected_processes=2, log_every=1))
    acc = trainer.accelerator
    assert acc.num_processes == 2
    assert isinstance(trainer.model, nn.parallel.DistributedDataParallel)
    result = trainer.fit()
    flat = torch.cat([p.detach().reshape(-1) for p in trainer.unwrapped_model.parameters()])
    everyone = acc.gather(flat[None])
    assert torch.equal(everyone[0], everyone[1]), "parameters diverged across ranks"
    shadows = acc.gather(torch.cat([s.reshape(-1) for s in trainer.ema.shadow.values()])[None])
    assert torch.equal(shadows[0], shadows[1]), "EMA diverged across ranks"
    losses = acc.gather(torch.tensor([[result.loss]]))
    assert losses[0, 0] == losses[1, 0]  # the logged loss is the mean over ranks
    seeds = acc.gather(torch.tensor([trainer.generator.initial_seed()]))
    assert seeds[0] != seeds[1]  # each rank draws its own noise


def _launch_ddp(out_dir: str) -> None:
    """Entry point of the fresh interpreter below."""
    debug_launcher(_ddp_worker, args=(out_dir,), num_processes=2)


@pytest.mark.distributed
def test_two_process_ddp_keeps_ranks_in_sync(tmp_path):
    # debug_launcher forks; a fork of a process whose OpenMP pool has already run (any earlier
    # test) can deadlock the children, so launch from a fresh interpreter, with a timeout that
    # turns a hang into a failure.
    code = f"from tests.core.test_trainer import _launch_ddp; _launch_ddp({str(tmp_path)!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ckpt = tmp_path / "checkpoints" / "step_00000003"
    assert {p.name for p in ckpt.glob("rng_rank*.json")} == {"rng_rank0.json", "rng_rank1.json"}
