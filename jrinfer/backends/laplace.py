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

import torch

from jrinfer.backends._vl_engine import (
    _DTYPE,
    LaplaceConvergenceError,
    LaplaceEngine,
    LaplaceResult,
    _check_int,
)

__all__ = ["LaplaceConvergenceError", "LaplaceResult", "VariationalLaplace"]


class VariationalLaplace(LaplaceEngine):
    __doc__ = LaplaceEngine.__doc__

    # ------------------------------------------------------------------ #
    def fit(self, problem, *, n_draws: int = 1000, n_predictive: int = 200, seed: int = 0):
        """Invert an :class:`~jrinfer.InverseProblem` and return a :class:`~jrinfer.Posterior`.

        The problem is cast as Gaussian nonlinear regression
        (:meth:`InverseProblem.gaussian_form`): the free parameters in the
        prior's unconstrained coordinates (log for log-normal priors, where
        the priors are exactly Gaussian) and the noise log precision as the
        hyperparameter. Parameter sets the observation cannot predict (e.g.
        an unstable equilibrium under the transfer method) are treated as
        rejected steps.

        Parameters
        ----------
        problem : InverseProblem
            With a Gaussian likelihood (``SpectrumObservation(likelihood="gaussian")``
            or an ``EvokedObservation``).
        n_draws : int
            Draws from the Gaussian posterior, mapped to natural units, for
            summaries and ArviZ.
        n_predictive : int
            Posterior predictive samples (with observation noise) stored on the result.
        seed : int
            Seed for the draws.

        Returns
        -------
        Posterior
            ``log_evidence`` is the free energy ``F``; ``mean_unconstrained``
            and ``cov_unconstrained`` hold the Gaussian in the prior's
            unconstrained coordinates (parameters in ``problem.names`` order,
            the log precision included with its own posterior variance);
            ``diagnostics`` holds ``n_iter``, the free-energy trace, accuracy,
            complexity and the fraction of posterior draws the observation
            cannot predict.
        """
        import numpy as np

        from jrinfer.posterior import Posterior
        from jrinfer.problem import InverseProblem

        if not isinstance(problem, InverseProblem):
            raise ValueError(f"problem must be an InverseProblem, got {type(problem).__name__}")
        n_draws = _check_int("n_draws", n_draws, 2)
        n_predictive = _check_int("n_predictive", n_predictive, 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        form = problem.gaussian_form()
        engine = self
        if not form.estimate_hyper and self.estimate_hyper:
            engine = VariationalLaplace(**{**self._options(), "estimate_hyper": False})
        hyper_cov = form.hyper_cov if form.estimate_hyper else torch.eye(1, dtype=_DTYPE)
        res = engine.fit_function(
            form.f, form.y, form.prior_mean, form.prior_cov, form.hyper_mean, hyper_cov, form.precision_components
        )
        names = problem.names
        n = len(names)
        mean = torch.zeros(n, dtype=_DTYPE)
        cov = torch.zeros(n, n, dtype=_DTYPE)
        theta_idx = [names.index(name) for name in form.names]
        mean[theta_idx] = res.mean
        cov[np.ix_(theta_idx, theta_idx)] = res.cov
        if "log_precision" in names:
            j = names.index("log_precision")
            mean[j] = res.hyper_mean[0]
            cov[j, j] = res.hyper_cov[0, 0]
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn(n_draws, n, generator=gen, dtype=_DTYPE)
        evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
        z = mean + (eps * evals.clamp_min(0).sqrt()) @ evecs.T
        theta = problem.prior.from_unconstrained(z)
        with torch.no_grad():
            pred_valid = problem.predict(theta[: min(n_draws, 500)]).valid
            invalid_fraction = float(1.0 - pred_valid.double().mean())
            predictive = None
            if n_predictive:
                predictive = problem.simulate(theta[:n_predictive], seed=gen).numpy()[None]
        data = problem.data
        if problem.kind == "spectrum":
            observed = {
                "values": data.power.numpy(),
                "coord": "freq",
                "coord_values": data.freqs.numpy(),
                "channels": list(data.channel_names),
                "units": data.units,
            }
        else:
            observed = {
                "values": data.values.numpy(),
                "coord": "time",
                "coord_values": data.times.numpy(),
                "channels": list(data.channel_names),
                "units": data.units,
            }
        diagnostics = {
            "n_iter": res.n_iter,
            "free_energy": res.free_energy,
            "accuracy": res.accuracy,
            "complexity": res.complexity,
            "free_energy_trace": [float(x) for x in res.trace_free_energy],
            "fraction_invalid_draws": invalid_fraction,
        }
        return Posterior(
            names=names,
            draws=theta.detach().numpy()[None],
            backend="laplace",
            status=res.status,
            message=res.message,
            log_evidence=res.free_energy,
            mean_unconstrained=mean.numpy(),
            cov_unconstrained=cov.numpy(),
            diagnostics=diagnostics,
            observed=observed,
            predictive=predictive,
        )

