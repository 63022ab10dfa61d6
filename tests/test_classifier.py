import numpy as np
import pandas as pd
import pytest
import torch

from perfkit.errors import UserError
from perfkit.workload.classifier import (
    FEATURE_DIM,
    PredictionWriter,
    align_by_ids,
    consensus,
    consensus_by_key,
    frame_table,
    load_classifier,
    merge_features,
    predict_frames,
    predict_parts,
    prediction_agreement,
    read_predictions,
    write_predictions,
)

# columns: p_other, p_virus
FRAME_IDS = ["r1_F1", "r1_R2", "r2_F2", "r2_F3", "r3_R1", "r1_chunk_2_F1"]
PROBS = np.array(
    [
        [0.9, 0.1],
        [0.3, 0.7],  # r1: max virus 0.7 >= max other 0.9? no -> other
        [0.6, 0.4],
        [0.4, 0.6],  # r2: tie 0.6 vs 0.6 -> virus (the >= rule)
        [0.2, 0.8],  # r3: virus
        [0.55, 0.45],  # chunk 2 of r1 is its own read: other
    ],
    dtype=np.float32,
)


def test_consensus_by_hand():
    table = consensus(FRAME_IDS, PROBS)
    assert list(table.columns) == ["read_id", "frames", "max_virus", "max_other", "prediction"]
    rows = table.set_index("read_id")
    assert list(rows.index) == ["r1", "r2", "r3", "r1_chunk_2"]  # first-seen order
    assert rows.loc["r1", "prediction"] == "other" and rows.loc["r1", "frames"] == 2
    assert rows.loc["r1", "max_virus"] == pytest.approx(0.7) and rows.loc["r1", "max_other"] == pytest.approx(
        0.9
    )
    assert rows.loc["r2", "prediction"] == "virus"  # tie
    assert rows.loc["r3", "prediction"] == "virus"
    assert rows.loc["r1_chunk_2", "prediction"] == "other"


def test_consensus_marks_reads_without_frames():
    table = consensus(FRAME_IDS, PROBS, all_read_ids=["r0", "r1", "r2", "r3", "r1_chunk_2"])
    assert list(table["read_id"]) == ["r0", "r1", "r2", "r3", "r1_chunk_2"]
    r0 = table.iloc[0]
    assert r0["prediction"] == "no_frames" and r0["frames"] == 0 and np.isnan(r0["max_virus"])
    with pytest.raises(UserError, match="r1_chunk_2"):
        consensus(FRAME_IDS, PROBS, all_read_ids=["r1", "r2", "r3"])


def test_consensus_rejects_bad_ids_and_shapes():
    with pytest.raises(UserError, match="'r1_X9'"):
        consensus(["r1_X9"], PROBS[:1])
    with pytest.raises(UserError, match="more than once"):
        consensus(["r1_F1", "r1_F1"], PROBS[:2])
    with pytest.raises(UserError, match="shape"):
        consensus(FRAME_IDS, PROBS[:3])
    assert consensus([], np.empty((0, 2))).empty


def test_merge_features_shapes():
    merged = merge_features(np.ones((3, 768)), np.zeros((3, 2560)))
    assert merged.shape == (3, FEATURE_DIM) and merged.dtype == np.float32
    assert merged[:, :768].all() and not merged[:, 768:].any()  # nucleotide first
    with pytest.raises(UserError, match="3 nucleotide rows but 2 protein rows"):
        merge_features(np.ones((3, 768)), np.zeros((2, 2560)))
    with pytest.raises(UserError, match="protein embeddings have shape"):
        merge_features(np.ones((3, 768)), np.zeros((3, 1280)))
    with pytest.raises(UserError, match="nucleotide embeddings have shape"):
        merge_features(np.ones((3, 2560)), np.zeros((3, 768)))


def test_misaligned_ids_are_named():
    vec = np.zeros((3, 2))
    ids, _, _ = align_by_ids(["a_F1", "a_F2", "b_R1"], vec, ["a_F1", "a_F2", "b_R1"], vec)
    assert ids == ["a_F1", "a_F2", "b_R1"]
    with pytest.raises(UserError, match=r"row 1: 'a_F2' vs 'b_R1'"):
        align_by_ids(["a_F1", "a_F2", "b_R1"], vec, ["a_F1", "b_R1", "a_F2"], vec)
    with pytest.raises(UserError, match=r"row 2: 'b_R1' vs '<end>'"):
        align_by_ids(["a_F1", "a_F2", "b_R1"], vec, ["a_F1", "a_F2"], vec[:2])
    with pytest.raises(UserError, match="2 ids but 3 vectors"):
        align_by_ids(["a_F1", "a_F2"], vec, ["a_F1", "a_F2"], vec[:2])
    with pytest.raises(UserError, match="'a_F1' more than once"):
        align_by_ids(["a_F1", "a_F1", "b_R1"], vec, ["a_F1", "a_F1", "b_R1"], vec)


def test_classifier_eval_is_deterministic():
    model, info = load_classifier(hidden=16, seed=3)
    again, info_again = load_classifier(hidden=16, seed=3)
    other, info_other = load_classifier(hidden=16, seed=4)
    assert info["weights_sha256"] == info_again["weights_sha256"] != info_other["weights_sha256"]
    assert info["hidden"] == 16 and info["classes"] == ["other", "virus"]
    features = np.random.default_rng(0).normal(size=(50, FEATURE_DIM)).astype(np.float32)
    probs = predict_frames(model, features, batch_size=7)
    assert probs.shape == (50, 2) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1, atol=1e-6)
    assert np.array_equal(probs, predict_frames(model, features, batch_size=7))  # dropout off
    assert np.allclose(probs, predict_frames(again, features, batch_size=50), atol=1e-6)
    assert np.allclose(predict_frames(model, features[:1]), probs[:1], atol=1e-6)  # running stats, batch of 1
    assert predict_frames(model, np.empty((0, FEATURE_DIM))).shape == (0, 2)
    with pytest.raises(UserError, match=r"expects \[n, 3328\]"):
        predict_frames(model, features[:, :100])


def test_state_dict_round_trip_and_hidden_mismatch(tmp_path):
    model, info = load_classifier(hidden=32, seed=1)
    model.bn1.running_mean.fill_(0.25)  # as after training: eval must use it
    path = tmp_path / "classifier.pt"
    torch.save(model.state_dict(), path)
    loaded, loaded_info = load_classifier(path, hidden=32)
    assert loaded_info["source"] == str(path) and loaded_info["hidden"] == 32
    assert loaded_info["weights_sha256"] != info["weights_sha256"]  # running_mean changed
    features = np.random.default_rng(1).normal(size=(20, FEATURE_DIM)).astype(np.float32)
    assert np.array_equal(predict_frames(model, features), predict_frames(loaded, features))
    with pytest.raises(
        UserError, match=r"layer fc1\.weight expected \(300, 3328\), found \(32, 3328\).*hidden=32"
    ):
        load_classifier(path, hidden=300)
    with pytest.raises(UserError, match="not found"):
        load_classifier(tmp_path / "missing.pt", hidden=32)
    torch.save({"fc1.weight": torch.zeros(32, FEATURE_DIM)}, tmp_path / "partial.pt")
    with pytest.raises(UserError, match="missing"):
        load_classifier(tmp_path / "partial.pt", hidden=32)


def test_csvs_written_with_columns_and_counts(tmp_path):
    table = consensus(FRAME_IDS, PROBS, all_read_ids=["r0", "r1", "r2", "r3", "r1_chunk_2"])
    written = write_predictions(tmp_path / "out", FRAME_IDS, PROBS, table)
    assert written["frames"] == 6 and written["reads"] == 5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "predictions_per_frame.csv",
        "predictions_per_read.csv",
    ]  # no temp files left
    frames, reads = read_predictions(tmp_path / "out")
    assert list(frames.columns) == ["frame_id", "read_id", "frame", "p_other", "p_virus"]
    assert list(frames["read_id"]) == ["r1", "r1", "r2", "r2", "r3", "r1_chunk_2"]
    assert list(frames["frame"]) == ["F1", "R2", "F2", "F3", "R1", "F1"]
    assert np.allclose(frames[["p_other", "p_virus"]].to_numpy(), PROBS)
    assert list(reads.columns) == ["read_id", "frames", "max_virus", "max_other", "prediction"]
    assert list(reads["prediction"]) == ["no_frames", "other", "virus", "virus", "other"]


def test_agreement_on_hand_made_tables():
    a = pd.DataFrame(
        {"read_id": ["r1", "r2", "r3", "r4"], "prediction": ["virus", "other", "virus", "other"]}
    )
    b = pd.DataFrame(
        {"read_id": ["r1", "r2", "r3", "r5"], "prediction": ["virus", "virus", "virus", "other"]}
    )
    result = prediction_agreement(a, b)
    # union r1..r5: r1, r3 agree; r2 differs; r4 only in a, r5 only in b
    assert result["reads_union"] == 5 and result["same_prediction"] == 2
    assert result["agreement"] == pytest.approx(0.4)
    assert result["only_in_a"] == 1 and result["only_in_b"] == 1
    assert result["other_to_virus"] == 1 and result["virus_to_other"] == 0
    assert prediction_agreement(a, a)["agreement"] == 1.0

    frames_a = pd.DataFrame({"frame_id": ["r1_F1", "r1_F2", "r2_R1"], "p_virus": [0.9, 0.2, 0.5]})
    frames_b = pd.DataFrame({"frame_id": ["r2_R1", "r1_F1", "r3_F1"], "p_virus": [0.45, 0.6, 0.1]})
    result = prediction_agreement(a, b, frames_a, frames_b)
    assert (
        result["frames_common"] == 2 and result["frames_only_in_a"] == 1 and result["frames_only_in_b"] == 1
    )
    assert result["max_abs_delta_p_virus"] == pytest.approx(0.3) and result["max_abs_delta_frame"] == "r1_F1"
    # read margins in a: r1 0.9 - 0.8 = 0.1, r2 0.5 - 0.5 = 0; both within 2 x 0.3; r2 is also a flip
    assert result["near_tie_reads"] == 2 and result["flipped_near_ties"] == 1
    assert result["median_abs_read_margin"] == pytest.approx(0.05)

    _, info_300 = load_classifier(hidden=8, seed=0)
    _, info_500 = load_classifier(hidden=12, seed=0)
    result = prediction_agreement(a, b, info_a=info_300, info_b=info_500)
    assert result["same_classifier"] is False and (result["hidden_a"], result["hidden_b"]) == (8, 12)
    with pytest.raises(UserError, match="'r1' twice"):
        prediction_agreement(pd.concat([a, a]), b)


# the chain's path: keys say which read (key // 6) and frame (key % 6) a row is
KEYS = np.array([0, 4, 7, 8, 15, 18])  # the frames of FRAME_IDS: r1 = read 0, r2 = 1, r3 = 2, r1_chunk_2 = 3


def test_consensus_by_key_equals_consensus_by_id():
    frames = frame_table(KEYS, FRAME_IDS, PROBS)
    assert frames.column_names == ["frame_id", "read_id", "frame", "p_other", "p_virus"]
    assert frames.column("read_id").to_pylist() == ["r1", "r1", "r2", "r2", "r3", "r1_chunk_2"]
    assert frames.column("frame").to_pylist() == ["F1", "R2", "F2", "F3", "R1", "F1"]
    reads = consensus_by_key(KEYS, frames).to_pandas()
    expected = consensus(FRAME_IDS, PROBS)
    assert reads.columns.tolist() == expected.columns.tolist()
    for column in expected.columns:
        assert reads[column].tolist() == expected[column].tolist()
    assert consensus_by_key(KEYS[:0], frame_table(KEYS[:0], FRAME_IDS[:0], PROBS[:0])).num_rows == 0


def test_consensus_by_key_refuses_ids_that_do_not_match_their_keys():
    with pytest.raises(RuntimeError, match="'r1_R2' does not end in its key's frame _R1"):
        frame_table(np.array([0, 3]), FRAME_IDS[:2], PROBS[:2])  # key 3 is frame R1
    with pytest.raises(RuntimeError, match="of one read .* carry different read ids"):
        consensus_by_key(np.array([0, 1]), frame_table(np.array([0, 1]), ["a_F1", "b_F2"], PROBS[:2]))
    with pytest.raises(RuntimeError, match="ascending key order"):
        consensus_by_key(np.array([4, 0]), frame_table(np.array([4, 0]), ["a_R2", "a_F1"], PROBS[:2]))


def test_parts_put_side_by_side_on_the_device_equal_the_merged_block():
    rng = np.random.default_rng(2)
    nt, protein = (
        rng.normal(size=(30, 768)).astype(np.float32),
        rng.normal(size=(30, 2560)).astype(np.float32),
    )
    where_nt, where_protein = rng.permutation(30), rng.permutation(30)  # each block in its own storage order
    model, _ = load_classifier(hidden=16, seed=5)
    expected = predict_frames(model, merge_features(nt[where_nt], protein[where_protein]), batch_size=8)
    probs = predict_parts(model, [(nt, where_nt), (protein, where_protein)], batch_size=8)
    assert probs.shape == (30, 2) and np.allclose(probs, expected, atol=1e-6)
    with pytest.raises(UserError, match="expects"):
        predict_parts(model, [(nt, where_nt), (protein[:, :100], where_protein)])


def test_prediction_writer_in_chunks_equals_one_write(tmp_path):
    writer = PredictionWriter(tmp_path / "chunks")
    writer.add(KEYS[:4], FRAME_IDS[:4], PROBS[:4])  # chunks end between reads
    writer.add(KEYS[4:], np.array(FRAME_IDS[4:]), PROBS[4:])
    written = writer.close()
    assert (written["frames"], written["reads"], written["virus_reads"]) == (6, 4, 2)
    write_predictions(tmp_path / "once", FRAME_IDS, PROBS, consensus(FRAME_IDS, PROBS))
    (frames_a, reads_a), (frames_b, reads_b) = (
        read_predictions(tmp_path / "chunks"),
        read_predictions(tmp_path / "once"),
    )
    pd.testing.assert_frame_equal(frames_a, frames_b)
    pd.testing.assert_frame_equal(reads_a, reads_b)
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == [
        "predictions_per_frame.csv",
        "predictions_per_read.csv",
    ]
    assert (tmp_path / "chunks" / "predictions_per_frame.csv").read_text().splitlines()[:2] == [
        "frame_id,read_id,frame,p_other,p_virus",
        "r1_F1,r1,F1,0.9,0.1",
    ]


def test_prediction_writer_puts_reads_without_a_frame_in_read_order(tmp_path):
    keys = KEYS + 6  # called reads 1, 2, 3, 4; reads 0, 5 and 7 kept no frame
    writer = PredictionWriter(tmp_path / "nf")
    writer.add(keys[:4], FRAME_IDS[:4], PROBS[:4], no_frame=(np.array([0]), ["first"]))  # before read 1
    writer.add(keys[4:], np.array(FRAME_IDS[4:]), PROBS[4:], no_frame=(np.array([5, 7]), ["after", "last"]))
    written = writer.close()
    assert (written["reads"], written["no_frame_reads"], written["frames"]) == (4, 3, 6)
    reads = pd.read_csv(tmp_path / "nf" / "predictions_per_read.csv", keep_default_na=False)
    assert reads["read_id"].tolist() == ["first", "r1", "r2", "r3", "r1_chunk_2", "after", "last"]
    frameless = reads[reads["prediction"] == "no_frames"]
    assert frameless["read_id"].tolist() == ["first", "after", "last"] and (frameless["frames"] == 0).all()
    assert (frameless["max_virus"] == "").all()  # no score, not a made-up one
    only = PredictionWriter(tmp_path / "only")  # a rank whose reads all lack a frame
    only.add(KEYS[:0], FRAME_IDS[:0], PROBS[:0], no_frame=(np.array([3, 4]), ["a", "b"]))
    assert only.close()["no_frame_reads"] == 2


def test_agreement_leaves_out_reads_without_a_frame_on_both_sides():
    a = pd.DataFrame({"read_id": ["x", "y", "z"], "prediction": ["virus", "no_frames", "other"]})
    b = pd.DataFrame({"read_id": ["x", "y", "z"], "prediction": ["virus", "no_frames", "virus"]})
    result = prediction_agreement(a, b)
    assert (
        result["reads_union"] == 2 and result["agreement"] == 0.5 and result["reads_without_frames_both"] == 1
    )


def test_prediction_writer_quotes_ids_that_need_it_and_leaves_nothing_when_aborted(tmp_path):
    writer = PredictionWriter(tmp_path / "q")
    writer.add(np.array([0, 7]), ["a,b_F1", 'c"d_F2'], PROBS[:2])
    writer.close()
    frames, reads = read_predictions(tmp_path / "q")
    assert frames["frame_id"].tolist() == ["a,b_F1", 'c"d_F2'] and reads["read_id"].tolist() == ["a,b", 'c"d']
    failing = PredictionWriter(tmp_path / "aborted")
    failing.add(np.array([0, 3]), FRAME_IDS[:2], PROBS[:2])  # the background check fails
    with pytest.raises(RuntimeError, match="alignment check failed"):
        failing.close()
    assert list((tmp_path / "aborted").iterdir()) == []


@pytest.mark.gpu
def test_parts_from_pinned_blocks_on_cuda_equal_the_merged_block_on_cpu():
    from perfkit.workload.classifier import host_block, launch_parts

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    rng = np.random.default_rng(3)
    nt, protein = host_block(5000, 768, "cuda"), host_block(5000, 2560, "cuda")
    assert nt.is_pinned() and protein.is_pinned()
    nt.numpy()[:] = rng.normal(size=(5000, 768))
    protein.numpy()[:] = rng.normal(size=(5000, 2560))
    where_nt, where_protein = rng.permutation(5000), rng.permutation(5000)
    model, _ = load_classifier(hidden=64, seed=5)
    expected = predict_frames(model, merge_features(nt.numpy()[where_nt], protein.numpy()[where_protein]))
    result = launch_parts(model, [(nt, where_nt), (protein, where_protein)], device="cuda", batch_size=999)
    assert np.allclose(result(), expected, atol=1e-4)
