"""`make bench`'s entry point in --quick mode: one table with every benchmark's rows and sane values."""
import contextlib
import io
import math
import re

import pytest
import torch

from benchmarks import run_all
from benchmarks.common import Row

TIMED = ["forward+backward in batches of 16 (info)", "Fisher: `diagonal_fisher`", "Fisher: per-example loop",
         "EWC step, separate", "EWC step, online", "prompt-tuning step", "LoRA step", "evaluation: `lm_score`"]
TARGETS = {"Fisher: `diagonal_fisher`": "≤ 1.5×", "Fisher: per-example loop": "≥ 2×",
           "EWC step, separate": "≤ 1.1×", "EWC step, online": "≤ 1.1×", "evaluation: `lm_score`": "≤ 1.05×"}
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
                assert target == "–" and verdict == "–"
    assert len(table) == 2 * len(TIMED)


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
    fisher = next(r for name, r in memory.items() if name.startswith("Fisher: `diagonal_fisher`"))
    assert fisher.value > 0 and fisher.ref_value > 0  # a batched backward holds activations and gradients
