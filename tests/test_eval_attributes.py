"""The attribute instruments (evaluate/attributes.py): the classifiers learn, retrain bit for bit, and
their held-out report is consistent (confusion rows sum to the class counts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spritegen.data.synthetic import make_sprites
from spritegen.data.vocab import COLOUR_NAMES, TYPES
from spritegen.evaluate.attributes import (
    CLASSES, N_PIXEL_FEATURES, class_report, pixel_feature_matrix, record_label, save_confusion_plot,
    train_classifiers,
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
