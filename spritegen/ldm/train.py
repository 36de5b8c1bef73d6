"""Training of the latent diffusion family, one DVC stage per call.

    spritegen train ldm --stage text      # tokenizer + encoder        -> models/ldm/text/
    spritegen train ldm --stage vae       # phases tagged vae          -> models/ldm/vae/
    spritegen train ldm --stage unet      # phases tagged unet         -> models/ldm/unet/
    spritegen train ldm --stage finetune  # phases tagged finetune     -> models/ldm/finetune/ (the generator)

Each stage starts from the previous stage's bundle and runs the phases of ``ldm`` (spritegen/ldm/
schedule.py) tagged with it. One loop serves every phase: a phase only changes which components
train, their learning rates and the loss weights. Per epoch: checkpoint ``last/`` (with optimiser, EMA,
step and RNG for ``--resume``), ``best/`` by validation loss, ``epoch_XXXX/`` every
``ldm.checkpoint_every``; the stage folder itself holds the final bundle. Metrics go to
``dvclive/ldm/<stage>/``. Several GPUs: ``accelerate launch --num_processes N -m spritegen train ldm
--stage S`` trains data-parallel (``train_stage``, spritegen/distributed.py, docs/ldm.md).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from spritegen.checkpoint import load_tensors
from spritegen.config import to_dict
from spritegen.data.dataset import SpriteSplit, load_split
from spritegen.errors import UserError
from spritegen.io import save_grid, to_uint8, write_json
from spritegen.ldm.diffusion import NoiseSchedule, diffusion_loss, drop_prompts
from spritegen.ldm.guards import StepGuard
from spritegen.ldm.losses import contrastive_loss, hinge_d_loss, hinge_g_loss
from spritegen.ldm.models import LDM, TextEncoder, ldm_from_text_stage, load_bundle, save_bundle
from spritegen.ldm.pipeline import FIXED_PROMPTS, ema_unet, generate_images
from spritegen.ldm.schedule import LDMScheduleConfig, Phase
from spritegen.ldm.unet import UNetConfig, denoise
from spritegen.ldm.vae import Perceptual, VAEConfig, decode, kl_free_bits, kl_weight, measure_scale, recon_loss
from spritegen.text.encoder import TextConfig, train_text_stage

PREVIOUS = {"vae": "text", "unet": "vae", "finetune": "unet"}


def main(args) -> int:
    from spritegen.params import load_all

    from spritegen import distributed

    cfgs = load_all(args.params, args.preset)
    text_cfg, vae_cfg, unet_cfg, sched = cfgs["text"], cfgs["vae"], cfgs["unet"], cfgs["ldm"]
    main_process = distributed.env_rank() == 0  # under `accelerate launch`, only rank 0 prints
    if main_process:
        _print_config(args.stage, {"text": text_cfg, "vae": vae_cfg, "unet": unet_cfg, "ldm": sched})
    if args.dry_run:
        return 0
    if args.stage == "text":  # small and single-device: rank 0 trains it, other ranks have nothing to do
        if main_process:
            train_text(text_cfg, args.data, args.out, Path("dvclive/ldm/text"))
        return 0
    try:
        train_stage(args.stage, vae_cfg, unet_cfg, sched, args.data, args.out, resume=args.resume,
                    stop_after=getattr(args, "stop_after", None), live_dir=Path("dvclive/ldm") / args.stage, text_cfg=text_cfg)
    finally:
        distributed.teardown()
    return 0


def _print_config(stage: str, sections: dict) -> None:
    import yaml
    from rich.console import Console

    phases = [f"{p.name} [{p.start},{p.end}) train={p.train}" for p in sections["ldm"].phases_for(stage)] if stage != "text" else []
    body = yaml.safe_dump({k: to_dict(v) for k, v in sections.items()}, sort_keys=False)
    Console(stderr=True).print(f"[bold]spritegen train ldm --stage {stage}[/bold]\n{body}" + ("phases:\n  " + "\n  ".join(phases) if phases else ""))


# --- the text stage ---------------------------------------------------------------------------------


def train_text(cfg: TextConfig, data_dir: Path, out_root: Path, live_dir: Path | None = None) -> dict:
    train = load_split(data_dir, "train")
    val = load_split(data_dir, "val")
    prompts = [p for r in train.records for p in r.prompts]
    val_prompts = [p for r in val.records for p in r.prompts]
    t0 = time.time()
    metrics = train_text_stage(cfg, prompts, val_prompts, Path(out_root) / "text")
    metrics["seconds"] = time.time() - t0
    if live_dir is not None:
        live = _live(live_dir, resume=False)
        if live is not None:
            for k, v in metrics.items():
                live.summary[k] = v
            live.make_summary()
            live.end()
    print(f"text stage: {metrics}", file=sys.stderr)
    return metrics


# --- helpers of the loop ----------------------------------------------------------------------------


def lr_at(schedule: str, peak: float, step: int, total: int, warm_restart: bool) -> float:
    """The learning rate at ``step`` of a phase of ``total`` steps (a pure function: resume needs no
    scheduler state). onecycle: cosine warm-up over 10% (none after a warm restart) then cosine decay
    to peak/1e4 (torch's OneCycleLR shape); cosine: decay from the peak; constant."""
    if schedule == "constant":
        return peak
    frac = min(1.0, step / max(1, total))
    if schedule == "cosine" or warm_restart:
        return peak * (1e-2 + (1 - 1e-2) * 0.5 * (1 + math.cos(math.pi * frac)))
    warm = 0.1
    if frac < warm:
        lo = peak / 25
        return lo + (peak - lo) * 0.5 * (1 - math.cos(math.pi * frac / warm))
    lo = peak / 1e4
    return lo + (peak - lo) * 0.5 * (1 + math.cos(math.pi * (frac - warm) / (1 - warm)))


def _component_lr(c: str, phase: Phase, vae_cfg: VAEConfig, unet_cfg: UNetConfig, text_lr: float, align_lr: float) -> float:
    default = {"vae": vae_cfg.lr, "unet": unet_cfg.lr, "text": text_lr, "align": align_lr, "disc": align_lr}[c]
    return phase.lr.get(c, default)


def _component_clip(c: str, phase: Phase, vae_cfg: VAEConfig, unet_cfg: UNetConfig, text_clip: float) -> float:
    default = {"vae": vae_cfg.grad_clip, "unet": unet_cfg.grad_clip, "text": text_clip, "align": 1.0, "disc": 1.0}[c]
    return phase.grad_clip.get(c, default)


def _named_params(ldm: LDM, components: list[str]) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    mods = ldm.modules()
    return {c: [(f"{c}.{n}", p) for n, p in mods[c].named_parameters()] for c in components}


def _opt_state_tensors(opt: torch.optim.Optimizer, names: dict) -> dict[str, torch.Tensor]:
    """AdamW moments keyed by parameter *name* (so resume and warm restarts find them whatever the phase)."""
    out = {}
    for p, st in opt.state.items():
        for k, v in st.items():
            out[f"opt.{names[p]}.{k}"] = v.detach().cpu().clone() if torch.is_tensor(v) else torch.tensor(v)
    return out


def _load_opt_state(opt: torch.optim.Optimizer, names: dict, flat: dict[str, torch.Tensor]) -> int:
    loaded = 0
    for group in opt.param_groups:
        for p in group["params"]:
            prefix = f"opt.{names[p]}."
            st = {k[len(prefix):]: v.to(p.device) for k, v in flat.items() if k.startswith(prefix)}
            if st:
                opt.state[p] = st
                loaded += 1
    return loaded


def _live(live_dir: Path, resume: bool):
    try:
        from dvclive import Live
    except ImportError:  # pragma: no cover - dvclive is a dependency
        return None
    import os

    # dvcyaml=None: dvc.yaml (owned by the pipeline) declares our metrics and plots; dvclive must not
    # rewrite it. dvclive's own test mode (DVCLIVE_TEST, set by tests/conftest.py) needs a file name.
    dvcyaml = "dvc.yaml" if os.environ.get("DVCLIVE_TEST") else None
    return Live(str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=dvcyaml, report=None)


def _prompt_pools(split: SpriteSplit, max_complexity: float, thresholds: torch.Tensor) -> list[list[str]]:
    """Curriculum by description complexity (word count): each sprite's prompts up to the
    ``max_complexity`` quantile of all training prompts; a sprite with none keeps its simplest one."""
    limit = float(torch.quantile(thresholds, max_complexity)) if max_complexity < 1 else float("inf")
    pools = []
    for r in split.records:
        ok = [p for p in r.prompts if len(p.split()) <= limit]
        pools.append(ok or [min(r.prompts, key=lambda p: len(p.split()))])
    return pools


def _decoder_text(ldm: LDM, prompts: list[str]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The prompts' token states and mask for a text-conditioned VAE decoder; (None, None) for the
    unconditional one (so nothing is computed - and no randomness used - when the option is off).
    Without gradient: the decoder learns to read the text, but reconstruction never trains the text
    encoder (it comes from the text stage; its own objectives are the alignment and diffusion terms)."""
    if not ldm.vae_cfg.text_conditioned_decoder:
        return None, None
    with torch.no_grad():
        hidden, mask = ldm.text(prompts)  # (B, L, D), (B, L)
    return hidden, mask


@torch.no_grad()
def _posteriors(vae, images: torch.Tensor, device, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image and of its mirror image: (2, N, C, h, w) each (index 1 = flipped)."""
    means, stds = [], []
    for flip in (False, True):
        m, s = [], []
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(device).float() / 127.5 - 1
            post = vae.encode(x.flip(-1) if flip else x).latent_dist
            m.append(post.mean.float())
            s.append(post.std.float())
        means.append(torch.cat(m))
        stds.append(torch.cat(s))
    return torch.stack(means), torch.stack(stds)


# --- the loop ---------------------------------------------------------------------------------------


def train_stage(stage: str, vae_cfg: VAEConfig, unet_cfg: UNetConfig, sched: LDMScheduleConfig, data_dir: Path,
                out_root: Path, resume: bool = False, stop_after: int | None = None, live_dir: Path | None = None,
                text_cfg: TextConfig | None = None, progress: bool | None = None) -> dict:
    """Run the phases of ``sched`` tagged ``stage``; returns the final metrics (rank 0's, complete).

    Under ``accelerate launch`` / ``torchrun`` (spritegen/distributed.py) every rank runs this with the
    same weights and the same random draws, trains on its share of each global batch (``batch_size`` is
    the global batch) and steps with the gradient summed over ranks; only rank 0 prints, validates and
    writes files. A single process runs without any collective, exactly as before."""
    from spritegen import distributed

    text_cfg = text_cfg or TextConfig()
    out_root, data_dir = Path(out_root), Path(data_dir)
    stage_dir = out_root / stage
    phases = sched.phases_for(stage)
    dp = distributed.setup(sched.device)  # rank 0 of 1 and pick_device(...) without a launcher
    device = dp.device

    def say(msg: str) -> None:  # one copy of every message, not one per rank
        if dp.main:
            print(msg, file=sys.stderr)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    # ---- data
    train = load_split(data_dir, "train")
    val = load_split(data_dir, "val")
    R = train.resolution
    images = train.images  # (N, 3, R, R) uint8, on the CPU; batches move to the device
    complexity = torch.tensor([float(len(p.split())) for r in train.records for p in r.prompts])

    # ---- models: the previous stage's bundle, plus what this stage builds
    prev = out_root / PREVIOUS[stage]
    if stage == "vae":
        if not (prev / "model.safetensors").exists():
            raise UserError(f"{prev} missing: run `spritegen train ldm --stage text` first")
        ldm = ldm_from_text_stage(prev, vae_cfg, unet_cfg, R)
    else:
        ldm = load_bundle(prev, vae_cfg, unet_cfg)
    if ldm.resolution != R:
        raise UserError(f"{prev} was trained at resolution {ldm.resolution} but {data_dir} has {R}; rerun the earlier stages")
    needed = {c for p in phases for c in p.train} | ({"vae"} | ({"unet"} if stage != "vae" else set()))
    torch.manual_seed(sched.seed * 7 + ["vae", "unet", "finetune"].index(stage))  # new components' init
    ldm.ensure(needed)
    ldm.to(device)
    for m in ldm.modules().values():
        m.requires_grad_(False)
    ref_text: TextEncoder | None = copy.deepcopy(ldm.text).eval() if stage == "finetune" else None
    process = NoiseSchedule(ldm.unet_cfg)
    perceptual = Perceptual(ldm.vae_cfg.perceptual).to(device)

    # ---- resume
    epoch, global_step, best_val = phases[0].start, 0, float("inf")
    guard = StepGuard(max_bad=sched.max_bad_steps, explode_factor=sched.explode_factor)
    opt_flat: dict[str, torch.Tensor] = {}
    resumed_epoch = None
    last = stage_dir / "last"
    if resume and (last / "state.json").exists():
        ldm = load_bundle(last, vae_cfg, unet_cfg)
        ldm.ensure(needed)
        ldm.to(device)
        for m in ldm.modules().values():
            m.requires_grad_(False)
        state = json.loads((last / "state.json").read_text())
        epoch, global_step = state["epoch"], state["global_step"]
        best_val = float("inf") if state["best_val"] is None else state["best_val"]
        guard.load(state["guard"])
        flat = load_tensors(last / "state.safetensors")
        torch.set_rng_state(flat.pop("rng.torch"))
        opt_flat = flat
        resumed_epoch = epoch
        say(f"resumed {stage} at epoch {epoch} (step {global_step}) from {last}")
    elif resume:
        say(f"--resume: no checkpoint in {last}; starting {stage} from the beginning")
    else:
        torch.manual_seed(sched.seed)  # global RNG: dropout inside transformers/diffusers
    if dp.rank > 0:
        # Dropout masks should differ between ranks as they do between the samples of one batch. Rank 0
        # keeps the single-process stream (the one last/ saves); the others reseed from (seed, rank, epoch).
        # Nothing that must agree across ranks uses the global RNG (data randomness comes from `g` below).
        torch.manual_seed(sched.seed * 1_000_003 + 7919 * dp.rank + epoch)

    live = _live(live_dir, resume=resumed_epoch is not None) if live_dir is not None and dp.main else None
    tb = None
    if sched.tensorboard and dp.main:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(stage_dir / "tensorboard"))
    metrics: dict[str, float] = {"perceptual_backend_lpips": float(perceptual.backend == "lpips")}
    t_stage = time.time()
    images_seen = 0
    last_epoch = phases[-1].end
    stop_epoch = min(last_epoch, epoch + stop_after) if stop_after else last_epoch
    # the global batch: each rank trains on batch[rank::world], so results do not depend on the number of GPUs
    batch_size = ldm.vae_cfg.batch_size if stage == "vae" else ldm.unet_cfg.batch_size
    steps_per_epoch = math.ceil(len(images) / batch_size)
    if dp.enabled and min(batch_size, len(images) - (steps_per_epoch - 1) * batch_size) < dp.world:
        raise UserError(f"{dp.world} processes but a batch of {min(batch_size, len(images) - (steps_per_epoch - 1) * batch_size)} "
                        f"images ({len(images)} images, batch_size {batch_size}): every rank needs at least one; "
                        "raise the batch size or use fewer processes")
    show = (sys.stderr.isatty() if progress is None else progress) and dp.main
    prev_opt, prev_names = None, None

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[ips]:.1f} img/s"),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(), disable=not show, transient=False)
    total_steps = (stop_epoch - epoch) * steps_per_epoch
    task = bar.add_task(f"ldm {stage}", total=max(1, total_steps), ips=0.0, loss=float("nan"))
    bar.start()
    try:
        for phase_index, phase in enumerate(phases):
            if phase.end <= epoch or epoch >= stop_epoch:
                continue
            # ---- phase setup: trainable components, optimiser, cached latents
            ldm.text.model.train("text" in phase.train)
            for c, m in ldm.modules().items():
                m.requires_grad_(c in phase.train)
                m.train(c in phase.train)
            named = _named_params(ldm, [c for c in phase.train])
            names = {p: n for c in named for n, p in named[c]}
            groups = [{"params": [p for _, p in named[c]], "name": c,
                       "peak_lr": _component_lr(c, phase, ldm.vae_cfg, ldm.unet_cfg, text_cfg.lr, sched.align_lr),
                       "clip": _component_clip(c, phase, ldm.vae_cfg, ldm.unet_cfg, text_cfg.grad_clip)} for c in phase.train]
            weight_decay = ldm.unet_cfg.weight_decay if stage != "vae" else ldm.vae_cfg.weight_decay
            opt = torch.optim.AdamW(groups, lr=groups[0]["peak_lr"], weight_decay=weight_decay)
            if resumed_epoch is not None and phase.start < resumed_epoch:  # resuming mid-phase: all moments
                _load_opt_state(opt, names, opt_flat)
            elif phase.warm_restart:  # keep the moments of components that trained in the previous phase
                if prev_opt is not None:
                    _load_opt_state(opt, names, _opt_state_tensors(prev_opt, prev_names))
                elif resumed_epoch is not None:
                    _load_opt_state(opt, names, opt_flat)
            resumed_epoch = None
            weights = {k: w for k, w in phase.weights().items() if w > 0}
            train_vae, train_text_enc = "vae" in phase.train, "text" in phase.train
            use_text_grad = train_text_enc
            terms_on = {
                "recon": train_vae and "recon" in weights,
                "perceptual": train_vae and "perceptual" in weights and perceptual.backend != "none",
                "kl": train_vae and "kl" in weights,
                "align": ldm.align is not None and ("align" in phase.train or train_text_enc) and "align" in weights,
                "diffusion": ldm.unet is not None and stage != "vae" and "diffusion" in weights and ("unet" in phase.train or train_text_enc),
                "consistency": ref_text is not None and train_text_enc and "consistency" in weights,
                "adv": ldm.disc is not None and "disc" in phase.train and "adv" in weights,
            }
            cached = None if train_vae else _posteriors(ldm.vae, images, device)
            pools = _prompt_pools(train, phase.max_complexity, complexity)
            phase_steps = (phase.end - phase.start) * steps_per_epoch
            say(f"phase {phase.name} [{phase.start},{phase.end}) train={phase.train} terms={[k for k, v in terms_on.items() if v]}")

            for epoch in range(max(epoch, phase.start), min(phase.end, stop_epoch)):
                g = torch.Generator().manual_seed(sched.seed * 1_000_003 + epoch)  # all of this epoch's data randomness
                perm = torch.randperm(len(images), generator=g)
                flips = torch.rand(len(images), generator=g) < ldm.vae_cfg.hflip
                sums: dict[str, float] = {}
                n_good, clamped, t_epoch = 0, 0.0, time.time()
                for b in range(steps_per_epoch):
                    # Every random draw below is made for the whole global batch (B_all), in the same order
                    # on every rank - so the ranks agree and one process draws exactly what it always drew -
                    # and each rank keeps its share [rank::world] (all of it for a single process).
                    idx_all = perm[b * batch_size : (b + 1) * batch_size]
                    B_all = len(idx_all)
                    prompts_all = [pools[i][int(torch.randint(len(pools[i]), (1,), generator=g))] for i in idx_all.tolist()]
                    idx, prompts = idx_all[dp.share], prompts_all[dp.share]
                    B = len(idx)  # this rank's share
                    flip = flips[idx]
                    step_in_phase = (epoch - phase.start) * steps_per_epoch + b
                    for group in opt.param_groups:
                        group["lr"] = lr_at(phase.lr_schedule, group["peak_lr"], step_in_phase, phase_steps, phase.warm_restart)

                    with torch.autocast(**autocast):
                        terms: dict[str, torch.Tensor] = {}
                        # -- latents z_0: (B, C, h, w), unit variance after the measured scale
                        if train_vae:
                            x = images[idx].to(device).float() / 127.5 - 1  # (B, 3, R, R)
                            x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
                            post = ldm.vae.encode(x).latent_dist
                            eps = torch.randn((B_all, *post.mean.shape[1:]), generator=g)[dp.share]
                            z = post.mean + post.std * eps.to(device)
                            if terms_on["recon"] or terms_on["perceptual"]:
                                x_hat = decode(ldm.vae, z, *_decoder_text(ldm, prompts))
                                terms["recon"] = recon_loss(x_hat.float(), x, ldm.vae_cfg)
                                if terms_on["perceptual"]:
                                    terms["perceptual"] = ldm.vae_cfg.perceptual_weight * perceptual(x_hat.float(), x)
                            if terms_on["kl"]:
                                terms["kl"], kl_raw = kl_free_bits(post.mean.float(), post.logvar.float(), ldm.vae_cfg.free_bits)
                                terms["kl"] = terms["kl"] * kl_weight(ldm.vae_cfg, epoch + b / steps_per_epoch)
                                sums["kl_raw"] = sums.get("kl_raw", 0.0) + float(kl_raw.detach())
                            z = z.detach()  # the denoiser never pulls the encoder (it would shrink the latents)
                        else:
                            fi = flip.long()
                            mean, std = cached[0][fi, idx], cached[1][fi, idx]
                            z = mean + std * torch.randn((B_all, *mean.shape[1:]), generator=g)[dp.share].to(device)
                        z0 = z * ldm.latent_scale
                        c = ldm.vae_cfg.latent_clamp
                        clamped += float((z0.abs() > c).float().mean())
                        z0 = z0.clamp(-c, c)

                        # -- text: states of the prompts, dropped prompts replaced by the empty prompt's
                        need_text = terms_on["diffusion"] or terms_on["align"] or terms_on["adv"]
                        if need_text:
                            with torch.set_grad_enabled(use_text_grad):
                                hidden_all, mask_all = ldm.text(prompts + [""])  # (B+1, L, D)
                            hidden, mask = hidden_all[:B], mask_all[:B]
                            pooled = TextEncoder.pool(hidden, mask)  # (B, D)
                        if terms_on["diffusion"]:
                            _, dropped = drop_prompts(prompts_all, ldm.unet_cfg.cond_dropout, g)
                            d = dropped[dp.share].to(device)
                            cond = torch.where(d[:, None, None], hidden_all[B:].expand(B, -1, -1), hidden)
                            cond_mask = torch.where(d[:, None], mask_all[B:].expand(B, -1), mask)
                            t = torch.randint(0, process.T, (B_all,), generator=g)[dp.share].to(device)
                            noise = torch.randn((B_all, *z0.shape[1:]), generator=g)[dp.share].to(device)

                            x_t = process.add_noise(z0, noise, t)
                            pred = denoise(ldm.unet, x_t, t, cond, cond_mask)
                            terms["diffusion"] = diffusion_loss(pred, process.target(z0, noise, t), process.snr(t), ldm.unet_cfg)
                            if terms_on["consistency"]:
                                # reconstruction consistency: the fine-tuned text must keep the U-Net's
                                # predictions where the original text encoder put them
                                with torch.no_grad():
                                    ref_all, ref_mask_all = ref_text(prompts + [""])
                                    ref = torch.where(d[:, None, None], ref_all[B:].expand(B, -1, -1), ref_all[:B])
                                    pred_ref = denoise(ldm.unet, x_t, t, ref, cond_mask)
                                terms["consistency"] = F.mse_loss(pred.float(), pred_ref.float())
                        if terms_on["align"]:
                            terms["align"] = contrastive_loss(ldm.align.image(z0), ldm.align.text(pooled), ldm.align.logit_scale)
                        disc_loss = None
                        if terms_on["adv"]:
                            x0_hat = process.predict_x0(x_t, pred, t).clamp(-c, c)
                            terms["adv"] = hinge_g_loss(ldm.disc(x0_hat, pooled.detach()))
                            disc_loss = hinge_d_loss(ldm.disc(z0, pooled.detach()), ldm.disc(x0_hat.detach(), pooled.detach()))
                        loss = sum(weights[k] * v for k, v in terms.items())

                    # -- guards, backward, per-component clipping, step
                    if not torch.is_tensor(loss) or not loss.requires_grad:
                        raise UserError(f"phase {phase.name}: nothing to train (terms {sorted(terms)}, train {phase.train})")
                    # the global batch's values (the same on every rank, so every rank's guard decides alike)
                    loss_v, disc_v, terms_v = _global_values(dp, B / B_all, loss, disc_loss, terms)
                    if not guard.loss_ok(loss_v) or (disc_v is not None and not guard.loss_ok(disc_v)):
                        opt.zero_grad(set_to_none=True)
                        continue
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if disc_loss is not None:  # the generator's adv term must not train the discriminator
                        for p in ldm.disc.parameters():
                            p.grad = None
                        disc_loss.backward()
                    # data parallel: every rank gets the global batch's gradient (before clipping, so the norms,
                    # the explosion guard and the step are the same on every rank); nothing for one process
                    for group in opt.param_groups:
                        dp.reduce_gradients(group["params"], B / B_all)
                    norms = {}
                    for group in opt.param_groups:
                        norms[group["name"]] = float(torch.nn.utils.clip_grad_norm_(group["params"], group["clip"]))
                    total_norm = math.sqrt(sum(n * n for n in norms.values())) if all(math.isfinite(n) for n in norms.values()) else float("nan")
                    if not guard.grads_ok(total_norm):
                        opt.zero_grad(set_to_none=True)
                        continue
                    opt.step()
                    if "unet" in phase.train:
                        ldm.unet_ema.update(ldm.unet)
                    global_step += 1
                    n_good += 1
                    images_seen += B_all
                    for k, v in terms_v.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    sums["loss"] = sums.get("loss", 0.0) + float(loss_v)
                    for k, n in norms.items():
                        sums[f"grad_norm/{k}"] = sums.get(f"grad_norm/{k}", 0.0) + n
                    ips = (b + 1) * batch_size / (time.time() - t_epoch)
                    bar.update(task, advance=1, ips=ips, loss=float(loss_v))
                    if live is not None and global_step % 10 == 0:
                        live.step = global_step
                        live.log_metric("train_step/loss", float(loss_v))

                # ---- end of epoch: metrics, validation, checkpoints, samples
                epoch_metrics = {f"train/{k}": v / max(1, n_good) for k, v in sums.items()}
                epoch_metrics.update({f"guard/{k}": float(v) for k, v in guard.counts.items()})
                epoch_metrics["guard/latent_clamped_frac"] = clamped / steps_per_epoch
                epoch_metrics["images_per_s"] = n_good * batch_size / max(1e-9, time.time() - t_epoch)
                epoch_metrics["lr/" + opt.param_groups[0]["name"]] = opt.param_groups[0]["lr"]
                if stage == "vae":  # rank 0 measures; every rank uses its number (the same latents everywhere)
                    ldm.latent_scale = dp.broadcast_float(measure_scale(ldm.vae, images) if dp.main else 0.0)
                    epoch_metrics["latent_scale"] = ldm.latent_scale
                dp.check_in_sync(ldm.modules().values())  # before rank 0 saves weights that stand for all ranks
                if not dp.main:  # validation, logs, checkpoints and samples are rank 0's; the others wait for it
                    epoch += 1
                    metrics.update(epoch_metrics)  # the training numbers (global-batch losses, guard counts)
                    dp.barrier()
                    continue

                val_metrics = validate(ldm, val, stage, process, sched.seed)
                epoch_metrics.update(val_metrics)
                epoch += 1
                _log_epoch(live, tb, epoch, epoch_metrics)
                print(f"{stage} epoch {epoch}/{last_epoch} ({phase.name}) " + " ".join(
                    f"{k}={v:.4g}" for k, v in epoch_metrics.items() if k.startswith(("train/loss", "val/", "images_per_s", "guard/skipped"))), file=sys.stderr)
                save_bundle(last, ldm, {"stage": stage})
                v = min(best_val, val_metrics["val/loss"])
                state = {"epoch": epoch, "global_step": global_step, "best_val": v if math.isfinite(v) else None,
                         "guard": guard.state(), "phase": phase.name}
                _save_state(last, {**_opt_state_tensors(opt, names), "rng.torch": torch.get_rng_state()}, state)
                if val_metrics["val/loss"] < best_val:
                    best_val = val_metrics["val/loss"]
                    save_bundle(stage_dir / "best", ldm, {"stage": stage, "epoch": epoch, "val_loss": best_val})
                if sched.checkpoint_every and epoch % sched.checkpoint_every == 0:
                    save_bundle(stage_dir / f"epoch_{epoch:04d}", ldm, {"stage": stage, "epoch": epoch})
                if sched.sample_every and epoch % sched.sample_every == 0 and epoch < last_epoch:
                    write_samples(ldm, val, stage, stage_dir / "samples" / f"epoch_{epoch:04d}.png", live)
                metrics.update(epoch_metrics)
                dp.barrier()  # the other ranks go on once last/ is complete
            prev_opt, prev_names = opt, names
    finally:
        bar.stop()

    if epoch < last_epoch:  # stopped early by --stop-after: last/ holds everything --resume needs
        say(f"{stage}: stopped after epoch {epoch} of {last_epoch}; continue with --resume")
        if live is not None:
            live.end()
        return metrics
    if not dp.main:  # the stage output is rank 0's to write
        dp.barrier()
        return metrics
    # ---- the stage output: the final bundle + a sample grid
    ldm.meta["stages"] = list(dict.fromkeys(ldm.meta.get("stages", []) + [stage]))
    metrics["seconds"] = time.time() - t_stage
    metrics["images_seen"] = float(images_seen)
    save_bundle(stage_dir, ldm, {"stage": stage, "schedule": to_dict(sched)})
    write_samples(ldm, val, stage, stage_dir / "samples.png", live)
    write_json({k: v for k, v in metrics.items() if math.isfinite(v)}, stage_dir / "metrics.json")
    if live is not None:
        for k, v in metrics.items():
            if math.isfinite(v):
                live.summary[k] = v
        live.end()
    if tb is not None:
        tb.close()
    dp.barrier()
    return metrics


def _global_values(dp, weight: float, loss: torch.Tensor, disc_loss: torch.Tensor | None,
                   terms: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """(loss, discriminator loss, terms) of the global batch, detached. One process: its own values,
    untouched. Several: one all-reduce of the per-rank means weighted by ``weight`` (the rank's share
    of the batch), so every rank sees the same numbers - a NaN on any rank is a NaN on all of them."""
    terms = {k: v.detach() for k, v in terms.items()}
    if not dp.enabled:
        return loss.detach(), None if disc_loss is None else disc_loss.detach(), terms
    zero = torch.zeros((), device=loss.device)
    vals = dp.reduce_mean(torch.stack([loss.detach().float(), zero if disc_loss is None else disc_loss.detach().float(),
                                       *[v.float() for v in terms.values()]]), weight)
    return vals[0], None if disc_loss is None else vals[1], dict(zip(terms, vals[2:]))


def _save_state(folder: Path, tensors: dict[str, torch.Tensor], state: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "state.safetensors.tmp"))
    (folder / "state.safetensors.tmp").replace(folder / "state.safetensors")
    write_json(state, folder / "state.json")


def _log_epoch(live, tb, epoch: int, metrics: dict[str, float]) -> None:
    if live is not None:
        live.step = epoch
        for k, v in metrics.items():
            if math.isfinite(v):
                live.log_metric(f"epoch/{k}", v)
        live.make_summary()
    if tb is not None:
        for k, v in metrics.items():
            tb.add_scalar(k, v, epoch)


@torch.no_grad()
def validate(ldm: LDM, val: SpriteSplit, stage: str, process: NoiseSchedule, seed: int, batch_size: int = 64) -> dict[str, float]:
    """Deterministic validation loss (fixed noise and timesteps): reconstruction L1 in the vae stage,
    the denoising loss (no prompt dropout) after it; plus the alignment head's retrieval accuracy."""
    device = next(ldm.vae.parameters()).device
    g = torch.Generator().manual_seed(seed + 99991)
    was = {k: m.training for k, m in ldm.modules().items()}
    for m in ldm.modules().values():
        m.eval()
    recon, diff, hits, n = 0.0, 0.0, 0.0, 0
    for i in range(0, len(val), batch_size):
        x = val.images[i : i + batch_size].to(device).float() / 127.5 - 1
        B = len(x)
        post = ldm.vae.encode(x).latent_dist
        prompts = [r.prompts[0] for r in val.records[i : i + batch_size]]
        recon += float((decode(ldm.vae, post.mean, *_decoder_text(ldm, prompts)) - x).abs().mean()) * B
        z0 = (post.mean * ldm.latent_scale).clamp(-ldm.vae_cfg.latent_clamp, ldm.vae_cfg.latent_clamp)
        if ldm.unet is not None and stage != "vae":
            hidden, mask = ldm.text(prompts)
            t = torch.randint(0, process.T, (B,), generator=g).to(device)
            noise = torch.randn(z0.shape, generator=g).to(device)
            pred = denoise(ldm.unet, process.add_noise(z0, noise, t), t, hidden, mask)
            diff += float(diffusion_loss(pred, process.target(z0, noise, t), process.snr(t), ldm.unet_cfg)) * B
        if ldm.align is not None:
            hidden, mask = ldm.text(prompts)
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
def write_samples(ldm: LDM, val: SpriteSplit, stage: str, path: Path, live=None) -> None:
    """The stage's sample grid: VAE reconstructions (top row real, bottom row decoded) in the vae stage;
    afterwards the fixed prompts x 2 seeds (DDIM 20 steps, guidance 3, EMA weights), one prompt per column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(ldm.vae.parameters()).device
    ldm.vae.eval()
    if ldm.unet is None or stage == "vae":
        x = val.images[:8].to(device).float() / 127.5 - 1
        prompts = [r.prompts[0] for r in val.records[:8]]
        text_was_training = ldm.text.model.training  # no dropout in the decoder's text; restored for the loop
        ldm.text.model.eval()
        x_hat = decode(ldm.vae, ldm.vae.encode(x).latent_dist.mean, *_decoder_text(ldm, prompts))
        ldm.text.model.train(text_was_training)
        grid = torch.cat([to_uint8(x.cpu()), to_uint8(x_hat.float().cpu())])
    else:
        prompts = list(FIXED_PROMPTS) * 2
        seeds = [0] * len(FIXED_PROMPTS) + [1] * len(FIXED_PROMPTS)
        grid = generate_images(ldm, ema_unet(ldm), prompts, seeds, "ddim", 20, 3.0)
    save_grid(grid, path, ncol=8, scale=max(1, 128 // ldm.resolution))
    if live is not None:
        from PIL import Image

        live.log_image(f"{stage}_samples.png", Image.open(path))
