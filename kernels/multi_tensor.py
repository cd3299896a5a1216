"""Multi-tensor launches: one kernel launch covers a list of tensors through device tables.

Moved from ``kernels/utils.py``; used by ``kernels/ema.py``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from .dispatch import INTERPRET



def multi_tensor_blocks() -> tuple[int, int, int]:
    """(CHUNK, BLOCK, num_warps): each program handles one CHUNK of one tensor, BLOCK at a time."""
    if INTERPRET:
        return 1 << 16, 1 << 16, 4
    return 1 << 14, 1024, 4


class MultiTensorTables:
    """Device tables describing a list of tensor tuples for one multi-tensor launch.

    ``addrs[r]`` holds the raw addresses of role r (int64, one per tensor), ``numel`` the sizes,
    ``group`` a per-tensor group id, and ``chunk_tensor`` / ``chunk_start`` map every program to its
    (tensor, first element). Tables are cached by (addresses, sizes, groups), so a training loop whose
    tensors keep their storage builds them once; they are uploaded through pinned memory with
    ``non_blocking=True``, so even a cache miss does not block the host on the GPU.
    Note for CUDA graphs: run one step before capture so the tables exist.
    """

    _cache: "OrderedDict[tuple, MultiTensorTables]" = OrderedDict()
    _CACHE_SIZE = 16

    def __init__(self, roles: list[list[torch.Tensor]], group_ids: list[int], chunk: int):
        device = roles[0][0].device
        numels = [t.numel() for t in roles[0]]
        chunk_tensor, chunk_start = [], []
        for i, n in enumerate(numels):
            for start in range(0, n, chunk):
                chunk_tensor.append(i)
                chunk_start.append(start)
        self.n_programs = len(chunk_tensor)
        rows = [[t.data_ptr() for t in role] for role in roles]
        host = torch.tensor(rows + [numels, list(group_ids)], dtype=torch.int64)
        host_chunks = torch.tensor([chunk_tensor, chunk_start], dtype=torch.int64)
        self._tables = _upload(host, device)
        self._chunks = _upload(host_chunks, device)
        self.addrs = [self._tables[r] for r in range(len(roles))]
        self.numel = self._tables[len(roles)]
        self.group = self._tables[len(roles) + 1]
        self.chunk_tensor = self._chunks[0]
        self.chunk_start = self._chunks[1]

    @classmethod
    def get(cls, roles: list[list[torch.Tensor]], group_ids: list[int], chunk: int) -> "MultiTensorTables":
        key = (
            roles[0][0].device,
            chunk,
            tuple(tuple(t.data_ptr() for t in role) for role in roles),
            tuple(t.numel() for t in roles[0]),
            tuple(group_ids),
        )
        hit = cls._cache.get(key)
        if hit is not None:
            cls._cache.move_to_end(key)
            return hit
        tables = cls(roles, group_ids, chunk)
        cls._cache[key] = tables
        while len(cls._cache) > cls._CACHE_SIZE:
            cls._cache.popitem(last=False)
        return tables


def _upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def upload_scalars(values: list[list[float]], device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """Small host table -> device without a host-device sync (pinned, non-blocking)."""
    return _upload(torch.tensor(values, dtype=dtype), device)
