"""Multi-start variational Laplace: the better optimum is found, multimodality is reported, runs are reproducible."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from jrinfer.backends import _multistart as ms
from jrinfer.backends.laplace import VariationalLaplace

F64 = torch.float64


# ----------------------------------------------------------------- a 1-D bimodal problem with known masses
def _square_problem(prior_mean, prior_sd, m=10, noise_sd=0.1):
    """y_i = theta^2 + e_i with y_i = 4: optima near theta = +-2, the prior tilting their masses."""
    y = torch.full((m,), 4.0, dtype=F64)
    pm = torch.tensor([prior_mean], dtype=F64)
    pc = torch.tensor([[prior_sd**2]], dtype=F64)
    lam = torch.tensor([-2 * math.log(noise_sd)], dtype=F64)
    hc = torch.eye(1, dtype=F64)
    Q = torch.ones(1, m, dtype=F64)
    engine = VariationalLaplace(estimate_hyper=False)

    def f(theta):
        return (theta[0] ** 2).expand(m)

    def f_batch(z):
        return (z[:, :1] ** 2).expand(z.shape[0], m)

    def fit_one(init):
        return engine.fit_function(f, y, pm, pc, lam, hc, Q, init=init)

    def log_post(theta):  # unnormalised, on a grid (B,)
        return (-0.5 * ((theta - prior_mean) / prior_sd) ** 2
                - 0.5 * m * ((4.0 - theta**2) / noise_sd) ** 2)

    return dict(fit_one=fit_one, f_batch=f_batch, y=y, pm=pm, pc=pc, lam=lam, hc=hc, Q=Q, log_post=log_post)


def _run(p, n_starts, seed=0, agree=3):
    return ms.multistart(p["fit_one"], p["f_batch"], p["y"], p["pm"], p["pc"], p["lam"], p["hc"], p["Q"], False,
                         n_starts=n_starts, seed=seed, agree=agree)


def _log_mass_ratio(p):
    """log(mass of theta < 0 / mass of theta > 0) by quadrature."""
    t = torch.linspace(-4, 4, 400_001, dtype=F64)
    lp = p["log_post"](t)
    lo = torch.logsumexp(lp[t < 0], 0)
    hi = torch.logsumexp(lp[t > 0], 0)
    return float(lo - hi)


def test_two_modes_within_three_nats_warn_and_free_energies_give_their_mass_ratio():
    p = _square_problem(prior_mean=0.3, prior_sd=1.0)
    optima, info = _run(p, n_starts=4)
    assert len(optima) == 2
    means = sorted(float(o["result"].mean[0]) for o in optima)
    assert means[0] == pytest.approx(-2.0, abs=0.01) and means[1] == pytest.approx(2.0, abs=0.01)
    # the Laplace free energies of the two optima give the log mass ratio of the two modes (quadrature)
    pos = next(o for o in optima if o["result"].mean[0] > 0)
    neg = next(o for o in optima if o["result"].mean[0] < 0)
    ratio = _log_mass_ratio(p)
    assert -3 < ratio < 0  # the construction: the positive mode has more mass, within 3 nats
    assert neg["free_energy"] - pos["free_energy"] == pytest.approx(ratio, abs=0.05)
    warns, notes = ms.multimodality(optima)
    assert len(warns) == 1 and "multimodal" in warns[0] and "smc" in warns[0]
    # the prior mean (0.3) leads to the positive, better mode: no note
    assert optima[0] is pos and 0 in pos["starts"] and notes == []


def test_second_mode_far_below_in_free_energy_does_not_warn():
    p = _square_problem(prior_mean=0.3, prior_sd=0.4)  # log mass ratio 2.4 / (2 * 0.16) = 7.5 nats
    # the default stops after the first three runs, which all reach the heavier mode (the other holds e^-7.5
    # of the mass, 5.8 prior SDs out): a known blind spot; run all four starts to reach the light mode too
    optima, info = _run(p, n_starts=4)
    assert len(optima) == 1 and info["starts"].shape[0] == 3
    optima, _ = _run(p, n_starts=4, agree=4)
    assert len(optima) == 2
    gap = optima[0]["free_energy"] - optima[1]["free_energy"]
    assert gap == pytest.approx(-_log_mass_ratio(p), abs=0.1) and gap > ms.MULTIMODAL_NATS
    warns, _ = ms.multimodality(optima)
    assert warns == []


def test_note_when_the_prior_mean_run_stops_in_the_worse_mode():
    # prior mean 0.3 favours the positive mode; label a run from -1.5 as the prior-mean run (start index 0)
    fit_one = _square_problem(prior_mean=0.3, prior_sd=1.0)["fit_one"]
    optima = ms.group_optima([(0, fit_one(torch.tensor([-1.5], dtype=F64))),
                              (1, fit_one(torch.tensor([1.5], dtype=F64)))])
    assert optima[0]["starts"] == [1]
    _, notes = ms.multimodality(optima)
    assert len(notes) == 1 and "not the one reached from the prior mean" in notes[0]


def test_unimodal_problem_finds_one_optimum_and_does_not_warn():
    m = 12
    x = torch.linspace(-1, 1, m, dtype=F64)
    y = 1.5 * x + 0.4 * x**3 + 0.05 * torch.sin(7 * x)
    engine = VariationalLaplace(estimate_hyper=False)
    pm, pc = torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64)
    lam, hc, Q = torch.tensor([2 * math.log(20.0)], dtype=F64), torch.eye(1, dtype=F64), torch.ones(1, m, dtype=F64)

    def f(t):
        return t[0] * x + t[1] * x**3

    def run(agree):
        return ms.multistart(
            lambda init: engine.fit_function(f, y, pm, pc, lam, hc, Q, init=init),
            lambda z: z[:, :1] * x + z[:, 1:2] * x**3, y, pm, pc, lam, hc, Q, False, n_starts=5, seed=3,
            agree=agree,
        )

    optima, info = run(agree=5)
    assert info["starts"].shape[0] == 5  # five distinct starts were run ...
    assert len(optima) == 1 and optima[0]["n_starts"] == 5  # ... and all reached the same optimum
    assert ms.multimodality(optima) == ([], [])
    # by default the runs stop once the first three agree
    early, info = run(agree=3)
    assert info["starts"].shape[0] == 3 and len(early) == 1
    assert torch.allclose(early[0]["result"].mean, optima[0]["result"].mean, atol=1e-6)


def test_screen_score_is_the_profiled_log_joint():
    """profiled_score equals the log joint at the maximum-likelihood log precision (up to one constant)."""
    gen = torch.Generator().manual_seed(0)
    m, n = 30, 2
    y = torch.randn(m, generator=gen, dtype=F64)
    z = torch.randn(5, n, generator=gen, dtype=F64)
    pred = z[:, :1] * torch.linspace(0, 1, m, dtype=F64)
    pm, pc = torch.zeros(n, dtype=F64), torch.diag(torch.tensor([1.0, 4.0], dtype=F64))
    hm, hc, Q = torch.tensor([0.5], dtype=F64), torch.tensor([[2.0]], dtype=F64), torch.ones(1, m, dtype=F64)
    got = ms.profiled_score(pred, z, y, pm, pc, hm, hc, Q, True)
    r = ((y - pred) ** 2).sum(-1)
    best = []
    for ri, zi in zip(r, z):  # brute force over a fine grid of log precisions
        lam = torch.linspace(-10, 10, 200_001, dtype=F64)
        ll = -0.5 * torch.exp(lam) * ri + 0.5 * m * lam
        lam_hat = lam[ll.argmax()]
        best.append(float(-0.5 * torch.exp(lam_hat) * ri + 0.5 * m * lam_hat - 0.5 * (lam_hat - 0.5) ** 2 / 2.0
                          - 0.5 * (zi[0] ** 2 + zi[1] ** 2 / 4.0)))
    diff = got.numpy() - np.array(best)
    assert np.ptp(diff) < 1e-4  # grid step 1e-4 in the log precision moves its prior term by ~1e-5
    bad = ms.profiled_score(torch.full((1, m), math.nan, dtype=F64), z[:1], y, pm, pc, hm, hc, Q, True)
    assert float(bad[0]) == -math.inf


# ----------------------------------------------------------------- the Jansen-Rit case of the local-optima report
def _jr_dataset():
    """Dataset 0 of the lead's report: truth a = 117.9, b = 37.4; from the prior mean VL stops at a = 153, b = 121."""
    from jrinfer import InverseProblem, Prior, SpectrumData, SpectrumObservation

    freqs = torch.arange(2.0, 30.01, 0.5, dtype=F64)
    obs = SpectrumObservation(floor=False)
    tmpl = SpectrumData.from_arrays(freqs, torch.ones(1, freqs.numel(), dtype=F64), units="uV^2/Hz", n_segments=100)
    spec = obs.default_prior(tmpl, free=("a", "b", "p_mean"))
    spec["distributions"].pop("p_mean")
    spec["fixed"]["p_mean"] = 45.0
    base = InverseProblem(obs, Prior.from_dict(spec), tmpl)
    th = base.prior.sample(200, seed=5)
    th = th[base.predict(th).valid.reshape(-1)][:1]
    y = obs.sample(base.predict(th), base.parameters(th), tmpl, torch.Generator().manual_seed(9))
    data = SpectrumData.from_arrays(freqs, y.reshape(1, -1), units="uV^2/Hz", n_segments=100)
    return InverseProblem(obs, base.prior, data), th[0]


@pytest.mark.slow
def test_jr_multistart_leaves_the_local_optimum_for_the_truths_basin():
    problem, truth = _jr_dataset()
    assert float(truth[0]) == pytest.approx(117.9, abs=0.1) and float(truth[1]) == pytest.approx(37.4, abs=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        one = VariationalLaplace(n_starts=1).fit(problem, n_draws=2, n_predictive=0)
        multi = VariationalLaplace(n_starts=4).fit(problem, n_draws=2, n_predictive=0)
    zt = problem.prior.to_unconstrained(truth[None])[0].numpy()

    def z_ab(post):
        return np.abs((post.mean_unconstrained - zt) / np.sqrt(np.diag(post.cov_unconstrained)))[:2]

    # from the prior mean alone: the local optimum, far from the truth, and nothing says so
    assert one.converged and one.mean[1] > 100 and z_ab(one).max() > 10
    assert len(one.diagnostics["optima"]) == 1
    # multi-start: a higher free energy, a and b within 3 posterior SDs of the truth, and a note
    assert multi.converged and multi.log_evidence > one.log_evidence + 10
    assert z_ab(multi).max() < 3
    optima = multi.diagnostics["optima"]
    assert len(optima) >= 2 and optima[0]["free_energy"] == pytest.approx(multi.log_evidence)
    assert not optima[0]["from_prior_mean"] and any(o["from_prior_mean"] for o in optima[1:])
    assert sum(o["n_starts"] for o in optima) == multi.diagnostics["n_starts"] == 4
    assert "not the one reached from the prior mean" in multi.message
    assert multi.diagnostics["notes"] and json.dumps(multi.diagnostics["optima"])


def test_multistart_is_deterministic_for_a_seed():
    p = _square_problem(prior_mean=0.3, prior_sd=1.0)
    a = _run(p, n_starts=4, seed=11)
    b = _run(p, n_starts=4, seed=11)
    c = _run(p, n_starts=4, seed=12)
    assert torch.equal(a[1]["starts"], b[1]["starts"])
    assert [o["free_energy"] for o in a[0]] == [o["free_energy"] for o in b[0]]
    assert not torch.equal(a[1]["starts"], c[1]["starts"])  # the seed matters


def test_variational_laplace_n_starts_is_checked():
    with pytest.raises(ValueError, match="n_starts"):
        VariationalLaplace(n_starts=0)
    assert "n_starts=3" in repr(VariationalLaplace(n_starts=3))


def test_cli_fit_starts_option_reaches_summary_json(tmp_path, capsys):
    from jrinfer.cli import main

    csv = tmp_path / "s.csv"
    freqs = np.arange(2.0, 30.01, 0.5)
    csv.write_text("freq,power\n" + "\n".join(f"{f},{1.0 / f + np.exp(-0.5 * ((f - 10) / 1.5) ** 2)}" for f in freqs))
    code = main(["fit", str(csv), "--kind", "spectrum", "--units", "uV^2/Hz", "--free", "a,b", "--starts", "3",
                 "--out", str(tmp_path / "o"), "--json"])
    capsys.readouterr()
    assert code in (0, 1)
    diag = json.loads((tmp_path / "o" / "summary.json").read_text())["diagnostics"]
    assert diag["n_starts"] == 3 and diag["n_screened"] == 3 * ms.SCREEN_PER_START
    assert sum(o["n_starts"] for o in diag["optima"]) == 3
    assert set(diag["optima"][0]["mean"]) >= {"a", "b"}
    for bad in (["--starts", "0"], ["--starts", "2", "--backend", "nuts"]):
        code = main(["fit", str(csv), "--kind", "spectrum", "--units", "uV^2/Hz", *bad, "--out", str(tmp_path / "p")])
        err = capsys.readouterr().err
        assert code != 0 and "--starts" in err


def test_optima_on_one_ridge_are_not_separate_modes():
    """Two end points of one flat ridge are one mode; two peaks with a valley between them are two.

    ``mark_barriers`` checks the log density on the straight segment between the best optimum and a
    would-be competitor (within 3 nats, more than 3 posterior SDs away): a ridge (the density rises
    monotonically from one end to the other) has no barrier; two Gaussian bumps 8 SDs apart have a
    barrier at the midpoint of 8 - 0.5 - log(1 + e^-0.5) nats (the lower end is 0.5 nats down)."""
    from types import SimpleNamespace

    from jrinfer.backends._multistart import MODE_BARRIER_NATS, competing, mark_barriers, multimodality

    cov = torch.eye(2, dtype=torch.float64) * 0.01  # posterior SD 0.1 at each end point

    def optimum(x, F):
        return {"free_energy": F, "result": SimpleNamespace(mean=torch.tensor(x, dtype=torch.float64), cov=cov),
                "n_starts": 1, "starts": [0 if F == 0.0 else 1]}

    def ridge(z):  # flat along x (slope 0.5 nats per unit), narrow across (SD 0.1)
        return -0.5 * z[:, 0] - 0.5 * (z[:, 1] / 0.1) ** 2

    def two_bumps(z):
        a = -0.5 * ((z - torch.tensor([0.0, 0.0])) ** 2).sum(-1) / 0.01
        b = -0.5 * ((z - torch.tensor([0.8, 0.0])) ** 2).sum(-1) / 0.01 - 0.5
        return torch.logaddexp(a, b)

    for density, separate in ((ridge, False), (two_bumps, True)):
        optima = [optimum([0.0, 0.0], 0.0), optimum([0.8, 0.0], -0.5)]  # 8 SDs apart, 0.5 nats lower
        mark_barriers(optima, density, [o["result"].mean for o in optima])
        assert (optima[1]["barrier_nats"] >= MODE_BARRIER_NATS) == separate, optima[1]["barrier_nats"]
        warns, _ = multimodality(optima)
        assert bool(warns) == separate and (len(competing(optima)) == 2) == separate
    assert optima[1]["barrier_nats"] == pytest.approx(8.0 - 0.5 - math.log1p(math.exp(-0.5)), abs=1e-6)
