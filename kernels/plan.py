"""Launch plans: a kernel launch as data, planned from shapes, dtypes, strides and the device.

Each launcher splits into a *planner* (a pure function of its inputs' metadata and the device's
properties, returning a :class:`LaunchPlan`) and the launch itself (``plan.launch()``). The planner
reads only ``shape``, ``stride()``, ``dtype``, ``dim()``, ``numel()``, ``element_size()`` and
``data_ptr()`` of its tensor arguments, so it works the same on real tensors and on
:class:`TensorSpec` stand-ins. That lets the exact configuration a GPU would run be planned and
compiled ahead of time on a machine without one (``kernels/aot.py``, ``tests/test_kernels_sm90.py``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch

#: SM count of the GPUs this project is tuned for (H100 SXM and H200 both have 132).
HOPPER_SM_COUNT = 132


@dataclass(frozen=True)
class DeviceSpec:
    """What a planner may know about the device: where kernels run and how many SMs it has.

    ``interpret``: Triton's CPU interpreter (few, large programs: each costs milliseconds of Python).
    """

    sm_count: int = HOPPER_SM_COUNT
    interpret: bool = False

    @staticmethod
    def of(device: torch.device | str) -> "DeviceSpec":
        device = torch.device(device)
        interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
        if device.type != "cuda" or interpret:
            return DeviceSpec(sm_count=4, interpret=True)
        return _cuda_spec(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_spec(index: int) -> DeviceSpec:
    return DeviceSpec(sm_count=torch.cuda.get_device_properties(index).multi_processor_count, interpret=False)


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's metadata without its data: what planners and ahead-of-time compilation read.

    ``strides`` default to contiguous; ``address`` is the base address (0: aligned to anything, as
    PyTorch's allocator gives; set e.g. 2 to model a bf16 view that starts one element in).
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    strides: Optional[tuple[int, ...]] = None
    address: int = 0

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.strides is None:
            strides, acc = [], 1
            for s in reversed(self.shape):
                strides.append(acc)
                acc *= max(s, 1)
            object.__setattr__(self, "strides", tuple(reversed(strides)))
        elif len(self.strides) != len(self.shape):
            raise ValueError(f"strides {self.strides} do not match shape {self.shape}")

    def stride(self, dim: Optional[int] = None):
        return self.strides if dim is None else self.strides[dim]

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def data_ptr(self) -> int:
        return self.address

    def size(self, dim: Optional[int] = None):
        return self.shape if dim is None else self.shape[dim]


@dataclass(frozen=True)
class LaunchPlan:
    """One kernel launch: the ``@triton.jit`` function, grid, runtime arguments (tensors or
    :class:`TensorSpec`), constexprs and launch options.

    ``label`` names the configuration in reports (``kernels/aot.py``). ``group``: plans with the
    same non-empty group differ only in what changes from step to step (mask lengths), so they must
    compile to one kernel variant (``tests/test_kernels_sm90.py`` checks their JIT cache keys).
    ``vector_loads`` / ``vector_stores``: the kernel's hot global loads / stores move contiguous data
    and must compile to 128-bit accesses; False only where the data is not contiguous by nature (a
    per-program partial sum written as one scalar, say). ``bytes_moved``: the launch's minimal
    global traffic (each byte read or written once; 0 = not stated), for expected times in reports
    and to tell launches too short to fill a GPU from badly shaped ones.
    """

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    constexprs: Mapping[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: Optional[int] = None
    label: str = ""
    group: str = ""
    vector_loads: bool = True
    vector_stores: bool = True
    bytes_moved: int = 0

    @property
    def n_programs(self) -> int:
        return math.prod(self.grid)

    def options(self) -> dict:
        opts = {"num_warps": self.num_warps}
        if self.num_stages is not None:
            opts["num_stages"] = self.num_stages
        return opts

    def launch(self):
        """Run the plan on its (real) tensors; a no-op for an empty grid."""
        if self.n_programs == 0:
            return None
        return self.kernel[self.grid](*self.args, **self.constexprs, **self.options())

    def with_args(self, *args) -> "LaunchPlan":
        """The same plan on other arguments of the same metadata (e.g. specs -> tensors)."""
        if len(args) != len(self.args):
            raise ValueError(f"{self.label or self.kernel}: {len(args)} arguments, plan has {len(self.args)}")
        return dataclasses.replace(self, args=tuple(args))
