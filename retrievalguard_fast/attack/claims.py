"""What a certify record claims, as the attack tests it: each certified prediction (or Recall@K of
the true label) with the radius inside which it is certified not to change (docs/attack.md,
"The alarm"). Read through the certificate registry, so a new attacked certificate is tested
without a change here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

from ..smoothing.record import ABSTAIN, CERTIFICATES


@dataclass(frozen=True)
class Claim:
    """``certificate`` says: inside the open l2 ball of ``radius`` around the query, the attacked
    ``model`` keeps ``reference`` as its 1-NN label (k = 1), or keeps a row of ``reference``
    among its k nearest gallery rows (a Recall@k claim; ``reference`` is the true label)."""

    certificate: str  # "vote", "gaussian", "gaussian@5", ...
    model: str  # the attacked model: "vote" or "soft"
    reference: int
    radius: float
    k: int = 1

    def to_dict(self) -> dict:
        return {"certificate": self.certificate, "model": self.model, "reference": self.reference,
                "radius": self.radius, "k": self.k}


def _testable(radius: Optional[float]) -> bool:
    """A finite positive radius: None is no certificate; +inf (a Recall@K with fewer than K rows
    of other labels) holds everywhere and has no ball to attack."""
    return radius is not None and 0.0 < float(radius) < math.inf


def certified_claims(record: Optional[dict], models: Sequence[str]) -> List[Claim]:
    """Every claim of a certify ``record`` that an attacked model in ``models`` can test, in
    registry order; a Recall@1 claim equal to the 1-NN claim (same label and radius) once."""
    if record is None:
        return []
    claims: List[Claim] = []
    for cert in CERTIFICATES:
        if cert.attacked_as is None or cert.attacked_as not in models:
            continue
        prediction, radius = record.get(cert.prediction_field), record.get(cert.radius_field)
        if prediction is not None and prediction != ABSTAIN and _testable(radius):
            claims.append(Claim(cert.key, cert.attacked_as, int(prediction), float(radius)))
        label = record.get("label")
        if not cert.recall_at_k or label is None:
            continue
        for k, radii in sorted(record.get("soft_recall_at_k", {}).items(), key=lambda kv: int(kv[0])):
            radius = (radii or {}).get(cert.key)
            if not _testable(radius):
                continue
            claim = Claim(f"{cert.key}@{int(k)}", cert.attacked_as, int(label), float(radius), int(k))
            if int(k) == 1 and any(c.reference == claim.reference and c.radius == claim.radius and c.k == 1
                                   and c.model == claim.model for c in claims):
                continue
            claims.append(claim)
    return claims
