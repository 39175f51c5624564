"""NPE's own checks: out of distribution, box-edge pile-up, contraction against the box prior, train-npe progress.

The out-of-distribution and box-edge tests use the session's shared estimator
(``npe_spectrum_estimator`` in conftest.py: ``train-npe --simulations 4000
--seed 1``); the rest need no trained flow, or a tiny one.
"""

import math

import pytest
import torch

pytest.importorskip("sbi")

from jrinfer import SpectrumData  # noqa: E402
from jrinfer.backends import npe as npe_module  # noqa: E402
from jrinfer.backends.npe import (  # noqa: E402
    _box_contraction,
    _box_edge_shares,
    _loo_mahalanobis2,
    _mahalanobis2,
    _percentile,
    simulate_training_set,
)
from jrinfer.prior import LogUniform, Prior, Uniform  # noqa: E402

F64 = torch.float64


# ------------------------------------------------------------ helpers without a flow
def _box():
    return Prior({"g": LogUniform(1e-3, 10.0), "u": Uniform(-2.0, 3.0)})


def test_box_contraction_is_zero_for_the_box_one_for_a_point_and_bounded_below():
    prior = _box()
    flat = prior.sample(20_000, seed=1)
    c = _box_contraction(prior, flat)
    assert torch.allclose(c, torch.zeros(2, dtype=F64), atol=0.03), c
    point = torch.tensor([0.05, 0.7], dtype=F64) * (1 + 1e-4 * torch.randn(500, 2, dtype=F64,
                                                                            generator=torch.Generator().manual_seed(2)))
    assert (_box_contraction(prior, point) > 0.999).all()
    # half the draws at each bound: the largest variance a distribution on the box has, (high - low)^2 / 4
    ends = torch.tensor([[1e-3, -2.0], [10.0, 3.0]], dtype=F64).repeat(500, 1)
    c = _box_contraction(prior, ends)
    assert torch.allclose(c, torch.full((2,), -2.0, dtype=F64), atol=0.01), c
    # a posterior in the middle with 2 % of its draws pressed against a bound: still well informed in box
    # coordinates, where the logit coordinates (|z| up to 30 at the bound) would call it wider than the box
    g = torch.Generator().manual_seed(3)
    mid = torch.stack([torch.exp(math.log(0.1) + 0.1 * torch.randn(1000, dtype=F64, generator=g)),
                       0.5 + 0.05 * torch.randn(1000, dtype=F64, generator=g)], -1)
    mid[:20, 0] = 10.0 * (1 - 1e-13)
    assert _box_contraction(prior, mid)[0] > 0.8
    z = prior.to_unconstrained(mid)[:, 0].clamp(-30, 30)
    assert 1 - float(z.var()) / (math.pi**2 / 3) < 0


def test_box_edge_shares():
    prior = _box()
    theta = torch.tensor([[9.99, 0.0], [9.9, 2.99], [0.0011, 0.5], [1.0, -1.99]], dtype=F64)
    low, high = _box_edge_shares(prior, theta, edge=0.02)
    # g's box is 4 decades: its upper 2 % is above 10 * 10^(-0.08) = 8.3, its lower 2 % below 1.2e-3
    assert low.tolist() == [0.25, 0.25] and high.tolist() == [0.5, 0.25]


def test_neural_power_scales_with_p_std_squared():
    """Why NPE's gain (p_std 0.5 in training) is twice a transfer-method fit's (p_std 1) for the same spectrum."""
    from jrinfer.observation import SpectrumObservation

    freqs = torch.linspace(2.0, 40.0, 77, dtype=F64)
    obs = SpectrumObservation(method="transfer")
    psd = [obs.neural_psd({"p_mean": torch.tensor(70.0, dtype=F64), "p_std": torch.tensor(s, dtype=F64)}, freqs,
                          seg_length=2.0).value for s in (1.0, 0.5)]
    assert torch.allclose(psd[0] / psd[1], torch.full_like(freqs, 4.0), rtol=1e-9)


def test_leave_one_out_mahalanobis_and_percentiles():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, dtype=F64, generator=g) * torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=F64)
    d2 = _mahalanobis2(x, x.mean(0), torch.linalg.cholesky(torch.cov(x.T)))
    loo = _loo_mahalanobis2(d2, 60)
    for i in (0, 17, 59):
        rest = torch.cat([x[:i], x[i + 1:]])
        r = x[i] - rest.mean(0)
        assert float(loo[i]) == pytest.approx(float(r @ torch.linalg.solve(torch.cov(rest.T), r)), rel=1e-10)
    assert (loo > d2).all()
    grid = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0], dtype=F64)
    assert _percentile(grid, -0.1) == 0.0 and _percentile(grid, 2.1) == 100.0
    assert _percentile(grid, 0.0) == 25.0  # ties count half: the middle of the three zeros
    assert _percentile(grid, 1.5) == pytest.approx(87.5)


# ------------------------------------------------------------ the shared estimator
def _spectrum(est, seed=101, **truth_over):
    """A spectrum simulated through the estimator's observation at the JR 1995 constants (as test_npe._jr_spectrum)."""
    problem = est.problem
    from test_npe import _matched_gain

    truth = {"A": 3.25, "B": 22.0, "a": 100.0, "b": 50.0, "C": 135.0, "p_mean": 70.0, "ap_amplitude": 20.0,
             "ap_exponent": 1.0, "floor": 0.05, "log_precision": math.log(25.0)}
    params = {k: torch.tensor(v, dtype=F64) for k, v in {**problem.prior.fixed, **truth}.items()}
    truth = {**truth, "gain": _matched_gain(problem, params), **truth_over}
    theta = torch.tensor([[truth[n] for n in problem.names]], dtype=F64)
    params = problem.parameters(theta)
    obs = problem.observation.with_seed(seed)
    pred = obs.predict(params, problem.data)
    y = obs.sample(pred, params, problem.data, torch.Generator().manual_seed(seed))
    return SpectrumData.from_arrays(problem.data.freqs, y[0], units="uV^2/Hz", metadata={"seg_length_s": 2.0})


def _eegmat(est, subject):
    """An EEGMAT rest recording (O1/O2) on the estimator's grid, read as ``jrinfer fit`` reads it."""
    import os

    from conftest import require_recordings

    from jrinfer.cli import _load_data, build_parser

    require_recordings(f"eegmat/{subject}.edf")
    edf = os.path.join(os.environ["JRINFER_DATA"], "eegmat", f"{subject}.edf")
    grid = est.problem.observed().coord_values
    args = build_parser().parse_args(["fit", edf, "--kind", "spectrum", "--picks", "O1,O2", "--fmin", f"{float(grid[0])}",
                                      "--fmax", f"{float(grid[-1])}", "--segment", "2", "--out", "unused"])
    return _load_data(args)


@pytest.mark.slow
def test_out_of_distribution_percentiles_words_and_false_alarm_rate(npe_spectrum_estimator):
    _, est = npe_spectrum_estimator
    # held-out simulations (a seed no training chunk uses): inside at about the nominal rate (0.6 % of 1,000
    # measured, benchmarks/npe_ood.py); 12 of 400 would be 3 %, beyond any plausible binomial scatter
    held = simulate_training_set(est.problem, 400, seed=987_654, chunk_size=500, progress=False, summary=est.summary)
    checks = [est.out_of_distribution(x) for x in held.x[held.valid]]
    assert sum(c["outside"] for c in checks) <= 12
    pct = torch.tensor([c["mahalanobis2_percentile"] for c in checks])
    assert 35 < float(pct.median()) < 65  # the training's leave-one-out distances are a held-out reference
    inside = est.out_of_distribution(est.features(_spectrum(est)))
    assert inside["outside"] is False and inside["reason"] == "" and 0 < inside["mahalanobis2_percentile"] < 99
    words = inside["descriptors"]
    assert {"overall level (mean log-power)", "alpha peak frequency (Hz)",
            "power 17-26 Hz (a beta bump) above the aperiodic line"} <= set(words)
    # the same spectrum 10^6 times larger (a unit mistake): outside, and the words say it is the level
    data = _spectrum(est)
    big = SpectrumData.from_arrays(data.freqs, data.power * 1e6, units="uV^2/Hz", metadata={"seg_length_s": 2.0})
    out = est.out_of_distribution(est.features(big))
    assert out["outside"] is True and "overall level" in out["beyond_training"][0]
    assert "overall level (mean log-power)" in out["reason"] and "higher than every" in out["reason"]
    # a strong 17-26 Hz bump: outside, named as the beta bump
    bump = data.power * (1 + 200 * torch.exp(-0.5 * ((data.freqs - 21.0) / 2.0) ** 2))
    out = est.out_of_distribution(est.features(SpectrumData.from_arrays(data.freqs, bump, units="uV^2/Hz",
                                                                          metadata={"seg_length_s": 2.0})))
    assert out["outside"] is True and "beta bump" in out["reason"], out["reason"]
    # estimators saved before the percentiles: the old rule (d2 above every training simulation's), said so
    old = dict(est._stats)
    for k in ("d2_grid", "descriptor_grid", "grid_freqs"):
        old.pop(k)
    saved, est._stats = est._stats, old
    try:
        o = est.out_of_distribution(est.features(big))
        assert o["mahalanobis2_percentile"] is None and "before" in o["note"]
        assert o["outside"] == (o["mahalanobis2"] > o["training_mahalanobis2_max"])
    finally:
        est._stats = saved


@pytest.mark.slow
def test_outside_is_a_warning_with_advice_and_a_box_edge_a_note(npe_spectrum_estimator):
    _, est = npe_spectrum_estimator
    post = est.condition(_spectrum(est), n_draws=400, n_predictive=10, seed=1)
    assert not any("outside what the estimator" in w or "piles up" in w for w in post.warnings)
    assert post.diagnostics["box_edge"]["piled_up"] == []
    assert "box prior the estimator was trained on" in post.diagnostics["contraction_against"]
    assert set(post.contraction) == set(est.names) and all(-2.0 <= c <= 1.0 for c in post.contraction.values())
    # EEGMAT Subject00_1 (O1/O2): 77 % of the ap_exponent draws in the top 2 % of the box (0.31-3.2), against 14-17 %
    # for simulated spectra with an exponent of 4-8 (benchmarks/RESULTS.md)
    steep = est.condition(_eegmat(est, "Subject00_1"), n_draws=400, n_predictive=10, seed=1)
    edge = steep.diagnostics["box_edge"]
    assert "ap_exponent" in edge["piled_up"] and edge["upper"]["ap_exponent"] > npe_module.BOX_EDGE_SHARE
    # a hint in the notes, not a warning: 5-7 % of posteriors of in-box simulations pile up at a bound too
    note = next(n for n in steep.diagnostics["notes"] if "piles up" in n)
    assert "ap_exponent" in note and "--prior" in note and "nuts" not in note
    assert not any("piles up" in w for w in steep.warnings)
    assert steep.diagnostics["optimizer_converged"] is True
    # inside the training distribution (distance at the 58th percentile of held-out simulations'); its beta bump is
    # above 99.8 % of the training spectra's (measured), the outer 1 % that makes a note, not a warning
    ood = steep.diagnostics["out_of_distribution"]
    beta = "power 17-26 Hz (a beta bump) above the aperiodic line"
    assert ood["outside"] is False and ood["descriptors"][beta]["percentile"] > 97
    noted = any("beta bump" in n and "inside the estimator's training distribution" in n
                for n in steep.diagnostics["notes"])
    assert (beta in ood["unusual"]) == noted == (ood["descriptors"][beta]["percentile"] > 99.5)
    # gain x p_std, the product a spectrum informs, with the note on comparing it with transfer-method fits
    g = torch.as_tensor(steep.draws).reshape(-1, len(est.names))[:, est.names.index("gain")]
    assert steep.diagnostics["gain_x_p_std"]["median"] == pytest.approx(0.5 * float(torch.quantile(g, 0.5)), rel=1e-9)
    assert any("p_std = 1" in n and "gain x 0.5" in n for n in steep.diagnostics["notes"])
    # a recording a million times too large: outside, a warning naming what helps
    data = _spectrum(est)
    big = SpectrumData.from_arrays(data.freqs, data.power * 1e6, units="uV^2/Hz", metadata={"seg_length_s": 2.0})
    far = est.condition(big, n_draws=200, n_predictive=0, seed=1)
    msg = next(w for w in far.warnings if "outside what the estimator was trained on" in w)
    assert "--rounds" in msg and "--prior" in msg and "overall level" in msg and "nuts" not in msg
    assert far.status == "warning" and "outside what the estimator" in far.status_message


# ------------------------------------------------------------ train-npe progress
@pytest.mark.slow
def test_train_npe_no_progress_prints_lines_and_quiet_nothing(tmp_path, capsys, monkeypatch):
    from conftest import native_or_skip

    native_or_skip()
    from jrinfer import _chunks
    from jrinfer.cli import main

    # every chunk and epoch gets its line (the 10 s interval made 0), so a short run shows the periodic ones
    monkeypatch.setattr(_chunks._ChunkProgress, "INTERVAL_S", 0.0)
    monkeypatch.setattr(npe_module, "_PROGRESS_INTERVAL_S", 0.0)
    # the transfer method simulates in milliseconds: the run is about its messages
    base = ["train-npe", "--kind", "spectrum", "--method", "transfer", "--simulations", "150", "--chunk-size", "50",
            "--calibrate", "100", "--max-epochs", "3", "--seed", "2", "--free", "a,b"]
    code = main([*base, "--out", str(tmp_path / "lines"), "--no-progress"])
    err = capsys.readouterr().err
    assert code in (0, 1), err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert any(line.startswith("simulations: 1 of 3 chunks") for line in lines), err
    assert any(line.startswith("simulations: 3 of 3 chunks in") for line in lines), err
    assert any(line.startswith("training the flow on") for line in lines), err
    assert any(line.startswith("training the flow: 1 epochs") for line in lines), err
    assert any(line.startswith("training the flow: trained") for line in lines), err
    assert any(line.startswith("calibration: 500 posterior draws for each of") for line in lines), err
    assert any(line.startswith("calibration: calibrated") or line.startswith("calibration: not calibrated")
               for line in lines), err
    code = main([*base, "--out", str(tmp_path / "quiet"), "--quiet"])
    captured = capsys.readouterr()
    assert code in (0, 1) and captured.err == ""
    assert (tmp_path / "quiet" / "metadata.json").is_file()
