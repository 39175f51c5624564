"""Simulation: deterministic regimes, linearised vs simulated spectra, noise conventions, bad input."""

import warnings

import numpy as np
import pytest
import torch

from jrinfer import JansenRit, PulseInput, welch_psd

from conftest import native_or_skip

F64 = torch.float64


def dominant_frequency(v: np.ndarray, fs: float) -> float:
    v = v - v.mean()
    spec = np.abs(np.fft.rfft(v * np.hanning(len(v)))) ** 2
    f = np.fft.rfftfreq(len(v), 1 / fs)
    return float(f[spec.argmax()])


# ---------------------------------------------------------- deterministic
def test_alpha_limit_cycle_at_p220():
    sim = JansenRit(p_mean=220.0, p_std=0.0).simulate(4.0, 1e-4, transient=6.0, record_every=10)
    assert sim.method == "rk4"
    v = sim.v.numpy()
    assert v.max() - v.min() > 2.0  # a sustained oscillation of ~3 mV, not a fixed point
    f = dominant_frequency(v, sim.sampling_rate)
    assert 8.0 <= f <= 13.0
    # it is a limit cycle: the second half repeats the first half's amplitude
    half = len(v) // 2
    assert abs(np.ptp(v[:half]) - np.ptp(v[half:])) < 1e-3 * np.ptp(v)


@pytest.mark.parametrize("c", [68.0, 1350.0])
def test_deterministic_runs_settle_on_a_stable_equilibrium(c):
    model = JansenRit(C=c, p_std=0.0)
    sim = model.simulate(1.0, 1e-4, transient=9.0, record_every=10)
    v = sim.v.numpy()
    assert np.ptp(v) < 1e-6
    fp = model.fixed_points()
    stable_v = fp.v[fp.stable].numpy()
    assert np.min(np.abs(stable_v - v[-1])) < 1e-6


def test_rk4_converges_at_fourth_order():
    model = JansenRit(p_mean=220.0, p_std=0.0)
    ref = model.simulate(0.2, 2.5e-5, record_every=32, backend="torch").v
    errs = []
    for dt, k in ((4e-4, 2), (2e-4, 4)):
        v = model.simulate(0.2, dt, record_every=k, method="rk4", backend="torch").v
        errs.append(float((v - ref).abs().max()))
    assert errs[0] / errs[1] > 12  # 2^4 = 16 for a fourth-order method


# ------------------------------------------------- linearised vs simulated
def expected_welch(lin_model: JansenRit, fs: float, nperseg: int, fk: np.ndarray) -> np.ndarray:
    """Exact expectation of a Hann-window Welch estimate of the linearised process.

    E[P(f)] = 1 / (fs sum w^2) * int S(nu) |W(f - nu)|^2 dnu: the linear PSD
    smeared by the window's spectral kernel (matters near the sharp alpha peak).
    """
    w = torch.hann_window(nperseg, periodic=True, dtype=F64).numpy()
    dnu = 0.005
    m = int(round(fs / dnu))
    kernel = np.abs(np.fft.fft(w, n=m)) ** 2  # |W(k dnu)|^2, periodic in fs
    nu = np.arange(0, 120.0, dnu)
    s1 = lin_model.linear_psd(torch.from_numpy(nu), dt=1e-4).psd.numpy()
    out = np.empty(len(fk))
    for i, f in enumerate(fk):
        idx = np.round((f - nu) / dnu).astype(int) % m
        out[i] = (s1 * kernel[idx]).sum() * dnu / (fs * (w * w).sum())
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "noise, p_std, noise_on, dt",
    [
        ("white", 0.05, "input", 1e-4),
        ("white", 0.05, "input", 5e-4),  # white-noise statistics do not depend on dt
        # the y0-block input is ~60x more amplified at alpha: keep v tiny (~0.01 mV)
        # or the quadratic nonlinearity shows as a harmonic at 2 x 9.9 Hz
        ("white", 0.0002, "all", 1e-4),
        ("jr1995_gaussian", 5.0, "input", 1e-4),  # 5 * sqrt(1e-4) = 0.05 white
        ("jr1995_uniform", 5.0, "input", 1e-4),
    ],
)
def test_welch_of_simulation_matches_linearised_psd(noise, p_std, noise_on, dt):
    n_nodes, duration, fs, nperseg = 16, 64.0, 1000.0, 4000
    model = JansenRit(noise=noise, noise_on=noise_on, p_mean=torch.full((n_nodes,), 60.0, dtype=F64), p_std=p_std)
    sim = model.simulate(
        duration, dt, seed=11, record_every=int(round(1 / (fs * dt))), transient=8.0, initial_state="equilibrium"
    )
    assert not sim.diverged.any()
    welch = welch_psd(sim.v, fs, nperseg=nperseg)
    mean_psd = welch.psd.mean(0).numpy()
    f = welch.freqs.numpy()
    band = (f >= 2.0) & (f <= 40.0)
    single = JansenRit(noise=noise, noise_on=noise_on, p_mean=60.0, p_std=p_std)
    expected = expected_welch(single, fs, nperseg, f[band])
    ratio = mean_psd[band] / expected
    # Welch with a Hann window and 50 % overlap: each bin is a mean of
    # K = n_nodes * n_segments periodograms with relative sd ~ sqrt(1.06 / K).
    k = n_nodes * welch.n_segments
    sd = np.sqrt(1.06 / k)
    assert np.abs(ratio - 1).max() < 5 * sd, (np.abs(ratio - 1).max(), sd)
    # the mean over ~150 bins (about half of them independent) is much tighter
    assert abs(ratio.mean() - 1) < 4 * sd / np.sqrt(band.sum() / 2)
    # the alpha peak (~9.9 Hz, the upper equilibrium's eigenfrequency) is reproduced
    assert abs(f[band][mean_psd[band].argmax()] - f[band][expected.argmax()]) <= 0.25


def test_jr1995_per_step_noise_depends_on_dt_while_white_noise_does_not():
    # Same p_std, steps differing by 5x: per-step draws (equivalent white
    # intensity p_std^2 dt) give 5x more power at the coarser step; white
    # noise gives the same power.
    kw = dict(p_mean=torch.full((8,), 60.0, dtype=F64), p_std=0.05)
    powers = {}
    for noise in ("white", "jr1995_gaussian"):
        for dt in (1e-4, 5e-4):
            sim = JansenRit(noise=noise, **kw).simulate(
                24.0, dt, seed=5, record_every=int(round(1e-3 / dt)), transient=6.0, initial_state="equilibrium"
            )
            w = welch_psd(sim.v, 1000.0, nperseg=2000)
            band = (w.freqs >= 15) & (w.freqs <= 40)  # away from the peak: low variance
            powers[noise, dt] = float(w.psd[:, band].mean())
    assert powers["white", 5e-4] / powers["white", 1e-4] == pytest.approx(1.0, abs=0.1)
    assert powers["jr1995_gaussian", 5e-4] / powers["jr1995_gaussian", 1e-4] == pytest.approx(5.0, rel=0.1)


# ------------------------------------------------------------- API details
def test_seed_reproducibility_and_independence_of_batch_composition():
    model = JansenRit(p_mean=torch.tensor([60.0, 120.0, 220.0], dtype=F64), p_std=5.0)
    a = model.simulate(0.5, 1e-4, seed=7, record_every=10)
    b = model.simulate(0.5, 1e-4, seed=7, record_every=10)
    c = model.simulate(0.5, 1e-4, seed=8, record_every=10)
    assert torch.equal(a.v, b.v)
    assert not torch.allclose(a.v, c.v)
    # the first parameter set alone gets the noise of node 0 of the batch
    single = JansenRit(p_mean=torch.tensor([60.0], dtype=F64), p_std=5.0).simulate(0.5, 1e-4, seed=7, record_every=10)
    assert torch.allclose(single.v[0], a.v[0], rtol=0, atol=1e-12)


def test_decimation_transient_and_time_axis():
    model = JansenRit(p_mean=100.0, p_std=1.0)
    full = model.simulate(0.3, 1e-4, seed=1, backend="torch")
    dec = model.simulate(0.3, 1e-4, seed=1, record_every=10, backend="torch")
    assert dec.v.shape[-1] == 300 and full.v.shape[-1] == 3000
    assert torch.allclose(dec.v, full.v[..., ::10], atol=1e-12)
    assert dec.sampling_rate == pytest.approx(1000.0)
    assert torch.allclose(dec.time[:3], torch.tensor([0.0, 1e-3, 2e-3], dtype=F64))
    late = model.simulate(0.1, 1e-4, seed=1, transient=0.2, backend="torch")
    assert torch.allclose(late.v, full.v[..., 2000:], atol=1e-12)


def test_jr1995_evoked_pulse_response():
    # JR 1995 pulse q (t/w)^n exp(-t/w), q = 0.5, n = 7, w = 5 ms: peak input 375 pulses/s at 35 ms
    pulse = PulseInput()
    assert float(pulse(0.035)) == pytest.approx(0.5 * 7**7 * np.exp(-7), rel=1e-12)
    model = JansenRit(p_mean=60.0, p_std=0.0)
    rest = model.simulate(0.3, 1e-4, initial_state="equilibrium", record_every=10)
    evoked = model.simulate(0.3, 1e-4, initial_state="equilibrium", record_every=10, pulse=PulseInput(onset=0.05))
    assert torch.allclose(rest.v, rest.v[..., :1], atol=1e-9)  # no input, stays at rest
    d = (evoked.v - rest.v).numpy()
    assert np.abs(d[:50]).max() < 1e-9  # nothing before the onset
    assert np.abs(d).max() > 1.0  # a response of a few mV
    assert 0.05 < evoked.time[np.abs(d).argmax()] < 0.3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(duration=1.0, dt=0.0), "dt must be > 0"),
        (dict(duration=1.0, dt=-1e-4), "dt must be > 0"),
        (dict(duration=1.0, dt=0.02), "dt=0.02 s is too large"),
        (dict(duration=float("nan"), dt=1e-4), "duration must be finite"),
        (dict(duration=1.0, dt=1e-4, method="rk5"), "method must be one of"),
        (dict(duration=1.0, dt=1e-4, record_every=0), "record_every must be an int"),
        (dict(duration=1.0, dt=1e-4, initial_state=torch.zeros(3, 6)), "initial_state must have shape"),
        (dict(duration=1.0, dt=1e-4, method="rk4"), "method='rk4' is for deterministic runs"),
        (dict(duration=1e-4, dt=1e-4, record_every=5), "records no sample"),
        (dict(duration=1.0, dt=1e-4, seed=-3), "seed must be non-negative"),
    ],
)
def test_bad_simulation_arguments_raise_named_errors(kwargs, match):
    model = JansenRit(p_mean=torch.tensor([60.0, 70.0], dtype=F64))
    with pytest.raises(ValueError, match=match):
        model.simulate(**kwargs)


def test_coarse_dt_warns():
    with pytest.warns(UserWarning, match="coarse for heun"):
        JansenRit(p_std=1.0).simulate(0.05, 2e-3)
    with pytest.warns(UserWarning, match="coarse for rk4"):
        JansenRit(p_std=0.0).simulate(0.05, 4e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        JansenRit(p_std=0.0).simulate(0.05, 2e-3)  # RK4 at a dt = 0.2 is accurate: no warning


def test_divergence_is_reported_not_hidden():
    # The sigmoid bounds the JR dynamics, so within the allowed steps only
    # floating-point overflow can blow a run up: absurd gain x input.
    model = JansenRit(A=torch.tensor([3.25, 1e300], dtype=F64), p_mean=1e10, p_std=0.0)
    for backend in ("torch", "native"):
        if backend == "native":
            native_or_skip()
        with pytest.warns(RuntimeWarning, match="1 of 2 simulations diverged"):
            sim = model.simulate(0.05, 1e-4, method="euler", backend=backend)
        assert sim.diverged.tolist() == [False, True]


# ------------------------------------------------- forward sensitivities in the native kernel (issue 13)
_SENS_NAMES = ("A", "B", "a", "b", "C1", "C2", "C3", "C4", "e0", "v0", "r", "p_mean")


def _evoked_v(theta, pulse_par, y_init, backend):
    """ERP-like run: deterministic RK4 with a pulse; theta (12,), pulse_par (q, w, n, onset), y_init (6,)."""
    model = JansenRit(p_std=0.0, **{k: theta[i] for i, k in enumerate(_SENS_NAMES)})
    pulse = PulseInput(q=pulse_par[0], w=pulse_par[1], n=pulse_par[2], onset=pulse_par[3])
    sim = model.simulate(0.15, 1e-3, method="rk4", initial_state=y_init, pulse=pulse, backend=backend, record_every=2,
                         transient=0.01)
    return sim.v


def _sens_case():
    theta = torch.tensor([3.25, 22.0, 100.0, 50.0, 135.0, 108.0, 33.75, 33.75, 2.5, 6.0, 0.56, 70.0],
                         dtype=torch.float64)
    pulse = torch.tensor([40.0, 0.006, 7.0, 0.01], dtype=torch.float64)
    y_init = JansenRit(p_mean=70.0).fixed_points().upper().state + torch.tensor([0.01, 0.2, -0.1, 0.0, 1.0, 0.0],
                                                                                 dtype=torch.float64)
    return theta, pulse, y_init


def test_sensitivity_backend_matches_torch_autograd_and_finite_differences():
    native_or_skip()
    from torch.func import jacfwd, jacrev

    theta, pulse, y_init = _sens_case()
    v_t = _evoked_v(theta, pulse, y_init, "torch")
    v_s = _evoked_v(theta, pulse, y_init, "sensitivity")
    assert float((v_s - v_t).abs().max()) < 1e-10 * float(v_t.abs().max())
    J_t = jacrev(lambda *a: _evoked_v(*a, "torch"), argnums=(0, 1, 2))(theta, pulse, y_init)
    for J_s in (
        jacrev(lambda *a: _evoked_v(*a, "sensitivity"), argnums=(0, 1, 2))(theta, pulse, y_init),
        jacfwd(lambda *a: _evoked_v(*a, "sensitivity"), argnums=(0, 1, 2))(theta, pulse, y_init),
    ):
        for a, b in zip(J_s, J_t):
            assert float((a - b).abs().max()) <= 1e-9 * float(b.abs().max())
    # central differences of the (native) simulation itself, per input column
    for arg, J in zip(range(3), J_t):
        base = (theta, pulse, y_init)[arg]
        for i in range(base.numel()):
            h = 1e-6 * max(abs(float(base[i])), 1.0 if arg == 2 else 1e-2)
            plus, minus = base.clone(), base.clone()
            plus[i] += h
            minus[i] -= h
            args_p = [theta, pulse, y_init]
            args_m = [theta, pulse, y_init]
            args_p[arg], args_m[arg] = plus, minus
            fd = (_evoked_v(*args_p, "native") - _evoked_v(*args_m, "native")) / (2 * h)
            scale = float(J[..., i].abs().max())
            rounding = 1e-13 * float(v_t.abs().max()) / h  # cancellation error of the difference quotient
            assert float((fd - J[..., i]).abs().max()) <= 1e-5 * scale + rounding, (arg, i)


def test_sensitivity_backend_batched_and_auto_selection():
    native_or_skip()
    theta, pulse, y_init = _sens_case()
    p = torch.tensor([60.0, 70.0, 80.0], dtype=torch.float64, requires_grad=True)
    model = JansenRit(p_std=0.0, p_mean=p)
    sim = model.simulate(0.1, 1e-3, method="rk4", pulse=PulseInput(q=30.0, w=0.005, n=7.0, onset=0.01))
    assert sim.backend == "sensitivity"
    (g,) = torch.autograd.grad(sim.v.sum(), p)
    ref = JansenRit(p_std=0.0, p_mean=p).simulate(0.1, 1e-3, method="rk4", backend="torch",
                                                   pulse=PulseInput(q=30.0, w=0.005, n=7.0, onset=0.01))
    (g_ref,) = torch.autograd.grad(ref.v.sum(), p)
    assert torch.allclose(g, g_ref, rtol=1e-9)
    with pytest.raises(ValueError, match="sensitivity"):
        JansenRit(p_std=1.0).simulate(0.01, 1e-4, method="heun", backend="sensitivity")


# ------------------------------------------- simulated spectra: common-random-number central differences
def _crn_psd(p_mean, A, kind, seed=3):
    from jrinfer.spectral import welch_psd

    model = JansenRit(p_mean=p_mean, A=A, p_std=20.0)
    if kind == "crn":
        return model.simulated_psd(0.5, 1e-4, segment=0.25, record_every=10, transient=0.2, seed=seed,
                                   initial_state="equilibrium").psd
    start = model.fixed_points().upper().state.detach()
    sim = model.simulate(0.5, 1e-4, record_every=10, transient=0.2, seed=seed, initial_state=start, backend="torch")
    return welch_psd(sim.v, 1000.0, nperseg=250).psd


def test_crn_simulated_psd_matches_autograd_through_the_torch_loop():
    native_or_skip()
    from torch.func import jacfwd, jacrev

    p = torch.tensor([70.0, 80.0], dtype=torch.float64, requires_grad=True)
    A = torch.tensor(3.25, dtype=torch.float64, requires_grad=True)
    crn = _crn_psd(p, A, "crn")
    ref = _crn_psd(p, A, "torch")
    assert torch.allclose(crn, ref, rtol=1e-9)  # same noise: same spectrum
    w = torch.linspace(0.5, 1.5, crn.shape[-1], dtype=torch.float64)
    g_crn = torch.autograd.grad((crn.log() * w).sum(), (p, A))
    g_ref = torch.autograd.grad((ref.log() * w).sum(), (p, A))
    for a, b in zip(g_crn, g_ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max())), (a, b)
    # torch.func: reverse and forward mode give the same differences
    f = lambda q: _crn_psd(q, torch.tensor(3.25, dtype=torch.float64), "crn").log()  # noqa: E731
    Jr, Jf = jacrev(f)(p.detach()), jacfwd(f)(p.detach())
    assert torch.allclose(Jr, Jf, rtol=1e-12, atol=1e-12)
    # the nominal spectrum without gradients is the plain simulation's
    with torch.no_grad():
        plain = _crn_psd(p, A, "crn")
    assert torch.allclose(plain, crn.detach(), rtol=1e-12)
