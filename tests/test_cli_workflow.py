"""Real-data workflow of the command line: --strict and the status of untrusted fits, progress off a terminal,
--quiet, and --fix/--vary/--prior/--free checked before any data file is read."""

import json
import math
import sys

import numpy as np
import pytest
import torch

from jrinfer.cli import EXIT_STRICT, main

F64 = torch.float64


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _spectrum_csv(path, *, alpha=True):
    """A JR-like spectrum (1/f plus, when ``alpha``, a 10 Hz peak); without it the default model misfits."""
    f = np.arange(2.0, 30.01, 0.5)
    p = 1.0 / f + (np.exp(-0.5 * ((f - 10) / 1.5) ** 2) if alpha else 0.0)
    if not alpha:  # a peak at 25 Hz, outside the alpha band, and a notch: not a JR spectrum
        p = 1.0 / f + 3.0 * np.exp(-0.5 * ((f - 25) / 0.7) ** 2) + 2.0 * np.exp(-0.5 * ((f - 4) / 0.5) ** 2)
    path.write_text("freq,power [uV^2/Hz]\n" + "\n".join(f"{a!r},{b!r}" for a, b in zip(f.tolist(), p.tolist())) + "\n")
    return path


@pytest.fixture(scope="module")
def misfit_csv(tmp_path_factory):
    return _spectrum_csv(tmp_path_factory.mktemp("d") / "odd.csv", alpha=False)


def test_untrusted_fit_says_warning_exits_0_and_strict_exits_nonzero(misfit_csv, tmp_path, capsys):
    base = ["fit", misfit_csv, "--kind", "spectrum", "--free", "a,b", "--starts", "1", "--quiet"]
    code, out, err = run(capsys, *base, "--out", tmp_path / "a")
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["status"] == "warning" and s["diagnostics"]["optimizer_converged"] is True, s["status_message"]
    assert "poor fit" in s["status_message"] or "peak missed" in s["status_message"]
    assert code == 0 and "status warning: " in out  # scripts relying on exit 0 for a completed fit keep working
    code, _, err = run(capsys, *base, "--strict", "--out", tmp_path / "b")
    assert code == EXIT_STRICT == 3 and "--strict: status warning" in err


def test_fit_many_strict_and_fit_status_column(misfit_csv, tmp_path, capsys):
    import csv

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path\n{misfit_csv}\n")
    args = ["fit-many", manifest, "--kind", "spectrum", "--workers", "0", "--free", "a,b", "--starts", "1", "--quiet"]
    code, out, err = run(capsys, *args, "--out", tmp_path / "c", "--json")
    assert code == 0, err
    assert json.loads(out)["n_not_converged"] == 1
    rows = list(csv.DictReader(open(tmp_path / "c" / "results.csv")))
    assert rows[0]["status"] == "ok" and rows[0]["fit_status"] == "warning" and rows[0]["fit_status_message"]
    code, _, err = run(capsys, *args, "--out", tmp_path / "d", "--strict")
    assert code == EXIT_STRICT, err


@pytest.fixture(scope="module")
def good_csv(tmp_path_factory):
    return _spectrum_csv(tmp_path_factory.mktemp("g") / "s.csv")


def test_laplace_progress_lines_off_a_terminal_and_quiet(good_csv, tmp_path, capsys, monkeypatch):
    from jrinfer.backends import _vl_engine

    monkeypatch.setattr(_vl_engine, "PROGRESS_INTERVAL_S", 0.0)  # every iteration, so a short fit shows them
    base = ["fit", good_csv, "--kind", "spectrum", "--free", "a,b", "--starts", "2", "--max-iter", "6"]
    code, _, err = run(capsys, *base, "--out", tmp_path / "a")  # capsys: stderr is not a terminal
    lines = [ln for ln in err.splitlines() if ln.startswith("variational Laplace")]
    assert lines[0].startswith("variational Laplace: screening 128 prior draws for up to 2 starts")
    assert any(ln.startswith("variational Laplace, start 1 of 2: iteration 1, F = ") and ln.endswith("s elapsed")
               for ln in lines)
    ends = [ln for ln in lines if " after " in ln and " iterations, F = " in ln]
    assert [e.split(":")[0].split(" (")[0] for e in ends] == ["variational Laplace, start 1 of 2",
                                                               "variational Laplace, start 2 of 2"]
    # after the first start, each says how long the rest would take (16 starts of a condition fit ran 7.5 min
    # with no end in sight)
    assert ends[1].startswith("variational Laplace, start 2 of 2 (about ") and " left if all 2 run):" in ends[1]
    assert "\r" not in err  # no bar redrawn into a log
    code, _, err = run(capsys, *base, "--quiet", "--out", tmp_path / "b")
    assert "variational Laplace" not in err and "it/s" not in err
    # on a terminal: a tqdm bar instead of lines
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run(capsys, *base, "--out", tmp_path / "c")
    assert "it/s" in err or "s/it" in err
    assert not any(ln.startswith("variational Laplace, start 1 of 2: iteration") for ln in err.splitlines())


def test_sampler_progress_lines_with_no_progress_and_quiet_silences(good_csv, tmp_path, capsys):
    """SMC through the CLI: --no-progress (no bars) prints a start line and an end line (and a line per tempering
    stage at most every 10 s, and each chain's last); --quiet prints none of them. (The default off a terminal is
    the same "lines" mode: test_progress_flags_map_to_one_backend_setting and VL's test above.)"""
    pytest.importorskip("pymc")
    base = ["fit", good_csv, "--kind", "spectrum", "--free", "a,b", "--backend", "smc", "--chains", "2",
            "--draws", "60"]
    for flags, name in ((["--no-progress"], "n"),):
        code, _, err = run(capsys, *base, *flags, "--out", tmp_path / name)
        lines = [ln for ln in err.splitlines() if ln.startswith("SMC: ")]
        assert lines[0].startswith("SMC: 2 chain(s) x 60 particles") and "one likelihood evaluation takes" in lines[0]
        s = json.loads((tmp_path / name / "summary.json").read_text())
        assert lines[-1].startswith("SMC: done in ") and lines[-1].endswith(f"status {s['status']}")
        assert f"R-hat max {s['diagnostics']['rhat_max']:.3f}" in lines[-1]
        done = [ln for ln in lines if " done stage " in ln]
        assert [ln.split(" done stage")[0] for ln in done] == ["SMC: chain 1 of 2", "SMC: chain 2 of 2"]
        # the start line gives a typical total; once chain 1 is done, the time left is that of the chains after it
        assert "typically about " in lines[0] and " in all (14 stages of 6 MH steps per chain" in lines[0]
        assert ", about " in done[0] and " left (a chain took " in done[0] and " left " not in done[1]
        assert "\r" not in err and "Initializing SMC sampler" not in err
    code, _, err = run(capsys, *base, "--quiet", "--out", tmp_path / "q")
    assert (tmp_path / "q" / "summary.json").is_file()
    assert "SMC" not in err and "Initializing" not in err and "Sampling" not in err


def test_progress_flags_map_to_one_backend_setting():
    """--progress: bars; --no-progress: one-line messages (no bars); default: bars on a terminal, else lines
    ("auto"); --quiet: silent -- the same for every backend, built by one function."""
    from jrinfer.cli import _backend, build_parser

    def built(*flags, backend="laplace"):
        args = build_parser().parse_args(["fit", "x.csv", "--kind", "spectrum", "--out", "o", "--backend", backend,
                                          *flags])
        return _backend(args)[0].progress

    for backend in ("laplace", "nuts", "smc"):
        assert built(backend=backend) == "auto"
        assert built("--progress", backend=backend) == "bar"
        assert built("--no-progress", backend=backend) == "lines"
        assert built("--quiet", backend=backend) is False
        assert built("--progress", "--quiet", backend=backend) is False


def test_lines_progress_rate_is_modest(capsys):
    """With the default interval (10 s) a fit of a second prints one line per start, none per iteration."""
    from jrinfer.backends._vl_engine import LaplaceEngine

    eng = LaplaceEngine(progress="lines", max_iter=50)
    x = torch.linspace(0, 1, 30, dtype=torch.float64)
    y = 2.0 * x + 0.5 + 0.01 * torch.randn(30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = eng.fit_function(lambda th: th[0] * x + th[1], y, torch.zeros(2, dtype=torch.float64),
                           torch.eye(2, dtype=torch.float64))
    err = capsys.readouterr().err.strip().splitlines()
    assert res.converged and len(err) == 1 and err[0].startswith(f"variational Laplace: converged after {res.n_iter}")
    with pytest.raises(ValueError, match="progress"):
        LaplaceEngine(progress="loud")


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--fix", "Q=3"], "--fix: unknown parameter 'Q'; known: A, B, a, b, C"),
        (["--fix", "gian=2"], "--fix: unknown parameter 'gian' (did you mean 'gain'?)"),
        (["--fix", "A=abc"], "--fix A: expected a number, got 'abc'"),
        (["--fix", "A=inf"], "--fix A: expected a finite number"),
        (["--conditions", "rest,task", "--vary", "zz"], "--vary: unknown parameter 'zz'; known: A, B"),
        (["--conditions", "rest,task", "--vary", "a", "--fix", "delta_b_task=0"],
         "--fix: unknown parameter 'delta_b_task'"),
        (["--free", "A,B,zz"], "--free: unknown parameter 'zz'; known: A, B, a, b, C"),
        (["--free", "A,gain"], "--free gain: gain is a parameter of the observation, free in every fit"),
    ],
)
def test_bad_names_fail_before_any_file_is_read(flags, expected, tmp_path, capsys, monkeypatch):
    """The data path does not exist and the readers would fail: the name check must come first."""
    import jrinfer.cli as cli

    def no_reading(*a, **k):
        raise AssertionError("DATA was read before --fix/--vary/--prior were checked")

    monkeypatch.setattr(cli, "_load_data", no_reading)
    missing = tmp_path / "nope.edf"
    data = [missing, missing] if "--conditions" in flags else [missing]
    code, _, err = run(capsys, "fit", *data, "--kind", "spectrum", *flags, "--out", tmp_path / "o")
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_prior_file_names_checked_before_reading(tmp_path, capsys, monkeypatch):
    import jrinfer.cli as cli

    monkeypatch.setattr(cli, "_load_data", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    prior = tmp_path / "p.json"
    prior.write_text(json.dumps({"distributions": {"bb": {"dist": "lognormal", "median": 50, "sd_log": 0.2}}}))
    code, _, err = run(capsys, "fit", tmp_path / "nope.edf", "--kind", "evoked", "--prior", prior,
                       "--out", tmp_path / "o")
    assert code == 2 and f"--prior {prior}: unknown parameter 'bb' (did you mean 'b'?)" in err, err
    assert "input_latency" in err  # the evoked kind's own parameters are known
    # good names, a condition's own ones included, pass the early check and reading starts
    with pytest.raises(AssertionError, match="read"):
        main(["fit", str(tmp_path / "x.csv"), str(tmp_path / "y.csv"), "--kind", "spectrum", "--conditions",
              "rest,task", "--vary", "a", "--fix", "delta_a_task=0.1", "--fix", "log_precision_task=3",
              "--fix", "gain=2", "--out", str(tmp_path / "o")])


def test_fit_many_refuses_a_bad_fix_before_reading_or_starting(tmp_path, capsys, monkeypatch):
    import jrinfer.cli as cli

    monkeypatch.setattr(cli, "_load_data", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,fix\nnope.edf,\nnope2.edf,Qx=1\n")
    code, _, err = run(capsys, "fit-many", manifest, "--kind", "spectrum", "--workers", "0", "--fix", "Z=1",
                       "--out", tmp_path / "o")
    assert code == 2 and "--fix: unknown parameter 'Z'" in err and not (tmp_path / "o").exists(), err
    from jrinfer.distributed import _file_specs

    specs = _file_specs([{"path": "a.edf"}, {"path": "b.edf", "fix": "Qx=1"}], "laplace", "spectrum", {})
    assert "invalid" not in specs[0] and "--fix: unknown parameter 'Qx'" in specs[1]["invalid"]


def test_boundary_option_reaches_nuts_and_is_refused_for_other_backends(tmp_path, capsys, monkeypatch):
    """``--boundary pole|hopf`` is passed to ``NUTS(boundary=...)``; with another backend it is one line naming it."""
    import jrinfer.backends.pymc as pymc_backend

    data = _spectrum_csv(tmp_path / "alpha.csv")
    code, _, err = run(capsys, "fit", data, "--kind", "spectrum", "--boundary", "pole", "--out", tmp_path / "x")
    assert code == 2 and err.count("\n") == 1 and "--boundary" in err and "--backend laplace" in err
    assert not (tmp_path / "x").exists()  # refused before anything was fitted or written

    seen = {}

    class Stop(Exception):
        pass

    class RecordingNUTS:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def fit(self, problem):
            raise Stop

    monkeypatch.setattr(pymc_backend, "NUTS", RecordingNUTS)
    with pytest.raises(Stop):
        main(["fit", str(data), "--kind", "spectrum", "--backend", "nuts", "--boundary", "pole", "--quiet",
              "--out", str(tmp_path / "y")])
    assert seen["boundary"] == "pole"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(data), "--kind", "spectrum", "--backend", "nuts", "--boundary", "wall", "--out",
              str(tmp_path / "z")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--boundary" in err and "invalid choice" in err


def test_input_peak_is_the_maximum_of_the_pulse():
    """input_amplitude q means a pulse that peaks at q n^n e^-n pulses/s at input_latency + n input_width."""
    from jrinfer import EvokedObservation, PulseInput

    q = torch.tensor([0.03, 0.5, 2.0], dtype=torch.float64)
    t0 = torch.tensor([0.01, 0.0, 0.05], dtype=torch.float64)
    w = torch.tensor([0.005, 0.005, 0.012], dtype=torch.float64)
    for n in (7.0, 3.0):
        rate, time = EvokedObservation(shape_n=n).input_peak(q, t0, w)
        t = torch.linspace(0.0, 0.4, 400_001, dtype=torch.float64)  # 1 us grid
        pulse = PulseInput(q=q[:, None], w=w[:, None], n=n, onset=t0[:, None])(t)
        peak, at = pulse.max(-1)
        torch.testing.assert_close(rate, peak, rtol=1e-9, atol=0.0)
        torch.testing.assert_close(time, t[at], rtol=0.0, atol=2e-6)
    assert float(EvokedObservation().input_peak(0.5, 0.0, 0.005)[0]) == pytest.approx(375.5, abs=0.1)  # JR 1995


def test_evoked_fit_prints_the_input_pulse_peak(tmp_path, capsys):
    from jrinfer import EvokedData, EvokedObservation

    times = torch.arange(-0.05, 0.3, 0.002, dtype=torch.float64)
    obs = EvokedObservation()
    template = EvokedData.from_arrays(times, torch.zeros(1, times.numel(), dtype=torch.float64), units="uV")
    truth = {"p_mean": torch.tensor(60.0, dtype=F64), "input_amplitude": torch.tensor(0.05, dtype=F64),
             "input_latency": torch.tensor(0.03, dtype=F64), "input_width": torch.tensor(0.005, dtype=F64),
             "gain": torch.tensor(1e-2, dtype=F64), "baseline": torch.tensor(0.0, dtype=F64),
             "log_precision": torch.tensor(0.0, dtype=F64)}
    y = obs.sample(obs.predict(truth, template), truth, template, torch.Generator().manual_seed(0)).reshape(-1)
    csv = tmp_path / "erp.csv"
    csv.write_text("time,value [uV]\n" + "\n".join(f"{a!r},{b!r}" for a, b in zip(times.tolist(), y.tolist())) + "\n")
    code, out, err = run(capsys, "fit", csv, "--kind", "evoked", "--free", "A", "--starts", "1", "--quiet",
                         "--out", tmp_path / "o")
    assert code in (0, 1), err
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    pulse = s["input_pulse"]
    from jrinfer import Posterior

    post = Posterior.from_netcdf(tmp_path / "o" / "posterior.nc")
    q = post.draws[..., post.names.index("input_amplitude")].ravel()
    factor = 7.0 ** 7 * math.exp(-7.0)
    assert pulse["peak_rate"]["median"] == pytest.approx(factor * float(np.median(q)), rel=1e-9)
    assert pulse["peak_rate"]["units"] == "pulses/s" and pulse["peak_time"]["units"] == "s"
    assert pulse["peak_rate"]["q05"] <= pulse["peak_rate"]["median"] <= pulse["peak_rate"]["q95"]
    line = next(ln for ln in out.splitlines() if ln.startswith("  input pulse: peaks at "))
    assert f"{pulse['peak_rate']['median']:.3g} pulses/s" in line and "751 x input_amplitude at input_latency + 7 input_width" in line
    assert pulse["factor"] == pytest.approx(factor, rel=1e-12) and "751 q pulses/s" in pulse["meaning"]
    code, _, err = run(capsys, "report", tmp_path / "o")  # the report shows it too
    html = (tmp_path / "o" / "report.html").read_text()
    assert code == 0 and "input pulse peak" in html and "751 q pulses/s" in html, err
