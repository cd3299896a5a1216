"""pytest-benchmark variants of the kernel benchmarks: small sizes, PyTorch reference path, any device.

    pytest benchmarks/kernels/test_bench_kernels.py --benchmark-enable

(``pyproject.toml`` passes ``--benchmark-disable``, so a plain run executes each body once as a
smoke test.) The GPU numbers come from the ``bench_*.py`` scripts.
"""
import math

import pytest
import torch

from vjepa_fast.kernels import (
    assemble_predictor_input,
    fused_adamw_ema_,
    fused_ema_,
    masked_gather,
    masked_l1_loss,
)

B, N, D, PRED_D = 2, 196, 64, 32  # a 4x7x7 token grid
KC, KT = 48, 96


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "torch")
    torch.manual_seed(0)


def _indices(k):
    return torch.rand(B, N).argsort(dim=1)[:, :k].sort(dim=1).values


def test_bench_masked_gather_fwd_bwd(benchmark):
    x = torch.randn(B, N, D, requires_grad=True)
    pos = torch.randn(1, N, D)
    idx = _indices(KC)

    def run():
        out = masked_gather(x, idx, pos)
        return torch.autograd.grad(out, x, torch.ones_like(out))

    (grad,) = benchmark(run)
    assert grad.shape == x.shape and grad.sum().item() == B * KC * D


def test_bench_assemble_predictor_input_fwd_bwd(benchmark):
    ctx = torch.randn(B, KC, PRED_D, requires_grad=True)
    token = torch.zeros(1, 1, PRED_D, requires_grad=True)
    pos = torch.randn(N, PRED_D)
    perm = torch.rand(B, N).argsort(dim=1)
    ctx_idx, tgt_idx = perm[:, :KC], perm[:, KC : KC + KT]

    def run():
        out = assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, token)
        return torch.autograd.grad(out, (ctx, token), torch.ones_like(out))

    _, g_token = benchmark(run)
    assert torch.equal(g_token, torch.full_like(token, B * KT))


def test_bench_masked_l1_loss_fwd_bwd(benchmark):
    pred = torch.randn(B, KT, D, requires_grad=True)
    target = torch.randn(B, N, D)
    idx = _indices(KT)

    def run():
        loss = masked_l1_loss(pred, target, idx)
        return loss, torch.autograd.grad(loss, pred)[0]

    loss, grad = benchmark(run)
    assert math.isfinite(loss.item()) and grad.shape == pred.shape


def test_bench_fused_ema(benchmark):
    shapes = [(3 * D, D), (3 * D,), (D, D), (D,), (4 * D, D), (4 * D,), (D, 4 * D), (D,)]
    targets = [torch.randn(s) for s in shapes]
    sources = [torch.randn(s) for s in shapes]
    benchmark(fused_ema_, targets, sources, 0.998)


def test_bench_fused_adamw_ema(benchmark):
    shapes = [(3 * D, D), (3 * D,), (D, D), (D,)]
    params = [torch.randn(s) for s in shapes]
    grads = [torch.randn(s) for s in shapes]
    m, v = [torch.zeros(s) for s in shapes], [torch.zeros(s) for s in shapes]
    ema = [p.clone() for p in params]
    groups = [0 if len(s) == 2 else 1 for s in shapes]
    benchmark(
        lambda: fused_adamw_ema_(params, grads, m, v, ema, lr=1e-3, weight_decay=[0.04, 0.0], step=1,
                                 momentum=0.998, group_ids=groups)  # fmt: skip
    )
