"""Attention cost (cl_utils.attention_cost, attention_flops, measure, sdpa_dispatch) on a tiny GPT-2 config."""
import math

import pytest
import torch
from transformers import GPT2Config
from transformers.masking_utils import create_causal_mask
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

from cl_utils.attention_cost import attention_layer_step, layer_breakdown, model_step, run_sweep, variants
from cl_utils.attention_flops import (GiB, PUBLISHED, crossover_length, eager_scores_bytes, fit_exponent,
                                      kv_cache_bytes, measured_crossover, memory_table, shape_of, sweep_exponents)
from cl_utils.measure import machine_info, min_seconds, peak_memory, sdpa_kernels
from cl_utils.sdpa_dispatch import dispatch_table

TINY = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
CPU = torch.device("cpu")


def by_name(name):
    return next(v for v in variants(CPU) if v.name == name)


def test_cpu_variants_are_eager_sdpa_math_and_flash():
    assert [v.name for v in variants("cpu")] == ["eager", "sdpa", "sdpa_math", "sdpa_flash"]


@pytest.mark.parametrize("name, kernel", [("eager", []), ("sdpa_math", ["math"]), ("sdpa_flash", ["flash (CPU)"]),
                                          ("sdpa", ["flash (CPU)"])])
def test_each_variant_runs_the_kernel_it_names(name, kernel):
    for backward in (False, True):
        assert sdpa_kernels(attention_layer_step(TINY, by_name(name), 64, backward=backward)) == kernel


def test_layer_variants_compute_the_same_attention():
    """Eager (explicit additive mask) and every SDPA backend (is_causal) give the same output, so the sweep
    compares like with like."""
    x = torch.randn(1, 48, TINY.n_embd, generator=torch.Generator().manual_seed(0))
    outs = {}
    for v in variants(CPU):
        cfg = GPT2Config(**TINY.to_dict())
        cfg._attn_implementation = v.implementation
        torch.manual_seed(0)
        layer = GPT2Attention(cfg, layer_idx=0).eval()
        mask = create_causal_mask(config=cfg, inputs_embeds=x, attention_mask=None, past_key_values=None,
                                  position_ids=torch.arange(48)[None])
        with torch.no_grad(), v.context():
            outs[v.name] = layer(x, attention_mask=mask)[0]
    for name, out in outs.items():
        torch.testing.assert_close(out, outs["eager"], rtol=1e-4, atol=1e-5, msg=name)


def test_eager_memory_holds_the_scores_and_flash_does_not():
    """Peak memory is a value that can fail: eager holds heads x n x n float scores, the fused kernel never does."""
    n, heads = 1024, TINY.n_head
    scores = heads * n * n * 4
    eager = peak_memory(attention_layer_step(TINY, by_name("eager"), n, backward=False))
    flash = peak_memory(attention_layer_step(TINY, by_name("sdpa_flash"), n, backward=False))
    assert eager >= scores
    assert flash < scores / 4


def test_sweep_shapes_and_the_stop_rule():
    sweep = run_sweep(attention_layer_step, TINY, [16, 32, 64], variants(CPU), budget_s=0.0, progress=False, threads=1)
    d = sweep.as_dict()
    assert d["lengths"] == [16, 32, 64] and set(d["seconds"]) == {"eager", "sdpa", "sdpa_math", "sdpa_flash"}
    for key in ("seconds", "seconds_fwd_bwd", "peak_memory", "peak_memory_fwd_bwd"):
        assert all(len(v) == 3 and all(x is not None and x >= 0 for x in v) for v in d[key].values())
    assert all(s > 0 for v in d["seconds"].values() for s in v)
    stopped = run_sweep(model_step, TINY, [16, 32], [by_name("eager")], budget_s=0.0, max_call_s=0.0, progress=False)
    assert stopped.seconds["eager"][1] is None and stopped.peak_memory_fwd_bwd["eager"][1] is None
    assert stopped.table().shape == (2, 4)


@pytest.mark.parametrize("lengths", [[], [1, 2], [64, 32]])
def test_sweep_refuses_bad_lengths(lengths):
    with pytest.raises(ValueError, match="lengths"):
        run_sweep(attention_layer_step, TINY, lengths, variants(CPU), progress=False)


def test_layer_breakdown_parts():
    parts = layer_breakdown(TINY, [16, 64], by_name("eager"), budget_s=0.0, progress=False)
    assert set(parts) == {"attention", "projections", "mlp"} and all(len(v) == 2 and min(v) > 0 for v in parts.values())


def test_fit_exponent_recovers_powers_and_uses_the_longer_half():
    n = [128, 256, 512, 1024, 2048]
    assert fit_exponent(n, [x ** 2 for x in n]) == pytest.approx(2.0)
    assert fit_exponent(n, [5 + 1e-6 * x ** 2 for x in n], min_length=1) < 1.0  # overhead-dominated start
    assert fit_exponent(n, [1, 2, None, None, None]) == pytest.approx(1.0)  # a variant that stopped early
    assert fit_exponent(n, [1, None, None, None, None]) is None  # one point fits no slope
    assert fit_exponent(n, [x ** 3 if x >= 512 else 1.0 for x in n]) == pytest.approx(3.0)  # n >= median (512)
    assert fit_exponent(n, [3.0, 3.0, 3.0, 3.0, 3.0]) == pytest.approx(0.0, abs=1e-12)
    sweep = {"lengths": n, **{k: {"a": [x ** 1.5 for x in n]} for k in
                              ("seconds", "seconds_fwd_bwd", "peak_memory", "peak_memory_fwd_bwd")}}
    assert sweep_exponents(sweep)["a"]["peak_memory"] == pytest.approx(1.5)


def test_flop_crossover_is_six_d_for_gpt2_and_published_for_llama():
    shape = shape_of(GPT2Config(n_embd=128, n_layer=4, n_head=4), "embedded")
    assert crossover_length(shape) == pytest.approx(6 * 128)
    llama2 = PUBLISHED["Llama-2-7B"]  # (8 d^2 + 6 d d_ff) / (4 d)
    assert crossover_length(llama2) == pytest.approx((8 * 4096 + 6 * 11008) / 4)


def test_measured_crossover_interpolates_on_log_axes():
    assert measured_crossover([100, 400], [1.0, 16.0], [4.0, 4.0]) == pytest.approx(200.0)
    assert measured_crossover([100, 200], [1.0, 2.0], [4.0, 8.0]) is None
    assert measured_crossover([100, 200], [5.0, 9.0], [4.0, 8.0]) == 100


def test_kv_cache_and_eager_scores_of_published_models():
    assert kv_cache_bytes(PUBLISHED["Llama-2-7B"], 4096) == 2 * GiB  # 2 * 32 * 32 * 128 * 4096 * 2 bytes
    assert kv_cache_bytes(PUBLISHED["Llama-3.1-8B"], 131072) == 16 * GiB  # GQA: 8 KV heads
    assert kv_cache_bytes(PUBLISHED["Llama-2-13B"], 131072) == 100 * GiB
    assert eager_scores_bytes(PUBLISHED["Llama-2-7B"], 131072) == 32 * 131072 ** 2 * 2
    table = memory_table([PUBLISHED["Llama-2-7B"]], [4096, 131072])
    assert table.loc[("Llama-2-7B", 131072), "KV cache (GiB)"] == pytest.approx(64.0)


def test_dispatch_table_names_the_math_fallback_and_why():
    table = dispatch_table(TINY, 32, threads=1)
    assert table.loc["causal, no mask", "kernel"] == "flash (CPU)"
    assert table.loc["padding mask", "kernel"] == "flash (CPU)"
    assert table.loc["attention dropout", "kernel"] == "math"
    assert "dropout" in table.loc["attention dropout", "why not fused"]
    assert table.loc["learned mask", "kernel"] == "math"


def test_min_seconds_and_machine_info():
    assert 0 <= min_seconds(lambda: None, budget_s=0.0) < 0.1
    info = machine_info()
    assert {"cpu", "avx512f", "cores", "torch_threads", "loadavg", "device"} <= set(info)
    assert len(info["loadavg"]) == 3 and not math.isnan(info["loadavg"][0]) and info["cores"] >= 1


def test_torch_threads_sets_and_restores_and_refuses_bad_values():
    from cl_utils.measure import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    with torch_threads(0) as n:
        assert n == before == torch.get_num_threads()
    assert torch.get_num_threads() == before
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            with torch_threads(bad):
                pass
