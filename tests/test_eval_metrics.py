"""Metric maths against closed forms and reference implementations (torchmetrics, prdc, lpips)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spritegen.evaluate import metrics as M

# --- Fréchet distance -------------------------------------------------------------------------------


def test_fd_closed_form_isotropic_gaussians():
    d = 7
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    a, b = 2.0, 0.5
    expected = d * 0.25 + d * (a + b - 2 * np.sqrt(a * b))
    assert M.frechet_distance(mu1, a * np.eye(d), mu2, b * np.eye(d)) == pytest.approx(expected, rel=1e-10)


def test_fd_matches_sqrtm_form_for_general_covariances():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    # the suite's form, with the reference's square root precomputed
    assert M.frechet_distance_to(mu1, s1, mu2, s2, M.psd_sqrt(s2)) == pytest.approx(expected, rel=1e-8)


def test_fd_of_a_set_with_itself_is_zero_and_sampled_gaussians_approach_the_closed_form():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16))
    assert abs(M.fd(x, x)) < 1e-8
    # fewer samples than dimensions (singular covariance) must still work
    assert abs(M.fd(x[:8], x[:8])) < 1e-5  # rank 7 of 16: sqrt of round-off eigenvalues ~1e-8 each
    big_a = rng.normal(size=(20000, 4))
    big_b = rng.normal(size=(20000, 4)) * 2 + 1
    expected = 4 * 1 + 4 * (1 + 4 - 2 * 2)  # |mu|² + tr(I + 4I - 2·2I)
    assert M.fd(big_a, big_b) == pytest.approx(expected, rel=0.05)


class _Identity(torch.nn.Module):
    """A torchmetrics "feature extractor" that passes our features through."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x


def test_fd_and_kid_parity_with_torchmetrics_on_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    rng = np.random.default_rng(2)
    real = rng.normal(size=(80, 12))
    fake = rng.normal(size=(80, 12)) * 1.3 + 0.2
    fid = FrechetInceptionDistance(feature=_Identity(12))
    fid.update(torch.from_numpy(real), real=True)
    fid.update(torch.from_numpy(fake), real=False)
    assert M.fd(fake, real) == pytest.approx(float(fid.compute()), rel=1e-9)
    # one subset as large as the sets: the subset is the whole (permuted) set, so no randomness remains
    kid_tm = KernelInceptionDistance(feature=_Identity(12), subsets=1, subset_size=80)
    kid_tm.update(torch.from_numpy(real), real=True)
    kid_tm.update(torch.from_numpy(fake), real=False)
    ours, _ = M.kid(fake, real, np.random.default_rng(0), n_subsets=1, subset_size=80)
    assert ours == pytest.approx(float(kid_tm.compute()[0]), rel=1e-9)


def test_kid_subset_size_adapts_and_is_near_zero_for_one_distribution():
    assert M.kid_subset_size(50, 300) == 50
    assert M.kid_subset_size(5000, 3000) == 1000
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, _ = M.kid(a, b, rng, n_subsets=20)
    shifted, _ = M.kid(a, b + 1, rng, n_subsets=20)
    assert abs(same) < 0.02 < shifted
    with pytest.raises(ValueError):
        M.kid(a[:10], b, rng, subset_size=20)


def test_fd_infinity_removes_the_small_sample_bias():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(5000, 8))
    gen = rng.normal(size=(600, 8))
    fd_n = M.fd(gen, ref)
    fd_inf = M.fd_infinity(gen, ref, rng)
    assert fd_n > 0.01  # FD of two samples of one distribution is biased upwards at N = 600
    assert abs(fd_inf) < fd_n


# --- precision / recall / density / coverage ----------------------------------------------------------


def test_prdc_parity_with_the_prdc_package():
    prdc = pytest.importorskip("prdc")
    rng = np.random.default_rng(5)
    real = rng.normal(size=(600, 24))
    fake = rng.normal(size=(500, 24)) * 0.8 + 0.3
    ref = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    ours = M.prdc(real, fake, k=5, chunk=128)  # small chunks: the chunked path is the one tested
    for key in ("precision", "recall", "density", "coverage"):
        assert ours[key] == pytest.approx(float(ref[key]), abs=1e-12), key


def test_precomputed_distance_and_kernel_paths_equal_the_direct_ones():
    """The suite computes distances/kernels once and indexes them (bootstrap); same numbers."""
    rng = np.random.default_rng(14)
    real, fake = rng.normal(size=(120, 10)), rng.normal(size=(90, 10)) + 0.2
    cols = rng.integers(0, 90, size=90)  # a bootstrap resample, with repeats
    direct = M.prdc(real, fake[cols], k=5)
    pre = M.prdc_from_distances(M.pairwise_distances(real, fake), M.pairwise_distances(fake), M.knn_radii(real, 5), 5, cols)
    for key in direct:
        assert pre[key] == pytest.approx(direct[key], abs=1e-12), key
    a = M.kid(fake[cols], real, np.random.default_rng(0), n_subsets=5, subset_size=60)
    b = M.kid_from_kernels(M.poly_kernel(fake, fake), M.poly_kernel(real, real), M.poly_kernel(fake, real),
                           np.random.default_rng(0), 5, 60, rows_a=cols)
    assert a[0] == pytest.approx(b[0], rel=1e-10)


@pytest.mark.slow
def test_prdc_readme_sanity_values_identical_gaussians():
    """prdc's README: N(0, I) vs N(0, I), 10,000 × 1,000-d each, k = 5 -> density ≈ 1.056, coverage ≈ 0.974
    (one random draw). Density's expectation is exactly 1 and coverage's 1 - 2^-k ≈ 0.969 (Naeem et al.,
    Lemma 2); in 1,000-d hubness makes density vary by about ±0.08 between draws, hence the tolerance."""
    rng = np.random.default_rng(1)
    real = rng.normal(size=(10000, 1000)).astype(np.float32)
    fake = rng.normal(size=(10000, 1000)).astype(np.float32)
    out = M.prdc(real, fake, k=5)
    assert out["density"] == pytest.approx(1.056, abs=0.15)
    assert out["coverage"] == pytest.approx(0.974, abs=0.02)
    assert out["coverage"] == pytest.approx(1 - 0.5**5, abs=0.02)


def test_prdc_detects_a_collapsed_generator():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(400, 8))
    collapsed = np.repeat(rng.normal(size=(1, 8)) * 0.1, 400, axis=0) + rng.normal(size=(400, 8)) * 1e-3
    out = M.prdc(real, collapsed, k=5)
    assert out["coverage"] < 0.1 and out["recall"] < 0.1


# --- text alignment --------------------------------------------------------------------------------


def test_r_precision_is_one_for_an_oracle_and_chance_for_random_images():
    rng = np.random.default_rng(7)
    text = M.l2_normalise(rng.normal(size=(200, 32)))
    true = rng.integers(0, 200, size=2000)
    oracle = M.r_precision_hits(text[true], text, true, n_candidates=10, rng=rng)
    assert oracle.mean() == 1.0
    random_images = rng.normal(size=(2000, 32))
    hits = M.r_precision_hits(random_images, text, true, n_candidates=10, rng=rng)
    assert hits.mean() == pytest.approx(0.1, abs=0.025)
    constant = np.ones((50, 32))  # ties are misses: a constant image embedding is not an oracle
    assert M.r_precision_hits(constant, np.ones((5, 32)), np.zeros(50, int), 5, rng).mean() == 0


def test_clip_scores_and_retrieval_recall():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(30, 16))
    assert np.allclose(M.clip_scores(x, 3 * x), 1)
    r = M.retrieval_recall(x, x, ks=(1, 5))
    assert r["i2t_r@1"] == 1 and r["t2i_r@5"] == 1 and r["chance_r@1"] == pytest.approx(1 / 30)
    r = M.retrieval_recall(x, rng.normal(size=(30, 16)), ks=(1,))
    assert r["i2t_r@1"] < 0.3


def test_prompt_attribute_parsing():
    colours = ("black", "blue", "gray", "red", "white")
    types = ("fire", "water", "flying", "normal", "dragon")
    assert M.parse_colour("A small RED fire type pokemon with blue wings", colours) == "red"
    assert M.parse_colour("a grey creature", colours) == "gray"
    assert M.parse_colour("a creature", colours) is None
    assert M.parse_types("a red fire/flying type pokemon", types) == ("fire", "flying")
    assert M.parse_types("a red fire type dragon with blue wings", types) == ("fire",)
    assert M.parse_types("blue, water", types) == ("water",)


def test_attribute_codes_score_each_image_under_every_prompt():
    classes = ("fire", "water", "grass")
    wanted = [("fire",), ("water", "grass"), (), ("grass",)]
    predicted = ["fire", "grass", "water", "electric"]  # "electric" is outside the classes: never a hit
    want, pred = M.attribute_codes(wanted, predicted, classes)
    own = M.attribute_hits(want, pred)
    assert np.isnan(own[2])  # a prompt that asks for no class is not scored
    assert list(own[[0, 1, 3]]) == [1, 1, 0]  # fire = fire, grass in {water, grass}, electric
    assert list(want[1, pred]) == [0, 1, 1, 0]  # the water-or-grass prompt under each image's call
    # the shuffled chance is the mean of that table over scored prompts and all images
    table = want[:, pred][[0, 1, 3]]
    assert M.shuffled_chance(want, pred) == pytest.approx(table.mean()) == pytest.approx((1 + 2 + 1) / 12)


def test_shuffled_chance_gives_a_prompt_ignoring_generator_no_lift():
    rng = np.random.default_rng(3)
    types = ("fire", "water", "grass", "bug")
    wanted = [(t,) for t in rng.choice(types, size=300, p=[0.2, 0.4, 0.2, 0.2])]

    def score(predicted):
        want, pred = M.attribute_codes(wanted, predicted, types)
        return want, pred, float(np.nanmean(M.attribute_hits(want, pred)))

    # always "water": it scores the water share of the prompts (about 0.4, far above 1/4) and that is its
    # chance too, so its lift is 0 and the permutation test finds nothing
    want, pred, acc = score(["water"] * 300)
    assert acc > 0.3 and M.shuffled_chance(want, pred) == pytest.approx(acc)
    assert M.shuffle_test(want, pred, rng, n_perm=200) == 1.0
    # images that ignore the prompt but vary: lift near 0, p not small
    want, pred, acc = score(list(rng.choice(types, size=300)))
    assert abs(acc - M.shuffled_chance(want, pred)) < 0.08
    p_value = M.shuffle_test(want, pred, np.random.default_rng(5), n_perm=200)
    assert p_value > 0.01
    # drawing the permutations in chunks draws the same ones
    assert M.shuffle_test(want, pred, np.random.default_rng(5), n_perm=200, chunk=7) == p_value
    # an oracle: accuracy 1, chance = sum of squared class shares, p at its floor 1/(1 + n_perm)
    want, pred, acc = score([w[0] for w in wanted])
    shares = np.array([sum(w[0] == t for w in wanted) for t in types]) / 300
    assert acc == 1 and M.shuffled_chance(want, pred) == pytest.approx((shares ** 2).sum())
    assert M.shuffle_test(want, pred, rng, n_perm=200) == pytest.approx(1 / 201)
    # a bootstrap index of the samples selects prompts and images together
    idx = np.array([0, 0, 5, 9])
    assert M.shuffled_chance(want, pred, idx) == pytest.approx(want[idx][:, pred[idx]].mean())


def test_per_class_following_separates_followed_ignored_and_unmeasured_classes():
    classes = ("fire", "water", "grass")
    wanted = [("fire",)] * 4 + [("water",)] * 4 + [("grass", "water")] * 2
    # fire prompts give fire; water prompts give grass as often as anything else does; nothing is ever
    # called water (the scorer never names it), so water is not measured, not "not followed"
    predicted = ["fire"] * 4 + ["grass", "fire", "grass", "fire"] + ["grass", "fire"]
    per = M.per_class_following(*M.attribute_codes(wanted, predicted, classes), classes)
    assert per["fire"] == {"n": 4, "called": 1.0, "share": 0.7, "lift": pytest.approx(0.3)}
    assert per["water"]["n"] == 6 and per["water"]["share"] == 0 and per["water"]["lift"] == 0
    assert per["grass"]["n"] == 2 and per["grass"]["called"] == 0.5 and per["grass"]["lift"] == pytest.approx(0.5 - 0.3)


# --- diversity and collapse --------------------------------------------------------------------------


def test_diversity_metrics_are_zero_for_a_constant_generator():
    rng = np.random.default_rng(9)
    gray = np.full((20, 3, 16, 16), 128, dtype=np.uint8)
    assert M.channel_std(gray) == 0
    assert M.value_range(gray) == 0
    assert M.unique_pixel_fraction(gray) == pytest.approx(1 / (20 * 16 * 16))
    feats = np.repeat(rng.normal(size=(1, 8)), 20, axis=0)
    pairs = M.pair_indices(list(range(20)), within=False, rng=rng)
    assert M.mean_pairwise(lambda i, j: np.linalg.norm(feats[i] - feats[j], axis=1), pairs) == 0
    assert M.vendi_score(feats) == pytest.approx(1.0)
    # a constant *sprite* (not gray) also has zero spread across samples
    sprite = rng.integers(0, 256, size=(1, 3, 16, 16), dtype=np.uint8)
    assert M.channel_std(np.repeat(sprite, 10, axis=0)) == 0


def test_diversity_metrics_for_varied_images_and_vendi_of_orthogonal_features():
    rng = np.random.default_rng(10)
    noise = rng.integers(0, 256, size=(20, 3, 16, 16), dtype=np.uint8)
    assert M.value_range(noise) > 0.98 and M.channel_std(noise) > 0.25 and M.unique_pixel_fraction(noise) > 0.9
    assert M.vendi_score(np.eye(12)) == pytest.approx(12.0)


def test_pair_indices_within_and_across_groups():
    rng = np.random.default_rng(11)
    groups = ["a", "a", "b", "b", "b"]
    within = M.pair_indices(groups, True, rng)
    across = M.pair_indices(groups, False, rng)
    assert len(within) == 1 + 3 and len(across) == 6 and len(within) + len(across) == 10
    assert len(M.pair_indices(list(range(100)), False, rng, max_pairs=50)) == 50


def test_collapse_rubric_points_and_bands():
    # the seeds' collapsed GAN: gray outputs (tiny range), 113 of 245,760 values, no spread, no coverage
    collapsed = {"value_range_ratio": 0.02, "unique_pixel_ratio": 0.001, "channel_std_ratio": 0.01,
                 "pairwise_distance_ratio": 0.05, "coverage": 0.0}
    score, parts = M.collapse_score(collapsed)
    assert score == 15 and set(parts.values()) == {3}
    assert M.collapse_band(score) == "critical"
    healthy = {"value_range_ratio": 1.0, "unique_pixel_ratio": 0.9, "channel_std_ratio": 0.95,
               "pairwise_distance_ratio": 1.0, "coverage": 0.9}
    assert M.collapse_score(healthy)[0] == 0 and M.collapse_band(0) == "healthy"
    assert M.collapse_points(0.3, (0.5, 0.25, 0.1)) == 1  # 0.3 >= 0.25: the 1-point band
    assert M.collapse_points(float("nan"), (0.5, 0.25, 0.1)) == 3
    assert [M.collapse_band(s) for s in (4, 5, 7, 8, 11, 12)] == ["healthy", "warning", "warning", "collapsed",
                                                                 "collapsed", "critical"]


# --- memorisation and bootstrap --------------------------------------------------------------------


def test_nearest_distances_find_exact_copies():
    rng = np.random.default_rng(12)
    train = rng.integers(0, 256, size=(30, 3, 8, 8), dtype=np.uint8)
    copies = train[[4, 17]]
    d, idx = M.nearest_distances(M.pixel_vectors(copies), M.pixel_vectors(train))
    assert np.allclose(d, 0) and list(idx) == [4, 17]
    white, black = np.full((1, 3, 8, 8), 255, np.uint8), np.zeros((1, 3, 8, 8), np.uint8)
    d, _ = M.nearest_distances(M.pixel_vectors(white), M.pixel_vectors(black))
    assert d[0] == pytest.approx(1.0)  # RMS distance in [0, 1] units


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(13)
    x = rng.normal(size=400)
    ci = M.bootstrap_ci(lambda i: x[i].mean(), len(x), 300, rng, point=x.mean())
    assert ci[0] < x.mean() < ci[1]
    assert ci[1] - ci[0] == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.25)
    # a biased set statistic: the interval is moved to bracket the point estimate
    ci = M.interval_from_replicates([2.0, 2.1, 2.2, 2.3], point=1.0)
    assert ci[0] < 1.0 < ci[1]
    # a discrete statistic: the shift alone gave [0.02, 0.02] around a point of 0
    ci = M.interval_from_replicates([1.0] * 98 + [0.0] * 2, point=0.0)
    assert ci[0] <= 0.0 <= ci[1]
    assert M.bootstrap_ci(lambda i: 0.0, 1, 10, rng) is None


# --- perceptual distance ------------------------------------------------------------------------------


def test_lpips_embedding_equals_lpips_distance():
    """Our LPIPS-as-embedding (used when AlexNet weights are cached) against lpips' own forward, on a
    randomly initialised AlexNet (no download) with lpips' shipped linear weights."""
    from spritegen.evaluate.features import lpips_embedder

    embed = lpips_embedder(pnet_rand=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    e = embed(x)
    ours = ((e[:2] - e[2:]) ** 2).sum(1)
    with torch.no_grad():
        ref = embed.lpips(x[:2].float() / 127.5 - 1, x[2:].float() / 127.5 - 1).flatten().numpy()
    assert np.allclose(ours, ref, rtol=1e-4, atol=1e-6)
