"""The other builds of the emulated module: the contraction build (a*b+c contracted into FMAs,
as nvcc does by default) must give the same bits as the CPU backend, which proves that every
multiply-add that matters is explicit in the shared headers; the AddressSanitizer +
UndefinedBehaviorSanitizer and the ThreadSanitizer (OS threads) builds must report nothing."""

import subprocess

import numpy as np
import pytest
import torch

import cases
from sanitized_run import command

from emulation_fixtures import emu, emu_contract, emulation_contract, emulation_fibers  # noqa: F401  (fixtures)

pytestmark = pytest.mark.cuda_emulation


def test_contraction_build_matches_cpu(emu_contract):
    assert cases.smoke(emu_contract) > 0
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        cases.noise(emu_contract, (37,), 5, seed=99, stream=3, start=10, dtype=dtype)
    q, g = cases.problem(3, 65, 130, 33, ties=True)
    cases.nn_search(emu_contract, q, g)
    cases.nn_vote(emu_contract, q, g, np.arange(130) % 7, 7)
    for precision in ("tf32", "bf16"):
        q, g, labels = cases.clustered(4, 40, 8, 6, 30)
        cases.screened(emu_contract, q, g, labels, 5, precision, 4)


def run_sanitized(variant, bug=None, timeout=900):
    argv, env = command(variant, bug)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("variant", ["asan", "tsan"])
def test_sanitizers_report_nothing_on_the_landed_code(variant):
    proc = run_sanitized(variant)
    assert proc.returncode == 0 and "Sanitizer" not in proc.stderr, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}")
    assert proc.stdout.strip().startswith("compared ") and int(proc.stdout.split()[1]) > 0
