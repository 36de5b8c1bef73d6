"""Where and how a training stage runs: threads, determinism, device, precision, data parallel.

    rt = start(cfg.train)                 # pins threads, deterministic algorithms, picks the device
    g = rt.generator("vae", epoch)        # a generator *on the device*, seeded from (seed, labels)
    with rt.autocast():                   # bf16 when train.precision says so
        ...
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from spritegen.runtime import configure, derive_seed
from spritegen.train import distributed
from spritegen.train.config import RunConfig


@dataclass(frozen=True)
class Runtime:
    cfg: RunConfig
    dist: distributed.Dist

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def main(self) -> bool:
        """Rank 0: the only process that prints, logs, validates and writes files."""
        return self.dist.main

    def generator(self, *labels: object) -> torch.Generator:
        """A fresh generator on the device for the draws labelled ``labels`` (e.g. ``("vae", epoch)``).

        Drawing on the device means no CPU->GPU copy per step. The same seed gives the same numbers on
        the same kind of device (CPU and CUDA streams differ). Seeding per epoch means a run resumed at
        an epoch boundary draws exactly what the uninterrupted run drew, with no RNG state to save."""
        return torch.Generator(self.device).manual_seed(derive_seed(self.cfg.seed, *labels))

    def seed_global(self, *labels: object, per_rank: bool = True) -> None:
        """Seed torch's global RNGs for the draws labelled ``labels``: dropout inside transformers/diffusers
        modules (each rank its own stream, so their masks differ as between samples of a batch), or with
        ``per_rank=False`` the initial weights of new components (the same on every rank)."""
        torch.manual_seed(derive_seed(self.cfg.seed, "global", *labels, self.dist.rank if per_rank else 0))

    def autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, module: torch.nn.Module, parts: list[torch.nn.Module] | None = None) -> torch.nn.Module:
        """Move a model to the device in the configured memory layout, compiled when asked. ``compile()``
        compiles in place, so state_dict keys (and checkpoints) are unchanged. It compiles ``forward``
        only: a model used through other methods (a VAE's encode/decode) names in ``parts`` the
        submodules those methods call, and they are compiled instead."""
        module.to(self.device)
        if self.cfg.channels_last:
            module.to(memory_format=torch.channels_last)
        if self.cfg.compile:
            for part in parts if parts is not None else [module]:
                part.compile()
        return module

    def settings(self) -> dict:
        """What this process actually ran with, recorded beside the outputs."""
        return {"device": self.device.type, "threads": torch.get_num_threads(), "deterministic": self.cfg.deterministic,
                "precision": self.cfg.precision, "world_size": self.dist.world}


def start(cfg: RunConfig) -> Runtime:
    """Pin threads and determinism, then pick the device and join the process group if launched several
    times. Call before building any model."""
    configure(cfg.threads, cfg.deterministic, cfg.tf32)
    return Runtime(cfg, distributed.setup(cfg.device))
