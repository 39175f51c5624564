"""Inference back-ends for jrinfer.

Each back-end lives in its own submodule and is imported explicitly, e.g.
``from jrinfer.backends.laplace import VariationalLaplace``; this package
deliberately imports nothing so that ``import jrinfer`` stays light.
"""
