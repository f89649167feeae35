"""Work split over the ranks of PyTorch's own launcher (`torchrun --nproc_per_node=N -m scoresde ...`).

Evaluation (`sample`, `likelihood`) is cut into fixed blocks of the batch size; block `b` is solved by rank
`b mod N` with a generator seeded from `(seed, b)` alone, and rank 0 gathers the blocks in order. So the result
depends on the seed and the block size, never on the number of processes: one process computes the very same
blocks one after another. Each rank's solves run on its own blocks (an adaptive solver sees only its own
shard); the one collective is the gather at the end.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence

import torch

__all__ = ["Ranks", "block_generator", "blocks"]


def block_generator(seed: int, block: int, device: torch.device | str) -> torch.Generator:
    """The generator of block `block`: block 0 is seeded with `seed` itself (a one-block run is unchanged by
    blocking), block `b > 0` with a 63-bit mix of `(seed, b)`."""
    g = torch.Generator(device=device)
    if block == 0:
        return g.manual_seed(seed)
    h = (seed * 0x9E3779B97F4A7C15 + block * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    h ^= h >> 31
    h = (h * 0x94D049BB133111EB) & (2**64 - 1)
    return g.manual_seed((h ^ (h >> 29)) & (2**63 - 1))


def blocks(n: int, size: int) -> List[slice]:
    """`[0, n)` cut into consecutive blocks of `size` (the last may be shorter)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class Ranks:
    """This process's place among torchrun's ranks (`WORLD_SIZE`, `RANK` from the environment): one process
    when not launched by torchrun. Initialises the process group (gloo on CPU, NCCL on CUDA) if needed and
    tears down only what it set up."""

    def __init__(self, device: Optional[torch.device] = None):
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self._owns = False
        if self.world > 1 and not dist.is_initialized():
            use_nccl = device is not None and torch.device(device).type == "cuda"
            dist.init_process_group("nccl" if use_nccl else "gloo")
            self._owns = True
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        if dist.is_initialized():
            self.world = dist.get_world_size()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, n_blocks: int) -> List[int]:
        """The blocks this rank solves: `b ≡ rank (mod world)`."""
        return list(range(self.rank, n_blocks, self.world))

    def gather(self, mine: Sequence[Any], n_blocks: int) -> Optional[List[Any]]:
        """All ranks' per-block results in block order on rank 0 (None elsewhere); `mine[j]` is block
        `self.mine(n_blocks)[j]`. Results travel as pickled CPU objects (gloo and NCCL alike)."""
        if self.world == 1:
            return list(mine)
        import torch.distributed as dist

        parts: List[Any] = [None] * self.world if self.is_main else None  # type: ignore[assignment]
        dist.gather_object(list(mine), parts, dst=0)
        if not self.is_main:
            return None
        out: List[Any] = [None] * n_blocks
        for r, part in enumerate(parts):
            for j, value in enumerate(part):
                out[r + j * self.world] = value
        return out

    def close(self) -> None:
        if self._owns:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owns = False

    def __enter__(self) -> "Ranks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
