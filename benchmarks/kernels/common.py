"""Shared harness for the kernel microbenchmarks (GPU only).

* Timing: ``triton.testing.do_bench`` (warm-up, then the median and p20/p80 of repeated runs).
* Inputs are rotated: each timed call takes the next of several input sets whose total size is at
  least 3x the L2 cache, so no call reads data the previous one left in L2.
* Memory-bound kernels are reported in GB/s of the minimal traffic (each byte read or written
  once), next to the measured device-to-device copy bandwidth of the same GPU.
* Rows are appended to ``benchmarks/results/kernels.csv`` with the GPU name, torch / triton
  versions, the git commit (read from ``.git`` without running git) and a timestamp.
"""
from __future__ import annotations

import csv
import datetime as _dt
import itertools
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for envinfo
from envinfo import git_commit  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CSV_PATH = Path(os.environ.get("VJEPA_BENCH_CSV", REPO / "benchmarks" / "results" / "kernels.csv"))

# V-JEPA V1 at 16x224: N = 8*14*14 tokens, batch 24 per GPU, predictor width 384, official mean
# mask lengths after the collator's batch-min truncation (official_vjepa.md Appendix A).
N_TOKENS = 1568
BATCH = 24
PRED_DIM = 384
MASKS = {"short": (364, 746), "long": (103, 1101)}  # (context K, target K)
MODELS = {
    "vit_l": dict(dim=1024, depth=24, mlp=4096),
    "vit_h": dict(dim=1280, depth=32, mlp=5120),
}

CSV_FIELDS = [
    "timestamp", "gpu", "torch", "triton", "commit", "kernel", "impl", "mode", "model", "shape", "dtype",
    "ms_p50", "ms_p20", "ms_p80", "gbytes", "gbps", "copy_gbps",
]  # fmt: skip


def require_cuda(script: str) -> None:
    """Exit with a one-line message (status 2) when there is no CUDA GPU."""
    if not torch.cuda.is_available():
        print(f"{script}: needs a CUDA GPU (torch.cuda.is_available() is False); nothing run",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    os.environ.setdefault("VJEPA_FAST_KERNELS", "triton")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(f"{script}: TRITON_INTERPRET is set; unset it to benchmark compiled kernels.", file=sys.stderr)
        sys.exit(2)


def environment() -> dict:
    import triton

    return {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": git_commit(),
    }


def l2_bytes() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 50 * 2**20) or 50 * 2**20)


def n_input_sets(set_bytes: int, cap_bytes: int = 8 * 2**30) -> int:
    """How many copies of the inputs to rotate through so they span >= 3x L2 (memory permitting)."""
    want = math.ceil(3 * l2_bytes() / max(1, set_bytes))
    return int(max(1, min(want, cap_bytes // max(1, set_bytes), 64)))


def do_bench(fn: Callable[[], object], warmup: int = 25, rep: int = 200) -> tuple[float, float, float]:
    """(p50, p20, p80) in ms."""
    import triton.testing

    p50, p20, p80 = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
    return p50, p20, p80


def rotating(
    make_inputs: Callable[[], tuple], set_bytes: int, call: Callable[..., object]
) -> Callable[[], object]:
    """A zero-argument function that calls ``call(*inputs)`` on the next input set each time."""
    sets = [make_inputs() for _ in range(n_input_sets(set_bytes))]
    cycle = itertools.cycle(sets)
    return lambda: call(*next(cycle))


_COPY_GBPS: float | None = None


def copy_bandwidth(nbytes: int = 2**30) -> float:
    """Measured device-to-device copy bandwidth (GB/s, read + write) on a 1 GiB buffer."""
    global _COPY_GBPS
    if _COPY_GBPS is None:
        src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
        dst = torch.empty_like(src)
        ms, _, _ = do_bench(lambda: dst.copy_(src))
        _COPY_GBPS = 2 * nbytes / (ms * 1e-3) / 1e9
        del src, dst
        torch.cuda.empty_cache()
    return _COPY_GBPS


class Recorder:
    """Collects result rows, prints them as a table and appends them to the CSV."""

    def __init__(self, kernel: str):
        self.kernel = kernel
        self.env = environment()
        self.copy_gbps = copy_bandwidth()
        self.rows: list[dict] = []
        print(f"# {kernel} on {self.env['gpu']} (torch {self.env['torch']}, triton {self.env['triton']}, "
              f"commit {self.env['commit']}); device copy {self.copy_gbps:.0f} GB/s")  # fmt: skip
        header = ("impl", "mode", "model", "shape", "dtype", "p50 ms", "GB/s", "% copy")
        print("{:<22} {:<8} {:<6} {:<34} {:<9} {:>9} {:>8} {:>7}".format(*header))

    def add(self, impl: str, mode: str, model: str, shape: str, dtype: torch.dtype, ms: Sequence[float],
            nbytes: float) -> None:  # fmt: skip
        gbps = nbytes / (ms[0] * 1e-3) / 1e9
        row = dict(
            timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), kernel=self.kernel,
            impl=impl, mode=mode, model=model, shape=shape, dtype=str(dtype).replace("torch.", ""),
            ms_p50=f"{ms[0]:.5f}", ms_p20=f"{ms[1]:.5f}", ms_p80=f"{ms[2]:.5f}", gbytes=f"{nbytes / 1e9:.4f}",
            gbps=f"{gbps:.1f}", copy_gbps=f"{self.copy_gbps:.1f}", **self.env,
        )  # fmt: skip
        self.rows.append(row)
        print(f"{impl:<22} {mode:<8} {model:<6} {shape:<34} {row['dtype']:<9} {ms[0]:>9.4f} {gbps:>8.0f} "
              f"{100 * gbps / self.copy_gbps:>6.0f}%")  # fmt: skip

    def save(self, path: Path = CSV_PATH) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(self.rows)
        print(f"# appended {len(self.rows)} rows to {path}")


def unique_indices(b: int, n: int, k: int, dtype=torch.int32) -> torch.Tensor:
    """Sorted unique per-row token indices on the GPU, like the mask collator's."""
    return torch.rand(b, n, device="cuda").argsort(dim=1)[:, :k].sort(dim=1).values.to(dtype)


def encoder_param_shapes(model: str) -> list[tuple[int, ...]]:
    """Parameter shapes of a V-JEPA encoder (patch embed, blocks, final norm), as the EMA sees them."""
    cfg = MODELS[model]
    d, h = cfg["dim"], cfg["mlp"]
    shapes: list[tuple[int, ...]] = [(d, 3, 2, 16, 16), (d,)]
    for _ in range(cfg["depth"]):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (h, d), (h,), (d, h), (d,)]
    return shapes + [(d,), (d,)]


def bench_autograd(
    rec: Recorder,
    impl: str,
    fn: Callable[..., torch.Tensor],
    make_inputs: Callable[[], tuple],
    set_bytes: int,
    model: str,
    shape: str,
    dtype: torch.dtype,
    fwd_bytes: float,
    bwd_bytes: float | None = None,
) -> None:
    """Time ``fn(*inputs)`` in the modes forward (no grad), backward (autograd.grad through a saved
    graph) and full (forward + backward), rotating input sets. Inputs that require grad get grads."""
    run = rotating(make_inputs, set_bytes, lambda *a: _no_grad_call(fn, a))
    rec.add(impl, "forward", model, shape, dtype, do_bench(run), fwd_bytes)
    if bwd_bytes is None:
        return

    def make_graph():
        args = make_inputs()
        out = fn(*args)
        wrt = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        return out, wrt, torch.randn_like(out) if out.dim() else torch.ones_like(out)

    def backward_call(out, wrt, g):
        return torch.autograd.grad(out, wrt, g, retain_graph=True)

    back = rotating(make_graph, set_bytes, backward_call)
    rec.add(impl, "backward", model, shape, dtype, do_bench(back), bwd_bytes)

    def make_full():
        args = make_inputs()
        with torch.no_grad():
            out = fn(*args)
        return args, torch.randn_like(out) if out.dim() else torch.ones_like(out)

    def full_call(args, g):
        out = fn(*args)
        wrt = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        return torch.autograd.grad(out, wrt, g)

    full = rotating(make_full, set_bytes, full_call)
    rec.add(impl, "full", model, shape, dtype, do_bench(full), fwd_bytes + bwd_bytes)


def _no_grad_call(fn, args):
    with torch.no_grad():
        return fn(*args)


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def bench_args(name: str, description: str, argv=None, *, dtype: bool = True, models: bool = True, extra=()):
    """The shared command line of the kernel benchmarks (``--dtype``, ``--models``, ``--no-save``
    plus ``extra`` ``(flag, kwargs)`` pairs); refuses to run without CUDA."""
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=description)
    if dtype:
        ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    if models:
        ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    for flag, kwargs in extra:
        ap.add_argument(flag, **kwargs)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    require_cuda(name)
    return args
