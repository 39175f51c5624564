"""Command line interface: ``jrinfer fixed-points | simulate | spectrum | fit | train-npe | report | identifiability | demo``.

Every command exits with status 2 and a one-line message on stderr when its
input is bad (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

__all__ = ["main"]


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
        _write_csv(out, ["time", "v"], [sim.time, sim.v])
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
        _write_csv(out, ["freq", "power"], [freqs, psd])
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
        names = re.findall(r"'([^']*)'", m.group(1))
        return "--picks " + ",".join(names)

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
    for w in md.get("warnings", []):
        print(f"jrinfer {args.command}: warning: {w}", file=sys.stderr)
    return data


def _read_data(args, path: Path):
    from jrinfer.data import MIN_FIT_FREQS, EvokedData, SpectrumData

    channels = [c.strip() for c in args.channels.split(",") if c.strip()] if args.channels else None
    bands = _parse_bands(getattr(args, "exclude", None))
    segment = getattr(args, "segment", None)
    if segment is not None and not (math.isfinite(segment) and segment > 0):
        raise UsageError(f"--segment expects a Welch segment length in s > 0; got {segment:g}")
    if bands and args.kind != "spectrum":
        raise UsageError("--exclude applies to --kind spectrum only (frequency bands in Hz)")
    name = path.name.lower()
    if name.endswith(".csv"):
        if segment is not None:
            raise UsageError("--segment applies to EEG recordings; a CSV spectrum is already estimated")
        if args.kind == "spectrum":
            data = SpectrumData.from_csv(
                path, units=args.units, n_segments=args.n_segments, exclude=bands, fmin=args.fmin, fmax=args.fmax
            )
            if channels is not None:
                channels = [_match_channel(c, list(data.channel_names)) for c in channels]
            data = data.select(channels=channels, fmin=args.fmin, fmax=args.fmax)
            if channels is not None:
                data.metadata["channels_used"] = list(data.channel_names)
        else:
            data = EvokedData.from_csv(path, units=args.units)
            if channels is not None:
                channels = [_match_channel(c, list(data.channel_names)) for c in channels]
            data = data.select(channels=channels, tmin=args.tmin, tmax=args.tmax)
    elif name.endswith(_EEG_SUFFIXES):
        try:
            import mne
        except ImportError:
            raise UsageError("reading EEG files needs MNE: pip install 'jrinfer[eeg]'") from None
        mne.set_log_level("ERROR")
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
            channels = [_match_channel(c, inst.ch_names) for c in channels]
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
        raise UsageError(
            f"DATA {args.data}: unknown file type; expected .csv or an EEG file MNE reads ({', '.join(_EEG_SUFFIXES)})"
        )
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


def _match_channel(name: str, available: list[str]) -> str:
    """The channel ``name`` means: exact, else after normalisation (``O1`` -> ``EEG O1-A1``, ``O1..``).

    Raises UsageError naming the available channels (or the ambiguous matches).
    """
    from jrinfer import _datachecks

    try:
        return _datachecks.match_channel("--picks", name, available)
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


def _fit_problem(args, data):
    """The default problem of ``data`` (with --free, --prior, --fix) and its posterior from --backend laplace|nuts|smc."""
    from jrinfer.observation import EvokedObservation, SpectrumObservation
    from jrinfer.problem import InverseProblem

    if args.kind == "spectrum":
        obs = SpectrumObservation(method=args.method or "transfer")
    else:
        obs = EvokedObservation()
    free = tuple(s.strip() for s in args.free.split(",")) if args.free else None
    spec = obs.default_prior(data, free=free)
    if args.prior:
        spec = _merge_prior(spec, _read_prior_file(args.prior))
    if args.fix:
        spec = _merge_prior(spec, {"fixed": _parse_assignments(args.fix, "--fix")})
    problem = InverseProblem(obs, spec, data)
    prior = problem.prior
    from jrinfer.backends.laplace import VariationalLaplace

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is reported in summary.json
        if args.backend == "nuts":  # PyMC backends: R-hat, ESS, divergences land in summary["diagnostics"]
            from jrinfer.backends.pymc import NUTS

            posterior = NUTS(seed=args.seed, progress=args.progress).fit(problem)
        elif args.backend == "smc":
            from jrinfer.backends.pymc import SMC

            posterior = SMC(seed=args.seed, progress=args.progress).fit(problem)
        else:
            posterior = VariationalLaplace(progress=args.progress, max_iter=args.max_iter).fit(
                problem, seed=args.seed, resample=args.resample
            )
    return problem, posterior


def _npe_estimator(args):
    """The trained estimator of ``--backend npe --estimator DIR`` (None for other backends).

    Options fixed at training time are refused; for EEG files the Welch
    segment and the frequency window default to the estimator's grid (and a
    CSV is cropped to it), so that the data land on the grid it was trained on.
    """
    if args.backend != "npe":
        if args.estimator is not None or args.resample_grid:
            raise UsageError("--estimator and --resample-grid apply to --backend npe")
        return None
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
        if args.segment is None and seg is not None and not str(args.data).lower().endswith(".csv"):
            args.segment = float(seg)
    return estimator


def _npe_summary(estimator_dir: str, posterior) -> dict:
    """The NPE block of summary.json: estimator, calibration verdict, regimes and training failures."""
    d = posterior.diagnostics
    t = d["training"]
    cal = d.get("calibration")
    mix = d.get("regime_mix")
    regime = ""
    if mix:
        regime = "; posterior regimes " + ", ".join(f"{k} {100 * v['fraction']:.0f} %" for k, v in mix.items()
                                                    if v["fraction"] > 0)
    return {
        "estimator": str(Path(estimator_dir).resolve()),
        "calibration": None if cal is None else cal["verdict"],
        "calibrated": None if cal is None else cal["calibrated"],
        "regime": d.get("regime"),
        "regime_mix": mix,
        "training_simulations": t["n_simulations"],
        "training_failures": t["failures"],
        "training_regime_mix": t.get("regime_mix"),
        "out_of_distribution": d.get("out_of_distribution", {}).get("outside"),
        "headline": (f"{t['n_valid']} of {t['n_simulations']} training simulations valid; calibration: "
                     f"{'not run' if cal is None else cal['verdict']}{regime}"),
    }


def _fit_npe(args, estimator, data):
    """Condition the estimator on ``data``; the problem it built and the posterior."""
    try:
        problem = estimator.problem_for(data, resample=args.resample_grid)
        posterior = estimator.condition(data, seed=args.seed, resample=args.resample_grid)
    except ValueError as err:
        raise UsageError(_cli_words(str(err).splitlines()[0])) from None
    return problem, posterior


def _cmd_fit(args) -> int:
    import torch  # noqa: F401  (torch is a core dependency; imported here to keep --help fast)

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"--out {args.out}: directory is not empty; pass --force to overwrite its files")
    estimator = _npe_estimator(args)
    data = _load_data(args)
    if estimator is not None:
        problem, posterior = _fit_npe(args, estimator, data)
    else:
        problem, posterior = _fit_problem(args, data)
    obs, prior = problem.observation, problem.prior
    summary = posterior.summary()
    summary["free_energy"] = posterior.log_evidence
    summary["n_iter"] = posterior.diagnostics.get("n_iter")
    observed = problem.observed()
    summary["data"] = {
        "file": str(Path(args.data).resolve()),
        "kind": args.kind,
        "channels": list(observed.channels),
        "units": observed.units,
        "n_points": int(observed.values.shape[-1]),
        "channels_used": data.metadata.get("channels_used"),
        "channels_dropped": data.metadata.get("channels_dropped"),
    }
    summary["prior"] = prior.to_dict()
    if estimator is None:
        summary["prior_validity"] = problem.prior_validity(1000, seed=args.seed)
    else:  # the training simulations already tell how much of the prior box the observation can predict
        summary["npe"] = _npe_summary(args.estimator, posterior)
        t = estimator.training
        summary["prior_validity"] = {"n_samples": t["n_simulations"], "invalid_fraction": t["failed_fraction"],
                                     "reasons": [f["reason"] for f in t["failures"][:3]]}
    summary["observation"] = repr(obs)
    from jrinfer.identifiability import headline

    summary["identifiability"] = headline(posterior, prior)
    out.mkdir(parents=True, exist_ok=True)
    from jrinfer._io import write_text

    write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    posterior.to_netcdf(out / "posterior.nc", overwrite=True)
    plotted = False
    try:
        from jrinfer.plotting import plot_fit

        plot_fit(posterior, out / "fit.png", title=f"{Path(args.data).name}: {posterior.backend} ({posterior.status})")
        plotted = True
    except ImportError:
        pass
    report = _write_fit_report(out, args.force) if args.report else None
    if args.json:
        print(json.dumps(summary, default=float))
    else:
        print(posterior)
        if "npe" in summary:
            print(f"  NPE: {summary['npe']['headline']}")
        print(f"  {summary['identifiability']} (see jrinfer identifiability for the structural trade-offs)")
        print(f"wrote {out}/summary.json, posterior.nc{', fit.png' if plotted else ''}{', report.html' if report else ''}")
    if args.json:  # the printed summary shows them otherwise
        for w in posterior.warnings:
            print(f"jrinfer fit: warning: {w}", file=sys.stderr)
    return 0 if posterior.converged else 1


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
        calibration_simulations=args.calibrate, progress=not args.no_progress,
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
        print(f"wrote {out}/estimator.pt, metadata.json{', calibration.png' if plotted else ''}")
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
    values = _parse_assignments(args.set, "--set")
    default_free = (
        "A,B,a,b,C,e0,v0,r,gain"
        if args.kind == "spectrum"
        else "A,B,a,b,C,e0,v0,r,gain,input_amplitude,input_latency,input_width"
    )
    free = [s.strip() for s in (args.free or default_free).split(",") if s.strip()]
    if args.kind == "spectrum":
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
    noise = args.noise if args.noise is not None else (0.1 if args.kind == "spectrum" else 0.5)
    problem, theta = idf.jansen_rit_problem(args.kind, values, free, noise=noise, grid=grid)
    meta = {"kind": args.kind, "theta": theta, "noise": noise, "n_points": int(grid.numel())}
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
        print(f"wrote {out}/report.json{' and plots' if plotted else ''}")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jrinfer", description="Bayesian inversion of the Jansen-Rit neural mass model (units: s, mV, pulses/s)."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.add_argument("--out", default=None, help="CSV file to write (columns time,v)")
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
    p.add_argument("--out", default=None, help="CSV file to write (columns freq,power)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=_cmd_spectrum)

    p = sub.add_parser("fit", help="fit the JR model to a spectrum or evoked response; writes summary.json, posterior.nc")
    p.add_argument("data", metavar="DATA", help="CSV (freq,power[,...] or time,value[,...]) or an EEG file MNE reads")
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
        "('power [uV^2/Hz]'); without either, uV^2/Hz (uV) is assumed only for plausible EEG values, with a warning",
    )
    p.add_argument("--n-segments", type=int, default=None, help="number of Welch segments behind a CSV spectrum")
    p.add_argument("--condition", default=None, help="evoked FIF: which condition (default the first)")
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
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior draws")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--json", action="store_true", help="print summary.json on stdout")
    p.add_argument(
        "--resample",
        action="store_true",
        help="laplace: return the Pareto-smoothed importance-resampled draws (closer to the true posterior "
        "when the Gaussian's k-hat is high)",
    )
    p.add_argument("--report", action="store_true", help="also write --out/report.html (as 'jrinfer report' does)")
    p.add_argument("--estimator", default=None, metavar="DIR",
                   help="npe: a trained estimator (jrinfer train-npe --out DIR); EEG files get its grid by default")
    p.add_argument("--resample-grid", action="store_true",
                   help="npe: interpolate a spectrum on another frequency grid onto the estimator's (default: refuse)")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser(
        "train-npe",
        help="simulate and train an amortized neural posterior estimator (sbi); writes DIR/estimator.pt, metadata.json",
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
    p.add_argument("--max-epochs", type=int, default=300, help="training epochs at most (default 300)")
    p.add_argument("--calibrate", type=int, default=200, metavar="N",
                   help="held-out simulations for SBC and TARP after training (default 200; 0 skips)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
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
    )
    p.add_argument("--kind", required=True, choices=["spectrum", "evoked"], help="observation model")
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

    p = sub.add_parser("demo", help="the README's main job on the bundled example")
    p.add_argument("--out", default="jrinfer-demo", help="output directory (default ./jrinfer-demo)")
    p.add_argument("--force", action="store_true", help="overwrite files in --out")
    p.set_defaults(func=_cmd_demo)
    return parser


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
        print(f"jrinfer {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
