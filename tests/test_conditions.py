"""Condition effects: a joint observation over conditions, differences with BMR evidence."""

import math

import numpy as np
import pytest
import torch

from jrinfer import InverseProblem, SpectrumData, SpectrumObservation
from jrinfer.conditions import ConditionData, ConditionObservation, condition_effects

F64 = torch.float64
FREQS = torch.arange(2.0, 40.01, 0.25, dtype=F64)
TRUTH = dict(A=3.25, B=22.0, a=100.0, b=50.0, C=135.0, p_mean=70.0, p_std=22.0, e0=2.5, r=0.56, v0=6.0,
             gain=30.0, ap_amplitude=5.0, ap_exponent=1.0, floor=0.01)
A_RATIO = 1.15  # task/rest ratio of a; b does not differ


def _spectrum(over, seed, log_precision):
    obs = SpectrumObservation()
    md = {"seg_length_s": 4.0}
    template = SpectrumData.from_arrays(FREQS, torch.ones(1, FREQS.numel(), dtype=F64), metadata=md)
    p = {k: torch.tensor(v, dtype=F64) for k, v in {**TRUTH, **over}.items()}
    p["log_precision"] = torch.tensor(log_precision, dtype=F64)
    y = obs.sample(obs.predict(p, template), p, template, torch.Generator().manual_seed(seed))
    return SpectrumData.from_arrays(FREQS, y, metadata=md)


@pytest.fixture(scope="module")
def data():
    rest = _spectrum({}, 0, math.log(100.0))
    task = _spectrum({"a": TRUTH["a"] * A_RATIO}, 1, math.log(50.0))
    return ConditionData({"rest": rest, "task": task})


def test_joint_likelihood_is_the_sum_of_the_conditions(data):
    base = SpectrumObservation()
    obs = ConditionObservation(base, ("rest", "task"), vary=("a",))
    problem = InverseProblem(obs, obs.default_prior(data, free=("a", "b", "p_mean")), data)
    assert problem.names[-2:] == ("log_precision_task", "delta_a_task")
    theta = problem.prior.sample(4, seed=1)
    ll = problem.log_likelihood(theta)
    params = problem.parameters(theta)
    expected = 0
    for c in ("rest", "task"):
        pc = obs.condition_parameters(params, c)
        expected = expected + base.log_likelihood(base.predict(pc, data[c]), pc, data[c])
    torch.testing.assert_close(ll, expected)
    # the task's a is the reference's times exp(delta); its noise precision is its own
    pc = obs.condition_parameters(params, "task")
    torch.testing.assert_close(pc["a"], params["a"] * torch.exp(params["delta_a_task"]))
    torch.testing.assert_close(pc["log_precision"], params["log_precision_task"])
    # difference prior: sqrt(2) times the parameter's own log-scale sd (0.2 by default)
    d = problem.prior.distributions["delta_a_task"]
    assert float(d.mean) == 0.0 and float(d.sd) == pytest.approx(math.sqrt(2) * 0.2)
    # observed data: channels stacked and named by condition
    observed = problem.observed()
    assert observed.channels == ("rest:ch0", "task:ch0") and observed.values.shape == (2, FREQS.numel())
    # the Gaussian target: transformed prediction lines up with the stacked log-power
    target = obs.gaussian_target(data)
    assert target.noise_parameters == ("log_precision", "log_precision_task")
    assert target.precision_components.sum(1).tolist() == [FREQS.numel(), FREQS.numel()]
    pred = problem.predict(theta)
    assert target.transform(pred.value).shape == (4, 2, FREQS.numel())


@pytest.mark.parametrize("vary", [("a", "gain"), ("a", "b", "ap_exponent")])
def test_fused_condition_likelihood_matches_autograd(data, vary):
    """A fit of conditions gets the base's fused log-likelihood summed over conditions, with its gradient carried
    through the differences by the chain rule (NUTS took 105 ms per gradient on a rest/task pair by autograd, 0.4 ms
    on one recording): values to 1e-10 and gradients to 1e-7 of the autograd path, -inf with a zero gradient where a
    condition is invalid; a varied parameter held fixed while its difference is free falls back to autograd."""
    import time

    obs = ConditionObservation(SpectrumObservation(), ("rest", "task"), vary=vary)
    problem = InverseProblem(obs, obs.default_prior(data, free=("B", "a", "b", "p_mean")), data)
    assert problem.has_fast_path
    z = problem.prior.to_unconstrained(problem.prior.sample(6, seed=3))
    generic = InverseProblem(obs, problem.prior, data)
    generic._fast_cache = None  # the autograd path
    t0 = time.perf_counter()
    v_fast, g_fast = problem.log_joint_and_grad(z)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    v_slow, g_slow = generic.log_joint_and_grad(z)
    t_slow = time.perf_counter() - t0
    finite = torch.isfinite(v_slow)
    assert finite.sum() >= 3 and torch.equal(finite, torch.isfinite(v_fast))  # some draws are invalid: both say so
    torch.testing.assert_close(v_fast[finite], v_slow[finite], rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(g_fast[finite], g_slow[finite], rtol=1e-7, atol=1e-6)
    assert bool((g_fast[~finite] == 0).all())
    assert t_fast < t_slow, (t_fast, t_slow)
    # the varied parameter fixed while its difference is free: no fused path, the generic one still works
    fixed_a = problem.prior.fix(a=100.0)
    assert not InverseProblem(obs, fixed_a, data).has_fast_path


def test_fused_condition_prediction_and_jacobian_for_variational_laplace(data):
    """Variational Laplace's Gauss-Newton steps get the stacked predictions of every condition and their Jacobian
    from the base's fused path, chained through the differences: equal to the autograd path's (the Gaussian form's
    f and torch.func.jacrev) to 1e-10 / 1e-7, and faster."""
    import time

    obs = ConditionObservation(SpectrumObservation(), ("rest", "task"), vary=("a", "gain"))
    problem = InverseProblem(obs, obs.default_prior(data, free=("B", "a", "b", "p_mean")), data)
    form = problem.gaussian_form()
    assert form.value_and_jacobian is not None
    z = form.prior_mean + 0.002 * torch.linspace(-1, 1, form.prior_mean.numel(), dtype=F64)
    t0 = time.perf_counter()
    value, jac = form.value_and_jacobian(z)
    t_fused = time.perf_counter() - t0
    t0 = time.perf_counter()
    expected = form.f(z)
    expected_jac = torch.func.jacrev(form.f)(z)
    t_autograd = time.perf_counter() - t0
    assert value.shape == expected.shape == (2 * FREQS.numel(),) and torch.isfinite(expected).all()
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(jac, expected_jac, rtol=1e-7, atol=1e-8)
    assert t_fused < t_autograd, (t_fused, t_autograd)


def _vl_fit(data, vary, **options):
    from jrinfer.backends.laplace import VariationalLaplace

    obs = ConditionObservation(SpectrumObservation(), ("rest", "task"), vary=vary)
    problem = InverseProblem(obs, obs.default_prior(data, free=("B", "a", "b", "p_mean")), data)
    return problem, VariationalLaplace(**options).fit(problem, seed=0, n_predictive=50)


@pytest.fixture(scope="module")
def full_fit(data):
    return _vl_fit(data, ("a", "b"))


def test_difference_found_and_no_difference_found(data, full_fit):
    problem, post = full_fit
    assert post.converged
    eff = condition_effects(post, problem)
    a, b = eff["a"]["task"], eff["b"]["task"]
    # a differs: the truth within 3.5 posterior sd, strong evidence, interval excludes 1
    assert abs(a["mean"] - math.log(A_RATIO)) < 3.5 * a["sd"], a
    assert a["log_bayes_factor"] > 5 and a["p_difference"] > 0.99 and a["ratio_lower"] > 1.05
    # b does not: evidence for no difference, zero within 3.5 posterior sd
    assert b["log_bayes_factor"] < 0 and b["p_difference"] < 0.5, b
    assert abs(b["mean"]) < 3.5 * b["sd"], b
    # per-condition fit quality and the peak moves with a
    assert post.fit_quality["r2_log_power_rest"] > 0.95 and post.fit_quality["r2_log_power_task"] > 0.95


@pytest.mark.slow
def test_bmr_and_refitted_reduced_models_agree_in_direction(data, full_fit):
    """Evidence by BMR from the full fit and by refitting the reduced models point the same way.

    Measured (seed 0): b: BMR -2.4 nats, refit F(a,b) - F(a) = -8.1; a: BMR +147, refit +359. The magnitudes
    differ (the Laplace k-hat of the full fit is 0.95: its Gaussian is not exact); the conclusions agree.
    """
    problem, post = full_fit
    eff = condition_effects(post, problem)
    F_a = _vl_fit(data, ("a",))[1].log_evidence  # b reduced to no difference
    F_b = _vl_fit(data, ("b",))[1].log_evidence  # a reduced to no difference
    assert eff["b"]["task"]["log_bayes_factor"] < 0 and post.log_evidence - F_a < 0
    assert eff["a"]["task"]["log_bayes_factor"] > 5 and post.log_evidence - F_b > 5


def test_bmr_evidence_matches_savage_dickey_from_draws(data):
    """The sampling-backend path (a Gaussian fitted to the draws) agrees with the Gaussian posterior path."""
    from jrinfer.posterior import Posterior

    obs = ConditionObservation(SpectrumObservation(), ("rest", "task"), vary=("a",))
    problem = InverseProblem(obs, obs.default_prior(data, free=("a", "p_mean")), data)
    n = problem.n_params
    rng = np.random.default_rng(0)
    mean = np.zeros(n)
    mean[-1] = 0.3
    sd = np.full(n, 0.05)
    draws = problem.prior.from_unconstrained(torch.tensor(mean + sd * rng.standard_normal((20000, n)))).numpy()
    post = Posterior(names=problem.names, draws=draws[None], backend="test")
    eff = condition_effects(post, problem)["a"]["task"]
    s0 = math.sqrt(2) * 0.2
    # Savage-Dickey: log BF(difference) = log p(0) - log q(0)
    expected = (-0.5 * math.log(2 * math.pi * s0**2)) - (-0.5 * math.log(2 * math.pi * 0.05**2) - 0.5 * (0.3 / 0.05) ** 2)
    assert eff["log_bayes_factor"] == pytest.approx(expected, rel=0.05)
    assert eff["bmr_from"] == "gaussian fitted to the draws"


def test_bad_inputs(data):
    base = SpectrumObservation()
    with pytest.raises(ValueError, match="at least two conditions"):
        ConditionObservation(base, ("rest",), vary=("a",))
    with pytest.raises(ValueError, match="does not use"):
        ConditionObservation(base, ("rest", "task"), vary=("nope",))
    with pytest.raises(ValueError, match="letters and digits"):
        ConditionData({"rest": data["rest"], "task 2": data["task"]})
    short = ConditionData({"rest": data["rest"], "task": data["task"].select(fmax=30.0)})
    obs = ConditionObservation(base, ("rest", "task"), vary=("a",))
    with pytest.raises(ValueError, match="same freq grid"):
        InverseProblem(obs, None, short)
    with pytest.raises(ValueError, match="must be a free parameter"):
        obs.default_prior(data, free=("b", "p_mean"))


def _write_csv(path, spectrum):
    rows = ["freq,power [uV^2/Hz]"] + [f"{f!r},{p!r}" for f, p in zip(spectrum.freqs.tolist(), spectrum.power[0].tolist())]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_cli_conditions_summary_and_report(data, tmp_path, capsys):
    import json

    from jrinfer.cli import main

    rest = _write_csv(tmp_path / "rest.csv", data["rest"])
    task = _write_csv(tmp_path / "task.csv", data["task"])
    out = tmp_path / "fit"
    code = main(["fit", rest, task, "--kind", "spectrum", "--conditions", "rest,task", "--vary", "a,b",
                 "--free", "B,a,b,p_mean", "--out", str(out), "--report"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert "condition effects (against rest" in printed and "task/rest ratio" in printed
    effect_lines = printed[printed.index("does any parameter differ?"):].splitlines()
    assert "condition effects (against rest" in effect_lines[1]  # the joint model first, then each difference
    # before the parameters, what changed in the data: alpha-band power, task against rest, data and fit
    f = data["rest"].freqs.numpy()
    band = (f >= 8.0) & (f <= 13.0)
    ratio = (np.trapezoid(data["task"].power.numpy().mean(0)[band], f[band])
             / np.trapezoid(data["rest"].power.numpy().mean(0)[band], f[band]))
    line = next(x for x in printed.splitlines() if x.strip().startswith("alpha power (8-13 Hz), task / rest:"))
    assert f"data {ratio:.3g}, fit " in line, (line, ratio)
    assert printed.index(line) < printed.index("does any parameter differ?")
    s = json.loads((out / "summary.json").read_text())
    ce = s["condition_effects"]
    assert ce["no_difference"]["parameters"] == ["delta_a_task", "delta_b_task"]
    assert ce["no_difference"]["log_bayes_factor"] > 5
    assert ce["reference"] == "rest" and ce["conditions"] == ["rest", "task"]
    k = s["diagnostics"].get("pareto_k")
    assert bool(ce["warnings"]) == (k is not None and k > 0.7)  # BFs flagged when the Gaussian is unreliable
    a, b = ce["effects"]["a"]["task"], ce["effects"]["b"]["task"]
    assert a["log_bayes_factor"] > 5 and b["log_bayes_factor"] < 0
    assert set(s["data"]["file"]) == {"rest", "task"} and len(s["data"]["sha256"]["task"]) == 64
    # each condition's regime (both simulated at p_mean 70: stable), printed, in summary.json and the report
    regimes = s["condition_effects"]["regimes"]
    assert regimes == s["diagnostics"]["regime_by_condition"] and set(regimes) == {"rest", "task"}
    assert all(regimes[c]["regime_point"] == "stable" for c in ("rest", "task")), regimes
    assert "  regime (rest): " in printed and "  regime (task): " in printed
    assert not any("different regimes" in w for w in s["warnings"])
    page = (out / "report.html").read_text()
    assert "Condition effects" in page and "Does any parameter differ between conditions?" in page
    assert ce["alpha_power"] == [line.strip()] and line.strip() in page
    fit_ratio = s["fit_quality"]["alpha_power_ratio_fit_task"]
    assert s["fit_quality"]["alpha_power_ratio_data_task"] == pytest.approx(ratio, rel=1e-9)
    assert abs(math.log(fit_ratio / ratio)) < 0.25, (fit_ratio, ratio)  # a good fit makes the change it fits
    assert "regime mix of the posterior draws, task" in page and "fit, task:</b> R^2" in page
    # bad combinations: one line, exit 2, in the command's words
    assert main(["fit", rest, task, "--kind", "spectrum", "--out", str(tmp_path / "x")]) == 2
    assert "--conditions" in capsys.readouterr().err
    assert main(["fit", rest, task, "--kind", "spectrum", "--conditions", "rest,task,extra", "--vary", "a",
                 "--out", str(tmp_path / "x")]) == 2
    assert "3 condition(s) but 2 DATA" in capsys.readouterr().err
    assert main(["fit", rest, "--kind", "spectrum", "--vary", "a", "--out", str(tmp_path / "x")]) == 2
    assert "--vary needs two or more DATA" in capsys.readouterr().err
    assert main(["fit", rest, task, "--kind", "spectrum", "--conditions", "rest,task", "--vary", "zz",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--vary: unknown parameter 'zz'; known: A, B, a, b" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_eegmat_rest_vs_arithmetic(tmp_path, capsys):
    """EEGMAT Subject00 rest vs serial subtraction, O1/O2, 2-40 Hz: a joint fit that reports each difference."""
    import json
    import os

    from conftest import require_recordings

    from jrinfer.cli import main

    require_recordings("eegmat/Subject00_1.edf", "eegmat/Subject00_2.edf")
    root = os.environ.get("JRINFER_DATA")
    files = [os.path.join(root, "eegmat", f"Subject00_{k}.edf") for k in (1, 2)]
    out = tmp_path / "eegmat"
    code = main(["fit", *files, "--kind", "spectrum", "--conditions", "rest,task", "--vary", "a,b,gain",
                 "--picks", "O1,O2", "--fmin", "2", "--fmax", "40", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    q = s["fit_quality"]
    assert q["r2_log_power_rest"] > 0.8 and q["r2_log_power_task"] > 0.8
    # both alpha peaks reproduced within a bin or two (data: 10.5 and 10.75 Hz)
    assert abs(q["peak_shift_hz_rest"]) <= 0.5 and abs(q["peak_shift_hz_task"]) <= 0.5
    # each condition's regime (measured: stable > 99 % in both, point estimates stable) and fit verdict (residuals
    # 5.2 x and 2.7 x the Welch noise, most at 17.5-28 and 18-29.5 Hz: the beta bump)
    regimes = s["condition_effects"]["regimes"]
    assert {c: regimes[c]["regime_point"] for c in ("rest", "task")} == {"rest": "stable", "task": "stable"}
    assert not any("different regimes" in w for w in s["warnings"])
    for c in ("rest", "task"):
        assert q[f"residual_noise_ratio_{c}"] > 1.5 and 13.0 <= q[f"misfit_peak_hz_{c}"] <= 30.0, q
    for name in ("a", "b", "gain"):
        e = s["condition_effects"]["effects"][name]["task"]
        assert e["lower"] < e["mean"] < e["upper"] and 0 < e["p_difference"] < 1
        assert e["ratio_lower"] > 0.5 and e["ratio_upper"] < 2.0  # informed: far narrower than the prior's 0.44-2.3


def test_evoked_conditions_channel_resolved_predictions():
    """ERPs predict per channel (``(*batch, C, T)``): the joint observation keeps that layout."""
    from jrinfer import EvokedData, EvokedObservation

    times = torch.arange(-0.05, 0.3, 0.002, dtype=F64)
    base = EvokedObservation()
    template = EvokedData.from_arrays(times, torch.ones(2, times.numel(), dtype=F64), ["Fz", "Cz"])
    truth = {k: torch.tensor(v, dtype=F64) for k, v in dict(
        A=3.25, B=22.0, a=100.0, b=50.0, C=135.0, p_mean=60.0, e0=2.5, r=0.56, v0=6.0, input_amplitude=0.03,
        input_latency=0.02, input_width=0.005, gain=1.0, baseline=0.0, log_precision=2.0).items()}
    gen = torch.Generator().manual_seed(0)
    ys = {}
    for c, lat in (("early", 0.02), ("late", 0.05)):
        p = {**truth, "input_latency": torch.tensor(lat, dtype=F64)}
        ys[c] = EvokedData.from_arrays(times, base.sample(base.predict(p, template), p, template, gen), ["Fz", "Cz"])
    data = ConditionData(ys)
    obs = ConditionObservation(base, ("early", "late"), vary=("input_latency",))
    problem = InverseProblem(obs, None, data)
    assert "delta_input_latency_late" in problem.names and obs.vary["input_latency"] == "additive"
    theta = problem.prior.sample(3, seed=2)
    pred = problem.predict(theta)
    assert pred.value.shape == (3, 4, times.numel())
    params = problem.parameters(theta)
    expected = 0
    for c in ("early", "late"):
        pc = obs.condition_parameters(params, c)
        expected = expected + base.log_likelihood(base.predict(pc, data[c]), pc, data[c])
    torch.testing.assert_close(problem.log_likelihood(theta), expected)
    pc = obs.condition_parameters(params, "late")
    torch.testing.assert_close(pc["input_latency"], params["input_latency"] + params["delta_input_latency_late"])
    assert problem.simulate(theta, seed=0).shape == (3, 4, times.numel())
    assert obs.gaussian_target(data).transform(pred.value).shape == (3, 4, times.numel())


def test_pymc_backends_see_the_joint_density(data):
    """NUTS/SMC consume the joint problem unchanged: the PyMC model's density and gradient are the problem's."""
    pytest.importorskip("pymc")
    from jrinfer.backends.pymc import problem_to_pymc

    obs = ConditionObservation(SpectrumObservation(), ("rest", "task"), vary=("a",))
    problem = InverseProblem(obs, obs.default_prior(data, free=("a", "p_mean")), data)
    model = problem_to_pymc(problem)
    logp, dlogp = model.compile_logp(), model.compile_dlogp()
    # a valid point (the fused path's gradient is 0 where the density is -inf, PyMC's the prior's there)
    z = problem.prior.to_unconstrained(problem.prior.median()) + 0.002 * torch.arange(problem.n_params, dtype=F64)
    assert problem.has_fast_path and bool(torch.isfinite(problem.log_joint_and_grad(z)[0]))
    point = {f"{n}_z": z[i].numpy() for i, n in enumerate(problem.names)}
    value, grad = problem.log_joint_and_grad(z)
    assert float(logp(point)) == pytest.approx(float(value), abs=1e-9, rel=0)
    np.testing.assert_allclose(dlogp(point), grad.numpy(), rtol=1e-9, atol=1e-9)


def test_a_difference_held_fixed_is_reported_as_fixed(data):
    from jrinfer.conditions import format_effects
    from jrinfer.posterior import Posterior

    obs = ConditionObservation(SpectrumObservation(), ("rest", "task"), vary=("a", "b"))
    spec = obs.default_prior(data, free=("a", "b", "p_mean"))
    del spec["distributions"]["delta_b_task"]
    spec["fixed"]["delta_b_task"] = 0.0
    problem = InverseProblem(obs, spec, data)
    assert "delta_b_task" not in problem.names
    draws = problem.prior.sample(500, seed=0).numpy()[None]
    eff = condition_effects(Posterior(names=problem.names, draws=draws, backend="test"), problem)
    assert eff["b"]["task"] == {"parameter": "delta_b_task", "scale": "log", "fixed": 0.0}
    # prior draws as "posterior": no information, so the evidence is about even
    assert abs(eff["a"]["task"]["log_bayes_factor"]) < 0.2
    assert any("held fixed at 0" in line for line in format_effects(eff, "rest"))


@pytest.mark.parametrize("mean, sd, reading", [(0.3, 0.05, "agree"), (0.18, 0.1, "differ")])
def test_interval_and_bayes_factor_relation_is_explained(data, mean, sd, reading):
    """An interval that excludes 0 with a weak log BF (a shift small for its prior) is said to be so, in one line.

    Savage-Dickey with prior sd s0 = sqrt(2) 0.2: log BF = z^2/2 - log(s0/sd); mean 0.18, sd 0.1 gives a 90 %
    interval [0.016, 0.344] (excludes 0) and log BF 0.58 (< 1, weak).
    """
    from jrinfer.conditions import INTERVAL_VS_BF, format_effects
    from jrinfer.posterior import Posterior

    obs = ConditionObservation(SpectrumObservation(), ("rest", "task"), vary=("a",))
    problem = InverseProblem(obs, obs.default_prior(data, free=("a", "p_mean")), data)
    n = problem.n_params
    z = np.zeros(n) + 0.05 * np.random.default_rng(1).standard_normal((40000, n))
    z[:, problem.names.index("delta_a_task")] = mean + sd * np.random.default_rng(2).standard_normal(40000)
    draws = problem.prior.from_unconstrained(torch.tensor(z)).numpy()
    e = condition_effects(Posterior(names=problem.names, draws=draws[None], backend="test"), problem)["a"]["task"]
    s0 = math.sqrt(2) * 0.2
    assert e["log_bayes_factor"] == pytest.approx((mean / sd) ** 2 / 2 - math.log(s0 / sd), abs=0.05)
    assert e["lower"] > 0  # the interval excludes no difference in both cases
    assert e["agreement"].startswith(reading), e["agreement"]
    lines = format_effects({"a": {"task": e}}, "rest")
    assert any(INTERVAL_VS_BF in line for line in lines)
    assert any("suggestive, not established" in line for line in lines[2:]) == (reading == "differ"), lines


def test_joint_reduction_is_exact_for_a_linear_gaussian_model():
    """'No difference at all' by BMR equals the ratio of the two models' exact marginal likelihoods."""
    from jrinfer.conditions import _reduce_to_zero

    rng = np.random.default_rng(3)
    n_obs, sigma = 40, 0.5
    X = rng.standard_normal((n_obs, 4))  # columns: two shared parameters, then two differences
    prior_mean = np.array([0.5, -1.0, 0.0, 0.0])
    prior_cov = np.diag([1.0, 2.0, 0.3, 0.2])
    noise = sigma**2 * np.eye(n_obs)

    def log_evidence(Xm, m0, C0, y):
        S = Xm @ C0 @ Xm.T + noise
        r = y - Xm @ m0
        return -0.5 * (r @ np.linalg.solve(S, r) + np.linalg.slogdet(2 * np.pi * S)[1])

    for delta in ([0.0, 0.0], [0.4, -0.3]):
        y = X @ np.array([0.2, -0.8, *delta]) + sigma * rng.standard_normal(n_obs)
        P = np.linalg.inv(prior_cov) + X.T @ X / sigma**2
        cov = np.linalg.inv(P)
        mean = cov @ (np.linalg.solve(prior_cov, prior_mean) + X.T @ y / sigma**2)
        exact = log_evidence(X, prior_mean, prior_cov, y) - log_evidence(X[:, :2], prior_mean[:2],
                                                                          prior_cov[:2, :2], y)
        d = slice(2, 4)
        got = _reduce_to_zero(mean[d], cov[d, d], prior_mean[d], prior_cov[d, d])
        assert got == pytest.approx(exact, abs=1e-8)
        assert (got > 3) == (delta != [0.0, 0.0])  # strong evidence for a difference only when there is one


def _post_from_gaussian(problem, mean, sd, n=20000, seed=0):
    from jrinfer.posterior import Posterior

    rng = np.random.default_rng(seed)
    z = torch.tensor(mean + sd * rng.standard_normal((n, mean.size)))
    return Posterior(names=problem.names, draws=problem.prior.from_unconstrained(z).numpy()[None], backend="test")


def test_no_difference_from_draws_matches_joint_savage_dickey(data):
    """Two differences reduced at once: log p(0) - log q(0) of their joint marginal, from draws."""
    from jrinfer.conditions import no_difference

    obs = ConditionObservation(SpectrumObservation(), ("rest", "task"), vary=("a", "b"))
    problem = InverseProblem(obs, obs.default_prior(data, free=("a", "b", "p_mean")), data)
    n = problem.n_params
    ia, ib = problem.names.index("delta_a_task"), problem.names.index("delta_b_task")
    mean, sd = np.zeros(n), np.full(n, 0.05)
    mean[ia], mean[ib] = 0.2, -0.05
    joint = no_difference(_post_from_gaussian(problem, mean, sd), problem)
    assert joint["parameters"] == ["delta_a_task", "delta_b_task"]
    s0 = math.sqrt(2) * 0.2
    log_p0 = 2 * (-0.5 * math.log(2 * math.pi * s0**2))
    log_q0 = sum(-0.5 * math.log(2 * math.pi * 0.05**2) - 0.5 * (m / 0.05) ** 2 for m in (0.2, -0.05))
    assert joint["log_bayes_factor"] == pytest.approx(log_p0 - log_q0, abs=0.15)
    assert joint["bmr_from"] == "gaussian fitted to the draws"
    # independent differences: the joint log BF is the sum of the single ones ('a' for, 'b' against a difference)
    eff = condition_effects(_post_from_gaussian(problem, mean, sd), problem)
    single = [eff[v]["task"]["log_bayes_factor"] for v in ("a", "b")]
    assert single[1] < 0 < single[0] and joint["log_bayes_factor"] == pytest.approx(sum(single), abs=0.15)


def test_no_difference_on_simulated_conditions(data, full_fit):
    """Conditions that differ (a x 1.15): the joint model 'no difference' loses; the same truth twice: it wins.

    Measured (seed 0): +207 nats for a difference when a differs, -10.6 when nothing does.
    """
    from jrinfer.conditions import no_difference

    problem, post = full_fit
    joint = no_difference(post, problem)
    assert joint["log_bayes_factor"] > 5 and joint["bmr_from"] == "gaussian posterior"
    same = ConditionData({"rest": data["rest"], "task": _spectrum({}, 2, math.log(50.0))})
    problem0, post0 = _vl_fit(same, ("a", "b"), n_starts=1)  # the truth is the prior mean: one start suffices
    joint0 = no_difference(post0, problem0)
    assert joint0["log_bayes_factor"] < 0 and joint0["p_difference"] < 0.5, joint0


def _regime_post(p_task: float, seed: int = 0):
    """A joint rest/task posterior assembled (no fit) from draws around rest p_mean 70 and task p_mean ``p_task``."""
    from jrinfer.backends._assembly import assemble_posterior

    rest = _spectrum({}, 0, math.log(100.0))
    cdata = ConditionData({"rest": rest, "task": rest})
    obs = ConditionObservation(SpectrumObservation(), ("rest", "task"), vary=("p_mean",))
    problem = InverseProblem(obs, obs.default_prior(cdata, free=("a", "p_mean")), cdata)
    point = {n: float(problem.prior.distributions[n].median) if hasattr(problem.prior.distributions[n], "median")
             else 0.0 for n in problem.names}
    point.update(a=100.0, p_mean=70.0, delta_p_mean_task=math.log(p_task / 70.0))
    theta = torch.tensor([point[n] for n in problem.names], dtype=F64)
    g = torch.Generator().manual_seed(seed)
    scale = torch.zeros_like(theta)
    scale[problem.names.index("p_mean")] = 1.0  # +-1 pulse/s: every draw in the point's regime
    draws = theta + scale * torch.randn((200, theta.numel()), generator=g, dtype=F64)
    return assemble_posterior(problem, draws[None].numpy(), backend="laplace", status="converged", point=theta.numpy(),
                              n_predictive=20, n_prior=0)


@pytest.mark.parametrize("p_task, regimes", [(60.0, ("stable", "stable")), (100.0, ("stable", "lower_branch"))])
def test_condition_regimes_are_reported_and_a_crossing_is_warned(p_task, regimes):
    """Each condition's regime mix and point regime (JR 1995 constants: p_mean 60 and 70 stable, 100 between the
    first Hopf point 89.83 and the fold 113.59: lower branch); one 'regime (condition):' line each; a warning when
    the conditions sit in different regimes, and, for the transfer method, that the task's mass lies where it
    cannot describe; neither when both are stable."""
    post = _regime_post(p_task)
    by = post.diagnostics["regime_by_condition"]
    assert [by[c]["regime_point"] for c in ("rest", "task")] == list(regimes)
    assert [by[c]["regime"] for c in ("rest", "task")] == list(regimes)
    assert by["task"]["regime_mix"][regimes[1]]["fraction"] == 1.0
    text = repr(post)
    for c, r in zip(("rest", "task"), regimes):
        assert f"  regime ({c}): {r} 100 % of the posterior draws; point estimate {r}" in text, text
    crossing = [w for w in post.warnings if w.startswith("the conditions sit in different regimes")]
    outside = [w for w in post.warnings if w.startswith("task: ") and "cannot describe" in w]
    if regimes[0] == regimes[1]:
        assert not crossing and not outside, post.warnings
    else:
        assert len(crossing) == 1 and "rest: stable 100 %, point estimate stable" in crossing[0]
        assert "task: lower_branch 100 %, point estimate lower_branch" in crossing[0]
        assert len(outside) == 1 and "transfer method" in outside[0]
