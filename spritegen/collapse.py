"""The mode-collapse rubric (0-15 points) and the pixel indicators it reads: one definition, shared by the
evaluation suite and by training.

    from spritegen.collapse import collapse_score, pixel_indicators, PIXEL_RUBRIC
    score, parts = collapse_score(indicators)                       # evaluation: all five indicators
    score, parts = collapse_score(pixel_indicators(gen, real), PIXEL_RUBRIC)   # training: the pixel ones

Why it lives here and not in ``evaluate/metrics.py``: a training loop must watch collapse with the code
that scores it afterwards (issue 13), and training modules may not import the evaluation package
(tests/test_walls.py: a training stage that imports the evaluator re-runs whenever the evaluator changes).
``spritegen.evaluate.metrics`` imports every name below from here, so ``M.collapse_score`` *is* this
function; nothing in evaluation changed but the place the code is written.

Five indicators, 0-3 points each (0 = like real data, 3 = collapsed). Three are pixel statistics of the
generated set against the same statistic of real sprites (value range, unique colours, spread across
samples); two need the evaluator's feature space (mean pairwise feature distance across prompts, and
coverage of the real k-NN balls), which a training stage does not load. Training therefore scores the
pixel indicators alone (``PIXEL_RUBRIC``, 0-9): the missing points count 0, so the training score is a
lower bound of the evaluation's score, and a training score above 4 means the evaluation's cannot be
"healthy" either. Pure NumPy: arrays in, numbers out.
"""

from __future__ import annotations

import numpy as np

# thresholds are the lower edges of the 0-, 1- and 2-point bands. Ratios are generated / real-reference
# value of the same statistic.
COLLAPSE_RUBRIC: dict[str, tuple[float, float, float]] = {
    "value_range_ratio": (0.8, 0.5, 0.25),  # value_range (share of 0..255 used), generated / real
    "unique_pixel_ratio": (0.5, 0.2, 0.05),  # unique_pixel_fraction, generated / real
    "channel_std_ratio": (0.5, 0.25, 0.1),  # across-sample pixel spread, generated / real
    "pairwise_distance_ratio": (0.5, 0.25, 0.1),  # mean pairwise feature distance, generated / real
    "coverage": (0.5, 0.25, 0.1),  # absolute: share of real k-NN balls reached
}
COLLAPSE_BANDS = ((4, "healthy"), (7, "warning"), (11, "collapsed"), (15, "critical"))

# the indicators computable from pixels alone, and the rubric restricted to them (what training scores)
PIXEL_INDICATORS = ("value_range_ratio", "unique_pixel_ratio", "channel_std_ratio")
PIXEL_RUBRIC: dict[str, tuple[float, float, float]] = {k: COLLAPSE_RUBRIC[k] for k in PIXEL_INDICATORS}
# the indicators that need evaluator features: not scored during training
FEATURE_INDICATORS = tuple(k for k in COLLAPSE_RUBRIC if k not in PIXEL_INDICATORS)


def collapse_points(value: float, thresholds: tuple[float, float, float]) -> int:
    """0 if value >= t0, 1 if >= t1, 2 if >= t2, else 3 (NaN counts as 3)."""
    for points, t in enumerate(thresholds):
        if value >= t:
            return points
    return 3


def collapse_score(indicators: dict[str, float], rubric: dict[str, tuple[float, float, float]] = COLLAPSE_RUBRIC
                   ) -> tuple[int, dict[str, int]]:
    """The seeds' mode-collapse score, made precise: sum of the rubric points and each part. The full
    rubric (0..15) by default; ``rubric=PIXEL_RUBRIC`` scores the pixel indicators only (0..9)."""
    parts = {name: collapse_points(indicators[name], t) for name, t in rubric.items()}
    return sum(parts.values()), parts


def collapse_band(score: float) -> str:
    for upper, name in COLLAPSE_BANDS:
        if score <= upper:
            return name
    return "critical"


# --- the pixel indicators ---------------------------------------------------------------------------


def unique_pixel_fraction(images: np.ndarray) -> float:
    """Distinct RGB colours over all pixels of all images, divided by the pixel count.
    The seeds' collapsed GAN had 113 values in 245,760; a constant image gives 1 / pixels ≈ 0."""
    x = np.asarray(images, np.uint8)
    rgb = x.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.uint32)
    codes = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    return float(len(np.unique(codes)) / len(codes))


def value_range(images: np.ndarray) -> float:
    """(max - min) / 255 of the pixel values, per channel over all images, averaged over channels:
    1 for images that use the full range, 0.02 for the seeds' gray outputs (0.043..0.102 of [-1, 1])."""
    x = np.asarray(images, np.float64)
    return float(((x.max(axis=(0, 2, 3)) - x.min(axis=(0, 2, 3))) / 255).mean())


def channel_std(images: np.ndarray) -> float:
    """Spread *across samples*: std over images of each pixel, per channel, averaged, / 255.
    0 for a generator that always outputs the same image, whatever that image is."""
    x = np.asarray(images, np.float64)  # integers: the mean of identical values is exact, std exactly 0
    if len(x) < 2:
        return 0.0
    return float(x.std(axis=0, ddof=1).mean() / 255)


def indicator_ratio(value: float, reference: float) -> float:
    """generated / real of one statistic; 0.0 (the worst band) when either is missing or the reference is 0
    (the same rule as the evaluation suite's ``set_metrics``)."""
    return float(value / reference) if reference and np.isfinite(reference) and np.isfinite(value) else 0.0


def pixel_statistics(images: np.ndarray) -> dict[str, float]:
    """The three pixel statistics of a uint8 set (N, 3, H, W)."""
    return {"value_range": value_range(images), "unique_pixel_fraction": unique_pixel_fraction(images),
            "channel_std": channel_std(images)}


def pixel_indicators(images: np.ndarray, reference: dict[str, float]) -> dict[str, float]:
    """The pixel indicators of ``images`` against real ``reference`` statistics (``pixel_statistics`` of real
    sprites, the same count: unique_pixel_fraction falls with the number of pixels)."""
    stats = pixel_statistics(images)
    return {"value_range_ratio": indicator_ratio(stats["value_range"], reference["value_range"]),
            "unique_pixel_ratio": indicator_ratio(stats["unique_pixel_fraction"], reference["unique_pixel_fraction"]),
            "channel_std_ratio": indicator_ratio(stats["channel_std"], reference["channel_std"])}
