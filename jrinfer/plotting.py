"""Plots (matplotlib, imported lazily). Nothing in jrinfer imports this module at import time."""

from __future__ import annotations

import numpy as np

from jrinfer._io import atomic_path
from jrinfer._optional import optional_import

__all__ = ["plot_fit"]


def _figure(**kwargs):
    """A matplotlib Figure not managed by pyplot: no backend switch, nothing left open."""
    return optional_import("matplotlib.figure", purpose="plotting").Figure(**kwargs)


def _save(fig, path, dpi: int = 110) -> None:
    """Save ``fig`` to ``path`` atomically (format from the suffix, e.g. PNG)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)


def plot_fit(posterior, path=None, *, title: str | None = None):
    """Data against the fit (the prediction the fit quality refers to) and the 90 % posterior predictive band.

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
    obs = posterior.observed
    x = np.asarray(obs["coord_values"])
    y = np.asarray(obs["values"])
    pred = np.asarray(posterior.predictive).reshape((-1,) + y.shape)
    n_ch = y.shape[0]
    fig = _figure(figsize=(6 * n_ch, 4.2))
    axes = fig.subplots(1, n_ch, squeeze=False)
    spectral = obs["coord"] == "freq"
    fit = None if posterior.fit is None else np.asarray(posterior.fit)
    fit_label = "fit (posterior mode)" if posterior.backend == "laplace" else "fit (median prediction)"
    for c, ax in enumerate(axes[0]):
        lo, hi = np.quantile(pred[:, c], [0.05, 0.95], axis=0)
        ax.fill_between(x, lo, hi, color="tab:orange", alpha=0.3, lw=0, label="posterior predictive 90%")
        if fit is not None:
            ax.plot(x, fit[c], color="tab:orange", lw=1.5, label=fit_label)
        ax.plot(x, y[c], color="k", lw=1, label="data")
        if spectral:
            ax.set_yscale("log")
            ax.set_xlabel("frequency (Hz)")
            ax.set_ylabel(f"power ({obs.get('units', '')})")
        else:
            ax.set_xlabel("time (s)")
            ax.set_ylabel(f"potential ({obs.get('units', '')})")
        ax.set_title(str(obs["channels"][c]))
        ax.legend(fontsize=8)
    quality = posterior.fit_quality
    headline = ""
    if "r2_log_power" in quality:
        headline = f"R² log-power {quality['r2_log_power']:.2f}"
    elif "explained_variance" in quality:
        headline = f"explained variance {100 * quality['explained_variance']:.0f} %"
    if posterior.warnings:
        headline += f"; {len(posterior.warnings)} warning(s), see summary"
    fig.suptitle((title or f"{posterior.backend}: {posterior.status}") + (f"\n{headline}" if headline else ""))
    fig.tight_layout()
    if path is not None:
        _save(fig, path)
    return fig
