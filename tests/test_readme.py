"""The README's Python examples run as written."""

import re
from pathlib import Path

from conftest import require_recordings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run():
    require_recordings()
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["sim"].v.shape == (2, 60000)
    assert namespace["posterior"].converged
