"""Neural importance sampling (NPE + PSIS) on JR spectra: fit quality, k-hat, ESS and time, with and without.

Loads (or trains, as the test suite does: ``jrinfer train-npe --kind spectrum --simulations 4000 --seed 1``) the
estimator, then for each ``--p-mean`` simulates the test suite's spectrum (tests/test_npe.py ``_jr_spectrum``,
noise seed 101) and, for ``--eegmat``, reads EEGMAT Subject00_1 O1/O2 through ``jrinfer fit`` (``$JRINFER_DATA``).
Each is conditioned on the amortized estimator and, with ``--rounds R``, on the estimator refined by R truncated
rounds of ``--per-round`` simulations; each posterior once from the raw flow and once with importance sampling
(``--proposals`` flow draws). One JSON line per posterior: R^2 of log-power, peak shift (Hz), regime mix, Pareto
k-hat, importance ESS, p_mean median and SD (pulses/s), seconds.

Run: ``python benchmarks/npe_importance.py --estimator DIR --p-mean 70 220 --rounds 1 --eegmat``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _row(label, post, seconds, extra=None):
    import numpy as np

    d, fq = post.diagnostics, post.fit_quality
    names = list(post.names)
    draws = np.asarray(post.draws).reshape(-1, len(names))
    p = draws[:, names.index("p_mean")] if "p_mean" in names else None
    mix = d.get("regime_mix") or {}
    return {"case": label, "r2_log_power": fq.get("r2_log_power"), "peak_shift_hz": fq.get("peak_shift_hz"),
            "regime_mix": {k: round(v["fraction"], 3) for k, v in mix.items()},
            "pareto_k": d.get("pareto_k"), "importance_ess": d.get("importance_ess"),
            "n_proposals": (d.get("importance_sampling") or {}).get("n_proposals"),
            "n_failed": (d.get("importance_sampling") or {}).get("n_failed"),
            "n_unique_draws": (d.get("importance_sampling") or {}).get("n_unique_draws"),
            "p_mean_median": None if p is None else float(np.median(p)),
            "p_mean_sd": None if p is None else float(p.std()),
            "status": post.status, "seconds": seconds, **(extra or {})}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--estimator", default=None, help="a trained estimator directory (default: train one)")
    ap.add_argument("--p-mean", type=float, nargs="*", default=[70.0, 220.0])
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--per-round", type=int, default=1000)
    ap.add_argument("--proposals", type=int, default=5000)
    ap.add_argument("--eegmat", action="store_true")
    ap.add_argument("--amortized", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from backend_problems import npe_benchmark_cases

    print(json.dumps({"load": os.getloadavg(), "cpus": os.cpu_count()}), flush=True)
    est, datasets = npe_benchmark_cases(args.estimator, args.p_mean, ["Subject00_1"] if args.eegmat else ())
    for label, data, extra in datasets:
        variants = [("amortized", est)] if args.amortized else []
        if args.rounds:
            t0 = time.perf_counter()
            ref = est.refine(data, rounds=args.rounds, simulations_per_round=args.per_round, seed=3, evaluate=False)
            variants.append((f"{args.rounds} round(s) of {args.per_round}", ref))
            print(json.dumps({"case": label, "refine_seconds": time.perf_counter() - t0}), flush=True)
        for name, e in variants:
            for nis in (False, True):
                t0 = time.perf_counter()
                post = e.condition(data, n_draws=1000, n_predictive=100, seed=2, importance_sampling=nis,
                                   n_proposals=args.proposals)
                row = _row(f"{label}, {name}, {'importance sampling' if nis else 'flow'}", post,
                           time.perf_counter() - t0, extra)
                print(json.dumps(row), flush=True)
    print(json.dumps({"load": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
