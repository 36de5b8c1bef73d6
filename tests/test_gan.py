"""The GAN family (seed 002, issue 13): each fix a param, the schedules as pure functions of the epoch,
the losses and the gradient penalty against hand-computed values, the collapse monitor being the
evaluation rubric's own code, and a tiny end-to-end run with kill-and-resume."""

import pytest

from spritegen.config import ConfigError, from_dict
from spritegen.gan.config import GANConfig

# --- the params -------------------------------------------------------------------------------------------


def test_the_defaults_validate_and_build_32_px():
    cfg = from_dict(GANConfig, {}, "gan")
    assert cfg.resolution == 32 and cfg.augment_policies == ("translation",)
    assert from_dict(GANConfig, {"diffaugment": "color, translation,cutout"}, "gan").augment_policies == ("color", "translation", "cutout")
    cfg.check_resolution(32)
    with pytest.raises(ConfigError, match=r"gan\.g_channels: 4 entries build 32 px images but the data is 16 px \(give 3 entries\)"):
        cfg.check_resolution(16)


@pytest.mark.parametrize("values,message", [
    ({"diffaugment": "color,blur"}, r"gan\.diffaugment: unknown policy \['blur'\]"),
    ({"curriculum": [[0, 8], [0, 16]]}, r"gan\.curriculum\[1\]: epochs must ascend"),
    ({"curriculum": [[0, 12]]}, r"gan\.curriculum\[0\]: resolution 12 is not a power of two"),
    ({"curriculum": [[0]]}, r"gan\.curriculum\[0\]: expected \[epoch, resolution\]"),
    ({"loss": "bce"}, r"gan\.loss: 'bce' is not one of"),
    ({"penalty": "gp"}, r"gan\.penalty: 'gp' is not one of"),
    ({"label_smoothing": 0.0}, r"gan\.label_smoothing: 0\.0 must be > 0"),
    ({"g_channels": [8]}, r"g_channels/d_channels: at least two entries"),
])
def test_bad_values_are_errors_naming_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(GANConfig, values, "gan")


def test_diffaugment_empty_is_off():
    assert from_dict(GANConfig, {"diffaugment": ""}, "gan").augment_policies == ()


# --- the schedules ------------------------------------------------------------------------------------------

import math  # noqa: E402

import torch  # noqa: E402

from spritegen.gan.model import (  # noqa: E402
    CRITIC_TRAINS, Generator, ProjectionDiscriminator, TransformerCritic, at_resolution, critic_phase_at,
    attribute_loss, curriculum_resolution_at, d_loss, d_steps_at, diff_augment, discriminator_view, g_loss, g_objective,
    gradient_penalty, instance_noise_at, penalty_scale)

TINY = {"z_dim": 8, "text_dim": 8, "w_dim": 16, "mapping_layers": 2, "g_channels": [16, 16, 8], "d_channels": [8, 16, 16],
        "critic_width": 16, "critic_heads": 2, "critic_layers": 1, "nca_channels": 6, "nca_hidden": 16, "nca_steps": 3,
        "monitor_size": 8}


def _cfg(**values):
    return from_dict(GANConfig, {**TINY, **values}, "gan")


def test_d_steps_schedule_at_chosen_epochs():
    cfg = _cfg(d_steps_early=3, d_steps_late=2, d_steps_boundary=100)  # the seed's: 3 over epochs 1-100, then 2
    assert [d_steps_at(cfg, e) for e in (0, 1, 50, 99, 99.99, 100, 101, 500)] == [3, 3, 3, 3, 3, 2, 2, 2]
    cfg = _cfg(d_steps_early=5, d_steps_late=1, d_steps_boundary=0)
    assert d_steps_at(cfg, 0) == 1


def test_critic_phases_and_ramp_values():
    cfg = _cfg(critic=True, critic_isolated_epochs=200, critic_isolation_epochs=50, critic_ramp_epochs=100, critic_weight=0.5)
    at = {e: critic_phase_at(cfg, e) for e in (0, 199.9, 200, 249.9, 250, 275, 300, 349, 350, 1000)}
    assert at[0] == ("isolated", 0.0) and at[199.9] == ("isolated", 0.0)
    assert at[200] == ("isolation", 0.0) and at[249.9] == ("isolation", 0.0)
    assert [at[e][0] for e in (250, 275, 300, 349)] == ["ramp"] * 4
    assert [at[e][1] for e in (250, 275, 300, 349)] == pytest.approx([0.0, 0.125, 0.25, 0.495])
    assert at[350] == ("integrated", 0.5) and at[1000] == ("integrated", 0.5)
    assert CRITIC_TRAINS["isolated"] and not CRITIC_TRAINS["isolation"] and CRITIC_TRAINS["ramp"]
    assert critic_phase_at(_cfg(critic=False), 500) == ("off", 0.0)
    no_ramp = _cfg(critic=True, critic_isolated_epochs=2, critic_isolation_epochs=1, critic_ramp_epochs=0, critic_weight=0.3)
    assert critic_phase_at(no_ramp, 3) == ("integrated", 0.3)


def test_instance_noise_schedule():
    assert [instance_noise_at(_cfg(instance_noise=0.05), e) for e in (0, 10, 1000)] == [0.05, 0.05, 0.05]
    cfg = _cfg(instance_noise=0.05, instance_noise_decay_epochs=20)
    assert [instance_noise_at(cfg, e) for e in (0, 5, 10, 20, 30)] == pytest.approx([0.05, 0.0375, 0.025, 0.0, 0.0])


def test_curriculum_resolution():
    cfg = _cfg(curriculum=[[0, 4], [3, 8]])
    assert [curriculum_resolution_at(cfg, e, 16) for e in (0, 2.9, 3, 10)] == [4, 4, 8, 8]
    assert curriculum_resolution_at(_cfg(), 5, 16) == 16
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = at_resolution(x, 2)
    assert torch.equal(y[0, 0, :2, :2], torch.full((2, 2), 2.5)) and torch.equal(at_resolution(x, 4), x)


# --- losses, smoothing, noise, penalty ------------------------------------------------------------------------


def test_losses_against_hand_computed_values():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    # nonsaturating with one-sided smoothing 0.9: the real target is 0.9, the fake target stays 0
    expected = (0.9 * (sp(-2) + sp(1)) + 0.1 * (sp(2) + sp(-1))) / 2 + (sp(0.5) + sp(-3)) / 2
    assert d_loss(real, fake, "nonsaturating", 0.9).item() == pytest.approx(expected)
    assert d_loss(real, fake, "nonsaturating", 1.0).item() == pytest.approx((sp(-2) + sp(1)) / 2 + (sp(0.5) + sp(-3)) / 2)
    assert d_loss(real, fake, "hinge").item() == pytest.approx((0 + 2) / 2 + (1.5 + 0) / 2)
    assert d_loss(real, fake, "wgan").item() == pytest.approx(-1.25 - 0.5)
    # smoothing does not apply where there are no labels
    for kind in ("hinge", "wgan"):
        assert d_loss(real, fake, kind, 0.9).item() == d_loss(real, fake, kind, 1.0).item()
    assert g_loss(fake, "nonsaturating").item() == pytest.approx((sp(-0.5) + sp(3)) / 2)
    assert g_loss(fake, "hinge").item() == g_loss(fake, "wgan").item() == pytest.approx(1.25)


def test_instance_noise_where_it_applies():
    x = torch.zeros(4, 3, 8, 8)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    both, real_only = _cfg(diffaugment="", instance_noise_on="both"), _cfg(diffaugment="", instance_noise_on="real")
    noisy = discriminator_view(x, both, 8, 0.05, True, g())
    assert 0.04 < noisy.std().item() < 0.06
    assert discriminator_view(x, both, 8, 0.05, False, g()).abs().sum() > 0  # fakes too
    assert torch.equal(discriminator_view(x, real_only, 8, 0.05, False, g()), x)  # the seed's: reals only
    assert discriminator_view(x, real_only, 8, 0.05, True, g()).abs().sum() > 0
    assert torch.equal(discriminator_view(x, both, 8, 0.0, True, g()), x)  # decayed to 0: nothing added


def test_diffaugment_is_differentiable_and_off_when_empty():
    x = (torch.rand(3, 3, 16, 16) * 2 - 1).requires_grad_(True)
    y = diff_augment(x, ("color", "translation", "cutout"), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(y, x)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    cut = diff_augment(torch.ones(2, 3, 16, 16), ("cutout",), torch.Generator().manual_seed(1))
    assert ((cut == 0).float().mean(dim=(1, 2, 3)) > 0.1).all()  # a square of half the side, maybe clipped at the edge
    assert torch.equal(discriminator_view(x, _cfg(diffaugment="", instance_noise=0.0), 16, 0.0, True, None), x)


class LinearD(torch.nn.Module):
    """D(x, t) = <w, x> + b: its input gradient is w everywhere, so the penalties are closed forms."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x, text, attrs):
        return x.flatten(1) @ self.w.flatten() + 0.7


def test_gradient_penalty_against_a_linear_discriminator():
    w = torch.zeros(1, 2, 2)
    w[0, 0, 0], w[0, 1, 1] = 3.0, 4.0  # |w| = 5
    D = LinearD(w)
    real, fake, t, a = torch.randn(6, 1, 2, 2), torch.randn(6, 1, 2, 2), torch.zeros(6, 1), torch.zeros(6, 2, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    assert gradient_penalty(D, real, fake, t, a, "wgan-gp", g).item() == pytest.approx((5 - 1) ** 2)
    assert gradient_penalty(D, real, fake, t, a, "r1").item() == pytest.approx(25.0)
    assert gradient_penalty(D, real, fake, t, a, "none").item() == 0.0
    # the penalty is a graph: d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|
    gradient_penalty(D, real, fake, t, a, "wgan-gp", g).backward()
    assert torch.allclose(D.w.grad, 2 * 4 * w / 5)
    assert penalty_scale(_cfg(penalty="r1", penalty_weight=10.0, penalty_every=4)) == 20.0
    assert penalty_scale(_cfg(penalty="wgan-gp", penalty_weight=10.0, penalty_every=1)) == 10.0


# --- the networks ---------------------------------------------------------------------------------------------


def _nets(**values):
    torch.manual_seed(0)
    cfg = _cfg(**values)
    return cfg, Generator(cfg, 16, 12, CARD), ProjectionDiscriminator(cfg, 16, 12, CARD)


CARD = [3, 4]  # two small attribute vocabularies (index 0: unknown)


def _attrs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, k, (n,), generator=g) for k in CARD], 1)


def test_shapes_range_and_the_seed_init():
    cfg, G, D = _nets(nca=True, critic=True)
    z, t, a = torch.randn(5, 8), torch.randn(5, 12), _attrs(5)
    x, alive = G.forward_alive(z, t, a, torch.Generator().manual_seed(0))
    assert x.shape == (5, 3, 16, 16) and x.abs().max() <= 1 and 0 <= alive.item() <= 1
    assert D(x, t, a).shape == (5,) and TransformerCritic(cfg, 16, 12, CARD)(x, t, a).shape == (5,)
    conv = G.blocks[1].conv1
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (1 + 0.2**2)) / math.sqrt(fan_in), rel=0.15)  # Kaiming, a = 0.2
    assert G.nca.update_out.weight.abs().sum() == 0  # the NCA starts as the identity


def test_the_auxiliary_classifier_loss_ignores_unknown_ids_and_reaches_the_generator():
    import torch.nn.functional as F

    logits = [torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]), torch.tensor([[0.0, 1.0, 0.0, 3.0], [1.0, 0.0, 0.0, 0.0]])]
    attrs = torch.tensor([[1, 0], [2, 3]])  # three known ids; row 0's second attribute is unknown
    by_hand = (F.cross_entropy(logits[0], torch.tensor([1, 2]), reduction="sum") + F.cross_entropy(logits[1][1:], torch.tensor([3]))) / 3
    assert attribute_loss(logits, attrs).item() == pytest.approx(by_hand.item())
    assert attribute_loss(logits, torch.zeros_like(attrs)).item() == 0.0  # nothing known: no target
    cfg, G, D = _nets()
    D.eval()
    z, t, a = torch.randn(4, 8), torch.randn(4, 12), torch.tensor([[1, 1], [2, 3], [1, 2], [2, 1]])
    off, terms_off = g_objective(D, None, G(z, t, a), t, a, "nonsaturating", 0.0, aux_weight=0.0)
    on, terms_on = g_objective(D, None, G(z, t, a), t, a, "nonsaturating", 0.0, aux_weight=2.0)
    assert "g_aux" not in terms_off and on.item() == pytest.approx((off + 2.0 * terms_on["g_aux"]).item())
    (grad,) = torch.autograd.grad(terms_on["g_aux"], G.to_rgb.weight)
    assert grad.abs().sum() > 0  # the classifier's verdict on the fakes trains the generator


def test_mode_seeking_loss_by_hand():
    from spritegen.gan.model import mode_seeking_loss

    z = torch.tensor([[0.0, 0.0], [1.0, 3.0]])  # mean |z1 - z2| = 2
    x = torch.tensor([[[0.5]], [[-0.5]]])  # mean |x1 - x2| = 1
    assert mode_seeking_loss(x, z, eps=0.0).item() == pytest.approx(2.0)  # 1 / (1 / 2)
    assert mode_seeking_loss(torch.zeros(2, 1, 1), z).item() == pytest.approx(1e5)  # noise that changes nothing


def test_the_mapped_start_places_the_coarse_layout_by_noise_and_condition():
    """g_start mapped: the 4x4 input is a map of w, so two noises differ already there; constant: one input."""
    t, a = torch.randn(1, 12).expand(2, -1), _attrs(1).expand(2, -1)
    z = torch.randn(2, 8)
    for start, differs in (("mapped", True), ("constant", False)):
        _, G, _ = _nets(g_start=start)
        w = G.style(z, t, a)
        x0 = G.start(w).view(2, -1, 4, 4) if start == "mapped" else G.start.expand(2, -1, -1, -1)
        assert bool((x0[0] - x0[1]).abs().max() > 1e-3) is differs
        assert G(z, t, a).shape == (2, 3, 16, 16)


def test_minibatch_std_sees_identical_samples_and_takes_any_batch_size():
    from spritegen.gan.model import minibatch_std

    same = torch.randn(1, 5, 4, 4).expand(8, -1, -1, -1)
    assert minibatch_std(same, 4).max() < 1e-3 and minibatch_std(torch.randn(8, 5, 4, 4), 4).min() > 0.5
    assert minibatch_std(torch.randn(7, 5, 4, 4), 4).shape == (7, 1, 4, 4)  # 7 = 7 groups of one: spread 0
    x = torch.randn(8, 5, 4, 4)
    manual = x.reshape(4, 2, 5, 4, 4).var(0, unbiased=False).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # groups {0,2,4,6}, {1,3,5,7}
    assert torch.allclose(minibatch_std(x, 4)[:, 0, 0, 0], manual.repeat(4))
    _, _, D = _nets(d_minibatch_std=0)
    assert D.final.in_channels == 16


def test_the_projection_discriminator_reads_the_prompt_and_its_attributes():
    _, _, D = _nets()
    D.eval()
    x = torch.randn(2, 3, 16, 16)
    t = torch.randn(2, 12)
    a = torch.tensor([[1, 2], [2, 3]])
    phi = D.features(x)
    y = D.embed(t) + D.attributes[0](a[:, 0]) + D.attributes[1](a[:, 1])  # V t + sum_i E_i[a_i]
    assert torch.allclose(D(x, t, a), D.psi(phi).squeeze(1) + (y * phi).sum(1))
    assert not torch.allclose(D(x, t, a), D(x, t.flip(0), a))
    assert not torch.allclose(D(x, t, a), D(x, t, a.flip(0)))  # the attributes alone move the score


def test_the_generators_output_changes_with_the_prompt():
    _, G, _ = _nets(nca=True)
    G.eval()
    z = torch.randn(1, 8).expand(2, -1)
    t = torch.randn(2, 12)
    a = _attrs(2)
    x = G(z, t, a)
    assert (x[0] - x[1]).abs().mean() > 1e-3  # same noise, two prompts: two images
    same_text = G(z, t[:1].expand(2, -1), torch.tensor([[1, 1], [2, 3]]))
    assert (same_text[0] - same_text[1]).abs().mean() > 1e-3  # same noise and text, two attribute sets: two images
    assert torch.equal(G(z, t, a), x)  # eval: deterministic (the NCA takes its expected update)
    # a row does not depend on its place in the batch (its batch size can change the last bits: the
    # bundle's generation pads every chunk to one size, see spritegen/gan/bundle.py)
    assert torch.equal(G(z.flip(0), t.flip(0), a.flip(0)).flip(0), x)


def test_in_the_isolated_phase_no_gradient_reaches_the_generator_from_the_critic():
    cfg, G, D = _nets(critic=True, critic_isolated_epochs=2, critic_isolation_epochs=1, critic_ramp_epochs=2, critic_weight=1.0)
    critic_a, critic_b = TransformerCritic(cfg, 16, 12, CARD), TransformerCritic(cfg, 16, 12, CARD)
    with torch.no_grad():
        for p in critic_b.parameters():
            p.add_(torch.randn_like(p))
    D.eval()
    z, t, a = torch.randn(4, 8), torch.randn(4, 12), _attrs(4)

    def grads(critic, epoch):
        phase, weight = critic_phase_at(cfg, epoch)
        loss, terms = g_objective(D, critic, G(z, t, a), t, a, "nonsaturating", weight)
        through_critic = torch.autograd.grad(loss, list(critic.parameters()), retain_graph=True, allow_unused=True)
        g_grads = torch.autograd.grad(loss, list(G.parameters()))
        return phase, through_critic, g_grads, terms

    for epoch in (0, 1.5, 2.5):  # isolated, isolated, isolation
        phase, through_critic, ga, terms = grads(critic_a, epoch)
        assert phase in ("isolated", "isolation") and "g_critic" not in terms
        assert all(gr is None for gr in through_critic)  # the critic is not in the generator's graph at all
        _, _, gb, _ = grads(critic_b, epoch)
        assert all(torch.equal(a, b) for a, b in zip(ga, gb))  # another critic changes nothing
    phase, through_critic, ga, terms = grads(critic_a, 4.0)  # ramp, weight 0.5
    assert phase == "ramp" and "g_critic" in terms and any(gr is not None and gr.abs().sum() > 0 for gr in through_critic)
    _, _, gb, _ = grads(critic_b, 4.0)
    assert any(not torch.equal(a, b) for a, b in zip(ga, gb))  # now the critic's opinion reaches G


# --- the collapse monitor ---------------------------------------------------------------------------------------

import numpy as np  # noqa: E402


# what 64 real 32-px training sprites give (data/prepared, measured): the monitor's reference statistics
REAL = {"value_range": 1.0, "unique_pixel_fraction": 0.35, "channel_std": 0.14}


def _varied(n=16, seed=1):
    """Synthetic sprites with a little per-pixel jitter: shapes and colours that vary, many distinct values."""
    from spritegen.data.synthetic import make_sprites

    images, _ = make_sprites(n, 16, seed=seed)
    jitter = torch.randint(-12, 13, images.shape, generator=torch.Generator().manual_seed(seed))
    return ((images.int() + jitter).clamp(0, 255).float() / 127.5 - 1)


def test_the_collapse_monitor_calls_a_constant_batch_collapsed():
    from spritegen.gan.monitor import collapse_row, collapse_warnings

    gray = torch.full((16, 3, 16, 16), 0.07)  # the seed's collapse: uniform gray, 0.043..0.102
    row = collapse_row(gray, REAL)
    assert row["collapse/score"] == 9 and row["collapse/unique_pixels"] == 1
    assert row["collapse/out_min"] == row["collapse/out_max"] == pytest.approx(0.07)
    warnings = collapse_warnings(row, _cfg())
    assert len(warnings) == 4 and "unique pixels" in warnings[0] and "does not span" in warnings[1]
    assert "spread across samples" in warnings[2] and "collapse score 9/9" in warnings[3]
    # one sprite repeated: full range and many colours, but no spread across samples
    same = _varied()[:1].expand(16, -1, -1, -1)
    assert collapse_row(same, REAL)["collapse/points_channel_std"] == 3


def test_the_collapse_monitor_calls_a_varied_batch_healthy():
    from spritegen.gan.monitor import collapse_row, collapse_warnings

    row = collapse_row(_varied(), REAL)
    assert row["collapse/score"] <= 1 and collapse_warnings(row, _cfg()) == [], row
    noise = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert collapse_row(noise, REAL)["collapse/score"] == 0


def test_the_collapse_score_is_the_function_evaluation_uses():
    """Not a copy: the very objects the evaluation suite calls (spritegen.evaluate.metrics re-exports them)."""
    import spritegen.collapse as C
    import spritegen.gan.monitor as monitor
    from spritegen.evaluate import metrics as M

    for name in ("collapse_score", "collapse_points", "collapse_band", "unique_pixel_fraction", "value_range", "channel_std",
                 "COLLAPSE_RUBRIC", "COLLAPSE_BANDS"):
        assert getattr(M, name) is getattr(C, name), name
    assert monitor.collapse_score is M.collapse_score and monitor.collapse_band is M.collapse_band
    assert C.PIXEL_RUBRIC == {k: M.COLLAPSE_RUBRIC[k] for k in C.PIXEL_INDICATORS}
    # the pixel rubric is the full rubric with the feature-space points at 0: a lower bound of the evaluation's score
    ind = {"value_range_ratio": 0.3, "unique_pixel_ratio": 0.1, "channel_std_ratio": 0.6, "pairwise_distance_ratio": 0.05,
           "coverage": 0.0}
    full, parts = M.collapse_score(ind)
    pixel, _ = C.collapse_score(ind, C.PIXEL_RUBRIC)
    assert pixel == sum(parts[k] for k in C.PIXEL_INDICATORS) == 2 + 2 + 0 and full == pixel + 6
    assert np.isclose(C.indicator_ratio(0.5, 0.0), 0.0) and C.indicator_ratio(1.0, 4.0) == 0.25


# --- a tiny trained run ------------------------------------------------------------------------------------------

import json  # noqa: E402
import shutil  # noqa: E402

import yaml  # noqa: E402

from spritegen.cli import main as cli  # noqa: E402
from spritegen.errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from spritegen.data.synthetic import write_prepared

    root = tmp_path_factory.mktemp("gan")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    write_prepared(root / "data/prepared", n_per_split=(24, 8, 8), resolution=16, seed=0)
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {"threads": 1}}))
    assert cli(["train", "text", "--preset", "tiny"]) == 0
    assert cli(["train", "gan", "--preset", "tiny"]) == 0
    yield root
    mp.undo()


@pytest.mark.slow
def test_the_stage_writes_a_self_describing_bundle(workdir):
    from spritegen.checkpoint import load_config

    d = workdir / "models/gan"
    for f in ("model.safetensors", "config.yaml", "tokenizer", "samples.png", "metrics.json", "history.csv", "curves.png",
              "collapse.json"):
        assert (d / f).exists(), f
    config = load_config(d)
    assert config["family"] == "gan" and config["params"]["gan"]["w_dim"] == 16 and config["run"]["threads"] == 1
    metrics = json.loads((d / "metrics.json").read_text())
    for k in ("train/loss_d", "train/loss_g", "train/acc_real", "train/acc_fake", "train/penalty", "collapse/score",
              "collapse/unique_pixels", "collapse/unique_share", "collapse/out_min", "collapse/out_max", "collapse/d_acc_real",
              "collapse/d_acc_fake", "sched/d_steps", "sched/instance_noise", "critic/phase"):
        assert k in metrics, k
    assert metrics["sched/d_steps"] == 2  # the tiny preset's boundary is epoch 1: the later schedule by the end
    collapse = json.loads((d / "collapse.json").read_text())
    assert collapse["not_scored_in_training"] == ["pairwise_distance_ratio", "coverage"] and collapse["score_max"] == 9
    assert len((d / "history.csv").read_text().splitlines()) == 1 + 2  # a row per epoch
    if metrics["collapse/healthy"]:
        assert (d / "best/model.safetensors").exists()
    assert not list((workdir / "models/.state").glob("*/last.json"))


@pytest.mark.slow
def test_generation_is_deterministic_batch_independent_and_follows_the_prompt(workdir):
    from spritegen.generators import load_generator

    gen = load_generator("gan", workdir / "models/gan", device="cpu")
    prompts = ["a red fire type pokemon", "a blue water pokemon", "a small green grass pokemon"]
    a = gen.generate(prompts, [0, 1, 2])
    assert a.dtype == torch.uint8 and a.shape == (3, 3, 16, 16)
    assert torch.equal(a, gen.generate(prompts[::-1], [2, 1, 0]).flip(0))
    assert torch.equal(load_generator("gan", workdir / "models/gan", device="cpu").generate(prompts[:1], [0])[0], a[0])
    assert not torch.equal(gen.generate(prompts[:1], [5]), a[:1])  # another seed, another sprite
    # the same noise under another prompt: another sprite (the condition reaches the output)
    same_seed = gen.generate(["a red fire type pokemon", "a purple ghost type pokemon"], [3, 3])
    assert (same_seed[0].float() - same_seed[1].float()).abs().mean() > 0.5
    with pytest.raises(UserError, match="empty"):
        gen.generate(["  "], [0])


@pytest.mark.slow
def test_a_checkpoint_of_another_family_is_refused_naming_both(workdir, tmp_path):
    from spritegen.cvae.bundle import load_bundle as load_cvae
    from spritegen.gan.bundle import load_bundle

    other = tmp_path / "cvae_like"
    shutil.copytree(workdir / "models/gan", other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump({**config, "family": "cvae"}))
    with pytest.raises(UserError, match="holds a 'cvae' model, not a 'gan' one"):
        load_bundle(other)
    with pytest.raises(UserError, match="holds a 'gan' model, not a 'cvae' one"):
        load_cvae(workdir / "models/gan")
    # spritegen/conditional.py's other refusals, before any weights are read: other attribute vocabularies
    # (every id would mean another attribute), and a folder with no checkpoint
    shuffled = tmp_path / "other_vocab"
    shutil.copytree(workdir / "models/gan", shuffled)
    vocab = config["attributes"]
    first = next(iter(vocab))
    vocab = {**vocab, first: [vocab[first][0], *reversed(vocab[first][1:])]}
    (shuffled / "config.yaml").write_text(yaml.safe_dump({**config, "attributes": vocab}))
    with pytest.raises(UserError, match="attribute vocabularies differ"):
        load_bundle(shuffled)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no checkpoint.*dvc repro gan"):
        load_bundle(tmp_path / "empty")


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_bytes(workdir, tmp_path, monkeypatch):
    """Uninterrupted vs killed in the middle of epoch 2 and run again by the same command: equal bit for bit
    (weights, history, metrics, collapse report, sample grid)."""
    import spritegen.gan.train as gan_train

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"threads": 1}}))
    base = ["train", "gan", "--preset", "tiny", "--data", str(workdir / "data/prepared"), "--text", str(workdir / "models/text")]
    assert cli(base + ["--out", "a/gan"]) == 0
    real_step, calls = gan_train.guarded_step, {"n": 0}

    def killed_mid_epoch_2(*args, **kwargs):  # 4 guarded steps per epoch (3 D, 1 G): the 6th is in epoch 2
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(gan_train, "guarded_step", killed_mid_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        cli(base + ["--out", "b/gan"])
    assert not (tmp_path / "b/gan/model.safetensors").exists() and (tmp_path / "b/.state/gan/last.json").exists()
    monkeypatch.setattr(gan_train, "guarded_step", real_step)
    assert cli(base + ["--out", "b/gan"]) == 0
    for f in ("model.safetensors", "history.csv", "metrics.json", "collapse.json", "samples.png"):
        assert (tmp_path / "a/gan" / f).read_bytes() == (tmp_path / "b/gan" / f).read_bytes(), f
    # and --stop-after 1, then the same command, too
    assert cli(base + ["--out", "c/gan", "--stop-after", "1"]) == 0
    assert cli(base + ["--out", "c/gan"]) == 0
    assert (tmp_path / "a/gan/model.safetensors").read_bytes() == (tmp_path / "c/gan/model.safetensors").read_bytes()
    # and it equals the fixture's run in another folder: the same params and data, the same bytes
    assert (tmp_path / "a/gan/model.safetensors").read_bytes() == (workdir / "models/gan/model.safetensors").read_bytes()


@pytest.mark.slow
def test_every_option_trains_and_a_persistent_collapse_stops_the_run(workdir, tmp_path, monkeypatch):
    """NCA, critic through all four phases, wgan + wgan-gp, the curriculum and decaying real-only noise in one
    run; then thresholds no generator can meet: the run stops after collapse_patience epochs, with no best/."""
    from spritegen.config import deep_merge
    from spritegen.params import resolved

    monkeypatch.chdir(tmp_path)
    tiny = resolved(None, "tiny")  # the preset written out, so these runs' own values win over it

    def params(gan: dict) -> None:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(deep_merge(tiny, {"train": {"threads": 1}, "gan": gan})))

    every = {"nca": True, "nca_channels": 6, "nca_hidden": 16, "nca_steps": 3, "critic": True, "critic_width": 16,
             "critic_heads": 2, "critic_layers": 1, "critic_isolated_epochs": 1, "critic_isolation_epochs": 1,
             "critic_ramp_epochs": 1, "epochs": 4, "loss": "wgan", "penalty": "wgan-gp", "curriculum": [[0, 4], [2, 8]],
             "instance_noise_decay_epochs": 3, "instance_noise_on": "real", "label_smoothing": 1.0, "mode_seeking": 1.0}
    params(every)
    base = ["train", "gan", "--data", str(workdir / "data/prepared"), "--text", str(workdir / "models/text")]
    assert cli(base + ["--out", "every/gan"]) == 0
    rows = list(__import__("csv").DictReader(open(tmp_path / "every/gan/history.csv")))
    assert [float(r["critic/phase"]) for r in rows] == [1.0, 2.0, 3.0, 4.0]  # isolated, isolation, ramp, integrated
    assert [float(r["sched/resolution"]) for r in rows] == [4.0, 4.0, 8.0, 8.0]
    assert rows[0]["train/g_critic"] == "" and rows[3]["train/g_critic"] != ""  # the critic reaches G only once ramping
    assert 0 <= float(rows[-1]["nca/alive_ratio"]) <= 1
    params({"epochs": 5, "collapse_min_spread": 1000.0, "collapse_patience": 2})  # a spread 1000x the real sprites'
    assert cli(base + ["--out", "stop/gan"]) == 0
    metrics = json.loads((tmp_path / "stop/gan/metrics.json").read_text())
    assert metrics["stopped_on_collapse"] == 1.0 and metrics["epochs"] == 2.0 and metrics["collapse/healthy"] == 0.0
    assert not (tmp_path / "stop/gan/best").exists()  # never healthy: no best
    assert json.loads((tmp_path / "stop/gan/collapse.json").read_text())["last_healthy_epoch"] is None


@pytest.mark.slow
def test_sample_set_and_sample_cli(workdir, monkeypatch, tmp_path):
    monkeypatch.chdir(workdir)
    assert cli(["sample-set", "--family", "gan", "--model", "models/gan", "--preset", "tiny", "--out", str(tmp_path / "s")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "s/prompts.jsonl").read_text().splitlines()]
    assert len(rows) == len(list((tmp_path / "s/images").glob("*.png"))) > 0
    assert cli(["sample", "a red fire pokemon", "--family", "gan", "--n", "2", "--out", str(tmp_path / "g.png"), "--preset", "tiny"]) == 0
    assert (tmp_path / "g.png").exists()
