"""Named presets (spritegen/presets/): files, composition, conflicts, every shipped preset valid, and
``spritegen preset list | show | apply [--exp]``."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from spritegen import presets
from spritegen.cli import main as cli_main
from spritegen.config import ConfigError, deep_merge, read_yaml
from spritegen.params import SECTIONS, resolved, validate_sections
from spritegen.preset_cli import flow
from spritegen.presets import PRESET_DIR, PRESET_FILES, PRESETS, flatten, load_presets, resolve

REPO = Path(__file__).resolve().parents[1]

# The profiles as they were in spritegen/presets.py before presets became files: folding them in must
# not change what `--preset ci` (the quality gate), `--preset gpu` or `--preset tiny` (tests) set. The gpu
# profile's switches changed once, deliberately, after its one measurement on a GPU (docs/ldm.md).
CI = {
    "metadata": {"limit": 320},
    "text": {"mlm_epochs": 3, "hidden_size": 128, "num_layers": 2, "num_heads": 4},
    "ldm": {"stage_epochs": {"vae": 60, "unet": 80, "finetune": 1}},
    "sample": {"n_heldout_prompts": 32, "n_train_prompts": 16, "seeds_per_prompt": 2},
    "evaluator": {"epochs": 15, "threads": 1},
    "evaluate": {"bootstrap": 50, "threads": 1},
}
GPU = {
    "train": {"precision": "fp32", "tf32": False, "channels_last": False},
    "text": {"mlm_batch_size": 256, "mlm_lr": 1.0e-3},
    "vae": {"batch_size": 128, "lr": 6.0e-3},
    "unet": {"batch_size": 256, "lr": 3.0e-3},
    "ldm": {"stage_epochs": {"vae": 300, "unet": 400, "finetune": 4}},
    "sample": {"batch_size": 256},
    "evaluator": {"batch_size": 128, "lr": 1.4e-3, "epochs": 24},
}
TINY = {
    "metadata": {"limit": 48, "prompts_per_sprite": 5},
    "prepare": {"resolution": 16},
    "text": {"vocab_size": 200, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_length": 16, "mlm_epochs": 1},
    "vae": {"block_out_channels": [8, 8, 8], "norm_num_groups": 4, "batch_size": 8},
    "unet": {"block_out_channels": [16, 32], "norm_num_groups": 8, "attention_head_dim": 8, "batch_size": 8},
    "ldm": {"stage_epochs": {"vae": 1, "unet": 2, "finetune": 1}},
    "train": {"log_every": 2},
    "sample": {"steps": 4, "n_heldout_prompts": 4, "n_train_prompts": 4, "seeds_per_prompt": 1},
    "evaluator": {"image_size": 16, "patch_size": 4, "vision_layers": 1, "vision_width": 32,
                  "vision_head_width": 16, "text_layers": 1, "text_width": 32, "text_heads": 2,
                  "context_length": 16, "embed_dim": 16, "epochs": 1, "batch_size": 16},
    "evaluate": {"bootstrap": 5, "kid_subsets": 5, "max_pairs": 500},
}
TINY_CVAE = {"channels": [8, 16], "hidden_dim": 32, "latent_dim": 8, "text_dim": 8, "attr_dim": 4, "epochs": 2,
             "batch_size": 16}
TINY_GAN = {"z_dim": 8, "text_dim": 8, "w_dim": 16, "mapping_layers": 2, "g_channels": [16, 16, 8], "d_channels": [8, 16, 16],
            "epochs": 2, "batch_size": 8, "d_steps_boundary": 1, "penalty_every": 2, "monitor_size": 8}


def _presets(folder: Path, **files: dict) -> dict[str, presets.Preset]:
    """Preset files written to ``folder`` (``name=body``), loaded."""
    for name, body in files.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return load_presets(folder)


def _params_copy(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    return path


# --- the shipped presets -------------------------------------------------------------------------------


def test_profiles_set_exactly_what_they_set_before():
    assert PRESETS["default"] == {}
    assert PRESETS["ci"] == CI
    assert PRESETS["gpu"] == GPU
    tiny = dict(PRESETS["tiny"])
    assert tiny.pop("cvae") == TINY_CVAE
    assert tiny.pop("gan") == TINY_GAN
    assert tiny == TINY


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_shipped_preset_validates_on_params_yaml(name):
    defaults = read_yaml(REPO / "params.yaml")
    cfgs = validate_sections(deep_merge(defaults, PRESETS[name]), SECTIONS)
    if name == "ultra_high_quality_loss":  # valid as config; training without LPIPS weights is what fails
        assert cfgs["cvae"].perceptual == "lpips"


def test_the_shipped_kinds_names_and_modes():
    kinds = {name: p.kind for name, p in PRESET_FILES.items()}
    for name in ("quick_test", "fast_high_quality", "balanced_high_quality", "ultra_high_quality", "full_retrain",
                 "resume_fix"):
        assert kinds[name] == "mode"
    for name in ("mse_only", "mse_l1", "perceptual", "high_quality", "ultra_high_quality_loss", "full_retrain_optimal"):
        assert kinds[name] == "loss"
    for name in ("model_small", "model_medium", "model_fast_high_quality", "model_ultra_high_quality",
                 "model_balanced_high_quality", "cvae_seed"):
        assert kinds[name] == "model"
    assert {n for n, k in kinds.items() if k == "dataset"} == {"dataset_tiny", "dataset_small", "dataset_full"}
    assert {n for n, k in kinds.items() if k == "profile"} == {"default", "ci", "gpu", "tiny", "sweep"}
    # a mode is made of parts, at most one of each kind (resume_fix keeps the trained model's architecture)
    for name, preset in PRESET_FILES.items():
        if preset.kind == "mode":
            used = [PRESET_FILES[u].kind for u in preset.uses]
            assert len(used) == len(set(used)) and set(used) <= {"loss", "training", "model", "dataset"}, name
            assert {"loss"} <= set(used), name
    assert PRESETS["resume_fix"]["cvae"]["init_from"] == "models/cvae_init"
    assert PRESETS["resume_fix"]["cvae"]["kl_weight"] < PRESETS["high_quality"]["cvae"]["kl_weight"]
    assert PRESETS["full_retrain"]["cvae"]["init_from"] is None
    assert PRESETS["cvae_seed"] == {"prepare": {"resolution": 64}, "cvae": {
        "channels": [32, 64, 128], "hidden_dim": 512, "latent_dim": 256, "kl_weight": 8.0, "perceptual_weight": 0.15,
        "kl_schedule": "cyclical", "kl_cycle_epochs": 50.0, "epochs": 300, "batch_size": 128, "lr": 1e-4}}


def test_preset_files_ship_in_the_wheel():
    """Every preset file matches a package-data pattern of spritegen.presets (an installed wheel has them)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "spritegen.presets" in setuptools["packages"]
    patterns = setuptools["package-data"]["spritegen.presets"]
    for path in PRESET_DIR.rglob("*.yaml"):
        rel = path.relative_to(PRESET_DIR).as_posix()
        assert any(fnmatch.fnmatch(rel, p) and rel.count("/") == p.count("/") for p in patterns), rel


# --- composition ---------------------------------------------------------------------------------------


LOSS = {"kind": "loss", "description": "l", "params": {"cvae": {"l1_weight": 1.0, "kl_weight": 1.0}}}
TRAINING = {"kind": "training", "description": "t", "params": {"cvae": {"epochs": 5, "lr": 1e-3}}}
MODEL = {"kind": "model", "description": "m", "params": {"prepare": {"resolution": 64}, "cvae": {"latent_dim": 16}}}


def test_uses_in_order_then_the_presets_own_params(tmp_path):
    found = _presets(
        tmp_path, loss=LOSS, training=TRAINING, model=MODEL,
        mode={"kind": "mode", "description": "d", "uses": ["loss", "training", "model"],
              "params": {"cvae": {"kl_weight": 0.25, "init_from": "models/x"}}},
        outer={"kind": "profile", "description": "p", "uses": ["mode"], "params": {"train": {"seed": 3}}},
    )
    mode = resolve("mode", found)
    assert mode == {"cvae": {"l1_weight": 1.0, "kl_weight": 0.25, "epochs": 5, "lr": 1e-3, "latent_dim": 16,
                             "init_from": "models/x"},
                    "prepare": {"resolution": 64}}
    # in order: the loss's keys, then the training's, then the model's, then the mode's own new ones
    assert list(mode["cvae"]) == ["l1_weight", "kl_weight", "epochs", "lr", "latent_dim", "init_from"]
    assert resolve("outer", found) == {**mode, "train": {"seed": 3}}  # uses resolve recursively


def test_two_used_presets_setting_one_key_differently_is_an_error(tmp_path):
    other = {"kind": "loss", "description": "o", "params": {"cvae": {"lr": 5e-4}}}
    found = _presets(tmp_path, training=TRAINING, other_loss=other,
                     mode={"kind": "mode", "description": "d", "uses": ["training", "other_loss"]},
                     outer={"kind": "profile", "description": "p", "uses": ["mode"]})
    for name in ("mode", "outer"):  # found through a level of uses too, naming the presets that set it
        with pytest.raises(ConfigError, match=r"'training' and 'other_loss' both set cvae\.lr"):
            resolve(name, found)


def test_equal_values_and_shared_parts_are_not_a_conflict(tmp_path):
    same = {"kind": "training", "description": "s", "params": {"cvae": {"epochs": 5}}}
    found = _presets(tmp_path, training=TRAINING, same=same, loss=LOSS,
                     a={"kind": "mode", "description": "a", "uses": ["loss", "training"]},
                     b={"kind": "mode", "description": "b", "uses": ["loss"]},
                     both={"kind": "profile", "description": "p", "uses": ["a", "b", "same"]})
    assert resolve("both", found)["cvae"]["epochs"] == 5


def test_unknown_names_list_the_known_ones(tmp_path, capsys):
    found = _presets(tmp_path, loss=LOSS, mode={"kind": "mode", "description": "d", "uses": ["loss", "los"]})
    with pytest.raises(ConfigError, match=r"unknown preset 'los' \(in uses of 'mode'\); known presets: loss, mode"):
        resolve("mode", found)
    with pytest.raises(ConfigError, match=r"unknown preset 'nope'; known presets: .*fast_high_quality.*tiny"):
        presets.preset_overrides("nope")
    for argv in (["preset", "show", "nope"], ["preset", "apply", "nope", "--exp"], ["params", "--preset", "nope"]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert "unknown preset 'nope'" in err and "quick_test" in err and "tiny" in err


def test_a_cycle_in_uses_is_an_error(tmp_path):
    found = _presets(tmp_path, a={"kind": "mode", "description": "a", "uses": ["b"]},
                     b={"kind": "profile", "description": "b", "uses": ["c"]},
                     c={"kind": "profile", "description": "c", "uses": ["a"]})
    with pytest.raises(ConfigError, match=r"cycle: a -> b -> c -> a"):
        resolve("a", found)


@pytest.mark.parametrize("body, message", [
    ({"kind": "loss", "description": "d", "parms": {}}, r"unknown key\(s\) \['parms'\]"),
    ({"kind": "optimizer", "description": "d"}, r"kind 'optimizer' is not one of"),
    ({"description": "d"}, r"kind None is not one of"),
    ({"kind": "loss"}, "description must be one line"),
    ({"kind": "loss", "description": "d", "uses": "mse_l1"}, "uses must be a list"),
    ({"kind": "loss", "description": "d", "params": [1]}, "params must be a mapping"),
])
def test_a_bad_preset_file_is_an_error_naming_the_file(tmp_path, body, message):
    with pytest.raises(ConfigError, match=rf"preset file .*broken\.yaml: {message}"):
        _presets(tmp_path, broken=body)


def test_a_name_is_unique_across_subfolders(tmp_path):
    for kind in ("loss", "model"):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "same.yaml").write_text(yaml.safe_dump({"kind": kind, "description": "d"}))
    with pytest.raises(ConfigError, match=r"preset 'same' is defined twice: .*loss/same\.yaml and .*model/same\.yaml"):
        load_presets(tmp_path)


# --- spritegen preset ... -----------------------------------------------------------------------------


def test_list_and_show(capsys):
    assert cli_main(["preset", "list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["name", "kind", "description"]
    assert len(rows) == 1 + len(PRESET_FILES)
    assert any(r.split()[:2] == ["fast_high_quality", "mode"] for r in rows)

    assert cli_main(["preset", "show", "fast_high_quality"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == PRESETS["fast_high_quality"]  # the composition is in comments
    for used in PRESET_FILES["fast_high_quality"].uses:
        assert f"#     {used} ({PRESET_FILES[used].kind})" in out


def test_apply_writes_the_preset_and_leaves_the_rest(tmp_path, capsys):
    path = _params_copy(tmp_path)
    before = read_yaml(path)
    assert cli_main(["preset", "apply", "tiny", "--params", str(path)]) == 0
    after = read_yaml(path)
    overrides = flatten(PRESETS["tiny"])
    for key, value in overrides.items():
        assert flatten(after)[key] == value
    untouched = {k: v for k, v in flatten(before).items() if k not in overrides}
    assert {k: v for k, v in flatten(after).items() if k not in overrides} == untouched
    assert list(after) == list(before) and all(list(after[s]) == list(before[s]) for s in before)  # key order
    out = capsys.readouterr().out
    assert f"prepare.resolution: {flow(before['prepare']['resolution'])} -> 16" in out
    assert f"cvae.channels: {flow(before['cvae']['channels'])} -> [8, 16]" in out
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left

    text = path.read_text()
    assert cli_main(["preset", "apply", "tiny", "--params", str(path)]) == 0  # again: nothing to change
    assert "not rewritten" in capsys.readouterr().out and path.read_text() == text


@pytest.mark.parametrize("bad, message", [
    ({"prepare": {"resolution": 2}}, "prepare.resolution: 2 must be >= 8"),
    ({"cvae": {"perceptual": "vgg"}}, "cvae.perceptual: 'vgg' is not one of"),
    ({"nosuch": {"x": 1}}, r"unknown section\(s\) \['nosuch'\]"),
])
@pytest.mark.parametrize("exp", [False, True])
def test_apply_refuses_a_bad_preset_and_leaves_the_file_as_it_was(tmp_path, monkeypatch, capsys, bad, message, exp):
    monkeypatch.setattr(presets, "PRESETS", {**PRESETS, "bad": bad})
    path = _params_copy(tmp_path)
    data = path.read_bytes()
    assert cli_main(["preset", "apply", "bad", "--params", str(path), *(["--exp"] if exp else [])]) == 2
    captured = capsys.readouterr()
    assert re.search(message, captured.err) and captured.out == ""
    assert path.read_bytes() == data and list(tmp_path.iterdir()) == [path]


def _exp_line(capsys, name: str, path: Path) -> list[str]:
    assert cli_main(["preset", "apply", name, "--exp", "--params", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one line
    argv = shlex.split(out)
    assert argv[:3] == ["dvc", "exp", "run"] and argv[3::2] == ["-S"] * (len(argv[3:]) // 2)
    return argv[4::2]


@pytest.mark.parametrize("name", ["tiny", "fast_high_quality", "full_retrain", "resume_fix", "gpu"])
def test_exp_prints_a_dvc_line_that_round_trips(tmp_path, capsys, name):
    path = _params_copy(tmp_path)
    data = path.read_bytes()
    sets = _exp_line(capsys, name, path)
    parsed = {}
    for item in sets:
        key, value = item.removeprefix("++").split("=", 1)
        parsed[key] = yaml.safe_load(value)
    assert parsed == flatten(PRESETS[name])
    assert path.read_bytes() == data  # --exp writes nothing


def test_exp_adds_keys_the_params_file_lacks_and_dvc_applies_it_as_apply_does(tmp_path, capsys):
    """The real round trip: DVC's own -S code (Hydra's grammar) on one copy, ``apply`` on another."""
    hydra = pytest.importorskip("dvc.utils.hydra")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in read_yaml(REPO / "params.yaml").items() if k != "cvae"},
                                   sort_keys=False))
    sets = _exp_line(capsys, "resume_fix", path)
    assert "++cvae.init_from=models/cvae_init" in sets and "++cvae.lr=0.0002" in sets  # not in the file: added
    by_dvc = tmp_path / "dvc" / "params.yaml"
    by_dvc.parent.mkdir()
    shutil.copy(path, by_dvc)
    hydra.apply_overrides(by_dvc, sets)
    assert cli_main(["preset", "apply", "resume_fix", "--params", str(path)]) == 0
    # compared as the stages read them: DVC writes 5e-05, which PyYAML (YAML 1.1) reads as a string
    # and the config loader reads as the float it is
    assert resolved(by_dvc) == resolved(path)


def test_params_command_takes_a_preset(tmp_path, capsys):
    path = _params_copy(tmp_path)
    assert cli_main(["params", "--params", str(path), "--preset", "quick_test"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["cvae"]["epochs"] == 1 and resolved["metadata"]["limit"] == 48
    assert resolved["prepare"]["resolution"] == 64
