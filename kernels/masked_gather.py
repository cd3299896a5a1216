"""masked_gather: ``x[b, idx[b,k]] (+ pos[idx[b,k]])`` in one pass, and its scatter backward.

Replaces the official ``x += pos_embed; apply_masks(x, masks)`` (a ``[B,K,D]`` int64 index built by
``repeat`` plus a gather, after a full-N pos add) with one kernel that reads the un-repeated position
table through the int32/int64 ``[B,K]`` index.

Gradients: ``x`` gets the scatter of the output gradient (indices are unique within a row, so plain
stores, no atomics; rows that were not gathered get zeros), in ``x``'s layout. ``pos`` is a
constant: the official pos_embed is a frozen ``requires_grad=False`` table, and no gradient is
produced for it.

Two layouts of ``x``. Token rows contiguous (stride along D = 1): tiles of rows x D-columns, 128-bit
loads and stores. The patch embedding's own output, the transposed Conv3d result
(``flatten(2).transpose(1, 2)``: strides ``(N*D, 1, N)``), has no contiguous run along D; there the
kernel tiles *token-major*: 32 tokens x 32 features per tile, the 32 lanes of a warp on 32 gathered
tokens of one feature (neighbours in memory when the sorted mask keeps runs of tokens), one 2-byte
load per element (inherent to gathering from this layout), and the tile is transposed on chip for
the contiguous 128-bit output stores. The backward is the mirror image: contiguous 128-bit loads,
token-major scattered stores into a gradient with x's strides.

Launches are planned (:func:`plan_masked_gather`, :func:`plan_masked_scatter`: pure functions of
metadata and a :class:`~.plan.DeviceSpec`) and then run (``plan.launch()``); :func:`aot_plans` lists
the V-JEPA launches for ``kernels/aot.py``. Compiled variants do not depend on ``B`` or ``K``.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from . import reference
from .dispatch import kernel_backend, tl, triton
from .plan import DeviceSpec, LaunchPlan, TensorSpec
from .utils import (
    cdiv,
    check_float,
    check_index,
    check_launchable,
    compute_dtype,
    device_spec,
    gathered_rows,
    metadata,
    needs_int64,
    persistent_programs,
    round_to,
    row_tiling,
    spec_of,
    tile_mask,
    tile_rows_cols,
)

# Runtime lengths and strides that change with the mask length: not specialised (no recompiles).
_LENGTH_ARGS = ["IDX_ptr", "n_rows", "K", "n_tiles", "IDX_stride_b", "IDX_stride_k"]


@triton.jit(do_not_specialize=_LENGTH_ARGS)
def _masked_gather_kernel(
    X_ptr,  # input, shape (B, N, D), any strides
    IDX_ptr,  # indices, shape (B, K), int32 or int64
    POS_ptr,  # position table, shape (N, D), any strides (unused when not HAS_POS)
    OUT_ptr,  # output, shape (B, K, D), contiguous
    n_rows,  # B * K
    K,
    n_tiles,  # cdiv(n_rows, BLOCK_R) * cdiv(D, BLOCK_D)
    X_stride_b,
    X_stride_n,
    X_stride_d,
    IDX_stride_b,
    IDX_stride_k,
    POS_stride_n,
    POS_stride_d,
    D: tl.constexpr,
    HAS_POS: tl.constexpr,
    COMPUTE: tl.constexpr,
    INDEX_64: tl.constexpr,  # an element offset may exceed int32
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[b, k, :] = x[b, idx[b,k], :] (+ pos[idx[b,k], :], summed in COMPUTE, rounded to out dtype).

    Persistent: program p handles tiles p, p + num_programs, ... (a runtime bound). References: MAE /
    V-JEPA ``apply_masks``.
    """
    tile = tl.program_id(0)
    while tile < n_tiles:
        rows, cols = tile_rows_cols(tile, D, BLOCK_R, BLOCK_D)
        row_mask, b, _, src = gathered_rows(rows, n_rows, K, IDX_ptr, IDX_stride_b, IDX_stride_k, INDEX_64)
        if INDEX_64:
            rows = rows.to(tl.int64)
            cols = cols.to(tl.int64)
        mask = tile_mask(row_mask, cols, D, BLOCK_D)
        # Contiguous tokens: X_stride_d == 1 is specialised to a constant, so the load is 128-bit
        # along D. Token-major x (X_stride_n == 1): no axis is contiguous and Triton's coalescing
        # puts the lanes on the first axis, the BLOCK_R >= 32 tokens (checked in the tests).
        x = tl.load(X_ptr + (b * X_stride_b + src * X_stride_n)[:, None] + cols[None, :] * X_stride_d, mask=mask)
        if HAS_POS:
            p = tl.load(POS_ptr + (src * POS_stride_n)[:, None] + cols[None, :] * POS_stride_d, mask=mask)
            x = x.to(COMPUTE) + p.to(COMPUTE)
        tl.store(OUT_ptr + rows[:, None] * D + cols[None, :], round_to(x, OUT_ptr.dtype.element_ty), mask=mask)
        tile += tl.num_programs(0)


@triton.jit(do_not_specialize=_LENGTH_ARGS)
def _masked_scatter_kernel(
    GRAD_ptr,  # output gradient, shape (B, K, D), any strides
    IDX_ptr,  # indices, shape (B, K)
    DX_ptr,  # input gradient, shape (B, N, D), zero-filled, strides DX_stride_*
    n_rows,  # B * K
    K,
    n_tiles,
    GRAD_stride_b,
    GRAD_stride_k,
    GRAD_stride_d,
    IDX_stride_b,
    IDX_stride_k,
    DX_stride_b,
    DX_stride_n,
    DX_stride_d,
    D: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dx[b, idx[b,k], :] = grad[b, k, :]; indices unique per row, so plain stores."""
    tile = tl.program_id(0)
    while tile < n_tiles:
        rows, cols = tile_rows_cols(tile, D, BLOCK_R, BLOCK_D)
        row_mask, b, k, dst = gathered_rows(rows, n_rows, K, IDX_ptr, IDX_stride_b, IDX_stride_k, INDEX_64)
        if INDEX_64:
            cols = cols.to(tl.int64)
        mask = tile_mask(row_mask, cols, D, BLOCK_D)
        g = tl.load(GRAD_ptr + (b * GRAD_stride_b + k * GRAD_stride_k)[:, None] + cols[None, :] * GRAD_stride_d,
                    mask=mask)  # fmt: skip
        g = round_to(g, DX_ptr.dtype.element_ty)
        dx_offs = (b * DX_stride_b + dst * DX_stride_n)[:, None] + cols[None, :] * DX_stride_d
        tl.store(DX_ptr + dx_offs, g, mask=mask)
        tile += tl.num_programs(0)


# ---------------------------------------------------------------------------------------------------
# Planners: pure functions of metadata (tensors or TensorSpecs) and the device


def _token_major(t) -> bool:
    """[B, N, D] whose tokens, not features, are contiguous: the transposed Conv3d output."""
    return t.shape[2] > 1 and t.stride(2) != 1 and t.stride(1) == 1


@functools.lru_cache(maxsize=256)
def _tiling(d: int, elem_bytes: int, token_major: bool, device: DeviceSpec):
    if token_major:  # 32 tokens across a warp's lanes, a narrow column block
        return row_tiling(d, elem_bytes, device, block_d_cap=32, min_block_r=32)
    return row_tiling(d, elem_bytes, device)


def _elem_bytes(*tensors) -> int:
    return min(t.element_size() for t in tensors if t is not None)


def plan_masked_gather(x, idx, pos, out, device: DeviceSpec, label: str = "", group: str = "") -> LaunchPlan:
    """The launch computing ``out = x[b, idx[b]] (+ pos[idx[b]])``.

    ``x`` [B,N,D], ``idx`` [B,K], ``pos`` [N,D] or None, ``out`` [B,K,D] contiguous: tensors or
    :class:`~.plan.TensorSpec`. Reads shapes, strides and dtypes only (cached on them).
    """
    grid, scalars, constexprs, warps = _gather_config(metadata(x), metadata(idx), metadata(pos), metadata(out), device)
    args = (x, idx, x if pos is None else pos, out, *scalars)
    # Token-major x: the loads of x are gathered tokens of one feature (2-byte loads by nature); the
    # contiguous position rows beside them would otherwise make the PTX look vectorised.
    return LaunchPlan(_masked_gather_kernel, grid, args, constexprs, warps, label=label, group=group,
                      vector_loads=not _token_major(x))  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _gather_config(xm, im, pm, om, device: DeviceSpec):
    x, idx, pos, out = (spec_of(m) for m in (xm, im, pm, om))
    B, N, D = x.shape
    n_rows = B * idx.shape[1]
    t = _tiling(D, _elem_bytes(x, pos, out), _token_major(x), device)
    n_tiles = cdiv(n_rows, t.block_r) * cdiv(D, t.block_d)
    pos_strides = (pos.stride(0), pos.stride(1)) if pos is not None else (0, 0)
    scalars = (n_rows, idx.shape[1], n_tiles, *x.stride(), *idx.stride(), *pos_strides)
    constexprs = dict(
        D=D, HAS_POS=pos is not None,
        COMPUTE=compute_dtype(x.dtype, pos.dtype if pos is not None else x.dtype),
        INDEX_64=needs_int64(x, idx, pos, out),
        BLOCK_R=t.block_r, BLOCK_D=t.block_d,
    )  # fmt: skip
    return (persistent_programs(n_tiles, t, device),), scalars, constexprs, t.num_warps


def plan_masked_scatter(grad_out, idx, grad_x, device: DeviceSpec, label: str = "", group: str = "") -> LaunchPlan:
    """The launch writing ``grad_x[b, idx[b]] = grad_out[b]`` into a zero-filled ``grad_x`` [B,N,D]
    (any strides; token-major when its tokens are contiguous)."""
    grid, scalars, constexprs, warps, token_major = _scatter_config(
        metadata(grad_out), metadata(idx), metadata(grad_x), device)
    # Token-major grad_x: the stores go to gathered tokens of one feature (not contiguous by nature).
    return LaunchPlan(_masked_scatter_kernel, grid, (grad_out, idx, grad_x, *scalars), constexprs, warps,
                      label=label, group=group, vector_stores=not token_major)  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _scatter_config(gm, im, xm, device: DeviceSpec):
    grad_out, idx, grad_x = (spec_of(m) for m in (gm, im, xm))
    B, K, D = grad_out.shape
    n_rows = B * K
    token_major = _token_major(grad_x)
    t = _tiling(D, _elem_bytes(grad_out, grad_x), token_major, device)
    n_tiles = cdiv(n_rows, t.block_r) * cdiv(D, t.block_d)
    scalars = (n_rows, K, n_tiles, *grad_out.stride(), *idx.stride(), *grad_x.stride())
    constexprs = dict(D=D, INDEX_64=needs_int64(grad_out, idx, grad_x), BLOCK_R=t.block_r, BLOCK_D=t.block_d)
    return (persistent_programs(n_tiles, t, device),), scalars, constexprs, t.num_warps, token_major


# ---------------------------------------------------------------------------------------------------
# Host launchers


def _pos_2d(pos: torch.Tensor, n: int, d: int) -> torch.Tensor:
    if pos.dim() == 3 and pos.shape[0] == 1:
        pos = pos[0]
    if pos.dim() != 2 or pos.shape[1] != d or pos.shape[0] < n:
        raise ValueError(f"pos must be [N,D] or [1,N,D] with N >= {n}, D = {d}; got {tuple(pos.shape)}")
    return pos


def _check(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor]) -> None:
    if x.dim() != 3 or idx.dim() != 2 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"expected x [B,N,D] and idx [B,K]; got {tuple(x.shape)} and {tuple(idx.shape)}")
    check_launchable(x)
    check_float("x", x)
    check_index("idx", idx)
    if pos is not None:
        check_float("pos", pos)
        if pos.device != x.device:
            raise ValueError("pos must be on x's device")


def masked_gather_fwd(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    _check(x, idx, pos)
    B, N, D = x.shape
    out = torch.empty((B, idx.shape[1], D), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    if pos is not None:
        pos = _pos_2d(pos, N, D)
    plan_masked_gather(x, idx, pos, out, device_spec(x.device)).launch()
    return out


def _grad_x_like(b: int, n: int, d: int, dtype: torch.dtype, device, token_major: bool) -> torch.Tensor:
    """Zeros [B,N,D] in x's layout: token-major x (the transposed Conv3d output) gets its gradient in
    the same strides, so the convolution's backward reads it without a copy."""
    if token_major:
        return torch.zeros((b, d, n), dtype=dtype, device=device).transpose(1, 2)
    return torch.zeros((b, n, d), dtype=dtype, device=device)


def masked_gather_bwd(grad_out: torch.Tensor, idx: torch.Tensor, n: int, dtype: torch.dtype,
                      token_major: bool = False) -> torch.Tensor:  # fmt: skip
    B, K, D = grad_out.shape
    grad_x = _grad_x_like(B, n, D, dtype, grad_out.device, token_major and D > 1)
    if grad_out.numel() == 0:
        return grad_x
    plan_masked_scatter(grad_out, idx, grad_x, device_spec(grad_out.device)).launch()
    return grad_x


# ---------------------------------------------------------------------------------------------------
# Custom ops (what torch.compile traces) with autograd


@torch.library.custom_op("vjepa_fast::masked_gather", mutates_args=())
def masked_gather_op(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    return masked_gather_fwd(x, idx, pos)


@masked_gather_op.register_fake
def _(x, idx, pos):
    return x.new_empty((x.shape[0], idx.shape[1], x.shape[2]))


@torch.library.custom_op("vjepa_fast::masked_gather_backward", mutates_args=())
def masked_gather_backward_op(
    grad_out: torch.Tensor, idx: torch.Tensor, n: int, dtype: torch.dtype, token_major: bool = False
) -> torch.Tensor:
    return masked_gather_bwd(grad_out, idx, n, dtype, token_major)


@masked_gather_backward_op.register_fake
def _(grad_out, idx, n, dtype, token_major=False):
    B, _, D = grad_out.shape
    if token_major and D > 1:
        return grad_out.new_empty((B, D, n), dtype=dtype).transpose(1, 2)
    return grad_out.new_empty((B, n, D), dtype=dtype)


def _setup_context(ctx, inputs, output):
    x, idx, pos = inputs
    ctx.save_for_backward(idx)
    ctx.n = x.shape[1]
    ctx.x_dtype = x.dtype
    ctx.token_major = _token_major(x)


def _backward(ctx, grad_out):
    (idx,) = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = masked_gather_backward_op(grad_out, idx, ctx.n, ctx.x_dtype, ctx.token_major)
    return grad_x, None, None  # idx: integer; pos: constant (frozen table)


masked_gather_op.register_autograd(_backward, setup_context=_setup_context)


class _MaskedGather(torch.autograd.Function):
    """The eager path: the same launchers as the custom ops, without the custom-op dispatch (which
    costs more host time per call than the kernels take at V-JEPA sizes)."""

    @staticmethod
    def forward(ctx, x, idx, pos):
        out = masked_gather_fwd(x, idx, pos)
        _setup_context(ctx, (x, idx, pos), out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (idx,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = masked_gather_bwd(grad_out, idx, ctx.n, ctx.x_dtype, ctx.token_major)
        return grad_x, None, None


# ---------------------------------------------------------------------------------------------------
# Functional API


def masked_gather(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gather rows ``x[b, idx[b,k]]`` -> ``[B,K,D]``, adding ``pos[idx[b,k]]`` when ``pos`` is given.

    Args:
        x: ``[B,N,D]`` float tensor (any strides; the transposed Conv3d layout is read token-major).
        idx: ``[B,K]`` int32/int64 token indices, unique within each row, each in ``[0, N)``.
        pos: optional ``[N,D]`` or ``[1,N,D]`` position table (not repeated over the batch). Treated
            as a constant: it receives no gradient (the official pos_embed is frozen).
    Returns:
        ``[B,K,D]`` in ``x``'s dtype (the pos add happens in fp32 and is rounded once, like the
        official in-place ``x += pos_embed``). ``x``'s gradient has ``x``'s layout.
    Raises:
        ValueError / TypeError: shapes, devices or dtypes as named in the message.
    """
    if kernel_backend(x) == "triton":
        if torch.compiler.is_compiling():
            return masked_gather_op(x, idx, pos)
        return _MaskedGather.apply(x, idx, pos)
    return reference.masked_gather(x, idx, pos)


# ---------------------------------------------------------------------------------------------------
# Ahead-of-time plans at the V-JEPA shapes (kernels/aot.py)

_B, _N = 24, 1568
_ENCODER_DIMS = {"vit_l": 1024, "vit_h": 1280, "vit_g": 1408}
_CONTEXT_K = (364, 103)


def aot_plans() -> list[LaunchPlan]:
    """Every launch of the encoder's context gather at V-JEPA shapes on a 132-SM Hopper: batch 24,
    N = 1568, context K 364 and 103, bf16 tokens (autocast) or fp32, the fp32 position table; the
    patch embedding's transposed layout (token-major) and contiguous tokens; forward and backward.
    Plans that differ only in K share a ``group``."""
    device = DeviceSpec()
    plans = []
    for model, D in _ENCODER_DIMS.items():
        for dtype in (torch.bfloat16, torch.float32):
            dt = str(dtype).replace("torch.", "")
            for layout, strides in (("strided", (_N * D, 1, _N)), ("contiguous", None)):
                x = TensorSpec((_B, _N, D), dtype, strides)
                for K in _CONTEXT_K:
                    idx = TensorSpec((_B, K), torch.int64)
                    grad = TensorSpec((_B, K, D), dtype)
                    common = f"{model} D{D} {dt} {layout}"
                    plans.append(plan_masked_gather(
                        x, idx, TensorSpec((_N, D), torch.float32), TensorSpec((_B, K, D), dtype), device,
                        label=f"masked_gather fwd {common} K{K}", group=f"masked_gather fwd {common}"))  # fmt: skip
                    plans.append(plan_masked_scatter(
                        grad, idx, x, device,
                        label=f"masked_gather bwd {common} K{K}", group=f"masked_gather bwd {common}"))  # fmt: skip
    return plans
