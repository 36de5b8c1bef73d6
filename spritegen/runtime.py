"""Device choice, thread count, determinism and seeding: the only places that touch process-wide state."""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch

from spritegen.errors import UserError


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu (never mps: it lacks the float64 our noise tables use,
    so auto must not pick a device that then fails). An explicit device that is not there is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("mps"):
        raise UserError(f"device {requested!r}: mps is not supported (the noise schedule and samplers use float64); use cpu or cuda")
    try:
        device = torch.device(requested)
    except RuntimeError as e:
        raise UserError(f"device {requested!r} is not a device name ({e}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {requested!r} requested but CUDA is not available (torch {torch.__version__}); use cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {requested!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {requested!r}: only cpu and cuda are supported")
    return device


def configure(threads: int, deterministic: bool = True, tf32: bool = False) -> dict:
    """Pin the CPU thread count and choose deterministic algorithms and TF32, before any tensor work.

    Reductions split across a different number of threads sum in another order, so the thread count is
    part of what makes two runs equal. cuBLAS needs a fixed workspace for deterministic results, which
    must be set before its first call. Returns what was set, to be recorded beside the outputs."""
    torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: an op without a deterministic CUDA kernel (a few backward passes) warns instead of failing
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return {"threads": threads, "deterministic": deterministic, "tf32": tf32}


def deterministic_cpu(threads: int | None = None) -> None:
    """Same commit, same numbers on the CPU: deterministic algorithms and a fixed thread count."""
    n = threads or int(os.environ.get("SPRITEGEN_THREADS", "0")) or torch.get_num_threads()
    configure(n, deterministic=True)


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and labels (stage, epoch, rank...), the same in every process and
    on every machine (Python's ``hash`` of a string is salted per process, so it is not used)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (for library code that uses the global RNGs, e.g. dropout) and
    return a CPU ``torch.Generator`` that our own code passes around explicitly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
