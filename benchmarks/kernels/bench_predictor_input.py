"""Benchmark assemble_predictor_input against plain and official PyTorch.

    python benchmarks/kernels/bench_predictor_input.py [--dtype bfloat16]

Official (jepa predictor.py): ``x += gather(pos.repeat(B,1,1))``; mask token ``repeat(B, N, 1)`` then
gather; ``+= gather(pos.repeat(B,1,1))``; ``cat``. Predictor width 384 for ViT-L and ViT-H alike.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import common as C  # noqa: E402


def official(ctx, ctx_idx, tgt_idx, pos, token):
    B, N, D = ctx.shape[0], pos.shape[1], ctx.shape[2]
    x = ctx + torch.gather(pos.repeat(B, 1, 1), 1, ctx_idx.long().unsqueeze(-1).repeat(1, 1, D))
    tok = torch.gather(token.repeat(B, N, 1), 1, tgt_idx.long().unsqueeze(-1).repeat(1, 1, D))
    tok = tok + torch.gather(pos.repeat(B, 1, 1), 1, tgt_idx.long().unsqueeze(-1).repeat(1, 1, D))
    return torch.cat([x, tok.to(x.dtype)], dim=1)


def main(argv=None) -> None:
    args = C.bench_args("bench_predictor_input", __doc__, argv, models=False)
    from vjepa_fast.kernels import assemble_predictor_input, reference

    dtype = getattr(torch, args.dtype)
    es = C.element_size(dtype)
    B, N, D = C.BATCH, C.N_TOKENS, C.PRED_DIM
    rec = C.Recorder("assemble_predictor_input")
    pos = torch.randn(1, N, D, device="cuda", dtype=dtype)
    for mask, (Kc, Kt) in C.MASKS.items():
        L = Kc + Kt
        fwd_bytes = (B * Kc * D + 2 * B * L * D) * es + B * L * 4  # ctx in, pos rows in, out; indices
        bwd_bytes = (B * L * D + B * Kc * D) * es  # grad in, grad_ctx out (+ tiny partials)

        def make(Kc=Kc, Kt=Kt):
            perm = torch.rand(B, N, device="cuda").argsort(dim=1)
            ctx = torch.randn(B, Kc, D, device="cuda", dtype=dtype, requires_grad=True)
            token = torch.zeros(1, 1, D, device="cuda", dtype=dtype, requires_grad=True)
            return ctx, perm[:, :Kc].int(), perm[:, Kc : Kc + Kt].int(), pos, token

        impls = (
            ("triton", assemble_predictor_input),
            ("torch_reference", reference.assemble_predictor_input),
            ("torch_official", official),
        )
        for impl, fn in impls:
            C.bench_autograd(rec, impl, fn, make, B * L * D * es, "pred", f"B{B} Kc{Kc} Kt{Kt} D{D} ({mask})",
                             dtype, fwd_bytes, bwd_bytes)  # fmt: skip
    if not args.no_save:
        rec.save()


if __name__ == "__main__":
    main()
