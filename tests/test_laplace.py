"""Variational Laplace engine: exactness on linear-Gaussian models, hyperparameters, BMR, failures."""

import math
import warnings

import pytest
import torch

from jrinfer.backends.laplace import LaplaceConvergenceError, LaplaceResult, VariationalLaplace
from jrinfer.comparison import bayesian_model_reduction, log_bayes_factor

D = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=D)


def _spd(g, n, scale=1.0):
    A = _randn(g, n, n)
    return scale * (A @ A.T / n + 0.5 * torch.eye(n, dtype=D))


def _linear_problem(seed=0, n=4, m=30):
    g = _gen(seed)
    U, _ = torch.linalg.qr(_randn(g, m, n))
    V, _ = torch.linalg.qr(_randn(g, n, n))
    X = 2.0 * U @ torch.diag(torch.linspace(1.0, 3.0, n, dtype=D)) @ V.T  # condition number 3
    c = _randn(g, m)
    mu0 = _randn(g, n)
    C = _spd(g, n)
    theta = mu0 + torch.linalg.cholesky(C) @ _randn(g, n)
    return g, X, c, mu0, C, theta


def _closed_form(X, c, y, mu0, C, Pi):
    """Exact posterior and log evidence for y = X θ + c + ε, ε ~ N(0, Π⁻¹), θ ~ N(μ0, C)."""
    iC = torch.linalg.inv(C)
    S = torch.linalg.inv(X.T @ Pi @ X + iC)
    mu = S @ (X.T @ Pi @ (y - c) + iC @ mu0)
    cov_y = torch.linalg.inv(Pi) + X @ C @ X.T
    log_ev = torch.distributions.MultivariateNormal(X @ mu0 + c, covariance_matrix=cov_y).log_prob(y)
    return mu, S, float(log_ev)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _assert_monotone(res):
    F = res.trace_free_energy
    assert F.shape == (res.n_iter + 1,)
    assert bool(torch.isfinite(F).all())
    assert bool((F[1:] >= F[:-1]).all()), F


# --------------------------------------------------------------------------- linear-Gaussian


def test_linear_gaussian_fixed_noise_matches_closed_form():
    g, X, c, mu0, C, theta = _linear_problem()
    lam = torch.tensor([math.log(1 / 0.5**2)], dtype=D)
    y = X @ theta + c + 0.5 * _randn(g, X.shape[0])
    res = VariationalLaplace(estimate_hyper=False).fit_function(lambda p: X @ p + c, y, mu0, C, hyper_mean=lam)
    mu, S, log_ev = _closed_form(X, c, y, mu0, C, torch.exp(lam) * torch.eye(30, dtype=D))
    assert isinstance(res, LaplaceResult)
    assert res.converged and res.status == "converged", res.message
    assert _rel(res.mean, mu) < 1e-8
    assert _rel(res.cov, S) < 1e-8
    assert abs(res.free_energy - log_ev) < 1e-8 * abs(log_ev)
    assert res.free_energy == pytest.approx(res.accuracy - res.complexity, rel=1e-12)
    assert res.complexity > 0
    assert torch.equal(res.hyper_mean, lam) and torch.equal(res.hyper_cov, torch.zeros(1, 1, dtype=D))
    _assert_monotone(res)


@pytest.mark.parametrize("form", ["diagonals", "dense"])
def test_linear_gaussian_two_fixed_precision_components(form):
    g, X, c, mu0, C, theta = _linear_problem(seed=1)
    m = X.shape[0]
    first = (torch.arange(m) < m // 2).to(D)
    if form == "diagonals":
        comps = torch.stack([first, 1.0 - first])  # (2, m): different noise in the two halves
        dense = [torch.diag(q) for q in comps]
    else:
        t = torch.arange(m, dtype=D)
        K = torch.exp(-0.5 * (t[:, None] - t[None, :]) ** 2 / 2.0**2)  # smooth PSD component
        comps = [torch.eye(m, dtype=D), K]
        dense = comps
    lam = torch.tensor([0.7, -0.4], dtype=D)
    Pi = torch.exp(lam[0]) * dense[0] + torch.exp(lam[1]) * dense[1]
    y = X @ theta + c + torch.linalg.solve(torch.linalg.cholesky(Pi).T, _randn(g, m))
    vl = VariationalLaplace(estimate_hyper=False)
    res = vl.fit_function(lambda p: X @ p + c, y, mu0, C, hyper_mean=lam, precision_components=comps)
    mu, S, log_ev = _closed_form(X, c, y, mu0, C, Pi)
    assert res.converged, res.message
    assert _rel(res.mean, mu) < 1e-8
    assert _rel(res.cov, S) < 1e-8
    assert abs(res.free_energy - log_ev) < 1e-8 * abs(log_ev)


@pytest.mark.parametrize("mode", ["forward", "reverse", "autograd"])
def test_jacobian_modes_and_more_parameters_than_data(mode):
    g = _gen(2)
    n, m = 6, 4  # n > m: the auto rule would start with reverse mode
    X, c, mu0, C = _randn(g, m, n), _randn(g, m), _randn(g, n), _spd(g, n)
    y = X @ mu0 + c + _randn(g, m)
    vl = VariationalLaplace(estimate_hyper=False, jacobian=mode)
    res = vl.fit_function(lambda p: X @ p + c, y, mu0, C)
    mu, S, log_ev = _closed_form(X, c, y, mu0, C, torch.eye(m, dtype=D))
    assert res.converged and f"{mode} mode" in res.message
    assert _rel(res.mean, mu) < 1e-8 and _rel(res.cov, S) < 1e-8
    assert res.free_energy == pytest.approx(log_ev, rel=1e-8)


def test_falls_back_to_plain_autograd_when_torch_func_cannot_transform_f():
    f0, y, truth = _exp_decay()
    buf = torch.zeros(y.shape[0], dtype=D)

    def f(p):  # in-place write into a captured tensor: not vmappable
        buf.copy_(f0(p))
        return buf.clone()

    res = VariationalLaplace().fit_function(f, y, torch.tensor([1.0, 0.5], dtype=D), 4 * torch.eye(2, dtype=D))
    ref = VariationalLaplace().fit_function(f0, y, torch.tensor([1.0, 0.5], dtype=D), 4 * torch.eye(2, dtype=D))
    assert res.converged and "autograd mode" in res.message
    assert _rel(res.mean, ref.mean) < 1e-8 and res.free_energy == pytest.approx(ref.free_energy, rel=1e-10)


# --------------------------------------------------------------------------- hyperparameters


def test_noise_precision_is_estimated():
    g = _gen(3)
    n, m, sd = 3, 400, 0.3
    t = torch.linspace(-1, 1, m, dtype=D)
    X = torch.stack([torch.ones_like(t), t, t**2], 1)
    theta = torch.tensor([0.5, -1.0, 2.0], dtype=D)
    y = X @ theta + sd * _randn(g, m)
    res = VariationalLaplace().fit_function(lambda p: X @ p, y, torch.zeros(n, dtype=D), 4 * torch.eye(n, dtype=D))
    assert res.converged, res.message
    truth = math.log(1 / sd**2)
    post_sd = float(res.hyper_cov[0, 0].sqrt())
    assert abs(float(res.hyper_mean[0]) - truth) < 3 * post_sd
    assert post_sd < 0.1  # ~ sqrt(2/m): the data are informative
    assert bool(((res.mean - theta).abs() < 3 * res.cov.diagonal().sqrt()).all())
    _assert_monotone(res)
    assert len(res.trace) > 2 and all({"F", "predicted_increase", "nu", "accepted"} <= set(d) for d in res.trace)


def test_hyper_estimate_is_the_exact_marginal_map():
    """Linear model: F(λ) = log N(y; Xμ0, e^-λ I + XCXᵀ) + λ-prior terms, so VL must find its maximiser.

    Few data per parameter (n=8, m=20), so the J Σ Jᵀ term of the λ gradient matters.
    """
    import scipy.optimize

    g = _gen(8)
    n, m = 8, 20
    X, mu0, C = _randn(g, m, n), torch.zeros(n, dtype=D), _spd(g, n)
    y = X @ (mu0 + torch.linalg.cholesky(C) @ _randn(g, n)) + 0.5 * _randn(g, m)
    hm, hc = 0.5, 2.0

    def log_ev(lam):
        cov_y = math.exp(-lam) * torch.eye(m, dtype=D) + X @ C @ X.T
        return float(torch.distributions.MultivariateNormal(X @ mu0, covariance_matrix=cov_y).log_prob(y))

    def objective(lam):
        return -(log_ev(lam) - 0.5 * (lam - hm) ** 2 / hc)

    best = scipy.optimize.minimize_scalar(objective, bracket=(-2.0, 4.0), tol=1e-12)
    post_var = 1.0 / (m / 2 + 1.0 / hc)  # Fisher information of one precision component is m/2
    F_exact = -best.fun + 0.5 * math.log(post_var / hc)

    res = VariationalLaplace(tol=1e-10).fit_function(
        lambda p: X @ p, y, mu0, C, hyper_mean=torch.tensor([hm], dtype=D), hyper_cov=torch.tensor([[hc]], dtype=D)
    )
    assert res.converged, res.message
    assert float(res.hyper_mean[0]) == pytest.approx(best.x, abs=1e-5)
    assert float(res.hyper_cov[0, 0]) == pytest.approx(post_var, rel=1e-12)
    assert res.free_energy == pytest.approx(F_exact, rel=1e-9)
    _assert_monotone(res)


@pytest.mark.parametrize("form", ["diagonals", "dense"])
def test_overlapping_components_maximise_the_exact_free_energy(form):
    """Two overlapping precision components (the Fisher information depends on λ).

    For a linear model exactly
    F(λ) = log N(y; Xμ0, Π(λ)⁻¹ + XCXᵀ) - ½sᵀC_λ⁻¹s - ½log|C_λ| - ½log|I(λ) + C_λ⁻¹|;
    exactly; VL must return its maximiser, that maximum and Σ_λ = (I(λ) + C_λ⁻¹)⁻¹.
    """
    import scipy.optimize

    g = _gen(9)
    n, m = 3, 40
    X, mu0, C = _randn(g, m, n), torch.zeros(n, dtype=D), _spd(g, n)
    t = torch.linspace(0, 1, m, dtype=D)
    if form == "diagonals":
        comps = torch.stack([torch.ones(m, dtype=D), t**2])
        Q = torch.diag_embed(comps)
    else:
        K = torch.exp(-0.5 * (t[:, None] - t[None, :]) ** 2 / 0.05**2)
        comps = torch.stack([torch.diag(1.0 + 2.0 * t), K])  # components that do not commute
        Q = comps
    hm = torch.tensor([0.3, -0.5], dtype=D)
    hc = torch.tensor([[1.0, 0.3], [0.3, 2.0]], dtype=D)
    ihc = torch.linalg.inv(hc)

    def Pi(lam):
        return torch.exp(lam[0]) * Q[0] + torch.exp(lam[1]) * Q[1]

    y = X @ (torch.linalg.cholesky(C) @ _randn(g, n)) + torch.linalg.solve(
        torch.linalg.cholesky(Pi(torch.tensor([1.0, 0.5], dtype=D))).T, _randn(g, m)
    )

    def fisher(lam):
        S = torch.linalg.inv(Pi(lam))
        PS = [torch.exp(lam[i]) * Q[i] @ S for i in range(2)]
        return 0.5 * torch.tensor([[torch.trace(PS[i] @ PS[j]) for j in range(2)] for i in range(2)], dtype=D)

    def F_exact(lam):
        lam = torch.as_tensor(lam, dtype=D)
        cov_y = torch.linalg.inv(Pi(lam)) + X @ C @ X.T
        log_ev = torch.distributions.MultivariateNormal(X @ mu0, covariance_matrix=cov_y).log_prob(y)
        s = lam - hm
        return float(log_ev - 0.5 * s @ ihc @ s - 0.5 * torch.logdet(hc) - 0.5 * torch.logdet(fisher(lam) + ihc))

    best = scipy.optimize.minimize(lambda lam: -F_exact(lam), hm.numpy(), method="Nelder-Mead",
                                   options=dict(xatol=1e-9, fatol=1e-13, maxiter=4000))
    vl = VariationalLaplace(tol=1e-10)
    res = vl.fit_function(lambda p: X @ p, y, mu0, C, hyper_mean=hm, hyper_cov=hc, precision_components=comps)
    assert res.converged, res.message
    assert res.free_energy == pytest.approx(-best.fun, rel=1e-9)
    assert res.free_energy == pytest.approx(F_exact(res.hyper_mean), rel=1e-12)
    assert torch.allclose(res.hyper_mean, torch.as_tensor(best.x, dtype=D), atol=1e-4)
    assert _rel(res.hyper_cov, torch.linalg.inv(fisher(res.hyper_mean) + ihc)) < 1e-10
    _assert_monotone(res)


def test_two_noise_levels_are_estimated_separately():
    g = _gen(4)
    m = 300
    t = torch.linspace(0, 1, m, dtype=D)
    X = torch.stack([torch.ones_like(t), t], 1)
    sds = torch.where(t < 0.5, 0.2, 1.0)
    y = X @ torch.tensor([1.0, 2.0], dtype=D) + sds * _randn(g, m)
    q = torch.stack([(t < 0.5).to(D), (t >= 0.5).to(D)])
    res = VariationalLaplace().fit_function(
        lambda p: X @ p, y, torch.zeros(2, dtype=D), torch.eye(2, dtype=D), precision_components=q
    )
    assert res.converged, res.message
    truth = torch.log(1 / torch.tensor([0.2, 1.0], dtype=D) ** 2)
    assert bool(((res.hyper_mean - truth).abs() < 3 * res.hyper_cov.diagonal().sqrt()).all()), res.hyper_mean
    _assert_monotone(res)


# --------------------------------------------------------------------------- nonlinear


def _exp_decay(seed=5, sd=0.05):
    g = _gen(seed)
    t = torch.linspace(0, 3, 40, dtype=D)
    truth = torch.tensor([2.0, 1.3], dtype=D)

    def f(p):
        return p[0] * torch.exp(-p[1] * t)

    y = f(truth) + sd * _randn(g, t.shape[0])
    return f, y, truth


def test_nonlinear_regression_recovers_truth():
    f, y, truth = _exp_decay()
    prior_mean = torch.tensor([1.0, 0.5], dtype=D)
    res = VariationalLaplace().fit_function(f, y, prior_mean, 4 * torch.eye(2, dtype=D))
    assert res.converged, res.message
    assert bool(((res.mean - truth).abs() < 3 * res.cov.diagonal().sqrt()).all()), (res.mean, res.cov)
    assert abs(float(res.hyper_mean[0]) - math.log(1 / 0.05**2)) < 3 * float(res.hyper_cov[0, 0].sqrt())
    assert res.n_iter < 40
    _assert_monotone(res)


def test_progress_bar(capsys):
    f, y, _ = _exp_decay()
    res = VariationalLaplace(progress=True).fit_function(f, y, torch.ones(2, dtype=D), torch.eye(2, dtype=D))
    assert res.converged
    assert "F=" in capsys.readouterr().err


# --------------------------------------------------------------------------- model reduction & comparison


@pytest.mark.parametrize("case", ["shrink_and_shift", "off_1e-12", "off_exact_zero", "identical"])
def test_bayesian_model_reduction_matches_refit(case):
    g, X, c, mu0, C, theta = _linear_problem(seed=6)
    y = X @ theta + c + 0.5 * _randn(g, X.shape[0])
    lam = torch.tensor([math.log(4.0)], dtype=D)
    vl = VariationalLaplace(estimate_hyper=False)
    full = vl.fit_function(lambda p: X @ p + c, y, mu0, C, hyper_mean=lam)

    red_mean, red_cov = mu0.clone(), C.clone()
    if case == "shrink_and_shift":
        red_mean[1] += 0.3
        red_cov = C.clone()
        red_cov[1, :] *= 0.1
        red_cov[:, 1] *= 0.1
    elif case.startswith("off"):
        red_mean[2] = 0.0
        red_cov[2, :] = 0.0
        red_cov[:, 2] = 0.0
    fit_cov = red_cov.clone()
    if case.startswith("off"):
        fit_cov[2, 2] = 1e-12  # the refit needs an invertible prior
        if case == "off_1e-12":
            red_cov = fit_cov

    mean_r, cov_r, dF = bayesian_model_reduction(full.mean, full.cov, mu0, C, red_mean, red_cov)
    refit = vl.fit_function(lambda p: X @ p + c, y, red_mean, fit_cov, hyper_mean=lam)
    assert refit.converged
    assert _rel(mean_r, refit.mean) < 1e-6
    assert _rel(cov_r, refit.cov) < 1e-6
    assert dF == pytest.approx(refit.free_energy - full.free_energy, rel=1e-6, abs=1e-9)
    if case == "identical":
        assert abs(dF) < 1e-9
    if case == "off_exact_zero":
        assert float(mean_r[2]) == 0.0 and float(cov_r[2].abs().max()) < 1e-15


def test_nested_model_comparison():
    g = _gen(7)
    m = 40
    X = _randn(g, m, 4)
    prior = dict(prior_mean=torch.zeros(4, dtype=D), prior_cov=torch.eye(4, dtype=D))
    vl = VariationalLaplace(estimate_hyper=False)

    def evidences(theta):
        y = X @ theta + _randn(g, m)
        big = vl.fit_function(lambda p: X @ p, y, **prior)
        small = vl.fit_function(lambda p: X[:, :2] @ p, y, prior["prior_mean"][:2], prior["prior_cov"][:2, :2])
        # The same comparison by model reduction of the big model (switch off theta 2, 3).
        off = prior["prior_cov"].clone()
        off[2:, 2:] = 0.0
        dF = bayesian_model_reduction(big.mean, big.cov, *prior.values(), prior["prior_mean"], off)[2]
        assert dF == pytest.approx(log_bayes_factor(small, big), rel=1e-8)
        return log_bayes_factor(small.free_energy, big.free_energy)

    assert evidences(torch.tensor([1.0, -0.8, 0.0, 0.0], dtype=D)) > 1.0  # favours the true, smaller model
    assert evidences(torch.tensor([1.0, -0.8, 0.9, 0.7], dtype=D)) < -3.0  # favours the true, larger model


def test_log_bayes_factor():
    assert log_bayes_factor(-10.0, -12.5) == 2.5
    with pytest.raises(ValueError, match="F2"):
        log_bayes_factor(1.0, float("nan"))


# --------------------------------------------------------------------------- failures


def test_max_iter_reports_and_warns():
    f, y, _ = _exp_decay()
    args = (f, y, torch.tensor([1.0, 0.5], dtype=D), 4 * torch.eye(2, dtype=D))
    with pytest.warns(RuntimeWarning, match="max_iter") as record:
        res = VariationalLaplace(max_iter=2).fit_function(*args)
    assert record[0].filename == __file__  # the warning points at the caller
    assert res.status == "max_iter" and not res.converged and "max_iter=2" in res.message
    assert res.n_iter == 2 and len(res.trace) == 3
    assert bool(torch.isfinite(res.mean).all()) and bool(torch.isfinite(res.cov).all())
    assert math.isfinite(res.free_energy)
    with pytest.raises(LaplaceConvergenceError, match="max_iter") as info:
        VariationalLaplace(max_iter=2, raise_on_failure=True).fit_function(*args)
    assert info.value.result.status == "max_iter"


def test_nan_model_fails_gracefully():
    def f(p):
        return p.sum() * torch.full((5,), float("nan"), dtype=D)

    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = VariationalLaplace().fit_function(
            f, torch.zeros(5, dtype=D), torch.zeros(2, dtype=D), torch.eye(2, dtype=D)
        )
    assert res.status == "failed" and "non-finite" in res.message
    assert res.n_iter == 0 and torch.equal(res.mean, torch.zeros(2, dtype=D))


def test_nan_region_is_stepped_around():
    f0, y, truth = _exp_decay()

    nan_calls = []

    def f(p):  # undefined for negative rates: trial steps into that region must be rejected
        nan_calls.append(bool(p[1] < 0))
        return f0(p) + torch.where(p[1] < 0, float("nan"), 0.0)

    prior_cov = torch.diag(torch.tensor([25.0, 1.0], dtype=D))
    res = VariationalLaplace().fit_function(f, y, torch.tensor([0.1, 0.05], dtype=D), prior_cov)
    assert res.converged, res.message
    assert any(nan_calls) and any(d["retries"] > 0 for d in res.trace)
    assert bool(((res.mean - truth).abs() < 3 * res.cov.diagonal().sqrt()).all())
    _assert_monotone(res)


def test_nan_everywhere_but_start_fails_with_message():
    calls = {"n": 0}

    def f(p):
        calls["n"] += 1
        bad = (p - torch.tensor([0.0, 0.0], dtype=D)).abs().sum() > 0
        return torch.where(bad, float("nan"), 1.0) * torch.ones(3, dtype=D) + p.sum()

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = VariationalLaplace(max_step_retries=3).fit_function(
            f, torch.tensor([5.0, 5.0, 5.0], dtype=D), torch.zeros(2, dtype=D), torch.eye(2, dtype=D)
        )
    assert res.status == "failed" and "non-finite" in res.message
    assert any(issubclass(x.category, RuntimeWarning) for x in w)
    assert calls["n"] < 40  # bounded retries


# --------------------------------------------------------------------------- validation


def _good():
    return dict(
        f=lambda p: torch.cat([p, p]),
        y=torch.zeros(6, dtype=D),
        prior_mean=torch.zeros(3, dtype=D),
        prior_cov=torch.eye(3, dtype=D),
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (
            dict(prior_cov=torch.eye(2, dtype=D)),
            r"prior_cov must have shape \(3, 3\) to match prior_mean, got \(2, 2\)",
        ),
        (dict(prior_cov=-torch.eye(3, dtype=D)), "prior_cov must be symmetric positive definite"),
        (
            dict(prior_cov=torch.tensor([[1.0, 2, 0], [2, 1, 0], [0, 0, 1]], dtype=D)),
            "prior_cov must be symmetric positive definite",
        ),
        (dict(prior_cov=torch.tensor([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]], dtype=D)), "prior_cov .*not symmetric"),
        (dict(f=lambda p: torch.cat([p, p[:2]])), r"f returned shape \(5,\), expected \(m,\) = \(6,\) like y"),
        (dict(y=torch.tensor([0.0, 1, float("nan"), 0, 0, 0], dtype=D)), "y must be finite"),
        (dict(y=torch.zeros(2, 3, dtype=D)), "y must be a 1-D"),
        (dict(prior_mean=torch.tensor([0.0, float("inf"), 0.0], dtype=D)), "prior_mean must be finite"),
        (dict(hyper_mean=torch.zeros(2, dtype=D)), r"hyper_mean must have shape \(1,\)"),
        (dict(hyper_cov=torch.eye(2, dtype=D)), r"hyper_cov must have shape \(1, 1\)"),
        (dict(hyper_cov=torch.zeros(1, 1, dtype=D)), "hyper_cov must be symmetric positive definite"),
        (dict(init=torch.zeros(4, dtype=D)), r"init must have shape \(3,\)"),
        (dict(precision_components=torch.ones(2, 5, dtype=D)), r"precision_components .*\(k, 6\)"),
        (dict(precision_components=-torch.ones(1, 6, dtype=D)), "precision_components .*>= 0"),
        (dict(precision_components=[torch.eye(5, dtype=D)]), r"precision_components\[0\] must have shape"),
        (
            dict(precision_components=[-torch.eye(6, dtype=D)]),
            r"precision_components\[0\] must be symmetric positive semi-definite",
        ),
        (dict(precision_components=[torch.zeros(6, 6, dtype=D)]), "precision_components must sum to a positive"),
        (dict(precision_components="identity"), "precision_components must be"),
    ],
)
def test_bad_inputs_name_the_argument(change, match):
    kw = {**_good(), **change}
    with pytest.raises(ValueError, match=match):
        VariationalLaplace().fit_function(**kw)


@pytest.mark.parametrize(
    "opts, match",
    [
        (dict(max_iter=0), "max_iter"),
        (dict(max_iter=2.5), "max_iter"),
        (dict(tol=-1.0), "tol"),
        (dict(patience=0), "patience"),
        (dict(estimate_hyper="yes"), "estimate_hyper"),
        (dict(max_step_retries=-1), "max_step_retries"),
        (dict(progress=1), "progress"),
        (dict(jacobian="fwd"), "jacobian"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        VariationalLaplace(**opts)
    with pytest.raises(TypeError):
        VariationalLaplace(128)  # options are keyword-only


def test_bmr_bad_inputs():
    m, C = torch.zeros(2, dtype=D), torch.eye(2, dtype=D)
    with pytest.raises(ValueError, match="reduced_prior_cov must be symmetric positive semi-definite"):
        bayesian_model_reduction(m, C, m, C, m, -C)
    with pytest.raises(ValueError, match=r"prior_mean must have shape \(2,\)"):
        bayesian_model_reduction(m, C, torch.zeros(3, dtype=D), C, m, C)
    with pytest.raises(ValueError, match="post_cov is inconsistent"):
        bayesian_model_reduction(m, 4 * C, m, C, m, C)  # posterior wider than its prior
