"""The smoothing layer: randomized smoothing of 1-NN retrieval over any torch embedding model.

- :mod:`.retriever`: :class:`SmoothedRetriever`, the public entry point (noisy copies, embedding,
  fused 1-NN voting, certificates per query);
- :mod:`.config`: :class:`CertifyConfig`, the sampling and certification settings;
- :mod:`.record`: :class:`QueryCertificate` (one record), :data:`RECORD_FORMAT`, and the registry
  of certificates :data:`CERTIFICATES` that reports and the attack read;
- :mod:`.gallery`: :class:`Gallery`, the fixed embeddings and labels;
- :mod:`.sampler`: the batched sampling loop (queries share model batches);
- :mod:`.certify`: the certify step, from one query's evidence to its certificates;
- :mod:`.certificates`: the vote and soft radii; :mod:`.stats`: confidence bounds and the soft
  bound; :mod:`.sequential`: fixed and sequential schedules.

The mathematics is in docs/certification.md.
"""

from .config import DEFAULT_RADII, CertifyConfig
from .gallery import Gallery
from .record import ABSTAIN, CERTIFICATES, RECORD_FORMAT, Certificate, QueryCertificate
from .retriever import SmoothedRetriever
from .sequential import FIXED, SEQUENTIAL
from .stats import BENNETT, MCDIARMID, SOFT_BOUNDS

__all__ = ["SmoothedRetriever", "CertifyConfig", "DEFAULT_RADII", "Gallery", "QueryCertificate", "ABSTAIN", "CERTIFICATES",
           "Certificate", "RECORD_FORMAT", "FIXED", "SEQUENTIAL", "BENNETT", "MCDIARMID", "SOFT_BOUNDS"]
