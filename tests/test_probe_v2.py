"""V-JEPA 2 frozen evaluation (``protocol: v2``): the V2 probe through the protocol against the official
fixture, multi-level features (``out_layers``), the multi-head grid, encoders from official V2 files and
Hugging Face folders, and a V2 probe run through the CLI on the demo clips."""
from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from vjepa_fast import cli
from vjepa_fast.attentive_probe import AttentiveClassifierV2
from vjepa_fast.checkpoint import CheckpointError, read_checkpoint
from vjepa_fast.checkpoint_v2 import load_vjepa2_probe
from vjepa_fast.config import ConfigError, load_config
from vjepa_fast.eval_encoder import FrozenEncoder, build_frozen_encoder, pretrained_problems
from vjepa_fast.probe import (HeadSpec, ProbeHeads, best_head, encode_batch, evaluate, feature_batches,
                              head_specs, train_epoch)
from vjepa_fast.vision_transformer import VisionTransformer

FIXTURES = Path(__file__).parent / "fixtures"
V2_CASE = FIXTURES / "official_v2_parity" / "case.pt"
V2_CKPT = FIXTURES / "official_v2_parity" / "checkpoint.pth.tar"
HF_MODEL = FIXTURES / "hf_vjepa2" / "model"
HF_CASE = FIXTURES / "hf_vjepa2" / "case.pt"

# the V2 parity encoder: 96-d, 3 blocks of 3 heads, MLP 384, RoPE, patch 16, tubelet 2
V2_ENCODER = {"model_name": "vit_tiny", "embed_dim": 96, "depth": 3, "num_heads": 3, "frames_per_clip": 8,
              "tubelet_size": 2, "patch_size": 16, "use_rope": True}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


pytestmark = pytest.mark.usefixtures("one_thread")


def _v2_raw(folder: Path, demo_dir: Path | None = None, checkpoint: str = "checkpoint.pth.tar",
            **pretrain) -> dict:
    demo = demo_dir or Path("/nonexistent")
    return {
        "tag": "v2", "eval_name": "video_classification_frozen", "protocol": "v2",
        "classifier": {"num_probe_blocks": 2, "num_heads": 3},
        "data": {"dataset_train": str(demo / "train_motion.csv"), "dataset_val": str(demo / "val_motion.csv"),
                 "num_classes": 8, "frames_per_clip": 8, "num_segments": 2, "num_views_per_segment": 2,
                 "frame_step": 1, "num_workers": 0, "cache_eval_features": True},
        "optimization": {"num_epochs": 2, "resolution": 32, "batch_size": 8, "multihead": [
            {"lr": 0.003, "start_lr": 0.003, "weight_decay": 0.01, "final_weight_decay": 0.01},
            {"lr": 0.001, "start_lr": 0.0002, "weight_decay": 0.1, "final_weight_decay": 0.1, "warmup": 1},
            {"lr": 0.0, "start_lr": 0.0, "weight_decay": 0.8, "final_weight_decay": 0.8}]},
        "pretrain": {**V2_ENCODER, **pretrain, "folder": str(folder), "checkpoint": checkpoint},
        "meta": {"device": "cpu", "log_every": 100},
    }


def _v2_cfg(tmp_path: Path, demo_dir: Path | None = None, overrides=(), **pretrain):
    folder = tmp_path / "pre"
    folder.mkdir(exist_ok=True)
    if not (folder / "checkpoint.pth.tar").exists():
        shutil.copy(V2_CKPT, folder / "checkpoint.pth.tar")
    path = tmp_path / "v2.yaml"
    path.write_text(yaml.safe_dump(_v2_raw(folder, demo_dir, **pretrain)))
    return load_config(path, list(overrides)), path


# ------------------------------------------------------------------------------------------------
# the V2 probe, through the protocol, against the official fixture
# ------------------------------------------------------------------------------------------------
def test_v2_probe_reproduces_the_official_logits_through_the_protocol():
    probe = torch.load(V2_CASE, weights_only=True)["probe"]
    heads = ProbeHeads([HeadSpec()], embed_dim=probe["embed_dim"], num_heads=probe["num_heads"],
                       depth=probe["depth"], num_classes=probe["num_classes"], ipe=1, num_epochs=1,
                       protocol="v2")
    # as the official V2 eval saves it: a list of DDP-wrapped probes, one per grid entry
    official = {"classifiers": [{f"module.{k}": v for k, v in probe["state_dict"].items()}],
                "opt": [heads.optimizers[0].state_dict()], "scaler": None, "epoch": 1}
    heads.load_official_v2(official, source="fixture")
    feats = probe["features"][:, None]  # [B, V'=1, L, D]: one probe input per sample
    logits = heads.logits(feats)
    assert logits.shape == (1, 2, 1, 5)
    assert rel(logits[0, :, 0], probe["logits"]) <= 1e-5
    labels = torch.tensor([0, 3])
    out = heads.eval_step(feats, labels)
    assert torch.equal(out["pred"][0], probe["logits"].argmax(1))
    torch.testing.assert_close(out["loss"][0], F.cross_entropy(probe["logits"], labels), rtol=1e-5, atol=1e-6)
    # a V1 probe has another module layout: the V2 file does not load into it
    v1 = ProbeHeads([HeadSpec()], embed_dim=96, num_heads=3, depth=4, num_classes=5, ipe=1, num_epochs=1)
    with pytest.raises(CheckpointError, match="V2 probes"):
        v1.load_official_v2(official)


# ------------------------------------------------------------------------------------------------
# features of several blocks
# ------------------------------------------------------------------------------------------------
def test_out_layers_are_normed_block_outputs_concatenated_along_tokens_per_segment():
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=16, num_frames=4, embed_dim=24, depth=4, num_heads=3,
                            use_rope=True, out_layers=[1, 3])
    ref = copy.deepcopy(vit)
    ref.out_layers = None
    enc = FrozenEncoder(vit)
    B, S, V, N = 2, 3, 2, 2 * 2 * 2
    x = torch.randn(B, S, V, 3, 4, 32, 32)
    feats = encode_batch(enc, x, attend_across_segments=True)
    assert feats.shape == (B, V, S * 2 * N, 24) and enc.tokens_per_input(4, 32) == 2 * N
    # by hand: every block's output captured, the final norm applied to blocks 1 and 3
    seen = {}
    hooks = [ref.blocks[i].register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o)) for i in (1, 3)]
    with torch.inference_mode():
        ref(x.flatten(0, 2))
        levels = [ref.norm(seen[1]), ref.norm(seen[3])]  # each [B*S*V, N, D], clips in (b, s, v) order
    for h in hooks:
        h.remove()
    for b in range(B):
        for v in range(V):
            clips = [(b * S + s) * V + v for s in range(S)]
            # one view: segment 0's block-1 then block-3 tokens, then segment 1's, ...
            expect = torch.cat([torch.cat([lv[c] for lv in levels]) for c in clips])
            assert torch.equal(feats[b, v], expect)
    # the last block alone is the plain encoder output
    last = copy.deepcopy(ref)
    last.out_layers = [3]
    with torch.inference_mode():
        assert torch.equal(FrozenEncoder(last)(x[0, 0]), ref(x[0, 0]))


def test_out_layers_are_checked_against_the_encoder(tmp_path):
    folder = tmp_path / "pre"
    folder.mkdir()
    raw = _v2_raw(folder)
    for bad, why in (([2, 1], "strictly increasing"), ([0, 3], r"in \[0, 3\)"), ([], "at least one")):
        raw["pretrain"]["out_layers"] = bad
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError, match=rf"pretrain\.out_layers.*{why}"):
            load_config(tmp_path / "c.yaml")
    raw["pretrain"]["out_layers"] = [0, 2]
    raw["optimization"]["attend_across_segments"] = False
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="attend_across_segments.*protocol v2 always concatenates"):
        load_config(tmp_path / "c.yaml")


# ------------------------------------------------------------------------------------------------
# the multi-head grid
# ------------------------------------------------------------------------------------------------
def _official_lr(s: int, spec: HeadSpec, ipe: int, epochs: int) -> float:
    # V2 eval WarmupCosineLRSchedule: linear warmup over int(warmup * ipe) steps, then a cosine
    warm, total = int(spec.warmup * ipe), epochs * ipe
    if s < warm:
        return spec.start_lr + s / max(1, warm) * (spec.lr - spec.start_lr)
    p = (s - warm) / max(1, total - warm)
    return max(spec.final_lr, spec.final_lr + (spec.lr - spec.final_lr) * 0.5 * (1 + math.cos(math.pi * p)))


def _official_wd(s: int, spec: HeadSpec, total: int) -> float:
    ref, final = spec.weight_decay, spec.final_weight_decay
    wd = final + (ref - final) * 0.5 * (1 + math.cos(math.pi * s / total))
    return max(final, wd) if final <= ref else min(final, wd)


GRID = [HeadSpec(lr=3e-3, start_lr=3e-3, weight_decay=0.01, final_weight_decay=0.01),
        HeadSpec(lr=1e-3, start_lr=2e-4, weight_decay=0.1, final_weight_decay=0.4, warmup=1.0),
        HeadSpec(lr=0.0, start_lr=0.0, weight_decay=0.8, final_weight_decay=0.8)]


def test_grid_heads_train_independently_each_with_its_optimizer_and_schedules():
    ipe, epochs = 3, 2
    kw = dict(embed_dim=24, num_heads=3, depth=2, num_classes=4, ipe=ipe, num_epochs=epochs, protocol="v2")
    torch.manual_seed(0)
    grid = ProbeHeads(GRID, **kw)
    init = [copy.deepcopy(h.state_dict()) for h in grid.heads]
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 1, 6, 24, generator=g), torch.randint(0, 4, (4,), generator=g))
               for _ in range(ipe * epochs)]
    for s, (f, y) in enumerate(batches, 1):
        grid.train_step(f, y)
        for spec, opt in zip(GRID, grid.optimizers):
            (group,) = opt.param_groups  # v2: one group, every parameter decayed
            assert group["lr"] == pytest.approx(_official_lr(s, spec, ipe, epochs), rel=1e-12, abs=1e-15)
            assert group["weight_decay"] == pytest.approx(_official_wd(s, spec, ipe * epochs), rel=1e-12)
    # each head alone, from the same start on the same batches, ends exactly where it ended in the grid
    for k, spec in enumerate(GRID):
        solo = ProbeHeads([spec], **kw)
        solo.heads[0].load_state_dict(init[k])
        for f, y in batches:
            solo.train_step(f, y)
        for (name, a), b in zip(grid.heads[k].state_dict().items(), solo.heads[0].state_dict().values()):
            assert torch.equal(a, b), (k, name)
    # the lr-0 head never moved (no weight decay leaks in from the others either); the others did
    assert all(torch.equal(a, b) for a, b in zip(grid.heads[2].state_dict().values(), init[2].values()))
    assert not torch.equal(grid.heads[0].linear.weight, init[0]["linear.weight"])


def test_v2_steps_are_adamw_on_one_group_with_decay_everywhere_and_no_clipping():
    torch.manual_seed(0)
    spec = HeadSpec(lr=0.5, start_lr=0.5, weight_decay=0.3, final_weight_decay=0.3)
    heads = ProbeHeads([spec], embed_dim=24, num_heads=3, depth=2, num_classes=4, ipe=1, num_epochs=4,
                       protocol="v2")
    with torch.no_grad():
        heads.heads[0].linear.weight.mul_(100)  # large logits: gradient norms far above V1's clip
    ref = copy.deepcopy(heads.heads[0])
    opt = torch.optim.AdamW(ref.parameters(), weight_decay=0.3)
    g = torch.Generator().manual_seed(0)
    norms = []
    for s in range(1, 4):
        f, y = torch.randn(4, 1, 6, 24, generator=g), torch.randint(0, 4, (4,), generator=g)
        F.cross_entropy(ref(f[:, 0]), y).backward()
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()])).item())
        opt.param_groups[0]["lr"] = _official_lr(s, spec, 1, 4)
        opt.step()
        opt.zero_grad()
        heads.train_step(f, y)
    # Adam divides out one step's scale, not the ratio between steps: a clip would change these steps
    assert min(norms) > 1.0 and max(norms) > 1.5 * min(norms)
    for (name, a), b in zip(heads.heads[0].state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name


def test_two_views_sum_their_losses_in_v2_and_average_in_v1():
    torch.manual_seed(0)
    f, y = torch.randn(3, 2, 5, 24), torch.tensor([0, 1, 2])
    for protocol, scale in (("v1", 1.0), ("v2", 2.0)):
        heads = ProbeHeads([HeadSpec()], embed_dim=24, num_heads=3, num_classes=4, ipe=1, num_epochs=1,
                           protocol=protocol)
        head = copy.deepcopy(heads.heads[0])
        mean = sum(F.cross_entropy(head(f[:, v]), y) for v in range(2)) / 2
        torch.testing.assert_close(heads.train_step(f, y)["loss"][0], scale * mean.detach())


def test_the_best_head_is_the_one_that_learns():
    g = torch.Generator().manual_seed(0)
    protos = 3 * torch.randn(4, 24, generator=g)

    def data(n):
        y = torch.randint(0, 4, (n,), generator=g)
        x = torch.randn(n, 1, 8, 24, generator=g)
        x[:, :, :4] += protos[y][:, None, None]
        return x, y

    (xt, yt), (xv, yv) = data(192), data(96)
    # heads 0 and 2 cannot move (lr 0): whatever their init, the trained middle one must be reported
    specs = [HeadSpec(lr=0.0, start_lr=0.0), HeadSpec(lr=3e-3, start_lr=3e-3), HeadSpec(lr=0.0, start_lr=0.0)]
    torch.manual_seed(0)
    heads = ProbeHeads(specs, embed_dim=24, num_heads=3, depth=2, num_classes=4, ipe=12, num_epochs=6,
                       protocol="v2")
    for epoch in range(6):
        train_epoch(heads, feature_batches(xt, yt, 16, shuffle=True, epoch=epoch))
    val = [s["top1"] for s in evaluate(heads, feature_batches(xv, yv, 48, shuffle=False)).summary()]
    assert val[1] >= 95.0 and max(val[0], val[2]) < val[1]
    assert best_head(val) == 1
    assert best_head([10.0, 30.0, 30.0]) == 1 and best_head([float("nan"), 0.0]) == 1


def test_per_head_warmup_and_names_of_the_v2_image_grid(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    raw = yaml.safe_load((repo / "configs" / "evals" / "v2_vitl16_in1k.yaml").read_text())
    cfg = load_config(_write(tmp_path, raw))
    specs = head_specs(cfg.optimization)
    assert len(specs) == 21 and len({s.name for s in specs}) == 21  # every probe told apart in the logs
    assert specs[0] == HeadSpec(lr=1e-3, start_lr=1e-3, final_lr=0.0, weight_decay=1e-3,
                                final_weight_decay=0.0)
    assert specs[1] == HeadSpec(lr=5e-4, start_lr=2e-4, final_lr=0.0, weight_decay=8e-3,
                                final_weight_decay=8e-3, warmup=5.0)


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ------------------------------------------------------------------------------------------------
# encoders from official V2 files and Hugging Face folders
# ------------------------------------------------------------------------------------------------
def test_encoder_from_an_official_v2_checkpoint_at_another_size(tmp_path):
    cfg, _ = _v2_cfg(tmp_path)
    assert pretrained_problems(cfg) == []
    enc = build_frozen_encoder(cfg)
    other = torch.load(V2_CASE, weights_only=True)["other_res"]
    with torch.inference_mode():
        out = enc(other["clip"])  # 16 frames at 32 x 80 px, where the model was trained at 8 x 64 x 64
    assert rel(out, other["target_encoder_out"]) <= 1e-5
    assert enc.loaded_from["key"] == "target_encoder"
    assert enc.loaded_from["checkpoint"].endswith("checkpoint.pth.tar")
    # a released-format file also carries a position table, which a RoPE encoder does not use
    ck = read_checkpoint(V2_CKPT)
    ck["target_encoder"]["module.backbone.pos_embed"] = torch.zeros(1, 64, 96)
    torch.save(ck, tmp_path / "pre" / "released.pt")
    cfg, _ = _v2_cfg(tmp_path, overrides=["pretrain.checkpoint=released.pt"])
    assert pretrained_problems(cfg) == []
    enc = build_frozen_encoder(cfg)
    assert "dropped (unused with RoPE): pos_embed" in enc.loaded_from["report"]
    with torch.inference_mode():
        assert rel(enc(other["clip"]), other["target_encoder_out"]) <= 1e-5
    # without use_rope the file does not fit, and both the checks and the loader say why
    cfg, _ = _v2_cfg(tmp_path, overrides=["pretrain.use_rope=false"])
    (problem,) = pretrained_problems(cfg)
    assert "set pretrain.use_rope: true" in problem and "missing keys (1): pos_embed" in problem
    with pytest.raises(CheckpointError, match="set pretrain.use_rope: true"):
        build_frozen_encoder(cfg)


def test_encoder_from_a_hugging_face_folder(tmp_path):
    folder = tmp_path / "pre"
    folder.mkdir()
    shutil.copytree(HF_MODEL, folder / "vjepa2-hf")
    cfg, _ = _v2_cfg(tmp_path, overrides=["pretrain.checkpoint=vjepa2-hf", "optimization.resolution=64"])
    assert pretrained_problems(cfg) == []
    enc = build_frozen_encoder(cfg)
    case = torch.load(HF_CASE, weights_only=True)
    # Hugging Face's [B, T, C, H, W] -> the official [B, C, T, H, W]
    clip = (case["video_int8"].float() * case["video_scale"]).permute(0, 2, 1, 3, 4)
    with torch.inference_mode():
        out = enc(clip)
    assert rel(out, case["encoder_out"]) <= 5e-6
    assert enc.loaded_from["key"] == "hugging_face"
    # the pretrain section must describe the folder's encoder
    cfg, _ = _v2_cfg(tmp_path, overrides=["pretrain.checkpoint=vjepa2-hf", "pretrain.depth=4"])
    (problem,) = pretrained_problems(cfg)
    assert "pretrain.depth=4 but num_hidden_layers=3 in config.json" in problem
    with pytest.raises(CheckpointError, match="pretrain.depth=4 but num_hidden_layers=3"):
        build_frozen_encoder(cfg)
    (folder / "not-hf").mkdir()
    cfg, _ = _v2_cfg(tmp_path, overrides=["pretrain.checkpoint=not-hf"])
    assert "is a folder but not a Hugging Face V-JEPA 2 one" in pretrained_problems(cfg)[0]


# ------------------------------------------------------------------------------------------------
# a V2 probe run through the CLI on the demo clips
# ------------------------------------------------------------------------------------------------
def test_v2_probe_runs_through_the_cli_and_records_every_head(tmp_path, demo_dir, capsys):
    cfg, path = _v2_cfg(tmp_path, demo_dir, out_layers=[1, 2])
    assert cli.main(["probe", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    # val: 2 segments x 2 views; per view 2 segments x 2 blocks x 16 tokens (8 frames at 32 px)
    assert "cached val features: (8, 2, 64, 96)" in out and "v2 protocol" in out
    folder = Path(cfg.output_folder)
    res = json.loads((folder / "jepa-results.json").read_text())
    record = (res["protocol"], res["out_layers"], res["probe_blocks"], res["probe_heads"])
    assert record == ("v2", [1, 2], 2, 3)
    assert (res["resolution"], res["frames_per_clip"], res["segments_x_views"]) == (32, 8, [2, 2])
    assert res["pretrained_checkpoint"].endswith("pre/checkpoint.pth.tar")
    assert res["checkpoint_key"] == "target_encoder"
    names = ["lr=0.003,wd=0.01", "lr=0.001,wd=0.1,warmup=1", "lr=0,wd=0.8"]
    assert [h["name"] for h in res["heads"]] == names
    assert all(h["val_top1"] is not None and h["train_loss"] is not None for h in res["heads"])
    assert len(res["history"]) == 2 * 3 and res["epochs"] == 2
    best = best_head([h["val_top1"] for h in res["heads"]])
    assert res["best_head"] == best and res["top1"] == res["heads"][best]["val_top1"]
    assert f"best probe: top-1 {res['top1']:.2f}" in out
    # the official V2 eval's checkpoint layout: every probe and its optimizer
    ck = read_checkpoint(folder / "jepa-latest.pth.tar")
    assert len(ck["classifiers"]) == len(ck["opt"]) == 3 and ck["epoch"] == 2
    assert all(k.startswith("module.") for k in ck["classifiers"][0])
    probe = AttentiveClassifierV2(embed_dim=96, num_heads=3, depth=2, num_classes=8)
    load_vjepa2_probe(probe, folder / "jepa-latest.pth.tar", index=best)
    # a finished run is never overwritten
    assert cli.main(["probe", "--config", str(path)]) == 2
    assert "holds the results of a finished probe run" in capsys.readouterr().err
    # an official V2 eval checkpoint (no vjepa_fast extras) resumes for a third epoch
    del ck["vjepa_fast"]
    torch.save(ck, folder / "jepa-latest.pth.tar")
    more = ["resume_checkpoint=true", "optimization.num_epochs=3"]
    assert cli.main(["probe", "--config", str(path), *more]) == 0
    out = capsys.readouterr().out
    assert "resumed 3 probe(s)" in out and "at epoch 2" in out and "[epoch   3/3]" in out
