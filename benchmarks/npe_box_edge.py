"""Does the posterior pile up at an edge of the prior box NPE trained on? (issue 9: recordings the box does not cover)

For each estimator directory: the amortized posterior of the test suite's simulated spectra (p = 70 / 220,
in-distribution controls) and of EEGMAT rest recordings (O1/O2): R^2 of log-power and peak shift (100 predictive
simulations), the share of posterior draws in the outer ``--edge`` of each parameter's box (box coordinates: log
for log-uniform parameters), and the same share's largest value over parameters for ``--held-out`` held-out
simulations (its false-alarm rate on in-distribution data).

Usage: ``python benchmarks/npe_box_edge.py DIR [DIR ...] [--held-out 300]`` (``JRINFER_DATA`` must hold ``eegmat/``).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import npe_ood  # noqa: E402

from jrinfer._chunks import chunk_seed  # noqa: E402
from jrinfer.backends.npe import AmortizedPosterior, _HELD_OUT_INDEX, simulate_training_set, _box_edge_shares  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("estimators", nargs="+")
    ap.add_argument("--held-out", type=int, default=300)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--subjects", default="Subject00_1,Subject03_1,Subject05_1")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("load", open("/proc/loadavg").read().strip())
    for path in a.estimators:
        est = AmortizedPosterior.load(path)
        print(f"== {path}: {est}")
        print("   box:", {n: (round(d.low, 4), round(d.high, 4)) for n, d in est.prior.distributions.items()})
        cases = {"p70": npe_ood.jr_spectrum(est, 70.0, 101), "p220": npe_ood.jr_spectrum(est, 220.0, 101)}
        for s in a.subjects.split(","):
            cases[s] = npe_ood.eegmat(est, s)
        for label, data in cases.items():
            t0 = time.perf_counter()
            post = est.condition(data, n_draws=1000, n_predictive=100, seed=0)
            fq = post.fit_quality
            th = torch.as_tensor(post.draws).reshape(-1, len(est.names))
            edge = post.diagnostics.get("box_edge") or {}
            print(f"   {label:12s} R2 {fq.get('r2_log_power', float('nan')):.3f} peak shift {fq.get('peak_shift_hz', float('nan')):+.1f} Hz; "
                  f"gain median {th[:, est.names.index('gain')].median():.3g}, p_mean {th[:, est.names.index('p_mean')].median():.3g}, "
                  f"ap_exponent {th[:, est.names.index('ap_exponent')].median():.3g}; status {post.status}; "
                  f"edge {edge.get('worst')} ({time.perf_counter() - t0:.0f} s)")
        held = simulate_training_set(est.problem, a.held_out, seed=chunk_seed(est.training["seed"], _HELD_OUT_INDEX + 11),
                                     chunk_size=est.training["chunk_size"], progress=False, summary=est.summary)
        worst = []
        for i in torch.nonzero(held.valid).flatten().tolist():
            th = est.sample(held.x[i], a.draws, seed=i)
            low, high = _box_edge_shares(est.prior, th)
            worst.append(float(torch.maximum(low, high).max()))
        w = torch.tensor(worst)
        print(f"   held-out ({w.numel()}): largest edge share over parameters: median {w.median():.3f}, q90 "
              f"{w.quantile(0.9):.3f}, q99 {w.quantile(0.99):.3f}, max {w.max():.3f}; above 0.5: "
              f"{100 * float((w > 0.5).double().mean()):.1f} %, above 0.3: {100 * float((w > 0.3).double().mean()):.1f} %")
    print("load", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
