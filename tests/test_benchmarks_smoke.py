"""CPU smoke tests of the training-step benchmarks at tiny sizes.

* ``benchmarks/train_step.py --impl both`` prints one valid JSON line per impl plus the ratio line,
  with every field the throughput report needs (speed is reported, never asserted);
* ``--check-loss`` is a real parity test: the official-structure step (``reference_step.py``: one
  encoder pass per mask, repeat-index gathers, full-length target LayerNorm, foreach AdamW, Python
  EMA loop) and the fast step (fused kernels / their references, fused EMA) must give the same
  losses and weights in fp32;
* ``--arch v2``: the same for V-JEPA 2 against ``reference_step_v2.py`` (two clip lengths in the
  loss check), with one fast row per activation-checkpointing setting;
* ``benchmarks/profile_step.py`` writes a Chrome trace and a table of top ops.
"""
from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import profile_step  # noqa: E402
import train_step  # noqa: E402

TINY = ["--device", "cpu", "--model", "vit_tiny", "--embed-dim", "64", "--depth", "2", "--heads", "2",
        "--pred-dim", "32", "--pred-depth", "1", "--frames", "8", "--crop", "64", "--batch", "2"]  # fmt: skip

IMPL_FIELDS = {
    "bench", "impl", "device", "device_name", "torch", "triton", "commit", "model", "embed_dim", "depth",
    "heads", "pred_dim", "pred_depth", "batch", "frames", "crop", "tokens", "dtype", "attn_backend",
    "kernels", "compile", "steps", "warmup", "warmup_steps", "shapes", "ms_step", "ms_step_p20", "ms_step_p80",
    "clips_s", "flops_step", "flops_step_counted", "flops_step_analytic", "tflops_s", "mfu", "peak_tflops",
    "peak_source", "peak_mem_gib", "phases", "mask_lengths_mean", "loss_last",
}  # fmt: skip
PHASE_FIELDS = {"target_fwd_ms", "ctx_pred_fwd_bwd_ms", "optimizer_ms", "ema_ms", "total_ms"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_train_step_both_reports_every_field(capsys, tmp_path):
    out = tmp_path / "results.jsonl"
    rc = train_step.main(TINY + ["--impl", "both", "--steps", "3", "--warmup", "1", "--phase-steps", "1",
                                 "--out", str(out)])  # fmt: skip
    assert rc == 0
    rows = _json_lines(capsys.readouterr().out)
    assert [r["impl"] for r in rows] == ["reference", "fast", "ratio"]
    assert _json_lines(out.read_text()) == rows
    for r in rows[:2]:
        assert IMPL_FIELDS <= set(r), IMPL_FIELDS - set(r)
        assert PHASE_FIELDS <= set(r["phases"]), r["phases"]
        assert r["steps"] == 3 and r["ms_step"] > 0 and r["clips_s"] > 0
        assert r["ms_step_p20"] <= r["ms_step"] <= r["ms_step_p80"]
        assert r["flops_step"] > 0 and r["flops_step_analytic"] > 0 and 0 < r["mfu"]
        assert r["peak_mem_gib"] is None  # CPU
        assert r["loss_last"] > 0
    ref, fast = rows[0], rows[1]
    assert "host_sync_ms" in ref["phases"] and "host_sync_ms" not in fast["phases"]
    assert ref["kernels"] == "none" and fast["kernels"] in ("torch", "triton")
    # The reference recomputes the patch embedding once per mask config; the fast path once per step.
    assert ref["flops_step"] > fast["flops_step"]
    # The analytic formula matches FlopCounterMode on the same step's masks to a few percent.
    for r in (ref, fast):
        assert abs(r["flops_step_analytic_step0"] / r["flops_step_counted"] - 1) < 0.05, r
    ratio = rows[2]
    assert ratio["speedup_fast_vs_reference"] == pytest.approx(ref["ms_step"] / fast["ms_step"], rel=1e-3)
    assert ratio["ms_ratio_fast_over_reference"] == pytest.approx(fast["ms_step"] / ref["ms_step"], rel=1e-3)


def test_train_step_diagnostics(capsys):
    """--mask-cycle, --profile-steps and --attn-shape-cost (what a slow GPU step is spent on)."""
    rc = train_step.main(TINY + ["--impl", "fast", "--steps", "3", "--warmup", "3", "--phase-steps", "0",
                                 "--no-mfu", "--mask-cycle", "3", "--profile-steps", "1", "--attn-shape-cost"])
    assert rc == 0
    (row,) = _json_lines(capsys.readouterr().out)
    # Warm-up (steps 1-3) and the FLOP-count step 0 saw every mask of the cycle: nothing new when timed.
    assert row["mask_cycle"] == 3 and row["attn_new_shapes_per_step"] == 0
    prof = row["profile"]
    assert prof["steps"] == 1 and prof["wall_ms"] > 0 and prof["top_cpu_ops"]
    assert any("scaled_dot_product" in op for op in prof["attention_ops"]), prof["attention_ops"]
    for role in ("context", "predictor"):
        for cost in row["attn_shape_cost"][role].values():
            assert cost["new_ms"] > 0 and cost["again_ms"] > 0, cost
    # Without the cycle, the official masks bring new lengths in later steps (the counter can fail).
    setup = train_step.make_setup(train_step.build_parser().parse_args(TINY))
    assert sum(train_step.new_attention_shapes(setup, [0, 1, 2], range(3, 9))) > 0


def test_train_step_shapes_steady_and_cold(capsys):
    """--shapes steady (default) builds every measured step's attention lengths in the warm-up;
    --shapes cold times new lengths (the same steps as above bring some) and refuses --impl both,
    whose second implementation would reuse the first one's cuDNN graphs."""
    args = ["--impl", "fast", "--steps", "6", "--warmup", "2", "--phase-steps", "1", "--no-mfu", "--no-flops"]
    assert train_step.main(TINY + args) == 0
    (steady,) = _json_lines(capsys.readouterr().out)
    assert steady["shapes"] == "steady" and steady["attn_new_shapes_per_step"] == 0
    assert steady["warmup_steps"] == 2 + 6 + 1, steady
    assert train_step.main(TINY + args + ["--shapes", "cold"]) == 0
    (cold,) = _json_lines(capsys.readouterr().out)
    assert cold["shapes"] == "cold" and cold["warmup_steps"] == 2 and cold["attn_new_shapes_per_step"] > 0, cold
    with pytest.raises(SystemExit):
        train_step.main(TINY + ["--shapes", "cold", "--impl", "both"])
    assert "one implementation per process" in capsys.readouterr().err


def test_check_loss_reference_and_fast_agree_fp32(capsys):
    rc = train_step.main(TINY + ["--check-loss", "5"])
    row = _json_lines(capsys.readouterr().out)[0]
    assert rc == 0 and row["pass"], row
    assert row["mode"] == "check_loss" and row["steps"] == 5 and row["tolerance"] == 1e-5
    assert len(row["losses_reference"]) == len(row["losses_fast"]) == 5
    assert row["max_rel_diff"] <= 1e-5
    assert row["param_max_abs_diff"] < 1e-6
    # The weights really moved (5 AdamW steps), so the parity covers the update and the EMA too.
    assert row["losses_reference"][0] != row["losses_reference"][-1]


def test_check_loss_every_fast_option_agrees_fp32(capsys):
    """Packed context, sparse patch embed and the fused AdamW+EMA step together, against the
    official structure from the same weights, masks and clips."""
    rc = train_step.main(TINY + ["--check-loss", "3", "--pack-context", "--sparse-embed",
                                 "--fused-optimizer", "on"])  # fmt: skip
    row = _json_lines(capsys.readouterr().out)[0]
    assert rc == 0 and row["pass"] and row["max_rel_diff"] <= 1e-5, row
    assert row["param_max_abs_diff"] < 1e-6
    assert row["losses_reference"][0] != row["losses_reference"][-1]


def test_check_loss_with_triton_kernels_in_interpreter(capsys, monkeypatch):
    """The Triton kernels (run by the interpreter on CPU) against the official structure."""
    from vjepa_fast.kernels import HAS_TRITON, INTERPRET

    if not (HAS_TRITON and INTERPRET):
        pytest.skip("needs triton with TRITON_INTERPRET=1 at import")
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "triton")
    rc = train_step.main(TINY + ["--check-loss", "2"])
    row = _json_lines(capsys.readouterr().out)[0]
    assert row["kernels"] == "triton"
    assert rc == 0 and row["pass"] and row["max_rel_diff"] <= 1e-5, row


TINY_V2 = ["--device", "cpu", "--arch", "v2", "--model", "vit_tiny", "--embed-dim", "96", "--depth", "2",
           "--heads", "3", "--pred-dim", "48", "--pred-depth", "2", "--pred-heads", "3", "--frames", "8",
           "--crop", "64", "--batch", "2"]  # fmt: skip


def test_train_step_v2_reference_and_fast_side_by_side(capsys):
    """--arch v2: the official V2 structure (reference_step_v2.py: per-group loops, every block
    checkpointed, _foreach EMA) against the fast path, one fast row (and ratio) per
    activation-checkpointing setting; FLOP counts include the checkpointed blocks' second forward."""
    rc = train_step.main(TINY_V2 + ["--impl", "both", "--steps", "2", "--warmup", "1", "--phase-steps", "1",
                                    "--activation-checkpointing", "0,all"])  # fmt: skip
    assert rc == 0
    rows = _json_lines(capsys.readouterr().out)
    assert [r["impl"] for r in rows] == ["reference", "fast", "ratio", "fast", "ratio"]
    ref, fast0, fast_all = rows[0], rows[1], rows[3]
    for r in (ref, fast0, fast_all):
        assert IMPL_FIELDS <= set(r), IMPL_FIELDS - set(r)
        assert r["arch"] == "v2" and r["dataset_fpcs"] == [8, 8, 8] and r["tokens"] == 64
        assert r["ms_step"] > 0 and r["loss_last"] > 0 and r["peak_mem_gib"] is None  # CPU
        assert abs(r["flops_step_analytic_step0"] / r["flops_step_counted"] - 1) < 0.05, r
    assert ref["activation_checkpointing"] == [2, 2] and ref["grad_scaler"] is False  # fp32: no scaler
    assert fast0["activation_checkpointing"] == [0, 0] and fast_all["activation_checkpointing"] == [2, 2]
    assert fast0["flops_recomputed_step0"] == 0 < fast_all["flops_recomputed_step0"] == ref["flops_recomputed_step0"]
    # Model FLOPs (the MFU's) count a recomputed forward once: equal with and without checkpointing.
    assert fast0["flops_step_analytic"] == fast_all["flops_step_analytic"]
    # The reference embeds each group's whole clip once per mask config; the fast path once.
    assert ref["flops_step_analytic"] > fast0["flops_step_analytic"]
    assert [r["activation_checkpointing_fast"] for r in (rows[2], rows[4])] == [[0, 0], [2, 2]]


def test_train_step_out_of_memory_setting_is_reported_and_the_next_one_runs(capsys, monkeypatch):
    """A setting too light on activation checkpointing for the GPU: an error row names it, the next
    setting still runs, and the exit status says something failed."""
    real = train_step.bench_impl

    def bench(impl, setup, *a, **kw):
        if impl == "fast" and setup.activation_checkpointing == "0":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(impl, setup, *a, **kw)

    monkeypatch.setattr(train_step, "bench_impl", bench)
    rc = train_step.main(TINY_V2 + ["--impl", "fast", "--steps", "1", "--warmup", "0", "--phase-steps", "0",
                                    "--no-flops", "--no-mfu", "--activation-checkpointing", "0,all"])  # fmt: skip
    rows = _json_lines(capsys.readouterr().out)
    assert rc == 1 and len(rows) == 2
    assert rows[0]["activation_checkpointing"] == "0" and rows[0]["error"].startswith("out of memory")
    assert rows[1]["activation_checkpointing"] == [2, 2] and rows[1]["ms_step"] > 0


def test_check_loss_v2_two_clip_lengths_every_fast_option_fp32(capsys):
    """Two clip-length groups (8 and 4 frames in one batch of 3), packed context, the fused
    AdamW+EMA step and activation checkpointing on the fast path: the same losses and weights as
    the official V2 structure in fp32."""
    rc = train_step.main(TINY_V2 + ["--fpcs", "8,4", "--batch", "3", "--check-loss", "3", "--pack-context",
                                    "--fused-optimizer", "on", "--activation-checkpointing", "1"])  # fmt: skip
    row = _json_lines(capsys.readouterr().out)[0]
    assert rc == 0 and row["pass"] and row["max_rel_diff"] <= 1e-5, row
    assert row["arch"] == "v2" and row["dataset_fpcs"] == [8, 4] and row["activation_checkpointing_fast"] == "1"
    assert row["param_max_abs_diff"] < 1e-6
    assert row["losses_reference"][0] != row["losses_reference"][-1]


def test_check_loss_v2_with_triton_kernels_in_interpreter(capsys, monkeypatch):
    """V2 with the Triton kernels (RoPE, gather, loss; run by the interpreter) against the official
    V2 structure."""
    from vjepa_fast.kernels import HAS_TRITON, INTERPRET

    if not (HAS_TRITON and INTERPRET):
        pytest.skip("needs triton with TRITON_INTERPRET=1 at import")
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "triton")
    rc = train_step.main(TINY_V2 + ["--check-loss", "2"])
    row = _json_lines(capsys.readouterr().out)[0]
    assert row["kernels"] == "triton" and row["arch"] == "v2"
    assert rc == 0 and row["pass"] and row["max_rel_diff"] <= 1e-5, row


def test_profile_step_writes_trace_and_table(capsys, tmp_path):
    rc = profile_step.main(TINY + ["--steps", "1", "--warmup", "1", "--out-dir", str(tmp_path),
                                   "--row-limit", "5"])  # fmt: skip
    assert rc == 0
    summary = _json_lines(capsys.readouterr().out)[-1]
    trace = json.loads((tmp_path / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"phase/target_fwd", "phase/ctx_pred_fwd_bwd", "phase/optimizer", "phase/ema"} <= names
    table = (tmp_path / "top_ops.txt").read_text()
    assert "Self CPU" in table and "aten::" in table
    assert summary["bench"] == "profile_step" and PHASE_FIELDS <= set(summary["phases"])
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["files"]["trace"] == str(tmp_path / "trace.json")


def test_profile_step_from_pretrain_config(capsys, tmp_path):
    cfg = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"
    overrides = ["data.batch_size=1", "model.embed_dim=48", "model.depth=2", "model.pred_depth=1",
                 "model.pred_embed_dim=24"]  # fmt: skip
    rc = profile_step.main(["--config", str(cfg), "--impl", "reference", "--steps", "1", "--warmup", "0",
                            "--out-dir", str(tmp_path), *overrides])  # fmt: skip
    assert rc == 0
    summary = _json_lines(capsys.readouterr().out)[-1]
    assert summary["config"] == str(cfg) and summary["batch"] == 1
    sizes = tuple(summary[k] for k in ("embed_dim", "depth", "pred_dim", "pred_depth"))
    assert sizes == (48, 2, 24, 1)
    assert "host_sync_ms" in summary["phases"]
    assert (tmp_path / "trace.json").stat().st_size > 0


def test_train_step_runs_as_a_script(tmp_path):
    """The CLI as users call it: its own sys.path handling, --out, and exit status 1 when the
    loss check fails (here forced with an impossible tolerance)."""
    import os
    import subprocess

    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, str(BENCH / "train_step.py"), *TINY, "--check-loss", "1", "--tol", "-1",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    row = json.loads(out.read_text())
    assert row == json.loads(proc.stdout)
    assert row["pass"] is False and row["max_rel_diff"] <= 1e-5


def test_gpu_measure_script_runs_at_tiny_size(tmp_path):
    """The one-call GPU script (benchmarks/gpu_measure.sh) end to end at CPU sizes: every stage it
    runs parses and succeeds, writes its JSON lines, and the summary reports each stage and figure."""
    env = {**os.environ, "SIZE": "tiny", "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "VJEPA_FAST_COMMIT": "abc1234"}  # fmt: skip
    proc = subprocess.run(["bash", str(BENCH / "gpu_measure.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.tgz", "measure.log", "results.jsonl", "summary.txt"]
    rows = _json_lines((tmp_path / "results.jsonl").read_text())
    env_row = next(r for r in rows if r.get("kind") == "environment")
    assert env_row["commit"] == "abc1234" and env_row["copy_gbps"] > 0 and env_row["matmul_tflops"] > 0
    impls = [r.get("impl", r.get("mode")) for r in rows if r.get("bench") == "train_step"]
    # V1: vitl, vitl_cold (a reference, a cuDNN and a flash row, each its own process), 4 ablations,
    # vitl_all, vith (ratios of the two "both" stages); V2: v2l and v2g, each a reference and a fast row (and ratio) per activation-checkpointing setting
    v1 = [r.get("impl", r.get("mode")) for r in rows if r.get("bench") == "train_step" and r.get("arch") != "v2"]
    v2 = [r for r in rows if r.get("bench") == "train_step" and r.get("arch") == "v2"]
    assert v1.count("fast") == 9 and v1.count("reference") == 3, v1
    assert impls.count("ratio") == 2 + 4, impls
    assert [r["impl"] for r in v2 if r.get("impl") in ("reference", "fast")] == ["reference", "fast", "fast"] * 2, v2
    assert [any(r["activation_checkpointing"]) for r in v2 if r.get("impl") == "fast"] == [False, True] * 2, v2
    checks = [r for r in rows if r.get("mode") == "check_loss"]
    assert len(checks) == 3 and all(r["pass"] for r in checks), checks
    fast = [r for r in rows if r.get("impl") == "fast"]
    assert any(r.get("profile") and r.get("attn_shape_cost") for r in fast), "ablation diagnostics missing"
    cold = [r for r in rows if r.get("shapes") == "cold"]
    # On the CPU the fast path's default attention is SDPA's own choice (auto).
    assert sorted((r["impl"], r["attn_backend"]) for r in cold) == [
        ("fast", "auto"), ("fast", "flash"), ("reference", "sdpa-default")], cold
    summary = (tmp_path / "summary.txt").read_text()
    for stage in ("env", "kernels", "vitl", "vitl_cold", "ablate", "attn", "vitl_all", "loss", "loss_all",
                  "vith", "v2l", "v2_loss", "v2g"):
        assert re.search(rf"^{stage}\s+ok\s", summary, re.M), summary
    assert re.search(r"^kbench\s+skipped", summary, re.M) and "loss check" in summary and "PASS" in summary
    assert re.search(r"kernel tests: \d+ passed", summary), summary


def test_bench_data_reports_decode_rates(capsys, tmp_path):
    """benchmarks/bench_data.py (decode + augment clips/s per worker) on a few demo clips."""
    import bench_data
    from vjepa_fast.demo_data import make_demo_data

    make_demo_data(str(tmp_path / "demo"), n_train=4, n_val=2, frames=16, size=32)
    assert bench_data.main(["--seconds", "0.05", "--crop", "32", "--batch", "2", "--demo-dir",
                            str(tmp_path / "demo")]) in (0, None)  # fmt: skip
    rows = _json_lines(capsys.readouterr().out)
    env = rows[0]
    assert env["bench"] == "env" and env["commit"] and env["threads"] == 1
    demo = [r for r in rows if r.get("source") == "demo_64px" or r.get("src_res") == "32x32"]
    from vjepa_fast.decoders import available_decoders

    for decoder in available_decoders():  # one decode rate per installed decoder, same clips
        assert any(r["bench"] == "decode" and r["decoder"] == decoder and r["clips_per_s"] > 0 for r in demo), rows
    assert any(r["bench"] == "decode+augment" and r["clips_per_s"] > 0 for r in demo), rows
