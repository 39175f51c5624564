"""Amortized neural posterior estimation (NPE) through sbi.

:class:`NPE` trains a normalising flow ``q(theta | x)`` on simulations of an
:class:`~jrinfer.InverseProblem` once; the :class:`AmortizedPosterior` it
returns then gives a :class:`~jrinfer.Posterior` for any new recording in
milliseconds (:meth:`AmortizedPosterior.condition`). ``NPE.fit(problem)`` is
train + condition, so NPE joins the backend contract like every backend.

What is simulated
-----------------
Parameters are drawn from the *bounded-box variant* of the problem's prior
(:func:`box_prior`: every log-normal becomes a log-uniform and every normal a
uniform between two prior quantiles; uniforms stay), observation parameters
(gain, aperiodic component, floor, noise precision) included. Each draw goes
through the observation exactly as data would: ``features(sample(predict))``,
i.e. the noise-free prediction (for spectra with ``method="simulation"`` a
simulated Welch spectrum, so the oscillatory regime is in the training set;
``method="transfer"`` stays available for the stable regime), the
observation's noise model, and its summary features (log-power on the data's
frequency grid, channels averaged; the waveform for evoked responses).
Simulations run in chunks (:mod:`jrinfer._chunks`): chunk ``i`` draws its
parameters and noise from ``chunk_seed(seed, i)`` only, so the training set
is a pure function of ``(seed, n_simulations, chunk_size)``, in one process
or on a Dask client (``client=``).

Failed simulations (an invalid prediction, such as an unstable equilibrium
under the transfer method or a diverged simulation; non-finite features; or
features beyond float32 range) are counted with their reasons and left out:
they never reach the network. The posterior is therefore conditional on a
successful simulation (the prior box restricted to where the observation
predicts), which the training report says.

For Jansen-Rit observations every draw is classified into a dynamical regime
from the fixed points of its constants (:meth:`jrinfer.JansenRit.regimes`): ``stable`` (stable
upper equilibrium), ``limit_cycle`` (no stable equilibrium: the model
oscillates) and ``lower_branch`` (upper equilibrium unstable, lower one
stable: the low-activity branch, bistable with the limit cycle between the
first Hopf point and the fold). The mix is reported for the training set and
for every posterior.

Summary features
----------------
The network sees the observation's features (spectra: log-power on the
grid) and, for spectra by default (``summary="log_power+shape"``),
:func:`spectral_shape_features` appended (peak frequency, half-power width,
height above the aperiodic line, harmonic excess at twice the peak,
flatness): functions of the same spectrum that a flow would otherwise have to
learn. On the test spectra they raise R^2 after three truncated rounds from
0.77-0.78 to 0.86-0.93 and the held-out accuracy of regime classifiers from
0.79-0.83 to 0.84-0.86 (``benchmarks/RESULTS.md``). ``summary="log_power"`` keeps
log-power only (the only choice for other data). The choice is saved with the
estimator and applied on load; estimators saved before it existed load as
``"log_power"`` and say so (``repr``, ``diagnostics["summary_features"]``).

Truncated sequential rounds
---------------------------
An amortized estimator trained on a wide box spends most simulations far
from any one recording. :meth:`AmortizedPosterior.refine` (``NPE.fit(...,
rounds=R)``, ``jrinfer fit --backend npe --rounds R``) adds rounds for one
recording (TSNPE, Deistler et al. 2022): each draws from the box prior
truncated to the current posterior's highest-density region, simulates
through :func:`simulate_training_set` and retrains on every round with the
ordinary NPE loss (the truncated prior is proportional to the prior inside
the region, so the posterior there is unchanged). The result is for that
recording only (not amortized); its calibration verdict is the round-0
estimator's.

Neural importance sampling
--------------------------
Every jrinfer observation's likelihood is known (``problem.log_likelihood``:
the noise model ``sample`` draws from, around a prediction that is a
deterministic function of the parameters), so the flow can be corrected
exactly: :meth:`AmortizedPosterior.condition` with ``importance_sampling=True``
(``NPE.fit(..., importance_sampling=True)``, ``jrinfer fit --backend npe
--importance-sampling``) weighs flow draws by box prior x likelihood / flow
density in flow coordinates, Pareto-smooths the weights and resamples
(Dax et al. 2023); ``diagnostics["pareto_k"]`` above 0.7 makes the status
``"warning"``. For ``method="simulation"`` the training simulations use a
seed per chunk while the likelihood uses the observation's own seed (common
random numbers, as every backend): the weights correct to the latter
posterior.

SMC from the flow
-----------------
Importance sampling needs a flow close to the posterior; at a few thousand
simulations the flow is far wider (Pareto k-hat 6-76 on the test spectra and
EEGMAT). ``condition(..., smc=True)`` (``NPE.fit(..., smc=True)``, ``jrinfer
fit --backend npe --smc``) instead moves the flow's draws in stages along
``q(z | x)^(1 - beta) [p_box(z) p(y | theta(z))]^beta`` from ``beta = 0`` to 1:
reweighting, resampling and Metropolis-Hastings moves at each stage
(tempered sequential Monte Carlo, Del Moral, Doucet & Jasra 2006;
:mod:`jrinfer.backends._tempering`), with the same target as importance
sampling. The flow only has to put mass near the posterior. Each particle
costs 60-130 likelihood evaluations (simulations): minutes, not
milliseconds, and not amortized. ``diagnostics["smc"]`` reports the stages,
acceptance, distinct draws and a log-evidence estimate; a bridge that stops
early or leaves most draws as copies makes the status ``"warning"``.

Precision and coordinates
-------------------------
jrinfer is float64; sbi works in float32. Features and parameters are cast
to float32 when handed to sbi, and posterior draws back to float64. The flow
models the box prior's unconstrained coordinates ``z`` (the logit of the
position in the box, in log space for log-uniform parameters), where the
prior is a standard logistic per parameter (sbi gets it as
:meth:`~jrinfer.Prior.to_torch` of the box pushed through its
``biject_to`` transform): the flow never has to represent the box's edges,
and no draw falls outside the support. ``|z|`` is clipped at 30, so draws
stay strictly inside the box after the float32 round trip.

Saving
------
:meth:`AmortizedPosterior.save` writes a directory with ``estimator.pt`` (the
flow's state dict and the training-feature statistics: tensors only, read
back with ``torch.load(weights_only=True)``; no pickle) and ``metadata.json``
(format version, the box prior and the prior it came from, observation
settings, the data template and feature grid, flow architecture, training
report, calibration, versions of jrinfer, sbi and torch, and the SHA-256 of
``estimator.pt``). :meth:`AmortizedPosterior.load` rebuilds the flow from the
metadata and refuses mismatches (another sbi minor version, a changed file,
an observation with other settings) with a message saying what differs.

References
----------
D. Greenberg, M. Nonnenmacher, J. Macke (2019), "Automatic posterior
transformation for likelihood-free inference", ICML (NPE-C, sbi's ``NPE``).
S. Talts, M. Betancourt, D. Simpson, A. Vehtari, A. Gelman (2018),
"Validating Bayesian inference algorithms with simulation-based calibration",
arXiv:1804.06788.
P. Lemos, A. Coogan, Y. Hezaveh, L. Perreault-Levasseur (2023), "Sampling-based
accuracy testing of posterior estimators for general inference" (TARP), ICML.
M. Deistler, P. J. Goncalves, J. H. Macke (2022), "Truncated proposals for
scalable and hassle-free simulation-based inference", NeurIPS (TSNPE).
M. Dax, S. R. Green, J. Gair, M. Puerrer, J. Wildberger, J. H. Macke, A. Buonanno,
B. Schoelkopf (2023), "Neural importance sampling for rapid and reliable
gravitational-wave inference", PRL 130:171403.
A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry (2024), "Pareto smoothed
importance sampling", JMLR 25:72.
P. Del Moral, A. Doucet, A. Jasra (2006), "Sequential Monte Carlo samplers",
J. R. Stat. Soc. B 68:411-436.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jrinfer import _checks
from jrinfer._chunks import chunk_seed, chunk_slices, map_chunks
from jrinfer._optional import optional_import
from jrinfer._rng import generator, seed_to_int
from jrinfer.backends._assembly import SMC_DISTINCT_FRACTION

__all__ = [
    "NPE",
    "AmortizedPosterior",
    "TrainingSet",
    "box_prior",
    "simulate_training_set",
    "spectral_shape_features",
    "FORMAT_VERSION",
    "SBC_ALPHA",
    "COVERAGE_LEVELS",
]

#: Version of the saved-estimator format (``metadata.json`` ``format_version``).
FORMAT_VERSION = 1
#: Family-wise level of the SBC uniformity tests (Bonferroni over parameters).
SBC_ALPHA = 0.05
#: Posterior mass in one regime above which the regime counts as resolved (``diagnostics["regime_verdict"]``).
REGIME_RESOLVED = 0.9
#: Credibility levels at which the marginal coverage is checked against nominal.
COVERAGE_LEVELS = (0.5, 0.8, 0.9, 0.95)
#: Chunk indices of the training seed, far beyond any training chunk's, that seed the held-out
#: calibration simulations and the network's training (initialisation, batches).
_HELD_OUT_INDEX = 1_000_000_007
_NETWORK_INDEX = 1_000_000_009
#: Chunk index of the training seed from which truncated round r's seed is chunk_seed(seed, _ROUNDS_INDEX + r).
_ROUNDS_INDEX = 1_000_000_021
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)
_ESTIMATOR_FILE = "estimator.pt"
_METADATA_FILE = "metadata.json"
#: The round-0 training simulations (parameters, features, validity), saved beside the estimator so that
#: truncated rounds of a loaded estimator do not re-simulate them (tensors only, read with weights_only=True).
_TRAINING_SET_FILE = "training_set.pt"
_FORMAT_NAME = "jrinfer-npe"


#: Seconds between two progress lines (training epochs; the simulation chunks use the same interval).
_PROGRESS_INTERVAL_S = 10.0


def _check_progress(progress):
    """``progress`` as False (silent), ``"auto"`` (a bar on a terminal, else lines), ``"bar"`` or ``"lines"``.

    ``True`` means ``"auto"``. Lines: one at the start of a step (simulation
    chunks, training, calibration), one at most every
    :data:`_PROGRESS_INTERVAL_S` seconds while it runs and one at its end,
    never a carriage return.
    """
    if progress is True:
        return "auto"
    if progress is False or progress is None:
        return False
    if progress in ("auto", "bar", "lines"):
        return progress
    raise ValueError(f"progress must be a bool or one of 'auto', 'bar', 'lines', got {progress!r}")


def _bars(progress) -> bool:
    """Whether ``progress`` shows tqdm bars (``"bar"``, or ``"auto"`` with stderr a terminal)."""
    if progress == "bar":
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return progress == "auto" and isatty is not None and bool(isatty())


def _sbi():
    return optional_import("sbi", purpose="neural posterior estimation (the npe backend)")


# ======================================================== prior boxes
def box_prior(prior, quantiles=(0.01, 0.99)):
    """The bounded-box variant of ``prior`` that NPE trains on.

    Each free parameter keeps its name and gets a bounded distribution between
    its ``quantiles`` under ``prior``: a :class:`~jrinfer.LogNormal` becomes a
    :class:`~jrinfer.LogUniform` (positive scales spanning decades keep equal
    mass per decade), a :class:`~jrinfer.Normal` a :class:`~jrinfer.Uniform`;
    uniform and log-uniform parameters are kept as they are. Fixed values and
    units are kept.

    Parameters
    ----------
    prior : Prior
    quantiles : (float, float)
        Lower and upper prior quantiles of the box, ``0 < q_lo < q_hi < 1``
        (default the central 98 %).

    Returns
    -------
    Prior
    """
    from jrinfer.prior import LogNormal, LogUniform, Normal, Prior, Uniform

    if not isinstance(prior, Prior):
        raise ValueError(f"prior must be a jrinfer.Prior, got {type(prior).__name__}")
    q_lo, q_hi = _check_quantiles(quantiles)
    dists = {}
    for name, d in prior.distributions.items():
        if isinstance(d, (Uniform, LogUniform)):
            dists[name] = d
        elif isinstance(d, LogNormal):
            dists[name] = LogUniform(d.quantile(q_lo), d.quantile(q_hi))
        elif isinstance(d, Normal):
            dists[name] = Uniform(d.quantile(q_lo), d.quantile(q_hi))
        else:
            raise ValueError(f"prior's {name!r} has a distribution with no bounded box: {d!r}")
    return Prior(dists, prior.fixed, prior.units)


def _check_quantiles(quantiles) -> tuple[float, float]:
    try:
        q_lo, q_hi = quantiles
    except (TypeError, ValueError):
        raise ValueError(f"box_quantiles must be a pair (q_lo, q_hi), got {quantiles!r}") from None
    q_lo = _checks.check_scalar("box_quantiles[0]", q_lo)
    q_hi = _checks.check_scalar("box_quantiles[1]", q_hi)
    if not 0.0 < q_lo < q_hi < 1.0:
        raise ValueError(f"box_quantiles must satisfy 0 < q_lo < q_hi < 1, got {quantiles!r}")
    return q_lo, q_hi


def _box_coordinates(prior, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``theta`` (``(n, p)`` natural units) in the box's own coordinates, and the box's bounds in them.

    ``log theta`` for a :class:`~jrinfer.LogUniform` parameter, ``theta`` for
    a :class:`~jrinfer.Uniform`: the coordinates in which the box prior is
    uniform. Returns ``(u, low, high)``, ``u`` of shape ``(n, p)``.
    """
    from jrinfer.prior import LogUniform

    theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1, prior.n_params)
    logs = torch.tensor([isinstance(d, LogUniform) for d in prior.distributions.values()])
    lo = torch.tensor([d.low for d in prior.distributions.values()], dtype=torch.float64)
    hi = torch.tensor([d.high for d in prior.distributions.values()], dtype=torch.float64)
    u = torch.where(logs, torch.log(theta.clamp_min(1e-300)), theta)
    return u, torch.where(logs, torch.log(lo), lo), torch.where(logs, torch.log(hi), hi)


def _box_contraction(prior, theta: torch.Tensor) -> torch.Tensor:
    """``1 - var(posterior) / var(box prior)`` per parameter, both in the box's coordinates (:func:`_box_coordinates`).

    The box prior is uniform there, so its variance is ``(high - low)^2 / 12``
    exactly: a posterior as flat as the box gives 0, a point 1. Unlike the
    logit coordinates the flow works in, where a few draws pressed against a
    bound (``|z|`` up to 30) inflate the variance without limit, the value is
    at least -2 (all mass split between the two bounds), and negative only
    for a posterior that puts more mass near the bounds than the box does
    (e.g. two regimes at either end).
    """
    u, lo, hi = _box_coordinates(prior, theta)
    var_box = (hi - lo) ** 2 / 12.0
    var_post = u.var(0) if u.shape[0] > 1 else torch.zeros_like(var_box)
    return 1.0 - var_post / var_box


#: Outer share of each parameter's box (in box coordinates) that counts as its edge.
BOX_EDGE = 0.02
#: Share of posterior draws in one edge of a parameter's box above which the posterior piles up there (a note, not a
#: warning: on 300 held-out simulations of the CI estimator 6.7 % of posteriors do, where the truth lies near a bound).
BOX_EDGE_SHARE = 0.5


def _box_edge_shares(prior, theta: torch.Tensor, edge: float = BOX_EDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Shares of draws ``theta`` in the lower and the upper ``edge`` of each parameter's box, ``(p,)`` each."""
    u, lo, hi = _box_coordinates(prior, theta)
    pos = (u - lo) / (hi - lo)
    return (pos < edge).to(torch.float64).mean(0), (pos > 1.0 - edge).to(torch.float64).mean(0)


class _FlowCoordinates:
    """The map between natural units and the coordinates the flow models: the box prior's unconstrained ones.

    ``z = logit`` of the position inside the box (in log space for
    log-uniform parameters), i.e. :meth:`Prior.to_unconstrained` of the box
    prior, under which every parameter's prior is the standard logistic.
    A flow on the box itself would have to represent sharp edges: for a
    parameter the data do not inform (posterior = the flat box), it smooths
    them into central mass and tails outside the box, whose restriction to
    the box then under-covers (on the Jansen-Rit spectra: 81 % coverage of
    the 90 % intervals); on the real line the same posterior is a smooth
    logistic and nothing leaks out of the support.
    """

    #: |z| is clipped here (theta within ~1e-13 of a bound relative to the width), so natural
    #: units stay strictly inside the box after the float32 round trip.
    Z_MAX = 30.0

    def __init__(self, prior):
        from jrinfer.prior import LogUniform, Uniform

        for name, d in prior.distributions.items():
            if not isinstance(d, (Uniform, LogUniform)):
                raise ValueError(f"NPE needs a bounded box prior (Uniform or LogUniform); {name!r} is {d!r}")
        self.prior = prior
        self.names = prior.names
        self.kinds = tuple("logit-log" if isinstance(d, LogUniform) else "logit" for d in prior.distributions.values())
        # the flow's prior: the box prior pushed through its unconstrained map (independent standard
        # logistics), built from Prior.to_torch() for sbi
        box = prior.to_torch()
        to_z = torch.distributions.biject_to(box.support).inv
        self.torch_prior = torch.distributions.TransformedDistribution(box, [to_z])

    def to_flow(self, theta: torch.Tensor) -> torch.Tensor:
        z = self.prior.to_unconstrained(torch.as_tensor(theta, dtype=torch.float64))
        return z.clamp(-self.Z_MAX, self.Z_MAX)

    def from_flow(self, z: torch.Tensor) -> torch.Tensor:
        """Natural units from flow coordinates (float32 from sbi), strictly inside the box."""
        z = torch.as_tensor(z).to(torch.float64).clamp(-self.Z_MAX, self.Z_MAX)
        return self.prior.from_unconstrained(z)


#: Drop of the per-round R^2 check (round 0 to the last round) beyond which refinement is reported as making the
#: fit worse: larger than the Monte-Carlo scatter of a 50-simulation check (about 0.01 between rounds here).
_ROUNDS_WORSE_R2 = 0.02

#: SMC from the flow: the particles of a stage keep moving until this fraction of them has moved since the stage's
#: resampling (or the move limit is reached); the final draws count as degenerate below
#: _assembly.SMC_DISTINCT_FRACTION distinct.
_SMC_MOVED = 0.9
#: Fewest particles SMC from the flow runs with: each stage keeps an effective sample size of half of them, and the
#: bridge stops when fewer than 5 can survive a reweighting.
SMC_MIN_PARTICLES = 20
#: Likelihood evaluations per particle measured over SMC runs from 4,000-simulation flows (test spectra, EEGMAT).
_SMC_TYPICAL_ROUNDS = (60, 130)


# ======================================================== regimes
def _regime_mix(codes: torch.Tensor | None, names, mask: torch.Tensor | None = None) -> dict | None:
    """``{regime: {"n": count, "fraction": share}}`` of ``codes`` into ``names`` (where ``mask``): the assembly's mix."""
    from jrinfer.backends._assembly import _regime_mix as mix

    if codes is None:
        return None
    return mix(codes if mask is None else codes[mask], names)


# ======================================================== summary features
#: What the network sees: the observation's features, or those and the spectral-shape features.
SUMMARIES = ("log_power", "log_power+shape")
#: Names of :func:`spectral_shape_features`' outputs, in order.
SHAPE_FEATURES = ("peak_frequency_hz", "log_peak_width_hz", "peak_height", "harmonic_excess", "log_flatness")
_HARMONIC_OFFSET_HZ = 1.5


def _interp_rows(f: torch.Tensor, grid: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (``(..., F)`` on ``grid``) linearly interpolated at ``f`` (``(...,)``), clamped to the grid."""
    f = f.clamp(float(grid[0]), float(grid[-1]))
    j = torch.searchsorted(grid, f.unsqueeze(-1).contiguous()).squeeze(-1).clamp(1, grid.numel() - 1)
    f0, f1 = grid[j - 1], grid[j]
    v0 = values.gather(-1, (j - 1).unsqueeze(-1)).squeeze(-1)
    v1 = values.gather(-1, j.unsqueeze(-1)).squeeze(-1)
    t = (f - f0) / (f1 - f0)
    return v0 + t * (v1 - v0)


def spectral_shape_features(log_power: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Shape features of log-power spectra that the log-power values carry only implicitly.

    The aperiodic background is a straight line in ``log P`` against
    ``log f``, fitted by least squares and refitted on the points at or below
    the first fit's median residual (so the peak does not lift it); ``r`` is
    the log-power above that line. The features, in the order of
    :data:`SHAPE_FEATURES`:

    - ``peak_frequency_hz``: frequency of the largest ``r`` (parabolic
      interpolation between grid points), Hz;
    - ``log_peak_width_hz``: log of the half-power full width of that peak,
      the distance between the frequencies where ``r`` has fallen by
      ``log 2`` on either side (linear interpolation; the grid's end where
      it does not fall that far), Hz (``2 gamma`` for a Lorentzian of
      half-width ``gamma``);
    - ``peak_height``: ``r`` at the peak (natural log units);
    - ``harmonic_excess``: ``r`` at twice the peak frequency minus the mean
      of ``r`` 1.5 Hz either side of it (0 when ``2 f`` + 1.5 Hz lies beyond
      the grid): a limit cycle's non-sinusoidal waveform puts power at the
      harmonic, a damped linear resonance does not;
    - ``log_flatness``: log of the spectral flatness (Wiener entropy), the
      mean of ``log P`` minus the log of the mean of ``P`` over the grid
      (0 for a flat spectrum, negative otherwise).

    Parameters
    ----------
    log_power : torch.Tensor
        Natural-log power, ``(..., F)``.
    freqs : torch.Tensor
        The increasing frequency grid, ``(F,)``, Hz (``F >= 5``).

    Returns
    -------
    torch.Tensor
        ``(..., 5)``, the dtype of ``log_power``.
    """
    L = torch.as_tensor(log_power)
    f = torch.as_tensor(freqs, dtype=L.dtype)
    if f.ndim != 1 or f.numel() < 5 or L.shape[-1] != f.numel():
        raise ValueError(f"freqs must be a 1-D grid of >= 5 points matching log_power's last axis "
                         f"({L.shape[-1]}), got shape {tuple(f.shape)}")
    if not bool((f[1:] > f[:-1]).all()) or float(f[0]) <= 0:
        raise ValueError("freqs must be positive and increasing")
    F = f.numel()
    finite = torch.isfinite(L).all(-1)
    L = torch.where(finite.unsqueeze(-1), L, torch.zeros_like(L))  # failed spectra: NaN features (set below)
    X = torch.stack([torch.ones_like(f), torch.log(f)], -1)  # (F, 2)

    def line(w):
        Xw = X * w.unsqueeze(-1)  # (..., F, 2)
        A = Xw.transpose(-1, -2) @ X  # (..., 2, 2)
        b = (Xw * L.unsqueeze(-1)).sum(-2)  # (..., 2)
        beta = torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)
        return beta @ X.T  # (..., F)

    r = L - line(torch.ones_like(L))
    below = (r <= r.median(-1, keepdim=True).values).to(L.dtype)
    r = L - line(below)
    idx = torch.arange(F)
    k = r.argmax(-1)
    km, kp = (k - 1).clamp(0, F - 1), (k + 1).clamp(0, F - 1)
    rk = r.gather(-1, k.unsqueeze(-1)).squeeze(-1)
    rm = r.gather(-1, km.unsqueeze(-1)).squeeze(-1)
    rp = r.gather(-1, kp.unsqueeze(-1)).squeeze(-1)
    curv = rm - 2 * rk + rp
    interior = (k > 0) & (k < F - 1) & (curv < 0)
    delta = torch.where(interior, 0.5 * (rm - rp) / torch.where(interior, curv, torch.ones_like(curv)),
                        torch.zeros_like(rk)).clamp(-0.5, 0.5)
    step = torch.where(delta >= 0, f[kp] - f[k], f[k] - f[km])
    f_peak = f[k] + delta * step
    height = torch.where(interior, rk - 0.25 * (rm - rp) * delta, rk)
    level = height - math.log(2.0)
    low = r < level.unsqueeze(-1)
    kk = k.unsqueeze(-1)
    jl = torch.where(low & (idx < kk), idx, torch.full_like(idx, -1)).amax(-1)
    jr = torch.where(low & (idx > kk), idx, torch.full_like(idx, F)).amin(-1)

    def cross(j0):  # the level's crossing between grid points j0 and j0 + 1
        j0 = j0.clamp(0, F - 2)
        r0 = r.gather(-1, j0.unsqueeze(-1)).squeeze(-1)
        r1 = r.gather(-1, (j0 + 1).unsqueeze(-1)).squeeze(-1)
        t = ((level - r0) / torch.where(r1 != r0, r1 - r0, torch.ones_like(r0))).clamp(0, 1)
        return f[j0] + t * (f[j0 + 1] - f[j0])

    f_left = torch.where(jl >= 0, cross(jl), f[0].expand_as(f_peak))
    f_right = torch.where(jr < F, cross(jr - 1), f[-1].expand_as(f_peak))
    width = (f_right - f_left).clamp_min(1e-3 * float(f[1] - f[0]))
    h = 2 * f_peak
    o = _HARMONIC_OFFSET_HZ
    excess = _interp_rows(h, f, r) - 0.5 * (_interp_rows(h - o, f, r) + _interp_rows(h + o, f, r))
    excess = torch.where(h + o <= f[-1], excess, torch.zeros_like(excess))
    flat = L.mean(-1) - (torch.logsumexp(L, -1) - math.log(F))
    out = torch.stack([f_peak, torch.log(width), height, excess, flat], -1)
    return torch.where(finite.unsqueeze(-1), out, torch.full_like(out, math.nan))


def _default_summary(problem) -> str:
    """The summary features when none is asked for: shape features for spectra, the observation's features otherwise."""
    return "log_power+shape" if problem.observed().coord == "freq" else "log_power"


def _spectral_grid(problem) -> torch.Tensor | None:
    """The frequency grid (Hz) of a spectral problem's features, None for other data."""
    obs = problem.observed()
    return obs.coord_values.to(torch.float64) if obs.coord == "freq" else None


def _check_summary(summary, problem) -> str:
    if summary is None:
        return _default_summary(problem)
    _checks.check_option("summary", summary, SUMMARIES)
    if summary != "log_power" and problem.observed().coord != "freq":
        raise ValueError(f"summary={summary!r} needs spectra (features of a frequency axis); this problem's data are "
                         f"on a {problem.observed().coord} axis: use summary='log_power'")
    return summary


def _summary_features(problem, values: torch.Tensor, summary: str) -> torch.Tensor:
    """What the network sees for data-like ``values``: ``(*batch, n_features)``."""
    x = problem.observation.features(values, problem.data)
    if summary == "log_power+shape":
        x = torch.cat([x, spectral_shape_features(x, problem.observed().coord_values.to(x.dtype))], -1)
    return x


# ======================================================== simulation
@dataclass(frozen=True)
class TrainingSet:
    """Simulations of an inverse problem, the failed ones marked.

    Attributes
    ----------
    theta : torch.Tensor
        Parameter draws in natural units, ``(n, n_params)`` float64 (every
        draw, failed ones included).
    x : torch.Tensor
        Summary features, ``(n, n_features)`` float64 (NaN rows where a
        simulation failed before producing features).
    valid : torch.Tensor
        Bool ``(n,)``: the simulation succeeded (the rows used for training).
    reasons : tuple of str
        One reason per failed draw, in draw order.
    regime : torch.Tensor or None
        int64 ``(n,)`` codes into ``regime_names`` (observations with regimes only).
    seed, chunk_size : int
        The training set is a pure function of ``(seed, n, chunk_size)``.
    seconds : float
        Wall time of the simulation.
    """

    theta: torch.Tensor
    x: torch.Tensor
    valid: torch.Tensor
    reasons: tuple
    regime: torch.Tensor | None
    seed: int
    chunk_size: int
    seconds: float
    regime_names: tuple = ()

    @property
    def n(self) -> int:
        return int(self.valid.numel())

    def report(self) -> dict:
        """JSON-ready counts: simulations, failures by reason (one example each), regime mix, speed."""
        by_reason: dict[str, int] = {}
        examples: dict[str, str] = {}
        for r in self.reasons:
            key = r.split("(")[0].strip().rstrip(":;,") or r
            by_reason[key] = by_reason.get(key, 0) + 1
            examples.setdefault(key, r)
        n_failed = self.n - int(self.valid.sum())
        return {
            "n_simulations": self.n,
            "n_valid": self.n - n_failed,
            "n_failed": n_failed,
            "failed_fraction": n_failed / max(self.n, 1),
            "failures": [{"reason": examples[k], "n": v} for k, v in sorted(by_reason.items(), key=lambda kv: -kv[1])],
            "regime_mix": _regime_mix(self.regime, self.regime_names),
            "regime_mix_valid": _regime_mix(self.regime, self.regime_names, self.valid),
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "simulation_seconds": self.seconds,
            "simulations_per_second": self.n / self.seconds if self.seconds > 0 else None,
        }


def _simulate_chunk(theta, seed: int, problem, summary: str = "log_power") -> dict:
    """Simulate one chunk: features of ``theta`` (natural units) with noise from ``seed``.

    Top-level and free of global state, so that it pickles to worker
    processes and gives the same result wherever it runs.
    """
    theta = torch.as_tensor(theta, dtype=torch.float64)
    n = theta.shape[0]
    obs, data = problem.observation.with_seed(chunk_seed(seed, 0)), problem.data
    params = problem.parameters(theta)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # divergence is counted below, with its reason
        pred = obs.predict(params, data)
        y = obs.sample(pred, params, data, generator(chunk_seed(seed, 1)))
        x = _summary_features(problem, y, summary).reshape(n, -1)
    valid = pred.valid.reshape(n).clone()
    reasons: dict[int, str] = {}
    bad = torch.nonzero(~valid).flatten().tolist()
    given = list(pred.reasons)
    for k, i in enumerate(bad):
        reasons[i] = given[k] if len(given) == len(bad) else (given[0] if given else "invalid prediction")
    finite = torch.isfinite(x).all(-1)
    huge = torch.where(torch.isfinite(x), x.abs(), torch.zeros_like(x)).amax(-1) > _FLOAT32_MAX
    for i in torch.nonzero(valid & ~finite).flatten().tolist():
        reasons[i] = "non-finite summary features (NaN or inf in the simulated data's features)"
    for i in torch.nonzero(valid & finite & huge).flatten().tolist():
        reasons[i] = "blow-up: summary features beyond float32 range (|x| > 3.4e38)"
    ok = valid & finite & ~huge
    x = torch.where(ok.unsqueeze(-1), x, torch.full_like(x, math.nan))
    codes = problem.observation.regimes(params)
    regime = None if codes is None else codes.reshape(n)
    return {"x": x, "valid": ok, "reasons": reasons, "regime": regime}


def _log_likelihood_chunk(theta, problem) -> dict:
    """``problem.log_likelihood`` of one chunk of parameter sets (natural units), failures marked with reasons.

    Top-level, so that it pickles like :func:`_simulate_chunk`. Returns
    ``{"log_lik": (n,) float64 with -inf where invalid or not finite,
    "reasons": {index: reason}}``.
    """
    theta = torch.as_tensor(theta, dtype=torch.float64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # diverged simulations are counted below, with their reason
        params = problem.parameters(theta)
        pred = problem.observation.predict(params, problem.data)
        ll = problem.observation.log_likelihood(pred, params, problem.data).reshape(-1)
    valid = pred.valid.reshape(-1)
    reasons: dict[int, str] = {}
    bad = torch.nonzero(~valid).flatten().tolist()
    given = list(pred.reasons)
    for k, i in enumerate(bad):
        reasons[i] = given[k] if len(given) == len(bad) else (given[0] if given else "invalid prediction")
    for i in torch.nonzero(valid & ~torch.isfinite(ll)).flatten().tolist():
        reasons[i] = "non-finite log-likelihood (NaN or inf)"
    ok = valid & torch.isfinite(ll)
    return {"log_lik": torch.where(ok, ll, torch.full_like(ll, -math.inf)), "reasons": reasons}


def _chunk_arguments(problem, n: int, seed: int, chunk_size: int, theta=None, summary: str = "log_power") -> list[tuple]:
    """``(theta_chunk, chunk_seed, problem, summary)`` per chunk; parameters drawn from the chunk's own seed
    (or sliced from the given ``theta``)."""
    args = []
    for i, sl in enumerate(chunk_slices(n, chunk_size)):
        s = chunk_seed(seed, i)
        th = problem.prior.sample(sl.stop - sl.start, seed=chunk_seed(s, 2)) if theta is None else theta[sl]
        args.append((th, s, problem, summary))
    return args


def simulate_training_set(
    problem, n: int, *, seed: int = 0, chunk_size: int = 500, client=None, progress: bool = True, theta=None,
    summary: str | None = None, desc: str = "simulations",
) -> TrainingSet:
    """Draw ``n`` parameter sets from ``problem.prior`` and simulate their summary features.

    Parameters
    ----------
    problem : InverseProblem
        Its observation simulates, its prior is drawn from (give the box prior:
        :func:`box_prior`), its data fix the grid and units.
    n : int
        Number of simulations.
    seed : int
        Root seed: chunk ``i`` uses ``chunk_seed(seed, i)`` for its parameters
        and noise, so the result depends on ``(seed, n, chunk_size)`` only.
    chunk_size : int
        Simulations per chunk (part of the set's definition: it sets the seeds).
    client : dask.distributed.Client, optional
        Run the chunks on this client (:func:`jrinfer._chunks.map_chunks`).
    progress : bool or {"auto", "bar", "lines"}
        Progress over chunks on stderr: ``True``/``"auto"`` a bar on a
        terminal and lines elsewhere, ``"bar"``, ``"lines"`` (a line at most
        every 10 s and one at the end), ``False`` nothing.
    theta : torch.Tensor, optional
        ``(n, n_params)`` parameter sets in natural units to simulate instead
        of prior draws (the truncated rounds of :meth:`AmortizedPosterior.refine`);
        the noise still comes from the chunk seeds.
    summary : {None, "log_power", "log_power+shape"}
        The observation's features only, or with the spectral-shape features
        appended (:func:`spectral_shape_features`; spectra only). ``None``
        (default): as :class:`NPE`, shape features for spectra, the
        observation's features otherwise.
    desc : str
        Label of the progress bar.

    Returns
    -------
    TrainingSet
    """
    from jrinfer.problem import InverseProblem

    if not isinstance(problem, InverseProblem):
        raise ValueError(f"problem must be an InverseProblem, got {type(problem).__name__}")
    n = _checks.check_int("n_simulations", n, minimum=1)
    seed = seed_to_int(_checks.check_int("seed", seed, minimum=0))
    chunk_size = _checks.check_int("chunk_size", chunk_size, minimum=1)
    progress = _check_progress(progress)
    summary = _check_summary(summary, problem)
    if theta is not None:
        theta = torch.as_tensor(theta, dtype=torch.float64)
        if theta.shape != (n, problem.prior.n_params):
            raise ValueError(f"theta must have shape ({n}, {problem.prior.n_params}) (n, parameters), got "
                             f"{tuple(theta.shape)}")
    t0 = time.perf_counter()
    args = _chunk_arguments(problem, n, seed, chunk_size, theta, summary)
    results = map_chunks(_simulate_chunk, args, client=client, progress=progress, desc=desc)
    theta = torch.cat([a[0] for a in args])
    x = torch.cat([r["x"] for r in results])
    valid = torch.cat([r["valid"] for r in results])
    reasons = [r["reasons"][i] for r in results for i in sorted(r["reasons"])]
    regime = None if results[0]["regime"] is None else torch.cat([r["regime"] for r in results])
    return TrainingSet(theta, x, valid, tuple(reasons), regime, seed, chunk_size, time.perf_counter() - t0,
                       tuple(problem.observation.REGIMES))


# ======================================================== flows
_ARCHITECTURE_KEYS = ("density_estimator", "hidden_features", "num_transforms", "num_bins", "embedding")


def _flow_builder(architecture: dict):
    """sbi's builder of the density estimator for ``architecture`` (called with a batch ``(theta, x)``, which it z-scores on)."""
    _sbi()
    from sbi.neural_nets import posterior_nn

    kwargs = {
        "model": architecture["density_estimator"],
        "hidden_features": architecture["hidden_features"],
        "num_transforms": architecture["num_transforms"],
    }
    if architecture["density_estimator"] == "nsf":
        kwargs["num_bins"] = architecture["num_bins"]
    emb = architecture.get("embedding")
    if emb is not None:
        from sbi.neural_nets.embedding_nets import FCEmbedding

        kwargs["embedding_net"] = FCEmbedding(
            input_dim=emb["input_dim"], output_dim=emb["output_dim"], num_layers=emb["num_layers"],
            num_hiddens=emb["num_hiddens"],
        )
    return posterior_nn(**kwargs)


@contextlib.contextmanager
def _seeded(seed: int):
    """torch's global RNG seeded with ``seed`` inside the block and restored after it (sbi draws from it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % (2**63))
        yield


@contextlib.contextmanager
def _one_thread():
    """torch intra-op threads set to 1 inside the block (restored after).

    The flows are small (batches of a few hundred, layers of ~50 units): on 2
    cores, one thread trains as fast as two on a quiet machine and about ten
    times faster on a busy one, where the threads' synchronisation stalls.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


#: Quantile levels at which the training simulations' Mahalanobis distances and plain-words descriptors are
#: kept (0 and 1: their smallest and largest), for the out-of-distribution check's percentiles.
_OOD_LEVELS = 1001
#: Percentile of the training simulations' squared Mahalanobis distance above which the data count as outside
#: the training distribution (with a descriptor beyond every training simulation's value): on 1,000 held-out
#: simulations of the CI estimator, 0.6 % are flagged (benchmarks/RESULTS.md, benchmarks/npe_ood.py).
OOD_PERCENTILE = 99.7
#: Two-sided share of training simulations below which a descriptor is listed as unusual (a note, not a warning):
#: 7.6 % of 500 held-out simulations get the note at 1 % (14 % at 2 %, 30 % at 5 %; 11 descriptors).
_OOD_UNUSUAL = 0.01
#: Bands whose mean log-power above the fitted aperiodic line is a descriptor: (plain words, low Hz, high Hz).
_OOD_BANDS = (("power 2-7 Hz above the aperiodic line", 2.0, 7.0),
              ("power 7-14 Hz (alpha band) above the aperiodic line", 7.0, 14.0),
              ("power 17-26 Hz (a beta bump) above the aperiodic line", 17.0, 26.0),
              ("power 30-40 Hz above the aperiodic line", 30.0, 40.0))
#: Plain words of the spectral-shape features (:data:`SHAPE_FEATURES`) as descriptors.
_OOD_SHAPE_WORDS = ("alpha peak frequency (Hz)", "log of the peak's half-power width (Hz)",
                    "peak height above the aperiodic line (log units)", "power at twice the peak (harmonic excess)",
                    "spectral flatness (log)")


def _ood_descriptors(x: torch.Tensor, freqs: torch.Tensor | None) -> tuple[tuple, torch.Tensor] | tuple[tuple, None]:
    """Plain-words descriptors of spectral features ``x`` (``(n, F)`` log-power [+ the 5 shape features]).

    Overall level (mean log-power), aperiodic slope (least-squares slope of
    log-power against log-frequency), the mean residual above that line in
    the bands of :data:`_OOD_BANDS` that the grid covers, and the shape
    features when present. ``freqs`` None (not spectra): ``((), None)``.
    """
    if freqs is None:
        return (), None
    F = freqs.numel()
    L = x[:, :F].to(torch.float64)
    lf = torch.log(freqs.to(torch.float64))
    X = torch.stack([torch.ones_like(lf), lf], -1)
    beta = torch.linalg.lstsq(X, L.T).solution  # (2, n)
    r = L - (X @ beta).T
    names = ["overall level (mean log-power)", "aperiodic slope (log-power per log-frequency)"]
    cols = [L.mean(-1), beta[1]]
    for words, lo, hi in _OOD_BANDS:
        m = (freqs >= lo) & (freqs <= hi)
        if int(m.sum()) >= 2:
            names.append(words)
            cols.append(r[:, m].mean(-1))
    if x.shape[1] == F + len(SHAPE_FEATURES):
        names += list(_OOD_SHAPE_WORDS)
        cols += [x[:, F + j].to(torch.float64) for j in range(len(SHAPE_FEATURES))]
    return tuple(names), torch.stack(cols, -1)


def _feature_stats(x: torch.Tensor, freqs: torch.Tensor | None = None) -> dict:
    """Training-feature mean, covariance, Mahalanobis quantiles and descriptor quantiles, for the OOD check.

    ``freqs``: the spectra's grid (Hz) when the features are spectral, for
    the plain-words descriptors (:func:`_ood_descriptors`).
    """
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / max(x.shape[0] - 1, 1)
    cov = cov + 1e-6 * float(torch.diagonal(cov).mean()) * torch.eye(cov.shape[0], dtype=cov.dtype)
    chol = torch.linalg.cholesky(cov)
    d2 = _mahalanobis2(x, mean, chol)
    levels = torch.linspace(0, 1, _OOD_LEVELS, dtype=torch.float64)
    out = {
        "mean": mean,
        "chol": chol,
        "low": x.amin(0),
        "high": x.amax(0),
        "d2_quantiles": torch.quantile(d2, torch.tensor([0.5, 0.99, 0.999], dtype=d2.dtype)),
        "d2_max": d2.max(),
        # each simulation's distance with itself left out of the mean and covariance: distributed as a held-out
        # simulation's (the in-sample distances are smaller: q99 401 against 454 held-out on the CI estimator)
        "d2_grid": torch.quantile(_loo_mahalanobis2(d2, x.shape[0]), levels.to(d2.dtype)),
    }
    _, desc = _ood_descriptors(x, freqs)
    if desc is not None:
        out["descriptor_grid"] = torch.quantile(desc, levels, dim=0)  # (levels, n_descriptors)
        out["grid_freqs"] = freqs.to(torch.float64).clone()
    return out


def _loo_mahalanobis2(d2: torch.Tensor, n: int) -> torch.Tensor:
    """Leave-one-out squared Mahalanobis distances from the in-sample ones ``d2`` of ``n`` points.

    With the sample mean ``m`` and covariance ``S`` (denominator ``n - 1``),
    leaving point ``i`` out gives ``x_i - m_(i) = n c / (n - 1)`` and
    ``S_(i) = (n - 1) / (n - 2) (S - n c c^T / (n - 1)^2)`` with
    ``c = x_i - m``; by the Sherman-Morrison formula, with ``a = c^T S^-1 c``,
    ``d2_(i) = n^2 (n - 2) a / ((n - 1)^3 (1 - n a / (n - 1)^2))``.
    """
    n = float(n)
    a = d2.to(torch.float64)
    denom = (1.0 - n * a / (n - 1.0) ** 2).clamp_min(1e-12)
    return n * n * (n - 2.0) * a / ((n - 1.0) ** 3 * denom)


def _percentile(grid: torch.Tensor, value: float) -> float:
    """Percentage (0-100) of the training simulations below ``value``, from their quantiles ``grid`` (``(levels,)``).

    Ties count half (a value equal to many training values, such as a peak
    frequency at the grid's end, sits in the middle of them); 0 and 100 only
    strictly outside the training range.
    """
    g = grid.to(torch.float64).contiguous()
    v = torch.tensor([value], dtype=torch.float64)
    if value < float(g[0]):
        return 0.0
    if value > float(g[-1]):
        return 100.0
    m = g.numel() - 1

    def position(j_right: int) -> float:  # interpolated position of value between grid points j-1 and j
        if j_right <= 0:
            return 0.0
        if j_right > m:
            return float(m)
        lo, hi = float(g[j_right - 1]), float(g[j_right])
        return j_right - 1 + (0.0 if hi <= lo else (value - lo) / (hi - lo))

    left = int(torch.searchsorted(g, v, right=False)[0])  # first grid value >= value
    right = int(torch.searchsorted(g, v, right=True)[0])  # first grid value > value
    pos = position(left) if left == right else 0.5 * (left + right - 1)
    return 100.0 * min(max(pos, 0.0), m) / m


def _mahalanobis2(x: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    z = torch.linalg.solve_triangular(chol, (x - mean).T, upper=False)
    return (z * z).sum(0)


def _versions() -> dict:
    import jrinfer

    out = {"jrinfer": jrinfer.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}
    try:
        out["sbi"] = _sbi().__version__
    except ImportError:  # pragma: no cover - the backend needs sbi anyway
        out["sbi"] = None
    return out


# ======================================================== the amortized posterior
class AmortizedPosterior:
    """A trained neural posterior estimator: a posterior for any observation, in milliseconds.

    Made by :meth:`NPE.train` or :meth:`load`; not meant to be built by hand.

    Attributes
    ----------
    problem : InverseProblem
        The training problem: observation, box prior, and the data template
        (grid, units) that every conditioned recording must match.
    names : tuple of str
        Free parameters, the last axis of every draw.
    prior : Prior
        The box prior the posterior refers to.
    source_prior : dict
        The prior the box was derived from (JSON schema), for reference.
    architecture : dict
        Flow settings (sbi density estimator, sizes, embedding).
    training : dict
        Training report: simulations, failures by reason, regime mix,
        timings, epochs, convergence, validation log-probability.
    calibration : dict or None
        SBC and TARP results with a verdict (:meth:`calibrate`), if run (for
        a refined posterior: the round-0 estimator's).
    summary : {"log_power", "log_power+shape"}
        The summary features the flow sees (:func:`spectral_shape_features`).
    amortized : bool
        False for a posterior refined for one recording by :meth:`refine`
        (Deistler et al. 2022): it conditions on that recording only and
        cannot be saved or calibrated.
    """

    def __init__(self, net, problem, *, architecture, training, source_prior, box_quantiles, feature_stats,
                 calibration=None, summary="log_power", refined_for=None):
        self._net = net
        self._net.eval()
        self.problem = problem
        self.names = problem.names
        self.prior = problem.prior
        self.source_prior = source_prior
        self.box_quantiles = tuple(box_quantiles)
        self.architecture = dict(architecture)
        self.training = dict(training)
        self.calibration = calibration
        self._stats = feature_stats
        self._coords = _FlowCoordinates(problem.prior)
        self._posterior = None
        self.summary = _check_summary(summary, problem)
        #: features (float64) of the one recording a round-refined posterior is for; None when amortized
        self._refined_for = None if refined_for is None else torch.as_tensor(refined_for, dtype=torch.float64)
        self._training_set = None

    def __repr__(self) -> str:
        t = self.training
        cal = "not run" if not self.calibration else self.calibration.get("verdict", "?")
        return (
            f"AmortizedPosterior({len(self.names)} parameters {list(self.names)}, "
            f"{self.architecture['density_estimator']} flow, {t.get('n_valid')} of {t.get('n_simulations')} "
            f"simulations valid, features: {self.summary} ({self.n_features}) on {self._template_axis()}, "
            f"calibration: {cal})"
        )

    @property
    def amortized(self) -> bool:
        """False for a posterior refined by truncated rounds (:meth:`refine`): it is for one recording only."""
        return self._refined_for is None

    @property
    def n_features(self) -> int:
        return int(self._stats["mean"].numel())

    def _template_axis(self) -> str:
        obs = self.problem.observed()
        c = obs.coord_values
        return f"{obs.coord} {float(c[0]):g}-{float(c[-1]):g} {obs.coord_units} ({c.numel()} points, {obs.units})"

    @property
    def sbi_posterior(self):
        """sbi's ``DirectPosterior`` over flow coordinates (the box prior's unconstrained ``z``)."""
        if self._posterior is None:
            _sbi()
            from sbi.inference import DirectPosterior

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # sbi wraps the float64 box prior for float32
                self._posterior = DirectPosterior(self._net, self._coords.torch_prior)
        return self._posterior

    # --------------------------------------------------------- data
    def problem_for(self, data, *, resample: bool = False):
        """The :class:`~jrinfer.InverseProblem` of ``data`` under this estimator's observation and box prior.

        Parameters
        ----------
        data : SpectrumData or EvokedData
            A recording on the estimator's grid (values converted to the
            estimator's units when they differ).
        resample : bool
            Spectra on another frequency grid: interpolate log-power linearly
            onto the estimator's grid (which the data must cover) instead of
            refusing them. The data's Welch resolution is not changed by this.

        Raises
        ------
        ValueError
            ``data`` is of another kind, or on another grid without ``resample``.
        """
        from jrinfer.problem import InverseProblem

        template = self.problem.data
        resample = _checks.check_bool("resample", resample)
        self.problem.observation.check_data(data)
        if getattr(data, "units", None) != template.units:
            data = data.to_units(template.units)
        grid = self.problem.observed().coord_values
        got = self.problem.observation.observed_data(data).coord_values
        if got.shape != grid.shape or not torch.allclose(got, grid, rtol=1e-9, atol=1e-9):
            obs = self.problem.observed()
            desc = lambda c: f"{float(c[0]):g}-{float(c[-1]):g} {obs.coord_units} in {c.numel()} points"  # noqa: E731
            if not resample:
                raise ValueError(
                    f"data are on another {obs.coord} grid ({desc(got)}) than the estimator was trained on "
                    f"({desc(grid)}): compute the data on the estimator's grid, train an estimator on the data's grid, "
                    "or pass resample=True (CLI: --resample-grid) to interpolate them onto it"
                )
            if not callable(getattr(data, "interpolate", None)):
                raise ValueError(f"resample=True: {type(data).__name__} cannot be interpolated onto another grid "
                                 "(spectra can)")
            try:
                data = data.interpolate(grid)
            except ValueError as err:
                raise ValueError(f"resample=True: {err}; the estimator's grid must lie inside the data's") from None
        return InverseProblem(self.problem.observation, self.prior, data)

    def features(self, data, *, resample: bool = False) -> torch.Tensor:
        """Summary features of ``data`` as the network sees them, ``(n_features,)`` float64."""
        problem = self.problem_for(data, resample=resample)
        return _summary_features(problem, problem.observed().values, self.summary).reshape(-1)

    # --------------------------------------------------------- sampling
    def sample(self, data, n: int = 1000, *, seed: int = 0, resample: bool = False) -> torch.Tensor:
        """Posterior draws for ``data`` in natural units, ``(n, n_params)`` float64.

        ``data`` is a recording (see :meth:`problem_for`) or its summary
        features as a tensor ``(n_features,)``. Deterministic for a seed.
        """
        x = data if isinstance(data, torch.Tensor) else self.features(data, resample=resample)
        self._check_refined_for(torch.as_tensor(x, dtype=torch.float64).reshape(-1))
        n = _checks.check_int("n", n, minimum=1)
        seed = _checks.check_int("seed", seed, minimum=0)
        return self._coords.from_flow(self._sample_flow(x, n, seed))

    def _sample_flow(self, x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float64).reshape(1, -1)
        if x.shape[-1] != self.n_features:
            raise ValueError(f"features must have {self.n_features} entries, got {x.shape[-1]}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the data's summary features are not finite (zero or negative power?)")
        posterior = self.sbi_posterior  # built outside the seeded block: building it may draw from torch's RNG
        with _seeded(seed), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return posterior.sample((n,), x=x.to(torch.float32), show_progress_bars=False)

    def out_of_distribution(self, x: torch.Tensor) -> dict:
        """Where features ``x`` lie among the training simulations' (a misspecification check).

        An amortized flow extrapolates without a word where the data lie
        outside what it was trained on (Cannon et al. 2022; Schmitt et al.
        2023). Two measures, both against the training simulations (which are
        exchangeable with held-out ones: a new simulation's percentile is
        uniform):

        - the squared Mahalanobis distance ``d2`` of ``x`` from the training
          features, and its percentile among the training simulations' own;
        - per plain-words descriptor of a spectrum (overall level, aperiodic
          slope, band power above the aperiodic line, alpha peak frequency,
          width and height, harmonic excess, flatness:
          :func:`_ood_descriptors`), the percentile of the data's value among
          the training simulations'.

        ``outside`` is True when ``d2`` lies above the :data:`OOD_PERCENTILE`
        percentile of the training simulations' or a descriptor lies beyond
        every training simulation's value: on held-out simulations of the CI
        estimator that flags 0.6 % (``benchmarks/npe_ood.py``). Descriptors
        in the outer 1 % are listed as ``unusual`` (a note, not a warning:
        7.6 % of held-out simulations have one).

        Returns
        -------
        dict
            JSON-ready: ``mahalanobis2``, ``mahalanobis2_percentile`` (0-100),
            the training quantiles of ``d2``, ``n_features_outside_training_range``,
            ``descriptors`` (name -> ``{"value", "percentile", "training_median"}``),
            ``unusual`` (names, most extreme first), ``beyond_training``
            (descriptors outside every training simulation's range),
            ``outside`` (bool), ``threshold_percentile`` and ``reason``
            (a sentence, empty when not outside). Estimators saved before the
            percentiles existed give ``mahalanobis2_percentile`` None and
            flag ``d2`` above every training simulation's, as before.
        """
        x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
        s = self._stats
        d2 = float(_mahalanobis2(x[None], s["mean"], s["chol"])[0])
        outside_range = ((x < s["low"]) | (x > s["high"])).nonzero().flatten().tolist()
        q50, q99, q999 = (float(v) for v in s["d2_quantiles"])
        out = {
            "mahalanobis2": d2,
            "training_mahalanobis2_median": q50,
            "training_mahalanobis2_q99": q99,
            "training_mahalanobis2_q999": q999,
            "training_mahalanobis2_max": float(s["d2_max"]),
            "n_features_outside_training_range": len(outside_range),
            "threshold_percentile": OOD_PERCENTILE,
        }
        if "d2_grid" not in s:  # saved before the percentiles: the old rule, and say so
            outside = d2 > float(s["d2_max"])
            out.update(mahalanobis2_percentile=None, descriptors={}, unusual=[], beyond_training=[], outside=outside,
                       note="estimator saved before the percentile check: only d2 above every training "
                            "simulation's is flagged")
            out["reason"] = (f"the features' squared Mahalanobis distance from the training simulations ({d2:.3g}) "
                             f"is above every training simulation's (max {float(s['d2_max']):.3g})") if outside else ""
            return out
        pct = _percentile(s["d2_grid"], d2)
        out["mahalanobis2_percentile"] = pct
        descriptors, unusual, beyond = {}, [], []
        grid = s.get("descriptor_grid")
        if grid is not None:
            names, d = _ood_descriptors(x[None], s["grid_freqs"])
            for j, name in enumerate(names):
                v = float(d[0, j])
                p = _percentile(grid[:, j], v)
                descriptors[name] = {"value": v, "percentile": p, "training_median": float(grid[grid.shape[0] // 2, j])}
                if min(p, 100.0 - p) < 100 * _OOD_UNUSUAL / 2:
                    unusual.append(name)
                if v < float(grid[0, j]) or v > float(grid[-1, j]):
                    beyond.append(name)
            unusual.sort(key=lambda n: min(descriptors[n]["percentile"], 100 - descriptors[n]["percentile"]))
        outside = pct > OOD_PERCENTILE or bool(beyond)

        def words(n):
            e = descriptors[n]
            p = e["percentile"]
            side = (f"higher than {p:.1f} %" if p >= 50 else f"lower than {100 - p:.1f} %") \
                if n not in beyond else ("higher than every" if p >= 50 else "lower than every")
            return f"{n} {e['value']:.3g} is {side} of the training simulations' (median {e['training_median']:.3g})"

        reason = ""
        if outside:
            parts = []
            if pct > OOD_PERCENTILE:
                parts.append(f"the features' distance from the training simulations (squared Mahalanobis {d2:.3g}) is "
                             f"larger than {pct:.1f} % of theirs (threshold {OOD_PERCENTILE:g} %)")
            parts += [words(n) for n in (beyond or unusual[:3])]
            reason = "; ".join(parts)
        out.update(descriptors=descriptors, unusual=unusual, beyond_training=beyond, outside=outside, reason=reason,
                   unusual_words=[words(n) for n in unusual[:3]])
        return out

    # --------------------------------------------------------- neural importance sampling
    def _importance_sample(self, problem, x: torch.Tensor, n_draws: int, n_proposals: int, seed: int, *,
                           chunk_size: int = 500, progress: bool = False) -> tuple[torch.Tensor, dict, list]:
        """Neural importance sampling: flow draws weighted to the posterior ``problem`` defines, PSIS, resampled.

        ``n_proposals`` draws ``z_i ~ q(z | x)`` from the flow (flow
        coordinates, seeded by ``seed``) get log weights

            ``log w_i = log p_box(z_i) + log p(y | theta(z_i)) - log q(z_i | x)``

        with ``p_box`` the box prior's density *in flow coordinates* (the
        standard logistic per parameter: the box prior's density in natural
        units times the Jacobian of ``theta(z)``, :meth:`Prior.log_prob_unconstrained`),
        ``p(y | theta)`` :meth:`InverseProblem.log_likelihood` of the
        recording (all its channels) and ``q`` the flow's density at the same
        ``z``, so both densities are in the same coordinates. The likelihood is
        evaluated in chunks of ``chunk_size`` (batched through the
        observation; a progress bar with ``progress``); a failed evaluation
        (invalid prediction, non-finite value) gets weight 0 and is counted
        with its reason. The weights are Pareto-smoothed
        (:func:`jrinfer.backends._psis._psis`), and ``n_draws`` draws are
        resampled from the proposals with replacement, with probability equal
        to their smoothed weights (seed ``chunk_seed(seed, 1)``).

        Returns
        -------
        theta : torch.Tensor
            ``(n_draws, n_params)`` float64 natural units: the resampled draws,
            or the first ``n_draws`` proposals when no weight is usable (fewer
            than 5 finite; then ``pareto_k`` is inf and a warning says so).
        info : dict
            JSON-ready: ``pareto_k``, ``importance_ess``, ``n_proposals``,
            ``n_failed`` with ``failures`` by reason, ``n_unique_draws``,
            ``seconds`` (total) and ``likelihood_seconds``, ``target``, ``note``.
        warns : list of str

        References
        ----------
        M. Dax, S. R. Green, J. Gair, M. Puerrer, J. Wildberger, J. H. Macke,
        A. Buonanno, B. Schoelkopf (2023), "Neural importance sampling for rapid
        and reliable gravitational-wave inference", PRL 130:171403.
        A. Vehtari, D. Simpson, A. Gelman, Y. Yao, J. Gabry (2024), "Pareto
        smoothed importance sampling", JMLR 25:72.
        """
        from jrinfer.backends._psis import _psis
        from jrinfer.posterior import PARETO_K_UNRELIABLE

        optional_import("arviz", purpose="importance_sampling=True (Pareto-smoothed importance sampling)")
        t0 = time.perf_counter()
        with _one_thread():
            z32 = self._sample_flow(x, n_proposals, seed)
        log_q = self._flow_log_prob(z32, x)  # float32 flow at the very float32 draws
        z = z32.to(torch.float64).clamp(-_FlowCoordinates.Z_MAX, _FlowCoordinates.Z_MAX)
        theta = self._coords.from_flow(z)
        log_prior = self.prior.log_prob_unconstrained(z)  # box prior density in flow coordinates (Jacobian included)
        t1 = time.perf_counter()
        args = [(theta[sl], problem) for sl in chunk_slices(n_proposals, chunk_size)]
        results = map_chunks(_log_likelihood_chunk, args, progress=progress, desc="importance weights (likelihood)")
        log_lik = torch.cat([r["log_lik"] for r in results])
        likelihood_seconds = time.perf_counter() - t1
        reasons = [r["reasons"][i] for r in results for i in sorted(r["reasons"])]
        by_reason: dict[str, int] = {}
        examples: dict[str, str] = {}
        for r in reasons:
            key = r.split("(")[0].strip().rstrip(":;,") or r
            by_reason[key] = by_reason.get(key, 0) + 1
            examples.setdefault(key, r)
        log_w = log_prior + log_lik - log_q
        log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))
        n_failed = int((~torch.isfinite(log_lik)).sum())
        k, ess, weights = _psis(log_w)
        warns = []
        if weights is None:
            theta_out = theta[:n_draws]
            resampled = False
            n_unique = int(torch.unique(theta_out, dim=0).shape[0])
            warns.append(
                f"neural importance sampling failed: {n_proposals - n_failed} of {n_proposals} proposals have a finite "
                "likelihood (5 needed); these draws are the flow's, uncorrected and not to be trusted"
            )
        else:
            idx = torch.multinomial(weights, n_draws, replacement=True, generator=generator(chunk_seed(seed, 1)))
            theta_out = theta[idx]
            resampled = True
            n_unique = int(torch.unique(idx).numel())
            if k > PARETO_K_UNRELIABLE:
                warns.append(
                    f"neural importance sampling: Pareto k-hat = {k:.2f} (> {PARETO_K_UNRELIABLE}) over {n_proposals} "
                    f"flow proposals (ESS {ess:.1f}; the {n_draws} resampled draws repeat {n_unique} proposals): the "
                    "flow is too far from the posterior for its weights to correct it, and these draws are not to be "
                    "trusted; "
                    + "SMC from the flow (smc=True, CLI --smc) moves these draws to the posterior instead; or "
                    + ("more or larger truncated rounds" if not self.amortized else
                       "refine it for this recording (rounds, CLI --rounds)")
                    + ", train on more simulations, or use a sampler (nuts, smc)"
                )
        seconds = time.perf_counter() - t0
        obs = problem.observation
        target = ("the box prior x the observation's likelihood of the recording (problem.log_likelihood: every "
                  "channel, not only the summary features the flow sees)")
        info = {
            "method": "neural importance sampling (Dax et al. 2023): flow draws weighted by box prior x likelihood / "
                      "flow density in flow coordinates, Pareto-smoothed (PSIS, Vehtari et al. 2024), resampled",
            "pareto_k": k,
            "importance_ess": ess,
            "n_proposals": n_proposals,
            "n_failed": n_failed,
            "failed_fraction": n_failed / n_proposals,
            "failures": [{"reason": examples[key], "n": v}
                         for key, v in sorted(by_reason.items(), key=lambda kv: -kv[1])],
            "n_unique_draws": n_unique,
            "resampled": resampled,
            "seconds": seconds,
            "likelihood_seconds": likelihood_seconds,
            "target": target,
            "note": (f"the {n_draws} draws are resampled with replacement from the {n_proposals} proposals with "
                     "probability equal to their Pareto-smoothed weights (failed likelihood evaluations: weight 0): "
                     "draws from the posterior the likelihood defines where pareto_k <= 0.7, the flow's otherwise"
                     if resampled else "no usable weights: the draws are the flow's"),
        }
        if getattr(obs, "method", None) == "simulation" and obs.with_seed(obs.seed + 1) is not obs:
            info["note_simulation_seed"] = (
                f"method='simulation': the likelihood predicts with the observation's own simulation seed "
                f"({obs.seed}; common random numbers, as every backend's likelihood), while the flow was trained on "
                "simulations with a seed per chunk; the weights correct the flow to the former posterior"
            )
        return theta_out, info, warns

    # --------------------------------------------------------- SMC from the flow
    def _smc_sample(self, problem, x: torch.Tensor, n_particles: int, seed: int, *, chunk_size: int = 500,
                    progress=False) -> tuple[torch.Tensor, dict, list]:
        """Tempered SMC from the flow to the posterior ``problem`` defines (:func:`~jrinfer.backends._tempering.tempered_smc`).

        ``n_particles`` flow draws ``z ~ q(z | x)`` (flow coordinates, seed
        ``seed``) are moved along ``q(z | x)^(1 - beta) [p_box(z) p(y | theta(z))]^beta``
        from ``beta = 0`` to 1, with ``p_box`` and the likelihood exactly as in
        :meth:`_importance_sample` (box prior density in flow coordinates,
        :meth:`InverseProblem.log_likelihood` of every channel). Where
        importance sampling weighs the flow's draws once, and fails when the
        flow is much wider than the posterior (Pareto k-hat 6-76 on the test
        spectra and EEGMAT at a 4,000-simulation budget), the bridge narrows
        them in stages and moves them with Metropolis-Hastings steps, so the
        flow only has to put mass near the posterior, not match it. Each
        particle costs one likelihood evaluation (a simulation for
        ``method="simulation"``) per stage and move: 60-130 per particle on
        the test spectra and EEGMAT.

        Returns
        -------
        theta : torch.Tensor
            ``(n_particles, n_params)`` float64 natural units: the final,
            equally weighted particles.
        info : dict
            JSON-ready: the bridge's report (``stages``, ``beta``,
            ``reached_target``, ``log_evidence``, ``n_evaluations``,
            ``n_unique``, ``final_acceptance``, ``final_moved_fraction``,
            ``seconds``, ``failure``), failed likelihood evaluations by reason
            (``n_failed``, ``failures``), ``target``, ``method``, ``note``.
        warns : list of str

        References
        ----------
        P. Del Moral, A. Doucet, A. Jasra (2006), "Sequential Monte Carlo
        samplers", J. R. Stat. Soc. B 68:411-436.
        M. Dax et al. (2023), PRL 130:171403 (the flow as a proposal for the
        known likelihood).
        """
        from jrinfer.backends._tempering import tempered_smc

        failures: dict[str, int] = {}
        examples: dict[str, str] = {}

        def log_target(z):
            theta = self._coords.from_flow(z)
            args = [(theta[sl], problem) for sl in chunk_slices(z.shape[0], chunk_size)]
            results = map_chunks(_log_likelihood_chunk, args, progress=False, desc="likelihood")
            for r in results:
                for reason in r["reasons"].values():
                    key = reason.split("(")[0].strip().rstrip(":;,") or reason
                    failures[key] = failures.get(key, 0) + 1
                    examples.setdefault(key, reason)
            return self.prior.log_prob_unconstrained(z) + torch.cat([r["log_lik"] for r in results])

        with _one_thread():
            z0 = self._sample_flow(x, n_particles, seed).to(torch.float64)
        z0 = z0.clamp(-_FlowCoordinates.Z_MAX, _FlowCoordinates.Z_MAX)
        if progress:
            print(f"SMC from the flow: {n_particles} particles, one likelihood evaluation each per stage and move "
                  "(typically 9-12 stages of 2-20 moves)", file=sys.stderr, flush=True)
        z, info = tempered_smc(z0, lambda z: self._flow_log_prob(z, x), log_target, seed=chunk_seed(seed, 5),
                               z_max=_FlowCoordinates.Z_MAX, moved_fraction=_SMC_MOVED, progress=bool(progress),
                               label="SMC from the flow", typical_rounds=_SMC_TYPICAL_ROUNDS)
        n_failed = sum(failures.values())
        info.update({
            "method": "tempered sequential Monte Carlo from the flow (Del Moral et al. 2006): particles moved from the "
                      "flow q(z | x) to box prior x likelihood along q^(1 - beta) (prior x likelihood)^beta, "
                      "reweighted, resampled and moved by Metropolis-Hastings steps at each beta",
            "target": "the box prior x the observation's likelihood of the recording (problem.log_likelihood: every "
                      "channel, not only the summary features the flow sees)",
            "n_failed": n_failed,
            "failed_fraction": n_failed / max(info["n_evaluations"], 1),
            "failures": [{"reason": examples[k], "n": v} for k, v in sorted(failures.items(), key=lambda kv: -kv[1])],
            "note": "the draws are the final particles, equally weighted; log_evidence estimates log p(y) under the "
                    "box prior (the sum of the stages' log mean weights), with a Monte-Carlo error not computed here",
        })
        obs = problem.observation
        if getattr(obs, "method", None) == "simulation" and obs.with_seed(obs.seed + 1) is not obs:
            info["note_simulation_seed"] = (
                f"method='simulation': the likelihood predicts with the observation's own simulation seed "
                f"({obs.seed}; common random numbers, as every backend's likelihood)"
            )
            info.update(self._seed_noise(problem, z, chunk_size))
        warns = []
        if not info["reached_target"]:
            warns.append(f"SMC from the flow stopped before the posterior: {info['failure']}; these draws are not "
                         "the posterior's (more particles, an estimator trained on more simulations, or a sampler: "
                         "nuts, smc)")
        elif info["n_unique"] < SMC_DISTINCT_FRACTION * n_particles:
            noise = info.get("seed_noise_sd_nats")
            warns.append(
                f"SMC from the flow: only {info['n_unique']} of the {n_particles} draws are distinct: copies made at "
                f"the last reweighting stayed put ({100 * info['final_moved_fraction']:.0f} % of the particles moved "
                f"after it, acceptance {info['final_acceptance']:.2f}), so the draws spread less than the posterior "
                "may, and their intervals and contractions are too narrow"
                + (f". The likelihood is rough at this scale: one simulation per parameter set moves it by "
                   f"{noise:.1f} nats between simulator seeds, so a particle on a lucky spike rejects its moves, and "
                   "more particles do not cure that (a 200-particle run kept 102 distinct, a 500-particle one 83 on "
                   "EEGMAT); read the fit (R^2, peak) and the parameters' medians, not their spread"
                   if noise is not None and noise > 1.0 else "; more particles may help")
            )
        return self._coords.from_flow(z), info, warns

    def _seed_noise(self, problem, z: torch.Tensor, chunk_size: int) -> dict:
        """How much the log-likelihood at the distinct draws ``z`` moves when the simulator's noise seed changes.

        ``method="simulation"`` predicts from one simulation per parameter set
        (common random numbers with the observation's seed), so its
        likelihood carries that simulation's noise. The distinct draws are
        re-evaluated with the next seed; the robust SD (1.4826 x MAD) of the
        change in nats says which likelihood differences are the noise's.
        """
        from jrinfer.problem import InverseProblem

        obs = problem.observation
        other = InverseProblem(obs.with_seed(obs.seed + 1), problem.prior, problem.data)
        theta = self._coords.from_flow(torch.unique(z, dim=0))
        lls = []
        for prob in (problem, other):
            args = [(theta[sl], prob) for sl in chunk_slices(theta.shape[0], chunk_size)]
            lls.append(torch.cat([r["log_lik"] for r in map_chunks(_log_likelihood_chunk, args, progress=False)]))
        diff = lls[0] - lls[1]
        diff = diff[torch.isfinite(diff)]
        if diff.numel() < 5:
            return {"seed_noise_sd_nats": None}
        sd = float(1.4826 * (diff - diff.median()).abs().median())
        return {
            "seed_noise_sd_nats": sd,
            "seed_noise_median_drop_nats": float(diff.median()),
            "note_seed_noise": (
                f"the log-likelihood at the {theta.shape[0]} distinct draws moves by {sd:.1f} nats (robust SD) when the "
                f"simulator's noise seed changes from {obs.seed} to {obs.seed + 1}: one simulation per parameter set "
                "carries that much noise, so differences of a few nats between parameter sets (and the fine "
                "structure of this posterior) are partly the seed's, as for every backend with method='simulation'"
            ),
        }

    # --------------------------------------------------------- conditioning
    def condition(self, data, *, n_draws: int = 1000, n_predictive: int = 200, seed: int = 0,
                  resample: bool = False, importance_sampling: bool = False, n_proposals: int | None = None,
                  smc: bool = False, progress: bool = False):
        """The posterior for ``data``: draws from the flow, assembled like every backend's.

        Parameters
        ----------
        data : SpectrumData or EvokedData
            The recording (see :meth:`problem_for`).
        n_draws : int
            Posterior draws (with ``smc``: the particles, at least 20).
        n_predictive : int
            Draws (thinned evenly) that get a posterior predictive sample
            through the observation (for ``method="simulation"``: the
            simulator, in whatever regime each draw is in).
        seed : int
            Seed of the draws and of the predictive noise.
        resample : bool
            See :meth:`problem_for`.
        importance_sampling : bool
            Correct the flow by neural importance sampling (Dax et al. 2023):
            ``n_proposals`` flow draws weighted by box prior x likelihood /
            flow density, Pareto-smoothed, and ``n_draws`` of them resampled.
            The likelihood is the observation's
            (:meth:`InverseProblem.log_likelihood` of the recording), so the
            draws are from the posterior every other backend targets, where
            Pareto k-hat is at most 0.7; above it the status is ``"warning"``.
            It needs a flow close to the posterior: on JR spectra from
            estimators of a few thousand simulations k-hat is 7-76 and the
            draws repeat a handful of proposals (use ``smc`` there).
            CLI: ``jrinfer fit --backend npe --importance-sampling``.
        n_proposals : int, optional
            Flow draws weighted (default ``max(5 n_draws, 2000)``); each costs
            one likelihood evaluation (a simulation for ``method="simulation"``).
        smc : bool
            Correct the flow by tempered sequential Monte Carlo (Del Moral et
            al. 2006; see the module notes): ``n_draws`` flow draws are the
            particles, moved in stages from the flow to box prior x the
            observation's likelihood (the posterior every other backend
            targets). Unlike importance sampling it works when the flow is much
            wider than the posterior, at the cost of one likelihood evaluation
            per particle per stage and move (60-130 per particle on the test
            spectra and EEGMAT; 300 particles: 1.5-3.5 min on 2 cores). Not with
            ``importance_sampling``. CLI: ``jrinfer fit --backend npe --smc``.
        progress : bool
            A progress bar over the likelihood evaluations of importance
            sampling; for SMC a first line with the expected time and a line
            per stage with the time left (default False: silent).

        Returns
        -------
        Posterior
            ``backend="npe"``; ``diagnostics["backend_status"]`` is
            ``"converged"`` when training stopped early on the validation loss
            (else ``"max_epochs"``), or ``"smc_failed"`` when the SMC bridge
            stopped before the posterior; ``status`` is that, or
            ``"warning"`` for every reason the fit cannot be trusted (a misfit,
            k-hat above 0.7, too few distinct SMC draws, data outside the
            training distribution: ``status_message`` says which);
            ``diagnostics`` holds the training report (simulations, failures
            by reason, training regime mix, prior box), the posterior's regime
            mix, the out-of-distribution score and the calibration verdict if
            computed. With ``importance_sampling``: ``pareto_k``,
            ``importance_ess``, ``importance_resampled`` (True: the draws are
            the PSIS-resampled ones) and ``importance_sampling`` (proposals,
            failed evaluations by reason, unique draws, seconds, target); the
            flow's own regime mix stays in ``regime_mix_flow``. With ``smc``:
            ``smc`` (stages, acceptance, particles moved, unique draws,
            likelihood evaluations, failures, log evidence, seconds) and
            ``regime_mix_flow``; status ``"warning"`` when fewer than 90 % of
            the draws are distinct.
        """
        from jrinfer.backends._assembly import assemble_posterior
        from jrinfer.posterior import PARETO_K_UNRELIABLE

        n_draws = _checks.check_int("n_draws", n_draws, minimum=2)
        n_predictive = _checks.check_int("n_predictive", n_predictive, minimum=0)
        seed = _checks.check_int("seed", seed, minimum=0)
        importance_sampling = _checks.check_bool("importance_sampling", importance_sampling)
        smc = _checks.check_bool("smc", smc)
        if smc and n_draws < SMC_MIN_PARTICLES:
            raise ValueError(f"n_draws (CLI --draws) must be >= {SMC_MIN_PARTICLES} with smc=True (they are the SMC "
                             f"particles), got {n_draws}")
        if smc and importance_sampling:
            raise ValueError("smc and importance_sampling are two corrections of the flow: choose one (smc works "
                             "where the flow is much wider than the posterior, as on JR spectra at a few thousand "
                             "simulations; importance sampling is cheaper where the flow is close to it)")
        progress = _check_progress(progress)
        if n_proposals is None:
            n_proposals = max(5 * n_draws, 2000)
        n_proposals = _checks.check_int("n_proposals", n_proposals, minimum=10)
        problem = self.problem_for(data, resample=resample)
        x = _summary_features(problem, problem.observed().values, self.summary).reshape(-1)
        self._check_refined_for(x)
        t0 = time.perf_counter()
        warns = []
        flow_mix = None
        chunk_size = int(self.training.get("chunk_size", 500))
        if importance_sampling:
            theta, importance, corr_warns = self._importance_sample(problem, x, n_draws, n_proposals, seed,
                                                                    chunk_size=chunk_size, progress=progress)
        elif smc:
            theta, smc_info, corr_warns = self._smc_sample(problem, x, n_draws, seed, chunk_size=chunk_size,
                                                           progress=progress)
        else:
            theta = self.sample(x, n_draws, seed=seed)
        if importance_sampling or smc:  # the uncorrected flow's regime mix, for comparison
            warns += corr_warns
            codes = problem.regimes(self._coords.from_flow(self._sample_flow(x, n_draws, seed)))
            if codes is not None:
                flow_mix = _regime_mix(codes, problem.observation.REGIMES)
        sample_seconds = time.perf_counter() - t0
        diagnostics = {
            "sampling_seconds": sample_seconds,
            "training": self.training,
            "prior_box": self.prior.to_dict()["distributions"],
            "box_quantiles": list(self.box_quantiles),
            "flow": self.architecture,
        }
        if importance_sampling:
            diagnostics["pareto_k"] = importance["pareto_k"]
            diagnostics["importance_ess"] = importance["importance_ess"]
            diagnostics["importance_resampled"] = importance["resampled"]
            diagnostics["importance_sampling"] = importance
        if smc:
            diagnostics["smc"] = smc_info
            if smc_info.get("note_seed_noise"):
                diagnostics.setdefault("notes", []).append(smc_info["note_seed_noise"])
        ood = self.out_of_distribution(x)
        diagnostics["out_of_distribution"] = ood
        if ood["outside"]:
            warns.append(
                f"the recording lies outside what the estimator was trained on: {ood['reason']}. The flow "
                "extrapolates here and its posterior is not to be trusted: "
                + ("refine it for this recording (truncated rounds, CLI --rounds 3), or " if self.amortized else "")
                + "train an estimator whose prior box covers the recording's scale and shape "
                "(jrinfer train-npe --prior FILE, e.g. wider gain, ap_amplitude, ap_exponent or floor boxes)"
            )
        elif ood.get("unusual"):
            note = ("the recording lies inside the estimator's training distribution (distance from its simulations "
                    f"at their {ood['mahalanobis2_percentile']:.0f}th percentile) but is unusual for it: "
                    + "; ".join(ood["unusual_words"]))
            diagnostics["note_out_of_distribution"] = note
            diagnostics.setdefault("notes", []).append(note)
        note_gain = self._gain_note(theta)
        if note_gain is not None:
            diagnostics["gain_x_p_std"], diagnostics["note_gain"] = note_gain
            diagnostics.setdefault("notes", []).append(note_gain[1])
        low, high = _box_edge_shares(self.prior, theta)
        piled = [(n, "lower", float(lo_)) if lo_ >= hi_ else (n, "upper", float(hi_))
                 for n, lo_, hi_ in zip(self.names, low.tolist(), high.tolist()) if max(lo_, hi_) > BOX_EDGE_SHARE]
        j = int(torch.maximum(low, high).argmax())
        diagnostics["box_edge"] = {
            "edge": BOX_EDGE, "threshold": BOX_EDGE_SHARE,
            "lower": dict(zip(self.names, low.tolist())), "upper": dict(zip(self.names, high.tolist())),
            "worst": {"parameter": self.names[j], "share": float(max(low[j], high[j])),
                      "side": "lower" if low[j] >= high[j] else "upper"},
            "piled_up": [n for n, _, _ in piled],
        }
        if piled:
            def bound(n, side):
                d = self.prior.distributions[n]
                unit = self.problem.units.get(n, "")
                return f"{d.low if side == 'lower' else d.high:.3g}{' ' + unit if unit not in ('', '1') else ''}"

            note = (
                "the posterior piles up at the edge of the prior box the estimator was trained on: "
                + "; ".join(f"{100 * share:.0f} % of the draws of {n} lie in the {side} {100 * BOX_EDGE:.0f} % of "
                            f"its box (bound {bound(n, side)})" for n, side, share in piled)
                + ". The recording may ask for values the estimator never simulated (a hint, not a verdict: 5-7 % of "
                "simulations from inside the box show it too, where the truth lies near a bound); an estimator whose "
                f"box is wider for {', '.join(n for n, _, _ in piled)} (jrinfer train-npe --prior FILE) would tell"
            )
            diagnostics["note_box_edge"] = note
            diagnostics.setdefault("notes", []).append(note)
        codes = problem.regimes(theta)
        if codes is not None:
            mix = _regime_mix(codes, problem.observation.REGIMES)
            diagnostics["regime_mix"] = mix
            if flow_mix is not None:
                diagnostics["regime_mix_flow"] = flow_mix  # the uncorrected flow's, for comparison
            top = max(mix, key=lambda k: mix[k]["fraction"])
            diagnostics["regime"] = top  # the most probable regime (see regime_verdict for how sure)
            resolved = mix[top]["fraction"] >= REGIME_RESOLVED
            diagnostics["regime_resolved"] = resolved
            shares = ", ".join(f"{k} {100 * v['fraction']:.0f} %" for k, v in mix.items() if v["fraction"] > 0)
            diagnostics["regime_verdict"] = (
                f"{top} ({100 * mix[top]['fraction']:.0f} % of the posterior)" if resolved else
                f"unresolved: {shares} (no regime holds {REGIME_RESOLVED:.0%} of the posterior. Near the Hopf "
                "boundary a noise-driven resonance and a noisy limit cycle give alike spectra: on simulations from "
                "the posterior region of test spectra, classifiers of the regime from these features are right in "
                "79-86 % of cases, and 120 s instead of 30 s of signal does not change that, so the spectrum "
                "rarely settles the regime at 90 %; see benchmarks/RESULTS.md)"
            )
            k_hat = diagnostics.get("pareto_k")
            if importance_sampling and not (k_hat is not None and k_hat <= PARETO_K_UNRELIABLE):
                # a handful of heavily weighted proposals is no evidence for a regime
                diagnostics["regime_resolved"] = False
                diagnostics["regime_verdict"] = (
                    f"unresolved: the importance-resampled draws ({shares}) repeat "
                    f"{importance['n_unique_draws']} proposals (Pareto k-hat "
                    f"{k_hat if k_hat is None else round(k_hat, 2)} > {PARETO_K_UNRELIABLE}): not a posterior to read "
                    "a regime from"
                )
            if smc and (not smc_info["reached_target"] or smc_info["n_unique"] < SMC_DISTINCT_FRACTION * n_draws):
                diagnostics["regime_resolved"] = False
                diagnostics["regime_verdict"] = (f"unresolved: the SMC particles ({shares}) did not reach or spread "
                                                 "over the posterior (see the warnings)")
        diagnostics["amortized"] = self.amortized
        diagnostics["summary_features"] = self.summary
        if not self.amortized:
            diagnostics["rounds"] = self.training.get("rounds")
            diagnostics["note_rounds"] = (
                "refined by truncated sequential rounds for this recording only (TSNPE): not amortized; the "
                "calibration verdict refers to the amortized round-0 estimator"
            )
            checked = [(r["round"], r["r2_log_power"]) for r in self.training.get("rounds") or ()
                       if isinstance(r.get("r2_log_power"), float)]
            if len(checked) >= 2 and checked[-1][1] < checked[0][1] - _ROUNDS_WORSE_R2:
                warns.append(
                    f"the truncated rounds made the fit worse: R^2 of log-power {checked[0][1]:.3f} after round "
                    f"{checked[0][0]}, {checked[-1][1]:.3f} after round {checked[-1][0]} (each a check on 50 "
                    "predictive simulations); the amortized estimator (no --rounds) fits better here, or more "
                    "simulations per round may help"
                )
        if self.calibration:
            diagnostics["calibration"] = {k: v for k, v in self.calibration.items() if k not in ("ranks", "ecp", "alpha")}
            if not self.amortized:
                diagnostics["calibration"]["applies_to"] = "the amortized round-0 estimator, not the refined posterior"
            if smc:
                diagnostics["calibration"]["applies_to"] = (
                    "the flow" + (" (the amortized round-0 estimator)" if not self.amortized else "")
                    + ", not the SMC-corrected posterior, whose draws target the likelihood's posterior directly")
            if not self.calibration.get("calibrated", True):
                warns.append(f"the estimator failed its calibration check: {self.calibration['verdict']}")
        t = self.training
        if t.get("failed_fraction", 0.0) > 0:
            diagnostics["note_failed_simulations"] = (
                f"{t['n_failed']} of {t['n_simulations']} training simulations failed and were left out: the posterior "
                "is conditional on a successful simulation"
            )
        converged = bool(t.get("converged", True))
        if not converged:
            warns.append(
                f"training stopped at the epoch limit ({t.get('epochs')} epochs) before the validation loss stopped "
                "improving: train longer (max_epochs) or with more simulations"
            )
        # contraction against the box prior NPE trained with, in the box's own coordinates (_box_contraction): in
        # the flow's logit coordinates draws pressed against a bound (|z| up to 30) make it arbitrarily negative
        # (-3.8 for ap_exponent on an EEGMAT recording; kept as diagnostics["contraction_unconstrained"])
        diagnostics["contraction_against"] = (
            "the box prior the estimator was trained on (uniform, or log-uniform for scales: "
            + ", ".join(f"{n} {d.low:.3g}-{d.high:.3g}" for n, d in self.prior.distributions.items())
            + "), variances in its own coordinates (log for log-uniform parameters); not the prior it was derived from"
        )
        box = dict(zip(self.names, _box_contraction(self.prior, theta).tolist()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # diverged predictive simulations are counted
            post = assemble_posterior(
                problem,
                theta[None],
                backend="npe",
                status="smc_failed" if smc and not smc_info["reached_target"] else
                       ("converged" if converged else "max_epochs"),
                message=f"{self.architecture['density_estimator']} flow trained on {t.get('n_valid')} simulations"
                        + (f"; neural importance sampling of {n_proposals} proposals (Pareto k-hat "
                           f"{diagnostics['pareto_k']:.2f}, ESS {diagnostics['importance_ess']:.0f})"
                           if importance_sampling and diagnostics["importance_ess"] is not None else "")
                        + (f"; SMC from the flow: {n_draws} particles, {len(smc_info['stages'])} stages, "
                           f"{smc_info['n_evaluations']} likelihood evaluations, {smc_info['n_unique']} distinct draws"
                           + (f" (stopped early: {smc_info['failure']})" if not smc_info["reached_target"] else "")
                           if smc else ""),
                diagnostics=diagnostics,
                warnings=warns,
                n_predictive=n_predictive,
                seed=seed,
                contraction=box,
                contraction_against="the box prior the estimator was trained on",
            )
        return post

    def _gain_note(self, theta: torch.Tensor):
        """``(gain x p_std quantiles, note)`` for simulated-spectrum estimators with a free gain and a fixed p_std.

        The spectrum informs the output gain times the input noise ``p_std``
        only: the neural power scales with ``p_std^2`` (exactly, 4.000 between
        p_std 1 and 0.5, in the linearised spectrum; ``benchmarks/npe_scale.py``).
        ``train-npe`` fixes p_std at 0.5 for simulated spectra, the transfer
        method's default prior (laplace, nuts, smc) at 1. None otherwise.
        """
        obs = self.problem.observation
        p_std = self.prior.fixed.get("p_std")
        if getattr(obs, "method", None) != "simulation" or p_std is None or "gain" not in self.names:
            return None
        p_std = float(p_std)
        g = theta[:, self.names.index("gain")] * p_std
        q05, q50, q95 = (float(v) for v in torch.quantile(g, torch.tensor([0.05, 0.5, 0.95], dtype=g.dtype)))
        note = (f"gain is the scale of a Jansen-Rit output driven by input noise p_std = {p_std:g} (fixed in "
                "training); a spectrum informs gain x p_std only, here median "
                f"{q50:.3g} (90 %: {q05:.3g}-{q95:.3g}). Transfer-method fits (laplace, nuts, smc defaults) fix "
                f"p_std = 1, so their gain compares with this gain x {p_std:g}, not 1:1. Beyond that factor the "
                "two differ as posteriors, not by a bug: the simulated alpha peak at the same stable parameters has "
                "0.5-0.7 x the linearised one's power, and A and C, free in those fits, trade with gain")
        return {"median": q50, "q05": q05, "q95": q95, "p_std": p_std}, note

    # --------------------------------------------------------- calibration
    def calibrate(self, n_simulations: int = 200, *, n_posterior_samples: int = 500, seed: int | None = None,
                  client=None, progress: bool = False) -> dict:
        """Simulation-based calibration and TARP on held-out simulations, with a verdict.

        Held-out parameter sets are drawn from the box prior with their own
        seed stream (by default derived from the training seed, disjoint from
        the training chunks), simulated like the training set, and the
        posterior of each is sampled ``n_posterior_samples`` times
        (``sbi.diagnostics.run_sbc``, ``run_tarp``). Verdict:

        - SBC: the rank of every parameter is uniform (Kolmogorov-Smirnov,
          family-wise level :data:`SBC_ALPHA` with a Bonferroni correction);
        - coverage: the marginal central credible intervals at the levels
          :data:`COVERAGE_LEVELS` cover the truth at the nominal rate, averaged
          over parameters, within three binomial standard errors
          ``sqrt(q (1 - q) / n)``; TARP's expected coverage (a joint check)
          is reported with its area-to-curve ``atc`` (0 when calibrated;
          > 0 over-, < 0 under-dispersed) and KS p-value.

        The result is kept in :attr:`calibration` (and saved with the
        estimator); every :meth:`condition` then reports it.

        Returns
        -------
        dict
            JSON-ready: ``calibrated`` (bool), ``verdict`` (a sentence),
            ``n_simulations``, ``sbc_ks_pvalues`` and ``sbc_c2st`` per
            parameter, ``dap_c2st``, ``coverage`` per level, ``tarp_atc``,
            ``tarp_ks_pvalue``, and the raw ``ranks``, ``ecp``, ``alpha`` for
            plots (:func:`jrinfer.plotting.plot_npe_calibration`).
        """
        _sbi()
        from sbi.diagnostics import check_sbc, check_tarp, run_sbc, run_tarp

        n_simulations = _checks.check_int("n_simulations", n_simulations, minimum=20)
        n_posterior_samples = _checks.check_int("n_posterior_samples", n_posterior_samples, minimum=10)
        if seed is None:
            seed = chunk_seed(self.training["seed"], _HELD_OUT_INDEX)
        seed = _checks.check_int("seed", seed, minimum=0)
        if not self.amortized:
            raise ValueError("calibrate: this posterior was refined by truncated rounds for one recording; SBC and "
                             "TARP check an amortized estimator (calibrate the round-0 estimator)")
        held = simulate_training_set(self.problem, n_simulations, seed=seed, chunk_size=self.training["chunk_size"],
                                     client=client, progress=progress, summary=self.summary)
        if int(held.valid.sum()) < 20:
            raise ValueError(f"calibrate: only {int(held.valid.sum())} of {n_simulations} held-out simulations "
                             "succeeded (20 needed for SBC and TARP); calibrate with more simulations")
        phi = self._coords.to_flow(held.theta[held.valid]).to(torch.float32)
        x = held.x[held.valid].to(torch.float32)
        posterior = self.sbi_posterior  # built outside the seeded block (building it may draw from torch's RNG)
        t0 = time.perf_counter()
        if progress:
            print(f"calibration: {n_posterior_samples} posterior draws for each of {int(x.shape[0])} held-out "
                  "simulations, then SBC and TARP ...", file=sys.stderr, flush=True)
        with _seeded(seed), _one_thread(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            # one batch of posterior draws (the prior-box-restricted flow, as condition() samples it) serves
            # both SBC and TARP
            draws = _CachedDraws(posterior.sample_batched((n_posterior_samples,), x=x,
                                                          show_progress_bars=bool(progress) and _bars(progress)))
            ranks, dap = run_sbc(phi, x, draws, num_posterior_samples=n_posterior_samples, show_progress_bar=False)
            checks = check_sbc(ranks, phi, dap, num_posterior_samples=n_posterior_samples)
            ecp, alpha = run_tarp(phi, x, draws, num_posterior_samples=n_posterior_samples, show_progress_bar=False)
            atc, tarp_p = check_tarp(ecp, alpha)
        n = int(phi.shape[0])
        pvals = [float(p) for p in checks["ks_pvals"]]
        u = (ranks.double() + 0.5) / (n_posterior_samples + 1)  # rank -> position in (0, 1)
        coverage = {}
        for q in COVERAGE_LEVELS:
            inside = ((u >= 0.5 - q / 2) & (u <= 0.5 + q / 2)).double().mean(0)
            coverage[str(q)] = {"mean": float(inside.mean()), "per_parameter": dict(zip(self.names, inside.tolist())),
                                "standard_error": math.sqrt(q * (1 - q) / n)}
        bad_sbc = [nm for nm, p in zip(self.names, pvals) if p < SBC_ALPHA / len(pvals)]
        bad_cov = [f"{float(q):.0%} level: {c['mean']:.1%}" for q, c in coverage.items()
                   if abs(c["mean"] - float(q)) > 3 * c["standard_error"]]
        calibrated = not bad_sbc and not bad_cov
        if progress:
            print(f"calibration: {'calibrated' if calibrated else 'not calibrated'} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        if calibrated:
            verdict = (f"calibrated: SBC ranks uniform for every parameter (KS, family-wise level {SBC_ALPHA}) and "
                       f"marginal coverage nominal at {', '.join(f'{q:.0%}' for q in COVERAGE_LEVELS)} "
                       f"on {n} held-out simulations")
        else:
            parts = []
            if bad_sbc:
                parts.append(f"SBC ranks not uniform for {', '.join(bad_sbc)}")
            if bad_cov:
                parts.append("coverage off nominal (" + "; ".join(bad_cov) + ")")
            verdict = ("not calibrated: " + " and ".join(parts) + f" on {n} held-out simulations; train with more "
                       "simulations or a larger flow")
        result = {
            "calibrated": calibrated,
            "verdict": verdict,
            "n_simulations": n,
            "n_failed": held.n - n,
            "n_posterior_samples": n_posterior_samples,
            "seed": seed,
            "sbc_ks_pvalues": dict(zip(self.names, pvals)),
            "sbc_c2st": dict(zip(self.names, [float(c) for c in checks["c2st_ranks"]])),
            "dap_c2st": float(checks["c2st_dap"].mean()),
            "coverage": coverage,
            "tarp_atc": float(atc),
            "tarp_ks_pvalue": float(tarp_p),
            "names": list(self.names),
            "ranks": ranks.to(torch.int64).tolist(),
            "ecp": [float(v) for v in ecp.reshape(-1)],
            "alpha": [float(v) for v in alpha.reshape(-1)],
        }
        self.calibration = result
        return result

    # --------------------------------------------------------- truncated sequential rounds
    def _check_refined_for(self, x: torch.Tensor) -> None:
        ref = self._refined_for
        if ref is not None and not (x.shape == ref.shape and torch.allclose(x, ref, rtol=1e-9, atol=1e-12)):
            raise ValueError("this posterior was refined by truncated rounds for another recording and is not "
                             "amortized: condition the round-0 estimator, or refine it for these data")

    def _flow_log_prob(self, z: torch.Tensor, x: torch.Tensor, batch: int = 50_000) -> torch.Tensor:
        """``log q(z | x)`` (flow coordinates, unnormalised for leakage), ``(n,)`` float64."""
        out = []
        xx = torch.as_tensor(x, dtype=torch.float64).reshape(1, -1).to(torch.float32)
        with torch.no_grad(), _one_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for i in range(0, z.shape[0], batch):
                zz = z[i:i + batch].to(torch.float32)
                out.append(self.sbi_posterior.log_prob(zz, x=xx, norm_posterior=False).to(torch.float64))
        return torch.cat(out)

    def _hdr_threshold(self, x: torch.Tensor, quantile: float, n: int, seed: int) -> dict:
        """The posterior's ``1 - quantile`` highest-density region for ``x``, from ``n`` flow draws.

        Returns ``{"threshold", "low", "high"}``: the log-density above which
        the region lies, and a box in flow coordinates around it (the range of
        the draws inside, widened by a quarter of it on either side).
        """
        with _one_thread():
            z = self._sample_flow(x, n, seed).to(torch.float64)
        lp = self._flow_log_prob(z, x)
        threshold = float(torch.sort(lp).values[min(int(quantile * n), n - 1)])
        inside = z[lp > threshold]
        lo, hi = inside.amin(0), inside.amax(0)
        pad = 0.25 * (hi - lo)
        z_max = _FlowCoordinates.Z_MAX
        return {"threshold": threshold, "low": (lo - pad).clamp(-z_max, z_max), "high": (hi + pad).clamp(-z_max, z_max)}

    def _rectangle_draws(self, low: torch.Tensor, high: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        """``n`` draws (natural units) from the box prior restricted to the flow-coordinate box ``[low, high]``.

        In flow coordinates the box prior is a standard logistic per
        parameter, so its restriction is drawn exactly by the inverse CDF.
        """
        F_lo, F_hi = torch.sigmoid(low), torch.sigmoid(high)
        u = torch.rand(n, low.numel(), dtype=torch.float64, generator=generator(seed))
        p = (F_lo + u * (F_hi - F_lo)).clamp(1e-300, 1 - 1e-16)
        return self._coords.from_flow(torch.logit(p))

    def _truncated_draws(self, x: torch.Tensor, region: dict, n: int, seed: int, *, batch: int = 20_000,
                         max_proposals: int | None = None) -> tuple[torch.Tensor, dict]:
        """``n`` draws (natural units) from the box prior restricted to the region ``log q(theta | x) > threshold``.

        Rejection: proposals from the box prior restricted to the region's
        bounding box (:meth:`_rectangle_draws`, batch ``k`` from
        ``chunk_seed(seed, k)``), kept where inside the region, up to
        ``max_proposals`` (default ``max(100 n, 200000)``); the fraction of
        *prior* draws the truncation rejects is ``1 - acceptance x prior mass
        of the bounding box``. Where even that is too little,
        sampling-importance-resampling: ``20 n`` flow draws inside the region,
        weighted by prior over flow density, ``n`` kept without replacement
        (Gumbel top-k). A pure function of the arguments.
        """
        threshold, low, high = region["threshold"], region["low"], region["high"]
        box_mass = float(torch.prod(torch.sigmoid(high) - torch.sigmoid(low)))
        max_proposals = max(100 * n, 200_000) if max_proposals is None else max_proposals
        kept, proposed, n_kept, k = [], 0, 0, 0
        while n_kept < n and proposed < max_proposals:
            theta = self._rectangle_draws(low, high, batch, chunk_seed(seed, k))
            inside = self._flow_log_prob(self._coords.to_flow(theta), x) > threshold
            kept.append(theta[inside])
            n_kept += int(inside.sum())
            proposed += batch
            k += 1
        accepted = n_kept / proposed
        info = {"proposed": proposed, "accepted_fraction_in_bounding_box": accepted,
                "bounding_box_prior_mass": box_mass, "rejected_fraction": 1.0 - accepted * box_mass}
        if n_kept >= n:
            return torch.cat(kept)[:n], {"method": "rejection from the box prior restricted to the region's bounding "
                                                   "box", **info}
        m = 20 * n
        with _one_thread():
            z = self._sample_flow(x, m, chunk_seed(seed, 1_000_003)).to(torch.float64)
        lq = self._flow_log_prob(z, x)
        with torch.no_grad():
            lp = self._coords.torch_prior.log_prob(z).to(torch.float64)
        logw = torch.where((lq > threshold) & ((z >= low) & (z <= high)).all(-1), lp - lq,
                           torch.full_like(lq, -math.inf))
        w = torch.softmax(logw, 0)
        ess = float(1.0 / (w * w).sum())
        g = generator(chunk_seed(seed, 1_000_004))
        u = torch.rand(m, dtype=torch.float64, generator=g).clamp(1e-300, 1.0)
        keys = logw - torch.log(-torch.log(u))  # Gumbel top-k: n draws without replacement, probability ~ w
        pick = torch.topk(keys, n).indices
        if not bool(torch.isfinite(keys[pick]).all()):
            raise RuntimeError(f"truncated rounds: fewer than {n} flow draws fell inside the posterior's region")
        theta = self._coords.from_flow(z[pick])
        return theta, {"method": "sampling-importance-resampling (prior mass in the region too small for rejection)",
                       "effective_sample_size": ess, **info}

    def refine(self, data, *, rounds: int = 3, simulations_per_round: int = 3000, truncation_quantile: float = 1e-3,
               seed: int | None = None, resample: bool = False, client=None, progress: bool = False,
               evaluate: bool = True, n_threshold_draws: int = 20_000) -> "AmortizedPosterior":
        """Truncated sequential rounds (TSNPE) for one recording: a posterior for ``data`` only.

        Round ``r`` (1 .. ``rounds``) finds the region where the current
        posterior for ``data`` has density above its ``truncation_quantile``
        quantile (the ``1 - truncation_quantile`` highest-density region,
        from ``n_threshold_draws`` draws), draws ``simulations_per_round``
        parameter sets from the box prior restricted to that region,
        simulates them through :func:`simulate_training_set` (seeded,
        chunked, failures counted and left out), appends them to every
        earlier round (round 0: this estimator's training set, re-simulated
        from its seed when it was loaded from disk) and trains the flow on
        all of them with the ordinary NPE loss, starting from the previous
        round's network. The truncated prior is proportional to the prior
        inside the region, so the posterior there stays the posterior under
        the box prior (Deistler, Goncalves & Macke 2022).

        Parameters
        ----------
        data : SpectrumData or EvokedData
            The recording (see :meth:`problem_for`).
        rounds : int
            Truncated rounds (>= 1).
        simulations_per_round : int
            Simulations per round (>= 50).
        truncation_quantile : float
            Posterior mass left outside the region, in (0, 0.5) (default 1e-3
            as in Deistler et al. 2022).
        seed : int, optional
            Root seed of the rounds (default the training seed): the refined
            posterior is a pure function of it, the estimator and the data.
        resample : bool
            See :meth:`problem_for`.
        client : dask.distributed.Client, optional
            Run the simulations on this client.
        progress : bool
            A line per round and a progress bar over its simulations.
        evaluate : bool
            Condition after every round (1000 draws, 50 predictive
            simulations) and report R² of log-power, the peak shift and the
            regime mix.

        Returns
        -------
        AmortizedPosterior
            Not amortized (:attr:`amortized` False): :meth:`condition`
            accepts ``data`` only, :meth:`save` and :meth:`calibrate` refuse;
            its ``training["rounds"]`` lists per round the simulations,
            failures, the fraction of prior draws rejected by the truncation,
            simulation and training seconds, epochs and (``evaluate``) fit
            quality. Its calibration is this estimator's (round 0).
            This estimator is left unchanged.

        References
        ----------
        M. Deistler, P. J. Goncalves, J. H. Macke (2022), "Truncated proposals
        for scalable and hassle-free simulation-based inference", NeurIPS.
        """
        rounds = _checks.check_int("rounds", rounds, minimum=1)
        n = _checks.check_int("simulations_per_round", simulations_per_round, minimum=50)
        q = _checks.check_scalar("truncation_quantile", truncation_quantile, positive=True)
        if not q < 0.5:
            raise ValueError(f"truncation_quantile must be in (0, 0.5), got {truncation_quantile!r}")
        seed = self.training["seed"] if seed is None else _checks.check_int("seed", seed, minimum=0)
        progress = _check_progress(progress)
        evaluate = _checks.check_bool("evaluate", evaluate)
        n_threshold_draws = _checks.check_int("n_threshold_draws", n_threshold_draws, minimum=1000)
        if not self.amortized:
            raise ValueError("refine: this posterior is already refined for one recording; refine the round-0 "
                             "estimator with more rounds instead")
        x = self.features(data, resample=resample)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("the data's summary features are not finite (zero or negative power?)")
        t = self.training
        sims0 = self._training_set
        if sims0 is None:  # loaded from disk: round 0 is a pure function of the saved seed, size and chunking
            if progress:
                print(f"round 0: re-simulating the estimator's {t['n_simulations']} training simulations (seed "
                      f"{t['seed']})", file=sys.stderr)
            sims0 = simulate_training_set(self.problem, t["n_simulations"], seed=t["seed"], chunk_size=t["chunk_size"],
                                          client=client, progress=progress, summary=self.summary,
                                          desc="round 0 simulations")
            mean = sims0.x[sims0.valid].mean(0)
            if int(sims0.valid.sum()) != t["n_valid"] or not torch.allclose(mean, self._stats["mean"], rtol=1e-6,
                                                                             atol=1e-6):
                raise ValueError("refine: re-simulating the training set did not reproduce it (another simulator "
                                 "version?); refine an estimator trained in this session or train a new one")
            self._training_set = sims0
        thetas = [self._coords.to_flow(sims0.theta[sims0.valid]).to(torch.float32)]
        xs = [sims0.x[sims0.valid].to(torch.float32)]
        settings = {k: t[k] for k in _TRAINING_KEYS}
        reports = []
        if evaluate:
            reports.append({"round": 0, "simulations": t["n_simulations"], "n_valid": t["n_valid"],
                            **self._round_quality(data, resample, seed)})
        current = self
        for r in range(1, rounds + 1):
            rs = chunk_seed(seed, _ROUNDS_INDEX + r)
            t0 = time.perf_counter()
            region = current._hdr_threshold(x, q, n_threshold_draws, chunk_seed(rs, 0))
            theta, info = current._truncated_draws(x, region, n, chunk_seed(rs, 1))
            threshold = region["threshold"]
            truncation_seconds = time.perf_counter() - t0
            if progress:
                print(f"round {r}/{rounds}: {n} simulations from the prior truncated to the posterior's "
                      f"{1 - q:.4g} region ({100 * info['rejected_fraction']:.1f} % of prior draws rejected)",
                      file=sys.stderr)
            sims = simulate_training_set(self.problem, n, seed=chunk_seed(rs, 2), chunk_size=t["chunk_size"],
                                         client=client, progress=progress, theta=theta, summary=self.summary,
                                         desc=f"round {r}/{rounds} simulations")
            rep = sims.report()
            thetas.append(self._coords.to_flow(sims.theta[sims.valid]).to(torch.float32))
            xs.append(sims.x[sims.valid].to(torch.float32))
            net, fit = _train_flow(self._coords, torch.cat(thetas), torch.cat(xs), self.architecture, settings,
                                   seed=chunk_seed(rs, 3), progress=progress, net=current._net,
                                   label=f"round {r}/{rounds}: training the flow")
            report = {
                "round": r, "simulations": n, "n_valid": rep["n_valid"], "n_failed": rep["n_failed"],
                "failures": rep["failures"], "regime_mix_simulated": rep["regime_mix"],
                "truncation_quantile": q, "threshold_log_prob": threshold, "truncation": info,
                "truncation_seconds": truncation_seconds, "simulation_seconds": rep["simulation_seconds"],
                "training_seconds": fit["seconds"], "epochs": fit["epochs"],
                "converged": fit["epochs"] < settings["max_epochs"],
                "best_validation_log_prob": fit["best_validation_log_prob"],
                "n_training": int(sum(v.shape[0] for v in thetas)),
            }
            training = {**t, "rounds": reports + [report], "amortized": False,
                        "converged": report["converged"], "n_training_total": report["n_training"]}
            current = AmortizedPosterior(net, self.problem, architecture=self.architecture, training=training,
                                         source_prior=self.source_prior, box_quantiles=self.box_quantiles,
                                         feature_stats=self._stats, calibration=self.calibration,
                                         summary=self.summary, refined_for=x)
            if evaluate:
                report.update(current._round_quality(data, resample, seed))
            reports.append(report)
            if progress:
                quality = "".join(f", {k} {report[k]:.3g}" for k in ("r2_log_power", "peak_shift_hz")
                                  if report.get(k) is not None)
                print(f"round {r}/{rounds} done: {rep['n_valid']} of {n} valid, {fit['epochs']} epochs in "
                      f"{fit['seconds']:.0f} s" + (f"; check on 50 predictive simulations{quality}" if quality else ""),
                      file=sys.stderr)
        return current

    def _round_quality(self, data, resample: bool, seed: int) -> dict:
        post = self.condition(data, n_draws=1000, n_predictive=50, seed=seed, resample=resample)
        fq = post.fit_quality
        mix = post.diagnostics.get("regime_mix")
        # a check of its own (50 predictive simulations, the round's seed): the final posterior's fit quality is
        # computed again from its own predictive draws, so the two R^2 differ by Monte-Carlo error
        return {"r2_log_power": fq.get("r2_log_power", fq.get("explained_variance")),
                "quality_check": "50 predictive simulations at the round's seed (the final fit_quality is its own)",
                "peak_shift_hz": fq.get("peak_shift_hz"),
                "regime_mix": None if mix is None else {k: v["fraction"] for k, v in mix.items()}}

    # --------------------------------------------------------- saving
    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the estimator to directory ``path`` (``estimator.pt`` + ``metadata.json``; no pickle).

        Refuses a directory that already holds an estimator unless
        ``overwrite``. Returns the directory.
        """
        from jrinfer._io import atomic_path, write_text

        path = Path(path)
        overwrite = _checks.check_bool("overwrite", overwrite)
        if not self.amortized:
            raise ValueError("save: this posterior was refined by truncated rounds for one recording and is not an "
                             "amortized estimator; save its Posterior (to_netcdf) and keep the round-0 estimator")
        if (path / _METADATA_FILE).exists() and not overwrite:
            raise FileExistsError(f"{path} already holds an estimator; pass overwrite=True (CLI: --force) to replace it")
        path.mkdir(parents=True, exist_ok=True)
        state = {
            "estimator": {k: v.detach().clone() for k, v in self._net.state_dict().items()},
            "features": {k: v.detach().clone() for k, v in self._stats.items()},
        }
        target = path / _ESTIMATOR_FILE
        with atomic_path(target) as tmp:
            torch.save(state, tmp)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        sims_digest = None
        if self._training_set is not None:  # round 0 of refine() for whoever loads this estimator
            ts = self._training_set
            sims = {"theta": ts.theta.detach().clone(), "x": ts.x.detach().clone(), "valid": ts.valid.detach().clone()}
            with atomic_path(path / _TRAINING_SET_FILE) as tmp:
                torch.save(sims, tmp)
            sims_digest = hashlib.sha256((path / _TRAINING_SET_FILE).read_bytes()).hexdigest()
        saved = self.problem.to_dict()
        meta = {
            "format": _FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "names": list(self.names),
            "prior": self.prior.to_dict(),
            "source_prior": self.source_prior,
            "box_quantiles": list(self.box_quantiles),
            "flow_coordinates": dict(zip(self.names, self._coords.kinds)),
            "observation": saved["observation"],
            "data_template": saved["data"],
            "features": {
                "n_features": self.n_features,
                "coord": self.problem.observed().coord,
                "coord_units": self.problem.observed().coord_units,
                "grid": self.problem.observed().coord_values.tolist(),
                "units": self.problem.observed().units,
                "what": "Observation.features of the data (spectra: log-power on the grid, channels averaged)"
                        + ("" if self.summary == "log_power" else
                           ", then the spectral-shape features " + ", ".join(SHAPE_FEATURES)),
                "summary": self.summary,
                "dtype_in_network": "float32",
            },
            "architecture": self.architecture,
            "training": self.training,
            "calibration": self.calibration,
            "estimator_file": _ESTIMATOR_FILE,
            "estimator_sha256": digest,
            "training_set_file": _TRAINING_SET_FILE if sims_digest else None,
            "training_set_sha256": sims_digest,
        }
        write_text(path / _METADATA_FILE, json.dumps(meta, indent=1, default=float))
        return path

    @classmethod
    def load(cls, path, *, observation=None) -> "AmortizedPosterior":
        """Read an estimator written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            The directory.
        observation : Observation, optional
            The observation the estimator was trained with, for observation
            classes outside :mod:`jrinfer.observation` (checked against the
            saved settings); jrinfer's own are rebuilt from the metadata.

        Raises
        ------
        ValueError
            Not an estimator directory, another format version, another sbi
            minor version, a changed ``estimator.pt``, an observation with
            other settings, or a state that does not fit the saved architecture.
        """
        from jrinfer.prior import Prior
        from jrinfer.problem import InverseProblem

        path = Path(path)
        meta_path = path / _METADATA_FILE
        if not meta_path.is_file():
            raise ValueError(f"{path}: no {_METADATA_FILE}; give a directory written by AmortizedPosterior.save "
                             "(jrinfer train-npe --out)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != _FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format {meta.get('format')!r} version {meta.get('format_version')!r}; this "
                             f"jrinfer reads {_FORMAT_NAME!r} version {FORMAT_VERSION}")
        saved_sbi = (meta.get("versions") or {}).get("sbi") or ""
        have_sbi = _sbi().__version__
        if saved_sbi.split(".")[:2] != have_sbi.split(".")[:2]:
            raise ValueError(f"{path}: trained with sbi {saved_sbi}, installed sbi {have_sbi}: the flow's layout may "
                             f"differ between minor versions; install sbi=={saved_sbi} or train a new estimator")
        target = path / meta.get("estimator_file", _ESTIMATOR_FILE)
        if not target.is_file():
            raise ValueError(f"{path}: {target.name} is missing")
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        if digest != meta.get("estimator_sha256"):
            raise ValueError(f"{path}: {target.name} does not match the SHA-256 in {_METADATA_FILE} (changed or "
                             "replaced after saving); refusing to load it")
        state = torch.load(target, weights_only=True, map_location="cpu")
        prior = Prior.from_dict(meta["prior"])
        if list(prior.names) != meta["names"]:
            raise ValueError(f"{path}: the prior's parameters {list(prior.names)} differ from names {meta['names']}")
        try:
            problem = InverseProblem.from_dict(
                {"observation": meta["observation"], "prior": prior, "data": meta["data_template"]}, observation=observation
            )
        except ValueError as err:
            raise ValueError(f"{path}: {str(err).splitlines()[0]}") from None
        n_features = int(meta["features"]["n_features"])
        summary = meta["features"].get("summary", "log_power")
        if summary not in SUMMARIES:
            raise ValueError(f"{path}: summary features {summary!r} are unknown to this jrinfer (it knows {SUMMARIES})")
        check = _summary_features(problem, problem.observed().values, summary).reshape(-1)
        if check.numel() != n_features:
            raise ValueError(f"{path}: the observation gives {check.numel()} features on the saved grid, the "
                             f"estimator expects {n_features}")
        architecture = meta["architecture"]
        builder = _flow_builder(architecture)
        with _seeded(0), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dummy_theta = torch.linspace(0, 1, 4 * prior.n_params).reshape(4, -1).to(torch.float32)
            dummy_x = torch.linspace(0, 1, 4 * n_features).reshape(4, -1).to(torch.float32)
            net = builder(dummy_theta, dummy_x)
        try:
            net.load_state_dict(state["estimator"], strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: the saved state does not fit the flow described in {_METADATA_FILE} "
                             f"({str(err).splitlines()[0]})") from None
        stats = {k: v.to(torch.float64) for k, v in state["features"].items()}
        loaded = cls(net, problem, architecture=architecture, training=meta["training"],
                     source_prior=meta.get("source_prior"), box_quantiles=meta["box_quantiles"], feature_stats=stats,
                     calibration=meta.get("calibration"), summary=summary)
        loaded._training_set = _load_training_set(path, meta)
        return loaded


def _load_training_set(path: Path, meta: dict) -> "TrainingSet | None":
    """The saved round-0 simulations of an estimator directory, or None (absent, changed, or another size).

    None makes :meth:`AmortizedPosterior.refine` re-simulate them from the
    saved seed, as for estimators saved before the file existed.
    """
    name = meta.get("training_set_file")
    if not name or not (path / name).is_file():
        return None
    if hashlib.sha256((path / name).read_bytes()).hexdigest() != meta.get("training_set_sha256"):
        warnings.warn(f"{path}: {name} does not match the SHA-256 in {_METADATA_FILE}; it is not used (truncated "
                      "rounds re-simulate the training set instead)", RuntimeWarning, stacklevel=3)
        return None
    sims = torch.load(path / name, weights_only=True, map_location="cpu")
    t = meta["training"]
    if int(sims["valid"].numel()) != t["n_simulations"] or int(sims["valid"].sum()) != t["n_valid"]:
        return None
    return TrainingSet(theta=sims["theta"], x=sims["x"], valid=sims["valid"], reasons=(), regime=None,
                       seed=t["seed"], chunk_size=t["chunk_size"], seconds=0.0)


_TRAINING_KEYS = ("training_batch_size", "learning_rate", "validation_fraction", "stop_after_epochs", "max_epochs")


def _train_flow(coords, theta_z: torch.Tensor, x: torch.Tensor, architecture: dict, settings: dict, *, seed: int,
                progress: bool = False, net=None, label: str = "training the flow"):
    """Train sbi's flow on ``(theta_z, x)`` (float32, flow coordinates) with the ordinary NPE loss.

    ``net``: continue from this network (a copy; the truncated rounds of
    :meth:`AmortizedPosterior.refine`) instead of a fresh one. Returns the
    network and ``{"epochs", "seconds", "best_validation_log_prob"}``.
    """
    _sbi()
    import copy

    from sbi.inference import NPE as _SbiNPE

    t0 = time.perf_counter()
    # sbi rewrites its epoch counter on stdout hundreds of times: swallowed; one line before and after instead
    if progress:
        print(f"{label} on {theta_z.shape[0]} simulations (stops when the validation loss has not improved for "
              f"{settings['stop_after_epochs']} epochs, at most {settings['max_epochs']}) ...", file=sys.stderr,
              flush=True)
    shown = contextlib.redirect_stdout(io.StringIO())
    with _seeded(seed), _one_thread(), shown, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        inference = _SbiNPE(prior=coords.torch_prior, density_estimator=_flow_builder(architecture),
                            show_progress_bars=False, tracker=_NoTracker())
        if progress:
            # sbi calls self._maybe_show_progress(show, epoch) after every epoch (a carriage-return counter on
            # stdout when show): an instance attribute turns it into a line on stderr every 10 s at most
            inference._maybe_show_progress = _EpochLines(label, t0)
        if net is not None:
            inference._neural_net = copy.deepcopy(net).train()
        inference.append_simulations(theta_z, x)
        trained = inference.train(
            training_batch_size=settings["training_batch_size"],
            learning_rate=settings["learning_rate"],
            validation_fraction=settings["validation_fraction"],
            stop_after_epochs=settings["stop_after_epochs"],
            max_num_epochs=settings["max_epochs"],
            # warm start on draws from the prior (round 0) and the prior truncated to a region (TSNPE): the
            # ordinary maximum-likelihood loss, not the atomic one of a proposal
            force_first_round_loss=net is not None,
        )
    seconds = time.perf_counter() - t0
    epochs = int(inference.epoch)
    if progress:
        print(f"{label}: trained {epochs} epochs in {seconds:.0f} s", file=sys.stderr, flush=True)
    return trained.eval(), {"epochs": epochs, "seconds": seconds,
                            "best_validation_log_prob": -float(inference._summary["best_validation_loss"][-1])}


class _EpochLines:
    """sbi's per-epoch progress hook as a line on stderr at most every :data:`_PROGRESS_INTERVAL_S` seconds."""

    def __init__(self, label: str, t0: float):
        self.label, self.t0, self.last = label, t0, time.perf_counter()

    def __call__(self, show, epoch) -> None:
        now = time.perf_counter()
        if now - self.last >= _PROGRESS_INTERVAL_S:
            self.last = now
            print(f"{self.label}: {int(epoch)} epochs, {now - self.t0:.0f} s elapsed", file=sys.stderr, flush=True)


class _NoTracker:
    """sbi's training tracker interface doing nothing (sbi's default writes TensorBoard logs into ./sbi-logs)."""

    log_dir = None

    def log_metric(self, *args, **kwargs):
        pass

    def log_metrics(self, *args, **kwargs):
        pass

    def log_params(self, *args, **kwargs):
        pass

    def add_figure(self, *args, **kwargs):
        pass

    def flush(self):
        pass


class _CachedDraws:
    """Posterior draws ``(n_samples, n_x, n_params)`` already made, handed to ``sbi.diagnostics`` as a posterior."""

    def __init__(self, samples: torch.Tensor):
        self.samples = samples

    def sample_batched(self, sample_shape, x, **kwargs):
        if tuple(sample_shape) != tuple(self.samples.shape[:1]) or x.shape[0] != self.samples.shape[1]:
            raise NotImplementedError("these cached draws were made for other shapes")
        return self.samples


# ======================================================== the backend
class NPE:
    """Neural posterior estimation with sbi: simulate, train a flow once, condition on any data.

    Parameters
    ----------
    n_simulations : int
        Training simulations (failed ones are left out and reported).
    chunk_size : int
        Simulations per chunk (part of the training set's definition).
    seed : int
        Root seed of the training simulations, the network initialisation and
        the training batches: the same seed gives the same estimator.
    density_estimator : {"maf", "nsf"}
        sbi's masked autoregressive flow or neural spline flow.
    hidden_features, num_transforms, num_bins : int
        Flow size (``num_bins`` for ``"nsf"`` only).
    embedding : {None, "mlp"}
        Summary features straight into the flow, or through a small
        fully-connected embedding network (``embedding_dim`` outputs, two
        hidden layers of 64) trained with it.
    embedding_dim : int
    training_batch_size, learning_rate, validation_fraction, stop_after_epochs, max_epochs
        Training settings (Adam; stops when the validation loss has not
        improved for ``stop_after_epochs`` epochs, or at ``max_epochs``).
        The defaults are sbi's: with a learning rate of 1e-3 and a patience
        of 10 epochs, the linear-Gaussian test problem stopped at a posterior
        ten times too wide.
    box_quantiles : (float, float)
        Prior quantiles of the bounded box (:func:`box_prior`).
    calibration_simulations : int
        Held-out simulations for :meth:`AmortizedPosterior.calibrate` right
        after training (0: no calibration).
    summary : {None, "log_power", "log_power+shape"}
        Summary features: the observation's (log-power for spectra), or
        those and :func:`spectral_shape_features` (spectra only). ``None``
        (default): ``"log_power+shape"`` for spectra, ``"log_power"`` for
        other data.
    progress : bool or {"auto", "bar", "lines"}
        Progress on stderr for simulation, training and calibration:
        ``"lines"`` a start line, one at most every 10 s and an end line per
        step (no carriage returns); ``"bar"`` bars for the simulation chunks
        and calibration draws; ``"auto"`` (or True) bars on a terminal, lines
        elsewhere; ``False`` (default) nothing. CLI: ``train-npe
        --no-progress`` gives the lines, ``--quiet`` nothing.

    Attributes
    ----------
    estimator_ : AmortizedPosterior or None
        The last trained estimator (set by :meth:`train` and :meth:`fit`).

    Examples
    --------
    >>> npe = NPE(n_simulations=20_000, seed=1)            # doctest: +SKIP
    >>> amortized = npe.train(problem)                     # doctest: +SKIP
    >>> posterior = amortized.condition(other_recording)   # doctest: +SKIP
    >>> refined = npe.fit(problem, rounds=3, simulations_per_round=3000)  # doctest: +SKIP

    References
    ----------
    M. Deistler, P. J. Goncalves, J. H. Macke (2022), "Truncated proposals for
    scalable and hassle-free simulation-based inference", NeurIPS (the
    ``rounds`` of :meth:`fit` and :meth:`AmortizedPosterior.refine`).
    """

    def __init__(
        self,
        *,
        n_simulations: int = 5000,
        chunk_size: int = 500,
        seed: int = 0,
        density_estimator: str = "maf",
        hidden_features: int = 50,
        num_transforms: int = 5,
        num_bins: int = 10,
        embedding: str | None = None,
        embedding_dim: int = 20,
        training_batch_size: int = 200,
        learning_rate: float = 5e-4,
        validation_fraction: float = 0.1,
        stop_after_epochs: int = 20,
        max_epochs: int = 300,
        box_quantiles=(0.01, 0.99),
        calibration_simulations: int = 0,
        summary: str | None = None,
        progress: bool = False,
    ):
        self.n_simulations = _checks.check_int("n_simulations", n_simulations, minimum=50)
        self.chunk_size = _checks.check_int("chunk_size", chunk_size, minimum=1)
        self.seed = _checks.check_int("seed", seed, minimum=0)
        _checks.check_option("density_estimator", density_estimator, ("maf", "nsf"))
        self.density_estimator = density_estimator
        self.hidden_features = _checks.check_int("hidden_features", hidden_features, minimum=2)
        self.num_transforms = _checks.check_int("num_transforms", num_transforms, minimum=1)
        self.num_bins = _checks.check_int("num_bins", num_bins, minimum=2)
        if embedding is not None:
            _checks.check_option("embedding", embedding, (None, "mlp"))
        self.embedding = embedding
        self.embedding_dim = _checks.check_int("embedding_dim", embedding_dim, minimum=1)
        self.training_batch_size = _checks.check_int("training_batch_size", training_batch_size, minimum=2)
        self.learning_rate = _checks.check_scalar("learning_rate", learning_rate, positive=True)
        vf = _checks.check_scalar("validation_fraction", validation_fraction, positive=True)
        if not vf < 0.5:
            raise ValueError(f"validation_fraction must be in (0, 0.5), got {validation_fraction!r}")
        self.validation_fraction = vf
        self.stop_after_epochs = _checks.check_int("stop_after_epochs", stop_after_epochs, minimum=1)
        self.max_epochs = _checks.check_int("max_epochs", max_epochs, minimum=1)
        self.box_quantiles = _check_quantiles(box_quantiles)
        self.calibration_simulations = _checks.check_int("calibration_simulations", calibration_simulations, minimum=0)
        if 0 < self.calibration_simulations < 20:
            raise ValueError(f"calibration_simulations must be 0 or >= 20, got {calibration_simulations!r}")
        if summary is not None:
            _checks.check_option("summary", summary, SUMMARIES)
        self.summary = summary
        self.progress = _check_progress(progress)
        self.estimator_ = None

    def _architecture(self, n_features: int) -> dict:
        emb = None
        if self.embedding == "mlp":
            emb = {"kind": "mlp", "input_dim": n_features, "output_dim": self.embedding_dim, "num_layers": 2,
                   "num_hiddens": 64}
        return {"density_estimator": self.density_estimator, "hidden_features": self.hidden_features,
                "num_transforms": self.num_transforms, "num_bins": self.num_bins, "embedding": emb,
                "z_score": "independent"}

    def train(self, problem, *, client=None) -> AmortizedPosterior:
        """Simulate the training set of ``problem`` and train the flow.

        Parameters
        ----------
        problem : InverseProblem
            Its observation is the simulator, its prior (made a box by
            :func:`box_prior`) the training distribution, its data the
            template every conditioned recording must match (grid, units).
        client : dask.distributed.Client, optional
            Run the simulation chunks on this client.

        Returns
        -------
        AmortizedPosterior
            Also kept as :attr:`estimator_`.
        """
        from jrinfer.problem import InverseProblem

        if not isinstance(problem, InverseProblem):
            raise ValueError(f"problem must be an InverseProblem, got {type(problem).__name__}")
        _sbi()
        box = box_prior(problem.prior, self.box_quantiles)
        boxed = InverseProblem(problem.observation, box, problem.data)
        coords = _FlowCoordinates(box)
        summary = _check_summary(self.summary, boxed)
        sims = simulate_training_set(boxed, self.n_simulations, seed=self.seed, chunk_size=self.chunk_size,
                                     client=client, progress=self.progress, summary=summary)
        report = sims.report()
        if report["n_valid"] < 50:
            reasons = "; ".join(f"{f['n']} x {f['reason']}" for f in report["failures"][:3])
            raise ValueError(
                f"only {report['n_valid']} of {report['n_simulations']} simulations succeeded ({reasons}): the prior "
                "box lies where the observation cannot simulate; change the prior or the observation's method"
            )
        theta = coords.to_flow(sims.theta[sims.valid]).to(torch.float32)
        x64 = sims.x[sims.valid]
        x = x64.to(torch.float32)
        architecture = self._architecture(x.shape[-1])
        settings = {k: getattr(self, k) for k in _TRAINING_KEYS}
        net, fit = _train_flow(coords, theta, x, architecture, settings, seed=chunk_seed(self.seed, _NETWORK_INDEX),
                               progress=self.progress)
        epochs, seconds = fit["epochs"], fit["seconds"]
        report.update(
            training_seconds=seconds,
            epochs=epochs,
            converged=epochs <= self.max_epochs,
            best_validation_log_prob=fit["best_validation_log_prob"],
            training_batch_size=self.training_batch_size,
            learning_rate=self.learning_rate,
            validation_fraction=self.validation_fraction,
            stop_after_epochs=self.stop_after_epochs,
            max_epochs=self.max_epochs,
            n_features=int(x.shape[-1]),
            note=("trained on the successful simulations only: the posterior is conditional on a successful "
                  "simulation (the prior box restricted to where the observation predicts)"),
        )
        estimator = AmortizedPosterior(
            net.eval(), boxed, architecture=architecture, training=report, source_prior=problem.prior.to_dict(),
            box_quantiles=self.box_quantiles, feature_stats=_feature_stats(x64, _spectral_grid(boxed)), summary=summary,
        )
        estimator._training_set = sims  # round 0 of refine(): kept, and saved with it
        if self.calibration_simulations:
            estimator.calibrate(self.calibration_simulations, client=client, progress=self.progress)
        self.estimator_ = estimator
        return estimator

    def _matches(self, problem) -> bool:
        """The kept estimator was trained for ``problem``'s observation, prior and grid."""
        est = self.estimator_
        if est is None:
            return False
        try:
            if est.problem.observation.settings() != problem.observation.settings():
                return False
        except (ValueError, TypeError):  # settings that cannot be compared: the same object only
            if est.problem.observation is not problem.observation:
                return False
        if box_prior(problem.prior, self.box_quantiles) != est.prior:
            return False
        try:
            est.problem_for(problem.data)
        except ValueError:
            return False
        return True

    def fit(self, problem, *, n_draws: int = 1000, n_predictive: int = 200, seed: int = 0, resample: bool = False,
            client=None, rounds: int = 0, simulations_per_round: int = 3000, truncation_quantile: float = 1e-3,
            importance_sampling: bool = False, n_proposals: int | None = None, smc: bool = False):
        """Train (unless :attr:`estimator_` was trained for this problem's observation, prior and grid) and condition.

        Parameters
        ----------
        problem : InverseProblem
        n_draws, n_predictive, seed, resample
            As in :meth:`AmortizedPosterior.condition` (``seed`` seeds the
            conditioning; the training seed is the constructor's).
        client : dask.distributed.Client, optional
            For the training simulations.
        rounds : int
            Truncated sequential rounds for this recording after the
            amortized training (0: none, the amortized posterior;
            :meth:`AmortizedPosterior.refine`, Deistler et al. 2022). The
            refined posterior is for ``problem.data`` only; :attr:`estimator_`
            stays the amortized round-0 estimator, to which the calibration
            verdict refers.
        simulations_per_round, truncation_quantile
            See :meth:`AmortizedPosterior.refine`.
        importance_sampling, n_proposals
            Neural importance sampling of the (refined) flow against the
            problem's likelihood: see :meth:`AmortizedPosterior.condition`.
        smc
            Tempered SMC from the (refined) flow to the problem's posterior
            (``n_draws`` particles): see :meth:`AmortizedPosterior.condition`.

        Returns
        -------
        Posterior
            With rounds, ``diagnostics["amortized"]`` is False and
            ``diagnostics["rounds"]`` reports every round; with importance
            sampling, ``diagnostics["pareto_k"]`` and ``["importance_ess"]``.
        """
        from jrinfer.problem import InverseProblem

        if not isinstance(problem, InverseProblem):
            raise ValueError(f"problem must be an InverseProblem, got {type(problem).__name__}")
        n_draws = _checks.check_int("n_draws", n_draws, minimum=2)
        n_predictive = _checks.check_int("n_predictive", n_predictive, minimum=0)
        seed = _checks.check_int("seed", seed, minimum=0)
        rounds = _checks.check_int("rounds", rounds, minimum=0)
        if not self._matches(problem):
            self.train(problem, client=client)
        est = self.estimator_
        if rounds:
            est = est.refine(problem.data, rounds=rounds, simulations_per_round=simulations_per_round,
                             truncation_quantile=truncation_quantile, resample=resample, client=client,
                             progress=self.progress)
        return est.condition(problem.data, n_draws=n_draws, n_predictive=n_predictive, seed=seed, resample=resample,
                             importance_sampling=importance_sampling, n_proposals=n_proposals, smc=smc,
                             progress=self.progress)
