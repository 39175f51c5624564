"""The worked examples in notebooks/ run top to bottom with nbclient, and their own check cells pass.

The stored copies are executed (every code cell has outputs, figures inline); here each notebook
is run again, figures going to a temporary folder, and must end with its checks passed.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


def execute_notebook(name: str, out: Path, *, small: bool = True, timeout: int = 900) -> str:
    """Run ``notebooks/<name>`` in a fresh kernel; return the text of its stream outputs.

    The stored copy must be executed (outputs in every code cell). ``small`` sets
    ``JRINFER_NOTEBOOK_SMALL=1`` (notebooks that have long parts read it).
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    missing = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and not c.get("outputs")]
    assert not missing, f"{name}: the stored copy is not executed (code cells {missing} have no outputs)"
    env = {"JRINFER_NOTEBOOK_OUT": str(out), "MPLBACKEND": "Agg", "JRINFER_NOTEBOOK_SMALL": "1" if small else "0"}
    old = {k: os.environ.get(k) for k in (*env, "PYTHONPATH")}
    os.environ.update(env, PYTHONPATH=os.pathsep.join([str(REPO)] + ([old["PYTHONPATH"]] if old["PYTHONPATH"] else [])))
    try:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(REPO)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "stream"
    )
    assert "all checks passed" in text, f"{name}: its check cell did not pass:\n{text[-3000:]}"
    assert not list(NOTEBOOKS.glob("*.png")), "figures must not be written into the repository"
    return text


def _assert_pngs(out: Path, names):
    for name in names:
        path = out / name
        assert path.is_file(), f"{name} was not written to {out}"
        assert path.stat().st_size > 1000, f"{name} is (nearly) empty"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"


@pytest.mark.slow
def test_model_tour(tmp_path):
    text = execute_notebook("model_tour.ipynb", tmp_path)
    _assert_pngs(tmp_path, ["01_bifurcation.png", "01_linear_spectra.png", "01_simulation.png"])
    assert "Hopf bifurcations at p_mean = 89.829" in text


@pytest.mark.slow
def test_fit_resting_spectrum(tmp_path):
    from conftest import require_recordings

    require_recordings("eegmat/Subject00_1.edf")
    require_recordings("eegmat/Subject00_2.edf")
    text = execute_notebook("fit_resting_spectrum.ipynb", tmp_path)
    assert "small settings" in text and "condition effects (against rest" in text
    _assert_pngs(tmp_path, ["02_correlations.png", "02_pairs.png", "02_fit.png", "02_residuals.png",
                            "02_nuts_trace.png", "02_nuts_pairs.png", "02_predictive_backends.png"])


@pytest.mark.slow
def test_identifiability(tmp_path):
    text = execute_notebook("identifiability.ipynb", tmp_path)
    assert "small settings" in text
    assert "structural null space of dimension 4" in text  # spectrum, 12 parameters
    assert "structural null space of dimension 2" in text  # evoked
    assert "a: identified" in text and "e0: flat" in text
    assert (tmp_path / "ident_eigenvectors.png").is_file()


@pytest.mark.slow
def test_fit_evoked_response(tmp_path):
    from conftest import require_recordings

    require_recordings("mne_sample_erp_neurokit2/data.csv")
    text = execute_notebook("fit_evoked_response.ipynb", tmp_path)
    assert "small settings" in text and "auditory N100 of the data: -6.05 µV at 93 ms" in text
    _assert_pngs(tmp_path, ["erp_single_trials.png", "erp_fits.png"])


@pytest.mark.slow
def test_compare_backends(tmp_path):
    pytest.importorskip("pymc")
    pytest.importorskip("sbi")
    text = execute_notebook("compare_backends.ipynb", tmp_path)
    assert "small settings" in text and "covers the truth:" in text
    _assert_pngs(tmp_path, ["05_marginals.png", "05_predictive.png", "05_npe_calibration.png"])


def test_every_notebook_is_tested():
    tested = {"model_tour.ipynb", "fit_resting_spectrum.ipynb", "identifiability.ipynb", "fit_evoked_response.ipynb",
              "compare_backends.ipynb"}
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} <= tested | _TESTED_ELSEWHERE
    assert not list(NOTEBOOKS.glob("*.py")), "worked examples are notebooks (.ipynb), not scripts"


_TESTED_ELSEWHERE: set[str] = set()
