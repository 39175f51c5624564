"""SpectrumObservation predicts the expected Welch estimate (the PSD seen through the segment's spectral window)."""

import math
import warnings

import numpy as np
import pytest
import torch

from jrinfer import InverseProblem, JansenRit, SpectrumData, SpectrumObservation
from jrinfer.spectral import pole_psd, window_matrix

F64 = torch.float64
EEGMAT_GRID = torch.arange(2.0, 40.001, 0.25, dtype=F64)  # 4 s Hann segments, as MNE's Welch at 0.25 Hz


def t(v):
    return torch.tensor(v, dtype=F64)


def obs_params(**extra):
    p = dict(gain=0.004, ap_amplitude=0.002, ap_exponent=1.0, floor=1e-4, log_precision=math.log(40.0))
    p.update(extra)
    return {k: t(v) for k, v in p.items()}


def synthetic(params, seed, freqs=EEGMAT_GRID, k=40, **obs_kw):
    """Windowed prediction times Gamma(K, 1/K) Welch noise."""
    dummy = SpectrumData.from_arrays(freqs, torch.ones_like(freqs), n_segments=k)
    clean = SpectrumObservation(**obs_kw).predict(params, dummy).value
    g = torch.Generator().manual_seed(seed)
    noisy = clean * torch._standard_gamma(torch.full_like(clean, float(k)), generator=g) / k
    return clean, SpectrumData.from_arrays(freqs, noisy, n_segments=k)


# ------------------------------------------------------------ the alpha pole
@pytest.mark.parametrize("noise_on", ["input", "all"])
def test_dominant_mode_is_the_sharp_part_of_the_linear_psd(noise_on):
    model = JansenRit(p_mean=t([60.0, 85.0, 89.5]), noise_on=noise_on)
    f = torch.linspace(0.0, 60.0, 6001, dtype=F64)
    lin = model.linear_psd(f)
    lam, c = model.dominant_mode(lin.equilibrium)
    # the pole is the least damped eigenvalue (refined by a Newton step)
    ev = lin.equilibrium.eigenvalues
    assert torch.allclose(lam, ev[..., 0] if float(ev[0, 0].imag) > 0 else ev[..., 1], rtol=1e-10)
    rest = lin.psd - pole_psd(f, lam, c)
    # the pole pair carries the peak; what is left is smooth (no structure on the 0.01 Hz grid
    # beyond a gentle curvature) and tiny compared with the peak
    assert (rest.abs().amax(-1) < 1e-3 * lin.psd.amax(-1)).all()
    d2 = rest.diff(n=2).abs()
    assert (d2.amax(-1) < 1e-4 * rest.abs().amax(-1))[:2].all()
    # at p = 89.5 the peak is 1e9 x the background and the transfer function's own rounding
    # (D = 1 - loop gain ~ 1e-5 there) shows within 0.05 Hz of the peak, at 1e-11 of the peak
    assert (d2.amax(-1) < 1e-10 * lin.psd.amax(-1)).all()
    far = (f[1:-1] - float(lam[2].imag) / (2 * math.pi)).abs() > 0.05
    assert float(d2[2, far].max()) < 1e-4 * float(rest[2].abs().max())
    # jr1995 noise: same pole, residue scaled by the step (intensity p_std^2 dt)
    per_step = JansenRit(p_mean=t([60.0, 85.0, 89.5]), noise_on=noise_on, noise="jr1995_gaussian")
    lam2, c2 = per_step.dominant_mode(dt=1e-4)
    assert torch.allclose(lam2, lam) and torch.allclose(c2, c * 1e-4)


def test_windowed_prediction_matches_brute_force_convolution():
    data = SpectrumData.from_arrays(EEGMAT_GRID, torch.ones_like(EEGMAT_GRID), units="mV^2/Hz")
    p = t([60.0, 85.0, 89.0])
    got = SpectrumObservation(aperiodic=False, floor=False).predict({"p_mean": p, "gain": t(1.0)}, data)
    assert got.valid.all()
    # the whole PSD on a 1/256-bin grid with wide kernel tails (aliasing exp(-decay * 255 * 4 s))
    wm = window_matrix(EEGMAT_GRID, 4.0, oversample=256, n_lobes=40)
    brute = JansenRit(p_mean=p).linear_psd(wm.fine_freqs).psd @ wm.weights.T
    rel = ((brute - got.value) / got.value).abs().amax(-1)
    assert float(rel[:2].max()) < 1e-6  # decay 0.42 and 0.067 /s
    assert float(rel[2]) < 2e-5  # decay 0.011 /s: the brute force itself aliases at 1e-5
    # a pure quadrature on a 1/64-bin grid is off by percents at p = 89 (0.004 Hz-wide peak)
    wm64 = window_matrix(EEGMAT_GRID, 4.0, oversample=64, n_lobes=40)
    coarse = JansenRit(p_mean=p[2]).linear_psd(wm64.fine_freqs).psd @ wm64.weights.T
    assert float(((coarse - got.value[2]) / got.value[2]).abs().max()) > 1e-2


def test_smooth_spectrum_windowed_equals_point_evaluation():
    # fast time constants and a weak loop: a broad resonance (decay ~24/s, ~4 Hz wide)
    data = SpectrumData.from_arrays(EEGMAT_GRID, torch.ones_like(EEGMAT_GRID))
    params = {**obs_params(), "p_mean": t(70.0), "b": t(25.0)}
    win = SpectrumObservation().predict(params, data).value
    point = SpectrumObservation(window=None).predict(params, data).value
    assert float(((win - point) / point).abs().max()) < 5e-3


def test_sharp_peak_power_is_preserved_and_spread_over_the_main_lobe():
    data = SpectrumData.from_arrays(EEGMAT_GRID, torch.ones_like(EEGMAT_GRID), units="mV^2/Hz")
    params = {"p_mean": t(88.0), "gain": t(1.0)}
    win = SpectrumObservation(aperiodic=False, floor=False).predict(params, data).value
    point = SpectrumObservation(aperiodic=False, floor=False, window=None).predict(params, data).value
    fine = torch.arange(2.0, 40.0, 0.0005, dtype=F64)
    total = torch.trapezoid(JansenRit(p_mean=88.0).linear_psd(fine).psd, fine)
    assert float(torch.trapezoid(win, EEGMAT_GRID)) == pytest.approx(float(total), rel=2e-3)
    # the 0.008 Hz-wide peak falls between bins: point evaluation misses most of its power
    assert float(torch.trapezoid(point, EEGMAT_GRID)) < 0.5 * float(total)


# ------------------------------------------------------------- likelihood
def test_log_likelihood_is_smooth_in_the_peak_frequency_with_the_window():
    # data: the windowed model near the first Hopf point (p = 85, decay 0.067/s, peak 0.02 Hz
    # wide) on 0.25 Hz bins. The time scale k multiplies A, a, B, b: the spectrum's frequency axis
    # scales by k with the loop gains unchanged, so the 10.3 Hz peak sweeps 4 bins over k = 0.95-1.05
    params = {**obs_params(), "p_mean": t(85.0)}
    _, data = synthetic(params, seed=0)
    k = torch.linspace(0.95, 1.05, 1001, dtype=F64)
    sweep = {**params, "A": 3.25 * k, "a": 100.0 * k, "B": 22.0 * k, "b": 50.0 * k}
    out = {}
    for window in ("hann", None):
        obs = SpectrumObservation(window=window)
        ll = obs.log_likelihood(obs.predict(sweep, data), sweep, data).numpy()
        assert np.isfinite(ll).all()
        n_max = int(((ll[1:-1] > ll[:-2]) & (ll[1:-1] > ll[2:])).sum())
        out[window] = (n_max, np.abs(np.diff(ll, 2)).max(), float(k[ll.argmax()]))
    # measured: hann 1 maximum, max |second difference| 0.034; point 5 maxima, 4.3
    assert out["hann"][0] == 1 and out["hann"][1] < 0.1
    assert out[None][0] >= 3 and out[None][1] > 20 * out["hann"][1]
    assert out["hann"][2] == pytest.approx(1.0, abs=0.003)


def test_gradients_flow_through_the_windowed_prediction():
    data = SpectrumData.from_arrays(EEGMAT_GRID[28:44], torch.ones(16, dtype=F64), units="mV^2/Hz")
    obs = SpectrumObservation(aperiodic=False, floor=False)

    def fn(p_mean, a, b):
        return obs.predict({"p_mean": p_mean, "a": a, "b": b, "gain": t(1.0)}, data).value

    args = tuple(torch.tensor(v, dtype=F64, requires_grad=True) for v in (84.0, 100.0, 50.0))
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, rtol=1e-4, atol=1e-6)
    # and through torch.func (what variational Laplace uses)
    jac = torch.func.jacfwd(fn, argnums=(0, 1, 2))(*(a.detach() for a in args))
    jac_r = torch.func.jacrev(fn, argnums=(0, 1, 2))(*(a.detach() for a in args))
    for x, y in zip(jac, jac_r):
        assert torch.allclose(x, y, rtol=1e-8)


@pytest.mark.slow
def test_variational_laplace_fit_lands_on_the_data_peak():
    from jrinfer.backends.laplace import VariationalLaplace

    params = {**obs_params(), "p_mean": t(80.0)}
    clean, data = synthetic(params, seed=1)
    obs = SpectrumObservation()
    problem = InverseProblem(obs, obs.default_prior(data), data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        post = VariationalLaplace().fit(problem, n_draws=200, n_predictive=20)
    assert post.converged, post.message
    mode = problem.prior.from_unconstrained(torch.from_numpy(np.asarray(post.mean_unconstrained)))
    pred = problem.predict(mode).value.detach()
    f = EEGMAT_GRID
    assert abs(float(f[pred.argmax()] - f[data.power[0].argmax()])) <= 0.25
    assert abs(float(f[pred.argmax()] - f[clean.argmax()])) <= 0.25
    # the fitted noise level is the data's (Gamma(40) on log-power: precision ~ 40)
    lp = float(mode[problem.names.index("log_precision")])
    assert lp == pytest.approx(math.log(40.0), abs=0.4)


# ------------------------------------------------------- segment length
def test_segment_length_from_metadata_or_grid_and_errors():
    params = {**obs_params(), "p_mean": t(80.0)}
    obs = SpectrumObservation()
    uniform = SpectrumData.from_arrays(EEGMAT_GRID, torch.ones_like(EEGMAT_GRID))
    # a 0.25 Hz grid without metadata: 4 s segments
    want = obs.neural_psd({"p_mean": t(80.0)}, EEGMAT_GRID, seg_length=4.0).value
    assert torch.allclose(obs.neural_psd({"p_mean": t(80.0)}, EEGMAT_GRID, seg_length=obs._seg_length(uniform)).value, want)
    # metadata wins (e.g. MNE with zero padding: 2 s segments on a 0.25 Hz grid)
    padded = SpectrumData.from_arrays(EEGMAT_GRID, torch.ones_like(EEGMAT_GRID), metadata={"seg_length_s": 2.0})
    pred = obs.predict(params, padded).value
    assert torch.allclose(pred, obs.predict(params, uniform).value) is False
    assert torch.allclose(
        SpectrumObservation(aperiodic=False, floor=False).predict(params, padded).value,
        params["gain"] ** 2 * 1e6 * obs.neural_psd({"p_mean": t(80.0)}, EEGMAT_GRID, seg_length=2.0).value,
    )
    # a non-uniform grid needs seg_length_s
    log_grid = torch.logspace(0.0, 1.6, 40, dtype=F64)
    bad = SpectrumData.from_arrays(log_grid, torch.ones_like(log_grid))
    with pytest.raises(ValueError, match="seg_length_s"):
        obs.predict(params, bad)
    assert torch.isfinite(SpectrumObservation(window=None).predict(params, bad).value).all()
    ok = SpectrumData.from_arrays(log_grid, torch.ones_like(log_grid), metadata={"seg_length_s": 4.0})
    assert torch.isfinite(obs.predict(params, ok).value).all()
    # the window matrix is computed once per grid
    assert len(obs._window_cache) == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(window="hamming"), "window must be one of"),
        (dict(oversample=0), "oversample must be an int"),
        (dict(oversample=2.0), "oversample must be an int"),
        (dict(segment=50.0), "segment"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpectrumObservation(**kwargs)


def test_repr_and_boxcar():
    assert "window='hann'" in repr(SpectrumObservation())
    assert "window=None" in repr(SpectrumObservation(window=None))
    data = SpectrumData.from_arrays(EEGMAT_GRID, torch.ones_like(EEGMAT_GRID))
    params = {**obs_params(), "p_mean": t(80.0)}
    box = SpectrumObservation(window="boxcar").predict(params, data).value
    hann = SpectrumObservation().predict(params, data).value
    # the boxcar's narrower main lobe keeps more of the peak in its bin, its side lobes leak further
    peak = int(hann.argmax())
    assert float(box[peak]) > float(hann[peak])
    assert float(box[peak + 8]) > float(hann[peak + 8])
