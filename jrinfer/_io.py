"""Writing files safely: every file jrinfer writes appears whole or not at all.

One home for atomic writes (write to a temporary file in the same folder,
then ``os.replace``) and for the "never overwrite without asking" rule.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_text", "check_writable"]


def check_writable(path, *, overwrite: bool, what: str = "path") -> Path:
    """Return ``path`` as a Path; ``FileExistsError`` if it exists and ``overwrite`` is False."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{what} {path} exists; pass overwrite=True (CLI: --force) to replace it")
    return path


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    The temporary file keeps ``path``'s suffix (some writers choose the format
    from it) and is removed when the block raises.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent or ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
