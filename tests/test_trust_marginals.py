"""Where an approximation misleads: Laplace marginals against their importance-weighted ones, regimes of fits.

A one-sided problem (a parameter the data bound from one side only: flat likelihood at the mode, so the Laplace
Gaussian keeps the prior's width) is checked against its posterior by quadrature; a linear-Gaussian problem (where
the Gaussian is exact) must not be flagged.
"""

import math

import numpy as np
import pytest
import torch

import jrinfer
from jrinfer import EvokedData, InverseProblem, SpectrumData, SpectrumObservation
from jrinfer.backends._assembly import assemble_posterior
from jrinfer.backends.laplace import VariationalLaplace
from test_pymc import SIGMA, _ToyGaussian

pytest.importorskip("arviz")

F64 = torch.float64

#: One-sided model: y(t) = b0 + exp(K (u - U0)) t + noise. The slope is >= 0 and the data (true slope 0) bound it
#: above by about 2 SEs (0.4), i.e. u <~ U0 + log(0.4) / K = 0.82; at the prior mean u = 0 the slope's
#: derivative is K exp(-K U0) = 0.034, far below its SE (0.19): the likelihood is flat at the mode.
K, U0 = 5.0, 1.0


# the toy observation of the PyMC tests: Gaussian noise of SD SIGMA (0.5 there too) around mean(params, t)
_Toy = _ToyGaussian


class OneSided(_Toy):
    """``y = b0 + exp(K (u - U0)) t``; b0 ~ N(0, 2), u ~ N(0, 1)."""

    PRIOR = {"b0": {"dist": "normal", "mean": 0.0, "sd": 2.0}, "u": {"dist": "normal", "mean": 0.0, "sd": 1.0}}

    def parameter_names(self, data=None):
        return ("b0", "u")

    def mean(self, params, t):
        b0, u = torch.broadcast_tensors(torch.as_tensor(params["b0"]), torch.as_tensor(params["u"]))
        return b0.unsqueeze(-1) + torch.exp(K * (u.unsqueeze(-1) - U0)) * t


class Linear(_Toy):
    """``y = b0 + b1 t``: the posterior is Gaussian and the Laplace approximation exact."""

    PRIOR = {"b0": {"dist": "normal", "mean": 0.5, "sd": 2.0}, "b1": {"dist": "normal", "mean": -1.0, "sd": 1.0}}

    def parameter_names(self, data=None):
        return ("b0", "b1")

    def mean(self, params, t):
        b0, b1 = torch.broadcast_tensors(torch.as_tensor(params["b0"]), torch.as_tensor(params["b1"]))
        return b0.unsqueeze(-1) + b1.unsqueeze(-1) * t


def _toy(obs, mean_fn, n=20, seed=1, detrend=False):
    """Data ``mean_fn(t) + noise``; ``detrend``: the noise's least-squares line removed (its slope exactly 0)."""
    times = torch.linspace(0.0, 2.0, n, dtype=F64)
    e = SIGMA * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    if detrend:
        X = torch.stack([torch.ones_like(times), times], -1)
        e = e - X @ torch.linalg.lstsq(X, e[:, None]).solution[:, 0]
    return InverseProblem(obs, None, EvokedData.from_arrays(times, mean_fn(times) + e))


def _one_sided_problem():
    # the data's least-squares slope is exactly 0, so the slope exp(K (u - U0)) > 0 is bounded above only
    return _toy(OneSided(), lambda t: 0.3 + 0.0 * t, detrend=True)


def _quadrature_u(problem):
    """Marginal posterior of u on a grid (b0 integrated out on a grid): ``(u, density)``."""
    t, y = problem.data.times.numpy(), problem.data.values[0].numpy()
    b0 = np.linspace(-4.0, 4.0, 801)[:, None, None]
    u = np.linspace(-6.0, 3.0, 1801)[None, :, None]
    r = y - (b0 + np.exp(K * (u - U0)) * t)
    logp = -0.5 * (r**2).sum(-1) / SIGMA**2 - 0.5 * b0[..., 0] ** 2 / 4.0 - 0.5 * u[..., 0] ** 2
    p = np.exp(logp - logp.max()).sum(0)
    ug = u[0, :, 0]
    return ug, p / np.trapezoid(p, ug)


def test_one_sided_laplace_marginal_is_flagged_and_matches_quadrature():
    problem = _one_sided_problem()
    post = VariationalLaplace(n_starts=1).fit(problem, n_draws=4000, seed=0)
    i = problem.names.index("u")
    gauss_c = 1.0 - post.cov_unconstrained[i, i] / 1.0
    assert gauss_c < 0.2, gauss_c  # the Gaussian keeps the prior's width: it would call u "not informed"
    im = post.diagnostics["importance_marginals"]
    rec = im["parameters"]["u"]
    assert post.diagnostics["pareto_k"] <= 0.7 and rec["non_gaussian"], (post.diagnostics["pareto_k"], rec)
    assert rec["shape"] == "one-sided: bounded above by the data"
    assert not im["parameters"]["b0"]["non_gaussian"], im["parameters"]["b0"]
    # the weighted contraction is the posterior's: against quadrature within 4 Monte-Carlo SEs of a variance
    ug, dens = _quadrature_u(problem)
    m = np.trapezoid(ug * dens, ug)
    var = np.trapezoid((ug - m) ** 2 * dens, ug)
    exact_c = 1.0 - var
    assert exact_c > 0.3, exact_c  # the data do inform u
    assert abs(rec["weighted_contraction"] - exact_c) < 4 * rec["weighted_contraction_se"], (rec, exact_c)
    # and its 95 % point, within 4 SEs of a quantile (sqrt(p (1 - p) / ESS) / density there)
    cdf = np.cumsum(dens) * (ug[1] - ug[0])
    q95 = np.interp(0.95, cdf, ug)
    se_q = math.sqrt(0.05 * 0.95 / im["ess"]) / np.interp(q95, ug, dens)
    assert abs(rec["weighted_q95"] - q95) < 4 * se_q, (rec["weighted_q95"], q95, se_q)
    assert rec["weighted_q95"] < rec["gaussian_q95"] - 0.5 * math.sqrt(post.cov_unconstrained[i, i])
    # where the user looks: not "not informed", a warning naming u with --resample, summary and repr
    assert "u" not in post.uninformed and post.contraction["u"] == pytest.approx(rec["weighted_contraction"])
    warn = [w for w in post.warnings if "marginal misstates" in w]
    assert len(warn) == 1 and "u (one-sided: bounded above by the data)" in warn[0] and "--resample" in warn[0]
    assert "b0" not in warn[0].split("misstates")[1].split(":")[0]
    s = post.summary()["parameters"]["u"]
    assert s["marginal"].startswith("one-sided") and s["informed"] and s["weighted_q95"] == rec["weighted_q95"]
    assert "one-sided: bounded above by the data; importance-weighted" in repr(post)
    # the printed row carries the weighted mean and sd (those the contraction is from), the Gaussian's in the note
    row = next(line for line in repr(post).splitlines() if line.split()[:1] == ["u"])
    assert row.split()[1:3] == [f"{rec['weighted_mean']:.4g}", f"{rec['weighted_sd']:.3g}"], row
    assert "the Gaussian's: mean" in row
    # ... and so do summary.json and the report: one mean per parameter wherever the user looks (a fresh user found
    # the printed table, summary.json and report.html giving two), the Gaussian's beside it
    assert (s["mean"], s["sd"], s["q05"], s["q95"]) == (rec["weighted_mean"], rec["weighted_sd"], rec["weighted_q05"],
                                                         rec["weighted_q95"])
    i = post.names.index("u")
    assert s["gaussian_mean"] == pytest.approx(float(post.mean[i])) and s["gaussian_sd"] == pytest.approx(float(post.sd[i]))
    from jrinfer.report import report_html

    from jrinfer.report import _num

    page = report_html(post, {})
    cells = page[page.index("<td class='l'><b>u</b></td>"):].split("</tr>")[0]
    assert cells.split("</td>")[1] == f"<td>{_num(rec['weighted_mean'])}", cells
    assert "the Gaussian&#x27;s: mean" in cells or "the Gaussian's: mean" in cells, cells
    assert "the weighted ones, with the Gaussian's beside them" in warn[0]
    from jrinfer.identifiability import posterior_summary

    assert "u" not in posterior_summary(post, problem.prior).not_informed  # the identifiability headline agrees


def test_resampled_draws_follow_the_weighted_marginal_and_are_not_flagged():
    problem = _one_sided_problem()
    post = VariationalLaplace(n_starts=1).fit(problem, n_draws=4000, seed=0, resample=True)
    assert post.diagnostics["importance_resampled"] and not post.non_gaussian_marginals
    assert not [w for w in post.warnings if "marginal misstates" in w]
    rec = post.diagnostics["importance_marginals"]["parameters"]["u"]
    # the contraction of the resampled draws is the weighted one (resampling adds its own noise: 4 SEs)
    assert abs(post.contraction["u"] - rec["weighted_contraction"]) < 4 * rec["weighted_contraction_se"]


def test_gaussian_posterior_is_not_flagged():
    problem = _toy(Linear(), lambda t: 0.8 - 1.3 * t)
    post = VariationalLaplace(n_starts=1).fit(problem, n_draws=4000, seed=0)
    im = post.diagnostics["importance_marginals"]
    assert post.diagnostics["pareto_k"] < 0.5
    assert not any(r["non_gaussian"] for r in im["parameters"].values()), im
    for r in im["parameters"].values():  # weighted and Gaussian agree within Monte-Carlo error
        assert abs(r["sd_ratio"] - 1.0) < 4 * math.sqrt(1 / (2 * im["ess"])), r
        assert abs(r["weighted_contraction"] - r["gaussian_contraction"]) < 4 * r["weighted_contraction_se"]
    assert not post.non_gaussian_marginals and not [w for w in post.warnings if "misstates" in w]
    assert "marginal" not in post.summary()["parameters"]["b0"]


# ------------------------------------------------------------------ regimes
def _transfer_problem(harmonic: float = 0.0):
    """The default synthetic spectrum (JR 1995 constants, p_mean 70: stable), optionally with a harmonic added.

    ``harmonic``: log-power added in a Gaussian bump (sd 0.5 Hz) at twice the data's alpha peak: the mark of a
    limit cycle that the linearised spectrum cannot produce.
    """
    base = jrinfer.datasets.synthetic_spectrum()
    if harmonic:
        f, p = base.freqs, base.power
        band = (f >= 6) & (f <= 14)
        f2 = 2 * float(f[band][p[0, band].argmax()])
        bump = harmonic * torch.exp(-0.5 * ((f - f2) / 0.5) ** 2)
        base = SpectrumData.from_arrays(f, p[0] * torch.exp(bump), units=base.units, n_segments=40)
    obs = SpectrumObservation()
    return InverseProblem(obs, obs.default_prior(base), base)


def test_regime_mix_of_a_stable_fit_and_no_regime_warning():
    problem = _transfer_problem()
    post = VariationalLaplace(n_starts=1).fit(problem, seed=0)
    d = post.diagnostics
    assert d["regime"] == "stable" and d["regime_point"] == "stable"
    assert d["regime_mix"]["stable"]["fraction"] > 0.9 and sum(v["n"] for v in d["regime_mix"].values()) == 1000
    # the one classifier: the mix counts JansenRit.regimes of the draws
    codes = problem.regimes(torch.as_tensor(post.draws[0]))
    assert d["regime_mix"]["stable"]["n"] == int((codes == 0).sum())
    assert "regime: stable" in repr(post) and not [w for w in post.warnings if w.startswith("regime")]


def test_data_suggesting_a_limit_cycle_warn_with_advice_for_the_method_used():
    problem = _transfer_problem(harmonic=2.5)
    post = VariationalLaplace(n_starts=1).fit(problem, seed=0)
    assert post.fit_quality["harmonic_excess_log_power"] > 3 * post.fit_quality["noise_sd_log_power"]
    warn = [w for w in post.warnings if w.startswith("regime: the data suggest limit_cycle")]
    assert len(warn) == 1, post.warnings
    assert "0 % of the posterior" in warn[0] and "point estimate: stable" in warn[0]
    assert "--method simulation" in warn[0]  # the transfer method was used: the simulation method is the advice
    # the simulation method's context never advises the simulation method
    sim = SpectrumObservation(method="simulation")
    ctx = sim.regime_context(problem.data, post.fit_quality)
    assert ctx["suggested"] == "limit_cycle" and "simulation" not in ctx["advice_suggested"].split("(")[0]
    assert "--method simulation" not in ctx["advice_suggested"] and "describes" not in ctx
    assert problem.observation.regime_context(problem.data, post.fit_quality)["describes"] == ("stable",)


def test_draws_outside_the_methods_regime_warn_and_advice_skips_the_backend_used():
    problem = _transfer_problem()
    good = problem.prior.mean()[None, None].expand(1, 40, problem.n_params).clone()
    j = problem.names.index("p_mean")
    bad = good.clone()
    bad[0, :, j] = torch.linspace(150.0, 250.0, 40, dtype=F64)  # between the Hopf points: limit cycle
    for backend in ("nuts", "smc", "laplace"):
        post = assemble_posterior(problem, torch.cat([good, bad], 1), backend=backend, status="converged",
                                  n_prior=0, point=bad[0, 0])
        mix = post.diagnostics["regime_mix"]
        assert mix["limit_cycle"]["fraction"] == pytest.approx(0.5) and post.diagnostics["regime_point"] == "limit_cycle"
        warn = [w for w in post.warnings if "cannot describe" in w]
        assert len(warn) == 1 and "transfer method" in warn[0] and "--method simulation" in warn[0], post.warnings
        advice = " ".join(w for w in post.warnings if "use " in w)
        assert f"({backend}" not in advice and f", {backend})" not in advice, (backend, advice)
        assert ("--resample" in advice) == (backend == "laplace")


# ------------------------------------------------- condition effects across optima
class _Bimodal(_Toy):
    """``y = x^2 + slope(x, b) t``: x and -x fit alike (x ~ N(0, 1) is symmetric), so VL finds two optima."""

    PRIOR = {"x": {"dist": "normal", "mean": 0.0, "sd": 1.0}, "b": {"dist": "normal", "mean": 0.0, "sd": 1.0}}

    def parameter_names(self, data=None):
        return ("x", "b", "log_precision")

    def required_parameters(self, data=None):
        return self.parameter_names(data)


class SharedSlope(_Bimodal):
    """Slope ``b``: the same at both optima, and so is each condition's difference of it."""

    def mean(self, params, t):
        x, b = torch.broadcast_tensors(torch.as_tensor(params["x"]), torch.as_tensor(params["b"]))
        return (x * x).unsqueeze(-1) + b.unsqueeze(-1) * t


class SignedSlope(_Bimodal):
    """Slope ``x b``: the optimum at -x has -b, so its additive difference of b has the opposite sign."""

    def mean(self, params, t):
        x, b = torch.broadcast_tensors(torch.as_tensor(params["x"]), torch.as_tensor(params["b"]))
        return (x * x).unsqueeze(-1) + (x * b).unsqueeze(-1) * t


def _two_conditions(base, slopes=(0.75, 1.65), n=30, sd=0.2):
    from jrinfer.conditions import ConditionData, ConditionObservation

    times = torch.linspace(0.0, 2.0, n, dtype=F64)
    datasets = {}
    for i, (c, s) in enumerate(zip(("rest", "task"), slopes)):
        e = sd * torch.randn(n, generator=torch.Generator().manual_seed(10 + i), dtype=F64)
        datasets[c] = EvokedData.from_arrays(times, 2.25 + s * times + e)
    obs = ConditionObservation(base, ("rest", "task"), {"b": "additive"})
    data = ConditionData(datasets)
    spec = obs.default_prior(data)
    spec["fixed"] = {k: -2 * math.log(sd) for k in spec["fixed"]}  # the known noise SD of every condition
    return InverseProblem(obs, spec, data)


@pytest.mark.parametrize("base, agree", [(SharedSlope(), True), (SignedSlope(), False)])
def test_multimodal_warning_says_whether_condition_differences_agree_across_optima(base, agree):
    from jrinfer.conditions import condition_effects

    problem = _two_conditions(base)
    assert problem.observation.effect_parameters() == ("delta_b_task",)
    post = VariationalLaplace(n_starts=8).fit(problem, seed=0, n_draws=200)
    warn = [w for w in post.warnings if "multimodal" in w]
    assert len(warn) == 1, post.warnings
    rec = post.diagnostics["effects_across_optima"]
    assert rec["n_optima"] == 2 and rec["agree"] is agree
    d = rec["parameters"]["delta_b_task"]
    if agree:
        assert "condition differences agree across the 2 optima" in warn[0]
        assert abs(d["means"][0] - d["means"][1]) < 0.1 * d["sds"][0]  # one and the same slope difference
    else:
        assert "condition differences differ between the 2 optima" in warn[0] and "delta_b_task (means" in warn[0]
        assert d["means"][0] * d["means"][1] < 0 and not d["means_agree"]  # opposite signs
    # both optima show a difference; the evidence of the best optimum is condition_effects' (the same BMR)
    assert d["evidence"] == ["effect", "effect"] and d["evidence_agrees"]
    eff = condition_effects(post, problem)["b"]["task"]
    assert d["log_bayes_factors"][0] == pytest.approx(eff["log_bayes_factor"], rel=1e-6, abs=1e-6)
    # the CLI's condition-effects block repeats a disagreement under the effects (where it is read)
    from jrinfer.cli import _condition_summary

    summary: dict = {}
    lines = _condition_summary(summary, post, problem)
    assert any("differ between the 2 optima" in ln for ln in lines) is (not agree)
    assert (rec["sentence"] in summary["condition_effects"]["warnings"]) is (not agree)


def test_harmonic_advice_of_a_simulation_fit_follows_the_fitted_regime():
    """The simulation method's harmonic warning says 'damped' only where the fitted point is not on a limit cycle."""
    plain = jrinfer.datasets.synthetic_spectrum()
    data = _transfer_problem(harmonic=2.5).data
    obs = SpectrumObservation(method="simulation")
    base = {k: torch.tensor(v.default, dtype=F64) for k, v in jrinfer.model.PARAMETERS.items() if v.default is not None}
    texts = {}
    for p_mean in (70.0, 200.0):  # JR 1995 constants: stable below the Hopf point at 89.8, a limit cycle at 200
        params = dict(base, p_mean=torch.tensor(p_mean, dtype=F64))
        assert obs.regimes(params).item() == (0 if p_mean == 70.0 else 1)
        fq = obs.goodness_of_fit(data, plain.power[0], params)
        texts[p_mean] = [w for w in fq.warnings if "twice the alpha peak" in w]
        assert len(texts[p_mean]) == 1 and "--method simulation" not in texts[p_mean][0]
    assert "sits where the model is damped" in texts[70.0][0]
    assert "is on a limit cycle" in texts[200.0][0] and "damped" not in texts[200.0][0]


def test_report_shows_weighted_marginals_and_the_regime_mix():
    pytest.importorskip("matplotlib")
    from jrinfer.report import report_html

    post = VariationalLaplace(n_starts=1).fit(_one_sided_problem(), n_draws=4000, seed=0)
    page = report_html(post, post.summary())
    assert "one-sided: bounded above by the data" in page and "importance-weighted" in page
    assert "differ from the Gaussian&#x27;s: u" in page and "marginal misstates u" in page
    stable = VariationalLaplace(n_starts=1).fit(_transfer_problem(), seed=0)
    page = report_html(stable, stable.summary())
    assert "regime mix of the posterior draws" in page and "stable" in page.split("regime mix of the posterior")[1][:200]


@pytest.mark.parametrize("k, caveat", [(0.3, False), (0.9, True)])
def test_not_informed_by_a_gaussian_the_importance_check_rejects_is_caveated(k, caveat):
    """A Laplace Gaussian as wide as the prior calls its parameters "not informed"; where its own Pareto k-hat
    rejects it (> 0.7), that verdict is the Gaussian's curvature, not the data's (a rest/task fit's B and floor:
    0.02-0.09 by the Gaussian at k-hat 0.88, 0.25-0.64 by NUTS): the warning says so."""
    problem = _one_sided_problem()
    mean, cov = problem.prior.gaussian_unconstrained()
    theta = problem.prior.from_unconstrained(
        mean + torch.randn(200, problem.n_params, generator=torch.Generator().manual_seed(0), dtype=F64)
        @ torch.linalg.cholesky(cov).T)
    post = assemble_posterior(problem, theta[None], backend="laplace", status="converged", mean_unconstrained=mean,
                              cov_unconstrained=cov, diagnostics={"pareto_k": k}, n_predictive=0, n_prior=0)
    (said,) = [w for w in post.warnings if w.startswith("not informed by the data")]
    assert ("the Gaussian's contractions cannot be trusted either" in said) == caveat, said
