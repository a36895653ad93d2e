"""The runs layer: a run kept in a folder, resumable at any moment, in one process or across the
ranks of a torchrun group.

- :mod:`.folder`: :class:`RunFolder`, storage only (lock, run.json, durable records, merges);
- :mod:`.skeleton`: :func:`run_in_folder`, the one run loop that certify and attack share;
- :mod:`.coordinator`: one process or a torchrun group behind the same methods;
- :mod:`.certify_run`: :func:`certify_to_folder`; :mod:`.attack_run`: :func:`attack_to_folder`;
- :mod:`.gallery`: the run's gallery, embedded once and cached in the folder;
- :mod:`.distributed`: the torchrun group's store protocol; :mod:`.progress`: progress output.
"""

from .attack_run import attack_to_folder, certified_records
from .certify_run import certify_to_folder, run_parameters
from .coordinator import GroupCoordinator, SoloCoordinator, coordinator_for_this_process
from .folder import RESULTS, RUN, RunFolder, read_run
from .gallery import build_gallery
from .skeleton import RunInterrupted, run_in_folder

__all__ = ["certify_to_folder", "attack_to_folder", "certified_records", "run_parameters", "RunFolder", "read_run",
           "RESULTS", "RUN", "RunInterrupted", "run_in_folder", "build_gallery", "SoloCoordinator", "GroupCoordinator",
           "coordinator_for_this_process"]
