"""Process-group setup and model wrapping for multi-GPU / multi-node pretraining.

Launch with ``torchrun`` (any launcher that sets the torchrun variables ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` works, e.g. ``srun`` with those exported):

    torchrun --nproc_per_node 8 -m vjepa_fast.cli pretrain --config configs/pretrain/vitl16.yaml
    torchrun --nnodes 16 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HOST:29500 ...

A plain ``python`` process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) runs single-process without any
process group and without reading any environment variable (the official jepa#55 pitfall: there,
one device still needed a process group and SLURM variables). There is no SLURM-only logic.

Backend: NCCL when the process drives a CUDA device, gloo on the CPU. Each process uses
``cuda:$LOCAL_RANK``.

Wrapping (:func:`wrap_student`): only the trained modules (context encoder + predictor) are
synchronised; the EMA target never has gradients and is not wrapped in DDP. ``meta.parallel: fsdp``
shards encoder, predictor *and* target with FSDP2 (``fully_shard``, one unit per transformer block
plus the root), with identical placements so the EMA runs shard-local.
"""
from __future__ import annotations

import datetime
import gc
import inspect
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "DistInfo",
    "init_distributed",
    "cleanup_distributed",
    "is_distributed",
    "StudentModule",
    "wrap_student",
    "all_reduce_mean",
    "broadcast_object",
    "barrier",
    "local_tensors",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: single process, no process group
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(pref: str, local_rank: int) -> torch.device:
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and dev.index is None:
        return torch.device(f"cuda:{local_rank}")
    return dev


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by the torchrun environment, or run single-process.

    ``device``: ``meta.device`` ('auto', 'cpu', 'cuda', 'cuda:N'); with 'auto'/'cuda' each process
    takes ``cuda:$LOCAL_RANK``. Returns a :class:`DistInfo`. Safe to call when a process group
    already exists (it is reused, e.g. in tests that spawn workers themselves).
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        dev = _pick_device(device, local_rank)
        return DistInfo(rank, world, local_rank, dev, dist.get_backend(), False)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo(0, 1, 0, _pick_device(device, 0), None, False)
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with torchrun "
            "(or export RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every process)"
        )
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kw = {}
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        kw["device_id"] = dev
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s), **kw)
    return DistInfo(rank, world, local_rank, dev, backend, True)


def cleanup_distributed(info: DistInfo | None = None, *, sync: bool = True) -> None:
    """Destroy the process group if :func:`init_distributed` created it.

    ``sync`` first waits at a barrier for every rank. Pass ``False`` on an error path: a rank that
    failed must not wait for ranks that are still training.
    """
    if info is not None and not info.initialized_here:
        return
    if not (dist.is_available() and dist.is_initialized()):
        return
    if sync:
        # A gloo worker thread frees a finished collective's tensors only after the caller has seen
        # it complete, and that free takes the GIL. If the interpreter is already shutting down, the
        # thread is killed mid-free and the process aborts ("terminate called without an active
        # exception"; 3 of ~115 stressed 2-rank CPU launches, core dump: ~AsyncAllgatherCoalescedWork in
        # ProcessGroupGloo::runLoop). destroy_process_group does not join those threads. Waiting in a
        # barrier, GIL released, lets them finish first; gc frees DDP/FSDP cycles that hold work.
        dist.barrier()
        gc.collect()
    dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (a no-op in a single process). Call on log steps only."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(dist.get_world_size())
    return t


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class StudentModule(nn.Module):
    """The trained part of a :class:`~vjepa_fast.jepa.VJEPA` (context encoder + predictor) as one
    module whose ``forward`` computes the student loss against given target features ``h``. This is
    what DDP wraps: DDP only hooks ``forward``, and the EMA target must stay outside it.

    The VJEPA object is held by reference (not registered), so the parameters are exactly the
    encoder's and predictor's; a compiled student (``vjepa_fast.compile``) is used when present.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder = model.encoder
        self.predictor = model.predictor
        self.__dict__["_vjepa"] = model

    def forward(self, clips, masks_enc, masks_pred, h):
        """-> ``(loss, loss_jepa, loss_reg, preds, context)`` against raw target features ``h``; a
        V2 multi-length batch (lists over clip-length groups) goes to ``forward_student_groups``."""
        model = self.__dict__["_vjepa"]
        if isinstance(clips, (list, tuple)):
            student = model.compiled_student_groups or type(model).forward_student_groups
        else:
            student = model.compiled_student or type(model).forward_student
        return student(model, clips, masks_enc, masks_pred, h)


def _fsdp_shard(modules: Sequence[nn.Module], device: torch.device, mp_dtype: torch.dtype | None) -> None:
    from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method  # noqa: PLC0415

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kw = {"mesh": mesh}
    if mp_dtype is not None:
        # Parameters stay fp32 (sharded); compute in mp_dtype, gradients reduced in fp32.
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32)
    for m in modules:
        blocks = m.blocks if hasattr(m, "blocks") else m.predictor_blocks
        for blk in blocks:
            fully_shard(blk, **kw)
        fully_shard(m, **kw)
        for name in ("forward_masks",):
            if hasattr(m, name):
                register_fsdp_forward_method(m, name)


def wrap_student(model: nn.Module, parallel: str = "ddp", device: torch.device | None = None,
                 mp_dtype: torch.dtype | None = None, find_unused_parameters: bool = False) -> nn.Module:
    """Return the module the training step calls as ``student(clips, masks_enc, masks_pred, h)``.

    * single process: a plain :class:`StudentModule`;
    * ``ddp``: ``DistributedDataParallel(StudentModule)`` (encoder + predictor; the target is left
      alone, it has no gradients);
    * ``fsdp``: FSDP2 — encoder, predictor and target are sharded *in place* (parameters become
      DTensors; build the optimizer afterwards) and the plain StudentModule is returned.

    ``find_unused_parameters`` (DDP): V-JEPA 2 runs, whose mask tokens of clip lengths absent from a
    batch take no part (the official predictor DDP sets it too).
    """
    student = StudentModule(model)
    if not is_distributed():
        return student
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

        ids = [device.index] if device is not None and device.type == "cuda" else None
        # The models hold no buffers, so not syncing them each forward loses nothing. Newer torch
        # renames the flag and warns on the old name; older torch (2.11 on the GPU image) lacks it.
        buffer_sync_off = ({"forward_sync_buffers": False}
                           if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                           else {"broadcast_buffers": False})
        return DDP(student, device_ids=ids, gradient_as_bucket_view=True,
                   find_unused_parameters=find_unused_parameters, **buffer_sync_off)
    if parallel == "fsdp":
        _fsdp_shard([model.encoder, model.predictor, model.target_encoder], device, mp_dtype)
        return student
    raise ValueError(f"unknown parallel mode {parallel!r}; expected 'ddp' or 'fsdp'")


def local_tensors(params) -> list[torch.Tensor]:
    """Shard-local views of (possibly DTensor) parameters, for the shard-local EMA update."""
    out = []
    for p in params:
        out.append(p.to_local() if hasattr(p, "to_local") else p)
    return out
