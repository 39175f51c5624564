"""Pareto-smoothed importance sampling (PSIS), shared by the backends that correct an approximation.

Variational Laplace weighs its Gaussian against the true log joint
(:mod:`jrinfer.backends.laplace`); NPE weighs its flow the same way
(:mod:`jrinfer.backends.npe`, neural importance sampling). One implementation
for both: ArviZ's ``psislw``.

Reference: A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry (2024), "Pareto
smoothed importance sampling", JMLR 25:72.
"""

from __future__ import annotations

import torch

from jrinfer._optional import optional_import


def _psis(log_weights: torch.Tensor):
    """Pareto-smoothed importance weights (ArviZ's ``psislw``): k-hat, ESS, normalised weights.

    Parameters
    ----------
    log_weights : torch.Tensor
        ``(N,)`` unnormalised log importance ratios ``log p - log q``; ``-inf``
        (or NaN) where the target density is zero.

    Returns
    -------
    (float, float, torch.Tensor) or (None, None, None)
        Pareto k-hat, the effective sample size ``1 / sum w^2`` of the
        smoothed weights, and the ``(N,)`` float64 normalised weights (zero
        where the log weight is not finite). ``(inf, 0.0, None)`` when fewer
        than 5 log weights are finite; ``(None, None, None)`` when ArviZ is
        not installed.
    """
    try:
        az = optional_import("arviz", purpose="Pareto-smoothed importance sampling")
    except ImportError:
        return None, None, None
    import warnings as _w

    import numpy as np

    lw = log_weights.detach().to(torch.float64).numpy().astype(float)
    finite = np.isfinite(lw)
    if finite.sum() < 5:
        return float("inf"), 0.0, None
    lw_f = np.where(finite, lw, lw[finite].min() - 1e3)
    with _w.catch_warnings():
        _w.simplefilter("ignore")
        smoothed, k = az.psislw(lw_f)
    smoothed = np.where(finite, smoothed, -np.inf)
    w = np.exp(smoothed - smoothed[finite].max())
    w = w / w.sum()
    ess = float(1.0 / np.sum(w**2))
    return float(k), ess, torch.from_numpy(w)
