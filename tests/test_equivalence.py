import json

import numpy as np
import pytest
import torch

from perfkit.errors import UserError
from perfkit.workload.equivalence import (
    batches_by_tokens,
    compare_embeddings,
    default_proteins,
    gate,
    run_equivalence_gate,
)


@pytest.fixture
def reference():
    return np.random.default_rng(0).normal(size=(200, 64)).astype(np.float32)


def test_exact_copy_passes_every_precision(reference):
    stats = compare_embeddings(reference, reference.copy())
    assert stats["max_relative_error"] == 0 and stats["min_cosine"] == pytest.approx(1.0)
    assert stats["share_cosine_ge_0999"] == 1.0 and stats["reference_nondegenerate"]
    for precision in ("fp32", "bf16", "fp16"):
        assert gate(stats, precision)["passed"]


def test_perturbed_copy_fails(reference):
    rng = np.random.default_rng(1)
    slightly = reference * (1 + 1e-3 * rng.normal(size=reference.shape))  # ~1e-3 relative: fails fp32
    stats = compare_embeddings(reference, slightly)
    assert not gate(stats, "fp32")["passed"]
    assert gate(stats, "bf16")["passed"]
    one_bad_row = reference.copy()
    one_bad_row[7] = rng.normal(size=64)  # one unrelated row: min cosine far below 0.99
    result = gate(compare_embeddings(reference, one_bad_row), "bf16")
    assert not result["passed"] and result["thresholds"]["min_cosine"] == 0.99
    noisy = reference + 0.1 * rng.normal(size=reference.shape)  # cosine ~0.995 everywhere
    stats = compare_embeddings(reference, noisy)
    assert stats["min_cosine"] >= 0.99 and stats["share_cosine_ge_0999"] < 0.999
    assert not gate(stats, "fp16")["passed"]


def test_degenerate_reference_is_flagged():
    same = np.tile(np.random.default_rng(2).normal(size=(1, 32)), (50, 1))
    result = gate(compare_embeddings(same, same.copy()), "bf16")
    assert result["stats"]["min_cosine"] == pytest.approx(1.0)
    assert not result["reference_nondegenerate"] and not result["passed"]


def test_gate_rejects_unknown_precision(reference):
    with pytest.raises(UserError):
        gate(compare_embeddings(reference, reference), "int8")


def test_batches_by_tokens():
    assert batches_by_tokens([5, 5, 5, 20, 1], 10) == [[0, 1], [2], [3], [4]]


def test_run_equivalence_gate_cpu_fp32():
    proteins = default_proteins(n=24, seed=3, min_len=10, max_len=120)
    result = run_equivalence_gate("esm2_t6_8M", proteins, device="cpu", precision="fp32", token_budget=1024)
    json.dumps(result)  # plain JSON types only
    assert result["passed"], result
    assert result["reference_nondegenerate"]
    assert result["stats"]["max_relative_error"] <= 1e-4
    assert result["attention_path"] == "sdpa_repadded"
    assert result["attention_calls"]["sdpa_repadded"] >= 2  # several packed batches


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model_name", ["esm2_t6_8M", "esm2_t33_650M"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gate_on_cuda(model_name, precision):
    result = run_equivalence_gate(model_name, device="cuda", precision=precision)
    print(json.dumps({k: result[k] for k in ("model_name", "precision", "passed", "stats")}))
    assert result["passed"], result
    assert result["attention_path"] == "varlen_attn"
    assert result["attention_calls"]["sdpa_repadded"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gate_on_cuda_compiled():
    """`compile: true` (torch.compile per block, dynamic token counts) keeps the gate green."""
    proteins = default_proteins(n=48, seed=5, min_len=10, max_len=300)
    result = run_equivalence_gate(
        "esm2_t33_650M", proteins, device="cuda", precision="bf16", token_budget=4096, compile=True
    )
    print(json.dumps({k: result[k] for k in ("model_name", "precision", "compiled", "passed", "stats")}))
    assert result["compiled"] and result["passed"], result
    assert result["attention_path"] == "varlen_attn"
