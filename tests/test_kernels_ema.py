"""fused_ema_ and fused_adamw_ema_: vs the official EMA formula and torch.optim.AdamW."""
import pytest
import torch

from vjepa_fast.kernels import FlatParams, fused_adamw_ema_, fused_ema_, reference
from vjepa_fast.kernels.testing import assert_ema_close, kernel_test_device

DEVICE = kernel_test_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs CUDA or TRITON_INTERPRET=1")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SIZES = [1, 7, 190, 1000, 33 * 7, 70_001]  # the last one spans several interpreter chunks


@pytest.fixture(autouse=True)
def _triton(monkeypatch):
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "triton")


def _official_ema(targets, sources, m):
    with torch.no_grad():
        for t, s in zip(targets, sources):
            t.mul_(m).add_((1 - m) * s)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum", [0.998, 0.99962, "tensor"])
def test_fused_ema_within_one_ulp(dtype, momentum):
    m = torch.tensor(0.998, device=DEVICE) if momentum == "tensor" else momentum
    targets = [torch.randn(n, device=DEVICE, dtype=dtype) for n in SIZES]
    sources = [t + 0.1 * torch.randn_like(t) for t in targets]
    before = [t.clone() for t in targets]
    expected = [t.clone() for t in targets]
    fused_ema_(targets, sources, m)
    _official_ema(expected, sources, m)
    for t, e, t0, s in zip(targets, expected, before, sources):
        assert_ema_close(t, e, t0, s, m)


def test_fused_ema_several_steps_mixed_dtypes_and_shapes():
    """fp32 and bf16 tensors in one call (one launch per dtype pair), 2-D shapes, 5 steps."""
    targets = [torch.randn(13, 7, device=DEVICE), torch.randn(190, device=DEVICE, dtype=torch.bfloat16),
               torch.randn(3, 5, 2, device=DEVICE)]  # fmt: skip
    expected = [t.clone() for t in targets]
    for step in range(5):
        sources = [torch.randn_like(t) for t in targets]
        before = [t.clone() for t in targets]
        m = 0.998 + step * 1e-4
        fused_ema_(targets, sources, m)
        _official_ema(expected, sources, m)
        for t, e, t0, s in zip(targets, expected, before, sources):
            assert_ema_close(t, e, t0, s, m)
            e.copy_(t)  # compare one step at a time


def test_fused_ema_accepts_parameters_and_empty_lists():
    src = torch.nn.Linear(9, 5).to(DEVICE)
    tgt = torch.nn.Linear(9, 5).to(DEVICE)
    before = [p.detach().clone() for p in tgt.parameters()]
    expected = [p.detach().clone() for p in tgt.parameters()]
    sources = [p.detach() for p in src.parameters()]
    fused_ema_(tgt.parameters(), src.parameters(), 0.9)
    _official_ema(expected, sources, 0.9)
    for p, e, t0, s in zip(tgt.parameters(), expected, before, sources):
        assert_ema_close(p.detach(), e, t0, s, 0.9)
    fused_ema_([], [], 0.9)


def test_flat_params_one_buffer_one_launch():
    def mlp():
        return torch.nn.Sequential(torch.nn.Linear(7, 33), torch.nn.GELU(), torch.nn.Linear(33, 5)).to(DEVICE)

    enc, tgt = mlp(), mlp()
    before = [p.detach().clone() for p in tgt.parameters()]
    expected = [p.clone() for p in before]
    x = torch.randn(4, 7, device=DEVICE)
    y_enc = enc(x)
    flat_enc, flat_tgt = FlatParams(enc), FlatParams(tgt)
    assert len(flat_enc) == len(flat_tgt) == 1 and flat_enc.flat.numel() == flat_tgt.flat.numel()
    assert torch.equal(enc(x), y_enc)  # packing kept the values; params are views into the buffer
    for p in enc.parameters():
        assert p.untyped_storage().data_ptr() == flat_enc.flat.untyped_storage().data_ptr()
    fused_ema_(flat_tgt.buffers, flat_enc.buffers, 0.996)
    sources = [p.detach() for p in enc.parameters()]
    _official_ema(expected, sources, 0.996)
    for p, e, t0, s in zip(tgt.parameters(), expected, before, sources):
        assert_ema_close(p.detach(), e, t0, s, 0.996)
    # the module still trains: gradients flow into the viewed parameters
    enc(x).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


# ---------------------------------------------------------------------------------------------------
# fused AdamW + EMA


def _make_params(dtype=torch.float32):
    shapes = [(33, 7), (7,), (190,), (5, 3, 2), (1,)]
    return [torch.randn(s, device=DEVICE, dtype=dtype) for s in shapes]


GROUP_IDS = [0, 1, 1, 0, 1]  # group 0 decays, group 1 (biases / 1-D) does not
WDS = [0.05, 0.0]


@pytest.mark.parametrize("hyper", ["python", "tensor"])
def test_fused_adamw_ema_matches_torch_adamw_then_ema(hyper):
    init = _make_params()
    torch_params = [torch.nn.Parameter(p.clone()) for p in init]
    groups = [
        {"params": [p for p, g in zip(torch_params, GROUP_IDS) if g == k], "weight_decay": wd}
        for k, wd in enumerate(WDS)
    ]
    opt = torch.optim.AdamW(groups, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    order = [p for g in groups for p in g["params"]]  # AdamW visits params group by group
    ema_expected = [p.detach().clone() for p in init]

    params = [p.clone() for p in init]
    exp_avgs = [torch.zeros_like(p) for p in init]
    exp_avg_sqs = [torch.zeros_like(p) for p in init]
    ema = [p.clone() for p in init]
    step_t = torch.zeros((), device=DEVICE)
    for step in range(1, 6):
        lr, m = 2e-3 * (1 - 0.1 * step), 0.998 + 1e-4 * step
        grads = [torch.randn_like(p) for p in init]
        for p, g in zip(torch_params, grads):
            p.grad = g.clone()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        _official_ema(ema_expected, [p.detach() for p in torch_params], m)

        if hyper == "tensor":  # schedules living on the device: no host sync
            step_t += 1
            kwargs = dict(
                lr=torch.tensor(lr, device=DEVICE),
                weight_decay=torch.tensor(WDS, device=DEVICE),
                step=step_t,
                momentum=torch.tensor(m, device=DEVICE, dtype=torch.float64),
            )
        else:
            kwargs = dict(lr=lr, weight_decay=WDS, step=step, momentum=m)
        fused_adamw_ema_(params, grads, exp_avgs, exp_avg_sqs, ema, group_ids=GROUP_IDS, **kwargs)

        for i, p in enumerate(params):
            torch.testing.assert_close(p, torch_params[i].detach(), rtol=1e-6, atol=1e-7)
            state = opt.state[torch_params[i]]
            torch.testing.assert_close(exp_avgs[i], state["exp_avg"], rtol=1e-6, atol=1e-9)
            torch.testing.assert_close(exp_avg_sqs[i], state["exp_avg_sq"], rtol=1e-6, atol=1e-12)
            torch.testing.assert_close(ema[i], ema_expected[i], rtol=1e-6, atol=1e-7)
    assert len(order) == len(params)


def test_fused_adamw_without_ema_and_reference_path_agree(monkeypatch):
    init = _make_params()
    grads = [torch.randn_like(p) for p in init]
    states = {}
    for backend in ("triton", "torch"):
        monkeypatch.setenv("VJEPA_FAST_KERNELS", backend)
        params = [p.clone() for p in init]
        m, v = [torch.zeros_like(p) for p in init], [torch.zeros_like(p) for p in init]
        for step in (1, 2, 3):
            fused_adamw_ema_(params, grads, m, v, None, lr=1e-3, weight_decay=0.1, step=step)
        states[backend] = params
    for a, b in zip(states["triton"], states["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_fused_adamw_bf16_ema_targets():
    """fp32 master weights with a bf16 EMA copy: the EMA is within 1 ulp of the official formula."""
    params = _make_params()
    ref_params = [p.clone() for p in params]
    ema = [p.to(torch.bfloat16) for p in params]
    ema_before = [e.clone() for e in ema]
    ema_expected = [e.clone() for e in ema]
    grads = [torch.randn_like(p) for p in params]
    m_, v_ = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    rm, rv = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    kw = dict(lr=1e-3, weight_decay=WDS, step=1, group_ids=GROUP_IDS)
    fused_adamw_ema_(params, grads, m_, v_, ema, momentum=0.99, **kw)
    reference.adamw_ema_(ref_params, grads, rm, rv, None, **kw)
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)
    _official_ema(ema_expected, params, 0.99)
    for e, x, t0, p in zip(ema, ema_expected, ema_before, params):
        assert_ema_close(e, x, t0, p, 0.99)


def test_fused_adamw_rejects_mismatched_inputs():
    p = [torch.randn(5, device=DEVICE)]
    m, v = [torch.zeros(5, device=DEVICE)], [torch.zeros(5, device=DEVICE)]
    with pytest.raises(ValueError, match="elements"):
        fused_adamw_ema_(p, [torch.randn(6, device=DEVICE)], m, v, lr=1e-3, weight_decay=0.0, step=1)
    with pytest.raises(ValueError, match="momentum"):
        fused_adamw_ema_(p, p, m, v, [p[0].clone()], lr=1e-3, weight_decay=0.0, step=1)


def test_fused_adamw_ema_vit_l_block_shapes():
    """The attention half of a ViT-L block (4.2M values, ~70 interpreter programs), fp32 master weights."""
    D = 1024
    shapes = [(D,), (D,), (3 * D, D), (3 * D,), (D, D), (D,)]
    params = [torch.randn(s, device=DEVICE) * 0.02 for s in shapes]
    group_ids = [0 if len(s) == 2 else 1 for s in shapes]
    ref_params = [p.clone() for p in params]
    ema, ref_ema = [p.clone() for p in params], [p.clone() for p in params]
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    state = [[torch.zeros_like(p) for p in params] for _ in range(4)]
    kw = dict(lr=6.25e-4, weight_decay=[0.04, 0.0], step=3, momentum=0.998, group_ids=group_ids)
    fused_adamw_ema_(params, grads, state[0], state[1], ema, **kw)
    reference.adamw_ema_(ref_params, grads, state[2], state[3], ref_ema, **kw)
    for a, b, e, r in zip(params, ref_params, ema, ref_ema):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(e, r, rtol=1e-6, atol=1e-9)
