"""Generation latency of a trained family through spritegen.generators (what the API and sample-set call).

    python benchmarks/bench_generate.py --family cvae --model models/cvae
    python benchmarks/bench_generate.py --family ldm --model models/ldm/finetune --repeats 5

After a warm-up call it times ``--repeats`` calls of one sprite and of a batch of 8 (a new seed each call,
prompts cycling through a fixed list) and prints the p50, min and max milliseconds per call and per sprite,
with the device and thread count. The model is loaded once, outside the timings (its load time is printed
on its own line).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

PROMPTS = ("a red fire type pokemon", "a small blue water type pokemon", "a green grass and poison type pokemon",
           "a huge yellow electric type pokemon", "a purple ghost type pokemon", "a white ice type pokemon",
           "a pink fairy type pokemon", "a brown ground type pokemon")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="cvae")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: models/<family>)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    from spritegen.generators import load_generator
    from spritegen.params import load_section

    torch.set_num_threads(args.threads)
    cfg = load_section("sample")
    t = time.perf_counter()
    gen = load_generator(args.family, args.model or Path("models") / args.family, device=args.device, sampler=cfg.sampler,
                         steps=cfg.steps, guidance=cfg.guidance, temperature=cfg.temperature, batch_size=cfg.batch_size)
    print(f"{args.family}: loaded in {1000 * (time.perf_counter() - t):.0f} ms on {args.device}, {torch.get_num_threads()} threads")
    seed = 0
    print(f"{'batch':>5} {'p50 ms':>9} {'min ms':>9} {'max ms':>9} {'p50 ms/sprite':>14}")
    for batch in (1, 8):
        gen.generate(list(PROMPTS[:batch]), list(range(batch)))  # warm-up
        times = []
        for r in range(args.repeats):
            prompts = [PROMPTS[(r + i) % len(PROMPTS)] for i in range(batch)]
            seeds = list(range(seed, seed + batch))
            seed += batch
            t = time.perf_counter()
            gen.generate(prompts, seeds)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - t))
        p50 = statistics.median(times)
        print(f"{batch:>5} {p50:>9.2f} {min(times):>9.2f} {max(times):>9.2f} {p50 / batch:>14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
