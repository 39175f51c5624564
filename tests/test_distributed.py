"""Scale-out on Dask (jrinfer.distributed, jrinfer._chunks): same results as the local loop, faults, resume.

One module-scoped ``LocalCluster`` of 2 worker processes (1 thread each) is
shared by every test that needs it; the fits are small variational Laplace
fits of synthetic spectra (20 frequencies).
"""

import csv
import json
import math
import operator
import os
import threading
import time

import numpy as np
import pytest
import torch

from jrinfer import InverseProblem, SpectrumData, SpectrumObservation, fit_many, simulate_many
from jrinfer._chunks import chunk_seed, map_chunks, task_key
from jrinfer.backends.laplace import VariationalLaplace
from jrinfer.cli import main

F64 = torch.float64
distributed = pytest.importorskip("distributed")


# --------------------------------------------------------------------------- #
# fixtures
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def client():
    from jrinfer.distributed import dask_client

    c = dask_client(n_workers=2)
    c.wait_for_workers(2, timeout=120)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


def _synthetic(seed: int, p_mean: float = 60.0):
    """A stable-regime JR spectrum (20 frequencies) with 1/f and floor, drawn from the observation model."""
    freqs = torch.arange(2.0, 40.01, 2.0, dtype=F64)
    obs = SpectrumObservation()
    template = SpectrumData.from_arrays(freqs, torch.ones(1, freqs.numel(), dtype=F64), units="uV^2/Hz", n_segments=20)
    truth = {
        "p_mean": torch.tensor(p_mean, dtype=F64),
        "p_std": torch.tensor(1.0, dtype=F64),
        "gain": torch.tensor(3e-3, dtype=F64),
        "ap_amplitude": torch.tensor(2.0, dtype=F64),
        "ap_exponent": torch.tensor(1.2, dtype=F64),
        "floor": torch.tensor(0.02, dtype=F64),
        "log_precision": torch.tensor(math.log(20.0), dtype=F64),
    }
    y = obs.sample(obs.predict(truth, template), truth, template, torch.Generator().manual_seed(seed))
    return freqs, y


def _write_spectrum(path, seed, p_mean=60.0):
    freqs, y = _synthetic(seed, p_mean)
    np.savetxt(path, np.column_stack([freqs.numpy(), y[0].numpy()]), delimiter=",", header="freq,power", comments="")
    return path


def _problem(seed, p_mean=60.0):
    freqs, y = _synthetic(seed, p_mean)
    return InverseProblem(SpectrumObservation(), None, SpectrumData.from_arrays(freqs, y, units="uV^2/Hz", n_segments=20))


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- #
# map_chunks and simulate_many
# --------------------------------------------------------------------------- #
def test_workers_import_this_checkout(client):
    import jrinfer

    files = client.run(lambda: __import__("jrinfer").__file__)
    assert set(files.values()) == {jrinfer.__file__}


def test_map_chunks_on_dask_keeps_chunk_order(client):
    args = [(k, 3) for k in range(7)]
    assert map_chunks(operator.pow, args, client=client, progress=False) == [k**3 for k in range(7)]


def test_map_chunks_passes_on_a_chunk_error(client):
    with pytest.raises(ZeroDivisionError):
        map_chunks(operator.truediv, [(1, 1), (1, 0), (2, 1)], client=client, progress=False, retries=0)


def test_task_keys_are_deterministic_and_content_based():
    a = task_key("x", operator.add, (torch.arange(4.0), 1), 0)
    assert a == task_key("x", operator.add, (torch.arange(4.0), 1), 0)
    assert a != task_key("x", operator.add, (torch.arange(4.0) + 1, 1), 0)
    with pytest.raises(ValueError, match="retries"):
        map_chunks(operator.add, [(1, 2)], retries=-1)


def _draws(n):
    g = torch.Generator().manual_seed(11)
    return {
        "p_mean": 60.0 + 80.0 * torch.rand(n, generator=g, dtype=F64),
        "C": 100.0 + 60.0 * torch.rand(n, generator=g, dtype=F64),
        "p_std": 30.0,
    }


SIM = dict(duration=2.0, transient=0.5, segment=1.0, chunk_size=4, root_seed=5, progress=False)


@pytest.fixture(scope="module")
def local_training_set():
    return simulate_many(_draws(10), **SIM)


def test_simulate_many_chunks_are_seeded_from_the_root_seed(local_training_set):
    """Chunk i is the model's own simulation of its parameter sets with chunk_seed(root, i)."""
    from jrinfer import JansenRit

    params = _draws(10)
    ref = JansenRit(p_mean=params["p_mean"][4:8], C=params["C"][4:8], p_std=30.0).simulated_psd(
        2.0, 1e-4, segment=1.0, record_every=10, transient=0.5, seed=chunk_seed(5, 1), initial_state="equilibrium"
    )
    assert torch.equal(local_training_set.psd[4:8], ref.psd)
    assert local_training_set.psd.shape == (10, ref.freqs.numel())
    assert not bool(local_training_set.diverged.any())
    # the band cut made on the workers is the full result's band
    band = simulate_many(_draws(10), fmin=2.0, fmax=40.0, **SIM)
    keep = (local_training_set.freqs >= 2.0) & (local_training_set.freqs <= 40.0)
    assert torch.equal(band.freqs, local_training_set.freqs[keep]) and band.freqs.numel() == 39
    assert torch.equal(band.psd, local_training_set.psd[:, keep])
    # another root seed gives another training set
    other = simulate_many(_draws(10), **{**SIM, "root_seed": 6})
    assert not torch.equal(other.psd, local_training_set.psd)


def test_simulate_many_bit_identical_with_2_and_1_workers(client, local_training_set):
    import dask

    with distributed.get_task_stream(client) as stream:
        two = simulate_many(_draws(10), client=client, **SIM)
    assert torch.equal(two.psd, local_training_set.psd)
    assert torch.equal(two.diverged, local_training_set.diverged)
    assert len(stream.data) == 3  # 10 sets in chunks of 4
    # every chunk on one worker (annotations reach client.submit)
    first = sorted(client.scheduler_info()["workers"])[0]
    with distributed.get_task_stream(client) as stream, dask.annotate(workers=[first], allow_other_workers=False):
        one = simulate_many(_draws(10), client=client, **SIM)
    assert {t["worker"] for t in stream.data} == {first}
    assert torch.equal(one.psd, local_training_set.psd)


def test_npe_training_set_on_dask_equals_the_local_one(client):
    """NPE's training simulations (simulated spectra, every regime) are the same on the cluster as in-process."""
    pytest.importorskip("sbi")
    from jrinfer.backends.npe import simulate_training_set

    freqs = torch.arange(2.0, 40.01, 0.5, dtype=F64)
    template = SpectrumData.from_arrays(freqs, 20.0 / freqs, units="uV^2/Hz", metadata={"seg_length_s": 2.0})
    obs = SpectrumObservation(method="simulation")
    problem = InverseProblem(obs, obs.default_prior(template, free=("a", "b", "p_mean")), template)
    local = simulate_training_set(problem, 24, seed=5, chunk_size=8, progress=False)
    remote = simulate_training_set(problem, 24, seed=5, chunk_size=8, client=client, progress=False)
    assert torch.equal(local.theta, remote.theta) and torch.equal(local.valid, remote.valid)
    assert torch.equal(local.x.nan_to_num(), remote.x.nan_to_num()) and torch.equal(local.regime, remote.regime)
    assert local.reasons == remote.reasons and int(local.valid.sum()) > 12


@pytest.mark.parametrize(
    "params, match",
    [
        ({}, "params"),
        ({"p_mean": [60.0, 70.0], "C": [1.0, 2.0, 3.0]}, "length"),
        ({"nope": [1.0]}, "unknown"),
        ({"p_mean": 60.0}, "1-D"),
        ({"p_mean": [60.0, float("nan")]}, "p_mean"),
        ({"p_mean": [60.0], "fmax": 1.0, "fmin": 2.0}, "fmax"),
        ({"p_mean": [60.0], "chunk_size": 0}, "chunk_size"),
    ],
)
def test_simulate_many_refuses_bad_parameters(params, match):
    params = dict(params)
    options = {k: params.pop(k) for k in ("fmin", "fmax", "chunk_size") if k in params}
    with pytest.raises(ValueError, match=match):
        simulate_many(params, progress=False, **options)


# --------------------------------------------------------------------------- #
# cohort fitting
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two synthetic spectra, a two-line CSV and a manifest listing the first file twice."""
    d = tmp_path_factory.mktemp("cohort")
    _write_spectrum(d / "a.csv", seed=1)
    _write_spectrum(d / "b.csv", seed=2, p_mean=90.0)
    (d / "bad.csv").write_text("freq,power\n2,1\n")
    (d / "manifest.csv").write_text("path,subject\na.csv,s1\nb.csv,s2\nbad.csv,s3\na.csv,s1\n")
    return d


FIT_OPTS = ["--kind", "spectrum", "--units", "uV^2/Hz"]


def _params(row):
    return {k[: -len("_mean")]: float(v) for k, v in row.items() if k.endswith("_mean")}


def test_fit_many_cli_on_a_scheduler_matches_the_local_loop(client, cohort, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["fit-many", str(cohort / "manifest.csv"), *FIT_OPTS, "--out", str(out),
                 "--scheduler", client.scheduler.address, "--no-progress"])
    assert code == 1  # one item failed
    rows = _rows(out / "results.csv")
    assert [r["item"] for r in rows] == ["0001-a", "0002-b", "0003-bad", "0004-a"]
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "ok"]
    assert [r["subject"] for r in rows] == ["s1", "s2", "s3", "s1"]
    assert rows[0]["channels"] == "power" and rows[0]["data_units"] == "uV^2/Hz"
    assert "at least 12 frequencies" in rows[2]["error"] and rows[0]["error"] == ""
    assert "0003-bad: error: DATA" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["0001-a", "0002-b", "0003-bad", "0004-a", "fit-many.json",
                                                     "results.csv"]
    for item in ("0001-a", "0002-b", "0004-a"):
        assert {"summary.json", "posterior.nc", "result.json", "log.txt"} <= {p.name for p in (out / item).iterdir()}
    # the local loop: jrinfer fit of each file in this process
    for row, name in ((rows[0], "a"), (rows[1], "b"), (rows[3], "a")):
        assert main(["fit", str(cohort / f"{name}.csv"), *FIT_OPTS, "--out", str(tmp_path / f"local-{row['item']}")]) == 0
        local = json.loads((tmp_path / f"local-{row['item']}" / "summary.json").read_text())
        for p, est in local["parameters"].items():  # the weighted figures where the Gaussian misstates a marginal
            mean, sd = (est["weighted_mean"], est["weighted_sd"]) if "weighted_mean" in est else (est["mean"], est["sd"])
            assert float(row[f"{p}_mean"]) == pytest.approx(mean, rel=1e-9, abs=1e-12), (row["item"], p)
            assert float(row[f"{p}_sd"]) == pytest.approx(sd, rel=1e-9, abs=1e-12), (row["item"], p)
        assert float(row["log_evidence"]) == pytest.approx(local["log_evidence"], rel=1e-9)
        assert row["fit_status"] == local["status"]
    assert _params(rows[0]) != _params(rows[1])  # two different recordings, two different fits

    # resume: delete one item, leave a dead attempt behind; only that item is fitted again (here, no Dask)
    before = {i: (out / i / "result.json").stat().st_mtime_ns for i in ("0001-a", "0003-bad", "0004-a")}
    import shutil

    shutil.rmtree(out / "0002-b")
    (out / ".partial-0002-b-deadbeef").mkdir()
    assert main(["fit-many", str(cohort / "manifest.csv"), *FIT_OPTS, "--out", str(out), "--workers", "0",
                 "--no-progress"]) == 1
    assert {i: (out / i / "result.json").stat().st_mtime_ns for i in before} == before
    again = _rows(out / "results.csv")
    assert [r["item"] for r in again] == [r["item"] for r in rows]
    assert _params(again[1]) == pytest.approx(_params(rows[1]), rel=1e-9)
    assert not list(out.glob(".partial-*"))
    # another fit option into the same folder is refused
    assert main(["fit-many", str(cohort / "manifest.csv"), *FIT_OPTS, "--fmin", "4", "--out", str(out),
                 "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "holds a fit-many run with other options" in err and "--fmin: None then, 4.0 now" in err, err


def test_fit_many_problems_on_the_cluster_match_the_local_loop(client):
    problems = [_problem(3), _problem(4, p_mean=100.0)]
    rows = fit_many(problems, VariationalLaplace(max_iter=64), client=client, progress=False)
    assert [r["item"] for r in rows] == ["0001", "0002"] and all(r["status"] == "ok" for r in rows)
    for row, problem in zip(rows, problems):
        local = VariationalLaplace(max_iter=64).fit(problem)
        np.testing.assert_allclose(row["posterior"].mean, local.mean, rtol=1e-9)
        np.testing.assert_allclose(row["posterior"].sd, local.sd, rtol=1e-9)
        est = local.summary()["parameters"]["A"]  # the weighted figure where the Gaussian misstates A's marginal
        assert row["A_mean"] == pytest.approx(est.get("weighted_mean", est["mean"]), rel=1e-9)
        assert row["diag_free_energy"] == pytest.approx(local.diagnostics["free_energy"], rel=1e-9)


@pytest.mark.slow
def test_killed_worker_during_a_cohort_loses_and_duplicates_nothing(client, cohort, tmp_path):
    out = tmp_path / "killed"
    files = [cohort / "a.csv", cohort / "b.csv", cohort / "a.csv", cohort / "b.csv"]
    result = {}

    def run():
        try:
            result["rows"] = fit_many(files, "laplace", client=client, out=out, kind="spectrum",
                                      options={"units": "uV^2/Hz"}, progress=False)
        except BaseException as err:  # pragma: no cover - surfaced below
            result["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    victim, deadline = None, time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        busy = {w: ts for w, ts in client.processing().items() if any("jrinfer-fit" in str(t) for t in ts)}
        if busy and list(out.glob(".partial-*")):
            time.sleep(1.0)  # the fit is under way in that worker
            busy = {w: ts for w, ts in client.processing().items() if any("jrinfer-fit" in str(t) for t in ts)}
            victim = sorted(busy)[0] if busy else None
        else:
            time.sleep(0.1)
    assert victim is not None, "no fit task seen running"
    try:
        client.run(os._exit, 1, workers=[victim], on_error="ignore")
    except Exception:  # the connection to the dying worker may break first
        pass
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in result
    rows = _rows(out / "results.csv")
    assert [r["item"] for r in rows] == ["0001-a", "0002-b", "0003-a", "0004-b"]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert sorted(p.name for p in out.iterdir()) == ["0001-a", "0002-b", "0003-a", "0004-b", "results.csv"]
    assert _params(rows[0]) == pytest.approx(_params(rows[2]), rel=1e-9)
    assert _params(rows[1]) == pytest.approx(_params(rows[3]), rel=1e-9)
    assert victim not in client.scheduler_info()["workers"]  # it did die (the nanny started a new one)


def test_fit_item_is_idempotent(cohort, tmp_path):
    from jrinfer.distributed import _file_specs, fit_item

    (spec,) = _file_specs([cohort / "bad.csv"], "laplace", "spectrum", {"units": "uV^2/Hz"})
    first = fit_item(spec, str(tmp_path))
    stamp = (tmp_path / spec["id"] / "result.json").stat().st_mtime_ns
    assert first["status"] == "error" and "at least 12" in first["error"]
    assert fit_item(spec, str(tmp_path)) == first  # a retried task returns the finished folder's row
    assert (tmp_path / spec["id"] / "result.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [spec["id"]]


def test_a_bad_value_in_one_manifest_row_is_that_rows_error(cohort, tmp_path):
    from jrinfer.distributed import _file_specs, fit_item

    specs = _file_specs([{"path": cohort / "bad.csv", "fmin": "low"}, cohort / "bad.csv"], "laplace", "spectrum", {})
    rows = [fit_item(s, str(tmp_path)) for s in specs]
    assert "--fmin: invalid float value: 'low'" in rows[0]["error"]
    assert "at least 12" in rows[1]["error"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d: fit_many([], out=d), "items"),
        (lambda d: fit_many([d / "a.csv", _problem(1)], out=d, kind="spectrum"), "mix"),
        (lambda d: fit_many([d / "a.csv"], kind="spectrum"), "out"),
        (lambda d: fit_many([d / "a.csv"], out=d), "kind"),
        (lambda d: fit_many([d / "a.csv"], out=d, kind="spectrum", options={"fmn": 3}), "unknown option 'fmn'"),
        (lambda d: fit_many([d / "a.csv"], out=d, kind="spectrum", options={"fmin": "low"}), "--fmin"),
        (lambda d: fit_many([d / "a.csv"], "bayes", out=d, kind="spectrum"), "backend"),
        (lambda d: fit_many([d / "a.csv"], "npe", out=d, kind="spectrum"), "estimator"),
        (lambda d: fit_many([_problem(1)], object()), "backend"),
        (lambda d: fit_many(d / "a.csv", out=d, kind="spectrum"), "'path' column"),
    ],
)
def test_fit_many_refuses_bad_input(cohort, tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(cohort)


def test_fit_many_cli_errors_are_one_line(cohort, tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("user file")
    assert main(["fit-many", str(cohort / "manifest.csv"), *FIT_OPTS, "--out", str(tmp_path), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jrinfer fit-many: error: --out") and "--force" in err and "\n" not in err
    assert main(["fit-many", str(cohort / "nope.csv"), *FIT_OPTS, "--out", str(tmp_path / "o"), "--workers", "0"]) == 2
    assert "MANIFEST" in capsys.readouterr().err
    assert main(["fit-many", str(cohort / "manifest.csv"), *FIT_OPTS, "--out", str(tmp_path / "o"),
                 "--workers", "-1"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_fit_many_help_lists_fit_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit-many", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--scheduler", "--workers", "--units", "--picks", "--fmin", "--fix"):
        assert flag in text


def test_fit_many_without_resume_refuses_finished_items(cohort, tmp_path):
    fit_many([cohort / "bad.csv"], out=tmp_path, kind="spectrum", progress=False)
    with pytest.raises(ValueError, match="resume=True"):
        fit_many([cohort / "bad.csv"], out=tmp_path, kind="spectrum", resume=False, progress=False)
    rows = fit_many([cohort / "bad.csv"], out=tmp_path, kind="spectrum", progress=False)  # resumed: nothing to do
    assert [r["status"] for r in rows] == ["error"] and len(_rows(tmp_path / "results.csv")) == 1


@pytest.mark.slow
def test_a_whole_cluster_going_down_resumes_from_what_was_written(cohort, tmp_path):
    """The cluster dies mid-run: finished items stay, lost ones are reported (not written) and a rerun fits them."""
    from jrinfer.distributed import dask_client

    out = tmp_path / "restart"
    files = [cohort / "a.csv", cohort / "b.csv", cohort / "a.csv"]
    own = dask_client(n_workers=1)  # items one after the other: the later ones are surely lost
    result = {}

    def run():
        result["rows"] = fit_many(files, client=own, out=out, kind="spectrum", options={"units": "uV^2/Hz"},
                                  progress=False)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while not list(out.glob("0*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    own.cluster.close()  # every worker and the scheduler go away
    thread.join(timeout=120)
    own.close()
    assert not thread.is_alive()
    lost = [r for r in result["rows"] if r["status"] == "error"]
    assert lost and all("task failed on the cluster" in r["error"] for r in lost)
    written = {p.name for p in out.glob("0*")}
    assert written and not {r["item"] for r in lost} & written  # a lost item leaves no folder behind
    assert all(_read(out / i)["status"] == "ok" for i in written)
    # the rerun (no Dask this time) fits exactly the lost items
    stamps = {i: (out / i / "result.json").stat().st_mtime_ns for i in written}
    rows = fit_many(files, out=out, kind="spectrum", options={"units": "uV^2/Hz"}, progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert {i: (out / i / "result.json").stat().st_mtime_ns for i in written} == stamps
    assert sorted(p.name for p in out.iterdir()) == ["0001-a", "0002-b", "0003-a", "results.csv"]


def _read(folder):
    return json.loads((folder / "result.json").read_text())


def test_retry_errors_fits_a_fixed_file_again(cohort, tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("freq,power\n2,1\n")
    (row,) = fit_many([bad], out=tmp_path / "o", kind="spectrum", options={"units": "uV^2/Hz"}, progress=False)
    assert row["status"] == "error"
    _write_spectrum(bad, seed=1)  # the file is fixed
    (row,) = fit_many([bad], out=tmp_path / "o", kind="spectrum", options={"units": "uV^2/Hz"}, progress=False)
    assert row["status"] == "error"  # resume keeps the recorded error ...
    (row,) = fit_many([bad], out=tmp_path / "o", kind="spectrum", options={"units": "uV^2/Hz"}, retry_errors=True,
                      progress=False)
    assert row["status"] == "ok" and row["diag_optimizer_converged"]  # ... until asked to retry it
    assert row["fit_status"] in ("converged", "warning")  # warning: k-hat 0.80 on this spectrum


def test_results_rows_carry_sampler_diagnostics_and_the_manifest_columns():
    """A NUTS-style summary: scalar diagnostics become diag_* columns, per-parameter tables stay in summary.json."""
    from jrinfer.distributed import _summary_row

    summary = {
        "backend": "nuts", "status": "converged", "warnings": ["w1", "w2"], "log_evidence": None,
        "parameters": {"A": {"mean": 3.2, "sd": 0.1}},
        "fit_quality": {"r2_log_power": 0.9, "per_channel": {"x": 1}},
        "diagnostics": {"rhat": {"A": 1.001}, "rhat_max": 1.001, "ess_bulk_min": 812.0, "divergences": 0},
        "data": {"channels": ["O1", "O2"]}, "data_units": "uV^2/Hz",
    }
    row = _summary_row({"id": "0001-x", "path": "/x.edf", "meta": {"subject": "s1", "status": "spoof"}}, summary)
    assert row["status"] == "ok" and row["fit_status"] == "converged" and row["n_warnings"] == 2
    assert (row["A_mean"], row["A_sd"]) == (3.2, 0.1)
    assert (row["diag_rhat_max"], row["diag_ess_bulk_min"], row["diag_divergences"]) == (1.001, 812.0, 0)
    assert "diag_rhat" not in row and "fit_per_channel" not in row and row["fit_r2_log_power"] == 0.9
    assert row["channels"] == "O1,O2" and row["subject"] == "s1"  # a manifest column never overwrites a result


def test_per_channel_items(cohort, tmp_path):
    freqs, y1 = _synthetic(5)
    _, y2 = _synthetic(6, p_mean=90.0)
    np.savetxt(tmp_path / "two.csv", np.column_stack([freqs.numpy(), y1[0].numpy(), y2[0].numpy()]), delimiter=",",
               header="freq,O1,O2", comments="")
    (tmp_path / "m.csv").write_text('path,picks\ntwo.csv,"O1,O2"\n')
    code = main(["fit-many", str(tmp_path / "m.csv"), *FIT_OPTS, "--per-channel", "--out", str(tmp_path / "o"),
                 "--workers", "0", "--no-progress"])
    assert code == 0
    rows = _rows(tmp_path / "o" / "results.csv")
    assert [(r["item"], r["channel"], r["channels"], r["status"]) for r in rows] == [
        ("0001-two-O1", "O1", "O1", "ok"), ("0001-two-O2", "O2", "O2", "ok")]
    assert _params(rows[0]) != _params(rows[1])
    with pytest.raises(ValueError, match="per_channel"):
        fit_many([cohort / "a.csv"], out=tmp_path / "p", kind="spectrum", per_channel=True, progress=False)


# --------------------------------------------------------------------------- #
# backend options reach the backend (one builder shared with jrinfer fit)
# --------------------------------------------------------------------------- #
class _Recorded(Exception):
    pass


@pytest.fixture
def recorded_nuts(monkeypatch):
    """NUTS.fit replaced by a recorder of the sampler's settings (no sampling): the item ends in an error row."""
    pytest.importorskip("pymc")
    from jrinfer.backends.pymc import NUTS

    seen = []

    def fit(self, problem, **kw):
        seen.append({k: getattr(self, k) for k in ("chains", "tune", "draws", "boundary", "seed", "progress")})
        raise _Recorded("recorded")

    monkeypatch.setattr(NUTS, "fit", fit)
    return seen


def test_fit_many_manifest_nuts_options_reach_the_sampler(cohort, tmp_path, capsys, recorded_nuts):
    """A fit-many manifest's boundary/chains/tune/draws columns and the --seed default reach NUTS' constructor."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,boundary,chains,tune,draws\n{cohort / 'a.csv'},pole,3,11,7\n{cohort / 'b.csv'},,2,5,4\n")
    code = main(["fit-many", str(manifest), *FIT_OPTS, "--backend", "nuts", "--seed", "9", "--draws", "50",
                 "--out", str(tmp_path / "o"), "--workers", "0", "--no-progress"])
    assert code == 1 and "recorded" in capsys.readouterr().err  # the recorder's error, per row
    assert recorded_nuts == [
        {"chains": 3, "tune": 11, "draws": 7, "boundary": "pole", "seed": 9, "progress": False},
        {"chains": 2, "tune": 5, "draws": 4, "boundary": None, "seed": 9, "progress": False},  # items are quiet
    ]


def test_fit_many_problems_take_backend_options(recorded_nuts):
    rows = fit_many([_problem(3)], "nuts", options={"boundary": "pole", "chains": 3, "tune": 11, "draws": 7},
                    seed=4, progress=False)
    assert rows[0]["status"] == "error" and rows[0]["error"] == "recorded"
    assert recorded_nuts == [{"chains": 3, "tune": 11, "draws": 7, "boundary": "pole", "seed": 4, "progress": False}]


@pytest.mark.parametrize(
    "backend, options, match",
    [
        ("nuts", {"picks": "O1"}, "'picks' is not a backend option"),
        ("nuts", {"seed": 3}, "'seed' is not a backend option"),
        ("nuts", {"chains": 0}, "chains"),
        ("laplace", {"boundary": "pole"}, "--boundary applies to --backend nuts"),
        ("nuts", {"boundary": "wall"}, "boundary"),
        (VariationalLaplace(), {"starts": 2}, "carries its own settings"),
    ],
)
def test_fit_many_problems_refuse_bad_backend_options(backend, options, match):
    with pytest.raises(ValueError, match=match):
        fit_many([_problem(3)], backend, options=options, progress=False)


def test_fit_many_problems_nuts_draws_have_the_requested_shape():
    """Not only the constructor: the sampled InferenceData has chains x draws of the options."""
    pytest.importorskip("pymc")
    (row,) = fit_many([_problem(3)], "nuts", options={"chains": 2, "tune": 20, "draws": 15}, seed=1, progress=False)
    assert row["status"] == "ok", row["error"]
    post = row["posterior"]
    assert post.draws.shape[:2] == (2, 15)
    assert post.diagnostics["settings"] == {**post.diagnostics["settings"], "chains": 2, "tune": 20, "draws": 15,
                                            "seed": 1}
    assert post.to_arviz().posterior.sizes["chain"] == 2 and post.to_arviz().posterior.sizes["draw"] == 15


def test_map_chunks_progress_off_a_terminal_is_lines_not_a_bar(capsys, monkeypatch):
    """Off a terminal (logs, pipes) progress is a line at most every 10 s and an end line, never tqdm's \\r."""
    import jrinfer._chunks as chunks

    monkeypatch.setattr(chunks._ChunkProgress, "INTERVAL_S", 0.0)  # every chunk gets its line
    assert map_chunks(operator.pow, [(k, 2) for k in range(4)], desc="simulating") == [0, 1, 4, 9]
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert lines[:3] == [ln for ln in lines[:3] if ln.startswith("simulating: ") and "of 4 chunks" in ln]
    assert len(lines) == 4 and lines[-1].startswith("simulating: 4 of 4 chunks in ")
    assert map_chunks(operator.pow, [(2, 2)], progress=False) == [4] and capsys.readouterr().err == ""


def test_fit_many_force_with_other_options_refits_and_keeps_the_old_run(cohort, tmp_path, capsys):
    """--force after the options changed fits every item again; the earlier results move aside, not mixed in."""
    (tmp_path / "m.csv").write_text(f"path\n{cohort / 'a.csv'}\n{cohort / 'bad.csv'}\n")
    out = tmp_path / "out"
    args = ["fit-many", str(tmp_path / "m.csv"), *FIT_OPTS, "--out", str(out), "--workers", "0"]
    assert main(args) == 1  # bad.csv is an error row
    err = capsys.readouterr().err
    assert "\r" not in err and "fitting: 2 of 2 items in" in err  # progress lines off a terminal, no bar
    log = (out / "0001-a" / "log.txt").read_text()
    assert ".partial-" not in log and str(out / "0001-a") in log  # the log names where the files are
    first = _rows(out / "results.csv")
    # the same options again: nothing is refitted, and the summary says so
    assert main(args) == 1
    assert "2 items (2 finished by an earlier run and kept, 0 fitted now" in capsys.readouterr().out
    # other options: refused without --force, naming what --force does
    assert main([*args, "--fmax", "30"]) == 2
    err = capsys.readouterr().err
    assert "superseded" in err and "--fmax: None then, 30.0 now" in err, err
    assert main([*args, "--fmax", "30", "--force"]) == 1
    captured = capsys.readouterr()
    assert "superseded-1" in captured.err and "2 fitted now" in captured.out
    old = out / "superseded-1"
    assert sorted(p.name for p in old.iterdir()) == ["0001-a", "0002-bad", "fit-many.json", "results.csv"]
    assert _rows(old / "results.csv") == first  # the earlier run, intact
    assert "fmax" not in json.loads((old / "fit-many.json").read_text())["options"]
    assert json.loads((out / "fit-many.json").read_text())["options"]["fmax"] == 30.0
    new = _rows(out / "results.csv")
    n_points = [json.loads((d / "0001-a" / "summary.json").read_text())["data"]["n_points"] for d in (old, out)]
    assert n_points[1] < n_points[0], n_points  # the new fit saw the narrower range
    assert _params(new[0]) != _params(first[0])  # refitted, not the earlier fit relabelled


def test_results_rows_carry_the_weighted_figures_where_the_gaussian_misstates_a_marginal():
    from jrinfer.distributed import _summary_row

    summary = {"status": "converged", "parameters": {
        "a": {"mean": 100.0, "sd": 3.0},
        "floor": {"mean": 0.0099, "sd": 0.053, "weighted_mean": 0.0014, "weighted_sd": 0.0016,
                  "marginal": "one-sided: bounded above by the data"}}}
    row = _summary_row({"id": "0001-x", "path": "x.edf", "meta": {}}, summary)
    assert (row["a_mean"], row["a_sd"]) == (100.0, 3.0) and "a_marginal" not in row
    assert (row["floor_mean"], row["floor_sd"]) == (0.0014, 0.0016) and row["floor_marginal"].startswith("one-sided")


def test_a_manifest_condition_column_with_spectra_is_refused_naming_the_option(cohort, tmp_path):
    from jrinfer.distributed import read_manifest

    (tmp_path / "m.csv").write_text(f"path,condition\n{cohort / 'a.csv'},rest\n")
    rows = fit_many(read_manifest(tmp_path / "m.csv"), out=tmp_path / "o", kind="spectrum",
                    options={"units": "uV^2/Hz"}, progress=False)
    assert rows[0]["status"] == "error" and "--condition applies to --kind evoked" in rows[0]["error"]
    assert "name a label column otherwise" in rows[0]["error"]
