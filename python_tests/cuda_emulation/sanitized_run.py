"""Runs the emulated CUDA path under a sanitizer build, in a process of its own (the sanitizer
runtime must be loaded before Python: test_emulation_variants.py starts this script with
LD_PRELOAD set, see ``command``). Prints ``compared N`` and exits 0 when every comparison with
the CPU backend held and the emulator reported nothing; a sanitizer report goes to stderr.

    python sanitized_run.py VARIANT [PLANTED_BUG]
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]


def command(variant, bug=None):
    """(argv, environment) of a sanitized run of this script."""
    import emulation_build as build

    env = dict(os.environ, LD_PRELOAD=build.sanitizer_runtime(variant), OMP_NUM_THREADS="1",
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:exitcode=23:detect_odr_violation=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=24",
               TSAN_OPTIONS="halt_on_error=1:exitcode=66:report_signal_unsafe=0:history_size=2")
    return [sys.executable, os.path.abspath(__file__), variant] + ([bug] if bug else []), env


def main(variant, bug=None):
    import torch

    torch.set_num_threads(1)
    import cases
    import emulated
    import planted_bugs

    if bug:
        emu = emulated.load(variant, planted_bugs.BUGS[bug].edits, bug)
        if planted_bugs.BUGS[bug].python_patch:
            planted_bugs.BUGS[bug].python_patch()
    else:
        emu = emulated.load(variant)
    emu.configure(mode=emulated.THREADS if variant == "tsan" else emulated.FIBERS)
    if bug:
        compared = planted_bugs.BUGS[bug].exercise(emu)
    else:
        compared = cases.smoke(emu)
    report = emu.report()
    if report:
        print("emulator report:\n" + report, file=sys.stderr)
        return 3
    print(f"compared {compared}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
