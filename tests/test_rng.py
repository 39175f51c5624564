"""The counter-based noise generator: distribution, independence, determinism."""

import numpy as np
import pytest
import scipy.stats
import torch

from jrinfer import _rng


def test_mix64_matches_uint64_reference():
    x = np.random.default_rng(0).integers(0, 2**63, 5000, dtype=np.uint64) * np.uint64(3)
    want = np.array([_rng._mix64_int(int(v)) for v in x], dtype=np.uint64)
    got = _rng._mix64(torch.from_numpy(x.view(np.int64))).numpy().view(np.uint64)
    assert np.array_equal(got, want)


def test_gaussian_draws_are_standard_normal():
    z = _rng.gaussian(_rng.node_keys(123, 200), 0, 500, 1).numpy().ravel()  # 1e5 draws
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert abs(z.var() - 1) < 4 * np.sqrt(2 / z.size)


def test_uniform_draws_have_unit_variance():
    u = _rng.uniform(_rng.node_keys(9, 100), 0, 1000, 1).numpy().ravel()
    assert scipy.stats.kstest(u, "uniform", args=(-np.sqrt(3), 2 * np.sqrt(3))).pvalue > 1e-3


def test_streams_are_uncorrelated_across_nodes_steps_and_channels():
    keys = _rng.node_keys(5, 64)
    a = _rng.gaussian(keys, 0, 4000, 0).numpy()
    b = _rng.gaussian(keys, 0, 4000, 1).numpy()
    n = a.size
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 4 / np.sqrt(n)  # channels
    lag = np.mean(a[1:] * a[:-1])
    assert abs(lag) < 4 / np.sqrt(n)  # consecutive steps
    c = np.corrcoef(a.T)  # nodes
    off = c[~np.eye(64, dtype=bool)]
    assert np.abs(off).max() < 5 / np.sqrt(4000)


def test_blocks_are_consistent_and_seeds_differ():
    keys = _rng.node_keys(1, 10)
    whole = _rng.gaussian(keys, 0, 100, 1)
    parts = torch.cat([_rng.gaussian(keys, 0, 40, 1), _rng.gaussian(keys, 40, 60, 1)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, _rng.gaussian(_rng.node_keys(2, 10), 0, 100, 1))


@pytest.mark.parametrize("seed", [-1, 1.5, "3"])
def test_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed"):
        _rng.seed_to_int(seed)
