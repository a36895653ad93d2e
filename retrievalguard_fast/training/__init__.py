"""The training layer: a certifiable retrieval model from a backbone, trained under the noise it
will be certified with (``python -m retrievalguard_fast train``).

- :mod:`.config`: :class:`TrainConfig`, every setting of a run;
- :mod:`.sampler`: per-class batches that visit every image once per epoch;
- :mod:`.model`: backbones, the embedding head, the TorchScript export with the training record;
- :mod:`.objective`: the metric loss (pytorch-metric-learning), noise, the consistency penalty;
- :mod:`.denoiser`: a denoiser for a frozen encoder, the stability objective (denoised smoothing);
- :mod:`.tasks`: what a run trains (an embedding model or a denoiser) behind one interface;
- :mod:`.parallel`: data parallelism under torchrun;
- :mod:`.run`: :func:`train_to_folder`, the one training loop, checkpointed and resumable.
"""

from .config import TrainConfig
from .model import EXTRA_FILE, build_backbone
from .denoiser import OBJECTIVES
from .objective import LOSSES
from .run import train_to_folder

__all__ = ["TrainConfig", "train_to_folder", "build_backbone", "LOSSES", "OBJECTIVES", "EXTRA_FILE"]
