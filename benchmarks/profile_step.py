"""Profile V-JEPA training steps: a Chrome/Perfetto trace, a table of the top kernels, NVTX ranges.

Runs ``--warmup`` untimed steps, then ``--steps`` steps of the fast (default) or reference
implementation under ``torch.profiler.profile`` (CPU and, when present, CUDA activities). Each
step and each phase (``target_fwd``, ``ctx_pred_fwd_bwd``, ``optimizer``, ``ema``, and the
reference's ``host_sync``) is wrapped in a ``torch.profiler.record_function`` label and, on CUDA,
an NVTX range, so the same run under Nsight Systems (``nsys profile -t cuda,nvtx python
benchmarks/profile_step.py ...``) shows the phases too.

Writes to ``--out-dir``:

* ``trace.json``: Chrome trace (open in https://ui.perfetto.dev or chrome://tracing);
* ``top_ops.txt``: ``key_averages().table()`` sorted by self device time (CUDA) or self CPU time;
* ``top_kernels.csv`` (CUDA only): GPU kernels by total time, with calls and share of GPU time.

    python benchmarks/profile_step.py --steps 5                           # ViT-L/16 16x224 b24, fast
    python benchmarks/profile_step.py --config configs/pretrain/vitl16.yaml --steps 5 --impl reference
    python benchmarks/profile_step.py --config configs/pretrain/tiny_cpu.yaml --steps 2 --out-dir /tmp/prof

``main(argv)`` is the entry point for ``vjepa-fast profile --config X --steps N``.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

import train_step as ts  # noqa: E402  (also puts the repository root on sys.path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="profile_step.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", default="fast", choices=["fast", "reference"])
    p.add_argument("--steps", type=int, default=5, help="profiled steps")
    p.add_argument("--warmup", type=int, default=3, help="unprofiled steps first")
    p.add_argument("--out-dir", default=None, help="output folder (default runs/profile/<impl>-<time>)")
    p.add_argument("--row-limit", type=int, default=30, help="rows in the tables")
    p.add_argument("--record-shapes", action="store_true", help="record input shapes (bigger trace)")
    p.add_argument("--with-stack", action="store_true", help="record Python stacks (much bigger trace)")
    ts.add_size_args(p)
    return p


def _top_kernels(prof, row_limit: int) -> list[dict]:
    """GPU kernels by total device time (from the profiler's device-side events)."""
    rows: dict[str, dict] = {}
    for evt in prof.events():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        r = rows.setdefault(evt.name, {"kernel": evt.name, "calls": 0, "total_us": 0.0})
        r["calls"] += 1
        r["total_us"] += evt.device_time_total
    total = sum(r["total_us"] for r in rows.values()) or 1.0
    out = sorted(rows.values(), key=lambda r: -r["total_us"])[:row_limit]
    for r in out:
        r["avg_us"] = round(r["total_us"] / r["calls"], 3)
        r["share"] = round(r["total_us"] / total, 5)
        r["total_us"] = round(r["total_us"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if args.config is None and args.overrides:
        build_parser().error(f"dotted overrides {args.overrides} need --config")
    if args.steps < 1:
        build_parser().error("--steps must be >= 1")
    setup = ts.make_setup(args)
    device = setup.device
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    if args.impl == "fast":
        ts.choose_attention(args, setup)
    stamp = f"{args.impl}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    out_dir = Path(args.out_dir or Path("runs") / "profile" / stamp)
    out_dir.mkdir(parents=True, exist_ok=True)

    model = setup.build_model()
    step = ts.make_step(args.impl, model, setup, compile=args.compile)
    clips_pool = [setup.clips(0), setup.clips(1)]
    for i in range(args.warmup):
        me, mp = setup.masks(i)
        step(clips_pool[i % 2], me, mp)
    ts.sync(device)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    timer = ts.PhaseTimer(device, ranges=True)
    with profile(activities=activities, record_shapes=args.record_shapes, with_stack=args.with_stack) as prof:
        for j in range(args.steps):
            i = args.warmup + j
            me, mp = setup.masks(i)
            if cuda:
                torch.cuda.nvtx.range_push(f"step_{i}")
            with record_function(f"step_{i}"):
                step(clips_pool[i % 2], me, mp, phase=timer)
            if cuda:
                torch.cuda.nvtx.range_pop()
        ts.sync(device)

    trace = out_dir / "trace.json"
    prof.export_chrome_trace(str(trace))
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=args.row_limit)
    (out_dir / "top_ops.txt").write_text(table + "\n")
    print(table)
    files = {"trace": str(trace), "top_ops": str(out_dir / "top_ops.txt")}
    if cuda:
        kernels = _top_kernels(prof, args.row_limit)
        path = out_dir / "top_kernels.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["kernel", "calls", "total_us", "avg_us", "share"])
            w.writeheader()
            w.writerows(kernels)
        files["top_kernels"] = str(path)
        print("\ntop GPU kernels by total time:")
        for r in kernels:
            ms = r["total_us"] / 1e3
            print(f"{r['share'] * 100:6.2f}%  {ms:9.3f} ms  {r['calls']:6d}x  {r['kernel'][:100]}")
    summary = {"bench": "profile_step", "impl": args.impl, **ts.environment(device), **setup.describe,
               **ts.model_desc(model),
               "batch": setup.batch, "frames": setup.frames, "crop": setup.crop,
               "dtype": ts.DTYPE_NAMES[setup.dtype], "steps": args.steps, "phases": timer.summary(),
               "files": files}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
