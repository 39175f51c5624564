"""Is NPE's gain on the same scale as the transfer-method fits'? (issue 11: NPE's gain is ~2x NUTS/SMC's)

1. The transfer spectrum at p_std = 1 (the transfer method's default, fixed) over p_std = 0.5 (fixed for NPE's
   simulated training spectra, ``jrinfer train-npe``): the neural PSD scales with p_std^2, so the gain that gives
   the same recorded power scales with 1 / p_std.
2. Simulated (``method="simulation"``: stochastic Heun, 30 s after 5 s, Welch with 2 s Hann segments) over
   transfer (linearised, windowed to the same segments) neural PSD at the same stable parameters (JR 1995
   constants, p_std = 0.5): the ratio across 2-40 Hz, runs that left the upper equilibrium (2 Hz power > 3x the
   linear one) left out and counted.
3. EEGMAT Subject00_1 O1/O2: variational Laplace with the defaults (transfer method) against the amortized NPE
   estimator given as DIR: gain, p_mean and gain x p_std.

Usage: ``python benchmarks/npe_scale.py [DIR]`` (``JRINFER_DATA`` must hold ``eegmat/`` for part 3).
"""
import contextlib
import io
import json
import os
import sys
import tempfile

import torch

from jrinfer.observation import SpectrumObservation

F64 = torch.float64


def main():
    torch.set_num_threads(1)
    print("load", open("/proc/loadavg").read().strip())
    freqs = 2.0 + 0.5 * torch.arange(77, dtype=F64)
    at = [int(torch.argmin((freqs - f).abs())) for f in (2.0, 5.0, 10.0, 20.0, 40.0)]
    tr = SpectrumObservation(method="transfer")
    one = tr.neural_psd({"p_mean": torch.tensor(70.0, dtype=F64), "p_std": torch.tensor(1.0, dtype=F64)}, freqs,
                        seg_length=2.0).value
    half = tr.neural_psd({"p_mean": torch.tensor(70.0, dtype=F64), "p_std": torch.tensor(0.5, dtype=F64)}, freqs,
                         seg_length=2.0).value
    r = one / half
    print(f"1. transfer PSD p_std 1 / p_std 0.5 at p_mean 70: min {r.min():.6f} max {r.max():.6f} (gain ratio "
          f"{float(r.mean()) ** 0.5:.4f})")
    for p_mean, p_std in ((50.0, 0.5), (70.0, 0.5), (80.0, 0.3)):
        par = {"p_mean": torch.full((16,), p_mean, dtype=F64), "p_std": torch.full((16,), p_std, dtype=F64)}
        lin = tr.neural_psd({k: v[0] for k, v in par.items()}, freqs, seg_length=2.0).value
        sim = torch.cat([SpectrumObservation(method="simulation", duration=30.0, seed=s).neural_psd(
            par, freqs, seg_length=2.0).value for s in range(2)])
        ok = sim[:, 0] / lin[0] < 3
        ratio = sim[ok].mean(0) / lin
        print(f"2. p_mean {p_mean:g}, p_std {p_std:g}: {int((~ok).sum())} of 32 runs left the upper equilibrium; "
              f"simulated / transfer: median over 2-40 Hz {ratio.median():.3f} (5-95 %: {ratio.quantile(0.05):.2f}-"
              f"{ratio.quantile(0.95):.2f}); at 2, 5, 10, 20, 40 Hz: {', '.join(f'{float(ratio[i]):.2f}' for i in at)}; "
              f"power 2-40 Hz {float(torch.trapezoid(sim[ok].mean(0), freqs) / torch.trapezoid(lin, freqs)):.3f}, "
              f"peak {float(sim[ok].mean(0).max() / lin.max()):.3f}")
    if len(sys.argv) < 2:
        return
    from jrinfer.backends.npe import AmortizedPosterior
    from jrinfer.cli import main as cli

    edf = os.path.join(os.environ["JRINFER_DATA"], "eegmat", "Subject00_1.edf")
    est = AmortizedPosterior.load(sys.argv[1])
    p_std_npe = float(est.prior.fixed["p_std"])
    with tempfile.TemporaryDirectory() as tmp:
        for backend, extra in (("laplace", []), ("npe", ["--estimator", sys.argv[1]])):
            out = os.path.join(tmp, backend)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                cli(["fit", edf, "--kind", "spectrum", "--picks", "O1,O2", "--fmin", "2", "--fmax", "40", "--segment", "2",
                     "--backend", backend, *extra, "--out", out, "--quiet"])
            sm = json.load(open(os.path.join(out, "summary.json")))
            par = sm["parameters"]
            p_std = float(sm["prior"]["fixed"].get("p_std", float("nan")))
            g = par["gain"]
            print(f"3. {backend}: {sm['observation']}; p_std fixed {p_std:g}; gain mean {g['mean']:.4g} "
                  f"(5-95 %: {g['q05']:.3g}-{g['q95']:.3g}), gain x p_std {g['mean'] * p_std:.4g}; p_mean mean "
                  f"{par['p_mean']['mean']:.4g}; R^2 {sm['fit_quality'].get('r2_log_power', float('nan')):.3f}")
    print(f"   NPE's p_std {p_std_npe:g}")
    print("load", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
