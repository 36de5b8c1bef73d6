"""The attribute instruments: linear classifiers that call a sprite's primary type and primary colour.

Trained by the evaluator stage (``spritegen evaluator``) right after the contrastive training, on the
train split only, and validated on held-out species (val + test). They replace the evaluator's zero-shot
calls as the suite's main attribute instrument (``attr_type_acc``, ``attr_colour_acc``): the zero-shot
calls never named some classes (ice, water) on real sprites; a class-balanced classifier names them all.

Each classifier is a class-balanced multinomial logistic regression (a linear probe) on standardised
inputs, fitted by full-batch L-BFGS in float64 (deterministic for a pinned thread count). Inputs:

* ``pixels``: cheap statistics of the foreground (background flood-filled from the border, as
  ``spritegen.data.colour`` does): the ten Pokédex colour shares of the pixel rule that labelled the
  data, a 12-hue x 3-lightness histogram of chromatic pixels plus 3 lightness bins of achromatic ones,
  and the silhouette's fill fraction, height and width;
* ``pixels+evaluator``: the same, followed by the frozen evaluator's image embedding.

Why a linear probe and not a small CNN: on the default data a CNN (flips, class-balanced loss) scored no
better on held-out species for type (0.25-0.26) and worse for colour (0.69-0.70), and took ~100 s per
attribute on 2 cores where the probes take about a second (docs/evaluation.md).

Settings are judged on ``out_of_fold_logits`` (species-grouped folds of the train split, never val/test):
there the type probe's L2 0.04 beat 0.01-3 and pixels alone, and post-hoc per-class logit offsets
fitted the same way lowered balanced accuracy, so the probe has none (docs/evaluation.md).

Weights are saved in the evaluator's ``model.safetensors`` (``attr.<attribute>.*``), so the evaluator's
``backend_id`` names them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spritegen.data.vocab import COLOUR_NAMES, TYPES

# attribute -> its classes, in the order of the classifier's outputs
CLASSES: dict[str, tuple[str, ...]] = {"type": tuple(TYPES), "colour": tuple(COLOUR_NAMES)}
INPUTS = ("pixels", "pixels+evaluator")
HUE_BINS, LIGHTNESS_BINS = 12, 3
N_PIXEL_FEATURES = len(COLOUR_NAMES) + HUE_BINS * LIGHTNESS_BINS + LIGHTNESS_BINS + 3


def record_label(record, attribute: str) -> int:
    """The class index a sprite's record gives: its primary (first) type, its primary colour."""
    if attribute == "type":
        return TYPES.index(record.types[0])
    return COLOUR_NAMES.index(record.primary_colour)


# --- inputs -----------------------------------------------------------------------------------------


def pixel_features(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 on a white page -> (N_PIXEL_FEATURES,) float64 foreground statistics."""
    from spritegen.data.colour import ACHROMATIC_CHROMA, colour_shares, foreground_mask, srgb_to_lab

    fg = foreground_mask(image)  # computed once, shared by the shares and the histogram
    shares = colour_shares(image, mask=fg)
    out = [np.array([shares.get(c, 0.0) for c in COLOUR_NAMES])]
    lab = srgb_to_lab(image[fg]) if fg.any() else np.zeros((0, 3))  # (P, 3)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    hue_bin = (np.degrees(np.arctan2(lab[:, 2], lab[:, 1])) % 360 // (360 / HUE_BINS)).astype(np.int64)
    light_bin = np.clip(lab[:, 0] // (100 / LIGHTNESS_BINS), 0, LIGHTNESS_BINS - 1).astype(np.int64)
    chromatic = chroma >= ACHROMATIC_CHROMA
    hist = np.zeros((HUE_BINS + 1, LIGHTNESS_BINS))  # the last row: achromatic pixels, by lightness only
    np.add.at(hist, (np.where(chromatic, np.minimum(hue_bin, HUE_BINS - 1), HUE_BINS), light_bin), 1.0)
    out.append(hist.ravel() / max(1, len(lab)))
    rows, cols = np.nonzero(fg)
    h, w = fg.shape
    box = [(rows.max() - rows.min() + 1) / h, (cols.max() - cols.min() + 1) / w] if len(rows) else [0.0, 0.0]
    out.append(np.array([fg.mean(), *box]))  # body shape says something about type (snakes, birds)
    return np.concatenate(out)


def pixel_feature_matrix(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 (N, 3, H, W) -> (N, N_PIXEL_FEATURES)."""
    images = np.asarray(images)
    if len(images) == 0:
        return np.zeros((0, N_PIXEL_FEATURES))
    return np.stack([pixel_features(np.ascontiguousarray(im.transpose(1, 2, 0))) for im in images])


def probe_inputs(pixels: np.ndarray, embedding: np.ndarray, inputs: str) -> np.ndarray:
    """The (N, D) rows a probe reads: pixel statistics, optionally followed by the evaluator embedding."""
    return np.concatenate([pixels, embedding], 1) if inputs == "pixels+evaluator" else pixels


# --- the classifier ---------------------------------------------------------------------------------


@dataclass
class LinearProbe:
    """``argmax(((x - mean) / std) @ weight.T + bias)`` over ``classes``."""

    classes: tuple[str, ...]
    inputs: str  # one of INPUTS
    mean: torch.Tensor  # (D,) float64
    std: torch.Tensor  # (D,)
    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)

    def logits(self, x: np.ndarray) -> torch.Tensor:
        z = (torch.as_tensor(x, dtype=torch.float64) - self.mean) / self.std  # (N, D)
        return z @ self.weight.T + self.bias  # (N, K)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(1).numpy()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std, "weight": self.weight, "bias": self.bias}


def fit_probe(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...], inputs: str, l2: float,
              max_iter: int) -> LinearProbe:
    """Class-balanced softmax regression: minimise mean_i w_{y_i} CE_i + l2/2 |W|^2 by full-batch L-BFGS.

    ``w_k = N / (K N_k)`` (each class weighs the same in total), so rare classes such as flying and ice
    are still called; classes absent from ``y`` get no weight and their bias sinks below the others'.
    No random draw anywhere: the weights start at zero, so a refit is bitwise the same."""
    x = torch.as_tensor(x, dtype=torch.float64)  # (N, D)
    y = torch.as_tensor(y, dtype=torch.int64)  # (N,)
    k = len(classes)
    mean = x.mean(0)
    std = x.std(0, correction=0).clamp(min=1e-6)  # constant inputs (an empty hue bin) stay zero
    z = (x - mean) / std
    counts = torch.bincount(y, minlength=k).double()
    class_weight = torch.where(counts > 0, len(y) / (k * counts.clamp(min=1)), torch.zeros_like(counts))
    weight = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        ce = F.cross_entropy(z @ weight.T + bias, y, reduction="none")  # (N,)
        loss = (ce * class_weight[y]).sum() / class_weight[y].sum() + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(classes, inputs, mean, std, weight.detach().clone(), bias.detach().clone())


@dataclass
class AttributeClassifiers:
    """The type and colour probes, and how to call them on images."""

    probes: dict[str, LinearProbe]  # "type" | "colour" -> its probe

    def classify(self, images: np.ndarray | torch.Tensor, embedding: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (N, 3, H, W) and their evaluator embeddings (N, E) -> attribute -> (N,) class index."""
        pixels = pixel_feature_matrix(images)
        return {a: p.predict(probe_inputs(pixels, embedding, p.inputs)) for a, p in self.probes.items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``<attribute>.<name>`` tensors for the evaluator's safetensors file."""
        return {f"{a}.{k}": v for a, p in self.probes.items() for k, v in p.tensors().items()}

    @classmethod
    def from_tensors(cls, flat: dict[str, torch.Tensor], inputs: dict[str, str]) -> "AttributeClassifiers":
        probes = {}
        for a, classes in CLASSES.items():
            t = {k: flat[f"{a}.{k}"] for k in ("mean", "std", "weight", "bias")}
            probes[a] = LinearProbe(classes, inputs[a], t["mean"], t["std"], t["weight"], t["bias"])
        return cls(probes)


def train_classifiers(images: torch.Tensor, embedding: np.ndarray, records: list, inputs: dict[str, str],
                      l2: dict[str, float], max_iter: int) -> AttributeClassifiers:
    """Fit both probes on the train split's images, evaluator embeddings and labels."""
    pixels = pixel_feature_matrix(images)
    probes = {}
    for a, classes in CLASSES.items():
        y = np.array([record_label(r, a) for r in records])
        probes[a] = fit_probe(probe_inputs(pixels, embedding, inputs[a]), y, classes, inputs[a], l2[a], max_iter)
    return AttributeClassifiers(probes)


# --- choosing the settings: species-grouped cross-validation on the train split ----------------------


def species_folds(groups: np.ndarray, k: int) -> np.ndarray:
    """(N,) fold index in [0, k) for each sprite, with every sprite of a species (``groups``, e.g. the
    dex number) in one fold, so a fold stands in for held-out species. The sorted species are dealt
    round-robin: no random draw, and each fold spans every generation."""
    species, index = np.unique(np.asarray(groups), return_inverse=True)
    return (np.arange(len(species)) % k)[index]


def out_of_fold_logits(x: np.ndarray, y: np.ndarray, groups: np.ndarray, classes: tuple[str, ...],
                       inputs: str, l2: float, max_iter: int, k: int = 5) -> np.ndarray:
    """(N, K) logits of each train sprite from a probe fitted on the other ``k - 1`` folds (``species_folds``).

    What the probes' settings (inputs, L2 penalty) were chosen on, and what any post-hoc correction of
    the logits would have to be fitted and judged on; never the val/test sprites (docs/evaluation.md)."""
    fold = species_folds(groups, k)
    out = np.zeros((len(y), len(classes)))
    for j in range(k):
        probe = fit_probe(x[fold != j], y[fold != j], classes, inputs, l2, max_iter)
        out[fold == j] = probe.logits(x[fold == j]).numpy()
    return out


# --- how well an instrument names the classes -------------------------------------------------------


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) int: row = true class, column = predicted class (rows sum to the class counts)."""
    m = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(m, (np.asarray(true, np.int64), np.asarray(pred, np.int64)), 1)
    return m


def class_report(true: np.ndarray, pred: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Accuracy, balanced accuracy (mean recall over the classes present), per-class recall and count,
    the classes never predicted, and the confusion matrix with its class names."""
    m = confusion_matrix(true, pred, len(classes))
    n = m.sum(1)
    present = n > 0
    recall = np.divide(np.diag(m), n, out=np.zeros(len(classes)), where=present)
    return {
        "n": int(n.sum()),
        "acc": float(np.trace(m) / max(1, n.sum())),
        "balanced_acc": float(recall[present].mean()) if present.any() else 0.0,
        "per_class": {c: {"recall": float(recall[i]) if present[i] else None, "n": int(n[i])}
                      for i, c in enumerate(classes)},
        "never_named": [c for i, c in enumerate(classes) if present[i] and m[i, i] == 0],
        "confusion": {"classes": list(classes), "matrix": m.tolist()},
    }


def save_confusion_plot(reports: dict[str, dict], path: str | Path) -> None:
    """One panel per report (title = key), two per row: row-normalised confusion matrix, counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(reports) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(13, 6.5 * rows), squeeze=False)
    for ax in axes.flat[len(reports):]:
        ax.axis("off")
    for ax, (title, rep) in zip(axes.flat, reports.items()):
        classes = rep["confusion"]["classes"]
        m = np.array(rep["confusion"]["matrix"])
        rate = m / np.maximum(1, m.sum(1, keepdims=True))  # rows: recall on the diagonal, whatever the count
        ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes, rotation=90, fontsize=7)
        ax.set_yticks(ticks, [f"{c} ({m[i].sum()})" for i, c in enumerate(classes)], fontsize=7)
        for i, j in zip(*np.nonzero(m)):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=5,
                    color="white" if rate[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true (held-out count)")
        ax.set_title(f"{title}: acc {rep['acc']:.2f}, balanced {rep['balanced_acc']:.2f}", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
