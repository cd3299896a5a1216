"""Every attention backend that can run here against the math backend, at V-JEPA shapes.

On the CPU that is PyTorch's math and flash kernels; on a GPU the same test also covers the
memory-efficient and cuDNN SDPA backends and flash-attn / xformers when they are installed
(bf16 there, with the flash-attention tolerance rule: error ≤ 2× the math backend's own bf16 error
against float32, plus noise).

Then the ``tuned`` backend: a table entry routes the call (a spy on the dispatch), results equal
the math backend's for measured and unmeasured lengths, the tuner times, checks and skips with
reasons, tables survive a save/load round trip and bad files are refused with the file and key
named, a symbolic length under torch.compile picks the group default without a guard (one graph
for every length), and ``benchmarks/bench_attention.py`` runs on CPU at a tiny size.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vjepa_fast.attention as attn_mod
from vjepa_fast.attention import (
    AttnShape,
    attention,
    attention_backend,
    attention_table,
    available_backends,
    clear_attention_table,
    load_attention_table,
    save_attention_table,
    set_tuned_backend,
    tune_attention,
    tuned_backend,
    vjepa_attention_shapes,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REPO = Path(__file__).resolve().parents[1]
# (tokens, head_dim): full clip 1568 with ViT-L (64) and ViT-H (80) heads, the predictor's 24 at the
# official mean short/long mask sizes (context + target: 364 + 746, 103 + 1101), and the mean
# context lengths alone.
SHAPES = [(1568, 64), (1568, 80), (364 + 746, 24), (103 + 1101, 24), (364, 64), (103, 80)]


@pytest.mark.parametrize("backend", available_backends(DEVICE))
@pytest.mark.parametrize("tokens, head_dim", SHAPES)
def test_backend_matches_math(backend, tokens, head_dim):
    g = torch.Generator(device="cpu").manual_seed(tokens * 131 + head_dim)
    q, k, v = (torch.randn(1, 2, tokens, head_dim, generator=g).to(DEVICE) for _ in range(3))
    ref = attention(q, k, v, backend="math")  # float32 reference
    if DEVICE.type == "cuda":
        dtype = torch.bfloat16
        lo = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = attention(*lo, backend=backend).float()
        base = attention(*(t.detach() for t in lo), backend="math").float()
        noise = 2 * (ref + 0.3 - 0.3 - ref).abs().max()
        assert (out - ref).abs().max() <= 2 * (base - ref).abs().max() + noise
    else:
        qs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attention(*qs, backend=backend)
        assert torch.allclose(out, ref, atol=2e-5, rtol=1e-4), (out - ref).abs().max()
        out.sum().backward()
        refs = [t.clone().requires_grad_() for t in (q, k, v)]
        attention(*refs, backend="math").sum().backward()
        for a, b in zip(qs, refs):
            assert torch.allclose(a.grad, b.grad, atol=2e-5, rtol=1e-4)


def test_unavailable_backend_is_refused():
    from vjepa_fast.attention import backend_installed, set_attention_backend

    for name in ("flash_attn", "xformers"):
        if not backend_installed(name):
            with pytest.raises(ValueError, match="package, which is not installed"):
                set_attention_backend(name)


# ------------------------------------------------------------------------------------------------
# The "tuned" backend: a measured table routes each call; unmeasured and symbolic lengths use the
# group default (see the vjepa_fast.attention docstring).
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def table():
    """An empty table for the test; whatever was installed before comes back afterwards."""
    before = attention_table()
    clear_attention_table()
    yield
    clear_attention_table()
    for e in before["entries"]:
        set_tuned_backend(e["device"], e["dtype"], e["heads"], e["head_dim"], e["length"], e["backend"])


@pytest.fixture
def dispatched(monkeypatch):
    """The backend names attention() dispatched to, in order."""
    calls: list[str] = []
    real = attn_mod._dispatch

    def spy(name, q, k, v):
        calls.append(name)
        return real(name, q, k, v)

    monkeypatch.setattr(attn_mod, "_dispatch", spy)
    return calls


def _qkv(length, head_dim=8, heads=2, batch=1, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, head_dim, generator=g, dtype=dtype) for _ in range(3)]


def test_tuned_routes_exact_lengths_group_defaults_and_falls_back_to_auto(table, dispatched):
    set_tuned_backend("cpu", torch.float32, 2, 8, 40, "math")
    set_tuned_backend("cpu", "float32", 2, 8, None, "flash")
    q40, q41 = _qkv(40)[0], _qkv(41)[0]
    cases = [
        ((q40, q40, q40), "math"),  # measured length
        ((q41, q41, q41), "flash"),  # same group, unmeasured length: the group default
        ((*_qkv(40, head_dim=16)[:1],) * 3, "auto"),  # group never measured
        ((*_qkv(40, heads=4)[:1],) * 3, "auto"),
        ((q40.bfloat16(),) * 3, "auto"),  # the dtype is part of the key
        ((q40, q41, q41), "auto"),  # cross-attention: the table holds self-attention timings
    ]
    for (q, k, v), expected in cases:
        assert tuned_backend(q, k) == expected
        dispatched.clear()
        attention(q, k, v, backend="tuned")
        assert dispatched == [expected]
    dispatched.clear()
    with attention_backend("tuned"):  # the global switch takes the same route
        attention(q40, q40, q40)
        attention(q41, q41, q41)
    assert dispatched == ["math", "flash"]


@pytest.mark.parametrize("length", [40, 57])  # measured, and unmeasured (group default)
@pytest.mark.parametrize("entry", ["math", "flash", "auto"])
def test_tuned_matches_math_outputs_and_gradients(table, length, entry):
    set_tuned_backend("cpu", torch.float32, 2, 24, 40, entry)
    set_tuned_backend("cpu", torch.float32, 2, 24, None, "flash" if entry == "math" else "math")
    q, k, v = _qkv(length, head_dim=24, seed=length)
    tuned = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention(*tuned, backend="tuned")
    expected = attention(*ref, backend="math")
    assert torch.allclose(out, expected, atol=2e-5, rtol=1e-4)
    g = torch.randn_like(out)
    out.backward(g)
    expected.backward(g)
    for a, b in zip(tuned, ref):
        assert torch.allclose(a.grad, b.grad, atol=2e-5, rtol=1e-4)


def test_tune_installs_the_only_timed_backend_and_reports_flops(table):
    shapes = [(2, 2, 40, 8), AttnShape(1, 2, 64, 8, dynamic=True, backward=False, role="x")]
    report = tune_attention(shapes, "cpu", torch.float32, backends=["math"], warmup=0, reps=2)
    q40, q64, q50 = _qkv(40)[0], _qkv(64)[0], _qkv(50)[0]
    assert tuned_backend(q40) == tuned_backend(q64) == tuned_backend(q50) == "math"
    rows = [(r["length"], r["mode"], r["chosen"]) for r in report["shapes"]]
    assert rows == [(40, "fwd+bwd", "math"), (64, "fwd", "math")]
    first, second = report["shapes"]
    assert first["gflop"] == pytest.approx(4 * 2 * 2 * 40**2 * 8 * 3.5 / 1e9)
    assert second["gflop"] == pytest.approx(4 * 1 * 2 * 64**2 * 8 / 1e9)
    # GFLOP per ms is TFLOP/s
    assert first["tflops"]["math"] == pytest.approx(first["gflop"] / first["ms"]["math"])
    # The group default counts only the dynamic shapes when some are tagged.
    assert report["groups"][0]["lengths"] == [64] and report["groups"][0]["chosen"] == "math"
    assert report["device"] == "cpu" and report["dtype"] == "float32" and "3.5x" in report["flops"]
    json.dumps(report)


def test_tune_picks_the_fastest_and_skips_failing_or_wrong_backends(table, monkeypatch):
    real = attn_mod._dispatch

    def fake(name, q, k, v):
        if name == "flash":
            raise RuntimeError("no kernel for this head dim")
        if name == "auto":
            return real("math", q, k, v) * 1.01  # runs, fast, and wrong
        return real(name, q, k, v)

    monkeypatch.setattr(attn_mod, "_dispatch", fake)
    report = tune_attention([(1, 2, 32, 8)], "cpu", torch.float32, warmup=0, reps=1)
    row = report["shapes"][0]
    assert set(row["ms"]) == {"math"} and row["chosen"] == "math"
    assert "RuntimeError: no kernel for this head dim" in row["skipped"]["flash"]
    assert "differs from the float32 math backend" in row["skipped"]["auto"]
    # Without the parity check the wrong backend is timed like the others.
    report = tune_attention([(1, 2, 32, 8)], "cpu", torch.float32, backends=["auto", "math"], warmup=0,
                            reps=1, check=False, install=False)  # fmt: skip
    assert set(report["shapes"][0]["ms"]) == {"auto", "math"}


def test_tune_rejects_bad_arguments(table):
    with pytest.raises(ValueError, match="unknown attention backend 'tuned'"):
        tune_attention([(1, 2, 8, 8)], backends=["tuned"])
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        tune_attention([(1, 2, 8, 8)], backends=["fast"])
    with pytest.raises(ValueError, match="length of"):
        tune_attention([(1, 2, 0, 8)])
    with pytest.raises(ValueError, match="no shapes"):
        tune_attention([])
    with pytest.raises(ValueError, match="unsupported dtype"):
        tune_attention([(1, 2, 8, 8)], dtype=torch.int32)
    assert attention_table()["entries"] == []


def test_vjepa_shapes_are_the_official_ones():
    shapes = vjepa_attention_shapes(16, 64, 16, 24, batch=24)
    assert [(s.role, s.heads, s.length, s.head_dim, s.dynamic, s.backward) for s in shapes] == [
        ("target", 16, 1568, 64, False, False),
        ("context[0]", 16, 364, 64, True, True), ("predictor[0]", 16, 364 + 746, 24, True, True),
        ("context[1]", 16, 103, 64, True, True), ("predictor[1]", 16, 103 + 1101, 24, True, True),
    ]  # fmt: skip
    assert {s.batch for s in shapes} == {24}


def test_table_save_load_round_trip(table, tmp_path):
    set_tuned_backend("cpu", torch.float32, 2, 8, 40, "math")
    set_tuned_backend("cpu", torch.float32, 2, 8, None, "flash")
    set_tuned_backend("cuda", torch.bfloat16, 16, 80, 1568, "cudnn")
    saved = attention_table()
    path = tmp_path / "table.json"
    save_attention_table(path)
    clear_attention_table()
    assert tuned_backend(_qkv(40)[0]) == "auto"
    load_attention_table(path)
    assert attention_table() == saved
    assert tuned_backend(_qkv(40)[0]) == "math" and tuned_backend(_qkv(41)[0]) == "flash"
    # merge=True adds over the current table; the default replaces it.
    other = tmp_path / "other.json"
    clear_attention_table()
    set_tuned_backend("cpu", torch.float32, 4, 8, 40, "math")
    save_attention_table(other)
    load_attention_table(path, merge=True)
    assert len(attention_table()["entries"]) == 4
    load_attention_table(other)
    assert [e["heads"] for e in attention_table()["entries"]] == [4]


def _write(path, entries, **top):
    path.write_text(json.dumps({"format": "vjepa_fast.attention_table", "version": 1, "entries": entries,
                                **top}))  # fmt: skip
    return path


ENTRY = {"device": "cpu", "dtype": "float32", "heads": 2, "head_dim": 8, "length": 40, "backend": "math"}


@pytest.mark.parametrize("change, message", [
    ({"backend": "fastest"},
     r"entry 1 \(cpu/float32 heads=2 head_dim=8 length=40\): unknown attention backend 'fastest'"),
    ({"backend": "tuned"}, r"entry 1 .*unknown attention backend 'tuned'"),
    ({"length": None, "backend": 3},
     r"entry 1 \(cpu/float32 heads=2 head_dim=8 length=default\): unknown attention backend 3"),
    ({"dtype": "int8"}, r"entry 1 .*unsupported dtype 'int8'"),
    ({"heads": 0}, r"entry 1 .*heads must be a positive int"),
    ({"length": 2.5}, r"entry 1 .*length must be a positive int"),
    ({"device": "gpu0"}, r"entry 1 \(gpu0/"),
    ({}, r"entry 1 .*duplicate key"),
])  # fmt: skip
def test_load_rejects_bad_entries_naming_file_and_key(table, tmp_path, change, message):
    set_tuned_backend("cpu", torch.float32, 4, 8, 16, "flash")
    before = attention_table()
    path = _write(tmp_path / "bad.json", [ENTRY, {**ENTRY, **change}])
    with pytest.raises(ValueError, match=message) as info:
        load_attention_table(path)
    assert str(path) in str(info.value)
    assert attention_table() == before  # nothing installed from a bad file


def test_load_rejects_bad_files(table, tmp_path):
    for name in ("flash_attn", "xformers"):
        if not attn_mod.backend_installed(name):
            with pytest.raises(ValueError, match=f"entry 0 .*{name}.*not installed"):
                load_attention_table(_write(tmp_path / "ext.json", [{**ENTRY, "backend": name}]))
    with pytest.raises(ValueError, match="missing \\['backend'\\]"):
        no_backend = {k: v for k, v in ENTRY.items() if k != "backend"}
        load_attention_table(_write(tmp_path / "m.json", [no_backend]))
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="x.json: not a JSON attention table"):
        load_attention_table(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"entries": []}))
    with pytest.raises(ValueError, match="y.json: not an attention table"):
        load_attention_table(tmp_path / "y.json")
    with pytest.raises(ValueError, match="version 2"):
        load_attention_table(_write(tmp_path / "v.json", [], version=2))
    with pytest.raises(ValueError, match="unknown attention backend 'fastest'"):
        set_tuned_backend("cpu", torch.float32, 2, 8, 40, "fastest")


def _compile_counts():
    metrics = [m for m in torch._dynamo.utils.get_compilation_metrics() if m.fail_type is None]
    return len(metrics), sum(bool(m.recompile_reason) for m in metrics)


def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.clear_compilation_metrics()


def test_tuned_choice_under_compile_never_reads_a_symbolic_length(table):
    """Static lengths get their exact entry, symbolic ones the group default, with no guard on the
    length: one graph for every length, even with the dim strictly marked dynamic (a guard on it
    would be a ConstraintViolationError)."""
    set_tuned_backend("cpu", torch.float32, 2, 8, 40, "math")
    set_tuned_backend("cpu", torch.float32, 2, 8, None, "flash")

    def which(q):  # 1 = exact entry, 2 = group default
        name = tuned_backend(q, q)
        return q.sum() * 0 + (1 if name == "math" else 2 if name == "flash" else 3)

    _fresh_dynamo()
    compiled = torch.compile(which, backend="aot_eager", dynamic=False, fullgraph=True)
    lengths = [40, 33, 57, 40, 64]
    got = []
    for length in lengths:
        q = _qkv(length)[0]
        torch._dynamo.mark_dynamic(q, 2)
        got.append(int(compiled(q)))
    assert got == [2] * len(lengths)
    assert _compile_counts() == (1, 0)

    _fresh_dynamo()  # a static compile (the target encoder) sees its exact entry
    compiled = torch.compile(which, backend="aot_eager", dynamic=False, fullgraph=True)
    assert int(compiled(_qkv(40)[0])) == 1
    set_tuned_backend("cpu", torch.float32, 2, 8, 40, "auto")  # the graph guards on the table
    assert int(compiled(_qkv(40)[0])) == 3


def test_tuned_attention_compiles_once_for_varying_lengths(table):
    """The whole path (lookup + dispatch + backward) under dynamic=True, as the student runs it.
    (No dispatch spy here: dynamo guards on a spy's list, which would itself recompile.)"""
    set_tuned_backend("cpu", torch.float32, 2, 8, 40, "math")
    set_tuned_backend("cpu", torch.float32, 2, 8, None, "flash")

    def block(x, w):  # [B, L, 3*heads*head_dim] -> attention, as the blocks call it
        B, L, _ = x.shape
        qkv = (x @ w).reshape(B, L, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return attention(qkv[0], qkv[1], qkv[2], backend="tuned").sum()

    _fresh_dynamo()
    compiled = torch.compile(block, backend="aot_eager", dynamic=True, fullgraph=True)
    w = torch.randn(48, 48, requires_grad=True)
    for length in (40, 33, 57, 40, 21):
        x = torch.randn(2, length, 48)
        loss = compiled(x, w)
        (grad,) = torch.autograd.grad(loss, w)
        with attention_backend("math"):
            ref = block(x, w)
        (ref_grad,) = torch.autograd.grad(ref, w)
        torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4 * ref.abs().item())
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5 * ref_grad.abs().max().item())
    assert _compile_counts() == (1, 0)


def test_table_from_the_environment_at_import(tmp_path):
    path = _write(tmp_path / "env.json", [ENTRY])
    code = ("import torch, vjepa_fast.attention as a; q = torch.zeros(1, 2, 40, 8); "
            "print(a.get_attention_backend(), a.tuned_backend(q))")  # fmt: skip
    env = {**os.environ, "VJEPA_FAST_ATTN": "tuned", "VJEPA_FAST_ATTN_TABLE": str(path),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tuned", "math"]


def test_bench_attention_smoke(table, tmp_path, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_attention
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    out = tmp_path / "table.json"
    assert bench_attention.main(["--device", "cpu", "--model", "tiny", "--warmup", "1", "--reps", "2",
                                 "--out", str(out)]) == 0  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    report = json.loads(lines[0])
    expected = vjepa_attention_shapes(2, 32, 2, 16, 2, 196, ((46, 93), (13, 138)))
    assert [(r["role"], r["heads"], r["length"], r["head_dim"]) for r in report["shapes"]] == [
        (s.role, s.heads, s.length, s.head_dim) for s in expected
    ]
    for row in report["shapes"]:
        assert row["chosen"] in row["ms"] and row["ms"][row["chosen"]] == min(row["ms"].values())
        assert set(row["ms"]) | set(row["skipped"]) == set(report["backends"])
    assert {g["head_dim"] for g in report["groups"]} == {32, 16}
    clear_attention_table()
    load_attention_table(out)
    entries = attention_table()["entries"]
    assert len(entries) == len(expected) + 2  # one per shape, plus the two group defaults


@pytest.mark.slow
@pytest.mark.parametrize("forced, fused_ops", [
    ("math", set()),
    ("flash", {"_scaled_dot_product_flash_attention_for_cpu",
               "_scaled_dot_product_flash_attention_for_cpu_backward"}),
])
def test_forced_backend_survives_inductor_with_symbolic_lengths(forced, fused_ops):
    """A backend forced through ``sdpa_kernel`` (what ``attention`` does) is the one inductor's
    generated code calls, forward and backward, with the token dim symbolic as in the compiled
    student: dynamo records the context manager in the graph and the backend is chosen while the
    graph is traced. Read back with ``compiled_attention_ops`` (the GPU benchmark reports the same
    for cuDNN, which cannot be checked on a CPU)."""
    from vjepa_fast.compile import compiled_attention_ops

    def block(x, w):
        B, L, _ = x.shape
        qkv = (x @ w).reshape(B, L, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return attention(qkv[0], qkv[1], qkv[2]).sum()

    _fresh_dynamo()
    before = set(compiled_attention_ops())
    w = torch.randn(48, 48, requires_grad=True)
    cpu_fast_compile = {"cpp.vec_isa_ok": False, "compile_threads": 1}
    with attention_backend(forced), torch._inductor.config.patch(cpu_fast_compile):
        compiled = torch.compile(block, backend="inductor", fullgraph=True)
        for length in (40, 33, 57):
            x = torch.randn(2, length, 48)
            torch._dynamo.mark_dynamic(x, 1)
            torch.autograd.grad(compiled(x, w), w)
    graphs = {path: ops for path, ops in compiled_attention_ops().items() if path not in before}
    assert _compile_counts() == (1, 0)
    assert len(graphs) == 2  # the forward and the backward graph
    called = {op for ops in graphs.values() for op in ops}
    assert called - {"bmm"} == fused_ops
    assert ("bmm" in called) == (forced == "math")
