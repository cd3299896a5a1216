"""The `vjepa-fast` command line: subcommands run, and bad input is a one-line error (exit 2)."""
from __future__ import annotations

from pathlib import Path

import pytest

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


SMALL = ["model.depth=1", "model.embed_dim=48", "model.pred_embed_dim=24", "model.pred_depth=1", "data.batch_size=2"]


def test_resume_with_nothing_left_exits_2_and_prints_no_path(tmp_path, capsys):
    assert main(["pretrain", "--config", TINY, f"logging.folder={tmp_path}", *SMALL, "optimization.max_steps=2"]) == 0
    capsys.readouterr()
    rc = main(["pretrain", "--config", TINY, f"logging.folder={tmp_path}", *SMALL, "optimization.max_steps=1",
               "meta.load_checkpoint=true"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert "has already trained 2 steps" in err and "this run's total is 1" in err and "optimization.epochs" in err
    assert "Traceback" not in err


def test_check_config_prints_the_resolved_config_and_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "run"
    rc = main(["check-config", "--config", TINY, f"logging.folder={folder}", "optimization.lr=0.002"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "lr: 0.002" in out and "crop_size: 64" in out and f"# ok: a new run in {folder} would start" in out
    assert not folder.exists()


def test_check_config_lists_every_problem(tmp_path, capsys):
    rc = main(["check-config", "--config", TINY, "optimization.weight_decy=0.1", "data.batch_size=0", "model.pred_is_frame_causal=true"])
    err = capsys.readouterr().err
    assert rc == 2 and "3 problem(s); the run would not start" in err
    assert "unknown key 'optimization.weight_decy'" in err and "unknown key 'model.pred_is_frame_causal'" in err
    assert "'data.batch_size': 0" in err
    # past the keys: data, checkpoints and the start of the run
    bad = tmp_path / "index.csv"
    bad.write_text("clip.mp4 zero\n")
    folder = tmp_path / "run"
    rc = main(["check-config", "--config", TINY, f"logging.folder={folder}", "data.synthetic=false",
               f"data.datasets=[{bad}]", "meta.load_checkpoint=true", f"meta.init_from={tmp_path / 'none.pth.tar'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "2 problem(s)" in err
    assert "index.csv:1: malformed index line 'clip.mp4 zero'" in err
    assert "meta.init_from: checkpoint not found" in err and "none.pth.tar" in err
    assert not folder.exists()


def test_check_config_sees_a_resume_with_another_geometry(tmp_path, capsys):
    common = ["--config", TINY, f"logging.folder={tmp_path}", *SMALL]
    assert main(["pretrain", *common, "optimization.max_steps=2"]) == 0
    capsys.readouterr()
    rc = main(["check-config", *common, "meta.load_checkpoint=true", "data.crop_size=96", "optimization.max_steps=4"])
    out, err = capsys.readouterr()
    assert rc == 2 and "data.crop_size: 64 -> 96" in err and "meta.allow_resume_changes=true" in err
    rc = main(["check-config", *common, "meta.load_checkpoint=true", "optimization.max_steps=4"])
    out, err = capsys.readouterr()
    assert rc == 0 and f"# ok: resume {tmp_path / 'jepa-latest.pth.tar'} at step 2 would start" in out


def test_check_config_of_a_probe(tmp_path, capsys):
    probe = str(REPO / "configs" / "evals" / "tiny_cpu_probe.yaml")
    rc = main(["check-config", "--config", probe, f"pretrain.folder={tmp_path}",
               f"data.dataset_train={tmp_path / 'train.csv'}", "meta.device=cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "data.dataset_train: index file not found" in err and "train.csv" in err
    assert f"pretrained checkpoint not found: {tmp_path / 'jepa-latest.pth.tar'}" in err


def test_passthrough_commands_take_their_options_as_written(monkeypatch, capsys):
    """`vjepa-fast make-demo-data --out X` and `vjepa-fast profile --config X --steps N` reach their own
    parsers (argparse's REMAINDER in a subparser used to reject them)."""
    from vjepa_fast import demo_data

    calls = []
    monkeypatch.setattr(demo_data, "make_demo_data", lambda out, **kw: calls.append((out, kw)))
    assert main(["make-demo-data", "--out", "somewhere", "--n-train", "3"]) == 0
    assert calls[0][0] == "somewhere" and calls[0][1]["n_train"] == 3
    assert main(["make-demo-data", "--", "--out", "other"]) == 0  # the old workaround still works
    assert calls[1][0] == "other"
    with pytest.raises(SystemExit) as e:
        main(["make-demo-data", "--help"])
    assert e.value.code == 0 and "--n-train" in capsys.readouterr().out


def test_checkpoint_messages_name_the_file_for_command_line_users(tmp_path, capsys):
    """A probe checkpoint where a pretraining one belongs: the file is named, and no Python function
    is suggested to a command-line user."""
    import torch

    probe = tmp_path / "jepa-probe.pth.tar"
    torch.save({"classifier": {"w": torch.zeros(1)}, "epoch": 1, "vjepa_fast": {"config": {"eval_name": "x"}}}, probe)
    index = tmp_path / "val.csv"
    index.write_text("a.mp4 0\n")
    assert main(["context-use", str(probe), str(index)]) == 2
    err = capsys.readouterr().err
    assert f"{probe} has no encoder, predictor, target_encoder (a probe checkpoint)" in err
    assert "load_encoder" not in err and "checkpoint dict" not in err
    rc = main(["pretrain", "--config", TINY, f"logging.folder={tmp_path}", *SMALL, "meta.load_checkpoint=true",
               f"meta.read_checkpoint={probe.name}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"meta.read_checkpoint: {probe} has no encoder" in err and "load_encoder" not in err
