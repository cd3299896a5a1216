"""The custom ops under torch.compile(fullgraph=True) and torch.library.opcheck."""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from vjepa_fast import kernels as K
from vjepa_fast.kernels.ema import fused_adamw_ema_op, fused_ema_op
from vjepa_fast.kernels.masked_gather import masked_gather_backward_op, masked_gather_op
from vjepa_fast.kernels.masked_l1_loss import masked_l1_loss_backward_op, masked_l1_loss_op
from vjepa_fast.kernels.predictor_input import (
    assemble_predictor_input_backward_op,
    assemble_predictor_input_op,
)
from vjepa_fast.kernels.testing import kernel_test_device, unique_indices

DEVICE = kernel_test_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs CUDA or TRITON_INTERPRET=1")


@pytest.fixture(autouse=True)
def _triton(monkeypatch):
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "triton")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compile(fn):
    counter = CompileCounterWithBackend("aot_eager")
    return torch.compile(fn, backend=counter, fullgraph=True), counter


def _graph_code(counter) -> str:
    assert counter.frame_count == 1, f"{counter.frame_count} graphs: a graph break or a recompile"
    return "\n".join(g.code for g in counter.graphs)


def test_compile_traces_gather_assemble_and_loss_with_grads():
    B, N, D, Kc, Kt = 2, 24, 16, 5, 7
    x = torch.randn(B, N, D, device=DEVICE, requires_grad=True)
    w = torch.randn(D, D, device=DEVICE, requires_grad=True)
    pos = torch.randn(1, N, D, device=DEVICE)
    token = torch.randn(1, 1, D, device=DEVICE, requires_grad=True)
    target = torch.randn(B, N, D, device=DEVICE)
    perm = torch.stack([torch.randperm(N, device=DEVICE)[: Kc + Kt] for _ in range(B)])
    ctx_idx, tgt_idx = perm[:, :Kc].int(), perm[:, Kc:]

    def step(x, w, token):
        ctx = K.masked_gather(x, ctx_idx, pos)
        z = K.assemble_predictor_input(ctx @ w, ctx_idx, tgt_idx, pos, token)
        z = torch.tanh(z) + z.mean(dim=1, keepdim=True)  # mixes context into the target rows
        return K.masked_l1_loss(z[:, Kc:], target, tgt_idx)

    compiled, counter = _compile(step)
    loss = compiled(x, w, token)
    grads = torch.autograd.grad(loss, (x, w, token))
    code = _graph_code(counter)
    for op in ("masked_gather", "assemble_predictor_input", "masked_l1_loss"):
        assert f"torch.ops.vjepa_fast.{op}.default" in code

    eager = step(x, w, token)
    eager_grads = torch.autograd.grad(eager, (x, w, token))
    torch.testing.assert_close(loss, eager)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)


def test_compile_traces_fused_ema_and_mutates():
    targets = [torch.randn(7, 3, device=DEVICE), torch.randn(190, device=DEVICE)]
    sources = [torch.randn_like(t) for t in targets]
    expected = [t.clone() for t in targets]
    m = torch.tensor(0.99, device=DEVICE)

    compiled, counter = _compile(lambda ts, ss, m: K.fused_ema_(ts, ss, m))
    compiled(targets, sources, m)
    assert "torch.ops.vjepa_fast.fused_ema_.default" in _graph_code(counter)
    K.fused_ema_(expected, sources, m)
    for t, e in zip(targets, expected):
        assert torch.equal(t, e)


def test_compile_traces_fused_adamw_ema_and_mutates():
    params = [torch.randn(7, 3, device=DEVICE), torch.randn(5, device=DEVICE)]
    grads = [torch.randn_like(p) for p in params]
    state = [[torch.zeros_like(p) for p in params] for _ in range(2)]
    ema = [p.clone() for p in params]
    expected = [[t.clone() for t in ts] for ts in (params, *state, ema)]
    hyper = dict(
        lr=torch.tensor(1e-3, device=DEVICE),
        weight_decay=torch.tensor([0.05, 0.0], device=DEVICE),
        step=torch.tensor(1.0, device=DEVICE),
        momentum=torch.tensor(0.99, device=DEVICE),
    )

    def step(p, g, m, v, t, hyper):
        K.fused_adamw_ema_(p, g, m, v, t, group_ids=[0, 1], **hyper)

    compiled, counter = _compile(step)
    compiled(params, grads, state[0], state[1], ema, hyper)
    assert "torch.ops.vjepa_fast.fused_adamw_ema_.default" in _graph_code(counter)
    step(expected[0], grads, expected[1], expected[2], expected[3], hyper)
    for got, want in zip((params, *state, ema), expected):
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def test_opcheck_custom_ops():
    """Schema, fake-tensor, autograd-registration and AOT-dispatch checks from torch.library."""
    B, N, D, Kc, Kt = 2, 12, 8, 3, 4
    idx = unique_indices(B, N, Kc, DEVICE)
    tgt = unique_indices(B, N, Kt, DEVICE)
    x = torch.randn(B, N, D, device=DEVICE, requires_grad=True)
    pos = torch.randn(N, D, device=DEVICE)
    ctx = torch.randn(B, Kc, D, device=DEVICE, requires_grad=True)
    token = torch.randn(1, 1, D, device=DEVICE, requires_grad=True)
    pred = torch.randn(B, Kt, D, device=DEVICE, requires_grad=True)
    torch.library.opcheck(masked_gather_op, (x, idx, pos))
    torch.library.opcheck(masked_gather_op, (x, idx, None))
    grad = torch.randn(B, Kc, D, device=DEVICE)
    torch.library.opcheck(masked_gather_backward_op, (grad, idx, N, torch.float32))
    torch.library.opcheck(assemble_predictor_input_op, (ctx, idx, tgt, pos, token))
    grad = torch.randn(B, Kc + Kt, D, device=DEVICE)
    torch.library.opcheck(assemble_predictor_input_backward_op, (grad, Kc, torch.bfloat16, torch.float32))
    torch.library.opcheck(masked_l1_loss_op, (pred, x.detach(), tgt, 1e-5))
    g = torch.tensor(2.0, device=DEVICE)
    torch.library.opcheck(masked_l1_loss_backward_op, (g, pred.detach(), x.detach(), tgt, 1e-5))
    ts, ss = [torch.randn(5, device=DEVICE)], [torch.randn(5, device=DEVICE)]
    torch.library.opcheck(fused_ema_op, (ts, ss, None, 0.9, 0.1))
    p = [torch.randn(5, device=DEVICE)]
    coeffs = torch.tensor([[1.0, 0.1, 0.999, 0.001, -1e-3, 0.03, 1e-8, 0.9, 0.1]], device=DEVICE)
    torch.library.opcheck(
        fused_adamw_ema_op,
        (p, [torch.randn(5, device=DEVICE)], [torch.zeros(5, device=DEVICE)], [torch.zeros(5, device=DEVICE)],
         [p[0].clone()], [0], coeffs, None),
    )  # fmt: skip
