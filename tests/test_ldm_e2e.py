"""Tiny end-to-end runs of every LDM stage, the sample CLI, the generator interface, kill-and-resume
equality, the NaN guard inside the loop and the pretrained text-encoder path."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spritegen.checkpoint import load_tensors
from spritegen.cli import main as cli
from spritegen.data.synthetic import write_prepared
from spritegen.errors import UserError
from spritegen.generators import load_generator
from spritegen.params import load_all

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny prepared set and all four stages trained once (text, vae, unet, finetune)."""
    root = tmp_path_factory.mktemp("ldm")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    write_prepared(root / "data/prepared", n_per_split=(24, 8, 8), resolution=16, seed=0)
    assert cli(["train", "text", "--preset", "tiny"]) == 0
    for stage in ("vae", "unet", "finetune"):
        assert cli(["train", "ldm", "--stage", stage, "--preset", "tiny"]) == 0
    yield root
    mp.undo()


def test_every_stage_writes_its_bundle(workdir):
    from spritegen.checkpoint import load_config

    for d in [workdir / "models/text", *(workdir / "models/ldm" / s for s in ("vae", "unet", "finetune"))]:
        assert (d / "model.safetensors").exists() and (d / "config.yaml").exists() and (d / "tokenizer").is_dir()
    ft = load_tensors(workdir / "models/ldm/finetune/model.safetensors")
    assert {k.split(".")[0] for k in ft} >= {"text", "vae", "unet", "unet_ema", "align"}
    for stage in ("vae", "unet", "finetune"):
        d = workdir / "models/ldm" / stage
        for f in ("samples.png", "metrics.json", "history.csv", "curves.png", "best/model.safetensors"):
            assert (d / f).exists(), f
        config = load_config(d)
        # self-describing: the params the stage read (and only those), and the threads / determinism it ran with
        assert config["params"]["train"]["seed"] == 0 and config["run"]["threads"] >= 1 and config["run"]["deterministic"]
        assert ("unet" in config["params"]) == (stage != "vae")
    # the run state lived beside the outputs and is gone once the stage completed
    assert not list((workdir / "models/ldm/.state").glob("*/last.json"))
    assert not any(workdir.glob("**/*.pt")) and not any(workdir.glob("**/*.pkl"))


def test_dry_run_prints_and_trains_nothing(workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["train", "ldm", "--stage", "unet", "--preset", "tiny", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "phases:" in err and "unet:" in err and "train:" in err
    assert not (tmp_path / "models").exists()


def test_missing_previous_stage_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_prepared(tmp_path / "data/prepared", n_per_split=(8, 4, 4), resolution=16)
    assert cli(["train", "ldm", "--stage", "unet", "--preset", "tiny"]) == 2


def test_sample_cli_same_arguments_same_pixels(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    args = ["sample", "a red fire type pokemon", "--preset", "tiny", "--n", "3", "--seed", "5", "--steps", "4"]
    for sampler in ("ddpm", "ddim", "dpm++", "dpm++sde", "unipc"):
        assert cli(args + ["--sampler", sampler, "--out", f"a_{sampler}.png"]) == 0
        assert cli(args + ["--sampler", sampler, "--out", f"b_{sampler}.png"]) == 0
        a, b = np.asarray(Image.open(f"a_{sampler}.png")), np.asarray(Image.open(f"b_{sampler}.png"))
        assert a.shape[0] > 16 and np.array_equal(a, b)


def test_sample_cli_several_prompts_one_row_each(workdir, monkeypatch):
    """Two prompts x 3 seeds: a 2-row grid whose second row is that prompt's own single-prompt grid."""
    monkeypatch.chdir(workdir)
    common = ["--preset", "tiny", "--n", "3", "--seed", "5", "--steps", "4", "--sampler", "ddim"]
    assert cli(["sample", "a red fire type pokemon", "a blue water type pokemon", *common, "--out", "two.png"]) == 0
    assert cli(["sample", "a blue water type pokemon", *common, "--out", "blue.png"]) == 0
    two, blue = np.asarray(Image.open("two.png")).astype(int), np.asarray(Image.open("blue.png")).astype(int)
    assert two.shape[1] == blue.shape[1] and two.shape[0] > blue.shape[0] * 1.8  # 2 rows, 3 columns each
    row2 = two[two.shape[0] - blue.shape[0]:]
    assert np.abs(row2 - blue).max() <= 1  # batch composition changes float summation order only
    assert cli(["sample", "a red fire type pokemon", "  ", *common]) == 2  # an empty prompt is refused


def test_generator_is_batch_independent(workdir):
    gen = load_generator("ldm", workdir / "models/ldm", device="cpu", sampler="ddpm", steps=4, guidance=3.0)
    assert gen.family == "ldm" and gen.resolution == 16
    prompts = ["a red fire type pokemon", "a blue water type pokemon", "a green grass type pokemon"]
    batch = gen.generate(prompts, [0, 1, 2])
    assert batch.dtype == torch.uint8 and batch.shape == (3, 3, 16, 16)
    alone = gen.generate([prompts[1]], [1])
    assert (alone[0].int() - batch[1].int()).abs().max() <= 1
    assert not torch.equal(batch[0], batch[2])
    with pytest.raises(UserError):
        load_generator("nope", workdir / "models/ldm")


def test_sample_set_reconstruct_writes_the_vae_ceiling(workdir, monkeypatch):
    """--reconstruct: the prompted sprites themselves through the VAE, under the sample set's own
    prompts (same files, same order), so `spritegen evaluate --family ldm_vae` scores the decoder's ceiling."""
    import json

    from spritegen.ldm.models import load_bundle
    from spritegen.sample_set import reconstruct_images, sprites_by_id

    monkeypatch.chdir(workdir)
    assert cli(["sample-set", "--family", "ldm", "--preset", "tiny"]) == 0
    assert cli(["sample-set", "--family", "ldm", "--preset", "tiny", "--reconstruct", "--model", "models/ldm/vae"]) == 0
    rows = [json.loads(x) for x in (workdir / "samples/ldm_vae/prompts.jsonl").read_text().splitlines()]
    sampled = [json.loads(x) for x in (workdir / "samples/ldm/prompts.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["record_id"]) for r in rows] == [(r["prompt"], r["record_id"]) for r in sampled]
    real = sprites_by_id(Path("data/prepared"))
    first = np.asarray(Image.open(workdir / "samples/ldm_vae" / rows[0]["file"])).transpose(2, 0, 1)
    expect = reconstruct_images(load_bundle("models/ldm/vae"), real[rows[0]["record_id"]][None], [rows[0]["prompt"]])[0]
    assert np.abs(first.astype(int) - expect.numpy().astype(int)).max() <= 1  # that very sprite's reconstruction
    assert np.abs(first.astype(int) - real[rows[0]["record_id"]].numpy().astype(int)).max() > 1  # not the sprite copied
    assert cli(["sample-set", "--family", "ldm", "--preset", "tiny", "--reconstruct", "--model", "models/text"]) == 2


def _tensors(path):
    return load_tensors(path)


def _copy_upstream(workdir: Path, dst: Path, stages=("vae",)) -> None:
    shutil.copytree(workdir / "models/text", dst / "models/text")
    for stage in stages:
        shutil.copytree(workdir / "models/ldm" / stage, dst / "models/ldm" / stage)


def test_kill_and_resume_gives_the_same_weights(workdir, tmp_path, monkeypatch):
    """unet stage (2 epochs): uninterrupted vs stopped after 1 epoch and continued by the same command.
    Weights, EMA, the loss history and the sample grid are equal, bit for bit."""
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        _copy_upstream(workdir, tmp_path / name)
    data = str(workdir / "data/prepared")
    base = ["train", "ldm", "--stage", "unet", "--preset", "tiny", "--data", data]
    assert cli(base + ["--out", "a/models/ldm", "--text", "a/models/text"]) == 0
    assert cli(base + ["--out", "b/models/ldm", "--text", "b/models/text", "--stop-after", "1"]) == 0
    assert not (tmp_path / "b/models/ldm/unet/model.safetensors").exists()  # stopped: no final bundle yet
    assert '"epoch": 1' in (tmp_path / "b/models/ldm/.state/unet/last-000000/state.json").read_text()
    assert cli(base + ["--out", "b/models/ldm", "--text", "b/models/text"]) == 0  # the same command continues
    a = _tensors(tmp_path / "a/models/ldm/unet/model.safetensors")
    b = _tensors(tmp_path / "b/models/ldm/unet/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for f in ("history.csv", "metrics.json", "samples.png"):
        assert (tmp_path / "a/models/ldm/unet" / f).read_bytes() == (tmp_path / "b/models/ldm/unet" / f).read_bytes(), f


def test_resume_refuses_changed_params_unless_allowed(workdir, tmp_path, monkeypatch, capsys):
    """An interrupted run is continued automatically only under the same params; --resume continues it
    under changed params only with --allow-param-changes, and names every changed key either way."""
    import yaml

    monkeypatch.chdir(tmp_path)
    _copy_upstream(workdir, tmp_path)
    data = str(workdir / "data/prepared")
    base = ["train", "ldm", "--stage", "unet", "--preset", "tiny", "--data", data]
    assert cli(base + ["--stop-after", "1"]) == 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"unet": {"lr": 5e-4, "ema_decay": 0.9}}))
    capsys.readouterr()
    assert cli(base + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "unet.lr: checkpoint 0.001 -> params.yaml 0.0005" in err and "unet.ema_decay" in err
    assert cli(base + ["--resume", "--allow-param-changes"]) == 0
    err = capsys.readouterr().err
    assert "continuing with these params changed" in err and "resuming unet at epoch 1" in err
    # the bundle records the params the run ended with: params.yaml won
    from spritegen.checkpoint import load_config

    assert load_config(tmp_path / "models/ldm/unet")["params"]["unet"]["lr"] == 5e-4


def test_a_changed_param_starts_fresh(workdir, tmp_path, monkeypatch, capsys):
    """Without --resume, the state of a run under other params is discarded (never silently continued)."""
    import yaml

    monkeypatch.chdir(tmp_path)
    _copy_upstream(workdir, tmp_path)
    base = ["train", "ldm", "--stage", "unet", "--preset", "tiny", "--data", str(workdir / "data/prepared")]
    assert cli(base + ["--stop-after", "1"]) == 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"unet": {"lr": 5e-4}}))
    capsys.readouterr()
    assert cli(base) == 0
    err = capsys.readouterr().err
    assert "discarding the state of an interrupted run" in err and "resuming" not in err


def test_params_win_over_the_bundle_and_architecture_must_match(workdir, tmp_path, monkeypatch, capsys):
    """The finetune stage trains under today's params (not the U-Net bundle's saved ones); a params
    architecture that differs from the bundle's weights is refused, naming the key."""
    import dataclasses

    import yaml

    from spritegen.ldm.models import load_bundle

    cfgs = load_all(None, "tiny")
    ldm = load_bundle(workdir / "models/ldm/unet")
    cfgs["unet"].ema_decay = 0.5
    ldm.adopt(cfgs["vae"], cfgs["unet"], workdir / "models/ldm/unet")
    assert ldm.unet_cfg.ema_decay == 0.5
    wider = dataclasses.replace(cfgs["unet"], block_out_channels=[32, 64])
    with pytest.raises(UserError, match=r"unet.block_out_channels is \[32, 64\] in the params but .* trained with \[16, 32\]"):
        ldm.adopt(cfgs["vae"], wider, workdir / "models/ldm/unet")
    monkeypatch.chdir(tmp_path)
    _copy_upstream(workdir, tmp_path, ("vae", "unet"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"vae": {"latent_channels": 3}}))
    assert cli(["train", "ldm", "--stage", "finetune", "--preset", "tiny", "--data", str(workdir / "data/prepared")]) == 2
    assert "vae.latent_channels is 3 in the params" in capsys.readouterr().err


def test_two_processes_train_like_one(workdir, tmp_path, monkeypatch):
    """Data parallel through the real entry point: ``torchrun --nproc_per_node 2 -m spritegen train ldm
    --stage unet`` on the CPU (gloo) ends with the single-process weights up to float summation order.
    It holds exactly in the unet stage: its only term (diffusion) is a per-sample mean, the U-Net's
    norms are group norms (per sample), every random draw is made for the global batch before each rank
    takes its share, and the gradient is the share-weighted sum of the ranks' gradients. 21 images in
    batches of 8: the last batch of 5 splits 3 + 2, so the weighting is checked too. (It would not hold
    for terms over the batch - the contrastive ``align`` term's in-batch negatives, the KL's free bits -
    or with dropout, nor for parameters whose true gradient is 0, such as attention key biases, where
    AdamW amplifies rounding noise; the unet stage has none of them.) The loop also checks after every
    epoch that both ranks hold identical weights, and only rank 0 prints (and writes)."""
    import os
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    write_prepared(tmp_path / "data21", n_per_split=(21, 8, 8), resolution=16, seed=0)
    for name in ("one", "two"):
        shutil.copytree(workdir / "models/ldm/vae", tmp_path / name / "vae")
    base = ["train", "ldm", "--stage", "unet", "--preset", "tiny", "--data", "data21", "--text", str(workdir / "models/text")]
    assert cli(base + ["--out", "one"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", SPRITEGEN_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "spritegen", *base, "--out", "two"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("ldm unet epoch 2 ") == 1  # rank 0 only
    one, two = _tensors(tmp_path / "one/unet/model.safetensors"), _tensors(tmp_path / "two/unet/model.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        if k.startswith(("text.", "vae.")) or not one[k].is_floating_point():  # frozen, or the EMA's step count
            assert torch.equal(one[k], two[k]), k
        else:
            assert torch.allclose(one[k], two[k], rtol=0, atol=1e-5), (k, float((one[k] - two[k]).abs().max()))
    assert (tmp_path / "two/unet/metrics.json").exists() and not (tmp_path / "two/.state/unet/last.json").exists()


def test_nan_batches_are_skipped_and_counted(workdir, tmp_path, monkeypatch):
    """Every second step's loss is NaN: those steps are skipped on the device (weights, moments and EMA
    untouched), counted, and kept out of the logged means; the stage completes."""
    import spritegen.ldm.train as train_mod

    monkeypatch.chdir(tmp_path)
    _copy_upstream(workdir, tmp_path)
    real = train_mod.diffusion_loss
    calls = {"n": 0}

    def sometimes_nan(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] % 2 == 0 else loss

    monkeypatch.setattr(train_mod, "diffusion_loss", sometimes_nan)
    cfgs = load_all(None, "tiny")
    metrics = train_mod.train_stage("unet", cfgs, workdir / "data/prepared", tmp_path / "models/ldm", progress=False)
    assert metrics["guard/nan_loss"] >= 1 and metrics["guard/skipped"] == metrics["guard/nan_loss"]
    assert metrics["train/loss"] == metrics["train/loss"]  # finite: skipped steps are not averaged in
    weights = _tensors(tmp_path / "models/ldm/unet/model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_a_run_of_nan_stops_training_and_keeps_the_last_good_checkpoint(workdir, tmp_path, monkeypatch):
    import spritegen.ldm.train as train_mod
    from spritegen.train.guards import TrainingDiverged
    from spritegen.train.state import current

    monkeypatch.chdir(tmp_path)
    _copy_upstream(workdir, tmp_path)
    cfgs = load_all(None, "tiny")
    # one good epoch first: the run state holds a good checkpoint
    train_mod.train_stage("unet", cfgs, workdir / "data/prepared", tmp_path / "models/ldm", stop_after=1, progress=False)
    state = tmp_path / "models/ldm/.state/unet"
    good = _tensors(current(state, "last") / "model.safetensors")
    real = train_mod.diffusion_loss
    monkeypatch.setattr(train_mod, "diffusion_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    cfgs["train"].max_bad_steps = 2
    with pytest.raises(TrainingDiverged, match="consecutive bad steps"):
        train_mod.train_stage("unet", cfgs, workdir / "data/prepared", tmp_path / "models/ldm", resume=True,
                              allow_param_changes=True, progress=False)
    after = _tensors(current(state, "last") / "model.safetensors")
    assert all(torch.equal(good[k], after[k]) for k in good)
    assert not (tmp_path / "models/ldm/unet").exists()  # no output from a diverged run


def test_pretrained_text_encoder_from_a_local_folder(tmp_path, monkeypatch):
    """text.pretrained: a save_pretrained folder (BertModel + tokenizer) is loaded with local_files_only."""
    from transformers import BertConfig, BertModel

    from spritegen.text.encoder import TextConfig, load_text_encoder
    from spritegen.text.train import train_text_stage, train_tokenizer
    from spritegen.train.config import RunConfig
    from spritegen.train.runtime import start

    monkeypatch.chdir(tmp_path)
    prompts = ["a red fire type pokemon", "a blue water type pokemon", "green grass"]
    tok = train_tokenizer(prompts, 100, 16)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    model.save_pretrained(tmp_path / "bert-tiny")
    tok.save_pretrained(tmp_path / "bert-tiny")
    cfg = TextConfig(pretrained=str(tmp_path / "bert-tiny"), max_length=16)
    rt = start(RunConfig(device="cpu"))
    train_text_stage(cfg, rt, prompts, [], tmp_path / "out", {})
    enc = load_text_encoder(tmp_path / "out")
    hidden, mask = enc(["a red fire type pokemon"])
    assert hidden.shape == (1, 16, 32) and int(mask.sum()) > 2
    ref = model.eval()(**enc.tokenize(["a red fire type pokemon"])).last_hidden_state
    assert torch.allclose(hidden, ref, atol=1e-5)
    with pytest.raises(UserError, match="not a local folder"):
        train_text_stage(TextConfig(pretrained=str(tmp_path / "missing")), rt, prompts, [], tmp_path / "out2", {})


@pytest.mark.parametrize("strategy", ["progressive", "cyclical", "curriculum", "adversarial"])
def test_seed_000_strategies_run_end_to_end(strategy, workdir, tmp_path, monkeypatch):
    """Every named schedule through the vae, unet and finetune stages (warm restarts, joint phases with
    the VAE training in finetune, curriculum pools, the discriminator)."""
    import yaml

    monkeypatch.chdir(tmp_path)
    shutil.copytree(workdir / "models/text", tmp_path / "models/text")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ldm": {"strategy": strategy}}))
    for stage in ("vae", "unet", "finetune"):
        assert cli(["train", "ldm", "--stage", stage, "--preset", "tiny", "--data", str(workdir / "data/prepared")]) == 0
    gen = load_generator("ldm", tmp_path / "models/ldm", device="cpu", sampler="dpm++", steps=3)
    assert gen.generate(["a red fire type pokemon"], [0]).shape == (1, 3, 16, 16)


# --- vae.text_conditioned_decoder: the seeds' text-conditioned decoder (an option) -------------------


@pytest.fixture(scope="module")
def tc_workdir(workdir, tmp_path_factory):
    """vae -> unet -> finetune with vae.text_conditioned_decoder: true (text stage reused from workdir)."""
    import yaml

    root = tmp_path_factory.mktemp("ldm_tc")
    shutil.copytree(workdir / "models/text", root / "models/text")
    (root / "params.yaml").write_text(yaml.safe_dump({"vae": {"text_conditioned_decoder": True}}))
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        for stage in ("vae", "unet", "finetune"):
            assert cli(["train", "ldm", "--stage", stage, "--preset", "tiny", "--data", str(workdir / "data/prepared")]) == 0
    finally:
        mp.undo()  # back to the previous folder: this params.yaml (option on) must not leak into other tests
    return root


def test_text_conditioned_decoder_trains_and_reads_the_text(tc_workdir):
    from spritegen.checkpoint import load_config
    from spritegen.ldm.models import load_bundle
    from spritegen.ldm.vae import TextConditionedVAE, decode

    for stage in ("vae", "unet", "finetune"):
        d = tc_workdir / "models/ldm" / stage
        assert load_config(d)["vae"]["text_conditioned_decoder"] is True
        assert any(k.startswith("vae.text_attn.") for k in _tensors(d / "model.safetensors"))
    ldm = load_bundle(tc_workdir / "models/ldm/finetune")
    assert isinstance(ldm.vae, TextConditionedVAE)
    # the zero-initialised output projection moved during the vae stage
    assert ldm.vae.text_attn.to_out[0].weight.abs().max() > 0
    ldm.vae.eval()
    ldm.text.eval()
    z = torch.randn((2, *ldm.latent_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = decode(ldm.vae, z, *ldm.text(["a red fire type pokemon"] * 2))
        b = decode(ldm.vae, z, *ldm.text(["a blue water type pokemon"] * 2))
        assert (a - b).abs().max() > 0  # same latent, different prompts: different images
        torch.nn.init.normal_(ldm.vae.text_attn.to_out[0].weight, std=0.5)  # clearly so once the layer is strong
        a = decode(ldm.vae, z, *ldm.text(["a red fire type pokemon"] * 2))
        b = decode(ldm.vae, z, *ldm.text(["a blue water type pokemon"] * 2))
        assert (a - b).abs().max() > 1e-2
        with pytest.raises(ValueError, match="text_conditioned_decoder"):
            decode(ldm.vae, z)  # never a silent unconditional decode
    gen = load_generator("ldm", tc_workdir / "models/ldm", device="cpu", sampler="ddim", steps=3)
    out = gen.generate(["a red fire type pokemon", "a blue water type pokemon"], [0, 0])
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.uint8


def test_decoder_option_off_keeps_the_plain_autoencoder(workdir):
    from diffusers import AutoencoderKL

    from spritegen.checkpoint import load_config
    from spritegen.ldm.models import load_bundle

    for stage in ("vae", "finetune"):
        d = workdir / "models/ldm" / stage
        assert load_config(d)["vae"]["text_conditioned_decoder"] is False
        assert not any("text_attn" in k for k in _tensors(d / "model.safetensors"))
    assert type(load_bundle(workdir / "models/ldm/finetune").vae) is AutoencoderKL


def test_decoder_option_mismatch_is_a_clear_error(workdir, tc_workdir, tmp_path, monkeypatch):
    import dataclasses

    import yaml

    from spritegen.ldm.models import load_bundle

    cfgs = load_all(None, "tiny")
    off = dataclasses.replace(cfgs["vae"], text_conditioned_decoder=False)  # (the cwd's params.yaml may say either)
    on = dataclasses.replace(cfgs["vae"], text_conditioned_decoder=True)
    with pytest.raises(UserError, match="text_conditioned_decoder"):
        load_bundle(tc_workdir / "models/ldm/vae").adopt(off, cfgs["unet"], tc_workdir / "models/ldm/vae")
    with pytest.raises(UserError, match="text_conditioned_decoder"):
        load_bundle(workdir / "models/ldm/vae").adopt(on, cfgs["unet"], workdir / "models/ldm/vae")
    # the next stage under params without the option: exit 2 with the message, nothing trained
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tc_workdir / "models/text", tmp_path / "models/text")
    shutil.copytree(tc_workdir / "models/ldm/vae", tmp_path / "models/ldm/vae")
    assert cli(["train", "ldm", "--stage", "unet", "--preset", "tiny", "--data", str(workdir / "data/prepared")]) == 2
    assert not (tmp_path / "models/ldm/unet/model.safetensors").exists()
    # weights that disagree with the bundle's own config.yaml
    cfg_path = tmp_path / "models/ldm/vae/config.yaml"
    meta = yaml.safe_load(cfg_path.read_text())
    meta["vae"]["text_conditioned_decoder"] = False
    cfg_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    with pytest.raises(UserError, match="text_conditioned_decoder is false in config.yaml but the weights hold"):
        load_bundle(tmp_path / "models/ldm/vae")
