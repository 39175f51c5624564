"""``jrinfer report DIR``: one self-contained HTML page of a fit directory.

The page reads what ``jrinfer fit`` writes (``summary.json`` and
``posterior.nc``) and shows, top to bottom: the verdict (status, fit quality
and every warning, where the user looks first), the data and settings, the
parameter table (mean, sd, 5-95 %, units, contraction, "not informed"
marked), the backend's diagnostics, the strongest posterior correlations
(what the data constrain jointly), and the plots (fit with residuals,
prior-vs-posterior marginals, pair plot). Figures are embedded as PNG data
URIs: no external resources, no JavaScript, so the file can be mailed or
archived and opens offline.

matplotlib and ArviZ are imported lazily (only when a page is rendered).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from pathlib import Path

from jrinfer.observation import PEAK_SHIFT_OK_HZ

__all__ = ["render_report", "write_report", "report_html"]

#: Pareto k-hat thresholds (Vehtari et al. 2024): below 0.5 good, up to 0.7 usable, above unreliable.
_PARETO_OK, _PARETO_BAD = 0.5, 0.7
#: |posterior correlation| reported as a trade-off between two parameters.
_CORR_REPORT = 0.8

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d1d1f;
background:#fafafa;line-height:1.4}
main{max-width:1100px;margin:0 auto;padding:18px 28px 48px}
h1{font-size:1.55em;margin:.3em 0 .1em}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd;
padding-bottom:.2em}
.sub{color:#666;font-size:.9em;margin-bottom:1em}
.verdict{border-radius:8px;padding:12px 18px;margin:12px 0;border:2px solid}
.ok{background:#eef8ee;border-color:#4a9a4a}.warn{background:#fff6e5;border-color:#e0a030}
.bad{background:#fdecec;border-color:#c62828}
.verdict .head{font-size:1.15em;font-weight:600}
.verdict ul{margin:.5em 0 0 1.1em;padding:0}.verdict li{margin:.3em 0}
ul.kv,ol.kv{margin:.2em 0 .2em 1.1em;padding:0}table.inner{font-size:.85em;margin:.3em 0}
.verdict .fitverdict{margin:.4em 0}
.metrics{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.metric{background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px 12px;min-width:120px}
.metric .v{font-size:1.25em;font-weight:600}.metric .k{font-size:.8em;color:#555}
table{border-collapse:collapse;background:#fff;font-size:.92em}
th,td{border:1px solid #ddd;padding:4px 9px;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}
tr.uninf td{color:#8a1c1c;background:#fdf2f2}
.tag{display:inline-block;font-size:.78em;padding:0 6px;border-radius:4px;background:#c62828;color:#fff}
.tag.g{background:#4a9a4a}.tag.a{background:#e0a030}
figure{margin:18px 0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#444;font-size:.9em;margin-top:6px}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.88em}
pre{background:#fff;border:1px solid #ddd;padding:8px;overflow-x:auto}
details{margin:8px 0}summary{cursor:pointer;color:#244a8a}
.note{color:#555;font-size:.9em}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _num(x, digits: int = 4) -> str:
    """A number for a table cell (``—`` for None/NaN)."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return _e(x)
    if not math.isfinite(xf):
        return "—"
    return f"{xf:.{digits}g}"


def _png_data_uri(fig, dpi: int = 100) -> str:
    """A matplotlib Figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _load(fit_dir: Path):
    """``(summary dict, Posterior)`` of a fit directory; FileNotFoundError/ValueError naming what is missing."""
    from jrinfer.posterior import Posterior

    fit_dir = Path(fit_dir)
    if not fit_dir.is_dir():
        raise FileNotFoundError(f"{fit_dir} is not a directory")
    nc = fit_dir / "posterior.nc"
    if not nc.is_file():
        raise FileNotFoundError(f"{fit_dir} holds no posterior.nc (is it the output folder of a fit?)")
    posterior = Posterior.from_netcdf(nc)
    summary_path = fit_dir / "summary.json"
    summary = {}
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{summary_path} is not valid JSON ({err})") from None
    return summary, posterior


def _severity(posterior) -> str:
    """``"bad"`` (the fit's status is not "converged"), ``"warn"`` (converged, with warnings) or ``"ok"``.

    One verdict with the printed summary, ``summary.json`` and ``--strict``: the
    posterior's ``status`` already folds in the misfit, Pareto k-hat and
    ruled-out-predictive rules (``jrinfer.backends._assembly``).
    """
    if posterior.status != "converged":
        return "bad"
    return "warn" if posterior.warnings else "ok"


def _metric(key: str, value: str) -> str:
    return f'<div class="metric"><div class="v">{value}</div><div class="k">{_e(key)}</div></div>'


def _headline_metrics(posterior, summary) -> str:
    q = posterior.fit_quality
    items = []
    if "r2_log_power" in q:
        items.append(_metric("R² of log-power", _num(q["r2_log_power"], 3)))
    if "explained_variance" in q:
        items.append(_metric("explained variance", f"{100 * float(q['explained_variance']):.0f} %"))
    if "peak_frequency_data_hz" in q:
        items.append(_metric("alpha peak: data / model",
                             f"{_num(q['peak_frequency_data_hz'])} / {_num(q['peak_frequency_model_hz'])} Hz"))
    if "peak_latency_data_s" in q:
        items.append(_metric("main peak: data / model",
                             f"{1e3 * float(q['peak_latency_data_s']):.0f} / "
                             f"{1e3 * float(q['peak_latency_model_s']):.0f} ms"))
    if "standardised_residual_max_abs" in q:
        items.append(_metric("largest standardised residual", _num(q["standardised_residual_max_abs"], 3)))
    if posterior.log_evidence is not None:
        label = "free energy (nats)" if posterior.backend == "laplace" else "log evidence (nats)"
        items.append(_metric(label, _num(posterior.log_evidence, 6)))
    n_uninf = len(posterior.uninformed)
    items.append(_metric("parameters informed", f"{len(posterior.names) - n_uninf} of {len(posterior.names)}"))
    regime = posterior._regime_summary()
    if regime:
        items.append(_metric("regime", _e(regime)))
    return '<div class="metrics">' + "".join(items) + "</div>"


def _verdict(posterior, summary) -> str:
    sev = _severity(posterior)
    n = len(posterior.warnings)
    if posterior.converged:
        backend = "backend converged"
    elif posterior.backend in ("nuts", "smc"):  # R-hat, ESS or divergences past the library's thresholds
        backend = "the sampler's own checks failed (R-hat, ESS or divergences: see Backend diagnostics)"
    else:
        backend = "backend did NOT converge"
    status = f"Status {posterior.status} ({backend})"
    head = {
        "ok": f"{status}; no warnings.",
        "warn": f"{status}; {n} warning{'s' if n != 1 else ''}: read before using the estimates.",
        "bad": f"{status}; {n} warning{'s' if n != 1 else ''}: the fit is not to be trusted as it stands.",
    }[sev]
    items = "".join(f"<li>{_e(w)}</li>" for w in posterior.warnings)
    data_warns = (summary.get("data") or {}).get("warnings") or []
    items += "".join(f"<li>data: {_e(w)}</li>" for w in data_warns)
    msg = f'<div class="note">{_e(posterior.message)}</div>' if posterior.message else ""
    # the fit verdict (residuals against the data's own noise) sits next to the status, where the user reads
    fits = "".join(f'<div class="fitverdict"><b>fit{", " + _e(c) if c else ""}:</b> {_e(v)}</div>'
                   for c, v in posterior.fit_verdicts.items())
    if posterior.status_message:  # why the fit's status is not "converged"
        msg = f'<div class="note"><b>status {_e(posterior.status)}:</b> {_e(posterior.status_message)}</div>' + msg
    msg = _provenance(posterior, summary) + msg
    return (f'<div class="verdict {sev}"><div class="head">{_e(head)}</div>' + fits
            + (f"<ul>{items}</ul>" if items else "") + msg + "</div>")


def _provenance(posterior, summary) -> str:
    """Which jrinfer judged the status and warnings, and when; a note when today's misfit rule disagrees."""
    import jrinfer
    from jrinfer.observation import R2_WARN

    version, created = summary.get("jrinfer_version"), summary.get("created_utc")
    if version is None:
        text = ("fitted by an older jrinfer (before fits recorded their version and date): the status and warnings "
                "are as that version judged them; refit to apply this version's checks")
    else:
        text = f"fitted by jrinfer {version} on {created}" + (
            "" if version == jrinfer.__version__ else
            f"; this report is by jrinfer {jrinfer.__version__}, the status and warnings are the fit's own")
    r2 = (posterior.fit_quality or {}).get("r2_log_power")
    if posterior.status == "converged" and isinstance(r2, (int, float)) and r2 < R2_WARN:
        text += (f". Recorded as converged, yet its R² of log-power {r2:.3f} is below {R2_WARN}, which this version "
                 "calls a misfit: refit before using it")
    return f'<div class="note provenance">{_e(text)}</div>'


def _data_section(posterior, summary) -> str:
    from jrinfer.plotting import pretty_units

    obs = posterior.observed or {}
    data = summary.get("data") or {}
    rows = []

    def row(k, v):
        rows.append(f'<tr><th class="l">{_e(k)}</th><td class="l">{v}</td></tr>')

    if isinstance(data.get("file"), dict):  # a fit of several conditions
        for cond, path in data["file"].items():
            row(f"file ({cond})", f"<code>{_e(path)}</code>")
    elif data.get("file"):
        row("file", f"<code>{_e(data['file'])}</code>")
    kind = data.get("kind") or ("spectrum" if obs.get("coord") == "freq" else "evoked" if obs else None)
    if kind:
        row("kind", _e(kind))
    used = data.get("channels_used") or obs.get("channels")
    if used:
        row("channels used", _e(", ".join(map(str, used))))
    if obs.get("channels") and list(obs["channels"]) != list(used or []):
        row("fitted as", _e(", ".join(map(str, obs["channels"]))))
    dropped = data.get("channels_dropped")
    if dropped:
        row("channels left out",
            _e("; ".join(f"{d.get('channel')} ({d.get('reason')})" if isinstance(d, dict) else str(d) for d in dropped)))
    elif "channels_dropped" in data:
        row("channels left out", "none")
    if obs.get("units"):
        row("data units", _e(pretty_units(obs["units"])))
    if obs.get("coord_values") is not None and len(obs["coord_values"]):
        import numpy as np

        x = np.asarray(obs["coord_values"], dtype=float)
        if obs.get("coord") == "freq":
            step = f", step {np.median(np.diff(x)):.3g} Hz" if x.size > 1 else ""
            row("frequency range", f"{x.min():g}–{x.max():g} Hz ({x.size} frequencies{step})")
        else:
            row("time range", f"{1e3 * x.min():.0f} to {1e3 * x.max():.0f} ms ({x.size} samples)")
    if summary.get("observation"):
        row("observation", f"<code>{_e(summary['observation'])}</code>")
    row("backend", _e(posterior.backend))
    row("draws", f"{posterior.draws.shape[0]} chain(s) × {posterior.draws.shape[1]}")
    fixed = (summary.get("prior") or {}).get("fixed") or {}
    if fixed:
        units = summary.get("fixed_units") or posterior.units
        row("fixed parameters", _e(", ".join(
            f"{k} = {_num(v)} {pretty_units(units.get(k, ''))}".rstrip() for k, v in fixed.items())))
    pulse = summary.get("input_pulse")
    if pulse:  # ERP fits: what input_amplitude means, in pulses/s
        r, t = pulse["peak_rate"], pulse["peak_time"]
        row("input pulse peak",
            f"{_num(r['median'])} pulses/s (90 %: {_num(r['q05'])}–{_num(r['q95'])}) at {1e3 * t['median']:.0f} ms "
            f"after the stimulus (90 %: {1e3 * t['q05']:.0f}–{1e3 * t['q95']:.0f} ms)<br>"
            f"<span class='note'>{_e(pulse.get('meaning', ''))}</span>")
    invalid = _prior_invalid(posterior, summary)
    if invalid is not None:
        row("prior draws the model cannot evaluate", invalid)
    return "<table>" + "".join(rows) + "</table>"


def _disagreement(effect: dict) -> str:
    """The effect's note when its interval and log Bayes factor point different ways, else ``""``."""
    agreement = effect.get("agreement") or ""
    return f'<br><span class="tag a">{_e(agreement)}</span>' if agreement.startswith("differ") else ""


def _prior_invalid(posterior, summary) -> str | None:
    """The one figure of prior draws outside the model's valid regime, labelled with its sample size.

    ``summary.json``'s ``prior_validity`` (1000 draws) when present, else the
    backend's ``prior_invalid_fraction`` (its prior-predictive draws).
    """
    pv = summary.get("prior_validity")
    if isinstance(pv, dict) and pv.get("invalid_fraction") is not None:
        frac, n = float(pv["invalid_fraction"]), pv.get("n_samples")
    elif (posterior.diagnostics or {}).get("prior_invalid_fraction") is not None:
        frac = float(posterior.diagnostics["prior_invalid_fraction"])
        prior_draws = posterior.prior_draws
        n = None if prior_draws is None else int(prior_draws.reshape(-1, len(posterior.names)).shape[0])
    else:
        return None
    of = f" of {n} prior draws" if n else " of the prior draws"
    if isinstance(pv, dict) and pv.get("explanation"):
        return f"{100 * frac:.1f} %{of}: {pv['explanation'].split(': ', 1)[-1]}"
    return f"{100 * frac:.1f} %{of} (outside the model's valid regime, e.g. an unstable equilibrium)"


def _condition_effects(summary) -> str:
    """Table of summary.json's ``condition_effects`` (differences, intervals, ratios, log Bayes factors)."""
    from jrinfer.conditions import INTERVAL_VS_BF

    ce = summary["condition_effects"]
    ref = ce.get("reference", "reference")
    rows, pct = [], 90
    for name, per in (ce.get("effects") or {}).items():
        for cond, e in per.items():
            if "fixed" in e:
                rows.append(f'<tr><th class="l">{_e(name)}</th><td class="l">{_e(cond)}</td>'
                            f'<td colspan="5" class="l">held fixed at {_num(e["fixed"])}</td></tr>')
                continue
            pct = round(100 * float(e.get("interval", 0.9)))
            if e.get("scale") == "log":
                ratio = f"{_num(e['ratio'], 3)} [{_num(e['ratio_lower'], 3)}, {_num(e['ratio_upper'], 3)}]"
            else:
                ratio = "—"
            rows.append(
                f'<tr><th class="l">{_e(name)}</th><td class="l">{_e(cond)}</td>'
                f"<td>{_num(e['mean'], 3)} [{_num(e['lower'], 3)}, {_num(e['upper'], 3)}]</td><td>{ratio}</td>"
                f"<td>{float(e['log_bayes_factor']):+.2f}</td><td>{float(e['p_difference']):.2f}</td>"
                f'<td class="l">{_e(e.get("evidence", ""))}{_disagreement(e)}</td></tr>'
            )
    head = (f'<tr><th class="l">parameter</th><th class="l">condition</th><th>difference ({pct} %)</th>'
            f"<th>ratio to {_e(ref)}</th><th>log BF</th><th>P(difference)</th><th class=\"l\">reading</th></tr>")
    note = (f'<div class="note">Differences from the reference condition <b>{_e(ref)}</b>: log ratios for scale '
            "parameters (ratio = exp), plain differences for locations. log BF &gt; 0 favours a difference; "
            f"{_e(ce.get('method', ''))}.</div>"
            f'<div class="note"><b>Interval vs log BF:</b> {_e(INTERVAL_VS_BF)}.</div>')
    warns = "".join(f'<div class="note">Warning: {_e(w)}</div>' for w in ce.get("warnings") or [])
    joint = ce.get("no_difference")
    first = ""
    if joint:
        first = (f'<p><b>Does any parameter differ between conditions?</b> The model with all '
                 f'{len(joint["parameters"])} differences set to 0 at once against the full model: log BF '
                 f"{float(joint['log_bayes_factor']):+.2f} for some difference, P(some difference) "
                 f"{float(joint['p_difference']):.2f} ({_e(joint.get('evidence', ''))}).</p>")
    alpha = "".join(f"<p>{_e(line)}</p>" for line in ce.get("alpha_power") or [])
    return alpha + first + "<table>" + head + "".join(rows) + "</table>" + note + warns


def _parameter_table(posterior, truth: dict | None = None) -> str:
    from jrinfer.plotting import pretty_units
    from jrinfer.posterior import CONTRACTION_UNINFORMED

    s = posterior.summary()["parameters"]
    head = ("<tr><th class='l'>parameter</th><th>mean</th><th>sd</th><th>5 %</th><th>95 %</th>"
            "<th class='l'>units</th><th>contraction</th>" + ("<th>truth</th>" if truth else "") + "</tr>")
    rows = []
    for name, p in s.items():
        c = p.get("contraction")
        uninformed = c is not None and c < CONTRACTION_UNINFORMED
        ctext = "—" if c is None else f"{c:.2f}"
        if uninformed:
            ctext += ' <span class="tag">not informed</span>'
        if p.get("marginal"):  # a Laplace marginal that importance weighting contradicts: the weighted one is shown
            gauss = (f'; the Gaussian\'s: mean {_num(p["gaussian_mean"])}, sd {_num(p.get("gaussian_sd"))}, 5–95 % '
                     f'{_num(p.get("gaussian_q05"))} to {_num(p.get("gaussian_q95"))}' if "gaussian_mean" in p else "")
            ctext += (f' <span class="tag a">{_e(p["marginal"])}</span><br><span class="note">importance-weighted '
                      f'(Gaussian {_num(p.get("gaussian_contraction"), 2)}){gauss}</span>')
        truth_cell = ""
        if truth:
            t = truth.get(name)
            inside = t is not None and p["q05"] <= t <= p["q95"]
            truth_cell = f"<td>{_num(t)}{'' if t is None else (' ✓' if inside else ' ✗')}</td>"
        rows.append(
            f"<tr class='{'uninf' if uninformed else ''}'><td class='l'><b>{_e(name)}</b></td>"
            f"<td>{_num(p['mean'])}</td><td>{_num(p['sd'], 3)}</td><td>{_num(p['q05'])}</td><td>{_num(p['q95'])}</td>"
            f"<td class='l'>{_e(pretty_units(p.get('units')))}</td><td>{ctext}</td>{truth_cell}</tr>"
        )
    note = (f"<p class='note'>Contraction = 1 − posterior variance / prior variance (unconstrained coordinates); "
            f"below {CONTRACTION_UNINFORMED:g} the posterior restates the prior: the data did not inform the "
            "parameter. A tagged shape marks a Laplace marginal that the importance-weighted draws contradict: its "
            "mean, sd, interval and contraction are the weighted ones, the Gaussian's beside them.</p>")
    return "<table>" + head + "".join(rows) + "</table>" + note


#: Human labels of the fit-quality keys: (label, what it means; ``{units}`` is the data's units).
_QUALITY_LABELS = {
    "r2_log_power": ("R² of log-power", "1 − residual / total variance of the log spectrum; misfit below 0.9"),
    "peak_frequency_data_hz": ("alpha peak of the data (Hz)", "largest power in 6–14 Hz"),
    "peak_frequency_model_hz": ("alpha peak of the fit (Hz)", "largest predicted power in 6–14 Hz"),
    "peak_shift_hz": ("peak shift, fit − data (Hz)", f"within ±{PEAK_SHIFT_OK_HZ:g} Hz reproduces the peak"),
    "noise_sd_log_power": ("noise sd of log-power", "exp(−log_precision / 2): the fitted scatter of "
                                                    "log-power about the model"),
    "residual_rms_log_power": ("residual RMS of log-power", "root mean square of data − fit (natural log); "
                                                            "well above the noise sd: structured misfit"),
    "noise_sd": ("noise sd ({units})", "exp(−log_precision / 2): the fitted scatter about the model"),
    "standardised_residual_max_abs": ("largest |residual| / fitted noise sd", "above about 3.5 a point the model misses"),
    "fraction_beyond_3sd": ("fraction of points beyond 3 fitted noise sd", "0.003 expected for Gaussian noise"),
    "harmonic_excess_log_power": ("excess log-power at twice the alpha peak",
                                  "data − fit within ±1 Hz of 2 × the data's peak (natural log); above 3 noise sd: "
                                  "a harmonic, the mark of a limit cycle"),
    "noise_sd_welch": ("noise sd of a Welch estimate", "sqrt(trigamma(K)) for K averaged segments: the scatter of "
                                                       "log-power a perfect model leaves"),
    "r2_noise_ceiling": ("R² a perfect model would reach", "1 − Welch noise variance / variance of the log spectrum"),
    "residual_chi2": ("residual sum of squares / Welch noise variance", "about the number of frequencies when the "
                                                                        "residuals are noise"),
    "residuals_within_noise": ("residuals within the Welch noise", "chi-square test at 0.001: a low R² is then the "
                                                                   "data's noise, not a misfit"),
    "resting_state": ("resting state of the point estimate", "where the fitted population rests and whether its "
                                                              "response returns"),
    "rest_equilibrium": ("resting equilibrium", "upper: the high equilibrium (stable); lower: the lower branch"),
    "rest_firing_rate": ("pyramidal firing at rest (pulses/s)", "S(v) at the resting equilibrium, at most 2 e0"),
    "upper_firing_rate": ("firing at the unstable high equilibrium (pulses/s)", "lower branch only"),
    "upper_growth_rate": ("growth rate of the high equilibrium (1/s)", "largest real part of its eigenvalues; near 0: "
                                                                       "at its Hopf point"),
    "response_return_s": ("response back at rest from (s)", "within 5 % of its peak from then on; — : not in the epoch"),
    "response_end_fraction": ("fitted response at the epoch's end / its peak", "above 0.2: it outlasts the epoch"),
    "verdict": ("fit verdict", "the residuals against the data's own noise, and where the misfit is largest"),
    "residual_noise_ratio": ("RMS residual / noise sd of the data", "about 1 when the residuals are the data's "
                                                                    "noise (spectra: Welch; ERPs: pre-stimulus)"),
    "misfit_from_hz": ("largest systematic misfit from (Hz)", "the run of same-sign residuals that stands out most"),
    "misfit_to_hz": ("largest systematic misfit to (Hz)", ""),
    "misfit_peak_hz": ("largest systematic misfit peaks at (Hz)", ""),
    "misfit_sign": ("sign of that misfit", "+1: data above the model; -1: below"),
    "misfit_from_s": ("largest systematic misfit from (s)", "the run of same-sign residuals that stands out most"),
    "misfit_to_s": ("largest systematic misfit to (s)", ""),
    "misfit_channel": ("channel of that misfit", "the channel with the largest residual sum of squares"),
    "noise_sd_baseline": ("noise sd of the average ({units})", "SD of the pre-stimulus baseline, pooled over channels"),
    "peak_residual_noise_sds": ("residual at the two alpha peaks (Welch noise sd)",
                                "above 3 the data resolve the shift between the peaks (if there is one: see the "
                                "peak shift; within ±0.5 Hz the peak is reproduced)"),
    "harmonic_excess_frequency_hz": ("frequency of that excess (Hz)", "where the data rise above the fit near "
                                                                      "twice the alpha peak"),
    "alpha_power_ratio_data": ("alpha power (8–13 Hz) against the reference, data",
                               "this condition's / the reference's band power in the data"),
    "alpha_power_ratio_fit": ("alpha power (8–13 Hz) against the reference, fit",
                              "the same in the fit: the change the parameter differences describe"),
    "explained_variance": ("explained variance", "1 − residual / total sum of squares of the waveforms"),
    "peak_latency_data_s": ("main peak of the data (s)", "largest deflection after time 0"),
    "peak_latency_model_s": ("main peak of the fit (s)", "on the same channel"),
    "peak_channel": ("peak channel", "where the data's main peak is largest"),
    "end_offset_from_baseline": ("end offset from baseline ({units})",
                                 "mean of the last 10 % of the epoch − pre-stimulus mean; the model returns to rest"),
    "r2": ("R²", "in the space of the likelihood"),
    "space": ("space of R²", ""),
}


def _quality_label(key: str, conditions=(), units: str = "") -> tuple[str, str]:
    """``(label, meaning)`` of a fit-quality key (``<key>_<condition>`` for fits of several conditions)."""
    from jrinfer.plotting import pretty_units

    base, cond = key, None
    for c in conditions:
        if key.endswith(f"_{c}") and key[: -len(c) - 1] in _QUALITY_LABELS:
            base, cond = key[: -len(c) - 1], c
    label, meaning = _QUALITY_LABELS.get(base, (key, ""))
    label = label.replace("{units}", pretty_units(units) or "data units")
    return (f"{label}, {cond}" if cond else label), meaning


def _quality_table(posterior, summary=None) -> str:
    q = posterior.fit_quality
    if not q:
        return "<p class='note'>No fit-quality metrics recorded.</p>"
    conditions = ((summary or {}).get("condition_effects") or {}).get("conditions") or ()
    units = (posterior.observed or {}).get("units") or ""
    rows = []
    for k, v in q.items():
        if isinstance(v, dict):  # e.g. per-channel tables
            v = "; ".join(f"{kk}: {_num(vv) if not isinstance(vv, dict) else _e(vv)}" for kk, vv in v.items())
        label, meaning = _quality_label(k, conditions, units)
        value = _e(v) if isinstance(v, str) else _num(v)
        rows.append(f"<tr><th class='l' title='{_e(k)}'>{_e(label)}</th><td>{value}</td>"
                    f"<td class='l note'>{_e(meaning)} <code>{_e(k)}</code></td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _diagnostics(posterior, summary) -> str:
    d = dict(posterior.diagnostics or {})
    rows = []

    def row(k, v, tag=""):
        rows.append(f"<tr><th class='l'>{_e(k)}</th><td>{v}</td><td class='l'>{tag}</td></tr>")

    if posterior.log_evidence is not None:
        label = "free energy F (nats)" if posterior.backend == "laplace" else "log evidence (nats)"
        row(label, _num(posterior.log_evidence, 7), "compare only fits to the same data in the same units")
    for k, label in (("accuracy", "accuracy (nats)"), ("complexity", "complexity (nats)")):
        if k in d:
            row(label, _num(d.pop(k), 6))
    d.pop("free_energy", None)
    trace = d.pop("free_energy_trace", None)
    if "n_iter" in d:
        row("iterations", _num(d.pop("n_iter")))
    if "pareto_k" in d:
        k = d.pop("pareto_k")
        try:
            kf = float(k)
            tag = ('<span class="tag g">good</span>' if kf < _PARETO_OK else
                   '<span class="tag a">usable</span>' if kf <= _PARETO_BAD else
                   '<span class="tag">unreliable: the Gaussian approximation misses the posterior\'s shape</span>')
        except (TypeError, ValueError):
            tag = ""
        row("Pareto k̂ (importance check of the Gaussian)", _num(k, 3), tag)
    if "importance_ess" in d:
        row("importance-sampling ESS", _num(d.pop("importance_ess"), 4))
    inv = d.pop("invalid_draws", None)
    if isinstance(inv, dict):
        text = f"{inv.get('n_invalid', 0)} of {inv.get('n_checked', '?')}"
        if isinstance(inv.get("fraction"), (int, float)):
            text += f" ({100 * float(inv['fraction']):.1f} %)"
        reasons = inv.get("reasons") or []
        row("invalid predictive draws", text, _e(reasons[0]) if reasons else "")
    im = d.pop("importance_marginals", None)
    if isinstance(im, dict):
        flagged = [n for n, r in (im.get("parameters") or {}).items() if isinstance(r, dict) and r.get("non_gaussian")]
        row("importance-weighted marginals (PSIS ESS)", _num(im.get("ess"), 4),
            _e("differ from the Gaussian's: " + ", ".join(flagged)) if flagged else "agree with the Gaussian's")
    if isinstance(d.get("regime_mix"), dict):
        d.pop("regime_mix")
        d.pop("regime_point", None)
        row("regime mix of the posterior draws", _e(posterior._regime_summary()), _e(d.pop("regime", "")))
    if isinstance(d.get("regime_by_condition"), dict):
        by = d.pop("regime_by_condition")
        for c, text in posterior._regime_lines():
            row(f"regime mix of the posterior draws, {c}", _e(text), _e((by.get(c) or {}).get("regime", "")))
    eff = d.pop("effects_across_optima", None)
    if isinstance(eff, dict):
        row("effects across the competing optima", "agree" if eff.get("agree") else "differ", _e(eff.get("sentence", "")))
    d.pop("prior_invalid_fraction", None)  # shown once, under "Data and settings"
    sampler = _sampler_table(posterior, d)  # pops what it shows
    for k, v in d.items():  # every other backend's scalars and settings
        html_v = _value_html(v)
        if len(html_v) > _FOLD_CHARS:  # a long record folds away: its one-line gist shows
            html_v = f"<details><summary>{_e(_gist(v))}</summary>{html_v}</details>"
        row(k, html_v)
    out = sampler + "<table>" + "".join(rows) + "</table>"
    if trace:
        out += f"<p class='note'>Free-energy trace over iterations: {_e(', '.join(_num(t, 6) for t in trace))}</p>"
    return out


#: Diagnostics rendered longer than this (characters of HTML) fold into a <details> element.
_FOLD_CHARS = 400


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (int, float, str, bool))


def _value_html(v, depth: int = 0) -> str:
    """A diagnostics value as readable HTML: scalars as numbers, flat records as ``key = value; ...``, nested ones
    as nested lists, lists of records with the same keys as a small table (never a JSON dump)."""
    if _is_scalar(v):
        return _num(v)
    if depth > 4:
        return f"<code>{_e(json.dumps(v, default=str)[:200])}</code>"
    if isinstance(v, dict):
        if all(_is_scalar(x) for x in v.values()):
            return "; ".join(f"{_e(k)} = {_num(x)}" for k, x in v.items())
        return "<ul class='kv'>" + "".join(f"<li><b>{_e(k)}</b>: {_value_html(x, depth + 1)}</li>"
                                            for k, x in v.items()) + "</ul>"
    if isinstance(v, (list, tuple)):
        items = list(v)
        if not items:
            return "none"
        if all(_is_scalar(x) for x in items):
            shown = ", ".join(_num(x) for x in items[:20])
            return shown + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
        if all(isinstance(x, dict) for x in items) and len({tuple(x) for x in items}) == 1 \
                and all(_is_scalar(y) for x in items for y in x.values()):
            keys = list(items[0])
            head = "".join(f"<th>{_e(k)}</th>" for k in keys)
            body = "".join("<tr>" + "".join(f"<td>{_num(x[k])}</td>" for k in keys) + "</tr>" for x in items[:50])
            more = f"<p class='note'>... {len(items)} rows in all</p>" if len(items) > 50 else ""
            return f"<table class='inner'><tr>{head}</tr>{body}</table>{more}"
        return "<ol class='kv'>" + "".join(f"<li>{_value_html(x, depth + 1)}</li>" for x in items[:50]) + "</ol>"
    return _e(str(v))


def _gist(v) -> str:
    """One line for a folded diagnostics record: how many entries, and its first scalar fields."""
    if isinstance(v, dict):
        scalars = [f"{k} = {_num(x)}" for k, x in v.items() if _is_scalar(x)][:3]
        return f"{len(v)} entries" + (f": {'; '.join(scalars)}, ..." if scalars else "")
    if isinstance(v, (list, tuple)):
        return f"{len(v)} items"
    return str(v)[:80]


def _pass(ok: bool) -> str:
    return '<span class="tag g">pass</span>' if ok else '<span class="tag">fail</span>'


def _sampler_table(posterior, d: dict) -> str:
    """MCMC diagnostics as tables with their thresholds and pass/fail (pops the keys it shows from ``d``).

    Per parameter: R-hat (≤ :data:`~jrinfer.backends.pymc.RHAT_MAX`), bulk and tail ESS (≥
    :data:`~jrinfer.backends.pymc.ESS_MIN_PER_CHAIN` per chain); overall: divergences (none), draws at
    the maximum tree depth (≤ 1 %). Empty for backends without them.
    """
    rhat, ess_b, ess_t = d.get("rhat"), d.get("ess_bulk"), d.get("ess_tail")
    if not any(isinstance(x, dict) for x in (rhat, ess_b, ess_t)):
        return ""
    from jrinfer.backends.pymc import ESS_MIN_PER_CHAIN, RHAT_MAX  # PyMC itself is imported lazily there

    n_chains = int(d.get("n_chains") or posterior.draws.shape[0])
    ess_min = ESS_MIN_PER_CHAIN * n_chains
    rhat, ess_b, ess_t = rhat or {}, ess_b or {}, ess_t or {}
    for k in ("rhat", "ess_bulk", "ess_tail", "rhat_max", "ess_bulk_min", "ess_tail_min"):
        d.pop(k, None)

    def cell(value, ok):
        if value is None:
            return "<td>—</td>"
        return f"<td>{_num(value, 4)} {_pass(ok)}</td>"

    rows = []
    for name in posterior.names:
        r, b, t = rhat.get(name), ess_b.get(name), ess_t.get(name)
        rows.append(f"<tr><th class='l'>{_e(name)}</th>"
                    + cell(r, r is not None and r <= RHAT_MAX)
                    + cell(None if b is None else round(b), b is not None and b >= ess_min)
                    + cell(None if t is None else round(t), t is not None and t >= ess_min) + "</tr>")
    head = (f"<tr><th class='l'>parameter</th><th>R-hat (≤ {RHAT_MAX:g})</th><th>bulk ESS (≥ {ess_min})</th>"
            f"<th>tail ESS (≥ {ess_min})</th></tr>")
    overall = []
    if "divergences" in d:
        n_div = int(d.pop("divergences"))
        overall.append(("divergent transitions after tuning", str(n_div), "0", n_div == 0))
    if "tree_depth_saturated" in d:
        sat = float(d.pop("tree_depth_saturated"))
        depth = d.pop("max_treedepth", None)
        label = "draws at the maximum tree depth" + (f" ({depth})" if depth is not None else "")
        overall.append((label, f"{100 * sat:.1f} %", "≤ 1 %", sat <= 0.01))
    body = "".join(f"<tr><th class='l'>{_e(k)}</th><td>{v}</td><td>{_e(th)}</td><td>{_pass(ok)}</td></tr>"
                   for k, v, th, ok in overall)
    table2 = ("<table><tr><th class='l'>sampler check</th><th>value</th><th>threshold</th><th></th></tr>"
              + body + "</table>") if overall else ""
    note = (f"<p class='note'>Convergence of {n_chains} chain(s) (Vehtari et al. 2021): R-hat compares the chains "
            f"(≤ {RHAT_MAX:g}: they agree), ESS counts effectively independent draws ({ESS_MIN_PER_CHAIN} per "
            "chain), in the prior's unconstrained coordinates.</p>")
    return "<table>" + head + "".join(rows) + "</table>" + table2 + note


def _correlations(posterior) -> str:
    """The strongest posterior correlations: combinations the data constrain jointly (an identifiability headline)."""
    import numpy as np

    d = posterior.draws.reshape(-1, len(posterior.names))
    sd = d.std(0)
    ok = [i for i in range(len(posterior.names)) if sd[i] > 0 and np.isfinite(sd[i])]
    if len(ok) < 2:
        return ""
    x = d[:, ok]
    x = np.where(x > 0, np.log(np.abs(x) + 1e-300), x) if (x > 0).all() else x
    r = np.corrcoef(x.T)
    pairs = sorted(((abs(r[a, b]), r[a, b], a, b) for a in range(len(ok)) for b in range(a + 1, len(ok))
                    if np.isfinite(r[a, b])), reverse=True)
    strong = [p for p in pairs if p[0] >= _CORR_REPORT]
    uninf = posterior.uninformed
    parts = []
    if uninf:
        parts.append(f"<p><b>Not informed by the data</b> (estimate ≈ prior): {_e(', '.join(uninf))}.</p>")
    if strong:
        items = "".join(
            f"<li><b>{_e(posterior.names[ok[a]])}</b> and <b>{_e(posterior.names[ok[b]])}</b>: r = {rv:+.2f} "
            f"({'they trade off: the data fix a ratio/product, not each' if rv < 0 else 'they move together'})</li>"
            for _, rv, a, b in strong[:8])
        parts.append(f"<p>Strong posterior correlations (|r| ≥ {_CORR_REPORT:g}, log scale for positive "
                     f"parameters):</p><ul>{items}</ul>")
    else:
        top = pairs[0] if pairs else None
        if top is not None:
            parts.append(f"<p>No posterior correlation reaches |r| ≥ {_CORR_REPORT:g} (strongest: "
                         f"{_e(posterior.names[ok[top[2]]])}–{_e(posterior.names[ok[top[3]]])}, r = {top[1]:+.2f}).</p>")
    parts.append("<p class='note'>For structural and sloppy directions at a parameter set, run "
                 "<code>jrinfer identifiability</code>.</p>")
    return "".join(parts)


def _figures(posterior) -> list[tuple[str, str]]:
    """``[(data URI, caption)]`` of the page's plots (fit, marginals, pair plot)."""
    from jrinfer import plotting

    figs = []
    if posterior.observed is not None and posterior.predictive is not None:
        spectral = posterior.observed["coord"] == "freq"
        fig = plotting.plot_fit(posterior, title=f"{posterior.backend}: {posterior.status}")
        cap = ("Data (black) on log-power axes with the fit and the 90 % posterior predictive band; alpha band "
               "(8–13 Hz) shaded, data and model peaks marked (searched in 6–14 Hz). Below: standardised log-power residuals "
               "(grey: ±2; red dots beyond ±3)." if spectral else
               "Evoked response: data (black), fit and the 90 % posterior predictive band, main peaks marked. "
               "Below: residual data − fit.")
        figs.append((_png_data_uri(fig), cap))
    figs.append((_png_data_uri(plotting.plot_marginals(posterior)),
                 "Prior (grey) and posterior (blue) marginals in natural units: probability per bin; "
                 "titles give the contraction, 'not informed' in red."))
    try:
        fig = plotting.plot_pair(posterior)
    except (ImportError, ValueError):
        fig = None
    if fig is not None:
        figs.append((_png_data_uri(fig), "Pair plot (ArviZ) of the parameters in the strongest posterior "
                                         "correlations: scatter of draws, marginal densities on the diagonal."))
    return figs


def report_html(posterior, summary: dict | None = None, *, title: str | None = None, truth: dict | None = None,
                extra_sections: list[tuple[str, str]] | None = None) -> str:
    """The report page of a fit as one HTML string (figures inline as PNG data URIs).

    Parameters
    ----------
    posterior : Posterior
        The fit (e.g. from :meth:`Posterior.from_netcdf`).
    summary : dict, optional
        ``summary.json`` of ``jrinfer fit`` (data file, channels, prior,
        observation settings); without it the page shows what the posterior
        holds.
    title : str, optional
        Page title (default: the data file's name).
    truth : dict, optional
        Known parameter values (synthetic data): a "truth" column, ✓ when
        inside the 90 % interval.
    extra_sections : list of (str, str), optional
        ``(heading, HTML)`` sections appended after the plots; the HTML is
        inserted as is (it must be self-contained too).

    Returns
    -------
    str
    """
    import jrinfer

    summary = summary or {}
    file = (summary.get("data") or {}).get("file")
    if isinstance(file, dict):
        file = " vs ".join(Path(f).name for f in file.values())
    elif file:
        file = Path(file).name
    title = title or (f"Fit of {file}" if file else "jrinfer fit")
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    figs = _figures(posterior)
    fig_html = "".join(f'<figure><img alt="{_e(cap[:60])}" src="{uri}"><figcaption>{_e(cap)}</figcaption></figure>'
                       for uri, cap in figs)
    prior = summary.get("prior")
    prior_html = ""
    if prior:
        prior_html = ("<details><summary>Prior (JSON, usable with <code>--prior</code>)</summary><pre>"
                      + _e(json.dumps(prior, indent=1, default=str)) + "</pre></details>")
    extra = "".join(f"<h2>{_e(h)}</h2>{body}" for h, body in (extra_sections or []))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f'<div class="sub">jrinfer {_e(getattr(jrinfer, "__version__", ""))} · {_e(posterior.backend)} · '
        f"written {_e(when)}</div>",
        _verdict(posterior, summary),
        _headline_metrics(posterior, summary),
        "<h2>Data and settings</h2>", _data_section(posterior, summary),
        "<h2>Condition effects</h2>" + _condition_effects(summary) if summary.get("condition_effects") else "",
        "<h2>Parameters</h2>", _parameter_table(posterior, truth),
        "<h2>What the data constrain</h2>", _correlations(posterior),
        "<h2>Fit quality</h2>", _quality_table(posterior, summary),
        "<h2>Backend diagnostics</h2>", _diagnostics(posterior, summary),
        "<h2>Plots</h2>", fig_html,
        extra,
        "<h2>Prior</h2>" + prior_html if prior_html else "",
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_report(posterior, path, summary: dict | None = None, *, overwrite: bool = False, **kwargs) -> Path:
    """Write :func:`report_html` to ``path`` atomically; refuses to replace a file unless ``overwrite``.

    Parameters
    ----------
    posterior : Posterior
        The fit.
    path : str or Path
        The HTML file to write.
    summary : dict, optional
        The fit's ``summary.json``.
    overwrite : bool
        Replace an existing file.
    **kwargs
        Passed to :func:`report_html` (``title``, ``truth``, ``extra_sections``).

    Returns
    -------
    pathlib.Path
    """
    from jrinfer._io import check_writable, write_text

    path = check_writable(path, overwrite=overwrite, what="report")
    page = report_html(posterior, summary, **kwargs)  # render first: a failure leaves no file behind
    return write_text(path, page)


def render_report(fit_dir, out=None, *, overwrite: bool = False, **kwargs) -> Path:
    """Render the report page of a fit directory written by ``jrinfer fit``.

    Parameters
    ----------
    fit_dir : str or Path
        Folder with ``posterior.nc`` (required) and ``summary.json``.
    out : str or Path, optional
        HTML file to write (default ``fit_dir / "report.html"``).
    overwrite : bool
        Replace an existing page (CLI: ``--force``).
    **kwargs
        Passed to :func:`report_html`.

    Returns
    -------
    pathlib.Path
        The page written.

    Raises
    ------
    FileNotFoundError
        When ``fit_dir`` or its ``posterior.nc`` is missing.
    FileExistsError
        When ``out`` exists and ``overwrite`` is False.
    """
    fit_dir = Path(fit_dir)
    out = fit_dir / "report.html" if out is None else Path(out)
    from jrinfer._io import check_writable

    check_writable(out, overwrite=overwrite, what="report")  # before the (slow) rendering
    summary, posterior = _load(fit_dir)
    return write_report(posterior, out, summary, overwrite=overwrite, **kwargs)
