"""Where a measurement ran, and its two ceilings: one JSON line for the top of a results file.

Prints (and with ``--out FILE`` appends) one JSON object: GPU name, SM count, memory, compute
capability, clocks as ``nvidia-smi`` reads them, driver, torch / CUDA / cuDNN / triton versions,
commit, date, and two measured ceilings of this device:

* ``matmul_tflops``: bf16 n x n x n matmul (n = 8192 on a GPU), median of timed products after
  warm-ups, 2 n^3 FLOP each: the compute ceiling that MFU figures are relative to;
* ``copy_gbps``: device-to-device copy of a 2 GiB buffer (bytes read + bytes written per second):
  the memory ceiling that the kernel benchmarks' GB/s are relative to.

On a CPU (``SIZE=tiny`` runs of ``gpu_measure.sh``) the same fields are filled at small sizes and
labelled ``device: cpu``; they check the script, they measure nothing worth keeping.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from envinfo import git_commit  # noqa: E402


def _timed(fn, device: torch.device, reps: int, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_tflops(device: torch.device, n: int, reps: int) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _timed(lambda: a @ b, device, reps) / 1e12


def copy_gbps(device: torch.device, nbytes: int, reps: int) -> float:
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    return 2 * nbytes / _timed(lambda: dst.copy_(src), device, reps) / 1e9


def nvidia_smi() -> dict:
    """Driver and clocks as nvidia-smi reports them ({} when it is not there)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    fields = ["driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "power.limit", "temperature.gpu"]
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    if not out:
        return {}
    return {f"smi_{k.replace('.', '_')}": v.strip() for k, v in zip(fields, out[0].split(","))}


def environment(device: torch.device, small: bool) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    rec = {
        "kind": "environment", "device": device.type, "torch": torch.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "triton": triton_version,
        "python": platform.python_version(), "commit": git_commit(),
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
    }  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec.update(device_name=props.name, sm_count=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                   l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1))
        rec.update(nvidia_smi())
        n, reps, nbytes = 8192, 10, 2 << 30
    else:
        rec.update(device_name=f"{platform.machine()} ({torch.get_num_threads()} threads)")
        n, reps, nbytes = 256, 3, 16 << 20
    if small:
        n, reps, nbytes = 256, 3, 16 << 20
    rec["matmul_tflops"] = round(matmul_tflops(device, n, reps), 3)
    rec["matmul"] = f"{'bf16' if device.type == 'cuda' else 'fp32'} {n}^3, median of {reps}"
    rec["copy_gbps"] = round(copy_gbps(device, nbytes, reps), 1)
    rec["copy"] = f"{nbytes >> 20} MiB device copy, read+write bytes, median of {reps}"
    if device.type == "cuda":  # clocks right after the load, not idle
        rec.update({f"{k}_after": v for k, v in nvidia_smi().items() if k.startswith("smi_clocks")})
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="tiny sizes (script checks, not measurement)")
    p.add_argument("--out", default=None, help="append the JSON line to this file as well")
    args = p.parse_args(argv)
    rec = environment(torch.device(args.device), args.small)
    line = json.dumps(rec)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
