"""Training of the latent diffusion family, one DVC stage per call.

    spritegen train ldm --stage vae       # phases tagged vae       -> models/ldm/vae/
    spritegen train ldm --stage unet      # phases tagged unet      -> models/ldm/unet/
    spritegen train ldm --stage finetune  # phases tagged finetune  -> models/ldm/finetune/ (the generator)

The vae stage starts from the shared text encoder (``spritegen train text`` -> ``models/text``), each later
stage from the previous stage's bundle. One loop serves every phase of ``ldm`` (spritegen/ldm/schedule.py):
a phase only changes which components train, their learning rates and the loss weights. The pieces
around the loop are shared with every family (spritegen/train/): run state and resume, guards, the
fused optimiser step, EMA, logging, the data on the device.

An interrupted run (``kill -9``, a crash, ``--stop-after``) leaves its state beside the output; running
the same command (or ``dvc repro``) again continues it, and the result equals an uninterrupted run's,
bit for bit on the CPU. Several GPUs: ``accelerate launch --num_processes N -m spritegen train ldm
--stage S`` (spritegen/train/distributed.py).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from spritegen.checkpoint import flatten_state, load_into, unflatten_state
from spritegen.data.dataset import SpriteSplit, load_split
from spritegen.errors import UserError
from spritegen.io import save_grid, to_uint8, write_json
from spritegen.ldm.diffusion import NoiseSchedule, diffusion_loss
from spritegen.ldm.losses import contrastive_loss, hinge_d_loss, hinge_g_loss
from spritegen.ldm.models import LDM, ldm_from_text_stage, load_bundle, save_bundle
from spritegen.ldm.pipeline import FIXED_PROMPTS, ema_unet, generate_images
from spritegen.ldm.schedule import Phase
from spritegen.ldm.unet import denoise
from spritegen.ldm.vae import called_parts, decode, kl_free_bits, kl_weight, measure_scale, recon_loss
from spritegen.text.encoder import TextEncoder
from spritegen.train import distributed
from spritegen.train.batches import Batch, PromptPool, SpriteBatches
from spritegen.train.guards import EarlyStopping, StepGuard
from spritegen.image_losses import Perceptual
from spritegen.train.log import Means, TrainLog, memory
from spritegen.train.optim import EMA, adamw, guarded_step, load_opt_state, opt_state, set_lr
from spritegen.train.runtime import Runtime, start
from spritegen.train.state import (check_resume_params, code_files, fingerprint, load_run_state, open_state, publish,
                                   save_run_state, staging, state_root, write_atomic)
from spritegen.train.text import PromptTable

SECTIONS = ("train", "text", "vae", "unet", "ldm")
# What each stage reads: dvc.yaml lists the same keys, tests/test_stage_params.py checks both ways.
_COMMON = ("train", "text.lr", "text.grad_clip", "ldm.strategy", "ldm.phases", "ldm.align_lr")
PARAMS = {
    "vae": (*_COMMON, "vae", "ldm.stage_epochs.vae"),
    "unet": (*_COMMON, "vae", "unet", "ldm.stage_epochs.unet"),
    "finetune": (*_COMMON, "vae", "unet", "ldm.stage_epochs.finetune"),
}
PREVIOUS = {"unet": "vae", "finetune": "unet"}


def main(args) -> int:
    from spritegen.params import load_sections, select, show

    cfgs = load_sections(SECTIONS, args.params, args.preset)
    phases = cfgs["ldm"].phases_for(args.stage)
    if distributed.env_rank() == 0:  # under `accelerate launch`, only rank 0 prints
        show(f"spritegen train ldm --stage {args.stage}", select(cfgs, PARAMS[args.stage]),
             "phases:\n" + "".join(f"  {p.name} [{p.start},{p.end}) train={p.train}\n" for p in phases))
    if args.dry_run:
        return 0
    try:
        train_stage(args.stage, cfgs, args.data, args.out, args.text, resume=args.resume, fresh=args.fresh,
                    allow_param_changes=args.allow_param_changes, stop_after=args.stop_after,
                    live_dir=Path("dvclive/ldm") / args.stage)
    finally:
        distributed.teardown()
    return 0


@dataclass
class StageRun:
    """A stage's models on the device and the pieces every step uses (built once by ``prepare_stage``)."""

    stage: str
    cfgs: dict
    rt: Runtime
    ldm: LDM
    data: SpriteBatches
    process: NoiseSchedule | None  # the diffusion process (none before the U-Net exists)
    perceptual: Perceptual
    ref_text: TextEncoder | None  # a frozen copy of the text encoder (finetune: the consistency term)
    guard: StepGuard
    ema: EMA | None


@dataclass
class PhaseSetup:
    """What one phase trains, with which optimiser, and the tensors it can compute once."""

    phase: Phase
    opt: torch.optim.AdamW
    names: dict[torch.nn.Parameter, str]
    weights: dict[str, float]  # active loss weights
    on: dict[str, bool]  # which loss terms are computed
    pool: PromptPool  # which prompts each sprite is shown with
    text: PromptTable | None  # the prompts' token ids, and their states while the text encoder is frozen
    ref: PromptTable | None  # the original text encoder's states (the consistency term)
    latents: tuple[torch.Tensor, torch.Tensor] | None  # posterior mean, std (2, N, C, h, w) of a frozen VAE


# --- the stage ----------------------------------------------------------------------------------------


def train_stage(stage: str, cfgs: dict, data_dir: Path, out_root: Path, text_dir: Path = Path("models/text"), *,
                resume: bool = False, fresh: bool = False, allow_param_changes: bool = False, stop_after: int | None = None,
                live_dir: Path | None = None, progress: bool | None = None, on_epoch: Callable | None = None) -> dict:
    """Run the phases of ``cfgs["ldm"]`` tagged ``stage``; returns the final metrics (rank 0's).

    ``on_epoch(epoch, metrics, read)``, when given, is called on rank 0 after each epoch's state is saved,
    with ``read(fn)`` returning ``fn(ldm)`` on the models as they are then (``read_models``). It is how a
    sweep trial (spritegen/sweeps) scores and prunes a run of this same loop; it reads and may raise (the
    saved state stays resumable), it never steers the loop.

    Under ``accelerate launch`` / ``torchrun`` every rank holds the same weights, makes the same random
    draws for the whole global batch (``batch_size`` is the global batch), trains on its share and
    steps with the gradient summed over ranks; only rank 0 validates and writes files."""
    from spritegen.params import select
    from spritegen.runlog import log_run

    run, params, phases = cfgs["train"], select(cfgs, PARAMS[stage]), cfgs["ldm"].phases_for(stage)
    rt = start(run)
    out_dir, prev = Path(out_root) / stage, Path(text_dir) if stage == "vae" else Path(out_root) / PREVIOUS[stage]
    train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    s = prepare_stage(stage, cfgs, build_models(stage, cfgs, prev, train.resolution, rt), train, rt)

    # ---- run state: an interrupted run of the same params, code and inputs continues where it stopped
    key = fingerprint(params, [Path(data_dir), prev, *code_files()])
    root = open_state(out_dir, key, resume, fresh, _say) if rt.main else state_root(out_dir)
    rt.dist.barrier()
    epoch, step, history, opt_flat, early = restore(s, root, params, resume, allow_param_changes)
    batch_size = s.ldm.vae_cfg.batch_size if stage == "vae" else s.ldm.unet_cfg.batch_size
    steps_per_epoch, last_epoch = s.data.steps_per_epoch(batch_size), phases[-1].end
    stop_epoch = min(last_epoch, epoch + stop_after) if stop_after else last_epoch
    log = TrainLog(f"ldm {stage}", live_dir, last_epoch * steps_per_epoch, out_dir.parent / f"{stage}.tensorboard" if run.tensorboard else None,
                   progress, done_steps=epoch * steps_per_epoch) if rt.main else None
    if log is not None:
        log.replay(history)
    t_start, steps_at_start, metrics, prev_opt = time.time(), step, {}, None
    try:
        for phase in phases:
            if phase.end <= epoch or epoch >= stop_epoch or early.stop:
                continue
            if epoch > phase.start:  # resuming mid-phase: every moment from the checkpoint
                carry = opt_flat
            elif phase.warm_restart:  # the moments of components that trained in the previous phase
                carry = opt_state(*prev_opt) if prev_opt else opt_flat
            else:
                carry = None
            ph = setup_phase(s, phase, carry)
            phase_steps = (phase.end - phase.start) * steps_per_epoch
            if log is not None:
                log.say(f"phase {phase.name} [{phase.start},{phase.end}) train={phase.train} terms={[k for k, v in ph.on.items() if v]}")
            for e in range(max(epoch, phase.start), min(phase.end, stop_epoch)):
                g = rt.generator(stage, e)  # all of this epoch's data randomness, drawn on the device
                rt.seed_global(stage, e)  # dropout
                t_epoch, epoch_means, interval = time.time(), Means(), Means()
                for b, batch_all in enumerate(s.data.epoch(g, batch_size, ph.pool, run.augment.hflip)):
                    set_lr(ph.opt, phase.lr_schedule, (e - phase.start) * steps_per_epoch + b, phase_steps, phase.warm_restart)
                    bad, values = train_step(s, ph, batch_all, g, e + b / steps_per_epoch)
                    epoch_means.add(values, ~bad)
                    interval.add({"loss": values["loss"]}, ~bad)
                    step += 1
                    if log is not None:
                        log.advance()
                    if step % run.log_every == 0:  # the only host synchronisation inside an epoch
                        s.guard.check()
                        if log is not None:
                            log.interval(step, interval.read())
                epoch = e + 1
                metrics = end_of_epoch(s, ph, epoch, step, epoch_means, val, root, log, early, params, last_epoch,
                                       images_per_s=len(s.data) / max(time.time() - t_epoch, 1e-9))
                if on_epoch is not None and rt.main:
                    on_epoch(epoch, metrics, lambda fn: read_models(s, fn))
                if early.stop:
                    break
            prev_opt = (ph.opt, ph.names)
    except BaseException:
        if log is not None:
            log.close()
        raise

    if epoch < last_epoch and not early.stop:  # stopped by --stop-after: the state holds everything to continue
        if log is not None:
            log.close()
            log.say(f"{stage}: stopped after epoch {epoch} of {last_epoch}; run the same command again to continue")
        return metrics
    if rt.main:
        metrics = write_stage_output(s, out_dir, root, train, val, params, log, metrics, early)
        seconds = time.time() - t_start
        log_run(f"ldm/{stage}", {"seconds": seconds, "steps": step - steps_at_start, **memory(rt.device), **rt.settings(),
                                 "images_per_s": (step - steps_at_start) * batch_size / max(seconds, 1e-9)})
    rt.dist.barrier()
    return metrics


def read_models(s: StageRun, fn: Callable[[LDM], Any]) -> Any:
    """``fn(ldm)`` on the models as they are now, as the stage would publish them (the U-Net's EMA weights
    in ``unet_ema``), every module in eval mode and without gradients. The loop is left as it was: the
    modules' train/eval modes are restored and ``s.ldm`` is not replaced (``fn`` gets a shallow copy), so
    a run with a reader trains exactly what a run without one trains."""
    view = dataclasses.replace(s.ldm, unet_ema=s.ema.state_dict() if s.ema is not None else s.ldm.unet_ema)
    was = {k: m.training for k, m in s.ldm.modules().items()}
    for m in s.ldm.modules().values():
        m.eval()
    try:
        with torch.no_grad():
            return fn(view)
    finally:
        for k, m in s.ldm.modules().items():
            m.train(was[k])


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_models(stage: str, cfgs: dict, prev: Path, resolution: int, rt: Runtime) -> LDM:
    """The previous stage's output under today's params (``LDM.adopt``), plus the components this stage builds."""
    if stage == "vae":
        ldm = ldm_from_text_stage(prev, cfgs["vae"], cfgs["unet"], resolution)
    else:
        ldm = load_bundle(prev, cfgs["vae"], cfgs["unet"])
        ldm.adopt(cfgs["vae"], cfgs["unet"], prev)
    if ldm.resolution != resolution:
        raise UserError(f"{prev} was trained at resolution {ldm.resolution} but the data has {resolution}; re-run the earlier stages")
    rt.seed_global("init", stage, per_rank=False)
    phases = cfgs["ldm"].phases_for(stage)
    ldm.ensure({c for p in phases for c in p.train} | {"vae"} | ({"unet"} if stage != "vae" else set()))
    return ldm


def prepare_stage(stage: str, cfgs: dict, ldm: LDM, train: SpriteSplit, rt: Runtime) -> StageRun:
    """Models on the device (layout, compile), the data on the device, the process, loss pieces, guard, EMA."""
    ldm.to(rt.device)
    if ldm.vae is not None:
        rt.prepare(ldm.vae, called_parts(ldm.vae))
    if ldm.unet is not None:
        rt.prepare(ldm.unet)
    ema = None
    if ldm.unet is not None:
        ema = EMA(ldm.unet, ldm.unet_cfg.ema_decay)
        if ldm.unet_ema is not None:  # the previous stage's average continues (under today's decay)
            ema.load_state_dict(ldm.unet_ema)
    batch_size = ldm.vae_cfg.batch_size if stage == "vae" else ldm.unet_cfg.batch_size
    last = len(train) - (-(-len(train) // batch_size) - 1) * batch_size
    if rt.dist.enabled and min(batch_size, last) < rt.dist.world:
        raise UserError(f"{rt.dist.world} processes but a batch of {min(batch_size, last)} images: every rank needs at least one; "
                        "raise the batch size or use fewer processes")
    return StageRun(stage, cfgs, rt, ldm, SpriteBatches(train, rt.device),
                    NoiseSchedule(ldm.unet_cfg).to(rt.device) if stage != "vae" else None,  # no diffusion before the U-Net
                    Perceptual(ldm.vae_cfg.perceptual).to(rt.device),
                    copy.deepcopy(ldm.text).eval().requires_grad_(False) if stage == "finetune" else None,
                    StepGuard(cfgs["train"].max_bad_steps, cfgs["train"].explode_factor, rt.device), ema)


def restore(s: StageRun, root: Path, params: dict, resume: bool, allow_param_changes: bool):
    """Load an interrupted run's state into the models, EMA and guard. Returns (epoch, step, history,
    optimiser moments by name, early stopping) - a fresh start when there is no state."""
    early = EarlyStopping(s.cfgs["train"].patience, s.cfgs["train"].min_delta)
    loaded = load_run_state(root)
    if loaded is None:
        return 0, 0, [], {}, early
    weights, opt_flat, meta = loaded
    if resume and s.rt.main:
        check_resume_params(meta["params"], params, allow_param_changes, _say)
    for name, module in s.ldm.modules().items():
        load_into(module, weights, name, root)
    if s.ema is not None:
        s.ema.load_state_dict(unflatten_state(weights, "unet_ema"))
    s.guard.load(meta["guard"])
    early.load(meta["early"])
    if s.rt.main:
        _say(f"resuming {s.stage} at epoch {meta['epoch']} (step {meta['step']}) from {root}")
    return meta["epoch"], meta["step"], meta["history"], opt_flat, early


def train_step(s: StageRun, ph: PhaseSetup, batch_all: Batch, g: torch.Generator, progress: float) -> tuple[torch.Tensor, dict]:
    """One optimiser step on a global batch: losses, backward, (data parallel: the global gradient), clip,
    guard, step or skip, EMA. Returns the verdict and the step's values, all still on the device."""
    share = len(batch_all.share(s.rt.dist.share)) / len(batch_all)
    with s.rt.autocast():
        terms, extras = losses(s, ph, batch_all, g, progress)
    loss = sum(ph.weights.get(k, 1.0) * v for k, v in terms.items())  # "disc" (weight 1) trains the discriminator
    bad, norms = guarded_step(ph.opt, loss, s.guard, lambda ps: s.rt.dist.reduce_gradients(ps, share),
                              judged=s.rt.dist.reduce_mean(loss.detach().float(), share))
    if s.ema is not None and "unet" in ph.phase.train:
        s.ema.update(s.ldm.unet, skip=bad)
    return bad, {"loss": loss, **terms, **extras, **{f"grad_norm/{k}": v for k, v in norms.items()}}


def end_of_epoch(s: StageRun, ph: PhaseSetup, epoch: int, step: int, means: Means, val: SpriteSplit, root: Path,
                 log: TrainLog | None, early: EarlyStopping, params: dict, last_epoch: int, images_per_s: float) -> dict:
    """Guards, the epoch's means, validation, logs, best / kept / last checkpoints and sample grids (rank 0),
    then the other ranks go on. Returns the epoch's row of metrics."""
    run = s.cfgs["train"]
    counts = s.guard.check()
    row = {f"train/{k}": v for k, v in means.read().items()}
    row.update({f"guard/{k}": float(v) for k, v in counts.items()})
    row.update({f"lr/{gr['name']}": gr["lr"] for gr in ph.opt.param_groups})
    s.rt.dist.check_in_sync(s.ldm.modules().values())  # before rank 0 saves weights that stand for all ranks
    if s.rt.main:
        row.update(validate(s.ldm, val, s.stage, s.process, s.rt))
        log.epoch(epoch, step, row, {"images_per_s": images_per_s, **memory(s.rt.device)})
        if early.update(row["val/loss"]):
            write_atomic(root, "best", lambda f: _save_weights(f, s.ldm, s.ema))
        if run.checkpoint_every and epoch % run.checkpoint_every == 0:
            write_atomic(root, f"epoch_{epoch:04d}", lambda f: _save_weights(f, s.ldm, s.ema))
        if run.sample_every and epoch % run.sample_every == 0 and epoch < last_epoch:
            _sample_grid(s.ldm, s.ema, val, s.stage, root / "samples" / f"epoch_{epoch:04d}.png")
        save_run_state(root, _weights(s.ldm, s.ema), opt_state(ph.opt, ph.names),
                       {"epoch": epoch, "step": step, "guard": s.guard.state(), "early": early.state(),
                        "history": log.history, "params": params})
        if early.stop:
            log.say(f"{s.stage}: early stop after epoch {epoch}: no better val/loss for {run.patience} epochs")
    s.rt.dist.barrier()
    return row


def setup_phase(s: StageRun, phase: Phase, carry: dict[str, torch.Tensor] | None) -> PhaseSetup:
    """Which components train (the rest frozen, in eval mode), their optimiser, and what can be computed
    once for the whole phase: the frozen text encoder's states and the frozen VAE's posteriors."""
    ldm, cfgs = s.ldm, s.cfgs
    train_vae, train_text = "vae" in phase.train, "text" in phase.train
    for c, m in ldm.modules().items():
        m.requires_grad_(c in phase.train)
        m.train(c in phase.train)
    named = {c: [(f"{c}.{n}", p) for n, p in ldm.modules()[c].named_parameters()] for c in phase.train}
    # each component's own section sets its learning rate and clip; the heads share ldm.align_lr
    own = {"vae": ldm.vae_cfg, "unet": ldm.unet_cfg, "text": cfgs["text"]}
    opt = adamw({c: [p for _, p in named[c]] for c in phase.train},
                lr={c: phase.lr[c] if c in phase.lr else own[c].lr if c in own else cfgs["ldm"].align_lr for c in phase.train},
                clip={c: phase.grad_clip[c] if c in phase.grad_clip else own[c].grad_clip if c in own else 1.0 for c in phase.train},
                weight_decay=ldm.vae_cfg.weight_decay if s.stage == "vae" else ldm.unet_cfg.weight_decay)
    names = {p: n for c in named for n, p in named[c]}
    if carry:
        load_opt_state(opt, names, carry)
    weights = {k: w for k, w in phase.weights().items() if w > 0}
    on = {
        "recon": train_vae and "recon" in weights,
        "perceptual": train_vae and "perceptual" in weights and s.perceptual.backend != "none",
        "kl": train_vae and "kl" in weights,
        "align": ldm.align is not None and ("align" in phase.train or train_text) and "align" in weights,
        "diffusion": ldm.unet is not None and s.stage != "vae" and "diffusion" in weights and ("unet" in phase.train or train_text),
        "consistency": s.ref_text is not None and train_text and "consistency" in weights,
        "adv": ldm.disc is not None and "disc" in phase.train and "adv" in weights,
    }
    need_text = on["diffusion"] or on["align"] or on["adv"] or ldm.vae_cfg.text_conditioned_decoder
    frozen_latents = not train_vae and cfgs["train"].augment.only_flip
    return PhaseSetup(
        phase, opt, names, weights, on, s.data.pool(phase.max_complexity),
        text=PromptTable(ldm.text, s.data.prompts, cache=not train_text) if need_text else None,
        ref=PromptTable(s.ref_text, s.data.prompts, cache=True) if on["consistency"] else None,
        latents=posteriors(ldm.vae, s.data.images_u8) if frozen_latents else None,
    )


def losses(s: StageRun, ph: PhaseSetup, batch_all: Batch, g: torch.Generator,
           progress: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The phase's loss terms on this rank's share of the global batch, and a few watched values.

    Every random draw is made for the whole global batch, in the same order on every rank, so the ranks
    agree and one process draws exactly what it always drew; each rank keeps its share."""
    ldm, process, rt = s.ldm, s.process, s.rt
    share, n_all, dev = rt.dist.share, len(batch_all), rt.device
    batch = batch_all.share(share)
    terms, extras = {}, {}
    c = ldm.vae_cfg.latent_clamp

    # -- latents z_0 (B, C, h, w), unit variance after the measured scale
    if ph.latents is None:  # the VAE trains (or the images are augmented beyond the flip): encode them now
        x = s.data.images(batch_all, rt.cfg.augment, g)[share]  # (B, 3, R, R)
        post = ldm.vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn((n_all, *post.mean.shape[1:]), generator=g, device=dev)[share]
        if ph.on["recon"] or ph.on["perceptual"]:
            x_hat = decode(ldm.vae, z, *_decoder_text(ldm, ph, batch))
            terms["recon"] = recon_loss(x_hat.float(), x, ldm.vae_cfg)
            if ph.on["perceptual"]:
                terms["perceptual"] = ldm.vae_cfg.perceptual_weight * s.perceptual(x_hat.float(), x)
        if ph.on["kl"]:
            kl, extras["kl_raw"] = kl_free_bits(post.mean.float(), post.logvar.float(), ldm.vae_cfg.free_bits)
            terms["kl"] = kl * kl_weight(ldm.vae_cfg, progress)
        z = z.detach()  # the denoiser never pulls the encoder (it would shrink the latents)
    else:
        mean, std = ph.latents
        f = batch.flip.long()
        z = mean[f, batch.idx] + std[f, batch.idx] * torch.randn((n_all, *mean.shape[2:]), generator=g, device=dev)[share]
    z0 = z * ldm.latent_scale
    extras["latent_clamped"] = (z0.abs() > c).float().mean()
    z0 = z0.clamp(-c, c)

    # -- text: states of the prompts (gathered from the table while the encoder is frozen)
    if ph.on["diffusion"] or ph.on["align"] or ph.on["adv"]:
        hidden, mask, empty, empty_mask = ph.text.lookup(ldm.text, batch.prompt)
        pooled = TextEncoder.pool(hidden, mask)  # (B, D)
    if ph.on["diffusion"]:
        # classifier-free guidance: a dropped prompt is replaced by the empty prompt's states
        dropped = (torch.rand(n_all, generator=g, device=dev) < ldm.unet_cfg.cond_dropout)[share]
        cond = torch.where(dropped[:, None, None], empty, hidden)
        cond_mask = torch.where(dropped[:, None], empty_mask, mask)
        t = torch.randint(0, process.T, (n_all,), generator=g, device=dev)[share]
        noise = torch.randn((n_all, *z0.shape[1:]), generator=g, device=dev)[share]
        x_t = process.add_noise(z0, noise, t)
        pred = denoise(ldm.unet, x_t, t, cond, cond_mask)
        terms["diffusion"] = diffusion_loss(pred, process.target(z0, noise, t), process.snr(t), ldm.unet_cfg)
        if ph.on["consistency"]:
            # reconstruction consistency: the fine-tuned text must keep the U-Net's predictions where the
            # original text encoder put them
            with torch.no_grad():
                ref, _, ref_empty, _ = ph.ref.lookup(s.ref_text, batch.prompt)
                pred_ref = denoise(ldm.unet, x_t, t, torch.where(dropped[:, None, None], ref_empty, ref), cond_mask)
            terms["consistency"] = F.mse_loss(pred.float(), pred_ref.float())
    if ph.on["align"]:
        terms["align"] = contrastive_loss(ldm.align.image(z0), ldm.align.text(pooled), ldm.align.logit_scale)
    if ph.on["adv"]:
        x0_hat = process.predict_x0(x_t, pred, t).clamp(-c, c)
        ldm.disc.requires_grad_(False)  # the generator's term must not train the discriminator
        terms["adv"] = hinge_g_loss(ldm.disc(x0_hat, pooled.detach()))
        ldm.disc.requires_grad_(True)
        terms["disc"] = hinge_d_loss(ldm.disc(z0, pooled.detach()), ldm.disc(x0_hat.detach(), pooled.detach()))
    if not terms:
        raise UserError(f"phase {ph.phase.name}: nothing to train (train {ph.phase.train}, weights {ph.weights})")
    return terms, extras


def _decoder_text(ldm: LDM, ph: PhaseSetup, batch: Batch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The prompts' states for a text-conditioned decoder, without gradient (reconstruction never trains
    the text encoder); (None, None) for the unconditional decoder."""
    if not ldm.vae_cfg.text_conditioned_decoder:
        return None, None
    with torch.no_grad():
        hidden, mask, _, _ = ph.text.lookup(ldm.text, batch.prompt)
    return hidden, mask


@torch.no_grad()
def posteriors(vae, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image and of its mirror image: (2, N, C, h, w) each (index 1 = mirrored)."""
    means, stds = [], []
    for flip in (False, True):
        m, s = [], []
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].float() / 127.5 - 1
            post = vae.encode(x.flip(-1) if flip else x).latent_dist
            m.append(post.mean.float())
            s.append(post.std.float())
        means.append(torch.cat(m))
        stds.append(torch.cat(s))
    return torch.stack(means), torch.stack(stds)


# --- checkpoints and the stage output ------------------------------------------------------------------


def _weights(ldm: LDM, ema: EMA | None) -> dict[str, torch.Tensor]:
    return flatten_state({**ldm.modules(), **({"unet_ema": ema.state_dict()} if ema is not None else {})})


def _save_weights(folder: Path, ldm: LDM, ema: EMA | None) -> None:
    from safetensors.torch import save_file

    save_file(_weights(ldm, ema), str(folder / "model.safetensors"))


def write_stage_output(s: StageRun, out_dir: Path, root: Path, train: SpriteSplit, val: SpriteSplit, params: dict,
                       log: TrainLog, metrics: dict, early: EarlyStopping) -> dict:
    """The final bundle (with the measured latent scale), best/ and kept epochs as bundles, the sample grid,
    metrics, history.csv and curves.png; written to a temporary folder, then moved into place. Then the
    run state is removed: the stage is complete, and a forced re-run starts fresh."""
    ldm, ema, stage = s.ldm, s.ema, s.stage
    ldm.unet_ema = ema.state_dict() if ema is not None else None
    ldm.meta["stages"] = list(dict.fromkeys(ldm.meta.get("stages", []) + [stage]))
    config = {"stage": stage, "params": params, "run": s.rt.settings()}
    tmp = staging(out_dir)
    if stage == "vae":  # measured once, on every training image, with the final weights
        ldm.latent_scale = measure_scale(ldm.vae, train.images)
    save_bundle(tmp, ldm, config)
    for kept in sorted(p.name.removesuffix(".json") for p in root.glob("*.json") if p.name.startswith(("best", "epoch_"))):
        other = copy.deepcopy(ldm)
        weights = load_run_weights(root, kept)
        for name, module in other.modules().items():
            load_into(module, weights, name, root / kept)
        other.unet_ema = unflatten_state(weights, "unet_ema") or None
        if stage == "vae":
            other.latent_scale = measure_scale(other.vae, train.images)
        save_bundle(tmp / kept, other, config)
    if (root / "samples").is_dir():
        shutil.copytree(root / "samples", tmp / "samples")
    _sample_grid(ldm, None, val, stage, tmp / "samples.png")
    log.image(f"{stage}_samples.png", tmp / "samples.png")
    metrics = {**metrics, "epochs": float(len([r for r in log.history if r["kind"] == "epoch"])),
               "stopped_early": float(early.stop), **({"latent_scale": ldm.latent_scale} if stage == "vae" else {})}
    write_json({k: v for k, v in metrics.items() if v == v}, tmp / "metrics.json")
    log.finish(tmp, {k: v for k, v in metrics.items() if v == v})
    publish(tmp, out_dir, root)
    return metrics


def load_run_weights(root: Path, name: str) -> dict[str, torch.Tensor]:
    from spritegen.checkpoint import load_tensors
    from spritegen.train.state import current

    return load_tensors(current(root, name) / "model.safetensors")


# --- validation and sample grids ----------------------------------------------------------------------


@torch.no_grad()
def validate(ldm: LDM, val: SpriteSplit, stage: str, process: NoiseSchedule, rt: Runtime, batch_size: int = 64) -> dict[str, float]:
    """Deterministic validation loss (fixed noise and timesteps): reconstruction L1 in the vae stage,
    the denoising loss (no prompt dropout) after it; plus the alignment head's retrieval accuracy."""
    device = rt.device
    g = rt.generator("validation")
    was = {k: m.training for k, m in ldm.modules().items()}
    for m in ldm.modules().values():
        m.eval()
    recon, diff, hits, n = 0.0, 0.0, 0.0, 0
    for i in range(0, len(val), batch_size):
        x = val.images[i : i + batch_size].to(device).float() / 127.5 - 1
        B = len(x)
        post = ldm.vae.encode(x).latent_dist
        prompts = [r.prompts[0] for r in val.records[i : i + batch_size]]
        if ldm.vae_cfg.text_conditioned_decoder or ldm.align is not None or (ldm.unet is not None and stage != "vae"):
            hidden, mask = ldm.text(prompts)
        text = (hidden, mask) if ldm.vae_cfg.text_conditioned_decoder else (None, None)
        recon += float((decode(ldm.vae, post.mean, *text) - x).abs().mean()) * B
        z0 = (post.mean * ldm.latent_scale).clamp(-ldm.vae_cfg.latent_clamp, ldm.vae_cfg.latent_clamp)
        if ldm.unet is not None and stage != "vae":
            t = torch.randint(0, process.T, (B,), generator=g, device=device)
            noise = torch.randn(z0.shape, generator=g, device=device)
            pred = denoise(ldm.unet, process.add_noise(z0, noise, t), t, hidden, mask)
            diff += float(diffusion_loss(pred, process.target(z0, noise, t), process.snr(t), ldm.unet_cfg)) * B
        if ldm.align is not None:
            sim = ldm.align.image(z0) @ ldm.align.text(TextEncoder.pool(hidden, mask)).T  # (B, B)
            # a hit: the best-matching prompt is the image's own or an identical prompt
            best = sim.argmax(1).tolist()
            hits += sum(prompts[j] == prompts[k] for k, j in enumerate(best))
        n += B
    for k, m in ldm.modules().items():
        m.train(was[k])
    out = {"val/recon_l1": recon / n}
    if ldm.unet is not None and stage != "vae":
        out["val/diffusion"] = diff / n
    if ldm.align is not None:
        out["val/align_top1"] = hits / n
    out["val/loss"] = out.get("val/diffusion", out["val/recon_l1"])
    return out


@torch.no_grad()
def _sample_grid(ldm: LDM, ema: EMA | None, val: SpriteSplit, stage: str, path: Path) -> None:
    """The stage's sample grid: VAE reconstructions (top row real, bottom row decoded) in the vae stage;
    afterwards the fixed prompts x 2 seeds (DDIM 20 steps, guidance 3, EMA weights), one prompt per column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(ldm.vae.parameters()).device
    if ema is not None:
        ldm.unet_ema = ema.state_dict()
    was = {k: m.training for k, m in ldm.modules().items()}
    for m in ldm.modules().values():
        m.eval()
    if ldm.unet is None or stage == "vae":
        x = val.images[:8].to(device).float() / 127.5 - 1
        text = ldm.text([r.prompts[0] for r in val.records[:8]]) if ldm.vae_cfg.text_conditioned_decoder else (None, None)
        x_hat = decode(ldm.vae, ldm.vae.encode(x).latent_dist.mean, *text)
        grid = torch.cat([to_uint8(x.cpu()), to_uint8(x_hat.float().cpu())])
    else:
        prompts = list(FIXED_PROMPTS) * 2
        seeds = [0] * len(FIXED_PROMPTS) + [1] * len(FIXED_PROMPTS)
        grid = generate_images(ldm, ema_unet(ldm), prompts, seeds, "ddim", 20, 3.0)
    for k, m in ldm.modules().items():
        m.train(was[k])
    save_grid(grid, path, ncol=8, scale=max(1, 128 // ldm.resolution))
