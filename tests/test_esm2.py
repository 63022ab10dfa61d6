import dataclasses
import json

import numpy as np
import pytest
import torch

from perfkit.errors import UserError
from perfkit.workload import esm2, esm2_weights
from perfkit.workload.equivalence import default_proteins

esm = pytest.importorskip("esm")


def relative_error(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=1) / np.linalg.norm(np.asarray(b), axis=1)


@pytest.fixture(scope="module")
def proteins():
    return default_proteins(n=50, seed=1, min_len=10, max_len=200)


@pytest.fixture(scope="module")
def fairesm_model():
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = esm.model.esm2.ESM2(6, 320, 20, alphabet=alphabet, token_dropout=True).eval()
    return model, alphabet


@pytest.fixture(scope="module")
def fairesm_embeddings(fairesm_model, proteins):
    model, alphabet = fairesm_model
    _, _, tokens = alphabet.get_batch_converter()([(str(i), p) for i, p in enumerate(proteins)])
    with torch.no_grad():
        reps = model(tokens, repr_layers=[6])["representations"][6]
    pooled = np.stack([reps[i, 1 : len(p) + 1].mean(0).numpy() for i, p in enumerate(proteins)])
    return tokens, reps, pooled


@pytest.fixture(scope="module")
def our_model(fairesm_model):
    model, _ = esm2.build_model("esm2_t6_8M")
    return esm2_weights.load_fairesm_state_dict(model, fairesm_model[0].state_dict())


def packed(proteins, device="cpu"):
    return esm2.packed_to_torch(esm2.packed_inputs(*esm2.encode_proteins(proteins)), device)


# --- configs -----------------------------------------------------------------


def test_configs_and_flops():
    c = esm2.get_config("esm2_t33_650M_UR50D")
    assert (c.num_layers, c.embed_dim, c.attention_heads, c.ffn_dim) == (33, 1280, 20, 5120)
    assert esm2.get_config("facebook/esm2_t36_3B_UR50D").attention_heads == 40
    # 24 d^2 per layer: ~2x the linear-layer parameter count
    assert esm2.flops_per_token(c) == 2 * 33 * 12 * 1280**2
    assert esm2.flops_per_token(c, seq_len=100) == esm2.flops_per_token(c) + 33 * 4 * 100 * 1280
    model, _ = esm2.build_model("esm2_t6_8M")
    linear_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert esm2.flops_per_token(model.config) == 2 * linear_params
    with pytest.raises(UserError):
        esm2.get_config("esm3_huge")


# --- tokeniser and packing ------------------------------------------------------


def test_alphabet_matches_fairesm():
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    assert esm2.ALPHABET_TOKENS == alphabet.all_toks
    assert (esm2.CLS_IDX, esm2.PAD_IDX, esm2.EOS_IDX, esm2.UNK_IDX, esm2.MASK_IDX) == (
        alphabet.cls_idx,
        alphabet.padding_idx,
        alphabet.eos_idx,
        alphabet.unk_idx,
        alphabet.mask_idx,
    )


def test_encode_matches_fairesm_batch_converter():
    proteins = ["MKV", "", "ACDEFGHIKLMNPQRSTVWYXBUZO.-", "mk*J\u00e9"]
    tokens, lengths = esm2.encode_proteins(proteins)
    assert tokens.dtype == np.int64 and lengths.dtype == np.int32
    assert lengths.tolist() == [5, 2, 29, 7]
    assert tokens[:7].tolist() == [0, 20, 15, 7, 2, 0, 2]  # <cls> M K V <eos> <cls> <eos>
    assert tokens[-7:].tolist() == [0, 3, 3, 3, 3, 3, 2]  # lowercase, '*', 'J', non-ASCII -> <unk>
    _, _, ref = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()(
        [(str(i), p) for i, p in enumerate(proteins[:3])]
    )
    starts = np.r_[0, np.cumsum(lengths)]
    for i in range(3):
        assert tokens[starts[i] : starts[i + 1]].tolist() == ref[i, : lengths[i]].tolist()


def test_packed_inputs_hand_example():
    tokens, lengths = esm2.encode_proteins(["MKV", "A"])
    p = esm2.packed_inputs(tokens, lengths)
    assert p["cu_seqlens"].tolist() == [0, 5, 8] and p["cu_seqlens"].dtype == np.int32
    assert p["positions"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert p["seq_index"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(p["pool_weight"], [0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 1, 0])
    assert p["pool_weight"].dtype == np.float32 and p["max_seqlen"] == 5
    assert p["positions"].dtype == np.int32 and p["seq_index"].dtype == np.int32


# --- numerics -------------------------------------------------------------------


def test_packed_matches_fairesm_fp32(our_model, fairesm_embeddings, proteins):
    tokens, reps, reference = fairesm_embeddings
    pooled, hidden = our_model.forward_packed(**packed(proteins), return_hidden=True)
    err = relative_error(pooled.numpy(), reference)
    print(f"max relative error vs fair-esm (fp32, packed): {err.max():.2e}")
    assert err.max() <= 1e-4
    # per-token hidden states too (first and last sequence, <cls>/<eos> included)
    n0, n_last = len(proteins[0]) + 2, len(proteins[-1]) + 2
    torch.testing.assert_close(hidden[:n0], reps[0, :n0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(hidden[-n_last:], reps[-1, :n_last], rtol=1e-4, atol=1e-4)


def test_padded_matches_packed_and_fairesm(our_model, fairesm_embeddings, proteins):
    tokens, _, reference = fairesm_embeddings
    width = max(len(p) for p in proteins[:16]) + 2
    padded = our_model.forward_padded(tokens[:16, :width]).numpy()
    assert relative_error(padded, reference[:16]).max() <= 1e-4
    sub = proteins[:8]
    packed_pooled = our_model.forward_packed(**packed(sub)).numpy()
    assert relative_error(packed_pooled, padded[:8]).max() <= 1e-5


def test_token_dropout_scale_is_applied(our_model, proteins):
    sub = proteins[:4]
    with_dropout = our_model.forward_packed(**packed(sub))
    plain = esm2.ESM2(dataclasses.replace(our_model.config, token_dropout=False)).eval()
    plain.load_state_dict(our_model.state_dict())
    without = plain.forward_packed(**packed(sub))
    assert relative_error(without.numpy(), with_dropout.numpy()).min() > 1e-3
    # with embeddings pre-scaled by 0.88 the model without the rescale agrees again
    with torch.no_grad():
        plain.embed_tokens.weight.mul_(0.88)
    torch.testing.assert_close(plain.forward_packed(**packed(sub)), with_dropout, rtol=1e-4, atol=1e-5)


def test_mask_tokens_follow_fairesm(our_model, fairesm_model):
    ref_model, alphabet = fairesm_model
    _, _, tokens = alphabet.get_batch_converter()([("a", "MKV<mask>LLAG<mask>W"), ("b", "AC<mask>D")])
    with torch.no_grad():
        reps = ref_model(tokens, repr_layers=[6])["representations"][6]
    lengths = (tokens != esm2.PAD_IDX).sum(1).int().numpy()
    flat = torch.cat([tokens[i, : lengths[i]] for i in range(2)]).numpy()
    pooled = our_model.forward_packed(**esm2.packed_to_torch(esm2.packed_inputs(flat, lengths)))
    reference = np.stack([reps[i, 1 : lengths[i] - 1].mean(0).numpy() for i in range(2)])
    assert relative_error(pooled.numpy(), reference).max() <= 1e-4
    assert relative_error(our_model.forward_padded(tokens).numpy(), reference).max() <= 1e-4


def test_attention_path_counters(proteins):
    model, info = esm2.build_model("esm2_t6_8M", seed=3)
    assert info == {"source": "random", "seed": 3}
    model.forward_packed(**packed(proteins[:3]))
    model.forward_packed(**packed(proteins[:3]))
    _, _, tokens = esm.data.Alphabet.from_architecture("ESM-1b").get_batch_converter()([("a", "MKV")])
    model.forward_padded(tokens)
    assert model.attention_calls == {
        "varlen_attn": 0,
        "mem_efficient_varlen": 0,
        "flex_attention": 0,
        "sdpa_repadded": 2,
        "sdpa_padded": 1,
    }


def test_random_init_is_seeded_and_realistic():
    a, _ = esm2.build_model("esm2_t6_8M", seed=5)
    b, _ = esm2.build_model("esm2_t6_8M", seed=5)
    c, _ = esm2.build_model("esm2_t6_8M", seed=6)
    torch.testing.assert_close(a.layers[2].fc1.weight, b.layers[2].fc1.weight)
    assert not torch.equal(a.layers[2].fc1.weight, c.layers[2].fc1.weight)
    assert abs(a.layers[0].qkv.weight.std().item() - 0.02) < 1e-3
    assert torch.all(a.embed_tokens.weight[esm2.PAD_IDX] == 0)
    assert torch.all(a.final_norm.weight == 1) and torch.all(a.layers[0].fc2.bias == 0)


# --- weights --------------------------------------------------------------------


def test_fairesm_checkpoint_file(tmp_path, fairesm_model, our_model, proteins):
    ref_model, _ = fairesm_model
    # as fair-esm saves it: raw prefixes, cfg with the shape
    state = {"encoder.sentence_encoder." + k: v for k, v in ref_model.state_dict().items()}
    cfg = {"model": {"encoder_layers": 6, "encoder_embed_dim": 320, "encoder_attention_heads": 20}}
    path = tmp_path / "esm2_t6_8M_UR50D.pt"
    torch.save({"model": state, "cfg": cfg}, path)
    model, info = esm2.build_model("esm2_t6_8M", weights=path)
    assert info["source"] == "fair-esm" and info["path"] == str(path) and len(info["sha256"]) == 64
    x = packed(proteins[:3])
    torch.testing.assert_close(model.forward_packed(**x), our_model.forward_packed(**x))
    with pytest.raises(UserError, match="layers/dim/heads"):
        esm2.build_model("esm2_t12_35M", weights=path)


def test_hf_name_mapping_round_trip(tmp_path, fairesm_model, our_model, proteins):
    ref_model, _ = fairesm_model
    fair_sd = {
        k: v for k, v in ref_model.state_dict().items() if not k.startswith(("lm_head", "contact_head"))
    }
    hf_sd = esm2_weights.fairesm_to_hf_names(fair_sd)
    assert "esm.encoder.layer.0.attention.self.query.weight" in hf_sd
    assert "esm.encoder.layer.5.intermediate.dense.bias" in hf_sd
    assert "esm.embeddings.word_embeddings.weight" in hf_sd
    # extra HF tensors are ignored; the 'esm.' prefix is optional
    hf_sd["lm_head.dense.weight"] = torch.zeros(1)
    hf_sd["esm.encoder.layer.0.attention.self.rotary_embeddings.inv_freq"] = torch.zeros(1)
    back = esm2_weights.hf_to_fairesm_names(hf_sd)
    assert back.keys() == {k for k in fair_sd if not k.endswith("inv_freq")}
    bare = esm2_weights.hf_to_fairesm_names({k.removeprefix("esm."): v for k, v in hf_sd.items()})
    assert bare.keys() == back.keys()
    # transformers 5 save_pretrained writes LayerNorm params as gamma/beta
    legacy = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in hf_sd.items()
    }
    assert "esm.encoder.layer.0.attention.LayerNorm.gamma" in legacy
    assert esm2_weights.hf_to_fairesm_names(legacy).keys() == back.keys()

    # a HF folder with pytorch_model.bin (safetensors may be absent here)
    folder = tmp_path / "esm2_t6_8M_UR50D"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": 6,
                "hidden_size": 320,
                "num_attention_heads": 20,
                "position_embedding_type": "rotary",
            }
        )
    )
    torch.save(hf_sd, folder / "pytorch_model.bin")
    model, info = esm2.build_model("esm2_t6_8M", weights=folder)
    assert info["source"] == "huggingface" and len(info["sha256"]) == 64
    x = packed(proteins[:3])
    torch.testing.assert_close(model.forward_packed(**x), our_model.forward_packed(**x))
    with pytest.raises(UserError, match="layers/dim/heads"):
        esm2.build_model("esm2_t30_150M", weights=folder)


def test_bad_weights_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        esm2.build_model("esm2_t6_8M", weights=tmp_path / "missing.pt")
    with pytest.raises(UserError, match="config.json"):
        esm2.build_model("esm2_t6_8M", weights=tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError):
        esm2.build_model("esm2_t6_8M", weights=junk)
    with pytest.raises(UserError, match="lack"):
        esm2_weights.load_fairesm_state_dict(
            esm2.build_model("esm2_t6_8M")[0], {"embed_tokens.weight": torch.zeros(33, 320)}
        )
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            esm2.build_model("esm2_t6_8M", device="cuda")


# --- GPU ------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_varlen_matches_fp32(dtype, proteins):
    model, _ = esm2.build_model("esm2_t6_8M", device="cuda", dtype=dtype)
    pooled = model.forward_packed(**packed(proteins, "cuda"))
    assert model.attention_calls["varlen_attn"] == 1 and model.attention_calls["sdpa_repadded"] == 0
    fp32 = esm2.ESM2(model.config).cuda().eval()
    fp32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    reference = fp32.forward_packed(**packed(proteins, "cuda"))
    assert fp32.attention_calls["sdpa_repadded"] == 1  # fp32 on CUDA takes the fallback
    cosine = torch.nn.functional.cosine_similarity(pooled, reference)
    assert cosine.min().item() >= 0.999


# --- the protein stage's levers (kernels, shapes, weights under fair-esm names) ------------------------


def test_every_packed_attention_kernel_that_runs_on_cpu_matches_fairesm(
    our_model, proteins, fairesm_model, fairesm_embeddings
):
    """flex (eager here) and the re-padded SDPA give fair-esm's vectors; the counters name the kernel that ran.
    Eager flex builds its block mask over the whole pack and is slow on a CPU: it takes 12 proteins across the
    length range, against fair-esm on the same 12; the re-padded SDPA takes them all."""
    some = sorted(proteins, key=len)[:: len(proteins) // 12][:12]
    model, alphabet = fairesm_model
    _, _, tokens = alphabet.get_batch_converter()([(str(i), p) for i, p in enumerate(some)])
    with torch.no_grad():
        reps = model(tokens, repr_layers=[6])["representations"][6]
    some_reference = np.stack([reps[i, 1 : len(p) + 1].mean(0).numpy() for i, p in enumerate(some)])
    try:
        for kernel, counter, chosen, reference in (
            ("flex", "flex_attention", some, some_reference),
            ("sdpa_repadded", "sdpa_repadded", proteins, fairesm_embeddings[2]),
        ):
            esm2.set_kernels(our_model, attention=kernel)
            before = our_model.attention_calls[counter]
            out = our_model.forward_packed(**packed(chosen)).numpy()
            assert our_model.attention_calls[counter] == before + 1
            np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-5)
    finally:
        esm2.set_kernels(our_model, attention="auto")


def test_set_kernels_names_an_unknown_kernel(our_model):
    with pytest.raises(UserError, match="unknown packed attention 'flash3'") as err:
        esm2.set_kernels(our_model, attention="flash3")
    assert "mem_efficient_varlen" in err.value.fix


def test_gelu_epilogue_is_one_fused_call_and_matches_the_erf_path_on_cpu(our_model, proteins):
    x, w, b = torch.randn(2, 5, 16), torch.randn(32, 16), torch.randn(32)
    fused = esm2.linear_gelu_tanh(x, w, b)
    assert fused.shape == (2, 5, 32)
    torch.testing.assert_close(fused, torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b)))
    plain = our_model.forward_packed(**packed(proteins[:5]))
    try:
        esm2.set_kernels(our_model, gelu_epilogue=True)
        assert all(layer.gelu_epilogue for layer in our_model.layers)
        torch.testing.assert_close(
            our_model.forward_packed(**packed(proteins[:5])), plain, rtol=1e-4, atol=1e-5
        )
    finally:
        esm2.set_kernels(our_model, gelu_epilogue=False)


def test_residual_epilogue_matches_the_plain_residual_adds_with_nonzero_biases(proteins):
    """The carried stream (x + offset, the residual added inside the GEMM) is the plain one, biases and all."""
    model, _ = esm2.build_model("esm2_t6_8M", seed=2)
    with torch.no_grad():
        for layer in model.layers:
            for linear in (layer.out_proj, layer.fc2, layer.qkv):
                linear.bias.normal_(0.0, 0.5)
            layer.attn_norm.bias.normal_(0.0, 0.1)
    residual, x, w = torch.randn(7, 16), torch.randn(7, 24), torch.randn(16, 24)
    expected = residual + x @ w.T
    esm2.add_linear_(residual, x, w)
    torch.testing.assert_close(residual, expected)
    plain, plain_hidden = model.forward_packed(**packed(proteins[:8]), return_hidden=True)
    esm2.set_kernels(model, residual_epilogue=True, gelu_epilogue=True)
    carried, carried_hidden = model.forward_packed(**packed(proteins[:8]), return_hidden=True)
    esm2.set_kernels(model, gelu_epilogue=True)
    fused_gelu_only = model.forward_packed(**packed(proteins[:8]))
    assert model.residual_epilogue is False
    torch.testing.assert_close(carried_hidden, plain_hidden, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(carried, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(carried, fused_gelu_only, rtol=1e-4, atol=1e-5)


def test_pad_packed_gives_fixed_shapes_and_the_same_vectors(our_model, proteins):
    inputs = esm2.packed_inputs(*esm2.encode_proteins(proteins[:6]))
    real_tokens, real_seqs = int(inputs["cu_seqlens"][-1]), 6
    budget = real_tokens + 500
    padded = esm2.pad_packed(inputs, token_budget=budget, max_seqs=40, max_seqlen=210)
    assert padded["tokens"].shape == (budget,) and padded["cu_seqlens"].shape == (41,)
    assert padded["max_seqlen"] == 210 and padded["cu_seqlens"][-1] == budget
    assert np.all(np.diff(padded["cu_seqlens"]) <= 210) and padded["pool_weight"][real_tokens:].sum() == 0
    plain = our_model.forward_packed(**esm2.packed_to_torch(inputs))
    out = our_model.forward_packed(**esm2.packed_to_torch(padded))
    assert out.shape == (40, 320)
    torch.testing.assert_close(out[:real_seqs], plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        esm2.pad_packed(inputs, token_budget=real_tokens - 1, max_seqs=40, max_seqlen=210)


def test_fairesm_state_dict_is_the_inverse_of_loading(fairesm_model, our_model):
    exported = esm2_weights.fairesm_state_dict(our_model)
    original = {
        k: v
        for k, v in fairesm_model[0].state_dict().items()
        if not k.startswith(("lm_head.", "contact_head.")) and not k.endswith("inv_freq")
    }
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)


def test_forward_runs_its_layers_through_run_layers(our_model, proteins):
    """compile_scope 'stack' compiles run_layers: the packed forward must route its blocks through it, once."""
    fresh, _ = esm2.build_model("esm2_t6_8M")
    fresh.load_state_dict(our_model.state_dict())
    calls = []

    def counted(*args):
        calls.append(1)
        return fresh._run_layers(*args)

    fresh.run_layers = counted
    out = fresh.forward_packed(**packed(proteins[:4]))
    assert calls == [1]
    torch.testing.assert_close(out, our_model.forward_packed(**packed(proteins[:4])))


def test_fp8_needs_torchao_or_says_so(our_model):
    try:
        import torchao  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="precision fp8 needs torchao") as err:
            esm2.to_float8(our_model)
        assert "pip install torchao" in err.value.fix
    else:
        pytest.skip("torchao is installed: FP8 is measured by benchmarks/protein_mfu on a GPU")
