"""Differentiable Welch power spectral density estimates in torch, and what they expect to see.

:func:`welch_psd` estimates a PSD from signals. :func:`spectral_window`,
:func:`window_matrix` and :func:`windowed_pole_psd` give the *expectation* of
such an estimate for a process of known PSD: the PSD convolved with the
spectral window of one tapered segment (Harris 1978; Percival & Walden 1993,
chapter 6 on direct spectral estimators and data tapers).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from jrinfer import _checks

__all__ = ["WelchPSD", "welch_psd", "WindowMatrix", "spectral_window", "window_matrix", "pole_psd", "windowed_pole_psd"]

#: Tapers whose expected Welch estimate can be predicted.
WINDOWS = ("hann", "boxcar")
#: Default half-width of the fine grid beyond the data grid, in units of ``1/seg_length``.
#: Hann side lobes fall as ``x^-6`` (mass beyond ``|x| > 4``: 3e-5); boxcar ones as
#: ``x^-2`` (mass beyond ``|x| > 32``: 0.6 %, renormalised away).
_DEFAULT_LOBES = {"hann": 4, "boxcar": 32}


class WelchPSD(NamedTuple):
    """Result of :func:`welch_psd`.

    Attributes
    ----------
    freqs : torch.Tensor
        Frequencies in Hz, shape ``(F,)`` with ``F = nperseg // 2 + 1``.
    psd : torch.Tensor
        One-sided PSD in (units of x)^2/Hz, shape ``(*batch, F)``.
    n_segments : int
        Number of averaged segments (the Welch estimate at each interior
        frequency is approximately Gamma distributed with shape
        ``n_segments`` for non-overlapping segments).
    """

    freqs: torch.Tensor
    psd: torch.Tensor
    n_segments: int


def welch_psd(
    x: torch.Tensor,
    fs: float,
    *,
    nperseg: int | None = None,
    noverlap: int | None = None,
    window: str = "hann",
    detrend: str | None = "constant",
) -> WelchPSD:
    """Welch's averaged periodogram along the last axis (differentiable).

    Same conventions as :func:`scipy.signal.welch` with ``scaling="density"``,
    ``average="mean"`` and a periodic window: the one-sided density integrates
    over ``[0, fs/2]`` to the variance of the signal, so it is directly
    comparable with :meth:`jrinfer.JansenRit.linear_psd`.

    Parameters
    ----------
    x : torch.Tensor
        Signal, shape ``(*batch, T)`` (e.g. mV).
    fs : float
        Sampling rate in Hz.
    nperseg : int, optional
        Segment length in samples (default ``min(T, 256)``).
    noverlap : int, optional
        Overlap in samples (default ``nperseg // 2``).
    window : {"hann", "hamming", "boxcar"}
        Taper applied to each segment.
    detrend : {"constant", "linear", None}
        Remove the mean (or a least-squares line) of each segment.

    Returns
    -------
    WelchPSD
    """
    x = _checks.as_float_tensor("x", x)
    if x.dim() < 1 or x.shape[-1] < 2:
        raise ValueError(f"x must have at least 2 samples on its last axis, got shape {tuple(x.shape)}")
    _checks.check_finite("x", x)
    fs = _checks.check_scalar("fs", fs, positive=True)
    n = x.shape[-1]
    if nperseg is None:
        nperseg = min(n, 256)
    if isinstance(nperseg, bool) or not isinstance(nperseg, int) or not 2 <= nperseg <= n:
        raise ValueError(f"nperseg must be an int in [2, {n}] (the signal length), got {nperseg!r}")
    if noverlap is None:
        noverlap = nperseg // 2
    if isinstance(noverlap, bool) or not isinstance(noverlap, int) or not 0 <= noverlap < nperseg:
        raise ValueError(f"noverlap must be an int in [0, nperseg={nperseg}), got {noverlap!r}")
    _checks.check_option("window", window, ("hann", "hamming", "boxcar"))
    _checks.check_option("detrend", detrend, ("constant", "linear", None))

    step = nperseg - noverlap
    segments = x.unfold(-1, nperseg, step)  # (*batch, n_seg, nperseg)
    if detrend == "constant":
        segments = segments - segments.mean(-1, keepdim=True)
    elif detrend == "linear":
        t = torch.arange(nperseg, dtype=torch.float64)
        t = t - t.mean()
        slope = (segments * t).sum(-1, keepdim=True) / (t * t).sum()
        segments = segments - segments.mean(-1, keepdim=True) - slope * t
    if window == "hann":
        w = torch.hann_window(nperseg, periodic=True, dtype=torch.float64)
    elif window == "hamming":
        w = torch.hamming_window(nperseg, periodic=True, dtype=torch.float64)
    else:
        w = torch.ones(nperseg, dtype=torch.float64)
    spec = torch.fft.rfft(segments * w, dim=-1)
    power = spec.real**2 + spec.imag**2
    scale = 1.0 / (fs * (w * w).sum())
    power = power * scale
    # one-sided: double everything except DC and (for even nperseg) Nyquist
    double = torch.full((power.shape[-1],), 2.0, dtype=torch.float64)
    double[0] = 1.0
    if nperseg % 2 == 0:
        double[-1] = 1.0
    psd = (power * double).mean(-2)
    freqs = torch.fft.rfftfreq(nperseg, d=1.0 / fs, dtype=torch.float64)
    n_segments = (n - nperseg) // step + 1
    return WelchPSD(freqs, psd, n_segments)


# ====================================================== expected estimates
class WindowMatrix(NamedTuple):
    """Linear map from a PSD on a fine grid to its expected Welch estimate on a data grid.

    Attributes
    ----------
    fine_freqs : torch.Tensor
        Frequencies in Hz, shape ``(G,)``: multiples of the fine spacing, all
        ``>= 0``.
    weights : torch.Tensor
        Shape ``(F, G)``, rows summing to one: ``psd_fine @ weights.T``
        approximates ``E[Welch estimate]`` at the data frequencies.
    seg_length : float
        Welch segment length in s.
    window : str
        The segment taper.
    """

    fine_freqs: torch.Tensor
    weights: torch.Tensor
    seg_length: float
    window: str


def spectral_window(delta, seg_length: float, window: str = "hann") -> torch.Tensor:
    """Normalised spectral window ``K(delta)`` of one tapered segment (1/Hz).

    For a stationary process with one-sided PSD ``P`` (``P(-f) = P(f)``), the
    expected periodogram of a segment of length ``L`` tapered by ``w`` and
    normalised by ``sum w^2`` (the density scaling of Welch's method, as in
    SciPy and MNE) is::

        E[P_hat(f)] = integral P(f - delta) K(delta) d delta,    K = |W(delta)|^2 / integral w^2

    which integrates to one (Percival & Walden 1993, ch. 6).
    For the continuous-time taper of length ``L``, with ``x = delta L`` and
    the normalised ``sinc``:

    - ``"boxcar"``: ``K = L sinc^2(x)`` (Fejer kernel);
    - ``"hann"`` (``w = (1 - cos(2 pi t / L)) / 2``): ``W`` is the sum of three
      shifted boxcar transforms (Harris 1978, the Hann window), so
      ``K = (8 L / 3) (sinc(x) / 2 + (sinc(x - 1) + sinc(x + 1)) / 4)^2
      = (2 L / 3) sinc^2(x) / (1 - x^2)^2``. The first form has no removable
      singularity (``K(0) = 2 L / 3``, ``K(+-1/L) = L / 6``).

    A periodic discrete window of ``n = L fs`` samples has the same kernel for
    ``|delta| << fs`` (checked against the discrete transform in the tests).

    Parameters
    ----------
    delta : array_like
        Frequency offsets in Hz, any shape.
    seg_length : float
        Segment length ``L`` in s.
    window : {"hann", "boxcar"}
        The taper.

    Returns
    -------
    torch.Tensor
        ``K(delta)`` in 1/Hz, the shape of ``delta`` (float64).

    References
    ----------
    F. J. Harris (1978), On the use of windows for harmonic analysis with the
    discrete Fourier transform, Proc. IEEE 66(1):51-83.
    D. B. Percival and A. T. Walden (1993), Spectral Analysis for Physical
    Applications, Cambridge University Press.
    """
    d = _checks.as_float_tensor("delta", delta)
    seg = _checks.check_scalar("seg_length", seg_length, positive=True)
    _checks.check_option("window", window, WINDOWS)
    x = d * seg
    if window == "boxcar":
        return seg * torch.sinc(x) ** 2
    amp = 0.5 * torch.sinc(x) + 0.25 * (torch.sinc(x - 1.0) + torch.sinc(x + 1.0))
    return (8.0 * seg / 3.0) * amp**2


def window_matrix(
    freqs, seg_length: float, *, window: str = "hann", oversample: int = 2, n_lobes: int | None = None
) -> WindowMatrix:
    """Weights that turn a PSD on a fine grid into its expected Welch estimate on ``freqs``.

    ``E[P_hat(f_k)] = integral_0^inf P(nu) [K(f_k - nu) + K(f_k + nu)] d nu``
    (:func:`spectral_window`; the second term folds the negative
    frequencies of the one-sided, even PSD), by the trapezoid rule on the
    fine grid ``nu_g = g h``, ``h = min(min diff(freqs), 1/L) / oversample``,
    spanning ``n_lobes / L`` beyond the data grid on each side (clipped at
    0, where the fold makes the rule the full-line sum). Each row is then
    normalised to sum to one (that removes the kernel mass lost beyond the
    span).

    Accuracy: the kernel is the transform of a lag window supported on
    ``|tau| <= L``, so by Poisson summation a grid with ``h <= 1/L`` sums a
    product ``P K`` exactly up to the aliasing of ``P``'s autocovariance at
    lags ``>= 1/h - L = (oversample - 1) L``, i.e. up to
    ``exp(-gamma (oversample - 1) L)`` for a PSD whose sharpest peak has
    decay rate ``gamma`` (1/s). Peaks narrower than a few ``1/(oversample L)``
    therefore need :func:`windowed_pole_psd` (the exact expectation of a
    Lorentzian pole pair) and only the smooth remainder should go through
    this matrix.

    Parameters
    ----------
    freqs : array_like
        Data frequencies in Hz, shape ``(F,)``, finite, ``>= 0``, increasing.
    seg_length : float
        Welch segment length ``L`` in s.
    window : {"hann", "boxcar"}
        Segment taper.
    oversample : int
        ``R >= 1``, fine points per ``min(grid spacing, 1/L)``.
    n_lobes : int, optional
        Half-width of the kernel kept, in units of ``1/L`` (default 4 for
        Hann, 32 for boxcar).

    Returns
    -------
    WindowMatrix
        ``fine_freqs`` of shape ``(G,)`` and ``weights`` of shape ``(F, G)``.
    """
    f = _checks.as_float_tensor("freqs", freqs)
    if f.dim() != 1 or f.numel() == 0:
        raise ValueError(f"freqs must be a non-empty 1-D array of frequencies in Hz, got shape {tuple(f.shape)}")
    _checks.check_finite("freqs", f)
    _checks.check_positive("freqs", f, allow_zero=True)
    if f.numel() > 1 and not bool((f.diff() > 0).all()):
        raise ValueError("freqs must be strictly increasing")
    seg = _checks.check_scalar("seg_length", seg_length, positive=True)
    _checks.check_option("window", window, WINDOWS)
    if isinstance(oversample, bool) or not isinstance(oversample, int) or oversample < 1:
        raise ValueError(f"oversample must be an int >= 1, got {oversample!r}")
    if n_lobes is None:
        n_lobes = _DEFAULT_LOBES[window]
    if isinstance(n_lobes, bool) or not isinstance(n_lobes, int) or n_lobes < 1:
        raise ValueError(f"n_lobes must be an int >= 1, got {n_lobes!r}")
    spacing = float(f.diff().min()) if f.numel() > 1 else 1.0 / seg
    h = min(spacing, 1.0 / seg) / oversample
    span = n_lobes / seg
    g_lo = max(0, math.floor((float(f[0]) - span) / h))
    g_hi = math.ceil((float(f[-1]) + span) / h)
    nu = torch.arange(g_lo, g_hi + 1, dtype=torch.float64) * h
    wt = torch.full_like(nu, h)
    wt[0] = wt[-1] = 0.5 * h
    k = spectral_window(f[:, None] - nu, seg, window) + spectral_window(f[:, None] + nu, seg, window)
    w = k * wt
    w = w / w.sum(-1, keepdim=True)
    return WindowMatrix(nu, w, seg, window)


def _series_or_direct(beta: torch.Tensor, em1: torch.Tensor, shift: int, terms: int = 8) -> torch.Tensor:
    """``(e^beta - sum_{n<shift} beta^n/n!) / beta^shift`` given ``em1 = e^beta - 1``, stable near 0.

    ``shift = 1``: ``integral_0^1 exp(beta u) du``; ``shift = 2``:
    ``integral_0^1 (1 - u) exp(beta u) du``. For ``|beta| < 0.1`` the series
    ``sum_n beta^n / (n + shift)!`` (truncation ~ 0.1^8 / 10! ~ 3e-15),
    else the direct quotient (cancellation error ~1e-15 / |beta|^shift
    <= 1e-13). Each branch only sees safe arguments, so gradients stay finite.
    """
    small = beta.abs() < 0.1
    bs = torch.where(small, beta, torch.zeros_like(beta))
    bd = torch.where(small, torch.ones_like(beta), beta)
    acc = torch.full_like(bs, 1.0 / math.factorial(terms - 1 + shift))
    for n in range(terms - 2, -1, -1):
        acc = acc * bs + 1.0 / math.factorial(n + shift)
    direct = em1 / bd if shift == 1 else (em1 - bd) / (bd * bd)
    return torch.where(small, acc, direct)


def _lag_integral(z: torch.Tensor, seg_length: float, window: str) -> torch.Tensor:
    """``integral_0^L v(tau) exp(z tau) d tau`` for the normalised lag window ``v`` (``v(0) = 1``).

    ``v`` is the taper's autocorrelation over ``integral w^2``: ``1 - u`` for
    the boxcar and ``(1 - u)(2/3 + cos(2 pi u)/3) + sin(2 pi u)/(2 pi)`` for
    Hann, ``u = tau / L`` (derived from ``w`` as three complex exponentials).
    With ``E0(b) = integral_0^1 e^(b u) du`` and ``E1(b) = integral_0^1 (1 - u)
    e^(b u) du``, ``zeta = z L``::

        boxcar: L E1(zeta)
        hann:   L [2/3 E1(zeta) + (E1(zeta + 2 pi i) + E1(zeta - 2 pi i)) / 6
                   + (E0(zeta + 2 pi i) - E0(zeta - 2 pi i)) / (4 pi i)]

    (``e^(zeta +- 2 pi i) = e^zeta``, so one ``expm1`` serves every term).
    """
    zeta = z * seg_length
    em1 = torch.expm1(zeta)
    if window == "boxcar":
        return seg_length * _series_or_direct(zeta, em1, 2)
    tp = 2j * math.pi
    beta = torch.stack([zeta, zeta + tp, zeta - tp])
    e1 = _series_or_direct(beta, em1, 2)
    e0 = _series_or_direct(beta[1:], em1, 1)
    hann = (2.0 / 3.0) * e1[0] + (e1[1] + e1[2]) / 6.0 + (e0[0] - e0[1]) / (2.0 * tp)
    return seg_length * hann


def pole_psd(freqs, pole: torch.Tensor, residue: torch.Tensor) -> torch.Tensor:
    """One-sided PSD of the autocovariance ``2 Re(residue exp(pole |tau|))`` (a damped oscillation).

    ``P(f) = 4 Re{residue [1/(2 pi i f - pole) - 1/(2 pi i f + pole)]}``, evaluated in
    real arithmetic.

    Parameters
    ----------
    freqs : array_like
        Frequencies in Hz, shape ``(F,)``.
    pole, residue : torch.Tensor
        Complex, broadcastable batch shapes; ``pole`` in 1/s with negative
        real part, ``residue`` in (units)^2.

    Returns
    -------
    torch.Tensor
        Shape ``(*batch, F)`` in (units)^2/Hz.
    """
    w = 2.0 * math.pi * _checks.as_float_tensor("freqs", freqs)
    g, w0 = -pole.real.unsqueeze(-1), pole.imag.unsqueeze(-1)
    cr, ci = residue.real.unsqueeze(-1), residue.imag.unsqueeze(-1)
    u, v = w - w0, w + w0
    g2 = g * g
    du, dv = 1.0 / (g2 + u * u), 1.0 / (g2 + v * v)
    re = g * (du + dv)
    im = v * dv - u * du
    return 4.0 * (cr * re - ci * im)


def windowed_pole_psd(freqs, pole: torch.Tensor, residue: torch.Tensor, seg_length: float, window: str = "hann"):
    """Exact expected Welch estimate of the damped oscillation of :func:`pole_psd`.

    With the autocovariance ``R(tau) = 2 Re(c exp(lambda |tau|))`` and the
    taper's normalised lag window ``v`` (support ``|tau| <= L``)::

        E[P_hat(f)] = 2 integral_{-L}^{L} R(tau) v(tau) exp(-2 pi i f tau) d tau
                    = 4 Re{c [I(lambda - 2 pi i f) + I(lambda + 2 pi i f)]},
        I(z) = integral_0^L v(tau) exp(z tau) d tau

    in closed form (Percival & Walden 1993, ch. 6: the expected
    periodogram is the Fourier transform of the autocovariance times the lag
    window). Unlike a quadrature of ``P`` against :func:`spectral_window` it
    stays exact however narrow the peak (decay rate ``-Re lambda -> 0``).

    Parameters
    ----------
    freqs : array_like
        Frequencies in Hz, shape ``(F,)``.
    pole, residue : torch.Tensor
        As in :func:`pole_psd` (complex, broadcastable batch shapes).
    seg_length : float
        Segment length ``L`` in s.
    window : {"hann", "boxcar"}
        Segment taper.

    Returns
    -------
    torch.Tensor
        Shape ``(*batch, F)``, float64, differentiable in ``pole`` and ``residue``.
    """
    seg = _checks.check_scalar("seg_length", seg_length, positive=True)
    _checks.check_option("window", window, WINDOWS)
    s = (2j * math.pi) * _checks.as_float_tensor("freqs", freqs).to(torch.complex128)
    lam, c = pole.unsqueeze(-1), residue.unsqueeze(-1)
    both = _lag_integral(torch.stack(torch.broadcast_tensors(lam - s, lam + s)), seg, window)
    return 4.0 * (c * (both[0] + both[1])).real
