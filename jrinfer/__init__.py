"""jrinfer: Bayesian inversion of the Jansen-Rit neural mass model against recorded EEG.

Units throughout: seconds, mV, pulses/s (Hz for frequencies). Tensors are
torch float64 and batched over leading dimensions.

The public namespace is small; everything else lives in private modules.
"""

from jrinfer.model import PARAMETERS, FixedPoints, JansenRit, LinearSpectrum, PulseInput, Simulation
from jrinfer.spectral import WelchPSD, welch_psd

__version__ = "0.1.0.dev0"

__all__ = [
    "PARAMETERS",
    "FixedPoints",
    "JansenRit",
    "LinearSpectrum",
    "PulseInput",
    "Simulation",
    "WelchPSD",
    "welch_psd",
    "__version__",
]
