"""The fused NumPy log-likelihood + gradient of transfer-method spectra against the generic torch path."""

import math

import numpy as np
import pytest
import torch

from jrinfer import InverseProblem, Prior, SpectrumData, SpectrumObservation

F64 = torch.float64


def _data(obs, n_segments=20, df=0.5):
    freqs = torch.arange(2.0, 40.01, df, dtype=F64)
    template = SpectrumData.from_arrays(freqs, torch.ones(2, freqs.numel(), dtype=F64), units="uV^2/Hz",
                                        n_segments=n_segments)
    truth = {
        "p_mean": torch.tensor(60.0, dtype=F64),
        "p_std": torch.tensor(1.0, dtype=F64),
        "gain": torch.tensor(3e-3, dtype=F64),
        "ap_amplitude": torch.tensor(2.0, dtype=F64),
        "ap_exponent": torch.tensor(1.2, dtype=F64),
        "floor": torch.tensor(0.02, dtype=F64),
        "log_precision": torch.tensor(math.log(20.0), dtype=F64),
    }
    pred = obs.predict(truth, template)
    y = SpectrumObservation().sample(pred, truth, template, torch.Generator().manual_seed(5))
    return SpectrumData.from_arrays(freqs, y, units="uV^2/Hz", n_segments=n_segments)


def _generic(problem, z):
    """Value and autograd gradient through the generic torch path (what the fused path replaces)."""
    z = z.clone().requires_grad_(True)
    value = problem.log_joint_unconstrained(z)
    ok = torch.isfinite(value)
    (g,) = torch.autograd.grad(torch.where(ok, value, 0.0).sum(), z)
    return value.detach(), g


def _points(problem, n=24, seed=1):
    z0 = problem.prior.gaussian_unconstrained()[0]
    zs = problem.prior.to_unconstrained(problem.prior.sample(n, seed=seed))
    return torch.cat([z0[None], zs])


CONFIGS = [
    {},
    {"window": None},
    {"window": "boxcar"},
    {"likelihood": "whittle"},
    {"aperiodic": False, "floor": False},
    {"noise": "jr1995_gaussian"},
]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_fused_matches_autograd(kw):
    obs = SpectrumObservation(**kw)
    data = _data(obs)
    problem = InverseProblem(obs, None, data)
    assert problem.has_fast_path
    z = _points(problem)
    v, g = problem.log_joint_and_grad(z)
    v2, g2 = _generic(problem, z)
    fin = torch.isfinite(v2)
    # the default prior reaches past the Hopf point: both paths agree on which draws are invalid
    assert torch.equal(torch.isfinite(v), fin) and int(fin.sum()) >= 5
    assert torch.isneginf(v[~fin]).all() and (g[~fin] == 0).all()
    np.testing.assert_allclose(v[fin], v2[fin], rtol=1e-10)
    scale = g2[fin].abs().amax(-1, keepdim=True)
    assert float(((g[fin] - g2[fin]).abs() / scale).max()) < 1e-8
    # the likelihood alone (what the PyMC Op calls)
    ll, gll = problem.log_likelihood_and_grad(z[fin])
    np.testing.assert_allclose(ll, problem.log_likelihood(problem.prior.from_unconstrained(z[fin])), rtol=1e-10)


def test_more_free_parameters_and_a_uniform_prior():
    obs = SpectrumObservation()
    data = _data(obs)
    spec = obs.default_prior(data, free=("A", "B", "a", "b", "C", "e0", "v0", "r", "p_mean"))
    spec["distributions"]["p_mean"] = {"dist": "uniform", "low": 40.0, "high": 88.0}
    spec["fixed"].pop("p_std")
    spec["distributions"]["p_std"] = {"dist": "lognormal", "median": 1.0, "sd_log": 0.5}
    problem = InverseProblem(obs, Prior.from_dict(spec), data)
    assert problem.has_fast_path
    z = _points(problem, n=16, seed=4)
    v, g = problem.log_joint_and_grad(z)
    v2, g2 = _generic(problem, z)
    fin = torch.isfinite(v2)
    assert torch.equal(torch.isfinite(v), fin) and int(fin.sum()) >= 4
    np.testing.assert_allclose(v[fin], v2[fin], rtol=1e-10)
    assert float(((g[fin] - g2[fin]).abs() / g2[fin].abs().amax(-1, keepdim=True)).max()) < 1e-8


def test_gradient_against_finite_differences_and_batches():
    obs = SpectrumObservation()
    problem = InverseProblem(obs, None, _data(obs))
    z0 = problem.prior.gaussian_unconstrained()[0]
    v, g = problem.log_joint_and_grad(z0)
    assert v.shape == () and g.shape == z0.shape
    h = 1e-5
    eye = torch.eye(z0.numel(), dtype=F64) * h
    vp, _ = problem.log_joint_and_grad(z0 + eye)
    vm, _ = problem.log_joint_and_grad(z0 - eye)
    fd = (vp - vm) / (2 * h)
    assert float((fd - g).abs().max() / g.abs().max()) < 1e-6
    # a batch gives what each row gives alone, whatever the warm start left by the previous call
    z = _points(problem, n=6, seed=2)
    vb, gb = problem.log_joint_and_grad(z.reshape(7, 1, -1))
    assert vb.shape == (7, 1) and gb.shape == (7, 1, z.shape[-1])
    for i in (6, 0, 3):
        vi, gi = problem.log_joint_and_grad(z[i])
        if math.isfinite(float(vi)):
            np.testing.assert_allclose(vb[i, 0], vi, rtol=1e-12)
            np.testing.assert_allclose(gb[i, 0], gi, rtol=1e-9, atol=1e-9 * float(gi.abs().max()))
        else:
            assert math.isinf(float(vb[i, 0]))


def test_invalid_sets_are_minus_inf_never_nan():
    obs = SpectrumObservation()
    problem = InverseProblem(obs, None, _data(obs))
    z0 = problem.prior.gaussian_unconstrained()[0].clone()
    bad = z0.clone()
    bad[problem.names.index("p_mean")] = math.log(150.0)  # past the first Hopf point
    huge = z0.clone()
    huge[problem.names.index("a")] = 800.0  # exp overflows to inf
    ll, g = problem.log_likelihood_and_grad(torch.stack([z0, bad, huge]))
    assert math.isfinite(float(ll[0])) and torch.isneginf(ll[1:]).all()
    assert torch.isfinite(g).all() and (g[1:] == 0).all()
    with pytest.raises(ValueError, match="z must be finite"):
        problem.log_joint_and_grad(torch.full_like(z0, math.nan))
    with pytest.raises(ValueError, match="last axis"):
        problem.log_joint_and_grad(z0[:3])


def test_generic_path_where_no_fused_one():
    obs = SpectrumObservation(noise_on="all")
    problem = InverseProblem(obs, None, _data(SpectrumObservation()))
    assert not problem.has_fast_path
    z0 = problem.prior.gaussian_unconstrained()[0]
    v, g = problem.log_joint_and_grad(z0)
    v2, g2 = _generic(problem, z0)
    assert float(v) == pytest.approx(float(v2), rel=1e-12) and torch.allclose(g, g2)


def test_pickled_problem_rebuilds_its_fused_path():
    import pickle

    obs = SpectrumObservation()
    problem = InverseProblem(obs, None, _data(obs))
    z0 = problem.prior.gaussian_unconstrained()[0]
    v, g = problem.log_joint_and_grad(z0)  # builds the fused path (NumPy closures) on first use
    again = pickle.loads(pickle.dumps(problem))  # e.g. PyMC's worker processes (cores > 1)
    assert again.has_fast_path
    v2, g2 = again.log_joint_and_grad(z0)
    assert float(v2) == float(v) and torch.equal(g2, g)


# ---------------------------------------------------------------- warm-started equilibrium (one set)
def _jr_params(p_mean, C=135.0):
    from jrinfer import model as M

    p = {k: float(M.PARAMETERS[k].default) for k in ("A", "B", "a", "b", "e0", "v0", "r")}
    p["p_mean"] = float(p_mean)
    for k, ratio in M._CONNECTIVITY_RATIOS.items():
        p[k] = ratio * C
    return p


def _all_roots(p):
    from jrinfer import model as M

    fp = M._fixed_points({k: torch.tensor([v], dtype=F64) for k, v in p.items()}, torch.Size((1,)), 256)
    return fp.state[0, : int(fp.count[0]), 0].numpy()  # y0 of every equilibrium, ascending v


def test_warm_start_is_certified_only_on_the_upper_branch():
    from jrinfer import model as M

    p = _jr_params(0.0)  # three equilibria for the JR constants (p_mean in about [-41, 113])
    roots = np.sort(_all_roots(p))
    assert roots.size == 3
    upper = M._warm_upper_root(p, roots[2] * (1 + 1e-3))
    assert upper == pytest.approx(roots[2], rel=1e-12)
    # Newton from the lower or middle root stays there: a root lies above, the bounds must refuse it
    assert M._warm_upper_root(p, roots[0] * (1 + 1e-6)) is None
    assert M._warm_upper_root(p, roots[1] * (1 + 1e-6)) is None
    # outside (0, y_max) or not converging: refused
    assert M._warm_upper_root(p, -1.0) is None
    assert M._warm_upper_root(p, 1e9) is None


@pytest.mark.parametrize("direction", [1, -1])
def test_warm_start_follows_the_grid_search_across_folds(direction):
    """Carry the warm start along a p_mean sweep through both folds: every step equals the grid search."""
    from jrinfer import model as M

    sweep = np.linspace(-70.0, 140.0, 85)[::direction]
    guess, refused = None, 0
    for pm in sweep:
        p = {k: np.array([v]) for k, v in _jr_params(pm).items()}
        y0, ev, stable = M._selected_equilibrium_numpy(p, (1,), 256, "upper", guess, raw=True)
        y0g, evg, stableg = M._selected_equilibrium_numpy(p, (1,), 256, "upper", None, raw=True)
        np.testing.assert_allclose(y0, y0g, rtol=1e-11)
        np.testing.assert_allclose(np.sort_complex(ev[0]), np.sort_complex(evg[0]), rtol=1e-9, atol=1e-9)
        assert stable[0] == stableg[0]
        if guess is not None:
            refused += M._warm_upper_root({k: float(v[0]) for k, v in p.items()}, float(guess[0])) is None
        guess = y0
    if direction == 1:
        # going up, a new upper pair appears above the lower root at p_mean ~ -41: the warm start must be refused
        assert refused >= 1


def test_fused_single_point_walk_with_warm_start_and_fallback(monkeypatch):
    """Single-point calls along a random walk (warm start), then a corrupted warm start: all equal autograd."""
    from jrinfer import model as M

    obs = SpectrumObservation()
    problem = InverseProblem(obs, None, _data(obs))
    z = problem.prior.gaussian_unconstrained()[0].clone()
    steps = 0.005 * torch.randn(12, z.numel(), generator=torch.Generator().manual_seed(3), dtype=F64)
    calls = {"warm": 0, "certified": 0}
    real = M._warm_upper_root

    def spy(p, guess):
        calls["warm"] += 1
        out = real(p, guess)
        calls["certified"] += out is not None
        return out

    monkeypatch.setattr(M, "_warm_upper_root", spy)
    fused, finite = problem._fast()[0], 0
    for i in range(13):
        if i == 8:  # a warm start on no branch at all: Newton lands elsewhere or fails, the grid decides
            fused.guess = np.array([1e-3])
        v, g = problem.log_joint_and_grad(z)
        v2, g2 = _generic(problem, z)
        if not math.isfinite(float(v2)):  # a step into the unstable region: the same verdict
            assert torch.isneginf(v) and (g == 0).all()
        else:
            finite += 1
            np.testing.assert_allclose(v, v2, rtol=1e-10)
            assert float((g - g2).abs().max() / g2.abs().max()) < 1e-8
        z = z + steps[i % 12]
    assert finite >= 10 and calls["warm"] >= 10 and calls["certified"] >= 8


# ---------------------------------------------------------------- variational Laplace's value + Jacobian
@pytest.mark.parametrize("kw", [c for c in CONFIGS if c.get("likelihood") != "whittle"],
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_fused_jacobian_matches_autograd(kw):
    obs = SpectrumObservation(**kw)
    problem = InverseProblem(obs, None, _data(obs))
    form = problem.gaussian_form()
    assert form.value_and_jacobian is not None
    zs = problem.prior.to_unconstrained(problem.prior.sample(6, seed=7))
    idx = [problem.names.index(n) for n in form.names]
    checked = 0
    for z in torch.cat([form.prior_mean[None], zs[:, idx]]):
        v, J = form.value_and_jacobian(z)
        v2 = form.f(z)
        if not bool(torch.isfinite(v2).all()):  # past the Hopf point: NaN on both paths
            assert torch.isnan(v).all() and torch.isnan(J).all()
            continue
        J2 = torch.autograd.functional.jacobian(form.f, z)
        np.testing.assert_allclose(v, v2, rtol=1e-12, atol=1e-12)
        # per column, relative to the column's largest entry
        err = ((J - J2).abs().amax(0) / J2.abs().amax(0)).max()
        assert float(err) < 1e-8
        checked += 1
    assert checked >= 3


def test_variational_laplace_with_the_fused_jacobian_reaches_the_same_fit():
    from jrinfer.backends.laplace import VariationalLaplace

    obs = SpectrumObservation()
    problem = InverseProblem(obs, None, _data(obs))
    form = problem.gaussian_form()
    args = (form.f, form.y, form.prior_mean, form.prior_cov, form.hyper_mean, form.hyper_cov, form.precision_components)
    fused = VariationalLaplace().fit_function(*args, value_and_jacobian=form.value_and_jacobian)
    ref = VariationalLaplace(jacobian="reverse").fit_function(*args)
    assert fused.status == ref.status == "converged"
    assert "supplied" in fused.message and "supplied" not in ref.message
    assert fused.free_energy == pytest.approx(ref.free_energy, abs=1e-6)
    np.testing.assert_allclose(fused.mean, ref.mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fused.cov, ref.cov, rtol=1e-5, atol=1e-10)
    # the backend takes the fused path by itself (one start: the run from the prior mean, as ref)
    post = VariationalLaplace(n_starts=1).fit(problem, n_draws=10, n_predictive=0)
    assert "supplied" in post.message and post.log_evidence == pytest.approx(ref.free_energy, abs=1e-6)


@pytest.mark.parametrize("window", ["hann", "boxcar"])
def test_lag_integral_and_its_derivative_including_the_series_branch(window):
    from jrinfer import _fastspec, spectral

    seg = 4.0
    tp = 2j * math.pi / seg
    z = np.array([-3.0 + 20j, -0.5 - 7j, 1e-3 + 2e-3j, -0.01 + 0j, tp + 0.004, -tp - 0.003j, 0.02 - tp, -40.0 + 60j])
    i, di = _fastspec._lag_integral(z, seg, window)
    ref = spectral._lag_integral(torch.from_numpy(z), seg, window).numpy()
    np.testing.assert_allclose(i, ref, rtol=1e-12)
    h = 1e-6
    fd = (_fastspec._lag_integral(z + h, seg, window)[0] - _fastspec._lag_integral(z - h, seg, window)[0]) / (2 * h)
    np.testing.assert_allclose(di, fd, rtol=1e-6, atol=1e-9 * np.abs(fd).max())
    # e^(zL) - 1 by one exponential (as the fused path passes it): the same where the series is not used
    i2, di2 = _fastspec._lag_integral(z, seg, window, np.exp(z * seg) - 1.0)
    np.testing.assert_allclose(i2, i, rtol=1e-11)
    np.testing.assert_allclose(di2, di, rtol=1e-10)


@pytest.mark.parametrize("kw", [{}, {"likelihood": "whittle", "window": "boxcar"}], ids=["default", "whittle,boxcar"])
def test_a_batch_of_64_equals_its_sets_one_at_a_time(kw):
    """The batched fused call (arrays over the batch) against 64 single-set calls (NumPy scalars, warm starts)."""
    obs = SpectrumObservation(**kw)
    problem = InverseProblem(obs, None, _data(obs))
    z = _points(problem, n=63, seed=11)
    vb, gb = problem.log_joint_and_grad(z)
    singles = [problem.log_joint_and_grad(zi) for zi in z]
    vs = torch.stack([v for v, _ in singles])
    gs = torch.stack([g for _, g in singles])
    fin = torch.isfinite(vs)
    assert torch.equal(torch.isfinite(vb), fin) and 10 <= int(fin.sum()) < 64  # some draws past the Hopf point
    np.testing.assert_allclose(vb[fin], vs[fin], rtol=1e-12)
    scale = gs[fin].abs().amax(-1, keepdim=True)
    assert float(((gb[fin] - gs[fin]).abs() / scale).max()) < 1e-10
    assert (gb[~fin] == 0).all() and (gs[~fin] == 0).all()


def test_fused_jacobian_with_every_jr_constant_free_and_a_uniform_prior():
    obs = SpectrumObservation()
    data = _data(obs)
    spec = obs.default_prior(data, free=("A", "B", "a", "b", "C", "e0", "v0", "r", "p_mean"))
    spec["distributions"]["p_mean"] = {"dist": "uniform", "low": 40.0, "high": 88.0}
    spec["fixed"].pop("p_std")
    spec["distributions"]["p_std"] = {"dist": "lognormal", "median": 1.0, "sd_log": 0.5}
    form = InverseProblem(obs, Prior.from_dict(spec), data).gaussian_form()
    assert {"e0", "v0", "r", "p_std"} <= set(form.names)
    v, J = form.value_and_jacobian(form.prior_mean)
    J2 = torch.autograd.functional.jacobian(form.f, form.prior_mean)
    np.testing.assert_allclose(v, form.f(form.prior_mean), rtol=1e-12)
    assert float(((J - J2).abs().amax(0) / J2.abs().amax(0)).max()) < 1e-8


def test_warm_start_never_disagrees_with_the_grid_on_random_sets():
    """Random JR sets (one or three equilibria), warm starts at every root, halfway and beyond the upper one."""
    from jrinfer import model as M

    rng = np.random.default_rng(0)
    certified = 0
    for _ in range(150):
        p = _jr_params(rng.uniform(-80.0, 400.0), C=135.0 * math.exp(0.4 * rng.standard_normal()))
        for k in ("A", "B", "a", "b"):
            p[k] *= math.exp(0.3 * rng.standard_normal())
        p["v0"] += rng.standard_normal()
        grid = M._selected_equilibrium_numpy({k: np.array([v]) for k, v in p.items()}, (1,), 256, "upper", None,
                                             raw=True)
        if grid is None:  # a fold candidate: the torch search's business
            continue
        upper = grid[0][0]
        for guess in [*(_all_roots(p) * (1 + 1e-4)), 0.5 * upper, 1.5 * upper]:
            x = M._warm_upper_root(p, float(guess))
            if x is not None:
                certified += 1
                assert x == pytest.approx(upper, rel=1e-9)
    assert certified >= 100
