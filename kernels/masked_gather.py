"""masked_gather: ``x[b, idx[b,k]] (+ pos[idx[b,k]])`` in one pass, and its scatter backward.

Replaces the official ``x += pos_embed; apply_masks(x, masks)`` (a ``[B,K,D]`` int64 index built by
``repeat`` plus a gather, after a full-N pos add) with one kernel that reads the un-repeated position
table through the int32/int64 ``[B,K]`` index.

Gradients: ``x`` gets the scatter of the output gradient (indices are unique within a row, so plain
stores, no atomics; rows that were not gathered get zeros). ``pos`` is a constant: the official
pos_embed is a frozen ``requires_grad=False`` table, and no gradient is produced for it.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference
from .dispatch import kernel_backend, tl, triton
from .utils import cdiv, check_float, check_index, check_launchable, compute_dtype, round_to, row_blocks


@triton.jit
def _masked_gather_kernel(
    X_ptr,  # pointer to input, shape (B, N, D), any strides
    IDX_ptr,  # pointer to indices, shape (B, K), int32 or int64
    POS_ptr,  # pointer to position table, shape (N, D), any strides (unused when not HAS_POS)
    OUT_ptr,  # pointer to output, shape (B, K, D), contiguous
    n_rows,  # B * K
    K,
    D,
    X_stride_b,
    X_stride_n,
    X_stride_d,
    IDX_stride_b,
    IDX_stride_k,
    POS_stride_n,
    POS_stride_d,
    HAS_POS: tl.constexpr,
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[b, k, :] = x[b, idx[b,k], :] (+ pos[idx[b,k], :], summed in COMPUTE, rounded to out dtype).

    References: MAE / V-JEPA ``apply_masks``; Liger-Kernel layout (one row tile per program).
    """
    pid_r = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_mask = rows < n_rows
    b = rows // K
    k = rows - b * K
    src = tl.load(IDX_ptr + b * IDX_stride_b + k * IDX_stride_k, mask=row_mask, other=0).to(tl.int64)

    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    mask = row_mask[:, None] & (cols < D)[None, :]
    x = tl.load(X_ptr + (b * X_stride_b + src * X_stride_n)[:, None] + cols[None, :] * X_stride_d, mask=mask)
    if HAS_POS:
        p = tl.load(POS_ptr + (src * POS_stride_n)[:, None] + cols[None, :] * POS_stride_d, mask=mask)
        x = x.to(COMPUTE) + p.to(COMPUTE)
    tl.store(OUT_ptr + rows[:, None] * D + cols[None, :], round_to(x, OUT_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _masked_scatter_kernel(
    GRAD_ptr,  # pointer to output gradient, shape (B, K, D), any strides
    IDX_ptr,  # pointer to indices, shape (B, K)
    DX_ptr,  # pointer to input gradient, shape (B, N, D), contiguous, zero-filled
    n_rows,  # B * K
    K,
    N,
    D,
    GRAD_stride_b,
    GRAD_stride_k,
    GRAD_stride_d,
    IDX_stride_b,
    IDX_stride_k,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dx[b, idx[b,k], :] = grad[b, k, :]; indices unique per row, so plain stores."""
    pid_r = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_mask = rows < n_rows
    b = rows // K
    k = rows - b * K
    dst = tl.load(IDX_ptr + b * IDX_stride_b + k * IDX_stride_k, mask=row_mask, other=0).to(tl.int64)

    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    mask = row_mask[:, None] & (cols < D)[None, :]
    g_offs = (b * GRAD_stride_b + k * GRAD_stride_k)[:, None] + cols[None, :] * GRAD_stride_d
    g = tl.load(GRAD_ptr + g_offs, mask=mask)
    dx_offs = ((b * N + dst) * D)[:, None] + cols[None, :]
    tl.store(DX_ptr + dx_offs, round_to(g, DX_ptr.dtype.element_ty), mask=mask)


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
    K = idx.shape[1]
    out = torch.empty((B, K, D), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    if pos is not None:
        pos = _pos_2d(pos, N, D)
    block_r, block_d, num_warps = row_blocks(B * K, D)
    grid = (cdiv(B * K, block_r), cdiv(D, block_d))
    _masked_gather_kernel[grid](
        x, idx, pos if pos is not None else x, out,
        B * K, K, D,
        x.stride(0), x.stride(1), x.stride(2),
        idx.stride(0), idx.stride(1),
        pos.stride(0) if pos is not None else 0, pos.stride(1) if pos is not None else 0,
        HAS_POS=pos is not None,
        COMPUTE=compute_dtype(x.dtype, pos.dtype if pos is not None else x.dtype),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return out


def masked_gather_bwd(grad_out: torch.Tensor, idx: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    B, K, D = grad_out.shape
    grad_x = torch.zeros((B, n, D), dtype=dtype, device=grad_out.device)
    if grad_out.numel() == 0:
        return grad_x
    block_r, block_d, num_warps = row_blocks(B * K, D)
    grid = (cdiv(B * K, block_r), cdiv(D, block_d))
    _masked_scatter_kernel[grid](
        grad_out, idx, grad_x,
        B * K, K, n, D,
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        idx.stride(0), idx.stride(1),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return grad_x


# ---------------------------------------------------------------------------------------------------
# Custom ops (torch.compile traces through them) with autograd


@torch.library.custom_op("vjepa_fast::masked_gather", mutates_args=())
def masked_gather_op(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    return masked_gather_fwd(x, idx, pos)


@masked_gather_op.register_fake
def _(x, idx, pos):
    return x.new_empty((x.shape[0], idx.shape[1], x.shape[2]))


@torch.library.custom_op("vjepa_fast::masked_gather_backward", mutates_args=())
def masked_gather_backward_op(
    grad_out: torch.Tensor, idx: torch.Tensor, n: int, dtype: torch.dtype
) -> torch.Tensor:
    return masked_gather_bwd(grad_out, idx, n, dtype)


@masked_gather_backward_op.register_fake
def _(grad_out, idx, n, dtype):
    return grad_out.new_empty((grad_out.shape[0], n, grad_out.shape[2]), dtype=dtype)


def _setup_context(ctx, inputs, output):
    x, idx, pos = inputs
    ctx.save_for_backward(idx)
    ctx.n = x.shape[1]
    ctx.x_dtype = x.dtype


def _backward(ctx, grad_out):
    (idx,) = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = masked_gather_backward_op(grad_out, idx, ctx.n, ctx.x_dtype)
    return grad_x, None, None  # idx: integer; pos: constant (frozen table)


masked_gather_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------
# Functional API


def masked_gather(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gather rows ``x[b, idx[b,k]]`` -> ``[B,K,D]``, adding ``pos[idx[b,k]]`` when ``pos`` is given.

    Args:
        x: ``[B,N,D]`` float tensor (any strides).
        idx: ``[B,K]`` int32/int64 token indices, unique within each row, each in ``[0, N)``.
        pos: optional ``[N,D]`` or ``[1,N,D]`` position table (not repeated over the batch). Treated
            as a constant: it receives no gradient (the official pos_embed is frozen).
    Returns:
        ``[B,K,D]`` in ``x``'s dtype (the pos add happens in fp32 and is rounded once, like the
        official in-place ``x += pos_embed``).
    """
    if kernel_backend(x) == "triton":
        return masked_gather_op(x, idx, pos)
    return reference.masked_gather(x, idx, pos)
