"""Training: an accelerate-based loop with EMA and bit-exact, pickle-free resume."""

from mdiff.train.data import ShardedSampler
from mdiff.train.ema import EMA, ema_decay
from mdiff.train.trainer import FitResult, TrainConfig, Trainer, lr_at

__all__ = ["EMA", "FitResult", "ShardedSampler", "TrainConfig", "Trainer", "ema_decay", "lr_at"]
