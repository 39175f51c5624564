"""Plots (matplotlib, imported lazily). Nothing in jrinfer imports this module at import time.

Every function returns a :class:`matplotlib.figure.Figure` that is not
registered with pyplot (no backend switch, nothing to close) and, given a
``path``, saves it atomically (format from the suffix, e.g. PNG).
"""

from __future__ import annotations

import math

import numpy as np

from jrinfer._io import atomic_path
from jrinfer._optional import optional_import

__all__ = [
    "plot_fit",
    "plot_spectrum_fit",
    "plot_evoked_fit",
    "plot_marginals",
    "plot_pair",
    "plot_trace",
    "plot_bifurcation",
    "plot_npe_calibration",
    "plot_group_effects",
    "pretty_units",
]

#: Band in which the alpha peaks of data and model are looked for (Hz); the
#: fit quality's peak frequencies use the same band.
PEAK_BAND_HZ = (6.0, 14.0)
#: The conventional alpha band shaded on spectra (Hz).
ALPHA_SHADE_HZ = (8.0, 13.0)
_DATA, _MODEL, _BAND = "k", "tab:orange", "tab:orange"


def _figure(**kwargs):
    """A matplotlib Figure not managed by pyplot: no backend switch, nothing left open."""
    return optional_import("matplotlib.figure", purpose="plotting").Figure(**kwargs)


def _legend_outside(ax):
    """The legend of ``ax`` to the right of its axes, outside the data.

    Inside the axes no corner is safe: a wide predictive band (NPE, a poor
    Gaussian) or a peak can fill every one of them, and ``loc="best"`` then
    covers data. ``tight_layout`` makes room for it (the figures are widened
    by :data:`_LEGEND_WIDTH_IN`).
    """
    return ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


#: Inches added per column of a data figure for the legend at the right of its axes.
_LEGEND_WIDTH_IN = 2.9


def _save(fig, path, dpi: int = 110) -> None:
    """Save ``fig`` to ``path`` atomically (format from the suffix, e.g. PNG)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def pretty_units(units: str | None) -> str:
    """Typeset a plain-text unit string: ``uV^2/Hz`` -> ``µV²/Hz``, ``1/s`` -> ``s⁻¹``, ``1`` -> ``""``.

    Parameters
    ----------
    units : str or None
        Units as jrinfer writes them (ASCII).

    Returns
    -------
    str
        The same units with Unicode micro sign, superscripts and roots; an
        empty string for dimensionless (``"1"``) or missing units.
    """
    if not units or units.strip() == "1":
        return ""
    u = str(units)
    for a, b in (("uV", "µV"), ("^2", "²"), ("^-1", "⁻¹"), ("sqrt(Hz)", "√Hz")):
        u = u.replace(a, b)
    if u.startswith("1/") and "/" not in u[2:] and " " not in u:
        u = u[2:] + "⁻¹"
    return u


def _with_units(label: str, units: str | None) -> str:
    u = pretty_units(units)
    return f"{label} ({u})" if u else label


def _channel_title(name, width: int = 48) -> str:
    """A panel title for a channel: a long ``mean(A,B,...)`` name shortened (``short_channel_name``), wrapped."""
    import textwrap

    from jrinfer._datachecks import short_channel_name

    short = short_channel_name(name)
    if short != str(name):
        # a line breaks between channel names, never inside one ('EEG Fp1'): no-break spaces within names
        head, names = short.split(": ", 1)
        short = head + ": " + ", ".join(p.replace(" ", "\u00a0") for p in names.split(", "))
    return "\n".join(textwrap.wrap(short, width)) or short


def _arrays(posterior):
    """Observed values ``(C, P)``, grid ``(P,)``, predictive draws ``(N, C, P)`` and the fit ``(C, P)``."""
    if posterior.observed is None or posterior.predictive is None:
        raise ValueError("posterior has no observed data or posterior predictive to plot")
    obs = posterior.observed
    x = np.asarray(obs["coord_values"], dtype=float)
    y = np.asarray(obs["values"], dtype=float)
    pred = np.asarray(posterior.predictive, dtype=float).reshape((-1,) + y.shape)
    fit = np.median(pred, axis=0) if posterior.fit is None else np.asarray(posterior.fit, dtype=float).reshape(y.shape)
    return x, y, pred, fit


def _fit_label(posterior) -> str:
    if posterior.fit is None:
        return "median prediction"
    return "fit (posterior mode)" if posterior.backend == "laplace" else "fit (median prediction)"


def _headline(posterior) -> str:
    quality = posterior.fit_quality
    parts = []
    if "r2_log_power" in quality:
        parts.append(f"R² log-power {quality['r2_log_power']:.2f}")
    elif "explained_variance" in quality:
        parts.append(f"explained variance {100 * quality['explained_variance']:.0f} %")
    if posterior.warnings:
        parts.append(f"{len(posterior.warnings)} warning(s), see summary")
    return "; ".join(parts)


def _peak(x, values, band=PEAK_BAND_HZ):
    """(frequency, value) of the spectrum's peak in ``band`` (a local maximum, as fit_quality's), None if none."""
    from jrinfer.observation import band_peak

    inside = (x >= band[0]) & (x <= band[1])
    if int(inside.sum()) < 3:
        return None
    fp = band_peak(np.asarray(x, dtype=float), np.asarray(values, dtype=float), band)
    if fp is None:
        return None
    i = int(np.argmin(np.abs(np.asarray(x, dtype=float) - fp)))
    return float(x[i]), float(values[i])


def plot_fit(posterior, path=None, *, title: str | None = None):
    """Data against the fit and the 90 % posterior predictive band, with residuals.

    Spectra go to :func:`plot_spectrum_fit`, evoked responses to
    :func:`plot_evoked_fit`.

    Parameters
    ----------
    posterior : Posterior
        A result with ``observed`` and ``predictive`` set.
    path : str or Path, optional
        Where to save the figure (PNG); the figure is returned either way.
    title : str, optional
        Figure title (default: backend and status).

    Returns
    -------
    matplotlib.figure.Figure
        Not registered with pyplot, so it neither changes the backend nor
        needs closing; in Jupyter, display it by leaving it as a cell's value.
    """
    if posterior.observed is None or posterior.predictive is None:
        raise ValueError("posterior has no observed data or posterior predictive to plot")
    if posterior.observed["coord"] == "freq":
        return plot_spectrum_fit(posterior, path, title=title)
    return plot_evoked_fit(posterior, path, title=title)


def plot_spectrum_fit(posterior, path=None, *, title: str | None = None):
    """Spectrum on log-power axes: data, fit, 90 % predictive band, alpha band and peaks; residuals below.

    The upper panel per channel shades the alpha band (8-13 Hz), marks the
    largest peak of data and fit in 6-14 Hz (the band of the fit quality's
    peak frequencies), and draws the pointwise 5-95 % posterior predictive
    band; its legend is outside the axes, at the right, so that it never
    covers the data (however wide the band). The lower panel shows standardised log-power residuals
    ``(log data - log fit) / sd`` with ``sd`` the fit's residual sd of
    log-power (``fit_quality["noise_sd_log_power"]``, from the noise
    precision; else the residuals' RMS) and the ±2 band.

    Parameters
    ----------
    posterior : Posterior
        A spectrum fit (``observed["coord"] == "freq"``) with ``predictive``.
    path : str or Path, optional
        Where to save the figure.
    title : str, optional
        Figure title (default: backend and status).

    Returns
    -------
    matplotlib.figure.Figure
    """
    x, y, pred, fit = _arrays(posterior)
    if posterior.observed["coord"] != "freq":
        raise ValueError("plot_spectrum_fit needs a spectrum fit (observed coord 'freq'); use plot_evoked_fit")
    units = posterior.observed.get("units", "")
    n_ch = y.shape[0]
    fig = _figure(figsize=((6.4 + _LEGEND_WIDTH_IN) * n_ch, 5.6))
    axes = fig.subplots(2, n_ch, squeeze=False, sharex="col", gridspec_kw={"height_ratios": [3, 1.2]})
    logres = np.log(y) - np.log(fit)
    # the residuals in units of the noise the fit verdict judges them by: the Welch estimate's own where the number
    # of segments is known, else the fitted scatter (log_precision), else their RMS
    sd, by = posterior.fit_quality.get("noise_sd_welch"), "Welch noise sd"
    if not sd or not np.isfinite(sd):
        sd, by = posterior.fit_quality.get("noise_sd_log_power"), "fitted noise sd"
    if not sd or not np.isfinite(sd):
        sd, by = float(np.sqrt(np.mean(logres**2))) or 1.0, "RMS"
    for c in range(n_ch):
        ax, rax = axes[0, c], axes[1, c]
        ax.axvspan(*ALPHA_SHADE_HZ, color="tab:blue", alpha=0.08, lw=0, label="alpha band 8–13 Hz")
        lo, hi = np.quantile(pred[:, c], [0.05, 0.95], axis=0)
        ax.fill_between(x, lo, hi, color=_BAND, alpha=0.28, lw=0, label=_band_label(posterior))
        ax.plot(x, fit[c], color=_MODEL, lw=1.6, label=_fit_label(posterior))
        ax.plot(x, y[c], color=_DATA, lw=1.0, label="data")
        for vals, color, who in ((y[c], _DATA, "data"), (fit[c], _MODEL, "model")):
            pk = _peak(x, vals)
            if pk is not None:
                ax.plot(*pk, marker="v", color=color, ms=9, mec="white", ls="none", zorder=5,
                        label=f"{who} peak {pk[0]:.2f} Hz")
        ax.set_yscale("log")
        ax.set_ylabel(_with_units("power", units))
        ax.set_title(_channel_title(posterior.observed["channels"][c]), fontsize=10)
        _legend_outside(ax)
        ax.grid(True, which="major", alpha=0.3)
        z = logres[c] / sd
        rax.axhspan(-2, 2, color="0.85", lw=0)
        rax.axhline(0, color="0.4", lw=0.8)
        rax.plot(x, z, ".-", color="tab:blue", ms=3, lw=0.7)
        big = np.abs(z) > 3
        rax.plot(x[big], z[big], "o", color="tab:red", ms=4, ls="none")
        lim = max(3.5, float(np.nanmax(np.abs(z))) * 1.1)
        rax.set_ylim(-lim, lim)
        rax.set_xlabel("frequency (Hz)")
        rax.set_ylabel(f"log-power residual\n/ {by}")
    head = _headline(posterior)
    fig.suptitle((title or f"{posterior.backend}: {posterior.status}") + (f"\n{head}" if head else ""))
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig


def _band_label(posterior) -> str:
    """Legend of the predictive band; says so when its draws are ruled out by the data (see the warnings)."""
    ruled = (posterior.diagnostics or {}).get("predictive_ruled_out") or {}
    if ruled.get("ruled_out"):
        return "posterior predictive 90 % (its typical draw is\nruled out by the data: band too wide, see warnings)"
    return "posterior predictive 90 %"


def plot_evoked_fit(posterior, path=None, *, title: str | None = None):
    """Evoked response overlay: data, fit and 90 % predictive band per channel; residuals below.

    The largest deflection after stimulus onset is marked on data and fit
    (what the fit quality's peak latencies refer to); the lower panel shows
    the residual ``data - fit`` in data units with the predictive band's
    spread around the fit. The legend is outside the axes, at the right.

    Parameters
    ----------
    posterior : Posterior
        An evoked fit (``observed["coord"] == "time"``) with ``predictive``.
    path : str or Path, optional
        Where to save the figure.
    title : str, optional
        Figure title (default: backend and status).

    Returns
    -------
    matplotlib.figure.Figure
    """
    x, y, pred, fit = _arrays(posterior)
    if posterior.observed["coord"] != "time":
        raise ValueError("plot_evoked_fit needs an evoked fit (observed coord 'time'); use plot_spectrum_fit")
    units = posterior.observed.get("units", "")
    n_ch = y.shape[0]
    ncol = min(n_ch, 3)
    nrow = -(-n_ch // ncol)
    fig = _figure(figsize=((6.0 + _LEGEND_WIDTH_IN) * ncol, 4.8 * nrow))
    grid = fig.add_gridspec(2 * nrow, ncol, height_ratios=[3, 1.1] * nrow)
    post = x >= min(0.0, float(x[-1]))
    for c in range(n_ch):
        r, col = divmod(c, ncol)
        ax = fig.add_subplot(grid[2 * r, col])
        rax = fig.add_subplot(grid[2 * r + 1, col], sharex=ax)
        lo, hi = np.quantile(pred[:, c], [0.05, 0.95], axis=0)
        ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
        ax.axhline(0.0, color="0.8", lw=0.6)
        ax.fill_between(x, lo, hi, color=_BAND, alpha=0.28, lw=0, label=_band_label(posterior))
        ax.plot(x, fit[c], color=_MODEL, lw=1.6, label=_fit_label(posterior))
        ax.plot(x, y[c], color=_DATA, lw=1.0, label="data")
        for vals, color, who in ((y[c], _DATA, "data"), (fit[c], _MODEL, "model")):
            i = np.nonzero(post)[0][np.argmax(np.abs(vals[post]))]
            ax.plot(x[i], vals[i], marker="v" if vals[i] < 0 else "^", color=color, ms=9, mec="white",
                    ls="none", zorder=5, label=f"{who} peak {1e3 * x[i]:.0f} ms")
        if _band_label(posterior) != "posterior predictive 90 %":  # keep data and fit readable: the band runs off
            top = float(max(np.abs(y[c]).max(), np.abs(fit[c]).max()))
            ax.set_ylim(-2.0 * top, 2.0 * top)
        ax.set_ylabel(_with_units("potential", units))
        ax.set_title(_channel_title(posterior.observed["channels"][c]), fontsize=10)
        _legend_outside(ax)
        ax.grid(True, alpha=0.3)
        rax.fill_between(x, lo - fit[c], hi - fit[c], color=_BAND, alpha=0.2, lw=0)
        rax.axhline(0, color="0.4", lw=0.8)
        rax.plot(x, y[c] - fit[c], color="tab:blue", lw=0.8)
        if _band_label(posterior) != "posterior predictive 90 %":
            r = float(np.abs(y[c] - fit[c]).max()) or 1.0
            rax.set_ylim(-3.0 * r, 3.0 * r)
        rax.set_xlabel("time (s)")
        rax.set_ylabel(_with_units("residual", units))
    head = _headline(posterior)
    fig.suptitle((title or f"{posterior.backend}: {posterior.status}") + (f"\n{head}" if head else ""))
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig


def plot_marginals(posterior, path=None, *, names=None, title: str | None = None):
    """Prior against posterior marginal of every parameter (histograms, natural units).

    Each panel's title gives the parameter, its contraction and, below
    :data:`jrinfer.posterior.CONTRACTION_UNINFORMED`, "not informed" in red.
    Positive parameters whose prior spans more than a factor of 20 are drawn
    on a log axis.

    Parameters
    ----------
    posterior : Posterior
        Any fit; ``prior_draws`` are drawn where present.
    path : str or Path, optional
        Where to save the figure.
    names : sequence of str, optional
        Parameters to draw (default all).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from jrinfer.posterior import CONTRACTION_UNINFORMED

    names = list(posterior.names if names is None else names)
    unknown = [n for n in names if n not in posterior.names]
    if unknown:
        raise ValueError(f"names: {unknown} are not parameters of this posterior ({list(posterior.names)})")
    draws = posterior.draws.reshape(-1, len(posterior.names))
    prior = None if posterior.prior_draws is None else np.asarray(posterior.prior_draws).reshape(-1, len(posterior.names))
    ncol = min(4, len(names))
    nrow = -(-len(names) // ncol)
    fig = _figure(figsize=(3.6 * ncol, 2.7 * nrow + 0.6))
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        i = posterior.names.index(name)
        d = draws[:, i]
        both = d if prior is None else np.concatenate([d, prior[:, i]])
        both = both[np.isfinite(both)]
        lo, hi = np.quantile(both, [0.005, 0.995])
        logx = bool(lo > 0 and prior is not None and hi / lo > 20)
        if hi <= lo:
            lo, hi = lo - 0.5 * abs(lo) - 1e-12, hi + 0.5 * abs(hi) + 1e-12
        bins = np.geomspace(lo, hi, 31) if logx else np.linspace(lo, hi, 31)
        # probability per bin (the same bins for both), so log-spaced bins are not distorted
        # (np.histogram + stairs: one artist per histogram, far faster to draw than hist's bar patches)
        if prior is not None:
            hp = np.histogram(prior[:, i], bins=bins)[0] / len(prior)
            ax.stairs(hp, bins, fill=True, color="0.6", alpha=0.5, label="prior")
        ax.stairs(np.histogram(d, bins=bins)[0] / len(d), bins, fill=True, color="tab:blue", alpha=0.6,
                  label="posterior")
        if prior is not None:
            ax.stairs(hp, bins, color="0.35", lw=1.0)
        if logx:
            ax.set_xscale("log")
        ax.set_yticks([])
        ax.set_xlabel(_with_units(name, posterior.units.get(name)))
        c = posterior.contraction.get(name)
        if c is None:
            ax.set_title(name, fontsize=10)
        elif c < CONTRACTION_UNINFORMED:
            ax.set_title(f"{name}: contraction {c:.2f}, not informed", fontsize=10, color="tab:red")
        else:
            ax.set_title(f"{name}: contraction {c:.2f}", fontsize=10)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "Prior (grey) and posterior (blue) marginals")
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig


def _pair_names(posterior, n: int = 4) -> list[str]:
    """Up to ``n`` parameters that take part in the strongest posterior correlations."""
    d = posterior.draws.reshape(-1, len(posterior.names))
    sd = d.std(0)
    keep = [
        i for i, name in enumerate(posterior.names)
        if sd[i] > 0 and np.isfinite(sd[i]) and name != "log_precision"  # the noise level pairs with nothing of interest
    ]
    if len(keep) <= n:
        return [posterior.names[i] for i in keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(np.log(np.abs(d[:, keep]) + 1e-300).T if (d[:, keep] > 0).all() else d[:, keep].T)
    pairs = sorted(
        ((abs(r[a, b]), a, b) for a in range(len(keep)) for b in range(a + 1, len(keep)) if np.isfinite(r[a, b])),
        reverse=True,
    )
    chosen: list[int] = []
    for _, a, b in pairs:
        for j in (a, b):
            if j not in chosen and len(chosen) < n:
                chosen.append(j)
        if len(chosen) >= n:
            break
    return [posterior.names[keep[j]] for j in sorted(chosen)]


def plot_pair(posterior, path=None, *, names=None, max_params: int = 4, title: str | None = None):
    """Pair plot of a few parameters through ArviZ (``arviz.plot_pair`` with marginals).

    Parameters
    ----------
    posterior : Posterior
        Any fit (converted with :meth:`Posterior.to_arviz`).
    path : str or Path, optional
        Where to save the figure.
    names : sequence of str, optional
        Parameters to pair (default: up to ``max_params`` that take part in
        the strongest posterior correlations, the trade-offs worth seeing).
    max_params : int
        How many parameters to choose when ``names`` is not given (>= 2).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    az = optional_import("arviz", purpose="pair plots")
    names = list(_pair_names(posterior, max_params) if names is None else names)
    unknown = [n for n in names if n not in posterior.names]
    if unknown:
        raise ValueError(f"names: {unknown} are not parameters of this posterior ({list(posterior.names)})")
    if len(names) < 2:
        raise ValueError(f"a pair plot needs at least 2 parameters with spread; got {names}")
    k = len(names)
    fig = _figure(figsize=(2.1 * k + 0.6, 2.1 * k + 0.6))
    axes = fig.subplots(k, k, squeeze=False)
    idata = posterior.to_arviz()
    labeller = None
    try:  # axis labels with units
        from arviz.labels import MapLabeller

        labeller = MapLabeller(var_name_map={n: _with_units(n, posterior.units.get(n)) for n in names})
    except ImportError:  # pragma: no cover - older arviz
        pass
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"labeller": labeller} if labeller is not None else {}
        az.plot_pair(
            idata, var_names=names, kind="scatter", marginals=True, ax=axes, textsize=9,
            scatter_kwargs={"alpha": 0.25, "s": 4}, **kw,
        )
    from matplotlib.ticker import MaxNLocator

    for a in axes.ravel():
        a.xaxis.set_major_locator(MaxNLocator(4))
        a.tick_params(axis="x", labelrotation=30)
    fig.suptitle(title or "Posterior pairs (the strongest correlations)")
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig


def plot_trace(posterior, path=None, *, names=None, title: str | None = None):
    """Trace plot of a sampler's chains: per parameter, the draws of every chain and their densities.

    Parameters
    ----------
    posterior : Posterior
        A fit with draws of shape ``(chains, draws, n)`` (NUTS, SMC; works for
        any backend).
    path : str or Path, optional
        Where to save the figure.
    names : sequence of str, optional
        Parameters to show (default all).
    title : str, optional
        Figure title (default: the backend and the R-hat maximum when known).

    Returns
    -------
    matplotlib.figure.Figure
        One row per parameter: left the marginal density per chain, right
        the chains' draws against the iteration.
    """
    az = optional_import("arviz", purpose="trace plots")
    names = list(posterior.names if names is None else names)
    unknown = [n for n in names if n not in posterior.names]
    if unknown:
        raise ValueError(f"names: {unknown} are not parameters of this posterior ({list(posterior.names)})")
    k = len(names)
    fig = _figure(figsize=(9.0, 1.6 * k + 0.8))
    axes = fig.subplots(k, 2, squeeze=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        az.plot_trace(posterior.to_arviz(), var_names=names, axes=axes, compact=False)
    for i, n in enumerate(names):
        axes[i, 0].set_title(_with_units(n, posterior.units.get(n)), fontsize=9)
        axes[i, 1].set_title("")
    rhat = posterior.diagnostics.get("rhat_max")
    fig.suptitle(title or f"{posterior.backend}: chains" + (f" (R-hat max {rhat:.3f})" if rhat is not None else ""))
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig


def plot_bifurcation(p, v, stable, *, hopf=(), fold=(), ax=None, path=None, title: str | None = None):
    """Equilibria of the JR model over the input with labelled Hopf and fold points.

    Parameters
    ----------
    p : array_like
        Input values ``p_mean`` (pulses/s), shape ``(N,)``.
    v : array_like
        Equilibrium ``v = y1 - y2`` (mV), shape ``(N, K)``; NaN where a
        branch does not exist.
    stable : array_like of bool
        Stability of each equilibrium, shape ``(N, K)``.
    hopf, fold : sequence of (p, v)
        Hopf and fold (saddle-node) points: input and equilibrium potential.
    ax : matplotlib Axes, optional
        Draw into this axes (e.g. a panel of a larger figure) instead of a
        new figure.
    path : str or Path, optional
        Where to save the figure (only with a new figure).
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    p = np.asarray(p, dtype=float)
    v = np.asarray(v, dtype=float).reshape(p.shape[0], -1)
    stable = np.asarray(stable, dtype=bool).reshape(v.shape)
    if ax is None:
        fig = _figure(figsize=(6.4, 4.6))
        ax = fig.subplots()
    else:
        fig = ax.figure
    for k in range(v.shape[1]):
        ok = np.isfinite(v[:, k])
        st, un = ok & stable[:, k], ok & ~stable[:, k]
        ax.plot(p[st], v[st, k], "k.", ms=2)
        ax.plot(p[un], v[un, k], ".", color="0.7", ms=2)
    ax.plot([], [], "k-", lw=2, label="stable equilibrium")  # legend proxies (the dots are tiny)
    ax.plot([], [], "-", color="0.7", lw=2, label="unstable equilibrium")
    right = float(np.nanmin(p) + 0.7 * (np.nanmax(p) - np.nanmin(p)))
    for j, (ph, vh) in enumerate(hopf):
        ax.axvline(ph, color="tab:red", lw=0.8, ls="--")
        ax.plot(ph, vh, "o", color="tab:red", ms=7, mec="white", label="Hopf" if j == 0 else None, zorder=5)
        ax.annotate(f"Hopf\np = {ph:.1f}", (ph, vh), xytext=(-6, -24) if ph > right else (6, 8),
                    textcoords="offset points", color="tab:red", fontsize=8, ha="right" if ph > right else "left")
    for j, (pf, vf) in enumerate(fold):
        ax.plot(pf, vf, "s", color="tab:purple", ms=7, mec="white", label="fold (saddle-node)" if j == 0 else None,
                zorder=5)
        ax.annotate(f"fold\np = {pf:.1f}", (pf, vf), xytext=(6, -22), textcoords="offset points",
                    color="tab:purple", fontsize=8)
    ax.set(xlabel="p_mean (pulses/s)", ylabel="v = y1 − y2 at equilibrium (mV)",
           title=title or "Equilibria over the input")
    ax.legend(fontsize=8, loc="best")
    if path is not None:
        fig.tight_layout()
        _save(fig, path)
    return fig


def plot_npe_calibration(calibration: dict, path=None, *, title: str | None = None):
    """SBC rank histograms per parameter and expected coverage of an NPE estimator.

    Parameters
    ----------
    calibration : dict
        :meth:`jrinfer.backends.npe.AmortizedPosterior.calibrate`'s result
        (``names``, ``ranks``, ``n_posterior_samples``, ``ecp``, ``alpha``,
        ``coverage``, ``verdict``).
    path : str or Path, optional
        Where to save the figure.
    title : str, optional
        Figure title (default: the verdict).

    Returns
    -------
    matplotlib.figure.Figure
        One rank histogram per parameter (with the 99 % band of a uniform
        histogram's counts) and a coverage panel: TARP's expected coverage
        against the credibility level, the marginal coverage of the central
        credible intervals averaged over parameters, and the diagonal where a
        calibrated posterior lies.
    """
    from scipy import stats

    names = list(calibration["names"])
    ranks = np.asarray(calibration["ranks"], dtype=float)
    n, k = ranks.shape
    n_post = int(calibration["n_posterior_samples"])
    n_bins = int(max(5, min(20, n // 10)))
    cols = min(4, k + 1)
    rows = int(np.ceil((k + 1) / cols))
    fig = _figure(figsize=(3.0 * cols, 2.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    lo, hi = stats.binom.ppf([0.005, 0.995], n, 1.0 / n_bins)
    edges = np.linspace(0, n_post + 1, n_bins + 1)
    pvals = calibration.get("sbc_ks_pvalues", {})
    for i, name in enumerate(names):
        ax = axes[i]
        ax.axhspan(lo, hi, color="0.85", lw=0)
        ax.hist(ranks[:, i], bins=edges, color="tab:blue", alpha=0.8)
        ax.axhline(n / n_bins, color="0.4", lw=0.8)
        p = pvals.get(name)
        ax.set_title(name + ("" if p is None else f"  (KS p = {p:.2g})"), fontsize=9)
        ax.set_yticks([])
        ax.set_xlabel("rank", fontsize=8)
    ax = axes[k]
    ax.plot([0, 1], [0, 1], color="0.4", lw=0.8, ls="--", label="nominal")
    if calibration.get("alpha") and calibration.get("ecp"):
        ax.plot(calibration["alpha"], calibration["ecp"], color="tab:orange",
                label=f"TARP (atc {calibration.get('tarp_atc', float('nan')):.2f})")
    cov = calibration.get("coverage") or {}
    if cov:
        q = np.array([float(level) for level in cov])
        c = np.array([v["mean"] for v in cov.values()])
        se = np.array([v["standard_error"] for v in cov.values()])
        ax.errorbar(q, c, yerr=3 * se, fmt="o", color="tab:blue", ms=4, label="marginal (mean, ±3 SE)")
    ax.set_xlabel("credibility level", fontsize=8)
    ax.set_ylabel("coverage", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("expected coverage", fontsize=9)
    for ax in axes[k + 1:]:
        ax.set_visible(False)
    fig.suptitle(title or calibration.get("verdict", "NPE calibration"), fontsize=9, wrap=True)
    if path is not None:
        _save(fig, path)
    return fig


def plot_group_effects(group: dict, path=None, *, title: str | None = None):
    """Forest plot of condition effects over subjects: each subject's interval, the group estimates.

    Parameters
    ----------
    group : dict
        :func:`jrinfer.conditions.group_effects`'s result.
    path : str or Path, optional
        Where to save the figure.
    title : str, optional
        Figure title (default: the conditions and the number of subjects).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per difference (log ratio, or additive difference): each
        subject's posterior mean and interval, the fixed-effects estimate
        (Bayesian parameter averaging) and the random-effects mean with its
        t confidence interval, a line at no difference, and the verdict
        (agree, disagree, fixed effects only, none) in the panel's title.
    """
    panels = [(v, c, e) for v, per in group["effects"].items() for c, e in per.items()]
    n_sub = group["n_subjects"]
    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig = _figure(figsize=(4.2 * cols, (0.45 * (n_sub + 3) + 1.3) * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    ref = group["reference"]
    pct = round(100 * group["interval"])
    for ax, (v, c, e) in zip(axes, panels):
        subj = e["subjects"]
        y = np.arange(len(subj) + 2)[::-1]
        from jrinfer.conditions import ESTABLISHED_LOG_BF

        for yi, s in zip(y[:-2], subj):
            # black: established (the interval leaves out 0 and log BF >= 1); dark grey dashed: the interval alone
            # (suggestive); light grey: holds 0
            excludes = not (s["lower"] <= 0.0 <= s["upper"])
            established = excludes and s.get("log_bayes_factor", math.inf) >= ESTABLISHED_LOG_BF
            color = "k" if established else "0.35" if excludes else "0.65"
            ax.plot([s["lower"], s["upper"]], [yi, yi], color=color, lw=1.6, ls="-" if established or not excludes
                    else "--")
            ax.plot(s["mean"], yi, "o", color=color, ms=4)
        b, r = e["bpa"], e["random_effects"]
        ax.plot([b["lower"], b["upper"]], [y[-2]] * 2, color="tab:orange", lw=2.5)
        ax.plot(b["mean"], y[-2], "D", color="tab:orange", ms=6)
        if r["lower"] is not None:
            ax.plot([r["lower"], r["upper"]], [y[-1]] * 2, color="tab:blue", lw=2.5)
        ax.plot(r["mean"], y[-1], "s", color="tab:blue", ms=6)
        ax.axvline(0.0, color="0.3", lw=0.8, ls="--")
        p = "" if r["p"] is None else f", p = {r['p']:.2g}"
        caveated = {c.split(": ")[0] for c in group.get("caveats") or []}  # subjects whose fits warn
        ax.set_yticks(y, [s["subject"][:18] + (" (warning)" if s["subject"] in caveated else "") for s in subj]
                      + ["fixed (BPA)", f"random (t{p})"], fontsize=7)
        unit = f"log ratio {c}/{ref}" if e["scale"] == "log" else f"{c} - {ref}"
        ax.set_xlabel(f"{v}: {unit} ({pct} % intervals)", fontsize=8)
        ax.set_title(f"{v}: {e['verdict']}", fontsize=9, color="tab:red" if e["verdict"] == "disagree" else "k")
        if not ax.get_legend() and ax is axes[0]:
            ax.text(0.0, -0.32, "subjects: black established (log BF >= 1), dashed interval only, grey holds 0",
                    transform=ax.transAxes, fontsize=6, color="0.3")
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or f"{', '.join(group['conditions'][1:])} vs {ref}: {n_sub} subject(s)", fontsize=9)
    if path is not None:
        _save(fig, path)
    return fig
