"""Checkpoint shards as a run's output: the index, the checks, reading in key order."""
import numpy as np
import pytest

from perfkit.workload import store
from perfkit.workload.translate import FRAMES


def write_shard(folder, rank, index, keys, ids, dim=4):
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    keys = np.asarray(keys, dtype=np.int64)
    vectors = np.stack([np.full(dim, k, dtype=np.float32) for k in keys])  # a vector says whose it is
    np.savez(folder / "checkpoints" / f"shard-r{rank:03d}-{index:06d}.npz", keys=keys, ids=np.array(ids),
             embeddings=vectors)


def frame_id(read, key):
    return f"{read}_{FRAMES[key % 6]}"


def test_index_takes_ids_and_vectors_across_shards_without_truncating_ids(tmp_path):
    # the first shard's ids are short, a later one's long: numpy would truncate into the first width
    write_shard(tmp_path, 0, 0, [7, 0], [frame_id("r1", 7), frame_id("r0", 0)])
    write_shard(tmp_path, 1, 0, [13, 6], [frame_id("read_number_2", 13), frame_id("r1", 6)])
    index = store.ShardIndex(tmp_path)
    assert index.keys.tolist() == [0, 6, 7, 13]
    keys = np.array([13, 0, 7])
    assert index.take(keys, 1).tolist() == ["read_number_2_F2", "r0_F1", "r1_F2"]
    assert index.take(keys, 2)[:, 0].tolist() == [13.0, 0.0, 7.0]
    assert index.keys[index.between(6, 13)].tolist() == [6, 7]
    with pytest.raises(RuntimeError, match="missing"):
        index.take(np.array([8]), 2)


def test_a_key_in_two_shards_counts_once_first_shard_wins(tmp_path):
    write_shard(tmp_path, 0, 0, [0, 1], [frame_id("a", 0), frame_id("a", 1)])
    write_shard(tmp_path, 0, 1, [1, 2], [frame_id("a", 1), frame_id("a", 2)])
    index = store.ShardIndex(tmp_path)
    assert index.duplicates == 1 and index.keys.tolist() == [0, 1, 2]
    assert index.shard.tolist() == [0, 0, 1]
    output, _ = store.check_shards(tmp_path, expected_count=3, frame_names=FRAMES)
    assert output["duplicates_dropped"] == 1 and output["assembled"] is False and output["shards"] == 2


def test_check_shards_refuses_a_wrong_count_or_a_misaligned_id(tmp_path):
    write_shard(tmp_path, 0, 0, [0, 1], [frame_id("a", 0), frame_id("a", 1)])
    with pytest.raises(RuntimeError, match="count check failed: 3 frames translated, 2 embedded"):
        store.check_shards(tmp_path, expected_count=3, frame_names=FRAMES)
    write_shard(tmp_path, 0, 1, [2], ["a_R3"])  # key 2 is frame F3
    with pytest.raises(RuntimeError, match="alignment check failed"):
        store.check_shards(tmp_path, expected_count=3, frame_names=FRAMES)


def test_read_shards_returns_every_key_in_order(tmp_path):
    write_shard(tmp_path, 1, 0, [12, 3], [frame_id("b", 12), frame_id("a", 3)])
    write_shard(tmp_path, 0, 0, [1], [frame_id("a", 1)])
    keys, ids, vectors = store.read_shards(tmp_path)
    assert keys.tolist() == [1, 3, 12] and ids == ["a_F2", "a_R1", "b_F1"]
    assert vectors[:, 0].tolist() == [1.0, 3.0, 12.0]
