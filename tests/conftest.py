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
