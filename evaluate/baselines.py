"""Trivial generators, scored with the same metric functions as a real generator, so that a number can
be read against "what nothing at all would get":

* ``mean_image``: every sample is the mean training image (maximal collapse onto the data's centre);
* ``noise``: uniform random pixels (maximal pixel diversity, no fidelity, no alignment);
* ``train_copies``: random training images (perfect memorisation: real-looking and diverse, yet copies;
  FD/PRDC rate it like a perfect generator, near_copy_fraction catches it, and with the generated prompts
  its alignment is at chance).
"""

from __future__ import annotations

import numpy as np

BASELINES = ("mean_image", "noise", "train_copies")


def baseline_images(kind: str, n: int, real, rng: np.random.Generator) -> np.ndarray:
    """``n`` uint8 images (n, 3, R, R) of baseline ``kind``; ``real`` is a ``suite.RealData``."""
    shape = real.floor_train.shape[1:]
    if kind == "mean_image":
        mean = np.round(real.memorised.astype(np.float64).mean(0)).astype(np.uint8)
        return np.repeat(mean[None], n, axis=0)
    if kind == "noise":
        return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    if kind == "train_copies":
        pool = real.floor_train
        return pool[rng.choice(len(pool), size=n, replace=n > len(pool))]
    raise ValueError(f"unknown baseline {kind!r}; baselines are {BASELINES}")
