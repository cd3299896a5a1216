"""masked_l1_loss: Triton kernel vs the PyTorch reference and the official loss formula."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vjepa_fast.kernels import masked_l1_loss, reference
from vjepa_fast.kernels.masked_l1_loss import plan_masked_l1_loss, plan_masked_l1_loss_bwd
from vjepa_fast.kernels.plan import DeviceSpec
from vjepa_fast.kernels.testing import kernel_test_device, unique_indices

DEVICE = kernel_test_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs CUDA or TRITON_INTERPRET=1")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _triton(monkeypatch):
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "triton")


def _check(pred, target, idx, grad_scale=1.0):
    pred = pred.detach().requires_grad_(True)
    loss = masked_l1_loss(pred, target, idx)
    expected = reference.masked_l1_loss(pred, target, idx)
    assert loss.shape == () and loss.dtype == torch.float32 == expected.dtype

    # the loss is accumulated in fp32 for every input dtype: 1e-6 relative to the fp32 reference and
    # to the float64 computation
    exact = reference.masked_l1_loss(pred.double(), target.double(), idx)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(loss.double(), exact, rtol=1e-6, atol=0)

    (g,) = torch.autograd.grad(loss * grad_scale, pred)
    (g_ref,) = torch.autograd.grad(expected * grad_scale, pred)
    assert g.dtype == pred.dtype
    # sign(pred - t_hat) * grad / numel: identical except where pred - t_hat is within fp32 noise of 0
    t_hat = F.layer_norm(reference._rows(target, idx).double(), (target.shape[-1],), eps=1e-5)
    near_tie = (pred.double() - t_hat).abs() < 1e-5
    assert torch.equal(g[~near_tie], g_ref[~near_tie])
    return loss, g


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B, N, D, K", [(1, 1, 1, 1), (3, 17, 7, 5), (2, 40, 190, 1), (3, 30, 190, 30), (1, 64, 33, 9)]
)
def test_masked_l1_loss_odd_sizes(B, N, D, K, dtype):
    pred = torch.randn(B, K, D, device=DEVICE, dtype=dtype)
    target = 3 * torch.randn(B, N, D, device=DEVICE, dtype=dtype) + 0.5
    _check(pred, target, unique_indices(B, N, K, DEVICE, sort=False))


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
def test_masked_l1_loss_index_dtypes_grad_scale_and_strides(idx_dtype):
    B, N, D, K = 3, 25, 48, 8
    pred = torch.randn(B, D, K, device=DEVICE).transpose(1, 2)  # strided pred
    target = torch.randn(B, N, 2 * D, device=DEVICE)[..., ::2]  # strided target
    _check(pred, target, unique_indices(B, N, K, DEVICE, dtype=idx_dtype), grad_scale=3.5)


def test_masked_l1_loss_matches_official_formula_and_target_gets_no_grad():
    """Official: h = layer_norm(target) on all N; loss = mean(|z - apply_masks(h, m)|)."""
    B, N, D, K = 2, 40, 64, 17
    pred = torch.randn(B, K, D, device=DEVICE, requires_grad=True)
    target = torch.randn(B, N, D, device=DEVICE, requires_grad=True)
    idx = unique_indices(B, N, K, DEVICE)
    h = F.layer_norm(target.detach(), (D,))
    official = torch.mean(torch.abs(pred - torch.gather(h, 1, idx.unsqueeze(-1).repeat(1, 1, D))))
    loss = masked_l1_loss(pred, target, idx)
    torch.testing.assert_close(loss, official, rtol=1e-6, atol=0)
    loss.backward()
    assert target.grad is None and pred.grad is not None


def test_masked_l1_loss_sign_of_zero_is_zero():
    """|x|'s subgradient at 0 is 0 (torch.sgn): constant target rows normalise to exactly 0."""
    B, N, D, K = 2, 12, 10, 6
    target = torch.full((B, N, D), 2.5, device=DEVICE)
    pred = torch.randn(B, K, D, device=DEVICE)
    pred[:, :, ::2] = 0.0
    pred.requires_grad_(True)
    idx = unique_indices(B, N, K, DEVICE)
    masked_l1_loss(pred, target, idx).backward()
    assert (pred.grad[:, :, ::2] == 0).all()
    assert (pred.grad[:, :, 1::2].abs() == 1.0 / pred.numel()).all()
    (g_ref,) = torch.autograd.grad(reference.masked_l1_loss(pred, target, idx), pred)
    assert torch.equal(pred.grad, g_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D, K", [(1024, 746), (1280, 1101)])
def test_masked_l1_loss_vjepa_shapes(D, K, dtype):
    """ViT-L / ViT-H targets over N = 1568 tokens with the official mean target lengths."""
    B, N = 1, 1568
    pred = torch.randn(B, K, D, device=DEVICE, dtype=dtype)
    target = torch.randn(B, N, D, device=DEVICE, dtype=dtype)
    _check(pred, target, unique_indices(B, N, K, DEVICE))


@pytest.mark.parametrize(
    "D, pred_dtype, tgt_dtype, index_64",
    [(1280, torch.bfloat16, torch.float32, False), (1408, torch.bfloat16, torch.bfloat16, False),
     (300, torch.float32, torch.float32, True)],
)  # fmt: skip
def test_masked_l1_loss_gpu_tiling(D, pred_dtype, tgt_dtype, index_64):
    """The tiling a GPU gets: layer-norm statistics streamed over column blocks and merged (5 blocks
    of 256 bf16 columns for D = 1280, 11 of 128 for D = 1408, a 44-column tail for D = 300), two
    persistent programs that each loop over several row tiles; run in the interpreter. ``index_64``
    forces the int64 offsets that only tensors past 2**31 elements select."""

    def with_int64(plan):
        return dataclasses.replace(plan, constexprs={**plan.constexprs, "INDEX_64": index_64})

    B, N, K = 2, 30, 13
    idx = unique_indices(B, N, K, DEVICE, sort=False)
    target = (3 * torch.randn(B, N, D, device=DEVICE) + 0.5).to(tgt_dtype)
    target[0, idx[0, 0]] = 2.5  # a constant row normalises to exactly 0: sign(0) = 0 below
    pred = torch.randn(B, K, D, device=DEVICE, dtype=pred_dtype)
    pred[0, 0, ::2] = 0.0
    device = DeviceSpec(sm_count=132, interpret=False)
    partial = torch.empty(2, device=DEVICE, dtype=torch.float32)
    plan = plan_masked_l1_loss(pred, target, idx, partial, device)
    assert plan.grid == (2,) and plan.args[6] > 2  # row tiles > programs: the persistent loop runs
    with_int64(plan).launch()
    expected = reference.masked_l1_loss(pred, target, idx)
    torch.testing.assert_close(partial.sum() / pred.numel(), expected, rtol=1e-6, atol=0)

    grad_pred = torch.empty_like(pred)
    grad_out = torch.tensor([3.0], device=DEVICE)
    plan = plan_masked_l1_loss_bwd(grad_out, pred, target, idx, grad_pred, device)
    dataclasses.replace(with_int64(plan), grid=(2,)).launch()
    p = pred.detach().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(reference.masked_l1_loss(p, target, idx) * 3.0, p)
    t_hat = F.layer_norm(reference._rows(target, idx).double(), (D,), eps=1e-5)
    near_tie = (pred.double() - t_hat).abs() < 1e-5
    assert torch.equal(grad_pred[~near_tie], g_ref[~near_tie])
    assert (grad_pred[0, 0, ::2] == 0).all() and (grad_pred[0, 0, 1::2] != 0).all()
