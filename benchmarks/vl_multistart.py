"""Multi-start variational Laplace: how often more starts find a better optimum, and what it costs.

The 6-parameter JR spectral problem of the local-optima report (p_mean fixed at
45; a, b, gain, 1/f amplitude and exponent, log precision free; 2-30 Hz,
100 Welch segments); datasets simulated from the prior. For each dataset the
fit is run with n_starts = 1, 2, 4, 8 (interleaved, same process) and the
free energy, the posterior mean of (a, b), the wall time and the z-scores of
the truth are recorded.

Run: PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/vl_multistart.py [n_datasets] [recovery]
("recovery": jrinfer.identifiability.recovery_study with n_starts = 1 and 8 instead.)
"""

import sys
import time
import warnings

import numpy as np
import torch

from jrinfer import InverseProblem, Prior, SpectrumData, SpectrumObservation
from jrinfer.backends.laplace import VariationalLaplace

torch.set_num_threads(1)
F64 = torch.float64
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
STARTS = (1, 2, 4, 8)

freqs = torch.arange(2.0, 30.01, 0.5, dtype=F64)
obs = SpectrumObservation(floor=False)
tmpl = SpectrumData.from_arrays(freqs, torch.ones(1, freqs.numel(), dtype=F64), units="uV^2/Hz", n_segments=100)
spec = obs.default_prior(tmpl, free=("a", "b", "p_mean"))
spec["distributions"].pop("p_mean")
spec["fixed"]["p_mean"] = 45.0
base = InverseProblem(obs, Prior.from_dict(spec), tmpl)
th = base.prior.sample(10 * N, seed=5)
th = th[base.predict(th).valid.reshape(-1)][:N]

if len(sys.argv) > 2 and sys.argv[2] == "recovery":
    from jrinfer.identifiability import recovery_study

    def fitter(ns):
        def fit(problem):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return VariationalLaplace(n_starts=ns, max_iter=64).fit(problem, n_draws=2, n_predictive=0)
        return fit

    for ns in (1, 8):
        st = recovery_study(base, N, seed=0, fit=fitter(ns))
        cov = [st.summary[nm]["coverage_90"] for nm in st.names]
        zsd = [st.summary[nm]["zscore_sd"] for nm in st.names]
        print(f"recovery_study n_starts={ns}: {N} datasets, {st.seconds:.0f} s ({st.seconds / N:.2f} s/fit); "
              f"90% coverage pooled {np.nanmean(cov):.2f}; per parameter "
              + ", ".join(f"{nm} {c:.2f}" for nm, c in zip(st.names, cov))
              + "; z-score SD " + ", ".join(f"{nm} {z:.1f}" for nm, z in zip(st.names, zsd)), flush=True)
    sys.exit(0)

g = torch.Generator().manual_seed(9)
rows = []
for i in range(th.shape[0]):
    y = obs.sample(base.predict(th[i : i + 1]), base.parameters(th[i : i + 1]), tmpl, g)
    prob = InverseProblem(obs, base.prior, SpectrumData.from_arrays(freqs, y.reshape(1, -1), units="uV^2/Hz", n_segments=100))
    zt = prob.prior.to_unconstrained(th[i : i + 1])[0].numpy()
    row = {}
    for ns in STARTS:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post = VariationalLaplace(n_starts=ns).fit(prob, n_draws=2, n_predictive=0)
        dt = time.perf_counter() - t0
        sd = np.sqrt(np.diag(post.cov_unconstrained))
        zs = (post.mean_unconstrained - zt) / sd
        multi = any("multimodal" in w for w in post.warnings)
        row[ns] = dict(F=post.log_evidence, t=dt, z=zs, multi=multi, a=post.mean[0], b=post.mean[1],
                       n_opt=len(post.diagnostics["optima"]))
    rows.append(row)
    print(f"{i:2d} truth a={float(th[i,0]):6.1f} b={float(th[i,1]):5.1f} | "
          + " | ".join(f"n={ns}: F {row[ns]['F']:8.2f} a {row[ns]['a']:6.1f} b {row[ns]['b']:5.1f} {row[ns]['t']:4.1f}s"
                       + (" M" if row[ns]["multi"] else "") for ns in STARTS), flush=True)

names = list(base.prior.names)
print("\nparameters:", names)
for ns in STARTS:
    dF = np.array([r[ns]["F"] - r[1]["F"] for r in rows])
    best = np.array([max(r[k]["F"] for k in STARTS) for r in rows])
    reach = np.array([r[ns]["F"] >= b - 0.1 for r, b in zip(rows, best)])
    t = np.array([r[ns]["t"] for r in rows])
    z = np.array([r[ns]["z"] for r in rows])
    cover = (np.abs(z) < 1.6449).mean(0)
    print(f"n_starts={ns}: F gained >1 nat over n_starts=1 in {int((dF > 1).sum())}/{len(rows)} "
          f"(median gain where gained {np.median(dF[dF > 1]) if (dF > 1).any() else 0:.1f} nats); "
          f"reaches the best F of all settings in {int(reach.sum())}/{len(rows)}; "
          f"multimodal warning in {sum(r[ns]['multi'] for r in rows)}/{len(rows)}; "
          f"median time {np.median(t):.2f} s (x{np.median(t / np.array([r[1]['t'] for r in rows])):.1f}); "
          f"90% coverage pooled {cover.mean():.2f} (a {cover[0]:.2f}, b {cover[1]:.2f}); "
          f"z SD a {z[:, 0].std():.1f} b {z[:, 1].std():.1f}")
