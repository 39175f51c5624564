"""jrinfer.datasets on the real recordings in the local cache (JRINFER_DATA).

The recordings are looked up in $JRINFER_DATA, else ../shared/data relative to
the repository root. Missing recordings skip the tests locally and fail them
in CI (env CI set).
"""

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_recordings
from jrinfer import datasets as D
from jrinfer.data import EvokedData, SpectrumData

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("JRINFER_DATA") or REPO.parent / "shared" / "data").absolute()


def need(*rels):
    """Skip (locally) or fail (CI) unless the recordings exist in the cache."""
    require_recordings(*rels)


# ------------------------------------------------------------- cache folder
def test_data_home_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("JRINFER_DATA", str(tmp_path))
    assert D.data_home() == tmp_path
    assert D.data_home(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("JRINFER_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert D.data_home() == tmp_path / "jrinfer_data"
    with pytest.raises(ValueError, match="data_home must be a folder path"):
        D.data_home(3)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="data_home must be a folder; got the file"):
        D.data_home(tmp_path / "f")


def test_registry_matches_cache():
    need(*D.REGISTRY)
    for rel, digest in D.REGISTRY.items():
        assert D._digest(DATA / rel) == digest, rel


def test_missing_file_hint(tmp_path, monkeypatch):
    monkeypatch.delenv("JRINFER_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        D.fetch_eegmat(0, 1, data_home=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "eegmat" / "Subject00_1.edf") in msg
    assert "JRINFER_DATA" in msg and "download=True" in msg and "PhysioNet" in msg
    with pytest.raises(FileNotFoundError, match="no stable public download URL"):
        D.fetch_bonn("Z", 3, data_home=tmp_path, download=True)
    with pytest.raises(FileNotFoundError, match="neurokit2 0.2.13"):
        D.fetch_mne_sample_erp(data_home=tmp_path)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"subject must be one of 0, 3, 5.*got 7"):
        D.fetch_eegmat(7, data_home=tmp_path)
    with pytest.raises(ValueError, match="recording must be one of 1, 2"):
        D.fetch_eegmat(0, 3, data_home=tmp_path)
    with pytest.raises(ValueError, match="set must be one of 'O', 'Z'"):
        D.fetch_bonn("B", data_home=tmp_path)
    with pytest.raises(ValueError, match="segment must be one of 1..100"):
        D.fetch_bonn("O", 0, data_home=tmp_path)
    with pytest.raises(ValueError, match="condition must be one of"):
        D.fetch_mne_sample_erp("auditory", data_home=tmp_path)
    with pytest.raises(ValueError, match="download must be True or False"):
        D.fetch_eegmat(0, data_home=tmp_path, download="yes")
    with pytest.raises(ValueError, match="unexpected keyword"):
        D.eegmat_spectrum(0, seglength=2.0)


# ---------------------------------------------------------------- checksums
def test_hash_mismatch_detected_and_cache_invalidated(tmp_path):
    rel = "eegmat/Subject00_2.edf"
    need(rel)
    dst = tmp_path / rel
    dst.parent.mkdir()
    shutil.copyfile(DATA / rel, dst)
    assert D._fetch(rel, tmp_path, False) == dst  # verified, digest cached
    with open(dst, "r+b") as fh:  # flip one byte in place: same size
        fh.seek(100_000)
        b = fh.read(1)
        fh.seek(100_000)
        fh.write(bytes([b[0] ^ 0xFF]))
    st = dst.stat()
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(D.ChecksumError) as err:
        D.fetch_eegmat(0, 2, data_home=tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "Subject00_2.edf" in msg and D.REGISTRY[rel] in msg and D._digest(dst) in msg


def test_digest_memo_hashes_once_per_version(tmp_path, monkeypatch):
    import pooch

    calls = []
    real = pooch.file_hash
    monkeypatch.setattr(pooch, "file_hash", lambda f, alg="sha256": calls.append(f) or real(f, alg=alg))
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert D._digest(f) == expected and D._digest(f) == expected and len(calls) == 1
    f.write_bytes(b"abcd")  # new size: hashed again
    assert D._digest(f) != expected and len(calls) == 2


def test_missing_optional_modules_name_the_install(tmp_path, monkeypatch):
    import sys

    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    monkeypatch.setitem(sys.modules, "pooch", None)  # import pooch now raises ImportError
    with pytest.raises(ImportError, match=r"pooch is needed for checking and downloading jrinfer datasets: pip install"):
        D._digest(f)
    monkeypatch.undo()
    rel = "eegmmidb/S001R01.edf"
    need(rel)
    monkeypatch.setitem(sys.modules, "mne", None)
    with pytest.raises(ImportError, match=r"mne is needed for the dataset fetchers .*jrinfer\[eeg\]"):
        D.fetch_eegmmidb_baseline(data_home=DATA)


def test_bonn_set_hash_mismatch(tmp_path):
    need("bonn/setZ_eyes_open/Z100.txt")
    folder = tmp_path / "bonn" / "setZ_eyes_open"
    shutil.copytree(DATA / "bonn" / "setZ_eyes_open", folder, copy_function=shutil.copyfile)
    folder.chmod(0o755)  # the cache may be read-only; copytree copies the folder's mode
    f = folder / "Z050.txt"
    f.write_text(f.read_text().replace("\n", "\n1", 1))
    with pytest.raises(D.ChecksumError, match="Bonn set Z.*expected 7b6c167f"):
        D.fetch_bonn("Z", 1, data_home=tmp_path)
    f.unlink()
    with pytest.raises(FileNotFoundError, match="1 of 100 files of Bonn set Z are missing|Z050.txt"):
        D.fetch_bonn("Z", 1, data_home=tmp_path)


def test_download_from_file_url(tmp_path, monkeypatch):
    """The pooch download path (temp file, hash check, atomic rename) with file:// URLs: no network."""
    rel = "eegmat/Subject05_2.edf"
    need(rel)
    monkeypatch.setattr(D, "_source", lambda r: ((DATA / r).as_uri(), None))
    raw = D.fetch_eegmat(5, 2, data_home=tmp_path / "cache", download=True)
    assert (tmp_path / "cache" / rel).is_file() and raw.info["sfreq"] == 500.0
    assert D._digest(tmp_path / "cache" / rel) == D.REGISTRY[rel]
    monkeypatch.setitem(D.REGISTRY, "eegmat/Subject03_2.edf", "0" * 64)
    with pytest.raises(D.ChecksumError, match="expected 0000") as err:
        D.fetch_eegmat(3, 2, data_home=tmp_path / "cache", download=True)
    assert D.REGISTRY["eegmat/Subject05_2.edf"] not in str(err.value)
    assert "got " + D._digest(DATA / "eegmat/Subject03_2.edf") in str(err.value)
    assert sorted(p.name for p in (tmp_path / "cache" / "eegmat").iterdir()) == ["Subject05_2.edf"]


def _tarball(tmp_path, text="Label,Condition,Time\n"):
    import tarfile

    payload = tmp_path / "data.csv"
    payload.write_text(text)
    archive = tmp_path / "pkg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="pkg-1.0/studies/data.csv")
    return payload, archive


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_member_from_tarball(tmp_path):
    payload, archive = _tarball(tmp_path)
    dest = tmp_path / "out" / "data.csv"
    D._download_member(archive.as_uri(), _sha(archive), "pkg-1.0/studies/data.csv", dest, _sha(payload))
    assert dest.read_text() == payload.read_text()
    assert [p.name for p in dest.parent.iterdir()] == ["data.csv"]  # archive and unpacked folder gone


@pytest.mark.parametrize("bad", ["archive", "member", "missing"])
def test_download_member_refuses_and_leaves_nothing(tmp_path, bad):
    payload, archive = _tarball(tmp_path)
    dest = tmp_path / "out" / "data.csv"
    archive_sha = "0" * 64 if bad == "archive" else _sha(archive)
    member_sha = "1" * 64 if bad == "member" else _sha(payload)
    member = "pkg-1.0/other.csv" if bad == "missing" else "pkg-1.0/studies/data.csv"
    err_type = FileNotFoundError if bad == "missing" else D.ChecksumError
    with pytest.raises(err_type) as err:
        D._download_member(archive.as_uri(), archive_sha, member, dest, member_sha)
    msg = str(err.value)
    if bad == "archive":
        assert "expected " + "0" * 64 in msg and "got " + _sha(archive) in msg and "nothing was written" in msg
    elif bad == "member":
        assert "expected " + "1" * 64 in msg and "got " + _sha(payload) in msg
    else:
        assert "pkg-1.0/other.csv not found" in msg
    assert list(dest.parent.iterdir()) == []


def test_downloader_copies_file_urls_only(tmp_path, monkeypatch):
    src = tmp_path / "a b.bin"
    src.write_bytes(b"\x00\x01jr")
    out = tmp_path / "copy.bin"
    assert D._copy_or_http(src.as_uri(), str(out), None) is None
    assert out.read_bytes() == b"\x00\x01jr"
    assert D._copy_or_http(src.as_uri(), str(out), None, check_only=True) is True
    calls = []

    class FakeHTTP:
        def __init__(self, progressbar):
            calls.append(("init", progressbar))

        def __call__(self, url, output_file, pooch_, check_only=False):
            calls.append((url, output_file, check_only))

    import pooch

    monkeypatch.setattr(pooch, "HTTPDownloader", FakeHTTP)
    D._copy_or_http("https://example.org/x.edf", "tmpfile", None)
    assert calls[0][0] == "init" and calls[1] == ("https://example.org/x.edf", "tmpfile", False)


# -------------------------------------------------------------- recordings
def test_eegmat_alpha_peak():
    need("eegmat/Subject00_1.edf")
    s = D.eegmat_spectrum(subject=0, data_home=DATA)
    assert isinstance(s, SpectrumData)
    assert s.channel_names == ("O1", "O2") and s.units == "uV^2/Hz"
    assert s.freqs[0] >= 2.0 and s.freqs[-1] <= 40.0 and s.freqs[1] - s.freqs[0] == 0.25
    assert s.n_segments == 1 + (91000 - 2000) // 1000
    peak = s.peak_frequency(fmin=4.0, fmax=20.0)
    assert ((peak >= 8.0) & (peak <= 13.0)).all(), peak
    assert peak.tolist() == [10.5, 10.5]  # data README: 10.5 Hz
    alpha = s.select(fmin=8, fmax=13).power.mean()
    flank = torch.cat([s.select(fmin=4, fmax=7).power, s.select(fmin=14, fmax=18).power], 1).mean()
    assert alpha > 4 * flank
    assert 1.0 < float(s.power.max()) < 1e4  # µV^2/Hz scale
    assert s.metadata["subject"] == 0 and s.metadata["sha256"] == D.REGISTRY["eegmat/Subject00_1.edf"]
    assert D.eegmat_spectrum(0, channels=["EEG O1"], data_home=DATA).channel_names == ("O1",)
    with pytest.raises(ValueError, match=r"channels: unknown channel name\(s\) \['Oz'\]; available"):
        D.eegmat_spectrum(0, channels=["Oz"], data_home=DATA)


def test_fetch_eegmat_channels():
    need("eegmat/Subject00_2.edf")
    raw = D.fetch_eegmat(0, 2, data_home=DATA)
    assert raw.ch_names[:2] == ["Fp1", "Fp2"] and "O1" in raw.ch_names
    assert raw.get_channel_types(picks=["ECG", "A2-A1"]) == ["ecg", "misc"]
    assert raw.get_channel_types().count("eeg") == 19
    assert raw.n_times == 31000 and raw.info["sfreq"] == 500.0


def test_mne_sample_erp_n100():
    need("mne_sample_erp_neurokit2/data.csv")
    e = D.fetch_mne_sample_erp("audio", data_home=DATA)
    assert isinstance(e, EvokedData) and e.units == "uV"
    assert e.n_averaged == 72 + 73 and e.n_channels == 10 and e.n_times == 91
    assert e.sampling_rate == pytest.approx(150.0, rel=1e-6)
    m = e.mean_over_channels("frontal")
    w = m.select(tmin=0.05, tmax=0.2)
    i = int(w.values[0].argmin())
    t_peak, v_peak = float(w.times[i]), float(w.values[0, i])
    assert 0.080 <= t_peak <= 0.120 and v_peak < -3.0  # README: -6 µV at 93 ms
    v = D.fetch_mne_sample_erp(["visual/left"], channels=["EEG 001"], units="V", data_home=DATA)
    assert v.n_averaged == 73 and v.channel_names == ("EEG 001",) and v.units == "V"
    assert float(v.values.abs().max()) < 1e-4


def test_eeglab_and_eegmmidb_load():
    need("eeglab_sample/eeglab_data.set", "eeglab_sample/eeglab_data.fdt", "eegmmidb/S001R01.edf")
    raw = D.fetch_eeglab_sample(data_home=DATA)
    assert len(raw.ch_names) == 32 and raw.info["sfreq"] == 128.0
    assert abs(raw.times[-1] - 238.3) < 0.1
    assert sorted(set(raw.annotations.description)) == ["rt", "square"]
    assert list(raw.annotations.description).count("square") == 80
    mm = D.fetch_eegmmidb_baseline(data_home=DATA)
    assert len(mm.ch_names) == 64 and mm.info["sfreq"] == 160.0 and "FC5" in mm.ch_names


def test_bonn_loads():
    need("bonn/setO_eyes_closed/O100.txt", "bonn/setZ_eyes_open/Z100.txt")
    x = D.fetch_bonn("O", 1, data_home=DATA)
    assert x.shape == (4097,) and x.dtype == torch.float64
    assert x[:3].tolist() == [-24.0, -22.0, -17.0] and torch.equal(x, x.round())
    o = D.bonn_spectrum("O", data_home=DATA)
    z = D.bonn_spectrum("Z", data_home=DATA)
    assert o.n_segments == 100 * (1 + (4097 - 694) // 347)
    assert 10.5 <= float(o.peak_frequency()) <= 12.0  # README: 11.3 Hz
    assert o.select(fmin=8, fmax=13).power.mean() > 3 * z.select(fmin=8, fmax=13).power.mean()
    one = D.bonn_spectrum("Z", segments=5, data_home=DATA)
    assert one.metadata["segments"] == [5] and one.n_segments == 10


# --------------------------------------------------------------- synthetic
def test_synthetic_spectrum_bundled_and_reproducible():
    s = D.synthetic_spectrum()
    assert s.units == "uV^2/Hz" and s.n_segments == 40 and s.channel_names == ("power",)
    assert s.freqs[0] == 1.0 and s.freqs[-1] == 40.0 and s.n_freqs == 79
    assert s.metadata["parameters"]["p_mean"] == 70.0 and s.metadata["seed"] == 1995
    assert float(s.peak_frequency(fmin=6, fmax=14)) in (9.5, 10.0, 10.5)
    assert 1.0 < float(s.power.max()) < 100.0
    pkg = REPO / "jrinfer" / "_data"
    for name in ("synthetic_spectrum.csv", "synthetic_spectrum.json"):
        assert (REPO / "datasets" / name).read_bytes() == (pkg / name).read_bytes(), name
    spec = importlib.util.spec_from_file_location("make_synthetic", REPO / "datasets" / "make_synthetic.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    freqs, power, info = mod.generate()
    np.testing.assert_array_equal(freqs, s.freqs.numpy())
    np.testing.assert_allclose(power, s.power[0].numpy(), rtol=1e-9)
    saved = json.loads((pkg / "synthetic_spectrum.json").read_text())
    np.testing.assert_allclose(info["noise_free_power"], saved["noise_free_power"], rtol=1e-9)
    ratio = power / np.asarray(info["noise_free_power"])
    assert abs(ratio.mean() - 1) < 0.1 and abs(ratio.var() * 40 - 1) < 0.6  # Gamma(K, 1/K)
