"""Variational Laplace on Jansen-Rit problems: recovery, model comparison, real EEG, contracts, CLI."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

import jrinfer
from jrinfer import InverseProblem, Posterior, SpectrumData, SpectrumObservation
from jrinfer.backends.laplace import VariationalLaplace
from jrinfer.comparison import log_bayes_factor
from jrinfer.cli import main

from conftest import require_recordings

F64 = torch.float64
TRUTH = dict(
    A=3.25, B=22.0, a=100.0, b=50.0, C=135.0, p_mean=70.0,
    gain=0.004, ap_amplitude=0.002, ap_exponent=1.0, floor=1e-4, log_precision=math.log(40.0),
)


def synthetic_problem(observation=None):
    base = jrinfer.datasets.synthetic_spectrum()
    obs = observation or SpectrumObservation()
    return InverseProblem(obs, obs.default_prior(base), base)


def theta_of(problem, values):
    return torch.tensor([values[n] for n in problem.names], dtype=F64)


def with_simulated_data(problem, theta, seed):
    y = problem.simulate(theta, seed=seed)
    data = SpectrumData.from_arrays(problem.data.freqs, y[0], units=problem.data.units, n_segments=40)
    return problem.with_data(data)


@pytest.mark.slow
def test_parameter_recovery_and_calibration_over_20_seeds():
    problem = synthetic_problem()
    theta = theta_of(problem, TRUTH)
    prior_sd = problem.prior.gaussian_unconstrained()[1].diag().sqrt().numpy()
    covered = {n: 0 for n in problem.names}
    contraction = {n: [] for n in problem.names}
    for seed in range(20):
        fitted = with_simulated_data(problem, theta, seed)
        post = VariationalLaplace().fit(fitted, seed=seed)
        assert post.converged, post.message
        lo, hi = post.quantile(0.025), post.quantile(0.975)
        for i, n in enumerate(problem.names):
            covered[n] += int(lo[i] <= TRUTH[n] <= hi[i])
            contraction[n].append(math.sqrt(post.cov_unconstrained[i, i]) / prior_sd[i])
        # the posterior predictive reproduces the data's alpha peak
        f = fitted.data.freqs.numpy()
        pred_peak = f[np.nanmedian(post.predictive[0, :, 0], axis=0).argmax()]
        data_peak = f[fitted.data.power[0].numpy().argmax()]
        assert abs(pred_peak - data_peak) <= 0.5
    identifiable = [n for n in problem.names if np.mean(contraction[n]) < 0.5]
    # the spectrum pins down the time constants, the gain, the aperiodic level and the noise
    assert {"a", "b", "gain", "log_precision"} <= set(identifiable), contraction
    for n in identifiable:
        # 95 % intervals: P(fewer than 17 of 20 covered) = 1.6 % for a calibrated posterior
        assert covered[n] >= 17, (n, covered[n])


@pytest.mark.slow
def test_model_comparison_picks_the_generating_model():
    full = synthetic_problem(SpectrumObservation(aperiodic=True))
    reduced = synthetic_problem(SpectrumObservation(aperiodic=False))
    strong_ap = dict(TRUTH, ap_amplitude=0.05, ap_exponent=1.5)
    vl = VariationalLaplace()
    for seed in range(3):
        # data with a clear 1/f component: the full model wins
        data_full = with_simulated_data(full, theta_of(full, strong_ap), seed).data
        f_full = vl.fit(full.with_data(data_full)).log_evidence
        f_red = vl.fit(reduced.with_data(data_full)).log_evidence
        assert log_bayes_factor(f_full, f_red) > 3.0
        # data without it: Occam's razor favours the reduced model
        data_red = with_simulated_data(reduced, theta_of(reduced, TRUTH), seed).data
        f_full = vl.fit(full.with_data(data_red)).log_evidence
        f_red = vl.fit(reduced.with_data(data_red)).log_evidence
        assert log_bayes_factor(f_red, f_full) > 0.0


@pytest.mark.slow
def test_fit_to_real_eegmat_resting_spectrum():
    require_recordings()
    data = jrinfer.datasets.eegmat_spectrum(subject=0, channels=("O2",), fmin=2.0, fmax=40.0)
    obs = SpectrumObservation()
    problem = InverseProblem(obs, obs.default_prior(data), data)
    post = VariationalLaplace().fit(problem)
    assert post.converged, post.message
    f = data.freqs.numpy()
    band = (f >= 7) & (f <= 14)
    mode = problem.prior.from_unconstrained(torch.from_numpy(post.mean_unconstrained))
    pred = problem.predict(mode).value.detach().numpy()
    data_peak = f[band][data.power[0].numpy()[band].argmax()]
    assert data_peak == pytest.approx(10.5, abs=0.25)
    assert abs(f[band][pred[band].argmax()] - data_peak) <= 0.5
    predictive_peak = f[band][np.nanmedian(post.predictive[0, :, 0], axis=0)[band].argmax()]
    assert abs(predictive_peak - data_peak) <= 0.5


@pytest.mark.slow
def test_fit_to_real_auditory_erp_reproduces_n100():
    require_recordings("mne_sample_erp_neurokit2/data.csv")
    data = jrinfer.datasets.fetch_mne_sample_erp("audio").mean_over_channels()
    obs = jrinfer.EvokedObservation()
    problem = InverseProblem(obs, obs.default_prior(data), data)
    post = VariationalLaplace().fit(problem, n_draws=200, n_predictive=20)
    assert post.converged, post.message
    t = data.times.numpy()
    mode = problem.prior.from_unconstrained(torch.from_numpy(post.mean_unconstrained))
    pred = problem.predict(mode).value[0].detach().numpy()
    n100 = (t > 0.05) & (t < 0.15)
    data_t = t[n100][data.values[0].numpy()[n100].argmin()]
    assert 0.08 <= data_t <= 0.12
    assert abs(t[n100][pred[n100].argmin()] - data_t) <= 0.010
    # residual sd well below the N100 amplitude
    resid = data.values[0].numpy() - pred
    assert resid.std() < 0.3 * abs(data.values[0].numpy()[n100].min())


# ------------------------------------------------------------ contract suite
def test_backend_contract():
    problem = synthetic_problem()
    post = VariationalLaplace().fit(problem, n_draws=300, n_predictive=50, seed=3)
    assert isinstance(post, Posterior)
    assert post.names == problem.names
    assert post.draws.shape == (1, 300, problem.n_params)
    assert post.predictive.shape == (1, 50, 1, problem.data.freqs.numel())
    assert np.isfinite(post.log_evidence)
    idata = post.to_arviz()
    assert set(problem.names) <= set(idata.posterior.data_vars)
    assert idata.observed_data["y"].dims == ("channel", "freq")
    again = VariationalLaplace().fit(problem, n_draws=300, n_predictive=50, seed=3)
    assert np.allclose(post.draws, again.draws, rtol=1e-10)
    # the draws follow the Gaussian: their mean in unconstrained space is the VL mean
    z = problem.prior.to_unconstrained(torch.from_numpy(post.draws[0]))
    assert np.allclose(z.mean(0).numpy(), post.mean_unconstrained, atol=4 * np.sqrt(np.diag(post.cov_unconstrained) / 300))


def test_non_convergence_is_reported():
    problem = synthetic_problem()
    with pytest.warns(RuntimeWarning, match="VariationalLaplace"):
        post = VariationalLaplace(max_iter=1).fit(problem, n_draws=10, n_predictive=0)
    assert post.status == "max_iter" and not post.converged and post.message


def test_invalid_options_name_the_parameter():
    with pytest.raises(ValueError, match="max_iter"):
        VariationalLaplace(max_iter=0)
    with pytest.raises(ValueError, match="n_draws"):
        VariationalLaplace().fit(synthetic_problem(), n_draws=0)
    with pytest.raises(ValueError, match="problem must be an InverseProblem"):
        VariationalLaplace().fit("not a problem")
    whittle = synthetic_problem(SpectrumObservation(likelihood="whittle"))
    with pytest.raises(ValueError, match="Gaussian likelihood"):
        VariationalLaplace().fit(whittle)


# ------------------------------------------------------------------- CLI
def test_cli_fit_writes_summary_posterior_and_plot(tmp_path, capsys):
    csv = tmp_path / "spec.csv"
    jrinfer.datasets.synthetic_spectrum().to_csv(csv)
    out = tmp_path / "fit"
    code = main(["fit", str(csv), "--kind", "spectrum", "--backend", "laplace", "--out", str(out), "--n-segments", "40"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "converged" and summary["n_iter"] > 0
    assert np.isfinite(summary["free_energy"])
    for name in ("A", "a", "b", "gain"):
        row = summary["parameters"][name]
        assert set(row) == {"mean", "sd", "q05", "q95", "units", "contraction", "informed"}
        assert row["informed"] and 0.2 < row["contraction"] <= 1.0
    assert summary["parameters"]["a"]["units"] == "1/s" and summary["parameters"]["gain"]["units"] == "1"
    assert summary["fit_quality"]["r2_log_power"] > 0.9 and abs(summary["fit_quality"]["peak_shift_hz"]) <= 0.5
    assert isinstance(summary["warnings"], list) and "pareto_k" in summary["diagnostics"]
    assert summary["parameters"]["a"]["q05"] < 100.0 < summary["parameters"]["a"]["q95"]
    import arviz as az

    idata = az.from_netcdf(str(out / "posterior.nc"))
    assert "freq" in idata.observed_data.coords and "posterior_predictive" in idata.groups()
    assert (out / "fit.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "content, args, match",
    [
        ("freq,power\n1,2\n2,-1\n", [], "power"),
        ("freq,power\n2,1\n1,2\n", [], "freq"),
        ("1,2\n2,3\n", [], "header"),
        ("freq,power\n1,2\n2,nan\n", [], "power"),
        (None, [], "no such file"),
        ("freq,power\n1,2\n2,3\n", ["--backend", "npe"], "needs --estimator"),
        ("freq,power\n1,2\n2,3\n", ["--channels", "Oz"], "Oz"),
        ("freq,power\n1,2\n2,3\n3,4\n", ["--fmin", "10", "--fmax", "20"], "empty"),
    ],
)
def test_cli_fit_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, content, args, match):
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    code = main(["fit", str(path), "--kind", "spectrum", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert match.lower() in err.lower(), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_cli_fit_rejects_a_file_that_is_not_eeg(tmp_path, capsys):
    path = tmp_path / "fake.edf"
    path.write_bytes(b"this is not an EDF file at all" * 10)
    code = main(["fit", str(path), "--kind", "spectrum", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "not readable as EEG" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_fit_evoked_csv(tmp_path, capsys):
    require_recordings("mne_sample_erp_neurokit2/data.csv")
    csv = tmp_path / "erp.csv"
    jrinfer.datasets.fetch_mne_sample_erp("audio").mean_over_channels().to_csv(csv)
    out = tmp_path / "fit"
    code = main(["fit", str(csv), "--kind", "evoked", "--units", "uV", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    # with 16 starts a second optimum (1.5 nats lower, 3.3 SDs away, a barrier between them) competes: the status
    # says so, and only so (no misfit, no unreliable k-hat)
    assert summary["diagnostics"]["optimizer_converged"] is True
    assert summary["status"] == "converged" or summary["status_message"].startswith("the posterior is multimodal") \
        and ";" not in summary["status_message"], summary["status_message"]
    latency = summary["parameters"]["input_latency"]["mean"]
    width = summary["parameters"]["input_width"]["mean"]
    assert 0.0 < latency + 7 * width < 0.093  # the input pulse peaks before the N100 at 93 ms
    assert summary["fit_quality"]["explained_variance"] > 0.8
    assert abs(summary["fit_quality"]["peak_latency_model_s"] - 0.093) < 0.01
    import arviz as az

    idata = az.from_netcdf(str(out / "posterior.nc"))
    assert idata.observed_data["y"].dims == ("channel", "time")
