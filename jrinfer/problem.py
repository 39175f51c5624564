"""The inverse problem every backend consumes: model + observation + prior + data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from jrinfer import _checks
from jrinfer.model import PARAMETERS as MODEL_PARAMETERS
from jrinfer.observation import EvokedObservation, Prediction, SpectrumObservation

__all__ = ["InverseProblem", "GaussianForm"]

#: Observation parameters that are noise (hyper)parameters rather than model parameters.
NOISE_PARAMETERS = ("log_precision",)


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
        likelihood's space (log-power for spectra, potentials for ERPs).
    y : torch.Tensor
        Observations, shape ``(m,)``.
    names : tuple of str
        Names of the ``n`` parameters in ``z``.
    prior_mean, prior_cov : torch.Tensor
        ``(n,)`` and ``(n, n)``.
    hyper_mean, hyper_cov : torch.Tensor
        ``(k,)`` and ``(k, k)``.
    precision_components : torch.Tensor
        Diagonals of the ``Q_i``, shape ``(k, m)`` (here ``k = 1``).
    hyper_names : tuple of str
        One name per precision component.
    estimate_hyper : bool
        False when the prior fixes ``log_precision``.
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


class InverseProblem:
    """Jansen-Rit inversion problem, validated once at construction.

    Parameters
    ----------
    observation : SpectrumObservation or EvokedObservation
        How parameters map to data.
    prior : Prior
        Distributions of the free parameters and values of the fixed ones.
        Its free and fixed names together must cover every parameter the
        observation requires; JR constants it does not mention keep the JR
        1995 defaults.
    data : SpectrumData or EvokedData
        The recording (matching the observation kind).

    Notes
    -----
    Parameter vectors ``theta`` are in natural units with the last axis
    ordered as ``prior.names``; ``z`` are the prior's unconstrained
    coordinates. Everything is batched over leading axes and differentiable.
    """

    def __init__(self, observation, prior, data):
        from jrinfer.data import EvokedData, SpectrumData
        from jrinfer.prior import Prior

        if not isinstance(prior, Prior):
            raise ValueError(f"prior must be a jrinfer.Prior, got {type(prior).__name__}")
        if isinstance(observation, SpectrumObservation):
            if not isinstance(data, SpectrumData):
                raise ValueError(f"a SpectrumObservation needs SpectrumData, got {type(data).__name__}")
        elif isinstance(observation, EvokedObservation):
            if not isinstance(data, EvokedData):
                raise ValueError(f"an EvokedObservation needs EvokedData, got {type(data).__name__}")
            if observation.lead_field is not None and observation.lead_field.numel() != data.values.shape[0]:
                raise ValueError(
                    f"observation.lead_field has {observation.lead_field.numel()} entries but data has "
                    f"{data.values.shape[0]} channels {list(data.channel_names)}"
                )
        else:
            raise ValueError(
                f"observation must be a SpectrumObservation or EvokedObservation, got {type(observation).__name__}"
            )
        known = set(MODEL_PARAMETERS) | set(observation.parameter_names(data))
        declared = set(prior.names) | set(prior.fixed)
        unknown = sorted(declared - known)
        if unknown:
            raise ValueError(
                f"prior declares parameter(s) {unknown} that neither the Jansen-Rit model nor {observation!r} uses"
            )
        missing = [n for n in observation.required_parameters(data) if n not in declared]
        if missing:
            raise ValueError(f"prior must declare (free or fixed) the observation parameter(s) {missing}")
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
    def kind(self) -> str:
        """``"spectrum"`` or ``"evoked"``."""
        return "spectrum" if isinstance(self.observation, SpectrumObservation) else "evoked"

    def __repr__(self) -> str:
        return f"InverseProblem({self.observation!r}, {self.n_params} free parameters {list(self.names)}, data={self.data!r})"

    def with_data(self, data) -> "InverseProblem":
        """Same model, observation and prior with other data (validated again)."""
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
        """Value and gradient of :meth:`log_joint_unconstrained` (autograd), for a batch of ``z``."""
        z = _checks.as_float_tensor("z", z).detach().requires_grad_(True)
        value = self.log_joint_unconstrained(z)
        (grad,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), grad

    def simulate(self, theta, *, seed: int | torch.Generator | None = None) -> torch.Tensor:
        """Noisy synthetic data for parameter sets ``theta``: shape ``(*batch, C, P)``.

        Spectra: power with the likelihood's noise; evoked: potentials plus
        Gaussian noise. Invalid parameter sets give NaN (check with
        :meth:`predict`).
        """
        params = self.parameters(theta)
        pred = self.observation.predict(params, self.data)
        gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(_seed_int(seed))
        x = self.observation.sample(pred, params, self.data, gen)
        return torch.where(pred.valid.reshape(pred.valid.shape + (1,) * (x.dim() - pred.valid.dim())), x, math.nan)

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
            example reasons.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        theta = self.prior.sample(n_samples, seed=seed)
        with torch.no_grad():
            pred = self.predict(theta)
        invalid = 1.0 - float(pred.valid.double().mean())
        return {"n_samples": n_samples, "invalid_fraction": invalid, "reasons": pred.reasons[:3]}

    # ---------------------------------------------------- Gaussian form
    def gaussian_form(self) -> GaussianForm:
        """This problem as nonlinear regression with Gaussian prior and noise (for variational Laplace).

        Spectra with the gaussian likelihood: ``y`` is the log-power of all
        channels stacked and ``f(z)`` the predicted log-power repeated per
        channel; evoked: the potentials. One precision component is shared by
        all data points; its hyperprior is the prior's ``log_precision``
        distribution (normal), or it is fixed when ``log_precision`` is. Parameter
        sets the observation cannot predict (e.g. an unstable equilibrium
        under the transfer method) give NaN predictions, which the optimiser
        treats as a rejected step.
        """
        from jrinfer.prior import Normal

        if self.kind == "spectrum" and self.observation.likelihood != "gaussian":
            raise ValueError(
                "variational Laplace needs a Gaussian likelihood: use SpectrumObservation(likelihood='gaussian')"
            )
        noise = [n for n in self.names if n in NOISE_PARAMETERS]
        theta_names = tuple(n for n in self.names if n not in NOISE_PARAMETERS)
        idx = [self.names.index(n) for n in theta_names]
        mean, cov = self.prior.gaussian_unconstrained()
        mean, cov = mean[idx], cov[idx][:, idx]
        if noise:
            dist = self.prior.distributions["log_precision"]
            if not isinstance(dist, Normal):
                raise ValueError("variational Laplace needs a Normal prior on log_precision")
            h_mean, h_var = float(dist.mean), float(dist.sd) ** 2
        else:
            h_mean = float(self.prior.fixed["log_precision"])
            h_var = None
        if self.kind == "spectrum":
            y_mat = torch.log(self.data.power)
        else:
            y_mat = self.data.values
        n_ch, n_pts = y_mat.shape
        y = y_mat.reshape(-1)
        # one precision shared by all channels, like the prior's single log_precision
        comps = torch.ones((1, n_ch * n_pts), dtype=torch.float64)
        hyper_mean = torch.full((1,), h_mean, dtype=torch.float64)
        hyper_cov = torch.eye(1, dtype=torch.float64) * (h_var if h_var is not None else 0.0)
        full_names = self.names
        noise_value = torch.tensor(h_mean, dtype=torch.float64)

        def f(z: torch.Tensor) -> torch.Tensor:
            # unconstrained z (n_theta,) -> natural theta of the full problem
            parts = []
            for n in full_names:
                if n in NOISE_PARAMETERS:
                    parts.append(noise_value)
                else:
                    parts.append(z[theta_names.index(n)])
            z_full = torch.stack(parts)
            theta = self.prior.from_unconstrained(z_full)
            params = self.parameters(theta)
            pred = self.observation.predict(params, self.data)
            value = torch.log(pred.value) if self.kind == "spectrum" else pred.value
            value = value.expand(n_ch, n_pts) if self.kind == "spectrum" else value
            value = value.reshape(-1)
            return torch.where(pred.valid, value, torch.full_like(value, math.nan))

        return GaussianForm(
            f=f,
            y=y,
            names=theta_names,
            prior_mean=mean,
            prior_cov=cov,
            hyper_mean=hyper_mean,
            hyper_cov=hyper_cov,
            precision_components=comps,
            hyper_names=("log_precision",),
            estimate_hyper=bool(noise),
        )


def _seed_int(seed) -> int:
    from jrinfer._rng import seed_to_int

    return seed_to_int(seed) % (2**63)
