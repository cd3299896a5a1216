"""The V-JEPA 2 recipe end to end on the bundled demo videos on the CPU, through the `vjepa-fast`
command as a user runs it: pretraining (configs/pretrain/tiny_v2_cpu.yaml: 4- and 8-frame clips in
one batch), the cooldown from its checkpoint (tiny_v2_cpu_cooldown.yaml: 8-frame clips, weights and
AdamW moments, step 0, linear-decay lr), and the probe of the cooled-down encoder
(configs/evals/tiny_v2_cpu_probe.yaml). A few steps each: the pipeline is under test, not learning."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("av")
pytest.importorskip("sklearn")

from vjepa_fast import cli  # noqa: E402
from vjepa_fast.checkpoint import read_checkpoint  # noqa: E402
from vjepa_fast.schedules import LinearDecayLR  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CPU = ["data.num_workers=0", "meta.device=cpu"]


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A working directory like a fresh clone: configs/ and data/demo (rendered small)."""
    from vjepa_fast.demo_data import DEMO_DATA, make_demo_data

    root = tmp_path_factory.mktemp("v2recipe")
    (root / "configs").symlink_to(REPO / "configs")
    make_demo_data(str(root / "data" / "demo"), n_train=16, **{**DEMO_DATA, "n_val": 16})
    return root


def test_pretrain_cooldown_probe(clone, monkeypatch, capsys):
    monkeypatch.chdir(clone)
    torch.set_num_threads(1)

    assert cli.main(["pretrain", "--config", "configs/pretrain/tiny_v2_cpu.yaml", "optimization.max_steps=4", *CPU]) == 0
    pre = read_checkpoint("runs/tiny_v2_cpu/jepa-latest.pth.tar")
    assert pre["vjepa_fast"]["step"] == 4 and pre["opt"]["state"]
    tokens = sorted(k for k in pre["predictor"] if "mask_tokens" in k)
    assert len(tokens) == 2 * 2  # len(mask) * len(dataset_fpcs)
    assert not any("pos_embed" in k for k in pre["encoder"])

    assert cli.main(["pretrain", "--config", "configs/pretrain/tiny_v2_cpu_cooldown.yaml", "optimization.max_steps=3",
                     *CPU]) == 0
    out = capsys.readouterr().out
    assert "cooldown (optimization.is_anneal)" in out
    cool = read_checkpoint("runs/tiny_v2_cpu_cooldown/jepa-latest.pth.tar")
    record = cool["vjepa_fast"]["init_from"]
    assert record["kind"] == "anneal" and record["step"] == 4 and cool["vjepa_fast"]["step"] == 3
    rows = list(csv.DictReader(open("runs/tiny_v2_cpu_cooldown/jepa_r0.csv")))
    lr = LinearDecayLR(0.000525, 1.0e-6, int(1.25 * 1 * 5))
    assert [float(r["lr"]) for r in rows] == pytest.approx([lr(s) for s in (1, 2, 3)], rel=1e-9)
    # the AdamW moments go on from pretraining: an encoder weight (every step moves it) has 4 + 3 steps
    first = cool["opt"]["param_groups"][0]["params"][0]
    assert float(cool["opt"]["state"][first]["step"]) == 4 + 3

    assert cli.main(["probe", "--config", "configs/evals/tiny_v2_cpu_probe.yaml", "optimization.num_epochs=1",
                     *CPU]) == 0
    out = capsys.readouterr().out
    assert "best probe: top-1" in out
    results = json.loads(next(Path("runs/tiny_v2_cpu_cooldown").rglob("jepa-results.json")).read_text())
    assert results["epochs"] == 1
