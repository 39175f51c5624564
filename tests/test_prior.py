"""Priors: densities against scipy, transforms, sampling statistics, editing, serialisation, errors."""

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch

from jrinfer import JansenRit, PARAMETERS
from jrinfer import jansen_rit_prior
from jrinfer.prior import LogNormal, LogUniform, Normal, Prior, Uniform, distribution_from_dict

F64 = torch.float64

DISTS = {
    "lognormal": LogNormal(3.25, 0.2),
    "lognormal_wide": LogNormal(58.0, 1.3),
    "normal": Normal(6.0, 0.5),
    "uniform": Uniform(2.0, 5.0),
    "uniform_neg": Uniform(-7.0, 0.5),
    "loguniform": LogUniform(0.02, 500.0),
}
IDS = list(DISTS)


def scipy_dist(d):
    if isinstance(d, LogNormal):
        return scipy.stats.lognorm(s=d.sd_log, scale=d.median)
    if isinstance(d, Normal):
        return scipy.stats.norm(loc=d.mean, scale=d.sd)
    if isinstance(d, LogUniform):
        return scipy.stats.loguniform(d.low, d.high)
    return scipy.stats.uniform(loc=d.low, scale=d.high - d.low)


def z_grid(d, n=40001):
    """A z grid wide enough that the density outside it is < 1e-15 of the total."""
    m, v = d.unconstrained_moments()
    half = 40.0 if isinstance(d, (Uniform, LogUniform)) else 12.0 * math.sqrt(v)  # logistic tail e^-40, Gaussian 12 sd
    return torch.linspace(m - half, m + half, n, dtype=F64)


# ------------------------------------------------------------ densities
@pytest.mark.parametrize("key", IDS)
def test_log_prob_matches_scipy(key):
    d = DISTS[key]
    sd = scipy_dist(d)
    lo, hi = d.support
    x = np.concatenate([sd.ppf(np.linspace(0.001, 0.999, 101)), [-10.0, -1.0, 0.0, 1e-3, 1e3, 40.0]])
    if math.isfinite(lo):
        x = np.concatenate([x, [lo, hi, lo - 1e-9, hi + 1e-9]])
    got = d.log_prob(torch.from_numpy(x)).numpy()
    want = sd.logpdf(x)
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    # Same closed forms evaluated in float64: agreement to a few ulps of the log density.
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-12, atol=1e-12)
    # quantiles, mean and std agree too
    for q in (0.05, 0.5, 0.95):
        assert d.quantile(q) == pytest.approx(sd.ppf(q), rel=1e-12)
    assert d.mean == pytest.approx(sd.mean(), rel=1e-12)
    assert d.std == pytest.approx(sd.std(), rel=1e-12)


@pytest.mark.parametrize("key", IDS)
def test_transform_round_trip_including_extreme_z(key):
    d = DISTS[key]
    theta = torch.from_numpy(scipy_dist(d).ppf(np.linspace(0.001, 0.999, 201)))
    # theta -> z -> theta: only rounding in log/exp/logit (~1e-15 relative)
    torch.testing.assert_close(d.from_unconstrained(d.to_unconstrained(theta)), theta, rtol=1e-13, atol=0)
    z = torch.tensor([-30.0, -12.0, -1.5, 0.0, 0.7, 12.0, 30.0], dtype=F64)
    th = d.from_unconstrained(z)
    assert torch.isfinite(th).all()
    lo, hi = d.support
    assert ((th > lo) & (th < hi)).all()
    back = d.to_unconstrained(th)
    assert torch.isfinite(back).all()
    if isinstance(d, (Uniform, LogUniform)):
        # At |z| = 30, theta - bound = width * 9e-14 is stored with the ulp of the bound
        # (~1e-15 for |bound| <= 8), a relative error up to ~1e-2 in that gap -> |dz| <~ 1e-2.
        torch.testing.assert_close(back, z, rtol=0, atol=2e-2)
        torch.testing.assert_close(back[2:-2], z[2:-2], rtol=0, atol=1e-9)
    else:
        torch.testing.assert_close(back, z, rtol=1e-13, atol=1e-13)
    for w in (d.log_abs_det_jacobian(z), d.log_prob_unconstrained(z)):
        assert torch.isfinite(w).all()


@pytest.mark.parametrize("key", IDS)
def test_log_abs_det_jacobian_matches_autograd(key):
    d = DISTS[key]
    z = torch.tensor([-30.0, -5.0, -1.0, -0.1, 0.0, 0.3, 2.0, 7.0, 30.0], dtype=F64)
    z = z + d.unconstrained_moments()[0]
    z.requires_grad_(True)
    (grad,) = torch.autograd.grad(d.from_unconstrained(z).sum(), z)
    # elementwise map: d theta_i / d z_i is the gradient of the sum; autograd and the closed form
    # evaluate the same derivative, so they agree to rounding.
    torch.testing.assert_close(d.log_abs_det_jacobian(z.detach()), grad.abs().log(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("key", IDS)
def test_unconstrained_density_integrates_to_one(key):
    d = DISTS[key]
    z = z_grid(d)
    closed = d.log_prob_unconstrained(z)
    composed = d.log_prob(d.from_unconstrained(z)) + d.log_abs_det_jacobian(z)
    inner = slice(1000, -1000)  # away from the grid ends where theta(z) may round onto a bound
    torch.testing.assert_close(closed[inner], composed[inner], rtol=1e-10, atol=1e-10)
    # Trapezoid on 40001 points over 24 sd (or 80 logistic scale units): error ~ h^2 f''/12 * L
    # ~ 1e-7 at most for these smooth densities; the tails outside the grid hold < 1e-15.
    for logp in (closed, composed):
        assert float(torch.trapezoid(logp.exp(), z)) == pytest.approx(1.0, abs=1e-6)


def test_log_prob_is_differentiable_and_nan_free_outside_support():
    prior = Prior({"x": LogNormal(1.0, 0.5), "y": Uniform(0.0, 1.0), "w": Normal(0.0, 1.0)})
    theta = torch.tensor([[0.8, 0.5, 0.1], [-1.0, 2.0, 0.1]], dtype=F64, requires_grad=True)
    lp = prior.log_prob(theta)
    assert math.isfinite(float(lp[0].detach())) and float(lp[1].detach()) == -math.inf
    (g,) = torch.autograd.grad(lp[0], theta, retain_graph=True)
    # d/dx log LogNormal = -(1 + log(x)/0.25)/x ; d/dw log N(0,1) = -w
    assert float(g[0, 0]) == pytest.approx(-(1 + math.log(0.8) / 0.25) / 0.8, rel=1e-12)
    assert float(g[0, 1]) == 0.0 and float(g[0, 2]) == pytest.approx(-0.1, rel=1e-12)
    (g,) = torch.autograd.grad(lp.sum(), theta)
    assert torch.isfinite(g).all() and bool((g[1, :2] == 0).all())


# ------------------------------------------------------------ sampling
@pytest.mark.parametrize("key", IDS)
def test_samples_match_moments_and_ks(key):
    d = DISTS[key]
    n = 20000
    x = d.sample(n, generator=12345).numpy()
    assert x.shape == (n,) and x.dtype == np.float64
    # 4 standard errors: a false failure has probability ~6e-5 per check (but the seed is fixed).
    se_mean = d.std / math.sqrt(n)
    assert abs(x.mean() - d.mean) < 4 * se_mean
    s = x.std(ddof=1)
    m4 = np.mean((x - x.mean()) ** 4)
    se_sd = math.sqrt(max(m4 - s**4, 0.0) / n) / (2 * s)  # delta method for the sample sd
    assert abs(s - d.std) < 4 * se_sd
    assert scipy.stats.kstest(x, scipy_dist(d).cdf).pvalue > 1e-3


def test_prior_sample_reproducible_and_leaves_global_rng_alone():
    prior = jansen_rit_prior()
    state = torch.random.get_rng_state()
    a = prior.sample(50, seed=7)
    b = prior.sample(50, seed=7)
    c = prior.sample(50, seed=8)
    d = prior.sample(5)  # OS entropy
    g = torch.Generator().manual_seed(7)
    e1, e2 = prior.sample(50, seed=g), prior.sample(50, seed=g)
    DISTS["uniform"].sample(5, generator=3)
    DISTS["lognormal"].sample(5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a.shape == (50, 6) and a.dtype == F64 and d.shape == (5, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(e1, a) and not torch.equal(e1, e2)  # a generator is advanced
    assert torch.isfinite(prior.log_prob(a)).all()
    assert prior.sample(0, seed=1).shape == (0, 6)


def test_prior_sample_moments_per_column():
    prior = jansen_rit_prior("dcm", free=("A", "v0", "p_mean"))
    x = prior.sample(20000, seed=2024)
    # 4 standard errors of the mean per column (see test_samples_match_moments_and_ks)
    assert (torch.abs(x.mean(0) - prior.mean()) < 4 * prior.std() / math.sqrt(20000)).all()
    for i, d in enumerate(prior.distributions.values()):
        assert scipy.stats.kstest(x[:, i].numpy(), scipy_dist(d).cdf).pvalue > 1e-3


# ------------------------------------------------------------ prior object
def test_prior_vectorised_methods_match_per_parameter():
    dists = {"A": LogNormal(3.25, 0.2), "v0": Normal(6.0, 0.5), "p_mean": Uniform(40.0, 85.0)}
    prior = Prior(dists, fixed={"B": 22.0})
    assert prior.names == ("A", "v0", "p_mean") and prior.n_params == 3
    theta = prior.sample(24, seed=0).reshape(2, 12, 3)
    lp = prior.log_prob(theta)
    assert lp.shape == (2, 12)
    want = sum(d.log_prob(theta[..., i]) for i, d in enumerate(dists.values()))
    torch.testing.assert_close(lp, want, rtol=0, atol=0)
    z = prior.to_unconstrained(theta)
    torch.testing.assert_close(prior.from_unconstrained(z), theta, rtol=1e-13, atol=0)
    torch.testing.assert_close(
        prior.log_prob_unconstrained(z), prior.log_prob(theta) + prior.log_abs_det_jacobian(z), rtol=1e-12, atol=1e-12
    )
    assert prior.log_prob(theta[0, 0]).shape == ()
    # Jacobian of the full map is diagonal: compare its log-det with autograd's
    zz = z[0, 0].clone()
    jac = torch.autograd.functional.jacobian(prior.from_unconstrained, zz)
    assert float(prior.log_abs_det_jacobian(zz)) == pytest.approx(float(torch.linalg.slogdet(jac)[1]), rel=1e-12)

    mean, cov = prior.gaussian_unconstrained()
    torch.testing.assert_close(mean, torch.tensor([math.log(3.25), 6.0, 0.0], dtype=F64))
    torch.testing.assert_close(cov, torch.diag(torch.tensor([0.04, 0.25, math.pi**2 / 3], dtype=F64)))
    low, high = prior.bounds()
    assert low.tolist() == [0.0, -math.inf, 40.0] and high.tolist() == [math.inf, math.inf, 85.0]
    torch.testing.assert_close(prior.mean(), torch.tensor([3.25 * math.exp(0.02), 6.0, 62.5], dtype=F64))
    torch.testing.assert_close(prior.median(), torch.tensor([3.25, 6.0, 62.5], dtype=F64))
    assert prior.std()[2] == pytest.approx(45 / math.sqrt(12))
    # the returned dicts are copies
    prior.fixed["B"] = 0.0
    prior.distributions.pop("A")
    assert prior.fixed == {"B": 22.0} and prior.names == ("A", "v0", "p_mean")


def test_gaussian_unconstrained_is_exact_for_lognormal_and_normal():
    for d in (LogNormal(100.0, 0.2), Normal(-3.0, 2.0)):
        m, v = d.unconstrained_moments()
        z = d.to_unconstrained(d.sample(20000, generator=5))
        # z is exactly Gaussian with these moments: KS against N(m, v)
        assert scipy.stats.kstest(z.numpy(), scipy.stats.norm(m, math.sqrt(v)).cdf).pvalue > 1e-3
        grid = torch.linspace(m - 5 * math.sqrt(v), m + 5 * math.sqrt(v), 11, dtype=F64)
        torch.testing.assert_close(
            d.log_prob_unconstrained(grid), torch.from_numpy(scipy.stats.norm(m, math.sqrt(v)).logpdf(grid.numpy()))
        )
    # uniform: moment matched to the standard logistic, whose variance is pi^2/3
    z = Uniform(2.0, 5.0).to_unconstrained(Uniform(2.0, 5.0).sample(20000, generator=6))
    assert float(z.var()) == pytest.approx(math.pi**2 / 3, rel=0.05)  # SE of the variance ~2.4 %


def test_as_dict_feeds_the_model_and_keeps_gradients():
    prior = jansen_rit_prior()
    theta = prior.sample(4, seed=3).requires_grad_(True)
    p = prior.as_dict(theta)
    assert set(p) == {"A", "B", "a", "b", "C", "p_mean", "e0", "r", "v0", "p_std"}
    assert p["a"].shape == (4,) and p["e0"].shape == () and p["e0"].dtype == F64
    assert float(p["v0"]) == 6.0 and float(p["p_std"]) == PARAMETERS["p_std"].default
    model = JansenRit(**p)
    assert model.batch_shape == (4,)
    (g,) = torch.autograd.grad(p["p_mean"].sum(), theta)
    assert g[:, 5].tolist() == [1.0] * 4 and float(g[:, :5].abs().sum()) == 0.0


def test_fix_free_and_dict_round_trip():
    prior = jansen_rit_prior()
    fixed = prior.fix(a=90.0, b=45.0)
    assert fixed.names == ("A", "B", "C", "p_mean")
    assert fixed.fixed["a"] == 90.0 and fixed.fixed["b"] == 45.0 and fixed.fixed["e0"] == 2.5
    assert prior.names == ("A", "B", "a", "b", "C", "p_mean")  # original untouched
    refixed = fixed.fix(a=80.0)
    assert refixed.fixed["a"] == 80.0 and refixed.names == fixed.names
    freed = fixed.free(a=LogNormal(100.0, 0.2), e0=Uniform(1.5, 3.5), A=Normal(3.0, 1.0))
    assert freed.names == ("A", "B", "C", "p_mean", "a", "e0")
    assert "a" not in freed.fixed and "e0" not in freed.fixed and freed.distributions["A"] == Normal(3.0, 1.0)
    back = freed.fix(a=90.0, e0=2.5, A=3.0)
    assert back.names == ("B", "C", "p_mean") and back.fixed["A"] == 3.0
    for p in (prior, fixed, freed, jansen_rit_prior("box", free=("p_mean", "v0", "p_std"))):
        text = json.dumps(p.to_dict())
        again = Prior.from_dict(json.loads(text))
        assert again == p and again.names == p.names and again.fixed == p.fixed
    assert prior.to_dict()["distributions"]["A"] == {"dist": "lognormal", "median": 3.25, "sd_log": 0.2}
    for d in DISTS.values():
        assert distribution_from_dict(json.loads(json.dumps(d.to_dict()))) == d
    r = repr(prior)
    assert "LogNormal(100, 0.2)" in r and "90% interval" in r and "1/s" in r and "e0=2.5" in r
    assert fixed != prior


def test_jansen_rit_dcm_defaults():
    prior = jansen_rit_prior()
    assert prior.names == ("A", "B", "a", "b", "C", "p_mean")
    assert prior.fixed == {"e0": 2.5, "r": 0.56, "v0": 6.0, "p_std": 22.0}
    d = prior.distributions
    for k in ("A", "B", "a", "b", "C"):
        assert d[k] == LogNormal(PARAMETERS[k].default, 0.2)
    assert d["a"].quantile(0.025) == pytest.approx(67.57, abs=0.01) and d["a"].quantile(0.975) == pytest.approx(
        147.99, abs=0.01
    )
    pm = d["p_mean"]
    assert pm.median == pytest.approx(math.sqrt(40 * 85), rel=1e-14)
    assert pm.quantile(0.025) == pytest.approx(40.0, rel=1e-12) and pm.quantile(0.975) == pytest.approx(85.0, rel=1e-12)
    # most prior mass below the first Hopf point (p = 89.83)
    assert scipy.stats.lognorm(s=pm.sd_log, scale=pm.median).cdf(89.83) > 0.98
    other = jansen_rit_prior(p_mean_range=(10.0, 300.0)).distributions["p_mean"]
    assert other.quantile(0.025) == pytest.approx(10.0, rel=1e-12) and other.quantile(0.975) == pytest.approx(300.0)
    full = jansen_rit_prior(free=("A", "B", "a", "b", "C", "e0", "r", "v0", "p_mean", "p_std"))
    assert full.fixed == {} and full.distributions["v0"] == Normal(6.0, 0.5)
    assert isinstance(full.distributions["e0"], LogNormal) and isinstance(full.distributions["p_std"], LogNormal)
    only = jansen_rit_prior(free=("b",))
    assert only.fixed["p_mean"] == 220.0 and "C1" not in only.fixed and only.n_params == 1


def test_jansen_rit_box_bounds():
    names = ("A", "B", "a", "b", "C", "p_mean", "e0", "r", "v0")
    prior = jansen_rit_prior("box", free=names, p_mean_range=(40.0, 85.0))
    low, high = prior.bounds()
    assert low.tolist() == [2.0, 15.0, 60.0, 30.0, 90.0, 40.0, 1.5, 0.4, 5.0]
    assert high.tolist() == [5.0, 30.0, 150.0, 80.0, 200.0, 85.0, 3.5, 0.7, 7.0]
    assert all(isinstance(d, Uniform) for d in prior.distributions.values())
    x = prior.sample(1000, seed=0)
    assert ((x >= low) & (x <= high)).all()
    assert jansen_rit_prior("box", free=("p_mean",), p_mean_range=(0.0, 300.0)).bounds()[1].tolist() == [300.0]


# ------------------------------------------------------------ errors
BAD_CONSTRUCTION = [
    (lambda: LogNormal(-1.0, 0.2), "median"),
    (lambda: LogNormal(0.0, 0.2), "median"),
    (lambda: LogNormal(1.0, 0.0), "sd_log"),
    (lambda: LogNormal(float("nan"), 0.2), "median"),
    (lambda: LogNormal("3", 0.2), "median"),
    (lambda: Normal(math.inf, 1.0), "mean"),
    (lambda: Normal(0.0, -1.0), "sd"),
    (lambda: Uniform(2.0, 2.0), "high"),
    (lambda: Uniform(3.0, 1.0), "high"),
    (lambda: Uniform(-math.inf, 1.0), "low"),
    (lambda: Prior([("A", LogNormal(1.0, 1.0))]), "distributions"),
    (lambda: Prior({}), "distributions"),
    (lambda: Prior({"": LogNormal(1.0, 1.0)}), "distributions"),
    (lambda: Prior({3: LogNormal(1.0, 1.0)}), "distributions"),
    (lambda: Prior({"A": 3.25}), "distributions"),
    (lambda: Prior({"A": LogNormal(1.0, 1.0)}, fixed={"A": 3.0}), "both free"),
    (lambda: Prior({"A": LogNormal(1.0, 1.0)}, fixed={"B": "x"}), "fixed"),
    (lambda: Prior({"A": LogNormal(1.0, 1.0)}, fixed={"B": math.nan}), "fixed"),
    (lambda: Prior({"A": LogNormal(1.0, 1.0)}, fixed=[1.0]), "fixed"),
    (lambda: jansen_rit_prior("spm"), "kind"),
    (lambda: jansen_rit_prior(free=("A", "C1")), "free"),
    (lambda: jansen_rit_prior(free=("A", "A")), "free"),
    (lambda: jansen_rit_prior(free="A"), "free"),
    (lambda: jansen_rit_prior(free=()), "free"),
    (lambda: jansen_rit_prior(p_mean_range=(85.0, 40.0)), "p_mean_range"),
    (lambda: jansen_rit_prior(p_mean_range=(0.0, 40.0)), "p_mean_range"),
    (lambda: jansen_rit_prior(p_mean_range=40.0), "p_mean_range"),
    (lambda: jansen_rit_prior(p_mean_range=(40.0, math.inf)), "p_mean_range"),
    (lambda: distribution_from_dict({"dist": "gamma", "k": 1}), "dist"),
    (lambda: distribution_from_dict({"dist": "normal", "mean": 1.0}), "d"),
    (lambda: distribution_from_dict({"dist": "normal", "mean": 1.0, "sd": 1.0, "x": 2}), "d"),
    (lambda: Prior.from_dict({"dists": {}}), "d"),
    (lambda: Prior.from_dict({"distributions": {"A": {"dist": "normal", "mean": 0.0, "sd": -1.0}}}), "sd"),
]


@pytest.mark.parametrize("make, name", BAD_CONSTRUCTION)
def test_bad_construction_raises_named_value_error(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_bad_calls_raise_named_value_errors():
    prior = jansen_rit_prior()
    ok = prior.sample(2, seed=0)
    with pytest.raises(ValueError, match=r"theta must have shape \(\.\.\., 6\).*got shape \(2, 5\)"):
        prior.log_prob(ok[:, :5])
    with pytest.raises(ValueError, match=r"theta .*got shape \(\)"):
        prior.log_prob(3.0)
    cases = [
        (lambda: prior.log_prob(torch.full((2, 6), math.nan, dtype=F64)), "theta"),
        (lambda: prior.as_dict(ok[:, :3]), "theta"),
        (lambda: prior.to_unconstrained(-ok), "theta"),
        (lambda: prior.to_unconstrained(ok[:, :2]), "theta"),
        (lambda: prior.from_unconstrained(torch.zeros(3, 2)), "z"),
        (lambda: prior.from_unconstrained(torch.full((6,), math.inf)), "z"),
        (lambda: prior.log_abs_det_jacobian(torch.full((6,), math.nan)), "z"),
        (lambda: prior.log_prob_unconstrained(torch.zeros(7)), "z"),
        (lambda: prior.log_prob("a"), "theta"),
        (lambda: prior.sample(-1), "n"),
        (lambda: prior.sample(2.5), "n"),
        (lambda: prior.sample(3, seed=-1), "seed"),
        (lambda: prior.sample(3, seed=1.5), "seed"),
        (lambda: prior.sample(3, seed="0"), "seed"),
        (lambda: prior.fix(C1=10.0), "C1"),
        (lambda: prior.fix(A=math.nan), "A"),
        (lambda: prior.fix(A=1, B=1, a=1, b=1, C=1, p_mean=1), "no free"),
        (lambda: prior.free(e0=2.5), "e0"),
        (lambda: Uniform(2.0, 5.0).to_unconstrained(5.0), "theta"),
        (lambda: Uniform(2.0, 5.0).to_unconstrained(1.0), "theta"),
        (lambda: LogNormal(1.0, 1.0).to_unconstrained(0.0), "theta"),
        (lambda: LogNormal(1.0, 1.0).log_prob(math.nan), "theta"),
        (lambda: Normal(0.0, 1.0).from_unconstrained(math.inf), "z"),
        (lambda: Normal(0.0, 1.0).sample(10, generator="x"), "generator"),
        (lambda: Normal(0.0, 1.0).sample(-2), "n"),
        (lambda: Normal(0.0, 1.0).quantile(1.0), "q"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


# ------------------------------------------------------ torch.distributions
def mixed_prior():
    return Prior(
        {"A": LogNormal(3.25, 0.2), "gain": Normal(-1.0, 2.0), "p_mean": Uniform(40.0, 85.0), "b": LogNormal(50.0, 0.5),
         "floor": LogUniform(0.01, 10.0)},
        fixed={"B": 22.0},
    )


@pytest.mark.parametrize("make", [mixed_prior, lambda: jansen_rit_prior(kind="dcm"), lambda: jansen_rit_prior(kind="box")])
def test_to_torch_log_prob_matches_prior(make):
    prior = make()
    d = prior.to_torch()
    assert isinstance(d, torch.distributions.Distribution)
    assert d.batch_shape == () and d.event_shape == (prior.n_params,) and d.names == prior.names
    theta = prior.sample(500, seed=3)
    assert torch.allclose(d.log_prob(theta), prior.log_prob(theta), rtol=1e-12, atol=1e-12)
    # outside the support: -inf like the prior (no NaN from log of a negative value)
    low, high = prior.bounds()
    outside = torch.where(torch.isfinite(low), low - 1.0, torch.where(torch.isfinite(high), high + 1.0, theta[0]))
    if bool((torch.isfinite(low) | torch.isfinite(high)).any()):
        assert d.log_prob(outside) == -math.inf == float(prior.log_prob(outside))
        assert not bool(d.support.check(outside))
    assert bool(d.support.check(theta).all())


def test_to_torch_sample_moments():
    prior = mixed_prior()
    d = prior.to_torch()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = d.sample((200_000,))
        again = d.sample((2, 3))
    assert x.shape == (200_000, 5) and x.dtype == torch.float64 and again.shape == (2, 3, 5)
    se = prior.std() / math.sqrt(x.shape[0])
    assert ((x.mean(0) - prior.mean()).abs() < 5 * se).all(), (x.mean(0), prior.mean())
    assert torch.allclose(x.std(0), prior.std(), rtol=0.02)
    assert torch.allclose(d.mean, prior.mean()) and torch.allclose(d.stddev, prior.std())
    # each margin has the right distribution, not only the right moments
    for i, dist in enumerate(prior.distributions.values()):
        cdf = {"lognormal": lambda v, q=dist: scipy.stats.lognorm.cdf(v, q.sd_log, scale=q.median),
               "normal": lambda v, q=dist: scipy.stats.norm.cdf(v, q.mean, q.sd),
               "uniform": lambda v, q=dist: scipy.stats.uniform.cdf(v, q.low, q.high - q.low),
               "loguniform": lambda v, q=dist: scipy.stats.loguniform.cdf(v, q.low, q.high)}[dist._kind]
        assert scipy.stats.kstest(x[:20_000, i].numpy(), cdf).pvalue > 1e-3


def test_to_torch_support_bijection_is_the_prior_transform():
    # sbi runs MCMC through biject_to(prior.support) when the support exposes bounds
    prior = mixed_prior()
    d = prior.to_torch()
    assert hasattr(d.support, "base_constraint") and hasattr(d.support.base_constraint, "upper_bound")
    t = torch.distributions.biject_to(d.support)
    z = torch.randn(7, prior.n_params, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(t(z), prior.from_unconstrained(z), rtol=1e-13)
    assert torch.allclose(t.inv(t(z)), z, rtol=1e-10, atol=1e-10)
    assert torch.allclose(t.log_abs_det_jacobian(z, t(z)), prior.log_abs_det_jacobian(z), rtol=1e-12)


def test_to_torch_meets_sbi_prior_checks():
    # what sbi.utils.process_prior checks of a PyTorch prior (sbi itself is not a dependency)
    d = mixed_prior().to_torch()
    assert d.sample().ndim == 1 and d.batch_shape.numel() <= 1
    assert d.log_prob(d.sample((10,))).shape == (10,)
    x32 = d.sample((5,)).float()  # sbi wraps float64 priors to hand it float32 values
    assert d.log_prob(x32).shape == (5,) and torch.isfinite(d.log_prob(x32)).all()
    with pytest.raises(ValueError, match="prior must be a jrinfer.Prior"):
        type(d)("not a prior")
