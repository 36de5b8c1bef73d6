"""The shared training pieces (spritegen/train): atomic run state, resume keys, device-side guards, the
skipped step, EMA, device-resident batches, the prompt table, running means."""

import json
import math

import pytest
import torch

from spritegen.errors import UserError
from spritegen.train import state as st
from spritegen.train.config import AugmentConfig
from spritegen.train.guards import EarlyStopping, StepGuard, TrainingDiverged
from spritegen.train.log import Means
from spritegen.train.optim import EMA, adamw, guarded_step, skip_step

# --- atomic checkpoints --------------------------------------------------------------------------------


def _write_tensor(value: float):
    from safetensors.torch import save_file

    def write(folder):
        save_file({"w": torch.full((3,), value)}, str(folder / "model.safetensors"))
        (folder / "state.json").write_text(json.dumps({"value": value}))

    return write


def _read(root, name="last"):
    from spritegen.checkpoint import load_tensors

    folder = st.current(root, name)
    return float(load_tensors(folder / "model.safetensors")["w"][0]), json.loads((folder / "state.json").read_text())["value"]


def test_a_fault_between_files_leaves_the_previous_checkpoint_whole(tmp_path):
    st.write_atomic(tmp_path, "last", _write_tensor(1.0))

    def dies_half_way(folder):
        _write_tensor(2.0)(folder)
        (folder / "state.json").unlink()  # the second file never got written
        raise KeyboardInterrupt("killed between two files")

    with pytest.raises(KeyboardInterrupt):
        st.write_atomic(tmp_path, "last", dies_half_way)
    assert _read(tmp_path) == (1.0, 1.0)  # the pointer still names the complete version
    st.write_atomic(tmp_path, "last", _write_tensor(3.0))  # the next save replaces the leftover folder
    assert _read(tmp_path) == (3.0, 3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-000001", "last.json"]


def test_a_fault_before_the_pointer_moves_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    st.write_atomic(tmp_path, "last", _write_tensor(1.0))

    def no_pointer(data, path):
        raise OSError("disk full while writing the pointer")

    monkeypatch.setattr(st, "write_json", no_pointer)
    with pytest.raises(OSError):
        st.write_atomic(tmp_path, "last", _write_tensor(2.0))
    assert _read(tmp_path) == (1.0, 1.0)


def test_run_state_round_trip(tmp_path):
    model = {"unet.w": torch.arange(4.0), "unet_ema.__step__": torch.tensor(3)}
    optim = {"unet.w.exp_avg": torch.ones(4), "unet.w.step": torch.tensor(7.0)}
    st.save_run_state(tmp_path, model, optim, {"epoch": 2, "history": [{"kind": "epoch", "epoch": 1, "step": 5, "x": 0.5}]})
    m, o, meta = st.load_run_state(tmp_path)
    assert torch.equal(m["unet.w"], model["unet.w"]) and torch.equal(o["unet.w.step"], optim["unet.w.step"])
    assert meta["epoch"] == 2 and meta["history"][0]["x"] == 0.5
    assert st.load_run_state(tmp_path / "nothing") is None


def test_state_is_kept_only_for_the_same_key(tmp_path):
    out = tmp_path / "models/ldm/vae"
    said = []
    root = st.open_state(out, "aaa", resume=False, fresh=False, say=said.append)
    assert root == tmp_path / "models/ldm/.state/vae"  # beside the DVC out, never inside it
    st.write_atomic(root, "last", _write_tensor(1.0))
    assert st.open_state(out, "aaa", resume=False, fresh=False, say=said.append) == root and st.current(root, "last")
    st.open_state(out, "aaa", resume=False, fresh=True, say=said.append)  # --fresh
    assert st.current(root, "last") is None and "--fresh" in said[-1]
    st.write_atomic(root, "last", _write_tensor(1.0))
    st.open_state(out, "bbb", resume=True, fresh=False, say=said.append)  # --resume keeps another key's state
    assert st.current(root, "last") is not None and "fingerprint differs" in said[-1]
    st.open_state(out, "bbb", resume=False, fresh=False, say=said.append)  # a changed key: discarded
    assert st.current(root, "last") is None and "differ" in said[-1]


def test_fingerprint_follows_params_and_bytes(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("x")
    a = st.fingerprint({"vae": {"lr": 1.0}}, [tmp_path / "d"])
    assert a == st.fingerprint({"vae": {"lr": 1.0}}, [tmp_path / "d"])
    assert a != st.fingerprint({"vae": {"lr": 2.0}}, [tmp_path / "d"])
    (tmp_path / "d" / "a.txt").write_text("y")
    assert a != st.fingerprint({"vae": {"lr": 1.0}}, [tmp_path / "d"])


def test_resume_params_diff_names_each_key():
    saved = {"unet": {"lr": 1e-3, "ema_decay": 0.99}, "train": {"seed": 0}}
    now = {"unet": {"lr": 5e-4, "ema_decay": 0.99}, "train": {"seed": 0}}
    assert st.params_diff(saved, now) == [("unet.lr", 1e-3, 5e-4)]
    with pytest.raises(UserError, match=r"unet.lr: checkpoint 0.001 -> params.yaml 0.0005"):
        st.check_resume_params(saved, now, allow=False, say=print)
    said = []
    st.check_resume_params(saved, now, allow=True, say=said.append)
    assert "unet.lr" in said[0]


# --- guards, the skipped step, EMA ---------------------------------------------------------------------


def test_guard_judges_on_the_device_and_stops_after_a_run_of_bad_steps():
    g = StepGuard(max_bad=3, explode_factor=10.0, device=torch.device("cpu"), warmup=5)
    one = torch.tensor(1.0)
    assert bool(g.judge(torch.tensor(float("nan")), one))  # a NaN loss: skip
    assert bool(g.judge(one, torch.tensor(float("nan"))))  # a NaN gradient norm: skip
    for _ in range(5):
        assert not bool(g.judge(one, one))  # a good step resets the run of bad ones
    assert bool(g.judge(one, torch.tensor(100.0)))  # > 10 x the median of good norms: explosion
    assert bool(g.judge(one, torch.tensor(float("inf"))))
    assert g.check() == {"nan_loss": 1, "nan_grad": 2, "exploded": 1, "skipped": 4}  # 2 in a row < 3: go on
    state = json.loads(json.dumps(g.state()))  # JSON-safe (empty slots of the norm buffer are null)
    g.judge(one, torch.tensor(float("inf")))
    g.judge(one, torch.tensor(float("inf")))
    with pytest.raises(TrainingDiverged, match="4 consecutive bad steps"):  # reported at the next check
        g.check()
    other = StepGuard(max_bad=3, explode_factor=10.0, device=torch.device("cpu"), warmup=5)
    other.load(state)
    assert other.check()["skipped"] == 4 and int(other.n_good) == 5


def test_guard_does_not_explode_before_warmup():
    g = StepGuard(max_bad=3, explode_factor=10.0, device=torch.device("cpu"), warmup=5)
    assert not bool(g.judge(torch.tensor(1.0), torch.tensor(1.0)))
    assert not bool(g.judge(torch.tensor(1.0), torch.tensor(1e6)))  # too few good steps to judge a norm


def test_a_skipped_step_changes_nothing_even_with_nan_gradients():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = adamw({"m": m.parameters()}, lr={"m": 0.1}, clip={"m": 1.0}, weight_decay=0.1)
    loss = m(torch.randn(4, 3)).pow(2).mean()
    loss.backward()
    skip_step(opt, torch.tensor(False))  # a real step first: moments exist
    before = {k: v.clone() for k, v in m.state_dict().items()}
    moments = {k: v.clone() for k, v in opt.state[m.weight].items()}
    for p in m.parameters():
        p.grad = torch.full_like(p, float("nan"))
    skip_step(opt, torch.tensor(True))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(torch.equal(moments[k], v) for k, v in opt.state[m.weight].items())  # step count included


def test_guarded_step_clips_per_group_and_reports_norms():
    a, b = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    opt = adamw({"a": a.parameters(), "b": b.parameters()}, lr={"a": 0.0, "b": 0.0}, clip={"a": 1e-3, "b": 1e3}, weight_decay=0)
    guard = StepGuard(max_bad=3, explode_factor=50.0, device=torch.device("cpu"))
    x = torch.ones(1, 2)
    bad, norms = guarded_step(opt, (100 * a(x) + 100 * b(x)).sum(), guard)
    assert not bool(bad)
    assert float(norms["a"]) == pytest.approx(100 * math.sqrt(2)) and float(a.weight.grad.norm()) == pytest.approx(1e-3, rel=1e-4)
    assert float(b.weight.grad.norm()) == pytest.approx(100 * math.sqrt(2))  # under its own limit: untouched


def test_ema_closed_form_and_skip():
    m = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m, skip=torch.tensor(True))  # a skipped optimiser step: the shadow stays
    assert float(ema.shadow["weight"][0, 0]) == 0.0
    ema.update(m)  # decay_2 = min(0.5, 3/12)
    assert float(ema.shadow["weight"][0, 0]) == pytest.approx(1 - 3 / 12)


def test_early_stopping_patience():
    e = EarlyStopping(patience=2, min_delta=0.1)
    assert e.update(1.0) and not e.stop
    assert not e.update(0.95) and not e.stop  # not better by min_delta
    assert not e.update(0.99) and e.stop
    assert not EarlyStopping(patience=0).stop


def test_means_leave_skipped_steps_out():
    m = Means()
    m.add({"loss": torch.tensor(1.0)}, torch.tensor(True))
    m.add({"loss": torch.tensor(float("nan"))}, torch.tensor(False))
    m.add({"loss": torch.tensor(3.0)}, torch.tensor(True))
    assert m.read() == {"loss": 2.0} and m.read() == {}


# --- data on the device ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split():
    from spritegen.data.synthetic import make_sprites
    from spritegen.data.dataset import SpriteSplit

    images, records = make_sprites(10, 16, 0)
    return SpriteSplit(images, records)


def test_an_epoch_visits_every_sprite_once_and_is_reproducible(split):
    from spritegen.train.batches import SpriteBatches

    data = SpriteBatches(split, torch.device("cpu"))
    pool = data.pool()
    a = list(data.epoch(torch.Generator().manual_seed(3), 4, pool, hflip=0.5))
    b = list(data.epoch(torch.Generator().manual_seed(3), 4, pool, hflip=0.5))
    assert [len(x) for x in a] == [4, 4, 2]
    assert sorted(torch.cat([x.idx for x in a]).tolist()) == list(range(10))
    assert all(torch.equal(x.prompt, y.prompt) and torch.equal(x.flip, y.flip) for x, y in zip(a, b))
    for batch in a:  # every prompt belongs to its own sprite
        for i, p in zip(batch.idx.tolist(), batch.prompt.tolist()):
            assert data.prompts[p] in split.records[i].prompts


def test_curriculum_pool_keeps_the_short_prompts(split):
    from spritegen.train.batches import SpriteBatches

    data = SpriteBatches(split, torch.device("cpu"))
    short = data.pool(max_complexity=0.2)
    words = [len(p.split()) for p in data.prompts]
    limit = sorted(words)[int(0.2 * (len(words) - 1))]
    for i in range(len(data)):
        ids = short.ids[i, : short.count[i]].tolist()
        assert ids and all(words[j] <= max(limit, min(words[k] for k in ids)) for j in ids)


def test_batch_images_flip_and_augment(split):
    from spritegen.train.batches import Batch, SpriteBatches, augment

    data = SpriteBatches(split, torch.device("cpu"))
    batch = Batch(torch.tensor([0, 1]), torch.tensor([False, True]), torch.tensor([0, 0]))
    x = data.images(batch, AugmentConfig(), torch.Generator().manual_seed(0))
    ref = split.images[:2].float() / 127.5 - 1
    assert torch.equal(x[0], ref[0]) and torch.equal(x[1], ref[1].flip(-1))
    rotated = augment(x, AugmentConfig(rotation_deg=30), torch.Generator().manual_seed(0))
    assert not torch.equal(x, rotated) and torch.equal(rotated[:, :, 0, 0], torch.ones(2, 3))  # the corners fill with white
    y = augment(x, AugmentConfig(rotation_deg=30, brightness=0.2, contrast=0.2), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1 and not torch.equal(rotated, y)
    assert AugmentConfig().hue == 0 and AugmentConfig().only_flip  # prompts name colours: no hue jitter by default
    grey = torch.zeros(1, 3, 4, 4)
    assert torch.allclose(augment(grey, AugmentConfig(hue=0.5), torch.Generator().manual_seed(0)), grey, atol=1e-5)  # grey has no hue


def test_prompt_table_gathers_what_the_encoder_computes():
    from spritegen.text.encoder import TextEncoder, build_bert, TextConfig
    from spritegen.text.train import train_tokenizer
    from spritegen.train.text import PromptTable

    prompts = ["a red fire type pokemon", "a blue water type pokemon", "a small green one"]
    cfg = TextConfig(hidden_size=16, num_layers=1, num_heads=2, max_length=12)
    tok = train_tokenizer(prompts, 100, 12)
    torch.manual_seed(0)
    enc = TextEncoder(build_bert(cfg, len(tok)).bert, tok, 12).eval()
    cached, live = PromptTable(enc, prompts, cache=True), PromptTable(enc, prompts, cache=False)
    ids = torch.tensor([2, 0])
    with torch.no_grad():
        ref, ref_mask = enc([prompts[2], prompts[0]])
        empty, _ = enc([""])
        for table in (cached, live):
            h, mask, e, e_mask = table.lookup(enc, ids)
            assert torch.allclose(h, ref, atol=1e-5) and torch.equal(mask, ref_mask) and torch.allclose(e, empty, atol=1e-5)
