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


def tiny_cfg(tmp_path, *extra):
    overrides = [f"logging.folder={tmp_path}", "model.model_name=vit_tiny", "data.batch_size=2",
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
