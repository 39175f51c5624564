"""Equilibria, bifurcations, Jacobian, transfer function and gradients of the JR model."""

import math

import pytest
import torch
from scipy.optimize import brentq

from jrinfer import JansenRit, PARAMETERS

F64 = torch.float64


def upper_growth_rate(p_mean: float) -> float:
    return float(JansenRit(p_mean=p_mean).fixed_points().upper().eigenvalues.real.amax())


def n_equilibria(p_mean: float) -> int:
    return int(JansenRit(p_mean=p_mean).fixed_points().count)


# ---------------------------------------------------------------- bifurcations
def test_hopf_bifurcations_match_grimbert_faugeras():
    # Grimbert & Faugeras (2006): Hopf points of the upper branch at p = 89.83 and 315.70.
    h1 = brentq(upper_growth_rate, 60.0, 100.0, xtol=1e-8)
    h2 = brentq(upper_growth_rate, 250.0, 340.0, xtol=1e-8)
    assert h1 == pytest.approx(89.83, abs=0.01)
    assert h2 == pytest.approx(315.70, abs=0.01)
    freq = float(JansenRit(p_mean=h1).fixed_points().upper().dominant_frequency_hz)
    assert freq == pytest.approx(10.38, abs=0.01)
    # stability really changes sign there
    assert bool(JansenRit(p_mean=h1 - 0.5).linearisation_valid())
    assert not bool(JansenRit(p_mean=h1 + 0.5).linearisation_valid())
    assert not bool(JansenRit(p_mean=h2 - 0.5).linearisation_valid())
    assert bool(JansenRit(p_mean=h2 + 0.5).linearisation_valid())


def test_fold_three_to_one_equilibria():
    lo, hi = 100.0, 130.0
    assert n_equilibria(lo) == 3 and n_equilibria(hi) == 1
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if n_equilibria(mid) == 3:
            lo = mid
        else:
            hi = mid
    assert lo == pytest.approx(113.59, abs=0.01)


def test_close_roots_near_fold_are_found():
    # 1e-4 below the fold the two merging equilibria are closer than the
    # bracketing grid spacing; the extremum check must still find both.
    fold = 113.586273
    fp = JansenRit(p_mean=fold - 1e-4).fixed_points(grid_size=64)
    assert int(fp.count) == 3
    assert float(fp.v[1] - fp.v[0]) > 0


def test_equilibria_are_roots_and_batched():
    p = torch.tensor([[0.0, 60.0, 100.0], [120.0, 220.0, 400.0]], dtype=F64)
    model = JansenRit(p_mean=p, C=torch.tensor([[135.0], [120.0]], dtype=F64))
    fp = model.fixed_points()
    assert fp.state.shape[:2] == (2, 3) and fp.state.shape[-1] == 6
    assert fp.count.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            single = JansenRit(p_mean=float(p[i, j]), C=135.0 if i == 0 else 120.0)
            for k in range(int(fp.count[i, j])):
                y = fp.state[i, j, k]
                dy = single.drift(y)
                assert dy.abs().max() < 1e-9 * 1e4, dy  # derivatives up to ~1e4 mV/s^2 scale
            assert int(single.fixed_points().count) == int(fp.count[i, j])
    # padding is NaN and marked invalid
    assert torch.isnan(fp.v[~fp.valid]).all()
    assert not fp.stable[~fp.valid].any()
    # v sorted ascending
    vv = torch.where(fp.valid, fp.v, torch.inf)
    assert (vv[..., 1:] >= vv[..., :-1]).all()


def test_regimes_of_default_model():
    # p_mean = 220: the upper equilibrium is unstable (alpha limit cycle)
    assert not bool(JansenRit().linearisation_valid())
    # C = 68: a single, stable equilibrium
    fp = JansenRit(C=68.0).fixed_points()
    assert int(fp.count) == 1 and bool(fp.upper().stable)
    # C = 1350: the upper equilibrium is unstable but the low-activity one is stable
    assert not bool(JansenRit(C=1350.0).linearisation_valid())
    assert bool(JansenRit(C=1350.0).linearisation_valid(equilibrium="lower"))


def test_analytic_jacobian_matches_autograd():
    model = JansenRit(p_mean=80.0, A=3.0, b=40.0)
    y = torch.tensor([0.02, 5.0, 2.0, 0.1, -0.3, 0.2], dtype=F64)
    jac_auto = torch.autograd.functional.jacobian(model.drift, y)
    assert torch.allclose(model.jacobian(y), jac_auto, rtol=1e-12, atol=1e-9)


def test_eigenvalues_are_those_of_the_jacobian():
    fp = JansenRit(p_mean=60.0).fixed_points()
    for k in range(3):
        ev = torch.linalg.eigvals(JansenRit(p_mean=60.0).jacobian(fp.state[k]))
        got = sorted(fp.eigenvalues[k].tolist(), key=lambda z: (round(z.real, 6), round(z.imag, 6)))
        want = sorted(ev.tolist(), key=lambda z: (round(z.real, 6), round(z.imag, 6)))
        assert all(abs(a - b) < 1e-8 * max(1, abs(b)) for a, b in zip(got, want))


# ------------------------------------------------------------ linear response
@pytest.mark.parametrize("noise_on", ["input", "all"])
def test_transfer_function_equals_jacobian_resolvent(noise_on):
    model = JansenRit(p_mean=torch.tensor([30.0, 75.0], dtype=F64), B=torch.tensor([22.0, 25.0], dtype=F64))
    freqs = torch.tensor([0.0, 3.0, 9.7, 10.4, 25.0, 80.0], dtype=F64)
    eq = model.fixed_points().upper()
    h = model.transfer_function(freqs)
    p = model.params
    jac = model.jacobian(eq.state)
    c = torch.tensor([0, 1, -1, 0, 0, 0], dtype=torch.complex128)
    for i in range(2):
        b_cols = torch.zeros(6, 3, dtype=torch.complex128)
        b_cols[3, 0] = p["A"][i] * p["a"][i]
        b_cols[4, 1] = p["A"][i] * p["a"][i]
        b_cols[5, 2] = p["B"][i] * p["b"][i]
        for j, f in enumerate(freqs.tolist()):
            resolvent = torch.linalg.solve(2j * math.pi * f * torch.eye(6, dtype=torch.complex128) - jac[i], b_cols)
            want = c @ resolvent
            assert torch.allclose(h[i, j], want, rtol=1e-10, atol=1e-14)
    psd = model.replace(p_std=3.0).linear_psd(freqs).psd
    channels = [1] if noise_on == "input" else [0, 1, 2]
    model_n = JansenRit(noise_on=noise_on, p_mean=model.params["p_mean"], B=model.params["B"], p_std=3.0)
    want = 2 * 9.0 * (h[..., channels].abs() ** 2).sum(-1)
    assert torch.allclose(model_n.linear_psd(freqs).psd, want, rtol=1e-12)
    if noise_on == "input":
        assert torch.allclose(psd, want, rtol=1e-12)


def test_linear_psd_jr1995_convention_needs_dt_and_scales_with_it():
    freqs = torch.linspace(1, 40, 40, dtype=F64)
    white = JansenRit(p_mean=60.0, p_std=0.05).linear_psd(freqs).psd
    jr = JansenRit(p_mean=60.0, p_std=5.0, noise="jr1995_gaussian")
    with pytest.raises(ValueError, match="dt is required"):
        jr.linear_psd(freqs)
    # p_std = 5 pulses/s per step at dt = 1e-4 s is white noise of intensity 5 * sqrt(1e-4) = 0.05
    assert torch.allclose(jr.linear_psd(freqs, dt=1e-4).psd, white, rtol=1e-12)


def test_linear_psd_peak_sharpens_towards_hopf():
    freqs = torch.linspace(5, 15, 2001, dtype=F64)
    ps = torch.tensor([40.0, 70.0, 85.0, 89.0], dtype=F64)
    lin = JansenRit(p_mean=ps, p_std=1.0).linear_psd(freqs)
    assert lin.stable.all()
    peak = lin.psd.amax(-1)
    assert (peak[1:] > peak[:-1]).all()
    peak_f = freqs[lin.psd.argmax(-1)]
    assert ((peak_f > 8) & (peak_f < 13)).all()


# ------------------------------------------------------------------ gradients
_GRAD_NAMES = ["A", "B", "a", "b", "C", "e0", "v0", "r", "p_mean", "p_std"]


def _linear_psd_of(*theta):
    kwargs = dict(zip(_GRAD_NAMES, theta))
    freqs = torch.tensor([4.0, 9.5, 10.0, 21.0], dtype=F64)
    return JansenRit(**kwargs).linear_psd(freqs).psd.log()


def test_linear_psd_gradient_matches_finite_differences():
    base = {n: PARAMETERS[n].default for n in _GRAD_NAMES}
    base.update(p_mean=60.0, p_std=2.0)
    theta = tuple(torch.tensor(base[n], dtype=F64, requires_grad=True) for n in _GRAD_NAMES)
    assert torch.autograd.gradcheck(_linear_psd_of, theta, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_fixed_point_gradient_by_implicit_function_theorem():
    def upper_v(p_mean, b):
        return JansenRit(p_mean=p_mean, b=b).fixed_points().upper().v

    args = (torch.tensor(70.0, dtype=F64, requires_grad=True), torch.tensor(45.0, dtype=F64, requires_grad=True))
    assert torch.autograd.gradcheck(upper_v, args, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_simulation_gradient_matches_finite_differences():
    def run(A, p_mean, C, q):
        model = JansenRit(A=A, p_mean=p_mean, C=C, p_std=20.0)
        pulse = __import__("jrinfer").PulseInput(q=q, w=0.005, n=3.0, onset=0.001)
        sim = model.simulate(0.02, 1e-4, method="euler", seed=3, backend="torch", record_every=5, pulse=pulse)
        return sim.v

    args = tuple(torch.tensor(x, dtype=F64, requires_grad=True) for x in (3.25, 120.0, 135.0, 2.0))
    assert torch.autograd.gradcheck(run, args, eps=1e-6, atol=1e-7, rtol=1e-4)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(a=float("nan")), "a must be finite"),
        (dict(p_mean=float("inf")), "p_mean must be finite"),
        (dict(a=0.0), "a must be > 0"),
        (dict(b=-50.0), "b must be > 0"),
        (dict(A=torch.tensor([3.0, -1.0])), "A must be > 0"),
        (dict(p_std=-1.0), "p_std must be >= 0"),
        (dict(pmean=60.0), "did you mean 'p_mean'"),
        (dict(A=torch.ones(2), p_mean=torch.ones(3)), "do not broadcast"),
    ],
)
def test_bad_parameters_raise_named_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JansenRit(**kwargs)


def test_bad_options_raise_named_errors():
    with pytest.raises(ValueError, match="noise must be one of"):
        JansenRit(noise="pink")
    with pytest.raises(ValueError, match="freqs must be finite"):
        JansenRit(p_mean=60.0).linear_psd(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="freqs must be >= 0"):
        JansenRit(p_mean=60.0).linear_psd(torch.tensor([-1.0, 2.0]))
    with pytest.raises(ValueError, match="state must have a last axis of length 6"):
        JansenRit().drift(torch.zeros(5))


def test_selected_equilibrium_path_matches_full_computation():
    # linear_psd uses a path that computes only the chosen equilibrium's eigenvalues
    model = JansenRit(
        p_mean=torch.tensor([[0.0, 60.0, 100.0], [120.0, 220.0, 400.0]], dtype=F64),
        C=torch.tensor([[135.0], [1350.0]], dtype=F64),
    )
    full = model.fixed_points()
    for which in ("upper", "lower"):
        for fast, ref in zip(model._equilibrium(which), full.select(which)):
            assert torch.allclose(fast, ref, equal_nan=True)


# ---------------------------------------------------------------- fast linearised spectrum (issue 13)
_NAMES = ("A", "B", "a", "b", "C1", "C2", "C3", "C4", "e0", "v0", "r", "p_mean", "p_std")
_BASE = dict(A=3.25, B=22.0, a=100.0, b=50.0, C1=135.0, C2=108.0, C3=33.75, C4=33.75, e0=2.5, v0=6.0, r=0.56,
             p_mean=70.0, p_std=22.0)


def _autograd_reference_psd(th, noise_on, freqs):
    """PSD through the generic autograd path (transfer_function at a differentiable equilibrium)."""
    m = JansenRit(noise_on=noise_on, **{k: th[..., i] for i, k in enumerate(_NAMES)})
    h2 = m.transfer_function(freqs, equilibrium=m.fixed_points().upper()).abs() ** 2
    gain = h2[..., 1] if noise_on == "input" else h2.sum(-1)
    return 2.0 * th[..., -1:] ** 2 * gain


@pytest.mark.parametrize("noise_on", ["input", "all"])
def test_closed_form_psd_derivatives_match_autograd_reverse_and_forward(noise_on):
    from torch.func import jacfwd, jacrev

    freqs = torch.linspace(1.0, 40.0, 60, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    base = torch.tensor([_BASE[k] for k in _NAMES], dtype=torch.float64)
    for p_mean in (40.0, 70.0, 85.0, 150.0):  # stable, near Hopf, unstable (still differentiable)
        th = base * (1 + 0.03 * torch.randn(len(_NAMES), generator=g, dtype=torch.float64))
        th[11] = p_mean

        def fast(t):
            return JansenRit(noise_on=noise_on, **{k: t[i] for i, k in enumerate(_NAMES)}).linear_psd(freqs).psd.log()

        def ref(t):
            return _autograd_reference_psd(t, noise_on, freqs).log()

        assert torch.allclose(fast(th), ref(th), rtol=1e-12, atol=0)
        J0 = jacrev(ref)(th)
        scale = J0.abs().amax(0)  # per parameter
        assert float(((jacrev(fast)(th) - J0).abs().amax(0) / scale).max()) < 1e-8
        assert float(((jacfwd(fast)(th) - J0).abs().amax(0) / scale).max()) < 1e-8


def test_closed_form_psd_gradient_matches_finite_differences_batched():
    freqs = torch.linspace(2.0, 30.0, 8, dtype=torch.float64)
    th = torch.tensor([[_BASE[k] for k in _NAMES]] * 2, dtype=torch.float64)
    th[1, 11] = 50.0

    def f(t):
        return JansenRit(noise_on="all", **{k: t[:, i] for i, k in enumerate(_NAMES)}).linear_psd(freqs).psd.log()

    assert torch.autograd.gradcheck(f, (th.requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_warm_start_gives_the_same_equilibria_and_spectrum():
    freqs = torch.linspace(1.0, 40.0, 20, dtype=torch.float64)
    p = torch.tensor([60.0, 80.0, 120.0, 250.0, 400.0], dtype=torch.float64)
    cold = JansenRit(p_mean=p).fixed_points()
    near = JansenRit(p_mean=p + 0.5).fixed_points().upper()
    far = JansenRit(p_mean=torch.full_like(p, -50.0)).fixed_points().lower()  # guess near another root
    for guess in (near, far, near.state):
        warm = JansenRit(p_mean=p).fixed_points(initial_guess=guess)
        assert torch.equal(warm.count, cold.count) and torch.equal(warm.stable, cold.stable)
        assert torch.allclose(warm.state, cold.state, rtol=1e-13, atol=1e-12, equal_nan=True)
    from jrinfer import EquilibriumCache

    cache = EquilibriumCache()
    a = JansenRit(p_mean=p).linear_psd(freqs)
    b1 = JansenRit(p_mean=p).linear_psd(freqs, warm_start=cache)
    b2 = JansenRit(p_mean=p + 0.1).linear_psd(freqs, warm_start=cache)
    assert cache.state.shape == (5, 6)
    assert torch.allclose(b1.psd, a.psd, rtol=1e-12)
    assert torch.allclose(b2.psd, JansenRit(p_mean=p + 0.1).linear_psd(freqs).psd, rtol=1e-12)
    with pytest.raises(ValueError, match="initial_guess"):
        JansenRit(p_mean=p).fixed_points(initial_guess=torch.zeros(3, 6))
    with pytest.raises(TypeError, match="EquilibriumCache"):
        JansenRit(p_mean=p).linear_psd(freqs, warm_start={})


def test_closed_form_psd_both_backward_strategies_agree(monkeypatch):
    """Under jacrev the backward forms a forward-mode Jacobian (up to _JACOBIAN_ELEMENTS), else the reverse chain."""
    from torch.func import jacrev

    import jrinfer.model as model_mod

    freqs = torch.linspace(1.0, 40.0, 30, dtype=torch.float64)
    th = torch.tensor([[_BASE[k] for k in _NAMES]] * 3, dtype=torch.float64)
    th[:, 11] = torch.tensor([50.0, 70.0, 85.0], dtype=torch.float64)
    for noise_on in ("input", "all"):

        def f(t):
            m = JansenRit(noise_on=noise_on, **{k: t[:, i] for i, k in enumerate(_NAMES)})
            return m.linear_psd(freqs).psd.log()

        jacs = []
        for limit in (10**9, 0):
            monkeypatch.setattr(model_mod, "_JACOBIAN_ELEMENTS", limit)
            jacs.append(jacrev(f)(th))
        t = th.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((f(t) * freqs).sum(), t)  # plain autograd: reverse chain
        assert torch.allclose(jacs[0], jacs[1], rtol=1e-10, atol=1e-12 * float(jacs[1].abs().max()))
        assert torch.allclose(torch.einsum("nfbk,f->bk", jacs[0], freqs), g, rtol=1e-10)


def test_numpy_equilibrium_search_matches_the_torch_search():
    import jrinfer.model as model_mod

    g = torch.Generator().manual_seed(0)
    n = 300
    base = dict(A=3.25, B=22.0, a=100.0, b=50.0, C=135.0, e0=2.5, v0=6.0, r=0.56)
    kw = {k: v * (1 + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)) for k, v in base.items()}
    kw["p_mean"] = torch.rand(n, generator=g, dtype=torch.float64) * 400 - 50
    params = JansenRit(**kw).params
    for which in ("upper", "lower"):
        for i in range(0, n, 7):  # single sets (the NumPy path's use) and one batch of all
            one = {k: v[i : i + 1] for k, v in params.items()}
            ref = model_mod._fixed_points(one, torch.Size([1]), 256, which=which)
            got = model_mod._selected_equilibrium_numpy(one, torch.Size([1]), 256, which, None)
            assert got is not None
            assert torch.equal(got.stable, ref.stable) and torch.equal(got.count, ref.count)
            assert torch.allclose(got.state, ref.state, rtol=1e-12, atol=1e-12)
            assert torch.allclose(got.eigenvalues, ref.eigenvalues, rtol=1e-10, atol=1e-9)
        got = model_mod._selected_equilibrium_numpy(params, torch.Size([n]), 256, which, None)
        if got is not None:
            ref = model_mod._fixed_points(params, torch.Size([n]), 256, which=which)
            assert torch.equal(got.stable, ref.stable)
            assert torch.allclose(got.state, ref.state, rtol=1e-12, atol=1e-12)
