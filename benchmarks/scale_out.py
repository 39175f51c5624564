"""Scale-out throughput: cohort fits per minute and simulations per second, no Dask vs 1 vs 2 workers.

Cohort: ``--items`` synthetic spectra (20 frequencies, the fixture of
tests/test_distributed.py, different noise seeds) fitted with variational
Laplace through ``jrinfer.fit_many`` exactly as ``jrinfer fit-many`` does
(every item the ``jrinfer fit`` path: summary.json, posterior.nc, fit.png),
with ``client=None`` (in this process), a LocalCluster of 1 and one of 2
worker processes (1 thread each), all kept up and measured in interleaved
rounds (medians), so the three are compared under the same load. Cluster
start-up and each process's first calls are timed separately.

Simulation: ``--sims`` Jansen-Rit spectra (p_mean, C drawn uniformly, white
input noise, 8 s after a 1 s transient, dt = 0.1 ms, v at 1 kHz, Welch 2 s)
through ``jrinfer.simulate_many`` in chunks of ``--chunk`` with the same root
seed on each executor; the outputs are checked bit-identical. A second
workload of tiny chunks (one 0.1 s simulation per task) measures the per-task
overhead of the scheduler and serialisation.

    python benchmarks/scale_out.py            # about 3-4 minutes on 2 idle cores
    python benchmarks/scale_out.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import tempfile
import time
from pathlib import Path


def _load() -> str:
    return "%.2f %.2f %.2f" % os.getloadavg()


def _cohort(folder: Path, n: int) -> list[Path]:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_distributed import _write_spectrum

    return [_write_spectrum(folder / f"s{i:03d}.csv", seed=100 + i, p_mean=60.0 + 3 * i) for i in range(n)]


def _draws(n: int):
    import torch

    g = torch.Generator().manual_seed(3)
    return {
        "p_mean": 60.0 + 80.0 * torch.rand(n, generator=g, dtype=torch.float64),
        "C": 100.0 + 60.0 * torch.rand(n, generator=g, dtype=torch.float64),
        "p_std": 30.0,
    }


def _warm_up(file, folder) -> None:
    """First calls in a fresh process (imports, first model evaluations, matplotlib), timed apart."""
    import torch

    from jrinfer import fit_many, simulate_many

    torch.set_num_threads(1)
    simulate_many(_draws(4), duration=1.0, transient=0.5, segment=0.5, chunk_size=2, progress=False)
    fit_many([file], "laplace", out=Path(folder) / f"warm-{os.getpid()}", kind="spectrum",
             options={"units": "uV^2/Hz"}, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=12)
    ap.add_argument("--sims", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (medians reported)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.items, args.sims, args.chunk, args.rounds = 4, 256, 64, 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from jrinfer import fit_many, simulate_many
    from jrinfer.distributed import dask_client

    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} cores, load {_load()}")
    tmp = Path(tempfile.mkdtemp(prefix="jrinfer-bench-"))
    files = _cohort(tmp, args.items)
    sim_kw = dict(duration=8.0, transient=1.0, segment=2.0, record_every=10, root_seed=1, progress=False)
    draws = _draws(args.sims)
    tiny = _draws(200)
    tiny_kw = dict(duration=0.1, transient=0.0, segment=0.05, record_every=10, root_seed=1, progress=False,
                   chunk_size=1)

    # All three executors stay up and are measured in interleaved rounds (paired under the same load):
    # an idle worker costs almost nothing, and the median over rounds damps the load swings.
    import statistics

    times: dict = {}
    clients = {0: None}
    t = time.perf_counter()
    _warm_up(files[0], str(tmp))
    startup = {0: time.perf_counter() - t}
    reference = simulate_many(draws, chunk_size=args.chunk, **sim_kw)
    for workers in (1, 2):
        t = time.perf_counter()
        client = dask_client(n_workers=workers)
        client.wait_for_workers(workers)
        client.run(_warm_up, files[0], str(tmp))  # on every worker
        startup[workers] = time.perf_counter() - t
        clients[workers] = client
    try:
        for r in range(args.rounds):
            for workers, client in clients.items():
                t = time.perf_counter()
                sims = simulate_many(draws, chunk_size=args.chunk, client=client, **sim_kw)
                times.setdefault(("sim", workers), []).append(time.perf_counter() - t)
                assert torch.equal(sims.psd, reference.psd), "not bit-identical"
                t = time.perf_counter()
                simulate_many(tiny, client=client, **tiny_kw)
                times.setdefault(("tiny", workers), []).append(time.perf_counter() - t)
                t = time.perf_counter()
                rows = fit_many(files, "laplace", client=client, out=tmp / f"out-{workers}-{r}", kind="spectrum",
                                options={"units": "uV^2/Hz"}, progress=False)
                times.setdefault(("fit", workers), []).append(time.perf_counter() - t)
                assert all(r_["status"] == "ok" for r_ in rows), rows
            print(f"round {r + 1}/{args.rounds}: load {_load()}")
    finally:
        for client in clients.values():
            if client is not None:
                cluster = client.cluster
                client.close()
                cluster.close()
    results = {key: statistics.median(v) for key, v in times.items()}
    chunk_bytes = len(pickle.dumps(reference.psd[: args.chunk].clone()))
    print(f"\nsimulation: {args.sims} sims of 8 s in chunks of {args.chunk}; cohort: {args.items} VL fits; "
          f"result bytes per chunk {chunk_bytes}")
    print("| executor | start + warm-up (s) | simulations/s | cohort fits/min | tiny tasks/s |")
    print("|---|---:|---:|---:|---:|")
    for w, label in ((0, "no Dask (this process)"), (1, "LocalCluster, 1 worker"), (2, "LocalCluster, 2 workers")):
        start = f"{startup[w]:.1f}"
        print(f"| {label} | {start} | {args.sims / results['sim', w]:.0f} | {60 * args.items / results['fit', w]:.1f} "
              f"| {200 / results['tiny', w]:.0f} |")
    print("bit-identical simulations on every executor: yes")


if __name__ == "__main__":
    main()
