"""The result every backend returns: plain arrays and names, convertible to ArviZ."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Posterior"]


@dataclass(frozen=True)
class Posterior:
    """Posterior over named parameters, backend-independent.

    Attributes
    ----------
    names : tuple of str
        Parameter names (natural units, as declared in the prior).
    draws : numpy.ndarray
        Posterior draws in natural units, shape ``(n_chains, n_draws, n_params)``.
    backend : str
        Which backend produced it (``"laplace"``, ``"nuts"``, ``"smc"``, ``"npe"``).
    status : str
        ``"converged"`` or a failure code (``"max_iter"``, ``"failed"``,
        ``"divergences"`` ...); ``message`` says more.
    message : str
        Human-readable description of ``status``.
    log_evidence : float or None
        Log marginal likelihood estimate in nats (variational Laplace: the
        free energy), if the backend provides one.
    mean_unconstrained, cov_unconstrained : numpy.ndarray or None
        Gaussian approximation in the prior's unconstrained coordinates
        (``(n,)``, ``(n, n)``), for backends that produce one.
    diagnostics : dict
        Backend-specific scalars and traces (JSON-serialisable).
    observed : dict or None
        ``{"values": (C, P) array, "coord": "freq" or "time", "coord_values":
        (P,), "channels": [...], "units": str, "transform": "log" or None}``.
    predictive : numpy.ndarray or None
        Posterior predictive draws in data units, shape ``(n_chains, n_draws, C, P)``.
    """

    names: tuple[str, ...]
    draws: np.ndarray
    backend: str
    status: str = "converged"
    message: str = ""
    log_evidence: float | None = None
    mean_unconstrained: np.ndarray | None = None
    cov_unconstrained: np.ndarray | None = None
    diagnostics: dict = field(default_factory=dict)
    observed: dict | None = None
    predictive: np.ndarray | None = None

    def __post_init__(self):
        d = np.asarray(self.draws, dtype=float)
        if d.ndim != 3 or d.shape[-1] != len(self.names):
            raise ValueError(
                f"draws must have shape (n_chains, n_draws, {len(self.names)}) for names {list(self.names)}, "
                f"got {d.shape}"
            )
        object.__setattr__(self, "draws", d)

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    @property
    def mean(self) -> np.ndarray:
        """Posterior mean in natural units, ``(n_params,)``."""
        return self.draws.reshape(-1, len(self.names)).mean(0)

    @property
    def sd(self) -> np.ndarray:
        """Posterior standard deviation in natural units, ``(n_params,)``."""
        return self.draws.reshape(-1, len(self.names)).std(0, ddof=1)

    def quantile(self, q: float) -> np.ndarray:
        """Posterior quantile ``q`` in natural units, ``(n_params,)``."""
        return np.quantile(self.draws.reshape(-1, len(self.names)), q, axis=0)

    def summary(self) -> dict:
        """JSON-ready summary: per parameter mean, sd, 5 % and 95 % quantiles (natural units)."""
        q05, q95 = self.quantile(0.05), self.quantile(0.95)
        params = {
            n: {"mean": float(m), "sd": float(s), "q05": float(a), "q95": float(b)}
            for n, m, s, a, b in zip(self.names, self.mean, self.sd, q05, q95)
        }
        out = {
            "backend": self.backend,
            "status": self.status,
            "message": self.message,
            "parameters": params,
            "log_evidence": None if self.log_evidence is None else float(self.log_evidence),
            "diagnostics": self.diagnostics,
        }
        return out

    def to_arviz(self):
        """Convert to :class:`arviz.InferenceData` (ArviZ 0.23 schema).

        Groups: ``posterior`` (one variable per parameter, dims chain/draw),
        ``observed_data`` and ``posterior_predictive`` (variable ``y`` with
        dims ``channel`` and ``freq`` in Hz or ``time`` in s) when available.
        Backend status and evidence travel as attributes.
        """
        import arviz as az

        posterior = {n: self.draws[..., i] for i, n in enumerate(self.names)}
        kwargs = {}
        coords = {}
        dims = {}
        if self.observed is not None:
            coord = self.observed["coord"]
            coords = {"channel": list(self.observed["channels"]), coord: np.asarray(self.observed["coord_values"])}
            dims = {"y": ["channel", coord]}
            kwargs["observed_data"] = {"y": np.asarray(self.observed["values"])}
            if self.predictive is not None:
                kwargs["posterior_predictive"] = {"y": np.asarray(self.predictive)}
        attrs = {
            "backend": self.backend,
            "status": self.status,
            "message": self.message,
            "log_evidence": float("nan") if self.log_evidence is None else float(self.log_evidence),
            "inference_library": "jrinfer",
        }
        if self.observed is not None:
            attrs["data_units"] = str(self.observed.get("units", ""))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            idata = az.from_dict(posterior=posterior, coords=coords, dims=dims, **kwargs)
        idata.posterior.attrs.update(attrs)
        return idata

    def to_netcdf(self, path, *, overwrite: bool = False) -> Path:
        """Write :meth:`to_arviz` to a netCDF file (refuses to overwrite unless asked)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        tmp = path.with_name(path.name + ".tmp")
        self.to_arviz().to_netcdf(str(tmp))
        os.replace(tmp, path)
        return path

    def __repr__(self) -> str:
        lines = [f"Posterior(backend={self.backend!r}, status={self.status!r}, draws={self.draws.shape[:2]})"]
        if self.log_evidence is not None and math.isfinite(self.log_evidence):
            lines.append(f"  log evidence: {self.log_evidence:.3f} nats")
        for n, m, s in zip(self.names, self.mean, self.sd):
            lines.append(f"  {n:>16s}: {m:.4g} ± {s:.3g}")
        return "\n".join(lines)
