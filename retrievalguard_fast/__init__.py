"""retrievalguard_fast: provably robust (certified) 1-NN image retrieval, fast.

Kernels (CPU always, CUDA when built with it and a GPU is present):

- :func:`philox4x32` - the raw Philox4x32-10 counter-based generator block;
- :func:`gaussian_noise` - noisy copies of an input from a counter-based normal stream;
- :func:`nn_search` - exact nearest and second-nearest gallery rows;
- :func:`nn_vote` - the certifier's fused normalise + 1-NN + label vote + embedding sum pass;
- :func:`nn_vote_screened` - the same result, candidates screened by a tensor-core (TF32/bf16)
  matmul and verified exactly.

:func:`has_cuda` says whether the GPU backend is usable here; :func:`build_info` says what was
compiled in. The mathematics is in docs/certification.md, the engineering in docs/design.md.
"""

from ._backend import build_info, has_cuda
from ._ops import gaussian_noise, nn_search, nn_vote, philox4x32
from .screen import ScreenedVote, nn_vote_screened, screen_rel_error

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "build_info",
    "gaussian_noise",
    "has_cuda",
    "nn_search",
    "nn_vote",
    "nn_vote_screened",
    "ScreenedVote",
    "screen_rel_error",
    "philox4x32",
]
