"""``jrinfer report``: a self-contained HTML page of a fit, and the plots it shows."""

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("arviz")

from jrinfer import Posterior  # noqa: E402
from jrinfer.cli import main  # noqa: E402
from selfcontained import PNG, check_self_contained  # noqa: E402

MISFIT = "poor fit: R^2 of log-power = 0.41 (< 0.9); try --method simulation"


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _posterior(kind="spectrum", rng=None):
    """A small fit-like Posterior (no fitting): known draws, data, predictive, prior, warnings."""
    rng = np.random.default_rng(0) if rng is None else rng
    names = ("A", "a", "gain", "log_precision")
    units = {"A": "mV", "a": "1/s", "gain": "1", "log_precision": "1", "e0": "1/s"}
    n = 400
    A = rng.lognormal(np.log(3.25), 0.05, n)
    draws = np.stack([A, rng.normal(100, 3, n), 0.013 / A * rng.lognormal(0, 0.02, n), rng.normal(3, 0.1, n)], -1)
    prior = np.stack([rng.lognormal(np.log(3.25), 0.2, 200), rng.lognormal(np.log(100), 0.2, 200),
                      rng.lognormal(np.log(0.004), 1.5, 200), rng.normal(3, 2, 200)], -1)
    if kind == "spectrum":
        x = np.arange(2.0, 40.01, 0.5)
        fit = 10.0 / x + 30 * np.exp(-0.5 * ((x - 10.25) / 1.2) ** 2)
        y = fit * np.exp(0.2 * rng.standard_normal(x.size))
        pred = fit * np.exp(0.2 * rng.standard_normal((1, 100, 1, x.size)))
        observed = {"values": y[None], "coord": "freq", "coord_values": x, "coord_units": "Hz",
                    "channels": ["O1"], "units": "uV^2/Hz"}
        quality = {"r2_log_power": 0.41, "peak_frequency_data_hz": 10.5, "peak_frequency_model_hz": 10.0,
                   "noise_sd_log_power": 0.2}
    else:
        x = np.arange(-0.1, 0.4, 0.004)
        fit = -5 * np.exp(-0.5 * ((x - 0.1) / 0.02) ** 2) * (x > 0)
        y = fit + 0.3 * rng.standard_normal(x.size)
        pred = fit + 0.3 * rng.standard_normal((1, 100, 1, x.size))
        observed = {"values": y[None], "coord": "time", "coord_values": x, "coord_units": "s",
                    "channels": ["EEG 001"], "units": "uV"}
        quality = {"explained_variance": 0.41, "peak_latency_data_s": 0.1, "peak_latency_model_s": 0.1}
    return Posterior(
        # what the assembly makes of a misfit with k-hat 0.91: status "warning", the backend's own verdict kept
        names=names, draws=draws[None], backend="laplace", status="warning", message="converged after 7 iterations",
        status_message="Pareto k-hat 0.91 > 0.7: the Gaussian approximation cannot be trusted; poor fit: R^2 0.41",
        log_evidence=-123.4, diagnostics={"pareto_k": 0.91, "n_iter": 7, "optimizer_converged": True,
                                          "backend_status": "converged",
                                          "invalid_draws": {"n_checked": 100, "n_invalid": 2, "fraction": 0.02,
                                                            "reasons": ["upper equilibrium unstable"]}},
        observed=observed, predictive=pred, prior_draws=prior[None], units=units, fit=fit[None],
        fit_quality=quality, contraction={"A": 0.1, "a": 0.9, "gain": 0.95, "log_precision": 0.99},
        warnings=(MISFIT,),
    )


def _fit_dir(tmp_path, kind="spectrum"):
    post = _posterior(kind)
    d = tmp_path / f"fit_{kind}"
    d.mkdir()
    post.to_netcdf(d / "posterior.nc")
    summary = {**post.summary(), "data": {"file": "/data/rest.edf", "kind": kind, "channels_used": ["O1"],
                                          "channels_dropped": [{"channel": "ECG", "reason": "not EEG"}]},
               "observation": "SpectrumObservation(method='transfer')", "prior": {"fixed": {"e0": 2.5}}}
    (d / "summary.json").write_text(json.dumps(summary, default=float))
    return d


def test_report_page_is_self_contained_and_puts_the_misfit_on_top(tmp_path, capsys):
    d = _fit_dir(tmp_path)
    code, out, err = run(capsys, "report", str(d))
    assert code == 0, err
    page = (d / "report.html").read_text(encoding="utf-8")
    assert check_self_contained(page) >= 3  # fit, marginals, pair plot
    # the warning comes before the tables and the plots, in the red (misfit) box
    verdict = page.index('class="verdict bad"')
    assert verdict < page.index(MISFIT.replace("<", "&lt;")) < page.index("<h2>Parameters</h2>") < page.index("<img")
    for text in ("not informed", "µV²/Hz", "s⁻¹", "/data/rest.edf", "ECG (not EEG)", "2–40 Hz", "Pareto k",
                 "unreliable", "-123.4", "invalid predictive draws", "2 of 100 (2.0 %)", "SpectrumObservation(method="):
        assert text in page, text
    assert not [q.name for q in d.iterdir() if q.name.startswith(".")]  # atomic write left nothing behind
    # never overwrites without --force; errors are one line in CLI words
    code, _, err = run(capsys, "report", str(d))
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "report", str(d), "--force", "--out", str(tmp_path / "page.html"), "--json")
    assert code == 0 and (tmp_path / "page.html").stat().st_size > 10_000


@pytest.mark.parametrize(
    "args, match",
    [(["report", "missing_dir"], "DIR missing_dir: no such directory"), (["report", "."], "no posterior.nc")],
)
def test_report_bad_input_exits_2(tmp_path, capsys, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *args)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1


def test_report_of_an_evoked_fit(tmp_path):
    from jrinfer.report import render_report

    d = _fit_dir(tmp_path, "evoked")
    page = render_report(d).read_text(encoding="utf-8")
    assert check_self_contained(page) >= 3
    assert "explained variance" in page and "−100 to 396 ms" not in page and "-100 to 396 ms" in page


def test_plots_people_expect(tmp_path):
    from jrinfer import plotting

    post = _posterior()
    fig = plotting.plot_fit(post, tmp_path / "fit.png")
    assert (tmp_path / "fit.png").read_bytes()[:8] == PNG
    ax, rax = fig.axes[:2]
    assert ax.get_yscale() == "log" and "µV²/Hz" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("alpha band" in t for t in labels) and "posterior predictive 90 %" in labels
    x, y = post.observed["coord_values"], post.observed["values"][0]
    band = (x >= 6) & (x <= 14)
    assert f"data peak {x[band][y[band].argmax()]:.2f} Hz" in labels and "model peak 10.00 Hz" in labels
    assert "residual" in rax.get_ylabel() and "fitted noise sd" in rax.get_ylabel()
    # with the Welch noise known, the residual panel is in its units, as the fit verdict is
    import dataclasses

    welch = dataclasses.replace(post, fit_quality={**post.fit_quality, "noise_sd_welch": 0.05})
    rax = plotting.plot_fit(welch).axes[1]
    assert "Welch noise sd" in rax.get_ylabel()
    z = rax.lines[-2].get_ydata()  # the residual trace (then the > 3 sd markers)
    expected = (np.log(post.observed["values"][0]) - np.log(post.fit[0])) / 0.05
    np.testing.assert_allclose(z, expected, rtol=1e-12)
    fig = plotting.plot_marginals(post)
    titles = [a.get_title() for a in fig.axes if a.get_visible()]
    assert any("A" in t and "not informed" in t for t in titles) and not any("gain" in t and "not" in t for t in titles)
    assert plotting._pair_names(post, 2) == ["A", "gain"]  # the strongest trade-off
    fig = plotting.plot_pair(post, names=["A", "gain", "a"])
    assert len([a for a in fig.axes if a.get_visible()]) >= 6
    with pytest.raises(ValueError, match="not parameters"):
        plotting.plot_marginals(post, names=["nope"])
    fig = plotting.plot_evoked_fit(_posterior("evoked"))
    assert "µV" in fig.axes[0].get_ylabel()
    assert plotting.pretty_units("uV^2/Hz") == "µV²/Hz" and plotting.pretty_units("1/s") == "s⁻¹"
    assert plotting.pretty_units("1") == "" and plotting.pretty_units("mV") == "mV"


def test_nested_diagnostics_read_as_lists_and_tables_not_json():
    """A backend's nested records (NPE's rounds, out-of-distribution check; VL's optima) were dumped as Python dicts
    and JSON in the report: they read as key = value lists and tables now, long ones folded under a one-line gist."""
    import dataclasses

    from jrinfer.report import report_html

    post = _posterior()
    rounds = [{"round": r, "simulations": 1000, "r2_log_power": 0.7 + 0.1 * r} for r in range(3)]
    ood = {"mahalanobis2": 29.9, "percentile": 38.0, "descriptors": {"level": 0.4, "slope": 0.6}}
    post = dataclasses.replace(post, diagnostics={**post.diagnostics, "rounds": rounds, "out_of_distribution": ood,
                                                  "optima": [{"F": -1.0, "mean": {"a": 1.0}}] * 30})
    page = report_html(post, {})
    assert "{&#x27;" not in page and "{'" not in page and '{&quot;' not in page and '[{' not in page
    assert "<th>round</th><th>simulations</th><th>r2_log_power</th>" in page and "<td>0.9</td>" in page
    assert "<li><b>descriptors</b>: level = 0.4; slope = 0.6</li>" in page and "<li><b>mahalanobis2</b>: 29.9</li>" in page
    assert "<details><summary>30 items</summary>" in page  # the long list of optima folds away


def test_a_long_channel_mean_title_is_shortened_and_stays_inside_the_figure():
    """The CLI names an average of 32 channels mean(EEG Fp1,...): the panel title must not run off the figure."""
    from jrinfer import plotting

    names = [f"EEG Ch{i:02d}" for i in range(32)]
    post = _posterior("evoked")
    post.observed["channels"] = ["mean(" + ",".join(names) + ")"]
    fig = plotting.plot_evoked_fit(post)
    title = fig.axes[0].title
    text = title.get_text()
    assert text.replace("\n", " ").replace("\u00a0", " ") == "mean of 32 channels: EEG Ch00, EEG Ch01, EEG Ch02, ..., EEG Ch31"
    assert "EEG\n" not in text  # lines break between channel names
    fig.canvas.draw()
    box, frame = title.get_window_extent(), fig.bbox
    assert box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1, (box, frame)
    # a short name is left as it is
    assert plotting._channel_title("Pz") == "Pz"
    assert plotting._channel_title("mean(O1,O2)") == "mean of 2 channels: O1, O2"


def test_bifurcation_diagram_labels_hopf_and_fold():
    from jrinfer import plotting

    p = np.linspace(0, 350, 50)
    v = np.stack([np.linspace(6, 8, 50), np.where(p < 110, 4 - p / 60, np.nan), np.where(p < 110, p / 60, np.nan)], 1)
    stable = np.ones(v.shape, bool)
    fig = plotting.plot_bifurcation(p, v, stable, hopf=[(89.8, 6.7), (315.7, 8.1)], fold=[(113.6, 2.6)])
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "Hopf\np = 89.8" in texts and "Hopf\np = 315.7" in texts and "fold\np = 113.6" in texts
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Hopf" in labels and "fold (saddle-node)" in labels


def test_fit_report_flag_writes_the_page(tmp_path, capsys):
    from importlib import resources

    csv = resources.files("jrinfer") / "_data" / "synthetic_spectrum.csv"
    out = tmp_path / "fit"
    code, stdout, err = run(capsys, "fit", str(csv), "--kind", "spectrum", "--out", str(out), "--report")
    assert code == 0, err
    assert "report.html" in stdout
    page = (out / "report.html").read_text(encoding="utf-8")
    assert check_self_contained(page) >= 3 and "synthetic_spectrum.csv" in page


def test_report_labels_quality_keys_shows_one_prior_invalid_figure_and_a_sampler_table(tmp_path):
    """Fit-quality keys get human labels; the prior-invalid fraction appears once; NUTS diagnostics are a table."""
    import dataclasses

    from jrinfer.backends.pymc import RHAT_MAX
    from jrinfer.report import report_html

    post = _posterior()
    names = post.names
    diag = {"rhat": {n: 1.002 for n in names} | {"a": 1.03}, "ess_bulk": {n: 900.0 for n in names},
            "ess_tail": {n: 700.0 for n in names} | {"gain": 150.0}, "rhat_max": 1.03, "ess_bulk_min": 900.0,
            "ess_tail_min": 150.0, "n_chains": 2, "divergences": 3, "tree_depth_saturated": 0.0, "max_treedepth": 10,
            "prior_invalid_fraction": 0.12, "settings": {"chains": 2, "tune": 200, "draws": 200}}
    nuts = dataclasses.replace(post, backend="nuts", diagnostics=diag, log_evidence=None,
                               fit_quality={**post.fit_quality, "harmonic_excess_log_power": 1.3})
    page = report_html(nuts, {"prior_validity": {"n_samples": 1000, "invalid_fraction": 0.081, "reasons": []}})
    # one prior-invalid figure, labelled with its sample size; the backend's own count is not shown beside it
    assert page.count("prior draws the model cannot evaluate") == 1 and "8.1 % of 1000 prior draws" in page
    assert "prior_invalid_fraction" not in page and "12.0 %" not in page
    # where the fit explains the figure by regime, the page gives the explanation beside it
    explained = {"n_samples": 1000, "invalid_fraction": 0.46, "reasons": [],
                 "explanation": "46 % of 1000 prior draws cannot be predicted by this observation: 29 % on the lower "
                                "branch (...). The fit describes the stable regime, which holds 54 % of the prior"}
    page2 = report_html(nuts, {"prior_validity": explained})
    assert "46.0 % of 1000 prior draws: 29 % on the lower branch (...). The fit describes the stable regime" in page2
    # raw keys come with a label and their meaning
    assert "excess log-power at twice the alpha peak" in page and "R² of log-power" in page
    # sampler diagnostics: per-parameter rows with thresholds and pass/fail, not truncated JSON
    assert f"R-hat (≤ {RHAT_MAX:g})" in page and "bulk ESS (≥ 200)" in page and "tail ESS (≥ 200)" in page
    row_a = page[page.index("<th class='l'>a</th>"):].split("</tr>")[0]
    assert "1.03" in row_a and "fail" in row_a
    row_gain = page[page.index("<th class='l'>gain</th>"):].split("</tr>")[0]
    assert "150" in row_gain and "fail" in row_gain and row_gain.count("pass") == 2
    div = page[page.index("divergent transitions after tuning"):].split("</tr>")[0]
    assert ">3<" in div and "fail" in div
    assert "draws at the maximum tree depth (10)" in page and '{"A": 1.002' not in page
    assert "tune = 200" in page
    # without summary.json's count, the backend's own is the one figure shown
    page = report_html(nuts, {})
    assert page.count("prior draws the model cannot evaluate") == 1 and "12.0 % of 200 prior draws" in page


def test_report_explains_interval_against_bayes_factor():
    from jrinfer.conditions import INTERVAL_VS_BF
    from jrinfer.report import report_html

    e = {"parameter": "delta_a_task", "scale": "log", "mean": 0.18, "sd": 0.1, "lower": 0.016, "upper": 0.344,
         "interval": 0.9, "ratio": 1.2, "ratio_lower": 1.02, "ratio_upper": 1.41, "log_bayes_factor": 0.58,
         "p_difference": 0.64, "evidence": "inconclusive",
         "agreement": "differ: the interval leaves out 'no difference' but the evidence is weak"}
    summary = {"condition_effects": {"reference": "rest", "conditions": ["rest", "task"], "method": "BMR",
                                     "effects": {"a": {"task": e}}}}
    page = report_html(_posterior(), summary)
    import html

    assert html.escape(INTERVAL_VS_BF) in page
    assert "differ: the interval leaves out &#x27;no difference&#x27;" in page or "differ: the interval leaves out 'no difference'" in page


def test_report_verdict_says_why_the_status_is_a_warning(tmp_path):
    import dataclasses

    from jrinfer.report import render_report

    post = dataclasses.replace(_posterior("spectrum"), status="warning",
                               status_message="Pareto k-hat 0.91 > 0.7: the Gaussian approximation cannot be trusted",
                               diagnostics={**_posterior("spectrum").diagnostics, "optimizer_converged": True})
    d = tmp_path / "fit"
    d.mkdir()
    post.to_netcdf(d / "posterior.nc")
    page = render_report(d, d / "report.html").read_text(encoding="utf-8")
    verdict = page[page.index('class="verdict'):page.index("<h2>")]
    assert "Status warning (backend converged)" in verdict  # the fit's status and the backend's own verdict ...
    assert 'class="verdict bad"' in verdict  # one verdict with the status, summary.json and --strict
    assert "<b>status warning:</b> Pareto k-hat 0.91 &gt; 0.7" in verdict  # ... and why the fit's status is not


def test_report_verdict_follows_the_status_for_a_converged_fit_with_notes(tmp_path):
    """A converged fit whose warnings are notes (no misfit rule fired) is "read before using", not "not to be trusted"."""
    import dataclasses

    from jrinfer.report import render_report

    base = _posterior("spectrum")
    post = dataclasses.replace(base, status="converged", status_message="",
                               warnings=("the data have a peak near 21.0 Hz, twice the alpha peak, that the prediction "
                                         "lacks: a harmonic",),
                               diagnostics={**base.diagnostics, "optimizer_converged": True})
    d = tmp_path / "fit"
    d.mkdir()
    post.to_netcdf(d / "posterior.nc")
    page = render_report(d, d / "report.html").read_text(encoding="utf-8")
    verdict = page[page.index('class="verdict'):page.index("<h2>")]
    assert 'class="verdict warn"' in verdict and "Status converged (backend converged); 1 warning" in verdict
    assert "not to be trusted" not in verdict


def _legend_clear_of_the_data(fig):
    """Every legend of the figure lies outside its axes (so off every data line) and inside the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    checked = 0
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        assert not box.overlaps(ax.get_window_extent(renderer)), (box, ax.get_window_extent(renderer))
        for line in ax.get_lines():
            if line.get_label() in ("data",) or line.get_label().startswith(("variational", "fit", "posterior")):
                assert not box.overlaps(line.get_window_extent(renderer)), line.get_label()
        figbox = fig.bbox
        assert figbox.x0 <= box.x0 and box.x1 <= figbox.x1 and figbox.y0 <= box.y0 and box.y1 <= figbox.y1
        checked += 1
    return checked


@pytest.mark.parametrize("kind", ["spectrum", "evoked"])
def test_fit_legends_do_not_cover_the_data_even_under_a_wide_band(kind):
    """NPE's predictive band can fill the axes (every corner); the legend goes outside the axes instead."""
    from jrinfer import plotting

    post = _posterior(kind)
    plotting.plot_fit(post)  # a typical band
    assert _legend_clear_of_the_data(plotting.plot_fit(post)) == 1
    import dataclasses

    post = _posterior(kind)  # a band spanning the whole axes, as a broad NPE posterior gives
    rng = np.random.default_rng(1)
    shape = (1, 100, 1, post.fit.shape[-1])
    if kind == "spectrum":
        pred = post.fit[None, None] * np.exp(5.0 * rng.standard_normal(shape))
    else:
        pred = post.fit[None, None] + 20.0 * rng.standard_normal(shape)
    wide = dataclasses.replace(post, predictive=pred)
    fig = plotting.plot_fit(wide)
    assert _legend_clear_of_the_data(fig) == 1
    # the scenario: at both edges (where a legend inside would sit) the 90 % band spans over half the axes height
    ax = fig.axes[0]
    x = wide.observed["coord_values"]
    lo, hi = np.quantile(pred[0, :, 0], [0.05, 0.95], axis=0)
    to_axes = ax.transData + ax.transAxes.inverted()
    for i in (0, -1):
        (_, y_lo), (_, y_hi) = to_axes.transform([(x[i], lo[i]), (x[i], hi[i])])
        assert y_hi - y_lo > 0.5, (kind, i, y_lo, y_hi)


def test_report_puts_the_fit_verdicts_in_the_verdict_box(tmp_path):
    """The fit verdict (residuals against the data's own noise) sits in the verdict box above the warnings, one per
    condition for a fit of conditions; none where the fit has no verdict."""
    import dataclasses

    from jrinfer.report import report_html

    post = _posterior()
    verdict = "R^2 0.908 meets 0.9, but the residuals are 5.1 x the Welch noise SD (90 segments): the model misses"
    page = report_html(dataclasses.replace(post, fit_quality={**post.fit_quality, "verdict": verdict}), {})
    box = page[page.index('class="verdict'):page.index("<h2>")]
    assert "<b>fit:</b> " + verdict in box and box.index(verdict) < box.index("<ul>")
    both = {**post.fit_quality, "verdict_rest": "within noise R", "verdict_task": "beyond noise T"}
    page = report_html(dataclasses.replace(post, fit_quality=both), {})
    assert "<b>fit, rest:</b> within noise R" in page and "<b>fit, task:</b> beyond noise T" in page
    assert "fitverdict" not in report_html(post, {}).split("<style>")[0] + report_html(post, {}).split("</style>")[1]


def test_report_says_which_jrinfer_judged_the_fit_and_flags_an_old_converged_misfit(tmp_path):
    """An old fit (no version recorded) with status 'converged' and R^2 0.41: the report says who judged it and
    that this version calls it a misfit; a current fit shows its version and date."""
    import dataclasses

    import jrinfer
    from jrinfer.report import render_report

    d = _fit_dir(tmp_path)
    old = dataclasses.replace(Posterior.from_netcdf(d / "posterior.nc"), status="converged", status_message="",
                              warnings=())
    (d / "posterior.nc").unlink()
    old.to_netcdf(d / "posterior.nc")
    page = render_report(d, d / "old.html").read_text(encoding="utf-8")
    assert "fitted by an older jrinfer" in page and "Recorded as converged, yet its R² of log-power 0.410" in page
    s = json.loads((d / "summary.json").read_text())
    s.update(jrinfer_version=jrinfer.__version__, created_utc="2026-11-30T09:00:00+00:00")
    (d / "summary.json").write_text(json.dumps(s))
    page = render_report(d, d / "new.html").read_text(encoding="utf-8")
    assert f"fitted by jrinfer {jrinfer.__version__} on 2026-11-30T09:00:00+00:00" in page
    assert "older jrinfer" not in page
