"""A training run kept in a folder: :func:`train_to_folder` trains into it, checkpoints after every
epoch, resumes after any interruption (even SIGKILL) with the weights an uninterrupted run has.

What is trained is a task's (:mod:`~.tasks`: an embedding model, or a denoiser for a frozen
encoder); this loop, the folder and the resume are the same for both. The folder holds

- ``checkpoint.pt``: after each epoch, the trained modules (for an embedding model also the
  loss's parameters), the optimizers' states and the history (written atomically: a kill leaves
  the previous epoch's);
- ``train.json``: the parameters (every setting, the data's and the backbone's identity), the
  history (per epoch: the loss and its terms, the validation, seconds), the output's name and
  versions;
- ``model.pt`` (or ``denoiser.pt``): at the end, TorchScript that ``certify --model`` (or
  ``--denoiser``) takes as it is, carrying the training record (sigma first) as its extra file
  :data:`~.model.EXTRA_FILE`;
- ``.lock``: held while a run uses the folder (:class:`~..runs.RunFolder`).

Why a resume is exact: an epoch's batches (:func:`~.sampler.epoch_batches`) and noise
(:func:`~.objective.noisy_copies`) depend only on the seed and the epoch, torch's generator (the
miner's sampling, dropout) is reseeded from them at the start of every epoch, and everything else
that changes is in the checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import time
from typing import Optional

import numpy as np
import torch

from ..durable import atomic_write
from ..errors import OUT, RESUME, InputError
from ..runs import RunFolder
from ..runs.folder import refuse_other_parameters
from .config import TrainConfig
from .parallel import DataParallel
from .tasks import DenoiserTask, EmbeddingTask

CHECKPOINT, TRAIN_JSON = "checkpoint.pt", "train.json"
#: Test hook: the run kills itself (SIGKILL) right after saving this epoch's checkpoint.
KILL_AFTER_EPOCH = "RGF_TEST_TRAIN_KILL_AFTER_EPOCH"


def _versions() -> dict:
    import pytorch_metric_learning

    from .. import __version__

    return {"retrievalguard_fast": __version__, "torch": torch.__version__,
            "pytorch_metric_learning": pytorch_metric_learning.__version__, "python": platform.python_version()}


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 0x746F7263]).integers(2**62))  # "torc"


def make_task(config: TrainConfig, data, example: torch.Tensor, device):
    """The :mod:`~.tasks` task of ``config``: a denoiser's (the ``--encoder`` loaded here, as
    certify loads ``--model``) or an embedding model's."""
    if config.denoiser_objective is None:
        return EmbeddingTask(config, data, example, device)
    from ..data import load_model

    encoder, encoder_id = load_model(config.encoder, "--encoder")
    return DenoiserTask(config, data, example, device, encoder, encoder_id)


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise InputError(f"{{out}} {os.path.dirname(path)}: {path} is damaged ({exc}); choose a new {{out}}", out=OUT) from None


def train_to_folder(out: str, data, config: TrainConfig, *, val=None, device="cpu", resume: bool = False,
                    quiet: bool = False) -> Optional[dict]:
    """Train on ``data`` (:class:`~..data.TrainData`) into the folder ``out`` what ``config`` says
    (an embedding model, or with ``denoiser_objective`` a denoiser for ``config.encoder``) and
    return train.json's content (None on the ranks other than 0 of a torchrun group). ``val``:
    the images validated after each epoch (the task's Recall@1, leave-one-out; default: the
    training images themselves). Bad input raises :class:`~..errors.InputError` before ``out``
    is created or changed; a folder of another run, or in use, before anything in it changes but
    its lock."""
    device = torch.device(device)
    parallel = DataParallel.for_this_process(device)
    if device.type == "cuda" and parallel.world > 1:  # one GPU per rank
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    torch.manual_seed(config.seed)  # the initial weights (lazy layers are initialised on the example)
    example = next(data.batches([np.arange(min(2, len(data)))]))
    task = make_task(config, data, example, device)
    params = {**config.to_dict(), "data": data.identity, "num_images": len(data),
              "validation": val.identity if val is not None else "train (leave-one-out)", **task.params,
              "world_size": parallel.world}
    if config.weights is not None:
        from ..data import file_digest

        params["weights_sha256"] = file_digest(config.weights)
    parallel.check_same_parameters(params)
    optimizers = task.optimizers()

    folder = None
    try:
        history, start = [], 0
        ckpt_path, json_path = os.path.join(out, CHECKPOINT), os.path.join(out, TRAIN_JSON)

        def open_folder():  # rank 0's: the lock, then what the folder already holds
            nonlocal folder
            folder = RunFolder(out)
            previous = _read_json(json_path)
            if previous is not None or os.path.exists(ckpt_path):
                if previous is not None:
                    refuse_other_parameters(out, "a training run", previous.get("parameters") or {}, params)
                if not resume:
                    raise InputError(f"{{out}} {out} already holds this training run; pass {{resume}} to continue it "
                                     "or choose a new {out}", out=OUT, resume=RESUME)

        parallel.leader_decides(open_folder)
        if os.path.exists(ckpt_path):
            state = torch.load(ckpt_path, map_location=device, weights_only=False)
            # A checkpoint of an embedding run written before tasks existed: its model, then its loss.
            saved_states = state["trained"] if "trained" in state else [state["model"], state["objective"]]
            for module, saved in zip(task.trained, saved_states):
                module.load_state_dict(saved)
            for opt, s in zip(optimizers, state["optimizers"]):
                opt.load_state_dict(s)
            history, start = state["history"], state["epoch"]
        record = {"parameters": params, "output": task.output, "history": history, "versions": _versions(),
                  "complete": False}
        for epoch in range(start, config.epochs):
            started = time.perf_counter()
            torch.manual_seed(_epoch_seed(config.seed, epoch))
            task.train_mode()
            sums: dict = {}  # each term's sum over the epoch's images (term = batch mean x batch size)
            for idx, x in parallel.steps(task.batches(epoch), data, quiet=quiet, desc=f"epoch {epoch + 1}/{config.epochs}"):
                for opt in optimizers:
                    opt.zero_grad(set_to_none=False)
                if idx is not None:
                    loss, terms = task.step(idx, x, epoch)
                    loss.backward()
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + len(idx) * float(v.detach())
                parallel.average_gradients(task.trained, idx is not None)
                for opt in optimizers:
                    opt.step()
                parallel.after_step(task.trained)
            # Every rank sums the same terms in the same order (a rank may have had no batch).
            totals = parallel.sum(np.array([sums.get(k, 0.0) for k in task.step_terms]))
            entry = {"epoch": epoch + 1, **{k: float(v) / len(data) for k, v in zip(task.step_terms, totals)}}
            if parallel.leader:
                entry.update(task.validate(val if val is not None else data))
            entry["seconds"] = time.perf_counter() - started
            history.append(entry)
            if parallel.leader:
                state = {"epoch": epoch + 1, "trained": [m.state_dict() for m in task.trained],
                         "optimizers": [opt.state_dict() for opt in optimizers], "history": history}
                atomic_write(ckpt_path, lambda f: torch.save(state, f), binary=True)
                atomic_write(json_path, lambda f: json.dump(record, f, indent=2))
                if not quiet:
                    shown = ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if k not in ("epoch", "seconds"))
                    print(f"epoch {epoch + 1}/{config.epochs}: {shown} ({entry['seconds']:.1f} s)", file=sys.stderr,
                          flush=True)
                if os.environ.get(KILL_AFTER_EPOCH) == str(epoch + 1):
                    os.kill(os.getpid(), signal.SIGKILL)
            parallel.barrier()
        record["complete"] = True
        if parallel.leader:
            atomic_write(os.path.join(out, task.output), lambda f: task.export(example, params, f), binary=True)
            atomic_write(json_path, lambda f: json.dump(record, f, indent=2))
        parallel.barrier()
        return record if parallel.leader else None
    finally:
        if folder is not None:
            folder.close()
