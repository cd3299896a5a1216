"""Tests for vjepa_fast.config: official files load unchanged, our configs load, errors are precise."""
import os
from pathlib import Path

import pytest
import yaml

from vjepa_fast.config import (
    ACCEPTED_AND_IGNORED,
    ConfigError,
    EvalConfig,
    MaskConfig,
    PretrainConfig,
    apply_overrides,
    find_ignored_keys,
    known_keys,
    load_config,
    parse_override,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _official_dir() -> Path:
    env = os.environ.get("VJEPA_OFFICIAL_CONFIGS")
    if env:
        return Path(env)
    return REPO / "tests" / "fixtures" / "official_configs"


OFFICIAL = _official_dir()
OFFICIAL_FILES = sorted(OFFICIAL.glob("*/*.yaml"))
OUR_FILES = sorted(CONFIGS.rglob("*.yaml"))


def _id(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


def _raw(path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _assert_matches_raw(raw, ours, key=""):
    """Every key present in the raw YAML has the same value in ours (to_dict())."""
    if isinstance(raw, dict):
        assert isinstance(ours, dict), f"{key}: expected a mapping, got {ours!r}"
        for k, v in raw.items():
            sub = f"{key}.{k}" if key else k
            assert k in ours, f"{sub} missing from to_dict()"
            _assert_matches_raw(v, ours[k], sub)
    elif isinstance(raw, list):
        assert isinstance(ours, list) and len(ours) == len(raw), f"{key}: {ours!r} != {raw!r}"
        for i, (r, o) in enumerate(zip(raw, ours)):
            _assert_matches_raw(r, o, f"{key}[{i}]")
    elif raw is None or isinstance(raw, (bool, str)):
        assert type(ours) is type(raw) and ours == raw, f"{key}: {ours!r} != {raw!r}"
    elif isinstance(raw, (int, float)):
        assert isinstance(ours, (int, float)) and not isinstance(ours, bool), f"{key}: {ours!r}"
        assert ours == raw, f"{key}: {ours!r} != {raw!r}"
    else:  # pragma: no cover - YAML gave something unexpected
        raise AssertionError(f"{key}: unexpected raw value {raw!r}")


def _write(tmp_path, d, name="cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def _tiny_raw() -> dict:
    return _raw(CONFIGS / "pretrain" / "tiny_cpu.yaml")


def _probe_raw() -> dict:
    return _raw(CONFIGS / "evals" / "tiny_cpu_probe.yaml")


# ------------------------------------------------------------------------------------------------
# official files
# ------------------------------------------------------------------------------------------------

def test_official_configs_are_present():
    assert OFFICIAL.is_dir(), f"official configs not found at {OFFICIAL}"
    names = {_id(p) for p in OFFICIAL_FILES}
    assert {"pretrain/vitl16.yaml", "pretrain/vith16.yaml", "pretrain/vith16_384.yaml"} <= names
    assert len([n for n in names if n.startswith("evals/")]) >= 15


@pytest.mark.parametrize("path", OFFICIAL_FILES, ids=_id)
def test_official_config_loads_unchanged_with_same_values(path):
    cfg = load_config(path)
    raw = _raw(path)
    expected = EvalConfig if "eval_name" in raw else PretrainConfig
    assert type(cfg) is expected
    _assert_matches_raw(raw, cfg.to_dict())


def test_official_vitl16_semantics():
    cfg = load_config(OFFICIAL / "pretrain" / "vitl16.yaml")
    assert cfg.model.model_name == "vit_large"
    assert cfg.grid_size == (8, 14, 14) and cfg.num_tokens == 1568
    assert cfg.model.predictor_num_heads == 16
    assert cfg.total_steps() == 90_000
    assert cfg.schedule_steps() == 112_500
    assert cfg.warmup_steps() == 12_000
    assert cfg.optimization.ema == (0.998, 1.0)
    assert cfg.mixed_precision and cfg.meta.dtype == "bfloat16"
    assert cfg.data.mask_type == "multiblock3d"
    assert cfg.mask_dicts() == _raw(OFFICIAL / "pretrain" / "vitl16.yaml")["mask"]
    assert cfg.latest_checkpoint_path.endswith("jepa-latest.pth.tar")
    assert sorted(find_ignored_keys(_raw(OFFICIAL / "pretrain" / "vitl16.yaml"))) == sorted(
        ["nodes", "tasks_per_node", "meta.use_sdpa", "meta.eval_freq", "data.decode_one_clip"])


def test_official_eval_semantics():
    k400 = load_config(OFFICIAL / "evals" / "vith16_384_k400_16x8x3.yaml")
    assert k400.is_video and k400.resolution == 384 and k400.frame_step == 4
    assert k400.data.num_segments == 8 and k400.data.num_views_per_segment == 3
    assert k400.optimization.attend_across_segments is True
    assert k400.output_folder.endswith(os.path.join("video_classification_frozen", "k400-16x8x3"))
    assert k400.pretrained_path.endswith("jepa-latest.pth.tar")
    in1k = load_config(OFFICIAL / "evals" / "vith16_384_in1k.yaml")
    assert not in1k.is_video and in1k.resolution == 384  # read from data.resolution
    assert in1k.data.num_classes == 1000 and in1k.optimization.batch_size == 16


# ------------------------------------------------------------------------------------------------
# our files
# ------------------------------------------------------------------------------------------------

def test_our_configs_are_present():
    names = {_id(p) for p in OUR_FILES}
    assert {"pretrain/vitl16.yaml", "pretrain/vith16.yaml", "pretrain/vith16_384.yaml",
            "pretrain/tiny_cpu.yaml", "evals/vitl16_k400_16x8x3.yaml", "evals/vitl16_ssv2_16x2x3.yaml",
            "evals/vitl16_in1k.yaml", "evals/tiny_cpu_probe.yaml"} <= names


@pytest.mark.parametrize("path", OUR_FILES, ids=_id)
def test_our_config_loads(path):
    cfg = load_config(path)
    raw = _raw(path)
    _assert_matches_raw(raw, cfg.to_dict())
    assert find_ignored_keys(raw) == [], "our configs should not set keys without effect"


def _without(flat: dict, drop) -> dict:
    return {k: v for k, v in flat.items() if not any(k == x or k.startswith(x + ".") for x in drop)}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


@pytest.mark.parametrize("name", ["pretrain/vitl16.yaml", "pretrain/vith16.yaml", "pretrain/vith16_384.yaml",
                                  "evals/vitl16_k400_16x8x3.yaml", "evals/vitl16_ssv2_16x2x3.yaml",
                                  "evals/vitl16_in1k.yaml"])
def test_our_versions_keep_official_hyperparameters(name):
    ours = _flatten(load_config(CONFIGS / name).to_dict())
    official = _flatten(load_config(OFFICIAL / name).to_dict())
    paths = ["data.datasets", "logging.folder", "data.dataset_train", "data.dataset_val",
             "data.root_path", "pretrain.folder"]
    drop = paths + list(ACCEPTED_AND_IGNORED)
    assert _without(ours, drop) == _without(official, drop)


def test_tiny_cpu_config():
    cfg = load_config(CONFIGS / "pretrain" / "tiny_cpu.yaml")
    assert isinstance(cfg, PretrainConfig)
    assert cfg.model.model_name == "vit_tiny"
    assert cfg.grid_size == (4, 4, 4) and cfg.num_tokens == 64
    assert cfg.model.pred_depth == 2 and cfg.model.pred_embed_dim == 96
    assert cfg.model.predictor_num_heads == 3
    assert cfg.data.batch_size == 8 and cfg.data.synthetic is True
    assert cfg.meta.dtype == "float32" and not cfg.mixed_precision
    assert cfg.optimization.max_steps == 30 and cfg.total_steps() == 30
    assert cfg.logging.folder == "runs/tiny_cpu"
    assert cfg.mask_dicts() == _raw(OFFICIAL / "pretrain" / "vitl16.yaml")["mask"]


def test_tiny_probe_matches_tiny_pretraining():
    pre = load_config(CONFIGS / "pretrain" / "tiny_cpu.yaml")
    probe = load_config(CONFIGS / "evals" / "tiny_cpu_probe.yaml")
    assert isinstance(probe, EvalConfig) and probe.is_video
    assert probe.pretrain.folder == pre.logging.folder
    assert probe.pretrain.checkpoint == f"{pre.logging.write_tag}-latest.pth.tar"
    assert probe.pretrain.model_name == pre.model.model_name
    assert probe.pretrain.frames_per_clip == pre.data.num_frames
    assert probe.resolution == pre.data.crop_size


# ------------------------------------------------------------------------------------------------
# unknown keys
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("section,bad,suggestion", [
    ("optimization", "weight_decy", "optimization.weight_decay"),
    ("data", "batchsize", "data.batch_size"),
    ("optimization", "batch_size", "data.batch_size"),  # right name, wrong section
    ("meta", "attn_backed", "meta.attn_backend"),
])
def test_unknown_key_names_file_key_and_suggestion(tmp_path, section, bad, suggestion):
    raw = _tiny_raw()
    raw[section][bad] = 1
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert f"'{section}.{bad}'" in msg
    assert f"did you mean '{suggestion}'" in msg
    assert ei.value.key == f"{section}.{bad}"
    assert isinstance(ei.value, ValueError)


def test_unknown_top_level_and_nested_keys(tmp_path):
    raw = _tiny_raw()
    raw["optimisation"] = raw.pop("optimization")
    with pytest.raises(ConfigError, match=r"unknown key 'optimisation'; did you mean 'optimization'"):
        load_config(_write(tmp_path, raw))
    raw = _tiny_raw()
    raw["mask"][1]["num_blockz"] = 3
    with pytest.raises(ConfigError, match=r"'mask\[1\]\.num_blockz'; did you mean 'mask\[1\]\.num_blocks'"):
        load_config(_write(tmp_path, raw))
    raw = _probe_raw()
    raw["pretrain"]["chekpoint"] = "x.pth.tar"
    with pytest.raises(ConfigError, match=r"'pretrain\.chekpoint'; did you mean 'pretrain\.checkpoint'"):
        load_config(_write(tmp_path, raw))


def test_unknown_key_without_close_match_has_no_bogus_suggestion(tmp_path):
    raw = _tiny_raw()
    raw["data"]["zzzzqqq"] = 1
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, raw))
    assert "'data.zzzzqqq'" in str(ei.value) and "did you mean" not in str(ei.value)


# ------------------------------------------------------------------------------------------------
# overrides
# ------------------------------------------------------------------------------------------------

def test_overrides_are_typed():
    cfg = load_config(CONFIGS / "pretrain" / "tiny_cpu.yaml", [
        "optimization.lr=1e-3",          # YAML 1.1 reads this as a string; float fields accept it
        "optimization.start_lr=0.0001",
        "data.batch_size=4",
        "optimization.ema=[0.9, 0.99]",
        "meta.read_checkpoint=null",
        "meta.compile=true",
        "mask.1.num_blocks=3",
        "data.datasets=[a.csv, b.csv]",
        "optimization.max_steps=5",
    ])
    assert cfg.optimization.lr == 1e-3 and type(cfg.optimization.lr) is float
    assert cfg.optimization.start_lr == 1e-4
    assert cfg.data.batch_size == 4 and type(cfg.data.batch_size) is int
    assert cfg.optimization.ema == (0.9, 0.99)
    assert cfg.meta.read_checkpoint is None and cfg.meta.compile is True
    assert cfg.mask[1].num_blocks == 3 and cfg.mask[0].num_blocks == 8
    assert cfg.data.datasets == ["a.csv", "b.csv"]
    assert cfg.total_steps() == 5


def test_override_new_section_and_file_untouched():
    path = CONFIGS / "evals" / "tiny_cpu_probe.yaml"
    before = path.read_text()
    cfg = load_config(path, ["meta.device=cpu", "tag=other"])
    assert cfg.meta.device == "cpu" and cfg.tag == "other"
    assert path.read_text() == before
    raw = {"a": 1}
    out = apply_overrides(raw, ["b.c=2"])
    assert out == {"a": 1, "b": {"c": 2}} and raw == {"a": 1}


@pytest.mark.parametrize("override,needle", [
    ("data.batch_size='8'", "'data.batch_size'"),
    ("optimization.weight_decy=0.1", "did you mean 'optimization.weight_decay'"),
    ("nonsense", "key.sub=value"),
    ("mask.7.num_blocks=2", "not a valid index"),
    ("data.batch_size.x=1", "not a section"),
])
def test_bad_overrides(override, needle):
    with pytest.raises(ConfigError) as ei:
        load_config(CONFIGS / "pretrain" / "tiny_cpu.yaml", [override])
    assert needle in str(ei.value)
    assert "tiny_cpu.yaml" in str(ei.value)


def test_parse_override():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=x=y") == ("a.b", "x=y")
    assert parse_override("a=") == ("a", None)
    with pytest.raises(ConfigError):
        parse_override("a..b=1")


# ------------------------------------------------------------------------------------------------
# type errors
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("section,key,value,needle", [
    ("data", "batch_size", "24", "expects int, got str '24'"),
    ("data", "batch_size", 24.0, "expects int, got float 24.0"),
    ("data", "batch_size", True, "expects int, got bool True"),
    ("data", "synthetic", "yes please", "expects bool"),
    ("optimization", "ema", [0.998], "expects a list of 2 floats, got list [0.998]"),
    ("optimization", "ema", 0.998, "expects a list of 2 floats"),
    ("optimization", "lr", "fast", "expects float, got str 'fast'"),
    ("data_aug", "random_resize_scale", [0.3, 0.6, 1.0], "expects a list of 2 floats"),
    ("data", "datasets", "one.csv", "expects a list of str"),
    ("model", "model_name", 3, "expects str, got int 3"),
    ("data", "datasets_weights", ["a"], "data.datasets_weights[0]"),
])
def test_type_errors_name_key_and_value(tmp_path, section, key, value, needle):
    raw = _tiny_raw()
    raw[section][key] = value
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert f"'{section}.{key}" in msg and needle in msg and str(path) in msg


def test_mask_range_type_error(tmp_path):
    raw = _tiny_raw()
    raw["mask"][0]["spatial_scale"] = [0.1, 0.2, 0.3]
    with pytest.raises(ConfigError, match=r"'mask\[0\]\.spatial_scale' expects a list of 2 floats"):
        load_config(_write(tmp_path, raw))


def test_section_must_be_mapping(tmp_path):
    raw = _tiny_raw()
    raw["model"] = ["vit_tiny"]
    with pytest.raises(ConfigError, match="'model' must be a mapping"):
        load_config(_write(tmp_path, raw))


def test_float_fields_accept_ints_and_numeric_strings(tmp_path):
    raw = _tiny_raw()
    raw["optimization"]["final_lr"] = "1e-6"  # what PyYAML gives for an unquoted 1e-6
    raw["optimization"]["ema"] = [0, 1]
    cfg = load_config(_write(tmp_path, raw))
    assert cfg.optimization.final_lr == 1e-6
    assert cfg.optimization.ema == (0.0, 1.0) and all(type(m) is float for m in cfg.optimization.ema)


# ------------------------------------------------------------------------------------------------
# validation errors
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("section,key,value,needle", [
    ("data", "crop_size", 60, "'data.crop_size': 60"),
    ("data", "num_frames", 7, "'data.num_frames': 7"),
    ("data", "batch_size", 0, "'data.batch_size': 0"),
    ("data", "patch_size", 0, "'data.patch_size': 0"),
    ("model", "model_name", "vit_enormous", "'model.model_name': 'vit_enormous'"),
    ("meta", "dtype", "fp16", "'meta.dtype': 'fp16'"),
    ("meta", "device", "gpu", "'meta.device': 'gpu'"),
    ("meta", "kernels", "cuda", "'meta.kernels': 'cuda'"),
    ("model", "use_mask_tokens", False, "'model.use_mask_tokens': False"),
    ("model", "pred_embed_dim", 100, "'model.pred_embed_dim': 100"),  # 100 % 3 heads != 0
    ("data", "mask_type", "random_blocks", "'data.mask_type': 'random_blocks'"),
    ("data", "datasets_weights", [1.0, 2.0], "'data.datasets_weights'"),
    ("optimization", "ema", [0.998, 1.5], "'optimization.ema': [0.998, 1.5]"),
    ("optimization", "max_steps", 1000, "'optimization.max_steps': 1000"),
    ("optimization", "ipe", None, "'optimization.ipe'"),  # synthetic data needs ipe
    ("logging", "folder", None, "'logging.folder'"),
    ("data_aug", "reprob", 1.5, "'data_aug.reprob': 1.5"),
])
def test_validation_errors_name_key_and_value(tmp_path, section, key, value, needle):
    raw = _tiny_raw()
    raw[section][key] = value
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert needle in str(ei.value) and str(path) in str(ei.value)


def test_mask_validation(tmp_path):
    raw = _tiny_raw()
    raw["mask"][1]["spatial_scale"] = [0.8, 0.2]
    with pytest.raises(ConfigError, match=r"'mask\[1\]\.spatial_scale': \[0\.8, 0\.2\]"):
        load_config(_write(tmp_path, raw))
    raw = _tiny_raw()
    raw["mask"] = []
    with pytest.raises(ConfigError, match="at least one mask"):
        load_config(_write(tmp_path, raw))


def test_dtype_is_case_insensitive_like_official():
    cfg = load_config(CONFIGS / "pretrain" / "tiny_cpu.yaml", ["meta.dtype=BFloat16"])
    assert cfg.meta.dtype == "bfloat16"


@pytest.mark.parametrize("overrides,needle", [
    (["optimization.resolution=60"], "'optimization.resolution': 60"),
    (["pretrain.frame_step=3"], "'pretrain.frame_step': 3"),
    (["data.resolution=128"], "'data.resolution': 128"),
    (["data.num_classes=null"], "'data.num_classes'"),
    (["eval_name=video_classification"], "'eval_name': 'video_classification'"),
    (["pretrain.model_name=vit_xl"], "'pretrain.model_name': 'vit_xl'"),
    (["data.frames_per_clip=7"], "'data.frames_per_clip': 7"),
    (["optimization.batch_size=0"], "'optimization.batch_size': 0"),
])
def test_eval_validation(overrides, needle):
    with pytest.raises(ConfigError) as ei:
        load_config(CONFIGS / "evals" / "tiny_cpu_probe.yaml", overrides)
    assert needle in str(ei.value) and "tiny_cpu_probe.yaml" in str(ei.value)


def test_eval_consistent_duplicates_are_accepted():
    cfg = load_config(CONFIGS / "evals" / "tiny_cpu_probe.yaml",
                      ["pretrain.frame_step=2", "data.resolution=64"])
    assert cfg.frame_step == 2 and cfg.resolution == 64


# ------------------------------------------------------------------------------------------------
# round trips, defaults, ignored-key table
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", OFFICIAL_FILES + OUR_FILES, ids=lambda p: f"{p.parent.parent.name}/{_id(p)}")
def test_round_trip(tmp_path, path):
    cfg = load_config(path)
    d = cfg.to_dict()
    again = type(cfg).from_dict(d)
    assert again == cfg
    assert again.to_dict() == d
    out = tmp_path / "sub" / "saved.yaml"
    cfg.save_yaml(out)
    assert load_config(out) == cfg


def test_round_trip_after_overrides(tmp_path):
    cfg = load_config(CONFIGS / "pretrain" / "tiny_cpu.yaml", ["optimization.lr=3e-4", "mask.0.max_keep=10"])
    cfg.save_yaml(tmp_path / "x.yaml")
    back = load_config(tmp_path / "x.yaml")
    assert back == cfg and back.optimization.lr == 3e-4 and back.mask[0].max_keep == 10


def test_defaults():
    m = MaskConfig()  # official _MaskGenerator constructor defaults
    assert (m.spatial_scale, m.temporal_scale, m.aspect_ratio, m.num_blocks) == \
        ((0.2, 0.8), (1.0, 1.0), (0.3, 3.0), 1)
    assert (m.max_temporal_keep, m.max_keep) == (1.0, None)
    cfg = PretrainConfig.from_dict({"logging": {"folder": "runs/x"}})
    assert cfg.data.mask_type == "multiblock3d"
    assert cfg.meta.device == "auto" and cfg.meta.attn_backend == "auto" and cfg.meta.kernels == "auto"
    assert cfg.meta.compile is False and cfg.data.synthetic is False
    assert cfg.logging.log_every == 10 and cfg.logging.keep_last == 2
    assert cfg.optimization.max_steps is None and cfg.model.pred_num_heads is None
    assert len(cfg.mask) == 2 and cfg.model.model_name == "vit_large"
    with pytest.raises(ConfigError, match="optimization.ipe is null"):
        cfg.total_steps()
    assert cfg.total_steps(loader_len=7) == 300 * 7


def test_kind_detection_and_from_yaml():
    assert isinstance(load_config(CONFIGS / "evals" / "tiny_cpu_probe.yaml"), EvalConfig)
    with pytest.raises(ConfigError, match="evaluation config"):
        PretrainConfig.from_yaml(CONFIGS / "evals" / "tiny_cpu_probe.yaml")
    with pytest.raises(ConfigError, match="pretraining config"):
        EvalConfig.from_yaml(CONFIGS / "pretrain" / "tiny_cpu.yaml")
    assert isinstance(PretrainConfig.from_yaml(CONFIGS / "pretrain" / "tiny_cpu.yaml"), PretrainConfig)


def test_bad_files(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_ignored_table_is_honest():
    keys = set(known_keys(PretrainConfig)) | set(known_keys(EvalConfig))
    for key, reason in ACCEPTED_AND_IGNORED.items():
        assert key in keys, f"ignored key {key} is not a config field"
        assert isinstance(reason, str) and len(reason) > 20
    # every key of every official file is either a field or explicitly ignored (i.e. a field too)
    for path in OFFICIAL_FILES:
        kind = EvalConfig if "eval_name" in _raw(path) else PretrainConfig
        fields = set(known_keys(kind))
        for key in _flatten(_raw(path)):
            if key == "mask":
                continue
            assert key in fields, f"{path}: {key}"


# ------------------------------------------------------------------------------------------------
# every problem in one error
# ------------------------------------------------------------------------------------------------

def test_every_unknown_and_invalid_key_is_reported_at_once(tmp_path):
    """A file with many keys this project does not know (here V-JEPA 2-AC's, in an app: vjepa file)
    lists them all in one run (and the invalid values next to them), not one per run."""
    raw = _tiny_raw()
    raw["camera_views"] = ["left_mp4_path"]         # unknown top-level keys
    raw["stereo_view"] = False
    raw["data"]["horizontal_flip"] = False          # unknown section keys
    raw["data"]["fps"] = 4                          # known, but a V-JEPA 2 key (no data.dataset_fpcs)
    raw["model"]["pred_is_frame_causal"] = True
    raw["optimization"]["anneal"] = 15
    raw["mask"][0]["full_complment"] = False
    raw["data"]["batch_size"] = 0                   # invalid values
    raw["model"]["model_name"] = "vit_enormous"
    raw["optimization"]["lr"] = "fast"              # wrong type
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    err = ei.value
    # file order, each section's unknown keys and type errors first, then the invalid values
    assert [p.key for p in err.problems] == [
        "data.horizontal_flip", "mask[0].full_complment", "model.pred_is_frame_causal", "optimization.lr",
        "optimization.anneal", "camera_views", "stereo_view", "data.batch_size", "model.model_name", "data.fps"]
    msg = str(err)
    assert msg.startswith(f"{path}: 10 problems:")
    assert "unknown key 'data.horizontal_flip'" in msg and "'model.model_name': 'vit_enormous'" in msg
    assert "unknown key 'mask[0].full_complment'; did you mean 'mask[0].full_complement'?" in msg
    assert "key 'optimization.lr' expects float, got str 'fast'" in msg
    assert "set data.dataset_fpcs" in msg
    assert err.key == err.problems[0].key and isinstance(err, ValueError)


def test_one_problem_keeps_the_one_line_message(tmp_path):
    raw = _tiny_raw()
    raw["data"]["crop_size"] = 65
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, raw))
    assert "problems" not in str(ei.value) and len(ei.value.problems) == 1
    assert "'data.crop_size': 65 (must be divisible by data.patch_size=16)" in str(ei.value)


def test_checks_that_need_a_valid_value_are_skipped_after_it_fails(tmp_path):
    """tubelet_size 0 is reported once; the divisibility check that would divide by it is skipped,
    and the other sections are still checked."""
    raw = _tiny_raw()
    raw["data"]["tubelet_size"] = 0
    raw["model"]["pred_num_heads"] = 0
    raw["optimization"]["epochs"] = 0
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, raw))
    assert [p.key for p in ei.value.problems] == ["data.tubelet_size", "model.pred_num_heads", "optimization.epochs"]
    raw = _probe_raw()
    raw["pretrain"]["model_name"] = "vit_enormous"
    raw["pretrain"]["patch_size"] = 0
    raw["data"]["num_classes"] = None
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, raw))
    assert [p.key for p in ei.value.problems] == ["data.num_classes", "pretrain.model_name", "pretrain.patch_size"]


def test_image_pretraining_geometry_gets_guidance(tmp_path):
    raw = _tiny_raw()
    raw["data"]["num_frames"] = 1
    with pytest.raises(ConfigError, match=r"image pretraining: num_frames 1 with tubelet_size 1"):
        load_config(_write(tmp_path, raw))
    raw["data"]["tubelet_size"] = 1
    cfg = load_config(_write(tmp_path, raw))
    assert cfg.grid_size == (1, 4, 4)


# ------------------------------------------------------------------------------------------------
# official V-JEPA 2 files
# ------------------------------------------------------------------------------------------------

OFFICIAL_V2 = Path(os.environ.get("VJEPA_OFFICIAL_CONFIGS_V2", REPO / "tests" / "fixtures" / "official_configs_v2"))
V2_TRAIN = sorted((OFFICIAL_V2 / "train").glob("*/*.yaml"))
V2_EVAL = sorted((OFFICIAL_V2 / "eval").glob("*/*.yaml"))
V2_REFUSED = {"droid-256px-8f.yaml", "ek100.yaml"}  # V-JEPA 2-AC and action anticipation


def _v2id(p: Path) -> str:
    return f"{p.parent.parent.name}/{p.parent.name}/{p.name}"


def test_official_v2_configs_are_present():
    assert len(V2_TRAIN) + len(V2_EVAL) == 22, f"expected the 22 official V2 files in {OFFICIAL_V2}"


@pytest.mark.parametrize("path", [p for p in V2_TRAIN if p.name not in V2_REFUSED], ids=_v2id)
def test_official_v2_train_config_loads_unchanged_with_same_values(path):
    cfg = load_config(path)
    raw = _raw(path)
    assert type(cfg) is PretrainConfig and cfg.is_v2
    _assert_matches_raw(raw, cfg.to_dict())
    assert cfg.logging.folder == raw["folder"]  # the V2 top-level run folder
    assert cfg.data.num_frames == max(raw["data"]["dataset_fpcs"])
    assert cfg.num_mask_tokens == len(raw["mask"]) * len(raw["data"]["dataset_fpcs"]) == 6
    assert cfg.model.use_rope is True and cfg.model.use_activation_checkpointing is True
    assert cfg.optimization.is_anneal == ("cooldown" in path.name)
    fields = set(known_keys(PretrainConfig))
    for key in _flatten(raw):
        assert key == "mask" or key in fields, f"{path}: {key}"


def test_official_v2_vitl16_semantics():
    pre = load_config(OFFICIAL_V2 / "train" / "vitl16" / "pretrain-256px-16f.yaml")
    assert pre.grid_size == (8, 16, 16) and pre.data.fps == 4 and pre.data.persistent_workers
    assert pre.model.predictor_num_heads == 12 and pre.meta.seed == 239
    assert pre.total_steps() == 3000 and pre.warmup_steps() == 12000  # the L/H files never leave warmup
    cool = load_config(OFFICIAL_V2 / "train" / "vitl16" / "cooldown-256px-64f.yaml")
    assert cool.grid_size == (32, 16, 16) and cool.data.batch_size == 12
    o = cool.optimization
    assert o.is_anneal and o.resume_anneal and o.anneal_ckpt.endswith("/16.8.vitl.256px.16f/e0.pt")
    assert (o.lr, o.final_lr, o.warmup) == (0.000525, 1.0e-06, 0) and cool.schedule_steps() == 15000
    assert cool.total_steps() == 12000
    g384 = load_config(OFFICIAL_V2 / "train" / "vitg16" / "cooldown-384px-64f.yaml")
    assert g384.model.model_name == "vit_giant_xformers" and g384.grid_size == (32, 24, 24)
    assert sorted(find_ignored_keys(_raw(OFFICIAL_V2 / "train" / "vitl16" / "pretrain-256px-16f.yaml"))) == sorted(
        ["nodes", "tasks_per_node", "cpus_per_task", "mem_per_gpu", "meta.use_sdpa", "meta.eval_freq"])


def test_official_v2_droid_config_is_refused_with_one_reason():
    with pytest.raises(ConfigError) as ei:
        load_config(OFFICIAL_V2 / "train" / "vitg16" / "droid-256px-8f.yaml")
    assert len(ei.value.problems) == 1 and ei.value.key == "app"
    assert "V-JEPA 2-AC" in str(ei.value) and "not implemented" in str(ei.value)


@pytest.mark.parametrize("path", [p for p in V2_EVAL if p.name not in V2_REFUSED], ids=_v2id)
def test_official_v2_eval_config_loads(path):
    from vjepa_fast.config import V2_EVAL_IGNORED, V2_EVAL_KEYS  # noqa: PLC0415

    raw = _raw(path)
    cfg = load_config(path)
    assert type(cfg) is EvalConfig and cfg.protocol == "v2"
    exp, mk = raw["experiment"], raw["model_kwargs"]
    enc = mk["pretrain_kwargs"]["encoder"]
    assert cfg.eval_name == raw["eval_name"] and cfg.tag == raw["tag"]
    assert cfg.output_folder == os.path.join(raw["folder"], raw["eval_name"], raw["tag"])  # official layout
    assert cfg.pretrained_path == mk["checkpoint"]
    assert cfg.resolution == exp["data"]["resolution"] and cfg.data.num_classes == exp["data"]["num_classes"]
    assert cfg.classifier.num_probe_blocks == exp["classifier"]["num_probe_blocks"] == 4
    assert cfg.probe_num_heads == exp["classifier"]["num_heads"]
    assert (cfg.pretrain.model_name, cfg.pretrain.use_rope) == (enc["model_name"], True)
    assert cfg.pretrain.out_layers == mk["wrapper_kwargs"].get("out_layers")
    heads = exp["optimization"]["multihead_kwargs"]
    assert [h.to_dict() if hasattr(h, "to_dict") else vars(h) for h in cfg.optimization.multihead] == heads
    assert cfg.optimization.num_epochs == exp["optimization"]["num_epochs"]
    assert cfg.optimization.batch_size == exp["optimization"]["batch_size"]
    if cfg.is_video:
        d = exp["data"]
        assert (cfg.data.frames_per_clip, cfg.frame_step) == (d["frames_per_clip"], d["frame_step"])
        assert (cfg.data.num_segments, cfg.data.num_views_per_segment) == (d["num_segments"], d["num_views_per_segment"])
        assert cfg.pretrain.frames_per_clip == d["frames_per_clip"]
    else:
        assert cfg.pretrain.frames_per_clip == mk["wrapper_kwargs"]["img_as_video_nframes"]
        assert cfg.data.image_folder == exp["data"]["image_folder"]
    # every key is translated or documented as without effect
    for key in _flatten(raw):
        assert (key in V2_EVAL_KEYS or key in V2_EVAL_IGNORED or key == "experiment.data.resolution"
                or key.startswith("experiment.optimization.multihead_kwargs")), f"{path}: {key}"


def test_official_v2_anticipation_eval_is_refused_with_one_reason():
    with pytest.raises(ConfigError) as ei:
        load_config(OFFICIAL_V2 / "eval" / "vitl" / "ek100.yaml")
    assert len(ei.value.problems) == 1 and "action_anticipation_frozen" in str(ei.value)


def test_v2_eval_layout_errors_use_the_v2_names(tmp_path):
    raw = _raw(OFFICIAL_V2 / "eval" / "vitl" / "k400.yaml")
    raw["experiment"]["data"]["frame_stp"] = 4
    raw["model_kwargs"]["wrapper_kwargs"]["use_pos_embed"] = True
    raw["model_kwargs"]["module_name"] = "evals.video_classification_frozen.modelcustom.my_wrapper"
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, raw))
    keys = [p.key for p in ei.value.problems]
    assert keys == ["model_kwargs.module_name", "experiment.data.frame_stp", "model_kwargs.wrapper_kwargs.use_pos_embed"]
    assert "did you mean 'experiment.data.frame_step'?" in str(ei.value)


def _v2_pretrain_raw() -> dict:
    return _raw(OFFICIAL_V2 / "train" / "vitl16" / "pretrain-256px-16f.yaml")


@pytest.mark.parametrize("edit, key, needle", [
    (lambda r: r["data"].update(dataset_fpcs=[16, 16]), "data.dataset_fpcs", "one clip length per entry"),
    (lambda r: r["data"].update(dataset_fpcs=[16, 15, 16]), "data.dataset_fpcs", "multiple of data.tubelet_size"),
    (lambda r: r["data"].update(num_frames=8), "data.num_frames", "max(data.dataset_fpcs)=16"),
    (lambda r: r["data"].update(clip_duration=4.0), "data.fps", "not both"),
    (lambda r: r["data"].update(crop_size=[256, 192]), "data.crop_size", "equal sides"),
    (lambda r: r["data"].update(num_clips=2), "data.num_clips", "one clip per sample"),
    (lambda r: r["loss"].update(reg_coeff=1.0), "loss.reg_coeff", "no regulariser"),
    (lambda r: r.update(logging={"folder": "elsewhere"}), "folder", "differs from logging.folder"),
    (lambda r: r["model"].update(use_activation_checkpointing=-1), "model.use_activation_checkpointing", ">= 0"),
    (lambda r: r["optimization"].update(is_anneal=True), "optimization.anneal_ckpt", "name the pretraining checkpoint"),
    (lambda r: r["optimization"].update(betas=[0.9, 1.5]), "optimization.betas", "[0, 1)"),
])
def test_v2_validation_names_key_and_value(tmp_path, edit, key, needle):
    raw = _v2_pretrain_raw()
    edit(raw)
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, raw))
    assert [p.key for p in ei.value.problems] == [key] and needle in str(ei.value)


def test_v2_keys_and_their_normal_forms(tmp_path):
    raw = _v2_pretrain_raw()
    raw["data"]["crop_size"] = [256, 256]
    raw["model"]["use_activation_checkpointing"] = 3
    raw["model"]["compile_model"] = True
    cfg = load_config(_write(tmp_path, raw))
    assert cfg.data.crop_size == 256 and cfg.model.use_activation_checkpointing == 3 and cfg.meta.compile
    again = PretrainConfig.from_dict(cfg.to_dict())  # a saved config round-trips
    assert again.to_dict() == cfg.to_dict()
    cool = _raw(OFFICIAL_V2 / "train" / "vitl16" / "cooldown-256px-64f.yaml")
    cool["meta"]["init_from"] = "x.pt"
    with pytest.raises(ConfigError, match="starts from optimization.anneal_ckpt"):
        load_config(_write(tmp_path, cool))
    v1 = _tiny_raw()
    v1["optimization"]["is_anneal"] = True
    v1["optimization"]["anneal_ckpt"] = "x.pt"
    with pytest.raises(ConfigError, match="cooldown is part of the V-JEPA 2 recipe"):
        load_config(_write(tmp_path, v1))


V2_OURS = {
    "v2_vitl16_pretrain_256px_16f": "vitl16/pretrain-256px-16f", "v2_vitl16_cooldown_256px_64f": "vitl16/cooldown-256px-64f",
    "v2_vith16_pretrain_256px_16f": "vith16/pretrain-256px-16f", "v2_vith16_cooldown_256px_64f": "vith16/cooldown-256px-64f",
    "v2_vitg16_pretrain_256px_16f": "vitg16/pretrain-256px-16f", "v2_vitg16_cooldown_256px_64f": "vitg16/cooldown-256px-64f",
    "v2_vitg16_cooldown_384px_64f": "vitg16/cooldown-384px-64f",
}


@pytest.mark.parametrize("ours, official", sorted(V2_OURS.items()))
def test_our_v2_versions_keep_official_hyperparameters(ours, official):
    """Ours differ only in paths, SLURM keys, keys without effect, the documented meta.load_checkpoint of
    a pretraining run (resume-if-present there, explicit here) and keys of our own left at defaults."""
    a = _flatten(load_config(CONFIGS / "pretrain" / f"{ours}.yaml").to_dict())
    b = _flatten(load_config(OFFICIAL_V2 / "train" / f"{official}.yaml").to_dict())
    drop = ["data.datasets", "logging.folder", "folder", "optimization.anneal_ckpt", "logging.log_every",
            *ACCEPTED_AND_IGNORED] + ([] if "cooldown" in ours else ["meta.load_checkpoint"])
    assert _without(a, drop) == _without(b, drop)
    assert a["optimization.anneal_ckpt"] == (None if "pretrain" in ours else
                                             f"runs/{ours.split('_cooldown')[0]}_pretrain_256px_16f/jepa-latest.pth.tar")
