"""The V-JEPA predictor: a narrow transformer that fills target positions with mask tokens and
predicts the target encoder's features there.

V1 (``use_rope=False``; facebookresearch/jepa ``src/models/predictor.py``): a fixed sin-cos table is
added to the embedded context and to the mask tokens; [context, targets] run through the blocks in
that order.

V2 (``use_rope=True``; facebookresearch/vjepa2 ``src/models/predictor.py``): no position table; the
[context, targets] sequence is argsorted by token id before the blocks (each row's positions sorted
with it), RoPE rotates q/k by those ids split with the grid the predictor was *built* with
(``img_size // patch_size`` square; the official predictor calls its blocks without the input's
grid), and after the final norm the sequence is unsorted and the target rows projected. Attention
is permutation-equivariant and RoPE is per token, so the sort changes nothing but the order of
float sums; it is kept so that the numbers follow the official ones op for op.

Which mask token: the official V1 wrapper passes the mask-config index; V2's
``PredictorMultiSeqWrapper`` passes the index of the clip-length *group* (every mask config of group
g uses ``mask_tokens[g % num_mask_tokens]``); Hugging Face's port always uses index 1. Callers pass
``mask_index`` accordingly (:meth:`VisionTransformerPredictor.forward_masks` ``mask_indices``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .kernels import assemble_sorted_predictor_input
from .packed import Packing
from .pos_embed import sincos_table
from .rope import RotaryPositions, angle_dtype_of, rope_dim
from .tokens import assemble_predictor_input
from .vision_transformer import (
    Block, check_grid, check_heads, checkpoint_count, drop_path_rates, init_v1_, rescale_blocks_, run_block,
)


class VisionTransformerPredictor(nn.Module):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 768,
        predictor_embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        uniform_power: bool = False,
        num_mask_tokens: int = 2,
        zero_init_mask_tokens: bool = True,
        depth_rescale: bool = False,
        use_rope: bool = False,
        rope_angle_dtype: str = "activation",
        use_silu: bool = False,
        wide_silu: bool = True,
        drop_path_rate: float = 0.0,
        activation_checkpointing: int | bool = 0,
    ):
        super().__init__()
        check_heads(predictor_embed_dim, num_heads, "predictor_embed_dim")
        if num_mask_tokens < 1:
            raise ValueError(f"num_mask_tokens must be >= 1, got {num_mask_tokens}")
        if use_rope and rope_dim(predictor_embed_dim // num_heads) == 0:
            raise ValueError(f"use_rope needs head_dim >= 6, got predictor_embed_dim {predictor_embed_dim} / "
                             f"num_heads {num_heads}")  # fmt: skip
        grid_size, grid_depth = check_grid(img_size, patch_size, num_frames, tubelet_size)
        self.grid_size = grid_size
        self.num_patches = grid_depth * grid_size**2
        self.embed_dim, self.predictor_embed_dim = embed_dim, predictor_embed_dim
        self.num_mask_tokens = num_mask_tokens
        self.use_rope = use_rope
        self.rope_angle_dtype = angle_dtype_of(rope_angle_dtype)
        self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim)
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1, predictor_embed_dim)) for _ in range(num_mask_tokens)
        )
        if use_rope:
            self.predictor_pos_embed = None  # V2 with RoPE has none (no key in its state dict)
        else:
            self.predictor_pos_embed = nn.Parameter(
                sincos_table(predictor_embed_dim, grid_size, grid_depth if num_frames > 1 else 1, uniform_power),
                requires_grad=False,
            )
        self.predictor_blocks = nn.ModuleList(
            Block(predictor_embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps, use_silu=use_silu,
                  wide_silu=wide_silu, drop_path=dpr)
            for dpr in drop_path_rates(drop_path_rate, depth)
        )
        self.predictor_norm = nn.LayerNorm(predictor_embed_dim, eps=norm_eps)
        self.predictor_proj = nn.Linear(predictor_embed_dim, embed_dim)
        self.activation_checkpointing = checkpoint_count(activation_checkpointing, depth)
        init_v1_(self)
        if depth_rescale:
            rescale_blocks_(self.predictor_blocks)
        if not zero_init_mask_tokens:
            for tok in self.mask_tokens:
                nn.init.trunc_normal_(tok, std=0.02, a=-2.0, b=2.0)

    def mask_token(self, mask_index: int) -> torch.Tensor:
        """``mask_tokens[mask_index % num_mask_tokens]`` [1, 1, Dp], as the official predictor picks it."""
        return self.mask_tokens[mask_index % self.num_mask_tokens]

    def assemble(self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, mask_index: int) -> torch.Tensor:
        """V1: [embedded context + its positions, mask token + target positions] as [B, Kc+Kt, Dp]."""
        token = self.mask_token(mask_index)
        return assemble_predictor_input(self.predictor_embed(ctx), ctx_idx, tgt_idx, self.predictor_pos_embed, token)

    def assemble_sorted(
        self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, mask_index: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """V2 (RoPE, no position table): [embedded context, mask tokens] argsorted by token id per row.

        Returns the sorted tokens [B, L, Dp], their ids [B, L] and the inverse permutation [B, L]
        (row j of [context, targets] is row ``inverse[:, j]`` of the sorted sequence). The tokens
        are ``cat([z, mask_token.expand(B, Kt, -1)], 1)`` gathered by the argsort, written in one
        pass (``kernels.assemble_sorted_predictor_input``); their dtype is the promotion ``cat``
        gives, as officially: under bf16 autocast the bf16 context and the fp32 mask token make an
        fp32 sequence (the residual stream stays fp32 there).
        """
        ids = torch.cat([ctx_idx, tgt_idx], dim=1)
        order = torch.argsort(ids, dim=1)
        inverse = torch.argsort(order, dim=1)
        z = self.predictor_embed(ctx)
        x = assemble_sorted_predictor_input(z, order, self.mask_token(mask_index), inverse)
        return x, ids.gather(1, order), inverse

    def rope_for(self, ids: torch.Tensor) -> RotaryPositions:
        # The predictor's grid is the one it was built with, whatever the input clip's size.
        return RotaryPositions(ids, (self.grid_size, self.grid_size), self.rope_angle_dtype)

    def run_blocks(self, x: torch.Tensor, packing: Packing | None = None, rope: RotaryPositions | None = None):
        for i, blk in enumerate(self.predictor_blocks):
            x = run_block(blk, x, packing, rope, i < self.activation_checkpointing)
        return self.predictor_norm(x)

    def forward(self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, mask_index: int = 0) -> torch.Tensor:
        """ctx [B, Kc, D] (encoder output for ``ctx_idx``) → predictions [B, Kt, D] at ``tgt_idx``
        (rows in the order of ``tgt_idx``), using mask token ``mask_index % num_mask_tokens``
        (V1: the mask generator's index; V2 pretraining: the clip-length group's; Hugging Face: 1)."""
        self._check(ctx, ctx_idx, tgt_idx)
        Kc = ctx.shape[1]
        if not self.use_rope:
            x = self.run_blocks(self.assemble(ctx, ctx_idx, tgt_idx, mask_index))
            return self.predictor_proj(x[:, Kc:])
        x, ids, inverse = self.assemble_sorted(ctx, ctx_idx, tgt_idx, mask_index)
        x = self.run_blocks(x, rope=self.rope_for(ids))
        # Unsort and keep the target rows in one gather: the rows of the sorted sequence that hold
        # the targets, in tgt_idx order.
        rows = inverse[:, Kc:]
        return self.predictor_proj(x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1])))

    def _check(self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor) -> None:
        if ctx.dim() != 3 or ctx.shape[-1] != self.embed_dim:
            raise ValueError(f"predictor expects context [B, K, {self.embed_dim}], got {tuple(ctx.shape)}")
        if ctx_idx.shape != ctx.shape[:2]:
            raise ValueError(f"context indices {tuple(ctx_idx.shape)} do not match context {tuple(ctx.shape[:2])}")
        if tgt_idx.dim() != 2 or tgt_idx.shape[0] != ctx.shape[0]:
            raise ValueError(f"target indices must be [B={ctx.shape[0]}, Kt], got {tuple(tgt_idx.shape)}")

    def forward_masks(
        self, ctxs: Sequence[torch.Tensor], masks_enc: Sequence[torch.Tensor], masks_pred: Sequence[torch.Tensor],
        *, packed: bool = False, mask_indices: Sequence[int] | None = None,
    ) -> list[torch.Tensor]:
        """One prediction per mask config. ``mask_indices`` (default ``0, 1, …``: the official V1
        ``PredictorMultiMaskWrapper``, mask config i uses mask token i) picks each config's mask
        token; V2 pretraining passes the group index for every config of a group.

        ``packed``: the [context, targets] sequences of all masks run as one sequence through the
        blocks, attention kept within each mask's sequence (:mod:`vjepa_fast.packed`): the same
        numbers up to float rounding, one pass instead of one per mask (V2: each mask's sequence is
        sorted by position first).
        """
        if not (len(ctxs) == len(masks_enc) == len(masks_pred)):
            raise ValueError(
                f"{len(ctxs)} contexts, {len(masks_enc)} context masks, {len(masks_pred)} target masks"
            )
        indices = list(range(len(ctxs))) if mask_indices is None else list(mask_indices)
        if len(indices) != len(ctxs):
            raise ValueError(f"{len(indices)} mask indices for {len(ctxs)} mask configs")
        if not packed:
            return [self(z, mc, mt, i) for i, z, mc, mt in zip(indices, ctxs, masks_enc, masks_pred)]
        for z, mc, mt in zip(ctxs, masks_enc, masks_pred):
            self._check(z, mc, mt)
        rope, inverses = None, []
        if self.use_rope:
            seqs, sorted_ids = [], []
            for i, z, mc, mt in zip(indices, ctxs, masks_enc, masks_pred):
                sx, ids, inverse = self.assemble_sorted(z, mc, mt, i)
                seqs.append(sx)
                sorted_ids.append(ids)
                inverses.append(inverse)
            rope = self.rope_for(torch.cat(sorted_ids, dim=1))
        else:
            seqs = [self.assemble(z, mc, mt, i) for i, z, mc, mt in zip(indices, ctxs, masks_enc, masks_pred)]
        packing = Packing([s.shape[1] for s in seqs], device=seqs[0].device)
        x = self.run_blocks(torch.cat(seqs, dim=1), packing, rope)
        preds, start = [], 0
        for j, (z, mt) in enumerate(zip(ctxs, masks_pred)):
            # The projection runs on each mask's target rows only, as in the per-mask path, and
            # gives each prediction its own contiguous tensor for the loss kernel.
            kc, kt = z.shape[1], mt.shape[1]
            if self.use_rope:
                rows = start + inverses[j][:, kc:]
                tgt = x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            else:
                tgt = x[:, start + kc:start + kc + kt]
            preds.append(self.predictor_proj(tgt))
            start = start + kc + kt
        return preds
