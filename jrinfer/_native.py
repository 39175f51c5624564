"""Compiled simulation backend (no gradients).

A small C kernel (``_native_kernel.c``, next to this file) integrates the
Jansen-Rit equations with exactly the schemes, noise and recording convention
of the torch reference :func:`jrinfer._integrate.simulate_flat`; the noise is
the counter-based generator of :mod:`jrinfer._rng`, computed inside the kernel,
so the same seed gives the same trajectories (to rounding) in both backends.

The kernel is compiled on first use with the system C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``) and cached in
``$JRINFER_CACHE_DIR``, else ``$XDG_CACHE_HOME/jrinfer``, else
``~/.cache/jrinfer``, under a name keyed by a hash of the source, the flags,
the compiler's version and the CPU; it is loaded with :mod:`ctypes`.
Importing this module compiles nothing. Without a working compiler
:func:`available` is False and :func:`unavailable_reason` says why; callers
fall back to the torch path.

Why C and not numba: the hot loop is three ``exp`` per drift evaluation plus,
for the noise, a 64-bit hash, ``log``, ``sqrt`` and ``cos`` per node-step.
They only run fast when vectorised across nodes. numba from PyPI has no
vector math library (its SVML support needs a patched LLVM) and reached only
~2.7x the plain NumPy loop on the reference machine; the C kernel, with its
own inline exp/log/cos (about 1 ulp, vectorised by any compiler, no
``-ffast-math``), reaches ~6x per core and ~11x on two cores (see
``benchmarks/RESULTS.md``).

Threads: the batch is split into tiles of nodes run by ``torch.get_num_threads()``
worker threads. Every node goes through the same vector code whatever its
position, the batch size or the thread count, so results are independent of
all three.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from jrinfer import _rng

__all__ = ["available", "unavailable_reason", "simulate_flat_native"]

_SOURCE = Path(__file__).with_name("_native_kernel.c")
# Bump when the C interface changes, so stale cached objects are never loaded.
_ABI = 4
# Flag sets tried in order. No -ffast-math: the kernel's own exp/log/cos
# depend on IEEE rounding (and -ffast-math would make gcc < 13 link
# crtfastmath.o, turning on flush-to-zero for the whole Python process).
# -fno-math-errno lets sqrt vectorise; -ffp-contract=fast allows FMA.
_BASE_FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-fPIC")
_COMPILE_FLAGS = (
    (*_BASE_FLAGS, "-march=native", "-fopenmp-simd"),
    (*_BASE_FLAGS, "-fopenmp-simd"),
    ("-O2", "-fPIC"),
)
_LINK_FLAGS = ("-shared", "-lm", "-lpthread")
# Nodes per tile = 8 * _LANES_PER_TILE (fewer when that leaves threads idle).
_LANES_PER_TILE = 4
# Node-steps per kernel call: long runs are cut into calls of about this size
# (~0.3 s each) so that Ctrl-C interrupts them; results are identical.
_CHUNK_NODE_STEPS = 50_000_000

_METHOD_CODE = {"euler": 0, "heun": 1, "rk4": 2}
_NOISE_CODE = {"white": 0, "jr1995_gaussian": 1, "jr1995_uniform": 2}
# Rows of the parameter matrix; must match the enum in _native_kernel.c.
_PAR_ROWS = 19

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason: str | None = None
_tried = False


def _cache_dir() -> Path:
    env = os.environ.get("JRINFER_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "jrinfer"
    return Path.home() / ".cache" / "jrinfer"


def _find_compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: a shared cache on a heterogeneous
    cluster must not hand an AVX-512 object to a machine without it."""
    sig = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    sig.append(line.strip())
                    if len(sig) >= 4:
                        break
    except OSError:
        pass
    return "\n".join(sig)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _build() -> ctypes.CDLL:
    """Compile (or reuse the cached) kernel and load it. Raises RuntimeError."""
    if sys.platform == "win32":
        raise RuntimeError("the native kernel is not supported on Windows")
    cc = _find_compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC, or install cc/gcc/clang)")
    try:
        version = _run([cc, "--version"]).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"cannot run the C compiler {cc!r}: {exc}") from exc
    source = _SOURCE.read_bytes()
    cache = _cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / f"jrinfer-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
        cache.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in _COMPILE_FLAGS:
        key = hashlib.sha256(
            b"\0".join(
                [
                    source,
                    repr((_ABI, flags, _LINK_FLAGS)).encode(),
                    cc.encode(),
                    version.encode(),
                    _cpu_signature().encode(),
                ]
            )
        ).hexdigest()[:20]
        target = cache / f"jr_kernel_{key}.so"
        if not target.exists():
            fd, tmp_obj = tempfile.mkstemp(prefix=".jr_tmp_", suffix=".o", dir=cache)
            os.close(fd)
            fd, tmp_so = tempfile.mkstemp(prefix=".jr_tmp_", suffix=".so", dir=cache)
            os.close(fd)
            try:
                res = _run([cc, *flags, "-c", str(_SOURCE), "-o", tmp_obj])
                if res.returncode == 0:
                    res = _run([cc, tmp_obj, "-o", tmp_so, *_LINK_FLAGS])
                if res.returncode != 0:
                    errors.append(f"{cc} {' '.join(flags)}: {res.stderr.strip()[-2000:]}")
                    continue
                os.chmod(tmp_so, 0o755)
                os.replace(tmp_so, target)  # atomic: readers see all or nothing
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(f"{cc} {' '.join(flags)}: {exc}")
                continue
            finally:
                for tmp in (tmp_obj, tmp_so):
                    try:
                        os.unlink(tmp)
                    except FileNotFoundError:
                        pass
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as exc:
            errors.append(f"loading {target}: {exc}")
            continue
        _declare(lib)
        return lib
    raise RuntimeError("could not build the native kernel:\n" + "\n".join(errors))


def _declare(lib: ctypes.CDLL) -> None:
    dp = ctypes.POINTER(ctypes.c_double)
    i64, c_int = ctypes.c_int64, ctypes.c_int
    lib.jr_simulate.restype = c_int
    lib.jr_simulate.argtypes = [
        i64,  # n_nodes
        dp,  # par (19 x N)
        dp,  # y_init (N x 6)
        i64,  # n_transient
        i64,  # n_steps
        i64,  # i_begin (global step index)
        i64,  # i_end
        ctypes.c_double,  # dt
        i64,  # record_every
        c_int,  # method
        c_int,  # noise kind
        c_int,  # channel mask
        ctypes.c_uint64,  # mix64(seed)
        c_int,  # has_pulse
        dp,  # v_out (N x n_rec)
        dp,  # y_out (N x 6)
        c_int,  # threads
        c_int,  # lanes per tile
        ctypes.POINTER(ctypes.c_int64),  # noise_node (N) or NULL
    ]
    lib.jr_rk4_sens.restype = c_int
    lib.jr_rk4_sens.argtypes = [
        i64,  # n_nodes
        dp,  # par (16 x N)
        c_int,  # has_pulse
        dp,  # y_init (N x 6)
        i64,  # n_transient
        i64,  # n_steps
        ctypes.c_double,  # dt
        i64,  # record_every
        dp,  # v_out (N x n_rec)
        dp,  # dv_out (N x n_rec x 22)
        dp,  # y_out (N x 6)
    ]
    lib.jr_random_bits.restype = None
    lib.jr_random_bits.argtypes = [ctypes.c_uint64, i64, i64, i64, c_int, ctypes.POINTER(ctypes.c_uint64)]
    lib.jr_math.restype = None
    lib.jr_math.argtypes = [c_int, i64, dp, dp]


def _load() -> ctypes.CDLL:
    global _lib, _reason, _tried
    if _lib is not None:
        return _lib
    with _lock:
        if not _tried:
            _tried = True
            try:
                _lib = _build()
            except Exception as exc:  # noqa: BLE001 - any failure means "not available"
                _reason = f"{type(exc).__name__}: {exc}"
    if _lib is None:
        raise RuntimeError(f"native kernel unavailable: {_reason}")
    return _lib


def available() -> bool:
    """Whether the compiled kernel can be used here (builds it on first call)."""
    try:
        _load()
    except RuntimeError:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why :func:`available` is False; None when the kernel is available.

    Triggers the build (once per process) if it has not been attempted yet.
    """
    if not _tried:
        available()
    return _reason


def _flat(x, n: int) -> np.ndarray:
    # dtype given up front: torch.as_tensor(0.005) alone would round to float32.
    t = (x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)).to(
        device="cpu", dtype=torch.float64
    )
    return np.ascontiguousarray(torch.broadcast_to(t.reshape(-1) if t.dim() > 1 else t, (n,)).numpy())


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


def simulate_flat_native(
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
    pulse,
    noise_node: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compiled counterpart of :func:`jrinfer._integrate.simulate_flat`.

    Same arguments and return values (``v``: ``(N, n_steps // record_every)``,
    ``y_final``: ``(N, 6)``, float64, no autograd graph). Raises RuntimeError
    when the kernel is unavailable. ``noise_node`` (int64, ``(N,)``) makes node
    ``i`` use the noise stream of node ``noise_node[i]`` (common random
    numbers for perturbed copies of a parameter set); default: its own.
    """
    if method not in _METHOD_CODE:
        raise ValueError(f"method must be one of {tuple(_METHOD_CODE)}, got {method!r}")
    if noise not in _NOISE_CODE:
        raise ValueError(f"noise must be one of {tuple(_NOISE_CODE)}, got {noise!r}")
    n_transient, n_steps, record_every = int(n_transient), int(n_steps), int(record_every)
    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    if n_transient < 0 or n_steps < 0:
        raise ValueError("n_transient and n_steps must be non-negative")
    lib = _load()

    y0 = y_init.detach() if isinstance(y_init, torch.Tensor) else torch.as_tensor(y_init, dtype=torch.float64)
    y0 = y0.to(device="cpu", dtype=torch.float64)
    n_nodes = y0.shape[0]
    n_rec = n_steps // record_every
    y0 = np.ascontiguousarray(y0.reshape(n_nodes, 6).numpy())
    v = np.empty((n_nodes, n_rec), dtype=np.float64)
    y_out = np.empty((n_nodes, 6), dtype=np.float64)
    if n_nodes == 0:
        return torch.from_numpy(v), torch.from_numpy(y_out)

    f = {k: _flat(p[k], n_nodes) for k in ("A", "B", "a", "b", "C1", "C2", "C3", "C4", "e0", "v0", "r", "p_mean", "p_std")}
    aa = f["A"] * f["a"]
    bb = f["B"] * f["b"]
    noisy = bool((f["p_std"] != 0).any()) and any(channels)
    if noise == "white":
        # Same operation order as the torch path: (p_std * sqrt(dt)) * gain.
        base = f["p_std"] * float(dt) ** 0.5
        scales = [base * aa, base * aa, base * bb]
    else:
        scales = [f["p_std"]] * 3
    zeros = np.zeros(n_nodes)
    scales = [s if on else zeros for s, on in zip(scales, channels)]
    ch_mask = sum(1 << c for c, on in enumerate(channels) if on) if noisy else 0
    noise_code = _NOISE_CODE[noise]
    if method == "rk4" and noise == "white":
        if noisy:
            raise ValueError("rk4 is a deterministic scheme: use it with jr1995_* noise or p_std = 0")
        noise_code = _NOISE_CODE["jr1995_gaussian"]  # no noise at all: same scheme
    if pulse is None:
        pq, pw, pn, po = zeros, np.ones(n_nodes), zeros, zeros
    else:
        pq, pw, pn, po = (_flat(x, n_nodes) for x in (pulse.q, pulse.w, pulse.n, pulse.onset))
    par = np.ascontiguousarray(
        np.stack(
            [aa, bb, f["a"], f["b"], f["C1"], f["C2"], f["C3"], f["C4"], f["e0"], f["v0"], f["r"], f["p_mean"], *scales, pq, pw, pn, po]
        )
    )
    assert par.shape == (_PAR_ROWS, n_nodes)
    seed_mix = _rng._mix64_int(int(seed))
    nn_ptr = None
    if noise_node is not None:
        noise_node = np.ascontiguousarray(noise_node, dtype=np.int64)
        if noise_node.shape != (n_nodes,):
            raise ValueError(f"noise_node must have shape ({n_nodes},), got {noise_node.shape}")
        nn_ptr = noise_node.ctypes.data_as(ctypes.POINTER(ctypes.c_int64))
    n_threads = max(1, torch.get_num_threads())
    n_total = n_transient + n_steps
    chunk = max(1, _CHUNK_NODE_STEPS // n_nodes)
    y_out[:] = y0  # the kernel updates the state in place (each tile reads its nodes before writing them)
    for start in range(0, n_total, chunk):
        rc = lib.jr_simulate(
            n_nodes,
            _ptr(par),
            _ptr(y_out),
            n_transient,
            n_steps,
            start,
            min(n_total, start + chunk),
            float(dt),
            record_every,
            _METHOD_CODE[method],
            noise_code,
            ch_mask,
            seed_mix,
            int(pulse is not None),
            _ptr(v),
            _ptr(y_out),
            n_threads,
            _LANES_PER_TILE,
            nn_ptr,
        )
        if rc != 0:
            raise RuntimeError(f"native kernel failed with code {rc} (method={method!r}, noise={noise!r})")
    return torch.from_numpy(v), torch.from_numpy(y_out)


def _random_bits(seed: int, node: int, step0: int, n: int, channel: int) -> np.ndarray:
    """Kernel's raw ``bits(node, step, channel)`` as uint64 (for tests)."""
    lib = _load()
    out = np.empty(n, dtype=np.uint64)
    lib.jr_random_bits(_rng._mix64_int(int(seed)), node, step0, n, channel, out.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64)))
    return out


def _math(which: str, x) -> np.ndarray:
    """Kernel's inline ``exp``, ``log`` or ``cos2pi`` (cos(2 pi x)) on an array (for tests)."""
    lib = _load()
    xa = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    out = np.empty_like(xa)
    lib.jr_math({"exp": 0, "log": 1, "cos2pi": 2}[which], xa.size, _ptr(xa), _ptr(out))
    return out


#: Columns of the sensitivities computed by :func:`rk4_sensitivities_native`.
SENSITIVITY_COLUMNS = (
    "A", "B", "a", "b", "C1", "C2", "C3", "C4", "e0", "v0", "r", "p_mean",
    "q", "w", "n", "onset", "y0", "y1", "y2", "y3", "y4", "y5",
)


def rk4_sensitivities_native(
    p: dict[str, torch.Tensor], y_init: torch.Tensor, pulse, *, n_transient: int, n_steps: int, dt: float,
    record_every: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic RK4 (``p_std`` ignored) with forward sensitivities, compiled.

    Parameters
    ----------
    p : dict of str to torch.Tensor
        Flat JR parameters ``(N,)``: A, B, a, b, C1..C4, e0, v0, r, p_mean.
    y_init : torch.Tensor
        Initial states ``(N, 6)``.
    pulse : PulseInput or None
        Flat pulse parameters ``(N,)`` (q, w, n, onset).

    Returns
    -------
    v : torch.Tensor
        ``y1 - y2`` in mV, ``(N, n_steps // record_every)``, as
        :func:`jrinfer._integrate.simulate_flat` with ``method="rk4"``.
    dv : torch.Tensor
        ``dv/dtheta``, ``(N, n_rec, 22)`` in the order of
        :data:`SENSITIVITY_COLUMNS` (the derivative of the discrete RK4
        solution; pulse columns are zero without a pulse).
    y_final : torch.Tensor
        State after the last step, ``(N, 6)``.
    """
    n_transient, n_steps, record_every = int(n_transient), int(n_steps), int(record_every)
    if record_every < 1 or n_transient < 0 or n_steps < 0:
        raise ValueError("need record_every >= 1 and non-negative n_transient, n_steps")
    lib = _load()
    y0 = y_init.detach().to(device="cpu", dtype=torch.float64)
    n_nodes = y0.shape[0]
    n_rec = n_steps // record_every
    y0 = np.ascontiguousarray(y0.reshape(n_nodes, 6).numpy())
    names = ("A", "B", "a", "b", "C1", "C2", "C3", "C4", "e0", "v0", "r", "p_mean")
    cols = [_flat(p[k], n_nodes) for k in names]
    if pulse is not None:
        cols += [_flat(getattr(pulse, k), n_nodes) for k in ("q", "w", "n", "onset")]
    else:
        cols += [np.zeros(n_nodes), np.ones(n_nodes), np.ones(n_nodes), np.zeros(n_nodes)]
    par = np.ascontiguousarray(np.stack(cols))
    v = np.empty((n_nodes, n_rec), dtype=np.float64)
    dv = np.empty((n_nodes, n_rec, len(SENSITIVITY_COLUMNS)), dtype=np.float64)
    y_out = np.empty((n_nodes, 6), dtype=np.float64)
    rc = lib.jr_rk4_sens(
        n_nodes, _ptr(par), int(pulse is not None), _ptr(y0), n_transient, n_steps, float(dt), record_every,
        _ptr(v), _ptr(dv), _ptr(y_out),
    )
    if rc != 0:
        raise RuntimeError(f"native sensitivity kernel failed with code {rc}")
    return torch.from_numpy(v), torch.from_numpy(dv), torch.from_numpy(y_out)
