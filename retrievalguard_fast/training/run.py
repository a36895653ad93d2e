"""A training run kept in a folder: :func:`train_to_folder` trains into it, checkpoints after every
epoch, resumes after any interruption (even SIGKILL) with the weights an uninterrupted run has.

The folder holds

- ``checkpoint.pt``: after each epoch, the model, the loss's parameters, both optimizers' states
  and the history (written atomically: a kill leaves the previous epoch's);
- ``train.json``: the parameters (every setting, the data's and the backbone's identity), the
  history (per epoch: loss, consistency spread, clean Recall@1, seconds) and versions;
- ``model.pt``: at the end, TorchScript that ``certify --model`` takes as it is, carrying the
  training record (sigma first) as its extra file :data:`~.model.EXTRA_FILE`;
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
from ..kernels import nn_search
from ..runs import RunFolder
from ..runs.folder import refuse_other_parameters
from .config import TrainConfig
from .model import build_embedder, export_torchscript
from .objective import Objective, noisy_copies
from .parallel import DataParallel
from .sampler import check_per_class, epoch_batches

CHECKPOINT, TRAIN_JSON, MODEL = "checkpoint.pt", "train.json", "model.pt"
#: Test hook: the run kills itself (SIGKILL) right after saving this epoch's checkpoint.
KILL_AFTER_EPOCH = "RGF_TEST_TRAIN_KILL_AFTER_EPOCH"


def _versions() -> dict:
    import pytorch_metric_learning

    from .. import __version__

    return {"retrievalguard_fast": __version__, "torch": torch.__version__,
            "pytorch_metric_learning": pytorch_metric_learning.__version__, "python": platform.python_version()}


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 0x746F7263]).integers(2**62))  # "torc"


def embed_all(model, data, batch_size: int, device) -> torch.Tensor:
    """Clean embeddings of every image of ``data``, in order, with the model in eval mode."""
    model.eval()
    order = np.arange(len(data))
    out = []
    with torch.no_grad():
        for x in data.batches([order[a:a + batch_size] for a in range(0, len(order), batch_size)]):
            out.append(model(x.to(device)).cpu())
    return torch.cat(out)


def recall_at_1(model, data, batch_size: int, device) -> float:
    """Clean leave-one-out Recall@1 on ``data``, with the package's exact 1-NN kernel (the clean
    Recall@1 certify reports for the same data as queries and gallery)."""
    e = embed_all(model, data, batch_size, device).contiguous()
    index1 = nn_search(e, e, exclude=torch.arange(len(e)))[0].numpy()
    return float(np.mean(data.labels[index1] == data.labels))


def _set_train_mode(model, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:  # Roth et al.'s frozen BatchNorm: running statistics stay those of the pretrained backbone
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


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
    """Train on ``data`` (:class:`~..data.TrainData`) into the folder ``out`` and return train.json's
    content (None on the ranks other than 0 of a torchrun group). ``val``: images whose clean
    Recall@1 is reported after each epoch (default: the training images themselves,
    leave-one-out). Bad input raises :class:`~..errors.InputError` before ``out`` is created or
    changed; a folder of another run, or in use, before anything in it changes but its lock."""
    device = torch.device(device)
    parallel = DataParallel.for_this_process(device)
    if device.type == "cuda" and parallel.world > 1:  # one GPU per rank
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    check_per_class(data.labels, config.per_class, config.batch_size, data.what)
    classes, positions = np.unique(data.labels, return_inverse=True)
    targets = torch.as_tensor(positions, dtype=torch.int64)
    torch.manual_seed(config.seed)  # the model's initial weights (lazy layers are initialised on the example)
    example = next(data.batches([np.arange(min(2, len(data)))]))
    model, features = build_embedder(config.backbone, config.weights, example, config.embedding_dim)
    model = model.to(device)
    objective = Objective(config.loss, len(classes), config.consistency, config.noise_copies).to(device)
    params = {**config.to_dict(), "data": data.identity, "num_images": len(data), "num_classes": len(classes),
              "validation": val.identity if val is not None else "train (leave-one-out)",
              "backbone_features": features, "world_size": parallel.world}
    if config.weights is not None:
        from ..data import file_digest

        params["weights_sha256"] = file_digest(config.weights)
    parallel.check_same_parameters(params)
    optimizers = [torch.optim.Adam(model.parameters(), lr=config.lr)]
    if list(objective.parameters()):
        optimizers.append(torch.optim.Adam(objective.parameters(), lr=config.loss_lr))

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
            model.load_state_dict(state["model"])
            objective.load_state_dict(state["objective"])
            for opt, s in zip(optimizers, state["optimizers"]):
                opt.load_state_dict(s)
            history, start = state["history"], state["epoch"]
        record = {"parameters": params, "history": history, "versions": _versions(), "complete": False}
        for epoch in range(start, config.epochs):
            started = time.perf_counter()
            torch.manual_seed(_epoch_seed(config.seed, epoch))
            _set_train_mode(model, config.freeze_bn)
            objective.train()
            batches = epoch_batches(data.labels, config.per_class, config.batch_size, config.seed, epoch)
            totals = np.zeros(3)
            for idx, x in parallel.steps(batches, data, quiet=quiet, desc=f"epoch {epoch + 1}/{config.epochs}"):
                for opt in optimizers:
                    opt.zero_grad(set_to_none=False)
                if idx is not None:
                    noisy = noisy_copies(x.to(device), idx, config.sigma, config.noise_copies, config.seed, epoch)
                    loss, metric, sp = objective(model(noisy), targets[idx].to(device))
                    loss.backward()
                    totals += len(idx) * np.array([float(loss.detach()), float(metric.detach()),
                                                   float(sp.detach()) if sp is not None else 0.0])
                parallel.average_gradients([model, objective], idx is not None)
                for opt in optimizers:
                    opt.step()
                parallel.after_step([model, objective])
            totals = parallel.sum(totals)
            entry = {"epoch": epoch + 1, "loss": totals[0] / len(data), "metric_loss": totals[1] / len(data)}
            if config.noise_copies > 1:
                entry["spread"] = totals[2] / len(data)  # mean 1 - |F|^2 over the epoch's images
            if parallel.leader:
                entry["recall_at_1"] = recall_at_1(model, val if val is not None else data, config.batch_size, device)
            entry["seconds"] = time.perf_counter() - started
            history.append(entry)
            if parallel.leader:
                state = {"epoch": epoch + 1, "model": model.state_dict(), "objective": objective.state_dict(),
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
            extra = {"sigma": config.sigma, "training": {k: params[k] for k in (
                "backbone", "embedding_dim", "loss", "epochs", "consistency", "noise_copies", "seed", "data")}}
            atomic_write(os.path.join(out, MODEL), lambda f: export_torchscript(model, example, extra, f), binary=True)
            atomic_write(json_path, lambda f: json.dump(record, f, indent=2))
        parallel.barrier()
        return record if parallel.leader else None
    finally:
        if folder is not None:
            folder.close()
