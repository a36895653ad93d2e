"""Each planted bug of planted_bugs.py (one of each kind) is caught: by the bit-for-bit
comparison with the CPU backend under fibers, or by a sanitizer build. A harness that let one
through would be no check of the CUDA code."""

import pytest

import emulated
from planted_bugs import BUGS
from test_emulation_variants import run_sanitized

from emulation_fixtures import emu, emu_contract, emulation_contract, emulation_fibers  # noqa: F401  (fixtures)

pytestmark = pytest.mark.cuda_emulation

FIBER_BUGS = [name for name, bug in BUGS.items() if bug.caught_by == "fibers"]
SANITIZER_BUGS = [name for name, bug in BUGS.items() if bug.caught_by != "fibers"]


@pytest.mark.parametrize("name", FIBER_BUGS)
def test_caught_by_the_comparison(emulation_fibers, name):
    mutant = emulated.load("fibers", BUGS[name].edits, name)
    mutant.reset()
    with pytest.raises(AssertionError, match="differ from the CPU backend"):
        BUGS[name].exercise(mutant)
    mutant.reset()


def test_philox_temporaries_was_a_use_after_free():
    proc = run_sanitized("asan", "philox_temporaries")
    assert "ERROR: AddressSanitizer: heap-use-after-free" in proc.stderr and "philox_kernel" in proc.stderr


def test_the_comparisons_pass_without_the_bugs(emu):
    for bug in BUGS.values():
        assert bug.exercise(emu) > 0


def test_tile_read_past_end_also_changes_results(emulation_fibers):
    mutant = emulated.load("fibers", BUGS["tile_read_past_end"].edits, "tile_read_past_end")
    with pytest.raises(AssertionError, match="differ from the CPU backend"):
        BUGS["tile_read_past_end"].exercise(mutant)


@pytest.mark.parametrize("name", SANITIZER_BUGS)
def test_caught_by_a_sanitizer(name):
    bug = BUGS[name]
    proc = run_sanitized(bug.caught_by, name)
    expected = {"asan": "ERROR: AddressSanitizer: heap-",  # -buffer-overflow, -use-after-free
                "tsan": "WARNING: ThreadSanitizer: data race"}[bug.caught_by]
    assert proc.returncode != 0 and expected in proc.stderr, (
        f"{name}: exit {proc.returncode}, no {expected!r}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}")
    assert bug.where in proc.stderr  # the report points into the kernel
