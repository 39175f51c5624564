"""Tempered sequential Monte Carlo from a normalised reference density to a target (private).

NPE's correction ``condition(..., smc=True)`` uses it with the flow as the
reference; nothing here knows about flows, priors or simulators. The bridge

    pi_beta(z) ∝ q(z)^(1 - beta) * t(z)^beta,   beta: 0 -> 1,

starts from draws of the reference ``q`` (a normalised density) and ends at
the target ``t`` (an unnormalised log density: prior x likelihood). Each
stage (Del Moral, Doucet & Jasra 2006) reweights the particles by
``(t / q)^(delta beta)`` with ``delta beta`` chosen by bisection so that the
effective sample size of the weights is ``ess_fraction`` of the particles
that can survive (finite target), resamples them (systematic resampling) and
moves them with Metropolis-Hastings steps that leave ``pi_beta`` invariant:
a Gaussian random walk with the particles' covariance, its scale adapted
after every step towards an acceptance of 0.234 (Roberts, Gelman & Gilks
1997), alternating with differential-evolution proposals
``z + gamma (z_j - z_k)`` (ter Braak 2006), which follow curved and ridged
posteriors that one covariance does not. Steps continue until
``moved_fraction`` of the particles have moved at least once since the
resampling, or ``max_moves`` (``final_moves`` at ``beta = 1``).

The sum over stages of the log mean incremental weight estimates
``log ∫ t(z) dz`` (the log evidence when ``t`` is prior x likelihood and ``q``
is normalised): Del Moral et al. 2006, section 3.2; Neal 2001 for the
annealed-importance-sampling view of the same bridge.

References
----------
P. Del Moral, A. Doucet, A. Jasra (2006), "Sequential Monte Carlo samplers",
J. R. Stat. Soc. B 68:411-436.
R. M. Neal (2001), "Annealed importance sampling", Stat. Comput. 11:125-139.
C. J. F. ter Braak (2006), "A Markov chain Monte Carlo version of the genetic
algorithm Differential Evolution", Stat. Comput. 16:239-249.
G. O. Roberts, A. Gelman, W. R. Gilks (1997), "Weak convergence and optimal
scaling of random walk Metropolis algorithms", Ann. Appl. Probab. 7:110-120.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable

import torch

from jrinfer._rng import generator

#: Acceptance rate the random-walk scale is adapted towards (optimal for a d-dimensional Gaussian, d >= 5).
TARGET_ACCEPTANCE = 0.234
#: Stages after which the bridge gives up (a target far narrower than the reference needs many).
MAX_STAGES = 60


def _ess(log_w: torch.Tensor) -> float:
    w = torch.softmax(log_w, 0)
    return float(1.0 / (w * w).sum())


def _next_delta(delta: torch.Tensor, room: float, target_ess: float) -> float:
    """The largest ``d <= room`` whose weights ``exp(d * delta)`` keep an ESS of at least ``target_ess``."""
    if _ess(room * delta) >= target_ess:
        return room
    lo, hi = 0.0, room
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _ess(mid * delta) >= target_ess:
            lo = mid
        else:
            hi = mid
    return max(lo, 1e-12 * room)


def _systematic(weights: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = weights.numel()
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(1, dtype=torch.float64, generator=g)) / n
    return torch.searchsorted(torch.cumsum(weights, 0), u).clamp(max=n - 1)


def _time_left(stages: list[dict], final_factor: float) -> str:
    """``"; about N more stages, ~M min left"``: the stages' beta steps continued to beta = 1.

    The beta steps grew by a factor r per stage (about 1.4-4 here, falling as
    beta nears 1); with the smaller of the last two ratios held, the steps
    left to close ``1 - beta`` are ``log(1 + (1 - beta)(r - 1) / (r step)) /
    log r``, each costing the last stage's time and the final one
    ``final_factor`` times that (it may move more). A rough guess, on the
    short side early on; empty before the third stage.
    """
    if len(stages) < 3:
        return ""
    betas = [0.0] + [st["beta"] for st in stages]
    steps = [b - a for a, b in zip(betas, betas[1:])][-3:]
    if min(steps) <= 0:
        return ""
    r = max(min(steps[1] / steps[0], steps[2] / steps[1]), 1.05)
    beta = betas[-1]
    n_left = max(1, math.ceil(math.log(1.0 + (1.0 - beta) * (r - 1.0) / (r * steps[-1])) / math.log(r)))
    seconds = stages[-1]["seconds"] * (n_left - 1 + final_factor)
    when = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
    return f"; about {n_left} more stage{'s' if n_left > 1 else ''}, ~{when} left"


def tempered_smc(
    z: torch.Tensor,
    log_reference: Callable[[torch.Tensor], torch.Tensor],
    log_target: Callable[[torch.Tensor], torch.Tensor],
    *,
    seed: int,
    ess_fraction: float = 0.5,
    max_moves: int = 10,
    final_moves: int = 20,
    moved_fraction: float = 0.9,
    z_max: float = math.inf,
    progress: bool = False,
    label: str = "SMC",
    typical_rounds: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Move draws of a reference density to a target by tempered SMC.

    Parameters
    ----------
    z : torch.Tensor
        ``(n, d)`` float64 draws of the reference.
    log_reference : callable
        ``(m, d) -> (m,)`` log density of the (normalised) reference.
    log_target : callable
        ``(m, d) -> (m,)`` unnormalised log density of the target, ``-inf``
        where it is zero (an invalid or failed evaluation). Called once per
        stage's reweighting and once per move on every particle: its cost
        sets the run's.
    seed : int
        Seed of the resampling and the moves.
    ess_fraction : float
        Effective sample size kept at each reweighting, as a fraction of the
        particles with a finite target.
    max_moves, final_moves : int
        Most Metropolis-Hastings steps per stage, below ``beta = 1`` and at it.
    moved_fraction : float
        Steps stop once this fraction of the particles has moved since the
        resampling.
    z_max : float
        Proposals are clipped to ``[-z_max, z_max]`` per coordinate.
    progress : bool
        A line per stage on stderr.
    label : str
        The lines' prefix.
    typical_rounds : (int, int), optional
        Typical evaluations per particle over a run; with ``progress``, the
        first line turns them into a time range from the reference draws'
        evaluation.

    Returns
    -------
    z : torch.Tensor
        ``(n, d)`` equally weighted particles of the target (of the last
        ``pi_beta`` reached if the bridge stopped early).
    info : dict
        JSON-ready: ``stages`` (per stage ``beta``, ``moves``,
        ``acceptance``, ``acceptance_random_walk``,
        ``acceptance_differential_evolution``, ``moved_fraction``,
        ``n_unique``, ``seconds``), ``beta`` (reached), ``reached_target``,
        ``log_evidence``, ``n_evaluations``, ``n_particles``, ``n_unique``,
        ``final_acceptance``, ``final_moved_fraction``, ``seconds``,
        ``failure`` (None, or why the bridge stopped).
    """
    t0 = time.perf_counter()
    z = torch.as_tensor(z, dtype=torch.float64).clone()
    n, d = z.shape
    g = generator(seed)
    lr = log_reference(z)
    lt = log_target(z)
    n_eval = n
    if progress and typical_rounds:
        first = time.perf_counter() - t0
        lo, hi = (first * k / 60 for k in typical_rounds)
        print(f"{label}: the {n} starting draws evaluated in {first:.1f} s; a run typically takes "
              f"{typical_rounds[0]}-{typical_rounds[1]} times that: about {lo:.0f}-{hi:.0f} min", file=sys.stderr,
              flush=True)
    beta, log_evidence, stages = 0.0, 0.0, []
    scale = 2.38 / math.sqrt(d)
    gamma = 2.38 / math.sqrt(2 * d)
    failure = None
    while beta < 1.0:
        delta = lt - lr
        delta = torch.where(torch.isfinite(delta), delta, torch.full_like(delta, -math.inf))
        alive = int(torch.isfinite(delta).sum())
        if alive < max(5, 0.02 * n):
            failure = (f"only {alive} of {n} particles have a finite target at beta = {beta:.3g}: the reference "
                       "puts almost no mass where the target is positive")
            break
        if len(stages) >= MAX_STAGES:
            failure = f"stopped after {MAX_STAGES} stages at beta = {beta:.3g} (the target is far narrower)"
            break
        t_stage = time.perf_counter()
        step = _next_delta(delta, 1.0 - beta, ess_fraction * alive)
        log_w = step * delta
        log_evidence += float(torch.logsumexp(log_w, 0)) - math.log(n)
        beta = 1.0 if step >= 1.0 - beta else beta + step
        idx = _systematic(torch.softmax(log_w, 0), g)
        z, lr, lt = z[idx], lr[idx], lt[idx]
        cov = torch.cov(z.T).reshape(d, d)
        chol = torch.linalg.cholesky(cov + 1e-10 * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(d, dtype=z.dtype))
        moved = torch.zeros(n, dtype=torch.bool)
        acc_rw, acc_de, moves = [], [], 0
        limit = final_moves if beta >= 1.0 else max_moves
        while moves < limit:
            if moves % 2 == 0:
                proposal = z + scale * torch.randn(n, d, dtype=z.dtype, generator=g) @ chol.T
            else:
                j = torch.randint(n - 1, (n,), generator=g)
                j = j + (j >= torch.arange(n))  # j != i
                k = torch.randint(n - 1, (n,), generator=g)
                k = k + (k >= torch.arange(n))
                jump = torch.where(torch.rand(n, 1, dtype=z.dtype, generator=g) < 0.1, 1.0, gamma)
                proposal = z + jump * (z[j] - z[k]) + 1e-3 * scale * torch.randn(n, d, dtype=z.dtype, generator=g) @ chol.T
            proposal = proposal.clamp(-z_max, z_max)
            lr_p, lt_p = log_reference(proposal), log_target(proposal)
            n_eval += n
            log_a = (1.0 - beta) * (lr_p - lr) + beta * (lt_p - lt)
            log_a = torch.where(torch.isfinite(lt_p) & torch.isfinite(lr_p) & ~torch.isnan(log_a), log_a,
                                torch.full_like(log_a, -math.inf))
            accept = torch.log(torch.rand(n, dtype=z.dtype, generator=g)) < log_a
            z = torch.where(accept[:, None], proposal, z)
            lr = torch.where(accept, lr_p, lr)
            lt = torch.where(accept, lt_p, lt)
            moved |= accept
            rate = float(accept.double().mean())
            if moves % 2 == 0:
                acc_rw.append(rate)
                scale *= math.exp(rate - TARGET_ACCEPTANCE)
            else:
                acc_de.append(rate)
            moves += 1
            if float(moved.double().mean()) >= moved_fraction and moves >= 2:
                break
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        stage = {"beta": beta, "moves": moves, "acceptance": mean(acc_rw + acc_de),
                 "acceptance_random_walk": mean(acc_rw), "acceptance_differential_evolution": mean(acc_de),
                 "moved_fraction": float(moved.double().mean()), "n_unique": int(torch.unique(z, dim=0).shape[0]),
                 "seconds": time.perf_counter() - t_stage}
        stages.append(stage)
        if progress:
            left = _time_left(stages, final_moves / max_moves) if beta < 1.0 else ""
            print(f"{label}: stage {len(stages)}, beta {beta:.3g}, {moves} moves (acceptance "
                  f"{stage['acceptance']:.2f}, {100 * stage['moved_fraction']:.0f} % of the particles moved), "
                  f"{n_eval} evaluations, {time.perf_counter() - t0:.0f} s{left}", file=sys.stderr, flush=True)
    last = stages[-1] if stages else {}
    info = {
        "beta": beta,
        "reached_target": beta >= 1.0 and failure is None,
        "failure": failure,
        "log_evidence": log_evidence if beta >= 1.0 and failure is None else None,
        "n_particles": n,
        "n_evaluations": n_eval,
        "n_unique": int(torch.unique(z, dim=0).shape[0]),
        "final_acceptance": last.get("acceptance"),
        "final_moved_fraction": last.get("moved_fraction"),
        "stages": stages,
        "seconds": time.perf_counter() - t0,
    }
    return z, info
