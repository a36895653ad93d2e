"""A certification run kept in a folder: :func:`certify_to_folder` certifies queries into it
through the run skeleton (:func:`~.skeleton.run_in_folder`), one record per query, resumable at
any moment; run.json holds :func:`run_parameters`, everything the records depend on."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from ..errors import BATCH_SIZE
from ..report import run_summary, write_reports
from ..smoothing.config import CertifyConfig
from ..smoothing.record import RECORD_FORMAT, QueryCertificate
from .folder import FORMAT_KEY, RunFolder
from .skeleton import OutOfMemoryHint, Session, check_indices, query_chunks, run_in_folder

_MEMORY = OutOfMemoryHint("certifying queries in noisy batches of batch_size rows", "{batch_size}",
                          {"batch_size": BATCH_SIZE})


def run_parameters(retriever, config: CertifyConfig, *, num_queries: int, identity: Dict[str, Any]) -> dict:
    """Everything the per-query results depend on (run.json). ``identity`` names the model and
    data (a file digest, a factory name, a data set), so a resume with other inputs is refused."""
    return {
        **identity,
        # The float32 sigma the noise and the certificates use, written as its shortest decimal
        # (0.1, not 0.10000000149011612).
        "sigma": float(str(np.float32(retriever.sigma))), "seed": retriever.seed,
        "device_type": retriever.device.type, "num_queries": int(num_queries),
        # The model always runs on batches of exactly this many rows, so results do not depend on
        # how an interrupted run was resumed; a different batch size may change the last bits.
        "batch_size": retriever.batch_size,
        **config.to_dict(),
        "model_stage": retriever.model_stage,
        FORMAT_KEY: RECORD_FORMAT,
    }


def certify_to_folder(out: Union[str, RunFolder], retriever, queries: Any, labels: Any,
                      config: Optional[CertifyConfig] = None, *, identity: Dict[str, Any],
                      exclude: Optional[np.ndarray] = None, indices: Optional[Sequence[int]] = None,
                      resume: bool = False, quiet: bool = False, coordinator=None, **settings: Any) -> Optional[dict]:
    """Certify ``queries`` (M, *input_shape) with ``retriever`` into the folder ``out`` and
    return the run's summary (also written there as summary.json, summary.csv and a plot).

    ``config``: a :class:`~..smoothing.CertifyConfig` (default: its defaults, fixed-n), with any
    of its settings replaced by keyword (``n=2000, mode="sequential"``).
    ``queries`` is an array or tensor, or a source read in chunks as they are certified
    (an object with ``__len__`` and ``iter_chunks(positions)`` yielding ``(positions, images)``,
    e.g. :class:`~..data.ImageQueries`), so that only a chunk is in memory.
    ``indices``: each query's index in its data set (default 0..M-1): its noise stream and the
    ``index`` of its record, so a query's result does not depend on which others are selected.
    ``out``: a folder name, or a :class:`~.folder.RunFolder` the caller already holds (and closes).

    With ``resume=True`` a folder holding part of the same run (same parameters and
    ``identity``) is continued: its certified queries are kept, the others certified, and the
    result is identical to an uninterrupted run. Raises :class:`~..errors.InputError` for a
    folder in use, of another run, or damaged, and for running out of memory;
    :class:`~.skeleton.RunInterrupted` on Ctrl-C (results so far are kept).

    ``coordinator``: a :class:`~.coordinator.GroupCoordinator` when this process is one rank of
    a torchrun run (every rank calls this with the same arguments; records are the same as one
    process's, whatever the number of ranks). Rank 0 returns the summary, the other ranks None.
    """
    config = CertifyConfig.of(config, **settings)
    if not hasattr(queries, "iter_chunks") and not hasattr(queries, "shape"):
        queries = np.asarray(queries)
    labels = np.asarray(labels, dtype=np.int64)
    m = int(len(queries))
    indices = check_indices("certify_to_folder", indices, m)
    params = run_parameters(retriever, config, num_queries=m, identity=identity)

    def work(block, progress):
        for positions, xt in query_chunks(queries, block):
            for cert in retriever.iter_certify(xt, labels[positions], config, indices=indices[positions],
                                               exclude=None if exclude is None else np.asarray(exclude)[positions],
                                               on_batch=progress.samples):
                yield cert.to_dict(), cert.samples

    def summarize(records, session: Session) -> dict:
        certs = [QueryCertificate.from_dict(r) for r in records]
        return run_summary(certs, params, list(config.radii), device=retriever.device, session_queries=session.queries,
                           session_seconds=session.seconds, session_samples=session.samples)

    return run_in_folder(out, params, indices, work, summarize=summarize, write_reports=write_reports, resume=resume,
                         quiet=quiet, memory=_MEMORY, coordinator=coordinator,
                         first_round_rows=config.first_round_samples(), batch_size=retriever.batch_size)
