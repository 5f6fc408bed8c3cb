"""A resumable, rank-sharded, infinite index stream for map-style datasets.

Epoch `e` visits `randperm(len(dataset))` drawn from a generator seeded with `(seed, e)`,
trimmed to a multiple of the world size; rank `r` takes every `world_size`-th index starting at
`r`, so all ranks see the same number of samples and no sample twice within an epoch. The
state is `(epoch, position)`: how many of this rank's indices of the epoch were consumed.

The trainer advances the state by the samples it actually consumed (not by what a
`DataLoader` prefetched), so a saved state resumes exactly where training stopped.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from mdiff.errors import InvalidInputError


class ShardedSampler(Sampler[int]):
    """Infinite stream of dataset indices for one rank, starting at `(epoch, position)`."""

    def __init__(
        self, size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ):
        if size < world_size:
            raise InvalidInputError(f"dataset of {size} samples is smaller than {world_size} ranks")
        if not 0 <= rank < world_size:
            raise InvalidInputError(f"rank {rank} outside world size {world_size}")
        self.size, self.rank, self.world_size = size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position = 0, 0

    @property
    def per_rank(self) -> int:
        """Indices this rank gets per epoch."""
        return self.size // self.world_size

    def indices(self, epoch: int) -> list[int]:
        """This rank's indices for `epoch`, in order."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        order = order[: self.per_rank * self.world_size]
        return order[self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, position = self.epoch, self.position  # a snapshot: iteration never moves the state
        while True:
            yield from self.indices(epoch)[position:]
            epoch, position = epoch + 1, 0

    def advance(self, n: int) -> None:
        """Record that `n` more indices of the stream were consumed."""
        total = self.epoch * self.per_rank + self.position + n
        self.epoch, self.position = divmod(total, self.per_rank)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
