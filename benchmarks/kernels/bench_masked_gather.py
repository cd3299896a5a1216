"""Benchmark masked_gather (gather + pos add) against plain and official PyTorch.

    python benchmarks/kernels/bench_masked_gather.py [--dtype bfloat16] [--models vit_l vit_h]
        [--layouts contiguous strided]

Official: ``x += pos_embed`` over all N tokens, then ``torch.gather(x, 1, m.unsqueeze(-1).repeat(1,1,D))``.
GB/s is the fused op's minimal traffic over the time, for every implementation (compare times).
Layouts of x: ``contiguous`` [B,N,D] tokens, and ``strided``: the patch embedding's own output (the
transposed Conv3d result, strides (N*D, 1, N)), which the encoder gathers from.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import common as C  # noqa: E402


def official(x, idx, pos):
    x = x + pos
    return torch.gather(x, 1, idx.long().unsqueeze(-1).repeat(1, 1, x.shape[-1]))


def main(argv=None) -> None:
    layouts = ("contiguous", "strided")
    args = C.bench_args("bench_masked_gather", __doc__, argv, extra=[
        ("--layouts", dict(nargs="+", default=list(layouts), choices=layouts))])  # fmt: skip
    from vjepa_fast.kernels import masked_gather, reference

    dtype = getattr(torch, args.dtype)
    es = C.element_size(dtype)
    B, N = C.BATCH, C.N_TOKENS
    rec = C.Recorder("masked_gather")
    for model in args.models:
        D = C.MODELS[model]["dim"]
        pos = torch.randn(1, N, D, device="cuda", dtype=dtype)
        for mask, (K, _) in C.MASKS.items():
            rows = B * K * D * es
            fwd_bytes = 3 * rows + B * K * 4  # x rows + pos rows in, out; int32 index
            bwd_bytes = B * N * D * es + 2 * rows + B * K * 4  # zero-fill dx, grad in, rows out

            for layout in args.layouts:

                def make(K=K, D=D, layout=layout):
                    if layout == "strided":
                        x = torch.randn(B, D, N, device="cuda", dtype=dtype).transpose(1, 2).requires_grad_(True)
                    else:
                        x = torch.randn(B, N, D, device="cuda", dtype=dtype, requires_grad=True)
                    return x, C.unique_indices(B, N, K), pos

                for impl, fn in (("triton", masked_gather), ("torch_reference", reference.masked_gather),
                                 ("torch_official", official)):  # fmt: skip
                    C.bench_autograd(rec, impl, fn, make, B * N * D * es, model,
                                     f"B{B} N{N} K{K} D{D} {layout} ({mask})", dtype, fwd_bytes, bwd_bytes)  # fmt: skip
            torch.cuda.empty_cache()
    if not args.no_save:
        rec.save()


if __name__ == "__main__":
    main()
