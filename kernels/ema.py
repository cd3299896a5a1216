"""Multi-tensor EMA and a fused AdamW + EMA step: one launch over all parameters.

``fused_ema_(targets, sources, m)`` is the official ``t.mul_(m).add_((1 - m) * s)`` over every pair,
computed in fp32 (``t*m + (1-m)*s`` without fma contraction, then one rounding to the storage dtype):
bit-identical to the official formula for fp32 storage, within 1 ulp for bf16 / fp16 storage (where
the official formula also rounds ``t*m`` and ``(1-m)*s`` to the storage dtype). ``fused_adamw_ema_`` is a ``torch.optim.AdamW`` step (decoupled weight decay, bias
corrections, per-group lr / weight decay) that, while the new parameter is still in registers, also
writes the EMA target ``t = m*t + (1-m)*p_new``: AdamW-then-EMA in one read of each tensor.

How one launch covers many tensors: the host builds (once, cached by address) int64 tables of the
tensors' raw addresses and sizes plus a program -> (tensor, first element) map; each program loads
its tensor's address and casts it to a typed pointer. Tensors are grouped by dtype signature, one
launch per group (a model in one dtype: one launch). ``FlatParams`` packs a module's parameters into
one flat buffer (parameters become views), so the table has a single entry and the launch is a plain
streaming kernel.

No host-device syncs: Python-number hyper-parameters are passed as kernel scalars (EMA) or uploaded
through pinned memory without blocking (AdamW); tensor hyper-parameters (momentum, lr, step on the
device) are turned into the coefficient table with device ops.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, List, Optional, Sequence

import torch

from . import reference
from .dispatch import kernel_backend, tl, triton
from .multi_tensor import MultiTensorTables, multi_tensor_blocks, upload_scalars
from .utils import check_launchable, compute_dtype, fma, round_to, tl_dtype

_N_COEF = 9  # per-group AdamW+EMA coefficients, see adamw_ema_coefficients


@triton.jit
def _fused_ema_kernel(
    T_ADDR_ptr,  # pointer to int64 addresses of the EMA targets, shape (n_tensors,)
    S_ADDR_ptr,  # pointer to int64 addresses of the sources, shape (n_tensors,)
    NUMEL_ptr,  # pointer to int64 sizes, shape (n_tensors,)
    CHUNK_TENSOR_ptr,  # pointer to int64 tensor id of each program, shape (n_programs,)
    CHUNK_START_ptr,  # pointer to int64 first element of each program, shape (n_programs,)
    M_ptr,  # pointer to (m, 1 - m) when M_FROM_PTR
    m,  # momentum as a kernel scalar when not M_FROM_PTR
    one_minus_m,
    T_DTYPE: tl.constexpr,
    S_DTYPE: tl.constexpr,
    COMPUTE: tl.constexpr,
    M_FROM_PTR: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """t = t*m + (1-m)*s over one CHUNK of one tensor (official EMA, vjepa2 train.py)."""
    pid = tl.program_id(0).to(tl.int64)
    tid = tl.load(CHUNK_TENSOR_ptr + pid)
    start = tl.load(CHUNK_START_ptr + pid)
    n = tl.load(NUMEL_ptr + tid)
    t_ptr = tl.load(T_ADDR_ptr + tid).to(tl.pointer_type(T_DTYPE))
    s_ptr = tl.load(S_ADDR_ptr + tid).to(tl.pointer_type(S_DTYPE))
    if M_FROM_PTR:
        mm = tl.load(M_ptr).to(COMPUTE)
        cc = tl.load(M_ptr + 1).to(COMPUTE)
    else:
        mm = tl.cast(m, COMPUTE)
        cc = tl.cast(one_minus_m, COMPUTE)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK).to(tl.int64)
        mask = offs < n
        t = tl.load(t_ptr + offs, mask=mask).to(COMPUTE)
        s = tl.load(s_ptr + offs, mask=mask).to(COMPUTE)
        tl.store(t_ptr + offs, round_to(t * mm + cc * s, T_DTYPE), mask=mask)


@triton.jit
def _fused_adamw_ema_kernel(
    P_ADDR_ptr,  # pointer to int64 addresses of the parameters
    G_ADDR_ptr,  # ... of the gradients
    M_ADDR_ptr,  # ... of exp_avg
    V_ADDR_ptr,  # ... of exp_avg_sq
    T_ADDR_ptr,  # ... of the EMA targets (unused when not HAS_EMA)
    NUMEL_ptr,  # pointer to int64 sizes, shape (n_tensors,)
    GROUP_ptr,  # pointer to int64 param-group id of each tensor
    CHUNK_TENSOR_ptr,  # pointer to int64 tensor id of each program
    CHUNK_START_ptr,  # pointer to int64 first element of each program
    COEF_ptr,  # pointer to per-group coefficients, shape (n_groups, 9), see adamw_ema_coefficients
    P_DTYPE: tl.constexpr,
    G_DTYPE: tl.constexpr,
    M_DTYPE: tl.constexpr,
    V_DTYPE: tl.constexpr,
    T_DTYPE: tl.constexpr,
    COMPUTE: tl.constexpr,
    HAS_EMA: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """torch.optim.AdamW (_single_tensor_adamw) step, then t = m*t + (1-m)*p on the new p.

    p *= 1 - lr*wd; m = fma(1-b1, g - m, m); v = v*b2 + ((1-b2)*g)*g;
    p += (-lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)    (IEEE sqrt and division, like PyTorch)
    """
    pid = tl.program_id(0).to(tl.int64)
    tid = tl.load(CHUNK_TENSOR_ptr + pid)
    start = tl.load(CHUNK_START_ptr + pid)
    n = tl.load(NUMEL_ptr + tid)
    coef = COEF_ptr + tl.load(GROUP_ptr + tid) * 9
    decay = tl.load(coef + 0).to(COMPUTE)
    w1 = tl.load(coef + 1).to(COMPUTE)
    beta2 = tl.load(coef + 2).to(COMPUTE)
    w2 = tl.load(coef + 3).to(COMPUTE)
    neg_step_size = tl.load(coef + 4).to(COMPUTE)
    bc2_sqrt = tl.load(coef + 5).to(COMPUTE)
    eps = tl.load(coef + 6).to(COMPUTE)
    p_ptr = tl.load(P_ADDR_ptr + tid).to(tl.pointer_type(P_DTYPE))
    g_ptr = tl.load(G_ADDR_ptr + tid).to(tl.pointer_type(G_DTYPE))
    m_ptr = tl.load(M_ADDR_ptr + tid).to(tl.pointer_type(M_DTYPE))
    v_ptr = tl.load(V_ADDR_ptr + tid).to(tl.pointer_type(V_DTYPE))
    if HAS_EMA:
        mom = tl.load(coef + 7).to(COMPUTE)
        one_minus_mom = tl.load(coef + 8).to(COMPUTE)
        t_ptr = tl.load(T_ADDR_ptr + tid).to(tl.pointer_type(T_DTYPE))
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK).to(tl.int64)
        mask = offs < n
        p = tl.load(p_ptr + offs, mask=mask).to(COMPUTE)
        g = tl.load(g_ptr + offs, mask=mask).to(COMPUTE)
        m = tl.load(m_ptr + offs, mask=mask).to(COMPUTE)
        v = tl.load(v_ptr + offs, mask=mask).to(COMPUTE)
        p = p * decay
        m = fma(w1, g - m, m)  # torch's lerp_ (weight < 0.5): fma(w, end - self, self) on CPU and CUDA
        v = fma(w2 * g, g, v * beta2)  # mul_(b2) then addcmul_: fma(value*g, g, v) on CPU and CUDA
        denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
        p = p + tl.div_rn(neg_step_size * m, denom)
        tl.store(p_ptr + offs, round_to(p, P_DTYPE), mask=mask)
        tl.store(m_ptr + offs, round_to(m, M_DTYPE), mask=mask)
        tl.store(v_ptr + offs, round_to(v, V_DTYPE), mask=mask)
        if HAS_EMA:
            p = round_to(p, P_DTYPE).to(COMPUTE)  # the EMA reads the stored parameter, as officially
            t = tl.load(t_ptr + offs, mask=mask).to(COMPUTE)
            tl.store(t_ptr + offs, round_to(t * mom + one_minus_mom * p, T_DTYPE), mask=mask)


# ---------------------------------------------------------------------------------------------------
# Host launchers


def _check_lists(named: dict[str, Sequence[torch.Tensor]]) -> int:
    lists = list(named.items())
    n = len(lists[0][1])
    ref_name, ref = lists[0]
    for name, ts in lists[1:]:
        if len(ts) != n:
            raise ValueError(f"{name} has {len(ts)} tensors, {ref_name} has {n}")
    device = ref[0].device if n else None
    if n:
        check_launchable(ref[0])
    for name, ts in lists:
        for i, t in enumerate(ts):
            if t.numel() != ref[i].numel():
                raise ValueError(
                    f"{name}[{i}] has {t.numel()} elements, {ref_name}[{i}] has {ref[i].numel()}"
                )
            if not t.is_contiguous():
                raise ValueError(f"{name}[{i}] is not contiguous (multi-tensor kernels need dense storage)")
            if t.device != device:
                raise ValueError(f"{name}[{i}] is on {t.device}, expected {device}")
            if t.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
                raise TypeError(f"{name}[{i}]: unsupported dtype {t.dtype}")
    return n


def _split_by_dtype(roles: list[Sequence[torch.Tensor]]) -> dict[tuple, list[int]]:
    """Indices of non-empty tensors grouped by their dtype signature across roles."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i in range(len(roles[0])):
        if roles[0][i].numel() > 0:
            groups[tuple(role[i].dtype for role in roles)].append(i)
    return groups


def fused_ema_launch(
    targets: Sequence[torch.Tensor],
    sources: Sequence[torch.Tensor],
    momentum: Optional[torch.Tensor],
    m: float,
    one_minus_m: float,
) -> None:
    """In place t = t*m + (1-m)*s; (m, 1-m) from the device tensor ``momentum`` ([2]) or the scalars."""
    if _check_lists({"targets": targets, "sources": sources}) == 0:
        return
    chunk, block, num_warps = multi_tensor_blocks()
    for dtypes, ids in _split_by_dtype([targets, sources]).items():
        ts = [targets[i] for i in ids]
        ss = [sources[i] for i in ids]
        tables = MultiTensorTables.get([ts, ss], [0] * len(ts), chunk)
        compute = compute_dtype(*dtypes)
        coef = momentum
        if coef is None and compute == tl.float64:  # fp64 storage: fp32 kernel scalars would lose bits
            coef = torch.tensor([m, one_minus_m], dtype=torch.float64, device=ts[0].device)
        _fused_ema_kernel[(tables.n_programs,)](
            tables.addrs[0], tables.addrs[1], tables.numel, tables.chunk_tensor, tables.chunk_start,
            coef if coef is not None else tables.numel, m, one_minus_m,
            T_DTYPE=tl_dtype(dtypes[0]), S_DTYPE=tl_dtype(dtypes[1]), COMPUTE=compute,
            M_FROM_PTR=coef is not None, CHUNK=chunk, BLOCK=block, num_warps=num_warps,
            enable_fp_fusion=False,  # t*m and (1-m)*s rounded separately, like the official mul_/add_
        )  # fmt: skip


def fused_adamw_ema_launch(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    ema_params: Sequence[torch.Tensor],
    group_ids: Sequence[int],
    coeffs: torch.Tensor,
) -> None:
    """One AdamW(+EMA) launch per dtype signature; ``coeffs`` is the [n_groups, 9] device table."""
    named = {"params": params, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
    has_ema = len(ema_params) > 0
    if has_ema:
        named["ema_params"] = ema_params
    if _check_lists(named) == 0:
        return
    if len(group_ids) != len(params):
        raise ValueError(f"group_ids has {len(group_ids)} entries for {len(params)} params")
    roles = list(named.values())
    chunk, block, num_warps = multi_tensor_blocks()
    for dtypes, ids in _split_by_dtype(roles).items():
        sub = [[role[i] for i in ids] for role in roles]
        tables = MultiTensorTables.get(sub, [int(group_ids[i]) for i in ids], chunk)
        compute = compute_dtype(*dtypes)
        coef = coeffs.to(torch.float64 if compute == tl.float64 else coeffs.dtype)
        t_addr = tables.addrs[4] if has_ema else tables.addrs[0]
        _fused_adamw_ema_kernel[(tables.n_programs,)](
            tables.addrs[0], tables.addrs[1], tables.addrs[2], tables.addrs[3], t_addr,
            tables.numel, tables.group, tables.chunk_tensor, tables.chunk_start, coef,
            P_DTYPE=tl_dtype(dtypes[0]), G_DTYPE=tl_dtype(dtypes[1]), M_DTYPE=tl_dtype(dtypes[2]),
            V_DTYPE=tl_dtype(dtypes[3]), T_DTYPE=tl_dtype(dtypes[4] if has_ema else dtypes[0]),
            COMPUTE=compute, HAS_EMA=has_ema, CHUNK=chunk, BLOCK=block, num_warps=num_warps,
            enable_fp_fusion=False,  # PyTorch's op-by-op rounding; the lerp's fma is explicit
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Custom ops (mutating; no autograd: they run under no_grad in the optimizer step)


@torch.library.custom_op("vjepa_fast::fused_ema_", mutates_args=("targets",))
def fused_ema_op(
    targets: List[torch.Tensor], sources: List[torch.Tensor], momentum: Optional[torch.Tensor], m: float,
    one_minus_m: float,
) -> None:  # fmt: skip
    fused_ema_launch(targets, sources, momentum, m, one_minus_m)


@fused_ema_op.register_fake
def _(targets, sources, momentum, m, one_minus_m):
    return None


@torch.library.custom_op(
    "vjepa_fast::fused_adamw_ema_", mutates_args=("params", "exp_avgs", "exp_avg_sqs", "ema_params")
)
def fused_adamw_ema_op(
    params: List[torch.Tensor],
    grads: List[torch.Tensor],
    exp_avgs: List[torch.Tensor],
    exp_avg_sqs: List[torch.Tensor],
    ema_params: List[torch.Tensor],
    group_ids: List[int],
    coeffs: Optional[torch.Tensor],
    host_coeffs: Optional[List[float]],
) -> None:
    if coeffs is None:
        if host_coeffs is None:
            raise ValueError("fused_adamw_ema_: need coeffs or host_coeffs")
        rows = [host_coeffs[i : i + _N_COEF] for i in range(0, len(host_coeffs), _N_COEF)]
        coeffs = upload_scalars(rows, params[0].device)
    fused_adamw_ema_launch(params, grads, exp_avgs, exp_avg_sqs, ema_params, group_ids, coeffs)


@fused_adamw_ema_op.register_fake
def _(params, grads, exp_avgs, exp_avg_sqs, ema_params, group_ids, coeffs, host_coeffs):
    return None


# ---------------------------------------------------------------------------------------------------
# Hyper-parameters -> coefficients


def _is_tensor(v) -> bool:
    return isinstance(v, torch.Tensor)


def _any_tensor(*values) -> bool:
    for v in values:
        if _is_tensor(v) or (isinstance(v, (list, tuple)) and any(_is_tensor(x) for x in v)):
            return True
    return False


def _per_group_values(value, n_groups: int, name: str) -> list:
    if _is_tensor(value) and value.dim() == 1:
        values = list(value.unbind(0))
    elif isinstance(value, (list, tuple)):
        values = list(value)
    else:
        values = [value]
    if len(values) == 1:
        values = values * n_groups
    if len(values) != n_groups:
        raise ValueError(f"{name}: {len(values)} values for {n_groups} param groups")
    return values


def adamw_ema_coefficients(
    lr, weight_decay, step, betas: tuple[float, float], eps: float, momentum, n_groups: int
) -> list[list[float]]:
    """Per-group [1-lr*wd, 1-b1, b2, 1-b2, -lr/bc1, sqrt(bc2), eps, m, 1-m] in Python floats (double).

    Matches torch.optim.AdamW's non-capturable path, which does this scalar math in double and hands
    the results to fp32 kernels.
    """
    beta1, beta2 = betas
    lrs = _per_group_values(lr, n_groups, "lr")
    wds = _per_group_values(weight_decay, n_groups, "weight_decay")
    step = float(step)
    bc1 = 1 - beta1**step
    bc2_sqrt = math.sqrt(1 - beta2**step)
    m = float(momentum) if momentum is not None else 0.0
    rows = []
    for lr_g, wd_g in zip(lrs, wds):
        lr_g, wd_g = float(lr_g), float(wd_g)
        rows.append([1 - lr_g * wd_g, 1 - beta1, beta2, 1 - beta2, -(lr_g / bc1), bc2_sqrt, eps, m, 1 - m])
    return rows


def adamw_ema_coefficients_device(
    lr,
    weight_decay,
    step,
    betas: tuple[float, float],
    eps: float,
    momentum,
    n_groups: int,
    device: torch.device,
) -> torch.Tensor:
    """Same table as :func:`adamw_ema_coefficients`, built with float64 device ops (no host sync) when
    any hyper-parameter is a tensor, e.g. schedules kept on the GPU. Returns [n_groups, 9] fp32."""
    f64 = torch.float64

    def dev(v) -> torch.Tensor:
        if _is_tensor(v):
            return v.to(device=device, dtype=f64).reshape(())
        return torch.full((), float(v), dtype=f64, device=device)

    beta1, beta2 = betas
    lrs = torch.stack([dev(v) for v in _per_group_values(lr, n_groups, "lr")])
    wds = torch.stack([dev(v) for v in _per_group_values(weight_decay, n_groups, "weight_decay")])
    step_t = dev(step)
    bc1 = 1 - torch.pow(beta1, step_t)
    bc2_sqrt = torch.sqrt(1 - torch.pow(beta2, step_t))
    if momentum is None:
        m, one_minus_m = dev(0.0), dev(1.0)
    elif _is_tensor(momentum):
        m, one_minus_m = dev(momentum), dev(1 - momentum)  # 1 - m in m's own dtype, as the official formula
    else:
        m, one_minus_m = dev(momentum), dev(1 - float(momentum))
    ones = torch.ones(n_groups, dtype=f64, device=device)
    cols = [
        1 - lrs * wds,
        ones * (1 - beta1),
        ones * beta2,
        ones * (1 - beta2),
        -(lrs / bc1),
        ones * bc2_sqrt,
        ones * eps,
        ones * m,
        ones * one_minus_m,
    ]
    return torch.stack(cols, dim=1).to(torch.float32)


# ---------------------------------------------------------------------------------------------------
# Functional API


def _as_list(ts: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach() if isinstance(t, torch.Tensor) and t.requires_grad else t for t in ts]


def fused_ema_(
    target_params: Iterable[torch.Tensor], source_params: Iterable[torch.Tensor], momentum
) -> None:
    """In place ``t = m*t + (1-m)*s`` for every (target, source) pair, in one launch per dtype pair.

    Args:
        target_params: EMA (target-encoder) tensors, updated in place; fp32 / bf16 / fp16 storage.
        source_params: the online (context-encoder) tensors, same sizes.
        momentum: a Python float or a 0-d tensor on the parameters' device (no host sync).
    Within 1 ulp of the official ``t.mul_(m).add_((1 - m) * s)``: computed in fp32, rounded once.
    """
    targets = _as_list(target_params)
    sources = _as_list(source_params)
    if not targets:
        return
    if kernel_backend(targets[0]) != "triton":
        reference.ema_(targets, sources, momentum)
        return
    if _is_tensor(momentum):
        coef = torch.stack([momentum.reshape(()), (1 - momentum).reshape(())])
        coef = coef.to(device=targets[0].device, dtype=torch.float32)
        fused_ema_op(targets, sources, coef, 0.0, 0.0)
    else:
        fused_ema_op(targets, sources, None, float(momentum), 1 - float(momentum))


def fused_adamw_ema_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    ema_params: Optional[Sequence[torch.Tensor]] = None,
    *,
    lr,
    weight_decay,
    step,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum=None,
    group_ids: Optional[Sequence[int]] = None,
) -> None:
    """A ``torch.optim.AdamW`` step over all ``params`` that also writes the EMA ``ema_params``.

    Equal to ``AdamW(foreach=False).step()`` followed by ``t.mul_(m).add_((1-m)*p)`` (to fp32
    rounding), in one launch per dtype signature. ``exp_avgs`` / ``exp_avg_sqs`` are the optimizer
    state (start them at zeros).

    Args:
        params, grads, exp_avgs, exp_avg_sqs: equal-length lists of contiguous tensors.
        ema_params: EMA targets for ``params`` (same order), or None for a plain fused AdamW.
        lr, weight_decay: one value, or one per param group (sequence or 1-D tensor); each a Python
            float or a tensor on the device. Biases / 1-D params normally sit in a group with wd 0.
        step: 1-based count of this update (AdamW's ``state['step']`` after its increment); int or tensor.
        betas, eps: as AdamW.
        momentum: EMA momentum m (float or 0-d tensor); required when ``ema_params`` is given.
        group_ids: param-group index of each tensor (default: all 0).
    Keep hyper-parameters as device tensors for torch.compile / CUDA graphs (Python floats are
    constants to the compiler). Not supported: amsgrad, maximize, complex params.
    """
    params, grads = _as_list(params), _as_list(grads)
    exp_avgs, exp_avg_sqs = _as_list(exp_avgs), _as_list(exp_avg_sqs)
    ema = _as_list(ema_params) if ema_params is not None else []
    if ema and momentum is None:
        raise ValueError("fused_adamw_ema_: momentum is required with ema_params")
    if not params:
        return
    ids = [int(g) for g in group_ids] if group_ids is not None else [0] * len(params)
    n_groups = max(ids) + 1
    if kernel_backend(params[0]) != "triton":
        reference.adamw_ema_(
            params, grads, exp_avgs, exp_avg_sqs, ema or None, lr=lr, weight_decay=weight_decay, step=step,
            betas=betas, eps=eps, momentum=momentum, group_ids=ids,
        )  # fmt: skip
        return
    if _any_tensor(lr, weight_decay, step, momentum):
        coeffs = adamw_ema_coefficients_device(
            lr, weight_decay, step, betas, eps, momentum, n_groups, params[0].device
        )
        fused_adamw_ema_op(params, grads, exp_avgs, exp_avg_sqs, ema, ids, coeffs, None)
    else:
        rows = adamw_ema_coefficients(lr, weight_decay, step, betas, eps, momentum, n_groups)
        fused_adamw_ema_op(params, grads, exp_avgs, exp_avg_sqs, ema, ids, None, [v for r in rows for v in r])


# ---------------------------------------------------------------------------------------------------
# Flat parameter buffers


class FlatParams:
    """Pack parameters into one contiguous buffer per (device, dtype); the parameters become views.

    ``FlatParams(target_encoder)`` and ``FlatParams(encoder)`` turn the EMA into one streaming kernel
    over one tensor pair: ``fused_ema_(tgt_flat.buffers, src_flat.buffers, m)``. Each parameter starts
    at a multiple of ``align`` elements (padding stays zero), so two modules with the same
    architecture get identical layouts. Only ``param.data`` changes, so the parameter objects (and
    optimizers holding them) stay valid; build it before ``torch.compile`` and before CUDA-graph
    capture. Gradients and optimizer state are not flattened.
    """

    def __init__(self, params: Iterable[torch.Tensor] | torch.nn.Module, align: int = 16):
        if isinstance(params, torch.nn.Module):
            params = params.parameters()
        self.params: list[torch.Tensor] = list(params)
        by_kind: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        for p in self.params:
            by_kind[(p.device, p.dtype)].append(p)
        self.buffers: list[torch.Tensor] = []
        self.offsets: list[tuple[int, int, int]] = []  # (buffer index, offset, numel) per param, in order
        where: dict[int, tuple[int, int, int]] = {}
        for (device, dtype), group in by_kind.items():
            sizes = [p.numel() for p in group]
            starts, total = [], 0
            for n in sizes:
                starts.append(total)
                total += -(-n // align) * align
            flat = torch.zeros(total, dtype=dtype, device=device)
            k = len(self.buffers)
            with torch.no_grad():
                for p, s, n in zip(group, starts, sizes):
                    view = flat[s : s + n].view_as(p)
                    view.copy_(p)
                    p.data = view
                    where[id(p)] = (k, s, n)
            self.buffers.append(flat)
        self.offsets = [where[id(p)] for p in self.params]

    @property
    def flat(self) -> torch.Tensor:
        """The single buffer (parameters all of one device and dtype)."""
        if len(self.buffers) != 1:
            raise ValueError(f"{len(self.buffers)} buffers (mixed dtypes/devices); use .buffers")
        return self.buffers[0]

    def __len__(self) -> int:
        return len(self.buffers)
