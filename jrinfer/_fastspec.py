"""Fused NumPy log-likelihood + gradient of a transfer-method spectrum (the path a sampler calls).

:class:`SpectrumObservation` offers it through
:meth:`~jrinfer.observation.Observation.log_likelihood_function`; the
problem composes it with the prior transform. It computes exactly what
``observation.log_likelihood(observation.predict(params, data), params, data)``
computes for ``method="transfer"`` (tests: values to 1e-10, gradients against
torch autograd through the generic path to 1e-8), without an autograd graph:

* the equilibrium by the NumPy bracketing + safeguarded Newton search of
  :mod:`jrinfer.model`, started from the previous call's root (a warm start
  that saves iterations and never changes the result);
* the linearised spectrum on the fine grid, the dominant pole pair, its exact
  windowed expectation and the window matrix, forward in NumPy;
* the gradient in reverse mode through the frequency-sized arrays down to a
  few scalars per parameter set (time constants, gains, sigmoid slopes, pole
  and residue), then forward mode (12 tangent directions, :class:`_Dual`)
  through the scalar chain: equilibrium (implicit function theorem), slopes,
  pole (implicit function theorem on the characteristic polynomial) and
  residue.

Everything is vectorised over a leading batch axis.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from jrinfer import model as _model

# directions of the forward-mode tangents: the flat JR parameters
_FLAT = _model._JR_FLAT  # A, B, a, b, C1, C2, C3, C4, e0, v0, r, p_mean
_RATIOS = _model._CONNECTIVITY_RATIOS


class _Dual:
    """Forward-mode number: value ``v`` (batch,) and tangents ``t`` (k, batch); real or complex."""

    __slots__ = ("v", "t")
    __array_ufunc__ = None  # ndarray (op) _Dual defers to _Dual's reflected operators

    def __init__(self, v, t):
        self.v = v
        self.t = t

    def __add__(self, o):
        if isinstance(o, _Dual):
            return _Dual(self.v + o.v, self.t + o.t)
        return _Dual(self.v + o, self.t)

    __radd__ = __add__

    def __sub__(self, o):
        if isinstance(o, _Dual):
            return _Dual(self.v - o.v, self.t - o.t)
        return _Dual(self.v - o, self.t)

    def __rsub__(self, o):
        return _Dual(o - self.v, -self.t)

    def __neg__(self):
        return _Dual(-self.v, -self.t)

    def __mul__(self, o):
        if isinstance(o, _Dual):
            return _Dual(self.v * o.v, self.t * o.v + self.v * o.t)
        return _Dual(self.v * o, self.t * o)

    __rmul__ = __mul__

    def __truediv__(self, o):
        if isinstance(o, _Dual):
            q = self.v / o.v
            return _Dual(q, (self.t - q * o.t) / o.v)
        return _Dual(self.v / o, self.t / o)

    def __rtruediv__(self, o):
        q = o / self.v
        return _Dual(q, -q * self.t / self.v)

    def __pow__(self, n: int):
        vn1 = self.v ** (n - 1)
        return _Dual(vn1 * self.v, (n * vn1) * self.t)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _dsig(x: _Dual) -> _Dual:
    s = _sig(x.v)
    return _Dual(s, (s * (1.0 - s)) * x.t)


def _series(beta, em1, shift: int, terms: int = 8):
    """``(e^beta - sum_{n<shift} beta^n/n!) / beta^shift`` (shift 1..3), series near 0 (as spectral._series_or_direct)."""
    small = np.abs(beta) < 0.1
    bs = np.where(small, beta, 0.0)
    bd = np.where(small, 1.0, beta)
    acc = np.full_like(bs, 1.0 / math.factorial(terms - 1 + shift))
    for n in range(terms - 2, -1, -1):
        acc = acc * bs + 1.0 / math.factorial(n + shift)
    if shift == 1:
        direct = em1 / bd
    elif shift == 2:
        direct = (em1 - bd) / (bd * bd)
    else:
        direct = (em1 - bd - 0.5 * bd * bd) / (bd * bd * bd)
    return np.where(small, acc, direct)


def _lag_integral(z, seg: float, window: str):
    """``I(z)`` of :func:`jrinfer.spectral._lag_integral` and its derivative ``I'(z)``."""
    zeta = z * seg
    em1 = np.expm1(zeta)
    if window == "boxcar":
        e1 = _series(zeta, em1, 2)
        e2 = 2.0 * _series(zeta, em1, 3)
        return seg * e1, seg * seg * (e1 - e2)
    tp = 2j * math.pi
    beta = np.stack([zeta, zeta + tp, zeta - tp])
    e1 = _series(beta, em1, 2)
    e2 = 2.0 * _series(beta, em1, 3)
    e0 = _series(beta[1:], em1, 1)
    d1 = e1 - e2  # E1'
    d0 = e0 - e1[1:]  # E0'
    h = (2.0 / 3.0) * e1[0] + (e1[1] + e1[2]) / 6.0 + (e0[0] - e0[1]) / (2.0 * tp)
    dh = (2.0 / 3.0) * d1[0] + (d1[1] + d1[2]) / 6.0 + (d0[0] - d0[1]) / (2.0 * tp)
    return seg * h, seg * seg * dh


class SpectralLogLikelihood:
    """Log-likelihood and its gradient in natural units for a transfer-method spectrum.

    Built by :meth:`SpectrumObservation.log_likelihood_function` (not public).

    Parameters
    ----------
    observation : SpectrumObservation
        ``method="transfer"``, ``noise_on="input"``.
    data : SpectrumData
    names : tuple of str
        Free parameters, order of ``theta``'s last axis.
    fixed : dict
        Values of the fixed parameters.

    Calling it on ``theta`` (NumPy float64, ``(nb, n)``) returns ``(ll, grad)``
    of shapes ``(nb,)`` and ``(nb, n)``: ``-inf`` and a zero gradient where the
    equilibrium is unstable or the parameters are not finite/in range.
    """

    def __init__(self, observation, data, names, fixed):
        obs = observation
        self.names = tuple(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.fixed = {k: float(v) for k, v in fixed.items()}
        self.freqs = data.freqs.detach().numpy().astype(np.float64)
        from jrinfer.observation import _POWER_UNIT_PER_MV2

        self.u = float(_POWER_UNIT_PER_MV2[data.units])
        seg = obs._seg_length(data)
        if seg is not None and obs.window is not None:
            wm = obs._window_matrix(data.freqs, seg)
            self.fine = wm.fine_freqs.numpy().astype(np.float64)
            self.weights = np.ascontiguousarray(wm.weights.numpy())  # (F, G)
            self.seg, self.window = float(wm.seg_length), wm.window
            s_data = 2j * math.pi * self.freqs
            self.s_data = s_data
        else:
            self.fine = self.freqs
            self.weights = None
        self.w_fine = 2.0 * math.pi * self.fine
        self.dt = None if obs.noise == "white" else float(obs.dt)
        self.aperiodic, self.floor = obs.aperiodic, obs.floor
        self.likelihood = obs.likelihood
        power = data.power.detach().numpy().astype(np.float64)  # (C, F)
        self.y = power
        self.logy = np.log(power)
        self.n_channels = power.shape[0]
        self.f_safe = np.maximum(self.freqs, 1e-3)
        self.log_f = np.log(self.f_safe)
        if self.likelihood == "whittle":
            k = float(data.n_segments)
            self.k = k
            self.whittle_const = power.shape[0] * power.shape[1] * (k * math.log(k) - math.lgamma(k)) + (
                (k - 1) * self.logy
            ).sum()
        self.guess = None  # warm start: the last equilibrium's y0, shape (nb,)

    # ------------------------------------------------------------------ helpers
    def _column(self, theta, name):
        if name in self.index:
            return theta[:, self.index[name]]
        if name in self.fixed:
            return np.full(theta.shape[0], self.fixed[name])
        return np.full(theta.shape[0], float(_model.PARAMETERS[name].default))

    def __call__(self, theta: np.ndarray):
        theta = np.asarray(theta, dtype=np.float64)
        nb, n = theta.shape
        ll = np.full(nb, -math.inf)
        grad = np.zeros((nb, n))
        col = {k: self._column(theta, k) for k in ("A", "B", "a", "b", "C", "e0", "v0", "r", "p_mean", "p_std")}
        positive = ("A", "B", "a", "b", "C", "e0", "r", "p_std")
        ok = np.isfinite(theta).all(-1)
        for k in positive:
            ok &= col[k] > 0
        ok &= np.isfinite(col["v0"]) & np.isfinite(col["p_mean"]) & (col["p_mean"] >= 0)
        if not ok.any():
            return ll, grad
        rows = np.nonzero(ok)[0]
        sub = theta[rows] if rows.size < nb else theta
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            v, g, valid = self._evaluate(sub)
        keep = valid & np.isfinite(v) & np.isfinite(g).all(-1)
        ll[rows[keep]] = v[keep]
        grad[rows[keep]] = g[keep]
        return ll, grad

    # ------------------------------------------------------------------ the work
    def _evaluate(self, theta):
        nb = theta.shape[0]
        col = {k: self._column(theta, k) for k in ("A", "B", "a", "b", "C", "e0", "v0", "r", "p_mean", "p_std")}
        p = {k: col[k] for k in ("A", "B", "a", "b", "e0", "v0", "r", "p_mean", "p_std")}
        for k, ratio in _RATIOS.items():
            p[k] = ratio * col["C"]
        # 1. equilibrium (values), warm-started
        guess = self.guess if self.guess is not None and self.guess.shape == (nb,) else None
        pn = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in p.items()}
        eq = _model._selected_equilibrium_numpy(pn, torch.Size((nb,)), 256, "upper", guess)
        if eq is None:  # a possible close pair of roots: the full torch search
            pd = {k: torch.from_numpy(v) for k, v in pn.items()}
            gt = None if guess is None else torch.from_numpy(guess)
            eq = _model._fixed_points(pd, torch.Size((nb,)), 256, which="upper", initial_guess=gt)
        y0v = eq.state[..., 0].numpy().copy()
        self.guess = y0v.copy()
        ev = eq.eigenvalues.numpy()
        stable = eq.stable.numpy().copy()
        # 2. scalar chain in forward mode (12 directions: _FLAT)
        k = len(_FLAT)
        eye = np.eye(k)
        d = {name: _Dual(p[name], np.repeat(eye[i][:, None], nb, 1)) for i, name in enumerate(_FLAT)}
        A, B, a, b = d["A"], d["B"], d["a"], d["b"]
        C1, C2, C3, C4 = d["C1"], d["C2"], d["C3"], d["C4"]
        e0, v0, r, pm = d["e0"], d["v0"], d["r"], d["p_mean"]
        ke, ki = A / a, B / b
        zero_t = np.zeros((k, nb))

        def S(x):
            return 2.0 * e0 * _dsig(r * (x - v0))

        def slope(x):
            q = _dsig(r * (x - v0))
            return 2.0 * e0 * r * q * (1.0 - q)

        # implicit function theorem for y0: G(y0; theta) = ke S(v(y0)) - y0 = 0
        y0c = _Dual(y0v, zero_t)
        vc = ke * (pm + C2 * S(C1 * y0c)) - ki * C4 * S(C3 * y0c)
        G = ke * S(vc) - y0c
        dv_dy0 = ke.v * C2.v * C1.v * slope(C1 * y0c).v - ki.v * C4.v * C3.v * slope(C3 * y0c).v
        G_y0 = ke.v * slope(vc).v * dv_dy0 - 1.0
        y0 = _Dual(y0v, -G.t / G_y0)
        v = ke * (pm + C2 * S(C1 * y0)) - ki * C4 * S(C3 * y0)
        g0, g1, g2 = slope(v), slope(C1 * y0), slope(C3 * y0)
        u1, u2 = C1 * C2 * g1, C3 * C4 * g2
        # 3. dominant pole and residue (as JansenRit.dominant_mode)
        osc = (ev.imag > 1e-9 * np.abs(ev)) & np.isfinite(ev.real)
        score = np.where(osc, ev.real, -np.inf)
        lam0 = ev[np.arange(nb), score.argmax(-1)]
        has = osc.any(-1)
        lam0 = np.where(has, lam0, -1.0 + 0j)
        aa, bb = A * a, B * b
        kE, kI = u1 * aa, u2 * bb
        g0aa = g0 * aa

        def poly(s, a, b, g0aa, kE, kI, aa, only_q=False):
            """Q(s), Q'(s) of JansenRit.dominant_mode and the input numerator N(s) (Duals or arrays)."""
            sa, sb = s + a, s + b
            sa2, sb2 = sa * sa, sb * sb
            sa4 = sa2 * sa2
            q = sa4 * sb2 - g0aa * (kE * sb2 - kI * sa2)
            if only_q:
                return q, None, None
            dq = 4.0 * (sa2 * sa) * sb2 + 2.0 * sa4 * sb - 2.0 * g0aa * (kE * sb - kI * sa)
            return q, dq, aa * sa2 * sb2

        vals = (a.v, b.v, g0aa.v, kE.v, kI.v, aa.v)
        duals = (a, b, g0aa, kE, kI, aa)
        q0, dq0, _ = poly(lam0, *vals)
        lamv = lam0 - q0 / dq0
        q_t = poly(lamv, *duals, only_q=True)[0].t  # explicit partials of Q at the refined root
        dq_v = poly(lamv, *vals)[1]
        lam = _Dual(lamv, -q_t / dq_v)  # implicit function theorem
        _, dq_l, n_l = poly(lam, *duals)
        q_m, _, n_m = poly(-lam, *duals)
        c1 = n_l * n_m / (dq_l * q_m)  # residue per unit intensity
        use = has & (lamv.real < 0)
        lam_v = np.where(use, lamv, -1.0 + 0j)
        c1v = np.where(use, c1.v, 0.0)
        c1t = np.where(use, c1.t, 0.0)
        lamt = np.where(use, lam.t, 0.0)
        sig2 = col["p_std"] ** 2 * (1.0 if self.dt is None else self.dt)
        cv = sig2 * c1v
        # 4. linearised PSD on the fine grid
        s = 1j * self.w_fine  # (G,)
        av, bv = p["a"][:, None], p["b"][:, None]
        sa, sb = s + av, s + bv
        he = (p["A"] * p["a"])[:, None] / (sa * sa)
        hi = (p["B"] * p["b"])[:, None] / (sb * sb)
        K = u1.v[:, None] * he - u2.v[:, None] * hi
        D = 1.0 - g0.v[:, None] * he * K
        he2 = he.real**2 + he.imag**2
        absD2 = D.real**2 + D.imag**2
        gain_fn = he2 / absD2
        lin = 2.0 * sig2[:, None] * gain_fn
        lam_c, c_c = lam_v[:, None], cv[:, None]
        if self.weights is not None:
            xp = 1.0 / (s - lam_c) - 1.0 / (s + lam_c)
            rest = lin - 4.0 * (c_c * xp).real
            sd = self.s_data
            i_m, di_m = _lag_integral(lam_c - sd, self.seg, self.window)
            i_p, di_p = _lag_integral(lam_c + sd, self.seg, self.window)
            xw = i_m + i_p
            neural = rest @ self.weights.T + 4.0 * (c_c * xw).real
        else:
            neural = lin
        # 5. observation and likelihood
        gain = self._column(theta, "gain")[:, None]
        power = gain**2 * self.u * neural
        if self.aperiodic:
            ap = self._column(theta, "ap_amplitude")[:, None]
            chi = self._column(theta, "ap_exponent")[:, None]
            fpow = self.f_safe ** (-chi)
            power = power + ap * fpow
        if self.floor:
            power = power + self._column(theta, "floor")[:, None]
        logp = np.log(power)
        out = np.zeros((nb, theta.shape[1]))
        if self.likelihood == "gaussian":
            lp = self._column(theta, "log_precision")
            prec = np.exp(lp)
            res = self.logy[None] - logp[:, None, :]  # (nb, C, F)
            ss = (res * res).sum((-2, -1))
            m = res.shape[-2] * res.shape[-1]
            ll = m * (0.5 * lp - 0.5 * math.log(2 * math.pi)) - 0.5 * prec * ss
            dP = prec[:, None] * res.sum(-2) / power
            self._add(out, "log_precision", 0.5 * m - 0.5 * prec * ss)
        else:
            kk = self.k
            ll = self.whittle_const - kk * self.n_channels * logp.sum(-1) - kk * (self.y.sum(0)[None] / power).sum(-1)
            dP = -kk * self.n_channels / power + kk * self.y.sum(0)[None] / power**2
        # reverse: observation parameters
        self._add(out, "gain", (dP * 2.0 * gain * self.u * neural).sum(-1))
        if self.aperiodic:
            self._add(out, "ap_amplitude", (dP * fpow).sum(-1))
            self._add(out, "ap_exponent", -(dP * ap * fpow * self.log_f).sum(-1))
        if self.floor:
            self._add(out, "floor", dP.sum(-1))
        GN = dP * gain**2 * self.u  # cotangent of the neural PSD (nb, F)
        # reverse: window and pole pair -> cotangents of lin, lambda, c (holomorphic: dL = Re(bar dz))
        if self.weights is not None:
            Glin = GN @ self.weights  # (nb, G)
            dxp = 1.0 / (s - lam_c) ** 2 + 1.0 / (s + lam_c) ** 2
            bar_c = 4.0 * ((GN * xw).sum(-1) - (Glin * xp).sum(-1))
            bar_lam = 4.0 * cv * ((GN * (di_m + di_p)).sum(-1) - (Glin * dxp).sum(-1))
        else:
            Glin = GN
            bar_c = np.zeros(nb, dtype=complex)
            bar_lam = np.zeros(nb, dtype=complex)
        bar_sig2 = (Glin * 2.0 * gain_fn).sum(-1) + (bar_c * c1v).real
        Gg = Glin * 2.0 * sig2[:, None]
        # reverse through |he|^2 / |D|^2 to the scalars A, a, B, b, u1, u2, g0
        bar_he = (2.0 * Gg / absD2) * he.conj()
        bar_D = (-2.0 * Gg * gain_fn / absD2) * D.conj()
        g0c = g0.v[:, None]
        bar_g0 = (bar_D * (-he * K)).real.sum(-1)
        bar_K = bar_D * (-g0c * he)
        bar_he = bar_he + bar_D * (-g0c * K) + bar_K * u1.v[:, None]
        bar_hi = -bar_K * u2.v[:, None]
        bar_u1 = (bar_K * he).real.sum(-1)
        bar_u2 = -(bar_K * hi).real.sum(-1)
        t_he = (bar_he * he).real.sum(-1)
        t_hi = (bar_hi * hi).real.sum(-1)
        bar_A = t_he / p["A"]
        bar_a = t_he / p["a"] - 2.0 * (bar_he * he / sa).real.sum(-1)
        bar_B = t_hi / p["B"]
        bar_b = t_hi / p["b"] - 2.0 * (bar_hi * hi / sb).real.sum(-1)
        # forward tangents of those scalars -> the 12 flat parameters
        g12 = (
            bar_A * A.t + bar_a * a.t + bar_B * B.t + bar_b * b.t + bar_u1 * u1.t + bar_u2 * u2.t + bar_g0 * g0.t
            + (bar_lam * lamt).real + (bar_c * sig2 * c1t).real
        )  # (12, nb)
        flat = dict(zip(_FLAT, g12))
        self._add(out, "A", flat["A"])
        self._add(out, "B", flat["B"])
        self._add(out, "a", flat["a"])
        self._add(out, "b", flat["b"])
        self._add(out, "C", sum(_RATIOS[c] * flat[c] for c in _RATIOS))
        for name in ("e0", "v0", "r", "p_mean"):
            self._add(out, name, flat[name])
        self._add(out, "p_std", bar_sig2 * 2.0 * sig2 / col["p_std"])
        return ll, out, stable

    def _add(self, out, name, value):
        i = self.index.get(name)
        if i is not None:
            out[:, i] += value
