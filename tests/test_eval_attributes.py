"""The attribute instruments (evaluate/attributes.py): the classifiers learn, retrain bit for bit, and
their held-out report is consistent (confusion rows sum to the class counts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spritegen.data.synthetic import make_sprites
from spritegen.data.vocab import COLOUR_NAMES, TYPES
from spritegen.evaluate.attributes import (
    CLASSES, N_PIXEL_FEATURES, class_report, fit_probe, out_of_fold_logits, pixel_feature_matrix, record_label,
    save_confusion_plot, species_folds, train_classifiers,
)

INPUTS = {"type": "pixels+evaluator", "colour": "pixels"}
L2 = {"type": 0.04, "colour": 0.01}


@pytest.fixture(scope="module")
def synthetic():
    """Flat-coloured blobs: colour is learnable from pixels; held-out sprites are other draws."""
    train = make_sprites(200, 16, seed=1)
    held = make_sprites(100, 16, seed=2, start=1000)
    rng = np.random.default_rng(0)
    emb = [rng.standard_normal((len(x), 8)) for x, _ in (train, held)]  # a stand-in evaluator embedding
    return train, held, emb


def test_pixel_features_shape_and_blank_image():
    images = make_sprites(4, 16, seed=0)[0]
    feats = pixel_feature_matrix(images)
    assert feats.shape == (4, N_PIXEL_FEATURES) and np.isfinite(feats).all()
    blank = np.full((1, 3, 16, 16), 255, np.uint8)  # no foreground at all: zeros, not NaN
    assert np.array_equal(pixel_feature_matrix(blank), np.zeros((1, N_PIXEL_FEATURES)))


def test_colour_classifier_learns_above_chance(synthetic):
    (x_tr, r_tr), (x_he, r_he), (e_tr, e_he) = synthetic
    clf = train_classifiers(x_tr, e_tr, r_tr, INPUTS, L2, max_iter=300)
    calls = clf.classify(x_he, e_he)
    true = np.array([record_label(r, "colour") for r in r_he])
    acc = float((calls["colour"] == true).mean())
    # chance is 1/10; flat colours are nearly all nameable from the colour shares (white on white is not
    # drawn, so it is named only by having no foreground): demand at least 0.7 above chance
    assert acc >= 1 / len(COLOUR_NAMES) + 0.7, acc
    assert set(calls) == {"type", "colour"} and calls["type"].max() < len(TYPES)


def test_retraining_gives_identical_weights(synthetic):
    (x_tr, r_tr), _, (e_tr, _) = synthetic
    a = train_classifiers(x_tr, e_tr, r_tr, INPUTS, L2, max_iter=100).tensors()
    b = train_classifiers(x_tr, e_tr, r_tr, INPUTS, L2, max_iter=100).tensors()
    assert a.keys() == b.keys() == {f"{k}.{t}" for k in CLASSES for t in ("mean", "std", "weight", "bias")}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["type.weight"].shape == (len(TYPES), N_PIXEL_FEATURES + 8)  # pixels + the embedding
    assert a["colour.weight"].shape == (len(COLOUR_NAMES), N_PIXEL_FEATURES)


def test_report_rows_sum_to_class_counts(tmp_path):
    rng = np.random.default_rng(0)
    classes = ("a", "b", "c", "d")
    true = rng.choice(3, size=50)  # class "d" never occurs: its recall is None, not 0
    pred = np.where(rng.random(50) < 0.6, true, rng.choice(4, size=50))
    pred[true == 2] = 0  # class "c" is never named
    rep = class_report(true, pred, classes)
    m = np.array(rep["confusion"]["matrix"])
    assert rep["confusion"]["classes"] == list(classes)
    assert np.array_equal(m.sum(1), np.bincount(true, minlength=4)) and m.sum() == rep["n"] == 50
    assert [rep["per_class"][c]["n"] for c in classes] == np.bincount(true, minlength=4).tolist()
    assert rep["per_class"]["d"]["recall"] is None and rep["per_class"]["c"]["recall"] == 0.0
    assert rep["never_named"] == ["c"]
    recalls = [rep["per_class"][c]["recall"] for c in "abc"]
    assert rep["balanced_acc"] == pytest.approx(np.mean(recalls))
    assert rep["acc"] == pytest.approx((true == pred).mean())
    save_confusion_plot({"x": rep, "y": rep, "z": rep}, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0


def test_species_folds_keep_each_species_in_one_fold():
    groups = np.array([7, 3, 7, 1, 9, 3, 4, 1, 8, 2, 7])  # 7 species, some with several sprites (forms)
    fold = species_folds(groups, 3)
    assert all(len(set(fold[groups == g])) == 1 for g in np.unique(groups))
    assert set(fold.tolist()) == {0, 1, 2}  # the sorted species dealt round-robin: 3, 2, 2 per fold
    assert np.array_equal(fold, species_folds(groups, 3))  # no random draw
    assert fold[groups == 1][0] == 0 and fold[groups == 2][0] == 1 and fold[groups == 9][0] == 0


def test_out_of_fold_logits_never_see_their_own_fold(synthetic):
    """A row's logits come from a probe that never saw its fold: relabelling fold 0 leaves fold 0's
    logits as they were (a leak would move them) and moves the other folds'."""
    (x_tr, r_tr), _, _ = synthetic
    x = pixel_feature_matrix(x_tr)
    y = np.array([record_label(r, "type") for r in r_tr])
    groups = np.array([r.dex for r in r_tr])
    args = (CLASSES["type"], "pixels", 0.04, 50)
    logits = out_of_fold_logits(x, y, groups, *args, k=4)
    fold0 = species_folds(groups, 4) == 0
    direct = fit_probe(x[~fold0], y[~fold0], *args).logits(x[fold0]).numpy()
    assert logits.shape == (len(y), len(TYPES)) and np.array_equal(logits[fold0], direct)
    y2 = y.copy()
    y2[fold0] = (y[fold0] + 1) % len(TYPES)
    relabelled = out_of_fold_logits(x, y2, groups, *args, k=4)
    assert np.array_equal(relabelled[fold0], logits[fold0])
    assert not np.allclose(relabelled[~fold0], logits[~fold0])
