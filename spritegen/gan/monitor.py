"""Collapse watched while the GAN trains: every epoch, a fixed batch of noise and prompts through the
generator, scored with the evaluation rubric's own code (spritegen/collapse.py).

    reference = pixel_statistics(real_uint8)                 # once: as many fixed real sprites
    row = collapse_row(x_fake, reference)                    # {"collapse/score": 0..9, "collapse/unique_share": ...}
    warnings = collapse_warnings(row, cfg)                   # the seed's thresholds crossed, in words

What is measured (logged under ``collapse/`` beside the losses):
* ``unique_pixels`` and ``unique_share``: the seed's unique-pixel count and its share of all pixels;
* ``out_min`` / ``out_max``: the generator's raw output range in [-1, 1] (the seed's 0.043..0.102);
* ``value_range``, ``channel_std``: the rubric's pixel statistics, and their ratios to real sprites;
* ``score``: the rubric's points on the three pixel indicators (0..9). The rubric's two feature-space
  indicators (pairwise feature distance, coverage) need the evaluator, which training may not load: they
  count 0, so this is a lower bound of the evaluation's 15-point score.
"""

from __future__ import annotations

import torch

from spritegen.collapse import PIXEL_RUBRIC, collapse_band, collapse_score, pixel_indicators, pixel_statistics
from spritegen.gan.config import GANConfig
from spritegen.io import to_uint8


def collapse_row(x: torch.Tensor, reference: dict[str, float]) -> dict[str, float]:
    """The collapse measurements of generated images ``x`` (B, 3, R, R) float in [-1, 1] against real
    ``reference`` statistics (``pixel_statistics`` of as many real sprites)."""
    images = to_uint8(x.detach().float().cpu()).numpy()
    stats = pixel_statistics(images)
    indicators = pixel_indicators(images, reference)
    score, parts = collapse_score(indicators, PIXEL_RUBRIC)
    pixels = images.shape[0] * images.shape[2] * images.shape[3]
    return {
        "collapse/unique_pixels": float(round(stats["unique_pixel_fraction"] * pixels)),
        "collapse/unique_share": stats["unique_pixel_fraction"],
        "collapse/out_min": float(x.min()), "collapse/out_max": float(x.max()),
        "collapse/value_range": stats["value_range"], "collapse/channel_std": stats["channel_std"],
        **{f"collapse/{k}": v for k, v in indicators.items()},
        "collapse/score": float(score),
        **{f"collapse/points_{k.removesuffix('_ratio')}": float(v) for k, v in parts.items()},
    }


def collapse_warnings(row: dict[str, float], cfg: GANConfig) -> list[str]:
    """The seed's thresholds this epoch's row crosses (empty: healthy)."""
    out = []
    if row["collapse/unique_share"] < cfg.collapse_min_unique_share:
        out.append(f"unique pixels {row['collapse/unique_share']:.2%} < {cfg.collapse_min_unique_share:.0%}")
    if row["collapse/out_min"] > -cfg.collapse_min_span or row["collapse/out_max"] < cfg.collapse_min_span:
        out.append(f"output range {row['collapse/out_min']:.3f}..{row['collapse/out_max']:.3f} does not span "
                   f"-{cfg.collapse_min_span}..{cfg.collapse_min_span}")
    if row["collapse/channel_std_ratio"] < cfg.collapse_min_spread:
        out.append(f"spread across samples {row['collapse/channel_std_ratio']:.2f} of the real sprites' < {cfg.collapse_min_spread} "
                   "(noise and prompt barely change the image)")
    if row["collapse/score"] > cfg.collapse_max_score:
        out.append(f"collapse score {row['collapse/score']:.0f}/9 on the pixel indicators > {cfg.collapse_max_score} "
                   f"(the evaluation's 15-point score is at least as high: {collapse_band(row['collapse/score'])} or worse)")
    return out

