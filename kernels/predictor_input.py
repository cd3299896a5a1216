"""assemble_predictor_input: the V-JEPA predictor's input sequence in one kernel.

Official (jepa ``src/models/predictor.py``)::

    x = predictor_embed(ctxt); x += apply_masks(pos.repeat(B,1,1), masks_ctxt)
    tok = apply_masks(mask_token.repeat(B, N, 1), masks_tgt); tok += apply_masks(pos.repeat(B,1,1), masks_tgt)
    x = cat([x, tok], dim=1)

Here: ``out[b, :Kc] = ctx[b] + pos[ctx_idx[b]]`` and ``out[b, Kc:] = mask_token + pos[tgt_idx[b]]``,
written in one pass from the un-repeated ``[N,D]`` table. Each half is rounded to its own dtype
(ctx's, mask_token's) as the in-place ``+=`` does; the output dtype is their promotion.

Backward: ``grad_ctx`` is a copy of the first Kc rows of the output gradient; ``grad_mask_token`` is the
sum of the last Kt rows over batch and tokens. That reduction is deterministic: each program
accumulates a fixed row range in fp32 and writes one partial row, and ``torch.sum`` adds the partials
(no atomics). ``pos`` is a constant and gets no gradient.
"""
from __future__ import annotations

import torch

from . import reference
from .dispatch import kernel_backend, tl, triton
from .utils import (
    cdiv,
    check_float,
    check_index,
    check_launchable,
    compute_dtype,
    persistent_rows,
    round_to,
    row_blocks,
    tl_dtype,
)


@triton.jit
def _assemble_predictor_input_kernel(
    CTX_ptr,  # pointer to context tokens, shape (B, Kc, D), any strides
    CTX_IDX_ptr,  # pointer to context indices, shape (B, Kc)
    TGT_IDX_ptr,  # pointer to target indices, shape (B, Kt)
    POS_ptr,  # pointer to position table, shape (N, D), any strides
    MASK_ptr,  # pointer to the mask token, shape (D,), any stride
    OUT_ptr,  # pointer to output, shape (B, Kc + Kt, D), contiguous
    n_rows,  # B * (Kc + Kt)
    L,  # Kc + Kt
    Kc,
    D,
    CTX_stride_b,
    CTX_stride_k,
    CTX_stride_d,
    CI_stride_b,
    CI_stride_k,
    TI_stride_b,
    TI_stride_k,
    POS_stride_n,
    POS_stride_d,
    MASK_stride_d,
    CTX_DTYPE: tl.constexpr,  # dtype the context half is rounded to (ctx's)
    MASK_DTYPE: tl.constexpr,  # dtype the target half is rounded to (mask_token's)
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Rows j < Kc: ctx[b,j] + pos[ctx_idx[b,j]]; rows j >= Kc: mask_token + pos[tgt_idx[b,j-Kc]]."""
    pid_r = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_mask = rows < n_rows
    b = rows // L
    j = rows - b * L
    is_ctx = j < Kc
    ci = tl.load(CTX_IDX_ptr + b * CI_stride_b + j * CI_stride_k, mask=row_mask & is_ctx, other=0)
    ti = tl.load(TGT_IDX_ptr + b * TI_stride_b + (j - Kc) * TI_stride_k, mask=row_mask & (~is_ctx), other=0)
    src = tl.where(is_ctx, ci.to(tl.int64), ti.to(tl.int64))

    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    col_mask = cols < D
    mask = row_mask[:, None] & col_mask[None, :]
    ctx_mask = mask & is_ctx[:, None]
    c_offs = (b * CTX_stride_b + j * CTX_stride_k)[:, None] + cols[None, :] * CTX_stride_d
    c = tl.load(CTX_ptr + c_offs, mask=ctx_mask, other=0.0)
    t = tl.load(MASK_ptr + cols * MASK_stride_d, mask=col_mask, other=0.0)
    p = tl.load(POS_ptr + (src * POS_stride_n)[:, None] + cols[None, :] * POS_stride_d, mask=mask, other=0.0)
    p = p.to(COMPUTE)
    head = round_to(c.to(COMPUTE) + p, CTX_DTYPE).to(COMPUTE)
    tail = round_to(t.to(COMPUTE)[None, :] + p, MASK_DTYPE).to(COMPUTE)
    out = tl.where(is_ctx[:, None], head, tail)
    tl.store(OUT_ptr + rows[:, None] * D + cols[None, :], round_to(out, OUT_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _assemble_predictor_input_bwd_kernel(
    GRAD_ptr,  # pointer to output gradient, shape (B, Kc + Kt, D), any strides
    DCTX_ptr,  # pointer to context gradient, shape (B, Kc, D), contiguous
    PARTIAL_ptr,  # pointer to mask-token partial sums, shape (n_row_programs, D), fp32/fp64
    n_rows,  # B * (Kc + Kt)
    L,
    Kc,
    D,
    GRAD_stride_b,
    GRAD_stride_l,
    GRAD_stride_d,
    COMPUTE: tl.constexpr,
    ITERS: tl.constexpr,  # row tiles per program
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Copy context rows of the gradient; sum target rows into one partial row per program."""
    pid_r = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    col_mask = cols < D
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=COMPUTE)
    row0 = pid_r * (ITERS * BLOCK_R)
    for it in range(ITERS):
        rows = row0 + it * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        row_mask = rows < n_rows
        b = rows // L
        j = rows - b * L
        is_ctx = j < Kc
        mask = row_mask[:, None] & col_mask[None, :]
        g_offs = (b * GRAD_stride_b + j * GRAD_stride_l)[:, None] + cols[None, :] * GRAD_stride_d
        g = tl.load(GRAD_ptr + g_offs, mask=mask, other=0.0)
        dctx_offs = ((b * Kc + j) * D)[:, None] + cols[None, :]
        tl.store(DCTX_ptr + dctx_offs, round_to(g, DCTX_ptr.dtype.element_ty), mask=mask & is_ctx[:, None])
        acc += tl.where(mask & (~is_ctx)[:, None], g.to(COMPUTE), 0.0)
    tl.store(PARTIAL_ptr + pid_r * D + cols, tl.sum(acc, axis=0), mask=col_mask)


# ---------------------------------------------------------------------------------------------------
# Host launchers


def _pos_2d(pos: torch.Tensor, d: int) -> torch.Tensor:
    if pos.dim() == 3 and pos.shape[0] == 1:
        pos = pos[0]
    if pos.dim() != 2 or pos.shape[1] != d:
        raise ValueError(f"pos must be [N,{d}] or [1,N,{d}], got {tuple(pos.shape)}")
    return pos


def _check(ctx, ctx_idx, tgt_idx, pos, mask_token) -> None:
    ok = ctx.dim() == 3 and ctx_idx.shape == ctx.shape[:2]
    if not ok or tgt_idx.dim() != 2 or tgt_idx.shape[0] != ctx.shape[0]:
        raise ValueError(
            f"expected ctx [B,Kc,D], ctx_idx [B,Kc], tgt_idx [B,Kt]; got {tuple(ctx.shape)}, "
            f"{tuple(ctx_idx.shape)}, {tuple(tgt_idx.shape)}"
        )
    if mask_token.numel() != ctx.shape[2]:
        raise ValueError(f"mask_token must hold D = {ctx.shape[2]} values, got {tuple(mask_token.shape)}")
    for name, t in (("ctx", ctx), ("pos", pos), ("mask_token", mask_token)):
        check_float(name, t)
    check_launchable(ctx)
    check_index("ctx_idx", ctx_idx)
    check_index("tgt_idx", tgt_idx)


def _out_dtype(ctx: torch.Tensor, mask_token: torch.Tensor) -> torch.dtype:
    return torch.promote_types(ctx.dtype, mask_token.dtype)


def assemble_predictor_input_fwd(ctx, ctx_idx, tgt_idx, pos, mask_token) -> torch.Tensor:
    _check(ctx, ctx_idx, tgt_idx, pos, mask_token)
    B, Kc, D = ctx.shape
    L = Kc + tgt_idx.shape[1]
    pos = _pos_2d(pos, D)
    token = mask_token.reshape(D)
    out = torch.empty((B, L, D), dtype=_out_dtype(ctx, mask_token), device=ctx.device)
    if out.numel() == 0:
        return out
    block_r, block_d, num_warps = row_blocks(B * L, D)
    grid = (cdiv(B * L, block_r), cdiv(D, block_d))
    _assemble_predictor_input_kernel[grid](
        ctx, ctx_idx, tgt_idx, pos, token, out,
        B * L, L, Kc, D,
        ctx.stride(0), ctx.stride(1), ctx.stride(2),
        ctx_idx.stride(0), ctx_idx.stride(1),
        tgt_idx.stride(0), tgt_idx.stride(1),
        pos.stride(0), pos.stride(1), token.stride(0),
        CTX_DTYPE=tl_dtype(ctx.dtype), MASK_DTYPE=tl_dtype(mask_token.dtype),
        COMPUTE=compute_dtype(ctx.dtype, pos.dtype, mask_token.dtype),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return out


def assemble_predictor_input_bwd(
    grad_out: torch.Tensor, kc: int, ctx_dtype: torch.dtype, mask_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (grad_ctx [B,Kc,D] in ctx_dtype, grad_mask_token [D] in mask_dtype)."""
    B, L, D = grad_out.shape
    grad_ctx = torch.empty((B, kc, D), dtype=ctx_dtype, device=grad_out.device)
    acc_dtype = torch.float64 if torch.float64 in (grad_out.dtype, mask_dtype) else torch.float32
    if grad_out.numel() == 0:
        return grad_ctx, torch.zeros(D, dtype=mask_dtype, device=grad_out.device)
    block_r, block_d, num_warps = row_blocks(B * L, D)
    n_d = cdiv(D, block_d)
    n_progs, iters = persistent_rows(B * L, block_r, n_d, grad_out.device)
    partial = torch.empty((n_progs, D), dtype=acc_dtype, device=grad_out.device)
    _assemble_predictor_input_bwd_kernel[(n_progs, n_d)](
        grad_out, grad_ctx, partial,
        B * L, L, kc, D,
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        COMPUTE=tl_dtype(acc_dtype), ITERS=iters, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return grad_ctx, partial.sum(dim=0).to(mask_dtype)


# ---------------------------------------------------------------------------------------------------
# Custom ops with autograd


@torch.library.custom_op("vjepa_fast::assemble_predictor_input", mutates_args=())
def assemble_predictor_input_op(
    ctx: torch.Tensor,
    ctx_idx: torch.Tensor,
    tgt_idx: torch.Tensor,
    pos: torch.Tensor,
    mask_token: torch.Tensor,
) -> torch.Tensor:
    return assemble_predictor_input_fwd(ctx, ctx_idx, tgt_idx, pos, mask_token)


@assemble_predictor_input_op.register_fake
def _(ctx, ctx_idx, tgt_idx, pos, mask_token):
    B, Kc, D = ctx.shape
    return ctx.new_empty((B, Kc + tgt_idx.shape[1], D), dtype=_out_dtype(ctx, mask_token))


@torch.library.custom_op("vjepa_fast::assemble_predictor_input_backward", mutates_args=())
def assemble_predictor_input_backward_op(
    grad_out: torch.Tensor, kc: int, ctx_dtype: torch.dtype, mask_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    return assemble_predictor_input_bwd(grad_out, kc, ctx_dtype, mask_dtype)


@assemble_predictor_input_backward_op.register_fake
def _(grad_out, kc, ctx_dtype, mask_dtype):
    B, _, D = grad_out.shape
    return grad_out.new_empty((B, kc, D), dtype=ctx_dtype), grad_out.new_empty((D,), dtype=mask_dtype)


def _setup_context(ctx, inputs, output):
    c, _, _, _, mask_token = inputs
    ctx.kc = c.shape[1]
    ctx.ctx_dtype = c.dtype
    ctx.mask_dtype = mask_token.dtype
    ctx.mask_shape = mask_token.shape


def _backward(ctx, grad_out):
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[4]):
        return None, None, None, None, None
    grad_ctx, grad_mask = assemble_predictor_input_backward_op(
        grad_out, ctx.kc, ctx.ctx_dtype, ctx.mask_dtype
    )
    return (
        grad_ctx if ctx.needs_input_grad[0] else None,
        None,
        None,
        None,  # pos: constant (frozen table)
        grad_mask.reshape(ctx.mask_shape) if ctx.needs_input_grad[4] else None,
    )


assemble_predictor_input_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------
# Functional API


def assemble_predictor_input(
    ctx: torch.Tensor,
    ctx_idx: torch.Tensor,
    tgt_idx: torch.Tensor,
    pos: torch.Tensor,
    mask_token: torch.Tensor,
) -> torch.Tensor:
    """``cat([ctx + pos[ctx_idx], mask_token + pos[tgt_idx]], dim=1)`` -> ``[B, Kc+Kt, D]``.

    Args:
        ctx: ``[B,Kc,D]`` context tokens, already through ``predictor_embed``.
        ctx_idx: ``[B,Kc]`` int32/int64 positions of the context tokens.
        tgt_idx: ``[B,Kt]`` int32/int64 positions of the target tokens.
        pos: ``[N,D]`` or ``[1,N,D]`` predictor position table; a constant (no gradient).
        mask_token: ``[1,1,D]`` or ``[D]`` learned mask token (gets the summed gradient).
    Returns:
        ``[B,Kc+Kt,D]`` in ``promote(ctx.dtype, mask_token.dtype)``; the context half is rounded to
        ctx's dtype and the target half to mask_token's, like the official in-place adds.
    """
    if kernel_backend(ctx) == "triton":
        return assemble_predictor_input_op(ctx, ctx_idx, tgt_idx, pos, mask_token)
    return reference.assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, mask_token)
