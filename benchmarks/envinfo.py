"""What every benchmark records about where it ran (``git_commit`` lives in the package, where the
demo records it too)."""
from __future__ import annotations

from vjepa_fast.provenance import git_commit

__all__ = ["git_commit"]
