"""Where a result came from: commit, library versions, machine and threads, for the demo's output and
its run folder (so a figure in a table can be traced to the run that measured it)."""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """HEAD's commit id (12 hex digits) read from the repository's ``.git`` (no git process), or
    ``"unknown"`` outside a clone; ``VJEPA_FAST_COMMIT`` overrides it.

    The override exists for copies of a working tree whose ``.git`` is not the tree's own (the GPU
    machine's copy reported the last landed commit, not the one measured): pass the real one. Local
    edits on top of the commit are not detected.
    """
    if os.environ.get("VJEPA_FAST_COMMIT"):
        return os.environ["VJEPA_FAST_COMMIT"]
    git = REPO / ".git"
    try:
        if git.is_file():  # worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:12]
        ref = head.split(" ", 1)[1]
        ref_file = git / ref
        if ref_file.exists():
            return ref_file.read_text().strip()[:12]
        packed = git / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0][:12]
    except (OSError, IndexError, ValueError):  # unreadable, or a .git file that is not "gitdir: <path>"
        pass
    return "unknown"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``, else
    ``platform.machine()``; ``"unknown"`` when none says anything."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(distribution: str) -> str | None:
    """The installed version of ``distribution`` from its metadata (nothing is imported, so no native
    library loads), None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    """What can change a run's numbers besides its config and seeds: ``device`` (as the caller
    describes it, e.g. ``"cpu, float32"``), the CPU (model, the SIMD level torch dispatches its CPU
    kernels for, logical cores), the platform, library versions (python, torch, triton, numpy, PyAV,
    which encodes the demo videos), the commit and the date. Values are strings or ints; a library
    that is not installed is None."""
    import torch

    return {
        "commit": git_commit(),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device,
        "cpu": cpu_model(),
        # torch picks its vectorised CPU kernels by this (e.g. AVX2 vs AVX512): float sums round
        # differently between levels, so two machines can differ with everything else equal
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "av": _version("av"),
    }


def data_fingerprint(*index_files: str | os.PathLike) -> str:
    """First 16 hex digits of the SHA-256 of the clips the index files list, in order: each line's
    label and the bytes of its video file (not the path, so a copy elsewhere has the same print).
    Two runs whose prints differ did not see the same pixels (e.g. the videos were encoded by another
    PyAV/libx264 build). Raises FileNotFoundError naming an index or a video that is not there,
    ValueError naming the index and line of a line that is not ``<path> <label>``."""
    h = hashlib.sha256()
    for index in index_files:
        with open(index) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                fields = line.rsplit(maxsplit=1)
                if len(fields) != 2:
                    raise ValueError(f"{index}, line {n}: {line.strip()!r} is not '<video path> <label>'")
                path, label = fields
                h.update(label.encode() + b"\0")
                try:
                    h.update(Path(path).read_bytes())
                except FileNotFoundError:
                    raise FileNotFoundError(f"{index}: lists {path}, which is not there") from None
    return h.hexdigest()[:16]


def format_fields(fields: dict, indent: str = "  ") -> str:
    """``key: value`` lines; a nested dict is written as ``key: k1 v1, k2 v2``, a list or tuple
    as its items separated by spaces (``none`` when empty)."""
    lines = []
    for k, v in fields.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in v.items())
        elif isinstance(v, (list, tuple)):
            v = " ".join(map(str, v)) or "none"
        lines.append(f"{indent}{k}: {v}")
    return "\n".join(lines)
