import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _no_global_rng_reliance():
    """Tests must not depend on torch's global RNG: scramble it before each test."""
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    yield


def native_or_skip():
    """Skip when the compiled kernel is missing, but fail in CI (it must be there)."""
    from jrinfer import _native

    if not _native.available():
        if os.environ.get("CI"):
            pytest.fail(f"native kernel unavailable in CI: {_native.unavailable_reason()}")
        pytest.skip(f"native kernel unavailable: {_native.unavailable_reason()}")


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Local runs find the shared recordings next to the checkout, as CI does.
if not os.environ.get("JRINFER_DATA"):
    _default = os.path.join(os.path.dirname(_REPO), "shared", "data")
    if os.path.isdir(_default):
        os.environ["JRINFER_DATA"] = _default


def require_recordings(*relpaths: str) -> None:
    """Skip when the real recordings are missing, but fail in CI (they must be there)."""
    root = os.environ.get("JRINFER_DATA", "")
    rels = relpaths or ("eegmat/Subject00_1.edf",)
    missing = [r for r in rels if not os.path.exists(os.path.join(root, r))]
    if missing:
        msg = f"recordings missing from JRINFER_DATA={root!r}: {missing}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
