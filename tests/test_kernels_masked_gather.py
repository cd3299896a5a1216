"""masked_gather: Triton kernel vs the PyTorch reference, forward and backward, bit-exact."""
import dataclasses

import pytest
import torch

from vjepa_fast.kernels import masked_gather, reference
from vjepa_fast.kernels.masked_gather import plan_masked_gather, plan_masked_scatter
from vjepa_fast.kernels.plan import DeviceSpec
from vjepa_fast.kernels.testing import kernel_test_device, unique_indices

DEVICE = kernel_test_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs CUDA or TRITON_INTERPRET=1")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _triton(monkeypatch):
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "triton")


def _check(x, idx, pos):
    x = x.detach().requires_grad_(True)
    out = masked_gather(x, idx, pos)
    expected = reference.masked_gather(x, idx, pos)
    assert out.dtype == expected.dtype == x.dtype and out.shape == expected.shape
    assert torch.equal(out, expected)
    grad = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, grad)
    (gx_ref,) = torch.autograd.grad(expected, x, grad)
    assert gx.dtype == x.dtype
    assert torch.equal(gx, gx_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B, N, D, K",
    [(1, 1, 1, 1), (3, 17, 7, 5), (2, 50, 190, 1), (3, 40, 190, 40), (1, 9, 33, 8)],
)
@pytest.mark.parametrize("with_pos", [False, True])
def test_masked_gather_odd_sizes(B, N, D, K, dtype, with_pos):
    x = torch.randn(B, N, D, device=DEVICE, dtype=dtype)
    idx = unique_indices(B, N, K, DEVICE, sort=False)
    pos = torch.randn(N, D, device=DEVICE, dtype=dtype) if with_pos else None
    _check(x, idx, pos)


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("pos_shape", ["N,D", "1,N,D"])
def test_masked_gather_index_dtypes_and_pos_layouts(idx_dtype, pos_shape):
    B, N, D, K = 3, 31, 24, 9
    x = torch.randn(B, N, D, device=DEVICE)
    idx = unique_indices(B, N, K, DEVICE, dtype=idx_dtype)
    pos = torch.randn(N, D, device=DEVICE)
    _check(x, idx, pos if pos_shape == "N,D" else pos.unsqueeze(0))


def test_masked_gather_mixed_precision_keeps_token_dtype():
    """bf16 tokens + fp32 pos table (official autocast): the sum is rounded once to bf16 (x += pos)."""
    B, N, D, K = 2, 40, 48, 13
    x = torch.randn(B, N, D, device=DEVICE, dtype=torch.bfloat16)
    idx = unique_indices(B, N, K, DEVICE)
    pos = torch.randn(1, N, D, device=DEVICE)
    _check(x, idx, pos)
    official = x.float().add(pos).to(torch.bfloat16)  # x += pos_embed on the full clip, then gather
    official = torch.gather(official, 1, idx.unsqueeze(-1).expand(-1, -1, D))
    assert torch.equal(masked_gather(x, idx, pos), official)


def test_masked_gather_strided_inputs():
    B, N, D, K = 3, 20, 16, 7
    x = torch.randn(B, D, N, device=DEVICE).transpose(1, 2)  # non-contiguous [B,N,D]
    idx = unique_indices(B, N, 2 * K, DEVICE)[:, ::2]  # non-contiguous [B,K]
    pos = torch.randn(D, N, device=DEVICE).t()
    _check(x, idx, pos)


def test_masked_gather_pos_gets_no_grad():
    B, N, D, K = 2, 12, 8, 5
    x = torch.randn(B, N, D, device=DEVICE, requires_grad=True)
    pos = torch.randn(N, D, device=DEVICE, requires_grad=True)
    out = masked_gather(x, unique_indices(B, N, K, DEVICE), pos)
    out.sum().backward()
    assert pos.grad is None and x.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D, K", [(1024, 364), (1280, 103)])
def test_masked_gather_vjepa_shapes(D, K, dtype):
    """ViT-L / ViT-H context gathers from N = 1568 tokens (official mean mask lengths)."""
    B, N = 2, 1568
    x = torch.randn(B, N, D, device=DEVICE, dtype=dtype)
    pos = torch.randn(1, N, D, device=DEVICE, dtype=torch.float32)
    _check(x, unique_indices(B, N, K, DEVICE), pos)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("K", [364, 103])
def test_masked_gather_patch_embed_layout_at_vjepa_shapes(K, dtype):
    """The patch embedding's own output, ``conv(x).flatten(2).transpose(1, 2)``: strides (N*D, 1, N)
    (read token-major); its gradient comes back in the same layout."""
    B, N, D = 2, 1568, 1024
    x = torch.randn(B, D, N, device=DEVICE, dtype=dtype).transpose(1, 2)
    assert x.stride() == (N * D, 1, N)
    pos = torch.randn(1, N, D, device=DEVICE, dtype=torch.float32)
    _check(x, unique_indices(B, N, K, DEVICE), pos)
    x.requires_grad_(True)
    (gx,) = torch.autograd.grad(masked_gather(x, unique_indices(B, N, K, DEVICE), pos).sum(), x)
    assert gx.stride() == x.stride()


def _gpu_plan_check(x, idx, pos, programs, index_64=False):
    """The tiling a GPU gets (small tiles, column blocks, token-major for strided x), launched on
    ``x``'s device with ``programs`` persistent programs that each loop over several tiles;
    ``index_64`` forces the int64 offset arithmetic that only tensors past 2**31 elements select."""

    def run(plan):
        constexprs = {**plan.constexprs, "INDEX_64": True} if index_64 else plan.constexprs
        dataclasses.replace(plan, grid=(programs,), constexprs=constexprs).launch()

    B, N, D = x.shape
    device = DeviceSpec(sm_count=132, interpret=False)
    out = torch.empty(B, idx.shape[1], D, device=DEVICE, dtype=x.dtype)
    plan = plan_masked_gather(x, idx, pos, out, device)
    assert plan.args[6] > programs  # more tiles than programs: the persistent loop runs
    run(plan)
    assert torch.equal(out, reference.masked_gather(x, idx, pos))
    grad = torch.randn_like(out)
    grad_x = torch.zeros_like(x)
    assert grad_x.stride() == x.stride()
    run(plan_masked_scatter(grad, idx, grad_x, device))
    expected = torch.zeros_like(x)
    expected[torch.arange(B, device=DEVICE)[:, None], idx.long()] = grad
    assert torch.equal(grad_x, expected)


@pytest.mark.parametrize(
    "layout, D, dtype, index_64",
    [("contiguous", 1280, torch.bfloat16, False), ("contiguous", 1408, torch.float32, False),
     ("contiguous", 190, torch.bfloat16, True), ("strided", 96, torch.bfloat16, False),
     ("strided", 190, torch.float32, True)],
)  # fmt: skip
def test_masked_gather_gpu_tiling(layout, D, dtype, index_64):
    """GPU tile shapes (column blocks dividing D = 1280 / 1408, a masked column tail for D = 190,
    32-token tiles for the strided layout) and persistent programs, checked in the interpreter."""
    B, N, K = 2, 40, 9
    if layout == "strided":
        x = torch.randn(B, D, N, device=DEVICE, dtype=dtype).transpose(1, 2)
    else:
        x = torch.randn(B, N, D, device=DEVICE, dtype=dtype)
    pos = torch.randn(N, D, device=DEVICE, dtype=torch.float32)
    _gpu_plan_check(x, unique_indices(B, N, K, DEVICE, sort=False), pos, programs=2, index_64=index_64)
