"""Multi-process training: torchrun env init, DDP over gloo on the CPU equals one process that
averages the gradients of the same per-rank micro-batches; rank-0 logging and checkpoints."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import vjepa_fast.train as train_mod
from vjepa_fast import load_vjepa_checkpoint
from vjepa_fast.config import PretrainConfig
from vjepa_fast.data import VideoClipSource
from vjepa_fast.demo_data import make_demo_data
from vjepa_fast.distributed import DistInfo, StudentModule, cleanup_distributed, init_distributed
from vjepa_fast.masks import build_mask_collator
from vjepa_fast.train import Trainer, build_model_from_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"
SMALL = ["model.embed_dim=48", "model.depth=2", "model.pred_depth=1", "model.pred_embed_dim=24"]

WORKER = """
import sys
from vjepa_fast.config import PretrainConfig
from vjepa_fast.train import pretrain
from vjepa_fast.distributed import cleanup_distributed, init_distributed
# several runs in one launch, separated by '--'. The process group comes from the torchrun env
# (init_distributed) and is reused by each pretrain() call.
info = init_distributed("cpu")
assert info.world_size == 2 and info.backend == "gloo" and info.initialized_here
runs = [[]]
for a in sys.argv[1:]:
    runs.append([]) if a == "--" else runs[-1].append(a)
for run in runs:
    pretrain(PretrainConfig.from_yaml(run[0], run[1:]), out=lambda s: None)
cleanup_distributed(info)
"""
STEPS = 3


def test_single_process_needs_no_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(0, 1, 0, torch.device("cpu"), None, False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu").world_size == 1


def test_partial_torchrun_environment_is_an_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        init_distributed("cpu")


def test_cleanup_waits_for_every_rank_unless_on_an_error_path(monkeypatch):
    """A clean exit passes a barrier before destroying the group (gloo threads still freeing the
    last collective's tensors abort the process if the interpreter is already shutting down); an
    error path does not wait for ranks that may still be training; a group someone else created is
    left alone."""
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    ours = DistInfo(0, 2, 0, torch.device("cpu"), "gloo", True)
    cleanup_distributed(ours)
    assert calls == ["barrier", "destroy"]
    calls.clear()
    cleanup_distributed(ours, sync=False)
    assert calls == ["destroy"]
    calls.clear()
    cleanup_distributed(DistInfo(0, 2, 0, torch.device("cpu"), "gloo", False))
    assert calls == []

    class Fits:
        def __init__(self, *a, **k):
            pass

        def fit(self):
            return "result"

    class Boom:
        def __init__(self, *a, **k):
            raise RuntimeError("rank failed")

    monkeypatch.setattr(train_mod, "init_distributed", lambda device: ours)
    monkeypatch.setattr(train_mod, "Trainer", Fits)
    assert train_mod.pretrain(PretrainConfig.from_yaml(TINY, [])) == "result"
    assert calls == ["barrier", "destroy"]
    calls.clear()
    monkeypatch.setattr(train_mod, "Trainer", Boom)
    with pytest.raises(RuntimeError, match="rank failed"):
        train_mod.pretrain(PretrainConfig.from_yaml(TINY, []))
    assert calls == ["destroy"]


def test_ddp_student_has_no_buffers():
    # wrap_student turns DDP's per-forward buffer sync off; that is only free while there are none
    model = build_model_from_config(PretrainConfig.from_yaml(TINY, SMALL))
    assert [n for n, _ in StudentModule(model).named_buffers()] == []


def _overrides(folder, index, steps):
    return [f"logging.folder={folder}", "data.synthetic=false", f"data.datasets=[{index}]", "data.batch_size=2",
            "data.num_workers=0", "data.sampling_rate=2", "optimization.ipe=2", "optimization.epochs=3",
            "optimization.warmup=0", "optimization.clip_grad=1.0", f"optimization.max_steps={steps}",
            "logging.log_every=1", *SMALL]


def torchrun(folder, runs):
    script = folder / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = []
    for run in runs:
        args += (["--"] if args else []) + [str(TINY), *run]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args]
    # the timeout only turns a hang into a failure; a normal launch takes seconds
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One torchrun launch (2 processes, gloo, CPU): a DDP run of 3 steps, and an FSDP2 run of 2
    steps that is then resumed from its checkpoint for the 3rd."""
    root = tmp_path_factory.mktemp("dist")
    make_demo_data(str(root / "data"), n_train=10, n_val=1, frames=16, size=32)
    index = root / "data" / "train_digit.csv"
    torchrun(root, [
        _overrides(root / "ddp", index, STEPS),
        [*_overrides(root / "fsdp", index, 2), "meta.parallel=fsdp"],
        [*_overrides(root / "fsdp", index, STEPS), "meta.parallel=fsdp", "meta.load_checkpoint=true"],
    ])
    return root, index


@pytest.fixture(scope="module")
def reference(launched):
    """One process running both ranks' micro-batches (each rank's own videos, crops and masks: the
    per-rank batch-min truncation is kept) and averaging their gradients: what DDP computes."""
    root, index = launched
    cfg = PretrainConfig.from_yaml(TINY, _overrides(root / "ref", index, STEPS))
    d = cfg.data
    sources = [VideoClipSource(cfg, "cpu", rank=r, world_size=2) for r in (0, 1)]
    masks = [build_mask_collator(d.mask_type, cfg.mask_dicts(), crop_size=d.crop_size, num_frames=d.num_frames,
                                 patch_size=d.patch_size, tubelet_size=d.tubelet_size, seed=cfg.meta.seed, rank=r)
             for r in (0, 1)]
    ref = Trainer(cfg, source=sources[0], out=lambda s: None)
    losses = []
    for step in range(STEPS):
        micro = [(sources[r](step), *masks[r].sample(d.batch_size, step)) for r in (0, 1)]
        losses.append(float(ref.train_step_accum(micro)["loss"]))
    assert ref.step == STEPS
    return cfg, ref, losses


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process_with_the_same_per_rank_batches(launched, reference, parallel):
    """torchrun --nproc_per_node 2 (3 steps; FSDP: 2 steps, stop, resume, 1 more) equals the
    one-process reference: parameters (encoder, predictor, EMA target) and logged losses, float32,
    1e-5."""
    root, _ = launched
    cfg, ref, losses = reference
    run = root / parallel
    assert not (run / "jepa_r1.csv").exists()  # rank-0 logging only
    trained = build_model_from_config(cfg)
    ck = load_vjepa_checkpoint(trained, run / "jepa-latest.pth.tar")
    assert ck["world_size"] == 2 and ck["vjepa_fast"]["step"] == STEPS
    assert ck["vjepa_fast"]["data"] == {"pass": 1, "consumed": 1}
    for (name, a), b in zip(ref.model.state_dict().items(), trained.state_dict().values()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=name)
    # the weights moved: the comparison is not vacuous
    assert not torch.allclose(ref.model.encoder.blocks[0].attn.qkv.weight,
                              build_model_from_config(cfg).encoder.blocks[0].attn.qkv.weight)
    rows = list(csv.DictReader(open(run / "jepa_r0.csv")))
    assert [int(r["itr"]) for r in rows] == list(range(STEPS))
    torch.testing.assert_close(torch.tensor([float(r["loss"]) for r in rows]), torch.tensor(losses),
                               atol=1e-5, rtol=1e-5)
