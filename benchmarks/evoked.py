"""Evoked (ERP) fit speed: the MNE-sample auditory ERP through ``jrinfer fit``.

Writes the channel-averaged auditory ERP (``jrinfer.datasets.fetch_mne_sample_erp``,
needs the data cache ``JRINFER_DATA``) to a CSV, runs
``jrinfer fit ERP.csv --kind evoked --units uV`` (variational Laplace) and
reports the wall time of the whole command (median of ``--repeats`` runs in
this process, after one warm-up that builds the native kernel), the
iterations, the free energy and the N100 latency of the fitted ERP. It also
times one forward + reverse pass of the ERP prediction with the sensitivity
kernel and, with ``--torch``, with autograd through the torch RK4 loop.

Run: ``python benchmarks/evoked.py [--repeats 3] [--torch]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import jrinfer
from jrinfer.cli import main as cli_main


def one_gradient(problem, theta, backend: str) -> float:
    """Seconds for the log likelihood and its gradient at ``theta`` with a simulation backend."""
    import jrinfer.model as model_mod

    orig = model_mod.JansenRit.simulate

    def patched(self, *a, **k):
        k["backend"] = backend
        return orig(self, *a, **k)

    model_mod.JansenRit.simulate = patched
    try:
        t0 = time.perf_counter()
        z = theta.clone().requires_grad_(True)
        ll = problem.log_likelihood(z)
        torch.autograd.grad(ll.sum(), z)
        return time.perf_counter() - t0
    finally:
        model_mod.JansenRit.simulate = orig


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch", action="store_true", help="also time one torch-autograd gradient (slow)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's; 1 avoids contention on a shared machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}")
    data = jrinfer.datasets.fetch_mne_sample_erp("audio").mean_over_channels()
    tmp = Path(tempfile.mkdtemp())
    csv = tmp / "erp.csv"
    data.to_csv(csv)
    obs = jrinfer.EvokedObservation()
    problem = jrinfer.InverseProblem(obs, obs.default_prior(data), data)
    theta = problem.prior.mean()
    t_sens = statistics.median(one_gradient(problem, theta, "sensitivity") for _ in range(5))
    print(f"one ERP log-likelihood + gradient, sensitivity kernel: {t_sens * 1e3:8.2f} ms")
    if args.torch:
        t_torch = one_gradient(problem, theta, "torch")
        print(f"one ERP log-likelihood + gradient, torch autograd:     {t_torch * 1e3:8.2f} ms "
              f"({t_torch / t_sens:.0f}x)")

    def fit(k: int):
        out = tmp / f"fit{k}"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = cli_main(["fit", str(csv), "--kind", "evoked", "--units", "uV", "--out", str(out)])
        assert code == 0, code
        return json.loads((out / "summary.json").read_text())

    fit(-1)  # warm-up
    times = []
    for k in range(args.repeats):
        t0 = time.perf_counter()
        summary = fit(k)
        times.append(time.perf_counter() - t0)
    post = jrinfer.InverseProblem(obs, obs.default_prior(data), data)
    names = post.names
    mean = torch.tensor([summary["parameters"][n]["mean"] for n in names], dtype=torch.float64) \
        if "parameters" in summary else None
    t = data.times
    n100 = (t > 0.05) & (t < 0.15)
    line = f"jrinfer fit --kind evoked (median of {args.repeats}): {statistics.median(times):.2f} s"
    diag = summary.get("diagnostics", summary.get("backend_diagnostics", {}))
    if isinstance(diag, dict) and "n_iter" in diag:
        line += f", {diag['n_iter']} iterations"
    if "free_energy" in summary:
        line += f", F = {summary['free_energy']:.3f}"
    print(line)
    print(f"data N100 latency {float(t[n100][data.values[0][n100].argmin()]) * 1e3:.0f} ms")
    if mean is not None:
        pred = problem.predict(mean).value[0].detach()
        print(f"fitted N100 latency (posterior-mean parameters) {float(t[n100][pred[n100].argmin()]) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
