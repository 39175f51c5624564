"""Fits that do not fit say so: the misfit cases of the backend-contract issue, each with its warning.

- a spectrum from the alpha limit cycle fitted with the linearised (transfer) model;
- an evoked response whose component the default input-timing prior cannot reach (flat fit);
- a spectrum near the Hopf boundary, where the Laplace Gaussian spills into the oscillatory regime:
  warned about through k-hat / the invalid fraction, with a NaN-free predictive that ArviZ plots;
- a recorded spectrum fitted past the recording's low-pass filter (1-100 Hz).
"""

import math
import warnings

import matplotlib
import numpy as np
import pytest
import torch

from jrinfer import EvokedData, EvokedObservation, InverseProblem, SpectrumData, SpectrumObservation
from jrinfer.backends.laplace import VariationalLaplace

from conftest import native_or_skip, require_recordings

matplotlib.use("Agg")
F64 = torch.float64
FREQS = torch.arange(2.0, 40.01, 0.25, dtype=F64)
MISFIT = ("poor fit", "alpha peak missed", "harmonic")


def _fit(problem, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return VariationalLaplace().fit(problem, n_draws=400, n_predictive=60, **kw)


@pytest.mark.slow
def test_limit_cycle_spectrum_is_flagged_by_the_fit_quality():
    native_or_skip()
    sim = SpectrumObservation(method="simulation", duration=30.0, segment=4.0, transient=2.0)
    p = {"p_mean": torch.tensor(220.0, dtype=F64), "p_std": torch.tensor(0.0, dtype=F64)}
    neural = sim.neural_psd(p, FREQS)
    assert bool(neural.valid)
    power = 1e6 * 1e-4 * neural.value + 0.01  # uV^2/Hz, gain 0.01, a small floor
    peak = float(FREQS[power.argmax()])
    assert 10.5 <= peak <= 11.5  # the alpha limit cycle (and its harmonic near 22 Hz)
    data = SpectrumData.from_arrays(FREQS, power[None], units="uV^2/Hz", n_segments=14)
    post = _fit(InverseProblem(SpectrumObservation(), None, data))
    # the linearised model has no harmonics: the 22 Hz peak stands far out of the residuals
    q = post.fit_quality
    assert q["harmonic_excess_log_power"] > 3 * q["noise_sd_log_power"], q
    assert any("harmonic" in w and "limit cycle" in w for w in post.warnings), post.warnings
    assert any("simulation" in w for w in post.warnings)  # says what to try


def _late_component_erp():
    """A +10 uV positive component at 430 ms (a P300-like wave) in noise, 250 Hz."""
    times = torch.arange(-0.1, 0.7, 0.004, dtype=F64)
    g = torch.Generator().manual_seed(3)
    wave = 10.0 * torch.exp(-0.5 * ((times - 0.43) / 0.06) ** 2)
    return EvokedData.from_arrays(times, (wave + 0.5 * torch.randn(times.shape, generator=g, dtype=F64))[None], units="uV")


@pytest.mark.slow
def test_flat_evoked_fit_is_flagged():
    # a timing prior aimed at the first 100 ms cannot reach the 430 ms component: a flat fit
    data = _late_component_erp()
    obs = EvokedObservation()
    post = _fit(InverseProblem(obs, obs.default_prior(data, window=(0.0, 0.1)), data))
    assert post.fit_quality["explained_variance"] < 0.5
    assert abs(post.fit_quality["peak_latency_data_s"] - 0.43) < 0.02
    assert any("explains" in w and "input_latency" in w for w in post.warnings), post.warnings


def test_evoked_goodness_of_fit_values():
    data = _late_component_erp()
    obs = EvokedObservation()
    perfect = obs.goodness_of_fit(data, data.values)
    assert perfect.metrics["explained_variance"] == pytest.approx(1.0) and not perfect.warnings
    flat = obs.goodness_of_fit(data, torch.zeros_like(data.values))
    assert flat.metrics["explained_variance"] < 0.1 and flat.warnings


@pytest.mark.slow
def test_near_hopf_spectrum_warns_and_predictive_is_nan_free():
    import arviz as az

    obs = SpectrumObservation()
    template = SpectrumData.from_arrays(FREQS, torch.ones(1, FREQS.numel(), dtype=F64), units="uV^2/Hz", n_segments=20)
    truth = {
        "p_mean": torch.tensor(70.0, dtype=F64),
        "p_std": torch.tensor(1.0, dtype=F64),
        "gain": torch.tensor(3e-3, dtype=F64),
        "ap_amplitude": torch.tensor(1.0, dtype=F64),
        "ap_exponent": torch.tensor(1.0, dtype=F64),
        "floor": torch.tensor(0.01, dtype=F64),
        "log_precision": torch.tensor(math.log(20.0), dtype=F64),
    }
    pred = obs.predict(truth, template)
    y = obs.sample(pred, truth, template, torch.Generator().manual_seed(1))
    data = SpectrumData.from_arrays(FREQS, y, units="uV^2/Hz", n_segments=20)
    post = _fit(InverseProblem(obs, None, data))
    d = post.diagnostics
    # the Gaussian spills into the oscillatory regime, and the result says so
    assert d["invalid_draws"]["fraction"] > 0.1 or d["pareto_k"] > 0.7
    assert any("nuts or smc" in w for w in post.warnings), post.warnings
    assert d["invalid_draws"]["n_invalid"] > 0 and "unstable" in d["invalid_draws"]["reasons"][0]
    # invalid draws are left out of the predictive and counted; ArviZ plots it
    assert np.isfinite(post.predictive).all()
    assert post.predictive.shape[1] == d["invalid_draws"]["n_checked"] - d["invalid_draws"]["n_invalid"]
    idata = post.to_arviz()
    assert idata.posterior_predictive.attrs["n_invalid_draws_left_out"] == d["invalid_draws"]["n_invalid"]
    az.plot_ppc(idata, num_pp_samples=20)
    import matplotlib.pyplot as plt

    plt.close("all")
    # importance resampling keeps only valid draws
    resampled = _fit(InverseProblem(obs, None, data), resample=True)
    assert resampled.diagnostics["importance_resampled"] and resampled.diagnostics["invalid_draws"]["n_invalid"] == 0


@pytest.mark.slow
def test_recorded_spectrum_past_the_low_pass_is_flagged():
    """As a CSV would bring it (no filter information): 1-100 Hz of a recording low-passed at 45 Hz."""
    require_recordings("eegmat/Subject00_1.edf")
    from jrinfer import datasets

    raw = datasets.fetch_eegmat(0, 1)
    picks = [ch for ch in raw.ch_names if ch.replace("EEG ", "").split("-")[0] in ("O1", "O2")]
    spec = raw.compute_psd(method="welch", fmin=1.0, fmax=100.0, picks=picks, n_fft=1024, n_per_seg=1024, verbose="error")
    power = torch.as_tensor(spec.get_data().mean(0) * 1e12, dtype=F64)  # V^2/Hz -> uV^2/Hz
    data = SpectrumData.from_arrays(torch.as_tensor(spec.freqs, dtype=F64), power[None], units="uV^2/Hz", n_segments=60)
    post = _fit(InverseProblem(SpectrumObservation(), None, data))
    assert post.fit_quality["r2_log_power"] < 0.8
    assert any("poor fit" in w and "fmax" in w for w in post.warnings), post.warnings
    # read from the recording itself, the same request is refused up front (the low-pass is known)
    with pytest.raises(ValueError, match="low-pass"):
        datasets.eegmat_spectrum(subject=0, channels=("O1", "O2"), fmin=1.0, fmax=100.0)


# ------------------------------------------------- evoked regime and timing (issue 14, items 4-5)
def _evoked_template(t0=-0.1, t1=0.6, step=0.004):
    times = torch.arange(t0, t1, step, dtype=F64)
    return EvokedData.from_arrays(times, torch.randn(1, times.numel(), dtype=F64, generator=torch.Generator().manual_seed(0)), units="uV")


def test_switching_pulses_are_invalid_with_a_reason():
    data = _evoked_template()
    obs = EvokedObservation()
    q = torch.tensor([0.02, 0.05, 0.5], dtype=F64)
    params = {
        "p_mean": torch.tensor(60.0, dtype=F64),
        "input_amplitude": q,
        "input_latency": torch.tensor(0.03, dtype=F64),
        "input_width": torch.tensor(0.005, dtype=F64),
        "gain": torch.tensor(1.0, dtype=F64),
        "baseline": torch.tensor(0.0, dtype=F64),
    }
    pred = obs.predict(params, data)
    assert pred.valid.tolist() == [True, True, False]
    assert len(pred.reasons) == 1 and "switched the model to its other stable equilibrium" in pred.reasons[0]
    # the valid responses ring around rest (the upper equilibrium is a slowly damped alpha
    # resonance): over the last 100 ms (one cycle) they average out near rest, no step
    tail_mean = pred.value[:2, 0, -25:].mean(-1).abs()
    assert bool((tail_mean < 0.1 * pred.value[:2, 0].abs().amax(-1)).all())


def test_default_evoked_prior_centre_is_in_the_evoked_regime_and_reaches_late_components():
    early = _evoked_template()
    late_erp = _late_component_erp()
    obs = EvokedObservation()
    for data in (early, late_erp):
        problem = InverseProblem(obs, None, data)
        centre = problem.prior.median()
        assert bool(problem.predict(centre).valid)
        pv = problem.prior_validity(200, seed=0)
        assert pv["invalid_fraction"] < 0.25  # 14 % measured
        # the unpredictable draws are (mostly) limit cycles, where a response has no resting state: said so,
        # without the spectra's advice of the simulation method
        assert pv["invalid_by_regime"]["limit_cycle"] > 0.5 * pv["invalid_fraction"], pv
        assert "no resting state" in pv["explanation"] and "--method simulation" not in pv["explanation"]
    timing = obs.timing_prior(late_erp)
    assert abs(timing["component_time_s"] - 0.43) < 0.03  # a 140 ms wide component in noise
    lat = timing["input_latency"]
    # the pulse (peak about n w + 15 ms after onset) reaches the 430 ms component within the prior's 1 sd
    assert abs(lat["mean"] + 7 * timing["input_width"]["median"] + 0.015 - 0.43) < lat["sd"]
    # a window named by the user picks another component
    assert obs.timing_prior(late_erp, window=(0.0, 0.2))["component_time_s"] <= 0.2


@pytest.mark.slow
def test_late_positive_component_is_fitted():
    post = _fit(InverseProblem(EvokedObservation(), None, _late_component_erp_strong()))
    assert post.fit_quality["explained_variance"] > 0.7, post.fit_quality
    assert abs(post.fit_quality["peak_latency_model_s"] - 0.43) < 0.02


def _late_component_erp_strong():
    """A +20 uV component at 430 ms (P300-like), 0.5 uV noise: the default prior must reach it."""
    times = torch.arange(-0.1, 0.7, 0.004, dtype=F64)
    g = torch.Generator().manual_seed(5)
    wave = 20.0 * torch.exp(-0.5 * ((times - 0.43) / 0.04) ** 2)
    return EvokedData.from_arrays(times, (wave + 0.5 * torch.randn(times.shape, generator=g, dtype=F64))[None], units="uV")


def test_a_response_that_does_not_return_to_rest_is_flagged():
    times = torch.arange(-0.2, 0.8, 0.004, dtype=F64)
    step = -3.0 * (times > 0.2).double() - 6.0 * torch.exp(-0.5 * ((times - 0.17) / 0.02) ** 2)
    data = EvokedData.from_arrays(times, step[None] + 0.1 * torch.randn(1, times.numel(), dtype=F64, generator=torch.Generator().manual_seed(1)), units="uV")
    q = EvokedObservation().goodness_of_fit(data, torch.zeros(1, times.numel(), dtype=F64))
    assert q.metrics["end_offset_from_baseline"] == pytest.approx(-3.0, abs=0.1)
    assert any("does not return to rest" in w for w in q.warnings)


@pytest.mark.parametrize("r2, warned", [(0.89, True), (0.91, False)])
def test_misfit_warning_threshold_is_the_acceptance_criterion(r2, warned):
    """A spectrum fitted with R^2 of log-power 0.89 is below the issue's criterion (>= 0.9) and is warned about."""
    from jrinfer.observation import R2_WARN

    assert R2_WARN == 0.9
    power = 10.0 * FREQS**-1.0 * (1.0 + 5.0 * torch.exp(-0.5 * ((FREQS - 10.0) / 1.0) ** 2))
    data = SpectrumData.from_arrays(FREQS, power[None], units="uV^2/Hz", n_segments=50)
    y = torch.log(power)
    u = torch.cos(2 * math.pi * FREQS / 7.0)  # a residual pattern, scaled to give exactly this R^2
    u = u - u.mean()
    scale = math.sqrt((1.0 - r2) * float(((y - y.mean()) ** 2).sum()) / float((u**2).sum()))
    q = SpectrumObservation().goodness_of_fit(data, torch.exp(y - scale * u))
    assert q.metrics["r2_log_power"] == pytest.approx(r2, abs=1e-12)
    assert any(w.startswith("poor fit") for w in q.warnings) == warned, q.warnings


@pytest.mark.parametrize("latency, said", [(-0.012, True), (0.02, False)])
def test_negative_input_latency_is_explained(latency, said):
    """A fitted input pulse that starts before the stimulus is named as such in the fit's warnings."""
    data = _late_component_erp()
    params = {"input_latency": torch.tensor(latency, dtype=F64)}
    q = EvokedObservation().goodness_of_fit(data, data.values[0], params)
    notes = [w for w in q.warnings if "input_latency" in w]
    assert bool(notes) == said, q.warnings
    if said:
        assert "-12 ms" in notes[0] and "before time zero" in notes[0] and "input precedes" in notes[0]


def test_misfit_advice_depends_on_the_spectral_method():
    """A simulation-method fit is not told to try the simulation method; the keys say what they measure."""
    import torch

    from jrinfer import SpectrumData, SpectrumObservation

    freqs = torch.arange(2.0, 40.01, 0.5, dtype=torch.float64)
    power = 20.0 / freqs * (1 + 30 * torch.exp(-0.5 * ((freqs - 10.0) / 0.7) ** 2) + 5 * torch.exp(-0.5 * ((freqs - 20.0) / 0.7) ** 2))
    data = SpectrumData.from_arrays(freqs, power[None], units="uV^2/Hz", n_segments=30)
    flat = 20.0 / freqs  # misses the peak and its harmonic
    params = {"log_precision": torch.tensor(4.0, dtype=torch.float64)}
    for method in ("transfer", "simulation"):
        q = SpectrumObservation(method=method).goodness_of_fit(data, flat, params)
        text = " ".join(q.warnings)
        assert "poor fit" in text and "harmonic" in text, q.warnings
        assert ("method='simulation'" in text) == (method == "transfer"), (method, q.warnings)
        m = q.metrics
        assert m["noise_sd_log_power"] == pytest.approx(float(torch.exp(torch.tensor(-2.0))))
        resid = torch.log(power) - torch.log(flat)
        assert m["residual_rms_log_power"] == pytest.approx(float(resid.pow(2).mean().sqrt()))


def _welch_log_noise(power: torch.Tensor, n_segments: int, seed: int) -> torch.Tensor:
    """A Welch estimate of ``power``: the mean of ``K`` independent exponential periodogram values per bin."""
    g = torch.Generator().manual_seed(seed)
    e = -torch.log(torch.rand((n_segments,) + tuple(power.shape), generator=g, dtype=F64))
    return power * e.mean(0)


def test_a_flat_noisy_spectrum_fitted_by_its_truth_is_not_a_misfit():
    """Low R^2 of a spectrum with little structure above its Welch noise is the data's limit, not a misfit.

    The true spectrum (a weak 1/f, no alpha peak) with Welch noise from K = 20 segments: even the truth
    reaches R^2 well below 0.9 and its "alpha peak" is a noise maximum. Over 40 noise draws, the truth
    is never called a misfit (each test has a 0.001-0.003 false-alarm rate), and the noise ceiling
    brackets the R^2 the truth reaches."""
    from jrinfer.observation import R2_WARN

    truth = 5.0 * FREQS**-0.3
    obs = SpectrumObservation()
    r2, ceiling, misfit = [], [], 0
    for seed in range(40):
        data = SpectrumData.from_arrays(FREQS, _welch_log_noise(truth, 20, seed)[None], units="uV^2/Hz",
                                        n_segments=20)
        q = obs.goodness_of_fit(data, truth)
        r2.append(q.metrics["r2_log_power"])
        ceiling.append(q.metrics["r2_noise_ceiling"])
        misfit += any(w.startswith(MISFIT) for w in q.warnings)
        if q.metrics["r2_log_power"] < R2_WARN:
            assert any("limited by the noise" in w for w in q.warnings), q.warnings
    assert max(r2) < R2_WARN  # the old rule called every one of these a poor fit
    assert misfit == 0
    # the ceiling is the truth's expected R^2 (up to the sampling noise of the data's variance)
    assert abs(np.mean(r2) - np.mean(ceiling)) < 0.1, (np.mean(r2), np.mean(ceiling))


def test_a_prediction_without_an_alpha_peak_has_no_model_peak_and_misses_the_datas():
    """The peak of a spectrum is a local maximum: a prediction that falls through 6-14 Hz has none (it was
    reported at the band's edge, 6.00 Hz, and plotted there), and a data peak it lacks is a misfit."""
    from jrinfer.observation import band_peak

    falling = 10.0 * FREQS**-1.0
    assert band_peak(FREQS, torch.log(falling)) is None
    peaked = falling * (1.0 + 5.0 * torch.exp(-0.5 * ((FREQS - 12.5) / 0.5) ** 2))
    assert band_peak(FREQS, torch.log(peaked)) == pytest.approx(12.5)
    obs = SpectrumObservation()
    data = SpectrumData.from_arrays(FREQS, peaked[None], units="uV^2/Hz", n_segments=40)
    q = obs.goodness_of_fit(data, falling)
    assert q.metrics["peak_frequency_data_hz"] == pytest.approx(12.5)
    assert q.metrics["peak_frequency_model_hz"] is None and q.metrics["peak_shift_hz"] is None
    assert any(w.startswith("alpha peak missed: data 12.50 Hz, the model has no peak") for w in q.warnings), q.warnings
    # data without a peak (a falling spectrum) and a prediction with one: no data peak, nothing to miss
    q = obs.goodness_of_fit(SpectrumData.from_arrays(FREQS, falling[None], units="uV^2/Hz", n_segments=40), peaked)
    assert q.metrics["peak_frequency_data_hz"] is None and not any("peak missed" in w for w in q.warnings)
    # both with a peak: the shift as before
    shifted = falling * (1.0 + 5.0 * torch.exp(-0.5 * ((FREQS - 10.0) / 0.5) ** 2))
    q = obs.goodness_of_fit(data, shifted)
    assert q.metrics["peak_shift_hz"] == pytest.approx(-2.5) and any("peak missed" in w for w in q.warnings)
    # a noisy spectrum without a peak, fitted by its truth: its largest local maximum in the band is noise, and
    # the band-wide threshold keeps it from being called a missed peak (40 noise draws, K = 20)
    for seed in range(40):
        noisy = SpectrumData.from_arrays(FREQS, _welch_log_noise(falling, 20, seed)[None], units="uV^2/Hz",
                                         n_segments=20)
        q = obs.goodness_of_fit(noisy, falling)
        assert not any("peak missed" in w for w in q.warnings), (seed, q.metrics)


def test_a_wrong_model_of_a_noisy_spectrum_is_still_a_misfit():
    """Same noise, but the data hold a 10 Hz peak the prediction lacks: residuals far beyond the noise."""
    truth = 5.0 * FREQS**-0.3 * (1.0 + 3.0 * torch.exp(-0.5 * ((FREQS - 10.0) / 1.0) ** 2))
    data = SpectrumData.from_arrays(FREQS, _welch_log_noise(truth, 20, 0)[None], units="uV^2/Hz", n_segments=20)
    q = SpectrumObservation().goodness_of_fit(data, 5.0 * FREQS**-0.3)
    assert not q.metrics["residuals_within_noise"] and q.metrics["residual_chi2"] > 2 * FREQS.numel()
    assert any(w.startswith("poor fit") for w in q.warnings), q.warnings
    # a prediction with the peak at 6 Hz instead: a real peak shift, far beyond the noise at both peaks
    shifted = 5.0 * FREQS**-0.3 * (1.0 + 3.0 * torch.exp(-0.5 * ((FREQS - 6.0) / 1.0) ** 2))
    q = SpectrumObservation().goodness_of_fit(data, shifted)
    assert q.metrics["peak_residual_noise_sds"] > 3 and any(w.startswith("alpha peak missed") for w in q.warnings)


def test_without_the_number_of_segments_the_r2_rule_stands():
    """No n_segments (e.g. a spectrum from a CSV): the noise is unknown and R^2 < 0.9 is a poor fit."""
    truth = 5.0 * FREQS**-0.3
    data = SpectrumData.from_arrays(FREQS, _welch_log_noise(truth, 20, 1)[None], units="uV^2/Hz")
    q = SpectrumObservation().goodness_of_fit(data, truth)
    assert "r2_noise_ceiling" not in q.metrics
    assert any(w.startswith("poor fit") for w in q.warnings)


# ------------------------------------------------------------------ fit verdict (issue 11, item 1)
def test_verdict_of_the_truth_says_within_noise_and_names_no_band():
    """The true spectrum against its own Welch-noisy estimate (K = 40): the verdict says "within ... noise" and
    names no misfit band, over 20 noise draws (the chi-square test's false-alarm rate is 0.001)."""
    truth = 5.0 * FREQS**-1.0 * (1.0 + 4.0 * torch.exp(-0.5 * ((FREQS - 10.0) / 1.0) ** 2))
    for seed in range(20):
        data = SpectrumData.from_arrays(FREQS, _welch_log_noise(truth, 40, seed)[None], units="uV^2/Hz",
                                        n_segments=40)
        m = SpectrumObservation().goodness_of_fit(data, truth).metrics
        assert "within the data's own noise" in m["verdict"], m["verdict"]
        assert "misfit_from_hz" not in m and 0.8 < m["residual_noise_ratio"] < 1.2, m


@pytest.mark.parametrize("centre, band", [(22.0, "beta"), (6.0, "theta")])
def test_verdict_names_the_band_of_a_bump_the_prediction_lacks(centre, band):
    """Data = truth x a 2 Hz-wide bump (x 2.5 at ``centre``) with Welch noise; prediction = the truth: the verdict
    gives the residual/noise factor and names the bump's band, data above the model."""
    truth = 5.0 * FREQS**-1.0 * (1.0 + 4.0 * torch.exp(-0.5 * ((FREQS - 10.0) / 1.0) ** 2))
    bump = 1.0 + 1.5 * torch.exp(-0.5 * ((FREQS - centre) / 1.0) ** 2)
    data = SpectrumData.from_arrays(FREQS, _welch_log_noise(truth * bump, 40, 0)[None], units="uV^2/Hz",
                                    n_segments=40)
    m = SpectrumObservation().goodness_of_fit(data, truth).metrics
    assert m["residual_noise_ratio"] > 1.5 and f"{m['residual_noise_ratio']:.2g} x the Welch noise" in m["verdict"]
    assert m["misfit_sign"] == 1 and m["misfit_from_hz"] <= centre <= m["misfit_to_hz"], m
    assert abs(m["misfit_peak_hz"] - centre) <= 1.0, m
    assert m["misfit_to_hz"] - m["misfit_from_hz"] < 8.0, m  # the bump (FWHM 2.4 Hz), not the whole range
    assert f"most at {m['misfit_from_hz']:.3g}-{m['misfit_to_hz']:.3g} Hz" in m["verdict"]
    assert f"({band}?; data above the model" in m["verdict"], m["verdict"]


@pytest.mark.slow
def test_fit_verdict_of_model_spectra_with_and_without_a_beta_bump():
    """Variational Laplace fits of a JR spectrum (transfer method, Welch noise from K = 60 segments): of the model's
    own spectrum, the verdict says "within noise"; with a beta bump (x 3 at 21 Hz,
    which one JR population cannot make) it names the bump's band, on the printed fit line, while R^2 stays above
    0.9 (no misfit warning: R^2 alone would call this fit good) and the verdict is no reason for the status."""
    obs = SpectrumObservation()
    truth_params = {"p_mean": torch.tensor(75.0, dtype=F64), "gain": torch.tensor(0.05, dtype=F64),
                    "ap_amplitude": torch.tensor(50.0, dtype=F64), "ap_exponent": torch.tensor(1.5, dtype=F64),
                    "floor": torch.tensor(0.05, dtype=F64)}
    template = SpectrumData.from_arrays(FREQS, torch.ones(1, FREQS.numel(), dtype=F64), units="uV^2/Hz",
                                        n_segments=60)
    truth = obs.predict(truth_params, template).value.reshape(-1)
    bump = 1.0 + 2.0 * torch.exp(-0.5 * ((FREQS - 21.0) / 1.2) ** 2)
    verdicts = {}
    for name, power in (("model", truth), ("bump", truth * bump)):
        data = SpectrumData.from_arrays(FREQS, _welch_log_noise(power, 60, 1)[None], units="uV^2/Hz", n_segments=60)
        post = _fit(InverseProblem(obs, None, data))
        verdicts[name] = post
        fit_line = next(line for line in repr(post).splitlines() if line.startswith("  fit:"))
        assert "r2_log_power" in fit_line and post.fit_quality["verdict"] in fit_line
    m = verdicts["model"].fit_quality
    assert "within the data's own noise" in m["verdict"], m
    b = verdicts["bump"].fit_quality
    assert "misses structure the data resolve" in b["verdict"] and b["misfit_sign"] == 1, b
    assert b["misfit_from_hz"] <= 21.0 <= b["misfit_to_hz"] and "(beta?; data above" in b["verdict"], b
    # the verdict alone is no reason for the status (that keeps to the misfit thresholds and the backend's trust)
    assert all("noise" not in post.status_message for post in verdicts.values())
    assert b["r2_log_power"] >= 0.9 and not any(w.startswith(MISFIT) for w in verdicts["bump"].warnings), b


def test_evoked_verdict_against_the_baseline_noise():
    """ERP with white noise (SD 0.5 uV) around a +10 uV component at 430 ms: the true waveform is "within the
    data's own noise" (RMS ratio near 1); a prediction without the component misses it, and the verdict names the
    interval around 430 ms, data above the model; without a pre-stimulus baseline the noise is unknown."""
    data = _late_component_erp()
    wave = 10.0 * torch.exp(-0.5 * ((data.times - 0.43) / 0.06) ** 2)
    obs = EvokedObservation()
    m = obs.goodness_of_fit(data, wave[None]).metrics
    assert "within the data's own noise" in m["verdict"] and 0.7 < m["residual_noise_ratio"] < 1.3, m
    assert m["noise_sd_baseline"] == pytest.approx(0.5, rel=0.3) and "misfit_from_s" not in m
    m = obs.goodness_of_fit(data, torch.zeros_like(data.values)).metrics
    assert m["residual_noise_ratio"] > 3 and m["misfit_sign"] == 1, m
    assert m["misfit_from_s"] < 0.43 < m["misfit_to_s"] and m["misfit_to_s"] - m["misfit_from_s"] < 0.4, m
    assert f"most at {1e3 * m['misfit_from_s']:.0f}-{1e3 * m['misfit_to_s']:.0f} ms" in m["verdict"]
    late = EvokedData.from_arrays(data.times[data.times >= 0], data.values[:, data.times >= 0], units="uV")
    m = obs.goodness_of_fit(late, torch.zeros_like(late.values)).metrics
    assert "noise of the average is unknown" in m["verdict"] and "residual_noise_ratio" not in m


def test_verdict_says_whether_a_peak_shift_is_the_noise_or_the_model():
    """A model peak more than 0.5 Hz off the data's gets words in the verdict, and they say whether the data
    resolve the shift (the residual at the two peaks beyond PEAK_RESIDUAL_SD Welch noise SDs) or not (the Bonn
    segment, 10 Welch segments: a 1.25 Hz shift within 2.9 SDs had no words). Broad peaks at 11 Hz (data) and
    9.75 Hz (model), data with 3, 6 or 400 Welch segments, 6 noise draws each."""
    from jrinfer.observation import PEAK_RESIDUAL_SD, PEAK_SHIFT_OK_HZ

    def spectrum(centre):
        return 10.0 / FREQS * (1 + 4 * torch.exp(-0.5 * ((FREQS - centre) / 1.5) ** 2))

    seen = set()
    for k in (3, 6, 400):
        for seed in range(6):
            data = SpectrumData.from_arrays(FREQS, _welch_log_noise(spectrum(11.0), k, seed)[None], units="uV^2/Hz",
                                            n_segments=k)
            m = SpectrumObservation().goodness_of_fit(data, spectrum(9.75)).metrics
            v, shift = m["verdict"], m["peak_shift_hz"]
            if abs(shift) <= PEAK_SHIFT_OK_HZ:
                assert "alpha peak is" not in v, v
                seen.add("reproduced")
                continue
            said = (f"the model's alpha peak is {abs(shift):.3g} Hz below the data's "
                    f"({m['peak_frequency_model_hz']:.2f} vs {m['peak_frequency_data_hz']:.2f} Hz)")
            assert said in v, v
            if m["peak_residual_noise_sds"] > PEAK_RESIDUAL_SD:
                assert "beyond the noise" in v and "describes what these data resolve" not in v, v
                seen.add("yet" if "within the data's own noise" in v else "beyond")
                if "within the data's own noise" in v:
                    assert ", yet " + said in v, v
            else:
                assert f"within the noise: at both peaks the data lie within {m['peak_residual_noise_sds']:.1f}" in v, v
                seen.add("within")
    assert seen == {"reproduced", "within", "beyond", "yet"}, seen


def test_verdict_of_an_offset_prediction_says_the_level_is_off():
    """A prediction 2x too low everywhere: one run of same-sign residuals over the whole grid is the level, not a
    band (it was named "11-40 Hz, largest at 40 Hz (gamma?)")."""
    power = 10.0 * FREQS**-1.0 * (1.0 + 5.0 * torch.exp(-0.5 * ((FREQS - 10.0) / 1.0) ** 2))
    data = SpectrumData.from_arrays(FREQS, _welch_log_noise(power, 40, 2)[None], units="uV^2/Hz", n_segments=40)
    v = SpectrumObservation().goodness_of_fit(data, power / 2.0).metrics["verdict"]
    assert "the overall level is off (data above the model by a factor 2" in v and "gamma?" not in v, v


def test_a_verdict_within_noise_does_not_stand_beside_a_missed_peak():
    """A noisy average (baseline SD 4 uV) of a 10 uV component at 430 ms, predicted 60 ms late: the residuals
    are within the noise, yet the main peak is missed; the verdict says both (it said "the model describes what
    these data resolve" on the EEGLAB ERP beside a 55 ms miss)."""
    data = _late_component_erp()
    rng = torch.Generator().manual_seed(3)
    noisy = EvokedData.from_arrays(data.times, data.values + 4.0 * torch.randn(data.values.shape, generator=rng,
                                                                               dtype=F64), units="uV")
    late = 10.0 * torch.exp(-0.5 * ((data.times - 0.49) / 0.06) ** 2)
    q = EvokedObservation().goodness_of_fit(noisy, late[None])
    failed = [w for w in q.warnings if w.startswith(("main peak missed", "poor fit"))]
    assert failed, q.warnings
    v = q.metrics["verdict"]
    assert "within the data's own noise" in v and f"yet {failed[0].split(';')[0]}" in v, v
    assert "the model describes what these data resolve" not in v
    # the true waveform: within the noise and no failed check, so the verdict stands as it is
    wave = 10.0 * torch.exp(-0.5 * ((data.times - 0.43) / 0.06) ** 2)
    q = EvokedObservation().goodness_of_fit(data, wave[None])
    assert "the model describes what these data resolve" in q.metrics["verdict"] and not q.warnings


def test_a_verdict_within_noise_says_when_the_data_have_not_returned_by_the_epochs_end():
    """The 430 ms component cut by an epoch ending at 0.5 s (the EEGLAB 'square' ERP in the default window): the
    true waveform fits within the noise, but the data end far from their baseline; the verdict says the window may
    cut the response instead of "the model describes what these data resolve". The whole epoch: as before."""
    full = _late_component_erp()
    wave = 10.0 * torch.exp(-0.5 * ((full.times - 0.43) / 0.06) ** 2)
    cut = full.times <= 0.46
    data = EvokedData.from_arrays(full.times[cut], full.values[:, cut], units="uV")
    q = EvokedObservation().goodness_of_fit(data, wave[cut][None])
    assert any(w.startswith("the data end ") for w in q.warnings), q.warnings
    v = q.metrics["verdict"]
    assert "within the data's own noise" in v and "have not returned to their pre-stimulus level" in v, v
    assert "the model describes what these data resolve" not in v and "--tmax" in v
    q = EvokedObservation().goodness_of_fit(full, wave[None])
    assert "the model describes what these data resolve" in q.metrics["verdict"] and not q.warnings


# ------------------------------------------------------- ERPs on the lower branch (issue 11, item 3)
def _pulse_params(p_mean, q, width=0.02, latency=0.01):
    t = lambda x: torch.as_tensor(x, dtype=F64)  # noqa: E731
    return {"p_mean": t(p_mean), "input_amplitude": t(q), "input_latency": t(latency), "input_width": t(width),
            "gain": t(1.0), "baseline": t(0.0)}


def test_a_pulse_that_kicks_the_lower_branch_onto_the_limit_cycle_is_invalid_with_a_reason():
    """JR 1995 constants at p_mean 110 (between the first Hopf point 89.83 and the fold 113.59: the lower branch,
    with the limit cycle beside it): a weak pulse (q 0.01, w 20 ms, peak 7.5 pulses/s) returns to rest; a strong one
    (q 1, peak 751 pulses/s) carries the state onto the cycle, where it oscillates for good (measured: 2.2 mV
    peak-to-peak 2.5-3 s later). The first is a valid prediction, the second is not, with its reason."""
    from jrinfer import JansenRit

    data = _evoked_template()
    assert int(JansenRit(p_mean=110.0).regimes()) == 2  # lower_branch
    pred = EvokedObservation().predict(_pulse_params(110.0, [0.01, 1.0]), data)
    assert pred.valid.tolist() == [True, False]
    assert len(pred.reasons) == 1 and "onto the limit cycle" in pred.reasons[0], pred.reasons
    # the weak response has returned to rest by the end of the epoch
    v = pred.value[0, 0]
    assert float(v[-10:].abs().max()) < 0.05 * float(v.abs().max())


@pytest.mark.parametrize("p_mean, rest", [(60.0, "upper"), (100.0, "lower")])
def test_the_fit_says_where_the_population_rests_and_warns_on_the_lower_branch(p_mean, rest):
    """A point estimate at p_mean 60 (upper equilibrium stable) rests at the high equilibrium; at 100 (lower branch)
    at the low one, a near-silent population: S(v_lower) = 0.38 pulses/s (computed here from the equilibrium), and
    the fit warns that the response depends on that resting state; the first gets no such warning."""
    from jrinfer import JansenRit

    data = _evoked_template(-0.1, 0.5)
    obs = EvokedObservation()
    params = _pulse_params(p_mean, 0.03, width=0.005)
    pred = obs.predict(params, data)
    assert bool(pred.valid)
    fq = obs.goodness_of_fit(data, pred.value.reshape(1, -1) + 0.01 * data.values, params)
    m = fq.metrics
    fp = JansenRit(p_mean=p_mean).fixed_points()
    v = float((fp.lower() if rest == "lower" else fp.upper()).v)
    assert m["rest_equilibrium"] == rest
    assert m["rest_firing_rate"] == pytest.approx(5.0 / (1.0 + math.exp(0.56 * (6.0 - v))), rel=1e-9)
    lower = [w for w in fq.warnings if w.startswith("the point estimate is on the lower branch")]
    if rest == "lower":  # the low equilibrium is strongly damped: back at rest well within the epoch
        assert 0.0 < m["response_return_s"] < 0.4 and m["response_end_fraction"] < 0.05, m
        assert m["rest_firing_rate"] < 1.0 and m["upper_growth_rate"] > 0, m
        assert len(lower) == 1 and "near-silent population" in lower[0] and "does not switch it" in lower[0]
        assert "near-silent population" in m["resting_state"]
    else:
        assert not lower and m["rest_firing_rate"] > 1.0 and "high equilibrium" in m["resting_state"], m


def test_rest_upper_starts_every_response_from_the_high_equilibrium():
    """rest='upper': where the high equilibrium is stable (p_mean 60) the prediction is the default's; on the lower
    branch (p_mean 100), where the default starts from the low equilibrium, it is invalid with its reason (so a
    posterior cannot straddle the Hopf point with responses of two resting states); a bad value names the argument;
    the setting survives saving the observation's settings."""
    from jrinfer.observation import observation_from_settings

    data = _evoked_template(-0.1, 0.5)
    params = _pulse_params([60.0, 100.0], 0.03, width=0.005)
    auto, upper = EvokedObservation().predict(params, data), EvokedObservation(rest="upper").predict(params, data)
    assert auto.valid.tolist() == [True, True] and upper.valid.tolist() == [True, False]
    assert torch.equal(auto.value[0], upper.value[0])
    assert len(upper.reasons) == 1 and "rest='upper'" in upper.reasons[0] and "lower branch" in upper.reasons[0]
    obs = EvokedObservation(rest="upper")
    assert "rest='upper'" in repr(obs) and observation_from_settings(obs.settings()).rest == "upper"
    assert obs.regime_context(data, {})["describes"] == ("stable",)
    with pytest.raises(ValueError, match="rest must be one of 'auto', 'upper'"):
        EvokedObservation(rest="low")
    # the default's warning on a lower-branch point estimate points at it
    params = _pulse_params(100.0, 0.03, width=0.005)
    pred = EvokedObservation().predict(params, data)
    fq = EvokedObservation().goodness_of_fit(data, pred.value.reshape(1, -1) + 0.01 * data.values, params)
    assert any("--rest upper" in w for w in fq.warnings if w.startswith("the point estimate is on the lower branch"))


def test_a_population_with_one_equilibrium_is_not_said_to_rest_at_its_high_one():
    """The MNE auditory ERP's rest='upper' optimum (A 2.94, B 22.7, a 109, b 50.1, C 137, p_mean 60) has a single,
    low-activity equilibrium (firing 0.13 pulses/s): it was called "its high equilibrium"."""
    from jrinfer import JansenRit

    t = lambda x: torch.as_tensor(x, dtype=F64)  # noqa: E731
    consts = {"A": t(2.94), "B": t(22.71), "a": t(109.4), "b": t(50.14), "C": t(136.8)}
    fp = JansenRit(**consts, p_mean=60.0).fixed_points()
    assert float(fp.upper().v) == pytest.approx(float(fp.lower().v))  # one equilibrium
    data = _evoked_template(-0.1, 0.5)
    params = {**_pulse_params(60.0, 0.03, width=0.005), **consts}
    obs = EvokedObservation(rest="upper")
    pred = obs.predict(params, data)
    m = obs.goodness_of_fit(data, pred.value.reshape(1, -1) + 0.01 * data.values, params).metrics
    assert "a population at its only equilibrium" in m["resting_state"] and m["rest_firing_rate"] < 0.5, m


def test_a_fitted_response_that_outlasts_the_epoch_is_warned():
    """A lower-branch response (p_mean 100, pulse peaking at 10 + 7 x 5 ms) in an epoch ending at 60 ms has not
    returned at its end while the data (noise) have: warned; in a 500 ms epoch it has returned: silent."""
    obs = EvokedObservation()
    params = _pulse_params(100.0, 0.03, width=0.005)
    for t1, warned in ((0.06, True), (0.5, False)):
        data = _evoked_template(-0.1, t1)
        pred = obs.predict(params, data)
        data = data if warned else EvokedData.from_arrays(data.times, pred.value.reshape(1, -1), units="uV")
        fq = obs.goodness_of_fit(data, pred.value.reshape(1, -1), params)
        said = [w for w in fq.warnings if "end of the epoch" in w and w.startswith("the fitted response is still")]
        assert bool(said) == warned, (t1, fq.metrics, fq.warnings)


@pytest.mark.parametrize("p_values, warned", [((60.0, 70.0), False), ((70.0, 100.0), True)])
def test_an_erp_posterior_across_the_hopf_point_is_warned(p_values, warned):
    """Draws of p_mean half at each of two values (JR 1995 constants; assembled, no fit): 60 and 70 both start the
    response from the high equilibrium (stable), silent; 70 and 100 start it from the high and the low (lower
    branch) equilibrium: the predictive mixes two resting states, warned, naming both shares."""
    from jrinfer.backends._assembly import assemble_posterior

    data = _late_component_erp()
    obs = EvokedObservation()
    spec = obs.default_prior(data, free=("A",))
    spec["distributions"]["p_mean"] = {"dist": "lognormal", "median": 70.0, "sd_log": 0.3}
    spec["fixed"].pop("p_mean")
    problem = InverseProblem(obs, spec, data)
    point = {"A": 3.25, "p_mean": p_values[0], "input_amplitude": 0.03, "input_latency": 0.3, "input_width": 0.01,
             "gain": 1.0, "baseline": 0.0, "log_precision": 0.0}
    theta = torch.tensor([point[n] for n in problem.names], dtype=F64)
    draws = theta.repeat(40, 1)
    draws[20:, problem.names.index("p_mean")] = p_values[1]
    post = assemble_posterior(problem, draws[None].numpy(), backend="laplace", status="converged",
                              point=theta.numpy(), n_predictive=40, n_prior=0)
    said = [w for w in post.warnings if "start their evoked response from different resting states" in w]
    assert bool(said) == warned, post.warnings
    if warned:
        assert "50 % in stable, from the high equilibrium" in said[0] and "50 % in lower_branch" in said[0]
