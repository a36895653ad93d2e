"""The kernel layer: counter-based noise and exact nearest-neighbour voting, on the CPU always and
on CUDA when the package was built with it and a GPU is present.

Every function checks its arguments once, dispatches once (:func:`.backend.backend_for`: numpy
arrays and CPU tensors run the C++ kernels of ``_core``; CUDA tensors run the CUDA kernels of
``_cuda`` on ``torch.cuda.current_stream()`` and the results stay on that device), and reports
input problems with one message naming the argument. Results come back in the kind of the main
argument (numpy in, numpy out; tensor in, tensor out). Inputs of another floating dtype are
converted to float32 and non-contiguous inputs are copied; ``out`` arrays are never converted:
one that does not fit exactly is refused, so no result is written to a copy.

- :mod:`.backend`: the compiled modules, their ABI check, the CPU and CUDA backends;
- :mod:`.arrays`: telling numpy arrays and tensors apart, argument checks and conversions;
- :mod:`.problems`: the kernels' problem counters -> one error naming the offending row;
- :mod:`.noise`: :func:`philox4x32`, :func:`gaussian_noise`;
- :mod:`.nn`: :func:`nn_search`, :func:`nn_vote`;
- :mod:`.screen`: :func:`nn_vote_screened` (tensor-core screen, exact verification).
"""

from .backend import build_info, has_cuda
from .nn import nn_search, nn_vote
from .noise import gaussian_noise, philox4x32
from .screen import ScreenedVote, nn_vote_screened, screen_rel_error

__all__ = ["build_info", "has_cuda", "philox4x32", "gaussian_noise", "nn_search", "nn_vote", "nn_vote_screened",
           "ScreenedVote", "screen_rel_error"]
