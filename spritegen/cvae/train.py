"""Training of the conditional VAE (seed 004), one DVC stage:

    spritegen train cvae           # data/prepared + models/text -> models/cvae

The loop is ``train_cvae``; everything around it is the shared training core (spritegen/train/): run
state and resume, the guarded fused step, logging, the data on the device. An interrupted run continues
where it stopped when the same command (or ``dvc repro``) runs again, bit for bit on the CPU.

Posterior collapse is watched every epoch: the validation KL per latent dimension and the number of
active units (dimensions whose posterior mean varies across sprites: Cov_x E[z_u] > 0.01, Burda et al.).
"""

from __future__ import annotations

import functools
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from spritegen.attributes import ATTRIBUTES, attribute_matrix, balanced_weights, cardinalities, drop_attributes, measure_shapes
from spritegen.checkpoint import flatten_state, load_into, load_tensors
from spritegen.cvae.bundle import generate_images, load_bundle, save_bundle
from spritegen.cvae.config import CVAEConfig
from spritegen.cvae.model import CVAE, beta_at, elbo_terms, kl_per_dim, total_loss
from spritegen.data.dataset import SpriteSplit, load_split
from spritegen.errors import UserError
from spritegen.image_losses import Perceptual
from spritegen.io import save_grid, write_json
from spritegen.text.encoder import TextEncoder, load_text_encoder
from spritegen.train.batches import Batch, SpriteBatches
from spritegen.train.guards import EarlyStopping, StepGuard
from spritegen.train.log import Means, TrainLog, memory
from spritegen.train.optim import adamw, guarded_step, load_opt_state, opt_state, set_lr
from spritegen.train.runtime import Runtime, start
from spritegen.train.state import (check_resume_params, code_files, current, fingerprint, load_run_state, open_state,
                                   publish, save_run_state, staging, write_atomic)
from spritegen.train.text import pooled_prompts

SECTIONS = ("train", "cvae")
PARAMS = ("train", "cvae")  # what the stage reads: dvc.yaml lists the same, tests/test_stage_params.py checks both
# the grid shown per epoch and at the end: colour, type, size and shape words the parser reads
FIXED_PROMPTS = (
    "a red fire type pokemon", "a blue water type pokemon", "a green grass type pokemon", "a yellow electric type pokemon",
    "a small pink fairy type pokemon", "a huge brown ground type pokemon", "a purple ghost type pokemon", "a white ice type pokemon",
)


def main(args) -> int:
    from spritegen.params import load_sections, select, show

    cfgs = load_sections(SECTIONS, args.params, args.preset)
    show("spritegen train cvae", select(cfgs, PARAMS))
    if args.dry_run:
        return 0
    train_cvae(cfgs, args.data, args.out, args.text, resume=args.resume, fresh=args.fresh,
               allow_param_changes=args.allow_param_changes, stop_after=args.stop_after, live_dir=Path("dvclive/cvae"))
    return 0


def train_cvae(cfgs: dict, data_dir: Path, out_dir: Path, text_dir: Path = Path("models/text"), *, resume: bool = False,
               fresh: bool = False, allow_param_changes: bool = False, stop_after: int | None = None,
               live_dir: Path | None = None, progress: bool | None = None, on_epoch: Callable | None = None) -> dict:
    """Train the CVAE on the prepared data; returns the final metrics.

    ``on_epoch(epoch, metrics, generate)``, when given, is called after each epoch's state is saved, with
    ``generate(prompts, seeds, temperature, batch_size)`` drawing from the model as it is then (the
    published bundle's own ``generate_images``). It is how a sweep trial (spritegen/sweeps) scores and
    prunes a run of this same loop; it reads and may raise (the saved state stays resumable), it never
    steers the loop."""
    from spritegen.params import select
    from spritegen.runlog import log_run

    run, cfg, params = cfgs["train"], cfgs["cvae"], select(cfgs, PARAMS)
    rt = start(run)
    if rt.dist.enabled:
        raise UserError("the cvae family trains in one process (it takes minutes); launch it without accelerate/torchrun")
    out_dir = Path(out_dir)
    train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    text = load_text_encoder(text_dir).to(rt.device).requires_grad_(False)
    rt.seed_global("init", "cvae", per_rank=False)
    model = CVAE(cfg, train.resolution, text.dim, cardinalities())
    if cfg.init_from:
        model.load_state_dict(_init_weights(cfg, Path(cfg.init_from), train.resolution).state_dict())
    rt.prepare(model)
    data = SpriteBatches(train, rt.device)
    attrs = attribute_matrix(train.records, measure_shapes(train.images)).to(rt.device)  # (N, A) true attributes
    pooled = pooled_prompts(text, data.prompts)  # (P, D): the frozen encoder runs once per prompt
    weights = balanced_weights(attrs, with_shape=True) if cfg.balanced else None
    valset = validation_set(val, text, rt.device)
    perceptual = Perceptual(cfg.perceptual, "cvae.perceptual").to(rt.device)
    names = {p: f"cvae.{n}" for n, p in model.named_parameters()}
    opt = adamw({"cvae": model.parameters()}, lr={"cvae": cfg.lr}, clip={"cvae": cfg.grad_clip}, weight_decay=cfg.weight_decay)
    guard, early = StepGuard(run.max_bad_steps, run.explode_factor, rt.device), EarlyStopping(run.patience, run.min_delta)

    # ---- run state: an interrupted run of the same params, code and inputs continues where it stopped
    key = fingerprint(params, [Path(data_dir), Path(text_dir), *code_files(), *([Path(cfg.init_from)] if cfg.init_from else [])])
    root = open_state(out_dir, key, resume, fresh, _say)
    epoch, step, history = 0, 0, []
    if (loaded := load_run_state(root)) is not None:
        flat, opt_flat, meta = loaded
        if resume:
            check_resume_params(meta["params"], params, allow_param_changes, _say)
        load_into(model, flat, "cvae", root)
        load_opt_state(opt, names, opt_flat)
        guard.load(meta["guard"])
        early.load(meta["early"])
        epoch, step, history = meta["epoch"], meta["step"], meta["history"]
        _say(f"resuming cvae at epoch {epoch} (step {step}) from {root}")
    spe = data.steps_per_epoch(cfg.batch_size)
    stop_epoch = min(cfg.epochs, epoch + stop_after) if stop_after else cfg.epochs
    log = TrainLog("cvae", live_dir, cfg.epochs * spe, out_dir.parent / "cvae.tensorboard" if run.tensorboard else None,
                   progress, done_steps=epoch * spe)
    log.replay(history)
    log.say(f"cvae: {sum(p.numel() for p in model.parameters()):,} parameters, perceptual {perceptual.backend}, "
            f"{len(train)} training sprites, {spe} steps per epoch")
    t_start, steps_at_start, metrics = time.time(), step, {}
    try:
        for e in range(epoch, stop_epoch):
            g = rt.generator("cvae", e)  # the epoch's order, flips, prompts, attribute dropout and z noise
            rt.seed_global("cvae", e)  # dropout
            t_epoch, means, interval = time.time(), Means(), Means()
            for b, batch in enumerate(draw_epoch(data, g, cfg.batch_size, run.augment.hflip, weights)):
                set_lr(opt, "cosine", e * spe + b, cfg.epochs * spe, False)
                x = data.images(batch, run.augment, g)
                a = drop_attributes(attrs[batch.idx], cfg.attribute_dropout, g)
                with rt.autocast():
                    c = model.condition(pooled[batch.prompt], a)
                    mu, logvar = model.encode(x, c)
                    z = mu + torch.randn(mu.shape, generator=g, device=mu.device) * (0.5 * logvar).exp()
                    terms = elbo_terms(model.decode(z, c).float(), x, mu.float(), logvar.float(), perceptual, cfg.chroma_weight)
                beta = beta_at(cfg, e + b / spe)
                loss = total_loss(terms, cfg, beta)
                bad, norms = guarded_step(opt, loss, guard)
                means.add({"loss": loss, **terms, "grad_norm": norms["cvae"]}, ~bad)
                interval.add({"loss": loss}, ~bad)
                step += 1
                log.advance()
                if step % run.log_every == 0:  # the only host synchronisation inside an epoch
                    guard.check()
                    log.interval(step, interval.read())
            epoch = e + 1
            row = {f"train/{k}": v for k, v in means.read().items()}
            row.update({f"guard/{k}": float(v) for k, v in guard.check().items()})
            row.update({"beta": beta_at(cfg, epoch - 1e-9), "lr": opt.param_groups[0]["lr"]})
            val_row, _ = validate(model, valset, perceptual, cfg)
            metrics = {**row, **val_row}
            log.epoch(epoch, step, metrics, {"images_per_s": len(data) / max(time.time() - t_epoch, 1e-9), **memory(rt.device)})
            weights_now = flatten_state({"cvae": model})
            if early.update(val_row["val/loss"]):
                write_atomic(root, "best", lambda f: _save_weights(f, weights_now))
            if run.checkpoint_every and epoch % run.checkpoint_every == 0:
                write_atomic(root, f"epoch_{epoch:04d}", lambda f: _save_weights(f, weights_now))
            if run.sample_every and epoch % run.sample_every == 0 and epoch < cfg.epochs:
                sample_grid(model, text, root / "samples" / f"epoch_{epoch:04d}.png")
            save_run_state(root, weights_now, opt_state(opt, names),
                           {"epoch": epoch, "step": step, "guard": guard.state(), "early": early.state(),
                            "history": log.history, "params": params})
            if on_epoch is not None:
                on_epoch(epoch, metrics, functools.partial(generate_images, model, text))
            if early.stop:
                log.say(f"cvae: early stop after epoch {epoch}: no better val/loss for {run.patience} epochs")
                break
    except BaseException:
        log.close()
        raise
    if epoch < cfg.epochs and not early.stop:  # stopped by --stop-after: the state holds everything to continue
        log.close()
        log.say(f"cvae: stopped after epoch {epoch} of {cfg.epochs}; run the same command again to continue")
        return metrics
    metrics = write_output(model, text, out_dir, root, valset, perceptual, cfg, params, rt, log, metrics, early)
    seconds = time.time() - t_start
    log_run("cvae", {"seconds": seconds, "steps": step - steps_at_start, **memory(rt.device), **rt.settings(),
                     "images_per_s": (step - steps_at_start) * cfg.batch_size / max(seconds, 1e-9)})
    return metrics


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the pieces of a step --------------------------------------------------------------------------------


def draw_epoch(data: SpriteBatches, g: torch.Generator, batch_size: int, hflip: float, weights: torch.Tensor | None):
    """An epoch's batches: a permutation, or with ``weights`` (balanced sampling) len(data) draws with
    replacement, rare Type x Colour x Shape groups oversampled. Each sprite is shown with one of its prompts."""
    pool = data.pool()
    if weights is None:
        yield from data.epoch(g, batch_size, pool, hflip)
        return
    n = len(data)
    idx = torch.multinomial(weights, n, replacement=True, generator=g)
    flip = torch.rand(n, generator=g, device=data.device) < hflip
    pick = (torch.rand(n, generator=g, device=data.device) * pool.count[idx]).long()
    prompt = pool.ids[idx, pick]
    for b in range(0, n, batch_size):
        yield Batch(idx[b : b + batch_size], flip[b : b + batch_size], prompt[b : b + batch_size])


# --- validation, grids, output ---------------------------------------------------------------------------


def validation_set(val: SpriteSplit, text: TextEncoder, device: torch.device) -> dict:
    """The validation sprites on the device with their first prompt's text and their true attributes."""
    return {"x": val.images.to(device).float() / 127.5 - 1,
            "text": pooled_prompts(text, [r.prompts[0] for r in val.records]),
            "attrs": attribute_matrix(val.records, measure_shapes(val.images)).to(device)}


@torch.no_grad()
def validate(model: CVAE, valset: dict, perceptual, cfg: CVAEConfig, batch_size: int = 256) -> tuple[dict[str, float], list[float]]:
    """Deterministic validation (z = the posterior mean): the terms, the loss at β = 1 (comparable across
    the β cycle: early stopping and best/ use it), the active units, and the KL of each latent dimension."""
    was = model.training
    model.eval()
    sums, kl_dims, mus, n = {}, 0.0, [], 0
    for i in range(0, len(valset["x"]), batch_size):
        x = valset["x"][i : i + batch_size]
        c = model.condition(valset["text"][i : i + batch_size], valset["attrs"][i : i + batch_size])
        mu, logvar = model.encode(x, c)
        terms = elbo_terms(model.decode(mu, c), x, mu, logvar, perceptual, cfg.chroma_weight)
        terms["loss"] = total_loss(terms, cfg, beta=1.0)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(x)
        kl_dims = kl_dims + kl_per_dim(mu, logvar).sum(0)
        mus.append(mu)
        n += len(x)
    model.train(was)
    kl_dims = (kl_dims / n).tolist()
    row = {f"val/{k}": v / n for k, v in sums.items()}
    row["val/active_units"] = float((torch.cat(mus).var(0) > 0.01).sum())
    return row, kl_dims


@torch.no_grad()
def sample_grid(model: CVAE, text: TextEncoder, path: Path) -> None:
    """The fixed prompts x 2 seeds (temperature 1), one prompt per column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts = list(FIXED_PROMPTS) * 2
    seeds = [0] * len(FIXED_PROMPTS) + [1] * len(FIXED_PROMPTS)
    save_grid(generate_images(model, text, prompts, seeds), path, ncol=len(FIXED_PROMPTS), scale=max(1, 128 // model.resolution))


def _save_weights(folder: Path, flat: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(flat, str(folder / "model.safetensors"))


def _init_weights(cfg: CVAEConfig, folder: Path, resolution: int) -> CVAE:
    """``cvae.init_from``: a trained CVAE of the same architecture (seed 003's resume_fix)."""
    model, _, meta = load_bundle(folder)
    arch = ("channels", "hidden_dim", "latent_dim", "text_dim", "attr_dim")
    if any(getattr(model.cfg, k) != getattr(cfg, k) for k in arch) or model.resolution != resolution:
        raise UserError(f"cvae.init_from={folder}: its architecture or resolution differs from params.yaml's; "
                        f"it has {[(k, getattr(model.cfg, k)) for k in arch]} at {model.resolution} px")
    return model


def write_output(model: CVAE, text: TextEncoder, out_dir: Path, root: Path, valset: dict, perceptual, cfg: CVAEConfig,
                 params: dict, rt: Runtime, log: TrainLog, metrics: dict, early: EarlyStopping) -> dict:
    """The final bundle, best/ and kept epochs as bundles, the sample grid, metrics, posterior-collapse
    report, history.csv and curves.png; made in a temporary folder, then moved into place. Then the run
    state is removed, so a forced re-run starts fresh."""
    extra = {"params": params, "run": rt.settings(), "perceptual_backend": perceptual.backend,
             "text_source": "models/text"}
    tmp = staging(out_dir)
    _, kl_dims = validate(model, valset, perceptual, cfg)
    save_bundle(tmp, model, text, extra)
    for kept in sorted(p.name.removesuffix(".json") for p in root.glob("*.json") if p.name.startswith(("best", "epoch_"))):
        other = CVAE(cfg, model.resolution, text.dim, cardinalities()).to(rt.device)
        load_into(other, load_tensors(current(root, kept) / "model.safetensors"), "cvae", root / kept)
        save_bundle(tmp / kept, other, text, extra)
    if (root / "samples").is_dir():
        shutil.copytree(root / "samples", tmp / "samples")
    sample_grid(model, text, tmp / "samples.png")
    log.image("cvae_samples.png", tmp / "samples.png")
    metrics = {**metrics, "epochs": float(len([r for r in log.history if r["kind"] == "epoch"])), "stopped_early": float(early.stop)}
    write_json({"kl_per_dim": [round(v, 6) for v in kl_dims], "active_units": metrics.get("val/active_units"),
                "attributes": list(ATTRIBUTES)}, tmp / "collapse.json")
    write_json({k: v for k, v in metrics.items() if v == v}, tmp / "metrics.json")
    log.finish(tmp, {k: v for k, v in metrics.items() if v == v})
    publish(tmp, out_dir, root)
    return metrics
