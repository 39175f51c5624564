"""Fused NumPy log-likelihood + gradient of a transfer-method spectrum (the path a sampler calls).

:class:`SpectrumObservation` offers it through
:meth:`~jrinfer.observation.Observation.log_likelihood_function`; the
problem composes it with the prior transform. It computes exactly what
``observation.log_likelihood(observation.predict(params, data), params, data)``
computes for ``method="transfer"`` (tests: values to 1e-10, gradients against
torch autograd through the generic path to 1e-8), without an autograd graph:

* the upper equilibrium by the NumPy search of :mod:`jrinfer.model`; for one
  parameter set, Newton from the previous call's root, accepted only when
  interval bounds prove that no root lies above it (else the grid search);
* forward: the sigmoid slopes, the dominant pole (one Newton step on the
  characteristic polynomial ``Q`` from the eigenvalue) and its residue, the
  linearised PSD ``2 sigma^2 |N/Q|^2`` on the window's fine grid, the pole
  pair's exact windowed expectation and the window matrix;
* the gradient in reverse mode, by hand: through the frequency-sized arrays
  down to the polynomial coefficients (six monomial moments of the
  cotangent over ``Q``), the pole and the residue, then through the scalar
  chain: residue and pole (implicit function theorem on ``Q``), sigmoid
  slopes and the equilibrium (implicit function theorem on its residual).

One code path serves one parameter set and batches: the scalar chain runs on
NumPy scalars for one set (no per-operation array overhead) and on arrays of
shape ``(nb,)`` for a batch; the frequency-sized arrays are ``(G,)`` or
``(nb, G)``. No Python loop over parameter sets.
:meth:`SpectralLogLikelihood.transformed_prediction_and_jacobian` gives
variational Laplace the predicted log-power and its Jacobian the same way
(closed-form derivatives in the coefficients, times the scalar chain's
Jacobian from the reverse pass run with one unit cotangent per coefficient).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from jrinfer import model as _model

_RATIOS = _model._CONNECTIVITY_RATIOS
_MODEL_KEYS = ("A", "B", "a", "b", "C", "e0", "v0", "r", "p_mean", "p_std")
_OBS_KEYS = ("gain", "ap_amplitude", "ap_exponent", "floor", "log_precision")
_POSITIVE = ("A", "B", "a", "b", "C", "e0", "r", "p_std")
_TWO_PI_I = 2j * math.pi


def _col(x):
    """A per-set value as a column against frequency arrays: ``(nb, 1)`` for a batch, itself for one set."""
    return x[:, None] if isinstance(x, np.ndarray) else x


def _pick(cond, x, y):
    """``np.where`` that keeps scalars scalar (one parameter set)."""
    if isinstance(cond, (bool, np.bool_)):
        return x if cond else y
    return np.where(cond, x, y)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def _series_small(beta, terms: int = 8):
    """``E_k(b) = (e^b - sum_{n<k} b^n/n!) / b^k``, k = 1, 2, and ``2 E_3`` by their series (|b| < 0.1)."""
    out = []
    for shift in (1, 2, 3):
        acc = np.full_like(beta, 1.0 / math.factorial(terms - 1 + shift))
        for n in range(terms - 2, -1, -1):
            acc = acc * beta + 1.0 / math.factorial(n + shift)
        out.append(acc)
    return out[0], out[1], 2.0 * out[2]


def _lag_weights():
    """Rows ``h``, ``h'`` of the Hann lag integral as weights on ``E = [E_1, E_2, 2 E_3]`` at ``beta_0..2`` (9 rows)."""
    q = 1.0 / (2.0 * _TWO_PI_I)  # 1 / (4 pi i)
    w = np.zeros((2, 3, 3), dtype=complex)  # (h or h', kind E_1/E_2/2E_3, beta_j)
    # h = 2/3 E_2(b0) + (E_2(b1) + E_2(b2))/6 + (E_1(b1) - E_1(b2))/(4 pi i)
    w[0, 1] = [2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0]
    w[0, 0, 1:] = [q, -q]
    w[1, 1] = [2.0 / 3.0, 1.0 / 6.0 - q, 1.0 / 6.0 + q]  # h': E_2' = E_2 - 2 E_3, E_1' = E_1 - E_2
    w[1, 2] = [-2.0 / 3.0, -1.0 / 6.0, -1.0 / 6.0]
    w[1, 0, 1:] = [q, -q]
    return w.reshape(2, 9)


_HANN_WEIGHTS = _lag_weights()


_SHIFTS = np.array([0.0, _TWO_PI_I, -_TWO_PI_I])


def _lag_integral(z, seg: float, window: str, em1=None):
    """``I(z)`` of :func:`jrinfer.spectral._lag_integral` and its derivative ``I'(z)``, any shape.

    With ``E_k(beta) = (e^beta - sum_{n<k} beta^n/n!) / beta^k``, ``zeta = z L``:
    boxcar ``I = L E_2(zeta)``, Hann ``I = L [2/3 E_2(zeta) + (E_2(zeta + 2 pi i)
    + E_2(zeta - 2 pi i))/6 + (E_1(zeta + 2 pi i) - E_1(zeta - 2 pi i))/(4 pi i)]``;
    ``E_k' = E_k - k E_{k+1}``. ``em1``: ``e^(z L) - 1`` when the caller has it
    (NumPy's complex ``expm1`` costs ~90 ns per element).
    """
    zeta = z * seg
    if em1 is None:
        em1 = np.expm1(zeta)  # e^(zeta +- 2 pi i) - 1 is the same number
    beta = zeta[None] if window == "boxcar" else zeta[None] + _SHIFTS[(slice(None),) + (None,) * np.ndim(zeta)]
    ib = 1.0 / beta
    e = np.empty((3,) + beta.shape, dtype=complex)
    np.multiply(em1, ib, out=e[0])  # E_1
    np.multiply(e[0] - 1.0, ib, out=e[1])  # E_2
    np.multiply(2.0 * e[1] - 1.0, ib, out=e[2])  # 2 E_3
    small = np.abs(beta) < 0.1  # cancellation: the series there (as spectral._series_or_direct)
    if small.any():
        e[0][small], e[1][small], e[2][small] = _series_small(beta[small])
    if window == "boxcar":
        return seg * e[1, 0], seg * seg * (e[1, 0] - e[2, 0])
    h = (_HANN_WEIGHTS @ e.reshape(9, -1)).reshape((2,) + zeta.shape)
    return seg * h[0], seg * seg * h[1]


def _dot(x, y):
    """``sum(x * y, -1)``: a scalar for 1-D ``x`` (one set), ``(nb,)`` for ``(nb, n)``."""
    return x @ y if x.ndim == 1 else np.einsum("...i,...i->...", x, y)


class _State:
    """The forward pass's intermediate values (attributes), kept for the reverse passes."""


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
        # every parameter the computation reads, in one vector: fixed/default values, free ones filled per call
        self.keys = _MODEL_KEYS + tuple(k for k in _OBS_KEYS if k in set(names) | set(fixed)
                                        or k in obs.required_parameters(data))
        fixed = {k: float(v) for k, v in fixed.items()}
        self.base = np.array([fixed.get(k, float(_model.PARAMETERS[k].default) if k in _model.PARAMETERS
                                        else math.nan) for k in self.keys])
        self.free = np.array([self.keys.index(n) for n in self.names], dtype=np.intp)
        self.positive = np.array([self.keys.index(k) for k in _POSITIVE], dtype=np.intp)
        self.i_v0, self.i_pm = self.keys.index("v0"), self.keys.index("p_mean")
        self.freqs = data.freqs.detach().numpy().astype(np.float64)
        from jrinfer.observation import _POWER_UNIT_PER_MV2

        self.u = float(_POWER_UNIT_PER_MV2[data.units])
        seg = obs._seg_length(data)
        if seg is not None and obs.window is not None:
            wm = obs._window_matrix(data.freqs, seg)
            self.fine = wm.fine_freqs.numpy().astype(np.float64)
            self.weights = np.ascontiguousarray(wm.weights.numpy())  # (F, G)
            self.weights_t = np.ascontiguousarray(self.weights.T)  # (G, F)
            self.seg, self.window = float(wm.seg_length), wm.window
            self.s_data = _TWO_PI_I * self.freqs
            self.s_pm = np.concatenate([-self.s_data, self.s_data])  # lambda - s, lambda + s in one array
            self.phase_pm = np.exp(self.s_pm * self.seg)  # e^((lambda -+ s) L) = e^(lambda L) e^(-+ s L)
        else:
            self.fine = self.freqs
            self.weights = None
        self.s = 1j * 2.0 * math.pi * self.fine  # (G,)
        self.w2 = (2.0 * math.pi * self.fine) ** 2
        self.s2 = -self.w2  # s^2 on the imaginary axis
        self.dt = None if obs.noise == "white" else float(obs.dt)
        self.aperiodic, self.floor = obs.aperiodic, obs.floor
        self.likelihood = obs.likelihood
        power = data.power.detach().numpy().astype(np.float64)  # (C, F)
        self.y_sum = power.sum(0)
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

    def __call__(self, theta: np.ndarray):
        theta = np.asarray(theta, dtype=np.float64)
        nb, n = theta.shape
        ll = np.full(nb, -math.inf)
        grad = np.zeros((nb, n))
        full = np.empty((nb, self.base.size))
        full[:] = self.base
        full[:, self.free] = theta
        ok = np.isfinite(theta).all(-1) & (full[:, self.positive] > 0).all(-1)
        ok &= np.isfinite(full[:, self.i_v0]) & (full[:, self.i_pm] >= 0)  # p_mean >= 0 is False for NaN
        if not ok.any():
            return ll, grad
        rows = np.nonzero(ok)[0]
        sub = full[rows] if rows.size < nb else full
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            v, g, valid = self._evaluate(sub)
        keep = valid & np.isfinite(v) & np.isfinite(g).all(-1)
        ll[rows[keep]] = v[keep]
        grad[rows[keep]] = g[keep]
        return ll, grad

    # ------------------------------------------------------------------ the work
    def _evaluate(self, full):
        """``(ll (nb,), grad (nb, n_free), stable (nb,))`` for the full parameter vectors ``full`` ``(nb, K)``."""
        nb = full.shape[0]
        p, y0, lam0, has, stable = self._equilibrium(full)
        ll, bars = self._chain(p, y0, lam0, has)
        g = [bars.get(name, 0.0) for name in self.names]
        grad = np.array([g]) if nb == 1 else np.stack([np.broadcast_to(x, (nb,)) for x in g], -1)
        return np.reshape(ll, (nb,)), grad, stable

    def _equilibrium(self, full):
        """Parameters (scalars for one set, else ``(nb,)`` arrays), upper equilibrium ``y0``, eigenvalue, stability."""
        nb = full.shape[0]
        cols = dict(zip(self.keys, full.T))  # arrays (nb,)
        pn = {k: cols[k] for k in ("A", "B", "a", "b", "e0", "v0", "r", "p_mean")}
        for k, ratio in _RATIOS.items():
            pn[k] = ratio * cols["C"]
        # warm-started from the previous call's root
        guess = self.guess if self.guess is not None and self.guess.shape == (nb,) else None
        eq = _model._selected_equilibrium_numpy(pn, (nb,), 256, "upper", guess, raw=True)
        if eq is None:  # a possible close pair of roots: the full torch search
            pd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in pn.items()}
            gt = None if guess is None else torch.from_numpy(guess)
            fp = _model._fixed_points(pd, torch.Size((nb,)), 256, which="upper", initial_guess=gt)
            eq = fp.state[..., 0].numpy(), fp.eigenvalues.numpy(), fp.stable.numpy()
        y0, ev, stable = eq
        self.guess = y0.copy()
        # the least damped oscillatory eigenvalue (as JansenRit.dominant_mode)
        if nb == 1:  # one set: the scalar chain on NumPy scalars
            osc = [e for e in ev[0].tolist() if e.imag > 1e-9 * abs(e) and math.isfinite(e.real)]
            lam0 = np.complex128(max(osc, key=lambda e: e.real) if osc else ev[0, 0])
            return dict(zip(self.keys, full[0])), y0[0], lam0, bool(osc), stable
        osc = (ev.imag > 1e-9 * np.abs(ev)) & np.isfinite(ev.real)
        lam0 = ev[np.arange(nb), np.where(osc, ev.real, -np.inf).argmax(-1)]
        return cols, y0, lam0, osc.any(-1), stable

    def transformed_prediction_and_jacobian(self, theta):
        """Predicted log-power on the data grid and its Jacobian, for one parameter set.

        What variational Laplace needs (the Gaussian target's space,
        :meth:`SpectrumObservation.gaussian_target`), without autograd: the
        neural PSD's derivatives with respect to eleven coefficients (the
        polynomial coefficients ``a, b, aa, g0 aa, kE, kI``, real and
        imaginary parts of the pole and of its residue, ``sigma^2``) in closed
        form, times their Jacobian in the model parameters, which is the
        gradient's reverse scalar chain run with eleven unit cotangents at
        once.

        Parameters
        ----------
        theta : numpy.ndarray
            Free parameters in natural units, shape ``(n,)`` (``self.names``).

        Returns
        -------
        value, jacobian : numpy.ndarray
            ``log`` of the predicted power ``(F,)`` and ``d value / d theta``
            ``(F, n)``; NaN (both) where the parameters are out of range or
            the equilibrium is unstable.
        """
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (len(self.names),):
            raise ValueError(f"theta must have shape ({len(self.names)},) ({', '.join(self.names)}), "
                             f"got {theta.shape}")
        nf, n = self.freqs.size, theta.size
        nan = (np.full(nf, math.nan), np.full((nf, n), math.nan))
        full = self.base.copy()
        full[self.free] = theta
        if not (np.isfinite(theta).all() and (full[self.positive] > 0).all() and math.isfinite(full[self.i_v0])
                and full[self.i_pm] >= 0):
            return nan
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            p, y0, lam0, has, stable = self._equilibrium(full[None])
            if not stable[0]:
                return nan
            f = self._forward(p, y0, lam0, has)
            power, gu, fpow = self._observe(f, p)
            # d lin / d (a, b, aa, g0aa, kE, kI): 4 sigma^2 |H|^2 Re(dN/N - dQ/Q); d lin / d sigma^2 = 2 |H|^2
            al_s, be_s, al_s2, be_s2, iq = f.al_s, f.be_s, f.al_s2, f.be_s2, 1.0 / f.Q
            g0aa, kE, kI = f.g0aa, f.kE, f.kI
            t = np.stack([
                2.0 / al_s - (4.0 * al_s2 * al_s * be_s2 + 2.0 * g0aa * kI * al_s) * iq,
                2.0 / be_s - (2.0 * f.al_s4 * be_s - 2.0 * g0aa * kE * be_s) * iq,
                np.broadcast_to(1.0 / f.aa, al_s.shape),
                (kE * be_s2 - kI * al_s2) * iq,
                g0aa * be_s2 * iq,
                -g0aa * al_s2 * iq,
            ]).real * (4.0 * f.sig2 * f.gain_fn)
            d_lin = np.concatenate([t, np.zeros((4, t.shape[1])), (2.0 * f.gain_fn)[None]])  # (11, G)
            if self.weights is not None:
                lam, c, inv = f.lam_v, f.cv, f.inv
                d_rl = -8.0 * c * (self.s2 + lam * lam) * inv * inv  # d rest / d lambda (holomorphic)
                d_rc = -8.0 * lam * inv  # d rest / d c
                d_lin[6], d_lin[7], d_lin[8], d_lin[9] = d_rl.real, -d_rl.imag, d_rc.real, -d_rc.imag
                d_neural = d_lin @ self.weights_t  # (11, F)
                d_wl, d_wc = 4.0 * c * f.dxw, 4.0 * f.xw  # d (4 Re(c xw)) / d lambda, d c (holomorphic)
                d_neural[6] += d_wl.real
                d_neural[7] -= d_wl.imag
                d_neural[8] += d_wc.real
                d_neural[9] -= d_wc.imag
            else:
                d_neural = d_lin
            # Jacobian of the eleven coefficients in the model parameters: eleven unit cotangents
            eye = np.eye(11)
            bar_lam = eye[6] - 1j * eye[7]  # dL = Re(bar dz): 1 -> Re, -i -> Im
            bar_c = eye[8] - 1j * eye[9]
            dcoef = self._backward(f, p, tuple(eye[:6]), bar_lam, bar_c, eye[10])  # name -> (11,)
            value = np.log(power)
            scale = gu / power  # d log P / d neural
            jac = np.zeros((nf, n))
            for i, name in enumerate(self.names):
                if name in dcoef:
                    jac[:, i] = scale * (dcoef[name] @ d_neural)
                elif name == "gain":
                    jac[:, i] = 2.0 * p["gain"] * self.u * f.neural / power
                elif name == "ap_amplitude":
                    jac[:, i] = fpow / power
                elif name == "ap_exponent":
                    jac[:, i] = -p["ap_amplitude"] * fpow * self.log_f / power
                elif name == "floor":
                    jac[:, i] = 1.0 / power
        if not (np.isfinite(value).all() and np.isfinite(jac).all()):
            return nan
        return value, jac

    def _chain(self, p, y0, lam0, has):
        """Log-likelihood and its gradient (dict by parameter name) for one set (NumPy scalars) or a batch."""
        fw = self._forward(p, y0, lam0, has)
        ll, bars, GN = self._likelihood(fw, p)
        bars.update(self._backward(fw, p, *self._freq_backward(fw, GN)))
        return ll, bars

    # -- forward ---------------------------------------------------------------
    def _forward(self, p, y0, lam0, has):
        """Everything the reverse passes need: scalar chain, pole pair and the neural PSD on the data grid."""
        f = _State()
        A, B, a, b, C = p["A"], p["B"], p["a"], p["b"], p["C"]
        e0, v0, r, pm = p["e0"], p["v0"], p["r"], p["p_mean"]
        C1, C2, C3, C4 = (_RATIOS[k] * C for k in ("C1", "C2", "C3", "C4"))
        # slopes at the equilibrium (S: sigmoid, g: its slope, h: dg/dz)
        ke, ki = A / a, B / b
        z1, z2 = C1 * y0, C3 * y0
        s1, s2 = _sig(r * (z1 - v0)), _sig(r * (z2 - v0))
        S1, S2 = 2.0 * e0 * s1, 2.0 * e0 * s2
        g1, g2 = S1 * r * (1.0 - s1), S2 * r * (1.0 - s2)
        v = ke * (pm + C2 * S1) - ki * C4 * S2
        s0 = _sig(r * (v - v0))
        S0 = 2.0 * e0 * s0
        g0 = S0 * r * (1.0 - s0)
        h0, h1, h2 = g0 * r * (1.0 - 2.0 * s0), g1 * r * (1.0 - 2.0 * s1), g2 * r * (1.0 - 2.0 * s2)
        u1, u2 = C1 * C2 * g1, C3 * C4 * g2
        aa, bb = A * a, B * b
        kE, kI, g0aa = u1 * aa, u2 * bb, g0 * aa
        # dominant pole (one Newton step on Q from the eigenvalue) and residue (as JansenRit.dominant_mode)
        lam0 = _pick(has, lam0, -1.0 + 0j)
        al, be = lam0 + a, lam0 + b
        al2, be2 = al * al, be * be
        q0 = al2 * al2 * be2 - g0aa * (kE * be2 - kI * al2)
        dq0 = 4.0 * al2 * al * be2 + 2.0 * al2 * al2 * be - 2.0 * g0aa * (kE * be - kI * al)
        lam = lam0 - q0 / dq0
        al, be, alm, bem = lam + a, lam + b, a - lam, b - lam  # s + a, s + b at s = lambda and s = -lambda
        al2, be2, alm2, bem2 = al * al, be * be, alm * alm, bem * bem
        al3, alm3 = al2 * al, alm2 * alm
        al4, alm4 = al2 * al2, alm2 * alm2
        dq_l = 4.0 * al3 * be2 + 2.0 * al4 * be - 2.0 * g0aa * (kE * be - kI * al)  # Q'(lambda)
        ddq_l = 12.0 * al2 * be2 + 16.0 * al3 * be + 2.0 * al4 - 2.0 * g0aa * (kE - kI)  # Q''(lambda)
        q_m = alm4 * bem2 - g0aa * (kE * bem2 - kI * alm2)  # Q(-lambda)
        dq_m = 4.0 * alm3 * bem2 + 2.0 * alm4 * bem - 2.0 * g0aa * (kE * bem - kI * alm)  # Q'(-lambda)
        c1 = aa * aa * al2 * be2 * alm2 * bem2 / (dq_l * q_m)  # N(l) N(-l) / (Q'(l) Q(-l)), N = aa (s+a)^2 (s+b)^2
        use = has & (lam.real < 0)
        lam_v = _pick(use, lam, -1.0 + 0j)
        c1v = _pick(use, c1, 0.0)
        sig2 = p["p_std"] ** 2 * (1.0 if self.dt is None else self.dt)
        cv = sig2 * c1v
        # linearised PSD on the fine grid: |H|^2 with H = N / Q (= he / D of JansenRit.linear_psd)
        s = self.s
        al_s, be_s = s + _col(a), s + _col(b)
        al_s2, be_s2 = al_s * al_s, be_s * be_s
        al_s4 = al_s2 * al_s2
        Q = al_s4 * be_s2 - _col(g0aa) * (_col(kE) * be_s2 - _col(kI) * al_s2)
        H = (_col(aa) * al_s2) * be_s2 / Q
        gain_fn = H.real**2 + H.imag**2
        sig2c = _col(sig2)
        lin = (2.0 * sig2c) * gain_fn
        nf = self.freqs.size
        if self.weights is not None:  # pole pair: xp = 1/(s - l) - 1/(s + l) = 2 l / (s^2 - l^2)
            lam_c, c_c = _col(lam_v), _col(cv)
            inv = 1.0 / (self.s2 - lam_c * lam_c)
            rest = lin - (8.0 * c_c * lam_c * inv).real
            # e^(z L) - 1 from one exponential: cancellation only where |z L| is small, where the series is used
            em1 = np.exp(lam_c * self.seg) * self.phase_pm - 1.0
            i_pm, di_pm = _lag_integral(lam_c + self.s_pm, self.seg, self.window, em1)
            xw = i_pm[..., :nf] + i_pm[..., nf:]
            f.neural = rest @ self.weights_t + 4.0 * (c_c * xw).real
            f.inv, f.xw, f.dxw, f.lam_c = inv, xw, di_pm[..., :nf] + di_pm[..., nf:], lam_c
        else:
            f.neural = lin
        f.__dict__.update(
            A=A, B=B, a=a, b=b, e0=e0, v0=v0, r=r, pm=pm, C1=C1, C2=C2, C3=C3, C4=C4, ke=ke, ki=ki, y0=y0,
            z1=z1, z2=z2, S0=S0, S1=S1, S2=S2, g0=g0, g1=g1, g2=g2, h0=h0, h1=h1, h2=h2, v=v, u1=u1, u2=u2,
            aa=aa, bb=bb, kE=kE, kI=kI, g0aa=g0aa, al=al, be=be, alm=alm, bem=bem, al2=al2, be2=be2, alm2=alm2,
            bem2=bem2, al3=al3, alm3=alm3, al4=al4, alm4=alm4, dq_l=dq_l, ddq_l=ddq_l, q_m=q_m, dq_m=dq_m, c1=c1,
            use=use, lam_v=lam_v, c1v=c1v, sig2=sig2, cv=cv, al_s=al_s, be_s=be_s, al_s2=al_s2, be_s2=be_s2,
            al_s4=al_s4, Q=Q, gain_fn=gain_fn, sig2c=sig2c,
        )
        return f

    def _observe(self, f, p):
        """Predicted power on the data grid and what its derivatives need."""
        gu = _col(p["gain"] * p["gain"] * self.u)
        power = gu * f.neural
        fpow = None
        if self.aperiodic:
            fpow = self.f_safe ** (-_col(p["ap_exponent"]))
            power = power + _col(p["ap_amplitude"]) * fpow
        if self.floor:
            power = power + _col(p["floor"])
        return power, gu, fpow

    def _likelihood(self, f, p):
        """``(ll, bars of the observation parameters, cotangent of the neural PSD)``."""
        power, gu, fpow = self._observe(f, p)
        logp = np.log(power)
        bars = {}
        if self.likelihood == "gaussian":
            lp = p["log_precision"]
            prec = np.exp(lp)
            res = self.logy - logp[..., None, :]  # (nb, C, F) or (C, F)
            ss = (res * res).sum((-2, -1))
            m = res.shape[-2] * res.shape[-1]
            ll = m * (0.5 * lp - 0.5 * math.log(2 * math.pi)) - 0.5 * prec * ss
            dP = _col(prec) * res.sum(-2) / power
            bars["log_precision"] = 0.5 * m - 0.5 * prec * ss
        else:
            kk = self.k
            ratio = self.y_sum / power
            ll = self.whittle_const - kk * self.n_channels * logp.sum(-1) - kk * ratio.sum(-1)
            dP = (kk * ratio - kk * self.n_channels) / power
        bars["gain"] = _dot(dP, f.neural) * (2.0 * p["gain"] * self.u)
        if self.aperiodic:
            dPf = dP * fpow
            bars["ap_amplitude"] = dPf.sum(-1)
            bars["ap_exponent"] = -(dPf @ self.log_f) * p["ap_amplitude"]
        if self.floor:
            bars["floor"] = dP.sum(-1)
        return ll, bars, dP * gu

    # -- reverse ---------------------------------------------------------------
    def _freq_backward(self, f, GN):
        """Cotangent ``GN`` of the neural PSD -> cotangents of the coefficients, lambda, c and sigma^2.

        Returns ``(bar_k, bar_lam, bar_c, bar_sig2)``: ``bar_k`` over ``(a, b, aa, g0aa, kE, kI)`` (real),
        ``bar_lam``, ``bar_c`` holomorphic (``dL = Re(bar dz)``).
        """
        if self.weights is not None:
            Glin = GN @ self.weights  # (nb, G) or (G,)
            lam_v, lam_c, inv = f.lam_v, f.lam_c, f.inv
            # d xp / d lambda = 1/(s - l)^2 + 1/(s + l)^2 = 2 (s^2 + l^2) / (s^2 - l^2)^2
            bar_c = 4.0 * _dot(GN, f.xw) - 8.0 * lam_v * _dot(Glin, inv)
            bar_lam = 4.0 * f.cv * (_dot(GN, f.dxw) - 2.0 * _dot(Glin, (self.s2 + lam_c * lam_c) * (inv * inv)))
        else:
            Glin = GN
            bar_c = bar_lam = 0.0
        # through |N/Q|^2: d|H|^2 = 2 |H|^2 Re(dN/N - dQ/Q)
        rho = Glin * f.gain_fn
        bar_sig2 = 2.0 * rho.sum(-1)
        rho = (4.0 * f.sig2c) * rho
        wq = rho / f.Q
        al_s, be_s, al_s2, be_s2 = f.al_s, f.be_s, f.al_s2, f.be_s2
        mom = np.matmul(np.stack([al_s2 * al_s * be_s2, al_s, f.al_s4 * be_s, be_s, be_s2, al_s2], -2),
                        wq[..., None])[..., 0]  # sums of monomial * rho / Q
        m_a3b2, m_a, m_a4b, m_b, m_b2, m_a2 = (mom[..., k] for k in range(6))
        a, b, g0aa, kE, kI = f.a, f.b, f.g0aa, f.kE, f.kI
        bar_k = (
            2.0 * _dot(rho, _col(a) / (self.w2 + _col(a * a))) - (4.0 * m_a3b2 + 2.0 * g0aa * kI * m_a).real,
            2.0 * _dot(rho, _col(b) / (self.w2 + _col(b * b))) - (2.0 * m_a4b - 2.0 * g0aa * kE * m_b).real,
            rho.sum(-1) / f.aa,
            (kE * m_b2 - kI * m_a2).real,
            (g0aa * m_b2).real,
            -(g0aa * m_a2).real,
        )
        return bar_k, bar_lam, bar_c, bar_sig2

    def _backward(self, f, p, bar_k, bar_lam, bar_c, bar_sig2):
        """Cotangents of the coefficients, lambda, c, sigma^2 -> the model parameters (dict by name)."""
        A, B, a, b, e0, v0, r, pm = f.A, f.B, f.a, f.b, f.e0, f.v0, f.r, f.pm
        C1, C2, C3, C4, ke, ki, y0 = f.C1, f.C2, f.C3, f.C4, f.ke, f.ki, f.y0
        g0, g1, g2, h0, h1, h2, u1, u2 = f.g0, f.g1, f.g2, f.h0, f.h1, f.h2, f.u1, f.u2
        aa, bb, kE, kI, g0aa, sig2 = f.aa, f.bb, f.kE, f.kI, f.g0aa, f.sig2
        al, be, alm, bem, al2, be2, alm2, bem2 = f.al, f.be, f.alm, f.bem, f.al2, f.be2, f.alm2, f.bem2
        al3, alm3, al4, alm4, dq_l, q_m = f.al3, f.alm3, f.al4, f.alm4, f.dq_l, f.q_m
        bar_a, bar_b, bar_aa, bar_g0aa, bar_kE, bar_kI = bar_k
        bar_sig2 = bar_sig2 + (bar_c * f.c1v).real  # c = sigma^2 c1
        # residue c1(lambda, coefficients) and pole lambda(coefficients)
        bar_c1 = _pick(f.use, bar_c * sig2, 0.0)
        bar_lam = _pick(f.use, bar_lam, 0.0)
        phi = bar_c1 * f.c1  # dL = Re(phi dlog c1)
        bar_l = bar_lam + phi * (2.0 / al + 2.0 / be - 2.0 / alm - 2.0 / bem - f.ddq_l / dq_l + f.dq_m / q_m)
        psi = bar_l / dq_l  # implicit function theorem: dlambda = -dQ / Q'(lambda)
        w_d, w_q = phi / dq_l, phi / q_m  # weights of Q'(lambda)'s and Q(-lambda)'s partials in dlog c1
        bar_a = bar_a + (phi * (2.0 / al + 2.0 / alm)
                         - w_d * (12.0 * al2 * be2 + 8.0 * al3 * be + 2.0 * g0aa * kI)
                         - w_q * (4.0 * alm3 * bem2 + 2.0 * g0aa * kI * alm)
                         - psi * (4.0 * al3 * be2 + 2.0 * g0aa * kI * al)).real
        bar_b = bar_b + (phi * (2.0 / be + 2.0 / bem)
                         - w_d * (8.0 * al3 * be + 2.0 * al4 - 2.0 * g0aa * kE)
                         - w_q * (2.0 * alm4 * bem - 2.0 * g0aa * kE * bem)
                         - psi * (2.0 * al4 * be - 2.0 * g0aa * kE * be)).real
        bar_aa = bar_aa + (2.0 * phi / aa).real
        bar_g0aa = bar_g0aa + (w_d * 2.0 * (kE * be - kI * al) + w_q * (kE * bem2 - kI * alm2)
                               + psi * (kE * be2 - kI * al2)).real
        bar_kE = bar_kE + (g0aa * (w_d * 2.0 * be + w_q * bem2 + psi * be2)).real
        bar_kI = bar_kI - (g0aa * (w_d * 2.0 * al + w_q * alm2 + psi * al2)).real
        # kE = u1 aa, kI = u2 bb, g0aa = g0 aa, aa = A a, bb = B b
        bar_aa = bar_aa + bar_g0aa * g0 + bar_kE * u1
        bar_bb = bar_kI * u2
        bar_g0 = bar_g0aa * aa
        bar_u1 = bar_kE * aa
        bar_u2 = bar_kI * bb
        bar_A, bar_a = bar_aa * a, bar_a + bar_aa * A
        bar_B, bar_b = bar_bb * b, bar_b + bar_bb * B
        # u1 = C1 C2 g1, u2 = C3 C4 g2; g_i = slope at z_i (z0 = v, z1 = C1 y0, z2 = C3 y0)
        bar_g1, bar_g2 = bar_u1 * C1 * C2, bar_u2 * C3 * C4
        bar_C1 = bar_u1 * C2 * g1 + bar_g1 * h1 * y0
        bar_C2 = bar_u1 * C1 * g1
        bar_C3 = bar_u2 * C4 * g2 + bar_g2 * h2 * y0
        bar_C4 = bar_u2 * C3 * g2
        bar_v = bar_g0 * h0
        bar_v0 = -(bar_v + bar_g1 * h1 + bar_g2 * h2)
        bar_r = (bar_g0 * (g0 + h0 * (f.v - v0)) + bar_g1 * (g1 + h1 * (f.z1 - v0))
                 + bar_g2 * (g2 + h2 * (f.z2 - v0)))
        bar_e0 = bar_g0 * g0 + bar_g1 * g1 + bar_g2 * g2
        # equilibrium: G(y0; theta) = ke S(v(y0)) - y0 = 0, implicit function theorem
        dv_dy0 = ke * C2 * C1 * g1 - ki * C4 * C3 * g2
        bar_y0 = bar_v * dv_dy0 + bar_g1 * h1 * C1 + bar_g2 * h2 * C3
        wG = bar_y0 / (1.0 - ke * g0 * dv_dy0)  # -bar_y0 / G_y0
        bar_S0 = wG * ke
        bar_ke = wG * f.S0
        bar_v = bar_v + bar_S0 * g0
        bar_v0 = bar_v0 - bar_S0 * g0
        bar_r = bar_r + bar_S0 * g0 * (f.v - v0)
        bar_e0 = bar_e0 + bar_S0 * f.S0
        # v = ke (pm + C2 S1) - ki C4 S2 at fixed y0
        S1, S2 = f.S1, f.S2
        bar_ke = bar_ke + bar_v * (pm + C2 * S1)
        bar_ki = -bar_v * C4 * S2
        bar_C2 = bar_C2 + bar_v * ke * S1
        bar_C4 = bar_C4 - bar_v * ki * S2
        bar_S1, bar_S2 = bar_v * ke * C2, -bar_v * ki * C4
        bar_C1 = bar_C1 + bar_S1 * g1 * y0
        bar_C3 = bar_C3 + bar_S2 * g2 * y0
        bar_v0 = bar_v0 - bar_S1 * g1 - bar_S2 * g2
        bar_r = (bar_r + bar_S1 * g1 * (f.z1 - v0) + bar_S2 * g2 * (f.z2 - v0)) / r
        bar_e0 = (bar_e0 + bar_S1 * S1 + bar_S2 * S2) / e0
        return {
            "A": bar_A + bar_ke / a,
            "a": bar_a - bar_ke * ke / a,
            "B": bar_B + bar_ki / b,
            "b": bar_b - bar_ki * ki / b,
            "C": (_RATIOS["C1"] * bar_C1 + _RATIOS["C2"] * bar_C2 + _RATIOS["C3"] * bar_C3
                  + _RATIOS["C4"] * bar_C4),
            "e0": bar_e0, "v0": bar_v0, "r": bar_r, "p_mean": bar_v * ke,
            "p_std": bar_sig2 * 2.0 * sig2 / p["p_std"],
        }
