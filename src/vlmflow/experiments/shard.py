"""The assignment of work items to ranks (data parallel runs)."""

from __future__ import annotations

from dataclasses import dataclass

from vlmflow.errors import VlmflowError


@dataclass(frozen=True)
class Shard:
    """This process's share of the work: item i belongs to rank i % world_size.

    Round-robin over the experiment's item order keeps ranks within one item of each other and
    keeps every setting of an item on one rank (so per-item caches stay local). It needs no
    communication: every rank lists the same items and picks its own.
    """

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise VlmflowError(
                f"rank {self.rank} is outside world size {self.world_size}: "
                "use 0 <= rank < world size"
            )

    def owns(self, item_index: int) -> bool:
        return item_index % self.world_size == self.rank
