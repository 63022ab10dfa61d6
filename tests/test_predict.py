"""The whole chain on CPU: both embedding stages through the same runner, classifier, consensus."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import orf_fasta
from perfkit.errors import UserError
from perfkit.workload.config import make_config
from perfkit.workload.data import count_frames
from perfkit.workload.dnabert import DNABERT_MINI
from perfkit.workload.encoders import NUCLEOTIDE_STAGE, PROTEIN_STAGE, encoder_for
from perfkit.workload.predict import run_predict, score_reads
from perfkit.workload.store import read_shards

# the chain's logic does not depend on the nucleotide model's size: its 2-layer config runs the same code in a
# fraction of DNABERT-S's CPU time (test_dnabert checks DNABERT-S itself)
FAST = dict(
    precision="fp32", device="cpu", progress=False, token_budget=1024, num_workers=0, nt_model="dnabert_mini"
)
NT_DIM = DNABERT_MINI.embed_dim  # the nucleotide vectors' width (DNABERT-S: 768)


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
    assert list(summary["stages_s"]) == [
        "planning",
        "nucleotide_embedding",
        "protein_embedding",
        "merge",
        "classifier",
        "consensus",
    ]
    # 1 process: no plan
    assert all(v >= 0 for v in summary["stages_s"].values()) and summary["stages_s"]["planning"] < 0.1
    assert summary["bottleneck_stage"] in summary["stages_s"]
    # the stages' checked shards are the output: nobody rereads and rewrites every vector into one file
    assert not list((tmp_path / "run").glob("*/embeddings.h5"))
    nt_keys, nt_ids, nt = read_shards(tmp_path / "run" / "nucleotide")
    pr_keys, pr_ids, pr = read_shards(tmp_path / "run" / "protein")
    assert nt.shape == (frames, NT_DIM) and pr.shape == (frames, 320)
    assert (nt_keys == pr_keys).all() and nt_ids == pr_ids
    per_frame = pd.read_csv(tmp_path / "run" / "predictions_per_frame.csv")
    per_read = pd.read_csv(tmp_path / "run" / "predictions_per_read.csv")
    assert len(per_frame) == frames
    assert len(per_read) == per_frame["read_id"].nunique() == summary["counts"]["reads_called"]
    assert np.allclose(per_frame["p_other"] + per_frame["p_virus"], 1.0, atol=1e-5)
    assert set(per_read["prediction"]) <= {"virus", "other"}
    # what `perfkit predict --help` promises under -o is what a run leaves there
    from perfkit.cli import PREDICT_OUT

    promised = re.findall(r"([\w.]+\.(?:csv|jsonl|json)\b|\w+/)", PREDICT_OUT)
    assert {"predictions_per_read.csv", "summary.json", "parts/", "nucleotide/", "protein/"} <= set(promised)
    for name in promised:
        assert (tmp_path / "run" / name.rstrip("/")).exists(), name


def frameless_sample(path, reads: int = 24):
    """ORF-rich reads with every 5th one unable to keep a frame (all N: no codon translates)."""
    from perfkit.workload.fasta import read_fasta

    records = list(read_fasta(orf_fasta(path.with_suffix(".orf.fa"), reads, seed=3)))
    with open(path, "w") as f:
        for i, (rid, seq) in enumerate(records):
            f.write(f">{rid}\n{'N' * len(seq) if i % 5 == 2 else seq}\n")
    return path, [rid for i, (rid, _) in enumerate(records) if i % 5 == 2]


@pytest.mark.slow
def test_reads_without_a_frame_are_counted_and_called_no_frames_in_place(tmp_path):
    fasta, frameless = frameless_sample(tmp_path / "s.fa")
    summary = run_predict(make_config(input=fasta, out_dir=tmp_path / "one", **FAST), hidden=16)
    counts = summary["counts"]
    assert counts["input_reads"] == 24 and counts["reads_without_frames"] == len(frameless) == 5
    assert counts["reads_with_frames"] == counts["reads_called"] == 24 - 5
    per_read = pd.read_csv(tmp_path / "one" / "predictions_per_read.csv", keep_default_na=False)
    assert len(per_read) == 24  # every input read has its row, in input order
    assert per_read["read_id"].tolist() == [f"read{i}" for i in range(24)]
    assert per_read.loc[per_read["prediction"] == "no_frames", "read_id"].tolist() == frameless
    stage = summary["stage_runs"]["protein_embedding"]
    assert stage["sequences"] == counts["frames"]
    many = run_predict(
        make_config(input=fasta, out_dir=tmp_path / "two", block_reads=4, **FAST),
        hidden=16,
        nproc=2,
        gpus=False,
    )
    assert many["counts"] == counts  # the ranks split the reads; the counts and the rows do not change
    two = pd.read_csv(tmp_path / "two" / "predictions_per_read.csv", keep_default_na=False)
    assert two[["read_id", "frames", "prediction"]].equals(per_read[["read_id", "frames", "prediction"]])


def test_v1_nucleotide_stage_matches_v2_in_fp32(small_fasta, tmp_path):
    """v1 (fixed padded batches in file order) and v2 (packed) embed the same frames to the same vectors."""
    from perfkit.workload.runner import run_embed
    from perfkit.workload.store import read_embeddings

    v1 = run_embed(
        make_config(
            input=small_fasta,
            out_dir=tmp_path / "v1",
            model="dnabert_mini",
            mode="v1",
            v1_nt_batch_sequences=3,
            **FAST,
        )
    )
    run_embed(make_config(input=small_fasta, out_dir=tmp_path / "v2", model="dnabert_mini", **FAST))
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
    v2 = run_predict(
        make_config(input=fasta, out_dir=tmp_path / "v2", random_init="fair-esm", **FAST), hidden=32
    )
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
    run_predict(
        make_config(input=fasta, out_dir=tmp_path / "v1", mode="v1", precision="fp32", **gpu), hidden=512
    )
    v2 = run_predict(
        make_config(input=fasta, out_dir=tmp_path / "v2", random_init="fair-esm", precision="bf16", **gpu),
        hidden=512,
    )
    agreement = compare_runs(tmp_path / "v1", tmp_path / "v2")
    print(agreement)
    assert agreement["same_classifier"] and agreement["agreement"] >= 0.99
    assert v2["stage_runs"]["nucleotide_embedding"]["sequences"] == v2["counts"]["frames"]


@pytest.mark.slow
def test_predict_resumes_an_interrupted_chain(tmp_path):
    """A chain stopped inside its protein stage (shards on disk, no embeddings.h5) resumes to the same calls."""
    from perfkit.workload.outdir import prepare_out_dir
    from perfkit.workload.runner import check_before_work, embed_share

    small = {**FAST, "token_budget": 256}  # several batches; the same batching on every run
    fasta = orf_fasta(tmp_path / "s.fa", 60, seed=4)
    fresh = run_predict(make_config(input=fasta, out_dir=tmp_path / "fresh", **small), hidden=32)
    stage = check_before_work(
        make_config(
            input=fasta, out_dir=tmp_path / "chain" / "protein", checkpoint_every_sequences=8, **small
        )
    )
    prepare_out_dir(stage)

    def stop(batch_index):
        if batch_index == 3:
            raise KeyboardInterrupt  # the user stops the chain inside its protein stage

    with pytest.raises(KeyboardInterrupt):
        embed_share(stage, np.empty(0, np.int64), on_batch=stop)
    assert list((tmp_path / "chain" / "protein" / "checkpoints").glob("shard-*"))
    assert not (tmp_path / "chain" / "protein" / "embeddings.h5").exists()
    # the stage folder holds results: never overwritten silently
    with pytest.raises(UserError, match="resume"):
        run_predict(make_config(input=fasta, out_dir=tmp_path / "chain", **small), hidden=32)
    resumed = run_predict(
        make_config(input=fasta, out_dir=tmp_path / "chain", resume=True, **small), hidden=32
    )
    assert resumed["counts"] == fresh["counts"]
    a = pd.read_csv(tmp_path / "fresh" / "predictions_per_frame.csv")
    b = pd.read_csv(tmp_path / "chain" / "predictions_per_frame.csv")
    assert a["frame_id"].tolist() == b["frame_id"].tolist()
    assert np.abs(a["p_virus"] - b["p_virus"]).max() < 1e-5


def test_merge_and_classify_in_chunks_equals_all_at_once(tmp_path, monkeypatch):
    """The chain merges and classifies chunk by chunk from the shards (few cached); the calls equal one
    in-memory pass over all vectors in key order."""
    from perfkit.workload import classifier as clf
    from perfkit.workload import predict

    monkeypatch.setattr(predict, "MERGE_CHUNK_ROWS", 7)
    monkeypatch.setattr(predict, "SHARDS_CACHED", 1)  # shards are reread when a chunk needs them again
    fasta = orf_fasta(tmp_path / "s.fa", 25, seed=6)
    summary = run_predict(
        make_config(
            input=fasta,
            out_dir=tmp_path / "run",
            checkpoint_every_sequences=5,
            **{**FAST, "token_budget": 128},
        ),
        hidden=16,
    )
    assert len(list((tmp_path / "run" / "protein" / "checkpoints").glob("shard-*"))) > 3
    _, ids, nt = read_shards(tmp_path / "run" / "nucleotide")
    _, _, protein = read_shards(tmp_path / "run" / "protein")
    model, _ = clf.load_classifier(hidden=16, in_dim=NT_DIM + 320, seed=0)
    expected = clf.predict_frames(model, clf.merge_features(nt, protein, protein_dim=320, nt_dim=NT_DIM))
    frames = pd.read_csv(tmp_path / "run" / "predictions_per_frame.csv")
    assert len(ids) > 7 * 2 and frames["frame_id"].tolist() == ids
    assert np.allclose(frames["p_virus"], expected[:, 1], atol=1e-6)
    assert summary["stages_s"]["merge"] > 0 and summary["stages_s"]["classifier"] > 0


def test_scoring_refuses_stages_that_embedded_different_frames(tmp_path):
    """Conservation between the stages is checked key by key in every rank's range, not by totals."""
    fasta = orf_fasta(tmp_path / "s.fa", 30, seed=2)
    cfg = make_config(input=fasta, out_dir=tmp_path / "run", checkpoint_every_sequences=10, **FAST)
    run_predict(cfg, hidden=16)
    score_reads(cfg, 0, 10**12, hidden=16)  # both stages agree
    first = sorted((tmp_path / "run" / "nucleotide" / "checkpoints").glob("shard-*"))[0]
    first.unlink()  # a nucleotide shard lost after the stage finished
    with pytest.raises(RuntimeError, match="count check failed in rank 0"):
        score_reads(cfg, 0, 10**12, hidden=16)


@pytest.mark.slow
def test_chain_in_two_ranks_equals_one_process(tmp_path):
    """One torchrun launch of 2 CPU ranks (gloo): contiguous plan, both stages, per-rank scoring,
    joined predictions: the same frames, order and calls as the 1-process chain."""
    fasta = orf_fasta(tmp_path / "s.fa", 90, seed=8)
    settings = {
        **FAST,
        "block_reads": 8,
        "max_reads": 85,
        "token_budget": 512,
    }  # 11 blocks, the last of 5 reads
    one = run_predict(make_config(input=fasta, out_dir=tmp_path / "one", **settings), hidden=16)
    two = run_predict(make_config(input=fasta, out_dir=tmp_path / "two", **settings), hidden=16, nproc=2)
    assert two["ranks"] == 2 and two["counts"] == one["counts"]
    assert one["counts"]["frames"] == count_frames(fasta, max_reads=85)
    assert (
        two["plan"]["blocks"] == 11
        and sum(r["frames"] for r in two["score_ranks"]) == one["counts"]["frames"]
    )
    assert all(r["frames"] > 0 for r in two["score_ranks"])  # both ranks scored their own reads
    assert two["stages_s"]["planning"] > 0 and two["stage_throughput"]["protein_embedding"]["ranks"] == 2
    # torchrun's start and the ranks' set-up are outside every span: the launching process adds them
    assert list(two["stages_s"])[0] == "launch" and two["stages_s"]["launch"] > 0
    assert two["end_to_end_s"] == pytest.approx(sum(two["stages_s"].values()))
    assert two["end_to_end_s"] == pytest.approx(two["launch_wall_s"], rel=1e-6)
    slowest = max(two["score_ranks"], key=lambda r: r["merge_s"] + r["classify_s"] + r["consensus_s"])
    assert two["stages_s"]["merge"] == pytest.approx(slowest["merge_s"])  # one rank's steps, never mixed
    assert two["score_ranks"][0]["device"] == "cpu" == one["score_ranks"][0]["device"]  # same rule both sides
    for name in ("predictions_per_frame.csv", "predictions_per_read.csv"):
        a, b = pd.read_csv(tmp_path / "one" / name), pd.read_csv(tmp_path / "two" / name)
        assert a.columns.tolist() == b.columns.tolist() and len(a) == len(b)
        assert a.iloc[:, 0].tolist() == b.iloc[:, 0].tolist()  # input order
    frames_a = pd.read_csv(tmp_path / "one" / "predictions_per_frame.csv")
    frames_b = pd.read_csv(tmp_path / "two" / "predictions_per_frame.csv")
    assert np.abs(frames_a["p_virus"] - frames_b["p_virus"]).max() < 1e-4


PREDICT_FLAGS = [
    "--precision",
    "fp32",
    "--device",
    "cpu",
    "--no-progress",
    "--token-budget",
    "1024",
    "--num-workers",
    "0",
    "--block-reads",
    "4",
    "--hidden",
    "16",
    "--nt-model",
    "dnabert_mini",
]


def _predict_cmd(fasta, out, *extra):
    return [sys.executable, "-m", "perfkit", "predict", str(fasta), "-o", str(out), *PREDICT_FLAGS, *extra]


@pytest.mark.slow
def test_predict_on_two_nodes_equals_one_node_with_as_many_ranks(tmp_path):
    """2 nodes x 1 rank (torchrun's c10d rendezvous on localhost) against 1 node x 2 ranks: the same plan
    and batches, so byte-identical prediction CSVs; node 0's launcher reports, and adds the launch stage
    once."""
    from test_distributed import NODE_ENV, node_flags, run_nodes  # the multi-node helpers of the embed tests

    fasta = orf_fasta(tmp_path / "s.fa", 24, seed=3)
    one = subprocess.run(
        _predict_cmd(fasta, tmp_path / "one", "--nproc", "2"),
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, **NODE_ENV},
        check=False,
    )
    assert one.returncode == 0, one.stderr
    out = tmp_path / "two"
    done = run_nodes(lambda node, port: _predict_cmd(fasta, out, *node_flags(node, port)), tmp_path / "logs")
    assert [code for code, _, _ in done] == [0, 0], [err[-3000:] for _, _, err in done]
    for name in ("predictions_per_frame.csv", "predictions_per_read.csv"):
        assert (out / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    # node 0's launcher reports; node 1's is quiet
    assert "reads in:" in done[0][1] and not done[1][1].strip()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2 and list(summary["stages_s"]).count("launch") == 1
    assert summary["end_to_end_s"] == pytest.approx(sum(summary["stages_s"].values()))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--nproc", "1", "--nnodes", "3"], "error: --nnodes 3: no --rdzv-endpoint — "),
        (
            ["--gpus", "1", "--nnodes", "2", "--node-rank", "5", "--rdzv-endpoint", "h:29500"],
            "error: --node-rank 5: must be",
        ),
        (
            ["--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "h:29500"],
            "error: --nnodes 2: the node flags place",
        ),
        (["--nproc", "1", "--rdzv-endpoint", "h:port"], "error: --rdzv-endpoint h:port: not HOST:PORT"),
    ],
    ids=["no-endpoint", "node-rank-too-big", "no-nproc", "bad-endpoint"],
)
def test_predict_node_flags_that_cannot_work_are_one_line_errors(
    small_fasta, tmp_path, capsys, flags, message
):
    from perfkit.cli import main

    out = tmp_path / "o"
    assert main(["predict", str(small_fasta), "-o", str(out), *PREDICT_FLAGS, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not out.exists()
