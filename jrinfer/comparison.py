"""Model comparison: Bayesian model reduction and Bayes factors from (approximate) log evidences.

* K. Friston, W. Penny (2011), "Post hoc Bayesian model selection",
  NeuroImage 56:2089-2099 (Bayesian model reduction);
* R. E. Kass, A. E. Raftery (1995), "Bayes factors", JASA 90:773-795.

Independent implementation written from the published equations.
"""

from __future__ import annotations

import torch

from jrinfer import _checks
from jrinfer._linalg import _SPD, _check_psd, _check_spd, _check_vector

__all__ = ["bayesian_model_reduction", "log_bayes_factor", "model_probabilities"]

_DTYPE = torch.float64


def evidence_strength(log_bf: float) -> str | None:
    """Kass & Raftery's (1995) grade of a log Bayes factor in nats, by its size: ``None`` below 1 ("not worth more
    than a bare mention"), ``"positive"`` (1-3), ``"strong"`` (3-5), ``"very strong"`` (5 and more)."""
    a = abs(float(log_bf))
    if a < 1:
        return None
    return "positive" if a < 3 else "strong" if a < 5 else "very strong"

def _reduced_evidence(Lam, h, eta, C):
    """log Z(η, C) = log ∫ N(θ; η, C) exp(-½θᵀΛθ + hᵀθ) dθ and the normalised posterior.

    Written in covariance form with C = L Lᵀ so that singular C (parameters
    switched off with zero prior variance) is handled exactly.
    """
    n = eta.shape[0]
    ev, V = torch.linalg.eigh(C)
    L = V * ev.clamp_min(0.0).sqrt()
    M = torch.eye(n, dtype=_DTYPE) + L.T @ Lam @ L
    M = 0.5 * (M + M.T)
    chol, info = torch.linalg.cholesky_ex(M)
    if int(info) != 0:
        raise ValueError(
            "post_cov is inconsistent with prior_cov: the posterior precision minus the prior precision "
            "is not positive semi-definite (did the posterior come from this prior?)"
        )
    b = h - Lam @ eta
    Lb = L.T @ b
    u = torch.cholesky_solve(Lb[:, None], chol)[:, 0]
    mean = eta + L @ u
    cov = L @ torch.cholesky_solve(L.T, chol)
    log_z = -0.5 * float(eta @ Lam @ eta) + float(h @ eta) + 0.5 * float(Lb @ u) - float(
        torch.log(torch.diagonal(chol)).sum()
    )
    return log_z, mean, 0.5 * (cov + cov.T)


def bayesian_model_reduction(post_mean, post_cov, prior_mean, prior_cov, reduced_prior_mean, reduced_prior_cov):
    """Posterior and log-evidence change under a reduced Gaussian prior, without refitting.

    Given a Gaussian posterior ``N(post_mean, post_cov)`` obtained under the
    prior ``N(prior_mean, prior_cov)``, return the posterior and the change in
    (free-energy approximated) log evidence that the same data would give under
    the reduced prior ``N(reduced_prior_mean, reduced_prior_cov)`` (Friston &
    Penny 2011): with the implied Gaussian likelihood ``Λ = P - Π₀``,
    ``h = P μ - Π₀ η`` (``P``, ``Π₀`` the posterior and prior precisions),

    ``q̃(θ) ∝ exp(-½θᵀΛθ + hᵀθ) N(θ; η̃, C̃)`` and
    ``ΔF = log ∫ exp(-½θᵀΛθ + hᵀθ) N(θ; η̃, C̃) dθ``
    ``     - log ∫ exp(-½θᵀΛθ + hᵀθ) N(θ; η, C) dθ``.

    These are evaluated in covariance form, so ``reduced_prior_cov`` may be
    singular: a zero prior variance switches a parameter off (fixed at its
    reduced prior mean). The result is exact for linear-Gaussian models and
    inherits the Laplace approximation otherwise.

    Returns
    -------
    reduced_mean : tensor (n,)
    reduced_cov : tensor (n, n)
    delta_F : float
        ``F_reduced - F_full`` in nats (positive favours the reduced model).
    """
    post_mean = _check_vector("post_mean", post_mean)
    n = post_mean.shape[0]
    post_cov = _check_spd("post_cov", _checks.as_float_tensor("post_cov", post_cov), n, "post_mean")
    prior_mean = _check_vector("prior_mean", prior_mean, n, "post_mean")
    prior_cov = _check_spd("prior_cov", _checks.as_float_tensor("prior_cov", prior_cov), n, "post_mean")
    reduced_prior_mean = _check_vector("reduced_prior_mean", reduced_prior_mean, n, "post_mean")
    reduced_prior_cov = _check_psd(
        "reduced_prior_cov", _checks.as_float_tensor("reduced_prior_cov", reduced_prior_cov), n, "post_mean"
    )
    P = _SPD(post_cov).inverse()
    Pi0 = _SPD(prior_cov).inverse()
    Lam = P - Pi0
    Lam = 0.5 * (Lam + Lam.T)
    scale = max(float(torch.linalg.matrix_norm(P, 2)), float(torch.linalg.matrix_norm(Pi0, 2)))
    if float(torch.linalg.eigvalsh(Lam).min()) < -1e-7 * scale:
        raise ValueError(
            "post_cov is inconsistent with prior_cov: the posterior precision minus the prior precision "
            "(the information from the data) is not positive semi-definite (did the posterior come from this prior?)"
        )
    h = P @ post_mean - Pi0 @ prior_mean
    log_z_full, _, _ = _reduced_evidence(Lam, h, prior_mean, prior_cov)
    log_z_red, mean, cov = _reduced_evidence(Lam, h, reduced_prior_mean, reduced_prior_cov)
    return mean, cov, log_z_red - log_z_full


def log_bayes_factor(F1, F2) -> float:
    """Log Bayes factor of model 1 against model 2: ``F1 - F2`` (nats).

    ``F1`` and ``F2`` are (approximate) log evidences, e.g. the ``free_energy``
    of two :class:`LaplaceResult` fitted to the *same data* (results are
    accepted directly). Positive values favour model 1. Conventional reading
    (Kass & Raftery 1995): > 1 positive, > 3 strong (about 20:1), > 5 very
    strong (about 150:1) evidence. With equal prior model probabilities the
    posterior probability of model 1 is ``1 / (1 + exp(-(F1 - F2)))``.
    """
    F1 = _checks.check_scalar("F1", _log_evidence(F1))
    F2 = _checks.check_scalar("F2", _log_evidence(F2))
    return F1 - F2


def _log_evidence(x):
    """A number, or the log evidence carried by a fit result (``free_energy`` or ``log_evidence``)."""
    for attr in ("free_energy", "log_evidence"):
        value = getattr(x, attr, None)
        if value is not None:
            return value
    return x


def model_probabilities(log_evidences) -> torch.Tensor:
    """Posterior model probabilities from log evidences under equal prior model probabilities.

    ``p_i = exp(F_i) / sum_j exp(F_j)`` (a softmax, computed stably), e.g.
    over the free energies of fits of several models to the *same data*
    (Penny et al. 2004, "Comparing dynamic causal models", NeuroImage
    22:1157).

    Parameters
    ----------
    log_evidences : array_like
        Shape ``(n_models,)``, finite, in nats.

    Returns
    -------
    torch.Tensor
        Shape ``(n_models,)``, summing to one.

    Raises
    ------
    ValueError
        Not a non-empty 1-D array of finite numbers.
    """
    F = _checks.as_float_tensor("log_evidences", log_evidences)
    if F.dim() != 1 or F.numel() == 0 or not bool(torch.isfinite(F).all()):
        raise ValueError(f"log_evidences must be a non-empty 1-D array of finite numbers, got {F.tolist()!r}")
    return torch.softmax(F, 0)
