"""rope_rotate_qk: the Triton kernel against the exact official rotation, forward and backward, bit-exact.

The oracle is :func:`vjepa_fast.rope.apply_rope` (the official ``rotate_queries_or_keys`` op for op,
proven against the official V2 fixture in test_official_v2_parity.py) on tables from
:func:`vjepa_fast.rope.rope_tables`, and autograd through it for the gradients. Shapes: the V2 heads
(ViT-L 16 x 64, ViT-H 16 x 80, ViT-g 16 x 88, the released ViT-g 22 x 64, the predictor 12 x 32)
over token ids of the 16 x 256 px grid (8 x 16 x 16), and odd sizes; dtypes: bf16 with the
official bf16 tables, bf16 with float32 angles, fp16, fp32.
"""
import pytest
import torch

from vjepa_fast import kernels
from vjepa_fast.kernels import rope_rotate_qk
from vjepa_fast.kernels.testing import kernel_test_device
from vjepa_fast.rope import apply_rope, rope_dim, rope_tables

DEVICE = kernel_test_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs CUDA or TRITON_INTERPRET=1")
V2_GRID = (8, 16, 16)  # 16 frames x 256 px, patch 16, tubelet 2
#: (q/k dtype, table dtype): the official bf16 angles, float32 angles under bf16, fp16, fp32.
DTYPES = [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float16, torch.float16),
          (torch.float32, torch.float32)]  # fmt: skip


@pytest.fixture(autouse=True)
def _triton(monkeypatch):
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "triton")


def _ids(b: int, length: int, grid=V2_GRID, per_sample: bool = True) -> torch.Tensor:
    n = grid[0] * grid[1] * grid[2]
    if not per_sample:
        return torch.arange(length, device=DEVICE)
    return torch.stack([torch.randperm(n, device=DEVICE)[:length].sort().values for _ in range(b)])


def _qk_views(b: int, length: int, heads: int, hd: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k as the attention module makes them: views of the [B, L, 3, H, hd] projection."""
    qkv = torch.randn(b, length, 3, heads, hd, device=DEVICE, dtype=dtype)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4)
    return q, k


def _check(q, k, cos, sin):
    """Forward and both gradients equal to apply_rope's, bit for bit."""
    q = q.detach().requires_grad_(True)
    k = k.detach().requires_grad_(True)
    qo, ko = rope_rotate_qk(q, k, cos, sin)
    qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    assert qo.dtype == qr.dtype == q.dtype and qo.shape == q.shape and qo.is_contiguous()
    assert torch.equal(qo, qr), f"q: max diff {(qo.double() - qr.double()).abs().max().item()}"
    assert torch.equal(ko, kr), f"k: max diff {(ko.double() - kr.double()).abs().max().item()}"
    gq, gk = torch.randn_like(qo), torch.randn_like(ko)
    dq, dk = torch.autograd.grad((qo, ko), (q, k), (gq, gk))
    dq_ref, dk_ref = torch.autograd.grad((qr, kr), (q, k), (gq, gk))
    assert dq.dtype == q.dtype and dk.dtype == k.dtype
    assert torch.equal(dq, dq_ref), f"dq: max diff {(dq.double() - dq_ref.double()).abs().max().item()}"
    assert torch.equal(dk, dk_ref), f"dk: max diff {(dk.double() - dk_ref.double()).abs().max().item()}"


@pytest.mark.parametrize("x_dtype, table_dtype", DTYPES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("heads, hd", [(16, 64), (16, 80), (16, 88), (22, 64), (12, 32)],
                         ids=["vit_l", "vit_h", "vit_g", "vit_g_xformers", "predictor"])  # fmt: skip
def test_v2_heads_context_and_predictor_tables(heads, hd, x_dtype, table_dtype):
    """Per-sample positions (a masked context or a sorted predictor sequence) on the V2 grid."""
    torch.manual_seed(0)
    B, L = 2, 37
    cos, sin = rope_tables(_ids(B, L), V2_GRID[1:], hd, table_dtype)
    _check(*_qk_views(B, L, heads, hd, x_dtype), cos, sin)


@pytest.mark.parametrize("x_dtype, table_dtype", DTYPES[:2], ids=["bf16", "bf16-fp32-angles"])
def test_v2_target_table_shared_by_the_batch(x_dtype, table_dtype):
    """The target encoder's full clip: one [1, 1, N, R] table for every sample (here the
    first tubelet of the grid and a few tokens of the next, N = 300)."""
    torch.manual_seed(1)
    B, L, heads, hd = 2, 300, 16, 64
    cos, sin = rope_tables(_ids(B, L, per_sample=False), V2_GRID[1:], hd, table_dtype)
    assert cos.shape[0] == 1
    _check(*_qk_views(B, L, heads, hd, x_dtype), cos, sin)


@pytest.mark.parametrize("B, L, heads, hd", [(1, 1, 1, 6), (3, 5, 3, 14), (2, 33, 5, 22), (1, 7, 2, 10),
                                             (2, 9, 4, 40), (1, 3, 3, 96)])  # fmt: skip
@pytest.mark.parametrize("x_dtype, table_dtype", DTYPES, ids=lambda v: str(v).replace("torch.", ""))
def test_odd_sizes(B, L, heads, hd, x_dtype, table_dtype):
    """Head dims whose rotated part R = 3·rope_dim(hd) leaves 0 to 4 channels unrotated, odd head
    counts (no pairing of heads per tile), one token, odd lengths."""
    torch.manual_seed(2)
    grid = (4, 3, 5)
    cos, sin = rope_tables(_ids(B, L, grid), grid[1:], hd, table_dtype)
    assert cos.shape[-1] == 3 * rope_dim(hd)
    _check(*_qk_views(B, L, heads, hd, x_dtype), cos, sin)


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "different"])
def test_other_layouts_of_q_and_k(layout):
    """Contiguous q/k, a layout with no adjacent heads, and q and k with different strides."""
    torch.manual_seed(3)
    B, L, heads, hd = 2, 11, 4, 32
    cos, sin = rope_tables(_ids(B, L), V2_GRID[1:], hd, torch.float32)
    q = torch.randn(B, heads, L, hd, device=DEVICE)
    k = torch.randn(B, heads, L, hd, device=DEVICE)
    if layout == "transposed":
        q = torch.randn(L, heads, B, hd, device=DEVICE).permute(2, 1, 0, 3)
        k = torch.randn(L, heads, B, hd, device=DEVICE).permute(2, 1, 0, 3)
    elif layout == "different":
        k = _qk_views(B, L, heads, hd, torch.float32)[1]
    _check(q, k, cos, sin)


def test_only_q_reaches_the_loss():
    """k's output unused: k's gradient is zero (its rotation back of a zero gradient), q's exact."""
    B, L, heads, hd = 2, 9, 2, 16
    cos, sin = rope_tables(_ids(B, L), V2_GRID[1:], hd, torch.float32)
    q, k = (t.detach().requires_grad_(True) for t in _qk_views(B, L, heads, hd, torch.float32))
    qo, _ = rope_rotate_qk(q, k, cos, sin)
    g = torch.randn_like(qo)
    dq, dk = torch.autograd.grad(qo, (q, k), g)
    (dq_ref,) = torch.autograd.grad(apply_rope(q, cos, sin), q, g)
    assert torch.equal(dq, dq_ref)
    assert not dk.any()


def test_tables_get_no_gradient():
    B, L, heads, hd = 1, 5, 2, 16
    cos, sin = rope_tables(_ids(B, L), V2_GRID[1:], hd, torch.float32)
    cos.requires_grad_(True)
    q, k = (t.detach().requires_grad_(True) for t in _qk_views(B, L, heads, hd, torch.float32))
    qo, ko = rope_rotate_qk(q, k, cos, sin)
    (qo.sum() + ko.sum()).backward()
    assert cos.grad is None and q.grad is not None


def test_errors_name_the_shapes():
    q, k = _qk_views(2, 6, 2, 16, torch.float32)
    cos, sin = rope_tables(_ids(2, 6), V2_GRID[1:], 16, torch.float32)
    with pytest.raises(ValueError, match=r"L=5"):
        rope_rotate_qk(q[:, :, :5], k[:, :, :5], cos, sin)
    with pytest.raises(ValueError, match=r"one shape"):
        rope_rotate_qk(q, k[:, :1], cos, sin)
    with pytest.raises(ValueError, match=r"R=16 .*<= head_dim 8"):
        rope_rotate_qk(q[..., :8], k[..., :8], torch.ones(2, 1, 6, 16), torch.ones(2, 1, 6, 16))
    with pytest.raises(TypeError, match="cos is torch.float32, sin is torch.bfloat16"):
        rope_rotate_qk(q, k, cos, sin.bfloat16())


def test_the_torch_setting_runs_the_reference(monkeypatch):
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "torch")
    q, k = _qk_views(2, 6, 2, 16, torch.float32)
    cos, sin = rope_tables(_ids(2, 6), V2_GRID[1:], 16, torch.float32)
    calls = []
    monkeypatch.setattr(kernels.reference, "rope_rotate_qk", lambda *a: calls.append(a) or (a[0], a[1]))
    rope_rotate_qk(q, k, cos, sin)
    assert len(calls) == 1


def test_compiled_code_calls_the_custom_ops():
    """Under torch.compile (aot_eager: dynamo + AOT autograd) the forward and backward graphs hold
    the custom ops, and the results are the eager ones."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    B, L, heads, hd = 2, 13, 2, 32
    cos, sin = rope_tables(_ids(B, L), V2_GRID[1:], hd, torch.bfloat16)
    q, k = (t.detach().requires_grad_(True) for t in _qk_views(B, L, heads, hd, torch.bfloat16))

    def f(q, k, cos, sin):
        qo, ko = rope_rotate_qk(q, k, cos, sin)
        return (qo.float() * 2 + ko.float()).sum()

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    loss = compiled(q, k, cos, sin)
    dq, dk = torch.autograd.grad(loss, (q, k))
    code = "\n".join(g.code for g in counter.graphs)
    assert "torch.ops.vjepa_fast.rope_rotate_qk.default" in code
    ref = f(q, k, cos, sin)
    dq_ref, dk_ref = torch.autograd.grad(ref, (q, k))
    assert torch.equal(dq, dq_ref) and torch.equal(dk, dk_ref)
    torch._dynamo.reset()


def test_opcheck_custom_ops():
    """Schema, fake-tensor, autograd-registration and AOT-dispatch checks from torch.library."""
    from vjepa_fast.kernels.rope import rope_rotate_qk_backward_op, rope_rotate_qk_op

    B, L, heads, hd = 2, 5, 2, 16
    cos, sin = rope_tables(_ids(B, L), V2_GRID[1:], hd, torch.float32)
    q, k = (t.detach().requires_grad_(True) for t in _qk_views(B, L, heads, hd, torch.float32))
    torch.library.opcheck(rope_rotate_qk_op, (q, k, cos, sin))
    gq, gk = torch.randn(B, heads, L, hd, device=DEVICE), torch.randn(B, heads, L, hd, device=DEVICE)
    torch.library.opcheck(rope_rotate_qk_backward_op, (gq, gk, cos, sin))
