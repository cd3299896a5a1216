"""masked_l1_loss: ``mean(|pred - layer_norm(target)[idx]|)`` without materialising the normalised target.

Official (jepa ``app/vjepa/train.py``)::

    h = F.layer_norm(target_encoder(clips), (D,)); h = apply_masks(h, masks_pred)
    loss = torch.mean(torch.abs(z - h))

Here only the K gathered target rows are read and normalised (layer norm over D, no affine, eps 1e-5,
biased variance, all in fp32); the forward writes one fp32 partial sum per program and
``partials.sum() / numel`` gives the loss, so the result is deterministic. The backward recomputes the
normalised rows and writes ``grad_pred = sign(pred - t_hat) * (grad_out / numel)`` (``sign(0) = 0``,
the subgradient ``torch.abs`` uses). ``target`` is a constant (the official target is computed under
``no_grad``) and gets no gradient.
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
    full_row_blocks,
    persistent_rows,
    round_to,
)

LN_EPS = reference.LN_EPS
_MAX_D = 16384


@triton.jit
def _normalized_rows(TGT_ptr, IDX_ptr, rows, row_mask, cols, col_mask, K, D, eps,
                     TGT_stride_b, TGT_stride_n, TGT_stride_d, IDX_stride_b, IDX_stride_k,
                     COMPUTE: tl.constexpr):  # fmt: skip
    """layer_norm(target[b, idx[b,k], :]) for a tile of rows; also returns (b, k)."""
    b = rows // K
    k = rows - b * K
    src = tl.load(IDX_ptr + b * IDX_stride_b + k * IDX_stride_k, mask=row_mask, other=0).to(tl.int64)
    mask = row_mask[:, None] & col_mask[None, :]
    t_offs = (b * TGT_stride_b + src * TGT_stride_n)[:, None] + cols[None, :] * TGT_stride_d
    t = tl.load(TGT_ptr + t_offs, mask=mask, other=0.0).to(COMPUTE)
    # IEEE-rounded division, as torch's layer_norm: Triton's `/` on fp32 compiles to the approximate
    # div.full.f32 on a GPU, which puts a constant row's mean an ulp off, so t - mean != 0 there.
    n = tl.cast(D, COMPUTE)
    mean = tl.div_rn(tl.sum(t, axis=1), n)
    xc = tl.where(mask, t - mean[:, None], 0.0)
    var = tl.div_rn(tl.sum(xc * xc, axis=1), n)
    rstd = tl.div_rn(tl.full(var.shape, 1.0, COMPUTE), tl.sqrt_rn(var + tl.cast(eps, COMPUTE)))
    return xc * rstd[:, None], b, k, mask


@triton.jit
def _masked_l1_loss_fwd_kernel(
    PRED_ptr,  # pointer to predictions, shape (B, K, D), any strides
    TGT_ptr,  # pointer to target features, shape (B, N, D), any strides
    IDX_ptr,  # pointer to target indices, shape (B, K)
    PARTIAL_ptr,  # pointer to per-program sums of |pred - t_hat|, shape (n_programs,)
    n_rows,  # B * K
    K,
    D,
    eps,
    PRED_stride_b,
    PRED_stride_k,
    PRED_stride_d,
    TGT_stride_b,
    TGT_stride_n,
    TGT_stride_d,
    IDX_stride_b,
    IDX_stride_k,
    COMPUTE: tl.constexpr,
    ITERS: tl.constexpr,  # row tiles per program
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,  # >= D: a whole row per tile for the layer-norm statistics
):
    """Sum over this program's rows of |pred - layer_norm(target[idx])| (F.layer_norm: biased var)."""
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D).to(tl.int64)
    col_mask = cols < D
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=COMPUTE)
    row0 = pid * (ITERS * BLOCK_R)
    for it in range(ITERS):
        rows = row0 + it * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        row_mask = rows < n_rows
        t_hat, b, k, mask = _normalized_rows(
            TGT_ptr, IDX_ptr, rows, row_mask, cols, col_mask, K, D, eps,
            TGT_stride_b, TGT_stride_n, TGT_stride_d, IDX_stride_b, IDX_stride_k, COMPUTE,
        )  # fmt: skip
        p_offs = (b * PRED_stride_b + k * PRED_stride_k)[:, None] + cols[None, :] * PRED_stride_d
        p = tl.load(PRED_ptr + p_offs, mask=mask, other=0.0)
        acc += tl.where(mask, tl.abs(p.to(COMPUTE) - t_hat), 0.0)
    tl.store(PARTIAL_ptr + pid, tl.sum(tl.sum(acc, axis=1), axis=0))


@triton.jit
def _masked_l1_loss_bwd_kernel(
    PRED_ptr,  # pointer to predictions, shape (B, K, D), any strides
    TGT_ptr,  # pointer to target features, shape (B, N, D), any strides
    IDX_ptr,  # pointer to target indices, shape (B, K)
    GOUT_ptr,  # pointer to the loss gradient, a single value
    DPRED_ptr,  # pointer to the prediction gradient, shape (B, K, D), contiguous
    n_rows,
    K,
    D,
    eps,
    numel,  # B * K * D, the mean's divisor
    PRED_stride_b,
    PRED_stride_k,
    PRED_stride_d,
    TGT_stride_b,
    TGT_stride_n,
    TGT_stride_d,
    IDX_stride_b,
    IDX_stride_k,
    COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dpred = sign(pred - layer_norm(target[idx])) * (grad_out / numel), t_hat recomputed."""
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D).to(tl.int64)
    col_mask = cols < D
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_mask = rows < n_rows
    t_hat, b, k, mask = _normalized_rows(
        TGT_ptr, IDX_ptr, rows, row_mask, cols, col_mask, K, D, eps,
        TGT_stride_b, TGT_stride_n, TGT_stride_d, IDX_stride_b, IDX_stride_k, COMPUTE,
    )  # fmt: skip
    p_offs = (b * PRED_stride_b + k * PRED_stride_k)[:, None] + cols[None, :] * PRED_stride_d
    p = tl.load(PRED_ptr + p_offs, mask=mask, other=0.0)
    diff = p.to(COMPUTE) - t_hat
    scale = tl.div_rn(tl.load(GOUT_ptr).to(COMPUTE), tl.cast(numel, COMPUTE))
    sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0)).to(COMPUTE)
    dp = round_to(sign * scale, DPRED_ptr.dtype.element_ty)
    tl.store(DPRED_ptr + (rows * D)[:, None] + cols[None, :], dp, mask=mask)


# ---------------------------------------------------------------------------------------------------
# Host launchers


def _check(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> None:
    ok = pred.dim() == 3 and target.dim() == 3 and idx.shape == pred.shape[:2]
    if not ok or target.shape[0] != pred.shape[0] or target.shape[2] != pred.shape[2]:
        raise ValueError(
            f"expected pred [B,K,D], target [B,N,D], idx [B,K]; got {tuple(pred.shape)}, "
            f"{tuple(target.shape)}, {tuple(idx.shape)}"
        )
    if pred.shape[2] > _MAX_D:
        raise ValueError(f"D = {pred.shape[2]} > {_MAX_D}: a row must fit one tile")
    check_launchable(pred)
    check_float("pred", pred)
    check_float("target", target)
    check_index("idx", idx)


def _loss_dtype(pred: torch.Tensor, target: torch.Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)


def masked_l1_loss_fwd(
    pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor, eps: float = LN_EPS
) -> torch.Tensor:
    _check(pred, target, idx)
    B, K, D = pred.shape
    acc = _loss_dtype(pred, target)
    n_rows = B * K
    if pred.numel() == 0:
        return torch.full((), float("nan"), dtype=acc, device=pred.device)
    block_r, block_d, num_warps = full_row_blocks(n_rows, D)
    n_progs, iters = persistent_rows(n_rows, block_r, 1, pred.device)
    partial = torch.empty((n_progs,), dtype=acc, device=pred.device)
    _masked_l1_loss_fwd_kernel[(n_progs,)](
        pred, target, idx, partial,
        n_rows, K, D, eps,
        pred.stride(0), pred.stride(1), pred.stride(2),
        target.stride(0), target.stride(1), target.stride(2),
        idx.stride(0), idx.stride(1),
        COMPUTE=compute_dtype(acc), ITERS=iters, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return partial.sum() / pred.numel()


def masked_l1_loss_bwd(
    grad_out: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor, eps: float = LN_EPS
) -> torch.Tensor:
    B, K, D = pred.shape
    grad_pred = torch.empty((B, K, D), dtype=pred.dtype, device=pred.device)
    if pred.numel() == 0:
        return grad_pred
    n_rows = B * K
    block_r, block_d, num_warps = full_row_blocks(n_rows, D)
    _masked_l1_loss_bwd_kernel[(cdiv(n_rows, block_r),)](
        pred, target, idx, grad_out.reshape(1), grad_pred,
        n_rows, K, D, eps, pred.numel(),
        pred.stride(0), pred.stride(1), pred.stride(2),
        target.stride(0), target.stride(1), target.stride(2),
        idx.stride(0), idx.stride(1),
        COMPUTE=compute_dtype(_loss_dtype(pred, target)),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=num_warps,
    )  # fmt: skip
    return grad_pred


# ---------------------------------------------------------------------------------------------------
# Custom ops with autograd


@torch.library.custom_op("vjepa_fast::masked_l1_loss", mutates_args=())
def masked_l1_loss_op(
    pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor, eps: float
) -> torch.Tensor:
    return masked_l1_loss_fwd(pred, target, idx, eps)


@masked_l1_loss_op.register_fake
def _(pred, target, idx, eps):
    return pred.new_empty((), dtype=_loss_dtype(pred, target))


@torch.library.custom_op("vjepa_fast::masked_l1_loss_backward", mutates_args=())
def masked_l1_loss_backward_op(
    grad_out: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor, eps: float
) -> torch.Tensor:
    return masked_l1_loss_bwd(grad_out, pred, target, idx, eps)


@masked_l1_loss_backward_op.register_fake
def _(grad_out, pred, target, idx, eps):
    return torch.empty_like(pred, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    pred, target, idx, eps = inputs
    ctx.save_for_backward(pred, target, idx)
    ctx.eps = eps


def _backward(ctx, grad_out):
    pred, target, idx = ctx.saved_tensors
    grad_pred = None
    if ctx.needs_input_grad[0]:
        grad_pred = masked_l1_loss_backward_op(grad_out, pred, target, idx, ctx.eps)
    return grad_pred, None, None, None  # target: constant (no_grad in the official loop)


masked_l1_loss_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------
# Functional API


def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``mean(|pred - layer_norm(target)[idx]|)``, the V-JEPA loss for one mask configuration.

    Args:
        pred: ``[B,K,D]`` predictor output (any float dtype; gets the gradient).
        target: ``[B,N,D]`` target-encoder features; a constant (no gradient).
        idx: ``[B,K]`` int32/int64 target-token indices.
    Returns:
        0-d loss in fp32 (fp64 for fp64 inputs): layer norm without affine, eps 1e-5, computed in
        fp32 for the gathered rows only.
    """
    if kernel_backend(pred) == "triton":
        return masked_l1_loss_op(pred, target, idx, LN_EPS)
    return reference.masked_l1_loss(pred, target, idx)
