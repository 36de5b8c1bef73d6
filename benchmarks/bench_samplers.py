"""Samplers on one model's weights: sampler x steps -> fd, coverage, colour, collapse, vendi, ms per image.

    python benchmarks/bench_samplers.py --model models/ldm/finetune --data data/prepared \
        --evaluator models/evaluator --ref-cache reference --out bench/samplers \
        [--runs ddpm:1000,ddpm:250,dpm++sde:20] [--params params.yaml] [--batch-size 32]

Each run is the pipeline's own two commands, `spritegen sample-set` then `spritegen evaluate`, under a
copy of the params file whose ``sample.sampler`` and ``sample.steps`` are the run's (every other key,
guidance and the prompt set included, stays as given), so every row scores the same prompts and seeds
on the same weights. The first run is the reference (DDPM over all 1000 steps unless --runs says
otherwise) and every ``fd`` is also shown relative to it. A run whose metrics.json exists is not redone:
the default list takes hours on a 2-core CPU (DDPM 1000 alone: about 1000 guided U-Net calls per image),
so an interrupted table resumes. ms/image is measured at the end, every run back to back on the same
``--timing-images`` prompts in one process, at ``--batch-size`` and ``--threads`` (guided: two U-Net
passes per step); it still depends on what else the machine is doing.

Writes ``<out>/<sampler>_<steps>/{params.yaml, samples/ldm/, metrics.json, sample.log}``, ``<out>/table.md``
and ``<out>/table.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

DEFAULT_RUNS = ("ddpm:1000,ddpm:250,ddpm:50,ddim:20,ddim:25,ddim:50,dpm++:10,dpm++:20,dpm++:25,dpm++:50,"
                "unipc:20,unipc:25,dpm++sde:10,dpm++sde:20,dpm++sde:25,dpm++sde:50")
# (column, metrics.json key, digits)
COLUMNS = (("fd", "fd", 3), ("coverage", "coverage", 2), ("colour", "attr_colour_acc_pixels", 2),
           ("collapse", "collapse_score", 0), ("vendi", "vendi", 2))


def parse_runs(text: str) -> list[tuple[str, int]]:
    runs = []
    for item in text.split(","):
        sampler, _, steps = item.strip().rpartition(":")
        if not sampler or not steps.isdigit():
            raise SystemExit(f"--runs: {item!r} is not sampler:steps")
        runs.append((sampler, int(steps)))
    return runs


def run_one(sampler: str, steps: int, args) -> dict:
    """sample-set + evaluate for one (sampler, steps); returns the row (cached in its folder)."""
    folder = args.out / f"{sampler}_{steps}"
    metrics_path, log_path = folder / "metrics.json", folder / "sample.log"
    if not metrics_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        params = yaml.safe_load(args.params.read_text())
        params["sample"].update(sampler=sampler, steps=steps, batch_size=args.batch_size)
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        common = ["--params", str(folder / "params.yaml"), "--family", "ldm"]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        print(f"[{sampler} {steps}] sampling ...", flush=True)
        out = subprocess.run([args.spritegen, "sample-set", *common, "--model", str(args.model), "--data", str(args.data),
                              "--out", str(folder / "samples" / "ldm")], check=True, capture_output=True, text=True, env=env)
        log_path.write_text(out.stdout + out.stderr)
        print(f"[{sampler} {steps}] evaluating ...", flush=True)
        subprocess.run([args.spritegen, "evaluate", *common, "--samples", str(folder / "samples"), "--data", str(args.data),
                        "--evaluator", str(args.evaluator), "--ref-cache", str(args.ref_cache), "--out", str(metrics_path),
                        "--plots", str(folder / "plots")], check=True, capture_output=True, text=True, env=env)
    metrics = json.loads(metrics_path.read_text())["metrics"]
    timing = re.search(r"\(([\d.]+) ms/image\)", log_path.read_text())
    row = {"sampler": sampler, "steps": steps, "ms_per_image_run": float(timing.group(1)) if timing else None}
    for column, key, _ in COLUMNS:
        row[column] = metrics[key]["value"]
        row[column + "_ci95"] = metrics[key].get("ci95")
    return row


def time_samplers(rows: list[dict], args) -> None:
    """ms/image of every row measured back to back in one process (the same load for all), on the first
    --timing-images prompts of the fixed grid prompts; the sample-set timings spread over hours of a
    shared machine's changing load. Adds row["ms_per_image"]; sample-set's own stays as "ms_per_image_run"."""
    import time

    import torch

    from spritegen.generators import load_generator
    from spritegen.ldm.pipeline import FIXED_PROMPTS

    torch.set_num_threads(args.threads)
    guidance = yaml.safe_load(args.params.read_text())["sample"]["guidance"]
    n = args.timing_images
    prompts = [FIXED_PROMPTS[i % len(FIXED_PROMPTS)] for i in range(n)]
    for row in rows:
        gen = load_generator("ldm", args.model, device="cpu", sampler=row["sampler"], steps=row["steps"], guidance=guidance,
                             batch_size=args.batch_size)
        start = time.perf_counter()
        gen.generate(prompts, list(range(n)))
        row["ms_per_image"] = 1000 * (time.perf_counter() - start) / n
        print(f"[{row['sampler']} {row['steps']}] {row['ms_per_image']:.0f} ms/image", flush=True)


def table(rows: list[dict]) -> str:
    ref = rows[0]
    head = ["sampler", "steps", *(c for c, _, _ in COLUMNS), f"fd / {ref['sampler']} {ref['steps']}", "ms/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["sampler"], str(r["steps"])] + [f"{r[c]:.{d}f}" for c, _, d in COLUMNS]
        ms = r.get("ms_per_image", r["ms_per_image_run"])
        cells += [f"{r['fd'] / ref['fd']:.2f}", "" if ms is None else f"{ms:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a bundle folder with a U-Net (models/ldm/finetune)")
    p.add_argument("--data", type=Path, required=True, help="the prepared sprites the prompt set is drawn from")
    p.add_argument("--evaluator", type=Path, required=True)
    p.add_argument("--ref-cache", type=Path, required=True, help="cached real features (spritegen reference)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="base params (sample.guidance, the prompt set)")
    p.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated sampler:steps; the first is the reference")
    p.add_argument("--batch-size", type=int, default=32, help="images per U-Net call (does not change the pixels)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per command (OMP_NUM_THREADS): on a 2-core machine "
                   "shared with other jobs, 1 thread sampled 5x faster than 2 (18 against about 100 ms per image and step)")
    p.add_argument("--timing-images", type=int, default=32, help="time every run back to back on this many images "
                   "(0: keep sample-set's own timing of each run)")
    p.add_argument("--spritegen", default=str(Path(sys.executable).with_name("spritegen")), help="the spritegen command")
    args = p.parse_args()

    rows = []
    for sampler, steps in parse_runs(args.runs):
        rows.append(run_one(sampler, steps, args))
        print(table(rows), flush=True)
    if args.timing_images:
        time_samplers(rows, args)
        print(table(rows), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table(rows) + "\n")
    (args.out / "table.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
