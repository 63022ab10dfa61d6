"""Checkpoint shards as a run's output: the index, the checks, reading in key order."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from perfkit.errors import UserError
from perfkit.workload import shard_file, store
from perfkit.workload.translate import FRAMES


def write_shard(folder, rank, index, keys, ids, dim=4):
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    keys = np.asarray(keys, dtype=np.int64)
    vectors = np.stack([np.full(dim, k, dtype=np.float32) for k in keys])  # a vector says whose it is
    np.savez(
        folder / "checkpoints" / f"shard-r{rank:03d}-{index:06d}.npz",
        keys=keys,
        ids=np.array(ids),
        embeddings=vectors,
    )


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


# ---------------------------------------------------------------------------- the shard format and reading


def store_shards(folder, rank, keys, *, every, dim=4):
    """Shards written the way a run writes them (CheckpointStore): ids and vectors that say whose they are."""
    keys = np.asarray(keys, dtype=np.int64)
    checkpoints = store.CheckpointStore(folder, rank=rank, every_sequences=every)
    for start in range(0, len(keys), every):
        part = keys[start : start + every]
        checkpoints.add(
            part,
            [frame_id(f"read{k // 6}", k) for k in part.tolist()],
            np.repeat(part[:, None].astype(np.float32), dim, axis=1),
        )
    checkpoints.close()
    return sorted((folder / "checkpoints").glob("shard-*.npz"))


def test_a_shard_round_trips_memory_mapped_and_names_its_key_range(tmp_path):
    paths = store_shards(tmp_path, 2, [13, 7, 8, 12], every=4)
    assert [p.name for p in paths] == ["shard-r002-000000-k7-13.npz"] and shard_file.key_span(paths[0]) == (
        7,
        13,
    )
    shard = store.open_shard(paths[0])
    assert shard.keys.tolist() == [13, 7, 8, 12] and shard.ids.tolist()[0] == "read2_F2"
    assert shard.embeddings[:, 0].tolist() == [13.0, 7.0, 8.0, 12.0]
    assert not shard.embeddings.flags.writeable  # a read-only view on the file, nothing copied
    with np.load(paths[0]) as data:  # still an ordinary .npz for any other reader
        assert data["keys"].tolist() == [13, 7, 8, 12]
    keys, ids, vectors = store.read_shards(tmp_path)
    assert keys.tolist() == [7, 8, 12, 13] and ids == ["read1_F2", "read1_F3", "read2_F1", "read2_F2"]
    # the next shard of that rank gets the next number
    store_shards(tmp_path, 2, [30], every=1)
    assert (
        sorted(p.name for p in (tmp_path / "checkpoints").glob("shard-*"))[-1]
        == "shard-r002-000001-k30-30.npz"
    )


def test_fill_copies_each_shard_in_row_order_and_says_where_each_key_went(tmp_path, monkeypatch):
    store_shards(tmp_path, 0, [5, 0, 3, 1, 4, 2, 9, 6, 8, 7], every=5)
    index = store.ShardIndex(tmp_path)
    out = np.full((8, 4), -1.0, dtype=np.float32)
    where = index.fill(1, 9, out)  # keys 1..8, from both shards
    assert out[where, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert out[:, 0].tolist() == [5, 3, 1, 4, 2, 6, 8, 7]  # each shard's rows in file order: no scatter
    assert index.ids_at(1, 9).tolist() == [frame_id(f"read{k // 6}", k) for k in range(1, 9)]
    with pytest.raises(RuntimeError, match="width 4, expected 3"):
        index.fill(0, 2, np.empty((2, 3), np.float32))
    monkeypatch.setattr(store, "COPY_ROWS", 3)  # each shard's rows in pieces, copied by a pool
    with ThreadPoolExecutor(3) as pool:
        pieces = np.full((10, 4), -1.0, dtype=np.float32)
        where = index.fill(0, 10, pieces, pool=pool)
    assert pieces[where, 0].tolist() == list(range(10))


@pytest.mark.parametrize("by_read", [True, False])
def test_read_rows_copies_runs_spans_and_scattered_rows_alike(tmp_path, monkeypatch, by_read):
    monkeypatch.setattr(shard_file, "COPY_BY_READ", by_read)
    store_shards(tmp_path, 0, np.arange(100, 120), every=20, dim=3)
    shard = store.open_shard(next((tmp_path / "checkpoints").glob("shard-*")))
    for rows in ([3, 4, 5, 6, 7, 8, 9], [0, 2, 4, 5], [0, 19], [7]):  # a run, a dense span, far apart, one
        out = np.full((len(rows), 3), -1.0, dtype=np.float32)
        shard.read_rows(np.array(rows), out)
        assert out[:, 0].tolist() == [100.0 + r for r in rows]


def test_a_rank_opens_only_the_shards_that_can_hold_its_keys(tmp_path, monkeypatch):
    store_shards(tmp_path, 0, np.arange(0, 60), every=20)  # rank 0 of a 2-rank plan: keys 0..59
    store_shards(tmp_path, 1, np.arange(60, 120), every=20)  # rank 1: keys 60..119
    opened = []
    real = store.open_shard
    monkeypatch.setattr(store, "open_shard", lambda path: opened.append(path.name) or real(path))
    index = store.ShardIndex(tmp_path, 60, 120)
    assert index.keys.tolist() == list(range(60, 120))
    assert sorted(opened) == [
        "shard-r001-000000-k60-79.npz",
        "shard-r001-000001-k80-99.npz",
        "shard-r001-000002-k100-119.npz",
    ]
    assert index.take(np.array([61, 118]), 2)[:, 0].tolist() == [61.0, 118.0]
    assert all(name.startswith("shard-r001") for name in opened)  # vectors too came from its own shards


def test_a_resume_with_other_ranks_finds_keys_in_any_rank_s_shards(tmp_path, monkeypatch):
    # the first run had 1 rank (keys 0..49 done); the resume has 2: its rank 1 embedded 50..59 only
    store_shards(tmp_path, 0, np.arange(0, 50), every=25)
    store_shards(tmp_path, 1, np.arange(50, 60), every=25)
    opened = []
    real = store.open_shard
    monkeypatch.setattr(store, "open_shard", lambda path: opened.append(path.name) or real(path))
    index = store.ShardIndex(tmp_path, 30, 60)  # rank 1's range of the 2-rank plan: keys 30..59
    assert index.keys.tolist() == list(range(30, 60))
    assert index.take(index.keys, 2)[:, 0].tolist() == list(range(30, 60))
    assert "shard-r000-000000-k0-24.npz" not in opened and "shard-r000-000001-k25-49.npz" in opened


def test_shards_named_without_a_key_range_are_still_read(tmp_path):
    """A folder written by the previous version: the same .npz, named shard-rRRR-NNNNNN.npz."""
    write_shard(tmp_path, 0, 0, [7, 0], [frame_id("r1", 7), frame_id("r0", 0)])
    write_shard(tmp_path, 1, 0, [13, 6], [frame_id("r2", 13), frame_id("r1", 6)])
    index = store.ShardIndex(tmp_path, 6, 12)
    assert index.keys.tolist() == [6, 7] and index.take(index.keys, 1).tolist() == ["r1_F1", "r1_F2"]
    # a resume continues it: new shards get numbers after the old ones
    store_shards(tmp_path, 0, [1], every=1)
    assert (tmp_path / "checkpoints" / "shard-r000-000001-k1-1.npz").exists()
    assert store.completed_keys(tmp_path).tolist() == [0, 1, 6, 7, 13]


def test_a_shard_whose_name_lies_about_its_keys_is_refused(tmp_path):
    paths = store_shards(tmp_path, 0, [3, 4], every=2)
    paths[0].rename(paths[0].with_name("shard-r000-000000-k3-3.npz"))
    with pytest.raises(RuntimeError, match="outside the range in its name"):
        store.ShardIndex(tmp_path)


@pytest.mark.parametrize("damage", ["truncate_tail", "truncate_half", "flip_key", "empty"])
def test_a_damaged_shard_is_set_aside_on_resume_and_refused_when_read(tmp_path, damage):
    paths = store_shards(tmp_path, 0, np.arange(30), every=10)
    victim = paths[1]  # keys 10..19
    info, start, _ = store.open_shard(victim)._members["keys"]
    data = bytearray(victim.read_bytes())
    if damage == "truncate_tail":
        data = data[:-1]
    elif damage == "truncate_half":
        data = data[: len(data) // 2]
    elif damage == "flip_key":
        at = data.index(np.int64(15).tobytes(), start)  # inside the keys member: only its CRC can tell
        assert at < start + info.file_size
        data[at] ^= 0x01
    else:
        data = bytearray()
    victim.write_bytes(bytes(data))
    if damage != "flip_key":  # a shard cut short cannot even be opened
        with pytest.raises(UserError, match=f"checkpoint .*{victim.name} is unreadable.*--resume"):
            store.ShardIndex(tmp_path)
    (tmp_path / "checkpoints" / "shard-r000-000003-k30-31.tmp").write_bytes(b"half a write")
    done = store.completed_keys(tmp_path)
    assert done.tolist() == list(range(10)) + list(range(20, 30))  # its sequences are recomputed
    assert victim.with_suffix(".corrupt").exists() and not victim.exists()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_a_kill_mid_write_leaves_no_shard_that_looks_complete(tmp_path, monkeypatch):
    def killed(path, **arrays):  # the process dies inside np.savez: part of the file is written
        path.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(store.np, "savez", killed)
    checkpoints = store.CheckpointStore(tmp_path, every_sequences=2)
    checkpoints.add(np.array([0, 1]), ["a_F1", "a_F2"], np.zeros((2, 4), np.float32))
    with pytest.raises(UserError, match="writing a checkpoint failed"):
        checkpoints.close()
    assert not list((tmp_path / "checkpoints").glob(store.SHARD_GLOB))
    assert store.completed_keys(tmp_path).tolist() == []


def test_a_full_disk_is_one_user_error_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno
    import os
    import time

    def disk_full(f, keys, ids, vectors):  # part of the shard gets written, then the disk is full
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store, "_write_shard", disk_full)
    checkpoints = store.CheckpointStore(tmp_path, every_sequences=2)
    # a write, in the thread
    checkpoints.add(np.array([0, 1]), ["a_F1", "a_F2"], np.zeros((2, 4), np.float32))
    deadline = time.monotonic() + 10
    while checkpoints._error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    # the writer's OSError surfaces on the next add as the one-line error (it was raised raw, a traceback)
    with pytest.raises(UserError, match="writing a checkpoint failed: No space left on device") as raised:
        checkpoints.add(np.array([2, 3]), ["a_F3", "a_R1"], np.zeros((2, 4), np.float32))
    assert "free space" in raised.value.one_line() and "\n" not in raised.value.one_line()
    with pytest.raises(UserError, match="writing a checkpoint failed"):
        checkpoints.close()  # and on close, after the writer is joined
    assert not checkpoints._thread.is_alive()
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # the half-written shard is gone
    assert not list((tmp_path / "checkpoints").glob(store.SHARD_GLOB))


# ---------------------------------------------------------------------------- scoring a rank's reads from shards


def chain_shards(folder, rank, keys, *, every, seed):
    """Both stages' shards of one rank, as the chain leaves them (protein: esm2_t6_8M, 320 wide)."""
    rng = np.random.default_rng(seed)
    keys = np.asarray(keys, dtype=np.int64)
    for stage, dim in (("nucleotide", 768), ("protein", 320)):
        checkpoints = store.CheckpointStore(folder / stage, rank=rank, every_sequences=every)
        for start in range(0, len(keys), every):
            part = rng.permutation(keys[start : start + every])  # packing reorders frames
            checkpoints.add(
                part,
                [frame_id(f"read{k // 6}", k) for k in part.tolist()],
                rng.standard_normal((len(part), dim), dtype=np.float32),
            )
        checkpoints.close()


def test_score_reads_opens_only_its_shards_and_equals_merging_everything_in_memory(tmp_path, monkeypatch):
    import pandas as pd

    from perfkit.workload import classifier as clf
    from perfkit.workload import predictions
    from perfkit.workload import predict
    from perfkit.workload.config import make_config

    rng = np.random.default_rng(1)
    keys = np.flatnonzero(rng.random(6 * 40) < 0.7)  # 40 reads, some frames lost in translation
    cut = 6 * 20  # a 2-rank plan: reads 0..19 and 20..39
    chain_shards(tmp_path, 0, keys[keys < cut], every=9, seed=2)
    chain_shards(tmp_path, 1, keys[keys >= cut], every=9, seed=3)
    monkeypatch.setattr(predict, "MERGE_CHUNK_ROWS", 7)  # several chunks, cut between reads
    monkeypatch.setattr(predict, "SHARDS_CACHED", 1)
    cfg = make_config(input=tmp_path / "unused.fa", out_dir=tmp_path, model="esm2_t6_8M", device="cpu")
    opened = []
    real = store.open_shard
    monkeypatch.setattr(store, "open_shard", lambda path: opened.append(path.name) or real(path))
    report = predict.score_reads(cfg, cut, 6 * 40, rank=1, hidden=16)
    assert opened and all(name.startswith("shard-r001") for name in opened)
    mine = keys[keys >= cut]
    assert report["frames"] == len(mine) and report["reads"] == len(np.unique(mine // 6))

    # the reference: every vector in memory, merged on the host, pandas consensus
    _, nt_ids, nt = store.read_shards(tmp_path / "nucleotide")
    _, ids, protein = store.read_shards(tmp_path / "protein")
    model, _ = clf.load_classifier(hidden=16, in_dim=768 + 320, seed=0)
    probs = clf.predict_frames(model, clf.merge_features(nt, protein, protein_dim=320))
    rows = np.flatnonzero(np.isin(np.sort(keys), mine))
    expected_reads = clf.consensus([ids[i] for i in rows], probs[rows])
    frames = pd.read_csv(
        tmp_path / "parts" / "r001" / predictions.FRAME_CSV, dtype={"frame_id": str, "read_id": str}
    )
    reads = pd.read_csv(tmp_path / "parts" / "r001" / predictions.READ_CSV, dtype={"read_id": str})
    assert frames.columns.tolist() == ["frame_id", "read_id", "frame", "p_other", "p_virus"]
    assert frames["frame_id"].tolist() == [ids[i] for i in rows] and nt_ids == ids
    assert frames["read_id"].tolist() == [ids[i][:-3] for i in rows]
    assert np.allclose(frames[["p_other", "p_virus"]].to_numpy(), probs[rows], atol=1e-6)
    assert reads.columns.tolist() == expected_reads.columns.tolist()
    assert reads["read_id"].tolist() == expected_reads["read_id"].tolist()  # first seen = input order
    assert reads["frames"].tolist() == expected_reads["frames"].tolist()
    assert reads["prediction"].tolist() == expected_reads["prediction"].tolist()
    assert np.allclose(reads["max_virus"], expected_reads["max_virus"], atol=1e-6)
    assert report["virus_reads"] == int((expected_reads["prediction"] == "virus").sum())
    assert not list((tmp_path / "parts" / "r001").glob("*.tmp"))


def test_read_chunks_never_split_a_read(tmp_path):
    keys = [0, 1, 2, 3, 4, 5, 7, 8, 13, 18, 19, 20, 21, 22, 23]  # reads 0 (6 frames), 1, 2, 3 (6 frames)
    store_shards(tmp_path, 0, keys, every=8)
    index = store.ShardIndex(tmp_path)
    assert index.read_chunks(4, 6) == [(0, 6), (6, 9), (9, 15)]  # a read longer than a chunk stays whole
    assert index.read_chunks(100, 6) == [(0, 15)]
    assert store.ShardIndex(tmp_path, 100).read_chunks(4, 6) == []


def test_an_altered_shard_fails_its_checksum_on_resume_and_on_assembly(tmp_path, caplog):
    """Finding 7: a shard rewritten as a valid zip with other vectors was used silently (only the zip CRC,
    rewritten with it, was checked). Its blake2b manifest now sets it aside: recomputed on resume."""
    import logging

    writer = store.CheckpointStore(tmp_path, every_sequences=2)
    writer.add(np.array([0, 1]), ["r0_F1", "r0_F2"], np.ones((2, 3), np.float32))
    writer.add(np.array([6, 7]), ["r1_F1", "r1_F2"], np.full((2, 3), 2, np.float32))
    writer.close()
    first, second = sorted((tmp_path / "checkpoints").glob("shard-*.npz"))
    assert shard_file.checksum_path(first).exists() and shard_file.checksum_path(second).exists()
    np.testing.assert_array_equal(store.completed_keys(tmp_path), [0, 1, 6, 7])  # untouched: both pass

    def alter(shard):  # a valid shard again, with zeroed vectors (and new zip CRCs)
        keys, ids, vectors = (np.array(a) for a in shard_file.read_shard(shard))
        with open(shard, "wb") as f:
            np.savez(f, keys=keys, ids=ids, embeddings=np.zeros_like(vectors))

    alter(second)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(store.completed_keys(tmp_path), [0, 1])  # its sequences are recomputed
    assert not second.exists() and second.with_suffix(".corrupt").exists() and "altered" in caplog.text
    second.with_suffix(".corrupt").unlink()

    alter(first)  # now altered during a run: the assembly reads every vector and checks them
    with pytest.raises(UserError, match="was altered"):
        store.assemble(tmp_path, expected_count=2, frame_names=("F1", "F2", "F3", "R1", "R2", "R3"), attrs={})
    assert not first.exists() and first.with_suffix(".corrupt").exists()
