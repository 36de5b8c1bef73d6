"""Device choice and seeding: the only places that touch process-wide state."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu. An explicit device that is not available is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (for library code that uses the global RNGs, e.g. dropout) and
    return a CPU ``torch.Generator`` that our own code passes around explicitly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def deterministic_cpu(threads: int | None = None) -> None:
    """Same commit, same numbers on the CPU: deterministic algorithms and a fixed thread count
    (reductions split differently across threads can change the last bits)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    n = threads or int(os.environ.get("SPRITEGEN_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(n)
