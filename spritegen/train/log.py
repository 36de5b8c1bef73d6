"""What a training stage reports (rank 0 only): dvclive, optional TensorBoard, a loss CSV and a curve
PNG, a progress bar with ETA, and a memory monitor.

    log = TrainLog("ldm vae", live_dir=Path("dvclive/ldm/vae"), total_steps=..., tensorboard_dir=None)
    log.interval(step, {"loss": 0.31})            # every train.log_every steps (values already on the host)
    log.epoch(epoch, step, {"train/loss": ..., "val/loss": ...}, rate={"images_per_s": 812.0})
    log.finish(out_dir)                            # history.csv + curves.png, dvclive summary

Numbers that depend on the machine's load (images/s, seconds, memory) are printed and written to
``logs/`` (spritegen/runlog.py), never to dvclive's git-tracked files or the DVC outs, so two runs of one
commit leave those files identical. The history of logged values is part of the run state: a resumed
run replays it, so its dvclive files equal an uninterrupted run's.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from pathlib import Path

import torch


def memory(device: torch.device) -> dict[str, float]:
    """Resident memory of this process (now and peak), and on CUDA the allocated and peak tensor memory, in MB."""
    out = {"rss_mb": _rss_now() / 2**20, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["cuda_allocated_mb"] = torch.cuda.memory_allocated(device) / 2**20
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _rss_now() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak is all there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Means:
    """Running means of per-step scalars, accumulated on the device; read (one host sync) per interval."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n: torch.Tensor | float = 0.0

    def add(self, values: dict[str, torch.Tensor], keep: torch.Tensor) -> None:
        """Add one step's values where ``keep`` (0-dim bool): a skipped step's NaN never enters a mean."""
        for k, v in values.items():
            v = torch.where(keep, v.detach().float(), torch.zeros((), device=v.device))
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n = self.n + keep.float()

    def read(self) -> dict[str, float]:
        """The means so far (one synchronisation for all of them), then start again."""
        if not self.sums:
            return {}
        values = (torch.stack(list(self.sums.values())) / torch.clamp(torch.as_tensor(self.n), min=1)).tolist()
        out = dict(zip(self.sums, values))
        self.sums, self.n = {}, 0.0
        return out


def _live(live_dir: Path):
    from dvclive import Live

    # dvcyaml=None: dvc.yaml (owned by the pipeline) declares our metrics and plots; dvclive must not
    # rewrite it. dvclive's own test mode (DVCLIVE_TEST, set by tests/conftest.py) needs a file name.
    dvcyaml = "dvc.yaml" if os.environ.get("DVCLIVE_TEST") else None
    return Live(str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=dvcyaml, report=None)


class TrainLog:
    def __init__(self, title: str, live_dir: Path | None, total_steps: int, tensorboard_dir: Path | None = None,
                 progress: bool | None = None, done_steps: int = 0):
        self.title = title
        self.history: list[dict] = []  # {"kind": "step"|"epoch", "step": n, "epoch": e, metrics...}
        self.live = _live(live_dir) if live_dir is not None else None
        self.tb = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(tensorboard_dir))
        self.total, self.done, self.t0 = total_steps, done_steps, time.time()
        self.done_at_start = done_steps
        self.bar = None
        if sys.stderr.isatty() if progress is None else progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn())
            self.task = self.bar.add_task(title, total=max(1, total_steps), completed=done_steps, loss=float("nan"))
            self.bar.start()

    # --- during training ---------------------------------------------------------------------------

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self.bar is not None:
            self.bar.update(self.task, advance=steps)

    def interval(self, step: int, values: dict[str, float]) -> None:
        """Running means over the last ``train.log_every`` steps."""
        self._record({"kind": "step", "step": step, **values})
        if self.bar is not None and "loss" in values:
            self.bar.update(self.task, loss=values["loss"])

    def epoch(self, epoch: int, step: int, metrics: dict[str, float], rate: dict[str, float] | None = None) -> None:
        """One row per epoch (deterministic values only); ``rate`` (images/s, memory) is printed, not logged."""
        self._record({"kind": "epoch", "step": step, "epoch": epoch, **metrics})
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith(("train/loss", "val/", "guard/skipped")))
        extra = " ".join(f"{k}={v:.0f}" for k, v in (rate or {}).items())
        self.say(f"{self.title} epoch {epoch} {shown} {extra} eta {self.eta()}")

    def eta(self) -> str:
        done = self.done - self.done_at_start
        if done <= 0:
            return "?"
        left = (time.time() - self.t0) / done * max(0, self.total - self.done)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def say(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.console.print(msg)
        else:
            print(msg, file=sys.stderr, flush=True)

    def image(self, name: str, path: Path) -> None:
        if self.live is not None:
            from PIL import Image

            self.live.log_image(name, Image.open(path))

    def replay(self, history: list[dict]) -> None:
        """A resumed run: log again what the interrupted run logged (dvclive started empty)."""
        for row in history:
            self._record(row)

    def _record(self, row: dict) -> None:
        # a NaN (a diverging validation loss) is kept as null: the history is saved as JSON with the run state
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        self.history.append(row)
        values = {k: v for k, v in row.items() if k not in ("kind", "step", "epoch") and v is not None}
        prefix = "train_step/" if row["kind"] == "step" else "epoch/"
        x = row["step"] if row["kind"] == "step" else row["epoch"]
        if self.live is not None:
            self.live.step = x
            for k, v in values.items():
                self.live.log_metric(prefix + k, v)
            if row["kind"] == "epoch":
                self.live.make_summary()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(prefix + k, v, x)

    # --- at the end ----------------------------------------------------------------------------------

    def finish(self, out_dir: Path | None, summary: dict[str, float] | None = None) -> None:
        if self.bar is not None:
            self.bar.stop()
        if out_dir is not None:
            write_history(self.history, Path(out_dir))
        if self.live is not None:
            for k, v in (summary or {}).items():
                if math.isfinite(v):
                    self.live.summary[k] = v
            self.live.end()
        if self.tb is not None:
            self.tb.close()

    def close(self) -> None:
        """Stop the progress bar without writing anything (an interrupted or failed stage)."""
        if self.bar is not None:
            self.bar.stop()


def write_history(history: list[dict], out_dir: Path) -> None:
    """The seeds' loss CSV (one row per epoch) and a training-curve PNG (train and val losses by epoch)."""
    import csv

    rows = [r for r in history if r["kind"] == "epoch"]
    if not rows:
        return
    keys = ["epoch", "step"] + sorted({k for r in rows for k in r} - {"kind", "epoch", "step"})
    with open(out_dir / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in rows:
            w.writerow([_fmt("" if r.get(k) is None else r[k]) for k in keys])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [k for k in keys if k.startswith(("train/", "val/")) and "grad_norm" not in k]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in curves:
        ax.plot([r["epoch"] for r in rows], [math.nan if r.get(k) is None else r[k] for r in rows], label=k)
    ax.set_xlabel("epoch")
    if all(r.get(k) is None or r[k] > 0 for r in rows for k in curves):  # losses that can go negative (hinge, InfoNCE gaps) stay linear
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=80, metadata={"Software": None})
    plt.close(fig)


def _fmt(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)
