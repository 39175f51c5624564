"""Where do real recordings sit relative to an NPE estimator's training features? (issue 9: out of distribution)

Loads an estimator (``jrinfer train-npe --out DIR``), simulates held-out spectra from its box prior (a seed no
training chunk uses), re-simulates its training set, and scores, for the held-out simulations, the simulated
test spectra at p = 70 / 220 (in-distribution controls, as ``tests/test_npe.py::_jr_spectrum``) and EEGMAT rest
recordings (O1/O2, 2 s Welch segments, the estimator's grid):

- ``d2``: squared Mahalanobis distance against the training features (the estimator's stored check);
- ``knn``: Euclidean distance to the k-th nearest training simulation in per-feature standardised features;
- ``tail``: the smallest two-sided tail probability of a plain-words descriptor (overall level, aperiodic
  slope, band residuals above the aperiodic line, peak frequency / width / height, harmonic excess,
  flatness) among the training simulations;

each as a percentile among the held-out simulations; per descriptor the observation's rank among the training
simulations.

Usage: ``python benchmarks/npe_ood.py DIR [--held-out 1000] [--subjects Subject00_1,Subject03_1,Subject05_1]``
(``JRINFER_DATA`` must hold ``eegmat/``).
"""
import argparse
import json
import math
import os
import sys
import time

import torch

from jrinfer.backends.npe import AmortizedPosterior, _HELD_OUT_INDEX, simulate_training_set
from jrinfer._chunks import chunk_seed

F64 = torch.float64


def jr_spectrum(est, p_mean, seed):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from test_npe import _jr_spectrum

    return _jr_spectrum(est, p_mean, seed)[0]


def eegmat(est, subject):
    from jrinfer.cli import _load_data, build_parser

    edf = os.path.join(os.environ["JRINFER_DATA"], "eegmat", f"{subject}.edf")
    args = build_parser().parse_args(["fit", edf, "--kind", "spectrum", "--picks", "O1,O2", "--backend", "npe",
                                      "--estimator", "X", "--out", "/tmp/unused"])
    grid = est.problem.observed().coord_values
    args.fmin, args.fmax, args.segment = float(grid[0]), float(grid[-1]), float(est.problem.data.metadata["seg_length_s"])
    return _load_data(args)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("estimator")
    ap.add_argument("--held-out", type=int, default=1000)
    ap.add_argument("--subjects", default="Subject00_1,Subject03_1,Subject05_1")
    ap.add_argument("--k", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("load", open("/proc/loadavg").read().strip())
    est = AmortizedPosterior.load(a.estimator)
    t0 = time.perf_counter()
    train = simulate_training_set(est.problem, est.training["n_simulations"], seed=est.training["seed"],
                                  chunk_size=est.training["chunk_size"], progress=False, summary=est.summary)
    held = simulate_training_set(est.problem, a.held_out, seed=chunk_seed(est.training["seed"], _HELD_OUT_INDEX + 7),
                                 chunk_size=est.training["chunk_size"], progress=False, summary=est.summary)
    print(f"simulated {train.n} + {held.n} in {time.perf_counter() - t0:.0f} s")
    xt, xh = train.x[train.valid], held.x[held.valid]
    cases = {"p70": est.features(jr_spectrum(est, 70.0, 101)), "p220": est.features(jr_spectrum(est, 220.0, 101))}
    for s in a.subjects.split(","):
        cases[s] = est.features(eegmat(est, s))
    from jrinfer.backends import npe as npemod

    freqs = est.problem.observed().coord_values
    names, D = descriptors(xt, freqs)
    _, Dh = descriptors(xh, freqs)
    mu, sd = xt.mean(0), xt.std(0)
    zt = (xt - mu) / sd

    def scores(x):
        x = x.reshape(-1, xt.shape[1])
        d2 = npemod._mahalanobis2(x, est._stats["mean"], est._stats["chol"])
        z = (x - mu) / sd
        dist = torch.cdist(z, zt)
        knn = dist.topk(a.k, largest=False).values[:, -1]
        _, d = descriptors(x, freqs)
        F = (D.unsqueeze(0) <= d.unsqueeze(1)).double().mean(1)  # (n, n_desc)
        G = (D.unsqueeze(0) >= d.unsqueeze(1)).double().mean(1)
        tail = (2 * torch.minimum(F, G)).clamp(max=1.0)
        return d2, knn, tail

    hd2, hknn, htail = scores(xh)
    hmin = htail.min(-1).values
    pct = lambda v, ref: float((ref < v).double().mean() * 100)  # noqa: E731
    print(f"held-out ({xh.shape[0]}): d2 median {hd2.median():.1f} q99 {hd2.quantile(0.99):.1f} max {hd2.max():.1f}; "
          f"training d2 max {float(est._stats['d2_max']):.1f} (held-out above it: {100 * float((hd2 > est._stats['d2_max']).double().mean()):.1f} %); "
          f"knn median {hknn.median():.2f} q99 {hknn.quantile(0.99):.2f}; min tail q01 {hmin.quantile(0.01):.2e} q001 {hmin.quantile(0.001):.2e}")
    rows = {}
    for label, x in cases.items():
        d2, knn, tail = scores(x)
        t = tail[0]
        order = torch.argsort(t)
        worst = [(names[i], float(t[i]), float(descriptors(x.reshape(1, -1), freqs)[1][0, i]),
                  float(D[:, i].median())) for i in order[:4].tolist()]
        rows[label] = {"d2": float(d2[0]), "d2_pct_heldout": pct(d2[0], hd2), "knn": float(knn[0]),
                       "knn_pct_heldout": pct(knn[0], hknn), "min_tail": float(t.min()),
                       "min_tail_pct_heldout": 100 - pct(t.min(), hmin), "worst": worst}
        print(f"{label:12s} d2 {float(d2[0]):9.1f} ({pct(d2[0], hd2):5.1f} %)  knn {float(knn[0]):6.2f} ({pct(knn[0], hknn):5.1f} %)  "
              f"min tail {float(t.min()):.1e} (held-out below: {100 - pct(t.min(), hmin):.1f} %)")
        for nm, p, v, m in worst:
            print(f"      {nm:28s} tail {p:.4f}  value {v:8.3f}  training median {m:8.3f}")
    # the package's check (AmortizedPosterior.out_of_distribution) with the statistics of the re-simulated
    # training set (identical to the saved ones: the training set is a pure function of its seed)
    stats = npemod._feature_stats(xt, npemod._spectral_grid(est.problem))
    assert torch.allclose(stats["mean"], est._stats["mean"], rtol=1e-6, atol=1e-9)
    est._stats = stats
    flagged = [est.out_of_distribution(x)["outside"] for x in xh]
    hp = torch.tensor([est.out_of_distribution(x)["mahalanobis2_percentile"] for x in xh])
    print(f"package check: {sum(flagged)} of {len(flagged)} held-out simulations flagged "
          f"({100 * sum(flagged) / len(flagged):.1f} %); held-out d2 percentile among training: median "
          f"{hp.median():.1f}, above 99.5: {100 * float((hp > 99.5).double().mean()):.1f} %; training d2 q99 "
          f"{float(stats['d2_quantiles'][1]):.1f} (held-out q99 {hd2.quantile(0.99):.1f})")
    for label, x in cases.items():
        o = est.out_of_distribution(x)
        rows[label]["package"] = {k: o[k] for k in ("mahalanobis2_percentile", "outside", "unusual", "reason")}
        print(f"{label:12s} d2 percentile {o['mahalanobis2_percentile']:.1f}, outside {o['outside']}; unusual: "
              + "; ".join(o["unusual_words"]))
    json.dump(rows, open(os.environ.get("OOD_JSON", "/tmp/npe_ood.json"), "w"), indent=1)
    print("load", open("/proc/loadavg").read().strip())


BANDS = (("low band (2-7 Hz)", 2.0, 7.0), ("alpha band (7-14 Hz)", 7.0, 14.0), ("beta bump (17-26 Hz)", 17.0, 26.0),
         ("high band (30-40 Hz)", 30.0, 40.0))


def descriptors(x, freqs):
    """Plain-words descriptors of features x (n, F [+5]): level, slope, band residuals, shape features."""
    F = freqs.numel()
    L = x[:, :F]
    lf = torch.log(freqs)
    X = torch.stack([torch.ones_like(lf), lf], -1)
    beta = torch.linalg.lstsq(X, L.T).solution  # (2, n)
    r = L - (X @ beta).T
    cols = [L.mean(-1), beta[1]]
    names = ["overall level (mean log-power)", "aperiodic slope (log-log)"]
    for nm, lo, hi in BANDS:
        m = (freqs >= lo) & (freqs <= hi)
        cols.append(r[:, m].mean(-1))
        names.append(nm + " above the line")
    if x.shape[1] > F:
        from jrinfer.backends.npe import SHAPE_FEATURES

        for j, nm in enumerate(SHAPE_FEATURES):
            cols.append(x[:, F + j])
            names.append(nm)
    return names, torch.stack(cols, -1)


if __name__ == "__main__":
    main()
