"""Benchmark the EMA update and the fused AdamW + EMA step over a whole V-JEPA encoder.

    python benchmarks/kernels/bench_ema.py [--models vit_l vit_h] [--skip-adamw]

EMA (fp32 params, 3 accesses per element): official Python loop ``t.mul_(m).add_((1-m)*s)``,
``_foreach_mul_ + _foreach_add_`` (vjepa2), ``_foreach_lerp_``, ours over the parameter list, and
ours over FlatParams buffers. AdamW+EMA (9 accesses per element): ``torch.optim.AdamW(fused=True)``
followed by ``_foreach_lerp_``, against ``fused_adamw_ema_``. A whole encoder is far beyond L2, so
the inputs are not rotated.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import common as C  # noqa: E402


def main(argv=None) -> None:
    args = C.bench_args("bench_ema", __doc__, argv, dtype=False, extra=[("--skip-adamw", dict(action="store_true"))])
    from vjepa_fast.kernels import FlatParams, fused_adamw_ema_, fused_ema_
    from vjepa_fast.kernels.ema import plan_fused_adamw_ema, plan_fused_ema
    from vjepa_fast.kernels.plan import DeviceSpec

    device = DeviceSpec.of("cuda")

    def show(kind: str, plans) -> None:  # which launches ran: vector (ALIGNED) or scalar, chunking
        for p in plans:
            c = p.constexprs
            print(f"# {kind}: {p.n_programs} programs, CHUNK {c['CHUNK']}, BLOCK {c['BLOCK']}, "
                  f"ALIGNED {c['ALIGNED']}, {p.num_warps} warps")

    rec = C.Recorder("ema")
    m = 0.998
    m_t = torch.tensor(m, device="cuda")
    for model in args.models:
        shapes = C.encoder_param_shapes(model)
        src = [torch.randn(s, device="cuda") * 0.02 for s in shapes]
        tgt = [p.clone() for p in src]
        n = sum(p.numel() for p in src)
        shape = f"{len(shapes)} tensors, {n / 1e6:.1f}M"
        ema_bytes = 3 * 4 * n

        def official():
            with torch.no_grad():
                for t, s in zip(tgt, src):
                    t.mul_(m).add_((1 - m) * s)

        def foreach_mul_add():
            torch._foreach_mul_(tgt, m)
            torch._foreach_add_(tgt, src, alpha=1 - m)

        show(f"{model} EMA list", plan_fused_ema(tgt, src, device))
        impls = [
            ("torch_official_loop", official),
            ("torch_foreach_mul_add", foreach_mul_add),
            ("torch_foreach_lerp", lambda: torch._foreach_lerp_(tgt, src, 1 - m)),
            ("triton_list", lambda: fused_ema_(tgt, src, m)),
            ("triton_list_tensor_m", lambda: fused_ema_(tgt, src, m_t)),
        ]
        for impl, fn in impls:
            rec.add(impl, "update", model, shape, torch.float32, C.do_bench(fn, warmup=5, rep=100), ema_bytes)

        class _Holder(torch.nn.Module):
            def __init__(self, ts):
                super().__init__()
                self.ps = torch.nn.ParameterList([torch.nn.Parameter(t, requires_grad=False) for t in ts])

        flat_t, flat_s = FlatParams(_Holder(tgt)), FlatParams(_Holder(src))
        fn = lambda: fused_ema_(flat_t.buffers, flat_s.buffers, m)  # noqa: E731
        ms = C.do_bench(fn, warmup=5, rep=100)
        rec.add("triton_flat", "update", model, shape, torch.float32, ms, ema_bytes)
        del flat_t, flat_s, src, tgt
        torch.cuda.empty_cache()

        if args.skip_adamw:
            continue
        params = [torch.nn.Parameter(torch.randn(s, device="cuda") * 0.02) for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        ema = [p.detach().clone() for p in params]
        decay = [p for p in params if p.dim() > 1]
        no_decay = [p for p in params if p.dim() <= 1]
        groups = [{"params": decay, "weight_decay": 0.04}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=6.25e-4, fused=True)

        def torch_fused_then_lerp():
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - m)

        ps = [p.detach() for p in params]
        gs = [p.grad for p in params]
        ms = [torch.zeros_like(p) for p in ps]
        vs = [torch.zeros_like(p) for p in ps]
        gid = [0 if p.dim() > 1 else 1 for p in ps]
        step = torch.ones((), device="cuda")
        lr, wd = torch.tensor(6.25e-4, device="cuda"), torch.tensor([0.04, 0.0], device="cuda")

        def ours():
            fused_adamw_ema_(ps, gs, ms, vs, ema, lr=lr, weight_decay=wd, step=step, momentum=m_t,
                             group_ids=gid)  # fmt: skip

        show(f"{model} AdamW+EMA", plan_fused_adamw_ema(ps, gs, ms, vs, ema, gid, device))
        adam_bytes = 9 * 4 * n
        for impl, fn in (("torch_adamw_fused+lerp", torch_fused_then_lerp), ("triton_adamw_ema", ours)):
            rec.add(impl, "step", model, shape, torch.float32, C.do_bench(fn, warmup=5, rep=50), adam_bytes)
        del params, opt, ema, ps, gs, ms, vs
        torch.cuda.empty_cache()
    if not args.no_save:
        rec.save()


if __name__ == "__main__":
    main()
