"""rope_rotate_qk: V-JEPA 2's 3D RoPE on q and k in one pass, forward and backward.

Semantics: exactly :func:`vjepa_fast.rope.apply_rope` applied to q and to k (facebookresearch/vjepa2
``src/models/utils/modules.py`` ``rotate_queries_or_keys``; the fixtures README, "RoPE"). The tables
``cos``/``sin`` [Bt, 1, L, R] come from :func:`vjepa_fast.rope.rope_tables` (Bt = 1: one table for
the whole batch). The first R channels of every head become ``x·cos + rot(x)·sin`` with
``rot(x)[2i] = −x[2i+1]``, ``rot(x)[2i+1] = x[2i]`` (adjacent pairs, while the tables repeat their
d/2 angles: the official quirk); channels R.. pass through. Rounding follows the PyTorch ops of
``apply_rope`` bit for bit: the products and their sum are rounded to the product dtype
``promote(x, table)`` (bf16 under the official bf16 tables), then once more to x's dtype; the
backward is what autograd computes through those ops (each product rounded to x's dtype, then their
sum). Multiply-adds are never contracted into FMAs (``enable_fp_fusion=False``), as the separate
PyTorch kernels do not contract them.

Why a kernel: eager ``apply_rope`` is a slice, two multiplies, a pair swap (stack), an add and a
cat per tensor, each a pass over q or k, in every block of the encoder, predictor and target; the
saved tensors for its backward are q/k-sized. Here q and k are read once and written once, each
table row (a small [Bt, L, R]) is loaded once per tile of two heads of q and k, and only the
tables are saved for the backward.

Layouts. q and k as the attention module produces them, views of the qkv projection
(``reshape(B, L, 3, H, hd).permute(2, 0, 3, 1, 4)``: heads adjacent, stride(1) = hd), are read in
place; any other layout is made contiguous first. Outputs (and the backward's inputs and outputs)
are contiguous [B, H, L, hd]. Index math is int32 (int64 only when a tensor passes 2^31 elements,
decided on the host); the lengths are not specialised and the offsets that hold them are built from
constexpr widths, so a new mask length never compiles a new variant.

Launches are planned (:func:`plan_rope_rotate_qk`, a pure function of metadata and a
:class:`~.plan.DeviceSpec`) and then run (``plan.launch()``); :func:`aot_plans` lists the V-JEPA 2
launches for ``kernels/aot.py``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import reference
from .dispatch import kernel_backend, tl, triton
from .plan import DeviceSpec, LaunchPlan, TensorSpec
from .utils import (
    cdiv,
    check_float,
    check_launchable,
    compute_dtype,
    device_spec,
    metadata,
    needs_int64,
    next_power_of_2,
    round_to,
    spec_of,
    split_rows,
    tile_mask,
)

# Runtime lengths: not specialised, so a new mask length never compiles a new variant.
_LENGTH_ARGS = ["n_rows", "L", "n_tiles"]


@triton.jit
def _rotate_pairs(x, BLOCK_T: tl.constexpr, BLOCK_HD: tl.constexpr):
    """(x[2i], x[2i+1]) -> (-x[2i+1], x[2i]) along the last axis (in registers)."""
    even, odd = tl.split(tl.reshape(x, [BLOCK_T, BLOCK_HD // 2, 2]))
    return tl.reshape(tl.join(-odd, even), [BLOCK_T, BLOCK_HD])


@triton.jit
def _rope_tile(X_ptr, O_ptr, x_offs, o_offs, mask, rot_mask, c, s, BACKWARD: tl.constexpr,
               ROUND_PRODUCTS: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_T: tl.constexpr,
               BLOCK_HD: tl.constexpr):
    """One [BLOCK_T, BLOCK_HD] tile of one head of q or k: load, rotate, store (see the module
    docstring for the rounding)."""
    x = tl.load(X_ptr + x_offs, mask=mask, other=0)
    xf = x.to(COMPUTE)
    c = c.to(COMPUTE)
    s = s.to(COMPUTE)
    OUT: tl.constexpr = O_ptr.dtype.element_ty
    if BACKWARD:
        # d/dx of x·c + rot(x)·s is g·c + rotᵀ(g·s), rotᵀ = −rot; autograd rounds each product to
        # the gradient's dtype before adding them.
        a = round_to(xf * c, OUT).to(COMPUTE)
        b = round_to(xf * s, OUT).to(COMPUTE)
        y = a - _rotate_pairs(b, BLOCK_T, BLOCK_HD)
    else:
        a = xf * c
        b = _rotate_pairs(xf, BLOCK_T, BLOCK_HD) * s
        if ROUND_PRODUCTS:  # the product dtype is x's (official bf16 tables): round as PyTorch does
            a = round_to(a, OUT).to(COMPUTE)
            b = round_to(b, OUT).to(COMPUTE)
        y = a + b
    y = tl.where(rot_mask[None, :], y, xf)
    tl.store(O_ptr + o_offs, round_to(y, OUT), mask=mask)


@triton.jit(do_not_specialize=_LENGTH_ARGS)
def _rope_qk_kernel(
    Q_ptr,  # q, shape (B, H, L, HD): heads adjacent (strides X_stride_*, stride(1) = HD) or contiguous
    K_ptr,  # k, the same layout as q
    COS_ptr,  # cos table, contiguous (Bt, L, R), Bt = B or 1 (TABLE_PER_SAMPLE)
    SIN_ptr,  # sin table, same layout
    QO_ptr,  # rotated q, contiguous (B, H, L, HD)
    KO_ptr,  # rotated k, contiguous (B, H, L, HD)
    n_rows,  # B * L
    L,
    n_tiles,  # cdiv(n_rows, BLOCK_T) * (H // HEADS_PER_TILE)
    X_stride_b,
    X_stride_l,
    H: tl.constexpr,
    HD: tl.constexpr,
    R: tl.constexpr,  # rotated channels per head (the table width); R <= HD, even
    TABLE_PER_SAMPLE: tl.constexpr,
    X_CONTIGUOUS: tl.constexpr,  # q/k contiguous (B, H, L, HD); else heads adjacent with the strides
    BACKWARD: tl.constexpr,
    ROUND_PRODUCTS: tl.constexpr,
    COMPUTE: tl.constexpr,
    INDEX_64: tl.constexpr,
    HEADS_PER_TILE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_HD: tl.constexpr,
):
    """Persistent: program p handles tiles p, p + num_programs, ... (a runtime bound). A tile is
    BLOCK_T tokens x HEADS_PER_TILE heads of q and of k; its table rows are loaded once and applied
    to all of them."""
    N_HG: tl.constexpr = H // HEADS_PER_TILE
    j = tl.arange(0, BLOCK_HD)
    rot_mask = j < R
    tile = tl.program_id(0)
    while tile < n_tiles:
        tt = tile // N_HG
        hg = tile - tt * N_HG
        rows = tt * BLOCK_T + tl.arange(0, BLOCK_T)
        row_mask, b, l = split_rows(rows, n_rows, L, INDEX_64)
        mask = tile_mask(row_mask, j, HD, BLOCK_HD)  # BLOCK_HD = next_power_of_2(HD) >= HD
        # Offsets built from the constexpr widths (not runtime strides), so the compiler sees their
        # alignment: multiples of HD for q/k rows, of R for table rows.
        t_row = b * L + l if TABLE_PER_SAMPLE else l
        t_offs = (t_row * R)[:, None] + j[None, :]
        t_mask = row_mask[:, None] & rot_mask[None, :]
        c = tl.load(COS_ptr + t_offs, mask=t_mask, other=0)
        s = tl.load(SIN_ptr + t_offs, mask=t_mask, other=0)
        for i in tl.static_range(HEADS_PER_TILE):
            h = hg * HEADS_PER_TILE + i
            o_offs = (((b * H + h) * L + l) * HD)[:, None] + j[None, :]
            if X_CONTIGUOUS:
                x_offs = o_offs
            else:
                x_offs = (b * X_stride_b + l * X_stride_l + h * HD)[:, None] + j[None, :]
            _rope_tile(Q_ptr, QO_ptr, x_offs, o_offs, mask, rot_mask, c, s, BACKWARD, ROUND_PRODUCTS, COMPUTE,
                       BLOCK_T, BLOCK_HD)
            _rope_tile(K_ptr, KO_ptr, x_offs, o_offs, mask, rot_mask, c, s, BACKWARD, ROUND_PRODUCTS, COMPUTE,
                       BLOCK_T, BLOCK_HD)
        tile += tl.num_programs(0)


# ---------------------------------------------------------------------------------------------------
# Planner: a pure function of metadata (tensors or TensorSpecs) and the device

_VECTOR_BYTES = 16  # one ld/st.global.v4.b32
_INTERP_TILE_ELEMS = 1 << 14


@dataclass(frozen=True)
class RopeTiling:
    """BLOCK_T tokens x BLOCK_HD channels per head, HEADS_PER_TILE heads per tile, num_warps."""

    block_t: int
    block_hd: int
    heads_per_tile: int
    num_warps: int


def _heads_per_tile(h: int, cap: int) -> int:
    return max(d for d in range(1, min(h, cap) + 1) if h % d == 0)


#: One warp per program: Hopper keeps at most 32 programs resident per SM, and with one warp each
#: that limit binds before the registers do for any kernel of <= 64 registers per thread (capped
#: with ``maxnreg``; these take 51 to 61 without spilling, sm90_report), so the persistent grid is
#: 32 programs per SM whatever the variant compiled to: 32 of 64 warps, with 2 x HEADS_PER_TILE
#: independent 128-bit loads in flight per thread.
_WARPS = 1
_PROGRAMS_PER_SM = 32
_MAX_REGISTERS = 64


@functools.lru_cache(maxsize=256)
def rope_tiling(head_dim: int, heads: int, elem_bytes: int, device: DeviceSpec) -> RopeTiling:
    """GPU: one warp, one 128-bit vector of q (and one of k) per thread per head, and 2 heads per
    tile where the head count is even (the table row loaded once serves 4 loads of q/k). Interpreter:
    every head and ~16k elements per tile (each program iteration costs milliseconds there)."""
    block_hd = next_power_of_2(head_dim)
    if device.interpret:
        return RopeTiling(max(1, _INTERP_TILE_ELEMS // block_hd), block_hd, heads, 4)
    per_tile = 32 * _WARPS * max(1, _VECTOR_BYTES // elem_bytes)
    return RopeTiling(max(1, per_tile // block_hd), block_hd, _heads_per_tile(heads, 2), _WARPS)


def _heads_adjacent(t) -> bool:
    """[B, H, L, hd] whose heads are adjacent in memory (the qkv projection's view)."""
    return t.stride(3) == 1 and t.stride(1) == t.shape[3]


def plan_rope_rotate_qk(q, k, cos, sin, q_out, k_out, device: DeviceSpec, *, backward: bool = False,
                        label: str = "", group: str = "") -> LaunchPlan:  # fmt: skip
    """The launch rotating ``q`` and ``k`` [B, H, L, hd] (heads adjacent or contiguous, the same
    strides) into contiguous ``q_out``/``k_out`` with contiguous tables ``cos``/``sin`` [1 or B, L,
    R]. ``backward``: the inputs are the output gradients and the outputs the input gradients.
    Tensors or :class:`~.plan.TensorSpec`; reads shapes, strides and dtypes only (cached on them).

    The grid is persistent: ``sm_count x 32`` one-warp programs (what an SM keeps resident, see
    ``_PROGRAMS_PER_SM``), fewer when there are fewer tiles."""
    grid, scalars, constexprs, warps, moved = _config(metadata(q), metadata(cos), metadata(q_out), backward, device)
    args = (q, k, cos, sin, q_out, k_out, *scalars)
    return LaunchPlan(_rope_qk_kernel, grid, args, constexprs, warps, label=label, group=group, bytes_moved=moved)


@functools.lru_cache(maxsize=1024)
def _config(qm, tm, om, backward: bool, device: DeviceSpec):
    q, table, out = (spec_of(m) for m in (qm, tm, om))
    B, H, L, HD = q.shape
    Bt, _, R = table.shape
    contiguous = not _heads_adjacent(q)
    t = rope_tiling(HD, H, min(q.element_size(), out.element_size()), device)
    n_rows = B * L
    n_tiles = cdiv(n_rows, t.block_t) * (H // t.heads_per_tile)
    x_strides = (0, 0) if contiguous else (q.stride(0), q.stride(2))
    scalars = (n_rows, L, n_tiles, *x_strides)
    product = torch.promote_types(q.dtype, table.dtype)
    constexprs = dict(
        H=H, HD=HD, R=R, TABLE_PER_SAMPLE=Bt > 1, X_CONTIGUOUS=contiguous, BACKWARD=backward,
        ROUND_PRODUCTS=product == out.dtype, COMPUTE=compute_dtype(q.dtype, table.dtype),
        INDEX_64=needs_int64(q, table, out), HEADS_PER_TILE=t.heads_per_tile, BLOCK_T=t.block_t,
        BLOCK_HD=t.block_hd,
        # No FMA contraction: x·c + r·s rounds like the separate PyTorch multiply and add.
        enable_fp_fusion=False,
        # <= 64 registers keeps 32 one-warp programs resident per SM, the grid's assumption.
        maxnreg=_MAX_REGISTERS,
    )  # fmt: skip
    moved = 2 * (q.numel() * q.element_size() + out.numel() * out.element_size())
    moved += 2 * Bt * L * R * table.element_size()
    programs = min(n_tiles, device.sm_count * (1 if device.interpret else _PROGRAMS_PER_SM))
    return (programs,), scalars, constexprs, t.num_warps, moved


# ---------------------------------------------------------------------------------------------------
# Host launchers


def check_rope_args(q, k, cos, sin) -> None:
    """q, k ``[B, heads, L, head_dim]`` of one shape, dtype and device; cos, sin ``[1 or B, 1, L, R]``
    of one shape and dtype, R even and <= head_dim. Raises ValueError / TypeError naming them."""
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must be [B, heads, L, head_dim] of one shape, got {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")  # fmt: skip
    if q.dtype != k.dtype or q.device != k.device:
        raise TypeError(f"q and k must share dtype and device, got {q.dtype}/{q.device} and {k.dtype}/{k.device}")
    B, _, L, HD = q.shape
    if cos.shape != sin.shape or cos.dim() != 4 or cos.shape[1] != 1 or cos.shape[0] not in (1, B) \
            or cos.shape[2] != L:
        raise ValueError(f"RoPE tables must be [1 or B={B}, 1, L={L}, R] (rope_tables: positions for the "
                         f"{L} tokens of q/k), both the same shape; got cos {tuple(cos.shape)}, "
                         f"sin {tuple(sin.shape)}")  # fmt: skip
    R = cos.shape[3]
    if R > HD or R % 2:
        raise ValueError(f"RoPE tables rotate R={R} channels: must be even and <= head_dim {HD}")
    if cos.dtype != sin.dtype:
        raise TypeError(f"RoPE tables: cos is {cos.dtype}, sin is {sin.dtype}; they must match")


def _tables_3d(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[Bt, 1, L, R] (rope_tables) -> contiguous [Bt, L, R] (views of rope_tables' own)."""
    return cos[:, 0].contiguous(), sin[:, 0].contiguous()


def _same_layout(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k read in place when both are heads-adjacent views with the same strides (the qkv
    projection's); otherwise contiguous copies."""
    if q.stride() == k.stride() and (_heads_adjacent(q) or q.is_contiguous()):
        return q, k
    return q.contiguous(), k.contiguous()


def rope_rotate_qk_fwd(q, k, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes as :func:`check_rope_args` (checked by the functional API)."""
    check_float("q", q)
    check_launchable(q)
    cos3, sin3 = _tables_3d(cos, sin)
    q, k = _same_layout(q, k)
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if q.numel():
        plan_rope_rotate_qk(q, k, cos3, sin3, q_out, k_out, device_spec(q.device)).launch()
    return q_out, k_out


def rope_rotate_qk_bwd(grad_q, grad_k, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of q and k (contiguous, the output gradients' dtype = q/k's) from those of the
    rotated q and k."""
    cos3, sin3 = _tables_3d(cos, sin)
    grad_q, grad_k = grad_q.contiguous(), grad_k.contiguous()
    dq = torch.empty(grad_q.shape, dtype=grad_q.dtype, device=grad_q.device)
    dk = torch.empty(grad_k.shape, dtype=grad_k.dtype, device=grad_k.device)
    if grad_q.numel():
        plan_rope_rotate_qk(grad_q, grad_k, cos3, sin3, dq, dk, device_spec(grad_q.device), backward=True).launch()
    return dq, dk


# ---------------------------------------------------------------------------------------------------
# Custom ops (what torch.compile traces) with autograd


@torch.library.custom_op("vjepa_fast::rope_rotate_qk", mutates_args=())
def rope_rotate_qk_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                      sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return rope_rotate_qk_fwd(q, k, cos, sin)


@rope_rotate_qk_op.register_fake
def _(q, k, cos, sin):
    return q.new_empty(q.shape), k.new_empty(k.shape)


@torch.library.custom_op("vjepa_fast::rope_rotate_qk_backward", mutates_args=())
def rope_rotate_qk_backward_op(grad_q: torch.Tensor, grad_k: torch.Tensor, cos: torch.Tensor,
                               sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return rope_rotate_qk_bwd(grad_q, grad_k, cos, sin)


@rope_rotate_qk_backward_op.register_fake
def _(grad_q, grad_k, cos, sin):
    return grad_q.new_empty(grad_q.shape), grad_k.new_empty(grad_k.shape)


def _setup_context(ctx, inputs, output):
    _, _, cos, sin = inputs
    ctx.save_for_backward(cos, sin)


def _grads(ctx, grad_q, grad_k, bwd):
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return None, None, None, None
    cos, sin = ctx.saved_tensors
    # An output that did not reach the loss has no gradient; its rotation back is zero.
    grad_q = torch.zeros_like(grad_k) if grad_q is None else grad_q
    grad_k = torch.zeros_like(grad_q) if grad_k is None else grad_k
    dq, dk = bwd(grad_q, grad_k, cos, sin)
    return (dq if ctx.needs_input_grad[0] else None, dk if ctx.needs_input_grad[1] else None,
            None, None)  # tables: constants (functions of integer positions)


def _backward(ctx, grad_q, grad_k):
    return _grads(ctx, grad_q, grad_k, rope_rotate_qk_backward_op)


rope_rotate_qk_op.register_autograd(_backward, setup_context=_setup_context)


class _RopeRotateQK(torch.autograd.Function):
    """The eager path: the same launchers as the custom ops, without the custom-op dispatch."""

    @staticmethod
    def forward(ctx, q, k, cos, sin):
        out = rope_rotate_qk_fwd(q, k, cos, sin)
        _setup_context(ctx, (q, k, cos, sin), out)
        return out

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        return _grads(ctx, grad_q, grad_k, rope_rotate_qk_bwd)


# ---------------------------------------------------------------------------------------------------
# Functional API


def rope_rotate_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(apply_rope(q, cos, sin), apply_rope(k, cos, sin))`` (:func:`vjepa_fast.rope.apply_rope`).

    Args:
        q, k: ``[B, heads, L, head_dim]`` float tensors of one shape, dtype and device (any strides;
            the qkv projection's view is read in place).
        cos, sin: ``[1 or B, 1, L, R]`` tables from :func:`vjepa_fast.rope.rope_tables`, R even and
            ``<= head_dim`` (the rotated channels; the rest pass through). Constants: no gradient.
    Returns:
        The rotated q and k, ``[B, heads, L, head_dim]`` contiguous, in q's dtype, equal bit for bit
        to the PyTorch ops of ``apply_rope`` (backward too).
    Raises:
        ValueError / TypeError: shapes, dtypes or devices, as named in the message.
    """
    compiling = torch.compiler.is_compiling()
    if not compiling:  # traced code skips it: the shapes are symbolic there
        check_rope_args(q, k, cos, sin)
    if kernel_backend(q) == "triton":
        if compiling:
            return rope_rotate_qk_op(q, k, cos, sin)
        return _RopeRotateQK.apply(q, k, cos, sin)
    return reference.rope_rotate_qk(q, k, cos, sin)


# ---------------------------------------------------------------------------------------------------
# Ahead-of-time plans at the V-JEPA 2 shapes (kernels/aot.py)

_B = 24
_N = 2048  # 16 frames x 256 px, patch 16, tubelet 2: 8 x 16 x 16 tokens
#: (heads, head_dim) of the V2 models: ViT-L, ViT-H, ViT-g (vit_giant, 16 heads of 88), the
#: released ViT-g (vit_giant_xformers, 22 heads of 64) and the predictor (384 wide, 12 heads).
_MODELS = {"vit_l": (16, 64), "vit_h": (16, 80), "vit_g": (16, 88), "vit_g_xformers": (22, 64)}
_PREDICTOR = ("predictor", (12, 32))
#: Mean context / target lengths of the V2 masks at 16x256 (the official collator's statistics,
#: fixtures README): short-range 498 / 970, long-range 132 / 1439.
_CONTEXT_L = (498, 132)
_PREDICTOR_L = (498 + 970, 132 + 1439)


def _qkv_view(b: int, length: int, heads: int, hd: int, dtype) -> TensorSpec:
    """q (or k) as the attention module makes it: a view of the [B, L, 3, H, hd] projection."""
    c = heads * hd
    return TensorSpec((b, heads, length, hd), dtype, (length * 3 * c, hd, 3 * c, 1))


def aot_plans() -> list[LaunchPlan]:
    """Every RoPE launch of a V2 step on a 132-SM Hopper: batch 24, 16 x 256 px (N = 2048); the
    target encoder over all N tokens (one table for the batch), the context encoder at the two mask
    lengths and the predictor at their context + target lengths (per-sample tables); q/k in bf16
    (autocast) with the official bf16 tables or float32 angles (``rope_angle_dtype: float32``), and
    fp32; forward (q/k as views of the qkv projection) and backward (contiguous gradients). Plans
    that differ only in the mask lengths share a ``group``."""
    device = DeviceSpec()
    plans = []
    variants = ((torch.bfloat16, torch.bfloat16, "bf16"), (torch.bfloat16, torch.float32, "bf16 fp32-angles"),
                (torch.float32, torch.float32, "fp32"))  # fmt: skip
    roles = [(f"{m} target", hh, (_N,), False) for m, hh in _MODELS.items()]
    roles += [(f"{m} context", hh, _CONTEXT_L, True) for m, hh in _MODELS.items()]
    roles.append((f"{_PREDICTOR[0]}", _PREDICTOR[1], _PREDICTOR_L, True))
    for role, (heads, hd), lengths, per_sample in roles:
        r = 3 * 2 * ((hd // 3) // 2)
        for x_dtype, t_dtype, name in variants:
            for direction in ("fwd", "bwd"):
                if role.endswith("target") and direction == "bwd":
                    continue  # the target encoder runs without gradients
                common = f"{role} H{heads} hd{hd} {name}"
                for length in lengths:
                    table = TensorSpec((_B if per_sample else 1, length, r), t_dtype)
                    out = TensorSpec((_B, heads, length, hd), x_dtype)
                    x = _qkv_view(_B, length, heads, hd, x_dtype) if direction == "fwd" else out
                    plans.append(plan_rope_rotate_qk(
                        x, x, table, table, out, out, device, backward=direction == "bwd",
                        label=f"rope_rotate_qk {direction} {common} L{length}",
                        group=f"rope_rotate_qk {direction} {common}"))  # fmt: skip
    return plans
