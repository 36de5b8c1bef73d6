"""The evaluation suite: every metric for one set of generated images, next to its floor and baselines.

    spritegen evaluate --family ldm                        # stage: samples/ldm -> metrics/ldm.json + plots
    spritegen evaluate --generated DIR --reference DIR [--prompts FILE] [--backend evaluator] [--out m.json]

``evaluate_images`` is the whole procedure on arrays (no I/O); ``main`` reads folders and writes files.

Reading a number: each metric comes with
* ``floor``: the same metric for real images (train sprites vs held-out sprites for fidelity and
  diversity, held-out sprites with their own prompts for alignment and memorisation): what a perfect
  generator would get at this sample count;
* ``baselines``: the same metric for a mean image, uniform noise and copies of training images;
* ``ci95``: a bootstrap interval over the generated samples, and ``n``.
Numbers from two different ``backend_id`` never compare. See docs/evaluation.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from spritegen.config import ConfigError
from spritegen.data.vocab import COLOUR_NAMES, TYPES
from spritegen.errors import UserError
from spritegen.evaluate import metrics as M
from spritegen.evaluate.baselines import BASELINES, baseline_images
from spritegen.evaluate.detail import DETAIL_ID, detail_features
from spritegen.evaluate.evaluator import COLOUR_TEMPLATES, TYPE_TEMPLATES, class_embeddings


@dataclass
class EvaluateConfig:
    backend: Literal["evaluator", "inception", "clip"] = field(
        default="evaluator", metadata={"doc": "feature space of FD/KID/PRDC/diversity: evaluator (offline), inception, clip"})
    inception_weights: str = field(default="", metadata={"doc": "local InceptionV3 weights file (torch-fidelity's FID weights) for backend inception"})
    clip_model: str = field(default="ViT-B-32", metadata={"doc": "open_clip model name for backend clip"})
    clip_weights: str = field(default="", metadata={"doc": "local open_clip/OpenAI checkpoint file for backend clip (and clip alignment)"})
    alignment: Literal["auto", "evaluator", "clip"] = field(
        default="auto", metadata={"doc": "text tower for CLIP score / R-precision / zero-shot attributes; auto: clip when backend is clip, else evaluator"})
    perceptual: Literal["auto", "lpips", "evaluator"] = field(
        default="auto", metadata={"doc": "perceptual distance: LPIPS-alex when its weights are in torch's hub cache (auto), else the evaluator's ViT tokens"})
    bootstrap: int = field(default=100, metadata={"ge": 0, "doc": "bootstrap resamples for the 95% intervals (0: no intervals)"})
    knn_k: int = field(default=5, metadata={"ge": 1, "doc": "k of the k-NN balls of precision/recall/density/coverage"})
    near_copy_threshold: float = field(default=0.05, metadata={"gt": 0, "doc": "a sample is a near-copy when its RMS pixel distance (in [0,1]) to the nearest training image is below this"})
    r_precision_candidates: int = field(default=10, metadata={"ge": 2, "doc": "prompts per R-precision trial (the true one + distractors): chance = 1/this"})
    kid_subsets: int = field(default=100, metadata={"ge": 1, "doc": "KID subsets (10 per bootstrap resample)"})
    kid_max_subset_size: int = field(default=1000, metadata={"ge": 2, "doc": "KID subset size = min(this, n_generated, n_reference)"})
    max_pairs: int = field(default=20000, metadata={"ge": 10, "doc": "pairs drawn for the mean pairwise distances"})
    fd_inf: bool = field(default=False, metadata={"doc": "also report FD-infinity (needs a few hundred samples to mean anything)"})
    seed: int = field(default=0, metadata={"ge": 0, "doc": "seeds subsets, distractors, baselines and the bootstrap"})
    threads: int = field(default=2, metadata={"ge": 0, "doc": "torch CPU threads of the reference and evaluate stages (0: leave as is, not pinned). The README's numbers were made with 2 (the 2-core machine); another count can change the last bits"})

    def validate(self) -> None:
        if self.backend == "inception" and not self.inception_weights:
            raise ConfigError("inception_weights: backend 'inception' needs a local weights file")
        if (self.backend == "clip" or self.alignment == "clip") and not self.clip_weights:
            raise ConfigError("clip_weights: backend/alignment 'clip' needs a local weights file")


# name -> (direction, group). group picks the floor: "fidelity" and "diversity" from train vs held-out,
# "alignment" and "memorisation" from held-out real sprites.
METRICS: dict[str, tuple[str, str]] = {
    "fd": ("lower", "fidelity"),
    "fd_detail": ("lower", "fidelity"),
    "fd_inf": ("lower", "fidelity"),
    "kid": ("lower", "fidelity"),
    "precision": ("higher", "fidelity"),
    "recall": ("higher", "fidelity"),
    "density": ("higher", "fidelity"),
    "coverage": ("higher", "fidelity"),
    "clip_score": ("higher", "alignment"),
    "r_precision": ("higher", "alignment"),
    "attr_colour_acc_pixels": ("higher", "alignment"),
    "attr_colour_acc_evaluator": ("higher", "alignment"),
    "attr_type_acc_evaluator": ("higher", "alignment"),
    "attr_colour_acc": ("higher", "alignment"),  # the evaluator's trained classifiers (evaluate/attributes.py)
    "attr_type_acc": ("higher", "alignment"),
    "perceptual_within_prompt": ("higher", "diversity"),
    "perceptual_across_prompts": ("higher", "diversity"),
    "pairwise_distance_across": ("higher", "diversity"),
    "unique_pixel_fraction": ("higher", "diversity"),
    "value_range": ("higher", "diversity"),
    "channel_std": ("higher", "diversity"),
    "vendi": ("higher", "diversity"),
    "collapse_score": ("lower", "diversity"),
    "nn_train_distance": ("higher", "memorisation"),
    "near_copy_fraction": ("lower", "memorisation"),
}
_UNIT = ("precision", "recall", "coverage", "r_precision", "attr_colour_acc_pixels", "attr_colour_acc_evaluator",
         "attr_type_acc_evaluator", "attr_colour_acc", "attr_type_acc", "unique_pixel_fraction", "value_range", "near_copy_fraction")
BOUNDS: dict[str, tuple[float, float]] = {
    **{k: (0.0, np.inf) for k in METRICS if k not in ("kid", "fd_inf", "clip_score")},
    **{k: (0.0, 1.0) for k in _UNIT},
    "clip_score": (-1.0, 1.0), "collapse_score": (0.0, 15.0),
}
PER_SAMPLE = ("clip_score", "r_precision", "attr_colour_acc_pixels", "attr_colour_acc_evaluator",
              "attr_type_acc_evaluator", "attr_colour_acc", "attr_type_acc", "nn_train_distance", "near_copy_fraction")


# --- the procedure on arrays ------------------------------------------------------------------------


@dataclass
class RealData:
    """The real images a score is read against, all uint8 (N, 3, R, R) at one resolution."""

    reference: np.ndarray  # held-out real sprites: the distribution FD/KID/PRDC compare with
    floor_train: np.ndarray  # other real sprites (train), for the fidelity/diversity floor and copies
    memorised: np.ndarray  # what a generator could have copied (the train split) for nn distances
    reference_prompts: list[str] | None = None  # one per reference image, for the alignment floor
    floor_groups: list[str] | None = None  # "same description" groups of floor_train (colour|type)
    reference_features: np.ndarray | None = None  # cached backend features of `reference`
    floor_train_features: np.ndarray | None = None

    @property
    def resolution(self) -> int:
        return int(self.reference.shape[-1])


@dataclass
class Scorer:
    """Models and real-data quantities shared by every scored set."""

    backend: object  # features.Backend
    align: object | None  # features.Backend with a text tower, or None
    perceptual_name: str
    perceptual: object  # images -> (N, P) embedding, squared distance = perceptual distance
    cfg: EvaluateConfig
    real: RealData
    ref_feats: np.ndarray = None
    ref_radii: np.ndarray = None
    ref_kernel: np.ndarray = None
    ref_stats: tuple = ()  # (mu, sigma, sqrt(sigma)) of the reference features
    ref_detail_stats: tuple = ()  # the same for the reference's detail features (fd_detail)
    memo_pixels: np.ndarray = None
    text_pool: list[str] = field(default_factory=list)
    text_pool_emb: np.ndarray | None = None
    colour_emb: np.ndarray | None = None
    type_emb: np.ndarray | None = None

    def prepare(self, extra_prompts: list[str] | None) -> None:
        r = self.real
        self.ref_feats = r.reference_features if r.reference_features is not None else self.backend.encode_images(torch.from_numpy(r.reference))
        self.ref_radii = M.knn_radii(self.ref_feats, min(self.cfg.knn_k, len(self.ref_feats) - 1))
        self.ref_kernel = M.poly_kernel(self.ref_feats, self.ref_feats)
        mu, sigma = M.gaussian_stats(self.ref_feats)
        self.ref_stats = (mu, sigma, M.psd_sqrt(sigma))
        mu, sigma = M.gaussian_stats(detail_features(r.reference))
        self.ref_detail_stats = (mu, sigma, M.psd_sqrt(sigma))
        self.memo_pixels = M.pixel_vectors(r.memorised)
        if self.align is not None:
            pool = set(extra_prompts or []) | set(r.reference_prompts or [])
            self.text_pool = sorted(pool)
            self.text_pool_emb = self.align.encode_texts(self.text_pool) if self.text_pool else None
            self.colour_emb = class_embeddings(self.align.encode_texts, COLOUR_NAMES, COLOUR_TEMPLATES)
            self.type_emb = class_embeddings(self.align.encode_texts, TYPES, TYPE_TEMPLATES)


@dataclass
class AttributeCalls:
    """One attribute accuracy's raw material, as ``M.attribute_codes`` gives it."""

    want: np.ndarray  # (N, C+1) 0/1: the classes each sample's prompt asks for (none: not scored)
    pred: np.ndarray  # (N,) index of the class the scorer calls each sample's image
    classes: tuple[str, ...]

    @classmethod
    def of(cls, wanted: list[tuple[str, ...]], predicted: list[str | None], classes: tuple[str, ...]) -> "AttributeCalls":
        return cls(*M.attribute_codes(wanted, predicted, classes), classes)


@dataclass
class Encoded:
    """One set of images with everything the metrics need, computed once (bootstrap reuses it)."""

    images: np.ndarray  # uint8 (N, 3, R, R)
    feats: np.ndarray  # (N, D) backend features
    detail: np.ndarray  # (N, detail_dim()) detail features (fd_detail)
    groups: np.ndarray  # (N,) group key per sample (prompt), for within/across pairs
    feat_dist: np.ndarray  # (N, N) Euclidean distances in feature space
    percep_d2: np.ndarray  # (N, N) perceptual distances (squared embedding distances)
    colours: list[np.ndarray]  # per image: its distinct colours, as ids into the set's distinct RGB codes
    n_colours: int  # distinct RGB codes over the whole set (the ids run 0 .. n_colours - 1)
    ref_dist: np.ndarray  # (R, N) distances from the reference features to these features
    k_self: np.ndarray  # (N, N) KID kernel among these features
    k_ref: np.ndarray  # (N, R) KID kernel to the reference features
    per_sample: dict[str, np.ndarray]  # metric -> (N,) values (NaN = not applicable)
    attributes: dict[str, AttributeCalls] = field(default_factory=dict)  # attribute accuracy -> its calls


def _features_and_perceptual(x: torch.Tensor, s: Scorer, features: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    joint = getattr(s.backend, "encode_with_tokens", None)
    if features is None and joint is not None and s.perceptual_name == f"evaluator-tokens@{s.backend.backend_id}":
        return joint(x)  # one forward pass for both
    feats = features if features is not None else s.backend.encode_images(x)
    return feats, s.perceptual(x)


def per_sample_metrics(images: np.ndarray, prompts: list[str] | None, s: Scorer, rng: np.random.Generator,
                       feats: np.ndarray, alignment: bool = True, memorisation: bool = True,
                       first: np.ndarray | None = None, inverse: np.ndarray | None = None,
                       x_unique: torch.Tensor | None = None) -> tuple[dict[str, np.ndarray], dict[str, AttributeCalls]]:
    """Metrics defined per sample (alignment, memorisation): metric -> (N,) values, NaN = not applicable,
    and for the attribute accuracies what was asked and what was called (for the prompt-shuffled chance
    and the per-class table).
    ``first``/``inverse`` map distinct images to samples (from ``np.unique``) so each is measured once."""
    from spritegen.data.colour import measure_colours

    if first is None:
        first, inverse = np.arange(len(images)), np.arange(len(images))
    per: dict[str, np.ndarray] = {}
    attrs: dict[str, AttributeCalls] = {}
    if alignment and prompts is not None and s.align is not None:
        if s.align is s.backend:
            img_emb = feats
        else:
            x = x_unique if x_unique is not None else torch.from_numpy(np.ascontiguousarray(images[first]))
            img_emb = s.align.encode_images(x)[inverse]
        index = {p: i for i, p in enumerate(s.text_pool)}
        true = np.array([index[p] for p in prompts])
        per["clip_score"] = M.clip_scores(img_emb, s.text_pool_emb[true])
        if len(s.text_pool) >= 2:
            per["r_precision"] = M.r_precision_hits(img_emb, s.text_pool_emb, true, s.cfg.r_precision_candidates, rng)
        want_colour = [(c,) if (c := M.parse_colour(p, COLOUR_NAMES)) else () for p in prompts]
        want_types = [M.parse_types(p, TYPES) for p in prompts]
        measured_u = [measure_colours(np.ascontiguousarray(im.transpose(1, 2, 0)))[0] for im in images[first]]
        zc = M.zero_shot_predict(img_emb, s.colour_emb)
        zt = M.zero_shot_predict(img_emb, s.type_emb)
        attrs["attr_colour_acc_pixels"] = AttributeCalls.of(want_colour, [measured_u[i] for i in inverse], COLOUR_NAMES)
        attrs["attr_colour_acc_evaluator"] = AttributeCalls.of(want_colour, [COLOUR_NAMES[z] for z in zc], COLOUR_NAMES)
        attrs["attr_type_acc_evaluator"] = AttributeCalls.of(want_types, [TYPES[z] for z in zt], TYPES)
        if s.align.classify_attributes is not None:  # the evaluator's trained classifiers; a CLIP tower has none
            # an evaluator trained before them raises here, naming the command that retrains it
            calls = s.align.classify_attributes(images[first], img_emb[first])
            attrs["attr_colour_acc"] = AttributeCalls.of(want_colour, [COLOUR_NAMES[calls["colour"][i]] for i in inverse], COLOUR_NAMES)
            attrs["attr_type_acc"] = AttributeCalls.of(want_types, [TYPES[calls["type"][i]] for i in inverse], TYPES)
        per.update({name: M.attribute_hits(a.want, a.pred) for name, a in attrs.items()})
    if memorisation:
        # a mirrored copy is a copy too (training used flips): the distance is the smaller of the two
        d, _ = M.nearest_distances(M.pixel_vectors(images[first]), s.memo_pixels)
        d_flip, _ = M.nearest_distances(M.pixel_vectors(images[first][..., ::-1]), s.memo_pixels)
        per["nn_train_distance"] = np.minimum(d, d_flip)[inverse]
        per["near_copy_fraction"] = (per["nn_train_distance"] < s.cfg.near_copy_threshold).astype(np.float64)
    return per, attrs


def encode(images: np.ndarray, prompts: list[str] | None, groups: list[str] | None, s: Scorer,
           rng: np.random.Generator, features: np.ndarray | None = None, alignment: bool = True,
           memorisation: bool = True) -> Encoded:
    n = len(images)
    images = np.ascontiguousarray(images)
    # identical images (the mean-image baseline, duplicated samples) go through the networks once
    _, first, inverse = np.unique(images.reshape(n, -1), axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    x = torch.from_numpy(images[first])
    feats_u, emb = _features_and_perceptual(x, s, features[first] if features is not None else None)
    feats = feats_u[inverse]
    emb = np.asarray(emb, np.float32)
    sq = (emb.astype(np.float64) ** 2).sum(1)
    d2_u = np.clip(sq[:, None] + sq[None, :] - 2 * (emb @ emb.T).astype(np.float64), 0, None)
    percep_d2 = d2_u[np.ix_(inverse, inverse)]
    del emb, d2_u
    rgb = images.transpose(0, 2, 3, 1).astype(np.uint32)
    codes = np.sort(((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]).reshape(n, -1), axis=1)  # (N, H*W)
    first_of_run = np.ones(codes.shape, bool)  # each image's distinct colours: np.unique per row, at once
    first_of_run[:, 1:] = codes[:, 1:] != codes[:, :-1]
    # numbered once over the set, so a subset's distinct colours are counted by marking ids, not by a unique
    palette, ids = np.unique(codes[first_of_run], return_inverse=True)
    colours = np.split(ids.reshape(-1), np.cumsum(first_of_run.sum(1))[:-1])
    per, attrs = per_sample_metrics(images, prompts, s, rng, feats, alignment, memorisation, first, inverse, x)
    keys = groups if groups is not None else (prompts if prompts is not None else [str(i) for i in range(n)])
    key_codes = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return Encoded(images=images, feats=feats, detail=detail_features(images[first])[inverse], groups=np.array([key_codes[k] for k in keys]),
                   feat_dist=M.pairwise_distances(feats), percep_d2=percep_d2, colours=colours,
                   n_colours=len(palette), per_sample=per,
                   ref_dist=M.pairwise_distances(s.ref_feats, feats), k_self=M.poly_kernel(feats, feats),
                   k_ref=M.poly_kernel(feats, s.ref_feats), attributes=attrs)


def _pair_mean(matrix: np.ndarray, idx: np.ndarray, pairs: np.ndarray) -> float:
    if len(pairs) == 0:
        return float("nan")
    return float(matrix[idx[pairs[:, 0]], idx[pairs[:, 1]]].mean())


def set_metrics(e: Encoded, idx: np.ndarray, s: Scorer, rng: np.random.Generator, real_stats: dict | None,
                kid_subsets: int, with_fd_inf: bool = False) -> dict[str, float]:
    """The set-level metrics of samples ``idx`` of ``e`` (idx may repeat: bootstrap)."""
    cfg = s.cfg
    feats = e.feats[idx]
    images = e.images[idx]
    out: dict[str, float] = {}
    out["fd"] = M.frechet_distance_to(*M.gaussian_stats(feats), *s.ref_stats)
    out["fd_detail"] = M.frechet_distance_to(*M.gaussian_stats(e.detail[idx]), *s.ref_detail_stats)
    if with_fd_inf:
        out["fd_inf"] = M.fd_infinity(feats, s.ref_feats, rng)
    m = M.kid_subset_size(len(idx), len(s.ref_feats), cfg.kid_max_subset_size)
    out["kid"] = M.kid_from_kernels(e.k_self, s.ref_kernel, e.k_ref, rng, kid_subsets, m, rows_a=idx)[0]
    k = min(cfg.knn_k, len(idx) - 1, len(s.ref_feats) - 1)
    radii = s.ref_radii if k == cfg.knn_k else M.knn_radii(s.ref_feats, k)
    out.update(M.prdc_from_distances(e.ref_dist, e.feat_dist, radii, k, cols=idx))
    within = M.pair_indices(e.groups[idx], True, rng, cfg.max_pairs)
    across = M.pair_indices(e.groups[idx], False, rng, cfg.max_pairs)
    out["perceptual_within_prompt"] = _pair_mean(e.percep_d2, idx, within)
    out["perceptual_across_prompts"] = _pair_mean(e.percep_d2, idx, across)
    out["pairwise_distance_across"] = _pair_mean(e.feat_dist, idx, across)
    # = M.unique_pixel_fraction(images), from the per-image colour sets (much faster in the bootstrap)
    present = np.zeros(e.n_colours, bool)
    present[np.concatenate([e.colours[i] for i in np.unique(idx)])] = True
    n_colours = int(present.sum())
    out["unique_pixel_fraction"] = n_colours / (len(idx) * images.shape[2] * images.shape[3])
    out["value_range"] = M.value_range(images)
    out["channel_std"] = M.channel_std(images)
    out["vendi"] = M.vendi_score(feats)
    ref = real_stats or out

    def ratio(name: str) -> float:
        num, den = out[name], ref.get(name, float("nan"))
        return float(num / den) if den and np.isfinite(den) and np.isfinite(num) else 0.0

    score, _ = M.collapse_score({
        "value_range_ratio": ratio("value_range"),
        "unique_pixel_ratio": ratio("unique_pixel_fraction"),
        "channel_std_ratio": ratio("channel_std"),
        "pairwise_distance_ratio": ratio("pairwise_distance_across"),
        "coverage": out["coverage"],
    })
    out["collapse_score"] = float(score)
    return out


def collapse_details(values: dict[str, float], real_stats: dict[str, float]) -> dict:
    def ratio(name):
        den = real_stats.get(name)
        return float(values[name] / den) if den else 0.0

    ind = {"value_range_ratio": ratio("value_range"), "unique_pixel_ratio": ratio("unique_pixel_fraction"),
           "channel_std_ratio": ratio("channel_std"), "pairwise_distance_ratio": ratio("pairwise_distance_across"),
           "coverage": values["coverage"]}
    score, parts = M.collapse_score(ind)
    return {"score": score, "band": M.collapse_band(score), "points": parts, "indicators": ind,
            "rubric": {k: list(v) for k, v in M.COLLAPSE_RUBRIC.items()}}


def score_set(e: Encoded, s: Scorer, rng: np.random.Generator, real_stats: dict | None,
              bootstrap: int) -> dict[str, dict]:
    """Point value (and bootstrap interval) of every metric for an encoded set."""
    n = len(e.images)
    all_idx = np.arange(n)
    point = set_metrics(e, all_idx, s, rng, real_stats, s.cfg.kid_subsets, with_fd_inf=s.cfg.fd_inf)
    for name, v in e.per_sample.items():
        point[name] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    out = {name: {"value": v, "ci95": None} for name, v in point.items()}
    # an attribute accuracy is read against the same images under shuffled prompts (M.shuffled_chance);
    # the permutation test draws from its own generator so the other metrics' random streams stay put
    perm_rng = np.random.default_rng([s.cfg.seed, 1])
    for name, a in e.attributes.items():
        chance = M.shuffled_chance(a.want, a.pred)
        out[name]["chance"] = chance
        out[name]["lift"] = {"value": point[name] - chance, "ci95": None, "p_value": M.shuffle_test(a.want, a.pred, perm_rng)}
    if bootstrap > 0 and n >= 2:
        idx_list = [rng.integers(0, n, size=n) for _ in range(bootstrap)]
        reps = [set_metrics(e, idx, s, rng, real_stats, kid_subsets=10) for idx in idx_list]
        for idx, r in zip(idx_list, reps):
            for name, v in e.per_sample.items():
                r[name] = float(np.nanmean(v[idx])) if np.isfinite(v[idx]).any() else float("nan")
        for name, a in e.attributes.items():
            lifts = [r[name] - M.shuffled_chance(a.want, a.pred, idx) for idx, r in zip(idx_list, reps)]
            out[name]["lift"]["ci95"] = M.interval_from_replicates(lifts, out[name]["lift"]["value"])
        for name in out:
            if name == "fd_inf":
                continue
            ci = M.interval_from_replicates([r.get(name, np.nan) for r in reps], point[name])
            if ci is not None:  # the bias shift must not leave the metric's range
                lo, hi = BOUNDS.get(name, (-np.inf, np.inf))
                ci = [float(np.clip(ci[0], lo, hi)), float(np.clip(ci[1], lo, hi))]
            out[name]["ci95"] = ci
    return out


def evaluate_images(generated: np.ndarray, prompts: list[str] | None, real: RealData, backend, align,
                    perceptual: tuple[str, object], cfg: EvaluateConfig, family: str = "standalone",
                    log=None, splits: list[str] | None = None) -> dict:
    """Score ``generated`` (uint8 (N, 3, R, R), R = real.resolution) against ``real``: the metrics JSON
    (schema in docs/architecture.md) as a dict. Pure apart from running the given models.

    ``splits`` (optional, one per sample: the split of the sprite whose prompt was used) adds
    ``by_split``: the per-sample metrics over held-out and training prompts separately. The evaluator
    was trained on the training prompts, so alignment on them reads higher than on held-out prompts."""
    n = len(generated)
    if n < 2:
        raise UserError(f"need at least 2 generated images to score, got {n}")
    if prompts is not None and len(prompts) != n:
        raise UserError(f"{len(prompts)} prompts for {n} generated images")
    if generated.shape[1:] != real.reference.shape[1:]:
        raise ValueError(f"generated {generated.shape[1:]} vs reference {real.reference.shape[1:]}: resize first")
    rng = np.random.default_rng(cfg.seed)
    s = Scorer(backend=backend, align=align, perceptual_name=perceptual[0], perceptual=perceptual[1], cfg=cfg, real=real)
    s.prepare(prompts)
    say = log or (lambda *_: None)

    # floor sets: train sprites (as many as generated) vs held-out; held-out sprites with their prompts
    m = min(n, len(real.floor_train))
    sub = np.sort(rng.choice(len(real.floor_train), size=m, replace=False))
    floor_feats = real.floor_train_features[sub] if real.floor_train_features is not None else None
    floor_groups = [real.floor_groups[i] for i in sub] if real.floor_groups else None
    say("floor: train vs held-out")
    e_floor = encode(real.floor_train[sub], None, floor_groups, s, rng, features=floor_feats, alignment=False, memorisation=False)
    floor_fid = score_set(e_floor, s, rng, None, bootstrap=0)
    real_stats = {k: v["value"] for k, v in floor_fid.items()}
    floor_fid["collapse_score"]["value"] = set_metrics(e_floor, np.arange(m), s, rng, real_stats, 10)["collapse_score"]
    floor_held = {}
    if real.reference_prompts is not None:
        per, floor_attrs = per_sample_metrics(real.reference, real.reference_prompts, s, rng, s.ref_feats)
        floor_held = {k: {"value": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")} for k, v in per.items()}
        for k, a in floor_attrs.items():  # real sprites have a shuffled chance too: their lift is the most to expect
            floor_held[k]["chance"] = M.shuffled_chance(a.want, a.pred)

    say(f"generated: {n} images")
    e_gen = encode(generated, prompts, None, s, rng)
    gen = score_set(e_gen, s, rng, real_stats, cfg.bootstrap)
    collapse = collapse_details({k: v["value"] for k, v in gen.items()}, real_stats)

    base = {}
    for kind in BASELINES:
        say(f"baseline: {kind}")
        e_b = encode(baseline_images(kind, n, real, rng), prompts, None, s, rng)
        base[kind] = score_set(e_b, s, rng, real_stats, bootstrap=0)

    out_metrics = {}
    for name, (direction, group) in METRICS.items():
        if name not in gen or not np.isfinite(gen[name]["value"]):
            continue
        floor_src = floor_held if group in ("alignment", "memorisation") else floor_fid
        floor = floor_src.get(name, {}).get("value")
        entry = {
            "value": gen[name]["value"], "ci95": gen[name]["ci95"], "direction": direction,
            "floor": floor if floor is not None and np.isfinite(floor) else None,
            "baselines": {k: base[k][name]["value"] for k in BASELINES
                          if name in base[k] and np.isfinite(base[k][name]["value"])},
            "n": int(np.isfinite(e_gen.per_sample[name]).sum()) if name in e_gen.per_sample else n,
            "backend_id": (align.backend_id if group == "alignment" and align is not None else
                           "pixels" if group == "memorisation" or name in ("unique_pixel_fraction", "value_range", "channel_std", "attr_colour_acc_pixels")
                           else s.perceptual_name if name.startswith("perceptual")
                           else DETAIL_ID if name == "fd_detail" else backend.backend_id),
        }
        if name == "r_precision":
            entry["chance"] = 1 / min(cfg.r_precision_candidates, len(s.text_pool))
        if "chance" in gen[name]:  # attribute accuracies: the prompt-shuffled chance and the lift above it
            entry["chance"], entry["lift"] = gen[name]["chance"], gen[name]["lift"]
            entry["floor_chance"] = floor_src.get(name, {}).get("chance")
            a = e_gen.attributes[name]
            entry["per_class"] = M.per_class_following(a.want, a.pred, a.classes)
        out_metrics[name] = entry
    by_split = {}
    if splits is not None:
        if len(splits) != n:
            raise UserError(f"{len(splits)} split labels for {n} generated images")
        labels = np.array(["heldout" if x in ("val", "test", "heldout") else str(x) for x in splits])
        for label in sorted(set(labels)):
            mask = labels == label
            by_split[label] = {"n": int(mask.sum())}
            for name, v in e_gen.per_sample.items():
                vals = v[mask]
                if np.isfinite(vals).any():
                    by_split[label][name] = float(np.nanmean(vals))
    return {
        "family": family,
        "backend": backend.name,
        "backend_id": backend.backend_id,
        "alignment_backend_id": align.backend_id if align is not None else None,
        "detail_backend_id": DETAIL_ID,
        "perceptual": s.perceptual_name,
        "n_generated": n,
        "n_reference": int(len(real.reference)),
        "n_floor_train": int(m),
        "resolution": real.resolution,
        "collapse": collapse,
        "metrics": out_metrics,
        **({"by_split": by_split} if by_split else {}),
    }


# --- I/O: folders, prompts, stage and standalone modes ------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, 3, H, W) -> (N, 3, size, size), antialiased; unchanged if already that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = F.interpolate(torch.from_numpy(images).float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def read_image_folder(folder: Path, size: int, names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Every image of a folder (sorted by name), composited on white, resized to ``size``."""
    from spritegen.data.imageio import Skip, composite, decode_image

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    files = names or sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images, bad = [], []
    for name in files:
        d = decode_image(folder / name)
        if isinstance(d, Skip):
            bad.append(f"{name} ({d.reason}: {d.detail})")
            continue
        rgb = composite(d)  # (H, W, 3)
        images.append(resize_uint8(np.ascontiguousarray(rgb.transpose(2, 0, 1))[None], size)[0])
    if bad:
        raise UserError(f"{folder}: {len(bad)} unreadable image(s): " + "; ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
    return np.stack(images), files


def read_prompts(path: Path, files: list[str]) -> list[str]:
    """Prompts for the sorted image files: a .jsonl with {"file", "prompt"} per line (any order), or a text
    file with one prompt per line in file-name order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt file {path} does not exist")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if path.suffix == ".jsonl":
        try:
            rows = [json.loads(ln) for ln in lines]
            by_file = {r["file"]: r["prompt"] for r in rows}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}: each line must be a JSON object with 'file' and 'prompt' ({e})") from None
        missing = [f for f in files if f not in by_file]
        if missing or len(by_file) != len(files):
            raise UserError(f"{path}: {len(by_file)} prompts for {len(files)} images; no prompt for {missing[:5]}")
        return [by_file[f] for f in files]
    if len(lines) != len(files):
        raise UserError(f"{path}: {len(lines)} prompts for {len(files)} images (one line per image, in file-name order)")
    return lines


def _groups(records) -> list[str]:
    return [f"{r.primary_colour}|{r.types[0]}" for r in records]


def real_from_prepared(data: Path, rng: np.random.Generator, resolution: int | None = None,
                       cache_dir: Path | None = None, backend_id: str | None = None) -> RealData:
    """Stage mode: reference = val + test (held-out), floor/copies/memorisation = train. Backend features
    come from ``cache_dir/<backend_id>`` (``spritegen reference``) when they match these pixels."""
    from spritegen.data.dataset import load_split
    from spritegen.evaluate.reference import images_hash, load_features

    train = load_split(data, "train")
    held = [load_split(data, s) for s in ("val", "test")]
    ref = np.concatenate([s.images.numpy() for s in held])
    records = [r for s in held for r in s.records]
    size = resolution or train.resolution
    if len(ref) < 2 or len(train) < 2:
        raise UserError(f"{data}: need at least 2 train and 2 held-out (val+test) sprites, got {len(train)} and {len(ref)}")
    cache = {}
    if cache_dir is not None and backend_id is not None and size == train.resolution:
        hashes = {"train": images_hash(train.images), "val": images_hash(held[0].images), "test": images_hash(held[1].images)}
        cache = load_features(cache_dir, backend_id, hashes)
    ref_feats = np.concatenate([cache["val"], cache["test"]]) if "val" in cache and "test" in cache else None
    return RealData(
        reference=resize_uint8(ref, size), floor_train=resize_uint8(train.images.numpy(), size),
        memorised=resize_uint8(train.images.numpy(), size),
        reference_prompts=[r.prompts[int(rng.integers(len(r.prompts)))] for r in records],
        floor_groups=_groups(train.records), reference_features=ref_feats,
        floor_train_features=cache.get("train"))


def real_from_folder(folder: Path, size: int | None, rng: np.random.Generator) -> RealData:
    """Standalone mode with a plain image folder: a random half is the reference, the other half the
    floor's "train" side and the copies baseline; memorisation is checked against the whole folder."""
    if (Path(folder) / "train.safetensors").exists():
        return real_from_prepared(Path(folder), rng, size)
    if size is None:  # the reference's own resolution: the size of its first image (square, larger side)
        from PIL import Image

        first = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if Path(folder).is_dir() else []
        try:
            with Image.open(first[0]) as im:
                size = max(im.size)
        except (IndexError, OSError):
            size = 64  # read_image_folder below names the problem
    images, _ = read_image_folder(folder, size)
    if len(images) < 4:
        raise UserError(f"{folder}: {len(images)} reference images; need at least 4 (split in halves for the floor)")
    perm = rng.permutation(len(images))
    half = len(images) // 2
    return RealData(reference=images[perm[half:]], floor_train=images[perm[:half]], memorised=images)


def build_models(cfg: EvaluateConfig, evaluator_dir: Path):
    from spritegen.evaluate.features import make_backend, perceptual_embedder

    evaluator = None
    needs_eval = cfg.backend == "evaluator" or cfg.alignment in ("auto", "evaluator") and cfg.backend != "clip" \
        or cfg.perceptual in ("auto", "evaluator")
    if needs_eval and (Path(evaluator_dir) / "model.safetensors").exists():
        from spritegen.evaluate.evaluator import load_evaluator

        evaluator = load_evaluator(evaluator_dir)
    elif needs_eval and cfg.backend == "evaluator":
        raise UserError(f"{evaluator_dir}/model.safetensors missing: run `spritegen evaluator` (or `dvc repro evaluator`) first")
    backend = make_backend(cfg.backend, evaluator, cfg.inception_weights, cfg.clip_model, cfg.clip_weights)
    align_name = cfg.alignment if cfg.alignment != "auto" else ("clip" if cfg.backend == "clip" else "evaluator")
    if align_name == cfg.backend:
        align = backend
    elif align_name == "evaluator":
        align = make_backend("evaluator", evaluator) if evaluator is not None else None
    else:
        align = make_backend("clip", None, clip_model=cfg.clip_model, clip_weights=cfg.clip_weights)
    perceptual = perceptual_embedder(cfg.perceptual, evaluator)
    return backend, align, perceptual, evaluator


def print_table(result: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    t = Table(title=f"{result['family']}: {result['n_generated']} generated vs {result['n_reference']} reference "
                    f"[{result['backend_id']}, perceptual {result['perceptual']}]")
    for col in ("metric", "value", "95% CI", "floor", *BASELINES, "better"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for name, m in result["metrics"].items():
        ci = m["ci95"]
        t.add_row(name, fmt(m["value"]), f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "-", fmt(m["floor"]),
                  *(fmt(m["baselines"].get(b)) for b in BASELINES), "↓" if m["direction"] == "lower" else "↑")
    c = result["collapse"]
    (console or Console()).print(t)
    (console or Console()).print(f"collapse score {c['score']}/15 ({c['band']}): {c['points']}")


def save_nearest_plot(generated: np.ndarray, memorised: np.ndarray, path: Path, n: int = 16) -> None:
    """Samples (top row) above their nearest training images in pixel space (bottom row)."""
    from spritegen.io import save_grid

    g = generated[:n]
    _, idx = M.nearest_distances(M.pixel_vectors(g), M.pixel_vectors(memorised))
    grid = np.concatenate([g, memorised[idx]])
    save_grid(torch.from_numpy(grid), path, ncol=len(g), scale=2)


def main(args) -> int:
    from spritegen.io import write_json
    from spritegen.params import load_section
    from spritegen.runlog import log_run
    from spritegen.repro import reproducible

    t0 = time.perf_counter()
    cfg: EvaluateConfig = load_section("evaluate", args.params, args.preset)
    if getattr(args, "backend", None):
        if args.backend not in ("evaluator", "inception", "clip"):
            raise UserError(f"--backend {args.backend!r}: choose evaluator, inception or clip")
        cfg.backend = args.backend
        cfg.validate()
    run = reproducible(cfg.threads)  # {"threads", "deterministic"}: recorded in the metrics JSON
    rng = np.random.default_rng(cfg.seed)
    evaluator_dir = Path(getattr(args, "evaluator", None) or "models/evaluator")
    standalone = args.generated is not None or args.reference is not None
    if standalone == (args.family is not None):
        raise UserError("give either --family (pipeline stage) or --generated DIR --reference DIR (standalone)")
    if standalone and (args.generated is None or args.reference is None):
        raise UserError("standalone mode needs both --generated DIR and --reference DIR")

    if standalone:
        gen_dir = Path(args.generated)
        # fail on a bad folder or prompt file before loading any model
        if not gen_dir.is_dir():
            raise UserError(f"--generated {gen_dir} is not a folder")
        files = sorted(p.name for p in gen_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"--generated {gen_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        prompts = read_prompts(args.prompts, files) if args.prompts else None
        real = real_from_folder(Path(args.reference), None, rng)
        generated, _ = read_image_folder(gen_dir, real.resolution, files)
        family = getattr(args, "name", None) or gen_dir.name
        out = Path(args.out or "metrics.json")
    else:
        family = args.family
        sample_dir = Path(getattr(args, "samples", None) or "samples") / family
        index = sample_dir / "prompts.jsonl"
        if not index.exists():
            raise UserError(f"{index} missing: run `spritegen sample-set --family {family}` first")
        rows = [json.loads(ln) for ln in index.read_text().splitlines() if ln.strip()]
        try:
            files = [r["file"] for r in rows]
            prompts = [r["prompt"] for r in rows]
        except (KeyError, TypeError):
            raise UserError(f"{index}: every line needs 'file' and 'prompt'") from None
        splits = [r.get("split", "unknown") for r in rows] if any("split" in r for r in rows) else None
        real = None
        out = Path(args.out or f"metrics/{family}.json")

    backend, align, perceptual, evaluator = build_models(cfg, evaluator_dir)
    if not standalone:
        data = Path(getattr(args, "data", None) or "data/prepared")
        real = real_from_prepared(data, rng, cache_dir=Path(getattr(args, "ref_cache", None) or "reference"),
                                  backend_id=backend.backend_id)
        generated, _ = read_image_folder(sample_dir, real.resolution, files)
    print(f"scoring {len(generated)} images of {family} with {backend.backend_id} ...")
    result = evaluate_images(generated, prompts, real, backend, align, perceptual, cfg, family=family, log=print,
                             splits=None if standalone else splits)
    from spritegen.config import to_dict

    result["config"] = to_dict(cfg)
    result.update(run)
    if evaluator is not None and (evaluator_dir / "metrics.json").exists():
        ev = json.loads((evaluator_dir / "metrics.json").read_text())
        # (an evaluator trained before timings moved to logs/ still carries train_seconds)
        result["evaluator"] = {k: v for k, v in ev.items() if k not in ("loss_per_epoch", "train_seconds")}
    write_json(result, out)
    plots = getattr(args, "plots", None) or (None if standalone else Path("plots/evaluate") / family)
    if plots:
        save_nearest_plot(generated, real.memorised, Path(plots) / "nearest_train.png")
    print_table(result)
    seconds = time.perf_counter() - t0
    # the wall-clock time stays out of the compared metrics file
    log_run(f"evaluate/{family}", {"seconds": round(seconds, 1), "n_generated": len(generated), "threads": run["threads"]})
    print(f"wrote {out} ({seconds:.1f} s)")
    return 0
