"""Observation models and the InverseProblem."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from jrinfer import JansenRit, welch_psd
from jrinfer.data import EvokedData, SpectrumData
from jrinfer.observation import EvokedObservation, SpectrumObservation
from jrinfer import jansen_rit_prior
from jrinfer.prior import LogNormal, Normal, Prior
from jrinfer.problem import InverseProblem

F64 = torch.float64
FREQS = torch.arange(2.0, 40.01, 0.5, dtype=F64)


def spectrum_data(power=None, units="uV^2/Hz", n_segments=None, freqs=FREQS):
    if power is None:
        power = 1.0 / freqs + 0.1
    return SpectrumData.from_arrays(freqs, power, channel_names=["O1"], units=units, n_segments=n_segments)


def obs_params(**extra):
    p = dict(gain=1.0, ap_amplitude=0.0, ap_exponent=1.0, floor=0.0, log_precision=2.0)
    p.update(extra)
    return {k: torch.tensor(v, dtype=F64) for k, v in p.items()}


@pytest.mark.slow
def test_transfer_and_simulation_predictions_agree_in_stable_regime():
    data = spectrum_data(units="mV^2/Hz")
    params = {**obs_params(), "p_mean": torch.tensor(60.0, dtype=F64), "p_std": torch.tensor(0.05, dtype=F64)}
    lin = SpectrumObservation(method="transfer", aperiodic=False, floor=False).predict(params, data)
    obs = SpectrumObservation(method="simulation", aperiodic=False, floor=False, duration=400.0, transient=8.0, seed=3)
    sim = obs.predict(params, data)
    assert bool(lin.valid) and bool(sim.valid)
    ratio = (sim.value / lin.value).numpy()
    f = FREQS.numpy()
    # the simulation's Welch segments default to the data's (1 / 0.5 Hz = 2 s), and the transfer
    # prediction is the expectation of that estimator, so the smeared peak agrees too
    away = np.abs(f - 9.9) > 1.5
    # 399 half-overlapping Hann segments: relative sd per bin ~ sqrt(1.06 / 399) = 0.052 (bound kept at 0.073),
    # plus interpolation from the Welch grid onto the data grid in log space
    assert np.median(ratio[away]) == pytest.approx(1.0, abs=0.05)
    assert np.abs(np.log(ratio[away])).max() < 5 * 0.073
    assert abs(f[sim.value.argmax()] - f[lin.value.argmax()]) <= 0.5


def test_transfer_gives_minus_inf_with_reason_when_unstable():
    data = spectrum_data()
    obs = SpectrumObservation()
    params = {**obs_params(), "p_mean": torch.tensor([60.0, 220.0], dtype=F64)}
    pred = obs.predict(params, data)
    ll = obs.log_likelihood(pred, params, data)
    assert torch.isfinite(ll[0]) and ll[1] == -math.inf
    assert len(pred.reasons) == 1 and "unstable" in pred.reasons[0] and "simulation" in pred.reasons[0]


def test_prediction_components_and_units():
    base = {"p_mean": torch.tensor(70.0, dtype=F64)}
    point = JansenRit(p_mean=70.0).linear_psd(FREQS).psd
    # the windowed neural PSD for 0.5 Hz bins: Welch segments of 1 / 0.5 Hz = 2 s
    windowed = SpectrumObservation().neural_psd(base, FREQS, seg_length=2.0).value
    for window, neural in ((None, point), ("hann", windowed)):
        obs = SpectrumObservation(window=window)
        for units, u in (("mV^2/Hz", 1.0), ("uV^2/Hz", 1e6), ("V^2/Hz", 1e-6)):
            data = spectrum_data(units=units)
            p = {**base, **obs_params(gain=0.3, ap_amplitude=2.0, ap_exponent=1.5, floor=0.01)}
            pred = obs.predict(p, data).value
            want = 0.09 * u * neural + 2.0 * FREQS**-1.5 + 0.01
            assert torch.allclose(pred, want, rtol=1e-12)


def test_gaussian_log_likelihood_is_normal_on_log_power():
    data = spectrum_data()
    obs = SpectrumObservation()
    params = {**obs_params(log_precision=3.0), "p_mean": torch.tensor(70.0, dtype=F64)}
    pred = obs.predict(params, data)
    ll = float(obs.log_likelihood(pred, params, data))
    sd = math.exp(-1.5)
    want = scipy.stats.norm.logpdf(np.log(data.power.numpy()), np.log(pred.value.numpy()), sd).sum()
    assert ll == pytest.approx(want, rel=1e-12)


def test_whittle_matches_gamma_density_and_welch_statistics():
    # 1) the likelihood is the Gamma(K, mean P) density
    k = 12
    data = spectrum_data(n_segments=k)
    obs = SpectrumObservation(likelihood="whittle")
    params = {**obs_params(), "p_mean": torch.tensor(70.0, dtype=F64)}
    pred = obs.predict(params, data)
    ll = float(obs.log_likelihood(pred, params, data))
    want = scipy.stats.gamma.logpdf(data.power.numpy(), a=k, scale=pred.value.numpy() / k).sum()
    assert ll == pytest.approx(want, rel=1e-12)
    # 2) real Welch estimates of Gaussian white noise (flat PSD 2 sigma^2 / fs) with
    #    K non-overlapping segments: scaled residuals K P / S are Gamma(K, 1)
    g = torch.Generator().manual_seed(4)
    fs, nper = 200.0, 200
    x = torch.randn(400, k * nper, generator=g, dtype=F64)
    w = welch_psd(x, fs, nperseg=nper, noverlap=0)
    assert w.n_segments == k
    interior = w.psd[:, 1:-1].reshape(-1).numpy()
    scaled = interior / (2.0 / fs)
    assert scipy.stats.kstest(scaled, "gamma", args=(k, 0, 1.0 / k)).pvalue > 1e-3
    # and the misspecified shape is rejected
    assert scipy.stats.kstest(scaled, "gamma", args=(k / 2, 0, 2.0 / k)).pvalue < 1e-6


def test_whittle_needs_segment_count():
    data = spectrum_data(n_segments=None)
    obs = SpectrumObservation(likelihood="whittle")
    params = {**obs_params(), "p_mean": torch.tensor(70.0, dtype=F64)}
    with pytest.raises(ValueError, match="n_segments"):
        obs.log_likelihood(obs.predict(params, data), params, data)


def test_default_prior_adapts_to_units():
    # the same physical spectrum in V^2/Hz and uV^2/Hz
    power_uv = 20.0 / FREQS + 5.0 * torch.exp(-0.5 * ((FREQS - 10) / 1.0) ** 2) + 0.05
    medians = {}
    for units, scale in (("uV^2/Hz", 1.0), ("V^2/Hz", 1e-12), ("mV^2/Hz", 1e-6)):
        data = spectrum_data(power_uv * scale, units=units, n_segments=30)
        prior = Prior.from_dict(SpectrumObservation().default_prior(data))
        medians[units] = {n: float(d.quantile(0.5)) for n, d in prior.distributions.items()}
        # at the prior median the predicted power is within a factor 10 of the data in the band
        theta = prior.median()
        problem = InverseProblem(SpectrumObservation(), prior, data)
        pred = problem.predict(theta).value
        ratio = (pred / data.power[0]).median()
        assert 0.1 < float(ratio) < 10.0, (units, float(ratio))
    # the gain is dimensionless: the same physical spectrum gets the same gain in any units
    assert medians["V^2/Hz"]["gain"] == pytest.approx(medians["uV^2/Hz"]["gain"], rel=1e-9)
    assert medians["mV^2/Hz"]["gain"] == pytest.approx(medians["uV^2/Hz"]["gain"], rel=1e-9)
    assert medians["V^2/Hz"]["floor"] == pytest.approx(medians["uV^2/Hz"]["floor"] * 1e-12, rel=1e-9)
    assert medians["uV^2/Hz"]["log_precision"] == pytest.approx(math.log(30))


# ------------------------------------------------------------- evoked
def evoked_data(n_ch=2):
    times = torch.arange(-0.1, 0.4, 1 / 150, dtype=F64)
    values = torch.randn(n_ch, len(times), generator=torch.Generator().manual_seed(0), dtype=F64)
    return EvokedData.from_arrays(times, values, channel_names=[f"E{i}" for i in range(n_ch)], units="uV")


def test_evoked_prediction():
    data = evoked_data()
    obs = EvokedObservation(lead_field=[1.0, -0.5])
    params = {
        "p_mean": torch.tensor(60.0, dtype=F64),
        "input_amplitude": torch.tensor([0.0, 0.05], dtype=F64),
        "input_latency": torch.tensor(0.02, dtype=F64),
        "input_width": torch.tensor(0.005, dtype=F64),
        "gain": torch.tensor(1.0, dtype=F64),
        "baseline": torch.tensor(0.0, dtype=F64),
    }
    pred = obs.predict(params, data)
    assert pred.value.shape == (2, 2, data.times.numel())
    assert pred.valid.all()
    assert pred.value[0].abs().max() < 1e-9  # no input, no response
    x = pred.value[1, 0]
    t = data.times
    assert x[t < 0.02].abs().max() < 1e-9  # nothing before the input latency
    assert x.abs().max() > 100.0  # mV-scale response seen in uV
    assert torch.allclose(pred.value[1, 1], -0.5 * x)  # lead field
    # an oscillating resting state (no stable equilibrium) is invalid
    bad = obs.predict({**params, "p_mean": torch.tensor(220.0, dtype=F64)}, data)
    assert not bad.valid.any() and "stable" in bad.reasons[0]


def test_evoked_per_channel_gain():
    data = evoked_data(n_ch=3)
    obs = EvokedObservation(per_channel_gain=True)
    assert obs.parameter_names(data)[-3:] == ("gain_0", "gain_1", "gain_2")
    prior = Prior.from_dict(obs.default_prior(data))
    assert {"gain_0", "gain_1", "gain_2"} <= set(prior.names) and "gain" not in prior.names
    problem = InverseProblem(obs, prior, data)
    theta = prior.median().clone()
    for c, g in enumerate((1e-3, -2e-3, 0.0)):
        theta[problem.names.index(f"gain_{c}")] = g
    pred = problem.predict(theta).value
    assert pred.shape == (3, data.times.numel())
    assert torch.allclose(pred[1] - pred[1, 0], -2.0 * (pred[0] - pred[0, 0]))
    assert torch.allclose(pred[2], pred[2, :1].expand_as(pred[2]))  # zero gain: only the baseline
    # a shared "gain" is not a parameter of the per-channel model
    with pytest.raises(ValueError, match="does not use"):
        InverseProblem(obs, Prior(dict(prior.distributions), fixed={**prior.fixed, "gain": 1.0}), data)


# ------------------------------------------------------------- problem
def small_problem(**obs_kw):
    data = spectrum_data(n_segments=20)
    obs = SpectrumObservation(**obs_kw)
    prior = Prior.from_dict(obs.default_prior(data))
    return InverseProblem(obs, prior, data)


def test_problem_validation():
    data = spectrum_data()
    obs = SpectrumObservation()
    prior = Prior.from_dict(obs.default_prior(data))
    with pytest.raises(ValueError, match="does not use"):
        InverseProblem(obs, prior.free(bogus=Normal(0.0, 1.0)), data)
    with pytest.raises(ValueError, match="observation parameter"):
        InverseProblem(obs, Prior({"A": LogNormal(3.25, 0.1)}, fixed={"gain": 1.0}), data)
    with pytest.raises(ValueError, match="data must be a SpectrumData"):
        InverseProblem(obs, prior, evoked_data())
    problem = InverseProblem(obs, prior, data)
    with pytest.raises(ValueError, match="theta must have a last axis"):
        problem.log_joint(torch.zeros(3))


def test_problem_densities_and_gradient():
    problem = small_problem()
    theta = problem.prior.sample(5, seed=1)
    lj = problem.log_joint(theta)
    manual = problem.log_prior(theta) + problem.log_likelihood(theta)
    assert torch.allclose(lj, manual, equal_nan=False) or torch.equal(torch.isinf(lj), torch.isinf(manual))
    z = problem.prior.to_unconstrained(problem.prior.median()).unsqueeze(0)
    value, grad = problem.log_joint_and_grad(z)
    eps = 1e-6
    for i in range(problem.n_params):
        dz = torch.zeros_like(z)
        dz[0, i] = eps
        fd = (problem.log_joint_unconstrained(z + dz) - problem.log_joint_unconstrained(z - dz)) / (2 * eps)
        assert float(grad[0, i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-6), problem.names[i]


def test_problem_simulate_is_seeded_and_with_data():
    problem = small_problem()
    theta = problem.prior.median().expand(3, -1)
    a = problem.simulate(theta, seed=5)
    b = problem.simulate(theta, seed=5)
    c = problem.simulate(theta, seed=6)
    assert a.shape == (3, 1, FREQS.numel())
    assert torch.equal(a, b) and not torch.equal(a, c)
    new = problem.with_data(spectrum_data(a[0, 0], n_segments=20))
    assert torch.isfinite(new.log_likelihood(theta)).all()


def test_prior_validity_reports_oscillatory_mass():
    problem = small_problem()
    report = problem.prior_validity(500, seed=0)
    # The default prior is centred on a stable equilibrium, but with the JR 1995 constants the
    # upper equilibrium is only just stable below the Hopf point (decay ~0.5/s), so a sizeable
    # part of the prior (about 45 %) lies in the oscillatory regime. It is reported, not hidden.
    assert 0.2 < report["invalid_fraction"] < 0.7
    assert "unstable" in report["reasons"][0]
    # ... and explained by regime: every unpredictable draw has an unstable upper equilibrium (limit cycle or
    # lower branch), every stable one is predicted; the regime mix adds up
    mix, bad = report["regime_mix"], report["invalid_by_regime"]
    assert abs(sum(mix.values()) - 1) < 1e-12 and bad["stable"] == 0.0
    assert abs(bad["limit_cycle"] + bad["lower_branch"] - report["invalid_fraction"]) < 1e-12
    assert bad["limit_cycle"] == mix["limit_cycle"] and bad["lower_branch"] == mix["lower_branch"]
    words = report["explanation"]
    assert words.startswith(f"{100 * report['invalid_fraction']:.0f} % of 500 prior draws cannot be predicted")
    assert f"{100 * bad['lower_branch']:.0f} % on the lower branch" in words
    assert f"The fit describes the stable regime, which holds {100 * mix['stable']:.0f} % of the prior" in words
    # with the JR 1995 constants fixed, p_mean between the Hopf points (89.8-315.7) is all invalid
    hot = problem.prior.fix(A=3.25, B=22.0, a=100.0, b=50.0, C=135.0).free(p_mean=LogNormal(220.0, 0.1))
    report = InverseProblem(problem.observation, hot, problem.data).prior_validity(500, seed=0)
    assert report["invalid_fraction"] == 1.0
    assert "100 % on the limit cycle" in report["explanation"] and "describes no regime" in report["explanation"]
    # the simulation method predicts every regime: nothing to explain
    sim = InverseProblem(SpectrumObservation(method="simulation", duration=2.0, transient=0.5, segment=1.0),
                         problem.prior, problem.data).prior_validity(20, seed=0)
    assert sim["invalid_fraction"] == 0.0 and "explanation" not in sim


def test_gaussian_form_matches_prediction():
    problem = small_problem()
    form = problem.gaussian_form()
    assert "log_precision" not in form.names
    z_full = problem.prior.to_unconstrained(problem.prior.median())
    idx = [problem.names.index(n) for n in form.names]
    y_hat = form.f(z_full[idx])
    want = torch.log(problem.predict(problem.prior.median()).value).reshape(-1)
    assert torch.allclose(y_hat, want, rtol=1e-12)
    assert form.precision_components.shape == (1, FREQS.numel())
    d = problem.prior.distributions["log_precision"]
    assert float(form.hyper_mean[0]) == pytest.approx(float(d.mean))
