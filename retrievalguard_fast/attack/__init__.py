"""The attack layer: the empirical upper bound beside the certificates (docs/attack.md).

- :mod:`.config`: :class:`AttackConfig`, :data:`MODELS`;
- :mod:`.pgd`: :class:`Attacker`, l2 PGD with expectation over the noise against the vote, soft
  and base models, one query at a time;
- :mod:`.losses`: the differentiable margins; :mod:`.breaks`: the break tests with fresh noise;
- :mod:`.summary`: empirical robust Recall@1 and the soundness alarm; :mod:`.report`: its files
  and table.

Running an attack into a folder (resume, records, reports) is :func:`~..runs.attack_to_folder`.
"""

from .breaks import soft_break_margin, vote_break_test
from .config import MODELS, AttackConfig
from .pgd import Attacker, check_clip
from .report import print_attack_table, write_attack_reports
from .summary import attack_summary, empirical_recall, robust_at, soundness_alarm

__all__ = ["AttackConfig", "MODELS", "Attacker", "check_clip", "vote_break_test", "soft_break_margin", "empirical_recall",
           "robust_at", "soundness_alarm", "attack_summary", "write_attack_reports", "print_attack_table"]
