"""Rest vs mental arithmetic over the EEGMAT subjects of the data cache: per-subject and group condition effects.

Runs ``jrinfer fit-many`` with ``--conditions rest,task --vary a,b,gain`` (O1/O2 averaged, 2-40 Hz, variational
Laplace, one process) on every subject with both recordings in ``$JRINFER_DATA/eegmat`` (a manifest with
``path_rest``/``path_task`` columns), then prints, per subject, the data's 8-13 Hz power ratio task/rest (from the
fitted spectra in posterior.nc), the model's, and the printed group effects (``group_effects.json``).

Run: ``JRINFER_DATA=/work/shared/data python benchmarks/cohort_conditions.py [OUT]`` (about 3 min per subject on
one core; a second run resumes from OUT).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np


def main(out: str = "cohort-eegmat") -> None:
    from jrinfer import Posterior
    from jrinfer.cli import main as cli
    from jrinfer.conditions import format_group_effects

    root = Path(os.environ.get("JRINFER_DATA", "")) / "eegmat"
    subjects = sorted(p.name[: -len("_1.edf")] for p in root.glob("Subject*_1.edf") if (root / p.name.replace(
        "_1.edf", "_2.edf")).is_file())
    if not subjects:
        sys.exit(f"no EEGMAT pairs Subject*_1.edf/_2.edf in {root} (set JRINFER_DATA)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out.parent / f"{out.name}-manifest.csv"
    manifest.write_text("name,path_rest,path_task\n" + "".join(
        f"{s},{root / (s + '_1.edf')},{root / (s + '_2.edf')}\n" for s in subjects))
    cli(["fit-many", str(manifest), "--kind", "spectrum", "--backend", "laplace", "--conditions", "rest,task",
         "--vary", "a,b,gain", "--picks", "O1,O2", "--fmin", "2", "--fmax", "40", "--workers", "0", "--no-progress",
         "--out", str(out)])
    print(f"{'subject':>16s}  alpha 8-13 Hz task/rest: data  model")
    for folder in sorted(p for p in out.iterdir() if (p / "posterior.nc").is_file()):
        post = Posterior.from_netcdf(folder / "posterior.nc")
        f = np.asarray(post.observed["coord_values"])
        band = (f >= 8.0) & (f <= 13.0)
        data = [np.trapezoid(np.asarray(post.observed["values"])[i, band], f[band]) for i in range(2)]
        model = [np.trapezoid(np.asarray(post.fit)[i, band], f[band]) for i in range(2)]
        print(f"{folder.name:>16s}  {data[1] / data[0]:34.3f}  {model[1] / model[0]:.3f}")
    group = json.loads((out / "group_effects.json").read_text())
    if "error" in group:
        print("no group effects:", group["error"])
    else:
        print("\n".join(format_group_effects(group)))


if __name__ == "__main__":
    main(*sys.argv[1:2])
