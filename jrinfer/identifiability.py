r"""Identifiability: which parameters and combinations the data can pin down.

Four complementary analyses, collected in one :class:`IdentifiabilityReport`
(readable table, ``to_dict()``/JSON, plots):

1. **Local** (:func:`local_analysis`): the Fisher information of the
   observation model at a parameter set, in the prior's unconstrained
   coordinates ``z`` (``ln theta`` for log-normal priors, so a direction
   ``{"C": 0.71, "e0": 0.71}`` means "ln C + ln e0"),

   .. math:: F = J^\top \Pi J, \qquad J = \partial f / \partial z,

   with ``f`` and ``Pi`` from :meth:`InverseProblem.gaussian_form` (the
   prediction in the likelihood's space, i.e. log-power for spectra, and the
   noise precision ``exp(log_precision)``). Its eigen-spectrum, condition
   number, stiff and sloppy directions as named parameter combinations
   (Gutenkunst et al. 2007), per-parameter Cramer-Rao standard deviations,
   and Brun et al. (2001) collinearity indices of parameter subsets.
   *Structural* null directions are found numerically (singular values of
   ``Pi^{1/2} J`` at round-off level relative to the largest) and checked for
   exactness: they must stay null at randomly perturbed nearby parameter
   sets. They are reported apart from merely *sloppy* (weak) directions.
2. **Profile likelihood** (:func:`profile_likelihood`; Raue et al. 2009): one
   parameter held on a grid while the others are re-optimised with the
   variational Laplace optimiser, the 95 % threshold
   ``chi2_{1, 0.95} = 3.84`` on ``-2 log L`` and a verdict *identified*
   (bounded on both sides), *one-sided* or *flat*.
3. **Posterior-based** (:func:`posterior_summary`): contraction relative to
   the prior, posterior correlations and flagged pairs from any backend's
   :class:`~jrinfer.Posterior` (Betancourt 2018).
4. **Simulation-based** (:func:`recovery_study`): datasets simulated from the
   prior and fitted, in batches (optionally on an executor such as
   ``dask.distributed.Client.get_executor()``): recovery, posterior z-scores
   and contraction per parameter (Talts et al. 2018; Betancourt 2018).

Exact null directions of the Jansen-Rit observations
----------------------------------------------------
Write ``k_e = A/a``, ``k_i = B/b`` (the PSP gains in mV s), ``C1..C4 = C (1,
0.8, 0.25, 0.25)`` and ``S(u) = 2 e0 sigma(r (u - v0))``.

*Global scaling symmetries of the model* (exact for the full nonlinear
ODE, hence for every observation of ``v``):

- **Voltage scale** ``y -> lambda y``: ``A, B, v0 -> lambda (A, B, v0)``,
  ``r -> r / lambda`` leaves ``S(lambda u)`` and every equation invariant and
  multiplies ``v`` by ``lambda``, which the output gain absorbs. Direction
  (log coordinates) ``ln A + ln B + ln v0 - ln r - ln gain``.
- **Contacts vs. firing rate** ``e0 -> mu e0``, ``C -> C / mu``: ``S -> mu S``
  at the same argument, so ``y0, y3 -> mu (y0, y3)``; ``C1 y0`` and
  ``C2 S(C1 y0)``, ``C4 S(C3 y0)`` are unchanged, so ``v`` is unchanged.
  Direction ``ln e0 - ln C``.
- **Rate units** (only when ``p_mean`` is free): ``e0, p -> mu (e0, p)``,
  ``A, B -> (A, B) / mu`` (``p_std`` and the pulse amplitude scale with
  ``p``). Direction ``ln e0 + ln p_mean + ln p_std + ln input_amplitude -
  ln A - ln B``.

A generator is a null direction of a problem only for the part of it that
moves free parameters; :func:`jansen_rit_null_space` returns the
combinations of the generators whose fixed components cancel.

*What the linearised spectrum cannot see* (``SpectrumObservation(method=
"transfer")``). At the equilibrium ``(y0*, v*)`` with sigmoid slopes
``g0 = S'(v*)``, ``g1 = S'(C1 y0*)``, ``g2 = S'(C3 y0*)`` the transfer
function from the input to ``v`` is ``H = h_e / D`` with
``h_e = k_e a^2/(s+a)^2``, ``h_i = k_i b^2/(s+b)^2`` and::

    D = 1 - L_e [a^2/(s+a)^2]^2 + L_i [a^2/(s+a)^2][b^2/(s+b)^2],
    L_e = C1 C2 g0 g1 k_e^2,   L_i = C3 C4 g0 g2 k_e k_i.

So the predicted log-power (``gain^2 2 p_std^2 |H|^2`` plus the aperiodic
and floor terms) depends on the parameters only through the invariants
``I = (a, b, L_e, L_i, gain p_std k_e, ap_amplitude, ap_exponent, floor)``:
the sigmoid enters only through its slopes at the three operating points,
and one overall scale absorbs ``gain``, ``p_std`` and ``k_e``. Every
direction in the kernel of ``dI/dz`` is therefore an exact null direction
of the spectrum. With the 8 JR constants, ``gain`` and the three aperiodic
parameters free (12 parameters, 8 invariants) the kernel is 4-dimensional:
the two global symmetries above plus two directions that move the
equilibrium along the sigmoid while keeping ``L_e`` and ``L_i`` (their
weights depend on the operating point, so they are computed by implicit
differentiation of the equilibrium rather than written as fixed numbers).
:func:`jansen_rit_null_space` computes this kernel from the invariants
alone (never from the spectrum), and the tests and the notebook show that
the numerical analysis recovers exactly that subspace: at the JR 1995
constants with ``p_mean = 60`` the four principal angles are below 1e-9
degrees, the null singular values are ~1e-16 of the largest (the weakest
genuine direction, the white floor, is ~3e-5), and at perturbed nearby
parameter sets the null space keeps its dimension (it turns by ~1 degree
for a 1 % perturbation: the operating-point directions depend on the
equilibrium). ``a``, ``b`` and the aperiodic parameters never enter a null
direction: the time constants are identified by a spectrum; of ``A, B, C,
e0, v0, r, gain`` only three combinations (``gain k_e``, ``L_e``, ``L_i``)
are. Fixing ``e0, v0, r`` and ``B`` (:meth:`LocalAnalysis.suggest_fixes`)
leaves a problem without structural null directions.

*Evoked responses* are not linear in the input: a pulse large enough to
drive the sigmoid out of its linear range makes the ERP depend on the
sigmoid's shape, not only its slopes, so only the two global symmetries
remain exact. At the default evoked set (``q = 0.05``, half the amplitude from
which the pulse switches the column to its lower equilibrium; JR 1995's
``q = 0.5`` does switch it and is outside the evoked regime) the numerical null
space is 2-dimensional with principal angles to the symmetries below 1e-9
degrees; ``a``, ``b``, ``input_latency`` and ``input_width`` are identified
(Cramer-Rao sd 0.04-0.05 in log units at 0.5 uV noise), and the two
operating-point directions the spectrum cannot see are stiff (sd 1e-4 and
3e-4), while ``input_amplitude`` is weak (sd 5), traded against ``A``, ``v0``,
``C``, ``e0`` and ``B``. In the limit ``q -> 0`` the ERP is ``q`` times the
impulse response of ``H`` and approaches the spectrum's null space with
``input_amplitude`` in place of ``p_std`` (at ``q = 0.01`` those directions have
singular values ~1e-7 of the largest: weak, not exact). Conversely a spectrum sees the aperiodic
background, which an ERP does not; the input scale is never separated from
the gain by a spectrum (``gain p_std k_e`` is one invariant) and only weakly
by an ERP.

References
----------
Brun R, Reichert P, Kuensch HR (2001). Practical identifiability analysis of
large environmental simulation models. Water Resour Res 37:1015-1030.

Raue A, Kreutz C, Maiwald T, Bachmann J, Schilling M, Klingmueller U,
Timmer J (2009). Structural and practical identifiability analysis of
partially observed dynamical models by exploiting the profile likelihood.
Bioinformatics 25:1923-1929.

Gutenkunst RN, Waterfall JJ, Casey FP, Brown KS, Myers CR, Sethna JP (2007).
Universally sloppy parameter sensitivities in systems biology models. PLoS
Comput Biol 3:e189.

Betancourt M (2018). Calibrating model-based inferences and decisions.
arXiv:1803.08393 (posterior contraction vs z-score).

Talts S, Betancourt M, Simpson D, Vehtari A, Gelman A (2018). Validating
Bayesian inference algorithms with simulation-based calibration.
arXiv:1804.06788.

Bjorck A, Golub GH (1973). Numerical methods for computing angles between
linear subspaces. Math Comp 27:579-594 (principal angles).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from jrinfer import _checks

__all__ = [
    "LocalAnalysis",
    "Profile",
    "PosteriorIdentifiability",
    "RecoveryStudy",
    "IdentifiabilityReport",
    "local_analysis",
    "local_analysis_function",
    "profile_likelihood",
    "posterior_summary",
    "recovery_study",
    "identifiability_report",
    "jansen_rit_problem",
    "jansen_rit_null_space",
    "jansen_rit_symmetries",
    "principal_angles",
    "headline",
    "plot_eigenvectors",
    "plot_profiles",
    "plot_contraction",
]

_F64 = torch.float64
_CHI2_1_95 = 3.841458820694124  # chi-square quantile, 1 dof, 0.95
_NOISE = ("log_precision",)


# ============================================================== helpers
def _check_prob(name: str, x: float, lo: float = 0.0, hi: float = 1.0) -> float:
    x = _checks.check_scalar(name, x)
    if not lo < x < hi:
        raise ValueError(f"{name} must lie strictly between {lo} and {hi}, got {x!r}")
    return x


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def principal_angles(U, V) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spaces of ``U`` and ``V``.

    Parameters
    ----------
    U, V : array_like
        Shapes ``(n, p)`` and ``(n, q)``; columns need not be orthonormal.

    Returns
    -------
    numpy.ndarray
        ``min(p, q)`` angles in ``[0, pi/2]``, from the singular values of
        ``Q_U^T Q_V`` (Bjorck & Golub 1973); an empty array if either space is
        empty. The subspaces are equal when ``p == q`` and every angle is ~0.
    """
    U = np.asarray(U, dtype=float)
    V = np.asarray(V, dtype=float)
    if U.ndim != 2 or V.ndim != 2 or U.shape[0] != V.shape[0]:
        raise ValueError(f"U and V must be 2-D with the same number of rows, got shapes {U.shape} and {V.shape}")
    if U.shape[1] == 0 or V.shape[1] == 0:
        return np.zeros(0)
    qu, _ = np.linalg.qr(U)
    qv, _ = np.linalg.qr(V)
    if qu.shape[1] > qv.shape[1]:
        qu, qv = qv, qu
    cos = np.sort(np.linalg.svd(qu.T @ qv, compute_uv=False))[::-1]
    # sines from the residual keep small angles accurate (arccos loses them)
    sin = np.sort(np.linalg.svd(qu - qv @ (qv.T @ qu), compute_uv=False))[: qu.shape[1]]
    return np.arctan2(np.clip(sin, 0, None), np.clip(cos, 0, None))


def _label(weights: Mapping[str, float], coords: Mapping[str, str] | None = None, digits: int = 2) -> str:
    """``"0.71 ln C - 0.71 ln e0"``-style reading of a direction (weights rounded, tiny ones dropped)."""
    parts = []
    for name, w in sorted(weights.items(), key=lambda kv: -abs(kv[1])):
        if abs(w) < 0.5 * 10.0 ** (-digits):
            continue
        c = (coords or {}).get(name, "log")
        var = {"log": f"ln {name}", "logit": f"logit {name}", "logit-log": f"logit ln {name}"}.get(c, name)
        sign = "-" if w < 0 else "+"
        parts.append(f"{sign} {abs(w):.{digits}f} {var}")
    s = " ".join(parts)
    return s[2:] if s.startswith("+ ") else ("-" + s[1:] if s.startswith("- ") else s)


def _canonical_sign(v: np.ndarray) -> np.ndarray:
    """Sign such that the largest weight (the first of near-ties) is positive."""
    a = np.abs(v)
    i = int(np.flatnonzero(a >= a.max() * (1 - 1e-6))[0])
    return v if v[i] >= 0 else -v


def _readable_basis(N: np.ndarray) -> np.ndarray:
    """Rotate an orthonormal basis ``(n, d)`` to reduced row echelon form (one pivot parameter per direction).

    The span is unchanged; each direction then reads "moving the pivot
    parameter is compensated by ...". Columns are normalised to unit length.
    """
    n, d = N.shape
    if d == 0:
        return N
    M = N.T.copy()  # (d, n)
    pivots = []
    for row in range(d):
        sub = np.abs(M[row:])
        sub[:, pivots] = 0
        r, c = np.unravel_index(int(np.argmax(sub)), sub.shape)
        r += row
        M[[row, r]] = M[[r, row]]
        M[row] /= M[row, c]
        for k in range(d):
            if k != row:
                M[k] -= M[k, c] * M[row]
        pivots.append(c)
    M /= np.linalg.norm(M, axis=1, keepdims=True)
    return np.stack([_canonical_sign(m) for m in M], axis=1)


def _direction_dict(v: np.ndarray, names: Sequence[str], digits: int = 4) -> dict:
    return {n: round(float(w), digits) for n, w in zip(names, v) if abs(w) >= 10.0 ** (-digits)}


# ------------------------------------------------ Jacobians (batched)
def _jacobian_forward(fb: Callable, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values ``(B, m)`` and Jacobians ``(B, m, n)`` of a batched ``fb`` at the rows of ``Z`` ``(B, n)``.

    One forward-mode (dual number) pass over a batch of ``B * n`` copies with
    unit tangents: exact to round-off and vectorised over points and
    directions. The primal also requires grad so that code choosing a
    non-differentiable fast path when no gradient is needed (the native
    simulation kernel) takes the differentiable one.
    """
    import torch.autograd.forward_ad as fwAD

    B, n = Z.shape
    primal = Z[:, None, :].expand(B, n, n).reshape(B * n, n).clone().requires_grad_(True)
    tangent = torch.eye(n, dtype=_F64).expand(B, n, n).reshape(B * n, n)
    from jrinfer._threading import FORWARD_AD

    with FORWARD_AD, fwAD.dual_level(), warnings.catch_warnings():
        # torch's first use of its forward-mode decompositions calls the deprecated
        # torch.jit.script internally; not actionable here
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=DeprecationWarning)
        out = fb(fwAD.make_dual(primal, tangent))
        p, t = fwAD.unpack_dual(out)
        if t is None:  # output does not depend on z
            t = torch.zeros_like(p)
    m = p.shape[-1]
    return p.detach().reshape(B, n, m)[:, 0], t.detach().reshape(B, n, m).transpose(1, 2)


def _jacobian_loop(f: Callable, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fallback for an unbatched ``f``: reverse mode per point (``torch.autograd.functional.jacobian``)."""
    from torch.autograd.functional import jacobian

    vals, jacs = [], []
    for z in Z:
        with torch.no_grad():
            vals.append(f(z.clone()).to(_F64))
        jacs.append(jacobian(lambda x: f(x).to(_F64), z.clone()))
    return torch.stack(vals), torch.stack(jacs)


class _Target:
    """A model ``y = f(z) + e``, ``e ~ N(0, diag(precision)^-1)``, with names and coordinates.

    ``fb`` maps ``(B, n)`` to ``(B, m)`` (NaN rows where the model cannot
    predict); ``f1`` is the unbatched form (used by the VL optimiser).
    """

    def __init__(self, fb, f1, y, precision, names, coords, z0, batched=True):
        self.fb, self.f1, self.y = fb, f1, y
        self.precision = precision
        self.names = tuple(names)
        self.coords = tuple(coords)
        self.z0 = z0
        self.batched = batched

    def jacobians(self, Z: torch.Tensor):
        if self.batched:
            try:
                return _jacobian_forward(self.fb, Z)
            except (RuntimeError, NotImplementedError):  # an op without a forward-mode formula
                pass
        return _jacobian_loop(self.f1, Z)


def _coordinate_kind(dist) -> str:
    kind = getattr(dist, "_kind", type(dist).__name__.lower())
    return {"lognormal": "log", "normal": "identity", "uniform": "logit", "loguniform": "logit-log"}.get(kind, kind)


def _theta_vector(problem, theta) -> torch.Tensor:
    names = tuple(problem.names)
    if theta is None:
        raise ValueError("theta is required: a dict {name: value} or an array in problem.names order")
    if isinstance(theta, Mapping):
        missing = [n for n in names if n not in theta and n not in _NOISE]
        if missing:
            raise ValueError(f"theta misses free parameter(s) {missing} of the problem ({list(names)})")
        unknown = [k for k in theta if k not in names]
        if unknown:
            raise ValueError(f"theta names parameter(s) {unknown} that are not free in the problem ({list(names)})")
        vals = []
        for n in names:
            if n in theta:
                vals.append(float(theta[n]))
            else:  # noise parameter not given: its prior centre
                d = problem.prior.distributions[n]
                vals.append(float(getattr(d, "mean", 0.0)))
        return torch.tensor(vals, dtype=_F64)
    t = _checks.as_float_tensor("theta", theta)
    if t.shape != (len(names),):
        raise ValueError(f"theta must have shape ({len(names)},) ordered as {list(names)}, got {tuple(t.shape)}")
    return t


def _problem_target(problem, theta, noise: float | None = None) -> _Target:
    """Cast an :class:`~jrinfer.InverseProblem` at ``theta`` as a :class:`_Target`.

    Uses :meth:`InverseProblem.gaussian_form` for ``y``, the names and the
    precision, and a batched version of its ``f`` built on
    :meth:`InverseProblem.predict` (checked against ``form.f`` at ``theta``;
    on a mismatch the unbatched ``form.f`` is used).
    """
    form = problem.gaussian_form()
    names_all = tuple(problem.names)
    th = _theta_vector(problem, theta)
    z_all = problem.prior.to_unconstrained(th)
    idx = [names_all.index(n) for n in form.names]
    noise_idx = [i for i, n in enumerate(names_all) if n in _NOISE]
    if noise is not None:
        lam = torch.full((len(form.hyper_mean),), -2.0 * math.log(_checks.check_scalar("noise", noise, positive=True)), dtype=_F64)
    elif noise_idx:
        lam = torch.full((len(form.hyper_mean),), float(th[noise_idx[0]]), dtype=_F64)
    else:
        lam = form.hyper_mean.to(_F64)
    comps = torch.as_tensor(form.precision_components, dtype=_F64)
    if comps.dim() == 3:  # full (k, m, m) components: use their diagonals only if diagonal
        if not all(torch.equal(c, torch.diag(torch.diagonal(c))) for c in comps):
            raise ValueError("local analysis supports diagonal precision components only")
        comps = torch.diagonal(comps, dim1=-2, dim2=-1)
    precision = (torch.exp(lam)[:, None] * comps).sum(0)
    z0 = z_all[idx]
    y = torch.as_tensor(form.y, dtype=_F64).reshape(-1)
    m = y.numel()
    dists = problem.prior.distributions
    coords = [_coordinate_kind(dists[n]) for n in form.names]

    def full_z(z: torch.Tensor) -> torch.Tensor:
        cols = [None] * len(names_all)
        for j, i in enumerate(idx):
            cols[i] = z[..., j]
        for i in range(len(names_all)):
            if cols[i] is None:
                cols[i] = z_all[i].expand(z.shape[:-1])
        return torch.stack(cols, -1)

    def make_fb(transform: str, tile: int):
        def fb(z: torch.Tensor) -> torch.Tensor:
            theta_b = problem.prior.from_unconstrained(full_z(z))
            pred = problem.predict(theta_b)
            v = pred.value
            v = torch.log(v) if transform == "log" else v
            v = v.reshape(z.shape[0], -1)
            if tile > 1:
                v = v.repeat(1, tile)
            return torch.where(pred.valid.reshape(-1, 1), v, torch.full_like(v, math.nan))

        return fb

    with torch.no_grad():
        ref = form.f(z0.clone()).to(_F64).reshape(-1)
        chosen = None
        try:
            pred = problem.predict(problem.prior.from_unconstrained(full_z(z0[None])))
            size = pred.value.reshape(1, -1).shape[1]
            if m % size == 0:
                for transform in ("identity", "log"):
                    fb = make_fb(transform, m // size)
                    val = fb(z0[None])[0]
                    if torch.allclose(val, ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max().clamp_min(1e-300))):
                        chosen = fb
                        break
        except (RuntimeError, ValueError):
            chosen = None
    if not bool(torch.isfinite(ref).all()):
        raise ValueError(
            "the observation cannot predict data at theta (e.g. an unstable equilibrium under the transfer "
            "method): choose a parameter set in the valid regime"
        )
    return _Target(chosen, form.f, y, precision, form.names, coords, z0, batched=chosen is not None)


# ============================================================== 1. local
@dataclass(frozen=True)
class LocalAnalysis:
    """Fisher-information analysis at one parameter set.

    Attributes
    ----------
    names : tuple of str
        The ``n`` parameters analysed.
    coordinates : tuple of str
        Coordinate of each (``"log"`` for log-normal priors, ``"identity"``,
        ``"logit"``, ``"logit-log"`` for log-uniform priors); directions are weights on these.
    z : numpy.ndarray
        The point, ``(n,)`` unconstrained.
    fisher : numpy.ndarray
        ``F = J^T Pi J``, ``(n, n)`` (per unit of the coordinate squared).
    eigenvalues : numpy.ndarray
        Of ``F``, ascending, ``(n,)``; computed as squared singular values of
        ``Pi^{1/2} J`` (so round-off is relative to the largest singular value,
        not its square).
    eigenvectors : numpy.ndarray
        ``(n, n)``, column ``k`` for ``eigenvalues[k]``.
    singular_ratio : numpy.ndarray
        ``sqrt(eigenvalues / eigenvalues.max())``, ascending.
    structural_null : numpy.ndarray
        Orthonormal basis ``(n, d)`` of the exact (structural) null space,
        rotated to a readable (one pivot per direction) form.
    accidental_null : numpy.ndarray
        ``(n, d')``: directions null at this point only (not confirmed at
        nearby points); reported as weak.
    exactness : dict
        ``n_checked`` nearby points, ``max_null_ratio`` there (largest
        singular-value ratio of the candidate null space), ``max_angle_deg``
        (largest principal angle between the null space here and there),
        ``confirmed`` (bool), ``step`` (perturbation size in ``z``).
    sloppy : list of dict
        Weak but not exact directions: ``{"weights", "eigenvalue", "sd",
        "label"}``, weakest first, ``sd = 1/sqrt(eigenvalue)`` in coordinate
        units (``sd = 1`` in log units: known only to a factor ``e``).
    stiff : list of dict
        The best-determined directions, stiffest first.
    parameters : dict
        Per name: ``sd`` (Cramer-Rao standard deviation, ``inf`` if the
        parameter has a component in the structural null space), ``null_weight``
        (squared norm of its projection on that space), ``sensitivity``
        (``sqrt(F_ii)``; Brun's ``delta_msqr`` times ``sqrt(m)``), ``verdict``
        (``"identified"``, ``"weak"`` or ``"not identifiable"``).
    collinearity : list of dict
        ``{"subset": [...], "index": gamma}`` for parameter subsets,
        largest first (Brun et al. 2001; ``gamma > 15`` is their rule of thumb
        for a poorly identifiable subset; ``inf`` for exact dependence).
    condition_number : float
        ``lambda_max / lambda_min`` (``inf`` with a structural null space).
    condition_number_identifiable : float
        The same on the complement of the structural null space.
    null_rtol, sloppy_sd : float
        Thresholds used.
    """

    names: tuple
    coordinates: tuple
    z: np.ndarray
    fisher: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    singular_ratio: np.ndarray
    structural_null: np.ndarray
    accidental_null: np.ndarray
    exactness: dict
    sloppy: list
    stiff: list
    parameters: dict
    collinearity: list
    condition_number: float
    condition_number_identifiable: float
    null_rtol: float
    sloppy_sd: float

    @property
    def null_dimension(self) -> int:
        """Dimension of the structural null space."""
        return int(self.structural_null.shape[1])

    def _coords(self) -> dict:
        return dict(zip(self.names, self.coordinates))

    @property
    def structural_null_directions(self) -> list[dict]:
        """Exact null directions as ``{name: weight}`` (log coordinates for log-normal priors)."""
        return [_direction_dict(v, self.names) for v in self.structural_null.T]

    @property
    def sloppy_directions(self) -> list[dict]:
        """Weak (not exact) directions as ``{name: weight}``, weakest first."""
        return [s["weights"] for s in self.sloppy]

    def identified(self) -> list[str]:
        """Parameters whose verdict is ``"identified"``."""
        return [n for n, p in self.parameters.items() if p["verdict"] == "identified"]

    def not_identifiable(self) -> list[str]:
        """Parameters with a component in the structural null space."""
        return [n for n, p in self.parameters.items() if p["verdict"] == "not identifiable"]

    def suggest_fixes(self, prefer: Sequence[str] = ()) -> list[str]:
        """Parameters to fix (one per null direction) so that the rest has no structural null space.

        Greedy: repeatedly pick the parameter with the largest weight in the
        remaining null space (names in ``prefer`` first when they have weight),
        fix it (remove that coordinate) and reduce the space.
        """
        N = self.structural_null.copy()
        names = list(self.names)
        out = []
        while N.shape[1]:
            w = (N**2).sum(1)
            cand = [i for i in range(len(names)) if w[i] > 1e-6 and names[i] not in out]
            pref = [i for i in cand if names[i] in prefer]
            i = max(pref or cand, key=lambda k: (-list(prefer).index(names[k]) if names[k] in prefer else 0, w[k]))
            out.append(names[i])
            # directions with no component on parameter i remain null once it is fixed
            row = N[i]
            Q = np.linalg.svd(row[None, :])[2][1:].T  # basis of the complement of row in R^d
            N = N @ Q if Q.size else N[:, :0]
            if N.shape[1]:
                N = np.linalg.qr(N)[0]
        return out

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        coords = self._coords()
        fin = lambda x: float(x) if math.isfinite(x) else None  # noqa: E731
        return {
            "names": list(self.names),
            "coordinates": coords,
            "z": [float(x) for x in self.z],
            "eigenvalues": [float(x) for x in self.eigenvalues],
            "singular_ratio": [float(x) for x in self.singular_ratio],
            "condition_number": fin(self.condition_number),
            "condition_number_identifiable": fin(self.condition_number_identifiable),
            "null_dimension": self.null_dimension,
            "structural_null_directions": self.structural_null_directions,
            "structural_null_labels": [_label(d, coords) for d in self.structural_null_directions],
            "exactness": self.exactness,
            "accidental_null_directions": [_direction_dict(v, self.names) for v in self.accidental_null.T],
            "sloppy_directions": self.sloppy_directions,
            "sloppy_details": [
                {"label": s["label"], "eigenvalue": s["eigenvalue"], "sd": s["sd"]} for s in self.sloppy
            ],
            "stiff_directions": [
                {"weights": s["weights"], "label": s["label"], "eigenvalue": s["eigenvalue"], "sd": s["sd"]}
                for s in self.stiff
            ],
            "parameters": {
                n: {k: (fin(v) if isinstance(v, float) else v) for k, v in p.items()} for n, p in self.parameters.items()
            },
            "collinearity": [{"subset": c["subset"], "index": fin(c["index"])} for c in self.collinearity],
            "thresholds": {"null_rtol": self.null_rtol, "sloppy_sd": self.sloppy_sd},
        }

    def to_text(self, max_collinear: int = 5) -> str:
        """Readable table."""
        coords = self._coords()
        lines = ["Local identifiability (Fisher information in unconstrained coordinates)"]
        lines.append(
            f"  {len(self.names)} parameters, structural null space of dimension {self.null_dimension}, "
            f"condition number {self.condition_number:.3g} ({self.condition_number_identifiable:.3g} without it)"
        )
        lines.append(f"  {'parameter':>16s} {'coord':>8s} {'CR sd':>10s} {'null wt':>8s} {'sensitivity':>12s}  verdict")
        for n, p in self.parameters.items():
            sd = f"{p['sd']:.3g}" if math.isfinite(p["sd"]) else "inf"
            lines.append(
                f"  {n:>16s} {coords[n]:>8s} {sd:>10s} {p['null_weight']:8.3f} {p['sensitivity']:12.4g}  {p['verdict']}"
            )
        if self.null_dimension:
            ex = self.exactness
            lines.append(
                f"  structural (exact) null directions — confirmed at {ex['n_checked']} nearby points: "
                f"{ex['confirmed']}, singular ratio there <= {ex['max_null_ratio']:.2g}, "
                f"subspace moved <= {ex['max_angle_deg']:.2g} deg"
            )
            for d in self.structural_null_directions:
                lines.append(f"    {_label(d, coords)}")
        if self.accidental_null.shape[1]:
            lines.append("  null here but not at nearby points (reported as weak):")
            for v in self.accidental_null.T:
                lines.append(f"    {_label(_direction_dict(v, self.names), coords)}")
        if self.sloppy:
            lines.append(f"  sloppy directions (sd > {self.sloppy_sd:g}):")
            for s in self.sloppy:
                lines.append(f"    sd {s['sd']:9.3g}: {s['label']}")
        if self.stiff:
            lines.append("  stiffest directions:")
            for s in self.stiff:
                lines.append(f"    sd {s['sd']:9.3g}: {s['label']}")
        if self.collinearity:
            lines.append("  most collinear subsets (Brun et al. 2001 index; > 15 poorly identifiable):")
            for c in self.collinearity[:max_collinear]:
                g = f"{c['index']:.3g}" if math.isfinite(c["index"]) else "inf"
                lines.append(f"    {g:>9s}  {', '.join(c['subset'])}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def _svd_parts(W: torch.Tensor):
    """Ascending eigenvalues, eigenvectors and singular ratios of ``W^T W`` from the SVD of ``W`` ``(..., m, n)``."""
    Wn = np.nan_to_num(W.numpy(), nan=0.0, posinf=0.0, neginf=0.0)
    _, s, Vh = np.linalg.svd(Wn, full_matrices=False)  # LAPACK gesdd, batched
    s = torch.from_numpy(s[..., ::-1].copy())
    V = torch.from_numpy(np.swapaxes(Vh[..., ::-1, :], -1, -2).copy())
    smax = s[..., -1:].clamp_min(1e-300)
    return s**2, V, s / smax


def _analyse(
    target: _Target,
    *,
    null_rtol: float,
    sloppy_sd: float,
    n_check: int,
    check_step: float,
    seed: int,
    max_subset: int,
    n_stiff: int,
) -> LocalAnalysis:
    n = len(target.names)
    z0 = target.z0.to(_F64)
    gen = torch.Generator().manual_seed(seed)
    Z = z0[None]
    if n_check:
        Z = torch.cat([Z, z0 + check_step * torch.randn(n_check, n, generator=gen, dtype=_F64)])
    vals, J = target.jacobians(Z)
    sq = target.precision.sqrt()
    W = sq[None, :, None] * J
    if not bool(torch.isfinite(W[0]).all()):
        raise ValueError("the Jacobian at theta is not finite: theta must be inside the observation's valid regime")
    ok = torch.isfinite(W).all((-2, -1)) & torch.isfinite(vals).all(-1)
    ev, V, ratio = _svd_parts(W)
    ev0, V0, r0 = ev[0], V[0], ratio[0]
    d = int((r0 < null_rtol).sum())
    N0 = V0[:, :d]
    checked = [k for k in range(1, Z.shape[0]) if bool(ok[k])]
    counts = [int((ratio[k] < null_rtol).sum()) for k in checked]
    d_struct = min([d] + counts) if checked else d
    if d_struct < d:
        # keep the d_struct directions of N0 that are closest to null at the nearby points
        M = sum(V[k][:, : counts[i]] @ V[k][:, : counts[i]].T for i, k in enumerate(checked))
        P = N0.T @ (torch.eye(n, dtype=_F64) * len(checked) - M) @ N0
        w, U = torch.linalg.eigh(0.5 * (P + P.T))
        Ns, Na = N0 @ U[:, :d_struct], N0 @ U[:, d_struct:]
    else:
        Ns, Na = N0, N0[:, :0]
    max_ratio, max_angle = 0.0, 0.0
    for k in checked:
        if d_struct:
            # the null space may move with the point (JR: it depends on the equilibrium), so
            # exactness means: the nearby point has its own d_struct-dimensional null space at
            # round-off level, close to this one
            max_ratio = max(max_ratio, float(ratio[k][d_struct - 1]))
            ang = principal_angles(Ns.numpy(), V[k][:, :d_struct].numpy())
            max_angle = max(max_angle, float(np.degrees(ang.max())) if ang.size else 0.0)
    exactness = {
        "n_checked": len(checked),
        "n_invalid": int(Z.shape[0] - 1 - len(checked)),
        "step": check_step,
        "max_null_ratio": max_ratio,
        "max_angle_deg": max_angle,
        "confirmed": bool(checked) and d_struct == d and max_ratio < null_rtol,
    }
    names = target.names
    coords = dict(zip(names, target.coords))
    Nr = _readable_basis(Ns.numpy())
    # spectrum on the complement of the structural null space
    lam = ev0.numpy()
    vecs = V0.numpy()
    keep = np.arange(d_struct, n)
    lmax = lam[-1] if lam[-1] > 0 else 1.0
    cond = float(lmax / lam[0]) if lam[0] > 0 and d == 0 else math.inf
    cond_id = float(lmax / lam[keep[0]]) if keep.size and lam[keep[0]] > 0 else math.inf
    sloppy, stiff = [], []
    for k in keep:
        sd = 1.0 / math.sqrt(lam[k]) if lam[k] > 0 else math.inf
        v = _canonical_sign(vecs[:, k])
        item = {"weights": _direction_dict(v, names), "eigenvalue": float(lam[k]), "sd": sd}
        item["label"] = _label(item["weights"], coords)
        if sd > sloppy_sd:
            sloppy.append(item)
    for k in keep[::-1][:n_stiff]:
        v = _canonical_sign(vecs[:, k])
        sd = 1.0 / math.sqrt(lam[k]) if lam[k] > 0 else math.inf
        item = {"weights": _direction_dict(v, names), "eigenvalue": float(lam[k]), "sd": sd}
        item["label"] = _label(item["weights"], coords)
        stiff.append(item)
    # per parameter
    Pn = Ns.numpy() @ Ns.numpy().T
    # eigenvalues that are exactly zero off the structural space (accidental nulls) give sd = inf
    inv_lam = np.where(lam[keep] > 0, 1.0 / np.where(lam[keep] > 0, lam[keep], 1.0), 1e300)
    Fpinv = (vecs[:, keep] * inv_lam) @ vecs[:, keep].T if keep.size else np.zeros((n, n))
    F = (W[0].T @ W[0]).numpy()
    params = {}
    for i, name in enumerate(names):
        nw = float(Pn[i, i])
        sd = math.sqrt(max(Fpinv[i, i], 0.0)) if nw < 1e-6 else math.inf
        sd = math.inf if sd > 1e100 else sd
        verdict = "not identifiable" if nw >= 1e-6 else ("weak" if sd > sloppy_sd else "identified")
        params[name] = {"sd": sd, "null_weight": nw, "sensitivity": float(math.sqrt(max(F[i, i], 0.0))), "verdict": verdict}
    collin = _collinearity(W[0], names, max_subset, null_rtol)
    return LocalAnalysis(
        names=tuple(names),
        coordinates=tuple(target.coords),
        z=z0.numpy(),
        fisher=F,
        eigenvalues=lam,
        eigenvectors=vecs,
        singular_ratio=r0.numpy(),
        structural_null=Nr,
        accidental_null=Na.numpy(),
        exactness=exactness,
        sloppy=sloppy,
        stiff=stiff,
        parameters=params,
        collinearity=collin,
        condition_number=cond,
        condition_number_identifiable=cond_id,
        null_rtol=null_rtol,
        sloppy_sd=sloppy_sd,
    )


def _collinearity(W: torch.Tensor, names, max_subset: int, null_rtol: float = 1e-9) -> list[dict]:
    """Brun et al. (2001) collinearity index ``1/sqrt(min eig(S_K^T S_K))`` of column-normalised sensitivities.

    Computed as ``1 / s_min(S_K)`` from batched SVDs of the subsets (not from
    the Gram matrix, which would square the round-off); subsets with
    ``s_min < null_rtol`` are exactly dependent (index ``inf``).
    """
    Wn = W.numpy()
    n = Wn.shape[1]
    norms = np.linalg.norm(Wn, axis=0)
    S = Wn / np.clip(norms, 1e-300, None)
    out = []
    for k in range(2, min(max_subset, n) + 1):
        subsets = np.array(list(itertools.combinations(range(n), k)))
        if subsets.size == 0:
            continue
        blocks = np.transpose(S[:, subsets], (1, 0, 2))  # (N, m, k)
        smin = np.linalg.svd(blocks, compute_uv=False)[:, -1]
        gamma = np.where(smin > null_rtol, 1.0 / np.clip(smin, 1e-300, None), np.inf)
        gamma = np.where((norms[subsets] == 0).any(1), np.inf, gamma)
        out += [{"subset": [names[i] for i in s], "index": float(g)} for s, g in zip(subsets, gamma)]
    # an exactly dependent subset makes every superset dependent: keep the minimal ones
    dependent = [set(c["subset"]) for c in out if not math.isfinite(c["index"])]
    dependent = [d for d in dependent if not any(o < d for o in dependent)]
    out = [c for c in out if math.isfinite(c["index"]) or set(c["subset"]) in dependent]
    out.sort(key=lambda c: (-c["index"] if math.isfinite(c["index"]) else -math.inf, len(c["subset"])))
    return out


def local_analysis(
    problem,
    theta,
    *,
    noise: float | None = None,
    null_rtol: float = 1e-9,
    sloppy_sd: float = 1.0,
    n_check: int = 4,
    check_step: float = 0.01,
    seed: int = 0,
    max_subset: int = 3,
    n_stiff: int = 3,
) -> LocalAnalysis:
    """Fisher-information identifiability analysis of an :class:`~jrinfer.InverseProblem` at ``theta``.

    Parameters
    ----------
    problem : InverseProblem
        With a Gaussian likelihood (its :meth:`~InverseProblem.gaussian_form`
        defines ``f`` and the noise precision). The data values do not matter
        (the expected Fisher information of a Gaussian model depends only on
        ``f`` and the noise).
    theta : dict or array_like
        The parameter set, natural units: ``{name: value}`` for every free
        parameter, or an array ``(n_params,)`` in ``problem.names`` order.
        A free ``log_precision`` in it sets the noise level.
    noise : float, optional
        Noise standard deviation in the likelihood's space (log-power for
        spectra, data units for ERPs); overrides ``log_precision``.
    null_rtol : float
        A direction is a null candidate when its singular value of
        ``Pi^{1/2} J`` is below ``null_rtol`` times the largest (eigenvalue
        ratio below ``null_rtol^2``). Round-off gives ~1e-14; genuine weak
        directions of the JR observations are above 1e-7.
    sloppy_sd : float
        Directions (and parameters) whose Cramer-Rao standard deviation
        exceeds this (in coordinate units; 1 = a factor ``e`` in log units)
        are reported as sloppy / weak.
    n_check : int
        Nearby parameter sets at which null candidates are re-checked
        (random perturbations of size ``check_step`` in every coordinate,
        evaluated in one batch). 0 skips the check.
    check_step : float
        Perturbation standard deviation in unconstrained coordinates.
    seed : int
        Seed of the perturbations.
    max_subset : int
        Largest subset size for collinearity indices (all subsets of sizes
        2..max_subset).
    n_stiff : int
        Number of stiffest directions to report.

    Returns
    -------
    LocalAnalysis

    Notes
    -----
    Jacobians come from forward-mode automatic differentiation through the
    problem's batched prediction (all points and directions in one pass),
    falling back to reverse mode on ``gaussian_form().f`` per point. Cost for
    the 12-parameter JR spectral problem: well under a second (see
    ``benchmarks/RESULTS.md``).
    """
    target = _problem_target(problem, theta, noise)
    return _analyse(target, **_local_options(null_rtol, sloppy_sd, n_check, check_step, seed, max_subset, n_stiff))


def _local_options(null_rtol, sloppy_sd, n_check, check_step, seed, max_subset, n_stiff) -> dict:
    return {
        "null_rtol": _check_prob("null_rtol", null_rtol),
        "sloppy_sd": _checks.check_scalar("sloppy_sd", sloppy_sd, positive=True),
        "n_check": _check_int("n_check", n_check, 0),
        "check_step": _checks.check_scalar("check_step", check_step, positive=True),
        "seed": _check_int("seed", seed, 0),
        "max_subset": _check_int("max_subset", max_subset, 1),
        "n_stiff": _check_int("n_stiff", n_stiff, 0),
    }


def local_analysis_function(
    f: Callable,
    z,
    *,
    names: Sequence[str] | None = None,
    precision=1.0,
    batched: bool = False,
    coordinates: Sequence[str] | None = None,
    null_rtol: float = 1e-9,
    sloppy_sd: float = 1.0,
    n_check: int = 4,
    check_step: float = 0.01,
    seed: int = 0,
    max_subset: int = 3,
    n_stiff: int = 3,
) -> LocalAnalysis:
    """Local analysis of any differentiable model ``y = f(z) + e``, ``e ~ N(0, diag(precision)^-1)``.

    Parameters
    ----------
    f : callable
        ``(n,) -> (m,)`` float64 (or ``(B, n) -> (B, m)`` with ``batched=True``).
    z : array_like
        The point, ``(n,)``, in whatever coordinates ``f`` takes.
    names : sequence of str, optional
        Default ``z0, z1, ...``.
    precision : float or array_like
        Noise precision, scalar or ``(m,)``.
    batched : bool
        ``f`` accepts a batch (Jacobians by one forward-mode pass).
    coordinates : sequence of str, optional
        Label of each coordinate for the readable combinations (default ``"log"``).

    Other parameters are as in :func:`local_analysis`.
    """
    if not callable(f):
        raise ValueError(f"f must be callable, got {type(f).__name__}")
    z0 = _checks.as_float_tensor("z", z)
    if z0.dim() != 1 or z0.numel() == 0:
        raise ValueError(f"z must be a non-empty 1-D array, got shape {tuple(z0.shape)}")
    n = z0.numel()
    names = tuple(names) if names is not None else tuple(f"z{i}" for i in range(n))
    if len(names) != n:
        raise ValueError(f"names has {len(names)} entries but z has {n}")
    coords = tuple(coordinates) if coordinates is not None else ("log",) * n
    if len(coords) != n:
        raise ValueError(f"coordinates has {len(coords)} entries but z has {n}")
    with torch.no_grad():
        y0 = (f(z0[None]) if batched else f(z0.clone())[None]).to(_F64)
    m = y0.shape[-1]
    prec = _checks.as_float_tensor("precision", precision)
    if prec.dim() == 0:
        prec = prec.expand(m).clone()
    if prec.shape != (m,):
        raise ValueError(f"precision must be a scalar or have shape ({m},), got {tuple(prec.shape)}")
    _checks.check_positive("precision", prec)
    f1 = (lambda x: f(x[None])[0]) if batched else f
    fb = f if batched else (lambda Z: torch.stack([f(zz) for zz in Z]))
    target = _Target(fb, f1, y0[0], prec, names, coords, z0, batched=True)
    return _analyse(target, **_local_options(null_rtol, sloppy_sd, n_check, check_step, seed, max_subset, n_stiff))


# ============================================================== 2. profiles
@dataclass(frozen=True)
class Profile:
    """Profile likelihood of one parameter (Raue et al. 2009).

    Attributes
    ----------
    name : str
    coordinate : str
        ``"log"``, ``"identity"``, ``"logit"`` or ``"logit-log"``.
    z : numpy.ndarray
        Grid in unconstrained coordinates, ``(P,)`` ascending.
    values : numpy.ndarray
        The same grid in natural units.
    delta : numpy.ndarray
        ``-2 log L`` (profile) minus its minimum, ``(P,)``; NaN where the
        optimiser could not evaluate the model.
    threshold : float
        ``chi2_{1, level}`` (3.84 for 95 %).
    verdict : str
        ``"identified"`` (the profile exceeds the threshold on both sides of
        its minimum within the grid), ``"one-sided"`` or ``"flat"``.
    interval : tuple
        ``(lower, upper)`` natural-unit confidence bounds by linear
        interpolation of the crossings; ``None`` on an open side.
    others : numpy.ndarray
        Re-optimised values of the other parameters, ``(P, n - 1)``
        unconstrained, in ``other_names`` order.
    other_names : tuple of str
    status : list of str
        Optimiser status per grid point.
    max_delta : float
        Largest finite ``delta`` (~0 for a structurally flat profile).
    seconds : float
        Wall time.
    """

    name: str
    coordinate: str
    z: np.ndarray
    values: np.ndarray
    delta: np.ndarray
    threshold: float
    verdict: str
    interval: tuple
    others: np.ndarray
    other_names: tuple
    status: list
    max_delta: float
    seconds: float

    def to_dict(self) -> dict:
        nan2none = lambda a: [None if not math.isfinite(float(x)) else float(x) for x in a]  # noqa: E731
        return {
            "name": self.name,
            "coordinate": self.coordinate,
            "values": nan2none(self.values),
            "z": nan2none(self.z),
            "delta": nan2none(self.delta),
            "threshold": self.threshold,
            "verdict": self.verdict,
            "interval": [None if x is None else float(x) for x in self.interval],
            "max_delta": self.max_delta,
            "status": list(self.status),
            "seconds": self.seconds,
        }


def _classify(z: np.ndarray, delta: np.ndarray, threshold: float, i0: int):
    left = delta[:i0]
    right = delta[i0 + 1 :]
    lo_b = bool(np.any(left[np.isfinite(left)] > threshold))
    hi_b = bool(np.any(right[np.isfinite(right)] > threshold))
    verdict = "identified" if lo_b and hi_b else ("one-sided" if lo_b or hi_b else "flat")

    def crossing(indices):
        prev = i0
        for i in indices:
            if not math.isfinite(delta[i]):
                continue
            if delta[i] > threshold:
                d0, d1 = delta[prev], delta[i]
                t = (threshold - d0) / (d1 - d0) if d1 != d0 else 0.5
                return z[prev] + t * (z[i] - z[prev])
            prev = i
        return None

    return verdict, crossing(range(i0 - 1, -1, -1)), crossing(range(i0 + 1, len(z)))


def profile_likelihood(
    problem,
    name: str,
    theta=None,
    *,
    n_points: int = 20,
    span: float | None = None,
    level: float = 0.95,
    noise: float | None = None,
    prior_sd: float = 10.0,
    max_iter: int = 64,
    tol: float = 1e-3,
) -> Profile:
    """Profile likelihood of parameter ``name``, re-optimising all the others.

    Parameters
    ----------
    problem : InverseProblem
        With a Gaussian likelihood; its data are the data being profiled.
    name : str
        A free (non-noise) parameter of ``problem``.
    theta : dict or array_like, optional
        The optimum to profile around (natural units). Default: the variational
        Laplace fit of the problem under a broad prior.
    n_points : int
        Grid points (>= 3), symmetric around ``theta``'s value in
        unconstrained coordinates (the centre is always included).
    span : float, optional
        Half-width of the grid in unconstrained coordinates. Default: four
        local Cramer-Rao standard deviations, between 0.05 and 2 (so an
        identified parameter crosses the threshold inside the grid; a
        structurally non-identifiable one gets the widest grid). Verdicts
        refer to the explored range.
    level : float
        Confidence level of the (pointwise, 1-dof) threshold.
    noise : float, optional
        Noise standard deviation (as in :func:`local_analysis`); default the
        problem's ``log_precision``.
    prior_sd : float
        The other parameters get a Gaussian prior of this standard
        deviation (unconstrained units) around the optimum: large, so the
        profile is the likelihood's, but proper, so that directions the data
        cannot see stay regular for the optimiser.
    max_iter, tol : int, float
        Passed to the variational Laplace optimiser (noise precision fixed):
        iteration limit per grid point and convergence tolerance (nats of
        free energy; 1e-3 nats is 2e-3 on the ``-2 log L`` scale).

    Returns
    -------
    Profile

    Notes
    -----
    Each grid point is one fit of the variational Laplace optimiser
    (:class:`~jrinfer.backends.laplace.VariationalLaplace`: Levenberg-Marquardt
    Gauss-Newton, autograd Jacobians), walked outward from the centre in
    both directions with warm starts (continuation: secant extrapolation of
    the previous two optima; the first step uses the local linear
    compensation ``-F_rr^+ F_rj`` of the others, exact along scaling
    symmetries). Fits are sequential because each starts from its
    neighbour. A batched Levenberg-Marquardt over all grid points at once
    was tried and dropped: from linear starts far grid points converge to
    poor optima near the regime boundary, and the batched continuation that
    repairs this was slower than this path. ``-2 log L`` is ``e^T Pi e`` up to a constant; the verdict uses the
    pointwise threshold ``chi2_{1,level}`` (Raue et al. 2009,
    Bioinformatics 25:1923).
    """
    import time

    t_start = time.perf_counter()
    n_points = _check_int("n_points", n_points, 3)
    level = _check_prob("level", level)
    prior_sd = _checks.check_scalar("prior_sd", prior_sd, positive=True)
    form = problem.gaussian_form()
    if name not in form.names:
        raise ValueError(f"name must be a free model parameter of the problem, one of {list(form.names)}; got {name!r}")
    if theta is None:
        theta = _fit_broad(problem, form, prior_sd, noise)
    target = _problem_target(problem, theta, noise)
    j = target.names.index(name)
    z0 = target.z0.clone()
    n = z0.numel()
    if span is None:
        try:
            la = _analyse(target, null_rtol=1e-9, sloppy_sd=1.0, n_check=0, check_step=0.01, seed=0, max_subset=1, n_stiff=0)
            sd = la.parameters[name]["sd"]
        except ValueError:
            sd = math.inf
        span = float(min(max(4.0 * sd, 0.05), 2.0)) if math.isfinite(sd) else 2.0
    span = _checks.check_scalar("span", span, positive=True)
    offsets = np.linspace(-span, span, n_points)
    i0 = int(np.argmin(np.abs(offsets)))
    offsets[i0] = 0.0
    grid = float(z0[j]) + offsets
    others_idx = [i for i in range(n) if i != j]
    # linear compensation of the others for a unit change of parameter j (minimum-norm
    # least squares on the local sensitivities): exact along scaling symmetries, and a
    # good start for every fit
    _, J0 = target.jacobians(z0[None])
    W0 = (target.precision.sqrt()[:, None] * J0[0]).numpy()
    comp = -np.linalg.lstsq(W0[:, others_idx], W0[:, j], rcond=1e-6)[0]
    chi, others, status = _profile_vl(target, j, grid, i0, comp, prior_sd, max_iter, tol)
    best = np.nanmin(chi)
    delta = chi - best
    threshold = float(_chi2_quantile(level))
    verdict, lo, hi = _classify(grid, delta, threshold, i0)
    coord = target.coords[j]
    to_nat = lambda zz: _to_natural(problem, name, zz)  # noqa: E731
    return Profile(
        name=name,
        coordinate=coord,
        z=grid,
        values=np.array([to_nat(g) for g in grid]),
        delta=delta,
        threshold=threshold,
        verdict=verdict,
        interval=(None if lo is None else to_nat(lo), None if hi is None else to_nat(hi)),
        others=others,
        other_names=tuple(target.names[i] for i in others_idx),
        status=status,
        max_delta=float(np.nanmax(delta)),
        seconds=time.perf_counter() - t_start,
    )




def _profile_vl(target: _Target, j, grid, i0, comp, prior_sd, max_iter, tol):
    """Variational Laplace fit per grid point, walked outward from the centre (continuation)."""
    from jrinfer.backends.laplace import VariationalLaplace

    z0 = target.z0
    n = z0.numel()
    P = len(grid)
    oi = [i for i in range(n) if i != j]
    y, prec = target.y, target.precision
    engine = VariationalLaplace(
        estimate_hyper=False, max_iter=max_iter, tol=tol, patience=1, jacobian="reverse", max_step_retries=12
    )

    def chi2(z_full):
        with torch.no_grad():
            e = y - target.f1(z_full).to(_F64)
        return float((prec * e * e).sum())

    r0 = z0[oi].clone()
    pc = torch.eye(n - 1, dtype=_F64) * prior_sd**2
    hm, hc, comps = torch.zeros(1, dtype=_F64), torch.eye(1, dtype=_F64), prec[None, :]
    chi = np.full(P, np.nan)
    others = np.full((P, n - 1), np.nan)
    status = [""] * P
    chi[i0], others[i0], status[i0] = chi2(z0), r0.numpy(), "centre"
    for order in (range(i0 + 1, P), range(i0 - 1, -1, -1)):
        prev = [(float(z0[j]), r0.numpy())]
        for i in order:
            zj = torch.tensor(grid[i], dtype=_F64)
            if len(prev) >= 2:  # secant extrapolation along the profile path
                (g1, a1), (g2, a2) = prev[-2], prev[-1]
                start = a2 + (a2 - a1) * (grid[i] - g2) / (g2 - g1)
            else:
                start = prev[-1][1] + comp * (grid[i] - prev[-1][0])
            start = torch.as_tensor(start, dtype=_F64)

            def f_r(zr, zj=zj):
                return target.f1(torch.cat([zr[:j], zj.reshape(1).to(zr.dtype), zr[j:]]))

            with torch.no_grad():
                if not bool(torch.isfinite(f_r(start)).all()):
                    start = torch.as_tensor(prev[-1][1], dtype=_F64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = engine.fit_function(f_r, y, r0, pc, hm, hc, comps, init=start)
            status[i] = res.status
            zr = res.mean.detach()
            c = chi2(torch.cat([zr[:j], zj.reshape(1), zr[j:]]))
            if math.isfinite(c):
                chi[i], others[i] = c, zr.numpy()
                prev.append((float(grid[i]), zr.numpy()))
    return chi, others, status

def _chi2_quantile(level: float, df: int = 1) -> float:
    if df == 1:
        if abs(level - 0.95) < 1e-12:
            return _CHI2_1_95
        from statistics import NormalDist

        q = NormalDist().inv_cdf(0.5 + level / 2)
        return q * q
    raise ValueError("only 1 degree of freedom is supported")


def _to_natural(problem, name: str, zval: float) -> float:
    d = problem.prior.distributions[name]
    return float(d.from_unconstrained(torch.tensor(float(zval), dtype=_F64)))


def _fit_broad(problem, form, prior_sd, noise):
    """Variational Laplace optimum of the problem's data under a broad prior around the prior mean."""
    from jrinfer.backends.laplace import VariationalLaplace

    n = len(form.names)
    lam = form.hyper_mean if noise is None else torch.full((1,), -2 * math.log(noise), dtype=_F64)
    engine = VariationalLaplace(estimate_hyper=False, jacobian="reverse")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = engine.fit_function(
            form.f, form.y, form.prior_mean, torch.eye(n, dtype=_F64) * prior_sd**2, lam, torch.eye(1, dtype=_F64),
            form.precision_components,
        )
    out = {}
    for i, nm in enumerate(form.names):
        out[nm] = _to_natural(problem, nm, float(res.mean[i]))
    for nm in problem.names:
        if nm in _NOISE:
            out[nm] = float(lam[0])
    return out


# ============================================================== 3. posterior
@dataclass(frozen=True)
class PosteriorIdentifiability:
    """Identifiability read off a posterior (any backend).

    Attributes
    ----------
    names : tuple of str
    contraction : numpy.ndarray
        ``1 - var_post / var_prior`` per parameter in the prior's
        unconstrained coordinates, ``(n,)``: ~0 = the data taught nothing
        (posterior = prior), ~1 = fully informed (Betancourt 2018).
    correlation : numpy.ndarray
        Posterior correlation matrix in unconstrained coordinates, ``(n, n)``.
    flagged_pairs : list of dict
        ``{"a", "b", "rho"}`` with ``|rho| >= threshold``, strongest first.
    not_informed : list of str
        Parameters with contraction below ``min_contraction``.
    threshold, min_contraction : float
    """

    names: tuple
    contraction: np.ndarray
    correlation: np.ndarray
    flagged_pairs: list
    not_informed: list
    threshold: float
    min_contraction: float

    def headline(self) -> str:
        """One line: parameters not informed and the strongest trade-offs."""
        ni = ", ".join(self.not_informed) if self.not_informed else "none"
        pairs = ", ".join(f"{p['a']}~{p['b']} ({p['rho']:+.2f})" for p in self.flagged_pairs[:3]) or "none"
        return f"identifiability: not informed by the data: {ni}; strongest trade-offs: {pairs}"

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "contraction": {n: float(c) for n, c in zip(self.names, self.contraction)},
            "correlation": [[float(x) for x in row] for row in self.correlation],
            "flagged_pairs": self.flagged_pairs,
            "not_informed": list(self.not_informed),
            "threshold": self.threshold,
            "min_contraction": self.min_contraction,
            "headline": self.headline(),
        }

    def to_text(self) -> str:
        lines = ["Posterior-based identifiability (unconstrained coordinates)"]
        lines.append(f"  {'parameter':>16s} {'contraction':>12s}")
        for n, c in zip(self.names, self.contraction):
            flag = "  not informed" if n in self.not_informed else ""
            lines.append(f"  {n:>16s} {c:12.3f}{flag}")
        if self.flagged_pairs:
            lines.append(f"  correlated pairs (|rho| >= {self.threshold:g}):")
            for p in self.flagged_pairs:
                lines.append(f"    {p['a']:>12s} ~ {p['b']:<12s} {p['rho']:+.3f}")
        return "\n".join(lines)


def posterior_summary(
    posterior, prior, *, threshold: float = 0.7, min_contraction: float | None = None
) -> PosteriorIdentifiability:
    """Contraction, correlations and flagged pairs of a :class:`~jrinfer.Posterior`.

    Parameters
    ----------
    posterior : Posterior
        From any backend. Its Gaussian in unconstrained coordinates
        (``mean_unconstrained``/``cov_unconstrained``) is used when present,
        else its draws mapped through ``prior.to_unconstrained``.
    prior : Prior
        The prior it was fitted under (declares every name of the posterior).
    threshold : float
        ``|correlation|`` at which a pair is flagged, in (0, 1).
    min_contraction : float, optional
        Contraction below which a parameter counts as not informed; default
        :data:`jrinfer.posterior.CONTRACTION_UNINFORMED`, the threshold of
        every fit's own "not informed" warning.

    Returns
    -------
    PosteriorIdentifiability
    """
    from jrinfer.posterior import CONTRACTION_UNINFORMED

    threshold = _check_prob("threshold", threshold)
    if min_contraction is None:
        min_contraction = CONTRACTION_UNINFORMED
    min_contraction = _check_prob("min_contraction", min_contraction)
    names = tuple(posterior.names)
    missing = [n for n in names if n not in prior.names]
    if missing:
        raise ValueError(f"prior must declare every posterior parameter; missing {missing}")
    idx = [list(prior.names).index(n) for n in names]
    _, pcov = prior.gaussian_unconstrained()
    var_prior = torch.diagonal(pcov).numpy()[idx]
    cov = getattr(posterior, "cov_unconstrained", None)
    if cov is not None:
        cov = np.asarray(cov, dtype=float)
    else:
        draws = np.asarray(posterior.draws, dtype=float).reshape(-1, len(names))
        full = np.tile(prior.mean().numpy(), (draws.shape[0], 1))
        full[:, idx] = draws
        z = prior.to_unconstrained(torch.as_tensor(full, dtype=_F64)).numpy()[:, idx]
        cov = np.cov(z, rowvar=False)
    var_post = np.diag(cov)
    contraction = 1.0 - var_post / var_prior
    # the fit's own contraction where it has one: for a Laplace marginal that importance weighting shows to be
    # one-sided it is the weighted one (Posterior.non_gaussian_marginals), so both say the same "not informed"
    own = getattr(posterior, "contraction", None) or {}
    contraction = np.array([float(own.get(n, c)) for n, c in zip(names, contraction)])
    sd = np.sqrt(np.clip(var_post, 1e-300, None))
    corr = cov / np.outer(sd, sd)
    np.fill_diagonal(corr, 1.0)
    pairs = []
    for a, b in itertools.combinations(range(len(names)), 2):
        if abs(corr[a, b]) >= threshold:
            pairs.append({"a": names[a], "b": names[b], "rho": float(corr[a, b])})
    pairs.sort(key=lambda p: -abs(p["rho"]))
    not_informed = [n for n, c in zip(names, contraction) if c < min_contraction]
    return PosteriorIdentifiability(names, contraction, corr, pairs, not_informed, threshold, min_contraction)


def headline(posterior, prior, **kwargs) -> str:
    """One-line identifiability headline of a fit (for ``jrinfer fit``'s print and summary.json)."""
    return posterior_summary(posterior, prior, **kwargs).headline()


# ============================================================== 4. recovery
@dataclass(frozen=True)
class RecoveryStudy:
    """Simulation-based recovery: truth vs. estimate over datasets simulated from the prior.

    Attributes
    ----------
    names : tuple of str
    truth, mean, sd : numpy.ndarray
        ``(N, n)`` in unconstrained coordinates (posterior mean and sd);
        NaN rows where the truth was invalid or the fit failed.
    status : list of str
        Per dataset: the backend's own status (``Posterior.diagnostics["backend_status"]``:
        ``"converged"`` even when the fit warns of a misfit or a high k-hat,
        so that such fits stay in the study), or the error.
    zscore : numpy.ndarray
        ``(mean - truth) / sd``, ``(N, n)``; ~N(0, 1) for a calibrated backend.
    contraction : numpy.ndarray
        ``1 - sd^2 / var_prior``, ``(N, n)``.
    summary : dict
        Per name: ``recovery_r`` (correlation truth vs. estimate),
        ``rmse``, ``mean_contraction``, ``zscore_sd``, ``coverage_90``.
    seconds : float
    prior_invalid_fraction : float
        Fraction of prior draws the observation could not predict (e.g. an
        unstable equilibrium); truths are drawn from the prior restricted to
        the valid regime.
    """

    names: tuple
    truth: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    status: list
    zscore: np.ndarray
    contraction: np.ndarray
    summary: dict
    seconds: float
    prior_invalid_fraction: float = 0.0

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "prior_invalid_fraction": self.prior_invalid_fraction,
            "n_datasets": int(self.truth.shape[0]),
            "n_ok": int(sum(s == "converged" for s in self.status)),
            "summary": self.summary,
            "seconds": self.seconds,
        }

    def to_text(self) -> str:
        ok = sum(s == "converged" for s in self.status)
        lines = [
            f"Recovery study: {ok} of {len(self.status)} simulated datasets fitted "
            f"({100 * self.prior_invalid_fraction:.0f} % of prior draws were outside the valid regime and redrawn)"
        ]
        lines.append(f"  {'parameter':>16s} {'recovery r':>10s} {'rmse':>8s} {'contraction':>12s} {'z sd':>6s} {'cov90':>6s}")
        for n in self.names:
            s = self.summary[n]
            f = lambda x: "nan" if x is None else f"{x:.3f}"  # noqa: E731
            lines.append(
                f"  {n:>16s} {f(s['recovery_r']):>10s} {f(s['rmse']):>8s} {f(s['mean_contraction']):>12s} "
                f"{f(s['zscore_sd']):>6s} {f(s['coverage_90']):>6s}"
            )
        return "\n".join(lines)


def _with_data(problem, values: torch.Tensor):
    """The problem with its data values replaced (same axis, units, channels)."""
    data = problem.data
    cls = type(data)
    if hasattr(data, "freqs"):
        new = cls.from_arrays(
            data.freqs, values, channel_names=data.channel_names, units=data.units, n_segments=data.n_segments
        )
    else:
        new = cls.from_arrays(data.times, values, channel_names=data.channel_names, units=data.units)
    if hasattr(problem, "with_data"):
        return problem.with_data(new)
    return type(problem)(problem.observation, problem.prior, new)


def _default_fit(problem):
    from jrinfer.backends.laplace import VariationalLaplace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return VariationalLaplace(max_iter=64).fit(problem, n_draws=2, n_predictive=0)


def _fit_chunk(problem, theta_chunk: np.ndarray, data_chunk: np.ndarray, fit: Callable | None) -> list:
    """Fit one batch of simulated datasets; returns ``(status, mean_z, sd_z)`` per dataset."""
    fit = fit or _default_fit
    out = []
    n = len(problem.names)
    for th, y in zip(theta_chunk, data_chunk):
        if not np.isfinite(y).all():
            out.append(("invalid truth", np.full(n, np.nan), np.full(n, np.nan)))
            continue
        try:
            post = fit(_with_data(problem, torch.as_tensor(y, dtype=_F64)))
        except (RuntimeError, ValueError) as err:  # a failed fit is a result, not a crash
            out.append((f"error: {str(err).splitlines()[0][:120]}", np.full(n, np.nan), np.full(n, np.nan)))
            continue
        if post.mean_unconstrained is not None and post.cov_unconstrained is not None:
            idx = [list(post.names).index(nm) for nm in problem.names]
            mz = np.asarray(post.mean_unconstrained)[idx]
            sz = np.sqrt(np.clip(np.diag(np.asarray(post.cov_unconstrained))[idx], 0, None))
        else:
            d = np.asarray(post.draws).reshape(-1, len(post.names))
            idx = [list(post.names).index(nm) for nm in problem.names]
            z = problem.prior.to_unconstrained(torch.as_tensor(d[:, idx], dtype=_F64)).numpy()
            mz, sz = z.mean(0), z.std(0, ddof=1)
        # the backend's own verdict: a converged fit that warns (misfit, k-hat) is still a recovery result
        out.append((post.diagnostics.get("backend_status", post.status), mz, sz))
    return out


def recovery_study(
    problem,
    n_datasets: int = 50,
    *,
    batch_size: int = 10,
    seed: int = 0,
    fit: Callable | None = None,
    executor=None,
) -> RecoveryStudy:
    """Simulate datasets from the prior, fit each, and summarise recovery per parameter.

    Parameters
    ----------
    problem : InverseProblem
        Defines the prior, the observation and the data layout (grid,
        channels, units); its data values are not used.
    n_datasets : int
        Number of simulated datasets.
    batch_size : int
        Datasets per task: truths are drawn and data simulated for all at once
        (one batched prediction), then fitted chunk by chunk.
    seed : int
        Seed of the prior draws and the observation noise.
        Truths come from the prior restricted to the observation's valid
        regime (batched rejection; the rejected fraction is reported).
    fit : callable, optional
        ``problem -> Posterior`` (any backend). Default: variational Laplace
        with the problem's prior (``n_draws=2``; its Gaussian is used).
    executor : optional
        Anything with a ``concurrent.futures``-style ``map(fn, *iterables)``,
        e.g. ``concurrent.futures.ProcessPoolExecutor`` or a Dask cluster's
        ``client.get_executor()``; chunks are then fitted in parallel.
        Default: in this process.

    Returns
    -------
    RecoveryStudy

    Notes
    -----
    z-scores and contraction as in Betancourt (2018), "Calibrating
    model-based inferences and decisions", arXiv:1803.08393; posterior
    z-scores near N(0,1) and the contraction-vs-z-score scatter are the
    simulation-based view of identifiability (Talts et al. 2018).
    """
    import time

    t0 = time.perf_counter()
    n_datasets = _check_int("n_datasets", n_datasets, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    if fit is not None and not callable(fit):
        raise ValueError(f"fit must be a callable problem -> Posterior, got {type(fit).__name__}")
    if executor is not None and not callable(getattr(executor, "map", None)):
        raise ValueError("executor must have a concurrent.futures-style map(fn, *iterables) method")
    names = tuple(problem.names)
    # truths from the prior restricted to where the observation can predict (rejection, batched)
    kept, n_drawn = [], 0
    for attempt in range(20):
        cand = problem.prior.sample(max(2 * n_datasets, 16), seed=seed + 7919 * attempt)
        with torch.no_grad():
            valid = problem.predict(cand).valid.reshape(-1)
        n_drawn += cand.shape[0]
        kept.append(cand[valid])
        if sum(k.shape[0] for k in kept) >= n_datasets:
            break
    pool = torch.cat(kept)
    n_valid_drawn = pool.shape[0]
    if n_valid_drawn == 0:
        raise ValueError("no prior draw is inside the observation's valid regime: check the prior")
    theta = pool[:n_datasets]
    invalid_fraction = 1.0 - n_valid_drawn / n_drawn
    with torch.no_grad():
        data = problem.simulate(theta, seed=seed + 1).numpy()
    truth = problem.prior.to_unconstrained(theta).numpy()
    starts = list(range(0, n_datasets, batch_size))
    chunks_t = [theta.numpy()[s : s + batch_size] for s in starts]
    chunks_y = [data[s : s + batch_size] for s in starts]
    args = ([problem] * len(starts), chunks_t, chunks_y, [fit] * len(starts))
    results = list(executor.map(_fit_chunk, *args)) if executor is not None else list(map(_fit_chunk, *args))
    flat = [r for chunk in results for r in chunk]
    status = [r[0] for r in flat]
    mean = np.stack([r[1] for r in flat])
    sd = np.stack([r[2] for r in flat])
    bad = np.array([s != "converged" for s in status])
    mean[bad] = np.nan
    sd[bad] = np.nan
    _, pcov = problem.prior.gaussian_unconstrained()
    var_prior = torch.diagonal(pcov).numpy()
    z = (mean - truth) / sd
    contraction = 1.0 - sd**2 / var_prior
    summary = {}
    ok = ~bad
    for i, nm in enumerate(names):
        t, m = truth[ok, i], mean[ok, i]
        r = float(np.corrcoef(t, m)[0, 1]) if ok.sum() > 2 and np.std(t) > 0 and np.std(m) > 0 else None
        summary[nm] = {
            "recovery_r": r,
            "rmse": float(np.sqrt(np.mean((m - t) ** 2))) if ok.any() else None,
            "mean_contraction": float(np.mean(contraction[ok, i])) if ok.any() else None,
            "zscore_sd": float(np.std(z[ok, i])) if ok.sum() > 1 else None,
            "coverage_90": float(np.mean(np.abs(z[ok, i]) < 1.6448536269514722)) if ok.any() else None,
        }
    return RecoveryStudy(
        names, truth, mean, sd, status, z, contraction, summary, time.perf_counter() - t0, invalid_fraction
    )


# ============================================================== report
@dataclass
class IdentifiabilityReport:
    """Everything known about a problem's identifiability: text, JSON and plots.

    Attributes
    ----------
    local : LocalAnalysis or None
    profiles : list of Profile
    posterior : PosteriorIdentifiability or None
    recovery : RecoveryStudy or None
    derived : dict or None
        For JR problems: the null space derived from the equations
        (:func:`jansen_rit_null_space`) and its principal angles to the
        numerical one.
    meta : dict
        Free-form description (kind, parameter set, noise ...).
    """

    local: LocalAnalysis | None = None
    profiles: list = field(default_factory=list)
    posterior: PosteriorIdentifiability | None = None
    recovery: RecoveryStudy | None = None
    derived: dict | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"meta": self.meta}
        if self.local is not None:
            loc = self.local.to_dict()
            out["structural_null_directions"] = loc["structural_null_directions"]
            out["sloppy_directions"] = loc["sloppy_directions"]
            out["local"] = loc
        else:
            out["structural_null_directions"] = []
            out["sloppy_directions"] = []
        out["profiles"] = [p.to_dict() for p in self.profiles]
        out["posterior"] = None if self.posterior is None else self.posterior.to_dict()
        out["recovery"] = None if self.recovery is None else self.recovery.to_dict()
        out["derived"] = self.derived
        return out

    def to_json(self, path) -> Path:
        """Write :meth:`to_dict` atomically to ``path``."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        os.replace(tmp, path)
        return path

    def to_text(self) -> str:
        parts = []
        if self.meta:
            parts.append("  ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                                   for k, v in self.meta.items() if not isinstance(v, (dict, list))))
        if self.local is not None:
            parts.append(self.local.to_text())
        if self.derived is not None:
            d = self.derived
            parts.append(
                f"Null space derived from the equations ({d['source']}): dimension {d['dimension']}, "
                f"largest principal angle to the numerical one {d['max_angle_deg']:.3g} deg"
            )
        if self.profiles:
            parts.append("Profile likelihoods (threshold chi2_1,0.95 = 3.84):")
            for p in self.profiles:
                iv = ", ".join("open" if x is None else f"{x:.4g}" for x in p.interval)
                parts.append(
                    f"  {p.name:>16s}: {p.verdict:<10s} 95 % interval [{iv}]  max delta {p.max_delta:.3g}  "
                    f"({len(p.z)} points, {p.seconds:.1f} s)"
                )
        if self.posterior is not None:
            parts.append(self.posterior.to_text())
        if self.recovery is not None:
            parts.append(self.recovery.to_text())
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.to_text()

    # ---------------------------------------------------------- plots
    def plot(self, out_dir=None, *, prefix: str = "identifiability") -> dict:
        """Eigenvector heatmap, profiles and contraction-vs-z-score scatter (those with data).

        Parameters
        ----------
        out_dir : path, optional
            Write PNGs there (``{prefix}_eigenvectors.png``, ``_profiles.png``,
            ``_contraction.png``) and close the figures; otherwise return them.

        Returns
        -------
        dict
            ``{kind: Figure}`` or ``{kind: Path}``.
        """
        import matplotlib

        if out_dir is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        figs = {}
        if self.local is not None:
            figs["eigenvectors"] = plot_eigenvectors(self.local)
        if self.profiles:
            figs["profiles"] = plot_profiles(self.profiles)
        if self.posterior is not None or self.recovery is not None:
            figs["contraction"] = plot_contraction(self.posterior, self.recovery)
        if out_dir is None:
            return figs
        out_dir = Path(out_dir)
        paths = {}
        for kind, fig in figs.items():
            p = out_dir / f"{prefix}_{kind}.png"
            fig.savefig(p, dpi=110, bbox_inches="tight")
            plt.close(fig)
            paths[kind] = p
        return paths


def plot_eigenvectors(local: LocalAnalysis):
    """Heatmap of the Fisher eigenvectors (rows, weakest first) over parameters, with log10 eigenvalues."""
    import matplotlib.pyplot as plt

    n = len(local.names)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(2 + 0.55 * n, 1.2 + 0.4 * n), gridspec_kw={"width_ratios": [n, 3]})
    vecs = np.stack([_canonical_sign(v) for v in local.eigenvectors.T])
    d = local.null_dimension
    vecs[:d] = local.structural_null.T
    im = ax0.imshow(vecs, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax0.set_xticks(range(n), [f"{'ln ' if c == 'log' else ''}{nm}" for nm, c in zip(local.names, local.coordinates)], rotation=60)
    ax0.set_yticks(range(n), [f"{'null' if k < d else k}" for k in range(n)])
    ax0.set_ylabel("direction (weakest first)")
    fig.colorbar(im, ax=ax0, fraction=0.04, label="weight")
    ev = np.clip(local.eigenvalues, 1e-300, None)
    colors = ["black" if k < d else ("tab:orange" if 1 / math.sqrt(ev[k]) > local.sloppy_sd else "tab:blue") for k in range(n)]
    ax1.barh(range(n), np.log10(ev), color=colors)
    ax1.invert_yaxis()
    ax1.set_yticks([])
    ax1.set_xlabel("log10 eigenvalue")
    ax1.set_title("black: structural\norange: sloppy", fontsize=8)
    fig.tight_layout()
    return fig


def plot_profiles(profiles: Sequence[Profile]):
    """One panel per profile: ``delta -2 log L`` against the parameter, with the threshold."""
    import matplotlib.pyplot as plt

    k = len(profiles)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 2.8), squeeze=False)
    for ax, p in zip(axes[0], profiles):
        ax.plot(p.values, p.delta, "o-", ms=3)
        ax.axhline(p.threshold, color="tab:red", ls="--", lw=1)
        if p.coordinate == "log":
            ax.set_xscale("log")
        ax.set_xlabel(p.name)
        ax.set_title(p.verdict, fontsize=9)
    axes[0][0].set_ylabel("Δ(−2 log L)")
    fig.tight_layout()
    return fig


def plot_contraction(posterior: PosteriorIdentifiability | None, recovery: RecoveryStudy | None):
    """Posterior contraction vs. z-score (recovery study), or contraction bars (single posterior)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    if recovery is not None:
        for i, n in enumerate(recovery.names):
            ax.scatter(recovery.contraction[:, i], recovery.zscore[:, i], s=12, label=n)
        ax.set_xlabel("posterior contraction")
        ax.set_ylabel("posterior z-score")
        ax.set_xlim(-0.05, 1.05)
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=7, ncol=2)
    elif posterior is not None:
        ax.bar(range(len(posterior.names)), posterior.contraction)
        ax.set_xticks(range(len(posterior.names)), posterior.names, rotation=60)
        ax.set_ylabel("posterior contraction")
        ax.axhline(posterior.min_contraction, color="tab:red", ls="--", lw=1)
    fig.tight_layout()
    return fig


# ============================================================== Jansen-Rit
#: Exact symmetry generators of the JR model (log-coordinate weights); see the module docstring.
_SYMMETRIES = {
    "voltage scale": {"A": 1.0, "B": 1.0, "v0": 1.0, "r": -1.0, "gain": -1.0},
    "contacts vs firing rate": {"e0": 1.0, "C": -1.0, "C1": -1.0, "C2": -1.0, "C3": -1.0, "C4": -1.0},
    "rate units": {
        "e0": 1.0, "A": -1.0, "B": -1.0, "p_mean": 1.0, "p_std": 1.0, "input_amplitude": 1.0,
    },
}


def _log_to_z(problem, names, theta_nat: torch.Tensor) -> np.ndarray:
    """``dz/d ln theta`` per free parameter (1 for log coordinates)."""
    out = []
    for nm, x in zip(names, theta_nat):
        d = problem.prior.distributions[nm]
        xx = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(d.to_unconstrained(xx), xx)
        out.append(float(g) * float(x))
    return np.array(out)


def jansen_rit_symmetries(problem, theta) -> np.ndarray:
    """Exact null directions from the JR scaling symmetries, restricted to the problem's free parameters.

    Parameters
    ----------
    problem : InverseProblem
    theta : dict or array_like
        Parameter set (natural units).

    Returns
    -------
    numpy.ndarray
        Orthonormal basis ``(n, d)`` over ``gaussian_form().names`` (in the
        prior's unconstrained coordinates): the combinations of the
        generators in the module docstring whose components on fixed
        parameters cancel. ``gain_0, gain_1, ...`` (per-channel gains) follow
        ``gain``.
    """
    form = problem.gaussian_form()
    names = tuple(form.names)
    th = _theta_vector(problem, theta)
    th_free = torch.stack([th[list(problem.names).index(n)] for n in names])
    scale = _log_to_z(problem, names, th_free)
    fixed_names = sorted(set(problem.prior.fixed) | {k for g in _SYMMETRIES.values() for k in g} - set(names))
    # parameters the observation never sees are irrelevant: C1..C4 when only C is given
    G_free, G_fixed = [], []
    for gen in _SYMMETRIES.values():
        row_free = np.array([gen.get(n, gen.get("gain", 0.0) if n.startswith("gain_") else 0.0) for n in names])
        row_fixed = np.array([gen.get(n, 0.0) if _matters(problem, n) else 0.0 for n in fixed_names])
        G_free.append(row_free * scale)
        G_fixed.append(row_fixed)
    G_free, G_fixed = np.array(G_free), np.array(G_fixed)
    # combinations c with c^T G_fixed = 0
    if G_fixed.size:
        u, s, vt = np.linalg.svd(G_fixed.T)
        rank = int((s > 1e-12).sum())
        C = vt[rank:].T
    else:
        C = np.eye(len(G_free))
    D = (C.T @ G_free).T  # (n, k)
    if D.size == 0:
        return np.zeros((len(names), 0))
    u, s, _ = np.linalg.svd(D, full_matrices=False)
    return u[:, s > 1e-12 * max(1.0, s.max() if s.size else 1.0)]


def _matters(problem, name: str) -> bool:
    """Whether a fixed parameter constrains a symmetry (it exists in the model the observation evaluates)."""
    if name in ("C1", "C2", "C3", "C4"):
        return name in problem.prior.fixed
    if name in ("p_std",):
        return hasattr(problem.observation, "method")  # evoked runs have p_std = 0: no constraint
    if name == "input_amplitude":
        return not hasattr(problem.observation, "method")
    if name == "gain":  # absent with per-channel gains (gain_0, gain_1, ... are free instead)
        return name in problem.prior.fixed
    return True


def _spectral_invariants(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The quantities the linearised JR spectrum depends on (see the module docstring), ``(*batch, 8)``.

    ``(ln a, ln b, ln L_e, ln L_i, ln(gain p_std k_e), ln ap_amplitude, ap_exponent, ln floor)``.
    """
    from jrinfer.model import PARAMETERS, JansenRit

    mp = {k: v for k, v in params.items() if k in PARAMETERS}
    model = JansenRit(**mp)
    p = model.params
    eq = model.fixed_points().upper()
    y0, v = eq.state[..., 0], eq.v

    def slope(x):
        s = torch.sigmoid(p["r"] * (x - p["v0"]))
        return 2.0 * p["e0"] * p["r"] * s * (1.0 - s)

    g0, g1, g2 = slope(v), slope(p["C1"] * y0), slope(p["C3"] * y0)
    ke, ki = p["A"] / p["a"], p["B"] / p["b"]
    Le = p["C1"] * p["C2"] * g0 * g1 * ke**2
    Li = p["C3"] * p["C4"] * g0 * g2 * ke * ki
    one = torch.ones_like(Le)
    get = lambda k: torch.as_tensor(params.get(k, 1.0), dtype=_F64) * one  # noqa: E731
    cols = [
        torch.log(p["a"]) * one, torch.log(p["b"]) * one, torch.log(Le), torch.log(Li),
        torch.log(get("gain").abs() * p["p_std"] * ke),
        torch.log(get("ap_amplitude")), get("ap_exponent"), torch.log(get("floor")),
    ]
    return torch.stack(cols, -1)


def jansen_rit_null_space(problem, theta, *, rtol: float = 1e-9) -> dict:
    """The exact null space of a JR observation, derived from the equations (not from the data fit).

    Spectra under the transfer method: the kernel of the Jacobian of the
    spectral invariants (module docstring) with respect to the free
    parameters, by autograd through the equilibrium (implicit function
    theorem). Evoked responses and simulated spectra: the span of the
    model's scaling symmetries (:func:`jansen_rit_symmetries`).

    Returns
    -------
    dict
        ``basis`` (orthonormal ``(n, d)`` over ``gaussian_form().names``),
        ``names``, ``dimension``, ``source`` (``"spectral invariants"`` or
        ``"scaling symmetries"``) and ``directions`` (readable ``{name:
        weight}`` dicts).
    """
    form = problem.gaussian_form()
    names = tuple(form.names)
    obs = problem.observation
    if getattr(obs, "method", None) == "transfer":
        th = _theta_vector(problem, theta)
        z_all = problem.prior.to_unconstrained(th)
        idx = [list(problem.names).index(n) for n in names]
        z = z_all[idx].clone().requires_grad_(True)

        def inv(zz):
            cols = list(z_all.unbind())
            for j, i in enumerate(idx):
                cols[i] = zz[j]
            th_full = problem.prior.from_unconstrained(torch.stack(cols))
            return _spectral_invariants(problem.parameters(th_full))

        J = torch.autograd.functional.jacobian(inv, z).numpy()
        u, s, vt = np.linalg.svd(J)
        rank = int((s > rtol * s.max()).sum())
        basis = vt[rank:].T
        source = "spectral invariants"
    else:
        basis = jansen_rit_symmetries(problem, theta)
        source = "scaling symmetries"
    readable = _readable_basis(basis)
    return {
        "basis": basis,
        "names": names,
        "dimension": int(basis.shape[1]),
        "source": source,
        "directions": [_direction_dict(v, names) for v in readable.T],
    }


def _compare_derived(derived: dict, local: LocalAnalysis) -> dict:
    ang = principal_angles(derived["basis"], local.structural_null)
    out = {k: v for k, v in derived.items() if k != "basis"}
    out["names"] = list(out["names"])
    out["numerical_dimension"] = local.null_dimension
    out["principal_angles_deg"] = [float(np.degrees(a)) for a in ang]
    out["max_angle_deg"] = float(np.degrees(ang.max())) if ang.size else 0.0
    out["match"] = bool(derived["dimension"] == local.null_dimension and (ang.size == 0 or np.degrees(ang.max()) < 1e-3))
    return out


_SPECTRUM_DEFAULTS = {"p_mean": 60.0, "p_std": 1.0, "gain": 1.0, "ap_exponent": 1.0}
_EVOKED_DEFAULTS = {
    "p_mean": 60.0, "gain": 1e-2, "input_amplitude": 0.05, "input_latency": 0.03, "input_width": 0.005, "baseline": 0.0,
}


def jansen_rit_problem(
    kind: str,
    values: Mapping[str, float] | None = None,
    free: Sequence[str] = ("A", "B", "a", "b", "C", "e0", "v0", "r", "gain"),
    *,
    noise: float | None = None,
    grid=None,
    units: str | None = None,
    sd_log: float = 0.5,
    method: str = "transfer",
):
    """A synthetic JR problem for identifiability studies, and its parameter set.

    Parameters
    ----------
    kind : {"spectrum", "evoked"}
    values : dict, optional
        Parameter values (natural units) overriding the defaults: JR 1995
        constants with ``p_mean = 60`` (a stable equilibrium below the first
        Hopf point); spectra: ``p_std = 1``, ``gain = 1`` and an aperiodic
        component through half the neural power's median at 10 Hz
        (``ap_amplitude``), ``ap_exponent = 1``, ``floor`` 1 % of the smallest
        neural power; ERPs: JR 1995's pulse shape (``input_width = 5 ms``)
        at ``input_amplitude = 0.05``, half the amplitude from which the
        pulse switches the model to its lower equilibrium (JR 1995's 0.5
        does, and is outside the evoked regime), ``input_latency = 30 ms``,
        ``gain = 1e-2`` (a ~10 uV response), ``baseline = 0``.
    free : sequence of str
        Free parameters. Positive ones get ``LogNormal(value, sd_log)``
        (log coordinates), others (``baseline``, non-positive values)
        ``Normal(value, 1)``; the rest are fixed at their values.
    noise : float, optional
        Noise standard deviation: of log-power for spectra (default 0.1), in
        data units for ERPs (default 0.5 uV); fixes ``log_precision``.
    grid : array_like, optional
        Frequencies in Hz (default 2-40 Hz at 0.25 Hz) or times in s
        (default -0.1 to 0.5 s at 1 ms).
    units : str, optional
        Data units (default ``uV^2/Hz`` / ``uV``).
    sd_log : float
        Prior width of the free parameters (matters for posterior summaries
        only; the Fisher information does not depend on the prior).
    method : {"transfer", "simulation"}
        Spectral method.

    Returns
    -------
    problem : InverseProblem
        Its data are the noise-free prediction at the parameter set (so the
        parameter set is the maximum-likelihood point).
    theta : dict
        The free parameters' values.
    """
    from jrinfer.data import EvokedData, SpectrumData
    from jrinfer.model import PARAMETERS
    from jrinfer.observation import EvokedObservation, SpectrumObservation
    from jrinfer.prior import LogNormal, Normal, Prior
    from jrinfer.problem import InverseProblem

    _checks.check_option("kind", kind, ("spectrum", "evoked"))
    values = dict(values or {})
    if isinstance(free, str):
        free = [s.strip() for s in free.split(",") if s.strip()]
    free = list(free)
    if not free:
        raise ValueError("free must name at least one parameter")
    sd_log = _checks.check_scalar("sd_log", sd_log, positive=True)
    jr = {k: info.default for k, info in PARAMETERS.items() if info.default is not None}
    if kind == "spectrum":
        obs = SpectrumObservation(method=method)
        defaults = {**jr, **_SPECTRUM_DEFAULTS}
        noise = 0.1 if noise is None else _checks.check_scalar("noise", noise, positive=True)
        axis = torch.arange(2.0, 40.0 + 1e-9, 0.25, dtype=_F64) if grid is None else _checks.as_float_tensor("grid", grid)
        units = units or "uV^2/Hz"
        data0 = SpectrumData.from_arrays(axis, torch.ones(1, axis.numel(), dtype=_F64), units=units)
    else:
        obs = EvokedObservation()
        defaults = {**jr, **_EVOKED_DEFAULTS}
        defaults.pop("p_std")
        noise = 0.5 if noise is None else _checks.check_scalar("noise", noise, positive=True)
        axis = torch.arange(-0.1, 0.5 + 1e-9, 0.001, dtype=_F64) if grid is None else _checks.as_float_tensor("grid", grid)
        units = units or "uV"
        data0 = EvokedData.from_arrays(axis, torch.zeros(1, axis.numel(), dtype=_F64), units=units)
    known = set(defaults) | set(obs.parameter_names(data0)) | set(PARAMETERS)
    for name in list(values) + free:
        if name not in known or name in _NOISE:
            raise ValueError(f"unknown or unsupported parameter {name!r} for kind={kind!r}; known: {sorted(known - set(_NOISE))}")
    vals = {**defaults, **values}
    if kind == "spectrum":
        with torch.no_grad():
            mp = {k: torch.tensor(v, dtype=_F64) for k, v in vals.items() if k in PARAMETERS}
            neural = obs.neural_psd(mp, axis)
        if not bool(neural.valid):
            raise ValueError(f"the parameter set is outside the transfer method's valid regime: {neural.reasons[0]}")
        u = {"V^2/Hz": 1e-6, "mV^2/Hz": 1.0, "uV^2/Hz": 1e6}[units]
        pn = vals["gain"] ** 2 * u * neural.value
        vals.setdefault("ap_amplitude", 0.5 * float(pn.median()) * 10.0 ** vals["ap_exponent"])
        vals.setdefault("floor", 0.01 * float(pn.min()))
    for name in free:
        if name not in vals:
            raise ValueError(f"no value for free parameter {name!r}: give it in values")
    dists = {}
    for name in free:
        x = float(vals[name])
        dists[name] = LogNormal(x, sd_log) if x > 0 and name != "baseline" else Normal(x, 1.0)
    needed = set(obs.required_parameters(data0)) | {k for k in vals if k in PARAMETERS}
    fixed = {k: float(v) for k, v in vals.items() if k not in dists and k in needed}
    fixed["log_precision"] = -2.0 * math.log(noise)
    prior = Prior(dists, fixed=fixed)
    problem = InverseProblem(obs, prior, data0)
    theta = {n: float(vals[n]) for n in free}
    with torch.no_grad():
        pred = problem.predict(torch.tensor([theta[n] for n in problem.names], dtype=_F64))
    if not bool(pred.valid):
        raise ValueError(f"the observation cannot predict data at this parameter set: {pred.reasons[0]}")
    if kind == "spectrum":
        data = SpectrumData.from_arrays(axis, pred.value.reshape(1, -1), units=units)
    else:
        data = EvokedData.from_arrays(axis, pred.value.reshape(1, -1), units=units)
    return InverseProblem(obs, prior, data), theta


def identifiability_report(
    problem,
    theta,
    *,
    profiles: Sequence[str] = (),
    posterior=None,
    recovery: RecoveryStudy | None = None,
    derive: bool | None = None,
    n_points: int = 20,
    meta: Mapping | None = None,
    **local_kwargs,
) -> IdentifiabilityReport:
    """Run the local analysis (and optionally profiles) and assemble an :class:`IdentifiabilityReport`.

    Parameters
    ----------
    problem : InverseProblem
    theta : dict or array_like
        Parameter set (natural units).
    profiles : sequence of str
        Parameters to profile (:func:`profile_likelihood` around ``theta``).
    posterior : Posterior, optional
        Adds :func:`posterior_summary` under ``problem.prior``.
    recovery : RecoveryStudy, optional
        A finished :func:`recovery_study`.
    derive : bool, optional
        Compare with :func:`jansen_rit_null_space` (default: when the problem
        is a JR observation, i.e. its observation has JR parameters).
    n_points : int
        Grid points per profile.
    **local_kwargs
        Passed to :func:`local_analysis`.
    """
    local = local_analysis(problem, theta, **local_kwargs)
    derived = None
    if derive is None:
        derive = type(problem.observation).__name__ in ("SpectrumObservation", "EvokedObservation")
    if derive:
        derived = _compare_derived(jansen_rit_null_space(problem, theta), local)
    profs = [profile_likelihood(problem, name, theta, n_points=n_points) for name in profiles]
    post = posterior_summary(posterior, problem.prior) if posterior is not None else None
    return IdentifiabilityReport(local, profs, post, recovery, derived, dict(meta or {}))


