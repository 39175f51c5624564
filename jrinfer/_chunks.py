"""Deterministic chunked work: one root seed, fixed chunks, any executor.

Large simulation jobs (NPE training sets, simulation-based identifiability)
are cut into chunks of a fixed size. Chunk ``i`` gets the seed
:func:`chunk_seed` ``(root_seed, i)``, a pure function of the root seed and the
chunk index, so the concatenated result is bit-identical whether the chunks
run in one process, in several, or on a cluster, in any order. The chunk size
is part of the job's definition (changing it changes the seeds), the number of
workers is not.

:func:`map_chunks` runs a picklable top-level function over the chunks, here
in a loop with a progress bar (``client=None``); the scale-out layer adds a
Dask path with the same contract (results returned in chunk order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from jrinfer._rng import GOLDEN, _mix64_int, seed_to_int

_MASK63 = (1 << 63) - 1


def chunk_seed(root_seed: int, index: int) -> int:
    """Seed of chunk ``index`` derived from ``root_seed`` (a non-negative int < 2**63).

    ``mix64(mix64(root_seed) + (index + 1) * GOLDEN)`` with the SplitMix64
    finaliser of :mod:`jrinfer._rng`: distinct chunks get decorrelated seeds.
    """
    root = seed_to_int(root_seed)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError(f"index: expected a non-negative int, got {index!r}")
    return _mix64_int(_mix64_int(root) + (index + 1) * GOLDEN) & _MASK63


def chunk_slices(n: int, chunk_size: int) -> list[slice]:
    """Consecutive slices of at most ``chunk_size`` covering ``range(n)``."""
    if n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    return [slice(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def map_chunks(
    function: Callable[..., Any],
    arguments: Sequence[tuple],
    *,
    client=None,
    progress: bool = True,
    desc: str = "chunks",
) -> list:
    """``[function(*args) for args in arguments]``, in order, with a progress bar.

    Parameters
    ----------
    function : callable
        A top-level (picklable) function; it must be deterministic in its
        arguments (seeds are passed in, never drawn inside).
    arguments : sequence of tuple
        One argument tuple per chunk.
    client : dask.distributed.Client, optional
        Run on this Dask client instead of in this process.
    progress : bool
        Show a tqdm progress bar (one step per finished chunk).
    desc : str
        Label of the progress bar.

    Returns
    -------
    list
        The results in the order of ``arguments``.
    """
    if client is not None:
        raise NotImplementedError("map_chunks: running on a Dask client is not available yet")
    from tqdm.auto import tqdm

    results = []
    for args in tqdm(arguments, desc=desc, unit="chunk", disable=not progress):
        results.append(function(*args))
    return results
