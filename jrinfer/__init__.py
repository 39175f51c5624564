"""jrinfer: Bayesian inversion of the Jansen-Rit neural mass model against recorded EEG.

Units throughout: seconds, mV, pulses/s (Hz for frequencies). Tensors are
torch float64 and batched over leading dimensions.

The public namespace is small; everything else lives in private modules.
Heavy optional dependencies (mne, arviz, matplotlib, pymc, sbi) are imported
only where they are used.
"""

from jrinfer import datasets
from jrinfer.data import EvokedData, SpectrumData
from jrinfer.model import (
    PARAMETERS,
    EquilibriumCache,
    FixedPoints,
    JansenRit,
    LinearSpectrum,
    PulseInput,
    SimulatedSpectrum,
    Simulation,
)
from jrinfer.observation import EvokedObservation, Observation, SpectrumObservation
from jrinfer.posterior import Posterior
from jrinfer.prior import LogNormal, LogUniform, Normal, Prior, Uniform
from jrinfer.problem import InverseProblem, jansen_rit_prior
from jrinfer.distributed import fit_many, simulate_many
from jrinfer.spectral import WelchPSD, welch_psd

__version__ = "0.1.0.dev0"

__all__ = [
    "PARAMETERS",
    "EquilibriumCache",
    "SimulatedSpectrum",
    "EvokedData",
    "EvokedObservation",
    "FixedPoints",
    "InverseProblem",
    "JansenRit",
    "LinearSpectrum",
    "LogNormal",
    "LogUniform",
    "Normal",
    "Observation",
    "Posterior",
    "Prior",
    "PulseInput",
    "Simulation",
    "SpectrumData",
    "SpectrumObservation",
    "Uniform",
    "WelchPSD",
    "datasets",
    "fit_many",
    "jansen_rit_prior",
    "simulate_many",
    "welch_psd",
    "__version__",
]
