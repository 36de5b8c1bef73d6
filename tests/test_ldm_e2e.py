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
    for stage in ("text", "vae", "unet", "finetune"):
        assert cli(["train", "ldm", "--stage", stage, "--preset", "tiny"]) == 0
    yield root
    mp.undo()


def test_every_stage_writes_its_bundle(workdir):
    for stage in ("text", "vae", "unet", "finetune"):
        d = workdir / "models/ldm" / stage
        assert (d / "model.safetensors").exists() and (d / "config.yaml").exists() and (d / "tokenizer").is_dir()
    ft = load_tensors(workdir / "models/ldm/finetune/model.safetensors")
    assert {k.split(".")[0] for k in ft} >= {"text", "vae", "unet", "unet_ema", "align"}
    for stage in ("vae", "unet", "finetune"):
        assert (workdir / "models/ldm" / stage / "samples.png").exists()
        assert (workdir / "models/ldm" / stage / "last" / "state.safetensors").exists()
        assert (workdir / "models/ldm" / stage / "best" / "model.safetensors").exists()
        assert (workdir / "models/ldm" / stage / "metrics.json").exists()
    assert not any(workdir.glob("**/*.pt")) and not any(workdir.glob("**/*.pkl"))


def test_dry_run_prints_and_trains_nothing(workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["train", "ldm", "--stage", "unet", "--preset", "tiny", "--dry-run"]) == 0
    assert "phases:" in capsys.readouterr().err
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
    assert cli(["sample-set", "--family", "ldm", "--preset", "tiny", "--reconstruct", "--model", "models/ldm/text"]) == 2


def _tensors(path):
    return load_tensors(path)


def test_kill_and_resume_gives_the_same_weights(workdir, tmp_path, monkeypatch):
    """unet stage (2 epochs): uninterrupted vs stopped after 1 epoch and resumed."""
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        (tmp_path / name / "models/ldm").mkdir(parents=True)
        for stage in ("text", "vae"):
            shutil.copytree(workdir / "models/ldm" / stage, tmp_path / name / "models/ldm" / stage)
    data = str(workdir / "data/prepared")
    base = ["train", "ldm", "--stage", "unet", "--preset", "tiny", "--data", data]
    assert cli(base + ["--out", "a/models/ldm"]) == 0
    assert cli(base + ["--out", "b/models/ldm", "--stop-after", "1"]) == 0
    assert not (tmp_path / "b/models/ldm/unet/model.safetensors").exists()  # stopped: no final bundle yet
    assert '"epoch": 2' in (tmp_path / "b/models/ldm/unet/last/state.json").read_text()  # unet phase is [1, 3)
    assert cli(base + ["--out", "b/models/ldm", "--resume"]) == 0
    a = _tensors(tmp_path / "a/models/ldm/unet/model.safetensors")
    b = _tensors(tmp_path / "b/models/ldm/unet/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


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
        for stage in ("text", "vae"):
            shutil.copytree(workdir / "models/ldm" / stage, tmp_path / name / stage)
    base = ["train", "ldm", "--stage", "unet", "--preset", "tiny", "--data", "data21"]
    assert cli(base + ["--out", "one"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", SPRITEGEN_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "spritegen", *base, "--out", "two"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("unet epoch 3/3") == 1  # rank 0 only
    one, two = _tensors(tmp_path / "one/unet/model.safetensors"), _tensors(tmp_path / "two/unet/model.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        if k.startswith(("text.", "vae.")) or not one[k].is_floating_point():  # frozen, or the EMA's step count
            assert torch.equal(one[k], two[k]), k
        else:
            assert torch.allclose(one[k], two[k], rtol=0, atol=1e-5), (k, float((one[k] - two[k]).abs().max()))
    assert (tmp_path / "two/unet/last/state.safetensors").exists() and (tmp_path / "two/unet/metrics.json").exists()


def test_nan_batches_are_skipped_and_counted(workdir, tmp_path, monkeypatch):
    import spritegen.ldm.train as train_mod

    monkeypatch.chdir(tmp_path)
    shutil.copytree(workdir / "models/ldm/text", tmp_path / "m/text")
    shutil.copytree(workdir / "models/ldm/vae", tmp_path / "m/vae")
    real = train_mod.diffusion_loss
    calls = {"n": 0}

    def sometimes_nan(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] % 2 == 0 else loss

    monkeypatch.setattr(train_mod, "diffusion_loss", sometimes_nan)
    cfgs = load_all(None, "tiny")
    metrics = train_mod.train_stage("unet", cfgs["vae"], cfgs["unet"], cfgs["ldm"], workdir / "data/prepared",
                                    tmp_path / "m", progress=False)
    assert metrics["guard/nan_loss"] >= 1 and metrics["guard/skipped"] == metrics["guard/nan_loss"]
    assert (tmp_path / "m/unet/model.safetensors").exists()


def test_a_run_of_nan_stops_training_and_keeps_the_last_good_checkpoint(workdir, tmp_path, monkeypatch):
    import spritegen.ldm.train as train_mod
    from spritegen.ldm.guards import TrainingDiverged

    monkeypatch.chdir(tmp_path)
    shutil.copytree(workdir / "models/ldm/text", tmp_path / "m/text")
    shutil.copytree(workdir / "models/ldm/vae", tmp_path / "m/vae")
    cfgs = load_all(None, "tiny")
    # one good epoch first: last/ holds a good checkpoint
    train_mod.train_stage("unet", cfgs["vae"], cfgs["unet"], cfgs["ldm"], workdir / "data/prepared", tmp_path / "m",
                          stop_after=1, progress=False)
    good = _tensors(tmp_path / "m/unet/last/model.safetensors")
    real = train_mod.diffusion_loss
    monkeypatch.setattr(train_mod, "diffusion_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    cfgs["ldm"].max_bad_steps = 2
    with pytest.raises(TrainingDiverged, match="consecutive bad steps"):
        train_mod.train_stage("unet", cfgs["vae"], cfgs["unet"], cfgs["ldm"], workdir / "data/prepared", tmp_path / "m",
                              resume=True, progress=False)
    after = _tensors(tmp_path / "m/unet/last/model.safetensors")
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_pretrained_text_encoder_from_a_local_folder(tmp_path, monkeypatch):
    """text.pretrained: a save_pretrained folder (BertModel + tokenizer) is loaded with local_files_only."""
    from transformers import BertConfig, BertModel

    from spritegen.text.encoder import TextConfig, load_text_encoder, train_text_stage, train_tokenizer

    monkeypatch.chdir(tmp_path)
    prompts = ["a red fire type pokemon", "a blue water type pokemon", "green grass"]
    tok = train_tokenizer(prompts, 100, 16)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    model.save_pretrained(tmp_path / "bert-tiny")
    tok.save_pretrained(tmp_path / "bert-tiny")
    cfg = TextConfig(pretrained=str(tmp_path / "bert-tiny"), max_length=16)
    train_text_stage(cfg, prompts, [], tmp_path / "out")
    enc = load_text_encoder(tmp_path / "out")
    hidden, mask = enc(["a red fire type pokemon"])
    assert hidden.shape == (1, 16, 32) and int(mask.sum()) > 2
    ref = model.eval()(**enc.tokenize(["a red fire type pokemon"])).last_hidden_state
    assert torch.allclose(hidden, ref, atol=1e-5)
    with pytest.raises(UserError, match="not a local folder"):
        train_text_stage(TextConfig(pretrained=str(tmp_path / "missing")), prompts, [], tmp_path / "out2")


@pytest.mark.parametrize("strategy", ["progressive", "cyclical", "curriculum", "adversarial"])
def test_seed_000_strategies_run_end_to_end(strategy, workdir, tmp_path, monkeypatch):
    """Every named schedule through the vae, unet and finetune stages (warm restarts, joint phases with
    the VAE training in finetune, curriculum pools, the discriminator)."""
    import yaml

    monkeypatch.chdir(tmp_path)
    shutil.copytree(workdir / "models/ldm/text", tmp_path / "models/ldm/text")
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
    shutil.copytree(workdir / "models/ldm/text", root / "models/ldm/text")
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
        load_bundle(tc_workdir / "models/ldm/vae", off, cfgs["unet"])
    with pytest.raises(UserError, match="text_conditioned_decoder"):
        load_bundle(workdir / "models/ldm/vae", on, cfgs["unet"])
    # the next stage under params without the option: exit 2 with the message, nothing trained
    monkeypatch.chdir(tmp_path)
    for stage in ("text", "vae"):
        shutil.copytree(tc_workdir / "models/ldm" / stage, tmp_path / "models/ldm" / stage)
    assert cli(["train", "ldm", "--stage", "unet", "--preset", "tiny", "--data", str(workdir / "data/prepared")]) == 2
    assert not (tmp_path / "models/ldm/unet/model.safetensors").exists()
    # weights that disagree with the bundle's own config.yaml
    cfg_path = tmp_path / "models/ldm/vae/config.yaml"
    meta = yaml.safe_load(cfg_path.read_text())
    meta["vae"]["text_conditioned_decoder"] = False
    cfg_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    with pytest.raises(UserError, match="text_attn"):
        load_bundle(tmp_path / "models/ldm/vae")
