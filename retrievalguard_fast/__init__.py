"""retrievalguard_fast: provably robust (certified) 1-NN image retrieval, fast.

The package is layered; each layer imports only those before it (python_tests/test_layers.py
checks): ``kernels`` -> ``smoothing`` -> ``report`` -> ``attack`` -> ``runs`` -> ``cli``, with
``data`` (what runs read) used by ``runs`` and ``cli``, ``demo`` (the embedded default) and
``bench`` (the benchmarks) on top.

- :mod:`.kernels`: counter-based noise and exact nearest-neighbour voting, CPU and CUDA
  (:func:`philox4x32`, :func:`gaussian_noise`, :func:`nn_search`, :func:`nn_vote`,
  :func:`nn_vote_screened`; :func:`has_cuda`, :func:`build_info`);
- :mod:`.smoothing`: :class:`SmoothedRetriever` over a :class:`Gallery`, configured by a
  :class:`CertifyConfig`, one :class:`QueryCertificate` per query;
- :mod:`.report`: :func:`summarize` and the files and tables of a run;
- :mod:`.attack`: the empirical upper bound (:class:`AttackConfig`, :class:`Attacker`);
- :mod:`.data`: queries and galleries from .npz files, image folders and the benchmarks;
- :mod:`.runs`: :func:`certify_to_folder`, :func:`attack_to_folder` (resumable, torchrun-aware);
- :mod:`.training`: :func:`~.training.train_to_folder`, a certifiable model trained under noise;
- :mod:`.cli`: ``python -m retrievalguard_fast``.

The mathematics is in docs/certification.md, the engineering in docs/design.md.
"""

__version__ = "0.1.0"

from .attack import AttackConfig, Attacker  # noqa: E402
from .errors import InputError  # noqa: E402
from .kernels import (  # noqa: E402
                      ScreenedVote,
                      build_info,
                      gaussian_noise,
                      has_cuda,
                      nn_search,
                      nn_vote,
                      nn_vote_screened,
                      philox4x32,
                      screen_rel_error,
)
from .report import summarize  # noqa: E402
from .runs import RunInterrupted, attack_to_folder, certify_to_folder  # noqa: E402
from .smoothing import CERTIFICATES, CertifyConfig, Gallery, QueryCertificate, SmoothedRetriever  # noqa: E402

__all__ = [
    "__version__",
    # kernels
    "build_info", "has_cuda", "philox4x32", "gaussian_noise", "nn_search", "nn_vote", "nn_vote_screened",
    "ScreenedVote", "screen_rel_error",
    # certification
    "SmoothedRetriever", "Gallery", "CertifyConfig", "QueryCertificate", "CERTIFICATES", "summarize",
    # runs
    "certify_to_folder", "attack_to_folder", "RunInterrupted", "InputError",
    # attack
    "AttackConfig", "Attacker",
]
