"""Sweep definitions: YAML files in this folder, read into typed dataclasses and checked before any trial.

    spritegen sweep run sweeps/kl_weight.yaml --study cvae     # spritegen/sweeps/study.py

One file per question (``lr_balance``, ``kl_weight``, ``stage_schedule``); inside it one named study per
generator family, because each family has its own params, its own budget and its own evaluation, and an
Optuna study is one search space::

    description: one line
    studies:
      cvae:
        family: cvae                      # cvae | gan | ldm
        description: one line
        params:                           # dotted params.yaml keys the family reads
          cvae.kl_weight: {low: 1.0, high: 128.0, log: true}
          cvae.kl_schedule: {choices: [cyclical, monotonic, constant]}
        fixed: {cvae.dropout: 0.2}        # optional: overrides every trial shares
        objectives: {fd: minimize}        # evaluation metrics (evaluate/suite.py METRICS); two or more: a Pareto front
        budget: {trials: 30, epochs: 20, report_every: 1}
        pruner: {type: median, n_startup_trials: 4, n_warmup_steps: 2}   # median | hyperband | none
        sampler: {type: tpe, seed: 0}
        preset: sweep                     # the profile every trial runs on (spritegen/presets/profile/sweep.yaml)
        until: finetune                   # ldm only: the last stage a trial trains (vae: its reconstructions are scored)

A per-phase value of ``strategy: custom`` is named by the phase's name: ``ldm.phases.<name>.lr.unet``,
``ldm.phases.<name>.loss_weights.align``, ``ldm.phases.<name>.max_complexity`` (the phases themselves come
from params.yaml or the study's ``fixed: {ldm.strategy: custom, ldm.phases: [...]}``).

``check_study`` refuses, naming the key: a param that does not exist or that the family does not read
(it would be a silent no-op), a bad range (low >= high, log with low <= 0, an end outside the field's own
bounds), a choice of the wrong type, an objective the evaluation does not produce or a direction against
the metric's, a pruner on a multi-objective study (Optuna does not prune those) and a param that the
budget also sets; for ldm, a key no stage up to ``until`` reads and a phase name ``ldm.phases`` lacks.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spritegen.config import ConfigError, deep_merge, from_dict, read_yaml

SWEEP_DIR = Path(__file__).resolve().parent

Family = Literal["cvae", "gan", "ldm"]
# the params sections each family's training reads (its stage's dvc.yaml params), plus what its evaluation
# reads; a swept key outside these would change nothing
FAMILY_SECTIONS: dict[str, tuple[str, ...]] = {
    "cvae": ("train", "cvae", "sample", "evaluate"),
    "gan": ("train", "gan", "sample", "evaluate"),
    "ldm": ("train", "text", "vae", "unet", "ldm", "sample", "evaluate"),
}
RUNNABLE = ("cvae", "gan", "ldm")
LDM_STAGES = ("vae", "unet", "finetune")  # the ldm DVC stages, in order; each starts from the previous one's output
# ``ldm.phases.<phase name>.<field>...``: a value of one phase of ``strategy: custom`` (a list in params.yaml)
PHASE_KEY = re.compile(r"^ldm\.phases\.([^.\[\]]+)\.(.+)$")


@dataclass
class ParamSpace:
    """One searched param: a range (``low``/``high``, ``log``) or ``choices``, never both."""

    low: float | None = field(default=None, metadata={"doc": "lowest value (int fields: an integer)"})
    high: float | None = field(default=None, metadata={"doc": "highest value, included"})
    log: bool = field(default=False, metadata={"doc": "sample on a log scale (low must be > 0)"})
    choices: list[Any] | None = field(default=None, metadata={"doc": "the values to choose from (scalars)"})


@dataclass
class Budget:
    trials: int = field(default=20, metadata={"ge": 1, "doc": "finished trials the study runs to (complete, pruned or failed for its own reasons); --trials overrides"})
    epochs: int | None = field(default=None, metadata={"ge": 1, "doc": "epochs per trial (sets <family>.epochs; null: the profile's)"})
    report_every: int = field(default=1, metadata={"ge": 1, "doc": "score the model with the evaluation every this many epochs (and at the last): the intermediate values the pruner reads"})


@dataclass
class PrunerSpec:
    type: Literal["median", "hyperband", "none"] = field(default="median", metadata={"doc": "median: MedianPruner; hyperband: HyperbandPruner with epochs as the resource; none"})
    n_startup_trials: int = field(default=4, metadata={"ge": 0, "doc": "median: trials that finish before any is pruned"})
    n_warmup_steps: int = field(default=1, metadata={"ge": 0, "doc": "median: epochs of a trial before it can be pruned"})
    min_resource: int = field(default=1, metadata={"ge": 1, "doc": "hyperband: the fewest epochs a trial gets"})
    reduction_factor: int = field(default=3, metadata={"ge": 2, "doc": "hyperband: 1/this of the trials go on at each rung"})


@dataclass
class SamplerSpec:
    type: Literal["tpe", "random"] = field(default="tpe", metadata={"doc": "tpe (multivariate) or random"})
    seed: int = field(default=0, metadata={"ge": 0, "doc": "the sampler's seed: the same study run again sequentially draws the same trials"})
    n_startup_trials: int = field(default=5, metadata={"ge": 0, "doc": "tpe: random trials before the model takes over"})


@dataclass
class StudySpec:
    family: Family = field(metadata={"doc": "the generator family the trials train"})
    description: str = field(default="", metadata={"doc": "one line"})
    params: dict[str, ParamSpace] = field(default_factory=dict, metadata={"doc": "dotted params.yaml key -> its space"})
    fixed: dict[str, Any] = field(default_factory=dict, metadata={"doc": "dotted key -> value every trial shares"})
    objectives: dict[str, Literal["minimize", "maximize"]] = field(default_factory=lambda: {"fd": "minimize"}, metadata={"doc": "metric -> direction"})
    budget: Budget = field(default_factory=Budget)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    preset: str | None = field(default="sweep", metadata={"doc": "preset every trial runs on (--preset overrides)"})
    until: Literal["vae", "unet", "finetune"] = field(default="finetune", metadata={"doc": "ldm: the last stage a trial trains (from vae on, each starting from the previous one's output, as dvc repro chains them); vae scores the VAE's reconstructions of the prompt set's sprites (the ldm_vae evaluation), unet/finetune score samples in the unet and finetune stages"})

    def stages(self) -> tuple[str, ...]:
        """ldm: the stages a trial trains, in order."""
        return LDM_STAGES[: LDM_STAGES.index(self.until) + 1]

    def scored_stages(self) -> tuple[str, ...]:
        """ldm: the stages whose epochs are scored (samples need the U-Net; the vae stage alone: reconstructions)."""
        return ("vae",) if self.until == "vae" else tuple(s for s in self.stages() if s != "vae")

    def validate(self) -> None:
        if self.family == "ldm" and self.budget.epochs is not None:
            raise ConfigError("budget.epochs: the ldm family has no single epoch count; set the stages' lengths with "
                              "ldm.stage_epochs.* (or the phases of strategy: custom) in fixed")
        if self.family != "ldm" and self.until != "finetune":
            raise ConfigError(f"until: only the ldm family has stages; the {self.family} family trains one loop")
        if not self.params:
            raise ConfigError("params: name at least one param to search")
        if not self.objectives:
            raise ConfigError("objectives: name at least one metric")
        if len(self.objectives) > 1 and self.pruner.type != "none":
            raise ConfigError(f"pruner: {self.pruner.type!r} on a study with {len(self.objectives)} objectives; Optuna does not "
                              "prune multi-objective studies: set pruner: {type: none} and bound the cost with budget.epochs")


@dataclass
class SweepFile:
    description: str = field(metadata={"doc": "one line"})
    studies: dict[str, StudySpec] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.studies:
            raise ConfigError("studies: define at least one study")


def read_sweep(path: str | Path) -> SweepFile:
    """A definition file (a path, or the name of a shipped one: ``kl_weight``), parsed; errors name the key."""
    path = resolve_path(path)
    return from_dict(SweepFile, read_yaml(path), path.stem)


def resolve_path(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists() and p.suffix == "" and (SWEEP_DIR / f"{p.name}.yaml").exists():
        return SWEEP_DIR / f"{p.name}.yaml"
    if not p.exists():
        shipped = sorted(x.stem for x in SWEEP_DIR.glob("*.yaml"))
        raise ConfigError(f"{p}: no such sweep definition (shipped: {shipped})")
    return p


def pick_study(sweep: SweepFile, name: str | None, where: str) -> tuple[str, StudySpec]:
    if name is None:
        if len(sweep.studies) != 1:
            raise ConfigError(f"{where}: holds studies {sorted(sweep.studies)}; choose one with --study")
        name = next(iter(sweep.studies))
    if name not in sweep.studies:
        raise ConfigError(f"{where}: no study {name!r}; its studies: {sorted(sweep.studies)}")
    return name, sweep.studies[name]


# --- checks against the params and the evaluation -----------------------------------------------------------


def nested(dotted: str, value: Any) -> dict:
    """``"cvae.kl_weight", 8`` -> ``{"cvae": {"kl_weight": 8}}``."""
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def with_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """``raw`` params with dotted-key overrides put on top, in order (so ``fixed``'s ``ldm.phases`` list is in
    place before a ``ldm.phases.<name>...`` key changes one of its phases)."""
    for key, value in overrides.items():
        raw = set_key(raw, key, value)
    return raw


def as_params(base_raw: dict, overrides: dict[str, Any]) -> dict:
    """``overrides`` in params.yaml's shape (what a trial records); a per-phase key becomes the whole
    ``ldm.phases`` list it changes, since a list has no keys to nest under."""
    plain = {k: v for k, v in overrides.items() if not PHASE_KEY.match(k)}
    if len(plain) < len(overrides):
        plain["ldm.phases"] = with_overrides(base_raw, overrides)["ldm"]["phases"]
    return with_overrides({}, plain)


def set_key(raw: dict, key: str, value: Any) -> dict:
    """``raw`` with one dotted key set. ``ldm.phases.<name>.<rest>`` sets ``<rest>`` in the phase of
    ``ldm.phases`` called ``<name>`` (a list has no keys of its own; its phases have unique names)."""
    m = PHASE_KEY.match(key)
    if m is None:
        return deep_merge(raw, nested(key, value))
    name, rest = m.groups()
    phases = copy.deepcopy((raw.get("ldm") or {}).get("phases") or [])
    found = [i for i, p in enumerate(phases) if isinstance(p, dict) and p.get("name") == name]
    if len(found) != 1:
        names = [p.get("name") for p in phases if isinstance(p, dict)]
        what = "no phase" if not found else f"{len(found)} phases"
        raise ConfigError(f"{key}: {what} named {name!r} in ldm.phases (its phases: {names}); per-phase keys name a "
                          "phase of strategy: custom, given in params.yaml or the study's fixed ldm.phases")
    phases[found[0]] = deep_merge(phases[found[0]], nested(rest, value))
    return deep_merge(raw, {"ldm": {"phases": phases}})


def field_type(key: str) -> Any:
    """The annotation of the params field a dotted key names; an error naming the key if there is none."""
    from spritegen.params import SECTIONS, section_class

    section, *path = key.split(".")
    if section not in SECTIONS:
        raise ConfigError(f"{key}: no params section {section!r}; sections: {sorted(SECTIONS)}")
    tp: Any = section_class(section)
    if not path:
        raise ConfigError(f"{key}: name a field of the section, not the whole section")
    for i, part in enumerate(path):
        here = ".".join([section, *path[:i]])
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is list and args and dataclasses.is_dataclass(args[0]) and "name" in typing.get_type_hints(args[0]):
            tp = args[0]  # a list of named items (ldm.phases): the part names one; set_key checks that it exists
            continue
        if origin is dict and args:
            tp = args[1]  # a mapping (a phase's lr, grad_clip, loss_weights): the part is its key, checked on validation
            continue
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{key}: {here} has no fields")
        hints = typing.get_type_hints(tp)
        if part not in hints:
            raise ConfigError(f"{key}: no such param; {here} has {sorted(hints)}")
        tp = hints[part]
    return tp


def read_keys(spec: StudySpec) -> tuple[str, ...]:
    """The dotted params a trial of the study reads: whole sections for cvae/gan; for ldm the keys of each
    stage it trains (spritegen/ldm/train.py PARAMS, which dvc.yaml mirrors), and the sample/evaluate sections."""
    if spec.family != "ldm":
        return FAMILY_SECTIONS[spec.family]
    from spritegen.ldm.train import PARAMS

    return tuple(dict.fromkeys(k for stage in spec.stages() for k in PARAMS[stage])) + ("sample", "evaluate")


def reads(key: str, keys: tuple[str, ...]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


def check_study(spec: StudySpec, base_raw: dict, where: str) -> None:
    """Everything about a study that can be wrong, checked against the params it runs on: an error names it."""
    from spritegen.evaluate.suite import METRICS
    from spritegen.params import validate_sections

    sections = FAMILY_SECTIONS[spec.family]
    read = read_keys(spec)
    epochs_key = f"{spec.family}.epochs" if spec.family != "ldm" else None
    budget_keys = {epochs_key} if spec.budget.epochs and epochs_key else set()

    def validates(key: str, value: Any) -> None:
        raw = with_overrides(with_overrides(base_raw, spec.fixed), {key: value})
        try:
            validate_sections(raw, sections)
        except ConfigError as e:
            raise ConfigError(f"{where}.params.{key}: {value!r} is not a valid value: {e}") from None

    for key in [*spec.params, *spec.fixed]:
        kind = "params" if key in spec.params else "fixed"
        if key.split(".")[0] not in sections:
            raise ConfigError(f"{where}.{kind}.{key}: the {spec.family} family does not read it (it reads {list(sections)})")
        try:
            field_type(key)
        except ConfigError as e:
            raise ConfigError(f"{where}.{kind}.{e}") from None
        if not reads(key, read):
            raise ConfigError(f"{where}.{kind}.{key}: no stage up to until: {spec.until} reads it (they read {list(read)})")
        if PHASE_KEY.match(key) and kind == "params":
            try:
                raw = with_overrides(with_overrides(base_raw, spec.fixed), {key: None})
            except ConfigError as e:
                raise ConfigError(f"{where}.params.{e}") from None
            name = PHASE_KEY.match(key).group(1)
            stage = next(p.get("stage") for p in raw["ldm"]["phases"] if p.get("name") == name)
            if stage not in spec.stages():
                raise ConfigError(f"{where}.params.{key}: no stage up to until: {spec.until} reads it (phase {name!r} "
                                  f"runs in the {stage} stage)")
        if key in budget_keys:
            raise ConfigError(f"{where}.{kind}.{key}: budget.epochs sets it; search the budget with the pruner instead")
    both = sorted(set(spec.params) & set(spec.fixed))
    if both:
        raise ConfigError(f"{where}: {both} both searched (params) and fixed")
    try:
        validate_sections(with_overrides(base_raw, spec.fixed), sections)
    except ConfigError as e:
        raise ConfigError(f"{where}.fixed: {e}") from None

    for key, space in spec.params.items():
        tp = field_type(key)
        name = f"{where}.params.{key}"
        if space.choices is not None:
            if space.low is not None or space.high is not None or space.log:
                raise ConfigError(f"{name}: give either choices or low/high (log), not both")
            if not space.choices:
                raise ConfigError(f"{name}: choices is empty")
            for c in space.choices:
                if c is not None and not isinstance(c, (bool, int, float, str)):
                    raise ConfigError(f"{name}: choice {c!r} is not a scalar (Optuna's choices are None, bool, int, float or str)")
                validates(key, c)
            continue
        if space.low is None or space.high is None:
            raise ConfigError(f"{name}: give low and high (a range) or choices")
        if tp not in (int, float):
            raise ConfigError(f"{name}: a range needs a number field, this one is {getattr(tp, '__name__', tp)}; use choices")
        if tp is int and not (float(space.low).is_integer() and float(space.high).is_integer()):
            raise ConfigError(f"{name}: an integer field needs integer low/high, got {space.low!r}..{space.high!r}")
        if not space.low < space.high:
            raise ConfigError(f"{name}: low {space.low!r} must be below high {space.high!r}")
        if space.log and space.low <= 0:
            raise ConfigError(f"{name}: a log range needs low > 0, got {space.low!r}")
        for end in (space.low, space.high):
            validates(key, int(end) if tp is int else float(end))

    produced = sorted(k for k in METRICS if k != "fd_inf")
    for metric, direction in spec.objectives.items():
        if metric not in METRICS or metric == "fd_inf":
            raise ConfigError(f"{where}.objectives.{metric}: the evaluation does not produce it; it produces {produced}")
        natural = "minimize" if METRICS[metric][0] == "lower" else "maximize"
        if direction != natural:
            raise ConfigError(f"{where}.objectives.{metric}: {direction} is against the metric ({metric} is better {METRICS[metric][0]})")
    if spec.pruner.type == "hyperband" and spec.budget.epochs is not None and spec.pruner.min_resource >= spec.budget.epochs:
        raise ConfigError(f"{where}.pruner.min_resource: {spec.pruner.min_resource} must be below budget.epochs {spec.budget.epochs}")


def load_and_check(path: str | Path, study: str | None, base_raw_of) -> tuple[Path, str, StudySpec, dict]:
    """(file, study name, study, the params its trials start from) with every check done.
    ``base_raw_of(preset)`` gives params.yaml with a preset on top."""
    path = resolve_path(path)
    sweep = read_sweep(path)
    name, spec = pick_study(sweep, study, path.name)
    base = base_raw_of(spec.preset)
    check_study(spec, base, f"{path.stem}.studies.{name}")
    return path, name, spec, base
