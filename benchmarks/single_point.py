"""One log density + gradient at a single parameter set (the path NUTS calls).

The README's EEGMAT problem (subject 0, O1/O2 averaged, 153 frequencies,
default ``SpectrumObservation`` with the transfer method and its default
prior; needs ``JRINFER_DATA``). Times, as medians over ``--repeats`` calls:

* ``InverseProblem.log_joint_and_grad`` near the prior mean (unconstrained,
  moved by a small step every call as a sampler would), a single parameter
  set, and per set in a batch of 64, on the observation's fused NumPy path,
  on ``--baseline REF``'s fused path (``jrinfer/_fastspec.py`` at git
  revision REF, with this checkout's prior transform) and on the generic autograd path, in blocks of 25 calls per
  path in rotating order (paired on the same load, caches warm as in a
  sampler);
* the PyMC Op (log-likelihood + gradient) at a single parameter set;
* the model's part alone: ``JansenRit(...).linear_psd`` forward + backward at
  the same parameters, cold and with a caller-owned ``EquilibriumCache`` (warm
  start of Newton from the previous call's equilibrium), moving the
  parameters by a small step every call as a sampler would;
* a check of the gradient against central finite differences.

Prints the jrinfer location so that runs against another checkout (set
``PYTHONPATH``) can be paired with this one.

Run: ``python benchmarks/single_point.py [--repeats 200] [--threads 1] [--baseline 0de5bc9]``
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import jrinfer
from jrinfer import InverseProblem, JansenRit, SpectrumObservation


def baseline_fastspec(ref: str):
    """``jrinfer/_fastspec.py`` as of git revision ``ref``, imported under another name."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "-C", str(root), "show", f"{ref}:jrinfer/_fastspec.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "_fastspec_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("_fastspec_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def median_time(fn, repeats: int) -> float:
    times = []
    c0 = time.process_time()
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    median_time.cpu = (time.process_time() - c0) / repeats  # CPU time per call: less sensitive to other load
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--baseline", default=None,
                    help="git revision whose jrinfer/_fastspec.py is timed alongside (paired), e.g. 0de5bc9")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's; 1 avoids contention on a shared machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"jrinfer from {jrinfer.__file__}; load average {os.getloadavg()}")
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}")
    data = jrinfer.datasets.eegmat_spectrum(subject=0, channels=("O1", "O2")).mean_over_channels()
    obs = SpectrumObservation()
    problem = InverseProblem(obs, obs.default_prior(data), data)
    z0 = problem.prior.gaussian_unconstrained()[0]  # the prior median, a stable equilibrium
    fast = problem._fast() if hasattr(problem, "_fast") else None
    print(f"problem: {len(problem.names)} parameters, {data.freqs.numel()} frequencies")
    step = 1e-3 * torch.randn(args.repeats + 1, z0.numel(), generator=torch.Generator().manual_seed(0),
                              dtype=torch.float64)
    zb = z0 + 1e-3 * torch.randn(64, z0.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    paths = {"fused": fast} if fast is not None else {}
    if fast is not None and args.baseline:
        old = baseline_fastspec(args.baseline).SpectralLogLikelihood(obs, data, problem.names,
                                                                      dict(problem.prior.fixed))
        paths[f"fused@{args.baseline}"] = (old, fast[1])
    paths["autograd"] = None

    def use(path):
        if fast is not None:
            problem._fast_cache = paths[path]

    # paired on the same load: blocks of calls per path in rotating order (below)
    one = {k: [] for k in paths}
    batch = {k: [] for k in paths}
    names = list(paths)
    c0 = {k: 0.0 for k in paths}
    for k in names:
        use(k)
        problem.log_joint_and_grad(z0)
    block = 25  # consecutive calls per path (a sampler's caches stay warm), blocks in rotating order
    zs = [z0 + step[i] for i in range(args.repeats)]
    for j, i0 in enumerate(range(0, args.repeats, block)):
        for k in names[j % len(names):] + names[:j % len(names)]:
            use(k)
            c = time.process_time()
            for i in range(i0, min(i0 + block, args.repeats)):
                t0 = time.perf_counter()
                problem.log_joint_and_grad(zs[i])
                one[k].append(time.perf_counter() - t0)
            c0[k] += time.process_time() - c
    for i in range(max(5, args.repeats // 20)):
        for k in names:
            use(k)
            t0 = time.perf_counter()
            problem.log_joint_and_grad(zb)
            batch[k].append((time.perf_counter() - t0) / 64)
    for k in names:
        print(f"log_joint_and_grad ({k:18s}) one set {statistics.median(one[k]) * 1e3:8.3f} ms "
              f"(CPU time {c0[k] / args.repeats * 1e3:.3f} ms per call), per set of 64 "
              f"{statistics.median(batch[k]) * 1e3:8.3f} ms")
    use("fused" if fast is not None else "autograd")
    try:
        from jrinfer.backends.pymc import loglike_op

        op = loglike_op(problem)
        zn = z0.numpy()
        t_op = median_time(lambda i: op.evaluate(zn + step[i].numpy()), args.repeats)
        print(f"PyMC Op (log-likelihood + gradient), one set  {t_op * 1e3:8.3f} ms "
              f"(CPU time {median_time.cpu * 1e3:.3f} ms per call)")
    except ImportError:
        pass

    theta0 = problem.prior.from_unconstrained(z0)
    params = problem.parameters(theta0)
    jr = {k: v for k, v in params.items() if k in jrinfer.PARAMETERS}
    freqs = data.freqs
    leaves0 = {k: torch.as_tensor(v, dtype=torch.float64).detach() for k, v in jr.items()}

    def model_grad(i, cache=None):
        leaves = {k: (v * (1 + 1e-4 * float(step[i, 0]))).requires_grad_(True) for k, v in leaves0.items()}
        kw = {} if cache is None else {"warm_start": cache}
        psd = JansenRit(**leaves).linear_psd(freqs, **kw).psd
        torch.autograd.grad(psd.log().sum(), list(leaves.values()))

    model_grad(0)
    t_cold = median_time(model_grad, args.repeats)
    print(f"model only: linear_psd + backward     {t_cold * 1e3:8.3f} ms")
    if hasattr(jrinfer, "EquilibriumCache"):
        cache = jrinfer.EquilibriumCache()
        t_warm = median_time(lambda i: model_grad(i, cache), args.repeats)
        print(f"  with EquilibriumCache warm start    {t_warm * 1e3:8.3f} ms")

    # gradient check against central differences (unconstrained coordinates)
    _, g = problem.log_joint_and_grad(z0)
    worst = 0.0
    for i in range(z0.numel()):
        h = 1e-5
        e = torch.zeros_like(z0)
        e[i] = h
        fd = (problem.log_joint_unconstrained(z0 + e) - problem.log_joint_unconstrained(z0 - e)) / (2 * h)
        worst = max(worst, abs(float(fd) - float(g[i])) / float(g.abs().max()))
    print(f"gradient vs central differences: max error {worst:.1e} (relative to the largest component)")
    if fast is not None:
        problem._fast_cache = None
        zs = z0 + 1e-2 * torch.randn(8, z0.numel(), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        v2, g2 = problem.log_joint_and_grad(zs)
        problem._fast_cache = fast
        v1, g1 = problem.log_joint_and_grad(zs)
        ok = torch.isfinite(v2)
        err = ((g1 - g2).abs().amax(-1) / g2.abs().amax(-1))[ok].max()
        print(f"fused vs autograd at {int(ok.sum())} sets: value rel. error {float(((v1 - v2) / v2)[ok].abs().max()):.1e}, "
              f"gradient {float(err):.1e} (relative to the largest component)")


if __name__ == "__main__":
    main()
