"""Shared, built-once data and models for the classification tests (a plain module: both test files call it)."""
import functools

import torch
from transformers import AutoTokenizer, BertConfig

from cl_utils.benchmark import Benchmark, Task
from cl_utils.classification import PadCollate, select_tasks, split_pools
from cl_utils.classifier import MultiHeadClassifier, minilm_path
from cl_utils.config import get_profile
from cl_utils.evaluation import accuracy


@functools.lru_cache(maxsize=None)
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


@functools.lru_cache(maxsize=None)
def smoke_pools():
    """The smoke profile's real pools (every offline text, tokenised): the expensive part, done once."""
    return split_pools(get_profile("smoke").classification, tokenizer())


@functools.lru_cache(maxsize=None)
def smoke_benchmark() -> Benchmark:
    """What ``setup("smoke", benchmark="classification")`` builds, without the cache folder."""
    tasks = select_tasks(get_profile("smoke").classification, smoke_pools(), tokenizer().pad_token_id)
    return Benchmark("classification", tasks, [], accuracy, "accuracy", PadCollate(tokenizer().pad_token_id),
                     task_heads=True)


def small_benchmark(n_train: int = 24, n_eval: int = 12) -> Benchmark:
    """The first rows of each smoke task: fast streams for method tests."""
    tasks = []
    for t in smoke_benchmark().tasks:
        sub = [type(d)(d.input_ids[:n], d.lengths[:n], d.labels[:n], d.task_id, d.texts[:n])
               for d, n in ((t.train, n_train), (t.valid, n_eval), (t.test, n_eval))]
        tasks.append(Task(t.name, *sub, t.info))
    b = smoke_benchmark()
    return Benchmark(b.name, tasks, [], b.score, b.score_name, b.collate, task_heads=True)


def tiny_classifier(num_labels=(4, 3), seed: int = 0, vocab_size: int | None = None,
                    dropout: float = 0.0) -> MultiHeadClassifier:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size or len(tokenizer()), hidden_size=16, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=128, pad_token_id=0,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, task_num_labels=list(num_labels))
    return MultiHeadClassifier(cfg)
