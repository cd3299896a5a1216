"""Training curves of a pretraining run: ``plot(run_dir)`` writes ``run_dir/training.png``.

Reads the per-step CSV log (``{write_tag}_r0.csv``) and draws three panels: loss (raw and a running
mean), learning rate and weight decay, and throughput (clips/s). Uses matplotlib's Agg backend (no
display needed).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

__all__ = ["plot", "read_log", "find_log"]


def find_log(run_dir: str | os.PathLike) -> Path:
    """The rank-0 CSV log of ``run_dir`` (``*_r0.csv``), or ``run_dir`` itself if it is a file."""
    p = Path(run_dir)
    if p.is_file():
        return p
    logs = sorted(p.glob("*_r0.csv"))
    if not logs:
        raise FileNotFoundError(f"no training log (*_r0.csv) in {p}")
    return logs[0]


def read_log(path: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of a training CSV as float lists (missing/blank cells become NaN)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols: dict[str, list[float]] = {k: [] for k in (reader.fieldnames or [])}
        for row in reader:
            for k in cols:
                v = row.get(k)
                try:
                    cols[k].append(float(v))
                except (TypeError, ValueError):
                    cols[k].append(float("nan"))
    if not cols or not cols.get("itr"):
        raise ValueError(f"{path} has no logged steps")
    return cols


def _running_mean(xs: list[float], k: int) -> list[float]:
    out, acc, window = [], 0.0, []
    for x in xs:
        window.append(x)
        acc += x
        if len(window) > k:
            acc -= window.pop(0)
        out.append(acc / len(window))
    return out


def plot(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """Write a PNG of loss, lr/wd and throughput for the run in ``run_dir``; returns its path
    (default ``run_dir/training.png``)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    log = find_log(run_dir)
    cols = read_log(log)
    x = cols["itr"]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    ax = axes[0]
    ax.plot(x, cols["loss"], lw=0.8, alpha=0.4, label="loss")
    ax.plot(x, _running_mean(cols["loss"], max(1, len(x) // 50)), lw=1.5, label="running mean")
    ax.set_ylabel("loss (L1)")
    ax.legend(loc="upper right")
    ax.set_title(f"V-JEPA pretraining: {Path(log).parent.name}")
    ax = axes[1]
    ax.plot(x, cols["lr"], color="tab:green", label="lr")
    ax.set_ylabel("learning rate")
    if "wd" in cols:
        ax2 = ax.twinx()
        ax2.plot(x, cols["wd"], color="tab:red", lw=1, label="weight decay")
        ax2.set_ylabel("weight decay")
        ax2.legend(loc="lower right")
    ax.legend(loc="upper right")
    ax = axes[2]
    if "clips/s" in cols:
        ax.plot(x, cols["clips/s"], color="tab:purple")
        ax.set_ylabel("throughput (clips/s)")
    else:  # older logs: ms per step only
        ax.plot(x, cols["wall-time(ms)"], color="tab:purple")
        ax.set_ylabel("ms / step")
    ax.set_xlabel("iteration")
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out) if out is not None else (log.parent / "training.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
