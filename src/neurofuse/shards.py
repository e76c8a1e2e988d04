"""Which part of a cohort this process runs: `--num-shards N --shard-index K`, or the launcher's variables.

Shard K of N takes the items at positions K, K + N, K + 2N, ... of the sorted item list, so the shards
are disjoint, their union is the whole list and their sizes differ by one at most. Without the flags,
the environment decides: a SLURM job array (`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_COUNT`; a
`--array` not starting at 0 is shifted by `SLURM_ARRAY_TASK_MIN`), else torchrun
(`RANK`, `WORLD_SIZE`); neither means one shard.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from neurofuse.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def take(self, items: Sequence[T]) -> list[T]:
        """This shard's items (every `count`-th from `index`)."""
        return list(items[self.index :: self.count])

    @property
    def label(self) -> str:
        return f"shard {self.index + 1}/{self.count}" if self.count > 1 else ""


def _int(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {key}={value!r} is not an integer") from None


def resolve_shard(num_shards: int | None = None, shard_index: int | None = None,
                  env: Mapping[str, str] | None = None) -> Shard:
    """The shard from the flags (both or neither), else from SLURM array / torchrun variables."""
    env = os.environ if env is None else env
    if (num_shards is None) != (shard_index is None):
        raise UsageError("give --num-shards N and --shard-index K together")
    source = "--num-shards/--shard-index"
    if num_shards is None:
        task, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
        if task is not None and count is not None:
            num_shards, shard_index = count, task - (_int(env, "SLURM_ARRAY_TASK_MIN") or 0)
            source = "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"
        elif _int(env, "WORLD_SIZE") is not None and _int(env, "RANK") is not None:
            num_shards, shard_index = _int(env, "WORLD_SIZE"), _int(env, "RANK")
            source = "RANK/WORLD_SIZE"
        else:
            return Shard()
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UsageError(f"{source}: shard index {shard_index} of {num_shards} shards; need 0 <= K < N")
    return Shard(shard_index, num_shards)
