"""Calibration ladders: does each headline metric rank image sets of known quality in order?

    python -m spritegen.evaluate.ladder [--data data/prepared] [--samples samples/ldm_vae] [--out docs/ladder]

Two ladders, each scored by the same ``evaluate_images`` as any generator:

* **corruption**: training sprites (so, independent of the held-out reference) under Gaussian pixel noise
  and under Gaussian blur, at levels that start where a person can barely see them (``NOISE_LEVELS``,
  ``BLUR_LEVELS``). A fidelity metric must get worse at every step.
* **generators**: ``real`` (real sprites with their own prompts) → ``reconstructions`` (the same sprites
  through the LDM's VAE) → ``shuffled_prompts`` (the real sprites under other sprites' prompts),
  ``mean_image`` and ``noise``. The reconstructed sprites come from the sample set's prompts, so most of
  them are held-out sprites, part of the reference: ``real`` then sits below the train-vs-held-out
  floor, which is fine for a ranking. ``ORDER`` says which rung must beat which on which metric: fidelity
  cannot see a prompt (shuffled prompts are real images), and alignment cannot see blur, so each pair is
  checked only where the metric can tell them apart.

``main`` writes ``<out>/ladder.json`` (every rung's headline metrics and the order checks) and
``<out>/ladder.png``, and prints both tables; docs/evaluation.md shows them. tests/test_eval_ladder.py
runs the same checks on synthetic sprites.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

NOISE_LEVELS = (4, 8, 16)  # σ in grey levels (of 255): 4 is barely visible on a flat area
BLUR_LEVELS = (0.5, 0.7, 1.0)  # σ in pixels at the sprites' native resolution
HEADLINE = ("fd", "fd_detail", "kid", "coverage", "clip_score", "r_precision", "attr_colour_acc_pixels", "attr_type_acc",
            "collapse_score")
FIDELITY = ("fd", "fd_detail", "kid", "coverage")
ALIGNMENT = ("clip_score", "r_precision", "attr_colour_acc_pixels", "attr_type_acc")
# (better rung, worse rung, metrics where the pair must come out in that order)
ORDER = (
    ("real", "reconstructions", FIDELITY),
    ("reconstructions", "mean_image", FIDELITY + ("collapse_score",)),
    ("reconstructions", "noise", FIDELITY),
    ("real", "shuffled_prompts", ALIGNMENT),
    ("reconstructions", "shuffled_prompts", ALIGNMENT),
    ("real", "mean_image", ALIGNMENT + ("collapse_score",)),
    ("real", "noise", ALIGNMENT),
)


def add_noise(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """uint8 images plus Gaussian noise of ``sigma`` grey levels, rounded and clipped."""
    g = np.random.default_rng(seed)
    return np.clip(images + g.normal(0.0, sigma, images.shape), 0, 255).round().astype(np.uint8)


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 images under a Gaussian blur of ``sigma`` px (separable, radius 3σ, edges replicated)."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).expand(3, 1, -1)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float64)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k[:, :, None, :], groups=3)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k[:, :, :, None], groups=3)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def corruption_sets(images: np.ndarray) -> dict[str, np.ndarray]:
    """``{"clean": images, "noise σ=4": ..., "blur σ=0.5": ...}`` in ladder order."""
    out = {"clean": images}
    out.update({f"noise σ={s}": add_noise(images, s) for s in NOISE_LEVELS})
    out.update({f"blur σ={s}": blur(images, s) for s in BLUR_LEVELS})
    return out


def generator_sets(real_images: np.ndarray, prompts: list[str], reconstructions: np.ndarray, real,
                   rng: np.random.Generator) -> dict[str, tuple[np.ndarray, list[str]]]:
    """The generator ladder's rungs as ``{rung: (images, prompts)}``; ``real`` is a ``suite.RealData``."""
    from spritegen.evaluate.baselines import baseline_images

    n = len(real_images)
    perm = rng.permutation(n)
    # a plain permutation: a few prompts land on themselves or on an identical prompt, which only makes
    # this rung a little easier to pass, never harder
    shuffled = [prompts[i] for i in perm]
    return {
        "real": (real_images, prompts),
        "reconstructions": (reconstructions, prompts),
        "shuffled_prompts": (real_images, shuffled),
        "mean_image": (baseline_images("mean_image", n, real, rng), prompts),
        "noise": (baseline_images("noise", n, real, rng), prompts),
    }


def score_sets(sets: dict, real, backend, align, perceptual, cfg) -> dict[str, dict[str, float]]:
    """``{name: {metric: value}}`` of the headline metrics; ``sets``: ``{name: (images, prompts)}``."""
    from spritegen.evaluate.suite import evaluate_images

    out = {}
    for name, (images, prompts) in sets.items():
        m = evaluate_images(images, prompts, real, backend, align, perceptual, cfg, family=name)["metrics"]
        out[name] = {k: m[k]["value"] for k in HEADLINE if k in m}
    return out


def better(metric: str, a: float, b: float) -> bool:
    from spritegen.evaluate.suite import METRICS

    return a < b if METRICS[metric][0] == "lower" else a > b


def check_generator_order(scores: dict[str, dict[str, float]]) -> list[dict]:
    """One row per (pair, metric) of ``ORDER``: the two values and whether the order held."""
    rows = []
    for good, bad, metrics in ORDER:
        for m in metrics:
            a, b = scores[good].get(m), scores[bad].get(m)
            if a is None or b is None:
                continue
            rows.append({"better": good, "worse": bad, "metric": m, "values": [a, b], "held": better(m, a, b)})
    return rows


def check_corruption_order(scores: dict[str, dict[str, float]], metric: str) -> dict[str, bool]:
    """Per corruption kind: does ``metric`` get worse at every level, starting from clean?"""
    out = {}
    for kind in ("noise", "blur"):
        names = ["clean", *[k for k in scores if k.startswith(kind)]]
        vals = [scores[k][metric] for k in names]
        out[kind] = all(better(metric, x, y) for x, y in zip(vals, vals[1:]))
    return out


def plot(corr: dict, gen: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in HEADLINE if all(m in v for v in gen.values())]
    fig, axes = plt.subplots(2, len(metrics), figsize=(2.4 * len(metrics), 5.2), squeeze=False)
    for j, m in enumerate(metrics):
        ax = axes[0, j]
        for kind, colour in (("noise", "tab:red"), ("blur", "tab:blue")):
            names = ["clean", *[k for k in corr if k.startswith(kind)]]
            ax.plot(range(len(names)), [corr[k][m] for k in names], "o-", color=colour, label=kind)
        ax.set_title(m, fontsize=9)
        ax.set_xticks(range(1 + len(NOISE_LEVELS)), ["0", "1", "2", "3"], fontsize=7)
        ax.set_xlabel("corruption level", fontsize=7)
        ax = axes[1, j]
        ax.bar(range(len(gen)), [gen[k][m] for k in gen], color="tab:gray")
        ax.set_xticks(range(len(gen)), list(gen), fontsize=6, rotation=60, ha="right")
        if m in ("fd", "fd_detail", "kid"):  # real and the worst rungs are orders of magnitude apart
            ax.set_yscale("symlog", linthresh=1e-3 if m != "fd_detail" else 1.0)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Headline metrics on ladders of known quality (top: corruption levels; bottom: generators)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from spritegen.data.dataset import load_split
    from spritegen.errors import UserError
    from spritegen.evaluate.suite import build_models, read_image_folder, real_from_prepared
    from spritegen.io import write_json
    from spritegen.params import load_section
    from spritegen.repro import reproducible

    ap = argparse.ArgumentParser(prog="python -m spritegen.evaluate.ladder", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=None)
    ap.add_argument("--data", type=Path, default=Path("data/prepared"))
    ap.add_argument("--evaluator", type=Path, default=Path("models/evaluator"))
    ap.add_argument("--samples", type=Path, default=Path("samples/ldm_vae"),
                    help="VAE reconstructions as `spritegen sample-set --reconstruct` writes them")
    ap.add_argument("--n", type=int, default=256, help="sprites per rung")
    ap.add_argument("--out", type=Path, default=Path("docs/ladder"))
    args = ap.parse_args(argv)

    cfg = load_section("evaluate", args.params)
    cfg.bootstrap = 0  # the ladder reads point values
    reproducible(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    index = args.samples / "prompts.jsonl"
    if not index.exists():
        raise UserError(f"{index} missing: run `dvc repro reconstruct@ldm` (or spritegen sample-set --reconstruct) first")
    rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()][: args.n]
    backend, align, perceptual, _ = build_models(cfg, args.evaluator)
    real = real_from_prepared(args.data, rng, cache_dir=Path("reference"), backend_id=backend.backend_id)
    recon, _ = read_image_folder(args.samples, real.resolution, [r["file"] for r in rows])
    splits = [load_split(args.data, s) for s in ("train", "val", "test")]
    by_id = {rec.id: img for split in splits for rec, img in zip(split.records, split.images.numpy())}
    originals = np.stack([by_id[r["record_id"]] for r in rows])
    prompts = [r["prompt"] for r in rows]
    train = splits[0]
    pick = np.sort(rng.choice(len(train), size=min(args.n, len(train)), replace=False))
    clean = train.images.numpy()[pick]
    clean_prompts = [train.records[i].prompts[0] for i in pick]

    corr = score_sets({k: (v, clean_prompts) for k, v in corruption_sets(clean).items()}, real, backend, align, perceptual, cfg)
    gen = score_sets(generator_sets(originals, prompts, recon, real, rng), real, backend, align, perceptual, cfg)
    checks = check_generator_order(gen)
    monotone = {m: check_corruption_order(corr, m) for m in FIDELITY}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json({"n": len(rows), "n_corruption": len(clean), "backend_id": backend.backend_id, "noise_levels": NOISE_LEVELS, "blur_levels": BLUR_LEVELS,
                "corruption": corr, "generators": gen, "generator_order": checks, "corruption_monotone": monotone},
               args.out / "ladder.json")
    plot(corr, gen, args.out / "ladder.png")
    console = Console(width=200)
    for title, table in (("corruption ladder", corr), ("generator ladder", gen)):
        t = Table(title=f"{title} ({len(rows)} sprites, {backend.backend_id})")
        t.add_column("set")
        for m in HEADLINE:
            t.add_column(m, justify="right")
        for name, vals in table.items():
            t.add_row(name, *(f"{vals[m]:.4g}" if m in vals else "-" for m in HEADLINE))
        console.print(t)
    broken = [c for c in checks if not c["held"]]
    console.print(f"generator order: {len(checks) - len(broken)}/{len(checks)} pairs held"
                  + "".join(f"\n  NOT HELD: {c['better']} vs {c['worse']} on {c['metric']}: {c['values']}" for c in broken))
    console.print(f"corruption: each fidelity metric worse at every level? {monotone}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
