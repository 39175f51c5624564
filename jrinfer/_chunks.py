"""Deterministic chunked work: one root seed, fixed chunks, any executor.

Large simulation jobs (NPE training sets, simulation-based identifiability)
are cut into chunks of a fixed size. Chunk ``i`` gets the seed
:func:`chunk_seed` ``(root_seed, i)``, a pure function of the root seed and the
chunk index, so the concatenated result is bit-identical whether the chunks
run in one process, in several, or on a cluster, in any order. The chunk size
is part of the job's definition (changing it changes the seeds), the number of
workers is not.

:func:`map_chunks` runs a picklable top-level function over the chunks, here
in a loop with a progress bar (``client=None``) or on a ``dask.distributed``
client with the same contract: results in chunk order, one progress step per
finished chunk. On Dask every chunk is a pure task whose key is a hash of the
function and its arguments, so a chunk lost with a worker is recomputed to the
same bytes (Dask reschedules it; ``retries`` covers chunks that raise).
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
    retries: int = 3,
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
    progress : bool or {"lines", "bar"}
        Show progress: a tqdm bar (one step per finished chunk) when stderr
        is a terminal; elsewhere (logs, pipes, notebooks) a line at most
        every 10 s and one at the end, never a bar's carriage returns.
        ``"lines"`` or ``"bar"`` choose one whatever stderr is.
    desc : str
        Label of the progress bar.
    retries : int
        Dask only: how many times a chunk that raised is retried before the
        error is passed on (a chunk on a worker that died is rescheduled by
        Dask in any case, up to the scheduler's ``allowed-failures``).

    Returns
    -------
    list
        The results in the order of ``arguments``.

    Raises
    ------
    ValueError
        If ``retries`` is not a non-negative int.
    Exception
        The first error a chunk raised (after its retries); the chunks still
        pending are cancelled.
    """
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"retries: expected a non-negative int, got {retries!r}")
    if client is not None:
        return _map_chunks_dask(function, list(arguments), client, progress=progress, desc=desc, retries=retries)
    results = []
    with _ChunkProgress(len(arguments), desc, progress) as bar:
        for args in arguments:
            results.append(function(*args))
            bar.update()
    return results


class _ChunkProgress:
    """Progress over chunks: a tqdm bar on a terminal, else a line at most every ``INTERVAL_S`` and one at the end."""

    INTERVAL_S = 10.0

    def __init__(self, total: int, desc: str, show: bool, unit: str = "chunk"):
        import sys
        import time

        self.total, self.desc, self.done, self.unit = total, desc, 0, unit
        self.bar = None
        self.lines = False
        self.t0 = self.last = time.perf_counter()
        if not show:
            return
        if show == "lines":  # lines even on a terminal (``--no-progress``)
            self.lines = True
            return
        isatty = getattr(sys.stderr, "isatty", None)
        if show == "bar" or (isatty is not None and isatty()):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit)
        else:
            self.lines = True

    def _say(self, message: str) -> None:
        import sys

        print(f"{self.desc}: {message}", file=sys.stderr, flush=True)

    def update(self) -> None:
        import time

        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.lines:
            now = time.perf_counter()
            if now - self.last >= self.INTERVAL_S and self.done < self.total:
                self.last = now
                elapsed = now - self.t0
                left = elapsed * (self.total - self.done) / self.done
                self._say(f"{self.done} of {self.total} {self.unit}s, {elapsed:.0f} s elapsed, about {left:.0f} s left")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        import time

        if self.bar is not None:
            self.bar.close()
        elif self.lines and exc[0] is None and self.total:
            self._say(f"{self.done} of {self.total} {self.unit}s in {time.perf_counter() - self.t0:.0f} s")
        return False


def task_key(prefix: str, function: Callable, args: tuple, index: int) -> str:
    """Deterministic Dask key of ``function(*args)``: ``prefix-index-sha1(function, args)``.

    The same function and arguments give the same key in any process, so a
    resubmitted job reuses (or recomputes to the same bytes) what the cluster
    already holds. Objects pickle cannot hash fall back to cloudpickle.
    """
    import hashlib
    import pickle

    try:
        blob = pickle.dumps((function, args), protocol=5)
    except Exception:  # lambdas, local functions: Dask ships them with cloudpickle anyway
        import cloudpickle

        blob = cloudpickle.dumps((function, args), protocol=5)
    return f"{prefix}-{index}-{hashlib.sha1(blob).hexdigest()}"


def _map_chunks_dask(function, arguments: list, client, *, progress: bool, desc: str, retries: int) -> list:
    """:func:`map_chunks` on a ``dask.distributed`` client (results in chunk order)."""
    from jrinfer._optional import optional_import

    distributed = optional_import("distributed", purpose="map_chunks on a Dask client")
    name = getattr(function, "__name__", "chunk").strip("<>_") or "chunk"
    futures = [
        client.submit(_call_in_worker, function, args, key=task_key(f"jrinfer-{name}", function, args, i),
                      pure=True, retries=retries)
        for i, args in enumerate(arguments)
    ]
    try:
        with _ChunkProgress(len(futures), desc, progress) as bar:
            for future in distributed.as_completed(futures):
                if future.status == "error":
                    future.result()  # raises the chunk's own error
                bar.update()
        return [f.result() for f in futures]  # the futures are released when this returns
    except BaseException:
        client.cancel(futures)  # stop the chunks still pending
        raise


def _call_in_worker(function, args: tuple):
    """Run one chunk; on a Dask worker first pin torch to one thread (one task per core)."""
    single_thread_in_worker()
    return function(*args)


def single_thread_in_worker() -> None:
    """On a Dask worker, set torch to one intra-op thread (the cluster runs one task per core)."""
    import sys

    if "distributed" not in sys.modules:
        return
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:  # not on a worker
        return
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
