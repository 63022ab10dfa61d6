import numpy as np
import pytest
import torch

from perfkit.errors import UserError
from perfkit.workload import dnabert, dnabert_weights
from perfkit.workload.synth import write_synthetic_fasta
from perfkit.workload.fasta import read_fasta

pytest.importorskip("tokenizers")

TINY = dnabert.DNABERTConfig(name="tiny", num_layers=2, embed_dim=192, attention_heads=12, ffn_dim=384)


def relative_error(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=1) / np.linalg.norm(np.asarray(b), axis=1)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The default stand-in tokeniser, trained into a fresh cache dir."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERFKIT_CACHE_DIR", str(cache))
        dnabert._default_tokenizer.cache_clear()
        tok = dnabert.load_tokenizer()
        dnabert._default_tokenizer.cache_clear()
    assert list(cache.glob("dnabert_bpe4096_*.json")), "trained tokeniser was not cached"
    return tok


@pytest.fixture(scope="module")
def reads(tmp_path_factory):
    path = tmp_path_factory.mktemp("fa") / "held_out.fa"
    write_synthetic_fasta(path, 300, "reads150", seed=11)  # not the training seed
    return [seq for _, seq in read_fasta(path)]


@pytest.fixture(scope="module")
def full_model():
    return dnabert.build_model()[0]


def packed(tokenizer, seqs):
    return dnabert.packed_to_torch(dnabert.packed_inputs_nt(*dnabert.encode_nucleotides(tokenizer, seqs)))


def padded(tokenizer, seqs):
    return torch.from_numpy(dnabert.pad_batch(*dnabert.encode_nucleotides(tokenizer, seqs)))


# --- config ---------------------------------------------------------------------


def test_param_count_and_flops(full_model):
    params = sum(p.numel() for p in full_model.parameters())
    assert abs(params - 117e6) / 117e6 < 0.15  # DNABERT-2-117M, without its unused pooler
    linear_params = sum(m.weight.numel() for m in full_model.modules() if isinstance(m, torch.nn.Linear))
    assert dnabert.flops_per_token(full_model.config) == 2 * linear_params
    assert dnabert.flops_per_token(TINY, seq_len=40) == dnabert.flops_per_token(TINY) + 2 * 4 * 40 * 192


def test_alibi_slopes():
    assert dnabert.alibi_slopes(8) == [2.0**-k for k in range(1, 9)]
    # 12 heads: the 8-head sequence, then every other slope of the 16-head one
    expected = [2.0**-k for k in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    assert dnabert.alibi_slopes(12) == pytest.approx(expected, rel=1e-12)
    assert len(dnabert.alibi_slopes(6)) == 6


# --- tokeniser ------------------------------------------------------------------------


def test_tokenizer_is_deterministic():
    a = dnabert.train_tokenizer(n_reads=1500, seed=3, vocab_size=512)
    b = dnabert.train_tokenizer(n_reads=1500, seed=3, vocab_size=512)
    assert a.to_str() == b.to_str()
    assert a.get_vocab_size() == 512


def test_default_tokenizer_vocab_and_ratio(tokenizer, reads):
    assert tokenizer.get_vocab_size() == 4096
    assert [tokenizer.token_to_id(t) for t in dnabert.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    ratio = dnabert.tokens_per_base(tokenizer, reads)
    assert 0.1 < ratio < 0.35  # real DNABERT-2 BPE: about 0.2


def test_encode_round_trip(tokenizer, reads):
    seqs = reads[:50] + [""]  # an empty sequence still gets [CLS] [SEP]
    tokens, lengths = dnabert.encode_nucleotides(tokenizer, seqs)
    assert tokens.dtype == np.int64 and lengths.dtype == np.int32
    assert lengths.sum() == tokens.size and lengths[-1] == 2
    starts = np.cumsum(lengths) - lengths
    assert (tokens[starts] == 1).all() and (tokens[starts + lengths - 1] == 2).all()
    for seq, start, length in zip(seqs, starts, lengths):
        body = tokens[start + 1 : start + length - 1].tolist()
        assert body == tokenizer.encode(seq, add_special_tokens=False).ids
        assert tokenizer.decode(body).replace(" ", "") == seq


def test_packed_inputs_pool_over_all_tokens(tokenizer, reads):
    tokens, lengths = dnabert.encode_nucleotides(tokenizer, reads[:5])
    p = dnabert.packed_inputs_nt(tokens, lengths)
    per_seq = np.bincount(p["seq_index"], weights=p["pool_weight"])
    np.testing.assert_allclose(per_seq, 1.0, rtol=1e-6)
    # [CLS] counts
    np.testing.assert_allclose(p["pool_weight"][p["cu_seqlens"][:-1]], 1.0 / lengths, rtol=1e-6)
    assert p["max_seqlen"] == lengths.max()


def test_bad_tokenizer_path(tmp_path):
    with pytest.raises(UserError):
        dnabert.load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(UserError):
        dnabert.load_tokenizer(tmp_path / "junk.json")


def test_user_tokenizer_file(tokenizer, tmp_path):
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert dnabert.load_tokenizer(tmp_path).to_str() == tokenizer.to_str()  # a folder holding tokenizer.json


# --- model -------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["sdpa_repadded", "flex"])
def test_padded_and_packed_agree_tiny(tokenizer, reads, kernel):
    model, _ = dnabert.build_model(config=TINY, seed=1)
    seqs = reads[:24]
    reference = model.forward_padded(padded(tokenizer, seqs))
    model.packed_attention = kernel
    candidate = model.forward_packed(**packed(tokenizer, seqs))
    assert relative_error(candidate, reference).max() <= 1e-4
    assert model.attention_calls == {
        "flex_attention": int(kernel == "flex"),
        "sdpa_repadded": int(kernel == "sdpa_repadded"),
        "sdpa_padded": 1,
    }


def test_padded_and_packed_agree_full_config(full_model, tokenizer, reads):
    seqs = reads[:2]  # ~70 tokens: a 117M fp32 forward on CPU is slow
    reference = full_model.forward_padded(padded(tokenizer, seqs))
    candidate = full_model.forward_packed(**packed(tokenizer, seqs))
    assert relative_error(candidate, reference).max() <= 1e-4


def test_padding_does_not_leak(tokenizer, reads):
    model, _ = dnabert.build_model(config=TINY)
    alone = model.forward_padded(padded(tokenizer, reads[:1]))
    with_longer = model.forward_padded(padded(tokenizer, [reads[0], "ACGT" * 200]))[:1]
    assert relative_error(with_longer, alone).max() <= 1e-5


def test_cpu_fp32_packed_route_is_sdpa_repadded(tokenizer, reads):
    model, _ = dnabert.build_model(config=TINY)
    model.forward_packed(**packed(tokenizer, reads[:3]))
    assert model.attention_calls["sdpa_repadded"] == 1 and model.attention_calls["flex_attention"] == 0


def test_equivalence_gate_passes(tokenizer):
    result = dnabert.run_nt_equivalence(n=32, config=TINY, tokenizer=tokenizer)
    assert result["passed"], result
    assert result["reference_nondegenerate"]
    assert result["attention_path"] == "sdpa_repadded"
    assert 0.1 < result["tokens_per_base"] < 0.35


def test_weight_names_round_trip(tokenizer, reads):
    source, _ = dnabert.build_model(config=TINY, seed=4)
    hf = {
        "bert." + k: v for k, v in dnabert_weights.our_to_dnabert2_names(source.state_dict()).items()
    }  # MaskedLM layout
    hf["cls.predictions.decoder.bias"] = torch.zeros(4096)  # heads are ignored
    target, _ = dnabert.build_model(config=TINY, seed=5)
    dnabert_weights.load_dnabert2_state_dict(target, hf)
    batch = padded(tokenizer, reads[:4])
    torch.testing.assert_close(target.forward_padded(batch), source.forward_padded(batch))

    with pytest.raises(UserError):
        dnabert_weights.load_dnabert2_state_dict(
            target, {"encoder.layer.0.mlp.mystery.weight": torch.zeros(1)}
        )
    with pytest.raises(UserError):  # a layer missing
        dnabert_weights.load_dnabert2_state_dict(target, {k: v for k, v in hf.items() if ".1." not in k})


def test_build_model_from_folder(tmp_path):
    source, _ = dnabert.build_model(config=TINY, seed=4)
    torch.save(dnabert_weights.our_to_dnabert2_names(source.state_dict()), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 2, "hidden_size": 192, "vocab_size": 4096}')
    model, info = dnabert.build_model(tmp_path, config=TINY)
    assert info["source"] == "huggingface" and info["checked_against_reference"] is False
    torch.testing.assert_close(model.token_type_embedding, source.token_type_embedding)

    with pytest.raises(UserError):  # 12 layers expected, the folder says 2
        dnabert.build_model(tmp_path)
    with pytest.raises(UserError):
        dnabert.build_model(tmp_path / "nowhere")


# --- GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernel", ["flex", "sdpa_repadded"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gate_on_cuda(kernel, precision, tokenizer):
    """Packed DNABERT-S on CUDA (both kernels) against the fp32 padded path, full size, same weights."""
    result = dnabert.run_nt_equivalence(
        device="cuda",
        precision=precision,
        n=96,
        tokenizer=tokenizer,
        packed_attention=kernel,
        token_budget=2048,
    )
    print({k: result[k] for k in ("precision", "attention_path", "passed", "stats")})
    assert result["passed"], result
    assert result["attention_path"] == ("flex_attention" if kernel == "flex" else kernel)


@pytest.mark.parametrize("suffix", ["safetensors", "bin"])
def test_nt_weights_from_a_checkpoint_in_dnabert2s_own_tensor_names(tmp_path, suffix):
    # a checkpoint written the way DNABERT-2 / DNABERT-S publish theirs (BertModel names), as one file
    from safetensors.torch import save_file

    reference, _ = dnabert.build_model(seed=3, config=dnabert.DNABERT_MINI)
    theirs = {
        k: v.contiguous() for k, v in dnabert_weights.our_to_dnabert2_names(reference.state_dict()).items()
    }
    # their names, not ours
    assert any(name.startswith("encoder.layer.0.attention.self.Wqkv") for name in theirs)
    path = tmp_path / f"model.{suffix}"
    save_file(theirs, str(path)) if suffix == "safetensors" else torch.save(theirs, path)
    loaded, info = dnabert.build_model(path, config=dnabert.DNABERT_MINI)
    assert info["source"] == f"{suffix} file" and len(info["sha256"]) == 64
    for (name, a), b in zip(reference.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match="width 768"):  # a DNABERT-S config cannot take the mini's tensors
        dnabert.build_model(path)


def test_nt_weights_refuse_unknown_files(tmp_path):
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(UserError, match="unknown file type .txt"):
        dnabert.build_model(tmp_path / "weights.txt")
    with pytest.raises(UserError, match="do not exist"):
        dnabert.build_model(tmp_path / "missing.safetensors")


def test_the_chain_takes_its_nucleotide_model_and_weights(tmp_path):
    from safetensors.torch import save_file

    from perfkit.workload.config import make_config
    from perfkit.workload.predict import run_predict, stage_summaries

    reference, _ = dnabert.build_model(seed=5, config=dnabert.DNABERT_MINI)
    weights = tmp_path / "dnabert_mini.safetensors"
    save_file(
        {k: v.contiguous() for k, v in dnabert_weights.our_to_dnabert2_names(reference.state_dict()).items()},
        str(weights),
    )
    fasta = tmp_path / "s.fa"
    write_synthetic_fasta(fasta, 40, profile="reads150", seed=1)
    cfg = make_config(
        input=fasta,
        out_dir=tmp_path / "o",
        num_workers=0,
        token_budget=1024,
        nt_model="dnabert_mini",
        nt_weights=weights,
        progress=False,
    )
    summary = run_predict(cfg, hidden=8)
    nucleotide = stage_summaries(cfg.out_dir)["nucleotide_embedding"]["run"]
    assert nucleotide["model"] == "dnabert_mini" and nucleotide["weights"]["path"] == str(weights)
    assert summary["counts"]["input_reads"] == 40 and summary["counts"]["reads_called"] > 0
