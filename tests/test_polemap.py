"""Pole coordinates (jrinfer._polemap): the dominant pole's (log sigma, omega) in place of (C, b).

Every check here can fail: the solve is compared with the point it came from,
the gradient with central differences of the density, the density with the log
joint plus a finite-difference Jacobian of the solve.
"""

import math

import numpy as np
import pytest
import torch

from jrinfer._polemap import PoleMap, dominant_pole

F64 = torch.float64

# (a, b, C, p_mean) along the near-boundary posterior's ridge (draws of its Laplace Gaussian with a stable
# upper equilibrium: damping 0.05-0.3 1/s, peak 9.9-10.1 Hz)
RIDGE = [(97.27, 49.82, 132.44, 64.63), (101.64, 50.47, 138.39, 54.75), (94.2, 49.9, 129.4, 58.3)]


def _problem():
    from test_pymc import _near_boundary_jr_problem

    return _near_boundary_jr_problem()


def _z_at(problem, abcp):
    z = problem.prior.to_unconstrained(problem.prior.median()).numpy()
    z[[problem.names.index(n) for n in ("a", "b", "C", "p_mean")]] = np.log(abcp)
    return z


def test_dominant_pole_matches_the_eigenvalues_and_its_gradient_is_the_implicit_derivative():
    from jrinfer import JansenRit

    a = torch.tensor([100.0, 105.0], dtype=F64, requires_grad=True)
    params = {"a": a, "p_mean": torch.tensor([70.0, 60.0], dtype=F64)}
    ls, om, ok = dominant_pole(params)
    assert bool(ok.all())
    ev = JansenRit(a=a.detach(), p_mean=params["p_mean"]).fixed_points().upper().eigenvalues
    lead = ev[torch.arange(2), ev.real.argmax(-1)]
    torch.testing.assert_close(ls.detach(), torch.log(-lead.real), rtol=0, atol=1e-9)
    torch.testing.assert_close(om.detach(), lead.imag.abs(), rtol=0, atol=1e-9)
    (g,) = torch.autograd.grad(ls.sum(), a)
    h = 1e-5
    up = dominant_pole({"a": a.detach() + h, "p_mean": params["p_mean"]})[0]
    down = dominant_pole({"a": a.detach() - h, "p_mean": params["p_mean"]})[0]
    torch.testing.assert_close(g, (up - down) / (2 * h), rtol=1e-6, atol=0)
    # past the first Hopf point (p_mean 120 at the JR 1995 constants): no stable pole
    ls, om, ok = dominant_pole({"p_mean": torch.tensor(120.0, dtype=F64)})
    assert not bool(ok) and math.isnan(float(ls)) and math.isnan(float(om))


def test_pole_solve_round_trips_from_a_cold_start():
    problem = _problem()
    pm = PoleMap(problem)
    assert pm.replace == ("C", "b") and pm.index == (2, 1)
    i, j = pm.index
    for abcp in RIDGE:
        z = _z_at(problem, abcp)
        u = pm.to_u(z[None])[0]
        assert np.isfinite(u).all() and -5.0 < u[i] < 0.0 and abs(u[j] / (2 * math.pi) - 10.0) < 0.2, u[[i, j]]
        pm._last = None  # cold: from the grid around the reference (the prior median), not from z
        zs = pm.solve(u)
        assert zs is not None
        np.testing.assert_allclose(zs, z, rtol=0, atol=1e-8)
        # the pole of the solved parameters is the target
        with torch.no_grad():
            ls, om, ok = pm.forward(torch.from_numpy(zs[None]))
        assert abs(float(ls[0]) - u[i]) < 1e-8 and abs(float(om[0]) - u[j]) < 1e-8
    assert pm.n_failed == 0


def test_pole_density_is_log_joint_plus_log_jacobian_and_its_gradient_matches_finite_differences():
    problem = _problem()
    pm = PoleMap(problem)
    i, j = pm.index
    for abcp in RIDGE[:2]:
        u0 = pm.to_u(_z_at(problem, abcp)[None])[0]
        u0[problem.names.index("gain")] += 0.01  # off the prior median in the other coordinates too
        value, grad, z = pm.log_density_and_grad(u0)
        # dz_r/du_r by central differences of the solve
        jac = np.zeros((2, 2))
        for c, k in enumerate((i, j)):
            e = np.zeros_like(u0)
            e[k] = 1e-6
            jac[:, c] = (pm.solve(u0 + e)[[i, j]] - pm.solve(u0 - e)[[i, j]]) / 2e-6
        ref = float(problem.log_joint_unconstrained(torch.from_numpy(z))) + math.log(abs(np.linalg.det(jac)))
        assert abs(value - ref) < 1e-6 * max(1.0, abs(ref)), (value, ref)
        h = 1e-4  # (the density is solved to ~1e-12: smaller steps see its round-off)
        for k in range(problem.n_params):
            e = np.zeros_like(u0)
            e[k] = h
            fd = (pm.log_density_and_grad(u0 + e)[0] - pm.log_density_and_grad(u0 - e)[0]) / (2 * h)
            assert abs(grad[k] - fd) < 1e-5 * max(1.0, abs(fd)), (problem.names[k], grad[k], fd)


def test_pole_without_preimage_gives_minus_inf_never_nan():
    problem = _problem()
    pm = PoleMap(problem)
    u0 = pm.to_u(_z_at(problem, RIDGE[0])[None])[0]
    i, j = pm.index
    # omega <= 0 (the pole is taken with Im > 0), NaN or infinite coordinates: no preimage
    for ls, om in ((u0[i], -5.0), (u0[i], 0.0), (math.nan, u0[j]), (math.inf, u0[j]), (u0[i], math.inf)):
        u = u0.copy()
        u[i], u[j] = ls, om
        failed = pm.n_failed
        value, grad, z = pm.log_density_and_grad(u)
        assert value == -math.inf and z is None and np.array_equal(grad, np.zeros(problem.n_params))
        assert pm.n_failed == failed + 1
    # and the map recovers afterwards (the warm start is not spoilt by the failures)
    assert math.isfinite(pm.log_density_and_grad(u0)[0])


def test_pole_map_rejects_bad_names_and_takes_any_transfer_spectrum_with_both_free():
    from test_pymc import _near_gaussian_jr_problem

    problem = _problem()
    with pytest.raises(ValueError, match="replace must name two different free parameters"):
        PoleMap(problem, replace=("a", "a"))
    with pytest.raises(ValueError, match=r"both must be free; tau is not free in this problem .*--boundary hopf"):
        PoleMap(problem, replace=("a", "tau"))
    # p_mean and C fixed, a and b free: any two free Jansen-Rit parameters can be replaced
    other = _near_gaussian_jr_problem()
    with pytest.raises(ValueError, match=r"--boundary pole\) replaces C and b .* C is not free"):
        PoleMap(other)  # the default pair (C, b): C is fixed here
    pm = PoleMap(other, replace=("a", "b"))
    z = other.prior.to_unconstrained(other.prior.median()).numpy()
    u = pm.to_u(z[None])[0]
    np.testing.assert_allclose(pm.solve(u), z, rtol=0, atol=1e-8)


def test_numpy_pole_derivatives_equal_torch_autograd_and_the_cheap_check_agrees_with_the_full_search():
    problem = _problem()
    pm = PoleMap(problem)
    z = np.stack([_z_at(problem, r) for r in RIDGE])
    with torch.no_grad():
        ls, om, ok, y, lam = pm.forward(torch.from_numpy(z), roots=True)
    jac_np = pm._derivatives_np(z, y.numpy(), lam.numpy())
    jac_torch = pm._derivatives(z)[3]
    np.testing.assert_allclose(jac_np, jac_torch, rtol=1e-10, atol=1e-10 * np.abs(jac_torch).max())
    for k in range(len(RIDGE)):
        assert pm._check_np(z[k], float(y[k]), complex(lam[k])) is True
        # the second root of the equilibrium equation below the upper one, or a pole that is not the rightmost:
        assert pm._check_np(z[k], 0.5 * float(y[k]), complex(lam[k])) is False
        assert pm._check_np(z[k], float(y[k]), complex(lam[k]) - 20.0) is False


def test_pymc_model_in_pole_coordinates_is_the_pole_density():
    pytest.importorskip("pymc")
    from jrinfer.backends.pymc import problem_to_pymc

    problem = _problem()
    model = problem_to_pymc(problem, boundary="pole")
    names = [v.name for v in model.value_vars]
    assert names == ["a_z", "pole_omega", "pole_log_sigma", "p_mean_z", "gain_z", "ap_amplitude_z", "ap_exponent_z",
                     "log_precision_z"]
    f = model.logp_dlogp_function(ravel_inputs=True)
    f.set_extra_values({})
    pm = PoleMap(problem)
    u = pm.to_u(_z_at(problem, RIDGE[1])[None])[0]
    value, grad = f(u)
    ref, gref, z = pm.log_density_and_grad(u)
    assert abs(float(value) - ref) < 1e-8 * abs(ref) and np.allclose(grad, gref, rtol=1e-7, atol=1e-9)
    # the Deterministics report z(u) in natural units
    outs = model.replace_rvs_by_values([model["C"], model["b"], model["C_z"]])
    det = model.compile_fn(outs, inputs=model.value_vars, on_unused_input="ignore")
    c, b, cz = det(dict(zip(names, u)))
    assert abs(float(cz) - z[2]) < 1e-10
    assert abs(float(c) - math.exp(z[2])) < 1e-8 and abs(float(b) - math.exp(z[1])) < 1e-8
    u_bad = u.copy()
    u_bad[1] = -1.0  # omega < 0: no preimage
    value, grad = f(u_bad)
    assert float(value) == -math.inf and not np.isnan(grad).any()
