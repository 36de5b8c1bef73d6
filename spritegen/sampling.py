"""Sampling: ``spritegen sample`` (a PNG grid, one row per prompt) and the ``sample`` params section.

    spritegen sample "a red fire type pokemon" --n 8 --seed 0 --steps 20 --guidance 5 --sampler dpm++ --out grid.png
    spritegen sample "a red fire type pokemon" "a blue water type pokemon" --n 4 --out grid.png

Image k of each row uses seed ``--seed + k`` (so a column shares its initial noise across prompts); the
same arguments give the same pixels.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from spritegen.errors import UserError


@dataclass
class SampleConfig:
    """params.yaml ``sample``: how generators are sampled (CLI defaults and the evaluation stage)."""

    sampler: Literal["ddpm", "ddim", "dpm++", "dpm++sde", "unipc"] = field(default="dpm++sde", metadata={"doc": "ddpm | ddim | dpm++ (DPM-Solver++ 2M) | dpm++sde (DPM-Solver++ 2M SDE) | unipc (UniPC bh2); ddpm and dpm++sde are SDE solvers, the others ODE solvers, which end elsewhere under guidance (docs/ldm.md, Samplers)"})
    steps: int = field(default=25, metadata={"ge": 1, "le": 1000, "doc": "sampler steps"})
    guidance: float = field(default=5.0, metadata={"ge": 0, "doc": "classifier-free guidance scale (1 = no guidance); docs/ldm.md: on the default model 5 beat 8 on fd, coverage, seed diversity and near-copies at the same colour and type accuracy, and 3 lost colour"})
    temperature: float = field(default=1.0, metadata={"ge": 0, "doc": "latent families (cvae, gan): z ~ N(0, temperature^2 I); 0 gives the prior mean (cvae: the conditional average sprite; gan: the generator at z = 0)"})
    batch_size: int = field(default=32, metadata={"ge": 1, "doc": "images per generator call (does not change the pixels)"})
    n_heldout_prompts: int = field(default=192, metadata={"ge": 0, "doc": "evaluation: prompts from the held-out (val + test) splits; 192 x 2 seeds keeps a type or colour accuracy's 95 % interval about +-0.03 wide (docs/ldm.md)"})
    n_train_prompts: int = field(default=64, metadata={"ge": 0, "doc": "evaluation: prompts from the training split"})
    seeds_per_prompt: int = field(default=2, metadata={"ge": 1, "doc": "evaluation: images per prompt"})
    seed: int = field(default=0, metadata={"ge": 0, "doc": "evaluation: first seed"})
    device: str = field(default="auto", metadata={"doc": "auto (cuda when available, else cpu) | cpu | cuda | cuda:N; mps is refused (spritegen.runtime.pick_device)"})
    threads: int = field(default=2, metadata={"ge": 0, "doc": "torch CPU threads of sampling (0: leave as is, not pinned). The README's numbers were made with 2 (the 2-core machine); another count can change the last bits of a pixel"})


def sample_main(args) -> int:
    from spritegen.generators import load_generator
    from spritegen.io import save_grid
    from spritegen.params import load_section
    from spritegen.repro import reproducible

    cfg: SampleConfig = load_section("sample", args.params, args.preset)
    reproducible(cfg.threads)
    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    model = args.model or Path("models") / args.family
    sampling = {"sampler": args.sampler or cfg.sampler, "steps": args.steps or cfg.steps,
                "guidance": cfg.guidance if args.guidance is None else args.guidance, "batch_size": cfg.batch_size,
                "temperature": cfg.temperature if args.temperature is None else args.temperature}
    device = getattr(args, "device", None) or cfg.device
    gen = load_generator(args.family, model, device=device, **sampling)
    prompts = [args.prompt] if isinstance(args.prompt, str) else list(args.prompt)
    if any(not p.strip() for p in prompts):
        raise UserError("a prompt is empty: describe the sprite (the empty prompt is the unconditional one)")
    seeds = [args.seed + k for k in range(args.n)]
    images = gen.generate([p for p in prompts for _ in seeds], seeds * len(prompts))  # row-major: prompt, seed
    save_grid(images, args.out, ncol=args.n, scale=max(1, 128 // gen.resolution))
    print(f"wrote {args.out} ({len(prompts)} prompt(s) x {args.n} images, {sampling})", file=sys.stderr)
    return 0
