"""The Trainer's fused optimizer step (``meta.fused_optimizer``), the target working copy
(``meta.target_working_copy``) and the shared step (:class:`vjepa_fast.train.TrainStep`).

The fused path must compute what torch's AdamW + the official EMA compute (same groups, schedules,
clipping, bias corrections), keep torch's AdamW state-dict format (resume, official files), and the
working copy must give the autocast forward bit for bit.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_distributed import WORKER  # the torchrun worker: several pretrain runs per launch
from vjepa_fast.config import PretrainConfig
from vjepa_fast.optim import FusedAdamWEMA, build_optimizer
from vjepa_fast.train import (
    TargetWorkingCopy,
    Trainer,
    TrainStep,
    build_model_from_config,
    resolve_fused_optimizer,
    resolve_target_working_copy,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"
SMALL = ["model.embed_dim=48", "model.depth=2", "model.pred_depth=1", "model.pred_embed_dim=24"]


def tiny_cfg(folder, *extra):
    # ipe 2, warmup 1 epoch, clip_grad 10 (tiny_cpu.yaml): clipping is active from step 4 on.
    overrides = [f"logging.folder={folder}", "model.model_name=vit_tiny", "data.batch_size=2", *SMALL,
                 "optimization.ipe=2", "optimization.epochs=4", "optimization.warmup=1", "logging.log_every=2",
                 "optimization.max_steps=8", "meta.device=cpu", *extra]
    return PretrainConfig.from_yaml(TINY, overrides)


def run(folder, *extra) -> Trainer:
    trainer = Trainer(tiny_cfg(folder, *extra), out=lambda s: None)
    trainer.fit()
    return trainer


def losses(folder) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader(open(Path(folder) / "jepa_r0.csv"))]


def assert_same_model(a, b, exact: bool):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        if exact:
            assert torch.equal(x, y), name
        else:
            torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7, msg=name)


def assert_same_opt_state(a: dict, b: dict, exact: bool):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i, st in a["state"].items():
        assert st.keys() == b["state"][i].keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert st["step"].device.type == b["state"][i]["step"].device.type == "cpu"
        for k, v in st.items():
            if exact or k == "step":
                assert torch.equal(v, b["state"][i][k]), (i, k)
            else:
                torch.testing.assert_close(b["state"][i][k], v, rtol=1e-6, atol=1e-9, msg=f"{i} {k}")


# ------------------------------------------------------------------------------------------------
# fused optimizer step vs torch AdamW + fused EMA
# ------------------------------------------------------------------------------------------------


def test_fused_optimizer_equals_torch_adamw_with_torch_kernels(tmp_path, monkeypatch):
    """6 steps (clipping on for the last 2), same init and data. With the PyTorch references the
    two paths run the very same tensor ops (torch's single-tensor AdamW on the CPU, the official
    EMA formula), so everything is bit-identical: parameters, EMA target, losses, AdamW state."""
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "torch")
    plain = run(tmp_path / "torch", "optimization.max_steps=6", "meta.fused_optimizer=false")
    fused = run(tmp_path / "fused", "optimization.max_steps=6", "meta.fused_optimizer=true")
    assert plain.fused_optimizer is None and isinstance(fused.fused_optimizer, FusedAdamWEMA)
    assert losses(tmp_path / "torch") == losses(tmp_path / "fused")
    assert_same_model(plain.model, fused.model, exact=True)
    assert_same_opt_state(plain.optimizer.state_dict(), fused.optimizer.state_dict(), exact=True)
    # the comparison is not vacuous: weights, target and clipping all moved / ran
    start = build_model_from_config(plain.cfg)
    assert not torch.equal(start.target_encoder.blocks[0].mlp.fc1.weight, fused.model.target_encoder.blocks[0].mlp.fc1.weight)
    rows = list(csv.DictReader(open(tmp_path / "fused" / "jepa_r0.csv")))
    assert [float(r["enc-grad-norm"]) > 0 for r in rows] == [False] * 4 + [True] * 2


def test_fused_optimizer_with_triton_kernels_in_interpreter(tmp_path, monkeypatch):
    """The Triton kernel itself (interpreted on the CPU) against torch's AdamW + EMA, 3 steps, the
    rest of the model on the same Triton kernels in both runs."""
    from vjepa_fast.kernels import HAS_TRITON, INTERPRET

    if not (HAS_TRITON and INTERPRET):
        pytest.skip("needs triton with TRITON_INTERPRET=1 at import")
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "triton")
    plain = run(tmp_path / "torch", "optimization.max_steps=3", "meta.fused_optimizer=false")
    fused = run(tmp_path / "fused", "optimization.max_steps=3", "meta.fused_optimizer=true")
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "fused")), torch.tensor(losses(tmp_path / "torch")),
                               rtol=1e-6, atol=0)
    assert_same_model(plain.model, fused.model, exact=False)
    assert_same_opt_state(plain.optimizer.state_dict(), fused.optimizer.state_dict(), exact=False)


def test_fused_optimizer_resume_round_trip_and_torch_format(tmp_path, monkeypatch):
    """3 steps, save, resume, 2 more == 5 straight; a torch-AdamW checkpoint resumes into the fused
    path (and the fused path's checkpoint into torch's AdamW) with the same result."""
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "torch")
    straight = run(tmp_path / "a", "optimization.max_steps=5", "meta.fused_optimizer=true")
    run(tmp_path / "b", "optimization.max_steps=3", "meta.fused_optimizer=true")
    resumed = run(tmp_path / "b", "optimization.max_steps=5", "meta.fused_optimizer=true", "meta.load_checkpoint=true")
    assert resumed.step == 5
    assert_same_model(straight.model, resumed.model, exact=True)
    assert_same_opt_state(straight.optimizer.state_dict(), resumed.optimizer.state_dict(), exact=True)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")

    run(tmp_path / "c", "optimization.max_steps=3", "meta.fused_optimizer=false")
    crossed = run(tmp_path / "c", "optimization.max_steps=5", "meta.fused_optimizer=true", "meta.load_checkpoint=true")
    assert_same_model(straight.model, crossed.model, exact=True)
    run(tmp_path / "d", "optimization.max_steps=3", "meta.fused_optimizer=true")
    back = run(tmp_path / "d", "optimization.max_steps=5", "meta.fused_optimizer=false", "meta.load_checkpoint=true")
    assert_same_model(straight.model, back.model, exact=True)

    # the file holds a plain torch AdamW state dict, loadable by torch's AdamW as the official loader does
    ck = torch.load(tmp_path / "b" / "jepa-latest.pth.tar", weights_only=True)
    model = build_model_from_config(straight.cfg)
    opt = build_optimizer(model.encoder, model.predictor)
    opt.load_state_dict(ck["opt"])
    assert [len(g["params"]) for g in opt.param_groups] == [len(g["params"]) for g in ck["opt"]["param_groups"]]
    assert all(float(st["step"]) == 5.0 for st in opt.state.values())


def test_fused_step_normalises_loaded_steps_and_refuses_unsupported_groups():
    model = build_model_from_config(tiny_cfg("unused"))
    opt = build_optimizer(model.encoder, model.predictor)
    fused = FusedAdamWEMA(opt, model.target_encoder.parameters(), model.encoder.parameters())
    for p in model.encoder.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    fused.step(0.99)
    sd = fused.state_dict()
    sd["state"][next(iter(sd["state"]))]["step"] = 7  # a Python number, as very old torch versions saved it
    fused.load_state_dict(sd)
    steps = [st["step"] for st in opt.state.values()]
    assert all(isinstance(s, torch.Tensor) and s.device.type == "cpu" for s in steps)
    assert sorted(float(s) for s in steps)[-1] == 7.0
    opt.param_groups[1]["amsgrad"] = True
    with pytest.raises(NotImplementedError, match="amsgrad"):
        fused.step(0.99)
    with pytest.raises(TypeError, match="AdamW"):
        FusedAdamWEMA(torch.optim.SGD(model.predictor.parameters(), lr=0.1))


def test_fused_optimizer_fp16_grad_scaler_and_skipped_step(tmp_path, monkeypatch):
    """fp16 autocast with a GradScaler: the scaler unscales / steps the fused optimizer; on a NaN
    gradient it skips AdamW and the EMA still runs, as on the torch path."""
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "torch")
    trainers = {}
    for name, flag in (("torch", "false"), ("fused", "true")):
        tr = Trainer(tiny_cfg(tmp_path / name, "meta.dtype=float16", f"meta.fused_optimizer={flag}",
                              "meta.target_working_copy=false"), out=lambda s: None)
        for step in range(3):
            clips = tr.source(step)
            if step == 1:
                clips = clips.clone()
                clips[0, 0, 0, 0, 0] = float("nan")
            masks_enc, masks_pred = tr.masks.sample(2, step)
            tr.train_step(clips, masks_enc, masks_pred)
        trainers[name] = tr
    assert trainers["torch"].scaler.get_scale() == trainers["fused"].scaler.get_scale() < 65536.0  # one skip
    assert_same_model(trainers["torch"].model, trainers["fused"].model, exact=True)
    assert_same_opt_state(trainers["torch"].optimizer.state_dict(), trainers["fused"].optimizer.state_dict(), exact=True)


# ------------------------------------------------------------------------------------------------
# bf16 working copy of the target encoder
# ------------------------------------------------------------------------------------------------


def test_target_working_copy_is_bit_identical_under_bf16_autocast(tmp_path, monkeypatch):
    """4 steps of bf16 autocast training with and without the copy: same target features, losses
    and weights bit for bit, after EMA updates (each refresh picks up the new target)."""
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "torch")
    a = Trainer(tiny_cfg(tmp_path / "a", "meta.dtype=bfloat16", "meta.target_working_copy=false"), out=lambda s: None)
    b = Trainer(tiny_cfg(tmp_path / "b", "meta.dtype=bfloat16", "meta.target_working_copy=true"), out=lambda s: None)
    assert a.target_copy is None and b.target_copy is not None
    first = b.target_copy.copies[0].clone()
    for step in range(4):
        clips = a.source(step)
        with a.autocast():
            h_ref = a.model.forward_target(clips)
            h_copy = b.target_copy(clips)
        assert h_ref.dtype == h_copy.dtype and torch.equal(h_ref, h_copy), step
        assert not torch.equal(h_ref, a.model.forward_target(clips))  # autocast really runs in bf16
        masks = a.masks.sample(2, step)
        b.masks.sample(2, step)
        ma, mb = a.train_step(clips, *masks), b.train_step(clips, *masks)
        assert torch.equal(ma["loss"], mb["loss"]), step
    assert_same_model(a.model, b.model, exact=True)
    assert not torch.equal(first, b.target_copy.copies[0])  # the refreshes tracked the EMA
    # fp32 masters stay; the copy holds only Linear/Conv tensors and shares everything else
    copy = b.target_copy
    target = b.model.target_encoder
    assert all(p.dtype == torch.float32 for p in target.parameters())
    assert all(c.dtype == torch.bfloat16 for c in copy.copies)
    assert len(copy.copies) == 2 + 8 * len(target.blocks)  # patch conv + (qkv, proj, fc1, fc2) x (w, b)
    assert copy.module.norm.weight is target.norm.weight and copy.module.pos_embed is target.pos_embed
    assert copy.module.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert set(b.model.state_dict()) == set(a.model.state_dict())


def test_target_working_copy_follows_resume_and_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("VJEPA_FAST_KERNELS", "torch")
    run(tmp_path, "optimization.max_steps=2", "meta.dtype=bfloat16")
    tr = Trainer(tiny_cfg(tmp_path, "meta.dtype=bfloat16", "meta.load_checkpoint=true"), out=lambda s: None)
    assert tr.target_copy is not None  # auto: on under bf16
    tr.resume(tmp_path / "jepa-latest.pth.tar")
    for low, master in zip(tr.target_copy.copies, tr.target_copy.masters):
        assert torch.equal(low, master.to(torch.bfloat16))
    notes = []
    fp32 = Trainer(tiny_cfg(tmp_path / "fp32", "meta.target_working_copy=true"), out=notes.append)
    assert fp32.target_copy is None and any("target_working_copy" in n for n in notes)


def test_target_working_copy_composes_with_compile():
    """compile_vjepa replaces target_encoder.forward on the instance; the copy runs that compiled
    forward on its own weights, whether compiled before or after the copy was made."""
    from vjepa_fast.compile import compile_stats, compile_vjepa, reset_compile_stats

    torch._dynamo.reset()
    reset_compile_stats()
    model = build_model_from_config(tiny_cfg("unused"))
    copy = TargetWorkingCopy(model.target_encoder, torch.bfloat16)
    clips = torch.randn(2, 3, 8, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = copy(clips)
        compile_vjepa(model, backend="aot_eager")
        compiled = copy(clips)
        again = TargetWorkingCopy(model.target_encoder, torch.bfloat16)(clips)
    assert copy.module.forward.__func__ is model.target_encoder.forward.__func__
    assert compile_stats()["target"] >= 1
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch.testing.assert_close(again, eager, rtol=0, atol=0)
    # a compiled callable bound to the fp32 target itself would bypass the copy: refused
    target = model.target_encoder
    target.forward = lambda x: type(target).forward(target, x)  # e.g. torch.compile(target.forward)
    with pytest.raises(NotImplementedError, match="not a method bound to the encoder"):
        copy(clips)


def test_resolve_defaults_and_fsdp():
    assert resolve_fused_optimizer(None, "cpu") == (False, None)
    assert resolve_fused_optimizer(True, "cpu") == (True, None)
    on, note = resolve_fused_optimizer(True, "cpu", "fsdp")
    assert not on and "fsdp" in note
    assert resolve_fused_optimizer(None, "cpu", "fsdp") == (False, None)
    assert resolve_target_working_copy(None, torch.bfloat16) == (True, None)
    assert resolve_target_working_copy(None, torch.float16) == (True, None)
    assert resolve_target_working_copy(None, torch.float32) == (False, None)
    assert resolve_target_working_copy(False, torch.bfloat16) == (False, None)
    on, note = resolve_target_working_copy(True, torch.bfloat16, "fsdp")
    assert not on and "fsdp" in note


# ------------------------------------------------------------------------------------------------
# the shared step
# ------------------------------------------------------------------------------------------------


def test_train_step_marks_phases_in_order(tmp_path):
    tr = Trainer(tiny_cfg(tmp_path, "meta.fused_optimizer=true"), out=lambda s: None)
    seen = []
    masks = tr.masks.sample(2, 0)
    tr.train_step_accum([(tr.source(0), *masks)], phase=seen.append)
    assert seen == ["target_fwd", "ctx_pred_fwd_bwd", "optimizer", "ema", None]
    assert isinstance(tr.step_fn, TrainStep) and tr.step == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_step_makes_no_host_sync_on_cuda():
    from vjepa_fast.kernels import HAS_TRITON

    if not HAS_TRITON:
        pytest.skip("needs triton")
    model = build_model_from_config(tiny_cfg("unused")).cuda()
    opt = build_optimizer(model.encoder, model.predictor, fused=False)
    fused = FusedAdamWEMA(opt, model.target_encoder.parameters(), model.encoder.parameters())
    copy = TargetWorkingCopy(model.target_encoder, torch.bfloat16)
    trained = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
    for p in trained:
        p.grad = torch.randn_like(p)
    fused.step(0.99)  # first step: state allocation and launch tables
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            fused.step(0.995)
            copy.refresh()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()



def test_fused_optimizer_under_ddp_and_fsdp_fallback(tmp_path):
    """torchrun, 2 CPU ranks (gloo), 3 steps with clipping: DDP with the fused step (gradients are
    DDP bucket views) equals DDP with torch's AdamW bit for bit; under FSDP the option falls back to
    torch's AdamW and trains as before."""
    from vjepa_fast import load_vjepa_checkpoint

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    common = ["model.model_name=vit_tiny", "data.batch_size=2", *SMALL, "optimization.ipe=2",
              "optimization.epochs=3", "optimization.warmup=0", "optimization.clip_grad=1.0",
              "optimization.max_steps=3", "logging.log_every=1"]
    runs = {"torch": ["meta.fused_optimizer=false"], "fused": ["meta.fused_optimizer=true"],
            "fsdp": ["meta.fused_optimizer=true", "meta.parallel=fsdp"]}
    args = []
    for name, extra in runs.items():
        args += (["--"] if args else []) + [str(TINY), f"logging.folder={tmp_path / name}", *common, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VJEPA_FAST_KERNELS": "torch"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    cfg = tiny_cfg(tmp_path)
    models = {}
    for name in runs:
        models[name] = build_model_from_config(cfg)
        ck = load_vjepa_checkpoint(models[name], tmp_path / name / "jepa-latest.pth.tar")
        assert ck["vjepa_fast"]["step"] == 3 and ck["world_size"] == 2
    assert_same_model(models["torch"], models["fused"], exact=True)
    for (n, a), b in zip(models["torch"].state_dict().items(), models["fsdp"].state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=n)
    assert losses(tmp_path / "torch") == losses(tmp_path / "fused")


def test_packed_context_trainer_matches_per_mask(tmp_path):
    """meta.pack_context + meta.sparse_patch_embed reach the model and train the same weights as
    the per-mask path (float rounding only)."""
    a = run(tmp_path / "a")
    b = run(tmp_path / "b", "meta.pack_context=true", "meta.sparse_patch_embed=true")
    assert b.model.pack_context and b.model.sparse_patch_embed and not a.model.pack_context
    torch.testing.assert_close(losses(tmp_path / "b"), losses(tmp_path / "a"), rtol=1e-5, atol=0)
    assert_same_model(a.model, b.model, exact=False)


def test_attn_table_must_exist(tmp_path):
    with pytest.raises(ValueError, match="attn_table"):
        tiny_cfg(tmp_path, f"meta.attn_table={tmp_path / 'missing.json'}")
