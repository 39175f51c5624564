"""Inputs real users bring (issue 14): each condition refused, warned about or handled, with the right value.

Inputs are rebuilt here from a few lines of code (the shared case files are only
described, not copied); a few checks use the EEGMAT recording through
JRINFER_DATA.
"""

import json
import os
import warnings

import numpy as np
import pytest
import torch

from jrinfer import _datachecks
from jrinfer.cli import main
from jrinfer.data import MAX_EVOKED_SPAN_S, MIN_FIT_FREQS, EvokedData, SpectrumData

from conftest import require_recordings

mne = pytest.importorskip("mne")


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _alpha(t, rng, amp_uv=10.0):
    """EEG-like signal in V: 10 Hz alpha + 1/f-ish noise."""
    x = amp_uv * np.sin(2 * np.pi * 10 * t) + np.cumsum(rng.standard_normal(t.size)) * 0.3
    x = x - np.convolve(x, np.ones(101) / 101, mode="same")
    return (x + 3 * rng.standard_normal(t.size)) * 1e-6


def _raw(names, seconds=30.0, sfreq=250.0, types="eeg", lowpass=45.0, highpass=0.5, scale=None, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sfreq)) / sfreq
    data = np.stack([_alpha(t, rng) for _ in names])
    if scale:
        for i, s in scale.items():
            data[i] *= s
    info = mne.create_info(list(names), sfreq, types)
    raw = mne.io.RawArray(data, info, verbose="error")
    with raw.info._unlock():
        raw.info["lowpass"], raw.info["highpass"] = lowpass, highpass
    return raw


def _spectrum_csv(path, freqs, power, header="freq,power"):
    lines = [header] + [f"{f:g},{p:.8g}" for f, p in zip(freqs, power)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _smooth_alpha(freqs):
    return 20.0 / freqs + 5.0 * np.exp(-0.5 * ((freqs - 10) / 1.0) ** 2)


# ------------------------------------------------------------- 1. scale
def test_erp_time_axis_in_ms_is_refused_before_computing(tmp_path, capsys):
    t = np.linspace(-100, 500, 91)  # ms, as in the auditory ERP case
    p = tmp_path / "erp_ms.csv"
    p.write_text("time,frontal\n" + "".join(f"{a:g},{-6 * np.exp(-((a - 93) / 30) ** 2):g}\n" for a in t))
    with pytest.raises(ValueError, match=r"times span 600 s with a 6\.67 s step; were they given in ms\?"):
        EvokedData.from_csv(p, units="uV")
    code, _, err = run(capsys, "fit", str(p), "--kind", "evoked", "--units", "uV", "--out", str(tmp_path / "o"))
    assert code == 2 and "were they given in ms?" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    # naming the unit in the header converts it
    p.write_text(p.read_text().replace("time,frontal", "time [ms],frontal [uV]", 1))
    ev = EvokedData.from_csv(p)
    assert ev.times[0].item() == pytest.approx(-0.1) and ev.times[-1].item() == pytest.approx(0.5)
    assert ev.units == "uV" and ev.channel_names == ("frontal",)


def test_scale_caps_on_construction():
    with pytest.raises(ValueError, match=f"at most MAX_EVOKED_SPAN_S = {MAX_EVOKED_SPAN_S:g} s"):
        EvokedData.from_arrays(np.linspace(0, 20, 50), np.zeros(50) + 1.0)
    with pytest.raises(ValueError, match="MAX_SPECTRUM_FREQS = 20000 frequencies; got 20001"):
        SpectrumData.from_arrays(np.arange(1, 20002) * 0.1, np.ones(20001))
    with pytest.raises(ValueError, match=r"up to 40000 Hz; were they given in mHz\?"):
        SpectrumData.from_arrays(np.linspace(1000, 40000, 40), np.ones(40))


# ----------------------------------------------------- 2. default picks
def test_default_picks_leave_out_ecg_and_reference_only_channels():
    # labels as read without type inference: everything typed EEG
    raw = _raw(["EEG O1-A1", "EEG O2-A1", "EEG A2-A1", "ECG ECG"], scale={3: 30.0})
    with pytest.warns(UserWarning, match=r"left out of the default picks.*EEG A2-A1 \(reference electrodes only"):
        s = SpectrumData.from_mne(raw, fmin=2, fmax=40)
    assert s.channel_names == ("EEG O1-A1", "EEG O2-A1")
    assert s.metadata["channels_used"] == ["EEG O1-A1", "EEG O2-A1"]
    assert [d["channel"] for d in s.metadata["channels_dropped"]] == ["EEG A2-A1", "ECG ECG"]
    assert "ECG" in s.metadata["channels_dropped"][1]["reason"]
    assert any("ECG ECG" in w for w in s.metadata["warnings"])
    json.dumps(s.metadata)  # JSON-serialisable for summary.json


def test_nan_samples_are_left_out_as_bad_spans_with_a_warning():
    """A NaN span in one channel: left out for every channel, the segment count right, the spectrum unchanged
    where the span is (it was SciPy's "noverlap must be less than nperseg")."""
    raw = _raw(["O1", "O2"], seconds=60.0)
    clean = SpectrumData.from_mne(raw, fmin=2, fmax=40, seg_length=4.0)
    x = raw.get_data()
    x[1, 500:550] = np.nan  # 0.2 s at 2 s
    broken = mne.io.RawArray(x, raw.info, verbose="error")
    with pytest.warns(UserWarning, match=r"NaN or inf samples in O2 \(50 samples\): 1 span\(s\)"):
        s = SpectrumData.from_mne(broken, fmin=2, fmax=40, seg_length=4.0)
    assert torch.isfinite(s.power).all() and s.n_segments < clean.n_segments
    # the first 2.2 s are lost (the span and the 2 s before it, shorter than a segment): the rest is the same data
    assert torch.allclose(s.power.log().mean(), clean.power.log().mean(), atol=0.1)
    x[0] = np.nan
    with pytest.raises(ValueError, match=r"\['O1'\] hold no finite sample"):
        SpectrumData.from_mne(mne.io.RawArray(x, raw.info, verbose="error"), fmin=2, fmax=40)


def test_every_unknown_pick_is_named_and_fmax_above_nyquist_is_refused():
    raw = _raw(["O1", "O2"], sfreq=160.0, lowpass=80.0)
    with pytest.raises(ValueError, match=r"unknown channel name\(s\) \['O9', 'Oz'\]; available channels: \['O1', 'O2'\]"):
        SpectrumData.from_mne(raw, picks=["O9", "Oz", "O1"])
    with pytest.raises(ValueError, match=r"fmax=100 Hz is above the Nyquist frequency of the recording \(80 Hz"):
        SpectrumData.from_mne(raw, fmax=100)


def test_default_picks_leave_out_numbered_eog_ecg_emg_labels():
    # EEGLAB's sample recording types EOG1/EOG2 as EEG; numbered and sided labels are not scalp EEG either
    from jrinfer._datachecks import non_eeg_reason

    for name in ("EOG1", "EOG2", "VEOG", "HEOG", "HEOGL", "ECG2", "EKG", "EMG1", "EOG L"):
        assert non_eeg_reason(name, "eeg") is not None, name
    for name in ("O1", "Fp1", "EEG O1-A1", "FCz", "POz", "Oz", "T7", "EX1", "E12"):  # EGI's E12 is EEG
        assert non_eeg_reason(name, "eeg") is None, name
    raw = _raw(["O1", "O2", "EOG1", "EOG2"])
    with pytest.warns(UserWarning, match=r"left out of the default picks.*EOG1 \(its label says EOG"):
        s = SpectrumData.from_mne(raw, fmin=2, fmax=40)
    assert s.channel_names == ("O1", "O2")
    assert [d["channel"] for d in s.metadata["channels_dropped"]] == ["EOG1", "EOG2"]


def test_eegmat_default_picks_keep_the_alpha(tmp_path, capsys):
    require_recordings("eegmat/Subject00_1.edf")
    path = os.path.join(os.environ["JRINFER_DATA"], "eegmat", "Subject00_1.edf")
    from jrinfer.cli import _load_data, build_parser

    args = build_parser().parse_args(["fit", path, "--kind", "spectrum", "--out", str(tmp_path / "o")])
    data = _load_data(args)
    err = capsys.readouterr().err
    used = data.metadata["channels_used"]
    assert len(used) == 19 and "ECG" not in used and "A2-A1" not in used
    assert {d["channel"] for d in data.metadata["channels_dropped"]} == {"A2-A1", "ECG"}
    assert "channels used (19): Fp1, Fp2" in err and "A2-A1 (reference electrodes only" in err
    assert data.peak_frequency(6, 14).item() == 10.5  # 7.5 Hz when ECG is averaged in
    assert data.freqs[0].item() == 2.0 and data.freqs[-1].item() == 40.0


# ------------------------------------------------------------ 3. filters
def test_frequency_window_respects_the_recording_filters():
    raw = _raw(["O1", "O2"], lowpass=45.0, highpass=0.5)
    s = SpectrumData.from_mne(raw)
    assert s.freqs[-1].item() == 45.0 and s.freqs[0].item() == 0.5
    assert s.metadata["lowpass_hz"] == 45.0
    with pytest.raises(ValueError, match=r"fmax=100 Hz is above the recording's low-pass filter at 45 Hz.*fmax=45"):
        SpectrumData.from_mne(raw, fmax=100)
    with pytest.raises(ValueError, match=r"fmin must be > 0 Hz; got fmin=0 Hz"):
        SpectrumData.from_mne(raw, fmin=0)
    with pytest.raises(ValueError, match=r"fmin=0.25 Hz is below the recording's high-pass filter at 0.5 Hz"):
        SpectrumData.from_mne(raw, fmin=0.25)
    with pytest.raises(ValueError, match="fmin must be > 0 Hz"):
        s.select(fmin=0)


def test_cli_refuses_fmax_past_the_lowpass(tmp_path, capsys):
    f = tmp_path / "rec_raw.fif"
    _raw(["O1", "O2"]).save(f, verbose="error")
    code, _, err = run(capsys, "fit", str(f), "--kind", "spectrum", "--fmax", "100", "--out", str(tmp_path / "o"))
    assert code == 2
    assert "--fmax 100 Hz is above the recording's low-pass filter at 45 Hz" in err and "Use --fmax 45" in err


# ----------------------------------------------- 6. notch dips and line noise
def test_outlying_bins_are_named_and_exclude_removes_them(tmp_path):
    f = np.arange(1, 125.01, 0.25)
    p = _smooth_alpha(f) * np.exp(0.1 * np.random.default_rng(1).standard_normal(f.size))
    p[f == 60] *= 1000
    p[f == 120] *= 100
    path = _spectrum_csv(tmp_path / "line.csv", f, p, header="freq,power [uV^2/Hz]")
    with pytest.warns(UserWarning, match=r"outlying spectrum bins: 60 Hz \(.*line frequency\), 120 Hz") as rec:
        s = SpectrumData.from_csv(path)
    msg = [str(w.message) for w in rec if "outlying" in str(w.message)][0]
    assert "exclude=[(59, 61), (119, 121)]" in msg
    assert s.metadata["outlying_bins_hz"] == [60.0, 120.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = s.select(exclude=[(59, 61), (119, 121)])
    assert "outlying_bins_hz" not in clean.metadata and "warnings" not in clean.metadata
    assert not ((clean.freqs >= 59) & (clean.freqs <= 61)).any() and clean.n_freqs == s.n_freqs - 18
    assert clean.metadata["excluded_bands_hz"] == [[59.0, 61.0], [119.0, 121.0]]
    # the alpha peak itself is not an outlier, even sharper than a bin (a model spectrum near the Hopf point)
    peak = _smooth_alpha(f)
    peak[f == 10] *= 50
    assert "outlying_bins_hz" not in SpectrumData.from_arrays(f, peak).select().metadata


def test_notch_dip_warning_and_zero_bins_suggest_exclude(tmp_path, capsys):
    f = np.arange(1, 100.01, 0.25)
    p = _smooth_alpha(f)
    p[f == 50] /= 1000
    with pytest.warns(UserWarning, match=r"outlying spectrum bins: 50 Hz \(1/1e\+03 its neighbours, line frequency\)"):
        SpectrumData.from_arrays(f, p).select()
    p[(f >= 49.5) & (f <= 50.5)] = 0.0
    path = _spectrum_csv(tmp_path / "zeros.csv", f, p)
    with pytest.raises(ValueError, match=r"non-positive.*leave them out with exclude=\[\(48.5, 51.5\)\]"):
        SpectrumData.from_csv(path, units="uV^2/Hz")
    s = SpectrumData.from_csv(path, units="uV^2/Hz", exclude=[(49, 51)])
    assert s.n_freqs == f.size - 9
    out = tmp_path / "o"
    code, _, err = run(capsys, "fit", str(path), "--kind", "spectrum", "--units", "uV^2/Hz", "--out", str(out))
    assert code == 2 and "leave them out with --exclude 48.5-51.5" in err
    code, _, err = run(capsys, "fit", str(path), "--kind", "spectrum", "--exclude", "49-51,x", "--out", str(out))
    assert code == 2 and "--exclude expects frequency bands LO-HI" in err and "'x'" in err


# ----------------------------------------------------------------- 7. units
def test_csv_units_from_header_argument_or_plausibility(tmp_path, capsys):
    f = np.arange(2, 40.01, 0.25)
    p_uv = _smooth_alpha(f)
    path = _spectrum_csv(tmp_path / "v2.csv", f, p_uv * 1e-12)  # V^2/Hz, no units anywhere
    with pytest.raises(ValueError, match=r"implausible as EEG in uV\^2/Hz; they look like V\^2/Hz\. Pass units='V\^2/Hz'"):
        SpectrumData.from_csv(path)
    s = SpectrumData.from_csv(path, units="V^2/Hz")
    assert s.units == "V^2/Hz" and "warnings" not in s.metadata
    code, _, err = run(capsys, "fit", str(path), "--kind", "spectrum", "--out", str(tmp_path / "o"))
    assert code == 2 and "they look like V^2/Hz. Pass --units V^2/Hz" in err
    # a V^2/Hz file forced to uV^2/Hz is accepted, with a warning naming the mistake
    with pytest.warns(UserWarning, match=r"the values look like V\^2/Hz read as uV\^2/Hz"):
        SpectrumData.from_csv(path, units="uV^2/Hz")
    # header units win and must agree with the argument
    hp = _spectrum_csv(tmp_path / "h.csv", f, p_uv * 1e-12, header="freq [Hz],O1 [V^2/Hz]")
    s = SpectrumData.from_csv(hp)
    assert s.units == "V^2/Hz" and s.channel_names == ("O1",) and s.metadata["units_from"] == "header"
    with pytest.raises(ValueError, match="header says the values are in V\\^2/Hz but units='uV\\^2/Hz'"):
        SpectrumData.from_csv(hp, units="uV^2/Hz")
    # plausible uV^2/Hz without units: assumed, and said so
    up = _spectrum_csv(tmp_path / "u.csv", f, p_uv)
    with pytest.warns(UserWarning, match="names no units; assumed uV\\^2/Hz"):
        s = SpectrumData.from_csv(up)
    assert s.metadata["units_from"] == "assumed" and "assumed uV^2/Hz" in s.metadata["warnings"][0]


def test_evoked_csv_in_volts_needs_units(tmp_path):
    t = np.linspace(-0.1, 0.5, 91)
    path = tmp_path / "erp.csv"
    path.write_text("time,Cz\n" + "".join(f"{a:g},{-6e-6 * np.exp(-((a - 0.093) / 0.03) ** 2):g}\n" for a in t))
    with pytest.raises(ValueError, match=r"they look like V\. Pass units='V'"):
        EvokedData.from_csv(path)
    assert EvokedData.from_csv(path, units="V").to_units("uV").values.abs().max().item() == pytest.approx(6, rel=1e-3)


def test_edf_header_mV_for_uV_samples_warns():
    raw = _raw(["O1", "O2"], scale={0: 1000.0, 1: 1000.0})  # 1000x too large, as from a header saying mV
    with pytest.warns(UserWarning, match=r"header may say mV where the samples are uV \(values about 1000x too large"):
        s = SpectrumData.from_mne(raw, fmin=2, fmax=40)
    assert "implausible EEG amplitude" in s.metadata["warnings"][0] and s.metadata["median_rms_uv"] > 2000


# ---------------------------------------------------------- 8. clean exits
def test_one_frequency_spectrum_says_how_many_a_fit_needs(tmp_path, capsys):
    path = _spectrum_csv(tmp_path / "one.csv", [10.0], [4.3], header="freq,power [uV^2/Hz]")
    code, _, err = run(capsys, "fit", str(path), "--kind", "spectrum", "--out", str(tmp_path / "o"))
    assert code == 2 and f"a fit needs at least {MIN_FIT_FREQS} frequencies" in err and "got 1" in err


def test_bad_spans_shorter_than_the_segment(tmp_path, capsys):
    raw = _raw(["O1", "O2"], seconds=60, sfreq=250, lowpass=45)
    onsets = np.arange(1.5, 60, 2.0)
    raw.set_annotations(mne.Annotations(onsets, [0.5] * len(onsets), ["BAD_segment"] * len(onsets)))
    with pytest.raises(ValueError, match=r"too short: the longest is 1.5 s, shorter than the Welch segment \(4 s, "
                                         r"seg_length\)\. Use a shorter segment, e\.g\. seg_length=1 "):
        SpectrumData.from_mne(raw)
    s = SpectrumData.from_mne(raw, seg_length=1.0)
    assert s.n_segments == 30 * 2  # two 1 s segments (50 % overlap) per 1.5 s span
    f = tmp_path / "spans_raw.fif"
    raw.save(f, verbose="error")
    code, _, err = run(capsys, "fit", str(f), "--kind", "spectrum", "--out", str(tmp_path / "o"))
    assert code == 2 and "(4 s, --segment). Use a shorter segment, e.g. --segment 1" in err
    # mixed spans: the short ones are left out with a warning instead of breaking Welch
    raw.set_annotations(mne.Annotations([10.0, 12.0], [1.0, 1.0], ["BAD_a", "BAD_b"]))
    with pytest.warns(UserWarning, match=r"left out 1 s of good data in 1 span\(s\)"):
        s = SpectrumData.from_mne(raw)
    assert s.n_segments >= 20


def test_flat_channel_is_named_with_how_to_leave_it_out(tmp_path, capsys):
    raw = _raw(["O1", "O2", "Pz"], scale={1: 0.0})
    with pytest.raises(ValueError, match=r"flat channel\(s\): 'O2' .*Leave it out with picks=\['O1', 'Pz'\]"):
        SpectrumData.from_mne(raw)
    f = tmp_path / "flat_raw.fif"
    raw.save(f, verbose="error")
    code, _, err = run(capsys, "fit", str(f), "--kind", "spectrum", "--out", str(tmp_path / "o"))
    assert code == 2 and "'O2'" in err and "Leave it out with --picks O1,Pz" in err


def test_picks_match_the_active_electrode_and_eegbci_names(tmp_path, capsys):
    raw = _raw(["EEG O1-A1", "EEG O2-A1", "EEG Pz-A1", "ECG ECG"])
    s = SpectrumData.from_mne(raw, picks=["O1", "o2"], fmin=2, fmax=40)
    assert s.channel_names == ("EEG O1-A1", "EEG O2-A1")
    assert SpectrumData.from_mne(_raw(["O1..", "Fcz.", "Fp1."]), picks=["O1", "FCz", "Fp1"]).channel_names == (
        "O1..", "Fcz.", "Fp1.")
    assert [_datachecks.standard_name(n) for n in ("Fc5.", "Fcz.", "Fp1.", "EEG O1-A1", "O1-REF", "AFZ")] == [
        "FC5", "FCz", "Fp1", "O1", "O1", "AFz"]
    with pytest.raises(ValueError, match=r"unknown channel name\(s\) \['Oz'\]"):
        SpectrumData.from_mne(raw, picks=["Oz"])
    f = tmp_path / "bipolar_raw.fif"
    raw.save(f, verbose="error")
    from jrinfer.cli import _load_data, build_parser

    args = build_parser().parse_args(["fit", str(f), "--kind", "spectrum", "--channels", "O1,O2", "--out", "x"])
    data = _load_data(args)
    assert data.metadata["channels_used"] == ["EEG O1-A1", "EEG O2-A1"]
    assert "channels used (2): EEG O1-A1, EEG O2-A1" in capsys.readouterr().err
    code, _, err = run(capsys, "fit", str(f), "--kind", "spectrum", "--picks", "Oz", "--out", str(tmp_path / "o"))
    assert code == 2 and "--picks: unknown channel name(s) ['Oz']" in err


def test_short_recording_needs_and_gets_a_shorter_segment(tmp_path, capsys):
    raw = _raw(["O1", "O2"], seconds=3.0, sfreq=500)
    f = tmp_path / "short_raw.fif"
    raw.save(f, verbose="error")
    code, _, err = run(capsys, "fit", str(f), "--kind", "spectrum", "--out", str(tmp_path / "o"))
    assert code == 2 and "--segment 4 s (the Welch segment, 2000 samples) is longer than the recording" in err
    assert "e.g. --segment 1.5" in err
    from jrinfer.cli import _load_data, build_parser

    args = build_parser().parse_args(["fit", str(f), "--kind", "spectrum", "--segment", "1.5", "--out", "x"])
    data = _load_data(args)
    assert data.metadata["seg_length_s"] == 1.5 and data.n_segments == 3


def test_warnings_travel_with_select_and_mean_and_are_not_shared():
    raw = _raw(["O1", "O2", "ECG ECG"], scale={0: 1000.0, 1: 1000.0})
    with pytest.warns(UserWarning):
        s = SpectrumData.from_mne(raw, fmin=2, fmax=40)
    m = s.select(channels=["O1"], fmax=30).mean_over_channels()
    assert m.metadata["warnings"] == s.metadata["warnings"] and len(s.metadata["warnings"]) == 2
    assert m.metadata["channels_used"] == ["O1"] and s.metadata["channels_used"] == ["O1", "O2"]
    m.metadata["warnings"].append("x")
    assert "x" not in s.metadata["warnings"]
    assert m.to_units("V^2/Hz").metadata["warnings"][-1] == "x"
    json.dumps(m.metadata)


def test_evoked_from_mne_default_picks_skip_ecg_label():
    info = mne.create_info(["EEG Cz", "ECG ECG"], 1000.0, "eeg")
    t = np.arange(-100, 500) / 1000.0
    data = np.stack([-6e-6 * np.exp(-((t - 0.093) / 0.03) ** 2), 1e-3 * np.sin(2 * np.pi * t)])
    ev = mne.EvokedArray(data, info, tmin=-0.1, nave=40, verbose="error")
    with pytest.warns(UserWarning, match="ECG ECG"):
        e = EvokedData.from_mne(ev)
    assert e.channel_names == ("EEG Cz",) and e.metadata["channels_used"] == ["EEG Cz"]
    assert torch.isclose(e.values.min(), torch.tensor(-6.0, dtype=torch.float64), rtol=1e-3)
