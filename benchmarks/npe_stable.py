"""What limits the refined NPE fit of the test spectra, and can the truncated region's simulations tell the regimes apart?

Trains (or loads, ``--estimator``) the ``jrinfer train-npe --kind spectrum`` estimator
(``--simulations``, seed 1, ``--summary``), simulates the test suite's spectrum for each
``--p-mean`` (tests/test_npe.py ``_jr_spectrum``, noise seed 101) and refines the estimator
for it (``--rounds`` x ``--per-round``, :meth:`AmortizedPosterior.refine`). The simulations of
every truncated round are kept (their draws lie in the posterior's 99.9 % region: the spectra
the posterior has to choose between). Prints JSON lines:

- ``fit``: R^2 of log-power (2-40 Hz) of the pointwise median of the posterior predictive
  (what ``fit_quality`` reports), of its mean, and of each draw's prediction (quantiles); the
  same for ``--n-truth`` simulations at the true parameters (the ceiling); the pointwise spread
  (SD of log-power) of the posterior's predictions against the truth's, and the R^2 by regime;
- ``regimes``: 5-fold cross-validated accuracy of classifiers (logistic regression, MLP;
  scikit-learn) of the regime label from the features NPE sees (log-power, shape, both),
  trained on the last truncated round's simulations, against the majority-class rate.

Run: ``python benchmarks/npe_stable.py --simulations 4000 --summary log_power+shape --rounds 3 --per-round 2000``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def _r2(obs, pred):
    ss = ((obs - obs.mean()) ** 2).sum()
    return (1 - ((obs - pred) ** 2).sum(-1) / ss)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulations", type=int, default=4000)
    ap.add_argument("--summary", default="log_power+shape")
    ap.add_argument("--estimator", default=None)
    ap.add_argument("--hidden-features", type=int, default=50)
    ap.add_argument("--transforms", type=int, default=5)
    ap.add_argument("--p-mean", type=float, nargs="+", default=[70.0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=2000)
    ap.add_argument("--n-truth", type=int, default=100)
    ap.add_argument("--save", default=None, help="directory for the draws and round simulations (torch.save)")
    ap.add_argument("--fresh-zscore", action="store_true",
                    help="experiment: every truncated round trains a fresh flow whose input z-scoring is computed on "
                    "the truncated rounds' simulations (not round 0's wide box), on all rounds' simulations")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    sys.path.insert(0, os.path.dirname(__file__))
    from npe_regimes import _classify
    from test_npe import _jr_spectrum

    import jrinfer.backends.npe as npe_mod
    from jrinfer.backends.npe import AmortizedPosterior
    from jrinfer.cli import main as cli

    print(json.dumps({"load": os.getloadavg(), "args": vars(args)}), flush=True)
    path = args.estimator
    if path is None or not os.path.exists(os.path.join(path, "metadata.json")):
        path = path or os.path.join(tempfile.mkdtemp(), "est")
        t0 = time.perf_counter()
        cli(["train-npe", "--kind", "spectrum", "--simulations", str(args.simulations), "--out", path,
             "--calibrate", "0", "--seed", "1", "--summary", args.summary, "--hidden-features",
             str(args.hidden_features), "--transforms", str(args.transforms), "--no-progress", "--force"])
        print(json.dumps({"trained": path, "seconds": time.perf_counter() - t0}), flush=True)
    est = AmortizedPosterior.load(path)
    rounds_sims = []
    simulate = npe_mod.simulate_training_set

    def recording(*a, **kw):
        s = simulate(*a, **kw)
        if kw.get("desc", "").startswith("round ") and "/" in kw.get("desc", ""):
            rounds_sims.append(s)
        return s

    npe_mod.simulate_training_set = recording
    if args.fresh_zscore:
        train = npe_mod._train_flow
        n0 = est.training["n_valid"]

        def fresh(coords, theta_z, x, architecture, settings, *, seed, net=None, **kw):
            if net is not None:
                with npe_mod._seeded(seed):
                    net = npe_mod._flow_builder(architecture)(theta_z[n0:], x[n0:])
            return train(coords, theta_z, x, architecture, settings, seed=seed, net=net, **kw)

        npe_mod._train_flow = fresh
    problem = est.problem
    F = problem.observed().coord_values.numel()
    for p in args.p_mean:
        rounds_sims.clear()
        data, truth = _jr_spectrum(est, p, seed=101)
        t0 = time.perf_counter()
        ref = est.refine(data, rounds=args.rounds, simulations_per_round=args.per_round, progress=False) \
            if args.rounds else est
        refine_s = time.perf_counter() - t0
        post = ref.condition(data, n_draws=1000, n_predictive=200, seed=2)
        theta = torch.as_tensor(post.draws, dtype=torch.float64).reshape(-1, problem.n_params)
        y = torch.log(data.power.mean(0))
        # predictions (simulated Welch spectra + aperiodic + floor, before the observation noise) of 200 draws
        sub = theta[:: max(1, theta.shape[0] // 200)][:200]
        pr = problem.observation.predict(problem.parameters(sub), problem.data)
        L = torch.log(pr.value[pr.valid])
        codes = problem.regimes(sub)[pr.valid]
        th_truth = torch.tensor([[truth[n] for n in problem.names]], dtype=torch.float64).expand(args.n_truth, -1)
        obs_t = problem.observation.with_seed(7)
        Lt = torch.log(obs_t.predict(problem.parameters(th_truth), problem.data).value)
        names = problem.observation.REGIMES
        r2_each = _r2(y, L)
        fit = {
            "p_mean": p, "refine_seconds": refine_s, "fit_quality": {k: post.fit_quality.get(k) for k in
                                                                    ("r2_log_power", "peak_shift_hz")},
            "regime_verdict": post.diagnostics.get("regime_verdict"),
            "r2_median_prediction": float(_r2(y, L.median(0).values)),
            "r2_mean_prediction": float(_r2(y, L.mean(0))),
            "r2_each_draw_q10_50_90": [float(v) for v in torch.quantile(r2_each, torch.tensor([0.1, 0.5, 0.9],
                                                                                              dtype=torch.float64))],
            "truth_r2_median_prediction": float(_r2(y, Lt.median(0).values)),
            "truth_r2_each_q10_50_90": [float(v) for v in torch.quantile(_r2(y, Lt), torch.tensor(
                [0.1, 0.5, 0.9], dtype=torch.float64))],
            "spread_sd_log_power_mean": float(L.std(0).mean()), "truth_spread_sd_log_power_mean": float(Lt.std(0).mean()),
            "r2_median_by_regime": {names[i]: (float(_r2(y, L[codes == i].median(0).values)), int((codes == i).sum()))
                                    for i in range(len(names)) if int((codes == i).sum()) >= 5},
            "posterior_sd": dict(zip(problem.names, theta.std(0).tolist())),
            "posterior_median": dict(zip(problem.names, theta.median(0).values.tolist())),
            "truth": {n: truth[n] for n in problem.names},
            "rounds": [{k: r.get(k) for k in ("round", "r2_log_power", "peak_shift_hz", "epochs", "training_seconds")}
                       for r in ref.training.get("rounds", [])],
            "load": os.getloadavg(),
        }
        # where the posterior's median prediction misses: residual by band
        res = (y - L.median(0).values)
        f = problem.observed().coord_values
        bands = {"2-7": (2, 7), "7-14": (7, 14), "14-25": (14, 25), "25-40": (25, 40.1)}
        fit["rms_residual_by_band"] = {k: float(res[(f >= a) & (f < b)].pow(2).mean().sqrt()) for k, (a, b) in bands.items()}
        res_t = (y - Lt.median(0).values)
        fit["truth_rms_residual_by_band"] = {k: float(res_t[(f >= a) & (f < b)].pow(2).mean().sqrt())
                                             for k, (a, b) in bands.items()}
        print(json.dumps({"fit": fit}), flush=True)
        if rounds_sims:
            last = rounds_sims[-1]
            ok = last.valid
            x = last.x[ok].numpy()
            lab = last.regime[ok].numpy()
            out = {"p_mean": p, "round": len(rounds_sims), "mix": {names[i]: float((lab == i).mean())
                                                                    for i in range(len(names))}}
            for fs, cols in (("log_power", slice(0, F)), ("shape", slice(F, None)), ("log_power+shape", slice(None))):
                if fs != "log_power" and x.shape[1] == F:
                    continue
                out[fs] = _classify(x[:, cols], lab)
            print(json.dumps({"regimes": out}), flush=True)
            if args.save:
                os.makedirs(args.save, exist_ok=True)
                torch.save({"theta": [s.theta for s in rounds_sims], "x": [s.x for s in rounds_sims],
                            "valid": [s.valid for s in rounds_sims], "regime": [s.regime for s in rounds_sims],
                            "draws": theta, "data": y}, os.path.join(args.save, f"p{p:g}.pt"))


if __name__ == "__main__":
    main()
