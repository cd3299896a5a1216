"""fused_ema_ and fused_adamw_ema_: vs the official EMA formula and torch.optim.AdamW."""
import pytest
import torch

from vjepa_fast.kernels import INTERPRET, FlatParams, fused_adamw_ema_, fused_ema_, reference
from vjepa_fast.kernels.dispatch import tl
from vjepa_fast.kernels.ema import adamw_ema_coefficients, plan_fused_adamw_ema, plan_fused_ema
from vjepa_fast.kernels.multi_tensor import MultiTensorTables, n_chunks, tables_to
from vjepa_fast.kernels.plan import DeviceSpec, TensorSpec
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


# ---------------------------------------------------------------------------------------------------
# Planning: tables, alignment classes, the GPU configuration (run in the interpreter), plan cache


def _interval_cover(tables, n_tensors):
    """Per tensor, the sorted (start, count) of its programs."""
    out = [[] for _ in range(n_tensors)]
    for t, s, c in zip(tables.chunk_tensor.tolist(), tables.chunk_start.tolist(), tables.chunk_count.tolist()):
        out[t].append((s, c))
    return [sorted(x) for x in out]


@pytest.mark.parametrize("chunk", [512, 4096])
def test_tables_cover_every_element_once(chunk):
    sizes = [1, 511, 512, 513, 4096 * 3 + 8, 70_001]
    specs = [TensorSpec((n,), torch.float32, address=1024 * i) for i, n in enumerate(sizes)]
    tables = MultiTensorTables.build([specs, specs], [i % 2 for i in range(len(sizes))], chunk)
    assert tables.chunk_tensor.dtype == tables.chunk_count.dtype == tables.chunk_start.dtype == torch.int32
    assert tables.addrs[0].tolist() == [1024 * i for i in range(len(sizes))]
    assert tables.group.tolist() == [i % 2 for i in range(len(sizes))]
    for n, runs in zip(sizes, _interval_cover(tables, len(sizes))):
        assert [s for s, _ in runs] == list(range(0, n, chunk))  # chunk starts: multiples of CHUNK
        assert all(0 < c <= chunk for _, c in runs) and sum(c for _, c in runs) == n
    for row in tables.rows():  # every table row starts 16-byte aligned: one pointer specialisation
        assert row.data_ptr() % 16 == 0


def test_tables_switch_to_int64_starts_only_for_huge_tensors():
    huge = [TensorSpec((2**31 + 5,), torch.bfloat16)]
    tables = MultiTensorTables.build([huge], [0], 1 << 14)
    assert tables.chunk_start.dtype == torch.int64 and tables.chunk_count.dtype == torch.int32
    assert int(tables.chunk_start[-1]) + int(tables.chunk_count[-1]) == 2**31 + 5


def test_planner_splits_by_alignment_and_dtype():
    """ALIGNED launches (128-bit hints) get only tensors whose every base is 16-byte aligned and whose
    size is a multiple of the 16-byte vector; the rest go to the scalar launch."""
    gpu = DeviceSpec(interpret=False)
    f32, bf16 = torch.float32, torch.bfloat16
    targets = [TensorSpec((1024,), f32), TensorSpec((1022,), f32), TensorSpec((1024,), f32, address=4),
               TensorSpec((4096,), bf16), TensorSpec((1028,), bf16)]  # fmt: skip
    sources = [TensorSpec(t.shape, t.dtype) for t in targets]
    plans = plan_fused_ema(targets, sources, gpu)
    got = {}
    for p in plans:
        n_t = int(p.args[2].max()) + 1
        got[(p.constexprs["T_DTYPE"], p.constexprs["ALIGNED"])] = (n_t, p.constexprs["VEC"], p.constexprs["BLOCK"])
        assert p.vector_loads == p.vector_stores == p.constexprs["ALIGNED"]
        assert p.constexprs["CHUNK"] % p.constexprs["BLOCK"] == 0
    assert got == {(tl.float32, True): (1, 4, 512), (tl.float32, False): (2, 4, 512),
                   (tl.bfloat16, True): (1, 8, 1024), (tl.bfloat16, False): (1, 8, 1024)}  # fmt: skip
    # fp32 sources beside bf16 targets: one layout, 4 elements per thread (the fp32 roles' vector)
    (mixed,) = plan_fused_ema([TensorSpec((1024,), bf16)], [TensorSpec((1024,), f32)], gpu)
    assert (mixed.constexprs["VEC"], mixed.constexprs["BLOCK"], mixed.constexprs["ALIGNED"]) == (4, 512, True)
    with pytest.raises(ValueError, match=r"sources\[1\] has 7 elements"):
        plan_fused_ema(targets[:2], [sources[0], TensorSpec((7,), f32)], gpu)
    with pytest.raises(ValueError, match="not contiguous"):
        plan_fused_ema([TensorSpec((4, 8), f32, strides=(1, 4))], [TensorSpec((4, 8), f32)], gpu)


def test_gpu_chunking_spreads_small_launches_and_keeps_large_chunks():
    """CHUNK: the largest power of two <= 16384 that still gives 8 waves of 4-warp programs at full
    residency on 132 SMs, so the predictor's 22M parameters spread over every SM."""
    gpu = DeviceSpec(interpret=False)
    want = 8 * 132 * 16
    small = [TensorSpec((384 * 1536,), torch.float32)] * 24  # the predictor's MLP weights: 14M values
    big = [TensorSpec((4096 * 1024,), torch.float32)] * 96  # 403M values
    (p_small,) = plan_fused_ema(small, small, gpu)
    (p_big,) = plan_fused_ema(big, big, gpu)
    assert p_big.constexprs["CHUNK"] == 1 << 14 and p_big.n_programs >= want
    chunk = p_small.constexprs["CHUNK"]
    assert p_small.n_programs == n_chunks([384 * 1536] * 24, chunk) >= want > n_chunks([384 * 1536] * 24, 2 * chunk)


def _adamw_inputs(sizes, seed=0, ema_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=g) for n in sizes]
    grads = [torch.randn(n, generator=g) for n in sizes]
    exp_avgs = [0.1 * torch.randn(n, generator=g) for n in sizes]
    exp_avg_sqs = [torch.rand(n, generator=g) for n in sizes]
    ema = [p.to(ema_dtype) + 0.01 for p in params]
    return [[t.to(DEVICE) for t in role] for role in (params, grads, exp_avgs, exp_avg_sqs, ema)]


@pytest.mark.skipif(not INTERPRET, reason="launches CPU-table plans in the Triton interpreter")
@pytest.mark.parametrize("ema_dtype", [torch.float32, torch.bfloat16])
def test_gpu_configuration_matches_the_interpreter_configuration(ema_dtype, monkeypatch):
    """The planner's GPU configuration (CHUNK > BLOCK: several unmasked blocks per program, masked
    tails, aligned and scalar launches side by side), launched as planned in the interpreter, gives
    the same bits as the interpreter's own configuration, and matches the reference AdamW + EMA."""
    import vjepa_fast.kernels.multi_tensor as mt

    monkeypatch.setattr(mt, "_GPU_MIN_WAVES", 0.5)  # 8 programs on one SM: CHUNK of several blocks
    sizes = [9000, 4100, 1000, 7, 4096 + 512, 1030]  # 7, 1030 (and 4100 for bf16): partial vectors
    gids = [0, 1, 0, 1, 0, 0]
    hyper = dict(lr=[2e-3, 1e-3], weight_decay=[0.05, 0.0], step=4, betas=(0.9, 0.999), eps=1e-8, momentum=0.998)
    gpu, interp, ref = (_adamw_inputs(sizes, ema_dtype=ema_dtype) for _ in range(3))
    plans = plan_fused_adamw_ema(*gpu, gids, DeviceSpec(sm_count=1, interpret=False))
    assert {p.constexprs["ALIGNED"] for p in plans} == {True, False}
    assert all(p.constexprs["CHUNK"] > p.constexprs["BLOCK"] for p in plans if p.constexprs["ALIGNED"])
    coef = torch.tensor(adamw_ema_coefficients(**hyper, n_groups=2), dtype=torch.float32)
    for p in plans:
        p.with_args(*p.args[:-1], coef).launch()
    fused_adamw_ema_(*interp, **hyper, group_ids=gids)
    reference.adamw_ema_(*ref, **hyper, group_ids=gids)
    for role in range(5):
        for x, y, r in zip(gpu[role], interp[role], ref[role]):
            assert torch.equal(x, y), role
            if x.dtype == torch.float32:  # bf16 EMA targets: 1-ulp accuracy tested above
                torch.testing.assert_close(x, r, rtol=1e-6, atol=1e-7)

    targets, expected = [e.clone() for e in gpu[4]], [e.clone() for e in gpu[4]]
    for p in plan_fused_ema(targets, gpu[0], DeviceSpec(sm_count=1, interpret=False)):
        p.with_args(*p.args[:6], 0.996, 1 - 0.996).launch()
    fused_ema_(expected, gpu[0], 0.996)
    for t, e in zip(targets, expected):
        assert torch.equal(t, e)


def test_launch_reuses_plans_and_tables_when_tensors_move(monkeypatch):
    """Same tensors: the cached plans; tensors at new addresses (gradients reallocated): the same
    chunk tables with new address rows; new sizes: a new plan. Every call gives the official result."""
    import vjepa_fast.kernels.ema as ema_module

    planned = []
    real = ema_module._ema_launches

    def spy(*args, **kwargs):
        planned.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ema_module, "_ema_launches", spy)
    targets = [torch.randn(n, device=DEVICE) for n in (37, 640, 12)]
    sources = [torch.randn_like(t) for t in targets]
    expected = [t.clone() for t in targets]
    versions = [t._version for t in targets]
    for m in (0.99, 0.995):
        fused_ema_(targets, sources, m)
        _official_ema(expected, sources, m)
    assert planned == [1]  # the second step found its plans
    assert all(t._version > v for t, v in zip(targets, versions))  # in-place writes are visible to autograd
    moved = [s.clone() for s in sources]  # new storage, same values
    fused_ema_(targets, moved, 0.999)
    _official_ema(expected, sources, 0.999)
    assert planned == [1]  # same layout: address rows only
    for t, e in zip(targets, expected):
        assert torch.equal(t, e)  # fp32 storage: bit-identical to the official formula
    longer = [torch.randn(n + 4, device=DEVICE) for n in (37, 640, 12)]
    fused_ema_(longer, [x.clone() for x in longer], 0.5)
    assert planned == [1, 1]


def test_adamw_with_reallocated_gradients_reuses_tables(monkeypatch):
    import vjepa_fast.kernels.ema as ema_module

    planned = []
    real = ema_module._adamw_launches
    monkeypatch.setattr(ema_module, "_adamw_launches", lambda *a, **k: planned.append(1) or real(*a, **k))
    sizes = [70_001, 4096, 7, 384]
    ours, ref = _adamw_inputs(sizes), _adamw_inputs(sizes)
    kw = dict(lr=1e-3, weight_decay=[0.05, 0.0], momentum=0.998, group_ids=[0, 1, 1, 0])
    for step in (1, 2, 3):
        grads = [torch.randn(n, generator=torch.Generator().manual_seed(step)).to(DEVICE) for n in sizes]
        fused_adamw_ema_(ours[0], grads, *ours[2:], step=step, **kw)  # new gradient tensors each step
        reference.adamw_ema_(ref[0], grads, *ref[2:], step=step, **kw)
    assert planned == [1]
    for a, b in zip(ours, ref):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_aot_plans_cover_the_vjepa_parameter_sets():
    """aot_plans(): every launch of a ViT-L / ViT-H step, its tables covering exactly the model's
    trainable encoder (with EMA) and predictor (without) parameters."""
    from vjepa_fast.kernels.ema import _meta_model, aot_plans

    plans = aot_plans()
    by_label = {p.label: p for p in plans}
    for name, short in (("vit_large", "ViT-L"), ("vit_huge", "ViT-H")):
        model = _meta_model(name)
        n_enc = sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
        n_pred = sum(p.numel() for p in model.predictor.parameters() if p.requires_grad)
        enc = by_label[f"{short} encoder AdamW+EMA fp32, {n_enc / 1e6:.1f}M (fused step)"]
        pred = by_label[f"{short} predictor AdamW fp32, {n_pred / 1e6:.1f}M (fused step)"]
        assert int(enc.args[8].sum()) == n_enc and enc.constexprs["HAS_EMA"]
        assert int(pred.args[8].sum()) == n_pred and not pred.constexprs["HAS_EMA"]
    assert all(p.label for p in plans)
    assert {p.constexprs["ALIGNED"] for p in plans} == {True, False}


def test_tables_to_moves_each_buffer_once_and_keeps_views():
    """The launcher's upload: every CPU table row becomes the same view of one copied buffer."""
    specs = [TensorSpec((n,), torch.float32, address=64 * i) for i, n in enumerate((5, 40_000, 3))]
    tables = MultiTensorTables.build([specs, specs], [0, 1, 0], 4096)
    rows = tables.rows()
    moved = tables_to((*rows, 0.5), torch.device("meta"))
    assert moved[-1] == 0.5
    bases = {id(r._base) for r in moved[:-1]}
    assert len(bases) == 2  # the int64 and the int32 buffer
    for a, b in zip(rows, moved[:-1]):
        assert b.device.type == "meta" and (b.shape, b.stride(), b.storage_offset(), b.dtype) == (
            a.shape, a.stride(), a.storage_offset(), a.dtype)  # fmt: skip
