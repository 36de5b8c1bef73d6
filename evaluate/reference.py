"""Reference statistics: features of the real images, computed once per backend and cached.

    spritegen reference [--data data/prepared] [--evaluator models/evaluator] [--out reference]

Writes ``reference/<backend_id>/``:

    features.safetensors   {"train", "val", "test"}: (N, D) float64 backend features of each split
    stats.safetensors      {"<split>.mu", "<split>.sigma", "heldout.mu", "heldout.sigma"}: Gaussian statistics
    meta.json              backend, backend_id, counts, a hash of each split's pixels, the FD floor
                           (train vs held-out) so the floor is visible without running `evaluate`, and
                           the threads and determinism it ran under (its time goes to logs/reference.json)

``spritegen evaluate`` uses the cached features when the backend_id and the pixel hashes match the
prepared data it reads, and computes them otherwise (a stale cache is never used).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from spritegen.evaluate import metrics as M

SPLITS = ("train", "val", "test")


def images_hash(images: torch.Tensor | np.ndarray) -> str:
    arr = np.ascontiguousarray(np.asarray(images, dtype=np.uint8))
    return hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:16]


def reference_features(encode, splits: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """``{split: encode(images)}``: the features of every split."""
    return {name: encode(images) for name, images in splits.items()}


def save_reference(folder: Path, backend, feats: dict[str, np.ndarray], hashes: dict[str, str], rng,
                   run: dict | None = None) -> dict:
    """Write the features, their Gaussian statistics and ``meta.json`` (with ``run``: the thread count
    and determinism the features were computed under)."""
    from spritegen.io import write_json

    folder = Path(folder) / backend.backend_id
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feats.items()}, str(folder / "features.safetensors"))
    heldout = np.concatenate([feats["val"], feats["test"]])
    stats = {}
    for name, f in [*feats.items(), ("heldout", heldout)]:
        if len(f) >= 2:
            mu, sigma = M.gaussian_stats(f)
            stats[f"{name}.mu"], stats[f"{name}.sigma"] = torch.from_numpy(mu), torch.from_numpy(sigma)
    save_file(stats, str(folder / "stats.safetensors"))
    # FD floor at matched sample count: as many train sprites as held-out ones
    m = min(len(feats["train"]), len(heldout))
    sub = np.sort(rng.choice(len(feats["train"]), size=m, replace=False))
    meta = {"backend": backend.name, "backend_id": backend.backend_id,
            "n": {k: int(len(v)) for k, v in feats.items()}, "pixel_hash": hashes,
            "fd_train_vs_heldout": M.fd(feats["train"][sub], heldout) if m >= 2 else None,
            "fd_val_vs_test": M.fd(feats["val"], feats["test"]) if min(len(feats["val"]), len(feats["test"])) >= 2 else None,
            "n_floor": int(m), **(run or {})}
    write_json(meta, folder / "meta.json")
    return meta


def load_features(folder: Path, backend_id: str, hashes: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Cached features for ``backend_id``; {} when absent or when the pixel hashes differ from ``hashes``."""
    import json

    folder = Path(folder) / backend_id
    if not (folder / "features.safetensors").exists() or not (folder / "meta.json").exists():
        return {}
    meta = json.loads((folder / "meta.json").read_text())
    if hashes is not None and any(meta.get("pixel_hash", {}).get(k) != v for k, v in hashes.items()):
        return {}
    return {k: v.numpy() for k, v in load_file(str(folder / "features.safetensors")).items()}


def main(args) -> int:
    from spritegen.data.dataset import load_split
    from spritegen.evaluate.features import make_backend
    from spritegen.params import load_section
    from spritegen.runlog import log_run
    from spritegen.repro import reproducible

    t0 = time.perf_counter()
    cfg = load_section("evaluate", args.params, args.preset)
    run = reproducible(cfg.threads)
    evaluator = None
    if cfg.backend == "evaluator":
        from spritegen.errors import UserError
        from spritegen.evaluate.evaluator import load_evaluator

        if not (Path(args.evaluator) / "model.safetensors").exists():
            raise UserError(f"{args.evaluator}/model.safetensors missing: run `spritegen evaluator` first")
        evaluator = load_evaluator(args.evaluator)
    backend = make_backend(cfg.backend, evaluator, cfg.inception_weights, cfg.clip_model, cfg.clip_weights)
    splits = {s: load_split(args.data, s).images for s in SPLITS}
    feats = reference_features(backend.encode_images, splits)
    meta = save_reference(Path(args.out), backend, feats, {k: images_hash(v) for k, v in splits.items()},
                          np.random.default_rng(cfg.seed), run)
    log_run("reference", {"seconds": round(time.perf_counter() - t0, 1), "backend_id": backend.backend_id, **run})
    print(f"reference {backend.backend_id}: {meta['n']} features; FD floor train vs held-out "
          f"{meta['fd_train_vs_heldout']} (n={meta['n_floor']})")
    return 0
