"""Linear algebra shared by variational Laplace and Bayesian model reduction.

Factorisations of symmetric positive (semi)definite matrices that are robust
to poor scaling, and validation of vectors and covariance matrices with errors
that name the argument.
"""

from __future__ import annotations

import torch

from jrinfer import _checks

_DTYPE = torch.float64

class _SPD:
    """Factorisation of a symmetric positive (semi)definite matrix, robust to poor scaling.

    The matrix is scaled to unit diagonal (Jacobi scaling) before a Cholesky
    factorisation; if that fails an eigendecomposition with eigenvalues clamped
    to a small positive floor is used instead.
    """

    def __init__(self, H: torch.Tensor, nu: float = 0.0):
        H = 0.5 * (H + H.T)
        d = torch.diagonal(H).clamp_min(torch.finfo(_DTYPE).tiny).sqrt()
        Hs = H / d[:, None] / d[None, :]
        if nu:
            Hs = Hs + nu * torch.eye(Hs.shape[0], dtype=_DTYPE)
        self.d = d
        L, info = torch.linalg.cholesky_ex(Hs)
        if int(info) == 0:
            self.L, self.V, self.ev = L, None, None
        else:
            ev, V = torch.linalg.eigh(Hs)
            floor = max(float(ev.abs().max()), 1.0) * 1e3 * torch.finfo(_DTYPE).eps
            self.L, self.V, self.ev = None, V, ev.clamp_min(floor)

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        bs = b / self.d
        if self.L is not None:
            xs = torch.cholesky_solve(bs[:, None], self.L)[:, 0]
        else:
            xs = self.V @ ((self.V.T @ bs) / self.ev)
        return xs / self.d

    def inverse(self) -> torch.Tensor:
        if self.L is not None:
            inv_s = torch.cholesky_inverse(self.L)
        else:
            inv_s = (self.V / self.ev) @ self.V.T
        inv = inv_s / self.d[:, None] / self.d[None, :]
        return 0.5 * (inv + inv.T)

    def logdet(self) -> float:
        ld = 2.0 * torch.log(self.d).sum()
        if self.L is not None:
            ld = ld + 2.0 * torch.log(torch.diagonal(self.L)).sum()
        else:
            ld = ld + torch.log(self.ev).sum()
        return float(ld)


def _check_spd(name: str, C: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """Validate an (n, n) symmetric positive definite matrix; return it symmetrised."""
    if tuple(C.shape) != (n, n):
        raise ValueError(f"{name} must have shape ({n}, {n}) to match {what}, got {tuple(C.shape)}")
    _checks.check_finite(name, C)
    scale = float(C.abs().max()) if C.numel() else 0.0
    asym = float((C - C.T).abs().max()) if C.numel() else 0.0
    if asym > 1e-8 * max(scale, 1e-300):
        raise ValueError(
            f"{name} must be symmetric positive definite; it is not symmetric (max |C - C^T| = {asym:.3g})"
        )
    C = 0.5 * (C + C.T)
    d = torch.diagonal(C)
    if bool((d <= 0).any()):
        raise ValueError(f"{name} must be symmetric positive definite; its diagonal has entries <= 0")
    ds = d.sqrt()
    _, info = torch.linalg.cholesky_ex(C / ds[:, None] / ds[None, :])
    if int(info) != 0:
        ev_min = float(torch.linalg.eigvalsh(C).min())
        raise ValueError(f"{name} must be symmetric positive definite; smallest eigenvalue is {ev_min:.3g}")
    return C


def _check_psd(name: str, C: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """Validate an (n, n) symmetric positive semi-definite matrix (zero variances allowed)."""
    if tuple(C.shape) != (n, n):
        raise ValueError(f"{name} must have shape ({n}, {n}) to match {what}, got {tuple(C.shape)}")
    _checks.check_finite(name, C)
    scale = float(C.abs().max())
    if float((C - C.T).abs().max()) > 1e-8 * max(scale, 1e-300):
        raise ValueError(f"{name} must be symmetric positive semi-definite; it is not symmetric")
    C = 0.5 * (C + C.T)
    ev_min = float(torch.linalg.eigvalsh(C).min())
    if ev_min < -1e-10 * max(scale, 1e-300):
        raise ValueError(f"{name} must be symmetric positive semi-definite; smallest eigenvalue is {ev_min:.3g}")
    return C


def _check_vector(name: str, value, n: int | None = None, what: str = "") -> torch.Tensor:
    x = _checks.as_float_tensor(name, value)
    if x.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(x.shape)}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match {what}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} must not be empty")
    _checks.check_finite(name, x)
    return x

