"""What a stage that is compared bit for bit sets up, and the record of it kept beside its outputs.

    run = reproducible(cfg.threads)      # {"threads": 2, "deterministic": True}: write it with the outputs
    device = resolve_device(cfg.device, "evaluator.device")   # auto -> cuda when there is one, else cpu

Used by the evaluation stages (evaluator, reference, evaluate) and the sample sets. The process-wide
settings themselves are made by :func:`spritegen.runtime.deterministic_cpu`.
"""

from __future__ import annotations

import os

import torch

DEVICES = ("auto", "cpu", "cuda")


def reproducible(threads: int) -> dict:
    """Deterministic algorithms and a pinned CPU thread count, for torch and numpy's BLAS alike
    (``threads`` 0: leave torch's count as it is); returns ``{"threads", "deterministic"}`` as they now are, for the stage to record.

    Two more settings cost nothing in reproducibility. Under deterministic mode torch fills every new
    tensor with NaN (``fill_uninitialized_memory``), a safety net for kernels that read memory they
    never wrote; none of ours do, the evaluator's weights come out bit-identical without it, and it was
    15 % of an evaluator training step on 2 cores. cuBLAS is deterministic only with a fixed workspace
    (``CUBLAS_WORKSPACE_CONFIG``), which must be set before its first call."""
    from threadpoolctl import threadpool_limits

    from spritegen.runtime import deterministic_cpu

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic_cpu(threads or None)
    torch.utils.deterministic.fill_uninitialized_memory = False
    # numpy's BLAS (the metrics' matrix products and eigenvalues) has its own thread pool: the same count
    threadpool_limits(limits=torch.get_num_threads(), user_api="blas")
    return {"threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled()}


def check_device_param(requested: str, param: str) -> None:
    """A ``device`` param of a stage that runs on cpu or cuda only; a ConfigError naming ``param``.

    mps is refused, never picked: it has no float64 (the metrics and the loss sums use it) and no
    deterministic-algorithm guarantees, and these stages' outputs are compared bit for bit."""
    from spritegen.config import ConfigError

    if str(requested).startswith("mps"):
        raise ConfigError(f"{param}: {requested!r} is not supported (mps has no float64 and no deterministic "
                          f"algorithms); use one of {list(DEVICES)}")
    if requested not in DEVICES and not str(requested).startswith("cuda:"):
        raise ConfigError(f"{param}: {requested!r} is not one of {list(DEVICES)} (or cuda:N)")


def resolve_device(requested: str, param: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu (never mps); ``cuda`` where there is none is an error
    naming ``param``."""
    from spritegen.errors import UserError

    check_device_param(requested, param)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{param}: {requested!r} but CUDA is not available on this machine (use auto or cpu)")
    return device
