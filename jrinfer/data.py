"""Containers for the data a Jansen-Rit model is fitted to: EEG spectra and evoked potentials.

:class:`SpectrumData` holds power spectral densities (one row per channel) and
:class:`EvokedData` holds averaged event-related potentials. Both are immutable,
validate everything on construction, and read/write a plain CSV format with a
required header::

    freq,power[,power_2,...]      # spectra: Hz, then one column per channel
    time,value[,...]              # evoked potentials: s, then one column per channel

Column names after the first become channel names. Units may be named in the
header (``freq,O1 [uV^2/Hz]``, ``time [ms],Cz [uV]``) or given to ``from_csv``;
with neither, µV^2/Hz (µV) is assumed only when the values are plausible EEG at
that scale (a warning says so), otherwise ``from_csv`` refuses and names the
likely units.

Warnings about the data (implausible amplitudes, outlying bins, assumed units,
channels left out) are issued as ``UserWarning`` and also recorded in
``metadata["warnings"]`` (a list of str), which :meth:`SpectrumData.select`,
``mean_over_channels`` and ``to_units`` carry along; the channels used from a
recording are in ``metadata["channels_used"]`` and those left out, with the
reason, in ``metadata["channels_dropped"]``.

Scale caps (refused on construction, before anything is computed):
:data:`MAX_EVOKED_SPAN_S`, :data:`MAX_EVOKED_SAMPLES`,
:data:`MAX_SPECTRUM_FREQS`, :data:`MAX_SPECTRUM_FREQ_HZ`.

MNE-Python objects (``Raw``, ``Epochs``, ``Spectrum``, ``Evoked``) convert with
``from_mne``; MNE is imported lazily, so importing this module does not need it.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jrinfer import _checks, _io
from jrinfer import _datachecks as _dc
from jrinfer._optional import optional_import

__all__ = [
    "SpectrumData",
    "EvokedData",
    "POWER_UNITS",
    "AMPLITUDE_UNITS",
    "MAX_EVOKED_SPAN_S",
    "MAX_EVOKED_SAMPLES",
    "MAX_SPECTRUM_FREQS",
    "MAX_SPECTRUM_FREQ_HZ",
    "MIN_FIT_FREQS",
    "data_from_dict",
]

#: Accepted power units and their size in V^2/Hz.
POWER_UNITS: dict[str, float] = {"V^2/Hz": 1.0, "mV^2/Hz": 1e-6, "uV^2/Hz": 1e-12}
#: Accepted amplitude units and their size in V.
AMPLITUDE_UNITS: dict[str, float] = {"V": 1.0, "mV": 1e-3, "uV": 1e-6}

#: Longest evoked epoch (s). The evoked model integrates the ODE with RK4 at 1 ms steps under
#: autograd, about 40 kB of graph per simulated ms: 10 s is about 0.4 GB, while a 600 s "epoch"
#: (a time column in ms read as s) needs about 24 GB and kills the process.
MAX_EVOKED_SPAN_S: float = 10.0
#: Most samples in an evoked response (10 s at 10 kHz).
MAX_EVOKED_SAMPLES: int = 100_000
#: Most frequencies in a spectrum (each costs one transfer-function evaluation per likelihood call).
MAX_SPECTRUM_FREQS: int = 20_000
#: Highest frequency in a spectrum (Hz): the Nyquist frequency of the 0.1 ms simulation step.
MAX_SPECTRUM_FREQ_HZ: float = 5000.0
#: Fewest data points (frequencies, or samples of an evoked response) a fit needs: more than the
#: default spectrum fit's free parameters (6 JR parameters, gain, aperiodic exponent and level,
#: white floor) plus its noise precision.
MIN_FIT_FREQS: int = 12

_FREQ_HEADERS = ("freq", "freqs", "frequency", "freq_hz", "frequency_hz")
_TIME_HEADERS = ("time", "times", "time_s")
_MNE_FOR = "reading MNE objects"


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
    """A count >= 1 (``_checks.check_int``) or None (unknown)."""
    if value is None:
        return None
    try:
        return _checks.check_int(name, value, minimum=1)
    except ValueError as err:
        raise ValueError(f"{err} (or None when unknown)") from None


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a dict or None; got {type(metadata).__name__}")
    md = _dc.copy_metadata(dict(metadata))
    w = md.get("warnings")
    if w is not None and (not isinstance(w, list) or not all(isinstance(x, str) for x in w)):
        raise ValueError(f"metadata['warnings'] must be a list of str; got {w!r}")
    return md


def _check_evoked_scale(times: torch.Tensor) -> None:
    """Refuse epochs whose length or sample count would make the simulation explode."""
    n = times.numel()
    if n > MAX_EVOKED_SAMPLES:
        raise ValueError(
            f"times must hold at most MAX_EVOKED_SAMPLES = {MAX_EVOKED_SAMPLES} samples; got {n}. "
            f"Resample the evoked response (e.g. evoked.resample(1000))"
        )
    if n < 2:
        return
    span = float(times[-1] - times[0])
    step = span / (n - 1)
    if span > MAX_EVOKED_SPAN_S:
        raise ValueError(
            f"times must span at most MAX_EVOKED_SPAN_S = {MAX_EVOKED_SPAN_S:g} s (an evoked epoch, in seconds); "
            f"times span {span:.4g} s with a {step:.3g} s step{_dc.ms_hint(span, step)}"
        )


def _check_spectrum_scale(freqs: torch.Tensor) -> None:
    """Refuse frequency grids whose size or range would make the computation explode."""
    n = freqs.numel()
    if n > MAX_SPECTRUM_FREQS:
        raise ValueError(
            f"freqs must hold at most MAX_SPECTRUM_FREQS = {MAX_SPECTRUM_FREQS} frequencies; got {n} "
            f"({freqs[0].item():g} to {freqs[-1].item():g} Hz). Select a window (fmin/fmax) or a coarser grid"
        )
    top = float(freqs[-1])
    if top > MAX_SPECTRUM_FREQ_HZ:
        hint = "; were they given in mHz? Divide the frequency column by 1000" if top / 1000 <= 500 else ""
        raise ValueError(
            f"freqs must not exceed MAX_SPECTRUM_FREQ_HZ = {MAX_SPECTRUM_FREQ_HZ:g} Hz; got frequencies up to "
            f"{top:g} Hz{hint}"
        )


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


def _check_bands(argname: str, bands) -> list[tuple[float, float]]:
    """Validate ``[(lo, hi), ...]`` frequency bands in Hz (a single ``(lo, hi)`` is accepted too)."""
    if bands is None:
        return []
    try:
        items = list(bands)
        if len(items) == 2 and all(isinstance(x, (int, float, np.floating, np.integer)) for x in items):
            items = [tuple(items)]
        out = []
        for b in items:
            lo, hi = (float(x) for x in b)
            out.append((lo, hi))
    except (TypeError, ValueError):
        raise ValueError(f"{argname} must be a list of (low, high) frequency bands in Hz, e.g. [(49, 51)]; "
                         f"got {bands!r}") from None
    for lo, hi in out:
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
            raise ValueError(f"{argname}: each band must be (low, high) Hz with 0 <= low <= high; got ({lo:g}, {hi:g})")
    return out


def _band_mask(freqs: torch.Tensor, bands, argname: str) -> torch.Tensor:
    """True where a frequency lies outside every band; refuses to leave nothing."""
    keep = torch.ones_like(freqs, dtype=torch.bool)
    for lo, hi in bands:
        keep &= ~((freqs >= lo) & (freqs <= hi))
    if not bool(keep.any()):
        raise ValueError(f"{argname} leaves no frequency: every bin of {freqs[0].item():g} to "
                         f"{freqs[-1].item():g} Hz lies in {bands}")
    return keep


def _zero_power_hint(freqs: torch.Tensor, power: torch.Tensor) -> str:
    """Suggest excluding the bins where power is 0 or negative (a notch filter's output)."""
    if power.dim() != 2 or power.shape[-1] != freqs.numel():
        return ""
    bad = ~(power > 0).all(dim=0)
    if not bool(bad.any()) or bool(bad.all()):
        return ""
    f = freqs.numpy()
    df = float(np.median(np.diff(f))) if f.size > 1 else 1.0
    bands = _dc.suggest_bands(f[bad.numpy()].tolist(), df)
    return f" (a notch filter zeroes bins; leave them out with {_dc.fmt_bands(bands)})"


def _refresh_outliers(md: dict, freqs: torch.Tensor, power: torch.Tensor) -> None:
    """Replace the outlying-bin warning in ``md`` by one for this grid (warning only when it is new)."""
    old = md.get("warnings", [])
    kept = [w for w in old if not w.startswith(_dc.OUTLIER_PREFIX)]
    f = freqs.numpy()
    bins = _dc.outlying_bins(f, power.detach().numpy())
    md["warnings"] = kept
    md.pop("outlying_bins_hz", None)
    if bins:
        df = float(np.median(np.diff(f)))
        msg = _dc.outlier_message(bins, df)
        md["outlying_bins_hz"] = [b for b, _ in bins]
        if msg in old:
            kept.append(msg)
        else:
            _dc.warn(md, msg, stacklevel=5)
    if not md["warnings"]:
        del md["warnings"]


def _power_plausibility(md: dict, power: torch.Tensor, units: str, where: str) -> None:
    """Warn when the median power is not EEG-like in ``units`` (a V^2/Hz file read as uV^2/Hz...)."""
    pos = power[power > 0]
    if not pos.numel():
        return
    med_uv2 = float(pos.median()) * POWER_UNITS[units] / POWER_UNITS["uV^2/Hz"]
    ok, likely = _dc.power_units_guess(med_uv2, units)
    if ok:
        return
    lo, hi = _dc.PLAUSIBLE_POWER_UV2
    guess = (f"the values look like {likely} read as {units}" if likely and likely != units
             else "check the recording's units")
    _dc.warn(md, f"{where}: implausible EEG power: median {med_uv2:.3g} uV^2/Hz (typical EEG: {lo:g} to {hi:g}); "
                 f"{guess}. Units change only the fitted gain, but check them", stacklevel=5)


def _evoked_plausibility(md: dict, values: torch.Tensor, units: str, where: str) -> None:
    """Warn when the evoked response's peak is not EEG-like in ``units``."""
    if not values.numel():
        return
    peak_uv = float(values.abs().max(dim=1).values.median()) * AMPLITUDE_UNITS[units] / AMPLITUDE_UNITS["uV"]
    ok, likely = _dc.amplitude_units_guess(peak_uv, units)
    if ok:
        return
    lo, hi = _dc.PLAUSIBLE_AMPLITUDE_UV
    guess = (f"the values look like {likely} read as {units}" if likely and likely != units
             else "check the recording's units")
    _dc.warn(md, f"{where}: implausible evoked amplitude: peak {peak_uv:.3g} uV (typical EEG: {lo:g} to {hi:g} uV); "
                 f"{guess}. Units change only the fitted gain, but check them", stacklevel=5)


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
    header, header_units = zip(*(_split_unit(c) for c in header))
    header = list(header)
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
        if first in other[0]:
            hint = f" (this looks like {other[1]})"
        else:  # neither axis: name both, so that a misspelt 'time' finds its way too
            hint = f" (the first column names the axis: {axis_headers[0]!r}, or {other[0][0]!r} in {other[1].split(';')[0]})"
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
    value_units = {u for u in header_units[1:] if u is not None}
    if len(value_units) > 1:
        raise ValueError(f"{where}: the header names different units for the data columns: {sorted(value_units)}; "
                         f"all columns must share one unit")
    return (tuple(names), torch.from_numpy(data[:, 0].copy()), torch.from_numpy(data[:, 1:].T.copy()),
            header_units[0], next(iter(value_units), None))


_UNIT_IN_HEADER = re.compile(r"^(.*?)\s*[\[(]\s*([^\])]+?)\s*[\])]\s*$")


def _split_unit(cell: str) -> tuple[str, str | None]:
    """``"power [uV^2/Hz]"`` -> ``("power", "uV^2/Hz")``; ``"power"`` -> ``("power", None)``."""
    m = _UNIT_IN_HEADER.match(cell)
    if m and m.group(1).strip():
        unit = m.group(2).strip()
        norm = unit.replace(" ", "").replace("µ", "u").replace("μ", "u").replace("²", "^2").replace("**2", "^2")
        if cell.rstrip().endswith("]") or norm in {*POWER_UNITS, *AMPLITUDE_UNITS, "s", "ms", "Hz"}:
            return m.group(1).strip(), unit
    return cell, None


def _axis_unit(where: str, unit, allowed: Mapping[str, float], what: str) -> float:
    """Scale factor of the first column's unit (None: the default, factor 1)."""
    if unit is None:
        return 1.0
    if unit not in allowed:
        raise ValueError(f"{where}: the {what} column's unit must be one of {', '.join(allowed)}; got {unit!r}")
    return allowed[unit]


def _resolve_csv_units(where: str, header_unit, units, table: Mapping[str, float], default: str,
                       typical: float, plausible, example: str, metadata: dict) -> str:
    """Units of a CSV's values: header, else ``units``, else ``default`` if ``typical`` is plausible.

    ``typical`` is the values' typical magnitude (median power or peak
    amplitude); ``plausible(typical, unit)`` gives (plausible?, likely unit).
    """
    if header_unit is not None:
        try:
            hu = _normalise_units("units", header_unit, table)
        except ValueError:
            raise ValueError(
                f"{where}: the header names the units {header_unit!r}; expected one of {', '.join(table)}"
            ) from None
        if units is not None and units != hu:
            raise ValueError(f"{where}: the header says the values are in {hu} but units={units!r} was given; "
                             f"drop one of them or make them agree")
        metadata["units_from"] = "header"
        return hu
    if units is not None:
        metadata["units_from"] = "argument"
        return units
    ok, likely = plausible(typical, default)
    if ok:
        metadata["units_from"] = "assumed"
        _dc.warn(metadata, f"{where}: the CSV names no units; assumed {default} (the values are plausible EEG in "
                           f"{default}). Name them in the header (e.g. {example}) or pass units='{default}'",
                 stacklevel=4)
        return default
    guess = f"they look like {likely}" if likely else "no EEG unit makes them plausible"
    raise ValueError(
        f"{where}: the CSV names no units and its values (typical magnitude {typical:.3g}) are implausible as "
        f"EEG in {default}; {guess}. Pass units='{likely or default}' or name the units in the header "
        f"(e.g. {example.replace(default, likely or default)})"
    )


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _write_csv(path, first: str, axis: torch.Tensor, names: Sequence[str], values: torch.Tensor, overwrite: bool):
    if isinstance(path, (bytes, bytearray)) or not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike; got {path!r}")
    _checks.check_bool("overwrite", overwrite)
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"path must be a file name; got the directory {str(p)!r}")
    _io.check_writable(p, overwrite=overwrite)
    with _io.atomic_path(p) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow([first, *names])
        for x, row in zip(axis.tolist(), values.T.tolist()):
            w.writerow([_fmt(x), *(_fmt(y) for y in row)])
    return p


# ------------------------------------------------------------------ MNE input

def _mne_picks(argname: str, picks, info, metadata: dict | None = None) -> list[int]:
    """Indices of ``picks`` (channel names) in ``info``.

    ``None``: the good EEG channels, leaving out channels whose EDF label
    says they are not EEG (``"ECG ECG"``, ``"EOG ..."``) and reference-only
    channels (``"EEG A2-A1"``); if there are no EEG channels, the good
    channels of the other types measured in volts (sEEG, ECoG, ...). The
    channels left out and why go to ``metadata["channels_dropped"]`` with a
    warning. Names are matched exactly, else after normalisation (``"O1"``
    finds ``"EEG O1-A1"`` and EEGMMIDB's ``"O1.."``).
    """
    names = list(info["ch_names"])
    md = {} if metadata is None else metadata
    if picks is None:
        mne = optional_import("mne", purpose=_MNE_FOR)
        idx = list(mne.pick_types(info, eeg=True, exclude="bads"))
        if idx:
            types = info.get_channel_types()
            dropped = []
            for i in range(len(names)):
                if names[i] in info["bads"]:
                    dropped.append({"channel": names[i], "reason": "marked bad"})
                    continue
                reason = _dc.non_eeg_reason(names[i], types[i])
                if reason is not None:
                    dropped.append({"channel": names[i], "reason": reason})
            drop_names = {d["channel"] for d in dropped}
            idx = [i for i in idx if names[i] not in drop_names]
            if not idx:
                raise ValueError(f"{argname}=None found no EEG channel to use: {dropped}; name channels with "
                                 f"{_dc.fmt_picks(names[:3])}")
            if dropped:
                md["channels_dropped"] = dropped
                not_bad = [d for d in dropped if d["reason"] != "marked bad" and not d["reason"].startswith("type ")]
                if not_bad:
                    _dc.warn(md, "left out of the default picks (not scalp EEG): " + "; ".join(
                        f"{d['channel']} ({d['reason']})" for d in not_bad), stacklevel=5)
        else:
            idx = list(mne.pick_types(info, eeg=True, eog=True, ecg=True, seeg=True, ecog=True, dbs=True, emg=True,
                                      bio=True, exclude="bads"))
        if not idx:
            raise ValueError(f"{argname}=None found no good channels recorded in volts; available: {names}")
        md["channels_used"] = [names[i] for i in idx]
        return idx
    if isinstance(picks, str):
        picks = [picks]
    try:
        picks = list(picks)
    except TypeError:
        raise ValueError(f"{argname} must be a channel name or a list of names; got {picks!r}") from None
    if not picks:
        raise ValueError(f"{argname} must name at least one channel; got an empty list")
    resolved = _dc.match_channels(argname, picks, names)
    idx = _channel_indices(argname, resolved, names)
    md["channels_used"] = [names[i] for i in idx]
    return idx


_VOLT_TYPES = ("eeg", "eog", "ecg", "emg", "seeg", "ecog", "dbs", "bio")


def _check_volts(argname: str, info, idx: Iterable[int]) -> None:
    """Every picked channel must be an electrophysiological channel measured in volts."""
    mne = optional_import("mne", purpose=_MNE_FOR)
    FIFF = optional_import("mne.io.constants", purpose=_MNE_FOR).FIFF

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
        _check_spectrum_scale(freqs)
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
    def from_csv(
        cls, path, units: str | None = None, n_segments=None, exclude=None, fmin=None, fmax=None
    ) -> "SpectrumData":
        """Read a CSV with the header ``freq,power[,power_2,...]``.

        The first column is the frequency in Hz; every further column is one
        channel, named by its header (``power`` for a single-channel file).
        A header cell may name its unit in brackets: ``freq [Hz]``,
        ``power [uV^2/Hz]``.

        Parameters
        ----------
        path : str or os.PathLike
            The CSV file (comma-separated, UTF-8, header required).
        units : {"V^2/Hz", "mV^2/Hz", "uV^2/Hz"}, optional
            Units of the power columns, when the header does not name them
            (if both do, they must agree). With neither, µV^2/Hz is assumed
            (with a warning) only when the median power is plausible EEG in
            µV^2/Hz (``1e-4`` to ``1e4``); otherwise ValueError names the
            likely units.
        n_segments : int, optional
            Number of averaged Welch segments behind the estimate, if known.
        fmin, fmax : float, optional
            Keep only frequencies in ``[fmin, fmax]`` Hz, applied before the
            values are checked (bins outside the range are never validated).
        exclude : sequence of (float, float), optional
            Frequency bands in Hz (inclusive) to leave out, e.g. a notch:
            ``[(49, 51), (99, 101)]``; applied before validation, so bins
            with zero power inside them are no error.

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
        units = None if units is None else _normalise_units("units", units, POWER_UNITS)
        n_segments = _check_count("n_segments", n_segments)
        bands = _check_bands("exclude", exclude)
        names, f, p, f_unit, p_unit = _read_csv(path, _FREQ_HEADERS, "freq,power[,power_2,...]",
                                                (_TIME_HEADERS, "an evoked-potential CSV; use EvokedData.from_csv"))
        where = f"path {str(path)!r}"
        _axis_unit(where, f_unit, {"Hz": 1.0}, "frequency")
        md: dict = {"source": str(path), "format": "csv"}
        try:
            if fmin is not None or fmax is not None:
                # crop first, so that bins outside the fitted range (e.g. notch zeros) are never validated
                lo = -math.inf if fmin is None else _checks.check_scalar("fmin", fmin)
                hi = math.inf if fmax is None else _checks.check_scalar("fmax", fmax)
                inside = (f >= lo) & (f <= hi)
                if not bool(inside.any()):
                    raise ValueError(
                        f"fmin={fmin}, fmax={fmax} give an empty frequency window: the data hold "
                        f"{f[0].item():g} to {f[-1].item():g} Hz"
                    )
                f, p = f[inside], p[:, inside]
            if bands:
                keep = _band_mask(f, bands, "exclude")
                f, p = f[keep], p[:, keep]
                md["excluded_bands_hz"] = [list(b) for b in bands]
            _check_axis("freqs", f, "Hz", nonnegative=True)
            _check_spectrum_scale(f)
            _check_rows("power", p, names, f, "Hz", positive=True)
        except ValueError as err:
            raise ValueError(f"{where}: {err}{_zero_power_hint(f, p)}") from None
        pos = p[p > 0]
        typical = float(pos.median()) if pos.numel() else 0.0
        units = _resolve_csv_units(where, p_unit, units, POWER_UNITS, "uV^2/Hz", typical,
                                   lambda v, u: _dc.power_units_guess(v, u), "'power [uV^2/Hz]'", md)
        try:
            out = cls(f, p, names, units, n_segments, md)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        return out._checked(where)

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
        exclude=None,
    ) -> "SpectrumData":
        """Welch spectrum of an MNE ``Raw`` or ``Epochs``, or convert an MNE ``Spectrum``.

        For ``Raw``/``Epochs`` the PSD is computed with
        ``inst.compute_psd(method="welch", n_fft=n, n_per_seg=n, n_overlap=m,
        window="hann")`` where ``n = round(seg_length * sfreq)`` and
        ``m = round(overlap * n)``; epochs are averaged. Segments overlapping
        ``BAD_*`` annotations of a ``Raw`` are left out (MNE's default), and
        so are good spans shorter than one segment (with a warning).

        Refused up front, with a message saying what to change: a picked
        channel that is flat (disconnected), ``fmax`` above the recording's
        low-pass filter (``info["lowpass"]``), ``fmin`` at 0 Hz or below its
        high-pass filter, a segment longer than the recording or than every
        good span. Warned about (``UserWarning`` and
        ``metadata["warnings"]``): channels left out of the default picks,
        implausible amplitudes (such as an EDF header saying mV for samples in
        µV), isolated outlying bins (line noise, notch dips).

        Parameters
        ----------
        inst : mne.io.BaseRaw, mne.BaseEpochs, mne.time_frequency.Spectrum or EpochsSpectrum
            The data; channels must be in volts (EEG-like).
        picks : str or list of str, optional
            Channel names (in this order), matched exactly or after
            normalisation (``"O1"`` finds ``"EEG O1-A1"`` or ``"O1.."``).
            Default: all good EEG channels except those whose label says they
            are not EEG (EDF type prefixes such as ``"ECG ECG"``) and
            reference-only channels (``"EEG A2-A1"``); if there are none, all
            good sEEG/ECoG/... channels in volts. The channels used are in
            ``metadata["channels_used"]``, those left out (with the reason) in
            ``metadata["channels_dropped"]``.
        fmin, fmax : float, optional
            Frequency window in Hz (inclusive). ``fmin`` defaults to the
            lowest frequency above 0 Hz and at or above the high-pass filter;
            ``fmax`` to the low-pass filter (``info["lowpass"]``, at most the
            Nyquist frequency).
        seg_length : float
            Welch segment length in s (ignored for ``Spectrum`` input); the
            frequency resolution is ``1 / seg_length`` Hz.
        overlap : float
            Fraction of overlap between segments, in ``[0, 1)``.
        units : {"V^2/Hz", "mV^2/Hz", "uV^2/Hz"}
            Units of the result (MNE works in V^2/Hz).
        exclude : sequence of (float, float), optional
            Frequency bands in Hz (inclusive) to leave out, e.g. ``[(49, 51)]``.

        Returns
        -------
        SpectrumData
            ``n_segments`` is the number of averaged segments (summed over
            epochs and good data spans). For ``Spectrum`` input it is only
            known for unaggregated (``average=None``) Welch spectra, else None;
            set it with ``dataclasses.replace(s, n_segments=K)``.
        """
        mne = optional_import("mne", purpose=_MNE_FOR)
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
        bands = _check_bands("exclude", exclude)
        info = inst.info
        sfreq = float(info["sfreq"])
        lowpass = info.get("lowpass")
        highpass = info.get("highpass")
        nyquist = sfreq / 2
        filtered = lowpass is not None and 0 < float(lowpass) < nyquist - 1e-9
        if fmin_v == 0:
            raise ValueError("fmin must be > 0 Hz; got fmin=0 Hz (the 0 Hz bin carries no information after mean "
                             "removal and is often exactly 0)")
        if fmax_v is not None and fmax_v > nyquist + 1e-9:
            raise ValueError(
                f"fmax={fmax_v:g} Hz is above the Nyquist frequency of the recording ({nyquist:g} Hz, half its "
                f"sampling rate {sfreq:g} Hz): no power is measured there. Use fmax="
                f"{float(lowpass) if filtered else nyquist:g} or lower"
            )
        if fmax_v is not None and filtered and fmax_v > float(lowpass) + 1e-9:
            raise ValueError(
                f"fmax={fmax_v:g} Hz is above the recording's low-pass filter at {float(lowpass):g} Hz "
                f"(from its header): power there is filtered out, not brain signal, and a fit would miss the data. "
                f"Use fmax={float(lowpass):g} or lower"
            )
        if fmin_v is not None and highpass and fmin_v < float(highpass) - 1e-9:
            raise ValueError(
                f"fmin={fmin_v:g} Hz is below the recording's high-pass filter at {float(highpass):g} Hz "
                f"(from its header): power there is filtered out. Use fmin={float(highpass):g} or higher"
            )
        if fmax_v is None:
            fmax_v = float(lowpass) if filtered else None
        fmin_floor = float(highpass) if highpass and float(highpass) > 0 else None
        metadata = _mne_metadata(inst)
        idx = _mne_picks("picks", picks, info, metadata)
        _check_volts("picks", info, idx)
        ch_names = [info["ch_names"][i] for i in idx]
        metadata["lowpass_hz"] = None if lowpass is None else float(lowpass)
        metadata["highpass_hz"] = None if highpass is None else float(highpass)

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
            check_power = True
        else:
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
                    f"seg_length={seg:g} s (the Welch segment, {n_per_seg} samples) is longer than {what} "
                    f"({n_times} samples, {n_times / sfreq:g} s); use a shorter segment, e.g. "
                    f"seg_length={_nice_down(n_times / sfreq / 2)} (frequency resolution 1/segment Hz)"
                )
            n_overlap = int(round(ov * n_per_seg))
            n_overlap = min(n_overlap, n_per_seg - 1)
            if isinstance(inst, mne.io.BaseRaw):
                inst = _mark_non_finite_spans(inst, ch_names, metadata)
                inst = _drop_short_spans(inst, n_per_seg, seg, metadata)
            _check_flat(inst, ch_names, metadata)
            _amplitude_plausibility(inst, ch_names, metadata)
            res = sfreq / n_per_seg
            lo = max(res, fmin_floor or 0.0) if fmin_v is None else fmin_v
            hi = nyquist if fmax_v is None else fmax_v
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
            check_power = False
        freqs = np.asarray(freqs, dtype=np.float64)
        keep = np.ones(freqs.shape, dtype=bool)
        if fmin_v is None:
            keep &= freqs > 0
            if fmin_floor is not None:
                keep &= freqs >= fmin_floor - 1e-9
        else:
            keep &= freqs >= fmin_v
        if fmax_v is not None:
            keep &= freqs <= fmax_v
        for lo_b, hi_b in bands:
            keep &= ~((freqs >= lo_b) & (freqs <= hi_b))
        if bands:
            metadata["excluded_bands_hz"] = [list(b) for b in bands]
        if not keep.any():
            raise ValueError(
                f"fmin/fmax select an empty frequency window; the spectrum covers {freqs[0]:g} to {freqs[-1]:g} Hz"
            )
        power = torch.from_numpy(np.ascontiguousarray(data[:, keep]))
        power = _convert(power, "V^2/Hz", units, POWER_UNITS)
        try:
            out = cls(torch.from_numpy(freqs[keep].copy()), power, tuple(ch_names), units, n_segments, metadata)
        except ValueError as err:
            raise ValueError(f"inst: {err}") from None
        if check_power:
            _power_plausibility(out.metadata, out.power, out.units, "inst")
        _refresh_outliers(out.metadata, out.freqs, out.power)
        return out

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

    def _checked(self, where: str) -> "SpectrumData":
        """Add plausibility and outlying-bin warnings to ``metadata`` (in place); returns self."""
        _power_plausibility(self.metadata, self.power, self.units, where)
        _refresh_outliers(self.metadata, self.freqs, self.power)
        return self

    def select(self, channels=None, fmin=None, fmax=None, exclude=None) -> "SpectrumData":
        """A copy restricted to some channels (in the given order) and a frequency window.

        Outlying bins (isolated line-noise spikes, notch dips) are looked for
        again on the result: a warning names those that remain (and
        ``metadata["outlying_bins_hz"]`` lists them).

        Parameters
        ----------
        channels : str or list of str, optional
            Channel names; default all.
        fmin, fmax : float, optional
            Inclusive frequency window in Hz. ``fmin=0`` is refused (the 0 Hz
            bin carries no information after mean removal).
        exclude : sequence of (float, float), optional
            Frequency bands in Hz (inclusive) to leave out, e.g. line noise
            and its harmonic ``[(59, 61), (119, 121)]``. Recorded in
            ``metadata["excluded_bands_hz"]``.

        Returns
        -------
        SpectrumData
        """
        idx = list(range(self.n_channels)) if channels is None else _channel_indices("channels", channels,
                                                                                      self.channel_names)
        if fmin is not None and _checks.check_scalar("fmin", fmin) == 0:
            raise ValueError("fmin must be > 0 Hz; got fmin=0 Hz (the 0 Hz bin carries no information after mean "
                             "removal and is often exactly 0)")
        mask = _window(self.freqs, fmin, fmax, "fmin", "fmax", "Hz")
        md = _dc.copy_metadata(self.metadata)
        bands = _check_bands("exclude", exclude)
        if bands:
            mask &= _band_mask(self.freqs, bands, "exclude")
            if not bool(mask.any()):
                raise ValueError(f"exclude leaves no frequency in the fmin/fmax window; bands {bands}")
            md["excluded_bands_hz"] = [list(b) for b in md.get("excluded_bands_hz", [])] + [list(b) for b in bands]
        names = tuple(self.channel_names[i] for i in idx)
        if channels is not None and "channels_used" in md:
            md["channels_used"] = list(names)
        out = SpectrumData(self.freqs[mask], self.power[idx][:, mask], names, self.units, self.n_segments, md)
        _refresh_outliers(out.metadata, out.freqs, out.power)
        return out

    def mean_over_channels(self, name: str = "mean") -> "SpectrumData":
        """Average the power over channels into one channel called ``name``.

        ``n_segments`` is kept: neighbouring channels are strongly correlated,
        so the average does not have ``n_channels`` times as many degrees of
        freedom.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty str; got {name!r}")
        md = _dc.copy_metadata(self.metadata)
        md["averaged_channels"] = list(self.channel_names)
        return SpectrumData(self.freqs, self.power.mean(0, keepdim=True), (name,), self.units, self.n_segments, md)

    def to_dict(self) -> dict:
        """The data as plain JSON-ready values (:func:`data_from_dict` reads them back).

        Metadata entries that are not plain numbers, strings or booleans
        (warnings, nested records) are left out.
        """
        return {"type": "SpectrumData", "freqs": self.freqs.tolist(), "values": self.power.tolist(),
                "channel_names": list(self.channel_names), "units": self.units, "n_segments": self.n_segments,
                "metadata": _plain_metadata(self.metadata)}

    def interpolate(self, freqs) -> "SpectrumData":
        """The spectrum on another frequency grid: log-power interpolated linearly (no extrapolation).

        Parameters
        ----------
        freqs : array_like, shape (n_freqs_new,)
            Increasing frequencies in Hz inside ``[freqs[0], freqs[-1]]`` of this spectrum.

        Raises
        ------
        ValueError
            If ``freqs`` reach outside this spectrum's frequency range.
        """
        grid = _check_axis("freqs", freqs, "Hz", nonnegative=True)
        f = self.freqs
        lo, hi = float(grid[0]), float(grid[-1])
        if float(f[0]) > lo + 1e-9 or float(f[-1]) < hi - 1e-9:
            raise ValueError(f"freqs: the data cover {float(f[0]):g}-{float(f[-1]):g} Hz, the new grid {lo:g}-{hi:g} "
                             "Hz; interpolation does not extrapolate")
        logp = np.stack([np.interp(grid.numpy(), f.numpy(), row) for row in torch.log(self.power).numpy()])
        md = _dc.copy_metadata(self.metadata)
        md["resampled_from"] = f"{float(f[0]):g}-{float(f[-1]):g} Hz, {f.numel()} frequencies"
        md["warnings"] = list(md.get("warnings", [])) + [
            f"spectrum interpolated (log-power, linear) from {f.numel()} frequencies onto {grid.numel()}"
        ]
        return SpectrumData(grid, torch.exp(torch.from_numpy(logp)), self.channel_names, self.units,
                            self.n_segments, md)

    def to_units(self, units: str) -> "SpectrumData":
        """A copy with ``power`` in ``units`` (1 V^2 = 1e6 mV^2 = 1e12 µV^2)."""
        units = _normalise_units("units", units, POWER_UNITS)
        power = _convert(self.power, self.units, units, POWER_UNITS)
        return SpectrumData(self.freqs, power, self.channel_names, units, self.n_segments, dict(self.metadata))

    def to_csv(self, path, overwrite: bool = False) -> Path:
        """Write ``freq,<name> [<units>],...`` (Hz, then power in ``self.units``); returns the path.

        The units are in the header, so :meth:`from_csv` reads them back;
        ``n_segments`` is not stored: pass it to :meth:`from_csv`. Raises ``FileExistsError`` if
        ``path`` exists and ``overwrite`` is False.
        """
        return _write_csv(path, "freq", self.freqs, [f"{n} [{self.units}]" for n in self.channel_names],
                          self.power, overwrite)

    def peak_frequency(self, fmin=None, fmax=None) -> torch.Tensor:
        """Frequency (Hz) of the largest power in ``[fmin, fmax]`` for each channel, shape ``(n_channels,)``."""
        mask = _window(self.freqs, fmin, fmax, "fmin", "fmax", "Hz")
        f = self.freqs[mask]
        return f[self.power[:, mask].argmax(dim=1)]


def _nice_down(x: float) -> str:
    """``x`` rounded down to a short number (1, 1.5, 2, 2.5, 3, 4, 5 x 10^k) for hints."""
    if x <= 0:
        return f"{x:g}"
    k = math.floor(math.log10(x))
    for m in (5, 4, 3, 2.5, 2, 1.5, 1):
        if m * 10**k <= x + 1e-12:
            return f"{m * 10**k:g}"
    return f"{x:g}"  # pragma: no cover


def _good_spans(raw) -> list[tuple[int, int]]:
    """(start, stop) sample indices of the data between ``BAD_*`` annotations."""
    desc = [str(d).lower() for d in raw.annotations.description]
    if not any(d.startswith("bad") for d in desc):
        return [(0, len(raw.times))]
    good = ~np.isnan(raw.get_data(picks=[0], reject_by_annotation="NaN", verbose="error")[0])
    edges = np.diff(np.concatenate([[0], good.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def _raw_from_series_csv(path, units: str | None = None):
    """An ``mne.io.RawArray`` (EEG, volts) from a CSV time series ``time,value[,...]`` sampled at a fixed rate.

    For recordings kept as text (e.g. the Bonn segments, 173.61 Hz): the
    sampling rate comes from the time column (uniform to 0.1 % of a step),
    the values' units from the header (``value [uV]``), else ``units``
    (``"V"``, ``"mV"``, ``"uV"``), else uV when plausible. The result goes
    through :meth:`SpectrumData.from_mne` like any recording.
    """
    mne = optional_import("mne", purpose="a spectrum from a CSV time series (Welch through MNE)")
    units = None if units is None else _normalise_units("units", units, AMPLITUDE_UNITS)
    names, t, v, t_unit, v_unit = _read_csv(path, _TIME_HEADERS, "time,value[,...]",
                                            (_FREQ_HEADERS, "a spectrum CSV 'freq,power'"))
    where = f"path {str(path)!r}"
    t = t * _axis_unit(where, t_unit, {"s": 1.0, "ms": 1e-3}, "time")
    dt = torch.diff(t)
    if t.numel() < 16 or not bool((dt > 0).all()):
        raise ValueError(f"{where}: the time column must increase, with at least 16 samples; got {t.numel()}")
    step = float(dt.median())
    if float((dt - step).abs().max()) > 1e-3 * step:
        raise ValueError(f"{where}: the time column is not evenly sampled (steps {float(dt.min()):.6g}-"
                         f"{float(dt.max()):.6g} s); a Welch spectrum needs a fixed sampling rate")
    md: dict = {}
    typical = float(v.abs().max(dim=1).values.median()) if v.numel() else 0.0
    units = _resolve_csv_units(where, v_unit, units, AMPLITUDE_UNITS, "uV", typical,
                               lambda x, u: _dc.amplitude_units_guess(x, u), "'value [uV]'", md)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{where}: the values must be finite numbers")
    volts = v.numpy() * AMPLITUDE_UNITS[units]  # table values are volts per unit
    info = mne.create_info(list(names), 1.0 / step, "eeg")
    return mne.io.RawArray(volts, info, verbose="error")


def _mark_non_finite_spans(raw, ch_names: list[str], metadata: dict):
    """Mark the spans where a picked channel is NaN or inf as ``BAD_non_finite`` (on a copy), with a warning.

    MNE's Welch estimate leaves NaN samples out but then cuts the recording
    into pieces that may be shorter than a segment (SciPy's "noverlap must be
    less than nperseg"); as annotations, the spans go through the same
    checks as the recording's own ``BAD_`` spans (:func:`_drop_short_spans`)
    and the count of averaged segments stays right.
    """
    data = raw.get_data(picks=ch_names, verbose="error")
    bad = ~np.isfinite(data)
    if not bad.any():
        return raw
    per_channel = bad.sum(axis=1)
    if (per_channel == data.shape[1]).any():
        empty = [n for n, k in zip(ch_names, per_channel) if k == data.shape[1]]
        raise ValueError(f"channel(s) {empty} hold no finite sample (NaN or inf throughout); leave them out with "
                         f"{_dc.fmt_picks([n for n in ch_names if n not in empty])}")
    any_bad = bad.any(axis=0)
    edges = np.diff(np.concatenate([[0], any_bad.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    sfreq = float(raw.info["sfreq"])
    raw = raw.copy()
    raw.annotations.append([raw.first_time + a / sfreq for a in starts], [(b - a) / sfreq for a, b in zip(starts, stops)],
                           ["BAD_non_finite"] * len(starts))
    which = ", ".join(f"{n} ({k} samples)" for n, k in zip(ch_names, per_channel) if k)
    first = starts[0] / sfreq
    _dc.warn(metadata, f"NaN or inf samples in {which}: {len(starts)} span(s), {any_bad.sum() / sfreq:.3g} s in all "
                       f"(the first at {first:.3g} s), left out of the Welch estimate as bad for every channel",
             stacklevel=5)
    return raw


def _drop_short_spans(raw, n_per_seg: int, seg: float, metadata: dict):
    """Refuse when no good span holds a Welch segment; mark shorter spans bad (on a copy) with a warning.

    MNE (through SciPy) would otherwise fail with "noverlap must be less than
    nperseg" or silently use shorter segments for those spans.
    """
    spans = _good_spans(raw)
    sfreq = float(raw.info["sfreq"])
    short = [(a, b) for a, b in spans if b - a < n_per_seg]
    if not short:
        return raw
    longest = max((b - a for a, b in spans), default=0) / sfreq
    if len(short) == len(spans):
        raise ValueError(
            f"the good data spans between BAD_ annotations are too short: the longest is {longest:.3g} s, shorter "
            f"than the Welch segment ({seg:g} s, seg_length). Use a shorter segment, e.g. "
            f"seg_length={_nice_down(longest * 0.67) if longest > 0 else '1'} (frequency resolution 1/segment Hz), "
            f"or remove some BAD_ annotations"
        )
    raw = raw.copy()
    onsets = [raw.first_time + a / sfreq for a, _ in short]
    durations = [(b - a) / sfreq for a, b in short]
    raw.annotations.append(onsets, durations, ["BAD_shorter_than_segment"] * len(short))
    lost = sum(durations)
    _dc.warn(metadata, f"left out {lost:.3g} s of good data in {len(short)} span(s) between BAD_ annotations "
                       f"shorter than the Welch segment (seg_length={seg:g} s)", stacklevel=5)
    return raw


def _check_flat(inst, ch_names: list[str], metadata: dict) -> None:
    """Refuse flat (constant, e.g. disconnected) channels, naming them and the picks without them."""
    data = inst.get_data(picks=ch_names, verbose="error")
    if data.ndim == 3:  # epochs
        data = np.moveaxis(data, 1, 0).reshape(len(ch_names), -1)
    with np.errstate(invalid="ignore"):
        sd = np.nanstd(data, axis=1)
    flat = [n for n, v in zip(ch_names, sd) if not v > 1e-12]  # below 1e-6 uV
    if not flat:
        return
    rest = [n for n in ch_names if n not in flat]
    values = ", ".join(f"{n!r} (constant {float(np.nanmean(data[ch_names.index(n)])) * 1e6:g} uV)" for n in flat)
    how = (f"leave it out with {_dc.fmt_picks(rest)}" if rest else "pick another channel")
    raise ValueError(
        f"flat channel(s): {values}, disconnected or not recorded; its spectrum is 0 and cannot be fitted. "
        f"{how[0].upper()}{how[1:]}"
    )


def _amplitude_plausibility(inst, ch_names: list[str], metadata: dict) -> None:
    """Warn when the channels' rms is not EEG-like (an EDF header saying mV for samples in uV...)."""
    data = inst.get_data(picks=ch_names, verbose="error")
    if data.ndim == 3:
        data = np.moveaxis(data, 1, 0).reshape(len(ch_names), -1)
    with np.errstate(invalid="ignore"):
        rms_uv = float(np.nanmedian(np.nanstd(data, axis=1))) * 1e6
    ok, _ = _dc.amplitude_units_guess(rms_uv, "uV")
    metadata["median_rms_uv"] = rms_uv
    if ok:
        return
    lo, hi = _dc.PLAUSIBLE_AMPLITUDE_UV
    k = round(math.log10(rms_uv / 10.0) / 3) if rms_uv > 0 else -9  # powers of 1000 away from 10 uV
    cause = {
        1: "the file's header may say mV where the samples are uV (values about 1000x too large)",
        -1: "the file's header may say uV where the samples are mV (values about 1000x too small)",
    }.get(k)
    if cause is None:
        cause = ("the file's header may say V where the samples are uV (values about 10^6x too large)" if k > 1
                 else "the file's header may say uV where the samples are V (values about 10^6x too small)"
                 if k < -1 else "check the recording's units")
    _dc.warn(metadata, f"implausible EEG amplitude: median channel rms {rms_uv:.3g} uV (typical EEG: {lo:g} to "
                       f"{hi:g} uV); {cause}. Units change only the fitted gain, but check them", stacklevel=5)


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


_TRIALS_CACHE: dict = {}


def _read_trials_csv(path: Path):
    """A long-format single-trial CSV: (channel names, times (T,), condition per trial (n,), values (n, C, T)).

    Columns ``Label`` (or ``Epoch``/``Trial``), ``Condition``, ``Time`` in any
    order, the rest channels; a trial is a (label, condition) pair. Values are
    returned in the table's own units. The last file read is cached (keyed by
    path, size and modification time).
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _TRIALS_CACHE:
        return _TRIALS_CACHE[key]
    where = f"path {str(path)!r}"
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{where}: empty file") from None
        rows = list(reader)
    col = {h.lower(): i for i, h in enumerate(header)}
    trial_col = next((col[k] for k in ("label", "epoch", "trial") if k in col), None)
    if trial_col is None or "condition" not in col or "time" not in col:
        raise ValueError(
            f"{where}: a trials table needs the columns Label (or Epoch/Trial), Condition and Time; got {header[:6]}"
        )
    cond_col, time_col = col["condition"], col["time"]
    ch_cols = [i for i in range(len(header)) if i not in (trial_col, cond_col, time_col)]
    if not ch_cols or not rows:
        raise ValueError(f"{where}: no channel columns or no rows besides the header")
    try:
        values = np.array([[float(r[i]) for i in ch_cols] for r in rows], dtype=np.float64)
        times_all = np.array([float(r[time_col]) for r in rows], dtype=np.float64)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{where}: non-numeric or missing value ({err})") from None
    if not np.isfinite(values).all():
        raise ValueError(f"{where}: values must be finite")
    order: dict = {}
    trial_of = np.array([order.setdefault((r[trial_col], r[cond_col]), len(order)) for r in rows])
    counts = np.bincount(trial_of)
    if counts.min() != counts.max():
        raise ValueError(f"{where}: trials have unequal numbers of samples ({counts.min()}-{counts.max()})")
    n_trials, n_times = len(order), int(counts[0])
    sort = np.lexsort((times_all, trial_of))
    data = values[sort].reshape(n_trials, n_times, len(ch_cols)).transpose(0, 2, 1)
    times = times_all[sort].reshape(n_trials, n_times)
    if not np.allclose(times, times[0], rtol=0, atol=1e-6):
        raise ValueError(f"{where}: trials are sampled at different times")
    t = times[0].copy()
    dt = np.diff(t)
    if n_times < 2 or not (dt > 0).all() or np.ptp(dt) > 1e-3 * dt.mean():
        raise ValueError(f"{where}: the Time column is not uniformly sampled within a trial")
    out = (tuple(header[i] for i in ch_cols), t, np.array([c for (_, c) in order]), np.ascontiguousarray(data))
    _TRIALS_CACHE.clear()
    _TRIALS_CACHE[key] = out
    return out


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
        _check_evoked_scale(times)
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
    def from_csv(cls, path, units: str | None = None, n_averaged=None) -> "EvokedData":
        """Read a CSV with the header ``time,value[,...]`` (s, then one column per channel).

        Header cells may name units in brackets: ``time [ms]`` (converted to
        s; ``time [s]`` is the default) and ``Cz [uV]``.

        Parameters
        ----------
        path : str or os.PathLike
            The CSV file.
        units : {"V", "mV", "uV"}, optional
            Units of the values when the header does not name them (if both
            do, they must agree). With neither, µV is assumed (with a warning)
            only when the largest absolute value is plausible for an ERP in µV
            (0.05 to 2000); otherwise ValueError names the likely units.
        n_averaged : int, optional
            Number of averaged trials.

        Returns
        -------
        EvokedData

        Raises
        ------
        ValueError
            As for :meth:`SpectrumData.from_csv`; also for a time axis that
            spans more than :data:`MAX_EVOKED_SPAN_S` (with a hint when it
            looks like milliseconds).
        """
        units = None if units is None else _normalise_units("units", units, AMPLITUDE_UNITS)
        n_averaged = _check_count("n_averaged", n_averaged)
        names, t, v, t_unit, v_unit = _read_csv(path, _TIME_HEADERS, "time,value[,...]",
                                                (_FREQ_HEADERS, "a spectrum CSV; use SpectrumData.from_csv"))
        where = f"path {str(path)!r}"
        scale = _axis_unit(where, t_unit, {"s": 1.0, "ms": 1e-3}, "time")
        md: dict = {"source": str(path), "format": "csv"}
        if scale != 1.0:
            t = t * scale
            md["time_units_in_file"] = t_unit
        try:
            _check_evoked_scale(_check_axis("times", t, "s", nonnegative=False))
            _check_rows("values", v, names, t, "s", positive=False)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        typical = float(v.abs().max(dim=1).values.median()) if v.numel() else 0.0
        units = _resolve_csv_units(where, v_unit, units, AMPLITUDE_UNITS, "uV", typical,
                                   lambda x, u: _dc.amplitude_units_guess(x, u), "'value [uV]'", md)
        try:
            out = cls(t, v, names, units, n_averaged, md)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        _evoked_plausibility(out.metadata, out.values, out.units, where)
        return out

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
        mne = optional_import("mne", purpose=_MNE_FOR)
        units = _normalise_units("units", units, AMPLITUDE_UNITS)
        if isinstance(evoked, mne.BaseEpochs):
            raise ValueError("evoked must be an mne.Evoked; got Epochs (average them first: epochs.average())")
        if not isinstance(evoked, mne.Evoked):
            raise ValueError(f"evoked must be an mne.Evoked; got {type(evoked).__name__}")
        md = {"mne_type": type(evoked).__name__, "sfreq_hz": float(evoked.info["sfreq"])}
        idx = _mne_picks("picks", picks, evoked.info, md)
        _check_volts("picks", evoked.info, idx)
        times = torch.from_numpy(np.asarray(evoked.times, dtype=np.float64).copy())
        mask = _window(times, tmin, tmax, "tmin", "tmax", "s")
        values = torch.from_numpy(np.asarray(evoked.data[idx], dtype=np.float64).copy())[:, mask]
        values = _convert(values, "V", units, AMPLITUDE_UNITS)
        if evoked.comment:
            md["comment"] = str(evoked.comment)
        nave = evoked.nave if isinstance(evoked.nave, (int, np.integer)) and evoked.nave >= 1 else None
        names = tuple(evoked.info["ch_names"][i] for i in idx)
        try:
            out = cls(times[mask], values, names, units, nave, md)
        except ValueError as err:
            raise ValueError(f"evoked: {err}") from None
        _evoked_plausibility(out.metadata, out.values, out.units, "evoked")
        return out

    @classmethod
    def from_epochs(cls, epochs, picks=None, tmin=None, tmax=None, units: str = "uV", condition=None) -> "EvokedData":
        """Average ``mne.Epochs`` (MNE's ``Epochs.average``) into an ERP.

        Parameters
        ----------
        epochs : mne.Epochs or mne.EpochsArray
            Already baseline-corrected and cleaned as wanted (bad epochs
            dropped: :meth:`from_raw_events` does both).
        picks : str or list of str, optional
            Channel names; default all good EEG channels.
        tmin, tmax : float, optional
            Inclusive time window in s of the result.
        units : {"V", "mV", "uV"}
        condition : str, optional
            Select epochs by event name first (MNE's tag matching: ``"audio"``
            selects ``"audio/left"`` and ``"audio/right"``).

        Returns
        -------
        EvokedData
            With ``n_averaged`` the number of epochs averaged and
            ``metadata["epochs"]`` (``n_averaged``, ``event_id``, ``condition``).

        Raises
        ------
        ValueError
            Not Epochs, an unknown ``condition``, or no epoch left.
        """
        mne = optional_import("mne", purpose=_MNE_FOR)
        if not isinstance(epochs, mne.BaseEpochs):
            raise ValueError(f"epochs must be mne.Epochs; got {type(epochs).__name__}")
        if condition is not None:
            try:
                epochs = epochs[condition]
            except KeyError:
                raise ValueError(
                    f"condition {condition!r} matches no event; the epochs have {sorted(epochs.event_id)}"
                ) from None
        n = len(epochs)
        if n == 0:
            raise ValueError("epochs: no epoch left to average (all rejected, or no event of that kind)")
        evoked = epochs.average(picks="all")
        out = cls.from_mne(evoked, picks=picks, tmin=tmin, tmax=tmax, units=units)
        md = dict(out.metadata)
        ep = dict(md.get("epochs") or {})
        ep.update(n_averaged=n, event_id={str(k): int(v) for k, v in epochs.event_id.items()}, condition=condition)
        md["epochs"] = ep
        return cls(out.times, out.values, out.channel_names, out.units, n, md)

    @classmethod
    def from_raw_events(
        cls,
        raw,
        event_id,
        *,
        events="annotations",
        tmin: float = -0.1,
        tmax: float = 0.5,
        baseline=(None, 0.0),
        reject=None,
        picks=None,
        units: str = "uV",
    ) -> "EvokedData":
        """Epoch a continuous recording around events and average (``mne.Epochs``), rejecting bad epochs.

        Parameters
        ----------
        raw : mne.io.Raw
            Continuous recording (preloaded or not).
        event_id : str or int
            Which events: an annotation description (``events="annotations"``)
            or an integer trigger code (either source; a digit string counts
            as a code on a stim channel).
        events : "annotations" or str
            Where the events come from: the recording's annotations
            (:func:`mne.events_from_annotations`), or the name of a stim
            channel (:func:`mne.find_events`).
        tmin, tmax : float
            Epoch window in s around each event.
        baseline : (float or None, float or None) or None
            Baseline interval in s passed to ``mne.Epochs`` (``None``: no
            baseline correction).
        reject : float or dict, optional
            Peak-to-peak rejection: a dict in MNE's form (``{"eeg": 150e-6}``,
            volts) or a number, the EEG threshold in ``units``.
        picks : str or list of str, optional
            Channels to average; default all good EEG channels.
        units : {"V", "mV", "uV"}

        Returns
        -------
        EvokedData
            ``metadata["epochs"]``: ``n_events``, ``n_averaged``, ``n_rejected``,
            ``rejected`` (reason -> count), ``other_events`` (events of other
            types in the recording, not epoched), ``event_id``, ``events_from``,
            ``tmin``, ``tmax``, ``baseline``, ``reject``.

        Raises
        ------
        ValueError
            Unknown event (naming the available ones), no stim channel of that
            name, a bad window or baseline, or every epoch rejected.
        """
        mne = optional_import("mne", purpose=_MNE_FOR)
        if not isinstance(raw, mne.io.BaseRaw):
            raise ValueError(f"raw must be a continuous mne.io.Raw recording; got {type(raw).__name__}")
        units = _normalise_units("units", units, AMPLITUDE_UNITS)
        tmin = _checks.check_scalar("tmin", tmin)
        tmax = _checks.check_scalar("tmax", tmax)
        if not tmax > tmin:
            raise ValueError(f"tmax must be greater than tmin; got tmin={tmin:g}, tmax={tmax:g}")
        if not isinstance(events, str) or not events:
            raise ValueError(f"events must be 'annotations' or a stim channel name; got {events!r}")
        if events == "annotations":
            if not len(raw.annotations):
                raise ValueError("events='annotations': the recording has no annotations; name a stim channel instead")
            ev, mapping = mne.events_from_annotations(raw, verbose="error")
            if isinstance(event_id, str) and event_id in mapping:
                chosen = {event_id: int(mapping[event_id])}
            elif not isinstance(event_id, str) and int(event_id) in mapping.values():
                name = next(k for k, v in mapping.items() if v == int(event_id))
                chosen = {name: int(event_id)}
            else:
                raise ValueError(
                    f"event_id {event_id!r} is not among the recording's annotations {sorted(mapping)}"
                )
        else:
            if events not in raw.ch_names:
                stims = [raw.ch_names[i] for i in mne.pick_types(raw.info, stim=True)]
                raise ValueError(f"events {events!r} is not a channel of the recording; stim channels: {stims}")
            ev = mne.find_events(raw, stim_channel=events, shortest_event=1, verbose="error")
            try:
                code = int(event_id)
            except (TypeError, ValueError):
                raise ValueError(f"event_id must be an integer trigger code for events={events!r}; got {event_id!r}") from None
            codes = sorted({int(c) for c in ev[:, 2]})
            if code not in codes:
                raise ValueError(f"event_id {code} does not occur on {events!r}; codes found: {codes}")
            chosen = {str(code): code}
        if baseline is not None:
            try:
                b0, b1 = baseline
            except (TypeError, ValueError):
                raise ValueError(f"baseline must be (start, end) in s or None; got {baseline!r}") from None
            if b0 is not None and b0 < tmin - 1e-9 or b1 is not None and b1 > tmax + 1e-9:
                raise ValueError(f"baseline {baseline!r} must lie within the epoch tmin={tmin:g} to tmax={tmax:g} s")
        if reject is not None and not isinstance(reject, Mapping):
            thr = _checks.check_scalar("reject", reject, positive=True)
            reject = {"eeg": float(_convert(torch.tensor(thr, dtype=torch.float64), units, "V", AMPLITUDE_UNITS))}
        md: dict = {}
        idx = _mne_picks("picks", picks, raw.info, md)
        epochs = mne.Epochs(
            raw, ev, event_id=chosen, tmin=tmin, tmax=tmax, baseline=baseline, reject=reject, picks=idx,
            preload=True, reject_by_annotation=True, on_missing="ignore", verbose="error",
        )
        n_events = int(sum(int(c) in chosen.values() for c in ev[:, 2]))
        rejected: dict = {}
        n_other = 0
        for log in epochs.drop_log:
            if "IGNORED" in log:  # MNE's mark for events of other types (not in event_id): not rejections
                n_other += 1
                continue
            for reason in log:
                rejected[reason] = rejected.get(reason, 0) + 1
        n_kept = len(epochs)
        info = {
            "n_events": n_events,
            "n_averaged": n_kept,
            "n_rejected": n_events - n_kept,
            "rejected": rejected,
            "other_events": n_other,
            "event_id": chosen,
            "events_from": events,
            "tmin": tmin,
            "tmax": tmax,
            "baseline": None if baseline is None else list(baseline),
            "reject": None if reject is None else {k: float(v) for k, v in reject.items()},
        }
        if n_kept == 0:
            raise ValueError(
                f"every one of the {n_events} epochs was rejected ({rejected}); raise or drop the reject threshold"
            )
        names = [raw.ch_names[i] for i in idx]
        out = cls.from_epochs(epochs, picks=names, units=units)
        md2 = dict(out.metadata)
        md2["epochs"] = {**info, **{k: v for k, v in md2.get("epochs", {}).items() if k not in info}}
        for key in ("channels_used", "channels_dropped"):
            if key in md:
                md2[key] = md[key]
        md2["warnings"] = list(md.get("warnings", [])) + list(md2.get("warnings", []))
        if n_kept < max(1, n_events) * 0.5:
            _dc.warn(md2, f"{n_events - n_kept} of {n_events} epochs rejected ({rejected}): the average rests on {n_kept}")
        return cls(out.times, out.values, out.channel_names, out.units, n_kept, md2)

    @classmethod
    def from_trials_table(
        cls,
        path,
        condition=None,
        *,
        picks=None,
        tmin=None,
        tmax=None,
        table_units: str = "V",
        units: str = "uV",
    ) -> "EvokedData":
        """Average a long-format single-trial table (one row per trial and time sample) per condition.

        The table is a CSV with columns ``Label`` (or ``Epoch``/``Trial``: the
        trial id), ``Condition``, ``Time`` (s) and one column per channel in
        ``table_units`` (e.g. the MNE-sample auditory/visual table shipped in
        neurokit2's source). The trials become ``mne.EpochsArray`` (one event
        name per condition) and are averaged by :meth:`from_epochs`.

        Parameters
        ----------
        path : str or Path
        condition : str, optional
            Condition to average (MNE tag matching: ``"audio"`` takes
            ``"audio/left"`` and ``"audio/right"``); required when the table
            holds more than one.
        picks : str or list of str, optional
            Channels; default all.
        tmin, tmax : float, optional
            Inclusive time window in s.
        table_units, units : {"V", "mV", "uV"}
            Units of the table's values and of the result.

        Raises
        ------
        ValueError
            Missing columns, trials of unequal length or times, a condition
            not in the table, non-numeric values.
        """
        mne = optional_import("mne", purpose=_MNE_FOR)
        table_units = _normalise_units("table_units", table_units, AMPLITUDE_UNITS)
        units = _normalise_units("units", units, AMPLITUDE_UNITS)
        path = Path(path)
        ch_names, t, conditions, data = _read_trials_csv(path)
        n_trials = len(conditions)
        names = sorted(set(conditions.tolist()))
        event_id = {c: i + 1 for i, c in enumerate(names)}
        if condition is None and len(names) > 1:
            raise ValueError(f"condition must name one of the table's conditions {names} (or a tag such as "
                             f"{names[0].split('/')[0]!r})")
        info = mne.create_info(list(ch_names), 1.0 / float(np.diff(t).mean()), ch_types="eeg")
        ev = np.column_stack([np.arange(n_trials) * (t.size + 1), np.zeros(n_trials, int),
                              [event_id[c] for c in conditions]])
        epochs = mne.EpochsArray(data * AMPLITUDE_UNITS[table_units], info, events=ev, tmin=float(t[0]), event_id=event_id,
                                 baseline=None, verbose="error")
        out = cls.from_epochs(epochs, picks=picks, tmin=tmin, tmax=tmax, units=units, condition=condition)
        md = dict(out.metadata)
        md["source"] = str(path)
        md["epochs"] = {**md.get("epochs", {}), "n_trials_in_table": n_trials, "conditions_in_table": names}
        return cls(out.times, out.values, out.channel_names, out.units, out.n_averaged, md)

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
        md = _dc.copy_metadata(self.metadata)
        md["averaged_channels"] = list(self.channel_names)
        return EvokedData(self.times, self.values.mean(0, keepdim=True), (name,), self.units, self.n_averaged, md)

    def to_dict(self) -> dict:
        """The data as plain JSON-ready values (:func:`data_from_dict` reads them back)."""
        return {"type": "EvokedData", "times": self.times.tolist(), "values": self.values.tolist(),
                "channel_names": list(self.channel_names), "units": self.units, "n_averaged": self.n_averaged,
                "metadata": _plain_metadata(self.metadata)}

    def to_units(self, units: str) -> "EvokedData":
        """A copy with ``values`` in ``units`` (1 V = 1e3 mV = 1e6 µV)."""
        units = _normalise_units("units", units, AMPLITUDE_UNITS)
        values = _convert(self.values, self.units, units, AMPLITUDE_UNITS)
        return EvokedData(self.times, values, self.channel_names, units, self.n_averaged, dict(self.metadata))

    def to_csv(self, path, overwrite: bool = False) -> Path:
        """Write ``time,<name> [<units>],...`` (s, then values in ``self.units``); returns the path."""
        return _write_csv(path, "time", self.times, [f"{n} [{self.units}]" for n in self.channel_names],
                          self.values, overwrite)

    def baseline_correct(self, tmin=None, tmax=0.0) -> "EvokedData":
        """Subtract each channel's mean over ``[tmin, tmax]`` s (default: start to 0 s)."""
        mask = _window(self.times, tmin, tmax, "tmin", "tmax", "s")
        values = self.values - self.values[:, mask].mean(dim=1, keepdim=True)
        md = dict(self.metadata)
        md["baseline_s"] = [float(self.times[mask][0]), float(self.times[mask][-1])]
        return EvokedData(self.times, values, self.channel_names, self.units, self.n_averaged, md)


def _plain_metadata(metadata: Mapping) -> dict:
    return {k: v for k, v in metadata.items() if isinstance(v, (int, float, str, bool)) and k != "warnings"}


def data_from_dict(d: Mapping):
    """:class:`SpectrumData` or :class:`EvokedData` from the output of their ``to_dict()``.

    Raises
    ------
    ValueError
        If ``d["type"]`` names neither.
    """
    kind = d.get("type") if isinstance(d, Mapping) else None
    if kind == "SpectrumData":
        return SpectrumData.from_arrays(d["freqs"], d["values"], d["channel_names"], d["units"], d["n_segments"],
                                        d["metadata"])
    if kind == "EvokedData":
        return EvokedData.from_arrays(d["times"], d["values"], d["channel_names"], d["units"], d["n_averaged"],
                                      d["metadata"])
    raise ValueError(f"d: expected a dict with type 'SpectrumData' or 'EvokedData', got type {kind!r}")
