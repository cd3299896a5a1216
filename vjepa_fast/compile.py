"""``torch.compile`` for V-JEPA training that does not recompile when the masks change.

The problem
-----------
The multiblock collator draws new block sizes every step, so the context lengths ``Kc_i`` and
target lengths ``Kt_i`` of every mask generator ``i`` change every step. ``torch.compile`` of the
official modules specialises on those lengths: it recompiles at the next step, then (automatic
dynamic shapes) once more, and per block class it soon hits dynamo's ``recompile_limit`` (8) and
silently runs eagerly. Measured on an H100 (``reference/engineering.md``): the naively compiled
ViT-L step is 2x *slower* than eager.

The strategy: two compiled regions, one static, one with symbolic token counts
------------------------------------------------------------------------------
1. **Target** (``target_encoder.forward``): its input and output shapes never change
   (``[B, C, T, H, W] -> [B, N, D]``), so it is compiled with ``dynamic=False, fullgraph=True``:
   one graph, fully specialised kernels. ``target_mode`` can ask for CUDA graphs on GPU
   (``"reduce-overhead"``), which a static graph allows.
2. **Student** (:meth:`VJEPA.forward_student`: masked gather, context encoder, predictor and
   the L1 loss, for every mask generator): ``fullgraph=True``, and before every call the token
   dim (dim 1) of every mask index tensor is marked dynamic. The whole forward *and* its AOT
   backward are then one graph over symbols ``Kc_i, Kt_i``: every later step reuses it, whatever
   its lengths. Marked dims are never duck-shaped, so lengths that happen to be equal in the
   first traced step still get their own symbols.

V-JEPA 2 (:meth:`VJEPA.forward_groups`): the student is :meth:`VJEPA.forward_student_groups`
(``model.compiled_student_groups``, counted as the same ``student`` region), its masks' token dims
marked dynamic the same way (:class:`DynamicGroups`). The number of clip-length groups is part of
the traced structure, so there is one student graph per group count (one in every official V2
config). With several groups the split of the batch between them changes every step, so their
batch dims are marked dynamic too (the target's as well: it then compiles once per clip length).
The RoPE tables are built inside the traced blocks (activation checkpointing forbids caching them
across blocks there; the graph's CSE merges the copies). Measured on CPU (tests/test_compile.py,
aot_eager): 1 target + 1 student graph and 0 recompiles over 12 steps of changing masks, with the
blocks activation-checkpointed; with two groups of changing sizes, 1 student graph and 2 target
graphs (one per length). ``benchmarks/train_step.py --arch v2 --compile`` with inductor on the CPU
(tiny model, 2 warm-up + 3 timed steps): 1 + 1 graphs, nothing compiled during the timed steps.

The modules are not wrapped: the target's ``forward`` is replaced on the instance and the
student is reached through ``model.compiled_student``, so parameters, the optimizer, the EMA and
``state_dict`` (no ``_orig_mod.`` prefix: the official checkpoint format) are those of the eager
model, and ``copy.deepcopy(model)`` stays a correct, compiled copy.

Why dynamic shapes and not padding to buckets
---------------------------------------------
Padding ``Kc``/``Kt`` up to a few bucket lengths would also bound the compilations (one graph
per combination of buckets, up to ``buckets**(2*generators)``), but attention would then need a
key-padding mask: with a mask SDPA cannot use its flash backend, and the padded tokens cost
FLOPs in every block (half a bucket on average) while the gather, predictor-input and loss
kernels would all need a valid-length argument to keep the math identical. (Measured on an H100,
engineering.md: unmasked attention runs at 312 TFLOP/s on cuDNN and 204 on flash, the
memory-efficient backend at 102.) Marked-dynamic shapes keep the math exact (no padding, no mask,
the same SDPA call as eager), give one graph for every length, and cost little: matmuls and SDPA
are library calls that take their sizes at run time anyway, LayerNorm/GELU/residual kernels
reduce over the static feature dim, and only reductions over tokens (bias gradients, the loss
mean) lose a compile-time length. The price is no CUDA graphs for the student (one would be
recorded per length), which is why ``mode`` refuses the CUDA-graph modes; its kernels are large
enough for launch overhead not to matter.

Measured on CPU (tests/test_compile.py: embed 64, depth 2, predictor 32x1, 8 frames x 96 px, the
official two-generator masks, batch 2, 20 AdamW steps, fp32), compiled frames over the 20 steps:

* this module: 2 (1 target, 1 student), 0 recompiles; losses equal eager to < 1e-6 relative with
  ``inductor``, bit-identical with ``aot_eager``;
* student compiled with ``dynamic=False`` (naive): a new graph for each new length tuple, 8 by
  step 8, then dynamo's ``recompile_limit`` stops it: eager from then on without ``fullgraph``,
  a ``FailOnRecompileLimitHit`` error with it;
* plain ``torch.compile`` (automatic dynamic shapes): 3 (static at step 0, dynamic for the
  lengths that changed at step 1, again at step 3 for one that changed only then).

Inductor can add guards of its own on a symbolic size. On CPU, float sums over more than 4096
elements use another accumulator, which guards ``B*Kt*D > 4096`` and ``B*(Kc+Kt) <= 4096`` (real
configs sit on one side for good; the test uses 96 px so that the tiny model does too). The
GPU code generator picks reduction splits from size hints without guarding, but SDPA's backend
checks run on the symbolic sizes: read :func:`compile_stats` after the first steps on a new
machine or PyTorch version, and expect ``target == student == 1`` and ``recompiles == 0`` (as
measured on an H200 with torch 2.11, ViT-L, 25 steps of changing masks with packed context and a
CUDA-graphed target: 1 + 1, no recompiles, no graph breaks; bf16 autocast on CPU gives the same).

Usage (the trainer)::

    model = build_vjepa(...).to(device)
    compile_vjepa(model)                 # in place; returns model
    ...                                  # optimizer, resume, train as before
    compile_stats()                      # {'target': 1, 'student': 1, 'recompiles': 0, ...}
"""
from __future__ import annotations

import os
import re
import types
from collections import Counter
from typing import Callable, Sequence

import torch

from .jepa import VJEPA, mark_group_batches_dynamic
from .vision_transformer import VisionTransformer

__all__ = ["compile_vjepa", "compile_stats", "compiled_attention_ops", "is_compiled", "reset_compile_stats"]

#: Modes that turn on CUDA graphs: one graph would be recorded per mask length.
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


class DynamicTokens:
    """Calls a compiled ``forward_student`` with the token dim of every mask marked dynamic.

    ``maybe_mark_dynamic`` (not ``mark_dynamic``) so that a length of 1, which dynamo always
    specialises, costs one extra graph instead of an error.
    """

    def __init__(self, compiled: Callable):
        self.compiled = compiled

    def __call__(
        self, model: VJEPA, clips: torch.Tensor, masks_enc: Sequence[torch.Tensor],
        masks_pred: Sequence[torch.Tensor], h: torch.Tensor,
    ):
        for m in (*masks_enc, *masks_pred):
            torch._dynamo.maybe_mark_dynamic(m, 1)
        return self.compiled(model, clips, masks_enc, masks_pred, h)


class DynamicGroups:
    """Calls a compiled ``forward_student_groups`` (V2) with the token dim of every mask of every
    group marked dynamic, and, with more than one group, the batch dim of every group's clips,
    masks and target features (:func:`vjepa_fast.jepa.mark_group_batches_dynamic`). The number of
    groups is part of the traced structure: one graph per group count (1 in every official V2
    config, whose ``dataset_fpcs`` give one clip length)."""

    def __init__(self, compiled: Callable):
        self.compiled = compiled

    def __call__(self, model: VJEPA, clips, masks_enc, masks_pred, hs):
        for me, mp in zip(masks_enc, masks_pred):
            for m in (*me, *mp):
                torch._dynamo.maybe_mark_dynamic(m, 1)
        mark_group_batches_dynamic(clips, masks_enc, masks_pred, hs)
        return self.compiled(model, clips, masks_enc, masks_pred, hs)


def compile_vjepa(
    model: VJEPA,
    *,
    backend: str | Callable = "inductor",
    mode: str | None = None,
    target_mode: str | None = None,
    dynamic_context: bool = True,
    fullgraph: bool = True,
    options: dict | None = None,
) -> VJEPA:
    """Compile ``model`` in place (see the module docstring) and return it.

    Args:
        backend: ``torch.compile`` backend for both regions (``"inductor"``; ``"aot_eager"`` for
            quick checks).
        mode: mode of the student region (context encoder + predictor + loss), e.g.
            ``"max-autotune-no-cudagraphs"``. CUDA-graph modes are refused while
            ``dynamic_context`` is on.
        target_mode: mode of the static target region; ``"reduce-overhead"`` adds CUDA graphs on GPU.
        dynamic_context: mark the mask token dims dynamic (the point of this module). False
            compiles the student with ``dynamic=False``: the naive baseline, which recompiles
            whenever a length changes; for comparisons only.
        fullgraph: refuse graph breaks (both regions trace without any).
        options: inductor options for both regions.
    """
    if not isinstance(model, VJEPA):
        raise TypeError(f"compile_vjepa expects a VJEPA model, got {type(model).__name__}")
    if is_compiled(model):
        raise ValueError("model is already compiled")
    if dynamic_context and mode in _CUDAGRAPH_MODES:
        raise ValueError(
            f"mode={mode!r} uses CUDA graphs, which record one graph per mask length; use "
            "'max-autotune-no-cudagraphs' (or dynamic_context=False, which recompiles every step)"
        )
    common = dict(backend=backend, fullgraph=fullgraph, options=options)
    target = model.target_encoder
    # A bound method on the instance rather than Module.compile(): deepcopy rebinds it to the copy.
    target_forward = torch.compile(type(target).forward, dynamic=False, mode=target_mode, **common)
    target.forward = types.MethodType(target_forward, target)
    model.target_cuda_graph = target_mode in _CUDAGRAPH_MODES
    student = torch.compile(
        type(model).forward_student, dynamic=None if dynamic_context else False, mode=mode, **common
    )
    model.compiled_student = DynamicTokens(student) if dynamic_context else student
    groups = torch.compile(
        type(model).forward_student_groups, dynamic=None if dynamic_context else False, mode=mode, **common
    )
    model.compiled_student_groups = DynamicGroups(groups) if dynamic_context else groups
    return model


def is_compiled(model: VJEPA) -> bool:
    return model.compiled_student is not None or "forward" in model.target_encoder.__dict__


def _regions() -> dict[tuple, str]:
    codes = [("target", VisionTransformer.forward.__code__), ("student", VJEPA.forward_student.__code__),
             ("student", VJEPA.forward_student_groups.__code__)]  # V1 and V2 students: one region
    return {(c.co_name, os.path.realpath(c.co_filename), c.co_firstlineno): r for r, c in codes}


def compile_stats() -> dict[str, int]:
    """Dynamo frame compilations recorded since the process started or :func:`reset_compile_stats`.

    ``{"target": n, "student": n, "other": n, "recompiles": n, "graph_breaks": n}``: ``target``
    and ``student`` count the graphs compiled for each region (1 each after any number of steps
    is the expectation; one more per grad mode, autocast dtype or batch size the model is run
    with), ``recompiles`` those compiled because a guard failed, ``graph_breaks`` the graph
    breaks dynamo saw. A region past ``torch._dynamo.config.recompile_limit`` compiles no more
    and runs eagerly, so a count that stops growing while steps keep varying is no proof; read
    ``recompiles`` as well. Dynamo keeps the records of the last 64 compilations only.
    """
    regions = _regions()
    by_region: Counter[str] = Counter()
    recompiles = 0
    for m in torch._dynamo.utils.get_compilation_metrics():
        if m.fail_type is not None or not m.graph_op_count:
            continue
        key = (m.co_name, os.path.realpath(m.co_filename or ""), m.co_firstlineno)
        by_region[regions.get(key, "other")] += 1
        recompiles += bool(m.recompile_reason)
    graph_breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return {"target": by_region["target"], "student": by_region["student"], "other": by_region["other"],
            "recompiles": recompiles, "graph_breaks": graph_breaks}


def reset_compile_stats() -> None:
    """Forget the compilations recorded so far (not the compiled code: see ``torch._dynamo.reset``)."""
    torch._dynamo.utils.clear_compilation_metrics()
    torch._dynamo.utils.counters.clear()


# A fused SDPA kernel called from inductor's wrapper code, e.g.
# ``torch.ops.aten._scaled_dot_product_cudnn_attention.default(`` (comments name ops too; calls only).
_FUSED_ATTENTION_CALL = re.compile(r"torch\.ops\.aten\.(_scaled_dot_product_\w+|_flash_attention_\w+|"
                                   r"_efficient_attention_\w+|_cudnn_attention_\w+)\.default\(")
# SDPA's math backend decomposes into two batched matmuls per call (the softmax is fused into a
# generated kernel); nothing else in the V-JEPA modules is a bmm.
_BMM_CALL = re.compile(r"extern_kernels\.bmm\(")


def compiled_attention_ops() -> dict[str, dict[str, int]]:
    """Which attention the code that inductor generated in this process calls: for each compiled
    graph (forward and backward graphs separately), the number of calls per fused SDPA op (e.g.
    ``_scaled_dot_product_cudnn_attention``, ``..._flash_attention_backward``) and of ``bmm``
    (``extern_kernels.bmm``: what the math backend decomposes into; the V-JEPA modules have no
    other bmm). Keyed by the generated file's path; graphs with neither are left out.

    This reads the wrapper modules inductor loaded (``torch._inductor.codecache.PyCodeCache``),
    so it sees graphs compiled by ``backend="inductor"`` only, cache hits included. It answers
    what an SDPA backend choice (``vjepa_fast.attention``) became inside compiled regions, where
    the choice is made once, at trace time, on fake tensors with symbolic lengths.
    """
    from torch._inductor.codecache import PyCodeCache  # noqa: PLC0415

    out: dict[str, dict[str, int]] = {}
    for path in sorted({getattr(m, "__file__", None) for m in PyCodeCache.modules} - {None}):
        try:
            src = open(path).read()
        except OSError:  # removed by a cache clean-up since it was loaded
            continue
        if "def call(" not in src:  # a kernel module, not a graph's wrapper
            continue
        ops = Counter(_FUSED_ATTENTION_CALL.findall(src))
        bmm = len(_BMM_CALL.findall(src))
        if bmm:
            ops["bmm"] = bmm
        if ops:
            out[path] = dict(sorted(ops.items()))
    return out
