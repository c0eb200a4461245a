"""Work that many streams share, done once: the untouched model's scores and naive's first task.

Every stream starts by scoring the pretrained model (row ``b`` of the score matrix), the same for every method. And
a method that trains its first task exactly as naive does (EWC, online EWC and MAS have no anchor yet, A-GEM no
memory, LwF on classification no old head: ``Method.first_task_as_naive``) starts with the same optimiser steps as
naive, and, where its end-of-task work leaves the weights alone and it scores through the plain forward, with the
same scores right after them. Both are deterministic functions of their inputs, so they are computed once and kept under
``runs/cache/reuse/``, keyed by a hash of everything they read:

- the model's weights and buffers, the data (the test columns; the first task's training rows), the batch sizes, the
  training budget, the loader's seed, which parameters train at which learning rate;
- the global RNG state they start from, which they also advance (a DataLoader draws a seed from it; dropout reads
  it): the cache keeps the state they end at and restores it;
- this package's source, the torch and transformers versions, the device, the CPU kernels
  (``torch.backends.cpu.get_cpu_capability()``) and the thread count, any of which can move the last bits.

A stream that finds them gives the same numbers bit for bit as one that recomputes them (``tests/test_reuse.py``);
it reports the first task's training seconds as they were measured when it was trained, and lists what it reused
(``StreamResult.reused``). ``CL_REUSE=0`` turns reuse off (everything is recomputed, nothing is written).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .distributed import world_size
from .paths import cache_dir
from .training import TrainLog

__all__ = ["enabled", "digest", "before_scores", "first_task"]

_VERSION = 1  # bump when what is kept changes


def enabled() -> bool:
    """False when the environment says ``CL_REUSE=0`` (or ``false``/``no``/``off``), and in a distributed run
    (several processes: what one process kept is not what DDP computes bit for bit, and only rank 0 may write)."""
    off = os.environ.get("CL_REUSE", "1").strip().lower() in ("0", "false", "no", "off")
    return not off and world_size() == 1


class Unhashable(TypeError):
    """Something a key needs has no stable digest (an object this module does not know): the work is redone."""


def _feed(h: "hashlib._Hash", obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        h.update(f"N{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(f"[{len(obj)}".encode())
        for x in obj:
            _feed(h, x)
        h.update(b"]")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(type(obj).__qualname__.encode())
        _feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    elif isinstance(obj, torch.utils.data.Dataset) and hasattr(obj, "__dict__"):
        h.update(type(obj).__qualname__.encode())  # a dataset of tensors (LMBlocks, TextClassification): its fields
        _feed(h, vars(obj))
    else:
        raise Unhashable(f"no digest for a {type(obj).__qualname__}")


def digest(*parts: Any) -> str:
    """A hex digest of ``parts`` (tensors by dtype, shape and bytes; containers, dataclasses and datasets of
    tensors by content). Raises :class:`Unhashable` for anything else."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        _feed(h, part)
    return h.hexdigest()


_SOURCE: str | None = None


def _source_digest() -> str:
    """This package's source: any change to it (scoring, training, models) invalidates what was kept."""
    global _SOURCE
    if _SOURCE is None:
        root = Path(__file__).resolve().parent
        h = hashlib.blake2b(digest_size=16)
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
        _SOURCE = h.hexdigest()
    return _SOURCE


def _environment(device: torch.device) -> dict[str, Any]:
    import transformers

    return {"version": _VERSION, "source": _source_digest(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": device.type,
            "cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_key(state: dict[str, Any]) -> Any:
    numpy_state = state["numpy"]
    return [state["torch"], [numpy_state[0], numpy_state[1], *numpy_state[2:]], repr(state["python"]),
            state.get("cuda")]


def _folder() -> Path:
    return cache_dir() / "reuse"


def _key(kind: str, *parts: Any) -> str | None:
    try:
        return f"{kind}-{digest(*parts)}"
    except Unhashable:
        return None


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


def before_scores(model: torch.nn.Module, columns: list, batch_size: int, compute: Callable[[], list[float]],
                  *, tag: str, kind: str = "before") -> tuple[list[float], bool]:
    """``compute()`` (the model's test scores through its plain forward: the untouched model's, or ``kind=
    "after-first"`` right after naive's first task) or the kept copy of its result; and whether it was kept.

    ``columns``: the test datasets it scores; ``tag``: what else tells two computations apart (the benchmark and
    its score function)."""
    if not enabled():
        return compute(), False
    device = next(model.parameters()).device
    rng = _rng_state()
    key = _key(kind, _environment(device), tag, batch_size, _model_state(model), columns, _rng_key(rng))
    path = _folder() / f"{key}.pt" if key else None
    if path is not None and path.exists():
        kept = torch.load(path, weights_only=False)
        _set_rng_state(kept["rng_after"])
        return kept["scores"], True
    scores = compute()
    if path is not None:
        _save(path, {"scores": [float(s) for s in scores], "rng_after": _rng_state()})
    return scores, False


def first_task(model: torch.nn.Module, groups: list[dict], loader: torch.utils.data.DataLoader, spec: Any,
               loader_seed: int, train: Callable[[], Any], *, tag: str, progress: bool = True) -> tuple[Any, bool]:
    """``train()`` (naive's first task: it returns a :class:`cl_utils.training.TrainLog`) or the kept copy of its
    outcome (the trained weights, the losses, the seconds it took and the RNG state it ended at); and whether it
    was kept. ``groups``: the AdamW parameter groups; ``loader``: the batches (its dataset, batch size and
    collate); ``loader_seed``: its shuffling seed; ``tag``: what else tells two runs apart."""
    if not enabled():
        return train(), False
    device = next(model.parameters()).device
    names = {id(p): n for n, p in model.named_parameters()}
    shape = [{"params": [names.get(id(p), "?") for p in g["params"]], "lr": g.get("lr")} for g in groups]
    rng = _rng_state()
    collate = getattr(loader.collate_fn, "__qualname__", type(loader.collate_fn).__qualname__)
    key = _key("first-task", _environment(device), tag, shape, spec, loader.dataset, loader.batch_size, loader_seed,
               collate, _model_state(model), _rng_key(rng))
    path = _folder() / f"{key}.pt" if key else None
    if path is not None and path.exists():
        kept = torch.load(path, map_location=device, weights_only=False)
        model.load_state_dict(kept["state"])
        _set_rng_state(kept["rng_after"])
        if progress:
            print(f"task 1: the same {len(kept['losses'])} steps as naive's first task, reused "
                  f"(trained in {kept['seconds']:.1f} s; CL_REUSE=0 retrains)")
        return TrainLog(losses=kept["losses"], seconds=kept["seconds"]), True
    log = train()
    if path is not None:
        state = {k: v.detach().to("cpu").clone() for k, v in _model_state(model).items()}
        _save(path, {"state": state, "losses": list(log.losses), "seconds": float(log.seconds),
                     "rng_after": _rng_state()})
    return log, False


def _save(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a half-written file is never read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
