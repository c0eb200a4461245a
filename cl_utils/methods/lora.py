"""LoRA for continual learning, through ``peft``: one shared adapter, one adapter per task, and O-LoRA.

LoRA (Hu et al. 2021) adds ``scaling * B A x`` to a frozen weight ``W`` with ``A: (r, in)``, ``B: (out, r)``,
``scaling = alpha / r``; ``B`` starts at zero, so a new adapter starts as the identity edit.

- :class:`SequentialLoRA` trains one adapter through the whole stream: forgetting happens inside it.
- :class:`PerTaskLoRA` gives each task its own adapter and evaluates task ``j`` with adapter ``j``
  (task identity is known): no forgetting by construction, at the price of needing the task id.
- :class:`OLoRA` (Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning",
  arXiv:2310.14152) trains a new adapter per task, keeps the earlier ones frozen but active, pushes the new
  ``A`` rows towards orthogonality with the old ones, and sums all adapters at inference (no task identity).
  ``OLoRA(lambda_orth=0)`` is its ablation ``olora_no_penalty``: the same training without that penalty.

The base weights never change in any variant (peft freezes them). A model with one head per task
(:class:`cl_utils.classifier.MultiHeadClassifier`) trains task ``k``'s head with task ``k``'s adapter, without LoRA,
and freezes it when the task ends. In peft 0.21 a ``LoraLayer`` forward is
``base_layer(x) + sum over active adapters of lora_B(lora_A(dropout(x))) * scaling``, so several active adapters
add up; ``set_adapter`` also sets ``requires_grad=True`` on every active adapter (and so does leaving
``disable_adapter()``), so these methods re-freeze what must not train after every such call.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from ..benchmark import Benchmark, Task
from .base import Method, train_head

__all__ = ["LORA_TARGETS", "lora_targets", "lora_config", "adapter_name", "adapter_parameters", "lora_A_matrices",
           "orthogonality_penalty", "merged_model", "trainable_parameter_report", "adapter_size_on_disk",
           "SequentialLoRA", "PerTaskLoRA", "OLoRA"]

# Modules given LoRA, by ``model.config.model_type``. peft matches a name on its last components, so GPT-2's
# "c_proj" hits both attn.c_proj (attention output) and mlp.c_proj (MLP down-projection): intended.
# GPT-2 uses transformers' Conv1D (weight stored (in, out)): lora_config sets fan_in_fan_out=True for it.
# Only these modules get LoRA: heads (lm_head, BERT's classifier) stay as they are.
LORA_TARGETS: dict[str, list[str]] = {"gpt2": ["c_attn", "c_proj"], "bert": ["query", "value"],
                                      "llama": ["q_proj", "v_proj"]}


def lora_targets(model: torch.nn.Module) -> list[str]:
    """The module names given LoRA for ``model``'s architecture; ``ValueError`` for an unknown one."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LORA_TARGETS:
        raise ValueError(f"no LoRA targets for model_type {model_type!r}; supported: {sorted(LORA_TARGETS)}")
    return list(LORA_TARGETS[model_type])


def lora_config(model: torch.nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.0) -> LoraConfig:
    """A fresh ``LoraConfig`` for ``model`` (no ``task_type``: the head is not made trainable)."""
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(model),
                      fan_in_fan_out=model.config.model_type == "gpt2", bias="none")


def adapter_name(task_id: int) -> str:
    """Name of task ``task_id``'s adapter in :class:`PerTaskLoRA` and :class:`OLoRA`."""
    return f"task_{task_id}"


def _lora_layers(model: torch.nn.Module) -> list[LoraLayer]:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def adapter_parameters(model: torch.nn.Module, name: str) -> list[torch.nn.Parameter]:
    """Every LoRA parameter (``A`` and ``B`` of each adapted layer) of adapter ``name``."""
    return [p for layer in _lora_layers(model) for d in (layer.lora_A, layer.lora_B) if name in d
            for p in d[name].parameters()]


def lora_A_matrices(model: torch.nn.Module, name: str) -> dict[int, torch.Tensor]:
    """Adapter ``name``'s ``A`` weight, ``(r, in_features)``, keyed by the index of its layer in the model."""
    return {i: layer.lora_A[name].weight for i, layer in enumerate(_lora_layers(model)) if name in layer.lora_A}


def orthogonality_penalty(a_new: torch.Tensor, a_old: Sequence[torch.Tensor]) -> torch.Tensor:
    """O-LoRA's L_orth of one layer, as the official code computes it: ``sum over old of sum_jk |(A_new A_old^T)_jk|``.

    cmnfriend/O-LoRA, ``src/uie_trainer_lora.py`` (``UIETrainer.training_step``) adds, per adapted module,
    ``torch.abs(torch.mm(param, param_.T)).sum()`` with ``param`` the frozen ``lora_A`` (the earlier tasks' ``A``
    stacked, ``(sum r_i, in)``) and ``param_`` the new ``loranew_A``: the same sum as here, old adapter by old
    adapter. The paper (arXiv:2310.14152) writes L_orth with squared entries; the official scripts pair this L1 form
    with lamda_1 = 0.5 (``scripts/order_1.sh``), the default of :class:`OLoRA`.

    Args:
        a_new: ``(r, in_features)``, the adapter being trained.
        a_old: each ``(r_i, in_features)``, the frozen earlier adapters of the same layer.
    Returns a scalar, 0 exactly when every row of ``a_new`` is orthogonal to every row of every ``a_old``.
    """
    total = a_new.new_zeros(())
    for a in a_old:
        total = total + (a_new @ a.T).abs().sum()  # (r, r_i)
    return total


def merged_model(model: PeftModel, task_id: int | Sequence[int]) -> torch.nn.Module:
    """A plain transformers model: a deep copy of ``model``'s base with the adapter(s) of ``task_id`` merged in.

    ``model`` is left untouched. All other adapters are dropped. Parameters stay frozen (``requires_grad=False``).
    """
    ids = [task_id] if isinstance(task_id, int) else list(task_id)
    names = [adapter_name(t) for t in ids]
    missing = [n for n in names if n not in model.peft_config]
    if missing:
        raise ValueError(f"no adapter {missing} in the model; it has {list(model.peft_config)}")
    return copy.deepcopy(model).merge_and_unload(adapter_names=names)


def trainable_parameter_report(model: torch.nn.Module) -> dict[str, float]:
    """``{"trainable": n, "total": N, "percent": 100 n / N}`` (adapters count in the total, as in peft)."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}


def adapter_size_on_disk(model: PeftModel, adapter_name: str, tmpdir: str | Path) -> int:
    """Bytes of ``adapter_model.safetensors`` written by ``save_pretrained`` for that one adapter."""
    model.save_pretrained(str(tmpdir), selected_adapters=[adapter_name], safe_serialization=True)
    folder = Path(tmpdir) if adapter_name == "default" else Path(tmpdir) / adapter_name
    return (folder / "adapter_model.safetensors").stat().st_size


class _LoRA(Method):
    """What the three variants share: validation, wrapping, and which single adapter trains."""

    label_hparams = {"r": "r"}

    def __init__(self, r: int = 8, alpha: int = 16, dropout: float = 0.0) -> None:
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"{self.name}: r (the LoRA rank) must be an int >= 1, got {r!r}")
        if alpha <= 0:
            raise ValueError(f"{self.name}: alpha must be > 0 (scaling = alpha / r), got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{self.name}: dropout must be in [0, 1), got {dropout!r}")
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self._training: str | None = None  # the one adapter that may train now
        self._begun: list[int] = []  # task ids whose adapter exists (training started)

    def _config(self, model: torch.nn.Module) -> LoraConfig:
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        return lora_config(base, self.r, self.alpha, self.dropout)

    def _wrap(self, model: torch.nn.Module, first: str) -> PeftModel:
        if isinstance(model, PeftModel):
            raise ValueError(f"{self.name}: prepare() needs a plain transformers model, got a PeftModel "
                             "(was it prepared already?)")
        self._begun = []  # one method object may run several streams
        with warnings.catch_warnings():  # peft 0.21 reads model.is_gradient_checkpointing, deprecated in transformers 5
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, self._config(model), adapter_name=first)
        self._set_trainable(peft_model, None)
        return peft_model

    def _set_trainable(self, model: PeftModel, name: str | None) -> None:
        """``requires_grad`` True on adapter ``name`` only (None: on none); base weights stay frozen."""
        self._training = name
        for layer in _lora_layers(model):
            for d in (layer.lora_A, layer.lora_B):
                for key, module in d.items():
                    module.requires_grad_(key == name)

    def _refreeze(self, model: PeftModel) -> None:
        """Undo peft's ``set_adapter``/``disable_adapter`` side effect of un-freezing active adapters."""
        self._set_trainable(model, self._training)

    def _add_adapter(self, model: PeftModel, task_id: int) -> str:
        """Create adapter ``task_<id>`` if it does not exist yet, record the task as begun, return the name."""
        name = adapter_name(task_id)
        if name not in model.peft_config:
            model.add_adapter(name, self._config(model))
        self._begun.append(task_id)
        return name

    def parameters(self, model: torch.nn.Module, task_id: int) -> list[torch.nn.Parameter]:
        """Only the adapter being trained (``A`` and ``B`` of every adapted layer), and the task's own head."""
        if self._training is None:
            return []
        return [p for p in [*adapter_parameters(model, self._training), *train_head(model, task_id, True)]
                if p.requires_grad]

    def end_task(self, model: torch.nn.Module, task_id: int, task: Task, benchmark: Benchmark) -> None:
        self._set_trainable(model, None)
        train_head(model, task_id, False)

    def describe(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout}


class SequentialLoRA(_LoRA):
    """One adapter ("sequential") trained task after task; every column, extra ones too, is scored with it."""

    name = "lora_sequential"
    ADAPTER = "sequential"

    def prepare(self, model: torch.nn.Module, benchmark: Benchmark) -> PeftModel:
        return self._wrap(model, self.ADAPTER)

    def begin_task(self, model: torch.nn.Module, task_id: int, task: Task) -> None:
        self._begun.append(task_id)
        self._set_trainable(model, self.ADAPTER)
        train_head(model, task_id, True)


class PerTaskLoRA(_LoRA):
    """A fresh adapter ``task_j`` per task on the frozen base; task ``j`` is scored with adapter ``j`` alone.

    A task whose training has not begun (and an extra column, task id None) is scored with the base model,
    adapters disabled (``model.disable_adapter()``): the row before a task's training then equals the base
    score ``b`` for it, so FWT is 0 by construction. Adapters are never retrained, so ``R[i, j] == R[j, j]``.
    """

    name = "lora_per_task"
    needs_task_id = True  # the task's own adapter is chosen by its id

    def prepare(self, model: torch.nn.Module, benchmark: Benchmark) -> PeftModel:
        return self._wrap(model, adapter_name(0))

    def begin_task(self, model: torch.nn.Module, task_id: int, task: Task) -> None:
        name = self._add_adapter(model, task_id)
        model.set_adapter(name)
        self._set_trainable(model, name)
        train_head(model, task_id, True)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], task_id: int | None) -> Any:
        if task_id is None or task_id not in self._begun:
            with model.disable_adapter():
                out = model(**batch)
            self._refreeze(model)
            return out
        name = adapter_name(task_id)
        if model.active_adapters != [name]:
            model.set_adapter(name)
            self._refreeze(model)
        return model(**batch)


class OLoRA(_LoRA):
    """O-LoRA: adapter ``task_k`` trains on top of the frozen, still active ``task_0 .. task_{k-1}``.

    Penalty while training task k (``A`` weights are ``(r, in_features)``, ``B`` ``(out_features, r)``)::

        lambda_orth * sum_layers sum_{i<k} sum_jk |(A_k A_i^T)_jk|  +  lambda_l2 * sum_layers (||A_k||_F + ||B_k||_F)

    as the official code has it (cmnfriend/O-LoRA, ``src/uie_trainer_lora.py``, ``UIETrainer.training_step``:
    ``loss + orthogonal_loss * lamda_1 + l2_loss * lamda_2``, the L2 term summing ``torch.norm(param, p=2)``, not
    squared, over every ``loranew_`` parameter), with its scripts' defaults (``scripts/order_1.sh``: lamda_1 0.5,
    lamda_2 0). See :func:`orthogonality_penalty` for how the paper's squared form differs.
    Inference uses all trained adapters at once, whatever the task id.

    ``lambda_orth=0`` is the ablation: everything of O-LoRA (a fresh adapter per task, the old ones frozen and
    summed at inference, no task id) but the orthogonality penalty. Its :attr:`name` is then ``olora_no_penalty``
    (results file ``<benchmark>__olora_no_penalty.json``), so it is never saved or compared as O-LoRA.

    Example::

        methods = [OLoRA(r=8), OLoRA(r=8, lambda_orth=0.0)]   # names "olora" and "olora_no_penalty"
    """

    name = "olora"
    NO_PENALTY = "olora_no_penalty"  # the name with lambda_orth == 0
    label_hparams = {"r": "r", "lambda_orth": "λ₁"}

    def __init__(self, r: int = 8, alpha: int = 16, dropout: float = 0.0, lambda_orth: float = 0.5,
                 lambda_l2: float = 0.0) -> None:
        for key, value in (("lambda_orth", lambda_orth), ("lambda_l2", lambda_l2)):
            if not value >= 0:
                raise ValueError(f"{self.name}: {key} must be a number >= 0, got {value!r}")
        self.lambda_orth, self.lambda_l2 = float(lambda_orth), float(lambda_l2)
        if self.lambda_orth == 0:
            self.name = self.NO_PENALTY
        super().__init__(r, alpha, dropout)

    def prepare(self, model: torch.nn.Module, benchmark: Benchmark) -> PeftModel:
        return self._wrap(model, adapter_name(0))

    def begin_task(self, model: torch.nn.Module, task_id: int, task: Task) -> None:
        name = self._add_adapter(model, task_id)
        model.base_model.set_adapter([adapter_name(t) for t in self._begun])  # a list: all add up
        self._set_trainable(model, name)
        train_head(model, task_id, True)

    def orthogonality(self, model: torch.nn.Module, task_id: int) -> torch.Tensor:
        """``sum_layers sum_{i<task_id} sum_jk |(A_task_id A_i^T)_jk|`` (unweighted)."""
        old = [lora_A_matrices(model, adapter_name(t)) for t in self._begun if t != task_id]
        new = lora_A_matrices(model, adapter_name(task_id))
        terms = [orthogonality_penalty(a, [o[i] for o in old if i in o]) for i, a in new.items()]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def penalty(self, model: torch.nn.Module, task_id: int) -> torch.Tensor | None:
        total = None
        if self.lambda_orth > 0 and len(self._begun) > 1:
            total = self.lambda_orth * self.orthogonality(model, task_id)
        if self.lambda_l2 > 0:  # the norm's gradient at B = 0 (a new adapter) is 0 in torch, not NaN
            norms = [p.norm() for p in adapter_parameters(model, adapter_name(task_id))]  # Frobenius, not squared
            l2 = self.lambda_l2 * torch.stack(norms).sum()
            total = l2 if total is None else total + l2
        return total

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "lambda_orth": self.lambda_orth, "lambda_l2": self.lambda_l2}
