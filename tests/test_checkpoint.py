"""Official-format checkpoint loading and saving, with clear errors on bad files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vjepa_fast import AttentiveClassifier, CheckpointError, VisionTransformer, atomic_save, build_optimizer, build_vjepa
from vjepa_fast import load_encoder, load_vjepa_checkpoint, vjepa_checkpoint
from vjepa_fast.checkpoint import clean_key

OFFICIAL = Path(__file__).parent / "fixtures" / "official_parity" / "checkpoint.pth.tar"


def case_model():
    return build_vjepa("vit_tiny", crop_size=64, num_frames=8, embed_dim=96, depth=3, num_heads=3,
                       pred_depth=2, pred_embed_dim=48, num_mask_tokens=2)


def test_clean_key_strips_wrappers():
    assert clean_key("module.backbone.blocks.0.attn.qkv.weight") == "blocks.0.attn.qkv.weight"
    assert clean_key("backbone.mask_tokens.1") == "mask_tokens.1"
    assert clean_key("pos_embed") == "pos_embed"


def test_official_checkpoint_loads_every_tensor():
    model = case_model()
    ck = load_vjepa_checkpoint(model, OFFICIAL)
    for key in ("encoder", "predictor", "target_encoder"):
        own = getattr(model, key).state_dict()
        for k, v in ck[key].items():
            assert torch.equal(own[clean_key(k)], v), f"{key}.{k}"
    assert not torch.equal(model.encoder.blocks[0].attn.qkv.weight, model.target_encoder.blocks[0].attn.qkv.weight)


def test_saved_checkpoint_has_official_layout_and_round_trips(tmp_path):
    model = case_model()
    load_vjepa_checkpoint(model, OFFICIAL)
    opt = build_optimizer(model.encoder, model.predictor)
    path = tmp_path / "jepa-latest.pth.tar"
    atomic_save(vjepa_checkpoint(model, opt, epoch=3, loss=0.5, batch_size=2, lr=1e-3, extra={"step": 30}), path)
    raw = torch.load(path, weights_only=True)
    official = torch.load(OFFICIAL, weights_only=True)
    for key in ("encoder", "predictor", "target_encoder"):
        assert list(raw[key]) == list(official[key]), f"{key} keys/order differ from the official file"
    assert {"opt", "scaler", "epoch", "loss", "batch_size", "world_size", "lr"} <= set(raw)
    assert len(raw["opt"]["param_groups"]) == 4 and raw["vjepa_fast"]["step"] == 30
    again = case_model()
    load_vjepa_checkpoint(again, path)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


def test_strict_load_lists_missing_unexpected_and_mismatched():
    model = case_model()
    ck = torch.load(OFFICIAL, weights_only=True)
    ck["encoder"].pop("module.backbone.norm.bias")
    ck["encoder"]["module.backbone.extra.weight"] = torch.zeros(1)
    ck["encoder"]["module.backbone.blocks.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as err:
        load_vjepa_checkpoint(model, ck)
    msg = str(err.value)
    assert "missing keys (1): norm.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "blocks.0.mlp.fc1.weight: checkpoint (3, 3) vs model (384, 96)" in msg


def test_encoder_only_load_at_another_resolution():
    enc = VisionTransformer(img_size=96, num_frames=8, embed_dim=96, depth=3, num_heads=3, uniform_power=True)
    fresh_pos = enc.pos_embed.clone()
    load_encoder(enc, OFFICIAL)  # target_encoder by default; 64 px table kept at 96 px
    ck = torch.load(OFFICIAL, weights_only=True)
    assert torch.equal(enc.blocks[1].attn.qkv.weight, ck["target_encoder"]["module.backbone.blocks.1.attn.qkv.weight"])
    assert torch.equal(enc.pos_embed, fresh_pos)
    load_encoder(enc, OFFICIAL, key="encoder")
    assert torch.equal(enc.blocks[1].attn.qkv.weight, ck["encoder"]["module.backbone.blocks.1.attn.qkv.weight"])


def test_probe_file_given_as_backbone_gets_a_clear_error(tmp_path):
    clf = AttentiveClassifier(embed_dim=96, num_heads=3, num_classes=5)
    path = tmp_path / "probe.pth.tar"
    torch.save({"classifier": clf.state_dict(), "epoch": 1}, path)
    enc = VisionTransformer(img_size=64, num_frames=8, embed_dim=96, depth=3, num_heads=3)
    with pytest.raises(CheckpointError, match="has no 'target_encoder' \\(this looks like a probe checkpoint\\)"):
        load_encoder(enc, path)
    with pytest.raises(CheckpointError, match="has no encoder, predictor, target_encoder"):
        load_vjepa_checkpoint(case_model(), path)


def test_truncated_and_foreign_files(tmp_path):
    data = OFFICIAL.read_bytes()
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth.tar is not a readable PyTorch checkpoint"):
        load_vjepa_checkpoint(case_model(), cut)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt is not a readable"):
        load_vjepa_checkpoint(case_model(), text)
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor_file)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a checkpoint dict"):
        load_vjepa_checkpoint(case_model(), tensor_file)
    with pytest.raises(FileNotFoundError, match="nope.pth.tar"):
        load_vjepa_checkpoint(case_model(), tmp_path / "nope.pth.tar")
