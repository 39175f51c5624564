"""Simulation-method spectral fit of one EEGMAT channel with common-random-number Jacobians.

``SpectrumObservation(method="simulation")`` simulates 30 s (+5 s transient)
at dt = 0.1 ms and Welch-averages (4 s segments); its gradients are central
differences on common random numbers in the native kernel (one batch of
2K + 1 simulations per Jacobian, :meth:`jrinfer.JansenRit.simulated_psd`).
This script times a variational Laplace fit (default multi-start) of EEGMAT
subject 0, channel O1 (needs ``JRINFER_DATA``). It prints the wall time,
iterations, starts, status and free energy, and the time of one prediction +
Jacobian.

Run: ``python benchmarks/simulation_fit.py [--duration 30] [--threads 2]``
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import torch

import jrinfer
from jrinfer import InverseProblem, SpectrumObservation
from jrinfer.backends.laplace import VariationalLaplace
from jrinfer.observation import Prediction, _interp


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30.0, help="simulated seconds per prediction")
    ap.add_argument("--threads", type=int, default=None, help="torch / native kernel threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}")
    data = jrinfer.datasets.eegmat_spectrum(subject=0, channels=("O1",))
    obs = SpectrumObservation(method="simulation", duration=args.duration)
    problem = InverseProblem(obs, obs.default_prior(data), data)
    form = problem.gaussian_form()
    print(f"problem: {len(form.names)} free parameters ({', '.join(form.names)}), {data.freqs.numel()} frequencies, "
          f"{args.duration:g} s simulated per prediction")
    z = form.prior_mean.clone()
    t0 = time.perf_counter()
    J = torch.func.jacrev(form.f)(z)
    t_jac = time.perf_counter() - t0
    print(f"one prediction + Jacobian: {t_jac:.2f} s (finite: {bool(torch.isfinite(J).all())})")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        post = VariationalLaplace(jacobian="reverse").fit(problem, n_draws=200, n_predictive=0)
    t_fit = time.perf_counter() - t0
    print(f"fit: {t_fit:.1f} s, {post.diagnostics.get('n_iter')} iterations, {post.diagnostics.get('n_starts')} "
          f"start(s), status {post.status}, F = {post.log_evidence:.2f} nats, R^2 {post.fit_quality['r2_log_power']:.3f}")


if __name__ == "__main__":
    main()
