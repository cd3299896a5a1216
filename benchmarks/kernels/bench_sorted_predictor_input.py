"""Benchmark assemble_sorted_predictor_input (the V-JEPA 2 predictor's sorted input) against cat + gather.

    python benchmarks/kernels/bench_sorted_predictor_input.py [--dtype bfloat16]

``--dtype`` is the embedded context's (bf16: autocast, with the fp32 mask token and an fp32 output;
float32: all fp32). Shapes of a V2 step: 16 x 256 px (N = 2048 tokens), batch 24, predictor width
384, the V2 collator's mean short- and long-range mask lengths (498 / 970, 132 / 1439).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import common as C  # noqa: E402

N_TOKENS_V2 = 2048
MASKS_V2 = {"short": (498, 970), "long": (132, 1439)}


def main(argv=None) -> None:
    args = C.bench_args("bench_sorted_predictor_input", __doc__, argv, models=False)
    from vjepa_fast.kernels import assemble_sorted_predictor_input, reference

    dtype = getattr(torch, args.dtype)
    out_es = C.element_size(torch.promote_types(dtype, torch.float32))
    es = C.element_size(dtype)
    B, D = C.BATCH, C.PRED_DIM
    rec = C.Recorder("assemble_sorted_predictor_input")
    for mask, (Kc, Kt) in MASKS_V2.items():
        L = Kc + Kt
        fwd_bytes = B * Kc * D * es + B * L * D * out_es + B * L * 8  # z in, out, order
        bwd_bytes = B * L * D * out_es + B * Kc * D * es + B * L * 8  # grad in, grad_z out, inverse

        def make(Kc=Kc, L=L):
            ids = torch.rand(B, N_TOKENS_V2, device="cuda").argsort(dim=1)[:, :L]
            ids = torch.cat([ids[:, :Kc].sort(dim=1).values, ids[:, Kc:].sort(dim=1).values], dim=1)
            order = ids.argsort(dim=1)
            z = torch.randn(B, Kc, D, device="cuda", dtype=dtype, requires_grad=True)
            token = torch.zeros(1, 1, D, device="cuda", requires_grad=True)
            return z, order, order.argsort(dim=1), token

        impls = (
            ("triton", lambda z, order, inverse, token: assemble_sorted_predictor_input(z, order, token, inverse)),
            ("torch_cat_gather", lambda z, order, inverse, token: reference.assemble_sorted_predictor_input(
                z, order, token)),
        )  # fmt: skip
        for impl, fn in impls:
            C.bench_autograd(rec, impl, fn, make, B * L * D * out_es, "pred", f"B{B} Kc{Kc} Kt{Kt} D{D} ({mask})",
                             dtype, fwd_bytes, bwd_bytes)  # fmt: skip
    if not args.no_save:
        rec.save()


if __name__ == "__main__":
    main()
