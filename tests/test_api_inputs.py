"""The Python API's public entry points say what their inputs must be, instead of failing deep inside
(TypeError on None, ZeroDivisionError on empty lists, a shape error that does not name C)."""
from __future__ import annotations

import pytest
import torch

from vjepa_fast import build_vjepa
from vjepa_fast.masks import MultiBlock3DMaskCollator

MASKS = [{"spatial_scale": (0.15, 0.15), "num_blocks": 4}, {"spatial_scale": (0.5, 0.5), "num_blocks": 1}]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_vjepa("vit_tiny", crop_size=64, num_frames=4, embed_dim=24, depth=1, num_heads=3,
                       pred_depth=1, pred_embed_dim=12)


@pytest.fixture(scope="module")
def batch():
    clips = torch.randn(2, 3, 4, 64, 64)
    enc, pred = MultiBlock3DMaskCollator(MASKS, crop_size=64, num_frames=4).sample(2, 0)
    return clips, enc, pred


def test_valid_inputs_run(model, batch):
    out = model(*batch)
    assert torch.isfinite(out.loss) and len(out.preds) == 2


@pytest.mark.parametrize("enc,pred,match", [
    (None, None, r"masks_enc must be lists of int64 \[B, K\] token-index tensors, one per mask generator.*collators"),
    ([], [], r"masks_enc is empty: it must be lists of int64 \[B, K\]"),
    ("tensor", "tensor", r"masks_enc must be lists of int64 .*got Tensor"),
    ("one_short", None, r"2 context masks \(masks_enc\) but 1 target masks"),
])
def test_mask_lists(model, batch, enc, pred, match):
    clips, me, mp = batch
    if enc == "tensor":
        enc, pred = me[0], mp[0]
    elif enc == "one_short":
        enc, pred = me, mp[:1]
    with pytest.raises(ValueError, match=match):
        model(clips, enc, pred)


def test_mask_tensors(model, batch):
    clips, me, mp = batch
    with pytest.raises(TypeError, match=r"masks_enc\[1\] must be int64 token indices, got torch.int32"):
        model(clips, [me[0], me[1].int()], mp)
    with pytest.raises(ValueError, match=r"masks_pred\[0\] must be \[B=2, K\] with 1 <= K <= 32 .*got \(1, "):
        model(clips, me, [mp[0][:1], mp[1]])
    with pytest.raises(ValueError, match=r"masks_enc\[0\] must be \[B=2, K\] .*got \(2, 0\)"):
        model(clips, [me[0][:, :0], me[1]], mp)
    with pytest.raises(ValueError, match=r"masks_enc\[0\] holds indices outside \[0, 32\): min 0, max 32"):
        model(clips, [me[0].clamp(max=0) + torch.tensor([[0] * (me[0].shape[1] - 1) + [32]]), me[1]], mp)
    with pytest.raises(ValueError, match=r"masks_pred\[1\] must be an int64 \[B, K\] tensor, got list"):
        model(clips, me, [mp[0], mp[1].tolist()])
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"masks_enc\[0\] is on cuda:0 but the clips are on cpu"):
            model(clips, [me[0].cuda(), me[1]], mp)


def test_clips(model, batch):
    clips, me, mp = batch
    with pytest.raises(ValueError, match=r"clips must be \[B, C=3, T=4, H=64, W=64\] .*got \(2, 12, 4, 64, 64\)"):
        model(torch.randn(2, 12, 4, 64, 64), me, mp)
    with pytest.raises(ValueError, match=r"got \(2, 3, 64, 64\)"):
        model(clips[:, :, 0], me, mp)
    with pytest.raises(TypeError, match=r"clips must be floating point .*torch.uint8"):
        model(clips.to(torch.uint8), me, mp)
    with pytest.raises(TypeError, match=r"clips must be a float tensor \[B, C=3, T=4, H=64, W=64\], got list"):
        model([clips], me, mp)
    with pytest.raises(ValueError, match=r"C=3, T=4"):
        model.forward_target(torch.randn(2, 1, 4, 64, 64))
    with pytest.raises(ValueError, match="masks_enc is empty"):
        model.forward_context(clips, [], [])


def test_channels_and_image_models_name_their_own_shape():
    grey = build_vjepa("vit_tiny", crop_size=64, num_frames=4, embed_dim=24, depth=1, num_heads=3, pred_depth=1,
                       pred_embed_dim=12, in_chans=1)
    enc, pred = MultiBlock3DMaskCollator(MASKS, crop_size=64, num_frames=4).sample(2, 0)
    with pytest.raises(ValueError, match=r"clips must be \[B, C=1, T=4, H=64, W=64\].*got \(2, 3, 4, 64, 64\)"):
        grey(torch.randn(2, 3, 4, 64, 64), enc, pred)
    assert torch.isfinite(grey(torch.randn(2, 1, 4, 64, 64), enc, pred).loss)
    image = build_vjepa("vit_tiny", crop_size=64, num_frames=1, tubelet_size=1, embed_dim=24, depth=1, num_heads=3,
                        pred_depth=1, pred_embed_dim=12)
    enc, pred = MultiBlock3DMaskCollator(MASKS, crop_size=64, num_frames=1, tubelet_size=1).sample(2, 0)
    with pytest.raises(ValueError, match=r"\[B, C=3, H=64, W=64\] \(an image model: num_frames 1\).*got \(2, 3, 1, 64, 64\)"):
        image(torch.randn(2, 3, 1, 64, 64), enc, pred)
    assert torch.isfinite(image(torch.randn(2, 3, 64, 64), enc, pred).loss)


def test_encoder_shape_errors_say_what_c_must_be(model):
    with pytest.raises(ValueError, match=r"video encoder expects \[B, C=3, T, H, W\] \(C = in_chans\), got \(1, 12, 4, 64, 64\)"):
        model.encoder(torch.randn(1, 12, 4, 64, 64))
