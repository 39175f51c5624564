"""One place that turns any backend's draws into a :class:`~jrinfer.Posterior`.

A backend supplies posterior draws in natural units and its own statistics
(status, evidence, diagnostics, warnings); :func:`assemble_posterior` adds, the
same way for every backend:

- the posterior predictive and pointwise log-likelihood of a thinned subset of
  draws, with draws whose prediction is invalid left out and counted (never a
  NaN in the predictive);
- prior draws and the prior predictive;
- the observed data with its axis, channels and units, and the units of every
  parameter;
- goodness of fit (through the observation's ``goodness_of_fit``) of a point
  prediction: the backend's point estimate when it has one (variational
  Laplace: the mode), else the pointwise median of the valid predictions;
- contraction per parameter against the prior, in unconstrained coordinates;
- warnings: the observation's misfit warnings, invalid draws, uninformed
  parameters, data-preparation warnings (``data.metadata["warnings"]``), and the
  backend's own;
- the status: the backend's when its algorithm did not converge or failed its
  own checks; else ``"warning"`` when the fit is a misfit, its Pareto k-hat is
  above 0.7, a second optimum competes with the best (variational Laplace's
  ``diagnostics["multimodal"]``) or its typical predictive draw is ruled out by the data
  (:func:`_ruled_out`), ``"converged"`` otherwise (``status_message`` says why; the
  backend's verdict stays in ``diagnostics["backend_status"]`` and
  ``diagnostics["optimizer_converged"]``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from jrinfer import _checks
from jrinfer._rng import generator
from jrinfer.posterior import CONTRACTION_UNINFORMED, PARETO_K_UNRELIABLE, Posterior, _is_misfit, _percent

__all__ = ["assemble_posterior", "INVALID_FRACTION_WARN"]

#: SMC from the flow (NPE, ``diagnostics["smc"]``): fewer distinct final draws than this fraction of the particles make
#: the status "warning" (copies made at the last reweighting that never moved: the draws spread less than the posterior).
SMC_DISTINCT_FRACTION = 0.9

#: Fraction of posterior draws with invalid predictions above which a fit warns.
INVALID_FRACTION_WARN = 0.10


def _ruled_out(log_lik: np.ndarray, best: float, n_params: int) -> dict:
    """How far below the best fit the posterior predictive draws' log-likelihoods lie.

    ``log_lik``: ``(n_chains, n_draws, C, P)`` pointwise; ``best``: the largest
    total log-likelihood known (the point fit's or the best draw's), nats.
    ``ruled_out`` is True when the *median* draw is more than
    ``max(n_points, 4 n_params)`` nats below the best fit: more than one nat
    per data point (its mean squared standardised residual larger by 2 or
    more) and more than eight times the median drop of draws from a correct
    posterior of a regular model (``2 x drop`` about chi-square with
    ``n_params`` degrees of freedom, median about ``n_params / 2``; Wilks
    1938). The typical draw then predicts data the observed ones rule
    out, and the predictive band shows the approximation's failure rather than
    the posterior's uncertainty (a weakly identified but correct posterior
    keeps its draws near the best fit's likelihood: that is what makes it
    weakly identified).
    """
    n_points = int(np.prod(log_lik.shape[2:]))
    drop = best - log_lik.reshape(-1, n_points).sum(-1)
    median = float(np.median(drop))
    threshold = float(max(n_points, 4 * n_params))
    return {
        "median_drop_nats": median,
        "n_points": n_points,
        "threshold_nats": threshold,
        "fraction_beyond_threshold": float((drop > threshold).mean()),
        "ruled_out": bool(median > threshold),
    }


def _thin(n_chains: int, n_draws: int, n_keep: int) -> np.ndarray:
    """Evenly spaced draw indices, the same in every chain (at most ``n_keep`` in total)."""
    per_chain = max(1, min(n_draws, math.ceil(n_keep / n_chains)))
    return np.unique(np.linspace(0, n_draws - 1, per_chain).round().astype(int))


def _unique(reasons: list[str], limit: int = 3) -> list[str]:
    out: list[str] = []
    for r in reasons:
        # reasons differ only by numbers for the same cause: keep one of each kind
        key = r.split("(")[0]
        if all(o.split("(")[0] != key for o in out):
            out.append(r)
        if len(out) == limit:
            break
    return out


def _alternatives(backend: str, diagnostics: dict, *, hopf: bool = True) -> str:
    """What to try instead of this fit's approximation, never the one the fit already used.

    ``"--resample (importance-resampled draws, laplace) or a sampler (nuts, smc)"`` for a
    Gaussian fit; the other sampler (and NUTS's pole boundary where it was not used) for a
    sampler's fit; both samplers for NPE. ``hopf``: add NUTS's pole boundary
    (for draws cut by a Hopf boundary).
    """
    options = []
    if backend == "laplace" and not diagnostics.get("importance_resampled"):
        options.append("importance-resampled draws (--resample; fit(..., resample=True))")
    samplers = [b for b in ("nuts", "smc") if b != backend]
    options.append(("a sampler" if len(samplers) > 1 else "the other sampler") + f" ({', '.join(samplers)})")
    if not hopf:
        pass
    elif backend == "nuts" and diagnostics.get("boundary") != "pole":
        options.append("nuts with boundary='pole' (CLI --boundary pole) where draws lie past a Hopf boundary")
    elif backend != "nuts":
        options.append("for a transfer-method spectrum cut by the Hopf boundary, nuts with boundary='pole' "
                       "(CLI --boundary pole)")
    return "; or ".join(options)


def _failing_approximation(backend: str, diagnostics: dict | None = None) -> str:
    """What fails when a backend's draws predict data the observed ones rule out, in words.

    NPE: the remedy offered depends on whether the posterior was already refined by rounds for this recording.
    """
    refined = backend == "npe" and (diagnostics or {}).get("amortized") is False
    corrected = backend == "npe" and bool((diagnostics or {}).get("smc"))
    return {
        "laplace": "the Gaussian approximation fails, e.g. by reaching parameter sets near instability",
        "npe": ("the SMC particles moved from the flow have not found the posterior's bulk: more particles (--draws), "
                "or a likelihood-based backend" if corrected else
                "the neural posterior is too wide for this recording even after its truncated rounds: SMC from the "
                "flow (--smc), more rounds or simulations per round, an estimator trained on more simulations, or a "
                "likelihood-based backend"
                if refined else
                "the neural posterior is too wide for this recording: SMC from the flow (--smc), more simulations, "
                "truncated rounds (--rounds) or a likelihood-based backend"),
        "nuts": "the chains have not found the posterior's bulk: see R-hat and divergences",
        "smc": "the particles have not found the posterior's bulk: see R-hat",
    }.get(backend, "an approximation that fails")


def _non_gaussian_marginals(diagnostics: dict, contraction: dict, units: dict, backend: str) -> list[str]:
    """A warning naming the parameters whose Gaussian marginal the importance-weighted one contradicts.

    ``diagnostics["importance_marginals"]`` (variational Laplace: PSIS-weighted
    marginals of the Gaussian's draws, see
    :func:`jrinfer.backends.laplace._importance_marginals`) marks them
    ``non_gaussian``; their ``contraction`` becomes the weighted one (what the
    data inform, not the Gaussian's curvature at the mode), so a parameter
    the data bound from one side is not called "not informed".
    """
    im = diagnostics.get("importance_marginals") or {}
    flagged = {n: r for n, r in (im.get("parameters") or {}).items() if r.get("non_gaussian") and n in contraction}
    if not flagged:
        return []
    parts = []
    for n, r in flagged.items():
        contraction[n] = r["weighted_contraction"]
        u = units.get(n, "")
        u = f" {u}" if u and u != "1" else ""
        parts.append(
            f"{n} ({r['shape']}): weighted 5-95 % {r['weighted_q05']:.3g} to {r['weighted_q95']:.3g}{u}, contraction "
            f"{r['weighted_contraction']:.2f} (Gaussian: {r['gaussian_q05']:.3g} to {r['gaussian_q95']:.3g}, "
            f"{r['gaussian_contraction']:.2f})"
        )
    return [
        f"the Gaussian (Laplace) marginal misstates {', '.join(flagged)}: the importance-weighted draws (PSIS, "
        f"k-hat <= {PARETO_K_UNRELIABLE}, ESS {im.get('ess', float('nan')):.0f}) show the posterior's: "
        f"{'; '.join(parts)}. For these the mean, sd, interval and contraction shown (printed, summary.json, the "
        "report) are the weighted ones, with the Gaussian's beside them; the draws (posterior.nc) follow the "
        f"Gaussian: for draws that follow the posterior use {_alternatives(backend, diagnostics, hopf=False)}"
    ]


#: Posterior share below which the regime the data suggest counts as missed by the posterior.
REGIME_MISSED = 0.5


def _regime_mix(codes: torch.Tensor, names) -> dict:
    """``{regime: {"n": count, "fraction": share}}`` of int64 ``codes`` into ``names``."""
    n = max(int(codes.numel()), 1)
    return {name: {"n": int((codes == i).sum()), "fraction": float((codes == i).sum()) / n}
            for i, name in enumerate(names)}


def _shares(mix: dict) -> str:
    return ", ".join(_percent(k, v["fraction"]) for k, v in mix.items() if v["fraction"] > 0)


def _regime_check(problem, theta: torch.Tensor, point, metrics: dict, backend: str, diagnostics: dict,
                  invalid_warned: bool) -> list[str]:
    """The posterior's regime mix (``diagnostics["regime_mix"]``, ``"regime"``, ``"regime_point"``) and its warnings.

    Every draw is classified by the one classifier of the problem
    (:meth:`~jrinfer.InverseProblem.regimes`, for Jansen-Rit
    :meth:`~jrinfer.JansenRit.regimes`); draws are thinned to at most 2000.
    A mix the backend computed itself (NPE: ``diagnostics["regime_mix"]`` of
    all its draws, same format) is kept.
    The observation says which regimes its method can describe and which
    the data suggest (:meth:`~jrinfer.observation.Observation.regime_context`);
    a warning when more than :data:`INVALID_FRACTION_WARN` of the posterior,
    or the point estimate, lies in a regime the method cannot describe (unless
    the invalid-draws warning already said so), or when less than
    :data:`REGIME_MISSED` of it (or the point estimate) lies in the regime the
    data suggest. The advice comes from the observation (its method) and from
    :func:`_alternatives` (the backend): never the method or backend the fit used.

    A joint observation whose parts (the conditions of
    :class:`~jrinfer.conditions.ConditionObservation`) have their own
    parameter values classifies each part
    (:meth:`~jrinfer.observation.Observation.regimes_by_part`): see
    :func:`_regime_check_parts`.
    """
    names = tuple(getattr(problem.observation, "REGIMES", ()) or ())
    if not names:
        return []

    def thinned():
        flat = theta.reshape(-1, problem.n_params)
        if flat.shape[0] > 2000:
            flat = flat[torch.linspace(0, flat.shape[0] - 1, 2000).round().long()]
        return flat

    parts = problem.observation.regimes_by_part(problem.parameters(thinned()))
    if parts:
        return _regime_check_parts(problem, parts, point, metrics, backend, diagnostics, invalid_warned, names)
    mix = diagnostics.get("regime_mix")
    if not (isinstance(mix, dict) and set(mix) == set(names)):  # a backend's own mix of all its draws is kept
        codes = problem.regimes(thinned())
        if codes is None:
            return []
        mix = _regime_mix(codes.reshape(-1), names)
        diagnostics["regime_mix"] = mix
        diagnostics["regime"] = max(mix, key=lambda k: mix[k]["fraction"])
    point_regime = None
    if point is not None:
        pc = problem.regimes(torch.as_tensor(np.asarray(point, dtype=float), dtype=torch.float64)[None])
        if pc is not None:
            point_regime = names[int(pc.reshape(-1)[0])]
            diagnostics["regime_point"] = point_regime
    context = problem.observation.regime_context(problem.data, metrics) or {}
    return _regime_warnings(mix, point_regime, context, backend, diagnostics, invalid_warned)


def _regime_warnings(mix: dict, point_regime, context: dict, backend: str, diagnostics: dict,
                     invalid_warned: bool) -> list[str]:
    """The warnings of one regime mix against what its observation describes and what the data suggest."""
    warns = []
    at = f"; point estimate: {point_regime}" if point_regime else ""
    describes = context.get("describes")
    if describes is not None:
        outside = {k: v for k, v in mix.items() if k not in describes and v["fraction"] > 0}
        frac = sum(v["fraction"] for v in outside.values())
        if (frac > INVALID_FRACTION_WARN and not invalid_warned) or (point_regime and point_regime not in describes):
            warns.append(
                f"{100 * frac:.0f} % of the posterior lies in regimes the {context.get('method', 'observation')} "
                f"cannot describe ({_shares(outside)}{at}; it describes {', '.join(describes)} only): "
                f"{context.get('advice_describes', 'use an observation that describes them')}; or "
                f"{_alternatives(backend, diagnostics)}"
            )
    starts = context.get("starts") or {}
    spread = {k: mix[k]["fraction"] for k in starts if k in mix and mix[k]["fraction"] > INVALID_FRACTION_WARN}
    if len({starts[k] for k in spread}) > 1:
        each = "; ".join(f"{100 * f:.0f} % in {k}, from {starts[k]}" for k, f in spread.items())
        warns.append(
            f"the posterior's draws start their {context.get('method', 'prediction')} from different resting states "
            f"({each}{at}): across the boundary between these regimes (a Hopf point of the high equilibrium) the "
            "prediction jumps from one to the other, so the posterior predictive mixes responses of differently "
            "resting populations and a Gaussian summary spans a discontinuity; keep the prior inside one regime "
            f"(--prior / --fix), or use {_alternatives(backend, diagnostics, hopf=False)}"
        )
    suggested = context.get("suggested")
    if suggested in mix:
        share = mix[suggested]["fraction"]
        if share < REGIME_MISSED or (point_regime is not None and point_regime != suggested):
            warns.append(
                f"regime: the data suggest {suggested} ({context.get('why', '')}), but {100 * share:.0f} % of the "
                f"posterior is there (regime mix: {_shares(mix)}{at}): the fit explains the data with another "
                f"regime; {context.get('advice_suggested', '')}".rstrip("; ")
            )
    return warns


def _regime_check_parts(problem, parts: dict, point, metrics: dict, backend: str, diagnostics: dict,
                        invalid_warned: bool, names: tuple) -> list[str]:
    """Regimes of each condition of a joint fit: ``diagnostics["regime_by_condition"]`` and the warnings.

    ``parts`` is ``{condition: codes}`` of the (thinned) draws. Each condition
    gets its regime mix, dominant regime and point-estimate regime, and the
    warnings of a single fit (:func:`_regime_warnings`, with that condition's
    :meth:`~jrinfer.observation.Observation.regime_context_by_part`), prefixed
    by its name. A further warning when the conditions sit in different
    regimes (their point estimates, or the regimes holding most of their
    posteriors, differ): a condition difference that crosses a bifurcation
    changes the kind of dynamics, not a parameter within one regime.
    """
    point_parts = None
    if point is not None:
        pt = torch.as_tensor(np.asarray(point, dtype=float), dtype=torch.float64)[None]
        point_parts = problem.observation.regimes_by_part(problem.parameters(pt))
    contexts = problem.observation.regime_context_by_part(problem.data, metrics) or {}
    by, warns = {}, []
    for c, codes in parts.items():
        mix = _regime_mix(codes.reshape(-1), names)
        entry = {"regime_mix": mix, "regime": max(mix, key=lambda k: mix[k]["fraction"])}
        point_regime = names[int(point_parts[c].reshape(-1)[0])] if point_parts else None
        if point_regime:
            entry["regime_point"] = point_regime
        by[c] = entry
        warns += [f"{c}: {w}" for w in _regime_warnings(mix, point_regime, contexts.get(c, {}), backend, diagnostics,
                                                          invalid_warned)]
    diagnostics["regime_by_condition"] = by
    dominant = {e["regime"] for e in by.values()}
    points = {e["regime_point"] for e in by.values() if "regime_point" in e}
    if len(dominant) > 1 or len(points) > 1:
        each = "; ".join(
            f"{c}: {_shares(e['regime_mix'])}" + (f", point estimate {e['regime_point']}" if "regime_point" in e else "")
            for c, e in by.items())
        warns.append(
            f"the conditions sit in different regimes ({each}): the difference between them crosses a bifurcation, "
            "a change in the kind of dynamics (e.g. from a damped resonance to a limit cycle), not a shift of the "
            "parameters within one regime; read the condition effects as such, and check that each condition's "
            "regime is one its data support (fit the conditions separately and compare their regimes)"
        )
    return warns


def _fit_status(backend: str, status: str, message: str, diagnostics: dict, quality_warnings) -> tuple[str, str]:
    """The posterior's ``(status, status_message)`` from the backend's verdict and the fit's quality.

    One rule for every backend: a backend status other than ``"converged"``
    stays; a converged fit becomes ``"warning"`` when its Pareto k-hat exceeds
    :data:`~jrinfer.posterior.PARETO_K_UNRELIABLE` (the Gaussian approximation
    is not to be trusted), a second optimum competes with the best
    (``diagnostics["multimodal"]``: the Gaussian summary leaves out more than
    5 % of the posterior mass), or the goodness of fit reports a misfit (README: R²
    of log-power below 0.9 or the alpha peak missed by more than 1 Hz; ERPs:
    explained variance too low or the main peak missed), the median
    predictive draw is ruled out by the data (:func:`_ruled_out`), more than
    :data:`INVALID_FRACTION_WARN` of the posterior draws lie where the
    observation cannot predict (``diagnostics["invalid_draws"]``), or an
    amortized estimator's data lie outside its training distribution
    (``diagnostics["out_of_distribution"]["outside"]``).
    """
    reasons = []
    if status != "converged":
        reasons.append(f"{backend} reported {status!r}" + (f" ({message})" if message else ""))
    k = diagnostics.get("pareto_k")
    if isinstance(k, (int, float)) and not isinstance(k, bool) and (k > PARETO_K_UNRELIABLE or math.isnan(k)):
        what = "the flow (NPE)" if backend == "npe" else "the Gaussian approximation"
        reasons.append(f"Pareto k-hat {k:.2f} > {PARETO_K_UNRELIABLE}: {what} cannot be trusted")
    if diagnostics.get("multimodal") is True:
        n = sum(1 for o in diagnostics.get("optima") or ())
        reasons.append(
            "the posterior is multimodal: the Gaussian describes the best of "
            + (f"{n} optima" if n > 1 else "several optima")
            + " and leaves out a competing one (see the warnings)"
        )
    reasons += [w.split(";")[0] for w in quality_warnings if _is_misfit(w)]
    invalid = diagnostics.get("invalid_draws") or {}
    if (invalid.get("fraction") or 0.0) > INVALID_FRACTION_WARN:
        reasons.append(
            f"{100 * invalid['fraction']:.0f} % of the posterior draws lie where the observation cannot predict "
            "(a regime it does not describe): the posterior's mass there is not described by this fit"
        )
    smc = diagnostics.get("smc")
    if isinstance(smc, dict) and smc.get("reached_target") and \
            smc.get("n_unique", 0) < SMC_DISTINCT_FRACTION * smc.get("n_particles", 0):
        reasons.append(f"only {smc['n_unique']} of the {smc['n_particles']} SMC draws are distinct: the particles "
                       "stuck where the likelihood is rough (see the warnings)")
    ood = diagnostics.get("out_of_distribution") or {}
    if ood.get("outside") is True:
        reasons.append("the recording lies outside what the estimator was trained on (see the warnings)")
    ruled = diagnostics.get("predictive_ruled_out") or {}
    if ruled.get("ruled_out"):
        reasons.append(
            f"the median posterior draw is ruled out by the data ({ruled['median_drop_nats']:.3g} nats below the best "
            "fit's log-likelihood)"
        )
    if status != "converged":
        return status, "; ".join(reasons)
    return ("warning", "; ".join(reasons)) if reasons else ("converged", "")


def assemble_posterior(
    problem,
    draws,
    *,
    backend: str,
    status: str,
    message: str = "",
    log_evidence: float | None = None,
    mean_unconstrained=None,
    cov_unconstrained=None,
    diagnostics: dict | None = None,
    sample_stats: dict | None = None,
    point=None,
    warnings=(),
    n_predictive: int = 200,
    n_prior: int = 200,
    seed: int = 0,
    contraction: dict | None = None,
    contraction_against: str = "the prior",
) -> Posterior:
    """Build the common :class:`~jrinfer.Posterior` from a backend's draws.

    Parameters
    ----------
    problem : InverseProblem
    draws : array_like
        Posterior draws in natural units, shape ``(n_chains, n_draws, n_params)``
        (last axis in ``problem.names`` order).
    backend : str
        As on :class:`~jrinfer.Posterior`.
    status : str
        The backend's verdict on its own algorithm: ``"converged"``, or a
        failure code / ``"warning"`` when its checks failed. The posterior's
        ``status`` is this, downgraded to ``"warning"`` for a misfit or a
        Pareto k-hat (``diagnostics["pareto_k"]``) above 0.7 or a predictive
        the data rule out (:func:`_fit_status`).
    message : str
        The backend's description of its run.
    log_evidence : float, optional
    mean_unconstrained, cov_unconstrained : array_like, optional
        The backend's Gaussian in unconstrained coordinates; when given, the
        contraction uses its variances (exact for a Gaussian approximation).
    diagnostics : dict, optional
        Backend diagnostics (JSON-ready); ``invalid_draws`` is added.
    sample_stats : dict, optional
        Per-draw statistics, name -> ``(n_chains, n_draws)``.
    point : array_like, optional
        A point estimate ``(n_params,)`` in natural units for the fit quality.
    warnings : iterable of str
        The backend's own warnings (e.g. Pareto k̂, divergences).
    n_predictive : int
        Posterior draws (in total, thinned evenly) used for the posterior
        predictive and the pointwise log-likelihood; 0 skips both.
    n_prior : int
        Prior draws (and prior predictive); 0 skips them.
    seed : int
        Seed of the observation noise in the predictive and of the prior draws.
    contraction : dict, optional
        The backend's own contraction per parameter, measured against another
        prior than ``problem.prior`` in its unconstrained coordinates (NPE:
        against its training box in the box's coordinates); the assembly's
        own values then go to ``diagnostics["contraction_unconstrained"]``.
    contraction_against : str
        What the contraction is measured against, in words, for the "not
        informed" warning.

    Returns
    -------
    Posterior
    """
    from jrinfer.problem import InverseProblem

    if not isinstance(problem, InverseProblem):
        raise ValueError(f"problem must be an InverseProblem, got {type(problem).__name__}")
    n_predictive = _checks.check_int("n_predictive", n_predictive, minimum=0)
    n_prior = _checks.check_int("n_prior", n_prior, minimum=0)
    seed = _checks.check_int("seed", seed, minimum=0)
    theta = torch.as_tensor(np.asarray(draws, dtype=float), dtype=torch.float64)
    if theta.dim() != 3 or theta.shape[-1] != problem.n_params:
        raise ValueError(
            f"draws must have shape (n_chains, n_draws, {problem.n_params}), got {tuple(theta.shape)}"
        )
    n_chains, n_draws, _ = theta.shape
    obs, data = problem.observation, problem.data
    observed = problem.observed()
    gen = generator(seed)
    diagnostics = dict(diagnostics or {})
    warns = list(warnings)
    predictive = log_lik = None
    fit_pred = None
    invalid_warned = False

    with torch.no_grad():
        # -------------------------------------------- posterior predictive
        valid_values = None
        if n_predictive:
            idx = _thin(n_chains, n_draws, n_predictive)
            sub = theta[:, idx]
            params = problem.parameters(sub)
            pred = obs.predict(params, data)
            ll = obs.pointwise_log_likelihood(pred, params, data)
            ll = torch.broadcast_to(ll, sub.shape[:2] + observed.values.shape)
            y_rep = obs.sample(pred, params, data, gen)
            valid = pred.valid
            n_checked, n_invalid = int(valid.numel()), int((~valid).sum())
            diagnostics["invalid_draws"] = {
                "n_checked": n_checked,
                "n_invalid": n_invalid,
                "fraction": n_invalid / n_checked,
                "reasons": _unique(pred.reasons),
            }
            if n_invalid == 0:
                predictive, log_lik = y_rep.numpy(), ll.numpy()
            elif n_invalid < n_checked:
                predictive, log_lik = y_rep[valid][None].numpy(), ll[valid][None].numpy()
            if n_invalid / n_checked > INVALID_FRACTION_WARN:
                warns.append(
                    f"{100 * n_invalid / n_checked:.0f} % of the posterior draws are parameter sets the observation "
                    f"cannot predict ({_unique(pred.reasons, 1)[0] if pred.reasons else 'invalid'}); they are left "
                    "out of the posterior predictive. The posterior reaches a regime the model does not describe "
                    f"here: use {_alternatives(backend, diagnostics)}"
                )
                invalid_warned = True
            if n_invalid < n_checked:
                valid_values = pred.value[valid]
        # ------------------------------------------------ point prediction
        point_params = None
        if point is not None:
            point = torch.as_tensor(np.asarray(point, dtype=float), dtype=torch.float64)
            point_params = problem.parameters(point)
            p = obs.predict(point_params, data)
            if bool(p.valid):
                fit_pred = p.value
        if fit_pred is None and valid_values is not None:
            fit_pred = valid_values.median(0).values
            point_params = problem.parameters(theta.reshape(-1, problem.n_params).median(0).values)
        if log_lik is not None:
            best = float(log_lik.reshape(log_lik.shape[0] * log_lik.shape[1], -1).sum(-1).max())
            if fit_pred is not None and point is not None and point_params is not None:
                ll_fit = obs.pointwise_log_likelihood(obs.predict(point_params, data), point_params, data)
                best = max(best, float(ll_fit.sum()))
            ruled = _ruled_out(log_lik, best, problem.n_params)
            diagnostics["predictive_ruled_out"] = ruled
            if ruled["ruled_out"]:
                y_abs = float(observed.values.abs().max())
                amp = float(np.quantile(np.abs(predictive).reshape(-1, predictive.shape[-1]).max(-1), 0.95))
                ruled["predictive_max_abs_q95_over_data"] = amp / y_abs if y_abs > 0 else float("nan")
                warns.append(
                    f"predictive ruled out by the data: the median posterior draw's log-likelihood is "
                    f"{ruled['median_drop_nats']:.3g} nats below the best fit's (more than "
                    f"{ruled['threshold_nats']:.0f}: one per data point and four per parameter; the 95th percentile "
                    "of the draws' largest predicted |value| is "
                    f"{ruled['predictive_max_abs_q95_over_data']:.3g} x the data's): these draws are not from the "
                    f"posterior the data define ({_failing_approximation(backend, diagnostics)}), so the predictive band is far "
                    "wider than the data allow; use "
                    f"{_alternatives(backend, diagnostics)}"
                )
        quality: dict = {}
        quality_warnings: list[str] = []
        if fit_pred is not None:
            fq = obs.goodness_of_fit(data, fit_pred, point_params)
            quality = dict(fq.metrics)
            quality_warnings = [str(w) for w in fq.warnings]
            warns.extend(quality_warnings)
        else:
            warns.append("no posterior draw gives a valid prediction: the fit quality could not be assessed")
        warns.extend(_regime_check(problem, theta, point, quality, backend, diagnostics, invalid_warned))

        # ------------------------------------------------------- contraction
        _, prior_cov = problem.prior.gaussian_unconstrained()
        prior_var = torch.diagonal(prior_cov)
        if cov_unconstrained is not None:
            post_var = torch.diagonal(torch.as_tensor(np.asarray(cov_unconstrained, dtype=float)))
        else:
            z = problem.prior.to_unconstrained(theta.reshape(-1, problem.n_params))
            post_var = z.var(0) if z.shape[0] > 1 else torch.zeros_like(prior_var)
        own = {n: float(1.0 - post_var[i] / prior_var[i]) for i, n in enumerate(problem.names)}
        if contraction is None:
            contraction = own
        else:  # the backend's, against its own prior; the unconstrained-coordinate figures are kept beside
            diagnostics["contraction_unconstrained"] = own
            contraction = {n: float(contraction[n]) for n in problem.names}
        if cov_unconstrained is not None:
            warns.extend(_non_gaussian_marginals(diagnostics, contraction, problem.units, backend))
        uninformed = [n for n, c in contraction.items() if c < CONTRACTION_UNINFORMED]
        if uninformed:
            k = diagnostics.get("pareto_k")
            # a Gaussian that the importance check rejects measures its contractions by its own curvature: where it
            # says "not informed", a sampler found the data informative (EEGMAT rest/task: B, floor 0.02-0.09 by
            # the Gaussian at k-hat 0.88, 0.25-0.64 by NUTS)
            untrusted = (cov_unconstrained is not None and k is not None and math.isfinite(float(k))
                         and float(k) > PARETO_K_UNRELIABLE)
            warns.append(
                f"not informed by the data (posterior close to {contraction_against}, contraction < "
                f"{CONTRACTION_UNINFORMED}): {', '.join(uninformed)}; their estimates restate {contraction_against} "
                "(fix them, or see the identifiability report for the combinations the data do constrain)"
                + (f"; but with Pareto k-hat {float(k):.2f} (> {PARETO_K_UNRELIABLE}) the Gaussian's contractions "
                   "cannot be trusted either, and the data may inform these: a sampler (nuts, smc) measures them"
                   if untrusted else "")
            )

        # ---------------------------------------------------- prior groups
        prior_draws = prior_predictive = None
        if n_prior:
            th0 = problem.prior.sample(n_prior, seed=seed)
            prior_draws = th0[None].numpy()
            params0 = problem.parameters(th0)
            pred0 = obs.predict(params0, data)
            if bool(pred0.valid.any()):
                y0 = obs.sample(pred0, params0, data, gen)
                prior_predictive = y0[pred0.valid][None].numpy()
            diagnostics["prior_invalid_fraction"] = float((~pred0.valid).double().mean())

    data_warnings = [str(w) for w in getattr(data, "metadata", {}).get("warnings", [])]
    warns = data_warnings + warns
    units = problem.units
    observed_dict = {
        "values": observed.values.numpy(),
        "coord": observed.coord,
        "coord_values": observed.coord_values.numpy(),
        "coord_units": observed.coord_units,
        "channels": list(observed.channels),
        "units": observed.units,
    }
    fit = None
    if fit_pred is not None:
        fit = torch.broadcast_to(fit_pred, observed.values.shape).numpy()
    final_status, status_message = _fit_status(backend, status, message, diagnostics, quality_warnings)
    diagnostics["backend_status"] = status
    diagnostics["optimizer_converged"] = status == "converged"
    return Posterior(
        names=problem.names,
        draws=theta.numpy(),
        backend=backend,
        status=final_status,
        status_message=status_message,
        message=message,
        log_evidence=log_evidence,
        mean_unconstrained=None if mean_unconstrained is None else np.asarray(mean_unconstrained, dtype=float),
        cov_unconstrained=None if cov_unconstrained is None else np.asarray(cov_unconstrained, dtype=float),
        diagnostics=diagnostics,
        observed=observed_dict,
        predictive=predictive,
        log_likelihood=log_lik,
        prior_draws=prior_draws,
        prior_predictive=prior_predictive,
        sample_stats={k: np.asarray(v) for k, v in (sample_stats or {}).items()},
        units=units,
        fit=fit,
        fit_quality=quality,
        contraction=contraction,
        warnings=tuple(dict.fromkeys(warns)),
    )
