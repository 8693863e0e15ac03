"""Tests of the Python package. Run against a build tree with
    PYTHONPATH=python DIPOLE_LIBRARY=build/libdipole.so python3 -m pytest python/tests
(tools/quickstart.sh test does), or against an installed package with plain pytest."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import dipole  # noqa: E402


@pytest.fixture(scope="session")
def ctx():
    try:
        return dipole.default_context()
    except (dipole.NoPlatformError, dipole.NoDeviceError) as e:
        pytest.skip(f"no OpenCL device: {e}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
