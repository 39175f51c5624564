"""Writing files safely: every file jrinfer writes appears whole or not at all.

One home for atomic writes (write to a temporary file in the same folder,
then ``os.replace``) and for the "never overwrite without asking" rule.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_text", "write_csv", "check_writable"]


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
    from it), is created with the permissions a plain ``open(path, "w")``
    would give (0o666 less the umask), and is removed when the block raises.
    """
    path = Path(path)
    tmp = _create_temp(path)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _create_temp(path: Path) -> Path:
    """Create an empty, new file next to ``path`` (exclusive create, so never someone else's file)."""
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")  # pragma: no cover


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_csv(path, header: Sequence[str], columns) -> Path:
    """Write numeric ``columns`` (equal lengths) under a one-line ``header`` as CSV, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; replaced only once the whole table is written.
    header : sequence of str
        Column names, written comma-separated on the first line.
    columns : sequence of array_like
        One 1-D array (or tensor) per column; values written with ``%.10g``.

    Returns
    -------
    pathlib.Path
    """
    import numpy as np

    path = Path(path)
    data = np.column_stack([np.asarray(c, dtype=float) for c in columns])
    with atomic_path(path) as tmp:
        np.savetxt(tmp, data, delimiter=",", header=",".join(header), comments="", fmt="%.10g")
    return path


def observed_sha256(observed) -> str:
    """SHA-256 of the values a fit saw and their axis (``ObservedData``; float64 bytes, channels, units).

    Equal only for the same data: ``jrinfer compare`` refuses fits whose hashes differ.
    """
    import hashlib
    import json

    h = hashlib.sha256()
    for x in (observed.values, observed.coord_values):
        h.update(x.detach().cpu().double().contiguous().numpy().tobytes())
    h.update(json.dumps([observed.coord, list(observed.channels), observed.units]).encode())
    return h.hexdigest()


def file_sha256(path) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MiB blocks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
