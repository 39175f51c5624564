"""Is the JR regime identifiable from a simulated spectrum? Classifiers on NPE's features near the test truths.

For each test truth (``tests/test_npe.py`` ``_jr_spectrum``: JR 1995 constants, a = 100,
b = 50, gain matched to 20/f uV^2/Hz, p_mean = 70 (stable) or 220 (limit cycle)), draws
``--n`` parameter sets from a local box around it (a, b x/÷ 1.25, p_mean x/÷ 1.6 log-uniform;
gain, ap_amplitude x/÷ 1.5, floor x/÷ 2, ap_exponent ± 0.15; log_precision at the truth's or
``--log-precision``), simulates them through the ``train-npe`` observation
(:func:`jrinfer.backends.npe.simulate_training_set`, ``summary="log_power+shape"``), labels each
by :meth:`InverseProblem.regimes` and trains classifiers (logistic regression, a small MLP;
scikit-learn) on the features the flow sees: log-power only, the five shape features only, and
both. Reports held-out accuracy (5-fold cross-validation) against the majority-class rate, on the
whole local box and on its "neighbourhood" of the observed spectrum (the ``--keep`` fraction of
draws whose log-power is closest to the truth's spectrum in RMS: the spectra the posterior has to
choose between).

Settings vary the simulated recording: ``--duration`` (s simulated, Welch segments of 1/df s,
50 % overlap) and ``--df`` (the grid step, Hz), and the observation noise (``--log-precision``:
log of the precision of the log-power noise; the tests use log 25, sd 0.2).

Run: ``python benchmarks/npe_regimes.py --n 2000 --duration 30 --df 0.5``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _problem(duration: float, df: float, log_precision: float | None):
    from jrinfer.cli import _npe_training_problem
    from jrinfer.observation import SpectrumObservation
    from jrinfer.problem import InverseProblem

    ns = argparse.Namespace(fmin=2.0, fmax=40.0, df=df, method="simulation", free="a,b,p_mean", prior=None, fix=None)
    base = _npe_training_problem(ns)
    obs = SpectrumObservation(method="simulation", duration=duration)
    return InverseProblem(obs, base.prior, base.data), log_precision


def _local_prior(base_prior, truth: dict):
    from jrinfer.prior import LogUniform, Prior, Uniform

    d = {}
    for name in base_prior.names:
        v = truth[name]
        if name in ("a", "b"):
            d[name] = LogUniform(v / 1.25, v * 1.25)
        elif name == "p_mean":
            d[name] = LogUniform(v / 1.6, v * 1.6)
        elif name in ("gain", "ap_amplitude"):
            d[name] = LogUniform(v / 1.5, v * 1.5)
        elif name == "floor":
            d[name] = LogUniform(v / 2, v * 2)
        elif name == "ap_exponent":
            d[name] = Uniform(v - 0.15, v + 0.15)
        elif name == "log_precision":
            d[name] = Uniform(v - 1e-6, v + 1e-6)
        else:
            raise ValueError(name)
    return Prior(d, base_prior.fixed, base_prior.units)


def _classify(X, y, seed=0):
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(y)
    counts = counts[counts > 0]
    out = {"n": int(y.size), "majority": float(counts.max() / y.size)}
    if counts.size < 2 or counts.min() < 5:
        return {**out, "note": "one class only (or < 5 of another)"}
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    models = {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)),
        "mlp": make_pipeline(StandardScaler(), MLPClassifier((64, 64), alpha=1e-3, max_iter=500, early_stopping=True,
                                                             random_state=seed)),
    }
    for k, m in models.items():
        out[k] = float(np.mean(cross_val_score(m, X, y, cv=cv, scoring="accuracy")))
    return out


def _region(args) -> None:
    """Classifiers on the truncated region's parameter sets, re-simulated under this recording's settings."""
    import torch

    torch.set_num_threads(1)
    from jrinfer.backends.npe import SHAPE_FEATURES, simulate_training_set

    problem, lp = _problem(args.duration, args.df, args.log_precision)
    saved = torch.load(args.theta_from, weights_only=False)
    theta = saved["theta"][-1][saved["valid"][-1]].clone()
    if lp is not None:
        theta[:, list(problem.names).index("log_precision")] = lp
    F = problem.observed().coord_values.numel()
    sims = simulate_training_set(problem, theta.shape[0], seed=args.seed, progress=False, theta=theta,
                                 summary="log_power+shape")
    ok = sims.valid
    x, lab = sims.x[ok].numpy(), sims.regime[ok].numpy()
    names = sims.regime_names
    out = {"theta_from": args.theta_from, "duration_s": args.duration, "df_hz": args.df, "log_precision": lp,
           "n_features": int(x.shape[1]), "load": os.getloadavg(), "simulation_seconds": sims.seconds,
           "mix": {names[i]: float((lab == i).mean()) for i in range(len(names))},
           "shape_means": {names[i]: dict(zip(SHAPE_FEATURES, [round(float(v), 3) for v in x[lab == i, F:].mean(0)]))
                           for i in range(len(names)) if (lab == i).sum() > 0}}
    for fs, cols in (("log_power", slice(0, F)), ("shape", slice(F, None)), ("log_power+shape", slice(None))):
        out[fs] = _classify(x[:, cols], lab)
    print(json.dumps(out), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--df", type=float, default=0.5)
    ap.add_argument("--log-precision", type=float, default=None)
    ap.add_argument("--p-mean", type=float, nargs="+", default=[70.0, 220.0])
    ap.add_argument("--keep", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--theta-from", default=None, metavar="FILE",
                    help="re-simulate the last truncated round's parameter sets saved by benchmarks/npe_stable.py "
                    "--save (the posterior's 99.9 %% region) instead of drawing from a local box")
    args = ap.parse_args(argv)
    if args.theta_from:
        return _region(args)

    import numpy as np
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from test_npe import _jr_spectrum

    from jrinfer.backends.npe import SHAPE_FEATURES, simulate_training_set, spectral_shape_features
    from jrinfer.problem import InverseProblem

    problem, lp = _problem(args.duration, args.df, args.log_precision)
    print(json.dumps({"load": os.getloadavg(), "duration_s": args.duration, "df_hz": args.df,
                      "log_precision": lp, "n": args.n}), flush=True)
    F = problem.observed().coord_values.numel()
    for p in args.p_mean:
        t0 = time.perf_counter()
        data, truth = _jr_spectrum(argparse.Namespace(problem=problem), p, seed=101)
        if lp is not None:  # the truth's own spectrum at this noise level
            truth["log_precision"] = lp
            theta = torch.tensor([[truth[n] for n in problem.names]], dtype=torch.float64)
            params = problem.parameters(theta)
            obs = problem.observation.with_seed(101)
            y = obs.sample(obs.predict(params, problem.data), params, problem.data, torch.Generator().manual_seed(101))
            data = type(data).from_arrays(problem.data.freqs, y[0], units=data.units, metadata=dict(data.metadata))
        local = InverseProblem(problem.observation, _local_prior(problem.prior, truth), data)
        sims = simulate_training_set(local, args.n, seed=args.seed, progress=False, summary="log_power+shape")
        ok = sims.valid
        x = sims.x[ok].numpy()
        lab = sims.regime[ok].numpy()
        truth_code = int(local.regimes(torch.tensor([[truth[n] for n in local.names]], dtype=torch.float64))[0])
        x_obs = torch.log(data.power.mean(0)).numpy()
        rms = np.sqrt(((x[:, :F] - x_obs) ** 2).mean(1))
        near = rms <= np.quantile(rms, args.keep)
        names = sims.regime_names
        res = {"p_mean": p, "truth_regime": names[truth_code], "n_valid": int(ok.sum()),
               "simulation_seconds": sims.seconds}
        res["truth_shape"] = dict(zip(SHAPE_FEATURES, spectral_shape_features(
            torch.tensor(x_obs), problem.observed().coord_values).tolist()))
        for sub, mask in (("box", np.ones_like(near)), ("near", near)):
            mix = {names[i]: float((lab[mask] == i).mean()) for i in range(len(names))}
            res[sub] = {"mix": mix, "rms_max": float(rms[mask].max())}
            # the shape features' class means (what separates, if anything)
            res[sub]["shape_means"] = {names[i]: [round(float(v), 3) for v in x[mask][lab[mask] == i, F:].mean(0)]
                                       for i in range(len(names)) if (lab[mask] == i).sum() > 0}
            for fs, cols in (("log_power", slice(0, F)), ("shape", slice(F, None)), ("log_power+shape", slice(None))):
                res[sub][fs] = _classify(x[mask][:, cols], lab[mask])
        res["seconds"] = time.perf_counter() - t0
        print(json.dumps(res), flush=True)
    print(json.dumps({"load_end": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
