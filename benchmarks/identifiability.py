"""Timing of the identifiability module (issue 10 targets).

- local analysis of the 12-parameter JR spectral problem (8 JR constants, gain,
  ap_amplitude, ap_exponent, floor; 153 frequencies): target well under 1 s;
- profile likelihood of one parameter over 20 points: target < 10 s.

Usage: ``python benchmarks/identifiability.py [--repeats N]``. Prints a
Markdown table and the machine's load average (the figures depend on it).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from jrinfer import identifiability as idf

JR12 = ["A", "B", "a", "b", "C", "e0", "v0", "r", "gain", "ap_amplitude", "ap_exponent", "floor"]


def timed(fn, repeats: int) -> tuple[float, float, object]:
    out = fn()  # warm-up (first-call compilation of forward-mode decompositions, LAPACK init)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()}")
    rows = []
    spec, th = idf.jansen_rit_problem("spectrum", free=JR12)
    med, best, la = timed(lambda: idf.local_analysis(spec, th), args.repeats)
    rows.append(("local analysis, 12-parameter spectrum (4 nearby checks)", med, best, f"null dim {la.null_dimension}"))
    med, best, la = timed(lambda: idf.local_analysis(spec, th, n_check=0), args.repeats)
    rows.append(("local analysis, 12-parameter spectrum (no nearby checks)", med, best, f"null dim {la.null_dimension}"))
    free8 = [n for n in JR12 if n not in ("e0", "v0", "r", "B")]
    spec8, th8 = idf.jansen_rit_problem("spectrum", free=free8)
    small, ths = idf.jansen_rit_problem("spectrum", free=["A", "a", "b", "C", "e0", "gain"])
    for label, prob, theta, name in [
        ("profile of a, 20 points, 8-parameter spectrum (nulls fixed)", spec8, th8, "a"),
        ("profile of a, 20 points, 6-parameter spectrum", small, ths, "a"),
        ("profile of e0 (flat), 20 points, 6-parameter spectrum", small, ths, "e0"),
    ]:
        med, best, p = timed(lambda: idf.profile_likelihood(prob, name, theta, n_points=20), max(1, args.repeats // 2))
        rows.append((label, med, best, f"{p.verdict}, {p.status.count('converged')}/19 converged"))
    print(f"\nload average after: {os.getloadavg()}\n")
    print("| task | median s | best s | result |\n|---|---:|---:|---|")
    for label, med, best, res in rows:
        print(f"| {label} | {med:.3f} | {best:.3f} | {res} |")


if __name__ == "__main__":
    main()
