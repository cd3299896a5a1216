"""FLOPs of one V-JEPA training step: an analytic formula (nanoGPT / PaLM-appendix-B style, written
out in code) and a measured count with ``torch.utils.flop_counter.FlopCounterMode``.

Analytic model (matmul and attention FLOPs only; ``shared/reference/engineering.md`` §2.0): one ViT
layer over ``n`` tokens of width ``d`` with MLP width ``m`` costs ``n·(8d² + 4dm)`` in its linear
layers and ``4n²d`` in attention (QKᵀ and AV). Backward costs twice the forward. Per clip:

* target encoder forward on all N tokens (no grad);
* context encoder forward + backward (3×) on the Kc kept tokens of each mask config, plus the
  patch embedding (forward + weight gradient only: the clip needs no gradient) of the full clip,
  once per mask config in the official structure and once per step in vjepa-fast;
* predictor forward + backward (3×) on Kc + Kt tokens per mask config, plus its input and output
  projections.

Layer norms, GELU, softmax, the loss, AdamW and the EMA are not counted (they are memory-bound).

    python benchmarks/flops.py --model vit_large --batch 24 --frames 16 --crop 224
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch


@dataclass
class StepFlops:
    target_fwd: float
    context_fwd_bwd: float
    predictor_fwd_bwd: float

    @property
    def total(self) -> float:
        return self.target_fwd + self.context_fwd_bwd + self.predictor_fwd_bwd

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def vit_layer_flops(n: int, d: int, mlp_hidden: int) -> float:
    """Forward FLOPs of one pre-norm ViT block over ``n`` tokens (linears + attention matmuls)."""
    return n * (8.0 * d * d + 4.0 * d * mlp_hidden) + 4.0 * n * n * d


def vjepa_step_flops(
    *,
    embed_dim: int,
    depth: int,
    mlp_hidden: int,
    pred_dim: int,
    pred_depth: int,
    pred_mlp_hidden: int,
    num_tokens: int,
    patch_volume: int,
    batch: int,
    mask_lengths: Sequence[tuple[int, int]],
    patch_embeds_per_step: int | None = None,
) -> StepFlops:
    """Analytic FLOPs of one training step (forward + backward) for a batch.

    ``mask_lengths`` is ``[(Kc, Kt), ...]`` per mask config; ``patch_volume`` is
    ``in_chans · tubelet · patch²``; ``patch_embeds_per_step`` is how many full-clip patch
    embeddings the context path computes (official: one per mask config; default).
    """
    N, D = num_tokens, embed_dim
    embed = 2.0 * N * patch_volume * D  # conv as a matmul over the full clip
    if patch_embeds_per_step is None:
        patch_embeds_per_step = len(mask_lengths)
    target = embed + depth * vit_layer_flops(N, D, mlp_hidden)
    context = 2.0 * embed * patch_embeds_per_step  # forward + weight gradient
    predictor = 0.0
    for kc, kt in mask_lengths:
        context += 3.0 * depth * vit_layer_flops(kc, D, mlp_hidden)
        pred = 2.0 * kc * D * pred_dim + pred_depth * vit_layer_flops(kc + kt, pred_dim, pred_mlp_hidden)
        pred += 2.0 * kt * pred_dim * D
        predictor += 3.0 * pred
    return StepFlops(batch * target, batch * context, batch * predictor)


def model_step_flops(
    model, batch: int, frames: int, crop: int, mask_lengths, patch_embeds_per_step: int | None = None
) -> StepFlops:
    """:func:`vjepa_step_flops` with the sizes read from a :class:`vjepa_fast.VJEPA`."""
    enc, pred = model.encoder, model.predictor
    conv = enc.patch_embed.proj
    patch_volume = conv.in_channels
    for k in conv.kernel_size:
        patch_volume *= k
    grid_t = frames // enc.tubelet_size if enc.is_video else 1
    n = grid_t * (crop // enc.patch_size) ** 2
    return vjepa_step_flops(
        embed_dim=enc.embed_dim, depth=len(enc.blocks), mlp_hidden=enc.blocks[0].mlp.fc1.out_features,
        pred_dim=pred.predictor_embed_dim, pred_depth=len(pred.predictor_blocks),
        pred_mlp_hidden=pred.predictor_blocks[0].mlp.fc1.out_features, num_tokens=n,
        patch_volume=patch_volume, batch=batch, mask_lengths=mask_lengths,
        patch_embeds_per_step=patch_embeds_per_step,
    )


def _cpu_attention_formulas() -> dict:
    """FlopCounterMode counts the CUDA SDPA kernels (flash, efficient, cuDNN; backward as 2.5x the
    forward, since it recomputes the scores) but not the CPU flash kernel: add it, same formulas."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd_op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd_op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd_op is None or bwd_op is None or fwd_op in fc.flop_registry:
        return {}

    def fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    def bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    return {fwd_op: fwd, bwd_op: bwd}


def count_flops(fn: Callable[[], object]) -> tuple[int | None, str | None]:
    """Run ``fn`` once under ``FlopCounterMode`` (forward and backward both happen inside ``fn``).
    Returns ``(flops, None)``, or ``(None, error)`` when counting failed."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
        with counter:
            fn()
        return int(counter.get_total_flops()), None
    except Exception as e:  # counting is a report, never a reason to abort a benchmark
        return None, f"{type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from vjepa_fast.vision_transformer import VIT_PRESETS

    p = argparse.ArgumentParser(
        description="Analytic V-JEPA step FLOPs (official mean mask lengths by default)")
    p.add_argument("--model", default="vit_large", choices=sorted(VIT_PRESETS))
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--tubelet", type=int, default=2)
    p.add_argument("--pred-dim", type=int, default=384)
    p.add_argument("--pred-depth", type=int, default=12)
    p.add_argument("--masks", default="364:746,103:1101",
                   help="Kc:Kt per mask config (default: official ViT-L/16 16x224 mean lengths)")
    args = p.parse_args(argv)
    preset = VIT_PRESETS[args.model]
    d = preset["embed_dim"]
    n = (args.frames // args.tubelet) * (args.crop // args.patch) ** 2
    masks = [tuple(int(v) for v in pair.split(":")) for pair in args.masks.split(",")]
    f = vjepa_step_flops(
        embed_dim=d, depth=preset["depth"], mlp_hidden=int(d * preset["mlp_ratio"]), pred_dim=args.pred_dim,
        pred_depth=args.pred_depth, pred_mlp_hidden=4 * args.pred_dim, num_tokens=n,
        patch_volume=3 * args.tubelet * args.patch**2, batch=args.batch, mask_lengths=masks,
    )
    print(json.dumps({"model": args.model, "batch": args.batch, "tokens": n, "mask_lengths": masks,
                      **{k: v / 1e12 for k, v in f.as_dict().items()}, "unit": "TFLOP"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
