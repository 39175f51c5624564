"""fit-many with --conditions: one joint fit per manifest row (a file per condition) and the group effects."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from jrinfer import SpectrumData, SpectrumObservation
from jrinfer.cli import main

F64 = torch.float64
TRUTH = dict(A=3.25, B=22.0, a=100.0, b=50.0, C=135.0, p_mean=70.0, p_std=22.0, e0=2.5, r=0.56, v0=6.0,
             gain=30.0, ap_amplitude=5.0, ap_exponent=1.0, floor=0.01)
A_RATIO = 1.15  # task/rest ratio of a in every subject; b does not differ


def _write(path, a, seed, log_precision):
    """A 2-40 Hz spectrum (0.5 Hz bins, 2 s Welch segments) drawn from the observation model."""
    freqs = torch.arange(2.0, 40.01, 0.5, dtype=F64)
    obs = SpectrumObservation()
    template = SpectrumData.from_arrays(freqs, torch.ones(1, freqs.numel(), dtype=F64), metadata={"seg_length_s": 2.0})
    p = {k: torch.tensor(v, dtype=F64) for k, v in {**TRUTH, "a": a}.items()}
    p["log_precision"] = torch.tensor(log_precision, dtype=F64)
    y = obs.sample(obs.predict(p, template), p, template, torch.Generator().manual_seed(seed))
    np.savetxt(path, np.column_stack([freqs.numpy(), y[0].numpy()]), delimiter=",", header="freq,power [uV^2/Hz]",
               comments="")
    return path.name


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three subjects (rest, task with a x 1.15) and a fourth whose task file is broken."""
    d = tmp_path_factory.mktemp("conditions")
    lines = ["subject,path_rest,path_task"]
    for s in range(3):
        rest = _write(d / f"s{s}_rest.csv", TRUTH["a"], 10 * s, math.log(100.0))
        task = _write(d / f"s{s}_task.csv", TRUTH["a"] * A_RATIO, 10 * s + 1, math.log(50.0))
        lines.append(f"s{s},{rest},{task}")
    (d / "broken.csv").write_text("freq,power\n2,1\n")
    lines.append("s3,s0_rest.csv,broken.csv")
    (d / "manifest.csv").write_text("\n".join(lines) + "\n")
    return d


ARGS = ["--kind", "spectrum", "--conditions", "rest,task", "--vary", "a,b", "--free", "B,a,b,p_mean", "--starts", "1",
        "--workers", "0", "--no-progress"]


@pytest.mark.slow
def test_fit_many_conditions_per_row_and_the_group_effect(cohort, tmp_path, capsys):
    """Each row is a joint rest/task fit; the group effect of a has the right sign and covers the truth.

    Measured: 3 fits in 18-22 s (VL, one start each, shared cores); BPA log ratio of a 0.141 [0.131, 0.150]
    (truth 0.140);
    b 0.995 [0.984, 1.01] as a ratio.
    """
    out = tmp_path / "cohort"
    code = main(["fit-many", str(cohort / "manifest.csv"), *ARGS, "--out", str(out)])
    printed, err = capsys.readouterr()
    assert code == 1, err  # the broken row is an error; the others are fitted
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error"]
    for r in rows[:3]:
        s = json.loads((out / r["item"] / "summary.json").read_text())
        # the row's folder is jrinfer fit A B --conditions rest,task's
        assert s["data"]["file"] == {"rest": r["path_rest"], "task": r["path_task"]}
        e = s["condition_effects"]["effects"]["a"]["task"]
        assert float(r["effect_a_task_mean"]) == pytest.approx(e["mean"], rel=1e-12)
        assert float(r["effect_a_task_lower"]) < math.log(A_RATIO) < float(r["effect_a_task_upper"])
        assert float(r["effect_a_task_log_bf"]) > 5 and float(r["any_difference_log_bf"]) > 5
        assert {"effect_b_task_mean", "effect_b_task_lower", "effect_b_task_upper", "effect_b_task_log_bf"} <= set(r)
    g = json.loads((out / "group_effects.json").read_text())
    assert g["n_subjects"] == 3 and [x["subject"] for x in g["left_out"]] == [rows[3]["item"]]
    assert g["left_out"][0]["reason"].startswith("the fit failed: ")
    a, b = g["effects"]["a"]["task"], g["effects"]["b"]["task"]
    assert a["bpa"]["lower"] < math.log(A_RATIO) < a["bpa"]["upper"] and a["bpa"]["lower"] > 0
    assert a["random_effects"]["n_above"] == 3 and a["random_effects"]["lower"] > 0
    assert a["verdict"] == "agree" and a["fixed_effects_log_bf"] > 10
    assert b["bpa"]["lower"] < 0 < b["bpa"]["upper"] and b["verdict"] == "none"
    assert (out / "group_effects.png").stat().st_size > 10_000
    assert "group effects against rest over 3 subject(s)" in printed and "a: [agree]" in printed
    assert f"left out: {rows[3]['item']} (the fit failed: " in printed
    # resume: nothing is fitted again, the group effects are the same
    code = main(["fit-many", str(cohort / "manifest.csv"), *ARGS, "--out", str(out)])
    printed, _ = capsys.readouterr()
    assert code == 1 and "4 finished by an earlier run and kept" in printed
    assert json.loads((out / "group_effects.json").read_text()) == g


@pytest.mark.parametrize("manifest, extra, match", [
    ("path,path_rest,path_task\na.csv,a.csv,a.csv\n", [], "both a 'path' column and per-condition file columns"),
    ("path_rest,path_task\na.csv,a.csv\n", ["--kind", "spectrum"],
     "no conditions are given; pass --conditions rest,task"),
    ("path\na.csv\n", ["--conditions", "rest,task", "--vary", "a"], "column per condition, path_rest, path_task, in "
                                                                      "place of 'path'"),
    ("path_rest,path_other\na.csv,a.csv\n", ["--conditions", "rest,task", "--vary", "a"],
     "path_other name no condition of --conditions rest,task; expected one file column per condition: path_rest, "
     "path_task"),
    ("path_rest,path_task\na.csv,\n", ["--conditions", "rest,task", "--vary", "a"], "no file in path_task"),
    ("path_rest,path_task\na.csv,a.csv\n", ["--conditions", "rest,task"], "needs --vary"),
    ("path_rest,path_task\na.csv,a.csv\n", ["--conditions", "rest,task", "--vary", "a", "--backend", "npe",
                                            "--estimator", "est"], "npe conditions one recording at a time"),
])
def test_bad_condition_manifests_are_refused_naming_the_columns(tmp_path, capsys, manifest, extra, match):
    (tmp_path / "m.csv").write_text(manifest)
    argv = ["fit-many", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"), "--workers", "0"]
    argv += extra if "--kind" in extra else ["--kind", "spectrum", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_per_channel_conditions_refused_and_force_moves_the_group_files(tmp_path, capsys):
    from jrinfer.cli import _supersede_fit_many_run

    (tmp_path / "m.csv").write_text("path_rest,path_task\na.csv,a.csv\n")
    assert main(["fit-many", str(tmp_path / "m.csv"), "--kind", "spectrum", "--conditions", "rest,task", "--vary", "a",
                 "--picks", "O1,O2", "--per-channel", "--workers", "0", "--out", str(tmp_path / "o")]) == 2
    assert "count a subject's channels as separate subjects" in capsys.readouterr().err
    # --force with other options: the earlier run's group effects go with its rows (none is left to describe the new)
    out = tmp_path / "run"
    (out / "0001-x").mkdir(parents=True)
    (out / "0001-x" / "result.json").write_text("{}")
    for name in ("results.csv", "fit-many.json", "group_effects.json", "group_effects.png", "mine.txt"):
        (out / name).write_text("x")
    moved = _supersede_fit_many_run(out, {})
    assert sorted(p.name for p in moved.iterdir()) == ["0001-x", "fit-many.json", "group_effects.json",
                                                       "group_effects.png", "results.csv"]
    assert (out / "mine.txt").is_file()


def test_python_items_with_a_file_per_condition(tmp_path):
    """fit_many's dict items take path_<condition> keys and options conditions/vary, as the manifest does."""
    from jrinfer.distributed import _file_specs

    a, b = tmp_path / "r.csv", tmp_path / "t.csv"
    specs = _file_specs([{"path_rest": str(a), "path_task": str(b), "name": "s1"}], "laplace", "spectrum",
                        {"conditions": "rest,task", "vary": "a,gain"})
    (spec,) = specs
    assert spec["paths"] == [str(a.resolve()), str(b.resolve())] and spec["conditions"] == ["rest", "task"]
    assert spec["id"] == "0001-s1" and "--conditions" in spec["argv"] and "--vary" in spec["argv"]
    assert spec["meta"]["path_rest"] == str(a.resolve()) and "invalid" not in spec
    with pytest.raises(ValueError, match="both a 'path' column and per-condition"):
        _file_specs([{"path": str(a)}, {"path_rest": str(a), "path_task": str(b)}], "laplace", "spectrum",
                    {"conditions": "rest,task", "vary": "a"})
