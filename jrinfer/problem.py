"""The inverse problem every backend consumes: observation (with its model) + prior + data.

:class:`InverseProblem` is generic: it talks to its observation only through
the :class:`~jrinfer.observation.Observation` interface, so the same backends
invert spectra, evoked responses or an observation model defined by a user.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from jrinfer import _checks
from jrinfer.observation import DEFAULT_FREE, Observation, Prediction, jansen_rit_prior_spec
from jrinfer.prior import Prior

__all__ = ["InverseProblem", "GaussianForm", "jansen_rit_prior"]


def jansen_rit_prior(
    kind: str = "dcm",
    free=DEFAULT_FREE,
    p_mean_range: tuple[float, float] = (40.0, 85.0),
) -> Prior:
    """Default prior over the Jansen-Rit constants.

    Parameters
    ----------
    kind : {"dcm", "box"}
        ``"dcm"``: DCM-style priors centred on Jansen & Rit's (1995) values
        (for variational Laplace and MCMC). ``"box"``: bounded uniforms (for
        simulation-based inference). Table of both below.
    free : iterable of str
        Parameters to infer, in the order of ``theta``'s last axis; any of
        ``A, B, a, b, C, e0, r, v0, p_mean, p_std``. Every other one of these
        is fixed at its :data:`jrinfer.model.PARAMETERS` default (Jansen & Rit
        1995: A 3.25 mV, B 22 mV, a 100 /s, b 50 /s, C 135, e0 2.5 /s,
        r 0.56 /mV, v0 6 mV, p_mean 220 pulses/s, p_std 22). ``C1..C4`` are
        not prior parameters: the model derives them from ``C``.
    p_mean_range : (float, float)
        ``(low, high)`` in pulses/s of the mean input ``p_mean``: its central
        95 % interval (``"dcm"``) or its bounds (``"box"``). Used only if
        ``p_mean`` is free.

    Returns
    -------
    Prior
        With the units of every JR constant.

    Raises
    ------
    ValueError
        Unknown, repeated or no ``free`` names; a bad ``p_mean_range``.

    Notes
    -----
    ============  ==============================  ==========================  ===============
    parameter     ``"dcm"``                       implied 95 % interval       ``"box"``
    ============  ==============================  ==========================  ===============
    A (mV)        LogNormal(3.25, 0.2)            [2.20, 4.81]                [2, 5]
    B (mV)        LogNormal(22, 0.2)              [14.9, 32.6]                [15, 30]
    a (1/s)       LogNormal(100, 0.2)             [67.6, 148]                 [60, 150]
    b (1/s)       LogNormal(50, 0.2)              [33.8, 74.0]                [30, 80]
    C             LogNormal(135, 0.2)             [91.2, 200]                 [90, 200]
    e0 (1/s)      LogNormal(2.5, 0.2)             [1.69, 3.70]                [1.5, 3.5]
    r (1/mV)      LogNormal(0.56, 0.2)            [0.378, 0.829]              [0.4, 0.7]
    v0 (mV)       Normal(6, 0.5)                  [5.02, 6.98]                [5, 7]
    p_mean        LogNormal(sqrt(lo hi), s)       ``p_mean_range``            ``p_mean_range``
    p_std         LogNormal(22, 1.0)              [3.10, 156]                 [0, 100]
    ============  ==============================  ==========================  ===============

    For ``p_mean`` the median is the geometric midpoint of ``p_mean_range``
    and ``s = log(hi / lo) / (2 * 1.95996)``, so the range is exactly the
    central 95 % interval. The default 40-85 pulses/s (median 58.3,
    ``s = 0.192``) keeps 98.8 % of the mass below the first Hopf bifurcation
    at p = 89.83 pulses/s, where the linearised spectrum is valid. v0 is a
    potential that may be any real number, hence a Normal prior.

    Examples
    --------
    >>> prior = jansen_rit_prior(free=("a", "b", "p_mean"))
    >>> prior.names
    ('a', 'b', 'p_mean')
    >>> sorted(prior.fixed)
    ['A', 'B', 'C', 'e0', 'p_std', 'r', 'v0']
    """
    return Prior.from_dict(jansen_rit_prior_spec(kind=kind, free=free, p_mean_range=p_mean_range))


@dataclass(frozen=True)
class GaussianForm:
    """The problem written as nonlinear regression with Gaussian priors and noise.

    ``y = f(z) + e`` with ``z ~ N(prior_mean, prior_cov)`` (the unconstrained
    coordinates of the non-noise parameters) and ``e ~ N(0, Pi^-1)``,
    ``Pi = sum_i exp(lambda_i) Q_i``, ``lambda ~ N(hyper_mean, hyper_cov)``.
    This is what variational Laplace consumes.

    Attributes
    ----------
    f : callable
        Maps ``z`` of shape ``(n,)`` to the prediction ``(m,)`` in the
        likelihood's space (log-power for spectra, potentials for ERPs); NaN
        where the observation cannot predict.
    y : torch.Tensor
        Observations, shape ``(m,)``.
    names : tuple of str
        Names of the ``n`` parameters in ``z``.
    prior_mean, prior_cov : torch.Tensor
        ``(n,)`` and ``(n, n)``.
    hyper_mean, hyper_cov : torch.Tensor
        ``(k,)`` and ``(k, k)`` (zeros where a log precision is fixed).
    precision_components : torch.Tensor
        Diagonals of the ``Q_i``, shape ``(k, m)``.
    hyper_names : tuple of str
        One name per precision component.
    estimate_hyper : bool
        False when the prior fixes every log precision.
    value_and_jacobian : callable or None
        ``z -> (f(z), df/dz)`` of shapes ``(m,)`` and ``(m, n)`` without
        autograd, where the observation offers a fused path (the
        transfer-method spectrum); NaN where ``f`` is. None otherwise.
    """

    f: Callable[[torch.Tensor], torch.Tensor]
    y: torch.Tensor
    names: tuple[str, ...]
    prior_mean: torch.Tensor
    prior_cov: torch.Tensor
    hyper_mean: torch.Tensor
    hyper_cov: torch.Tensor
    precision_components: torch.Tensor
    hyper_names: tuple[str, ...]
    estimate_hyper: bool = True
    value_and_jacobian: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None


class InverseProblem:
    """An inversion problem, validated once at construction.

    Parameters
    ----------
    observation : Observation
        How parameters map to data (:class:`~jrinfer.SpectrumObservation`,
        :class:`~jrinfer.EvokedObservation`, or any subclass of
        :class:`~jrinfer.observation.Observation`).
    prior : Prior, dict or None
        Distributions of the free parameters and values of the fixed ones:
        a :class:`~jrinfer.Prior`, a dict in its JSON schema (what
        ``observation.default_prior(data)`` returns), or ``None`` for the
        observation's default prior for ``data``. Free and fixed names
        together must cover every parameter the observation requires;
        Jansen-Rit constants it does not mention keep the JR 1995 defaults.
    data : SpectrumData or EvokedData
        The recording (the container ``observation.data_type`` names).

    Raises
    ------
    ValueError
        ``observation`` is not an Observation; ``data`` does not suit it; the
        prior declares unknown parameters or misses required ones.

    Notes
    -----
    Parameter vectors ``theta`` are in natural units with the last axis
    ordered as ``prior.names``; ``z`` are the prior's unconstrained
    coordinates. Everything is batched over leading axes and differentiable.
    """

    def __init__(self, observation, prior=None, data=None):
        if not isinstance(observation, Observation):
            raise ValueError(
                "observation must be a jrinfer Observation (SpectrumObservation, EvokedObservation or a subclass of "
                f"jrinfer.observation.Observation), got {type(observation).__name__}"
            )
        if data is None:
            raise ValueError("data must be given (the recording to fit), got None")
        observation.check_data(data)
        if prior is None:
            prior = observation.default_prior(data)
        if isinstance(prior, Mapping):
            prior = Prior.from_dict(prior)
        if not isinstance(prior, Prior):
            raise ValueError(f"prior must be a jrinfer.Prior, a dict in its JSON schema or None, got {type(prior).__name__}")
        known = set(observation.accepted_parameters(data))
        declared = set(prior.names) | set(prior.fixed)
        unknown = sorted(declared - known)
        if unknown:
            raise ValueError(
                f"prior declares parameter(s) {unknown} that {observation!r} does not use; "
                f"known: {sorted(known)}"
            )
        missing = [n for n in observation.required_parameters(data) if n not in declared]
        if missing:
            raise ValueError(f"prior must declare (free or fixed) the observation parameter(s) {missing}")
        observed = observation.observed_data(data)
        n_points = int(observed.values.shape[-1])
        if n_points <= prior.n_params:
            raise ValueError(
                f"data has {n_points} point(s) on its {observed.coord} axis per channel: a fit of {prior.n_params} "
                f"free parameters ({', '.join(prior.names)}) needs more points than parameters; widen the "
                f"{observed.coord} range or fix parameters"
            )
        self.observation = observation
        self.prior = prior
        self.data = data
        self._fixed = {k: torch.tensor(float(v), dtype=torch.float64) for k, v in prior.fixed.items()}

    # ------------------------------------------------------------ basics
    @property
    def names(self) -> tuple[str, ...]:
        """Free parameter names (order of ``theta``'s last axis)."""
        return tuple(self.prior.names)

    @property
    def n_params(self) -> int:
        return len(self.prior.names)

    @property
    def units(self) -> dict[str, str]:
        """Units of the free and fixed parameters, ``{name: unit}``."""
        units = self.observation.parameter_units(self.data)
        return {n: units.get(n, self.prior.unit(n)) for n in (*self.names, *self.prior.fixed)}

    def observed(self):
        """The data as an :class:`~jrinfer.observation.ObservedData` (values ``(C, P)``, axis, channels, units)."""
        return self.observation.observed_data(self.data)

    def __repr__(self) -> str:
        return f"InverseProblem({self.observation!r}, {self.n_params} free parameters {list(self.names)}, data={self.data!r})"

    def to_dict(self) -> dict:
        """Observation settings, prior and data as plain JSON-ready values (:meth:`from_dict` reads them back).

        Raises
        ------
        ValueError, TypeError
            If the observation's settings or the data cannot be written as JSON.
        """
        if not callable(getattr(self.data, "to_dict", None)):
            raise ValueError(f"data: {type(self.data).__name__} has no to_dict(); it cannot be saved as JSON")
        return {"observation": self.observation.settings(), "prior": self.prior.to_dict(),
                "data": self.data.to_dict()}

    @classmethod
    def from_dict(cls, d: dict, *, observation=None) -> "InverseProblem":
        """The problem saved by :meth:`to_dict`.

        Parameters
        ----------
        d : dict
            ``{"observation", "prior", "data"}`` as :meth:`to_dict` wrote them.
        observation : Observation, optional
            For observation classes outside :mod:`jrinfer.observation`: the
            observation, checked against the saved settings.
        """
        from jrinfer.data import data_from_dict
        from jrinfer.observation import observation_from_settings

        return cls(observation_from_settings(d["observation"], observation), d["prior"], data_from_dict(d["data"]))

    def regimes(self, theta) -> torch.Tensor | None:
        """Dynamical regime of each parameter set (codes into ``observation.REGIMES``), or None if it has none."""
        return self.observation.regimes(self.parameters(theta))

    def with_data(self, data) -> "InverseProblem":
        """Same observation and prior with other data (validated again)."""
        return InverseProblem(self.observation, self.prior, data)

    def _theta(self, theta) -> torch.Tensor:
        theta = _checks.as_float_tensor("theta", theta)
        if theta.dim() == 0 or theta.shape[-1] != self.n_params:
            raise ValueError(
                f"theta must have a last axis of length {self.n_params} ({', '.join(self.names)}), "
                f"got shape {tuple(theta.shape)}"
            )
        return theta

    def parameters(self, theta) -> dict[str, torch.Tensor]:
        """Free values from ``theta`` merged with the fixed ones, ``{name: (*batch,) tensor}``."""
        theta = self._theta(theta)
        params = dict(self._fixed)
        for i, name in enumerate(self.names):
            params[name] = theta[..., i]
        return params

    # --------------------------------------------------------- densities
    def predict(self, theta) -> Prediction:
        """Noise-free prediction in the data's units (see the observation's ``predict``)."""
        return self.observation.predict(self.parameters(theta), self.data)

    def log_prior(self, theta) -> torch.Tensor:
        """Log prior density in natural units, shape ``batch``."""
        return self.prior.log_prob(self._theta(theta))

    def log_likelihood(self, theta, *, return_reasons: bool = False):
        """Log-likelihood of the data, shape ``batch``; ``-inf`` where the model is invalid.

        With ``return_reasons=True`` also returns the list of reasons for the
        ``-inf`` entries (flattened batch order).
        """
        params = self.parameters(theta)
        pred = self.observation.predict(params, self.data)
        ll = self.observation.log_likelihood(pred, params, self.data)
        return (ll, pred.reasons) if return_reasons else ll

    def pointwise_log_likelihood(self, theta) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-likelihood of every data point and validity: shapes ``(*batch, C, P)`` and ``batch``."""
        params = self.parameters(theta)
        pred = self.observation.predict(params, self.data)
        return self.observation.pointwise_log_likelihood(pred, params, self.data), pred.valid

    def log_joint(self, theta) -> torch.Tensor:
        """``log_prior + log_likelihood`` in natural units, shape ``batch``."""
        theta = self._theta(theta)
        lp = self.log_prior(theta)
        ok = torch.isfinite(lp)
        safe = torch.where(ok.unsqueeze(-1), theta, self.prior.mean().expand_as(theta))
        ll = self.log_likelihood(safe)
        return torch.where(ok, lp + ll, torch.full_like(lp, -math.inf))

    def log_joint_unconstrained(self, z) -> torch.Tensor:
        """Log density of the posterior (unnormalised) in unconstrained coordinates ``z``."""
        z = _checks.as_float_tensor("z", z)
        theta = self.prior.from_unconstrained(z)
        return self.prior.log_prob_unconstrained(z) + self.log_likelihood(theta)

    def log_joint_and_grad(self, z) -> tuple[torch.Tensor, torch.Tensor]:
        """Value and gradient of :meth:`log_joint_unconstrained` for a batch of ``z`` ``(..., n_params)``.

        Uses the observation's fused log-likelihood where it offers one
        (:meth:`~jrinfer.observation.Observation.log_likelihood_function`;
        the transfer-method spectrum does) with the prior in closed form, else
        autograd through the generic path. Shapes ``(...)`` and ``(..., n)``.
        """
        fast = self._fast()
        if fast is not None:
            shape, zn = self._z_numpy(z)
            lp, glp, theta, jac = fast[1](zn)
            ll, gll = fast[0](theta)
            value = lp + ll
            with np.errstate(invalid="ignore"):
                grad = np.where(np.isfinite(value)[:, None], glp + gll * jac, 0.0)  # zero where -inf
            return torch.from_numpy(value.reshape(shape[:-1])), torch.from_numpy(grad.reshape(shape))
        z = _checks.as_float_tensor("z", z).detach().requires_grad_(True)
        value = self.log_joint_unconstrained(z)
        (grad,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), grad

    def log_likelihood_and_grad(self, z) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-likelihood at unconstrained ``z`` ``(..., n_params)`` and its gradient in ``z``.

        The fused path of :meth:`log_joint_and_grad` where available, else
        autograd. ``-inf`` where the model is invalid (the gradient is then
        zero on the fused path and undefined on the generic one).
        """
        fast = self._fast()
        if fast is not None:
            shape, zn = self._z_numpy(z)
            _, _, theta, jac = fast[1](zn)
            ll, gll = fast[0](theta)
            with np.errstate(invalid="ignore"):
                grad = np.where(np.isfinite(ll)[:, None], gll * jac, 0.0)
            return torch.from_numpy(ll.reshape(shape[:-1])), torch.from_numpy(grad.reshape(shape))
        z = _checks.as_float_tensor("z", z).detach().requires_grad_(True)
        value = self.log_likelihood(self.prior.from_unconstrained(z))
        if not bool(torch.isfinite(value).all()):
            grad = torch.zeros_like(z)
            ok = torch.isfinite(value)
            if bool(ok.any()):
                (g,) = torch.autograd.grad(torch.where(ok, value, 0.0).sum(), z)
                grad = torch.where(ok.unsqueeze(-1), g, grad)
            return value.detach(), grad
        (grad,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), grad

    def stability_boundary(self) -> "StabilityBoundary | None":
        """The observation's moving valid interval of a free parameter, or None.

        Under the transfer method the spectrum exists only where the upper
        equilibrium is stable: for ``p_mean`` in ``(p_L(theta), p_H(theta))``,
        functions of the other parameters (``p_L`` below any positive
        ``p_mean`` at the JR 1995 constants, ``p_H`` the first Hopf point).
        With ``p_mean`` free this returns a :class:`StabilityBoundary` that
        evaluates both ends and their gradients at unconstrained ``z`` (for
        samplers that map the parameter onto the interval, so that its ends
        sit at infinity). None when the observation has no such boundary or
        the bounded parameter is fixed.
        """
        found = self.observation.stability_boundary(self.data)
        if found is None or found[0] not in self.names:
            return None
        return StabilityBoundary(self, *found)

    @property
    def has_fast_path(self) -> bool:
        """Whether :meth:`log_joint_and_grad` runs the observation's fused path (else autograd)."""
        return self._fast() is not None

    def _z_numpy(self, z):
        zn = np.asarray(z.detach().numpy() if isinstance(z, torch.Tensor) else z, dtype=np.float64)
        if zn.ndim == 0 or zn.shape[-1] != self.n_params:
            raise ValueError(
                f"z must have a last axis of length {self.n_params} ({', '.join(self.names)}), got shape {zn.shape}"
            )
        if not np.isfinite(zn).all():
            raise ValueError(f"z must be finite, got {int((~np.isfinite(zn)).sum())} NaN or infinite value(s)")
        return zn.shape, zn.reshape(-1, self.n_params)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_fast_cache", None)  # NumPy closures, rebuilt on first use (e.g. in PyMC's worker processes)
        return state

    def _fast(self):
        """``(loglike(theta), prior(z))`` NumPy callables, or None when the observation offers no fused path."""
        if not hasattr(self, "_fast_cache"):
            ll = self.observation.log_likelihood_function(self.data, self.names, dict(self.prior.fixed))
            pr = _numpy_prior(self.prior) if ll is not None else None
            self._fast_cache = (ll, pr) if pr is not None else None
        return self._fast_cache

    def simulate(self, theta, *, seed: int | torch.Generator | None = None) -> torch.Tensor:
        """Noisy synthetic data for parameter sets ``theta``: shape ``(*batch, C, P)``.

        Drawn from the observation's likelihood. Invalid parameter sets give
        NaN (check with :meth:`predict`).
        """
        from jrinfer._rng import generator

        params = self.parameters(theta)
        pred = self.observation.predict(params, self.data)
        x = self.observation.sample(pred, params, self.data, generator(seed))
        return torch.where(pred.valid.reshape(pred.valid.shape + (1,) * (x.dim() - pred.valid.dim())), x, math.nan)

    def features(self, values) -> torch.Tensor:
        """Summary features of data-like ``values`` ``(*batch, C, P)`` for simulation-based inference."""
        return self.observation.features(_checks.as_float_tensor("values", values), self.data)

    def prior_validity(self, n_samples: int = 2000, *, seed: int = 0) -> dict:
        """How much prior mass the observation can predict.

        Under the transfer method, parameter sets whose equilibrium is
        unstable (the oscillatory regime) have ``-inf`` likelihood; this
        reports the fraction of prior draws affected, so a prior that puts
        much mass there can be noticed before fitting.

        Returns
        -------
        dict
            ``{"n_samples", "invalid_fraction", "reasons"}`` with up to three
            example reasons; where the observation classifies regimes also
            ``regime_mix`` (fraction of the prior draws in each regime),
            ``invalid_by_regime`` (fraction of the draws that cannot be
            predicted, by regime) and, when some cannot, ``explanation``: a
            sentence saying where they are and what it means for the fit.
        """
        n_samples = _checks.check_int("n_samples", n_samples, minimum=1)
        theta = self.prior.sample(n_samples, seed=seed)
        with torch.no_grad():
            pred = self.predict(theta)
            codes = self.regimes(theta)
        invalid = 1.0 - float(pred.valid.double().mean())
        out = {"n_samples": n_samples, "invalid_fraction": invalid, "reasons": pred.reasons[:3]}
        if codes is not None:
            names = self.observation.REGIMES
            bad = ~pred.valid
            out["regime_mix"] = {r: float((codes == k).double().mean()) for k, r in enumerate(names)}
            out["invalid_by_regime"] = {r: float(((codes == k) & bad).double().mean()) for k, r in enumerate(names)}
            if invalid > 0:
                out["explanation"] = _prior_validity_words(out, getattr(self.observation, "method", None))
        return out

    # ---------------------------------------------------- Gaussian form
    def gaussian_form(self) -> GaussianForm:
        """This problem as nonlinear regression with Gaussian prior and noise (for variational Laplace).

        Built from the observation's :meth:`~jrinfer.observation.Observation.gaussian_target`:
        ``y`` is the transformed data of all channels stacked and ``f(z)`` the
        transformed prediction broadcast to every channel. The noise
        parameters (log precisions) are the hyperparameters, with their
        (normal) prior distributions, or fixed where the prior fixes them.
        Parameter sets the observation cannot predict (e.g. an unstable
        equilibrium under the transfer method) give NaN predictions, which
        the optimiser treats as a rejected step.

        Raises
        ------
        ValueError
            The likelihood is not Gaussian, or a log precision has a
            non-normal prior.
        """
        from jrinfer.prior import Normal

        target = self.observation.gaussian_target(self.data)
        hyper_names = tuple(target.noise_parameters)
        theta_names = tuple(n for n in self.names if n not in hyper_names)
        idx = [self.names.index(n) for n in theta_names]
        mean, cov = self.prior.gaussian_unconstrained()
        mean, cov = mean[idx], cov[idx][:, idx]
        h_mean, h_var, free_hyper = [], [], []
        for name in hyper_names:
            if name in self.prior.names:
                dist = self.prior.distributions[name]
                if not isinstance(dist, Normal):
                    raise ValueError(f"variational Laplace needs a Normal prior on {name}, got {dist!r}")
                h_mean.append(float(dist.mean))
                h_var.append(float(dist.sd) ** 2)
                free_hyper.append(True)
            elif name in self.prior.fixed:
                h_mean.append(float(self.prior.fixed[name]))
                h_var.append(0.0)
                free_hyper.append(False)
            else:
                raise ValueError(f"the prior must declare the noise parameter {name!r} (free or fixed)")
        if any(free_hyper) and not all(free_hyper):
            raise ValueError(f"the noise parameters {hyper_names} must be all free or all fixed for variational Laplace")
        n_ch, n_pts = target.y.shape
        y = target.y.reshape(-1)
        full_names = self.names
        hyper_values = {n: torch.tensor(v, dtype=torch.float64) for n, v in zip(hyper_names, h_mean)}
        positions = [theta_names.index(n) if n in theta_names else -1 for n in full_names]

        def f(z: torch.Tensor) -> torch.Tensor:
            # unconstrained z (n_theta,) -> natural theta of the full problem
            parts = [z[i] if i >= 0 else hyper_values[n] for n, i in zip(full_names, positions)]
            theta = self.prior.from_unconstrained(torch.stack(parts))
            params = self.parameters(theta)
            pred = self.observation.predict(params, self.data)
            value = torch.broadcast_to(target.transform(pred.value), (n_ch, n_pts)).reshape(-1)
            return torch.where(pred.valid, value, torch.full_like(value, math.nan))

        value_and_jacobian = None
        fast = self._fast()
        fused = getattr(fast[0], "transformed_prediction_and_jacobian", None) if fast is not None else None
        if fused is not None:
            form_pos = np.array([self.names.index(n) for n in theta_names], dtype=np.intp)
            z_full = np.array([h_mean[hyper_names.index(n)] if n in hyper_names else 0.0 for n in full_names])

            def value_and_jacobian(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                zf = z_full.copy()
                zf[form_pos] = z.detach().numpy()
                _, _, theta, dtheta = fast[1](zf[None])
                value, jac = fused(theta[0])  # (P,) or every channel's (C * P,), and its Jacobian in natural units
                jac = jac[:, form_pos] * dtheta[0, form_pos]
                if value.size == n_ch * n_pts:  # already one row per channel (e.g. a fit of several conditions)
                    return torch.from_numpy(value), torch.from_numpy(jac)
                return torch.from_numpy(np.tile(value, n_ch)), torch.from_numpy(np.tile(jac, (n_ch, 1)))

        return GaussianForm(
            value_and_jacobian=value_and_jacobian,
            f=f,
            y=y,
            names=theta_names,
            prior_mean=mean,
            prior_cov=cov,
            hyper_mean=torch.tensor(h_mean, dtype=torch.float64),
            hyper_cov=torch.diag(torch.tensor(h_var, dtype=torch.float64)),
            precision_components=target.precision_components,
            hyper_names=hyper_names,
            estimate_hyper=all(free_hyper),
        )


def _numpy_prior(prior: Prior):
    """The prior's transform and log density in NumPy: ``z (nb, n) -> (log p(z), grad, theta, dtheta/dz)``.

    Closed forms of :class:`~jrinfer.prior.LogNormal` (``theta = exp z``),
    :class:`~jrinfer.prior.Normal` (identity) and :class:`~jrinfer.prior.Uniform`
    (scaled logistic, standard-logistic density of ``z``), the same as
    ``Prior.from_unconstrained`` and ``Prior.log_prob_unconstrained``; None if
    another distribution is used.
    """
    from jrinfer.prior import LogNormal, Normal, Uniform

    kind, mu, sd, low, width = [], [], [], [], []
    for d in prior.distributions.values():
        if isinstance(d, LogNormal):
            kind.append(0), mu.append(math.log(d.median)), sd.append(d.sd_log), low.append(0.0), width.append(1.0)
        elif isinstance(d, Normal):
            kind.append(1), mu.append(d.mean), sd.append(d.sd), low.append(0.0), width.append(1.0)
        elif isinstance(d, Uniform):
            kind.append(2), mu.append(0.0), sd.append(1.0), low.append(d.low), width.append(d.high - d.low)
        else:
            return None
    kind = np.array(kind)
    is_ln, is_u = kind == 0, kind == 2
    mu, sd, low, width = (np.array(x, dtype=np.float64) for x in (mu, sd, low, width))
    const = -(np.log(sd) + 0.5 * math.log(2 * math.pi))

    any_u = bool(is_u.any())

    def transform(z):
        if not any_u:  # log-normal and normal only: no logistic terms
            with np.errstate(over="ignore"):
                ez = np.exp(np.where(is_ln, z, 0.0))
            r = (z - mu) / sd
            return (const - 0.5 * r * r).sum(-1), -r / sd, np.where(is_ln, ez, z), np.where(is_ln, ez, 1.0)
        with np.errstate(over="ignore"):
            sz, snz = 1.0 / (1.0 + np.exp(-z)), 1.0 / (1.0 + np.exp(z))
            ez = np.exp(np.where(is_ln, z, 0.0))
        uni = np.where(z <= 0, low + width * sz, low + width - width * snz)
        theta = np.where(is_ln, ez, np.where(is_u, uni, z))
        jac = np.where(is_ln, ez, np.where(is_u, width * sz * snz, 1.0))
        r = (z - mu) / sd
        softplus = np.logaddexp(0.0, z) + np.logaddexp(0.0, -z)
        lp = np.where(is_u, -softplus, const - 0.5 * r * r).sum(-1)
        glp = np.where(is_u, snz - sz, -r / sd)
        return lp, glp, theta, jac

    return transform


class StabilityBoundary:
    """The valid interval ``(lo(theta), hi(theta))`` of a free parameter (:meth:`InverseProblem.stability_boundary`).

    Under the transfer method the bounded parameter is ``p_mean`` and the
    interval is the lowest one on which the upper equilibrium is stable
    (:meth:`jrinfer.JansenRit.stable_p_mean_interval`), searched in the
    prior's central ``1 - 2e-10`` range: a Hopf point outside that range is
    replaced by the range's end (prior mass beyond it, below 1e-10, is
    dropped by samplers that map onto the interval).

    Attributes
    ----------
    name : str
        The bounded parameter (``"p_mean"`` under the transfer method).
    index : int
        Its position in ``problem.names``.
    search_range : (float, float)
        The prior's ``1e-10`` and ``1 - 1e-10`` quantiles of the parameter,
        natural units.
    n_calls : int
        Evaluations (a repeated ``z`` is answered from a one-point cache).
    """

    #: Prior tail probability left out of the search range on each side.
    TAIL = 1e-10

    def __init__(self, problem: InverseProblem, name: str, bound):
        self.problem = problem
        self.name = name
        self.index = problem.names.index(name)
        self.distribution = problem.prior.distributions[name]
        self.search_range = (self.distribution.quantile(self.TAIL), self.distribution.quantile(1.0 - self.TAIL))
        self._bound = bound
        self._last = None
        self.n_calls = 0

    def __repr__(self) -> str:
        lo, hi = self.search_range
        return f"StabilityBoundary({self.name!r}, search_range=({lo:g}, {hi:g}))"

    def __call__(self, z) -> tuple[float, float, np.ndarray, np.ndarray]:
        """``(lo, hi, dlo/dz, dhi/dz)`` at one unconstrained ``z`` ``(n_params,)``.

        ``lo`` and ``hi`` (natural units) are the ends of the valid interval
        within ``search_range`` (an end outside the range is the range's end,
        with a zero gradient); ``lo >= hi`` (``(+inf, -inf)``) when no value
        in the range is valid. Gradients ``(n_params,)``; the bounded
        parameter's own entry of ``z`` is ignored (its gradient entry is 0).
        Deterministic: the same ``z`` gives the same result whatever was
        evaluated before.
        """
        zn = np.array(z, dtype=np.float64)
        if zn.shape != (self.problem.n_params,):
            raise ValueError(f"z must have shape ({self.problem.n_params},), got {zn.shape}")
        zn[self.index] = 0.0
        key = zn.tobytes()
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        self.n_calls += 1
        zt = torch.from_numpy(zn.copy()).requires_grad_(True)
        r_lo, r_hi = self.search_range
        n = self.problem.n_params
        with torch.enable_grad():
            params = self.problem.parameters(self.problem.prior.from_unconstrained(zt))
            lo_t, hi_t = self._bound(params, self.search_range)
            lo, hi = float(lo_t.detach()), float(hi_t.detach())
            if not lo < hi:
                out = (math.inf, -math.inf, np.zeros(n), np.zeros(n))
            else:
                ends = []
                for t, v, clip in ((lo_t, lo, r_lo), (hi_t, hi, r_hi)):
                    inside = math.isfinite(v) and r_lo < v < r_hi
                    if inside and t.requires_grad:
                        (g,) = torch.autograd.grad(t, zt, retain_graph=True)
                        ends.append((v, g.numpy().copy()))
                    else:
                        ends.append((v if inside else clip, np.zeros(n)))
                (lo, glo), (hi, ghi) = ends
                lo, hi = max(lo, r_lo), min(hi, r_hi)
                out = (lo, hi, glo, ghi) if lo < hi else (math.inf, -math.inf, np.zeros(n), np.zeros(n))
        self._last = (key, out)
        return out


#: How :meth:`InverseProblem.prior_validity` names a regime whose draws cannot be predicted.
_REGIME_WORDS = {
    "limit_cycle": "on the limit cycle (the upper equilibrium unstable: the oscillatory regime)",
    "lower_branch": "on the lower branch (the upper equilibrium unstable, a low-activity one stable)",
    "stable": "at a stable equilibrium (predictions that failed otherwise: see the reasons)",
}


def _prior_validity_words(pv: dict, method: str | None = None) -> str:
    """The sentence of ``prior_validity["explanation"]``: where the unpredictable prior draws are, and what it means.

    ``method``: the observation's (``"transfer"``: the spectrum of the stable
    fixed point, whose draws elsewhere the simulation method can predict).
    """
    n, invalid = pv["n_samples"], pv["invalid_fraction"]

    def pct(f):
        return f"{100 * f:.0f} %" if f >= 0.005 else "< 1 %"

    parts = [f"{pct(f)} {_REGIME_WORDS.get(r, r)}" for r, f in
             sorted(pv["invalid_by_regime"].items(), key=lambda kv: -kv[1]) if f > 0]
    valid = {r: pv["regime_mix"][r] - pv["invalid_by_regime"][r] for r in pv["regime_mix"]}
    kept = [r.replace("_", " ") for r, f in valid.items() if f > 0.005]
    where = ("no regime" if not kept else f"the {kept[0]} regime" if len(kept) == 1
             else "the " + ", ".join(kept[:-1]) + f" and {kept[-1]} regimes")
    if method == "transfer":
        advice = " (the simulation method, --method simulation, or a simulation-based backend predicts them)"
    elif method is None and pv["invalid_by_regime"].get("limit_cycle", 0) > 0:  # an evoked response
        advice = " (on the limit cycle there is no resting state for a response to start from and return to)"
    else:
        advice = ""
    return (f"{pct(invalid)} of {n} prior draws cannot be predicted by this observation: " + "; ".join(parts)
            + f". The fit describes {where}, which holds {pct(1 - invalid)} of the prior; the posterior cannot "
            f"reach the rest{advice}")
