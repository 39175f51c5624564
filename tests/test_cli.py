"""The ``jrinfer`` command line: contract of DESIGN.md section 7."""

import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from jrinfer.cli import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _spectrum_csv(tmp_path, channels=("power",), peak=False):
    """``tmp_path/s.csv``: a 2-30 Hz spectrum in 0.5 Hz steps, 1/f (with ``peak``, plus a 10 Hz bump), per channel."""
    freqs = np.arange(2.0, 30.01, 0.5)
    power = 1.0 / freqs + (np.exp(-0.5 * ((freqs - 10) / 1.5) ** 2) if peak else 0.0)
    csv = tmp_path / "s.csv"
    csv.write_text(f"freq,{','.join(channels)}\n"
                   + "\n".join(f"{f}," + ",".join([f"{p}"] * len(channels)) for f, p in zip(freqs, power)))
    return csv


def test_fixed_points_json_contract(capsys):
    code, out, err = run(capsys, "fixed-points", "--set", "p_mean=60", "--json")
    assert code == 0, err
    records = json.loads(out)
    assert len(records) == 3
    for rec in records:
        assert set(rec) == {"state", "v", "eigenvalues", "stable", "dominant_frequency_hz"}
        assert len(rec["state"]) == 6 and len(rec["eigenvalues"]) == 6
        assert all(len(pair) == 2 for pair in rec["eigenvalues"])
    assert [r["stable"] for r in records] == [True, False, True]
    assert 9.0 < records[-1]["dominant_frequency_hz"] < 11.0
    code, out, _ = run(capsys, "fixed-points", "--set", "p_mean=220", "--json")
    records = json.loads(out)
    assert len(records) == 1 and records[0]["stable"] is False


def test_simulate_writes_time_v_csv_with_rk4_when_noiseless(tmp_path, capsys):
    path = tmp_path / "sim.csv"
    code, out, err = run(
        capsys, "simulate", "--set", "p_std=0", "--duration", "1", "--dt", "1e-4", "--out", str(path), "--json"
    )
    assert code == 0, err
    info = json.loads(out)
    assert info["method"] == "rk4" and info["n_samples"] == 10000
    with open(path) as fh:
        assert next(csv.reader(fh)) == ["time", "v [mV]"]
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    assert data.shape == (10000, 2)
    assert data[1, 0] == pytest.approx(1e-4)
    # refuses to overwrite without --force
    code, _, err = run(capsys, "simulate", "--set", "p_std=0", "--duration", "0.1", "--out", str(path))
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1
    code, _, _ = run(capsys, "simulate", "--duration", "0.1", "--out", str(path), "--force")
    assert code == 0


def test_spectrum_transfer_and_simulation(tmp_path, capsys):
    path = tmp_path / "psd.csv"
    args = ["spectrum", "--set", "p_mean=60", "--set", "p_std=0.05", "--fmin", "2", "--fmax", "40", "--df", "0.5"]
    code, _, err = run(capsys, *args, "--out", str(path))
    assert code == 0, err
    with open(path) as fh:
        assert next(csv.reader(fh)) == ["freq", "power [mV^2/Hz]"]
    from jrinfer import SpectrumData

    assert SpectrumData.from_csv(path).units == "mV^2/Hz"  # jrinfer fit reads the units back
    lin = np.loadtxt(path, delimiter=",", skiprows=1)
    assert lin.shape == (77, 2) and lin[0, 0] == 2.0 and lin[-1, 0] == 40.0
    assert 9.0 < lin[lin[:, 1].argmax(), 0] < 11.0
    path2 = tmp_path / "psd_sim.csv"
    code, _, err = run(capsys, *args, "--method", "simulation", "--duration", "60", "--out", str(path2))
    assert code == 0, err
    sim = np.loadtxt(path2, delimiter=",", skiprows=1)
    assert np.allclose(sim[:, 0], lin[:, 0])
    # same spectrum away from the (window-smeared) peak, within Welch noise
    away = np.abs(lin[:, 0] - 10) > 3
    assert np.median(sim[away, 1] / lin[away, 1]) == pytest.approx(1.0, abs=0.2)


def test_spectrum_transfer_refuses_oscillatory_regime(capsys):
    code, _, err = run(capsys, "spectrum", "--set", "p_mean=220")
    assert code == 2
    assert "unstable" in err and "--method simulation" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, match",
    [
        (["fixed-points", "--set", "p_mean=abc"], "expected a number"),
        (["fixed-points", "--set", "pmean=60"], "unknown parameter 'pmean'"),
        (["fixed-points", "--set", "p_mean"], "NAME=VALUE"),
        (["fixed-points", "--set", "a=-1"], "a must be > 0"),
        (["fixed-points", "--set", "A=nan"], "finite"),
        (["simulate", "--dt", "0"], "dt must be > 0"),
        (["spectrum", "--fmin", "10", "--fmax", "5"], "fmin < fmax"),
        (["simulate", "--dt", "0"], "jrinfer simulate: error: --dt must be > 0"),  # the flag, not the Python name
        (["spectrum", "--fmin", "-3"], "got --fmin -3.0, --fmax 40.0"),
        # argparse's own errors: one line too, no usage block
        (["simulate", "--duration", "abc"], "jrinfer simulate: error: argument --duration: invalid float value"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, args, match):
    try:
        code, out, err = run(capsys, *args)
    except SystemExit as stop:  # argparse exits itself on parse errors
        out, err = capsys.readouterr()
        code = stop.code
    assert code == 2
    assert match in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_installed_entry_point_has_help():
    for cmd in ([], ["fixed-points"], ["simulate"], ["spectrum"], ["demo"], ["report"]):
        res = subprocess.run(
            [sys.executable, "-m", "jrinfer.cli", *cmd, "--help"], capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0 and "usage" in res.stdout


def test_demo_writes_into_jrinfer_demo_by_default():
    from jrinfer.cli import build_parser

    assert build_parser().parse_args(["demo"]).out == "jrinfer-demo"


def test_demo_runs_and_writes_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run(capsys, "demo", "--out", str(out))
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hopf_p_mean"][0] == pytest.approx(89.83, abs=0.01)
    assert summary["fold_p_mean"] == pytest.approx(113.59, abs=0.01)
    assert 8 < summary["limit_cycle"]["frequency_hz"] < 13
    assert abs(summary["stable_spectrum"]["peak_hz_simulated"] - summary["stable_spectrum"]["peak_hz_linearised"]) < 0.5
    for name in ("bifurcation.csv", "alpha_limit_cycle.csv", "spectrum.csv", "fit/summary.json", "fit/posterior.nc"):
        assert (out / name).stat().st_size > 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "with demo.png" in stdout
        assert (out / "fit" / "fit.png").read_bytes()[:4] == b"\x89PNG"
        from selfcontained import check_self_contained

        page = (out / "report.html").read_text(encoding="utf-8")
        assert check_self_contained(page) >= 4  # fit, marginals, pair plot, model tour
        assert "truth" in page and "Hopf" in page and "open " in stdout and "report.html" in stdout
        assert (out / "fit" / "marginals.png").read_bytes()[:4] == b"\x89PNG"
    if (out / "fit_eegmat").exists():  # the recording is in the cache: fitted, and the demo says so
        assert "EEGMAT recording found in the data cache" in stdout
        assert "eegmat_subject0_occipital" in summary["fits"]
        if importlib.util.find_spec("matplotlib") is not None:
            assert (out / "fit_eegmat" / "report.html").stat().st_size > 10_000
    else:
        assert "EEGMAT recording not in the data cache" in stdout
    assert not [q.name for q in out.rglob(".*")]  # no temporary files left behind
    # the demo's fits can be set beside other fits of the same data (jrinfer compare checks this hash)
    assert len(json.loads((out / "fit" / "summary.json").read_text())["data"]["observed_sha256"]) == 64
    header = (out / "bifurcation.csv").read_text().splitlines()[0]
    assert header == "p_mean,v,stable"
    fit = summary["fits"]["synthetic"]
    assert fit["status"] == "converged"
    assert fit["truth_in_90"] >= len(fit["truth"]) - 1  # 90 % intervals of 7 parameters
    # never overwrites without --force
    code, _, err = run(capsys, "demo", "--out", str(out))
    assert code == 2 and "--force" in err


def test_fit_force_replaces_an_earlier_fits_outputs_and_keeps_the_users_files(tmp_path, capsys):
    csv = _spectrum_csv(tmp_path, peak=True)
    out = tmp_path / "o"
    out.mkdir()
    # what an earlier NUTS fit with --report left, and a note of the user's
    for name in ("summary.json", "posterior.nc", "trace.png", "pair.png", "report.html"):
        (out / name).write_text("earlier fit")
    (out / "notes.txt").write_text("mine")
    code, stdout, err = run(capsys, "fit", str(csv), "--kind", "spectrum", "--units", "uV^2/Hz", "--free", "a,b",
                            "--out", str(out), "--force")
    assert code in (0, 1), err
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "trace.png").exists() and not (out / "pair.png").exists() and not (out / "report.html").exists()
    summary = json.loads((out / "summary.json").read_text())
    import jrinfer

    assert summary["jrinfer_version"] == jrinfer.__version__ and summary["created_utc"].endswith("+00:00")
    assert "replacing an earlier fit's" in stdout and "report.html" in stdout


def test_fit_spectrum_of_a_csv_time_series(tmp_path, capsys):
    """A recording kept as text (time,value, e.g. the Bonn segments): Welch through MNE, units from the header."""
    rng = np.random.default_rng(0)
    fs = 200.0
    t = np.arange(int(60 * fs)) / fs
    x = 20.0 * np.sin(2 * np.pi * 10.0 * t) + 10.0 * rng.standard_normal(t.size)  # uV
    series = tmp_path / "series.csv"
    series.write_text("time,O1 [mV]\n" + "".join(f"{a!r},{b / 1000.0!r}\n" for a, b in zip(t.tolist(), x.tolist())))
    out = tmp_path / "o"
    code, _, err = run(capsys, "fit", str(series), "--kind", "spectrum", "--free", "a,b", "--out", str(out), "--json")
    assert code in (0, 1), err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fit_quality"]["peak_frequency_data_hz"] == pytest.approx(10.0, abs=0.25)
    assert summary["data"]["units"] == "uV^2/Hz" and summary["data"]["channels"] == ["O1"]
    # 4 s segments, half overlap, over 60 s: 29 averaged segments, and uV^2/Hz from the mV header (white noise of
    # 10 uV rms at 200 Hz has a one-sided density 2 * 100 / 200 = 1 uV^2/Hz)
    from jrinfer import Posterior

    post = Posterior.from_netcdf(out / "posterior.nc")
    power = np.asarray(post.observed["values"]).reshape(-1)
    freqs = np.asarray(post.observed["coord_values"])
    assert np.median(power[freqs > 20]) == pytest.approx(1.0, rel=0.25)
    # an uneven time column is refused with the reason
    series.write_text("time,O1\n0,1\n0.01,2\n0.03,1\n" + "".join(f"{0.03 + 0.01 * k!r},1\n" for k in range(1, 20)))
    code, _, err = run(capsys, "fit", str(series), "--kind", "spectrum", "--out", str(tmp_path / "u"))
    assert code == 2 and "not evenly sampled" in err


def test_fit_target_accept_reaches_nuts_and_is_refused_elsewhere(tmp_path, capsys):
    import argparse

    from jrinfer.cli import _backend

    ns = argparse.Namespace(backend="nuts", starts=None, boundary=None, target_accept=0.97, seed=0, chains=None,
                            draws=None, tune=None, quiet=True, no_progress=True, progress=False)
    nuts, _ = _backend(ns)
    assert nuts.target_accept == 0.97
    code, _, err = run(capsys, "fit", "x.csv", "--kind", "spectrum", "--backend", "laplace", "--target-accept", "0.95",
                       "--out", str(tmp_path / "o"))
    assert code == 2 and "--target-accept applies to --backend nuts" in err
    # evoked-only options with a spectrum: refused, not ignored (a fit-many manifest's condition column was ignored)
    code, _, err = run(capsys, "fit", "x.csv", "--kind", "spectrum", "--condition", "rest", "--out", str(tmp_path / "p"))
    assert code == 2 and "--condition applies to --kind evoked" in err
    code, _, err = run(capsys, "fit", "x.csv", "--kind", "spectrum", "--rest", "upper", "--out", str(tmp_path / "q"))
    assert code == 2 and "--rest applies to --kind evoked" in err
    # for an ERP it reaches the observation
    from jrinfer.cli import _observation, build_parser

    args = build_parser().parse_args(["fit", "x.csv", "--kind", "evoked", "--rest", "upper", "--out", "o"])
    assert _observation(args).rest == "upper"
    # the plot's title names an ERP's event (a fresh user's figure said only "data.csv")
    from jrinfer.cli import _data_title

    args = build_parser().parse_args(["fit", "d/data.csv", "--kind", "evoked", "--event-id", "audio", "--out", "o"])
    assert _data_title(args) == "data.csv (event audio)"


def test_fit_names_every_unknown_pick(tmp_path, capsys):
    csv = _spectrum_csv(tmp_path, channels=("O1", "O2"))
    code, _, err = run(capsys, "fit", str(csv), "--kind", "spectrum", "--units", "uV^2/Hz", "--picks", "Xx,O1,Yy",
                       "--out", str(tmp_path / "o"))
    assert code == 2 and "unknown channel name(s) ['Xx', 'Yy']; available channels: ['O1', 'O2']" in err, err


def test_fit_with_p_mean_not_free_holds_it_in_the_stable_regime(tmp_path, capsys):
    """--free without p_mean: the transfer method's default prior fixes p_mean at 60 (JR 1995's 220 is on the limit cycle)."""
    csv = _spectrum_csv(tmp_path, peak=True)
    code, _, err = run(capsys, "fit", str(csv), "--kind", "spectrum", "--units", "uV^2/Hz", "--free", "A,a,b,C",
                       "--out", str(tmp_path / "o"), "--json")
    assert code in (0, 1), err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["prior"]["fixed"]["p_mean"] == 60.0 and "p_mean" not in summary["parameters"]



def test_fix_names_unknown_parameters_as_such(tmp_path, capsys):
    """--fix Q=3 blames --fix and lists the parameters it knows (not the prior)."""
    csv = _spectrum_csv(tmp_path)
    code, _, err = run(capsys, "fit", str(csv), "--kind", "spectrum", "--units", "uV^2/Hz", "--fix", "Q=3",
                       "--out", str(tmp_path / "o"))
    assert code == 2 and "--fix: unknown parameter 'Q'; known: A, B, a, b, C" in err, err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "prior" not in errors[0] and "usage" not in err
    assert not (tmp_path / "o").exists()
