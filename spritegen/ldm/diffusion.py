"""The diffusion process (forward noising, training targets, loss weighting) and the samplers.

The maths lives in diffusers' schedulers (DDPM, DDIM, DPM-Solver++); this module wires them to one
config and adds what the training loop needs: the target for each prediction type, min-SNR weights and
the guided sampling loop with per-image random generators (image i depends only on its own seed).

    x_t = sqrt(alphas_cumprod[t]) * x_0 + sqrt(1 - alphas_cumprod[t]) * noise
    v   = sqrt(alphas_cumprod[t]) * noise - sqrt(1 - alphas_cumprod[t]) * x_0
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

from spritegen.ldm.unet import UNetConfig

Sampler = Literal["ddpm", "ddim", "dpm++", "dpm++sde", "unipc"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm++", "dpm++sde", "unipc")
# the samplers that draw fresh noise at every step: they integrate the reverse SDE, as DDPM does; the
# others integrate the probability-flow ODE, which under guidance is a different distribution (make_sampler)
STOCHASTIC: tuple[str, ...] = ("ddpm", "dpm++sde")
_BETA = {"cosine": "squaredcos_cap_v2", "linear": "linear", "scaled_linear": "scaled_linear"}


class NoiseSchedule:
    """The forward process q(x_t | x_0) for ``num_train_timesteps`` steps (diffusers' betas)."""

    def __init__(self, cfg: UNetConfig):
        from diffusers import DDPMScheduler

        self.cfg = cfg
        self.T = cfg.num_train_timesteps
        self.prediction_type = cfg.prediction_type
        ref = DDPMScheduler(num_train_timesteps=self.T, beta_schedule=_BETA[cfg.beta_schedule])
        self.betas = ref.betas.double()  # (T,)
        self.alphas_cumprod = ref.alphas_cumprod.double()  # (T,)

    def to(self, device) -> "NoiseSchedule":
        """Keep the tables on the training device: indexing them there costs no copy per step."""
        self.betas, self.alphas_cumprod = self.betas.to(device), self.alphas_cumprod.to(device)
        return self

    def _coef(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod.to(x.device)[t].to(x.dtype)  # (B,)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return a.sqrt().view(shape), (1 - a).sqrt().view(shape)

    def add_noise(self, x_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sqrt_a, sqrt_1ma = self._coef(t, x_0)
        return sqrt_a * x_0 + sqrt_1ma * noise

    def target(self, x_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        sqrt_a, sqrt_1ma = self._coef(t, x_0)
        return sqrt_a * noise - sqrt_1ma * x_0  # v

    def predict_x0(self, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sqrt_a, sqrt_1ma = self._coef(t, x_t)
        if self.prediction_type == "epsilon":
            return (x_t - sqrt_1ma * pred) / sqrt_a.clamp(min=1e-4)
        return sqrt_a * x_t - sqrt_1ma * pred

    def clip_prediction(self, pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip: float) -> torch.Tensor:
        """The prediction whose implied x_0 is clipped to +-clip, in the same parameterisation.

        The cosine schedule ends at alphas_cumprod ~ 0, where x_0 = (x_t - sigma * eps) / alpha
        amplifies the U-Net's error by 1/alpha ~ 1e4. DDPM/DDIM clip x_0 inside diffusers; DPM-Solver++
        does not (its thresholding rescales to [-1, 1], meant for pixels), which is why it gave pure
        noise. Clipping here makes every sampler see the same, bounded x_0."""
        a = self.alphas_cumprod.to(x_t.device)[t].view(-1, *([1] * (x_t.ndim - 1)))
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        p, x = pred.double(), x_t.double()
        if self.prediction_type == "epsilon":
            x0 = ((x - sigma * p) / alpha.clamp(min=1e-8)).clamp(-clip, clip)
            return ((x - alpha * x0) / sigma.clamp(min=1e-8)).to(pred.dtype)
        x0 = (alpha * x - sigma * p).clamp(-clip, clip)
        eps = sigma * x + alpha * p
        return (alpha * eps - sigma * x0).to(pred.dtype)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(t.device)[t]
        return (a / (1 - a)).float()


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023) per-sample weights; 1 when gamma = 0.

    For epsilon-prediction w = min(snr, gamma) / snr; for v-prediction w = min(snr, gamma) / (snr + 1)."""
    if gamma <= 0:
        return torch.ones_like(snr)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr.clamp(min=1e-8)


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, snr: torch.Tensor, cfg: UNetConfig) -> torch.Tensor:
    """Huber (seed 001) or MSE between prediction and target, min-SNR weighted, mean over the batch."""
    if cfg.loss == "huber":
        per = F.smooth_l1_loss(pred.float(), target.float(), beta=cfg.huber_delta, reduction="none")
    else:
        per = F.mse_loss(pred.float(), target.float(), reduction="none")
    per_sample = per.flatten(1).mean(1)  # (B,)
    return (min_snr_weights(snr, cfg.min_snr_gamma, cfg.prediction_type) * per_sample).mean()


def drop_prompts(prompts: list[str], p: float, generator: torch.Generator) -> tuple[list[str], torch.Tensor]:
    """Conditioning dropout for classifier-free guidance: each prompt becomes "" with probability p."""
    dropped = torch.rand(len(prompts), generator=generator) < p  # (B,)
    return ["" if d else s for s, d in zip(prompts, dropped.tolist())], dropped


# --- samplers ---------------------------------------------------------------------------------------


def make_sampler(name: str, cfg: UNetConfig, clip: float):
    """A fresh diffusers scheduler for ``name`` (they keep per-run state, so one per sampling call).

    ``ddpm`` and ``dpm++sde`` (DPM-Solver++ 2M SDE) integrate the reverse SDE; ``ddim``, ``dpm++``
    (DPM-Solver++ 2M) and ``unipc`` (UniPC, bh2) the probability-flow ODE. Without guidance both reach
    the data distribution. With classifier-free guidance they do not reach the same one: the guided
    prediction uncond + w (cond - uncond) is not the score of any noised family of distributions, so
    the ODE and the SDE built on it end apart, and the ODE's end is the narrower one (on Gaussian data
    with guidance 5, a standard deviation of 0.08 against 0.25; tests/test_ldm_diffusion.py computes
    both ends in closed form). So only an SDE solver can agree with DDPM run long.

    ``clip``: x_0 predictions are clipped to +-clip (the latent clamp), not diffusers' default +-1 which
    is meant for pixels and would flatten unit-variance latents (``sample`` clips for every sampler).
    Every sampler uses the trailing timestep spacing (its first step at t = T - 1, pure noise); the
    multistep solvers end with a first-order step to sigma = 0 (``final_sigmas_type="zero"``)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    common = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=_BETA[cfg.beta_schedule], prediction_type=cfg.prediction_type)
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=True, clip_sample_range=clip, timestep_spacing="trailing")
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=True, clip_sample_range=clip, set_alpha_to_one=True, timestep_spacing="trailing")
    if name in ("dpm++", "dpm++sde"):
        algorithm = "sde-dpmsolver++" if name == "dpm++sde" else "dpmsolver++"
        return DPMSolverMultistepScheduler(**common, algorithm_type=algorithm, solver_order=2, lower_order_final=True,
                                           final_sigmas_type="zero", timestep_spacing="trailing")
    if name == "unipc":
        return UniPCMultistepScheduler(**common, solver_order=2, solver_type="bh2", predict_x0=True, final_sigmas_type="zero",
                                       timestep_spacing="trailing")
    raise ValueError(f"unknown sampler {name!r}; samplers: {SAMPLERS}")


Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, C, h, w), t (B,)) -> prediction


@torch.no_grad()
def sample(denoise: Denoiser, shape: tuple[int, ...], generators: list[torch.Generator], sampler: str, steps: int,
           cfg: UNetConfig, clip: float, device: torch.device | str = "cpu",
           on_step: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run ``sampler`` for ``steps`` steps from pure noise. ``shape`` is one latent's (C, h, w);
    ``generators[i]`` draws all of image i's randomness (initial noise and the stochastic samplers'
    per-step noise). ``on_step(i, steps, x0)`` sees step i's clipped x_0 prediction (the server's previews;
    it may raise to stop the work) and changes nothing in the result."""
    scheduler = make_sampler(sampler, cfg, clip)
    scheduler.set_timesteps(steps, device=device)
    x = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)  # (B, C, h, w)
    x = x * scheduler.init_noise_sigma
    process = NoiseSchedule(cfg)
    # a list of generators: diffusers draws the per-step noise of image i from generators[i]
    step_kwargs = {"generator": generators} if sampler in STOCHASTIC else {}
    for i, t in enumerate(scheduler.timesteps):
        t_batch = torch.full((len(x),), int(t), device=device, dtype=torch.long)
        pred = process.clip_prediction(denoise(scheduler.scale_model_input(x, t), t_batch), x, t_batch, clip)
        if on_step is not None:
            on_step(i, len(scheduler.timesteps), process.predict_x0(x, pred, t_batch))
        x = scheduler.step(pred, t, x, **step_kwargs).prev_sample
    return x


def guided(unet, cond: torch.Tensor, cond_mask: torch.Tensor, uncond: torch.Tensor, uncond_mask: torch.Tensor,
           guidance: float) -> Denoiser:
    """Classifier-free guidance: pred = uncond + w * (cond - uncond), one U-Net call on the doubled batch."""
    from spritegen.ldm.unet import denoise as denoise_fn

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance == 1.0:
            return denoise_fn(unet, x_t, t, cond, cond_mask)
        out = denoise_fn(unet, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond]), torch.cat([uncond_mask, cond_mask]))
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + guidance * (out_cond - out_uncond)

    return denoise
