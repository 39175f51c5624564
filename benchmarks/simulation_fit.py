"""Simulation-method spectral fit of one EEGMAT channel with common-random-number Jacobians.

``SpectrumObservation(method="simulation")`` simulates 30 s (+5 s transient)
at dt = 0.1 ms and Welch-averages (4 s segments). Today its gradients go
through reverse-mode autodiff of the torch time loop (22 s per reverse pass
for 1 s of signal, issue 13). This script wires the model-level
:meth:`jrinfer.JansenRit.simulated_psd` (native kernel, central differences on
common random numbers, one batch of 2K + 1 simulations per Jacobian) into the
observation's simulation branch *for this process only* (the observation
module is not changed; the patch below is the proposed wiring) and times a
variational Laplace fit of EEGMAT subject 0, channel O1 (needs
``JRINFER_DATA``). It prints the wall time, iterations, status and free
energy, and the time of one prediction + Jacobian.

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
from jrinfer.model import JansenRit
from jrinfer.observation import Prediction, _interp


def wired_neural_psd(self, model_params, freqs):
    """SpectrumObservation.neural_psd with the simulation branch calling JansenRit.simulated_psd."""
    if self.method == "transfer":
        return _original(self, model_params, freqs)
    model = JansenRit(noise=self.noise, noise_on=self.noise_on, **model_params)
    fmax = float(freqs.max())
    record_every = max(1, int(1.0 / (self.dt * 4.0 * max(fmax, 1.0))))
    upper = model.fixed_points().upper()
    start = torch.where(upper.stable.unsqueeze(-1), upper.state, torch.zeros_like(upper.state))
    spec = model.simulated_psd(
        self.duration, self.dt, segment=self.segment, record_every=record_every, transient=self.transient,
        seed=self.seed, initial_state=start.detach(),
    )
    valid = ~spec.diverged
    reasons = ["simulation diverged (non-finite values)"] * int((~valid).sum())
    logp = torch.log(spec.psd.clamp_min(1e-300))
    psd = torch.exp(_interp(freqs, spec.freqs, logp))
    psd = torch.where(valid.unsqueeze(-1), psd, torch.ones_like(psd))
    return Prediction(psd, valid, reasons)


_original = SpectrumObservation.neural_psd


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30.0, help="simulated seconds per prediction")
    ap.add_argument("--threads", type=int, default=None, help="torch / native kernel threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}")
    SpectrumObservation.neural_psd = wired_neural_psd
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
    print(f"fit: {t_fit:.1f} s, {post.diagnostics.get('n_iter')} iterations, status {post.status}, "
          f"F = {post.log_evidence:.2f} nats")


if __name__ == "__main__":
    main()
