import numpy as np
import pytest
import torch

import retrievalguard_fast as rgf
import reference
from conftest import requires_cuda

# Random123 kat_vectors for philox4x32_10: counter words, key words, expected output.
KAT = [
    ([0x00000000] * 4, [0x00000000] * 2, [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [0xA4093822, 0x299F31D0],
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answer_vectors(counter, key, expected):
    out = rgf.philox4x32(np.array(counter, dtype=np.uint32), np.array(key, dtype=np.uint32))
    assert out.dtype == np.uint32
    assert out.tolist() == expected
    # The numpy reference agrees too (so it can be trusted for the random cases below).
    assert reference.philox4x32_10(np.array([counter]), np.array([key]))[0].tolist() == expected


def test_matches_reference_on_random_counters():
    rng = np.random.default_rng(1)
    counters = rng.integers(0, 2**32, size=(5000, 4), dtype=np.uint64)
    keys = rng.integers(0, 2**32, size=(5000, 2), dtype=np.uint64)
    np.testing.assert_array_equal(rgf.philox4x32(counters, keys), reference.philox4x32_10(counters, keys))


def test_single_key_broadcasts_and_torch_input():
    counters = np.arange(40, dtype=np.int64).reshape(10, 4)
    out = rgf.philox4x32(torch.from_numpy(counters), torch.tensor([7, 9]))
    np.testing.assert_array_equal(out, reference.philox4x32_10(counters, np.array([[7, 9]])))


@pytest.mark.parametrize(
    "counter,key,exc,match",
    [
        ([1, 2, 3], [0, 0], ValueError, "counter must have shape"),
        ([1, 2, 3, 4], [0], ValueError, "key must have shape"),
        ([1.0, 2, 3, 4], [0, 0], TypeError, "counter must have an integer dtype"),
        ([1, 2, 3, 2**32], [0, 0], ValueError, r"counter words must be in \[0, 2\*\*32 - 1\]"),
        ([1, 2, 3, 4], [-1, 0], ValueError, "key words"),
    ],
)
def test_bad_input(counter, key, exc, match):
    with pytest.raises(exc, match=match):
        rgf.philox4x32(np.array(counter), np.array(key))


@requires_cuda
def test_cuda_matches_cpu_bit_for_bit():
    rng = np.random.default_rng(2)
    counters = rng.integers(0, 2**32, size=(4096, 4), dtype=np.int64)
    keys = rng.integers(0, 2**32, size=(4096, 2), dtype=np.int64)
    gpu = rgf.philox4x32(torch.from_numpy(counters).cuda(), torch.from_numpy(keys).cuda())
    assert gpu.device.type == "cuda"
    np.testing.assert_array_equal(gpu.cpu().numpy(), rgf.philox4x32(counters, keys).astype(np.int64))
