"""The diagonal Fisher (EWC's consolidation) against the floor, a plain loop, vmap and Opacus, on three models.

The floor is one ordinary batched forward+backward over the same rows: what a Fisher cannot beat. Every Fisher
here is the per-token one of :func:`cl_utils.fisher.diagonal_fisher` (each row's squared summed-NLL gradient over
its number of predicted tokens), exact to float rounding (``tests/test_fisher.py``).

* embedded GPT-2, 64 blocks of 128 tokens: ``diagonal_fisher`` <= 1.2x the floor;
* a MiniLM-sized BERT classifier (6 layers, d = 384, vocabulary 30,522), 64 texts of 32 tokens: <= 1.5x the floor
  and >= 2x faster than the per-example loop;
* both: extra peak memory <= the floor's;
* SmolLM2-135M (when the ``smollm2`` extra is installed; not with ``--quick``), 8 blocks of 128: never slower than
  the loop.

Opacus's ``GradSampleModule`` (per-example gradients kept per parameter, squared afterwards) is an optional peer:
its rows appear when ``opacus`` imports, and a note says so when it does not.

Each ratio is timed with its two pieces alternating alone (``compare(..., pairwise=True)``): the loop, vmap and
Opacus allocate and free 0.1-2.3 GB per call, and what that does to the caches and memory fell on their neighbour in
a round-robin of all pieces (the BERT Fisher measured 1.3-1.5x the floor beside it alone, up to 2.2x beside the loop).
"""
from __future__ import annotations

import copy
import dataclasses
import warnings

import torch
import torch.nn.functional as F
from transformers import BertConfig

from cl_utils.classifier import MultiHeadClassifier
from cl_utils.fisher import diagonal_fisher

from .common import Row, Setup, compare, note

CHUNK = 16  # rows per forward for every Fisher (the default of diagonal_fisher)


def loop_fisher(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference: one backward per example, squared, weighted by its predicted tokens, averaged."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    n_rows = batch["input_ids"].shape[0]
    for i in range(n_rows):
        row = {k: v[i:i + 1] for k, v in batch.items()}
        tokens = row["labels"].shape[-1] - 1 if row["labels"].ndim == 2 else 1  # full blocks: every shifted label
        model.zero_grad(set_to_none=True)
        model(**row).loss.backward()
        for n, p in params.items():
            acc[n] += tokens * p.grad.square()
    return {n: a / n_rows for n, a in acc.items()}


def _summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over rows of each row's summed NLL (causal LM: shifted), the loss whose per-example gradients Opacus keeps."""
    if labels.ndim == 2:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")


def opacus_fisher(model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk: int = CHUNK):
    """The same Fisher through Opacus's ``GradSampleModule`` (None when Opacus is not installed)."""
    try:
        from opacus import GradSampleModule
    except ImportError:
        return None
    model = copy.deepcopy(model)  # Opacus hooks the module it wraps: keep them off the model the others time
    wrapped = GradSampleModule(model, loss_reduction="sum").train()  # Opacus records only in train mode;
    # the benchmark models have no dropout, so this is the same function
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    n_rows, lm = batch["input_ids"].shape[0], batch["labels"].ndim == 2

    def fisher() -> dict[str, torch.Tensor]:
        acc = {n: torch.zeros_like(p) for n, p in params.items()}
        for start in range(0, n_rows, chunk):
            rows = {k: v[start:start + chunk] for k, v in batch.items()}
            labels = rows.pop("labels")
            if lm:  # HF passes position ids (1, L), which Opacus would read as a batch of one: give (B, L)
                L = labels.shape[1]
                rows["position_ids"] = torch.arange(L, device=labels.device).expand(labels.shape[0], L)
            extra = {"task_ids": rows.pop("task_ids")} if "task_ids" in rows else {}
            wrapped.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # its full backward hooks fire on outputs (no input needs a gradient)
                warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
                _summed_nll(wrapped(**rows, **extra).logits, labels).backward()
            weight = 1.0 / (labels.shape[1] - 1) if lm else 1.0
            for n, p in params.items():
                acc[n] += p.grad_sample.square().sum(0) * weight
                p.grad_sample = None
        return {n: a / n_rows for n, a in acc.items()}
    return fisher


def _fails(fn) -> str | None:
    """None when ``fn()`` runs, else the error in one line (a peer's limits are reported, not fatal)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 -- any failure of the optional peer becomes a note
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return None


def bert(setup: Setup) -> MultiHeadClassifier:
    """A MiniLM-sized classifier (all-MiniLM-L6-v2's shapes, random weights: cost depends on shapes), two heads."""
    torch.manual_seed(0)
    size = (dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
            if setup.quick else dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=1536))
    model = MultiHeadClassifier(BertConfig(**size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                           task_num_labels=[4, 6]))
    return model.to(setup.device).eval()


def texts(setup: Setup, n: int, length: int, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 4, (n,), generator=g),
             "task_ids": torch.zeros(n, dtype=torch.long)}
    return {k: v.to(setup.device) for k, v in batch.items()}


def smollm2(setup: Setup) -> torch.nn.Module | None:
    """SmolLM2-135M from the ``smollm2`` extra (None, with a note, when it is not installed)."""
    from cl_utils.config import PROFILES
    from cl_utils.gguf_model import MissingExtraError
    from cl_utils.models import load_base

    try:
        return load_base(PROFILES["smollm2"], progress=False).fresh(torch.device(setup.device)).eval()
    except (MissingExtraError, ImportError) as e:
        note(f"fisher: SmolLM2 rows skipped ({type(e).__name__}: {e})")
        return None


def _workload(name: str, model: torch.nn.Module, data: dict[str, torch.Tensor], setup: Setup, repeats: int, *,
              targets: dict[str, tuple[str, float]], against: dict[str, str], memory_targets: dict[str, float],
              peers: bool = True) -> list[Row]:
    n = data["input_ids"].shape[0]
    shape = f"{n} × {data['input_ids'].shape[1]}"

    def floor():
        model.zero_grad(set_to_none=True)
        model(**data).loss.backward()

    fns = {"floor": lambda: floor,
           "fisher": lambda: lambda: diagonal_fisher(model, [data], chunk_size=CHUNK),
           "vmap": lambda: lambda: diagonal_fisher(model, [data], chunk_size=CHUNK, engine="vmap"),
           "loop": lambda: lambda: loop_fisher(model, data)}
    labels = {"floor": f"{name}: batched forward+backward ({shape})",
              "fisher": f"{name}: Fisher, `diagonal_fisher` (default: hooks, {CHUNK} rows per forward)",
              "vmap": f"{name}: Fisher, `diagonal_fisher(engine=\"vmap\")` (info)",
              "loop": f"{name}: Fisher, per-example loop"}
    if peers:
        opacus = opacus_fisher(model, data)
        if opacus is None:
            note(f"fisher: Opacus rows skipped on {name} (opacus is not installed; it is an optional peer)")
        elif (failure := _fails(opacus)) is not None:
            note(f"fisher: Opacus rows skipped on {name}: it fails on this model ({failure})")
        else:
            fns["opacus"] = lambda: opacus
            labels["opacus"] = f"{name}: Fisher, Opacus `GradSampleModule` ({CHUNK} rows per forward, info)"
            against = {**against, "opacus": "floor"}
    rows = compare(fns, against, labels, {k: repeats for k in fns}, setup.device, modules=[model], targets=targets,
                   pairwise=True)
    by_label = {labels[k]: k for k in fns}
    return [dataclasses.replace(r, target=("<=", memory_targets[by_label[r.name]]))
            if r.kind == "memory" and by_label.get(r.name) in memory_targets else r for r in rows]


def rows(setup: Setup) -> list[Row]:
    q = setup.quick
    lm = setup.model()
    lm.eval()  # the Fisher runs without dropout; time the floor and the loop the same way
    out = _workload("GPT-2", lm, setup.blocks(16 if q else 64, 32 if q else 128, lm.config.vocab_size), setup,
                    3 if q else 5, targets={"fisher": ("<=", 1.2)}, memory_targets={"fisher": 1.0},
                    against={"fisher": "floor", "vmap": "floor", "loop": "floor"})
    model = bert(setup)
    out += _workload("BERT", model, texts(setup, 16 if q else 64, 16 if q else 32, model.config.vocab_size), setup,
                     3 if q else 5, targets={"fisher": ("<=", 1.5), "loop": (">=", 2.0)},
                     memory_targets={"fisher": 1.0}, against={"fisher": "floor", "vmap": "floor", "loop": "fisher"})
    if not q:
        smol = smollm2(setup)
        if smol is not None:
            data = setup.blocks(8, 128, smol.config.vocab_size)
            out += _workload("SmolLM2", smol, data, setup, 2, targets={"fisher": ("<=", 1.0)}, memory_targets={},
                             against={"fisher": "loop", "vmap": "loop", "floor": "loop"}, peers=False)
    return out
