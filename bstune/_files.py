"""Writing a file whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["replace_text"]


def replace_text(file: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``file`` by a rename, so that readers see the old file or the new, never half
    (a full disk mid-write leaves the old one, not a truncated one).

    Example:
        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp()) / "result.json"
        >>> replace_text(file, "{}\\n")
        >>> file.read_text(), sorted(p.name for p in file.parent.iterdir())
        ('{}\\n', ['result.json'])
    """
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
