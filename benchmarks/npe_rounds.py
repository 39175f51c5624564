"""Truncated sequential rounds (TSNPE) on simulated JR spectra: quality and time per round.

Trains (or loads) the ``jrinfer train-npe --kind spectrum`` estimator (``--simulations``,
``--seed``, ``--summary``), then for each ``--p-mean`` simulates the test suite's spectrum
(tests/test_npe.py ``_jr_spectrum``: JR 1995 constants, a = 100, b = 50, gain matched to
20/f uV^2/Hz, noise seed 101) and refines the estimator for it with ``--rounds`` rounds of
``--per-round`` simulations (:meth:`AmortizedPosterior.refine`). Prints one JSON line per
round: simulations, fraction of prior draws rejected by the truncation, seconds, R^2 of
log-power, peak shift and the posterior's regime mix.

Run: ``python benchmarks/npe_rounds.py --simulations 4000 --rounds 3 --per-round 2000``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulations", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--summary", default="log_power")
    ap.add_argument("--estimator", default=None, help="a trained estimator directory (default: train one)")
    ap.add_argument("--p-mean", type=float, nargs="+", default=[70.0, 220.0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=2000)
    ap.add_argument("--calibrate", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from test_npe import _jr_spectrum

    from jrinfer.backends.npe import AmortizedPosterior
    from jrinfer.cli import main as cli

    print(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(), "load": os.getloadavg(),
                      "torch": torch.__version__}), flush=True)
    path = args.estimator
    if path is None:
        path = os.path.join(tempfile.mkdtemp(), "est")
        t0 = time.perf_counter()
        cli(["train-npe", "--kind", "spectrum", "--simulations", str(args.simulations), "--out", path,
             "--calibrate", str(args.calibrate), "--seed", str(args.seed), "--summary", args.summary,
             "--no-progress"])
        print(json.dumps({"trained": path, "seconds": time.perf_counter() - t0}), flush=True)
    est = AmortizedPosterior.load(path)
    print(json.dumps({"training": {k: est.training[k] for k in ("n_simulations", "n_valid", "epochs",
                                                                "training_seconds", "simulation_seconds")},
                      "calibration": None if not est.calibration else est.calibration["verdict"]}), flush=True)
    datasets = [(f"p={p:g}", _jr_spectrum(est, p, seed=101)[0]) for p in args.p_mean]
    for name, data in datasets:
        t0 = time.perf_counter()
        ref = est.refine(data, rounds=args.rounds, simulations_per_round=args.per_round, progress=True)
        for r in ref.training["rounds"]:
            keep = {k: r.get(k) for k in ("round", "simulations", "n_valid", "truncation_seconds", "simulation_seconds",
                                          "training_seconds", "epochs", "r2_log_power", "peak_shift_hz", "regime_mix")}
            keep["rejected_fraction"] = (r.get("truncation") or {}).get("rejected_fraction")
            keep["method"] = (r.get("truncation") or {}).get("method")
            print(json.dumps({"data": name, **keep}), flush=True)
        print(json.dumps({"data": name, "total_seconds": time.perf_counter() - t0, "load": os.getloadavg()}),
              flush=True)


if __name__ == "__main__":
    main()
