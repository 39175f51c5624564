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
