"""Each training stage in dvc.yaml declares exactly what it runs and reads.

Every training stage is run for real (the tiny preset, written into params.yaml as a user's file would be),
in its own process, with two recorders: which fields of the params dataclasses its code reads, and which
of the project's modules it imports. Then, against dvc.yaml:

* every param read is covered by a declared param (``train`` covers ``train.augment.hflip``), and the
  declaration equals the stage's own list in code (``spritegen.ldm.train.PARAMS``...), which it uses to
  show, save and fingerprint its params;
* the declared code deps are exactly the modules it imports, less the few that cannot change an output.
So a param or a module that changes a stage's result re-runs it, and nothing else does.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# imported by every stage but unable to change an output: argument parsing, presets (not used by dvc.yaml's
# commands, which read params.yaml), run logs (logs/ is not an output), exception classes, package markers
NOT_DEPS = {"spritegen/cli.py", "spritegen/presets/__init__.py", "spritegen/runlog.py", "spritegen/errors.py", "spritegen/__main__.py"}

RECORDER = r"""
import dataclasses, json, sys
import spritegen.config as config

reads = set()
_from_dict = config.from_dict
validating = [0]  # reads made while params are validated cannot change an output: not recorded

def _recording(obj, key):
    names = {f.name for f in dataclasses.fields(obj)}
    base = type(obj)

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        if name in names and not validating[0] and not dataclasses.is_dataclass(value):  # nested sections record their own
            reads.add(f"{key}.{name}")
        return value

    obj.__class__ = type(base.__name__, (base,), {"__getattribute__": __getattribute__})
    return obj

def from_dict(cls, data, key=""):
    validating[0] += 1
    try:
        obj = _from_dict(cls, data, key)
    finally:
        validating[0] -= 1
    return _recording(obj, key) if key else obj

config.from_dict = from_dict  # before spritegen.params imports it
from spritegen.cli import main
rc = main(sys.argv[2:])
repo = sys.argv[1]
modules = sorted({m.__file__[len(repo) + 1:] for m in list(sys.modules.values())
                  if getattr(m, "__file__", None) and m.__file__.startswith(repo + "/") and "/.venv/" not in m.__file__
                  and not m.__file__.startswith(repo + "/tests/")})
print("RECORD " + json.dumps({"rc": rc, "reads": sorted(reads), "modules": modules}))
"""

STAGES = {  # dvc.yaml stage -> command (as in dvc.yaml) and the key of its declared params in code
    "text": ["train", "text"],
    "ldm_vae": ["train", "ldm", "--stage", "vae"],
    "ldm_unet": ["train", "ldm", "--stage", "unet"],
    "ldm_finetune": ["train", "ldm", "--stage", "finetune"],
    "cvae": ["train", "cvae"],
    "gan": ["train", "gan"],
}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from spritegen.data.synthetic import write_prepared
    from spritegen.params import resolved

    root = tmp_path_factory.mktemp("stage_params")
    write_prepared(root / "data/prepared", n_per_split=(16, 8, 8), resolution=16, seed=0)
    (root / "params.yaml").write_text(yaml.safe_dump(resolved(None, "tiny"), sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = {}
    for stage, argv in STAGES.items():
        run = subprocess.run([sys.executable, "-c", RECORDER, str(REPO), *argv], cwd=root, env=env,
                             capture_output=True, text=True, timeout=600)
        line = [x for x in run.stdout.splitlines() if x.startswith("RECORD ")]
        assert line, run.stderr[-3000:]
        out[stage] = json.loads(line[0][len("RECORD "):])
        assert out[stage]["rc"] == 0, run.stderr[-3000:]
    return out


def _dvc_stage(name: str) -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]


def _covered(key: str, declared: list[str]) -> bool:
    return any(key == d or key.startswith(d + ".") or key.startswith(d + "[") for d in declared)


def _declared_in_code(stage: str) -> tuple[str, ...]:
    if stage == "text":
        from spritegen.text.train import PARAMS

        return PARAMS
    if stage == "cvae":
        from spritegen.cvae.train import PARAMS

        return PARAMS
    if stage == "gan":
        from spritegen.gan.train import PARAMS

        return PARAMS
    from spritegen.ldm.train import PARAMS

    return PARAMS[stage.removeprefix("ldm_")]


@pytest.mark.parametrize("stage", list(STAGES))
def test_declared_params_cover_what_the_stage_reads(stage, records):
    declared = _dvc_stage(stage)["params"]
    assert list(declared) == list(_declared_in_code(stage)), "dvc.yaml and the stage's own PARAMS differ"
    unread = [k for k in records[stage]["reads"] if not _covered(k, declared)]
    assert not unread, f"{stage} reads params dvc.yaml does not declare: {unread}"
    assert records[stage]["reads"], "the recorder saw nothing: it is not recording"


@pytest.mark.parametrize("stage", list(STAGES))
def test_declared_code_deps_are_the_modules_the_stage_runs(stage, records):
    deps = {d for d in _dvc_stage(stage)["deps"] if d.endswith(".py")}
    ran = {m for m in records[stage]["modules"] if m not in NOT_DEPS and not m.endswith("__init__.py")}
    assert not ran - deps, f"{stage} imports modules dvc.yaml does not list: {sorted(ran - deps)}"
    assert not deps - ran, f"dvc.yaml lists modules {stage} never imports: {sorted(deps - ran)}"


def test_the_text_stage_declares_every_text_param_it_reads(records):
    reads = {k for k in records["text"]["reads"] if k.startswith("text.")}
    assert {"text.grad_clip", "text.mlm_lr", "text.vocab_size"} <= reads
    assert "text.lr" not in reads  # the fine-tuning rate belongs to the stages that fine-tune
