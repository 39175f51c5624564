"""Counter-based random numbers shared by every simulator backend.

The noise that drives a simulation is a pure function of ``(seed, node, step,
channel)``: no generator state is carried between steps, so a simulation gives
the same numbers whether it runs in one piece or in blocks, in torch or in the
compiled kernel, on one machine or on a cluster.

Definition (all arithmetic modulo 2**64, shifts logical)::

    mix64(z)   = SplitMix64 finaliser:
                 z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
                 z = (z ^ (z >> 27)) * 0x94D049BB133111EB
                 z ^ (z >> 31)
    key(n)     = mix64(mix64(seed) + n * GOLDEN)          n: flat node index
    bits(n,i,c)= mix64(key(n) + (3 * i + c + 1) * GOLDEN) i: step, c: channel 0..2
    u1 = ((bits >> 32) + 0.5) / 2**32,  u2 = ((bits & 0xFFFFFFFF) + 0.5) / 2**32
    gaussian   = sqrt(-2 log u1) * cos(2 pi u2)           (Box-Muller, one branch)
    uniform    = sqrt(3) * (2 * ((bits >> 11) + 0.5) / 2**53 - 1)   (unit variance)

with GOLDEN = 0x9E3779B97F4A7C15. Channel ``c`` is the PSP block the noise
enters: 0 for the pyramidal-output block (y3), 1 for the external input (y4),
2 for the inhibitory block (y5). The 32-bit uniforms bound Gaussian draws at
about 6.7 standard deviations, far beyond what a simulation of ~10^9
node-steps resolves.
"""

from __future__ import annotations

import torch

GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """Two's-complement int64 value with the same bits as the uint64 ``c``."""
    c &= _MASK64
    return c - (1 << 64) if c >= (1 << 63) else c


def _mix64_int(z: int) -> int:
    """``mix64`` on a Python integer (used for seeds)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """``mix64`` on an int64 tensor holding uint64 bit patterns."""
    # torch's >> on int64 is arithmetic: mask to make it logical.
    z = (z ^ ((z >> 30) & ((1 << 34) - 1))) * _signed(_M1)
    z = (z ^ ((z >> 27) & ((1 << 37) - 1))) * _signed(_M2)
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def seed_to_int(seed: int | None) -> int:
    """Validate a user seed and return it as a non-negative Python int.

    ``None`` draws a fresh seed from the operating system (the simulation is
    then not reproducible, and the seed used is reported on the result).
    """
    if seed is None:
        import secrets

        return secrets.randbits(63)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int or None, got {type(seed).__name__}: {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return seed


def node_keys(seed: int, n_nodes: int) -> torch.Tensor:
    """Per-node stream keys ``key(n)``, int64 tensor of shape ``(n_nodes,)``."""
    base = _signed(_mix64_int(seed))
    n = torch.arange(n_nodes, dtype=torch.int64)
    return _mix64(base + n * _signed(GOLDEN))


def random_bits(keys: torch.Tensor, step0: int, n_steps: int, channel: int) -> torch.Tensor:
    """Raw 64-bit draws for steps ``step0 .. step0 + n_steps - 1``.

    Returns an int64 tensor of shape ``(n_steps, n_nodes)``.
    """
    i = torch.arange(step0, step0 + n_steps, dtype=torch.int64)
    counter = (3 * i + channel + 1) * _signed(GOLDEN)
    return _mix64(keys.unsqueeze(0) + counter.unsqueeze(1))


def gaussian(keys: torch.Tensor, step0: int, n_steps: int, channel: int) -> torch.Tensor:
    """Standard normal draws, float64 tensor of shape ``(n_steps, n_nodes)``."""
    bits = random_bits(keys, step0, n_steps, channel)
    hi = ((bits >> 32) & 0xFFFFFFFF).to(torch.float64)
    lo = (bits & 0xFFFFFFFF).to(torch.float64)
    u1 = (hi + 0.5) * 2.0**-32
    u2 = (lo + 0.5) * 2.0**-32
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * torch.pi) * u2)


def uniform(keys: torch.Tensor, step0: int, n_steps: int, channel: int) -> torch.Tensor:
    """Zero-mean, unit-variance uniform draws, shape ``(n_steps, n_nodes)``."""
    bits = random_bits(keys, step0, n_steps, channel)
    u = (((bits >> 11) & ((1 << 53) - 1)).to(torch.float64) + 0.5) * 2.0**-53
    return 3.0**0.5 * (2.0 * u - 1.0)


def generator(seed) -> torch.Generator:
    """A torch CPU generator from a seed (int or None, see :func:`seed_to_int`) or an existing generator."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(seed_to_int(seed) % (2**63))
