"""The ``sample`` stage: a fixed prompt set x fixed seeds -> PNGs, the thing that gets evaluated.

    spritegen sample-set --family ldm --model models/ldm/finetune     # writes samples/ldm/

The prompt set is drawn once, deterministically, from the prepared data: ``sample.n_heldout_prompts``
sprites of the val+test splits (the model never saw them) and ``sample.n_train_prompts`` sprites of the
train split, one prompt each (cycling through the prompt styles), each sampled with the seeds
``sample.seed .. sample.seed + seeds_per_prompt - 1``.
Every generator family gets exactly the same prompts and seeds, so their metrics compare.

``--reconstruct`` writes, in place of samples, each prompted sprite passed through the bundle's VAE
(``samples/<family>_vae`` by default): the decoder's ceiling, scored by ``spritegen evaluate --family
<family>_vae`` like any sample set. A metric far below the real sprites' floor there is the VAE's to fix,
not the U-Net's (docs/evaluation.md, "Which half limits a metric").

Output::

    samples/<family>/images/00000.png ...   one PNG per (prompt, seed)
    samples/<family>/prompts.jsonl          {"file", "prompt", "seed", "split", "record_id", "types", "primary_colour"}
    samples/<family>/grid.png               the first prompts' samples, for a quick look (DVC plot)
    samples/<family>/run.json               how they were made: sampling settings, device, threads, determinism

The wall-clock time (and ms per image) goes to ``logs/sample/<family>.json``, outside the DVC outputs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spritegen.data.dataset import SpriteRecord, load_split
from spritegen.errors import UserError
from spritegen.io import save_grid, save_pngs
from spritegen.params import load_section


@dataclass(frozen=True)
class PromptItem:
    prompt: str
    seed: int
    split: str
    record: SpriteRecord


def choose_prompt_set(prepared: Path, heldout: int, train: int, seeds_per_prompt: int, seed: int = 0) -> list[PromptItem]:
    """The evaluation prompt set: deterministic given the prepared data and the numbers."""
    rng = np.random.default_rng(seed)
    held_records = [("val", r) for r in load_split(prepared, "val").records] + [
        ("test", r) for r in load_split(prepared, "test").records
    ]
    train_records = [("train", r) for r in load_split(prepared, "train").records]
    picked = []
    for pool, n in ((held_records, heldout), (train_records, train)):
        if n > len(pool):
            raise UserError(f"sample: asked for {n} prompts but the pool has only {len(pool)} sprites")
        picked += [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))]
    items = []
    for k, (split, record) in enumerate(picked):
        prompt = record.prompts[k % len(record.prompts)]  # cycle the prompt styles (short, long, ...)
        items += [PromptItem(prompt, seed + s, split, record) for s in range(seeds_per_prompt)]
    return items


def sample_set_main(args) -> int:
    from spritegen.generators import load_generator
    from spritegen.io import write_json
    from spritegen.repro import reproducible
    from spritegen.runlog import log_run

    cfg = load_section("sample", args.params, args.preset)
    run = reproducible(cfg.threads)  # {"threads", "deterministic"}: recorded in run.json
    family = args.family
    model_dir = args.model or Path("models") / family
    out = args.out or Path("samples") / (f"{family}_vae" if args.reconstruct else family)
    items = choose_prompt_set(args.data, cfg.n_heldout_prompts, cfg.n_train_prompts, cfg.seeds_per_prompt, cfg.seed)

    if args.reconstruct:
        generate, device = _reconstructor(family, model_dir, args.data, cfg.device)
        settings = {"reconstruct": True}
    else:
        from spritegen.runtime import pick_device

        device = pick_device(cfg.device)
        generator = load_generator(family, model_dir, device=str(device), sampler=cfg.sampler, steps=cfg.steps,
                                   guidance=cfg.guidance, temperature=cfg.temperature, batch_size=cfg.batch_size)
        generate = lambda batch: generator.generate([it.prompt for it in batch], [it.seed for it in batch])  # noqa: E731
        settings = ({"sampler": cfg.sampler, "steps": cfg.steps, "guidance": cfg.guidance} if family == "ldm"
                    else {"temperature": cfg.temperature})
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for old in images_dir.glob("*.png"):  # a re-run replaces the set; stale files would be scored
        old.unlink()

    start = time.perf_counter()
    rows, first = [], []
    for b in range(0, len(items), cfg.batch_size):
        batch = items[b : b + cfg.batch_size]
        images = generate(batch)  # (B, 3, R, R) uint8
        names = [f"{b + i:05d}.png" for i in range(len(batch))]
        save_pngs(images, images_dir, names)
        if len(first) < 64:
            first.append(images[: 64 - len(first)])
        for name, it in zip(names, batch):
            rows.append({"file": f"images/{name}", "prompt": it.prompt, "seed": it.seed, "split": it.split,
                         "record_id": it.record.id, "types": list(it.record.types),
                         "primary_colour": it.record.primary_colour})
        print(f"sample-set {family}: {b + len(batch)}/{len(items)} images", flush=True)
    with open(out / "prompts.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    import torch

    # rows of 8: each prompt's seeds side by side
    save_grid(torch.cat(first), out / "grid.png", ncol=cfg.seeds_per_prompt * max(1, 8 // cfg.seeds_per_prompt), scale=2)
    write_json({"family": family, "n_images": len(items), **settings,
                "device": device.type, **run}, out / "run.json")
    elapsed = time.perf_counter() - start
    name = f"{family}_vae" if args.reconstruct else family
    log_run(f"sample/{name}", {"seconds": round(elapsed, 1), "ms_per_image": round(1000 * elapsed / len(items), 1),
                               "n_images": len(items), "device": device.type, **run})
    print(f"sample-set {family}: {len(items)} images in {elapsed:.1f}s ({1000 * elapsed / len(items):.0f} ms/image) -> {out}")
    return 0


def _reconstructor(family: str, model_dir: Path, prepared: Path, device: str):
    """``--reconstruct``: (batch of PromptItems -> their real sprites through the bundle's VAE (uint8),
    the device it runs on)."""
    import torch

    if family != "ldm":
        raise UserError(f"--reconstruct needs a family with a VAE (ldm), not {family!r}")
    from spritegen.ldm.models import load_bundle
    from spritegen.runtime import pick_device

    if (model_dir / "finetune" / "model.safetensors").exists():  # models/ldm -> its last stage
        model_dir = model_dir / "finetune"
    ldm = load_bundle(model_dir)
    if ldm.vae is None:
        raise UserError(f"{model_dir} holds no VAE: point at a vae, unet or finetune stage output")
    device = pick_device(device)
    ldm = ldm.to(device)
    real = sprites_by_id(prepared)
    return (lambda batch: reconstruct_images(ldm, torch.stack([real[it.record.id] for it in batch]),
                                             [it.prompt for it in batch])), device


def sprites_by_id(prepared: Path) -> dict:
    """Every prepared sprite (uint8 (3, R, R)) by its record id, over all splits."""
    real = {}
    for split in ("train", "val", "test"):
        s = load_split(prepared, split)
        real.update(zip((r.id for r in s.records), s.images))
    return real


def reconstruct_images(ldm, images, prompts: list[str], batch_size: int = 32):
    """The VAE's ceiling: (N, 3, R, R) uint8 real sprites -> their reconstructions (posterior mean,
    decoded), uint8. No sampler can put more into an image than this decoder gives back, so scoring
    these beside the samples shows which half of the system limits a metric. (Here, not in
    spritegen/ldm, whose every change retrains the VAE stage.)"""
    import torch

    from spritegen.io import to_uint8
    from spritegen.ldm.vae import decode

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if images.shape[-1] != ldm.resolution:
        raise UserError(f"the VAE was trained at {ldm.resolution} px but the sprites are {images.shape[-1]} px")
    device = next(ldm.vae.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device).float() / 127.5 - 1.0
            states, mask = ldm.text.eval()(list(prompts[i : i + batch_size]))  # read by a text-conditioned decoder only
            z = ldm.vae.encode(x).latent_dist.mean
            out.append(to_uint8(decode(ldm.vae, z, states, mask).float().cpu()))
    return torch.cat(out)
