"""Welch PSD against SciPy, Parseval, gradients and bad input."""

import numpy as np
import pytest
import scipy.signal
import torch

from jrinfer import welch_psd

F64 = torch.float64


@pytest.mark.parametrize("nperseg, noverlap, window, detrend", [(256, None, "hann", "constant"), (100, 0, "hamming", "linear"), (64, 32, "boxcar", None), (255, 100, "hann", "constant")])
def test_matches_scipy(nperseg, noverlap, window, detrend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2000)).cumsum(-1) * 0.01 + rng.standard_normal((3, 2000))
    got = welch_psd(torch.from_numpy(x), 250.0, nperseg=nperseg, noverlap=noverlap, window=window, detrend=detrend)
    f, p = scipy.signal.welch(
        x, 250.0, nperseg=nperseg, noverlap=noverlap, window=window, detrend=detrend if detrend else False
    )
    assert np.allclose(got.freqs.numpy(), f)
    assert np.allclose(got.psd.numpy(), p, rtol=1e-10, atol=0)
    step = nperseg - (nperseg // 2 if noverlap is None else noverlap)
    assert got.n_segments == (2000 - nperseg) // step + 1


def test_white_noise_density_level_and_parseval():
    # unit-variance white noise sampled at fs has one-sided density 2 / fs
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 20000, generator=g, dtype=F64)
    w = welch_psd(x, 500.0, nperseg=500)
    interior = w.psd[:, 1:-1].mean()
    assert float(interior) == pytest.approx(2.0 / 500.0, rel=0.01)
    df = float(w.freqs[1] - w.freqs[0])
    assert float(w.psd.mean(0).sum() * df) == pytest.approx(1.0, rel=0.01)


def test_is_differentiable():
    x = torch.randn(2, 300, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    assert torch.autograd.gradcheck(lambda y: welch_psd(y, 100.0, nperseg=64).psd, (x,))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.tensor([1.0, float("nan"), 2.0]), fs=10.0), "x must be finite"),
        (dict(x=torch.ones(10), fs=0.0), "fs must be > 0"),
        (dict(x=torch.ones(10), fs=1.0, nperseg=20), "nperseg must be an int in"),
        (dict(x=torch.ones(10), fs=1.0, nperseg=8, noverlap=8), "noverlap must be an int in"),
        (dict(x=torch.ones(10), fs=1.0, window="kaiser"), "window must be one of"),
        (dict(x=torch.ones(1), fs=1.0), "at least 2 samples"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        welch_psd(**kwargs)


# ------------------------------------------------ expected Welch estimates
from jrinfer.spectral import pole_psd, spectral_window, window_matrix, windowed_pole_psd  # noqa: E402


@pytest.mark.parametrize("window, lo", [("hann", 1e-9), ("boxcar", 2e-3)])
def test_spectral_window_integrates_to_one(window, lo):
    seg = 4.0
    d = torch.linspace(-100.0, 100.0, 400001, dtype=F64)  # +-400 bins of 1/L
    k = spectral_window(d, seg, window)
    assert float(torch.trapezoid(k, d)) == pytest.approx(1.0, abs=lo)  # boxcar tails ~ 1/x^2 beyond 400 bins
    assert (k >= 0).all()


def test_hann_kernel_closed_forms_and_removable_singularities():
    seg = 2.5
    k = spectral_window(torch.tensor([0.0, 1 / seg, -1 / seg, 2 / seg, 3 / seg]), seg)
    assert torch.allclose(k, torch.tensor([2 * seg / 3, seg / 6, seg / 6, 0.0, 0.0], dtype=F64), atol=1e-15)
    x = torch.linspace(-7.3, 7.3, 1001, dtype=F64)
    x = x[(x.abs() - 1).abs() > 1e-3]
    textbook = (2 * seg / 3) * torch.sinc(x) ** 2 / (1 - x**2) ** 2
    assert torch.allclose(spectral_window(x / seg, seg), textbook, rtol=1e-9, atol=1e-15)


def test_hann_kernel_matches_discrete_periodic_hann_window():
    # |DTFT of a periodic Hann window of n = L fs samples|^2 / (fs sum w^2): SciPy/MNE's scaling
    fs, seg = 250.0, 4.0
    n = int(fs * seg)
    w = scipy.signal.get_window("hann", n)
    d = np.linspace(-3.0, 3.0, 241)
    dtft = np.exp(-2j * np.pi * d[:, None] * np.arange(n)[None, :] / fs) @ w
    discrete = np.abs(dtft) ** 2 / (fs * (w**2).sum())
    cont = spectral_window(torch.from_numpy(d), seg).numpy()
    assert np.abs(discrete - cont).max() < 1e-5 * cont.max()


def test_window_matrix_rows_and_smooth_spectra():
    f = torch.arange(1.0, 30.01, 0.5, dtype=F64)
    wm = window_matrix(f, 2.0, oversample=3)
    assert wm.weights.shape == (f.numel(), wm.fine_freqs.numel())
    assert torch.allclose(wm.weights.sum(-1), torch.ones(f.numel(), dtype=F64), atol=1e-14)
    assert float(wm.fine_freqs[0]) == 0.0  # the span below 1 Hz reaches 0: negative frequencies folded
    smooth = lambda x: 1.0 / (1.0 + x) + torch.exp(-0.5 * ((x - 10.0) / 3.0) ** 2)  # noqa: E731
    conv = smooth(wm.fine_freqs) @ wm.weights.T
    # features a few Hz wide seen through a 1 Hz main lobe: about 1 % (2 % at 1 Hz, where 1/(1 + f)
    # curves on the scale of the main lobe) ...
    err2 = conv - smooth(f)
    assert float((err2 / smooth(f)).abs().max()) < 3e-2
    # ... and the bias is the kernel's second moment times P''/2: 4x smaller with 4 s segments
    err4 = smooth(window_matrix(f, 4.0).fine_freqs) @ window_matrix(f, 4.0).weights.T - smooth(f)
    interior = f >= 3
    ratio = (err2[interior] / err4[interior]).median()
    assert 3.5 < float(ratio) < 4.5
    # and a sharp peak is spread over the main lobe (+-2 bins) with the power preserved
    peak = torch.zeros_like(wm.fine_freqs)
    i = int(torch.argmin((wm.fine_freqs - 10.0).abs()))
    peak[i] = 1.0 / (wm.fine_freqs[1] - wm.fine_freqs[0])
    seen = peak @ wm.weights.T
    assert float(torch.trapezoid(seen, f)) == pytest.approx(1.0, rel=1e-3)
    assert int((seen > 1e-3 * seen.max()).sum()) == 3  # 9.5, 10, 10.5 Hz (Hann: zeros at +-2 bins)


def _expected_discrete_periodogram(r, w, fs, freqs):
    """Exact E[periodogram] of a sampled process with autocovariance r(k), k = 0..n-1 (one-sided density)."""
    n = len(w)
    rho = np.correlate(w, w, mode="full")[n - 1 :]  # sum_t w_t w_{t+k}, k = 0..n-1
    k = np.arange(n)
    terms = r * rho * np.cos(2 * np.pi * freqs[:, None] * k[None, :] / fs)
    return 2.0 * (2.0 * terms.sum(-1) - terms[:, 0]) / (fs * (w**2).sum())


@pytest.mark.parametrize("decay", [0.05, 3.0])
def test_windowed_pole_matches_brute_force_expectation_of_discrete_welch(decay):
    # a damped 10.1 Hz oscillation (autocovariance 2 c exp(-decay |tau|) cos(2 pi 10.1 tau)),
    # sampled at fs, 4 s periodic Hann segments: the expected Welch estimate is a finite double sum
    fs, seg = 1000.0, 4.0
    lam = torch.tensor(complex(-decay, 2 * np.pi * 10.1), dtype=torch.complex128)
    c = torch.tensor(complex(1.0, 0.0), dtype=torch.complex128)
    n = int(fs * seg)
    tau = np.arange(n) / fs
    r = 2.0 * np.real(complex(c) * np.exp(complex(lam) * tau))
    freqs = np.arange(5.0, 15.01, 0.25)
    brute = _expected_discrete_periodogram(r, scipy.signal.get_window("hann", n), fs, freqs)
    got = windowed_pole_psd(torch.from_numpy(freqs), lam, c, seg).numpy()
    # the sampled process differs from the continuous one by O((f / fs)^2) (1.5e-4 here,
    # 3.9e-3 at fs = 200 Hz: it scales as 1 / fs^2)
    assert np.abs(got / brute - 1).max() < 5e-4
    # point evaluation is far off for the sharp peak (and even its peak bin moves)
    point = pole_psd(torch.from_numpy(freqs), lam, c).numpy()
    if decay < 1:
        assert np.abs(point / brute - 1).max() > 0.5


def test_windowed_pole_equals_fine_quadrature_and_is_exact_for_sharp_peaks():
    f = torch.arange(6.0, 14.01, 0.25, dtype=F64)
    c = torch.tensor(0.7 + 0.1j, dtype=torch.complex128)
    for window in ("hann", "boxcar"):
        lam = torch.tensor(-2.0 + 2j * np.pi * 10.07, dtype=torch.complex128)
        wm = window_matrix(f, 4.0, window=window, oversample=64, n_lobes=60)
        quad = pole_psd(wm.fine_freqs, lam, c) @ wm.weights.T
        exact = windowed_pole_psd(f, lam, c, 4.0, window)
        tol = 1e-8 if window == "hann" else 5e-3  # the boxcar's 1/x^2 side lobes are truncated at 60 bins
        assert torch.allclose(quad, exact, rtol=tol), window
    # decay 0.01/s (peak 0.003 Hz wide): quadrature on a 1/32-bin grid aliases badly, the closed form does not
    lam = torch.tensor(-0.01 + 2j * np.pi * 10.07, dtype=torch.complex128)
    wm = window_matrix(f, 4.0, oversample=8)
    quad = pole_psd(wm.fine_freqs, lam, c) @ wm.weights.T
    exact = windowed_pole_psd(f, lam, c, 4.0)
    assert float(((quad - exact) / exact).abs().max()) > 0.05
    # total power is the variance 2 c (Parseval) for a real residue (a Lorentzian pair), seen through any window
    wide = torch.arange(0.0, 100.0, 0.25, dtype=F64)
    c = torch.tensor(0.7 + 0.0j, dtype=torch.complex128)
    assert float(torch.trapezoid(windowed_pole_psd(wide, lam, c, 4.0), wide)) == pytest.approx(1.4, rel=1e-3)


def test_windowed_pole_gradients():
    f = torch.tensor([9.75, 10.0, 10.25, 10.5], dtype=F64)

    def fn(re, im, cr, ci):
        return windowed_pole_psd(f, torch.complex(re, im), torch.complex(cr, ci), 4.0)

    args = tuple(torch.tensor(v, dtype=F64, requires_grad=True) for v in (-0.2, 2 * np.pi * 10.1, 1.0, 0.1))
    assert torch.autograd.gradcheck(fn, args)
    # also where a series branch is taken (f exactly at the pole frequency and one bin from it)
    args = tuple(torch.tensor(v, dtype=F64, requires_grad=True) for v in (-0.01, 2 * np.pi * 10.0, 1.0, 0.1))
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(freqs=torch.tensor([1.0, 0.5]), seg_length=1.0), "strictly increasing"),
        (dict(freqs=torch.tensor([-1.0, 0.5]), seg_length=1.0), "freqs must be"),
        (dict(freqs=torch.tensor([1.0, 2.0]), seg_length=0.0), "seg_length must be > 0"),
        (dict(freqs=torch.tensor([1.0, 2.0]), seg_length=1.0, window="hamming"), "window must be one of"),
        (dict(freqs=torch.tensor([1.0, 2.0]), seg_length=1.0, oversample=0), "oversample must be an int"),
        (dict(freqs=torch.tensor([1.0, 2.0]), seg_length=1.0, n_lobes=1.5), "n_lobes must be an int"),
    ],
)
def test_window_matrix_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        window_matrix(**kwargs)
