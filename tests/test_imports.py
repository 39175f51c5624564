"""``import jrinfer`` stays light: heavy optional dependencies load only where used."""

import subprocess
import sys


def test_import_does_not_pull_heavy_dependencies():
    code = (
        "import sys, jrinfer, jrinfer.backends.laplace, jrinfer.cli, jrinfer.distributed, jrinfer._chunks, jrinfer.datasets, jrinfer.report, jrinfer.plotting; "
        "heavy = ('mne', 'pymc', 'sbi', 'matplotlib', 'arviz', 'pandas', 'dask', 'pooch'); "
        "heavy = [m for m in heavy if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
