"""Cost of predicting the expected Welch estimate (spectral window) instead of the PSD at bin centres.

Times ``InverseProblem.log_likelihood`` at one parameter set and at a batch of
64 prior draws on an EEGMAT-like grid (2-40 Hz in 0.25 Hz steps, 153 bins,
4 s Hann segments), and the variational Laplace fit of
``benchmarks/laplace.py``'s problem (bundled synthetic spectrum, 0.5 Hz grid,
so 2 s segments), with ``window="hann"`` (several ``oversample``) and
``window=None``. Minimum and median over interleaved repeats (the minimum is the
better estimate of the cost on a shared machine).

Run: ``python benchmarks/window.py [--repeats 15] [--fit-repeats 3] [--threads N]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch

import jrinfer
from jrinfer import InverseProblem, SpectrumData, SpectrumObservation
from jrinfer.backends.laplace import VariationalLaplace

CONFIGS = (
    ("point (window=None)", dict(window=None)),
    ("hann, oversample=1", dict(oversample=1)),
    ("hann, oversample=2 (default)", dict(oversample=2)),
    ("hann, oversample=4", dict(oversample=4)),
    ("hann, oversample=8", dict(oversample=8)),
)


def interleaved(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up (builds and caches the window matrix)
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--fit-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")

    f = torch.arange(2.0, 40.001, 0.25, dtype=torch.float64)
    power = 20.0 / f + 5.0 * torch.exp(-0.5 * ((f - 10.0) / 0.5) ** 2) + 0.05
    data = SpectrumData.from_arrays(f, power, n_segments=40, metadata={"seg_length_s": 4.0})
    fns = {}
    for name, kw in CONFIGS:
        obs = SpectrumObservation(**kw)
        problem = InverseProblem(obs, obs.default_prior(data), data)
        one = problem.prior.median()
        batch = problem.prior.sample(64, seed=0)
        fns[(name, 1)] = lambda p=problem, t=one: p.log_likelihood(t)
        fns[(name, 64)] = lambda p=problem, t=batch: p.log_likelihood(t)
    res = interleaved(fns, args.repeats)
    print(f"log_likelihood on 2-40 Hz / 0.25 Hz (153 bins), min of {args.repeats}:")
    for name, _ in CONFIGS:
        (a, b), (c, d) = res[(name, 1)], res[(name, 64)]
        print(f"  {name:30s} 1 set {a * 1e3:7.2f} ms (median {b * 1e3:7.2f})   64 sets {c * 1e3:7.2f} ms (median {d * 1e3:7.2f})")

    synth = jrinfer.datasets.synthetic_spectrum()
    fits, info = {}, {}
    for name, kw in CONFIGS:
        obs = SpectrumObservation(**kw)
        problem = InverseProblem(obs, obs.default_prior(synth), synth)

        def fit(p=problem, n=name):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                post = VariationalLaplace().fit(p, n_draws=1000, n_predictive=200)
            info[n] = (post.diagnostics["n_iter"], post.log_evidence, post.message.split("; ")[-1])

        fits[name] = fit
    res = interleaved(fits, args.fit_repeats)
    print(f"VL fit of the bundled synthetic spectrum (benchmarks/laplace.py's problem), min of {args.fit_repeats}:")
    for name, _ in CONFIGS:
        n_iter, f_ev, jac = info[name]
        print(f"  {name:30s} {res[name][0]:7.2f} s (median {res[name][1]:6.2f})  ({n_iter} iterations, F = {f_ev:.1f}, {jac})")


if __name__ == "__main__":
    main()
