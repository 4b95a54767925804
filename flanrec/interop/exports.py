"""What the exporters (`hf.py`, `t5x.py`, `python -m flanrec.convert`) share beyond the model's
parameter table (`flanrec.model.params`): making a finished export readable by others."""

from __future__ import annotations

import os
from pathlib import Path


def make_readable(root: str | os.PathLike[str]) -> None:
    """chmod an export for others to read: directories 0755, files 0644.

    Exports are assembled in `tempfile.mkdtemp` dirs (0700) and some writers create 0600
    files; a checkpoint handed to another user or a serving job must not need root."""
    top = Path(root)
    for path in [top, *top.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod(0o755 if path.is_dir() else 0o644)
