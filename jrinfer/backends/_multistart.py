"""Multi-start variational Laplace: screen many starts in one batch, run Gauss-Newton from the best few.

Gauss-Newton / Levenberg-Marquardt ascent (:mod:`jrinfer.backends._vl_engine`)
finds the optimum of the free energy nearest its start. The Jansen-Rit
posteriors have separated optima (e.g. the rate constants ``a, b`` trade
off along ridges with more than one local maximum), so a fit from the prior
mean alone can converge to an optimum several nats below the one holding the
truth, with nothing in the result to show it. This module

1. draws ``n_screen`` candidate starts from the prior in its unconstrained
   coordinates (scrambled Sobol points through the normal quantile: a
   space-filling, seeded sample), plus the prior mean;
2. scores all of them in one batched evaluation of the log joint with the
   noise log precisions profiled out (their maximum-likelihood value
   ``log(m_k / r_k)`` for component ``k`` with ``m_k`` points and weighted
   residual sum of squares ``r_k``) -- cheap, no derivatives;
3. runs the engine from the prior mean and from the best-scoring candidates
   that are at least one prior standard deviation (Mahalanobis) from every
   start already chosen, until ``n_starts`` runs;
4. groups the converged runs into distinct optima and keeps the one with the
   highest free energy ``F``; the runs stop early when the first three all
   reach one and the same optimum (a unimodal-looking posterior).

A second optimum whose free energy is within :data:`MULTIMODAL_NATS` of the
best and that lies more than :data:`MULTIMODAL_SD` posterior standard
deviations away means the posterior is multimodal: the Laplace free energy of
each optimum approximates the log of the posterior mass around it, so
``F_best - F_2 < 3`` nats means the second mode holds more than about
``1 / (1 + e^3) ~ 5 %`` of the mass -- more than the tails a 90 % interval
leaves out -- and one Gaussian cannot describe it.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

_DTYPE = torch.float64

#: Free-energy gap (nats) below which a second optimum counts as a competing mode (mass ratio e^3 ~ 20).
MULTIMODAL_NATS = 3.0
#: Mahalanobis distance (posterior SDs of the best optimum) beyond which an optimum is a separate mode.
MULTIMODAL_SD = 3.0
#: A competing optimum is a separate mode only when the log joint density on the straight segment from the best to
#: it falls more than this many nats below the lower of the two (a barrier): without one, the runs stopped at two
#: points of one ridge (a flat, curved posterior the Gauss-Newton runs end on at different places), which is not a
#: second mode. 1 nat: the density between them stays above e^-1 of the lower one.
MODE_BARRIER_NATS = 1.0
#: Points on that segment (the ends included).
_BARRIER_POINTS = 21
#: A better optimum than the prior mean's is noted when it is at least this much higher in free energy (nats);
#: below it the runs ended on the same flat ridge, apart by the optimiser's tolerance.
NOTE_NATS = 1.0
#: Default Gauss-Newton runs (VariationalLaplace(n_starts=...), the samplers' Laplace start); see benchmarks/RESULTS.md.
DEFAULT_N_STARTS = 16
#: Candidate starts screened per Gauss-Newton run.
SCREEN_PER_START = 64
#: Two runs reached the same optimum when each mean is within this many posterior SDs of the other's.
_SAME_OPTIMUM_SD = 1.0
#: Chosen starts are at least this far apart (prior SDs, Mahalanobis).
_MIN_START_SEPARATION = 1.0


def sobol_normal(n: int, dim: int, seed: int) -> torch.Tensor:
    """``(n, dim)`` standard-normal quasi-random points (scrambled Sobol through the normal quantile)."""
    engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)
    u = engine.draw(n, dtype=_DTYPE)
    u = u.clamp(1e-6, 1 - 1e-6)
    return math.sqrt(2.0) * torch.special.erfinv(2.0 * u - 1.0)


def profiled_score(
    pred: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    prior_mean: torch.Tensor,
    prior_cov: torch.Tensor,
    hyper_mean: torch.Tensor,
    hyper_cov: torch.Tensor,
    precision_components: torch.Tensor,
    estimate_hyper: bool,
) -> torch.Tensor:
    """Log joint of a batch of parameter sets with the log precisions profiled out (up to a constant).

    Parameters
    ----------
    pred : torch.Tensor
        ``(B, m)`` predictions ``f(z)`` (NaN where the model cannot predict).
    z : torch.Tensor
        ``(B, n)`` parameters.
    y : torch.Tensor
        ``(m,)`` data.
    prior_mean, prior_cov : torch.Tensor
        ``(n,)``, ``(n, n)``: Gaussian prior of ``z``.
    hyper_mean, hyper_cov : torch.Tensor
        ``(k,)``, ``(k, k)``: Gaussian prior of the log precisions ``λ``.
    precision_components : torch.Tensor
        ``(k, m)`` diagonals of ``Q_k`` (``Π = Σ exp(λ_k) Q_k``).
    estimate_hyper : bool
        False: ``λ`` is fixed at ``hyper_mean`` instead of profiled.

    Returns
    -------
    torch.Tensor
        ``(B,)``; ``-inf`` where the prediction is not finite.
    """
    e = y - pred
    ok = torch.isfinite(e).all(-1)
    e = torch.where(ok[:, None], e, torch.zeros_like(e))
    Q = precision_components
    r = (e * e) @ Q.T  # (B, k) weighted residual sums of squares
    m_k = (Q > 0).sum(-1).to(_DTYPE)  # (k,)
    if estimate_hyper:
        lam = torch.log(m_k / r.clamp_min(1e-300))  # maximum-likelihood log precisions
        d = lam - hyper_mean
        hc = torch.linalg.cholesky(hyper_cov)
        u = torch.linalg.solve_triangular(hc, d.T, upper=False)
        log_hyper_prior = -0.5 * (u * u).sum(0)
    else:
        lam = hyper_mean.expand_as(r)
        log_hyper_prior = torch.zeros(r.shape[0], dtype=_DTYPE)
    loglik = (-0.5 * torch.exp(lam) * r + 0.5 * m_k * lam).sum(-1)
    c = torch.linalg.cholesky(prior_cov)
    u = torch.linalg.solve_triangular(c, (z - prior_mean).T, upper=False)
    score = loglik + log_hyper_prior - 0.5 * (u * u).sum(0)
    return torch.where(ok & torch.isfinite(score), score, torch.full_like(score, -math.inf))


def choose_starts(
    candidates: torch.Tensor, scores: torch.Tensor, prior_cov: torch.Tensor, n_starts: int
) -> torch.Tensor:
    """Indices of up to ``n_starts`` candidates: row 0 (the prior mean) first, then the best-scoring distinct ones.

    A candidate is skipped when it lies within :data:`_MIN_START_SEPARATION`
    prior standard deviations (Mahalanobis) of a start already chosen, or its
    score is not finite.
    """
    c = torch.linalg.cholesky(prior_cov)
    w = torch.linalg.solve_triangular(c, candidates.T, upper=False).T  # whitened, (M, n)
    order = torch.argsort(scores, descending=True)
    order = order[torch.isfinite(scores[order]) & (order != 0)]
    chosen = [0]
    # Greedy selection over the ranked list; distances to the chosen set are updated in one batch per pick.
    dmin = torch.cdist(w, w[:1]).squeeze(-1)
    for idx in order.tolist():
        if len(chosen) >= n_starts:
            break
        if float(dmin[idx]) < _MIN_START_SEPARATION:
            continue
        chosen.append(idx)
        dmin = torch.minimum(dmin, torch.cdist(w, w[idx : idx + 1]).squeeze(-1))
    return torch.tensor(chosen, dtype=torch.long)


def group_optima(results: list) -> list[dict]:
    """Group engine results into distinct optima, best free energy first.

    Parameters
    ----------
    results : list of (int, LaplaceResult)
        ``(start index, result)``; index 0 is the run from the prior mean.
        Runs with a non-finite free energy are left out.

    Returns
    -------
    list of dict
        ``{"result", "free_energy", "n_starts", "starts"}`` (``starts``: the
        start indices that reached it), sorted by decreasing free energy.
        Two runs share an optimum when each mean is within
        :data:`_SAME_OPTIMUM_SD` posterior standard deviations (Mahalanobis,
        under its own covariance) of the other.
    """
    runs = sorted(
        [(i, r) for i, r in results if math.isfinite(r.free_energy)], key=lambda ir: -ir[1].free_energy
    )
    optima: list[dict] = []
    for i, r in runs:
        for opt in optima:
            o = opt["result"]
            if _mahalanobis(r.mean, o.mean, o.cov) < _SAME_OPTIMUM_SD and _mahalanobis(
                o.mean, r.mean, r.cov
            ) < _SAME_OPTIMUM_SD:
                opt["starts"].append(i)
                opt["n_starts"] += 1
                break
        else:
            optima.append({"result": r, "free_energy": r.free_energy, "n_starts": 1, "starts": [i]})
    return optima


def _mahalanobis(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """Distance of ``x`` from ``mean`` in SDs of ``cov`` (pseudo-inverse of a singular covariance)."""
    d = x - mean
    cov = 0.5 * (cov + cov.T)
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > evals.max() * 1e-12
    u = (d @ evecs[:, keep]) / evals[keep].sqrt()
    return float(torch.sqrt((u * u).sum()))


def _competes(gap: float, dist: float) -> bool:
    """A second optimum ``gap`` nats below the best and ``dist`` posterior SDs away is a competing mode."""
    return gap < MULTIMODAL_NATS and dist > MULTIMODAL_SD


def competing(optima: list[dict]) -> list[int]:
    """Indices into ``optima`` (best first, from :func:`group_optima`) of the best and every competing mode.

    An optimum marked ``"same_mode": True`` (no barrier between it and the best, see
    :func:`mark_barriers`) never competes.
    """
    if not optima:
        return []
    best = optima[0]
    return [0] + [
        i for i, o in enumerate(optima[1:], 1)
        if not o.get("same_mode")
        and _competes(best["free_energy"] - o["free_energy"],
                      _mahalanobis(o["result"].mean, best["result"].mean, best["result"].cov))
    ]


def mark_barriers(optima: list[dict], log_density, points: list[torch.Tensor]) -> None:
    """Mark each would-be competing optimum with the barrier between it and the best (in place).

    Parameters
    ----------
    optima : list of dict
        From :func:`group_optima`, best first.
    log_density : callable
        ``(B, n) -> (B,)`` log joint density (nats) at points in the coordinates of ``points``.
    points : list of torch.Tensor
        ``(n,)`` location of each optimum, in the order of ``optima``.

    Each optimum that :func:`_competes` with the best gets ``"barrier_nats"``:
    how far the density on the straight segment between the two falls below
    the lower of the two ends (``inf`` when some point between them cannot be
    evaluated) and ``"same_mode"``: True when that barrier is below
    :data:`MODE_BARRIER_NATS`. Two separate local maxima always have a barrier
    on any path between them; the segment is the cheapest path to check
    (a curved ridge can show a small barrier on it, so this errs toward
    keeping a warning).
    """
    if len(optima) < 2:
        return
    best = optima[0]
    t = torch.linspace(0.0, 1.0, _BARRIER_POINTS, dtype=_DTYPE)[:, None]
    for o, z in zip(optima[1:], points[1:]):
        if not _competes(best["free_energy"] - o["free_energy"],
                         _mahalanobis(o["result"].mean, best["result"].mean, best["result"].cov)):
            continue
        with torch.no_grad():
            lj = log_density(points[0] + t * (z - points[0])).reshape(-1)
        lower = torch.minimum(lj[0], lj[-1])
        inner = lj[1:-1]
        barrier = math.inf if not bool(torch.isfinite(inner).all()) else float(lower - inner.min())
        o["barrier_nats"] = barrier
        o["same_mode"] = bool(barrier < MODE_BARRIER_NATS)


#: Log Bayes factor (nats) beyond which the evidence for or against an effect counts (Kass & Raftery 1995: 1 nat,
#: "positive" evidence), the threshold of :func:`jrinfer.conditions.condition_effects`' words.
EFFECT_EVIDENCE_NATS = 1.0


def effects_across_optima(means, sds, prior_mean, prior_var, names, label: str = "effects") -> dict:
    """Whether effect parameters agree across competing optima: their means and the sign of their evidence.

    Parameters
    ----------
    means, sds : torch.Tensor
        ``(k, e)``: posterior mean and SD of the ``e`` effect parameters
        (unconstrained coordinates) at each of ``k`` optima, the best first.
    prior_mean, prior_var : torch.Tensor
        ``(e,)``: their independent Gaussian priors.
    names : sequence of str
        The ``e`` parameter names.
    label : str
        What they are, in words (e.g. "condition differences").

    Returns
    -------
    dict
        ``agree`` (bool), ``sentence`` (for the multimodality warning) and
        per name ``means``, ``sds``, ``log_bayes_factors`` (nats, "effect"
        against "no effect": Bayesian model reduction of the one-dimensional
        marginal to 0, Friston & Penny 2011, through
        :func:`jrinfer.comparison.bayesian_model_reduction`; for an
        independent prior this is the Savage-Dickey ratio and needs only the
        marginal), ``evidence`` per optimum (``"effect"`` for log BF >= 1,
        ``"none"`` for <= -1, else ``"inconclusive"``), ``means_agree``
        (every optimum's mean within ``max(its SD, the best's SD)`` of the
        best's: the optima differ by less than the posterior uncertainty
        the reported interval already shows) and ``evidence_agrees`` (one
        evidence class at every optimum).
    """
    from jrinfer.comparison import bayesian_model_reduction

    k, e = means.shape
    zero = torch.zeros(1, dtype=_DTYPE)
    per: dict = {}
    disagree = []
    for j, name in enumerate(names):
        lbf = []
        for i in range(k):
            var = min(float(sds[i, j]) ** 2, float(prior_var[j]) * (1 - 1e-9))  # no wider than the prior
            _, _, dF = bayesian_model_reduction(means[i, j : j + 1], torch.tensor([[var]], dtype=_DTYPE),
                                                prior_mean[j : j + 1], prior_var[j : j + 1, None].clone(), zero,
                                                torch.zeros(1, 1, dtype=_DTYPE))
            lbf.append(-float(dF))
        cls = ["effect" if b >= EFFECT_EVIDENCE_NATS else "none" if b <= -EFFECT_EVIDENCE_NATS else "inconclusive"
               for b in lbf]
        tol = torch.maximum(sds[:, j], sds[0, j])
        means_agree = bool(((means[:, j] - means[0, j]).abs() <= tol).all())
        evidence_agrees = len(set(cls)) == 1
        per[name] = {"means": [float(x) for x in means[:, j]], "sds": [float(x) for x in sds[:, j]],
                     "log_bayes_factors": lbf, "evidence": cls, "means_agree": means_agree,
                     "evidence_agrees": evidence_agrees}
        if not (means_agree and evidence_agrees):
            what = []
            if not means_agree:
                what.append(f"means {', '.join(f'{float(x):+.3g}' for x in means[:, j])}")
            if not evidence_agrees:
                what.append(f"log BF {', '.join(f'{b:+.2f}' for b in lbf)}")
            disagree.append(f"{name} ({'; '.join(what)})")
    agree = not disagree
    if agree:
        sentence = (f"the {label} agree across the {k} optima (means within their posterior SD, the same sign of "
                    "evidence)")
    else:
        sentence = (f"the {label} differ between the {k} optima (best first): {'; '.join(disagree)}; report them "
                    "from a sampler (smc) that weighs the modes, not from this one optimum")
    return {"agree": agree, "sentence": sentence, "n_optima": k, "parameters": per}


def multimodality(optima: list[dict]) -> tuple[list[str], list[str]]:
    """Warnings and notes about the optima found (``optima`` from :func:`group_optima`).

    Returns ``(warnings, notes)``: a warning when a second optimum has free
    energy within :data:`MULTIMODAL_NATS` of the best and lies more than
    :data:`MULTIMODAL_SD` posterior SDs of the best away; a note when the best
    optimum was not reached from the prior mean and is at least :data:`NOTE_NATS` higher in free energy.
    """
    warns, notes = [], []
    if not optima:
        return warns, notes
    best = optima[0]
    for other in optima[1:]:
        if other.get("same_mode"):
            continue
        gap = best["free_energy"] - other["free_energy"]
        dist = _mahalanobis(other["result"].mean, best["result"].mean, best["result"].cov)
        if _competes(gap, dist):
            ratio = math.exp(-gap)
            warns.append(
                f"the posterior is multimodal: a second optimum {dist:.1f} posterior SDs away has free energy "
                f"only {gap:.2f} nats below the best (posterior-mass ratio about {ratio:.2g}); variational "
                "Laplace describes one mode only (see diagnostics['optima']); use SMC (backend smc) for the "
                "whole posterior"
            )
            break
    if 0 not in best["starts"]:
        from_prior = [o for o in optima if 0 in o["starts"]]
        if from_prior:
            gap = best["free_energy"] - from_prior[0]["free_energy"]
            if gap < NOTE_NATS:
                return warns, notes
            notes.append(
                f"the best optimum was not the one reached from the prior mean: the run from the prior mean "
                f"stopped at a local optimum {gap:.2f} nats lower in free energy"
            )
        else:
            notes.append("the best optimum was not the one reached from the prior mean (that run failed)")
    return warns, notes


def multistart(
    fit_one: Callable[[torch.Tensor], object],
    f_batch: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    prior_mean: torch.Tensor,
    prior_cov: torch.Tensor,
    hyper_mean: torch.Tensor,
    hyper_cov: torch.Tensor,
    precision_components: torch.Tensor,
    estimate_hyper: bool,
    *,
    n_starts: int,
    seed: int,
    n_screen: int | None = None,
    agree: int = 3,
    on_start: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], dict]:
    """Run the engine from the prior mean and the best distinct screened starts; group the optima.

    Parameters
    ----------
    fit_one : callable
        ``init (n,) -> LaplaceResult`` (one Gauss-Newton run).
    f_batch : callable
        ``(B, n) -> (B, m)`` batched model, NaN where it cannot predict.
    y, prior_mean, prior_cov, hyper_mean, hyper_cov, precision_components, estimate_hyper
        As in :class:`~jrinfer.problem.GaussianForm`.
    n_starts : int
        Gauss-Newton runs (1: the prior mean only, no screening).
    seed : int
        Seed of the scrambled Sobol candidates.
    n_screen : int, optional
        Candidates screened (default ``SCREEN_PER_START * n_starts``).
    agree : int
        Stop early once this many runs all reached one and the same optimum
        (a unimodal-looking posterior); set ``agree >= n_starts`` to always
        run all ``n_starts``.
    on_start : callable, optional
        ``on_start(i, n)`` before run ``i`` (0-based) of at most ``n`` (progress).

    Returns
    -------
    optima : list of dict
        From :func:`group_optima`.
    info : dict
        ``n_screened``, ``starts`` (the ``(r, n)`` initial points of the
        ``r <= n_starts`` runs made), ``screen_scores`` of those starts and
        ``results`` (``(start index, LaplaceResult)`` per run).
    """
    if n_starts == 1:
        inits = prior_mean[None].clone()
        scores = torch.full((1,), math.nan, dtype=_DTYPE)
        n_screen = 0
    else:
        n_screen = SCREEN_PER_START * n_starts if n_screen is None else n_screen
        c = torch.linalg.cholesky(prior_cov)
        cand = prior_mean + sobol_normal(n_screen, prior_mean.numel(), seed) @ c.T
        cand = torch.cat([prior_mean[None], cand])
        with torch.no_grad():
            pred = f_batch(cand)
            all_scores = profiled_score(
                pred, cand, y, prior_mean, prior_cov, hyper_mean, hyper_cov, precision_components, estimate_hyper
            )
        idx = choose_starts(cand, all_scores, prior_cov, n_starts)
        inits, scores = cand[idx], all_scores[idx]
    results = []
    for i in range(inits.shape[0]):
        if on_start is not None:
            on_start(i, int(inits.shape[0]))
        results.append((i, fit_one(inits[i].clone())))
        optima = group_optima(results)
        # every run so far reached one and the same optimum: more starts are unlikely to find another
        if len(results) >= agree and len(optima) == 1 and optima[0]["n_starts"] == len(results):
            break
    inits, scores = inits[: len(results)], scores[: len(results)]
    return optima, {"n_screened": n_screen, "starts": inits, "screen_scores": scores, "results": results}


def fit_problem_multistart(engine, problem, *, n_starts: int = 1, seed: int = 0):
    """Multi-start :func:`~jrinfer.backends._vl_engine.fit_problem`: the best optimum of an InverseProblem.

    Parameters
    ----------
    engine : LaplaceEngine
    problem : InverseProblem
    n_starts : int
        At most this many Gauss-Newton runs (1: from the prior mean only,
        exactly ``fit_problem``); fewer when the first three all reach one
        optimum (see :func:`multistart`).
    seed : int
        Seed of the screened candidates.

    Returns
    -------
    result : LaplaceResult
        Of the best optimum (highest free energy; the prior-mean run when
        every run failed).
    mean, cov : torch.Tensor
        Its Gaussian over ``problem.names`` (as ``fit_problem``).
    report : dict
        ``optima`` (JSON-ready list, best first: ``free_energy`` in nats,
        ``mean`` in natural units by parameter name, ``n_starts`` that reached
        it, ``from_prior_mean``, ``sd_unconstrained`` by name), ``n_starts`` (runs made),
        ``n_screened``, ``warnings`` and ``notes`` (from :func:`multimodality`; when
        the posterior is multimodal and the observation has
        :meth:`~jrinfer.observation.Observation.effect_parameters`, the warning
        says whether they agree across the competing optima) and
        ``effects_across_optima`` (:func:`effects_across_optima`, or None).
    """
    import warnings as _w

    from jrinfer.backends._vl_engine import LaplaceConvergenceError, fit_problem

    raise_on_failure = engine.raise_on_failure
    engine = type(engine)(**{**engine._options(), "raise_on_failure": False})
    form = problem.gaussian_form()
    target = problem.observation.gaussian_target(problem.data)
    names = problem.names
    positions = [form.names.index(nm) if nm in form.names else -1 for nm in names]
    hyper_pos = {nm: i for i, nm in enumerate(form.hyper_names)}

    def full_z(z: torch.Tensor) -> torch.Tensor:
        """``(B, n_form)`` -> ``(B, n_params)`` with the log precisions at their prior mean."""
        cols = [
            z[:, i] if i >= 0 else torch.full((z.shape[0],), float(form.hyper_mean[hyper_pos[nm]]), dtype=_DTYPE)
            for nm, i in zip(names, positions)
        ]
        return torch.stack(cols, -1)

    n_ch, n_pts = target.y.shape

    def f_batch(z: torch.Tensor) -> torch.Tensor:
        theta = problem.prior.from_unconstrained(full_z(z))
        pred = problem.predict(theta)
        value = torch.broadcast_to(target.transform(pred.value), (z.shape[0], n_ch, n_pts)).reshape(z.shape[0], -1)
        valid = pred.valid.reshape(z.shape[0], 1)
        return torch.where(valid, value, torch.full_like(value, math.nan))

    mapped = {}
    label = ["variational Laplace"]  # the current run's name in the progress output (set by on_start)

    def fit_one(init: torch.Tensor):
        with _w.catch_warnings():  # only the kept optimum's non-convergence is reported (below)
            _w.simplefilter("ignore", RuntimeWarning)
            res, mean, cov = fit_problem(engine, problem, init=init, progress_label=label[0])
        mapped[id(res)] = (res, mean, cov)
        return res

    k = form.precision_components.shape[0]
    hyper_cov = form.hyper_cov if form.estimate_hyper else torch.eye(k, dtype=_DTYPE)
    from jrinfer.backends._vl_engine import duration, progress_line, progress_mode

    mode = progress_mode(engine.progress)
    if mode == "lines" and n_starts > 1:
        progress_line(f"variational Laplace: screening {SCREEN_PER_START * n_starts} prior draws for up to {n_starts} "
                      "starts")

    started: list[float] = []

    def on_start(i: int, n: int) -> None:
        started.append(time.perf_counter())
        if n > 1:  # the run's progress (bar or lines) names its start, and after the first how long the rest take
            left = ""
            if i >= 1:
                per = (started[-1] - started[0]) / i
                left = f" (about {duration(per * (n - i))} left if all {n} run)"
            label[0] = f"variational Laplace, start {i + 1} of {n}{left}"

    optima, info = multistart(
        fit_one, f_batch, form.y, form.prior_mean, form.prior_cov, form.hyper_mean, hyper_cov,
        form.precision_components, form.estimate_hyper, n_starts=n_starts, seed=seed, on_start=on_start,
    )
    best = optima[0]["result"] if optima else info["results"][0][1]
    res, mean, cov = mapped[id(best)]
    if res.status != "converged":
        if raise_on_failure:
            raise LaplaceConvergenceError(res.message, res)
        _w.warn(f"VariationalLaplace: {res.message}", RuntimeWarning, stacklevel=3)
    mark_barriers(optima, problem.log_joint_unconstrained, [mapped[id(o["result"])][1] for o in optima])
    warns, notes = multimodality(optima)
    ridge = [o for o in optima[1:] if o.get("same_mode")]
    if ridge and not warns:
        notes.append(
            f"{len(ridge)} other Gauss-Newton end point(s) within {MULTIMODAL_NATS:g} nats lie on one ridge with the "
            f"best (no barrier of {MODE_BARRIER_NATS:g} nat between them): the posterior is long and flat there, "
            "not multimodal; the Pareto k-hat says how well the Gaussian covers it"
        )
    out = []
    for opt in optima:
        _, m, c = mapped[id(opt["result"])]
        theta = problem.prior.from_unconstrained(m)
        sd = torch.diagonal(c).clamp_min(0).sqrt()
        out.append(
            {
                "free_energy": float(opt["free_energy"]),
                "mean": {nm: float(theta[j]) for j, nm in enumerate(names)},
                "sd_unconstrained": {nm: float(sd[j]) for j, nm in enumerate(names)},
                "n_starts": int(opt["n_starts"]),
                "from_prior_mean": 0 in opt["starts"],
                "status": opt["result"].status,
                **({"barrier_nats": opt["barrier_nats"], "same_mode_as_best": opt["same_mode"]}
                   if "barrier_nats" in opt else {}),
            }
        )
    effects = [nm for nm in problem.observation.effect_parameters(problem.data) if nm in names]
    rivals = competing(optima)
    agreement = None
    if effects and len(rivals) > 1 and warns:
        idx = [names.index(nm) for nm in effects]
        means = torch.stack([mapped[id(optima[i]["result"])][1][idx] for i in rivals])
        sds = torch.stack([torch.diagonal(mapped[id(optima[i]["result"])][2])[idx].clamp_min(0).sqrt()
                           for i in rivals])
        pm, pc = problem.prior.gaussian_unconstrained()
        agreement = effects_across_optima(means, sds, pm[idx], torch.diagonal(pc)[idx], effects,
                                          problem.observation.EFFECTS)
        warns[0] = warns[0] + "; " + agreement["sentence"]
    report = {
        "optima": out,
        "n_starts": int(info["starts"].shape[0]),
        "n_screened": int(info["n_screened"]),
        "warnings": warns,
        "notes": notes,
        "effects_across_optima": agreement,
    }
    return res, mean, cov, report
