"""Issue 9: can sequential NPE with the atomic (APT / SNPE-C) loss sharpen the posterior for one recording?

Compares, on one recording at a time, rounds whose proposal is

* ``truncated``: the box prior truncated to the posterior's 99.9 % region, ordinary NPE loss (TSNPE,
  Deistler et al. 2022; the package's ``AmortizedPosterior.refine``),
* ``apt``: the current flow conditioned on the recording, trained on every round with sbi's atomic loss
  (APT / SNPE-C, Greenberg, Nonnenmacher & Macke 2019, ICML; 10 atoms), warm-started from the previous round,
* ``apt-defensive``: as ``apt`` with a defensive mixture proposal, ``--defensive`` of each round's draws from the
  truncated prior (the rest from the flow),

and after every round reports what the issue asks: R^2 of log-power (the ``fit_quality`` of 1,000 draws and
``--predictive`` simulations), peak shift, regime mix, p_mean median and SD, the flow's log density at the truth
(simulated spectra), neural importance sampling of the flow against the exact likelihood (Pareto k-hat, ESS of
``--proposals`` proposals: how close the flow is to the posterior), simulations and seconds.

The atomic loss needs no proposal density: it normalises ``q(theta | x) / p(theta)`` over atoms drawn from the
batch, with ``p`` the prior in the flow's coordinates (a standard logistic per parameter: unbounded, so APT's
leakage outside a bounded prior does not arise). Implemented here with the package's private helpers; this is an
experiment, not the package's refine.

Run: ``python benchmarks/npe_sharpen.py --estimator DIR --case p70 --method apt --rounds 3 --per-round 2000``
(``--case p70 | p220 | eegmat``; the estimator as the tests': ``jrinfer train-npe --kind spectrum --simulations 4000
--seed 1``). One JSON line per round.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import sys
import tempfile
import time
import warnings


def _train_apt(coords, rounds, architecture, settings, *, seed, net, combined=False, atoms=10, discard_prior=False):
    """Train the flow on every round with the atomic loss; ``rounds`` = [(theta_z, x, proposal-or-None), ...]."""
    from sbi.inference import NPE as SbiNPE

    from jrinfer.backends.npe import _flow_builder, _NoTracker, _one_thread, _seeded

    t0 = time.perf_counter()
    with _seeded(seed), _one_thread(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        inf = SbiNPE(prior=coords.torch_prior, density_estimator=_flow_builder(architecture),
                     show_progress_bars=False, tracker=_NoTracker())
        inf._neural_net = copy.deepcopy(net).train()
        for theta_z, x, proposal in rounds:
            inf.append_simulations(theta_z, x, proposal=proposal)
        trained = inf.train(training_batch_size=settings["training_batch_size"],
                            learning_rate=settings["learning_rate"],
                            validation_fraction=settings["validation_fraction"],
                            stop_after_epochs=settings["stop_after_epochs"], max_num_epochs=settings["max_epochs"],
                            num_atoms=atoms, use_combined_loss=combined, discard_prior_samples=discard_prior)
    return trained.eval(), {"epochs": int(inf.epoch), "seconds": time.perf_counter() - t0,
                            "best_validation": -float(inf._summary["best_validation_loss"][-1]),
                            "validation_curve": [round(-float(v), 3) for v in inf._summary["validation_loss"]]}


def _evaluate(est, data, truth, args, label, extra):
    import numpy as np
    import torch

    t0 = time.perf_counter()
    post = est.condition(data, n_draws=1000, n_predictive=args.predictive, seed=2)
    fq, d = post.fit_quality, post.diagnostics
    names = list(post.names)
    draws = np.asarray(post.draws).reshape(-1, len(names))
    p = draws[:, names.index("p_mean")]
    row = {"case": args.case, "method": label, **extra,
           "r2_log_power": fq.get("r2_log_power"), "peak_shift_hz": fq.get("peak_shift_hz"),
           "regime_mix": {k: round(v["fraction"], 3) for k, v in (d.get("regime_mix") or {}).items()},
           "p_mean_median": float(np.median(p)), "p_mean_sd": float(p.std()),
           "a_median": float(np.median(draws[:, names.index("a")])),
           "b_median": float(np.median(draws[:, names.index("b")])),
           "condition_s": time.perf_counter() - t0}
    x = est.features(data)
    if truth is not None:
        th = torch.tensor([[truth[n] for n in est.problem.names]], dtype=torch.float64)
        row["flow_log_density_at_truth"] = float(est._flow_log_prob(est._coords.to_flow(th), x)[0])
    if args.proposals:
        t0 = time.perf_counter()
        nis = est.condition(data, n_draws=1000, n_predictive=20, seed=2, importance_sampling=True,
                            n_proposals=args.proposals)
        dn = nis.diagnostics
        row.update({"pareto_k": dn.get("pareto_k"), "importance_ess": dn.get("importance_ess"),
                    "nis_unique": (dn.get("importance_sampling") or {}).get("n_unique_draws"),
                    "nis_r2": nis.fit_quality.get("r2_log_power"), "nis_s": time.perf_counter() - t0})
    row["load"] = os.getloadavg()[0]
    print(json.dumps(row), flush=True)
    return row


def _linear_check(rounds=2, per_round=800):
    """The atomic rounds on the tests' linear-Gaussian problem (known posterior): mean error and SD ratio per round."""
    import numpy as np
    import torch

    from jrinfer._chunks import chunk_seed
    from jrinfer.backends.npe import _TRAINING_KEYS, NPE, AmortizedPosterior, simulate_training_set
    from test_npe import _analytic_linear, _linear_problem

    problem = _linear_problem()
    est = NPE(n_simulations=1500, seed=2).train(problem)
    mean, cov = _analytic_linear(problem)
    sd = cov.diagonal().sqrt()
    x, coords, t = est.features(problem.data), est._coords, est.training
    settings = {k: t[k] for k in _TRAINING_KEYS}
    sims0 = est._training_set
    data_rounds = [(coords.to_flow(sims0.theta[sims0.valid]).float(), sims0.x[sims0.valid].float(), None)]
    current = est
    for r in range(rounds + 1):
        th = current.sample(x, 4000, seed=1)
        print(json.dumps({"case": "linear-Gaussian", "method": "apt", "round": r,
                          "mean_error_sd": ((th.mean(0) - mean) / sd).tolist(),
                          "sd_ratio": (th.std(0) / sd).tolist()}), flush=True)
        if r == rounds:
            break
        theta = coords.from_flow(current._sample_flow(x, per_round, chunk_seed(7, r)).double())
        sims = simulate_training_set(est.problem, per_round, seed=chunk_seed(7, 100 + r),
                                     progress=False, theta=theta, summary=est.summary)
        prop = copy.deepcopy(current.sbi_posterior).set_default_x(x.reshape(1, -1).float())
        data_rounds.append((coords.to_flow(sims.theta[sims.valid]).float(), sims.x[sims.valid].float(), prop))
        net, _ = _train_apt(coords, data_rounds, est.architecture, settings, seed=chunk_seed(7, 200 + r),
                            net=current._net)
        current = AmortizedPosterior(net, est.problem, architecture=est.architecture,
                                     training={**t, "amortized": False}, source_prior=est.source_prior,
                                     box_quantiles=est.box_quantiles, feature_stats=est._stats,
                                     calibration=est.calibration, summary=est.summary, refined_for=x)
    assert np.isfinite(th.numpy()).all()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--estimator", default=None)
    ap.add_argument("--case", choices=["p70", "p220", "eegmat", "linear"], default="p70")
    ap.add_argument("--method", choices=["apt", "apt-defensive", "truncated"], default="apt")
    ap.add_argument("--defensive", type=float, default=0.2)
    ap.add_argument("--combined", action="store_true", help="atomic loss + MLE on the prior round (sbi's combined)")
    ap.add_argument("--atoms", type=int, default=10)
    ap.add_argument("--discard-prior", action="store_true", help="atomic loss on the proposal rounds only")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=2000)
    ap.add_argument("--predictive", type=int, default=100)
    ap.add_argument("--proposals", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--final-lr", type=float, default=0.0, help="then one more fit at this learning rate")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from test_npe import _jr_spectrum

    from jrinfer.backends.npe import _ROUNDS_INDEX, _TRAINING_KEYS, AmortizedPosterior, simulate_training_set
    from jrinfer._chunks import chunk_seed

    if args.case == "linear":
        _linear_check()
        return
    est = AmortizedPosterior.load(args.estimator)
    truth = None
    if args.case == "eegmat":
        from jrinfer.cli import _load_data, _npe_estimator, build_parser

        edf = os.path.join(os.environ["JRINFER_DATA"], "eegmat", "Subject00_1.edf")
        a = build_parser().parse_args(["fit", edf, "--kind", "spectrum", "--picks", "O1,O2", "--backend", "npe",
                                       "--estimator", args.estimator, "--out", tempfile.mkdtemp()])
        _npe_estimator(a)
        data = _load_data(a)
    else:
        data, truth = _jr_spectrum(est, 70.0 if args.case == "p70" else 220.0, seed=101)
    t = est.training
    T0 = time.perf_counter()
    sims0 = simulate_training_set(est.problem, t["n_simulations"], seed=t["seed"], chunk_size=t["chunk_size"],
                                  progress=False, summary=est.summary)
    est._training_set = sims0
    print(json.dumps({"case": args.case, "method": args.method, "round0_resimulated_s": time.perf_counter() - T0,
                      "load": os.getloadavg()}), flush=True)
    label = args.method + (f" {args.defensive:g}" if args.method == "apt-defensive" else "") + \
        (" combined" if args.combined else "") + (f" atoms {args.atoms}" if args.atoms != 10 else "") + \
        (" discard-prior" if args.discard_prior else "")
    _evaluate(est, data, truth, args, label, {"round": 0, "simulations": t["n_simulations"]})

    if args.method == "truncated":
        import jrinfer.backends.npe as npe_mod

        calls, train = [], npe_mod._train_flow

        def recording(*a, **kw):  # keep the last round's training inputs for the --final-lr check
            calls[:] = [(a, kw)]
            return train(*a, **kw)

        npe_mod._train_flow = recording
        t0 = time.perf_counter()
        ref = est.refine(data, rounds=args.rounds, simulations_per_round=args.per_round, seed=args.seed,
                         evaluate=False)
        rr = ref.training["rounds"][-1]
        _evaluate(ref, data, truth, args, label, {
            "round": args.rounds, "simulations": t["n_simulations"] + args.rounds * args.per_round,
            "refine_s_all_rounds": time.perf_counter() - t0, "epochs": [r["epochs"] for r in ref.training["rounds"]],
            "best_validation": rr["best_validation_log_prob"], "rejected": rr["truncation"]["rejected_fraction"]})
        if args.final_lr:
            (coords, theta_z, xx, arch, settings), kw = calls[0]
            s2 = {**settings, "learning_rate": args.final_lr, "stop_after_epochs": 2 * settings["stop_after_epochs"]}
            net, fit = train(coords, theta_z, xx, arch, s2, seed=kw["seed"] + 1, net=ref._net)
            fine = AmortizedPosterior(net, est.problem, architecture=est.architecture, training=ref.training,
                                      source_prior=est.source_prior, box_quantiles=est.box_quantiles,
                                      feature_stats=est._stats, calibration=est.calibration, summary=est.summary,
                                      refined_for=ref._refined_for)
            _evaluate(fine, data, truth, args, label + f" + final fit at lr {args.final_lr:g}", {
                "round": args.rounds, "epochs": fit["epochs"], "train_s": fit["seconds"],
                "best_validation": fit["best_validation_log_prob"]})
        return

    x = est.features(data)
    coords, settings = est._coords, {k: t[k] for k in _TRAINING_KEYS}
    data_rounds = [(coords.to_flow(sims0.theta[sims0.valid]).to(torch.float32), sims0.x[sims0.valid].to(torch.float32),
                    None)]
    current, n = est, args.per_round
    total = t["n_simulations"]
    for r in range(1, args.rounds + 1):
        rs = chunk_seed(args.seed, _ROUNDS_INDEX + r)
        t0 = time.perf_counter()
        n_def = int(round(args.defensive * n)) if args.method == "apt-defensive" else 0
        z = current._sample_flow(x, n - n_def, chunk_seed(rs, 0)).to(torch.float64)
        theta = coords.from_flow(z)
        if n_def:
            region = current._hdr_threshold(x, 1e-3, 20_000, chunk_seed(rs, 4))
            th_def, _ = current._truncated_draws(x, region, n_def, chunk_seed(rs, 1))
            theta = torch.cat([theta, th_def])
        sims = simulate_training_set(est.problem, n, seed=chunk_seed(rs, 2), chunk_size=t["chunk_size"],
                                     progress=False, theta=theta, summary=est.summary)
        sim_s = time.perf_counter() - t0
        proposal = copy.deepcopy(current.sbi_posterior).set_default_x(x.reshape(1, -1).to(torch.float32))
        data_rounds.append((coords.to_flow(sims.theta[sims.valid]).to(torch.float32),
                            sims.x[sims.valid].to(torch.float32), proposal))
        net, fit = _train_apt(coords, data_rounds, est.architecture, settings, seed=chunk_seed(rs, 3),
                              net=current._net, combined=args.combined, atoms=args.atoms,
                              discard_prior=args.discard_prior)
        if args.final_lr and r == args.rounds:
            s2 = {**settings, "learning_rate": args.final_lr, "stop_after_epochs": 2 * settings["stop_after_epochs"]}
            net, fit2 = _train_apt(coords, data_rounds, est.architecture, s2, seed=chunk_seed(rs, 5), net=net,
                                   combined=args.combined, atoms=args.atoms, discard_prior=args.discard_prior)
            fit["final_lr_epochs"], fit["final_lr_best_validation"] = fit2["epochs"], fit2["best_validation"]
            fit["seconds"] += fit2["seconds"]
        total += n
        current = AmortizedPosterior(net, est.problem, architecture=est.architecture,
                                     training={**t, "amortized": False}, source_prior=est.source_prior,
                                     box_quantiles=est.box_quantiles, feature_stats=est._stats,
                                     calibration=est.calibration, summary=est.summary, refined_for=x)
        mix = sims.report()["regime_mix"]
        _evaluate(current, data, truth, args, label, {
            "round": r, "simulations": total, "n_failed": int((~sims.valid).sum()), "simulate_s": sim_s,
            "train_s": fit["seconds"], "epochs": fit["epochs"], "best_validation": fit["best_validation"],
            "validation_tail": fit["validation_curve"][-25:], "round_regime_mix_simulated": mix,
            **{k: fit[k] for k in ("final_lr_epochs", "final_lr_best_validation") if k in fit}})
    print(json.dumps({"case": args.case, "method": label, "total_s": time.perf_counter() - T0,
                      "load": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
