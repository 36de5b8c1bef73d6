"""Noise schedule and sampler golden values, min-SNR weights, conditioning dropout.

The samplers are checked on an analytic denoiser: for data x_0 ~ N(0, s^2) the optimal prediction
is known in closed form, E[eps | x_t] = sqrt(1 - a) x_t / (a s^2 + 1 - a), so every sampler must
return samples of standard deviation ~ s, and the fast ones must agree with DDPM run long."""

import math

import pytest
import torch

from spritegen.config import from_dict
from spritegen.ldm.diffusion import SAMPLERS, NoiseSchedule, diffusion_loss, drop_prompts, min_snr_weights, sample
from spritegen.ldm.unet import UNetConfig

S = 0.5  # data standard deviation of the analytic problem


def analytic(process: NoiseSchedule, prediction_type: str):
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = process.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * x / (a * S * S + 1 - a)
        if prediction_type == "epsilon":
            return eps
        x0 = a.sqrt() * S * S * x / (a * S * S + 1 - a)
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    return denoise


def test_cosine_schedule_matches_closed_form():
    process = NoiseSchedule(UNetConfig())
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # Nichol & Dhariwal 2021, eq. 17
    for t in (0, 1, 10, 250, 500, 750, 900):
        assert float(process.alphas_cumprod[t]) == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-6)
    golden = [0.99995869, 0.84588802, 0.49228504, 0.14317866]
    assert [round(float(process.alphas_cumprod[t]), 8) for t in (0, 250, 500, 750)] == golden
    assert float(process.alphas_cumprod[999]) < 1e-6  # the cosine schedule ends at pure noise


def test_add_noise_target_and_x0_round_trip():
    for pt in ("epsilon", "v_prediction"):
        process = NoiseSchedule(UNetConfig(prediction_type=pt))
        g = torch.Generator().manual_seed(0)
        x0, noise = torch.randn(5, 4, 2, 2, generator=g), torch.randn(5, 4, 2, 2, generator=g)
        t = torch.tensor([0, 100, 500, 900, 990])
        x_t = process.add_noise(x0, noise, t)
        a = process.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        assert torch.allclose(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-6)
        target = process.target(x0, noise, t)
        assert torch.allclose(process.predict_x0(x_t, target, t), x0, atol=1e-3)
        clipped = process.clip_prediction(target, x_t, t, clip=100.0)  # nothing to clip: unchanged
        assert torch.allclose(clipped, target, atol=1e-4)


def test_min_snr_weights():
    snr = torch.tensor([0.1, 1.0, 5.0, 50.0])
    assert torch.allclose(min_snr_weights(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 1.0, 0.1]))
    assert torch.allclose(min_snr_weights(snr, 5.0, "v_prediction"), torch.tensor([0.1 / 1.1, 0.5, 5 / 6, 5 / 51]))
    assert torch.equal(min_snr_weights(snr, 0.0, "epsilon"), torch.ones(4))


def test_huber_and_mse_losses():
    pred, target = torch.zeros(2, 1, 1, 2), torch.tensor([0.5, 3.0, 0.0, 0.0]).view(2, 1, 1, 2)
    snr = torch.tensor([1.0, 1.0])
    huber = diffusion_loss(pred, target, snr, from_dict(UNetConfig, {"loss": "huber", "min_snr_gamma": 0}))
    mse = diffusion_loss(pred, target, snr, from_dict(UNetConfig, {"loss": "mse", "min_snr_gamma": 0}))
    assert float(huber) == pytest.approx((0.125 + 2.5) / 2 / 2)
    assert float(mse) == pytest.approx((0.25 + 9.0) / 2 / 2)


def test_conditioning_dropout_rate_and_determinism():
    prompts = [f"prompt {i}" for i in range(4000)]
    out, dropped = drop_prompts(prompts, 0.1, torch.Generator().manual_seed(0))
    assert 0.08 < float(dropped.float().mean()) < 0.12
    assert all((o == "") == bool(d) for o, d in zip(out, dropped))
    assert all(o == p for o, p, d in zip(out, prompts, dropped) if not d)
    again, _ = drop_prompts(prompts, 0.1, torch.Generator().manual_seed(0))
    assert again == out
    assert drop_prompts(prompts[:10], 0.0, torch.Generator())[0] == prompts[:10]


# golden first values of image 0 (seed 0), analytic epsilon model, 10 steps
GOLDEN = {
    "ddpm": [-0.5326836109161377, -0.030998695641756058, 0.26771706342697144],
    "ddim": [-0.4805372357368469, -0.49185675382614136, -0.10695332288742065],
    "dpm++": [-0.535466730594635, -0.5480760931968689, -0.11918371915817261],
}


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_golden_values(sampler):
    cfg = UNetConfig()
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    x = sample(analytic(NoiseSchedule(cfg), "epsilon"), (4, 4, 4), gens, sampler, 10, cfg, clip=10.0)
    assert x[0, 0, 0, :3].tolist() == pytest.approx(GOLDEN[sampler], abs=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler, steps, tol", [("ddpm", 250, 0.04), ("ddim", 50, 0.04), ("dpm++", 20, 0.04), ("dpm++", 10, 0.06)])
def test_samplers_recover_the_data_distribution(sampler, steps, tol, prediction_type):
    """Every sampler against the closed form (and so against DDPM run long) on the same 'weights'."""
    cfg = UNetConfig(prediction_type=prediction_type)
    gens = [torch.Generator().manual_seed(i) for i in range(128)]
    x = sample(analytic(NoiseSchedule(cfg), prediction_type), (4, 4, 4), gens, sampler, steps, cfg, clip=10.0)
    assert torch.isfinite(x).all()
    assert abs(float(x.std()) - S) < tol * 2 and abs(float(x.mean())) < 0.05


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sample_is_batch_independent(sampler):
    cfg = UNetConfig()
    den = analytic(NoiseSchedule(cfg), "epsilon")
    seeds = [3, 7, 11]
    batch = sample(den, (4, 2, 2), [torch.Generator().manual_seed(s) for s in seeds], sampler, 8, cfg, clip=4.0)
    for i, s in enumerate(seeds):
        alone = sample(den, (4, 2, 2), [torch.Generator().manual_seed(s)], sampler, 8, cfg, clip=4.0)
        assert torch.allclose(alone[0], batch[i], atol=1e-6)
