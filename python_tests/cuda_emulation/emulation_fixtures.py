"""Fixtures of the CUDA emulation tests (marker ``cuda_emulation``; each test module imports the
ones it uses): the emulated ``_cuda`` module of each build variant (emulation_build.py; built
once, cached on disk), and a check after every test that the emulator reported no fault it was
not asked for. (Not a conftest.py: the test modules elsewhere import the top-level conftest by
name, which a second conftest module on sys.path would shadow.)"""

import os

import pytest

import emulation_build as build
import emulated


def _require_compiler():
    if build.compiler() is None:
        if os.environ.get("RGF_REQUIRE_CUDA_EMULATION"):  # .ci/run: these tests must run, not skip
            pytest.fail("RGF_REQUIRE_CUDA_EMULATION is set but no g++ was found for the CUDA emulation")
        pytest.skip("the CUDA emulation needs g++ (none found)")


def _variant(name):
    _require_compiler()
    return emulated.load(name)


@pytest.fixture(scope="session")
def emulation_fibers():
    return _variant("fibers")


@pytest.fixture(scope="session")
def emulation_contract():
    return _variant("contract")


def _checked(emulation):
    emulation.reset()
    emulation.configure()
    yield emulation
    report = emulation.report()
    emulation.reset()
    emulation.configure()
    assert report == "", f"the CUDA emulation reported faults:\n{report}"


@pytest.fixture
def emu(emulation_fibers):
    """The fibers build, reset before the test; the test fails if a fault was reported."""
    yield from _checked(emulation_fibers)


@pytest.fixture
def emu_contract(emulation_contract):
    """The contraction build (a*b+c contracted as nvcc does), checked like ``emu``."""
    yield from _checked(emulation_contract)
