"""Identifiability: known-answer models, the JR null spaces derived from the equations, profiles, summaries."""

import json
import math

import numpy as np
import pytest
import torch

from jrinfer import identifiability as idf

JR12 = ["A", "B", "a", "b", "C", "e0", "v0", "r", "gain", "ap_amplitude", "ap_exponent", "floor"]
JR_EVOKED = ["A", "B", "a", "b", "C", "e0", "v0", "r", "gain", "input_amplitude", "input_latency", "input_width"]


def _unit(v):
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


# --------------------------------------------------------- known answers
def test_product_of_two_parameters_is_a_structural_tradeoff_along_exactly_that_direction():
    t = torch.linspace(0.0, 2.0, 50, dtype=torch.float64)

    def f(z):  # only exp(z0 + z1) = theta0 * theta1 enters; z2 enters alone
        return torch.exp(z[..., :1] + z[..., 1:2]) * torch.exp(-t) + z[..., 2:3] * t

    la = idf.local_analysis_function(f, [0.3, -0.2, 1.0], names=["k1", "k2", "c"], precision=100.0, batched=True)
    assert la.null_dimension == 1
    assert la.exactness["confirmed"] and la.exactness["n_checked"] == 4
    assert la.exactness["max_angle_deg"] < 1e-6  # a global symmetry: the null space does not move
    angle = idf.principal_angles(la.structural_null, _unit([1.0, -1.0, 0.0])[:, None])
    assert np.degrees(angle.max()) < 1e-8
    d = la.structural_null_directions[0]
    assert set(d) == {"k1", "k2"} and d["k1"] == pytest.approx(-d["k2"], abs=1e-4)
    assert abs(d["k1"]) == pytest.approx(math.sqrt(0.5), abs=1e-4)
    verdicts = {n: p["verdict"] for n, p in la.parameters.items()}
    assert verdicts == {"k1": "not identifiable", "k2": "not identifiable", "c": "identified"}
    assert la.singular_ratio[0] < 1e-13
    assert not la.sloppy  # the null direction is structural, not sloppy
    assert la.collinearity[0]["subset"] == ["k1", "k2"] and la.collinearity[0]["index"] == math.inf


def test_well_posed_linear_model_is_fully_identified_with_the_analytic_fisher_eigenvalues():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(40, 4, generator=g, dtype=torch.float64)
    prec = torch.rand(40, generator=g, dtype=torch.float64) + 0.5

    la = idf.local_analysis_function(lambda z: z @ X.T, torch.zeros(4, dtype=torch.float64), precision=prec, batched=True)
    F = X.T @ (prec[:, None] * X)
    expected = torch.linalg.eigvalsh(F).numpy()
    np.testing.assert_allclose(la.eigenvalues, expected, rtol=1e-12)
    np.testing.assert_allclose(la.fisher, F.numpy(), rtol=1e-12, atol=1e-12)
    assert la.null_dimension == 0 and la.accidental_null.shape[1] == 0
    assert la.condition_number == pytest.approx(expected[-1] / expected[0], rel=1e-10)
    sd = np.sqrt(np.diag(np.linalg.inv(F.numpy())))
    for i, name in enumerate(la.names):
        assert la.parameters[name]["verdict"] == "identified"
        assert la.parameters[name]["sd"] == pytest.approx(sd[i], rel=1e-10)
    # unbatched callables give the same answer
    la1 = idf.local_analysis_function(lambda z: X @ z, torch.zeros(4, dtype=torch.float64), precision=prec)
    np.testing.assert_allclose(la1.eigenvalues, expected, rtol=1e-12)


def test_collinearity_index_matches_brun_definition():
    X = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.1, 0.0], [0.0, 0.0, 1.0], [1.0, 0.9, 1.0]], dtype=torch.float64)
    la = idf.local_analysis_function(lambda z: X @ z, torch.zeros(3, dtype=torch.float64), max_subset=3, n_check=0)
    S = X.numpy() / np.linalg.norm(X.numpy(), axis=0)
    got = {tuple(c["subset"]): c["index"] for c in la.collinearity}
    for sub in [(0, 1), (0, 2), (0, 1, 2)]:
        lmin = np.linalg.eigvalsh(S[:, sub].T @ S[:, sub])[0]
        assert got[tuple(f"z{i}" for i in sub)] == pytest.approx(1 / math.sqrt(lmin), rel=1e-8)


def test_accidental_null_direction_is_not_reported_as_structural():
    # f = (z0 - 1)^2 z1: at z0 = 1 the z0 column vanishes, but only at that point
    t = torch.linspace(0.1, 1.0, 20, dtype=torch.float64)

    def f(z):
        return (z[..., :1] - 1.0) ** 2 * t + z[..., 1:2] * t**2

    la = idf.local_analysis_function(f, [1.0, 0.5], batched=True)
    assert la.null_dimension == 0
    assert la.accidental_null.shape[1] == 1
    assert la.parameters["z0"]["verdict"] != "not identifiable"


# ---------------------------------------------------- Jansen-Rit spectrum
@pytest.fixture(scope="module")
def spectral12():
    problem, theta = idf.jansen_rit_problem("spectrum", free=JR12)
    return problem, theta, idf.local_analysis(problem, theta)


def test_jr_spectrum_null_space_is_exactly_the_derived_one(spectral12):
    problem, theta, la = spectral12
    assert la.null_dimension == 4
    assert la.exactness["confirmed"] and la.exactness["n_checked"] >= 2
    assert la.exactness["max_null_ratio"] < 1e-12
    assert la.singular_ratio[3] < 1e-12 and la.singular_ratio[4] > 1e-7  # round-off vs the weakest real direction
    derived = idf.jansen_rit_null_space(problem, theta)
    assert derived["source"] == "spectral invariants" and derived["dimension"] == 4
    angles = np.degrees(idf.principal_angles(derived["basis"], la.structural_null))
    assert angles.max() < 1e-5
    # the two global scaling symmetries lie inside it, written out in closed form
    names = list(la.names)
    volt = np.zeros(len(names))
    for k, w in {"A": 1, "B": 1, "v0": 1, "r": -1, "gain": -1}.items():
        volt[names.index(k)] = w
    rate = np.zeros(len(names))
    rate[names.index("e0")], rate[names.index("C")] = 1, -1
    for v in (volt, rate):
        assert np.degrees(idf.principal_angles(la.structural_null, _unit(v)[:, None]).max()) < 1e-5
    sym = idf.jansen_rit_symmetries(problem, theta)
    assert sym.shape[1] == 2
    # the time constants and the aperiodic parameters are never part of a null direction
    for name in ("a", "b", "ap_amplitude", "ap_exponent", "floor"):
        assert la.parameters[name]["null_weight"] < 1e-12
    assert la.parameters["a"]["verdict"] == "identified" and la.parameters["b"]["verdict"] == "identified"
    for name in ("A", "B", "C", "e0", "v0", "r", "gain"):
        assert la.parameters[name]["verdict"] == "not identifiable"


def test_jr_spectrum_is_identified_once_the_null_directions_are_fixed(spectral12):
    problem, theta, la = spectral12
    fixes = la.suggest_fixes(prefer=["e0", "v0", "r"])
    assert len(fixes) == 4 and fixes[:3] == ["e0", "v0", "r"]
    free = [n for n in JR12 if n not in fixes]
    p2, th2 = idf.jansen_rit_problem("spectrum", free=free)
    la2 = idf.local_analysis(p2, th2)
    assert la2.null_dimension == 0
    assert idf.jansen_rit_null_space(p2, th2)["dimension"] == 0
    assert {n for n, p in la2.parameters.items() if p["verdict"] == "not identifiable"} == set()


@pytest.mark.slow
def test_jr_evoked_null_space_is_the_scaling_symmetries_only():
    problem, theta = idf.jansen_rit_problem("evoked", free=JR_EVOKED)
    la = idf.local_analysis(problem, theta, n_check=2)
    assert la.null_dimension == 2 and la.exactness["confirmed"]
    derived = idf.jansen_rit_null_space(problem, theta)
    assert derived["source"] == "scaling symmetries" and derived["dimension"] == 2
    assert np.degrees(idf.principal_angles(derived["basis"], la.structural_null).max()) < 1e-5
    # the ERP informs the directions the linearised spectrum cannot see: e.g. v0 with B
    assert la.singular_ratio[2] > 1e-6


# ----------------------------------------------------------- profiles
@pytest.fixture(scope="module")
def spectral_small():
    return idf.jansen_rit_problem("spectrum", free=["A", "a", "b", "C", "e0", "gain"])


def test_profile_of_an_identified_parameter_is_bounded_on_both_sides(spectral_small):
    problem, theta = spectral_small
    prof = idf.profile_likelihood(problem, "a", theta, n_points=9)
    assert prof.verdict == "identified"
    lo, hi = prof.interval
    assert lo < theta["a"] < hi
    # the interval agrees with the Cramer-Rao one to first order (nearly quadratic profile)
    sd = idf.local_analysis(problem, theta, n_check=0).parameters["a"]["sd"]
    assert math.log(hi / lo) / 2 == pytest.approx(1.96 * sd, rel=0.15)
    assert np.nanmin(prof.delta) == 0.0 and prof.delta[np.argmin(np.abs(prof.z - math.log(theta["a"])))] == 0.0


def test_profile_of_a_structurally_non_identified_parameter_is_flat(spectral_small):
    problem, theta = spectral_small
    prof = idf.profile_likelihood(problem, "e0", theta, n_points=7)
    assert prof.verdict == "flat" and prof.interval == (None, None)
    assert prof.max_delta < 1e-3
    # e0 moves along the contacts-vs-rate symmetry: C compensates exactly (ln C + ln e0 constant)
    ci = prof.other_names.index("C")
    np.testing.assert_allclose(prof.others[:, ci] + prof.z, math.log(theta["C"] * theta["e0"]), atol=1e-3)


def test_profile_classification():
    z = np.linspace(-1, 1, 5)
    assert idf._classify(z, np.array([5.0, 1, 0, 1, 5]), 3.84, 2)[0] == "identified"
    assert idf._classify(z, np.array([5.0, 1, 0, 0.1, 0.2]), 3.84, 2)[0] == "one-sided"
    assert idf._classify(z, np.array([0.0, 0, 0, 0, 0]), 3.84, 2)[0] == "flat"
    verdict, lo, hi = idf._classify(z, np.array([5.0, 1, 0, 1, 5]), 3.84, 2)
    assert lo == pytest.approx(-0.5 - 0.5 * (3.84 - 1) / 4) and hi == pytest.approx(-lo)


# ------------------------------------------------ posterior and recovery
def test_posterior_summary_contraction_and_flagged_pairs():
    from jrinfer import LogNormal, Normal, Posterior, Prior

    prior = Prior({"A": LogNormal(3.25, 0.5), "gain": LogNormal(1.0, 1.0), "x": Normal(0.0, 2.0)})
    cov = np.array([[0.25 * 0.25, -0.93 * 0.25 * 0.1, 0], [-0.93 * 0.25 * 0.1, 0.01, 0], [0, 0, 3.9]])
    post = Posterior(
        names=("A", "gain", "x"), draws=np.ones((1, 4, 3)), backend="laplace",
        mean_unconstrained=np.zeros(3), cov_unconstrained=cov,
    )
    s = idf.posterior_summary(post, prior, threshold=0.8)
    np.testing.assert_allclose(s.contraction, [1 - 0.0625 / 0.25, 1 - 0.01, 1 - 3.9 / 4.0])
    assert s.flagged_pairs == [{"a": "A", "b": "gain", "rho": pytest.approx(-0.93)}]
    assert s.not_informed == ["x"]
    assert "x" in s.headline() and "A~gain (-0.93)" in s.headline()
    # from draws when no Gaussian is stored: log-normal draws give the same contraction
    g = np.random.default_rng(0)
    z = g.multivariate_normal([math.log(3.25), 0.0, 0.0], cov, size=20000)
    draws = np.column_stack([np.exp(z[:, 0]), np.exp(z[:, 1]), z[:, 2]])[None]
    s2 = idf.posterior_summary(Posterior(names=("A", "gain", "x"), draws=draws, backend="nuts"), prior, threshold=0.8)
    np.testing.assert_allclose(s2.contraction, s.contraction, atol=0.03)
    with pytest.raises(ValueError, match="threshold"):
        idf.posterior_summary(post, prior, threshold=1.5)


@pytest.mark.slow
def test_recovery_study_batches_and_executor_agree():
    from concurrent.futures import ThreadPoolExecutor

    problem, _ = idf.jansen_rit_problem("spectrum", free=["a", "b", "gain"], sd_log=0.1)
    study = idf.recovery_study(problem, 6, batch_size=4, seed=1)
    assert study.truth.shape == (6, 3) and len(study.status) == 6
    ok = np.array([s == "converged" for s in study.status])
    assert ok.sum() >= 5
    assert 0.0 < study.prior_invalid_fraction < 0.9  # the JR upper equilibrium is close to its Hopf point
    # a and b are recovered well in most datasets (a fit can land in another mode that swaps the
    # roles of the two time constants: a real multimodality of the spectrum, seen with this seed)
    err = np.abs(study.mean - study.truth)[ok]
    assert np.median(err[:, 0]) < 0.02 and np.median(err[:, 1]) < 0.02
    assert (err[:, :2].max(1) < 0.05).sum() >= 4
    assert np.isfinite(study.zscore[ok]).all()
    # a and b are pinned down in all but at most one dataset; where not (seed 1: b's contraction 0.11 at the
    # optimum of highest free energy that the multi-start finds), the truth lies within 2 posterior SDs
    pinned = study.contraction[ok][:, :2] > 0.5
    assert pinned.sum() >= pinned.size - 1, study.contraction
    assert (np.abs(study.zscore[ok][:, :2][~pinned]) < 2).all(), study.zscore
    with ThreadPoolExecutor(2) as ex:
        study2 = idf.recovery_study(problem, 6, batch_size=2, seed=1, executor=ex)
    np.testing.assert_allclose(study2.mean, study.mean, rtol=1e-8, equal_nan=True)
    assert "recovery r" in study.to_text()


# ----------------------------------------------------- report, CLI, errors
def test_report_json_text_and_plots(tmp_path, spectral_small):
    problem, theta = spectral_small
    rep = idf.identifiability_report(problem, theta, profiles=["e0"], n_points=5)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["structural_null_directions"] and all(isinstance(x, dict) for x in d["structural_null_directions"])
    nd = d["structural_null_directions"][0]
    assert set(nd) == {"C", "e0"} and nd["C"] == pytest.approx(-nd["e0"], abs=1e-3)
    assert d["derived"]["match"] is True
    assert "gain" in d["local"]["parameters"]
    assert d["profiles"][0]["verdict"] == "flat"
    text = rep.to_text()
    assert "ln C" in text and "flat" in text
    paths = rep.plot(tmp_path)
    for p in paths.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = rep.to_json(tmp_path / "r.json")
    assert json.loads(path.read_text())["sloppy_directions"] == d["sloppy_directions"]


def test_cli_identifiability_spectrum(tmp_path):
    from jrinfer.cli import main

    out = tmp_path / "ident"
    rc = main(
        ["identifiability", "--kind", "spectrum", "--set", "p_mean=70", "--free", "A,B,a,b,C,e0,v0,r,gain",
         "--out", str(out)]
    )
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["structural_null_directions"]) == 4
    assert all(set(d) <= {"A", "B", "C", "e0", "v0", "r", "gain"} for d in rep["structural_null_directions"])
    assert rep["derived"]["match"] is True
    assert "sloppy_directions" in rep
    assert (out / "identifiability_eigenvectors.png").is_file()


def test_cli_identifiability_bad_input(tmp_path, capsys):
    from jrinfer.cli import main

    assert main(["identifiability", "--kind", "spectrum", "--free", "A,nonsense", "--out", str(tmp_path / "x")]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert main(["identifiability", "--kind", "spectrum", "--set", "p_mean=200", "--out", str(tmp_path / "y")]) == 2
    assert "unstable" in capsys.readouterr().err


def test_cli_identifiability_from_a_fit_folder(tmp_path, capsys):
    """--from-fit DIR: the fit's parameter set, grid, units, noise and free parameters; its contractions beside."""
    from jrinfer import Posterior
    from jrinfer.cli import main

    f = np.arange(2.0, 30.01, 0.5)
    csv = tmp_path / "s.csv"
    csv.write_text("freq,power [uV^2/Hz]\n" + "".join(f"{x},{2.0 / x + np.exp(-0.5 * ((x - 10) / 1.2) ** 2)}\n" for x in f))
    fit = tmp_path / "fit"
    assert main(["fit", str(csv), "--kind", "spectrum", "--out", str(fit), "--quiet"]) in (0, 1)
    summary = json.loads((fit / "summary.json").read_text())
    capsys.readouterr()
    out = tmp_path / "ident"
    assert main(["identifiability", "--from-fit", str(fit), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    meta = rep["meta"]
    assert meta["kind"] == "spectrum" and meta["n_points"] == f.size and meta["from_fit"]["dir"] == str(fit)
    point = {n: p.get("gaussian_mean", p["mean"]) for n, p in summary["parameters"].items()}
    assert meta["noise"] == pytest.approx(math.exp(-0.5 * point["log_precision"]))
    free = [n for n in summary["parameters"] if n != "log_precision"]
    assert rep["local"]["names"] == free
    for n in free:  # the parameter set is the fit's Gaussian centre (not a weighted mean: summary.json's "mean")
        assert meta["theta"][n] == pytest.approx(point[n])
    # the fit's contractions are set beside the verdicts: an "informed" parameter the data alone cannot identify
    # contracts through the prior (here p_mean or gain trade with A, C: structural null directions)
    verdicts = rep["local"]["parameters"]
    both = [n for n in free if verdicts[n]["verdict"] == "not identifiable"
            and summary["parameters"][n]["contraction"] >= 0.2]
    assert (f"the fit in {fit}" in text) and (all(f"{n} (contraction" in text for n in both))
    # refusals name the flag
    assert main(["identifiability", "--from-fit", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "--from-fit" in capsys.readouterr().err
    assert main(["identifiability", "--from-fit", str(fit), "--kind", "evoked", "--out", str(tmp_path / "y")]) == 2
    assert "--kind evoked" in capsys.readouterr().err
    assert main(["identifiability", "--out", str(tmp_path / "z")]) == 2
    assert "--kind is required" in capsys.readouterr().err
    assert Posterior.from_netcdf(fit / "posterior.nc").observed["units"] == "uV^2/Hz"


def test_errors_name_the_argument(spectral_small):
    problem, theta = spectral_small
    with pytest.raises(ValueError, match="theta misses"):
        idf.local_analysis(problem, {"a": 100.0})
    with pytest.raises(ValueError, match="null_rtol"):
        idf.local_analysis(problem, theta, null_rtol=2.0)
    with pytest.raises(ValueError, match="name must be"):
        idf.profile_likelihood(problem, "B", theta)
    with pytest.raises(ValueError, match="kind"):
        idf.jansen_rit_problem("psd")
    with pytest.raises(ValueError, match="precision"):
        idf.local_analysis_function(lambda z: z, [1.0, 2.0], precision=[1.0])
    with pytest.raises(ValueError, match="n_datasets"):
        idf.recovery_study(problem, 0)


def test_import_jrinfer_stays_light():
    import subprocess
    import sys

    code = "import sys, jrinfer.identifiability; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_profile_without_theta_fits_the_optimum_first(spectral_small):
    problem, theta = spectral_small
    prof = idf.profile_likelihood(problem, "b", n_points=5)
    assert prof.verdict == "identified"
    centre = prof.values[np.nanargmin(prof.delta)]
    assert centre == pytest.approx(theta["b"], rel=2e-3)  # the data are the noise-free prediction at theta
