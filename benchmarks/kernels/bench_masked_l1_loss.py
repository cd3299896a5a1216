"""Benchmark masked_l1_loss against plain and official PyTorch.

    python benchmarks/kernels/bench_masked_l1_loss.py [--dtype bfloat16] [--models vit_l vit_h]

Official: ``h = F.layer_norm(target, (D,))`` on all N tokens, ``apply_masks`` (gather with a repeated
int64 index), ``mean(|z - h|)``. Traffic counted for the fused op: pred + gathered target rows (+ grad).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common as C  # noqa: E402


def official(pred, target, idx):
    h = F.layer_norm(target.float(), (target.shape[-1],))
    h = torch.gather(h, 1, idx.long().unsqueeze(-1).repeat(1, 1, h.shape[-1]))
    return torch.mean(torch.abs(pred.float() - h))


def main(argv=None) -> None:
    args = C.bench_args("bench_masked_l1_loss", __doc__, argv)
    from vjepa_fast.kernels import masked_l1_loss, reference

    dtype = getattr(torch, args.dtype)
    es = C.element_size(dtype)
    B, N = C.BATCH, C.N_TOKENS
    rec = C.Recorder("masked_l1_loss")
    for model in args.models:
        D = C.MODELS[model]["dim"]
        for mask, (_, K) in C.MASKS.items():
            rows = B * K * D * es
            fwd_bytes = 2 * rows + B * K * 4
            bwd_bytes = 3 * rows + B * K * 4  # recompute: pred + target rows in, grad out

            def make(K=K, D=D):
                pred = torch.randn(B, K, D, device="cuda", dtype=dtype, requires_grad=True)
                target = torch.randn(B, N, D, device="cuda", dtype=dtype)
                return pred, target, C.unique_indices(B, N, K)

            for impl, fn in (("triton", masked_l1_loss), ("torch_reference", reference.masked_l1_loss),
                             ("torch_official", official)):  # fmt: skip
                C.bench_autograd(rec, impl, fn, make, B * N * D * es, model, f"B{B} N{N} K{K} D{D} ({mask})",
                                 dtype, fwd_bytes, bwd_bytes)  # fmt: skip
            torch.cuda.empty_cache()
    if not args.no_save:
        rec.save()


if __name__ == "__main__":
    main()
