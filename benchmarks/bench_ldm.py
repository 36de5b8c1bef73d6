"""Throughput of the latent diffusion family on this machine.

    python benchmarks/bench_ldm.py [--preset ci] [--params params.yaml] [--model models/ldm/finetune] [--steps 5]

Prints, per training stage (vae, unet, finetune), images/s and the achieved FLOP/s (FLOPs of one
step counted by torch.utils.flop_counter, forward + backward) against a fp32 matmul peak measured in the
same run, then sampling ms/image for each sampler at its step count (guidance on: two U-Net passes
per step). Weights are random unless --model points at a trained bundle (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_peak(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def build(cfgs, resolution: int, model: Path | None):
    from spritegen.data.synthetic import make_sprites
    from spritegen.ldm.models import LDM, load_bundle
    from spritegen.text.encoder import TextEncoder, build_bert, train_tokenizer

    if model is not None:
        return load_bundle(model)
    _, records = make_sprites(64, resolution, 0)
    prompts = [p for r in records for p in r.prompts]
    tc = cfgs["text"]
    tok = train_tokenizer(prompts, tc.vocab_size, tc.max_length)
    text = TextEncoder(build_bert(tc, len(tok)).bert, tok, tc.max_length)
    ldm = LDM(text=text, text_meta={}, vae_cfg=cfgs["vae"], unet_cfg=cfgs["unet"], resolution=resolution)
    ldm.ensure({"vae", "unet", "align"})
    return ldm


def step_fn(stage: str, ldm, B: int, R: int):
    """One training step of ``stage`` as the loop does it (same modules, same losses)."""
    from spritegen.ldm.diffusion import NoiseSchedule, diffusion_loss
    from spritegen.ldm.losses import contrastive_loss
    from spritegen.ldm.unet import denoise
    from spritegen.ldm.vae import Perceptual, decode, kl_free_bits
    from spritegen.text.encoder import TextEncoder

    process = NoiseSchedule(ldm.unet_cfg)
    perceptual = Perceptual(ldm.vae_cfg.perceptual)
    prompts = ["a red fire type pokemon with a long tail"] * B
    ref_text = copy.deepcopy(ldm.text)
    params = {"vae": list(ldm.vae.parameters()), "unet": list(ldm.unet.parameters()),
              "finetune": list(ldm.text.model.parameters()) + list(ldm.align.parameters())}[stage]
    opt = torch.optim.AdamW(params, lr=1e-5)
    x = torch.rand(B, 3, R, R) * 2 - 1

    def step():
        if stage == "vae":
            post = ldm.vae.encode(x).latent_dist
            z = post.sample()
            with torch.no_grad():  # a text-conditioned decoder reads the frozen text, as in the loop
                dec_text = ldm.text(prompts) if ldm.vae_cfg.text_conditioned_decoder else (None, None)
            x_hat = decode(ldm.vae, z, *dec_text)
            loss = (x_hat - x).abs().mean() + perceptual(x_hat, x) + kl_free_bits(post.mean, post.logvar, 0.5)[0] * 1e-2
        else:
            with torch.no_grad():
                z0 = ldm.vae.encode(x).latent_dist.sample() * ldm.latent_scale
            with torch.set_grad_enabled(stage == "finetune"):
                hidden, mask = ldm.text(prompts)
            t = torch.randint(0, process.T, (B,))
            noise = torch.randn_like(z0)
            x_t = process.add_noise(z0, noise, t)
            pred = denoise(ldm.unet, x_t, t, hidden, mask)
            loss = diffusion_loss(pred, process.target(z0, noise, t), process.snr(t), ldm.unet_cfg)
            if stage == "finetune":
                with torch.no_grad():
                    ref, _ = ref_text(prompts)
                    pred_ref = denoise(ldm.unet, x_t, t, ref, mask)
                loss = loss + (pred - pred_ref).pow(2).mean()
                loss = loss + contrastive_loss(ldm.align.image(z0), ldm.align.text(TextEncoder.pool(hidden, mask)), ldm.align.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, params


def main() -> None:
    from spritegen.ldm.pipeline import ema_unet, generate_images
    from spritegen.params import load_all

    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=Path, default=None)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--resolution", type=int, default=None, help="default: prepare.resolution")
    ap.add_argument("--model", type=Path, default=None, help="a trained bundle (e.g. models/ldm/finetune)")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per stage")
    ap.add_argument("--n-images", type=int, default=8, help="images per sampler timing")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfgs = load_all(args.params, args.preset)
    R = args.resolution or cfgs["prepare"].resolution
    ldm = build(cfgs, R, args.model)
    R = ldm.resolution or R
    for m in ldm.modules().values():
        m.requires_grad_(True)
    peak = matmul_peak()
    print(f"threads {torch.get_num_threads()}  resolution {R}  latent {ldm.latent_shape}  fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'stage':<9} {'batch':>5} {'s/step':>8} {'img/s':>8} {'GFLOP/step':>11} {'GFLOP/s':>8} {'% peak':>7}")
    for stage in ("vae", "unet", "finetune"):
        B = cfgs["vae"].batch_size if stage == "vae" else cfgs["unet"].batch_size
        step, _ = step_fn(stage, ldm, B, R)
        step()  # warm-up
        with FlopCounterMode(display=False) as fc:
            step()
        flops = fc.get_total_flops()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        dt = (time.perf_counter() - t) / args.steps
        print(f"{stage:<9} {B:>5} {dt:>8.3f} {B / dt:>8.1f} {flops / 1e9:>11.2f} {flops / dt / 1e9:>8.1f} {100 * flops / dt / peak:>6.1f}%")
    unet = ema_unet(ldm) if ldm.unet_ema is not None else ldm.unet.eval()
    ldm.vae.eval()
    prompts = ["a red fire type pokemon"] * args.n_images
    seeds = list(range(args.n_images))
    print(f"\nsampling {args.n_images} images, guidance 3 (batched):")
    for sampler, steps in (("ddpm", 250), ("ddpm", 50), ("ddim", 20), ("dpm++", 20), ("dpm++", 10)):
        t = time.perf_counter()
        generate_images(ldm, unet, prompts, seeds, sampler, steps, 3.0)
        dt = time.perf_counter() - t
        print(f"  {sampler:<6} {steps:>4} steps  {1000 * dt / args.n_images:8.1f} ms/image")


if __name__ == "__main__":
    main()
