"""Inference back-ends for jrinfer.

Each back-end lives in its own submodule and consumes only an
:class:`~jrinfer.InverseProblem`; back-ends never import each other.
``VariationalLaplace`` (torch only) is re-exported here; back-ends with heavy
dependencies (PyMC, sbi) will be imported from their submodules.
"""

from jrinfer.backends.laplace import VariationalLaplace

__all__ = ["VariationalLaplace"]
