"""Training of the text-conditioned GAN (seed 002, issue 13), one DVC stage:

    spritegen train gan            # data/prepared + models/text -> models/gan

The loop is ``train_gan``: per batch of real sprites one discriminator step (and a critic step), and
after every ``d_steps_at(epoch)``-th of them one generator step. Everything around it is the shared
training core (spritegen/train/): run state and resume, a guarded fused step per network, logging, the
data on the device. An interrupted run continues where it stopped when the same command (or ``dvc
repro``) runs again, bit for bit on the CPU.

Collapse is watched every epoch (spritegen/gan/monitor.py): a fixed batch of noise and of training
prompts through the generator, scored with the evaluation rubric's own code (spritegen/collapse.py),
with the discriminator's accuracy on the matching real sprites. Crossing the seed's thresholds prints a
warning; ``gan.collapse_patience`` stops a run that stays collapsed, and best/ is the last healthy epoch.
"""

from __future__ import annotations

import functools
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from spritegen.attributes import attribute_matrix, cardinalities, drop_attributes, measure_shapes, prompt_attributes
from spritegen.checkpoint import flatten_state, load_into, load_tensors
from spritegen.collapse import FEATURE_INDICATORS, PIXEL_RUBRIC, pixel_statistics
from spritegen.data.dataset import load_split
from spritegen.errors import UserError
from spritegen.gan.bundle import generate_images, save_bundle
from spritegen.gan.config import GANConfig
from spritegen.gan.model import (CRITIC_TRAINS, Generator, ProjectionDiscriminator, TransformerCritic, attribute_loss,
                                 count_parameters, critic_phase_at, curriculum_resolution_at, d_loss, d_steps_at,
                                 discriminator_view, g_objective, gradient_penalty, instance_noise_at, mode_seeking_loss,
                                 penalty_scale)
from spritegen.gan.monitor import collapse_row, collapse_warnings
from spritegen.io import save_grid, write_json
from spritegen.runtime import derive_seed
from spritegen.text.encoder import TextEncoder, load_text_encoder
from spritegen.train.batches import SpriteBatches
from spritegen.train.guards import StepGuard
from spritegen.train.log import Means, TrainLog, memory
from spritegen.train.optim import adamw, guarded_step, load_opt_state, opt_state
from spritegen.train.runtime import Runtime, start
from spritegen.train.state import (check_resume_params, code_files, current, fingerprint, load_run_state, open_state,
                                   publish, save_run_state, staging, write_atomic)
from spritegen.train.text import pooled_prompts

SECTIONS = ("train", "gan")
PARAMS = ("train", "gan")  # what the stage reads: dvc.yaml lists the same, tests/test_stage_params.py checks both
# the grid shown per epoch and at the end (the same prompts as the cvae family's grid)
FIXED_PROMPTS = (
    "a red fire type pokemon", "a blue water type pokemon", "a green grass type pokemon", "a yellow electric type pokemon",
    "a small pink fairy type pokemon", "a huge brown ground type pokemon", "a purple ghost type pokemon", "a white ice type pokemon",
)
PHASES = ("off", "isolated", "isolation", "ramp", "integrated")  # logged as their index (dvclive takes numbers)


def main(args) -> int:
    from spritegen.params import load_sections, select, show

    cfgs = load_sections(SECTIONS, args.params, args.preset)
    show("spritegen train gan", select(cfgs, PARAMS))
    if args.dry_run:
        return 0
    train_gan(cfgs, args.data, args.out, args.text, resume=args.resume, fresh=args.fresh,
              allow_param_changes=args.allow_param_changes, stop_after=args.stop_after, live_dir=Path("dvclive/gan"))
    return 0


def train_gan(cfgs: dict, data_dir: Path, out_dir: Path, text_dir: Path = Path("models/text"), *, resume: bool = False,
              fresh: bool = False, allow_param_changes: bool = False, stop_after: int | None = None,
              live_dir: Path | None = None, progress: bool | None = None, on_epoch: Callable | None = None) -> dict:
    """Train the GAN on the prepared data; returns the final metrics.

    ``on_epoch(epoch, metrics, generate)``, when given, is called after each epoch's state is saved, with
    ``generate(prompts, seeds, temperature, batch_size)`` drawing from the generator as it is then (the
    published bundle's own ``generate_images``). It is how a sweep trial (spritegen/sweeps) scores and
    prunes a run of this same loop; it reads and may raise (the saved state stays resumable), it never
    steers the loop."""
    from spritegen.params import select
    from spritegen.runlog import log_run

    run, cfg, params = cfgs["train"], cfgs["gan"], select(cfgs, PARAMS)
    rt = start(run)
    if rt.dist.enabled:
        raise UserError("the gan family trains in one process (it takes minutes); launch it without accelerate/torchrun")
    out_dir, dev = Path(out_dir), rt.device
    train = load_split(data_dir, "train")
    R = train.resolution
    cfg.check_resolution(R)  # a width list that does not build the data's size: an error before any compute
    text = load_text_encoder(text_dir).to(dev).requires_grad_(False)
    rt.seed_global("init", "gan", per_rank=False)
    nets = build_nets(cfg, run, rt, R, text.dim)
    data = SpriteBatches(train, dev)
    pool = data.pool()
    pooled = pooled_prompts(text, data.prompts)  # (P, D): the frozen encoder runs once per prompt
    attrs = attribute_matrix(train.records, measure_shapes(train.images)).to(dev)  # (N, A) each sprite's true attributes
    monitor = monitor_batch(data, pooled, data.prompts, cfg, run.seed, dev)

    # ---- run state: an interrupted run of the same params, code and inputs continues where it stopped
    key = fingerprint(params, [Path(data_dir), Path(text_dir), *code_files()])
    root = open_state(out_dir, key, resume, fresh, _say)
    epoch, step, history = 0, 0, []
    watch = {"streak": 0, "last_healthy": None, "stopped": False}  # the collapse monitor's state
    if (loaded := load_run_state(root)) is not None:
        flat, opt_flat, meta = loaded
        if resume:
            check_resume_params(meta["params"], params, allow_param_changes, _say)
        nets.load(flat, opt_flat, meta["guards"], root)
        epoch, step, history, watch = meta["epoch"], meta["step"], meta["history"], meta["watch"]
        _say(f"resuming gan at epoch {epoch} (step {step}) from {root}")
    spe = data.steps_per_epoch(cfg.batch_size)  # discriminator steps per epoch
    stop_epoch = min(cfg.epochs, epoch + stop_after) if stop_after else cfg.epochs
    log = TrainLog("gan", live_dir, cfg.epochs * spe, out_dir.parent / "gan.tensorboard" if run.tensorboard else None,
                   progress, done_steps=epoch * spe)
    log.replay(history)
    G, D, C = nets.G, nets.D, nets.C
    log.say(f"gan: generator {count_parameters(G):,} parameters (NCA {count_parameters(G.nca):,}), discriminator "
            f"{count_parameters(D):,}, critic {count_parameters(C):,}; {len(train)} training sprites, {spe} D steps per epoch; "
            f"loss {cfg.loss}, penalty {cfg.penalty}, DiffAugment {cfg.augment_policies or 'off'}")
    if cfg.loss != "nonsaturating" and cfg.label_smoothing != 1:
        log.say(f"gan: label_smoothing {cfg.label_smoothing} does not apply to the {cfg.loss} loss (it has no labels)")
    t_start, steps_at_start, metrics = time.time(), step, {}
    try:
        for e in range(epoch, stop_epoch):
            g = rt.generator("gan", e)  # the epoch's order, flips, prompts, noise, augmentations
            rt.seed_global("gan", e)  # dropout
            k, res = d_steps_at(cfg, e), curriculum_resolution_at(cfg, e, R)
            t_epoch, means, interval = time.time(), {n: Means() for n in ("d", "g", "g_critic", "critic")}, Means()
            for b, batch in enumerate(data.epoch(g, cfg.batch_size, pool, run.augment.hflip)):
                sigma, (phase, critic_w) = instance_noise_at(cfg, e + b / spe), critic_phase_at(cfg, e + b / spe)

                def view(x: torch.Tensor, real: bool) -> torch.Tensor:  # what D is shown of a batch at this point
                    return discriminator_view(x, cfg, res, sigma, real, g)

                x_real = data.images(batch, run.augment, g)  # (B, 3, R, R)
                t = pooled[batch.prompt]  # (B, text_width)
                a = drop_attributes(attrs[batch.idx], cfg.attribute_dropout, g)  # (B, A): the same condition for real and fake
                terms, ok, real_v, fake_v = d_step(nets, cfg, rt, x_real, t, a, view, step % cfg.penalty_every == 0, g)
                means["d"].add(terms, ok)
                interval.add({"loss": terms["loss_d"]}, ok)
                if C is not None:  # trains in its isolated, ramp and integrated phases; frozen in isolation
                    means["critic"].add(*critic_step(nets, cfg, rt, real_v, fake_v, t, a, phase))
                if (b + 1) % k == 0:  # a generator step after every k-th discriminator step
                    g_terms, ok_g = g_step(nets, cfg, rt, t, a, view, critic_w, g)
                    means["g"].add({k_: v for k_, v in g_terms.items() if k_ != "g_critic"}, ok_g)
                    if "g_critic" in g_terms:  # only while the critic reaches the generator (ramp, integrated)
                        means["g_critic"].add({"g_critic": g_terms["g_critic"]}, ok_g)
                step += 1
                log.advance()
                if step % run.log_every == 0:  # the only host synchronisation inside an epoch
                    for guard in nets.guards.values():
                        guard.check()
                    log.interval(step, interval.read())
            epoch = e + 1
            # ---- the epoch's row: losses, schedules, and collapse on the fixed batch
            metrics, warnings = epoch_row(nets, cfg, epoch, k, res, means, monitor)
            healthy = not warnings
            watch["streak"] = 0 if healthy else watch["streak"] + 1
            if healthy:
                watch["last_healthy"] = epoch
            else:
                log.say(f"gan epoch {epoch}: COLLAPSE WARNING ({watch['streak']} epoch(s) in a row): " + "; ".join(warnings))
            log.epoch(epoch, step, metrics, {"images_per_s": len(data) / max(time.time() - t_epoch, 1e-9), **memory(dev)})
            weights_now = flatten_state(nets.modules)
            if healthy:  # best/ is the last healthy epoch's generator
                write_atomic(root, "best", lambda f: _save_weights(f, weights_now))
            if run.checkpoint_every and epoch % run.checkpoint_every == 0:
                write_atomic(root, f"epoch_{epoch:04d}", lambda f: _save_weights(f, weights_now))
            if run.sample_every and epoch % run.sample_every == 0 and epoch < cfg.epochs:
                sample_grid(G, text, root / "samples" / f"epoch_{epoch:04d}.png")
            if cfg.collapse_patience and watch["streak"] >= cfg.collapse_patience:
                watch["stopped"] = True
            save_run_state(root, weights_now, nets.opt_state(),
                           {"epoch": epoch, "step": step, "guards": {n: gd.state() for n, gd in nets.guards.items()},
                            "watch": watch, "history": log.history, "params": params})
            if on_epoch is not None:
                on_epoch(epoch, metrics, functools.partial(generate_images, G, text))
            if watch["stopped"]:
                log.say(f"gan: stopped after epoch {epoch}: collapsed for {watch['streak']} epochs in a row "
                        f"(gan.collapse_patience); best/ is epoch {watch['last_healthy']}, the last healthy one")
                break
    except BaseException:
        log.close()
        raise
    if epoch < cfg.epochs and not watch["stopped"]:  # stopped by --stop-after: the state holds everything to continue
        log.close()
        log.say(f"gan: stopped after epoch {epoch} of {cfg.epochs}; run the same command again to continue")
        return metrics
    metrics = write_output(G, text, out_dir, root, cfg, params, rt, log, metrics, watch, monitor)
    seconds = time.time() - t_start
    log_run("gan", {"seconds": seconds, "steps": step - steps_at_start, **memory(dev), **rt.settings(),
                    "images_per_s": (step - steps_at_start) * cfg.batch_size / max(seconds, 1e-9)})
    return metrics


# --- the networks and their steps ------------------------------------------------------------------------------


@dataclass
class Nets:
    """The generator, the discriminator and the optional critic, with one optimiser and one step guard each."""

    G: Generator
    D: ProjectionDiscriminator
    C: TransformerCritic | None
    opts: dict
    guards: dict

    @property
    def modules(self) -> dict:
        return {"generator": self.G, "discriminator": self.D, **({"critic": self.C} if self.C is not None else {})}

    @property
    def names(self) -> dict:
        """parameter -> "network.name", the key of its optimiser state."""
        return {p: f"{net}.{n}" for net, m in self.modules.items() for n, p in m.named_parameters()}

    def opt_state(self) -> dict:
        names = self.names
        return {k: v for opt in self.opts.values() for k, v in opt_state(opt, names).items()}

    def load(self, flat: dict, opt_flat: dict, guards: dict, root: Path) -> None:
        for net, m in self.modules.items():
            load_into(m, flat, net, root)
        names = self.names
        for name, opt in self.opts.items():
            load_opt_state(opt, names, opt_flat)
            self.guards[name].load(guards[name])


def build_nets(cfg: GANConfig, run, rt: Runtime, resolution: int, text_width: int) -> Nets:
    """The networks on the device, a fused AdamW each at constant rates with the GAN's betas (the
    generator's with a group of its own for the NCA, lr_nca), and a step guard each (gan.explode_factor)."""
    G = rt.prepare(Generator(cfg, resolution, text_width, cardinalities()))
    D = rt.prepare(ProjectionDiscriminator(cfg, resolution, text_width, cardinalities()))
    C = rt.prepare(TransformerCritic(cfg, resolution, text_width, cardinalities())) if cfg.critic else None
    nca = list(G.nca.parameters()) if G.nca is not None else []
    nca_ids = {id(p) for p in nca}
    g_groups = {"g": [p for p in G.parameters() if id(p) not in nca_ids], **({"nca": nca} if nca else {})}
    opts = {"generator": adamw(g_groups, lr={"g": cfg.lr_g, "nca": cfg.lr_nca}, clip={"g": cfg.grad_clip, "nca": cfg.grad_clip}, weight_decay=0.0),
            "discriminator": adamw({"d": D.parameters()}, lr={"d": cfg.lr_d}, clip={"d": cfg.grad_clip}, weight_decay=0.0)}
    if C is not None:
        opts["critic"] = adamw({"critic": C.parameters()}, lr={"critic": cfg.lr_critic}, clip={"critic": cfg.grad_clip}, weight_decay=0.0)
    for opt in opts.values():
        for group in opt.param_groups:  # constant rates (the seed's); GANs' Adam betas
            group["lr"], group["betas"] = group["peak_lr"], (cfg.beta1, cfg.beta2)
    guards = {name: StepGuard(run.max_bad_steps, cfg.explode_factor, rt.device) for name in opts}
    return Nets(G, D, C, opts, guards)


def d_step(nets: Nets, cfg: GANConfig, rt: Runtime, x_real: torch.Tensor, t: torch.Tensor, a: torch.Tensor, view,
           penalise: bool, g: torch.Generator) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One discriminator step: real sprites against a fresh fake batch under the same condition, both as D
    sees them; the auxiliary classifier learns from the reals; the penalty on every penalty_every-th step
    (lazy regularisation). Returns the terms, whether the step was taken, and the two views (the critic's)."""
    z = torch.randn((len(x_real), cfg.z_dim), generator=g, device=x_real.device)
    with torch.no_grad(), rt.autocast():
        x_fake = nets.G(z, t, a, g).float()
    real_v, fake_v = view(x_real, True), view(x_fake, False)
    with rt.autocast():
        (real_logits, real_classes), fake_logits = nets.D.score(real_v, t, a), nets.D(fake_v, t, a).float()
    real_logits = real_logits.float()
    loss_d = d_loss(real_logits, fake_logits, cfg.loss, cfg.label_smoothing)
    terms = {"loss_d": loss_d, "d_real": real_logits.mean(), "d_fake": fake_logits.mean(),
             "acc_real": (real_logits > 0).float().mean(), "acc_fake": (fake_logits < 0).float().mean()}
    total = loss_d
    if cfg.aux_weight > 0:  # AC-GAN: D learns each attribute from the reals only
        terms["d_aux"] = attribute_loss(real_classes, a)
        total = total + cfg.aux_weight * terms["d_aux"]
    if cfg.penalty != "none" and penalise:
        terms["penalty"] = gradient_penalty(nets.D, real_v, fake_v, t, a, cfg.penalty, g)
        total = total + penalty_scale(cfg) * terms["penalty"]
    bad, norms = guarded_step(nets.opts["discriminator"], total, nets.guards["discriminator"])
    return {**terms, "grad_norm_d": norms["d"]}, ~bad, real_v, fake_v


def critic_step(nets: Nets, cfg: GANConfig, rt: Runtime, real_v: torch.Tensor, fake_v: torch.Tensor, t: torch.Tensor,
                a: torch.Tensor, phase: str) -> tuple[dict, torch.Tensor]:
    """The critic on D's views: a training step in its isolated, ramp and integrated phases; in the
    isolation phase it is frozen and only scored. Returns its terms and whether they count."""
    trains = CRITIC_TRAINS[phase]
    with torch.set_grad_enabled(trains), rt.autocast():
        c_real, c_fake = nets.C(real_v, t, a).float(), nets.C(fake_v, t, a).float()
    terms = {"loss_critic": d_loss(c_real, c_fake, cfg.loss, cfg.label_smoothing),
             "critic_acc_real": (c_real > 0).float().mean(), "critic_acc_fake": (c_fake < 0).float().mean()}
    keep = torch.ones((), dtype=torch.bool, device=c_real.device)
    if trains:
        bad, norms = guarded_step(nets.opts["critic"], terms["loss_critic"], nets.guards["critic"])
        keep, terms["grad_norm_critic"] = ~bad, norms["critic"]
    return terms, keep


def g_step(nets: Nets, cfg: GANConfig, rt: Runtime, t: torch.Tensor, a: torch.Tensor, view, critic_w: float,
           g: torch.Generator) -> tuple[dict, torch.Tensor]:
    """One generator step (D and the critic frozen meanwhile): the adversarial loss on D's view of fresh
    fakes, plus the auxiliary classifier's, the critic's (once it may speak) and the mode-seeking term."""
    n = len(t)
    z = torch.randn((n, cfg.z_dim), generator=g, device=t.device)
    if cfg.mode_seeking > 0 and n >= 2:  # MSGAN: the first half's conditions again, with other noise
        h = n // 2
        t, a = torch.cat([t[:h], t[:h], t[2 * h :]]), torch.cat([a[:h], a[:h], a[2 * h :]])
    frozen = [m for m in (nets.D, nets.C) if m is not None]
    for m in frozen:
        m.requires_grad_(False)
    with rt.autocast():
        x_fake = nets.G(z, t, a, g).float()
        loss_g, terms = g_objective(nets.D, nets.C, view(x_fake, False), t, a, cfg.loss, critic_w, cfg.aux_weight)
        if cfg.mode_seeking > 0 and n >= 2:
            terms["g_mode_seeking"] = mode_seeking_loss(x_fake, z)
            loss_g = loss_g + cfg.mode_seeking * terms["g_mode_seeking"]
    bad, norms = guarded_step(nets.opts["generator"], loss_g, nets.guards["generator"])
    for m in frozen:
        m.requires_grad_(True)
    return {"loss_g": loss_g, **terms, **{f"grad_norm_{k}": v for k, v in norms.items()}}, ~bad


def epoch_row(nets: Nets, cfg: GANConfig, epoch: int, k: int, res: int, means: dict, monitor: dict) -> tuple[dict, list[str]]:
    """The epoch's metrics (mean losses, guard counts, schedules, collapse on the fixed batch) and its
    collapse warnings."""
    row = {f"train/{k_}": v for m in means.values() for k_, v in m.read().items()}
    for name, guard in nets.guards.items():
        row.update({f"guard/{name}_{k_}": float(v) for k_, v in guard.check().items()})
    phase, critic_w = critic_phase_at(cfg, epoch - 1e-9)
    row.update({"sched/d_steps": float(k), "sched/resolution": float(res), "sched/instance_noise": instance_noise_at(cfg, epoch - 1e-9),
                "critic/phase": float(PHASES.index(phase)), "critic/weight": critic_w})
    watched = measure_collapse(nets.G, nets.D, monitor)
    warnings = collapse_warnings(watched, cfg)
    return {**row, **watched, "collapse/healthy": float(not warnings)}, warnings


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the collapse monitor's fixed batch ----------------------------------------------------------------------


def monitor_batch(data, pooled: torch.Tensor, prompts: list[str], cfg: GANConfig, seed: int, device: torch.device) -> dict:
    """``monitor_size`` fixed training sprites with one fixed prompt each (its pooled text and the attributes
    it names, as generation reads a prompt), fixed noise, and the sprites' pixel statistics (the rubric's
    real reference, at the same count)."""
    n = min(cfg.monitor_size, len(data))
    g = torch.Generator().manual_seed(derive_seed(seed, "gan", "monitor"))
    idx = torch.randperm(len(data), generator=g)[:n]
    pool = data.pool()
    count = pool.count.cpu()[idx]
    pick = (torch.rand(n, generator=g) * count).long()
    prompt = pool.ids.cpu()[idx, pick]
    real = data.images_u8[idx.to(data.device)]  # (n, 3, R, R) uint8
    return {"z": torch.randn((n, cfg.z_dim), generator=g).to(device), "text": pooled[prompt.to(pooled.device)],
            "attrs": prompt_attributes([prompts[i] for i in prompt.tolist()], device),
            "real": real.float() / 127.5 - 1, "reference": pixel_statistics(real.cpu().numpy())}


@torch.no_grad()
def measure_collapse(G: Generator, D: ProjectionDiscriminator, monitor: dict) -> dict[str, float]:
    """The fixed batch through the generator (evaluation mode): the collapse row, the NCA's alive ratio, and
    the discriminator's accuracy on the clean fixed reals and fakes (logit > 0 called real; for the wgan
    loss, whose critic has no fixed midpoint, read it as a trend only)."""
    was_g, was_d = G.training, D.training
    G.eval()
    D.eval()
    x, alive = G.forward_alive(monitor["z"], monitor["text"], monitor["attrs"])
    row = collapse_row(x, monitor["reference"])
    if alive is not None:
        row["nca/alive_ratio"] = float(alive)
    row["collapse/d_acc_real"] = float((D(monitor["real"], monitor["text"], monitor["attrs"]) > 0).float().mean())
    row["collapse/d_acc_fake"] = float((D(x, monitor["text"], monitor["attrs"]) < 0).float().mean())
    G.train(was_g)
    D.train(was_d)
    return row


# --- grids and output ------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_grid(G: Generator, text: TextEncoder, path: Path) -> None:
    """The fixed prompts x 2 seeds, one prompt per column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts = list(FIXED_PROMPTS) * 2
    seeds = [0] * len(FIXED_PROMPTS) + [1] * len(FIXED_PROMPTS)
    save_grid(generate_images(G, text, prompts, seeds, batch_size=len(prompts)), path, ncol=len(FIXED_PROMPTS),
              scale=max(1, 128 // G.resolution))


def _save_weights(folder: Path, flat: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v for k, v in flat.items() if k.startswith("generator.")}, str(folder / "model.safetensors"))


def write_output(G: Generator, text: TextEncoder, out_dir: Path, root: Path, cfg: GANConfig, params: dict, rt: Runtime,
                 log: TrainLog, metrics: dict, watch: dict, monitor: dict) -> dict:
    """The final bundle, best/ (the last healthy epoch) and kept epochs as bundles, the sample grid, metrics,
    the collapse report, history.csv and curves.png; made in a temporary folder, then moved into place.
    Then the run state is removed, so a forced re-run starts fresh."""
    extra = {"params": params, "run": rt.settings(), "text_source": "models/text"}
    tmp = staging(out_dir)
    save_bundle(tmp, G, text, extra)
    for kept in sorted(p.name.removesuffix(".json") for p in root.glob("*.json") if p.name.startswith(("best", "epoch_"))):
        other = Generator(cfg, G.resolution, text.dim, cardinalities()).to(rt.device)
        load_into(other, load_tensors(current(root, kept) / "model.safetensors"), "generator", root / kept)
        save_bundle(tmp / kept, other, text, extra)
    if (root / "samples").is_dir():
        shutil.copytree(root / "samples", tmp / "samples")
    sample_grid(G, text, tmp / "samples.png")
    log.image("gan_samples.png", tmp / "samples.png")
    epochs = [r for r in log.history if r["kind"] == "epoch"]
    metrics = {**metrics, "epochs": float(len(epochs)), "stopped_on_collapse": float(watch["stopped"])}
    final = {k: v for k, v in metrics.items() if k.startswith(("collapse/", "nca/"))}
    write_json({"final": final, "warnings": collapse_warnings(final, cfg) if final else [],
                "last_healthy_epoch": watch["last_healthy"], "stopped_on_collapse": watch["stopped"],
                "score_max": 3 * len(PIXEL_RUBRIC), "rubric": {k: list(v) for k, v in PIXEL_RUBRIC.items()},
                "not_scored_in_training": list(FEATURE_INDICATORS), "monitor_size": len(monitor["z"]),
                "reference": monitor["reference"]}, tmp / "collapse.json")
    write_json({k: v for k, v in metrics.items() if v == v}, tmp / "metrics.json")
    log.finish(tmp, {k: v for k, v in metrics.items() if v == v})
    publish(tmp, out_dir, root)
    return metrics
