"""The training loop: official step order, logging, checkpoints, exact resume, NaN stop."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from vjepa_fast import load_vjepa_checkpoint
from vjepa_fast.config import PretrainConfig
from vjepa_fast.train import Trainer, build_model_from_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"
# A 2-block 48-d encoder and 1-block 24-d predictor: the loop logic, not the model, is under test.
SMALL = ["model.embed_dim=48", "model.depth=2", "model.pred_depth=1", "model.pred_embed_dim=24"]


def tiny_cfg(tmp_path, *extra):
    overrides = [f"logging.folder={tmp_path}", "model.model_name=vit_tiny", "data.batch_size=2", *SMALL,
                 "optimization.ipe=2", "optimization.epochs=4", "optimization.warmup=1", "logging.log_every=2", *extra]
    return PretrainConfig.from_yaml(TINY, overrides)


def test_fit_writes_log_and_official_checkpoint(tmp_path):
    cfg = tiny_cfg(tmp_path, "optimization.max_steps=4")
    lines = []
    result = Trainer(cfg, out=lines.append).fit()
    assert result.steps == 4
    rows = list(csv.DictReader(open(result.log)))
    assert [int(r["itr"]) for r in rows] == [0, 1, 2, 3]
    assert all(float(r["loss"]) > 0 for r in rows)
    assert any("clips/s" in line and "ETA" in line for line in lines)
    model = build_model_from_config(cfg)
    ck = load_vjepa_checkpoint(model, result.checkpoint)
    assert ck["epoch"] == 4 // 2 and ck["vjepa_fast"]["step"] == 4


def test_clipping_starts_after_warmup_epochs(tmp_path):
    cfg = tiny_cfg(tmp_path, "optimization.max_steps=6", "optimization.clip_grad=10.0")
    result = Trainer(cfg, out=lambda s: None).fit()
    rows = list(csv.DictReader(open(result.log)))
    # warmup = 1 epoch of 2 iterations; clipping (and the grad-norm columns) from epoch 2 on.
    for r in rows:
        active = int(r["epoch"]) > 1
        assert (float(r["enc-grad-norm"]) > 0) == active, r


def test_resume_is_exact(tmp_path):
    # 3 steps, stop mid-epoch (ipe 2), resume, 2 more == 5 steps straight.
    straight = Trainer(tiny_cfg(tmp_path / "a", "optimization.max_steps=5"), out=lambda s: None)
    straight.fit()
    first = Trainer(tiny_cfg(tmp_path / "b", "optimization.max_steps=3"), out=lambda s: None)
    first.fit()
    second = Trainer(tiny_cfg(tmp_path / "b", "optimization.max_steps=5", "meta.load_checkpoint=true"), out=lambda s: None)
    second.fit()
    assert second.step == 5
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    rows_a = list(csv.DictReader(open(tmp_path / "a" / "jepa_r0.csv")))
    rows_b = list(csv.DictReader(open(tmp_path / "b" / "jepa_r0.csv")))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def test_nonfinite_loss_stops_with_step_and_debug_checkpoint(tmp_path):
    cfg = tiny_cfg(tmp_path, "optimization.max_steps=4")
    trainer = Trainer(cfg, out=lambda s: None)

    def clips(step):
        c = torch.randn(2, 3, 8, 64, 64)
        if step == 1:
            c[0, 0, 0, 0, 0] = float("nan")
        return c

    with pytest.raises(FloatingPointError, match="at step 1"):
        trainer.fit(clips)
    assert (tmp_path / "jepa-nonfinite-step1.pth.tar").is_file()


def test_resume_drops_log_rows_after_the_checkpoint(tmp_path):
    """A run that crashed after its last checkpoint logged steps the resumed run redoes: those rows
    are replaced, not duplicated."""
    Trainer(tiny_cfg(tmp_path, "optimization.max_steps=3", "logging.log_every=1"), out=lambda s: None).fit()
    log = tmp_path / "jepa_r0.csv"
    with open(log, "a") as f:
        f.write("1,3,9.9,9.9,0,0,0,0,0,0,0,0\n")  # a step past the checkpoint (step 3)
    Trainer(tiny_cfg(tmp_path, "optimization.max_steps=5", "meta.load_checkpoint=true"), out=lambda s: None).fit()
    rows = list(csv.DictReader(open(log)))
    assert [int(r["itr"]) for r in rows] == [0, 1, 2, 3, 4]
    assert float(rows[3]["loss"]) != 9.9


def test_periodic_checkpoints_follow_save_every_freq_and_keep_last(tmp_path):
    # ipe 2, 4 epochs; official rule: after 0-based epoch e with e % freq == 0 write {tag}-e{e}
    cfg = tiny_cfg(tmp_path, "optimization.max_steps=8", "meta.save_every_freq=1", "logging.keep_last=2")
    Trainer(cfg, out=lambda s: None).fit()
    names = sorted(p.name for p in tmp_path.glob("jepa-*.pth.tar"))
    assert names == ["jepa-e2.pth.tar", "jepa-e3.pth.tar", "jepa-latest.pth.tar"]
    ck = torch.load(tmp_path / "jepa-e2.pth.tar", weights_only=True)
    assert ck["epoch"] == 3 and ck["vjepa_fast"]["step"] == 6
    cfg = tiny_cfg(tmp_path / "b", "optimization.max_steps=8", "meta.save_every_freq=2", "logging.keep_last=0")
    Trainer(cfg, out=lambda s: None).fit()
    assert sorted(p.name for p in (tmp_path / "b").glob("jepa-e*.pth.tar")) == ["jepa-e0.pth.tar", "jepa-e2.pth.tar"]


def test_progress_line_tensorboard_and_plot(tmp_path):
    pytest.importorskip("tensorboard")
    from PIL import Image

    from vjepa_fast.plot import plot

    lines = []
    cfg = tiny_cfg(tmp_path, "optimization.max_steps=4", "logging.tensorboard=true", "logging.log_every=1")
    Trainer(cfg, out=lines.append).fit()
    progress = [s for s in lines if "clips/s" in s]
    assert len(progress) == 4 and "[####################] 4/4" in progress[-1]
    assert all("ETA" in s and "loss" in s and "MFU" not in s for s in progress)  # no MFU on the CPU
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    png = plot(tmp_path)
    assert png == str(tmp_path / "training.png")
    with Image.open(png) as im:
        assert im.size == (800, 900)
    rows = list(csv.DictReader(open(tmp_path / "jepa_r0.csv")))
    assert all(float(r["clips/s"]) > 0 for r in rows)


def test_flop_estimate_matches_the_reference_appendix():
    """Spec Appendix B: V1 ViT-L/16 224px 16f, predictor 384-d x 12, with the Appendix A mask sizes
    (short: ctx 367 / pred 750, long: 102 / 1100): target fwd 1.19 TF, total ~2.5 TF per clip."""
    from vjepa_fast.train import FlopModel

    fm = FlopModel(enc_dim=1024, enc_hidden=4096, enc_depth=24, patch_in=3 * 2 * 16 * 16, num_tokens=1568,
                   pred_dim=384, pred_hidden=1536, pred_depth=12)
    target_only = fm.step_flops(1, [], [])
    assert target_only / 1e12 == pytest.approx(1.19, abs=0.03)  # (plus the patch embeddings)
    total = fm.step_flops(24, [367, 102], [750, 1100]) / 24
    assert total / 1e12 == pytest.approx(2.5, rel=0.06)


def test_model_size_overrides(tmp_path):
    from vjepa_fast.config import ConfigError

    cfg = tiny_cfg(tmp_path, "optimization.max_steps=4")
    model = build_model_from_config(cfg)
    assert model.encoder.embed_dim == 48 and len(model.encoder.blocks) == 2
    assert model.target_encoder.embed_dim == 48
    with pytest.raises(ConfigError, match="model.embed_dim"):
        tiny_cfg(tmp_path, "optimization.max_steps=4", "model.embed_dim=50")  # not a multiple of vit_tiny's 3 heads
