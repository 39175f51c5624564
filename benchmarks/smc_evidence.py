"""Do SMC's independent chains agree on the log evidence? Kernels and settings on a narrow posterior.

The problem is the compare_backends notebook's (a JR spectrum from the transfer method with Welch noise of
20 segments; A, B, C, p_mean fixed; the posterior SD of log a is about 0.004), where PyMC's default SMC
(independent Metropolis-Hastings mutations) gave chains that disagree on the evidence and on the noise
precision. For each configuration the script prints the wall time, R-hat and ESS over chains, the chains'
log marginal likelihoods and the posterior means / SDs in the prior's unconstrained coordinates, next to
variational Laplace's free energy.

Run: ``python benchmarks/smc_evidence.py [default thr0.8 corr0.001 MH moved95]`` (each 20-180 s on 2 cores).
``moved95`` is an experimental IMH kernel that mutates until 95 % of the particles have moved at least once
(not in the package: it puts the particles right but not the evidence; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import sys
import time
import warnings

from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # backend_problems: shared with the tests


def _moved_imh(fraction: float):
    """PyMC's IMH kernel, mutating until ``fraction`` of the particles have been accepted at least once."""
    from pymc.pytensorf import floatX
    from pymc.smc.kernels import IMH

    class MovedIMH(IMH):
        def mutate(self):
            self.n_steps = 1
            moved = np.zeros(self.draws, bool)
            accepted_all = []
            while True:
                log_r = np.log(self.rng.random(self.draws))
                proposal = floatX(self.proposal_dist.rvs(size=self.draws, random_state=self.rng)).reshape(self.draws, -1)
                forward = self.proposal_dist.logpdf(proposal)
                backward = self.proposal_dist.logpdf(self.tempered_posterior)
                ll = np.array([self.likelihood_logp_func(p) for p in proposal])
                pl = np.array([self.prior_logp_func(p) for p in proposal])
                logp = pl + ll * self.beta
                accepted = log_r < (logp + backward) - (self.tempered_posterior_logp + forward)
                self.tempered_posterior[accepted] = proposal[accepted]
                self.tempered_posterior_logp[accepted] = logp[accepted]
                self.prior_logp[accepted] = pl[accepted]
                self.likelihood_logp[accepted] = ll[accepted]
                accepted_all.append(accepted)
                moved |= accepted
                self.n_steps += 1
                if moved.mean() >= fraction or self.n_steps > 60:
                    break
            self.acc_rate = np.mean(accepted_all)

    return MovedIMH


def main(argv=None) -> None:
    import arviz as az
    import pymc as pm
    import xarray as xr

    from backend_problems import compare_backends_problem
    from jrinfer.backends.laplace import VariationalLaplace
    from jrinfer.backends.pymc import _final_stage, _z_draws, problem_to_pymc

    torch.set_num_threads(1)
    problem = compare_backends_problem()
    configs = {
        "default": dict(threshold=0.5),
        "thr0.8": dict(threshold=0.8),
        "corr0.001": dict(threshold=0.5, correlation_threshold=0.001),
        "MH": dict(threshold=0.5, kernel=pm.smc.kernels.MH),
        "moved95": dict(threshold=0.5, kernel=_moved_imh(0.95)),
    }
    which = (argv if argv is not None else sys.argv[1:]) or list(configs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vl = VariationalLaplace().fit(problem, seed=2)
    print(f"variational Laplace free energy {vl.log_evidence:.2f} nats")
    for name in which:
        model = problem_to_pymc(problem, with_grad=False)
        t0 = time.perf_counter()
        with model, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = pm.sample_smc(draws=300, chains=2, cores=1, random_seed=1, progressbar=False,
                                  compute_convergence_checks=False, return_inferencedata=True, **configs[name])
        seconds = time.perf_counter() - t0
        z = _z_draws(problem, idata)
        ds = xr.Dataset({n: (("chain", "draw"), z[..., i]) for i, n in enumerate(problem.names)})
        rhat, ess = az.rhat(ds), az.ess(ds)
        lml = _final_stage(idata.sample_stats["log_marginal_likelihood"].values)
        means = " ".join(f"{n} {z[..., i].mean():.3f}+-{z[..., i].std():.3f}" for i, n in enumerate(problem.names))
        print(f"{name:10s} {seconds:6.1f} s  R-hat max {max(float(rhat[n]) for n in problem.names):.3f}  "
              f"ESS min {min(float(ess[n]) for n in problem.names):.0f}  chains' log evidence {np.round(lml, 2)}  "
              f"likelihood evaluations {model.jrinfer_op.n_calls} | {means}", flush=True)


if __name__ == "__main__":
    main()
