"""Benchmark: time to score 1,000 64×64 images with the whole evaluation suite on the CPU.

    python benchmarks/bench_eval.py [--n 1000] [--resolution 64] [--bootstrap 100] [--threads 2]

Uses synthetic sprites (real: 800 train + 200 held-out; generated: ``--n`` more) and a default-size
evaluator with random weights (timing does not depend on training). Prints the time of each part and
of the whole ``evaluate_images`` call: features, perceptual embeddings, colour measurement, detail features, every
metric for the generated set + floors + 3 baselines, and the bootstrap.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--bootstrap", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from spritegen.data.colour import measure_colours
    from spritegen.data.synthetic import make_sprites
    from spritegen.evaluate.evaluator import Evaluator, EvaluatorConfig, build_clip, build_vocab, fit_attributes
    from spritegen.evaluate.features import evaluator_backend, perceptual_embedder
    from spritegen.evaluate.suite import EvaluateConfig, RealData, evaluate_images

    r = args.resolution
    train, train_rec = make_sprites(800, r, seed=0)
    held, held_rec = make_sprites(200, r, seed=1, start=800)
    gen, gen_rec = make_sprites(args.n, r, seed=2, start=1000)
    prompts = [rec.prompts[i % 5] for i, rec in enumerate(gen_rec)]
    real = RealData(reference=held.numpy(), floor_train=train.numpy(), memorised=train.numpy(),
                    reference_prompts=[rec.prompts[0] for rec in held_rec],
                    floor_groups=[f"{x.primary_colour}|{x.types[0]}" for x in train_rec])
    cfg_e = EvaluatorConfig()
    torch.manual_seed(0)
    id_map = build_vocab([p for rec in train_rec for p in rec.prompts], cfg_e.context_length)
    ev = Evaluator(build_clip(cfg_e, int(id_map.max()) + 1), cfg_e, id_map, "benchmark")
    t = time.perf_counter()
    fit_attributes(ev, train, train_rec)  # the attribute classifiers the suite calls (a stage-time cost, not timed below)
    print(f"  (attribute classifiers fitted in {time.perf_counter() - t:.1f} s)")
    backend = evaluator_backend(ev)
    perceptual = perceptual_embedder("auto", ev)
    print(f"torch threads {torch.get_num_threads()}; {args.n} generated {r}x{r} images; perceptual {perceptual[0]}")

    t = time.perf_counter()
    backend.encode_images(gen)
    print(f"  evaluator features   {time.perf_counter() - t:6.1f} s")
    t = time.perf_counter()
    perceptual[1](gen)
    print(f"  perceptual embedding {time.perf_counter() - t:6.1f} s")
    t = time.perf_counter()
    for img in gen.numpy():
        measure_colours(np.ascontiguousarray(img.transpose(1, 2, 0)))
    print(f"  pixel colours        {time.perf_counter() - t:6.1f} s")
    from spritegen.evaluate.detail import detail_features

    t = time.perf_counter()
    detail_features(gen)
    print(f"  detail features      {time.perf_counter() - t:6.1f} s")

    cfg = EvaluateConfig(bootstrap=args.bootstrap)
    t = time.perf_counter()
    result = evaluate_images(gen.numpy(), prompts, real, backend, backend, perceptual, cfg, family="bench")
    total = time.perf_counter() - t
    print(f"whole suite (generated + 2 floors + 3 baselines, bootstrap {args.bootstrap}): {total:.1f} s "
          f"for {args.n} images ({len(result['metrics'])} metrics)")


if __name__ == "__main__":
    main()
