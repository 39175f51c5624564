"""ERPs from continuous recordings (events -> mne.Epochs -> average) and from single-trial tables."""

import json
import os

import numpy as np
import pytest

mne = pytest.importorskip("mne")

from jrinfer.cli import main  # noqa: E402
from jrinfer.data import EvokedData  # noqa: E402

SFREQ = 250.0
PEAK_S, PEAK_UV = 0.1, -5.0


def _raw(n_events=40, artefact=True, seed=0):
    """Three EEG channels with a -5 uV Gaussian deflection 100 ms after every 'tone', noise 1 uV, a stim channel."""
    rng = np.random.default_rng(seed)
    n = int(SFREQ * (n_events + 2))
    x = rng.normal(0.0, 1.0, (3, n))  # uV
    onsets = 1.0 + np.arange(n_events)
    t = np.arange(int(0.6 * SFREQ)) / SFREQ
    wave = PEAK_UV * np.exp(-0.5 * ((t - PEAK_S) / 0.02) ** 2)
    stim = np.zeros((1, n))
    for k, o in enumerate(onsets):
        i = int(round(o * SFREQ))
        x[:, i : i + t.size] += wave
        stim[0, i] = 5 if k % 2 == 0 else 7
    if artefact:
        i = int(round(onsets[3] * SFREQ))
        x[0, i + 20 : i + 40] += 400.0  # one epoch to reject
    info = mne.create_info(["Fz", "Cz", "Pz", "STI"], SFREQ, ch_types=["eeg"] * 3 + ["stim"])
    raw = mne.io.RawArray(np.vstack([x * 1e-6, stim]), info, verbose="error")
    raw.set_annotations(mne.Annotations(onsets, 0.0, ["tone"] * n_events))
    return raw


def test_from_raw_events_annotations_and_stim_channel():
    raw = _raw()
    ev = EvokedData.from_raw_events(raw, "tone", tmin=-0.1, tmax=0.5, reject=100.0)
    info = ev.metadata["epochs"]
    assert info["n_events"] == 40 and info["n_rejected"] == 1 and info["n_averaged"] == 39 == ev.n_averaged
    assert ev.channel_names == ("Fz", "Cz", "Pz")
    m = ev.values.mean(0)
    i = int(m.argmin())
    assert abs(float(ev.times[i]) - PEAK_S) <= 1 / SFREQ and abs(float(m[i]) - PEAK_UV) < 0.5
    # baseline (epoch start to 0) corrected by MNE
    assert abs(float(ev.values[:, ev.times < 0].mean())) < 0.2
    # without rejection the artefact enters the average
    raw_ev = EvokedData.from_raw_events(raw, "tone")
    assert raw_ev.metadata["epochs"]["n_rejected"] == 0 and float(raw_ev.values[0].max()) > 5.0
    # trigger codes on a stim channel: code 7 marks every other event
    st = EvokedData.from_raw_events(raw, 7, events="STI")
    assert st.metadata["epochs"]["n_averaged"] == 20
    # the code-5 events are other events, not rejections (MNE's drop log marks them IGNORED)
    assert st.metadata["epochs"]["rejected"] == {} and st.metadata["epochs"]["other_events"] == 20
    assert info["other_events"] == 0 and sum(info["rejected"].values()) == info["n_rejected"] == 1
    with pytest.raises(ValueError, match=r"not among the recording's annotations \['tone'\]"):
        EvokedData.from_raw_events(raw, "beep")
    with pytest.raises(ValueError, match=r"codes found: \[5, 7\]"):
        EvokedData.from_raw_events(raw, 9, events="STI")
    with pytest.raises(ValueError, match="every one of the 40 epochs was rejected"):
        EvokedData.from_raw_events(raw, "tone", reject=0.5)


def test_cli_evoked_from_continuous_recording(tmp_path, capsys):
    path = tmp_path / "rec_raw.fif"
    _raw().save(path, verbose="error")
    # without --event-id: say what to do, naming the events found (not "not readable as EEG")
    assert main(["fit", str(path), "--kind", "evoked", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "continuous recording" in err and "--event-id" in err and "tone" in err
    out = tmp_path / "fit"
    code = main(["fit", str(path), "--kind", "evoked", "--event-id", "tone", "--reject", "100",
                 "--baseline=-0.1,0", "--tmin", "-0.1", "--tmax", "0.4", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    ep = s["data"]["epochs"]
    assert ep["n_events"] == 40 and ep["n_rejected"] == 1 and ep["n_averaged"] == 39
    assert ep["baseline"] == [-0.1, 0.0]
    assert "epochs: 39 of 40 events averaged, 1 rejected (Fz 1)" in err, err  # said where the user looks
    q = s["fit_quality"]
    assert abs(q["peak_latency_data_s"] - PEAK_S) <= 1 / SFREQ
    assert abs(q["peak_latency_model_s"] - q["peak_latency_data_s"]) <= 0.01
    assert q["explained_variance"] > 0.8


def _table():
    from conftest import require_recordings

    require_recordings("mne_sample_erp_neurokit2/data.csv")
    return os.path.join(os.environ["JRINFER_DATA"], "mne_sample_erp_neurokit2", "data.csv")


def test_trials_table_average_matches_the_data():
    table = _table()
    aud = EvokedData.from_trials_table(table, "audio")
    assert aud.n_averaged == 145 and aud.n_channels == 10 and aud.n_times == 91  # 72 left + 73 right
    m = aud.values.mean(0)
    i = int(m.argmin())
    # the README's check: N100 of -6 uV at 93 ms on the frontal mean
    assert abs(float(aud.times[i]) - 0.093) < 0.004 and abs(float(m[i]) + 6.05) < 0.1
    left = EvokedData.from_trials_table(table, "audio/left", picks=["EEG 001"])
    assert left.n_averaged == 72 and left.channel_names == ("EEG 001",)
    with pytest.raises(ValueError, match="must name one of the table's conditions"):
        EvokedData.from_trials_table(table)
    with pytest.raises(ValueError, match="matches no event"):
        EvokedData.from_trials_table(table, "somatosensory")


@pytest.mark.slow
def test_cli_fits_auditory_n100_and_visual_erp_from_the_table(tmp_path, capsys):
    table = _table()
    res = {}
    for cond in ("audio", "visual"):
        out = tmp_path / cond
        code = main(["fit", table, "--kind", "evoked", "--event-id", cond, "--out", str(out)])
        _, err = capsys.readouterr()
        assert code == 0, err
        res[cond] = json.loads((out / "summary.json").read_text())
    q = res["audio"]["fit_quality"]
    assert abs(q["peak_latency_data_s"] - 0.093) < 0.004
    assert abs(q["peak_latency_model_s"] - q["peak_latency_data_s"]) <= 0.010  # N100 within 10 ms
    assert q["explained_variance"] > 0.7
    assert res["audio"]["data"]["epochs"]["n_averaged"] == 145
    # the fit says how well it fits beyond the explained variance (measured: residuals 2.3 x the baseline noise of
    # the 145-trial average, most at 433-500 ms) and where its population rests (measured: on the lower branch,
    # pyramidal firing 0.14 pulses/s, the optimum on the high equilibrium's Hopf point; 34 % of the draws there)
    assert 1.5 < q["residual_noise_ratio"] < 5 and "misses structure the data resolve" in q["verdict"], q
    warns = res["audio"]["warnings"]
    lower = [w for w in warns if w.startswith("the point estimate is on the lower branch")]
    assert bool(lower) == (q["rest_equilibrium"] == "lower"), (q, warns)
    if lower:
        assert q["rest_firing_rate"] < 1.0 and "near-silent population" in lower[0]
    mix = res["audio"]["diagnostics"]["regime_mix"]
    both = all(mix[k]["fraction"] > 0.1 for k in ("stable", "lower_branch"))
    assert both == any("start their evoked response from different resting states" in w for w in warns), mix
    v = res["visual"]["fit_quality"]
    assert v["explained_variance"] > 0.5  # fitted, not flat
    assert abs(v["peak_latency_model_s"] - v["peak_latency_data_s"]) <= 0.02


@pytest.mark.slow
def test_cli_conditions_from_one_table(tmp_path, capsys):
    """Left- vs right-ear tones from one table: the N100 comes earlier for right-ear tones (data: 100 vs 87 ms)."""
    table = _table()
    out = tmp_path / "lr"
    code = main(["fit", table, "--kind", "evoked", "--conditions", "left,right", "--event-id", "audio/left,audio/right",
                 "--vary", "input_latency", "--out", str(out)])
    printed, err = capsys.readouterr()
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["data"]["epochs"]["left"]["n_averaged"] == 72 and s["data"]["epochs"]["right"]["n_averaged"] == 73
    q = s["fit_quality"]
    shift = q["peak_latency_data_s_right"] - q["peak_latency_data_s_left"]
    assert shift == pytest.approx(-0.0133, abs=0.002)
    e = s["condition_effects"]["effects"]["input_latency"]["right"]
    assert e["scale"] == "additive" and e["upper"] < 0 and abs(e["mean"] - shift) < 0.01
    assert e["log_bayes_factor"] > 1
    # one file needs one --event-id per condition
    assert main(["fit", table, "--kind", "evoked", "--conditions", "left,right", "--event-id", "audio",
                 "--vary", "gain", "--out", str(tmp_path / "x")]) == 2
    assert "one --event-id per condition" in capsys.readouterr().err


def test_cli_units_of_a_trials_table_are_the_tables_units():
    """``--units`` names the units the table's values are in (MNE's tables: volts), as for any CSV data."""
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    from jrinfer.cli import _read_trials_table

    table = _table()
    args = SimpleNamespace(event_id="audio", condition=None, tmin=None, tmax=None, data=table, units=None)
    default = _read_trials_table(args, Path(table), None)
    volts = _read_trials_table(SimpleNamespace(**{**vars(args), "units": "V"}), Path(table), None)
    millivolts = _read_trials_table(SimpleNamespace(**{**vars(args), "units": "mV"}), Path(table), None)
    assert default.units == volts.units == millivolts.units == "uV"
    assert torch.equal(default.values, volts.values)
    assert torch.allclose(millivolts.values, volts.values * 1e-3, rtol=1e-12)
