"""``vjepa-fast demo-spread``: the demo's probe figures over several pretraining seeds and probe seeds,
reported as mean ± std, with the pretrained-minus-random gap set against that spread (issue 16).

One demo run proves nothing either way: its digit figure swung by 13.8 points (76.0 vs 62.2) between two
15,000-step runs of the same recipe. This runs the demo's own pieces, unchanged, for every pretraining
seed (``meta.seed``; :func:`vjepa_fast.train.run_demo_pretrain`) and every probe seed
(:func:`vjepa_fast.probe.run_demo_probes`, which also draws the random-init encoder), each in its own
process with a fixed torch thread count (``--jobs`` of them at a time), and writes ``OUT/spread.json``
and ``OUT/spread.md``:

* per run (pretraining seed × probe seed): attentive and linear probe val top-1, digit and motion, for
  the pretrained and the random-init encoder, and the context-use check;
* per probe and task: mean ± sample std (ddof 1) of the pretrained and of the random figure, the gap
  (mean pretrained − mean random), the std over pretraining seeds (at each probe seed, averaged over
  probe seeds) and over probe seeds, and whether the gap is more than twice the larger of the
  pretrained runs' std and the random runs' std (``spread``; ``clears``). Either std undefined (one
  run of that kind, e.g. a single probe seed leaves the random encoder one figure): no spread (NaN)
  and no verdict (``clears`` None).

A run folder that already holds a finished checkpoint of the same recipe is reused; an unfinished one
resumes (the trainer's exact resume). The recipe is the pretraining config without ``logging`` and the
keys in ``_NOT_TRAINING``; the data index is part of it as an absolute path (``demo_digits_config``
resolves it), so the same folder named relatively or absolutely matches, a moved copy does not.
Pretraining figures depend on the thread count and the machine: ``spread.json`` records both with the
rest of the provenance.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean, stdev
from typing import Sequence

TASKS = ("digit", "motion")
PROBES = ("attentive", "linear")
#: Keys of the pretraining config that do not change the weights (where and how often it writes).
_NOT_TRAINING = {("logging",), ("meta", "save_every_freq"), ("meta", "load_checkpoint"), ("meta", "read_checkpoint")}


# --------------------------------------------------------------------------------------------------
# one pretraining / one probe run (each in its own process, for a fixed thread count)
# --------------------------------------------------------------------------------------------------
def _training_fields(cfg_dict: dict) -> dict:
    out = {}
    for section, body in cfg_dict.items():
        if (section,) in _NOT_TRAINING:
            continue
        out[section] = {k: v for k, v in body.items() if (section, k) not in _NOT_TRAINING} \
            if isinstance(body, dict) else body
    return out


def run_state(run_dir: Path, cfg) -> str:
    """``"new"``, ``"done"`` (a finished checkpoint of the same recipe) or ``"resume"``. Raises
    ValueError naming the checkpoint and every differing key (``key: checkpoint's -> this run's``, as
    :func:`vjepa_fast.preflight.config_changes` compares them: a key the checkpoint's config lacks
    counts as its default, mask generators are compared key by key) when ``run_dir`` holds another recipe."""
    from .checkpoint import read_checkpoint  # noqa: PLC0415
    from .preflight import config_changes  # noqa: PLC0415

    ckpt_path = run_dir / f"{cfg.logging.write_tag}-latest.pth.tar"
    if not ckpt_path.is_file():
        return "new"
    extra = read_checkpoint(ckpt_path, mmap=True).get("vjepa_fast") or {}
    saved = _training_fields(extra.get("config") or {})
    wanted = _training_fields(cfg.to_dict())
    changes = config_changes(saved, wanted, keys=tuple(sorted(set(saved) | set(wanted))))
    if changes:
        raise ValueError(f"{ckpt_path} is another recipe ({'; '.join(changes)}); remove {run_dir} "
                         "or pick another --out")
    return "done" if int(extra.get("step", 0)) >= cfg.total_steps() else "resume"


def _pretrain_one(a) -> int:
    import torch  # noqa: PLC0415

    from .train import demo_digits_config, run_demo_pretrain  # noqa: PLC0415

    torch.set_num_threads(a.threads)
    overrides = [f"meta.seed={a.seed}", *a.overrides]
    state = run_state(Path(a.out), demo_digits_config(a.data, a.out, overrides))
    if state == "done":
        print(f"reusing the finished run in {a.out}", flush=True)
        return 0
    if state == "resume":
        overrides.append("meta.load_checkpoint=true")
    r = run_demo_pretrain(a.data, a.out, overrides=overrides)
    print(f"DONE {r.steps} steps in {r.seconds:.0f} s, loss {r.first_loss:.4f} -> {r.final_loss:.4f}", flush=True)
    return 0


def _checkpoint_stamp(path: Path) -> dict:
    """What identifies the probed checkpoint file for reuse: path, size and modification time."""
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _probe_one(a) -> int:
    import torch  # noqa: PLC0415

    from .cli import CONTEXT_USE_SEED  # noqa: PLC0415
    from .diagnostics import checkpoint_context_use  # noqa: PLC0415
    from .probe import run_demo_probes  # noqa: PLC0415

    # The context-use check runs after the probes, which put torch's thread count back: held here for
    # the whole job, as the demo holds its one thread, so its losses match the demo's to the bit.
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    stamp = _checkpoint_stamp(Path(a.checkpoint))
    done = out / "run.json"
    before = json.loads(done.read_text()) if done.is_file() else {}
    if before.get("checkpoint") == stamp and (before.get("random_init") or a.no_random):
        print(f"DONE reusing {done} (same checkpoint file)", flush=True)
        return 0
    probes = run_demo_probes(a.checkpoint, a.data, out, seed=a.probe_seed, threads=a.threads,
                             random_init=not a.no_random)
    context = checkpoint_context_use(a.checkpoint, Path(a.data) / "val_digit.csv", seed=CONTEXT_USE_SEED,
                                     out=lambda s: None)
    (out / "run.json").write_text(json.dumps({
        "attentive": probes["top1"], "linear": probes["linear_top1"], "chance": probes["chance"],
        "context_use": context.to_dict(), "seconds": probes["seconds"], "checkpoint": stamp,
        "random_init": not a.no_random}, indent=1) + "\n")
    t, lin = probes["top1"], probes["linear_top1"]
    print("DONE " + "; ".join(f"{enc}: " + ", ".join(
        f"{task} attentive {t[enc][task]:.1f} linear {lin[enc][task]:.1f}" for task in TASKS) for enc in t), flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# the statistics
# --------------------------------------------------------------------------------------------------
def _sd(xs: Sequence[float]) -> float:
    return stdev(xs) if len(xs) > 1 else math.nan


def summarise(runs: list[dict]) -> dict:
    """Per probe and task, from ``runs`` = ``[{"seed", "probe_seed", "attentive": {enc: {task: top1}},
    "linear": {...}}, ...]`` (module docstring). The random-init encoder depends on the probe seed only,
    so a run may leave ``"random"`` out; every probe seed needs it in at least one run. Raises ValueError
    when a probe seed has no random-init figure, or when two runs disagree on it."""
    seeds = sorted({r["seed"] for r in runs})
    pseeds = sorted({r["probe_seed"] for r in runs})
    at = {(r["seed"], r["probe_seed"]): r for r in runs}
    out = {}
    for probe in PROBES:
        for task in TASKS:
            pre = {k: r[probe]["pretrained"][task] for k, r in at.items()}
            rand = {}
            for (s, p), r in at.items():
                if "random" not in r[probe]:
                    continue
                v = r[probe]["random"][task]
                if rand.setdefault(p, v) != v:
                    raise ValueError(f"{probe} {task}: the random-init figure of probe seed {p} differs between "
                                     f"pretraining seeds ({rand[p]} vs {v} at seed {s}); it must not depend on them")
            missing = [p for p in pseeds if p not in rand]
            if missing:
                raise ValueError(f"{probe} {task}: no run has the random-init figure of probe seed(s) {missing}")
            pre_all, rand_all = list(pre.values()), [rand[p] for p in pseeds]
            over_seeds = [_sd([pre[s, p] for s in seeds if (s, p) in pre]) for p in pseeds]
            over_pseeds = [_sd([pre[s, p] for p in pseeds if (s, p) in pre]) for s in seeds]
            gap = mean(pre_all) - mean(rand_all)
            # explicit: max() with a NaN answers by argument order
            stds = (_sd(pre_all), _sd(rand_all))
            spread = math.nan if any(math.isnan(x) for x in stds) else max(stds)
            out[f"{probe}/{task}"] = {
                "pretrained_mean": mean(pre_all), "pretrained_std": _sd(pre_all), "pretrained_n": len(pre_all),
                "random_mean": mean(rand_all), "random_std": _sd(rand_all), "random_n": len(rand_all),
                "gap": gap, "std_over_pretraining_seeds": _nanmean(over_seeds),
                "std_over_probe_seeds": _nanmean(over_pseeds), "spread": spread,
                "clears": bool(gap > 2 * spread) if not math.isnan(spread) else None,
                "pretrained_wins": sum(pre[s, p] > rand[p] for s, p in pre), "runs": len(pre),
            }
    return out


def _nanmean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return mean(xs) if xs else math.nan


def format_spread(summary: dict, seeds: Sequence[int], probe_seeds: Sequence[int]) -> str:
    lines = [f"Demo probes over pretraining seeds {', '.join(map(str, seeds))} x probe seeds "
             f"{', '.join(map(str, probe_seeds))} (val top-1 %, mean ± std over runs)",
             "| probe, task | pretrained | random init | gap | std over pretraining seeds | std over probe seeds "
             "| pretrained > random | gap > 2 × spread |",
             "|---|---|---|---|---|---|---|---|"]
    for key, s in summary.items():
        probe, task = key.split("/")
        verdict = "n/a" if s["clears"] is None else ("yes" if s["clears"] else "no")
        if s["spread"] and not math.isnan(s["spread"]):
            verdict += f" ({s['gap'] / (2 * s['spread']):.2f}×)"
        lines.append(
            f"| {probe}, {task} | {s['pretrained_mean']:.1f} ± {s['pretrained_std']:.1f} | {s['random_mean']:.1f} ± "
            f"{s['random_std']:.1f} | {s['gap']:+.1f} | {s['std_over_pretraining_seeds']:.1f} | "
            f"{s['std_over_probe_seeds']:.1f} | {s['pretrained_wins']} of {s['runs']} | {verdict} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------------
def _run_jobs(jobs: list[tuple[str, list[str], Path]], parallel: int, say) -> None:
    """Run ``(name, argv, log)`` subprocesses, ``parallel`` at a time, printing each one's latest log
    line every minute. Raises RuntimeError naming the failed job, its exit status and its log; on that
    or any other exit before all are done (Ctrl-C included) the jobs still running are terminated
    (killed after 30 s) and waited for, and their logs closed: no job outlives the driver."""
    pending, running = list(jobs), []
    last_report = time.monotonic()
    try:
        while pending or running:
            while pending and len(running) < parallel:
                name, argv, log = pending.pop(0)
                log.parent.mkdir(parents=True, exist_ok=True)
                fh = open(log, "w")  # noqa: SIM115 (closed when the job ends, or in the finally below)
                say(f"  start {name} (log {log})")
                try:
                    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
                except BaseException:
                    fh.close()
                    raise
                running.append((name, proc, fh, log, time.monotonic()))
            time.sleep(2)
            for job in list(running):
                name, proc, fh, log, t0 = job
                if proc.poll() is None:
                    continue
                fh.close()
                running.remove(job)
                if proc.returncode != 0:
                    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                    raise RuntimeError(f"{name} failed (exit {proc.returncode}); see {log}:\n" + "\n".join(tail))
                say(f"  done  {name} in {time.monotonic() - t0:.0f} s: {_last_line(log)}")
            if running and time.monotonic() - last_report > 60:
                last_report = time.monotonic()
                for name, _, _, log, _ in running:
                    say(f"  ..    {name}: {_last_line(log)}")
    finally:
        for _, proc, _, _, _ in running:
            proc.terminate()
        for name, proc, fh, log, _ in running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            fh.close()
            say(f"  stopped {name} (log {log})")


def _last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "(no output yet)"


def run_spread(a, say=print) -> dict:
    from .cli import DEMO_PROBE_THREADS  # noqa: PLC0415
    from .demo_data import DEMO_DATA, make_demo_data  # noqa: PLC0415
    from .provenance import data_fingerprint, environment  # noqa: PLC0415

    out, data = Path(a.out).resolve(), Path(a.data).resolve()
    if not (data / "train_digit.csv").is_file():
        say(f"rendering the moving-digits demo videos into {data} ...")
        make_demo_data(str(data), **DEMO_DATA)
    me = [sys.executable, "-u", "-m", "vjepa_fast.demo_spread"]  # -u: the minute reports read the logs
    say(f"pretraining {len(a.seeds)} seed(s) on {a.threads} thread(s) each, {a.jobs} at a time, into {out}")
    _run_jobs([(f"pretraining seed {s}", [*me, "pretrain-one", "--data", str(data), "--out", str(out / f"seed{s}"),
                                          "--seed", str(s), "--threads", str(a.threads), *a.overrides],
                out / f"seed{s}.log") for s in a.seeds], a.jobs, say)
    say(f"probing {len(a.seeds)} checkpoint(s) x {len(a.probe_seeds)} probe seed(s)")
    _run_jobs([(f"probes seed {s} probe seed {p}",
                [*me, "probe-one", "--data", str(data), "--checkpoint", str(out / f"seed{s}" / "jepa-latest.pth.tar"),
                 "--out", str(out / f"seed{s}" / f"probes_p{p}"), "--probe-seed", str(p),
                 "--threads", str(DEMO_PROBE_THREADS), *(["--no-random"] if s != a.seeds[0] else [])],
                out / f"seed{s}" / f"probes_p{p}.log")
               for s in a.seeds for p in a.probe_seeds], a.jobs, say)
    runs = []
    for s in a.seeds:
        for p in a.probe_seeds:
            r = json.loads((out / f"seed{s}" / f"probes_p{p}" / "run.json").read_text())
            runs.append({"seed": s, "probe_seed": p, **r})
    summary = summarise(runs)
    table = format_spread(summary, a.seeds, a.probe_seeds)
    record = {"seeds": list(a.seeds), "probe_seeds": list(a.probe_seeds), "overrides": list(a.overrides),
              "threads": {"pretraining": a.threads, "probes": DEMO_PROBE_THREADS},
              "data": {"clips_sha256": data_fingerprint(data / "train_digit.csv", data / "val_digit.csv")},
              **environment("cpu, float32"), "summary": summary, "runs": runs, "table": table}
    (out / "spread.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "spread.md").write_text(table + "\n")
    say(table)
    say(f"written: {out / 'spread.json'}, {out / 'spread.md'}")
    return record


def build_parser() -> argparse.ArgumentParser:
    from .cli import DEMO_CPU_THREADS, DEMO_DATA, REPO  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="vjepa-fast demo-spread", description=(
        "The demo's probe figures (attentive and linear, digit and motion, pretrained and random init) over "
        "several pretraining seeds and probe seeds: mean ± std and the gap against that spread. CPU only, fp32. "
        "Each pretraining seed is a full demo pretraining (about 30 min alone on one thread of a 2-core machine); the README's "
        "3 x 3 spread took 61 min of pretraining (3 side by side) and about 20 min of probes on 2 cores. "
        "Finished run folders in --out are reused."))
    p.add_argument("--data", default=str(DEMO_DATA), help="demo video folder (rendered if missing)")
    p.add_argument("--out", default=str(REPO / "runs" / "demo_spread"),
                   help="folder for the runs and spread.json / spread.md (default runs/demo_spread)")
    p.add_argument("--seeds", type=int, nargs="+", default=[234, 1, 2], help="pretraining seeds (default 234 1 2)")
    p.add_argument("--probe-seeds", type=int, nargs="+", default=[0, 1, 2], help="probe seeds (default 0 1 2)")
    p.add_argument("--threads", type=int, default=DEMO_CPU_THREADS,
                   help=f"torch threads per pretraining process (default {DEMO_CPU_THREADS}, as the CPU demo)")
    p.add_argument("--jobs", type=int, default=1, help="processes at a time (default 1)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for configs/pretrain/demo_digits.yaml")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("pretrain-one", "probe-one"):
        one = argparse.ArgumentParser(prog=f"vjepa_fast.demo_spread {argv[0]}")
        one.add_argument("--data", required=True)
        one.add_argument("--out", required=True)
        one.add_argument("--threads", type=int, required=True)
        if argv[0] == "pretrain-one":
            one.add_argument("--seed", type=int, required=True)
            one.add_argument("overrides", nargs="*")
            return _pretrain_one(one.parse_args(argv[1:]))
        one.add_argument("--checkpoint", required=True)
        one.add_argument("--probe-seed", type=int, required=True)
        one.add_argument("--no-random", action="store_true", help="probe the pretrained encoder only")
        return _probe_one(one.parse_args(argv[1:]))
    a = build_parser().parse_args(argv)
    for name in ("threads", "jobs"):
        if getattr(a, name) < 1:
            raise SystemExit(f"vjepa-fast demo-spread: --{name} must be at least 1, not {getattr(a, name)}")
    if len(set(a.seeds)) != len(a.seeds) or len(set(a.probe_seeds)) != len(a.probe_seeds):
        raise SystemExit("vjepa-fast demo-spread: --seeds and --probe-seeds must not repeat a seed")
    fixed = ("meta.seed=", "meta.device=", "meta.dtype=", "logging.folder=", "logging.write_tag=", "data.datasets=")
    bad = [o for o in a.overrides if o.replace(" ", "").startswith(fixed)]
    if bad:  # the probes, run_state and the fingerprint look for the checkpoint and data where these say
        raise SystemExit(f"vjepa-fast demo-spread: {', '.join(bad)} refused: the seeds come from --seeds, the "
                         "data from --data, the run folders from --out, and the device is the CPU")
    run_spread(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
