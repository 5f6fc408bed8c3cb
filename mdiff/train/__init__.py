"""Training: an accelerate-based loop with EMA and bit-exact, pickle-free resume (`trainer`), and
the recipes over it (`recipe`, `run`): one run-folder skeleton for every model. The names load
on first use (`mdiff.lazy`): the `mdiff` command's parser imports no torch."""

from mdiff.lazy import lazy_package

lazy_package(
    __name__,
    {
        "EMA": "mdiff.train.ema:EMA",
        "ExportOptions": "mdiff.train.recipe:ExportOptions",
        "FitResult": "mdiff.train.trainer:FitResult",
        "Recipe": "mdiff.train.recipe:Recipe",
        "ShardedSampler": "mdiff.train.data:ShardedSampler",
        "TrainConfig": "mdiff.train.trainer:TrainConfig",
        "Trainer": "mdiff.train.trainer:Trainer",
        "ema_decay": "mdiff.train.ema:ema_decay",
        "lr_at": "mdiff.train.trainer:lr_at",
        "setting": "mdiff.train.recipe:setting",
    },
)

__all__ = [
    "EMA",
    "ExportOptions",
    "FitResult",
    "Recipe",
    "ShardedSampler",
    "TrainConfig",
    "Trainer",
    "ema_decay",
    "lr_at",
    "setting",
]
