"""Multi-tensor launches: one kernel launch covers a list of tensors through small index tables.

A multi-tensor kernel (``kernels/ema.py``) runs one program per *chunk*: a run of at most ``CHUNK``
consecutive elements of one tensor. Its tables, built on the host from the tensors' metadata only:

* ``addrs[r][i]``: base address of tensor ``i`` in role ``r`` (int64; the kernel casts it to a typed
  pointer);
* ``group[i]``: a per-tensor id (AdamW's param group), int32;
* ``chunk_tensor[p]`` / ``chunk_start[p]`` / ``chunk_count[p]``: program ``p``'s tensor, first element
  and element count (int32; ``chunk_start`` is int64 only when a tensor has >= 2**31 - CHUNK elements).

Vector accesses. A table address tells the compiler nothing about alignment, so the kernels take an
``ALIGNED`` constexpr and, when set, promise the compiler 16-byte aligned chunk bases and element
counts that are multiples of ``16 / element size`` of the widest role: its loads and stores then
compile to 128-bit ``ld/st.global.v4.b32`` (all roles share one register layout, so a bf16 role
beside fp32 ones moves 8 bytes per access instead of paying a shared-memory layout conversion).
:func:`vector_ok` is the host's check of that promise (PyTorch's allocator aligns every allocation
to at least 512 bytes, ``FlatParams`` aligns each parameter, chunk starts are multiples of
``CHUNK``); tensors that fail it (odd sizes, views at odd offsets) go to a separate
``ALIGNED=False`` launch with scalar accesses.

Index math is int32 (program ids, tensor ids, offsets within a chunk < CHUNK); the one 64-bit
operation per role and program is adding the chunk start to the base pointer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .plan import DeviceSpec

#: Width of the vector accesses the kernels aim for (``ld.global.v4.b32``), in bytes.
ALIGN_BYTES = 16
# Interpreter: every program costs milliseconds of Python, so few, large programs.
_INTERP_CHUNK = 1 << 16
# GPU: the largest chunk, and the number of waves of resident programs a launch should give at
# least (the last, partial wave then costs little), assuming the most programs an SM can hold.
_GPU_MAX_CHUNK = 1 << 14
_GPU_MIN_WAVES = 8
_SM_MAX_WARPS = 64
_INT32_MAX = 2**31 - 1


def vector_elems(elem_sizes: Sequence[int]) -> int:
    """Elements per thread and access: one 16-byte vector of the widest role (fp32: 4, fp64: 2;
    only bf16 / fp16 roles: 8)."""
    return ALIGN_BYTES // max(elem_sizes)


def n_chunks(numels: Sequence[int], chunk: int) -> int:
    """Programs of a launch over tensors of these sizes, one per chunk of at most ``chunk`` elements."""
    return sum(-(-n // chunk) for n in numels)


def multi_tensor_blocks(
    device: DeviceSpec, elem_sizes: Sequence[int], numels: Sequence[int]
) -> tuple[int, int, int]:
    """(CHUNK, BLOCK, num_warps) for one multi-tensor launch over tensors of sizes ``numels`` whose
    roles have element sizes ``elem_sizes`` (bytes).

    GPU: 4 warps; BLOCK gives every thread one 16-byte access of the widest role per iteration
    (any fp32 role: 512, only bf16 / fp16 roles: 1024); CHUNK is the largest power of two in
    [BLOCK, 16384] that still gives ``_GPU_MIN_WAVES`` waves of programs at full residency (16
    programs of 4 warps per SM), so a small launch (the predictor's 22M parameters) still spreads
    over every SM and a large one (ViT-L's 304M) keeps per-program overhead low. A function of the
    sizes only: the same every step. Interpreter: one 64k-element block per program.
    """
    if device.interpret:
        return _INTERP_CHUNK, _INTERP_CHUNK, 4
    num_warps = 4
    block = num_warps * 32 * vector_elems(elem_sizes)
    want = _GPU_MIN_WAVES * device.sm_count * (_SM_MAX_WARPS // num_warps)
    chunk = _GPU_MAX_CHUNK
    while chunk > block and n_chunks(numels, chunk) < want:
        chunk //= 2
    return max(chunk, block), block, num_warps


def _contiguous(t) -> bool:
    if isinstance(t, torch.Tensor):
        return t.is_contiguous()
    expected, acc = [], 1  # a TensorSpec: compare with the contiguous strides
    for s in reversed(t.shape):
        expected.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(expected)) == tuple(t.stride()) or t.numel() <= 1


def check_roles(named: dict[str, Sequence]) -> int:
    """Validate equal-length lists of dense floating tensors (or TensorSpecs) of matching sizes.

    Returns the list length. Raises ValueError (length, size or layout mismatch, naming the role
    and index) or TypeError (unsupported dtype).
    """
    items = list(named.items())
    ref_name, ref = items[0]
    n = len(ref)
    for name, ts in items[1:]:
        if len(ts) != n:
            raise ValueError(f"{name} has {len(ts)} tensors, {ref_name} has {n}")
    for name, ts in items:
        for i, t in enumerate(ts):
            if t.numel() != ref[i].numel():
                raise ValueError(
                    f"{name}[{i}] has {t.numel()} elements, {ref_name}[{i}] has {ref[i].numel()}"
                )
            if not _contiguous(t):
                raise ValueError(f"{name}[{i}] is not contiguous (multi-tensor kernels need dense storage)")
            if t.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
                raise TypeError(f"{name}[{i}]: unsupported dtype {t.dtype}")
    return n


def vector_ok(tensors: Sequence, vec: int) -> bool:
    """True when every tensor starts 16-byte aligned and has a multiple of ``vec`` elements: the
    promise an ``ALIGNED=True`` launch makes to the compiler (see the module docstring)."""
    return all(t.data_ptr() % ALIGN_BYTES == 0 for t in tensors) and tensors[0].numel() % vec == 0


def split_launches(roles: Sequence[Sequence]) -> dict[tuple, list[int]]:
    """Indices of the non-empty tensors, grouped by (dtype of each role, ALIGNED): one launch each."""
    groups: dict[tuple, list[int]] = {}
    for i in range(len(roles[0])):
        ts = [role[i] for role in roles]
        if ts[0].numel() == 0:
            continue
        dtypes = tuple(t.dtype for t in ts)
        vec = vector_elems([t.element_size() for t in ts])
        groups.setdefault((dtypes, vector_ok(ts, vec)), []).append(i)
    return groups


def _pack(rows: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """Rows in one buffer, each starting 16-byte aligned (so the kernels' table pointers specialise
    alike whatever the row lengths), as views of it."""
    per = ALIGN_BYTES // torch.empty((), dtype=dtype).element_size()
    lengths = [r.numel() for r in rows]
    starts, total = [], 0
    for n in lengths:
        starts.append(total)
        total += max(per, -(-n // per) * per)
    buf = torch.zeros(total, dtype=dtype, device="cpu")
    views = []
    for r, s, n in zip(rows, starts, lengths):
        buf[s : s + n] = r
        views.append(buf[s : s + n])
    return views


@dataclass(frozen=True)
class MultiTensorTables:
    """The index tables of one multi-tensor launch (see the module docstring), as tensors on one
    device: built on the CPU by :meth:`build`, moved with :func:`tables_to`."""

    addrs: tuple[torch.Tensor, ...]
    group: torch.Tensor
    chunk_tensor: torch.Tensor
    chunk_start: torch.Tensor
    chunk_count: torch.Tensor

    @property
    def n_programs(self) -> int:
        return self.chunk_tensor.numel()

    @staticmethod
    def build(roles: Sequence[Sequence], group_ids: Sequence[int], chunk: int) -> "MultiTensorTables":
        """Host (CPU) tables for ``roles`` (lists of tensors or TensorSpecs of equal sizes; reads only
        ``data_ptr()`` and ``numel()``), programs of at most ``chunk`` elements."""
        cpu = torch.device("cpu")  # host tables whatever the default device
        numel = torch.tensor([t.numel() for t in roles[0]], dtype=torch.int64, device=cpu)
        per_tensor = (numel + chunk - 1) // chunk
        tensor_id = torch.repeat_interleave(torch.arange(len(numel), device=cpu), per_tensor)
        first = torch.cumsum(per_tensor, 0) - per_tensor
        start = (torch.arange(len(tensor_id), device=cpu) - first[tensor_id]) * chunk
        count = torch.clamp(numel[tensor_id] - start, max=chunk)
        wide = bool(len(numel)) and int(numel.max()) > _INT32_MAX - chunk
        addrs = torch.tensor([[t.data_ptr() for t in role] for role in roles], dtype=torch.int64, device=cpu)
        i64 = _pack([*addrs.unbind(0)] + ([start] if wide else []), torch.int64)
        group = torch.tensor(list(group_ids), dtype=torch.int32, device=cpu)
        i32 = [group, tensor_id, count] + ([] if wide else [start])
        i32 = _pack([r.to(torch.int32) for r in i32], torch.int32)
        return MultiTensorTables(
            addrs=tuple(i64[: len(roles)]), group=i32[0], chunk_tensor=i32[1], chunk_count=i32[2],
            chunk_start=i64[-1] if wide else i32[3],
        )  # fmt: skip

    def rows(self) -> tuple[torch.Tensor, ...]:
        return (*self.addrs, self.group, self.chunk_tensor, self.chunk_start, self.chunk_count)


def address_rows(roles: Sequence[Sequence], ids: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Host rows of the addresses of tensors ``ids`` of each role (int64, each row 16-byte aligned):
    a launch's address tables for tensors that moved, its chunk tables unchanged."""
    rows = [[role[i].data_ptr() for i in ids] for role in roles]
    addrs = torch.tensor(rows, dtype=torch.int64, device="cpu")
    return tuple(_pack(list(addrs.unbind(0)), torch.int64))


def tables_to(args: Sequence, device: torch.device) -> tuple:
    """``args`` with every CPU tensor replaced by the same view of its buffer copied to ``device``
    (each buffer copied once, through pinned memory, ``non_blocking``: no host-device sync).

    For a plan built on the host: its table arguments are views of a few packed CPU buffers.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return tuple(args)
    moved: dict[int, torch.Tensor] = {}
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.device.type == "cpu":
            base = a._base if a._base is not None else a
            if id(base) not in moved:
                moved[id(base)] = _upload(base, device)
            a = moved[id(base)].as_strided(a.shape, a.stride(), a.storage_offset())
        out.append(a)
    return tuple(out)


def _upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def upload_scalars(values: list[list[float]], device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """Small host table -> device without a host-device sync (pinned, non-blocking)."""
    return _upload(torch.tensor(values, dtype=dtype, device="cpu"), device)
