"""Posterior: summaries, ArviZ conversion and netCDF round trip."""

import numpy as np
import pytest

from jrinfer.posterior import Posterior


def make_posterior(**kw):
    rng = np.random.default_rng(0)
    draws = rng.normal([1.0, 50.0], [0.1, 5.0], size=(2, 500, 2))
    observed = {
        "values": rng.random((1, 5)) + 1,
        "coord": "freq",
        "coord_values": np.arange(5.0) + 2,
        "channels": ["O1"],
        "units": "uV^2/Hz",
    }
    return Posterior(
        names=("A", "p_mean"),
        draws=draws,
        backend="laplace",
        log_evidence=-12.5,
        observed=observed,
        predictive=rng.random((2, 500, 1, 5)),
        **kw,
    )


def test_summary_matches_draws():
    post = make_posterior()
    s = post.summary()
    flat = post.draws.reshape(-1, 2)
    assert s["parameters"]["p_mean"]["mean"] == pytest.approx(flat[:, 1].mean())
    assert s["parameters"]["A"]["q05"] == pytest.approx(np.quantile(flat[:, 0], 0.05))
    assert s["log_evidence"] == -12.5 and s["status"] == "converged"


def test_to_arviz_schema_and_netcdf_roundtrip(tmp_path):
    import arviz as az

    post = make_posterior()
    idata = post.to_arviz()
    assert set(idata.groups()) >= {"posterior", "observed_data", "posterior_predictive"}
    assert idata.posterior["A"].dims == ("chain", "draw")
    assert idata.observed_data["y"].dims == ("channel", "freq")
    assert list(idata.observed_data["freq"].values) == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "channel", "freq")
    assert idata.posterior.attrs["backend"] == "laplace"
    summ = az.summary(idata, kind="stats", round_to="none")
    assert summ.loc["p_mean", "mean"] == pytest.approx(post.mean[1], rel=1e-6)
    path = post.to_netcdf(tmp_path / "posterior.nc")
    back = az.from_netcdf(str(path))
    assert np.allclose(back.posterior["A"].values, post.draws[..., 0])
    with pytest.raises(FileExistsError):
        post.to_netcdf(path)


def test_bad_draw_shape():
    with pytest.raises(ValueError, match="draws must have shape"):
        Posterior(names=("A",), draws=np.zeros((10, 2)), backend="x")
