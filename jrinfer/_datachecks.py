"""Checks on the data people bring: channel names and types, unit plausibility, outlying bins, scale.

Private helpers of :mod:`jrinfer.data`. Messages name Python arguments
(``picks=[...]``, ``exclude=[(lo, hi)]``, ``units='...'``, ``seg_length=``) in
one fixed spelling so that the command line can rewrite them into its flags.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence

import numpy as np

# ------------------------------------------------------------------ warnings
WARNINGS_KEY = "warnings"


def warn(metadata: dict, message: str, stacklevel: int = 3) -> None:
    """Issue ``message`` as a UserWarning and append it to ``metadata["warnings"]``."""
    warnings.warn(message, UserWarning, stacklevel=stacklevel)
    lst = metadata.setdefault(WARNINGS_KEY, [])
    if message not in lst:
        lst.append(message)


def copy_metadata(md: dict) -> dict:
    """Shallow copy whose lists (warnings, channels...) are copied too, so copies never share them."""
    return {k: (list(v) if isinstance(v, list) else v) for k, v in md.items()}


# ---------------------------------------------------------- channel names
#: EDF/EDF+ signal-type prefixes (EDF+ spec section 2.1.3.1) that are not EEG.
NON_EEG_PREFIXES = {
    "ECG": "ecg", "EKG": "ecg", "EOG": "eog", "EMG": "emg", "RESP": "resp", "SPO2": "bio", "SAO2": "bio",
    "TEMP": "temp", "PULSE": "bio", "HR": "bio", "STI": "stim", "STIM": "stim", "TRIG": "stim", "STATUS": "stim",
    "EVENT": "stim", "MISC": "misc", "PHOTIC": "stim", "LIGHT": "stim",
}
#: Electrode labels that are reference sites (ears, mastoids) or a reference, not a scalp EEG source.
REFERENCE_SITES = {"A1", "A2", "M1", "M2", "REF", "LE", "RE", "A1A2", "M1M2", "AVG", "AV", "CMS", "DRL", "GND"}
_REF_SUFFIX = re.compile(r"[-_ ](A1|A2|M1|M2|REF|LE|RE|A1A2|M1M2|AVG|AV|AR|CAR)$", re.IGNORECASE)


def standard_name(name: str) -> str:
    """A channel label reduced to its active electrode in 10-20/10-10 spelling.

    Strips an ``EEG`` type prefix (``"EEG O1"``), a reference suffix
    (``"O1-A1"``, ``"O1-REF"``, ``"O1-AVG"``), EEGMMIDB's trailing dots
    (``"O1.."``), and spells the result as MNE's ``eegbci.standardize`` does
    (upper case except ``z`` for midline and ``Fp``): ``"Fcz."`` -> ``"FCz"``.
    """
    s = name.strip()
    s = re.sub(r"^EEG[\s:_-]+", "", s, flags=re.IGNORECASE)
    s = s.rstrip(".").strip()
    s = _REF_SUFFIX.sub("", s).strip()
    s = s.rstrip(".").strip()
    up = s.upper()
    if re.fullmatch(r"[A-Z]+[0-9]*Z?|[A-Z]+Z|[A-Z]+[0-9]+", up):
        up = up[:-1] + "z" if up.endswith("Z") and len(up) > 1 else up
        if up.startswith("FP"):
            up = "Fp" + up[2:]
        return up
    return s


def electrodes(name: str) -> list[str]:
    """Electrode labels in a (possibly bipolar) channel name: ``"EEG A2-A1"`` -> ``["A2", "A1"]``."""
    s = re.sub(r"^EEG[\s:_-]+", "", name.strip(), flags=re.IGNORECASE).rstrip(".")
    return [p.strip().rstrip(".").upper() for p in s.split("-") if p.strip()]


def non_eeg_reason(name: str, kind: str) -> str | None:
    """Why a channel typed ``kind`` should not be in default EEG picks, or None if it is EEG."""
    if kind != "eeg":
        return f"type {kind}"
    first = re.split(r"[\s:_-]+", name.strip(), maxsplit=1)[0].upper()
    if first in NON_EEG_PREFIXES:
        return f"its label says {first} (an EDF type prefix), not EEG"
    # numbered or sided labels of the same kinds, as EEGLAB and BrainVision files carry them typed as EEG:
    # "EOG1", "VEOG", "HEOGL", "ECG2", "EMG1"
    m = re.fullmatch(r"[HV]?(EOG|ECG|EKG|EMG)[0-9LRHV]*", first)
    if m:
        return f"its label says {m.group(1)} ({name.strip()}), not EEG"
    parts = electrodes(name)
    if parts and all(p in REFERENCE_SITES for p in parts):
        return "reference electrodes only (" + "-".join(parts) + "), no scalp EEG source"
    return None


def short_channel_name(name, n_shown: int = 4) -> str:
    """A channel average's long ``mean(A,B,...)`` name as ``mean of N channels: A, B, C, ..., Z`` (others as they are).

    ``n_shown``: at most this many entries (the first ``n_shown - 1``, an
    ellipsis and the last) for an average of more channels.
    """
    name = str(name)
    m = re.fullmatch(r"mean\((.*)\)", name)
    if not m:
        return name
    parts = [p.strip() for p in m.group(1).split(",") if p.strip()]
    n = len(parts)
    if n > n_shown:
        parts = parts[: n_shown - 1] + ["...", parts[-1]]
    return f"mean of {n} channels: " + ", ".join(parts)


def match_channels(argname: str, names: Sequence, available: Sequence[str]) -> list:
    """:func:`match_channel` of every name (non-strings, e.g. indices, pass through as they are).

    Raises ValueError naming every name that matches nothing (not only the
    first) with the available channels, or the first ambiguous one.
    """
    matched, unknown = [], []
    for name in names:
        if not isinstance(name, str):
            matched.append(name)
            continue
        try:
            matched.append(match_channel(argname, name, available))
        except ValueError as err:
            if "ambiguous" in str(err):
                raise
            unknown.append(name)
    if unknown:
        raise ValueError(f"{argname}: unknown channel name(s) {unknown}; available channels: {list(available)}")
    return matched


def match_channel(argname: str, name: str, available: Sequence[str]) -> str:
    """The channel of ``available`` that ``name`` means.

    An exact match wins; otherwise names are compared after
    :func:`standard_name` (case, ``EEG`` prefix, reference suffix, trailing
    dots), so ``"O1"`` matches ``"EEG O1-A1"`` and ``"O1.."``. Raises
    ValueError naming the choices when none or several match.
    """
    if name in available:
        return name
    want = standard_name(name)
    hits = [ch for ch in available if standard_name(ch) == want]
    if not hits:
        hits = [ch for ch in available if standard_name(ch).lower() == want.lower()]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ValueError(f"{argname}: channel {name!r} is ambiguous; it matches {hits}. Give the full name")
    raise ValueError(f"{argname}: unknown channel name(s) {[name]}; available channels: {list(available)}")


# ------------------------------------------------------------- plausibility
#: Typical EEG power at 1-45 Hz in uV^2/Hz: medians outside this range are implausible.
PLAUSIBLE_POWER_UV2 = (1e-4, 1e4)
#: Typical EEG amplitude (rms of a raw channel, or peak of an evoked response) in uV.
PLAUSIBLE_AMPLITUDE_UV = (0.05, 2000.0)


def _likely(value_uv: float, to_uv: dict, centre: float, rng: tuple[float, float]) -> str | None:
    """The unit that would bring ``value_uv`` (read as uV-based) into ``rng``; None if none does."""
    best, best_d = None, math.inf
    for unit, factor in to_uv.items():
        v = value_uv * factor
        if rng[0] <= v <= rng[1]:
            d = abs(math.log10(v / centre))
            if d < best_d:
                best, best_d = unit, d
    return best


_POWER_TO_UV2 = {"V^2/Hz": 1e12, "mV^2/Hz": 1e6, "uV^2/Hz": 1.0}
_AMPLITUDE_TO_UV = {"V": 1e6, "mV": 1e3, "uV": 1.0}


def _units_guess(value_uv: float, declared: str, to_uv: dict, centre: float, rng: tuple[float, float]):
    """(plausible?, likely units) of ``value_uv``, read in ``declared`` and converted with ``to_uv``."""
    if rng[0] <= value_uv <= rng[1]:
        return True, None
    return False, _likely(value_uv / to_uv[declared], to_uv, centre, rng)


def power_units_guess(median_uv2: float, declared: str) -> tuple[bool, str | None]:
    """(plausible?, likely units) of a power spectrum whose median is ``median_uv2`` in uV^2/Hz.

    ``declared`` is the unit the values were read in; the likely unit is the
    one the raw numbers would be in for their median to be typical EEG.
    """
    return _units_guess(median_uv2, declared, _POWER_TO_UV2, 1.0, PLAUSIBLE_POWER_UV2)


def amplitude_units_guess(value_uv: float, declared: str) -> tuple[bool, str | None]:
    """(plausible?, likely units) of an amplitude (rms or peak) of ``value_uv`` in uV."""
    return _units_guess(value_uv, declared, _AMPLITUDE_TO_UV, 10.0, PLAUSIBLE_AMPLITUDE_UV)


# ----------------------------------------------------------- outlying bins
#: A bin counts as outlying when it is this many times above or below its neighbours...
OUTLIER_RATIO = 10.0
#: ...and this many robust standard deviations of the log-power residuals away.
OUTLIER_Z = 6.0


def near_line_frequency(f: float, df: float) -> bool:
    """Whether ``f`` (Hz) lies within one bin (at least 1 Hz) of 50 or 60 Hz or a harmonic."""
    return any(abs(f - m * base) <= max(1.0, df) for base in (50.0, 60.0) for m in range(1, 11))


def outlying_bins(freqs: np.ndarray, power: np.ndarray) -> list[tuple[float, float]]:
    """Isolated bins far above (line noise) or below (notch) their neighbours.

    Compares each bin's log-power with the median over a neighbourhood of
    about +-2 Hz (at least 3 bins each side) that leaves out the bin and its
    two adjacent bins. A bin is flagged when it differs by more than
    ``OUTLIER_RATIO`` and more than ``OUTLIER_Z`` robust standard deviations
    (1.4826 x MAD) of all residuals. Peaks must also be narrow: the bins two
    steps away must be ``OUTLIER_RATIO`` times lower (a physiological peak,
    such as alpha, is broader than a spectral window's main lobe; a line
    spike is not) and lie near a line frequency (50 or 60 Hz or a harmonic):
    a sharp alpha peak, or a model spectrum's peak near a Hopf point, can be
    narrower than a bin. Dips are flagged anywhere.

    Parameters
    ----------
    freqs : ndarray, shape (F,)
        Frequencies in Hz.
    power : ndarray, shape (n_channels, F)
        Positive power.

    Returns
    -------
    list of (float, float)
        ``(frequency in Hz, ratio to the neighbourhood)`` of flagged bins,
        over all channels, sorted by frequency (the largest deviation kept
        when several channels flag the same bin).
    """
    F = freqs.size
    if F < 8:
        return []
    df = float(np.median(np.diff(freqs)))
    k = max(3, int(round(2.0 / df)) if df > 0 else 3)
    k = min(k, F)
    found: dict[float, float] = {}
    thr = math.log(OUTLIER_RATIO)
    for row in np.atleast_2d(power):
        with np.errstate(divide="ignore"):
            lp = np.log(np.where(row > 0, row, np.nan))
        if not np.isfinite(lp).all():
            continue
        base = np.empty(F)
        for i in range(F):
            nb = np.concatenate([lp[max(0, i - k - 1):max(0, i - 1)], lp[i + 2:i + k + 2]])
            base[i] = np.median(nb) if nb.size else lp[i]
        r = lp - base
        mad = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        cut = max(thr, OUTLIER_Z * mad)
        for i in np.flatnonzero(np.abs(r) > cut):
            if r[i] > 0:
                side = [lp[j] for j in (i - 2, i + 2) if 0 <= j < F]
                if any(s > lp[i] - thr for s in side):
                    continue  # a broad peak, not an isolated spike
                if not near_line_frequency(float(freqs[i]), df):
                    continue  # a sharp physiological (or model, near a Hopf point) peak, not line noise
            f = float(freqs[i])
            ratio = float(math.exp(r[i]))
            if f not in found or abs(math.log(ratio)) > abs(math.log(found[f])):
                found[f] = ratio
    return sorted(found.items())


def suggest_bands(bins: Sequence[float], df: float) -> list[tuple[float, float]]:
    """Exclusion bands (Hz) of +-max(1 Hz, 2 bins) around flagged bins, merged where they touch."""
    half = max(1.0, 2 * df)
    bands: list[list[float]] = []
    for f in sorted(bins):
        lo, hi = f - half, f + half
        if bands and lo <= bands[-1][1]:
            bands[-1][1] = hi
        else:
            bands.append([lo, hi])
    return [(max(0.0, lo), hi) for lo, hi in bands]


def fmt_bands(bands: Sequence[tuple[float, float]]) -> str:
    """``exclude=[(49, 51), (99, 101)]`` (the spelling the CLI rewrites into ``--exclude 49-51,99-101``)."""
    return "exclude=[" + ", ".join(f"({lo:g}, {hi:g})" for lo, hi in bands) + "]"


def fmt_picks(names: Sequence[str]) -> str:
    """``picks=['O1', 'O2']`` (the CLI rewrites it into ``--picks O1,O2``)."""
    return "picks=[" + ", ".join(repr(n) for n in names) + "]"


def outlier_message(bins: list[tuple[float, float]], df: float) -> str:
    """The warning for :func:`outlying_bins`' result."""
    parts = []
    for f, ratio in bins:
        what = f"{ratio:.3g}x" if ratio >= 1 else f"1/{1 / ratio:.3g}"
        line = near_line_frequency(f, df)
        parts.append(f"{f:g} Hz ({what} its neighbours{', line frequency' if line else ''})")
    return (
        f"outlying spectrum bins: {', '.join(parts)}; isolated spikes (line noise) or dips (a notch filter) "
        f"inflate the noise variance and bias the fit. Leave them out with {fmt_bands(suggest_bands([b for b, _ in bins], df))}"
    )


OUTLIER_PREFIX = "outlying spectrum bins:"


def ms_hint(span: float, step: float) -> str:
    """Hint for a time axis that looks like milliseconds."""
    if 50.0 <= span <= 20000.0:
        return "; were they given in ms? Divide the time column by 1000 (or name it 'time [ms]' in the CSV header)"
    return ""
