"""Shared fixtures: tiny tokenizer, model and benchmark built in milliseconds, and isolated output dirs."""
import random

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from cl_utils.benchmark import Benchmark, Task
from cl_utils.data import pack_documents
from cl_utils.evaluation import lm_score
from cl_utils.tokenizer import train_bpe


@pytest.fixture(autouse=True, scope="session")
def _isolated_outputs(tmp_path_factory):
    """Tests write runs and figures under a temporary folder, never into the working tree."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("cl")
    mp.setenv("CL_RUNS_DIR", str(root / "runs"))
    mp.setenv("CL_FIGURES_DIR", str(root / "figures"))
    yield root
    mp.undo()


def _docs(words: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) + "." for _ in range(n)]


DOMAINS = {
    "animals": ["cat", "dog", "horse", "sheep", "bird", "fish", "cow", "goat"],
    "numbers": ["one", "two", "three", "four", "five", "six", "seven", "eight"],
    "colours": ["red", "green", "blue", "yellow", "black", "white", "purple", "orange"],
}


@pytest.fixture(scope="session")
def tiny_tokenizer():
    docs = [d for i, words in enumerate(DOMAINS.values()) for d in _docs(words, 50, i)]
    return train_bpe(docs, vocab_size=300)


def make_tiny_model(tokenizer, seed=0, n_positions=64):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=16, n_layer=1, n_head=2,
                     eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(cfg)
    model.loss_type = "ForCausalLM"
    return model


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return make_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_benchmark(tiny_tokenizer):
    tasks = []
    for i, (name, words) in enumerate(DOMAINS.items()):
        train = pack_documents(_docs(words, 60, 100 + i), tiny_tokenizer, 16)
        valid = pack_documents(_docs(words, 6, 300 + i), tiny_tokenizer, 16, keep_last=True)
        test = pack_documents(_docs(words, 10, 200 + i), tiny_tokenizer, 16, keep_last=True)
        tasks.append(Task(name, train, valid, test))
    return Benchmark("lm", tasks[:2], tasks[2:], lm_score, "-NLL")
