import numpy as np
import pytest
import torch

import retrievalguard_fast as rgf

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
    from retrievalguard_fast._backend import cpu_tile_sizes

    with cpu_tile_sizes(3, 5):
        yield


requires_cuda = pytest.mark.skipif(not rgf.has_cuda(), reason="needs a CUDA GPU and the CUDA module")
