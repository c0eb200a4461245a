"""A LoRA training step (r=8 on c_attn, attn.c_proj and mlp.c_proj, through peft) against a full fine-tuning
step on the ``embedded``-sized GPT-2, batch 16 x 128 tokens: forward, backward, AdamW on the same batch.
LoRA trains only its adapter but still back-propagates through every layer."""
from __future__ import annotations

import copy
import warnings

from peft import get_peft_model

from cl_utils.methods.lora import lora_config, trainable_parameter_report

from .common import Row, Setup, adamw_step, compare


def rows(setup: Setup) -> list[Row]:
    block, batch, r, repeats = (32, 4, 8, 3) if setup.quick else (128, 16, 8, 10)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft 0.21 on transformers 5
    full = setup.model()
    lora = get_peft_model(copy.deepcopy(full), lora_config(full, r=r, alpha=2 * r))
    full.train(), lora.train()
    data = setup.blocks(batch, block, full.config.vocab_size)
    report = trainable_parameter_report(lora)
    labels = {"full": f"full fine-tuning step (batch {batch} × {block})",
              "lora": f"LoRA step (r = {r}, {report['percent']:.1f}% of weights trained)"}
    return compare({"full": lambda: adamw_step(lambda: full(**data).loss, full.parameters()),
                    "lora": lambda: adamw_step(lambda: lora(**data).loss, lora.parameters())},
                   {"lora": "full"}, labels, repeats, setup.device, modules=[full, lora])
