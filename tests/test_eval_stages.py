"""The evaluation stages end to end on synthetic sprites: evaluator, reference, evaluate (stage and
standalone), report; the metrics JSON schema; clear errors for bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spritegen.cli import main as cli
from spritegen.config import from_dict
from spritegen.data.dataset import load_split
from spritegen.data.synthetic import write_prepared
from spritegen.evaluate.evaluator import EvaluatorConfig, load_evaluator, self_scores, train_clip
from spritegen.evaluate.features import evaluator_backend, perceptual_embedder
from spritegen.evaluate.suite import METRICS, EvaluateConfig, evaluate_images, real_from_prepared
from spritegen.presets import PRESETS

TINY_EVAL = from_dict(EvaluatorConfig, PRESETS["tiny"]["evaluator"])
TINY_SUITE = from_dict(EvaluateConfig, PRESETS["tiny"]["evaluate"])


def _tiny_params(folder: Path) -> str:
    """A params file with the tiny preset's evaluation sections only (other sections take defaults), so
    these tests do not depend on other stages' presets."""
    import yaml

    path = folder / "params_eval_tiny.yaml"
    path.write_text(yaml.safe_dump({k: PRESETS["tiny"][k] for k in ("evaluator", "evaluate")}))
    return str(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A prepared synthetic data set and a tiny evaluator trained on it by the real stage entry point."""
    root = tmp_path_factory.mktemp("eval")
    global PARAMS
    PARAMS = _tiny_params(root)
    write_prepared(root / "data/prepared", n_per_split=(48, 12, 12), resolution=16, seed=0)
    code = cli(["evaluator", "--params", PARAMS, "--data", str(root / "data/prepared"), "--out",
                str(root / "models/evaluator"), "--metrics-file", str(root / "metrics/evaluator.json")])
    assert code == 0
    return root


PARAMS = ""  # set by the workspace fixture


def _write_samples(folder: Path, images: np.ndarray, prompts: list[str], split="test") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, p) in enumerate(zip(images, prompts)):
        name = f"{i:04d}.png"
        Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(folder / name)
        rows.append({"file": name, "prompt": p, "seed": i, "split": split, "record_id": f"r{i}"})
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_presets_and_defaults_validate():
    for name in ("tiny", "ci"):
        from_dict(EvaluatorConfig, PRESETS[name]["evaluator"], "evaluator")
        from_dict(EvaluateConfig, PRESETS[name]["evaluate"], "evaluate")
    EvaluatorConfig().validate()
    from spritegen.config import ConfigError

    with pytest.raises(ConfigError, match="patch_size"):
        from_dict(EvaluatorConfig, {"image_size": 30, "patch_size": 4}, "evaluator")
    with pytest.raises(ConfigError, match="inception_weights"):
        from_dict(EvaluateConfig, {"backend": "inception"}, "evaluate")


def test_evaluator_stage_outputs_and_reload(workspace):
    folder = workspace / "models/evaluator"
    assert {"model.safetensors", "config.yaml", "metrics.json", "confusion.png"} <= {p.name for p in folder.iterdir()}
    scores = json.loads((workspace / "metrics/evaluator.json").read_text())
    for key in ("i2t_r@1", "i2t_r@5", "chance_r@1", "chance_r@5", "zero_shot_colour_acc", "zero_shot_colour_chance",
                "zero_shot_type_acc", "zero_shot_type_chance", "backend_id", "classifier_colour_acc",
                "classifier_colour_balanced_acc", "classifier_type_acc", "classifier_type_balanced_acc",
                "classifier_type_acc_any", "attributes"):
        assert key in scores
    # held-out reports of the classifiers and the zero-shot calls: the confusion rows sum to the class counts
    for attribute in ("type", "colour"):
        for kind in ("classifier", "zero_shot"):
            rep = scores["attributes"][attribute][kind]
            m = np.array(rep["confusion"]["matrix"])
            assert m.sum() == rep["n"] == scores["n_heldout"] == 24
            assert m.sum(1).tolist() == [rep["per_class"][c]["n"] for c in rep["confusion"]["classes"]]
        assert scores[f"classifier_{attribute}_acc"] == scores["attributes"][attribute]["classifier"]["acc"]
    assert scores["chance_r@1"] == pytest.approx(1 / 24)
    ev = load_evaluator(folder)
    assert ev.backend_id == scores["backend_id"] and ev.backend_id.startswith("evaluator-")
    imgs = load_split(workspace / "data/prepared", "val").images
    a, b = ev.encode_images(imgs), load_evaluator(folder).encode_images(imgs)
    assert a.shape == (12, TINY_EVAL.embed_dim) and np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1)
    # the classifiers travel in the same file (so backend_id names them) and reload bit for bit
    calls = ev.classify_attributes(imgs)
    assert calls.keys() == {"type", "colour"} and len(calls["type"]) == 12
    assert all(np.array_equal(calls[k], load_evaluator(folder).classify_attributes(imgs, a)[k]) for k in calls)


def test_evaluator_without_classifiers_is_refused_with_the_retrain_command(workspace, tmp_path):
    """An evaluator trained before the attribute classifiers still loads (its features serve FD/KID), but
    scoring alignment with it stops with the command that retrains it: a metrics file silently missing
    attr_type_acc / attr_colour_acc would not compare with the others."""
    import shutil

    from safetensors.torch import save_file

    from spritegen.checkpoint import load_tensors
    from spritegen.errors import UserError

    old = tmp_path / "old_evaluator"
    shutil.copytree(workspace / "models/evaluator", old)
    tensors = load_tensors(old / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.startswith("attr.")}, str(old / "model.safetensors"))
    ev = load_evaluator(old)
    assert ev.attributes is None
    test = load_split(workspace / "data/prepared", "test")
    assert ev.encode_images(test.images).shape == (12, TINY_EVAL.embed_dim)
    real = real_from_prepared(workspace / "data/prepared", np.random.default_rng(0))
    b = evaluator_backend(ev)
    with pytest.raises(UserError, match=r"no attribute classifiers.*`spritegen evaluator`"):
        evaluate_images(test.images.numpy(), [r.prompts[0] for r in test.records], real, b, b,
                        perceptual_embedder("evaluator", ev), TINY_SUITE, family="toy")


def test_evaluator_training_is_deterministic():
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    prompts = [(f"a {c} pokemon", f"{c}") for c in ["red", "blue"] * 8]
    e1, l1 = train_clip(TINY_EVAL, images, prompts, torch.Generator().manual_seed(3), log=None)
    e2, l2 = train_clip(TINY_EVAL, images, prompts, torch.Generator().manual_seed(3), log=None)
    assert l1 == l2
    assert all(torch.equal(p, q) for p, q in zip(e1.model.state_dict().values(), e2.model.state_dict().values()))
    # the compact vocabulary: unseen words map to UNK, the end-of-text token stays the largest id
    toks = e1.tokenize(["a red pokemon", "a zyzzyva pokemon"])
    assert (toks[1] == 1).any() and not (toks[0] == 1).any()
    assert int(toks[0].max()) == int(e1.id_map.max())


@pytest.mark.slow
def test_evaluator_learns_colour_above_chance(tmp_path):
    """The offline evaluator must be measurably better than chance, or its scores mean nothing."""
    write_prepared(tmp_path, n_per_split=(128, 40, 40), resolution=16, seed=1)
    train, val = load_split(tmp_path, "train"), load_split(tmp_path, "val")
    cfg = from_dict(EvaluatorConfig, {**PRESETS["tiny"]["evaluator"], "epochs": 20, "embed_dim": 32,
                                      "vision_width": 64, "text_width": 64, "lr": 2e-3})
    ev, losses = train_clip(cfg, train.images, [r.prompts for r in train.records], torch.Generator().manual_seed(0), log=None)
    scores = self_scores(ev, val.images, val.records, np.random.default_rng(0))
    assert losses[-1] < losses[0]
    assert scores["zero_shot_colour_acc"] > 3 * scores["zero_shot_colour_chance"]
    assert scores["i2t_r@5"] > 1.5 * scores["chance_r@5"]


@pytest.fixture(scope="module")
def scored(workspace):
    ev = load_evaluator(workspace / "models/evaluator")
    rng = np.random.default_rng(0)
    real = real_from_prepared(workspace / "data/prepared", rng)
    test = load_split(workspace / "data/prepared", "test")
    gen = test.images.numpy()
    prompts = [r.prompts[0] for r in test.records]
    b = evaluator_backend(ev)
    result = evaluate_images(gen, prompts, real, b, b, perceptual_embedder("evaluator", ev), TINY_SUITE, family="toy")
    result["_generated"] = gen  # for checks against the pure functions (removed before JSON checks)
    return result


def test_metrics_json_follows_the_schema(scored):
    scored = {k: v for k, v in scored.items() if k != "_generated"}
    for key in ("family", "backend", "backend_id", "n_generated", "n_reference", "metrics"):
        assert key in scored
    assert scored["backend"] == "evaluator" and scored["n_generated"] == 12 and scored["n_reference"] == 24
    assert scored["perceptual"] == f"evaluator-tokens@{scored['backend_id']}"
    expected = set(METRICS) - {"fd_inf"}
    assert expected <= set(scored["metrics"])
    for name, m in scored["metrics"].items():
        assert m["direction"] in ("lower", "higher"), name
        assert set(m["baselines"]) <= {"mean_image", "noise", "train_copies"}, name
        assert m["ci95"] is None or (len(m["ci95"]) == 2 and m["ci95"][0] <= m["ci95"][1]), name
        assert isinstance(m["value"], float) and np.isfinite(m["value"]), name
        assert "backend_id" in m and "n" in m
    json.dumps(scored, allow_nan=False)  # the file writer refuses NaN


def test_floors_and_baselines_read_as_expected(scored):
    m = scored["metrics"]
    # perfect memorisation: every copy is a near-copy at distance 0
    assert m["near_copy_fraction"]["baselines"]["train_copies"] == 1.0
    assert m["nn_train_distance"]["baselines"]["train_copies"] < 1e-6  # 0 up to Gram-form round-off
    # a constant generator has no spread, and noise is far from the data
    assert m["channel_std"]["baselines"]["mean_image"] == 0.0
    assert m["pairwise_distance_across"]["baselines"]["mean_image"] < 1e-6
    assert m["fd"]["baselines"]["noise"] > m["fd"]["floor"]
    assert m["value_range"]["baselines"]["noise"] > 0.98
    assert m["collapse_score"]["baselines"]["mean_image"] > m["collapse_score"]["floor"]
    # held-out sprites have the colour their prompt names (the labels were measured from pixels)
    assert m["attr_colour_acc_pixels"]["floor"] > 0.9
    assert m["r_precision"]["chance"] == pytest.approx(1 / 10)
    # attribute accuracies carry their prompt-shuffled chance, the lift above it and the real sprites' chance
    for name in ("attr_colour_acc_pixels", "attr_colour_acc_evaluator", "attr_type_acc_evaluator", "attr_colour_acc",
                 "attr_type_acc"):
        a = m[name]
        assert a["lift"]["value"] == pytest.approx(a["value"] - a["chance"]) and 0 < a["lift"]["p_value"] <= 1
        assert a["lift"]["ci95"][0] <= a["lift"]["value"] <= a["lift"]["ci95"][1]
        assert 0 <= a["floor_chance"] <= 1
        assert all(0 <= c["called"] <= 1 and c["lift"] == pytest.approx(c["called"] - c["share"]) for c in a["per_class"].values())
    # these "generated" images are the held-out sprites under their own prompts: colour is followed
    assert m["attr_colour_acc_pixels"]["lift"]["value"] > 0.5
    assert scored["collapse"]["band"] in ("healthy", "warning", "collapsed", "critical")
    # the suite's fast paths equal the pure functions
    from spritegen.evaluate import metrics as M

    gen = scored["_generated"]
    assert m["unique_pixel_fraction"]["value"] == pytest.approx(M.unique_pixel_fraction(gen))
    assert m["channel_std"]["value"] == pytest.approx(M.channel_std(gen))


def test_stage_mode_reference_evaluate_report(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    assert cli(["reference", "--params", PARAMS]) == 0
    ids = [p.name for p in (workspace / "reference").iterdir()]
    assert len(ids) == 1 and ids[0].startswith("evaluator-")
    meta = json.loads((workspace / "reference" / ids[0] / "meta.json").read_text())
    assert meta["n"] == {"train": 48, "val": 12, "test": 12} and meta["fd_train_vs_heldout"] > 0
    test = load_split("data/prepared", "test")
    for fam, imgs in (("good", test.images.numpy()), ("gray", np.full((12, 3, 16, 16), 128, np.uint8))):
        _write_samples(Path("samples") / fam, imgs, [r.prompts[0] for r in test.records])
        assert cli(["evaluate", "--params", PARAMS, "--family", fam]) == 0
    good = json.loads(Path("metrics/good.json").read_text())
    assert good["by_split"]["heldout"]["n"] == 12 and "clip_score" in good["by_split"]["heldout"]
    gray = json.loads(Path("metrics/gray.json").read_text())
    assert good["backend_id"] == ids[0] == gray["backend_id"]
    assert gray["metrics"]["collapse_score"]["value"] > good["metrics"]["collapse_score"]["value"]
    assert gray["metrics"]["fd"]["value"] > good["metrics"]["fd"]["value"]
    # mirrored training images are near-copies too
    train = load_split("data/prepared", "train")
    _write_samples(Path("samples/mirror"), train.images.numpy()[:12, :, :, ::-1], [r.prompts[0] for r in train.records[:12]], "train")
    assert cli(["evaluate", "--params", PARAMS, "--family", "mirror"]) == 0
    mirror = json.loads(Path("metrics/mirror.json").read_text())
    assert mirror["metrics"]["near_copy_fraction"]["value"] == 1.0 and "train" in mirror["by_split"]
    assert Path("plots/evaluate/good/nearest_train.png").exists()
    assert cli(["report", "--params", PARAMS]) == 0
    summary = json.loads(Path("metrics/summary.json").read_text())
    assert set(summary["families"]) == {"good", "gray", "mirror"} and summary["comparable"]
    assert "| fd |" in Path("metrics/summary.md").read_text() and Path("plots/report/summary.png").exists()
    summary_md = Path("metrics/summary.md").read_text()
    assert "| good | attr_colour_acc_pixels |" in summary_md and "- good `attr_type_acc_evaluator`:" in summary_md


def test_stage_mode_is_deterministic(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    test = load_split("data/prepared", "test")
    _write_samples(Path("samples/det"), test.images.numpy(), [r.prompts[1] for r in test.records])
    results = []
    for i in range(2):
        assert cli(["evaluate", "--params", PARAMS, "--family", "det", "--out", f"det{i}.json"]) == 0
        results.append(Path(f"det{i}.json").read_text())
    assert results[0] == results[1]  # byte for byte: nothing run-dependent is in the file
    d = json.loads(results[0])
    assert d["threads"] == TINY_SUITE.threads == 2 and d["deterministic"] is True
    assert not any("seconds" in k for k in d) and "seconds" not in d["evaluator"]
    log = json.loads(Path("logs/evaluate/det.json").read_text())  # the timing went to the run log
    assert log["seconds"] >= 0 and log["threads"] == 2


def test_standalone_scores_any_folder(workspace, tmp_path, capsys):
    test = load_split(workspace / "data/prepared", "test")
    val = load_split(workspace / "data/prepared", "val")
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    _write_samples(gen, test.images.numpy(), [r.prompts[0] for r in test.records])
    _write_samples(ref, np.concatenate([val.images.numpy(), test.images.numpy()]), ["x"] * 24)
    (tmp_path / "prompts.txt").write_text("".join(r.prompts[0] + "\n" for r in test.records))
    out = tmp_path / "m.json"
    args = ["evaluate", "--params", PARAMS, "--generated", str(gen), "--reference", str(ref),
            "--prompts", str(tmp_path / "prompts.txt"), "--evaluator", str(workspace / "models/evaluator"), "--out", str(out)]
    assert cli(args) == 0
    result = json.loads(out.read_text())
    assert result["family"] == "gen" and result["n_generated"] == 12 and "clip_score" in result["metrics"]
    assert "fd" in capsys.readouterr().out  # the console table
    # jsonl prompts keyed by file work too; without prompts the alignment metrics are left out
    args_jsonl = [a if a != str(tmp_path / "prompts.txt") else str(gen / "prompts.jsonl") for a in args]
    assert cli(args_jsonl) == 0
    no_prompts = [a for a in args if a not in ("--prompts", str(tmp_path / "prompts.txt"))]
    assert cli(no_prompts) == 0
    assert "clip_score" not in json.loads(out.read_text())["metrics"]


def test_standalone_bad_folders_give_clear_errors(workspace, tmp_path, capsys):
    ref = tmp_path / "ref"
    _write_samples(ref, load_split(workspace / "data/prepared", "val").images.numpy(), ["x"] * 12)
    base = ["evaluate", "--params", PARAMS, "--reference", str(ref), "--evaluator", str(workspace / "models/evaluator"),
            "--out", str(tmp_path / "m.json")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli([*base, "--generated", str(empty)]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert cli([*base, "--generated", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    bad = tmp_path / "bad"
    _write_samples(bad, load_split(workspace / "data/prepared", "test").images.numpy()[:3], ["a red pokemon"] * 3)
    (bad / "0001.png").write_text("not an image")
    assert cli([*base, "--generated", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unreadable image" in err and "0001.png" in err
    (tmp_path / "two.txt").write_text("a\nb\n")
    good = tmp_path / "good"
    _write_samples(good, load_split(workspace / "data/prepared", "test").images.numpy()[:3], ["a"] * 3)
    assert cli([*base, "--generated", str(good), "--prompts", str(tmp_path / "two.txt")]) == 2
    assert "2 prompts for 3 images" in capsys.readouterr().err
    assert cli(["evaluate", "--params", PARAMS, "--generated", str(good)]) == 2
    assert "--reference" in capsys.readouterr().err
    (tmp_path / "p.jsonl").write_text('{"file": "0000.png", "prompt": "a"}\n')
    assert cli([*base, "--generated", str(good), "--prompts", str(tmp_path / "p.jsonl")]) == 2
    assert "no prompt for" in capsys.readouterr().err
    # a pretrained backend without local weights: a config error naming the key, before any work
    assert cli([*base, "--generated", str(good), "--backend", "inception"]) == 2
    assert "inception_weights" in capsys.readouterr().err


def test_report_normalised_score():
    from spritegen.evaluate.report import normalised

    m = {"value": 5.0, "floor": 1.0, "direction": "lower", "baselines": {"noise": 9.0, "mean_image": 3.0}}
    assert normalised(m) == pytest.approx(0.5)
    m = {"value": 0.5, "floor": 0.9, "direction": "higher", "baselines": {"noise": 0.1}}
    assert normalised(m) == pytest.approx(0.5)
    assert normalised({**m, "baselines": {"noise": 0.89}}) is None  # baseline ≈ floor: uninformative
    assert normalised({**m, "floor": None}) is None


def test_evaluator_device_param(monkeypatch, tmp_path):
    """evaluator.device: auto | cpu | cuda; mps refused naming the param, never picked by auto."""
    from spritegen.config import ConfigError
    from spritegen.errors import UserError
    from spritegen.repro import resolve_device

    assert EvaluatorConfig().device == "auto"
    for bad in ("mps", "mps:0"):
        with pytest.raises(ConfigError, match=r"evaluator\.device: 'mps(:0)?' is not supported"):
            from_dict(EvaluatorConfig, {"device": bad}, "evaluator")
    with pytest.raises(ConfigError, match=r"evaluator\.device: 'tpu' is not one of"):
        from_dict(EvaluatorConfig, {"device": "tpu"}, "evaluator")
    # auto: cuda when there is one, else cpu, even where mps is available
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", "evaluator.device") == torch.device("cpu")
    with pytest.raises(UserError, match=r"evaluator\.device: 'cuda' but CUDA is not available"):
        resolve_device("cuda", "evaluator.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", "evaluator.device") == torch.device("cuda")
    # the stage itself stops before any work, naming the param
    params = tmp_path / "params.yaml"
    params.write_text("evaluator:\n  device: mps\n")
    assert cli(["evaluator", "--params", str(params), "--data", str(tmp_path / "none")]) == 2


def test_evaluator_trains_on_the_given_device_and_returns_to_cpu():
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    prompts = [(f"a {c} pokemon", f"{c}") for c in ["red", "blue"] * 8]
    e1, l1 = train_clip(TINY_EVAL, images, prompts, torch.Generator().manual_seed(3), log=None)
    e2, l2 = train_clip(TINY_EVAL, images, prompts, torch.Generator().manual_seed(3), log=None, device="cpu")
    assert l1 == l2 and all(p.device.type == "cpu" for p in e1.model.parameters())
    if not torch.cuda.is_available():
        pytest.skip("no CUDA here: the cuda path (same batches, weights close to the CPU's) is not run")
    e3, l3 = train_clip(TINY_EVAL, images, prompts, torch.Generator().manual_seed(3), log=None, device="cuda")
    assert all(p.device.type == "cpu" for p in e3.model.parameters())  # scored and saved on the CPU
    assert np.allclose(l1, l3, rtol=1e-3, atol=1e-3)
