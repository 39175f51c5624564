"""Variational Laplace speed on a single-channel spectral fit.

The bundled synthetic spectrum (79 frequencies, 1-40 Hz) with the default
prior: 10 free parameters (A, B, a, b, C, p_mean, gain, ap_amplitude,
ap_exponent, floor) plus the noise log precision as hyperparameter. Prints
the median wall time of a full fit over several runs (after one warm-up fit
that pays torch.func's one-off set-up), the cost of one model evaluation and
of one Jacobian, and the number of iterations; then the optimisation alone
(``fit_function``) with reverse-mode autograd Jacobians and with the fused
NumPy value + Jacobian of the transfer-method spectrum
(``GaussianForm.value_and_jacobian``), alternated.

``--problem canonical8``: an 8-parameter canonical-JR log-spectrum problem written with the
project's own model, the size of the issue's SPM comparison (77 frequencies, 2-40 Hz at 0.5 Hz;
free A, B, a, b, C, p_mean, gain and the 1/f amplitude; 1/f exponent fixed at 1, no floor; the
data one noisy draw from the JR 1995 constants at p_mean = 60 with 30 Welch segments). SPM's own
data and prior for that comparison are not in the repository, so its free energy is not compared.

Run: ``python benchmarks/laplace.py [--repeats 7] [--problem bundled|canonical8]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch

import jrinfer
from jrinfer import InverseProblem, SpectrumObservation
from jrinfer.backends.laplace import VariationalLaplace


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def canonical8_problem() -> InverseProblem:
    """8 free parameters, 77 frequencies: see the module docstring."""
    import math

    from jrinfer import SpectrumData

    f64 = torch.float64
    freqs = torch.arange(2.0, 40.01, 0.5, dtype=f64)
    obs = SpectrumObservation(floor=False)
    template = SpectrumData.from_arrays(freqs, torch.ones(1, freqs.numel(), dtype=f64), units="uV^2/Hz", n_segments=30)
    truth = {"p_mean": 60.0, "p_std": 1.0, "gain": 3e-3, "ap_amplitude": 2.0, "ap_exponent": 1.0,
             "log_precision": math.log(30.0)}
    truth = {k: torch.tensor(v, dtype=f64) for k, v in truth.items()}
    y = obs.sample(obs.predict(truth, template), truth, template, torch.Generator().manual_seed(8))
    data = SpectrumData.from_arrays(freqs, y, units="uV^2/Hz", n_segments=30)
    spec = obs.default_prior(data, free=("A", "B", "a", "b", "C", "p_mean"))
    spec["distributions"].pop("ap_exponent")
    spec["fixed"]["ap_exponent"] = 1.0
    return InverseProblem(obs, spec, data)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--problem", choices=["bundled", "canonical8"], default="bundled",
                    help="the bundled synthetic spectrum (10 parameters) or the 8-parameter canonical-JR problem")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's; 1 avoids contention on a shared machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}")
    if args.problem == "canonical8":
        problem = canonical8_problem()
    else:
        data = jrinfer.datasets.synthetic_spectrum()
        obs = SpectrumObservation()
        problem = InverseProblem(obs, obs.default_prior(data), data)
    form = problem.gaussian_form()
    n, m = form.prior_mean.numel(), form.y.numel()
    print(f"problem: {n} free parameters + 1 log precision, {m} frequencies")

    z = form.prior_mean.clone()
    t_eval = median_time(lambda: form.f(z), 50)
    t_jrev = median_time(lambda: torch.func.jacrev(form.f)(z), 20)
    t_jfwd = median_time(lambda: torch.func.jacfwd(form.f)(z), 20)
    print(f"one model evaluation      {t_eval * 1e3:8.2f} ms")
    print(f"one Jacobian (reverse)    {t_jrev * 1e3:8.2f} ms")
    print(f"one Jacobian (forward)    {t_jfwd * 1e3:8.2f} ms")

    results = []

    def fit():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            results.append(VariationalLaplace().fit(problem, n_draws=1000, n_predictive=200))

    fit()  # warm-up
    t_fit = median_time(fit, args.repeats)
    post = results[-1]
    print(f"full fit (median of {args.repeats})  {t_fit:8.3f} s   ({post.diagnostics['n_iter']} iterations, "
          f"status {post.status}, F = {post.log_evidence:.3f} nats; includes 1000 posterior draws and "
          f"200 posterior-predictive spectra)")

    fits = {}

    def fit_only(mode):
        kw = {"value_and_jacobian": form.value_and_jacobian} if mode == "fused" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fits[mode] = VariationalLaplace(jacobian="auto" if mode == "fused" else mode).fit_function(
                form.f, form.y, form.prior_mean, form.prior_cov, form.hyper_mean, form.hyper_cov,
                form.precision_components, **kw,
            )

    modes = ["reverse"] + (["fused"] if form.value_and_jacobian is not None else [])
    times = {m: [] for m in modes}
    for _ in range(args.repeats):  # alternated: paired on the same load
        for m in modes:
            t0 = time.perf_counter()
            fit_only(m)
            times[m].append(time.perf_counter() - t0)
    for m in modes:
        r = fits[m]
        print(f"optimisation only ({m:7s}) {statistics.median(times[m]):8.3f} s   (fit_function, "
              f"{r.n_iter} iterations, F = {r.free_energy:.6f} nats)")
    if form.value_and_jacobian is not None:
        t_fused = median_time(lambda: form.value_and_jacobian(z), 50)
        print(f"one value + Jacobian (fused NumPy path) {t_fused * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
