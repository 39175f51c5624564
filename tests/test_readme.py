"""The README's Python examples run as written."""

import re
from pathlib import Path

from conftest import require_recordings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    require_recordings()
    monkeypatch.chdir(tmp_path)  # the blocks write fit.png, marginals.png and fit.nc where they run
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["sim"].v.shape == (2, 60000)
    assert namespace["posterior"].converged
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("fit.png", "marginals.png", "fit.nc"))
    assert set(namespace["estimates"]) == set(namespace["posterior"].names)


def _readme_table(after: str) -> dict[str, tuple[str, str]]:
    """``{parameter: (unit, meaning)}`` of the first markdown table after the line starting with ``after``."""
    text = README.read_text()
    start = text.index(after)
    rows = {}
    for line in text[start:].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        m = re.match(r"\| `([^`]+)` \| (.+?) \| (.+?) \|$", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_readme_parameter_tables_match_the_code():
    """Every parameter of the model and of both observations is listed with the unit the code reports."""
    from jrinfer import PARAMETERS, EvokedObservation, SpectrumObservation

    model = _readme_table("Jansen-Rit model:")
    assert {k: u for k, (u, _) in model.items()} == {k: p.unit for k, p in PARAMETERS.items()}
    for heading, cls in (("Spectra (`--kind spectrum`)", SpectrumObservation),
                         ("Evoked responses (`--kind evoked`)", EvokedObservation)):
        table = _readme_table(heading)
        units = cls().parameter_units(None)
        assert {k: u for k, (u, _) in table.items()} == {k: units[k] for k in cls.PARAMETERS}, heading
    # the pulse factor quoted for input_amplitude is the code's
    factor = float(EvokedObservation().input_peak(1.0, 0.0, 0.005)[0])
    assert f"{factor:.0f} q" in _readme_table("Evoked responses (`--kind evoked`)")["input_amplitude"][1]
