"""Generate the synthetic example spectrum shipped with jrinfer (reproducible).

A Jansen-Rit model with known parameters (JR 1995 defaults except
``p_mean = 70`` pulses/s and ``p_std = 1`` pulses/s/sqrt(Hz), white input
noise, stable upper equilibrium below the first Hopf point) is linearised and
the expected Welch estimate of the PSD of ``v = y1 - y2`` (mV^2/Hz; Hann
segments of 1/df = 2 s, as the data's estimator would show it) is turned into
an EEG-like observation::

    power(f) = 1e6 * gain^2 * E[Welch PSD_v](f) * g(f),   g(f) ~ Gamma(shape=K, scale=1/K) i.i.d.

in µV^2/Hz: ``gain`` is a dimensionless scalp attenuation chosen so the alpha
peak is a few tens of µV^2/Hz, and ``g`` is the sampling noise of a Welch
estimate that averages ``K`` independent segments (mean 1, variance 1/K).

Usage (from the repository root)::

    python datasets/make_synthetic.py            # (re)write the CSV/JSON here and in jrinfer/_data/
    python datasets/make_synthetic.py --check    # exit 1 if the shipped files differ from a fresh run

Outputs: ``datasets/synthetic_spectrum.csv`` (``freq,power``), and
``datasets/synthetic_spectrum.json`` (true parameters, gain, units, seed, K,
noise-free spectrum), with identical copies in ``jrinfer/_data/`` for the
installed package (:func:`jrinfer.datasets.synthetic_spectrum`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SEED = 1995
N_SEGMENTS = 40
GAIN = 0.004
PARAMS = {"p_mean": 70.0, "p_std": 1.0}
FMIN, FMAX, DF = 1.0, 40.0, 0.5
OUT_DIRS = (ROOT / "datasets", ROOT / "jrinfer" / "_data")
NAME = "synthetic_spectrum"


def generate(seed: int = SEED, n_segments: int = N_SEGMENTS, gain: float = GAIN) -> tuple[np.ndarray, np.ndarray, dict]:
    """Frequencies (Hz), noisy power (µV^2/Hz) and the JSON description."""
    import jrinfer
    from jrinfer.model import PARAMETERS

    n = int(round((FMAX - FMIN) / DF)) + 1
    freqs = FMIN + DF * np.arange(n, dtype=np.float64)
    model = jrinfer.JansenRit(**PARAMS)
    obs = jrinfer.SpectrumObservation(window="hann")
    neural = obs.neural_psd(
        {k: torch.tensor(v, dtype=torch.float64) for k, v in PARAMS.items()}, torch.from_numpy(freqs), seg_length=1.0 / DF
    )
    if not bool(neural.valid):
        raise RuntimeError("the chosen parameters are not at a stable equilibrium")
    clean = 1e6 * gain**2 * neural.value.numpy()  # mV^2/Hz -> µV^2/Hz, scaled by the output gain
    noise = np.random.default_rng(seed).gamma(shape=n_segments, scale=1.0 / n_segments, size=n)
    power = clean * noise
    params = {k: float(v) for k, v in model.params.items()}
    info = {
        "description": (
            "Synthetic EEG-like power spectrum from the linearised Jansen-Rit model with known parameters, "
            "scaled to uV^2/Hz and multiplied by Gamma(K, 1/K) noise (a Welch average of K segments)."
        ),
        "generator": "datasets/make_synthetic.py",
        "model": (
            "jrinfer.SpectrumObservation(window='hann').neural_psd(params, freqs, seg_length=2.0): the expected "
            "Welch estimate (Hann segments of 2 s) of the linearised JR spectrum at the upper equilibrium"
        ),
        "parameters": params,
        "parameter_units": {k: PARAMETERS[k].unit for k in params},
        "changed_from_defaults": dict(PARAMS),
        "output_gain": gain,
        "observation_model": "power = 1e6 * output_gain**2 * expected_welch_psd_mV2_per_Hz * Gamma(shape=K, scale=1/K)",
        "seg_length_s": 1.0 / DF,
        "n_segments": n_segments,
        "seed": seed,
        "rng": "numpy.random.default_rng(seed).gamma(shape=K, scale=1/K, size=F)",
        "freqs": {"start": FMIN, "stop": FMAX, "step": DF, "n": n},
        "units": {"freq": "Hz", "power": "uV^2/Hz"},
        "noise_free_power": [float(x) for x in clean],
        "noise_free_peak_hz": float(freqs[int(np.argmax(clean))]),
    }
    return freqs, power, info


def _render(freqs: np.ndarray, power: np.ndarray, info: dict) -> tuple[str, str]:
    rows = ["freq,power"] + [f"{f!r},{p!r}" for f, p in zip(freqs.tolist(), power.tolist())]
    return "\n".join(rows) + "\n", json.dumps(info, indent=2, sort_keys=True) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare the shipped files with a fresh run; write nothing")
    args = ap.parse_args(argv)
    freqs, power, info = generate()
    csv_text, json_text = _render(freqs, power, info)
    if args.check:
        ok = True
        for d in OUT_DIRS:
            for suffix, fresh in ((".csv", csv_text), (".json", json_text)):
                p = d / f"{NAME}{suffix}"
                if not p.is_file() or p.read_text(encoding="utf-8") != fresh:
                    print(f"differs or missing: {p}", file=sys.stderr)
                    ok = False
        return 0 if ok else 1
    for d in OUT_DIRS:
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{NAME}.csv").write_text(csv_text, encoding="utf-8")
        (d / f"{NAME}.json").write_text(json_text, encoding="utf-8")
        print(f"wrote {d / NAME}.csv and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
