"""NPE corrected by tempered SMC from the flow (``condition(..., smc=True)``) on JR spectra and EEGMAT.

Loads (or trains, as the test suite does: ``jrinfer train-npe --kind spectrum --simulations 4000 --seed 1``) the
estimator; for each ``--p-mean`` simulates the test suite's spectrum (tests/test_npe.py ``_jr_spectrum``, noise
seed 101) and, with ``--eegmat``, reads EEGMAT Subject00_1 O1/O2 through ``jrinfer fit`` (``$JRINFER_DATA``). Each
is conditioned on the amortized estimator with ``--particles`` particles (and, with ``--flow``, from the raw
flow for comparison). One JSON line per posterior: R^2 of log-power, peak shift (Hz), regime mix, p_mean median
and SD, the bridge's stages, likelihood evaluations, particles moved after the last reweighting, distinct draws,
seconds.

Run: ``python benchmarks/npe_smc.py --estimator DIR --p-mean 70 220 --eegmat --particles 300``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--estimator", default=None, help="a trained estimator directory (default: train one)")
    ap.add_argument("--p-mean", type=float, nargs="*", default=[70.0, 220.0])
    ap.add_argument("--particles", type=int, nargs="*", default=[300])
    ap.add_argument("--seeds", type=int, nargs="*", default=[2])
    ap.add_argument("--eegmat", nargs="*", default=None, help="EEGMAT recordings (default Subject00_1)")
    ap.add_argument("--flow", action="store_true", help="also the uncorrected flow")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the native simulator's; default 2)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from backend_problems import npe_benchmark_cases

    print(json.dumps({"load": os.getloadavg(), "cpus": os.cpu_count(), "threads": args.threads}), flush=True)
    names = None if args.eegmat is None else (args.eegmat or ["Subject00_1"])
    est, datasets = npe_benchmark_cases(args.estimator, args.p_mean, names or ())
    for label, data, extra in datasets:
        runs = [("flow", 1000, 2)] if args.flow else []
        runs += [("smc", n, s) for n in args.particles for s in args.seeds]
        for kind, n, seed in runs:
            t0 = time.perf_counter()
            post = est.condition(data, n_draws=n, n_predictive=100, seed=seed, smc=kind == "smc")
            d, fq = post.diagnostics, post.fit_quality
            names = list(post.names)
            draws = np.asarray(post.draws).reshape(-1, len(names))
            p = draws[:, names.index("p_mean")]
            row = {"case": label, "draws": kind, "particles": n if kind == "smc" else None, "seed": seed,
                   "r2_log_power": fq.get("r2_log_power"), "peak_shift_hz": fq.get("peak_shift_hz"),
                   "regime_mix": {k: round(v["fraction"], 3) for k, v in (d.get("regime_mix") or {}).items()},
                   "regime_verdict": d.get("regime_verdict"),
                   "medians": {n_: round(float(np.median(draws[:, i])), 3) for i, n_ in enumerate(names)},
                   "p_mean_sd": float(p.std()), "status": post.status, "seconds": time.perf_counter() - t0, **extra}
            if kind == "smc":
                s = d["smc"]
                row.update({k: s[k] for k in ("n_evaluations", "n_unique", "final_acceptance", "final_moved_fraction",
                                              "log_evidence", "n_failed", "reached_target")})
                row["seed_noise_sd_nats"] = s.get("seed_noise_sd_nats")
                row["stages"] = len(s["stages"])
                row["betas"] = [round(st["beta"], 4) for st in s["stages"]]
                row["acceptance"] = [round(st["acceptance"], 3) for st in s["stages"]]
                row["warnings"] = [w for w in post.warnings if "SMC" in w]
            print(json.dumps(row), flush=True)
    print(json.dumps({"load": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
