"""Variational Laplace engine overhead on a toy nonlinear regression.

The toy problem: 3 parameters, 50 data points, ``f(θ) = θ0 exp(-θ1 t) + θ2``
(an exponential decay plus offset on t in [0, 5) s), i.i.d. Gaussian noise of
sd 0.05 whose log precision is estimated, N(μ, I) priors. One model
evaluation costs about 20 µs, so the time of a fit is the engine's own
overhead. The script prints the median wall time of ``fit_function`` (warm:
after one warm-up fit in the process), the number of iterations, the free
energy, and the time per iteration; ``--profile`` prints a cProfile of one
fit (top 25 by cumulative time).

``--baseline REF`` also loads ``jrinfer/backends/_vl_engine.py`` as of git
revision ``REF`` and times both engines alternately in the same process
(the machine is shared, so only ratios measured in one run are meaningful).

Run: ``python benchmarks/vl_overhead.py [--repeats 21] [--profile] [--baseline 051a930]``
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from jrinfer.backends.laplace import VariationalLaplace

D = torch.float64


def toy_problem():
    """Return ``(f, y, prior_mean, prior_cov)`` of the toy regression (fixed seed)."""
    t = torch.linspace(0.0, 5.0, 51, dtype=D)[:50]
    truth = torch.tensor([2.0, 0.7, 0.3], dtype=D)

    def f(p):
        return p[0] * torch.exp(-p[1] * t) + p[2]

    g = torch.Generator().manual_seed(0)
    y = f(truth) + 0.05 * torch.randn(50, generator=g, dtype=D)
    prior_mean = torch.tensor([1.0, 1.0, 0.0], dtype=D)
    prior_cov = torch.eye(3, dtype=D)
    return f, y, prior_mean, prior_cov


def baseline_engine(ref: str):
    """``LaplaceEngine`` class from ``jrinfer/backends/_vl_engine.py`` at git revision ``ref``."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(
        ["git", "-C", str(root), "show", f"{ref}:jrinfer/backends/_vl_engine.py"],
        check=True, capture_output=True, text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "_vl_engine_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("_vl_engine_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.LaplaceEngine


def paired_times(fns: dict, repeats: int) -> dict:
    """Median wall time of each callable, run alternately ``repeats`` times."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--jacobian", default="auto")
    ap.add_argument("--baseline", default=None, help="git revision of the engine to compare against")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's; 1 avoids contention on a shared machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}")
    f, y, mu, C = toy_problem()
    engine = VariationalLaplace(jacobian=args.jacobian)
    out = []

    def fit():
        out.append(engine.fit_function(f, y, mu, C))

    fit()  # warm-up (torch.func set-up, strategy choice)
    z = mu.clone()
    t_eval = median_time(lambda: f(z), 200)
    t_fit = median_time(fit, args.repeats)
    res = out[-1]
    print(f"one model evaluation      {t_eval * 1e3:8.3f} ms")
    print(f"toy fit (median of {args.repeats})  {t_fit * 1e3:8.2f} ms  ({res.n_iter} iterations, {res.status}, "
          f"F = {res.free_energy:.6f} nats, {t_fit / res.n_iter * 1e3:.2f} ms/iteration; {res.message})")
    print(f"mean = {res.mean.tolist()}, hyper_mean = {res.hyper_mean.tolist()}")
    if args.baseline:
        old = baseline_engine(args.baseline)(jacobian=args.jacobian)
        old_out = []
        old_out.append(old.fit_function(f, y, mu, C))  # warm-up
        t = paired_times({"new": fit, "old": lambda: old_out.append(old.fit_function(f, y, mu, C))}, args.repeats)
        r0 = old_out[-1]
        print(f"paired with {args.baseline}: {t['old'] * 1e3:.2f} ms -> {t['new'] * 1e3:.2f} ms "
              f"({t['old'] / t['new']:.2f}x); baseline {r0.n_iter} iterations, F = {r0.free_energy:.6f}; "
              f"|dF| = {abs(r0.free_energy - res.free_energy):.2e}, max|dmean| = "
              f"{float((r0.mean - res.mean).abs().max()):.2e}")
    if args.profile:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(5):
            fit()
        pr.disable()
        pstats.Stats(pr).sort_stats("cumulative").print_stats(25)
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
