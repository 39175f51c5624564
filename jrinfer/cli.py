"""Command line interface: ``jrinfer fixed-points | simulate | spectrum | demo``.

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


def _parse_sets(items: list[str] | None) -> dict[str, float]:
    from jrinfer.model import PARAMETERS

    out: dict[str, float] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--set expects NAME=VALUE, got {item!r}")
        name, value = (s.strip() for s in item.split("=", 1))
        if name not in PARAMETERS:
            import difflib

            close = difflib.get_close_matches(name, list(PARAMETERS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"--set: unknown parameter {name!r}{hint}; known: {', '.join(PARAMETERS)}")
        try:
            x = float(value)
        except ValueError:
            raise UsageError(f"--set {name}: expected a number, got {value!r}") from None
        if not math.isfinite(x):
            raise UsageError(f"--set {name}: expected a finite number, got {value!r}")
        out[name] = x
    return out


def _model(args):
    from jrinfer.model import JansenRit

    return JansenRit(noise=args.noise, noise_on=args.noise_on, **_parse_sets(args.set))


def _prepare_out_file(path: str, force: bool) -> Path:
    out = Path(path)
    if out.exists() and not force:
        raise UsageError(f"--out {path}: file exists; pass --force to overwrite it")
    if out.parent and not out.parent.exists():
        raise UsageError(f"--out {path}: directory {str(out.parent)!r} does not exist")
    return out


def _write_csv(path: Path, header: list[str], columns) -> None:
    import numpy as np

    data = np.column_stack([np.asarray(c, dtype=float) for c in columns])
    tmp = path.with_name(path.name + ".tmp")
    np.savetxt(tmp, data, delimiter=",", header=",".join(header), comments="", fmt="%.10g")
    os.replace(tmp, path)


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


def _load_data(args):
    """Read DATA as SpectrumData or EvokedData (CSV, or any format MNE reads)."""
    from jrinfer.data import EvokedData, SpectrumData

    path = Path(args.data)
    if not path.exists():
        raise UsageError(f"DATA {args.data}: no such file")
    channels = [c.strip() for c in args.channels.split(",")] if args.channels else None
    name = path.name.lower()
    if name.endswith(".csv"):
        if args.kind == "spectrum":
            data = SpectrumData.from_csv(path, units=args.units or "uV^2/Hz", n_segments=args.n_segments)
            data = data.select(channels=channels, fmin=args.fmin, fmax=args.fmax)
        else:
            data = EvokedData.from_csv(path, units=args.units or "uV")
            data = data.select(channels=channels, tmin=args.tmin, tmax=args.tmax)
    elif name.endswith(_EEG_SUFFIXES):
        try:
            import mne
        except ImportError:
            raise UsageError("reading EEG files needs MNE: pip install 'jrinfer[eeg]'") from None
        mne.set_log_level("ERROR")
        try:
            if args.kind == "spectrum":
                inst = mne.io.read_raw(path, preload=True, verbose="error")
            else:
                evokeds = mne.read_evokeds(path, verbose="error")
                inst = evokeds[args.condition] if args.condition is not None else evokeds[0]
        except Exception as err:  # MNE raises many types for unreadable files
            raise UsageError(f"DATA {args.data}: not readable as EEG by MNE ({type(err).__name__}: {err})") from None
        if channels is not None:
            channels = [_match_channel(c, inst.ch_names) for c in channels]
        if args.kind == "spectrum":
            fmin = 2.0 if args.fmin is None else args.fmin
            fmax = 40.0 if args.fmax is None else args.fmax
            data = SpectrumData.from_mne(inst, picks=channels, fmin=fmin, fmax=fmax, units=args.units or "uV^2/Hz")
        else:
            data = EvokedData.from_mne(inst, picks=channels, tmin=args.tmin, tmax=args.tmax, units=args.units or "uV")
    else:
        raise UsageError(
            f"DATA {args.data}: unknown file type; expected .csv or an EEG file MNE reads ({', '.join(_EEG_SUFFIXES)})"
        )
    if data.n_channels > 1 and not args.no_average:
        data = data.mean_over_channels(name="mean(" + ",".join(data.channel_names) + ")")
    return data


def _match_channel(name: str, available: list[str]) -> str:
    """Exact channel name, or the unique one whose last word matches (``O1`` -> ``EEG O1``)."""
    if name in available:
        return name
    hits = [ch for ch in available if ch.replace("-", " ").split()[-1].lower() == name.lower()]
    return hits[0] if len(hits) == 1 else name  # unknown names get the data layer's named error


def _cmd_fit(args) -> int:
    import torch  # noqa: F401  (torch is a core dependency; imported here to keep --help fast)

    from jrinfer.observation import EvokedObservation, SpectrumObservation
    from jrinfer.problem import InverseProblem

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"--out {args.out}: directory is not empty; pass --force to overwrite its files")
    if args.backend != "laplace":
        raise UsageError(
            f"--backend {args.backend} is not available in this version yet; use --backend laplace "
            "(variational Laplace)"
        )
    data = _load_data(args)
    if args.kind == "spectrum":
        obs = SpectrumObservation(method=args.method)
    else:
        obs = EvokedObservation()
    free = tuple(s.strip() for s in args.free.split(",")) if args.free else None
    prior = obs.default_prior(data) if free is None else obs.default_prior(data, free=free)
    problem = InverseProblem(obs, prior, data)
    from jrinfer.backends.laplace import VariationalLaplace

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is reported in summary.json
        posterior = VariationalLaplace(progress=args.progress, max_iter=args.max_iter).fit(problem, seed=args.seed)
    summary = posterior.summary()
    summary["free_energy"] = posterior.log_evidence
    summary["n_iter"] = posterior.diagnostics.get("n_iter")
    summary["data"] = {
        "file": str(Path(args.data).resolve()),
        "kind": args.kind,
        "channels": list(data.channel_names),
        "units": data.units,
        "n_points": int(data.power.shape[-1] if args.kind == "spectrum" else data.values.shape[-1]),
    }
    summary["prior"] = prior.to_dict()
    summary["prior_validity"] = problem.prior_validity(1000, seed=args.seed)
    summary["observation"] = repr(obs)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=float))
    os.replace(tmp, out / "summary.json")
    nc = out / "posterior.nc"
    if nc.exists():
        nc.unlink()
    posterior.to_netcdf(nc)
    plotted = False
    try:
        from jrinfer.plotting import plot_fit

        plot_fit(posterior, out / "fit.png", title=f"{Path(args.data).name}: variational Laplace ({posterior.status})")
        plotted = True
    except ImportError:
        pass
    if args.json:
        print(json.dumps(summary, default=float))
    else:
        print(posterior)
        print(f"wrote {out}/summary.json, posterior.nc{', fit.png' if plotted else ''}")
    return 0 if posterior.converged else 1


def _cmd_demo(args) -> int:
    from jrinfer._demo import run_demo

    return run_demo(Path(args.out), force=args.force)


def _cmd_identifiability(args) -> int:
    import torch

    from jrinfer import identifiability as idf

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UsageError(f"--out {args.out}: directory is not empty; pass --force to write into it")
    values = idf._parse_assignments(args.set, "--set")
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
    problem, theta = idf.jansen_rit_problem(args.kind, values, free, noise=args.noise, grid=grid)
    meta = {"kind": args.kind, "theta": theta, "noise": args.noise, "n_points": int(grid.numel())}
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
    p.add_argument("--channels", default=None, help="comma-separated channel names (default: all)")
    p.add_argument("--no-average", action="store_true", help="fit channels jointly instead of their average")
    p.add_argument("--fmin", type=float, default=None, help="lowest frequency in Hz (EEG files: default 2)")
    p.add_argument("--fmax", type=float, default=None, help="highest frequency in Hz (EEG files: default 40)")
    p.add_argument("--tmin", type=float, default=None, help="evoked: first time in s")
    p.add_argument("--tmax", type=float, default=None, help="evoked: last time in s")
    p.add_argument("--units", default=None, help="units of CSV data (uV^2/Hz, mV^2/Hz, V^2/Hz; uV, mV, V)")
    p.add_argument("--n-segments", type=int, default=None, help="number of Welch segments behind a CSV spectrum")
    p.add_argument("--condition", default=None, help="evoked FIF: which condition (default the first)")
    p.add_argument("--method", default="transfer", choices=["transfer", "simulation"], help="spectral model")
    p.add_argument("--free", default=None, help="comma-separated JR parameters to fit (default A,B,a,b,C,p_mean)")
    p.add_argument("--max-iter", type=int, default=128, help="maximum variational Laplace iterations")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior draws")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--json", action="store_true", help="print summary.json on stdout")
    p.set_defaults(func=_cmd_fit)

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
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
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
