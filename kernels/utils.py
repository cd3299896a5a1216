"""Launch helpers shared by the kernels: block sizes, dtype mapping (multi-tensor tables: multi_tensor.py).

What the Triton interpreter (TRITON_INTERPRET=1) cannot do, and how the kernels stay inside it:
* autotune: not used; block sizes come from the host heuristics below (large blocks and few programs
  when interpreting, ~4k-element tiles on a GPU), which also keeps launches deterministic and
  CUDA-graph safe;
* bf16 ``tl.dot`` / bf16 atomics: not used (no matmuls; reductions write per-program partials);
* loops with runtime bounds (NumPy >= 2 rejects the interpreter's scalar conversion): loop counts are
  constexprs (``ITERS``, ``CHUNK // BLOCK``);
* fp32 -> bf16 conversion truncates and ``tl.fma`` rounds twice: ``round_to`` / ``fma`` correct both.
"""
from __future__ import annotations

import torch

from .dispatch import HAS_TRITON, INTERPRET, tl, triton

# In the interpreter every program costs milliseconds of Python, so launch few, large programs.
_INTERP_BLOCK_ELEMS = 1 << 16
_GPU_BLOCK_ELEMS = 4096


# The interpreter converts fp32 -> bf16 by truncation (GPUs round to nearest even) and computes
# tl.fma with two roundings. round_to / fma below fix both when interpreting, so CPU tests see the
# GPU's (and PyTorch's) bits.
_MANUAL_BF16_RNE = tl.constexpr(INTERPRET) if HAS_TRITON else INTERPRET


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """``x.to(DTYPE)`` with round-to-nearest-even, also for bfloat16 under TRITON_INTERPRET=1."""
    if _MANUAL_BF16_RNE and DTYPE == tl.bfloat16:
        x32 = x.to(tl.float32)
        bits = x32.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        y = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        y = tl.where(x32 != x32, x32.to(tl.bfloat16), y)  # NaN stays NaN
    else:
        y = x.to(DTYPE)
    return y


@triton.jit
def fma(a, b, c):
    """a*b + c with one rounding (the interpreter's tl.fma rounds twice, so emulate it in fp64)."""
    if _MANUAL_BF16_RNE:
        y = (a.to(tl.float64) * b.to(tl.float64) + c.to(tl.float64)).to(c.dtype)
    else:
        y = tl.fma(a, b, c)
    return y


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def tl_dtype(dtype: torch.dtype):
    """triton.language dtype for a torch floating dtype (kernels take them as constexprs)."""
    return {
        torch.float32: tl.float32,
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
        torch.float64: tl.float64,
    }[dtype]


def compute_dtype(*dtypes: torch.dtype):
    """Arithmetic happens in fp32, or in fp64 when any operand is fp64 (PyTorch's opmath rule)."""
    return tl.float64 if torch.float64 in dtypes else tl.float32


def check_launchable(t: torch.Tensor) -> None:
    """Triton kernels run on CUDA tensors, or on any tensor under TRITON_INTERPRET=1."""
    if t.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            f"vjepa_fast Triton kernels need CUDA tensors (got {t.device}); use the functional API "
            "(which falls back to PyTorch) or set TRITON_INTERPRET=1 before importing vjepa_fast.kernels"
        )


def check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"{name}: unsupported dtype {t.dtype} (float32/float16/bfloat16/float64)")


def check_index(name: str, t: torch.Tensor) -> None:
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: indices must be int32 or int64, got {t.dtype}")


def row_blocks(n_rows: int, n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_D, num_warps) for row-gather style kernels over an [n_rows, n_cols] output.

    GPU: columns in tiles of <= 256 (a power of two dividing D when there is one >= 64, so D = 384,
    1024, 1280, 1408 waste no lanes), rows so that a tile holds ~4096 elements. Interpreter: whole rows
    and ~64k elements per program.
    """
    if INTERPRET:
        block_d = next_power_of_2(n_cols)
        block_r = max(1, min(next_power_of_2(n_rows), _INTERP_BLOCK_ELEMS // block_d))
        return block_r, block_d, 4
    block_d = min(next_power_of_2(n_cols), 256)
    for cand in (256, 128, 64):
        if n_cols % cand == 0:
            block_d = cand
            break
    block_r = max(1, min(next_power_of_2(n_rows), _GPU_BLOCK_ELEMS // block_d))
    return block_r, block_d, 4


def full_row_blocks(n_rows: int, n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_D, num_warps) for kernels that need a whole row in registers (layer norm)."""
    block_d = next_power_of_2(n_cols)
    budget = _INTERP_BLOCK_ELEMS if INTERPRET else _GPU_BLOCK_ELEMS
    block_r = max(1, min(next_power_of_2(n_rows), budget // block_d))
    num_warps = 4 if block_d * block_r <= 2048 else 8
    return block_r, block_d, num_warps


def persistent_rows(n_rows: int, block_r: int, n_col_blocks: int, device: torch.device) -> tuple[int, int]:
    """Split n_rows for kernels that reduce over rows: -> (n_programs, ITERS).

    Each program handles ITERS * block_r consecutive rows. ITERS is a power of two (a constexpr: the
    loop bound is static, which the interpreter needs, and only a few variants are ever compiled even
    though K changes every step); the number of programs is about a few waves on a GPU, a handful in
    the interpreter, so the per-program partial sums stay small.
    """
    if INTERPRET or device.type != "cuda":
        target = 4
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        target = max(1, 4 * sms // max(1, n_col_blocks))
    n_blocks = max(1, cdiv(n_rows, block_r))
    iters = next_power_of_2(cdiv(n_blocks, target))
    return cdiv(n_blocks, iters), iters
