"""vjepa-fast demo-spread (vjepa_fast.demo_spread): the statistics it reports over pretraining and probe
seeds, and how it treats an existing run folder (issue 16: the demo's figures as mean ± std)."""
from __future__ import annotations

import math
from statistics import mean, stdev

import pytest

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
    assert s["clears"] is False  # gap ~3.7, spread ~5.3


def test_summary_clears_only_beyond_twice_the_spread():
    s = summarise(RUNS)["linear/digit"]  # pretrained -10, random -30: gap 16.3 points
    assert s["gap"] == pytest.approx(mean(PRE.values()) - 10.0 - 36.0)
    assert s["clears"] is (s["gap"] > 2 * s["spread"]) is True
    one = summarise([_run(1, 0, 70.0, 60.0)])["attentive/digit"]
    assert math.isnan(one["pretrained_std"]) and one["clears"] is None  # one run: no spread, no verdict


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
    with pytest.raises(ValueError, match=r"another recipe \(meta\.seed: 7 there, 8 here\); remove"):
        run_state(tmp_path / "run", other)


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads must be at least 1, not 0"),
    (["--seeds", "1", "1"], "must not repeat a seed"),
    (["meta.seed=3"], "the seeds come from --seeds"),
])
def test_arguments_refused_before_any_work(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        demo_spread.main(["--out", str(tmp_path / "o"), "--data", str(tmp_path / "d"), *argv])
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()
