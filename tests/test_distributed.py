"""Data-parallel runs (cl_utils.distributed): the shares, the dealt examples and their reduction, in one process;
then ``torchrun --nproc_per_node 2`` against one process on the smoke profile (marked ``distributed``: ``make
test-distributed``, not ``make test``)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cl_utils import distributed as D
from cl_utils.cli import main
from cl_utils.fisher import diagonal_fisher
from tests.conftest import make_tiny_model


def test_shares_cut_a_batch_as_evenly_as_possible():
    assert D.share_sizes(8, 2) == [4, 4] and D.share_sizes(7, 2) == [4, 3] and D.share_sizes(5, 3) == [2, 2, 1]
    assert sum(D.share_sizes(13, 4)) == 13


def test_share_weights_make_the_mean_of_rank_means_the_global_mean():
    full = torch.full((8, 5), 1)
    assert D.share_weights(full, 2) == [1.0, 1.0]  # equal shares: exactly 1, nothing changes
    labels = torch.ones(7, 5, dtype=torch.long)  # 4 + 3 rows of 4 predicted tokens each
    labels[6, 1:] = -100  # the last row scores nothing
    w = D.share_weights(labels, 2)
    assert w == pytest.approx([2 * 16 / 24, 2 * 8 / 24])
    losses = torch.rand(7)  # per-row mean NLLs; the loss of a share is the token-weighted mean of its rows
    tokens = (labels[:, 1:] != -100).sum(1).double()
    share_loss = [float((losses[:4] * tokens[:4]).sum() / tokens[:4].sum()),
                  float((losses[4:] * tokens[4:]).sum() / tokens[4:].sum())]
    global_loss = float((losses * tokens).sum() / tokens.sum())
    assert np.mean([s * x for s, x in zip(share_loss, w)]) == pytest.approx(global_loss)
    assert D.share_weights(torch.tensor([0, 1, -100, 2]), 2) == pytest.approx([4 / 3, 2 / 3])  # classification


def test_sharded_loader_yields_each_ranks_share_of_the_same_global_batch():
    data = [{"input_ids": torch.full((4,), i), "labels": torch.full((4,), i)} for i in range(11)]
    def loader():  # each rank builds its own, seeded alike (iterating one loader again would reshuffle it)
        return DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))

    shards = [list(D._ShardedLoader(loader(), r, 2)) for r in range(2)]
    whole = list(loader())
    assert [len(s) for s in shards] == [3, 3]
    for b, (s0, s1) in enumerate(zip(*shards)):
        assert torch.equal(torch.cat([s0["input_ids"], s1["input_ids"]]), whole[b]["input_ids"])
    assert shards[0][0][D.WEIGHT_KEY] == 1.0 and shards[1][0][D.WEIGHT_KEY] == 1.0  # 4 = 2 + 2 rows
    assert [s[-1][D.WEIGHT_KEY] for s in shards] == pytest.approx([4 / 3, 2 / 3])  # the last batch: 3 = 2 + 1 rows
    with pytest.raises(ValueError, match="cannot be shared by 4 processes"):
        list(D._ShardedLoader(loader(), 0, 4))  # the last batch has 3 rows


def test_batches_too_small_to_share_are_refused_before_training(monkeypatch):
    monkeypatch.setattr(D, "world_size", lambda: 2)
    D.check_shares({"news": 16, "social": 18}, 8, 10)  # 8, 8 | 8, 8, 2: every batch splits
    D.check_shares({"news": 16, "social": 17}, 8, 2)  # 8, 8, 1: the steps never reach the last batch
    with pytest.raises(ValueError, match="social's last batch of an epoch has 1 row"):
        D.check_shares({"news": 16, "social": 17}, 8, 3)
    with pytest.raises(ValueError, match="a batch of 1 rows"):
        D.check_shares({"news": 16}, 1, 1)


def test_in_one_process_every_hook_is_the_identity():
    loader = DataLoader([{"input_ids": torch.zeros(2), "labels": torch.zeros(2)}] * 3, batch_size=2)
    fn = lambda b: b  # noqa: E731
    rows = [1, 2]
    assert D.world_size() == 1 and D.is_main()
    assert D.shard_loader(loader) is loader and D.every_nth(loader) is loader and D.check_shares({"a": 1}, 8, 9) is None
    assert D.data_parallel(fn, torch.nn.Linear(1, 1), []) is fn
    assert D.all_rows(rows) is rows and D.share(rows) is rows and D.total(5) == 5
    x = torch.ones(2)
    assert D.mean(x) is x and D.all_sum(1.5, 3) == (1.5, 3)
    assert D.sharded_mean(lambda b, n: {"n": n}, loader, 7, scored_only=True) == {"n": 7}


def test_dealt_examples_are_the_ones_one_process_takes():
    labels = torch.ones(10, 6, dtype=torch.long)
    labels[[2, 5], 1:] = -100  # unscored rows: skipped, as the Fisher skips them
    batches = [{"input_ids": torch.arange(10)[i:i + 4, None].expand(-1, 6), "labels": labels[i:i + 4]}
               for i in range(0, 10, 4)]
    dealt = [D.deal_examples(batches, 5, r, 2, scored_only=True) for r in range(2)]
    ids = [sorted(int(x) for b in mine for x in b["input_ids"][:, 0]) for mine, _ in dealt]
    assert ids == [[0, 3, 6], [1, 4]] and [n for _, n in dealt] == [3, 2]
    everything = D.deal_examples(batches, None, 0, 1, scored_only=False)
    assert everything[1] == 10


def test_the_fisher_from_dealt_shards_is_the_fisher_of_all_examples(tiny_tokenizer, tiny_benchmark, kind="empirical"):
    """Rank means times counts, summed and divided (what sharded_mean all-reduces) == the one-process Fisher; the
    square of the ranks' averaged gradient is not."""
    model = make_tiny_model(tiny_tokenizer)
    def loader():  # each rank builds its own, seeded alike
        return tiny_benchmark.loader(tiny_benchmark.tasks[0].train, 4, shuffle=True, seed=0)

    whole = diagonal_fisher(model, loader(), kind=kind, max_examples=10)
    sums, count = {}, 0
    for r in range(3):
        mine, n = D.deal_examples(loader(), 10, r, 3, scored_only=True)
        part = diagonal_fisher(model, mine, kind=kind)
        count += n
        for k, v in part.items():
            sums[k] = sums.get(k, 0) + v.double() * n
    assert count == 10
    for k in whole:
        torch.testing.assert_close(sums[k] / count, whole[k].double(), rtol=1e-5, atol=1e-9)
    model.zero_grad()
    for batch in D.deal_examples(loader(), 10, 0, 1, scored_only=True)[0]:
        model(**batch).loss.backward()
    squared = {k: p.grad.square() for k, p in model.named_parameters()}
    assert not torch.allclose(squared["transformer.h.0.mlp.c_fc.weight"], whole["transformer.h.0.mlp.c_fc.weight"])


def test_the_command_refuses_what_cannot_run_distributed(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("cl_utils.cli.SUPPORTED", frozenset({"naive"}))
    assert main(["run", "--profile", "smoke", "--benchmark", "lm", "--method", "er", "--results-dir",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "'er' cannot run in 2 processes; the ones that can: naive" in err and err.count("\n") == 1
    monkeypatch.setenv("WORLD_SIZE", "16")  # smoke's batch is 8 rows
    assert main(["run", "--profile", "smoke", "--benchmark", "lm", "--method", "naive"]) == 2
    assert "cannot be shared by 16 processes" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# --- torchrun, two processes (slow: make test-distributed) -------------------------------------------------------

_ONE: dict[str, dict] = {}  # one-process results of this session, by method


def _cli(args: list[str], out: Path, nproc: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process on the 2-core machine
    head = [sys.executable, "-m", "cl_utils"] if nproc == 1 else [
        shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun", "--standalone",
        "--nproc_per_node", str(nproc), "-m", "cl_utils"]
    done = subprocess.run([*head, "run", "--profile", "smoke", *args, "--results-dir", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(out.iterdir())
    assert len(files) == 1 and done.stdout.strip() == str(files[0]), (files, done.stdout)  # rank 0 alone writes
    return json.loads(files[0].read_text())


@pytest.mark.distributed
@pytest.mark.parametrize("method", [["--method", "naive"], ["--method", "ewc", "--set", "lam=1000"]],
                         ids=["naive", "ewc"])
def test_two_processes_give_the_one_process_R(method, tmp_path):
    args = ["--benchmark", "lm", *method]
    one = _ONE[method[1]] = _cli(args, tmp_path / "one", 1)
    two = _cli(args, tmp_path / "two", 2)
    diff = np.abs(np.array(one["R"]) - np.array(two["R"])).max()
    print(f"{method[1]}: R max |1 process - 2 processes| = {diff:.3g}")
    assert diff < 1e-3
    assert np.abs(np.array(one["losses"]) - np.array(two["losses"])).max() < 1e-3  # the global batch's loss
    assert np.array_equal(one["b"], two["b"]) or np.abs(np.array(one["b"]) - np.array(two["b"])).max() < 1e-6
    if method[1] == "ewc":  # the penalty matters at this λ: a Fisher reduced wrongly would show
        naive = _ONE.get("naive") or _cli(["--benchmark", "lm", "--method", "naive"], tmp_path / "naive", 1)
        assert np.abs(np.array(naive["R"]) - np.array(two["R"])).max() > 1e-2


_UNEQUAL_SHARES = r"""
import json, sys, torch, torch.distributed as dist
from cl_utils import distributed as D
from cl_utils.methods import EWC

D.init()
torch.manual_seed(0)
net = torch.nn.Linear(3, 2).double()
ewc = EWC(10.0)
ewc.consolidate({n: torch.rand_like(p) for n, p in net.named_parameters()},
                {n: p.detach() - 0.3 for n, p in net.named_parameters()})
x = torch.randn(4, 3, dtype=torch.double)
ddp = D.data_parallel(lambda b: (net(b["x"]) ** 2).mean() + ewc.penalty(net, 1), net, list(net.parameters()))
rank = D.rank()
loss = ddp({"input_ids": x[:2] if rank == 0 else x[2:], "x": x[:2] if rank == 0 else x[2:],
            D.WEIGHT_KEY: [1.5, 0.5][rank]})  # unequal shares (a row's scored tokens differ), mean 1
loss.backward()
ewc.after_backward(net, 1)
# one process, the same global batch: the shares' weighted task loss, the penalty once (through autograd)
ref = torch.nn.Linear(3, 2).double()
ref.load_state_dict(net.state_dict())
with torch.no_grad():
    for p, q in zip(ref.parameters(), net.parameters()):
        p.copy_(q)
l = 0.5 * (1.5 * (ref(x[:2]) ** 2).mean() + 0.5 * (ref(x[2:]) ** 2).mean()) + ewc.penalty_autograd(ref, 1)
l.backward()
gap = torch.tensor([max(float((p.grad - q.grad).abs().max()) for p, q in zip(net.parameters(), ref.parameters()))])
dist.all_reduce(gap, op=dist.ReduceOp.MAX)  # the larger of the two ranks' gaps
if rank == 0:
    print(json.dumps({"gap": float(gap)}), flush=True)
del ddp, loss  # the DDP reducer's threads, before the process group goes
D.barrier()
D.finish()
"""


@pytest.mark.distributed
def test_the_penalty_gradient_is_the_global_one_when_shares_are_unequal(tmp_path):
    """DDP averages the loss's gradients over ranks that each scale their loss by their share of the batch; the
    quadratic penalty's gradient, added by after_backward after that average, must take the same mean on every rank
    (it did not, at first: rank 0 added 1.5x the penalty, rank 1 0.5x)."""
    script = tmp_path / "unequal.py"
    script.write_text(_UNEQUAL_SHARES)
    done = subprocess.run([shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun",
                           "--standalone", "--nproc_per_node", "2", str(script)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["gap"] < 1e-12
