"""SpectrumData / EvokedData: construction, validation, CSV and MNE round trips."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from jrinfer.data import EvokedData, SpectrumData


def _spec(n_ch=2, **kw):
    f = torch.arange(1.0, 41.0, 0.5, dtype=torch.float64)
    p = torch.stack([(c + 1.0) / f + torch.exp(-((f - 10.0) ** 2)) for c in range(n_ch)])
    return SpectrumData.from_arrays(f, p, channel_names=[f"c{i}" for i in range(n_ch)], **kw)


def _evoked():
    t = torch.linspace(-0.1, 0.5, 91, dtype=torch.float64)
    v = torch.stack([torch.sin(2 * torch.pi * 5 * t), -torch.exp(-((t - 0.1) / 0.02) ** 2) + 0.3])
    return EvokedData.from_arrays(t, v, channel_names=["Fz", "Cz"], n_averaged=12)


# ------------------------------------------------------------------- basics
def test_from_arrays_one_channel_defaults():
    s = SpectrumData.from_arrays([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert s.power.shape == (1, 3) and s.power.dtype == torch.float64
    assert s.channel_names == ("ch0",) and s.units == "uV^2/Hz" and s.n_segments is None
    assert s.n_channels == 1 and "ch0" in repr(s)
    e = EvokedData.from_arrays([0.0, 0.01], [1.0, -1.0], units="µV")
    assert e.channel_names == ("ch0",) and e.units == "uV" and e.sampling_rate == pytest.approx(100.0)


def test_immutable_and_private_copy():
    f = torch.tensor([1.0, 2.0])
    p = torch.tensor([[1.0, 2.0]])
    s = SpectrumData.from_arrays(f, p)
    p[0, 0] = -5.0
    assert s.power[0, 0] == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.units = "V^2/Hz"
    with pytest.raises(ValueError, match="power"):
        dataclasses.replace(s, power=torch.tensor([[0.0, 1.0]]))
    assert dataclasses.replace(s, n_segments=7).n_segments == 7


def test_units_conversion_exact_and_normalised():
    s = _spec()
    for alias in ("µV^2/Hz", "μV^2/Hz", "uV²/Hz"):
        assert SpectrumData.from_arrays(s.freqs, s.power, units=alias).units == "uV^2/Hz"
    v = s.to_units("V^2/Hz")
    assert v.units == "V^2/Hz"
    assert torch.equal(v.power, s.power / 1e12)
    assert torch.equal(s.to_units("mV^2/Hz").power, s.power / 1e6)
    torch.testing.assert_close(v.to_units("uV^2/Hz").power, s.power, rtol=1e-15, atol=0)
    e = _evoked()
    assert torch.equal(e.to_units("V").values, e.values / 1e6)
    assert torch.equal(e.to_units("mV").to_units("uV").values, e.values / 1e3 * 1e3)


def test_select_mean_peak():
    s = _spec(3)
    sub = s.select(channels=["c2", "c0"], fmin=5, fmax=20)
    assert sub.channel_names == ("c2", "c0")
    assert sub.freqs[0] == 5.0 and sub.freqs[-1] == 20.0
    assert torch.equal(sub.power[1], s.power[0, (s.freqs >= 5) & (s.freqs <= 20)])
    assert s.peak_frequency(fmin=5, fmax=15).tolist() == [10.0, 10.0, 10.0]
    m = s.mean_over_channels()
    assert m.channel_names == ("mean",) and m.metadata["averaged_channels"] == ["c0", "c1", "c2"]
    torch.testing.assert_close(m.power[0], s.power.mean(0))


def test_evoked_methods():
    e = _evoked()
    assert e.sampling_rate == pytest.approx(150.0)
    b = e.baseline_correct(None, 0.0)
    assert b.values[:, e.times <= 0].mean(1).abs().max() < 1e-12
    w = e.select("Cz", tmin=0.05, tmax=0.15)
    assert w.channel_names == ("Cz",) and w.times[0] >= 0.05 and w.times[-1] <= 0.15
    assert float(w.times[w.values[0].argmin()]) == pytest.approx(0.1, abs=0.007)
    assert e.mean_over_channels("avg").channel_names == ("avg",)
    with pytest.raises(ValueError, match="uniformly spaced"):
        EvokedData.from_arrays([0.0, 0.1, 0.3], [1.0, 2.0, 3.0]).sampling_rate


# ---------------------------------------------------------------------- CSV
def test_csv_round_trip(tmp_path):
    s = _spec(3, n_segments=9)
    p = s.to_csv(tmp_path / "s.csv")
    # units travel in the header (deliberate change: they used to be lost and assumed on reading)
    assert p.read_text().splitlines()[0] == "freq,c0 [uV^2/Hz],c1 [uV^2/Hz],c2 [uV^2/Hz]"
    back = SpectrumData.from_csv(p, n_segments=9)
    assert torch.equal(back.freqs, s.freqs) and torch.equal(back.power, s.power)
    assert back.channel_names == s.channel_names and back.n_segments == 9
    assert back.units == "uV^2/Hz" and back.metadata["units_from"] == "header"
    back_v = SpectrumData.from_csv(s.to_units("V^2/Hz").to_csv(tmp_path / "v.csv"))
    assert back_v.units == "V^2/Hz" and torch.allclose(back_v.power, s.power * 1e-12, rtol=1e-15, atol=0)
    e = _evoked()
    back = EvokedData.from_csv(e.to_csv(tmp_path / "e.csv"), n_averaged=12)
    assert torch.equal(back.times, e.times) and torch.equal(back.values, e.values)
    assert back.channel_names == ("Fz", "Cz")


def test_csv_power_columns_and_overwrite(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("freq,power,power_2\n1,2,3\n2,4,5\n\n")
    s = SpectrumData.from_csv(p, units="V^2/Hz")
    assert s.channel_names == ("power", "power_2") and s.units == "V^2/Hz"
    assert s.power.tolist() == [[2.0, 4.0], [3.0, 5.0]]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        s.to_csv(p)
    s.to_csv(p, overwrite=True)
    assert SpectrumData.from_csv(p).power.tolist() == [[2.0, 4.0], [3.0, 5.0]]
    q = tmp_path / "e.csv"
    q.write_text("time,value\n0,1\n0.5,-1\n")
    assert EvokedData.from_csv(q).channel_names == ("value",)


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("", "empty"),
        ("\n\n", "empty"),
        ("1,2\n2,3\n", "missing header.*freq"),
        ("frequency_bin,power\n1,2\n", "first header column must be 'freq'"),
        ("time,value\n1,2\n", "evoked-potential CSV"),
        ("freq;power\n1;2\n", "separated by commas"),
        ("freq\n1\n2\n", "no data column"),
        ("freq,power\n", "no data rows"),
        ("freq,power,power\n1,2,3\n", "unique"),
        ("freq,,power\n1,2,3\n", "empty name"),
        ("freq,power\n1,2\n2,abc\n", r"line 3, column 2 \('power'\): 'abc' is not a number"),
        ("freq,power\n1,2\n2,\n", r"line 3, column 2"),
        ("freq,power\n1,2\n2,3,4\n", "line 3 has 3 cell.*ragged"),
        ("freq,power\n2,1\n1,2\n", "freqs must be strictly increasing"),
        ("freq,power\n1,1\n2,-2\n", "power must be finite and > 0; channel 'power'"),
        ("freq,power\n1,1\n2,nan\n", "power must be finite"),
    ],
)
def test_csv_bad_files(tmp_path, content, pattern):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(ValueError, match=pattern) as err:
        SpectrumData.from_csv(p)
    assert "path" in str(err.value)


@pytest.mark.parametrize(
    "blob, pattern",
    [
        (b"0       " + b"X" * 248 + bytes(range(256)), "EDF"),
        (b"MATLAB 5.0 MAT-file" + bytes(100), "MATLAB"),
        (b"\x00\x01\x02freq", "binary"),
        (b"freq,power\n1,\xff\xfe\n", "UTF-8"),
    ],
)
def test_csv_rejects_binary(tmp_path, blob, pattern):
    p = tmp_path / "rec.edf"
    p.write_bytes(blob)
    with pytest.raises(ValueError, match=pattern) as err:
        SpectrumData.from_csv(p)
    assert "path" in str(err.value) and "not" in str(err.value)


def test_csv_other_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        SpectrumData.from_csv(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="directory"):
        SpectrumData.from_csv(tmp_path)
    with pytest.raises(ValueError, match="path must be"):
        SpectrumData.from_csv(3)
    p = tmp_path / "e.csv"
    p.write_text("freq,power\n1,2\n")
    with pytest.raises(ValueError, match="spectrum CSV"):
        EvokedData.from_csv(p)


def test_to_csv_is_atomic_and_keeps_the_usual_permissions(tmp_path, monkeypatch):
    import os

    import jrinfer.data as data_mod

    s = SpectrumData([1.0, 2.0], [[2.0, 4.0]], units="uV^2/Hz")
    p = s.to_csv(tmp_path / "s.csv")
    before = p.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # as open(path, "w") would give
    calls = []

    def boom(x):
        calls.append(x)
        if len(calls) > 2:
            raise RuntimeError("disk full")
        return repr(x)

    monkeypatch.setattr(data_mod, "_fmt", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        s.to_csv(p, overwrite=True)
    assert p.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == ["s.csv"]
    with pytest.raises(ValueError, match="overwrite must be True or False, got 'yes'"):
        s.to_csv(p, overwrite="yes")


# --------------------------------------------------------------- bad inputs
F3 = [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(freqs=[1.0, 3.0, 2.0], power=[1.0, 1.0, 1.0]), r"freqs must be strictly increasing.*decreasing"),
        (dict(freqs=[1.0, 2.0, 2.0], power=[1.0, 1.0, 1.0]), r"freqs must be strictly increasing.*duplicated"),
        (dict(freqs=[-1.0, 2.0, 3.0], power=[1.0, 1.0, 1.0]), "freqs must be >= 0"),
        (dict(freqs=[1.0, float("nan"), 3.0], power=[1.0, 1.0, 1.0]), "freqs must be finite"),
        (dict(freqs=[[1.0, 2.0]], power=[1.0, 1.0]), "freqs must be a non-empty 1-D"),
        (dict(freqs=[], power=[]), "freqs must be a non-empty 1-D"),
        (dict(freqs=F3, power=[1.0, -1.0, 1.0]), r"power must be finite and > 0; channel 'ch0' has 1 non-positive"),
        (dict(freqs=F3, power=[1.0, 1.0, 0.0]), r"non-positive value\(s\) \(first at 3 Hz"),
        (dict(freqs=F3, power=[1.0, float("nan"), 1.0]), r"power must be finite.*NaN/inf.*first at 2 Hz"),
        (dict(freqs=F3, power=[1.0, float("inf"), 1.0]), "power must be finite"),
        (dict(freqs=F3, power=[1.0, 1.0]), r"power must have 3 columns to match freqs"),
        (dict(freqs=F3, power=torch.ones(2, 2, 3)), r"power must have shape \(n_channels, 3\)"),
        (dict(freqs=F3, power="abc"), "power must be"),
        (dict(freqs=F3, power=torch.ones(2, 3), channel_names=["a"]), "channel_names must have one name per channel"),
        (dict(freqs=F3, power=torch.ones(2, 3), channel_names=["a", "a"]), "channel_names must be unique"),
        (dict(freqs=F3, power=torch.ones(1, 3), channel_names=[3]), "channel_names must be non-empty strings"),
        (dict(freqs=F3, power=torch.ones(3), units="uV"), "units must be one of"),
        (dict(freqs=F3, power=torch.ones(3), n_segments=0), "n_segments must be an int >= 1"),
        (dict(freqs=F3, power=torch.ones(3), n_segments=2.5), "n_segments must be an int >= 1"),
        (dict(freqs=F3, power=torch.ones(3), n_segments=True), r"n_segments must be an int >= 1.*True.*or None"),
        (dict(freqs=F3, power=torch.ones(3), metadata=[1]), "metadata must be a dict"),
    ],
)
def test_spectrum_bad_inputs(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SpectrumData.from_arrays(**kwargs)


def test_spectrum_error_message_names_channel_and_frequency():
    f = torch.arange(10.0, 15.0, 0.5)
    p = torch.ones(2, f.numel())
    p[1, 5:8] = 0.0
    with pytest.raises(ValueError) as err:
        SpectrumData.from_arrays(f, p, channel_names=["O1", "O2"])
    assert str(err.value) == (
        "power must be finite and > 0; channel 'O2' has 3 non-positive value(s) (first at 12.5 Hz: 0.0)"
    )


def test_evoked_bad_inputs():
    with pytest.raises(ValueError, match="times must be strictly increasing"):
        EvokedData.from_arrays([0.0, 0.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="values must be finite"):
        EvokedData.from_arrays([0.0, 1.0], [1.0, float("nan")])
    with pytest.raises(ValueError, match="values must have 2 columns"):
        EvokedData.from_arrays([0.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="units must be one of"):
        EvokedData.from_arrays([0.0, 1.0], [1.0, 2.0], units="uV^2/Hz")
    with pytest.raises(ValueError, match="n_averaged"):
        EvokedData.from_arrays([0.0, 1.0], [1.0, 2.0], n_averaged=-3)
    e = _evoked()
    with pytest.raises(ValueError, match=r"channels: unknown channel name\(s\) \['Pz'\]; available channels: \['Fz"):
        e.select("Pz")
    with pytest.raises(ValueError, match="tmin/tmax select an empty window"):
        e.select(tmin=2.0)
    with pytest.raises(ValueError, match="tmin must be <= tmax"):
        e.baseline_correct(0.2, 0.1)


def test_select_and_window_errors():
    s = _spec()
    with pytest.raises(ValueError, match=r"channels: unknown channel name\(s\) \['O1'\]; available channels"):
        s.select(channels=["O1"])
    with pytest.raises(ValueError, match="channels must name at least one"):
        s.select(channels=[])
    with pytest.raises(ValueError, match="fmin/fmax select an empty window.*cover 1 to 40.5 Hz"):
        s.select(fmin=50)
    with pytest.raises(ValueError, match="fmin/fmax select an empty window"):
        s.peak_frequency(fmin=10.1, fmax=10.4)
    with pytest.raises(ValueError, match="fmin must be <= fmax"):
        s.select(fmin=20, fmax=10)
    with pytest.raises(ValueError, match="fmin must be a real number"):
        s.select(fmin="low")
    with pytest.raises(ValueError, match="units must be one of"):
        s.to_units("dB")
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        s.mean_over_channels("")


# ---------------------------------------------------------------------- MNE
@pytest.fixture(scope="module")
def raw():
    mne = pytest.importorskip("mne")
    sf = 250.0
    t = np.arange(int(60 * sf)) / sf
    rng = np.random.default_rng(1)
    x = np.vstack([20e-6 * np.sin(2 * np.pi * 10 * t) + 5e-6 * rng.standard_normal(t.size) for _ in range(3)])
    info = mne.create_info(["O1", "O2", "STI"], sf, ["eeg", "eeg", "stim"])
    return mne.io.RawArray(x, info, verbose="error")


def test_from_mne_raw(raw):
    from scipy.signal import welch

    s = SpectrumData.from_mne(raw, fmin=1, fmax=40)
    assert s.channel_names == ("O1", "O2")  # stim channel not picked by default
    assert s.peak_frequency().tolist() == [10.0, 10.0]
    assert s.n_segments == 1 + (15000 - 1000) // 500 == 29
    assert s.units == "uV^2/Hz" and s.freqs[1] - s.freqs[0] == 0.25
    f, ref = welch(raw.get_data(picks=["O1"])[0], fs=250.0, window="hann", nperseg=1000, noverlap=500)
    keep = (f >= 1) & (f <= 40)
    torch.testing.assert_close(s.power[0], torch.from_numpy(ref[keep] * 1e12), rtol=1e-9, atol=0)
    v = SpectrumData.from_mne(raw, picks=["O2"], fmin=1, fmax=40, units="V^2/Hz")
    assert v.units == "V^2/Hz" and v.channel_names == ("O2",)
    assert torch.equal(v.power * 1e12, s.power[1:])
    assert v.metadata["method"] == "welch" and v.metadata["n_per_seg"] == 1000


def test_from_mne_default_fmin_drops_dc_and_picks_order(raw):
    s = SpectrumData.from_mne(raw, picks=["O2", "O1"], seg_length=2.0, overlap=0.0)
    assert s.channel_names == ("O2", "O1")
    o1 = SpectrumData.from_mne(raw, picks="O1", seg_length=2.0, overlap=0.0)
    assert torch.equal(s.power[1], o1.power[0]) and not torch.equal(s.power[0], o1.power[0])
    assert s.freqs[0] == 0.5 and s.freqs[-1] == 125.0
    assert s.n_segments == 30


def test_from_mne_epochs_spectrum_and_bad_spans(raw):
    import mne

    epochs = mne.make_fixed_length_epochs(raw, duration=10.0, verbose="error")
    s = SpectrumData.from_mne(epochs, fmin=2, fmax=30)
    assert s.n_segments == 6 * (1 + (2500 - 1000) // 500) and s.metadata["n_epochs"] == 6
    assert s.peak_frequency().tolist() == [10.0, 10.0]
    spec = raw.compute_psd(method="welch", n_fft=500, average=None, picks=["O1"], verbose="error")
    s = SpectrumData.from_mne(spec, fmin=2)
    assert s.n_segments == 15000 // 500 and s.peak_frequency().tolist() == [10.0]
    s = SpectrumData.from_mne(raw.compute_psd(verbose="error"), fmin=2)
    assert s.n_segments is None and s.channel_names == ("O1", "O2")
    s = SpectrumData.from_mne(epochs.compute_psd(verbose="error"), fmin=2, fmax=30)
    assert s.metadata["n_epochs"] == 6 and s.peak_frequency().tolist() == [10.0, 10.0]
    r = raw.copy()
    r.set_annotations(mne.Annotations([10.0], [5.0], ["BAD_blink"]))
    assert SpectrumData.from_mne(r).n_segments == 4 + 21


def test_from_mne_bad_inputs(raw):
    import mne

    unknown = r"picks: unknown channel name\(s\) \['Oz'\]; available channels: \['O1', 'O2', 'STI'\]"
    with pytest.raises(ValueError, match=unknown):
        SpectrumData.from_mne(raw, picks=["Oz"])
    with pytest.raises(ValueError, match="picks must be channels recorded in volts.*'STI'"):
        SpectrumData.from_mne(raw, picks=["STI"])
    with pytest.raises(ValueError, match="fmin/fmax select an empty frequency window"):
        SpectrumData.from_mne(raw, fmin=200.0)
    with pytest.raises(ValueError, match="fmin/fmax select an empty frequency window"):
        SpectrumData.from_mne(raw, fmin=10.1, fmax=10.2)
    with pytest.raises(ValueError, match="fmin must be <= fmax"):
        SpectrumData.from_mne(raw, fmin=30, fmax=20)
    with pytest.raises(ValueError, match="seg_length=100 s .* longer than the recording"):
        SpectrumData.from_mne(raw, seg_length=100)
    with pytest.raises(ValueError, match="overlap must be a fraction"):
        SpectrumData.from_mne(raw, overlap=1.0)
    with pytest.raises(ValueError, match="units must be one of"):
        SpectrumData.from_mne(raw, units="dB")
    with pytest.raises(ValueError, match="inst must be an mne.io.Raw"):
        SpectrumData.from_mne(np.zeros((2, 100)))
    evoked = mne.make_fixed_length_epochs(raw, duration=10.0, verbose="error").average()
    with pytest.raises(ValueError, match="EvokedData.from_mne"):
        SpectrumData.from_mne(evoked)


def test_evoked_from_mne(raw):
    import mne

    ev = mne.make_fixed_length_epochs(raw, duration=1.0, verbose="error").average()
    e = EvokedData.from_mne(ev, picks=["O1"], tmin=0.1, tmax=0.5)
    assert e.n_averaged == 60 and e.units == "uV" and e.channel_names == ("O1",)
    assert e.times[0] >= 0.1 and e.times[-1] <= 0.5
    mask = (ev.times >= 0.1) & (ev.times <= 0.5)
    assert torch.equal(e.values[0], torch.from_numpy(ev.data[0, mask] * 1e6))
    with pytest.raises(ValueError, match="evoked must be an mne.Evoked"):
        EvokedData.from_mne(raw)
    with pytest.raises(ValueError, match="tmin/tmax select an empty window"):
        EvokedData.from_mne(ev, tmin=5.0)
    with pytest.raises(ValueError, match="picks: unknown channel"):
        EvokedData.from_mne(ev, picks="Cz")


def test_import_does_not_pull_heavy_modules():
    code = (
        "import sys, jrinfer.data, jrinfer.datasets\n"
        "bad = [m for m in ('mne', 'pandas', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
