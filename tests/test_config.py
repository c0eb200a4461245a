"""Profiles: typed, validated, and overridable with dotted keys."""
import pytest

from cl_utils.config import PROFILES, get_profile


def test_known_profiles_and_default_sizes():
    assert {"embedded", "smoke", "gpt2"} <= set(PROFILES)
    emb = get_profile("embedded")
    assert emb.model.kind == "gpt2_config" and emb.task_names == ["news", "social", "technical"]
    assert emb.pretrain_corpus.source == "gensim_wiki"
    assert get_profile("gpt2").model.hub_name == "gpt2"


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown profile 'nope'.*embedded.*gpt2.*smoke"):
        get_profile("nope")


def test_overrides_apply_and_do_not_mutate_the_registry():
    p = get_profile("smoke", {"finetune.steps": 3, "stream.news.max_train_tokens": 999, "block_size": 16})
    assert p.finetune.steps == 3 and p.block_size == 16
    assert p.stream[0].max_train_tokens == 999
    assert get_profile("smoke").finetune.steps != 3


@pytest.mark.parametrize("key,match", [
    ("finetune.stepz", r"TrainSpec has \[.*'steps'"),
    ("colour", r"Profile has \["),
    ("stream.poetry.steps", r"task one of \['news', 'social', 'technical'\]"),
    ("block_size.x", "plain value"),
])
def test_unknown_fields_raise_with_the_valid_names(key, match):
    with pytest.raises(ValueError, match=match):
        get_profile("smoke", {key: 1})


@pytest.mark.parametrize("key,value,match", [
    ("finetune.steps", 0, "steps"), ("finetune.lr", -1.0, "lr"), ("model.n_head", 3, "divisible"),
    ("block_size", 10_000, "n_positions"), ("stream.news.test_fraction", 1.5, "test_fraction"),
    ("stream.news.valid_fraction", 0.95, "must be < 1"),
])
def test_bad_values_are_refused(key, value, match):
    with pytest.raises(ValueError, match=match):
        get_profile("smoke", {key: value})


def test_tuned_values_come_from_the_argument_then_the_profile_then_the_benchmark(monkeypatch):
    from cl_utils import tuned as tuned_module
    from cl_utils.tuned import TUNED, tuned

    assert tuned("lm", "lora_lr", 0.5) == 0.5
    assert tuned("lm", "lora_lr") == TUNED["lm"]["lora_lr"]
    assert tuned("lm", "lora_lr", profile="embedded") == TUNED["lm"]["lora_lr"]  # no own values: the benchmark's
    monkeypatch.setitem(tuned_module.PROFILE_TUNED, ("p", "lm"), {"lora_lr": 7.0})
    assert tuned("lm", "lora_lr", profile="p") == 7.0 and tuned("lm", "lora_lr", 0.5, profile="p") == 0.5
    assert tuned("lm", "prompt_lr", profile="p") == TUNED["lm"]["prompt_lr"]  # a key it does not set falls through
    assert tuned("classification", "lora_lr", profile="p") == TUNED["classification"]["lora_lr"]
    with pytest.raises(ValueError, match=r"no tuned value 'lr' for benchmark 'lm'; known: .*'lora_lr'"):
        tuned("lm", "lr")
    for key in ("ewc_lambdas", "fisher_examples", "prompt_lr", "lora_lr"):  # every benchmark has every key
        assert all(key in values for values in TUNED.values())
