"""What every benchmark records about where it ran."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """HEAD's commit id read from .git (no git process); ``VJEPA_FAST_COMMIT`` overrides it.

    The override exists for copies of a working tree whose ``.git`` is not the tree's own (the GPU
    machine's copy reported the last landed commit, not the one measured): pass the real one.
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
    except OSError:
        pass
    return "unknown"
