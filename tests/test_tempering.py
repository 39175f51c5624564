"""Tempered SMC from a reference density (jrinfer/backends/_tempering.py) against closed-form answers."""

import math

import torch

from jrinfer.backends._tempering import tempered_smc

F64 = torch.float64


def _gaussian(mean, sd, log_z=0.0):
    """Log density of independent N(mean, sd^2) coordinates times exp(log_z) (an unnormalised target)."""
    mean, sd = torch.as_tensor(mean, dtype=F64), torch.as_tensor(sd, dtype=F64)

    def log_p(z):
        return log_z + (-0.5 * ((z - mean) / sd) ** 2 - torch.log(sd) - 0.5 * math.log(2 * math.pi)).sum(-1)

    return log_p


def test_a_wide_reference_reaches_a_narrow_offset_target_and_its_normaliser():
    """Reference N(0, 3^2) in 4 dimensions, target 7.5 x N(mu, 0.1^2) (posterior 30 times narrower, 1-2.5 reference
    sds off): means, sds and log evidence (log 7.5 = 2.015) come out; a pure function of the seed."""
    d, n = 4, 2000
    mu = torch.tensor([3.0, -2.0, 7.0, 0.5], dtype=F64)
    ref = _gaussian(torch.zeros(d), 3.0 * torch.ones(d))
    target = _gaussian(mu, 0.1 * torch.ones(d), log_z=math.log(7.5))
    z0 = 3.0 * torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(0))
    z, info = tempered_smc(z0, ref, target, seed=1)
    assert info["reached_target"] and info["beta"] == 1.0 and info["failure"] is None
    # Monte-Carlo errors with 2000 correlated particles: a mean to ~0.01 sd, an sd to a few %
    assert torch.allclose(z.mean(0), mu, atol=0.01), z.mean(0)
    assert torch.allclose(z.std(0), 0.1 * torch.ones(d, dtype=F64), rtol=0.08), z.std(0)
    assert abs(info["log_evidence"] - math.log(7.5)) < 0.2, info["log_evidence"]
    assert info["n_unique"] > 0.9 * n and info["final_moved_fraction"] >= 0.9
    assert info["n_evaluations"] == n * (1 + sum(s["moves"] for s in info["stages"]))
    betas = [s["beta"] for s in info["stages"]]
    assert betas == sorted(betas) and betas[-1] == 1.0 and len(betas) >= 3
    z2, info2 = tempered_smc(z0, ref, target, seed=1)
    assert torch.equal(z, z2) and info2["log_evidence"] == info["log_evidence"]


def test_two_modes_keep_their_weights():
    """A target with two well separated modes of weights 0.3 / 0.7 (the reference covers both): the particles split
    0.3 / 0.7, as tempering is meant to keep (no move crosses between the modes at beta = 1)."""
    d, n = 2, 3000
    ref = _gaussian(torch.zeros(d), 4.0 * torch.ones(d))
    a = _gaussian(torch.tensor([-4.0, 0.0]), 0.3 * torch.ones(d), log_z=math.log(0.3))
    b = _gaussian(torch.tensor([4.0, 0.0]), 0.3 * torch.ones(d), log_z=math.log(0.7))
    z0 = 4.0 * torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(2))
    z, info = tempered_smc(z0, ref, lambda z: torch.logaddexp(a(z), b(z)), seed=3)
    share = float((z[:, 0] > 0).double().mean())
    assert info["reached_target"] and abs(share - 0.7) < 0.05, share
    assert abs(info["log_evidence"]) < 0.15, info["log_evidence"]  # the mixture integrates to 1


def test_a_target_the_reference_misses_stops_the_bridge_with_the_reason():
    """Only draws beyond 3.5 reference sds have a finite target (about 5 in 20,000): too few survive the first
    reweighting, and the bridge says so instead of returning them as a posterior."""
    n = 400
    ref = _gaussian(torch.zeros(1), torch.ones(1))
    target = lambda z: torch.where(z[:, 0] > 3.5, torch.zeros(z.shape[0], dtype=F64),  # noqa: E731
                                   torch.full((z.shape[0],), -math.inf, dtype=F64))
    z0 = torch.randn(n, 1, dtype=F64, generator=torch.Generator().manual_seed(4))
    z, info = tempered_smc(z0, ref, target, seed=5)
    assert not info["reached_target"] and info["log_evidence"] is None and info["beta"] == 0.0
    assert "particles have a finite target" in info["failure"] and z.shape == (n, 1)
