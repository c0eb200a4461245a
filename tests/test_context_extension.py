"""RoPE context extension (cl_utils.context_extension, rope_twin, context_spec) on a tiny Llama (the smoke run of
notebook 07 is in tests/test_notebooks.py)."""
import os

import numpy as np
import pytest
import torch
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM

from cl_utils.config import TrainSpec, get_profile
from cl_utils.context_extension import (SETTINGS, check_lengths, evaluate_setting, extension_finetune,
                                        extension_result, heldout_tokens, load_with_setting, rope_setting, window_nll)
from cl_utils.context_spec import context_spec
from cl_utils.data import pack_documents
from cl_utils.rope_twin import ntk_theta, twin_config
from cl_utils.training import TrainLog
from tests.conftest import _docs, make_tiny_model

L = 16  # the tiny twin's training context


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory):
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=L, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 10_000.0}, bos_token_id=0,
                      eos_token_id=0, pad_token_id=None)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("twin")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


IDS = torch.randint(0, 300, (2, 8 * L), generator=torch.Generator().manual_seed(1))


def logits(folder, setting, factor, n):
    model = load_with_setting(folder, setting, factor=factor, train_context=L)
    with torch.no_grad():
        return model(input_ids=IDS[:, :n]).logits


def test_linear_factor_one_equals_none_exactly(twin_dir):
    assert torch.equal(logits(twin_dir, "linear", 1.0, 4 * L), logits(twin_dir, "none", 1.0, 4 * L))


@pytest.mark.parametrize("setting", ["linear", "yarn"])
def test_static_scalings_change_every_position_but_the_first(setting, twin_dir):
    """Position 0 attends only to itself (rotation angle 0, softmax over one key): identical under any scaling;
    every later position sees rescaled angles."""
    plain, scaled = logits(twin_dir, "none", 1, 4 * L), logits(twin_dir, setting, 4.0, 4 * L)
    assert torch.equal(plain[:, 0], scaled[:, 0])
    assert (plain[:, 1:] - scaled[:, 1:]).abs().amax(-1).min() > 0


def test_dynamic_changes_nothing_up_to_L_and_everything_beyond(twin_dir):
    assert torch.equal(logits(twin_dir, "dynamic", 4.0, L), logits(twin_dir, "none", 1, L))
    beyond = (logits(twin_dir, "dynamic", 4.0, 2 * L) - logits(twin_dir, "none", 1, 2 * L)).abs().amax(-1)
    assert beyond[:, 0].max() == 0 and beyond[:, 1:].min() > 0


def test_dynamic_keeps_state_so_each_length_needs_a_fresh_model(twin_dir):
    """The trap evaluate_setting avoids by loading a fresh model per length."""
    model = load_with_setting(twin_dir, "dynamic", factor=4.0, train_context=L)
    with torch.no_grad():
        first = model(input_ids=IDS[:, :2 * L]).logits
        model(input_ids=IDS[:, :8 * L])
        again = model(input_ids=IDS[:, :2 * L]).logits
    assert not torch.equal(first, again)
    tokens = IDS.reshape(-1)
    fresh = lambda n: load_with_setting(twin_dir, "dynamic", factor=4.0, train_context=L)  # noqa: E731
    up, _ = evaluate_setting(fresh, tokens, [2 * L, 8 * L])
    down, _ = evaluate_setting(fresh, tokens, [8 * L, 2 * L])
    assert up == down[::-1]


def test_rope_parameters_carry_the_training_context(twin_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(twin_dir)
    assert SETTINGS == ("none", "linear", "dynamic", "yarn")
    yarn = rope_setting(config, "yarn", factor=4.0, train_context=L)
    assert yarn.rope_parameters["original_max_position_embeddings"] == L and yarn.max_position_embeddings == 4 * L
    assert rope_setting(config, "dynamic", factor=4.0, train_context=L).max_position_embeddings == L
    assert rope_setting(config, "linear", factor=2.5, train_context=L).rope_parameters["factor"] == 2.5
    assert config.rope_parameters["rope_type"] == "default"  # the saved config is left alone


@pytest.mark.parametrize("setting, factor, match", [("ntk", 2.0, "unknown RoPE setting"),
                                                    ("linear", 0.5, ">= 1"), ("yarn", float("nan"), ">= 1"),
                                                    ("dynamic", True, ">= 1"), ("linear", "2", ">= 1")])
def test_bad_settings_raise_a_clear_error(twin_dir, setting, factor, match):
    with pytest.raises(ValueError, match=match):
        load_with_setting(twin_dir, setting, factor=factor, train_context=L)


def test_gpt2_cannot_be_extended_or_fed_beyond_its_positions(tiny_tokenizer):
    with pytest.raises(ValueError, match="learned vectors"):
        rope_setting(GPT2Config(n_positions=64), "linear", factor=2.0, train_context=64)
    with pytest.raises(ValueError, match="cannot hold 128 tokens"):
        check_lengths(GPT2Config(n_positions=64), [64, 128], 1000)
    model = make_tiny_model(tiny_tokenizer, n_positions=32)
    calls = []

    def make(n):
        calls.append(n)
        return model

    tokens = torch.randint(0, 100, (256,))
    with pytest.raises(ValueError, match="32 learned positions"):
        evaluate_setting(make, tokens, [32, 64])
    assert calls == [32]  # the model was built, but nothing was scored


@pytest.mark.parametrize("lengths, match", [([1], ">= 2"), ([64, 512], "does not fit the 256"), ([16.0], ">= 2")])
def test_bad_lengths_raise_before_any_model_is_built(twin_dir, lengths, match):
    built = []
    with pytest.raises(ValueError, match=match):
        evaluate_setting(lambda n: built.append(n), torch.zeros(256, dtype=torch.long), lengths)
    assert built == []


def test_window_nll_matches_the_models_own_loss(twin_dir):
    model = load_with_setting(twin_dir, "yarn", factor=2.0, train_context=L)
    model.loss_type = "ForCausalLM"
    tokens = IDS.reshape(-1)
    per_position = window_nll(model, tokens, 4 * L, batch_size=3, chunk=7)  # chunks that do not divide n - 1
    windows = tokens.view(-1, 4 * L)
    with torch.no_grad():
        loss = model(input_ids=windows, labels=windows).loss
    assert per_position.shape == (4 * L - 1,)
    assert float(per_position.mean()) == pytest.approx(float(loss), rel=1e-5)


def test_heldout_tokens_are_the_same_text_at_every_length(tiny_tokenizer):
    docs = _docs(["red", "green", "blue"], 200, 0)
    tokens = heldout_tokens(docs, tiny_tokenizer, 64, max_windows=3)
    assert tokens.shape == (3 * 64,)
    assert torch.equal(tokens, pack_documents(docs, tiny_tokenizer, 64).input_ids[:3].reshape(-1))
    with pytest.raises(ValueError, match="fewer than one block"):
        heldout_tokens(docs[:1], tiny_tokenizer, 10_000, max_windows=3)


def test_extension_finetune_trains_in_place_and_the_result_reads_like_a_stream(twin_dir):
    model = load_with_setting(twin_dir, "linear", factor=2.0, train_context=L)
    blocks = pack_documents(_docs(["one", "two"], 40, 0), _tiny_tok(), 2 * L)
    before = [p.clone() for p in model.parameters()]
    log = extension_finetune(model, blocks, TrainSpec(steps=2, batch_size=2, lr=1e-3, warmup_steps=1), seed=0,
                             progress=False)
    assert len(log.losses) == 2 and not model.training
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    scores = np.array([[-8.0, -8.0], [-5.0, -5.5], [-5.2, -5.1]])
    r = extension_result("linear", (L, 2 * L), scores, log, 10, {})
    assert r.tasks == [f"context {L}", f"context {2 * L}"] and r.method == "extend_linear"
    m = r.metrics()
    assert m["BWT"] == pytest.approx(-0.2) and m["FWT"] == pytest.approx(2.5) and m["ACC"] == pytest.approx(-5.15)
    with pytest.raises(ValueError, match="3, 2"):
        extension_result("yarn", (L, 2 * L), scores[:2], TrainLog(), 10, {})


def _tiny_tok():
    from cl_utils.tokenizer import train_bpe

    return train_bpe(_docs(["one", "two", "three"], 50, 0), vocab_size=300)


def test_twin_matches_gpt2_size_and_ntk_base(tiny_tokenizer):
    from transformers import GPT2LMHeadModel

    from cl_utils.attention_cost import gpt2_config

    profile = get_profile("embedded")
    config = twin_config(profile, tiny_tokenizer, train_context=128, rope_theta=1e4)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 4, 4)
    assert config.max_position_embeddings == 128 and config.rope_parameters["rope_theta"] == 1e4
    with torch.device("meta"):
        twin = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
        gpt2 = sum(p.numel() for p in GPT2LMHeadModel(gpt2_config(profile.model)).parameters())
    embeddings = (profile.model.vocab_size - len(tiny_tokenizer)) * 128  # the twin here has the tiny vocabulary
    assert abs(twin + embeddings - gpt2) / gpt2 < 0.05
    assert ntk_theta(1e4, 1.0, 32) == 1e4
    assert ntk_theta(1e4, 8.0, 32) == pytest.approx(1e4 * 8 ** (32 / 30))
    with pytest.raises(ValueError):
        ntk_theta(1e4, 0.5, 32)


def test_context_spec_overrides_and_checks():
    spec = context_spec("embedded", {"finetune.steps": 5, "multiples": [1, 2, 4]})
    assert spec.finetune.steps == 5 and spec.multiples == (1, 2, 4) and spec.lengths == [128, 256, 512]
    assert spec.target == 512
    with pytest.raises(ValueError, match="valid"):
        context_spec("embedded", {"fine_tune.steps": 5})
    with pytest.raises(ValueError, match="must hold 1"):
        context_spec("embedded", {"multiples": [1, 2]})
    with pytest.raises(ValueError, match="valid profiles"):
        context_spec("nope")


def test_twins_pretrained_in_parallel_processes_are_cached_like_one_at_a_time():
    """load_twins with two processes builds both missing twins (one progress bar, errors raised in the parent), and
    load_twin then finds them in the cache: same folders, nothing trained again."""
    from cl_utils.rope_twin import load_twin, load_twins

    budget = TrainSpec(steps=3, batch_size=2, lr=1e-3, warmup_steps=1)
    with pytest.raises(ValueError, match="processes"):
        load_twins("smoke", [1e4], train_context=16, pretrain=budget, processes=0)
    built = load_twins("smoke", [1e4, 3e4], train_context=16, pretrain=budget, processes=2, progress=False)
    assert [info["rope_theta"] for _, _, info in built] == [1e4, 3e4]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert all(len(info["losses"]) == 3 and info["threads"] == max(1, cores // 2) for _, _, info in built)
    again = load_twin("smoke", train_context=16, rope_theta=3e4, pretrain=budget, on_step=lambda: 1 / 0)
    assert again[0] == built[1][0] and again[2] == built[1][2]
