"""The V-JEPA objective: context encoder + predictor regress the layer-normed features of an EMA
target encoder at masked positions, with an L1 loss.

:meth:`VJEPA.forward` has the official V1 semantics (one clip batch, one list of masks; mask config
i uses mask token i). :meth:`VJEPA.forward_groups` has V2's (facebookresearch/vjepa2
``app/vjepa/train.py`` with ``MultiSeqWrapper`` / ``PredictorMultiSeqWrapper``): a batch is a list of
clip-length groups, each with its own list of mask configs; every mask config of group g uses mask
token g; the loss is the mean of the per-(group, mask config) terms (:func:`jepa_loss_groups`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from .predictor import VisionTransformerPredictor
from .tokens import gather_tokens
from .vision_transformer import VisionTransformer, build_encoder


def normalize_targets(h: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the feature dim without affine (the target encoder's own final norm has one)."""
    return F.layer_norm(h, (h.shape[-1],))


def jepa_loss(
    preds: Sequence[torch.Tensor], h: torch.Tensor, masks_pred: Sequence[torch.Tensor], loss_exp: float = 1.0
) -> torch.Tensor:
    """mean over mask generators of mean(|pred − LN(h)[target idx]|^p)/p.

    ``h`` is the *raw* target-encoder output [B, N, D]; for p = 1 the norm, gather and L1 run fused
    (only the gathered rows are normalised), otherwise through plain PyTorch.
    """
    if len(preds) != len(masks_pred):
        raise ValueError(f"{len(preds)} predictions for {len(masks_pred)} target masks")
    total = 0.0
    for z, m in zip(preds, masks_pred):
        total = total + _mask_loss(z, h, m, loss_exp)
    return total / len(preds)


def _mask_loss(z: torch.Tensor, h: torch.Tensor, m: torch.Tensor, loss_exp: float) -> torch.Tensor:
    """``mean(|z − LN(h)[m]|^p)/p`` for one mask config: predictions ``z`` [B, K, D], the raw target
    output ``h`` [B, N, D], target indices ``m`` [B, K]; fused (norm, gather, L1) for p = 1."""
    if loss_exp == 1.0:
        return kernels.masked_l1_loss(z, h, m)
    t = gather_tokens(normalize_targets(h), m)
    return torch.mean(torch.abs(z - t) ** loss_exp) / loss_exp


def variance_reg(preds: Sequence[torch.Tensor]) -> torch.Tensor:
    """Official regulariser (weighted by ``reg_coeff``, 0 in every config): relu(1 − mean token std)."""
    pstd = sum(torch.sqrt(z.var(dim=1) + 1e-4) for z in preds) / len(preds)
    return torch.mean(F.relu(1.0 - pstd))


_MASKS_HELP = ("lists of int64 [B, K] token-index tensors, one per mask generator, as the collators give them "
               "(vjepa_fast.masks: MultiBlock3DMaskCollator(...).sample(B, step) -> (masks_enc, masks_pred))")


def check_clips(model: "VJEPA", clips) -> None:
    """``clips`` fits ``model``: a floating tensor on the model's device, ``[B, C, T, H, W]`` with the
    encoder's channels, frames and size (``[B, C, H, W]`` for an image model). Raises ValueError /
    TypeError saying what it must be."""
    enc = model.encoder
    C = enc.patch_embed.proj.in_channels
    want = (f"[B, C={C}, H={enc.img_size}, W={enc.img_size}] (an image model: num_frames 1)" if not enc.is_video
            else f"[B, C={C}, T={enc.num_frames}, H={enc.img_size}, W={enc.img_size}]")
    if not isinstance(clips, torch.Tensor):
        raise TypeError(f"clips must be a float tensor {want}, got {type(clips).__name__}")
    shape = tuple(clips.shape)
    expected = (C, enc.num_frames, enc.img_size, enc.img_size) if enc.is_video else (C, enc.img_size, enc.img_size)
    if clips.dim() != len(expected) + 1 or shape[1:] != expected or shape[0] < 1:
        raise ValueError(f"clips must be {want} (the model's in_chans, num_frames and crop size), got {shape}")
    if not clips.is_floating_point():
        raise TypeError(f"clips must be floating point (normalised pixels), got {clips.dtype}")
    device = next(model.encoder.parameters()).device
    if clips.device != device:
        raise ValueError(f"clips are on {clips.device} but the model is on {device}")


def check_masks(model: "VJEPA", clips: torch.Tensor, masks_enc, masks_pred) -> None:
    """``masks_enc`` / ``masks_pred`` fit ``clips``: equally long non-empty lists of int64 ``[B, K]``
    tensors (K >= 1) on the clips' device. On the CPU the indices are also checked to lie in
    ``[0, N)`` (on an accelerator that would cost a host sync, so it is left to the kernels)."""
    for name, masks in (("masks_enc", masks_enc), ("masks_pred", masks_pred)):
        if isinstance(masks, torch.Tensor) or not isinstance(masks, (list, tuple)):
            raise ValueError(f"{name} must be {_MASKS_HELP}; got {type(masks).__name__}")
        if len(masks) == 0:
            raise ValueError(f"{name} is empty: it must be {_MASKS_HELP}")
    if len(masks_enc) != len(masks_pred):
        raise ValueError(f"{len(masks_enc)} context masks (masks_enc) but {len(masks_pred)} target masks "
                         "(masks_pred): one of each per mask generator")
    B, N = clips.shape[0], model.encoder.num_patches
    for name, masks in (("masks_enc", masks_enc), ("masks_pred", masks_pred)):
        for i, m in enumerate(masks):
            where = f"{name}[{i}]"
            if not isinstance(m, torch.Tensor):
                raise ValueError(f"{where} must be an int64 [B, K] tensor, got {type(m).__name__}; {name}: {_MASKS_HELP}")
            if m.dtype != torch.int64:
                raise TypeError(f"{where} must be int64 token indices, got {m.dtype}")
            if m.dim() != 2 or m.shape[0] != B or not 1 <= m.shape[1] <= N:
                raise ValueError(f"{where} must be [B={B}, K] with 1 <= K <= {N} (tokens per clip), "
                                 f"got {tuple(m.shape)}")
            if m.device != clips.device:
                raise ValueError(f"{where} is on {m.device} but the clips are on {clips.device}")
            if m.device.type == "cpu" and (int(m.min()) < 0 or int(m.max()) >= N):
                raise ValueError(f"{where} holds indices outside [0, {N}): min {int(m.min())}, max {int(m.max())}")


@dataclass
class JEPAOutput:
    loss: torch.Tensor
    loss_jepa: torch.Tensor
    loss_reg: torch.Tensor
    preds: list[torch.Tensor]
    context: list[torch.Tensor]
    targets: torch.Tensor  # raw target-encoder output [B, N, D] (not normalised)


class VJEPA(nn.Module):
    """Context encoder, predictor and EMA target encoder in one module (one checkpoint, one
    ``.to()``). The target is a frozen deep copy of the encoder unless one is given.

    ``pack_context``: the context encoder and the predictor each run once on all masks' tokens
    packed into one sequence, attention kept within each mask (:mod:`vjepa_fast.packed`), instead
    of once per mask. ``sparse_patch_embed``: the context path embeds only the kept tubelets
    instead of the whole clip. Both compute the default path's numbers up to float rounding; both
    are off by default.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        predictor: VisionTransformerPredictor,
        target_encoder: VisionTransformer | None = None,
        loss_exp: float = 1.0,
        reg_coeff: float = 0.0,
        pack_context: bool = False,
        sparse_patch_embed: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.target_encoder = target_encoder if target_encoder is not None else copy.deepcopy(encoder)
        self.target_encoder.requires_grad_(False)
        self.loss_exp, self.reg_coeff = loss_exp, reg_coeff
        self.pack_context, self.sparse_patch_embed = pack_context, sparse_patch_embed
        #: Set by :func:`vjepa_fast.compile.compile_vjepa`: a compiled ``forward_student`` that takes
        #: the model first. None runs eagerly.
        self.compiled_student = None
        #: The same for V2's :meth:`forward_student_groups` (one graph per number of groups).
        self.compiled_student_groups = None
        #: Set by ``compile_vjepa(target_mode="reduce-overhead")``: the target forward replays a CUDA
        #: graph, whose output buffers the next replay reuses (the train step marks each step's start).
        self.target_cuda_graph = False

    @torch.no_grad()
    def forward_target(self, clips: torch.Tensor) -> torch.Tensor:
        """Raw target-encoder features ``[B, N, D]`` of ``clips`` (see :func:`check_clips`)."""
        if not torch.compiler.is_compiling():
            check_clips(self, clips)
        return self.target_encoder(clips)

    def forward_groups(
        self, clips: Sequence[torch.Tensor], masks_enc: Sequence[Sequence[torch.Tensor]],
        masks_pred: Sequence[Sequence[torch.Tensor]],
    ) -> JEPAGroupsOutput:
        """The V2 objective on one multi-length batch. ``clips[g]``: the clips of clip-length group g,
        ``[B_g, C, T_g, H, W]`` (groups as the V2 collator returns them: the lengths present in the
        batch, in ``dataset_fpcs`` order); ``masks_enc[g][i]`` / ``masks_pred[g][i]``: int64
        ``[B_g, K]`` context / target token ids of mask config i. Group g uses mask token
        ``g % num_mask_tokens`` for all of its mask configs (official ``PredictorMultiSeqWrapper``).

        Official order (vjepa2 ``app/vjepa/train.py``): the target over every group, then the
        student (:meth:`forward_student_groups`; compiled when ``compiled_student_groups`` is set
        by :func:`vjepa_fast.compile.compile_vjepa`). ``pack_context`` and ``sparse_patch_embed``
        apply per group."""
        check_groups(clips, masks_enc, masks_pred)
        if self.reg_coeff:
            raise ValueError(f"reg_coeff={self.reg_coeff}: the V2 objective has no regulariser")
        mark_group_batches_dynamic(clips, masks_enc, masks_pred)
        with torch.no_grad():
            targets = [self.target_encoder(c) for c in clips]
        student = self.compiled_student_groups or type(self).forward_student_groups
        loss, _, _, preds, contexts = student(self, clips, masks_enc, masks_pred, targets)
        return JEPAGroupsOutput(loss, list(preds), list(contexts), targets)

    def forward_student_groups(
        self, clips: Sequence[torch.Tensor], masks_enc: Sequence[Sequence[torch.Tensor]],
        masks_pred: Sequence[Sequence[torch.Tensor]], hs: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        """V2's counterpart of :meth:`forward_student`: the context encoder over every group (each
        group's mask configs), then the predictor over every group (the official
        ``MultiSeqWrapper`` / ``PredictorMultiSeqWrapper`` order), then :func:`jepa_loss_groups`
        against the raw target features ``hs[g]`` [B_g, N_g, D]. Returns (loss, loss_jepa, loss_reg,
        preds, context) like :meth:`forward_student`; the V2 loss has no regulariser (loss_reg 0)."""
        contexts = [self.encoder.forward_masks(c, me, packed=self.pack_context, sparse_embed=self.sparse_patch_embed)
                    for c, me in zip(clips, masks_enc)]
        preds = [self.predictor.forward_masks(ctx, me, mp, packed=self.pack_context, mask_indices=[g] * len(me))
                 for g, (ctx, me, mp) in enumerate(zip(contexts, masks_enc, masks_pred))]
        loss = jepa_loss_groups(preds, hs, masks_pred, self.loss_exp)
        return loss, loss, loss.new_zeros(()), preds, contexts

    def forward_context(
        self, clips: torch.Tensor, masks_enc: Sequence[torch.Tensor], masks_pred: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Context-encoder outputs and predictions, one per mask generator (inputs: :func:`check_clips`,
        :func:`check_masks`; the checks are skipped while torch.compile traces this)."""
        if not torch.compiler.is_compiling():
            check_clips(self, clips)
            check_masks(self, clips, masks_enc, masks_pred)
        ctx = self.encoder.forward_masks(
            clips, masks_enc, packed=self.pack_context, sparse_embed=self.sparse_patch_embed
        )
        return ctx, self.predictor.forward_masks(ctx, masks_enc, masks_pred, packed=self.pack_context)

    def forward_student(
        self, clips: torch.Tensor, masks_enc: Sequence[torch.Tensor], masks_pred: Sequence[torch.Tensor],
        h: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Everything in a step that sees the mask lengths: context encoder, predictor and the loss
        against the raw target features ``h``. Returns (loss, loss_jepa, loss_reg, preds, context)."""
        ctx, preds = self.forward_context(clips, masks_enc, masks_pred)
        loss_jepa = jepa_loss(preds, h, masks_pred, self.loss_exp)
        if self.reg_coeff:
            loss_reg = variance_reg(preds)
            loss = loss_jepa + self.reg_coeff * loss_reg
        else:
            # Skipped when weighted by 0 (every official config): it would cost a var/sqrt per step.
            loss_reg = loss_jepa.new_zeros(())
            loss = loss_jepa
        return loss, loss_jepa, loss_reg, preds, ctx

    def forward(
        self, clips: torch.Tensor, masks_enc: Sequence[torch.Tensor], masks_pred: Sequence[torch.Tensor]
    ) -> JEPAOutput:
        """The whole objective on one batch. ``clips``: float ``[B, C, T, H, W]`` of the model's
        geometry on its device; ``masks_enc`` / ``masks_pred``: lists of int64 ``[B, K]`` index tensors,
        one per mask generator, from a mask collator. Raises ValueError / TypeError naming what is
        wrong with them (:func:`check_clips`, :func:`check_masks`)."""
        check_clips(self, clips)
        check_masks(self, clips, masks_enc, masks_pred)
        h = self.forward_target(clips)
        student = self.compiled_student or type(self).forward_student
        loss, loss_jepa, loss_reg, preds, ctx = student(self, clips, masks_enc, masks_pred, h)
        return JEPAOutput(loss, loss_jepa, loss_reg, list(preds), list(ctx), h)


def jepa_loss_groups(
    preds: Sequence[Sequence[torch.Tensor]], hs: Sequence[torch.Tensor],
    masks_pred: Sequence[Sequence[torch.Tensor]], loss_exp: float = 1.0,
) -> torch.Tensor:
    """The V2 loss: mean over all (group g, mask config i) pairs, groups first, of
    ``mean(|preds[g][i] − LN(hs[g])[masks_pred[g][i]]|^p)/p`` (``hs[g]``: the raw target-encoder output
    [B_g, N_g, D] of group g). Every group weighs the same whatever its size (official
    ``train.py`` ``loss_fn``). For one group this is :func:`jepa_loss`."""
    if not (len(preds) == len(hs) == len(masks_pred)) or not preds:
        raise ValueError(f"{len(preds)} prediction groups, {len(hs)} target groups, {len(masks_pred)} mask groups "
                         "(one of each per clip-length group, at least one)")  # fmt: skip
    total, n = 0.0, 0
    for g, (zs, h, ms) in enumerate(zip(preds, hs, masks_pred)):
        if len(zs) != len(ms):
            raise ValueError(f"group {g}: {len(zs)} predictions for {len(ms)} target masks")
        for z, m in zip(zs, ms):
            total = total + _mask_loss(z, h, m, loss_exp)
            n += 1
    return total / n


@dataclass
class JEPAGroupsOutput:
    """:meth:`VJEPA.forward_groups`: ``preds[g][i]`` / ``context[g][i]`` per group and mask config,
    ``targets[g]`` the raw target-encoder output of group g."""

    loss: torch.Tensor
    preds: list[list[torch.Tensor]]
    context: list[list[torch.Tensor]]
    targets: list[torch.Tensor]


def check_groups(clips, masks_enc, masks_pred) -> None:
    """A V2 batch's structure: equally long lists over groups of clip tensors and of per-mask-config
    lists of int64 ``[B_g, K]`` masks. Raises ValueError saying what it must be."""
    if not all(isinstance(v, (list, tuple)) for v in (clips, masks_enc, masks_pred)):
        raise ValueError("forward_groups takes lists over clip-length groups: clips [G] of [B_g, C, T_g, H, W] "
                         "tensors, masks_enc / masks_pred [G] lists of int64 [B_g, K] tensors per mask config")
    if not clips or not (len(clips) == len(masks_enc) == len(masks_pred)):
        raise ValueError(f"{len(clips)} clip groups, {len(masks_enc)} context-mask groups, {len(masks_pred)} "
                         "target-mask groups: one of each per clip-length group, at least one")  # fmt: skip
    for g, (c, me, mp) in enumerate(zip(clips, masks_enc, masks_pred)):
        if not isinstance(c, torch.Tensor):
            raise ValueError(f"clips[{g}] must be a tensor [B, C, T, H, W], got {type(c).__name__}")
        if not isinstance(me, (list, tuple)) or not isinstance(mp, (list, tuple)) or not me or len(me) != len(mp):
            raise ValueError(f"group {g}: masks_enc[{g}] and masks_pred[{g}] must be equally long non-empty lists "
                             "of int64 [B, K] tensors, one per mask config")  # fmt: skip
        for name, ms in (("masks_enc", me), ("masks_pred", mp)):
            for i, m in enumerate(ms):
                if not isinstance(m, torch.Tensor) or m.dtype != torch.int64 or m.dim() != 2 or m.shape[0] != c.shape[0]:
                    got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
                    raise ValueError(f"{name}[{g}][{i}] must be int64 [B={c.shape[0]}, K], got {got}")


def is_grouped_batch(clips) -> bool:
    """A V2 multi-length batch (a list of clip groups), not a V1 clip tensor."""
    return isinstance(clips, (list, tuple))


def mark_group_batches_dynamic(clips, masks_enc, masks_pred, targets=None) -> None:
    """With more than one clip-length group, how the batch splits into groups changes from step to
    step (the V2 sampler draws each sample's dataset), so the batch dim of every group's clips, masks
    (and target features) is marked dynamic for torch.compile: one graph for every split instead of
    one per group size. One group (every official V2 config) keeps its batch static. A no-op for
    eager code."""
    if len(clips) < 2:
        return
    for g, c in enumerate(clips):
        torch._dynamo.maybe_mark_dynamic(c, 0)
        for m in (*masks_enc[g], *masks_pred[g]):
            torch._dynamo.maybe_mark_dynamic(m, 0)
        if targets is not None:
            torch._dynamo.maybe_mark_dynamic(targets[g], 0)


def build_vjepa(
    model_name: str = "vit_large",
    *,
    crop_size: int = 224,
    patch_size: int = 16,
    num_frames: int = 16,
    tubelet_size: int = 2,
    uniform_power: bool = True,
    pred_depth: int = 12,
    pred_embed_dim: int = 384,
    pred_num_heads: int | None = None,
    num_mask_tokens: int = 2,
    zero_init_mask_tokens: bool = True,
    loss_exp: float = 1.0,
    reg_coeff: float = 0.0,
    pack_context: bool = False,
    sparse_patch_embed: bool = False,
    use_rope: bool | None = None,
    depth_rescale: bool = False,
    use_silu: bool = False,
    use_pred_silu: bool = False,
    wide_silu: bool = True,
    drop_path_rate: float = 0.0,
    activation_checkpointing: int | bool = 0,
    rope_angle_dtype: str = "activation",
    **encoder_overrides,
) -> VJEPA:
    """Encoder (preset + overrides such as ``embed_dim``/``depth``/``num_heads``), predictor and target,
    initialised as the official ``init_video_model`` leaves them. ``pack_context`` and
    ``sparse_patch_embed``: see :class:`VJEPA`.

    V1 defaults. A V-JEPA 2 model (``app/vjepa/utils.py:init_video_model`` of vjepa2): ``use_rope=True``
    (None: the preset's, False for the plain names; encoder and predictor), ``depth_rescale=True``
    (V2 keeps the constructor's depth rescale), ``pred_num_heads`` (V2 sets the predictor's heads
    itself), ``num_mask_tokens = len(mask configs) · len(dataset_fpcs)``; ``use_silu`` (encoder) and
    ``use_pred_silu`` (predictor) with ``wide_silu`` select SwiGLU; ``drop_path_rate`` applies to the
    encoder only (the official predictor is built without it); ``activation_checkpointing``
    (True or a block count) to both; ``rope_angle_dtype`` see :mod:`vjepa_fast.rope`."""
    if use_rope is not None:
        encoder_overrides["use_rope"] = use_rope
    encoder = build_encoder(
        model_name, img_size=crop_size, patch_size=patch_size, num_frames=num_frames,
        tubelet_size=tubelet_size, uniform_power=uniform_power, depth_rescale=depth_rescale, use_silu=use_silu,
        wide_silu=wide_silu, drop_path_rate=drop_path_rate, activation_checkpointing=activation_checkpointing,
        rope_angle_dtype=rope_angle_dtype, **encoder_overrides,
    )
    if isinstance(activation_checkpointing, int) and not isinstance(activation_checkpointing, bool):
        activation_checkpointing = min(activation_checkpointing, pred_depth)
    predictor = VisionTransformerPredictor(
        img_size=crop_size, patch_size=patch_size, num_frames=num_frames, tubelet_size=tubelet_size,
        embed_dim=encoder.embed_dim, predictor_embed_dim=pred_embed_dim, depth=pred_depth,
        num_heads=pred_num_heads or encoder.num_heads, uniform_power=uniform_power,
        num_mask_tokens=num_mask_tokens, zero_init_mask_tokens=zero_init_mask_tokens,
        depth_rescale=depth_rescale, use_rope=encoder.use_rope, rope_angle_dtype=rope_angle_dtype,
        use_silu=use_pred_silu, wide_silu=wide_silu, activation_checkpointing=activation_checkpointing,
    )
    return VJEPA(
        encoder, predictor, loss_exp=loss_exp, reg_coeff=reg_coeff,
        pack_context=pack_context, sparse_patch_embed=sparse_patch_embed,
    )
