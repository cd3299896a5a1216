"""Compile a :class:`~.plan.LaunchPlan` for a GPU that is not here, and read what the GPU would run.

``compile_plan(plan)`` specialises the plan's arguments exactly as Triton's JIT would at launch
(the same binder: pointer alignment, integers divisible by 16, integers equal to 1 folded into
constants, ``do_not_specialize``), compiles for ``GPUTarget("cuda", 90, 32)`` (Hopper: H100 / H200)
without a driver, and runs the ptxas bundled with Triton (``-v``) for registers, spills and stack.
The result carries the PTX, the JIT cache key (two plans with one key compile once at run time) and
derived figures: global loads and stores by width, 64-bit integer division, occupancy and waves.

Needs triton (Linux); nothing here launches anything. Used by ``tests/test_kernels_sm90.py`` and
``benchmarks/kernels/sm90_report.py``.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from .plan import HOPPER_SM_COUNT, LaunchPlan

# Hopper (sm_90) per-SM limits (CUDA occupancy rules; the same for H100 and H200).
_SM90 = dict(regs=65536, max_warps=64, max_blocks=32, smem=233472, reg_alloc_unit=256, max_regs_thread=255)


@dataclass
class CompiledPlan:
    """What ``compile_plan`` found for one plan (sizes in bytes)."""

    label: str
    kernel: str
    grid: tuple[int, ...]
    num_warps: int
    cache_key: str
    regs: int
    spill_bytes: int
    stack_bytes: int
    smem_bytes: int
    ptx: str = field(repr=False)
    ptxas_log: str = field(repr=False, default="")

    @property
    def n_programs(self) -> int:
        n = 1
        for g in self.grid:
            n *= g
        return n

    def global_accesses(self) -> Counter:
        """Counts of global load/store instructions in the PTX by kind, e.g. ``ld.v4.b32``, ``st.b16``."""
        return ptx_global_accesses(self.ptx)

    def hot_load_bits(self) -> int:
        """Width in bits of the global load kind that moves the most bytes in the PTX (the data
        loads, not the index loads: 128 = ``ld.global.v4.b32``, 16 = one bf16 per instruction)."""
        return _dominant(self.global_accesses(), "ld")

    def hot_store_bits(self) -> int:
        return _dominant(self.global_accesses(), "st")

    def has_int64_division(self) -> bool:
        """64-bit integer division or remainder (a slow emulated routine on the GPU)."""
        return bool(re.search(r"\b(div|rem)\.(s|u)64\b", self.ptx))

    def blocks_per_sm(self) -> int:
        """Resident programs per SM, limited by registers, shared memory, warps and blocks."""
        threads = 32 * self.num_warps
        regs_thread = max(self.regs, 1)
        regs_block = -(-regs_thread * threads // _SM90["reg_alloc_unit"]) * _SM90["reg_alloc_unit"]
        by_regs = _SM90["regs"] // regs_block
        by_smem = _SM90["smem"] // self.smem_bytes if self.smem_bytes else _SM90["max_blocks"]
        by_warps = _SM90["max_warps"] // self.num_warps
        return max(0, min(by_regs, by_smem, by_warps, _SM90["max_blocks"]))

    def occupancy(self) -> float:
        """Resident warps / 64 per SM."""
        return self.blocks_per_sm() * self.num_warps / _SM90["max_warps"]

    def waves(self, sm_count: int = HOPPER_SM_COUNT) -> float:
        """Programs / resident capacity of the whole GPU (1.0 = exactly one full wave)."""
        cap = self.blocks_per_sm() * sm_count
        return self.n_programs / cap if cap else float("inf")

    def row(self, sm_count: int = HOPPER_SM_COUNT) -> dict:
        return {
            "kernel": self.kernel, "config": self.label, "compiled": True, "grid": list(self.grid),
            "programs": self.n_programs, "warps": self.num_warps, "regs": self.regs,
            "spill_bytes": self.spill_bytes, "stack_bytes": self.stack_bytes, "smem_bytes": self.smem_bytes,
            "occupancy": round(self.occupancy(), 3), "waves": round(self.waves(sm_count), 3),
            "hot_load_bits": self.hot_load_bits(), "hot_store_bits": self.hot_store_bits(),
            "accesses": dict(self.global_accesses()),
            "int64_div": self.has_int64_division(), "cache_key": self.cache_key,
        }  # fmt: skip


_ACCESS = re.compile(r"\b(ld|st)\.global(?:\.[a-z_]+)*?(?:\.(v2|v4|v8))?\.(b8|b16|b32|b64|u8|u16|u32|u64|s8|s16|s32|s64|f16|f32|f64)\b")  # fmt: skip


def ptx_global_accesses(ptx: str) -> Counter:
    counts: Counter = Counter()
    for op, vec, ty in _ACCESS.findall(ptx):
        counts[f"{op}{'.' + vec if vec else ''}.b{ty[1:]}"] += 1
    return counts


def _dominant(counts: Counter, op: str) -> int:
    best_bits, best_bytes = 0, -1
    for kind, n in counts.items():
        parts = kind.split(".")
        if parts[0] != op:
            continue
        lanes = int(parts[1][1:]) if parts[1].startswith("v") else 1
        bits = lanes * int(parts[-1][1:])
        if n * bits > best_bytes or (n * bits == best_bytes and bits > best_bits):
            best_bits, best_bytes = bits, n * bits
    return best_bits


def _target(arch: int):
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", arch, 32)


def _jit(kernel):
    from triton.runtime.jit import JITFunction

    if not isinstance(kernel, JITFunction):
        raise TypeError(
            f"{getattr(kernel, '__name__', kernel)!r} is not a compiled-mode Triton kernel "
            f"({type(kernel).__name__}): TRITON_INTERPRET was set when vjepa_fast.kernels was imported. "
            "Compile ahead of time in a process without TRITON_INTERPRET (benchmarks/kernels/sm90_report.py)."
        )
    return kernel


def specialization(plan: LaunchPlan, arch: int = 90):
    """(cache key, signature, constexprs, attrs, options) as Triton's JIT computes them for ``plan``."""
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import compute_cache_key, create_function_from_signature

    kernel = _jit(plan.kernel)
    backend = make_backend(_target(arch))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {**plan.constexprs, **plan.options()}
    bound, spec, opts = binder(*plan.args, **kwargs)
    key = compute_cache_key({}, spec, opts)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, opts)
    return key, signature, constexprs, attrs, options


def ptxas_path() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(path):
        raise FileNotFoundError(f"ptxas not found at {path} (the triton package ships it on Linux x86-64)")
    return path


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_STACK = re.compile(r"(\d+) bytes stack frame")


def ptxas_stats(ptx: str, arch: str = "sm_90a") -> tuple[int, int, int, str]:
    """(registers, spill bytes (stores + loads), stack-frame bytes, log) from ``ptxas -v``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas_path(), f"--gpu-name={arch}", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed ({proc.returncode}):\n{log[-2000:]}")
    regs = _PTXAS_REGS.search(log)
    spill = _PTXAS_SPILL.search(log)
    stack = _PTXAS_STACK.search(log)
    return (int(regs.group(1)) if regs else 0, sum(map(int, spill.groups())) if spill else 0,
            int(stack.group(1)) if stack else 0, log)  # fmt: skip


_COMPILED: dict = {}


def compile_plan(plan: LaunchPlan, arch: int = 90, run_ptxas: bool = True) -> CompiledPlan:
    """Compile ``plan`` for ``sm_{arch}`` as the JIT would; raises on a compile error.

    Plans with one specialisation (the same JIT cache key) are compiled once per process.
    """
    import triton
    from triton.compiler import ASTSource

    key, signature, constexprs, attrs, options = specialization(plan, arch)
    memo = (plan.kernel.__name__, key, arch, run_ptxas)
    if memo not in _COMPILED:
        compiled = triton.compile(ASTSource(plan.kernel, signature, constexprs, attrs), target=_target(arch),
                                  options=options.__dict__)  # fmt: skip
        ptx = compiled.asm["ptx"]
        stats = (0, 0, 0, "")
        if run_ptxas:
            stats = ptxas_stats(ptx, f"sm_{arch}a" if arch >= 90 else f"sm_{arch}")
        _COMPILED[memo] = (ptx, int(compiled.metadata.shared), stats)
    ptx, smem, (regs, spill, stack, log) = _COMPILED[memo]
    return CompiledPlan(
        label=plan.label, kernel=plan.kernel.__name__, grid=tuple(plan.grid), num_warps=plan.num_warps,
        cache_key=key, regs=regs, spill_bytes=spill, stack_bytes=stack, smem_bytes=smem, ptx=ptx,
        ptxas_log=log,
    )  # fmt: skip


def cache_key(plan: LaunchPlan, arch: int = 90) -> str:
    """The JIT cache key of ``plan`` (no compilation): equal keys share one compiled kernel."""
    return specialization(plan, arch)[0]


def all_plans() -> list[LaunchPlan]:
    """Every kernel's plans at the real V-JEPA shapes (each kernel module's ``aot_plans()``)."""
    import importlib

    plans: list[LaunchPlan] = []
    for name in ("masked_gather", "predictor_input", "sorted_predictor_input", "masked_l1_loss", "ema", "rope"):
        module = importlib.import_module(f"{__package__}.{name}")
        fn: Optional[callable] = getattr(module, "aot_plans", None)
        if fn is not None:
            plans.extend(fn())
    return plans
