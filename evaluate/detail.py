"""Detail features: the fidelity space that sees noise, blur and high-frequency artefacts.

The evaluator's space (``fd``) was trained to match images with prompts, so it is blind to what does not
change a description: Gaussian pixel noise a person plainly sees moved its ``fd`` by nothing (issue 14),
and a GAN's speckle or checkerboard is exactly that kind of failure. ``fd_detail`` is the Fréchet distance
in a fixed, untrained space built for it:

* the image in an opponent colour space (luminance L, red-green, yellow-blue), values in [0, 1];
* a Gaussian pyramid of it (2x2 average pooling), ``LEVELS`` levels from the native resolution down;
* at each level, three derivative filters per channel: horizontal and vertical differences and a
  Laplacian (edges in two directions and spots, so a checkerboard answers as strongly as an edge);
* per response map, robust statistics of its magnitude: the median, the 75th and 95th percentiles and the
  RMS, each as ``log(EPS + value)``.

Why these statistics: a sprite's background and flat colour areas are exactly flat, so the median
response of a real sprite is zero and faint noise lifts it by orders of magnitude (the log makes that a
large, steady move); blur lowers the upper percentiles of every edge; the levels say at which scale.
``EPS`` is four grey levels, about where noise on a flat area starts to show: a dither below it moves a
feature by at most log 2, so invisible round-off does not dominate the distance (with one grey level,
noise of σ = 2/255 already scored 19x the real floor; with four, 8x, and blur of σ = 0.4 px 1.6x).

Nothing is trained, so the space is the same on every machine and needs no reference stage of its own.
``DETAIL_ID`` names it in every metrics file: change it whenever the features change, since numbers
from two versions never compare.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DETAIL_ID = "detail-v1"
LEVELS = 3
QUANTILES = (0.5, 0.75, 0.95)
EPS = 4 / 255  # four grey levels (see the module docstring)

# rows: L, red-green, yellow-blue (each row's weights sum to 0 or 1, so a flat colour stays flat)
_OPPONENT = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, -1.0, 0.0], [0.5, 0.5, -1.0]], dtype=torch.float64)
# horizontal difference, vertical difference, Laplacian (4-neighbour), as 3x3 kernels
_FILTERS = torch.tensor([
    [[0, 0, 0], [0, -1, 1], [0, 0, 0]],
    [[0, 0, 0], [0, -1, 0], [0, 1, 0]],
    [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
], dtype=torch.float64)


def detail_dim(levels: int = LEVELS) -> int:
    return levels * len(_OPPONENT) * len(_FILTERS) * (len(QUANTILES) + 1)


@torch.no_grad()
def detail_features(images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """uint8 images ``(N, 3, H, W)`` -> ``(N, detail_dim())`` float64 features (see the module docstring)."""
    images = torch.as_tensor(np.asarray(images))
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got shape {tuple(images.shape)}")
    if min(images.shape[-2:]) < 2 ** LEVELS:
        raise ValueError(f"detail features need images of at least {2 ** LEVELS} px, got {tuple(images.shape[-2:])}")
    out = [_features(images[s : s + batch_size]) for s in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, detail_dim()))


def _features(images: torch.Tensor) -> torch.Tensor:
    x = images.to(torch.float64) / 255
    x = torch.einsum("oc,nchw->nohw", _OPPONENT, x)
    C, K = len(_OPPONENT), len(_FILTERS)
    # each filter applied to each channel on its own (grouped convolution); replicate padding, so the
    # border of a flat background answers zero like its inside
    weight = _FILTERS[None].expand(C, K, 3, 3).reshape(C * K, 1, 3, 3)
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    parts = []
    for level in range(LEVELS):
        if level:
            x = F.avg_pool2d(x, 2)
        r = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight, groups=C).abs().flatten(2)  # (N, C*K, h*w)
        stats = torch.cat([torch.quantile(r, q, dim=2).permute(1, 2, 0), r.pow(2).mean(2, keepdim=True).sqrt()], 2)
        parts.append(torch.log(EPS + stats).flatten(1))
    return torch.cat(parts, 1)
