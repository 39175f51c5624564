"""The result every backend returns: plain arrays and names, convertible to ArviZ and back.

A :class:`Posterior` carries its own quality: goodness of fit against the
data (``fit_quality``), what was learned per parameter (``contraction``), the
backend's diagnostics and every warning the user should read (``warnings``),
which :meth:`Posterior.summary`, the ``repr`` and the command line all show.
Backends do not build it field by field: one assembly function
(:func:`jrinfer.backends._assembly.assemble_posterior`) does it for all.
"""

from __future__ import annotations

import json
import math
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Posterior", "CONTRACTION_UNINFORMED", "PARETO_K_UNRELIABLE"]

#: Posterior contraction (``1 - posterior variance / prior variance``, in the
#: prior's unconstrained coordinates) below which a parameter is reported as
#: not informed by the data: its posterior standard deviation is still more
#: than 89 % of the prior's.
CONTRACTION_UNINFORMED = 0.2

#: Pareto k-hat of an approximate posterior against the true one above which the approximation is not
#: to be trusted (Vehtari et al. 2024, "Pareto smoothed importance sampling", JMLR 25:72).
PARETO_K_UNRELIABLE = 0.7

#: Phrases that mark a goodness-of-fit warning as a misfit (README: R² below the observation's
#: threshold, a missed alpha or main peak); every observation's ``goodness_of_fit`` words its misfits so.
MISFIT_MARKERS = ("poor fit:", "peak missed:")


def _percent(name: str, fraction: float) -> str:
    """``"name 42 %"``, with ``< 1 %`` / ``> 99 %`` rather than a share rounded to 0 or 100."""
    pct = 100.0 * fraction
    text = "< 1" if 0 < pct < 0.5 else "> 99" if 99.5 <= pct < 100 else f"{pct:.0f}"
    return f"{name} {text} %"


def _is_misfit(warning: str) -> bool:
    return any(m in warning for m in MISFIT_MARKERS)

_JSON_ATTRS = ("diagnostics", "fit_quality", "contraction", "units", "observed_meta", "warnings", "names")


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


#: fit_quality keys shown on the printed ``fit:`` line (with their ``_<condition>`` variants); the rest are in
#: summary.json and the report.
_HEADLINE_QUALITY = ("r2_log_power", "peak_frequency_data_hz", "peak_frequency_model_hz", "peak_shift_hz",
                     "residual_noise_ratio", "explained_variance", "peak_latency_data_s", "peak_latency_model_s")


def _headline_quality(key: str) -> bool:
    return any(key == k or key.startswith(k + "_") for k in _HEADLINE_QUALITY)


#: The printed summary says so above the parameter table when fewer than this fraction of the draws are distinct
#: (importance-resampled draws of a few proposals, SMC particles that never moved).
DISTINCT_DRAWS_NOTE = 0.5


@dataclass(frozen=True)
class Posterior:
    """Posterior over named parameters, backend-independent.

    Attributes
    ----------
    names : tuple of str
        Parameter names (natural units, as declared in the prior).
    draws : numpy.ndarray
        Posterior draws in natural units, shape ``(n_chains, n_draws, n_params)``.
    backend : str
        Which backend produced it (``"laplace"``, ``"nuts"``, ``"smc"``, ``"npe"``).
    status : str
        Whether the fit can be used as it stands: ``"converged"`` when the
        backend's algorithm converged, its own checks passed, the fit is not a
        misfit (no ``poor fit`` / ``peak missed`` warning), its typical
        predictive draw is not ruled out by the data
        (``diagnostics["predictive_ruled_out"]``) and, for a Gaussian
        approximation, Pareto k-hat is at most :data:`PARETO_K_UNRELIABLE`;
        ``"warning"`` when the algorithm converged but one of these fails; else
        the backend's failure code (``"max_iter"``, ``"failed"``,
        ``"max_epochs"`` ...). ``status_message`` names the reasons; the
        backend's own verdict is kept in ``diagnostics["backend_status"]`` and
        ``diagnostics["optimizer_converged"]`` (see :attr:`converged`).
    message : str
        The backend's description of its run (iterations, draws, time).
    log_evidence : float or None
        Log marginal likelihood estimate in nats (variational Laplace: the
        free energy), if the backend provides one. It is a density of the data
        in their units: it changes by ``-m log(c)`` when ``m`` data values are
        rescaled by ``c`` (not for spectra fitted on log-power, where only
        ratios of power enter), so compare evidences of fits to the *same*
        data in the same units only.
    mean_unconstrained, cov_unconstrained : numpy.ndarray or None
        Gaussian approximation in the prior's unconstrained coordinates
        (``(n,)``, ``(n, n)``), for backends that produce one.
    diagnostics : dict
        Backend diagnostics (JSON-serialisable): e.g. ``pareto_k`` for
        variational Laplace, R-hat/ESS/divergences for MCMC, and
        ``invalid_draws`` for every backend.
    observed : dict or None
        ``{"values": (C, P) array, "coord": "freq" or "time", "coord_values":
        (P,), "coord_units": str, "channels": [...], "units": str}``.
    predictive : numpy.ndarray or None
        Posterior predictive draws (with observation noise) in data units,
        shape ``(n_chains', n_pred, C, P)``; only draws whose prediction is
        valid (never NaN). When some were left out the chains are pooled
        (``n_chains' = 1``) and ``diagnostics["invalid_draws"]`` counts them.
    log_likelihood : numpy.ndarray or None
        Pointwise log-likelihood of the same draws as ``predictive``, shape
        ``(n_chains', n_pred, C, P)`` (for ``arviz.loo``).
    prior_draws : numpy.ndarray or None
        Prior draws in natural units, ``(1, n_prior, n_params)``.
    prior_predictive : numpy.ndarray or None
        Prior predictive draws of the valid prior draws, ``(1, n, C, P)``.
    sample_stats : dict
        Backend statistics per draw, name -> ``(n_chains, n_draws)`` array.
    units : dict
        Units of the parameters (and of fixed ones), name -> str.
    fit : numpy.ndarray or None
        The noise-free prediction the fit quality refers to, ``(C, P)`` in
        data units (variational Laplace: at the posterior mode; otherwise the
        pointwise median over valid posterior draws).
    fit_quality : dict
        Goodness of fit (e.g. ``r2_log_power``, peak frequencies; for ERPs
        ``explained_variance``, peak latencies and the resting state of the
        point estimate), JSON-ready, with ``verdict`` (``verdict_<condition>``
        for a fit of conditions): one line on whether the residuals are within
        the data's own noise, by what factor (``residual_noise_ratio``) and
        where the misfit is largest (:attr:`fit_verdicts`).
    contraction : dict
        Per parameter ``1 - var_post / var_prior`` in unconstrained
        coordinates; below :data:`CONTRACTION_UNINFORMED` the data did not
        inform the parameter.
    warnings : tuple of str
        Everything the user should know about this fit: misfit, untrustworthy
        approximation, invalid draws, uninformed parameters, data problems.
    status_message : str
        Why ``status`` is not ``"converged"`` (empty when it is).
    """

    names: tuple[str, ...]
    draws: np.ndarray
    backend: str
    status: str = "converged"
    message: str = ""
    log_evidence: float | None = None
    mean_unconstrained: np.ndarray | None = None
    cov_unconstrained: np.ndarray | None = None
    diagnostics: dict = field(default_factory=dict)
    observed: dict | None = None
    predictive: np.ndarray | None = None
    log_likelihood: np.ndarray | None = None
    prior_draws: np.ndarray | None = None
    prior_predictive: np.ndarray | None = None
    sample_stats: dict = field(default_factory=dict)
    units: dict = field(default_factory=dict)
    fit: np.ndarray | None = None
    fit_quality: dict = field(default_factory=dict)
    contraction: dict = field(default_factory=dict)
    warnings: tuple = ()
    status_message: str = ""

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))
        d = np.asarray(self.draws, dtype=float)
        if d.ndim != 3 or d.shape[-1] != len(self.names):
            raise ValueError(
                f"draws must have shape (n_chains, n_draws, {len(self.names)}) for names {list(self.names)}, "
                f"got {d.shape}"
            )
        object.__setattr__(self, "draws", d)
        object.__setattr__(self, "warnings", tuple(str(w) for w in self.warnings))
        for name in ("predictive", "log_likelihood", "prior_predictive"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=float)
                if value.ndim != 4:
                    raise ValueError(f"{name} must have shape (n_chains, n_draws, C, P), got {value.shape}")
                if np.isnan(value).any():
                    raise ValueError(f"{name} must not hold NaN (leave invalid draws out and count them)")
                object.__setattr__(self, name, value)

    # ---------------------------------------------------------- summaries
    @property
    def converged(self) -> bool:
        """True when the backend's algorithm converged and passed its own checks.

        The optimiser (variational Laplace), the sampler's diagnostics (NUTS,
        SMC) or the training (NPE): ``diagnostics["optimizer_converged"]``. A
        converged fit can still be untrustworthy (``status == "warning"``: a
        misfit or Pareto k-hat above :data:`PARETO_K_UNRELIABLE`); ``status ==
        "converged"`` says it is neither.
        """
        flag = self.diagnostics.get("optimizer_converged") if self.diagnostics else None
        return bool(flag) if isinstance(flag, bool) else self.status == "converged"

    @property
    def mean(self) -> np.ndarray:
        """Posterior mean in natural units, ``(n_params,)``."""
        return self.draws.reshape(-1, len(self.names)).mean(0)

    @property
    def sd(self) -> np.ndarray:
        """Posterior standard deviation in natural units, ``(n_params,)``."""
        return self.draws.reshape(-1, len(self.names)).std(0, ddof=1)

    def quantile(self, q: float) -> np.ndarray:
        """Posterior quantile ``q`` in natural units, ``(n_params,)``."""
        return np.quantile(self.draws.reshape(-1, len(self.names)), q, axis=0)

    @property
    def uninformed(self) -> tuple[str, ...]:
        """Parameters whose contraction is below :data:`CONTRACTION_UNINFORMED` (posterior ≈ prior)."""
        return tuple(n for n in self.names if self.contraction.get(n, 1.0) < CONTRACTION_UNINFORMED)

    @property
    def non_gaussian_marginals(self) -> dict:
        """Parameters whose Gaussian marginal the importance-weighted one contradicts: name -> record.

        Variational Laplace only, for the Gaussian's own draws (not
        ``resample=True``): ``diagnostics["importance_marginals"]`` (PSIS
        weights of the Gaussian's draws against the true posterior, Vehtari et
        al. 2024; see :func:`jrinfer.backends.laplace._importance_marginals`).
        Their ``contraction`` is the weighted one; the draws, mean and sd
        are still the Gaussian's.
        """
        d = self.diagnostics or {}
        if d.get("importance_resampled"):
            return {}
        im = (d.get("importance_marginals") or {}).get("parameters") or {}
        return {n: r for n, r in im.items() if isinstance(r, dict) and r.get("non_gaussian") and n in self.names}

    def summary(self) -> dict:
        """JSON-ready summary.

        Per parameter: mean, sd, 5 % and 95 % quantiles (natural units),
        ``units``, ``contraction`` and ``informed``; for a parameter whose
        Gaussian (Laplace) marginal the importance-weighted one contradicts
        (:meth:`non_gaussian_marginals`) also ``marginal`` (its shape in
        words) and ``weighted_mean``, ``weighted_sd``, ``weighted_q05``,
        ``weighted_q95`` and ``gaussian_contraction``; where the weighted
        figures are known, ``mean``, ``sd``, ``q05`` and ``q95`` are the
        weighted ones (as printed and in the report) and the Gaussian's, which
        the draws follow, are ``gaussian_mean``, ``gaussian_sd``,
        ``gaussian_q05``, ``gaussian_q95``; then status, fit quality,
        warnings, backend diagnostics and the log evidence.
        """
        q05, q95 = self.quantile(0.05), self.quantile(0.95)
        flagged = self.non_gaussian_marginals
        params = {}
        for n, m, s, a, b in zip(self.names, self.mean, self.sd, q05, q95):
            c = self.contraction.get(n)
            params[n] = {
                "mean": float(m),
                "sd": float(s),
                "q05": float(a),
                "q95": float(b),
                "units": self.units.get(n, ""),
                "contraction": None if c is None else float(c),
                "informed": None if c is None else bool(c >= CONTRACTION_UNINFORMED),
            }
            if n in flagged:
                r = flagged[n]
                params[n]["marginal"] = r.get("shape", "not Gaussian")
                params[n].update({k: r[k] for k in ("weighted_mean", "weighted_sd", "weighted_q05", "weighted_q95",
                                                     "gaussian_contraction") if k in r})
                if "weighted_mean" in r:
                    # the headline figures are the weighted ones, as printed and in the report (the contraction is
                    # the weighted one already); the Gaussian's, which the draws follow, are kept beside them
                    g = params[n]
                    g.update(gaussian_mean=g["mean"], gaussian_sd=g["sd"], gaussian_q05=g["q05"], gaussian_q95=g["q95"])
                    g.update(mean=r["weighted_mean"], sd=r["weighted_sd"], q05=r["weighted_q05"], q95=r["weighted_q95"])
        return {
            "backend": self.backend,
            "status": self.status,
            "status_message": self.status_message,
            "message": self.message,
            "parameters": params,
            "fit_quality": self.fit_quality,
            "warnings": list(self.warnings),
            "log_evidence": None if self.log_evidence is None else float(self.log_evidence),
            "log_evidence_note": (
                "nats; a density of the data in their units: compare only fits to the same data in the same units"
            ),
            "data_units": None if self.observed is None else self.observed.get("units"),
            "fixed_units": {k: v for k, v in self.units.items() if k not in self.names},
            "diagnostics": self.diagnostics,
        }

    def __repr__(self) -> str:
        lines = [f"Posterior(backend={self.backend!r}, status={self.status!r}, draws={self.draws.shape[:2]})"]
        if self.status_message:
            lines.append(f"  status {self.status}: {self.status_message}")
        if self.log_evidence is not None and math.isfinite(self.log_evidence):
            lines.append(f"  log evidence: {self.log_evidence:.3f} nats")
        # the headline figures only (every figure is in summary.json's fit_quality and the report)
        quality = ", ".join(
            f"{k} {v:.4g}" for k, v in self.fit_quality.items()
            if isinstance(v, float) and math.isfinite(v) and _headline_quality(k)
        )
        verdicts = self.fit_verdicts
        if len(verdicts) == 1:  # the verdict leads the line that holds R²
            lines.append(f"  fit: {next(iter(verdicts.values()))}" + (f" [{quality}]" if quality else ""))
        else:
            if quality:
                lines.append(f"  fit: {quality}")
            lines.extend(f"  fit, {c}: {v}" for c, v in verdicts.items())
        trust = self._trust_summary()
        if trust:
            lines.append(f"  trust: {trust}")
        for part, regime in self._regime_lines():
            lines.append(f"  regime{f' ({part})' if part else ''}: {regime}")
        flagged = self.non_gaussian_marginals
        flat = np.asarray(self.draws).reshape(-1, len(self.names))
        n_distinct = int(np.unique(flat, axis=0).shape[0]) if flat.size else 0
        if 0 < n_distinct < DISTINCT_DRAWS_NOTE * flat.shape[0]:
            # importance-resampled or degenerate SMC draws: a table of a handful of points reads as a confident posterior
            lines.append(f"  (the {flat.shape[0]} draws repeat {n_distinct} distinct parameter sets: the sd and "
                         "contraction below describe those points, not the posterior's spread)")
        lines.append(f"  {'parameter':>16s}  {'mean':>10s}  {'sd':>9s}  {'units':<12s} contraction")
        for n, m, s in zip(self.names, self.mean, self.sd):
            c = self.contraction.get(n)
            tag = "" if c is None else f"{c:6.2f}" + (
                "  (not informed by the data; negative: the posterior is wider than the prior)" if c < 0
                else "  (not informed by the data)" if c < CONTRACTION_UNINFORMED else "")
            if n in flagged and "weighted_mean" in flagged[n]:
                # where the Gaussian misstates the marginal, the row shows the importance-weighted figures (those
                # the contraction is from); the Gaussian's follow in the note
                r = flagged[n]
                tag += (f"  ({r.get('shape', 'not Gaussian')}; importance-weighted, 5-95 % {r['weighted_q05']:.3g} "
                        f"to {r['weighted_q95']:.3g}; the Gaussian's: mean {m:.4g}, sd {s:.3g}, contraction "
                        f"{r['gaussian_contraction']:.2f})")
                m, s = r["weighted_mean"], r["weighted_sd"]
            elif n in flagged:
                r = flagged[n]
                tag += (f"  ({r.get('shape', 'not Gaussian')}; importance-weighted, the Gaussian's "
                        f"{r['gaussian_contraction']:.2f}: 5-95 % {r['weighted_q05']:.3g} to {r['weighted_q95']:.3g})")
            lines.append(f"  {n:>16s}  {m:10.4g}  {s:9.3g}  {self.units.get(n, ''):<12.12s} {tag}")
        for w in self.warnings:
            lines.append(f"  WARNING: {w}")
        return "\n".join(lines)

    @property
    def fit_verdicts(self) -> dict:
        """The fit verdict(s) in words: ``{"": verdict}``, or ``{condition: verdict}`` for a fit of conditions.

        Read from ``fit_quality["verdict"]`` (``"verdict_<condition>"``): one
        line saying whether the residuals are within the data's own noise
        and, if not, by what factor and where the misfit is largest
        (:meth:`jrinfer.SpectrumObservation.goodness_of_fit`,
        :meth:`jrinfer.EvokedObservation.goodness_of_fit`).
        """
        q = self.fit_quality or {}
        return {("" if k == "verdict" else k[len("verdict_"):]): v for k, v in q.items()
                if (k == "verdict" or k.startswith("verdict_")) and isinstance(v, str)}

    def _regime_summary(self) -> str:
        """One line: the posterior's regime mix and the point estimate's regime (empty without regimes).

        For a fit of conditions, the conditions' lines joined by `` | ``
        (``rest: stable 97 %, ...``); :meth:`_regime_lines` gives them one by one.
        """
        return " | ".join(f"{part}: {text}" if part else text for part, text in self._regime_lines())

    def _regime_lines(self) -> list[tuple[str, str]]:
        """``[(part, line)]``: ``("", line)`` for one recording, ``(condition, line)`` per condition of a joint fit."""
        d = self.diagnostics or {}
        q = self.fit_quality or {}

        def line(entry, rest) -> str:
            mix = entry.get("regime_mix")
            if not isinstance(mix, dict) or not mix:
                return ""
            shares = ", ".join(_percent(k, v["fraction"]) for k, v in mix.items()
                               if isinstance(v, dict) and v.get("fraction", 0) > 0)
            point = entry.get("regime_point")
            # what the fitted population is doing (ERPs: its resting state and whether its response returns)
            rest = f": {rest}" if isinstance(rest, str) and rest else ""
            return f"{shares} of the posterior draws" + (f"; point estimate {point}{rest}" if point else "")

        by = d.get("regime_by_condition")
        if isinstance(by, dict) and by:
            return [(c, text) for c, e in by.items()
                    if isinstance(e, dict) and (text := line(e, q.get(f"resting_state_{c}")))]
        text = line(d, q.get("resting_state"))
        return [("", text)] if text else []

    def _trust_summary(self) -> str:
        """One line of the backend's own reliability figures found in ``diagnostics`` (empty if none)."""
        d = self.diagnostics or {}
        parts = []

        def num(key):
            v = d.get(key)
            return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

        if num("pareto_k") is not None:
            what = "flow" if self.backend == "npe" else "Gaussian"
            parts.append(f"Pareto k-hat {d['pareto_k']:.2f} ({what} vs true posterior; above 0.7 unreliable)")
        if num("rhat_max") is not None:
            parts.append(f"R-hat max {d['rhat_max']:.3f}")
        if num("ess_bulk_min") is not None and num("ess_tail_min") is not None:
            parts.append(f"ESS min bulk {d['ess_bulk_min']:.0f} / tail {d['ess_tail_min']:.0f}")
        if num("divergences") is not None:
            parts.append(f"{d['divergences']:.0f} divergences")
        smc = d.get("smc")
        if isinstance(smc, dict) and smc.get("n_particles"):
            parts.append(
                f"SMC from the flow: {smc.get('n_unique')} of {smc['n_particles']} draws distinct"
                + (f", acceptance at beta = 1 {smc['final_acceptance']:.2f}"
                   if isinstance(smc.get("final_acceptance"), float) else "")
                + (f", likelihood moves {smc['seed_noise_sd_nats']:.1f} nats between simulator seeds"
                   if isinstance(smc.get("seed_noise_sd_nats"), float) else "")
                + ("" if smc.get("reached_target", True) else ", stopped before the posterior"))
        cal = d.get("calibration")
        if isinstance(cal, dict) and cal.get("verdict"):
            parts.append(f"calibration on simulations: {cal['verdict'].split(':')[0]}")
        ood = d.get("out_of_distribution")
        if isinstance(ood, dict) and ood.get("mahalanobis2") is not None:
            parts.append(
                f"distance of the data from the training simulations d² {ood['mahalanobis2']:.3g} (training median "
                f"{ood.get('training_mahalanobis2_median', float('nan')):.3g}, max "
                f"{ood.get('training_mahalanobis2_max', float('nan')):.3g})"
            )
        inv = d.get("invalid_draws")
        if isinstance(inv, dict) and inv.get("fraction"):
            parts.append(f"{100 * inv['fraction']:.0f} % of draws not predictable")
        return "; ".join(parts)

    # ---------------------------------------------------------- ArviZ
    def to_arviz(self):
        """Convert to :class:`arviz.InferenceData` (ArviZ 0.23 schema).

        Groups: ``posterior`` (one variable per parameter, dims chain/draw,
        ``units`` attribute), ``posterior_predictive``, ``log_likelihood``,
        ``observed_data`` (variable ``y`` with dims ``channel`` and ``freq``
        in Hz or ``time`` in s), ``prior``, ``prior_predictive`` and
        ``sample_stats`` where available. Status, evidence, fit quality,
        contraction, warnings and diagnostics travel as attributes of the
        ``posterior`` group (JSON strings), so :meth:`from_netcdf` restores
        them.
        """
        from jrinfer._optional import optional_import

        az = optional_import("arviz", purpose="ArviZ output")
        posterior = {n: self.draws[..., i] for i, n in enumerate(self.names)}
        kwargs: dict = {}
        coords: dict = {}
        dims: dict = {}
        if self.observed is not None:
            coord = self.observed["coord"]
            coords = {"channel": list(self.observed["channels"]), coord: np.asarray(self.observed["coord_values"])}
            dims = {"y": ["channel", coord]}
            kwargs["observed_data"] = {"y": np.asarray(self.observed["values"])}
            if self.predictive is not None:
                kwargs["posterior_predictive"] = {"y": self.predictive}
            if self.log_likelihood is not None:
                kwargs["log_likelihood"] = {"y": self.log_likelihood}
            if self.prior_predictive is not None:
                kwargs["prior_predictive"] = {"y": self.prior_predictive}
        if self.prior_draws is not None:
            kwargs["prior"] = {n: np.asarray(self.prior_draws)[..., i] for i, n in enumerate(self.names)}
        if self.sample_stats:
            kwargs["sample_stats"] = {k: np.asarray(v) for k, v in self.sample_stats.items()}
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", FutureWarning)
            idata = az.from_dict(posterior=posterior, coords=coords, dims=dims, **kwargs)
        for group in ("posterior", "prior"):
            if hasattr(idata, group):
                for n in self.names:
                    getattr(idata, group)[n].attrs["units"] = self.units.get(n, "")
        if self.observed is not None:
            for group in ("observed_data", "posterior_predictive", "prior_predictive"):
                if hasattr(idata, group):
                    getattr(idata, group)["y"].attrs["units"] = str(self.observed.get("units", ""))
                    getattr(idata, group)[self.observed["coord"]].attrs["units"] = str(
                        self.observed.get("coord_units", "")
                    )
            if hasattr(idata, "log_likelihood"):
                idata.log_likelihood["y"].attrs["units"] = "nats"
        attrs = {
            "backend": self.backend,
            "status": self.status,
            "status_message": self.status_message,
            "message": self.message,
            "log_evidence": float("nan") if self.log_evidence is None else float(self.log_evidence),
            "inference_library": "jrinfer",
            "data_units": "" if self.observed is None else str(self.observed.get("units", "")),
        }
        for key in _JSON_ATTRS:
            value = self._json_attr(key)
            attrs[f"jrinfer_{key}"] = json.dumps(value, default=_json_default)
        if self.mean_unconstrained is not None:
            attrs["jrinfer_mean_unconstrained"] = json.dumps(np.asarray(self.mean_unconstrained).tolist())
        if self.cov_unconstrained is not None:
            attrs["jrinfer_cov_unconstrained"] = json.dumps(np.asarray(self.cov_unconstrained).tolist())
        if self.fit is not None:
            attrs["jrinfer_fit"] = json.dumps(np.asarray(self.fit).tolist())
        idata.posterior.attrs.update(attrs)
        if hasattr(idata, "posterior_predictive"):
            idata.posterior_predictive.attrs["n_invalid_draws_left_out"] = int(
                self.diagnostics.get("invalid_draws", {}).get("n_invalid", 0)
            )
        return idata

    def _json_attr(self, key):
        if key == "observed_meta":
            if self.observed is None:
                return None
            return {k: v for k, v in self.observed.items() if k not in ("values", "coord_values")}
        if key == "warnings":
            return list(self.warnings)
        if key == "names":
            return list(self.names)
        return getattr(self, key)

    def to_netcdf(self, path, *, overwrite: bool = False) -> Path:
        """Write :meth:`to_arviz` to a netCDF file (refuses to overwrite unless asked); read back with :meth:`from_netcdf`."""
        from jrinfer._io import atomic_path, check_writable

        path = check_writable(path, overwrite=overwrite)
        idata = self.to_arviz()
        with atomic_path(path) as tmp:
            idata.to_netcdf(str(tmp))
        return path

    @classmethod
    def from_netcdf(cls, path) -> "Posterior":
        """Read a fit saved by :meth:`to_netcdf` (or ``jrinfer fit``'s ``posterior.nc``)."""
        from jrinfer._optional import optional_import

        az = optional_import("arviz", purpose="reading posterior.nc")
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"path {path} does not exist")
        idata = az.from_netcdf(str(path))
        return cls.from_arviz(idata)

    @classmethod
    def from_arviz(cls, idata) -> "Posterior":
        """Rebuild a Posterior from :meth:`to_arviz` output."""
        attrs = dict(idata.posterior.attrs)
        if "jrinfer_names" not in attrs:
            raise ValueError("this InferenceData was not written by jrinfer (no jrinfer_names attribute)")
        load = lambda key, default=None: json.loads(attrs[key]) if key in attrs else default  # noqa: E731
        names = tuple(load("jrinfer_names"))
        draws = np.stack([idata.posterior[n].values for n in names], axis=-1)
        observed = None
        meta = load("jrinfer_observed_meta")
        if meta is not None and hasattr(idata, "observed_data"):
            y = idata.observed_data["y"]
            observed = {
                **meta,
                "values": y.values,
                "coord_values": idata.observed_data[meta["coord"]].values,
                "channels": [str(c) for c in idata.observed_data["channel"].values],
            }

        def group(name):
            return getattr(idata, name)["y"].values if hasattr(idata, name) else None

        prior_draws = None
        if hasattr(idata, "prior"):
            prior_draws = np.stack([idata.prior[n].values for n in names], axis=-1)
        sample_stats = {}
        if hasattr(idata, "sample_stats"):
            sample_stats = {k: v.values for k, v in idata.sample_stats.data_vars.items()}
        log_evidence = attrs.get("log_evidence")
        log_evidence = None if log_evidence is None or not math.isfinite(float(log_evidence)) else float(log_evidence)
        mean_u = load("jrinfer_mean_unconstrained")
        cov_u = load("jrinfer_cov_unconstrained")
        fit = load("jrinfer_fit")
        return cls(
            names=names,
            draws=draws,
            backend=str(attrs.get("backend", "")),
            status=str(attrs.get("status", "")),
            status_message=str(attrs.get("status_message", "")),
            message=str(attrs.get("message", "")),
            log_evidence=log_evidence,
            mean_unconstrained=None if mean_u is None else np.asarray(mean_u),
            cov_unconstrained=None if cov_u is None else np.asarray(cov_u),
            diagnostics=load("jrinfer_diagnostics", {}) or {},
            observed=observed,
            predictive=group("posterior_predictive"),
            log_likelihood=group("log_likelihood"),
            prior_draws=prior_draws,
            prior_predictive=group("prior_predictive"),
            sample_stats=sample_stats,
            units=load("jrinfer_units", {}) or {},
            fit=None if fit is None else np.asarray(fit),
            fit_quality=load("jrinfer_fit_quality", {}) or {},
            contraction=load("jrinfer_contraction", {}) or {},
            warnings=tuple(load("jrinfer_warnings", []) or []),
        )
