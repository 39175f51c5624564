"""Optional dependencies, imported lazily with an install hint naming the extra."""

from __future__ import annotations

import importlib

__all__ = ["optional_import"]

_EXTRAS = {
    "arviz": "arviz",
    "matplotlib": "plot",
    "mne": "eeg",
    "pymc": "mcmc",
    "sbi": "sbi",
    "dask": "dask",
    "distributed": "dask",
}


def optional_import(module: str, *, purpose: str = ""):
    """Import ``module`` or raise ``ImportError`` saying which jrinfer extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = _EXTRAS.get(top, "all")
        why = f" for {purpose}" if purpose else ""
        raise ImportError(f"{top} is needed{why}: pip install 'jrinfer[{extra}]'") from err
