"""Data-parallel training under ``accelerate launch`` / ``torchrun``, without DDP wrappers.

    accelerate launch --num_processes 4 -m spritegen train ldm --stage unet
    torchrun --standalone --nproc_per_node 4 -m spritegen train ldm --stage unet

Both launchers start N copies of the same command and set ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them and joins the process group (``env://``).
Without them (a plain ``spritegen ...``) nothing here does anything: rank 0 of 1, no process group, no
collective, so a single process runs exactly the code it ran before.

Why no ``DistributedDataParallel``: the LDM loop's phases change which components train, and DDP would
need a new wrapper per phase (and complains about parameters that get no gradient). Instead every
rank holds the same weights, draws the same random numbers for the whole global batch, computes the
loss on its share of the batch, and the trainable gradients are summed over ranks (each weighted by
the rank's share) before clipping and the optimiser step - which is what DDP does, made explicit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from spritegen.errors import UserError


def env_rank() -> int:
    """This process's rank as the launcher set it (0 without a launcher); usable before :func:`setup`."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank, the number of processes, its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the only process that prints, logs, validates and writes files."""
        return self.rank == 0

    @property
    def share(self) -> slice:
        """This rank's part of anything indexed by the global batch: ``idx[rank::world]`` (all of it
        for a single process). Strided rather than contiguous so the shares differ by at most one."""
        return slice(self.rank, None, self.world)

    def reduce_mean(self, values: torch.Tensor, weight: float) -> torch.Tensor:
        """The global batch's value of per-rank batch means: sum over ranks of ``weight * values``,
        ``weight`` = this rank's fraction of the global batch. Every rank gets the same numbers, so a
        NaN on one rank is a NaN everywhere and the guards decide alike on every rank."""
        if not self.enabled:
            return values
        out = values.detach().float() * weight
        dist.all_reduce(out)
        return out

    def reduce_gradients(self, params, weight: float) -> None:
        """grad <- sum over ranks of ``weight * grad``: the gradient of the global batch's mean loss.
        One flattened all-reduce per call (the loop calls it once per parameter group). Parameters
        without a gradient are left alone (the same ones on every rank: every rank runs the same graph)."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]).mul_(weight)
        dist.all_reduce(flat)
        for g, new in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(new.view_as(g))

    def broadcast_float(self, x: float) -> float:
        """Rank 0's ``x`` on every rank."""
        if not self.enabled:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return float(t)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @torch.no_grad()
    def check_in_sync(self, modules) -> None:
        """Raise on every rank if the ranks' weights differ (a bug in the loop, caught before rank 0
        saves them). Compares one float64 sum per parameter tensor with rank 0's."""
        if not self.enabled:
            return
        sums = torch.stack([p.detach().double().sum() for m in modules for p in m.parameters()])
        ref = sums.clone()
        dist.broadcast(ref, 0)
        differ = (~((ref == sums) | (ref.isnan() & sums.isnan()))).any().to(torch.float64).reshape(1)
        dist.all_reduce(differ, op=dist.ReduceOp.MAX)
        if float(differ) > 0:
            raise RuntimeError(f"rank {self.rank}: the ranks' weights have drifted apart (a data-parallel bug)")


def setup(requested_device: str = "auto") -> Dist:
    """Rank, world size and device of this process; joins the process group when launched several
    times (``WORLD_SIZE`` > 1). cuda: ``cuda:LOCAL_RANK`` with NCCL; cpu: gloo. Idempotent."""
    from spritegen.runtime import pick_device

    device = pick_device(requested_device)
    world = env_world_size()
    if world <= 1:
        return Dist(0, 1, device)
    rank, local_rank = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)  # the launcher starts one process per GPU
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"several processes need cuda or cpu, not {device.type}: set train.device")
    if not dist.is_initialized():
        dist.init_process_group(backend)  # env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError(f"process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
                           f"RANK={rank} WORLD_SIZE={world}")
    return Dist(rank, world, device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
