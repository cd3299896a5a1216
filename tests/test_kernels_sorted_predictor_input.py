"""assemble_sorted_predictor_input: Triton kernel vs the PyTorch reference (cat + gather, the V2
predictor's own ops) and the official V2 formula.

The output and the context gradient only move data: they must be bit-identical to autograd through
cat + gather. The mask-token gradient is a sum over B * Kt rows whose order differs from torch's, so
it is compared with the float64 sum (within an fp32 summation bound; low-precision tokens by the
torch-error rule), and bit for bit with torch's where every partial sum is exact in fp32.
"""
import dataclasses

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from vjepa_fast.kernels import assemble_sorted_predictor_input, reference
from vjepa_fast.kernels.plan import DeviceSpec
from vjepa_fast.kernels.sorted_predictor_input import (
    plan_sorted_predictor_input,
    plan_sorted_predictor_input_bwd,
    sorted_predictor_input_backward_op,
    sorted_predictor_input_op,
)
from vjepa_fast.kernels.testing import assert_within_torch_error, kernel_test_device
from vjepa_fast.predictor import VisionTransformerPredictor

DEVICE = kernel_test_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs CUDA or TRITON_INTERPRET=1")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Batch at the real V2 shapes: 24 on a GPU; 2 in the interpreter (each tile costs Python time).
REAL_B = 24 if DEVICE is not None and DEVICE.type == "cuda" else 2


@pytest.fixture
def triton_kernels(monkeypatch):
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "triton")


def _ids(B, Kc, Kt, N, idx_dtype=torch.int64):
    """Per row Kc + Kt distinct token ids of N, context and targets each sorted (as the collator
    gives them), and the argsort of [context, targets]."""
    rows = [torch.randperm(N, device=DEVICE)[: Kc + Kt] for _ in range(B)]
    ctx_idx = torch.stack([r[:Kc].sort().values for r in rows])
    tgt_idx = torch.stack([r[Kc:].sort().values for r in rows])
    order = torch.argsort(torch.cat([ctx_idx, tgt_idx], dim=1), dim=1).to(idx_dtype)
    return ctx_idx, tgt_idx, order


def _inputs(B, Kc, Kt, N, D, dtype, mask_dtype=None, token_shape=(1, 1, -1)):
    z = torch.randn(B, Kc, D, device=DEVICE, dtype=dtype, requires_grad=True)
    token = torch.randn(D, device=DEVICE, dtype=mask_dtype or dtype).reshape(token_shape).requires_grad_(True)
    return z, _ids(B, Kc, Kt, N)[2], token


def _cat_then_index(z, order, token):
    """The oracle, written here rather than taken from the package (with VJEPA_FAST_KERNELS=torch the
    API runs ``reference``): the official V2 cat of the context and the repeated mask token, then
    each row's tokens picked in sorted order by advanced indexing."""
    B, Kc, D = z.shape
    x = torch.cat([z, token.reshape(1, 1, D).expand(B, order.shape[1] - Kc, D)], dim=1)
    return x[torch.arange(B, device=z.device).unsqueeze(1), order.long()]


def _check(z, order, token, inverse=None):
    out = assemble_sorted_predictor_input(z, order, token, inverse)
    expected = _cat_then_index(z, order, token)
    assert out.dtype == expected.dtype == torch.promote_types(z.dtype, token.dtype)
    assert out.shape == expected.shape
    assert torch.equal(out, expected)

    grad = torch.randn_like(out)
    g_z, g_tok = torch.autograd.grad(out, (z, token), grad)
    r_z, r_tok = torch.autograd.grad(expected, (z, token), grad)
    assert g_z.dtype == z.dtype and g_tok.dtype == token.dtype and g_tok.shape == token.shape
    assert torch.equal(g_z, r_z)
    # The mask token's rows of the gradient, summed exactly (float64).
    is_token = (order >= z.shape[1]).unsqueeze(-1)
    rows = torch.where(is_token, grad.double(), 0.0)
    exact = rows.sum(dim=(0, 1)).reshape(token.shape)
    if token.dtype == torch.float32 and grad.dtype == torch.float32:
        # |fp32 sum in any order - exact| <= (n - 1) * 2**-24 * sum|x|, n <= B * L rows
        n = grad.shape[0] * grad.shape[1]
        bound = n * 2.0**-24 * rows.abs().sum(dim=(0, 1)).reshape(token.shape) + 1e-30
        assert ((g_tok.double() - exact).abs() <= bound).all()
    else:
        assert_within_torch_error(g_tok, exact, r_tok, name="grad mask_token")
    return out


def _uses_kernel(out) -> bool:
    return type(out.grad_fn).__name__.startswith("_SortedPredictorInput")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B, Kc, Kt, N, D",
    [(1, 1, 1, 2, 1), (3, 5, 9, 20, 7), (1, 1, 40, 64, 190), (3, 17, 1, 30, 190), (2, 0, 6, 8, 5), (2, 6, 0, 8, 5)],
)
def test_odd_sizes(B, Kc, Kt, N, D, dtype, kernel_setting):
    out = _check(*_inputs(B, Kc, Kt, N, D, dtype))
    assert _uses_kernel(out) == (kernel_setting == "triton")


@pytest.mark.parametrize("z_dtype, mask_dtype", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                                 (torch.float32, torch.bfloat16), (torch.float16, torch.bfloat16)])
def test_mixed_dtypes_promote_like_cat(z_dtype, mask_dtype, kernel_setting):
    """bf16 z with the fp32 mask token is the autocast case (fp32 output, bf16 z gradient)."""
    _check(*_inputs(3, 7, 12, 40, 24, z_dtype, mask_dtype=mask_dtype))


@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("token_shape", [(1, 1, -1), (-1,)])
def test_index_dtypes_token_shapes_and_given_inverse(idx_dtype, token_shape, triton_kernels):
    z, order, token = _inputs(2, 6, 11, 40, 24, torch.float32, token_shape=token_shape)
    order = order.to(idx_dtype)
    _check(z, order, token)
    _check(z, order, token, torch.argsort(order, dim=1).to(idx_dtype))


def test_matches_the_official_v2_formula(triton_kernels):
    """vjepa2 predictor.py with RoPE: mask token repeated over N, apply_masks, cat, argsort, per-row stack."""
    B, Kc, Kt, N, D = 3, 9, 14, 48, 32
    ctx_idx, tgt_idx, order = _ids(B, Kc, Kt, N)
    z = torch.randn(B, Kc, D, device=DEVICE, dtype=torch.bfloat16)
    token = torch.randn(1, 1, D, device=DEVICE)
    tok = torch.gather(token.repeat(B, N, 1), 1, tgt_idx.unsqueeze(-1).repeat(1, 1, D))
    x = torch.cat([z, tok], dim=1)
    argsort = torch.argsort(torch.cat([ctx_idx, tgt_idx], dim=1), dim=1)
    official = torch.stack([x[i, row, :] for i, row in enumerate(argsort)], dim=0)
    assert torch.equal(assemble_sorted_predictor_input(z, order, token), official)


@pytest.mark.parametrize("z_dtype", [torch.float32, torch.bfloat16])
def test_mask_token_gradient_bit_identical_when_sums_are_exact(z_dtype, triton_kernels):
    """Gradients that are small integers: every partial sum is exact in fp32, so any summation order
    gives torch's bits (and a wrong row set or a lost row would show)."""
    z, order, token = _inputs(3, 20, 45, 80, 40, z_dtype, mask_dtype=torch.float32)
    out = assemble_sorted_predictor_input(z, order, token)
    grad = torch.randint(-64, 65, out.shape, device=DEVICE).to(out.dtype)
    g_z, g_tok = torch.autograd.grad(out, (z, token), grad)
    r_z, r_tok = torch.autograd.grad(reference.assemble_sorted_predictor_input(z, order, token), (z, token), grad)
    assert torch.equal(g_z, r_z) and torch.equal(g_tok, r_tok)


@pytest.mark.parametrize("z_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("Kc, Kt", [(498, 970), (132, 1439)])
def test_v2_shapes(Kc, Kt, z_dtype, kernel_setting):
    """Predictor width 384, 16 x 256 px (N = 2048), the V2 collator's mean short- and long-range mask
    lengths; z in bf16 (autocast) or fp32, the fp32 mask token."""
    _check(*_inputs(REAL_B, Kc, Kt, 2048, 384, z_dtype, mask_dtype=torch.float32))


def test_strided_z_and_no_grad_for_the_token(triton_kernels):
    B, Kc, Kt, D = 2, 5, 7, 16
    z_full = torch.randn(B, 2 * Kc, D, device=DEVICE, requires_grad=True)
    z = z_full[:, ::2]
    _, order, _ = _inputs(B, Kc, Kt, 30, D, torch.float32)
    token = torch.randn(1, 1, D, device=DEVICE)
    out = assemble_sorted_predictor_input(z, order, token)
    assert torch.equal(out, reference.assemble_sorted_predictor_input(z, order, token))
    out.sum().backward()
    assert torch.equal(z_full.grad[:, ::2], torch.ones(B, Kc, D, device=DEVICE))
    assert torch.equal(z_full.grad[:, 1::2], torch.zeros(B, Kc, D, device=DEVICE))


@pytest.mark.parametrize("D, dtype, index_64", [(384, torch.bfloat16, False), (384, torch.float32, False),
                                                (190, torch.bfloat16, True)])  # fmt: skip
def test_gpu_tiling(D, dtype, index_64, triton_kernels):
    """The tiling a GPU gets (small tiles, column blocks of 128 for D = 384, a masked column tail for
    D = 190) with two persistent programs that each loop over several tiles, in the interpreter;
    ``index_64`` forces the int64 offsets that only tensors past 2**31 elements select."""

    def with_int64(plan):
        return dataclasses.replace(plan, constexprs={**plan.constexprs, "INDEX_64": index_64})

    B, Kc, Kt = 2, 5, 9
    z, order, token = _inputs(B, Kc, Kt, 40, D, dtype, mask_dtype=torch.float32)
    z, token1 = z.detach(), token.detach().reshape(D)
    device = DeviceSpec(sm_count=132, interpret=False)
    out = torch.empty(B, Kc + Kt, D, device=DEVICE, dtype=torch.float32)
    plan = plan_sorted_predictor_input(z, order, token1, out, device)
    assert plan.args[7] > 2  # tiles > programs: the persistent loop runs
    dataclasses.replace(with_int64(plan), grid=(2,)).launch()
    assert torch.equal(out, reference.assemble_sorted_predictor_input(z, order, token))

    grad = torch.randn_like(out)
    inverse = torch.argsort(order, dim=1)
    grad_z = torch.empty_like(z)
    partial = torch.empty(2, D, device=DEVICE, dtype=torch.float32)
    plan = plan_sorted_predictor_input_bwd(grad, inverse, grad_z, partial, device)
    assert plan.grid[0] == 2 and plan.args[7] > 2
    with_int64(plan).launch()
    assert torch.equal(grad_z, grad.gather(1, inverse[:, :Kc, None].expand(-1, -1, D)).to(dtype))
    rows = grad.gather(1, inverse[:, Kc:, None].expand(-1, -1, D)).double()
    bound = B * (Kc + Kt) * 2.0**-24 * rows.abs().sum(dim=(0, 1)) + 1e-30
    assert ((partial.double().sum(0) - rows.sum(dim=(0, 1))).abs() <= bound).all()


def test_errors_name_the_argument_and_shape(triton_kernels):
    z, order, token = _inputs(2, 4, 6, 20, 8, torch.float32)
    with pytest.raises(ValueError, match=r"order \(2, 3\)"):
        assemble_sorted_predictor_input(z, order[:, :3], token)
    with pytest.raises(ValueError, match=r"order \(1, 10\)"):
        assemble_sorted_predictor_input(z, order[:1], token)
    with pytest.raises(ValueError, match=r"inverse must have order's shape \(2, 10\), got \(2, 9\)"):
        assemble_sorted_predictor_input(z, order, token, order[:, :9])
    with pytest.raises(ValueError, match=r"mask_token must hold D = 8 values, got \(1, 1, 7\)"):
        assemble_sorted_predictor_input(z, order, token[..., :7])
    with pytest.raises(TypeError, match="order: indices must be int32 or int64"):
        assemble_sorted_predictor_input(z, order.float(), token)
    with pytest.raises(TypeError, match="z: unsupported dtype"):
        assemble_sorted_predictor_input(z.int(), order, token)


def test_torch_compile_traces_the_custom_op(triton_kernels):
    B, Kc, Kt, N, D = 2, 5, 7, 24, 16
    x = torch.randn(B, Kc, D, device=DEVICE, requires_grad=True)
    w = torch.randn(D, D, device=DEVICE, requires_grad=True)
    token = torch.randn(1, 1, D, device=DEVICE, requires_grad=True)
    _, _, order = _ids(B, Kc, Kt, N)

    def step(x, w, token):
        s = assemble_sorted_predictor_input(x @ w, order, token)
        return (torch.tanh(s) * s.mean(dim=1, keepdim=True)).sum()

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    loss = compiled(x, w, token)
    grads = torch.autograd.grad(loss, (x, w, token))
    assert counter.frame_count == 1
    assert "torch.ops.vjepa_fast.sorted_predictor_input.default" in "\n".join(g.code for g in counter.graphs)
    eager = step(x, w, token)
    eager_grads = torch.autograd.grad(eager, (x, w, token))
    assert torch.equal(loss, eager)
    for g, e in zip(grads, eager_grads):
        assert torch.equal(g, e)
    torch._dynamo.reset()


def test_opcheck_custom_ops(triton_kernels):
    B, Kc, Kt, N, D = 2, 3, 4, 12, 8
    _, _, order = _ids(B, Kc, Kt, N)
    z = torch.randn(B, Kc, D, device=DEVICE, requires_grad=True)
    token = torch.randn(1, 1, D, device=DEVICE, requires_grad=True)
    inverse = torch.argsort(order, dim=1)
    torch.library.opcheck(sorted_predictor_input_op, (z, order, inverse, token))
    grad = torch.randn(B, Kc + Kt, D, device=DEVICE)
    torch.library.opcheck(sorted_predictor_input_backward_op, (grad, inverse, Kc, torch.bfloat16, torch.float32))


@pytest.mark.parametrize("packed", [False, True])
def test_v2_predictor_kernel_vs_torch(packed, monkeypatch):
    """The V2 predictor (RoPE, no position table) with the kernel gives the cat + gather path's
    predictions and gradients bit for bit; its mask token's gradient to fp32 summation order."""
    torch.manual_seed(0)
    pred = VisionTransformerPredictor(img_size=64, patch_size=16, num_frames=4, tubelet_size=2, embed_dim=32,
                                      predictor_embed_dim=48, depth=1, num_heads=4, use_rope=True,
                                      zero_init_mask_tokens=False).to(DEVICE)  # fmt: skip
    N = pred.num_patches
    masks = [(_ids(2, 9, 14, N)[:2]), (_ids(2, 4, 20, N)[:2])]
    ctxs = [torch.randn(2, mc.shape[1], 32, device=DEVICE) for mc, _ in masks]

    def run(setting):
        monkeypatch.setenv("VJEPA_FAST_KERNELS", setting)
        pred.zero_grad()
        outs = pred.forward_masks(ctxs, [m[0] for m in masks], [m[1] for m in masks], packed=packed,
                                  mask_indices=[0, 0])  # fmt: skip
        sum(o.square().sum() for o in outs).backward()
        return outs, {n: p.grad.clone() for n, p in pred.named_parameters() if p.grad is not None}

    ref_outs, ref_grads = run("torch")
    outs, grads = run("triton")
    for o, r in zip(outs, ref_outs):
        assert torch.equal(o, r)
    assert grads.keys() == ref_grads.keys() and "mask_tokens.0" in grads
    for name, g in grads.items():
        if name == "mask_tokens.0":
            torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(g, ref_grads[name]), name
