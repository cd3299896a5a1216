"""Video transforms: the official V-JEPA pretraining augmentation and the frozen-eval views.

Pretraining augmentation (spec §5.2), in the official order: float32 copy -> ``[C,T,H,W]`` ->
random-resized-crop (one box for every frame) -> bilinear resize (``align_corners=False``) to
``crop_size`` -> horizontal flip of the whole clip with p=0.5 -> normalise with ImageNet mean/std x 255.

It is split in two so that the heavy part can run batched on the GPU:

* :func:`sample_crop_params` draws ``(top, left, h, w, flip)`` on the CPU (torch generator);
* :func:`apply_video_transform` applies given boxes/flips to a batch of uint8 clips on any device.
  Only the crop boxes are ever converted to float (never the full frame). On an accelerator it runs
  as one batched gather computing the same arithmetic as ``F.interpolate(mode='bilinear',
  align_corners=False)``; on the CPU it loops over the clips with ``F.interpolate`` on each box.

:func:`reference_video_transform` is the per-clip CPU implementation in the official order; the tests
check that both agree.

Optional pieces (all off in the official pretraining configs):

* ``data_aug.auto_augment`` (RandAugment ``rand-m7-n4-mstd0.5-inc1``, bicubic, one set of op
  parameters for every frame of a clip) and ``data_aug.reprob`` (random erasing, pixel mode,
  max_count 1, one box for all frames of a clip) are implemented by the pretraining pipeline
  (:class:`vjepa_fast.data.VideoClipSource`), reusing :class:`vjepa_fast.eval_data.RandAugmentVideo`
  and :func:`vjepa_fast.eval_data.random_erase_`: RandAugment runs on the full-resolution uint8
  frames in the DataLoader workers *before* the crop, random erasing on the normalised batched clips
  on the device *after* :func:`apply_video_transform`. When RandAugment is on, the official code
  converts to [0,1] (``/255``) and normalises with mean/std in [0,1] units; here the clip stays in
  [0,255] and is normalised with mean/std x 255, which is the same affine map
  (``(x/255 - m)/s == (x - 255 m)/(255 s)``, and the bilinear resize commutes with the scaling), so the
  normalised result is equal up to float32 rounding (~1e-6).
* The per-clip :class:`VideoTransform` and :class:`BatchVideoTransform` do not implement them and
  raise ``NotImplementedError`` for ``auto_augment`` / ``reprob > 0``.
* ``motion_shift`` (``random_resized_crop_with_shift``) is not implemented anywhere and raises
  ``NotImplementedError``.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CropParams",
    "sample_crop_params",
    "sample_batch_crop_params",
    "apply_video_transform",
    "reference_video_transform",
    "VideoTransform",
    "BatchVideoTransform",
    "eval_video_views",
    "EvalVideoTransform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CropParams(NamedTuple):
    top: int
    left: int
    h: int
    w: int
    flip: bool


# ----------------------------------------------------------------------------------------------------
# parameter sampling (CPU)
# ----------------------------------------------------------------------------------------------------
def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return float(torch.empty(1, dtype=torch.float64).uniform_(lo, hi, generator=g).item())


def _randint(lo: int, hi_excl: int, g: torch.Generator | None) -> int:
    return int(torch.randint(lo, hi_excl, (1,), generator=g).item())


def sample_crop_params(
    H: int,
    W: int,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (0.75, 1.35),
    generator: torch.Generator | None = None,
    hflip_prob: float = 0.5,
) -> CropParams:
    """Random-resized-crop box + flip for an ``H x W`` clip (official rules, one box for all frames).

    Up to 10 tries of ``area = U(scale) * H * W``, ``ar = exp(U(log ratio))``,
    ``w = round(sqrt(area * ar))``, ``h = round(sqrt(area / ar))``; the first that fits gets a uniform
    position. Otherwise a centre crop of the whole frame clamped to the ratio range. Then
    ``flip = U(0,1) < hflip_prob``.
    """
    H, W = int(H), int(W)
    if H < 1 or W < 1:
        raise ValueError(f"bad frame size {H}x{W}")
    if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"bad scale {scale} or ratio {ratio}")
    area = H * W
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], generator)
        ar = math.exp(_uniform(log_r[0], log_r[1], generator))
        w = int(round(math.sqrt(target_area * ar)))
        h = int(round(math.sqrt(target_area / ar)))
        if 0 < w <= W and 0 < h <= H:
            top = _randint(0, H - h + 1, generator)
            left = _randint(0, W - w + 1, generator)
            box = (top, left, h, w)
            break
    if box is None:  # centre-crop fallback
        in_ratio = W / H
        if in_ratio < min(ratio):
            w = W
            h = int(round(w / min(ratio)))
        elif in_ratio > max(ratio):
            h = H
            w = int(round(h * max(ratio)))
        else:
            w, h = W, H
        box = ((H - h) // 2, (W - w) // 2, h, w)
    flip = bool(hflip_prob > 0 and _uniform(0.0, 1.0, generator) < hflip_prob)
    return CropParams(*box, flip)


def sample_batch_crop_params(
    sizes: Sequence[tuple[int, int]],
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (0.75, 1.35),
    generator: torch.Generator | None = None,
    hflip_prob: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_crop_params` for each ``(H, W)``; returns ``boxes`` int64 ``[B,4]`` (top, left, h, w)
    and ``flips`` bool ``[B]``."""
    ps = [sample_crop_params(h, w, scale, ratio, generator, hflip_prob) for h, w in sizes]
    boxes = torch.tensor([[p.top, p.left, p.h, p.w] for p in ps], dtype=torch.int64).reshape(-1, 4)
    flips = torch.tensor([p.flip for p in ps], dtype=torch.bool)
    return boxes, flips


# ----------------------------------------------------------------------------------------------------
# batched application (any device)
# ----------------------------------------------------------------------------------------------------
def _as_uint8_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a numpy array or tensor, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 clips, got {x.dtype}")
    return x


def _linear_taps(start: torch.Tensor, length: torch.Tensor, out_size: int, device) -> tuple:
    """Source taps of 1-D linear resampling ``length -> out_size`` (align_corners=False), as PyTorch's
    CPU kernel computes them: ``scale = length / out_size`` in fp32, ``src = scale * (dst + 0.5) - 0.5``
    evaluated in fp64 and rounded to fp32 (the C++ ``dst + 0.5`` is a double), clamped at 0;
    ``i0 = floor(src)``, ``i1 = i0 + (i0 < length - 1)``, ``lam = src - i0``. Shapes ``[B, out_size]``."""
    scale = length.to(torch.float32) / float(out_size)  # [B]
    dst = torch.arange(out_size, device=device, dtype=torch.float64)
    src = (scale.to(torch.float64)[:, None] * (dst + 0.5) - 0.5).to(torch.float32).clamp_min(0.0)
    i0 = src.to(torch.int64)  # src >= 0, so truncation == floor
    lam = (src - i0.to(torch.float32)).clamp(0.0, 1.0)
    i1 = i0 + (i0 < (length[:, None] - 1)).to(torch.int64)
    return start[:, None] + i0, start[:, None] + i1, lam


def apply_video_transform(
    clips,
    boxes,
    flips,
    crop_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
    out_dtype: torch.dtype = torch.float32,
    method: str = "auto",
) -> torch.Tensor:
    """Crop, resize (bilinear, align_corners=False), flip and normalise a batch of clips.

    Args:
        clips: uint8 ``[B, T, H, W, 3]`` tensor/array, or a list of ``B`` uint8 ``[T, H_b, W_b, 3]``
            clips (numpy or torch; sizes may differ, T may not).
        boxes: ``[B, 4]`` int (top, left, h, w) in source pixels, e.g. from :func:`sample_batch_crop_params`.
        flips: ``[B]`` bool, horizontal flip of the whole clip.
        crop_size: output side.
        mean, std: per-channel, in [0,1] units; multiplied by 255 as in the official transform.
        device: where to compute (default: the clips' device; CPU for numpy clips).
        method: ``"gather"``: one batched computation: the boxes are packed channel-first into one
            uint8 buffer (on the host for a list, so only the boxes travel to ``device``), then the
            two source rows and columns of every output pixel are gathered and blended with the
            kernel's weights (see :func:`_linear_taps`); ``"loop"``: per clip, float32 copy of the
            box only + ``F.interpolate`` (fastest on the CPU); ``"auto"``: ``loop`` on the CPU,
            ``gather`` elsewhere. Both agree with :func:`reference_video_transform` to ~1e-6.

    Returns:
        ``[B, 3, T, crop_size, crop_size]`` ``out_dtype`` (contiguous).
    """
    if method not in ("auto", "gather", "loop"):
        raise ValueError(f"method must be 'auto', 'gather' or 'loop', not {method!r}")
    boxes = torch.as_tensor(np.asarray(boxes) if not isinstance(boxes, torch.Tensor) else boxes)
    boxes = boxes.to(torch.int64).reshape(-1, 4).cpu()
    flips = torch.as_tensor(np.asarray(flips) if not isinstance(flips, torch.Tensor) else flips)
    flips = flips.to(torch.bool).reshape(-1).cpu()
    if isinstance(clips, (list, tuple)):
        if len(clips) == 0:
            raise ValueError("empty batch")
        cl = [_as_uint8_tensor(c) for c in clips]
        T = cl[0].shape[0]
        for c in cl:
            if c.ndim != 4 or c.shape[-1] != 3 or c.shape[0] != T:
                raise ValueError(f"clips must be [T,H,W,3] with a common T={T}; got {tuple(c.shape)}")
        src_device = cl[0].device
    else:
        x = _as_uint8_tensor(clips)
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"clips must be [B,T,H,W,3], got {tuple(x.shape)}")
        cl = list(x.unbind(0))
        T = x.shape[1]
        src_device = x.device
    B = len(cl)
    device = torch.device(device) if device is not None else src_device
    if boxes.shape[0] != B or flips.shape[0] != B:
        raise ValueError(f"{B} clips but {boxes.shape[0]} boxes and {flips.shape[0]} flips")
    box_list = boxes.tolist()
    for b, (c, (t_, l_, h_, w_)) in enumerate(zip(cl, box_list)):
        H, W = c.shape[1], c.shape[2]
        if h_ < 1 or w_ < 1 or t_ < 0 or l_ < 0 or t_ + h_ > H or l_ + w_ > W:
            raise ValueError(f"box {b} (top={t_}, left={l_}, h={h_}, w={w_}) outside a {H}x{W} clip")
    if method == "auto":
        method = "loop" if device.type == "cpu" else "gather"

    f32 = torch.float32
    m = torch.tensor([v * 255.0 for v in mean], dtype=f32)[:, None, None, None]
    s = torch.tensor([v * 255.0 for v in std], dtype=f32)[:, None, None, None]

    if method == "loop":
        m, s = m.to(device), s.to(device)
        out = torch.empty((B, 3, T, crop_size, crop_size), dtype=f32, device=device)
        for b, (c, (t_, l_, h_, w_), fl) in enumerate(zip(cl, box_list, flips.tolist())):
            xb = c[:, t_:t_ + h_, l_:l_ + w_].to(device).to(f32).permute(3, 0, 1, 2)  # C,T,h,w (box only)
            xb = F.interpolate(xb, size=(crop_size, crop_size), mode="bilinear", align_corners=False)
            if fl:
                xb = xb.flip(-1)
            torch.sub(xb, m, out=out[b]).div_(s)
        return out.to(out_dtype)

    # --- batched gather -------------------------------------------------------------------------
    # Pack the boxes (the only pixels read) channel-first: [B, 3, T, hmax, wmax] uint8.
    hmax, wmax = int(boxes[:, 2].max()), int(boxes[:, 3].max())
    pack_on = src_device if src_device.type == device.type else torch.device("cpu")
    pin = device.type == "cuda" and pack_on.type == "cpu"
    src = torch.empty((B, 3, T, hmax, wmax), dtype=torch.uint8, device=pack_on, pin_memory=pin)
    for b, (c, (t_, l_, h_, w_)) in enumerate(zip(cl, box_list)):
        src[b, :, :, :h_, :w_].copy_(c[:, t_:t_ + h_, l_:l_ + w_].permute(3, 0, 1, 2))
    src = src.to(device, non_blocking=pin)

    zeros = torch.zeros(B, dtype=torch.int64)
    # Taps are tiny ([B, crop]); compute them on the CPU (fp64 step) and move them.
    y0, y1, ly = _linear_taps(zeros, boxes[:, 2], crop_size, "cpu")  # [B, S]
    x0, x1, lx = _linear_taps(zeros, boxes[:, 3], crop_size, "cpu")
    # A horizontal flip of the output is the column taps in reverse order (bit-identical).
    fl = flips[:, None]
    x0 = torch.where(fl, x0.flip(1), x0)
    x1 = torch.where(fl, x1.flip(1), x1)
    lx = torch.where(fl, lx.flip(1), lx)
    nb = device.type == "cuda"
    y0, y1, ly, x0, x1, lx = (t.to(device, non_blocking=nb) for t in (y0, y1, ly, x0, x1, lx))

    S = crop_size
    rows_shape = (B, 3, T, S, wmax)
    r0 = torch.gather(src, 3, y0[:, None, None, :, None].expand(rows_shape))  # [B,3,T,S,wmax] uint8
    r1 = torch.gather(src, 3, y1[:, None, None, :, None].expand(rows_shape))
    del src
    out_shape = (B, 3, T, S, S)
    X0 = x0[:, None, None, None, :].expand(out_shape)
    X1 = x1[:, None, None, None, :].expand(out_shape)
    LX = lx[:, None, None, None, :]
    LY = ly[:, None, None, :, None]
    # same arithmetic as the kernel: columns first, then rows
    top = (1.0 - LX) * torch.gather(r0, 4, X0).to(f32) + LX * torch.gather(r0, 4, X1).to(f32)
    bot = (1.0 - LX) * torch.gather(r1, 4, X0).to(f32) + LX * torch.gather(r1, 4, X1).to(f32)
    del r0, r1
    out = (1.0 - LY) * top + LY * bot
    del top, bot
    out = (out - m.to(device)) / s.to(device)
    return out.to(out_dtype)


# ----------------------------------------------------------------------------------------------------
# per-clip reference (official order, CPU)
# ----------------------------------------------------------------------------------------------------
def reference_video_transform(
    clip,
    box,
    flip: bool,
    crop_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """One clip, official order: float32 copy of the full clip -> ``[C,T,H,W]`` -> crop ``box``
    (top, left, h, w) -> ``F.interpolate(bilinear, align_corners=False)`` -> flip -> normalise.
    Returns float32 ``[3, T, crop_size, crop_size]``."""
    x = torch.tensor(np.asarray(clip), dtype=torch.float32) if not isinstance(clip, torch.Tensor) \
        else clip.to(torch.float32).clone()
    x = x.permute(3, 0, 1, 2)  # C, T, H, W
    top, left, h, w = (int(v) for v in box)
    x = x[:, :, top:top + h, left:left + w]
    x = F.interpolate(x, size=(crop_size, crop_size), mode="bilinear", align_corners=False)
    if flip:
        x = x.flip(-1)
    m = torch.tensor([v * 255.0 for v in mean], dtype=torch.float32)[:, None, None, None]
    s = torch.tensor([v * 255.0 for v in std], dtype=torch.float32)[:, None, None, None]
    return (x - m) / s


def _check_motion_shift(motion_shift) -> None:
    if motion_shift:
        raise NotImplementedError(
            "motion_shift (random_resized_crop_with_shift) is not implemented; it is off in every "
            "official pretraining config. Use motion_shift=False."
        )


def _check_unsupported(auto_augment, motion_shift, reprob) -> None:
    """For the per-clip/batch transform classes, which implement neither RandAugment nor random
    erasing (the pretraining pipeline, :class:`vjepa_fast.data.VideoClipSource`, does)."""
    if auto_augment:
        raise NotImplementedError(
            "auto_augment (RandAugment rand-m7-n4-mstd0.5-inc1) is not implemented by VideoTransform / "
            "BatchVideoTransform; the pretraining pipeline (vjepa_fast.data.VideoClipSource, "
            "data_aug.auto_augment) implements it. Use auto_augment=False here."
        )
    _check_motion_shift(motion_shift)
    if reprob and reprob > 0:
        raise NotImplementedError(
            "random erasing (reprob > 0) is not implemented by VideoTransform / BatchVideoTransform; the "
            "pretraining pipeline (vjepa_fast.data.VideoClipSource, data_aug.reprob) implements it. "
            "Use reprob=0 here."
        )


class _ClipAugment:
    """The settings both pretraining transforms share: random-resized-crop box ranges, flip, normalisation."""

    def __init__(self, crop_size, random_horizontal_flip, random_resize_aspect_ratio, random_resize_scale,
                 reprob, auto_augment, motion_shift, normalize):
        _check_unsupported(auto_augment, motion_shift, reprob)
        self.crop_size = int(crop_size)
        self.hflip_prob = 0.5 if random_horizontal_flip else 0.0
        self.ratio = tuple(random_resize_aspect_ratio)
        self.scale = tuple(random_resize_scale)
        self.mean, self.std = normalize


class VideoTransform(_ClipAugment):
    """Per-clip CPU pretraining transform (official pretraining-config values), usable as the
    ``transform`` of :class:`~vjepa_fast.video_dataset.VideoDataset`: uint8 ``[T,H,W,3]`` ->
    float32 ``[3,T,crop,crop]``. ``random_horizontal_flip=False`` disables the flip."""

    def __init__(
        self,
        crop_size: int = 224,
        random_horizontal_flip: bool = True,
        random_resize_aspect_ratio: tuple[float, float] = (0.75, 1.35),
        random_resize_scale: tuple[float, float] = (0.3, 1.0),
        reprob: float = 0.0,
        auto_augment: bool = False,
        motion_shift: bool = False,
        normalize: tuple = (IMAGENET_MEAN, IMAGENET_STD),
        seed: int | None = None,
    ):
        super().__init__(crop_size, random_horizontal_flip, random_resize_aspect_ratio,
                         random_resize_scale, reprob, auto_augment, motion_shift, normalize)
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, clip) -> torch.Tensor:
        T, H, W, C = np.shape(clip)
        p = sample_crop_params(H, W, self.scale, self.ratio, self.generator, self.hflip_prob)
        # crop-first float conversion: same values as reference_video_transform, less work
        return apply_video_transform([clip], [p[:4]], [p.flip], self.crop_size, self.mean, self.std,
                                     device="cpu", method="loop")[0]


class BatchVideoTransform(_ClipAugment):
    """Batched pretraining transform for the training loop: samples boxes on the CPU and applies
    them with :func:`apply_video_transform` on ``device``. Call on a list of uint8 clips (e.g. the
    flattened clips of a collated batch) -> ``[B, 3, T, crop, crop]``."""

    def __init__(
        self,
        crop_size: int = 224,
        random_horizontal_flip: bool = True,
        random_resize_aspect_ratio: tuple[float, float] = (0.75, 1.35),
        random_resize_scale: tuple[float, float] = (0.3, 1.0),
        reprob: float = 0.0,
        auto_augment: bool = False,
        motion_shift: bool = False,
        normalize: tuple = (IMAGENET_MEAN, IMAGENET_STD),
        device: torch.device | str | None = None,
        out_dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        method: str = "auto",
    ):
        super().__init__(crop_size, random_horizontal_flip, random_resize_aspect_ratio,
                         random_resize_scale, reprob, auto_augment, motion_shift, normalize)
        self.method = method
        self.device = device
        self.out_dtype = out_dtype
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(int(seed))
        else:
            self.generator.seed()

    def sample(self, sizes: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_batch_crop_params(sizes, self.scale, self.ratio, self.generator, self.hflip_prob)

    def __call__(self, clips) -> torch.Tensor:
        if isinstance(clips, (list, tuple)):
            sizes = [(int(np.shape(c)[1]), int(np.shape(c)[2])) for c in clips]
        else:
            sizes = [(int(clips.shape[2]), int(clips.shape[3]))] * int(clips.shape[0])
        boxes, flips = self.sample(sizes)
        return apply_video_transform(
            clips, boxes, flips, self.crop_size, self.mean, self.std, self.device, self.out_dtype, self.method
        )


# ----------------------------------------------------------------------------------------------------
# evaluation views (spec §7.2)
# ----------------------------------------------------------------------------------------------------
def _resize_short_side_uint8(clip: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[T,H,W,3]`` -> uint8 with the short side ``size`` (long side ``int(size*L/S)``), bilinear
    half-pixel (what cv2 ``INTER_LINEAR`` computes, up to its 11-bit fixed-point weights: <= 1 grey
    level). Unchanged when the short side already equals ``size``."""
    T, H, W, _ = clip.shape
    if (W <= H and W == size) or (H <= W and H == size):
        return clip
    if W < H:
        ow, oh = size, int(size * H / W)
    else:
        oh, ow = size, int(size * W / H)
    x = clip.permute(0, 3, 1, 2).to(torch.float32)
    x = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1)


def _to_normalized(view: torch.Tensor, mean, std) -> torch.Tensor:
    # ClipToTensor (/255) then Normalize in [0,1] units, as the official eval transform does.
    x = view.permute(3, 0, 1, 2).to(torch.float32) / 255.0
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None, None]
    return ((x - m) / s).contiguous()


def eval_video_views(
    clip,
    resolution: int = 224,
    num_views: int = 3,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> list[torch.Tensor]:
    """Frozen-eval spatial views of one uint8 ``[T,H,W,3]`` clip -> list of float32 ``[3,T,res,res]``.

    ``num_views > 1``: resize the short side to ``resolution``, then ``num_views`` square crops
    evenly spaced along the long side (``step = (L - res) // (num_views - 1)``, crop i starts at
    ``i * step``). ``num_views == 1``: resize the short side to ``int(res * 256 / 224)``, then a centre
    crop (offsets ``round((L - res) / 2)``).
    """
    x = _as_uint8_tensor(clip if isinstance(clip, torch.Tensor) else np.asarray(clip))
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"clip must be uint8 [T,H,W,3], got {tuple(x.shape)}")
    if num_views < 1:
        raise ValueError("num_views must be >= 1")
    res = int(resolution)
    if num_views == 1:
        x = _resize_short_side_uint8(x, int(res * 256 / 224))
        _, H, W, _ = x.shape
        y1 = int(round((H - res) / 2.0))
        x1 = int(round((W - res) / 2.0))
        return [_to_normalized(x[:, y1:y1 + res, x1:x1 + res], mean, std)]
    x = _resize_short_side_uint8(x, res)
    _, H, W, _ = x.shape
    step = (max(H, W) - res) // (num_views - 1)
    views = []
    for i in range(num_views):
        s0 = i * step
        v = x[:, s0:s0 + res, :, :] if H > W else x[:, :, s0:s0 + res, :]
        views.append(_to_normalized(v, mean, std))
    return views


class EvalVideoTransform:
    """Callable form of :func:`eval_video_views` (e.g. as a VideoDataset ``transform``)."""

    def __init__(self, resolution: int = 224, num_views: int = 1,
                 normalize: tuple = (IMAGENET_MEAN, IMAGENET_STD)):
        self.resolution = int(resolution)
        self.num_views = int(num_views)
        self.mean, self.std = normalize

    def __call__(self, clip) -> list[torch.Tensor]:
        return eval_video_views(clip, self.resolution, self.num_views, self.mean, self.std)
