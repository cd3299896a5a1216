"""assemble_sorted_predictor_input: the V-JEPA 2 predictor's input, already sorted by token id, in one kernel.

Official (vjepa2 ``src/models/predictor.py`` with RoPE, no position table; /work/shared/reference/
official_vjepa.md §8.3)::

    x = predictor_embed(ctxt)                                          # [B, Kc, Dp]
    pred_tokens = apply_masks(mask_token.repeat(B, N, 1), masks_tgt)   # [B, Kt, Dp]
    x = cat([x, pred_tokens], dim=1)
    argsort = torch.argsort(cat([masks_ctxt, masks_tgt], dim=1), dim=1)
    x = stack([x[i, row, :] for i, row in enumerate(argsort)])

Here, with ``order`` that argsort ([B, L], L = Kc + Kt): ``out[b, r] = z[b, order[b, r]]`` where
``order[b, r] < Kc``, else the mask token; one write of the sorted sequence, with neither the
concatenated sequence nor the repeated mask token in memory. The output dtype is
``promote(z.dtype, mask_token.dtype)`` as ``cat`` gives (fp32 for a bf16 ``z`` and the fp32 mask
token under autocast); both halves widen exactly, so the output is bit-identical to cat + gather.

Backward, with ``inverse`` = argsort(order) (row j of the unsorted sequence is row ``inverse[b, j]``
of the sorted one): ``grad_z[b, j] = grad_out[b, inverse[b, j]]`` for j < Kc, rounded to z's dtype
(bit-identical to autograd through cat + gather); ``grad_mask_token`` is the sum of the rows
``grad_out[b, inverse[b, j]]``, j >= Kc, over batch and targets. That reduction is deterministic:
each program accumulates a fixed set of row tiles in fp32 (fp64 for fp64 inputs) and writes one
partial row, and ``torch.sum`` adds the partials (no atomics). Its order differs from torch's own
sum: for an fp32 mask token (every V-JEPA 2 model) it equals autograd's result up to fp32 rounding;
for a bf16 / fp16 token under a wider output, autograd rounds each row to the token's dtype before
summing while this kernel sums in fp32 and rounds once, so it is the more accurate of the two
(tests: against the float64 sum).

``order`` must hold a permutation of 0..L-1 per row and ``inverse`` its inverse (not checked on the
device: that would sync); other values stay in bounds (loads of z only for 0 <= order < Kc, of the
gradient only for 0 <= inverse < L) but give meaningless rows.

Launches are planned (:func:`plan_sorted_predictor_input`, :func:`plan_sorted_predictor_input_bwd`:
pure functions of metadata and a :class:`~.plan.DeviceSpec`) and then run; grids are persistent and
the compiled variants do not depend on ``B``, ``Kc`` or ``L``. :func:`aot_plans` lists the V-JEPA 2
launches for ``kernels/aot.py``.
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
    context_and_token_grads,
    device_spec,
    gathered_rows,
    metadata,
    needs_int64,
    partial_row_programs,
    persistent_programs,
    round_to,
    row_tiling,
    spec_of,
    tile_mask,
    tile_rows_cols,
    tl_dtype,
)

# Runtime lengths and strides that change with the mask lengths: not specialised (no recompiles).
_LENGTH_ARGS = ["ORDER_ptr", "n_rows", "L", "Kc", "n_tiles", "O_stride_b", "O_stride_l"]


@triton.jit(do_not_specialize=_LENGTH_ARGS)
def _sorted_predictor_input_kernel(
    Z_ptr,  # embedded context, shape (B, Kc, D), any strides
    ORDER_ptr,  # argsort of the token ids, shape (B, L), int32 or int64
    MASK_ptr,  # the mask token, shape (D,), any stride
    OUT_ptr,  # output, shape (B, L, D), contiguous, dtype promote(z, mask token)
    n_rows,  # B * L
    L,  # Kc + Kt
    Kc,
    n_tiles,  # cdiv(n_rows, BLOCK_R) * cdiv(D, BLOCK_D)
    Z_stride_b,
    Z_stride_k,
    Z_stride_d,
    O_stride_b,
    O_stride_l,
    MASK_stride_d,
    D: tl.constexpr,
    INDEX_64: tl.constexpr,  # an element offset may exceed int32
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[b, r] = z[b, order[b, r]] if order[b, r] < Kc else mask_token (widened to out's dtype).

    Persistent: program p handles tiles p, p + num_programs, ... (a runtime bound).
    """
    tile = tl.program_id(0)
    while tile < n_tiles:
        rows, cols = tile_rows_cols(tile, D, BLOCK_R, BLOCK_D)
        row_mask, b, _, src = gathered_rows(rows, n_rows, L, ORDER_ptr, O_stride_b, O_stride_l, INDEX_64)
        is_ctx = (src < Kc) & (src >= 0)  # src >= 0: an invalid order never reads before z
        if INDEX_64:
            rows = rows.to(tl.int64)
            cols = cols.to(tl.int64)
        mask = tile_mask(row_mask, cols, D, BLOCK_D)
        z = tl.load(Z_ptr + (b * Z_stride_b + src * Z_stride_k)[:, None] + cols[None, :] * Z_stride_d,
                    mask=mask & is_ctx[:, None], other=0.0)  # fmt: skip
        # The token through a [BLOCK_R, BLOCK_D] pointer tile (row stride 0, L1 hits): loaded in the
        # output's layout, 128-bit, where a [BLOCK_D] load would go through shared memory.
        t = tl.load(MASK_ptr + (rows * 0)[:, None] + cols[None, :] * MASK_stride_d, mask=mask, other=0.0)
        # Widening only (out's dtype is the promotion of both): exact, as cat's own conversion.
        out_ty = OUT_ptr.dtype.element_ty
        out = tl.where(is_ctx[:, None], z.to(out_ty), t.to(out_ty))
        tl.store(OUT_ptr + rows[:, None] * D + cols[None, :], out, mask=mask)
        tile += tl.num_programs(0)


@triton.jit(do_not_specialize=["INV_ptr", "n_rows", "L", "Kc", "n_row_tiles", "I_stride_b", "I_stride_l"])
def _sorted_predictor_input_bwd_kernel(
    GRAD_ptr,  # output gradient, shape (B, L, D), any strides
    INV_ptr,  # inverse permutation, shape (B, L): unsorted row j is sorted row inverse[b, j]
    DZ_ptr,  # context gradient, shape (B, Kc, D), contiguous
    PARTIAL_ptr,  # mask-token partial sums, shape (num_programs(0), D), fp32/fp64
    n_rows,  # B * L
    L,
    Kc,
    n_row_tiles,  # cdiv(n_rows, BLOCK_R)
    I_stride_b,
    I_stride_l,
    GRAD_stride_b,
    GRAD_stride_l,
    GRAD_stride_d,
    D: tl.constexpr,
    COMPUTE: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Unsorted rows j < Kc: dz[b, j] = grad[b, inverse[b, j]]; rows j >= Kc: summed into one
    partial row per program.

    Grid (P, cdiv(D, BLOCK_D)): program (p, c) handles column block c of row tiles p, p + P, ...,
    so its partial sum covers a fixed set of rows (deterministic for a given P).
    """
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    if INDEX_64:
        cols = cols.to(tl.int64)
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=COMPUTE)
    rt = pid
    while rt < n_row_tiles:
        rows = rt * BLOCK_R + tl.arange(0, BLOCK_R)
        row_mask, b, j, src = gathered_rows(rows, n_rows, L, INV_ptr, I_stride_b, I_stride_l, INDEX_64)
        row_mask = row_mask & (src >= 0) & (src < L)  # an invalid inverse never reads out of bounds
        is_ctx = j < Kc
        mask = tile_mask(row_mask, cols, D, BLOCK_D)
        g_offs = (b * GRAD_stride_b + src * GRAD_stride_l)[:, None] + cols[None, :] * GRAD_stride_d
        g = tl.load(GRAD_ptr + g_offs, mask=mask, other=0.0)
        dz_offs = ((b * Kc + j) * D)[:, None] + cols[None, :]
        tl.store(DZ_ptr + dz_offs, round_to(g, DZ_ptr.dtype.element_ty), mask=mask & is_ctx[:, None])
        acc += tl.where(mask & (~is_ctx)[:, None], g.to(COMPUTE), 0.0)
        rt += tl.num_programs(0)
    if D % BLOCK_D == 0:
        tl.store(PARTIAL_ptr + pid * D + cols, tl.sum(acc, axis=0))
    else:
        tl.store(PARTIAL_ptr + pid * D + cols, tl.sum(acc, axis=0), mask=cols < D)


# ---------------------------------------------------------------------------------------------------
# Planners: pure functions of metadata (tensors or TensorSpecs) and the device


def plan_sorted_predictor_input(z, order, mask_token, out, device: DeviceSpec, label: str = "",
                                group: str = "") -> LaunchPlan:  # fmt: skip
    """The launch writing ``out`` [B, L, D] (contiguous) from ``z`` [B, Kc, D], ``order`` [B, L]
    and ``mask_token`` [D]: tensors or :class:`~.plan.TensorSpec` (shapes, strides and dtypes are
    read; cached on them)."""
    grid, scalars, constexprs, warps = _forward_config(metadata(z), metadata(order), metadata(mask_token),
                                                       metadata(out), device)  # fmt: skip
    return LaunchPlan(_sorted_predictor_input_kernel, grid, (z, order, mask_token, out, *scalars), constexprs,
                      warps, label=label, group=group)  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _forward_config(zm, om, mm, outm, device: DeviceSpec):
    z, order, mask_token, out = (spec_of(m) for m in (zm, om, mm, outm))
    B, Kc, D = z.shape
    L = order.shape[1]
    # One 128-bit vector per thread of the narrowest stream. A bf16 z (autocast) with the fp32
    # output: 128-bit loads of z, and the output goes out as two 128-bit vectors per thread after a
    # layout change through 4 KB of shared memory (Triton caps a thread's store at 128 bits). Sizing
    # for fp32 instead avoids the shared memory but loads z 64 bits per thread; which is faster is
    # not yet measured on GPU.
    t = row_tiling(D, min(z.element_size(), out.element_size()), device)
    n_tiles = cdiv(B * L, t.block_r) * cdiv(D, t.block_d)
    scalars = (B * L, L, Kc, n_tiles, *z.stride(), *order.stride(), mask_token.stride(0))
    constexprs = {"D": D, "INDEX_64": needs_int64(z, order, mask_token, out), "BLOCK_R": t.block_r,
                  "BLOCK_D": t.block_d}  # fmt: skip
    return (persistent_programs(n_tiles, t, device),), scalars, constexprs, t.num_warps


def plan_sorted_predictor_input_bwd(grad_out, inverse, grad_z, partial, device: DeviceSpec, label: str = "",
                                    group: str = "") -> LaunchPlan:  # fmt: skip
    """The backward launch: ``grad_z`` [B, Kc, D] (contiguous) <- rows ``inverse[:, :Kc]`` of
    ``grad_out`` [B, L, D]; ``partial`` [partial_row_programs(...), D] <- per-program sums of rows
    ``inverse[:, Kc:]``."""
    metas = (metadata(t) for t in (grad_out, inverse, grad_z, partial))
    grid, scalars, constexprs, warps = _backward_config(*metas, device)
    args = (grad_out, inverse, grad_z, partial, *scalars)
    kernel = _sorted_predictor_input_bwd_kernel
    return LaunchPlan(kernel, grid, args, constexprs, warps, label=label, group=group)


@functools.lru_cache(maxsize=1024)
def _backward_config(gm, im, zm, pm, device: DeviceSpec):
    grad_out, inverse, grad_z, partial = (spec_of(m) for m in (gm, im, zm, pm))
    B, L, D = grad_out.shape
    t = row_tiling(D, min(grad_out.element_size(), grad_z.element_size()), device)
    n_row_tiles, n_d = cdiv(B * L, t.block_r), cdiv(D, t.block_d)
    scalars = (B * L, L, grad_z.shape[1], n_row_tiles, *inverse.stride(), *grad_out.stride())
    index_64 = needs_int64(grad_out, inverse, grad_z, partial)
    constexprs = {"D": D, "COMPUTE": tl_dtype(partial.dtype), "INDEX_64": index_64, "BLOCK_R": t.block_r,
                  "BLOCK_D": t.block_d}  # fmt: skip
    return (partial.shape[0], n_d), scalars, constexprs, t.num_warps


# ---------------------------------------------------------------------------------------------------
# Host launchers


def _check(z, order, mask_token, inverse=None) -> None:
    """Shapes, dtypes and devices only (a permutation check would sync with the device)."""
    if z.dim() != 3 or order.dim() != 2 or order.shape[0] != z.shape[0] or order.shape[1] < z.shape[1]:
        raise ValueError(f"expected z [B,Kc,D] and order [B,L] with L >= Kc; got z {tuple(z.shape)}, "
                         f"order {tuple(order.shape)}")  # fmt: skip
    if inverse is not None and inverse.shape != order.shape:
        raise ValueError(f"inverse must have order's shape {tuple(order.shape)}, got {tuple(inverse.shape)}")
    if mask_token.numel() != z.shape[2]:
        raise ValueError(f"mask_token must hold D = {z.shape[2]} values, got {tuple(mask_token.shape)}")
    check_float("z", z)
    check_float("mask_token", mask_token)
    check_index("order", order)
    if inverse is not None:
        check_index("inverse", inverse)
    for name, t in (("order", order), ("mask_token", mask_token), ("inverse", inverse)):
        if t is not None and t.device != z.device:
            raise ValueError(f"{name} is on {t.device}, z on {z.device}")
    check_launchable(z)


def _out_dtype(z: torch.Tensor, mask_token: torch.Tensor) -> torch.dtype:
    return torch.promote_types(z.dtype, mask_token.dtype)


def sorted_predictor_input_fwd(z, order, mask_token) -> torch.Tensor:
    _check(z, order, mask_token)
    B, _, D = z.shape
    out = torch.empty((B, order.shape[1], D), dtype=_out_dtype(z, mask_token), device=z.device)
    if out.numel() == 0:
        return out
    plan_sorted_predictor_input(z, order, mask_token.reshape(D), out, device_spec(z.device)).launch()
    return out


def sorted_predictor_input_bwd(
    grad_out: torch.Tensor, inverse: torch.Tensor, kc: int, z_dtype: torch.dtype, mask_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (grad_z [B,Kc,D] in z_dtype, grad_mask_token [D] in mask_dtype)."""
    B, L, _ = grad_out.shape
    check_index("inverse", inverse)
    if inverse.shape != (B, L):
        raise ValueError(f"inverse must be [B, L] = {(B, L)} like the output gradient, "
                         f"got {tuple(inverse.shape)}")  # fmt: skip
    return context_and_token_grads(
        grad_out, kc, z_dtype, mask_dtype,
        lambda grad_z, partial, device: plan_sorted_predictor_input_bwd(grad_out, inverse, grad_z, partial,
                                                                        device).launch(),
    )


# ---------------------------------------------------------------------------------------------------
# Custom ops with autograd


@torch.library.custom_op("vjepa_fast::sorted_predictor_input", mutates_args=())
def sorted_predictor_input_op(
    z: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, mask_token: torch.Tensor
) -> torch.Tensor:
    return sorted_predictor_input_fwd(z, order, mask_token)


@sorted_predictor_input_op.register_fake
def _(z, order, inverse, mask_token):
    return z.new_empty((z.shape[0], order.shape[1], z.shape[2]), dtype=_out_dtype(z, mask_token))


@torch.library.custom_op("vjepa_fast::sorted_predictor_input_backward", mutates_args=())
def sorted_predictor_input_backward_op(
    grad_out: torch.Tensor, inverse: torch.Tensor, kc: int, z_dtype: torch.dtype, mask_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    return sorted_predictor_input_bwd(grad_out, inverse, kc, z_dtype, mask_dtype)


@sorted_predictor_input_backward_op.register_fake
def _(grad_out, inverse, kc, z_dtype, mask_dtype):
    B, _, D = grad_out.shape
    return grad_out.new_empty((B, kc, D), dtype=z_dtype), grad_out.new_empty((D,), dtype=mask_dtype)


def _setup_context(ctx, inputs, output):
    z, _, inverse, mask_token = inputs
    ctx.save_for_backward(inverse)
    ctx.kc = z.shape[1]
    ctx.z_dtype = z.dtype
    ctx.mask_dtype = mask_token.dtype
    ctx.mask_shape = mask_token.shape


def _grads(ctx, grad_out, backward):
    """The four input gradients from ``backward`` (the custom op, or its launcher in eager mode)."""
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[3]):
        return None, None, None, None
    (inverse,) = ctx.saved_tensors
    grad_z, grad_mask = backward(grad_out, inverse, ctx.kc, ctx.z_dtype, ctx.mask_dtype)
    return (
        grad_z if ctx.needs_input_grad[0] else None,
        None,
        None,
        grad_mask.reshape(ctx.mask_shape) if ctx.needs_input_grad[3] else None,
    )


def _backward(ctx, grad_out):
    return _grads(ctx, grad_out, sorted_predictor_input_backward_op)


sorted_predictor_input_op.register_autograd(_backward, setup_context=_setup_context)


class _SortedPredictorInput(torch.autograd.Function):
    """The eager path: the same launchers as the custom ops, without the custom-op dispatch (which
    costs more host time per call than the kernels take at V-JEPA sizes)."""

    @staticmethod
    def forward(ctx, z, order, inverse, mask_token):
        out = sorted_predictor_input_fwd(z, order, mask_token)
        _setup_context(ctx, (z, order, inverse, mask_token), out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return _grads(ctx, grad_out, sorted_predictor_input_bwd)


# ---------------------------------------------------------------------------------------------------
# Functional API


def assemble_sorted_predictor_input(
    z: torch.Tensor, order: torch.Tensor, mask_token: torch.Tensor, inverse: torch.Tensor | None = None
) -> torch.Tensor:
    """``cat([z, mask_token.expand(B, Kt, -1)], 1).gather(1, order[..., None].expand(-1, -1, D))``.

    Args:
        z: ``[B,Kc,D]`` context tokens, already through ``predictor_embed``.
        order: ``[B,L]`` int32/int64, ``L = Kc + Kt``: per row the argsort of the token ids
            ``cat([ctx_idx, tgt_idx], 1)`` (a permutation of 0..L-1; not checked on the device).
        mask_token: ``[1,1,D]`` or ``[D]`` learned mask token (gets the summed gradient).
        inverse: ``[B,L]`` ``argsort(order, 1)`` if the caller has it (the V2 predictor keeps it to
            unsort); computed here when None and the Triton path needs it for the backward.
    Returns:
        ``[B,L,D]`` in ``promote(z.dtype, mask_token.dtype)``: row r is ``z[b, order[b, r]]`` where
        ``order[b, r] < Kc``, else the mask token; bit-identical to cat + gather.
    Raises:
        ValueError: shapes that do not fit (named with their shapes), tensors on different devices.
        TypeError: non-float ``z`` / ``mask_token``, non-integer ``order``.
    """
    if kernel_backend(z) == "triton":
        _check(z, order, mask_token, inverse)
        if inverse is None:
            inverse = torch.argsort(order, dim=1)
        if torch.compiler.is_compiling():
            return sorted_predictor_input_op(z, order, inverse, mask_token)
        return _SortedPredictorInput.apply(z, order, inverse, mask_token)
    return reference.assemble_sorted_predictor_input(z, order, mask_token)


# ---------------------------------------------------------------------------------------------------
# Ahead-of-time plans at the V-JEPA 2 shapes (kernels/aot.py)

_B, _PRED_DIM = 24, 384
#: Mean context / target lengths of the V2 masks at 16 x 256 px (N = 2048; the official collator's
#: statistics, fixtures README): short-range 498 / 970, long-range 132 / 1439.
_MASKS = ((498, 970), (132, 1439))


def aot_plans() -> list[LaunchPlan]:
    """The sorted predictor-input launches of a V2 step on a 132-SM Hopper: batch 24, predictor width
    384, (Kc, Kt) = (498, 970) and (132, 1439); z in bf16 (autocast) or fp32 with the fp32 mask
    token (so the output and its gradient are fp32); forward and backward. Plans that differ only in
    the mask lengths share a ``group``."""
    device = DeviceSpec()
    D = _PRED_DIM
    plans = []
    for dtype in (torch.bfloat16, torch.float32):
        dt = str(dtype).replace("torch.", "")
        token = TensorSpec((D,), torch.float32)
        for kc, kt in _MASKS:
            L = kc + kt
            z, out = TensorSpec((_B, kc, D), dtype), TensorSpec((_B, L, D), torch.float32)
            perm = TensorSpec((_B, L), torch.int64)
            common = f"D{D} z {dt}"
            plans.append(plan_sorted_predictor_input(
                z, perm, token, out, device, label=f"sorted_predictor_input fwd {common} Kc{kc} Kt{kt}",
                group=f"sorted_predictor_input fwd {common}"))  # fmt: skip
            partial = TensorSpec((partial_row_programs(out, z, device), D), torch.float32)
            plans.append(plan_sorted_predictor_input_bwd(
                out, perm, z, partial, device, label=f"sorted_predictor_input bwd {common} Kc{kc} Kt{kt}",
                group=f"sorted_predictor_input bwd {common}"))  # fmt: skip
    return plans
