"""assemble_predictor_input: Triton kernel vs the PyTorch reference (and the official formula)."""
import dataclasses

import pytest
import torch

from vjepa_fast.kernels import assemble_predictor_input, reference
from vjepa_fast.kernels.plan import DeviceSpec
from vjepa_fast.kernels.predictor_input import plan_assemble_predictor_input, plan_assemble_predictor_input_bwd
from vjepa_fast.kernels.testing import assert_within_torch_error, kernel_test_device

DEVICE = kernel_test_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs CUDA or TRITON_INTERPRET=1")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _triton(monkeypatch):
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "triton")


def _inputs(
    B, Kc, Kt, N, D, dtype, mask_dtype=None, pos_dtype=None, idx_dtype=torch.int64, token_shape="1,1,D"
):
    ctx = torch.randn(B, Kc, D, device=DEVICE, dtype=dtype, requires_grad=True)
    perm = torch.stack([torch.randperm(N, device=DEVICE)[: Kc + Kt] for _ in range(B)])
    ctx_idx, tgt_idx = perm[:, :Kc].to(idx_dtype), perm[:, Kc:].to(idx_dtype)
    pos = torch.randn(1, N, D, device=DEVICE, dtype=pos_dtype or dtype)
    shape = (1, 1, D) if token_shape == "1,1,D" else (D,)
    token = torch.randn(shape, device=DEVICE, dtype=mask_dtype or dtype, requires_grad=True)
    return ctx, ctx_idx, tgt_idx, pos, token


def _check(ctx, ctx_idx, tgt_idx, pos, token):
    out = assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, token)
    expected = reference.assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, token)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    assert torch.equal(out, expected)

    grad = torch.randn_like(out)
    g_ctx, g_tok = torch.autograd.grad(out, (ctx, token), grad)
    r_ctx, r_tok = torch.autograd.grad(expected, (ctx, token), grad)
    assert g_ctx.dtype == ctx.dtype and g_tok.dtype == token.dtype and g_tok.shape == token.shape
    assert torch.equal(g_ctx, r_ctx)  # a copy of the first Kc rows
    # the mask-token gradient is a sum over B*Kt rows (reduction order differs from torch.sum):
    # compare with the float64 sum, to a fp32 summation bound, and by the torch-error rule
    rows = grad[:, ctx.shape[1] :].double()
    exact = rows.sum(dim=(0, 1)).reshape(token.shape)
    if token.dtype == torch.float32:
        bound = 1e-6 * rows.abs().sum(dim=(0, 1)).reshape(token.shape) + 1e-6
        assert ((g_tok.double() - exact).abs() <= bound).all()
    else:
        assert_within_torch_error(g_tok, exact, r_tok, name="grad mask_token")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B, Kc, Kt, N, D",
    [(1, 1, 1, 2, 1), (3, 5, 9, 20, 7), (1, 1, 40, 64, 190), (3, 17, 1, 30, 190), (2, 0, 6, 8, 5)],
)
def test_assemble_odd_sizes(B, Kc, Kt, N, D, dtype):
    _check(*_inputs(B, Kc, Kt, N, D, dtype))


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("token_shape", ["1,1,D", "D"])
def test_assemble_index_dtypes_and_token_shapes(idx_dtype, token_shape):
    _check(*_inputs(2, 6, 11, 40, 24, torch.float32, idx_dtype=idx_dtype, token_shape=token_shape))


def test_assemble_matches_official_predictor_code_under_autocast_dtypes():
    """bf16 ctx (predictor_embed under autocast), fp32 pos table and mask token, as in jepa predictor.py."""
    B, Kc, Kt, N, D = 2, 9, 14, 48, 32
    ctx, ctx_idx, tgt_idx, pos, token = _inputs(
        B, Kc, Kt, N, D, torch.bfloat16, mask_dtype=torch.float32, pos_dtype=torch.float32
    )
    _check(ctx, ctx_idx, tgt_idx, pos, token)
    with torch.no_grad():
        x = ctx.clone()
        x += torch.gather(pos.repeat(B, 1, 1), 1, ctx_idx.unsqueeze(-1).repeat(1, 1, D))
        tok = torch.gather(token.repeat(B, N, 1), 1, tgt_idx.unsqueeze(-1).repeat(1, 1, D))
        tok += torch.gather(pos.repeat(B, 1, 1), 1, tgt_idx.unsqueeze(-1).repeat(1, 1, D))
        official = torch.cat([x, tok], dim=1)
        assert torch.equal(assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, token), official)


def test_assemble_strided_ctx_and_no_pos_grad():
    B, Kc, Kt, N, D = 2, 5, 7, 30, 16
    ctx_full = torch.randn(B, 2 * Kc, D, device=DEVICE, requires_grad=True)
    ctx = ctx_full[:, ::2]
    _, ctx_idx, tgt_idx, pos, token = _inputs(B, Kc, Kt, N, D, torch.float32)
    pos.requires_grad_(True)
    out = assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, token)
    assert torch.equal(out, reference.assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, token))
    out.sum().backward()
    assert pos.grad is None
    assert torch.equal(ctx_full.grad[:, ::2], torch.ones(B, Kc, D, device=DEVICE))
    assert torch.equal(ctx_full.grad[:, 1::2], torch.zeros(B, Kc, D, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("Kc, Kt", [(364, 746), (103, 1101)])
def test_assemble_vjepa_shapes(Kc, Kt, dtype):
    """Predictor width 384, N = 1568, official short-range / long-range mean mask lengths."""
    _check(*_inputs(2, Kc, Kt, 1568, 384, dtype, mask_dtype=torch.float32, pos_dtype=torch.float32))


@pytest.mark.parametrize("D, dtype, index_64", [(384, torch.bfloat16, False), (384, torch.float32, False),
                                                (190, torch.bfloat16, True)])  # fmt: skip
def test_assemble_gpu_tiling(D, dtype, index_64):
    """The tiling a GPU gets (small tiles, column blocks of 128 for D = 384, a masked column tail for
    D = 190) with two persistent programs that each loop over several tiles, in the interpreter;
    ``index_64`` forces the int64 offsets that only tensors past 2**31 elements select."""

    def with_int64(plan):
        return dataclasses.replace(plan, constexprs={**plan.constexprs, "INDEX_64": index_64})

    B, Kc, Kt, N = 2, 5, 9, 40
    ctx, ctx_idx, tgt_idx, pos, token = _inputs(B, Kc, Kt, N, D, dtype, mask_dtype=torch.float32,
                                                pos_dtype=torch.float32)  # fmt: skip
    ctx, pos2, token1 = ctx.detach(), pos[0], token.detach().reshape(D)
    device = DeviceSpec(sm_count=132, interpret=False)
    out = torch.empty(B, Kc + Kt, D, device=DEVICE, dtype=torch.float32)
    plan = plan_assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos2, token1, out, device)
    assert plan.args[9] > 2  # tiles > programs: the persistent loop runs
    dataclasses.replace(with_int64(plan), grid=(2,)).launch()
    assert torch.equal(out, reference.assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, token))

    grad = torch.randn_like(out)
    grad_ctx = torch.empty_like(ctx)
    partial = torch.empty(2, D, device=DEVICE, dtype=torch.float32)
    plan = plan_assemble_predictor_input_bwd(grad, grad_ctx, partial, device)
    assert plan.grid[0] == 2 and plan.args[6] > 2
    with_int64(plan).launch()
    assert torch.equal(grad_ctx, grad[:, :Kc].to(dtype))
    rows = grad[:, Kc:].double()
    bound = 1e-6 * rows.abs().sum(dim=(0, 1)) + 1e-6
    assert ((partial.double().sum(0) - rows.sum(dim=(0, 1))).abs() <= bound).all()
