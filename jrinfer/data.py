"""Containers for the data a Jansen-Rit model is fitted to: EEG spectra and evoked potentials.

:class:`SpectrumData` holds power spectral densities (one row per channel) and
:class:`EvokedData` holds averaged event-related potentials. Both are immutable,
validate everything on construction, and read/write a plain CSV format with a
required header::

    freq,power[,power_2,...]      # spectra: Hz, then one column per channel
    time,value[,...]              # evoked potentials: s, then one column per channel

Column names after the first become channel names. Units are not stored in the
CSV; give them to ``from_csv`` (default µV^2/Hz and µV, the usual EEG scales).

MNE-Python objects (``Raw``, ``Epochs``, ``Spectrum``, ``Evoked``) convert with
``from_mne``; MNE is imported lazily, so importing this module does not need it.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jrinfer import _checks

__all__ = ["SpectrumData", "EvokedData", "POWER_UNITS", "AMPLITUDE_UNITS"]

#: Accepted power units and their size in V^2/Hz.
POWER_UNITS: dict[str, float] = {"V^2/Hz": 1.0, "mV^2/Hz": 1e-6, "uV^2/Hz": 1e-12}
#: Accepted amplitude units and their size in V.
AMPLITUDE_UNITS: dict[str, float] = {"V": 1.0, "mV": 1e-3, "uV": 1e-6}

_FREQ_HEADERS = ("freq", "freqs", "frequency", "freq_hz", "frequency_hz")
_TIME_HEADERS = ("time", "times", "time_s")
_MNE_HINT = "pip install mne"


# ============================================================== shared helpers
def _normalise_units(name: str, units, allowed: Mapping[str, float]) -> str:
    if not isinstance(units, str):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {units!r}")
    norm = units.replace(" ", "").replace("µ", "u").replace("μ", "u").replace("²", "^2").replace("**2", "^2")
    if norm in allowed:
        return norm
    _checks.check_option(name, units, tuple(allowed))
    return units  # pragma: no cover - check_option raised


def _convert(values: torch.Tensor, src: str, dst: str, table: Mapping[str, float]) -> torch.Tensor:
    """Multiply or divide by an exact power of ten (avoids 1e-12 rounding where possible)."""
    if src == dst:
        return values.clone()
    up = table[src] / table[dst]
    if up >= 1.0:
        return values * float(round(up))
    return values / float(round(table[dst] / table[src]))


def _check_axis(name: str, x, unit: str, *, nonnegative: bool) -> torch.Tensor:
    t = _checks.as_float_tensor(name, x)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array in {unit}; got shape {tuple(t.shape)}")
    t = t.detach().clone()
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"{name} must be finite; got {int(bad.sum())} NaN/inf value(s) (first at index {i}: {t[i].item()!r})"
        )
    if nonnegative and bool((t < 0).any()):
        i = int((t < 0).nonzero()[0])
        raise ValueError(f"{name} must be >= 0 {unit}; got {name}[{i}] = {t[i].item():g} {unit}")
    if t.numel() > 1:
        d = t[1:] - t[:-1]
        bad = d <= 0
        if bool(bad.any()):
            i = int(bad.nonzero()[0]) + 1
            what = "duplicated" if d[i - 1] == 0 else "decreasing"
            raise ValueError(
                f"{name} must be strictly increasing (no duplicates); got {name}[{i}] = {t[i].item():g} {unit} "
                f"after {name}[{i - 1}] = {t[i - 1].item():g} {unit} ({what})"
            )
    return t


def _default_names(n: int) -> tuple[str, ...]:
    return tuple(f"ch{i}" for i in range(n))


def _check_channel_names(channel_names, n: int) -> tuple[str, ...]:
    if channel_names is None:
        return _default_names(n)
    if isinstance(channel_names, str):
        channel_names = (channel_names,)
    try:
        names = tuple(channel_names)
    except TypeError:
        raise ValueError(f"channel_names must be a sequence of str; got {channel_names!r}") from None
    for i, nm in enumerate(names):
        if not isinstance(nm, str) or not nm.strip():
            raise ValueError(f"channel_names must be non-empty strings; got {nm!r} at position {i}")
    if len(names) != n:
        raise ValueError(f"channel_names must have one name per channel ({n}); got {len(names)}: {list(names)}")
    seen: set[str] = set()
    dups = [nm for nm in names if nm in seen or seen.add(nm)]
    if dups:
        raise ValueError(f"channel_names must be unique; got duplicate(s) {sorted(set(dups))}")
    return names


def _check_values(name: str, values, n_axis: int, axis_name: str, *, allow_1d: bool) -> torch.Tensor:
    v = _checks.as_float_tensor(name, values).detach().clone()
    if v.dim() == 1 and allow_1d:
        v = v.unsqueeze(0)
    if v.dim() != 2:
        raise ValueError(
            f"{name} must have shape (n_channels, {n_axis}) (one row per channel, matching {axis_name}); "
            f"got shape {tuple(v.shape)}"
        )
    if v.shape[1] != n_axis:
        raise ValueError(
            f"{name} must have {n_axis} columns to match {axis_name} (shape (n_channels, {n_axis})); "
            f"got shape {tuple(v.shape)}"
        )
    if v.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one channel; got shape {tuple(v.shape)}")
    return v


def _check_rows(
    name: str, v: torch.Tensor, names: Sequence[str], axis: torch.Tensor, unit: str, *, positive: bool
) -> None:
    bad_finite = ~torch.isfinite(v)
    for label, bad in (("NaN/inf", bad_finite), ("non-positive", (v <= 0) & ~bad_finite if positive else None)):
        if bad is None or not bool(bad.any()):
            continue
        ch = int(bad.any(dim=1).nonzero()[0])
        j = int(bad[ch].nonzero()[0])
        expect = "finite and > 0" if positive else "finite"
        raise ValueError(
            f"{name} must be {expect}; channel {names[ch]!r} has {int(bad[ch].sum())} {label} value(s) "
            f"(first at {axis[j].item():g} {unit}: {v[ch, j].item()!r})"
        )


def _check_count(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name} must be an int >= 1 or None; got {value!r}")
    return int(value)


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict or None; got {type(metadata).__name__}")
    return dict(metadata)


def _channel_indices(argname: str, channels, available: Sequence[str]) -> list[int]:
    if isinstance(channels, str):
        channels = [channels]
    try:
        channels = list(channels)
    except TypeError:
        raise ValueError(f"{argname} must be a channel name or a list of names; got {channels!r}") from None
    if not channels:
        raise ValueError(f"{argname} must name at least one channel; got an empty list")
    index = {nm: i for i, nm in enumerate(available)}
    unknown = [c for c in channels if c not in index]
    if unknown:
        raise ValueError(f"{argname}: unknown channel name(s) {unknown}; available channels: {list(available)}")
    if len(set(channels)) != len(channels):
        raise ValueError(f"{argname} must not repeat channels; got {channels}")
    return [index[c] for c in channels]


def _window(axis: torch.Tensor, lo, hi, lo_name: str, hi_name: str, unit: str) -> torch.Tensor:
    lo_v = None if lo is None else _checks.check_scalar(lo_name, lo)
    hi_v = None if hi is None else _checks.check_scalar(hi_name, hi)
    if lo_v is not None and hi_v is not None and lo_v > hi_v:
        raise ValueError(f"{lo_name} must be <= {hi_name}; got {lo_name}={lo_v:g} {unit} > {hi_name}={hi_v:g} {unit}")
    mask = torch.ones_like(axis, dtype=torch.bool)
    if lo_v is not None:
        mask &= axis >= lo_v
    if hi_v is not None:
        mask &= axis <= hi_v
    if not bool(mask.any()):
        raise ValueError(
            f"{lo_name}/{hi_name} select an empty window: no samples in [{lo_v if lo_v is not None else '-inf'}, "
            f"{hi_v if hi_v is not None else 'inf'}] {unit}; the data cover {axis[0].item():g} to "
            f"{axis[-1].item():g} {unit}"
        )
    return mask


def _fmt(x: float) -> str:
    return repr(float(x))


# ------------------------------------------------------------------ CSV input
_BINARY_SIGNATURES = (
    (b"0       ", "an EDF/EDF+ recording (load it with mne.io.read_raw_edf, then use from_mne)"),
    (b"\xffBIOSEMI", "a BDF recording (load it with mne.io.read_raw_bdf, then use from_mne)"),
    (b"MATLAB", "a MATLAB file such as an EEGLAB .set (load it with mne.io.read_raw_eeglab, then use from_mne)"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x89HDF", "an HDF5/netCDF file"),
    (b"\x1f\x8b", "a gzip-compressed file (decompress it first)"),
)


def _read_csv(path, axis_headers: Sequence[str], expected: str, other: tuple[Sequence[str], str]):
    """Read a headed numeric CSV; returns (channel names, axis (N,), values (n_channels, N))."""
    if isinstance(path, (bytes, bytearray)) or not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike pointing to a CSV file; got {path!r}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path: no such file {str(p)!r}")
    if p.is_dir():
        raise ValueError(f"path must be a CSV file; got a directory {str(p)!r}")
    raw = p.read_bytes()
    where = f"path {str(p)!r}"
    if not raw.strip():
        raise ValueError(f"{where}: file is empty; expected a CSV with a header line {expected!r} and data rows")
    for sig, what in _BINARY_SIGNATURES:
        if raw.startswith(sig):
            raise ValueError(f"{where} is not a CSV file: it looks like {what}")
    if b"\x00" in raw[:65536]:
        raise ValueError(f"{where} is not a CSV file: it contains binary data (NUL bytes); expected text {expected!r}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{where} is not a UTF-8 text CSV file (undecodable byte at offset {err.start}); expected {expected!r}"
        ) from None

    reader = csv.reader(io.StringIO(text, newline=""))
    header = None
    header_line = 0
    rows: list[tuple[int, list[str]]] = []
    for cells in reader:
        if not cells or all(not c.strip() for c in cells):
            continue
        if header is None:
            header, header_line = [c.strip() for c in cells], reader.line_num
        else:
            rows.append((reader.line_num, cells))
    assert header is not None  # non-empty text has a non-blank line
    first = header[0].lower()
    if first not in axis_headers:
        if _is_number(header[0]):
            raise ValueError(
                f"{where}: missing header; line {header_line} is numeric data. The first line must be a "
                f"header {expected!r}"
            )
        if len(header) == 1 and any(sep in header[0] for sep in (";", "\t", "|")):
            raise ValueError(
                f"{where}: columns must be separated by commas; header line {header_line} is {header[0]!r}. "
                f"Expected a header {expected!r}"
            )
        hint = ""
        if first in other[0]:
            hint = f" (this looks like {other[1]})"
        raise ValueError(
            f"{where}: the first header column must be {axis_headers[0]!r}; got header {header}{hint}. "
            f"Expected a header {expected!r}"
        )
    names = header[1:]
    if not names:
        raise ValueError(f"{where}: the header has no data column after {header[0]!r}; expected {expected!r}")
    for j, nm in enumerate(names, start=2):
        if not nm:
            raise ValueError(f"{where}: header column {j} has an empty name; expected {expected!r}")
    dups = sorted({nm for nm in names if names.count(nm) > 1})
    if dups:
        raise ValueError(f"{where}: header column names must be unique (they become channel names); got {dups}")
    if not rows:
        raise ValueError(f"{where}: the file has a header but no data rows")
    data = np.empty((len(rows), len(header)), dtype=np.float64)
    for i, (line, cells) in enumerate(rows):
        if len(cells) != len(header):
            raise ValueError(
                f"{where}: line {line} has {len(cells)} cell(s) but the header has {len(header)} column(s) "
                f"{header} (ragged row)"
            )
        for j, cell in enumerate(cells):
            try:
                data[i, j] = float(cell.strip())
            except ValueError:
                raise ValueError(
                    f"{where}: line {line}, column {j + 1} ({header[j]!r}): {cell!r} is not a number"
                ) from None
    return tuple(names), torch.from_numpy(data[:, 0].copy()), torch.from_numpy(data[:, 1:].T.copy())


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _write_csv(path, first: str, axis: torch.Tensor, names: Sequence[str], values: torch.Tensor, overwrite: bool):
    if isinstance(path, (bytes, bytearray)) or not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike; got {path!r}")
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be True or False; got {overwrite!r}")
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"path must be a file name; got the directory {str(p)!r}")
    if p.exists() and not overwrite:
        raise FileExistsError(f"path {str(p)!r} already exists; pass overwrite=True to replace it")
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow([first, *names])
            a = axis.tolist()
            v = values.T.tolist()
            for x, row in zip(a, v):
                w.writerow([_fmt(x), *(_fmt(y) for y in row)])
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


# ------------------------------------------------------------------ MNE input
def _import_mne():
    try:
        import mne
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading MNE objects needs MNE-Python: {_MNE_HINT}") from err
    return mne


def _mne_picks(argname: str, picks, info) -> list[int]:
    """Indices of ``picks`` (channel names) in ``info``.

    ``None``: the good EEG channels, or if there are none, the good channels
    of the other types measured in volts (sEEG, ECoG, ...).
    """
    names = list(info["ch_names"])
    if picks is None:
        mne = _import_mne()
        idx = list(mne.pick_types(info, eeg=True, exclude="bads"))
        if not idx:
            idx = list(mne.pick_types(info, eeg=True, eog=True, ecg=True, seeg=True, ecog=True, dbs=True, emg=True,
                                      bio=True, exclude="bads"))
        if not idx:
            raise ValueError(f"{argname}=None found no good channels recorded in volts; available: {names}")
        return idx
    return _channel_indices(argname, picks, names)


_VOLT_TYPES = ("eeg", "eog", "ecg", "emg", "seeg", "ecog", "dbs", "bio")


def _check_volts(argname: str, info, idx: Iterable[int]) -> None:
    """Every picked channel must be an electrophysiological channel measured in volts."""
    import mne
    from mne.io.constants import FIFF

    wrong = []
    for i in idx:
        kind = mne.channel_type(info, i)
        if kind not in _VOLT_TYPES or info["chs"][i]["unit"] != FIFF.FIFF_UNIT_V:
            wrong.append(f"{info['ch_names'][i]!r} (type {kind})")
    if wrong:
        raise ValueError(
            f"picks must be channels recorded in volts ({', '.join(_VOLT_TYPES)}); got {', '.join(wrong[:5])}"
        )


def _mne_metadata(inst) -> dict:
    md: dict = {}
    fn = getattr(inst, "filenames", None)
    if fn:
        files = [str(f) for f in fn if f is not None]
        if files:
            md["source"] = files[0] if len(files) == 1 else files
    subj = inst.info.get("subject_info") if hasattr(inst, "info") else None
    if subj:
        his = subj.get("his_id")
        if his:
            md["subject"] = str(his)
    md["mne_type"] = type(inst).__name__
    md["sfreq_hz"] = float(inst.info["sfreq"])
    return md


def _welch_count(n_times: int, n_per_seg: int, n_overlap: int) -> int:
    step = max(n_per_seg - n_overlap, 1)
    return 1 + (n_times - n_per_seg) // step if n_times >= n_per_seg else 1


# ============================================================== SpectrumData
@dataclass(frozen=True, eq=False)
class SpectrumData:
    """Power spectral densities of one or more EEG channels (immutable, validated).

    Parameters
    ----------
    freqs : array_like
        Frequencies in Hz, shape ``(F,)``; finite, ``>= 0`` and strictly
        increasing (no duplicates).
    power : array_like
        One-sided PSD in ``units``, shape ``(n_channels, F)``; finite and
        ``> 0`` everywhere (the Whittle/log-spectrum likelihoods need it).
    channel_names : sequence of str, optional
        Unique channel names, one per row of ``power`` (default ``"ch0", ...``).
    units : {"V^2/Hz", "mV^2/Hz", "uV^2/Hz"}
        Units of ``power``. ``"µV^2/Hz"`` (micro sign or Greek mu) is
        normalised to ``"uV^2/Hz"``.
    n_segments : int, optional
        Number of Welch segments averaged into each estimate (``K``): with
        non-overlapping segments the estimate at an interior frequency is
        approximately ``PSD * Gamma(K, 1/K)``. ``None`` when unknown.
    metadata : dict, optional
        Free-form provenance (source file, subject, method, ...).

    Notes
    -----
    Instances are frozen; the tensors are private copies of the input
    (float64). Do not modify them in place: use :meth:`select`,
    :meth:`to_units` or :func:`dataclasses.replace` (which re-validates).

    Examples
    --------
    >>> import torch
    >>> from jrinfer.data import SpectrumData
    >>> f = torch.arange(1.0, 41.0)
    >>> s = SpectrumData.from_arrays(f, 1.0 / f, channel_names=["O1"])
    >>> s.to_units("V^2/Hz").power[0, 0].item()
    1e-12
    """

    freqs: torch.Tensor
    power: torch.Tensor
    channel_names: tuple[str, ...] | None = None
    units: str = "uV^2/Hz"
    n_segments: int | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        freqs = _check_axis("freqs", self.freqs, "Hz", nonnegative=True)
        power = _check_values("power", self.power, freqs.numel(), "freqs", allow_1d=False)
        names = _check_channel_names(self.channel_names, power.shape[0])
        units = _normalise_units("units", self.units, POWER_UNITS)
        _check_rows("power", power, names, freqs, "Hz", positive=True)
        set_ = object.__setattr__
        set_(self, "freqs", freqs)
        set_(self, "power", power)
        set_(self, "channel_names", names)
        set_(self, "units", units)
        set_(self, "n_segments", _check_count("n_segments", self.n_segments))
        set_(self, "metadata", _check_metadata(self.metadata))

    # ----------------------------------------------------------- constructors
    @classmethod
    def from_arrays(cls, freqs, power, channel_names=None, units: str = "uV^2/Hz", n_segments=None, metadata=None):
        """Build from arrays.

        Parameters
        ----------
        freqs : array_like
            Frequencies in Hz, shape ``(F,)``.
        power : array_like
            PSD in ``units``, shape ``(F,)`` (one channel) or ``(n_channels, F)``.
        channel_names, units, n_segments, metadata
            As in :class:`SpectrumData`.

        Returns
        -------
        SpectrumData
        """
        f = _check_axis("freqs", freqs, "Hz", nonnegative=True)
        p = _check_values("power", power, f.numel(), "freqs", allow_1d=True)
        return cls(f, p, channel_names, units, n_segments, metadata)

    @classmethod
    def from_csv(cls, path, units: str = "uV^2/Hz", n_segments=None) -> "SpectrumData":
        """Read a CSV with the header ``freq,power[,power_2,...]``.

        The first column is the frequency in Hz; every further column is one
        channel, named by its header (``power`` for a single-channel file).

        Parameters
        ----------
        path : str or os.PathLike
            The CSV file (comma-separated, UTF-8, header required).
        units : {"V^2/Hz", "mV^2/Hz", "uV^2/Hz"}
            Units of the power columns.
        n_segments : int, optional
            Number of averaged Welch segments behind the estimate, if known.

        Returns
        -------
        SpectrumData

        Raises
        ------
        ValueError
            For a missing or wrong header, non-numeric cells (line and column
            named), ragged rows, an empty file, a binary file (EDF, ...) or
            values that fail validation.
        FileNotFoundError
            If ``path`` does not exist.
        """
        units = _normalise_units("units", units, POWER_UNITS)
        n_segments = _check_count("n_segments", n_segments)
        names, f, p = _read_csv(path, _FREQ_HEADERS, "freq,power[,power_2,...]",
                                (_TIME_HEADERS, "an evoked-potential CSV; use EvokedData.from_csv"))
        try:
            return cls(f, p, names, units, n_segments, {"source": str(path), "format": "csv"})
        except ValueError as err:
            raise ValueError(f"path {str(path)!r}: {err}") from None

    @classmethod
    def from_mne(
        cls,
        inst,
        picks=None,
        fmin=None,
        fmax=None,
        seg_length: float = 4.0,
        overlap: float = 0.5,
        units: str = "uV^2/Hz",
    ) -> "SpectrumData":
        """Welch spectrum of an MNE ``Raw`` or ``Epochs``, or convert an MNE ``Spectrum``.

        For ``Raw``/``Epochs`` the PSD is computed with
        ``inst.compute_psd(method="welch", n_fft=n, n_per_seg=n, n_overlap=m,
        window="hann")`` where ``n = round(seg_length * sfreq)`` and
        ``m = round(overlap * n)``; epochs are averaged. Segments overlapping
        ``BAD_*`` annotations of a ``Raw`` are left out (MNE's default).

        Parameters
        ----------
        inst : mne.io.BaseRaw, mne.BaseEpochs, mne.time_frequency.Spectrum or EpochsSpectrum
            The data; channels must be in volts (EEG-like).
        picks : str or list of str, optional
            Channel names (in this order). Default: all good EEG channels
            (or, if there are none, all good sEEG/ECoG/... channels in volts).
        fmin, fmax : float, optional
            Frequency window in Hz (inclusive). ``fmin`` defaults to the lowest
            frequency above 0 Hz (the DC bin is dropped: after per-segment mean
            removal it carries no information and can be exactly 0).
        seg_length : float
            Welch segment length in s (ignored for ``Spectrum`` input).
        overlap : float
            Fraction of overlap between segments, in ``[0, 1)``.
        units : {"V^2/Hz", "mV^2/Hz", "uV^2/Hz"}
            Units of the result (MNE works in V^2/Hz).

        Returns
        -------
        SpectrumData
            ``n_segments`` is the number of averaged segments (summed over
            epochs and good data spans). For ``Spectrum`` input it is only
            known for unaggregated (``average=None``) Welch spectra, else None;
            set it with ``dataclasses.replace(s, n_segments=K)``.
        """
        mne = _import_mne()
        units = _normalise_units("units", units, POWER_UNITS)
        spectrum_types = (mne.time_frequency.Spectrum, mne.time_frequency.EpochsSpectrum)
        if isinstance(inst, mne.Evoked):
            raise ValueError("inst must be Raw, Epochs or Spectrum; got an Evoked (use EvokedData.from_mne for ERPs)")
        if not isinstance(inst, (mne.io.BaseRaw, mne.BaseEpochs, *spectrum_types)):
            raise ValueError(
                f"inst must be an mne.io.Raw, mne.Epochs or mne.time_frequency.Spectrum; got {type(inst).__name__}"
            )
        fmin_v = None if fmin is None else _checks.check_scalar("fmin", fmin, positive=True, allow_zero=True)
        fmax_v = None if fmax is None else _checks.check_scalar("fmax", fmax, positive=True)
        if fmin_v is not None and fmax_v is not None and fmin_v > fmax_v:
            raise ValueError(f"fmin must be <= fmax; got fmin={fmin_v:g} Hz > fmax={fmax_v:g} Hz")
        idx = _mne_picks("picks", picks, inst.info)
        _check_volts("picks", inst.info, idx)
        ch_names = [inst.info["ch_names"][i] for i in idx]
        metadata = _mne_metadata(inst)

        if isinstance(inst, spectrum_types):
            dims = tuple(getattr(inst, "_dims", ()))
            data, freqs = inst.get_data(picks=ch_names, return_freqs=True)
            if "taper" in dims or np.iscomplexobj(data):
                raise ValueError("inst must hold power, not complex Fourier coefficients (compute it with "
                                 "output='power')")
            data = np.asarray(data, dtype=np.float64)
            n_segments = None
            if "epoch" in dims:
                data = data.mean(axis=0)
                dims = tuple(d for d in dims if d != "epoch")
                metadata["n_epochs"] = len(inst)
            if "segment" in dims:
                n_segments = data.shape[-1] * metadata.get("n_epochs", 1)
                data = data.mean(axis=-1)
            metadata["method"] = inst.method
        else:
            sfreq = float(inst.info["sfreq"])
            seg = _checks.check_scalar("seg_length", seg_length, positive=True)
            ov = _checks.check_scalar("overlap", overlap)
            if not 0.0 <= ov < 1.0:
                raise ValueError(f"overlap must be a fraction in [0, 1); got {overlap!r}")
            n_per_seg = int(round(seg * sfreq))
            n_times = len(inst.times)
            if n_per_seg < 2:
                raise ValueError(f"seg_length must span at least 2 samples at {sfreq:g} Hz; got {seg:g} s")
            if n_per_seg > n_times:
                what = "each epoch" if isinstance(inst, mne.BaseEpochs) else "the recording"
                raise ValueError(
                    f"seg_length={seg:g} s ({n_per_seg} samples) is longer than {what} "
                    f"({n_times} samples, {n_times / sfreq:g} s)"
                )
            n_overlap = int(round(ov * n_per_seg))
            n_overlap = min(n_overlap, n_per_seg - 1)
            res = sfreq / n_per_seg
            lo = res if fmin_v is None else fmin_v
            hi = sfreq / 2 if fmax_v is None else fmax_v
            if not _window_nonempty(lo, hi, res, sfreq):
                raise ValueError(
                    f"fmin/fmax select an empty frequency window: no Welch frequency (resolution {res:g} Hz, "
                    f"0 to {sfreq / 2:g} Hz) lies in [{lo:g}, {hi:g}] Hz"
                )
            kw = dict(method="welch", picks=ch_names, fmin=lo, fmax=hi, n_fft=n_per_seg, n_per_seg=n_per_seg,
                      n_overlap=n_overlap, window="hann", verbose="error")
            if picks is not None:
                kw["exclude"] = ()
            spec = inst.compute_psd(**kw)
            if isinstance(inst, mne.BaseEpochs):
                n_epochs = len(inst)
                if n_epochs == 0:
                    raise ValueError("inst holds no epochs (all dropped?)")
                n_segments = n_epochs * _welch_count(n_times, n_per_seg, n_overlap)
                spec = spec.average()
                metadata["n_epochs"] = n_epochs
            else:
                n_segments = _raw_segment_count(inst, n_per_seg, n_overlap)
            data, freqs = spec.get_data(picks=ch_names, return_freqs=True)
            data = np.asarray(data, dtype=np.float64)
            metadata.update(
                method="welch", window="hann", seg_length_s=n_per_seg / sfreq, overlap=n_overlap / n_per_seg,
                n_per_seg=n_per_seg, n_overlap=n_overlap,
            )
        freqs = np.asarray(freqs, dtype=np.float64)
        keep = np.ones(freqs.shape, dtype=bool)
        keep &= freqs > 0 if fmin_v is None else freqs >= fmin_v
        if fmax_v is not None:
            keep &= freqs <= fmax_v
        if not keep.any():
            raise ValueError(
                f"fmin/fmax select an empty frequency window; the spectrum covers {freqs[0]:g} to {freqs[-1]:g} Hz"
            )
        power = torch.from_numpy(np.ascontiguousarray(data[:, keep]))
        power = _convert(power, "V^2/Hz", units, POWER_UNITS)
        try:
            return cls(torch.from_numpy(freqs[keep].copy()), power, tuple(ch_names), units, n_segments, metadata)
        except ValueError as err:
            raise ValueError(f"inst: {err}") from None

    # ---------------------------------------------------------------- queries
    @property
    def n_channels(self) -> int:
        """Number of channels (rows of ``power``)."""
        return self.power.shape[0]

    @property
    def n_freqs(self) -> int:
        """Number of frequencies ``F``."""
        return self.freqs.numel()

    def __repr__(self) -> str:
        f = self.freqs
        names = list(self.channel_names[:6]) + (["..."] if self.n_channels > 6 else [])
        return (
            f"SpectrumData(channels={names}, freqs={f.numel()} from {f[0].item():g} to {f[-1].item():g} Hz, "
            f"units={self.units!r}, n_segments={self.n_segments})"
        )

    def select(self, channels=None, fmin=None, fmax=None) -> "SpectrumData":
        """A copy restricted to some channels (in the given order) and a frequency window.

        Parameters
        ----------
        channels : str or list of str, optional
            Channel names; default all.
        fmin, fmax : float, optional
            Inclusive frequency window in Hz.

        Returns
        -------
        SpectrumData
        """
        idx = list(range(self.n_channels)) if channels is None else _channel_indices("channels", channels,
                                                                                      self.channel_names)
        mask = _window(self.freqs, fmin, fmax, "fmin", "fmax", "Hz")
        return SpectrumData(
            self.freqs[mask], self.power[idx][:, mask], tuple(self.channel_names[i] for i in idx), self.units,
            self.n_segments, dict(self.metadata),
        )

    def mean_over_channels(self, name: str = "mean") -> "SpectrumData":
        """Average the power over channels into one channel called ``name``.

        ``n_segments`` is kept: neighbouring channels are strongly correlated,
        so the average does not have ``n_channels`` times as many degrees of
        freedom.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty str; got {name!r}")
        md = dict(self.metadata)
        md["averaged_channels"] = list(self.channel_names)
        return SpectrumData(self.freqs, self.power.mean(0, keepdim=True), (name,), self.units, self.n_segments, md)

    def to_units(self, units: str) -> "SpectrumData":
        """A copy with ``power`` in ``units`` (1 V^2 = 1e6 mV^2 = 1e12 µV^2)."""
        units = _normalise_units("units", units, POWER_UNITS)
        power = _convert(self.power, self.units, units, POWER_UNITS)
        return SpectrumData(self.freqs, power, self.channel_names, units, self.n_segments, dict(self.metadata))

    def to_csv(self, path, overwrite: bool = False) -> Path:
        """Write ``freq,<channel names...>`` (Hz, then power in ``self.units``); returns the path.

        Units and ``n_segments`` are not stored in the file: pass them to
        :meth:`from_csv` when reading it back. Raises ``FileExistsError`` if
        ``path`` exists and ``overwrite`` is False.
        """
        return _write_csv(path, "freq", self.freqs, self.channel_names, self.power, overwrite)

    def peak_frequency(self, fmin=None, fmax=None) -> torch.Tensor:
        """Frequency (Hz) of the largest power in ``[fmin, fmax]`` for each channel, shape ``(n_channels,)``."""
        mask = _window(self.freqs, fmin, fmax, "fmin", "fmax", "Hz")
        f = self.freqs[mask]
        return f[self.power[:, mask].argmax(dim=1)]


def _window_nonempty(lo: float, hi: float, res: float, sfreq: float) -> bool:
    k_lo = math.ceil(lo / res - 1e-9)
    k_hi = math.floor(min(hi, sfreq / 2) / res + 1e-9)
    return k_hi >= max(k_lo, 0)


def _raw_segment_count(raw, n_per_seg: int, n_overlap: int) -> int:
    """Welch segments MNE averages for a Raw, accounting for BAD_* annotation gaps."""
    n_times = len(raw.times)
    desc = [str(d).lower() for d in raw.annotations.description]
    if not any(d.startswith("bad") for d in desc):
        return _welch_count(n_times, n_per_seg, n_overlap)
    good = ~np.isnan(raw.get_data(picks=[0], reject_by_annotation="NaN", verbose="error")[0])
    edges = np.diff(np.concatenate([[0], good.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    total = sum(_welch_count(int(b - a), n_per_seg, n_overlap) for a, b in zip(starts, stops))
    return max(total, 1)


# ================================================================ EvokedData
@dataclass(frozen=True, eq=False)
class EvokedData:
    """Averaged event-related potentials of one or more channels (immutable, validated).

    Parameters
    ----------
    times : array_like
        Sample times in s relative to the event, shape ``(T,)``; finite and
        strictly increasing.
    values : array_like
        Potentials in ``units``, shape ``(n_channels, T)``; finite.
    channel_names : sequence of str, optional
        Unique names, one per row (default ``"ch0", ...``).
    units : {"V", "mV", "uV"}
        Units of ``values`` (``"µV"`` is normalised to ``"uV"``).
    n_averaged : int, optional
        Number of trials averaged (MNE's ``nave``); ``None`` when unknown.
    metadata : dict, optional
        Free-form provenance.
    """

    times: torch.Tensor
    values: torch.Tensor
    channel_names: tuple[str, ...] | None = None
    units: str = "uV"
    n_averaged: int | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        times = _check_axis("times", self.times, "s", nonnegative=False)
        values = _check_values("values", self.values, times.numel(), "times", allow_1d=False)
        names = _check_channel_names(self.channel_names, values.shape[0])
        units = _normalise_units("units", self.units, AMPLITUDE_UNITS)
        _check_rows("values", values, names, times, "s", positive=False)
        set_ = object.__setattr__
        set_(self, "times", times)
        set_(self, "values", values)
        set_(self, "channel_names", names)
        set_(self, "units", units)
        set_(self, "n_averaged", _check_count("n_averaged", self.n_averaged))
        set_(self, "metadata", _check_metadata(self.metadata))

    @classmethod
    def from_arrays(cls, times, values, channel_names=None, units: str = "uV", n_averaged=None, metadata=None):
        """Build from arrays; ``values`` of shape ``(T,)`` is one channel, else ``(n_channels, T)``."""
        t = _check_axis("times", times, "s", nonnegative=False)
        v = _check_values("values", values, t.numel(), "times", allow_1d=True)
        return cls(t, v, channel_names, units, n_averaged, metadata)

    @classmethod
    def from_csv(cls, path, units: str = "uV", n_averaged=None) -> "EvokedData":
        """Read a CSV with the header ``time,value[,...]`` (s, then one column per channel).

        Errors as for :meth:`SpectrumData.from_csv`.
        """
        units = _normalise_units("units", units, AMPLITUDE_UNITS)
        n_averaged = _check_count("n_averaged", n_averaged)
        names, t, v = _read_csv(path, _TIME_HEADERS, "time,value[,...]",
                                (_FREQ_HEADERS, "a spectrum CSV; use SpectrumData.from_csv"))
        try:
            return cls(t, v, names, units, n_averaged, {"source": str(path), "format": "csv"})
        except ValueError as err:
            raise ValueError(f"path {str(path)!r}: {err}") from None

    @classmethod
    def from_mne(cls, evoked, picks=None, tmin=None, tmax=None, units: str = "uV") -> "EvokedData":
        """Convert an ``mne.Evoked`` (values in V) to ``units``.

        Parameters
        ----------
        evoked : mne.Evoked
        picks : str or list of str, optional
            Channel names; default all good EEG channels.
        tmin, tmax : float, optional
            Inclusive time window in s.
        units : {"V", "mV", "uV"}

        Returns
        -------
        EvokedData
            With ``n_averaged = evoked.nave``.
        """
        mne = _import_mne()
        units = _normalise_units("units", units, AMPLITUDE_UNITS)
        if isinstance(evoked, mne.BaseEpochs):
            raise ValueError("evoked must be an mne.Evoked; got Epochs (average them first: epochs.average())")
        if not isinstance(evoked, mne.Evoked):
            raise ValueError(f"evoked must be an mne.Evoked; got {type(evoked).__name__}")
        idx = _mne_picks("picks", picks, evoked.info)
        _check_volts("picks", evoked.info, idx)
        times = torch.from_numpy(np.asarray(evoked.times, dtype=np.float64).copy())
        mask = _window(times, tmin, tmax, "tmin", "tmax", "s")
        values = torch.from_numpy(np.asarray(evoked.data[idx], dtype=np.float64).copy())[:, mask]
        values = _convert(values, "V", units, AMPLITUDE_UNITS)
        md = {"mne_type": type(evoked).__name__, "sfreq_hz": float(evoked.info["sfreq"])}
        if evoked.comment:
            md["comment"] = str(evoked.comment)
        nave = evoked.nave if isinstance(evoked.nave, (int, np.integer)) and evoked.nave >= 1 else None
        names = tuple(evoked.info["ch_names"][i] for i in idx)
        try:
            return cls(times[mask], values, names, units, nave, md)
        except ValueError as err:
            raise ValueError(f"evoked: {err}") from None

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return self.values.shape[0]

    @property
    def n_times(self) -> int:
        """Number of samples ``T``."""
        return self.times.numel()

    @property
    def sampling_rate(self) -> float:
        """Sampling rate in Hz, ``1 / dt``; raises ``ValueError`` if ``times`` is not uniformly spaced."""
        if self.n_times < 2:
            raise ValueError("times must hold at least 2 samples to define a sampling rate")
        d = self.times[1:] - self.times[:-1]
        dt = float(d.mean())
        if float((d - dt).abs().max()) > 1e-6 * dt:
            raise ValueError(
                f"times must be uniformly spaced to define a sampling rate; steps range from {float(d.min()):g} "
                f"to {float(d.max()):g} s"
            )
        return 1.0 / dt

    def __repr__(self) -> str:
        t = self.times
        names = list(self.channel_names[:6]) + (["..."] if self.n_channels > 6 else [])
        return (
            f"EvokedData(channels={names}, times={t.numel()} from {t[0].item():g} to {t[-1].item():g} s, "
            f"units={self.units!r}, n_averaged={self.n_averaged})"
        )

    def select(self, channels=None, tmin=None, tmax=None) -> "EvokedData":
        """A copy restricted to some channels (in the given order) and an inclusive time window in s."""
        idx = list(range(self.n_channels)) if channels is None else _channel_indices("channels", channels,
                                                                                      self.channel_names)
        mask = _window(self.times, tmin, tmax, "tmin", "tmax", "s")
        return EvokedData(
            self.times[mask], self.values[idx][:, mask], tuple(self.channel_names[i] for i in idx), self.units,
            self.n_averaged, dict(self.metadata),
        )

    def mean_over_channels(self, name: str = "mean") -> "EvokedData":
        """Average the potentials over channels into one channel called ``name``."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty str; got {name!r}")
        md = dict(self.metadata)
        md["averaged_channels"] = list(self.channel_names)
        return EvokedData(self.times, self.values.mean(0, keepdim=True), (name,), self.units, self.n_averaged, md)

    def to_units(self, units: str) -> "EvokedData":
        """A copy with ``values`` in ``units`` (1 V = 1e3 mV = 1e6 µV)."""
        units = _normalise_units("units", units, AMPLITUDE_UNITS)
        values = _convert(self.values, self.units, units, AMPLITUDE_UNITS)
        return EvokedData(self.times, values, self.channel_names, units, self.n_averaged, dict(self.metadata))

    def to_csv(self, path, overwrite: bool = False) -> Path:
        """Write ``time,<channel names...>`` (s, then values in ``self.units``); returns the path."""
        return _write_csv(path, "time", self.times, self.channel_names, self.values, overwrite)

    def baseline_correct(self, tmin=None, tmax=0.0) -> "EvokedData":
        """Subtract each channel's mean over ``[tmin, tmax]`` s (default: start to 0 s)."""
        mask = _window(self.times, tmin, tmax, "tmin", "tmax", "s")
        values = self.values - self.values[:, mask].mean(dim=1, keepdim=True)
        md = dict(self.metadata)
        md["baseline_s"] = [float(self.times[mask][0]), float(self.times[mask][-1])]
        return EvokedData(self.times, values, self.channel_names, self.units, self.n_averaged, md)
