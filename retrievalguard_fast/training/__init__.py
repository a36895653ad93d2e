"""The training layer: a certifiable retrieval model from a backbone, trained under the noise it
will be certified with (``python -m retrievalguard_fast train``).

- :mod:`.config`: :class:`TrainConfig`, every setting of a run;
- :mod:`.sampler`: per-class batches that visit every image once per epoch;
- :mod:`.model`: backbones, the embedding head, the TorchScript export with the training record;
- :mod:`.objective`: the metric loss (pytorch-metric-learning), noise, the consistency penalty;
- :mod:`.parallel`: data parallelism under torchrun;
- :mod:`.run`: :func:`train_to_folder`, checkpointed and resumable.
"""

from .config import TrainConfig
from .model import EXTRA_FILE, build_backbone
from .objective import LOSSES
from .run import train_to_folder

__all__ = ["TrainConfig", "train_to_folder", "build_backbone", "LOSSES", "EXTRA_FILE"]
