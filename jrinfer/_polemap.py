"""Pole coordinates: sample the dominant mode's log damping and frequency in place of two parameters.

Under the transfer method the linearised spectrum exists while the upper
equilibrium is stable, i.e. while the least-damped pole ``lambda = -sigma + i
omega`` of the linearised Jansen-Rit system has ``sigma > 0``. A sharp alpha
peak fixes ``omega`` (its position) and bounds ``sigma`` (its width) from
above, so the posterior presses against the Hopf surface ``sigma = 0``: in the
prior's coordinates that surface is a wall a small step from the bulk.

:class:`PoleMap` replaces two free parameters (``r = (r1, r2)``, by default
the excitatory connectivity ``C`` and the inhibitory rate ``b``; their
prior-unconstrained coordinates ``z_r``) by ``u_r = (log sigma, omega)``,
keeping the others (``z_o``). The map ``(z_r, z_o) -> (log sigma, omega,
z_o)`` is inverted by a 2-D Newton solve on ``z_r`` (warm-started), and the
density of ``u`` is::

    log p(u) = log p(z(u)) + log |det dz_r/du_r| = log p(z) - log |det J(z)|,   J = d(log sigma, omega)/dz_r

Every stability wall (``sigma -> 0``) is at ``log sigma = -inf``. The
gradient follows from the implicit-function theorem on the equilibrium
equation and the characteristic polynomial (NumPy, complex-step partial
derivatives; a torch-autograd path gives the same values and is used to check
it); the gradient of ``log |det J|`` (second derivatives of the pole) is a
central difference of the exact ``J``.

Why ``(C, b)``: measured on the near-boundary test spectrum
(``benchmarks/RESULTS.md``): with ``(a, b)`` replaced the solve folds at
``a = b`` about 2.5 posterior SDs from the mean; with ``a`` kept there is no
fold along the posterior's ridge; ``p_mean`` barely moves the pole.

Points ``u`` with no preimage found (no stable upper equilibrium has that
pole at those ``z_o``, or the continuation did not reach it) have density
``-inf``; they are counted (:attr:`PoleMap.n_failed`).

Reference: the characteristic polynomial of the linearised JR model is
:meth:`jrinfer.JansenRit.dominant_mode`'s ``Q(s)``; complex-step
differentiation: W. Squire, G. Trapp (1998), SIAM Review 40:110-112.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from jrinfer.model import (
    PARAMETERS,
    JansenRit,
    _equilibrium_residual,
    _equilibrium_residual_slope,
    _fixed_points,
    _sigmoid_slope,
)

#: Default replaced parameters (see the module docstring).
DEFAULT_REPLACED = ("C", "b")


def _q(s, p, y0, v):
    """Characteristic polynomial ``Q(s)`` of the linearisation at ``y0`` and its derivative ``Q'(s)``."""
    g0 = _sigmoid_slope(v, p["e0"], p["v0"], p["r"])
    g1 = _sigmoid_slope(p["C1"] * y0, p["e0"], p["v0"], p["r"])
    g2 = _sigmoid_slope(p["C3"] * y0, p["e0"], p["v0"], p["r"])
    a, b, aa, bb = p["a"], p["b"], p["A"] * p["a"], p["B"] * p["b"]
    ke, ki = p["C1"] * p["C2"] * g1 * aa, p["C3"] * p["C4"] * g2 * bb
    q = (s + a) ** 4 * (s + b) ** 2 - g0 * aa * (ke * (s + b) ** 2 - ki * (s + a) ** 2)
    dq = 4 * (s + a) ** 3 * (s + b) ** 2 + 2 * (s + a) ** 4 * (s + b) - 2 * g0 * aa * (ke * (s + b) - ki * (s + a))
    return q, dq


def dominant_pole(params: dict, *, steps: int = 1, roots: bool = False, start=None):
    """``(log sigma, omega, valid)`` of the least-damped complex pole of the upper equilibrium (batched).

    Parameters
    ----------
    params : dict
        Jansen-Rit parameters (tensors broadcastable to a batch, may require grad).
    steps : int
        Newton steps from the detached roots (equilibrium and pole); 1 gives
        exact first derivatives (implicit-function theorem).
    roots : bool
        Also return the detached ``y0`` of the upper equilibrium and the pole
        (complex128), shape ``batch`` each (warm starts for continuation).
    start : (torch.Tensor, torch.Tensor), optional
        Converged ``(y0, pole)`` of the upper equilibrium for these parameters
        (e.g. continued from a checked nearby point): the fixed-point and
        eigenvalue search is skipped and ``valid`` only checks ``sigma > 0``.

    Returns
    -------
    log_sigma, omega : torch.Tensor
        float64, shape ``batch``; ``log sigma`` in log(1/s), ``omega`` in rad/s.
        NaN where ``valid`` is False.
    valid : torch.Tensor
        bool, shape ``batch``: a complex pole exists and ``sigma > 0`` (the upper equilibrium is stable).
    """
    model = JansenRit(**{k: v for k, v in params.items() if k in PARAMETERS})
    p = model._params
    if start is not None:
        y = torch.as_tensor(start[0], dtype=torch.float64)
        lam0 = torch.as_tensor(start[1], dtype=torch.complex128)
        valid = torch.isfinite(y) & torch.isfinite(lam0) & (lam0.imag > 0)
        lam0 = torch.where(valid, lam0, torch.full_like(lam0, complex(-1.0, 1.0)))
        y = torch.where(valid, y, torch.zeros_like(y))
    else:
        with torch.no_grad():
            pd = {k: v.detach() for k, v in p.items()}
            eq = _fixed_points(pd, model.batch_shape, 256, which="upper")
            ev = eq.eigenvalues
            osc = (ev.imag > 1e-9 * ev.abs()) & torch.isfinite(ev.real)
            score = torch.where(osc, ev.real, torch.full_like(ev.real, -math.inf))
            lam0 = torch.gather(ev, -1, score.argmax(-1, keepdim=True)).squeeze(-1)
            has = osc.any(-1) & torch.isfinite(eq.state[..., 0])
            # the selected pole must be the rightmost eigenvalue (a real one to its right is a different instability)
            valid = has & (lam0.real < 0) & (ev.real.max(-1).values <= lam0.real + 1e-9 * lam0.abs())
            lam0 = torch.where(valid, lam0, torch.full_like(lam0, complex(-1.0, 1.0)))
            y = torch.where(valid, eq.state[..., 0], torch.zeros_like(eq.state[..., 0]))
    for _ in range(steps):
        g, v = _equilibrium_residual(y, p)
        y = y - g / _equilibrium_residual_slope(y, v, p)
    _, v = _equilibrium_residual(y, p)
    lam = lam0.to(torch.complex128)
    for _ in range(steps):
        q, dq = _q(lam, p, y, v)
        lam = lam - q / dq
    sigma = -lam.real
    nan = torch.full_like(sigma, math.nan)
    valid = valid & (sigma.detach() > 0)
    log_sigma = torch.where(valid, torch.log(torch.where(valid, sigma, torch.ones_like(sigma))), nan)
    if roots:
        return log_sigma, torch.where(valid, lam.imag, nan), valid, y.detach(), lam.detach()
    return log_sigma, torch.where(valid, lam.imag, nan), valid


class PoleMap:
    """The change of coordinates ``z -> u`` (two of ``z`` replaced by the dominant pole) and its inverse.

    Parameters
    ----------
    problem : InverseProblem
        A transfer-method spectrum problem (its observation offers a
        stability boundary) with both ``replace`` parameters free
        (``p_mean`` may be fixed).
    replace : (str, str)
        The parameters replaced by ``(log sigma, omega)``, in that order.
    reference : array, optional
        ``z`` ``(n_params,)`` whose replaced entries start the Newton solve
        when there is no previous solution (default: the prior median).

    Attributes
    ----------
    index : (int, int)
        Positions of the replaced parameters in ``problem.names`` (where ``u``
        holds ``log sigma`` and ``omega``).
    n_solves, n_failed, n_iterations : int
        Solves, failed solves (no preimage found: density ``-inf``) and Newton iterations in all.
    """

    TOL = 1e-10
    #: Residual accepted where no Newton step reduces it further (the pole's round-off, ~1e-11 at a 150, C 180).
    TOL_FLOOR = 1e-9
    KEEP_FAILED = 100
    MAX_ITER = 40

    def __init__(self, problem, replace=DEFAULT_REPLACED, reference=None):
        if problem.observation.stability_boundary(problem.data) is None:
            raise ValueError(
                "boundary='pole' needs an observation whose prediction ends at the Hopf boundary (a transfer-method "
                f"spectrum); {type(problem.observation).__name__} offers no stability boundary"
            )
        replace = tuple(replace)
        if len(replace) != 2 or any(n not in problem.names for n in replace) or replace[0] == replace[1]:
            missing = [n for n in replace if n not in problem.names]
            raise ValueError(
                f"boundary='pole' (CLI --boundary pole) replaces {' and '.join(replace)} by the dominant pole, so "
                f"both must be free; {', '.join(missing) or 'they'} "
                f"{'is' if len(missing) == 1 else 'are'} not free in this problem (free: {', '.join(problem.names)}): "
                "free it (no --fix of it) or use --boundary hopf"
                if missing else
                f"replace must name two different free parameters of the problem ({', '.join(problem.names)}), "
                f"got {replace!r}"
            )
        self.problem = problem
        self.replace = replace
        self.index = tuple(problem.names.index(n) for n in replace)
        self.others = [k for k in range(problem.n_params) if k not in self.index]
        if reference is None:
            reference = problem.prior.to_unconstrained(problem.prior.median()).numpy()
        self.reference = np.array(reference, dtype=np.float64)
        #: Free parameters the pole depends on (the Jansen-Rit ones).
        self.pole_dependent = [k for k, n in enumerate(problem.names) if n in PARAMETERS]
        self._last = None  # (z_r, y0, pole) of the last solution: the warm start
        self._base = None  # the natural parameters at the last other coordinates (see _jr_natural)
        self._given = None
        self._full = None
        self._recent = []  # (u, z_r, y0, pole, d u_r / d z) of recent solutions: predictors for the next solves
        self._dists = {k: problem.prior.distributions[problem.names[k]] for k in self.index}
        self.n_solves = self.n_failed = self.n_iterations = 0
        self.n_full_checks = 0  # solutions the cheap check could not certify (the torch search decided)
        #: The first :attr:`KEEP_FAILED` ``u`` whose solve failed (to see where they lie).
        self.failed_u = []

    # ------------------------------------------------------------------ forward
    def forward(self, z, *, steps: int = 1, roots: bool = False, start=None):
        """``(log sigma, omega, valid)`` at unconstrained ``z`` ``(..., n_params)`` (tensor; differentiable).

        ``roots=True`` also returns the upper equilibrium's ``y0`` and the pole (detached).
        """
        params = self.problem.parameters(self.problem.prior.from_unconstrained(z))
        return dominant_pole(params, steps=steps, roots=roots, start=start)

    def to_u(self, z: np.ndarray) -> np.ndarray:
        """``u`` of a batch of ``z`` ``(..., n_params)``; NaN rows where the upper equilibrium is unstable."""
        zt = torch.as_tensor(np.asarray(z, dtype=np.float64))
        with torch.no_grad():
            ls, om, _ = self.forward(zt)
        u = zt.clone()
        u[..., self.index[0]], u[..., self.index[1]] = ls, om
        u[~torch.isfinite(ls)] = math.nan
        return u.numpy()

    # ------------------------------------------------------------------ inverse
    def _jr_natural(self, z: np.ndarray) -> dict:
        """Jansen-Rit parameters (NumPy, broadcast over a batch ``z`` ``(B, n)``) with ``C1..C4`` resolved.

        Only the replaced entries may differ between the rows and from the
        last call's other entries (the Newton solve's batches): those are
        transformed here, the rest is taken from a cache of the full
        parameter set at the other coordinates (one full evaluation per solve).
        """
        i, j = self.index
        key = np.delete(z[0], [i, j]).tobytes()
        if self._base is None or self._base[0] != key:
            with torch.no_grad():
                params = self.problem.parameters(self.problem.prior.from_unconstrained(torch.from_numpy(z[:1].copy())))
            jr = {k: v for k, v in params.items() if k in PARAMETERS}
            derived = [k for k in ("C1", "C2", "C3", "C4") if k not in jr]
            full = {k: v.numpy()[0] for k, v in JansenRit(**jr)._params.items()}
            self._base = (key, full, derived)
        _, full, derived = self._base
        out = dict(full)
        theta = self._transform(z[:, [i, j]], columns=(i, j))[0]
        for c, name in enumerate(self.replace):
            out[name] = theta[:, c]
        if "C" in self.replace:
            from jrinfer.model import _CONNECTIVITY_RATIOS

            for k in derived:
                out[k] = _CONNECTIVITY_RATIOS[k] * out["C"]
        return out

    def _jr_natural_full(self, z: np.ndarray) -> dict:
        """As :meth:`_jr_natural` for rows that may differ anywhere (a one-batch cache)."""
        key = z.tobytes()
        if self._full is not None and self._full[0] == key:
            return self._full[1]
        with torch.no_grad():
            params = self.problem.parameters(self.problem.prior.from_unconstrained(torch.from_numpy(z.copy())))
        jr = JansenRit(**{k: v for k, v in params.items() if k in PARAMETERS})
        out = {k: v.numpy() for k, v in jr._params.items()}
        self._full = (key, out)
        return out

    def _pole_np(self, z: np.ndarray, y: np.ndarray, lam: np.ndarray, *, rows_differ: bool = False):
        """Continue the equilibrium ``y`` and the pole ``lam`` to a batch ``z`` ``(B, n)`` by Newton (NumPy).

        Returns ``(log sigma, omega, y, lam)``; NaN where Newton does not
        converge or ``sigma <= 0`` (the caller checks the result against the
        full eigen-decomposition at the end of a solve).
        """
        p = self._jr_natural_full(z) if rows_differ else self._jr_natural(z)
        e0, v0, r = p["e0"], p["v0"], p["r"]
        ke, ki = p["A"] / p["a"], p["B"] / p["b"]

        def sig(x):
            return 2.0 * e0 / (1.0 + np.exp(np.clip(r * (v0 - x), -700, 700)))

        def slope(x):
            s = 1.0 / (1.0 + np.exp(np.clip(r * (v0 - x), -700, 700)))
            return 2.0 * e0 * r * s * (1.0 - s)

        y = np.array(y, dtype=np.float64)
        ok = np.ones(y.shape, dtype=bool)
        for _ in range(50):
            v = ke * (p["p_mean"] + p["C2"] * sig(p["C1"] * y)) - ki * p["C4"] * sig(p["C3"] * y)
            g = ke * sig(v) - y
            dv = ke * p["C2"] * p["C1"] * slope(p["C1"] * y) - ki * p["C4"] * p["C3"] * slope(p["C3"] * y)
            step = g / (ke * slope(v) * dv - 1.0)
            y = y - step
            if np.all(np.abs(step) <= 1e-14 * np.maximum(np.abs(y), 1e-3)):
                break
        else:
            ok &= np.abs(step) <= 1e-10 * np.maximum(np.abs(y), 1e-3)
        v = ke * (p["p_mean"] + p["C2"] * sig(p["C1"] * y)) - ki * p["C4"] * sig(p["C3"] * y)
        g0, g1, g2 = slope(v), slope(p["C1"] * y), slope(p["C3"] * y)
        a, b, aa, bb = p["a"], p["b"], p["A"] * p["a"], p["B"] * p["b"]
        kE, kI = p["C1"] * p["C2"] * g1 * aa, p["C3"] * p["C4"] * g2 * bb
        lam = np.array(lam, dtype=np.complex128)
        for _ in range(50):
            q = (lam + a) ** 4 * (lam + b) ** 2 - g0 * aa * (kE * (lam + b) ** 2 - kI * (lam + a) ** 2)
            dq = (4 * (lam + a) ** 3 * (lam + b) ** 2 + 2 * (lam + a) ** 4 * (lam + b)
                  - 2 * g0 * aa * (kE * (lam + b) - kI * (lam + a)))
            step = q / dq
            lam = lam - step
            if np.all(np.abs(step) <= 1e-14 * np.abs(lam)):
                break
        else:
            ok &= np.abs(step) <= 1e-10 * np.abs(lam)
        ok &= np.isfinite(lam) & (lam.real < 0) & (lam.imag > 0) & np.isfinite(y)
        with np.errstate(invalid="ignore", divide="ignore"):
            ls = np.where(ok, np.log(np.where(ok, -lam.real, 1.0)), np.nan)
        return ls, np.where(ok, lam.imag, np.nan), y, lam

    def solve(self, u: np.ndarray, start=None):
        """``z`` with ``to_u(z) = u`` (``u`` ``(n_params,)``), or None where no preimage is found.

        Newton on ``z_r`` with a forward-difference Jacobian, the equilibrium
        and the pole continued along the way (NumPy), the step halved until
        the pole exists and the residual in ``(log sigma, omega / 2 pi)``
        falls; from the last solution (warm start, with a first-order
        predictor), else by continuation from the last solution's ``u``
        (:attr:`HOMOTOPY_STEPS` solves), else from the best point of a grid
        around the reference. A solution is
        accepted only if the full eigen-decomposition at it confirms that the
        pole is the least-damped one of the upper equilibrium (then it is a
        preimage whatever the start; see :meth:`check`).
        """
        self.n_solves += 1
        u = np.asarray(u, dtype=np.float64)
        if u.shape != (self.problem.n_params,):
            raise ValueError(f"u must have shape ({self.problem.n_params},), got {u.shape}")
        target = np.array([u[self.index[0]], u[self.index[1]]])
        i, j = self.index
        if np.isfinite(u).all():
            starts = [start] if start is not None else []
            # first-order predictors from the nearest recent solutions: dz_r = J^-1 (du_r - J_o du_o)
            for ru, rzr, ry, rlam, jo in self._nearest(u):
                du = u - ru
                rhs = du[[i, j]] - np.delete(jo, [i, j], 1) @ np.delete(du, [i, j])
                try:
                    dzr = np.linalg.solve(jo[:, [i, j]], rhs)
                except np.linalg.LinAlgError:
                    continue
                if np.isfinite(dzr).all() and np.abs(dzr).max() < 0.5:
                    starts.append((rzr + dzr, ry, rlam))
            if self._last is not None:
                starts.append(self._last)
            for s in starts:
                out = self._newton(u, target, *s)
                if out is not None and self.check(out[0], target, out[1], out[2]):
                    return out[0]
            # continuation: march u from the last solution's in HOMOTOPY_STEPS solves, then the cold grid
            near = self._nearest(u, 1)
            anchors = [near[0]] if near else []
            for anchor in anchors + [None]:
                if anchor is not None:
                    self._last = anchor[1:4]
                z = self._homotopy(u, anchor[0]) if anchor is not None else None
                if z is None and anchor is None:
                    s = self._grid_start(u, target)
                    out = self._newton(u, target, *s) if s is not None else None
                    z = out[0] if out is not None and self.check(out[0], target, out[1], out[2]) else None
                if z is not None:
                    return z
        self.n_failed += 1
        if len(self.failed_u) < self.KEEP_FAILED:
            self.failed_u.append(u.copy())
        return None

    #: Solutions (with their Jacobians) kept as warm starts.
    N_RECENT = 32

    def _nearest(self, u, k: int = 2):
        """The ``k`` recent solutions ``(u, z_r, y0, pole, du_r/dz)`` nearest to ``u`` (omega in Hz)."""
        if not self._recent:
            return []
        scale = np.ones(u.shape[0])
        scale[self.index[1]] = 1.0 / (2 * math.pi)
        d = [float(np.sum(((r[0] - u) * scale) ** 2)) for r in self._recent]
        return [self._recent[m] for m in np.argsort(d)[:k]]

    #: Sub-steps of the continuation from the last solution when the direct warm start fails.
    HOMOTOPY_STEPS = 16

    def _homotopy(self, u, anchor):
        """Solve along ``anchor + t (u - anchor)``, ``t = 1/K .. 1``, each from the last solution; None on failure."""
        i, j = self.index
        z = None
        u_prev = anchor
        for t in np.linspace(0.0, 1.0, self.HOMOTOPY_STEPS + 1)[1:]:
            ut = anchor + t * (u - anchor)
            zr, y, lam = self._last
            z_prev = u_prev.copy()
            z_prev[i], z_prev[j] = zr
            # first-order predictor along the path (the sheet of stable parameters is thin: a step in the other
            # coordinates at fixed z_r can leave it)
            jo = self._derivatives_np(z_prev[None, :], np.atleast_1d(y), np.atleast_1d(lam))[0]
            du = ut - u_prev
            rhs = du[[i, j]] - np.delete(jo, [i, j], 1) @ np.delete(du, [i, j])
            try:
                zr = zr + np.linalg.solve(jo[:, [i, j]], rhs)
            except np.linalg.LinAlgError:
                return None
            out = self._newton(ut, ut[[i, j]], zr, y, lam)
            u_prev = ut
            if out is None or not self.check(out[0], ut[[i, j]], out[1], out[2]):
                return None
            z = out[0]
        return z

    def check(self, z: np.ndarray, target: np.ndarray, y=None, lam=None) -> bool:
        """Whether ``z`` has the pole ``target = (log sigma, omega)`` as the least-damped pole of its upper equilibrium.

        With the continued roots ``y``, ``lam`` of a solve: ``y`` must be the
        largest root of the equilibrium equation (a 256-point grid of its
        range, extrema between grid points certified on a fine local grid as
        in :meth:`jrinfer.JansenRit.fixed_points`) and ``lam`` the rightmost
        root of the characteristic polynomial (all six, NumPy); where that is
        not clear-cut, and without roots, the full torch search decides. On
        success the roots become the next warm start.
        """
        verdict = None
        if y is not None:
            verdict = self._check_np(z, float(np.ravel(y)[0]), complex(np.ravel(lam)[0]))
        if verdict is None:
            with torch.no_grad():
                ls, om, ok, yt, lamt = self.forward(torch.from_numpy(z[None, :].copy()), roots=True)
            verdict = (bool(ok[0]) and abs(float(ls[0]) - target[0]) < 1e-8
                       and abs(float(om[0]) - target[1]) < 1e-8 * 2 * math.pi)
            y, lam = yt.numpy(), lamt.numpy()
            self.n_full_checks += 1
        if verdict:
            self._last = (z[list(self.index)].copy(), np.atleast_1d(y).copy(), np.atleast_1d(lam).copy())
        return verdict

    def _check_np(self, z: np.ndarray, y: float, lam: complex):
        """True / False, or None where the cheap check cannot decide (see :meth:`check`)."""
        p = {k: float(np.ravel(v)[0]) for k, v in self._jr_natural(z[None, :]).items()}
        e0, v0, r = p["e0"], p["v0"], p["r"]
        ke, ki = p["A"] / p["a"], p["B"] / p["b"]

        def sig(x):
            return 2.0 * e0 / (1.0 + np.exp(np.clip(r * (v0 - x), -700, 700)))

        def resid(x):
            v = ke * (p["p_mean"] + p["C2"] * sig(p["C1"] * x)) - ki * p["C4"] * sig(p["C3"] * x)
            return ke * sig(v) - x

        y_max = 2.0 * e0 * p["A"] / p["a"]
        grid = y_max * np.linspace(0.0, 1.0, 256)
        g = resid(grid)
        pos = g > 0
        change = np.nonzero(pos[:-1] != pos[1:])[0]
        if change.size == 0:
            return None
        ku = int(change[-1])
        tol = 1e-9 * y_max
        if not grid[ku] - tol <= y <= grid[ku + 1] + tol:
            return False  # not the largest root: another branch
        d = np.diff(g)
        interior = ((d[:-1] < 0) & (d[1:] > 0) & pos[1:-1]) | ((d[:-1] > 0) & (d[1:] < 0) & ~pos[1:-1])
        same = (pos[:-2] == pos[1:-1]) & (pos[2:] == pos[1:-1])
        for jg in np.nonzero(interior & same)[0] + 1:
            if jg < ku:
                continue  # below the upper root's bracket: cannot hide a larger root
            xf = np.linspace(grid[jg - 1], grid[jg + 1], 65)
            gf = resid(xf)
            sg = (1.0 if pos[jg] else -1.0) * gf
            d2 = np.abs(gf[2:] - 2.0 * gf[1:-1] + gf[:-2]).max()
            if not sg.min() > 2.0 * d2:
                return None
        # the characteristic polynomial's six roots: lam must be the rightmost and complex
        slope = lambda x: 2.0 * e0 * r / (1.0 + np.exp(r * (v0 - x))) * (1.0 - 1.0 / (1.0 + np.exp(r * (v0 - x))))
        v = ke * (p["p_mean"] + p["C2"] * sig(p["C1"] * y)) - ki * p["C4"] * sig(p["C3"] * y)
        a, b, aa, bb = p["a"], p["b"], p["A"] * p["a"], p["B"] * p["b"]
        c3 = slope(v) * aa
        kE, kI = p["C1"] * p["C2"] * slope(p["C1"] * y) * aa, p["C3"] * p["C4"] * slope(p["C3"] * y) * bb
        P = np.polynomial.polynomial
        pa, pb = P.polypow([a, 1.0], 4), P.polypow([b, 1.0], 2)
        q = P.polysub(P.polymul(pa, pb), c3 * P.polysub(kE * pb, kI * P.polypow([a, 1.0], 2)))
        roots = np.roots(q[::-1])
        right = roots[np.argmax(roots.real)]
        close = abs(right - lam) <= 1e-6 * abs(lam)
        if not close:
            # a conjugate pair ties in real part: compare with the upper half-plane member
            right = roots[np.argmin(np.abs(roots - lam))]
            close = abs(right - lam) <= 1e-6 * abs(lam) and right.real >= roots.real.max() - 1e-6 * abs(lam)
        return bool(close and lam.imag > 1e-9 * abs(lam) and lam.real < 0)

    #: Half-widths of the cold-start grid around the reference, in the prior's unconstrained coordinates.
    GRID_HALF_WIDTH = (0.5, 0.25)
    GRID_SHAPE = (41, 5)

    def _grid_start(self, u, target):
        """The valid ``(z_r, y, lam)`` of a grid around the reference with the smallest residual, or None."""
        i, j = self.index
        gi = self.reference[i] + np.linspace(-1.0, 1.0, self.GRID_SHAPE[0]) * self.GRID_HALF_WIDTH[0]
        gj = self.reference[j] + np.linspace(-1.0, 1.0, self.GRID_SHAPE[1]) * self.GRID_HALF_WIDTH[1]
        zi, zj = np.meshgrid(gi, gj, indexing="ij")
        z = np.repeat(u[None, :], zi.size, 0)
        z[:, i], z[:, j] = zi.ravel(), zj.ravel()
        with torch.no_grad():
            ls, om, ok, y, lam = self.forward(torch.from_numpy(z), roots=True)
        ok = ok.numpy()
        if not ok.any():
            return None
        r = np.abs(ls.numpy() - target[0]) + np.abs(om.numpy() - target[1]) / (2 * math.pi)
        r[~ok] = np.inf
        k = int(np.argmin(r))
        return z[k, [i, j]], y[k : k + 1].numpy(), lam[k : k + 1].numpy()

    def _newton(self, u, target, zr, y, lam):
        i, j = self.index
        scale = np.array([1.0, 1.0 / (2 * math.pi)])
        h = 1e-7

        def at(zrs, y, lam):
            z = np.repeat(u[None, :], zrs.shape[0], 0)
            z[:, i], z[:, j] = zrs[:, 0], zrs[:, 1]
            nb = (zrs.shape[0],)
            ls, om, y2, lam2 = self._pole_np(z, np.broadcast_to(y, nb), np.broadcast_to(lam, nb))
            return np.stack([ls - target[0], om - target[1]], -1) * scale, y2, lam2

        zr = np.asarray(zr, dtype=np.float64).copy()
        res, y, lam = at(zr[None, :], y, lam)
        res, y, lam = res[0], y[:1], lam[:1]
        if not np.isfinite(res).all():
            return None
        for _ in range(self.MAX_ITER):
            self.n_iterations += 1
            if np.abs(res).max() < self.TOL:
                z = u.copy()
                z[i], z[j] = zr
                return z, y, lam
            fd, _, _ = at(zr[None, :] + h * np.eye(2), y, lam)
            jm = (fd - res).T / h
            if not np.isfinite(jm).all():
                return None
            try:
                step = -np.linalg.solve(jm, res)
            except np.linalg.LinAlgError:
                return None
            norm = np.abs(step).max()
            if norm > 0.5:  # at most 0.5 per step in the prior's unconstrained coordinates
                step *= 0.5 / norm
            t = 0.5 ** np.arange(10)
            trial, ty, tlam = at(zr[None, :] + t[:, None] * step[None, :], y, lam)
            norms = np.where(np.isfinite(trial).all(1), np.abs(trial).max(1), np.inf)
            better = np.nonzero(norms < np.abs(res).max() * (1 - 1e-4 * t))[0]
            if better.size == 0:
                if np.abs(res).max() < self.TOL_FLOOR:  # at the round-off of the pole (large a, C): converged
                    z = u.copy()
                    z[i], z[j] = zr
                    return z, y, lam
                return None
            k = int(better[0])
            zr, res, y, lam = zr + t[k] * step, trial[k], ty[k : k + 1], tlam[k : k + 1]
        return None

    # ------------------------------------------------------------------ density
    #: Step (prior-unconstrained units) of the central differences of log|det J| for its gradient.
    FD_STEP = 2e-6

    def log_density_and_grad(self, u: np.ndarray):
        """``(log p(u), d log p / du, z)``: the log joint at ``z(u)`` minus ``log |det J|``, and its gradient.

        ``J = d(log sigma, omega)/dz_r`` and the pole's derivatives in every
        ``z`` are exact (implicit-function theorem); the gradient of ``log
        |det J|`` in ``z`` is a central difference of the exact ``J`` (step
        :attr:`FD_STEP`, one batched evaluation). ``(-inf, zeros, None)``
        where the solve fails or the log joint is not finite (never NaN).
        """
        n = self.problem.n_params
        z = self.solve(u)
        if z is None:
            return -math.inf, np.zeros(n), None
        lj, glj = self.problem.log_joint_and_grad(torch.from_numpy(z.copy()))
        lj, glj = float(lj), np.asarray(glj, dtype=np.float64)
        if not (math.isfinite(lj) and np.isfinite(glj).all()):
            return -math.inf, np.zeros(n), z
        i, j = self.index
        ks = self.pole_dependent
        pts = np.repeat(z[None, :], 1 + 2 * len(ks), 0)
        for m, k in enumerate(ks):
            pts[1 + 2 * m, k] += self.FD_STEP
            pts[2 + 2 * m, k] -= self.FD_STEP
        # the roots at the shifted points: continued from the solution's (checked) roots
        _, y0, lam0 = self._last
        pls, _, ys, lams = self._pole_np(pts, np.full(len(pts), y0[0]), np.full(len(pts), lam0[0]), rows_differ=True)
        if not np.isfinite(pls).all():
            return -math.inf, np.zeros(n), z
        jac_all = self._derivatives_np(pts, ys, lams)
        dets = jac_all[:, 0, i] * jac_all[:, 1, j] - jac_all[:, 0, j] * jac_all[:, 1, i]
        logdet = np.log(np.abs(dets))
        glogdet = np.zeros(n)
        for m, k in enumerate(ks):
            glogdet[k] = (logdet[1 + 2 * m] - logdet[2 + 2 * m]) / (2 * self.FD_STEP)
        jo = jac_all[0]  # d u_r / d z, (2, n)
        self._recent.append((np.array(u, dtype=np.float64), *self._last, jo.copy()))  # warm starts of the next solves
        if len(self._recent) > self.N_RECENT:
            self._recent.pop(0)
        jac = jo[:, [i, j]]
        gh = glj - glogdet  # gradient in z of h = log joint - log|det J|
        value = lj - float(logdet[0])
        # chain rule through z(u): dz_r/du_r = J^-1, dz_r/du_o = -J^-1 J_o
        gr = np.linalg.solve(jac.T, gh[[i, j]])
        grad = gh.copy()
        grad[[i, j]] = 0.0
        grad = grad - jo.T @ gr
        grad[[i, j]] = gr
        if not (math.isfinite(value) and np.isfinite(grad).all()):
            return -math.inf, np.zeros(n), z
        return value, grad, z

    def _derivatives_np(self, z: np.ndarray, y: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """Exact ``d(log sigma, omega)/dz`` ``(B, 2, n)`` at a batch ``z`` with converged roots ``y``, ``lam`` (NumPy).

        The implicit-function theorem on ``G(y; theta) = 0`` (the equilibrium)
        and ``Q(lambda; c(y, theta)) = 0`` (the characteristic polynomial,
        coefficients ``c = (a, b, g0 A a, kE, kI)``): ``dy = -G_theta / G_y``,
        ``dlambda = -(dQ/dc . dc) / Q'(lambda)``, with the partial derivatives
        of the real functions ``G`` and ``c`` by complex-step differentiation
        (exact to round-off; Squire & Trapp 1998) and ``dtheta/dz`` of the
        prior's transforms by autograd. Same values as the torch path
        :meth:`_derivatives` (checked in the tests), a fraction of its cost.
        """
        nb, n = z.shape
        ks = self.pole_dependent
        theta, dtheta = self._transform(z)
        full = self._jr_natural_full(z)
        names = [self.problem.names[k] for k in ks]
        derived = [k for k in ("C1", "C2", "C3", "C4") if k not in self._jr_given()]
        h = 1e-30

        def params(th, yc):  # complex-safe: every JR parameter, the free ones from th (dict name -> array)
            p = {k: v.astype(np.complex128) for k, v in full.items()}
            for name in names:
                p[name] = th[name]
            if "C" in names:
                from jrinfer.model import _CONNECTIVITY_RATIOS

                for k in derived:
                    p[k] = _CONNECTIVITY_RATIOS[k] * p["C"]
            return p, yc

        def parts(p, yc):
            e0, v0, r = p["e0"], p["v0"], p["r"]

            def sig(x):
                return 2.0 * e0 / (1.0 + np.exp(r * (v0 - x)))

            def slope(x):
                sx = 1.0 / (1.0 + np.exp(r * (v0 - x)))
                return 2.0 * e0 * r * sx * (1.0 - sx)

            ke, ki = p["A"] / p["a"], p["B"] / p["b"]
            v = ke * (p["p_mean"] + p["C2"] * sig(p["C1"] * yc)) - ki * p["C4"] * sig(p["C3"] * yc)
            g = p["A"] / p["a"] * sig(v) - yc
            aa, bb = p["A"] * p["a"], p["B"] * p["b"]
            kE = p["C1"] * p["C2"] * slope(p["C1"] * yc) * aa
            kI = p["C3"] * p["C4"] * slope(p["C3"] * yc) * bb
            return g, (p["a"] * np.ones_like(yc), p["b"] * np.ones_like(yc), slope(v) * aa, kE, kI)

        base = {name: theta[:, k].astype(np.complex128) for name, k in zip(names, ks)}
        y = np.asarray(y, dtype=np.float64)
        g_y = parts(*params(base, y + 1j * h))[0].imag / h
        c0 = [np.real(c) for c in parts(*params(base, y.astype(np.complex128)))[1]]
        a, b, c3, kE, kI = c0
        lam = np.asarray(lam, dtype=np.complex128)
        la, lb = lam + a, lam + b
        dq = 4 * la**3 * lb**2 + 2 * la**4 * lb - 2 * c3 * (kE * lb - kI * la)
        dq_dc = (4 * la**3 * lb**2 + 2 * c3 * kI * la, 2 * la**4 * lb - 2 * c3 * kE * lb,
                 -(kE * lb**2 - kI * la**2), -c3 * lb**2, c3 * la**2)
        jac = np.zeros((nb, 2, n))
        for name, k in zip(names, ks):
            th = dict(base)
            th[name] = base[name] + 1j * h
            g_t = parts(*params(th, y.astype(np.complex128)))[0].imag / h
            y_k = -g_t / g_y
            dc = [c.imag / h for c in parts(*params(th, y + 1j * h * y_k))[1]]
            lam_k = -sum(q * c for q, c in zip(dq_dc, dc)) / dq
            jac[:, 0, k] = lam_k.real / lam.real * dtheta[:, k]
            jac[:, 1, k] = lam_k.imag * dtheta[:, k]
        return jac

    def _transform(self, z: np.ndarray, columns=None):
        """Natural values ``theta(z)`` and ``dtheta/dz`` (coordinate-wise transforms), ``(B, n)`` each (NumPy).

        ``columns``: the problem's parameter indices of ``z``'s columns (default: all, in order).
        """
        from jrinfer.prior import LogNormal, LogUniform, Normal, Uniform

        theta, dtheta = np.empty_like(z), np.empty_like(z)
        generic = []
        dists = list(self.problem.prior.distributions.values())
        cols = range(len(dists)) if columns is None else columns
        for k, d in enumerate(dists[c] for c in cols):
            zk = z[:, k]
            if isinstance(d, LogNormal):
                theta[:, k] = dtheta[:, k] = np.exp(zk)
            elif isinstance(d, Normal):
                theta[:, k], dtheta[:, k] = zk, 1.0
            elif isinstance(d, (Uniform, LogUniform)):
                sg = 1.0 / (1.0 + np.exp(-zk))
                if isinstance(d, Uniform):
                    theta[:, k] = d.low + (d.high - d.low) * sg
                    dtheta[:, k] = (d.high - d.low) * sg * (1.0 - sg)
                else:
                    lr = math.log(d.high / d.low)
                    theta[:, k] = d.low * np.exp(lr * sg)
                    dtheta[:, k] = theta[:, k] * lr * sg * (1.0 - sg)
            else:
                generic.append(k)
        for k in generic:  # any other distribution: its own transform, differentiated by autograd
            zt = torch.from_numpy(z[:, k].copy()).requires_grad_(True)
            with torch.enable_grad():
                th = dists[list(cols)[k]].from_unconstrained(zt)
                (g,) = torch.autograd.grad(th.sum(), zt)
            theta[:, k], dtheta[:, k] = th.detach().numpy(), g.numpy()
        return theta, dtheta

    def _jr_given(self) -> set:
        """The Jansen-Rit parameters the problem sets (free or fixed); ``C1..C4`` absent are derived from ``C``."""
        if self._given is None:
            z = self.problem.prior.to_unconstrained(self.problem.prior.median())
            with torch.no_grad():
                params = self.problem.parameters(self.problem.prior.from_unconstrained(z))
            self._given = {k for k in params if k in PARAMETERS}
        return self._given

    def _derivatives(self, z: np.ndarray, start=None):
        """Pole and its exact derivatives ``d(log sigma, omega)/dz`` ``(B, 2, n)`` at a batch ``z`` (NumPy)."""
        zt = torch.from_numpy(z.copy()).requires_grad_(True)
        with torch.enable_grad():
            ls, om, ok = self.forward(zt, start=start)
            g1 = torch.autograd.grad(torch.where(ok, ls, 0.0).sum(), zt, retain_graph=True)[0]
            g2 = torch.autograd.grad(torch.where(ok, om, 0.0).sum(), zt)[0]
        return ls.detach().numpy(), om.detach().numpy(), ok.numpy(), torch.stack([g1, g2], 1).numpy()
