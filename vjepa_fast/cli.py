"""``vjepa-fast`` command line: ``pretrain``, ``demo``, ``make-demo-data``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"


def _pretrain(args) -> int:
    from .config import PretrainConfig
    from .train import pretrain

    cfg = PretrainConfig.from_yaml(args.config, args.overrides)
    result = pretrain(cfg)
    print(f"done: {result.steps} steps, loss {result.first_loss:.4f} -> {result.final_loss:.4f}")
    print(f"checkpoint: {result.checkpoint}\nlog: {result.log}")
    return 0


def _demo(args) -> int:
    from .config import PretrainConfig
    from .train import pretrain

    if not DEMO_CONFIG.is_file():
        print(f"demo config not found at {DEMO_CONFIG} (run from a clone of the repository)", file=sys.stderr)
        return 2
    cfg = PretrainConfig.from_yaml(DEMO_CONFIG, args.overrides)
    d, m = cfg.data, cfg.model
    print(
        f"vjepa-fast demo: pretraining a tiny V-JEPA ({m.model_name}, {d.num_frames}x{d.crop_size}px clips, "
        f"batch {d.batch_size}, {cfg.total_steps()} steps, {cfg.meta.dtype}) on SYNTHETIC random clips "
        f"with the official masks, loss, schedules, AdamW and EMA. Real video data comes with the "
        f"pretraining pipeline.",
        flush=True,
    )
    result = pretrain(cfg)
    print(
        f"\nran {result.steps} real training steps in {result.seconds:.1f} s; "
        f"loss {result.first_loss:.4f} -> {result.final_loss:.4f}\n"
        f"checkpoint (official format): {result.checkpoint}\nper-step log: {result.log}"
    )
    return 0


def _make_demo_data(args) -> int:
    from . import demo_data

    return demo_data.main(args.rest) or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vjepa-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pretrain V-JEPA from a YAML config")
    p.add_argument("--config", required=True, help="YAML file (official layout)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optimization.lr=1e-3")
    p.set_defaults(func=_pretrain)
    p = sub.add_parser("demo", help="the bundled demo (tiny model, a few minutes on a CPU)")
    p.add_argument("overrides", nargs="*", help="dotted overrides for configs/pretrain/tiny_cpu.yaml")
    p.set_defaults(func=_demo)
    p = sub.add_parser("make-demo-data", help="render the moving-digits demo videos", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_make_demo_data)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        # Config and checkpoint errors already name the file/key/value: show them without a traceback.
        print(f"vjepa-fast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
