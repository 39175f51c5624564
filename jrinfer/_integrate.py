"""Time integration of the Jansen-Rit equations (torch reference implementation).

Everything here works on flat batches: every parameter is a float64 tensor of
shape ``(N,)`` and the state is a tuple of six ``(N,)`` tensors. The public
entry point is :meth:`jrinfer.JansenRit.simulate`; this module holds the
schemes so that the compiled kernel in :mod:`jrinfer._native` can be checked
against them line by line.

Schemes (per step of length ``dt``, inputs ``u = (u0, u1, u2)`` in pulses/s)::

    drift f(y, u):
        f0 = y3,  f1 = y4,  f2 = y5
        f3 = A a (S(y1 - y2) + u0)        - 2 a y3 - a^2 y0
        f4 = A a (u1 + C2 S(C1 y0))       - 2 a y4 - a^2 y1
        f5 = B b (C4 S(C3 y0) + u2)       - 2 b y5 - b^2 y2
    deterministic input: u0 = 0, u1 = p_mean + pulse(t), u2 = 0

    "white" noise (an SDE; p_std is an intensity in pulses/s/sqrt(Hz)):
        dW_c = p_std sqrt(dt) xi_c,  G = (A a, A a, B b) for channels c = 0, 1, 2
        euler: y' = y + dt f(y, u(t)) + G dW        (added to y3, y4, y5)
        heun:  z  = y + dt f(y, u(t)) + G dW
               y' = y + dt/2 (f(y, u(t)) + f(z, u(t + dt))) + G dW
    "jr1995_*" noise (Jansen & Rit 1995; p_std in pulses/s, redrawn every step):
        u_c(t) += p_std xi_c held constant over the step, then the
        deterministic scheme (euler, heun or rk4) with that input.

``xi`` comes from :mod:`jrinfer._rng` (Gaussian or uniform, unit variance) at
the global step index ``i`` (transient included) and channel ``c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jrinfer import _rng

METHODS = ("euler", "heun", "rk4")
NOISE_CONVENTIONS = ("white", "jr1995_gaussian", "jr1995_uniform")
# Channels: 0 -> y3 block (input to the pyramidal-output PSP), 1 -> external
# input (y4), 2 -> inhibitory block (y5).
_INPUT_ONLY = (False, True, False)
_ALL = (True, True, True)
# Number of steps whose noise is drawn at once (bounded so a block holds at
# most about 4e6 numbers).
_MAX_BLOCK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class PulseInput:
    """Transient input ``q ((t - onset)/w)^n exp(-(t - onset)/w)`` for ``t > onset``.

    Jansen & Rit (1995) used ``q = 0.5`` pulses/s, ``n = 7``, ``w = 5 ms``,
    which peaks at ``t - onset = n w = 35 ms`` with about 375 pulses/s.

    Parameters
    ----------
    q : float or torch.Tensor
        Amplitude scale in pulses/s, broadcastable to the model's batch shape.
    w : float or torch.Tensor
        Time constant in s (> 0).
    n : float or torch.Tensor
        Shape exponent (dimensionless, >= 0).
    onset : float or torch.Tensor
        Onset time in s, relative to the start of the recording.
    """

    q: float | torch.Tensor = 0.5
    w: float | torch.Tensor = 0.005
    n: float | torch.Tensor = 7.0
    onset: float | torch.Tensor = 0.0

    def __call__(self, t: float | torch.Tensor) -> torch.Tensor:
        """Input in pulses/s at time ``t`` (s); broadcasts over the batch."""
        q, w, n, onset = (torch.as_tensor(x, dtype=torch.float64) for x in (self.q, self.w, self.n, self.onset))
        x = (torch.as_tensor(t, dtype=torch.float64) - onset) / w
        positive = x > 0
        xs = torch.where(positive, x, torch.ones_like(x))
        return torch.where(positive, q * torch.exp(n * torch.log(xs) - xs), torch.zeros_like(x))


def sigmoid(x: torch.Tensor, e0: torch.Tensor, v0: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """JR sigmoid ``2 e0 / (1 + exp(r (v0 - x)))`` in pulses/s, overflow-free."""
    return 2.0 * e0 * torch.sigmoid(r * (x - v0))


def coefficients(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-parameter-set constants of the drift, computed once per simulation."""
    Aa, Bb, a, b, r = p["A"] * p["a"], p["B"] * p["b"], p["a"], p["b"], p["r"]
    two_e0 = 2.0 * p["e0"]
    return {
        "Aa": Aa,
        "Bb": Bb,
        "neg_rv0": -r * p["v0"],
        "r": r,
        "C1r": p["C1"] * r,
        "C3r": p["C3"] * r,
        "k_v": Aa * two_e0,  # A a 2 e0: gain of the pyramidal-output block
        "k_e": Aa * p["C2"] * two_e0,
        "k_i": Bb * p["C4"] * two_e0,
        "neg_2a": -2.0 * a,
        "neg_a2": -a * a,
        "neg_2b": -2.0 * b,
        "neg_b2": -b * b,
    }


def drift(y, drives, c):
    """Right-hand side of the JR equations for flat batches (see module docstring).

    ``drives = (A a u0, A a u1, B b u2)`` are the inputs already multiplied by
    their block gains (``None`` for an absent input); ``c`` comes from
    :func:`coefficients`. Written with fused multiply-adds to keep the number
    of tensor operations per step small (the torch loop is overhead-bound).
    """
    y0, y1, y2, y3, y4, y5 = y
    d0, d1, d2 = drives
    s_v = torch.sigmoid(torch.addcmul(c["neg_rv0"], c["r"], y1 - y2))
    s_e = torch.sigmoid(torch.addcmul(c["neg_rv0"], c["C1r"], y0))
    s_i = torch.sigmoid(torch.addcmul(c["neg_rv0"], c["C3r"], y0))
    f3 = c["k_v"] * s_v if d0 is None else torch.addcmul(d0, c["k_v"], s_v)
    f3 = torch.addcmul(torch.addcmul(f3, c["neg_2a"], y3), c["neg_a2"], y0)
    f4 = torch.addcmul(d1, c["k_e"], s_e)
    f4 = torch.addcmul(torch.addcmul(f4, c["neg_2a"], y4), c["neg_a2"], y1)
    f5 = c["k_i"] * s_i if d2 is None else torch.addcmul(d2, c["k_i"], s_i)
    f5 = torch.addcmul(torch.addcmul(f5, c["neg_2b"], y5), c["neg_b2"], y2)
    return (y3, y4, y5, f3, f4, f5)


def _axpy(y, k, h):
    return tuple(torch.add(yi, ki, alpha=h) for yi, ki in zip(y, k))


def simulate_flat(
    p: dict[str, torch.Tensor],
    y_init: torch.Tensor,
    *,
    n_transient: int,
    n_steps: int,
    dt: float,
    record_every: int,
    method: str,
    noise: str,
    channels: tuple[bool, bool, bool],
    seed: int,
    pulse: PulseInput | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate flat batches in torch (differentiable).

    Parameters
    ----------
    p : dict of str to torch.Tensor
        Flat parameters, each of shape ``(N,)``: A, B, a, b, C1..C4, e0, v0,
        r, p_mean, p_std. Pulse parameters, if any, live in ``pulse`` with
        shapes broadcastable to ``(N,)``.
    y_init : torch.Tensor
        Initial state, shape ``(N, 6)``, mV and mV/s.
    n_transient, n_steps : int
        Steps discarded before recording, and steps recorded.
    record_every : int
        Decimation: ``v`` is stored every ``record_every`` steps.

    Returns
    -------
    v : torch.Tensor
        ``y1 - y2`` in mV, shape ``(N, n_steps // record_every)``; sample ``j``
        is the state at ``t = j * record_every * dt`` after the transient.
    y_final : torch.Tensor
        State after the last step, shape ``(N, 6)``.
    """
    n_nodes = y_init.shape[0]
    c = coefficients(p)
    gains = (c["Aa"], c["Aa"], c["Bb"])
    noisy = bool((p["p_std"] != 0).any()) and any(channels)
    keys = _rng.node_keys(seed, n_nodes) if noisy else None
    draw = _rng.uniform if noise == "jr1995_uniform" else _rng.gaussian
    # white: increments G p_std sqrt(dt) xi added to y3..y5; jr1995: drives G p_std xi held over the step
    step_scale = dt**0.5 if noise == "white" else 1.0
    noise_scale = [g * p["p_std"] * step_scale if on else None for g, on in zip(gains, channels)]
    base_drive = c["Aa"] * p["p_mean"]
    y = tuple(y_init[:, k] for k in range(6))
    n_total = n_transient + n_steps
    n_rec = n_steps // record_every
    records = []
    block = max(1, min(n_total, _MAX_BLOCK_ELEMENTS // max(n_nodes, 1)))

    def pulse_drive(t):
        return c["Aa"] * pulse(t)

    for start in range(0, n_total, block):
        stop = min(n_total, start + block)
        xi = None
        if noisy:
            xi = [draw(keys, start, stop - start, ch) * s_ if s_ is not None else None for ch, s_ in enumerate(noise_scale)]
        for i in range(start, stop):
            rec_step = i - n_transient
            if rec_step >= 0 and rec_step % record_every == 0 and rec_step // record_every < n_rec:
                records.append(y[1] - y[2])
            t = rec_step * dt
            step_noise = [None, None, None] if xi is None else [None if x is None else x[i - start] for x in xi]
            if noise == "white":
                increments, held = step_noise, [None, None, None]
            else:
                increments, held = None, step_noise

            def drives(s_, held=held):
                d1 = base_drive if pulse is None else base_drive + pulse_drive(s_)
                return (held[0], d1 if held[1] is None else d1 + held[1], held[2])

            y = _step(y, drives, t, dt, c, method, increments if noisy else None)
    v = torch.stack(records, dim=-1) if records else torch.zeros((n_nodes, 0), dtype=torch.float64)
    return v, torch.stack(y, dim=-1)


def _add_increments(y, increments):
    if increments is None:
        return y
    y0, y1, y2, y3, y4, y5 = y
    d0, d1, d2 = increments
    return (
        y0,
        y1,
        y2,
        y3 if d0 is None else y3 + d0,
        y4 if d1 is None else y4 + d1,
        y5 if d2 is None else y5 + d2,
    )


def _step(y, drives, t, dt, c, method, increments):
    """One step; ``drives(s)`` gives the gain-multiplied inputs at time ``s`` within the step."""
    if method == "euler":
        return _add_increments(_axpy(y, drift(y, drives(t), c), dt), increments)
    if method == "heun":
        k1 = drift(y, drives(t), c)
        z = _add_increments(_axpy(y, k1, dt), increments)
        k2 = drift(z, drives(t + dt), c)
        return _add_increments(tuple(torch.add(yi, a_ + b_, alpha=0.5 * dt) for yi, a_, b_ in zip(y, k1, k2)), increments)
    # rk4 (deterministic, or jr1995 input held over the step)
    dm = drives(t + 0.5 * dt)
    k1 = drift(y, drives(t), c)
    k2 = drift(_axpy(y, k1, 0.5 * dt), dm, c)
    k3 = drift(_axpy(y, k2, 0.5 * dt), dm, c)
    k4 = drift(_axpy(y, k3, dt), drives(t + dt), c)
    return tuple(
        torch.add(yi, torch.add(torch.add(a1, a4), torch.add(a2, a3), alpha=2.0), alpha=dt / 6.0)
        for yi, a1, a2, a3, a4 in zip(y, k1, k2, k3, k4)
    )
