"""Data → trainer end to end on real (demo) videos: decode in workers, batched device transform,
per-rank samplers, loader re-creation (ipe), exact resume of the data order."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from vjepa_fast.config import PretrainConfig
from vjepa_fast.data import VideoClipSource, repeat_masks
from vjepa_fast.demo_data import make_demo_data
from vjepa_fast.train import Trainer
from vjepa_fast.transforms import reference_video_transform, sample_batch_crop_params

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"
SMALL = ["model.embed_dim=48", "model.depth=2", "model.pred_depth=1", "model.pred_embed_dim=24"]
N_VIDEOS = 10


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """10 real MP4 clips (32x32, 16 frames) and an index whose label is the line number, so a
    batch's labels say exactly which videos it holds."""
    root = tmp_path_factory.mktemp("demo")
    make_demo_data(str(root), n_train=N_VIDEOS, n_val=1, frames=16, size=32)
    paths = [line.split()[0] for line in open(root / "train_digit.csv")]
    index = root / "by_id.csv"
    index.write_text("".join(f"{p} {i}\n" for i, p in enumerate(paths)))
    return root, index


def cfg_for(tmp, index, *extra):
    return PretrainConfig.from_yaml(TINY, [
        f"logging.folder={tmp}", "data.synthetic=false", f"data.datasets=[{index}]", "data.batch_size=3",
        "data.num_workers=0", "data.sampling_rate=2", "optimization.epochs=3", "optimization.warmup=1",
        "logging.log_every=2", *SMALL, *extra])


def labels_of(source, n):
    out = []
    for _ in range(n):
        _, labels = source.next_batch()
        out.append(labels.tolist())
    return out


def test_each_pass_is_a_permutation_and_passes_differ(tmp_path, videos):
    _, index = videos
    src = VideoClipSource(cfg_for(tmp_path, index), "cpu")
    assert src.batches_per_pass == N_VIDEOS // 3  # drop_last
    p0 = labels_of(src, 3)
    assert src.state_dict() == {"pass": 1, "consumed": 0}
    p1 = labels_of(src, 3)
    flat0, flat1 = sum(p0, []), sum(p1, [])
    assert len(set(flat0)) == 9 and len(set(flat1)) == 9 and set(flat0) <= set(range(N_VIDEOS))
    assert flat0 != flat1  # set_epoch(pass) reshuffles


def test_ranks_see_disjoint_samples(tmp_path, videos):
    _, index = videos
    cfg = cfg_for(tmp_path, index, "data.batch_size=2")
    seen = [sum(labels_of(VideoClipSource(cfg, "cpu", rank=r, world_size=2), 2), []) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4
    assert not set(seen[0]) & set(seen[1])


def test_weighted_sampler_follows_dataset_weights(tmp_path, videos):
    root, index = videos
    lines = open(index).read().splitlines(keepends=True)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("".join(lines[:5]))
    b.write_text("".join(lines[5:]))
    cfg = cfg_for(tmp_path, index, f"data.datasets=[{a},{b}]", "data.datasets_weights=[1.0,1.0e-6]", "data.batch_size=2")
    src = VideoClipSource(cfg, "cpu")
    assert type(src.sampler.base).__name__ == "DistributedWeightedSampler"
    # without replacement every video appears once per pass, but the heavy file's come first
    seen = sum(labels_of(src, 2), [])
    assert set(seen) <= set(range(5)), seen


def test_resume_skips_consumed_batches_by_index(tmp_path, videos):
    _, index = videos
    cfg = cfg_for(tmp_path, index, "data.num_workers=1")
    straight = VideoClipSource(cfg, "cpu")
    ref = labels_of(straight, 5)
    straight.close()
    first = VideoClipSource(cfg, "cpu")
    head = labels_of(first, 4)
    state = first.state_dict()
    first.close()
    assert state == {"pass": 1, "consumed": 1}
    second = VideoClipSource(cfg, "cpu")
    second.load_state_dict(state)
    # nothing before the resume point is decoded: the sampler starts at consumed * B
    assert len(second.sampler) == len(second.sampler.base) and second.sampler.start == 0
    tail = labels_of(second, 1)
    assert second.sampler.start == 3
    second.close()
    assert head + tail == ref


def test_device_transform_matches_reference_and_is_keyed_by_step(tmp_path, videos):
    _, index = videos
    src = VideoClipSource(cfg_for(tmp_path, index), "cpu")
    clips, _ = src.next_batch()
    flat = clips[0]
    out = src.transform(flat, step=7)
    assert out.shape == (3, 3, 8, 64, 64) and out.dtype == torch.float32
    from vjepa_fast.data import step_generator

    boxes, flips = sample_batch_crop_params([(32, 32)] * 3, src.scale, src.ratio, step_generator(src.seed, 0, 7), 0.5)
    for b in range(3):
        ref = reference_video_transform(flat[b].numpy(), boxes[b].tolist(), bool(flips[b]), 64)
        torch.testing.assert_close(out[b], ref, atol=1e-4, rtol=1e-5)
    assert torch.equal(src.transform(flat, step=7), out)
    assert not torch.equal(src.transform(flat, step=8), out)


def test_two_clips_per_sample_reuse_the_sample_masks(tmp_path, videos):
    _, index = videos
    m = [torch.arange(6).reshape(3, 2)]
    assert torch.equal(repeat_masks(m, 2)[0], torch.cat([m[0], m[0]]))
    cfg = cfg_for(tmp_path, index, "data.num_clips=2", "data.sampling_rate=1", "optimization.max_steps=1",
                  "optimization.ipe=2")
    tr = Trainer(cfg, out=lambda s: None)
    res = tr.fit()
    assert res.steps == 1 and res.final_loss > 0


def test_resume_is_exact_with_real_videos(tmp_path, videos):
    """N steps, stop, resume, N more == 2N straight: parameters bit-identical. ipe (4) differs from
    the pass length (3), the stop is mid-epoch and mid-pass, and the run crosses loader re-creations;
    one DataLoader worker (persistent)."""
    _, index = videos
    common = ("data.num_workers=1", "optimization.ipe=4", "optimization.clip_grad=1.0")
    straight = Trainer(cfg_for(tmp_path / "a", index, *common, "optimization.max_steps=8"), out=lambda s: None)
    straight.fit()
    first = Trainer(cfg_for(tmp_path / "b", index, *common, "optimization.max_steps=4"), out=lambda s: None)
    first.fit()
    second = Trainer(cfg_for(tmp_path / "b", index, *common, "optimization.max_steps=8", "meta.load_checkpoint=true"),
                     out=lambda s: None)
    assert second.step == 0
    second.fit()
    assert second.step == 8 and second.source.state_dict() == {"pass": 2, "consumed": 2}
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name
    sa, sb = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    for k in sa:
        assert torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]), k
    rows_a = list(csv.DictReader(open(tmp_path / "a" / "jepa_r0.csv")))
    rows_b = list(csv.DictReader(open(tmp_path / "b" / "jepa_r0.csv")))
    assert [r["itr"] for r in rows_b] == [str(i) for i in range(8)]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]


def test_demo_pretrain_entry_point(tmp_path, videos):
    """run_demo_pretrain(data_dir, out_dir) on the demo config (2 steps): official checkpoint, CSV,
    params file and the training plot."""
    from vjepa_fast.train import run_demo_pretrain

    root, _ = videos
    before = (root / "metadata.json").read_text()
    lines = []
    res = run_demo_pretrain(root, tmp_path / "run", overrides=["optimization.max_steps=2", "data.num_workers=0"],
                            out=lines.append)
    assert res.steps == 2 and res.final_loss > 0
    # These clips are not the bundled demo's (single digits, 32 px): said, used, not overwritten.
    assert any("rendered with other settings" in line and "digits_per_clip: 1 instead of 4" in line for line in lines)
    assert (root / "metadata.json").read_text() == before
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"jepa-latest.pth.tar", "jepa_r0.csv", "params-pretrain.yaml", "training.png"} <= names
    ck = torch.load(res.checkpoint, weights_only=True)
    assert ck["vjepa_fast"]["config"]["data"]["datasets"] == [str((root / "train_digit.csv").resolve())]


def test_context_use_of_a_pretraining_checkpoint(tmp_path, videos):
    """checkpoint_context_use rebuilds the run from the checkpoint's own config and scores real clips;
    an index listing one clip is a clear error naming it."""
    from vjepa_fast.diagnostics import checkpoint_context_use
    from vjepa_fast.train import run_demo_pretrain

    root, index = videos
    res = run_demo_pretrain(root, tmp_path / "run", overrides=["optimization.max_steps=1", "data.num_workers=0"],
                            out=lambda s: None, plot_png=False)
    lines = []
    r = checkpoint_context_use(res.checkpoint, index, num_clips=7, batch_size=3, out=lines.append)
    assert r.clips == 6  # 3 + 3; the last batch of one clip has no other clip to borrow from
    assert 0 < r.own < 2 and 0 < r.other < 2 and 0 < r.position < 2
    assert r.own != r.other
    assert lines == [r.format()]
    with pytest.raises(ValueError, match=r"val_digit.csv lists 1 clip\(s\); context_use needs at least 2"):
        checkpoint_context_use(res.checkpoint, root / "val_digit.csv")


def test_context_use_command(tmp_path, videos, capsys):
    import json

    from vjepa_fast.cli import main
    from vjepa_fast.train import run_demo_pretrain

    root, index = videos
    res = run_demo_pretrain(root, tmp_path / "run", overrides=["optimization.max_steps=1", "data.num_workers=0"],
                            out=lambda s: None, plot_png=False)
    out = tmp_path / "cu.json"
    assert main(["context-use", str(res.checkpoint), str(index), "--clips", "4", "--batch-size", "2",
                 "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["clips"] == 4 and set(d) >= {"own", "other", "position", "gain", "uses_context"}
    assert "JEPA loss on 4 held-out clips" in capsys.readouterr().out
    assert main(["context-use", str(tmp_path / "missing.pth.tar"), str(index)]) == 2
    assert "missing.pth.tar" in capsys.readouterr().err
