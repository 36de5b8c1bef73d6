"""Pure metric functions: arrays in, numbers out. No I/O, no models, no global RNG.

Every function here takes NumPy arrays (features ``(N, D)`` float, images ``(N, 3, H, W)`` uint8) and
returns Python floats (or small arrays). Randomness, where a metric needs it (KID subsets, distractor
draws, bootstrap), comes from an explicit ``numpy.random.Generator`` argument.

The formulas follow the papers and the reference implementations they are tested against
(``tests/test_eval_metrics.py``):

* Fréchet distance: Heusel et al. 2017; eigenvalue form of tr(sqrt(S1 S2)) as in torchmetrics/torch-fidelity.
* KID: Bińkowski et al. 2018, unbiased MMD² with the cubic polynomial kernel, averaged over subsets.
* FD∞: Chong & Forsyth 2020, FD extrapolated to infinitely many samples by a linear fit in 1/N.
* precision/recall (Kynkäänniemi et al. 2019), density/coverage (Naeem et al. 2020): k-NN balls, as in
  the ``prdc`` package.
* CLIP score (Hessel et al. 2021) as the mean cosine; CLIP-R-precision (Park et al. 2021).
* Vendi score (Friedman & Dieng 2023) with the cosine kernel.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from spritegen.collapse import (COLLAPSE_BANDS, COLLAPSE_RUBRIC, channel_std, collapse_band,  # noqa: F401 - re-exported
                                collapse_points, collapse_score, unique_pixel_fraction, value_range)

# --- fidelity ---------------------------------------------------------------------------------------


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``features (N, D)`` in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 feature rows (N, D), got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d² = |mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½).

    tr((S1 S2)^½) is the sum of square roots of the eigenvalues of S1 S2 (real and >= 0 in exact
    arithmetic, as S1 S2 is similar to a PSD matrix); tiny negative/complex round-off is dropped. This
    replaced ``scipy.linalg.sqrtm`` in torchmetrics and torch-fidelity: same value, no failure on
    singular covariances (fewer samples than dimensions).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    eig = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix (negative round-off eigenvalues set to 0)."""
    w, v = np.linalg.eigh(np.asarray(sigma, np.float64))
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_to(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                        sqrt_sigma2: np.ndarray) -> float:
    """``frechet_distance`` with the reference's square root precomputed: tr((S1 S2)^½) is the sum of
    square roots of the eigenvalues of the *symmetric* S2^½ S1 S2^½ (similar to S1 S2), found with
    ``eigvalsh``: several times faster in the bootstrap, and no complex round-off."""
    eig = np.linalg.eigvalsh(sqrt_sigma2 @ np.asarray(sigma1, np.float64) @ sqrt_sigma2)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)


def fd(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between two feature sets (biased at small N: compare equal N only)."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def fd_infinity(features_gen: np.ndarray, features_ref: np.ndarray, rng: np.random.Generator,
                n_points: int = 8, min_fraction: float = 0.3) -> float:
    """FD∞: FD on random subsets of N_i generated samples, linear fit of FD against 1/N_i, intercept.

    Removes the 1/N bias of FD so that numbers at different sample counts compare (Chong & Forsyth).
    Needs enough samples (a few hundred) for the fit to mean anything.
    """
    n = len(features_gen)
    sizes = np.unique(np.linspace(max(2, int(n * min_fraction)), n, n_points).astype(int))
    mu_r, s_r = gaussian_stats(features_ref)
    ys = []
    for m in sizes:
        idx = rng.choice(n, size=m, replace=False)
        ys.append(frechet_distance(*gaussian_stats(features_gen[idx]), mu_r, s_r))
    slope, intercept = np.polyfit(1.0 / sizes, np.array(ys), 1)
    return float(intercept)


def kid_subset_size(n_a: int, n_b: int, max_size: int = 1000) -> int:
    """KID's subset size adapted to the sample counts (torchmetrics raises when it exceeds either)."""
    return int(max(2, min(max_size, n_a, n_b)))


def poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel k(a, b) = (a·b / d + 1)³ for all row pairs."""
    k = np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / x.shape[1] + 1
    return k * k * k


def kid_from_kernels(k_aa: np.ndarray, k_bb: np.ndarray, k_ab: np.ndarray, rng: np.random.Generator,
                     n_subsets: int, subset_size: int, rows_a: np.ndarray | None = None) -> tuple[float, float]:
    """KID from precomputed kernel matrices: unbiased MMD² on ``n_subsets`` random subsets of
    ``subset_size`` rows per side. ``rows_a`` (optional, may repeat) selects which rows of ``k_aa``/``k_ab``
    form set a (the bootstrap passes resampled indices, so kernels are computed once)."""
    rows_a = np.arange(len(k_aa)) if rows_a is None else np.asarray(rows_a)
    m = subset_size
    if m > len(rows_a) or m > len(k_bb):
        raise ValueError(f"KID subset size {m} exceeds the sample counts ({len(rows_a)}, {len(k_bb)})")
    vals = []
    for _ in range(n_subsets):
        ia = rows_a[rng.choice(len(rows_a), size=m, replace=False)]
        ib = rng.choice(len(k_bb), size=m, replace=False)
        kxx, kyy = k_aa[np.ix_(ia, ia)], k_bb[np.ix_(ib, ib)]
        sum_xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        sum_yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        vals.append(float(sum_xx + sum_yy - 2 * k_ab[np.ix_(ia, ib)].mean()))
    return float(np.mean(vals)), float(np.std(vals))


def kid(features_a: np.ndarray, features_b: np.ndarray, rng: np.random.Generator,
        n_subsets: int = 100, subset_size: int | None = None) -> tuple[float, float]:
    """Kernel Inception Distance (mean, std over subsets). Unbiased: can be slightly negative near 0."""
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    m = subset_size or kid_subset_size(len(a), len(b))
    return kid_from_kernels(poly_kernel(a, a), poly_kernel(b, b), poly_kernel(a, b), rng, n_subsets, m)


# --- k-NN manifold metrics (prdc) -------------------------------------------------------------------


def _float(x: np.ndarray) -> np.ndarray:
    """float32 stays float32 (large sets), everything else becomes float64."""
    x = np.asarray(x)
    return x if x.dtype == np.float32 else x.astype(np.float64)


def pairwise_distances(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances ``(len(x), len(y))`` (clipped at 0 against round-off)."""
    x = _float(x)
    y = x if y is None else _float(y).astype(x.dtype)
    d2 = (x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2 * x @ y.T
    return np.sqrt(np.clip(d2, 0, None))


def knn_radii(features: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Distance of each row to its k-th nearest neighbour within the set (itself excluded)."""
    x = _float(features)
    if not 1 <= k < len(x):
        raise ValueError(f"k = {k} needs 1 <= k < number of samples ({len(x)})")
    out = []
    for s in range(0, len(x), chunk):
        d = pairwise_distances(x[s : s + chunk], x)
        # the point itself is at distance 0, the smallest: the k-th neighbour is order statistic k
        out.append(np.partition(d, k, axis=1)[:, k])
    return np.concatenate(out)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, real_radii: np.ndarray | None = None,
         chunk: int = 2048) -> dict[str, float]:
    """Precision, recall, density, coverage of ``fake`` against ``real`` (as ``prdc.compute_prdc``).

    precision: share of fake samples inside some real k-NN ball (fidelity);
    recall: share of real samples inside some fake k-NN ball (diversity);
    density: mean number of real balls a fake sample falls in, divided by k (≈1 for equal distributions);
    coverage: share of real balls that contain at least one fake sample.
    Chunked over fake samples, so 10,000 × 10,000 fits in memory.
    """
    real, fake = _float(real), _float(fake)
    real_r = knn_radii(real, k) if real_radii is None else np.asarray(real_radii)
    fake_r = knn_radii(fake, k)
    in_real_ball = np.zeros(len(fake), dtype=np.int64)  # per fake: how many real balls hold it
    real_in_fake_ball = np.zeros(len(real), dtype=bool)
    nearest_fake = np.full(len(real), np.inf)
    for s in range(0, len(fake), chunk):
        d = pairwise_distances(real, fake[s : s + chunk])  # (R, c)
        in_real_ball[s : s + chunk] = (d < real_r[:, None]).sum(0)
        real_in_fake_ball |= (d < fake_r[None, s : s + chunk]).any(1)
        nearest_fake = np.minimum(nearest_fake, d.min(1))
    return _prdc_summary(in_real_ball, real_in_fake_ball, nearest_fake, real_r, k)


def _prdc_summary(in_real_ball, real_in_fake_ball, nearest_fake, real_r, k) -> dict[str, float]:
    return {
        "precision": float((in_real_ball > 0).mean()),
        "recall": float(real_in_fake_ball.mean()),
        "density": float(in_real_ball.mean() / k),
        "coverage": float((nearest_fake < real_r).mean()),
    }


def prdc_from_distances(d_real_fake: np.ndarray, d_fake_fake: np.ndarray, real_radii: np.ndarray, k: int,
                        cols: np.ndarray | None = None) -> dict[str, float]:
    """``prdc`` from precomputed distances (real × fake, fake × fake); ``cols`` (may repeat) selects the
    fake samples, so the bootstrap reuses one distance matrix. With duplicated samples a duplicate is a
    neighbour at distance 0, as it would be with the resampled features themselves."""
    cols = np.arange(d_fake_fake.shape[0]) if cols is None else np.asarray(cols)
    d_ff = d_fake_fake[np.ix_(cols, cols)]
    fake_r = np.partition(d_ff, k, axis=1)[:, k]
    d = d_real_fake[:, cols]
    return _prdc_summary((d < real_radii[:, None]).sum(0), (d < fake_r[None, :]).any(1), d.min(1), real_radii, k)


# --- text alignment ---------------------------------------------------------------------------------


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


def clip_scores(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Per-pair cosine similarity of row i of ``image_emb`` with row i of ``text_emb``: ``(N,)``.

    (torchmetrics' CLIPScore reports 100 * max(cos, 0) with a pretrained CLIP; we report the raw cosine,
    which is comparable only within one backend_id anyway.)"""
    return (l2_normalise(image_emb) * l2_normalise(text_emb)).sum(-1)


def r_precision_hits(image_emb: np.ndarray, text_emb: np.ndarray, true_index: np.ndarray,
                     n_candidates: int, rng: np.random.Generator) -> np.ndarray:
    """CLIP-R-precision per image (R = 1): 1 if the true prompt has the highest similarity among itself
    and ``n_candidates - 1`` distractors drawn without replacement from the other prompts, else 0.

    ``text_emb (M, D)`` holds *distinct* prompts; ``true_index (N,)`` points at each image's prompt.
    An oracle (image embedding = its prompt's embedding) scores 1; random images score ≈ 1/n_candidates.
    Ties count as misses, so a constant image embedding scores ≈ 0, not 1.
    """
    m = len(text_emb)
    c = min(n_candidates, m)
    if c < 2:
        raise ValueError(f"R-precision needs at least 2 distinct prompts, got {m}")
    sims = l2_normalise(image_emb) @ l2_normalise(text_emb).T  # (N, M)
    hits = np.zeros(len(image_emb))
    for i, t in enumerate(true_index):
        others = np.delete(np.arange(m), t)
        distractors = rng.choice(others, size=c - 1, replace=False)
        hits[i] = float(sims[i, t] > sims[i, distractors].max())
    return hits


def zero_shot_predict(image_emb: np.ndarray, class_text_emb: np.ndarray) -> np.ndarray:
    """Index of the most similar class prompt per image ``(N,)``."""
    return (l2_normalise(image_emb) @ l2_normalise(class_text_emb).T).argmax(1)


def attribute_codes(wanted: Sequence[Sequence[str]], predicted: Sequence[str | None],
                    classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(want, pred)``: ``want (N, C+1)`` 0/1, row i = the classes prompt i asks for; ``pred (N,)`` the
    index of the class each image is called (C: a class outside ``classes``, which no prompt asks for).
    Image j scores ``want[i, pred[j]]`` under prompt i: its own hit at j = i, the shuffled chance over all
    j. Linear in N: the N x N table of hits is never built."""
    index = {c: k for k, c in enumerate(classes)}
    want = np.zeros((len(wanted), len(classes) + 1))
    for i, w in enumerate(wanted):
        want[i, [index[c] for c in w if c in index]] = 1.0
    pred = np.array([index.get(p, len(classes)) if p is not None else len(classes) for p in predicted], dtype=np.int64)
    return want, pred


def attribute_hits(want: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Each sample's own hit ``(N,)``: 1 when its image is called a class its prompt asks for, NaN when
    the prompt asks for none (not scored)."""
    hit = want[np.arange(len(pred)), pred]
    return np.where(want.sum(1) > 0, hit, np.nan)


def shuffled_chance(want: np.ndarray, pred: np.ndarray, idx: np.ndarray | None = None) -> float:
    """Expected accuracy of the same images under randomly re-paired prompts: the chance level of a
    generator that draws exactly these images but ignores its prompt. Unlike 1/classes it accounts for
    the scorer's bias (a scorer that calls most images "water" gives water prompts free hits).
    ``idx`` (a bootstrap resample) selects prompts and images together."""
    if idx is not None:
        want, pred = want[idx], pred[idx]
    rows = want.sum(1) > 0
    if not rows.any():
        return float("nan")
    share = np.bincount(pred, minlength=want.shape[1]) / len(pred)  # how often each class is called
    return float((want[rows] @ share).mean())


def per_class_following(want: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per class that some prompt asks for (``want``, ``pred`` from ``attribute_codes``): ``n`` such
    prompts, ``called`` the share of their images the scorer calls that class, ``share`` the share of
    *all* images it calls that class, and ``lift`` = called − share (0 for a class the generator ignores).
    A class the scorer never names anywhere has called = share = 0: it is not measured, rather than not
    followed."""
    shares = np.bincount(pred, minlength=want.shape[1]) / len(pred)
    out = {}
    for k, c in enumerate(classes):
        rows = want[:, k] > 0
        if rows.any():
            called, share = float(np.mean(pred[rows] == k)), float(shares[k])
            out[c] = {"n": int(rows.sum()), "called": called, "share": share, "lift": called - share}
    return out


def shuffle_test(want: np.ndarray, pred: np.ndarray, rng: np.random.Generator, n_perm: int = 2000,
                 chunk: int = 250) -> float:
    """One-sided permutation p-value that the prompts are followed: the share of random re-pairings of
    prompts and images that score at least the observed accuracy (the add-one estimate, never 0).
    Permutations are drawn ``chunk`` at a time, so memory stays at chunk x N."""
    rows = np.flatnonzero(want.sum(1) > 0)
    if len(rows) == 0:
        return float("nan")
    observed = want[rows, pred[rows]].mean()
    n, at_least = len(pred), 0
    for start in range(0, n_perm, chunk):
        perms = np.stack([rng.permutation(n) for _ in range(min(chunk, n_perm - start))])  # (P, N)
        null = want[rows[None, :], pred[perms[:, rows]]].mean(1)
        at_least += int((null >= observed - 1e-12).sum())
    return float((1 + at_least) / (1 + n_perm))


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Image→text and text→image recall@k for paired rows (row i of each is a true pair)."""
    sims = l2_normalise(image_emb) @ l2_normalise(text_emb).T
    n = len(sims)
    target = np.arange(n)
    # rank of the true partner = number of candidates scoring strictly higher
    i2t_rank = (sims > sims[target, target][:, None]).sum(1)
    t2i_rank = (sims.T > sims[target, target][:, None]).sum(1)
    out = {}
    for k in ks:
        out[f"i2t_r@{k}"] = float((i2t_rank < k).mean())
        out[f"t2i_r@{k}"] = float((t2i_rank < k).mean())
        out[f"chance_r@{k}"] = min(1.0, k / n)
    return out


# --- attributes named in prompts --------------------------------------------------------------------

_COLOUR_ALIASES = {"grey": "gray"}


def parse_colour(prompt: str, colour_names: Sequence[str]) -> str | None:
    """The first colour word of a prompt ("a red fire type..." -> "red"), or None."""
    for word in re.findall(r"[a-z]+", prompt.lower()):
        word = _COLOUR_ALIASES.get(word, word)
        if word in colour_names:
            return word
    return None


def parse_types(prompt: str, type_names: Sequence[str]) -> tuple[str, ...]:
    """Type words of a prompt that are followed by "type" (possibly as "fire/flying type" or
    "fire and flying type"), else every whole-word type name, in order."""
    text = prompt.lower()
    names = "|".join(type_names)
    typed = re.findall(rf"\b({names})(?:\s*(?:/|and|-|,)\s*({names}))?[\s-]+types?\b", text)
    found = [t for pair in typed for t in pair if t]
    if not found:
        found = [w for w in re.findall(r"[a-z]+", text) if w in type_names]
    return tuple(dict.fromkeys(found))


# --- diversity --------------------------------------------------------------------------------------


def mean_pairwise(distance: Callable[[np.ndarray, np.ndarray], np.ndarray], index_pairs: np.ndarray) -> float:
    """Mean of ``distance(i, j)`` over the given pairs ``(P, 2)``."""
    if len(index_pairs) == 0:
        return float("nan")
    return float(np.mean(distance(index_pairs[:, 0], index_pairs[:, 1])))


def pair_indices(groups: Sequence, within: bool, rng: np.random.Generator, max_pairs: int = 20000) -> np.ndarray:
    """Index pairs (i < j) of samples in the same group (``within``) or in different groups, at most
    ``max_pairs`` of them drawn at random (without replacement) when there are more."""
    g = np.asarray([hash(x) for x in groups])
    i, j = np.triu_indices(len(g), k=1)
    keep = (g[i] == g[j]) if within else (g[i] != g[j])
    pairs = np.stack([i[keep], j[keep]], 1)
    if len(pairs) > max_pairs:
        pairs = pairs[np.sort(rng.choice(len(pairs), size=max_pairs, replace=False))]
    return pairs


# unique_pixel_fraction, value_range and channel_std: imported from spritegen/collapse.py (see the rubric below)


def vendi_score(features: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K/N), K the cosine-similarity kernel: the effective number of
    distinct samples (1 for identical samples, N for orthogonal ones). With a linear kernel on
    normalised features the non-zero eigenvalues are those of XᵀX/N (D × D), so this is cheap."""
    x = l2_normalise(features)
    lam = np.linalg.eigvalsh(x.T @ x / len(x))
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))


# --- memorisation -----------------------------------------------------------------------------------


def nearest_distances(query: np.ndarray, bank: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the Euclidean distance to its nearest bank row and that row's index."""
    bank = np.asarray(bank, np.float64)
    dists, idx = [], []
    for s in range(0, len(query), chunk):
        d = pairwise_distances(query[s : s + chunk], bank)
        j = d.argmin(1)
        idx.append(j)
        dists.append(d[np.arange(len(j)), j])
    return np.concatenate(dists), np.concatenate(idx)


def pixel_vectors(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, H, W) -> (N, 3HW) float in [0, 1], scaled so that the Euclidean distance between
    two rows is their RMS pixel difference."""
    x = np.asarray(images, np.float64).reshape(len(images), -1) / 255
    return x / np.sqrt(x.shape[1])


# --- mode collapse: the 15-point rubric -------------------------------------------------------------

# The rubric and its pixel indicators (unique_pixel_fraction, value_range, channel_std) are defined in
# spritegen/collapse.py, so that training watches collapse with this very code (issue 13) without importing
# the evaluation package (tests/test_walls.py). Imported at the top: M.collapse_score is that function.


# --- bootstrap --------------------------------------------------------------------------------------


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, reps: int, rng: np.random.Generator,
                 point: float | None = None, level: float = 0.95) -> list[float] | None:
    """Bias-corrected percentile interval of ``statistic(indices)`` over ``reps`` resamples (with
    replacement) of ``n`` samples. See ``interval_from_replicates``."""
    if reps <= 0 or n < 2:
        return None
    vals = [statistic(rng.integers(0, n, size=n)) for _ in range(reps)]
    return interval_from_replicates(vals, point, level)


def interval_from_replicates(values: Sequence[float], point: float | None = None, level: float = 0.95) -> list[float] | None:
    """Percentile interval of bootstrap replicates, moved by the bootstrap bias (mean of replicates -
    ``point``).

    Resampling with replacement duplicates samples, which shifts set statistics (FD rises, pairwise
    distances and unique colours fall); the shift makes the interval bracket the point estimate
    instead of lying beside it. For plain means the bias is ~0 and this is the percentile interval.
    A statistic with few values (the integer collapse score) can have a zero-width percentile interval
    that the shift moves off the point (replicates 98 x 1 and 2 x 0 around a point of 0 gave
    [0.02, 0.02]); the interval is then widened to include the point.
    """
    vals = np.asarray(values, dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if len(vals) < 2:
        return None
    alpha = (1 - level) / 2
    lo, hi = np.quantile(vals, [alpha, 1 - alpha])
    if point is None or not np.isfinite(point):
        return [float(lo), float(hi)]
    bias = vals.mean() - point
    return [float(min(lo - bias, point)), float(max(hi - bias, point))]
