"""Model construction, shapes, input validation and pos-embed handling."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vjepa_fast import VIT_PRESETS, AttentiveClassifier, VisionTransformer, VisionTransformerPredictor, build_encoder, build_vjepa
from vjepa_fast.attention import attention, attention_backend, set_attention_backend
from vjepa_fast.pos_embed import interpolate_pos_embed, sincos_table

FIXTURES = Path(__file__).parent / "fixtures"


def tiny_encoder(**kw):
    args = dict(img_size=64, patch_size=16, num_frames=8, tubelet_size=2, embed_dim=96, depth=2, num_heads=3, uniform_power=True)
    return VisionTransformer(**{**args, **kw})


@pytest.mark.parametrize(
    "name, millions",
    [("vit_large", 303.9), ("vit_huge", 631.6), ("vit_giant", 1012.2)],
)
def test_preset_parameter_counts(name, millions):
    # Official encoder sizes (reference §1.1), trainable parameters only (pos_embed is frozen).
    with torch.device("meta"):
        enc = build_encoder(name, img_size=224, num_frames=16, uniform_power=True)
    n = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert round(n / 1e6, 1) == millions


def test_presets_cover_official_names():
    v1 = {"vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant", "vit_gigantic"}
    v2 = {"vit_giant_xformers", "vit_gigantic_xformers", "vit_large_rope", "vit_huge_rope", "vit_giant_rope",
          "vit_giant_xformers_rope", "vit_synthetic"}
    assert set(VIT_PRESETS) == v1 | v2
    assert VIT_PRESETS["vit_huge"]["embed_dim"] // VIT_PRESETS["vit_huge"]["num_heads"] == 80
    # The released ViT-g: 1408 wide, 40 layers, 22 heads of 64 (reference §8.1), MLP 6144.
    g = VIT_PRESETS["vit_giant_xformers"]
    assert (g["embed_dim"], g["depth"], g["num_heads"], int(g["embed_dim"] * g["mlp_ratio"])) == (1408, 40, 22, 6144)
    assert all(VIT_PRESETS[n].get("use_rope") for n in v2 if n.endswith("_rope"))
    # V1 names come first: looking a preset up by width (probe.py) still finds the V1 model.
    assert list(VIT_PRESETS)[:7] == ["vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant", "vit_gigantic"]


def test_sincos_tables_match_official_checkpoint():
    ck = torch.load(FIXTURES / "official_parity" / "checkpoint.pth.tar", weights_only=True)
    enc = tiny_encoder()
    pred = VisionTransformerPredictor(img_size=64, num_frames=8, embed_dim=96, predictor_embed_dim=48, depth=1, num_heads=3, uniform_power=True)
    assert torch.equal(enc.pos_embed, ck["encoder"]["module.backbone.pos_embed"])
    assert torch.equal(pred.predictor_pos_embed, ck["predictor"]["module.backbone.predictor_pos_embed"])


def test_uniform_power_truncation_widths():
    # D=1024: three parts of 2*ceil(1024/6)=342 → 1026 columns cut to 1024 (reference §1.4).
    t = sincos_table(1024, 14, 8, uniform_power=True)
    assert t.shape == (1, 1568, 1024)
    t_plain = sincos_table(1024, 14, 8, uniform_power=False)
    assert not torch.equal(t, t_plain)
    # token 0 is (t,h,w)=(0,0,0): every sine is 0 and every cosine 1 in each axis block.
    assert torch.equal(t[0, 0, :171], torch.zeros(171)) and torch.equal(t[0, 0, 171:342], torch.ones(171))


def test_token_order_is_t_h_w_row_major():
    enc = tiny_encoder()
    x = torch.zeros(1, 3, 8, 64, 64)
    x[:, :, 2:4, 16:32, 48:64] = 1.0  # tubelet t=1, h=1, w=3
    with torch.no_grad():
        tokens = enc.patch_embed(x) - enc.patch_embed(torch.zeros_like(x))
    changed = tokens.abs().sum(-1).nonzero()[:, 1].tolist()
    assert changed == [1 * 16 + 1 * 4 + 3]


def test_forward_masks_equals_official_per_mask_passes():
    torch.manual_seed(0)
    enc = tiny_encoder()
    x = torch.randn(2, 3, 8, 64, 64)
    masks = [torch.stack([torch.randperm(64)[:10].sort().values for _ in range(2)]),
             torch.stack([torch.randperm(64)[:5].sort().values for _ in range(2)])]
    fast = enc.forward_masks(x, masks)
    for m, f in zip(masks, fast):
        assert torch.allclose(f, enc(x, masks=m), atol=1e-6, rtol=0)
    # Backbone semantics with equal lengths: masks concatenated along the batch.
    both = enc(x, masks=[masks[0], masks[0]])
    assert both.shape == (4, 10, 96) and torch.allclose(both[:2], both[2:])


def test_full_forward_shapes_video_and_image():
    enc = tiny_encoder()
    assert enc(torch.randn(2, 3, 8, 64, 64)).shape == (2, 64, 96)
    img = VisionTransformer(img_size=64, patch_size=16, num_frames=1, embed_dim=96, depth=1, num_heads=3)
    assert img(torch.randn(2, 3, 64, 64)).shape == (2, 16, 96)


def test_pos_embed_interpolates_to_other_sizes():
    enc = tiny_encoder()
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 16, 96, 96))
    assert out.shape == (1, 8 * 6 * 6, 96)
    resized = interpolate_pos_embed(enc.pos_embed, (4, 4, 4), (8, 6, 6))
    grid = enc.pos_embed.reshape(1, 4, 4, 4, 96).permute(0, 4, 1, 2, 3)
    expect = F.interpolate(grid, scale_factor=(2.0, 1.5, 1.5), mode="trilinear").permute(0, 2, 3, 4, 1).reshape(1, -1, 96)
    assert torch.equal(resized, expect)
    assert interpolate_pos_embed(enc.pos_embed, (4, 4, 4), (4, 4, 4)) is enc.pos_embed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(img_size=70), "not divisible by patch_size 16"),
        (dict(num_frames=7), "num_frames 7 is not divisible by tubelet_size 2"),
        (dict(num_heads=5), "num_heads=5 does not divide embed_dim=96"),
    ],
)
def test_bad_geometry_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_encoder(**kwargs)


def test_bad_input_shapes_name_the_shape():
    enc = tiny_encoder()
    with pytest.raises(ValueError, match=r"\(2, 3, 7, 64, 64\)"):
        enc(torch.randn(2, 3, 7, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        enc(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="mask indices"):
        enc(torch.randn(2, 3, 8, 64, 64), masks=torch.arange(5))
    pred = VisionTransformerPredictor(img_size=64, num_frames=8, embed_dim=96, predictor_embed_dim=48, depth=1, num_heads=3)
    with pytest.raises(ValueError, match="predictor expects context"):
        pred(torch.randn(2, 5, 32), torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_heads=5 does not divide predictor_embed_dim=48"):
        VisionTransformerPredictor(img_size=64, num_frames=8, embed_dim=96, predictor_embed_dim=48, num_heads=5)


def test_v1_init_has_no_depth_rescale_and_zero_mask_tokens():
    torch.manual_seed(0)
    m = build_vjepa("vit_small", crop_size=64, num_frames=8, depth=4, pred_depth=2, pred_embed_dim=96)
    stds = [blk.mlp.fc2.weight.std().item() for blk in m.encoder.blocks]
    assert all(abs(s - 0.02) < 0.002 for s in stds), stds  # V1 re-init undoes the rescale
    assert all(torch.equal(t, torch.zeros_like(t)) for t in m.predictor.mask_tokens)
    assert not m.target_encoder.pos_embed.requires_grad and not any(p.requires_grad for p in m.target_encoder.parameters())
    rescaled = VisionTransformer(img_size=64, num_frames=8, embed_dim=96, depth=4, num_heads=3, depth_rescale=True)
    assert rescaled.blocks[3].mlp.fc2.weight.std().item() < 0.02 / 2.5


def test_probe_keeps_unused_output_projection():
    clf = AttentiveClassifier(embed_dim=96, num_heads=3, depth=2, num_classes=5)
    assert "pooler.cross_attention_block.xattn.proj.weight" in clf.state_dict()
    x = torch.randn(2, 7, 96)
    before = clf(x)
    with torch.no_grad():
        clf.pooler.cross_attention_block.xattn.proj.weight.add_(1.0)
    assert torch.equal(before, clf(x))  # the official probe never applies it


def test_attention_backend_switch():
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    with attention_backend("math"):
        assert torch.allclose(attention(q, k, v), ref, atol=1e-6)
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        set_attention_backend("fast")
