"""Observation models: from Jansen-Rit parameters to predicted EEG spectra and evoked potentials.

An observation model turns a dictionary of parameter tensors (JR constants
plus its own observation parameters, all batched over the same leading
dimensions) into a prediction in the data's units, a log-likelihood and
noisy samples. It knows nothing of priors or inference.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch

from jrinfer import _checks
from jrinfer.model import PARAMETERS as MODEL_PARAMETERS
from jrinfer.model import JansenRit, PulseInput

if TYPE_CHECKING:  # pragma: no cover
    from jrinfer.data import EvokedData, SpectrumData
    from jrinfer.prior import Prior

__all__ = ["SpectrumObservation", "EvokedObservation", "Prediction"]

_POWER_UNIT_PER_MV2 = {"V^2/Hz": 1e-6, "mV^2/Hz": 1.0, "uV^2/Hz": 1e6}
_VOLT_UNIT_PER_MV = {"V": 1e-3, "mV": 1.0, "uV": 1e3}


class Prediction(NamedTuple):
    """A batch of predictions.

    Attributes
    ----------
    value : torch.Tensor
        Predicted data, shape ``(*batch, n_points)`` in the data's units
        (power per frequency, or potential per time sample).
    valid : torch.Tensor
        Bool, shape ``batch``: False where the prediction is undefined (the
        log-likelihood is then ``-inf``).
    reasons : list of str
        For each invalid entry (in flattened batch order), why.
    """

    value: torch.Tensor
    valid: torch.Tensor
    reasons: list[str]


def _split(params: dict[str, torch.Tensor], own: tuple[str, ...]) -> tuple[dict, dict]:
    model = {k: v for k, v in params.items() if k in MODEL_PARAMETERS}
    obs = {k: v for k, v in params.items() if k in own}
    unknown = [k for k in params if k not in MODEL_PARAMETERS and k not in own]
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown}; expected Jansen-Rit parameters {list(MODEL_PARAMETERS)} "
            f"or observation parameters {list(own)}"
        )
    return model, obs


def _batch_shape(params: dict[str, torch.Tensor]) -> torch.Size:
    try:
        return torch.broadcast_shapes(*(torch.as_tensor(v).shape for v in params.values()))
    except RuntimeError:
        shapes = {k: tuple(torch.as_tensor(v).shape) for k, v in params.items()}
        raise ValueError(f"parameter batch shapes do not broadcast: {shapes}") from None


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Differentiable linear interpolation of ``fp(xp)`` (last axis) at points ``x``."""
    idx = torch.searchsorted(xp, x).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    w = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return fp[..., idx - 1] * (1 - w) + fp[..., idx] * w


class SpectrumObservation:
    """Power spectrum of the JR output seen through the scalp.

    Predicted power on the data's frequency grid (data units per Hz)::

        P(f) = gain^2 * u * PSD_v(f) + ap_amplitude * f^(-ap_exponent) + floor

    where ``PSD_v`` is the JR output's PSD in mV^2/Hz and ``u`` converts mV^2
    to the data's units (1e6 for uV^2, 1e-6 for V^2).

    Parameters
    ----------
    method : {"transfer", "simulation"}
        ``"transfer"``: linearised JR at its upper equilibrium driven by white
        noise (exact for small noise, cheap, smooth). Parameter sets whose
        equilibrium is unstable get ``-inf`` likelihood with a reason.
        ``"simulation"``: simulate (stochastic Heun) and Welch-average; valid
        in every regime, seeded (common random numbers, so the prediction is a
        deterministic function of the parameters).
    likelihood : {"gaussian", "whittle"}
        ``"gaussian"``: Gaussian on log-power with precision
        ``exp(log_precision)`` (a parameter; DCM style). ``"whittle"``: each
        power value is Gamma distributed with shape ``K = data.n_segments``
        (Welch estimate averaging ``K`` independent segments) and mean ``P``.
    noise, noise_on : str
        Passed to :class:`~jrinfer.JansenRit` (noise convention and noisy
        populations).
    aperiodic, floor : bool
        Include the ``1/f`` and white-floor components (when False their
        parameters are not used).
    dt, duration, transient, seed : float, float, float, int
        ``method="simulation"`` only: integration step (s), simulated time
        (s), discarded transient (s) and noise seed.
    segment : float, optional
        ``method="simulation"`` only: Welch segment length (s) of the
        simulation's spectrum. Default: the data's segment length (see
        *Segment length* below) so that simulation and data are seen through
        the same spectral window, else 4 s.
    window : {"hann", "boxcar"} or None
        Taper of the data's Welch segments. ``method="transfer"`` predicts
        the expectation of that estimator: the PSD convolved with the
        segment's spectral window (:func:`jrinfer.spectral.spectral_window`),
        not the PSD at the bin centres (``window=None``). Below the first Hopf
        point the linearised alpha peak is narrower than a bin (full width
        0.13 Hz with the JR 1995 constants at ``p_mean = 60``, 0.02 Hz at 85),
        and point evaluation makes the likelihood jagged in the peak frequency. ``method="simulation"``:
        the taper of the simulation's Welch estimate (Hann for ``None``).
    oversample : int
        ``window`` only: fine-grid points per ``min(bin spacing, 1/L)`` for
        the smooth part of the spectrum (:func:`jrinfer.spectral.window_matrix`).
        The sharp alpha pole is handled exactly, so 2 suffices: over 218
        stable default-prior draws the largest relative difference from
        ``oversample=32`` is 2e-8 (4.7e-7 with 1).

    Notes
    -----
    *Windowed prediction.* The expectation is linear in the PSD, so the neural
    PSD is split into the least-damped pole pair (the alpha resonance, from
    :meth:`jrinfer.JansenRit.dominant_mode`), whose expected Welch estimate
    is computed in closed form (:func:`jrinfer.spectral.windowed_pole_psd`),
    and a smooth remainder, evaluated on a fine grid and convolved with the
    spectral window by a precomputed weight matrix (cached per data grid).
    The aperiodic and floor terms are smooth on the scale of ``1/L`` and are
    added on the data grid, unconvolved. The window is treated as
    continuous-time (valid well below the sampling rate's Nyquist frequency).

    *Segment length* ``L``: ``data.metadata["seg_length_s"]`` when present
    (MNE and Bonn spectra), else ``1 / spacing`` of a uniform frequency grid
    (a CSV without zero padding). A non-uniform grid without
    ``seg_length_s`` raises a ValueError (pass ``window=None``, or add
    ``seg_length_s`` to the metadata).
    """

    #: Observation parameters (besides the JR constants), with units.
    PARAMETERS = {
        "gain": "dimensionless scalp gain (power scales with gain^2)",
        "ap_amplitude": "aperiodic power at 1 Hz, data units per Hz",
        "ap_exponent": "aperiodic exponent chi of 1/f^chi",
        "floor": "white noise floor, data units per Hz",
        "log_precision": "log precision of log-power residuals (gaussian likelihood)",
    }

    def __init__(
        self,
        *,
        method: str = "transfer",
        likelihood: str = "gaussian",
        noise: str = "white",
        noise_on: str = "input",
        aperiodic: bool = True,
        floor: bool = True,
        dt: float = 1e-4,
        duration: float = 30.0,
        transient: float = 5.0,
        segment: float | None = None,
        seed: int = 0,
        window: str | None = "hann",
        oversample: int = 2,
    ):
        _checks.check_option("method", method, ("transfer", "simulation"))
        _checks.check_option("likelihood", likelihood, ("gaussian", "whittle"))
        _checks.check_option("noise", noise, ("white", "jr1995_gaussian", "jr1995_uniform"))
        _checks.check_option("noise_on", noise_on, ("input", "all"))
        self.method = method
        self.likelihood = likelihood
        self.noise = noise
        self.noise_on = noise_on
        self.aperiodic = bool(aperiodic)
        self.floor = bool(floor)
        self.dt = _checks.check_scalar("dt", dt, positive=True)
        self.duration = _checks.check_scalar("duration", duration, positive=True)
        self.transient = _checks.check_scalar("transient", transient, positive=True, allow_zero=True)
        self.segment = None if segment is None else _checks.check_scalar("segment", segment, positive=True)
        if self.segment is not None and self.segment > self.duration:
            raise ValueError(f"segment ({segment} s) must not exceed duration ({duration} s)")
        if window is not None:
            _checks.check_option("window", window, ("hann", "boxcar"))
        if isinstance(oversample, bool) or not isinstance(oversample, int) or oversample < 1:
            raise ValueError(f"oversample must be an int >= 1, got {oversample!r}")
        self.window = window
        self.oversample = oversample
        self._window_cache: dict = {}
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = seed

    def __repr__(self) -> str:
        return (
            f"SpectrumObservation(method={self.method!r}, likelihood={self.likelihood!r}, noise={self.noise!r}, "
            f"noise_on={self.noise_on!r}, aperiodic={self.aperiodic}, floor={self.floor}, window={self.window!r})"
        )

    def parameter_names(self, data=None) -> tuple[str, ...]:
        """Every observation parameter this model knows (besides the JR constants)."""
        return tuple(self.PARAMETERS)

    def required_parameters(self, data=None) -> tuple[str, ...]:
        """Observation parameters this configuration uses."""
        names = ["gain"]
        if self.aperiodic:
            names += ["ap_amplitude", "ap_exponent"]
        if self.floor:
            names.append("floor")
        if self.likelihood == "gaussian":
            names.append("log_precision")
        return tuple(names)

    # ---------------------------------------------------------- prediction
    def neural_psd(
        self, model_params: dict[str, torch.Tensor], freqs: torch.Tensor, *, seg_length: float | None = None
    ) -> Prediction:
        """JR output PSD in mV^2/Hz, shape ``(*batch, F)``, with validity.

        With ``seg_length`` (s) and ``window`` set, ``method="transfer"``
        gives the expected Welch estimate with segments of that length (see
        the class notes), else the PSD at ``freqs``. ``method="simulation"``
        uses ``seg_length`` as its Welch segment unless ``segment`` was given.
        """
        model = JansenRit(noise=self.noise, noise_on=self.noise_on, **model_params)
        if self.method == "transfer":
            wm = None if seg_length is None or self.window is None else self._window_matrix(freqs, seg_length)
            lin = model.linear_psd(freqs if wm is None else wm.fine_freqs, dt=None if self.noise == "white" else self.dt)
            valid = lin.stable
            reasons = []
            if not bool(valid.all()):
                ev = lin.equilibrium.eigenvalues.real.amax(-1).detach().reshape(-1)
                fr = lin.equilibrium.dominant_frequency_hz.detach().reshape(-1)
                for i in torch.nonzero(~valid.reshape(-1)).flatten().tolist():
                    reasons.append(
                        f"upper equilibrium unstable (max Re(eigenvalue) = {float(ev[i]):.3g} 1/s at "
                        f"{float(fr[i]):.3g} Hz): oscillatory regime where the linearised spectrum does not apply; "
                        "use method='simulation' or a prior below the Hopf bifurcation"
                    )
            psd = lin.psd if wm is None else self._windowed(model, lin, freqs, wm)
            psd = torch.where(valid.unsqueeze(-1), psd, torch.ones_like(psd))
            return Prediction(psd, valid, reasons)
        from jrinfer.spectral import welch_psd

        fmax = float(freqs.max())
        record_every = max(1, int(1.0 / (self.dt * 4.0 * max(fmax, 1.0))))
        fs = 1.0 / (record_every * self.dt)
        # Start at the upper equilibrium where it is stable (no slow transient to
        # wait out), from rest where it is not (a deterministic run would otherwise
        # sit on the unstable equilibrium forever).
        upper = model.fixed_points().upper()
        start = torch.where(upper.stable.unsqueeze(-1), upper.state, torch.zeros_like(upper.state))
        sim = model.simulate(
            self.duration,
            self.dt,
            seed=self.seed,
            record_every=record_every,
            transient=self.transient,
            initial_state=start,
        )
        segment = self.segment or seg_length or 4.0
        nperseg = min(int(round(segment * fs)), sim.v.shape[-1])
        welch = welch_psd(sim.v, fs, nperseg=nperseg, window=self.window or "hann")
        valid = ~sim.diverged
        reasons = ["simulation diverged (non-finite values)"] * int((~valid).sum())
        logp = torch.log(welch.psd.clamp_min(1e-300))
        psd = torch.exp(_interp(freqs, welch.freqs, logp))
        psd = torch.where(valid.unsqueeze(-1), psd, torch.ones_like(psd))
        return Prediction(psd, valid, reasons)

    def _seg_length(self, data: "SpectrumData") -> float | None:
        """The data's Welch segment length in s (None when not needed); see the class notes."""
        if self.window is None and (self.method == "transfer" or self.segment is not None):
            return None
        seg = data.metadata.get("seg_length_s")
        if seg is not None:
            return _checks.check_scalar("data.metadata['seg_length_s']", seg, positive=True)
        f = data.freqs
        step = f.diff()
        if f.numel() >= 2 and float(step.max() - step.min()) <= 1e-6 * float(step.mean()):
            return 1.0 / float(step.mean())
        if self.method == "simulation":
            return None
        raise ValueError(
            f"window={self.window!r} needs the data's Welch segment length: data.metadata has no 'seg_length_s' and "
            f"data.freqs is not a uniform grid ({f.numel()} frequencies) to infer it from (1 / spacing); add "
            "metadata={'seg_length_s': ...} to the SpectrumData or use SpectrumObservation(window=None) for the "
            "PSD at the bin centres"
        )

    def _window_matrix(self, freqs: torch.Tensor, seg_length: float):
        """:func:`jrinfer.spectral.window_matrix` for this grid, computed once per grid and segment length."""
        from jrinfer.spectral import window_matrix

        key = (freqs.numel(), float(seg_length), self.window, self.oversample)
        entries = self._window_cache.setdefault(key, [])
        for grid, wm in entries:
            if torch.equal(grid, freqs):
                return wm
        wm = window_matrix(freqs, seg_length, window=self.window, oversample=self.oversample)
        entries.append((freqs.detach().clone(), wm))
        return wm

    def _windowed(self, model: JansenRit, lin, freqs: torch.Tensor, wm) -> torch.Tensor:
        """Expected Welch estimate: exact for the alpha pole pair, weight matrix for the smooth rest."""
        from jrinfer.spectral import pole_psd, windowed_pole_psd

        lam, res = model.dominant_mode(lin.equilibrium, dt=None if self.noise == "white" else self.dt)
        ok = lam.real < 0  # unstable sets are masked by the caller; keep their values finite
        lam = torch.where(ok, lam, torch.full_like(lam, -1.0))
        res = torch.where(ok, res, torch.zeros_like(res))
        rest = lin.psd - pole_psd(wm.fine_freqs, lam, res)
        return rest @ wm.weights.T + windowed_pole_psd(freqs, lam, res, wm.seg_length, wm.window)

    def predict(self, params: dict[str, torch.Tensor], data: "SpectrumData") -> Prediction:
        """Predicted power on ``data.freqs`` in ``data.units``, shape ``(*batch, F)``."""
        model_params, obs = _split(params, self.parameter_names(data))
        missing = [n for n in self.required_parameters(data) if n not in obs and n != "log_precision"]
        if missing:
            raise ValueError(f"missing observation parameter(s) {missing} for {self!r}")
        freqs = data.freqs
        neural = self.neural_psd(model_params, freqs, seg_length=self._seg_length(data))
        u = _POWER_UNIT_PER_MV2[data.units]
        ex = lambda x: torch.as_tensor(x, dtype=torch.float64).unsqueeze(-1)  # noqa: E731
        power = ex(obs["gain"]) ** 2 * u * neural.value
        if self.aperiodic:
            f_safe = freqs.clamp_min(1e-3)
            power = power + ex(obs["ap_amplitude"]) * f_safe ** (-ex(obs["ap_exponent"]))
        if self.floor:
            power = power + ex(obs["floor"])
        return Prediction(power, neural.valid, neural.reasons)

    # --------------------------------------------------------- likelihood
    def log_likelihood(self, prediction: Prediction, params: dict[str, torch.Tensor], data: "SpectrumData"):
        """Log-likelihood of ``data`` (all channels), shape ``batch``; ``-inf`` where invalid.

        All channels are treated as independent observations of the same
        spectrum (average channels first if they differ systematically).
        """
        y = data.power  # (C, F)
        pred = prediction.value.unsqueeze(-2)  # (*batch, 1, F)
        if self.likelihood == "gaussian":
            if "log_precision" not in params:
                raise ValueError("the gaussian likelihood needs the parameter 'log_precision'")
            lam = torch.as_tensor(params["log_precision"], dtype=torch.float64)[..., None, None]
            r = torch.log(y) - torch.log(pred)
            ll = 0.5 * lam - 0.5 * math.log(2 * math.pi) - 0.5 * torch.exp(lam) * r * r
        else:
            k = self._segments(data)
            ll = k * math.log(k) - math.lgamma(k) + (k - 1) * torch.log(y) - k * torch.log(pred) - k * y / pred
        ll = ll.sum((-2, -1))
        return torch.where(prediction.valid, ll, torch.full_like(ll, -math.inf))

    def _segments(self, data) -> float:
        if data.n_segments is None:
            raise ValueError(
                "the whittle likelihood needs data.n_segments (the number of averaged Welch segments); "
                "give n_segments when building the SpectrumData or use likelihood='gaussian'"
            )
        return float(data.n_segments)

    def sample(self, prediction: Prediction, params, data, generator: torch.Generator) -> torch.Tensor:
        """Noisy power spectra drawn from the likelihood, shape ``(*batch, C, F)``."""
        pred = prediction.value.unsqueeze(-2).expand(prediction.value.shape[:-1] + data.power.shape)
        if self.likelihood == "gaussian":
            lam = torch.as_tensor(params["log_precision"], dtype=torch.float64)[..., None, None]
            eps = torch.randn(pred.shape, dtype=torch.float64, generator=generator)
            return pred * torch.exp(eps * torch.exp(-0.5 * lam))
        k = self._segments(data)
        # Gamma(k, scale = pred / k) via torch's standard gamma with an explicit generator
        g = torch._standard_gamma(torch.full(pred.shape, k, dtype=torch.float64), generator=generator)
        return pred * g / k

    # -------------------------------------------------------- default prior
    def default_prior(
        self, data: "SpectrumData", *, free: tuple[str, ...] = ("A", "B", "a", "b", "C", "p_mean")
    ) -> "Prior":
        """DCM-style default prior for fitting ``data``, adapted to its units and scale.

        JR constants: :func:`jrinfer.prior.jansen_rit_prior` (log-normal around
        JR 1995; ``p_mean`` in 40-85 pulses/s for ``method="transfer"`` so
        most mass sits below the first Hopf point; 40-300 for simulation).
        ``p_std`` is fixed at 1 for the transfer method (the gain absorbs the
        input scale exactly).

        Observation parameters are scaled to the data so the same call works
        for V^2/Hz, mV^2/Hz or uV^2/Hz:

        - ``gain``: log-normal, median such that the default model's
          band-integrated power equals the data's, sd_log 1.5;
        - ``ap_amplitude``: log-normal, median = the data's lowest-frequency
          power times that frequency (a 1/f line through the first point),
          sd_log 2;
        - ``ap_exponent``: log-normal, median 1, sd_log 0.5;
        - ``floor``: log-normal, median = 10 % of the data's smallest power,
          sd_log 2;
        - ``log_precision`` (gaussian likelihood): normal, mean
          ``log(n_segments)`` when known (the variance of a log-Welch estimate
          is about ``1/K``), else ``log(1/0.3^2)``, sd 2.
        """
        from jrinfer.prior import LogNormal, Normal, jansen_rit_prior

        p_range = (40.0, 85.0) if self.method == "transfer" else (40.0, 300.0)
        prior = jansen_rit_prior(kind="dcm", free=free, p_mean_range=p_range)
        fixed = dict(prior.fixed)
        if self.method == "transfer" and "p_std" not in free:
            fixed["p_std"] = 1.0
        centre = {n: float(d.median) if hasattr(d, "median") else float(d.mean) for n, d in prior.distributions.items()}
        ref_params = {**{k: v for k, v in fixed.items() if k in MODEL_PARAMETERS}, **centre}
        neural = self.neural_psd({k: torch.tensor(v, dtype=torch.float64) for k, v in ref_params.items()}, data.freqs)
        u = _POWER_UNIT_PER_MV2[data.units]
        p = data.power.mean(0)
        if not bool(neural.valid):
            raise ValueError("the default JR parameters are outside the valid regime for this observation")
        gain0 = math.sqrt(float(torch.trapezoid(p, data.freqs) / torch.trapezoid(u * neural.value, data.freqs)))
        dists = dict(prior.distributions)
        dists["gain"] = LogNormal(gain0, 1.5)
        if self.aperiodic:
            f0 = max(float(data.freqs[0]), 0.5)
            dists["ap_amplitude"] = LogNormal(float(p[0]) * f0, 2.0)
            dists["ap_exponent"] = LogNormal(1.0, 0.5)
        if self.floor:
            dists["floor"] = LogNormal(0.1 * float(p.min()), 2.0)
        if self.likelihood == "gaussian":
            mean = math.log(data.n_segments) if data.n_segments else math.log(1 / 0.3**2)
            dists["log_precision"] = Normal(mean, 2.0)
        from jrinfer.prior import Prior

        return Prior(dists, fixed=fixed)


class EvokedObservation:
    """Evoked potential: the JR response to a transient input, seen by the channels.

    From the resting equilibrium (``p_std = 0``), a pulse
    ``q ((t - latency)/w)^n exp(-(t - latency)/w)`` (JR 1995's shape, ``n``
    fixed) is added to the external input; the deviation of ``v`` from rest
    is projected to the channels::

        x_c(t) = u * gain_c * L_c * (v(t) - v_rest) + baseline

    with ``L`` a lead-field vector (default ones; e.g. a column of an MNE
    forward model's gain matrix for the source) and ``u`` converting mV to
    the data's units. The gain is one parameter ``gain`` shared by all
    channels (the lead field carries the spatial pattern), or one parameter
    per channel ``gain_0, gain_1, ...`` with ``per_channel_gain=True``.
    Gaussian noise with precision ``exp(log_precision)``.

    Parameters
    ----------
    lead_field : array_like, optional
        Shape ``(n_channels,)``, dimensionless; default all ones.
    per_channel_gain : bool
        Fit a separate signed gain for every channel.
    shape_n : float
        Exponent ``n`` of the input pulse (JR 1995: 7).
    dt : float
        RK4 step in s (default 1 ms: with a = 100/s the RK4 error on an ERP is
        ~0.03 % of its peak, far below EEG noise; ``max(a, b) dt`` must stay small).
    """

    PARAMETERS = {
        "input_amplitude": "pulse amplitude scale q, pulses/s",
        "input_latency": "pulse onset after the stimulus, s",
        "input_width": "pulse time constant w, s (peak at latency + n w)",
        "gain": "signed source-to-channel gain (dimensionless)",
        "baseline": "offset in data units",
        "log_precision": "log precision of the residuals (1 / data units^2)",
    }

    def __init__(self, *, lead_field=None, per_channel_gain: bool = False, shape_n: float = 7.0, dt: float = 1e-3):
        self.lead_field = None if lead_field is None else _checks.as_float_tensor("lead_field", lead_field)
        if self.lead_field is not None:
            _checks.check_finite("lead_field", self.lead_field)
            if self.lead_field.dim() != 1:
                raise ValueError(f"lead_field must be 1-D (n_channels,), got shape {tuple(self.lead_field.shape)}")
        if not isinstance(per_channel_gain, bool):
            raise ValueError(f"per_channel_gain must be True or False, got {per_channel_gain!r}")
        self.per_channel_gain = per_channel_gain
        self.shape_n = _checks.check_scalar("shape_n", shape_n, positive=True)
        self.dt = _checks.check_scalar("dt", dt, positive=True)

    def __repr__(self) -> str:
        return (
            f"EvokedObservation(shape_n={self.shape_n:g}, dt={self.dt:g}, per_channel_gain={self.per_channel_gain}, "
            f"lead_field={'custom' if self.lead_field is not None else 'ones'})"
        )

    def _gain_names(self, data) -> tuple[str, ...]:
        if not self.per_channel_gain:
            return ("gain",)
        if data is None:
            raise ValueError("per_channel_gain=True: the gain parameter names depend on the data's channels")
        return tuple(f"gain_{c}" for c in range(data.values.shape[0]))

    def parameter_names(self, data=None) -> tuple[str, ...]:
        """Observation parameters for ``data`` (``gain`` or ``gain_0 .. gain_{C-1}``)."""
        return tuple(n for n in self.PARAMETERS if n != "gain") + self._gain_names(data)

    def required_parameters(self, data=None) -> tuple[str, ...]:
        return self.parameter_names(data)

    def predict(self, params: dict[str, torch.Tensor], data: "EvokedData") -> Prediction:
        """Predicted potentials, shape ``(*batch, C, T)`` in ``data.units``."""
        model_params, obs = _split(params, self.parameter_names(data))
        gain_names = self._gain_names(data)
        missing = [n for n in ("input_amplitude", "input_latency", "input_width", *gain_names) if n not in obs]
        if missing:
            raise ValueError(f"missing observation parameter(s) {missing} for {self!r}")
        shape = _batch_shape(params)
        model_params = {**model_params, "p_std": torch.tensor(0.0, dtype=torch.float64)}
        model_params = {k: torch.as_tensor(v, dtype=torch.float64).expand(shape) for k, v in model_params.items()}
        model = JansenRit(**model_params)
        fp = model.fixed_points()
        up, lo = fp.upper(), fp.lower()
        use_upper = up.stable
        valid = up.stable | lo.stable
        state = torch.where(use_upper.unsqueeze(-1), up.state, lo.state)
        v_rest = torch.where(use_upper, up.v, lo.v)
        state = torch.where(valid.unsqueeze(-1), state, torch.zeros_like(state))
        reasons = ["no stable resting equilibrium (the model oscillates without input)"] * int((~valid).sum())
        t0 = float(data.times[0])
        t1 = float(data.times[-1])
        duration = (t1 - t0) + 2 * self.dt
        onset = torch.as_tensor(obs["input_latency"], dtype=torch.float64) - t0
        pulse = PulseInput(q=obs["input_amplitude"], w=obs["input_width"], n=self.shape_n, onset=onset)
        sim = model.simulate(duration, self.dt, method="rk4", initial_state=state, pulse=pulse)
        v = sim.v - v_rest.unsqueeze(-1)
        v_t = _interp(data.times - t0, sim.time, v)  # (*batch, T)
        n_ch = data.values.shape[0]
        lf = torch.ones(n_ch, dtype=torch.float64) if self.lead_field is None else self.lead_field
        if lf.numel() != n_ch:
            raise ValueError(f"lead_field has {lf.numel()} entries but the data have {n_ch} channels")
        u = _VOLT_UNIT_PER_MV[data.units]
        ex = lambda x: torch.as_tensor(x, dtype=torch.float64)[..., None, None]  # noqa: E731
        if self.per_channel_gain:
            gains = torch.stack(torch.broadcast_tensors(*(torch.as_tensor(obs[n], dtype=torch.float64) for n in gain_names)), -1)
            gain = gains.unsqueeze(-1)  # (*batch, C, 1)
        else:
            gain = ex(obs["gain"])
        x = u * gain * lf[:, None] * v_t.unsqueeze(-2)
        if "baseline" in obs:
            x = x + ex(obs["baseline"])
        x = torch.where(valid[..., None, None], x, torch.zeros_like(x))
        return Prediction(x, valid, reasons)

    def log_likelihood(self, prediction: Prediction, params, data: "EvokedData"):
        """Gaussian log-likelihood summed over channels and times, shape ``batch``."""
        lam = torch.as_tensor(params["log_precision"], dtype=torch.float64)[..., None, None]
        r = data.values - prediction.value
        ll = (0.5 * lam - 0.5 * math.log(2 * math.pi) - 0.5 * torch.exp(lam) * r * r).sum((-2, -1))
        return torch.where(prediction.valid, ll, torch.full_like(ll, -math.inf))

    def sample(self, prediction: Prediction, params, data, generator: torch.Generator) -> torch.Tensor:
        """Noisy evoked potentials, shape ``(*batch, C, T)``."""
        lam = torch.as_tensor(params["log_precision"], dtype=torch.float64)[..., None, None]
        eps = torch.randn(prediction.value.shape, dtype=torch.float64, generator=generator)
        return prediction.value + eps * torch.exp(-0.5 * lam)

    def default_prior(self, data: "EvokedData", *, free: tuple[str, ...] = ("A", "B", "a", "b", "C")) -> "Prior":
        """Default prior for fitting ``data``: JR log-normals, pulse as in JR 1995, scale from the data.

        ``p_mean`` is fixed at 60 pulses/s (a stable resting state); the
        gain is normal around zero with a scale that maps a ~5 mV JR response
        to the data's peak amplitude; ``log_precision`` is normal around
        ``-log(var)`` of the data's first 10 % (baseline) samples.
        """
        from jrinfer.prior import LogNormal, Normal, Prior, jansen_rit_prior

        prior = jansen_rit_prior(kind="dcm", free=tuple(n for n in free if n != "p_mean"))
        fixed = {k: v for k, v in prior.fixed.items() if k != "p_std"}  # evoked runs are noise-free
        fixed["p_mean"] = 60.0
        dists = dict(prior.distributions)
        peak = float(data.values.abs().max())
        if peak == 0.0:
            raise ValueError("data.values are all zero: nothing to scale the default gain prior to")
        u = _VOLT_UNIT_PER_MV[data.units]
        dists["input_amplitude"] = LogNormal(0.5, 0.5)
        dists["input_latency"] = Normal(0.03, 0.02)
        dists["input_width"] = LogNormal(0.005, 0.3)
        if self.per_channel_gain:
            for c, name in enumerate(self._gain_names(data)):
                peak_c = float(data.values[c].abs().max()) or peak
                dists[name] = Normal(0.0, peak_c / (5.0 * u))
        else:
            dists["gain"] = Normal(0.0, peak / (5.0 * u))
        dists["baseline"] = Normal(0.0, 0.1 * peak)
        n_base = max(3, data.values.shape[-1] // 10)
        noise_var = float(data.values[:, :n_base].var()) or (0.05 * peak) ** 2
        dists["log_precision"] = Normal(-math.log(noise_var), 2.0)
        return Prior(dists, fixed=fixed)
