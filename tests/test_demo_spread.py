"""vjepa-fast demo-spread (vjepa_fast.demo_spread): the statistics it reports over pretraining and probe
seeds, and how it treats an existing run folder (issue 16: the demo's figures as mean ± std)."""
from __future__ import annotations

import math
import sys
import time
from statistics import mean, stdev

import pytest
import torch

from vjepa_fast import demo_spread
from vjepa_fast.demo_spread import format_spread, run_state, summarise


def _run(seed, probe_seed, pre, rand):
    """One run record; ``pre``/``rand``: digit top-1 of the pretrained / random encoder (motion = +50)."""
    enc = lambda v: {"digit": v, "motion": v + 50.0}  # noqa: E731
    return {"seed": seed, "probe_seed": probe_seed,
            "attentive": {"pretrained": enc(pre), "random": enc(rand)},
            "linear": {"pretrained": enc(pre - 10.0), "random": enc(rand - 30.0)}}


PRE = {(1, 0): 70.0, (1, 1): 72.0, (2, 0): 60.0, (2, 1): 66.0, (3, 0): 75.0, (3, 1): 71.0}
RAND = {0: 68.0, 1: 64.0}
RUNS = [_run(s, p, v, RAND[p]) for (s, p), v in PRE.items()]


def test_summary_statistics():
    out = summarise(RUNS)
    s = out["attentive/digit"]
    assert s["pretrained_mean"] == pytest.approx(mean(PRE.values()))
    assert s["pretrained_std"] == pytest.approx(stdev(PRE.values()))
    assert s["random_mean"] == pytest.approx(66.0) and s["random_std"] == pytest.approx(stdev(RAND.values()))
    assert s["gap"] == pytest.approx(mean(PRE.values()) - 66.0)
    # over pretraining seeds at each probe seed, then averaged; over probe seeds at each pretraining seed
    assert s["std_over_pretraining_seeds"] == pytest.approx(mean([stdev([70, 60, 75]), stdev([72, 66, 71])]))
    assert s["std_over_probe_seeds"] == pytest.approx(mean([stdev([70, 72]), stdev([60, 66]), stdev([75, 71])]))
    assert s["spread"] == pytest.approx(max(stdev(PRE.values()), stdev(RAND.values())))
    assert s["pretrained_wins"] == 5 and s["runs"] == 6  # all but seed 2 at probe seed 0 (60 < 68)
    assert s["clears"] is False  # gap 3.0, spread ~5.3


def test_summary_clears_only_beyond_twice_the_spread():
    s = summarise(RUNS)["linear/digit"]  # pretrained -10, random -30: gap 23.0 points, spread ~5.3
    assert s["gap"] == pytest.approx(mean(PRE.values()) - 10.0 - 36.0)
    assert s["clears"] is (s["gap"] > 2 * s["spread"]) is True
    one = summarise([_run(1, 0, 70.0, 60.0)])["attentive/digit"]
    assert math.isnan(one["pretrained_std"]) and one["clears"] is None  # one run: no spread, no verdict
    # a gap of exactly twice the spread does not clear: pretrained 70, 72, 74 (std 2), random 68 at every
    # probe seed (std 0), gap 4 (all exact in binary floating point)
    at = summarise([_run(1, p, 70.0 + 2 * p, 68.0) for p in range(3)])["attentive/digit"]
    assert (at["gap"], at["spread"], at["random_std"]) == (4.0, 2.0, 0.0) and at["clears"] is False


def test_no_verdict_when_either_spread_is_unmeasured():
    """Three pretraining seeds, one probe seed: the random encoder has one figure, so its std is
    undefined; the verdict must not rest on the pretrained std alone (max() with a NaN is order-dependent)."""
    s = summarise([_run(s, 0, 70.0 + s, 40.0) for s in (1, 2, 3)])["attentive/digit"]
    assert s["pretrained_std"] == pytest.approx(1.0) and math.isnan(s["random_std"])
    assert math.isnan(s["spread"]) and s["clears"] is None
    assert "| n/a |" in format_spread({"attentive/digit": s}, [1, 2, 3], [0])


def test_random_init_must_not_depend_on_the_pretraining_seed():
    bad = RUNS + [_run(4, 0, 70.0, RAND[0] + 1.0)]
    with pytest.raises(ValueError, match="random-init figure of probe seed 0 differs between pretraining seeds"):
        summarise(bad)


def test_random_init_taken_once_per_probe_seed():
    """demo-spread probes the random encoder with the first pretraining seed only: the same figures."""
    lean = [r if r["seed"] == 1 else {**r, **{k: {"pretrained": r[k]["pretrained"]} for k in ("attentive", "linear")}}
            for r in RUNS]
    assert summarise(lean) == summarise(RUNS)
    with pytest.raises(ValueError, match=r"no run has the random-init figure of probe seed\(s\) \[1\]"):
        summarise([r for r in lean if not (r["seed"] == 1 and r["probe_seed"] == 1)])


def test_table_lists_every_probe_and_task():
    table = format_spread(summarise(RUNS), [1, 2, 3], [0, 1])
    for key in ("attentive, digit", "attentive, motion", "linear, digit", "linear, motion"):
        assert f"| {key} |" in table
    assert "seeds 1, 2, 3 x probe seeds 0, 1" in table


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    pytest.importorskip("av")
    pytest.importorskip("sklearn")
    from vjepa_fast.demo_data import make_demo_data

    root = tmp_path_factory.mktemp("clips")
    make_demo_data(str(root), n_train=8, n_val=1, frames=16, size=32)
    return root


def test_run_state_new_done_and_another_recipe(tmp_path, clips):
    from vjepa_fast.train import demo_digits_config, run_demo_pretrain

    root = clips
    overrides = ["optimization.max_steps=1", "data.num_workers=0", "meta.seed=7"]
    cfg = demo_digits_config(root, tmp_path / "run", overrides)
    assert run_state(tmp_path / "run", cfg) == "new"
    run_demo_pretrain(root, tmp_path / "run", overrides=overrides, out=lambda s: None, plot_png=False)
    assert run_state(tmp_path / "run", cfg) == "done"
    # where and how often it writes is not the recipe
    same = demo_digits_config(root, tmp_path / "run", [*overrides, "logging.log_every=5", "meta.save_every_freq=3"])
    assert run_state(tmp_path / "run", same) == "done"
    other = demo_digits_config(root, tmp_path / "run", ["optimization.max_steps=1", "data.num_workers=0", "meta.seed=8"])
    with pytest.raises(ValueError, match=r"another recipe \(meta\.seed: 7 -> 8\); remove"):
        run_state(tmp_path / "run", other)


def _fake_checkpoint(run_dir, config, step):
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"vjepa_fast": {"config": config, "step": step}}, run_dir / "jepa-latest.pth.tar")


def test_run_state_compares_recipes_key_by_key(tmp_path, monkeypatch):
    """Without pretraining: relative and absolute data paths name the same recipe, a key the
    checkpoint's config lacks counts as its default, and a mask generator's key is named."""
    from vjepa_fast.train import demo_digits_config

    monkeypatch.chdir(tmp_path)
    cfg = demo_digits_config(tmp_path / "data", tmp_path / "run")
    saved = cfg.to_dict()
    del saved["meta"]["cuda_graphs"]  # as written before the key existed (its default, like the demo's)
    saved["logging"]["log_every"] = 7  # where and how often it writes is not the recipe
    _fake_checkpoint(tmp_path / "run", saved, cfg.total_steps() - 1)
    assert run_state(tmp_path / "run", demo_digits_config("data", "run")) == "resume"
    saved["mask"][1]["num_blocks"] = 3
    _fake_checkpoint(tmp_path / "run", saved, cfg.total_steps())
    with pytest.raises(ValueError, match=r"jepa-latest\.pth\.tar is another recipe \(mask\[1\]\.num_blocks: 3 -> 2\)"):
        run_state(tmp_path / "run", cfg)
    with pytest.raises(ValueError, match=r"data\.datasets: .*/data/train_digit\.csv'\] -> .*/moved/train_digit\.csv"):
        run_state(tmp_path / "run", demo_digits_config(tmp_path / "moved", tmp_path / "run"))


def test_a_failing_job_stops_the_others_and_names_its_log(tmp_path):
    slow = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    bad = [sys.executable, "-c", "import sys; print('bad input'); sys.exit(3)"]
    said = []
    jobs = [("slow", slow, tmp_path / "slow.log"), ("bad", bad, tmp_path / "bad.log"),
            ("never", slow, tmp_path / "never.log")]
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"bad failed \(exit 3\); see .*bad\.log:\nbad input"):
        demo_spread._run_jobs(jobs, 2, said.append)
    assert time.monotonic() - t0 < 30  # the slow job was terminated, not waited out
    assert any(line.startswith("  stopped slow") for line in said)
    assert not (tmp_path / "never.log").exists()  # not started after the failure


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads must be at least 1, not 0"),
    (["--seeds", "1", "1"], "must not repeat a seed"),
    (["meta.seed=3"], "meta.seed=3 refused: the seeds come from --seeds"),
    (["logging.folder=/elsewhere"], "logging.folder=/elsewhere refused"),
    (["logging.write_tag=x"], "logging.write_tag=x refused"),
])
def test_arguments_refused_before_any_work(argv, message, tmp_path, monkeypatch):
    def no_run(a, say=print):  # a regression must fail here, not start a 6,000-step pretraining
        raise AssertionError(f"demo-spread started with {a}")

    monkeypatch.setattr(demo_spread, "run_spread", no_run)
    with pytest.raises(SystemExit, match=message):
        demo_spread.main(["--out", str(tmp_path / "o"), "--data", str(tmp_path / "d"), *argv])
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()


def test_probe_job_reuses_its_results_only_for_the_same_checkpoint_file(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    from vjepa_fast import probe

    ckpt = tmp_path / "jepa-latest.pth.tar"
    ckpt.write_bytes(b"weights")
    out = tmp_path / "probes"
    out.mkdir()
    calls = []
    monkeypatch.setattr(probe, "run_demo_probes", lambda *a, **k: calls.append(k) or (_ for _ in ()).throw(
        RuntimeError("probed")))
    args = SimpleNamespace(out=str(out), checkpoint=str(ckpt), data=str(tmp_path), probe_seed=0, threads=1,
                           no_random=True)
    stamp = demo_spread._checkpoint_stamp(ckpt)
    (out / "run.json").write_text(json.dumps({"checkpoint": stamp, "random_init": False}))
    assert demo_spread._probe_one(args) == 0 and calls == []  # same file, same encoders: reused
    args.no_random = False  # the random encoder's figures are not in that run.json
    with pytest.raises(RuntimeError, match="probed"):
        demo_spread._probe_one(args)
    args.no_random = True
    ckpt.write_bytes(b"other weights")  # another checkpoint file: probed again
    with pytest.raises(RuntimeError, match="probed"):
        demo_spread._probe_one(args)
    assert len(calls) == 2
