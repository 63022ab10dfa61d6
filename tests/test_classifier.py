import numpy as np
import pytest
import torch

from perfkit.errors import UserError
from perfkit.workload.classifier import (
    FEATURE_DIM,
    align_by_ids,
    consensus,
    consensus_by_key,
    frame_table,
    load_classifier,
    merge_features,
    predict_frames,
    predict_parts,
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
