"""The V-JEPA 2 trainer (data.dataset_fpcs): multi-length steps, mask tokens of absent lengths left
alone, exact resume, the cooldown as a run (optimization.is_anneal from anneal_ckpt: weights and AdamW
moments, step 0, linear-decay lr), its resume rules, official V2 checkpoints and released files."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from vjepa_fast.checkpoint import read_checkpoint
from vjepa_fast.config import PretrainConfig
from vjepa_fast.preflight import PreflightError
from vjepa_fast.schedules import LinearDecayLR
from vjepa_fast.train import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"
# A 2-block 48-d RoPE encoder (head_dim 16) and a 1-block 24-d predictor: the loop is under test.
SMALL = ["model.embed_dim=48", "model.depth=2", "model.pred_depth=1", "model.pred_embed_dim=24",
         "model.pred_num_heads=1", "model.use_rope=true", "optimization.clip_grad=null"]
QUIET = dict(out=lambda s: None)


def v2_cfg(folder, *extra, fpcs="[8,4]"):
    frames = max(int(f) for f in fpcs.strip("[]").split(","))
    return PretrainConfig.from_yaml(TINY, [
        f"logging.folder={folder}", f"data.dataset_fpcs={fpcs}", f"data.num_frames={frames}", "data.batch_size=3",
        "optimization.ipe=2",
        "optimization.epochs=3", "optimization.warmup=1", "logging.log_every=2", *SMALL, *extra])


def test_multi_length_run_leaves_the_mask_tokens_of_absent_lengths_untouched(tmp_path):
    cfg = v2_cfg(tmp_path, "optimization.max_steps=3", "model.zero_init_mask_tokens=false")
    trainer = Trainer(cfg, **QUIET)
    assert cfg.num_mask_tokens == 4 and trainer.model.predictor.num_mask_tokens == 4
    before = [t.detach().clone() for t in trainer.model.predictor.mask_tokens]
    result = trainer.fit()
    after = trainer.model.predictor.mask_tokens
    # Batches hold both lengths (8 then 4): groups 0 and 1 train tokens 0 and 1; 2 and 3 get no
    # gradient, so AdamW leaves them exactly as they were (weight decay included).
    assert not torch.equal(before[0], after[0]) and not torch.equal(before[1], after[1])
    assert torch.equal(before[2], after[2]) and torch.equal(before[3], after[3])
    ck = read_checkpoint(result.checkpoint)
    assert ck["vjepa_fast"]["step"] == 3 and "module.backbone.mask_tokens.3" in ck["predictor"]
    assert not any("pos_embed" in k for k in ck["encoder"])  # RoPE: no position table
    rows = list(csv.DictReader(open(result.log)))
    assert [int(r["itr"]) for r in rows] == [0, 1, 2] and float(rows[0]["enc-grad-norm"]) == 0.0


def test_v2_resume_is_exact(tmp_path):
    straight = Trainer(v2_cfg(tmp_path / "a", "optimization.max_steps=5"), **QUIET)
    straight.fit()
    Trainer(v2_cfg(tmp_path / "b", "optimization.max_steps=3"), **QUIET).fit()
    second = Trainer(v2_cfg(tmp_path / "b", "optimization.max_steps=5", "meta.load_checkpoint=true"), **QUIET)
    second.fit()
    assert second.step == 5
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name


def cooldown_cfg(folder, anneal_ckpt, *extra):
    return v2_cfg(folder, "optimization.is_anneal=true", f"optimization.anneal_ckpt={anneal_ckpt}",
                  "optimization.lr=5.0e-4", "optimization.final_lr=1.0e-6", "optimization.warmup=0",
                  "optimization.final_weight_decay=0.04", "optimization.ema=[0.999,0.999]", "data.batch_size=2",
                  *extra, fpcs="[8]")


def test_cooldown_starts_from_the_checkpoints_weights_and_adamw_moments_at_step_0(tmp_path):
    """16-frame-style pretraining at 4 frames, then a cooldown at 8 frames (RoPE: no table to resize)."""
    pre = Trainer(v2_cfg(tmp_path / "pre", "optimization.max_steps=4", fpcs="[4]"), **QUIET).fit()
    ckpt = read_checkpoint(pre.checkpoint)
    lines = []
    cool = Trainer(cooldown_cfg(tmp_path / "cool", pre.checkpoint, "optimization.max_steps=3"), out=lines.append)
    seen = {}

    def source(step):  # called before each step: at step 0 it sees what the cooldown starts from
        if step == 0:
            seen["weights"] = {k: v.clone() for k, v in cool.model.encoder.state_dict().items()}
            seen["opt"] = {k: {n: t.clone() for n, t in st.items()} for k, st in cool.optimizer.state_dict()["state"].items()}
        return cool.source(step)

    result = cool.fit(source)
    assert any("cooldown (optimization.is_anneal)" in line for line in lines)
    for k, v in seen["weights"].items():
        assert torch.equal(v, ckpt["encoder"]["module.backbone." + k]), k
    # the moments and their step counts go on from pretraining (official load_checkpoint, is_anneal)
    assert set(seen["opt"]) == set(ckpt["opt"]["state"])
    for k, st in ckpt["opt"]["state"].items():
        for n, t in st.items():
            assert torch.equal(seen["opt"][k][n], t), (k, n)
    # step reset, linear decay over T_max = int(1.25 * epochs * ipe)
    rows = list(csv.DictReader(open(result.log)))
    sched = LinearDecayLR(5.0e-4, 1.0e-6, int(1.25 * 3 * 2))
    assert [int(r["itr"]) for r in rows] == [0, 1, 2]
    assert [float(r["lr"]) for r in rows] == pytest.approx([sched(s) for s in (1, 2, 3)], rel=1e-12)
    assert [float(r["wd"]) for r in rows] == pytest.approx([0.04] * 3)
    out = read_checkpoint(result.checkpoint)
    assert out["vjepa_fast"]["step"] == 3 and out["vjepa_fast"]["init_from"]["kind"] == "anneal"
    assert out["vjepa_fast"]["init_from"]["path"] == str(pre.checkpoint)


def test_cooldown_resume_rules(tmp_path):
    pre = Trainer(v2_cfg(tmp_path / "pre", "optimization.max_steps=2", fpcs="[4]"), **QUIET).fit()
    folder = tmp_path / "cool"
    Trainer(cooldown_cfg(folder, pre.checkpoint, "optimization.max_steps=2", "meta.load_checkpoint=true"), **QUIET).fit()
    # the folder now holds the cooldown's own checkpoint: without resume_anneal it is not overwritten
    with pytest.raises(PreflightError, match="resume_anneal is false"):
        Trainer(cooldown_cfg(folder, pre.checkpoint, "optimization.max_steps=4", "meta.load_checkpoint=true"), **QUIET)
    with pytest.raises(PreflightError, match="already holds"):
        Trainer(cooldown_cfg(folder, pre.checkpoint, "optimization.max_steps=4"), **QUIET)
    resumed = Trainer(cooldown_cfg(folder, pre.checkpoint, "optimization.max_steps=4", "meta.load_checkpoint=true",
                                   "optimization.resume_anneal=true"), **QUIET)
    resumed.fit()
    assert resumed.step == 4 and resumed.schedules.iteration == 4
    straight = Trainer(cooldown_cfg(tmp_path / "straight", pre.checkpoint, "optimization.max_steps=4"), **QUIET)
    straight.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_cooldown_needs_a_pretraining_checkpoint_with_optimizer_state(tmp_path):
    pre = Trainer(v2_cfg(tmp_path / "pre", "optimization.max_steps=1", fpcs="[4]"), **QUIET).fit()
    ck = read_checkpoint(pre.checkpoint)
    ck["opt"] = None
    no_opt = tmp_path / "no_opt.pt"
    torch.save(ck, no_opt)
    with pytest.raises(PreflightError, match=r"no optimizer state \('opt'\)"):
        Trainer(cooldown_cfg(tmp_path / "c1", no_opt, "optimization.max_steps=1"), **QUIET)
    with pytest.raises(PreflightError, match="optimization.anneal_ckpt"):
        Trainer(cooldown_cfg(tmp_path / "c2", tmp_path / "missing.pt", "optimization.max_steps=1"), **QUIET)
    wide = v2_cfg(tmp_path / "c3", "optimization.max_steps=1", "model.embed_dim=96", "optimization.is_anneal=true",
                  f"optimization.anneal_ckpt={pre.checkpoint}", fpcs="[8]")
    with pytest.raises(PreflightError, match="does not fit the model"):
        Trainer(wide, **QUIET)


def test_start_from_a_released_layout_file(tmp_path):
    """A file in the released layout (vitl.pt & co: position tables a RoPE model does not use, 10
    predictor mask tokens) starts a V2 run through meta.init_from: tables dropped, surplus tokens left
    out, both said; the start check accepts it."""
    pre = Trainer(v2_cfg(tmp_path / "pre", "optimization.max_steps=1"), **QUIET).fit()
    ck = read_checkpoint(pre.checkpoint)
    released = {k: ck[k] for k in ("encoder", "predictor", "target_encoder", "epoch")}
    for key in ("encoder", "target_encoder"):
        released[key] = {**ck[key], "module.backbone.pos_embed": torch.zeros(1, 64, 48)}
    released["predictor"] = {**ck["predictor"], **{f"module.backbone.mask_tokens.{j}": torch.full((1, 1, 24), float(j))
                                                   for j in range(4, 10)}}
    path = tmp_path / "vit_released.pt"
    torch.save(released, path)
    lines = []
    run = Trainer(v2_cfg(tmp_path / "run", "optimization.max_steps=1", f"meta.init_from={path}"), out=lines.append)
    run.fit()
    said = "\n".join(lines)
    assert "dropped (unused with RoPE): pos_embed" in said and "not loaded (beyond the model's 4) [4, 5, 6, 7, 8, 9]" in said
    assert run.init_info["kind"] == "init" and run.step == 1


def test_sync_gc_collects_every_50_steps_and_restores_the_collector(tmp_path, monkeypatch):
    import gc  # noqa: PLC0415

    calls = []
    real = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(gc.isenabled()) or real(*a))
    Trainer(v2_cfg(tmp_path, "optimization.max_steps=2", "meta.sync_gc=true"), **QUIET).fit()
    assert calls and not any(calls) and gc.isenabled()  # collected with the collector off, then on again


_DDP_WORKER = """
import sys
from vjepa_fast.config import PretrainConfig
from vjepa_fast.distributed import cleanup_distributed, init_distributed
from vjepa_fast.train import pretrain
info = init_distributed("cpu")
assert info.world_size == 2
pretrain(PretrainConfig.from_yaml(sys.argv[1], sys.argv[2:]), out=lambda s: None)
cleanup_distributed(info)
"""


def test_two_rank_ddp_run_equals_one_process_averaging_both_ranks(tmp_path):
    """DDP over gloo, 2 processes: the predictor's mask tokens 2 and 3 (no such clip-length group) are
    never used, which DDP accepts only with find_unused_parameters (as the official V2 trainer sets);
    the result equals one process averaging both ranks' micro-batches, and the unused tokens stay."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from vjepa_fast.masks import build_mask_collator  # noqa: PLC0415
    from vjepa_fast.train import SyntheticMultiLengthClips, build_model_from_config  # noqa: PLC0415

    steps = 2
    overrides = ["data.dataset_fpcs=[8,4]", "data.num_frames=8", "data.batch_size=2", "optimization.ipe=2",
                 "optimization.epochs=3", "optimization.warmup=1", f"optimization.max_steps={steps}",
                 "logging.log_every=1", "meta.device=cpu", *SMALL]
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(TINY),
           f"logging.folder={tmp_path / 'ddp'}", *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    cfg = PretrainConfig.from_yaml(TINY, [f"logging.folder={tmp_path / 'ref'}", *overrides])
    d = cfg.data
    ref = Trainer(cfg, **QUIET)
    sources = [SyntheticMultiLengthClips(d.batch_size, d.dataset_fpcs, d.crop_size, "cpu", cfg.meta.seed, r) for r in (0, 1)]
    masks = [build_mask_collator(d.mask_type, cfg.mask_dicts(), crop_size=d.crop_size, patch_size=d.patch_size,
                                 tubelet_size=d.tubelet_size, seed=cfg.meta.seed, rank=r, dataset_fpcs=d.dataset_fpcs)
             for r in (0, 1)]
    for step in range(steps):
        micro = []
        for r in (0, 1):
            batch = sources[r](step)
            groups = masks[r].sample_groups(batch.fpcs, step)
            micro.append(([batch.clips[g.fpc] for g in groups], [g.masks_enc for g in groups], [g.masks_pred for g in groups]))
        ref.train_step_accum(micro)
    ck = read_checkpoint(tmp_path / "ddp" / "jepa-latest.pth.tar")
    assert ck["world_size"] == 2 and ck["vjepa_fast"]["step"] == steps
    for key in ("encoder", "predictor", "target_encoder"):
        got = {k.removeprefix("module.backbone."): v for k, v in ck[key].items()}
        for name, want in getattr(ref.model, key).state_dict().items():
            torch.testing.assert_close(got[name], want, atol=1e-5, rtol=1e-5, msg=f"{key}.{name}")
    fresh = build_model_from_config(cfg).predictor.state_dict()
    for j in (2, 3):
        assert torch.equal(ck["predictor"][f"module.backbone.mask_tokens.{j}"], fresh[f"mask_tokens.{j}"])
