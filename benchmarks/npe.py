"""Neural posterior estimation: simulation throughput, training time, conditioning time.

Builds the ``jrinfer train-npe --kind spectrum`` training problem (simulated
spectra, 2-40 Hz in 0.5 Hz steps, the default prior boxed, p_std 0.5) and
measures, in this order:

1. simulated spectra per second feeding training (``simulate_training_set``,
   chunks of 500, the native kernel with torch's thread count);
2. training time of the default flow (sbi MAF, 5 transforms of 50 units,
   sbi's default batch 200, learning rate 5e-4, patience 20) for each budget
   in ``--budgets`` (simulate + train, and train alone), the first budget also
   with sbi's plain defaults (``NPE(prior).append_simulations(...).train()``
   on the same data, torch's default threads) as the baseline of the same run;
3. the time to draw 1,000 posterior samples for a new spectrum (median of 20,
   after one warm-up call), through :meth:`AmortizedPosterior.sample`.

Run: ``python benchmarks/npe.py [--budgets 10000 20000] [--free a,b,p_mean] [--threads 2]``
(``--budgets 10000 100000`` for the issue's figures; 10^5 simulations take
several minutes to simulate and tens of minutes to train on 2 cores).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", type=int, nargs="+", default=[10_000, 20_000], help="training simulations")
    ap.add_argument("--free", default=None, help="JR parameters to infer (train-npe's --free; default its default)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    ap.add_argument("--no-baseline", action="store_true", help="skip sbi's plain-defaults baseline")
    args = ap.parse_args(argv)

    import torch

    import jrinfer
    from jrinfer.backends.npe import NPE, _FlowCoordinates, box_prior, simulate_training_set
    from jrinfer.cli import _npe_training_problem
    from jrinfer.problem import InverseProblem

    if args.threads:
        torch.set_num_threads(args.threads)
    import sbi

    print(f"jrinfer {jrinfer.__version__}, sbi {sbi.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {platform.machine()}, python {platform.python_version()}")
    ns = argparse.Namespace(fmin=2.0, fmax=40.0, df=0.5, method="simulation", free=args.free, prior=None, fix=None)
    problem = _npe_training_problem(ns)
    boxed = InverseProblem(problem.observation, box_prior(problem.prior), problem.data)
    print(f"parameters: {', '.join(problem.names)} ({problem.n_params}); features: 77 log-powers")

    # 1. simulation throughput (one warm-up chunk compiles nothing new but fills caches)
    simulate_training_set(boxed, 100, seed=123, chunk_size=100, progress=False)
    ts = simulate_training_set(boxed, 2000, seed=7, chunk_size=500, progress=False)
    print(f"simulation: {ts.n / ts.seconds:.0f} spectra/s ({ts.n} in {ts.seconds:.1f} s, "
          f"{ts.report()['n_failed']} failed)")

    estimator = None
    for k, n in enumerate(args.budgets):
        npe = NPE(n_simulations=n, seed=1)
        t0 = time.perf_counter()
        estimator = npe.train(problem)
        total = time.perf_counter() - t0
        t = estimator.training
        print(f"budget {n}: simulate {t['simulation_seconds']:.1f} s + train {t['training_seconds']:.1f} s "
              f"({t['epochs']} epochs) = {total:.1f} s; best validation log-prob {t['best_validation_log_prob']:.2f}")
        if k == 0 and not args.no_baseline:
            from sbi.inference import NPE as SbiNPE

            sims = simulate_training_set(boxed, n, seed=1, chunk_size=500, progress=False)
            coords = _FlowCoordinates(boxed.prior)
            theta = coords.to_flow(sims.theta[sims.valid]).float()
            x = sims.x[sims.valid].float()
            with torch.random.fork_rng(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.manual_seed(0)
                base = SbiNPE(prior=coords.torch_prior, show_progress_bars=False)
                t0 = time.perf_counter()
                base.append_simulations(theta, x).train()
                print(f"  baseline, sbi's defaults on the same {int(sims.valid.sum())} simulations, torch's threads: "
                      f"train {time.perf_counter() - t0:.1f} s ({base.epoch} epochs)")

    # 3. conditioning a new spectrum
    data = problem.with_data(problem.data).data
    x = estimator.features(data)
    estimator.sample(x, 1000, seed=0)
    times = []
    for s in range(20):
        t0 = time.perf_counter()
        estimator.sample(x, 1000, seed=s)
        times.append(time.perf_counter() - t0)
    print(f"1000 posterior draws for a new spectrum: median {1e3 * statistics.median(times):.1f} ms "
          f"(min {1e3 * min(times):.1f}, max {1e3 * max(times):.1f}) over 20 calls")
    t0 = time.perf_counter()
    estimator.condition(data, n_draws=1000, n_predictive=0)
    print(f"condition() without predictive (draws, leakage, OOD check, regimes, assembly): "
          f"{1e3 * (time.perf_counter() - t0):.0f} ms")


if __name__ == "__main__":
    main()
