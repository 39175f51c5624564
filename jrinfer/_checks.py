"""Input validation helpers: every error names the argument, the expectation and the value."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        if x.dim() == 0:
            return repr(x.item())
        if x.numel() <= 6:
            return f"tensor {x.detach().cpu().tolist()}"
        return f"tensor of shape {tuple(x.shape)}"
    return repr(x)


def as_float_tensor(name: str, value) -> torch.Tensor:
    """Convert ``value`` to a float64 tensor, raising a named error on failure."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise ValueError(f"{name} must be real, got a complex tensor")
        return value.to(torch.float64)
    if isinstance(value, (bool,)) or isinstance(value, str):
        raise ValueError(f"{name} must be a number or a float tensor, got {value!r}")
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a number or an array of numbers, got {value!r}") from err


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinity."""
    bad = ~torch.isfinite(x.detach())
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite, got {_describe(x)} (contains NaN or inf)")


def check_positive(name: str, x: torch.Tensor, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless every element of ``x`` is > 0 (or >= 0)."""
    check_finite(name, x)
    bad = (x.detach() < 0) if allow_zero else (x.detach() <= 0)
    if bool(bad.any()):
        rel = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {rel}, got {_describe(x)}")


def check_scalar(name: str, value, *, positive: bool = False, allow_zero: bool = False) -> float:
    """Validate a plain real scalar and return it as a float."""
    if isinstance(value, bool) or isinstance(value, str):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got {_describe(value)}")
        value = value.item()
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real number, got {value!r}") from err
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and (out < 0 if allow_zero else out <= 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return out


def check_option(name: str, value, allowed: Iterable) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        import difflib

        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(a) for a in allowed], n=1)
            if close:
                hint = f" Did you mean {close[0]!r}?"
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.{hint}")


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Validate a plain integer (not a bool) within ``[minimum, maximum]`` and return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
        except ImportError:  # pragma: no cover
            pass
    if isinstance(value, bool) or not isinstance(value, int):
        bounds = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be an int{bounds}, got {type(value).__name__}: {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int <= {maximum}, got {value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """Validate a plain bool and return it."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value
