"""Checkpoints: weights in safetensors, the resolved config beside them as YAML.

A checkpoint is a folder::

    <dir>/model.safetensors      # state dicts, flattened as "<module>.<param>" (safe: no pickle)
    <dir>/config.yaml            # the resolved config sections that built the modules
    <dir>/state.safetensors      # optional: optimiser / scheduler / EMA / RNG tensors for resume
    <dir>/state.json             # optional: step, epoch and other scalars for resume

Loading never unpickles: a malicious file can at worst be rejected with an error naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from spritegen.errors import UserError


def flatten_state(modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{"unet": module, ...}`` -> ``{"unet.conv_in.weight": tensor, ...}`` (contiguous, CPU, unshared)."""
    flat = {}
    for prefix, m in modules.items():
        state = m.state_dict() if isinstance(m, torch.nn.Module) else m
        for k, v in state.items():
            flat[f"{prefix}.{k}"] = v.detach().to("cpu").contiguous().clone()
    return flat


def unflatten_state(flat: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p) :]: v for k, v in flat.items() if k.startswith(p)}


def save_checkpoint(folder: str | Path, modules: dict[str, Any], config: dict[str, Any]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "model.safetensors.tmp"
    save_file(flatten_state(modules), str(tmp))
    tmp.replace(folder / "model.safetensors")  # atomic: the last good checkpoint survives a crash
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (a pickle, a truncated file) is a clear error."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); checkpoints are never unpickled") from None


def load_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "config.yaml"
    if not path.exists():
        raise UserError(f"{path} missing: a checkpoint folder must hold the config that built it")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None


def load_into(module: torch.nn.Module, flat: dict[str, torch.Tensor], prefix: str, source: str | Path) -> None:
    """Load ``prefix.*`` tensors into ``module``; a missing/unexpected key or a shape mismatch is an error."""
    state = unflatten_state(flat, prefix)
    if not state:
        raise UserError(f"{source}: no weights for {prefix!r} (keys start with {sorted({k.split('.')[0] for k in flat})})")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{source}: weights for {prefix!r} do not fit the configured model: {e}") from None
