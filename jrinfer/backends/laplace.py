"""Variational Laplace backend: inverts an :class:`~jrinfer.InverseProblem` with the VL engine.

The engine (:mod:`jrinfer.backends._vl_engine`) fits any differentiable
``y = f(theta) + noise`` with Gaussian priors (``fit_function``, like SPM's
``spm_nlsi_GN``); this module adapts an :class:`~jrinfer.InverseProblem` to it
through :meth:`~jrinfer.InverseProblem.gaussian_form` and returns the common
:class:`~jrinfer.Posterior`. Model comparison of the resulting free energies
(Bayes factors, Bayesian model reduction) is in :mod:`jrinfer.comparison`.

Reference: K. Friston, J. Mattout, N. Trujillo-Barreto, J. Ashburner, W. Penny
(2007), "Variational free energy and the Laplace approximation", NeuroImage
34:220-234.
"""

from __future__ import annotations

import math

import torch

from jrinfer._optional import optional_import
from jrinfer._rng import generator
from jrinfer.backends._multistart import DEFAULT_N_STARTS, fit_problem_multistart
from jrinfer.backends._psis import _psis
from jrinfer.backends._vl_engine import _DTYPE, LaplaceConvergenceError, LaplaceEngine, LaplaceResult
from jrinfer.posterior import CONTRACTION_UNINFORMED, PARETO_K_UNRELIABLE

#: Importance ESS below which the weighted marginals are not computed (their quantiles too noisy to judge).
_MIN_MARGINAL_ESS = 100.0
#: A Laplace marginal is materially non-Gaussian when its importance-weighted SD is below this fraction of the
#: Gaussian's (the Gaussian's interval more than 1.4 times too wide) ...
_SD_RATIO_NON_GAUSSIAN = 0.7
#: ... or an end of its 90 % interval is more than this many Gaussian SDs from the weighted one (the Gaussian's 95 %
#: point is then the true 87 % or 98.6 % point for a Gaussian-shaped truth) and the weighted tail mass beyond it
#: differs from 5 % by more than z Monte-Carlo SEs, z for a family-wise false-alarm rate of this over the 2 n tail
#: tests of n parameters (Bonferroni; z = 2.84 for 11 parameters).
_QUANTILE_SHIFT_SD = 0.5
_FAMILY_ALPHA = 0.05
#: One-sided z of the "not informed by the Gaussian, informed by the weighted draws" test (one test per such
#: parameter, 2.3 % false alarms).
_HIDDEN_Z = 2.0
_Q = (0.05, 0.95)
_Z95 = 1.6448536269514722

__all__ = ["LaplaceConvergenceError", "LaplaceResult", "VariationalLaplace"]


class VariationalLaplace(LaplaceEngine):
    __doc__ = LaplaceEngine.__doc__.replace(
        "    Non-convergence (",
        """    n_starts : int, default 16
        Gauss-Newton runs per :meth:`fit` (at most; they stop after three
        when those three reach the same optimum): from the prior mean and
        from the best-scoring distinct points of a batched screen of
        ``64 * n_starts`` quasi-random prior draws (log joint with the noise
        precision profiled out); the optimum with the highest free energy is kept, and the
        optima found are reported (``diagnostics["optima"]``, a warning when
        the posterior is multimodal). 1 runs from the prior mean only. See
        :mod:`jrinfer.backends._multistart`; the default is justified by the
        measurements in ``benchmarks/RESULTS.md``.

    Non-convergence (""",
        1,
    )

    def __init__(self, *, n_starts: int = DEFAULT_N_STARTS, **options):
        super().__init__(**options)
        from jrinfer import _checks

        self.n_starts = _checks.check_int("n_starts", n_starts, minimum=1)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", n_starts={self.n_starts!r})"

    # ------------------------------------------------------------------ #
    def fit(
        self,
        problem,
        *,
        n_draws: int = 1000,
        n_predictive: int = 200,
        seed: int = 0,
        resample: bool = False,
    ):
        """Invert an :class:`~jrinfer.InverseProblem` and return a :class:`~jrinfer.Posterior`.

        The problem is cast as Gaussian nonlinear regression
        (:meth:`InverseProblem.gaussian_form`): the free parameters in the
        prior's unconstrained coordinates (log for log-normal priors, where
        the priors are exactly Gaussian) and the noise log precisions as the
        hyperparameters. Parameter sets the observation cannot predict (e.g.
        an unstable equilibrium under the transfer method) are treated as
        rejected steps.

        How far the Gaussian can be trusted is checked against the true
        posterior: the ``n_draws`` draws of the Gaussian ``q`` are weighted by
        ``p(z, y) / q(z)`` and Pareto-smoothed (PSIS; Vehtari, Simpson,
        Gelman, Yao & Gabry 2024, JMLR 25:72, through ArviZ). The shape
        estimate ``k̂`` (``diagnostics["pareto_k"]``) above 0.7, or more than
        10 % of the draws where the model is invalid, means the Gaussian is
        not a reliable posterior here: the result then warns and suggests a
        sampler.

        Parameters
        ----------
        problem : InverseProblem
            With a Gaussian likelihood (the observation's ``gaussian_target``).
        n_draws : int
            Draws from the Gaussian posterior, mapped to natural units, for
            summaries, PSIS and ArviZ.
        n_predictive : int
            Of those, how many (thinned evenly) get a posterior predictive
            sample and a pointwise log-likelihood.
        seed : int
            Seed for the draws and the predictive noise.
        resample : bool
            Return the PSIS importance-resampled draws (approximately from the
            true posterior; ``diagnostics["importance_ess"]`` says how many
            independent draws they are worth) instead of the Gaussian's.

        Returns
        -------
        Posterior
            ``log_evidence`` is the free energy ``F``; ``mean_unconstrained``
            and ``cov_unconstrained`` hold the Gaussian in the prior's
            unconstrained coordinates (parameters in ``problem.names`` order,
            log precisions included with their own posterior variance);
            ``diagnostics`` holds ``n_iter``, the free-energy trace, accuracy,
            complexity, ``pareto_k`` and ``importance_ess``, and (from the
            assembly, as for every backend) ``invalid_draws``: how many of the
            predictive draws the model cannot evaluate (e.g. past the Hopf
            bifurcation), with a warning above 10 %; ``fit_quality``, ``contraction`` and
            ``warnings`` as for every backend.

        Raises
        ------
        ValueError
            ``problem`` is not an InverseProblem, its likelihood is not
            Gaussian, or an option is out of range.
        """
        import numpy as np

        from jrinfer import _checks
        from jrinfer.backends._assembly import assemble_posterior
        from jrinfer.problem import InverseProblem

        if not isinstance(problem, InverseProblem):
            raise ValueError(f"problem must be an InverseProblem, got {type(problem).__name__}")
        n_draws = _checks.check_int("n_draws", n_draws, minimum=2)
        n_predictive = _checks.check_int("n_predictive", n_predictive, minimum=0)
        seed = _checks.check_int("seed", seed, minimum=0)
        resample = _checks.check_bool("resample", resample)
        res, mean, cov, multi = fit_problem_multistart(self, problem, n_starts=self.n_starts, seed=seed)
        n = problem.n_params
        gen = generator(seed)
        eps = torch.randn(n_draws, n, generator=gen, dtype=_DTYPE)
        evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
        root = evecs * evals.clamp_min(0).sqrt()
        z = mean + eps @ root.T
        theta = problem.prior.from_unconstrained(z)

        # -------- trust in the Gaussian: PSIS of q against the true log joint
        diagnostics = {
            "n_iter": res.n_iter,
            "free_energy": res.free_energy,
            "accuracy": res.accuracy,
            "complexity": res.complexity,
            "free_energy_trace": [float(x) for x in res.trace_free_energy],
            "optima": multi["optima"],
            "n_starts": multi["n_starts"],
            "n_screened": multi["n_screened"],
            # a second optimum competes (free energy within 3 nats, > 3 posterior SDs away): the Gaussian
            # summary leaves out > 5 % of the mass, and the status says so (_assembly._fit_status)
            "multimodal": bool(multi["warnings"]),
        }
        if multi["notes"]:
            diagnostics["notes"] = multi["notes"]
        if multi.get("effects_across_optima") is not None:
            diagnostics["effects_across_optima"] = multi["effects_across_optima"]
        warnings = list(multi["warnings"])
        with torch.no_grad():
            if problem.has_fast_path and bool(torch.isfinite(z).all()):  # the fused path: same values, no torch graph
                log_p = problem.log_joint_and_grad(z)[0]
            else:
                log_p = problem.log_joint_unconstrained(z)
        # log q(z) of the Gaussian, in the eigenbasis (robust to a singular covariance)
        keep = evals > evals.max() * 1e-12
        u = ((z - mean) @ evecs[:, keep]) / evals[keep].sqrt()
        log_q = -0.5 * (u * u).sum(-1) - 0.5 * torch.log(evals[keep]).sum() - 0.5 * int(keep.sum()) * math.log(2 * math.pi)
        pareto_k, ess, weights = _psis(log_p - log_q)
        diagnostics["pareto_k"] = pareto_k
        diagnostics["importance_ess"] = ess
        if weights is not None and pareto_k is not None and pareto_k <= PARETO_K_UNRELIABLE:
            _, prior_cov = problem.prior.gaussian_unconstrained()
            marginals = _importance_marginals(z, weights, mean, cov, torch.diagonal(prior_cov), ess, problem)
            if marginals is not None:
                diagnostics["importance_marginals"] = marginals
        if pareto_k is not None and pareto_k > PARETO_K_UNRELIABLE:
            warnings.append(
                f"the Gaussian (Laplace) posterior is not reliable here: Pareto k-hat = {pareto_k:.2f} (> 0.7) "
                "comparing it with the true posterior; use a sampler (backend nuts or smc), or "
                "importance-resampled draws (fit(..., resample=True); CLI --resample)"
            )
        if resample:
            if weights is None:
                optional_import("arviz", purpose="resample=True (Pareto-smoothed importance sampling)")
            idx = torch.multinomial(weights, n_draws, replacement=True, generator=gen)
            theta = theta[idx]
            diagnostics["importance_resampled"] = True
        if res.status != "converged":
            warnings.append(f"variational Laplace did not converge: {res.message}")
        message = "; ".join([res.message, *multi["notes"]])
        return assemble_posterior(
            problem,
            theta.detach()[None],
            backend="laplace",
            status=res.status,
            message=message,
            log_evidence=res.free_energy,
            mean_unconstrained=mean.numpy(),
            cov_unconstrained=None if resample else cov.numpy(),
            diagnostics=diagnostics,
            point=problem.prior.from_unconstrained(mean),
            warnings=warnings,
            n_predictive=n_predictive,
            seed=seed,
        )


def _importance_marginals(z, weights, mean, cov, prior_var, ess, problem) -> dict | None:
    """Each parameter's importance-weighted marginal against the Gaussian's, and whether they differ materially.

    The Gaussian (Laplace) draws ``z`` weighted by their PSIS weights are a
    sample of the true posterior (Vehtari, Simpson, Gelman, Yao & Gabry 2024,
    "Pareto smoothed importance sampling", JMLR 25:72), usable where the Pareto
    k-hat is at most 0.7. Their marginals show what one Gaussian cannot: a
    parameter the data bound from one side only (a one-sided posterior: flat
    likelihood at the mode, so the Gaussian keeps the prior's width and calls
    it not informed, while the weighted marginal is cut off on one side).

    Parameters
    ----------
    z : torch.Tensor
        ``(N, n)`` draws of the Gaussian in the prior's unconstrained coordinates.
    weights : torch.Tensor
        ``(N,)`` normalised PSIS weights.
    mean, cov : torch.Tensor
        The Gaussian, ``(n,)`` and ``(n, n)``.
    prior_var : torch.Tensor
        ``(n,)`` prior variances in the same coordinates.
    ess : float
        Importance-sampling effective sample size ``1 / sum w^2`` of the
        smoothed weights (Kish; the PSIS ESS).
    problem : InverseProblem
        For the names and the map to natural units.

    Returns
    -------
    dict or None
        ``None`` when ``ess`` is below 100 (quantiles too noisy to judge);
        else ``{"ess": ess, "parameters": {name: {...}}}`` with, in natural
        units, the Gaussian's and the weighted ``sd``, ``q05``, ``q95``, the
        contraction of each (``1 - var / prior var``, unconstrained), the
        weighted tail masses beyond the Gaussian's 5 % and 95 % points
        with their Monte-Carlo SE ``sqrt(0.05 * 0.95 / ess)`` and the ``tail_z``
        used, the shifts
        of the weighted 5 %/95 % points in Gaussian SDs (unconstrained), and
        ``non_gaussian`` (with ``shape`` in words) when the marginals differ
        materially:

        * the weighted SD is below 0.7 x the Gaussian's (the Gaussian's
          interval more than 1.4 times too wide; the SD's relative MC error
          is about ``1 / sqrt(2 ess) <= 0.07``, so this is > 4 SEs from 1), or
        * an end of the 90 % interval moved by more than 0.5 Gaussian SDs
          (for a Gaussian-shaped truth the Gaussian's 95 % point is then the
          true 87 % or 98.6 % point) and the weighted tail mass beyond the
          Gaussian's end differs from 5 % by more than ``z`` Monte-Carlo SEs,
          ``z`` the Bonferroni bound of a 5 % family-wise false-alarm rate over
          the ``2 n`` tail tests (2.84 for 11 parameters; so at the smallest
          ESS used, 100, only tails that grow are seen, an inward move needs
          an ESS above ``z^2 0.95 / 0.05``, 150 for 11 parameters), or
        * the Gaussian's contraction is below
          :data:`~jrinfer.posterior.CONTRACTION_UNINFORMED` ("not
          informed") while the weighted one is above it by more than 2 SEs
          (relative SE of a variance about ``sqrt(2 / ess)``).
    """
    import numpy as np

    if ess is None or not ess >= _MIN_MARGINAL_ESS:
        return None
    zz = z.detach().numpy()
    w = np.asarray(weights, dtype=float)
    mu = mean.detach().numpy()
    g_sd = np.sqrt(np.clip(np.diag(cov.detach().numpy()), 0.0, None))
    pv = prior_var.detach().numpy()
    sum_w2 = float(np.sum(w * w))
    w_mean = w @ zz
    w_var = (w @ (zz - w_mean) ** 2) / max(1.0 - sum_w2, 1e-12)  # reliability-weights correction
    w_sd = np.sqrt(w_var)
    order = np.argsort(zz, axis=0)
    zs = np.take_along_axis(zz, order, 0)
    ws = w[order]
    cdf = np.cumsum(ws, 0) - 0.5 * ws  # weighted empirical CDF at the sorted draws (midpoints)
    wq = np.stack([[np.interp(q, cdf[:, j], zs[:, j]) for j in range(zz.shape[1])] for q in _Q])  # (2, n)
    gq = np.stack([mu - _Z95 * g_sd, mu + _Z95 * g_sd])
    tail_lo = w @ (zz < gq[0])
    tail_hi = w @ (zz > gq[1])
    se_tail = math.sqrt(_Q[0] * (1 - _Q[0]) / ess)
    from statistics import NormalDist

    z_tail = NormalDist().inv_cdf(1.0 - _FAMILY_ALPHA / (2 * zz.shape[1]))
    safe = np.where(g_sd > 0, g_sd, 1.0)
    inward_lo = (wq[0] - gq[0]) / safe  # > 0: the weighted 5 % point lies above the Gaussian's (cut off below)
    inward_hi = (gq[1] - wq[1]) / safe  # > 0: the weighted 95 % point lies below the Gaussian's (cut off above)
    c_g = 1.0 - g_sd**2 / pv
    c_w = 1.0 - w_var / pv
    se_c = (w_var / pv) * math.sqrt(2.0 / ess)
    to_theta = lambda x: problem.prior.from_unconstrained(torch.as_tensor(x, dtype=_DTYPE)).numpy()  # noqa: E731
    nat_g, nat_w = to_theta(gq), to_theta(wq)
    theta_draws = to_theta(zz)
    nat_w_mean = w @ theta_draws
    nat_w_sd = np.sqrt((w @ (theta_draws - nat_w_mean) ** 2) / max(1.0 - sum_w2, 1e-12))
    nat_g_sd = theta_draws.std(0, ddof=1)
    out = {}
    for j, name in enumerate(problem.names):
        narrow = bool(w_sd[j] < _SD_RATIO_NON_GAUSSIAN * g_sd[j])
        moved_lo = abs(inward_lo[j]) > _QUANTILE_SHIFT_SD and abs(tail_lo[j] - _Q[0]) > z_tail * se_tail
        moved_hi = abs(inward_hi[j]) > _QUANTILE_SHIFT_SD and abs(tail_hi[j] - _Q[0]) > z_tail * se_tail
        hidden = bool(c_g[j] < CONTRACTION_UNINFORMED <= c_w[j] - _HIDDEN_Z * se_c[j])
        flagged = bool(narrow or moved_lo or moved_hi or hidden)
        rec = {
            "gaussian_sd": float(nat_g_sd[j]),
            "gaussian_q05": float(nat_g[0, j]),
            "gaussian_q95": float(nat_g[1, j]),
            "gaussian_contraction": float(c_g[j]),
            "weighted_mean": float(nat_w_mean[j]),
            "weighted_sd": float(nat_w_sd[j]),
            "weighted_q05": float(nat_w[0, j]),
            "weighted_q95": float(nat_w[1, j]),
            "weighted_contraction": float(c_w[j]),
            "weighted_contraction_se": float(se_c[j]),
            "sd_ratio": float(w_sd[j] / g_sd[j]) if g_sd[j] > 0 else float("nan"),
            "shift_q05_sd": float(inward_lo[j]),
            "shift_q95_sd": float(-inward_hi[j]),
            "tail_mass_below_gaussian_q05": float(tail_lo[j]),
            "tail_mass_above_gaussian_q95": float(tail_hi[j]),
            "tail_mass_se": se_tail,
            "tail_z": z_tail,
            "non_gaussian": flagged,
        }
        if flagged:
            rec["shape"] = _shape_words(inward_lo[j], inward_hi[j], narrow)
        out[name] = rec
    return {"ess": float(ess), "parameters": out}


def _shape_words(inward_lo: float, inward_hi: float, narrow: bool) -> str:
    """How the weighted marginal differs from the Gaussian, in words (shifts in Gaussian SDs, > 0 inward)."""
    s = _QUANTILE_SHIFT_SD
    if inward_hi > s and inward_hi > 2 * max(inward_lo, 0.0):
        return "one-sided: bounded above by the data"
    if inward_lo > s and inward_lo > 2 * max(inward_hi, 0.0):
        return "one-sided: bounded below by the data"
    if inward_lo < -s or inward_hi < -s:
        return "heavier-tailed than the Gaussian, whose interval is too narrow"
    return "narrower than the Gaussian" if narrow or min(inward_lo, inward_hi) > 0 else "not Gaussian"
