"""The ``spritegen`` command.

Every subcommand declares its arguments here and dispatches lazily to ``module:function(args)``,
so ``spritegen --help`` stays fast and each procedure keeps a single entry point in its own module.

    spritegen data fetch [--source pokemon|pokesprite|folder] [--path DIR] [--descriptions FILE]
    spritegen data stats
    spritegen metadata | prepare                       # DVC stages
    spritegen train text                               # DVC stage: the text encoder every family reads
    spritegen train ldm --stage vae|unet|finetune      # DVC stages of the latent diffusion family
    spritegen train cvae                               # DVC stage of the conditional VAE family
    spritegen train gan                                # DVC stage of the GAN family
    spritegen sample "PROMPT" --n 8 --seed 0 --out grid.png
    spritegen evaluate --generated DIR --reference DIR [--prompts FILE]
    spritegen gate --baseline REV|FILE [--current metrics]   # exit 1: regressed, 2: cannot compare
    spritegen baseline update --reason "why"           # new ci baseline (then commit it)
    spritegen compare [EXP ...] [--format markdown]    # experiments side by side with CIs
    spritegen params [--preset tiny]                   # the resolved params, validated
    spritegen preset list | show NAME | apply NAME [--exp]   # named presets (spritegen/presets/)
    spritegen sweep run SWEEP.yaml [--study S] [--trials N] [--storage URL] [--workers K]   # Optuna (docs/sweeps.md)
    spritegen sweep best | plots | apply [TRIAL]  SWEEP.yaml [--study S]
    spritegen serve [--host H --allow-remote] [--port P] [--family ldm cvae gan]   # API + web page (docs/serve.md)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path


def _params_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=None, help="params file (default: ./params.yaml)")
    p.add_argument("--preset", default=None, help="apply a named preset on top (tiny, ci; spritegen preset list)")


def _run_state_args(p: argparse.ArgumentParser) -> None:
    """A training stage's resume flags (spritegen/train/state.py)."""
    p.add_argument("--resume", action="store_true",
                   help="continue the stage's interrupted run even if params, code or inputs changed (a changed param is an error "
                        "naming it, unless --allow-param-changes)")
    p.add_argument("--allow-param-changes", action="store_true", help="with --resume: continue under the changed params, and say which")
    p.add_argument("--fresh", action="store_true", help="discard an interrupted run's state and start from the beginning")
    p.add_argument("--dry-run", action="store_true", help="print the resolved params and stop")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs of this run (time-limited jobs); the same command continues it")


def _dispatch(target: str):
    def run(args: argparse.Namespace) -> int | None:
        module, func = target.split(":")
        return getattr(importlib.import_module(module), func)(args)

    return run


def _config_commands(sub) -> None:
    """Params and presets."""
    p = sub.add_parser("params", help="print the resolved, validated params (defaults filled in)")
    _params_args(p)
    p.set_defaults(run=_dispatch("spritegen.params_cli:main"))

    preset = sub.add_parser("preset", help="named presets: list, show, apply to params.yaml",
                            description="Named param overrides kept as YAML files in spritegen/presets/; "
                                        "see docs/presets.md.").add_subparsers(dest="preset_cmd", required=True)
    p = preset.add_parser("list", help="every preset: name, kind, description")
    p.set_defaults(run=_dispatch("spritegen.preset_cli:list_main"))
    p = preset.add_parser("show", help="what a preset sets (as YAML) and which presets it is made of")
    p.add_argument("name")
    p.set_defaults(run=_dispatch("spritegen.preset_cli:show_main"))
    p = preset.add_parser("apply", help="write a preset's overrides into params.yaml (validated first)")
    p.add_argument("name")
    p.add_argument("--params", type=Path, default=None, help="params file (default: ./params.yaml)")
    p.add_argument("--exp", action="store_true",
                   help="write nothing; print a 'dvc exp run -S key=value ...' line that runs the preset as an experiment")
    p.set_defaults(run=_dispatch("spritegen.preset_cli:apply_main"))


def _data_commands(sub) -> None:
    """Raw data and the data stages (metadata, prepare)."""
    data = sub.add_parser("data", help="raw data: fetch and inspect").add_subparsers(dest="data_cmd", required=True)
    p = data.add_parser("fetch", help="materialise data/raw deterministically from a source")
    _params_args(p)
    p.add_argument("--source", choices=["pokemon", "pokesprite", "folder"], default=None,
                   help="overrides data.source in params")
    p.add_argument("--path", type=Path, default=None, help="folder source: the user's sprite folder")
    p.add_argument("--descriptions", type=Path, default=None,
                   help="folder source: CSV or JSON of descriptions keyed by file name or national number")
    p.add_argument("--out", type=Path, default=Path("data/raw"))
    p.add_argument("--tarball", type=Path, default=None,
                   help="pokesprite source: a pokesprite-images-2.7.0.tgz downloaded elsewhere (checked against the pinned hash)")
    p.add_argument("--force", action="store_true", help="replace --out even if it was not written by data fetch")
    p.set_defaults(run=_dispatch("spritegen.data.sources:fetch_main"))
    p = data.add_parser("stats", help="counts per split, type and colour, sizes, skipped files")
    p.add_argument("--metadata", type=Path, default=Path("data/metadata.jsonl"))
    p.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    p.add_argument("--report", type=Path, default=None, help="ingest report (default: beside --metadata)")
    p.set_defaults(run=_dispatch("spritegen.data.stats:main"))

    # --- pipeline stages ----------------------------------------------------------------------------
    p = sub.add_parser("metadata", help="stage: decode raw sprites, measure colours, write prompts")
    _params_args(p)
    p.add_argument("--raw", type=Path, default=Path("data/raw"))
    p.add_argument("--out", type=Path, default=Path("data"))
    p.set_defaults(run=_dispatch("spritegen.data.metadata:main"))

    p = sub.add_parser("prepare", help="stage: resized tensors per split + preview grid")
    _params_args(p)
    p.add_argument("--raw", type=Path, default=Path("data/raw"))
    p.add_argument("--metadata", type=Path, default=Path("data/metadata.jsonl"))
    p.add_argument("--out", type=Path, default=Path("data/prepared"))
    p.set_defaults(run=_dispatch("spritegen.data.prepare:main"))


RESUMABLE = ("An interrupted run (killed, --stop-after) continues when the same command runs again with the same "
             "params, code and inputs; its result equals an uninterrupted run's.")


def _train_commands(sub) -> None:
    """The training stages, one subcommand per family."""
    train = sub.add_parser("train", help="stage: train the text encoder or a generator family").add_subparsers(dest="family", required=True)
    p = train.add_parser("text", help="the tokenizer + text encoder every family reads (MLM offline, or a local pretrained one)")
    _params_args(p)
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--out", type=Path, default=Path("models/text"))
    p.add_argument("--dry-run", action="store_true", help="print the resolved params and stop")
    p.set_defaults(run=_dispatch("spritegen.text.train:main"))

    p = train.add_parser("ldm", help="latent diffusion: VAE, U-Net, fine-tune", description=RESUMABLE)
    _params_args(p)
    p.add_argument("--stage", required=True, choices=["vae", "unet", "finetune"])
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--text", type=Path, default=Path("models/text"), help="the text stage's output (the vae stage starts from it)")
    p.add_argument("--out", type=Path, default=Path("models/ldm"))
    _run_state_args(p)
    p.set_defaults(run=_dispatch("spritegen.ldm.train:main"))

    # the conditional families: one frozen text stage, one output folder, the same resumable-run flags
    for family, help_text in (("cvae", "the conditional VAE of seed 004 (docs/cvae.md)"),
                              ("gan", "the text-conditioned GAN of seed 002 with its mode-collapse fixes (docs/gan.md)")):
        p = train.add_parser(family, help=help_text, description=RESUMABLE)
        _params_args(p)
        p.add_argument("--data", type=Path, default=Path("data/prepared"))
        p.add_argument("--text", type=Path, default=Path("models/text"), help="the text stage's output (frozen, read by the condition)")
        p.add_argument("--out", type=Path, default=Path(f"models/{family}"))
        _run_state_args(p)
        p.set_defaults(run=_dispatch(f"spritegen.{family}.train:main"))


def _sampling_commands(sub) -> None:
    """Sampling."""
    p = sub.add_parser("serve", help="the generation API and its web page (FastAPI + uvicorn; docs/serve.md)")
    _params_args(p)
    p.add_argument("--host", default=None, help="bind address (default: serve.host, 127.0.0.1); another needs --allow-remote")
    p.add_argument("--port", type=int, default=None, help="port (default: serve.port)")
    p.add_argument("--family", nargs="+", default=None, help="families to offer (default: serve.families)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (prints a warning)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=_dispatch("spritegen.serve.app:main"))

    p = sub.add_parser("sample", help="sample a PNG grid: one row of --n images per prompt")
    _params_args(p)
    p.add_argument("prompt", nargs="+", help="one or more prompts (quote each)")
    p.add_argument("--family", default="ldm")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: models/<family>)")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--temperature", type=float, default=None, help="cvae, gan: the noise's temperature (default: sample.temperature)")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpm++", "dpm++sde", "unipc"], default=None,
                   help="default: sample.sampler; spritegen.ldm.diffusion.make_sampler says which are SDE and ODE solvers")
    p.add_argument("--out", type=Path, default=Path("grid.png"))
    p.add_argument("--device", default=None, help="auto | cpu | cuda | mps (default: sample.device)")
    p.set_defaults(run=_dispatch("spritegen.sampling:sample_main"))

    p = sub.add_parser("sample-set", help="stage: fixed prompt set x fixed seeds -> PNGs for evaluation")
    _params_args(p)
    p.add_argument("--family", required=True)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--out", type=Path, default=None, help="default: samples/<family> (samples/<family>_vae with --reconstruct)")
    p.add_argument("--reconstruct", action="store_true",
                   help="write the prompted real sprites through the model's VAE instead of samples: the decoder's ceiling")
    p.set_defaults(run=_dispatch("spritegen.sample_set:sample_set_main"))


def _evaluation_commands(sub) -> None:
    """Evaluation, the gate, comparison."""
    p = sub.add_parser("evaluator", help="stage: train the dataset CLIP-style evaluator")
    _params_args(p)
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--out", type=Path, default=Path("models/evaluator"))
    p.add_argument("--metrics-file", type=Path, default=Path("metrics/evaluator.json"),
                   help="git-tracked copy of the evaluator's own retrieval/zero-shot scores")
    p.set_defaults(run=_dispatch("spritegen.evaluate.evaluator:main"))

    p = sub.add_parser("reference", help="stage: features and statistics of the real images")
    _params_args(p)
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--evaluator", type=Path, default=Path("models/evaluator"))
    p.add_argument("--out", type=Path, default=Path("reference"))
    p.set_defaults(run=_dispatch("spritegen.evaluate.reference:main"))

    p = sub.add_parser("evaluate", help="score generated images (a pipeline family, or any folder)")
    _params_args(p)
    p.add_argument("--family", default=None, help="stage mode: score samples/<family>")
    p.add_argument("--generated", type=Path, default=None, help="standalone: a folder of generated images")
    p.add_argument("--reference", type=Path, default=None, help="standalone: a folder of real images")
    p.add_argument("--prompts", type=Path, default=None, help="one prompt per generated image (sorted by name)")
    p.add_argument("--backend", default=None, help="feature backend: evaluator, inception, clip")
    p.add_argument("--out", type=Path, default=None, help="metrics JSON (default: metrics/<family>.json; standalone metrics.json)")
    p.add_argument("--name", default=None, help="standalone: the name written as 'family' (default: the folder name)")
    p.add_argument("--data", type=Path, default=Path("data/prepared"), help="stage mode: the prepared real sprites")
    p.add_argument("--samples", type=Path, default=Path("samples"), help="stage mode: folder of samples/<family>")
    p.add_argument("--evaluator", type=Path, default=Path("models/evaluator"))
    p.add_argument("--ref-cache", type=Path, default=Path("reference"), help="cached real features (spritegen reference)")
    p.add_argument("--plots", type=Path, default=None, help="plot folder (stage default: plots/evaluate/<family>)")
    p.set_defaults(run=_dispatch("spritegen.evaluate.suite:main"))

    p = sub.add_parser("report", help="stage: summary table and figure across families")
    _params_args(p)
    p.add_argument("--metrics", type=Path, default=Path("metrics"))
    p.add_argument("--plots", type=Path, default=Path("plots/report"), help="where the comparison figure goes")
    p.set_defaults(run=_dispatch("spritegen.evaluate.report:main"))

    p = sub.add_parser("gate", help="exit 1 with a table when a quality metric regressed (2: cannot compare)",
                       description="Compare metrics/<family>.json with a baseline; see docs/gate.md.")
    _params_args(p)
    p.add_argument("--baseline", required=True,
                   help="a metrics folder or JSON file, a git revision (its metrics/*.json) or REV:FOLDER")
    p.add_argument("--current", type=Path, default=Path("metrics"), help="current metrics folder or file")
    p.add_argument("--metrics", nargs="*", default=None, help="only these metrics (default: gate.metrics)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown")
    p.set_defaults(run=_dispatch("spritegen.evaluate.gate:main"))

    baseline = sub.add_parser("baseline", help="the ci quality baseline").add_subparsers(dest="baseline_cmd",
                                                                                         required=True)
    p = baseline.add_parser("update", help="make the current metrics the ci baseline (then commit it)")
    _params_args(p)
    p.add_argument("--reason", required=True, help="why the baseline changes (recorded in BASELINE.md/json)")
    p.add_argument("--current", type=Path, default=Path("metrics"), help="metrics folder of a ci-profile run")
    p.add_argument("--out", type=Path, default=Path("ci/baseline"))
    p.set_defaults(run=_dispatch("spritegen.evaluate.gate:baseline_update_main"))

    p = sub.add_parser("compare", help="table across experiments with confidence intervals")
    _params_args(p)
    p.add_argument("experiments", nargs="*", help="DVC experiment names or revs (default: all + workspace)")
    p.add_argument("--format", choices=["table", "markdown", "csv", "html"], default="table")
    p.add_argument("--out", type=Path, default=None, help="write there instead of printing")
    p.add_argument("--metrics", nargs="*", default=None, help="only these metrics (default: gate.metrics)")
    p.add_argument("--reference", default=None,
                   help="the run others are compared with (default: the experiments' baseline commit)")
    p.set_defaults(run=_dispatch("spritegen.evaluate.compare:main"))



def _sweep_commands(sub) -> None:
    """Optuna studies over the training params (spritegen/sweeps, docs/sweeps.md)."""
    sweep = sub.add_parser("sweep", help="Optuna studies: run, best, apply, plots",
                           description="Sweep definitions are YAML files in sweeps/ (docs/sweeps.md).").add_subparsers(
        dest="sweep_cmd", required=True)

    def common(p):
        p.add_argument("sweep", help="a definition file, or the name of a shipped one (kl_weight, lr_balance, stage_schedule)")
        p.add_argument("--study", default=None, help="the study of the file to use (needed when it defines several)")
        p.add_argument("--storage", default=None,
                       help="a journal file path (default: OUT/journal.log) or a database URL (postgresql://..., sqlite:///...)")
        p.add_argument("--out", type=Path, default=None, help="the study's folder (default: sweeps_out/<file>-<study>)")
        _params_args(p)

    p = sweep.add_parser("run", help="run (or continue) a study: each trial trains and evaluates the family")
    common(p)
    p.add_argument("--trials", type=int, default=None, help="finished trials to reach (default: the definition's budget.trials)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine, sharing the study")
    p.add_argument("--data", type=Path, default=Path("data/prepared"))
    p.add_argument("--text", type=Path, default=Path("models/text"))
    p.add_argument("--evaluator", type=Path, default=Path("models/evaluator"))
    p.add_argument("--ref-cache", type=Path, default=Path("reference"))
    p.add_argument("--no-plots", action="store_true", help="do not write the plots at the end")
    p.add_argument("--dvc-exp", action=argparse.BooleanOptionalAction, default=None,
                   help="save each completed trial as a DVC experiment (dvc exp show); default: on inside a git + DVC repository")
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)  # set for the workers --workers starts
    p.set_defaults(run=_dispatch("spritegen.sweeps.study:run_main"))
    p = sweep.add_parser("best", help="print the best trial (or the Pareto front) and the failed/pruned ones with reasons")
    common(p)
    p.set_defaults(run=_dispatch("spritegen.sweeps.study:best_main"))
    p = sweep.add_parser("plots", help="write the study's plots (PNG) into OUT/plots")
    common(p)
    p.set_defaults(run=_dispatch("spritegen.sweeps.study:plots_main"))
    p = sweep.add_parser("apply", help="write a trial's params (default: the best) into params.yaml, validated first")
    common(p)
    p.add_argument("trial", nargs="?", type=int, default=None, help="trial number (default: the best)")
    p.set_defaults(run=_dispatch("spritegen.sweeps.study:apply_main"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spritegen", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _config_commands(sub)
    _data_commands(sub)
    _train_commands(sub)
    _sampling_commands(sub)
    _evaluation_commands(sub)
    _sweep_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # OMP_WAIT_POLICY is left to the user. PASSIVE (threads sleep at barriers) helped a 2-thread
    # evaluator step beside other jobs on 2 cores, but on an idle machine it halved training
    # throughput (VAE 183 -> 85 img/s, U-Net 223 -> 148 img/s, interleaved A/B in one process each), and the
    # default machine is an idle one. On a shared machine: OMP_WAIT_POLICY=PASSIVE spritegen ...
    from spritegen.config import ConfigError
    from spritegen.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except ConfigError as e:
        print(f"spritegen: config error: {e}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"spritegen: error: {e}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
