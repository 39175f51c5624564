"""Variational Laplace (VL): Gauss-Newton Bayesian inversion of a differentiable model.

The generative model is

.. math::

    y = f(\\theta) + \\varepsilon, \\qquad
    \\varepsilon \\sim N(0, \\Pi(\\lambda)^{-1}), \\qquad
    \\Pi(\\lambda) = \\sum_i e^{\\lambda_i} Q_i,

with Gaussian priors :math:`\\theta \\sim N(\\mu_\\theta, C_\\theta)` on the
parameters and :math:`\\lambda \\sim N(\\mu_\\lambda, C_\\lambda)` on the log
precisions (hyperparameters). The posterior is approximated by a mean-field
Gaussian :math:`q(\\theta)\\,q(\\lambda)` and the log evidence by the
variational free energy under the Laplace approximation, following

* K. Friston, J. Mattout, N. Trujillo-Barreto, J. Ashburner, W. Penny (2007),
  "Variational free energy and the Laplace approximation", NeuroImage 34:220-234;
* K. Friston, W. Penny (2011), "Post hoc Bayesian model selection",
  NeuroImage 56:2089-2099 (Bayesian model reduction).

This is an independent implementation written from the published equations.

Free energy (nats), with :math:`e = y - f(\\mu)`, :math:`J = \\partial f/\\partial\\theta`
at the posterior mean :math:`\\mu`, and
:math:`\\Sigma_\\theta = (J^\\top \\Pi J + C_\\theta^{-1})^{-1}`:

.. math::

    F = \\underbrace{-\\tfrac12 e^\\top \\Pi e + \\tfrac12 \\log|\\Pi|
        - \\tfrac m2 \\log 2\\pi}_{\\text{accuracy}}
        \\; - \\; \\underbrace{\\Big[\\tfrac12 r^\\top C_\\theta^{-1} r
        - \\tfrac12 \\log|\\Sigma_\\theta C_\\theta^{-1}|
        + \\tfrac12 s^\\top C_\\lambda^{-1} s
        - \\tfrac12 \\log|\\Sigma_\\lambda C_\\lambda^{-1}|\\Big]}_{\\text{complexity}}

with :math:`r = \\mu - \\mu_\\theta`, :math:`s = \\lambda - \\mu_\\lambda` and
:math:`\\Sigma_\\lambda^{-1} = C_\\lambda^{-1} + \\mathcal I(\\lambda)`,
:math:`\\mathcal I_{ij} = \\tfrac12 \\mathrm{tr}(P_i \\Pi^{-1} P_j \\Pi^{-1})`,
:math:`P_i = e^{\\lambda_i} Q_i` (the expected Fisher information of the log
precisions). The :math:`\\lambda` terms appear only when the hyperparameters are
estimated. For a linear model with fixed noise precision :math:`F` is exactly the
log evidence :math:`\\log N(y;\\, f(\\mu_\\theta),\\, \\Pi^{-1} + J C_\\theta J^\\top)`.

Each iteration

1. (``estimate_hyper=True``) Fisher-scoring steps on :math:`\\lambda` with the
   gradient :math:`\\tfrac12 \\mathrm{tr}(P_i(\\Pi^{-1} - e e^\\top - J\\Sigma_\\theta
   J^\\top)) - [C_\\lambda^{-1} s]_i` (the expected squared error under
   :math:`q(\\theta)`; :math:`\\Sigma_\\theta` is recomputed at every trial
   :math:`\\lambda`) plus, for several components, the gradient of
   :math:`\\tfrac12\\log|\\Sigma_\\lambda C_\\lambda^{-1}|` (non-zero only when
   the Fisher information depends on :math:`\\lambda`, i.e. overlapping
   components; computed by autograd), curvature
   :math:`\\mathcal I(\\lambda) + C_\\lambda^{-1}`, a bounded step length and
   step halving so that :math:`F` never decreases;
2. a regularised (Levenberg-Marquardt) Gauss-Newton step on :math:`\\mu`:
   :math:`(H + \\nu\\,\\mathrm{diag}\\,H)\\,\\delta = g` with
   :math:`g = J^\\top\\Pi e - C_\\theta^{-1} r`, :math:`H = J^\\top \\Pi J + C_\\theta^{-1}`,
   accepted only if :math:`F` (re-evaluated with the Jacobian at the trial point)
   does not decrease; otherwise :math:`\\nu` is increased (to 1/8 from 0, then
   eightfold) and the step retried, at most ``max_step_retries`` times. The
   damping starts at 0 (pure Gauss-Newton, exact in one step for linear models)
   and is divided by 4 after each accepted step (reset to 0 below 1e-5). A
   trial point where ``f`` returns NaN/inf counts as a rejected step, so ``f``
   should return NaN (not raise) outside its domain. When a step is rejected
   and its predicted gain is already below ``tol``, the iteration is counted
   as converged (``F`` cannot be increased measurably along the step); a step
   that cannot be made to increase ``F`` while its predicted gain is larger
   ends the fit with status ``"failed"``.

The fit has converged when the predicted increase of :math:`F` (``½ gᵀδ`` of the
Gauss-Newton step plus the gain of the hyperparameter update) stays below ``tol``
for ``patience`` consecutive iterations.

Default hyperprior
------------------
``hyper_mean = 0`` (unit noise precision) and ``hyper_cov = I`` (unit variance of
each log precision): the noise precision is expected within a factor
:math:`e^{2} \\approx 7.4` of 1 at two prior standard deviations. This is weakly
informative for data scaled so that the noise has unit order of magnitude;
scale your data (or pass ``hyper_mean = log(1/expected_noise_variance)``) when
that is not the case. With many data points the likelihood dominates it (the
Fisher information of a single precision component is ``m/2``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from jrinfer import _checks
from jrinfer._linalg import _SPD, _check_psd, _check_spd, _check_vector

__all__ = ["LaplaceConvergenceError", "LaplaceEngine", "LaplaceResult"]

_LOG_2PI = math.log(2.0 * math.pi)
_DTYPE = torch.float64

# Levenberg-Marquardt damping schedule (nu multiplies diag(H)).
_NU_FIRST_REJECT = 0.125  # nu after the first rejection of an undamped step
_NU_GROW = 8.0
_NU_SHRINK = 4.0
_NU_ZERO_BELOW = 1e-5  # relaxed nu below this snaps back to pure Gauss-Newton
# Hyperparameter (log precision) updates.
_HYPER_INNER = 8  # Fisher-scoring steps per outer iteration
_HYPER_MAX_STEP = 2.0  # largest change of any log precision in one step
_HYPER_HALVINGS = 6
_JACOBIAN_MODES = ("auto", "forward", "reverse", "autograd")


class LaplaceConvergenceError(RuntimeError):
    """Raised by :class:`VariationalLaplace` with ``raise_on_failure=True``.

    The (unconverged) :class:`LaplaceResult` is attached as ``.result``.
    """

    def __init__(self, message: str, result: LaplaceResult):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True, eq=False)
class LaplaceResult:
    """Posterior and free energy from :meth:`VariationalLaplace.fit_function`.

    Attributes
    ----------
    mean, cov : torch.Tensor
        Posterior mean ``(n,)`` and covariance ``(n, n)`` of the parameters.
    hyper_mean, hyper_cov : torch.Tensor
        Posterior mean ``(k,)`` and covariance ``(k, k)`` of the log precisions.
        With ``estimate_hyper=False`` the log precisions are fixed at the given
        ``hyper_mean`` and ``hyper_cov`` is all zeros.
    free_energy : float
        Variational (Laplace) free energy in nats, an approximation to the log
        evidence ``log p(y | model)``; ``nan`` when the initial point failed.
    accuracy, complexity : float
        ``free_energy = accuracy - complexity``: the expected log likelihood at
        the posterior mean (``-½eᵀΠe + ½log|Π| - (m/2)log 2π``) and the
        Kullback-Leibler-like penalty of the posterior relative to the priors.
    n_iter : int
        Number of iterations performed.
    status : {"converged", "max_iter", "failed"}
    message : str
        Human-readable account of how the fit ended.
    trace : list of dict
        One entry per iteration, starting with iteration 0 (the initial point):
        ``iteration``, ``F`` (free energy at the end of the iteration),
        ``predicted_increase`` (``½gᵀδ`` of the Gauss-Newton step plus the gain of
        the hyperparameter update; nan for iteration 0), ``nu`` (damping used by
        the last step tried), ``accepted`` (whether the parameter step was
        accepted), ``retries`` (step reductions) and ``hyper_mean`` (list).
    trace_free_energy : torch.Tensor
        ``F`` of each trace entry, shape ``(n_iter + 1,)``; non-decreasing.
    """

    mean: torch.Tensor
    cov: torch.Tensor
    hyper_mean: torch.Tensor
    hyper_cov: torch.Tensor
    free_energy: float
    accuracy: float
    complexity: float
    n_iter: int
    status: str
    message: str
    trace: list = field(default_factory=list, repr=False)
    trace_free_energy: torch.Tensor = field(default=None, repr=False)

    @property
    def converged(self) -> bool:
        """True when ``status == "converged"``."""
        return self.status == "converged"


class _DiagPrecision:
    """Diagonal components, stored as a (k, m) tensor: O(k m) memory and time."""

    def __init__(self, q: torch.Tensor):
        self.q = q
        self.k, self.m = q.shape

    def parts(self, J: torch.Tensor, e: torch.Tensor):
        """A_i = Jᵀ Q_i J (k, n, n), c_i = Jᵀ Q_i e (k, n), b_i = eᵀ Q_i e (k,)."""
        QJ = self.q[:, :, None] * J[None]  # (k, m, n)
        QJt = QJ.transpose(1, 2)
        return QJt @ J, QJt @ e, self.q @ (e * e)

    def stats(self, lam: torch.Tensor):
        """log|Π|, tr(P_i Π⁻¹) (k,) and Fisher information ½tr(P_iΠ⁻¹P_jΠ⁻¹) (k, k)."""
        w = torch.exp(lam)
        pi = w @ self.q
        R = (w[:, None] * self.q) / pi  # (k, m)
        return float(torch.log(pi).sum()), R.sum(1), 0.5 * (R @ R.T)

    def fisher(self, lam: torch.Tensor) -> torch.Tensor:
        """The Fisher information as a differentiable function of lambda."""
        w = torch.exp(lam)
        R = (w[:, None] * self.q) / (w @ self.q)
        return 0.5 * (R @ R.T)


class _DensePrecision:
    """Dense components, stored as a (k, m, m) tensor."""

    def __init__(self, Q: torch.Tensor):
        self.Q = Q
        self.k, self.m, _ = Q.shape
        self._cache_key = None
        self._cache = None

    def parts(self, J: torch.Tensor, e: torch.Tensor):
        QJ = self.Q @ J  # (k, m, n)
        Qe = self.Q @ e  # (k, m)
        return J.T @ QJ, QJ.transpose(1, 2) @ e, Qe @ e

    def stats(self, lam: torch.Tensor):
        key = tuple(lam.tolist())
        if key == self._cache_key:
            return self._cache
        w = torch.exp(lam)
        Pi = torch.einsum("k,kij->ij", w, self.Q)
        fac = _SPD(Pi)
        S = fac.inverse()
        M = w[:, None, None] * (self.Q @ S)  # P_i S, (k, m, m)
        trPS = torch.diagonal(M, dim1=1, dim2=2).sum(1)
        fisher = 0.5 * torch.einsum("iab,jba->ij", M, M)
        out = (fac.logdet(), trPS, 0.5 * (fisher + fisher.T))
        self._cache_key, self._cache = key, out
        return out

    def fisher(self, lam: torch.Tensor) -> torch.Tensor:
        """The Fisher information as a differentiable function of lambda."""
        w = torch.exp(lam)
        S = torch.cholesky_inverse(torch.linalg.cholesky(torch.einsum("k,kij->ij", w, self.Q)))
        M = w[:, None, None] * (self.Q @ S)
        return 0.5 * torch.einsum("iab,jba->ij", M, M)


def _precision_structure(precision_components, m: int):
    """Validate ``precision_components`` and return a precision structure."""
    if precision_components is None:
        return _DiagPrecision(torch.ones(1, m, dtype=_DTYPE))
    name = "precision_components"
    if isinstance(precision_components, torch.Tensor) and precision_components.dim() == 2:
        q = _checks.as_float_tensor(name, precision_components)
        if q.shape[1] != m or q.shape[0] == 0:
            raise ValueError(
                f"{name} as a 2-D tensor holds diagonals and must have shape (k, m) = (k, {m}) like y, "
                f"got {tuple(q.shape)}"
            )
        _checks.check_finite(name, q)
        if bool((q < 0).any()):
            raise ValueError(f"{name} diagonals must be >= 0 (each component must be positive semi-definite)")
        if bool((q.sum(0) <= 0).any()):
            raise ValueError(f"{name} must sum to a positive definite matrix; some data points get zero precision")
        return _DiagPrecision(q.contiguous())
    if isinstance(precision_components, torch.Tensor) and precision_components.dim() == 3:
        comps = list(precision_components)
    elif isinstance(precision_components, Sequence) and not isinstance(precision_components, (str, bytes)):
        comps = list(precision_components)
    else:
        raise ValueError(
            f"{name} must be a list of (m, m) tensors, a (k, m, m) tensor or a (k, m) tensor of diagonals, "
            f"got {type(precision_components).__name__}"
        )
    if not comps:
        raise ValueError(f"{name} must hold at least one component")
    Qs = []
    for i, Q in enumerate(comps):
        Q = _checks.as_float_tensor(f"{name}[{i}]", Q)
        if tuple(Q.shape) != (m, m):
            raise ValueError(f"{name}[{i}] must have shape (m, m) = ({m}, {m}) like y, got {tuple(Q.shape)}")
        Qs.append(_check_psd(f"{name}[{i}]", Q, m, "y"))
    Q = torch.stack(Qs)
    total = Q.sum(0)
    ds = torch.diagonal(total)
    if bool((ds <= 0).any()) or int(torch.linalg.cholesky_ex(total / ds.sqrt()[:, None] / ds.sqrt()[None, :])[1]) != 0:
        raise ValueError(f"{name} must sum to a positive definite matrix")
    offdiag = Q - torch.diag_embed(torch.diagonal(Q, dim1=1, dim2=2))
    if not bool(offdiag.any()):
        return _DiagPrecision(torch.diagonal(Q, dim1=1, dim2=2).contiguous())
    return _DensePrecision(Q)


# --------------------------------------------------------------------------- #
# The engine
# --------------------------------------------------------------------------- #


class _Problem:
    """Everything fixed during one fit, plus model evaluation."""

    def __init__(self, f, y, prior_mean, prior_cov, prec, hyper_mean, hyper_cov, estimate_hyper, jacobian,
                 value_and_jacobian=None):
        self.f, self.y = f, y
        self.m, self.n = y.shape[0], prior_mean.shape[0]
        self.prior_mean = prior_mean
        self.prior_cov = prior_cov
        self.prior_fac = _SPD(prior_cov)
        self.ipC = self.prior_fac.inverse()
        self.logdet_C = self.prior_fac.logdet()
        self.prec = prec
        self.hyper_mean = hyper_mean
        self.hyper_cov = hyper_cov
        self.estimate_hyper = estimate_hyper
        if estimate_hyper:
            fac = _SPD(hyper_cov)
            self.ipCh = fac.inverse()
            self.logdet_Ch = fac.logdet()
        self.jacobian_mode = jacobian
        self.jacobian_used = None
        self._jac = None
        if value_and_jacobian is not None and jacobian == "auto":  # the caller's own (e.g. a fused NumPy path)
            self._jac, self.jacobian_used = value_and_jacobian, "supplied"
        # One precision component (the common case: i.i.d. noise with one
        # unknown level): log|Π|, tr(PΠ⁻¹) and the Fisher information of λ are
        # closed-form scalars, and H(λ) = C⁻¹ + e^λ A has one generalised
        # eigendecomposition per θ, so the λ updates need no matrix work.
        self.k1 = prec.k == 1
        if self.k1:
            if isinstance(prec, _DiagPrecision):
                self._logdet_q = float(torch.log(prec.q[0]).sum())
            else:
                self._logdet_q = _SPD(prec.Q[0]).logdet()
            # prior_cov = R Rᵀ (Jacobi-scaled Cholesky) whitens H: Rᵀ H R = I + e^λ Rᵀ A R.
            d = torch.diagonal(prior_cov).sqrt()
            Ls = torch.linalg.cholesky(prior_cov / d[:, None] / d[None, :])
            self._R = d[:, None] * Ls
            if estimate_hyper:
                self._hm = float(hyper_mean[0])
                self._ipCh = float(self.ipCh[0, 0])

    # -- model evaluation -------------------------------------------------- #
    def _f64(self, theta):
        out = self.f(theta)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"f must return a torch.Tensor, got {type(out).__name__}")
        return out.to(_DTYPE)

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._f64(theta)

    def _method(self, name: str):
        """A callable theta -> (f(theta), J(theta)) for one differentiation strategy."""
        if name in ("forward", "reverse"):
            from torch.func import jacfwd, jacrev

            def g(p):
                out = self._f64(p)
                return out, out

            jac = (jacfwd if name == "forward" else jacrev)(g, has_aux=True)

            from jrinfer._threading import FORWARD_AD

            lock = FORWARD_AD if name == "forward" else contextlib.nullcontext()

            def run(theta):
                with lock, warnings.catch_warnings():
                    # torch's first use of its forward-mode decompositions calls the
                    # deprecated torch.jit.script internally; not actionable here.
                    warnings.filterwarnings(
                        "ignore", message=".*torch.jit.script.* is deprecated", category=DeprecationWarning
                    )
                    J, val = jac(theta)
                return val, J

            return run
        from torch.autograd.functional import jacobian

        vectorize = name == "autograd"

        def run(theta):
            return self.value(theta), jacobian(self._f64, theta, vectorize=vectorize)

        return run

    def value_and_jacobian(self, theta: torch.Tensor):
        """f(theta) and its Jacobian (m, n): the supplied function, else automatic differentiation.

        The first call settles the strategy: with ``jacobian="auto"`` forward
        (``torch.func.jacfwd``) and reverse (``torch.func.jacrev``) mode are
        both run once and the faster is kept; strategies that raise (e.g. an
        ``f`` that ``torch.func`` cannot transform) are skipped in favour of
        ``torch.autograd.functional.jacobian``.
        """
        theta = theta.detach().clone()
        if self._jac is not None:
            val, J = self._jac(theta)
            return val.detach().to(_DTYPE), J.detach().to(_DTYPE)
        if self.jacobian_mode == "auto":
            candidates = ["forward", "reverse"] if self.n <= self.m else ["reverse", "forward"]
        else:
            candidates = [self.jacobian_mode]
        timed, first_error = [], None
        for name in candidates:
            run = self._method(name)
            t0 = time.perf_counter()
            try:
                out = run(theta)
            except (RuntimeError, NotImplementedError) as err:  # not composable with torch.func
                first_error = first_error or err
                continue
            timed.append((time.perf_counter() - t0, name, run, out))
        if not timed:
            for name in ("autograd", "autograd-loop"):
                run = self._method(name)
                try:
                    out = run(theta)
                except (RuntimeError, NotImplementedError) as err:
                    first_error = first_error or err
                    continue
                timed.append((0.0, name, run, out))
                break
        if not timed:
            raise first_error
        _, name, run, (val, J) = min(timed, key=lambda t: t[0])
        self._jac, self.jacobian_used = run, name
        return val.detach().to(_DTYPE), J.detach().to(_DTYPE)

    # -- state at a parameter value ---------------------------------------- #
    def state(self, mu: torch.Tensor, val: torch.Tensor, J: torch.Tensor) -> dict:
        e = self.y - val
        A, c, b = self.prec.parts(J, e)
        r = mu - self.prior_mean
        ipC_r = self.ipC @ r
        return {"mu": mu, "J": J, "e": e, "A": A, "c": c, "b": b, "ipC_r": ipC_r, "prior_quad": float(r @ ipC_r)}

    def hessian(self, st: dict, w: torch.Tensor) -> torch.Tensor:
        return self.ipC + torch.einsum("k,kij->ij", w, st["A"])

    def hessian_factor(self, st: dict, lam: torch.Tensor) -> _SPD:
        """Factorisation of H at (mu, lambda), cached on the state for the last lambda."""
        key = tuple(lam.tolist())
        cached = st.get("_hfac")
        if cached is not None and cached[0] == key:
            return cached[1]
        hfac = _SPD(self.hessian(st, torch.exp(lam)))
        st["_hfac"] = (key, hfac)
        return hfac

    def free_energy(self, st: dict, lam: torch.Tensor, hfac: _SPD | None = None, *, hyper_factor: bool = False):
        """Return (F, accuracy, H-factorisation, hyper-factorisation) at (mu, lambda).

        The hyper-factorisation is only formed (for one precision component)
        when ``hyper_factor`` is true; it is None otherwise.
        """
        if self.k1:
            lam_f = float(lam[0])
            logdet_pi = self.m * lam_f + self._logdet_q
            accuracy = -0.5 * math.exp(lam_f) * float(st["b"][0]) + 0.5 * logdet_pi - 0.5 * self.m * _LOG_2PI
        else:
            w = torch.exp(lam)
            logdet_pi, _, fisher = self.prec.stats(lam)
            accuracy = -0.5 * float(w @ st["b"]) + 0.5 * logdet_pi - 0.5 * self.m * _LOG_2PI
        if hfac is None:
            hfac = self.hessian_factor(st, lam)
        F = accuracy - 0.5 * st["prior_quad"] - 0.5 * self.logdet_C - 0.5 * hfac.logdet()
        lfac = None
        if self.estimate_hyper:
            if self.k1 and not hyper_factor:
                s = lam_f - self._hm
                F += -0.5 * self._ipCh * s * s - 0.5 * self.logdet_Ch - 0.5 * math.log(0.5 * self.m + self._ipCh)
            else:
                if self.k1:
                    fisher = torch.full((1, 1), 0.5 * self.m, dtype=_DTYPE)
                s = lam - self.hyper_mean
                lfac = _SPD(fisher + self.ipCh)
                F += -0.5 * float(s @ self.ipCh @ s) - 0.5 * self.logdet_Ch - 0.5 * lfac.logdet()
        if not math.isfinite(F):
            F = -math.inf
        return F, accuracy, hfac, lfac

    def _update_hyper_k1(self, st: dict, lam: torch.Tensor, F: float):
        """:meth:`update_hyper` for one precision component, in scalar arithmetic.

        With ``M = Rᵀ A R = V diag(s) Vᵀ`` (``prior_cov = R Rᵀ``):
        ``log|H(λ)| = -log|C| + Σ log(1 + e^λ s)`` and
        ``tr(A Σ(λ)) = Σ s / (1 + e^λ s)``, so every trial λ costs O(n)
        floating-point operations. The steps, their control and the returned
        free energy (recomputed with :meth:`free_energy`) are those of the
        general path.
        """
        F0 = F
        sv = torch.linalg.eigvalsh(self._R.T @ st["A"][0] @ self._R).clamp_min(0.0).tolist()
        b = float(st["b"][0])
        m, hm, ipCh = self.m, self._hm, self._ipCh
        const = (
            0.5 * self._logdet_q - 0.5 * m * _LOG_2PI - 0.5 * st["prior_quad"]
            - 0.5 * self.logdet_Ch - 0.5 * math.log(0.5 * m + ipCh)
        )
        curv = 0.5 * m + ipCh

        def free(l):
            w = math.exp(l)
            ld = sum(math.log1p(w * x) for x in sv)  # log|H| + log|C|
            return const - 0.5 * w * b + 0.5 * m * l - 0.5 * ld - 0.5 * ipCh * (l - hm) ** 2

        l0 = l = float(lam[0])
        Fs = free(l)
        for _ in range(_HYPER_INNER):
            w = math.exp(l)
            trAS = sum(x / (1.0 + w * x) for x in sv)
            grad = 0.5 * (m - w * (b + trAS)) - ipCh * (l - hm)
            step = grad / curv
            if abs(step) > _HYPER_MAX_STEP:
                step = math.copysign(_HYPER_MAX_STEP, step)
            predicted = grad * step - 0.5 * step * curv * step
            if not predicted > 1e-12:  # also catches nan
                break
            for _ in range(_HYPER_HALVINGS):
                trial = l + step
                F_trial = free(trial)
                if F_trial >= Fs:
                    break
                step = 0.5 * step
            else:
                break
            l, Fs = trial, F_trial
            if predicted < 1e-9:
                break
        if l == l0:
            return lam, F0, 0.0
        lam_new = torch.tensor([l], dtype=_DTYPE)
        F_new = self.free_energy(st, lam_new)[0]
        if not F_new >= F0:  # rounding between the two evaluations of F
            return lam, F0, 0.0
        return lam_new, F_new, F_new - F0

    def update_hyper(self, st: dict, lam: torch.Tensor, F: float):
        """Fisher-scoring ascent of F in lambda at fixed mu; never decreases F."""
        if self.k1:
            return self._update_hyper_k1(st, lam, F)
        F0 = F
        for _ in range(_HYPER_INNER):
            w = torch.exp(lam)
            _, trPS, fisher = self.prec.stats(lam)
            Sigma = _SPD(self.hessian(st, w)).inverse()
            trAS = (st["A"] * Sigma).sum((1, 2))
            grad = 0.5 * (trPS - w * (st["b"] + trAS)) - self.ipCh @ (lam - self.hyper_mean)
            if self.prec.k > 1:
                # The Fisher information, hence ½log|Σ_λ C_λ⁻¹|, depends on λ when the
                # components overlap: add that term's gradient so that the steps
                # ascend exactly the F that is reported (it is O(1), not O(m)).
                lam_ = lam.detach().clone().requires_grad_(True)
                with torch.enable_grad():
                    ent = -0.5 * torch.logdet(self.prec.fisher(lam_) + self.ipCh)
                    grad = grad + torch.autograd.grad(ent, lam_)[0]
            curv = fisher + self.ipCh
            step = _SPD(curv).solve(grad)
            big = float(step.abs().max())
            if big > _HYPER_MAX_STEP:
                step = step * (_HYPER_MAX_STEP / big)
            predicted = float(grad @ step - 0.5 * step @ curv @ step)
            if not predicted > 1e-12:  # also catches nan
                break
            for _ in range(_HYPER_HALVINGS):
                trial = lam + step
                F_trial = self.free_energy(st, trial)[0]
                if F_trial >= F:
                    break
                step = 0.5 * step
            else:
                break
            lam, F = trial, F_trial
            if predicted < 1e-9:
                break
        return lam, F, F - F0


#: Progress modes of :class:`LaplaceEngine` besides True/False.
_PROGRESS_MODES = ("auto", "bar", "lines")
#: Seconds between two progress lines of a running fit (``progress="lines"``).
PROGRESS_INTERVAL_S = 10.0


def progress_mode(progress) -> str | None:
    """``"bar"``, ``"lines"`` or None (silent) for a ``progress`` option (``"auto"``: bar on a terminal)."""
    if progress is True:
        return "bar"
    if progress == "auto":
        isatty = getattr(sys.stderr, "isatty", None)
        return "bar" if isatty is not None and isatty() else "lines"
    return progress or None


def duration(seconds: float) -> str:
    """A duration for progress lines: ``0.4 s``, ``42 s``, ``3.5 min``, ``2.1 h``."""
    if not math.isfinite(seconds):
        return "? s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def progress_line(message: str) -> None:
    """One progress line on stderr (looked up at call time, so redirections and capture see it)."""
    print(message, file=sys.stderr, flush=True)


class _Progress:
    """Progress of one Gauss-Newton run: a tqdm bar, or a line every PROGRESS_INTERVAL_S and one at the end."""

    def __init__(self, progress, total: int, desc: str, F: float):
        self.mode = progress_mode(progress)
        self.desc = desc
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="it")
            self.bar.set_postfix(F=f"{F:.4g}")

    def update(self, it: int, F: float, dF: float, nu: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(F=f"{F:.6g}", dF=f"{dF:.2g}", nu=f"{nu:.2g}")
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self.last >= PROGRESS_INTERVAL_S:
                self.last = now
                progress_line(f"{self.desc}: iteration {it}, F = {F:.6g}, {now - self.t0:.0f} s elapsed")

    def close(self, status: str, it: int, F: float) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines":
            progress_line(f"{self.desc}: {status} after {it} iterations, F = {F:.6g}, "
                          f"{time.perf_counter() - self.t0:.1f} s")


class LaplaceEngine:
    """Variational Laplace inversion of ``y = f(θ) + ε`` (Friston et al. 2007).

    Parameters (keyword-only)
    -------------------------
    max_iter : int, default 128
        Maximum number of (outer) iterations.
    tol : float, default 1e-4
        Convergence threshold on the predicted increase of the free energy (nats).
    patience : int, default 4
        Number of consecutive iterations with predicted increase below ``tol``
        required to declare convergence.
    estimate_hyper : bool, default True
        Estimate the log precisions ``λ``; with False they are fixed at
        ``hyper_mean`` (and ``F`` has no ``λ`` terms).
    max_step_retries : int, default 8
        Times a rejected Gauss-Newton step is shrunk (damping ×8) and retried
        within one iteration.
    progress : bool or {"auto", "bar", "lines"}, default False
        Report progress on stderr: ``"bar"`` (or True) a tqdm bar with the
        free energy; ``"lines"`` one line every :data:`PROGRESS_INTERVAL_S`
        seconds of a run (start, iteration, ``F``, elapsed time) and one when
        it ends, for logs, pipes and notebooks where a bar is not
        redrawn; ``"auto"`` the bar when stderr is a terminal, else lines.
    raise_on_failure : bool, default False
        Raise :class:`LaplaceConvergenceError` (a ``RuntimeError``) instead of
        only warning when the fit does not converge.
    jacobian : {"auto", "forward", "reverse", "autograd"}, default "auto"
        How ``∂f/∂θ`` is computed: ``torch.func.jacfwd`` ("forward"),
        ``torch.func.jacrev`` ("reverse"), or
        ``torch.autograd.functional.jacobian`` ("autograd": plain autograd,
        for ``f`` that ``torch.func`` cannot transform). "auto" times forward
        and reverse mode once on the first evaluation and keeps the faster
        (forward mode has the lower operation count when ``n <= m``, but on
        CPU the per-operation overhead of vmapped forward mode often makes
        reverse mode faster for small problems). A mode that raises falls
        back to "autograd". Under "auto" a ``value_and_jacobian`` given to
        :meth:`fit_function` (for an :class:`~jrinfer.InverseProblem`, its
        observation's fused path where one exists: the transfer-method
        spectrum) replaces automatic differentiation. The strategy used is
        recorded in the result's ``message``.

    Non-convergence (``max_iter`` reached, non-finite ``f``, step control failing)
    is reported on the result (``status``, ``message``) and with a
    ``RuntimeWarning``.
    """

    def __init__(
        self,
        *,
        max_iter: int = 128,
        tol: float = 1e-4,
        patience: int = 4,
        estimate_hyper: bool = True,
        max_step_retries: int = 8,
        progress: bool = False,
        raise_on_failure: bool = False,
        jacobian: str = "auto",
    ):
        self.max_iter = _checks.check_int("max_iter", max_iter, minimum=1)
        self.tol = _checks.check_scalar("tol", tol, positive=True)
        self.patience = _checks.check_int("patience", patience, minimum=1)
        self.estimate_hyper = _checks.check_bool("estimate_hyper", estimate_hyper)
        self.max_step_retries = _checks.check_int("max_step_retries", max_step_retries, minimum=0)
        if not isinstance(progress, bool):
            _checks.check_option("progress", progress, _PROGRESS_MODES)
        self.progress = progress
        self.raise_on_failure = _checks.check_bool("raise_on_failure", raise_on_failure)
        _checks.check_option("jacobian", jacobian, _JACOBIAN_MODES)
        self.jacobian = jacobian

    def __repr__(self) -> str:
        opts = ", ".join(
            f"{k}={getattr(self, k)!r}"
            for k in (
                "max_iter", "tol", "patience", "estimate_hyper", "max_step_retries", "progress", "raise_on_failure",
                "jacobian",
            )
        )
        return f"VariationalLaplace({opts})"

    # ------------------------------------------------------------------ #
    def fit_function(
        self,
        f: Callable[[torch.Tensor], torch.Tensor],
        y,
        prior_mean,
        prior_cov,
        hyper_mean=None,
        hyper_cov=None,
        precision_components=None,
        init=None,
        value_and_jacobian=None,
        progress_label: str = "variational Laplace",
    ) -> LaplaceResult:
        """Fit ``y = f(θ) + ε`` and return a :class:`LaplaceResult`.

        Parameters
        ----------
        f : callable
            Maps a float64 parameter vector ``(n,)`` to a prediction ``(m,)``;
            must be differentiable with torch autograd (``torch.func``
            composable for speed; otherwise plain autograd is used).
        y : tensor (m,)
            Data.
        prior_mean : tensor (n,)
        prior_cov : tensor (n, n)
            Symmetric positive definite prior covariance of ``θ``.
        hyper_mean : tensor (k,), optional
            Prior mean of the log precisions (default zeros: unit precision).
        hyper_cov : tensor (k, k), optional
            Prior covariance of the log precisions (default identity; see the
            module docstring).
        precision_components : optional
            ``Q_i`` with ``Π = Σ exp(λ_i) Q_i``: a list of ``k`` symmetric
            positive semi-definite ``(m, m)`` tensors (or a ``(k, m, m)``
            tensor), or a ``(k, m)`` tensor holding the diagonals of diagonal
            components (O(m) memory). Their sum must be positive definite.
            Default: one identity component (i.i.d. noise).
        init : tensor (n,), optional
            Starting parameters (default ``prior_mean``).
        value_and_jacobian : callable, optional
            ``θ -> (f(θ), ∂f/∂θ)`` of shapes ``(m,)`` and ``(m, n)``, used
            instead of automatic differentiation when ``jacobian="auto"``
            (e.g. :attr:`~jrinfer.problem.GaussianForm.value_and_jacobian`).
        progress_label : str
            Name of this run in the progress bar or lines (with ``progress``),
            e.g. ``"variational Laplace, start 2 of 8"``.
        """
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        y = _check_vector("y", y)
        m = y.shape[0]
        prior_mean = _check_vector("prior_mean", prior_mean)
        n = prior_mean.shape[0]
        prior_cov = _check_spd("prior_cov", _checks.as_float_tensor("prior_cov", prior_cov), n, "prior_mean")
        prec = _precision_structure(precision_components, m)
        k = prec.k
        what = f"the {k} precision_components"
        if hyper_mean is None:
            hyper_mean = torch.zeros(k, dtype=_DTYPE)
        hyper_mean = _check_vector("hyper_mean", hyper_mean, k, what)
        if hyper_cov is None:
            hyper_cov = torch.eye(k, dtype=_DTYPE)
        hyper_cov = _check_spd("hyper_cov", _checks.as_float_tensor("hyper_cov", hyper_cov), k, what)
        init = prior_mean.clone() if init is None else _check_vector("init", init, n, "prior_mean")

        prob = _Problem(f, y, prior_mean, prior_cov, prec, hyper_mean, hyper_cov, self.estimate_hyper, self.jacobian,
                        value_and_jacobian)
        # Shape check with a plain call first (clear error before any autograd); the supplied path's own value
        val0 = prob.value_and_jacobian(init)[0] if prob.jacobian_used == "supplied" else prob.value(init.clone())
        if tuple(val0.shape) != (m,):
            raise ValueError(f"f returned shape {tuple(val0.shape)}, expected (m,) = ({m},) like y")
        if not isinstance(progress_label, str):
            raise TypeError(f"progress_label must be a str, got {type(progress_label).__name__}")
        return self._finish(self._run(prob, init, val0, progress_label))

    def _options(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "max_iter", "tol", "patience", "estimate_hyper", "max_step_retries", "progress", "raise_on_failure",
                "jacobian",
            )
        }

    # ------------------------------------------------------------------ #
    def _finish(self, result: LaplaceResult) -> LaplaceResult:
        if result.status != "converged":
            if self.raise_on_failure:
                raise LaplaceConvergenceError(result.message, result)
            warnings.warn(f"VariationalLaplace: {result.message}", RuntimeWarning, stacklevel=3)
        return result

    def _failed_at_start(self, prob: _Problem, init, message: str) -> LaplaceResult:
        k = prob.prec.k
        nan = math.nan
        return LaplaceResult(
            mean=init,
            cov=prob.prior_cov.clone(),
            hyper_mean=prob.hyper_mean.clone(),
            hyper_cov=prob.hyper_cov.clone() if prob.estimate_hyper else torch.zeros(k, k, dtype=_DTYPE),
            free_energy=nan,
            accuracy=nan,
            complexity=nan,
            n_iter=0,
            status="failed",
            message=message,
            trace=[],
            trace_free_energy=torch.zeros(0, dtype=_DTYPE),
        )

    def _run(self, prob: _Problem, mu: torch.Tensor, val: torch.Tensor, label: str) -> LaplaceResult:
        if not bool(torch.isfinite(val).all()):
            return self._failed_at_start(
                prob, mu, "f returned non-finite values (NaN or inf) at the initial parameters"
            )
        val, J = prob.value_and_jacobian(mu.clone())
        if not bool(torch.isfinite(J).all()):
            return self._failed_at_start(
                prob, mu, "the Jacobian of f is non-finite (NaN or inf) at the initial parameters"
            )
        st = prob.state(mu, val, J)
        lam = prob.hyper_mean.clone()
        F = prob.free_energy(st, lam)[0]
        if not math.isfinite(F):
            return self._failed_at_start(prob, mu, "the free energy is not finite at the initial parameters")

        nu = 0.0
        trace = [
            {"iteration": 0, "F": F, "predicted_increase": math.nan, "nu": nu, "accepted": True, "retries": 0,
             "hyper_mean": lam.tolist()}
        ]
        below = stalls = 0
        status, message = "max_iter", ""
        bar = _Progress(self.progress, self.max_iter, label, F)
        it = 0
        try:
            for it in range(1, self.max_iter + 1):
                gain = 0.0
                if prob.estimate_hyper:
                    lam, F, gain = prob.update_hyper(st, lam, F)

                # Regularised Gauss-Newton step on the parameters.
                w = torch.exp(lam)
                H = None
                g = torch.einsum("k,ki->i", w, st["c"]) - st["ipC_r"]
                accepted = stalled = False
                all_nonfinite = True
                retries = 0
                predicted = math.nan
                while True:
                    if nu == 0.0:
                        fac = prob.hessian_factor(st, lam)
                    else:
                        H = prob.hessian(st, w) if H is None else H
                        fac = _SPD(H, nu)
                    delta = fac.solve(g)
                    predicted = 0.5 * float(g @ delta)
                    trial = st["mu"] + delta
                    val_t, J_t = prob.value_and_jacobian(trial)
                    if bool(torch.isfinite(val_t).all()):
                        if bool(torch.isfinite(J_t).all()):
                            all_nonfinite = False
                            st_t = prob.state(trial, val_t, J_t)
                            F_t = prob.free_energy(st_t, lam)[0]
                            if F_t >= F:
                                accepted = True
                                break
                    nu_used = nu
                    nu = max(nu * _NU_GROW, _NU_FIRST_REJECT)
                    if not all_nonfinite and predicted < self.tol:
                        # No measurable ascent left along the Gauss-Newton direction.
                        stalled = True
                        break
                    retries += 1
                    if retries > self.max_step_retries:
                        break
                stalls += stalled
                if accepted:
                    st, F = st_t, F_t
                    nu_used = nu
                    nu = nu / _NU_SHRINK
                    if nu < _NU_ZERO_BELOW:
                        nu = 0.0
                total = (predicted if (accepted or stalled) else math.inf) + gain
                below = below + 1 if total < self.tol else 0
                trace.append(
                    {"iteration": it, "F": F, "predicted_increase": total, "nu": nu_used, "accepted": accepted,
                     "retries": retries, "hyper_mean": lam.tolist()}
                )
                bar.update(it, F, total, nu_used)
                if not (accepted or stalled):
                    status = "failed"
                    if all_nonfinite:
                        message = (
                            f"f (or its Jacobian) returned non-finite values at every one of the {retries} "
                            f"trial steps of iteration {it}"
                        )
                    else:
                        message = (
                            f"could not increase the free energy after {self.max_step_retries} step reductions "
                            f"at iteration {it} (damping nu = {nu_used:.3g}, predicted increase {predicted:.3g} nats)"
                        )
                    break
                if below >= self.patience:
                    status = "converged"
                    message = (
                        f"converged after {it} iterations: predicted increase of F below tol={self.tol:g} "
                        f"for {self.patience} consecutive iterations"
                    )
                    if stalls:
                        message += (
                            f" ({stalls} iteration(s) could not increase F along the damped Gauss-Newton step, "
                            "whose predicted gain was already below tol)"
                        )
                    break
            else:
                message = (
                    f"did not converge within max_iter={self.max_iter} iterations "
                    f"(last predicted increase of F {trace[-1]['predicted_increase']:.3g} nats, tol={self.tol:g})"
                )
        finally:
            bar.close(status, it, F)

        F, accuracy, hfac, lfac = prob.free_energy(st, lam, hyper_factor=True)
        message += f"; Jacobian by {prob.jacobian_used} mode"
        k = prob.prec.k
        hyper_cov = lfac.inverse() if lfac is not None else torch.zeros(k, k, dtype=_DTYPE)
        result = LaplaceResult(
            mean=st["mu"].clone(),
            cov=hfac.inverse(),
            hyper_mean=lam.clone(),
            hyper_cov=hyper_cov,
            free_energy=F,
            accuracy=accuracy,
            complexity=accuracy - F,
            n_iter=it,
            status=status,
            message=message,
            trace=trace,
            trace_free_energy=torch.tensor([d["F"] for d in trace], dtype=_DTYPE),
        )
        return result


def fit_problem(
    engine: LaplaceEngine, problem, init=None, progress_label: str = "variational Laplace"
) -> tuple[LaplaceResult, torch.Tensor, torch.Tensor]:
    """Fit an :class:`~jrinfer.InverseProblem` through its Gaussian form; the Gaussian in the problem's ``z``.

    Shared by the Laplace backend (its posterior) and the samplers (their
    starting points and mass matrix). ``init``: starting point over the
    Gaussian form's ``names`` (default its prior mean); multi-start fits are
    in :mod:`jrinfer.backends._multistart`. ``progress_label``: the run's
    name in the engine's progress output.

    Returns
    -------
    result : LaplaceResult
    mean, cov : torch.Tensor
        ``(n_params,)`` and ``(n_params, n_params)`` over every free parameter
        of the problem in its unconstrained coordinates (``problem.names``
        order); the noise log precisions get their ``hyper_mean`` and the
        diagonal of ``hyper_cov``.
    """
    form = problem.gaussian_form()
    if not form.estimate_hyper and engine.estimate_hyper:
        engine = type(engine)(**{**engine._options(), "estimate_hyper": False})
    k = form.precision_components.shape[0]
    hyper_cov = form.hyper_cov if form.estimate_hyper else torch.eye(k, dtype=_DTYPE)
    res = engine.fit_function(
        form.f, form.y, form.prior_mean, form.prior_cov, form.hyper_mean, hyper_cov, form.precision_components,
        value_and_jacobian=form.value_and_jacobian, init=init, progress_label=progress_label,
    )
    names = problem.names
    n = len(names)
    mean = torch.zeros(n, dtype=_DTYPE)
    cov = torch.zeros(n, n, dtype=_DTYPE)
    idx = torch.tensor([names.index(name) for name in form.names], dtype=torch.long)
    mean[idx] = res.mean
    cov[idx[:, None], idx[None, :]] = res.cov
    for i, name in enumerate(form.hyper_names):
        if name in names:
            j = names.index(name)
            mean[j] = res.hyper_mean[i]
            cov[j, j] = res.hyper_cov[i, i]
    return res, mean, cov
