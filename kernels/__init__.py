"""Triton kernels for vjepa-fast (installed as ``vjepa_fast.kernels``).

Functional APIs (each picks Triton or the PyTorch reference per ``kernels/dispatch.py``):

* ``masked_gather(x, idx, pos=None)``: gather tokens, optionally adding the position table.
* ``assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, mask_token)``: the predictor's input.
* ``assemble_sorted_predictor_input(z, order, mask_token, inverse=None)``: V2's predictor input, sorted.
* ``masked_l1_loss(pred, target, idx)``: the V-JEPA loss for one mask configuration.
* ``rope_rotate_qk(q, k, cos, sin)``: V-JEPA 2's 3D RoPE on q and k in one pass.
* ``fused_ema_(targets, sources, momentum)``: the EMA over all parameters in one launch.
* ``fused_adamw_ema_(params, grads, exp_avgs, exp_avg_sqs, ema_params, *, lr, weight_decay, step, ...)``.
* ``kernel_backend(where=None)``: ``"triton"`` or ``"torch"``.

The Triton paths are ``torch.library`` custom ops in the ``vjepa_fast::`` namespace, so
``torch.compile(fullgraph=True)`` traces through them. References: ``vjepa_fast.kernels.reference``.
"""
from . import reference
from .dispatch import HAS_TRITON, INTERPRET, kernel_backend
from .ema import FlatParams, fused_adamw_ema_, fused_ema_
from .masked_gather import masked_gather
from .masked_l1_loss import masked_l1_loss
from .predictor_input import assemble_predictor_input
from .rope import rope_rotate_qk
from .sorted_predictor_input import assemble_sorted_predictor_input

__all__ = [
    "FlatParams",
    "HAS_TRITON",
    "INTERPRET",
    "assemble_predictor_input",
    "assemble_sorted_predictor_input",
    "fused_adamw_ema_",
    "fused_ema_",
    "kernel_backend",
    "masked_gather",
    "masked_l1_loss",
    "reference",
    "rope_rotate_qk",
]
