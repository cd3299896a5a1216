"""Launch helpers shared by the kernels: block sizes, dtype mapping (multi-tensor tables: multi_tensor.py).

What the Triton interpreter (TRITON_INTERPRET=1) cannot do, and how the kernels stay inside it:
* autotune: not used; block sizes come from the host heuristics below (large tiles and few programs
  when interpreting, one 128-bit vector per thread on a GPU), which also keeps launches
  deterministic and CUDA-graph safe;
* bf16 ``tl.dot`` / bf16 atomics: not used (no matmuls; reductions write per-program partials);
* ``for`` loops with runtime bounds (NumPy >= 2 rejects the interpreter's scalar conversion):
  persistent loops over tiles are ``while`` loops (a runtime bound, so the compiled kernel does not
  depend on the number of rows), other loop counts are constexprs;
* fp32 -> bf16 conversion truncates and ``tl.fma`` rounds twice: ``round_to`` / ``fma`` correct both.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .dispatch import HAS_TRITON, INTERPRET, tl, triton
from .plan import DeviceSpec, TensorSpec

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


# Index helpers of the row kernels (inlined by Triton: the same code as written in the kernel).


@triton.jit
def tile_rows_cols(tile, D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Tile number -> (rows [BLOCK_R], cols [BLOCK_D]) of a [rows, D] problem tiled row-major:
    ``cdiv(D, BLOCK_D)`` column tiles per row tile. int32, as ``tl.arange`` makes them."""
    N_D: tl.constexpr = (D + BLOCK_D - 1) // BLOCK_D
    rt = tile // N_D
    rows = rt * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = (tile - rt * N_D) * BLOCK_D + tl.arange(0, BLOCK_D)
    return rows, cols


@triton.jit
def split_rows(rows, n_rows, L, INDEX_64: tl.constexpr):
    """Rows of a flattened [B, L] problem -> (row_mask = rows < n_rows, b, l), with ``b`` and ``l``
    widened to int64 when INDEX_64 (else int32)."""
    row_mask = rows < n_rows
    b = rows // L
    l = rows - b * L
    if INDEX_64:
        b = b.to(tl.int64)
        l = l.to(tl.int64)
    return row_mask, b, l


@triton.jit
def gathered_rows(rows, n_rows, K, IDX_ptr, IDX_stride_b, IDX_stride_k, INDEX_64: tl.constexpr):
    """Rows of a flattened [B, K] index ``IDX`` -> (row_mask, b, k, idx[b, k]). ``b``, ``k`` (and so
    the index's own offsets, for an index tensor with large strides) and the index come back in int64
    when INDEX_64, else int32 (whatever the index dtype)."""
    row_mask, b, k = split_rows(rows, n_rows, K, INDEX_64)
    idx = tl.load(IDX_ptr + b * IDX_stride_b + k * IDX_stride_k, mask=row_mask, other=0)
    if INDEX_64:
        idx = idx.to(tl.int64)
    else:
        idx = idx.to(tl.int32)
    return row_mask, b, k, idx


@triton.jit
def tile_mask(row_mask, cols, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """The [BLOCK_R, BLOCK_D] mask of valid rows and columns. Per row only ([BLOCK_R, 1]) when
    BLOCK_D divides D: no column tail, and a mask constant along D keeps the accesses vectorised."""
    if D % BLOCK_D == 0:
        mask = row_mask[:, None]
    else:
        mask = row_mask[:, None] & (cols < D)[None, :]
    return mask


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


# ---------------------------------------------------------------------------------------------------
# Row tiling for the row kernels (masked gather, predictor input, masked L1 loss).
#
# A tile is BLOCK_R rows x BLOCK_D columns of a [rows, D] problem. On a GPU the tile holds one
# 128-bit vector per thread of the narrowest streamed dtype (small tiles: many of them, so a grid
# of resident programs balances to within one tile), and BLOCK_D is a power of two that divides D
# where one >= 32 exists (D = 384, 1024, 1280, 1408: no idle lanes). Programs are persistent: a
# grid sized to what the GPU holds resident loops over tiles with a runtime bound, so the compiled
# kernel does not depend on the number of rows (mask lengths change every step). In the
# interpreter every tile iteration costs milliseconds of Python, so tiles are large instead.

_INTERP_TILE_ELEMS = 1 << 16
_VECTOR_BYTES = 16  # one ld/st.global.v4.b32
_MIN_EVEN_BLOCK_D = 32


@dataclass(frozen=True)
class RowTiling:
    """(BLOCK_R, BLOCK_D, num_warps) of a row kernel and the resident programs per SM it is sized
    for (the planner's persistent grid is ``sm_count * programs_per_sm``)."""

    block_r: int
    block_d: int
    num_warps: int
    programs_per_sm: int


def column_block(n_cols: int, cap: int) -> int:
    """The largest power of two <= ``cap`` dividing ``n_cols`` when it is >= 32 (no masked lanes);
    otherwise ``min(next_power_of_2(n_cols), cap)`` with the last block masked."""
    if n_cols <= 0:
        return 1
    even = n_cols & -n_cols  # largest power of two dividing n_cols
    if even >= _MIN_EVEN_BLOCK_D or even >= n_cols:
        return min(even, cap)
    return min(next_power_of_2(n_cols), cap)


def row_tiling(n_cols: int, elem_bytes: int, device: DeviceSpec, *, block_d_cap: int = 256,
               min_block_r: int = 1, num_warps: int = 4, programs_per_sm: int = 16) -> RowTiling:  # fmt: skip
    """Tile shape for a row kernel streaming rows of ``n_cols`` elements whose narrowest dtype has
    ``elem_bytes`` bytes.

    GPU: ``BLOCK_D = column_block(n_cols, block_d_cap)``, ``BLOCK_R`` rows so that the tile is one
    128-bit vector per thread (at least ``min_block_r``, e.g. 32 tokens across a warp's lanes).
    ``programs_per_sm`` is the residency the kernel is compiled for (16 programs of 4 warps = the
    64-warp maximum; ``kernels/aot.py`` checks the compiled registers allow it).
    Interpreter: whole rows (up to 1024 columns) and ~64k elements per tile.
    """
    if device.interpret:
        block_d = column_block(n_cols, 1024) if n_cols > 1024 else next_power_of_2(n_cols)
        return RowTiling(max(min_block_r, _INTERP_TILE_ELEMS // block_d), block_d, num_warps, 1)
    block_d = column_block(n_cols, block_d_cap)
    per_tile = 32 * num_warps * max(1, _VECTOR_BYTES // elem_bytes)
    return RowTiling(max(min_block_r, per_tile // block_d, 1), block_d, num_warps, programs_per_sm)


@functools.lru_cache(maxsize=1024)
def _partial_row_programs(n_rows: int, n_cols: int, elem_bytes: int, device: DeviceSpec) -> int:
    t = row_tiling(n_cols, elem_bytes, device)
    n_row_tiles, n_d = cdiv(n_rows, t.block_r), cdiv(n_cols, t.block_d)
    return max(1, min(n_row_tiles, persistent_programs(n_row_tiles * n_d, t, device) // n_d))


def partial_row_programs(grad_out, grad_ctx, device: DeviceSpec) -> int:
    """Rows of the partial-sum buffer of a predictor-input backward (the mask token's gradient),
    i.e. the first grid axis of its persistent launch over ``grad_out`` [B, L, D] (tensors or
    :class:`~.plan.TensorSpec`): each program owns every column block of its row tiles and writes
    one partial row; the tile is :func:`row_tiling`'s for the narrower of ``grad_out``'s and the
    context gradient ``grad_ctx``'s dtypes. At least 1."""
    B, L, D = grad_out.shape
    return _partial_row_programs(B * L, D, min(grad_out.element_size(), grad_ctx.element_size()), device)


def context_and_token_grads(grad_out: torch.Tensor, kc: int, ctx_dtype: torch.dtype, mask_dtype: torch.dtype,
                            launch) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The predictor-input backwards' host part: ``(grad_ctx [B, kc, D] in ctx_dtype, the mask
    token's gradient [D] in mask_dtype)`` for ``grad_out`` [B, L, D]. ``launch(grad_ctx, partial,
    device)`` writes ``grad_ctx`` and one row of ``partial`` [partial_row_programs(...), D] per
    program (fp32 sums; fp64 when an fp64 tensor is involved); the rows are added here with
    ``torch.sum``, so the result is deterministic (no atomics)."""
    B, _, D = grad_out.shape
    grad_ctx = torch.empty((B, kc, D), dtype=ctx_dtype, device=grad_out.device)
    if grad_out.numel() == 0:
        return grad_ctx, torch.zeros(D, dtype=mask_dtype, device=grad_out.device)
    acc_dtype = torch.float64 if torch.float64 in (grad_out.dtype, mask_dtype) else torch.float32
    device = device_spec(grad_out.device)
    partial = torch.empty((partial_row_programs(grad_out, grad_ctx, device), D), dtype=acc_dtype,
                          device=grad_out.device)  # fmt: skip
    launch(grad_ctx, partial, device)
    return grad_ctx, partial.sum(dim=0).to(mask_dtype)


def persistent_programs(n_tiles: int, tiling: RowTiling, device: DeviceSpec) -> int:
    """Programs of a persistent grid over ``n_tiles`` tiles: the resident capacity of the device
    (``sm_count * programs_per_sm``), fewer when there are fewer tiles. In the interpreter:
    ``sm_count`` programs (a few, so the loop over tiles is exercised)."""
    if n_tiles <= 0:
        return 0
    if device.interpret:
        return min(n_tiles, device.sm_count)
    return min(n_tiles, device.sm_count * tiling.programs_per_sm)


_INT32_MAX = 2**31 - 1


def needs_int64(*tensors) -> bool:
    """Whether an element offset into any of ``tensors`` (real or :class:`~.plan.TensorSpec`; None
    skipped) can exceed int32: the kernels then do their offset arithmetic in int64."""
    for t in tensors:
        if t is None:
            continue
        extent = sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0)
        if extent + 1 > _INT32_MAX or t.numel() > _INT32_MAX:
            return True
    return False


# ---------------------------------------------------------------------------------------------------
# Planning on every eager call: cheap when the metadata repeats (a training step's shapes do).


def metadata(t):
    """(shape, strides, dtype) of a tensor or :class:`~.plan.TensorSpec` (None for None): a hashable
    key for caching a planner's work, which depends on nothing else."""
    return None if t is None else (t.shape, t.stride(), t.dtype)


def spec_of(meta):
    """The :class:`~.plan.TensorSpec` of a :func:`metadata` key (None for None)."""
    return None if meta is None else TensorSpec(tuple(meta[0]), meta[2], tuple(meta[1]))


_DEVICE_SPECS: dict = {}


def device_spec(device: torch.device) -> DeviceSpec:
    """``DeviceSpec.of(device)``, remembered per device (the interpreter switch is fixed at import)."""
    spec = _DEVICE_SPECS.get(device)
    if spec is None:
        spec = _DEVICE_SPECS[device] = DeviceSpec.of(device)
    return spec
