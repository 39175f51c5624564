"""Problems shared by the tests and the benchmark scripts (benchmarks put tests/ on sys.path, as for selfcontained)."""

from __future__ import annotations

import math

import torch


def compare_backends_problem():
    """The ``compare_backends`` notebook's problem: a JR spectrum (transfer method) with Welch noise of 20 segments.

    JR 1995 constants, p_mean 45 fixed, p_std 1, gain 3e-3, 1/f amplitude 2 and exponent 1.2, noise precision 20;
    2-30 Hz in 0.5 Hz steps, noise seed 11. Free: a, b, gain, ap_amplitude, ap_exponent, log_precision (the
    default prior of ``free=("a", "b", "p_mean")`` with p_mean fixed). The posterior of log a has SD about 0.004.
    """
    from jrinfer import InverseProblem, Prior, SpectrumData, SpectrumObservation

    f64 = torch.float64
    n_seg, p_mean = 20, 45.0
    freqs = torch.arange(2.0, 30.01, 0.5, dtype=f64)
    obs = SpectrumObservation(floor=False)
    template = SpectrumData.from_arrays(freqs, torch.ones(1, freqs.numel(), dtype=f64), units="uV^2/Hz",
                                        n_segments=n_seg)
    truth = {"a": 100.0, "b": 50.0, "p_mean": p_mean, "p_std": 1.0, "gain": 3e-3, "ap_amplitude": 2.0,
             "ap_exponent": 1.2, "log_precision": math.log(n_seg)}
    truth = {k: torch.tensor(v, dtype=f64) for k, v in truth.items()}
    y = obs.sample(obs.predict(truth, template), truth, template, torch.Generator().manual_seed(11))
    data = SpectrumData.from_arrays(freqs, y, units="uV^2/Hz", n_segments=n_seg)
    spec = obs.default_prior(data, free=("a", "b", "p_mean"))
    spec["distributions"].pop("p_mean")
    spec["fixed"]["p_mean"] = p_mean
    return InverseProblem(obs, Prior.from_dict(spec), data)


def npe_benchmark_cases(estimator_dir, p_means, eegmat=()):
    """The NPE benchmarks' estimator and cases: ``(estimator, [(label, data, extra)])``.

    ``estimator_dir`` None trains the test suite's estimator (``train-npe --kind spectrum --simulations 4000
    --seed 1``) into a temporary folder. Cases: the tests' simulated spectrum (``tests/test_npe.py``
    ``_jr_spectrum``, noise seed 101) per ``p_means`` entry, with the truth's own predictive R^2 in ``extra``, then
    each EEGMAT recording named in ``eegmat`` (e.g. ``"Subject00_1"``; O1/O2, read through ``jrinfer fit`` onto the
    estimator's grid from ``$JRINFER_DATA``).
    """
    import os
    import tempfile

    from test_npe import _jr_spectrum, _truth_r2

    from jrinfer.backends.npe import AmortizedPosterior
    from jrinfer.cli import _load_data, _npe_estimator, build_parser
    from jrinfer.cli import main as cli

    path = estimator_dir
    if path is None:
        path = os.path.join(tempfile.mkdtemp(), "est")
        cli(["train-npe", "--kind", "spectrum", "--simulations", "4000", "--out", path, "--calibrate", "0",
             "--seed", "1", "--no-progress"])
    est = AmortizedPosterior.load(path)
    cases = []
    for p in p_means:
        data, truth = _jr_spectrum(est, p, seed=101)
        cases.append((f"p={p:g}", data, {"truth_r2": _truth_r2(est, data, truth)}))
    for name in eegmat:
        edf = os.path.join(os.environ["JRINFER_DATA"], "eegmat", f"{name}.edf")
        a = build_parser().parse_args(["fit", edf, "--kind", "spectrum", "--picks", "O1,O2", "--backend", "npe",
                                       "--estimator", path, "--out", tempfile.mkdtemp()])
        _npe_estimator(a)  # sets the estimator's grid on the arguments
        cases.append((f"EEGMAT {name} O1/O2", _load_data(a), {}))
    return est, cases
