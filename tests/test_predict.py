"""The whole chain on CPU: both embedding stages through the same runner, classifier, consensus."""
import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import orf_fasta
from perfkit.errors import UserError
from perfkit.workload.config import make_config
from perfkit.workload.data import count_frames
from perfkit.workload.encoders import NUCLEOTIDE_STAGE, PROTEIN_STAGE, encoder_for
from perfkit.workload.predict import run_predict

FAST = dict(precision="fp32", device="cpu", progress=False, token_budget=1024, num_workers=0)


def test_encoders_know_their_stage_and_tokens():
    protein, nucleotide = encoder_for("esm2_t6_8M"), encoder_for("dnabert_s")
    assert (protein.stage, nucleotide.stage) == (PROTEIN_STAGE, NUCLEOTIDE_STAGE)
    assert (protein.frame_field, nucleotide.frame_field) == ("protein", "nucleotides")
    tokens, lengths = nucleotide.encode(["ATGGCCAAATTTGGG" * 10, "ACGT" * 30])
    assert lengths.tolist() and int(lengths.sum()) == tokens.size
    assert nucleotide.flops_per_token() < protein.__class__("esm2_t36_3B").flops_per_token()
    with pytest.raises(UserError, match="unknown model"):
        encoder_for("bert_base")


@pytest.mark.slow
def test_predict_chain_counts_and_outputs(tmp_path):
    fasta = orf_fasta(tmp_path / "s.fa", 40, seed=5)
    summary = run_predict(make_config(input=fasta, out_dir=tmp_path / "run", **FAST), hidden=32)
    frames = count_frames(fasta)
    assert summary["counts"]["frames"] == frames
    for stage in ("translation", "nucleotide_embedding", "protein_embedding", "merge", "classifier", "consensus"):
        assert summary["stages_s"][stage] >= 0
    assert summary["bottleneck_stage"] in summary["stages_s"]
    with h5py.File(tmp_path / "run" / "nucleotide" / "embeddings.h5") as nt, \
         h5py.File(tmp_path / "run" / "protein" / "embeddings.h5") as pr:
        assert nt["embeddings"].shape == (frames, 768) and pr["embeddings"].shape == (frames, 320)
        assert (nt["ids"][:] == pr["ids"][:]).all()
    per_frame = pd.read_csv(tmp_path / "run" / "predictions_per_frame.csv")
    per_read = pd.read_csv(tmp_path / "run" / "predictions_per_read.csv")
    assert len(per_frame) == frames
    assert len(per_read) == per_frame["read_id"].nunique() == summary["counts"]["reads_called"]
    assert np.allclose(per_frame["p_other"] + per_frame["p_virus"], 1.0, atol=1e-5)
    assert set(per_read["prediction"]) <= {"virus", "other"}


def test_v1_nucleotide_stage_matches_v2_in_fp32(small_fasta, tmp_path):
    """v1 (fixed padded batches in file order) and v2 (packed) embed the same frames to the same vectors."""
    from perfkit.workload.runner import run_embed
    from perfkit.workload.store import read_embeddings

    v1 = run_embed(make_config(input=small_fasta, out_dir=tmp_path / "v1", model="dnabert_s", mode="v1",
                               v1_nt_batch_sequences=3, **FAST))
    run_embed(make_config(input=small_fasta, out_dir=tmp_path / "v2", model="dnabert_s", **FAST))
    ids1, vec1 = read_embeddings(tmp_path / "v1" / "embeddings.h5")
    ids2, vec2 = read_embeddings(tmp_path / "v2" / "embeddings.h5")
    assert list(ids1) == list(ids2) and len(ids1) == count_frames(small_fasta)
    assert np.abs(vec1 - vec2).max() < 1e-4
    assert v1["throughput"]["batches"] == -(-len(ids1) // 3)  # one file of frames, batches of 3 in file order
    assert v1["run"]["alignment_check"]["passed"]
    assert "file order" in v1["run"]["attention_path"]["v1"]


@pytest.mark.slow
def test_v1_and_v2_chains_agree_with_the_same_weights(tmp_path):
    from perfkit.workload.predict import compare_runs

    fasta = orf_fasta(tmp_path / "s.fa", 30, seed=9)
    v1 = run_predict(make_config(input=fasta, out_dir=tmp_path / "v1", mode="v1", **FAST), hidden=32)
    v2 = run_predict(make_config(input=fasta, out_dir=tmp_path / "v2", random_init="fair-esm", **FAST), hidden=32)
    assert v1["mode"] == "v1" and v2["mode"] == "v2"
    assert v1["stage_runs"]["protein_embedding"]["sequences"] == v2["counts"]["frames"]
    agreement = compare_runs(tmp_path / "v1", tmp_path / "v2")
    assert agreement["same_classifier"] and agreement["reads_union"] == v2["counts"]["reads_called"]
    assert agreement["agreement"] == 1.0 and agreement["max_abs_delta_p_virus"] < 1e-4
    # our own init differs from fair-esm's: the same seed no longer means the same weights
    mixed = run_predict(make_config(input=fasta, out_dir=tmp_path / "mixed", **FAST), hidden=32)
    assert compare_runs(tmp_path / "v1", tmp_path / "mixed")["max_abs_delta_p_virus"] > 1e-3
    assert mixed["stage_runs"]["nucleotide_embedding"]["tokens_per_sequence"] > 2


def test_predict_refuses_time_caps_and_multi_process_v1(small_fasta, tmp_path):
    with pytest.raises(UserError, match="by reads"):
        run_predict(make_config(input=small_fasta, out_dir=tmp_path / "o", max_seconds=5, **FAST))
    with pytest.raises(UserError, match="one process"):
        run_predict(make_config(input=small_fasta, out_dir=tmp_path / "o", mode="v1", **FAST), nproc=2)


@pytest.mark.gpu
def test_v1_and_v2_chains_agree_on_cuda(tmp_path):
    """bf16 packed v2 vs fp32 v1 on the GPU, same weights: per-read calls agree (criterion: >= 99 %)."""
    import torch

    from perfkit.workload.predict import compare_runs

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    fasta = orf_fasta(tmp_path / "s.fa", 400, seed=2)
    # a model whose random-weight embeddings differ between sequences well above bf16 noise (the tiny
    # t6_8M's do not: its calls sit within bf16 noise of the tie and a few percent flip)
    gpu = dict(model="esm2_t33_650M", device="cuda", progress=False, token_budget=4096, num_workers=1)
    run_predict(make_config(input=fasta, out_dir=tmp_path / "v1", mode="v1", precision="fp32", **gpu), hidden=512)
    v2 = run_predict(make_config(input=fasta, out_dir=tmp_path / "v2", random_init="fair-esm", precision="bf16",
                                 **gpu), hidden=512)
    agreement = compare_runs(tmp_path / "v1", tmp_path / "v2")
    print(agreement)
    assert agreement["same_classifier"] and agreement["agreement"] >= 0.99
    assert v2["stage_runs"]["nucleotide_embedding"]["sequences"] == v2["counts"]["frames"]


@pytest.mark.slow
def test_predict_resumes_an_interrupted_chain(tmp_path):
    """A chain stopped inside its protein stage (shards on disk, no embeddings.h5) resumes to the same calls."""
    from perfkit.workload.runner import check_before_work, embed_share, prepare_out_dir

    small = {**FAST, "token_budget": 256}  # several batches; the same batching on every run
    fasta = orf_fasta(tmp_path / "s.fa", 60, seed=4)
    fresh = run_predict(make_config(input=fasta, out_dir=tmp_path / "fresh", **small), hidden=32)
    stage = check_before_work(make_config(input=fasta, out_dir=tmp_path / "chain" / "protein",
                                          checkpoint_every_sequences=8, **small))
    prepare_out_dir(stage)

    def stop(batch_index):
        if batch_index == 3:
            raise KeyboardInterrupt  # the user stops the chain inside its protein stage

    with pytest.raises(KeyboardInterrupt):
        embed_share(stage, np.empty(0, np.int64), on_batch=stop)
    assert list((tmp_path / "chain" / "protein" / "checkpoints").glob("shard-*"))
    assert not (tmp_path / "chain" / "protein" / "embeddings.h5").exists()
    with pytest.raises(UserError, match="resume"):  # the stage folder holds results: never overwritten silently
        run_predict(make_config(input=fasta, out_dir=tmp_path / "chain", **small), hidden=32)
    resumed = run_predict(make_config(input=fasta, out_dir=tmp_path / "chain", resume=True, **small), hidden=32)
    assert resumed["counts"] == fresh["counts"]
    a = pd.read_csv(tmp_path / "fresh" / "predictions_per_frame.csv")
    b = pd.read_csv(tmp_path / "chain" / "predictions_per_frame.csv")
    assert a["frame_id"].tolist() == b["frame_id"].tolist()
    assert np.abs(a["p_virus"] - b["p_virus"]).max() < 1e-5


def test_merge_and_classify_in_chunks_equals_all_at_once(tmp_path, monkeypatch):
    """The chain merges and classifies chunk by chunk from disk; the calls equal one in-memory pass."""
    from perfkit.workload import classifier as clf
    from perfkit.workload import predict
    from perfkit.workload.store import read_embeddings

    monkeypatch.setattr(predict, "MERGE_CHUNK_ROWS", 7)
    fasta = orf_fasta(tmp_path / "s.fa", 25, seed=6)
    summary = run_predict(make_config(input=fasta, out_dir=tmp_path / "run", **FAST), hidden=16)
    ids, nt = read_embeddings(tmp_path / "run" / "nucleotide" / "embeddings.h5")
    _, protein = read_embeddings(tmp_path / "run" / "protein" / "embeddings.h5")
    model, _ = clf.load_classifier(hidden=16, in_dim=768 + 320, seed=0)
    expected = clf.predict_frames(model, clf.merge_features(nt, protein, protein_dim=320))
    frames = pd.read_csv(tmp_path / "run" / "predictions_per_frame.csv")
    assert len(ids) > 7 * 2 and frames["frame_id"].tolist() == ids
    assert np.allclose(frames["p_virus"], expected[:, 1], atol=1e-6)
    assert summary["stages_s"]["merge"] > 0 and summary["stages_s"]["classifier"] > 0
