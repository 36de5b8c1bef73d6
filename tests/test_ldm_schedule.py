"""Stage schedules: parsing, named strategies, and the errors for bad phases."""

import pytest

from spritegen.config import ConfigError, from_dict
from spritegen.ldm.schedule import LDMScheduleConfig, StageEpochs, expand_strategy, validate_phases
from spritegen.params import load_all

STRATEGIES = ["three_stage", "progressive", "cyclical", "curriculum", "adversarial"]


def _cfg(phases, **kw):
    return from_dict(LDMScheduleConfig, {"strategy": "custom", "phases": phases, **kw}, "ldm")


def _three(**over):
    phases = [
        {"name": "vae", "stage": "vae", "epochs": [0, 2], "train": ["vae"]},
        {"name": "unet", "stage": "unet", "epochs": [2, 5], "train": ["unet"], "lr": {"unet": 2e-4}, "warm_restart": False},
        {"name": "ft", "stage": "finetune", "epochs": [5, 6], "train": ["text", "align"], "loss_weights": {"align": 1.0}},
    ]
    for i, d in over.items():
        phases[int(i)].update(d)
    return phases


def test_custom_schedule_parses_and_splits_by_stage():
    cfg = _cfg(_three())
    assert [p.name for p in cfg.phases_for("unet")] == ["unet"]
    unet = cfg.phases_for("unet")[0]
    assert unet.epochs == (2, 5) and unet.lr == {"unet": 2e-4}
    ft = cfg.phases_for("finetune")[0]
    assert ft.weights()["align"] == 1.0 and ft.weights()["diffusion"] == 1.0  # stage defaults + overrides


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("budget", [StageEpochs(), StageEpochs(vae=1, unet=1, finetune=1), StageEpochs(vae=3, unet=7, finetune=5)])
def test_named_strategies_are_valid_for_any_budget(strategy, budget):
    phases = expand_strategy(strategy, budget)
    validate_phases(phases)
    for stage, n in (("vae", budget.vae), ("unet", budget.unet), ("finetune", budget.finetune)):
        mine = [p for p in phases if p.stage == stage]
        assert mine and all(p.end > p.start for p in mine)
        assert sum(p.end - p.start for p in mine) == max(n, len(mine))


def test_progressive_matches_seed_000_shape():
    phases = expand_strategy("progressive", StageEpochs(vae=25, unet=25, finetune=50))
    assert [(p.name, p.epochs, p.warm_restart) for p in phases[:4]] == [
        ("vae", (0, 20), False), ("vae+text", (20, 25), True), ("unet", (25, 45), False), ("unet+text", (45, 50), True)]
    assert phases[-1].name == "polish" and phases[-1].end == 100


def test_overlapping_phases_are_an_error():
    with pytest.raises(ConfigError, match="overlap"):
        _cfg(_three(**{"1": {"epochs": [1, 5]}}))


def test_empty_phase_is_an_error():
    with pytest.raises(ConfigError, match="empty epoch range"):
        _cfg(_three(**{"1": {"epochs": [2, 2]}, "2": {"epochs": [2, 3]}}))
    with pytest.raises(ConfigError, match="trains nothing"):
        _cfg(_three(**{"1": {"train": []}}))


@pytest.mark.parametrize("over, message", [
    ({"1": {"epochs": [3, 5]}}, "gap"),
    ({"0": {"train": ["unet"]}}, "cannot train"),
    ({"1": {"loss_weights": {"bogus": 1.0}}}, "unknown loss term"),
    ({"0": {"loss_weights": {"diffusion": 1.0}}}, "cannot compute"),
    ({"1": {"lr": {"decoder": 1e-3}}}, "unknown component"),
    ({"2": {"train": ["disc"]}}, "adv is 0"),
    ({"0": {"epochs": [1, 2]}}, "overlap|start at epoch 0"),
])
def test_bad_phases_name_what_is_wrong(over, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(_three(**over))


def test_stage_order_and_missing_stage():
    phases = _three()
    phases[1], phases[2] = dict(phases[2], epochs=[2, 3]), dict(phases[1], epochs=[3, 6])
    with pytest.raises(ConfigError, match="after stage"):
        _cfg(phases)
    with pytest.raises(ConfigError, match=r"no phase for stage"):
        _cfg(_three()[:2])


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
    from spritegen.ldm.train import lr_at

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

    from spritegen.ema import EMA

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


def test_guard_counts_and_stops():
    from spritegen.ldm.guards import StepGuard, TrainingDiverged
    import torch

    g = StepGuard(max_bad=3, explode_factor=10.0, warmup=5)
    assert g.loss_ok(torch.tensor(1.0)) and not g.loss_ok(torch.tensor(float("nan")))
    for _ in range(5):
        assert g.grads_ok(1.0)  # a good step resets the run of bad ones
    assert not g.grads_ok(100.0)  # > 10 x median: explosion
    assert not g.grads_ok(float("inf"))
    assert g.counts == {"nan_loss": 1, "nan_grad": 1, "exploded": 1, "skipped": 3}
    with pytest.raises(TrainingDiverged, match="3 consecutive bad steps"):
        g.loss_ok(torch.tensor(float("inf")))


def test_tokenizer_is_deterministic_and_covers_unseen_words():
    from spritegen.text.encoder import train_tokenizer

    prompts = [f"a {c} {t} type pokemon" for c in ("red", "blue", "green") for t in ("fire", "water")] * 3
    a, b = train_tokenizer(prompts, 500, 16), train_tokenizer(list(reversed(prompts)), 500, 16)
    assert a.get_vocab() == b.get_vocab()  # the same ids in every run (checkpoints depend on them)
    assert a.tokenize("a red pokemon") == ["a", "red", "pokemon"]
    assert "[UNK]" not in a.tokenize("tower")  # unseen word of seen characters: ## pieces
    ids = a("a red pokemon", padding="max_length", max_length=16)["input_ids"]
    assert len(ids) == 16 and ids[0] == a.cls_token_id
