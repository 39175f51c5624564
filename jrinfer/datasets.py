"""Example data: real EEG recordings from a local cache, and a bundled synthetic spectrum.

Real recordings are read from a cache folder (see :func:`data_home`) whose
layout is::

    eegmat/Subject00_1.edf ...                 PhysioNet EEGMAT (resting / arithmetic)
    eegmmidb/S001R01.edf                       PhysioNet EEGMMIDB eyes-open baseline
    eeglab_sample/eeglab_data.set + .fdt       EEGLAB tutorial dataset
    mne_sample_erp_neurokit2/data.csv          MNE "sample" auditory/visual ERP epochs
    bonn/setO_eyes_closed/O001.txt ...         Bonn set O (B): eyes closed
    bonn/setZ_eyes_open/Z001.txt ...           Bonn set Z (A): eyes open

Every file is checked against a SHA-256 registry on every fetch (the digest,
from ``pooch.file_hash``, is cached per process by path, modification time and
size, so repeated loads are cheap). Files are downloaded from their original
public source only when a fetcher is called with ``download=True``; nothing is
ever downloaded implicitly. Downloads go through ``pooch.retrieve``: into a
temporary file next to the target, checked against the registry's SHA-256,
then moved into place, so a file appears whole and verified or not at all. Licences differ: EEGMAT and EEGMMIDB are ODC-By 1.0; the EEGLAB
sample, the MNE sample ERP table and the Bonn data have no open data licence
and are for tests and validation only.

MNE-Python is imported lazily (``pip install 'jrinfer[eeg]'``) by the fetchers
that return MNE objects, and pooch (a core dependency) by those that check or
download registry files; :func:`synthetic_spectrum` and the Bonn fetchers need
only numpy and torch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from jrinfer import _checks
from jrinfer._optional import optional_import
from jrinfer.data import EvokedData, SpectrumData

__all__ = [
    "ChecksumError",
    "data_home",
    "fetch_eegmat",
    "eegmat_spectrum",
    "fetch_eegmmidb_baseline",
    "fetch_eeglab_sample",
    "fetch_mne_sample_erp",
    "fetch_bonn",
    "bonn_spectrum",
    "synthetic_spectrum",
    "BONN_SFREQ",
    "REGISTRY",
]

_log = logging.getLogger("jrinfer.datasets")
_ENV = "JRINFER_DATA"
_MNE_FOR = "the dataset fetchers that return MNE-Python objects"

#: Sampling rate of the Bonn recordings in Hz (Andrzejak et al. 2001).
BONN_SFREQ = 173.61

#: SHA-256 of every single-file entry of the cache, by path relative to :func:`data_home`.
REGISTRY: dict[str, str] = {
    "eegmat/Subject00_1.edf": "ac46d8c9905d6750c8f07235f2e0d96771882cad8af06a8e32d88cfd16c376ed",
    "eegmat/Subject00_2.edf": "19476db6d5f2bcd40e417a7e1f2f9b276af05cf2c93a52a2be4d7524b4e9885c",
    "eegmat/Subject03_1.edf": "8f22c7eb40e2d2b2f61dadd874172f395fed9ca83c843e9d92b492ec2b3d4f41",
    "eegmat/Subject03_2.edf": "d4792fe50ad51d7ad607caeaf3c24f2d19087cb96311c4c2cbdfdd6418f56cf0",
    "eegmat/Subject05_1.edf": "844f7c4c0868f64003f50d02ecd9db3a7e60cd51df66f9ad2a460e279001eaf8",
    "eegmat/Subject05_2.edf": "651a9f1cbe3e85605ef6a8e3c13c8d8d130e1c41bb8ac23ac3c2fa9ab63665f7",
    "eegmmidb/S001R01.edf": "4743b736131a7e147c150e8b37711029b6cda5e356c4b3e8261a03cdcaaf8b0c",
    "eeglab_sample/eeglab_data.set": "27594dc378685d25d5f5f762f4f8332e7a3d988b6d5d41832bb2252d93988718",
    "eeglab_sample/eeglab_data.fdt": "3ec388b9a080c723c00cd380403d64cc754929d828375bbd53bd83b468136759",
    "mne_sample_erp_neurokit2/data.csv": "7017881c7da7bb7b8f7cac0e0a80027f51d64adff9a433611ceb4e90cdf72a60",
}

# Bonn: the data README gives one SHA-256 per set, of the files concatenated in name order
# (`cat setO_eyes_closed/*.txt | sha256sum`); the whole set is verified once per process.
_BONN = {
    "O": ("bonn/setO_eyes_closed", "b1bbc511d6b1990efb43094e289ccfda3dc62fcbb0c6f30e6fb2878b3bba9593", "eyes closed"),
    "Z": ("bonn/setZ_eyes_open", "7b6c167fedcea3fbef7ef30a033d9ade96e8124cba4348171f92342af812fbf7", "eyes open"),
}
_BONN_N = 100

_EEGLAB_COMMIT = "94b8557aa27484c4e2cb4775315802d420b93f32"
_NK_SDIST = (
    "https://files.pythonhosted.org/packages/source/n/neurokit2/neurokit2-0.2.13.tar.gz",
    "e0a3831e939444855c8350f01322d3ecece1faf8a290c179d730697930f10046",
    "neurokit2-0.2.13/studies/erp_gam/data.csv",
)


def _source(rel: str) -> tuple[str, str | None]:
    """(url, member inside an archive or None) of the original public copy of a registry entry."""
    top, name = rel.split("/", 1)
    if top == "eegmat":
        return f"https://physionet.org/files/eegmat/1.0.0/{name}", None
    if top == "eegmmidb":
        return f"https://physionet.org/files/eegmmidb/1.0.0/{name[:4]}/{name}", None
    if top == "eeglab_sample":
        return f"https://raw.githubusercontent.com/sccn/eeglab/{_EEGLAB_COMMIT}/sample_data/{name}", None
    if top == "mne_sample_erp_neurokit2":
        return _NK_SDIST[0], _NK_SDIST[2]
    raise KeyError(rel)  # pragma: no cover - registry and sources are kept in step


_SOURCE_TEXT = {
    "eegmat": "PhysioNet (https://physionet.org/content/eegmat/1.0.0/, ODC-By 1.0)",
    "eegmmidb": "PhysioNet (https://physionet.org/content/eegmmidb/1.0.0/, ODC-By 1.0)",
    "eeglab_sample": f"the EEGLAB GitHub repository (sccn/eeglab at commit {_EEGLAB_COMMIT[:12]}, sample_data/)",
    "mne_sample_erp_neurokit2": "the neurokit2 0.2.13 source distribution on PyPI (studies/erp_gam/data.csv)",
}


class ChecksumError(ValueError):
    """A cached data file's SHA-256 does not match the registry (corrupted or a different version)."""


# ================================================================ cache folder
def data_home(data_home=None) -> Path:
    """The folder that holds the cached recordings.

    Parameters
    ----------
    data_home : str or os.PathLike, optional
        Use this folder. Default: the ``JRINFER_DATA`` environment variable,
        else ``~/jrinfer_data``. ``~`` is expanded; the folder is not created.

    Returns
    -------
    pathlib.Path
    """
    if data_home is None:
        env = os.environ.get(_ENV, "").strip()
        data_home = env if env else "~/jrinfer_data"
    elif isinstance(data_home, (bytes, bytearray)) or not isinstance(data_home, (str, os.PathLike)):
        raise ValueError(f"data_home must be a folder path (str or os.PathLike) or None; got {data_home!r}")
    p = Path(data_home).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise ValueError(f"data_home must be a folder; got the file {str(p)!r}")
    return p


def _not_found(path: Path, root: Path, rel: str, how: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{rel} is not in the jrinfer data cache: looked for {str(path)!r} (data_home={str(root)!r}). "
        f"Point the cache at a folder that holds it: set the {_ENV} environment variable "
        f"(e.g. export {_ENV}=/path/to/jrinfer_data, a folder containing {rel}) or pass data_home=... . {how}"
    )


# ============================================================ SHA-256 checking
_DIGESTS: dict[str, tuple[int, int, str]] = {}


def _pooch():
    """The ``pooch`` module (hashing and downloads), imported on first use."""
    return optional_import("pooch", purpose="checking and downloading jrinfer datasets")


def _digest(path: Path) -> str:
    """SHA-256 of ``path`` (``pooch.file_hash``), remembered per path, modification time and size."""
    st = path.stat()
    key = str(path.resolve())
    hit = _DIGESTS.get(key)
    if hit is not None and hit[0] == st.st_mtime_ns and hit[1] == st.st_size:
        return hit[2]
    digest = _pooch().file_hash(str(path), alg="sha256")
    _DIGESTS[key] = (st.st_mtime_ns, st.st_size, digest)
    return digest


def _verify(path: Path, expected: str) -> None:
    actual = _digest(path)
    if actual != expected:
        raise ChecksumError(
            f"SHA-256 mismatch for {str(path)!r}: expected {expected}, got {actual}. The file is corrupted or a "
            "different version; delete it and fetch it again (download=True) or restore it from the original source"
        )


def _fetch(rel: str, data_home_, download: bool) -> Path:
    """Path of a verified registry file, downloading it first if asked."""
    _checks.check_bool("download", download)
    root = data_home(data_home_)
    path = root / rel
    if not path.is_file():
        top = rel.split("/", 1)[0]
        if not download:
            raise _not_found(path, root, rel, f"Or call with download=True to fetch it from {_SOURCE_TEXT[top]}.")
        url, member = _source(rel)
        if member is None:
            _download(url, path, REGISTRY[rel])
        else:
            _download_member(url, _NK_SDIST[1], member, path, REGISTRY[rel])
    _verify(path, REGISTRY[rel])
    return path


# ================================================================== downloads
def _copy_or_http(url: str, output_file, pooch_, check_only: bool = False):
    """A pooch downloader: ``file://`` URLs are copied (offline tests), http(s) goes to ``pooch.HTTPDownloader``."""
    pooch = _pooch()
    if not url.startswith("file:"):
        http = pooch.HTTPDownloader(progressbar=sys.stderr.isatty())
        return http(url, output_file, pooch_, check_only=check_only)
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    source = Path(url2pathname(urlsplit(url).path))
    if check_only:
        return source.is_file()
    if hasattr(output_file, "write"):
        with open(source, "rb") as fh:
            shutil.copyfileobj(fh, output_file)
    else:
        shutil.copyfile(source, output_file)
    return None


@contextmanager
def _quiet_pooch():
    """Silence pooch's own INFO messages (jrinfer logs the download itself)."""
    logger = _pooch().get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _retrieve(url: str, sha256_expected: str, dest: Path, label: str, **kw) -> str:
    """``pooch.retrieve`` into ``dest`` (temporary file, SHA-256 check, atomic move); ``ChecksumError`` on a mismatch."""
    pooch = _pooch()
    try:
        with _quiet_pooch():
            return pooch.retrieve(
                url, known_hash=f"sha256:{sha256_expected}", fname=dest.name, path=dest.parent,
                downloader=_copy_or_http, **kw,
            )
    except ValueError as err:
        if "does not match the known hash" not in str(err):
            raise
        got = re.search(r"got ([0-9a-fA-F]{64})", str(err))
        raise ChecksumError(
            f"SHA-256 mismatch for {label} downloaded from {url}: expected {sha256_expected}, "
            f"got {got.group(1) if got else 'another digest'}; nothing was written"
        ) from err


def _download(url: str, dest: Path, sha256_expected: str) -> None:
    """Fetch ``url`` into ``dest`` through pooch: temporary file, SHA-256 check, then atomic rename."""
    _log.warning("jrinfer: downloading %s -> %s", url, dest)
    _retrieve(url, sha256_expected, dest, dest.name)


def _download_member(url: str, archive_sha: str, member: str, dest: Path, sha256_expected: str) -> None:
    """Fetch a tar.gz archive, extract one member into ``dest`` (checked), and discard the archive.

    The archive is fetched and unpacked (``pooch.Untar``) in a temporary folder
    next to ``dest``, which is removed afterwards whatever happens; ``dest``
    appears only once the member's SHA-256 matches.
    """
    _log.warning("jrinfer: downloading %s (extracting %s) -> %s", url, member, dest)
    pooch = _pooch()
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".jrinfer-", suffix=".part", dir=dest.parent))
    try:
        archive = work / url.rsplit("/", 1)[-1]
        untar = pooch.Untar(members=[member], extract_dir=str(work / "untar"))
        _retrieve(url, archive_sha, archive, archive.name, processor=untar)
        extracted = work / "untar" / member
        if not extracted.is_file():
            raise FileNotFoundError(f"{member} not found in {url}")
        actual = pooch.file_hash(str(extracted), alg="sha256")  # a temporary file: not memoised
        if actual != sha256_expected:
            raise ChecksumError(f"SHA-256 mismatch for {member} from {url}: expected {sha256_expected}, got {actual}")
        os.replace(extracted, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ==================================================================== helpers
def _check_choice(name: str, value, allowed: Sequence[int], what: str) -> int:
    """An int (``_checks.check_int``) that is one of ``allowed``; the error lists them and says what they are."""
    try:
        out = _checks.check_int(name, value)
    except ValueError:
        out = None
    if out not in allowed:
        shown = ", ".join(map(str, allowed)) if len(allowed) <= 10 else f"{allowed[0]}..{allowed[-1]}"
        raise ValueError(f"{name} must be one of {shown} ({what}); got {value!r}")
    return out


_EEGMAT_SUBJECTS = (0, 3, 5)
_EEGMAT_RECORDINGS = {1: "rest (before the task, 182 s)", 2: "mental arithmetic (serial subtraction, 62 s)"}


def _eegmat_rel(subject, recording) -> str:
    s = _check_choice("subject", subject, _EEGMAT_SUBJECTS, "the EEGMAT subjects with SHA-256 sums in the registry")
    r = _check_choice("recording", recording, tuple(_EEGMAT_RECORDINGS), "1 = rest, 2 = mental arithmetic")
    return f"eegmat/Subject{s:02d}_{r}.edf"


# =================================================================== EEGMAT
def fetch_eegmat(subject: int = 0, recording: int = 1, *, data_home=None, download: bool = False):
    """PhysioNet EEGMAT recording (resting EEG with strong occipital alpha, or mental arithmetic).

    Zyma et al. (2019) *Data* 4:14, doi:10.3390/data4010014; PhysioNet
    (Goldberger et al. 2000). ODC-By 1.0. 19 EEG channels (10-20, linked-ear
    reference), 500 Hz, header band 0.5-45 Hz, ICA-cleaned.

    Parameters
    ----------
    subject : {0, 3, 5}
        Subject number (those with SHA-256 sums in :data:`REGISTRY`).
    recording : {1, 2}
        1 = rest before the task (182 s), 2 = serial-subtraction task (62 s).
    data_home : str or os.PathLike, optional
        Cache folder (see :func:`data_home`).
    download : bool
        Fetch a missing file from PhysioNet (checked against its SHA-256).

    Returns
    -------
    mne.io.Raw
        Preloaded, values in V. Channels are renamed from the EDF labels
        (``"EEG O1"`` -> ``"O1"``, ``"ECG ECG"`` -> ``"ECG"`` typed ``ecg``,
        ``"EEG A2-A1"`` -> ``"A2-A1"`` typed ``misc``).
    """
    rel = _eegmat_rel(subject, recording)
    path = _fetch(rel, data_home, download)
    mne = optional_import("mne", purpose=_MNE_FOR)
    raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
    raw.rename_channels(_eegmat_name)
    types = {n: t for n, t in (("A2-A1", "misc"), ("ECG", "ecg")) if n in raw.ch_names}
    if types:
        raw.set_channel_types(types, verbose="error")
    return raw


def _eegmat_name(name: str) -> str:
    if name == "ECG ECG":
        return "ECG"
    return name[4:] if name.startswith("EEG ") else name


def eegmat_spectrum(
    subject: int = 0,
    recording: int = 1,
    channels=("O1", "O2"),
    fmin: float = 2.0,
    fmax: float = 40.0,
    seg_length: float = 4.0,
    units: str = "uV^2/Hz",
    **kw,
) -> SpectrumData:
    """Welch spectrum of an EEGMAT recording (see :func:`fetch_eegmat`).

    Parameters
    ----------
    subject, recording : int
        As in :func:`fetch_eegmat`.
    channels : str or sequence of str
        Channel names, 10-20 labels such as ``"O1"`` (the EDF's ``"EEG O1"``
        is accepted too); ``None`` for all 19 EEG channels.
    fmin, fmax : float
        Frequency window in Hz (inclusive).
    seg_length : float
        Welch segment length in s (Hann window, 50% overlap unless
        ``overlap=`` is given).
    units : {"V^2/Hz", "mV^2/Hz", "uV^2/Hz"}
    **kw
        ``overlap`` (for :meth:`SpectrumData.from_mne`), ``data_home`` and
        ``download`` (for :func:`fetch_eegmat`).

    Returns
    -------
    SpectrumData
        Shape ``(len(channels), F)``; ``n_segments`` Welch segments;
        ``metadata`` records the dataset, subject, recording, file and hash.
    """
    allowed = {"overlap", "data_home", "download"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ValueError(f"unexpected keyword argument(s) {unknown}; allowed: {sorted(allowed)}")
    raw = fetch_eegmat(subject, recording, data_home=kw.get("data_home"), download=kw.get("download", False))
    if channels is not None:
        if isinstance(channels, str):
            channels = [channels]
        try:
            channels = [_eegmat_name(c) if isinstance(c, str) else c for c in channels]
        except TypeError:
            raise ValueError(f"channels must be a channel name or a list of names; got {channels!r}") from None
    else:
        channels = [n for n, t in zip(raw.ch_names, raw.get_channel_types()) if t == "eeg"]
    rel = _eegmat_rel(subject, recording)
    extra = {"overlap": kw["overlap"]} if "overlap" in kw else {}
    try:
        spec = SpectrumData.from_mne(raw, picks=channels, fmin=fmin, fmax=fmax, seg_length=seg_length, units=units,
                                     **extra)
    except ValueError as err:
        msg = str(err)
        raise ValueError(msg.replace("picks", "channels", 1) if msg.startswith("picks") else msg) from None
    md = dict(spec.metadata)
    md.update(
        dataset="PhysioNet EEGMAT 1.0.0 (Zyma et al. 2019, doi:10.3390/data4010014)",
        licence="ODC-By 1.0",
        subject=int(subject),
        recording=int(recording),
        condition=_EEGMAT_RECORDINGS[int(recording)],
        file=rel,
        sha256=REGISTRY[rel],
    )
    return SpectrumData(spec.freqs, spec.power, spec.channel_names, spec.units, spec.n_segments, md)


# ================================================================= EEGMMIDB
def fetch_eegmmidb_baseline(*, data_home=None, download: bool = False):
    """PhysioNet EEGMMIDB subject 1, run 1: 61 s eyes-open baseline, 64 channels (10-10), 160 Hz.

    Schalk et al. (2004) *IEEE TBME* 51:1034; ODC-By 1.0. No clear alpha peak
    (eyes open). Channel names are standardised with
    ``mne.datasets.eegbci.standardize`` (``"Fc5."`` -> ``"FC5"``).

    Returns
    -------
    mne.io.Raw
        Preloaded, values in V.
    """
    path = _fetch("eegmmidb/S001R01.edf", data_home, download)
    mne = optional_import("mne", purpose=_MNE_FOR)
    raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
    mne.datasets.eegbci.standardize(raw)
    return raw


# ============================================================ EEGLAB sample
def fetch_eeglab_sample(*, data_home=None, download: bool = False):
    """EEGLAB tutorial dataset: 32 channels (incl. EOG1/EOG2), 128 Hz, 238 s, visual attention task.

    Delorme & Makeig (2004) *J Neurosci Methods* 134:9. No licence statement of
    its own (tests and tutorials only). Annotations hold 80 ``square``
    stimuli and 74 ``rt`` responses.

    Returns
    -------
    mne.io.Raw
        Preloaded, values in V (read with ``mne.io.read_raw_eeglab``).
    """
    set_path = _fetch("eeglab_sample/eeglab_data.set", data_home, download)
    _fetch("eeglab_sample/eeglab_data.fdt", data_home, download)
    mne = optional_import("mne", purpose=_MNE_FOR)
    return mne.io.read_raw_eeglab(set_path, preload=True, verbose="error")


# ===================================================== MNE sample ERP table
_ERP_CONDITIONS = ("audio/left", "audio/right", "visual/left", "visual/right")
_ERP_GROUPS = {
    "audio": ("audio/left", "audio/right"),
    "visual": ("visual/left", "visual/right"),
    "all": _ERP_CONDITIONS,
    **{c: (c,) for c in _ERP_CONDITIONS},
}


def _read_erp_table(path: Path):
    """(channel names, times (T,), condition per epoch, data (n_epochs, n_channels, T)) in V (the table's units)."""
    from jrinfer.data import _read_trials_csv

    return _read_trials_csv(path)


def fetch_mne_sample_erp(
    condition="audio", channels=None, units: str = "uV", *, data_home=None, download: bool = False
) -> EvokedData:
    """Average ERP of the MNE "sample" subject from neurokit2's single-trial table.

    288 baseline-corrected epochs (-0.1 to 0.5 s, 150 Hz, low-passed at 40 Hz)
    of 10 frontal EEG channels (``"EEG 001"`` ... ``"EEG 014"``): audio/left 72,
    audio/right 73, visual/left 73, visual/right 70. The auditory average has
    an N100 of about -6 µV at 93 ms on the frontal mean. The MNE sample data
    are for learning MNE only (no open data licence): tests and validation.

    Parameters
    ----------
    condition : str or sequence of str
        ``"audio"`` (left + right), ``"visual"``, ``"all"``, or any of
        ``"audio/left"``, ``"audio/right"``, ``"visual/left"``,
        ``"visual/right"``; a list pools several. Epochs are averaged with
        equal weights.
    channels : str or list of str, optional
        Channel names; default all 10.
    units : {"V", "mV", "uV"}
    data_home, download
        As in :func:`fetch_eegmat` (the download takes the 92 MB neurokit2
        0.2.13 sdist from PyPI and keeps only ``data.csv``).

    Returns
    -------
    EvokedData
        ``n_averaged`` = number of epochs pooled.
    """
    conds = [condition] if isinstance(condition, str) else condition
    try:
        conds = list(conds)
    except TypeError:
        raise ValueError(f"condition must be a str or a list of str; got {condition!r}") from None
    if not conds:
        raise ValueError("condition must name at least one condition; got an empty list")
    wanted: list[str] = []
    for c in conds:
        _checks.check_option("condition", c, tuple(_ERP_GROUPS))
        wanted.extend(x for x in _ERP_GROUPS[c] if x not in wanted)
    rel = "mne_sample_erp_neurokit2/data.csv"
    path = _fetch(rel, data_home, download)
    names, times, epoch_conds, data = _read_erp_table(path)
    sel = np.isin(epoch_conds, wanted)
    counts = {c: int((epoch_conds == c).sum()) for c in wanted}
    avg = torch.from_numpy(data[sel].mean(axis=0))
    md = {
        "dataset": "MNE sample subject auditory/visual ERP (via neurokit2 0.2.13 studies/erp_gam/data.csv)",
        "licence": "none stated for the recording (MNE sample data: for learning MNE); tests and validation only",
        "conditions": wanted,
        "epochs_per_condition": counts,
        "file": rel,
        "sha256": REGISTRY[rel],
        "note": "epochs baseline-corrected by the source; raw data low-passed at 40 Hz; 150 Hz",
    }
    ev = EvokedData(torch.from_numpy(times.copy()), avg, names, "V", int(sel.sum()), md)
    if channels is not None:
        ev = ev.select(channels)
    return ev.to_units(units)


# ====================================================================== Bonn
_BONN_VERIFIED: dict[str, tuple] = {}


def _bonn_set(set) -> str:  # noqa: A002 - the dataset's own word
    _checks.check_option("set", set, tuple(_BONN))
    return set


def _bonn_files(set, data_home_, download: bool) -> list[Path]:  # noqa: A002
    _checks.check_bool("download", download)
    folder, expected, _ = _BONN[set]
    root = data_home(data_home_)
    files = [root / folder / f"{set}{i:03d}.txt" for i in range(1, _BONN_N + 1)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        how = (
            "download=True cannot help: the Bonn data (Andrzejak et al. 2001, Phys Rev E 64:061907) have no stable "
            "public download URL and no open licence. Obtain sets O and Z by hand from the University of Bonn "
            "epileptology department's archive (or a copy whose set hashes match) and place the files "
            f"{set}001.txt ... {set}{_BONN_N:03d}.txt (lower-case .txt) in {folder}/."
        )
        rel = f"{folder}/{missing[0].name}"
        err = _not_found(missing[0], root, rel, how)
        if len(missing) > 1:
            err = FileNotFoundError(f"{len(missing)} of {_BONN_N} files of Bonn set {set} are missing. {err}")
        raise err
    key = tuple((str(f.resolve()), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    if _BONN_VERIFIED.get(set) != key:
        h = hashlib.sha256()
        for f in files:
            h.update(f.read_bytes())
        if h.hexdigest() != expected:
            raise ChecksumError(
                f"SHA-256 mismatch for Bonn set {set} ({str(root / folder)!r}, the {_BONN_N} files concatenated in "
                f"name order): expected {expected}, got {h.hexdigest()}. A file is corrupted or differs from the "
                "published set; restore the folder from the original source"
            )
        _BONN_VERIFIED[set] = key
    return files


def _load_bonn(path: Path) -> torch.Tensor:
    x = np.array(path.read_text(encoding="ascii").split(), dtype=np.float64)
    return torch.from_numpy(x)


def fetch_bonn(
    set: str = "O",  # noqa: A002 - the dataset's own word
    segment: int = 1,
    *,
    data_home=None,
    download: bool = False,
) -> torch.Tensor:
    """One single-channel segment of the Bonn EEG data (healthy volunteers).

    Andrzejak et al. (2001) *Phys Rev E* 64:061907. Set ``"O"`` (set B in the
    paper): eyes closed; set ``"Z"`` (set A): eyes open. 100 segments each,
    4097 samples at :data:`BONN_SFREQ` = 173.61 Hz (23.6 s), band-passed at
    0.53-40 Hz by the authors, from 5 healthy volunteers, artefacts removed.
    No licence is stated: validation only, never redistribute.

    Parameters
    ----------
    set : {"O", "Z"}
        Eyes closed (``"O"``) or eyes open (``"Z"``).
    segment : int
        Segment number, 1 to 100.
    data_home : str or os.PathLike, optional
    download : bool
        Accepted for symmetry; there is no public URL to fetch from, so a
        missing file always raises ``FileNotFoundError`` with instructions.

    Returns
    -------
    torch.Tensor
        Float64, shape ``(4097,)``, the integer values as stored. The files
        carry no unit; they are 12-bit A/D values that the literature treats
        as µV (this is an assumption, not documented calibration).
    """
    s = _bonn_set(set)
    seg = _check_choice("segment", segment, tuple(range(1, _BONN_N + 1)), f"the segments of set {s}")
    files = _bonn_files(s, data_home, download)
    return _load_bonn(files[seg - 1])


def bonn_spectrum(
    set: str = "O",  # noqa: A002
    segments=None,
    fmin: float = 2.0,
    fmax: float = 40.0,
    seg_length: float = 4.0,
    overlap: float = 0.5,
    *,
    data_home=None,
    download: bool = False,
) -> SpectrumData:
    """Welch spectrum of Bonn segments, averaged over segments (one channel).

    Parameters
    ----------
    set : {"O", "Z"}
        Eyes closed or eyes open (see :func:`fetch_bonn`).
    segments : int or sequence of int, optional
        Segment numbers (1-100) to average; default all 100.
    fmin, fmax : float
        Frequency window in Hz (inclusive).
    seg_length : float
        Welch segment length in s (Hann window, mean removed per segment).
    overlap : float
        Overlap fraction in ``[0, 1)``.
    data_home, download
        As in :func:`fetch_bonn`.

    Returns
    -------
    SpectrumData
        Channel ``"bonn_O"`` or ``"bonn_Z"``, in ``"uV^2/Hz"`` under the
        assumption that the stored values are µV; ``n_segments`` counts every
        Welch segment of every file averaged.
    """
    from jrinfer.spectral import welch_psd

    s = _bonn_set(set)
    if segments is None:
        segs = list(range(1, _BONN_N + 1))
    else:
        segs = [segments] if isinstance(segments, (int, np.integer)) and not isinstance(segments, bool) else segments
        try:
            allowed = tuple(range(1, _BONN_N + 1))
            segs = [_check_choice("segments", x, allowed, f"the segments of set {s}") for x in segs]
        except TypeError:
            raise ValueError(f"segments must be an int or a list of ints in 1..{_BONN_N}; got {segments!r}") from None
        if not segs:
            raise ValueError("segments must name at least one segment; got an empty list")
    seg = _checks.check_scalar("seg_length", seg_length, positive=True)
    ov = _checks.check_scalar("overlap", overlap)
    if not 0.0 <= ov < 1.0:
        raise ValueError(f"overlap must be a fraction in [0, 1); got {overlap!r}")
    nperseg = int(round(seg * BONN_SFREQ))
    if not 2 <= nperseg <= 4097:
        raise ValueError(f"seg_length must lie between 2 samples and the 23.6 s segment length; got {seg:g} s")
    noverlap = min(int(round(ov * nperseg)), nperseg - 1)
    files = _bonn_files(s, data_home, download)
    x = torch.stack([_load_bonn(files[i - 1]) for i in segs])
    w = welch_psd(x, BONN_SFREQ, nperseg=nperseg, noverlap=noverlap, window="hann", detrend="constant")
    spec = SpectrumData(w.freqs[1:], w.psd.mean(0, keepdim=True)[:, 1:], (f"bonn_{s}",), "uV^2/Hz",
                        w.n_segments * len(segs))
    spec = spec.select(fmin=fmin, fmax=fmax)
    md = {
        "dataset": "Bonn EEG (Andrzejak et al. 2001, Phys Rev E 64:061907)",
        "licence": "none stated; validation only, do not redistribute",
        "set": s,
        "condition": _BONN[s][2],
        "segments": segs,
        "units_assumption": "stored integer values treated as uV",
        "method": "welch",
        "window": "hann",
        "seg_length_s": nperseg / BONN_SFREQ,
        "n_per_seg": nperseg,
        "n_overlap": noverlap,
        "sfreq_hz": BONN_SFREQ,
    }
    return SpectrumData(spec.freqs, spec.power, spec.channel_names, spec.units, spec.n_segments, md)


# ================================================================ synthetic
def synthetic_spectrum() -> SpectrumData:
    """The bundled synthetic EEG-like spectrum generated from known Jansen-Rit parameters.

    Made by ``datasets/make_synthetic.py``: the linearised JR 1995 model with
    ``p_mean = 70``, ``p_std = 1`` (other parameters at their defaults),
    scaled to µV^2/Hz by an output gain, times multiplicative
    ``Gamma(K, 1/K)`` noise as from Welch averaging of ``K`` segments, on
    1-40 Hz in 0.5 Hz steps.

    Returns
    -------
    SpectrumData
        One channel ``"power"`` in ``"uV^2/Hz"``, ``n_segments = K``;
        ``metadata`` holds the generator's description (true parameters, gain,
        seed, noise-free spectrum) from ``synthetic_spectrum.json``.
    """
    pkg = resources.files("jrinfer").joinpath("_data")
    info = json.loads(pkg.joinpath("synthetic_spectrum.json").read_text(encoding="utf-8"))
    with resources.as_file(pkg.joinpath("synthetic_spectrum.csv")) as csv_path:
        spec = SpectrumData.from_csv(csv_path, units=info["units"]["power"], n_segments=info["n_segments"])
    md = dict(info)
    md["source"] = "jrinfer/_data/synthetic_spectrum.csv"
    return SpectrumData(spec.freqs, spec.power, spec.channel_names, spec.units, spec.n_segments, md)
