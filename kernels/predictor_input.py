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
accumulates a fixed set of row tiles in fp32 and writes one partial row, and ``torch.sum`` adds the
partials (no atomics). ``pos`` is a constant and gets no gradient.

Launches are planned (:func:`plan_assemble_predictor_input`, :func:`plan_assemble_predictor_input_bwd`:
pure functions of metadata and a :class:`~.plan.DeviceSpec`) and then run (``plan.launch()``); grids
are persistent, sized to the resident programs of the GPU, and the compiled variants do not depend on
``B``, ``Kc`` or ``Kt``. :func:`aot_plans` lists the V-JEPA launches for ``kernels/aot.py``.
"""
from __future__ import annotations

import functools

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
    context_and_token_grads,
    device_spec,
    metadata,
    needs_int64,
    partial_row_programs,
    persistent_programs,
    round_to,
    row_tiling,
    spec_of,
    split_rows,
    tile_rows_cols,
    tl_dtype,
)

# Runtime lengths and strides that change with the mask lengths: not specialised (no recompiles).
_LENGTH_ARGS = ["CTX_IDX_ptr", "TGT_IDX_ptr", "n_rows", "L", "Kc", "n_tiles", "CI_stride_b", "CI_stride_k",
                "TI_stride_b", "TI_stride_k"]  # fmt: skip


@triton.jit(do_not_specialize=_LENGTH_ARGS)
def _assemble_predictor_input_kernel(
    CTX_ptr,  # context tokens, shape (B, Kc, D), any strides
    CTX_IDX_ptr,  # context indices, shape (B, Kc)
    TGT_IDX_ptr,  # target indices, shape (B, Kt)
    POS_ptr,  # position table, shape (N, D), any strides
    MASK_ptr,  # the mask token, shape (D,), any stride
    OUT_ptr,  # output, shape (B, Kc + Kt, D), contiguous
    n_rows,  # B * (Kc + Kt)
    L,  # Kc + Kt
    Kc,
    n_tiles,  # cdiv(n_rows, BLOCK_R) * cdiv(D, BLOCK_D)
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
    D: tl.constexpr,
    CTX_DTYPE: tl.constexpr,  # dtype the context half is rounded to (ctx's)
    MASK_DTYPE: tl.constexpr,  # dtype the target half is rounded to (mask_token's)
    COMPUTE: tl.constexpr,
    INDEX_64: tl.constexpr,  # an element offset may exceed int32
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Rows j < Kc: ctx[b,j] + pos[ctx_idx[b,j]]; rows j >= Kc: mask_token + pos[tgt_idx[b,j-Kc]].

    Persistent: program p handles tiles p, p + num_programs, ... (a runtime bound).
    """
    tile = tl.program_id(0)
    while tile < n_tiles:
        rows, cols = tile_rows_cols(tile, D, BLOCK_R, BLOCK_D)
        row_mask, b, j = split_rows(rows, n_rows, L, False)
        is_ctx = j < Kc
        ci = tl.load(CTX_IDX_ptr + b * CI_stride_b + j * CI_stride_k, mask=row_mask & is_ctx, other=0)
        ti = tl.load(TGT_IDX_ptr + b * TI_stride_b + (j - Kc) * TI_stride_k, mask=row_mask & (~is_ctx), other=0)
        if INDEX_64:
            src = tl.where(is_ctx, ci.to(tl.int64), ti.to(tl.int64))
            b = b.to(tl.int64)
            j = j.to(tl.int64)
            rows = rows.to(tl.int64)
            cols = cols.to(tl.int64)
        else:
            src = tl.where(is_ctx, ci.to(tl.int32), ti.to(tl.int32))
        if D % BLOCK_D == 0:  # no column tail: masks are per row, constant along D
            col_mask = tl.full((BLOCK_D,), 1, tl.int1)
        else:
            col_mask = cols < D
        mask = row_mask[:, None] & col_mask[None, :]
        c_offs = (b * CTX_stride_b + j * CTX_stride_k)[:, None] + cols[None, :] * CTX_stride_d
        c = tl.load(CTX_ptr + c_offs, mask=mask & is_ctx[:, None], other=0.0)
        t = tl.load(MASK_ptr + cols * MASK_stride_d, mask=col_mask, other=0.0)
        p = tl.load(POS_ptr + (src * POS_stride_n)[:, None] + cols[None, :] * POS_stride_d, mask=mask, other=0.0)
        p = p.to(COMPUTE)
        head = round_to(c.to(COMPUTE) + p, CTX_DTYPE).to(COMPUTE)
        tail = round_to(t.to(COMPUTE)[None, :] + p, MASK_DTYPE).to(COMPUTE)
        out = tl.where(is_ctx[:, None], head, tail)
        tl.store(OUT_ptr + rows[:, None] * D + cols[None, :], round_to(out, OUT_ptr.dtype.element_ty), mask=mask)
        tile += tl.num_programs(0)


@triton.jit(do_not_specialize=["n_rows", "L", "Kc", "n_row_tiles"])
def _assemble_predictor_input_bwd_kernel(
    GRAD_ptr,  # output gradient, shape (B, Kc + Kt, D), any strides
    DCTX_ptr,  # context gradient, shape (B, Kc, D), contiguous
    PARTIAL_ptr,  # mask-token partial sums, shape (num_programs(0), D), fp32/fp64
    n_rows,  # B * (Kc + Kt)
    L,
    Kc,
    n_row_tiles,  # cdiv(n_rows, BLOCK_R)
    GRAD_stride_b,
    GRAD_stride_l,
    GRAD_stride_d,
    D: tl.constexpr,
    COMPUTE: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Copy context rows of the gradient; sum target rows into one partial row per program.

    Grid (P, cdiv(D, BLOCK_D)): program (p, c) handles column block c of row tiles p, p + P, ...,
    so its partial sum covers a fixed set of rows (deterministic for a given P).
    """
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    if INDEX_64:
        cols = cols.to(tl.int64)
    if D % BLOCK_D == 0:
        col_mask = tl.full((BLOCK_D,), 1, tl.int1)
    else:
        col_mask = cols < D
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=COMPUTE)
    rt = pid
    while rt < n_row_tiles:
        rows = rt * BLOCK_R + tl.arange(0, BLOCK_R)
        row_mask, b, j = split_rows(rows, n_rows, L, INDEX_64)
        is_ctx = j < Kc
        mask = row_mask[:, None] & col_mask[None, :]
        g_offs = (b * GRAD_stride_b + j * GRAD_stride_l)[:, None] + cols[None, :] * GRAD_stride_d
        g = tl.load(GRAD_ptr + g_offs, mask=mask, other=0.0)
        dctx_offs = ((b * Kc + j) * D)[:, None] + cols[None, :]
        tl.store(DCTX_ptr + dctx_offs, round_to(g, DCTX_ptr.dtype.element_ty), mask=mask & is_ctx[:, None])
        acc += tl.where(mask & (~is_ctx)[:, None], g.to(COMPUTE), 0.0)
        rt += tl.num_programs(0)
    tl.store(PARTIAL_ptr + pid * D + cols, tl.sum(acc, axis=0), mask=col_mask)


# ---------------------------------------------------------------------------------------------------
# Planners: pure functions of metadata (tensors or TensorSpecs) and the device


def plan_assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, mask_token, out, device: DeviceSpec,
                                  label: str = "", group: str = "") -> LaunchPlan:  # fmt: skip
    """The launch writing ``out`` [B, Kc+Kt, D] (contiguous) from ``ctx`` [B,Kc,D], ``ctx_idx``
    [B,Kc], ``tgt_idx`` [B,Kt], ``pos`` [N,D] and ``mask_token`` [D]: tensors or
    :class:`~.plan.TensorSpec` (shapes, strides and dtypes are read; cached on them)."""
    metas = (metadata(t) for t in (ctx, ctx_idx, tgt_idx, pos, mask_token, out))
    grid, scalars, constexprs, warps = _forward_config(*metas, device)
    args = (ctx, ctx_idx, tgt_idx, pos, mask_token, out, *scalars)
    return LaunchPlan(_assemble_predictor_input_kernel, grid, args, constexprs, warps, label=label, group=group)


@functools.lru_cache(maxsize=1024)
def _forward_config(cm, cim, tim, pm, mm, om, device: DeviceSpec):
    ctx, ctx_idx, tgt_idx, pos, mask_token, out = (spec_of(m) for m in (cm, cim, tim, pm, mm, om))
    B, Kc, D = ctx.shape
    L = Kc + tgt_idx.shape[1]
    n_rows = B * L
    # Tiles of one 128-bit vector per thread of the table and the output (fp32 under autocast): a
    # bf16 context then loads 64 bits per thread, but sizing the tile for bf16 instead costs a
    # shared-memory layout conversion and 40 registers (12 resident programs per SM, not 16).
    t = row_tiling(D, min(pos.element_size(), out.element_size()), device)
    n_tiles = cdiv(n_rows, t.block_r) * cdiv(D, t.block_d)
    scalars = (n_rows, L, Kc, n_tiles, *ctx.stride(), *ctx_idx.stride(), *tgt_idx.stride(), *pos.stride(),
               mask_token.stride(0))  # fmt: skip
    constexprs = dict(
        D=D, CTX_DTYPE=tl_dtype(ctx.dtype), MASK_DTYPE=tl_dtype(mask_token.dtype),
        COMPUTE=compute_dtype(ctx.dtype, pos.dtype, mask_token.dtype),
        INDEX_64=needs_int64(ctx, ctx_idx, tgt_idx, pos, mask_token, out), BLOCK_R=t.block_r, BLOCK_D=t.block_d,
    )  # fmt: skip
    return (persistent_programs(n_tiles, t, device),), scalars, constexprs, t.num_warps


def plan_assemble_predictor_input_bwd(grad_out, grad_ctx, partial, device: DeviceSpec, label: str = "",
                                      group: str = "") -> LaunchPlan:  # fmt: skip
    """The backward launch: ``grad_ctx`` [B,Kc,D] (contiguous) <- the first Kc rows of ``grad_out``
    [B,L,D]; ``partial`` [partial_row_programs(...), D] <- per-program sums of the last L - Kc rows."""
    grid, scalars, constexprs, warps = _backward_config(metadata(grad_out), metadata(grad_ctx), metadata(partial),
                                                        device)  # fmt: skip
    return LaunchPlan(_assemble_predictor_input_bwd_kernel, grid, (grad_out, grad_ctx, partial, *scalars),
                      constexprs, warps, label=label, group=group)  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _backward_config(gm, cm, pm, device: DeviceSpec):
    grad_out, grad_ctx, partial = (spec_of(m) for m in (gm, cm, pm))
    B, L, D = grad_out.shape
    t = row_tiling(D, min(grad_out.element_size(), grad_ctx.element_size()), device)
    n_row_tiles, n_d = cdiv(B * L, t.block_r), cdiv(D, t.block_d)
    scalars = (B * L, L, grad_ctx.shape[1], n_row_tiles, *grad_out.stride())
    constexprs = dict(D=D, COMPUTE=tl_dtype(partial.dtype), INDEX_64=needs_int64(grad_out, grad_ctx, partial),
                      BLOCK_R=t.block_r, BLOCK_D=t.block_d)  # fmt: skip
    return (partial.shape[0], n_d), scalars, constexprs, t.num_warps


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
    pos = _pos_2d(pos, D)
    out = torch.empty((B, Kc + tgt_idx.shape[1], D), dtype=_out_dtype(ctx, mask_token), device=ctx.device)
    if out.numel() == 0:
        return out
    token = mask_token.reshape(D)
    plan_assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, token, out, device_spec(ctx.device)).launch()
    return out


def assemble_predictor_input_bwd(
    grad_out: torch.Tensor, kc: int, ctx_dtype: torch.dtype, mask_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (grad_ctx [B,Kc,D] in ctx_dtype, grad_mask_token [D] in mask_dtype)."""
    return context_and_token_grads(
        grad_out, kc, ctx_dtype, mask_dtype,
        lambda grad_ctx, partial, device: plan_assemble_predictor_input_bwd(grad_out, grad_ctx, partial,
                                                                            device).launch(),
    )


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


def _grads(ctx, grad_out, backward):
    """The five input gradients from ``backward`` (the custom op, or its launcher in eager mode)."""
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[4]):
        return None, None, None, None, None
    grad_ctx, grad_mask = backward(grad_out, ctx.kc, ctx.ctx_dtype, ctx.mask_dtype)
    return (
        grad_ctx if ctx.needs_input_grad[0] else None,
        None,
        None,
        None,  # pos: constant (frozen table)
        grad_mask.reshape(ctx.mask_shape) if ctx.needs_input_grad[4] else None,
    )


def _backward(ctx, grad_out):
    return _grads(ctx, grad_out, assemble_predictor_input_backward_op)


assemble_predictor_input_op.register_autograd(_backward, setup_context=_setup_context)


class _AssemblePredictorInput(torch.autograd.Function):
    """The eager path: the same launchers as the custom ops, without the custom-op dispatch (which
    costs more host time per call than the kernels take at V-JEPA sizes)."""

    @staticmethod
    def forward(ctx, c, ctx_idx, tgt_idx, pos, mask_token):
        out = assemble_predictor_input_fwd(c, ctx_idx, tgt_idx, pos, mask_token)
        _setup_context(ctx, (c, ctx_idx, tgt_idx, pos, mask_token), out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return _grads(ctx, grad_out, assemble_predictor_input_bwd)


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
        if torch.compiler.is_compiling():
            return assemble_predictor_input_op(ctx, ctx_idx, tgt_idx, pos, mask_token)
        return _AssemblePredictorInput.apply(ctx, ctx_idx, tgt_idx, pos, mask_token)
    return reference.assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, mask_token)


# ---------------------------------------------------------------------------------------------------
# Ahead-of-time plans at the V-JEPA shapes (kernels/aot.py)

_B, _N, _PRED_DIM = 24, 1568, 384
_MASKS = ((364, 746), (103, 1101))  # (context K, target K): short- and long-range mean lengths


def aot_plans() -> list[LaunchPlan]:
    """The predictor-input launches at V-JEPA shapes on a 132-SM Hopper: batch 24, predictor width
    384, N = 1568, (Kc, Kt) = (364, 746) and (103, 1101); ctx in bf16 (autocast) or fp32 with the
    fp32 position table and mask token (so the output and its gradient are fp32); forward and
    backward. Plans that differ only in the mask lengths share a ``group``."""
    device = DeviceSpec()
    D = _PRED_DIM
    plans = []
    for dtype in (torch.bfloat16, torch.float32):
        dt = str(dtype).replace("torch.", "")
        pos, token = TensorSpec((_N, D), torch.float32), TensorSpec((D,), torch.float32)
        for kc, kt in _MASKS:
            ctx = TensorSpec((_B, kc, D), dtype)
            out = TensorSpec((_B, kc + kt, D), torch.float32)
            common = f"D{D} ctx {dt}"
            plans.append(plan_assemble_predictor_input(
                ctx, TensorSpec((_B, kc), torch.int64), TensorSpec((_B, kt), torch.int64), pos, token, out, device,
                label=f"assemble_predictor_input fwd {common} Kc{kc} Kt{kt}",
                group=f"assemble_predictor_input fwd {common}"))  # fmt: skip
            partial = TensorSpec((partial_row_programs(out, ctx, device), D), torch.float32)
            plans.append(plan_assemble_predictor_input_bwd(
                out, ctx, partial, device, label=f"assemble_predictor_input bwd {common} Kc{kc} Kt{kt}",
                group=f"assemble_predictor_input bwd {common}"))  # fmt: skip
    return plans
