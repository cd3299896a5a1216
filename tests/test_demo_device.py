"""The demo runs on the GPU (bf16) when torch sees one, on the CPU (fp32, the measured path) otherwise,
and says which and why in its first line."""
from __future__ import annotations

import pytest
import torch

from vjepa_fast import cli


class _Stop(Exception):
    pass


def _first_line_and_overrides(monkeypatch, capsys, argv):
    seen = {}

    def fake_pretrain(data, out, overrides=()):
        seen["overrides"] = list(overrides)
        raise _Stop

    import vjepa_fast.train as train

    monkeypatch.setattr(train, "run_demo_pretrain", fake_pretrain)
    with pytest.raises(_Stop):
        cli.main(["demo", *argv])
    return capsys.readouterr().out.splitlines()[0], seen["overrides"]


def test_cpu_when_no_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.demo_device("auto") == ("cpu", [], "cpu, float32 (torch sees no CUDA device)")
    line, overrides = _first_line_and_overrides(monkeypatch, capsys, ["optimization.epochs=1"])
    assert line == "vjepa-fast demo on cpu, float32 (torch sees no CUDA device)"
    assert overrides == ["optimization.epochs=1"]  # the CPU path runs the config as it is
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        cli.demo_device("cuda")


def test_gpu_in_bf16_when_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    device, overrides, why = cli.demo_device("auto")
    # the GPU runs the longer recipe (15,000 steps); the user's overrides come last and win
    gpu = ["meta.device=cuda", "meta.dtype=bfloat16", f"optimization.epochs={cli.DEMO_GPU_EPOCHS}"]
    assert device == "cuda" and overrides == gpu and cli.DEMO_GPU_EPOCHS == 300
    assert why == "cuda:0 (NVIDIA H200), bfloat16 (CUDA is available; --device cpu for the CPU path)"
    line, seen = _first_line_and_overrides(monkeypatch, capsys, ["optimization.epochs=1"])
    assert line == f"vjepa-fast demo on {why}"
    assert seen == [*gpu, "optimization.epochs=1"]
    line, seen = _first_line_and_overrides(monkeypatch, capsys, ["--device", "cpu"])
    assert line == "vjepa-fast demo on cpu, float32 (asked for with --device cpu)" and seen == []
    # the device is chosen with --device only: a meta.device override would leave the dtype behind
    assert cli.main(["demo", "meta.device=cpu"]) == 2
    assert "--device" in capsys.readouterr().err
