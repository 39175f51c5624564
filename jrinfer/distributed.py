"""Scale-out on Dask: cohort fitting (:func:`fit_many`) and chunked simulation (:func:`simulate_many`).

The same code runs in this process (``client=None``) and on a
``dask.distributed`` cluster (a ``LocalCluster`` or an existing scheduler, see
:func:`dask_client`). Tasks are top-level functions of plain, picklable
arguments; Dask and tqdm are imported only when used.

Cohort fitting writes one folder per item, atomically: the item is fitted into
a hidden ``.partial-*`` folder that is renamed to ``OUT/<item>`` when complete
(``result.json`` last inside it). A task retried after a lost worker therefore
either finds the finished folder and returns it, or writes its own; the first
rename wins and nothing is half-written or duplicated. ``OUT/results.csv`` is
assembled from the items' ``result.json`` files, so an interrupted run (a
killed worker, a restarted cluster, Ctrl-C) resumes by skipping the items whose
folder exists.

Simulation is cut into chunks of a fixed size, chunk ``i`` seeded with
:func:`jrinfer._chunks.chunk_seed` ``(root_seed, i)``; the model's noise is a
pure function of (seed, parameter set within the chunk, step), so the stacked
result is bit-identical whatever the number of workers or the order in which
chunks run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import secrets
import shutil
import sys
from collections.abc import Mapping, Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

__all__ = ["fit_many", "simulate_many", "read_manifest", "dask_client"]

#: Columns of results.csv that come first, in this order.
RESULT_COLUMNS = ("item", "path", "status", "error", "fit_status", "fit_status_message", "backend", "log_evidence",
                  "n_warnings", "warnings")
#: Options of ``jrinfer fit`` that ``fit-many`` sets itself (per item) and a manifest cannot.
_OWN_OPTIONS = {"out", "force", "json", "report", "progress", "kind", "backend", "data", "help", "debug", "strict",
                "quiet"}
_ITEM_NAME = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------- #
# Distributed simulation
# --------------------------------------------------------------------------- #
def simulate_many(
    params: Mapping,
    *,
    duration: float = 8.0,
    dt: float = 1e-4,
    segment: float = 2.0,
    record_every: int = 10,
    transient: float = 1.0,
    noise: str = "white",
    noise_on: str = "input",
    initial_state: str = "equilibrium",
    fmin: float = 0.0,
    fmax: float | None = None,
    root_seed: int = 0,
    chunk_size: int = 64,
    client=None,
    progress: bool = True,
    retries: int = 3,
):
    """Welch spectra of ``N`` Jansen-Rit simulations, chunked, locally or on a Dask client.

    Parameter set ``n`` is simulated in chunk ``i = n // chunk_size`` with the
    seed :func:`~jrinfer._chunks.chunk_seed` ``(root_seed, i)``, as one
    vectorised batch per chunk (:meth:`JansenRit.simulated_psd`). The noise of
    a set is a pure function of (chunk seed, position in the chunk, step), so
    the result is bit-identical with any number of workers, any assignment of
    chunks to workers and with ``client=None``. ``chunk_size`` is part of the
    job's definition: changing it changes the seeds.

    Parameters
    ----------
    params : mapping of str to array_like
        Jansen-Rit parameters (names in :data:`jrinfer.PARAMETERS`): each a
        1-D array of length ``N`` (one value per simulation) or a scalar
        (the same for all). At least one must be 1-D.
    duration, dt, segment, transient : float
        Recorded time, integration step, Welch segment and discarded
        transient, all in s.
    record_every : int
        Decimation of ``v`` before the Welch estimate (sampling rate
        ``1 / (record_every dt)``).
    noise, noise_on, initial_state : str
        As in :class:`JansenRit` and :meth:`JansenRit.simulate`.
    fmin, fmax : float
        Keep the Welch bins with ``fmin <= f <= fmax`` (Hz; ``fmax=None``: up
        to Nyquist). The cut is made on the worker, so only those bins are
        sent back (8 bytes per bin and simulation).
    root_seed : int
        Root of the chunk seeds (``0 <= root_seed < 2**63``).
    chunk_size : int
        Parameter sets per chunk (per task).
    client : dask.distributed.Client, optional
        Run the chunks on this client; ``None`` runs them here.
    progress : bool
        Show a progress bar (one step per chunk).
    retries : int
        Retries of a chunk that raised (Dask only).

    Returns
    -------
    jrinfer.SimulatedSpectrum
        ``freqs`` ``(F,)`` in Hz, ``psd`` ``(N, F)`` in mV^2/Hz, ``diverged``
        ``(N,)`` bool (non-finite simulations: their rows are NaN-free but not
        meaningful) and ``n_segments``.

    Raises
    ------
    ValueError
        If ``params`` is empty, names an unknown parameter, mixes lengths or
        holds non-finite values; if ``chunk_size`` is not a positive int.
    """
    import torch

    from jrinfer import _checks
    from jrinfer._chunks import chunk_seed, chunk_slices, map_chunks
    from jrinfer._rng import seed_to_int
    from jrinfer.model import PARAMETERS, SimulatedSpectrum

    if not isinstance(params, Mapping) or not params:
        raise ValueError(f"params: expected a non-empty mapping of parameter name to values, got {params!r}")
    unknown = [k for k in params if k not in PARAMETERS]
    if unknown:
        raise ValueError(f"params: unknown parameter(s) {unknown}; known: {', '.join(PARAMETERS)}")
    chunk_size = _checks.check_int("chunk_size", chunk_size, minimum=1)
    root_seed = seed_to_int(root_seed)
    fmin = _checks.check_scalar("fmin", fmin, positive=True, allow_zero=True)
    fmax = None if fmax is None else _checks.check_scalar("fmax", fmax, positive=True)
    if fmax is not None and fmax < fmin:
        raise ValueError(f"fmax: expected fmax >= fmin = {fmin:g} Hz, got {fmax:g}")
    values = {}
    n = None
    for name, v in params.items():
        t = _checks.as_float_tensor(f"params[{name!r}]", v)
        _checks.check_finite(f"params[{name!r}]", t)
        if t.ndim > 1:
            raise ValueError(f"params[{name!r}]: expected a scalar or a 1-D array, got shape {tuple(t.shape)}")
        if t.ndim == 1:
            if n is not None and t.shape[0] != n:
                raise ValueError(f"params[{name!r}]: expected length {n} like the other parameters, got {t.shape[0]}")
            n = t.shape[0]
        values[name] = t.detach()
    if n is None or n == 0:
        raise ValueError("params: expected at least one 1-D array with at least one value (the parameter sets)")
    values = {k: (v.expand(n) if v.ndim == 0 else v) for k, v in values.items()}
    settings = {
        "duration": duration, "dt": dt, "segment": segment, "record_every": record_every,
        "transient": transient, "noise": noise, "noise_on": noise_on, "initial_state": initial_state,
        "fmin": fmin, "fmax": fmax,
    }
    arguments = [
        ({k: v[sl].clone() for k, v in values.items()}, chunk_seed(root_seed, i), settings)
        for i, sl in enumerate(chunk_slices(n, chunk_size))
    ]
    parts = map_chunks(_simulate_chunk, arguments, client=client, progress=progress,
                       desc="simulating", retries=retries)
    freqs = parts[0][0]
    return SimulatedSpectrum(
        freqs, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]), parts[0][3]
    )


def _simulate_chunk(params: dict, seed: int, settings: dict):
    """One chunk of :func:`simulate_many`: ``(freqs, psd (B, F), diverged (B,), n_segments)``."""
    import torch

    from jrinfer.model import JansenRit

    with torch.no_grad():
        model = JansenRit(noise=settings["noise"], noise_on=settings["noise_on"], **params)
        spec = model.simulated_psd(
            settings["duration"], settings["dt"], segment=settings["segment"],
            record_every=settings["record_every"], transient=settings["transient"], seed=seed,
            initial_state=settings["initial_state"],
        )
    keep = spec.freqs >= settings["fmin"]
    if settings["fmax"] is not None:
        keep &= spec.freqs <= settings["fmax"]
    return spec.freqs[keep], spec.psd[..., keep].contiguous(), spec.diverged, spec.n_segments


# --------------------------------------------------------------------------- #
# Dask client
# --------------------------------------------------------------------------- #
def dask_client(scheduler: str | None = None, *, n_workers: int | None = None):
    """A ``dask.distributed.Client``: to ``scheduler`` if given, else to a new ``LocalCluster``.

    The local cluster runs ``n_workers`` worker processes (default: the
    number of CPU cores) with one thread each (torch is set to one thread in
    every task), its dashboard on a free port (``client.dashboard_link``).
    Close the client and then its cluster when done:
    ``cluster = client.cluster; client.close(); cluster.close()``. Worker
    processes are spawned, so a script must create the cluster under
    ``if __name__ == "__main__":``; the workers import jrinfer from the same
    ``sys.path`` (with a remote scheduler, install jrinfer on its workers).

    Raises
    ------
    ImportError
        Without ``dask.distributed`` (``pip install 'jrinfer[dask]'``).
    ValueError
        If ``n_workers`` is not a positive int.
    """
    from jrinfer import _checks
    from jrinfer._optional import optional_import

    distributed = optional_import("distributed", purpose="running on a Dask cluster")
    if scheduler:
        return distributed.Client(scheduler)
    n = (os.cpu_count() or 1) if n_workers is None else _checks.check_int("n_workers", n_workers, minimum=1)
    cluster = distributed.LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
        env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    return distributed.Client(cluster)


# --------------------------------------------------------------------------- #
# Cohort fitting
# --------------------------------------------------------------------------- #
def read_manifest(path) -> list[dict]:
    """Rows of a cohort manifest CSV as dicts (paths resolved against the manifest's folder).

    The manifest has a header with a ``path`` column (one recording per row,
    absolute or relative to the manifest) and optional columns: ``name`` (the
    item's label), any option of ``jrinfer fit`` by its flag name
    (``units``, ``picks``, ``fmin``, ``fmax``, ``tmin``, ``tmax``, ``condition``,
    ``exclude``, ``segment``, ``free``, ``fix`` with ``NAME=VALUE;NAME=VALUE``,
    ...), which override the command's defaults for that row. Every column
    but ``path`` (options and others such as ``subject``, ``group``) is
    copied to ``results.csv``. Empty cells mean "the default".

    For fits of conditions (``--conditions rest,task --vary ...``, or
    ``conditions`` and ``vary`` columns), each row names one file per
    condition in columns ``path_<condition>`` (``path_rest,path_task``)
    instead of ``path``; a manifest may not have both kinds of column.

    Raises
    ------
    ValueError
        If the file is not a CSV with a ``path`` column or ``path_<condition>``
        columns (not both), or a row has no path.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest: no such file {str(path)!r}")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        per_condition = [h for h in header if h.startswith(_PATH_PREFIX)]
        if "path" not in header and not per_condition:
            raise ValueError(f"manifest {path}: expected a CSV header with a 'path' column (or, for fits of "
                             f"conditions, one 'path_<condition>' column per condition such as path_rest,path_task), "
                             f"got {header}")
        if "path" in header and per_condition:
            raise ValueError(_both_path_kinds(f"manifest {path}", per_condition))
        rows = []
        for k, raw in enumerate(reader, start=2):
            row = {(key or "").strip(): (val or "").strip() for key, val in raw.items() if key is not None}
            if not any(row.get(c) for c in (per_condition or ["path"])):
                empty = " and ".join(map(repr, per_condition or ["path"]))
                raise ValueError(f"manifest {path}, line {k}: empty {empty}")
            for key in ("path", "prior", *per_condition):  # files named in the manifest: relative to it
                if row.get(key):
                    p = Path(row[key]).expanduser()
                    row[key] = str(p if p.is_absolute() else (path.parent / p))
            rows.append({key: val for key, val in row.items() if val != ""})
    if not rows:
        raise ValueError(f"manifest {path}: no rows (expected one recording per line under the header)")
    return rows


#: Manifest columns naming one file per condition: ``path_<condition>``.
_PATH_PREFIX = "path_"


def _both_path_kinds(where: str, per_condition) -> str:
    return (f"{where}: has both a 'path' column and per-condition file columns ({', '.join(per_condition)}), which is "
            "ambiguous; give one file per condition in path_<condition> columns (with --conditions), or one file "
            "per row in 'path', not both")


def fit_many(
    items,
    backend="laplace",
    *,
    client=None,
    out=None,
    kind: str | None = None,
    options: Mapping | None = None,
    per_channel: bool = False,
    seed: int = 0,
    resume: bool = True,
    retry_errors: bool = False,
    retries: int = 2,
    progress: bool = True,
) -> list[dict]:
    """Fit a cohort: one task per recording (file) or per :class:`InverseProblem`, locally or on Dask.

    Parameters
    ----------
    items : str, os.PathLike or sequence
        A manifest CSV (see :func:`read_manifest`), or a sequence whose
        elements are all file paths, manifest-style dicts (``{"path": ...,
        "units": ..., ...}``) or all :class:`~jrinfer.InverseProblem` s. The
        same file may appear several times (each row is its own item).
    backend : str or backend object
        Files: ``"laplace"``, ``"nuts"``, ``"smc"`` or ``"npe"`` (as ``jrinfer fit
        --backend``; npe with ``options={"--estimator": DIR}``). Problems: one of those names or a backend object with
        ``fit(problem) -> Posterior`` (e.g. ``VariationalLaplace(max_iter=64)``);
        it must pickle to reach Dask workers.
    client : dask.distributed.Client, optional
        Run the items on this client (see :func:`dask_client`); ``None`` fits
        them one after the other in this process.
    out : str or os.PathLike, optional
        Output folder: ``out/<item>/`` per item (``summary.json``,
        ``posterior.nc``, ``fit.png`` for files, ``log.txt``, ``result.json``)
        and ``out/results.csv``. Required for files; optional for problems
        (without it the posteriors come back in memory). Files fitted with
        conditions (``options={"conditions": "rest,task", "vary": "a,b"}``,
        one file per condition in ``path_<condition>`` keys or manifest
        columns) also write ``out/group_effects.json`` and
        ``out/group_effects.png``: :func:`jrinfer.conditions.group_effects`
        over the items (those that failed are left out, with why).
    kind : {"spectrum", "evoked"}, optional
        Files: what they hold (as ``jrinfer fit --kind``). Required for files.
    options : mapping, optional
        Files: ``jrinfer fit`` options for every item by flag name
        (``{"units": "uV^2/Hz", "fmin": 2.0, "picks": "O1,O2", "fix": ["A=3.25"]}``);
        a manifest's columns override them per row. Problems with a backend
        name: its options among ``jrinfer fit``'s (:data:`jrinfer.cli.BACKEND_OPTIONS`:
        ``chains``, ``tune``, ``draws``, ``boundary``, ``starts``, ``max_iter``,
        ``resample``), e.g. ``{"chains": 2, "boundary": "pole"}`` with ``"nuts"``;
        the backend is built as ``jrinfer fit`` builds it.
    per_channel : bool
        Files: one item per channel of each row's picks (``picks="O1,O2"``
        gives items ``<row>-<name>-O1`` and ``<row>-<name>-O2``) instead of
        one fit of the row's channels (averaged, as ``jrinfer fit`` does).
    seed : int
        Problems: seed of each backend's draws (files: ``options["seed"]``).
    resume : bool
        Skip items whose folder under ``out`` exists already (finished, ok or
        error); delete an item's folder to fit it again. With ``False``, such
        folders are an error (nothing is overwritten). One run per ``out`` at
        a time.
    retry_errors : bool
        With ``resume``, fit the items recorded as errors again (their
        folders are replaced), e.g. after fixing a file.
    retries : int
        Dask: retries of a task that raised outside the fit (item errors are
        recorded, not raised).
    progress : bool
        Show a progress bar over the items.

    Returns
    -------
    list of dict
        One row per item, in input order, with the columns of
        ``results.csv``: ``item``, ``path``, ``status`` (``"ok"`` or
        ``"error"``), ``error`` (the message), ``fit_status`` (the posterior's
        status: ``converged``, ``warning`` for a misfit or an untrustworthy
        approximation, or the backend's failure code) and
        ``fit_status_message`` (why it is not converged), ``backend``, ``log_evidence``, ``n_warnings``, ``warnings``,
        ``<parameter>_mean``/``<parameter>_sd`` (the importance-weighted ones where
        the fit found its Gaussian marginal misstated, then with
        ``<parameter>_marginal`` naming the shape), ``fit_<measure>`` (fit quality),
        ``npe_*`` (NPE: calibration verdict, regime (a label only where the verdict
        settles it, else ``unresolved``; ``npe_regime_most_probable`` beside), the data's distance from the
        training simulations), ``effect_<name>_<condition>_mean``/``_lower``/``_upper``/``_log_bf``
        and ``any_difference_log_bf`` (fits of conditions: each difference, a
        log ratio or additive, its 90 % interval and log Bayes factor in nats),
        ``diag_<name>`` (scalar backend diagnostics: free energy, R-hat, ESS,
        ...) and the manifest's extra columns. Without ``out``, each row also
        holds ``"posterior"`` (a :class:`~jrinfer.Posterior`, or ``None`` for
        an error).

    Raises
    ------
    ValueError
        For an empty or mixed ``items``, a file cohort without ``out`` or
        ``kind``, an unknown option or an option value ``jrinfer fit``
        refuses (a bad value in one manifest row is that row's error
        instead), an unknown backend name, or finished items in ``out`` with
        ``resume=False``.
    """
    from jrinfer import _checks
    from jrinfer.problem import InverseProblem

    _checks.check_bool("resume", resume)
    _checks.check_bool("retry_errors", retry_errors)
    _checks.check_bool("per_channel", per_channel)
    _checks.check_bool("progress", progress)
    retries = _checks.check_int("retries", retries, minimum=0)
    if isinstance(items, (str, os.PathLike)):
        items = read_manifest(items)
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)) or len(items) == 0:
        raise ValueError(f"items: expected a manifest path or a non-empty sequence of files or problems, got {items!r}")
    n_problems = sum(isinstance(it, InverseProblem) for it in items)
    if 0 < n_problems < len(items):
        raise ValueError("items: expected all InverseProblems or all files, got a mix")
    if n_problems:
        specs = _problem_specs(items, backend, seed, options or {})
    else:
        specs = _file_specs(items, backend, kind, options or {}, per_channel=per_channel)
        if out is None:
            raise ValueError("out: an output folder is needed to fit files (each item writes its outputs there)")
    out = None if out is None else Path(out)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _remove_partials(out)
    rows: dict[str, dict] = {}
    todo = []
    for spec in specs:
        done = _read_result(out / spec["id"]) if out is not None else None
        if done is not None and retry_errors and resume and done.get("status") != "ok":
            shutil.rmtree(out / spec["id"])
            done = None
        if done is not None:
            rows[spec["id"]] = done
        else:
            todo.append(spec)
    if rows and not resume:
        raise ValueError(f"out: {out} holds finished items ({', '.join(list(rows)[:3])}, ...); pass resume=True to "
                         "keep them, or delete their folders to fit them again")
    for row in _run(todo, out, client=client, progress=progress, retries=retries):
        rows[row["item"]] = row
    if out is not None:  # the folders are the truth (a task reported lost may have finished its folder)
        for spec in todo:
            done = _read_result(out / spec["id"])
            if done is not None:
                rows[spec["id"]] = done
    ordered = [rows[s["id"]] for s in specs]
    if out is not None:
        write_results_csv(out / "results.csv", ordered)
        _remove_partials(out)
        if any(len(s.get("conditions") or ()) > 1 for s in specs):
            _write_group_effects(out, [s["id"] for s in specs])
    return ordered


#: Files fit_many writes for a cohort of condition fits: the group effects and their forest plot.
GROUP_FILES = ("group_effects.json", "group_effects.png")


def _write_group_effects(out, items: Sequence[str]) -> dict:
    """``out/group_effects.json`` (and ``.png``): :func:`jrinfer.conditions.group_effects` over the items' folders.

    Items that failed or whose fit status is not usable are left out (named,
    with why, in the file). When no group effect can be computed (no item
    usable, differing conditions or priors), the file holds ``{"error":
    message}`` instead. Returns what was written.
    """
    from jrinfer._io import write_text
    from jrinfer.conditions import group_effects

    out = Path(out)
    for name in GROUP_FILES:  # an earlier run's figure must not outlive its numbers
        (out / name).unlink(missing_ok=True)
    try:
        group = group_effects([out / i for i in items], labels=list(items))
    except ValueError as err:
        group = {"error": str(err)}
    write_text(out / GROUP_FILES[0], json.dumps(group, indent=1, default=_json_default))
    if "error" not in group:
        try:
            from jrinfer.plotting import plot_group_effects

            plot_group_effects(group, out / GROUP_FILES[1])
        except ImportError:  # no matplotlib: the numbers are in the JSON
            pass
    return group


def _run(specs: list[dict], out: Path | None, *, client, progress: bool, retries: int):
    """Yield the result rows of ``specs`` as they finish (locally or on ``client``)."""
    from jrinfer._chunks import _ChunkProgress

    out_s = None if out is None else str(out)
    # a bar on a terminal, else a line at most every 10 s and one at the end (none when interrupted; no \r in logs)
    with _ChunkProgress(len(specs), "fitting", bool(progress and specs), unit="item") as bar:
        if client is None:
            for spec in specs:
                yield fit_item(spec, out_s)
                bar.update()
            return
        from jrinfer._chunks import task_key

        distributed = __import__("distributed")
        futures = {
            client.submit(fit_item, spec, out_s, key=task_key(f"jrinfer-fit-{spec['id']}", fit_item, (spec, out_s), 0),
                          pure=True, retries=retries): spec
            for spec in specs
        }
        finished = False
        try:
            for future in distributed.as_completed(futures):
                spec = futures[future]
                try:
                    row = future.result()
                except Exception as err:  # the task itself failed (e.g. KilledWorker): not written, so resumable
                    row = _error_row(spec, f"task failed on the cluster ({type(err).__name__}: {err}); "
                                           "run again to resume")
                    if out is None:
                        row["posterior"] = None
                bar.update()
                yield row
            finished = True
        finally:
            if not finished:  # interrupted: stop the items still pending
                try:
                    client.cancel([f for f in futures if not f.done()])
                except Exception:  # the client or cluster is gone already
                    pass
            futures.clear()


def fit_item(spec: dict, out: str | None) -> dict:
    """Fit one cohort item into ``out/<id>`` (atomically) and return its results row.

    A top-level task of plain arguments (``spec`` from :func:`fit_many`).
    Idempotent: if the item's folder exists (another attempt finished it),
    its row is returned and nothing is written. Errors of the fit are caught
    and recorded (``status = "error"``).
    """
    from jrinfer._chunks import single_thread_in_worker

    single_thread_in_worker()
    final = None if out is None else Path(out) / spec["id"]
    if final is not None:
        done = _read_result(final)
        if done is not None:
            return done
        tmp = Path(out) / f".partial-{spec['id']}-{secrets.token_hex(4)}"
        tmp.mkdir()
    else:
        tmp = None
    log = io.StringIO()
    posterior = None
    try:
        with redirect_stdout(log), redirect_stderr(log), _local_dask_scheduler():
            if spec.get("invalid"):
                raise ValueError(spec["invalid"])
            if "argv" in spec:
                summary = _fit_file(spec, tmp)
            else:
                posterior, summary = _fit_problem(spec, tmp)
        row = _summary_row(spec, summary)
    except Exception as err:  # one item's failure is recorded, the cohort goes on
        if _cluster_failure(err):  # not the item's fault: leave no folder, so Dask's retry or a rerun fits it
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        row = _error_row(spec, msg)
    if tmp is None:
        return {**row, "posterior": posterior}
    from jrinfer._io import write_text

    # the fit wrote into the temporary folder; the log names the folder its files end up in
    write_text(tmp / "log.txt", log.getvalue().replace(str(tmp), str(final)))
    write_text(tmp / "result.json", json.dumps(row, indent=1, default=_json_default))
    try:
        os.rename(tmp, final)
    except OSError:  # another attempt of this task finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
        done = _read_result(final)
        if done is None:
            raise
        return done
    return row


def _local_dask_scheduler():
    """Inside a fit, dask (if loaded) computes in-process: xarray then writes posterior.nc under a thread
    lock instead of a ``distributed.Lock`` on the scheduler (a round trip per file, and a failure when
    the cluster goes down). Each item writes its own files, so no cross-process lock is needed."""
    import contextlib
    import sys

    if "dask" not in sys.modules:
        return contextlib.nullcontext()
    import dask

    return dask.config.set(scheduler="synchronous")


def _cluster_failure(err: BaseException) -> bool:
    """True for errors of the Dask machinery rather than of the fit (e.g. the worker is shutting down).

    xarray takes a ``distributed.Lock`` to write netCDF on a worker, so a
    closing cluster can surface inside the fit.
    """
    module = type(err).__module__ or ""
    if module.startswith(("distributed", "tornado")) or "ConnectionPool is closed" in str(err):
        return True
    import sys

    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return False
    return getattr(worker.status, "name", "running") != "running"


def _fit_file(spec: dict, folder: Path) -> dict:
    """``jrinfer fit`` of one file into ``folder``; returns its summary.json."""
    from jrinfer import cli

    paths = spec.get("paths") or [spec["path"]]  # one file per condition for a fit of conditions
    args = cli.build_parser().parse_args(["fit", *paths, "--out", str(folder), "--quiet", *spec["argv"]])
    try:
        args.func(args)
    except cli.UsageError as err:
        raise ValueError(str(err)) from None
    return json.loads((folder / "summary.json").read_text())


def _fit_problem(spec: dict, folder: Path | None):
    """Fit one InverseProblem with the spec's backend; write summary.json and posterior.nc into ``folder``."""
    import warnings

    backend = spec["backend"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is on the result
        if isinstance(backend, str):
            fitter, fit_options = _backend_by_name(spec["backend_argv"])
            posterior = fitter.fit(spec["problem"], **fit_options)
        else:
            posterior = backend.fit(spec["problem"])
    summary = posterior.summary()
    if folder is not None:
        from jrinfer._io import write_text

        write_text(folder / "summary.json", json.dumps(summary, indent=2, default=_json_default))
        posterior.to_netcdf(folder / "posterior.nc", overwrite=True)
    return posterior, summary


def _backend_by_name(argv: list[str]):
    """The backend and its ``fit()`` keywords of ``jrinfer fit`` arguments ``argv`` (``--backend NAME ...``),
    built by ``jrinfer fit``'s own code (:func:`jrinfer.cli._backend`); quiet (the item's output is its log)."""
    from jrinfer import cli

    err = io.StringIO()
    try:
        with redirect_stderr(err):
            # --kind: required by the parser, not read by the backend
            args = cli.build_parser().parse_args(["fit", "-", "--kind", "spectrum", "--out", "-", "--quiet", *argv])
    except SystemExit:
        last = err.getvalue().strip().splitlines()[-1:] or ["bad option"]
        raise ValueError(f"options: {last[0].split('error: ', 1)[-1]}") from None
    try:
        return cli._backend(args)
    except cli.UsageError as bad:
        raise ValueError(f"options: {bad}") from None


def _problem_specs(problems, backend, seed, options: Mapping) -> list[dict]:
    from jrinfer import _checks
    from jrinfer._rng import seed_to_int

    if not isinstance(options, Mapping):
        raise ValueError(f"options: expected a mapping of backend options, got {type(options).__name__}")
    if isinstance(backend, str):
        _checks.check_option("backend", backend, ("laplace", "nuts", "smc"))
    elif not callable(getattr(backend, "fit", None)):
        raise ValueError(f"backend: expected 'laplace', 'nuts', 'smc' or an object with fit(problem), got {backend!r}")
    elif options:
        raise ValueError(f"options: {', '.join(map(str, options))} configure a backend given by name ('laplace', "
                         f"'nuts', 'smc'); a backend object ({type(backend).__name__}) carries its own settings")
    seed = seed_to_int(seed)
    argv = None
    if isinstance(backend, str):
        from jrinfer.cli import BACKEND_OPTIONS

        actions = {k: a for k, a in _fit_actions().items() if a.dest in BACKEND_OPTIONS}
        for key in options:
            if _option_name(key) not in actions:
                raise ValueError(f"options: {key!r} is not a backend option; with InverseProblems options takes "
                                 f"{', '.join(BACKEND_OPTIONS)} (the seed is the seed argument; data options such as "
                                 "picks or fmin apply to files)")
        argv = ["--backend", backend, "--seed", str(seed)] + _option_argv(dict(options), actions, "options")
        _backend_by_name(argv)  # bad values are refused here, before any task starts
    width = max(4, len(str(len(problems))))
    return [
        {"id": f"{i:0{width}d}", "path": "", "problem": p, "backend": backend, "backend_argv": argv, "seed": seed,
         "meta": {}}
        for i, p in enumerate(problems, start=1)
    ]


def _file_specs(items, backend, kind, options: Mapping, per_channel: bool = False) -> list[dict]:
    """Validated file items: id, resolved path, ``jrinfer fit`` arguments and extra columns.

    With ``per_channel``, each row becomes one item per channel of its picks.
    """
    from jrinfer import _checks

    if not isinstance(backend, str):
        raise ValueError(f"backend: files are fitted through jrinfer fit; expected 'laplace', 'nuts', 'smc' or 'npe', "
                         f"got {backend!r}")
    _checks.check_option("backend", backend, ("laplace", "nuts", "smc", "npe"))
    if kind is None:
        raise ValueError("kind: expected 'spectrum' or 'evoked' to fit files, got None")
    _checks.check_option("kind", kind, ("spectrum", "evoked"))
    actions = _fit_actions()
    base = ["--kind", kind, "--backend", backend] + _option_argv(dict(options), actions, "options")
    if backend == "npe" and "--estimator" not in base:
        raise ValueError("backend 'npe' needs a trained estimator: options={'estimator': DIR} (CLI: --estimator DIR, "
                         "made by jrinfer train-npe)")
    rows = [it if isinstance(it, Mapping) else {"path": it} for it in items]
    per_condition = list(dict.fromkeys(k for r in rows for k in r if str(k).startswith(_PATH_PREFIX)))
    if per_condition and any(r.get("path") for r in rows):
        raise ValueError(_both_path_kinds("items", per_condition))
    default_conditions = _option_value(options, actions, "conditions")
    if per_channel and (default_conditions or any(_option_value(r, actions, "conditions") for r in rows)):
        raise ValueError("per_channel (--per-channel) with --conditions: the group effects would count a subject's "
                         "channels as separate subjects; run fit-many once per channel (--picks O1, then --picks O2)")
    width = max(4, len(str(len(rows))))
    specs = []
    for i, row in enumerate(rows, start=1):
        per_item = {k: v for k, v in row.items() if _option_name(k) in actions}
        paths, conditions = _row_paths(i, row, per_condition, per_item, options, actions)
        path = ";".join(paths)
        label = _ITEM_NAME.sub("_", str(row.get("name") or Path(paths[0]).name.split(".")[0]))[:60] or "item"
        meta = {k: v for k, v in row.items() if k != "path"}  # copied to results.csv
        meta.update({f"{_PATH_PREFIX}{c}": p for c, p in zip(conditions, paths) if len(paths) > 1})
        where = f"items[{i - 1}] ({path})"
        common = {"path": path, "paths": paths, "conditions": conditions}
        if not per_channel:
            argv = base + _option_argv(per_item, actions, where)
            specs.append({"id": f"{i:0{width}d}-{label}", **common, "argv": argv, "meta": meta})
            continue
        picks = _option_value(per_item, actions, "channels") or _option_value(options, actions, "channels")
        channels = list(dict.fromkeys(c.strip() for c in str(picks or "").split(",") if c.strip()))
        if not channels:
            raise ValueError(f"per_channel (--per-channel): row {i} ({path}) has no channels to split; give picks "
                             "(options['picks'], --picks or a picks column), e.g. O1,O2")
        rest = {k: v for k, v in per_item.items() if actions[_option_name(k)].dest != "channels"}
        for channel in channels:
            argv = base + _option_argv({**rest, "picks": channel}, actions, where)
            specs.append({"id": f"{i:0{width}d}-{label}-{_ITEM_NAME.sub('_', channel)[:30]}", **common,
                          "argv": argv, "meta": {**meta, "channel": channel}})
    # the arguments as jrinfer fit reads them: bad defaults stop the run before any task starts; a
    # row's bad value is that row's error (recorded, the others go on)
    from jrinfer import cli

    parser = cli.build_parser()

    def refused(argv):
        err = io.StringIO()
        try:
            with redirect_stderr(err):
                args = parser.parse_args(["fit", "DATA", "--out", "-", *argv])
        except SystemExit:
            last = err.getvalue().strip().splitlines()[-1:] or ["bad option"]
            return last[0].split("error: ", 1)[-1]
        try:
            cli._check_backend_options(args)  # options given to a backend or kind they do not apply to
            if args.backend != "npe":  # --fix/--vary/--prior names, before any file is read
                cli._check_names_before_reading(args)
        except cli.UsageError as bad:
            msg = str(bad)
            if msg.startswith("--condition applies"):  # a manifest column named "condition" is that option
                msg += ("; a manifest column 'condition' is jrinfer fit's --condition: name a label column "
                        "otherwise (e.g. 'state')")
            return msg
        return None

    message = refused(base)
    if message:
        raise ValueError(f"options: {message}")
    for spec in specs:
        message = refused(spec["argv"])
        if message:
            spec["invalid"] = f"manifest row {spec['id']}: {message}"
    return specs


def _option_value(values: Mapping, actions: dict, dest: str):
    """The value in ``values`` (keyed by option name or flag) of the ``jrinfer fit`` option stored in ``dest``."""
    for key, value in values.items():
        action = actions.get(_option_name(key))
        if action is not None and action.dest == dest and value not in (None, ""):
            return value
    return None


def _row_paths(i: int, row: Mapping, per_condition: list, per_item: Mapping, options: Mapping, actions: dict):
    """A manifest row's files (one per condition with ``--conditions``) and its condition names.

    With conditions, the row names one file per condition in
    ``path_<condition>`` columns; a single ``path`` serves only an evoked
    file holding every condition (one ``--event-id`` per condition).
    """
    text = _option_value(per_item, actions, "conditions") or _option_value(options, actions, "conditions")
    conditions = [c.strip() for c in str(text or "").split(",") if c.strip()]
    where = f"row {i}"
    if conditions and not (_option_value(per_item, actions, "vary") or _option_value(options, actions, "vary")):
        raise ValueError(f"{where}: --conditions {','.join(conditions)} needs --vary: the parameters that may differ "
                         "between conditions (e.g. --vary a,b,gain)")
    expected = [f"{_PATH_PREFIX}{c}" for c in conditions]
    if per_condition and not conditions:
        named = ",".join(k[len(_PATH_PREFIX):] for k in per_condition)
        raise ValueError(f"{where}: the manifest names one file per condition ({', '.join(per_condition)}) but no "
                         f"conditions are given; pass --conditions {named} and --vary (or conditions and vary columns)")
    if per_condition:
        extra = [k for k in per_condition if k not in expected]
        missing = [k for k in expected if not row.get(k)]
        if extra or missing:
            what = (f"column(s) {', '.join(extra)} name no condition of --conditions {','.join(conditions)}" if extra
                    else f"no file in {', '.join(missing)}")
            raise ValueError(f"{where}: {what}; expected one file column per condition: {', '.join(expected)}")
        paths = [row[k] for k in expected]
    else:
        if not isinstance(row.get("path"), (str, os.PathLike)) or not str(row.get("path")):
            raise ValueError(f"{where}: expected a file path or a dict with a 'path', got {dict(row)!r}")
        paths = [row["path"]]
        ids = str(_option_value(per_item, actions, "event_id") or _option_value(options, actions, "event_id") or "")
        if conditions and len([e for e in ids.split(",") if e.strip()]) != len(conditions):
            raise ValueError(
                f"{where}: --conditions {','.join(conditions)} fits one file per condition: give the manifest one "
                f"column per condition, {', '.join(expected)}, in place of 'path' (a single 'path' serves only an "
                "evoked file holding every condition, with one --event-id per condition)"
            )
    return [str(Path(p).expanduser().resolve()) for p in paths], conditions


def _fit_actions(fit=None) -> dict:
    """``jrinfer fit``'s options that a cohort may set, by name (flag without dashes, ``_`` for ``-``)."""
    if fit is None:
        from jrinfer import cli

        fit = cli.build_parser()._subparsers._group_actions[0].choices["fit"]
    out = {}
    for action in fit._actions:
        if not action.option_strings or action.dest in _OWN_OPTIONS:
            continue
        for name in [action.dest, *action.option_strings]:
            out[_option_name(name)] = action
    return out


def fit_option_actions(fit=None) -> list:
    """The argparse actions of ``jrinfer fit`` (parser ``fit``) that ``jrinfer fit-many`` takes as defaults."""
    seen, out = set(), []
    for action in _fit_actions(fit).values():
        if id(action) not in seen:
            seen.add(id(action))
            out.append(action)
    return out


def _option_name(name: str) -> str:
    return str(name).lstrip("-").replace("-", "_").lower()


def _option_argv(values: Mapping, actions: dict, where: str) -> list[str]:
    """``{"units": "uV^2/Hz", "fix": "A=3;B=20"}`` -> ``["--units", "uV^2/Hz", "--fix", "A=3", "--fix", "B=20"]``."""
    argv: list[str] = []
    for key, value in values.items():
        action = actions.get(_option_name(key))
        if action is None:
            known = sorted({a.option_strings[-1].lstrip("-") for a in actions.values()})
            raise ValueError(f"{where}: unknown option {key!r}; jrinfer fit options: {', '.join(known)}")
        flag = action.option_strings[0]
        if action.nargs == 0:  # store_true
            truthy = value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "y")
            if truthy:
                argv.append(flag)
        elif type(action).__name__ == "_AppendAction":
            parts = value if isinstance(value, (list, tuple)) else [s for s in str(value).split(";") if s.strip()]
            for part in parts:
                argv += [flag, str(part).strip()]
        elif value is not None:
            if action.dest in ("prior", "estimator"):  # workers may run elsewhere: an absolute path
                value = Path(str(value)).expanduser().resolve()
            argv += [flag, str(value)]
    return argv


def _summary_row(spec: dict, summary: dict) -> dict:
    """One results.csv row from a fit's summary.json."""
    row = {
        "item": spec["id"],
        "path": spec["path"],
        "status": "ok",
        "error": "",
        "fit_status": summary.get("status"),
        "fit_status_message": summary.get("status_message") or "",
        "backend": summary.get("backend"),
        "log_evidence": summary.get("log_evidence"),
        "n_warnings": len(summary.get("warnings") or []),
        "warnings": " | ".join(summary.get("warnings") or []),
    }
    data = summary.get("data") or {}
    if data.get("channels") is not None:  # jrinfer fit's record of what was fitted
        row["channels"] = ",".join(map(str, data["channels"]))
    row["data_units"] = summary.get("data_units")
    for name, p in (summary.get("parameters") or {}).items():
        # where the fit found the Gaussian marginal misstated, the importance-weighted figures (as it prints them)
        weighted = p.get("weighted_mean") is not None
        row[f"{name}_mean"] = p.get("weighted_mean") if weighted else p.get("mean")
        row[f"{name}_sd"] = p.get("weighted_sd") if weighted else p.get("sd")
        if weighted:
            row[f"{name}_marginal"] = p.get("marginal")
    for key, value in (summary.get("fit_quality") or {}).items():
        if _is_scalar(value):
            row[f"fit_{key}"] = value
    for key, value in (summary.get("diagnostics") or {}).items():
        if _is_scalar(value):
            row[f"diag_{key}"] = value
    effects = summary.get("condition_effects") or {}  # a fit of conditions: each difference and its evidence
    for name, per in (effects.get("effects") or {}).items():
        for condition, e in per.items():
            key = f"effect_{name}_{condition}"
            if "fixed" in e:
                row[f"{key}_fixed"] = e["fixed"]
                continue
            row.update({f"{key}_mean": e.get("mean"), f"{key}_lower": e.get("lower"), f"{key}_upper": e.get("upper"),
                        f"{key}_log_bf": e.get("log_bayes_factor")})
    if effects.get("no_difference"):
        row["any_difference_log_bf"] = effects["no_difference"].get("log_bayes_factor")
    npe = summary.get("npe") or {}  # how far an amortized posterior can be trusted for this item
    for key in ("calibrated", "regime", "regime_most_probable", "out_of_distribution"):
        if key in npe:
            row[f"npe_{key}"] = npe[key]
    ood = (summary.get("diagnostics") or {}).get("out_of_distribution")
    if isinstance(ood, dict) and _is_scalar(ood.get("mahalanobis2")):
        row["npe_mahalanobis2"] = ood["mahalanobis2"]
        row["npe_training_mahalanobis2_max"] = ood.get("training_mahalanobis2_max")
    row.update({k: v for k, v in spec["meta"].items() if k not in row})
    return row


def _error_row(spec: dict, message: str) -> dict:
    row = {"item": spec["id"], "path": spec["path"], "status": "error", "error": message}
    row.update({k: v for k, v in spec["meta"].items() if k not in row})
    return row


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _json_default(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def _read_result(folder: Path) -> dict | None:
    """The row in ``folder/result.json``, or None if the item is not finished."""
    try:
        return json.loads((folder / "result.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _remove_partials(out: Path) -> None:
    """Remove the ``.partial-*`` folders of attempts that died (no task of this run is writing them)."""
    for p in out.glob(".partial-*"):
        shutil.rmtree(p, ignore_errors=True)


def write_results_csv(path, rows: list[dict]) -> Path:
    """``results.csv``: :data:`RESULT_COLUMNS` first, then every other key in order of first appearance."""
    from jrinfer._io import write_text

    columns = list(RESULT_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns and k != "posterior"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return write_text(path, buf.getvalue())


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v
