"""The record format: what one certified query is (:class:`QueryCertificate`, one line of
``results.jsonl``), its version (:data:`RECORD_FORMAT`, recorded in run.json), and the registry of
certificates (:data:`CERTIFICATES`) that the summaries, tables, plots and the attack's soundness
alarm read, so that a new certificate is added here once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Tuple

from .sequential import FIXED

#: Version of the record format (the fields of :class:`QueryCertificate` and their meaning).
#: run.json records it as ``record_format``; a folder without it is of format 1 (the format
#: before the number was written). Bump it with any change to a field's name or meaning.
#: Format 2 added ``label_count`` (the true label's fresh votes: the query's noisy Recall@1 is
#: ``label_count / vote_n``) and ``soft_mean_norm`` (``|F_hat|``); a folder of format 1 is not
#: resumed into format 2 (its records lack them), but every reader takes records of both.
RECORD_FORMAT = 2

#: The prediction of an abstention (its radius is None).
ABSTAIN = -1


@dataclass(frozen=True)
class Certificate:
    """One certificate of a query: where its prediction and radius are in a record, how reports
    show it, and whether the attack can test it.

    ``key``: its name in summaries (``certified_recall_at_1[key]``); ``abstains_with``: the
    prediction whose abstention rate it shares (``abstention_rate[...]``); ``recall_at_k``:
    whether ``soft_recall_at_k`` holds its Recall@K radii (under the same key); ``attacked_as``:
    the attack's model whose breaks test it (None: not tested by the attack)."""

    key: str
    table_label: str
    plot_label: str
    colour: str
    prediction_field: str
    radius_field: str
    abstains_with: str
    recall_at_k: bool
    attacked_as: Optional[str]


#: Every certificate a record carries, in report order.
CERTIFICATES: Tuple[Certificate, ...] = (
    Certificate("vote", "vote (Cohen)", "vote (Cohen et al.)", "C0", "vote_prediction", "vote_radius", "vote",
                recall_at_k=False, attacked_as="vote"),
    # The soft model's two radii certify the same prediction; the attack tests the larger one,
    # the Gaussian (the Lipschitz radius is never above it), so a break inside either is caught.
    Certificate("gaussian", "soft, Gaussian", "soft, Gaussian bound", "C1", "soft_prediction", "soft_gaussian_radius",
                "soft", recall_at_k=True, attacked_as="soft"),
    Certificate("lipschitz", "soft, Lipschitz", "soft, Lipschitz bound (RetrievalGuard)", "C2", "soft_prediction",
                "soft_lipschitz_radius", "soft", recall_at_k=True, attacked_as=None),
)

#: The certificates with Recall@K radii, in report order.
RECALL_AT_K_CERTIFICATES: Tuple[Certificate, ...] = tuple(c for c in CERTIFICATES if c.recall_at_k)


def certificate(key: str) -> Certificate:
    """The registered certificate named ``key``."""
    for c in CERTIFICATES:
        if c.key == key:
            return c
    raise KeyError(f"no certificate {key!r}; registered: {', '.join(c.key for c in CERTIFICATES)}")


def is_certify_record(record: dict) -> bool:
    """Whether a results.jsonl record is one of certify's (it has every certificate's fields)."""
    return isinstance(record, dict) and all(c.prediction_field in record and c.radius_field in record
                                            for c in CERTIFICATES)


@dataclass
class QueryCertificate:
    """Everything certified about one query. Abstentions have prediction -1 and radius None."""

    index: int
    label: Optional[int]
    clean_prediction: int
    vote_prediction: int
    vote_selected: int  # the label chosen by the n0 selection votes
    vote_count: int  # fresh votes for it, out of vote_n
    vote_n: int
    vote_pA_lower: float
    vote_radius: Optional[float]
    soft_prediction: int
    soft_gaussian_radius: Optional[float]
    soft_lipschitz_radius: Optional[float]
    soft_deviation: float  # the Monte-Carlo bound t on |F_hat - F| (run.json's soft_bound says which)
    soft_recall_at_k: Dict[int, Dict[str, Optional[float]]] = field(default_factory=dict)
    samples: int = 0  # noisy samples drawn for this query (n0 + vote_n)
    seconds: float = 0.0
    mode: str = FIXED  # "fixed-n" or "sequential" (bounds at alpha / number of checkpoints)
    label_count: Optional[int] = None  # fresh votes for the true label, out of vote_n (None: no label; format 2)
    soft_mean_norm: Optional[float] = None  # |F_hat|, the norm of the mean noisy embedding (format 2)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["soft_recall_at_k"] = {str(k): v for k, v in self.soft_recall_at_k.items()}
        return d

    @classmethod
    def from_dict(cls, record: dict) -> "QueryCertificate":
        """The certificate of a record written by :meth:`to_dict` (fields it does not know are ignored)."""
        fields = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        fields["soft_recall_at_k"] = {int(k): v for k, v in record.get("soft_recall_at_k", {}).items()}
        return cls(**fields)

    def prediction(self, cert: Certificate) -> int:
        """The prediction ``cert`` certifies (ABSTAIN for an abstention)."""
        return getattr(self, cert.prediction_field)

    def radius(self, cert: Certificate) -> Optional[float]:
        """``cert``'s certified radius (None: not certified)."""
        return getattr(self, cert.radius_field)
