"""Multi-tensor EMA and a fused AdamW + EMA step: one launch over all parameters.

``fused_ema_(targets, sources, m)`` is the official ``t.mul_(m).add_((1 - m) * s)`` over every pair,
computed in fp32 (``t*m + (1-m)*s`` without fma contraction, then one rounding to the storage dtype):
bit-identical to the official formula for fp32 storage, within 1 ulp for bf16 / fp16 storage (where
the official formula also rounds ``t*m`` and ``(1-m)*s`` to the storage dtype).
``fused_adamw_ema_`` is a ``torch.optim.AdamW`` step (decoupled weight decay, bias corrections,
per-group lr / weight decay) that, while the new parameter is still in registers, also writes the
EMA target ``t = m*t + (1-m)*p_new``: AdamW-then-EMA in one read of each tensor.

How one launch covers many tensors: see ``kernels/multi_tensor.py`` (tables of addresses and
chunks, 16-byte alignment promised to the compiler where the host has checked it, so the hot
accesses are 128-bit). Tensors are grouped by dtype signature and alignment, one launch per group (a
model in one dtype: one launch). ``FlatParams`` packs a module's parameters into one flat buffer
(parameters become views), so the table has a single entry.

Planning and launching are separate: :func:`plan_fused_ema` / :func:`plan_fused_adamw_ema` are pure
functions of the tensors' metadata (real tensors or :class:`~.plan.TensorSpec`) and a
:class:`~.plan.DeviceSpec`, returning :class:`~.plan.LaunchPlan` s whose tables are CPU tensors;
:func:`aot_plans` plans the V-JEPA parameter sets for ``kernels/aot.py``. The launchers cache the
planned launches with their tables on the device, keyed by the tensors' addresses and sizes, so a
training step that keeps its tensors re-plans nothing and only swaps in this step's
hyper-parameters.

No host-device syncs: Python-number hyper-parameters are passed as kernel scalars (EMA) or uploaded
through pinned memory without blocking (AdamW); tensor hyper-parameters (momentum, lr, step on the
device) are turned into the coefficient table with device ops. Nothing that changes from step to
step (momentum, lr, step, gradient addresses) changes a compiled variant: it is all runtime data.

CUDA-graph capture: run one step before capturing (plans are built and their tables uploaded on
first use, outside the graph) and pass the AdamW hyper-parameters as device tensors (Python numbers
are uploaded from a fresh pinned buffer each call, which a replayed graph would not see).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections import OrderedDict, defaultdict
from typing import Iterable, List, Optional, Sequence

import torch

from . import reference
from .dispatch import kernel_backend, tl, triton
from .multi_tensor import (
    ALIGN_BYTES,
    MultiTensorTables,
    address_rows,
    check_roles,
    multi_tensor_blocks,
    split_launches,
    tables_to,
    upload_scalars,
    vector_elems,
)
from .plan import DeviceSpec, LaunchPlan, TensorSpec
from .utils import check_launchable, compute_dtype, fma, round_to, tl_dtype

_N_COEF = 9  # per-group AdamW+EMA coefficients, see adamw_ema_coefficients


@triton.jit
def _chunk_ptr(ADDR_ptr, tid, start, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Typed pointer to element ``start`` of tensor ``tid`` (16-byte aligned when ALIGNED)."""
    ptr = tl.load(ADDR_ptr + tid).to(tl.pointer_type(DTYPE)) + start
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def _ema_block(t_ptr, s_ptr, offs, mask, mm, cc, T_DTYPE: tl.constexpr, COMPUTE: tl.constexpr):
    t = tl.load(t_ptr + offs, mask=mask).to(COMPUTE)
    s = tl.load(s_ptr + offs, mask=mask).to(COMPUTE)
    tl.store(t_ptr + offs, round_to(t * mm + cc * s, T_DTYPE), mask=mask)


@triton.jit
def _fused_ema_kernel(
    T_ADDR_ptr,  # int64 addresses of the EMA targets, one per tensor
    S_ADDR_ptr,  # int64 addresses of the sources
    CHUNK_TENSOR_ptr,  # int32 tensor of each program
    CHUNK_START_ptr,  # int32 (int64 for tensors >= 2**31 elements) first element of each program
    CHUNK_COUNT_ptr,  # int32 elements of each program (<= CHUNK)
    M_ptr,  # (m, 1 - m) when M_FROM_PTR
    m,  # momentum as a kernel scalar when not M_FROM_PTR
    one_minus_m,
    T_DTYPE: tl.constexpr,
    S_DTYPE: tl.constexpr,
    COMPUTE: tl.constexpr,
    M_FROM_PTR: tl.constexpr,
    ALIGNED: tl.constexpr,  # chunk bases 16-byte aligned and counts multiples of VEC (host-checked)
    VEC: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """t = t*m + (1-m)*s over one chunk of one tensor (official EMA, vjepa2 train.py)."""
    pid = tl.program_id(0)
    tid = tl.load(CHUNK_TENSOR_ptr + pid)
    start = tl.load(CHUNK_START_ptr + pid)
    count = tl.load(CHUNK_COUNT_ptr + pid)
    t_ptr = _chunk_ptr(T_ADDR_ptr, tid, start, T_DTYPE, ALIGNED)
    s_ptr = _chunk_ptr(S_ADDR_ptr, tid, start, S_DTYPE, ALIGNED)
    if M_FROM_PTR:
        mm = tl.load(M_ptr).to(COMPUTE)
        cc = tl.load(M_ptr + 1).to(COMPUTE)
    else:
        mm = tl.cast(m, COMPUTE)
        cc = tl.cast(one_minus_m, COMPUTE)
    if count == CHUNK:  # every chunk but a tensor's last: no mask
        for i in range(0, CHUNK, BLOCK):
            _ema_block(t_ptr, s_ptr, i + tl.arange(0, BLOCK), None, mm, cc, T_DTYPE, COMPUTE)
    else:
        if ALIGNED:
            count = tl.multiple_of(count, VEC)  # whole 16-byte vectors: the mask keeps them whole
        for i in range(0, CHUNK, BLOCK):
            offs = i + tl.arange(0, BLOCK)
            _ema_block(t_ptr, s_ptr, offs, offs < count, mm, cc, T_DTYPE, COMPUTE)


@triton.jit
def _adamw_ema_block(p_ptr, g_ptr, m_ptr, v_ptr, t_ptr, offs, mask, decay, w1, beta2, w2, neg_step_size,
                     bc2_sqrt, eps, mom, one_minus_mom, P_DTYPE: tl.constexpr, M_DTYPE: tl.constexpr,
                     V_DTYPE: tl.constexpr, T_DTYPE: tl.constexpr, COMPUTE: tl.constexpr,
                     HAS_EMA: tl.constexpr):  # fmt: skip
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


@triton.jit
def _fused_adamw_ema_kernel(
    P_ADDR_ptr,  # int64 addresses of the parameters, one per tensor
    G_ADDR_ptr,  # ... of the gradients
    M_ADDR_ptr,  # ... of exp_avg
    V_ADDR_ptr,  # ... of exp_avg_sq
    T_ADDR_ptr,  # ... of the EMA targets (unused when not HAS_EMA)
    GROUP_ptr,  # int32 param-group id of each tensor
    CHUNK_TENSOR_ptr,  # int32 tensor of each program
    CHUNK_START_ptr,  # int32 (int64 for tensors >= 2**31 elements) first element of each program
    CHUNK_COUNT_ptr,  # int32 elements of each program (<= CHUNK)
    COEF_ptr,  # per-group coefficients, shape (n_groups, 9), see adamw_ema_coefficients
    P_DTYPE: tl.constexpr,
    G_DTYPE: tl.constexpr,
    M_DTYPE: tl.constexpr,
    V_DTYPE: tl.constexpr,
    T_DTYPE: tl.constexpr,
    COMPUTE: tl.constexpr,
    HAS_EMA: tl.constexpr,
    ALIGNED: tl.constexpr,  # chunk bases 16-byte aligned and counts multiples of VEC (host-checked)
    VEC: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """torch.optim.AdamW (_single_tensor_adamw) step, then t = m*t + (1-m)*p on the new p.

    p *= 1 - lr*wd; m = fma(1-b1, g - m, m); v = v*b2 + ((1-b2)*g)*g;
    p += (-lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)    (IEEE sqrt and division, like PyTorch)
    """
    pid = tl.program_id(0)
    tid = tl.load(CHUNK_TENSOR_ptr + pid)
    start = tl.load(CHUNK_START_ptr + pid)
    count = tl.load(CHUNK_COUNT_ptr + pid)
    coef = COEF_ptr + tl.load(GROUP_ptr + tid) * 9
    decay = tl.load(coef + 0).to(COMPUTE)
    w1 = tl.load(coef + 1).to(COMPUTE)
    beta2 = tl.load(coef + 2).to(COMPUTE)
    w2 = tl.load(coef + 3).to(COMPUTE)
    neg_step_size = tl.load(coef + 4).to(COMPUTE)
    bc2_sqrt = tl.load(coef + 5).to(COMPUTE)
    eps = tl.load(coef + 6).to(COMPUTE)
    p_ptr = _chunk_ptr(P_ADDR_ptr, tid, start, P_DTYPE, ALIGNED)
    g_ptr = _chunk_ptr(G_ADDR_ptr, tid, start, G_DTYPE, ALIGNED)
    m_ptr = _chunk_ptr(M_ADDR_ptr, tid, start, M_DTYPE, ALIGNED)
    v_ptr = _chunk_ptr(V_ADDR_ptr, tid, start, V_DTYPE, ALIGNED)
    if HAS_EMA:
        mom = tl.load(coef + 7).to(COMPUTE)
        one_minus_mom = tl.load(coef + 8).to(COMPUTE)
        t_ptr = _chunk_ptr(T_ADDR_ptr, tid, start, T_DTYPE, ALIGNED)
    else:
        mom = decay
        one_minus_mom = decay
        t_ptr = p_ptr
    if count == CHUNK:  # every chunk but a tensor's last: no mask
        for i in range(0, CHUNK, BLOCK):
            _adamw_ema_block(p_ptr, g_ptr, m_ptr, v_ptr, t_ptr, i + tl.arange(0, BLOCK), None, decay, w1,
                             beta2, w2, neg_step_size, bc2_sqrt, eps, mom, one_minus_mom, P_DTYPE, M_DTYPE,
                             V_DTYPE, T_DTYPE, COMPUTE, HAS_EMA)  # fmt: skip
    else:
        if ALIGNED:
            count = tl.multiple_of(count, VEC)  # whole 16-byte vectors: the mask keeps them whole
        for i in range(0, CHUNK, BLOCK):
            offs = i + tl.arange(0, BLOCK)
            _adamw_ema_block(p_ptr, g_ptr, m_ptr, v_ptr, t_ptr, offs, offs < count, decay, w1, beta2, w2,
                             neg_step_size, bc2_sqrt, eps, mom, one_minus_mom, P_DTYPE, M_DTYPE, V_DTYPE,
                             T_DTYPE, COMPUTE, HAS_EMA)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Planners: pure functions of the tensors' metadata and the device


def _sizes(ts: Sequence) -> list[int]:
    return [t.element_size() for t in ts]


def plan_fused_ema(
    targets: Sequence, sources: Sequence, device: DeviceSpec, *, m_from_ptr: bool = False, label: str = ""
) -> list[LaunchPlan]:
    """The launches of ``t = t*m + (1-m)*s`` over every (target, source) pair: one per dtype pair
    and alignment class (:func:`~.multi_tensor.split_launches`), empty tensors skipped.

    Args:
        targets, sources: equal-length lists of dense tensors or TensorSpecs (fp32 / bf16 / fp16 /
            fp64) of matching sizes; only metadata and addresses are read.
        device: where the launch runs (block sizes, interpreter or GPU).
        m_from_ptr: the momentum comes as a device tensor (always so for fp64 storage).
    Returns plans whose tables are CPU tensors and whose per-step arguments (``M_ptr``, ``m``,
    ``one_minus_m``: the last three) are placeholders. Raises ValueError / TypeError as
    :func:`~.multi_tensor.check_roles`.
    """
    return [plan for _, plan in _ema_launches(targets, sources, device, m_from_ptr=m_from_ptr, label=label)]


def _ema_launches(targets, sources, device: DeviceSpec, *, m_from_ptr: bool, label: str = ""):
    """plan_fused_ema's plans, each with the indices of the tensors it covers."""
    check_roles({"targets": targets, "sources": sources})
    plans = []
    for (dtypes, aligned), ids in split_launches([targets, sources]).items():
        sub = [[targets[i] for i in ids], [sources[i] for i in ids]]
        sizes = _sizes([sub[0][0], sub[1][0]])
        chunk, block, num_warps = multi_tensor_blocks(device, sizes, [t.numel() for t in sub[0]])
        tables = MultiTensorTables.build(sub, [0] * len(ids), chunk)
        compute = compute_dtype(*dtypes)
        from_ptr = m_from_ptr or compute == tl.float64  # fp64 storage: fp32 kernel scalars would lose bits
        m_dtype = torch.float64 if compute == tl.float64 else torch.float32
        m_arg = TensorSpec((2,), m_dtype) if from_ptr else tables.chunk_count  # a pointer never read
        plans.append((ids, LaunchPlan(
            _fused_ema_kernel, (tables.n_programs,),
            (tables.addrs[0], tables.addrs[1], tables.chunk_tensor, tables.chunk_start, tables.chunk_count,
             m_arg, 0.0, 1.0),
            dict(T_DTYPE=tl_dtype(dtypes[0]), S_DTYPE=tl_dtype(dtypes[1]), COMPUTE=compute,
                 M_FROM_PTR=from_ptr, ALIGNED=aligned, VEC=vector_elems(sizes), CHUNK=chunk, BLOCK=block,
                 enable_fp_fusion=False),  # t*m and (1-m)*s rounded separately, like the official mul_/add_
            num_warps=num_warps, label=label, vector_loads=aligned, vector_stores=aligned,
            bytes_moved=sum(t.numel() * (2 * t.element_size() + s.element_size()) for t, s in zip(*sub)),
        )))  # fmt: skip
    return plans


def plan_fused_adamw_ema(
    params: Sequence,
    grads: Sequence,
    exp_avgs: Sequence,
    exp_avg_sqs: Sequence,
    ema_params: Sequence,
    group_ids: Sequence[int],
    device: DeviceSpec,
    *,
    label: str = "",
) -> list[LaunchPlan]:
    """The AdamW(+EMA) launches over all tensors: one per dtype signature and alignment class.

    Args: equal-length lists of dense tensors or TensorSpecs (``ema_params`` may be empty: AdamW
    only); ``group_ids[i]``: the coefficient-table row of tensor i; ``device``: where it runs.
    Returns plans whose tables are CPU tensors and whose last argument (the [n_groups, 9]
    coefficient table of this step) is a placeholder. Raises ValueError / TypeError on mismatched
    lists, sizes, layouts or dtypes.
    """
    return [plan for _, plan in _adamw_launches(params, grads, exp_avgs, exp_avg_sqs, ema_params, group_ids,
                                                device, label=label)]  # fmt: skip


def _adamw_launches(params, grads, exp_avgs, exp_avg_sqs, ema_params, group_ids, device: DeviceSpec, *,
                    label: str = ""):  # fmt: skip
    """plan_fused_adamw_ema's plans, each with the indices of the tensors it covers."""
    named = {"params": params, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
    has_ema = len(ema_params) > 0
    if has_ema:
        named["ema_params"] = ema_params
    check_roles(named)
    if len(group_ids) != len(params):
        raise ValueError(f"group_ids has {len(group_ids)} entries for {len(params)} params")
    roles = list(named.values())
    plans = []
    for (dtypes, aligned), ids in split_launches(roles).items():
        sub = [[role[i] for i in ids] for role in roles]
        sizes = _sizes([s[0] for s in sub])
        chunk, block, num_warps = multi_tensor_blocks(device, sizes, [t.numel() for t in sub[0]])
        tables = MultiTensorTables.build(sub, [int(group_ids[i]) for i in ids], chunk)
        compute = compute_dtype(*dtypes)
        coef_dtype = torch.float64 if compute == tl.float64 else torch.float32
        coef = TensorSpec((max(group_ids) + 1, _N_COEF), coef_dtype)
        t_addr = tables.addrs[4] if has_ema else tables.addrs[0]
        plans.append((ids, LaunchPlan(
            _fused_adamw_ema_kernel, (tables.n_programs,),
            (*tables.addrs[:4], t_addr, tables.group, tables.chunk_tensor, tables.chunk_start,
             tables.chunk_count, coef),
            dict(P_DTYPE=tl_dtype(dtypes[0]), G_DTYPE=tl_dtype(dtypes[1]), M_DTYPE=tl_dtype(dtypes[2]),
                 V_DTYPE=tl_dtype(dtypes[3]), T_DTYPE=tl_dtype(dtypes[4] if has_ema else dtypes[0]),
                 COMPUTE=compute, HAS_EMA=has_ema, ALIGNED=aligned, VEC=vector_elems(sizes), CHUNK=chunk,
                 BLOCK=block,
                 enable_fp_fusion=False),  # PyTorch's op-by-op rounding; the lerp's fma is explicit
            num_warps=num_warps, label=label, vector_loads=aligned, vector_stores=aligned,
            # p, m, v (and the EMA target) read and written, the gradient read
            bytes_moved=sum(row[0].numel() * (row[1].element_size() + 2 * sum(t.element_size() for t in (
                row[0], row[2], row[3], *row[4:]))) for row in zip(*sub)),
        )))  # fmt: skip
    return plans


# ---------------------------------------------------------------------------------------------------
# Launchers: plans cached with their device tables, keyed by the tensors' addresses and sizes


class _PlanCache:
    """A small LRU (of planned launches with their tables on the device).

    Two levels per kernel. By *addresses* (every tensor's address, the first role's sizes, the
    launch's flags): a step whose tensors keep their storage finds its plans without re-checking or
    re-uploading anything. On a miss the tensors are validated and looked up by *layout* (sizes,
    dtypes, which bases are 16-byte aligned, groups): gradients that the allocator handed out at
    other addresses reuse the chunk tables and only upload new address rows. Tensors are validated
    when first seen at a set of addresses; one later replaced by another of a different dtype or
    layout at the same address and size is not detected.
    """

    def __init__(self, size: int = 16):
        self.size = size
        self._d: OrderedDict = OrderedDict()

    def get(self, key: tuple):
        hit = self._d.get(key)
        if hit is not None:
            self._d.move_to_end(key)
        return hit

    def put(self, key: tuple, value) -> None:
        self._d[key] = value
        while len(self._d) > self.size:
            self._d.popitem(last=False)


_EMA_PLANS, _EMA_LAYOUTS = _PlanCache(), _PlanCache()
_ADAMW_PLANS, _ADAMW_LAYOUTS = _PlanCache(), _PlanCache()
_ptr = torch.Tensor.data_ptr
_numel = torch.Tensor.numel
_dtype = operator.attrgetter("dtype")


def _device_plans(named: dict, addr_roles: list, flags: tuple, layouts: _PlanCache, plan) -> list[LaunchPlan]:
    """Plans for tensors at addresses not seen before (see :class:`_PlanCache`): validated, then the
    launches of the same layout with new address rows (the first ``len(addr_roles)`` arguments), or
    ``plan(device_spec)`` -> [(ids, LaunchPlan)] with its tables moved to the device."""
    check_roles(named)
    device = _check_devices(named)
    roles = list(named.values())
    layout = (device, flags, tuple(map(_numel, roles[0])), *(tuple(map(_dtype, r)) for r in roles),
              tuple(_ptr(t) % ALIGN_BYTES == 0 for r in roles for t in r))  # fmt: skip
    launches = layouts.get(layout)
    if launches is None:
        launches = [(ids, p.with_args(*tables_to(p.args, device))) for ids, p in plan(DeviceSpec.of(device))]
        layouts.put(layout, launches)
        return [p for _, p in launches]
    plans = []
    for ids, p in launches:
        rows = tables_to(address_rows(addr_roles, ids), device)
        plans.append(p.with_args(*rows, *p.args[len(rows):]))
    return plans


def _check_devices(named: dict[str, Sequence[torch.Tensor]]) -> torch.device:
    device = next(iter(named.values()))[0].device
    check_launchable(next(iter(named.values()))[0])
    for name, ts in named.items():
        for i, t in enumerate(ts):
            if t.device != device:
                raise ValueError(f"{name}[{i}] is on {t.device}, expected {device}")
    return device


def fused_ema_launch(
    targets: Sequence[torch.Tensor],
    sources: Sequence[torch.Tensor],
    momentum: Optional[torch.Tensor],
    m: float,
    one_minus_m: float,
) -> None:
    """In place t = t*m + (1-m)*s; (m, 1-m) from the device tensor ``momentum`` ([2]) or the scalars."""
    if len(targets) != len(sources):
        raise ValueError(f"sources has {len(sources)} tensors, targets has {len(targets)}")
    if not targets:
        return
    key = (momentum is not None, targets[0].device, tuple(map(_ptr, targets)), tuple(map(_ptr, sources)),
           tuple(map(_numel, targets)))  # fmt: skip
    plans = _EMA_PLANS.get(key)
    if plans is None:
        from_ptr = momentum is not None
        plans = _device_plans(
            {"targets": targets, "sources": sources}, [targets, sources], (from_ptr,), _EMA_LAYOUTS,
            lambda dev: _ema_launches(targets, sources, dev, m_from_ptr=from_ptr),
        )
        _EMA_PLANS.put(key, plans)
    for plan in plans:
        coef = plan.args[5]
        if plan.constexprs["M_FROM_PTR"]:
            if momentum is None:  # fp64 storage with a Python momentum: upload it without a sync
                coef = upload_scalars([[m, one_minus_m]], targets[0].device, torch.float64)[0]
            else:
                wide = plan.constexprs["COMPUTE"] == tl.float64
                coef = momentum.to(torch.float64 if wide else momentum.dtype)
        plan.with_args(*plan.args[:5], coef, m, one_minus_m).launch()


def fused_adamw_ema_launch(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    ema_params: Sequence[torch.Tensor],
    group_ids: Sequence[int],
    coeffs: torch.Tensor,
) -> None:
    """One AdamW(+EMA) launch per dtype signature and alignment class; ``coeffs``: the [n_groups, 9]
    coefficient table on the device."""
    roles = (params, grads, exp_avgs, exp_avg_sqs, ema_params)
    if not params:
        return
    key = (params[0].device, tuple(map(int, group_ids)), tuple(map(_numel, params)),
           *(tuple(map(_ptr, r)) for r in roles))  # fmt: skip
    plans = _ADAMW_PLANS.get(key)
    if plans is None:
        named = {"params": params, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
        if ema_params:
            named["ema_params"] = ema_params
        if len(group_ids) != len(params):
            raise ValueError(f"group_ids has {len(group_ids)} entries for {len(params)} params")
        addr_roles = [params, grads, exp_avgs, exp_avg_sqs, ema_params if ema_params else params]
        plans = _device_plans(named, addr_roles, (tuple(map(int, group_ids)),), _ADAMW_LAYOUTS,
                              lambda dev: _adamw_launches(*roles, group_ids, dev))
        _ADAMW_PLANS.put(key, plans)
    for plan in plans:
        coef = coeffs.to(torch.float64) if plan.constexprs["COMPUTE"] == tl.float64 else coeffs
        plan.with_args(*plan.args[:-1], coef).launch()


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
        coeffs = _upload_coeffs(host_coeffs, params[0].device)
    fused_adamw_ema_launch(params, grads, exp_avgs, exp_avg_sqs, ema_params, group_ids, coeffs)


def _upload_coeffs(host_coeffs: List[float], device: torch.device) -> torch.Tensor:
    rows = [host_coeffs[i : i + _N_COEF] for i in range(0, len(host_coeffs), _N_COEF)]
    return upload_scalars(rows, device)


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


# Eager calls launch directly: the custom op's dispatch (per-tensor version bumps, alias checks, list
# conversion) costs several times the launch itself for ViT-L's ~300-tensor lists, and only
# torch.compile needs the op (to trace through it). The direct path bumps the mutated tensors'
# version counters as the op would, in one call per list.
def _eager() -> bool:
    return not torch.compiler.is_compiling()


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
    targets, sources = list(target_params), list(source_params)
    if not targets:
        return
    if kernel_backend(targets[0]) != "triton":
        reference.ema_(_as_list(targets), _as_list(sources), momentum)
        return
    if _is_tensor(momentum):
        coef = torch.stack([momentum.reshape(()), (1 - momentum).reshape(())])
        args = (coef.to(device=targets[0].device, dtype=torch.float32), 0.0, 0.0)
    else:
        args = (None, float(momentum), 1 - float(momentum))
    if _eager():
        fused_ema_launch(targets, sources, *args)
        torch.autograd.graph.increment_version(targets)
    else:
        fused_ema_op(_as_list(targets), _as_list(sources), *args)


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
    roles = [list(params), list(grads), list(exp_avgs), list(exp_avg_sqs),
             list(ema_params) if ema_params is not None else []]  # fmt: skip
    if roles[4] and momentum is None:
        raise ValueError("fused_adamw_ema_: momentum is required with ema_params")
    if not roles[0]:
        return
    ids = [int(g) for g in group_ids] if group_ids is not None else [0] * len(roles[0])
    n_groups = max(ids) + 1
    if kernel_backend(roles[0][0]) != "triton":
        roles = [_as_list(r) for r in roles]
        reference.adamw_ema_(
            *roles[:4], roles[4] or None, lr=lr, weight_decay=weight_decay, step=step,
            betas=betas, eps=eps, momentum=momentum, group_ids=ids,
        )  # fmt: skip
        return
    coeffs, host = None, None
    if _any_tensor(lr, weight_decay, step, momentum):
        coeffs = adamw_ema_coefficients_device(
            lr, weight_decay, step, betas, eps, momentum, n_groups, roles[0][0].device
        )
    else:
        rows = adamw_ema_coefficients(lr, weight_decay, step, betas, eps, momentum, n_groups)
        host = [v for r in rows for v in r]
    if _eager():
        if coeffs is None:
            coeffs = _upload_coeffs(host, roles[0][0].device)
        fused_adamw_ema_launch(*roles, ids, coeffs)
        for k in (0, 2, 3, 4):  # the mutated roles, as the op's mutates_args
            torch.autograd.graph.increment_version(roles[k])
    else:
        fused_adamw_ema_op(*[_as_list(r) for r in roles], ids, coeffs, host)


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


# ---------------------------------------------------------------------------------------------------
# Ahead-of-time plans: the launches of a V-JEPA training step (kernels/aot.py)

#: Models whose parameter sets :func:`aot_plans` plans (``vjepa_fast.jepa.build_vjepa`` presets).
AOT_MODELS = (("vit_large", "ViT-L"), ("vit_huge", "ViT-H"))


def _spec(p: torch.Tensor, dtype: torch.dtype = torch.float32, address: int = 0) -> TensorSpec:
    return TensorSpec(tuple(p.shape), dtype, address=address)


@functools.lru_cache(maxsize=None)
def _meta_model(model_name: str) -> torch.nn.Module:
    """``build_vjepa(model_name)`` on the meta device: the real parameter list, no memory."""
    from vjepa_fast.jepa import build_vjepa  # the kernels package itself does not depend on the model

    with torch.device("meta"):
        return build_vjepa(model_name)


def _vjepa_step_plans(model_name: str, short: str, device: DeviceSpec) -> list[LaunchPlan]:
    """The multi-tensor launches of one training step of ``model_name`` (16x224x224 clips, patch 16,
    tubelet 2, predictor depth 12 / width 384), planned from the real parameter list (built on the
    meta device) as :class:`~vjepa_fast.optim.FusedAdamWEMA` and ``TrainStep.ema`` issue them."""
    from vjepa_fast.optim import param_groups

    model = _meta_model(model_name)
    enc = list(model.encoder.parameters())
    tgt = list(model.target_encoder.parameters())
    target_of = {id(s): t for s, t in zip(enc, tgt)}
    groups = param_groups(model.encoder, model.predictor)
    # FusedAdamWEMA.step: tensors with a gradient, bucketed by (has an EMA target); the coefficient
    # table has one row per param group used, in group order.
    buckets: dict[bool, list[tuple[int, torch.Tensor]]] = {True: [], False: []}
    for gi, g in enumerate(groups):
        for p in g["params"]:
            if p.requires_grad:
                buckets[id(p) in target_of].append((gi, p))
    frozen = [(target_of[id(p)], p) for p in enc if not p.requires_grad]
    n_enc = sum(p.numel() for _, p in buckets[True])
    n_pred = sum(p.numel() for _, p in buckets[False])
    plans: list[LaunchPlan] = []

    def adamw(bucket, ema_dtype: Optional[torch.dtype], label: str, grad_at: int = 0, group: str = ""):
        used = sorted({gi for gi, _ in bucket})
        ps = [_spec(p) for _, p in bucket]
        gs = [_spec(p, address=grad_at * (i + 1)) for i, (_, p) in enumerate(bucket)]
        ema = [_spec(p, ema_dtype) for _, p in bucket] if ema_dtype is not None else []
        for plan in plan_fused_adamw_ema(ps, gs, ps, ps, ema, [used.index(gi) for gi, _ in bucket], device,
                                         label=label):  # fmt: skip
            plans.append(dataclasses.replace(plan, group=group))

    # Gradients set to None each step may come back at other (allocator-aligned) addresses: new
    # table contents, the same compiled variant.
    for at in (0, 512):
        label = f"{short} encoder AdamW+EMA fp32, {n_enc / 1e6:.1f}M (fused step)"
        label += ", gradients moved" if at else ""
        adamw(buckets[True], torch.float32, label, grad_at=at, group=f"{short} AdamW+EMA gradient addresses")
    adamw(buckets[False], None, f"{short} predictor AdamW fp32, {n_pred / 1e6:.1f}M (fused step)")
    adamw(buckets[True], torch.bfloat16, f"{short} encoder AdamW fp32 + EMA into bf16 targets")
    src = [_spec(s) for _, s in frozen]
    plans.extend(plan_fused_ema([_spec(t) for t, _ in frozen], src, device,
                                label=f"{short} frozen pos_embed EMA fp32 (fused step)"))  # fmt: skip
    all_t, all_s = [_spec(t) for t in tgt], [_spec(s) for s in enc]
    for plan in plan_fused_ema(all_t, all_s, device):
        for m in (0.998, 1.0):  # the momentum schedule's ends: runtime data, one compiled variant
            plans.append(dataclasses.replace(
                plan, args=(*plan.args[:6], m, 1 - m), group=f"{short} EMA momentum",
                label=f"{short} encoder EMA fp32, m={m} (unfused step)"))  # fmt: skip
    n_all = sum(p.numel() for p in enc)
    flat = [TensorSpec((-(-n_all // 16) * 16,), torch.float32)]
    plans.extend(plan_fused_ema(flat, flat, device, label=f"{short} encoder EMA fp32, FlatParams buffer"))
    bf16_t, bf16_s = [_spec(t, torch.bfloat16) for t in tgt], [_spec(s, torch.bfloat16) for s in enc]
    plans.extend(plan_fused_ema(bf16_t, bf16_s, device, m_from_ptr=True,
                                label=f"{short} encoder EMA bf16 storage, device m"))  # fmt: skip
    return plans


def aot_plans() -> list[LaunchPlan]:
    """The EMA and fused AdamW+EMA launches of a ViT-L and a ViT-H training step on an H100 / H200
    (132 SMs): fp32 master weights, gradients and optimizer state, fp32 EMA targets (and bf16
    storage variants), plus the scalar fallback for unaligned tensors. For ``kernels/aot.py``."""
    device = DeviceSpec(interpret=False)
    plans: list[LaunchPlan] = []
    for name, short in AOT_MODELS:
        plans.extend(_vjepa_step_plans(name, short, device))
    # The fallback (tensors the host could not prove 16-byte aligned, e.g. views 4 bytes in): scalar
    # accesses by design. ViT-L's encoder list with every source shifted by one fp32 element.
    enc = list(_meta_model("vit_large").encoder.parameters())
    label = "ViT-L encoder EMA fp32, unaligned sources (scalar fallback)"
    shifted = [_spec(p, address=4) for p in enc]
    plans.extend(plan_fused_ema([_spec(p) for p in enc], shifted, device, label=label))
    return plans
