"""``jrinfer demo``: the README's main job on the bundled example, plus a tour of the model.

The main job: fit the bundled synthetic EEG spectrum (generated from known
Jansen-Rit parameters, ``datasets/make_synthetic.py``) with variational
Laplace and compare the posterior with the truth; written to ``fit/``
(``summary.json``, ``posterior.nc``, ``fit.png``, ``marginals.png``) and shown
on ``report.html``, a self-contained page (figures inline) to open in a
browser. When the EEGMAT resting recording is in the local data cache
(``JRINFER_DATA``), subject 0's occipital spectrum is fitted too
(``fit_eegmat/`` with its own ``report.html``; summarised on the main page).

Also writes into the output directory:

- ``bifurcation.csv`` / ``summary.json``: equilibria of the JR 1995 model over
  the external input ``p_mean`` with their stability, the Hopf and fold
  points located by root finding;
- ``alpha_limit_cycle.csv``: the deterministic alpha rhythm at
  ``p_mean = 220`` (RK4, dt = 0.1 ms);
- ``spectrum.csv``: the linearised spectrum at a stable equilibrium next to
  the Welch spectrum of noisy simulations of the same model;
- ``demo.png`` when matplotlib is installed (the bifurcation diagram with
  labelled Hopf and fold points, the limit cycle and the spectra).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from jrinfer._io import observed_sha256, write_csv, write_text
from jrinfer.model import JansenRit
from jrinfer.spectral import welch_psd

_OUTPUTS = (
    "bifurcation.csv", "alpha_limit_cycle.csv", "spectrum.csv", "summary.json", "demo.png", "report.html", "fit",
    "fit_eegmat",
)


def _bisect(fun, lo: float, hi: float, tol: float = 1e-9) -> float:
    """Root of a scalar function with a sign change on ``[lo, hi]``."""
    from scipy.optimize import brentq

    return float(brentq(fun, lo, hi, xtol=tol))


def run_demo(out: Path, *, force: bool = False) -> int:
    """Run the demo and write its outputs into ``out`` (created if missing).

    Parameters
    ----------
    out : Path
        Output directory.
    force : bool
        Overwrite existing demo outputs in ``out``; without it, existing
        files make the demo stop before writing anything.

    Returns
    -------
    int
        Exit status (0 on success).
    """
    out = Path(out)
    existing = [name for name in _OUTPUTS if (out / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass --force to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # 1) Equilibria over the input and the bifurcations (Grimbert & Faugeras 2006).
    p_grid = torch.linspace(0.0, 350.0, 701, dtype=torch.float64)
    fp = JansenRit(p_mean=p_grid).fixed_points()

    def upper_growth(p: float) -> float:
        return float(JansenRit(p_mean=p).fixed_points().upper().eigenvalues.real.amax())

    hopf = [_bisect(upper_growth, 60.0, 100.0), _bisect(upper_growth, 250.0, 340.0)]
    counts = fp.count.numpy()
    fold_lo = float(p_grid[np.nonzero(counts == 3)[0].max()])
    fold = _bisect(lambda p: float(JansenRit(p_mean=p).fixed_points().count) - 2.0, fold_lo, fold_lo + 0.5)
    hopf_freq = float(JansenRit(p_mean=hopf[0]).fixed_points().upper().dominant_frequency_hz)
    hopf_points = [(h, float(JansenRit(p_mean=h).fixed_points().upper().v)) for h in hopf]
    near_fold = JansenRit(p_mean=fold - 1e-6).fixed_points()
    vs = np.sort(near_fold.v.numpy().ravel()[: int(near_fold.count)])
    j = int(np.argmin(np.diff(vs)))  # the two equilibria that merge at the fold
    fold_point = (fold, float(0.5 * (vs[j] + vs[j + 1])))
    rows = []
    for i, p in enumerate(p_grid.tolist()):
        for k in range(int(fp.count[i])):
            rows.append((p, float(fp.v[i, k]), int(fp.stable[i, k])))
    write_csv(out / "bifurcation.csv", ["p_mean", "v", "stable"], np.array(rows).T)

    # 2) The deterministic alpha rhythm (limit cycle) at p_mean = 220.
    cycle = JansenRit(p_mean=220.0, p_std=0.0).simulate(2.0, 1e-4, transient=3.0, record_every=10)
    v = cycle.v.numpy()
    crossings = np.nonzero((v[:-1] < v.mean()) & (v[1:] >= v.mean()))[0]
    cycle_freq = (len(crossings) - 1) / ((crossings[-1] - crossings[0]) / cycle.sampling_rate)
    write_csv(out / "alpha_limit_cycle.csv", ["time", "v"], [cycle.time.numpy(), v])

    # 3) Linearised vs simulated spectrum at a stable equilibrium.
    p_stable, noise = 60.0, 0.05
    model = JansenRit(p_mean=torch.full((20,), p_stable), p_std=noise)
    sim = model.simulate(64.0, 1e-4, seed=0, record_every=10, transient=8.0, initial_state="equilibrium")
    welch = welch_psd(sim.v, sim.sampling_rate, nperseg=8000)
    welch_mean = welch.psd.mean(0)
    lin = JansenRit(p_mean=p_stable, p_std=noise).linear_psd(welch.freqs)
    keep = (welch.freqs >= 1.0) & (welch.freqs <= 40.0)
    write_csv(
        out / "spectrum.csv",
        ["freq", "linearised", "simulated"],
        [welch.freqs[keep].numpy(), lin.psd[keep].numpy(), welch_mean[keep].numpy()],
    )
    synthetic, syn_post, syn_meta = _fit_synthetic(out / "fit")
    fits = {"synthetic": synthetic}
    eegmat = _fit_eegmat(out / "fit_eegmat")
    if eegmat is not None:
        fits["eegmat_subject0_occipital"] = eegmat
    summary = {
        "fits": fits,
        "hopf_p_mean": hopf,
        "hopf_frequency_hz": hopf_freq,
        "fold_p_mean": fold,
        "fold_v_mv": fold_point[1],
        "hopf_v_mv": [v_h for _, v_h in hopf_points],
        "limit_cycle": {
            "p_mean": 220.0,
            "frequency_hz": float(cycle_freq),
            "peak_to_peak_mv": float(v.max() - v.min()),
        },
        "stable_spectrum": {
            "p_mean": p_stable,
            "p_std": noise,
            "peak_hz_linearised": float(welch.freqs[keep][lin.psd[keep].argmax()]),
            "peak_hz_simulated": float(welch.freqs[keep][welch_mean[keep].argmax()]),
            "simulation_backend": sim.backend,
            "n_welch_segments": welch.n_segments * 20,
        },
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    plotted = _plot(
        out / "demo.png", p_grid, fp, cycle, welch.freqs[keep], lin.psd[keep], welch_mean[keep], hopf_points, fold_point
    )
    reported = _report(out, syn_post, syn_meta, synthetic, eegmat, plotted)
    print(f"Hopf bifurcations at p_mean = {hopf[0]:.2f} and {hopf[1]:.2f} pulses/s ({hopf_freq:.2f} Hz)")
    print(f"fold (3 -> 1 equilibria) at p_mean = {fold:.2f} pulses/s")
    print(f"limit cycle at p_mean = 220: {cycle_freq:.2f} Hz, {v.max() - v.min():.2f} mV peak to peak")
    print(
        f"stable regime p_mean = {p_stable:g}: spectral peak {summary['stable_spectrum']['peak_hz_linearised']:.2f} Hz "
        f"(linearised) vs {summary['stable_spectrum']['peak_hz_simulated']:.2f} Hz (simulated)"
    )
    syn = fits["synthetic"]
    print(
        f"fit of the bundled synthetic spectrum: {syn['status']} in {syn['seconds']} s, "
        f"F = {syn['free_energy']:.1f} nats; truth inside the 90% interval for {syn['truth_in_90']} of "
        f"{len(syn['truth'])} parameters"
    )
    for name in ("a", "b", "gain"):
        p = syn["parameters"][name]
        print(f"  {name:>5s}: truth {syn['truth'][name]:.4g}, posterior {p['mean']:.4g} [{p['q05']:.4g}, {p['q95']:.4g}]")
    for w in syn.get("warnings", []):
        print(f"  warning: {w}")
    if eegmat is not None:
        print(
            f"EEGMAT recording found in the data cache, fitted too: subject 0 (O1/O2, 2-40 Hz) {eegmat['status']}, "
            f"alpha peak {eegmat['data_peak_hz']:.2f} Hz "
            f"(data) vs {eegmat['model_peak_hz']:.2f} Hz (posterior mode)"
        )
        for w in eegmat.get("warnings", []):
            print(f"  warning: {w}")
    else:
        print("EEGMAT recording not in the data cache (set JRINFER_DATA): real-data fit skipped")
    extras = [name for name, done in (("demo.png", plotted), ("report.html", reported)) if done]
    print(f"wrote {out}/ ({'with ' + ', '.join(extras) if extras else 'without plots: install matplotlib'}) "
          f"in {round(time.perf_counter() - t_start, 2)} s")
    if reported:
        print(f"open {out / 'report.html'} in a browser")
    return 0


def _write_fit(posterior, folder: Path, title: str, meta: dict) -> None:
    """``summary.json`` (the posterior's summary with the data, prior and observation of ``meta``), ``posterior.nc``
    and the plots ``fit.png``, ``marginals.png`` into ``folder``."""
    folder.mkdir(exist_ok=True)
    write_text(folder / "summary.json", json.dumps({**posterior.summary(), **meta}, indent=2, default=float))
    nc = folder / "posterior.nc"
    try:
        posterior.to_netcdf(nc, overwrite=True)  # atomic: an older posterior.nc stays whole until replaced
    except ImportError:  # arviz not installed: summary only, and no stale file from an earlier run
        nc.unlink(missing_ok=True)
    try:
        from jrinfer.plotting import plot_fit, plot_marginals

        plot_fit(posterior, folder / "fit.png", title=title)
        plot_marginals(posterior, folder / "marginals.png")
    except ImportError:
        pass


def _meta(problem, obs, data, file: str) -> dict:
    """What ``jrinfer fit`` adds to ``summary.json``: data, prior, observation (the report shows them)."""
    observed = problem.observed()
    return {
        "data": {
            "file": file,
            "kind": "spectrum",
            "channels": list(observed.channels),
            "units": observed.units,
            "n_points": int(observed.values.shape[-1]),
            "observed_sha256": observed_sha256(observed),
            "channels_used": data.metadata.get("channels_used") or data.metadata.get("averaged_channels"),
            "channels_dropped": data.metadata.get("channels_dropped"),
        },
        "prior": problem.prior.to_dict(),
        "observation": repr(obs),
    }


def _fit_synthetic(folder: Path):
    """Fit the bundled spectrum; ``(result dict for summary.json, Posterior, meta)``."""
    import warnings

    from jrinfer import datasets
    from jrinfer.backends.laplace import VariationalLaplace
    from jrinfer.observation import SpectrumObservation
    from jrinfer.problem import InverseProblem

    data = datasets.synthetic_spectrum()
    truth = {**data.metadata["parameters"], "gain": data.metadata["output_gain"]}  # no 1/f or floor in it
    obs = SpectrumObservation()
    problem = InverseProblem(obs, obs.default_prior(data), data)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        post = VariationalLaplace().fit(problem)
    seconds = round(time.perf_counter() - t0, 2)
    meta = _meta(problem, obs, data, "bundled example jrinfer/_data/synthetic_spectrum.csv (synthetic, known truth)")
    _write_fit(post, folder, "bundled synthetic spectrum: variational Laplace", meta)
    summ = post.summary()
    known = {n: v for n, v in truth.items() if n in post.names}
    inside = sum(summ["parameters"][n]["q05"] <= v <= summ["parameters"][n]["q95"] for n, v in known.items())
    result = {
        "status": post.status,
        "seconds": seconds,
        "free_energy": post.log_evidence,
        "parameters": summ["parameters"],
        "truth": known,
        "truth_in_90": int(inside),
        "warnings": list(post.warnings),
    }
    return result, post, meta


def _fit_eegmat(folder: Path) -> dict | None:
    import warnings

    from jrinfer import datasets
    from jrinfer.backends.laplace import VariationalLaplace
    from jrinfer.observation import SpectrumObservation
    from jrinfer.problem import InverseProblem

    try:
        data = datasets.eegmat_spectrum(subject=0, channels=("O1", "O2"), fmin=2.0, fmax=40.0).mean_over_channels()
    except (FileNotFoundError, ImportError):
        return None
    obs = SpectrumObservation()
    problem = InverseProblem(obs, obs.default_prior(data), data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        post = VariationalLaplace().fit(problem)
    meta = _meta(problem, obs, data, "EEGMAT Subject00_1.edf (rest), O1/O2 averaged, from the data cache")
    meta["data"]["channels_used"] = ["O1", "O2"]
    _write_fit(post, folder, "EEGMAT subject 0, O1/O2 rest: variational Laplace", meta)
    report = None
    try:
        from jrinfer.report import write_report

        report = write_report(post, folder / "report.html", meta, overwrite=True,
                              title="EEGMAT subject 0, O1/O2 at rest: variational Laplace")
    except ImportError:
        pass
    f = data.freqs.numpy()
    band = (f >= 7) & (f <= 14)
    mode = problem.prior.from_unconstrained(torch.from_numpy(post.mean_unconstrained))
    pred = problem.predict(mode).value.detach().numpy()
    return {
        "status": post.status,
        "free_energy": post.log_evidence,
        "data_peak_hz": float(f[band][data.power[0].numpy()[band].argmax()]),
        "model_peak_hz": float(f[band][pred[band].argmax()]),
        "r2_log_power": post.fit_quality.get("r2_log_power"),
        "warnings": list(post.warnings),
        "parameters": post.summary()["parameters"],
        "report": None if report is None else "fit_eegmat/report.html",
    }


def _report(out: Path, post, meta: dict, synthetic: dict, eegmat: dict | None, plotted: bool) -> bool:
    """``out/report.html``: the synthetic fit's page with the truth, the model tour and the EEGMAT headline."""
    import base64
    import html

    try:
        from jrinfer.report import write_report

        import matplotlib  # noqa: F401
        import arviz  # noqa: F401
    except ImportError:
        (out / "report.html").unlink(missing_ok=True)  # no stale page from an earlier run
        return False
    sections = []
    if eegmat is not None:
        warn = "".join(f"<li>{html.escape(w)}</li>" for w in eegmat["warnings"])
        r2 = eegmat.get("r2_log_power")
        img = ""
        if (out / "fit_eegmat" / "fit.png").is_file():
            uri = base64.b64encode((out / "fit_eegmat" / "fit.png").read_bytes()).decode("ascii")
            img = f'<figure><img alt="EEGMAT fit" src="data:image/png;base64,{uri}"></figure>'
        link = (' Its full page: <a href="fit_eegmat/report.html">fit_eegmat/report.html</a>.'
                if eegmat.get("report") else "")
        sections.append((
            "Real EEG: EEGMAT subject 0 at rest (O1/O2, 2–40 Hz)",
            f"<p>The EEGMAT recording was found in the data cache and fitted too: status "
            f"<b>{html.escape(str(eegmat['status']))}</b>, alpha peak {eegmat['data_peak_hz']:.2f} Hz (data) vs "
            f"{eegmat['model_peak_hz']:.2f} Hz (posterior mode)"
            + (f", R² of log-power {r2:.2f}" if r2 is not None else "") + f".{link}</p>"
            + (f"<ul>{warn}</ul>" if warn else "") + img,
        ))
    else:
        sections.append(("Real EEG", "<p>The EEGMAT recording is not in the data cache (set <code>JRINFER_DATA</code>"
                                     "): the real-data fit was skipped.</p>"))
    if plotted and (out / "demo.png").is_file():
        uri = base64.b64encode((out / "demo.png").read_bytes()).decode("ascii")
        sections.append((
            "A tour of the model",
            f'<figure><img alt="bifurcation diagram, limit cycle and spectra" src="data:image/png;base64,{uri}">'
            "<figcaption>Left: equilibria over the input p_mean (black stable, grey unstable) with the Hopf "
            "points (red) and the fold (purple). Middle: the alpha limit cycle at p_mean = 220. Right: the "
            "linearised spectrum at a stable equilibrium against simulations (Welch).</figcaption></figure>",
        ))
    write_report(post, out / "report.html", meta, overwrite=True, truth=synthetic["truth"], extra_sections=sections,
                 title="jrinfer demo: the bundled synthetic spectrum, variational Laplace")
    return True


def _plot(path, p_grid, fp, cycle, freqs, lin_psd, sim_psd, hopf_points, fold_point) -> bool:
    from jrinfer.plotting import _figure, _save, plot_bifurcation

    try:
        fig = _figure(figsize=(15, 4.4))
    except ImportError:
        return False
    axes = fig.subplots(1, 3)
    n = p_grid.numel()
    v = np.full((n, fp.v.shape[-1]), np.nan)
    stable = np.zeros(v.shape, dtype=bool)
    for i in range(n):
        k = int(fp.count[i])
        v[i, :k] = fp.v[i, :k].numpy()
        stable[i, :k] = fp.stable[i, :k].numpy()
    plot_bifurcation(p_grid.numpy(), v, stable, hopf=hopf_points, fold=[fold_point], ax=axes[0],
                     title="Equilibria over the input")
    ax = axes[1]
    ax.plot(cycle.time.numpy(), cycle.v.numpy(), lw=1)
    ax.set(xlabel="time (s)", ylabel="v (mV)", title="Alpha limit cycle, p_mean = 220")
    ax = axes[2]
    ax.semilogy(freqs.numpy(), sim_psd.numpy(), label="simulation + Welch")
    ax.semilogy(freqs.numpy(), lin_psd.numpy(), "--", label="linearised")
    ax.set(xlabel="frequency (Hz)", ylabel="PSD (mV²/Hz)", title="Stable regime, p_mean = 60")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return True
