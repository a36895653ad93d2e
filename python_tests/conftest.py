import os

import numpy as np
import pytest
import torch

import retrievalguard_fast as rgf

if os.environ.get("RGF_REQUIRE_CUDA") and not rgf.has_cuda():
    # benchmarks/gpu_check.sh: on the GPU machine, GPU tests must run, not skip.
    raise pytest.UsageError("RGF_REQUIRE_CUDA is set but retrievalguard_fast.has_cuda() is False: " + str(rgf.build_info()["cuda"]))

# Array kinds every kernel test runs over: the same expectations pin each backend.
KINDS = ["numpy", "torch"] + (["cuda"] if rgf.has_cuda() else [])


def to_kind(a, kind):
    """numpy array -> the given kind (numpy, CPU tensor, CUDA tensor)."""
    if kind == "numpy":
        return np.asarray(a)
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.cuda() if kind == "cuda" else t


def to_numpy(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture
def small_tiles():
    """Force tiny CPU tiles so small inputs run the tiled and segmented code paths."""
    from retrievalguard_fast.kernels.backend import cpu_tile_sizes

    with cpu_tile_sizes(3, 5):
        yield


requires_cuda = pytest.mark.skipif(not rgf.has_cuda(), reason="needs a CUDA GPU and the CUDA module")
