"""Fixed sin-cos position embeddings (V-JEPA 1) and their resizing.

The tables are computed in float64 with numpy and cast once, so they are bit-identical to the
official tables regardless of the default torch dtype.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """[len(pos), dim] table: sines of all frequencies first, then cosines (not interleaved)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_size: int) -> np.ndarray:
    """[grid_size**2, dim] table for images: half the width encodes h, half encodes w."""
    gh, gw = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64), indexing="ij")
    return np.concatenate([sincos_1d(dim // 2, gh), sincos_1d(dim // 2, gw)], axis=1)


def sincos_3d(dim: int, grid_size: int, grid_depth: int, uniform_power: bool = False) -> np.ndarray:
    """[grid_depth * grid_size**2, dim] table in (t, h, w) row-major token order.

    With ``uniform_power`` each axis gets ``2*ceil(dim/6)`` channels and the concatenation is cut to
    ``dim`` (e.g. 1024 -> 1026 -> the last two w-channels dropped), exactly as the official table.
    """
    if uniform_power:
        d_t = d_h = d_w = int(math.ceil(dim / 6) * 2)
    else:
        d_h = d_w = dim // 4
        d_t = dim // 2
    t, h, w = np.meshgrid(
        np.arange(grid_depth, dtype=np.float64),
        np.arange(grid_size, dtype=np.float64),
        np.arange(grid_size, dtype=np.float64),
        indexing="ij",
    )
    table = np.concatenate([sincos_1d(d_t, t), sincos_1d(d_h, h), sincos_1d(d_w, w)], axis=1)
    return table[:, :dim]


def sincos_table(dim: int, grid_size: int, grid_depth: int = 1, uniform_power: bool = False) -> torch.Tensor:
    """[1, N, dim] float32 tensor: 3D when ``grid_depth > 1`` is meant as video, else 2D."""
    if grid_depth > 1:
        table = sincos_3d(dim, grid_size, grid_depth, uniform_power)
    else:
        table = sincos_2d(dim, grid_size)
    return torch.from_numpy(table).float().unsqueeze(0)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int, int], new_grid: tuple[int, int, int]
) -> torch.Tensor:
    """Resize a [1, T*H*W, D] table from ``grid`` (T, H, W) to ``new_grid``.

    Video tables use trilinear interpolation with the scale factors of the two grids, images
    (T == 1) bicubic, as the official encoder does when it sees another input size.
    """
    if tuple(grid) == tuple(new_grid):
        return pos_embed
    t, h, w = grid
    nt, nh, nw = new_grid
    dim = pos_embed.shape[-1]
    if pos_embed.shape[1] != t * h * w:
        raise ValueError(f"pos_embed has {pos_embed.shape[1]} tokens, grid {grid} needs {t * h * w}")
    if t == 1 and nt == 1:
        x = pos_embed.reshape(1, h, w, dim).permute(0, 3, 1, 2)
        x = F.interpolate(x, scale_factor=(nh / h, nw / w), mode="bicubic")
        return x.permute(0, 2, 3, 1).reshape(1, -1, dim)
    x = pos_embed.reshape(1, t, h, w, dim).permute(0, 4, 1, 2, 3)
    x = F.interpolate(x, scale_factor=(nt / t, nh / h, nw / w), mode="trilinear")
    return x.permute(0, 2, 3, 4, 1).reshape(1, -1, dim)
