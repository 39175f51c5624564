"""MCMC through PyMC: the log-likelihood Op at one point, and a full NUTS run.

Problem (``--problem``): ``contract``, a single-channel JR spectrum (2-40 Hz
in 0.5 Hz steps, 77 frequencies; transfer method, default prior: 6 JR
constants + 1/f, floor and a log precision, 11 free parameters), simulated
from the observation itself in the stable regime (the contract suite's
problem, p_mean = 60); or ``near-gaussian``, the 6-parameter spectrum of the
NUTS-vs-VL test (a, b, gain, 1/f, log precision; p_mean 45 fixed; 100
segments).

Times

* one log-likelihood + gradient through the Op (``op.evaluate``, which is
  what PyMC's ``perform`` calls), median over ``--repeats`` calls;
* the same through the compiled PyMC ``logp_dlogp`` function (priors + Op);
* NUTS, ``--chains`` x (``--tune`` + ``--draws``), sequential chains
  (``--cores 1``, default) or ``--cores`` worker processes: wall time of sampling (compilation excluded and reported
  apart), minimum bulk ESS per second, divergences, R-hat.

Run: ``python benchmarks/mcmc.py [--threads 1] [--chains 4 --tune 1000 --draws 1000] [--cores 2]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import jrinfer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--cores", type=int, default=1, help="processes for the chains (PyMC multiprocessing)")
    ap.add_argument("--skip-nuts", action="store_true")
    ap.add_argument("--problem", default="contract", choices=["contract", "near-gaussian"],
                    help="contract: the contract suite's 11-parameter spectrum; near-gaussian: the 6-parameter "
                    "spectrum of the NUTS-vs-VL test (tests/test_pymc.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_backend_contract import _spectrum_problem

    import pymc

    from jrinfer.backends.pymc import NUTS, loglike_op, problem_to_pymc

    print(f"jrinfer {jrinfer.__file__}; pymc {pymc.__version__}; torch {torch.__version__}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    if args.problem == "contract":
        problem = _spectrum_problem()
    else:
        from test_pymc import _near_gaussian_jr_problem

        problem = _near_gaussian_jr_problem()
    print(f"problem {args.problem}: {problem.n_params} free parameters, fused path {problem.has_fast_path}")
    z = (problem.prior.to_unconstrained(problem.prior.median()) + 0.003 * torch.arange(problem.n_params)).numpy()
    op = loglike_op(problem)
    for _ in range(10):
        op.evaluate(z)
    times = []
    for i in range(args.repeats):
        zi = z + 1e-4 * (i % 7)
        t0 = time.perf_counter()
        op.evaluate(zi)
        times.append(time.perf_counter() - t0)
    print(f"Op log-likelihood + gradient, one set ({problem.n_params} parameters): {1e3 * statistics.median(times):.2f} ms (median)")
    model = problem_to_pymc(problem)
    t0 = time.perf_counter()
    f = model.logp_dlogp_function(ravel_inputs=True)
    f.set_extra_values({})
    print(f"compile logp_dlogp: {time.perf_counter() - t0:.1f} s")
    times = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        f(z + 1e-4 * (i % 7))
        times.append(time.perf_counter() - t0)
    print(f"compiled logp + dlogp (priors + Op): {1e3 * statistics.median(times):.2f} ms (median)")
    if args.skip_nuts:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        import resource

        t0, c0 = time.perf_counter(), time.process_time()
        ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        nuts = NUTS(chains=args.chains, tune=args.tune, draws=args.draws, seed=0, cores=args.cores)
        post = nuts.fit(problem, n_predictive=100)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_children = (ch1.ru_utime - ch0.ru_utime) + (ch1.ru_stime - ch0.ru_stime)
    d = post.diagnostics
    n_leap = None
    if "tree_depth" in post.sample_stats:
        n_leap = int((2 ** post.sample_stats["tree_depth"] - 1).sum())
    print(
        f"NUTS {args.chains} x ({args.tune} + {args.draws}), cores={args.cores}: sampling {d['sampling_time_s']:.1f} s "
        f"(fit() total {total:.1f} s incl. Laplace start, compile and assembly; CPU time of this process "
        f"{cpu:.1f} s and of PyMC's worker processes {cpu_children:.1f} s, "
        f"load {os.getloadavg()[0]:.1f}); ESS bulk min {d['ess_bulk_min']:.0f}, "
        f"tail min {d['ess_tail_min']:.0f}; ESS/s {d['ess_per_second']:.2f}; R-hat max {d.get('rhat_max', float('nan')):.4f}; "
        f"divergences {d['divergences']}; tree depth saturated {d['tree_depth_saturated']:.3f}; "
        f"log-likelihood evaluations {d['loglike_evaluations']} ({d['loglike_failures']} -inf); "
        f"mean tree depth {np.mean(post.sample_stats['tree_depth']):.2f}; draws' leapfrog steps ~{n_leap}"
    )
    print("status", post.status, "|", "; ".join(post.warnings))


if __name__ == "__main__":
    main()
