"""The `vjepa-fast` command line: subcommands run, and bad input is a one-line error (exit 2)."""
from __future__ import annotations

from pathlib import Path

from vjepa_fast.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "pretrain" / "tiny_cpu.yaml")


def test_pretrain_then_plot(tmp_path, capsys):
    rc = main(["pretrain", "--config", TINY, f"logging.folder={tmp_path}", "model.depth=1", "model.embed_dim=48",
               "model.pred_embed_dim=24", "data.batch_size=2", "optimization.max_steps=2"])
    out = capsys.readouterr().out
    assert rc == 0 and "done: 2 steps" in out
    assert (tmp_path / "jepa-latest.pth.tar").is_file()
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "training.png").stat().st_size > 1000


def test_unknown_key_is_a_clear_error(capsys):
    rc = main(["pretrain", "--config", TINY, "optimization.weight_decy=0.1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "unknown key 'optimization.weight_decy'; did you mean 'optimization.weight_decay'?" in err


def test_missing_config_file(capsys, tmp_path):
    assert main(["probe", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
