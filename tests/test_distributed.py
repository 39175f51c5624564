"""Scale-out on Dask (jrinfer.scale, jrinfer._chunks): same results as the local loop, faults, resume.

One module-scoped ``LocalCluster`` of 2 worker processes (1 thread each) is
shared by every test that needs it; the fits are small variational Laplace
fits of synthetic spectra (20 frequencies).
"""

import csv
import json
import math
import operator
import os
import threading
import time

import numpy as np
import pytest
import torch

from jrinfer import InverseProblem, SpectrumData, SpectrumObservation, fit_many, simulate_many
from jrinfer._chunks import chunk_seed, map_chunks, task_key
from jrinfer.backends.laplace import VariationalLaplace
from jrinfer.cli import main

F64 = torch.float64
distributed = pytest.importorskip("distributed")


# --------------------------------------------------------------------------- #
# fixtures
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def client():
    from jrinfer.scale import dask_client

    c = dask_client(n_workers=2)
    c.wait_for_workers(2, timeout=120)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()


def _synthetic(seed: int, p_mean: float = 60.0):
    """A stable-regime JR spectrum (20 frequencies) with 1/f and floor, drawn from the observation model."""
    freqs = torch.arange(2.0, 40.01, 2.0, dtype=F64)
    obs = SpectrumObservation()
    template = SpectrumData.from_arrays(freqs, torch.ones(1, freqs.numel(), dtype=F64), units="uV^2/Hz", n_segments=20)
    truth = {
        "p_mean": torch.tensor(p_mean, dtype=F64),
        "p_std": torch.tensor(1.0, dtype=F64),
        "gain": torch.tensor(3e-3, dtype=F64),
        "ap_amplitude": torch.tensor(2.0, dtype=F64),
        "ap_exponent": torch.tensor(1.2, dtype=F64),
        "floor": torch.tensor(0.02, dtype=F64),
        "log_precision": torch.tensor(math.log(20.0), dtype=F64),
    }
    y = obs.sample(obs.predict(truth, template), truth, template, torch.Generator().manual_seed(seed))
    return freqs, y


def _write_spectrum(path, seed, p_mean=60.0):
    freqs, y = _synthetic(seed, p_mean)
    np.savetxt(path, np.column_stack([freqs.numpy(), y[0].numpy()]), delimiter=",", header="freq,power", comments="")
    return path


def _problem(seed, p_mean=60.0):
    freqs, y = _synthetic(seed, p_mean)
    return InverseProblem(SpectrumObservation(), None, SpectrumData.from_arrays(freqs, y, units="uV^2/Hz", n_segments=20))


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- #
# map_chunks and simulate_many
# --------------------------------------------------------------------------- #
def test_workers_import_this_checkout(client):
    import jrinfer

    files = client.run(lambda: __import__("jrinfer").__file__)
    assert set(files.values()) == {jrinfer.__file__}


def test_map_chunks_on_dask_keeps_chunk_order(client):
    args = [(k, 3) for k in range(7)]
    assert map_chunks(operator.pow, args, client=client, progress=False) == [k**3 for k in range(7)]


def test_map_chunks_passes_on_a_chunk_error(client):
    with pytest.raises(ZeroDivisionError):
        map_chunks(operator.truediv, [(1, 1), (1, 0), (2, 1)], client=client, progress=False, retries=0)


def test_task_keys_are_deterministic_and_content_based():
    a = task_key("x", operator.add, (torch.arange(4.0), 1), 0)
    assert a == task_key("x", operator.add, (torch.arange(4.0), 1), 0)
    assert a != task_key("x", operator.add, (torch.arange(4.0) + 1, 1), 0)
    with pytest.raises(ValueError, match="retries"):
        map_chunks(operator.add, [(1, 2)], retries=-1)


def _draws(n):
    g = torch.Generator().manual_seed(11)
    return {
        "p_mean": 60.0 + 80.0 * torch.rand(n, generator=g, dtype=F64),
        "C": 100.0 + 60.0 * torch.rand(n, generator=g, dtype=F64),
        "p_std": 30.0,
    }


SIM = dict(duration=2.0, transient=0.5, segment=1.0, chunk_size=4, root_seed=5, progress=False)


@pytest.fixture(scope="module")
def local_training_set():
    return simulate_many(_draws(10), **SIM)


def test_simulate_many_chunks_are_seeded_from_the_root_seed(local_training_set):
    """Chunk i is the model's own simulation of its parameter sets with chunk_seed(root, i)."""
    from jrinfer import JansenRit

    params = _draws(10)
    ref = JansenRit(p_mean=params["p_mean"][4:8], C=params["C"][4:8], p_std=30.0).simulated_psd(
        2.0, 1e-4, segment=1.0, record_every=10, transient=0.5, seed=chunk_seed(5, 1), initial_state="equilibrium"
    )
    assert torch.equal(local_training_set.psd[4:8], ref.psd)
    assert local_training_set.psd.shape == (10, ref.freqs.numel())
    assert not bool(local_training_set.diverged.any())
    # another root seed gives another training set
    other = simulate_many(_draws(10), **{**SIM, "root_seed": 6})
    assert not torch.equal(other.psd, local_training_set.psd)


def test_simulate_many_bit_identical_with_2_and_1_workers(client, local_training_set):
    import dask

    with distributed.get_task_stream(client) as stream:
        two = simulate_many(_draws(10), client=client, **SIM)
    assert torch.equal(two.psd, local_training_set.psd)
    assert torch.equal(two.diverged, local_training_set.diverged)
    assert len(stream.data) == 3  # 10 sets in chunks of 4
    # every chunk on one worker (annotations reach client.submit)
    first = sorted(client.scheduler_info()["workers"])[0]
    with distributed.get_task_stream(client) as stream, dask.annotate(workers=[first], allow_other_workers=False):
        one = simulate_many(_draws(10), client=client, **SIM)
    assert {t["worker"] for t in stream.data} == {first}
    assert torch.equal(one.psd, local_training_set.psd)


@pytest.mark.parametrize(
    "params, match",
    [
        ({}, "params"),
        ({"p_mean": [60.0, 70.0], "C": [1.0, 2.0, 3.0]}, "length"),
        ({"nope": [1.0]}, "unknown"),
        ({"p_mean": 60.0}, "1-D"),
        ({"p_mean": [60.0, float("nan")]}, "p_mean"),
    ],
)
def test_simulate_many_refuses_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        simulate_many(params, progress=False)
