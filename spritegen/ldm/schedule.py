"""The stage schedule of the latent diffusion family: a list of phases, as data.

A *phase* says, for a range of epochs, which components train, at which learning rates, with which
loss weights, and whether the learning rate restarts warm. Each phase is tagged with the DVC stage
that runs it (``vae``, ``unet`` or ``finetune``): ``spritegen train ldm --stage unet`` runs exactly the
phases tagged ``unet``, in order. Epoch ranges ``[start, end)`` count within their stage (each stage's
first phase starts at 0), so a stage depends on its own epoch budget only: lengthening the fine-tune
never re-runs the VAE. The seeds' global notation ("Epoch 20-25: VAE + text encoder") is the sum.

Seed 000's strategies are named schedules (``ldm.strategy``) expanded from the per-stage epoch budgets
``ldm.stage_epochs``; ``strategy: custom`` takes ``ldm.phases`` verbatim. Examples: docs/ldm.md.

    spritegen params --preset tiny     # shows the resolved ldm section
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from spritegen.config import ConfigError

Stage = Literal["vae", "unet", "finetune"]
Component = Literal["text", "vae", "unet", "align", "disc"]
STAGES: tuple[str, ...] = ("vae", "unet", "finetune")
COMPONENTS: tuple[str, ...] = ("text", "vae", "unet", "align", "disc")

# Loss terms (see spritegen/ldm/losses.py) and, per stage, the weights a phase starts from.
LOSS_TERMS: tuple[str, ...] = ("recon", "perceptual", "kl", "diffusion", "align", "consistency", "adv")
DEFAULT_LOSS_WEIGHTS: dict[str, dict[str, float]] = {
    # the VAE's own objective; "align" only counts when the text encoder / align head train
    "vae": {"recon": 1.0, "perceptual": 1.0, "kl": 1.0, "align": 0.1},
    "unet": {"diffusion": 1.0, "align": 0.1},
    # seed 001 stage 3: alignment + reconstruction consistency, with the diffusion loss kept
    "finetune": {"diffusion": 1.0, "align": 0.5, "consistency": 1.0, "recon": 1.0, "perceptual": 1.0, "kl": 1.0},
}
# Which terms a stage can compute at all (the U-Net does not exist in the vae stage).
STAGE_TERMS: dict[str, set[str]] = {
    "vae": {"recon", "perceptual", "kl", "align"},
    "unet": {"diffusion", "align", "recon", "perceptual", "kl", "adv"},
    "finetune": set(LOSS_TERMS),
}
STAGE_COMPONENTS: dict[str, set[str]] = {
    "vae": {"text", "vae", "align"},
    "unet": {"text", "vae", "unet", "align", "disc"},
    "finetune": set(COMPONENTS),
}


@dataclass
class Phase:
    """One phase of the schedule."""

    name: str = field(metadata={"doc": "label used in logs and checkpoints"})
    stage: Stage = field(metadata={"doc": "the DVC stage that runs this phase: vae | unet | finetune"})
    epochs: tuple[int, int] = field(metadata={"ge": 0, "doc": "epoch range [start, end) within its stage"})
    train: list[Component] = field(metadata={"doc": "components that train: text, vae, unet, align, disc"})
    lr: dict[str, float] = field(default_factory=dict, metadata={"gt": 0, "doc": "per-component learning rate overrides (default: the component section's lr)"})
    loss_weights: dict[str, float] = field(default_factory=dict, metadata={"doc": "loss weight overrides on top of the stage defaults"})
    warm_restart: bool = field(default=False, metadata={"doc": "keep optimiser moments of components that trained before and start at peak LR (no warmup)"})
    lr_schedule: Literal["onecycle", "cosine", "constant"] = field(default="onecycle", metadata={"doc": "LR schedule within the phase"})
    grad_clip: dict[str, float] = field(default_factory=dict, metadata={"gt": 0, "doc": "per-component max gradient norm overrides"})
    max_complexity: float = field(default=1.0, metadata={"gt": 0, "le": 1, "doc": "curriculum: use prompts up to this quantile of description complexity (word count)"})

    @property
    def start(self) -> int:
        return self.epochs[0]

    @property
    def end(self) -> int:
        return self.epochs[1]

    def weights(self) -> dict[str, float]:
        return {**DEFAULT_LOSS_WEIGHTS[self.stage], **self.loss_weights}


@dataclass
class StageEpochs:
    vae: int = field(default=80, metadata={"ge": 1, "doc": "epochs of the vae stage (named strategies)"})
    unet: int = field(default=80, metadata={"ge": 1, "doc": "epochs of the unet stage (named strategies)"})
    finetune: int = field(default=2, metadata={"ge": 1, "doc": "epochs of the finetune stage (named strategies)"})


Strategy = Literal["three_stage", "progressive", "cyclical", "curriculum", "adversarial", "custom"]


@dataclass
class LDMScheduleConfig:
    """params.yaml ``ldm``: which strategy trains the latent diffusion system, and for how long (the run
    settings every family shares - seed, device, guards, logging - are in ``train``)."""

    strategy: Strategy = field(default="three_stage", metadata={"doc": "seed 001's three stages, a seed 000 strategy, or custom (ldm.phases)"})
    stage_epochs: StageEpochs = field(default_factory=StageEpochs, metadata={"doc": "epoch budget per DVC stage for named strategies"})
    phases: list[Phase] = field(default_factory=list, metadata={"doc": "strategy custom: the explicit phases"})
    align_lr: float = field(default=1e-3, metadata={"gt": 0, "doc": "learning rate of the alignment head and the discriminator"})

    def validate(self) -> None:
        if self.strategy == "custom" and not self.phases:
            raise ConfigError("phases: strategy 'custom' needs a non-empty list of phases")
        if self.strategy != "custom" and self.phases:
            raise ConfigError(f"phases: given, but strategy is {self.strategy!r}; set strategy: custom to use them")
        validate_phases(self.resolved_phases())

    def resolved_phases(self) -> list[Phase]:
        """Every stage's phases, in pipeline order (the order of custom phases across stages does not matter)."""
        return [p for stage in STAGES for p in self.phases_for(stage)]

    def phases_for(self, stage: str) -> list[Phase]:
        """The phases one DVC stage runs; a named strategy reads only that stage's epoch budget."""
        if self.strategy == "custom":
            return [p for p in self.phases if p.stage == stage]
        return expand_strategy(self.strategy, stage, getattr(self.stage_epochs, stage))


def validate_phases(phases: list[Phase]) -> None:
    """Empty, overlapping, gapped or out-of-stage-order phases are errors naming the phase."""
    if not phases:
        raise ConfigError("phases: the schedule has no phases")
    prev = None
    for i, p in enumerate(phases):
        where = f"phases[{i}] ({p.name})"
        if p.end <= p.start:
            raise ConfigError(f"{where}: empty epoch range {list(p.epochs)} (end must be > start)")
        if not p.train:
            raise ConfigError(f"{where}: trains nothing (train: [])")
        bad = sorted(set(p.train) - STAGE_COMPONENTS[p.stage])
        if bad:
            raise ConfigError(f"{where}: stage {p.stage} cannot train {bad}")
        for k in set(p.lr) | set(p.grad_clip):
            if k not in COMPONENTS:
                raise ConfigError(f"{where}: unknown component {k!r} in lr/grad_clip; components: {list(COMPONENTS)}")
        for what, values in (("lr", p.lr), ("grad_clip", p.grad_clip)):  # the field's gt 0 reaches no dict value
            for k, v in values.items():
                if not v > 0:
                    raise ConfigError(f"{where}: {what}.{k} must be > 0, got {v}")
        for k, w in p.loss_weights.items():
            if k not in LOSS_TERMS:
                raise ConfigError(f"{where}: unknown loss term {k!r}; terms: {list(LOSS_TERMS)}")
            if w < 0:
                raise ConfigError(f"{where}: loss weight {k} must be >= 0, got {w}")
        active = {k for k, w in p.weights().items() if w > 0}
        impossible = sorted(active & set(p.loss_weights) - STAGE_TERMS[p.stage])
        if impossible:
            raise ConfigError(f"{where}: stage {p.stage} cannot compute loss term(s) {impossible}")
        if "disc" in p.train and p.weights().get("adv", 0) <= 0:
            raise ConfigError(f"{where}: trains disc but loss weight adv is 0")
        first_of_stage = prev is None or prev.stage != p.stage
        if first_of_stage and p.start != 0:
            raise ConfigError(f"{where}: the first phase of stage {p.stage} must start at epoch 0 (epochs count within their stage), starts at {p.start}")
        if prev is not None:
            if not first_of_stage and p.start < prev.end:
                raise ConfigError(f"{where}: epochs {list(p.epochs)} overlap {prev.name} {list(prev.epochs)}")
            if not first_of_stage and p.start > prev.end:
                raise ConfigError(f"{where}: gap between {prev.name} (ends {prev.end}) and this phase (starts {p.start})")
        prev = p
    stages = {p.stage for p in phases}
    missing = [s for s in STAGES if s not in stages]
    if missing:
        raise ConfigError(f"phases: no phase for stage(s) {missing}; every DVC stage needs at least one")


# --- seed 000's strategies, as data -----------------------------------------------------------------


def _split(total: int, fractions: list[float]) -> list[int]:
    """Split ``total`` epochs by ``fractions``, every part >= 1 (so a short budget never makes an empty phase)."""
    n = len(fractions)
    if total < n:
        total = n
    parts = [max(1, round(total * f)) for f in fractions]
    parts[-1] = max(1, total - sum(parts[:-1]))
    while sum(parts) > total:  # rounding pushed us over: take from the largest part
        parts[parts.index(max(parts))] -= 1
    return parts


# strategy -> stage -> [(share of the stage's epochs, phase spec)]: seed 000's strategies, as data
STRATEGIES: dict[str, dict[str, list[tuple[float, dict]]]] = {
    "three_stage": {  # seed 001: VAE; U-Net with VAE+text frozen; text fine-tuned
        "vae": [(1.0, dict(name="vae", train=["vae"]))],
        "unet": [(1.0, dict(name="unet", train=["unet"]))],
        "finetune": [(1.0, dict(name="finetune", train=["text", "align"]))],
    },
    "progressive": {  # seed 000 strategy 1: progressive unfreezing with warm restarts
        "vae": [(0.8, dict(name="vae", train=["vae"])),
                (0.2, dict(name="vae+text", train=["vae", "text", "align"], warm_restart=True))],
        "unet": [(0.8, dict(name="unet", train=["unet"])),
                 (0.2, dict(name="unet+text", train=["unet", "text", "align"], warm_restart=True))],
        "finetune": [(0.4, dict(name="joint", train=["vae", "text", "unet", "align"], lr={"vae": 2e-5, "unet": 5e-5})),
                     (0.2, dict(name="text", train=["text", "align"], warm_restart=True)),
                     (0.4, dict(name="polish", train=["vae", "text", "unet", "align"], lr={"vae": 1e-5, "unet": 2e-5, "text": 2e-5},
                                lr_schedule="cosine"))],
    },
    "cyclical": {  # seed 000 strategy 2: cyclical component weighting (80/20 focus)
        "vae": [(1.0, dict(name="vae-focus", train=["vae", "text", "align"], loss_weights={"recon": 0.8, "perceptual": 0.8, "align": 0.2}))],
        "unet": [(0.5, dict(name="unet-focus", train=["unet", "text", "align"], loss_weights={"diffusion": 0.8, "align": 0.2})),
                 (0.5, dict(name="unet-joint", train=["unet", "text", "align"], loss_weights={"diffusion": 0.5, "align": 0.5}, warm_restart=True))],
        "finetune": [(0.5, dict(name="joint", train=["vae", "unet", "text", "align"], loss_weights={"diffusion": 0.5, "align": 0.5, "recon": 0.5})),
                     (0.5, dict(name="text-focus", train=["text", "align"], loss_weights={"align": 0.8, "diffusion": 0.2, "consistency": 0.2},
                                warm_restart=True))],
    },
    "curriculum": {  # seed 000 strategy 3: description complexity grows phase by phase
        "vae": [(1.0, dict(name="vae", train=["vae"]))],
        "unet": [(0.3, dict(name="unet-simple", train=["unet"], max_complexity=0.34)),
                 (0.3, dict(name="unet-medium", train=["unet", "text", "align"], max_complexity=0.67, warm_restart=True)),
                 (0.4, dict(name="unet-all", train=["unet"], warm_restart=True))],
        "finetune": [(1.0, dict(name="joint", train=["text", "unet", "align"], lr={"unet": 2e-5}))],
    },
    "adversarial": {  # seed 000 strategy 4: adversarial co-training + alignment loss
        "vae": [(1.0, dict(name="vae", train=["vae"]))],
        "unet": [(1.0, dict(name="unet", train=["unet"]))],
        "finetune": [(1.0, dict(name="adversarial", train=["text", "unet", "align", "disc"], loss_weights={"adv": 0.05}, lr={"unet": 2e-5}))],
    },
}


def expand_strategy(strategy: str, stage: str, epochs: int) -> list[Phase]:
    """The phases of ``stage`` under a named strategy, its ``epochs`` split by the strategy's shares."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy: unknown {strategy!r}")
    specs = STRATEGIES[strategy][stage]
    phases, start = [], 0
    for n, (_, spec) in zip(_split(epochs, [share for share, _ in specs]), specs):
        phases.append(Phase(stage=stage, epochs=(start, start + n), **spec))
        start += n
    return phases
