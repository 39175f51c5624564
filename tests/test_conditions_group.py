"""Group-level condition effects (jrinfer.conditions.group_effects): BPA, summed log BFs, random effects."""

import math

import numpy as np
import pytest
import torch

from jrinfer import InverseProblem, SpectrumData, SpectrumObservation
from jrinfer.conditions import ConditionData, ConditionObservation, group_effects
from jrinfer.posterior import Posterior

F64 = torch.float64
FREQS = torch.arange(2.0, 40.01, 2.0, dtype=F64)
KEYS = ("delta_a_task", "delta_b_task")


def _norm_logpdf(x, mean, cov):
    from scipy import stats

    return float(stats.multivariate_normal(mean=np.atleast_1d(mean), cov=np.atleast_2d(cov)).logpdf(x))


@pytest.fixture(scope="module")
def problem():
    """A rest/task problem varying a and b (no fit: posteriors are constructed)."""
    data = SpectrumData.from_arrays(FREQS, torch.ones(1, FREQS.numel(), dtype=F64), metadata={"seg_length_s": 2.0})
    obs = ConditionObservation(SpectrumObservation(), ("rest", "task"), vary=("a", "b"))
    both = ConditionData({"rest": data, "task": data})
    return InverseProblem(obs, obs.default_prior(both, free=("a", "b", "p_mean")), both)


def _posterior(problem, block_mean, block_cov, *, status="converged", n=4000, seed=0):
    """A Posterior whose Gaussian (unconstrained) has the given block on the differences, the rest independent."""
    names = problem.names
    k = len(names)
    idx = [names.index(key) for key in KEYS]
    mean = problem.prior.gaussian_unconstrained()[0].numpy().copy()
    cov = np.diag(np.full(k, 0.01))
    mean[idx] = block_mean
    cov[np.ix_(idx, idx)] = block_cov
    z = np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)
    draws = problem.prior.from_unconstrained(torch.tensor(z)).numpy()[None]
    return Posterior(names=names, draws=draws, backend="test", status=status, mean_unconstrained=mean,
                     cov_unconstrained=cov, status_message="" if status == "converged" else "constructed")


def _prior_block(problem):
    m, C = problem.prior.gaussian_unconstrained()
    idx = [problem.names.index(key) for key in KEYS]
    return m.numpy()[idx], C.numpy()[np.ix_(idx, idx)]


def test_bpa_equals_the_posterior_of_the_pooled_likelihood(problem):
    """Subjects' Gaussian likelihoods of one shared difference: BPA is the pooled posterior, exactly.

    Subject i observes the differences through a Gaussian likelihood N(y_i; delta, inv(L_i)) (correlated in a
    and b); its posterior has precision P0 + L_i. The posterior of a difference shared by all has precision
    P0 + sum L_i and mean inv(.) (P0 m0 + sum L_i y_i): BPA must return that from the subjects' posteriors.
    """
    m0, C0 = _prior_block(problem)
    P0 = np.linalg.inv(C0)
    rng = np.random.default_rng(4)
    fits, Ls, hs = [], [], []
    for i in range(3):
        A = rng.standard_normal((2, 2))
        L = A @ A.T * 300.0 + np.diag([50.0, 20.0])  # likelihood precision, correlated
        y = np.array([0.12, -0.02]) + rng.standard_normal(2) * 0.05
        P = P0 + L
        mean = np.linalg.solve(P, P0 @ m0 + L @ y)
        fits.append((_posterior(problem, mean, np.linalg.inv(P), seed=i), problem))
        Ls.append(L)
        hs.append(L @ y)
    P_pool = P0 + sum(Ls)
    C_pool = np.linalg.inv(P_pool)
    m_pool = C_pool @ (P0 @ m0 + sum(hs))
    g = group_effects(fits, labels=["s1", "s2", "s3"])
    assert g["subjects"] == ["s1", "s2", "s3"] and g["left_out"] == [] and g["reference"] == "rest"
    for j, v in enumerate(("a", "b")):
        b = g["effects"][v]["task"]["bpa"]
        assert b["mean"] == pytest.approx(m_pool[j], rel=1e-10, abs=1e-12)
        assert b["sd"] == pytest.approx(math.sqrt(C_pool[j, j]), rel=1e-10)
        z = 1.6448536269514722  # 90 %
        assert (b["lower"], b["upper"]) == pytest.approx((m_pool[j] - z * b["sd"], m_pool[j] + z * b["sd"]), rel=1e-10)
        assert b["ratio"] == pytest.approx(math.exp(m_pool[j]), rel=1e-10)
        # one shared difference vs none: Savage-Dickey of the pooled posterior's marginal
        sd_bf = _norm_logpdf(0.0, m0[j], C0[j, j]) - _norm_logpdf(0.0, m_pool[j], C_pool[j, j])
        assert b["log_bayes_factor"] == pytest.approx(sd_bf, abs=1e-8)
        # fixed effects (Stephan et al.): the sum of the subjects' log BFs, each its own Savage-Dickey ratio
        subj = g["effects"][v]["task"]["subjects"]
        expected = 0.0
        for (post, _), s in zip(fits, subj):
            idx = problem.names.index(KEYS[j])
            m_i, v_i = post.mean_unconstrained[idx], post.cov_unconstrained[idx, idx]
            one = _norm_logpdf(0.0, m0[j], C0[j, j]) - _norm_logpdf(0.0, m_i, v_i)
            assert s["log_bayes_factor"] == pytest.approx(one, abs=1e-8)
            expected += one
        assert g["effects"][v]["task"]["fixed_effects_log_bf"] == pytest.approx(expected, abs=1e-7)
    # every difference at once: the joint Savage-Dickey ratio of the pooled posterior
    joint = _norm_logpdf(np.zeros(2), m0, C0) - _norm_logpdf(np.zeros(2), m_pool, C_pool)
    assert g["joint"]["bpa_log_bayes_factor"] == pytest.approx(joint, abs=1e-8)


def test_random_effects_match_scipy_on_constructed_means():
    from scipy import stats

    from jrinfer.conditions import _random_effects

    means = [0.10, 0.25, 0.05, 0.30, -0.02]
    lowers = [0.02, 0.11, -0.04, 0.21, -0.10]
    uppers = [0.18, 0.39, 0.14, 0.39, -0.01]
    r = _random_effects(means, lowers, uppers, 0.90)
    ref = stats.ttest_1samp(means, 0.0)
    assert r["mean"] == pytest.approx(np.mean(means), rel=1e-12)
    assert r["sd"] == pytest.approx(np.std(means, ddof=1), rel=1e-12)
    assert (r["t"], r["p"], r["df"]) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue), 4)
    ci = stats.t.interval(0.90, 4, loc=np.mean(means), scale=stats.sem(means))
    assert (r["lower"], r["upper"]) == pytest.approx(ci, rel=1e-10)
    assert (r["n_positive"], r["n_negative"], r["n_above"], r["n_below"]) == (4, 1, 3, 1)
    one = _random_effects([0.1], [0.0], [0.2], 0.9)
    assert one["p"] is None and one["test"] == "one subject: no test"


def test_group_random_effects_use_the_subjects_reported_means(problem):
    from scipy import stats

    C = np.diag([0.02, 0.02]) ** 2
    fits = [(_posterior(problem, np.array([m, 0.0]), C, seed=i), problem) for i, m in enumerate((0.08, 0.15, 0.11))]
    g = group_effects(fits)
    e = g["effects"]["a"]["task"]
    reported = [s["mean"] for s in e["subjects"]]
    assert reported == pytest.approx([0.08, 0.15, 0.11], abs=3 * 0.02 / math.sqrt(4000))  # draws' means
    assert e["random_effects"]["p"] == pytest.approx(stats.ttest_1samp(reported, 0.0).pvalue, rel=1e-12)
    assert e["verdict"] == "agree" and g["headline"] == []
    assert any("N = 3 subjects" in n and "little power" in n for n in g["notes"])
    assert any("assume every subject has the same difference" in n for n in g["notes"])


def test_bpa_difference_with_subjects_of_both_signs_is_the_headline(problem):
    """One precise subject up, two vague ones down without evidence: BPA says 'higher', carried by one subject:
    the headline says so, but it is no disagreement (a fresh user's EEGMAT gain was called DISAGREE on subjects
    whose own log BFs were -0.15 and +0.37). Subjects established on opposite sides: DISAGREE."""
    from jrinfer.conditions import format_group_effects

    fits = [(_posterior(problem, np.array([0.20, 0.0]), np.diag([0.02, 0.1]) ** 2, seed=0), problem),
            (_posterior(problem, np.array([-0.05, 0.0]), np.diag([0.15, 0.1]) ** 2, seed=1), problem),
            (_posterior(problem, np.array([-0.04, 0.0]), np.diag([0.15, 0.1]) ** 2, seed=2), problem)]
    g = group_effects(fits, labels=["p", "v1", "v2"])
    e = g["effects"]["a"]["task"]
    assert e["bpa"]["lower"] > 0 and e["random_effects"]["n_negative"] == 2
    assert e["random_effects"]["n_above_established"] == 1 and e["random_effects"]["n_below_established"] == 0
    assert e["verdict"] == "fixed effects only" and "2 subject(s)' posterior mean(s) point the other way" in e["headline"]
    assert g["headline"] == [f"ONE SUBJECT: {e['headline']}"]
    p_bf = e["subjects"][0]["log_bayes_factor"]
    assert f"carried by p (log BF {p_bf:+.2f}), the group claim is that subject's" in e["headline"], e["headline"]
    lines = format_group_effects(g)
    assert lines[1].startswith("  ONE SUBJECT: a (task vs rest)")  # the caution leads, before the numbers
    # the joint "does any parameter differ?" sum is said to be carried by p when only p's own evidence is >= 1
    own = g["joint"]["subjects"]
    (joint,) = [x for x in lines if "does any parameter differ?" in x]
    assert (f"carried by p ({own['p']:+.2f}" in joint) == (sum(v >= 1 for v in own.values()) == 1), (joint, own)
    assert "every subject has a difference of its own" in joint or "against a difference in every subject" in joint
    # subjects whose intervals lie on opposite sides of 0, each with evidence
    fits[1] = (_posterior(problem, np.array([-0.3, 0.0]), np.diag([0.02, 0.1]) ** 2, seed=1), problem)
    g = group_effects(fits)
    e = g["effects"]["a"]["task"]
    assert e["verdict"] == "disagree" and "the subjects disagree" in e["headline"]
    assert g["headline"][0] == f"DISAGREE: {e['headline']}"
    assert format_group_effects(g)[1].startswith("  DISAGREE: a (task vs rest)")
    # b: nobody differs
    assert group_effects(fits)["effects"]["b"]["task"]["verdict"] == "none"


def test_failed_fits_are_left_out_with_why_and_mismatches_refused(problem, tmp_path):
    C = np.diag([0.03, 0.03]) ** 2
    ok = [(_posterior(problem, np.array([0.1, 0.0]), C, seed=i), problem) for i in range(2)]
    failed = (_posterior(problem, np.array([0.9, 0.0]), C, status="max_iter"), problem)
    g = group_effects([*ok, failed], labels=["s1", "s2", "s3"])
    assert g["subjects"] == ["s1", "s2"] and g["left_out"] == [{"subject": "s3", "reason": "fit status max_iter: "
                                                                                          "constructed"}]
    assert g == {**group_effects(ok, labels=["s1", "s2"]), "left_out": g["left_out"]}
    warned = (_posterior(problem, np.array([0.1, 0.0]), C, status="warning"), problem)
    g = group_effects([*ok, warned])
    assert g["caveats"] == ["subject3: fit status warning: constructed"]
    # the forest plot marks that subject where its interval is drawn
    from jrinfer.plotting import plot_group_effects

    labels = [t.get_text() for t in plot_group_effects(g).axes[0].get_yticklabels()]
    assert "subject3 (warning)" in labels and "subject1" in labels, labels
    # a fit-many row that failed: its folder has result.json with the error and no summary
    (tmp_path / "0003-x").mkdir()
    (tmp_path / "0003-x" / "result.json").write_text('{"status": "error", "error": "bad file"}')
    with pytest.raises(ValueError, match="no fit can be used .*0003-x: the fit failed: bad file"):
        group_effects([tmp_path / "0003-x"])
    # other differences, or another prior on them: BPA is undefined
    obs_a = ConditionObservation(SpectrumObservation(), ("rest", "task"), vary=("a",))
    prob_a = InverseProblem(obs_a, obs_a.default_prior(problem.data, free=("a", "p_mean")), problem.data)
    names = prob_a.names
    other = Posterior(names=names, draws=prob_a.prior.sample(100, seed=0).numpy()[None], backend="test")
    with pytest.raises(ValueError, match="same conditions and differences"):
        group_effects([*ok, (other, prob_a)])
    spec = problem.observation.default_prior(problem.data, free=("a", "b", "p_mean"))
    spec["distributions"]["delta_a_task"] = {"dist": "normal", "mean": 0.0, "sd": 0.5}
    prob_w = InverseProblem(problem.observation, spec, problem.data)
    with pytest.raises(ValueError, match="one prior on the differences"):
        group_effects([*ok, (_posterior(prob_w, np.array([0.1, 0.0]), C), prob_w)])
    with pytest.raises(ValueError, match="fit folder .* or a"):
        group_effects([ok[0][0]])
    with pytest.raises(ValueError, match="non-empty sequence"):
        group_effects([])


def test_a_posterior_wider_than_the_prior_adds_no_information_there_and_it_is_said(problem):
    """Draws-based Gaussians can exceed the prior (sampling noise): that subject informs only its narrow directions."""
    m0, C0 = _prior_block(problem)
    v = 0.03**2
    wide = (_posterior(problem, np.array([0.05, 0.02]), np.diag([1.5 * C0[0, 0], v]), seed=5), problem)
    narrow = [(_posterior(problem, np.array([0.1, 0.0]), np.diag([v, v]), seed=i), problem) for i in range(2)]
    g = group_effects([*narrow, wide], labels=["n1", "n2", "w"])
    assert any(n.startswith("the posterior of w was wider than the prior") for n in g["notes"])
    # a: the wide subject adds nothing, BPA is that of the two narrow subjects; b: all three inform it
    for j, (name, ms) in enumerate((("a", [0.1, 0.1]), ("b", [0.0, 0.0, 0.02]))):
        p0 = 1.0 / C0[j, j]
        prec = p0 + sum(1.0 / v - p0 for _ in ms)
        mean = (p0 * m0[j] + sum(m / v - p0 * m0[j] for m in ms)) / prec
        b = g["effects"][name]["task"]["bpa"]
        assert b["mean"] == pytest.approx(mean, rel=1e-10, abs=1e-13)
        assert b["sd"] == pytest.approx(prec**-0.5, rel=1e-10)


def test_an_interval_without_evidence_is_not_a_group_effect(problem):
    """Three subjects whose intervals of a small difference lean one way: the averaged interval leaves out 0 but
    its log BF is below 1, so no group difference is claimed, as for a single fit (a fresh user's EEGMAT b was
    'fixed effects say higher' at BPA log BF +0.13 and summed log BF -4.6)."""
    from jrinfer.conditions import ESTABLISHED_LOG_BF

    fits = [(_posterior(problem, np.array([m, 0.0]), np.diag([0.05, 0.1]) ** 2, seed=i), problem)
            for i, m in enumerate((0.05, 0.06, 0.04))]
    e = group_effects(fits)["effects"]["a"]["task"]
    bpa = e["bpa"]
    assert bpa["lower"] > 0 and bpa["log_bayes_factor"] < ESTABLISHED_LOG_BF, bpa
    assert e["verdict"] == "none" and "not established" in e["headline"] and "fixed effects say" not in e["headline"]


def test_alpha_power_change_of_data_and_fit_is_said_and_a_fit_far_off_it_is_flagged():
    """The line that leads a condition fit: the data's alpha change and the fit's; where the fit's is more than
    ALPHA_CHANGE_TOLERANCE off (EEGMAT Subject00: data 0.977, fit 0.845), it says the parameter differences describe
    the fitted change (Subject03: 0.254 vs 0.229 is within). The group lists every subject's."""
    from jrinfer.conditions import ALPHA_CHANGE_TOLERANCE, format_alpha_power, format_group_effects

    def line(d, f):
        (out,) = format_alpha_power({"alpha_power_ratio_data_task": d, "alpha_power_ratio_fit_task": f}, "rest",
                                    ["task"])
        return out

    assert line(0.977, 0.845).startswith("alpha power (8-13 Hz), task / rest: data 0.977, fit 0.845 (task 2 % lower")
    assert "16 % off the data's" in line(0.977, 0.845)
    assert "off the data's" not in line(0.254, 0.229) and "the parameters below say how" in line(0.254, 0.229)
    assert 0.845 / 0.977 < 1 / ALPHA_CHANGE_TOLERANCE < 0.229 / 0.254
    assert format_alpha_power({}, "rest", ["task"]) == []
    group = {"interval": 0.9, "reference": "rest", "n_subjects": 2, "subjects": ["s0", "s3"], "left_out": [],
             "headline": [], "caveats": [], "notes": [], "effects": {},
             "joint": {"parameters": ["delta_a_task"], "bpa_log_bayes_factor": 0.1, "bpa_evidence": "weak",
                       "fixed_effects_log_bf": None},
             "alpha_power": {"task": [{"subject": "s0", "data": 0.977, "fit": 0.845},
                                      {"subject": "s3", "data": 0.254, "fit": 0.229}]}}
    (alpha,) = [x for x in format_group_effects(group) if "alpha power" in x]
    assert "s0 0.977 (0.845), s3 0.254 (0.229); in the data task is lower in 2 of 2 subjects (by 2 %, 75 %); s0's fit is 16 % off its data" in alpha
    assert "s3's fit" not in alpha
