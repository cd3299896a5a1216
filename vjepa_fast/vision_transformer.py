"""The V-JEPA Vision Transformer encoder (video and image), with official V1 and V2 semantics.

V1 (facebookresearch/jepa): a fixed 3D sin-cos position table added to the patch tokens. V2
(facebookresearch/vjepa2, ``use_rope=True``): no position table; 3D RoPE on q and k in every block
(:mod:`vjepa_fast.rope`), with token positions split by the *input's* grid
(``handle_nonsquare_inputs``, the official default), so any resolution and frame count runs without
interpolation. V2 also adds SwiGLU MLPs (``use_silu``/``wide_silu``), stochastic depth
(``drop_path_rate``), activation checkpointing and keeps the depth rescale of the init
(``depth_rescale=True``; V1's ``init_video_model`` undoes it).

Parameter names match the official modules, so official state dicts load after their
``module.``/``backbone.`` prefixes are stripped (see :mod:`vjepa_fast.checkpoint` and, for V2 and
Hugging Face files, :mod:`vjepa_fast.checkpoint_v2` / :mod:`vjepa_fast.hf_vjepa2`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.utils.checkpoint import checkpoint

from . import kernels
from .attention import attention
from .packed import Packing, document_attention
from .pos_embed import interpolate_pos_embed, sincos_table
from .rope import RotaryPositions, angle_dtype_of, rope_dim, rope_tables
from .tokens import gather_tokens

# Width, depth, heads and MLP ratio of the official factories. vit_gigantic's official factory
# misspells its MLP ratio, so the default of 4.0 is what it really builds.
VIT_PRESETS: dict[str, dict] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0),
    "vit_giant": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11),
    "vit_gigantic": dict(embed_dim=1664, depth=48, num_heads=16, mlp_ratio=4.0),
    # V-JEPA 2 (vjepa2 src/models/vision_transformer.py). vit_giant_xformers is the released
    # "ViT-g" (22 heads of 64); vit_gigantic_xformers repeats the MLP-ratio misspelling (4.0 built).
    # The *_rope names set use_rope; the V2 configs name the plain ones and set use_rope themselves.
    "vit_giant_xformers": dict(embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11),
    "vit_gigantic_xformers": dict(embed_dim=1664, depth=48, num_heads=26, mlp_ratio=4.0),
    "vit_large_rope": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, use_rope=True),
    "vit_huge_rope": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0, use_rope=True),
    "vit_giant_rope": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11, use_rope=True),
    "vit_giant_xformers_rope": dict(embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11, use_rope=True),
    "vit_synthetic": dict(embed_dim=1, depth=1, num_heads=1, mlp_ratio=4.0),  # official perf-test model
}


def check_heads(dim: int, num_heads: int, what: str = "embed_dim") -> None:
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide {what}={dim}")


def check_grid(img_size: int, patch_size: int, num_frames: int, tubelet_size: int) -> tuple[int, int]:
    """Validate the input geometry; returns (grid_size, grid_depth)."""
    if patch_size < 1 or img_size % patch_size:
        raise ValueError(f"crop/img size {img_size} is not divisible by patch_size {patch_size}")
    if num_frames > 1 and (tubelet_size < 1 or num_frames % tubelet_size):
        raise ValueError(f"num_frames {num_frames} is not divisible by tubelet_size {tubelet_size}")
    return img_size // patch_size, max(1, num_frames // tubelet_size) if num_frames > 1 else 1


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def swiglu_hidden(hidden: int, wide_silu: bool) -> int:
    """Hidden width of the V2 SwiGLU MLP: ``hidden`` itself, or with ``wide_silu`` 2/3 of it
    rounded up to a multiple of 8 (ViT-L: 4096 → 2736)."""
    if not wide_silu:
        return hidden
    return (int(2 * hidden / 3) + 7) // 8 * 8


class SwiGLU(nn.Module):
    """V2's ``use_silu`` MLP: ``fc3(silu(fc1(x)) · fc2(x))``. Names as the official ``SwiGLUFFN``;
    note that the V2 depth rescale divides ``fc2`` (the gate's second input), as there."""

    def __init__(self, dim: int, hidden: int, wide_silu: bool = True):
        super().__init__()
        width = swiglu_hidden(hidden, wide_silu)
        self.fc1 = nn.Linear(dim, width)
        self.fc2 = nn.Linear(dim, width)
        self.fc3 = nn.Linear(width, dim)

    def forward(self, x):
        return self.fc3(F.silu(self.fc1(x)) * self.fc2(x))


class DropPath(nn.Module):
    """Stochastic depth per sample (V2 ``drop_path_rate``): in training, each sample's branch is
    zeroed with probability p and the kept ones scaled by 1/(1 − p); identity in eval or at p = 0."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _rope_tables(rope: RotaryPositions, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos/sin tables for q/k (``RotaryPositions.tables``: computed once per forward pass). While
    torch.compile traces, they are built afresh in every block instead (the traced graph's CSE
    merges the copies): filling the cache inside an activation-checkpointed block is a side effect
    that dynamo refuses to trace."""
    if torch.compiler.is_compiling():
        return rope_tables(rope.ids, rope.grid_hw, q.shape[-1], rope.angle_dtype or q.dtype)
    return rope.tables(q.shape[-1], q.dtype)


class Attention(nn.Module):
    """Self-attention over [B, L, C]. ``rope`` (V2) rotates q and k by each token's position
    (:class:`vjepa_fast.rope.RotaryPositions`) before the attention call; the backend choice stays
    with :func:`vjepa_fast.attention.attention`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, packing: Packing | None = None, rope: RotaryPositions | None = None):
        B, L, C = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            # RotaryPositions.rotate's math, routed to the fused kernel (VJEPA_FAST_KERNELS).
            q, k = kernels.rope_rotate_qk(q, k, *_rope_tables(rope, q))
        if packing is None:
            x = attention(q, k, v)
        else:
            x = document_attention(q, k, v, packing)
        return self.proj(x.transpose(1, 2).reshape(B, L, C))


class Block(nn.Module):
    """Pre-norm transformer block. The official block takes a ``mask`` argument that V1 ignores
    and V2 uses only for RoPE positions; here the positions come as ``rope`` and V1 blocks get none.
    ``packing`` is this package's own: the tokens of several masks packed into one sequence
    (:mod:`vjepa_fast.packed`), each attending only within its mask, which is the unmasked attention
    of each mask on its own. ``use_silu`` selects V2's SwiGLU MLP, ``drop_path`` stochastic depth
    (one :class:`DropPath` for both branches, independent draws, as official)."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-6,
        *, use_silu: bool = False, wide_silu: bool = True, drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = SwiGLU(dim, hidden, wide_silu) if use_silu else MLP(dim, hidden)

    def forward(self, x, packing: Packing | None = None, rope: RotaryPositions | None = None):
        x = x + self.drop_path(self.attn(self.norm1(x), packing, rope))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def run_block(blk: Block, x: torch.Tensor, packing: Packing | None, rope: RotaryPositions | None,
              checkpointed: bool) -> torch.Tensor:
    """One block, under non-reentrant activation checkpointing when ``checkpointed`` (V2's
    ``use_activation_checkpointing``: the block's activations are recomputed in the backward)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(blk, x, packing, rope, use_reentrant=False)
    return blk(x, packing, rope)


def checkpoint_count(value: int | bool, depth: int, what: str = "activation_checkpointing") -> int:
    """Blocks to checkpoint (the first ones): an int in [0, depth], or a bool (True = all, as the
    official ``use_activation_checkpointing``)."""
    if isinstance(value, bool):
        return depth if value else 0
    if not isinstance(value, int) or not 0 <= value <= depth:
        raise ValueError(f"{what} must be a bool or an int in [0, {depth}], got {value!r}")
    return value


class PatchEmbed(nn.Module):
    """Tubelet (Conv3d) or patch (Conv2d) embedding, tokens in (t, h, w) row-major order."""

    def __init__(self, patch_size: int, tubelet_size: int, in_chans: int, embed_dim: int, video: bool):
        super().__init__()
        if video:
            k = (tubelet_size, patch_size, patch_size)
            self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=k, stride=k)
        else:
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)

    def forward_tokens(self, x: torch.Tensor, idx: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``forward(x)[b, idx[b]]`` without embedding the other tokens: the raw tubelets of the
        kept tokens are gathered and the (non-overlapping, stride = kernel) convolution applied to
        them as one matmul with its weight flattened in the same (c, t, h, w) order."""
        gt, gh, gw = grid
        w = self.proj.weight
        B, C = x.shape[:2]
        b = torch.arange(B, device=idx.device).unsqueeze(1)
        wi = idx % gw
        hi = (idx // gw) % gh
        # Advanced indices split by slices: numpy rules put the indexed dims first, giving
        # [B, K, C, (t,) p, p] straight from the strided clip, without a patchified copy of it.
        if isinstance(self.proj, nn.Conv3d):
            t, p = w.shape[2], w.shape[3]
            ti = idx // (gh * gw)
            patches = x.reshape(B, C, gt, t, gh, p, gw, p)[b, :, ti, :, hi, :, wi, :]
        else:
            p = w.shape[2]
            patches = x.reshape(B, C, gh, p, gw, p)[b, :, hi, :, wi, :]
        return F.linear(patches.flatten(2), w.flatten(1), self.proj.bias)


def init_v1_(module: nn.Module, std: float = 0.02) -> None:
    """Official V1 initialisation as it ends up after ``init_video_model``: every Linear and conv
    weight ~ N(0, std) truncated at ±2 (absolute), biases 0, LayerNorm 1/0, no depth rescale."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def rescale_blocks_(blocks: Sequence[Block]) -> None:
    """Depth rescale of attn.proj / mlp.fc2 by sqrt(2*layer) (V2 keeps it; V1 undoes it)."""
    with torch.no_grad():
        for i, blk in enumerate(blocks, 1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * i))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * i))


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Official stochastic-depth rule: block i gets ``linspace(0, rate, depth)[i]``."""
    return torch.linspace(0, rate, depth, device="cpu").tolist()  # cpu: also under a meta device context


class VisionTransformer(nn.Module):
    """V-JEPA encoder. ``num_frames > 1`` builds the video model (3D tubelets), ``num_frames == 1``
    the image model (2D patches).

    Positions: V1 (``use_rope=False``) adds a fixed sin-cos table (3D or 2D), interpolated to other
    input sizes; V2 (``use_rope=True``) has no table (no ``pos_embed`` parameter, as the official
    module) and rotates q/k in every block (:mod:`vjepa_fast.rope`). RoPE splits token ids with the
    input's grid (``handle_nonsquare_inputs=True``, official default; any T, H, W) or with the
    built ``img_size // patch_size`` square grid (False; what Hugging Face's port does at every size).
    ``rope_angle_dtype``: ``"activation"`` (official: the RoPE angles in q/k's dtype, bf16 under
    bf16 autocast) or ``"float32"``.

    V2 options: ``use_silu``/``wide_silu`` (SwiGLU MLP), ``drop_path_rate`` (linear stochastic-depth
    rule), ``activation_checkpointing`` (number of leading blocks to checkpoint; True = all),
    ``depth_rescale`` (V2 init: attn.proj and mlp.fc2 of block i divided by sqrt(2i)).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        uniform_power: bool = False,
        depth_rescale: bool = False,
        out_layers: Sequence[int] | None = None,
        use_rope: bool = False,
        handle_nonsquare_inputs: bool = True,
        rope_angle_dtype: str = "activation",
        use_silu: bool = False,
        wide_silu: bool = True,
        drop_path_rate: float = 0.0,
        activation_checkpointing: int | bool = 0,
    ):
        super().__init__()
        check_heads(embed_dim, num_heads)
        self.grid_size, self.grid_depth = check_grid(img_size, patch_size, num_frames, tubelet_size)
        self.img_size, self.patch_size = img_size, patch_size
        self.num_frames, self.tubelet_size = num_frames, tubelet_size
        self.is_video = num_frames > 1
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.out_layers = list(out_layers) if out_layers is not None else None
        self.num_patches = self.grid_depth * self.grid_size**2
        self.use_rope = use_rope
        self.handle_nonsquare_inputs = handle_nonsquare_inputs
        self.rope_angle_dtype = angle_dtype_of(rope_angle_dtype)
        if use_rope:
            if rope_dim(embed_dim // num_heads) == 0:
                raise ValueError(f"use_rope needs head_dim >= 6, got embed_dim {embed_dim} / num_heads {num_heads}")
            self.pos_embed = None
        else:
            # Registered first so parameter order (and the optimizer state layout) follows the
            # official module.
            self.pos_embed = nn.Parameter(
                sincos_table(embed_dim, self.grid_size, self.grid_depth if self.is_video else 1, uniform_power),
                requires_grad=False,
            )
        self.patch_embed = PatchEmbed(patch_size, tubelet_size, in_chans, embed_dim, self.is_video)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps, use_silu=use_silu, wide_silu=wide_silu,
                  drop_path=dpr)
            for dpr in drop_path_rates(drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.activation_checkpointing = checkpoint_count(activation_checkpointing, depth)
        init_v1_(self)
        if depth_rescale:
            rescale_blocks_(self.blocks)

    # -- input handling ---------------------------------------------------------------------
    def _grid_of(self, x: torch.Tensor) -> tuple[int, int, int]:
        if self.is_video:
            if x.dim() != 5 or x.shape[1] != self.patch_embed.proj.in_channels:
                raise ValueError(f"video encoder expects [B, C={self.patch_embed.proj.in_channels}, T, H, W] "
                                 f"(C = in_chans), got {tuple(x.shape)}")
            _, _, T, H, W = x.shape
            if T % self.tubelet_size or H % self.patch_size or W % self.patch_size:
                raise ValueError(
                    f"input {tuple(x.shape)}: frames must be divisible by tubelet_size {self.tubelet_size} "
                    f"and H, W by patch_size {self.patch_size}"
                )
            return T // self.tubelet_size, H // self.patch_size, W // self.patch_size
        if x.dim() != 4 or x.shape[1] != self.patch_embed.proj.in_channels:
            raise ValueError(f"image encoder expects [B, C={self.patch_embed.proj.in_channels}, H, W] (C = in_chans), "
                             f"got {tuple(x.shape)}")
        _, _, H, W = x.shape
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"input {tuple(x.shape)}: H, W must be divisible by patch_size {self.patch_size}")
        return 1, H // self.patch_size, W // self.patch_size

    def pos_embed_for(self, grid: tuple[int, int, int]) -> torch.Tensor | None:
        """The position table [1, N, D] for an input grid (interpolated when it differs from the
        built one); None for a RoPE encoder, which has no table."""
        if self.pos_embed is None:
            return None
        own = (self.grid_depth if self.is_video else 1, self.grid_size, self.grid_size)
        return interpolate_pos_embed(self.pos_embed, own, grid)

    def rope_for(self, ids: torch.Tensor | None, grid: tuple[int, int, int], device=None) -> RotaryPositions | None:
        """RoPE positions of the tokens ``ids`` [B, K] (None: all tokens of the grid, in order),
        split with the input's (Hp, Wp) or, without ``handle_nonsquare_inputs``, the built square
        grid. None for a V1 encoder."""
        if not self.use_rope:
            return None
        if ids is None:
            ids = torch.arange(grid[0] * grid[1] * grid[2], device=device)
        hw = grid[1:] if self.handle_nonsquare_inputs else (self.grid_size, self.grid_size)
        return RotaryPositions(ids, hw, self.rope_angle_dtype)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch tokens [B, N, D] *without* positions, and the position table [1, N, D] for this
        input size (None with RoPE). Positions are added by the masked gather (only for kept
        tokens) or by :meth:`forward` for the full clip: the same sums as the official
        add-then-gather."""
        pos = self.pos_embed_for(self._grid_of(x))  # validates the shape first
        return self.patch_embed(x), pos

    def embed_tokens(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The kept tokens ``idx`` [B, K] with their positions, [B, K, D]: what ``gather_tokens(*embed(x)
        ...)`` gives, with the patch embedding applied to those K tubelets only."""
        grid = self._grid_of(x)
        pos = self.pos_embed_for(grid)
        if idx.dim() != 2 or idx.shape[0] != x.shape[0]:
            raise ValueError(f"mask indices must be [B, K] with B={x.shape[0]}, got {tuple(idx.shape)}")
        tokens = self.patch_embed.forward_tokens(x, idx, grid)
        if pos is None:
            return tokens
        # As the masked gather does it: the add in the wider dtype, rounded once to the tokens'
        # (bf16 under autocast, where pos stays fp32).
        return (tokens + pos.detach()[0][idx]).to(tokens.dtype)

    def run_blocks(self, x: torch.Tensor, packing: Packing | None = None, rope: RotaryPositions | None = None):
        outs = []
        for i, blk in enumerate(self.blocks):
            x = run_block(blk, x, packing, rope, i < self.activation_checkpointing)
            if self.out_layers is not None and i in self.out_layers:
                outs.append(self.norm(x))
        return outs if self.out_layers is not None else self.norm(x)

    # -- forward passes ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, masks: torch.Tensor | Sequence[torch.Tensor] | None = None):
        """Official backbone semantics: with a list of masks (equal lengths) the kept tokens of each
        are stacked along the batch dimension and run through the blocks together."""
        grid = self._grid_of(x)
        tokens, pos = self.embed(x)
        if masks is None:
            if pos is None:
                return self.run_blocks(tokens, rope=self.rope_for(None, grid, x.device))
            return self.run_blocks(tokens + pos)
        if isinstance(masks, torch.Tensor):
            masks = [masks]
        gathered = torch.cat([gather_tokens(tokens, m, pos) for m in masks], dim=0)
        rope = self.rope_for(torch.cat(list(masks), dim=0), grid) if self.use_rope else None
        return self.run_blocks(gathered, rope=rope)

    def forward_masks(
        self, x: torch.Tensor, masks: Sequence[torch.Tensor], *, packed: bool = False,
        sparse_embed: bool = False,
    ) -> list[torch.Tensor]:
        """What the official ``MultiMaskWrapper`` / ``MultiSeqWrapper`` return for one clip batch (one
        encoder pass per mask), with the patch embedding computed once instead of once per mask.

        ``packed``: the masks' tokens run as one sequence [B, K1 + K2 + ..., D] through the blocks,
        attention kept within each mask (:mod:`vjepa_fast.packed`); the outputs are views of it.
        ``sparse_embed``: embed only the kept tubelets (:meth:`PatchEmbed.forward_tokens`) instead of
        the whole clip. Both compute the same numbers up to float rounding.
        """
        grid = self._grid_of(x)
        if not packed:
            if sparse_embed:
                return [self.run_blocks(self.embed_tokens(x, m), rope=self.rope_for(m, grid)) for m in masks]
            tokens, pos = self.embed(x)
            return [self.run_blocks(gather_tokens(tokens, m, pos), rope=self.rope_for(m, grid)) for m in masks]
        if self.out_layers is not None:
            raise ValueError("packed=True returns one output per mask; it does not support out_layers")
        if sparse_embed:
            tokens = self.embed_tokens(x, torch.cat(list(masks), dim=1))
        else:
            # One gather per mask, not one over the concatenated indices: masks share tokens, and
            # the Triton gather's backward stores (does not add) the gradient of repeated indices.
            full, pos = self.embed(x)
            tokens = torch.cat([gather_tokens(full, m, pos) for m in masks], dim=1)
        packing = Packing([m.shape[1] for m in masks], device=x.device)
        rope = self.rope_for(torch.cat(list(masks), dim=1), grid) if self.use_rope else None
        return packing.split(self.run_blocks(tokens, packing, rope))


def build_encoder(model_name: str, **kwargs) -> VisionTransformer:
    """An encoder from a preset name (``vit_tiny`` … ``vit_gigantic``, V2's ``vit_giant_xformers``,
    ``*_rope``, ``vit_synthetic``); kwargs override the preset."""
    if model_name not in VIT_PRESETS:
        raise ValueError(f"unknown model_name {model_name!r}; known: {', '.join(VIT_PRESETS)}")
    return VisionTransformer(**{**VIT_PRESETS[model_name], **kwargs})
