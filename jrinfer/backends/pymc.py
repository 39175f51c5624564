"""MCMC backends through PyMC: NUTS and SMC on any :class:`~jrinfer.InverseProblem`.

The problem's log-likelihood is evaluated inside a PyTensor ``Op`` (float64,
no casting) through :meth:`InverseProblem.log_likelihood_and_grad`: the
observation's fused NumPy value + gradient where it offers one (transfer-method
spectra: hand-derived derivatives, checked against autograd), else the torch
model with a vector-Jacobian product from autograd; the prior is mirrored as PyMC distributions on the prior's own
unconstrained coordinates ``z``, so the model's log density is exactly
:meth:`InverseProblem.log_joint_unconstrained` (checked in the tests to 1e-10):

============  =======================================  ===========================
jrinfer prior  PyMC variable ``<name>_z`` (no transform)  natural value (Deterministic ``<name>``)
============  =======================================  ===========================
LogNormal      ``Normal(log median, sd_log)``              ``exp(z)``
Normal         ``Normal(mean, sd)``                         ``z``
Uniform        ``Logistic(0, 1)``                           ``low + (high - low) sigmoid(z)``
LogUniform     ``Logistic(0, 1)``                           ``low (high / low) ** sigmoid(z)``
============  =======================================  ===========================

These are the densities of ``z`` implied by each prior and its transform
(log-normal -> normal in log space; uniform and log-uniform -> standard logistic
in logit space), so no Jacobian term is needed and PyMC samples ``z`` directly; draws
are reported in natural units through ``prior.from_unconstrained``.

``import jrinfer`` does not import PyMC: this submodule imports it lazily
(``pip install 'jrinfer[mcmc]'``).

References
----------
M. D. Hoffman, A. Gelman (2014), "The No-U-Turn Sampler: adaptively setting
path lengths in Hamiltonian Monte Carlo", JMLR 15:1593-1623.
P. Del Moral, A. Doucet, A. Jasra (2006), "Sequential Monte Carlo samplers",
JRSS B 68:411-436; J. Ching, Y.-C. Chen (2007), "Transitional Markov chain Monte
Carlo method", J. Eng. Mech. 133:816-832 (the tempering scheme of
``pymc.sample_smc``).
A. Vehtari, A. Gelman, D. Simpson, B. Carpenter, P.-C. Bürkner (2021),
"Rank-normalization, folding, and localization: an improved R-hat", Bayesian
Analysis 16:667-718 (the R-hat and ESS thresholds).
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import numpy as np
import torch

from jrinfer import _checks
from jrinfer._optional import optional_import
from jrinfer.backends._vl_engine import duration as _duration

__all__ = ["NUTS", "SMC", "problem_to_pymc", "loglike_op", "RHAT_MAX", "ESS_MIN_PER_CHAIN"]

#: R-hat above which a fit warns (Vehtari et al. 2021).
RHAT_MAX = 1.01
#: Bulk and tail ESS per chain below which a fit warns (100 per chain: 400 for 4 chains).
ESS_MIN_PER_CHAIN = 100


def _pymc():
    return optional_import("pymc", purpose="the NUTS and SMC backends")


@lru_cache(maxsize=None)
def _op_classes():
    """Define the Op classes on first use (PyTensor is imported only here)."""
    optional_import("pymc", purpose="the NUTS and SMC backends")
    import pytensor.tensor as pt
    from pytensor.graph.basic import Apply
    from pytensor.graph.op import Op

    class TorchLogLike(Op):
        """``log p(y | theta(z))`` of an InverseProblem as a PyTensor Op.

        Input ``z``: float64 vector ``(n_params,)`` in the prior's
        unconstrained coordinates. Outputs: the log-likelihood (float64
        scalar) and, with ``with_grad=True``, its gradient ``(n_params,)``.
        Any failed or invalid evaluation (an exception, NaN, ``-inf``, a
        non-finite gradient) gives ``-inf`` and a zero gradient, never NaN;
        failures are counted in ``n_failed`` with the first message in
        ``first_error``.
        """

        __props__ = ("problem_id", "with_grad")

        def __init__(self, problem, with_grad: bool = True):
            self.problem = problem
            self.problem_id = id(problem)
            self.with_grad = bool(with_grad)
            self.fused = problem.has_fast_path
            self.n_calls = 0
            self.n_failed = 0
            self.first_error = None

        def make_node(self, z):
            z = pt.as_tensor_variable(z)
            if z.type.dtype != "float64" or z.type.ndim != 1:
                raise TypeError(
                    f"z must be a float64 vector (n_params,) = ({self.problem.n_params},); got dtype {z.type.dtype}, "
                    f"ndim {z.type.ndim} (no silent casting: cast it explicitly)"
                )
            outputs = [pt.dscalar()]
            if self.with_grad:
                outputs.append(pt.dvector())
            return Apply(self, [z], outputs)

        def evaluate(self, z: np.ndarray) -> tuple[float, np.ndarray | None]:
            """Log-likelihood (and gradient) at one ``z`` ``(n_params,)``; ``(-inf, zeros)`` where invalid."""
            self.n_calls += 1
            problem = self.problem
            if z.shape != (problem.n_params,):
                raise ValueError(f"z must have shape ({problem.n_params},), got {z.shape}")
            zt = torch.from_numpy(np.array(z, dtype=np.float64, copy=True))
            value, grad = -math.inf, np.zeros(problem.n_params)
            try:
                if self.with_grad or self.fused:
                    # the observation's fused value + gradient where it has one, else autograd
                    ll, g = problem.log_likelihood_and_grad(zt)
                    v, g = float(ll), g.numpy()
                    if math.isfinite(v) and np.isfinite(g).all():
                        value, grad = v, g
                else:
                    with torch.no_grad():
                        v = float(problem.log_likelihood(problem.prior.from_unconstrained(zt)))
                    if math.isfinite(v):
                        value = v
            except Exception as err:  # a failed evaluation is -inf, never a crash mid-chain
                if self.first_error is None:
                    self.first_error = f"{type(err).__name__}: {err}"
                value = -math.inf
            if value == -math.inf:
                self.n_failed += 1
            return value, (grad if self.with_grad else None)

        def perform(self, node, inputs, output_storage):
            value, grad = self.evaluate(inputs[0])
            output_storage[0][0] = np.asarray(value, dtype=np.float64)
            if self.with_grad:
                output_storage[1][0] = np.asarray(grad, dtype=np.float64)

        def grad(self, inputs, output_grads):
            if not self.with_grad:
                raise NotImplementedError("this log-likelihood Op was built without gradient (with_grad=False)")
            # the same Op on the same input: PyTensor merges both into one evaluation
            _, g = self(inputs[0])
            return [output_grads[0] * g]

        def infer_shape(self, fgraph, node, input_shapes):
            return [()] + ([input_shapes[0]] if self.with_grad else [])

    class _TupleOp(Op):
        """An Op whose ``evaluate(x)`` returns every output at once (float64), cached by the subclass."""

        def perform(self, node, inputs, output_storage):
            for k, value in enumerate(self.evaluate(inputs[0])):
                output_storage[k][0] = np.asarray(value, dtype=np.float64)

    class IntervalOp(_TupleOp):
        """``(Z_L(z), Z_H(z))``: the bounded parameter's valid interval in its prior's unconstrained coordinate.

        Input ``z`` ``(n_params,)`` (the bounded parameter's own entry is
        ignored); outputs ``Z_L``, ``Z_H`` (float64 scalars; ``Z_L = Z_H``
        where no value is valid) and their gradients ``(n_params,)`` each
        (see :func:`_interval_unconstrained`).
        """

        __props__ = ("boundary_id",)

        def __init__(self, boundary):
            self.boundary = boundary
            self.boundary_id = id(boundary)
            self.n_calls = 0
            self.n_empty = 0
            self.seconds = 0.0
            self.first_error = None

        def make_node(self, z):
            z = pt.as_tensor_variable(z)
            return Apply(self, [z], [pt.dscalar(), pt.dscalar(), pt.dvector(), pt.dvector()])

        def evaluate(self, z: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
            t0 = time.perf_counter()
            self.n_calls += 1
            try:
                out = _interval_unconstrained(self.boundary, np.asarray(z, dtype=np.float64))
            except Exception as err:  # a failed search: treated as no valid value here (density -inf), counted
                if self.first_error is None:
                    self.first_error = f"{type(err).__name__}: {err}"
                zero = np.zeros(np.shape(z)[0])
                out = (0.0, 0.0, zero, zero)
            if not out[0] < out[1]:
                self.n_empty += 1
            self.seconds += time.perf_counter() - t0
            return out

        def grad(self, inputs, output_grads):
            from pytensor.gradient import DisconnectedType

            outs = self(inputs[0])
            total = pt.zeros_like(inputs[0])
            for k in (0, 1):
                if not isinstance(output_grads[k].type, DisconnectedType):
                    total = total + output_grads[k] * outs[k + 2]
            return [total]

        def connection_pattern(self, node):
            return [[True, True, False, False]]

        def infer_shape(self, fgraph, node, input_shapes):
            return [(), (), input_shapes[0], input_shapes[0]]

    class PoleOp(_TupleOp):
        """The log density in pole coordinates ``u`` (see :class:`jrinfer._polemap.PoleMap`) as a PyTensor Op.

        Input ``u`` ``(n_params,)``: ``problem.names`` order, the two replaced
        entries holding ``(log sigma, omega)``. Outputs: ``log p(u)`` (the log
        joint at ``z(u)`` plus ``log |det dz_r/du_r|``), its gradient
        ``(n_params,)`` and ``z(u)`` ``(n_params,)`` (NaN where the solve failed).
        ``-inf`` with a zero gradient where the solve fails or the log joint is
        not finite, never NaN. A one-point cache answers the repeated ``u``.
        """

        __props__ = ("map_id",)

        def __init__(self, pole_map):
            self.pole_map = pole_map
            self.map_id = id(pole_map)
            self.fused = pole_map.problem.has_fast_path
            self.n_calls = 0
            self.n_inf = 0
            self.seconds = 0.0
            self.first_error = None
            self._last = None

        @property
        def n_failed(self):  # as TorchLogLike's: evaluations that gave -inf
            return self.n_inf

        def make_node(self, u):
            u = pt.as_tensor_variable(u)
            return Apply(self, [u], [pt.dscalar(), pt.dvector(), pt.dvector()])

        def evaluate(self, u: np.ndarray):
            u = np.array(u, dtype=np.float64)
            key = u.tobytes()
            if self._last is not None and self._last[0] == key:
                return self._last[1]
            t0 = time.perf_counter()
            self.n_calls += 1
            n = u.shape[0]
            try:
                value, grad, z = self.pole_map.log_density_and_grad(u)
            except Exception as err:  # a failed evaluation is -inf, never a crash mid-chain
                if self.first_error is None:
                    self.first_error = f"{type(err).__name__}: {err}"
                value, grad, z = -math.inf, np.zeros(n), None
            if value == -math.inf:
                self.n_inf += 1
            out = (value, grad, np.full(n, np.nan) if z is None else z)
            self._last = (key, out)
            self.seconds += time.perf_counter() - t0
            return out

        def grad(self, inputs, output_grads):
            from pytensor.gradient import DisconnectedType

            if not isinstance(output_grads[2].type, DisconnectedType):
                raise NotImplementedError("z(u) is reported, not differentiated (only log p(u) has a gradient)")
            return [output_grads[0] * self(inputs[0])[1]]

        def connection_pattern(self, node):
            return [[True, False, False]]

        def infer_shape(self, fgraph, node, input_shapes):
            return [(), input_shapes[0], input_shapes[0]]

    return TorchLogLike, IntervalOp, PoleOp


def _interval_unconstrained(boundary, z: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The valid interval of ``boundary.name`` in its prior's unconstrained coordinate.

    ``(Z_L, Z_H, dZ_L/dz, dZ_H/dz)`` with ``Z = to_unconstrained(end)`` of
    the ends from :class:`~jrinfer.problem.StabilityBoundary` (clipped to its
    search range, the prior's central ``1 - 2e-10``); ``Z_L = Z_H`` (the
    range's lower end, zero gradients) where no value is valid.
    """
    lo, hi, dlo, dhi = boundary(z)
    d = boundary.distribution
    if not lo < hi:
        zl = float(d.to_unconstrained(torch.tensor(boundary.search_range[0], dtype=torch.float64)))
        return zl, zl, np.zeros_like(dlo), np.zeros_like(dhi)
    out = []
    for b, db in ((lo, dlo), (hi, dhi)):
        bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            zb = d.to_unconstrained(bt)
            (dzb,) = torch.autograd.grad(zb, bt)
        out += [float(zb.detach()), float(dzb) * db]
    return out[0], out[2], out[1], out[3]


def _interval_map(w, zl, zh):
    """``z = Z_L + (Z_H - Z_L) sigmoid(w)`` and ``log dz/dw`` (PyTensor); ``log dz/dw = -inf`` where ``Z_H <= Z_L``."""
    import pytensor.tensor as pt

    width = zh - zl
    ok = width > 0
    safe = pt.switch(ok, width, 1.0)  # keeps the gradient finite where the interval is empty
    z = zl + width * pt.sigmoid(w)
    log_jac = pt.switch(ok, pt.log(safe) - pt.softplus(w) - pt.softplus(-w), -np.inf)
    return z, log_jac


def _interval_inverse(z: float, zl: float, zh: float) -> float:
    """``w`` with ``_interval_map(w, zl, zh)[0] = z`` (``zl < z < zh``)."""
    u = (z - zl) / (zh - zl)
    return math.log(u) - math.log1p(-u)


def loglike_op(problem, *, with_grad: bool = True):
    """The problem's log-likelihood as a PyTensor ``Op`` on unconstrained ``z``.

    Parameters
    ----------
    problem : InverseProblem
    with_grad : bool
        Also output the gradient (vector-Jacobian product through torch
        autograd), which makes the Op differentiable in PyTensor. ``False``
        evaluates the value only (half the cost; for gradient-free samplers).

    Returns
    -------
    Op
        Called on a float64 vector ``z`` (``(n_params,)``, ``problem.names``
        order) it returns ``[loglike]`` or ``[loglike, grad]``; ``-inf`` (and
        a zero gradient) where the model is invalid or the evaluation fails.
        ``op.evaluate(z)`` runs it outside a graph.

    Raises
    ------
    ValueError
        ``problem`` is not an InverseProblem.
    """
    _check_problem(problem)
    return _op_classes()[0](problem, with_grad=_checks.check_bool("with_grad", with_grad))


def _check_problem(problem):
    from jrinfer.problem import InverseProblem

    if not isinstance(problem, InverseProblem):
        raise ValueError(f"problem must be an InverseProblem, got {type(problem).__name__}")
    return problem


def problem_to_pymc(problem, *, with_grad: bool = True, boundary: str | None = None, reference=None):
    """A PyMC model of ``problem``: mirrored priors on ``z`` plus the torch log-likelihood.

    Parameters
    ----------
    problem : InverseProblem
    with_grad : bool
        Build the gradient into the likelihood Op (needed by NUTS; SMC
        builds without it).
    boundary : {None, "hopf", "pole"}
        ``"pole"``: sample the dominant pole of the linearised model, ``(log
        sigma, omega)`` (free variables ``pole_log_sigma`` and ``pole_omega``,
        flat), in place of ``C`` and ``b`` (:class:`jrinfer._polemap.PoleMap`);
        every other variable is ``<name>_z`` (flat) and the whole log density
        is one Op: the log joint at ``z(u)`` plus ``log |det dz_r/du_r|``
        (Potential ``pole_logp``), ``-inf`` where ``u`` has no preimage.
        ``<name>_z`` of ``C`` and ``b`` and every ``<name>`` (natural units)
        are Deterministics. ``reference`` (``z``, ``(n_params,)``) centres the
        solve's cold-start grid (default: the prior median). See :class:`NUTS`.
        ``"hopf"``: sample the parameter bounded by the problem's stability
        boundary (:meth:`InverseProblem.stability_boundary`; ``p_mean`` under
        the transfer method, valid on the stable interval ``(p_L(theta),
        p_H(theta))`` of the upper branch, functions of the other parameters)
        in a coordinate in which both ends sit at infinity. With ``z`` the
        prior's unconstrained coordinate of ``p_mean`` and ``Z_L``, ``Z_H`` the
        interval's ends in it, the free variable is ``w`` (``p_mean_w``, flat)
        with ``z = Z_L + (Z_H - Z_L) sigmoid(w)``; the density of ``w`` is the
        prior's density of ``z`` times ``dz/dw = (Z_H - Z_L) sigmoid(w)
        sigmoid(-w)``, so the prior in natural units is unchanged on the
        stable interval, and prior mass outside it (where the likelihood is
        ``-inf``) is dropped. The ends come from a deterministic search in the
        prior's central ``1 - 2e-10`` range (an end outside it is the range's
        end; :class:`~jrinfer.problem.StabilityBoundary`) with
        implicit-function gradients. Where no ``p_mean`` in that range is
        stable (``Z_H <= Z_L``) the density is ``-inf`` for every ``w`` (with
        a finite gradient, never NaN): those walls lie in the other
        parameters and this map does not remove them (see :class:`NUTS`).
        ``ValueError`` if the problem offers no boundary.

    Returns
    -------
    pymc.Model
        Free variables ``<name>_z`` (unconstrained, the prior's own transform;
        see the module docstring), Deterministics ``<name>`` in natural units,
        and a Potential ``loglike`` (the problem's log-likelihood). Its log
        density equals ``problem.log_joint_unconstrained(z)``. The model can
        be extended (``with model: ...``) like any PyMC model; the Op is
        ``model.jrinfer_op``.

    Raises
    ------
    ValueError
        ``problem`` is not an InverseProblem; a prior distribution has no
        PyMC mirror.
    """
    from jrinfer.prior import LogNormal, LogUniform, Normal, Uniform

    pm = _pymc()
    import pytensor.tensor as pt

    _check_problem(problem)
    if boundary not in (None, "hopf", "pole"):
        raise ValueError(f"boundary must be None, 'hopf' or 'pole', got {boundary!r}")
    if boundary == "pole":
        return _pole_model(problem, reference=reference)
    sb = None
    if boundary == "hopf":
        sb = problem.stability_boundary()
        if sb is None:
            raise ValueError(
                "boundary='hopf' needs a problem whose observation has a stability boundary on a free parameter "
                "(a transfer-method spectrum with p_mean free); this one has none: use boundary=None"
            )
    op = loglike_op(problem, with_grad=with_grad)
    bop = _op_classes()[1](sb) if sb is not None else None
    with pm.Model() as model:
        zs = []

        def f64(x):  # PyTensor would make exactly representable Python floats float32 constants
            return pt.constant(np.float64(x), dtype="float64")

        def mirror(name, d, rv_name):
            if isinstance(d, LogNormal):
                return pm.Normal, {"mu": f64(math.log(d.median)), "sigma": f64(d.sd_log)}
            if isinstance(d, Normal):
                return pm.Normal, {"mu": f64(d.mean), "sigma": f64(d.sd)}
            if isinstance(d, (Uniform, LogUniform)):
                return pm.Logistic, {"mu": f64(0.0), "s": f64(1.0)}
            raise ValueError(f"problem.prior's {name!r} has a distribution with no PyMC mirror: {d!r}")

        bounded = {}
        for name, d in problem.prior.distributions.items():
            cls, kw = mirror(name, d, f"{name}_z")
            if sb is not None and name == sb.name:
                w = pm.Flat(f"{name}_w")
                z = None  # filled in once the others exist (the boundary depends on them)
                bounded = {"name": name, "w": w, "cls": cls, "kw": kw, "d": d}
            else:
                z = cls(f"{name}_z", **kw)
            zs.append(z)
        if sb is not None:
            i = sb.index
            others = pt.stack([f64(0.0) if k == i else zk for k, zk in enumerate(zs)]).astype("float64")
            zl, zh = bop(others)[:2]
            w = bounded["w"]
            z, log_jac = _interval_map(w, zl, zh)
            z = pm.Deterministic(f"{bounded['name']}_z", z)
            # prior density of z at Z_L + (Z_H - Z_L) sigmoid(w) times dz/dw
            pm.Potential(f"{bounded['name']}_prior", pm.logp(bounded["cls"].dist(**bounded["kw"]), z) + log_jac)
            zs[i] = z
        for (name, d), z in zip(problem.prior.distributions.items(), zs):
            if isinstance(d, LogNormal):
                pm.Deterministic(name, pt.exp(z))
            elif isinstance(d, Normal):
                pm.Deterministic(name, z)
            elif isinstance(d, LogUniform):
                pm.Deterministic(name, pt.exp(f64(math.log(d.low)) + f64(math.log(d.high / d.low)) * pt.sigmoid(z)))
            else:
                pm.Deterministic(name, f64(d.low) + f64(d.high - d.low) * pt.sigmoid(z))
        out = op(pt.stack(zs).astype("float64"))
        pm.Potential("loglike", out[0] if isinstance(out, (list, tuple)) else out)
    model.jrinfer_op = op
    model.jrinfer_boundary = bop
    model.jrinfer_pole = None
    return model


def _pole_model(problem, reference=None):
    """``problem_to_pymc(problem, boundary="pole")``: every free variable flat, the whole density in one Op."""
    from jrinfer._polemap import PoleMap

    pm = _pymc()
    import pytensor.tensor as pt

    pole_map = PoleMap(problem, reference=reference)
    op = _op_classes()[2](pole_map)
    i, j = pole_map.index
    with pm.Model() as model:
        us = []
        for k, name in enumerate(problem.names):
            us.append(pm.Flat("pole_log_sigma" if k == i else "pole_omega" if k == j else f"{name}_z"))
        logp, _, z = op(pt.stack(us).astype("float64"))
        pm.Potential("pole_logp", logp)
        for k in (i, j):
            pm.Deterministic(f"{problem.names[k]}_z", z[k])
        theta = _natural_from_z(problem, z)
        for k, name in enumerate(problem.names):
            pm.Deterministic(name, theta[k])
    model.jrinfer_op = op
    model.jrinfer_boundary = None
    model.jrinfer_pole = op
    return model


def _natural_from_z(problem, z):
    """Natural values (PyTensor) of unconstrained ``z`` (the inverse of each prior's transform)."""
    import pytensor.tensor as pt

    from jrinfer.prior import LogNormal, LogUniform, Normal

    out = []
    for k, d in enumerate(problem.prior.distributions.values()):
        zk = z[k]
        if isinstance(d, LogNormal):
            out.append(pt.exp(zk))
        elif isinstance(d, Normal):
            out.append(zk)
        elif isinstance(d, LogUniform):
            out.append(pt.exp(math.log(d.low) + math.log(d.high / d.low) * pt.sigmoid(zk)))
        else:
            out.append(d.low + (d.high - d.low) * pt.sigmoid(zk))
    return out


class _Interruptible:
    """Ctrl-C during sampling keeps what was sampled.

    PyMC stops a chain on ``KeyboardInterrupt`` and keeps its draws, but in
    sequential sampling it then starts the next chain; here the first
    interruption also stops every later chain (through PyMC's ``callback``)
    and is recorded in ``interrupted`` so that the fit reports it.
    """

    def __init__(self, stop_after: int | None = None):
        self.interrupted = False
        self.stop_after = stop_after
        self._previous = None

    def callback(self, trace=None, draw=None):
        if self.stop_after is not None and len(trace) >= self.stop_after:
            self.interrupted = True
        if self.interrupted:
            raise KeyboardInterrupt

    def _handler(self, signum, frame):
        self.interrupted = True
        raise KeyboardInterrupt

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _laplace_start(problem, chains: int, seed: int, require_valid_mean: bool = True, progress=False):
    """Starting points and an initial dense mass matrix from the variational Laplace Gaussian.

    The JR posteriors are strongly correlated (gains and time constants trade
    off), so NUTS with PyMC's default diagonal adaptation from jittered prior
    points takes tiny steps at the maximum tree depth. Starting from the
    Laplace mean with its covariance as the (still adapted) mass matrix puts
    the sampler in the typical set with a well-scaled metric. Returns
    ``(mean, cov, inits)`` (NumPy; one start per chain drawn from the
    Gaussian, shrunk by half, where the log joint is finite) or None when the
    Laplace fit gives no usable Gaussian (the caller then falls back to
    PyMC's jitter+adapt_diag).
    """
    import warnings as _w

    from jrinfer.backends._multistart import DEFAULT_N_STARTS, fit_problem_multistart
    from jrinfer.backends._vl_engine import LaplaceEngine

    try:
        with _w.catch_warnings():
            _w.simplefilter("ignore")
            # the best of several Gauss-Newton optima (a start in a worse local optimum costs the chains' warm-up)
            _, mean, cov, _ = fit_problem_multistart(LaplaceEngine(progress=progress), problem,
                                                     n_starts=DEFAULT_N_STARTS, seed=seed)
    except Exception:  # a failed Laplace fit only costs the better start
        return None
    cov = 0.5 * (cov + cov.T)
    if not (torch.isfinite(mean).all() and torch.isfinite(cov).all()):
        return None
    evals, evecs = torch.linalg.eigh(cov)
    if not float(evals.max()) > 0:
        return None
    evals = evals.clamp_min(1e-10 * float(evals.max()))
    cov = (evecs * evals) @ evecs.T
    root = evecs * evals.sqrt()
    if require_valid_mean and not math.isfinite(float(problem.log_joint_unconstrained(mean))):
        return None  # (with a boundary reparametrisation the mean may lie past it: _to_w maps valid draws)
    gen = torch.Generator().manual_seed(seed)
    inits = []
    for _ in range(chains):
        z = mean
        for _ in range(20):
            cand = mean + 0.5 * root @ torch.randn(mean.numel(), generator=gen, dtype=torch.float64)
            if math.isfinite(float(problem.log_joint_unconstrained(cand))):
                z = cand
                break
        inits.append(z.numpy().copy())
    return mean.numpy().copy(), cov.numpy().copy(), inits


def _to_w(bop, start, seed: int, n_draws: int = 200):
    """The Laplace start in the boundary coordinate ``w`` (see :func:`problem_to_pymc`), or None.

    Each start ``z`` keeps its other coordinates; the bounded one becomes
    ``w = logit((z - Z_L) / (Z_H - Z_L))``. The initial mass matrix is the covariance of
    ``n_draws`` Laplace draws mapped to ``w`` (those on the stable side, where
    the map is defined): the Gaussian truncated at the boundary, seen in the
    sampler's coordinates. None when fewer than ``4 n`` draws are stable
    (PyMC's jitter start is used then).
    """
    mean, cov, inits = start
    i = bop.boundary.index
    n = mean.shape[0]

    def convert(z):
        zl, zh, _, _ = bop.evaluate(z)
        if not zl < z[i] < zh:
            return None
        out = z.copy()
        out[i] = _interval_inverse(float(z[i]), zl, zh)
        return out

    rng = np.random.default_rng(seed)
    evals, evecs = np.linalg.eigh(cov)
    draws = mean + (rng.standard_normal((n_draws, n)) * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T
    mapped = [w for w in (convert(z) for z in draws) if w is not None and np.isfinite(w).all()]
    if len(mapped) < 4 * n:
        return None
    mapped = np.array(mapped)
    mean_w = mapped.mean(0)
    cov_w = np.cov(mapped.T) + 1e-10 * np.eye(n) * np.trace(cov) / n
    inits_w = []
    for k, z in enumerate(inits):
        zw = convert(z)
        inits_w.append(zw if zw is not None else mapped[k % len(mapped)])
    return mean_w, cov_w, inits_w


def _to_pole(pole_map, start, seed: int, n_draws: int = 200):
    """The Laplace start in pole coordinates ``u`` (see :func:`problem_to_pymc`), or None.

    Laplace draws with a stable upper equilibrium are mapped to ``u`` (their
    mean and covariance: the initial metric); each chain's start likewise (a
    mapped draw where the start itself is past the boundary). None when
    fewer than ``4 n`` draws are stable.
    """
    mean, cov, inits = start
    n = mean.shape[0]
    rng = np.random.default_rng(seed)
    evals, evecs = np.linalg.eigh(cov)
    draws = mean + (rng.standard_normal((n_draws, n)) * np.sqrt(np.clip(evals, 0.0, None))) @ evecs.T
    mapped = pole_map.to_u(draws)
    mapped = mapped[np.isfinite(mapped).all(1)]
    if len(mapped) < 4 * n:
        return None
    mean_u = mapped.mean(0)
    cov_u = np.cov(mapped.T) + 1e-10 * np.eye(n) * np.trace(np.cov(mapped.T)) / n
    inits_u = []
    for k, u in enumerate(pole_map.to_u(np.array(inits))):
        inits_u.append(u if np.isfinite(u).all() else mapped[k % len(mapped)])
    return mean_u, cov_u, inits_u


def _laplace_in_w(model, start, chains: int, seed: int):
    """Refine a start in the boundary coordinates: the mode of the model's density in ``w`` and its Laplace covariance.

    The variational Laplace Gaussian is fitted in the prior's coordinates,
    where the posterior is cut by the boundary; mapped to ``w`` it is a
    poor metric (the mode and curvature differ). Here the model's own log
    density (compiled ``logp_dlogp``, boundary map included) is maximised
    from the mapped mean (L-BFGS), and the Hessian at the mode (central
    differences of the gradient) gives the mass matrix. Returns the refined
    ``(mean, cov, inits)``, or ``start`` unchanged when the optimisation
    fails or the Hessian is not negative definite.
    """
    from scipy.optimize import minimize

    mean, cov, inits = start
    n = mean.shape[0]
    f = model.logp_dlogp_function(ravel_inputs=True)
    f.set_extra_values({})

    def neg(x):
        v, g = f(x)
        v = float(v)
        if not math.isfinite(v) or not np.isfinite(g).all():
            return 1e300, np.zeros(n)
        return -v, -np.asarray(g, dtype=np.float64)

    root = np.linalg.cholesky(cov + 1e-12 * np.trace(cov) / n * np.eye(n))

    def neg_white(u):  # whitened by the mapped Laplace covariance: a well-scaled problem for L-BFGS
        v, g = neg(mean + root @ u)
        return v, root.T @ g

    try:
        res = minimize(neg_white, np.zeros(n), jac=True, method="L-BFGS-B",
                       options={"maxiter": 1000, "ftol": 1e-14, "gtol": 1e-8})
    except Exception:
        return start
    mode = mean + root @ res.x
    if not res.fun < neg(mean)[0] + 1e-9:
        mode = mean
    scale = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
    hess = np.zeros((n, n))
    for k in range(n):
        e = np.zeros(n)
        e[k] = 1e-4 * scale[k]
        hess[:, k] = (neg(mode + e)[1] - neg(mode - e)[1]) / (2 * e[k])
    hess = 0.5 * (hess + hess.T)
    if not np.isfinite(hess).all():
        return start
    evals, evecs = np.linalg.eigh(hess)
    if not evals.max() > 0:
        return start
    # a saddle or flat direction at the found point: |curvature| (floored) still gives a usable metric
    evals = np.maximum(np.abs(evals), 1e-8 * evals.max())
    cov_w = (evecs / evals) @ evecs.T
    rng = np.random.default_rng(seed)
    new_inits = []
    for _ in range(chains):
        z = mode
        for _ in range(20):
            cand = mode + 0.5 * (evecs / np.sqrt(evals)) @ rng.standard_normal(n)
            if neg(cand)[0] < 1e299:
                z = cand
                break
        new_inits.append(z.copy())
    return mode.copy(), cov_w, new_inits


def _z_draws(problem, idata) -> np.ndarray:
    """Unconstrained draws ``(chains, draws, n_params)`` from an InferenceData posterior."""
    post = idata.posterior
    return np.stack([post[f"{n}_z"].values for n in problem.names], axis=-1).astype(np.float64)


def _convergence(problem, z: np.ndarray, seconds: float, sampler: str = "nuts") -> tuple[dict, list[str]]:
    """R-hat, bulk and tail ESS on the unconstrained draws, with warnings naming what to do (for ``sampler``)."""
    az = optional_import("arviz", purpose="MCMC diagnostics (R-hat, ESS)")
    import xarray as xr

    n_chains = z.shape[0]
    ds = xr.Dataset({n: (("chain", "draw"), z[..., i]) for i, n in enumerate(problem.names)})
    diag: dict = {"sampling_time_s": seconds, "n_chains": int(n_chains), "n_draws": int(z.shape[1])}
    warns: list[str] = []
    if n_chains >= 2 and z.shape[1] >= 4:
        rhat = az.rhat(ds)
        diag["rhat"] = {n: float(rhat[n]) for n in problem.names}
        diag["rhat_max"] = max(diag["rhat"].values())
    ess_b, ess_t = az.ess(ds, method="bulk"), az.ess(ds, method="tail")
    diag["ess_bulk"] = {n: float(ess_b[n]) for n in problem.names}
    diag["ess_tail"] = {n: float(ess_t[n]) for n in problem.names}
    diag["ess_bulk_min"] = min(diag["ess_bulk"].values())
    diag["ess_tail_min"] = min(diag["ess_tail"].values())
    diag["ess_per_second"] = diag["ess_bulk_min"] / seconds if seconds > 0 else None
    rmax = diag.get("rhat_max")
    if rmax is not None and not rmax <= RHAT_MAX:
        worst = [n for n, r in diag["rhat"].items() if not r <= RHAT_MAX]
        advice = (
            "run more particles per chain (draws); on a narrow, unimodal posterior the tempered chains may not "
            "equilibrate: use backend nuts there" if sampler == "smc" else
            "run longer (more tune and draws), or look for multimodality (use backend smc)"
        )
        warns.append(f"chains have not mixed: R-hat max = {rmax:.3f} (> {RHAT_MAX}) for {', '.join(worst)}; {advice}")
    ess_min = ESS_MIN_PER_CHAIN * n_chains
    low = min(diag["ess_bulk_min"], diag["ess_tail_min"])
    if not low >= ess_min:
        below = [f"{kind} ESS min {diag[f'ess_{kind}_min']:.0f}" for kind in ("bulk", "tail")
                 if not diag[f"ess_{kind}_min"] >= ess_min]
        warns.append(
            f"too few effective draws: {' and '.join(below)} < {ess_min} ({ESS_MIN_PER_CHAIN} per chain); "
            + ("run more particles per chain (draws)" if sampler == "smc" else "draw more or increase tune")
        )
    return diag, warns


#: Largest spread (max - min, nats) of the SMC chains' log marginal likelihoods for the log evidence to be
#: used: 2 nats is a Bayes factor of about 7, "positive" evidence on Kass & Raftery's (1995) scale, so
#: chains further apart than that cannot rank models that differ by it.
EVIDENCE_SPREAD_MAX = 2.0


def _evidence_agreement(lml: np.ndarray) -> tuple[dict, list[str]]:
    """Whether independent SMC chains agree on ``log p(y)``: diagnostics and a warning when they do not.

    Each chain is an independent run of the sampler, so the chains' log
    marginal likelihoods ``lml`` (one per chain, nats) are independent
    estimates of one number; their spread is the only measure of the
    estimate's error a single fit has (Del Moral et al. 2006). Returns
    ``({"log_evidence_spread": ..., "log_evidence_reliable": ...}, warnings)``;
    with one chain the spread is unknown (``None``) and so is the reliability.
    """
    lml = np.asarray(lml, dtype=float).reshape(-1)
    finite = np.isfinite(lml)
    if lml.size < 2 or not finite.any():
        return {"log_evidence_spread": None, "log_evidence_reliable": None}, []
    if not finite.all():
        return ({"log_evidence_spread": None, "log_evidence_reliable": False},
                [f"{int((~finite).sum())} of {lml.size} chains gave no finite log marginal likelihood: the log "
                 "evidence comes from the others and its error is unknown; do not use it to compare models"])
    spread = float(lml.max() - lml.min())
    reliable = spread <= EVIDENCE_SPREAD_MAX
    warns = []
    if not reliable:
        values = ", ".join(f"{x:.2f}" for x in lml)
        warns.append(
            f"the chains disagree on the log evidence by {spread:.1f} nats ({values}; more than "
            f"{EVIDENCE_SPREAD_MAX:g}): its error is at least that large, so do not use it to compare models "
            "(jrinfer compare) until the chains agree; run more particles per chain (draws), or compare with "
            "backend laplace's free energy if its fit converged"
        )
    return {"log_evidence_spread": spread, "log_evidence_reliable": reliable}, warns


# ------------------------------------------------------------------ progress
#: ``progress`` values of the samplers besides True (PyMC's bar) and False (silent).
_PROGRESS_MODES = ("auto", "bar", "lines")


def _check_progress(progress):
    """``progress``: a bool or one of ``"auto"``, ``"bar"``, ``"lines"`` (as :class:`~jrinfer.backends.laplace.VariationalLaplace`)."""
    if not isinstance(progress, bool):
        _checks.check_option("progress", progress, _PROGRESS_MODES)
    return progress


def _progress_mode(progress) -> str | None:
    """``"bar"`` (PyMC's progress bar), ``"lines"`` (one-line messages on stderr) or None (silent)."""
    from jrinfer.backends._vl_engine import progress_mode

    return progress_mode(progress)


class _PyMCLog:
    """PyMC's own log lines ("Sampling 4 chains ...", "Only 30 samples per chain ...") only with its progress
    bar: silent otherwise (the one-line messages replace them, the fit's diagnostics and warnings report the
    same checks, and ``progress=False`` is silent)."""

    def __init__(self, show: bool):
        import logging

        self.logger = logging.getLogger("pymc")
        self.show = show
        self.level = None

    def __enter__(self):
        import logging

        if not self.show:
            self.level = self.logger.level
            self.logger.setLevel(max(logging.ERROR, self.level))  # its warnings are in the fit's own diagnostics
        return self

    def __exit__(self, *exc):
        if self.level is not None:
            self.logger.setLevel(self.level)
        return False


class _Lines:
    """One-line progress messages of a sampler on stderr, at most one every ``PROGRESS_INTERVAL_S`` between
    the start and end lines (the interval of variational Laplace, looked up at call time)."""

    def __init__(self, name: str):
        self.name = name
        self.t0 = self.last = time.perf_counter()

    def say(self, message: str) -> None:
        from jrinfer.backends._vl_engine import progress_line

        self.last = time.perf_counter()
        progress_line(f"{self.name}: {message}")

    def due(self) -> bool:
        from jrinfer.backends import _vl_engine

        return time.perf_counter() - self.last >= _vl_engine.PROGRESS_INTERVAL_S

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _seconds_per_evaluation(ops, evaluate, repeats: int = 3) -> float | None:
    """Median wall time (s) of ``evaluate()`` (one density evaluation), ``ops`` left as they were.

    The Ops count their calls and failures and cache their last point (these
    figures are reported in the diagnostics); their state is restored after
    the timing, so the measurement is not counted. None if it fails.
    """
    import copy

    # containers and arrays are copied (the pole map appends its recent solutions to a list in place)
    saved = [(o, {k: copy.copy(v) if isinstance(v, (list, dict, set, np.ndarray)) else v for k, v in vars(o).items()})
             for o in ops]
    times = []
    try:
        for _ in range(repeats):
            t = time.perf_counter()
            evaluate()
            times.append(time.perf_counter() - t)
    except Exception:
        return None
    finally:
        for o, state in saved:
            vars(o).clear()
            vars(o).update(state)
    return float(np.median(times))


def _end_summary(diag: dict) -> str:
    """``R-hat max 1.003, bulk ESS min 812`` from the convergence diagnostics (what exists)."""
    parts = []
    if diag.get("rhat_max") is not None:
        parts.append(f"R-hat max {diag['rhat_max']:.3f}")
    if diag.get("ess_bulk_min") is not None:
        parts.append(f"bulk ESS min {diag['ess_bulk_min']:.0f}")
    return ", ".join(parts)


class _NutsLines(_Lines):
    """Progress lines of NUTS from PyMC's per-draw ``callback`` (sequential and parallel chains alike)."""

    def __init__(self, chains: int, tune: int, draws: int, cores: int):
        super().__init__("NUTS")
        self.chains, self.tune, self.draws = chains, tune, draws
        self.parallel = cores > 1 and chains > 1
        self.done = np.zeros(chains, dtype=int)
        self.divergences = 0
        self.t_sampling = self.t0  # reset when sampling starts: the time left is at the sampling rate

    def callback(self, trace=None, draw=None):
        if draw is None:
            return
        self.done[draw.chain] = draw.draw_idx + 1
        stats = draw.stats[0] if isinstance(draw.stats, (list, tuple)) and draw.stats else draw.stats
        if not draw.tuning and isinstance(stats, dict) and bool(stats.get("diverging", False)):
            self.divergences += 1
        if not self.due():
            return
        per_chain = self.tune + self.draws
        n, total = int(self.done.sum()), self.chains * per_chain
        elapsed = self.elapsed()
        sampling = time.perf_counter() - self.t_sampling
        left = (total - n) * sampling / n if n else math.nan
        if self.parallel:
            where = "chains at iteration " + ", ".join(str(int(d)) for d in self.done) + f" of {per_chain}"
        else:
            where = (f"chain {draw.chain + 1} of {self.chains} at iteration {draw.draw_idx + 1} of {per_chain} "
                     f"({'tuning' if draw.tuning else 'drawing'})")
        self.say(f"{where}; {self.divergences} divergence(s) after tuning; {_duration(elapsed)} elapsed, about "
                 f"{_duration(left)} left")


#: A NUTS run whose shortest likely duration (7 gradients per iteration) exceeds this (s) says so, with what is faster.
NUTS_LONG_S = 3600.0
#: What an SMC chain took on the EEGMAT rest spectra (2 x 500 particles: 13-14 tempering stages, 66,500-83,000
#: likelihood evaluations, i.e. 5-6 MH steps per stage): the start line's typical duration.
SMC_TYPICAL_STAGES = 14
SMC_TYPICAL_STEPS = 6
SMC_TYPICAL_EVALUATIONS = SMC_TYPICAL_STAGES * (SMC_TYPICAL_STEPS + 1)


def _smc_kernel_with_lines(lines: _Lines, chains: int):
    """PyMC's IMH kernel reporting each tempering stage to ``lines`` (at most one line per interval, and each
    chain's last stage). ``pymc.sample_smc`` offers no callback; its ``kernel`` argument takes this subclass."""
    from pymc.smc.kernels import IMH

    class _ReportingIMH(IMH):
        _chain = -1
        _chain_seconds: list = []

        def initialize(self, start, rng):
            type(self)._chain += 1
            self._chain_t0 = time.perf_counter()
            super().initialize(start, rng)

        def step(self):
            stats = super().step()
            last = self.beta >= 1
            if last:
                type(self)._chain_seconds = [*type(self)._chain_seconds, time.perf_counter() - self._chain_t0]
            if last or lines.due():
                what = "done" if last else "at"
                done = type(self)._chain_seconds
                # once a chain has finished, the chains after it take about as long: a time left worth printing
                left = chains - len(done) - (0 if last else 1)
                eta = ""
                if done and left + (0 if last else 1) > 0:
                    per = sum(done) / len(done)
                    here = 0.0 if last else max(0.0, per - (time.perf_counter() - self._chain_t0))
                    eta = f", about {_duration(left * per + here)} left (a chain took {_duration(per)})"
                lines.say(
                    f"chain {self._chain + 1} of {chains} {what} stage {self.iteration}, beta {self.beta:.3g}, "
                    f"{self.n_steps - 1} MH step(s) at acceptance {float(self.acc_rate):.2f}; "
                    f"{_duration(time.perf_counter() - self._chain_t0)} on this chain, "
                    f"{_duration(lines.elapsed())} elapsed{eta}"
                )
            return stats

    return _ReportingIMH


class NUTS:
    """No-U-Turn Sampler (Hoffman & Gelman 2014) through PyMC.

    Samples the problem's posterior in the prior's unconstrained coordinates
    with gradients of the torch log-likelihood (see :func:`problem_to_pymc`).

    Parameters
    ----------
    chains : int
        Independent chains (``>= 1``; ``>= 2`` for R-hat).
    tune : int
        Warm-up iterations per chain (step size and diagonal mass matrix
        adaptation), discarded.
    draws : int
        Kept draws per chain (``>= 1``).
    target_accept : float
        Target mean acceptance probability in ``(0, 1)``; raise it (0.95,
        0.99) when there are divergences.
    seed : int
        Seed of the chains' initial jitter and of the sampler.
    cores : int
        Processes for chains (``1``: sequential, in this process). With
        more than one, PyMC's workers start from a fresh server process
        (``multiprocessing`` "forkserver"), never forked from this one: a
        fork of a process whose torch/OpenMP thread pool has run can
        deadlock. As with every non-fork start method, a script that calls
        ``fit`` must do so under ``if __name__ == "__main__":``.
    progress : bool or {"auto", "bar", "lines"}
        ``True`` or ``"bar"``: PyMC's progress bar. ``"lines"``: one-line
        messages on stderr: a start line (chains, tuning and draws, cores,
        the measured cost of one gradient evaluation and the time it
        implies), a line at most every 10 s (iteration of each chain,
        divergences so far, time left at the rate so far) and an end line
        (elapsed time, divergences, R-hat and ESS). ``"auto"``: the bar
        when stderr is a terminal, else the lines. ``False``: silent.
    max_treedepth : int
        Maximum tree depth of NUTS (``2**max_treedepth`` leapfrog steps at most).
    boundary : {None, "hopf", "pole"}
        ``"pole"``: sample the dominant pole ``(log sigma, omega)`` in place of
        ``C`` and ``b``, so that every stability wall sits at ``log sigma =
        -inf`` (the choice for posteriors cut by the Hopf boundary; see Notes).
        ``"hopf"``: map ``p_mean`` onto its stable interval (both Hopf points at
        infinity, but not the walls in the other parameters). ``ValueError`` at
        ``fit`` if the problem does not allow it. Draws are reported in
        natural units either way.
    init : {"laplace", "jitter"}
        ``"laplace"`` (default): start the chains from the variational Laplace
        Gaussian (draws shrunk by half, where the log joint is finite) with
        its covariance as the initial dense mass matrix, adapted further
        during tuning (PyMC's ``QuadPotentialFullAdapt``). The JR posteriors
        are strongly correlated, and from PyMC's default (``"jitter"``:
        jittered prior centre, diagonal mass matrix) the sampler takes tiny
        steps at the maximum tree depth. Falls back to ``"jitter"`` when the
        Laplace fit gives no usable Gaussian (``diagnostics["init"]`` says
        which was used).

    Notes
    -----
    Posteriors cut by the Hopf boundary (transfer method; a sharp alpha
    peak): with the default ``boundary=None`` they are sampled in the prior's
    coordinates; evaluations past the boundary are ``-inf`` (counted in
    ``loglike_failures``, zero gradient, never NaN) and NUTS reports them as
    divergences (on a JR 1995 spectrum at p_mean = 70: 65 divergences in 2 x
    300 draws, R-hat 1.04; ``benchmarks/RESULTS.md``). ``boundary="hopf"``
    samples ``p_mean`` mapped onto its stable interval ``(p_L(theta),
    p_H(theta))`` (both Hopf points of the upper branch), so that both ends
    sit at infinity (see :func:`problem_to_pymc`; the problem must offer
    :meth:`~jrinfer.InverseProblem.stability_boundary`, i.e. a transfer-method
    spectrum with ``p_mean`` free). The chains then start from the mode of the
    reparametrised density (L-BFGS from the Laplace mean mapped to ``w``)
    with the inverse Hessian there as the initial mass matrix (the Laplace
    Gaussian of the prior's coordinates, half of it past the boundary, is a
    poor metric in ``w``). Each gradient costs an interval search as well
    (12-30 ms; ``diagnostics["boundary_evaluations"]``,
    ``["boundary_time_s"]``, ``["boundary_empty"]``: evaluations where no
    ``p_mean`` was stable). **Not sufficient yet**: where no ``p_mean`` is
    stable (near the tip of the stable region in ``(a, b, C, p_mean)``, where
    the interval closes) the density is ``-inf`` for every ``w``; these walls
    lie in the other parameters, which the map does not move. On the
    near-boundary test spectrum the interval closes a few percent of ``a``
    away from the posterior's thin ``(a, b, C)`` ridge, and NUTS still
    diverges there (5 of 60 draws in a measured chain; ``benchmarks/RESULTS.md``).

    ``boundary="pole"``: the alpha resonance is the least-damped pole
    ``lambda = -sigma + i omega`` of the linearised model; the data fix
    ``omega`` (the peak's position) and bound ``sigma`` (its width), and the
    posterior presses against ``sigma = 0``. Sampling ``(log sigma, omega)``
    in place of ``(C, b)`` puts that wall at ``log sigma = -inf``; ``(C, b)``
    are recovered by a warm-started 2-D Newton solve (NumPy continuation of
    the equilibrium and the pole, every solution certified as the rightmost
    pole of the upper equilibrium) and the density gains ``log |det
    d(C, b)/d(log sigma, omega)|``; gradients by the implicit-function
    theorem (:mod:`jrinfer._polemap`). The chains start from the mode of that
    density (L-BFGS from the Laplace draws mapped to pole coordinates) with
    the inverse Hessian there as the mass matrix (``init="jitter"``: from
    the prior median mapped to pole coordinates, which must be stable).
    Cost 9-16 ms per gradient at load 4-5 (the fused log joint alone: 1-3
    ms). ``u`` with no preimage found (no stable upper equilibrium with that
    pole at those other parameters, or the solve's continuation did not
    reach it) has density ``-inf``: ``diagnostics["pole_solve_failures"]``
    (also ``pole_evaluations``, ``pole_time_s``, ``pole_inf_evaluations``,
    ``pole_replaced``). On the near-boundary test spectrum (JR 1995
    constants, p_mean 70; 2 x (200 + 500)): 0 divergences, R-hat 1.002, no
    draw past the boundary; 2 ``-inf`` of 11,125 evaluations, the first
    tuning steps, 14-32 posterior SDs out (``benchmarks/RESULTS.md``). Needs
    ``C`` and ``b`` free.

    Ctrl-C during sampling stops every chain and keeps what was drawn after
    tuning: ``diagnostics["interrupted"]`` is True and a warning says how much
    was kept (an interruption during tuning raises ``KeyboardInterrupt``).

    Diagnostics (``Posterior.diagnostics``): ``rhat`` and ``rhat_max``,
    ``ess_bulk``/``ess_tail`` and their minima, ``divergences``,
    ``tree_depth_saturated`` (fraction of draws at the maximum tree depth),
    ``sampling_time_s``, ``ess_per_second`` (minimum bulk ESS per second of
    sampling), ``loglike_failures`` (evaluations that gave ``-inf``; None
    with ``cores > 1``, where they happen in PyMC's worker processes). A fit
    warns when R-hat > 1.01, ESS < 100 per chain, any divergence, or tree-
    depth saturation; ``status`` is then ``"warning"``, else ``"converged"``.

    Examples
    --------
    >>> from jrinfer.backends.pymc import NUTS  # doctest: +SKIP
    >>> post = NUTS(chains=4, tune=1000, draws=1000).fit(problem)  # doctest: +SKIP
    """

    def __init__(
        self,
        chains: int = 4,
        tune: int = 1000,
        draws: int = 1000,
        target_accept: float = 0.9,
        seed: int = 0,
        cores: int = 1,
        progress: bool | str = False,
        max_treedepth: int = 10,
        init: str = "laplace",
        boundary: str | None = None,
    ):
        _checks.check_option("init", init, ("laplace", "jitter"))
        if boundary not in (None, "hopf", "pole"):
            raise ValueError(f"boundary must be None, 'hopf' or 'pole', got {boundary!r}")
        self.boundary = boundary
        self.init = init
        self.chains = _checks.check_int("chains", chains, minimum=1)
        self.tune = _checks.check_int("tune", tune, minimum=0)
        self.draws = _checks.check_int("draws", draws, minimum=1)
        target_accept = _checks.check_scalar("target_accept", target_accept)
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
        self.target_accept = target_accept
        self.seed = _checks.check_int("seed", seed, minimum=0)
        self.cores = _checks.check_int("cores", cores, minimum=1)
        self.progress = _check_progress(progress)
        self.max_treedepth = _checks.check_int("max_treedepth", max_treedepth, minimum=1)

    _stop_after = None  # tests: simulate Ctrl-C after this many iterations of the first chain

    def __repr__(self) -> str:
        return (
            f"NUTS(chains={self.chains}, tune={self.tune}, draws={self.draws}, "
            f"target_accept={self.target_accept}, seed={self.seed}, cores={self.cores})"
        )

    def fit(self, problem, *, n_predictive: int = 200):
        """Sample the posterior of ``problem`` and return a :class:`~jrinfer.Posterior`.

        Parameters
        ----------
        problem : InverseProblem
        n_predictive : int
            Draws (thinned evenly over all chains) given a posterior
            predictive sample and a pointwise log-likelihood.

        Returns
        -------
        Posterior
            ``backend="nuts"``; draws ``(chains, draws, n_params)`` in
            natural units; ``sample_stats`` with ``diverging``,
            ``tree_depth``, ``acceptance_rate``, ``energy``, ``step_size``,
            ``lp``; ``log_evidence`` None (NUTS does not estimate it: use SMC).

        Raises
        ------
        ValueError
            ``problem`` is not an InverseProblem or ``n_predictive`` < 0.
        """
        from jrinfer.backends._assembly import assemble_posterior

        _check_problem(problem)
        n_predictive = _checks.check_int("n_predictive", n_predictive, minimum=0)
        pm = _pymc()
        model = problem_to_pymc(problem, with_grad=True, boundary=self.boundary)
        bop = model.jrinfer_boundary
        pop = model.jrinfer_pole
        import warnings as _w

        mode = _progress_mode(self.progress)
        lines = _NutsLines(self.chains, self.tune, self.draws, self.cores) if mode == "lines" else None
        if lines is not None and self.init == "laplace":
            lines.say("finding starting points and a mass matrix by variational Laplace (several Gauss-Newton runs)")
        t_init = time.perf_counter()
        start = (
            _laplace_start(problem, self.chains, self.seed, require_valid_mean=bop is None and pop is None,
                           progress="lines" if lines is not None else False)
            if self.init == "laplace"
            else None
        )
        free_names = [f"{name}_z" for name in problem.names]
        if pop is not None:
            pmap = pop.pole_map
            free_names[pmap.index[0]], free_names[pmap.index[1]] = "pole_log_sigma", "pole_omega"
            if start is not None:
                pmap.reference = start[0].copy()  # cold starts of the solve: near the Laplace mean
                start = _to_pole(pmap, start, self.seed)
            if start is not None:
                start = _laplace_in_w(model, start, self.chains, self.seed)
            else:  # no Laplace start: the prior median in pole coordinates (PyMC's default, u = 0, has no preimage)
                z0 = problem.prior.to_unconstrained(problem.prior.median()).numpy()
                u0 = pmap.to_u(z0[None, :])[0]
                if not np.isfinite(u0).all():
                    raise ValueError(
                        "boundary='pole' needs a start with a stable upper equilibrium: the prior median has none and "
                        f"init={self.init!r} gave no Laplace start; use init='laplace' or a prior centred in the stable region"
                    )
                start = (u0, np.eye(problem.n_params), [u0.copy() for _ in range(self.chains)])
        if bop is not None:
            i = bop.boundary.index
            free_names[i] = f"{problem.names[i]}_w"
            if start is not None:
                start = _to_w(bop, start, self.seed)
            if start is not None:
                start = _laplace_in_w(model, start, self.chains, self.seed)
        if lines is not None:
            if self.init == "laplace":
                lines.say(f"starting points and mass matrix found in {_duration(time.perf_counter() - t_init)}")
            lines.say(self._start_line(problem, model, start))
            lines.t_sampling = time.perf_counter()  # after the start: not counted in the sampling rate
        t0 = time.perf_counter()
        init_seconds = t0 - t_init
        with model, _w.catch_warnings(), _PyMCLog(mode == "bar"):
            _w.simplefilter("ignore", UserWarning)  # PyMC's own convergence notes: we report our own
            kw = {}
            if start is not None:
                from pymc.step_methods.hmc.quadpotential import QuadPotentialFullAdapt

                mean, cov, inits = start
                n = problem.n_params
                kw["potential"] = QuadPotentialFullAdapt(n, mean, cov, initial_weight=10 * n)
                sample_kw = {"initvals": [{v: z[k] for k, v in enumerate(free_names)} for z in inits]}
            else:
                sample_kw = {}
            step = pm.NUTS(target_accept=self.target_accept, max_treedepth=self.max_treedepth, **kw)
            with _Interruptible(self._stop_after) as stop:
                callbacks = [c for c in (stop.callback if self.cores == 1 else None,
                                         lines.callback if lines is not None else None) if c is not None]

                def callback(trace=None, draw=None):
                    for c in callbacks:
                        c(trace=trace, draw=draw)

                try:
                    idata = pm.sample(
                        draws=self.draws,
                        tune=self.tune,
                        chains=self.chains,
                        cores=self.cores,
                        step=step,
                        random_seed=self.seed,
                        progressbar=mode == "bar",
                        compute_convergence_checks=False,
                        return_inferencedata=True,
                        callback=callback if callbacks else None,
                        # worker processes from a fresh server, not forked from this one: a fork of a process whose
                        # torch/OpenMP thread pool is running can deadlock in the child (it did in the test suite)
                        **({"mp_ctx": "forkserver"} if self.cores > 1 and self.chains > 1 else {}),
                        **sample_kw,
                    )
                except ValueError as err:
                    if stop.interrupted and "Not enough samples" in str(err):
                        raise KeyboardInterrupt(
                            f"NUTS interrupted during tuning ({self.tune} tune iterations per chain): no draws to keep"
                        ) from None
                    raise
        seconds = time.perf_counter() - t0
        z = _z_draws(problem, idata)
        theta = problem.prior.from_unconstrained(torch.from_numpy(z)).numpy()
        diag, warns = _convergence(problem, z, seconds)
        ss = idata.sample_stats
        stats = {}
        for key in ("diverging", "tree_depth", "acceptance_rate", "energy", "step_size", "lp", "reached_max_treedepth"):
            if key in ss:
                stats[key] = ss[key].values
        n_div = int(np.asarray(stats.get("diverging", 0)).sum())
        diag["divergences"] = n_div
        saturated = float(np.mean(stats["reached_max_treedepth"])) if "reached_max_treedepth" in stats else 0.0
        diag["tree_depth_saturated"] = saturated
        diag["max_treedepth"] = self.max_treedepth
        op = model.jrinfer_op
        counted = self.cores == 1  # with cores > 1 the Op runs (and counts) in PyMC's worker processes
        diag["loglike_evaluations"] = op.n_calls if counted else None
        diag["loglike_failures"] = op.n_failed if counted else None
        if op.first_error:
            diag["loglike_first_error"] = op.first_error
        diag["init"] = "laplace" if start is not None else "jitter+adapt_diag"
        diag["boundary"] = self.boundary
        if bop is not None:
            diag["boundary_parameter"] = bop.boundary.name
            diag["boundary_evaluations"] = bop.n_calls if counted else None
            diag["boundary_time_s"] = bop.seconds if counted else None
            diag["boundary_empty"] = bop.n_empty if counted else None
            if bop.first_error:
                diag["boundary_first_error"] = bop.first_error
        if pop is not None:
            pmap = pop.pole_map
            diag["pole_replaced"] = list(pmap.replace)
            diag["pole_evaluations"] = pop.n_calls if counted else None
            diag["pole_time_s"] = pop.seconds if counted else None
            diag["pole_solves"] = pmap.n_solves if counted else None
            diag["pole_solve_failures"] = pmap.n_failed if counted else None
            diag["pole_inf_evaluations"] = pop.n_inf if counted else None
            if pop.first_error:
                diag["pole_first_error"] = pop.first_error
        diag["init_time_s"] = init_seconds
        diag["fused_loglike"] = bool(op.fused)
        diag["settings"] = {
            "init": self.init,
            "chains": self.chains,
            "tune": self.tune,
            "draws": self.draws,
            "target_accept": self.target_accept,
            "seed": self.seed,
            "boundary": self.boundary,
        }
        kept = int(z.shape[1])
        diag["interrupted"] = bool(stop.interrupted)
        if stop.interrupted or kept < self.draws:
            diag["interrupted"] = True
            warns.append(
                f"sampling was interrupted: kept {kept} of {self.draws} draws per chain in {z.shape[0]} of "
                f"{self.chains} chain(s) (what was sampled before the interruption; diagnostics are of that part)"
            )
        if n_div:
            wall = ""
            if self.boundary != "pole" and op.n_failed and {"C", "b"} <= set(problem.names) \
                    and problem.stability_boundary() is not None:
                wall = (f"; {op.n_failed} log-likelihood evaluations were -inf, parameter sets past the Hopf boundary "
                        "that cuts this posterior: sample the dominant pole instead (boundary='pole', CLI --boundary "
                        "pole)")
            warns.append(
                f"{n_div} divergent transition(s) after tuning: the sampler missed part of the posterior; raise "
                f"target_accept (now {self.target_accept}; CLI --target-accept) towards 0.99, or reparametrise (fix "
                f"weakly identified parameters){wall}; do not trust the tails"
            )
        if saturated > 0.01:
            warns.append(
                f"{100 * saturated:.0f} % of draws hit the maximum tree depth ({self.max_treedepth}): sampling is "
                "inefficient; increase max_treedepth or fix strongly correlated parameters"
            )
        status = "warning" if warns else "converged"
        message = (
            f"NUTS: {self.chains} chain(s) x ({self.tune} tune + {self.draws} draws) in {seconds:.1f} s"
            + (f"; {len(warns)} diagnostic warning(s)" if warns else "; diagnostics passed")
        )
        posterior = assemble_posterior(
            problem,
            theta,
            backend="nuts",
            status=status,
            message=message,
            diagnostics=diag,
            sample_stats=stats,
            warnings=warns,
            n_predictive=n_predictive,
            seed=self.seed,
        )
        if lines is not None:
            checks = _end_summary(diag)
            lines.say(
                f"done in {_duration(lines.elapsed())} (sampling {_duration(seconds)}): {z.shape[0]} chain(s) x "
                f"{kept} draws kept, {n_div} divergence(s) after tuning{', ' + checks if checks else ''}; "
                f"status {posterior.status}"
            )
        return posterior

    def _start_line(self, problem, model, start) -> str:
        """The start line of ``progress="lines"``: the run's size and the cost of one gradient (measured)."""
        pop, op = model.jrinfer_pole, model.jrinfer_op
        parallel = min(self.cores, self.chains)
        head = (f"{self.chains} chain(s) x ({self.tune} tune + {self.draws} draws), "
                f"{'chains one after the other' if parallel == 1 else f'{parallel} chains at a time'}"
                + (f", boundary={self.boundary!r}" if self.boundary else ""))
        if pop is not None:
            # at points 0.1 posterior SD from the start: at the start itself the warm-started solve is free
            x = start[2][0]
            sd = np.sqrt(np.clip(np.diag(start[1]), 0.0, None))
            steps = iter(0.1 * sd * np.random.default_rng(0).choice([-1.0, 1.0], size=(3, x.size)))

            def evaluate():
                pop._last = None  # past its one-point cache
                pop.evaluate(x + next(steps))

            seconds = _seconds_per_evaluation([pop, pop.pole_map], evaluate)
        else:
            z0 = problem.prior.to_unconstrained(problem.prior.median()).numpy()
            if start is not None and model.jrinfer_boundary is None:
                z0 = start[2][0]
            ops = [op] + ([model.jrinfer_boundary] if model.jrinfer_boundary is not None else [])

            def evaluate():
                for o in ops:
                    o.evaluate(z0)

            seconds = _seconds_per_evaluation(ops, evaluate)
        if seconds is None:
            return head
        iterations = self.chains * (self.tune + self.draws) / parallel
        # a NUTS iteration takes up to 2**depth - 1 gradients; depths 3-6 are typical of a well-adapted JR posterior
        few, many = min(7, 2**self.max_treedepth - 1), min(63, 2**self.max_treedepth - 1)
        low, high = iterations * few * seconds, iterations * many * seconds
        advice = ""
        if low > NUTS_LONG_S:
            # say so before the hours pass: what it would take, and what gives an answer sooner
            advice = (f". That is long: fewer --tune/--draws/--chains shorten it in proportion; variational Laplace "
                      f"(--backend laplace) gives a Gaussian posterior in minutes, and SMC (--backend smc) needs no "
                      "gradients")
        return (f"{head}; one gradient evaluation takes {1e3 * seconds:.1f} ms, so at {few}-{many} gradients per "
                f"iteration about {_duration(low)} to {_duration(high)}{advice}")


class SMC:
    """Sequential Monte Carlo (tempered, gradient-free) through ``pymc.sample_smc``.

    Particles move from the prior to the posterior through a sequence of
    tempered posteriors ``p(z) p(y | z)^beta`` (Del Moral et al. 2006; the
    adaptive tempering of Ching & Chen 2007), with independent Metropolis-
    Hastings mutations. Suited to multimodal or bistable posteriors; it also
    estimates the log marginal likelihood ``log p(y)``.

    Parameters
    ----------
    draws : int
        Particles per chain (``>= 10``).
    chains : int
        Independent SMC runs (``>= 1``; ``>= 2`` for R-hat and an error on
        the evidence).
    seed : int
        Seed of the runs.
    threshold : float
        Target ESS fraction in ``(0, 1)`` when choosing the next temperature.
    progress : bool or {"auto", "bar", "lines"}
        ``True`` or ``"bar"``: PyMC's progress bar. ``"lines"``: one-line
        messages on stderr: a start line (chains, particles, the measured
        cost of one likelihood evaluation and of a tempering stage), a line
        per tempering stage at most every 10 s and at the end of each chain
        (stage, inverse temperature beta, Metropolis-Hastings steps and
        acceptance, elapsed time) and an end line (elapsed time, stages, R-hat
        and ESS, log evidence). ``"auto"``: the bar when stderr is a terminal,
        else the lines. ``False``: silent.

    Notes
    -----
    ``log_evidence`` is ``log mean_c exp(L_c)`` over the chains' estimates
    ``L_c``; ``diagnostics["log_marginal_likelihood_chains"]`` holds the
    ``L_c`` and ``diagnostics["log_evidence_se"]`` their standard error of
    the mean (the Monte-Carlo error). The likelihood is evaluated once per
    particle and stage in a loop inside PyMC's kernel.
    """

    def __init__(self, draws: int = 2000, chains: int = 4, seed: int = 0, threshold: float = 0.5,
                 progress: bool | str = False):
        self.draws = _checks.check_int("draws", draws, minimum=10)
        self.chains = _checks.check_int("chains", chains, minimum=1)
        self.seed = _checks.check_int("seed", seed, minimum=0)
        threshold = _checks.check_scalar("threshold", threshold)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self.progress = _check_progress(progress)

    def __repr__(self) -> str:
        return f"SMC(draws={self.draws}, chains={self.chains}, seed={self.seed})"

    def fit(self, problem, *, n_predictive: int = 200):
        """Sample the posterior of ``problem`` and return a :class:`~jrinfer.Posterior`.

        Parameters
        ----------
        problem : InverseProblem
        n_predictive : int
            Draws given a posterior predictive sample and a pointwise log-likelihood.

        Returns
        -------
        Posterior
            ``backend="smc"``; draws ``(chains, draws, n_params)`` in natural
            units; ``log_evidence`` the SMC estimate of ``log p(y)``;
            ``diagnostics`` with the per-chain estimates, their standard error,
            the number of stages, R-hat and ESS.

        Raises
        ------
        ValueError
            ``problem`` is not an InverseProblem or ``n_predictive`` < 0.
        """
        from jrinfer.backends._assembly import assemble_posterior

        _check_problem(problem)
        n_predictive = _checks.check_int("n_predictive", n_predictive, minimum=0)
        pm = _pymc()
        model = problem_to_pymc(problem, with_grad=False)
        import warnings as _w

        mode = _progress_mode(self.progress)
        lines = _Lines("SMC") if mode == "lines" else None
        kernel = {}
        if lines is not None:
            op = model.jrinfer_op
            z0 = problem.prior.to_unconstrained(problem.prior.median()).numpy()
            seconds = _seconds_per_evaluation([op], lambda: op.evaluate(z0))
            cost = "" if seconds is None else (
                f"; one likelihood evaluation takes {1e3 * seconds:.2f} ms: a tempering stage evaluates it "
                f"{self.draws} x (MH steps), at least {_duration(self.draws * seconds)} per stage and chain; "
                f"typically about {_duration(self.chains * self.draws * SMC_TYPICAL_EVALUATIONS * seconds)} in all "
                f"({SMC_TYPICAL_STAGES} stages of {SMC_TYPICAL_STEPS} MH steps per chain, as on EEGMAT rest spectra; "
                "more on a loaded machine or a narrow posterior)")
            lines.say(f"{self.chains} chain(s) x {self.draws} particles, threshold {self.threshold}, chains one "
                      f"after the other{cost}; the number of stages is set as it goes (beta from 0 to 1)")
            kernel = {"kernel": _smc_kernel_with_lines(lines, self.chains)}
        t0 = time.perf_counter()
        with model, _w.catch_warnings(), _PyMCLog(mode == "bar"):
            _w.simplefilter("ignore", UserWarning)
            _w.simplefilter("ignore", RuntimeWarning)  # -inf likelihoods in the tempering weights
            idata = pm.sample_smc(
                draws=self.draws,
                chains=self.chains,
                cores=1,
                random_seed=self.seed,
                threshold=self.threshold,
                progressbar=mode == "bar",
                compute_convergence_checks=False,
                return_inferencedata=True,
                **kernel,
            )
        seconds = time.perf_counter() - t0
        z = _z_draws(problem, idata)
        theta = problem.prior.from_unconstrained(torch.from_numpy(z)).numpy()
        diag, warns = _convergence(problem, z, seconds, sampler="smc")
        lml = _final_stage(idata.sample_stats["log_marginal_likelihood"].values)
        finite = np.isfinite(lml)
        log_ev = None
        if finite.any():
            m = lml[finite].max()
            log_ev = float(m + math.log(np.mean(np.exp(lml[finite] - m))))
        diag["log_marginal_likelihood_chains"] = [float(x) for x in lml]
        diag["log_evidence_se"] = (
            float(np.std(lml, ddof=1) / math.sqrt(lml.size)) if lml.size > 1 and finite.all() else None
        )
        ev_diag, ev_warns = _evidence_agreement(lml)
        diag.update(ev_diag)
        warns.extend(ev_warns)
        betas = idata.sample_stats["beta"].values if "beta" in idata.sample_stats else None
        if betas is not None:
            diag["n_stages"] = [int(r.size) for r in _stages(betas)]
        op = model.jrinfer_op
        diag["loglike_evaluations"] = op.n_calls
        diag["loglike_failures"] = op.n_failed
        if op.first_error:
            diag["loglike_first_error"] = op.first_error
        diag["settings"] = {"draws": self.draws, "chains": self.chains, "seed": self.seed, "threshold": self.threshold}
        if log_ev is None:
            warns.append("SMC gave no finite log marginal likelihood: the likelihood is -inf for every particle")
        status = "warning" if warns else "converged"
        message = (
            f"SMC: {self.chains} chain(s) x {self.draws} particles in {seconds:.1f} s"
            + (f"; {len(warns)} diagnostic warning(s)" if warns else "; diagnostics passed")
        )
        posterior = assemble_posterior(
            problem,
            theta,
            backend="smc",
            status=status,
            message=message,
            log_evidence=log_ev,
            diagnostics=diag,
            warnings=warns,
            n_predictive=n_predictive,
            seed=self.seed,
        )
        if lines is not None:
            stages = diag.get("n_stages") or []
            checks = _end_summary(diag)
            se = diag["log_evidence_se"]
            evidence = "no finite log evidence" if log_ev is None else (
                f"log evidence {log_ev:.2f}" + (f" +- {se:.2f}" if se is not None else ""))
            lines.say(
                f"done in {_duration(seconds)}: {z.shape[0]} chain(s) x {z.shape[1]} particles"
                + (f", {min(stages)}{'' if min(stages) == max(stages) else f'-{max(stages)}'} stages per chain"
                   if stages else "")
                + (f", {checks}" if checks else "") + f", {evidence}; status {posterior.status}"
            )
        return posterior


def _stages(values) -> list[np.ndarray]:
    """Per-chain values of PyMC's SMC sample_stats ``(chain, ...)``, one per tempering stage, NaN dropped.

    PyMC stores them ``(chain, stage)``, NaN-padded, or, when chains took
    different numbers of stages, as one list per chain, which ArviZ lays out
    as ``(1, n_chains)``; both are read per chain.
    """

    def flat(v):
        if isinstance(v, (list, tuple, np.ndarray)):
            return [x for item in v for x in flat(item)]
        return [float(v)]

    arr = np.asarray(values, dtype=object)
    if arr.ndim == 2 and arr.shape[0] == 1 and all(isinstance(v, (list, tuple, np.ndarray)) for v in arr[0]):
        # chains with different numbers of stages: PyMC stores one list per chain, which ArviZ puts
        # along the draw axis of a single "chain" -- shape (1, n_chains)
        chains = [[v] for v in arr[0]]
    else:
        chains = arr.reshape(arr.shape[0], -1)
    out = []
    for chain in chains:
        r = np.array(flat(list(chain)), dtype=float)
        out.append(r[~np.isnan(r)])
    return out


def _final_stage(values) -> np.ndarray:
    """Per-chain log marginal likelihood: the last finite stage (``-inf`` if none)."""
    out = []
    for r in _stages(values):
        r = r[np.isfinite(r)]
        out.append(r[-1] if r.size else -math.inf)
    return np.array(out, dtype=float)
