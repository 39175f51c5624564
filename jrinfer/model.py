"""The canonical Jansen-Rit neural mass model (SI-style units: s, mV, pulses/s).

States ``y0 .. y5``; the EEG proxy is ``v = y1 - y2`` (mV)::

    y0' = y3      y3' = A a S(y1 - y2)              - 2 a y3 - a^2 y0
    y1' = y4      y4' = A a (p(t) + C2 S(C1 y0))    - 2 a y4 - a^2 y1
    y2' = y5      y5' = B b C4 S(C3 y0)             - 2 b y5 - b^2 y2
    S(v) = 2 e0 / (1 + exp(r (v0 - v)))

References
----------
Jansen BH, Rit VG (1995). Electroencephalogram and visual evoked potential
generation in a mathematical model of coupled cortical columns. Biol Cybern
73:357-366.

Grimbert F, Faugeras O (2006). Bifurcation analysis of Jansen's neural mass
model. Neural Comput 18:3052-3068.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from jrinfer import _checks, _integrate, _rng
from jrinfer._integrate import PulseInput

__all__ = [
    "JansenRit",
    "FixedPoints",
    "LinearSpectrum",
    "Simulation",
    "SimulatedSpectrum",
    "PulseInput",
    "PARAMETERS",
    "EquilibriumCache",
    "REGIMES",
]

#: Dynamical regimes of Jansen-Rit parameter sets, in the code order of :meth:`JansenRit.regimes`.
REGIMES = ("stable", "limit_cycle", "lower_branch")


@dataclass(frozen=True)
class _ParameterInfo:
    default: float | None
    unit: str
    description: str
    constraint: str  # "positive", "nonnegative" or "real"


#: Named parameters of :class:`JansenRit` with defaults (Jansen & Rit 1995), units and constraints.
#: ``C1 .. C4`` default to ``C * (1, 0.8, 0.25, 0.25)``.
PARAMETERS: dict[str, _ParameterInfo] = {
    "A": _ParameterInfo(3.25, "mV", "maximum EPSP amplitude", "positive"),
    "B": _ParameterInfo(22.0, "mV", "maximum IPSP amplitude", "positive"),
    "a": _ParameterInfo(100.0, "1/s", "excitatory PSP rate constant (inverse time constant)", "positive"),
    "b": _ParameterInfo(50.0, "1/s", "inhibitory PSP rate constant (inverse time constant)", "positive"),
    "C": _ParameterInfo(135.0, "1", "average number of synaptic contacts", "positive"),
    "C1": _ParameterInfo(None, "1", "pyramidal -> excitatory interneuron contacts (default C)", "nonnegative"),
    "C2": _ParameterInfo(None, "1", "excitatory interneuron -> pyramidal contacts (default 0.8 C)", "nonnegative"),
    "C3": _ParameterInfo(None, "1", "pyramidal -> inhibitory interneuron contacts (default 0.25 C)", "nonnegative"),
    "C4": _ParameterInfo(None, "1", "inhibitory interneuron -> pyramidal contacts (default 0.25 C)", "nonnegative"),
    "e0": _ParameterInfo(2.5, "1/s", "half the maximum firing rate", "positive"),
    "v0": _ParameterInfo(6.0, "mV", "potential at half the maximum firing rate", "real"),
    "r": _ParameterInfo(0.56, "1/mV", "sigmoid slope", "positive"),
    "p_mean": _ParameterInfo(220.0, "pulses/s", "mean external input to the pyramidal population", "real"),
    "p_std": _ParameterInfo(
        22.0,
        "pulses/s/sqrt(Hz) (white) or pulses/s (jr1995_*)",
        "external input noise: white-noise intensity, or per-step standard deviation under the JR 1995 convention",
        "nonnegative",
    ),
}
_CONNECTIVITY_RATIOS = {"C1": 1.0, "C2": 0.8, "C3": 0.25, "C4": 0.25}
_NOISE_ON = ("input", "all")


class FixedPoints(NamedTuple):
    """Every equilibrium of a batch of JR parameter sets, sorted by ascending ``v``.

    Batches hold different numbers of equilibria (one or three for the JR
    constants, an odd number in general), so the last axis is padded to the
    largest count ``K`` in the batch; padded entries are NaN and ``valid`` is
    False there.

    Attributes
    ----------
    state : torch.Tensor
        Equilibrium states, shape ``(*batch, K, 6)`` (mV; derivatives are 0).
    v : torch.Tensor
        Output ``y1 - y2`` at each equilibrium in mV, shape ``(*batch, K)``.
    eigenvalues : torch.Tensor
        Complex eigenvalues of the Jacobian in 1/s, shape ``(*batch, K, 6)``,
        sorted by descending real part.
    stable : torch.Tensor
        Bool, shape ``(*batch, K)``: all eigenvalues have negative real part.
    dominant_frequency_hz : torch.Tensor
        ``|Im(lambda)| / 2 pi`` of the eigenvalue with the largest real part
        (the least damped mode), Hz, shape ``(*batch, K)``.
    valid : torch.Tensor
        Bool mask of real (not padded) entries, shape ``(*batch, K)``.
    count : torch.Tensor
        Number of equilibria per parameter set, int64, shape ``batch``.
    """

    state: torch.Tensor
    v: torch.Tensor
    eigenvalues: torch.Tensor
    stable: torch.Tensor
    dominant_frequency_hz: torch.Tensor
    valid: torch.Tensor
    count: torch.Tensor

    def upper(self) -> "FixedPoints":
        """The equilibrium with the largest ``v`` (the branch carrying the alpha resonance), ``K`` axis dropped."""
        return self._take((self.count - 1).clamp(min=0))

    def lower(self) -> "FixedPoints":
        """The equilibrium with the smallest ``v`` (the low-activity branch), ``K`` axis dropped."""
        return self._take(torch.zeros_like(self.count))

    def select(self, which: str) -> "FixedPoints":
        """``upper()`` or ``lower()`` by name."""
        _checks.check_option("equilibrium", which, ("upper", "lower"))
        return self.upper() if which == "upper" else self.lower()

    def _take(self, idx: torch.Tensor) -> "FixedPoints":
        def take(x: torch.Tensor) -> torch.Tensor:
            extra = x.dim() - idx.dim() - 1
            i = idx.reshape(idx.shape + (1,) * (1 + extra)).expand(idx.shape + (1,) + x.shape[idx.dim() + 1 :])
            return torch.gather(x, idx.dim(), i).squeeze(idx.dim())

        return FixedPoints(
            take(self.state),
            take(self.v),
            take(self.eigenvalues),
            take(self.stable),
            take(self.dominant_frequency_hz),
            take(self.valid),
            self.count,
        )

    def to_records(self, index: tuple[int, ...] = ()) -> list[dict]:
        """Plain-Python description of the equilibria of one parameter set.

        Parameters
        ----------
        index : tuple of int
            Batch index of the parameter set (``()`` for an unbatched model).

        Returns
        -------
        list of dict
            One dict per equilibrium with keys ``state`` (6 floats), ``v``,
            ``eigenvalues`` (``[re, im]`` pairs), ``stable`` and
            ``dominant_frequency_hz``, in ascending ``v``.
        """
        n = int(self.count[index])
        out = []
        for k in range(n):
            ev = self.eigenvalues[index + (k,)].detach()
            out.append(
                {
                    "state": [float(x) for x in self.state[index + (k,)].detach()],
                    "v": float(self.v[index + (k,)]),
                    "eigenvalues": [[float(z.real), float(z.imag)] for z in ev],
                    "stable": bool(self.stable[index + (k,)]),
                    "dominant_frequency_hz": float(self.dominant_frequency_hz[index + (k,)]),
                }
            )
        return out


class LinearSpectrum(NamedTuple):
    """Power spectral density of the model linearised at an equilibrium.

    Attributes
    ----------
    freqs : torch.Tensor
        Frequencies in Hz, shape ``(F,)``.
    psd : torch.Tensor
        One-sided PSD of ``v`` in mV^2/Hz, shape ``(*batch, F)``. Only
        meaningful where ``stable`` is True.
    stable : torch.Tensor
        Bool, shape ``batch``: the equilibrium is stable, so the linearised
        spectrum describes the noise-driven fluctuations. Where it is False the
        model oscillates (or leaves the equilibrium) and spectra must come from
        simulation.
    equilibrium : FixedPoints
        The equilibrium the spectrum was linearised at (``K`` axis dropped).
    """

    freqs: torch.Tensor
    psd: torch.Tensor
    stable: torch.Tensor
    equilibrium: FixedPoints


class SimulatedSpectrum(NamedTuple):
    """Welch PSD of simulated ``v`` from :meth:`JansenRit.simulated_psd`.

    Attributes
    ----------
    freqs : torch.Tensor
        Welch frequencies in Hz, ``(F,)``.
    psd : torch.Tensor
        One-sided PSD in mV^2/Hz, ``(*batch, F)``; differentiable (central
        differences with common random numbers, see the method).
    diverged : torch.Tensor
        Bool ``batch``: the nominal simulation produced non-finite values.
    n_segments : int
        Number of Welch segments averaged.
    """

    freqs: torch.Tensor
    psd: torch.Tensor
    diverged: torch.Tensor
    n_segments: int


@dataclass(frozen=True)
class Simulation:
    """Output of :meth:`JansenRit.simulate`.

    Attributes
    ----------
    time : torch.Tensor
        Sample times in s after the transient, shape ``(T,)``.
    v : torch.Tensor
        EEG proxy ``y1 - y2`` in mV, shape ``(*batch, T)``.
    final_state : torch.Tensor
        State after the last step, shape ``(*batch, 6)``.
    diverged : torch.Tensor
        Bool, shape ``batch``: the simulation produced non-finite values.
    dt : float
        Integration step in s.
    sampling_rate : float
        Rate of the recorded samples in Hz (``1 / (record_every * dt)``).
    method, noise, noise_on, backend : str
        Integrator, noise convention, noisy populations and implementation used.
    seed : int
        Seed of the noise (reported even if drawn from the OS).
    """

    time: torch.Tensor
    v: torch.Tensor
    final_state: torch.Tensor
    diverged: torch.Tensor
    dt: float
    sampling_rate: float
    method: str
    noise: str
    noise_on: str
    backend: str
    seed: int
    metadata: dict = field(default_factory=dict)


class JansenRit:
    """Jansen-Rit neural mass model, batched over parameter sets (torch, float64).

    Parameters
    ----------
    noise : {"white", "jr1995_gaussian", "jr1995_uniform"}
        How ``p_std`` is read. ``"white"`` (default): the external input is
        ``p(t) = p_mean + p_std xi(t)`` with ``xi`` unit Gaussian white noise
        (``<xi(t) xi(s)> = delta(t - s)``), an SDE whose statistics converge as
        ``dt -> 0``; ``p_std`` is in pulses/s/sqrt(Hz) and the input's
        one-sided PSD is ``2 p_std^2``. ``"jr1995_gaussian"`` and
        ``"jr1995_uniform"``: Jansen & Rit's convention, a value drawn every
        integration step (Gaussian, or uniform with the same standard
        deviation ``p_std`` in pulses/s) and held over the step. Its effect
        depends on ``dt``: it matches white noise of intensity
        ``p_std * sqrt(dt)`` at frequencies well below ``1/dt``. JR 1995's
        uniform input on 120-320 pulses/s is ``p_mean=220,
        p_std=100/sqrt(3)`` with ``noise="jr1995_uniform"``.
    noise_on : {"input", "all"}
        ``"input"`` (default): only the external input is noisy. ``"all"``:
        independent noise of the same intensity also enters the PSP blocks of
        ``y0`` and ``y2`` (added to their firing-rate inputs).
    **params : float or torch.Tensor
        Any of :data:`PARAMETERS` (``A, B, a, b, C, C1..C4, e0, v0, r, p_mean,
        p_std``). Tensors broadcast against each other; the result is the
        model's ``batch_shape``. Gradients flow to every tensor given.

    Examples
    --------
    >>> import torch
    >>> from jrinfer import JansenRit
    >>> model = JansenRit(p_mean=torch.tensor([60.0, 220.0]))
    >>> model.batch_shape
    torch.Size([2])
    >>> fp = model.fixed_points()
    >>> fp.upper().stable.tolist()
    [True, False]
    """

    def __init__(self, *, noise: str = "white", noise_on: str = "input", **params):
        _checks.check_option("noise", noise, _integrate.NOISE_CONVENTIONS)
        _checks.check_option("noise_on", noise_on, _NOISE_ON)
        unknown = [k for k in params if k not in PARAMETERS]
        if unknown:
            import difflib

            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, list(PARAMETERS), n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(
                f"unknown Jansen-Rit parameter(s) {', '.join(hints)}; known parameters: {', '.join(PARAMETERS)}"
            )
        values: dict[str, torch.Tensor] = {}
        given = []
        for name, info in PARAMETERS.items():
            if name in params and params[name] is not None:
                x = _checks.as_float_tensor(name, params[name])
                given.append((name, info, x))
            elif info.default is not None:
                x = torch.tensor(info.default, dtype=torch.float64)  # valid by construction
            else:
                continue
            values[name] = x
        if given and not _all_valid(given):
            for name, info, x in given:  # find the offending parameter for the message
                if info.constraint == "positive":
                    _checks.check_positive(name, x)
                elif info.constraint == "nonnegative":
                    _checks.check_positive(name, x, allow_zero=True)
                else:
                    _checks.check_finite(name, x)
        for name, ratio in _CONNECTIVITY_RATIOS.items():
            if name not in values:
                values[name] = ratio * values["C"]
        try:
            shape = torch.broadcast_shapes(*(v.shape for v in values.values()))
        except RuntimeError:
            shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in values.items() if v.dim() > 0)
            raise ValueError(
                f"parameter batch shapes do not broadcast against each other ({shapes}); "
                "give tensors whose shapes broadcast (e.g. (n,), (1,) or scalars)"
            ) from None
        self._params = {k: torch.broadcast_to(v, shape) for k, v in values.items()}
        self._batch_shape = torch.Size(shape)
        self.noise = noise
        self.noise_on = noise_on

    # ------------------------------------------------------------------ basics
    @property
    def batch_shape(self) -> torch.Size:
        """Shape of the batch of parameter sets."""
        return self._batch_shape

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """All parameters (``C1..C4`` resolved), each broadcast to ``batch_shape``."""
        return dict(self._params)

    def replace(self, **params) -> "JansenRit":
        """A new model with some parameters replaced (same noise settings).

        ``C1..C4`` that were derived from ``C`` are derived again from a new ``C``.
        """
        current = {k: v for k, v in self._params.items()}
        if "C" in params:
            for name in _CONNECTIVITY_RATIOS:
                if name not in params and torch.equal(current[name], _CONNECTIVITY_RATIOS[name] * current["C"]):
                    current.pop(name)
        current.update(params)
        return JansenRit(noise=self.noise, noise_on=self.noise_on, **current)

    def __repr__(self) -> str:
        def fmt(x: torch.Tensor) -> str:
            return f"{x.reshape(-1)[0].item():g}" if x.numel() and bool((x == x.reshape(-1)[0]).all()) else "[...]"

        body = ", ".join(f"{k}={fmt(v)}" for k, v in self._params.items())
        return f"JansenRit(batch_shape={tuple(self._batch_shape)}, noise={self.noise!r}, noise_on={self.noise_on!r}, {body})"

    def sigmoid(self, v: torch.Tensor) -> torch.Tensor:
        """Firing rate ``S(v) = 2 e0 / (1 + exp(r (v0 - v)))`` in pulses/s (overflow-free)."""
        p = self._params
        return _integrate.sigmoid(v, p["e0"], p["v0"], p["r"])

    def sigmoid_derivative(self, v: torch.Tensor) -> torch.Tensor:
        """``dS/dv = r S(v) (1 - S(v) / (2 e0))`` in pulses/s/mV."""
        p = self._params
        return _sigmoid_slope(v, p["e0"], p["v0"], p["r"])

    def drift(self, state: torch.Tensor, p_input: torch.Tensor | None = None) -> torch.Tensor:
        """Time derivative of the state.

        Parameters
        ----------
        state : torch.Tensor
            Shape ``(*batch, 6)`` (mV, mV/s).
        p_input : torch.Tensor, optional
            External input in pulses/s broadcastable to ``batch``; default ``p_mean``.

        Returns
        -------
        torch.Tensor
            ``dy/dt``, shape ``(*batch, 6)``.
        """
        state = _checks.as_float_tensor("state", state)
        if state.shape[-1:] != (6,):
            raise ValueError(f"state must have a last axis of length 6, got shape {tuple(state.shape)}")
        c = _integrate.coefficients(self._params)
        u1 = self._params["p_mean"] if p_input is None else _checks.as_float_tensor("p_input", p_input)
        f = _integrate.drift(state.unbind(-1), (None, c["Aa"] * u1, None), c)
        return torch.stack(torch.broadcast_tensors(*f), dim=-1)

    def jacobian(self, state: torch.Tensor) -> torch.Tensor:
        """Jacobian of the drift, shape ``(*batch, 6, 6)`` in 1/s (analytic)."""
        state = _checks.as_float_tensor("state", state)
        return _jacobian(self._params, state)

    # -------------------------------------------------------------- equilibria
    def regimes(self) -> torch.Tensor:
        """Dynamical regime of every parameter set, from its fixed points.

        Returns
        -------
        torch.Tensor
            int64 codes, shape ``batch``, indexing :data:`REGIMES`: 0 ``stable``
            (the upper equilibrium is stable: a noise-driven, damped resonance),
            1 ``limit_cycle`` (no stable equilibrium: the model oscillates), 2
            ``lower_branch`` (upper equilibrium unstable, lower one stable: the
            low-activity branch, which coexists with the limit cycle between the
            first Hopf point and the fold, p = 89.83-113.59 pulses/s with the JR
            1995 constants; Grimbert & Faugeras 2006).
        """
        with torch.no_grad():
            fp = self.fixed_points()
            upper, lower = fp.upper(), fp.lower()
            lower_stable = lower.stable & (fp.count > 1)
            code = torch.where(upper.stable, 0, torch.where(lower_stable, 2, 1))
        return code.to(torch.int64)

    def fixed_points(self, *, grid_size: int = 256, initial_guess=None) -> FixedPoints:
        """All equilibria of every parameter set, with stability.

        Equilibria satisfy ``y3 = y4 = y5 = 0`` and reduce to one scalar
        equation in ``y0``, whose roots all lie in ``(0, 2 e0 A / a)``. The
        roots are bracketed on a grid (with a check of every local extremum
        between grid points, so that close pairs near a fold are not missed)
        and refined by bisection to machine precision. Gradients with respect
        to the parameters follow from the implicit function theorem (one
        differentiable Newton step at the converged root).

        Parameters
        ----------
        grid_size : int
            Number of grid points used to bracket the roots (>= 16).
        initial_guess : torch.Tensor or FixedPoints, optional
            A warm start: an equilibrium state of shape ``(*batch, 6)`` (e.g.
            the upper equilibrium found at nearby parameters in a previous
            call). The root bracketed together with ``initial_guess[..., 0]``
            is refined by Newton from there instead of from the middle of its
            bracket; every root is still bracketed, so the result is the same
            (to rounding) whatever the guess. Only saves iterations.

        Returns
        -------
        FixedPoints
        """
        if not isinstance(grid_size, int) or grid_size < 16:
            raise ValueError(f"grid_size must be an int >= 16, got {grid_size!r}")
        guess = _initial_y0(initial_guess, self._batch_shape, max(1, math.prod(self._batch_shape)))
        return _fixed_points(self._params, self._batch_shape, grid_size, initial_guess=guess)

    def linearisation_valid(self, equilibrium: str = "upper") -> torch.Tensor:
        """Bool tensor of shape ``batch``: is the chosen equilibrium stable?

        Where it is, the linearised (transfer-function) spectrum is valid.
        Where the upper equilibrium is unstable the model oscillates on a
        limit cycle around it (e.g. ``p_mean`` between the Hopf points 89.83
        and 315.70 with the JR 1995 constants) or, for some constants, falls
        to the low-activity equilibrium (``equilibrium="lower"``); spectra of
        those regimes must come from simulation or the other equilibrium.
        """
        return self._equilibrium(equilibrium).stable

    def _equilibrium(self, which: str) -> FixedPoints:
        """``fixed_points().select(which)`` without the other equilibria's eigenvalues."""
        _checks.check_option("equilibrium", which, ("upper", "lower"))
        return _fixed_points(self._params, self._batch_shape, 256, which=which)

    # ------------------------------------------------------ linearised spectra
    def transfer_function(self, freqs, equilibrium: FixedPoints | str = "upper") -> torch.Tensor:
        """Transfer functions from the three noise inputs to ``v`` at an equilibrium.

        With ``h_e(s) = A a / (s + a)^2``, ``h_i(s) = B b / (s + b)^2`` and the
        sigmoid slopes ``g0 = S'(v*)``, ``g1 = S'(C1 y0*)``, ``g2 = S'(C3 y0*)``
        at the equilibrium, ``K = C1 C2 g1 h_e - C3 C4 g2 h_i`` and
        ``D = 1 - g0 h_e K``::

            H_input = h_e / D,   H_y0 = K h_e / D,   H_y2 = -h_i / D

        for inputs (pulses/s) added to the external input, to the firing rate
        entering the ``y0`` block and to the one entering the ``y2`` block.

        Parameters
        ----------
        freqs : array_like
            Frequencies in Hz, shape ``(F,)``.
        equilibrium : {"upper", "lower"} or FixedPoints
            Which equilibrium to linearise at, or one already selected with
            ``fixed_points().upper()`` (or ``.lower()``).

        Returns
        -------
        torch.Tensor
            Complex128, shape ``(*batch, F, 3)`` in mV per pulse/s, channels
            ordered ``(y0 block, external input, y2 block)``.
        """
        f = _check_freqs(freqs)
        eq = self._equilibrium(equilibrium) if isinstance(equilibrium, str) else equilibrium
        p = self._params
        y0 = eq.state[..., 0]
        g0 = self.sigmoid_derivative(eq.v)
        g1 = _sigmoid_slope(p["C1"] * y0, p["e0"], p["v0"], p["r"])
        g2 = _sigmoid_slope(p["C3"] * y0, p["e0"], p["v0"], p["r"])
        s = (2j * math.pi) * f.to(torch.complex128)
        ex = lambda x: x.unsqueeze(-1)  # noqa: E731  (batch -> batch x freq)
        h_e = ex(p["A"] * p["a"]) / (s + ex(p["a"])) ** 2
        h_i = ex(p["B"] * p["b"]) / (s + ex(p["b"])) ** 2
        k = ex(p["C1"] * p["C2"] * g1) * h_e - ex(p["C3"] * p["C4"] * g2) * h_i
        d = 1.0 - ex(g0) * h_e * k
        return torch.stack([k * h_e / d, h_e / d, -h_i / d], dim=-1)

    def linear_psd(
        self, freqs, *, dt: float | None = None, equilibrium: str = "upper", initial_guess=None, warm_start=None
    ) -> LinearSpectrum:
        """One-sided PSD of ``v`` (mV^2/Hz) of the model linearised at an equilibrium.

        For white input noise of intensity ``sigma = p_std`` (two-sided PSD
        ``sigma^2``) on each noisy channel ``c``::

            PSD_v(f) = 2 sigma^2 sum_c |H_c(2 pi i f)|^2

        This is exact for infinitesimal noise at a stable equilibrium. With
        finite noise it holds while the fluctuations of ``v`` stay well inside
        the sigmoid's linear range (``std(v) << 1/r``); the first sign of
        breakdown is a harmonic at twice the resonance frequency (quadratic
        terms), then escape to another attractor. Below the first Hopf point
        the upper equilibrium is very lightly damped (decay rate ~0.4/s at
        ``p_mean = 60``), so small inputs already give large fluctuations.

        Parameters
        ----------
        freqs : array_like
            Frequencies in Hz, shape ``(F,)``, finite and >= 0.
        dt : float, optional
            Integration step in s; required for the ``jr1995_*`` noise
            conventions, whose equivalent white-noise intensity is
            ``p_std * sqrt(dt)`` (valid for ``f << 1/dt``).
        equilibrium : {"upper", "lower"}
            The equilibrium to linearise at: the upper branch (default; it
            carries the damped alpha resonance below the first Hopf point) or
            the low-activity one.
        initial_guess : torch.Tensor or FixedPoints, optional
            Warm start for the equilibrium search, shape ``(*batch, 6)`` (see
            :meth:`fixed_points`); the result does not depend on it.
        warm_start : EquilibriumCache, optional
            A caller-owned cache: its stored state is the initial guess (when
            its shape matches and ``initial_guess`` is not given) and the
            equilibrium found here is stored in it.

        Returns
        -------
        LinearSpectrum
            ``psd`` of shape ``(*batch, F)`` plus the stability flag that says
            where it is valid. The PSD is differentiable with respect to every
            parameter (closed-form derivatives of the transfer function, and
            through the equilibrium by the implicit function theorem); the
            returned ``equilibrium`` is not (detached; use
            :meth:`fixed_points` for differentiable equilibria).
        """
        f = _check_freqs(freqs)
        intensity = self._noise_intensity(dt)
        _checks.check_option("equilibrium", equilibrium, ("upper", "lower"))
        shape = self._batch_shape
        nb = max(1, math.prod(shape))
        if initial_guess is None and warm_start is not None:
            if not isinstance(warm_start, EquilibriumCache):
                raise TypeError(f"warm_start must be an EquilibriumCache, got {type(warm_start).__name__}")
            initial_guess = warm_start.guess(shape)
        guess = _initial_y0(initial_guess, shape, nb)
        names = tuple(self._params)
        eq = FixedPoints(*_EquilibriumValues.apply(equilibrium, shape, names, guess, *self._params.values()))
        if warm_start is not None:
            warm_start.state = eq.state
        p = self._params
        flat = [p[k].reshape(nb, 1) for k in ("A", "B", "a", "b", "C1", "C2", "C3", "C4", "e0", "v0", "r", "p_mean")]
        y0 = eq.state[..., 0].reshape(nb, 1)
        gain = _LinearGain.apply(y0, *flat, (2.0 * math.pi) * f, self.noise_on == "all")
        psd = 2.0 * intensity.unsqueeze(-1) * gain.reshape(tuple(shape) + (f.shape[0],))
        return LinearSpectrum(f, psd, eq.stable, eq)

    def _noise_intensity(self, dt: float | None) -> torch.Tensor:
        """Two-sided white-noise intensity ``sigma^2`` of the input noise, shape ``batch``."""
        p_std = self._params["p_std"]
        if self.noise == "white":
            if dt is not None:
                _checks.check_scalar("dt", dt, positive=True)
            return p_std**2
        if dt is None:
            raise ValueError(
                f"dt is required for noise={self.noise!r}: the per-step convention's spectrum depends on the "
                "step (equivalent white-noise intensity p_std*sqrt(dt))"
            )
        return p_std**2 * _checks.check_scalar("dt", dt, positive=True)

    def attach_gradient(self, equilibrium: FixedPoints) -> FixedPoints:
        """The same equilibrium with its state and ``v`` differentiable in the parameters.

        :meth:`linear_psd` returns a detached equilibrium; one Newton step on the
        scalar equilibrium equation ``G(y0; theta) = 0`` from that root leaves its
        value unchanged (to round-off) and carries the implicit-function-theorem
        gradient ``dy0/dtheta = -(dG/dtheta) / (dG/dy0)``. Only ``state[..., 0]``
        and ``v`` are made differentiable (what the transfer function and
        :meth:`dominant_mode` use); eigenvalues stay detached.
        """
        p = self._params
        y0 = equilibrium.state[..., 0].detach()
        g, v = _equilibrium_residual(y0, p)
        slope = _equilibrium_residual_slope(y0, v.detach(), p).detach()
        y0 = y0 - g / slope
        _, v = _equilibrium_residual(y0, p)
        state = torch.cat([y0.unsqueeze(-1), equilibrium.state[..., 1:].detach()], -1)
        return equilibrium._replace(state=state, v=v)

    def dominant_mode(
        self, equilibrium: FixedPoints | str = "upper", *, dt: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Least-damped oscillatory pole of the linearised spectrum and its residue.

        The linearised transfer functions are ``H_c = N_c / Q`` with the
        characteristic polynomial (roots: the Jacobian's eigenvalues)::

            Q(s) = (s + a)^4 (s + b)^2 - g0 A a [C1 C2 g1 A a (s + b)^2 - C3 C4 g2 B b (s + a)^2]

        For white noise of intensity ``sigma^2`` the autocovariance of ``v`` is
        ``R(tau) = sum_k c_k exp(lambda_k |tau|)`` with
        ``c_k = sigma^2 sum_c N_c(lambda_k) N_c(-lambda_k) / (Q'(lambda_k) Q(-lambda_k))``
        (residues of ``sigma^2 H(s) H(-s)``). This returns the pole
        ``lambda`` (``Im > 0``) with the largest real part among the complex
        eigenvalues and its ``c``, so that the pole pair contributes
        ``R(tau) = 2 Re(c exp(lambda |tau|))`` and the one-sided PSD
        :func:`jrinfer.spectral.pole_psd` ``(f, lambda, c)``. Below the first
        Hopf point this is the alpha resonance, whose peak can be far narrower
        than a frequency bin; the rest of the spectrum is smooth.

        The eigenvalue is refined by one Newton step on ``Q`` from its detached
        value, so its gradient is the implicit-function derivative (no
        gradients through the eigen-solver are needed).

        Parameters
        ----------
        equilibrium : {"upper", "lower"} or FixedPoints
            As in :meth:`transfer_function`.
        dt : float, optional
            As in :meth:`linear_psd` (required for the ``jr1995_*`` noise).

        Returns
        -------
        pole : torch.Tensor
            Complex128, shape ``batch``, 1/s. ``-1`` where the equilibrium has
            no complex eigenvalue.
        residue : torch.Tensor
            Complex128, shape ``batch``, mV^2 (0 where there is no complex
            eigenvalue).
        """
        intensity = self._noise_intensity(dt)
        eq = self._equilibrium(equilibrium) if isinstance(equilibrium, str) else equilibrium
        p = self._params
        ev = eq.eigenvalues.detach()
        osc = (ev.imag > 1e-9 * ev.abs()) & torch.isfinite(ev.real)
        score = torch.where(osc, ev.real, torch.full_like(ev.real, -math.inf))
        lam0 = torch.gather(ev, -1, score.argmax(-1, keepdim=True)).squeeze(-1)
        has = osc.any(-1)
        lam0 = torch.where(has, lam0, torch.full_like(lam0, -1.0))
        y0 = eq.state[..., 0]
        g0 = self.sigmoid_derivative(eq.v)
        g1 = _sigmoid_slope(p["C1"] * y0, p["e0"], p["v0"], p["r"])
        g2 = _sigmoid_slope(p["C3"] * y0, p["e0"], p["v0"], p["r"])
        a, b, aa, bb = p["a"], p["b"], p["A"] * p["a"], p["B"] * p["b"]
        ke, ki = p["C1"] * p["C2"] * g1 * aa, p["C3"] * p["C4"] * g2 * bb

        def q(s):
            return (s + a) ** 4 * (s + b) ** 2 - g0 * aa * (ke * (s + b) ** 2 - ki * (s + a) ** 2)

        def dq(s):
            return 4 * (s + a) ** 3 * (s + b) ** 2 + 2 * (s + a) ** 4 * (s + b) - 2 * g0 * aa * (ke * (s + b) - ki * (s + a))

        lam = lam0 - q(lam0) / dq(lam0)
        numerators = [lambda s: aa * (s + a) ** 2 * (s + b) ** 2]  # external input
        if self.noise_on == "all":
            numerators += [lambda s: aa * (ke * (s + b) ** 2 - ki * (s + a) ** 2), lambda s: -bb * (s + a) ** 4]
        num = sum(n(lam) * n(-lam) for n in numerators)
        residue = intensity * num / (dq(lam) * q(-lam))
        residue = torch.where(has, residue, torch.zeros_like(residue))
        return lam, residue

    def _p_mean_search(self, caller: str, p_range, grid_size):
        """Checked ``(lo, hi)``, the constants other than p_mean (torch and float) and the upper branch's
        largest real part as a function of p_mean: what both searches along p_mean start from."""
        if self._batch_shape.numel() != 1 or len(self._batch_shape) > 0:
            raise ValueError(f"{caller} needs an unbatched model, got batch_shape {tuple(self._batch_shape)}")
        lo, hi = (float(x) for x in p_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"p_range must be a finite (low, high) with low < high, got {p_range!r}")
        if not isinstance(grid_size, int) or grid_size < 4:
            raise ValueError(f"grid_size must be an int >= 4, got {grid_size!r}")
        base = {k: v.detach() for k, v in self._params.items() if k != "p_mean"}
        base_np = {k: float(v) for k, v in base.items()}
        return lo, hi, base, base_np, self._upper_sigma(base, base_np)

    def hopf_p_mean(self, p_range=(0.0, 1000.0), *, grid_size: int = 32, guess: float | None = None) -> torch.Tensor:
        """First Hopf point of the upper equilibrium branch in ``p_mean``, the other parameters held.

        ``p_H`` is the smallest ``p_mean`` in ``p_range`` at which the upper
        equilibrium loses stability (the least-damped complex pair crosses the
        imaginary axis, ``sigma(p_H) = Re lambda = 0``): below it the
        linearised spectrum exists, above it the model oscillates (89.83
        pulses/s with the JR 1995 constants; Grimbert & Faugeras 2006). The
        root is bracketed on a ``grid_size`` grid of ``p_range`` (or near
        ``guess``, a previous ``p_H`` for nearby parameters) and refined by
        Newton on ``sigma`` to ~1e-12 relative.

        The result is differentiable in every other parameter (the model's
        own ``p_mean`` is ignored): one Newton step ``p_H = p* - sigma(p*) /
        (d sigma / dp)`` from the detached root carries the implicit-function
        derivative ``d p_H / d theta = -(d sigma / d theta) / (d sigma / dp)``,
        ``sigma`` through :meth:`dominant_mode` (itself implicit-function
        derivatives of the eigenvalue and the equilibrium).

        Parameters
        ----------
        p_range : (float, float)
            Search interval ``(low, high)`` of ``p_mean``.
        grid_size : int
            Grid points for bracketing (>= 4).
        guess : float, optional
            Warm start; the result does not depend on it (falls back to the grid).

        Returns
        -------
        torch.Tensor
            Scalar float64 ``p_H``; ``+inf`` where the upper equilibrium is
            stable on the whole ``p_range`` (no Hopf point there), ``-inf``
            where it is already unstable at ``p_range[0]``. Infinite values
            carry no gradient. Unbatched models only.
        """
        lo, hi, base, base_np, sigma = self._p_mean_search("hopf_p_mean", p_range, grid_size)
        bracket = None
        if guess is not None and math.isfinite(guess) and lo < guess < hi:
            h = 1e-3 * max(abs(guess), 1.0)
            pts = np.clip(np.array([guess - h, guess + h]), lo, hi)
            s = sigma(pts)
            if s[0] < 0 <= s[1]:
                bracket = (pts[0], pts[1], s[0], s[1])
        if bracket is None:
            grid = np.linspace(lo, hi, grid_size)
            s = sigma(grid)
            if not s[0] < 0:
                return torch.tensor(-math.inf, dtype=torch.float64)
            up = np.nonzero(s >= 0)[0]
            if up.size == 0:
                return torch.tensor(math.inf, dtype=torch.float64)
            bracket = _fine_bracket(sigma, grid[int(up[0]) - 1], grid[int(up[0])], grid_size)
        return self._differentiable_crossing(_refine_crossing(sigma, *bracket), base_np)

    def stable_p_mean_interval(self, p_range, *, grid_size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
        """The lowest interval of ``p_mean`` in ``p_range`` on which the upper equilibrium is stable.

        ``(p_L, p_H)``: the upper branch is stable for ``p_L < p_mean < p_H``
        and unstable (or switches branch at a fold) just outside. Under the
        transfer method the linearised spectrum exists only there. At the JR
        1995 constants ``p_L`` is below any positive ``p_mean`` and ``p_H``
        is the first Hopf point (:meth:`hopf_p_mean`); for other gains and
        time constants the branch is also unstable at low ``p_mean``
        (``p_L`` a second Hopf point), and near the tip of the stable region
        the interval closes. Deterministic: the stability of the branch is
        evaluated on a ``grid_size`` grid of ``p_range`` (no warm start; an
        interval narrower than one grid step can be missed), each end
        bracketed on a finer grid and refined by a safeguarded secant to
        ~1e-8 relative, then one differentiable Newton step (the
        implicit-function gradient in every other parameter, as in
        :meth:`hopf_p_mean`).

        Parameters
        ----------
        p_range : (float, float)
            Search interval ``(low, high)`` of ``p_mean``, pulses/s.
        grid_size : int
            Grid points for bracketing (>= 4).

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            Scalar float64 ``p_L`` and ``p_H``, pulses/s. ``p_L = -inf`` when
            the branch is stable at ``p_range[0]``; ``p_H = +inf`` when it
            stays stable up to ``p_range[1]``; ``(+inf, -inf)`` (an empty
            interval) when it is unstable on the whole grid. Infinite ends
            carry no gradient. Unbatched models only.
        """
        lo, hi, base, base_np, sigma = self._p_mean_search("stable_p_mean_interval", p_range, grid_size)
        grid = np.linspace(lo, hi, grid_size)
        s = sigma(grid)
        stable = np.nonzero(s < 0)[0]
        inf = torch.tensor(math.inf, dtype=torch.float64)
        if stable.size == 0:
            return inf, -inf
        k = int(stable[0])
        roots, fine = [], min(grid_size, 16)
        if k > 0:
            roots.append(_refine_crossing(sigma, *_fine_bracket(sigma, grid[k], grid[k - 1], fine)))
        unstable = np.nonzero(s[k:] >= 0)[0]
        if unstable.size:
            j = k + int(unstable[0])
            roots.append(_refine_crossing(sigma, *_fine_bracket(sigma, grid[j - 1], grid[j], fine)))
        ends = self._differentiable_crossing(np.array(roots), base_np) if roots else None
        p_lo = ends[0] if k > 0 else -inf
        p_hi = ends[-1] if unstable.size else inf
        return p_lo, p_hi

    def _upper_sigma(self, base: dict, base_np: dict):
        """``sigma(p)``: the largest real part of the upper equilibrium's eigenvalues at ``p_mean = p`` (NumPy).

        A vector ``p`` is evaluated in one batch (grid bracketing); a single
        point is continued along the upper branch from the nearest point of
        the previous call (Newton on the equilibrium), falling back to the
        full search.
        """
        last = {}

        def sigma(p: np.ndarray) -> np.ndarray:
            n = p.shape[0]
            if n == 1 and "y0" in last:  # continuation along the upper branch from the nearest point evaluated
                k = int(np.argmin(np.abs(last["p"] - p[0])))
                s1 = _upper_sigma_continued(base_np, float(p[0]), float(last["y0"][k]))
                if s1 is not None:
                    return np.array([s1])
            pd = {k: np.full(n, v) for k, v in base_np.items()}
            pd["p_mean"] = np.ascontiguousarray(p, dtype=np.float64)
            eq = _selected_equilibrium_numpy(pd, torch.Size((n,)), 256, "upper", None)
            if eq is None:  # a fold candidate: the full (torch) search
                m = JansenRit(noise=self.noise, noise_on=self.noise_on, **base, p_mean=torch.from_numpy(pd["p_mean"]))
                eq = m._equilibrium("upper")
            last["p"], last["y0"] = pd["p_mean"].copy(), eq.state.reshape(-1, 6)[:, 0].numpy().copy()
            return eq.eigenvalues.real.max(-1).values.numpy()

        return sigma

    def _differentiable_crossing(self, p, base_np: dict) -> torch.Tensor:
        """One Newton step on ``sigma`` from the root(s) ``p``: the value(s), with the implicit-function gradient.

        ``p`` a float (scalar result) or a 1-D array of roots for the same
        other parameters (one batched evaluation; result of the same shape).
        """
        params = {k: v for k, v in self._params.items() if k != "p_mean"}
        pn = np.atleast_1d(np.asarray(p, dtype=np.float64))
        p_leaf = torch.tensor(pn if np.ndim(p) else float(p), dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            m = JansenRit(noise=self.noise, noise_on=self.noise_on, **params, p_mean=p_leaf)
            pd = {k: np.full(pn.size, v) for k, v in base_np.items()}
            pd["p_mean"] = pn.copy()
            eq = _selected_equilibrium_numpy(pd, p_leaf.shape, 256, "upper", None)
            eq = m.attach_gradient(eq if eq is not None else m._equilibrium("upper"))
            s = m.dominant_mode(eq)[0].real
            (slope,) = torch.autograd.grad(s.sum(), p_leaf, retain_graph=True)  # elementwise: the roots are independent
        return p_leaf.detach() - s / slope.detach()

    # -------------------------------------------------------------- simulation
    def simulate(
        self,
        duration: float,
        dt: float,
        *,
        method: str = "auto",
        seed: int | None = None,
        record_every: int = 1,
        transient: float = 0.0,
        initial_state: str | torch.Tensor = "rest",
        pulse: PulseInput | None = None,
        backend: str = "auto",
    ) -> Simulation:
        """Integrate the model and record ``v = y1 - y2``.

        Only ``v`` is stored (every ``record_every`` steps), never the full
        state history, so long simulations of large batches fit in memory.

        Parameters
        ----------
        duration : float
            Recorded time in s (after the transient).
        dt : float
            Integration step in s. Must satisfy ``max(a, b) dt < 1`` (explicit
            schemes become unstable near ``2``); a warning is given above 0.1
            (0.3 for RK4), where results become inaccurate. 0.1 ms is a good
            default for noisy runs.
        method : {"auto", "euler", "heun", "rk4"}
            ``"auto"`` picks RK4 when the model has no noise (``p_std = 0``)
            and stochastic Heun otherwise (both order 2 here; the noise is
            additive). ``"rk4"`` with white noise is rejected (use Heun);
            with the ``jr1995_*`` conventions RK4 holds the drawn input over
            the step, as Jansen & Rit did.
        seed : int, optional
            Seed of the noise. The noise is a pure function of (seed, parameter
            set, step), so results do not depend on the backend, the batch
            composition or the number of threads. ``None`` draws a seed from
            the OS; it is reported as ``Simulation.seed``.
        record_every : int
            Store ``v`` every this many steps (decimation; sampling rate
            ``1 / (record_every dt)``).
        transient : float
            Time in s simulated and discarded before recording.
        initial_state : {"rest", "equilibrium"} or torch.Tensor
            ``"rest"``: all states zero (JR 1995). ``"equilibrium"``: the
            upper equilibrium. Or a tensor of shape ``(*batch, 6)``.
        pulse : PulseInput, optional
            Transient input added to the external input (evoked responses).
        backend : {"auto", "torch", "native", "sensitivity"}
            ``"torch"`` is differentiable (autograd through the time loop);
            ``"native"`` is a compiled kernel (no gradients, about 10x faster
            than NumPy). ``"sensitivity"`` (deterministic RK4 only) runs the
            compiled kernel with forward sensitivity equations integrated
            beside the state, so ``v`` is differentiable (reverse and forward
            mode, ``torch.func`` included) with respect to every parameter,
            the pulse and ``initial_state`` at the cost of about 22 extra
            state columns instead of a graph over thousands of steps; its
            ``final_state`` is not differentiable. It keeps the sensitivities of
            every recorded sample (``N x n_rec x 22`` float64 numbers, e.g.
            1 MB for one 600-sample ERP). ``"auto"`` uses the native
            kernel when no gradient is needed, the sensitivity kernel when a
            gradient of a deterministic RK4 run is needed, and torch otherwise
            (or when the kernel is unavailable).

        Returns
        -------
        Simulation
        """
        duration = _checks.check_scalar("duration", duration, positive=True)
        dt = _checks.check_scalar("dt", dt, positive=True)
        transient = _checks.check_scalar("transient", transient, positive=True, allow_zero=True)
        _checks.check_option("method", method, ("auto",) + _integrate.METHODS)
        _checks.check_option("backend", backend, ("auto", "torch", "native", "sensitivity"))
        if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
            raise ValueError(f"record_every must be an int >= 1, got {record_every!r}")
        p = self._params
        rate = float(torch.maximum(p["a"], p["b"]).detach().max())
        if rate * dt >= 1.0:
            raise ValueError(
                f"dt={dt:g} s is too large for stable integration: need max(a, b) * dt < 1, i.e. dt < {1 / rate:.3g} s "
                f"here (max rate constant {rate:g} 1/s); dt = 1e-4 s is accurate"
            )
        n_steps = int(round(duration / dt))
        n_transient = int(round(transient / dt))
        if n_steps < record_every:
            raise ValueError(
                f"duration={duration:g} s with dt={dt:g} s and record_every={record_every} records no sample; "
                "increase duration"
            )
        noisy = bool((p["p_std"] != 0).any())
        if method == "auto":
            method = "heun" if noisy else "rk4"
        # accuracy (not stability): RK4's local error is ~(a dt)^5, Euler/Heun's far larger
        coarse = 0.3 if method == "rk4" else 0.1
        if rate * dt > coarse:
            warnings.warn(
                f"dt={dt:g} s is coarse for {method} with rate constants up to {rate:g} 1/s "
                f"(max(a, b) * dt = {rate * dt:.2f} > {coarse}); results may be inaccurate",
                stacklevel=2,
            )
        if method == "rk4" and noisy and self.noise == "white":
            raise ValueError(
                "method='rk4' is for deterministic runs (p_std=0) or the jr1995_* noise conventions; "
                "use method='heun' or 'euler' for white noise"
            )
        seed = _rng.seed_to_int(seed)
        if pulse is not None and not isinstance(pulse, PulseInput):
            raise ValueError(f"pulse must be a PulseInput or None, got {type(pulse).__name__}")

        shape = self._batch_shape
        n_nodes = max(1, math.prod(shape))
        flat = {k: v.reshape(-1) if v.dim() else v.reshape(1) for k, v in p.items()}
        y_init = self._initial_state(initial_state).reshape(n_nodes, 6)
        flat_pulse = None
        if pulse is not None:
            fields = {}
            for name in ("q", "w", "n", "onset"):
                x = _checks.as_float_tensor(f"pulse.{name}", getattr(pulse, name))
                _checks.check_finite(f"pulse.{name}", x)
                try:
                    fields[name] = torch.broadcast_to(x, shape).reshape(n_nodes)
                except RuntimeError:
                    raise ValueError(
                        f"pulse.{name} of shape {tuple(x.shape)} does not broadcast to the batch shape {tuple(shape)}"
                    ) from None
            _checks.check_positive("pulse.w", fields["w"])
            flat_pulse = PulseInput(**fields)

        needs_grad = torch.is_grad_enabled() and (
            any(v.requires_grad for v in flat.values())
            or y_init.requires_grad
            or (flat_pulse is not None and any(getattr(flat_pulse, k).requires_grad for k in ("q", "w", "n", "onset")))
        )
        deterministic_rk4 = method == "rk4" and not noisy
        if backend == "auto":
            if not needs_grad:
                backend = "native" if _native_available() else "torch"
            else:
                backend = "sensitivity" if deterministic_rk4 and _native_available() else "torch"
        elif backend in ("native", "sensitivity") and not _native_available():
            from jrinfer import _native

            raise RuntimeError(f"backend={backend!r} is not available here: {_native.unavailable_reason()}")
        if backend == "sensitivity" and not deterministic_rk4:
            raise ValueError("backend='sensitivity' is for deterministic runs (p_std=0) with method='rk4'")
        channels = _integrate._ALL if self.noise_on == "all" else _integrate._INPUT_ONLY
        kwargs = dict(
            n_transient=n_transient,
            n_steps=n_steps,
            dt=dt,
            record_every=record_every,
            method=method,
            noise=self.noise,
            channels=channels,
            seed=seed,
            pulse=flat_pulse,
        )
        if backend == "native":
            from jrinfer import _native

            v, y_final = _native.simulate_flat_native(flat, y_init, **kwargs)
        elif backend == "sensitivity":
            fp = flat_pulse
            one = torch.ones(n_nodes, dtype=torch.float64)
            pulse_args = (fp.q, fp.w, fp.n, fp.onset) if fp is not None else (0 * one, one, one, 0 * one)
            cfg = (fp is not None, n_transient, n_steps, dt, record_every)
            flat_b = [torch.broadcast_to(flat[k], (n_nodes,)) for k in _JR_FLAT]
            v, _, y_final = _RK4Sensitivity.apply(y_init, *flat_b, *pulse_args, cfg)
        else:
            v, y_final = _integrate.simulate_flat(flat, y_init, **kwargs)
        diverged = ~torch.isfinite(y_final.detach()).all(-1) | ~torch.isfinite(v.detach()).all(-1)
        n_bad = int(diverged.sum())
        if n_bad:
            warnings.warn(
                f"{n_bad} of {n_nodes} simulations diverged (non-finite values); see Simulation.diverged",
                RuntimeWarning,
                stacklevel=2,
            )
        n_rec = v.shape[-1]
        step = record_every * dt
        return Simulation(
            time=torch.arange(n_rec, dtype=torch.float64) * step,
            v=v.reshape(shape + (n_rec,)),
            final_state=y_final.reshape(shape + (6,)),
            diverged=diverged.reshape(shape),
            dt=dt,
            sampling_rate=1.0 / step,
            method=method,
            noise=self.noise,
            noise_on=self.noise_on,
            backend=backend,
            seed=seed,
        )

    def simulated_psd(
        self,
        duration: float,
        dt: float,
        *,
        segment: float,
        record_every: int = 1,
        transient: float = 0.0,
        seed: int = 0,
        method: str = "auto",
        initial_state: str | torch.Tensor = "rest",
        rel_step: float = 1e-6,
    ) -> SimulatedSpectrum:
        """Welch PSD of a simulation, differentiable by central differences with common random numbers.

        Simulates ``duration`` s (after ``transient`` s) as :meth:`simulate`
        does (same seed, scheme and noise) and Welch-averages ``v`` (Hann
        segments of ``segment`` s, half overlap, constant detrend). The
        derivative with respect to every parameter that requires a gradient
        is the central difference

            dPSD/dθ_k ≈ (PSD(θ + h_k e_k) - PSD(θ - h_k e_k)) / (2 h_k),
            h_k = rel_step * max(|θ_k|, 1e-3),

        where all ``2K + 1`` simulations of a parameter set use the *same*
        noise realisation (the counter-based stream of the set's batch
        index) and run as one batch in the native kernel. With the noise held
        fixed the simulated spectrum is a smooth function of the parameters,
        so this is the derivative of that one realisation's spectrum (the
        "common random numbers" gradient): an estimate of the derivative of
        the expected spectrum whose noise is the realisation's own, not a
        smoothing of it. A single realisation's Welch bins vary steeply with
        the parameters (the more so the longer the run), so the truncation
        error (O(h^2)) needs small steps: with ``rel_step = 1e-6`` (default)
        the differences agree with autograd through the torch time loop (same
        noise) to ~1e-5 relative on 0.5-2 s runs, while 1e-4 is off by ~5-25 %;
        the rounding error O(eps / h) stays far below that. ``initial_state``
        is held fixed (no gradient flows to it):
        choose ``transient`` long enough to forget it. Reverse and forward
        mode (``torch.func`` included) use the same differences; the cost is
        ``2K + 1`` simulations, with ``K`` the number of parameters that
        require a gradient, whatever the number of frequencies.

        Parameters
        ----------
        duration, dt : float
            Recorded time and step in s.
        segment : float
            Welch segment length in s (at most ``duration``).
        record_every, transient, seed, method, initial_state
            As in :meth:`simulate`.
        rel_step : float
            Relative step of the central differences.

        Returns
        -------
        SimulatedSpectrum
        """
        from jrinfer.spectral import welch_psd

        duration = _checks.check_scalar("duration", duration, positive=True)
        dt = _checks.check_scalar("dt", dt, positive=True)
        segment = _checks.check_scalar("segment", segment, positive=True)
        rel_step = _checks.check_scalar("rel_step", rel_step, positive=True)
        if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
            raise ValueError(f"record_every must be an int >= 1, got {record_every!r}")
        fs = 1.0 / (record_every * dt)
        n_rec = int(round(duration / dt)) // record_every
        nperseg = min(int(round(segment * fs)), n_rec)
        if nperseg < 2:
            raise ValueError(f"segment={segment:g} s holds fewer than 2 samples at {fs:g} Hz")
        p = self._params
        needs = tuple(_tracked(p[k]) for k in _SIM_FLAT)
        if not any(needs) or not _native_available():
            sim = self.simulate(duration, dt, method=method, seed=seed, record_every=record_every,
                                transient=transient, initial_state=initial_state)
            w = welch_psd(sim.v, fs, nperseg=nperseg)
            return SimulatedSpectrum(w.freqs, w.psd, sim.diverged, w.n_segments)
        noisy = bool((p["p_std"] != 0).any())
        if method == "auto":
            method = "heun" if noisy else "rk4"
        _checks.check_option("method", method, _integrate.METHODS)
        shape = self._batch_shape
        nb = max(1, math.prod(shape))
        y_init = self._initial_state(initial_state).detach().reshape(nb, 6)
        cfg = dict(
            needs=needs, n_transient=int(round(transient / dt)), n_steps=int(round(duration / dt)), dt=dt,
            record_every=record_every, method=method, noise=self.noise,
            channels=_integrate._ALL if self.noise_on == "all" else _integrate._INPUT_ONLY,
            seed=_rng.seed_to_int(seed), fs=fs, nperseg=nperseg, rel_step=rel_step,
        )
        flat = [p[k].reshape(nb) for k in _SIM_FLAT]
        psd, diverged, n_seg, _ = _CRNSimulatedWelch.apply(cfg, y_init, *flat)
        freqs = torch.fft.rfftfreq(nperseg, d=1.0 / fs, dtype=torch.float64)
        return SimulatedSpectrum(freqs, psd.reshape(tuple(shape) + (-1,)), diverged.reshape(shape), int(n_seg))

    def _initial_state(self, initial_state) -> torch.Tensor:
        shape = self._batch_shape
        if isinstance(initial_state, str):
            _checks.check_option("initial_state", initial_state, ("rest", "equilibrium"))
            if initial_state == "rest":
                return torch.zeros(shape + (6,), dtype=torch.float64)
            return self.fixed_points().upper().state
        y = _checks.as_float_tensor("initial_state", initial_state)
        _checks.check_finite("initial_state", y)
        try:
            return torch.broadcast_to(y, shape + (6,))
        except RuntimeError:
            raise ValueError(
                f"initial_state must have shape {tuple(shape) + (6,)} (batch shape + 6 states), got {tuple(y.shape)}"
            ) from None


class EquilibriumCache:
    """A warm start for the equilibrium search that a caller owns and passes explicitly.

    Give the same object to successive :meth:`JansenRit.linear_psd` calls at
    nearby parameters (e.g. along a sampler's trajectory): each call starts
    Newton from the equilibrium state found by the previous call (when the
    batch shapes match) and stores its own. The result does not depend on the
    cache (roots are still bracketed), only the number of Newton iterations.
    It holds one tensor and nothing global; use one cache per chain.

    Attributes
    ----------
    state : torch.Tensor or None
        The last equilibrium state, shape ``(*batch, 6)`` (mV, mV/s), detached.
    """

    __slots__ = ("state",)

    def __init__(self):
        self.state = None

    def guess(self, shape: torch.Size):
        """The stored state if it fits ``shape``, else None."""
        st = self.state
        if st is None or tuple(st.shape[:-1]) != tuple(shape):
            return None
        return st

    def __repr__(self) -> str:
        return f"EquilibriumCache(state={None if self.state is None else tuple(self.state.shape)})"


class _EquilibriumValues(torch.autograd.Function):
    """Values (no derivatives) of the upper or lower equilibrium, found outside any autograd graph.

    ``apply(which, shape, names, guess, *params)`` returns the fields of
    :class:`FixedPoints` for one equilibrium per parameter set (all
    non-differentiable). Run as an autograd.Function so that inside
    ``torch.func`` transforms the search sees plain tensors (no per-operation
    cost of the functorch layers) and can use NumPy: small batches take
    :func:`_selected_equilibrium_numpy`, the rest (and any possible close pair
    of roots) the torch search :func:`_fixed_points`. Derivatives through the
    equilibrium are taken where it is used (implicit function theorem, see
    :class:`_LinearGain`).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(which, shape, names, guess, *params):
        with torch.no_grad():
            pd = {k: v.detach() for k, v in zip(names, params)}
            nb = max(1, math.prod(shape))
            eq = _selected_equilibrium_numpy(pd, shape, 256, which, guess) if nb <= 4096 else None
            if eq is None:
                eq = _fixed_points(pd, shape, 256, which=which, initial_guess=guess)
        return tuple(eq)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.n_inputs = len(inputs)
        ctx.mark_non_differentiable(*[o for o in output if o.is_floating_point() or o.is_complex()])

    @staticmethod
    def backward(ctx, *grads):
        return (None,) * ctx.n_inputs

    @staticmethod
    def jvp(ctx, *tangents):
        return (None,) * 7


_JACOBIAN_ELEMENTS = 2_000_000  # above this, _LinearGain.backward runs the reverse chain (memory)


class _LinearGain(torch.autograd.Function):
    """``sum_c |H_c(i w)|^2`` at a given equilibrium ``y0``, with a closed-form backward.

    Inputs are flat ``(nb, 1)`` parameter tensors, the converged (detached)
    root ``y0`` of the equilibrium equation and angular frequencies ``w``
    ``(F,)``; the output is ``(nb, F)``. The backward differentiates the
    closed-form transfer function with respect to the time constants, gains
    and sigmoid slopes, and the slopes through the equilibrium by the implicit
    function theorem, so no autograd graph is recorded in the forward. It is
    checked against autograd through the generic path and finite differences
    in ``tests/test_model.py``. First derivatives only: ``y0`` enters as a
    constant, so second derivatives miss its curvature. Double backward
    raises (once-differentiable); ``torch.func.hessian`` (forward over
    reverse) runs but is not exact, as with the one-step implicit-function
    trick this replaces (same value at 051a930).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(y0, A, B, a, b, C1, C2, C3, C4, e0, v0, r, p, w, all_channels):
        s = torch.complex(torch.zeros_like(w), w)
        sa, sb = s + a, s + b
        he = (A * a) / (sa * sa)
        hi = (B * b) / (sb * sb)
        x1, x2 = C1 * y0, C3 * y0
        q1, q2 = torch.sigmoid(r * (x1 - v0)), torch.sigmoid(r * (x2 - v0))
        S1, S2 = 2.0 * e0 * q1, 2.0 * e0 * q2
        ke, ki = A / a, B / b
        v = ke * (p + C2 * S1) - ki * C4 * S2
        q0 = torch.sigmoid(r * (v - v0))
        g0 = 2.0 * e0 * r * q0 * (1.0 - q0)
        g1 = 2.0 * e0 * r * q1 * (1.0 - q1)
        g2 = 2.0 * e0 * r * q2 * (1.0 - q2)
        u1, u2 = C1 * C2 * g1, C3 * C4 * g2
        K = u1 * he - u2 * hi
        D = 1.0 - g0 * he * K
        he2 = he.real**2 + he.imag**2
        N = he2 * (1.0 + K.real**2 + K.imag**2) + (hi.real**2 + hi.imag**2) if all_channels else he2
        absD2 = D.real**2 + D.imag**2
        return N / absD2

    @staticmethod
    def setup_context(ctx, inputs, output):
        y0, A, B, a, b, C1, C2, C3, C4, e0, v0, r, p, w, all_channels = inputs
        ctx.all_channels = all_channels
        ctx.save_for_backward(y0, A, B, a, b, C1, C2, C3, C4, e0, v0, r, p, w, output)
        ctx.save_for_forward(y0, A, B, a, b, C1, C2, C3, C4, e0, v0, r, p, w, output)

    @staticmethod
    def jvp(ctx, ty0, tA, tB, ta, tb, tC1, tC2, tC3, tC4, te0, tv0, tr, tp, tw, _):
        """Forward mode (``torch.func.jacfwd``): the same derivatives, propagated forwards."""
        return _LinearGain.tangent(ctx.saved_tensors, ctx.all_channels, (tA, tB, ta, tb, tC1, tC2, tC3, tC4, te0, tv0,
                                                                         tr, tp))

    @staticmethod
    def tangent(saved, allc, tangents):
        """``d gain`` for parameter tangents ``(tA, tB, ta, tb, tC1..tC4, te0, tv0, tr, tp)`` (None = 0)."""
        y0, A, B, a, b, C1, C2, C3, C4, e0, v0, r, p, w, gain = saved
        tA, tB, ta, tb, tC1, tC2, tC3, tC4, te0, tv0, tr, tp = tangents
        z = lambda t, like: torch.zeros_like(like) if t is None else t  # noqa: E731
        tA, tB, ta, tb = z(tA, A), z(tB, B), z(ta, a), z(tb, b)
        tC1, tC2, tC3, tC4 = z(tC1, C1), z(tC2, C2), z(tC3, C3), z(tC4, C4)
        te0, tv0, tr, tp = z(te0, e0), z(tv0, v0), z(tr, r), z(tp, p)
        s = torch.complex(torch.zeros_like(w), w)
        sa, sb = s + a, s + b
        he = (A * a) / (sa * sa)
        hi = (B * b) / (sb * sb)
        x1, x2 = C1 * y0, C3 * y0
        q1, q2 = torch.sigmoid(r * (x1 - v0)), torch.sigmoid(r * (x2 - v0))
        S1, S2 = 2.0 * e0 * q1, 2.0 * e0 * q2
        ke, ki = A / a, B / b
        v = ke * (p + C2 * S1) - ki * C4 * S2
        q0 = torch.sigmoid(r * (v - v0))
        S0 = 2.0 * e0 * q0
        g0 = 2.0 * e0 * r * q0 * (1.0 - q0)
        g1 = 2.0 * e0 * r * q1 * (1.0 - q1)
        g2 = 2.0 * e0 * r * q2 * (1.0 - q2)
        h0, h1, h2 = g0 * r * (1.0 - 2.0 * q0), g1 * r * (1.0 - 2.0 * q1), g2 * r * (1.0 - 2.0 * q2)
        u1, u2 = C1 * C2 * g1, C3 * C4 * g2
        K = u1 * he - u2 * hi
        D = 1.0 - g0 * he * K
        absD2 = D.real**2 + D.imag**2

        def dS(S, g, x, dx):  # tangent of S(x; e0, v0, r)
            return g * dx + S / e0 * te0 + g * (x - v0) / r * tr - g * tv0

        def dSp(g, h, x, dx):  # tangent of S'(x; e0, v0, r)
            return h * dx + g / e0 * te0 + (g + h * (x - v0)) / r * tr - h * tv0

        dke, dki = (tA - ke * ta) / a, (tB - ki * tb) / b
        # explicit tangents at fixed y0, then the implicit one of y0
        dx1e, dx2e = tC1 * y0, tC3 * y0
        dve = (
            dke * (p + C2 * S1) + ke * (tp + tC2 * S1 + C2 * dS(S1, g1, x1, dx1e))
            - dki * C4 * S2 - ki * (tC4 * S2 + C4 * dS(S2, g2, x2, dx2e))
        )
        dGe = dke * S0 + ke * dS(S0, g0, v, dve)
        dv_dy0 = ke * C2 * g1 * C1 - ki * C4 * g2 * C3
        dy0 = -dGe / (ke * g0 * dv_dy0 - 1.0)
        dx1, dx2, dv = dx1e + C1 * dy0, dx2e + C3 * dy0, dve + dv_dy0 * dy0
        dg0, dg1, dg2 = dSp(g0, h0, v, dv), dSp(g1, h1, x1, dx1), dSp(g2, h2, x2, dx2)
        du1 = (tC1 * C2 + C1 * tC2) * g1 + C1 * C2 * dg1
        du2 = (tC3 * C4 + C3 * tC4) * g2 + C3 * C4 * dg2
        dhe = he * (tA / A + ta * (1.0 / a - 2.0 / sa))
        dhi = hi * (tB / B + tb * (1.0 / b - 2.0 / sb))
        dK = du1 * he + u1 * dhe - du2 * hi - u2 * dhi
        dD = -(dg0 * he * K + g0 * dhe * K + g0 * he * dK)
        re_dot = lambda x, dx: (x.conj() * dx).real  # noqa: E731  Re(conj(x) dx)
        if allc:
            K2 = K.real**2 + K.imag**2
            he2 = he.real**2 + he.imag**2
            dN = 2.0 * (re_dot(he, dhe) * (1.0 + K2) + he2 * re_dot(K, dK) + re_dot(hi, dhi))
        else:
            dN = 2.0 * re_dot(he, dhe)
        return (dN - gain * 2.0 * re_dot(D, dD)) / absD2

    @staticmethod
    @once_differentiable
    def backward(ctx, G):
        y0, A, B, a, b, C1, C2, C3, C4, e0, v0, r, p, w, gain = ctx.saved_tensors
        allc = ctx.all_channels
        if 12 * gain.numel() <= _JACOBIAN_ELEMENTS and _is_batched(G):
            # Under torch.func.jacrev G is batched over the outputs: form the
            # Jacobian by forward mode in 12 directions at once (operations on
            # the unbatched saved tensors), then one batched contraction with G.
            # A single backward (plain autograd) takes the reverse chain below.
            eye = torch.eye(12, dtype=gain.dtype).reshape(12, 12, 1, 1)
            jac = _LinearGain.tangent(ctx.saved_tensors, allc, tuple(eye))  # (12, nb, F)
            g = torch.einsum("nf,knf->kn", G, jac).unsqueeze(-1)
            return (None, *g.unbind(0), None, None)
        # recompute the forward's intermediates (cheap, and keeps the saved set small)
        s = torch.complex(torch.zeros_like(w), w)
        sa, sb = s + a, s + b
        he = (A * a) / (sa * sa)
        hi = (B * b) / (sb * sb)
        x1, x2 = C1 * y0, C3 * y0
        q1, q2 = torch.sigmoid(r * (x1 - v0)), torch.sigmoid(r * (x2 - v0))
        S1, S2 = 2.0 * e0 * q1, 2.0 * e0 * q2
        ke, ki = A / a, B / b
        v = ke * (p + C2 * S1) - ki * C4 * S2
        q0 = torch.sigmoid(r * (v - v0))
        S0 = 2.0 * e0 * q0
        g0 = 2.0 * e0 * r * q0 * (1.0 - q0)
        g1 = 2.0 * e0 * r * q1 * (1.0 - q1)
        g2 = 2.0 * e0 * r * q2 * (1.0 - q2)
        h0, h1, h2 = g0 * r * (1.0 - 2.0 * q0), g1 * r * (1.0 - 2.0 * q1), g2 * r * (1.0 - 2.0 * q2)  # S''
        u1, u2 = C1 * C2 * g1, C3 * C4 * g2
        K = u1 * he - u2 * hi
        D = 1.0 - g0 * he * K
        absD2 = D.real**2 + D.imag**2
        # adjoints (dL = Re sum_f c_z dz) of the complex intermediates
        cN = G / absD2
        cD = (-2.0 * G * gain / absD2) * D.conj()
        cK = cD * (-g0 * he)
        c_he = (2.0 * cN) * he.conj() + cD * (-g0 * K) + cK * u1
        c_hi = -cK * u2
        if allc:
            he2 = he.real**2 + he.imag**2
            K2 = K.real**2 + K.imag**2
            cK = cK + (2.0 * cN * he2) * K.conj()
            c_he = (2.0 * cN * (1.0 + K2)) * he.conj() + cD * (-g0 * K) + cK * u1
            c_hi = (2.0 * cN) * hi.conj() - cK * u2
        re_sum = lambda z: z.real.sum(-1, keepdim=True)  # noqa: E731
        Lg0 = re_sum(cD * (-he * K))
        Lu1 = re_sum(cK * he)
        Lu2 = -re_sum(cK * hi)
        the = re_sum(c_he * he)
        thi = re_sum(c_hi * hi)
        LA = the / A
        La = the / a - 2.0 * re_sum(c_he * he / sa)
        LB = thi / B
        Lb = thi / b - 2.0 * re_sum(c_hi * hi / sb)
        # u1 = C1 C2 g1, u2 = C3 C4 g2
        LC1 = Lu1 * C2 * g1
        LC2 = Lu1 * C1 * g1
        LC3 = Lu2 * C4 * g2
        LC4 = Lu2 * C3 * g2
        Lg1, Lg2 = Lu1 * C1 * C2, Lu2 * C3 * C4
        # g_j = S'(x_j): direct sigmoid-parameter dependence
        Le0 = (Lg0 * g0 + Lg1 * g1 + Lg2 * g2) / e0
        Lr = (Lg0 * (g0 + h0 * (v - v0)) + Lg1 * (g1 + h1 * (x1 - v0)) + Lg2 * (g2 + h2 * (x2 - v0))) / r
        Lv0 = -(Lg0 * h0 + Lg1 * h1 + Lg2 * h2)
        Lv = Lg0 * h0
        Lx1, Lx2 = Lg1 * h1, Lg2 * h2
        # implicit function theorem for y0: G(y0) = ke S(v) - y0 = 0
        dv_dy0 = ke * C2 * g1 * C1 - ki * C4 * g2 * C3
        dL_dy0 = Lx1 * C1 + Lx2 * C3 + Lv * dv_dy0
        lam = -dL_dy0 / (ke * g0 * dv_dy0 - 1.0)
        # explicit dependence (y0 fixed) of L + lam * G on the parameters
        LC1 = LC1 + Lx1 * y0
        LC3 = LC3 + Lx2 * y0
        Lv_t = Lv + lam * ke * g0
        lk = lam * ke
        Le0 = Le0 + lk * S0 / e0
        Lr = Lr + lk * g0 * (v - v0) / r
        Lv0 = Lv0 - lk * g0
        Lke = lam * S0 + Lv_t * (p + C2 * S1)
        Lp = Lv_t * ke
        LC2 = LC2 + Lv_t * ke * S1
        LS1 = Lv_t * ke * C2
        Lki = -Lv_t * C4 * S2
        LC4 = LC4 - Lv_t * ki * S2
        LS2 = -Lv_t * ki * C4
        # S_j = S(x_j) with x_j = C y0 (y0 fixed)
        LC1 = LC1 + LS1 * g1 * y0
        LC3 = LC3 + LS2 * g2 * y0
        Le0 = Le0 + (LS1 * S1 + LS2 * S2) / e0
        Lr = Lr + (LS1 * g1 * (x1 - v0) + LS2 * g2 * (x2 - v0)) / r
        Lv0 = Lv0 - (LS1 * g1 + LS2 * g2)
        # ke = A / a, ki = B / b
        LA = LA + Lke / a
        La = La - Lke * ke / a
        LB = LB + Lki / b
        Lb = Lb - Lki * ki / b
        return None, LA, LB, La, Lb, LC1, LC2, LC3, LC4, Le0, Lv0, Lr, Lp, None, None


_JR_FLAT = ("A", "B", "a", "b", "C1", "C2", "C3", "C4", "e0", "v0", "r", "p_mean")


class _RK4Sensitivity(torch.autograd.Function):
    """Deterministic RK4 in the native kernel with forward sensitivities as its derivative.

    ``forward(y_init (N, 6), 12 JR parameters (N,), q, w, n, onset (N,), cfg)``
    returns ``v`` ``(N, n_rec)`` (plus the sensitivities and the final state,
    both non-differentiable). The kernel integrates ``dy/dθ`` beside ``y``
    (RK4 applied to the variational equations, i.e. exactly the derivative of
    the discrete RK4 solution), so reverse mode is ``Σ_t ḡ_t ∂v_t/∂θ`` and
    forward mode ``Σ_θ ∂v/∂θ θ̇``: no autograd graph over the time loop.
    ``cfg = (has_pulse, n_transient, n_steps, dt, record_every)``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(y_init, A, B, a, b, C1, C2, C3, C4, e0, v0, r, p_mean, q, w, n, onset, cfg):
        from jrinfer import _native

        has_pulse, n_transient, n_steps, dt, record_every = cfg
        p = dict(zip(_JR_FLAT, (A, B, a, b, C1, C2, C3, C4, e0, v0, r, p_mean)))
        pulse = PulseInput(q=q, w=w, n=n, onset=onset) if has_pulse else None
        return _native.rk4_sensitivities_native(
            p, y_init, pulse, n_transient=n_transient, n_steps=n_steps, dt=dt, record_every=record_every
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, dv, y_final = output
        ctx.mark_non_differentiable(dv, y_final)
        ctx.save_for_backward(dv)
        ctx.save_for_forward(dv)

    @staticmethod
    @once_differentiable
    def backward(ctx, gv, _gdv, _gy):
        (dv,) = ctx.saved_tensors
        g = torch.einsum("nt,ntp->np", gv, dv)
        return (g[:, 16:22],) + tuple(g[:, k] for k in range(16)) + (None,)

    @staticmethod
    def jvp(ctx, t_y, *tangents):
        (dv,) = ctx.saved_tensors
        n_nodes = dv.shape[0]
        cols = [
            torch.zeros(n_nodes, dtype=dv.dtype) if t is None else torch.broadcast_to(t, (n_nodes,))
            for t in tangents[:16]
        ]
        ty = torch.zeros(n_nodes, 6, dtype=dv.dtype) if t_y is None else torch.broadcast_to(t_y, (n_nodes, 6))
        T = torch.cat([torch.stack(cols, -1), ty], -1)
        return torch.einsum("ntp,np->nt", dv, T), None, None


_SIM_FLAT = _JR_FLAT + ("p_std",)


class _CRNSimulatedWelch(torch.autograd.Function):
    """Welch PSD of native simulations with a central-difference Jacobian on common random numbers.

    ``forward(cfg, y_init (N, 6), 13 parameters (N,))`` runs ``N (2K + 1)``
    simulations in one native batch: the nominal sets, then for each of the
    ``K`` parameters flagged in ``cfg["needs"]`` the sets shifted by ``+h`` and
    by ``-h``; copy ``j`` of set ``i`` uses the noise stream of node ``i``
    (``noise_node``), so the nominal run equals :meth:`JansenRit.simulate`'s.
    Returns the nominal PSD ``(N, F)``, the divergence flags and the number of
    Welch segments; the Jacobian ``(K, N, F)`` is kept for backward / jvp.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(cfg, y_init, *params):
        from jrinfer import _native
        from jrinfer.spectral import welch_psd

        needs = cfg["needs"]
        n_nodes = y_init.shape[0]
        base = torch.stack([t.detach().reshape(n_nodes) for t in params], -1)  # (N, 13)
        rows, steps = [base], []
        for k, on in enumerate(needs):
            if not on:
                continue
            h = cfg["rel_step"] * base[:, k].abs().clamp_min(1e-3)
            steps.append(h)
            for sign in (1.0, -1.0):
                shifted = base.clone()
                shifted[:, k] = base[:, k] + sign * h
                rows.append(shifted)
        allp = torch.cat(rows, 0)
        n_copies = len(rows)
        flat = {k: allp[:, i].contiguous() for i, k in enumerate(_SIM_FLAT)}
        noise_node = np.tile(np.arange(n_nodes, dtype=np.int64), n_copies)
        v, _ = _native.simulate_flat_native(
            flat, y_init.detach().repeat(n_copies, 1), n_transient=cfg["n_transient"], n_steps=cfg["n_steps"],
            dt=cfg["dt"], record_every=cfg["record_every"], method=cfg["method"], noise=cfg["noise"],
            channels=cfg["channels"], seed=cfg["seed"], pulse=None, noise_node=noise_node,
        )
        w = welch_psd(v, cfg["fs"], nperseg=cfg["nperseg"])
        psd = w.psd.reshape(n_copies, n_nodes, -1)
        jac = torch.stack(
            [(psd[1 + 2 * j] - psd[2 + 2 * j]) / (2.0 * h[:, None]) for j, h in enumerate(steps)]
        )  # (K, N, F)
        diverged = ~torch.isfinite(v[:n_nodes]).all(-1)
        return psd[0], diverged, torch.tensor(w.n_segments), jac

    @staticmethod
    def setup_context(ctx, inputs, output):
        cfg = inputs[0]
        ctx.needs = cfg["needs"]
        _, diverged, n_seg, jac = output
        ctx.mark_non_differentiable(diverged, n_seg, jac)
        ctx.save_for_backward(jac)
        ctx.save_for_forward(jac)

    @staticmethod
    @once_differentiable
    def backward(ctx, G, *_):
        (jac,) = ctx.saved_tensors
        g = torch.einsum("nf,knf->kn", G, jac)
        out, j = [], 0
        for on in ctx.needs:
            out.append(g[j] if on else None)
            j += on
        return (None, None, *out)

    @staticmethod
    def jvp(ctx, _cfg, _ty, *tangents):
        (jac,) = ctx.saved_tensors
        d, j = None, 0
        for on, t in zip(ctx.needs, tangents):
            if on:
                if t is not None:
                    term = jac[j] * t.reshape(-1, 1)
                    d = term if d is None else d + term
                j += 1
        if d is None:
            d = torch.zeros_like(jac[0])
        return d, None, None, None


# ---------------------------------------------------------------------- helpers
def _all_valid(given) -> bool:
    """One fused check (one synchronisation) that every given parameter is finite and in range."""
    flat = torch.cat([x.detach().reshape(-1) for _, _, x in given])
    lower = torch.cat(
        [
            torch.full((x.numel(),), {"positive": 1.0, "nonnegative": 0.0}.get(info.constraint, -1.0),
                       dtype=torch.float64)
            for _, info, x in given
        ]
    )
    # code 1: > 0, code 0: >= 0, code -1: any finite value
    ok = torch.isfinite(flat) & ((flat > 0) | (lower < 1)) & ((flat >= 0) | (lower < 0))
    return bool(ok.all())


def _tracked(t: torch.Tensor) -> bool:
    """Whether a derivative with respect to ``t`` may be asked for (autograd, forward AD or torch.func)."""
    if t.requires_grad and torch.is_grad_enabled():
        return True
    try:
        from torch._C._functorch import is_functorch_wrapped_tensor
    except ImportError:  # pragma: no cover - older torch
        is_functorch_wrapped_tensor = None
    if is_functorch_wrapped_tensor is not None and is_functorch_wrapped_tensor(t):
        return True
    import torch.autograd.forward_ad as fwad

    return fwad.unpack_dual(t).tangent is not None


def _is_batched(t: torch.Tensor) -> bool:
    """Whether ``t`` is batched by ``torch.func.vmap`` (e.g. the cotangents inside ``jacrev``)."""
    try:
        from torch._C._functorch import is_batchedtensor
    except ImportError:  # pragma: no cover - older torch
        return False
    return bool(is_batchedtensor(t))


def _np_sigmoid(x):
    # callers run under np.errstate(over="ignore"): exp overflow gives 1/inf = 0, as intended
    return 1.0 / (1.0 + np.exp(-x))


def _np_residual(y0, p):
    """NumPy twin of :func:`_equilibrium_residual` (values only): ``(G, v)``."""
    e0, v0, r = p["e0"], p["v0"], p["r"]
    ke, ki = p["A"] / p["a"], p["B"] / p["b"]
    v = ke * (p["p_mean"] + p["C2"] * 2.0 * e0 * _np_sigmoid(r * (p["C1"] * y0 - v0))) - ki * p["C4"] * 2.0 * e0 * (
        _np_sigmoid(r * (p["C3"] * y0 - v0))
    )
    return ke * 2.0 * e0 * _np_sigmoid(r * (v - v0)) - y0, v


def _np_slope(x, p):
    s = _np_sigmoid(p["r"] * (x - p["v0"]))
    return 2.0 * p["e0"] * p["r"] * s * (1.0 - s)


def _newton_scalar(lo: float, hi: float, x: float, tol: float, p: dict) -> float:
    """Safeguarded Newton of :func:`_refine_roots` for one parameter set, in floats."""

    def sig(z):
        if z >= 0.0:
            return 1.0 / (1.0 + math.exp(-z))
        ez = math.exp(z)
        return ez / (1.0 + ez)

    e0, v0, r = p["e0"], p["v0"], p["r"]
    ke, ki = p["A"] / p["a"], p["B"] / p["b"]
    C1, C2, C3, C4, pm = p["C1"], p["C2"], p["C3"], p["C4"], p["p_mean"]

    def residual(y):
        s1, s3 = sig(r * (C1 * y - v0)), sig(r * (C3 * y - v0))
        v = ke * (pm + C2 * 2.0 * e0 * s1) - ki * C4 * 2.0 * e0 * s3
        s0 = sig(r * (v - v0))
        return ke * 2.0 * e0 * s0 - y, s0, s1, s3

    pos_lo = residual(lo)[0] > 0
    for _ in range(100):
        g, s0, s1, s3 = residual(x)
        if (g > 0) == pos_lo:
            lo = x
        else:
            hi = x
        dv = ke * C2 * C1 * 2.0 * e0 * r * s1 * (1.0 - s1) - ki * C4 * C3 * 2.0 * e0 * r * s3 * (1.0 - s3)
        x_new = x - g / (ke * 2.0 * e0 * r * s0 * (1.0 - s0) * dv - 1.0)
        if not (min(lo, hi) <= x_new <= max(lo, hi)):  # also catches nan
            x_new = 0.5 * (lo + hi)
        step = abs(x_new - x)
        x = x_new
        if step <= tol or abs(hi - lo) <= tol:
            break
    return x


def _selected_equilibrium_numpy(pd, shape, grid_size, which, guess, raw=False):
    """The upper or lower equilibrium with its eigenvalues, values only, in NumPy.

    The same algorithm as :func:`_fixed_points` with ``which`` (grid
    bracketing, fold candidates certified on a fine local grid, safeguarded
    Newton from ``guess`` or the bracket's middle), written for small batches
    where the per-operation cost of torch dominates (one parameter set:
    ~10x cheaper). Returns None when a fold candidate needs the full search;
    with ``raw`` the NumPy arrays ``(y0, eigenvalues, stable)`` of shapes
    ``(nb,)``, ``(nb, 6)``, ``(nb,)`` instead of :class:`FixedPoints`.
    """
    with np.errstate(over="ignore"):
        return _selected_equilibrium_numpy_impl(pd, shape, grid_size, which, guess, raw)


def _sigmoid_float(z: float) -> float:
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    ez = math.exp(z)
    return ez / (1.0 + ez)


def _warm_upper_root(p: dict, guess: float) -> float | None:
    """The upper equilibrium's ``y0`` for one parameter set by Newton from ``guess``, certified without the grid.

    Newton on ``G(y) = ke S(v(y)) - y`` from the previous call's root
    (``p``: Python floats, ``C1..C4``, ``r``, ``e0`` > 0). The root ``x`` is
    accepted only when interval bounds prove ``G < 0`` on ``(x, y_max]``, so
    that ``x`` is the largest root, the one the grid search selects as
    ``"upper"``: next to ``x`` the bound ``G' < 0`` on ``[x, u]``, beyond it
    ``G(y) <= ke S(P(u) - Q(l)) - l < 0`` on pieces ``[l, u]`` (``v = P - Q``
    with ``P``, ``Q`` increasing in ``y``). Returns None (the caller runs the
    grid search) when Newton does not converge within 12 steps, leaves
    ``[0, y_max]``, or the bounds fail (close to a fold, or a warm start that
    lands on a lower branch).
    """
    sig = _sigmoid_float
    e0, v0, r = p["e0"], p["v0"], p["r"]
    ke, ki = p["A"] / p["a"], p["B"] / p["b"]
    C1, C2, C3, C4, pm = p["C1"], p["C2"], p["C3"], p["C4"], p["p_mean"]
    y_max = 2.0 * e0 * ke
    tol = 4 * 2.220446049250313e-16 * y_max
    x = guess
    if not 0.0 < x < y_max:
        return None
    for _ in range(12):
        s1, s3 = sig(r * (C1 * x - v0)), sig(r * (C3 * x - v0))
        v = ke * (pm + C2 * 2.0 * e0 * s1) - ki * C4 * 2.0 * e0 * s3
        s0 = sig(r * (v - v0))
        dv = ke * C2 * C1 * 2.0 * e0 * r * s1 * (1.0 - s1) - ki * C4 * C3 * 2.0 * e0 * r * s3 * (1.0 - s3)
        den = ke * 2.0 * e0 * r * s0 * (1.0 - s0) * dv - 1.0
        if den == 0.0:
            return None
        step = (ke * 2.0 * e0 * s0 - x) / den
        x -= step
        if not 0.0 < x < y_max:  # also catches nan
            return None
        if abs(step) <= tol:
            break
    else:
        return None
    g_peak = 0.5 * e0 * r

    def slope(z):
        s = sig(r * (z - v0))
        return 2.0 * e0 * r * s * (1.0 - s)

    def slope_max(zl, zu):  # the slope is unimodal with its peak at v0
        return g_peak if zl <= v0 <= zu else max(slope(zl), slope(zu))

    def P(y):
        return ke * (pm + C2 * 2.0 * e0 * sig(r * (C1 * y - v0)))

    def Q(y):
        return ki * C4 * 2.0 * e0 * sig(r * (C3 * y - v0))

    # G' < 0 on [x, u]: G' = ke g(v) v' - 1, v' <= ke C2 C1 max g(C1 y) - ki C4 C3 min g(C3 y)
    u, px, qx = y_max, P(x), Q(x)
    for _ in range(40):
        dv_max = ke * C2 * C1 * slope_max(C1 * x, C1 * u) - ki * C4 * C3 * min(slope(C3 * x), slope(C3 * u))
        if dv_max <= 0.0 or ke * slope_max(px - Q(u), P(u) - qx) * dv_max < 1.0:
            break
        u = x + 0.5 * (u - x)
    else:
        return None
    # G < 0 on [u, y_max] piece by piece (pieces double after a success, halve after a failure)
    lo, width = u, y_max - u
    for _ in range(200):
        if lo >= y_max:
            return x
        hi = min(lo + width, y_max)
        if ke * 2.0 * e0 * sig(r * (P(hi) - Q(lo) - v0)) < lo:
            lo, width = hi, 2.0 * width
        else:
            width *= 0.5
    return None


def _raw_equilibrium_scalar(x: float, p: dict):
    """``(y0, eigenvalues, stable)`` of :func:`_selected_equilibrium_numpy` (``raw``) at the root ``x``, one set."""
    e0, v0, r = p["e0"], p["v0"], p["r"]
    a, b, Aa, Bb = p["a"], p["b"], p["A"] * p["a"], p["B"] * p["b"]
    z1, z3 = p["C1"] * x, p["C3"] * x
    s1, s3 = _sigmoid_float(r * (z1 - v0)), _sigmoid_float(r * (z3 - v0))
    y1 = p["A"] / a * (p["p_mean"] + p["C2"] * 2.0 * e0 * s1)
    y2 = p["B"] / b * p["C4"] * 2.0 * e0 * s3
    s0 = _sigmoid_float(r * (y1 - y2 - v0))
    g0 = 2.0 * e0 * r * s0 * (1.0 - s0)
    g1, g3 = 2.0 * e0 * r * s1 * (1.0 - s1), 2.0 * e0 * r * s3 * (1.0 - s3)
    jac = np.array([[[0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
                     [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                     [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                     [-a * a, Aa * g0, -Aa * g0, -2.0 * a, 0.0, 0.0],
                     [Aa * p["C2"] * p["C1"] * g1, -a * a, 0.0, 0.0, -2.0 * a, 0.0],
                     [Bb * p["C4"] * p["C3"] * g3, 0.0, -b * b, 0.0, 0.0, -2.0 * b]]])
    ev = np.linalg.eigvals(jac)
    return np.array([x]), ev, ev.real.max(-1) < 0


@functools.lru_cache(maxsize=8)
def _unit_grid(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n)


def _selected_equilibrium_numpy_impl(pd, shape, grid_size, which, guess, raw=False):
    nb = max(1, math.prod(shape))
    p = {
        k: v if isinstance(v, np.ndarray) and v.shape == (nb,)  # NumPy callers (jrinfer._fastspec): no conversion
        else np.ascontiguousarray(np.broadcast_to(np.asarray(v.cpu().numpy() if torch.is_tensor(v) else v),
                                                  tuple(shape)).reshape(nb))
        for k, v in pd.items()
    }
    if raw and nb == 1 and which == "upper" and guess is not None:  # warm start: Newton, grid only if uncertified
        pf = {k: float(v[0]) for k, v in p.items()}
        x = _warm_upper_root(pf, float(np.asarray(guess).reshape(-1)[0]))
        if x is not None:
            return _raw_equilibrium_scalar(x, pf)
    y_max = 2.0 * p["e0"] * p["A"] / p["a"]
    grid = y_max[:, None] * _unit_grid(grid_size)
    pc = {k: v[:, None] for k, v in p.items()}
    g = _np_residual(grid, pc)[0]
    pos = g > 0
    change = pos[:, :-1] != pos[:, 1:]
    d = g[:, 1:] - g[:, :-1]
    interior_min = (d[:, :-1] < 0) & (d[:, 1:] > 0) & pos[:, 1:-1]
    interior_max = (d[:, :-1] > 0) & (d[:, 1:] < 0) & ~pos[:, 1:-1]
    same = (pos[:, :-2] == pos[:, 1:-1]) & (pos[:, 2:] == pos[:, 1:-1])
    cb, ck = np.nonzero((interior_min | interior_max) & same)
    if cb.size:
        j = ck + 1
        left, right = grid[cb, j - 1], grid[cb, j + 1]
        xf = left[:, None] + (right - left)[:, None] * _unit_grid(65)
        gf = _np_residual(xf, {k: v[cb][:, None] for k, v in p.items()})[0]
        sg = np.where(pos[cb, j], 1.0, -1.0)[:, None] * gf
        d2 = np.abs(gf[:, 2:] - 2.0 * gf[:, 1:-1] + gf[:, :-2]).max(1)
        if not bool((sg.min(1) > 2.0 * d2).all()):
            return None
    k_all = np.arange(grid_size - 1)
    if which == "upper":
        k_sel = np.where(change, k_all, -1).max(1)
    else:
        k_sel = np.where(change, k_all, grid_size).min(1)
    rows = np.arange(nb)
    lo, hi = grid[rows, k_sel], grid[rows, k_sel + 1]
    x = 0.5 * (lo + hi)
    if guess is not None:
        gs = (guess.cpu().numpy() if torch.is_tensor(guess) else np.asarray(guess)).reshape(nb)
        x = np.where((gs > np.minimum(lo, hi)) & (gs < np.maximum(lo, hi)), gs, x)
    tol = 4 * np.finfo(np.float64).eps * y_max
    ke, ki = p["A"] / p["a"], p["B"] / p["b"]
    if nb == 1:  # one set: the same iteration in Python floats (no array overhead)
        x = np.array([_newton_scalar(float(lo[0]), float(hi[0]), float(x[0]), float(tol[0]),
                                     {k: float(v[0]) for k, v in p.items()})])
    pos_lo = _np_residual(lo, p)[0] > 0
    for _ in range(100 if nb > 1 else 0):  # safeguarded Newton, as _refine_roots
        gx, v = _np_residual(x, p)
        same_as_lo = (gx > 0) == pos_lo
        lo = np.where(same_as_lo, x, lo)
        hi = np.where(same_as_lo, hi, x)
        dv = ke * p["C2"] * p["C1"] * _np_slope(p["C1"] * x, p) - ki * p["C4"] * p["C3"] * _np_slope(p["C3"] * x, p)
        x_new = x - gx / (ke * _np_slope(v, p) * dv - 1.0)
        outside = ~((x_new >= np.minimum(lo, hi)) & (x_new <= np.maximum(lo, hi)))
        x_new = np.where(outside, 0.5 * (lo + hi), x_new)
        step = np.abs(x_new - x)
        x = x_new
        if bool((step <= tol).all()) or bool((np.abs(hi - lo) <= tol).all()):
            break
    # state, eigenvalues of the drift Jacobian, stability (as _equilibria_at, no gradient)
    e0, v0, r = p["e0"], p["v0"], p["r"]
    _, v = _np_residual(x, p)
    y1 = ke * (p["p_mean"] + p["C2"] * 2.0 * e0 * _np_sigmoid(r * (p["C1"] * x - v0)))
    y2 = ki * p["C4"] * 2.0 * e0 * _np_sigmoid(r * (p["C3"] * x - v0))
    a, b, Aa, Bb = p["a"], p["b"], p["A"] * p["a"], p["B"] * p["b"]
    g0 = _np_slope(y1 - y2, p)
    jac = np.zeros((nb, 36))
    jac[:, [3, 10, 17]] = 1.0
    jac[:, [18, 19, 20, 21, 24, 25, 28, 30, 32, 35]] = np.stack(
        [-a * a, Aa * g0, -Aa * g0, -2 * a, Aa * p["C2"] * p["C1"] * _np_slope(p["C1"] * x, p), -a * a, -2 * a,
         Bb * p["C4"] * p["C3"] * _np_slope(p["C3"] * x, p), -b * b, -2 * b], -1
    )
    ev = np.linalg.eigvals(jac.reshape(nb, 6, 6))
    ev = np.take_along_axis(ev, np.argsort(-ev.real, axis=-1, kind="stable"), -1)
    stable = ev.real.max(-1) < 0
    if raw:
        return x, ev, stable
    zeros = np.zeros(nb)
    state = np.stack([x, y1, y2, zeros, zeros, zeros], -1)
    out = tuple(shape)
    t = torch.from_numpy
    return FixedPoints(
        t(state).reshape(out + (6,)),
        t(v).reshape(out),
        t(ev).reshape(out + (6,)),
        t(stable).reshape(out),
        t(np.abs(ev[:, 0].imag) / (2 * math.pi)).reshape(out),
        torch.ones(out, dtype=torch.bool),
        t(change.sum(1)).reshape(out),
    )


def _fine_bracket(sigma, x_neg: float, x_pos: float, n: int) -> tuple[float, float, float, float]:
    """A closer bracket ``(x_neg, x_pos, s_neg, s_pos)`` of a stability change between grid points.

    ``sigma(x_neg) < 0 <= sigma(x_pos)`` (either order of ``x``); a finer
    grid of ``n`` points between them (also close starts for the
    continuation) gives the first change seen from ``x_neg``.
    """
    fine = np.linspace(x_neg, x_pos, n)
    sf = sigma(fine)
    k = int(np.nonzero(sf >= 0)[0][0]) if (sf >= 0).any() else n - 1
    k = max(k, 1)
    return fine[k - 1], fine[k], sf[k - 1], sf[k]


def _refine_crossing(sigma, a: float, b: float, sa: float, sb: float) -> float:
    """Safeguarded (Illinois) secant for ``sigma = 0`` with ``sigma(a) < 0 <= sigma(b)`` (either order).

    ``sigma`` is close to linear in ``p_mean`` near a Hopf point; stops at
    ~1e-8 relative (the caller's differentiable Newton step squares the error).
    """
    xtol = 1e-8 * max(abs(a), abs(b), 1.0)
    p, side = a - sa * (b - a) / (sb - sa), 0
    for _ in range(60):
        sp = float(sigma(np.array([p]))[0])
        if sp < 0:
            a, sa = p, sp
            if side == -1:
                sb *= 0.5
            side = -1
        else:
            b, sb = p, sp
            if side == 1:
                sa *= 0.5
            side = 1
        new = a - sa * (b - a) / (sb - sa)
        if abs(new - p) <= xtol or abs(b - a) <= xtol or sp == 0.0:
            p = new if min(a, b) <= new <= max(a, b) else p
            break
        p = new
    return p


def _upper_sigma_continued(pf: dict, p_mean: float, y0: float) -> float | None:
    """Largest real part of the eigenvalues at the equilibrium continued from ``y0`` (plain Newton), or None.

    For :meth:`JansenRit.hopf_p_mean`'s refinement, where successive ``p_mean``
    are close and the upper branch is far from a fold: Newton on the scalar
    equilibrium equation from the last root; None (use the full search) when
    it does not converge in 20 steps or the root leaves ``(0, 2 e0 A / a)``.
    """
    p = dict(pf)
    p["p_mean"] = p_mean
    y_max = 2.0 * p["e0"] * p["A"] / p["a"]
    ke, ki = p["A"] / p["a"], p["B"] / p["b"]
    x = y0
    with np.errstate(over="ignore"):
        for _ in range(20):
            g, v = _np_residual(x, p)
            dv = ke * p["C2"] * p["C1"] * _np_slope(p["C1"] * x, p) - ki * p["C4"] * p["C3"] * _np_slope(p["C3"] * x, p)
            step = g / (ke * _np_slope(v, p) * dv - 1.0)
            x = x - step
            if not 0.0 < x < y_max or not math.isfinite(x):
                return None
            if abs(step) <= 4 * np.finfo(np.float64).eps * y_max:
                break
        else:
            return None
        _, v = _np_residual(x, p)
        e0, v0, r = p["e0"], p["v0"], p["r"]
        y1 = ke * (p["p_mean"] + p["C2"] * 2.0 * e0 * _np_sigmoid(r * (p["C1"] * x - v0)))
        y2 = ki * p["C4"] * 2.0 * e0 * _np_sigmoid(r * (p["C3"] * x - v0))
        a, b, Aa, Bb = p["a"], p["b"], p["A"] * p["a"], p["B"] * p["b"]
        jac = np.zeros((6, 6))
        jac[0, 3] = jac[1, 4] = jac[2, 5] = 1.0
        g0 = _np_slope(y1 - y2, p)
        jac[3, 0], jac[3, 1], jac[3, 2], jac[3, 3] = -a * a, Aa * g0, -Aa * g0, -2 * a
        jac[4, 0], jac[4, 1], jac[4, 4] = Aa * p["C2"] * p["C1"] * _np_slope(p["C1"] * x, p), -a * a, -2 * a
        jac[5, 0], jac[5, 2], jac[5, 5] = Bb * p["C4"] * p["C3"] * _np_slope(p["C3"] * x, p), -b * b, -2 * b
    return float(np.linalg.eigvals(jac).real.max())


def _native_available() -> bool:
    try:
        from jrinfer import _native
    except ImportError:  # pragma: no cover - module missing in a broken install
        return False
    return _native.available()


def _check_freqs(freqs) -> torch.Tensor:
    f = _checks.as_float_tensor("freqs", freqs)
    if f.dim() != 1 or f.numel() == 0:
        raise ValueError(f"freqs must be a non-empty 1-D array of frequencies in Hz, got shape {tuple(f.shape)}")
    _checks.check_positive("freqs", f, allow_zero=True)
    return f


def _sigmoid_slope(x, e0, v0, r):
    s = torch.sigmoid(r * (x - v0))
    return 2.0 * e0 * r * s * (1.0 - s)


# Flat (row * 6 + col) positions of the state-dependent entries of the 6x6 drift
# Jacobian and of its constant ones (dy0/dt = y3, dy1/dt = y4, dy2/dt = y5).
_JAC_POS = torch.tensor([18, 19, 20, 21, 24, 25, 28, 30, 32, 35])
_JAC_BASE = torch.zeros(36, dtype=torch.float64).index_fill_(0, torch.tensor([3, 10, 17]), 1.0)


def _jacobian(p: dict[str, torch.Tensor], state: torch.Tensor) -> torch.Tensor:
    y0, y1, y2 = state[..., 0], state[..., 1], state[..., 2]
    e0, v0, r = p["e0"], p["v0"], p["r"]
    Aa, Bb, a, b = p["A"] * p["a"], p["B"] * p["b"], p["a"], p["b"]
    g0 = _sigmoid_slope(y1 - y2, e0, v0, r)
    g1 = _sigmoid_slope(p["C1"] * y0, e0, v0, r)
    g2 = _sigmoid_slope(p["C3"] * y0, e0, v0, r)
    shape = torch.broadcast_shapes(y0.shape, a.shape)
    a2, Aag0 = -a * a, Aa * g0
    vals = torch.stack(
        torch.broadcast_tensors(
            a2, Aag0, -Aag0, -2 * a, Aa * p["C2"] * p["C1"] * g1, a2, -2 * a, Bb * p["C4"] * p["C3"] * g2, -b * b,
            -2 * b,
        ),
        dim=-1,
    )
    jac = _JAC_BASE.expand(shape + (36,)).index_copy(-1, _JAC_POS, vals)
    return jac.reshape(shape + (6, 6))


def _equilibrium_residual(y0, p):
    """Scalar equilibrium equation ``G(y0) = (A/a) S(v(y0)) - y0`` and ``v(y0)``."""
    e0, v0, r = p["e0"], p["v0"], p["r"]
    ke, ki = p["A"] / p["a"], p["B"] / p["b"]
    v = ke * (p["p_mean"] + p["C2"] * _integrate.sigmoid(p["C1"] * y0, e0, v0, r)) - ki * p["C4"] * _integrate.sigmoid(
        p["C3"] * y0, e0, v0, r
    )
    return ke * _integrate.sigmoid(v, e0, v0, r) - y0, v


def _equilibrium_residual_slope(y0, v, p):
    e0, v0, r = p["e0"], p["v0"], p["r"]
    ke, ki = p["A"] / p["a"], p["B"] / p["b"]
    dv = ke * p["C2"] * p["C1"] * _sigmoid_slope(p["C1"] * y0, e0, v0, r) - ki * p["C4"] * p[
        "C3"
    ] * _sigmoid_slope(p["C3"] * y0, e0, v0, r)
    return ke * _sigmoid_slope(v, e0, v0, r) * dv - 1.0


def _gather(p: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in p.items()}


def _refine_roots(lo, hi, p, scale, max_iter: int = 100, start=None):
    """Safeguarded Newton on bracketed roots of the equilibrium equation.

    Newton steps that leave the bracket are replaced by bisection, so the
    iteration always converges; it stops once every step is below
    ``4 eps * scale``. ``start`` (inside the bracket) replaces the midpoint
    as the first iterate (a warm start).
    """
    pos_lo = _equilibrium_residual(lo, p)[0] > 0
    x = 0.5 * (lo + hi) if start is None else start
    tol = 4 * torch.finfo(torch.float64).eps * scale
    for _ in range(max_iter):
        g, v = _equilibrium_residual(x, p)
        same_as_lo = (g > 0) == pos_lo
        lo = torch.where(same_as_lo, x, lo)
        hi = torch.where(same_as_lo, hi, x)
        x_new = x - g / _equilibrium_residual_slope(x, v, p)
        # closed bracket: a converged iterate sits on the end it has just replaced
        outside = ~((x_new >= torch.minimum(lo, hi)) & (x_new <= torch.maximum(lo, hi)))
        x_new = torch.where(outside, 0.5 * (lo + hi), x_new)
        step = (x_new - x).abs()
        x = x_new
        if bool((step <= tol).all()) or bool(((hi - lo).abs() <= tol).all()):
            break
    return x


def _initial_y0(initial_guess, shape: torch.Size, nb: int) -> torch.Tensor | None:
    """Validate a warm start for the equilibrium search; return ``y0`` of shape ``(nb,)`` or None."""
    if initial_guess is None:
        return None
    if isinstance(initial_guess, FixedPoints):
        initial_guess = initial_guess.state
    g = _checks.as_float_tensor("initial_guess", initial_guess).detach()
    if g.shape[-1:] != (6,):
        raise ValueError(
            f"initial_guess must be an equilibrium state of shape {tuple(shape) + (6,)} (batch shape + 6 states), "
            f"got shape {tuple(g.shape)}"
        )
    try:
        return torch.broadcast_to(g[..., 0], shape).reshape(nb)
    except RuntimeError:
        raise ValueError(
            f"initial_guess must have shape {tuple(shape) + (6,)} (batch shape + 6 states), got {tuple(g.shape)}"
        ) from None


def _fixed_points(
    params: dict[str, torch.Tensor],
    shape: torch.Size,
    grid_size: int,
    which: str | None = None,
    initial_guess: torch.Tensor | None = None,
) -> FixedPoints:
    """All equilibria; with ``which="upper"`` / ``"lower"`` only that one (``K`` axis dropped),
    skipping the eigenvalues of the others.

    ``initial_guess`` (``y0`` per parameter set, shape ``(nb,)``) is a warm
    start for Newton on the selected equilibrium; the grid still brackets it,
    so a guess near another equilibrium cannot select the wrong one.
    """
    nb = max(1, math.prod(shape))
    flat = {k: v.reshape(nb) for k, v in params.items()}
    with torch.no_grad():
        pd = {k: v.detach() for k, v in flat.items()}
        y_max = 2.0 * pd["e0"] * pd["A"] / pd["a"]  # roots lie in (0, y_max)
        u = torch.linspace(0.0, 1.0, grid_size, dtype=torch.float64)
        grid = y_max[:, None] * u
        pc = {k: v[:, None] for k, v in pd.items()}
        g, _ = _equilibrium_residual(grid, pc)
        pos = g > 0
        change = pos[:, :-1] != pos[:, 1:]
        # extrema between grid points that may dip through zero (pairs of
        # roots closer than the grid spacing, near a fold)
        d = g[:, 1:] - g[:, :-1]
        interior_min = (d[:, :-1] < 0) & (d[:, 1:] > 0) & pos[:, 1:-1]
        interior_max = (d[:, :-1] > 0) & (d[:, 1:] < 0) & ~pos[:, 1:-1]
        same = (pos[:, :-2] == pos[:, 1:-1]) & (pos[:, 2:] == pos[:, 1:-1])
        candidates = (interior_min | interior_max) & same
        fast = which is not None
        if fast and bool(candidates.any()):
            # An extremum between grid points whose neighbours share its sign (the
            # S-shaped residual nearly always has one) might hide a pair of roots.
            # Certify cheaply that none does: sample G on a fine local grid; the
            # residual cannot dip below the sampled extremum by more than
            # h^2 max|G''| / 8 ~ max|second difference| / 8 between samples, so a
            # sampled extremum beyond twice that cannot cross zero. Anything less
            # clear-cut takes the full search (ternary search for the extremum).
            cb, ck = torch.nonzero(candidates, as_tuple=True)
            j = ck + 1
            left, right = grid[cb, j - 1], grid[cb, j + 1]
            xf = left[:, None] + (right - left)[:, None] * torch.linspace(0.0, 1.0, 65, dtype=torch.float64)
            gf = _equilibrium_residual(xf, {k: v[cb][:, None] for k, v in pd.items()})[0]
            sg = torch.where(pos[cb, j], 1.0, -1.0)[:, None] * gf
            d2 = (gf[:, 2:] - 2.0 * gf[:, 1:-1] + gf[:, :-2]).abs().amax(1)
            fast = bool((sg.amin(1) > 2.0 * d2).all())
    if fast:
        # Every root is bracketed by a sign change of the grid (G(0) > 0 > G(y_max),
        # so there is at least one): refine only the selected one.
        with torch.no_grad():
            k_all = torch.arange(grid_size - 1)
            if which == "upper":
                k_sel = torch.where(change, k_all, -1).amax(1)
            else:
                k_sel = torch.where(change, k_all, grid_size).amin(1)
            rows = torch.arange(nb)
            lo, hi = grid[rows, k_sel], grid[rows, k_sel + 1]
            start = None
            if initial_guess is not None:
                inside = (initial_guess > torch.minimum(lo, hi)) & (initial_guess < torch.maximum(lo, hi))
                start = torch.where(inside, initial_guess, 0.5 * (lo + hi))
            y0_star = _refine_roots(lo, hi, pd, y_max, start=start)[:, None]
            valid = torch.ones((nb, 1), dtype=torch.bool)
            count = change.sum(1)
            n_max = 1
        return _equilibria_at(flat, shape, y0_star, valid, count, n_max, which)
    with torch.no_grad():
        # 1) sign changes between neighbouring grid points
        b_idx, k_idx = torch.nonzero(change, as_tuple=True)
        lo, hi = grid[b_idx, k_idx], grid[b_idx, k_idx + 1]
        # 2) extrema between grid points that may dip through zero
        cb, ck = torch.nonzero(candidates, as_tuple=True)
        if cb.numel():
            ck = ck + 1
            pg = _gather(pd, cb)
            sgn = torch.where(pos[cb, ck], 1.0, -1.0)
            left, right = grid[cb, ck - 1], grid[cb, ck + 1]
            for _ in range(60):  # ternary search for the extremum of sgn * g
                m1 = left + (right - left) / 3
                m2 = right - (right - left) / 3
                g1 = sgn * _equilibrium_residual(m1, pg)[0]
                g2 = sgn * _equilibrium_residual(m2, pg)[0]
                move_left = g1 > g2
                left = torch.where(move_left, m1, left)
                right = torch.where(move_left, right, m2)
            x_ext = 0.5 * (left + right)
            crosses = (sgn * _equilibrium_residual(x_ext, pg)[0]) <= 0
            if bool(crosses.any()):
                cb, ck, x_ext = cb[crosses], ck[crosses], x_ext[crosses]
                b_idx = torch.cat([b_idx, cb, cb])
                lo = torch.cat([lo, grid[cb, ck - 1], x_ext])
                hi = torch.cat([hi, x_ext, grid[cb, ck + 1]])
        pb = _gather(pd, b_idx)
        start = None
        if initial_guess is not None:
            guess = initial_guess[b_idx]
            inside = (guess > torch.minimum(lo, hi)) & (guess < torch.maximum(lo, hi))
            start = torch.where(inside, guess, 0.5 * (lo + hi))
        roots = _refine_roots(lo, hi, pb, y_max[b_idx], start=start)
        count = torch.bincount(b_idx, minlength=nb)
        n_max = max(1, int(count.max()))
        order = torch.argsort(b_idx.to(torch.float64) * 4.0 + roots / y_max[b_idx])
        b_sorted, roots = b_idx[order], roots[order]
        start = torch.cumsum(count, 0) - count
        slot = torch.arange(b_sorted.numel()) - start[b_sorted]
        y0_star = torch.full((nb, n_max), 0.5, dtype=torch.float64) * y_max[:, None]
        y0_star[b_sorted, slot] = roots
        valid = torch.zeros((nb, n_max), dtype=torch.bool)
        valid[b_sorted, slot] = True
        if which is not None:
            pick = (count - 1).clamp(min=0) if which == "upper" else torch.zeros_like(count)
            y0_star = y0_star.gather(1, pick[:, None])
            valid = valid.gather(1, pick[:, None])
            n_max = 1
    return _equilibria_at(flat, shape, y0_star, valid, count, n_max, which)


def _equilibria_at(flat, shape, y0_star, valid, count, n_max, which) -> FixedPoints:
    """FixedPoints from converged roots ``y0_star`` (nb, K), differentiable by one Newton step."""
    # Differentiable Newton step (implicit function theorem) at the root.
    pk = {k: v[:, None] for k, v in flat.items()}
    g, v_star = _equilibrium_residual(y0_star, pk)
    y0 = y0_star - g / _equilibrium_residual_slope(y0_star, v_star, pk).detach()
    _, v = _equilibrium_residual(y0, pk)
    ke, ki = pk["A"] / pk["a"], pk["B"] / pk["b"]
    e0, v0, r = pk["e0"], pk["v0"], pk["r"]
    y1 = ke * (pk["p_mean"] + pk["C2"] * _integrate.sigmoid(pk["C1"] * y0, e0, v0, r))
    y2 = ki * pk["C4"] * _integrate.sigmoid(pk["C3"] * y0, e0, v0, r)
    zeros = torch.zeros_like(y0)
    state = torch.stack([y0, y1, y2, zeros, zeros, zeros], dim=-1)
    jac = _jacobian(pk, state)
    ev = torch.linalg.eigvals(jac)
    ev = torch.gather(ev, -1, torch.argsort(ev.real.detach(), dim=-1, descending=True))
    stable = ev.real.detach().amax(-1) < 0
    dom = ev[..., 0]
    freq = dom.imag.abs() / (2 * math.pi)
    out_shape = tuple(shape)
    if which is not None and n_max == 1 and bool(valid.all()):
        # one equilibrium per set, all found: no padding to mask, no K axis to pick from
        return FixedPoints(
            state.reshape(out_shape + (6,)),
            v.reshape(out_shape),
            ev.reshape(out_shape + (6,)),
            stable.reshape(out_shape),
            freq.reshape(out_shape),
            valid.reshape(out_shape),
            count.reshape(out_shape),
        )
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    state = torch.where(valid[..., None], state, nan)
    v = torch.where(valid, v, nan)
    ev = torch.where(valid[..., None], ev, torch.complex(nan, nan))
    freq = torch.where(valid, freq, nan)
    stable = stable & valid
    fp = FixedPoints(
        state.reshape(out_shape + (n_max, 6)),
        v.reshape(out_shape + (n_max,)),
        ev.reshape(out_shape + (n_max, 6)),
        stable.reshape(out_shape + (n_max,)),
        freq.reshape(out_shape + (n_max,)),
        valid.reshape(out_shape + (n_max,)),
        count.reshape(out_shape),
    )
    return fp if which is None else fp._take(torch.zeros_like(fp.count))
