"""The observation interface: a new observation model defined here is fitted without editing the library.

The model is a damped harmonic oscillator driven by white noise, seen as a
power spectrum: ``P(f) = s^2 / ((f0^2 - f^2)^2 + (gamma f)^2)``. Its parameters
are the resonance ``f0`` (Hz), the damping ``gamma`` (Hz) and the scale ``s``,
plus a log precision of log-power residuals.
"""

import math

import numpy as np
import pytest
import torch

from jrinfer import InverseProblem, Observation, SpectrumData
from jrinfer.backends.laplace import VariationalLaplace
from jrinfer.observation import FitQuality, GaussianTarget, ObservedData, Prediction

F64 = torch.float64


class DampedOscillatorSpectrum(Observation):
    data_type = SpectrumData

    def parameter_names(self, data=None):
        return ("f0", "gamma", "scale", "log_precision")

    def required_parameters(self, data=None):
        return self.parameter_names(data)

    def parameter_units(self, data=None):
        return {"f0": "Hz", "gamma": "Hz", "scale": "sqrt(data units) Hz^1.5", "log_precision": "1"}

    def observed_data(self, data):
        return ObservedData(data.power, "freq", data.freqs, "Hz", tuple(data.channel_names), data.units)

    def predict(self, params, data):
        f = data.freqs
        f0, g, s = (torch.as_tensor(params[k], dtype=F64).unsqueeze(-1) for k in ("f0", "gamma", "scale"))
        value = s**2 / ((f0**2 - f**2) ** 2 + (g * f) ** 2)
        return Prediction(value, torch.ones(value.shape[:-1], dtype=torch.bool), [])

    def pointwise_log_likelihood(self, prediction, params, data):
        lam = torch.as_tensor(params["log_precision"], dtype=F64)[..., None, None]
        r = torch.log(data.power) - torch.log(prediction.value).unsqueeze(-2)
        return 0.5 * lam - 0.5 * math.log(2 * math.pi) - 0.5 * torch.exp(lam) * r * r

    def sample(self, prediction, params, data, generator):
        lam = torch.as_tensor(params["log_precision"], dtype=F64)[..., None, None]
        pred = prediction.value.unsqueeze(-2).expand(prediction.value.shape[:-1] + data.power.shape)
        eps = torch.randn(pred.shape, dtype=F64, generator=generator)
        return pred * torch.exp(eps * torch.exp(-0.5 * lam))

    def gaussian_target(self, data):
        y = torch.log(data.power)
        return GaussianTarget(
            y, lambda v: torch.log(v).unsqueeze(-2), ("log_precision",), torch.ones(1, y.numel(), dtype=F64), "log-power"
        )

    def features(self, values, data):
        return torch.log(values).mean(-2)

    def default_prior(self, data, *, free=None):
        return {
            "distributions": {
                "f0": {"dist": "lognormal", "median": 10.0, "sd_log": 0.5},
                "gamma": {"dist": "lognormal", "median": 2.0, "sd_log": 1.0},
                "scale": {"dist": "lognormal", "median": float(data.power.max().sqrt() * 20.0), "sd_log": 2.0},
                "log_precision": {"dist": "normal", "mean": 2.0, "sd": 2.0},
            },
            "fixed": {},
            "units": self.parameter_units(data),
        }


TRUTH = {"f0": 9.5, "gamma": 1.5, "scale": 300.0, "log_precision": math.log(50.0)}


def make_data(seed=0):
    freqs = torch.arange(2.0, 30.01, 0.25, dtype=F64)
    obs = DampedOscillatorSpectrum()
    template = SpectrumData.from_arrays(freqs, torch.ones(2, freqs.numel(), dtype=F64), units="uV^2/Hz")
    params = {k: torch.tensor(v, dtype=F64) for k, v in TRUTH.items()}
    pred = obs.predict(params, template)
    y = obs.sample(pred, params, template, torch.Generator().manual_seed(seed))
    return SpectrumData.from_arrays(freqs, y, units="uV^2/Hz")


def test_abstract_interface_must_be_complete():
    class Partial(Observation):
        def parameter_names(self, data=None):
            return ("x",)

    with pytest.raises(TypeError, match="abstract"):
        Partial()


def test_new_observation_fitted_with_variational_laplace():
    data = make_data()
    problem = InverseProblem(DampedOscillatorSpectrum(), None, data)
    assert problem.names == ("f0", "gamma", "scale", "log_precision")
    post = VariationalLaplace().fit(problem, n_draws=500, n_predictive=50, seed=0)
    assert post.converged
    s = post.summary()["parameters"]
    for name in ("f0", "gamma", "scale"):
        # the truth within 3.5 posterior SDs (and the resonance within 2 %)
        assert abs(s[name]["mean"] - TRUTH[name]) < 3.5 * s[name]["sd"], (name, s[name], TRUTH[name])
    assert abs(s["f0"]["mean"] - TRUTH["f0"]) / TRUTH["f0"] < 0.02
    assert post.units["f0"] == "Hz"
    # the generic goodness of fit of the base class (R^2 in the target's space)
    assert post.fit_quality["r2"] > 0.9 and post.fit_quality["space"] == "log-power"
    assert post.predictive.shape[-2:] == (2, data.freqs.numel())
    assert not any("poor fit" in w for w in post.warnings)


def test_generic_misfit_warning():
    data = make_data()
    obs = DampedOscillatorSpectrum()
    flat = torch.full_like(data.freqs, float(data.power.mean()))
    q = obs.goodness_of_fit(data, flat)
    assert isinstance(q, FitQuality) and q.metrics["r2"] < 0.8
    assert any("poor fit" in w for w in q.warnings)


def test_problem_does_not_branch_on_observation_type():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "jrinfer"
    sources = [root / "problem.py"] + [p for p in (root / "backends").glob("*.py")]
    for path in sources:
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not names & {"SpectrumObservation", "EvokedObservation"}, path.name
        assert "kind" not in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}, path.name


def test_too_few_points_for_the_free_parameters():
    data = make_data()
    one = data.select(fmin=10.0, fmax=10.0)
    with pytest.raises(ValueError, match="needs more points than parameters"):
        InverseProblem(DampedOscillatorSpectrum(), None, one)


# ------------------------------------------------ saving a problem as JSON (what NPE estimators store)
def test_problem_to_dict_round_trip_through_json():
    import json

    from jrinfer import EvokedData, EvokedObservation, InverseProblem, SpectrumData, SpectrumObservation

    freqs = torch.arange(2.0, 20.01, 0.5, dtype=torch.float64)
    spec = SpectrumData.from_arrays(freqs, 20.0 / freqs, units="uV^2/Hz", n_segments=12,
                                    metadata={"seg_length_s": 2.0, "warnings": ["dropped"]})
    times = torch.arange(-0.1, 0.3, 0.002, dtype=torch.float64)
    evo = EvokedData.from_arrays(times, torch.sin(20 * times)[None], units="uV", n_averaged=40)
    for obs, data in [(SpectrumObservation(method="transfer", floor=False), spec), (EvokedObservation(), evo)]:
        problem = InverseProblem(obs, obs.default_prior(data), data)
        back = InverseProblem.from_dict(json.loads(json.dumps(problem.to_dict())))
        assert type(back.observation) is type(obs) and back.observation.settings() == obs.settings()
        assert back.prior == problem.prior and back.names == problem.names
        a, b = problem.observed(), back.observed()
        assert torch.equal(a.values, b.values) and torch.equal(a.coord_values, b.coord_values) and a.units == b.units
    assert "warnings" not in spec.to_dict()["metadata"] and spec.to_dict()["metadata"]["seg_length_s"] == 2.0
    # a given observation is checked against the saved settings
    saved = InverseProblem(SpectrumObservation(floor=False), None, spec).to_dict()
    saved["prior"] = SpectrumObservation(floor=False).default_prior(spec)
    with pytest.raises(ValueError, match="floor"):
        InverseProblem.from_dict(saved, observation=SpectrumObservation(floor=True))
    with pytest.raises(ValueError, match="type"):
        from jrinfer.data import data_from_dict

        data_from_dict({"type": "Raw"})


def test_spectrum_interpolate_is_linear_in_log_power_and_refuses_to_extrapolate():
    from jrinfer import SpectrumData

    freqs = torch.arange(2.0, 20.01, 1.0, dtype=torch.float64)
    power = torch.exp(-0.1 * freqs)[None] * torch.tensor([[1.0], [3.0]], dtype=torch.float64)  # exact in log space
    data = SpectrumData.from_arrays(freqs, power, ["O1", "O2"], units="uV^2/Hz", n_segments=9)
    grid = torch.arange(2.0, 20.01, 0.25, dtype=torch.float64)
    fine = data.interpolate(grid)
    assert torch.allclose(fine.power, torch.exp(-0.1 * grid)[None] * torch.tensor([[1.0], [3.0]], dtype=torch.float64),
                          rtol=1e-12)
    assert fine.channel_names == ("O1", "O2") and fine.n_segments == 9 and "interpolated" in fine.metadata["warnings"][-1]
    with pytest.raises(ValueError, match="does not extrapolate"):
        data.interpolate(torch.arange(1.0, 10.0, 0.5, dtype=torch.float64))


def test_regimes_through_the_problem():
    from jrinfer import InverseProblem, SpectrumData, SpectrumObservation
    from jrinfer.model import REGIMES

    freqs = torch.arange(2.0, 20.01, 0.5, dtype=torch.float64)
    data = SpectrumData.from_arrays(freqs, 20.0 / freqs, units="uV^2/Hz")
    obs = SpectrumObservation(method="simulation")
    problem = InverseProblem(obs, obs.default_prior(data, free=("p_mean",)), data)
    theta = problem.prior.median().repeat(3, 1)
    theta[:, problem.names.index("p_mean")] = torch.tensor([60.0, 100.0, 220.0], dtype=torch.float64)
    assert [REGIMES[c] for c in problem.regimes(theta).tolist()] == ["stable", "lower_branch", "limit_cycle"]
