"""The benchmarks run: each is a script nobody imports, so an API change breaks it silently (the old
bench_ldm.py imported a function that had moved). Run on the tiny preset and synthetic sprites, one
timed step each; the figures themselves are not checked (speed belongs in benchmarks, not tests)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_train_runs_every_stage_and_prints_a_row_each(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks/bench_train.py"), "--preset", "tiny",
                          "--data", str(tmp_path / "none"), "--steps", "1", "--warmup", "1",
                          "--compare", "train.channels_last=true"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(("baseline", "train.channels_last"))]
    assert {(r[0], r[1]) for r in rows} == {(v, s) for v in ("baseline", "train.channels_last=true")
                                            for s in ("text", "vae", "unet", "finetune")}
    for r in rows:
        assert float(r[5]) == 0.0, f"{r[1]}: a training step read values back from the device"


def test_bench_samplers_and_eval_parse_their_arguments():
    for script in ("bench_samplers.py", "bench_eval.py", "bench_generate.py", "bench_serve.py", "replay_pruners.py"):
        out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage" in out.stdout, f"{script}: {out.stderr[-2000:]}"
