"""``vjepa-fast`` command line: ``demo``, ``demo-spread``, ``pretrain``, ``check-config``, ``probe``,
``context-use``, ``embed``, ``plot``, ``profile``, ``make-demo-data``."""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "data" / "demo"
DEMO_RUN = REPO / "runs" / "demo_digits"


def _rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _pretrain(args) -> int:
    from .config import PretrainConfig
    from .train import pretrain

    result = pretrain(PretrainConfig.from_yaml(args.config, args.overrides))
    if _rank0():
        print(f"done: {result.steps} steps, loss {result.first_loss:.4f} -> {result.final_loss:.4f}")
        if result.checkpoint:  # only a file this run wrote
            print(f"checkpoint: {result.checkpoint}")
        print(f"log: {result.log}")
    return 0


def _check_config(args) -> int:
    """Every check a run makes before its first step, without running or writing anything."""
    import yaml

    from .config import ConfigError, PretrainConfig, find_ignored_keys, load_config
    from .preflight import plan_pretrain_start, pretrain_problems, probe_problems

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        problems = [p.bare_message for p in e.problems]
        source = e.source or args.config
        print(f"vjepa-fast check-config: {source}: {len(problems)} problem(s); the run would not start:",
              file=sys.stderr)
        print("".join(f"  - {p}\n" for p in problems), end="", file=sys.stderr)
        return 2
    print(f"# {args.config}" + (f" with {' '.join(args.overrides)}" if args.overrides else "") + ", resolved:")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None), end="")
    if isinstance(cfg, PretrainConfig):
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        problems = pretrain_problems(cfg, world_size=world)
        plan = plan_pretrain_start(cfg, cfg.optimization.ipe, None, mmap=True)
        what = {"fresh": f"a new run in {cfg.logging.folder}",
                "resume": f"resume {plan.path} at step {plan.step}",
                "init": f"a new run in {cfg.logging.folder} from the weights of {plan.path}"}[plan.kind]
    else:
        problems = probe_problems(cfg)
        what = f"a probe run in {cfg.output_folder}"
    ignored = find_ignored_keys(yaml.safe_load(open(args.config)) or {})
    if ignored:
        print(f"# accepted without effect: {', '.join(ignored)}")
    if problems:
        print(f"vjepa-fast check-config: {args.config}: {len(problems)} problem(s); the run would not start:",
              file=sys.stderr)
        print("".join(f"  - {p}\n" for p in problems), end="", file=sys.stderr)
        return 2
    print(f"# ok: {what} would start")
    return 0


def _probe(args) -> int:
    from .config import EvalConfig
    from .probe import main_probe

    result = main_probe(EvalConfig.from_yaml(args.config, args.overrides))
    print(f"best probe: top-1 {result.top1:.2f}" + (f", top-5 {result.top5:.2f}" if result.top5 is not None else ""))
    print(f"results: {result.results_json}")
    return 0


def _context_use(args) -> int:
    import json

    from .diagnostics import checkpoint_context_use

    r = checkpoint_context_use(args.checkpoint, args.index, num_clips=args.clips, batch_size=args.batch_size,
                               seed=args.seed, out=print)
    if args.json:
        Path(args.json).write_text(json.dumps(r.to_dict(), indent=1) + "\n")
    return 0


def _plot(args) -> int:
    from .plot import plot

    print(plot(args.run_dir, args.out))
    return 0


def _load_profile_script():
    """``benchmarks/profile_step.py`` as a module (benchmarks/ is not an installed package), or None
    outside a clone of the repository."""
    path = REPO / "benchmarks" / "profile_step.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("vjepa_fast_profile_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _profile(args) -> int:
    module = _load_profile_script()
    if module is None:
        print(f"vjepa-fast profile: error: the profiler script is not here ({REPO / 'benchmarks'}); "
              "run it from a clone of the repository", file=sys.stderr)
        return 2
    return module.main(args.rest)


def demo_device(requested: str = "auto") -> tuple[str, list[str], str]:
    """(device, config overrides, why) for the demo. ``auto``: the first CUDA device when torch sees
    one, with bf16 autocast (what the GPU path is built for) and the longer run of
    :data:`DEMO_GPU_EPOCHS`, else the CPU in fp32 (the measured path of configs/pretrain/demo_digits.yaml,
    unchanged). Raises ValueError for a device that is not there."""
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, not {requested!r}")
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise ValueError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    if requested == "cpu" or not has_cuda:
        why = "asked for with --device cpu" if requested == "cpu" else "torch sees no CUDA device"
        return "cpu", [], f"cpu, float32 ({why})"
    name = torch.cuda.get_device_name(0)
    why = "asked for with --device cuda" if requested == "cuda" else "CUDA is available; --device cpu for the CPU path"
    return ("cuda", ["meta.device=cuda", "meta.dtype=bfloat16", f"optimization.epochs={DEMO_GPU_EPOCHS}"],
            f"cuda:0 ({name}), bfloat16 ({why})")


def demo_provenance(args, device: str, device_why: str, cfg, threads: int) -> dict:
    """What a demo run's figures depend on besides the code: the pretraining seed (``cfg.meta.seed``),
    the probes' seed (probe init and batch order, and the random-init encoder's weights), the
    context-use mask draw, torch's intra-op threads for pretraining (and for the probes, which run on
    one thread on the CPU), the data (a fingerprint of the train and val clips, the decoder that reads
    them) and :func:`vjepa_fast.provenance.environment` (commit, machine, versions). Call it after the
    data are rendered. Never raises for the data's part: a fingerprint or decoder that cannot be
    taken is recorded as ``"unavailable: <reason>"`` (the figures it would describe are already
    being computed)."""
    from .decoders import decoder_version, resolve_decoder
    from .provenance import data_fingerprint, environment

    try:
        clips = data_fingerprint(*(Path(args.data) / f"{s}_digit.csv" for s in ("train", "val")))
    except (OSError, ValueError) as e:
        clips = f"unavailable: {type(e).__name__}: {e}"
    try:
        decoder = resolve_decoder(cfg.data.decoder)
        decoder = f"{decoder} {decoder_version(decoder)}"
    except (ImportError, OSError, ValueError, RuntimeError) as e:
        decoder = f"unavailable: {type(e).__name__}: {e}"
    return {
        "seed": cfg.meta.seed,
        "probe_seed": args.probe_seed,
        "context_use_seed": CONTEXT_USE_SEED,
        "threads": {"pretraining": threads, "probes": DEMO_PROBE_THREADS if device == "cpu" else threads},
        "overrides": list(args.overrides),
        "data": {"clips_sha256": clips, "decoder": decoder},
        **environment(device_why),
    }


#: The demo's context-use mask draw, and the probes' CPU threads (``run_demo_probes``'s default).
CONTEXT_USE_SEED = 0
DEMO_PROBE_THREADS = 1
#: The demo's pretraining threads on the CPU unless --threads says otherwise. One: the thread count
#: changes the figures (in the last bits from the second step on, growing over a run), so with one
#: thread they no longer depend on how many cores a machine has; on 2 cores a second thread cut a
#: step's time by only ~14 % (267 vs 230 ms, measured), and the data-loading worker uses the other core.
DEMO_CPU_THREADS = 1
#: Epochs of 50 steps on a GPU: 15,000 steps, the length at which both CPU runs of that length reported
#: so far had their predictor reading the context (+24-26 % in context-use; at 6,000 steps the three
#: seeds of the CPU spread reached +4 to +22 %, and their linear motion figure followed that). Expected
#: to take a few minutes on one GPU (a tiny model; the data loading may bound it): not yet measured on
#: GPU.
DEMO_GPU_EPOCHS = 300
#: Printed after the demo's table: what the recipe showed over seeds (README "The demo", measured with
#: `vjepa-fast demo-spread` at 6,000 steps: 3 pretraining seeds x 3 probe seeds, 1 thread, 2-core CPU).
DEMO_MEASURED = (
    "what the CPU demo's 6,000-step recipe showed (README \"The demo\", measured over 3 pretraining x 3 probe "
    "seeds with `vjepa-fast demo-spread`): the linear probe on pooled features beat random init in every run, "
    "on digits by 22.9 points on average (spread 1.8) and on motion by 20.8 (but the pretrained motion figure's "
    "std was 14.6 over the 9 runs and 16.9 between pretraining seeds, so that gap is not twice its spread); the "
    "attentive probe did not beat random init on average on either task (digits -3.0, motion -0.1; it won 2 and "
    "3 of the 9 runs): the attentive probe reads a lot from random token features, and this small model's "
    "pretraining did not add to it")


def _demo(args) -> int:
    import torch

    if any(o.startswith(("meta.device=", "meta.dtype=")) for o in args.overrides):
        raise ValueError("the demo picks meta.device and meta.dtype from --device (auto, cpu or cuda); "
                         "drop the meta.device= / meta.dtype= override")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be at least 1, not {args.threads}")
    before = torch.get_num_threads()
    threads = args.threads
    if threads is None and demo_device(args.device)[0] == "cpu":
        threads = DEMO_CPU_THREADS
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        return _run_demo(args, torch.get_num_threads())
    finally:
        torch.set_num_threads(before)  # for callers of cli.main in the same process


def _run_demo(args, threads: int) -> int:
    import json

    from .diagnostics import checkpoint_context_use
    from .probe import run_demo_probes
    from .provenance import format_fields, git_commit
    from .train import demo_digits_config, run_demo_pretrain

    device, device_overrides, why = demo_device(args.device)
    overrides = [*device_overrides, *args.overrides]
    cfg = demo_digits_config(args.data, args.out, overrides)
    print(f"vjepa-fast demo on {why}", flush=True)
    where = "on the CPU (about 35 minutes on 2 cores, probes included)" if device == "cpu" else "on the GPU"
    print(
        "(1) render the moving-digits videos (real MP4s of scikit-learn's handwritten "
        f"digits moving in known directions), (2) pretrain a tiny V-JEPA on them {where} with the "
        "official masks, loss, lr/wd schedules, AdamW and EMA update (constant momentum 0.999), (3) probe "
        "the frozen encoder for digit class (appearance) and motion direction (motion) on held-out clips, "
        "next to a random-init encoder.",
        flush=True,
    )
    print(f"seed {cfg.meta.seed} (meta.seed), probe seed {args.probe_seed} (--probe-seed), "
          f"{threads} torch thread(s) (--threads)", flush=True)
    commit_at_start = git_commit()  # the code that runs is the code loaded now
    result = run_demo_pretrain(args.data, args.out, overrides=overrides)
    provenance = demo_provenance(args, device, why, cfg, threads)  # the data exist now
    if provenance.get("commit") != commit_at_start:  # someone committed in this checkout meanwhile
        provenance["commit_at_end"], provenance["commit"] = provenance.get("commit"), commit_at_start
    print(
        f"\npretraining: {result.steps} steps in {result.seconds:.0f} s, loss {result.first_loss:.4f} -> "
        f"{result.final_loss:.4f}\ncheckpoint (official format): {result.checkpoint}\nlog: {result.log}\n"
        f"plot: {Path(args.out) / 'training.png'}\n",
        flush=True,
    )
    # Cheap (one forward pass over some held-out clips) and says whether the run learnt more than position.
    context = checkpoint_context_use(result.checkpoint, Path(args.data) / "val_digit.csv", seed=CONTEXT_USE_SEED,
                                     out=print)
    print(flush=True)
    probes = run_demo_probes(result.checkpoint, args.data, Path(args.out) / "probes", device=device,
                             seed=args.probe_seed, threads=DEMO_PROBE_THREADS)
    print(f"\nprobe results: {Path(args.out) / 'probes'}")
    top1, linear = probes["top1"], probes["linear_top1"]
    beaten = [f"{task} ({kind} probe)" for kind, t in (("attentive", top1), ("linear", linear))
              for task in ("digit", "motion") if t["pretrained"][task] <= t["random"][task]]
    if beaten:
        print(f"note: the pretrained encoder does not beat random init on: {', '.join(beaten)}"
              + ("" if context.uses_context() else
                 " (its predictor ignores the context's content, see above; README: The demo)"))
    if device == "cpu":
        print(DEMO_MEASURED)
    else:
        print(f"on a GPU the demo pretrains {result.steps:,} steps (optimization.epochs={DEMO_GPU_EPOCHS} unless "
              "overridden; the CPU demo: 6,000); the spread of its figures over seeds is not yet measured on a "
              "GPU. For comparison, " + DEMO_MEASURED)
    record = Path(args.out) / "demo_provenance.json"
    print(f"\nthese figures come from (also in {record}):\n{format_fields(provenance)}")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({
        **provenance,
        "pretraining": {"steps": result.steps, "seconds": round(result.seconds, 1),
                        "first_loss": result.first_loss, "final_loss": result.final_loss,
                        "checkpoint": str(result.checkpoint), "log": str(result.log)},
        "context_use": context.to_dict(),
        "probes": {"top1": top1, "linear_top1": linear, "chance": probes.get("chance"),
                   "results": str(Path(args.out) / "probes")},
    }, indent=1) + "\n")
    return 0


def _embed(args) -> int:
    from .embed import run

    return run(args)


def _make_demo_data(args) -> int:
    from . import demo_data

    return demo_data.main(args.rest) or 0


#: Subcommands whose arguments all go to another parser (``vjepa-fast profile --help`` is the script's).
def _demo_spread(args) -> int:
    from . import demo_spread

    return demo_spread.main(args.rest) or 0


PASS_THROUGH = {"profile": _profile, "make-demo-data": _make_demo_data, "demo-spread": _demo_spread}


def build_parser() -> argparse.ArgumentParser:
    """The ``vjepa-fast`` parser (``profile`` / ``make-demo-data`` are listed here; :func:`main` hands
    their arguments to their own parsers)."""
    parser = argparse.ArgumentParser(prog="vjepa-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the bundled demo: demo data, tiny pretraining, probes (about 35 min on 2 CPU cores)")
    p.add_argument("--data", default=str(DEMO_DATA), help="demo video folder (rendered if missing)")
    p.add_argument("--out", default=str(DEMO_RUN), help="run folder")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: the GPU (bf16) when torch sees one, else the CPU (fp32)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"torch intra-op threads for pretraining (default on the CPU: {DEMO_CPU_THREADS}, so the "
                        "figures do not depend on the core count; on a GPU: torch's); the same seed and thread "
                        "count on the same machine give the same numbers")
    p.add_argument("--probe-seed", type=int, default=0,
                   help="seed of the probes (init, batch order) and of the random-init encoder (default 0)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for configs/pretrain/demo_digits.yaml "
                   "(meta.seed=N: the pretraining seed)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("pretrain", help="pretrain V-JEPA from a YAML config (torchrun for several GPUs)")
    p.add_argument("--config", required=True, help="YAML file (official layout)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optimization.lr=1e-3")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("check-config", help="every check a pretraining or probe run makes before its first "
                       "step (keys, values, data, checkpoints, devices), without running; exit 0 = it would start")
    p.add_argument("--config", required=True, help="pretraining or eval YAML file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, as for pretrain / probe")
    p.set_defaults(func=_check_config)

    p = sub.add_parser("probe", help="train and evaluate attentive probes on a frozen encoder")
    p.add_argument("--config", required=True, help="eval YAML file (official layout)")
    p.add_argument("overrides", nargs="*", help="dotted overrides")
    p.set_defaults(func=_probe)

    p = sub.add_parser("context-use", help="does a pretraining checkpoint's predictor use the context's "
                       "content, or only position? (JEPA loss with own vs another clip's context)")
    p.add_argument("checkpoint", help="a checkpoint written by vjepa-fast pretrain (its config is inside)")
    p.add_argument("index", help="held-out videos, official index format ('<path> <label>' per line)")
    p.add_argument("--clips", type=int, default=96, help="clips to score (default 96)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="mask draw")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.set_defaults(func=_context_use)

    p = sub.add_parser("embed", help="frozen-encoder features of every sliding window of a list of videos "
                       "(safetensors / .npz, resumable)")
    from .embed import add_arguments as add_embed_arguments

    add_embed_arguments(p)
    p.set_defaults(func=_embed)

    p = sub.add_parser("plot", help="PNG of loss, lr/wd and throughput of a run folder")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/training.png)")
    p.set_defaults(func=_plot)

    for name, helptext, func in (
        ("profile", "torch.profiler trace + top-kernel table of training steps (benchmarks/profile_step.py)", _profile),
        ("make-demo-data", "render the moving-digits demo videos", _make_demo_data),
        ("demo-spread", "the demo's probe figures over several pretraining and probe seeds, mean ± std "
         "(vjepa_fast/demo_spread.py)", _demo_spread),
    ):
        p = sub.add_parser(name, help=helptext, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASS_THROUGH:
        # These hand every argument to a script with its own parser. An argparse REMAINDER in a
        # subparser does not take arguments that start with '--', so they are split off here; a
        # leading '--' (the old workaround) is still accepted.
        rest = argv[1:][1:] if argv[1:2] == ["--"] else argv[1:]
        args = argparse.Namespace(command=argv[0], rest=rest, func=PASS_THROUGH[argv[0]])
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        # Config, data and checkpoint errors already name the file/key/value: no traceback.
        print(f"vjepa-fast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
