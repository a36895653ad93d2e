"""Planted bugs: one of each kind the emulation must catch, planted in the project's own
``csrc/cuda/nn_cuda.cu`` (an edited copy; the file itself is untouched) and built as a variant of
the emulated module. test_emulation_planted_bugs.py checks that each one is caught, and by what:

* ``missing_syncthreads``: the barrier between loading a shared tile and reading it is gone
  -> other threads' tile entries are still garbage (or the next step's) -> results differ.
* ``plus_equals_for_atomic_add``: the vote counter is bumped with ``+=`` instead of ``atomicAdd``
  -> invisible to fibers (they never preempt), a data race for ThreadSanitizer (OS threads).
* ``tile_read_past_end``: the tile loader drops its ``k < dim`` guards -> reads past the end of
  the queries and gallery (AddressSanitizer: heap-buffer-overflow) and multiplies in the next
  rows' first elements (results differ).
* ``warp_merge_one_step_short``: the screen's butterfly merge stops one step early -> the two
  half-warps never see each other's candidates -> the screen's results differ.
* ``reversed_float64_sum``: the warp's float64 sum of squares adds in reverse order -> norms,
  keys and distances differ in the last bits from the CPU's index-order sum.

And the bug the emulation found in the package's Python CUDA path, put back for the
AddressSanitizer build: ``philox_temporaries``, ``CudaBackend.philox4x32`` as it was before the
fix, passing pointers of temporaries freed before the kernel runs (heap-use-after-free).

Each edit keeps the line count, so reports point at the real file's lines.
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional

import numpy as np

import cases

NN = "csrc/cuda/nn_cuda.cu"


class PlantedBug(NamedTuple):
    edits: Dict[str, Dict[str, str]]  # {source: {old text: new text}}
    caught_by: str                    # "fibers" (results differ), "asan" or "tsan" (a sanitizer report)
    exercise: Callable                # runs the comparisons that reveal it; returns how many
    where: str = "nn_cuda.cu"         # the file a sanitizer report must point into
    python_patch: Optional[Callable] = None  # installs a Python-side bug (the sanitized run calls it)


def _search(emu) -> int:
    q, g = cases.problem(5, 70, 67, 19, ties=True)
    cases.nn_search(emu, q, g)
    return 1


def _vote(emu) -> int:
    q, g = cases.problem(6, 40, 30, 8)
    cases.nn_vote(emu, q, g, np.arange(30) % 3, 3)
    return 1


def _screen(emu) -> int:
    q, g, labels = cases.clustered(7, 24, 8, 8, 20)  # 64 gallery rows: both half-warps hold candidates
    cases.screened(emu, q, g, labels, 5, "tf32", 4)
    return 1


def _norms(emu) -> int:
    q, g = cases.problem(8, 50, 40, 10)
    g[::2] = cases.order_sensitive_rows(20, 10)  # norms that depend on the order of the float64 sum
    cases.nn_search(emu, q, g)
    return 1


def _philox(emu) -> int:
    cases.philox(emu, np.arange(40).reshape(10, 4), [7, 9])
    return 1


def _philox_before_the_fix() -> None:
    import torch

    from retrievalguard_fast.kernels import backend

    def philox4x32(self, counters, keys):  # CudaBackend.philox4x32 before the fix, verbatim
        def as_int32_bits(t):
            return torch.where(t >= 2**31, t - 2**32, t).to(torch.int32).contiguous()

        out = torch.empty((counters.shape[0], 4), dtype=torch.int32, device=counters.device)
        backend._cuda.philox4x32(*self._place(out), as_int32_bits(counters).data_ptr(),
                                 as_int32_bits(keys).data_ptr(), counters.shape[0], out.data_ptr())
        return out.to(torch.int64) & 0xFFFFFFFF

    backend.CudaBackend.philox4x32 = philox4x32


BUGS: Dict[str, PlantedBug] = {
    "missing_syncthreads": PlantedBug(
        {NN: {"      __syncthreads();\n#pragma unroll\n      for (int kk = 0;":
              "      /* planted: no barrier */\n#pragma unroll\n      for (int kk = 0;"}},
        "fibers", _search),
    "plus_equals_for_atomic_add": PlantedBug(
        {NN: {"    atomicAdd(reinterpret_cast<unsigned long long*>(counts + label), 1ull);\n}\n\n// Fixed-point":
              "    counts[label] += 1;  /* planted */\n}\n\n// Fixed-point"}},
        "tsan", _vote),
    "tile_read_past_end": PlantedBug(
        {NN: {"a_tile[kk][r] = (qr < rows && k < dim) ? queries[qr * dim + k] : 0.0f;\n"
              "        b_tile[kk][r] = (gr < seg_end && k < dim) ? gallery[gr * dim + k] : 0.0f;":
              "a_tile[kk][r] = (qr < rows) ? queries[qr * dim + k] : 0.0f;\n"
              "        b_tile[kk][r] = (gr < seg_end) ? gallery[gr * dim + k] : 0.0f;"}},
        "asan", _search),
    "warp_merge_one_step_short": PlantedBug(
        {NN: {"  for (int offset = 16; offset > 0; offset >>= 1) {\n    const ScreenList mine = list;":
              "  for (int offset = 16; offset > 1; offset >>= 1) {\n    const ScreenList mine = list;"}},
        "fibers", _screen),
    "reversed_float64_sum": PlantedBug(
        {NN: {"for (int l = 0; l < count; ++l) acc += __shfl_sync(0xffffffffu, square, l);":
              "for (int l = count - 1; l >= 0; --l) acc += __shfl_sync(0xffffffffu, square, l);"}},
        "fibers", _norms),
    "philox_temporaries": PlantedBug({}, "asan", _philox, "noise_cuda.cu", _philox_before_the_fix),
}
