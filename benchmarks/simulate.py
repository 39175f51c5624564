"""Simulation throughput: plain NumPy Euler-Maruyama vs jrinfer's backends.

Workload: N = 1,000 independent Jansen-Rit nodes (p_mean uniform in 60-300
pulses/s from a fixed seed, other parameters at the Jansen & Rit 1995
defaults), white Gaussian input noise p_std = 22 on the external input,
dt = 0.1 ms, 10 s (1e5 steps), Euler-Maruyama, float64, v recorded every 10
steps (1 kHz) by every contender. Figures are node-steps per second, medians
over repeats after one warm-up run.

    python benchmarks/simulate.py           # full run (about a minute)
    python benchmarks/simulate.py --quick   # smoke run (a few seconds)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import numpy as np
import torch

from jrinfer import JansenRit, _integrate, _native

DEFAULTS = dict(A=3.25, B=22.0, a=100.0, b=50.0, e0=2.5, v0=6.0, r=0.56, p_std=22.0)
C = 135.0
RECORD_EVERY = 10


def node_parameters(n: int) -> dict[str, np.ndarray]:
    p_mean = np.random.default_rng(2026).uniform(60.0, 300.0, n)
    p = {k: np.full(n, v) for k, v in DEFAULTS.items()}
    p.update(C1=np.full(n, C), C2=np.full(n, 0.8 * C), C3=np.full(n, 0.25 * C), C4=np.full(n, 0.25 * C), p_mean=p_mean)
    return p


def numpy_em(p: dict[str, np.ndarray], n_steps: int, dt: float, seed: int = 0) -> np.ndarray:
    """The plain vectorised NumPy loop: one rng.standard_normal(N) per step."""
    rng = np.random.default_rng(seed)
    n = p["p_mean"].shape[0]
    A, B, a, b, e0, v0, r = (p[k] for k in ("A", "B", "a", "b", "e0", "v0", "r"))
    C1, C2, C3, C4, p_mean = p["C1"], p["C2"], p["C3"], p["C4"], p["p_mean"]
    Aa, Bb = A * a, B * b
    sigma = p["p_std"] * np.sqrt(dt) * Aa

    def S(x):
        return 2.0 * e0 / (1.0 + np.exp(r * (v0 - x)))

    y0, y1, y2, y3, y4, y5 = (np.zeros(n) for _ in range(6))
    out = np.empty((n, n_steps // RECORD_EVERY))
    for i in range(n_steps):
        if i % RECORD_EVERY == 0 and i // RECORD_EVERY < out.shape[1]:
            out[:, i // RECORD_EVERY] = y1 - y2
        f3 = Aa * S(y1 - y2) - 2.0 * a * y3 - a * a * y0
        f4 = Aa * (p_mean + C2 * S(C1 * y0)) - 2.0 * a * y4 - a * a * y1
        f5 = Bb * C4 * S(C3 * y0) - 2.0 * b * y5 - b * b * y2
        y0, y1, y2 = y0 + dt * y3, y1 + dt * y4, y2 + dt * y5
        y3 = y3 + dt * f3
        y4 = y4 + dt * f4 + sigma * rng.standard_normal(n)
        y5 = y5 + dt * f5
    return out


def jrinfer_inputs(p: dict[str, np.ndarray]):
    pt = {k: torch.from_numpy(v.copy()) for k, v in p.items()}
    y0 = torch.zeros(p["p_mean"].shape[0], 6, dtype=torch.float64)
    return pt, y0


def jrinfer_kwargs(n_steps: int, dt: float) -> dict:
    return dict(n_transient=0, n_steps=n_steps, dt=dt, record_every=RECORD_EVERY, method="euler", noise="white",
                channels=(False, True, False), seed=1, pulse=None)


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up (compilation / caches)
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def machine_info() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    cc = "n/a"
    compiler = _native._find_compiler()
    if compiler:
        try:
            cc = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            pass
    try:
        import numba  # noqa: F401  (reported only; the kernel does not use it)

        numba_v = numba.__version__
    except ImportError:
        numba_v = "not installed (not used)"
    return [
        f"CPU: {cpu}, {cores} cores available, {platform.system()} {platform.release()}",
        f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numpy {np.__version__}, numba {numba_v}",
        f"native kernel: C, compiler {cc!r}, available={_native.available()}"
        + ("" if _native.available() else f" ({_native.unavailable_reason()})"),
    ]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    n = args.nodes
    dt = 1e-4
    duration = 0.5 if args.quick else 10.0
    torch_duration = 0.05 if args.quick else 1.0
    repeats = args.repeats or (1 if args.quick else 3)
    n_steps = round(duration / dt)
    torch_steps = round(torch_duration / dt)

    print("== Simulation throughput (node-steps/s, median of %d after a warm-up) ==" % repeats)
    for line in machine_info():
        print(line)
    print(f"workload: N={n} nodes, dt={dt * 1e3:g} ms, {duration:g} s = {n_steps} steps, Euler-Maruyama, white input "
          f"noise p_std=22, float64, v recorded every {RECORD_EVERY} steps")

    p = node_parameters(n)
    pt, y0 = jrinfer_inputs(p)
    results = {}

    t, _ = timed(lambda: numpy_em(p, n_steps, dt), repeats)
    results["numpy"] = n * n_steps / t
    print(f"(a) NumPy EM loop        {results['numpy']:10.3g}   ({t:.2f} s per run)")

    if _native.available():
        model = JansenRit(**pt)  # the public entry point (white noise on the input)

        def run_public():
            return model.simulate(duration, dt, method="euler", seed=1, record_every=RECORD_EVERY, backend="native")

        t, _ = timed(run_public, repeats)
        results["native"] = n * n_steps / t
        print(f"(b) jrinfer native       {results['native']:10.3g}   ({t:.3f} s per run, "
              f"{torch.get_num_threads()} threads)")
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            t1, _ = timed(run_public, repeats)
        finally:
            torch.set_num_threads(old)
        results["native_1thread"] = n * n_steps / t1
        print(f"    jrinfer native, 1 thread {results['native_1thread']:8.3g}   ({t1:.3f} s per run)")
    else:
        print(f"(b) jrinfer native       unavailable: {_native.unavailable_reason()}")

    kw = jrinfer_kwargs(torch_steps, dt)
    t, (v_torch, _) = timed(lambda: _integrate.simulate_flat(pt, y0, **kw), repeats)
    results["torch"] = n * torch_steps / t
    print(f"(c) jrinfer torch ref.   {results['torch']:10.3g}   ({t:.2f} s per run; timed on {torch_duration:g} s "
          f"= {torch_steps} steps only, it is slow)")
    if "native" in results:
        v_nat, _ = _native.simulate_flat_native(pt, y0, **kw)
        dev = (v_nat - v_torch).abs().max().item()
        print(f"    native vs torch on that run: max |dv| = {dev:.2e} mV (same seed, same noise)")

    print("ratios vs NumPy:", ", ".join(f"{k} {v / results['numpy']:.2f}x" for k, v in results.items() if k != "numpy"))
    linear_spectra(1000 if args.quick else 10_000, repeats)


def linear_spectra(batch: int, repeats: int) -> None:
    """Linearised spectra per second: fixed points + eigenvalues + transfer function."""
    print(f"\n== Linearised spectra (batch of {batch:,} parameter sets, 100 frequencies, median of {repeats}) ==")
    rng = np.random.default_rng(2)
    params = {
        "p_mean": torch.from_numpy(rng.uniform(40, 85, batch)),
        "A": torch.from_numpy(rng.uniform(3.0, 3.5, batch)),
        "a": torch.from_numpy(rng.uniform(80, 120, batch)),
        "C": torch.from_numpy(rng.uniform(120, 150, batch)),
        "p_std": 1.0,
    }
    freqs = torch.linspace(1, 40, 100, dtype=torch.float64)
    model = JansenRit(**params)
    t, lin = timed(lambda: model.linear_psd(freqs), repeats)
    print(f"spectra/s                {batch / t:10.3g}   ({t * 1e3:.0f} ms per batch; "
          f"{int(lin.stable.sum())} of {batch} stable)")
    t_fp, _ = timed(lambda: model.fixed_points(), repeats)
    print(f"  of which equilibria    {t_fp * 1e3:10.0f} ms (all equilibria, eigenvalues, stability)")

    def with_grad():
        leaf = {k: (v.clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v) for k, v in params.items()}
        lp = JansenRit(**leaf).linear_psd(freqs).psd
        lp.log().sum().backward()

    t_g, _ = timed(with_grad, repeats)
    print(f"spectra/s with gradient  {batch / t_g:10.3g}   ({t_g * 1e3:.0f} ms per batch, forward + backward)")


if __name__ == "__main__":
    main()
