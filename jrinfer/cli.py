"""Command line interface: ``jrinfer fixed-points | simulate | spectrum | fit | train-npe | report | compare | identifiability | demo``,
and ``jrinfer fit-many`` (a cohort, :mod:`jrinfer.distributed`).

Every command exits with status 2 and a one-line message on stderr when its
input is bad (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

__all__ = ["main"]


#: Exit status of ``jrinfer fit --strict`` / ``fit-many --strict`` for a completed fit whose status is not
#: "converged" (a misfit or an untrustworthy approximation; without --strict such a fit exits 0).
EXIT_STRICT = 3

#: Particles of ``jrinfer fit --backend npe --smc`` when --draws is not given (each costs 60-130 simulations).
NPE_SMC_PARTICLES = 500


class UsageError(Exception):
    """Bad input from the command line (exit status 2)."""


def _parse_assignments(items: list[str] | None, option: str, known=None) -> dict[str, float]:
    """``["A=3.25", ...]`` -> ``{"A": 3.25}`` for a repeatable ``NAME=VALUE`` option (``--set``, ``--fix``).

    With ``known``, names outside it are refused (with a close match as hint).
    """
    out: dict[str, float] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"{option} expects NAME=VALUE, got {item!r}")
        name, value = (s.strip() for s in item.split("=", 1))
        if known is not None and name not in known:
            import difflib

            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{option}: unknown parameter {name!r}{hint}; known: {', '.join(known)}")
        try:
            x = float(value)
        except ValueError:
            raise UsageError(f"{option} {name}: expected a number, got {value!r}") from None
        if not math.isfinite(x):
            raise UsageError(f"{option} {name}: expected a finite number, got {value!r}")
        out[name] = x
    return out


def _parse_sets(items: list[str] | None) -> dict[str, float]:
    from jrinfer.model import PARAMETERS

    return _parse_assignments(items, "--set", known=PARAMETERS)


def _model(args):
    from jrinfer.model import JansenRit

    return JansenRit(noise=args.noise, noise_on=args.noise_on, **_parse_sets(args.set))


def _prepare_out_file(path: str, force: bool) -> Path:
    """``--out`` as a Path: refused (UsageError) if it exists without ``--force`` or its folder is missing."""
    from jrinfer._io import check_writable

    try:
        out = check_writable(path, overwrite=force, what="--out")
    except FileExistsError:
        raise UsageError(f"--out {path}: file exists; pass --force to overwrite it") from None
    if out.parent and not out.parent.exists():
        raise UsageError(f"--out {path}: directory {str(out.parent)!r} does not exist")
    return out


def _write_csv(path: Path, header: list[str], columns) -> None:
    """Numeric columns to CSV, atomically (:func:`jrinfer._io.write_csv`)."""
    from jrinfer._io import write_csv

    write_csv(path, header, columns)


def _cmd_fixed_points(args) -> int:
    model = _model(args)
    records = model.fixed_points().to_records()
    if args.json:
        print(json.dumps(records))
    else:
        for k, rec in enumerate(records):
            print(
                f"equilibrium {k}: v = {rec['v']:.6g} mV, {'stable' if rec['stable'] else 'unstable'}, "
                f"dominant frequency {rec['dominant_frequency_hz']:.4g} Hz"
            )
    return 0


def _cmd_simulate(args) -> int:
    out = _prepare_out_file(args.out, args.force) if args.out else None
    model = _model(args)
    record_every = 1
    if args.sampling_rate is not None:
        ratio = 1.0 / (args.sampling_rate * args.dt)
        record_every = int(round(ratio))
        if record_every < 1 or abs(ratio - record_every) > 1e-6 * ratio:
            raise UsageError(
                f"--sampling-rate {args.sampling_rate:g} Hz must divide 1/dt = {1 / args.dt:g} Hz by a whole number"
            )
    sim = model.simulate(
        args.duration,
        args.dt,
        method=args.method,
        seed=args.seed,
        record_every=record_every,
        transient=args.transient,
    )
    if out is not None:
        _write_csv(out, ["time", "v [mV]"], [sim.time, sim.v])  # units in the header: jrinfer fit reads them
    summary = {
        "n_samples": int(sim.v.shape[-1]),
        "sampling_rate_hz": sim.sampling_rate,
        "method": sim.method,
        "backend": sim.backend,
        "seed": sim.seed,
        "diverged": bool(sim.diverged.any()),
        "v_mean_mv": float(sim.v.mean()),
        "v_std_mv": float(sim.v.std()),
        "out": str(out) if out else None,
    }
    if args.json:
        print(json.dumps(summary))
    elif out is None:
        for t, v in zip(sim.time.tolist(), sim.v.tolist()):
            print(f"{t:.6f},{v:.10g}")
    else:
        print(f"wrote {summary['n_samples']} samples to {out} ({sim.method}, seed {sim.seed})")
    return 0 if not summary["diverged"] else 1


def _cmd_spectrum(args) -> int:
    import torch

    out = _prepare_out_file(args.out, args.force) if args.out else None
    if not (args.fmin >= 0 and args.fmax > args.fmin and args.df > 0):
        raise UsageError(f"need 0 <= fmin < fmax and df > 0, got fmin={args.fmin}, fmax={args.fmax}, df={args.df}")
    n = int(math.floor((args.fmax - args.fmin) / args.df + 1e-9)) + 1
    freqs = args.fmin + args.df * torch.arange(n, dtype=torch.float64)
    model = _model(args)
    info: dict = {"method": args.method}
    if args.method == "transfer":
        lin = model.linear_psd(freqs, dt=args.dt if model.noise != "white" else None)
        if not bool(lin.stable):
            raise UsageError(
                "the upper equilibrium is unstable (oscillatory regime, e.g. a limit cycle): the linearised spectrum "
                "is not valid here; use --method simulation"
            )
        psd = lin.psd
        info["dominant_frequency_hz"] = float(lin.equilibrium.dominant_frequency_hz)
    else:
        from jrinfer.observation import SpectrumObservation

        # One implementation of simulated spectra: the observation model's
        # (Welch segments of 1/df give the requested resolution).
        if 1.0 / args.df > args.duration:
            raise UsageError(f"--duration {args.duration:g} s is shorter than one Welch segment of 1/df = {1 / args.df:g} s")
        obs = SpectrumObservation(
            method="simulation",
            noise=args.noise,
            noise_on=args.noise_on,
            dt=args.dt,
            duration=args.duration,
            transient=args.transient,
            segment=1.0 / args.df,
            seed=args.seed,
        )
        pred = obs.neural_psd(model.params, freqs)
        if not bool(pred.valid.all()):
            raise UsageError("the simulation diverged; reduce --dt")
        psd = pred.value
        info["seed"] = args.seed
    if out is not None:
        _write_csv(out, ["freq", "power [mV^2/Hz]"], [freqs, psd])  # units in the header: jrinfer fit reads them
    if args.json:
        print(json.dumps({**info, "freq": freqs.tolist(), "power": psd.tolist()}))
    elif out is None:
        for f, p in zip(freqs.tolist(), psd.tolist()):
            print(f"{f:.6g},{p:.10g}")
    else:
        print(f"wrote {n} frequencies to {out}")
    return 0


_EEG_SUFFIXES = (".edf", ".bdf", ".fif", ".fif.gz", ".vhdr", ".set", ".gdf", ".cnt")
#: Formats whose labels carry EDF type prefixes ("EEG O1", "ECG ECG") that MNE can turn into channel types.
_TYPED_LABEL_SUFFIXES = (".edf", ".bdf")
#: Default frequency window of the CLI (Hz); fmax is lowered to the recording's low-pass filter.
_DEFAULT_FMIN, _DEFAULT_FMAX = 2.0, 40.0
#: Default Welch segment (s) for EEG files.
_DEFAULT_SEGMENT = 4.0


def _parse_bands(text: str | None) -> list[tuple[float, float]] | None:
    """``"49-51,59-61"`` -> ``[(49.0, 51.0), (59.0, 61.0)]`` (Hz)."""
    if not text:
        return None
    bands = []
    for item in text.split(","):
        item = item.strip()
        lo, sep, hi = item.partition("-")
        try:
            if not sep:
                raise ValueError
            band = (float(lo), float(hi))
        except ValueError:
            raise UsageError(f"--exclude expects frequency bands LO-HI[,LO-HI...] in Hz (e.g. 49-51,99-101); "
                             f"got {item!r}") from None
        if not (math.isfinite(band[0]) and math.isfinite(band[1]) and 0 <= band[0] <= band[1]):
            raise UsageError(f"--exclude: each band must be LO-HI with 0 <= LO <= HI Hz; got {item!r}")
        bands.append(band)
    return bands


def _cli_words(msg: str) -> str:
    """Rewrite the data layer's Python spellings into this command's flags."""
    import re

    def picks(m):
        import shlex

        names = re.findall(r"'([^']*)'", m.group(1))
        return "--picks " + shlex.quote(",".join(names))  # quoted when a name has a space ('EEG O1,EEG O2')

    def bands(m):
        pairs = re.findall(r"\(([^,()]+),\s*([^()]+)\)", m.group(1))
        return "--exclude " + ",".join(f"{a.strip()}-{b.strip()}" for a, b in pairs)

    msg = re.sub(r"picks=\[([^\]]*)\]", picks, msg)
    msg = re.sub(r"exclude=\[((?:\([^()]*\)(?:,\s*)?)*)\]", bands, msg)
    msg = re.sub(r"units='([^']+)'", r"--units \1", msg)
    msg = re.sub(r"\bseg_length=", "--segment ", msg)
    msg = re.sub(r"\bseg_length\b", "--segment", msg)
    msg = re.sub(r"\b(fmin|fmax|tmin|tmax)=", r"--\1 ", msg)
    msg = re.sub(r"(?<![-\w])picks=None", "default picks", msg)
    msg = re.sub(r"^(fmin|fmax|tmin|tmax)\b", r"--\1", msg)
    msg = re.sub(r"^path '([^']*)'", r"DATA \1", msg)
    msg = re.sub(r"^picks\b", "--picks", msg)
    msg = re.sub(r"^channels: ", "--picks: ", msg)
    return msg


def _load_data(args):
    """Read DATA as SpectrumData or EvokedData (CSV, or any format MNE reads).

    Errors come back as UsageError in the command's words (flags, not Python
    arguments). Data warnings are printed on stderr (in the command's words)
    and kept in ``data.metadata["warnings"]``; the channels used are printed
    and kept in ``data.metadata["channels_used"]``.
    """
    import warnings

    if isinstance(args.data, list):  # fit's DATA...: one file, or one data set per condition
        if len(args.data) > 1 or getattr(args, "conditions", None):
            return _load_conditions(args)
        args.data = args.data[0]
    path = Path(args.data)
    if not path.exists():
        raise UsageError(f"DATA {args.data}: no such file")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", UserWarning)
        try:
            data = _read_data(args, path)
        except ValueError as err:
            raise UsageError(_cli_words(str(err).splitlines()[0] if str(err) else type(err).__name__)) from None
    md = data.metadata
    if md.get("warnings"):
        md["warnings"] = [_cli_words(w) for w in md["warnings"]]
    used = md.get("channels_used") or md.get("averaged_channels") or list(data.channel_names)
    dropped = md.get("channels_dropped") or []
    line = f"jrinfer {args.command}: channels used ({len(used)}): {', '.join(used)}"
    if dropped:
        line += "; left out: " + ", ".join(f"{d['channel']} ({d['reason']})" for d in dropped)
    print(line, file=sys.stderr)
    ep = md.get("epochs")
    if isinstance(ep, dict) and "n_events" in ep:  # an ERP averaged from a continuous recording
        why = ", ".join(f"{k} {v}" for k, v in (ep.get("rejected") or {}).items())
        print(f"jrinfer {args.command}: epochs: {ep['n_averaged']} of {ep['n_events']} events averaged, "
              f"{ep.get('n_rejected', 0)} rejected" + (f" ({why})" if why else "")
              + (f"; {ep['other_events']} events of other types left out" if ep.get("other_events") else ""),
              file=sys.stderr)
    for w in md.get("warnings", []):
        print(f"jrinfer {args.command}: warning: {w}", file=sys.stderr)
    return data


def _read_data(args, path: Path):
    from jrinfer.data import _TIME_HEADERS, MIN_FIT_FREQS, EvokedData, SpectrumData

    channels = [c.strip() for c in args.channels.split(",") if c.strip()] if args.channels else None
    bands = _parse_bands(getattr(args, "exclude", None))
    segment = getattr(args, "segment", None)
    if segment is not None and not (math.isfinite(segment) and segment > 0):
        raise UsageError(f"--segment expects a Welch segment length in s > 0; got {segment:g}")
    if bands and args.kind != "spectrum":
        raise UsageError("--exclude applies to --kind spectrum only (frequency bands in Hz)")
    name = path.name.lower()
    if name.endswith(".csv") and args.kind == "spectrum" and _csv_first_header(path) in _TIME_HEADERS:
        # a recording kept as a text time series: Welch through MNE, as for EEG files
        from jrinfer.data import AMPLITUDE_UNITS, _raw_from_series_csv

        amplitude = args.units is not None and args.units.replace("µ", "u") in AMPLITUDE_UNITS
        raw = _raw_from_series_csv(path, units=args.units if amplitude else None)
        if channels is not None:
            channels = _match_channels(channels, raw.ch_names)
        fmax = args.fmax if args.fmax is not None else min(_DEFAULT_FMAX, raw.info["sfreq"] / 2)
        data = SpectrumData.from_mne(raw, picks=channels, fmin=_DEFAULT_FMIN if args.fmin is None else args.fmin,
                                     fmax=fmax, seg_length=_DEFAULT_SEGMENT if segment is None else segment,
                                     units="uV^2/Hz" if amplitude or args.units is None else args.units,
                                     exclude=bands)
        data.metadata["source"] = str(path)
    elif name.endswith(".csv"):
        if segment is not None:
            raise UsageError("--segment applies to EEG recordings; a CSV spectrum is already estimated")
        if args.kind == "spectrum":
            data = SpectrumData.from_csv(
                path, units=args.units, n_segments=args.n_segments, exclude=bands, fmin=args.fmin, fmax=args.fmax
            )
            if channels is not None:
                channels = _match_channels(channels, list(data.channel_names))
            data = data.select(channels=channels, fmin=args.fmin, fmax=args.fmax)
            if channels is not None:
                data.metadata["channels_used"] = list(data.channel_names)
        elif _is_trials_table(path):
            data = _read_trials_table(args, path, channels)
        else:
            data = EvokedData.from_csv(path, units=args.units)
            if channels is not None:
                channels = _match_channels(channels, list(data.channel_names))
            data = data.select(channels=channels, tmin=args.tmin, tmax=args.tmax)
    elif name.endswith(_EEG_SUFFIXES):
        try:
            import mne
        except ImportError:
            raise UsageError("reading EEG files needs MNE: pip install 'jrinfer[eeg]'") from None
        mne.set_log_level("ERROR")
        if args.kind == "evoked" and (getattr(args, "event_id", None) is not None or _is_continuous(mne, path)):
            return _finish_data(args, _epochs_from_raw(args, mne, path, channels))
        try:
            if args.kind == "spectrum":
                kw = {"infer_types": True} if name.endswith(_TYPED_LABEL_SUFFIXES) else {}
                inst = mne.io.read_raw(path, preload=True, verbose="error", **kw)
            else:
                evokeds = mne.read_evokeds(path, verbose="error")
                inst = evokeds[args.condition] if args.condition is not None else evokeds[0]
        except Exception as err:  # MNE raises many types for unreadable files
            raise UsageError(f"DATA {args.data}: not readable as EEG by MNE ({type(err).__name__}: {err})") from None
        if channels is not None:
            channels = _match_channels(channels, inst.ch_names)
        if args.kind == "spectrum":
            fmin = _DEFAULT_FMIN if args.fmin is None else args.fmin
            fmax = args.fmax
            if fmax is None:
                lowpass = inst.info.get("lowpass")
                fmax = _DEFAULT_FMAX if not lowpass else min(_DEFAULT_FMAX, float(lowpass))
            data = SpectrumData.from_mne(inst, picks=channels, fmin=fmin, fmax=fmax,
                                         seg_length=_DEFAULT_SEGMENT if segment is None else segment,
                                         units=args.units or "uV^2/Hz", exclude=bands)
        else:
            data = EvokedData.from_mne(inst, picks=channels, tmin=args.tmin, tmax=args.tmax, units=args.units or "uV")
    else:
        hint = ("; a text file of samples (one column, e.g. the Bonn segments) becomes a CSV 'time,O1 [uV]' with a "
                "time column at its sampling rate (README: DATA)") if name.endswith((".txt", ".dat", ".asc")) else ""
        raise UsageError(
            f"DATA {args.data}: unknown file type; expected .csv or an EEG file MNE reads ({', '.join(_EEG_SUFFIXES)})"
            + hint
        )
    return _finish_data(args, data)


def _csv_first_header(path: Path) -> str | None:
    """The first header cell of a CSV, lower case, without a bracketed unit (None if unreadable)."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for line in fh:
                if line.strip():
                    return line.split(",")[0].split("[")[0].strip().lower()
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _finish_data(args, data):
    """Refuse too few points; average the channels unless --no-average."""
    from jrinfer.data import MIN_FIT_FREQS

    n = data.n_freqs if args.kind == "spectrum" else data.n_times
    if n < MIN_FIT_FREQS:
        what = "frequencies" if args.kind == "spectrum" else "time samples"
        window = "--fmin/--fmax" if args.kind == "spectrum" else "--tmin/--tmax"
        raise UsageError(
            f"DATA {args.data}: a fit needs at least {MIN_FIT_FREQS} {what} (more than the model's free parameters "
            f"and noise precision); got {n}. Widen {window} or give a finer grid"
        )
    if data.n_channels > 1 and not args.no_average:
        data = data.mean_over_channels(name="mean(" + ",".join(data.channel_names) + ")")
    return data


# ------------------------------------------------ ERPs from continuous recordings and trial tables
def _is_trials_table(path: Path) -> bool:
    """A long-format single-trial CSV (columns Label/Epoch/Trial, Condition, Time, channels...)."""
    with open(path, newline="") as fh:
        header = {h.strip().lower() for h in fh.readline().split(",")}
    return {"condition", "time"} <= header and bool(header & {"label", "epoch", "trial"})


def _read_trials_table(args, path: Path, channels):
    from jrinfer.data import EvokedData

    condition = args.event_id if getattr(args, "event_id", None) is not None else args.condition
    if channels is not None:
        with open(path, newline="") as fh:
            header = [h.strip() for h in fh.readline().split(",")]
        names = [h for h in header if h.lower() not in ("label", "epoch", "trial", "condition", "time")]
        channels = _match_channels(channels, names)
    try:
        # --units: the units the table's values are in (as for any CSV data; MNE's tables are in volts)
        return EvokedData.from_trials_table(path, condition, picks=channels, tmin=args.tmin, tmax=args.tmax,
                                            table_units=args.units or "V", units="uV")
    except ValueError as err:
        msg = str(err).splitlines()[0]
        if msg.startswith("condition"):
            msg = "--event-id" + msg[len("condition"):]
        raise UsageError(f"DATA {args.data}: {msg}") from None


def _is_continuous(mne, path: Path) -> bool:
    """True when DATA is a continuous recording (not a file of averaged evoked responses)."""
    name = path.name.lower()
    if name.endswith((".fif", ".fif.gz")) and ("-ave." in name or "_ave." in name):
        return False
    try:
        if mne.read_evokeds(path, verbose="error"):  # a raw FIF reads as an empty list
            return False
    except Exception:  # not an evoked file: is it raw?
        pass
    try:
        mne.io.read_raw(path, preload=False, verbose="error")
        return True
    except Exception:  # MNE raises many types for unreadable files; the evoked reader reports it
        return False


def _parse_baseline(text):
    if text is None:
        return (None, 0.0)
    if text.strip().lower() == "none":
        return None
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return tuple(None if p.strip() == "" else float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--baseline expects START,END in s (e.g. --baseline=-0.1,0) or none; got {text!r}") from None


def _epochs_from_raw(args, mne, path: Path, channels):
    """--kind evoked from a continuous recording: epochs around --event-id, averaged by MNE."""
    from jrinfer.data import EvokedData

    kw = {"infer_types": True} if path.name.lower().endswith(_TYPED_LABEL_SUFFIXES) else {}
    try:
        raw = mne.io.read_raw(path, preload=True, verbose="error", **kw)
    except Exception as err:  # MNE raises many types for unreadable files
        raise UsageError(f"DATA {args.data}: not readable as EEG by MNE ({type(err).__name__}: {err})") from None
    events = getattr(args, "events", None) or "annotations"
    if args.event_id is None:
        found = sorted(set(raw.annotations.description)) if len(raw.annotations) else []
        stims = [raw.ch_names[i] for i in mne.pick_types(raw.info, stim=True)]
        raise UsageError(
            f"DATA {args.data} is a continuous recording: average epochs around events with --event-id NAME_OR_CODE "
            f"(annotations: {', '.join(found) or 'none'}; stim channels for --events: {', '.join(stims) or 'none'})"
        )
    event_id = args.event_id
    if events != "annotations" or (event_id.isdigit() and event_id not in set(raw.annotations.description)):
        event_id = int(event_id) if event_id.lstrip("-").isdigit() else event_id
    if channels is not None:
        channels = _match_channels(channels, raw.ch_names)
    tmin = -0.1 if args.tmin is None else args.tmin
    tmax = 0.5 if args.tmax is None else args.tmax
    try:
        return EvokedData.from_raw_events(
            raw, event_id, events=events, tmin=tmin, tmax=tmax, baseline=_parse_baseline(args.baseline),
            reject=args.reject, picks=channels, units=args.units or "uV",
        )
    except ValueError as err:
        msg = _cli_words(str(err).splitlines()[0])
        msg = msg.replace("event_id ", "--event-id ").replace("events=", "--events ").replace("reject", "--reject")
        raise UsageError(f"DATA {args.data}: {msg}") from None


def _match_channels(names: list[str], available) -> list[str]:
    """The channels ``names`` mean: exact, else after normalisation (``O1`` -> ``EEG O1-A1``, ``O1..``).

    Raises UsageError naming every unknown name and the available channels (or the ambiguous matches).
    """
    from jrinfer import _datachecks

    try:
        return _datachecks.match_channels("--picks", names, list(available))
    except ValueError as err:
        raise UsageError(str(err)) from None


def _read_prior_file(path: str) -> dict:
    """A prior file (JSON or TOML) in Prior's schema: {"distributions": {...}, "fixed": {...}}."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--prior {path}: no such file")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            spec = tomllib.loads(text)
        else:
            spec = json.loads(text)
    except ValueError as err:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise UsageError(f"--prior {path}: not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'} ({err})") from None
    if not isinstance(spec, dict) or not set(spec) <= {"distributions", "fixed", "units"}:
        raise UsageError(
            f"--prior {path}: expected a table with 'distributions' (name -> {{dist = \"lognormal\", median = ..., "
            "sd_log = ...}}) and/or 'fixed' (name -> value), as in summary.json's \"prior\""
        )
    return spec


def _merge_prior(spec: dict, update: dict) -> dict:
    """The default prior spec with ``update``'s entries replacing those of the same names."""
    dists = dict(spec.get("distributions", {}))
    fixed = dict(spec.get("fixed", {}))
    for name, d in update.get("distributions", {}).items():
        fixed.pop(name, None)
        dists[name] = d
    for name, v in update.get("fixed", {}).items():
        dists.pop(name, None)
        fixed[name] = v
    if not dists:
        raise UsageError("--prior/--fix leave no free parameter; keep at least one free")
    units = {**spec.get("units", {}), **update.get("units", {})}
    return {"distributions": dists, "fixed": fixed, "units": units}


# ------------------------------------------------ condition effects (several DATA)
def _data_paths(args) -> list[str]:
    return list(args.data) if isinstance(args.data, list) else [args.data]


def _data_files(args):
    """summary.json's data file(s): a path, or ``{condition: path}`` for a fit of several conditions."""
    files = [str(Path(p).resolve()) for p in _data_paths(args)]
    return files[0] if len(files) == 1 else dict(zip(_condition_names(args), files))  # one file: every condition


def _data_hashes(args):
    """SHA-256 of each DATA file (``jrinfer compare`` checks that fits saw the same data)."""
    from jrinfer._io import file_sha256

    hashes = [file_sha256(p) for p in _data_paths(args)]
    return hashes[0] if len(hashes) == 1 else dict(zip(_condition_names(args), hashes))


def _data_title(args) -> str:
    """The data in a plot title: the file name(s), with the event and condition of an ERP when given."""
    title = " vs ".join(Path(p).name for p in _data_paths(args))
    extra = [f"{flag} {value}" for flag, value in (("event", getattr(args, "event_id", None)),
                                                     ("condition", getattr(args, "condition", None))) if value]
    return title + (f" ({', '.join(extra)})" if extra else "")


def _condition_names(args) -> list[str]:
    paths = _data_paths(args)
    if not args.conditions:
        raise UsageError(
            f"{len(paths)} DATA files need --conditions naming each (e.g. --conditions rest,task) and --vary "
            "naming the parameters that may differ between them"
        )
    names = [c.strip() for c in args.conditions.split(",") if c.strip()]
    if len(names) != len(paths) and not (len(paths) == 1 and len(_event_ids(args)) == len(names) > 1):
        raise UsageError(
            f"--conditions names {len(names)} condition(s) but {len(paths)} DATA file(s) were given (one file holding "
            "every condition needs one --event-id per condition, e.g. --event-id audio,visual)"
        )
    return names


def _event_ids(args) -> list[str]:
    """--event-id split at commas (one per condition when fitting conditions from one recording)."""
    text = getattr(args, "event_id", None)
    return [e.strip() for e in text.split(",") if e.strip()] if text else []


def _load_conditions(args):
    """One data set per DATA file, named by --conditions (same reading options for all)."""
    import copy

    from jrinfer.conditions import ConditionData

    names = _condition_names(args)
    paths = list(args.data) if len(args.data) == len(names) else list(args.data) * len(names)
    ids = _event_ids(args)
    if len(ids) > 1 and len(ids) != len(names):
        raise UsageError(f"--event-id lists {len(ids)} events for {len(names)} --conditions; give one per condition")
    datasets = {}
    for k, (name, path) in enumerate(zip(names, paths)):
        one = copy.copy(args)
        one.data = path
        if len(ids) > 1:
            one.event_id = ids[k]
        print(f"jrinfer {args.command}: condition {name}: {path}" + (f" ({ids[k]})" if len(ids) > 1 else ""),
              file=sys.stderr)
        datasets[name] = _load_data(one)
    try:
        return ConditionData(datasets)
    except ValueError as err:
        raise UsageError(f"--conditions: {err}") from None


def _reference_data(data):
    """The data the single-condition default prior is built on (the first condition's)."""
    from jrinfer.conditions import ConditionData

    return data[data.conditions[0]] if isinstance(data, ConditionData) else data


def _fixable(args, obs, data) -> list[str]:
    """Names ``--fix`` accepts: the observation's parameters (with the condition parameters for several DATA)."""
    from jrinfer.conditions import ConditionData, ConditionObservation

    names = list(obs.accepted_parameters(_reference_data(data)))
    if isinstance(data, ConditionData) and getattr(args, "vary", None):
        try:
            joint = ConditionObservation(obs, data.conditions, [v.strip() for v in args.vary.split(",") if v.strip()])
            names += [n for n in joint.accepted_parameters(data) if n not in names]
        except ValueError:  # a bad --vary is reported, in CLI words, by _with_conditions
            pass
    return names


def _with_conditions(args, obs, spec: dict, data):
    """For several DATA: the joint observation over conditions and its prior (differences for --vary)."""
    from jrinfer.conditions import ConditionData, ConditionObservation

    if not isinstance(data, ConditionData):
        if getattr(args, "vary", None):
            raise UsageError("--vary needs two or more DATA files and --conditions (one name per file)")
        return obs, spec
    if not args.vary:
        raise UsageError("--conditions needs --vary: the parameters that may differ between conditions (e.g. --vary a,b)")
    vary = [v.strip() for v in args.vary.split(",") if v.strip()]
    try:
        joint = ConditionObservation(obs, data.conditions, vary)
        joint.check_data(data)
        spec = joint.joint_prior(spec, data)
    except ValueError as err:
        raise UsageError(_cli_words(str(err).splitlines()[0]).replace("vary:", "--vary:")) from None
    if args.prior:  # explicit delta_* priors in --prior replace the derived ones
        spec = _merge_prior(spec, _read_prior_file(args.prior))
    return joint, spec


def _condition_summary(summary: dict, posterior, problem) -> list[str]:
    """Add ``condition_effects`` to summary.json for a fit of several conditions; the lines to print."""
    from jrinfer.conditions import (ConditionObservation, condition_effects, delta_gaussian, format_alpha_power,
                                    format_effects, no_difference)

    obs = problem.observation
    if not isinstance(obs, ConditionObservation):
        return []
    effects = condition_effects(posterior, problem)
    joint = no_difference(posterior, problem)
    warns = []
    k = posterior.diagnostics.get("pareto_k")
    if k is not None and k > 0.7:
        warns.append(
            f"the Gaussian posterior is not reliable here (Pareto k-hat {k:.2f}): the log Bayes factors inherit its "
            "error; to check one, refit without that parameter in --vary and compare the two fits (jrinfer compare)"
        )
    across = posterior.diagnostics.get("effects_across_optima")  # multi-start VL: competing optima disagree
    if isinstance(across, dict) and not across.get("agree", True):
        warns.append(across["sentence"])
    summary["condition_effects"] = {
        "reference": obs.reference,
        "conditions": list(obs.conditions),
        "method": "log BF: Bayesian model reduction of 'no difference' (delta = 0) from the full posterior "
        "(Friston & Penny 2011); P(difference) with equal prior odds",
        "no_difference": joint,
        "effects": effects,
        # each condition's regime mix, dominant regime and point-estimate regime (as diagnostics["regime_by_condition"])
        "regimes": posterior.diagnostics.get("regime_by_condition"),
        "warnings": warns,
        # the differences' joint Gaussian and prior: what jrinfer.conditions.group_effects averages over subjects
        "gaussian": delta_gaussian(posterior, problem),
    }
    alpha = format_alpha_power(posterior.fit_quality, obs.reference, obs.others)
    summary["condition_effects"]["alpha_power"] = alpha
    return ([f"  {line}" for line in alpha] + format_effects(effects, obs.reference, joint)
            + [f"    WARNING: {w}" for w in warns])


def _sampler_budget(args, *extra: str) -> dict:
    """``--chains/--draws[/--tune]`` given on the command line, as sampler keyword arguments."""
    names = ("chains", "draws", *extra)
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _observation(args):
    """The single-condition observation of ``--kind`` (and ``--method``)."""
    from jrinfer.observation import EvokedObservation, SpectrumObservation

    if args.kind == "spectrum":
        return SpectrumObservation(method=args.method or "transfer")
    return EvokedObservation(rest=getattr(args, "rest", None) or "auto")


def _check_names_before_reading(args) -> None:
    """Refuse unknown names in ``--fix``, ``--vary`` and ``--prior`` before any DATA file is opened.

    The names are checked against the observation kind's parameters (the JR
    constants and the observation's own), and, with ``--conditions``, the
    names the conditions add (``delta_<name>_<condition>``,
    ``<name>_<condition>``); the full check against the data's parameters
    follows once they are read. Values of ``--fix`` are checked too (numbers,
    finite).
    """
    obs = _observation(args)
    try:
        known = list(obs.accepted_parameters(None))
    except ValueError:  # names that depend on the data (per-channel gains): checked after reading
        return
    conditions = [c.strip() for c in (getattr(args, "conditions", None) or "").split(",") if c.strip()]
    vary = [v.strip() for v in (getattr(args, "vary", None) or "").split(",") if v.strip()]
    for v in vary:
        if v not in known:
            _parse_assignments([f"{v}=0"], "--vary", known=known)  # the one-line refusal with a close-match hint
    extra = [f"delta_{v}_{c}" for v in vary for c in conditions[1:]]

    def check(names, option):
        for name in names:
            base = name
            if conditions and name not in extra:  # a condition's own copy of a parameter: <name>_<condition>
                for c in conditions[1:]:
                    if name.endswith(f"_{c}") and name[: -len(c) - 1] in known:
                        base = name[: -len(c) - 1]
            if base not in known and name not in extra:
                _parse_assignments([f"{name}=0"], option, known=known + extra)

    if getattr(args, "free", None) and hasattr(obs, "model_parameter_names"):
        model = list(obs.model_parameter_names())
        for name in (s.strip() for s in args.free.split(",") if s.strip()):
            if name in known and name not in model:
                raise UsageError(f"--free {name}: {name} is a parameter of the observation, free in every fit; "
                                 f"--free chooses among the model's constants ({', '.join(model)}); to hold it, "
                                 f"use --fix {name}=VALUE")
            if name not in model:  # --free takes the model's constants (the observation's are always free)
                _parse_assignments([f"{name}=0"], "--free", known=model)
    if args.fix:
        check(_parse_assignments(args.fix, "--fix"), "--fix")
    if args.prior:
        spec = _read_prior_file(args.prior)
        check([*spec.get("distributions", {}), *spec.get("fixed", {})], f"--prior {args.prior}")


def _fit_problem(args, data):
    """The problem of ``data`` (default prior with --free, --prior, --fix; conditions) and its posterior from
    --backend laplace|nuts|smc."""
    from jrinfer.problem import InverseProblem

    obs = _observation(args)
    free = tuple(s.strip() for s in args.free.split(",")) if args.free else None
    spec = obs.default_prior(_reference_data(data), free=free)
    if args.prior:
        spec = _merge_prior(spec, _read_prior_file(args.prior))
    if args.fix:
        spec = _merge_prior(spec, {"fixed": _parse_assignments(args.fix, "--fix", known=_fixable(args, obs, data))})
    obs, spec = _with_conditions(args, obs, spec, data)
    problem = InverseProblem(obs, spec, data)
    import warnings

    backend, fit_options = _backend(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is reported in summary.json
        try:
            posterior = backend.fit(problem, **fit_options)
        except KeyboardInterrupt as err:  # NUTS, Ctrl-C during tuning: nothing to keep
            if args.backend != "nuts":
                raise
            raise RuntimeError(str(err) or "interrupted") from None
    return problem, posterior


#: ``jrinfer fit`` options that configure the backend (``--backend laplace|nuts|smc``); the others describe the
#: data, the model and the outputs. ``fit_many`` of InverseProblems takes these (without ``seed``: its argument).
BACKEND_OPTIONS = ("chains", "tune", "draws", "boundary", "starts", "max_iter", "resample")


def _progress(args):
    """The backends' ``progress`` of ``--progress/--no-progress/--quiet``.

    Default (``"auto"``): a progress bar when stderr is a terminal, else one-line messages (a start line, one at
    most every 10 s, an end line); ``--progress``: the bar; ``--no-progress``: the lines only (no bars);
    ``--quiet``: nothing.
    """
    if getattr(args, "quiet", False):
        return False
    if args.progress is None:
        return "auto"
    return "bar" if args.progress else "lines"


def _check_backend_options(args) -> None:
    """Refuse backend options given to a backend they do not apply to (before any data file is read)."""
    if args.starts is not None and (args.backend != "laplace" or args.starts < 1):
        raise UsageError(f"--starts N applies to --backend laplace, N >= 1; got --starts {args.starts} with "
                         f"--backend {args.backend}")
    if getattr(args, "boundary", None) is not None and args.backend != "nuts":
        raise UsageError(f"--boundary applies to --backend nuts; got --boundary {args.boundary} with "
                         f"--backend {args.backend}")
    if getattr(args, "kind", None) == "spectrum":  # evoked-only options would be silently ignored for a spectrum
        given = [flag for flag, dest in (("--condition", "condition"), ("--events", "events"), ("--event-id", "event_id"),
                                         ("--baseline", "baseline"), ("--reject", "reject"), ("--rest", "rest"))
                 if getattr(args, dest, None) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --kind evoked (epochs, "
                             "conditions of an evoked file); for spectra of several conditions use --conditions with "
                             "one DATA file per condition")
    several = isinstance(getattr(args, "data", None), list) and len(args.data) > 1
    if args.backend == "npe" and (getattr(args, "conditions", None) or getattr(args, "vary", None) or several):
        raise UsageError("--backend npe conditions one recording at a time; fit conditions jointly (--conditions, "
                         "--vary) with --backend laplace, nuts or smc, or run --backend npe once per recording")
    ta = getattr(args, "target_accept", None)
    if ta is not None and (args.backend != "nuts" or not 0.0 < ta < 1.0):
        raise UsageError(f"--target-accept applies to --backend nuts, a probability in (0, 1); got --target-accept "
                         f"{ta:g} with --backend {args.backend}")


def _backend(args):
    """The backend of ``--backend laplace|nuts|smc`` built from the fit options, and its ``fit()`` keywords.

    The one path from options to a backend constructor: ``jrinfer fit``, ``jrinfer fit-many`` (files, through
    ``jrinfer fit``) and :func:`jrinfer.fit_many` of InverseProblems (``options``) all build their backend here.
    """
    _check_backend_options(args)
    progress = _progress(args)
    if args.backend == "nuts":  # PyMC backends: R-hat, ESS, divergences land in summary["diagnostics"]
        from jrinfer.backends.pymc import NUTS

        accept = {} if getattr(args, "target_accept", None) is None else {"target_accept": args.target_accept}
        return NUTS(seed=args.seed, progress=progress, boundary=getattr(args, "boundary", None),
                    **_sampler_budget(args, "tune"), **accept), {}
    if args.backend == "smc":
        from jrinfer.backends.pymc import SMC

        return SMC(seed=args.seed, progress=progress, **_sampler_budget(args)), {}
    if args.backend != "laplace":
        raise UsageError(f"--backend {args.backend}: expected laplace, nuts or smc here")
    from jrinfer.backends.laplace import VariationalLaplace

    starts = {} if args.starts is None else {"n_starts": args.starts}
    return (VariationalLaplace(progress=progress, max_iter=args.max_iter, **starts),
            {"seed": args.seed, "resample": args.resample})


def _input_pulse(problem, posterior) -> dict | None:
    """ERP fits: the input pulse's peak rate and time over the posterior draws (what input_amplitude means).

    ``{"peak_rate": {...}, "peak_time": {...}, "factor", "shape_n", "meaning": str}`` with the median and 5 % /
    95 % quantiles in pulses/s and s after the stimulus (``factor = n^n e^-n``: peak rate / input_amplitude); None unless the observation is an :class:`EvokedObservation` (one condition).
    """
    from jrinfer.observation import EvokedObservation

    obs = problem.observation
    if not isinstance(obs, EvokedObservation):
        return None
    import numpy as np

    names = list(posterior.names)
    fixed = problem.prior.fixed
    draws = np.asarray(posterior.draws, dtype=float).reshape(-1, len(names))

    def values(name):
        return draws[:, names.index(name)] if name in names else np.full(draws.shape[0], float(fixed[name]))

    rate, time = obs.input_peak(values("input_amplitude"), values("input_latency"), values("input_width"))
    out = {}
    for key, x, unit in (("peak_rate", rate.numpy(), "pulses/s"), ("peak_time", time.numpy(), "s")):
        lo, med, hi = np.quantile(x, [0.05, 0.5, 0.95])
        out[key] = {"median": float(med), "q05": float(lo), "q95": float(hi), "units": unit}
    n = obs.shape_n
    factor = math.exp(n * math.log(n) - n)
    out["factor"], out["shape_n"] = factor, float(n)
    out["meaning"] = (f"input_amplitude q scales the input pulse q ((t - input_latency)/input_width)^{n:g} "
                      f"exp(-(t - input_latency)/input_width) added to p_mean; it peaks at {factor:.0f} q pulses/s at "
                      f"input_latency + {n:g} input_width")
    return out


def _npe_estimator(args):
    """The trained estimator of ``--backend npe --estimator DIR`` (None for other backends).

    Options fixed at training time are refused; for EEG files the Welch
    segment and the frequency window default to the estimator's grid (and a
    CSV is cropped to it), so that the data land on the grid it was trained on.
    """
    if args.backend != "npe":
        if getattr(args, "smc", False):
            raise UsageError("--smc applies to --backend npe (SMC from the trained flow); for SMC from the prior use "
                             "--backend smc")
        if args.estimator is not None or args.resample_grid or getattr(args, "rounds", 0) or \
                getattr(args, "importance_sampling", False):
            raise UsageError("--estimator, --resample-grid, --rounds and --importance-sampling apply to --backend npe")
        return None
    if getattr(args, "smc", False) and getattr(args, "importance_sampling", False):
        raise UsageError("--smc and --importance-sampling are two corrections of the flow: choose one (--smc works "
                         "where the flow is much wider than the posterior, as on JR spectra at a few thousand "
                         "simulations; --importance-sampling is cheaper where the flow is close to it)")
    if args.draws is not None and args.draws < 2:  # condition() refuses fewer SMC particles than it needs
        raise UsageError(f"--draws must be >= 2, got {args.draws}")
    if getattr(args, "resample", False):
        raise UsageError("--resample (importance-resampled draws) is laplace's; for --backend npe use "
                         "--importance-sampling (the flow's draws weighted by the likelihood, PSIS, resampled)")
    if getattr(args, "rounds", 0) < 0 or getattr(args, "simulations_per_round", 3000) < 50:
        raise UsageError(f"--rounds must be >= 0 and --simulations-per-round >= 50, got --rounds {args.rounds} "
                         f"--simulations-per-round {args.simulations_per_round}")
    if args.estimator is None:
        raise UsageError("--backend npe needs --estimator DIR, a trained estimator (make one with jrinfer train-npe "
                         "--kind spectrum --out DIR)")
    fixed = [flag for flag, given in (("--prior", args.prior), ("--fix", args.fix), ("--free", args.free),
                                      ("--method", args.method)) if given]
    if fixed:
        raise UsageError(f"{', '.join(fixed)}: the prior, free parameters and spectral method of --backend npe were "
                         "fixed when the estimator was trained (see its metadata.json); train another one with "
                         "jrinfer train-npe")
    from jrinfer._optional import optional_import

    try:
        optional_import("sbi", purpose="--backend npe")
    except ImportError as err:
        raise UsageError(str(err)) from None
    from jrinfer.backends.npe import AmortizedPosterior

    if not Path(args.estimator).is_dir():
        raise UsageError(f"--estimator {args.estimator}: no such directory")
    try:
        estimator = AmortizedPosterior.load(args.estimator)
    except ValueError as err:
        raise UsageError(f"--estimator {str(err).splitlines()[0]}") from None
    template = estimator.problem.observed()
    kind = "spectrum" if template.coord == "freq" else "evoked"
    if kind != args.kind:
        raise UsageError(f"--estimator {args.estimator} was trained on {kind} data; this is --kind {args.kind}")
    grid = template.coord_values
    if kind == "spectrum":
        if args.fmin is None:
            args.fmin = float(grid[0])
        if args.fmax is None:
            args.fmax = float(grid[-1])
        seg = estimator.problem.data.metadata.get("seg_length_s")
        if args.segment is None and seg is not None and not all(p.lower().endswith(".csv") for p in _data_paths(args)):
            args.segment = float(seg)
    return estimator


def _npe_model_note(posterior, problem) -> str | None:
    """What the estimator's model fixes that a default fit frees, in words (None when nothing)."""
    from jrinfer.observation import DEFAULT_FREE

    fixed = problem.prior.fixed
    held = [n for n in DEFAULT_FREE if n not in posterior.names and n in fixed]
    if not held:
        return None
    values = ", ".join(f"{n} = {float(fixed[n]):g}" for n in held)
    return (f"the estimator's model holds {values} fixed, which a fit with the default prior (laplace, nuts, smc) "
            f"infers: compare the parameters both infer, and expect the others (e.g. a, b, p_mean) to move to make up "
            "for the fixed ones")


def _npe_summary(estimator_dir: str, posterior, problem=None) -> dict:
    """The NPE block of summary.json: estimator, calibration verdict, regimes and training failures."""
    model_note = None if problem is None else _npe_model_note(posterior, problem)
    d = posterior.diagnostics
    t = d["training"]
    cal = d.get("calibration")
    mix = d.get("regime_mix")
    regime = ""
    if mix:
        regime = f"; regime {d.get('regime_verdict')}"
    ood = d.get("out_of_distribution") or {}
    ood_pct = ood.get("mahalanobis2_percentile")
    smc = d.get("smc")
    return {
        "estimator": str(Path(estimator_dir).resolve()),
        "calibration": None if cal is None else cal["verdict"],
        "calibrated": None if cal is None else cal["calibrated"],
        # a label only where the verdict settles it (a script reading "regime" must not get one the verdict rejects)
        "regime": d.get("regime") if d.get("regime_resolved") else ("unresolved" if d.get("regime") else None),
        "regime_most_probable": d.get("regime"),
        "regime_verdict": d.get("regime_verdict"),
        "regime_mix": mix,
        "training_simulations": t["n_simulations"],
        "training_failures": t["failures"],
        "training_regime_mix": t.get("regime_mix"),
        "out_of_distribution": d.get("out_of_distribution", {}).get("outside"),
        "out_of_distribution_percentile": d.get("out_of_distribution", {}).get("mahalanobis2_percentile"),
        "gain_x_p_std": d.get("gain_x_p_std"),
        "contraction_against": d.get("contraction_against"),
        "amortized": d.get("amortized", True),
        "rounds": d.get("rounds"),
        "headline": (f"{t['n_valid']} of {t['n_simulations']} training simulations valid; calibration"
                     f"{'' if d.get('amortized', True) else ' (of the amortized round-0 estimator)'}: "
                     f"{'not run' if cal is None else cal['verdict']}{regime}"
                     + ("" if d.get("amortized", True) else
                        f"; refined by {_n_rounds(d)} truncated round{'' if _n_rounds(d) == 1 else 's'} for "
                        "this recording only (not amortized)")
                     + (f"; the data's distance from the training simulations is at their {ood_pct:.0f}th percentile"
                        f"{' (outside: see the warnings)' if ood.get('outside') else ''}" if ood_pct is not None else "")
                     + ("; contraction is against the box prior the estimator was trained on"
                        if d.get("contraction_against") else "")
                     + (f"; {model_note}" if model_note else "")
                     + (f"; corrected by SMC from the flow ({smc['n_particles']} particles, {len(smc['stages'])} "
                        f"stages, {smc['n_evaluations']} likelihood evaluations, {smc['n_unique']} distinct draws; not "
                        "amortized: the calibration verdict is the flow's)" if smc else "")),
        "model_note": model_note,
        "smc": None if not smc else {k: v for k, v in smc.items() if k != "stages"} | {"n_stages": len(smc["stages"])},
    }


def _n_rounds(diagnostics: dict) -> int:
    """Truncated rounds after the amortized round 0 in an NPE posterior's ``diagnostics["rounds"]``."""
    return sum(r["round"] > 0 for r in diagnostics.get("rounds") or [])


def _fit_npe(args, estimator, data):
    """Condition the estimator on ``data``; the problem it built and the posterior."""
    try:
        problem = estimator.problem_for(data, resample=args.resample_grid)
        if args.rounds:
            # trained on top of the loaded estimator in memory: nothing under --estimator is written
            estimator = estimator.refine(data, rounds=args.rounds, simulations_per_round=args.simulations_per_round,
                                         resample=args.resample_grid,
                                         progress=_progress(args))
        smc = getattr(args, "smc", False)
        n_draws = args.draws if args.draws is not None else (NPE_SMC_PARTICLES if smc else 1000)
        posterior = estimator.condition(data, n_draws=n_draws, seed=args.seed, resample=args.resample_grid,
                                        importance_sampling=getattr(args, "importance_sampling", False),
                                        smc=smc, progress=_progress(args))
    except ValueError as err:
        raise UsageError(_cli_words(str(err).splitlines()[0])) from None
    return problem, posterior



#: The files ``jrinfer fit`` writes into --out; with --force, an earlier fit's are removed first.
_FIT_OUTPUTS = ("summary.json", "posterior.nc", "fit.png", "trace.png", "pair.png", "report.html")


def _cmd_fit(args) -> int:
    import torch  # noqa: F401  (torch is a core dependency; imported here to keep --help fast)

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"--out {args.out}: directory is not empty; pass --force to overwrite its files")
    _check_backend_options(args)
    estimator = _npe_estimator(args)
    if estimator is None:
        _check_names_before_reading(args)
    data = _load_data(args)
    if estimator is not None:
        problem, posterior = _fit_npe(args, estimator, data)
    else:
        problem, posterior = _fit_problem(args, data)
    obs, prior = problem.observation, problem.prior
    summary = posterior.summary()
    summary["free_energy"] = posterior.log_evidence
    summary["n_iter"] = posterior.diagnostics.get("n_iter")
    import datetime

    import jrinfer

    # provenance: which jrinfer judged this fit's status and warnings, and when (jrinfer report shows it)
    summary["jrinfer_version"] = jrinfer.__version__
    summary["created_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    observed = problem.observed()
    from jrinfer._io import observed_sha256

    summary["data"] = {
        "file": _data_files(args),
        "sha256": _data_hashes(args),
        "observed_sha256": observed_sha256(observed),
        "kind": args.kind,
        "channels": list(observed.channels),
        "units": observed.units,
        "n_points": int(observed.values.shape[-1]),
        "channels_used": data.metadata.get("channels_used"),
        "channels_dropped": data.metadata.get("channels_dropped"),
        "epochs": data.metadata.get("epochs"),
    }
    summary["prior"] = prior.to_dict()
    if estimator is None:
        summary["prior_validity"] = problem.prior_validity(1000, seed=args.seed)
    else:  # the training simulations already tell how much of the prior box the observation can predict
        summary["npe"] = _npe_summary(args.estimator, posterior, problem)
        t = estimator.training
        summary["prior_validity"] = {"n_samples": t["n_simulations"], "invalid_fraction": t["failed_fraction"],
                                     "reasons": [f["reason"] for f in t["failures"][:3]]}
    summary["observation"] = repr(obs)
    from jrinfer.identifiability import headline

    summary["identifiability"] = headline(posterior, prior)
    pulse = _input_pulse(problem, posterior)
    if pulse is not None:
        summary["input_pulse"] = pulse
    effects = _condition_summary(summary, posterior, problem)
    out.mkdir(parents=True, exist_ok=True)
    # --force into a folder with an earlier fit: that fit's outputs go (a trace.png or report.html left beside
    # this fit's summary.json would describe another fit); the user's own files stay
    replaced = [p.name for p in (out / n for n in _FIT_OUTPUTS) if p.is_file()]
    for name in replaced:
        (out / name).unlink()
    from jrinfer._io import write_text

    write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    posterior.to_netcdf(out / "posterior.nc", overwrite=True)
    plotted = False
    try:
        from jrinfer.plotting import plot_fit

        plot_fit(posterior, out / "fit.png", title=f"{_data_title(args)}: {posterior.backend} ({posterior.status})")
        plotted = "fit.png"
        if args.backend in ("nuts", "smc"):  # the samplers' chains and pairs
            from jrinfer.plotting import plot_pair, plot_trace

            plot_trace(posterior, out / "trace.png")
            plot_pair(posterior, out / "pair.png")
            plotted = "fit.png, trace.png, pair.png"
    except ImportError:
        pass
    report = _write_fit_report(out, args.force) if args.report else None
    if args.json:
        print(json.dumps(summary, default=float))
    else:
        print(posterior)
        for note in posterior.diagnostics.get("notes", []):
            print(f"  note: {note}")
        if "npe" in summary:
            print(f"  NPE: {summary['npe']['headline']}")
        elif (summary.get("prior_validity") or {}).get("explanation"):
            print(f"  prior: {summary['prior_validity']['explanation']}")
        print(f"  {summary['identifiability']} (see jrinfer identifiability for the structural trade-offs)")
        if pulse is not None:
            r, t = pulse["peak_rate"], pulse["peak_time"]
            print(f"  input pulse: peaks at {r['median']:.3g} pulses/s (90 %: {r['q05']:.3g}-{r['q95']:.3g}) "
                  f"{1e3 * t['median']:.0f} ms after the stimulus (90 %: {1e3 * t['q05']:.0f}-{1e3 * t['q95']:.0f}), "
                  f"on top of p_mean: {pulse['factor']:.0f} x input_amplitude at input_latency + "
                  f"{pulse['shape_n']:g} input_width")
        for line in effects:
            print(line)
        print(f"wrote {out}/summary.json, posterior.nc{', ' + plotted if plotted else ''}{', report.html' if report else ''}"
              + (f" (replacing an earlier fit's {', '.join(replaced)})" if replaced else ""))
    if args.json:  # the printed summary shows them otherwise
        for w in posterior.warnings:
            print(f"jrinfer fit: warning: {w}", file=sys.stderr)
    if not posterior.converged:
        return 1
    if args.strict and posterior.status != "converged":
        print(f"jrinfer fit: --strict: status {posterior.status}: {posterior.status_message}", file=sys.stderr)
        return EXIT_STRICT
    return 0


def _write_fit_report(fit_dir: Path, force: bool, out: str | None = None) -> Path:
    """Render ``report.html`` of a fit folder (``jrinfer report``, ``jrinfer fit --report``); errors in CLI words."""
    from jrinfer._optional import optional_import

    try:
        optional_import("matplotlib", purpose="jrinfer report")
        optional_import("arviz", purpose="jrinfer report")
    except ImportError:
        raise UsageError("the report needs matplotlib and ArviZ: pip install 'jrinfer[plot,arviz]'") from None
    from jrinfer.report import render_report

    target = fit_dir / "report.html" if out is None else Path(out)
    if target.exists() and not force:
        flag = "--out " if out is not None else ""
        raise UsageError(f"{flag}{target}: file exists; pass --force to overwrite it")
    if not target.parent.is_dir():
        raise UsageError(f"--out {out}: directory {str(target.parent)!r} does not exist")
    return render_report(fit_dir, target, overwrite=force)


def _cmd_report(args) -> int:
    fit_dir = Path(args.dir)
    if not fit_dir.is_dir():
        raise UsageError(f"DIR {args.dir}: no such directory")
    if not (fit_dir / "posterior.nc").is_file():
        raise UsageError(f"DIR {args.dir}: no posterior.nc in it; give the --out folder of a 'jrinfer fit'")
    path = _write_fit_report(fit_dir, args.force, args.out)
    if args.json:
        print(json.dumps({"report": str(path)}))
    else:
        print(f"wrote {path}")
    return 0


def _read_fit_summary(path: str) -> dict:
    d = Path(path)
    if not d.is_dir():
        raise UsageError(f"DIR {path}: no such directory")
    f = d / "summary.json"
    if not f.is_file():
        raise UsageError(f"DIR {path}: no summary.json in it; give --out folders of 'jrinfer fit'")
    try:
        s = json.loads(f.read_text())
    except ValueError as err:
        raise UsageError(f"DIR {path}: summary.json is not valid JSON ({err})") from None
    if not isinstance(s, dict) or "parameters" not in s:
        raise UsageError(f"DIR {path}: summary.json is not the summary of a 'jrinfer fit'")
    return s


def _data_identity(s: dict):
    """What identifies the data a fit saw: the hash of the fitted values, else file hash(es) and points."""
    data = s.get("data") or {}
    if data.get("observed_sha256"):
        return ("observed", data["observed_sha256"])
    if data.get("sha256"):
        return ("file", json.dumps(data["sha256"], sort_keys=True), data.get("n_points"),
                json.dumps(data.get("channels")), data.get("units"))
    return None


def _data_difference(a: dict, b: dict) -> str:
    """What differs between the data two fit summaries saw, in words (for compare's refusal)."""
    da, db = a.get("data") or {}, b.get("data") or {}
    parts = []
    if da.get("sha256") != db.get("sha256"):
        parts.append(f"file {da.get('file')} vs {db.get('file')}")
    for key, what in (("channels", "channels"), ("units", "units"), ("n_points", "number of points (range)")):
        if da.get(key) != db.get(key):
            parts.append(f"{what} {da.get(key)} vs {db.get(key)}")
    if not parts:
        parts.append("the same file, channels, units and number of points, but other values (another frequency or "
                     "time window, segment length or preprocessing)")
    return "; ".join(parts)


def _model_difference(a: dict, b: dict) -> str | None:
    """What differs between the models (observation and prior) of two fit summaries, in words; None if nothing recorded does."""
    parts = []
    if a.get("observation") != b.get("observation"):
        oa, ob = str(a.get("observation")), str(b.get("observation"))
        ta, tb = (re.split(r",\s*(?![^()]*\))", x[x.find("(") + 1:x.rfind(")")]) if "(" in x else [x] for x in (oa, ob))
        if oa.split("(")[0] == ob.split("(")[0]:  # the same observation class: only the settings that differ
            only_a = [t for t in ta if t not in tb] or ["defaults"]
            only_b = [t for t in tb if t not in ta] or ["defaults"]
            parts.append(f"observation settings {', '.join(only_a)} vs {', '.join(only_b)}")
        else:
            parts.append(f"observation {oa} vs {ob}")
    pa, pb = a.get("prior") or {}, b.get("prior") or {}
    da, db = pa.get("distributions") or {}, pb.get("distributions") or {}
    fa, fb = pa.get("fixed") or {}, pb.get("fixed") or {}
    only_a, only_b = sorted(set(da) - set(db)), sorted(set(db) - set(da))
    if only_a:
        parts.append(f"free only in the first: {', '.join(only_a)}")
    if only_b:
        parts.append(f"free only in the second: {', '.join(only_b)}")
    other = sorted(n for n in set(da) & set(db) if da[n] != db[n])
    if other:
        parts.append(f"prior of {', '.join(other)}")
    fixed = sorted(n for n in set(fa) & set(fb) if fa[n] != fb[n])
    if fixed:
        parts.append("fixed " + ", ".join(f"{n} {fa[n]:g} vs {fb[n]:g}" if isinstance(fa[n], (int, float))
                                          and isinstance(fb[n], (int, float)) else n for n in fixed))
    return "; ".join(parts) or None


def _cmd_compare(args) -> int:
    from jrinfer.comparison import evidence_strength, model_probabilities

    if len(args.dirs) < 2:
        raise UsageError("compare needs at least two DIR (the --out folders of fits of the same data)")
    summaries = [_read_fit_summary(d) for d in args.dirs]
    rows = []
    for d, s in zip(args.dirs, summaries):
        F = s.get("log_evidence")
        if F is None or not math.isfinite(float(F)):
            raise UsageError(
                f"DIR {d}: the fit has no log evidence (backend {s.get('backend')}); refit with --backend laplace "
                "(free energy) or --backend smc (SMC estimate) to compare models"
            )
        ident = _data_identity(s)
        if ident is None:
            raise UsageError(
                f"DIR {d}: summary.json does not record which data were fitted (no data hash; fitted by an older "
                "jrinfer?); refit it to compare"
            )
        # what was fitted (observation and prior), None when the summary does not record it
        model = (None if s.get("observation") is None and s.get("prior") is None else
                 json.dumps({"observation": s.get("observation"), "prior": s.get("prior")}, sort_keys=True, default=str))
        diag = s.get("diagnostics") or {}
        rows.append({"dir": d, "backend": s.get("backend"), "status": s.get("status"), "free_energy": float(F),
                     "n_free": len(s.get("parameters") or {}), "data": ident, "model": model,
                     "spread": diag.get("log_evidence_spread"), "reliable": diag.get("log_evidence_reliable"),
                     "chains": diag.get("log_marginal_likelihood_chains")})
    first = rows[0]["data"]
    for r, s in zip(rows[1:], summaries[1:]):
        if r["data"] != first:
            raise UsageError(
                f"DIR {r['dir']} fitted other data than DIR {rows[0]['dir']} ({_data_difference(summaries[0], s)}): "
                "log evidences are comparable only for fits of the same data"
            )
    F = [r["free_energy"] for r in rows]
    # posterior model probabilities over distinct models: a model fitted twice (two backends' estimates of one
    # evidence) counts once, by the first of its fits on the command line; the others get no probability
    first_of: dict = {}
    for i, r in enumerate(rows):
        key = r["model"] if r["model"] is not None else ("row", i)
        first_of.setdefault(key, i)
    reps = sorted(set(first_of.values()))
    rep_probs = dict(zip(reps, model_probabilities([F[i] for i in reps]).tolist()))
    probs = [rep_probs.get(i) for i in range(len(rows))]
    best = max(F)
    table = []
    for r, p in zip(rows, probs):
        table.append({"dir": r["dir"], "backend": r["backend"], "status": r["status"], "n_free": r["n_free"],
                      "log_evidence": r["free_energy"], "delta_to_best": r["free_energy"] - best,
                      "probability": p, "best": r["free_energy"] == best,
                      "log_evidence_spread": r["spread"], "log_evidence_reliable": r["reliable"]})
    # an SMC estimate whose independent chains disagree has an error at least their spread (backends.pymc)
    unreliable = [f"{r['dir']}: its SMC chains disagree on the log evidence by {r['spread']:.1f} nats "
                  f"({', '.join(f'{x:.2f}' for x in r['chains'] or [])}), so differences smaller than that mean "
                  "nothing; refit with more particles per chain (--draws)"
                  for r in rows if r["reliable"] is False and r["spread"] is not None]
    unreliable += [f"{r['dir']}: some of its SMC chains gave no finite log evidence; its error is unknown"
                   for r in rows if r["reliable"] is False and r["spread"] is None]
    # the same model (observation and prior) fitted twice, e.g. by two backends: its log evidences estimate one
    # number, so their difference is the estimators' error (Laplace vs SMC), not evidence for either
    same = []
    for i, r in enumerate(rows):
        for q in rows[i + 1:]:
            if r["model"] is not None and r["model"] == q["model"]:
                same.append(f"{r['dir']} and {q['dir']} are the same model (same observation and prior, "
                            f"{r['backend']} vs {q['backend']}): their log evidences estimate one number, and the "
                            f"{abs(r['free_energy'] - q['free_energy']):.2f} nats between them is the estimators' "
                            "error, not evidence")
    # what the best model differs in from each other distinct model (the question a comparison answers), and how
    # strongly the evidence reads (Kass & Raftery 1995), with a caveat where a log evidence is a Laplace
    # approximation its own importance check rejects or that describes one of several optima
    ib = F.index(best)
    differs = []
    for i in reps:
        if i != ib:
            words = _model_difference(summaries[ib], summaries[i])
            dF = F[ib] - F[i]
            strength = evidence_strength(dF)
            reading = ("the data do not tell them apart (|dF| < 1 nat)" if strength is None else
                       f"{strength} evidence for the first")
            if words:
                differs.append(f"{rows[ib]['dir']} vs {rows[i]['dir']} ({dF:+.2f} nats, {reading}): {words}")
    for r, s in zip(rows, summaries):
        diag = s.get("diagnostics") or {}
        k = diag.get("pareto_k")
        why = []
        if r["backend"] == "laplace" and isinstance(k, (int, float)) and k > 0.7:
            why.append(f"Pareto k-hat {k:.2f} > 0.7")
        if r["backend"] == "laplace" and len(diag.get("optima") or []) > 1 and any(
                "multimodal" in w for w in s.get("warnings") or []):
            why.append("a multimodal posterior of which the Gaussian describes one optimum")
        if r["backend"] == "laplace" and any("pinned to that edge" in w for w in s.get("warnings") or []):
            why.append("an optimum pinned to a Hopf point, where the log joint has a kink")
        if why:
            unreliable.append(f"{r['dir']}: its free energy is the Laplace approximation of {' and '.join(why)}: "
                              "differences of a few nats may be the approximation's; confirm with SMC (--backend smc)")
    if args.json:
        print(json.dumps({"models": table, "same_model": same, "unreliable": unreliable, "differences": differs,
                          "note": "log evidence in nats (free energy for "
                          "laplace, SMC estimate for smc); probability: posterior model probability with equal "
                          "prior odds over distinct models (a model fitted twice counts once, by its first fit "
                          "listed; the others have probability null)"}))
        return 0
    width = max(len(r["dir"]) for r in table)
    print(f"{'fit':<{width}s}  {'backend':<8s} {'free':>4s}  {'log evidence':>13s}  {'dF to best':>10s}  {'P(model)':>8s}")
    for r in table:
        flag = "" if r["status"] == "converged" else f"  ({r['status']})"
        p = f"{r['probability']:>8.3f}" if r["probability"] is not None else f"{'(same)':>8s}"
        print(f"{r['dir']:<{width}s}  {str(r['backend']):<8s} {r['n_free']:>4d}  {r['log_evidence']:>13.2f}  "
              f"{r['delta_to_best']:>10.2f}  {p}{'  best' if r['best'] else ''}{flag}")
    print("log evidence in nats; dF > 3 (about 20:1) is strong evidence (Kass & Raftery 1995) between different "
          "models; P(model) over distinct models ('(same)': another fit of a model listed above)")
    for line in differs:
        print(f"differs: {line}")
    for line in same:
        print(f"note: {line}")
    for line in unreliable:
        print(f"WARNING: {line}")
    return 0


#: JR parameters an NPE estimator infers by default (the gain, 1/f, floor and noise precision always).
NPE_DEFAULT_FREE = "a,b,p_mean"
#: Noise of the external input held fixed in simulated spectra for NPE (pulses/s/sqrt(Hz)): below
#: about 0.7, noise rarely kicks the model from its upper equilibrium to the lower one in a 35 s run
#: (JR 1995 constants, p = 40-85), so the stable regime keeps its damped alpha resonance.
NPE_SIMULATION_P_STD = 0.5
#: Prior of the extra log-power noise's log precision for NPE: N(log 25, 1), a box of noise sd
#: 0.06-0.6 (a Welch estimate of K segments has sd about 1/sqrt(K): 0.19 for K = 29).
NPE_LOG_PRECISION = {"dist": "normal", "mean": math.log(25.0), "sd": 1.0}


def _npe_training_problem(args):
    """The problem train-npe simulates: the grid in uV^2/Hz at a reference EEG scale, the default prior edited.

    The reference spectrum 20/f uV^2/Hz centres the default gain, 1/f and
    floor priors (their boxes span about 1.5-2 decades either way, so
    recordings of any usual amplitude lie inside; data in other units are
    converted when conditioned). For simulated spectra the input noise is
    fixed at :data:`NPE_SIMULATION_P_STD` and the gain prior is centred
    between the gains that give the reference power in the stable regime
    (p_mean = 70) and on the limit cycle (p_mean = 220), whose neural power
    differs by orders of magnitude.
    """
    import torch

    from jrinfer.data import SpectrumData
    from jrinfer.observation import SpectrumObservation
    from jrinfer.problem import InverseProblem

    if not (args.fmin > 0 and args.fmax > args.fmin and args.df > 0):
        raise UsageError(f"need 0 < fmin < fmax and df > 0, got fmin={args.fmin}, fmax={args.fmax}, df={args.df}")
    n = int(math.floor((args.fmax - args.fmin) / args.df + 1e-9)) + 1
    freqs = args.fmin + args.df * torch.arange(n, dtype=torch.float64)
    template = SpectrumData.from_arrays(
        freqs, 20.0 / freqs, units="uV^2/Hz",
        metadata={"seg_length_s": 1.0 / args.df, "reference": "20/f uV^2/Hz: the scale the default prior is centred on"},
    )
    obs = SpectrumObservation(method=args.method)
    free = tuple(s.strip() for s in args.free.split(",")) if args.free else None
    spec = obs.default_prior(template, free=free)
    spec["distributions"]["log_precision"] = dict(NPE_LOG_PRECISION)
    if args.method == "simulation" and "p_std" in spec["fixed"]:
        spec["fixed"]["p_std"] = NPE_SIMULATION_P_STD
        from jrinfer.model import PARAMETERS

        # free JR constants at their JR 1995 defaults, the medians of their priors
        centre = {k: torch.tensor(float(v), dtype=torch.float64) for k, v in spec["fixed"].items() if k in PARAMETERS}
        gains = []
        for p in (70.0, 220.0):
            neural = obs.neural_psd({**centre, "p_mean": torch.tensor(p, dtype=torch.float64)}, freqs)
            gains.append(math.sqrt(float(torch.trapezoid(template.power[0], freqs))
                                   / float(1e6 * torch.trapezoid(neural.value, freqs))))
        spec["distributions"]["gain"] = {**spec["distributions"]["gain"], "median": math.sqrt(gains[0] * gains[1])}
    if args.prior:
        spec = _merge_prior(spec, _read_prior_file(args.prior))
    if args.fix:
        spec = _merge_prior(spec, {"fixed": _parse_assignments(args.fix, "--fix")})
    return InverseProblem(obs, spec, template)


def _cmd_train_npe(args) -> int:
    from jrinfer._optional import optional_import

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"--out {args.out}: directory is not empty; pass --force to overwrite its files")
    try:
        optional_import("sbi", purpose="jrinfer train-npe")
    except ImportError as err:
        raise UsageError(str(err)) from None
    from jrinfer.backends.npe import NPE

    problem = _npe_training_problem(args)
    npe = NPE(
        n_simulations=args.simulations, chunk_size=args.chunk_size, seed=args.seed, density_estimator=args.flow,
        hidden_features=args.hidden_features, num_transforms=args.transforms,
        embedding=None if args.embedding == "none" else args.embedding, max_epochs=args.max_epochs,
        calibration_simulations=args.calibrate, summary=args.summary, progress=_progress(args),
    )
    estimator = npe.train(problem)
    estimator.save(out, overwrite=args.force)
    plotted = False
    if estimator.calibration:
        try:
            from jrinfer.plotting import plot_npe_calibration

            plot_npe_calibration(estimator.calibration, out / "calibration.png")
            plotted = True
        except ImportError:
            pass
    t = estimator.training
    cal = estimator.calibration
    report = {
        "estimator": str(out.resolve()),
        "observation": repr(problem.observation),
        "parameters": list(estimator.names),
        "prior_box": estimator.prior.to_dict(),
        "training": t,
        "calibration": None if cal is None else {k: v for k, v in cal.items() if k not in ("ranks", "ecp", "alpha")},
    }
    if args.json:
        print(json.dumps(report, default=float))
    else:
        print(estimator)
        print(f"  simulations: {t['n_valid']} of {t['n_simulations']} valid in {t['simulation_seconds']:.0f} s "
              f"({t['simulations_per_second']:.0f}/s); training {t['training_seconds']:.0f} s, {t['epochs']} epochs"
              f"{'' if t['converged'] else ' (stopped at --max-epochs before converging)'}")
        for f in t["failures"][:5]:
            print(f"  failed: {f['n']} x {f['reason']}")
        if t.get("regime_mix"):
            print("  regimes of the training draws: "
                  + ", ".join(f"{k} {100 * v['fraction']:.0f} %" for k, v in t["regime_mix"].items()))
        print(f"  calibration: {'not run (--calibrate 0)' if cal is None else cal['verdict']}")
        print(f"wrote {out}/estimator.pt, training_set.pt, metadata.json{', calibration.png' if plotted else ''}")
    return 0 if t["converged"] and (cal is None or cal["calibrated"]) else 1



def _cmd_demo(args) -> int:
    from jrinfer._demo import run_demo

    return run_demo(Path(args.out), force=args.force)


def _cmd_identifiability(args) -> int:
    import torch

    from jrinfer import identifiability as idf

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"--out {args.out}: directory is not empty; pass --force to write into it")
    fit = _identifiability_from_fit(args.from_fit) if args.from_fit else None
    if fit is not None:
        if args.kind is not None and args.kind != fit["kind"]:
            raise UsageError(f"--kind {args.kind}: the fit in --from-fit {args.from_fit} is of kind {fit['kind']}")
        args.kind = fit["kind"]
    elif args.kind is None:
        raise UsageError("--kind is required (spectrum or evoked), unless --from-fit names a fit folder")
    values = {**(fit["values"] if fit else {}), **_parse_assignments(args.set, "--set")}
    default_free = (
        "A,B,a,b,C,e0,v0,r,gain"
        if args.kind == "spectrum"
        else "A,B,a,b,C,e0,v0,r,gain,input_amplitude,input_latency,input_width"
    )
    if fit is not None and not args.free:  # the fit's own free parameters (the noise is fixed at the fit's)
        default_free = ",".join(fit["free"])
    free = [s.strip() for s in (args.free or default_free).split(",") if s.strip()]
    if fit is not None:
        grid = fit["grid"]
    elif args.kind == "spectrum":
        grid = torch.arange(args.fmin, args.fmax + 0.5 * args.df, args.df, dtype=torch.float64)
    else:
        grid = torch.arange(args.tmin, args.tmax + 0.5 * args.step, args.step, dtype=torch.float64)
    if grid.numel() < 2:
        raise UsageError("the data grid has fewer than 2 points: check --fmin/--fmax/--df or --tmin/--tmax/--step")
    for name in args.profile or ():
        if name not in free:
            raise UsageError(
                f"--profile {name}: not a free parameter; add it to --free (free now: {','.join(free)})"
            )
    noise = (args.noise if args.noise is not None else fit["noise"] if fit is not None and fit["noise"] is not None
             else (0.1 if args.kind == "spectrum" else 0.5))
    values.pop("log_precision", None)  # the noise is --noise (from the fit's log_precision with --from-fit)
    try:
        problem, theta = idf.jansen_rit_problem(args.kind, values, free, noise=noise, grid=grid,
                                                units=fit["units"] if fit else None)
    except ValueError as err:
        raise UsageError(_cli_words(str(err))) from None
    meta = {"kind": args.kind, "theta": theta, "noise": noise, "n_points": int(grid.numel())}
    if fit is not None:
        meta["from_fit"] = {"dir": str(args.from_fit), "backend": fit["backend"], "status": fit["status"]}
    report = idf.identifiability_report(problem, theta, profiles=args.profile or (), n_points=args.points, meta=meta)
    out.mkdir(parents=True, exist_ok=True)
    report.to_json(out / "report.json")
    plotted = True
    try:
        report.plot(out)
    except ImportError:
        plotted = False
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.to_text())
        if fit is not None:
            print(_identifiability_vs_fit(report.to_dict(), fit, args.from_fit))
        print(f"wrote {out}/report.json{' and plots' if plotted else ''}")
    return 0


def _identifiability_vs_fit(report: dict, fit: dict, folder: str) -> str:
    """One paragraph: the fit's contractions beside these verdicts, and why they need not agree."""
    local = (report.get("local") or {}).get("parameters") or {}
    contraction = fit.get("contraction") or {}
    prior_sd = fit.get("prior_sd_log") or {}
    text = f"the fit in {folder} ({fit['backend']}, {fit['status']}): "
    # informed in the fit (contraction >= 0.2) but not by the data alone: unidentifiable, or a Cramer-Rao sd (the
    # data alone, every other parameter free) wider than the prior's own sd in the same (log) coordinates
    null = [n for n, v in local.items() if v.get("verdict") == "not identifiable" and (contraction.get(n) or 0) >= 0.2]
    wide = [n for n, v in local.items() if n not in null and (contraction.get(n) or 0) >= 0.2
            and isinstance(v.get("sd"), (int, float)) and n in prior_sd and v["sd"] > prior_sd[n]]
    if not null and not wide:
        return text + ("every parameter it calls informed is identified here by the data alone, more tightly than "
                       "its prior")
    parts = []
    if null:
        parts.append(", ".join(f"{n} (contraction {contraction[n]:.2f})" for n in null)
                     + " informed, which the data alone cannot identify here (null directions above)")
    if wide:
        parts.append(", ".join(f"{n} (contraction {contraction[n]:.2f}; the data alone: sd {local[n]['sd']:.2g} in "
                               f"log units, its prior's {prior_sd[n]:.2g})" for n in wide)
                     + " informed, which the data alone pin down only more loosely than its prior (a sloppy "
                       "direction above)")
    return (text + "it calls " + "; and ".join(parts) + ": these contract through the data together with the priors "
            "on the parameters they trade with, not through the data alone; along those directions their "
            "posteriors restate the prior")


def _identifiability_from_fit(folder: str) -> dict:
    """The parameter set, grid, kind, units and noise of a ``jrinfer fit`` folder (for ``identifiability --from-fit``).

    Values: the prior's fixed values and the posterior means of the free
    parameters (natural units); grid: the fitted data's frequencies or times;
    noise: ``exp(-log_precision / 2)`` at the posterior mean (None without one).
    """
    import torch

    d = Path(folder)
    if not (d / "summary.json").is_file() or not (d / "posterior.nc").is_file():
        raise UsageError(f"--from-fit {folder}: not the --out folder of a 'jrinfer fit' (summary.json and posterior.nc "
                         "expected)")
    s = json.loads((d / "summary.json").read_text())
    if s.get("conditions") or (s.get("diagnostics") or {}).get("conditions"):
        raise UsageError(f"--from-fit {folder}: a condition fit; give the folder of a single-recording fit")
    from jrinfer import Posterior

    post = Posterior.from_netcdf(d / "posterior.nc")
    observed = post.observed or {}
    kind = (s.get("data") or {}).get("kind") or ("spectrum" if observed.get("coord") == "freq" else "evoked")
    values = dict((s.get("prior") or {}).get("fixed") or {})
    # the fit's point: the Gaussian's centre where the headline mean is importance-weighted (summary.json)
    values.update({k: float(v.get("gaussian_mean", v["mean"])) for k, v in (s.get("parameters") or {}).items()})
    lp = values.get("log_precision")
    return {
        "kind": kind,
        "values": values,
        "grid": torch.tensor(list(observed["coord_values"]), dtype=torch.float64),
        "free": [n for n in (s.get("parameters") or {}) if n != "log_precision"],
        "contraction": {k: v.get("contraction") for k, v in (s.get("parameters") or {}).items()},
        "prior_sd_log": {k: float(d["sd_log"]) for k, d in ((s.get("prior") or {}).get("distributions") or {}).items()
                         if isinstance(d, dict) and d.get("dist") == "lognormal" and "sd_log" in d},
        "units": observed.get("units"),
        "noise": None if lp is None else math.exp(-0.5 * float(lp)),
        "backend": s.get("backend"),
        "status": s.get("status"),
    }


def _cmd_fit_many(args) -> int:
    """``jrinfer fit-many``: :func:`jrinfer.distributed.fit_many` over a manifest, locally or on Dask."""
    from jrinfer import distributed as dist

    out = Path(args.out)
    settings = {"kind": args.kind, "backend": args.backend, "per_channel": args.per_channel,
                "options": {a.dest: getattr(args, a.dest) for a in dist.fit_option_actions() if hasattr(args, a.dest)}}
    marker = out / "fit-many.json"
    before = json.loads(marker.read_text()) if marker.is_file() else None
    changed = before is not None and before != json.loads(json.dumps(settings))
    if out.exists() and any(out.iterdir()) and not args.force:
        if before is None:
            raise UsageError(f"--out {args.out}: directory is not empty and holds no fit-many run; pass --force to "
                             "write into it")
        if changed:
            now = json.loads(json.dumps(settings))
            diff = [f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in ("kind", "backend", "per_channel")
                    if before.get(k) != now.get(k)]
            old_o, new_o = before.get("options") or {}, now.get("options") or {}
            diff += [f"--{k.replace('_', '-')}: {old_o.get(k)!r} then, {new_o.get(k)!r} now"
                     for k in sorted(set(old_o) | set(new_o)) if old_o.get(k) != new_o.get(k)]
            raise UsageError(f"--out {args.out}: holds a fit-many run with other options ({'; '.join(diff)}); use "
                             "another --out, or --force to fit every item again with these (the earlier run's results "
                             "are moved into a superseded-N folder inside it, not deleted)")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers expects a number of worker processes >= 0 (0: no Dask), got {args.workers}")
    if args.scheduler and args.workers is not None:
        raise UsageError("--workers starts a local cluster; with --scheduler the cluster's own workers are used")
    try:
        items = dist.read_manifest(args.manifest)
    except ValueError as err:
        raise UsageError(str(err).replace("manifest", "MANIFEST", 1)) from None
    options = {a.option_strings[0]: getattr(args, a.dest) for a in dist.fit_option_actions() if hasattr(args, a.dest)}
    try:  # bad options are refused before a cluster starts or DIR is touched
        specs = dist._file_specs(items, args.backend, args.kind, options, per_channel=args.per_channel)
    except ValueError as err:
        raise UsageError(_cli_words(str(err))) from None
    if changed:  # --force with other options: the finished items were fitted with the old ones; keep them aside
        moved = _supersede_fit_many_run(out, before)
        if not args.json:
            print(f"jrinfer fit-many: --out {args.out} held a run with other options; its results are now in "
                  f"{moved} and every item is fitted again", file=sys.stderr)
    resumed = sum((out / s["id"] / "result.json").is_file() for s in specs)
    client = None
    if args.scheduler or args.workers != 0:
        try:
            client = dist.dask_client(args.scheduler, n_workers=args.workers or min(os.cpu_count() or 1, len(items)))
        except ImportError:
            raise UsageError("fit-many on Dask needs dask.distributed: pip install 'jrinfer[dask]' (or --workers 0)"
                             ) from None
        except OSError as err:
            raise UsageError(f"--scheduler {args.scheduler}: cannot connect ({err})") from None
    out.mkdir(parents=True, exist_ok=True)
    from jrinfer._io import write_text

    write_text(marker, json.dumps(settings, indent=1))
    try:
        rows = dist.fit_many(items, args.backend, client=client, out=out, kind=args.kind, options=options,
                             per_channel=args.per_channel, retry_errors=args.retry_errors,
                             progress=not args.no_progress and not args.json)
    except ValueError as err:
        raise UsageError(_cli_words(str(err))) from None
    finally:
        if client is not None:
            import logging

            # the local cluster's shutdown: its nannies log "Worker process still alive ... killing" when a worker
            # takes longer than their timeout to exit; nothing is lost (every item is written), so it is not shown
            quiet = [logging.getLogger(n) for n in ("distributed", "distributed.nanny", "distributed.process")]
            levels = [q.level for q in quiet]
            for q in quiet:
                q.setLevel(logging.ERROR)
            try:
                cluster = client.cluster if not args.scheduler else None
                client.close()
                if cluster is not None:
                    cluster.close()
            finally:
                for q, level in zip(quiet, levels):
                    q.setLevel(level)
    n_err = sum(r["status"] != "ok" for r in rows)
    n_warn = sum(r["status"] == "ok" and r.get("fit_status") != "converged" for r in rows)
    group = None
    if any(len(s.get("conditions") or ()) > 1 for s in specs):  # condition fits: the group-level effects
        group = json.loads((out / "group_effects.json").read_text())
    if args.json:
        print(json.dumps({"results": str(out / "results.csv"), "n_items": len(rows), "n_errors": n_err,
                          "n_not_converged": n_warn,
                          **({"group_effects": str(out / "group_effects.json")} if group is not None else {})}))
    else:
        for r in rows:
            if r["status"] != "ok":
                print(f"jrinfer fit-many: {r['item']}: error: {r['error']}", file=sys.stderr)
        again = (f"{resumed} finished by an earlier run and kept, {len(rows) - resumed} fitted now" if resumed
                 else f"{len(rows)} fitted now")
        print(f"{len(rows)} items ({again}; {len(rows) - n_err} ok, {n_err} errors; {n_warn} with a fit status "
              f"other than converged, see fit_status in results.csv); wrote {out}/results.csv")
        if group is not None and "error" in group:
            print(f"jrinfer fit-many: no group effects: {group['error']}", file=sys.stderr)
        elif group is not None:
            from jrinfer.conditions import format_group_effects

            for line in format_group_effects(group):
                print(line)
            plot = " and group_effects.png" if (out / "group_effects.png").is_file() else ""
            print(f"wrote {out}/group_effects.json{plot}")
    if n_err:
        return 1
    return EXIT_STRICT if args.strict and n_warn else 0


def _supersede_fit_many_run(out: Path, settings: dict) -> Path:
    """Move a fit-many run's results (item folders, results.csv, fit-many.json, group effects) into
    ``out/superseded-N``.

    Used when ``--force`` reruns a folder with other options: the finished
    items must be fitted again, and nothing the earlier run wrote is deleted.
    Returns the new folder.
    """
    from jrinfer.distributed import GROUP_FILES

    n = 1
    while (out / f"superseded-{n}").exists():
        n += 1
    dest = out / f"superseded-{n}"
    dest.mkdir()
    for p in sorted(out.iterdir()):
        if p == dest or p.name.startswith("superseded-"):
            continue
        if (p.is_dir() and (p / "result.json").is_file()) or p.name in ("results.csv", "fit-many.json", *GROUP_FILES):
            p.rename(dest / p.name)
    return dest


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="override a model parameter (repeatable), e.g. --set p_mean=60 --set C=135",
    )
    p.add_argument(
        "--noise",
        default="white",
        choices=["white", "jr1995_gaussian", "jr1995_uniform"],
        help="how p_std is read: white-noise intensity (default) or JR 1995's per-step draw",
    )
    p.add_argument("--noise-on", default="input", choices=["input", "all"], help="noisy populations")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``jrinfer <cmd>: error: ...`` (no usage block), exit status 2."""

    def error(self, message):  # argparse's own: usage block, then the message
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag_words(parser, command: str, msg: str) -> str:
    """Name ``command``'s flags in a message that names their values.

    ``"dt must be > 0"`` -> ``"--dt must be > 0"``, ``"got fmin=-3"`` -> ``"got --fmin -3"``.
    """
    import re

    sub = getattr(parser, "commands", {}).get(command)
    if sub is None:
        return msg
    flags = {a.dest: max(a.option_strings, key=len) for a in sub._actions if a.option_strings}  # noqa: SLF001
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\b", msg)
    if m and m.group(1) in flags:
        msg = flags[m.group(1)] + msg[m.end():]
    return re.sub(r"(?<![-\w])([A-Za-z_][A-Za-z0-9_]*)=(?=[-+0-9.])",
                  lambda k: f"{flags[k.group(1)]} " if k.group(1) in flags else k.group(0), msg)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jrinfer", description="Bayesian inversion of the Jansen-Rit neural mass model (units: s, mV, pulses/s)."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices

    p = sub.add_parser("fixed-points", help="every equilibrium with its eigenvalues and stability")
    _add_model_args(p)
    p.set_defaults(func=_cmd_fixed_points)

    p = sub.add_parser("simulate", help="simulate v = y1 - y2 and write CSV time,v")
    _add_model_args(p)
    p.add_argument("--duration", type=float, default=10.0, help="recorded time in s (default 10)")
    p.add_argument("--dt", type=float, default=1e-4, help="integration step in s (default 1e-4)")
    p.add_argument("--transient", type=float, default=0.0, help="time in s discarded first (default 0)")
    p.add_argument("--sampling-rate", type=float, default=None, help="output rate in Hz (default 1/dt)")
    p.add_argument(
        "--method",
        default="auto",
        choices=["auto", "euler", "heun", "rk4"],
        help="integrator; auto = RK4 without noise (p_std=0), stochastic Heun with noise",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--out", default=None, help="CSV file to write (columns time, v [mV])")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("spectrum", help="power spectral density of v (mV^2/Hz), CSV freq,power")
    _add_model_args(p)
    p.add_argument("--fmin", type=float, default=1.0, help="lowest frequency in Hz (default 1)")
    p.add_argument("--fmax", type=float, default=40.0, help="highest frequency in Hz (default 40)")
    p.add_argument("--df", type=float, default=0.25, help="frequency step in Hz (default 0.25)")
    p.add_argument(
        "--method",
        default="transfer",
        choices=["transfer", "simulation"],
        help="linearised transfer function (stable equilibria) or simulation + Welch",
    )
    p.add_argument("--dt", type=float, default=1e-4, help="integration step in s for --method simulation")
    p.add_argument("--duration", type=float, default=60.0, help="simulated time in s for --method simulation")
    p.add_argument("--transient", type=float, default=2.0, help="discarded time in s for --method simulation")
    p.add_argument("--seed", type=int, default=0, help="noise seed for --method simulation")
    p.add_argument("--out", default=None, help="CSV file to write (columns freq, power [mV^2/Hz])")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=_cmd_spectrum)

    p = sub.add_parser("fit", help="fit the JR model to a spectrum or evoked response; writes summary.json, posterior.nc")
    p.add_argument(
        "data", metavar="DATA", nargs="+",
        help="CSV (freq,power[,...]; time,value[,...]: an ERP, or with --kind spectrum a text recording whose Welch "
             "spectrum is fitted) or an EEG file MNE reads; several files with --conditions "
        "to fit them jointly",
    )
    p.add_argument(
        "--conditions", default=None, metavar="NAME,NAME[,...]",
        help="one name per DATA file (the first is the reference), e.g. rest,task: fit the conditions jointly with "
        "the --vary parameters allowed to differ",
    )
    p.add_argument(
        "--vary", default=None, metavar="NAME[,NAME...]",
        help="with --conditions: parameters that may differ between conditions (log-ratio differences; additive "
        "for v0, input_latency, baseline); each is reported with its interval and log Bayes factor",
    )
    p.add_argument("--kind", required=True, choices=["spectrum", "evoked"], help="what DATA holds / what to fit")
    p.add_argument(
        "--backend", default="laplace", choices=["laplace", "nuts", "smc", "npe"], help="inference backend"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument(
        "--picks",
        "--channels",
        dest="channels",
        default=None,
        help="comma-separated channel names, matched ignoring case, an 'EEG ' prefix, a reference suffix "
        "(-A1, -REF) and trailing dots (O1 finds 'EEG O1-A1' and 'O1..'); default: the EEG channels, leaving out "
        "non-EEG (ECG, EOG, ...) and reference-only (A2-A1) channels",
    )
    p.add_argument(
        "--exclude",
        default=None,
        metavar="LO-HI[,LO-HI]",
        help="spectrum: frequency bands in Hz to leave out, e.g. a notch or line noise: 49-51,99-101",
    )
    p.add_argument(
        "--segment",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"EEG files, spectrum: Welch segment length in s (default {_DEFAULT_SEGMENT:g}; resolution 1/SECONDS Hz)",
    )
    p.add_argument("--no-average", action="store_true", help="fit channels jointly instead of their average")
    p.add_argument("--fmin", type=float, default=None,
                   help="lowest frequency in Hz (EEG files: default 2; not below the recording's high-pass filter)")
    p.add_argument("--fmax", type=float, default=None,
                   help="highest frequency in Hz (EEG files: default 40 or the recording's low-pass filter if lower; "
                   "not above it)")
    p.add_argument("--tmin", type=float, default=None, help="evoked: first time in s")
    p.add_argument("--tmax", type=float, default=None, help="evoked: last time in s")
    p.add_argument(
        "--units",
        default=None,
        help="units of CSV data (uV^2/Hz, mV^2/Hz, V^2/Hz; uV, mV, V) unless the header names them "
        "('power [uV^2/Hz]'); without either, uV^2/Hz (uV) is assumed only for plausible EEG values, with a warning; "
        "a single-trial table (label,condition,time,<channels>) is read in V unless --units says otherwise",
    )
    p.add_argument("--n-segments", type=int, default=None, help="number of Welch segments behind a CSV spectrum")
    p.add_argument("--condition", default=None, help="evoked FIF: which condition (default the first)")
    p.add_argument(
        "--events", default=None, metavar="annotations|STIM_CHANNEL",
        help="evoked from a continuous recording: where the events are (default annotations)",
    )
    p.add_argument(
        "--event-id", default=None, metavar="NAME_OR_CODE",
        help="evoked from a continuous recording: the annotation or trigger code to epoch around; for a single-trial "
        "table (CSV with Label, Condition, Time): the condition, or a tag such as audio for audio/left+audio/right; "
        "with --conditions and one DATA file, one per condition (e.g. audio,visual)",
    )
    p.add_argument(
        "--baseline", default=None, metavar="START,END",
        help="evoked from a continuous recording: baseline in s (default: epoch start to 0; write --baseline=-0.1,0; "
        "'none' for no correction)",
    )
    p.add_argument(
        "--reject", type=float, default=None, metavar="PEAK_TO_PEAK",
        help="evoked from a continuous recording: drop epochs whose EEG peak-to-peak exceeds this (in --units, "
        "default uV); the count rejected goes to summary.json",
    )
    p.add_argument(
        "--rest", default=None, choices=["auto", "upper"],
        help="evoked: the resting state a response starts from: auto (default: the high equilibrium where it is "
        "stable, else the low one on the lower branch) or upper (the high equilibrium only; the lower branch is "
        "outside the model, so the posterior stays in one resting state); compare the two fits' evidence with "
        "jrinfer compare",
    )
    p.add_argument("--method", default=None, choices=["transfer", "simulation"],
                   help="spectral model (default transfer; npe: fixed by the estimator)")
    p.add_argument("--free", default=None, help="comma-separated JR parameters to fit (default A,B,a,b,C,p_mean)")
    p.add_argument(
        "--prior",
        default=None,
        metavar="FILE",
        help="JSON or TOML prior in the schema of summary.json's 'prior' ({distributions: {name: {dist, ...}}, "
        "fixed: {name: value}}); its entries replace the default prior's for the same names",
    )
    p.add_argument(
        "--fix", action="append", metavar="NAME=VALUE", help="hold any parameter (JR or observation, e.g. gain) fixed"
    )
    p.add_argument("--max-iter", type=int, default=128, help="maximum variational Laplace iterations")
    p.add_argument(
        "--starts", type=int, default=None, metavar="N",
        help="laplace: at most N Gauss-Newton runs (from the prior mean and the best distinct screened prior draws; "
        "three that agree end the search); the "
        "optimum with the highest free energy is kept, the others are listed in summary.json's "
        "diagnostics.optima (default 16; 1: the prior mean only)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior draws")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress on stderr (default: a bar when stderr is a terminal, else one-line messages: laplace a line "
        "per start and every 10 s of iterations, nuts and smc a start line with the measured cost of one "
        "evaluation, a line every 10 s or per tempering stage, and an end line with divergences / R-hat); "
        "--progress: the bars; --no-progress: the one-line messages only (npe --rounds: no bars); --quiet: nothing",
    )
    p.add_argument("--chains", type=int, default=None, help="nuts, smc: independent chains (default 4)")
    p.add_argument(
        "--boundary",
        choices=("pole", "hopf"),
        default=None,
        help="nuts, transfer-method spectra: sampler coordinates for posteriors cut by the Hopf boundary (a sharp "
        "alpha peak; variational Laplace warns when its draws fall past it): 'pole' samples the dominant pole's "
        "log damping and frequency in place of C and b (needs both free; ~10 ms per gradient), 'hopf' maps p_mean "
        "onto its stable interval (README: Posteriors cut by the Hopf boundary)",
    )
    p.add_argument("--tune", type=int, default=None, help="nuts: tuning iterations per chain (default 1000)")
    p.add_argument("--target-accept", type=float, default=None,
                   help="nuts: target mean acceptance probability (default 0.9); raise it (0.95, 0.99) when the fit "
                        "reports divergent transitions")
    p.add_argument("--draws", type=int, default=None,
                   help="nuts: kept draws per chain (default 1000); smc: particles per chain (default 2000); npe: "
                        f"posterior draws (default 1000; with --smc the particles, default {NPE_SMC_PARTICLES})")
    p.add_argument("--json", action="store_true", help="print summary.json on stdout")
    p.add_argument(
        "--resample",
        action="store_true",
        help="laplace: return the Pareto-smoothed importance-resampled draws (closer to the true posterior "
        "when the Gaussian's k-hat is high)",
    )
    p.add_argument("--report", action="store_true", help="also write --out/report.html (as 'jrinfer report' does)")
    p.add_argument("--strict", action="store_true",
                   help=f"exit with status {EXIT_STRICT} when the fit completed but its status is not 'converged' "
                   "(a misfit, or Pareto k-hat > 0.7); without it such a fit exits 0 with its warnings")
    p.add_argument("--quiet", action="store_true",
                   help="no progress output (tqdm on a terminal, one-line progress messages otherwise)")
    p.add_argument("--estimator", default=None, metavar="DIR",
                   help="npe: a trained estimator (jrinfer train-npe --out DIR); EEG files get its grid by default")
    p.add_argument("--resample-grid", action="store_true",
                   help="npe: interpolate a spectrum on another frequency grid onto the estimator's (default: refuse)")
    p.add_argument("--rounds", type=int, default=0,
                   help="npe: truncated sequential rounds for this recording on top of the estimator (TSNPE; the "
                   "result is for this recording only, the estimator on disk is not changed; default 0)")
    p.add_argument("--simulations-per-round", type=int, default=3000,
                   help="npe: simulations per truncated round (default 3000)")
    p.add_argument("--importance-sampling", action="store_true",
                   help="npe: correct the flow by neural importance sampling (5000 flow draws weighted by prior x "
                   "likelihood / flow density, Pareto-smoothed, resampled; Pareto k-hat > 0.7 gives status warning). "
                   "Works only where the flow is close to the posterior: on JR spectra from estimators of a few "
                   "thousand simulations it is not (k-hat 7-76), and --smc is the correction that works")
    p.add_argument("--smc", action="store_true",
                   help="npe: correct the flow by tempered sequential Monte Carlo: its draws are moved in stages to "
                   "prior x likelihood, which works where the flow is much wider than the posterior and importance "
                   f"sampling fails; costs 60-130 likelihood evaluations (simulations) per particle ({NPE_SMC_PARTICLES} "
                   "particles on a 30 s spectrum: about 3-6 min on 2 cores); not amortized")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser(
        "train-npe",
        help="simulate and train an amortized neural posterior estimator (sbi); writes DIR/estimator.pt, "
        "training_set.pt (its simulations, for --rounds), metadata.json",
        description="Simulate and train an amortized neural posterior estimator (sbi); writes DIR/estimator.pt and "
        "metadata.json. Exit status 0 when training converged and the calibration check (SBC/TARP on held-out "
        "simulations) passed; 1 when either failed (the estimator is written all the same; read the verdict); 2 for "
        "bad input.",
    )
    p.add_argument("--kind", required=True, choices=["spectrum"], help="what the estimator will fit")
    p.add_argument("--method", default="simulation", choices=["transfer", "simulation"],
                   help="spectral model of the simulations: simulation (every regime, the default) or transfer "
                   "(stable regime only; oscillatory draws fail and are left out)")
    p.add_argument("--simulations", type=int, default=10_000, help="training simulations (default 10000)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--fmin", type=float, default=2.0, help="frequency grid: lowest frequency in Hz (default 2)")
    p.add_argument("--fmax", type=float, default=40.0, help="frequency grid: highest frequency in Hz (default 40)")
    p.add_argument("--df", type=float, default=0.5,
                   help="frequency grid: step in Hz (default 0.5, i.e. Welch segments of 1/df = 2 s)")
    p.add_argument("--free", default=NPE_DEFAULT_FREE,
                   help=f"comma-separated JR parameters to infer (default {NPE_DEFAULT_FREE}: with A, B, C free too, "
                   "the regime boundaries move with them and a spectrum informs the estimator far less per simulation)")
    p.add_argument("--prior", default=None, metavar="FILE", help="JSON or TOML prior replacing default entries")
    p.add_argument("--fix", action="append", metavar="NAME=VALUE", help="hold a parameter fixed (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulations and the training (default 0)")
    p.add_argument("--chunk-size", type=int, default=500, help="simulations per chunk (part of the seeding; default 500)")
    p.add_argument("--flow", default="maf", choices=["maf", "nsf"], help="normalising flow (default maf)")
    p.add_argument("--hidden-features", type=int, default=50, help="flow width (default 50)")
    p.add_argument("--transforms", type=int, default=5, help="flow transforms (default 5)")
    p.add_argument("--embedding", default="none", choices=["none", "mlp"],
                   help="features straight into the flow, or through a small trained MLP (default none)")
    p.add_argument("--summary", default="log_power+shape", choices=["log_power", "log_power+shape"],
                   help="features the flow sees: log-power on the grid and the spectral-shape features (peak "
                   "frequency, half-power width, height, harmonic excess at 2f, flatness; the default), or log-power only")
    p.add_argument("--max-epochs", type=int, default=300, help="training epochs at most (default 300)")
    p.add_argument("--calibrate", type=int, default=200, metavar="N",
                   help="held-out simulations for SBC and TARP after training (default 200; 0 skips)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress on stderr (default: bars when stderr is a terminal, else one-line messages: a line at the "
        "start of the simulations, the training and the calibration, one at most every 10 s while each runs, and one "
        "at its end); --progress: the bars; --no-progress: the one-line messages only; --quiet: nothing",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the training report as JSON")
    p.set_defaults(func=_cmd_train_npe)

    p = sub.add_parser(
        "report", help="a self-contained HTML page of a fit folder (summary.json, posterior.nc): DIR/report.html"
    )
    p.add_argument("dir", metavar="DIR", help="the --out folder of 'jrinfer fit'")
    p.add_argument("--out", default=None, metavar="FILE", help="HTML file to write (default DIR/report.html)")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")
    p.add_argument("--json", action="store_true", help='print {"report": PATH} on stdout')
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "identifiability",
        help="which parameters and combinations a spectrum or ERP can pin down at a parameter set; writes report.json",
        description="Local identifiability from the Fisher information of the data alone (no prior), in the "
                    "prior's unconstrained (log) coordinates. Verdicts per parameter: 'not identifiable' (it has "
                    "weight in a structural null direction: some combination with others leaves the prediction "
                    "unchanged), 'weak' (Cramer-Rao sd above 1 in those coordinates, a factor e either way), "
                    "'identified' otherwise. A fit can still contract a parameter the data alone do not identify: "
                    "through the priors on the parameters it trades with (--from-fit says which).",
    )
    p.add_argument("--kind", default=None, choices=["spectrum", "evoked"],
                   help="observation model (required unless --from-fit)")
    p.add_argument(
        "--from-fit", default=None, metavar="DIR",
        help="the --out folder of a 'jrinfer fit': its posterior means (and fixed values) as the parameter set, its "
             "data's grid, kind and units, its noise (log_precision) and its free parameters; --set, --noise and "
             "--free still apply",
    )
    p.add_argument(
        "--set", action="append", metavar="NAME=VALUE",
        help="parameter value (JR constants or observation parameters such as gain), repeatable",
    )
    p.add_argument(
        "--free", default=None,
        help="comma-separated free parameters (default: every JR constant and gain; evoked adds the input pulse)",
    )
    p.add_argument(
        "--noise", type=float, default=None,
        help="noise sd: of log-power for spectra (default 0.1), in uV for ERPs (default 0.5)",
    )
    p.add_argument("--fmin", type=float, default=2.0, help="spectrum grid: lowest frequency in Hz (default 2)")
    p.add_argument("--fmax", type=float, default=40.0, help="spectrum grid: highest frequency in Hz (default 40)")
    p.add_argument("--df", type=float, default=0.25, help="spectrum grid: step in Hz (default 0.25)")
    p.add_argument("--tmin", type=float, default=-0.1, help="evoked grid: first time in s (default -0.1)")
    p.add_argument("--tmax", type=float, default=0.5, help="evoked grid: last time in s (default 0.5)")
    p.add_argument("--step", type=float, default=0.001, help="evoked grid: sampling step in s (default 0.001)")
    p.add_argument("--profile", action="append", metavar="NAME", help="also profile this parameter (repeatable)")
    p.add_argument("--points", type=int, default=20, help="grid points per profile (default 20)")
    p.add_argument("--out", required=True, help="output directory (report.json and plots)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--json", action="store_true", help="print report.json on stdout")
    p.set_defaults(func=_cmd_identifiability)

    p = sub.add_parser(
        "compare", help="log evidences (free energies) of fits of the same data side by side, with model probabilities",
        description="Log evidences (free energies) of fits of the same data side by side: difference to the best and "
        "posterior model probabilities (equal prior odds). Fits of other data, or without a log evidence (NUTS), "
        "are refused.",
    )
    p.add_argument("dirs", metavar="DIR", nargs="+", help="--out folders of 'jrinfer fit' (laplace or smc)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=_cmd_compare)

    _add_fit_many_parser(sub)

    p = sub.add_parser("demo", help="the README's main job on the bundled example")
    p.add_argument("--out", default="jrinfer-demo", help="output directory (default ./jrinfer-demo)")
    p.add_argument("--force", action="store_true", help="overwrite files in --out")
    p.set_defaults(func=_cmd_demo)
    return parser


def _add_fit_many_parser(sub) -> None:
    """``jrinfer fit-many``: its own options, then every ``jrinfer fit`` option as a default for all items."""
    from jrinfer.distributed import fit_option_actions

    p = sub.add_parser(
        "fit-many",
        help="fit a cohort listed in a manifest CSV, one task per row, locally or on Dask; writes DIR/results.csv",
        description="Fit every recording listed in MANIFEST (a CSV with a 'path' column; optional columns named "
        "like jrinfer fit's options, e.g. units, picks, fmin, fmax, condition, fix as NAME=VALUE;NAME=VALUE, "
        "override the defaults per row; other columns are copied to results.csv). Each item is written to "
        "DIR/<row>-<name>/ when it finishes; DIR/results.csv has one row per item (status ok or error). "
        "Running again with the same DIR resumes: finished items are skipped. Runs on a local Dask cluster "
        "(one worker process per core) unless --scheduler ADDRESS or --workers 0 (no Dask). With --conditions "
        "rest,task --vary ..., each row names one file per condition in columns path_rest,path_task (instead of "
        "path) and is fitted jointly as jrinfer fit does; the group effects over the rows (fixed effects: Bayesian "
        "parameter averaging and summed log Bayes factors; random effects: a t-test on the subjects' means) are "
        "printed and written to DIR/group_effects.json and group_effects.png.",
    )
    p.add_argument("manifest", metavar="MANIFEST", help="CSV with a 'path' column, or path_<condition> columns with "
                   "--conditions (paths relative to the manifest)")
    p.add_argument("--kind", required=True, choices=["spectrum", "evoked"], help="what the files hold")
    p.add_argument("--backend", default="laplace", choices=["laplace", "nuts", "smc", "npe"],
                   help="inference backend (npe: with --estimator DIR, one trained estimator conditioned on every item)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (resumed if it holds a run)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running Dask scheduler (tcp://host:8786); default: a local cluster")
    p.add_argument("--workers", type=int, default=None,
                   help="local cluster: worker processes (default: cores, at most one per item); 0: no Dask, "
                   "fit in this process")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty DIR that holds no fit-many run; for a run with other options, fit "
                        "every item again (the earlier results move to DIR/superseded-N, nothing is deleted)")
    p.add_argument("--per-channel", action="store_true",
                   help="one item per channel of each row's --picks (or picks column) instead of their average")
    p.add_argument("--retry-errors", action="store_true", help="resuming: fit the items that ended in an error again")
    p.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                   help="no progress bar (the items' fits are always quiet)")
    p.add_argument("--strict", action="store_true",
                   help=f"exit with status {EXIT_STRICT} when every row ran but some fit's status (results.csv "
                   "fit_status) is not 'converged'")
    p.add_argument("--json", action="store_true",
                   help='print {"results": PATH, "n_items", "n_errors", "n_not_converged"} on stdout')
    group = p.add_argument_group("defaults for every item (options of jrinfer fit)")
    for action in fit_option_actions(sub.choices["fit"]):
        copy = argparse.Action.__new__(type(action))
        copy.__dict__.update(action.__dict__)
        copy.default = argparse.SUPPRESS
        group._add_action(copy)
    p.set_defaults(func=_cmd_fit_many)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jrinfer`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ValueError, TypeError, OSError, RuntimeError) as err:
        if args.debug:
            raise
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        msg = _flag_words(parser, args.command, msg)  # name the flag where the message names its value
        print(f"jrinfer {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
