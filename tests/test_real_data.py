"""Every EEGMAT resting recording in the data cache, fitted as a user would (O1/O2, 2-40 Hz, defaults).

What issue 11 asks of each backend on real data: the fit reproduces the alpha peak frequency
within 0.5 Hz (two bins of the 0.25 Hz Welch grid) and the log-power shape with R^2 >= 0.9,
and says it converged (or, for the samplers, that its chains did not mix). Subjects are discovered in the cache, so adding recordings widens the test.
"""

import functools
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import require_recordings


def _rest_subjects() -> list[int]:
    root = Path(os.environ.get("JRINFER_DATA", "")) / "eegmat"
    found = sorted(int(m.group(1)) for p in root.glob("Subject*_1.edf") if (m := re.match(r"Subject(\d+)_1", p.name)))
    return found or [0]  # no cache: one id, so the test reports the missing recording (skip, or fail in CI)


def _laplace(problem):
    from jrinfer.backends.laplace import VariationalLaplace

    return VariationalLaplace().fit(problem, seed=0)


#: A NUTS budget whose chains are reliably usable here (2 x (500 tune + 500 draws), Laplace start and mass
#: matrix, fused log-likelihood): at 2 x (200 + 200) subject 3's R-hat was 1.02-1.24 depending on the seed (and
#: 1.01-1.05 at 300 + 300); at 500 + 500 it was 1.008-1.014 on every subject. It still does not reach the
#: library's own thresholds (see the xfail below).
NUTS_BUDGET = {"chains": 2, "tune": 500, "draws": 500}


def _nuts(problem):
    from jrinfer.backends.pymc import NUTS

    return NUTS(**NUTS_BUDGET, seed=0, init="laplace").fit(problem)


#: SMC's budget: 2 chains x 500 particles (PyMC's tempered SMC, independent Metropolis-Hastings mutations).
#: Measured with three other jobs on the 2 cores (subjects 0 / 3 / 5): 88 / 103 / 106 s, 13-14 tempering
#: stages, 66,500-83,000 likelihood evaluations, R-hat 1.008 / 1.005 / 1.008, peak 0.25 / -0.5 / -0.5 Hz off,
#: R^2 0.907 / 0.957 / 0.945.
SMC_BUDGET = {"chains": 2, "draws": 500}


def _smc(problem):
    from jrinfer.backends.pymc import SMC

    return SMC(**SMC_BUDGET, seed=0).fit(problem)


BACKENDS = {"laplace": _laplace, "nuts": _nuts, "smc": _smc}


@functools.lru_cache(maxsize=None)
def _fit(subject: int, backend: str):
    """The backend's fit of the subject's rest recording (O1/O2 averaged, 2-40 Hz, default prior); cached."""
    import jrinfer
    from jrinfer import InverseProblem, SpectrumObservation

    require_recordings(f"eegmat/Subject{subject:02d}_1.edf")
    data = jrinfer.datasets.eegmat_spectrum(subject, 1, channels=("O1", "O2"), fmin=2.0, fmax=40.0)
    data = data.mean_over_channels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return BACKENDS[backend](InverseProblem(SpectrumObservation(), None, data))


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("subject", _rest_subjects())
def test_eegmat_rest_alpha_peak_and_shape(subject, backend):
    post = _fit(subject, backend)
    q = post.fit_quality
    if backend == "nuts":
        # the fast path and the Laplace start were used; usable chains (no draw at the tree-depth limit, R-hat <
        # 1.05, Gelman et al.'s older 1.1 halved, at most 2 % divergent), or the posterior says they are not
        d = post.diagnostics
        assert d["fused_loglike"] and d["init"] == "laplace", d
        mixed = (d["tree_depth_saturated"] == 0.0 and d["rhat_max"] < 1.05
                 and d["divergences"] <= 0.02 * NUTS_BUDGET["chains"] * NUTS_BUDGET["draws"])
        # Chains that did not mix must say so. The Hopf boundary cuts these posteriors (issue 8): on subject 0,
        # seed 0 gave R-hat 1.62 with 98 divergences, seed 1 R-hat 1.004 with 6 (2 x (500 + 500)).
        assert mixed or (post.status != "converged"
                         and any("R-hat" in w or "divergent" in w for w in post.warnings)), (d, post.warnings)
    elif backend == "smc":
        # the particle populations of the chains agree (R-hat < 1.05), or the posterior says they do not
        d = post.diagnostics
        assert d["rhat_max"] < 1.05 or (post.status != "converged" and any("R-hat" in w for w in post.warnings)), (
            d["rhat_max"], post.warnings)
        assert post.log_evidence is not None and np.isfinite(post.log_evidence)
    else:
        assert post.status == "converged", (post.status, post.message)
    assert abs(q["peak_shift_hz"]) <= 0.5 + 1e-9, q
    assert q["r2_log_power"] >= 0.9, q
    # the posterior predictive (observation noise included) is centred on the data's peak too
    freqs = np.asarray(post.observed["coord_values"])
    band = (freqs >= 6.0) & (freqs <= 14.0)
    median = np.median(np.log(post.predictive.reshape(-1, freqs.size)), axis=0)
    assert abs(freqs[band][median[band].argmax()] - q["peak_frequency_data_hz"]) <= 0.5 + 1e-9


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="the library's thresholds (R-hat <= 1.01, ESS >= 100 per chain, no divergence) are not reached at the "
    "test budget, 2 x (500 + 500): measured on subjects 0/3/5, R-hat 1.008/1.012/1.014, tail ESS 435/86/209, 7/9/8 "
    "divergences (at 2 x (200 + 200): R-hat up to 1.24, 1-34 divergences); the Hopf boundary cuts these posteriors "
    "(NUTS notes), and the divergences did not fall with longer chains. NUTS(boundary='pole') samples the dominant "
    "pole instead of C and b: on subject 0, 2 x (300 + 300) gave R-hat 1.005 and 1 divergence (98 in the prior's "
    "coordinates; benchmarks/RESULTS.md), at ~12 ms per gradient, too slow for this suite",
)
@pytest.mark.parametrize("subject", _rest_subjects())
def test_eegmat_rest_nuts_diagnostics(subject):
    """NUTS on each rest recording passes its own convergence checks (R-hat, bulk/tail ESS, divergences)."""
    from jrinfer.backends.pymc import ESS_MIN_PER_CHAIN, RHAT_MAX

    post = _fit(subject, "nuts")
    d = post.diagnostics
    assert d["rhat_max"] <= RHAT_MAX, d["rhat_max"]
    assert min(d["ess_bulk_min"], d["ess_tail_min"]) >= ESS_MIN_PER_CHAIN * d["n_chains"], d
    assert d["divergences"] == 0 and d["tree_depth_saturated"] <= 0.01, d
    assert post.status == "converged", post.warnings


def _alpha_power(subject: int, run: int) -> float:
    """Alpha-band (8-13 Hz) power of the O1/O2 mean Welch spectrum, µV² (trapezoid over frequency)."""
    import jrinfer

    data = jrinfer.datasets.eegmat_spectrum(subject, run, channels=("O1", "O2"), fmin=2.0, fmax=40.0)
    f, p = data.freqs.numpy(), data.mean_over_channels().power[0].numpy()
    band = (f >= 8.0) & (f <= 13.0)
    return float(np.trapezoid(p[band], f[band]))


@pytest.mark.slow
def test_eegmat_task_has_less_alpha_than_rest():
    """Mental arithmetic (``_2``) lowers occipital alpha power against rest (``_1``), in every subject cached.

    Measured task/rest ratios of 8-13 Hz power: subject 0 0.977, subject 3 0.254, subject 5 0.927 (subject 0's
    2 % is within the scatter of a 30-segment Welch estimate: the group effect is the robust one).
    """
    subjects = _rest_subjects()
    require_recordings(*(f"eegmat/Subject{s:02d}_{k}.edf" for s in subjects for k in (1, 2)))
    ratios = {s: _alpha_power(s, 2) / _alpha_power(s, 1) for s in subjects}
    assert all(r < 1.0 for r in ratios.values()), ratios
    assert np.mean(np.log(list(ratios.values()))) < np.log(0.8), ratios  # on average at least 20 % less


@pytest.mark.slow
def test_eeglab_erp_band_of_a_failing_gaussian_is_flagged(tmp_path, capsys):
    """EEGLAB tutorial set, 'square' ERP at Pz (-0.2-0.6 s, baseline -0.2-0): the Laplace Gaussian (k-hat 0.79)
    reaches parameter sets near instability whose predicted ERPs are tens of times the data. Measured (seed 0):
    the band of the Gaussian's draws reaches 19 x the data's 31 uV peak; importance-resampled draws (--resample)
    give a band of the data's size (1.0 x). 45 % of the Gaussian's draws are on the lower branch, and there the
    pulse kicks most of them onto the coexisting limit cycle: those "responses" oscillate for good (37 % of the
    draws; before issue 11 they were predicted as ERPs, the median draw's log-likelihood fell 2.1e3 nats below the
    fit's and the predictive was 'ruled out'); they are now invalid, with that reason, and the rest's median draw
    is 36 nats below the fit (threshold 104). The fit must say so: status 'warning' (k-hat), and the warning that
    names the limit cycle."""
    import json

    from jrinfer import Posterior
    from jrinfer.cli import main

    require_recordings("eeglab_sample/eeglab_data.set", "eeglab_sample/eeglab_data.fdt")
    path = os.path.join(os.environ["JRINFER_DATA"], "eeglab_sample", "eeglab_data.set")
    args = ["fit", path, "--kind", "evoked", "--event-id", "square", "--picks", "Pz", "--baseline=-0.2,0",
            "--tmin", "-0.2", "--tmax", "0.6", "--quiet"]
    bands = {}
    for name, extra in (("gaussian", []), ("resampled", ["--resample"])):
        out = tmp_path / name
        assert main([*args, *extra, "--out", str(out)]) == 0, capsys.readouterr().err
        post = Posterior.from_netcdf(out / "posterior.nc")
        values = np.asarray(post.observed["values"])
        lo, hi = np.quantile(post.predictive.reshape(-1, *values.shape), [0.05, 0.95], axis=0)
        bands[name] = (max(hi.max(), -lo.min()) / np.abs(values).max(), post)
    ratio, post = bands["gaussian"]
    s = json.loads((tmp_path / "gaussian" / "summary.json").read_text())
    assert ratio > 5 and s["status"] == "warning" and "Pareto k-hat" in s["status_message"]
    invalid = post.diagnostics["invalid_draws"]
    assert invalid["fraction"] > 0.1 and any("onto the limit cycle" in r for r in invalid["reasons"]), invalid
    assert any("cannot predict" in w and "onto the limit cycle" in w for w in s["warnings"])
    assert bands["resampled"][0] < 3  # the importance-resampled posterior's band is of the data's size


@pytest.mark.slow
def test_eegmat_rest_fit_verdict_reads_out_the_misfit_beyond_r2():
    """EEGMAT Subject00_1 (O1, O2; the cached Laplace fit): R^2 0.908 meets 0.9, yet the residuals are about
    5 x the Welch noise (chi-square 4035 over 153 frequencies); the verdict says so and names the broad
    17-28 Hz bump, data above the model (measured: ratio 5.1, largest run 17.75-28 Hz peaking at 22 Hz)."""
    post = _fit(0, "laplace")
    q = post.fit_quality
    assert q["r2_log_power"] >= 0.9 and not q["residuals_within_noise"], q
    assert 3.0 < q["residual_noise_ratio"] < 8.0, q
    assert q["misfit_sign"] == 1 and 13.0 <= q["misfit_peak_hz"] <= 30.0, q
    assert "misses structure the data resolve" in q["verdict"] and "(beta?; data above the model" in q["verdict"]
    assert q["verdict"] in next(line for line in repr(post).splitlines() if line.startswith("  fit:"))
