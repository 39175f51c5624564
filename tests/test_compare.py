"""``jrinfer compare``: log evidences of fits of the same data side by side."""

import json
import math

import pytest
import torch

from jrinfer.cli import main
from jrinfer.comparison import model_probabilities


def test_model_probabilities_softmax():
    p = model_probabilities([0.0, math.log(3.0)])
    torch.testing.assert_close(p, torch.tensor([0.25, 0.75], dtype=torch.float64))
    # stable for large free energies
    assert model_probabilities([-1e4, -1e4 + 2.0]).sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="log_evidences"):
        model_probabilities([0.0, float("nan")])


def _spectrum_csv(path, a, seed):
    from jrinfer import SpectrumData, SpectrumObservation

    f = torch.arange(2.0, 40.01, 0.25, dtype=torch.float64)
    obs = SpectrumObservation()
    tmpl = SpectrumData.from_arrays(f, torch.ones(1, f.numel(), dtype=torch.float64), metadata={"seg_length_s": 4.0})
    p = dict(A=3.25, B=22.0, a=a, b=50.0, C=135.0, p_mean=70.0, p_std=22.0, e0=2.5, r=0.56, v0=6.0, gain=30.0,
             ap_amplitude=5.0, ap_exponent=1.0, floor=0.01, log_precision=math.log(100.0))
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in p.items()}
    y = obs.sample(obs.predict(p, tmpl), p, tmpl, torch.Generator().manual_seed(seed))[0]
    path.write_text("freq,power [uV^2/Hz]\n" + "".join(f"{x!r},{v!r}\n" for x, v in zip(f.tolist(), y.tolist())))
    return str(path)


def test_compare_table_json_and_refusals(tmp_path, capsys):
    data = _spectrum_csv(tmp_path / "s.csv", 100.0, 0)
    other = _spectrum_csv(tmp_path / "o.csv", 110.0, 1)
    fits = {}
    for name, path, free in [("full", data, "B,a,b,p_mean"), ("small", data, "a,p_mean"), ("other", other, "a,p_mean"),
                             ("narrow", data, "a,p_mean")]:
        extra = ["--fmax", "30"] if name == "narrow" else []
        fits[name] = str(tmp_path / name)
        assert main(["fit", path, "--kind", "spectrum", "--free", free, "--out", fits[name], *extra]) == 0
    capsys.readouterr()
    assert main(["compare", fits["full"], fits["small"], "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    F = {m["dir"]: m["log_evidence"] for m in res["models"]}
    summaries = {k: json.loads((tmp_path / k / "summary.json").read_text()) for k in ("full", "small")}
    assert F[fits["full"]] == pytest.approx(summaries["full"]["log_evidence"])
    best = max(F.values())
    for m in res["models"]:
        assert m["delta_to_best"] == pytest.approx(m["log_evidence"] - best)
        assert m["best"] == (m["log_evidence"] == best)
    expected = torch.softmax(torch.tensor(list(F.values()), dtype=torch.float64), 0).tolist()
    assert [m["probability"] for m in res["models"]] == pytest.approx(expected)
    # text table
    assert main(["compare", fits["full"], fits["small"]]) == 0
    out = capsys.readouterr().out
    assert "P(model)" in out and "best" in out
    assert res["same_model"] == []  # different free parameters: different models
    # ... and the comparison says what differs between them: the free parameters, from the best one's side
    (line,) = res["differences"]
    ib, io = ("full", "small") if F[fits["full"]] == best else ("small", "full")
    dF = F[fits[ib]] - F[fits[io]]
    assert line.startswith(f"{fits[ib]} vs {fits[io]} ({dF:+.2f} nats, ")
    assert ("do not tell them apart" in line) == (dF < 1) and ("strong evidence for the first" in line) == (dF >= 3)
    assert f"free only in the {'first' if ib == 'full' else 'second'}: B, b" in line, line
    assert "observation" not in line and f"differs: {line}" in out
    # the same model fitted twice (here: a copy standing in for another backend's fit) is flagged, not "evidence"
    s = json.loads((tmp_path / "small" / "summary.json").read_text())
    s["log_evidence"], s["backend"] = s["log_evidence"] - 3.6, "smc"
    (tmp_path / "small_smc").mkdir()
    (tmp_path / "small_smc" / "summary.json").write_text(json.dumps(s))
    assert main(["compare", fits["small"], str(tmp_path / "small_smc"), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)["same_model"]
    assert len(same) == 1 and "laplace vs smc" in same[0] and "3.60 nats" in same[0] and "not evidence" in same[0]
    # the model fitted twice counts once in the model probabilities (by its first fit listed)
    assert main(["compare", fits["full"], fits["small"], str(tmp_path / "small_smc"), "--json"]) == 0
    probs = [m["probability"] for m in json.loads(capsys.readouterr().out)["models"]]
    assert probs[2] is None and probs[0] + probs[1] == pytest.approx(1.0)
    assert probs[:2] == pytest.approx(torch.softmax(torch.tensor([F[fits["full"]], F[fits["small"]]],
                                                                 dtype=torch.float64), 0).tolist())
    assert main(["compare", fits["small"], str(tmp_path / "small_smc")]) == 0
    assert "note: " in capsys.readouterr().out
    # laplace fits: flagged only where the fit itself says its Gaussian misses the posterior (k-hat, multimodal)
    flagged = {k for k in ("full", "small") if (summaries[k]["diagnostics"].get("pareto_k") or 0) > 0.7
               or any("multimodal" in w for w in summaries[k]["warnings"])}
    assert sorted(u.split(":")[0] for u in res["unreliable"]) == sorted(fits[k] for k in flagged), res["unreliable"]
    # an SMC fit whose chains disagree on the log evidence (backends.pymc._evidence_agreement) is said to be
    # unreliable beside the table, with the chains' values
    s["diagnostics"] = {**(s.get("diagnostics") or {}), "log_marginal_likelihood_chains": [-28.89, -32.69],
                        "log_evidence_spread": 3.8, "log_evidence_reliable": False}
    (tmp_path / "small_smc" / "summary.json").write_text(json.dumps(s))
    assert main(["compare", fits["full"], str(tmp_path / "small_smc"), "--json"]) == 0
    res2 = json.loads(capsys.readouterr().out)
    smc = [u for u in res2["unreliable"] if u.startswith(str(tmp_path / "small_smc"))]
    assert len(smc) == 1 and "3.8 nats" in smc[0] and "-28.89" in smc[0], res2["unreliable"]
    assert len(res2["unreliable"]) == 1 + ("full" in flagged)
    assert [m["log_evidence_reliable"] for m in res2["models"]] == [None, False]
    assert main(["compare", fits["full"], str(tmp_path / "small_smc")]) == 0
    assert "WARNING: " in capsys.readouterr().out
    # other data (another file, or the same file in another frequency window): refused
    assert main(["compare", fits["full"], fits["other"]]) == 2
    err = capsys.readouterr().err
    assert "other data" in err and "s.csv vs" in err and "o.csv" in err  # says what differs: the file
    assert main(["compare", fits["small"], fits["narrow"]]) == 2
    err = capsys.readouterr().err
    assert "other data" in err and "number of points (range)" in err and "file" not in err.split("(")[1]
    # a fit without a log evidence (e.g. NUTS): refused, naming the backends that give one
    s = json.loads((tmp_path / "small" / "summary.json").read_text())
    s["log_evidence"], s["backend"] = None, "nuts"
    (tmp_path / "nuts").mkdir()
    (tmp_path / "nuts" / "summary.json").write_text(json.dumps(s))
    assert main(["compare", fits["full"], str(tmp_path / "nuts")]) == 2
    err = capsys.readouterr().err
    assert "no log evidence (backend nuts)" in err and "--backend smc" in err
    assert main(["compare", fits["full"], str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_compare_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--help"])
    assert exc.value.code == 0 and "Log evidences" in " ".join(capsys.readouterr().out.split())


def test_kass_raftery_grades_of_a_log_bayes_factor():
    """One ladder for every reading of evidence (compare, condition effects, group effects): |log BF| in nats."""
    from jrinfer.comparison import evidence_strength

    grades = [evidence_strength(x) for x in (0.0, 0.99, -1.0, 2.99, 3.0, -4.99, 5.0, 40.0)]
    assert grades == [None, None, "positive", "positive", "strong", "strong", "very strong", "very strong"]
