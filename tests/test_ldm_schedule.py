"""Stage schedules: parsing, named strategies, and the errors for bad phases."""

import pytest

from spritegen.config import ConfigError, from_dict
from spritegen.ldm.schedule import LDMScheduleConfig, StageEpochs, expand_strategy, validate_phases
from spritegen.params import load_all

STRATEGIES = ["three_stage", "progressive", "cyclical", "curriculum", "adversarial"]


def _cfg(phases, **kw):
    return from_dict(LDMScheduleConfig, {"strategy": "custom", "phases": phases, **kw}, "ldm")


def _three(**over):
    """A custom schedule; epochs count within each stage."""
    phases = [
        {"name": "vae", "stage": "vae", "epochs": [0, 2], "train": ["vae"]},
        {"name": "unet", "stage": "unet", "epochs": [0, 3], "train": ["unet"], "lr": {"unet": 2e-4}, "warm_restart": False},
        {"name": "unet2", "stage": "unet", "epochs": [3, 5], "train": ["unet"], "warm_restart": True},
        {"name": "ft", "stage": "finetune", "epochs": [0, 1], "train": ["text", "align"], "loss_weights": {"align": 1.0}},
    ]
    for i, d in over.items():
        phases[int(i)].update(d)
    return phases


def test_custom_schedule_parses_and_splits_by_stage():
    cfg = _cfg(_three())
    assert [p.name for p in cfg.phases_for("unet")] == ["unet", "unet2"]
    unet = cfg.phases_for("unet")[0]
    assert unet.epochs == (0, 3) and unet.lr == {"unet": 2e-4}
    ft = cfg.phases_for("finetune")[0]
    assert ft.weights()["align"] == 1.0 and ft.weights()["diffusion"] == 1.0  # stage defaults + overrides


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("budget", [StageEpochs(), StageEpochs(vae=1, unet=1, finetune=1), StageEpochs(vae=3, unet=7, finetune=5)])
def test_named_strategies_are_valid_for_any_budget(strategy, budget):
    phases = [p for stage in ("vae", "unet", "finetune") for p in expand_strategy(strategy, stage, getattr(budget, stage))]
    validate_phases(phases)
    for stage, n in (("vae", budget.vae), ("unet", budget.unet), ("finetune", budget.finetune)):
        mine = [p for p in phases if p.stage == stage]
        assert mine and all(p.end > p.start for p in mine) and mine[0].start == 0
        assert sum(p.end - p.start for p in mine) == max(n, len(mine))


def test_progressive_matches_seed_000_shape():
    cfg = LDMScheduleConfig(strategy="progressive", stage_epochs=StageEpochs(vae=25, unet=25, finetune=50))
    phases = cfg.resolved_phases()
    assert [(p.name, p.epochs, p.warm_restart) for p in phases[:4]] == [
        ("vae", (0, 20), False), ("vae+text", (20, 25), True), ("unet", (0, 20), False), ("unet+text", (20, 25), True)]
    assert phases[-1].name == "polish" and phases[-1].end == 50


def test_a_stage_reads_only_its_own_budget():
    """Epochs count within a stage: the unet stage's phases do not move when the VAE trains longer,
    so a VAE budget change re-runs the U-Net only because the VAE itself changed."""
    a = LDMScheduleConfig(strategy="progressive", stage_epochs=StageEpochs(vae=25, unet=10, finetune=5))
    b = LDMScheduleConfig(strategy="progressive", stage_epochs=StageEpochs(vae=80, unet=10, finetune=9))
    assert a.phases_for("unet") == b.phases_for("unet")


def test_overlapping_phases_are_an_error():
    with pytest.raises(ConfigError, match="overlap"):
        _cfg(_three(**{"2": {"epochs": [2, 5]}}))


def test_empty_phase_is_an_error():
    with pytest.raises(ConfigError, match="empty epoch range"):
        _cfg(_three(**{"2": {"epochs": [3, 3]}}))
    with pytest.raises(ConfigError, match="trains nothing"):
        _cfg(_three(**{"1": {"train": []}}))


@pytest.mark.parametrize("over, message", [
    ({"2": {"epochs": [4, 5]}}, "gap"),
    ({"0": {"train": ["unet"]}}, "cannot train"),
    ({"1": {"loss_weights": {"bogus": 1.0}}}, "unknown loss term"),
    ({"0": {"loss_weights": {"diffusion": 1.0}}}, "cannot compute"),
    ({"1": {"lr": {"decoder": 1e-3}}}, "unknown component"),
    ({"3": {"train": ["disc"]}}, "adv is 0"),
    ({"0": {"epochs": [1, 2]}}, "must start at epoch 0"),
    ({"1": {"epochs": [2, 3]}}, "must start at epoch 0"),
])
def test_bad_phases_name_what_is_wrong(over, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(_three(**over))


def test_stage_order_and_missing_stage():
    phases = _three()
    shuffled = _cfg([phases[3], phases[1], phases[2], phases[0]])  # across stages, the order does not matter
    assert [p.name for p in shuffled.resolved_phases()] == ["vae", "unet", "unet2", "ft"]
    with pytest.raises(ConfigError, match="gap|start at epoch 0"):  # within a stage it does
        _cfg([phases[0], phases[2], phases[1], phases[3]])
    with pytest.raises(ConfigError, match=r"no phase for stage"):
        _cfg(_three()[:3])


def test_custom_needs_phases_and_phases_need_custom():
    with pytest.raises(ConfigError, match="custom"):
        from_dict(LDMScheduleConfig, {"strategy": "custom"}, "ldm")
    with pytest.raises(ConfigError, match="strategy: custom"):
        from_dict(LDMScheduleConfig, {"strategy": "progressive", "phases": _three()}, "ldm")


def test_unknown_key_and_bad_type_in_a_phase():
    with pytest.raises(ConfigError, match="unknown key"):
        _cfg(_three(**{"0": {"epoch": 3}}))
    with pytest.raises(ConfigError, match="not one of"):
        _cfg(_three(**{"0": {"stage": "decoder"}}))


@pytest.mark.parametrize("preset", [None, "tiny", "ci"])
def test_shipped_presets_validate(preset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: defaults + preset
    cfgs = load_all(None, preset)
    for stage in ("vae", "unet", "finetune"):
        assert cfgs["ldm"].phases_for(stage)


def test_learning_rate_schedules():
    from spritegen.train.optim import lr_at

    peak, total = 1e-3, 100
    assert lr_at("onecycle", peak, 0, total, False) == pytest.approx(peak / 25)
    assert lr_at("onecycle", peak, 10, total, False) == pytest.approx(peak)
    assert lr_at("onecycle", peak, 100, total, False) == pytest.approx(peak / 1e4)
    assert lr_at("onecycle", peak, 0, total, True) == pytest.approx(peak)  # warm restart: no warm-up
    assert lr_at("cosine", peak, 50, total, False) == pytest.approx(peak * (0.01 + 0.99 * 0.5))
    assert lr_at("constant", peak, 77, total, False) == peak
    lrs = [lr_at("onecycle", peak, s, total, False) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_ema_update_and_state_round_trip():
    import torch

    from spritegen.train.optim import EMA

    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)  # decay_1 = min(0.5, 2/11) = 2/11
    assert float(ema.shadow["weight"][0, 0]) == pytest.approx(1 - 2 / 11)
    other = EMA(m, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.step == 1 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    target = torch.nn.Linear(2, 1, bias=False)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.shadow["weight"])


def test_tokenizer_is_deterministic_and_covers_unseen_words():
    from spritegen.text.train import train_tokenizer

    prompts = [f"a {c} {t} type pokemon" for c in ("red", "blue", "green") for t in ("fire", "water")] * 3
    a, b = train_tokenizer(prompts, 500, 16), train_tokenizer(list(reversed(prompts)), 500, 16)
    assert a.get_vocab() == b.get_vocab()  # the same ids in every run (checkpoints depend on them)
    assert a.tokenize("a red pokemon") == ["a", "red", "pokemon"]
    assert "[UNK]" not in a.tokenize("tower")  # unseen word of seen characters: ## pieces
    ids = a("a red pokemon", padding="max_length", max_length=16)["input_ids"]
    assert len(ids) == 16 and ids[0] == a.cls_token_id
