"""An attack run kept in a folder: :func:`attack_to_folder` attacks queries into it through the
run skeleton (:func:`~.skeleton.run_in_folder`), one record per query, resumable at any moment,
and sets a certify run's certificates beside the attack (:func:`certified_records`)."""

from __future__ import annotations

import hashlib
import json
from typing import Dict, Optional, Sequence

import numpy as np

from ..attack import AttackConfig, Attacker, attack_summary, check_clip, write_attack_reports
from ..errors import BATCH_SIZE, CERTIFIED, EOT, InputError
from ..smoothing.record import is_certify_record
from .folder import FORMAT_KEY, read_run
from .skeleton import OutOfMemoryHint, Session, check_indices, query_chunks, run_in_folder

#: Version of the attack's record format (docs/attack.md, "Records"), recorded in its run.json.
#: 2: each record's ``certified`` list (every certified claim attacked at its own radius).
ATTACK_RECORD_FORMAT = 2
_MEMORY = OutOfMemoryHint("attacking a query in batches of batch_size model rows", "{batch_size} (or {eot})",
                          {"batch_size": BATCH_SIZE, "eot": EOT})


def certified_records(folder: str, identity: dict, sigma: float, model_stage: dict) -> Dict[int, dict]:
    """The records of a certify results folder over the same queries, model and sigma (else an
    InputError naming ``certified``), by query index."""
    params, records = read_run(folder, CERTIFIED)
    if params.get("command", "certify") != "certify" or not all(is_certify_record(r) for r in records):
        raise InputError(f"{{certified}} {folder}: not a folder of certify results (it holds {params.get('command')!r} "
                         "records); pass the out folder of a certify run", certified=CERTIFIED)
    # The same model and data; the selection (every/max_queries) may differ: records are keyed
    # by the query's index in its data set, and the summary compares the queries both runs hold.
    same = {k: v for k, v in identity.items() if k != "selection"}
    differ = [k for k in same if params.get(k) != same[k]]
    if params.get("sigma") != sigma:
        differ.append(f"sigma {params.get('sigma')} != {sigma}")
    if params.get("model_stage", model_stage) != model_stage:
        differ.append("model_stage")
    if differ:
        raise InputError(f"{{certified}} {folder}: not a run over the same model, queries and sigma ({', '.join(differ)} "
                         "differ); certify the same model, queries, gallery and sigma first", certified=CERTIFIED)
    return {int(r["index"]): r for r in records}


def _digest(records) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def attack_to_folder(out, retriever, queries, labels, *, identity: dict, config: AttackConfig,
                     exclude: Optional[np.ndarray] = None, indices: Optional[Sequence[int]] = None,
                     certified: Optional[str] = None, resume: bool = False, quiet: bool = False) -> dict:
    """Attack every query into the folder ``out`` (run.json, results.jsonl: one record per query,
    flushed and fsync'ed as it finishes; summary.json / .csv; attack_vs_certified.png) and
    return the summary. ``out``: a folder name or a :class:`~.folder.RunFolder` the caller
    holds. ``queries``: an array (M, *input_shape) or a source read in chunks (as for
    :func:`~.certify_run.certify_to_folder`). ``indices``: each query's index in its data set
    (default 0..M-1), which keys its randomness and names its record, so ``resume=True`` continues
    an interrupted run with identical results. ``certified``: a certify results folder over the
    same queries; its certified Recall@1 is set beside the empirical one and every certified
    query is checked against the attack (:func:`~..attack.soundness_alarm`)."""
    labels = np.asarray(labels, dtype=np.int64)
    m = int(len(queries))
    exclude = np.full(m, -1, np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    indices = check_indices("attack_to_folder", indices, m)
    params = {"command": "attack", **identity, "sigma": float(str(np.float32(retriever.sigma))), **config.to_dict(),
              "num_queries": m, "device_type": retriever.device.type, "batch_size": retriever.batch_size,
              "model_stage": retriever.model_stage, FORMAT_KEY: ATTACK_RECORD_FORMAT}
    cert = None if certified is None else certified_records(certified, identity, params["sigma"], retriever.model_stage)
    # The claims attacked are part of what a record is: a resume against other certificates is refused.
    params["certified_digest"] = None if cert is None else _digest([cert[i] for i in sorted(cert)])
    attacker = Attacker(retriever, config)
    if not hasattr(queries, "iter_chunks"):  # an array: checked whole before the folder is touched
        check_clip(queries, config.clip, "the queries")

    def work(block, progress):
        for positions, xs in query_chunks(queries, block):
            for k, x in zip(positions, xs):
                index = int(indices[k])
                check_clip(x, config.clip, f"query {index}")
                record = attacker.attack_query(x, index, int(labels[k]), int(exclude[k]),
                                               certified=None if cert is None else cert.get(index))
                drawn = record["attack_rows"] + record["test_samples"]
                progress.samples(drawn)
                yield record, drawn

    def summarize(records, session: Session) -> dict:
        return attack_summary(records, params, cert, certified_folder=certified, device=retriever.device,
                              session_queries=session.queries, session_seconds=session.seconds)

    return run_in_folder(out, params, indices, work, summarize=summarize, write_reports=write_attack_reports,
                         resume=resume, quiet=quiet, memory=_MEMORY)
