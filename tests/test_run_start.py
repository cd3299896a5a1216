"""How a pretraining run starts: resume, meta.init_from, and the mistakes refused before any work
(a checkpoint with no steps left, a changed geometry, an existing run in the folder, a wrong file)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from vjepa_fast.checkpoint import CheckpointError, read_checkpoint
from vjepa_fast.config import PretrainConfig
from vjepa_fast.preflight import PreflightError, config_changes
from vjepa_fast.train import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"
SMALL = ["model.embed_dim=48", "model.depth=1", "model.pred_depth=1", "model.pred_embed_dim=24"]


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_for(folder, *extra):
    return PretrainConfig.from_yaml(TINY, [f"logging.folder={folder}", "data.batch_size=2", *SMALL,
                                           "optimization.ipe=2", "optimization.epochs=4", "optimization.warmup=1", "optimization.max_steps=null",
                                           "logging.log_every=1", *extra])


def run(folder, *extra, lines=None):
    trainer = Trainer(cfg_for(folder, *extra), out=(lines.append if lines is not None else lambda s: None))
    return trainer, trainer.fit()


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


# ------------------------------------------------------------------------------------------------
# resume with no steps left
# ------------------------------------------------------------------------------------------------
def test_resume_at_or_past_the_total_is_refused_before_any_work(tmp_path):
    run(tmp_path, "optimization.max_steps=4")
    before = snapshot(tmp_path)
    for total in ("optimization.max_steps=4", "optimization.max_steps=3"):
        with pytest.raises(PreflightError) as ei:
            Trainer(cfg_for(tmp_path, total, "meta.load_checkpoint=true"), out=lambda s: None)
        msg = str(ei.value)
        assert "jepa-latest.pth.tar has already trained 4 steps (epoch 2)" in msg
        assert f"this run's total is {total[-1]}" in msg and "optimization.max_steps=" in msg
        assert "raise optimization.epochs" in msg and "meta.init_from" in msg
    assert snapshot(tmp_path) == before  # nothing written, not even params-pretrain.yaml


def test_official_checkpoint_of_a_later_epoch_is_refused(tmp_path):
    """An official file records whole epochs: epoch 5 x ipe 2 = step 10 >= this run's 8 steps."""
    run(tmp_path / "ours", "optimization.max_steps=2")
    ck = read_checkpoint(tmp_path / "ours" / "jepa-latest.pth.tar")
    official = {k: v for k, v in ck.items() if k != "vjepa_fast"}
    official["epoch"] = 5
    (tmp_path / "run").mkdir()
    torch.save(official, tmp_path / "run" / "e5.pth.tar")
    with pytest.raises(PreflightError, match=r"e5\.pth\.tar has already trained 10 steps \(epoch 5\).*total is 8"):
        Trainer(cfg_for(tmp_path / "run", "meta.load_checkpoint=true", "meta.read_checkpoint=e5.pth.tar"),
                out=lambda s: None)


def test_fit_refuses_a_run_without_steps_even_when_the_start_check_is_skipped(tmp_path):
    run(tmp_path, "optimization.max_steps=2")
    trainer = Trainer(cfg_for(tmp_path, "optimization.max_steps=2", "meta.load_checkpoint=true"), preflight=False,
                      out=lambda s: None)
    with pytest.raises(PreflightError, match="already trained 2 steps"):
        trainer.fit()


# ------------------------------------------------------------------------------------------------
# a new run where a run already is; a resume without a checkpoint; a file that is not a pretraining one
# ------------------------------------------------------------------------------------------------
def test_new_run_does_not_overwrite_an_existing_run(tmp_path):
    run(tmp_path, "optimization.max_steps=2")
    before = snapshot(tmp_path)
    with pytest.raises(PreflightError) as ei:
        Trainer(cfg_for(tmp_path, "optimization.max_steps=4"), out=lambda s: None)
    msg = str(ei.value)
    assert "already holds the checkpoint of a run at step 2" in msg
    assert "meta.load_checkpoint=true" in msg and "meta.init_from=" in msg
    assert snapshot(tmp_path) == before


def test_load_checkpoint_without_a_checkpoint(tmp_path):
    with pytest.raises(PreflightError, match=r"no checkpoint to resume: .*jepa-latest\.pth\.tar does not exist"):
        Trainer(cfg_for(tmp_path, "meta.load_checkpoint=true"), out=lambda s: None)


def test_resume_or_init_from_a_probe_file_names_the_file_and_the_key(tmp_path):
    probe = tmp_path / "probe.pth.tar"
    torch.save({"classifier": {"w": torch.zeros(1)}, "opt": None, "epoch": 3}, probe)
    with pytest.raises(PreflightError) as ei:
        Trainer(cfg_for(tmp_path, "meta.load_checkpoint=true", "meta.read_checkpoint=probe.pth.tar"),
                out=lambda s: None)
    msg = str(ei.value)
    assert f"meta.read_checkpoint: {probe} has no encoder, predictor, target_encoder (a probe checkpoint)" in msg
    assert "load_encoder" not in msg and "checkpoint dict" not in msg
    with pytest.raises(PreflightError, match=r"meta\.init_from: .*probe\.pth\.tar has no encoder"):
        Trainer(cfg_for(tmp_path / "new", f"meta.init_from={probe}"), out=lambda s: None)
    with pytest.raises(PreflightError, match=r"meta\.init_from: checkpoint not found: .*nope\.pth\.tar"):
        Trainer(cfg_for(tmp_path / "new", f"meta.init_from={tmp_path / 'nope.pth.tar'}"), out=lambda s: None)


# ------------------------------------------------------------------------------------------------
# geometry / model / mask changes on resume
# ------------------------------------------------------------------------------------------------
def test_resume_with_other_geometry_lists_every_change_and_the_key(tmp_path):
    run(tmp_path, "optimization.max_steps=2")
    before = snapshot(tmp_path)
    changed = ["data.crop_size=96", "data.num_frames=4", "model.pred_depth=2", "mask.0.num_blocks=4",
               "data.mask_truncation=random"]
    with pytest.raises(PreflightError) as ei:
        Trainer(cfg_for(tmp_path, "meta.load_checkpoint=true", *changed), out=lambda s: None)
    msg = str(ei.value)
    for line in ("data.crop_size: 64 -> 96", "data.num_frames: 8 -> 4", "data.mask_truncation: 'earliest' -> 'random'",
                 "mask[0].num_blocks: 8 -> 4", "model.pred_depth: 1 -> 2"):
        assert line in msg, line
    assert "meta.allow_resume_changes=true" in msg
    assert snapshot(tmp_path) == before
    # settings outside the geometry (the length of the run, the lr) are not refused
    Trainer(cfg_for(tmp_path, "meta.load_checkpoint=true", "optimization.lr=0.002"), out=lambda s: None)


def test_accepted_changes_keep_the_earlier_config_on_disk_and_in_the_checkpoint(tmp_path):
    run(tmp_path, "optimization.max_steps=2")
    lines = []
    trainer, result = run(tmp_path, "optimization.max_steps=4", "meta.load_checkpoint=true", "data.crop_size=96",
                          "meta.allow_resume_changes=true", lines=lines)
    assert result.steps == 4 and trainer.model.encoder.img_size == 96
    assert any("changed settings" in s and "data.crop_size: 64 -> 96" in s for s in lines)
    kept = tmp_path / "params-pretrain.before-step2.yaml"
    assert yaml.safe_load(kept.read_text())["data"]["crop_size"] == 64
    assert yaml.safe_load((tmp_path / "params-pretrain.yaml").read_text())["data"]["crop_size"] == 96
    history = read_checkpoint(result.checkpoint)["vjepa_fast"]["config_history"]
    assert [(h["from_step"], h["config"]["data"]["crop_size"]) for h in history] == [(0, 64), (2, 96)]


def test_official_checkpoint_of_another_resolution_is_refused_on_resume(tmp_path):
    """No stored config: the position table's size shows the geometry change."""
    run(tmp_path / "ours", "optimization.max_steps=2")
    ck = read_checkpoint(tmp_path / "ours" / "jepa-latest.pth.tar")
    official = {k: v for k, v in ck.items() if k != "vjepa_fast"}
    (tmp_path / "run").mkdir()
    torch.save(official, tmp_path / "run" / "jepa-latest.pth.tar")
    trainer = Trainer(cfg_for(tmp_path / "run", "meta.load_checkpoint=true", "data.crop_size=96"), out=lambda s: None)
    with pytest.raises(CheckpointError, match=r"pos_embed: checkpoint \(1, 64, 48\) vs model \(1, 144, 48\)"):
        trainer.fit()


def test_config_changes_counts_missing_keys_as_their_defaults():
    new = cfg_for("/tmp/x").to_dict()
    old = yaml.safe_load(yaml.safe_dump(new))
    del old["data"]["mask_truncation"], old["model"]["in_chans"]  # a config from before these keys
    assert config_changes(old, new) == []
    old["mask"] = old["mask"][:1]
    assert config_changes(old, new) == ["mask (number of generators): 1 -> 2"] + [
        f"mask[1].{k}: None -> {v!r}" for k, v in sorted(new["mask"][1].items()) if v is not None]


# ------------------------------------------------------------------------------------------------
# meta.init_from
# ------------------------------------------------------------------------------------------------
def test_init_from_starts_at_step_0_with_the_weights_and_fresh_state(tmp_path):
    source, _ = run(tmp_path / "a", "optimization.max_steps=4")
    lines = []
    cfg = cfg_for(tmp_path / "b", f"meta.init_from={tmp_path / 'a' / 'jepa-latest.pth.tar'}", "optimization.max_steps=2")
    trainer = Trainer(cfg, out=lines.append)
    trainer.init_from(cfg.meta.init_from)
    for (name, a), b in zip(source.model.state_dict().items(), trainer.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert trainer.step == 0 and trainer.schedules.iteration == 0 and trainer.masks.state_dict() == {"step": 0}
    assert not trainer.optimizer.state  # no AdamW moments
    # a whole run: its lr/wd follow a fresh schedule (same as a run from scratch), its losses do not
    trainer = Trainer(cfg, out=lines.append)
    result = trainer.fit()
    _, scratch = run(tmp_path / "c", "optimization.max_steps=2")
    rows_b, rows_c = (list(csv.DictReader(open(r.log))) for r in (result, scratch))
    assert [(r["itr"], r["lr"], r["wd"]) for r in rows_b] == [(r["itr"], r["lr"], r["wd"]) for r in rows_c]
    assert [r["loss"] for r in rows_b] != [r["loss"] for r in rows_c]
    assert any("meta.init_from" in s and "(its step 4)" in s and "step 0" in s for s in lines)
    extra = read_checkpoint(result.checkpoint)["vjepa_fast"]
    assert extra["step"] == 2 and extra["init_from"]["step"] == 4
    assert extra["init_from"]["path"].endswith("a/jepa-latest.pth.tar")
    assert extra["init_from"]["config_history"][0]["config"]["optimization"]["max_steps"] == 4


def test_init_from_at_another_resolution_and_a_mismatched_model(tmp_path):
    run(tmp_path / "a", "optimization.max_steps=2")
    src = tmp_path / "a" / "jepa-latest.pth.tar"
    lines = []
    trainer, result = run(tmp_path / "b", f"meta.init_from={src}", "data.crop_size=96", "optimization.max_steps=1",
                          lines=lines)
    assert result.steps == 1 and trainer.model.encoder.pos_embed.shape[1] == 4 * 6 * 6
    assert any("this run changes data.crop_size: 64 -> 96" in s for s in lines)
    with pytest.raises(PreflightError) as ei:
        Trainer(cfg_for(tmp_path / "c", f"meta.init_from={src}", "model.embed_dim=96"), out=lambda s: None)
    msg = str(ei.value)
    assert "meta.init_from" in msg and "its encoder does not fit the model" in msg
    assert "checkpoint (48,) vs model (96,)" in msg


def test_load_checkpoint_with_init_from_starts_from_it_then_resumes(tmp_path):
    """One config for a restartable fine-tune: the first launch starts from init_from, a relaunch
    continues the run's own checkpoint."""
    run(tmp_path / "a", "optimization.max_steps=2")
    common = [f"meta.init_from={tmp_path / 'a' / 'jepa-latest.pth.tar'}", "meta.load_checkpoint=true"]
    lines = []
    run(tmp_path / "b", *common, "optimization.max_steps=2", lines=lines)
    assert any("no checkpoint in" in s for s in lines)
    lines.clear()
    trainer, result = run(tmp_path / "b", *common, "optimization.max_steps=3", lines=lines)
    assert any(s.startswith("resumed from") and "at step 2" in s for s in lines) and result.steps == 3


# ------------------------------------------------------------------------------------------------
# image pretraining, input channels, devices
# ------------------------------------------------------------------------------------------------
def test_image_pretraining_runs(tmp_path):
    trainer, result = run(tmp_path, "data.num_frames=1", "data.tubelet_size=1", "optimization.max_steps=2")
    assert not trainer.model.encoder.is_video and result.steps == 2
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in csv.DictReader(open(result.log)))


def test_in_chans_reaches_the_model_and_video_data_must_be_rgb(tmp_path):
    trainer, result = run(tmp_path / "grey", "model.in_chans=1", "optimization.max_steps=1")
    assert trainer.model.encoder.patch_embed.proj.in_channels == 1 and result.steps == 1
    index = tmp_path / "index.csv"
    index.write_text("a.mp4 0\n")
    with pytest.raises(PreflightError, match=r"model\.in_chans=4, but decoded videos have 3 channels"):
        Trainer(cfg_for(tmp_path / "v", "model.in_chans=4", "data.synthetic=false", f"data.datasets=[{index}]"),
                out=lambda s: None)


def test_every_start_problem_is_listed_at_once(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a.mp4 0\nb.mp4 x\n")
    overrides = ["data.synthetic=false", f"data.datasets=[{bad}, {tmp_path / 'missing.csv'}]",
                 "meta.load_checkpoint=true"]
    if not torch.cuda.is_available():
        overrides.append("meta.device=cuda")
    with pytest.raises(PreflightError) as ei:
        Trainer(cfg_for(tmp_path, *overrides), out=lambda s: None)
    msg = str(ei.value)
    assert "bad.csv:2: malformed index line 'b.mp4 x'" in msg
    assert "index file not found" in msg and "missing.csv" in msg
    assert "no checkpoint to resume" in msg
    if not torch.cuda.is_available():
        assert "meta.device='cuda' but no CUDA device is visible" in msg
        assert msg.startswith(f"pretraining ({tmp_path}) cannot start (4 problems)")


def test_mask_blocks_that_can_be_empty_on_the_grid_are_refused(tmp_path):
    """Patch 32 on 64 px leaves a 2x2 token grid: 15 % of 4 tokens is int(0.6) = 0, a block of no
    tokens, so steps that draw it would have no targets."""
    with pytest.raises(PreflightError, match=r"mask\[0\]: spatial_scale \[0.15, 0.15\] .* blocks of 0x0 tokens on "
                                             r"this 2x2 token grid"):
        Trainer(cfg_for(tmp_path, "data.patch_size=32"), out=lambda s: None)
    from vjepa_fast.masks import MultiBlock3DMaskCollator

    col = MultiBlock3DMaskCollator(cfg_for(tmp_path, "data.patch_size=32").mask_dicts(), crop_size=64, num_frames=8,
                                   patch_size=32)
    assert col.sample(2, 0)[1][0].shape[1] == 0  # what the check prevents: an empty target


def test_mask_truncation_reaches_the_collator(tmp_path):
    from vjepa_fast.masks import MultiBlock3DMaskCollator

    default = Trainer(cfg_for(tmp_path / "a"), out=lambda s: None)
    rand = Trainer(cfg_for(tmp_path / "b", "data.mask_truncation=random"), out=lambda s: None)
    assert default.masks.truncation == "earliest" and rand.masks.truncation == "random"
    d = rand.cfg.data
    ref = MultiBlock3DMaskCollator(rand.cfg.mask_dicts(), crop_size=d.crop_size, num_frames=d.num_frames,
                                   patch_size=d.patch_size, tubelet_size=d.tubelet_size, seed=rand.cfg.meta.seed,
                                   truncation="random")
    assert all(torch.equal(a, b) for a, b in zip(rand.masks.sample(2, 5)[0], ref.sample(2, 5)[0]))


def test_attention_backend_and_kernels_that_cannot_run_here_are_refused(tmp_path, monkeypatch):
    from vjepa_fast import kernels
    from vjepa_fast.preflight import runtime_problems

    cfg = cfg_for(tmp_path, "meta.device=cpu", "meta.attn_backend=cudnn", "meta.kernels=triton")
    monkeypatch.setattr(kernels, "INTERPRET", False)
    problems = runtime_problems(cfg.meta)
    assert problems[0] == "meta.attn_backend='cudnn' does not run on cpu (there: auto, math, flash)"
    if kernels.HAS_TRITON:
        assert problems[1].startswith("meta.kernels='triton' needs a CUDA device (this run: cpu)")
    assert runtime_problems(cfg_for(tmp_path, "meta.device=cpu", "meta.attn_backend=math").meta) == []
