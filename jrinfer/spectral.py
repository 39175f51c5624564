"""Differentiable Welch power spectral density estimates in torch."""

from __future__ import annotations

from typing import NamedTuple

import torch

from jrinfer import _checks

__all__ = ["WelchPSD", "welch_psd"]


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
