"""Priors over model parameters, declared once and shared by every inference backend.

A :class:`Prior` is an ordered set of independent one-dimensional
distributions over the *free* parameters, plus a set of *fixed* parameter
values. Parameter vectors ``theta`` are float64 tensors of shape
``(..., n_params)`` whose last axis follows :attr:`Prior.names`; they are in
natural units (mV, 1/s, pulses/s, ...). Every backend uses the same object:

- variational Laplace works in the unconstrained space
  (:meth:`Prior.to_unconstrained`, :meth:`Prior.gaussian_unconstrained`);
- MCMC samples ``z`` with density :meth:`Prior.log_prob_unconstrained`;
- simulation-based inference draws from :meth:`Prior.sample` and builds its
  boxes from :meth:`Prior.bounds`;
- every backend turns ``theta`` into model arguments with
  :meth:`Prior.as_dict`.

Four distributions are available:

=========================  ===========================  ==============================================
distribution               support                      unconstrained ``z``
=========================  ===========================  ==============================================
``LogNormal(median, sd)``  ``theta > 0``                ``log theta``
``Normal(mean, sd)``       real line                    ``theta``
``Uniform(low, high)``     ``low <= theta <= high``     ``logit((theta-low)/(high-low))``
``LogUniform(low, high)``  ``0 < low <= theta <= high`` ``logit(log(theta/low)/log(high/low))``
=========================  ===========================  ==============================================

``Uniform`` and ``LogUniform`` are the bounded boxes that simulation-based
inference needs (``LogUniform`` for positive scales spanning decades, such as
an output gain).

:func:`jrinfer.jansen_rit_prior` builds the default priors for the Jansen-Rit
constants (this module knows nothing of the model: units of parameters come
with the prior as plain strings). No function here reads or changes torch's
global random state.

Examples
--------
>>> from jrinfer import jansen_rit_prior
>>> prior = jansen_rit_prior()
>>> theta = prior.sample(4, seed=0)                  # (4, 6), natural units
>>> prior.log_prob(theta).shape
torch.Size([4])
>>> from jrinfer import JansenRit
>>> JansenRit(**prior.as_dict(theta)).batch_shape
torch.Size([4])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist

import torch
import torch.nn.functional as F

from jrinfer import _checks

__all__ = [
    "Distribution",
    "LogNormal",
    "Normal",
    "Uniform",
    "LogUniform",
    "Prior",
    "TorchPrior",
    "distribution_from_dict",
]

F64 = torch.float64
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# ------------------------------------------------------------------ helpers
def _tensor(name: str, value, *, allow_inf: bool = True) -> torch.Tensor:
    """``value`` as a float64 tensor; NaN (and, unless ``allow_inf``, inf) rejected."""
    x = _checks.as_float_tensor(name, value)
    if allow_inf:
        if bool(torch.isnan(x.detach()).any()):
            raise ValueError(f"{name} must not contain NaN, got {_checks._describe(x)}")
    else:
        _checks.check_finite(name, x)
    return x


def _check_count(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        try:
            import operator

            n_int = operator.index(n)  # numpy integers, 0-d integer tensors
        except TypeError:
            raise ValueError(f"{name} must be a non-negative int (number of draws), got {n!r}") from None
    else:
        n_int = n
    if n_int < 0:
        raise ValueError(f"{name} must be a non-negative int (number of draws), got {n_int}")
    return int(n_int)


def _generator(name: str, seed) -> torch.Generator:
    """A private CPU generator from an int seed, a generator, or OS entropy (``None``)."""
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU torch.Generator, got one on device {seed.device}")
        return seed
    if seed is None:
        import secrets

        seed = secrets.randbits(63)
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(
            f"{name} must be a non-negative int seed, a torch.Generator or None, got {type(seed).__name__}: {seed!r}"
        )
    elif not 0 <= seed < 2**64:
        raise ValueError(f"{name} must be a seed in [0, 2**64), got {seed}")
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def _fmt(x: float) -> str:
    return f"{x:.4g}"


# ------------------------------------------------------------ distributions
class Distribution:
    """Base class of the one-dimensional prior distributions.

    Every method acts elementwise on tensors of any shape and returns float64
    tensors of the same shape. Subclasses are frozen dataclasses whose fields
    are validated at construction.
    """

    _kind = ""

    # ---- density and transforms (implemented by subclasses)
    def log_prob(self, theta) -> torch.Tensor:
        """Log density of ``theta`` (natural units), ``-inf`` outside the support.

        Parameters
        ----------
        theta : float or array_like or torch.Tensor
            Values in natural units, any shape; NaN is rejected.

        Returns
        -------
        torch.Tensor
            Log density in log(1/unit), same shape as ``theta``; differentiable.
        """
        raise NotImplementedError

    def to_unconstrained(self, theta) -> torch.Tensor:
        """Map values inside the open support to the real line.

        Parameters
        ----------
        theta : float or array_like or torch.Tensor
            Values strictly inside :attr:`support`, any shape.

        Returns
        -------
        torch.Tensor
            ``z``, same shape as ``theta`` (dimensionless).
        """
        raise NotImplementedError

    def from_unconstrained(self, z) -> torch.Tensor:
        """Inverse of :meth:`to_unconstrained`.

        Parameters
        ----------
        z : float or array_like or torch.Tensor
            Finite real values, any shape.

        Returns
        -------
        torch.Tensor
            ``theta`` in natural units, same shape as ``z``.
        """
        raise NotImplementedError

    def log_abs_det_jacobian(self, z) -> torch.Tensor:
        """``log |d theta / d z|`` at ``z`` (elementwise), same shape as ``z``."""
        raise NotImplementedError

    def log_prob_unconstrained(self, z) -> torch.Tensor:
        """Log density of ``z``: ``log_prob(from_unconstrained(z)) + log_abs_det_jacobian(z)``.

        Computed in closed form, so it stays finite for every finite ``z``
        even where ``from_unconstrained(z)`` rounds onto a boundary.
        """
        raise NotImplementedError

    def sample(self, n, generator=None) -> torch.Tensor:
        """Independent draws in natural units.

        Parameters
        ----------
        n : int
            Number of draws (``>= 0``).
        generator : int or torch.Generator or None
            Seed or CPU generator (advanced by the call); ``None`` seeds a
            fresh generator from OS entropy. torch's global RNG is never used.

        Returns
        -------
        torch.Tensor
            float64, shape ``(n,)``.
        """
        n = _check_count("n", n)
        return self._sample(n, _generator("generator", generator))

    def quantile(self, q: float) -> float:
        """The ``q``-quantile in natural units, ``0 < q < 1``."""
        q = _checks.check_scalar("q", q)
        if not 0.0 < q < 1.0:
            raise ValueError(f"q must be a probability strictly between 0 and 1, got {q!r}")
        return self._quantile(q)

    def unconstrained_moments(self) -> tuple[float, float]:
        """Mean and variance of ``z = to_unconstrained(theta)`` under this distribution."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """JSON-able description, e.g. ``{"dist": "lognormal", "median": 3.25, "sd_log": 0.2}``."""
        raise NotImplementedError

    # ---- shared internals
    def _sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _quantile(self, q: float) -> float:
        raise NotImplementedError

    def _inside_open_support(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.support
        return (x > lo) & (x < hi)

    def _check_in_support(self, name: str, x: torch.Tensor) -> None:
        bad = ~self._inside_open_support(x.detach())
        if bool(bad.any()):
            lo, hi = self.support
            first = float(x.detach()[bad].reshape(-1)[0])
            raise ValueError(
                f"{name} must lie inside the open support ({lo:g}, {hi:g}) of {self!r} to be transformed "
                f"to the unconstrained space; got {int(bad.sum())} value(s) outside, e.g. {first!r}"
            )

    @property
    def support(self) -> tuple[float, float]:
        """``(low, high)`` of the support in natural units (``±inf`` where unbounded)."""
        raise NotImplementedError


@dataclass(frozen=True)
class LogNormal(Distribution):
    """Log-normal distribution: ``log theta ~ N(log median, sd_log^2)``.

    Parameters
    ----------
    median : float
        Median in natural units, ``> 0``.
    sd_log : float
        Standard deviation of ``log theta`` (dimensionless), ``> 0``. The
        central 95 % interval is ``median * exp(±1.96 sd_log)``.

    Notes
    -----
    Support ``theta > 0``; unconstrained transform ``z = log theta`` (so ``z``
    is exactly ``N(log median, sd_log^2)``); ``log |d theta / d z| = z``.
    """

    median: float
    sd_log: float

    _kind = "lognormal"

    def __post_init__(self):
        object.__setattr__(self, "median", _checks.check_scalar("median", self.median, positive=True))
        object.__setattr__(self, "sd_log", _checks.check_scalar("sd_log", self.sd_log, positive=True))

    @property
    def _mu(self) -> float:
        return math.log(self.median)

    def log_prob(self, theta) -> torch.Tensor:
        x = _tensor("theta", theta)
        pos = x > 0
        safe = torch.where(pos, x, torch.ones_like(x))
        lx = torch.log(safe)
        lp = -lx - math.log(self.sd_log) - _LOG_SQRT_2PI - 0.5 * ((lx - self._mu) / self.sd_log) ** 2
        return torch.where(pos, lp, torch.full_like(lp, -math.inf))

    def to_unconstrained(self, theta) -> torch.Tensor:
        x = _tensor("theta", theta)
        self._check_in_support("theta", x)
        return torch.log(x)

    def from_unconstrained(self, z) -> torch.Tensor:
        return torch.exp(_tensor("z", z, allow_inf=False))

    def log_abs_det_jacobian(self, z) -> torch.Tensor:
        return _tensor("z", z, allow_inf=False).clone()

    def log_prob_unconstrained(self, z) -> torch.Tensor:
        z = _tensor("z", z, allow_inf=False)
        return -math.log(self.sd_log) - _LOG_SQRT_2PI - 0.5 * ((z - self._mu) / self.sd_log) ** 2

    def _sample(self, n, g):
        return torch.exp(self._mu + self.sd_log * torch.randn(n, generator=g, dtype=F64))

    def _quantile(self, q):
        return self.median * math.exp(self.sd_log * NormalDist().inv_cdf(q))

    @property
    def mean(self) -> float:
        """Mean ``median * exp(sd_log^2 / 2)`` in natural units."""
        return self.median * math.exp(0.5 * self.sd_log**2)

    @property
    def std(self) -> float:
        """Standard deviation ``mean * sqrt(exp(sd_log^2) - 1)`` in natural units."""
        return self.mean * math.sqrt(math.expm1(self.sd_log**2))

    @property
    def support(self) -> tuple[float, float]:
        return (0.0, math.inf)

    def unconstrained_moments(self) -> tuple[float, float]:
        """``(log median, sd_log^2)``: exact, ``z = log theta`` is Gaussian."""
        return (self._mu, self.sd_log**2)

    def to_dict(self) -> dict:
        return {"dist": "lognormal", "median": self.median, "sd_log": self.sd_log}


@dataclass(frozen=True)
class Normal(Distribution):
    """Normal distribution ``N(mean, sd^2)`` on the real line.

    Parameters
    ----------
    mean : float
        Mean (and median) in natural units, finite.
    sd : float
        Standard deviation in natural units, ``> 0``.

    Notes
    -----
    The unconstrained transform is the identity (``log |J| = 0``).
    """

    mean: float
    sd: float

    _kind = "normal"

    def __post_init__(self):
        object.__setattr__(self, "mean", _checks.check_scalar("mean", self.mean))
        object.__setattr__(self, "sd", _checks.check_scalar("sd", self.sd, positive=True))

    def log_prob(self, theta) -> torch.Tensor:
        x = _tensor("theta", theta)
        return -math.log(self.sd) - _LOG_SQRT_2PI - 0.5 * ((x - self.mean) / self.sd) ** 2

    def to_unconstrained(self, theta) -> torch.Tensor:
        x = _tensor("theta", theta)
        self._check_in_support("theta", x)
        return x.clone()

    def from_unconstrained(self, z) -> torch.Tensor:
        return _tensor("z", z, allow_inf=False).clone()

    def log_abs_det_jacobian(self, z) -> torch.Tensor:
        return torch.zeros_like(_tensor("z", z, allow_inf=False))

    def log_prob_unconstrained(self, z) -> torch.Tensor:
        return self.log_prob(_tensor("z", z, allow_inf=False))

    def _sample(self, n, g):
        return self.mean + self.sd * torch.randn(n, generator=g, dtype=F64)

    def _quantile(self, q):
        return self.mean + self.sd * NormalDist().inv_cdf(q)

    @property
    def std(self) -> float:
        """Standard deviation (``sd``) in natural units."""
        return self.sd

    @property
    def support(self) -> tuple[float, float]:
        return (-math.inf, math.inf)

    def unconstrained_moments(self) -> tuple[float, float]:
        """``(mean, sd^2)``: exact."""
        return (self.mean, self.sd**2)

    def to_dict(self) -> dict:
        return {"dist": "normal", "mean": self.mean, "sd": self.sd}


@dataclass(frozen=True)
class Uniform(Distribution):
    """Uniform distribution on ``[low, high]``.

    Parameters
    ----------
    low, high : float
        Bounds in natural units, finite, ``low < high``.

    Notes
    -----
    Unconstrained transform ``z = logit((theta - low) / (high - low))``, under
    which ``z`` follows the standard logistic distribution;
    ``log |d theta / d z| = log(high - low) + log s(z) + log s(-z)`` with ``s``
    the logistic sigmoid. :meth:`unconstrained_moments` returns the standard
    logistic's moments ``(0, pi^2 / 3)``: variational Laplace, which needs a
    Gaussian prior in ``z``, then uses this moment-matched Gaussian instead
    of the exact logistic (slightly lighter tails, same mean and variance).
    """

    low: float
    high: float

    _kind = "uniform"

    def __post_init__(self):
        low = _checks.check_scalar("low", self.low)
        high = _checks.check_scalar("high", self.high)
        if not high > low:
            raise ValueError(f"high must be > low (= {low!r}), got high={high!r}")
        if not math.isfinite(high - low):
            raise ValueError(f"high - low must be finite, got low={low!r}, high={high!r}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def _width(self) -> float:
        return self.high - self.low

    def log_prob(self, theta) -> torch.Tensor:
        x = _tensor("theta", theta)
        inside = (x >= self.low) & (x <= self.high)
        # 0 * x keeps theta in the graph (zero gradient) without NaNs.
        base = 0.0 * torch.where(inside, x, torch.zeros_like(x)) - math.log(self._width)
        return torch.where(inside, base, torch.full_like(base, -math.inf))

    def to_unconstrained(self, theta) -> torch.Tensor:
        x = _tensor("theta", theta)
        self._check_in_support("theta", x)
        # log(x - low) - log(high - x) is exact near both bounds (no 1 - u cancellation).
        return torch.log(x - self.low) - torch.log(self.high - x)

    def from_unconstrained(self, z) -> torch.Tensor:
        z = _tensor("z", z, allow_inf=False)
        # Measure from the nearer bound so that |z| up to ~36 keeps full precision there.
        from_low = self.low + self._width * torch.sigmoid(z)
        from_high = self.high - self._width * torch.sigmoid(-z)
        return torch.where(z <= 0, from_low, from_high)

    def log_abs_det_jacobian(self, z) -> torch.Tensor:
        z = _tensor("z", z, allow_inf=False)
        return math.log(self._width) + F.logsigmoid(z) + F.logsigmoid(-z)

    def log_prob_unconstrained(self, z) -> torch.Tensor:
        z = _tensor("z", z, allow_inf=False)
        return F.logsigmoid(z) + F.logsigmoid(-z)  # standard logistic density

    def _sample(self, n, g):
        return self.low + self._width * torch.rand(n, generator=g, dtype=F64)

    def _quantile(self, q):
        return self.low + q * self._width

    @property
    def mean(self) -> float:
        """Mean ``(low + high) / 2`` in natural units."""
        return 0.5 * (self.low + self.high)

    @property
    def std(self) -> float:
        """Standard deviation ``(high - low) / sqrt(12)`` in natural units."""
        return self._width / math.sqrt(12.0)

    @property
    def support(self) -> tuple[float, float]:
        return (self.low, self.high)

    def unconstrained_moments(self) -> tuple[float, float]:
        """``(0, pi^2 / 3)``: moments of the standard logistic (moment-matched, not exact)."""
        return (0.0, math.pi**2 / 3.0)

    def to_dict(self) -> dict:
        return {"dist": "uniform", "low": self.low, "high": self.high}


@dataclass(frozen=True)
class LogUniform(Distribution):
    """Log-uniform distribution on ``[low, high]``: ``log theta ~ Uniform(log low, log high)``.

    Parameters
    ----------
    low, high : float
        Bounds in natural units, finite, ``0 < low < high``.

    Notes
    -----
    The bounded box for a positive scale that spans decades (an output gain,
    a noise floor): every decade inside the box gets the same mass, where a
    :class:`Uniform` would put almost all of it in the top decade. Density
    ``1 / (theta log(high / low))``. Unconstrained transform
    ``z = logit(log(theta / low) / log(high / low))``, under which ``z``
    follows the standard logistic distribution (as for :class:`Uniform`);
    ``log |d theta / d z| = log theta + log log(high / low) + log s(z) + log s(-z)``.
    :meth:`unconstrained_moments` returns the standard logistic's ``(0, pi^2 / 3)``.
    """

    low: float
    high: float

    _kind = "loguniform"

    def __post_init__(self):
        low = _checks.check_scalar("low", self.low, positive=True)
        high = _checks.check_scalar("high", self.high, positive=True)
        if not high > low:
            raise ValueError(f"high must be > low (= {low!r}), got high={high!r}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def _log_low(self) -> float:
        return math.log(self.low)

    @property
    def _log_width(self) -> float:
        return math.log(self.high) - math.log(self.low)

    def log_prob(self, theta) -> torch.Tensor:
        x = _tensor("theta", theta)
        inside = (x >= self.low) & (x <= self.high)
        safe = torch.where(inside, x, torch.full_like(x, self.low))
        lp = -torch.log(safe) - math.log(self._log_width)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def to_unconstrained(self, theta) -> torch.Tensor:
        x = _tensor("theta", theta)
        self._check_in_support("theta", x)
        lx = torch.log(x)
        return torch.log(lx - self._log_low) - torch.log(math.log(self.high) - lx)

    def from_unconstrained(self, z) -> torch.Tensor:
        z = _tensor("z", z, allow_inf=False)
        from_low = self._log_low + self._log_width * torch.sigmoid(z)
        from_high = math.log(self.high) - self._log_width * torch.sigmoid(-z)
        return torch.exp(torch.where(z <= 0, from_low, from_high))

    def log_abs_det_jacobian(self, z) -> torch.Tensor:
        z = _tensor("z", z, allow_inf=False)
        return torch.log(self.from_unconstrained(z)) + math.log(self._log_width) + F.logsigmoid(z) + F.logsigmoid(-z)

    def log_prob_unconstrained(self, z) -> torch.Tensor:
        z = _tensor("z", z, allow_inf=False)
        return F.logsigmoid(z) + F.logsigmoid(-z)  # standard logistic density

    def _sample(self, n, g):
        return torch.exp(self._log_low + self._log_width * torch.rand(n, generator=g, dtype=F64))

    def _quantile(self, q):
        return math.exp(self._log_low + q * self._log_width)

    @property
    def mean(self) -> float:
        """Mean ``(high - low) / log(high / low)`` in natural units."""
        return (self.high - self.low) / self._log_width

    @property
    def std(self) -> float:
        """Standard deviation in natural units (from ``E[theta^2] = (high^2 - low^2) / (2 log(high / low))``)."""
        second = (self.high**2 - self.low**2) / (2.0 * self._log_width)
        return math.sqrt(max(second - self.mean**2, 0.0))

    @property
    def support(self) -> tuple[float, float]:
        return (self.low, self.high)

    def unconstrained_moments(self) -> tuple[float, float]:
        """``(0, pi^2 / 3)``: moments of the standard logistic (moment-matched, not exact)."""
        return (0.0, math.pi**2 / 3.0)

    def to_dict(self) -> dict:
        return {"dist": "loguniform", "low": self.low, "high": self.high}


_DISTRIBUTIONS: dict[str, tuple[type, tuple[str, ...]]] = {
    "lognormal": (LogNormal, ("median", "sd_log")),
    "normal": (Normal, ("mean", "sd")),
    "uniform": (Uniform, ("low", "high")),
    "loguniform": (LogUniform, ("low", "high")),
}


def distribution_from_dict(d: Mapping, *, name: str = "d") -> Distribution:
    """Rebuild a distribution from :meth:`Distribution.to_dict` output.

    Parameters
    ----------
    d : mapping
        ``{"dist": "lognormal" | "normal" | "uniform" | "loguniform", <its fields>}``.
    name : str
        How ``d`` is named in error messages.

    Returns
    -------
    Distribution
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"{name} must be a dict like {{'dist': 'lognormal', 'median': ..., 'sd_log': ...}}, got {d!r}")
    kind = d.get("dist")
    _checks.check_option(f"{name}['dist']", kind, tuple(_DISTRIBUTIONS))
    cls, fields = _DISTRIBUTIONS[kind]
    keys = set(d) - {"dist"}
    if keys != set(fields):
        raise ValueError(
            f"{name} for dist {kind!r} must have exactly the keys 'dist', {', '.join(map(repr, fields))}; "
            f"got {', '.join(map(repr, d))}"
        )
    return cls(**{f: d[f] for f in fields})


# -------------------------------------------------------------------- prior
class Prior:
    """Independent priors over named free parameters, plus fixed values.

    Parameters
    ----------
    distributions : dict of str to Distribution
        Free parameters in order; this order is the last axis of every
        ``theta`` / ``z`` (see :attr:`names`). At least one is required.
    fixed : dict of str to float, optional
        Parameters held at a value (natural units). A name may not be both
        free and fixed.
    units : dict of str to str, optional
        Units of the parameters (free or fixed), for display and reports;
        names not declared are ignored.

    Notes
    -----
    The prior density is the product of the free parameters' densities.
    ``theta`` arguments are float64 tensors (or array-likes) of shape
    ``(..., n_params)`` in natural units; ``z`` arguments have the same shape
    in the unconstrained space. NaN is rejected everywhere.

    Examples
    --------
    >>> from jrinfer.prior import Prior, LogNormal, Uniform
    >>> prior = Prior({"A": LogNormal(3.25, 0.2), "p_mean": Uniform(40.0, 85.0)}, fixed={"B": 22.0})
    >>> prior.names
    ('A', 'p_mean')
    >>> prior.sample(3, seed=1).shape
    torch.Size([3, 2])
    """

    def __init__(
        self,
        distributions: Mapping[str, Distribution],
        fixed: Mapping[str, float] | None = None,
        units: Mapping[str, str] | None = None,
    ):
        if not isinstance(distributions, Mapping):
            raise ValueError(
                f"distributions must be a dict mapping parameter names to LogNormal/Normal/Uniform, "
                f"got {type(distributions).__name__}: {distributions!r}"
            )
        if fixed is None:
            fixed = {}
        if not isinstance(fixed, Mapping):
            raise ValueError(f"fixed must be a dict mapping parameter names to numbers or None, got {fixed!r}")
        dists: dict[str, Distribution] = {}
        for k, v in distributions.items():
            _check_name("distributions", k)
            if not isinstance(v, Distribution):
                raise ValueError(
                    f"distributions[{k!r}] must be a LogNormal, Normal or Uniform, got {type(v).__name__}: {v!r}"
                )
            dists[k] = v
        if not dists:
            raise ValueError("distributions must declare at least one free parameter, got an empty dict")
        fix: dict[str, float] = {}
        for k, v in fixed.items():
            _check_name("fixed", k)
            fix[k] = _checks.check_scalar(f"fixed[{k!r}]", v)
        both = [k for k in dists if k in fix]
        if both:
            raise ValueError(
                f"parameter(s) {', '.join(map(repr, both))} are both free (in distributions) and fixed; "
                "give each name in only one of them"
            )
        if units is None:
            units = {}
        if not isinstance(units, Mapping) or not all(isinstance(u, str) for u in units.values()):
            raise ValueError(f"units must be a dict mapping parameter names to unit strings, got {units!r}")
        self._dists = dists
        self._fixed = fix
        self._names = tuple(dists)
        self._units = {k: u for k, u in units.items() if k in dists or k in fix}

    # ---------------------------------------------------------- description
    @property
    def names(self) -> tuple[str, ...]:
        """Names of the free parameters, in the order of ``theta``'s last axis."""
        return self._names

    @property
    def n_params(self) -> int:
        """Number of free parameters."""
        return len(self._names)

    @property
    def fixed(self) -> dict[str, float]:
        """Fixed parameters, name -> value in natural units (a copy)."""
        return dict(self._fixed)

    @property
    def distributions(self) -> dict[str, Distribution]:
        """Free parameters, name -> distribution, in order (a copy)."""
        return dict(self._dists)

    @property
    def units(self) -> dict[str, str]:
        """Units of the declared parameters that have them, name -> unit (a copy)."""
        return dict(self._units)

    def unit(self, name: str) -> str:
        """Unit of ``name`` (``""`` when not declared)."""
        return self._units.get(name, "")

    def __eq__(self, other) -> bool:
        if not isinstance(other, Prior):
            return NotImplemented
        return list(self._dists.items()) == list(other._dists.items()) and self._fixed == other._fixed

    __hash__ = None  # compared by value (see __eq__); not meant as a dict key

    def __repr__(self) -> str:
        header = ("name", "distribution", "median", "mean", "90% interval", "unit")
        rows = []
        for k, d in self._dists.items():
            fields = ", ".join(_fmt(v) for k2, v in d.to_dict().items() if k2 != "dist")
            rows.append(
                (
                    k,
                    f"{type(d).__name__}({fields})",
                    _fmt(d.quantile(0.5)),
                    _fmt(d.mean),
                    f"[{_fmt(d.quantile(0.05))}, {_fmt(d.quantile(0.95))}]",
                    self.unit(k),
                )
            )
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        lines = [f"Prior({self.n_params} free, {len(self._fixed)} fixed)"]
        for r in [header] + rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if self._fixed:
            # long unit strings (p_std's) are left to the table of free parameters
            fx = ", ".join(
                f"{k}={_fmt(v)}" + (f" {self.unit(k)}" if 0 < len(self.unit(k)) < 12 else "") for k, v in self._fixed.items()
            )
            lines.append(f"  fixed: {fx}")
        return "\n".join(lines)

    # ---------------------------------------------------------- validation
    def _theta(self, name: str, value, *, allow_inf: bool = True) -> torch.Tensor:
        x = _checks.as_float_tensor(name, value)
        if x.dim() == 0 or x.shape[-1] != self.n_params:
            raise ValueError(
                f"{name} must have shape (..., {self.n_params}) (last axis = n_params = {self.n_params}: "
                f"{', '.join(self._names)}), got shape {tuple(x.shape)}"
            )
        return _tensor(name, x, allow_inf=allow_inf)

    def _columns(self, x: torch.Tensor):
        return zip(self._dists.values(), x.unbind(-1))

    # ---------------------------------------------------------- sampling
    def sample(self, n, seed=None) -> torch.Tensor:
        """Independent draws from the prior.

        Parameters
        ----------
        n : int
            Number of draws (``>= 0``).
        seed : int or torch.Generator or None
            Seed of a private generator, or a CPU generator to draw from
            (advanced by the call). ``None`` seeds from OS entropy (not
            reproducible). torch's global RNG is never read or advanced.

        Returns
        -------
        torch.Tensor
            float64, shape ``(n, n_params)``, natural units.
        """
        n = _check_count("n", n)
        g = _generator("seed", seed)
        return torch.stack([d._sample(n, g) for d in self._dists.values()], dim=-1)

    # ---------------------------------------------------------- densities
    def log_prob(self, theta) -> torch.Tensor:
        """Log prior density of ``theta``.

        Parameters
        ----------
        theta : array_like or torch.Tensor
            Shape ``(..., n_params)``, natural units.

        Returns
        -------
        torch.Tensor
            Shape ``(...)``; ``-inf`` outside the support; differentiable.
        """
        x = self._theta("theta", theta)
        return sum(d.log_prob(c) for d, c in self._columns(x))

    def to_unconstrained(self, theta) -> torch.Tensor:
        """Map ``theta`` (``(..., n_params)``, inside the open support) to ``z`` (same shape)."""
        x = self._theta("theta", theta)
        return torch.stack([d.to_unconstrained(c) for d, c in self._columns(x)], dim=-1)

    def from_unconstrained(self, z) -> torch.Tensor:
        """Map finite ``z`` (``(..., n_params)``) to ``theta`` in natural units (same shape)."""
        x = self._theta("z", z, allow_inf=False)
        return torch.stack([d.from_unconstrained(c) for d, c in self._columns(x)], dim=-1)

    def log_abs_det_jacobian(self, z) -> torch.Tensor:
        """``log |det d theta / d z|`` for ``z`` of shape ``(..., n_params)``, shape ``(...)``.

        The Jacobian is diagonal, so this is the sum of the per-parameter terms.
        """
        x = self._theta("z", z, allow_inf=False)
        return sum(d.log_abs_det_jacobian(c) for d, c in self._columns(x))

    def log_prob_unconstrained(self, z) -> torch.Tensor:
        """Log density of ``z``: ``log_prob(from_unconstrained(z)) + log_abs_det_jacobian(z)``.

        Parameters
        ----------
        z : array_like or torch.Tensor
            Finite, shape ``(..., n_params)``.

        Returns
        -------
        torch.Tensor
            Shape ``(...)``; finite for every finite ``z`` (closed form per
            parameter); differentiable.
        """
        x = self._theta("z", z, allow_inf=False)
        return sum(d.log_prob_unconstrained(c) for d, c in self._columns(x))

    def gaussian_unconstrained(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian prior in the unconstrained space, for variational Laplace.

        Exact for LogNormal and Normal parameters; for Uniform parameters the
        moment-matched Gaussian ``N(0, pi^2/3)`` of the standard logistic.

        Returns
        -------
        mean : torch.Tensor
            Shape ``(n_params,)``.
        cov : torch.Tensor
            Diagonal covariance, shape ``(n_params, n_params)``.
        """
        m = [d.unconstrained_moments() for d in self._dists.values()]
        mean = torch.tensor([a for a, _ in m], dtype=F64)
        cov = torch.diag(torch.tensor([v for _, v in m], dtype=F64))
        return mean, cov

    # ---------------------------------------------------------- summaries
    def mean(self) -> torch.Tensor:
        """Prior means in natural units, shape ``(n_params,)``."""
        return torch.tensor([d.mean for d in self._dists.values()], dtype=F64)

    def std(self) -> torch.Tensor:
        """Prior standard deviations in natural units, shape ``(n_params,)``."""
        return torch.tensor([d.std for d in self._dists.values()], dtype=F64)

    def median(self) -> torch.Tensor:
        """Prior medians in natural units, shape ``(n_params,)``."""
        return torch.tensor([d.quantile(0.5) for d in self._dists.values()], dtype=F64)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Support bounds ``(low, high)``, each shape ``(n_params,)``, ``±inf`` where unbounded."""
        s = [d.support for d in self._dists.values()]
        return torch.tensor([a for a, _ in s], dtype=F64), torch.tensor([b for _, b in s], dtype=F64)

    def to_torch(self) -> "TorchPrior":
        """This prior as a ``torch.distributions`` object (e.g. for sbi).

        A joint over the free parameters in :attr:`names` order: event shape
        ``(n_params,)``, batch shape ``()``, float64. ``log_prob`` equals
        :meth:`log_prob` (``-inf`` outside the support); ``sample(shape)``
        draws from torch's global RNG like every ``torch.distributions``
        object (use :meth:`sample` for seeded draws); ``support`` is the
        per-parameter box, and ``torch.distributions.biject_to(support)`` is
        this prior's unconstrained transform (``exp`` for LogNormal, identity
        for Normal, scaled logistic for Uniform), which sbi uses to run MCMC
        in an unbounded space. ``mean`` and ``stddev`` are the prior's.

        sbi's ``process_prior`` accepts it as a PyTorch prior (it wraps
        float64 priors to return float32).

        Returns
        -------
        TorchPrior
        """
        return TorchPrior(self)

    def as_dict(self, theta) -> dict[str, torch.Tensor]:
        """Named parameters for a model: free columns of ``theta`` plus the fixed values.

        Parameters
        ----------
        theta : array_like or torch.Tensor
            Shape ``(..., n_params)``, natural units.

        Returns
        -------
        dict of str to torch.Tensor
            ``{name: theta[..., i]}`` (shape ``(...)``, gradients kept) for the
            free parameters, then ``{name: 0-d float64 tensor}`` for the fixed
            ones; e.g. ``JansenRit(**prior.as_dict(theta))``.
        """
        x = self._theta("theta", theta)
        out = {k: x[..., i] for i, k in enumerate(self._names)}
        out.update({k: torch.tensor(v, dtype=F64) for k, v in self._fixed.items()})
        return out

    # ---------------------------------------------------------- editing
    def fix(self, **values: float) -> "Prior":
        """A new prior with the given parameters fixed at ``values`` (natural units).

        Names must be free or already fixed (re-fixing changes the value); at
        least one parameter must stay free.
        """
        unknown = [k for k in values if k not in self._dists and k not in self._fixed]
        if unknown:
            raise ValueError(
                f"fix got unknown parameter(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(self._names + tuple(self._fixed))}"
            )
        dists = {k: d for k, d in self._dists.items() if k not in values}
        if not dists:
            raise ValueError(f"fix({', '.join(values)}) would leave no free parameter; keep at least one free")
        fixed = dict(self._fixed)
        for k, v in values.items():
            fixed[k] = _checks.check_scalar(k, v)
        return Prior(dists, fixed, self._units)

    def free(self, **dists: Distribution) -> "Prior":
        """A new prior with the given parameters (re)declared free.

        Already-free names keep their position; new or previously fixed names
        are appended to :attr:`names` in the order given and removed from
        :attr:`fixed`.
        """
        for k, d in dists.items():
            if not isinstance(d, Distribution):
                raise ValueError(f"{k} must be a LogNormal, Normal or Uniform, got {type(d).__name__}: {d!r}")
        new = dict(self._dists)
        new.update(dists)
        fixed = {k: v for k, v in self._fixed.items() if k not in dists}
        return Prior(new, fixed, self._units)

    # ---------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict:
        """JSON-able description.

        ``{"distributions": {name: dist.to_dict()}, "fixed": {name: float}}``
        plus ``"units": {name: str}`` when units are declared.
        """
        out = {
            "distributions": {k: d.to_dict() for k, d in self._dists.items()},
            "fixed": dict(self._fixed),
        }
        if self._units:
            out["units"] = dict(self._units)
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> "Prior":
        """Rebuild a prior from :meth:`to_dict` output (e.g. after a JSON round trip)."""
        if not isinstance(d, Mapping) or "distributions" not in d or set(d) - {"distributions", "fixed", "units"}:
            got = f"keys {', '.join(map(repr, d))}" if isinstance(d, Mapping) else repr(d)
            raise ValueError(
                f"d must be a dict with keys 'distributions' and optionally 'fixed' and 'units', got {got}"
            )
        spec = d["distributions"]
        if not isinstance(spec, Mapping):
            raise ValueError(f"d['distributions'] must be a dict of name -> distribution dict, got {spec!r}")
        dists = {k: distribution_from_dict(v, name=f"d['distributions'][{k!r}]") for k, v in spec.items()}
        return cls(dists, d.get("fixed"), d.get("units"))


def _check_name(where: str, name) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where} keys must be non-empty parameter names (str), got {name!r}")

# ====================================================== torch.distributions
_KIND_CODE = {"lognormal": 0, "normal": 1, "uniform": 2, "loguniform": 3}


class _PriorBox(torch.distributions.constraints.Constraint):
    """Elementwise support of a :class:`Prior`: ``(0, inf)``, the real line or ``[low, high]`` per parameter.

    ``lower_bound`` / ``upper_bound`` are the per-parameter bounds (``±inf``
    where unbounded); ``torch.distributions.biject_to`` maps it to
    :class:`_PriorTransform`.
    """

    is_discrete = False
    event_dim = 0

    def __init__(self, kind: torch.Tensor, lower_bound: torch.Tensor, upper_bound: torch.Tensor):
        self.kind = kind
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        super().__init__()

    def check(self, value):
        inside = (value >= self.lower_bound) & (value <= self.upper_bound)
        return inside & ((self.kind != 0) | (value > 0))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lower_bound={self.lower_bound.tolist()}, upper_bound={self.upper_bound.tolist()})"


class _PriorTransform(torch.distributions.transforms.Transform):
    """Elementwise unconstrained -> natural map of a :class:`Prior` (same as ``Prior.from_unconstrained``).

    Bounded kinds (Uniform, LogUniform) map ``z`` through a scaled logistic,
    LogUniform in log space: ``theta = exp(log low + log(high / low) sigmoid(z))``.
    """

    domain = torch.distributions.constraints.real
    bijective = True
    sign = +1

    def __init__(self, box: _PriorBox, cache_size: int = 0):
        super().__init__(cache_size=cache_size)
        self.box = box
        self.codomain = box

    def with_cache(self, cache_size=1):
        return self if self._cache_size == cache_size else _PriorTransform(self.box, cache_size)

    def __eq__(self, other):
        return isinstance(other, _PriorTransform) and other.box is self.box

    def __hash__(self):
        return hash((type(self), id(self.box)))

    def _logistic_box(self):
        """``(low, width, is_log)`` of the scaled logistic of the bounded kinds (0 and 1 elsewhere)."""
        b = self.box
        is_log = b.kind == 3
        bounded = (b.kind == 2) | is_log
        one = torch.ones_like(b.lower_bound)
        lo = torch.where(is_log, torch.log(torch.where(is_log, b.lower_bound, one)), b.lower_bound)
        hi = torch.where(is_log, torch.log(torch.where(is_log, b.upper_bound, one)), b.upper_bound)
        low = torch.where(bounded, lo, torch.zeros_like(lo))
        width = torch.where(bounded, hi - lo, one)
        return low, width, is_log

    def _call(self, z):
        kind = self.box.kind
        low, width, is_log = self._logistic_box()
        s = low + width * torch.sigmoid(z)
        bounded = torch.where(is_log, torch.exp(s), s)
        return torch.where(kind == 0, torch.exp(z), torch.where(kind == 1, z, bounded))

    def _inverse(self, x):
        kind = self.box.kind
        low, width, is_log = self._logistic_box()
        pos = torch.where((kind == 0) | is_log, x, torch.ones_like(x))
        u = ((torch.where(is_log, torch.log(pos), x) - low) / width).clamp(0.0, 1.0)
        return torch.where(kind == 0, torch.log(pos), torch.where(kind == 1, x, torch.logit(u)))

    def log_abs_det_jacobian(self, z, x):
        kind = self.box.kind
        _, width, is_log = self._logistic_box()
        bounded = torch.log(width) + F.logsigmoid(z) + F.logsigmoid(-z)
        pos = torch.where(is_log, x, torch.ones_like(x))
        bounded = bounded + torch.where(is_log, torch.log(pos), torch.zeros_like(z))
        return torch.where(kind == 0, z, torch.where(kind == 1, torch.zeros_like(z), bounded))


torch.distributions.constraint_registry.biject_to.register(_PriorBox)(lambda c: _PriorTransform(c))
torch.distributions.constraint_registry.transform_to.register(_PriorBox)(lambda c: _PriorTransform(c))


class TorchPrior(torch.distributions.Distribution):
    """A :class:`Prior` as a ``torch.distributions.Distribution`` (see :meth:`Prior.to_torch`).

    Parameters
    ----------
    prior : Prior
        The prior; its free parameters, in :attr:`Prior.names` order, are the
        event's components.

    Attributes
    ----------
    prior : Prior
        The wrapped prior.
    names : tuple of str
        Parameter names, the order of the event axis.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, prior: "Prior", validate_args: bool | None = False):
        if not isinstance(prior, Prior):
            raise ValueError(f"prior must be a jrinfer.Prior, got {type(prior).__name__}")
        dists = list(prior.distributions.values())
        unknown = sorted({type(d).__name__ for d in dists if d._kind not in _KIND_CODE})
        if unknown:
            raise ValueError(f"prior: no torch equivalent for distribution type(s) {unknown}")
        self.prior = prior
        self.names = prior.names
        self._kind = torch.tensor([_KIND_CODE[d._kind] for d in dists])
        low, high = prior.bounds()
        # draws: exp(loc + scale eps) (LogNormal), loc + scale eps (Normal), loc + scale u (Uniform),
        # exp(loc + scale u) (LogUniform)
        loc_scale = {"lognormal": lambda d: (d._mu, d.sd_log), "normal": lambda d: (d.mean, d.sd),
                     "uniform": lambda d: (d.low, d.high - d.low),
                     "loguniform": lambda d: (d._log_low, d._log_width)}
        ls = [loc_scale[d._kind](d) for d in dists]
        self._loc = torch.tensor([a for a, _ in ls], dtype=F64)
        self._scale = torch.tensor([b for _, b in ls], dtype=F64)
        self._support = torch.distributions.constraints.independent(_PriorBox(self._kind, low, high), 1)
        super().__init__(torch.Size(), torch.Size([len(dists)]), validate_args=validate_args)

    @property
    def support(self):
        return self._support

    @property
    def mean(self) -> torch.Tensor:
        return self.prior.mean()

    @property
    def stddev(self) -> torch.Tensor:
        return self.prior.std()

    @property
    def variance(self) -> torch.Tensor:
        return self.prior.std() ** 2

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """Draws of shape ``(*sample_shape, n_params)`` (float64) from torch's global RNG."""
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            eps = torch.randn(shape, dtype=F64)
            u = torch.rand(shape, dtype=F64)
            gauss = self._loc + self._scale * eps
            box = self._loc + self._scale * u
            return torch.where(
                self._kind == 0,
                torch.exp(gauss),
                torch.where(self._kind == 1, gauss, torch.where(self._kind == 3, torch.exp(box), box)),
            )

    def log_prob(self, value) -> torch.Tensor:
        """:meth:`Prior.log_prob`: shape ``value.shape[:-1]``, ``-inf`` outside the support."""
        return self.prior.log_prob(torch.as_tensor(value).to(F64))

    def __repr__(self) -> str:
        return f"TorchPrior({list(self.names)})"
