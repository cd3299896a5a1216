"""What ships has to work as shipped: every `vjepa-fast` command line in the README runs as written
through the CLI entry point, and every config in configs/ that fits the bundled demo data runs on it
(pretraining for a step, a probe for an epoch).

The bundled data are rendered small here (16 train / 16 val clips, otherwise the demo's settings:
8 motion directions, 10 digit classes). README commands run from a working directory that has
``configs/`` and ``data/demo`` like a fresh clone (plus ``runs/`` from a 1-step pretraining for the
commands that read a run). Commands whose work takes minutes (pretrain, probe, demo, profile,
make-demo-data) run up to the point where the work would begin: their arguments are parsed by the
real parsers, their configs loaded, and the checks a run makes before its first step
(:mod:`vjepa_fast.preflight`) must pass; the configs themselves run for real in the second part.
"""
from __future__ import annotations

import re
import shlex
import shutil
import types
from pathlib import Path

import pytest

pytest.importorskip("av")
pytest.importorskip("sklearn")
pytest.importorskip("decord")

from vjepa_fast import cli  # noqa: E402
from vjepa_fast.config import EvalConfig, PretrainConfig, load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
DEMO_DATA_DIR = "data/demo"
# the configs that must be found runnable on the bundled data (a guard against a classification that
# silently skips them)
EXPECTED_RUNNABLE = {"pretrain/demo_digits.yaml", "pretrain/tiny_cpu.yaml", "evals/demo_digits_probe.yaml",
                     "evals/demo_motion_probe.yaml", "evals/tiny_cpu_probe.yaml"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def runs_on_bundled_data(path: Path) -> bool:
    cfg = load_config(path)
    if isinstance(cfg, PretrainConfig):
        return cfg.data.synthetic or (bool(cfg.data.datasets)
                                      and all(p.startswith(DEMO_DATA_DIR) for p in cfg.data.datasets))
    return all((p or "").startswith(DEMO_DATA_DIR) for p in (cfg.data.dataset_train, cfg.data.dataset_val))


def _workdir(root: Path, data: Path) -> Path:
    """A directory laid out like a clone: configs/ and data/demo."""
    root.mkdir()
    (root / "configs").symlink_to(REPO / "configs")
    (root / "data").mkdir()
    (root / "data" / "demo").symlink_to(data)
    return root


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from vjepa_fast.demo_data import DEMO_DATA, make_demo_data

    out = tmp_path_factory.mktemp("bundled") / "demo"
    out.mkdir()
    make_demo_data(str(out), n_train=16, **{**DEMO_DATA, "n_val": 16})
    return out


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, demo_data):
    """A clone-like directory where every runnable pretraining config has run one step."""
    root = _workdir(tmp_path_factory.mktemp("configs") / "clone", demo_data)
    ran = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for path in CONFIGS:
            cfg = load_config(path)
            if isinstance(cfg, PretrainConfig) and runs_on_bundled_data(path):
                rc = cli.main(["pretrain", "--config", f"configs/{_name(path)}", "optimization.max_steps=1",
                               "data.num_workers=0", "meta.device=cpu"])
                ran[_name(path)] = (rc, root / cfg.logging.folder)
    return root, ran


# ------------------------------------------------------------------------------------------------
# every config that fits the bundled data runs on it
# ------------------------------------------------------------------------------------------------
def test_the_expected_configs_are_found_runnable():
    assert EXPECTED_RUNNABLE <= {_name(p) for p in CONFIGS if runs_on_bundled_data(p)}


@pytest.mark.parametrize("path", [p for p in CONFIGS if isinstance(load_config(p), PretrainConfig)], ids=_name)
def test_pretraining_config_runs_a_step(path, pretrained):
    root, ran = pretrained
    if _name(path) not in ran:
        assert not runs_on_bundled_data(path)
        return  # needs data that is not bundled (Kinetics, SSv2, ...): test_config loads it
    rc, folder = ran[_name(path)]
    assert rc == 0
    assert (folder / "jepa-latest.pth.tar").is_file() and (folder / "params-pretrain.yaml").is_file()


@pytest.mark.parametrize("path", [p for p in CONFIGS if isinstance(load_config(p), EvalConfig)], ids=_name)
def test_probe_config_runs_an_epoch(path, pretrained, monkeypatch, capsys):
    if not runs_on_bundled_data(path):
        return  # needs data that is not bundled: test_config loads it
    root, _ = pretrained
    monkeypatch.chdir(root)
    rc = cli.main(["probe", "--config", f"configs/{_name(path)}", "optimization.num_epochs=1", "data.num_workers=0",
                   "meta.device=cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "best probe: top-1" in out


# ------------------------------------------------------------------------------------------------
# every README command line runs as written
# ------------------------------------------------------------------------------------------------
def readme_commands() -> tuple[list[str], list[str]]:
    """``(command lines, bare subcommand names)``: the ``vjepa-fast`` lines of the code blocks and the
    inline ``vjepa-fast ...`` spans with arguments; spans without arguments, or with placeholders
    (``FILE``, ``[key=value ...]``), only name a subcommand."""
    text = README.read_text()
    lines, names = [], []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("vjepa-fast "):
                lines.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`(vjepa-fast\s[^`]+)`", prose):
        span = " ".join(span.split())
        tokens = shlex.split(span)
        placeholder = "[" in span or "..." in span or any(t.isupper() for t in tokens[2:])
        (names if len(tokens) == 2 or placeholder else lines).append(tokens[1] if placeholder or len(tokens) == 2
                                                                    else span)
    return lines, names


def test_readme_has_commands():
    lines, names = readme_commands()
    subcommands = {shlex.split(line)[1] for line in lines}
    assert {"pretrain", "probe", "check-config", "make-demo-data", "profile"} <= subcommands


@pytest.fixture(scope="module")
def clones(tmp_path_factory, demo_data, pretrained):
    """Two clone-like directories: ``fresh`` (data only) and ``trained`` (plus runs/ with the
    checkpoints of the 1-step pretraining runs, nothing else)."""
    base = tmp_path_factory.mktemp("readme")
    fresh = _workdir(base / "fresh", demo_data)
    trained = _workdir(base / "trained", demo_data)
    root, ran = pretrained
    for rc, folder in ran.values():
        dest = trained / folder.relative_to(root)
        dest.mkdir(parents=True)
        shutil.copy(folder / "jepa-latest.pth.tar", dest / "jepa-latest.pth.tar")
    return {"fresh": fresh, "trained": trained}


def _needs_a_run(argv: list[str]) -> bool:
    joined = " ".join(argv)
    if "--config" in argv:  # a V-JEPA 2 cooldown starts from another run's checkpoint
        cfg = load_config(REPO / argv[argv.index("--config") + 1])
        if isinstance(cfg, PretrainConfig) and cfg.optimization.is_anneal:
            return True
    return (argv[0] in ("probe", "context-use", "embed") or "runs/" in joined or "meta.load_checkpoint=true" in joined
            or (argv[0] == "check-config" and "configs/evals/" in joined))


@pytest.fixture
def stubs(monkeypatch, clones):
    """Stand-ins for the long-running work behind the commands; each checks what a real start checks.
    (``context-use`` and ``check-config`` run for real.)"""
    from vjepa_fast import demo_data, preflight, probe, train

    calls = []

    def pretrain(cfg, out=None):
        problems = preflight.pretrain_problems(cfg)
        assert not problems, problems
        calls.append(("pretrain", cfg))
        return types.SimpleNamespace(steps=1, first_loss=1.0, final_loss=1.0, checkpoint=None, log="log.csv",
                                     seconds=0.0)

    def main_probe(cfg, out=None):
        problems = preflight.probe_problems(cfg)
        assert not problems, problems
        calls.append(("probe", cfg))
        return types.SimpleNamespace(top1=0.0, top5=None, results_json="results.json")

    def run_demo_pretrain(data_dir, out_dir, overrides=(), out=None, **kw):
        cfg = train.demo_digits_config(data_dir, out_dir, overrides)
        assert not preflight.pretrain_problems(cfg)
        calls.append(("demo", cfg))
        # the demo goes on with a context-use check of the checkpoint: a real one, from the 1-step run
        ckpt = clones["trained"] / "runs" / "demo_digits" / "jepa-latest.pth.tar"
        return types.SimpleNamespace(steps=1, first_loss=1.0, final_loss=1.0, checkpoint=str(ckpt), log="log",
                                     seconds=0)

    profile_script = cli._load_profile_script()

    def profile_main(argv):
        args = profile_script.build_parser().parse_intermixed_args(argv)  # the script's own parser
        if args.config:
            calls.append(("profile", PretrainConfig.from_yaml(args.config, args.overrides)))
        return 0

    monkeypatch.setattr(train, "pretrain", pretrain)
    monkeypatch.setattr(train, "run_demo_pretrain", run_demo_pretrain)
    monkeypatch.setattr(probe, "main_probe", main_probe)
    monkeypatch.setattr(probe, "run_demo_probes", lambda *a, **k: {
        key: {e: {"digit": 1.0, "motion": 1.0} for e in ("pretrained", "random")} for key in ("top1", "linear_top1")})
    monkeypatch.setattr(demo_data, "make_demo_data", lambda out, **kw: calls.append(("make-demo-data", out)))
    monkeypatch.setattr(cli, "_load_profile_script", lambda: types.SimpleNamespace(main=profile_main))
    return calls


@pytest.mark.parametrize("line", readme_commands()[0])
def test_readme_command_runs_as_written(line, clones, stubs, monkeypatch, capsys):
    argv = shlex.split(line)[1:]
    cwd = clones["trained" if _needs_a_run(argv) else "fresh"]
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(cli, "DEMO_DATA", cwd / "data" / "demo")  # the demo's defaults: the clone's folders
    monkeypatch.setattr(cli, "DEMO_RUN", cwd / "runs" / "demo_digits")
    known = {"demo", "pretrain", "probe", "check-config", "context-use", "plot", "profile", "make-demo-data", "embed"}
    if argv[0] == "demo-spread":  # hours of work; its own parser (cli hands it every argument) must accept them
        from vjepa_fast import demo_spread

        demo_spread.build_parser().parse_args(argv[1:])
        return
    if argv[0] not in known:  # a subcommand this test has no stand-in for: its arguments must parse
        cli.build_parser().parse_args(argv)
        return
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, f"`{line}` in a {'trained' if _needs_a_run(argv) else 'fresh'} clone: exit {rc}\n{err}"
    if argv[0] in ("pretrain", "probe", "demo", "profile", "make-demo-data"):
        assert stubs and stubs[-1][0] == argv[0]
        if argv[0] == "make-demo-data":
            assert stubs[-1][1] == argv[argv.index("--out") + 1]


@pytest.mark.parametrize("name", sorted(set(readme_commands()[1])))
def test_readme_subcommand_names_exist(name):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
