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
from jrinfer.backends._vl_engine import _DTYPE, LaplaceConvergenceError, LaplaceEngine, LaplaceResult

__all__ = ["LaplaceConvergenceError", "LaplaceResult", "VariationalLaplace"]


class VariationalLaplace(LaplaceEngine):
    __doc__ = LaplaceEngine.__doc__.replace(
        "    Non-convergence (",
        """    n_starts : int, default 8
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
        }
        if multi["notes"]:
            diagnostics["notes"] = multi["notes"]
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
        if pareto_k is not None and pareto_k > 0.7:
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


def _psis(log_weights: torch.Tensor):
    """Pareto-smoothed importance weights (ArviZ's ``psislw``): k-hat, ESS, normalised weights.

    Draws with ``-inf`` log weight (where the true posterior is zero) get
    weight zero. Returns ``(None, None, None)`` when ArviZ is not installed.
    """
    try:
        az = optional_import("arviz", purpose="Pareto-smoothed importance sampling")
    except ImportError:
        return None, None, None
    import warnings as _w

    import numpy as np

    lw = log_weights.detach().numpy().astype(float)
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
