"""One sweep trial: the family's own training entry point with the trial's overrides, scored by the
evaluation module. There is no sweep trainer: ``train_cvae``/``train_gan`` are what ``spritegen train
cvae|gan`` (and ``dvc repro``) run, and an ldm trial calls ``train_stage`` for vae, unet, finetune in turn
(up to the study's ``until``), each stage starting from the previous one's output exactly as the
``ldm_vae``/``ldm_unet``/``ldm_finetune`` stages chain. The trial only adds an ``on_epoch`` reader that
samples the fixed evaluation prompt set (spritegen/sample_set.py ``choose_prompt_set``) from the model as
it is (ldm: the VAE's reconstructions of those sprites when only the vae stage trains, as ``sample-set
--reconstruct`` makes them) and scores it with ``evaluate_images`` (evaluate/suite.py), exactly the code
the sample and evaluate stages run.

Per scored epoch the objective is reported to Optuna (single-objective studies) and the pruner asked;
a pruned run stops there with its run state saved. Failures are recorded with their reason in the
trial's ``reason`` user attribute:
* the training guard trips (NaN/inf or exploding loss: ``TrainingDiverged``): failed, "diverged: ...";
* an objective comes out NaN/inf: failed, "objective fd is nan at epoch 3";
* the GAN stops on persistent collapse (``gan.collapse_patience``): pruned, "collapsed ...";
* anything else raised: failed, with the exception.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from spritegen.sweeps.definition import FAMILY_SECTIONS, StudySpec, as_params, with_overrides

# a function of the prompt set's items -> their images (N, 3, R, R) uint8
Draw = Callable[[list], Any]


@dataclass
class Inputs:
    """What every trial reads: the pipeline's outputs (its text, evaluator and reference stages)."""

    data: Path
    text: Path
    evaluator: Path
    ref_cache: Path


def trainer(family: str) -> Callable:
    """The family's training entry point (the one its DVC stage runs)."""
    if family == "cvae":
        from spritegen.cvae.train import train_cvae

        return train_cvae
    if family == "gan":
        from spritegen.gan.train import train_gan

        return train_gan
    raise ValueError(family)  # ldm: train_ldm chains its stages


def total_epochs(spec: StudySpec, cfgs: dict) -> int:
    """The last step a trial reports: the family's epochs; ldm: the epochs of every stage it trains (the
    vae stage's count too, so steps stay comparable across trials with the same stage lengths)."""
    if spec.family != "ldm":
        return getattr(cfgs[spec.family], "epochs")
    return sum(cfgs["ldm"].phases_for(stage)[-1].end for stage in spec.stages())


def train_ldm(spec: StudySpec, cfgs: dict, inputs: Inputs, model_dir: Path, on_draw: Callable[[int, Draw], None]) -> dict:
    """The ldm stages up to ``spec.until`` into ``model_dir/<stage>``, each from the previous one's output
    (``train_stage``, what ``spritegen train ldm --stage S`` runs). ``on_draw(step, draw)`` is called after
    each epoch of a scored stage; ``step`` counts the epochs of every stage so far."""
    from spritegen.ldm.pipeline import ema_unet, generate_images
    from spritegen.ldm.train import train_stage
    from spritegen.sample_set import reconstruct_images, sprites_by_id

    sample = cfgs["sample"]
    real = sprites_by_id(inputs.data) if spec.until == "vae" else None
    done, final = 0, {}
    for stage in spec.stages():
        def reader(epoch: int, metrics: dict, read: Callable, done: int = done) -> None:
            if spec.until == "vae":  # the VAE's ceiling: the prompt set's real sprites through it (ldm_vae)
                import torch

                draw = lambda items: read(lambda ldm: reconstruct_images(  # noqa: E731
                    ldm, torch.stack([real[it.record.id] for it in items]), [it.prompt for it in items]))
            else:  # samples with the bundle's own sampler, as LDMGenerator (the sample stage) draws them
                draw = lambda items: read(lambda ldm: generate_images(  # noqa: E731
                    ldm, ema_unet(ldm), [it.prompt for it in items], [it.seed for it in items], sample.sampler,
                    sample.steps, sample.guidance, sample.batch_size))
            on_draw(done + epoch, draw)

        final = train_stage(stage, cfgs, inputs.data, model_dir, inputs.text, live_dir=None, progress=False,
                            on_epoch=reader if stage in spec.scored_stages() else None)
        done += cfgs["ldm"].phases_for(stage)[-1].end
    return final


class Scoring:
    """The evaluation's models, real data and prompt set, built once per worker process and reused by
    every trial (they depend on the evaluate and sample params, which a study does not search)."""

    def __init__(self, inputs: Inputs, cfgs: dict):
        from spritegen.evaluate.suite import build_models, real_from_prepared
        from spritegen.sample_set import choose_prompt_set

        self.cfg, self.sample = cfgs["evaluate"], cfgs["sample"]
        self.backend, self.align, self.perceptual, _ = build_models(self.cfg, inputs.evaluator)
        self.real = real_from_prepared(inputs.data, np.random.default_rng(self.cfg.seed), cache_dir=inputs.ref_cache,
                                       backend_id=self.backend.backend_id)
        s = self.sample
        self.items = choose_prompt_set(inputs.data, s.n_heldout_prompts, s.n_train_prompts, s.seeds_per_prompt, s.seed)

    def score(self, draw: Draw, family: str) -> dict[str, float]:
        """The prompt set's images from ``draw`` (samples, or ldm_vae: reconstructions), every metric's value."""
        from spritegen.evaluate.suite import evaluate_images

        images = draw(self.items)  # (N, 3, R, R) uint8
        result = evaluate_images(images.numpy(), [it.prompt for it in self.items], self.real, self.backend, self.align,
                                 self.perceptual, self.cfg, family=family, splits=[it.split for it in self.items])
        return {name: m["value"] for name, m in result["metrics"].items()}


class Diverged(RuntimeError):
    """The run or its objective went non-finite: the trial is failed with this reason."""


def suggest(trial, spec: StudySpec) -> dict[str, Any]:
    """The trial's values of the searched params (dotted key -> value)."""
    from spritegen.sweeps.definition import field_type

    out = {}
    for key, space in spec.params.items():
        if space.choices is not None:
            out[key] = trial.suggest_categorical(key, space.choices)
        elif field_type(key) is int:
            out[key] = trial.suggest_int(key, int(space.low), int(space.high), log=space.log)
        else:
            out[key] = trial.suggest_float(key, float(space.low), float(space.high), log=space.log)
    return out


def trial_overrides(spec: StudySpec, values: dict[str, Any]) -> dict[str, Any]:
    """Everything a trial sets on top of the base params: fixed, budget, searched (in that order)."""
    budget = {f"{spec.family}.epochs": spec.budget.epochs} if spec.budget.epochs else {}
    return {**spec.fixed, **budget, **values}


def run_trial(trial, spec: StudySpec, base_raw: dict, inputs: Inputs, out: Path, scoring: Callable[[dict], Scoring],
              say: Callable[[str], None] = print) -> float | tuple[float, ...]:
    """Train, score each reported epoch, prune or return the objective value(s)."""
    import optuna

    from spritegen.params import validate_sections
    from spritegen.train.guards import TrainingDiverged

    overrides = trial_overrides(spec, suggest(trial, spec))
    cfgs = validate_sections(with_overrides(base_raw, overrides), FAMILY_SECTIONS[spec.family])
    epochs = total_epochs(spec, cfgs)
    # what the evaluation calls the images: ldm trials that stop after the vae stage score its reconstructions
    scored_as = "ldm_vae" if spec.family == "ldm" and spec.until == "vae" else spec.family
    folder = out / "trials" / f"{trial.number:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(as_params(base_raw, overrides), sort_keys=False))
    names = list(spec.objectives)
    single = len(names) == 1
    scorer = scoring(cfgs)
    scored: dict[int, dict[str, float]] = {}
    t0 = time.time()

    def on_draw(epoch: int, draw: Draw) -> None:
        if epoch % spec.budget.report_every and epoch != epochs:
            return
        values = scorer.score(draw, scored_as)
        scored[epoch] = values
        trial.set_user_attr(f"epoch_{epoch:04d}", {k: values[k] for k in names})
        bad = [k for k in names if not math.isfinite(values[k])]
        if bad:
            raise Diverged(f"objective {bad[0]} is {values[bad[0]]} at epoch {epoch}")
        say(f"trial {trial.number} epoch {epoch}/{epochs}: " + ", ".join(f"{k} {values[k]:.4g}" for k in names))
        if single:  # Optuna prunes single-objective studies only (trial.report refuses several objectives)
            trial.report(values[names[0]], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: {names[0]} {values[names[0]]:.4g}")

    def on_epoch(epoch: int, metrics: dict, generate: Callable) -> None:  # cvae, gan: the bundle's generate_images
        s = cfgs["sample"]
        on_draw(epoch, lambda items: generate([it.prompt for it in items], [it.seed for it in items], s.temperature,
                                              s.batch_size))

    try:
        if spec.family == "ldm":
            final = train_ldm(spec, cfgs, inputs, folder / "model", on_draw)
        else:
            final = trainer(spec.family)(cfgs, inputs.data, folder / "model", inputs.text, live_dir=None,
                                         progress=False, on_epoch=on_epoch)
    except optuna.TrialPruned as e:
        _finish(trial, folder, "pruned", str(e), scored, t0)
        raise
    except (TrainingDiverged, Diverged) as e:
        _finish(trial, folder, "failed", f"diverged: {e}", scored, t0)
        raise
    except Exception as e:
        _finish(trial, folder, "failed", f"{type(e).__name__}: {e}", scored, t0)
        raise
    if final.get("stopped_on_collapse"):
        reason = f"collapsed for gan.collapse_patience epochs in a row; stopped after epoch {int(final.get('epochs', 0))}"
        _finish(trial, folder, "pruned", reason, scored, t0)
        raise optuna.TrialPruned(reason)
    if not scored:
        raise Diverged("the run ended before any epoch was scored")
    last = scored[max(scored)]
    _finish(trial, folder, "complete", "", scored, t0, last)
    values = tuple(float(last[k]) for k in names)
    return values[0] if single else values


def _finish(trial, folder: Path, state: str, reason: str, scored: dict, t0: float, last: dict | None = None) -> None:
    """The trial's outcome beside its model (trial.json) and in the study (user attributes)."""
    seconds = round(time.time() - t0, 1)
    trial.set_user_attr("epochs_trained", max(scored) if scored else 0)
    trial.set_user_attr("seconds", seconds)
    if reason:
        trial.set_user_attr("reason", reason)
    row = {"number": trial.number, "state": state, "reason": reason, "seconds": seconds, "params": trial.params,
           "epochs": {str(k): v for k, v in scored.items()}, "metrics": last}
    (folder / "trial.json").write_text(json.dumps(row, indent=1, sort_keys=True, default=float))
