"""The conditional VAE family: loss terms against hand-computed values, the β schedules, the condition
gate, bitwise determinism, bad input, and a tiny end-to-end run with kill-and-resume."""

import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from spritegen.cli import main as cli
from spritegen.attributes import ATTRIBUTES, cardinalities
from spritegen.config import from_dict
from spritegen.cvae.bundle import CVAEGenerator, load_bundle
from spritegen.cvae.config import CVAEConfig
from spritegen.cvae.model import CVAE, beta_at, elbo_terms, kl_per_dim, total_loss
from spritegen.data.synthetic import write_prepared
from spritegen.errors import UserError
from spritegen.generators import load_generator

TINY = {"channels": [8, 16], "hidden_dim": 32, "latent_dim": 8, "text_dim": 8, "attr_dim": 4}


class NoPerceptual:
    def __call__(self, a, b):
        return a.new_zeros(())


# --- the loss --------------------------------------------------------------------------------------------


def test_kl_per_dim_is_the_gaussian_kl():
    # KL(N(mu, s^2) || N(0, 1)) = 0.5 (mu^2 + s^2 - 1 - ln s^2)
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    assert torch.allclose(kl_per_dim(mu, logvar), torch.tensor([[0.5, 0.5 * (4 - 1 - math.log(4.0))]]))


def test_loss_terms_against_hand_computed_values():
    x = torch.zeros(2, 3, 2, 2)
    x_hat = torch.full((2, 3, 2, 2), 0.5)
    x_hat[0, 0, 0, 0] = -1.0  # one pixel off by 1
    mu, logvar = torch.ones(2, 4), torch.zeros(2, 4)  # KL 0.5 per dim, 2 per sample
    terms = elbo_terms(x_hat, x, mu, logvar, NoPerceptual())
    n = 24
    assert terms["l1"].item() == pytest.approx((23 * 0.5 + 1.0) / n)
    assert terms["mse"].item() == pytest.approx((23 * 0.25 + 1.0) / n)
    assert terms["kl"].item() == pytest.approx(2.0 / 12)  # summed over dims, per value of one image (3x2x2)
    cfg = from_dict(CVAEConfig, {"l1_weight": 2.0, "mse_weight": 3.0, "perceptual_weight": 5.0, "kl_weight": 8.0})
    terms["perceptual"] = torch.tensor(0.1)
    expected = 2 * terms["l1"] + 3 * terms["mse"] + 5 * 0.1 + 0.25 * 8 * terms["kl"]
    assert total_loss(terms, cfg, beta=0.25).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("schedule,epochs,expected", [
    ("cyclical", [0, 5, 10, 15, 19.999, 20, 25, 45], [0, 0.5, 1, 1, 1, 0, 0.5, 0.5]),
    ("monotonic", [0, 2.5, 5, 10, 100], [0, 0.25, 0.5, 1, 1]),
    ("constant", [0, 7, 300], [1, 1, 1]),
])
def test_beta_schedules(schedule, epochs, expected):
    cfg = from_dict(CVAEConfig, {"kl_schedule": schedule, "kl_cycle_epochs": 20.0, "kl_warmup_epochs": 10.0})
    assert [beta_at(cfg, e) for e in epochs] == pytest.approx(expected)


def test_seed_cycle_matches_seed_004():
    # seed 004: cycle = (epoch - 1) % 50; beta = min(1, cycle / 25) with 1-based epochs
    cfg = from_dict(CVAEConfig, {"kl_cycle_epochs": 50.0})
    for epoch1 in (1, 13, 26, 50, 51, 77):
        assert beta_at(cfg, epoch1 - 1) == pytest.approx(min(1.0, ((epoch1 - 1) % 50) / 25))


# --- the model -------------------------------------------------------------------------------------------


def _model(resolution=16, text_width=12):
    torch.manual_seed(0)
    return CVAE(from_dict(CVAEConfig, TINY), resolution, text_width, cardinalities())


def test_condition_gate_shape_and_range():
    model = _model()
    B, A = 5, len(ATTRIBUTES)
    text = torch.randn(B, 12)
    attrs = torch.randint(0, 2, (B, A))
    c = model.condition(text, attrs)
    assert c.shape == (B, TINY["text_dim"] + TINY["attr_dim"] * A)
    raw = torch.cat([model.text_proj(text), *(emb(attrs[:, i]) for i, emb in enumerate(model.attributes))], 1)
    gate = model.gate(raw)
    assert ((gate > 0) & (gate < 1)).all()
    assert torch.allclose(c, raw * gate) and (c.abs() <= raw.abs()).all()


def test_shapes_through_the_model():
    model = _model()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    c = model.condition(torch.randn(3, 12), torch.zeros(3, len(ATTRIBUTES), dtype=torch.long))
    mu, logvar = model.encode(x, c)
    assert mu.shape == logvar.shape == (3, TINY["latent_dim"])
    x_hat = model.decode(mu, c)
    assert x_hat.shape == x.shape and x_hat.abs().max() <= 1


def test_resolution_must_divide_by_the_downsampling():
    from spritegen.config import ConfigError

    with pytest.raises(ConfigError, match="not divisible"):
        _model(resolution=18)


def test_the_model_learns_a_fixed_batch():
    """On 16 fixed sprites, 150 steps of the full loss take the reconstruction L1 down by at least 3x."""
    from spritegen.data.synthetic import make_sprites
    from spritegen.image_losses import Perceptual

    torch.manual_seed(0)
    images, _ = make_sprites(16, 16, seed=0)
    x = images.float() / 127.5 - 1
    model = _model()
    cfg = model.cfg
    text, attrs = torch.randn(16, 12), torch.zeros(16, len(ATTRIBUTES), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    perceptual = Perceptual("gradient")

    def l1():
        model.eval()
        with torch.no_grad():
            c = model.condition(text, attrs)
            out = (model.decode(model.encode(x, c)[0], c) - x).abs().mean().item()
        model.train()
        return out

    before = l1()
    for step in range(150):
        c = model.condition(text, attrs)
        mu, logvar = model.encode(x, c)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        loss = total_loss(elbo_terms(model.decode(z, c), x, mu, logvar, perceptual), cfg, beta=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert l1() < before / 3


# --- a tiny trained run -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvae")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    write_prepared(root / "data/prepared", n_per_split=(24, 8, 8), resolution=16, seed=0)
    assert cli(["train", "text", "--preset", "tiny"]) == 0
    assert cli(["train", "cvae", "--preset", "tiny"]) == 0
    yield root
    mp.undo()


@pytest.mark.slow
def test_the_stage_writes_a_self_describing_bundle(workdir):
    from spritegen.checkpoint import load_config

    d = workdir / "models/cvae"
    for f in ("model.safetensors", "config.yaml", "tokenizer", "samples.png", "metrics.json", "history.csv", "curves.png",
              "collapse.json", "best/model.safetensors"):
        assert (d / f).exists(), f
    config = load_config(d)
    assert config["family"] == "cvae" and config["perceptual_backend"] in ("lpips", "gradient")
    assert config["params"]["cvae"]["latent_dim"] == 8 and config["run"]["deterministic"]
    import json

    metrics = json.loads((d / "metrics.json").read_text())
    for k in ("train/l1", "train/kl", "train/perceptual", "val/l1", "val/kl", "val/loss", "val/active_units"):
        assert k in metrics, k
    assert len(json.loads((d / "collapse.json").read_text())["kl_per_dim"]) == 8
    history = (d / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2  # a row per epoch
    assert not list((workdir / "models/.state").glob("*/last.json"))


@pytest.mark.slow
def test_generation_is_deterministic_and_batch_independent(workdir):
    gen = load_generator("cvae", workdir / "models/cvae", device="cpu")
    prompts = ["a red fire type pokemon", "a blue water pokemon", "a small green grass pokemon"]
    a = gen.generate(prompts, [0, 1, 2])
    b = gen.generate(prompts[::-1], [2, 1, 0])
    assert a.dtype == torch.uint8 and a.shape == (3, 3, 16, 16)
    assert torch.equal(a, b.flip(0))
    again = load_generator("cvae", workdir / "models/cvae", device="cpu").generate(prompts[:1], [0])
    assert torch.equal(again[0], a[0])  # the same prompt, seed and checkpoint: the same bytes
    assert not torch.equal(gen.generate(prompts[:1], [5]), a[:1])  # another seed, another sprite
    cold = CVAEGenerator.load(workdir / "models/cvae", device="cpu", temperature=0.0)
    assert torch.equal(cold.generate(prompts[:1], [0]), cold.generate(prompts[:1], [7]))  # temperature 0: the prior mean


@pytest.mark.slow
def test_bad_prompts(workdir):
    gen = load_generator("cvae", workdir / "models/cvae", device="cpu")
    out = gen.generate(["zorblax quintessence"], [0])  # no known attribute: all unknown, still a sprite
    assert out.shape == (1, 3, 16, 16)
    with pytest.raises(UserError, match="empty"):
        gen.generate(["   "], [0])


@pytest.mark.slow
def test_a_checkpoint_of_another_family_is_refused_naming_both(workdir, tmp_path):
    from spritegen.ldm.models import load_bundle as load_ldm

    other = tmp_path / "ldm_like"
    shutil.copytree(workdir / "models/cvae", other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump({**config, "family": "ldm"}))
    with pytest.raises(UserError, match="holds a 'ldm' model, not a 'cvae' one"):
        load_bundle(other)
    with pytest.raises(UserError, match="holds a 'cvae' model, not an ldm bundle"):
        load_ldm(workdir / "models/cvae")


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_weights(workdir, tmp_path, monkeypatch):
    """Uninterrupted vs stopped after epoch 1 and continued by the same command: equal bit for bit."""
    from spritegen.checkpoint import load_tensors

    monkeypatch.chdir(tmp_path)
    data, text = str(workdir / "data/prepared"), str(workdir / "models/text")
    base = ["train", "cvae", "--preset", "tiny", "--data", data, "--text", text]
    assert cli(base + ["--out", "a/cvae"]) == 0
    assert cli(base + ["--out", "b/cvae", "--stop-after", "1"]) == 0
    assert not (tmp_path / "b/cvae/model.safetensors").exists()
    assert cli(base + ["--out", "b/cvae"]) == 0
    a, b = load_tensors(tmp_path / "a/cvae/model.safetensors"), load_tensors(tmp_path / "b/cvae/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for f in ("history.csv", "metrics.json", "samples.png"):
        assert (tmp_path / "a/cvae" / f).read_bytes() == (tmp_path / "b/cvae" / f).read_bytes(), f
    # and it equals the fixture's run in another folder: the same params and data, the same bytes
    assert (tmp_path / "a/cvae/model.safetensors").read_bytes() == (workdir / "models/cvae/model.safetensors").read_bytes()


@pytest.mark.slow
def test_balanced_sampling_and_init_from_run(workdir, tmp_path, monkeypatch):
    """balanced: true trains; init_from starts from a trained model (resume_fix) and refuses another architecture."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"cvae": {"balanced": True, "init_from": str(workdir / "models/cvae")}}))
    base = ["train", "cvae", "--preset", "tiny", "--data", str(workdir / "data/prepared"), "--text", str(workdir / "models/text")]
    assert cli(base) == 0
    other = {**TINY, "latent_dim": 4, "epochs": 1, "init_from": str(workdir / "models/cvae")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"cvae": other}))
    assert cli(base[:2] + base[4:] + ["--fresh"]) == 2  # without the tiny preset, whose latent_dim would win


@pytest.mark.slow
def test_sample_set_and_sample_cli(workdir, monkeypatch, tmp_path):
    import json

    monkeypatch.chdir(workdir)
    assert cli(["sample-set", "--family", "cvae", "--model", "models/cvae", "--preset", "tiny", "--out", str(tmp_path / "s")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "s/prompts.jsonl").read_text().splitlines()]
    assert len(rows) == len(list((tmp_path / "s/images").glob("*.png"))) > 0
    assert json.loads((tmp_path / "s/run.json").read_text())["temperature"] == 1.0
    assert cli(["sample", "a red fire pokemon", "--family", "cvae", "--n", "2", "--out", str(tmp_path / "g.png"), "--preset", "tiny"]) == 0
    assert (tmp_path / "g.png").exists()


@pytest.mark.slow
def test_bench_generate_times_one_sprite_and_a_batch_of_8(workdir):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(repo / "benchmarks/bench_generate.py"), "--family", "cvae", "--model",
                          str(workdir / "models/cvae"), "--repeats", "2"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "8"] and all(float(r[1]) > 0 for r in rows)
