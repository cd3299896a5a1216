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
    device_spec,
    gathered_rows,
    metadata,
    needs_int64,
    persistent_programs,
    round_to,
    row_tiling,
    spec_of,
    tile_mask,
)

LN_EPS = reference.LN_EPS


@triton.jit
def _column_block(c, row_mask, D: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_D: tl.constexpr):
    """(cols, mask) of column block ``c`` of the rows ``row_mask`` selects."""
    cols = c * BLOCK_D + tl.arange(0, BLOCK_D)
    if INDEX_64:
        cols = cols.to(tl.int64)
    return cols, tile_mask(row_mask, cols, D, BLOCK_D)


@triton.jit
def _tile_rows(tile, n_rows, K, IDX_ptr, IDX_stride_b, IDX_stride_k, TGT_stride_b, TGT_stride_n,
               PRED_stride_b, PRED_stride_k, INDEX_64: tl.constexpr, BLOCK_R: tl.constexpr):  # fmt: skip
    """Row tile ``tile`` -> (rows, row_mask, element offsets of its gathered target rows, of its
    prediction rows)."""
    rows = tile * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask, b, k, src = gathered_rows(rows, n_rows, K, IDX_ptr, IDX_stride_b, IDX_stride_k, INDEX_64)
    return rows, row_mask, b * TGT_stride_b + src * TGT_stride_n, b * PRED_stride_b + k * PRED_stride_k


@triton.jit
def _row_stats(TGT_ptr, t_base, row_mask, TGT_stride_d, eps, D: tl.constexpr, COMPUTE: tl.constexpr,
               INDEX_64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """(mean, rstd) of F.layer_norm (biased variance) for BLOCK_R gathered target rows starting at
    element offsets ``t_base``, streaming D in column blocks of BLOCK_D.

    Each block's mean and centred sum of squares are merged into the running ones (Chan et al.'s
    pairwise update), so no row has to fit in registers and no lane idles when BLOCK_D divides D.
    With one block this is exactly mean = sum / D, var = sum((t - mean)^2) / D. Divisions are
    IEEE-rounded (``div_rn``), as torch's layer_norm: Triton's fp32 ``/`` compiles to the
    approximate div.full.f32 on a GPU, which puts a constant row's mean an ulp off (t - mean != 0).
    """
    mean = tl.zeros((BLOCK_R,), dtype=COMPUTE)
    m2 = tl.zeros((BLOCK_R,), dtype=COMPUTE)
    for c in range((D + BLOCK_D - 1) // BLOCK_D):
        cols, mask = _column_block(c, row_mask, D, INDEX_64, BLOCK_D)
        t = tl.load(TGT_ptr + t_base[:, None] + cols[None, :] * TGT_stride_d, mask=mask, other=0.0).to(COMPUTE)
        n_b = tl.minimum(tl.cast(D - c * BLOCK_D, COMPUTE), BLOCK_D)  # valid columns in this block
        mean_b = tl.div_rn(tl.sum(t, axis=1), tl.full((BLOCK_R,), 1.0, COMPUTE) * n_b)
        xc = tl.where(mask, t - mean_b[:, None], 0.0)
        m2_b = tl.sum(xc * xc, axis=1)
        if c == 0:
            mean = mean_b
            m2 = m2_b
        else:
            n_a = tl.cast(c * BLOCK_D, COMPUTE)
            n = n_a + n_b
            delta = mean_b - mean
            mean = mean + delta * tl.div_rn(n_b, n)
            m2 = m2 + m2_b + delta * delta * tl.div_rn(n_a * n_b, n)
    var = tl.div_rn(m2, tl.full((BLOCK_R,), D, COMPUTE))
    rstd = tl.div_rn(tl.full((BLOCK_R,), 1.0, COMPUTE), tl.sqrt_rn(var + tl.cast(eps, COMPUTE)))
    return mean, rstd


# Runtime lengths and strides that change with the mask length: not specialised (no recompiles).
_LENGTH_ARGS = ["IDX_ptr", "n_rows", "K", "n_tiles", "IDX_stride_b", "IDX_stride_k"]


@triton.jit(do_not_specialize=_LENGTH_ARGS)
def _masked_l1_loss_fwd_kernel(
    PRED_ptr,  # predictions, shape (B, K, D), any strides
    TGT_ptr,  # target features, shape (B, N, D), any strides
    IDX_ptr,  # target indices, shape (B, K)
    PARTIAL_ptr,  # per-program sums of |pred - t_hat|, shape (num_programs,)
    n_rows,  # B * K
    K,
    n_tiles,  # cdiv(n_rows, BLOCK_R)
    eps,
    PRED_stride_b,
    PRED_stride_k,
    PRED_stride_d,
    TGT_stride_b,
    TGT_stride_n,
    TGT_stride_d,
    IDX_stride_b,
    IDX_stride_k,
    D: tl.constexpr,
    COMPUTE: tl.constexpr,
    INDEX_64: tl.constexpr,  # an element offset may exceed int32
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Sum over this program's rows of |pred - layer_norm(target[idx])| (F.layer_norm: biased var).

    Persistent: program p handles row tiles p, p + num_programs, ... (a runtime bound).
    """
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=COMPUTE)
    tile = tl.program_id(0)
    while tile < n_tiles:
        _, row_mask, t_base, p_base = _tile_rows(tile, n_rows, K, IDX_ptr, IDX_stride_b, IDX_stride_k,
                                                 TGT_stride_b, TGT_stride_n, PRED_stride_b, PRED_stride_k,
                                                 INDEX_64, BLOCK_R)  # fmt: skip
        mean, rstd = _row_stats(TGT_ptr, t_base, row_mask, TGT_stride_d, eps, D, COMPUTE, INDEX_64, BLOCK_R, BLOCK_D)
        for c in range((D + BLOCK_D - 1) // BLOCK_D):
            cols, mask = _column_block(c, row_mask, D, INDEX_64, BLOCK_D)
            t = tl.load(TGT_ptr + t_base[:, None] + cols[None, :] * TGT_stride_d, mask=mask, other=0.0)
            p = tl.load(PRED_ptr + p_base[:, None] + cols[None, :] * PRED_stride_d, mask=mask, other=0.0)
            t_hat = (t.to(COMPUTE) - mean[:, None]) * rstd[:, None]
            acc += tl.where(mask, tl.abs(p.to(COMPUTE) - t_hat), 0.0)
        tile += tl.num_programs(0)
    tl.store(PARTIAL_ptr + tl.program_id(0), tl.sum(tl.sum(acc, axis=1), axis=0))


@triton.jit(do_not_specialize=_LENGTH_ARGS + ["numel"])
def _masked_l1_loss_bwd_kernel(
    PRED_ptr,  # predictions, shape (B, K, D), any strides
    TGT_ptr,  # target features, shape (B, N, D), any strides
    IDX_ptr,  # target indices, shape (B, K)
    GOUT_ptr,  # the loss gradient, a single value
    DPRED_ptr,  # the prediction gradient, shape (B, K, D), contiguous
    n_rows,
    K,
    n_tiles,
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
    D: tl.constexpr,
    COMPUTE: tl.constexpr,
    INDEX_64: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dpred = sign(pred - layer_norm(target[idx])) * (grad_out / numel), t_hat recomputed."""
    scale = tl.div_rn(tl.load(GOUT_ptr).to(COMPUTE), tl.cast(numel, COMPUTE))
    tile = tl.program_id(0)
    while tile < n_tiles:
        rows, row_mask, t_base, p_base = _tile_rows(tile, n_rows, K, IDX_ptr, IDX_stride_b, IDX_stride_k,
                                                    TGT_stride_b, TGT_stride_n, PRED_stride_b, PRED_stride_k,
                                                    INDEX_64, BLOCK_R)  # fmt: skip
        if INDEX_64:
            rows = rows.to(tl.int64)
        mean, rstd = _row_stats(TGT_ptr, t_base, row_mask, TGT_stride_d, eps, D, COMPUTE, INDEX_64, BLOCK_R, BLOCK_D)
        for c in range((D + BLOCK_D - 1) // BLOCK_D):
            cols, mask = _column_block(c, row_mask, D, INDEX_64, BLOCK_D)
            t = tl.load(TGT_ptr + t_base[:, None] + cols[None, :] * TGT_stride_d, mask=mask, other=0.0)
            p = tl.load(PRED_ptr + p_base[:, None] + cols[None, :] * PRED_stride_d, mask=mask, other=0.0)
            diff = p.to(COMPUTE) - (t.to(COMPUTE) - mean[:, None]) * rstd[:, None]
            sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0)).to(COMPUTE)
            dp = round_to(sign * scale, DPRED_ptr.dtype.element_ty)
            tl.store(DPRED_ptr + (rows * D)[:, None] + cols[None, :], dp, mask=mask)
        tile += tl.num_programs(0)


# ---------------------------------------------------------------------------------------------------
# Planners: pure functions of metadata (tensors or TensorSpecs) and the device


@functools.lru_cache(maxsize=256)
def _tiling(d: int, elem_bytes: int, device: DeviceSpec):
    # Tiles of one 128-bit vector per thread of the narrowest dtype, a row's column block within one
    # warp (its sums reduce without shared memory). The streamed statistics, the unrolled column
    # loops and the accumulator take 39-48 registers at the V-JEPA shapes (32 spills), so the grid
    # is sized for 10 resident programs of 4 warps per SM (kernels/aot.py checks the fit).
    return row_tiling(d, elem_bytes, device, block_d_cap=32 * max(1, 16 // elem_bytes), programs_per_sm=10)


def plan_masked_l1_loss(pred, target, idx, partial, device: DeviceSpec, eps: float = LN_EPS, label: str = "",
                        group: str = "") -> LaunchPlan:  # fmt: skip
    """The forward launch: ``partial[p]`` = program p's sum of ``|pred - layer_norm(target)[idx]|``.

    ``pred`` [B,K,D], ``target`` [B,N,D], ``idx`` [B,K], ``partial`` [forward_programs(...)] in the
    loss dtype: tensors or :class:`~.plan.TensorSpec` (shapes, strides and dtypes are read; cached
    on them).
    """
    scalars, constexprs, warps, _ = _config(metadata(pred), metadata(target), metadata(idx), None, device)
    args = (pred, target, idx, partial, *scalars[:3], eps, *scalars[4:])
    # The one store per program is its partial sum (a scalar by nature).
    return LaunchPlan(_masked_l1_loss_fwd_kernel, (partial.shape[0],), args, constexprs, warps, label=label,
                      group=group, vector_stores=False)  # fmt: skip


def plan_masked_l1_loss_bwd(grad_out, pred, target, idx, grad_pred, device: DeviceSpec, eps: float = LN_EPS,
                            label: str = "", group: str = "") -> LaunchPlan:  # fmt: skip
    """The backward launch: ``grad_pred`` [B,K,D] (contiguous) = sign(pred - t_hat) * grad_out / numel."""
    scalars, constexprs, warps, grid = _config(metadata(pred), metadata(target), metadata(idx), metadata(grad_pred),
                                               device)  # fmt: skip
    args = (pred, target, idx, grad_out, grad_pred, *scalars[:3], eps, *scalars[3:])
    return LaunchPlan(_masked_l1_loss_bwd_kernel, grid, args, constexprs, warps, label=label, group=group)


def forward_programs(pred, target, device: DeviceSpec) -> int:
    """Programs of the forward plan (= entries of its partial-sum buffer): resident capacity."""
    return _config(metadata(pred), metadata(target), None, None, device)[3][0]


@functools.lru_cache(maxsize=1024)
def _config(pm, tm, im, gm, device: DeviceSpec):
    """(n_rows, K, n_tiles, numel, strides...), constexprs, num_warps, persistent grid. The forward
    plan skips ``numel`` (scalars[3]); ``im`` None: only the grid is wanted."""
    pred, target, idx, grad_pred = (spec_of(m) for m in (pm, tm, im, gm))
    B, K, D = pred.shape
    t = _tiling(D, min(pred.element_size(), target.element_size()), device)
    n_tiles = cdiv(B * K, t.block_r)
    grid = (persistent_programs(n_tiles, t, device),)
    if idx is None:
        return None, None, t.num_warps, grid
    scalars = (B * K, K, n_tiles, B * K * D, *pred.stride(), *target.stride(), *idx.stride())
    constexprs = dict(D=D, COMPUTE=compute_dtype(_loss_dtype(pred, target)), BLOCK_R=t.block_r, BLOCK_D=t.block_d,
                      INDEX_64=needs_int64(pred, target, idx, grad_pred))  # fmt: skip
    return scalars, constexprs, t.num_warps, grid


# ---------------------------------------------------------------------------------------------------
# Host launchers


def _check(pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> None:
    ok = pred.dim() == 3 and target.dim() == 3 and idx.shape == pred.shape[:2]
    if not ok or target.shape[0] != pred.shape[0] or target.shape[2] != pred.shape[2]:
        raise ValueError(
            f"expected pred [B,K,D], target [B,N,D], idx [B,K]; got {tuple(pred.shape)}, "
            f"{tuple(target.shape)}, {tuple(idx.shape)}"
        )
    check_launchable(pred)
    check_float("pred", pred)
    check_float("target", target)
    check_index("idx", idx)


def _loss_dtype(pred, target) -> torch.dtype:
    return torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)


def masked_l1_loss_fwd(
    pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor, eps: float = LN_EPS
) -> torch.Tensor:
    _check(pred, target, idx)
    acc = _loss_dtype(pred, target)
    if pred.numel() == 0:
        return torch.full((), float("nan"), dtype=acc, device=pred.device)
    device = device_spec(pred.device)
    partial = torch.empty((forward_programs(pred, target, device),), dtype=acc, device=pred.device)
    plan_masked_l1_loss(pred, target, idx, partial, device, eps).launch()
    return partial.sum() / pred.numel()


def masked_l1_loss_bwd(
    grad_out: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor, eps: float = LN_EPS
) -> torch.Tensor:
    grad_pred = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
    if pred.numel() == 0:
        return grad_pred
    plan_masked_l1_loss_bwd(grad_out.reshape(1), pred, target, idx, grad_pred, device_spec(pred.device), eps).launch()
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


class _MaskedL1Loss(torch.autograd.Function):
    """The eager path: the same launchers as the custom ops, without the custom-op dispatch (which
    costs more host time per call than the kernels take at V-JEPA sizes)."""

    @staticmethod
    def forward(ctx, pred, target, idx, eps):
        loss = masked_l1_loss_fwd(pred, target, idx, eps)
        _setup_context(ctx, (pred, target, idx, eps), loss)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        pred, target, idx = ctx.saved_tensors
        grad_pred = None
        if ctx.needs_input_grad[0]:
            grad_pred = masked_l1_loss_bwd(grad_out, pred, target, idx, ctx.eps)
        return grad_pred, None, None, None


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
        if torch.compiler.is_compiling():
            return masked_l1_loss_op(pred, target, idx, LN_EPS)
        return _MaskedL1Loss.apply(pred, target, idx, LN_EPS)
    return reference.masked_l1_loss(pred, target, idx)


# ---------------------------------------------------------------------------------------------------
# Ahead-of-time plans at the V-JEPA shapes (kernels/aot.py)

_B, _N = 24, 1568
_ENCODER_DIMS = {"vit_l": 1024, "vit_h": 1280, "vit_g": 1408}
_TARGET_K = (746, 1101)
# (pred, target) dtypes: bf16 autocast (the predictor's last Linear in bf16, the target encoder's
# final LayerNorm in fp32), a bf16 target copy, and fp32 training.
_DTYPES = ((torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32))


def aot_plans() -> list[LaunchPlan]:
    """The loss launches at V-JEPA shapes on a 132-SM Hopper: batch 24, N = 1568, target K 746 and
    1101, D of ViT-L / ViT-H / ViT-g, forward and backward. Plans that differ only in K share a
    ``group``."""
    device = DeviceSpec()
    plans = []
    for model, D in _ENCODER_DIMS.items():
        for pred_dtype, tgt_dtype in _DTYPES:
            target = TensorSpec((_B, _N, D), tgt_dtype)
            common = f"{model} D{D} pred {str(pred_dtype)[6:]} target {str(tgt_dtype)[6:]}"
            for K in _TARGET_K:
                pred, idx = TensorSpec((_B, K, D), pred_dtype), TensorSpec((_B, K), torch.int64)
                partial = TensorSpec((forward_programs(pred, target, device),), _loss_dtype(pred, target))
                plans.append(plan_masked_l1_loss(pred, target, idx, partial, device,
                                                 label=f"masked_l1_loss fwd {common} K{K}",
                                                 group=f"masked_l1_loss fwd {common}"))  # fmt: skip
                plans.append(plan_masked_l1_loss_bwd(
                    TensorSpec((1,), torch.float32), pred, target, idx, TensorSpec((_B, K, D), pred_dtype), device,
                    label=f"masked_l1_loss bwd {common} K{K}", group=f"masked_l1_loss bwd {common}"))  # fmt: skip
    return plans
