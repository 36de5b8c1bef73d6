"""Training throughput of every stage, through the loop's own step, on this machine.

    python benchmarks/bench_train.py                                  # params.yaml on train.device
    python benchmarks/bench_train.py --preset gpu                     # the one-GPU profile
    python benchmarks/bench_train.py --set unet.batch_size=64         # a variant
    python benchmarks/bench_train.py --compare train.channels_last=true --compare train.precision=bf16

Per stage (text MLM, vae, unet, finetune) it runs the stage's first phase with the real pieces
(``prepare_stage``, ``setup_phase``, ``train_step`` - losses, the guarded fused step, EMA) on the prepared
data (``--data``, else synthetic sprites at ``prepare.resolution``) and prints:

* steps/s and images/s over ``--steps`` timed steps (after warm-up steps, so a compile is not timed);
* host reads per step: tensor -> Python conversions made inside a step (each one waits for a GPU);
* GFLOP per step (torch.utils.flop_counter, forward + backward) and the achieved share of a matmul peak
  measured in the same run, in the precision the stage runs in;
* the end-of-epoch cost (validation + run-state checkpoint), which the steps do not include.

With ``--compare``, each variant is measured after the baseline in the same process and the table gains
its speed-up (images/s ratio); a ratio is the number to trust on a shared machine. Weights are random:
speed does not depend on them.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HostReads:
    """Counts tensor -> Python conversions (item, float, int, bool, tolist, numpy) while active."""

    NAMES = ("item", "__float__", "__int__", "__bool__", "tolist", "numpy")

    def __init__(self):
        self.count, self.active, self.saved = 0, False, {}
        for name in self.NAMES:
            original = self.saved[name] = getattr(torch.Tensor, name)

            def wrapped(t, *a, _original=original, **k):
                if self.active:
                    self.count += 1
                return _original(t, *a, **k)

            setattr(torch.Tensor, name, wrapped)

    def close(self) -> None:
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, original)


def load_cfgs(params: Path | None, preset: str | None, overrides: list[str]) -> dict:
    """params.yaml + preset + ``key.sub=value`` overrides (values read as YAML), validated."""
    from spritegen.config import deep_merge
    from spritegen.params import raw_params, validate_sections

    data = raw_params(params, preset)
    for item in overrides:
        key, value = item.split("=", 1)
        node: dict = {}
        tip = node
        *path, last = key.split(".")
        for part in path:
            tip = tip.setdefault(part, {})
        tip[last] = yaml.safe_load(value)
        data = deep_merge(data, node)
    return validate_sections(data, ("train", "text", "vae", "unet", "ldm", "prepare"))


def load_data(path: Path | None, resolution: int):
    from spritegen.data.dataset import SpriteSplit, load_split
    from spritegen.data.synthetic import make_sprites

    if path is not None and (path / "train.safetensors").exists():
        return load_split(path, "train"), load_split(path, "val")
    images, records = make_sprites(256, resolution, 0)
    return SpriteSplit(images, records), SpriteSplit(images[:64], records[:64])


def bench_ldm_stage(stage: str, cfgs: dict, train, val, text, rt, warmup: int, steps: int) -> dict:
    from spritegen.ldm.models import LDM
    from spritegen.ldm.train import end_of_epoch, prepare_stage, setup_phase, train_step
    from spritegen.train.guards import EarlyStopping
    from spritegen.train.log import Means, TrainLog
    from spritegen.train.optim import set_lr

    ldm = LDM(text=copy.deepcopy(text), text_meta={}, vae_cfg=cfgs["vae"], unet_cfg=cfgs["unet"], resolution=train.resolution)
    torch.manual_seed(0)
    phase = cfgs["ldm"].phases_for(stage)[0]
    ldm.ensure(set(phase.train) | {"vae"} | ({"unet"} if stage != "vae" else set()))
    s = prepare_stage(stage, cfgs, ldm, train, rt)
    t = time.perf_counter()
    ph = setup_phase(s, phase, None)
    setup_s = time.perf_counter() - t
    B = ldm.vae_cfg.batch_size if stage == "vae" else ldm.unet_cfg.batch_size
    g = rt.generator("bench", stage)

    def batches():
        while True:
            yield from s.data.epoch(g, B, ph.pool, cfgs["train"].augment.hflip)

    it = batches()
    for i in range(warmup):
        set_lr(ph.opt, phase.lr_schedule, i, 1000, False)
        train_step(s, ph, next(it), g, 0.5)
    with FlopCounterMode(display=False) as fc:
        train_step(s, ph, next(it), g, 0.5)
    flops = fc.get_total_flops()
    reads = HostReads()
    _sync(rt.device)
    t, n_images = time.perf_counter(), 0
    try:
        reads.active = True
        for i in range(steps):
            batch = next(it)
            set_lr(ph.opt, phase.lr_schedule, i, 1000, False)
            train_step(s, ph, batch, g, 0.5)
            n_images += len(batch)
        reads.active = False
        _sync(rt.device)
    finally:
        reads.close()
    dt = time.perf_counter() - t
    # the end of an epoch: validation, logs, the run-state checkpoint
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        log = TrainLog("bench", None, 1, progress=False)
        t = time.perf_counter()
        end_of_epoch(s, ph, 1, steps, Means(), val, Path(tmp), log, EarlyStopping(0), {}, 2, 0.0)
        epoch_s = time.perf_counter() - t
    return {"batch": B, "steps_s": steps / dt, "images_s": n_images / dt, "reads": reads.count / steps,
            "gflop": flops / 1e9, "setup_s": setup_s, "epoch_s": epoch_s}


def bench_text(cfgs: dict, train, rt, warmup: int, steps: int) -> dict:
    from spritegen.text.encoder import additive_mask, build_bert
    from spritegen.text.train import SPECIAL_TOKENS, mask_tokens, train_tokenizer
    from spritegen.train.guards import StepGuard
    from spritegen.train.optim import adamw, guarded_step

    cfg = cfgs["text"]
    prompts = [p for r in train.records for p in r.prompts]
    tok = train_tokenizer(prompts, cfg.vocab_size, cfg.max_length)
    mlm = build_bert(cfg, len(tok)).to(rt.device).train()
    enc = tok(prompts, padding="max_length", truncation=True, max_length=cfg.max_length, return_tensors="pt")
    ids_all, att_all = enc["input_ids"].to(rt.device), enc["attention_mask"].to(rt.device)
    opt = adamw({"text": mlm.parameters()}, lr={"text": cfg.mlm_lr}, clip={"text": cfg.grad_clip}, weight_decay=0.01)
    guard = StepGuard(20, 50.0, rt.device)
    g = rt.generator("bench", "text")
    B = cfg.mlm_batch_size

    def step():
        idx = torch.randint(0, len(prompts), (B,), generator=g, device=rt.device)
        ids, labels = mask_tokens(ids_all[idx], att_all[idx], tok.convert_tokens_to_ids("[MASK]"), len(tok), len(SPECIAL_TOKENS),
                                  cfg.mlm_mask_prob, g)
        with rt.autocast():
            loss = mlm(input_ids=ids, attention_mask=additive_mask(att_all[idx]), labels=labels).loss
        guarded_step(opt, loss.float(), guard)

    for _ in range(warmup):
        step()
    with FlopCounterMode(display=False) as fc:
        step()
    reads = HostReads()
    _sync(rt.device)
    t = time.perf_counter()
    try:
        reads.active = True
        for _ in range(steps):
            step()
        reads.active = False
        _sync(rt.device)
    finally:
        reads.close()
    dt = time.perf_counter() - t
    return {"batch": B, "steps_s": steps / dt, "images_s": steps * B / dt, "reads": reads.count / steps,
            "gflop": fc.get_total_flops() / 1e9, "setup_s": 0.0, "epoch_s": 0.0}


def run_all(cfgs: dict, args) -> dict[str, dict]:
    from spritegen.text.encoder import TextEncoder, build_bert
    from spritegen.text.train import train_tokenizer
    from spritegen.train.runtime import start

    rt = start(cfgs["train"])
    train, val = load_data(args.data, cfgs["prepare"].resolution)
    tc = cfgs["text"]
    prompts = [p for r in train.records for p in r.prompts]
    tok = train_tokenizer(prompts, tc.vocab_size, tc.max_length)
    torch.manual_seed(0)
    text = TextEncoder(build_bert(tc, len(tok)).bert, tok, tc.max_length)
    out = {}
    for stage in args.stages:
        if stage == "text":
            out[stage] = bench_text(cfgs, train, rt, args.warmup, args.steps)
        else:
            out[stage] = bench_ldm_stage(stage, cfgs, train, val, text, rt, args.warmup, args.steps)
    out["_device"] = {"device": str(rt.device), "threads": torch.get_num_threads(), "precision": cfgs["train"].precision}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=None)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--data", type=Path, default=Path("data/prepared"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param (repeatable)")
    ap.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="a variant measured after the baseline in the same run (repeatable)")
    ap.add_argument("--stages", nargs="+", default=["text", "vae", "unet", "finetune"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()

    base_cfgs = load_cfgs(args.params, args.preset, args.set)
    rt_device = torch.device("cuda" if base_cfgs["train"].device != "cpu" and torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if base_cfgs["train"].precision == "bf16" else torch.float32
    peak = matmul_peak(rt_device, dtype)
    results = {"baseline": run_all(base_cfgs, args)}
    for variant in args.compare:
        results[variant] = run_all(load_cfgs(args.params, args.preset, args.set + variant.split(",")), args)
    info = results["baseline"]["_device"]
    print(f"device {info['device']}  threads {info['threads']}  precision {info['precision']}  "
          f"{str(dtype).removeprefix('torch.')} matmul peak {peak / 1e9:.0f} GFLOP/s  (steps {args.steps}, warm-up {args.warmup})")
    print(f"{'variant':<28} {'stage':<9} {'batch':>5} {'steps/s':>8} {'img/s':>9} {'reads/step':>10} {'GFLOP/step':>10} "
          f"{'% peak':>7} {'epoch-end s':>11} {'speed-up':>8}")
    for name, res in results.items():
        for stage in args.stages:
            r = res[stage]
            ratio = r["images_s"] / results["baseline"][stage]["images_s"]
            print(f"{name[:28]:<28} {stage:<9} {r['batch']:>5} {r['steps_s']:>8.2f} {r['images_s']:>9.1f} {r['reads']:>10.2f} "
                  f"{r['gflop']:>10.2f} {100 * r['gflop'] * 1e9 * r['steps_s'] / peak:>6.1f}% {r['epoch_s']:>11.2f} {ratio:>7.2f}x")


if __name__ == "__main__":
    main()
